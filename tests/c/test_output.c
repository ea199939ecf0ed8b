/* test_output.c - the output core (worker/output.c) with a fake plugin on
 * a real libuv loop: the core picks batches of batch_events, keeps the
 * in-flight count, retries with backoff, opens and probes the breaker,
 * hands exhausted or refused events to the dead letter, never
 * dead-letters or re-batches a half-written write (SL_WRITE_AGAIN), holds
 * events for rate_limit tokens, drops dedup repeats, and registers its
 * metrics (removed when the output goes). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "output.h"
#include "peer.h"
#include "plugins.h"
#include "transport.h" /* the conn's fd, to shut its write half */
#include "worker.h"
#include "test.h"

/* What the fake plugin does with a write, per output. */
enum mode { HOLD, OK, FAIL, AGAIN };

struct fake {
  enum mode mode;
  int calls;
  struct sl_batch last;
  const struct sl_event *first; /* the first event of the last batch */
};

static struct fake fakes[2];

static void fake_write(struct sl_output *o, const struct sl_batch *b) {
  struct fake *f = &fakes[o->index];
  f->calls++;
  f->last = *b;
  f->first = sl_queue_at(&o->q, b->first);
  if (f->mode == OK)
    sl_output_done(o, b->n, SL_WRITE_OK, NULL);
  else if (f->mode == FAIL)
    sl_output_done(o, 0, SL_WRITE_RETRY, "disk on fire");
  else if (f->mode == AGAIN)
    sl_output_done(o, 0, SL_WRITE_AGAIN, "half a line out");
}

static void fake_stop(struct sl_output *o) { sl_output_stopped(o); }

static const struct sl_output_ops fake_ops = {
    .cb_write = fake_write,
    .cb_stop = fake_stop,
};

/* A connection-oriented fake: writes only while connected; the core's
 * backoff calls cb_retry, which "connects" and kicks. */
static int connected, reconnects;

static int fake_healthy(struct sl_output *o) { return connected; }

static void fake_retry(struct sl_output *o) {
  reconnects++;
  connected = 1;
  sl_output_kick(o);
}

static const struct sl_output_ops fake_conn_ops = {
    .cb_write = fake_write,
    .cb_retry = fake_retry,
    .cb_stop = fake_stop,
    .cb_healthy = fake_healthy,
};

static const struct sl_output_ops *rig_ops = &fake_ops;

struct rig {
  struct sl_worker w;
  struct sl_config cfg;
  struct sl_output_config oc[2];
  struct sl_output *o, *dl;
};

__attribute__((constructor)) static void quiet(void) {
  sl_log_set_fd(open("/dev/null", O_WRONLY)); /* the warnings are expected */
}

/* Output 0 ("main", batch_events 4) and, with dead_letter, output 1
 * ("dlq", always OK). No breaker, no attempt limit unless a test sets
 * them before rig_start. */
static void rig_init(struct rig *r, int dead_letter) {
  int i;
  memset(r, 0, sizeof(*r));
  memset(fakes, 0, sizeof(fakes));
  rig_ops = &fake_ops;
  connected = reconnects = 0;
  fakes[1].mode = OK;
  r->cfg.outputs = r->oc;
  r->cfg.noutputs = dead_letter ? 2 : 1;
  r->cfg.dead_letter = dead_letter ? 1 : -1;
  r->cfg.max_event_bytes = 1 << 20;
  for (i = 0; i < 2; i++) {
    struct sl_output_config *oc = &r->oc[i];
    oc->name = i ? "dlq" : "main";
    oc->type = "fake";
    oc->queue.max_events = 64;
    oc->queue.max_bytes = 1 << 20;
    oc->queue.when_full = SL_QUEUE_BLOCK;
    oc->batch_events = 4;
    oc->retry.initial_ms = 2;
    oc->retry.max_ms = 8;
  }
}

static int rig_start(struct rig *r) {
  char why[256];
  int i;
  if (uv_loop_init(&r->w.loop) != 0)
    return -1;
  uv_idle_init(&r->w.loop, &r->w.flush_idle);
  r->w.cfg = &r->cfg;
  r->w.metrics = sl_metric_registry_new();
  r->w.outputs = calloc(2, sizeof(*r->w.outputs));
  r->w.noutputs = r->cfg.noutputs;
  for (i = 0; i < r->cfg.noutputs; i++) {
    if (sl_output_init(&r->w.outputs[i], &r->w, i, i ? &fake_ops : rig_ops, why,
                       sizeof(why)) != 0)
      return -1;
    r->w.outputs[i].stopped = 0;
  }
  r->o = &r->w.outputs[0];
  r->dl = r->cfg.noutputs > 1 ? &r->w.outputs[1] : NULL;
  return 0;
}

static void rig_close(struct rig *r) {
  int i;
  for (i = 0; i < r->w.noutputs; i++)
    sl_output_stop(&r->w.outputs[i]);
  for (i = 0; i < r->w.noutputs; i++)
    sl_output_close_handles(&r->w.outputs[i]);
  uv_close((uv_handle_t *)&r->w.flush_idle, NULL);
  uv_run(&r->w.loop, UV_RUN_DEFAULT);
  for (i = 0; i < r->w.noutputs; i++)
    sl_output_close(&r->w.outputs[i]);
  uv_loop_close(&r->w.loop);
  free(r->w.outputs);
  sl_metric_registry_free(r->w.metrics);
}

/* Event i into o: a str payload of i + 1 bytes. Returns it (o's queue
 * holds the reference). */
static const struct sl_event *push_to(struct sl_output *o, int i) {
  static struct sl_idgen g;
  static int ready;
  uint8_t payload[64];
  struct sl_str none = {NULL, 0}, topic = {"t", 1};
  struct sl_event *ev;
  if (!ready) {
    sl_idgen_init(&g);
    ready = 1;
  }
  payload[0] = (uint8_t)(0xa0 | (i + 1)); /* fixstr */
  memset(payload + 1, 'a', (size_t)i + 1);
  ev = sl_event_new(&g, none, topic, none, 0, 0, NULL, 0, payload,
                    (size_t)i + 2, 0);
  sl_output_push(o, ev);
  sl_event_unref(ev);
  return ev;
}

#define push(r, i) push_to((r)->o, (i))

/* The start most cases share: rig_start (after rig_init and the case's
 * config), main's fake in mode, events 0..n-1 pushed into main (ev, when
 * given, gets them). 0, or -1 when the rig did not start. */
static int rig_go(struct rig *r, enum mode mode, int n,
                  const struct sl_event **ev) {
  int i;
  if (rig_start(r) != 0)
    return -1;
  fakes[0].mode = mode;
  for (i = 0; i < n; i++) {
    const struct sl_event *e = push(r, i);
    if (ev)
      ev[i] = e;
  }
  return 0;
}

/* Turn the loop until *counter reaches want (or 5 s, far above the few ms
 * it takes). */
static int run_until(struct rig *r, const uint64_t *counter, uint64_t want) {
  uint64_t end = sl_mono_ns() + 5000000000ull;
  while (*counter < want && sl_mono_ns() < end)
    uv_run(&r->w.loop, UV_RUN_ONCE);
  return *counter >= want;
}

static void run_ms(struct rig *r, uint32_t ms) {
  uint64_t end = sl_mono_ns() + (uint64_t)ms * 1000000u;
  while (sl_mono_ns() < end)
    uv_run(&r->w.loop, UV_RUN_NOWAIT), usleep(1000);
}

/* Turn the loop until output idx's fake saw want writes (or 5 s). */
static int run_calls(struct rig *r, int idx, int want) {
  uint64_t end = sl_mono_ns() + 5000000000ull;
  while (fakes[idx].calls < want && sl_mono_ns() < end)
    uv_run(&r->w.loop, UV_RUN_ONCE);
  return fakes[idx].calls >= want;
}

TEST(output_batches_hold_in_flight_until_reported) {
  struct rig r;
  int i;
  rig_init(&r, 0);
  CHECK(rig_go(&r, HOLD, 10, NULL) == 0);
  run_ms(&r, 20);
  /* one write of batch_events, in flight; no second one until reported */
  CHECK_EQ(fakes[0].calls, 1);
  CHECK_EQ(fakes[0].last.first, 0u);
  CHECK_EQ(fakes[0].last.n, 4u);
  CHECK_EQ(r.o->q.inflight, 4u);
  {
    uint64_t sum = 0;
    for (i = 0; i < 4; i++)
      sum += sl_queue_at(&r.o->q, (uint32_t)i)->len;
    CHECK_EQ(fakes[0].last.bytes, sum);
  }
  /* half of it went: 2 delivered, the other 2 head the next write */
  sl_output_done(r.o, 2, SL_WRITE_OK, NULL);
  CHECK_EQ(r.o->stats.events_out, 2u);
  CHECK_EQ(r.o->q.count, 8u);
  CHECK_EQ(r.o->q.inflight, 0u);
  /* a second report of the same write is ignored */
  sl_output_done(r.o, 4, SL_WRITE_OK, NULL);
  CHECK_EQ(r.o->stats.events_out, 2u);
  fakes[0].mode = OK;
  run_ms(&r, 20);
  CHECK_EQ(fakes[0].calls, 1 + 2); /* 8 left: two more batches of 4 */
  CHECK_EQ(r.o->stats.events_out, 10u);
  CHECK_EQ(r.o->q.count, 0u);
  rig_close(&r);
}

/* An input's read queued events: a kicked output holding a whole batch
 * writes now, inside the read; one holding less waits for the loop. */
TEST(output_flush_full_writes_a_whole_batch_at_once_the_rest_on_the_loop) {
  struct rig r;
  int i;
  rig_init(&r, 0);
  CHECK(rig_go(&r, OK, 3, NULL) == 0);
  sl_output_flush_full(&r.w);
  CHECK_EQ(fakes[0].calls, 0); /* 3 of batch_events 4: the loop's */
  push(&r, 3);
  sl_output_flush_full(&r.w);
  CHECK_EQ(fakes[0].calls, 1);
  CHECK_EQ(fakes[0].last.n, 4u);
  CHECK_EQ(r.o->stats.events_out, 4u);
  /* a write in flight holds the next one back, however full */
  fakes[0].mode = HOLD;
  for (i = 4; i < 13; i++)
    push(&r, i);
  sl_output_flush_full(&r.w);
  sl_output_flush_full(&r.w);
  CHECK_EQ(fakes[0].calls, 2);
  CHECK_EQ(r.o->q.inflight, 4u);
  fakes[0].mode = OK;
  sl_output_done(r.o, 4, SL_WRITE_OK, NULL);
  run_ms(&r, 20); /* the loop writes what is left, a part batch too */
  CHECK_EQ(r.o->stats.events_out, 13u);
  CHECK_EQ(r.o->q.count, 0u);
  rig_close(&r);
}

/* Inside a long read, a part batch goes out once its oldest event waited
 * the hold (not before: younger, it waits for the loop or a full batch),
 * and never while a write is in flight, however old. */
TEST(output_flush_due_writes_a_part_batch_once_its_oldest_event_waited) {
  struct rig r;
  const struct sl_event *ev[3];
  struct sl_event *later;
  const uint64_t hold = 1000000000u; /* 1 s: no stall of the test reaches it */
  rig_init(&r, 0);
  CHECK(rig_go(&r, OK, 3, ev) == 0);
  ((struct sl_event *)ev[0])->ingest_ns = sl_mono_ns();
  sl_output_flush_due(&r.w, hold);
  sl_output_flush_due(&r.w, UINT64_MAX); /* never: whole batches only */
  CHECK_EQ(fakes[0].calls, 0);
  ((struct sl_event *)ev[0])->ingest_ns = sl_mono_ns() - 2 * hold;
  sl_output_flush_due(&r.w, hold);
  CHECK_EQ(fakes[0].calls, 1);
  CHECK_EQ(fakes[0].last.n, 3u);
  CHECK_EQ(r.o->stats.events_out, 3u);
  /* the same read's later events share its (old) time: the next part
   * batch waits the hold from that write, not a write every check */
  later = (struct sl_event *)push(&r, 3);
  later->ingest_ns = sl_mono_ns() - 2 * hold;
  sl_output_flush_due(&r.w, hold);
  CHECK_EQ(fakes[0].calls, 1);
  /* a write in flight holds an old part batch back */
  fakes[0].mode = HOLD;
  sl_output_flush_due(&r.w, 0);
  CHECK_EQ(fakes[0].calls, 2);
  later = (struct sl_event *)push(&r, 4);
  later->ingest_ns = sl_mono_ns() - 2 * hold;
  sl_output_flush_due(&r.w, hold);
  CHECK_EQ(fakes[0].calls, 2);
  fakes[0].mode = OK;
  sl_output_done(r.o, 1, SL_WRITE_OK, NULL);
  run_ms(&r, 20);
  CHECK_EQ(r.o->stats.events_out, 5u);
  CHECK_EQ(r.o->q.count, 0u);
  rig_close(&r);
}

/* A flush inside a write's callback (a resumed input reads on) may read
 * a later clock than the flush around it: events it pushed, or its due
 * write, are then "after now" for the outer one, and now - since wraps to
 * an age of centuries: a part batch went out at once, not after the hold. */
TEST(output_flush_due_takes_a_time_after_its_clock_as_not_due) {
  struct rig r;
  const struct sl_event *ev[2];
  const uint64_t hold = 1000000000u;
  rig_init(&r, 0);
  CHECK(rig_go(&r, OK, 2, ev) == 0);
  ((struct sl_event *)ev[0])->ingest_ns = sl_mono_ns() + hold; /* pushed
                                                   after the clock read */
  sl_output_flush_due(&r.w, hold);
  CHECK_EQ(fakes[0].calls, 0);
  ((struct sl_event *)ev[0])->ingest_ns = sl_mono_ns() - 2 * hold;
  r.o->due_ns = sl_mono_ns() + hold; /* a nested due write, later clock */
  sl_output_flush_due(&r.w, hold);
  CHECK_EQ(fakes[0].calls, 0);
  r.o->due_ns = 0;
  sl_output_flush_due(&r.w, hold);
  CHECK_EQ(fakes[0].calls, 1);
  rig_close(&r);
}

/* A failed write's events wait out the backoff in flight: a due flush
 * (however old the part batch behind them) starts no write before the
 * retry timer, and the retry sends the failed head first, then the rest,
 * in order: an early flush must not pass a retry. */
TEST(output_flush_due_waits_out_a_backoff_and_the_failed_head_goes_first) {
  struct rig r;
  const struct sl_event *ev[2];
  struct sl_event *later;
  rig_init(&r, 0);
  r.oc[0].retry.initial_ms = 300;
  r.oc[0].retry.max_ms = 600;
  CHECK(rig_go(&r, FAIL, 2, ev) == 0);
  sl_output_flush_due(&r.w, 0); /* the write fails inside: backoff */
  CHECK_EQ(fakes[0].calls, 1);
  CHECK(uv_is_active((uv_handle_t *)&r.o->retry_timer));
  CHECK_EQ(r.o->q.inflight, 2u);
  later = (struct sl_event *)push(&r, 2);
  later->ingest_ns = sl_mono_ns() - 1000000000u;
  fakes[0].mode = OK;
  sl_output_flush_due(&r.w, 0);
  sl_output_flush_due(&r.w, SL_OUTPUT_HOLD_NS);
  CHECK_EQ(fakes[0].calls, 1);
  CHECK(run_until(&r, &r.o->stats.events_out, 3));
  CHECK_EQ(fakes[0].calls, 2);
  CHECK(fakes[0].first == ev[0]);
  CHECK_EQ(fakes[0].last.n, 3u);
  rig_close(&r);
}

TEST(output_retry_backs_off_then_delivers_the_same_events) {
  struct rig r;
  const struct sl_event *first;
  rig_init(&r, 0);
  CHECK(rig_start(&r) == 0);
  fakes[0].mode = FAIL;
  first = push(&r, 7);
  push(&r, 8);
  CHECK(run_calls(&r, 0, 3));
  /* failed writes are counted, the events stay queued, and a retry
   * timer (not a kick) brings the next attempt */
  CHECK(r.o->stats.errors >= 3);
  CHECK(r.o->stats.retries >= 3);
  CHECK_EQ(r.o->q.count, 2u);
  CHECK_EQ(r.o->stats.events_out, 0u);
  CHECK(uv_is_active((uv_handle_t *)&r.o->retry_timer) || r.o->writing);
  CHECK(strcmp(r.o->last_error, "disk on fire") == 0);
  fakes[0].mode = OK;
  {
    const uint64_t *out = &r.o->stats.events_out;
    CHECK(run_until(&r, out, 2));
  }
  CHECK_EQ(fakes[0].last.n, 2u);
  CHECK(fakes[0].first == first);
  CHECK_EQ(r.o->retry.attempts, 0u);     /* a success resets the head */
  rig_close(&r);
}

TEST(output_dead_letters_the_tried_batch_after_max_attempts) {
  struct rig r;
  rig_init(&r, 1);
  r.oc[0].retry.max_attempts = 2;
  CHECK(rig_go(&r, FAIL, 6, NULL) == 0);
  CHECK(run_until(&r, &r.o->stats.dead_lettered, 6));
  /* batches of 4 and 2 left for the dead letter, nothing was delivered */
  CHECK_EQ(r.o->q.count, 0u);
  CHECK_EQ(r.o->stats.events_out, 0u);
  CHECK(run_until(&r, &r.dl->stats.events_out, 6));
  CHECK_EQ(fakes[0].calls, 4); /* two attempts per batch */
  rig_close(&r);
}

TEST(output_dead_letter_copies_carry_the_error) {
  struct rig r;
  struct sl_event *ev;
  rig_init(&r, 1);
  r.oc[0].retry.max_attempts = 1;
  CHECK(rig_start(&r) == 0);
  fakes[0].mode = FAIL;
  fakes[1].mode = HOLD;
  push(&r, 3);
  CHECK(run_until(&r, &r.o->stats.dead_lettered, 1));
  CHECK(run_calls(&r, 1, 1));
  CHECK_EQ(r.dl->q.count, 1u);
  ev = sl_queue_at(&r.dl->q, 0);
  CHECK(memmem(ev->data, ev->len, "disk on fire", 12) != NULL);
  CHECK(memmem(ev->data, ev->len, "sluice-output", 13) != NULL);
  rig_close(&r);
}

TEST(output_half_written_batch_is_repeated_never_dead_lettered) {
  struct rig r;
  rig_init(&r, 1);
  r.oc[0].retry.max_attempts = 1;
  CHECK(rig_go(&r, AGAIN, 3, NULL) == 0);
  {
    uint64_t end = sl_mono_ns() + 5000000000ull;
    while (fakes[0].calls < 4 && sl_mono_ns() < end)
      uv_run(&r.w.loop, UV_RUN_ONCE);
  }
  CHECK(fakes[0].calls >= 4);
  /* max_attempts is long used up, yet the half-written batch stays, and
   * each attempt is the same events, marked again */
  CHECK_EQ(r.o->stats.dead_lettered, 0u);
  CHECK_EQ(r.o->q.count, 3u);
  CHECK_EQ(fakes[0].last.again, 1);
  CHECK_EQ(fakes[0].last.n, 3u);
  /* new events do not join the repeated write */
  push(&r, 10);
  fakes[0].mode = OK;
  CHECK(run_until(&r, &r.o->stats.events_out, 4));
  CHECK_EQ(r.o->stats.dead_lettered, 0u);
  rig_close(&r);
}

TEST(output_breaker_opens_waits_then_one_probe_closes_it) {
  struct rig r;
  int calls;
  rig_init(&r, 0);
  r.oc[0].breaker.failures = 2;
  r.oc[0].breaker.open_ms = 300;
  CHECK(rig_go(&r, FAIL, 1, NULL) == 0);
  CHECK(run_until(&r, &r.o->stats.breaker_opens, 1));
  CHECK_EQ(r.o->stats.breaker_state, (int)SL_BREAKER_OPEN);
  calls = fakes[0].calls;
  CHECK_EQ(calls, 2);
  /* open: no attempt for open_ms, even when kicked by new events */
  push(&r, 1);
  run_ms(&r, 50);
  CHECK_EQ(fakes[0].calls, calls);
  /* then one probe; it succeeds and closes the breaker */
  fakes[0].mode = OK;
  CHECK(run_until(&r, &r.o->stats.events_out, 2));
  CHECK_EQ(r.o->stats.breaker_state, (int)SL_BREAKER_CLOSED);
  CHECK_EQ(r.o->stats.breaker_opens, 1u);
  rig_close(&r);
}

TEST(output_fatal_refuses_one_event_to_the_dead_letter) {
  struct rig r;
  const struct sl_event *ev[4];
  rig_init(&r, 1);
  CHECK(rig_go(&r, HOLD, 4, ev) == 0);
  run_ms(&r, 10);
  CHECK_EQ(fakes[0].calls, 1);
  /* event 0 went, event 1 can never go: it leaves; 2 and 3 are offered
   * again */
  sl_output_done(r.o, 1, SL_WRITE_FATAL, "too large");
  CHECK_EQ(r.o->stats.events_out, 1u);
  CHECK_EQ(r.o->stats.dead_lettered, 1u);
  CHECK_EQ(r.o->q.count, 2u);
  run_ms(&r, 10);
  CHECK_EQ(fakes[0].calls, 2);
  CHECK_EQ(fakes[0].last.n, 2u);
  CHECK(fakes[0].first == ev[2]);
  CHECK_EQ(r.o->stats.errors, 0u);       /* a refusal is not a failure */
  rig_close(&r);
}

TEST(output_fatal_without_dead_letter_drops_counted) {
  struct rig r;
  rig_init(&r, 0);
  CHECK(rig_go(&r, HOLD, 2, NULL) == 0);
  run_ms(&r, 10);
  sl_output_done(r.o, 0, SL_WRITE_FATAL, "too large");
  CHECK_EQ(r.o->stats.refused, 1u);
  CHECK_EQ(r.o->q.count, 1u);
  fakes[0].mode = OK;
  CHECK(run_until(&r, &r.o->stats.events_out, 1));
  rig_close(&r);
}

TEST(output_dead_letter_output_retries_for_ever) {
  struct rig r;
  rig_init(&r, 1);
  r.oc[1].retry.max_attempts = 1;
  CHECK(rig_start(&r) == 0);
  fakes[1].mode = FAIL;
  push_to(r.dl, 0);
  {
    uint64_t end = sl_mono_ns() + 5000000000ull;
    while (fakes[1].calls < 3 && sl_mono_ns() < end)
      uv_run(&r.w.loop, UV_RUN_ONCE);
  }
  /* it is the dead letter: past max_attempts its events stay */
  CHECK(fakes[1].calls >= 3);
  CHECK_EQ(r.dl->q.count, 1u);
  CHECK_EQ(r.dl->stats.dead_lettered, 0u);
  fakes[1].mode = OK;
  CHECK(run_until(&r, &r.dl->stats.events_out, 1));
  rig_close(&r);
}

/* ---- acks: written, then confirmed by the peer's count ------------------ */

TEST(output_acks_write_ahead_and_leave_only_when_confirmed) {
  struct rig r;
  const struct sl_event *ev[10];
  rig_init(&r, 0);
  CHECK(rig_go(&r, HOLD, 10, ev) == 0);
  r.o->acks = 1; /* before the loop turns: the first write is acked */
  CHECK(run_calls(&r, 0, 1));
  CHECK_EQ(fakes[0].last.n, 4u);
  /* the bytes went out: the next batch may go while 4 await the ack */
  sl_output_written(r.o);
  CHECK(run_calls(&r, 0, 2));
  CHECK_EQ(fakes[0].last.first, 4u);
  CHECK(fakes[0].first == ev[4]);
  CHECK_EQ(r.o->q.inflight, 8u);
  CHECK_EQ(r.o->stats.events_out, 0u); /* written is not delivered */
  /* the peer confirms 3: they leave; the 4th still waits */
  sl_output_done(r.o, 3, SL_WRITE_OK, NULL);
  CHECK_EQ(r.o->stats.events_out, 3u);
  CHECK_EQ(r.o->q.count, 7u);
  CHECK_EQ(r.o->q.inflight, 5u);
  CHECK(fakes[0].calls == 2);
  /* an ack may cover part of the write in flight before it is reported
   * written: events 3..5 leave, 6 and 7 are still being written */
  sl_output_done(r.o, 3, SL_WRITE_OK, NULL);
  CHECK_EQ(r.o->stats.events_out, 6u);
  CHECK_EQ(r.o->q.inflight, 2u);
  run_ms(&r, 10);
  CHECK_EQ(fakes[0].calls, 2); /* one write at a time */
  sl_output_written(r.o);
  CHECK(run_calls(&r, 0, 3));
  CHECK_EQ(fakes[0].last.first, 2u);
  CHECK_EQ(fakes[0].last.n, 2u);
  CHECK(fakes[0].first == ev[8]);
  sl_output_written(r.o);
  /* the connection breaks: nothing unconfirmed is lost, it all goes
   * again, oldest first, after the backoff */
  sl_output_done(r.o, 0, SL_WRITE_RETRY, "closed by peer");
  CHECK_EQ(r.o->stats.errors, 1u);
  CHECK_EQ(r.o->q.count, 4u);
  CHECK(run_calls(&r, 0, 4));
  CHECK_EQ(fakes[0].last.first, 0u);
  CHECK_EQ(fakes[0].last.n, 4u);
  CHECK(fakes[0].first == ev[6]);
  sl_output_written(r.o);
  sl_output_done(r.o, 4, SL_WRITE_OK, NULL);
  CHECK_EQ(r.o->stats.events_out, 10u);
  CHECK_EQ(r.o->q.count, 0u);
  CHECK_EQ(r.o->q.inflight, 0u);
  /* a confirmation beyond what is in flight is capped, not a crash */
  sl_output_done(r.o, 5, SL_WRITE_OK, NULL);
  CHECK_EQ(r.o->stats.events_out, 10u);
  rig_close(&r);
}

/* ---- connection-oriented plugins ---------------------------------------- */

TEST(output_reconnects_after_backoff_and_writes_only_when_connected) {
  struct rig r;
  rig_init(&r, 0);
  rig_ops = &fake_conn_ops;
  CHECK(rig_go(&r, OK, 2, NULL) == 0);
  run_ms(&r, 20);
  CHECK_EQ(fakes[0].calls, 0); /* not connected: no write */
  /* the connect failed: a failed attempt, with nothing in flight */
  sl_output_done(r.o, 0, SL_WRITE_RETRY, "connection refused");
  CHECK_EQ(r.o->stats.errors, 1u);
  CHECK(uv_is_active((uv_handle_t *)&r.o->retry_timer));
  CHECK_EQ(reconnects, 0);
  /* after the backoff the core asks for a reconnect; once connected the
   * events go */
  CHECK(run_until(&r, &r.o->stats.events_out, 2));
  CHECK_EQ(reconnects, 1);
  CHECK_EQ(fakes[0].calls, 1);
  rig_close(&r);
}

TEST(output_refuses_an_event_larger_than_the_plugin_takes) {
  struct rig r;
  struct sl_event *dead;
  rig_init(&r, 1);
  CHECK(rig_start(&r) == 0);
  fakes[0].mode = OK;
  fakes[1].mode = HOLD;
  push(&r, 0);
  push(&r, 40);
  push(&r, 1);
  r.o->max_event_bytes = sl_queue_at(&r.o->q, 2)->len; /* event 1 fits */
  r.o->max_event_note = " (test)";
  CHECK(run_until(&r, &r.o->stats.events_out, 2));
  /* event 40 left for the dead letter, between two writes */
  CHECK_EQ(fakes[0].calls, 2);
  CHECK_EQ(r.o->stats.dead_lettered, 1u);
  CHECK(run_calls(&r, 1, 1));
  dead = sl_queue_at(&r.dl->q, 0);
  CHECK(memmem(dead->data, dead->len, "larger than the peer accepts", 28));
  CHECK(memmem(dead->data, dead->len, "(test)", 6));
  rig_close(&r);
}

/* The registry's text as a C string in b (the caller closes b). */
static const char *render_metrics(struct rig *r, struct sl_buf *b) {
  sl_buf_init(b);
  if (sl_metric_render(r->w.metrics, b) != 0 || sl_buf_putc(b, 0) != 0)
    return NULL;
  return (const char *)b->data;
}

TEST(output_registers_its_metrics_and_removes_them_when_closed) {
  struct rig r;
  struct sl_buf b;
  const char *t;
  rig_init(&r, 1);
  r.oc[0].retry.max_attempts = 1;
  CHECK(rig_go(&r, FAIL, 3, NULL) == 0);
  CHECK(run_until(&r, &r.dl->stats.events_out, 3));
  t = render_metrics(&r, &b);
  CHECK(t != NULL);
  CHECK(strstr(t, "sluice_output_dead_lettered_total{output=\"main\"} 3\n"));
  CHECK(strstr(t, "sluice_output_events_total{output=\"main\"} 0\n"));
  CHECK(strstr(t, "sluice_output_events_total{output=\"dlq\"} 3\n"));
  CHECK(strstr(t, "sluice_delivery_latency_seconds_count{output=\"dlq\"} 3\n"));
  CHECK(strstr(t, "sluice_queue_capacity_events{output=\"main\"} 64\n"));
  CHECK(strstr(t, "sluice_output_healthy{output=\"main\"} 1\n"));
  CHECK(strstr(t, "sluice_events_dropped_total{reason=\"dedup\","
                  "output=\"main\"} 0\n"));
  /* a memory queue has no disk buffer families */
  CHECK(strstr(t, "sluice_disk_buffer") == NULL);
  /* one family per name over both outputs */
  CHECK(strstr(strstr(t, "# TYPE sluice_output_events_total counter\n") + 1,
               "# TYPE sluice_output_events_total") == NULL);
  sl_buf_close(&b);
  /* an output that goes (a reload) takes its series with it */
  sl_output_stop(r.dl);
  sl_output_close_handles(r.dl);
  uv_run(&r.w.loop, UV_RUN_NOWAIT);
  sl_output_close(r.dl);
  r.w.noutputs = 1;
  t = render_metrics(&r, &b);
  CHECK(strstr(t, "output=\"dlq\"") == NULL);
  CHECK(strstr(t, "sluice_output_events_total{output=\"main\"} 0\n"));
  sl_buf_close(&b);
  rig_close(&r);
}

TEST(output_rate_limit_lets_a_burst_out_then_the_rest_as_tokens_return) {
  struct rig r;
  rig_init(&r, 0);
  r.oc[0].rate_limit.events_per_second = 10; /* a token every 100 ms */
  r.oc[0].rate_limit.burst = 2;
  r.oc[0].batch_events = 64;
  CHECK(rig_go(&r, OK, 6, NULL) == 0);
  CHECK(run_calls(&r, 0, 1));
  /* the first write holds the burst only; the others waited, counted */
  CHECK_EQ(fakes[0].last.n, 2u);
  CHECK(r.o->stats.rate_limited >= 4);
  CHECK(run_until(&r, &r.o->stats.events_out, 6));
  CHECK(fakes[0].calls >= 3); /* the rest came out as tokens came back */
  CHECK_EQ(r.o->stats.rate_limited, 4u); /* each waiting event once */
  rig_close(&r);
}

TEST(output_dedup_drops_a_repeated_id_inside_its_window_counted) {
  struct rig r;
  struct sl_idgen g;
  struct sl_str id = {"same-id", 7}, none = {NULL, 0}, topic = {"t", 1};
  struct sl_event *a, *b;
  rig_init(&r, 0);
  r.oc[0].dedup.window_ms = 60000;
  r.oc[0].dedup.max_ids = 16;
  CHECK(rig_go(&r, HOLD, 0, NULL) == 0);
  sl_idgen_init(&g);
  a = sl_event_new(&g, id, topic, none, 0, 0, NULL, 0, NULL, 0, 0);
  b = sl_event_new(&g, id, topic, none, 0, 0, NULL, 0, NULL, 0, 0);
  CHECK(a != NULL && b != NULL);
  CHECK_EQ(sl_output_push(r.o, a), 0);
  CHECK_EQ(sl_output_push(r.o, b), SL_E2BIG);
  sl_event_unref(a);
  sl_event_unref(b);
  CHECK_EQ(r.o->q.count, 1u);
  CHECK_EQ(r.o->stats.dropped_dedup, 1u);
  push(&r, 1); /* another id passes */
  CHECK_EQ(r.o->q.count, 2u);
  rig_close(&r);
}

TEST(output_retry_after_replaces_the_backoff_once) {
  struct rig r;
  uint64_t due;
  rig_init(&r, 0);
  r.oc[0].retry.initial_ms = 1;
  r.oc[0].retry.max_ms = 2;
  CHECK(rig_go(&r, HOLD, 1, NULL) == 0);
  run_ms(&r, 5);
  CHECK_EQ(fakes[0].calls, 1);
  sl_output_retry_after(r.o, 300);
  sl_output_done(r.o, 0, SL_WRITE_RETRY, "HTTP 429");
  /* the peer's 300 ms, not the 1-2 ms backoff */
  due = uv_timer_get_due_in(&r.o->retry_timer);
  CHECK(due > 200 && due <= 300);
  CHECK_EQ(r.o->retry_after_ms, 0u);     /* once: the next failure backs off */
  CHECK_EQ(r.o->stats.retries, 1u);      /* the attempt still counts */
  fakes[0].mode = OK;
  CHECK(run_until(&r, &r.o->stats.events_out, 1));
  rig_close(&r);
}

TEST(output_notes_ride_on_the_refused_event_and_are_cleared) {
  struct rig r;
  struct sl_event *ev;
  rig_init(&r, 1);
  CHECK(rig_go(&r, HOLD, 2, NULL) == 0);
  fakes[1].mode = HOLD;
  run_ms(&r, 5);
  sl_output_note(r.o, "sluice-http-status", "400", 3);
  sl_output_note(r.o, "sluice-http-body", "bad field", 9);
  sl_output_note(r.o, "third", "dropped: two at most", 20);
  sl_output_done(r.o, 0, SL_WRITE_FATAL, "HTTP 400");
  CHECK_EQ(r.o->nnotes, 0);
  CHECK(run_calls(&r, 1, 1));
  ev = sl_queue_at(&r.dl->q, 0);
  CHECK(memmem(ev->data, ev->len, "sluice-http-status", 18) != NULL);
  CHECK(memmem(ev->data, ev->len, "bad field", 9) != NULL);
  CHECK(memmem(ev->data, ev->len, "third", 5) == NULL);
  rig_close(&r);
}

/* ---- the tcp output's watchdog (worker/peer.c) on a real socket ---------- */

/* A check callback (it runs after the loop's poll) that answers for the
 * peer and then keeps the loop busy: the ack is in the engine's socket in
 * time, but the loop reaches its timers before it polls again. */
struct busy_turn {
  uv_check_t check;
  uv_idle_t idle; /* while armed: the poll does not sleep */
  struct sl_peer *p;
  int peer_fd, armed;
  uint8_t ack;
  uint32_t busy_ms;
};

static void busy_turn_cb(uv_check_t *h) {
  struct busy_turn *b = h->data;
  if (!b->armed)
    return;
  b->armed = 0;
  uv_idle_stop(&b->idle);
  /* the deadline counts from now (as if the write just completed): the
   * ack below is in time however long this test waited to get here */
  sl_peer_progress(b->p);
  if (write(b->peer_fd, &b->ack, 1) != 1) /* msgpack fixint: the count */
    return;
  usleep(b->busy_ms * 1000u); /* a slow disk, a loaded machine */
}

static void idle_noop(uv_idle_t *h) { (void)h; }

static int listen_local(int *port) {
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      listen(fd, 8) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

/* Turn the loop until the listener lfd has a connection (or 5 s). */
static int accept_peer(struct rig *r, int lfd) {
  uint64_t end = sl_mono_ns() + 5000000000ull;
  int fd = -1;
  while (fd < 0 && sl_mono_ns() < end) {
    uv_run(&r->w.loop, UV_RUN_NOWAIT);
    fd = accept(lfd, NULL, NULL);
    if (fd < 0)
      usleep(1000);
  }
  return fd;
}

/* Start r's output 0 as a tcp output with acks to a local listener (its
 * fd in *lfd) and the given timeout; return the peer's accepted fd with
 * events 0..3 written to it and awaiting its ack, or -1. */
static int tcp_rig_go(struct rig *r, int *lfd, uint32_t timeout_ms) {
  static char address[32];
  char why[256];
  int port, fd, i;
  uint64_t end;
  *lfd = listen_local(&port);
  if (*lfd < 0)
    return -1;
  snprintf(address, sizeof(address), "127.0.0.1:%d", port);
  rig_init(r, 0);
  r->oc[0].type = "tcp";
  r->oc[0].address = address;
  r->oc[0].ack = 1;
  r->oc[0].retry.timeout_ms = timeout_ms;
  rig_ops = sl_plugin_find(SL_PLUGIN_OUTPUT, "tcp")->output;
  if (rig_start(r) != 0 || r->o->ops->cb_start(r->o, why, sizeof(why)) != 0)
    return -1;
  if ((fd = accept_peer(r, *lfd)) < 0)
    return -1;
  for (i = 0; i < 4; i++)
    push(r, i);
  end = sl_mono_ns() + 5000000000ull;
  while ((r->o->q.inflight < 4 || ((struct sl_peer *)r->o->data)->writing) &&
         sl_mono_ns() < end)
    uv_run(&r->w.loop, UV_RUN_NOWAIT), usleep(1000);
  return r->o->q.inflight == 4 ? fd : -1;
}

TEST(output_tcp_watchdog_reads_an_ack_that_arrived_while_the_loop_was_busy) {
  struct rig r;
  struct busy_turn b;
  char buf[4096];
  int lfd;
  ssize_t n;
  memset(&b, 0, sizeof(b));
  b.peer_fd = tcp_rig_go(&r, &lfd, 200);
  CHECK(b.peer_fd >= 0);
  b.p = r.o->data;
  /* the 4 are written and wait for the peer's ack under the watchdog */
  CHECK(uv_is_active((uv_handle_t *)&((struct sl_peer *)r.o->data)->watchdog));
  /* the peer acks all 4 well inside the 200 ms; the loop is then busy
   * for 2.5 times that before it polls again */
  b.ack = 4;
  b.busy_ms = 500;
  b.armed = 1;
  uv_check_init(&r.w.loop, &b.check);
  b.check.data = &b;
  uv_check_start(&b.check, busy_turn_cb);
  uv_idle_init(&r.w.loop, &b.idle);
  uv_idle_start(&b.idle, idle_noop);
  CHECK(run_until(&r, &r.o->stats.events_out, 4));
  CHECK_EQ(r.o->stats.errors, 0u); /* the connection was not given up */
  CHECK_EQ(r.o->q.count, 0u);
  /* and it is still open: the peer reads the hello and the events, then
   * no end of the stream */
  while ((n = recv(b.peer_fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
    ;
  CHECK(n < 0 && errno == EAGAIN);
  /* a peer that stays silent is still given up on after the timeout */
  push(&r, 4);
  CHECK(run_until(&r, &r.o->stats.errors, 1));
  uv_close((uv_handle_t *)&b.check, NULL);
  uv_close((uv_handle_t *)&b.idle, NULL);
  rig_close(&r);
  close(b.peer_fd);
  close(lfd);
}

TEST(output_tcp_reads_the_acks_before_a_reset_that_fails_its_next_write) {
  struct rig r;
  struct linger lg = {1, 0};
  uint8_t ack = 4;
  char buf[4096];
  int lfd, peer, i, outq = 1;
  signal(SIGPIPE, SIG_IGN); /* as sluice's main: a write fails instead */
  peer = tcp_rig_go(&r, &lfd, 0); /* no watchdog: the failed write drops */
  CHECK(peer >= 0);
  /* the peer acks the 4, sees its ack reach the engine's socket, then
   * resets the connection (a crash, the chaos sink's drop) */
  while (recv(peer, buf, sizeof(buf), MSG_DONTWAIT) > 0)
    ;
  CHECK(write(peer, &ack, 1) == 1);
  for (i = 0; i < 1000 && outq != 0; i++)
    if (ioctl(peer, SIOCOUTQ, &outq) != 0 || outq != 0)
      usleep(1000);
  CHECK_EQ(outq, 0);
  setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  close(peer);
  /* before the loop polls, the next batch is written (an input's read
   * does it): the write fails, and libuv reports that before any read */
  for (i = 4; i < 8; i++)
    push(&r, i);
  sl_output_flush_full(&r.w);
  CHECK(run_until(&r, &r.o->stats.errors, 1));
  run_ms(&r, 20);
  /* the 4 acked left; the 4 of the failed write wait to go again */
  CHECK_EQ(r.o->stats.events_out, 4u);
  CHECK_EQ(r.o->q.count, 4u);
  rig_close(&r);
  close(lfd);
}

/* Turn the loop and read fd until it brought want whole msgpack values
 * (or 5 s); they are counted in *got. */
static int peer_read_values(struct rig *r, int fd, uint32_t want,
                            uint32_t *got) {
  static uint8_t in[1 << 16];
  size_t len = 0;
  uint64_t end = sl_mono_ns() + 5000000000ull;
  size_t used;
  ssize_t n;
  while (*got < want && sl_mono_ns() < end) {
    uv_run(&r->w.loop, UV_RUN_NOWAIT);
    n = recv(fd, in + len, sizeof(in) - len, MSG_DONTWAIT);
    if (n > 0)
      len += (size_t)n;
    while (len && sl_codec_skip(in, len, sizeof(in), &used, NULL) == 0) {
      memmove(in, in + used, len - used);
      len -= used;
      (*got)++;
    }
    if (n <= 0)
      usleep(1000);
  }
  return *got >= want;
}

/* A write that fails while the read side sees no end (the engine's own
 * half of the socket shut for writing: EPIPE, the peer still there and
 * quiet): with retry.timeout_ms = 0 nothing else would ever drop it, the
 * write_error watchdog must, after the ack already in the socket was
 * read; the next connection starts clean (no write_error) and carries
 * exactly the unacked and the failed events, once. */
TEST(output_tcp_failed_write_without_eof_drops_after_reading_acks_timeout_0) {
  struct rig r;
  struct sl_peer *p;
  uint8_t ack = 2;
  int lfd, peer, peer2, i, outq = 1;
  uv_os_fd_t fd;
  uint32_t got = 0;
  signal(SIGPIPE, SIG_IGN);
  peer = tcp_rig_go(&r, &lfd, 0);
  CHECK(peer >= 0);
  p = r.o->data;
  /* the peer acks 2 of the 4; the ack is in the engine's socket */
  CHECK(write(peer, &ack, 1) == 1);
  for (i = 0; i < 1000 && outq != 0; i++)
    if (ioctl(peer, SIOCOUTQ, &outq) != 0 || outq != 0)
      usleep(1000);
  CHECK_EQ(outq, 0);
  CHECK(uv_fileno(&p->conn->h.handle, &fd) == 0);
  CHECK(shutdown(fd, SHUT_WR) == 0);
  for (i = 4; i < 8; i++)
    push(&r, i);
  sl_output_flush_full(&r.w); /* the write fails before any poll */
  CHECK(run_until(&r, &r.o->stats.errors, 1));
  CHECK_EQ(r.o->stats.events_out, 2u); /* the ack was read first */
  CHECK_EQ(r.o->q.count, 6u);
  CHECK(p->conn == NULL || p->write_error == 0);
  /* the new connection: the hello, then events 2..7 once; acked, they
   * leave and nothing more fails */
  peer2 = accept_peer(&r, lfd);
  CHECK(peer2 >= 0);
  CHECK(peer_read_values(&r, peer2, 7, &got));
  CHECK_EQ(p->write_error, 0);
  ack = 6;
  CHECK(write(peer2, &ack, 1) == 1);
  CHECK(run_until(&r, &r.o->stats.events_out, 8));
  run_ms(&r, 20);
  CHECK(recv(peer2, &ack, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN);
  CHECK_EQ(r.o->q.count, 0u);
  CHECK_EQ(r.o->stats.errors, 1u);
  rig_close(&r);
  close(peer2);
  close(peer);
  close(lfd);
}
