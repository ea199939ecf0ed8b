/* output.c - the output runtime, one for every plugin: the flush loop,
 * confirmed deliveries, retries with backoff, the circuit breaker, the
 * dead letter, rate limits and dedup; see output.h. */
#include "output.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dedup.h"
#include "worker.h"

/* ---- outputs ----------------------------------------------------------- */

static void flush(struct sl_output *o);

static void on_flush_idle(uv_idle_t *h) {
  struct sl_worker *w = container_of(h, struct sl_worker, flush_idle);
  struct sl_output *o;

  /* flushing may kick outputs again: take the list first */
  o = w->dirty;
  w->dirty = NULL;
  while (o) {
    struct sl_output *next = o->next_dirty;
    o->next_dirty = NULL;
    o->dirty = 0;
    if (!o->stopped && o->q.count > o->q.inflight)
      flush(o);
    o = next;
  }
  if (w->dirty == NULL)
    uv_idle_stop(&w->flush_idle);
}

void sl_output_kick(struct sl_output *o) {
  struct sl_worker *w = o->w;
  if (o->dirty || o->stopped)
    return;
  o->dirty = 1;
  o->next_dirty = w->dirty;
  w->dirty = o;
  uv_idle_start(&w->flush_idle, on_flush_idle);
}

/* libuv reads a busy stream up to 32 times (4 MiB here) before the loop
 * turn reaches the idle flush: tens of thousands of events would wait in
 * the queue, their blocks past the free lists (malloc'd, then freed) and
 * out of the caches. A whole batch goes out at once instead. Walking the
 * dirty list is safe: a write may kick (a push at its head) or, waking a
 * producer, run this again, where outputs in a write are skipped. */
void sl_output_flush_full(struct sl_worker *w) {
  sl_output_flush_due(w, UINT64_MAX);
}

/* A part batch goes out too once its oldest event waited hold_ns: else
 * an event waits for the end of its read (~500 events) and, short of a
 * whole batch, for the end of the loop turn: libuv reads up to 32 times a
 * turn, ~30,000 events after a stall (the engine's p99 was ms at half the
 * maximum rate). The wait counts from the output's last such write when
 * later: the events of one read share its time, so they would all be old
 * at once (flat out into a tcp sink: 11 writes per 1000 events instead of
 * 1.7, and 10% fewer events/s). Outputs with a write in flight are skipped
 * (before the clock read): their batches grow meanwhile, as before. */
void sl_output_flush_due(struct sl_worker *w, uint64_t hold_ns) {
  struct sl_output *o;
  uint64_t now = 0, since;
  for (o = w->dirty; o; o = o->next_dirty) {
    if (o->stopped || o->writing || o->q.count <= o->q.inflight)
      continue;
    if (o->q.count - o->q.inflight < o->cfg->batch_events) {
      if (hold_ns == UINT64_MAX)
        continue;
      if (now == 0)
        now = sl_mono_ns();
      since = sl_queue_at(&o->q, o->q.inflight)->ingest_ns;
      if (o->due_ns > since)
        since = o->due_ns;
      /* since > now: pushed or written by a flush nested in a write's
       * callback after our clock read; not due (now - since would wrap) */
      if (since > now || now - since < hold_ns)
        continue;
      o->due_ns = now;
    }
    flush(o);
  }
}

static void succeeded(struct sl_output *o) {
  uint32_t failures = o->retry.consecutive;
  if (sl_retry_succeed(&o->retry))
    sl_log(SL_LOG_INFO, "output circuit breaker closed",
           SL_S("output", o->cfg->name), SL_U("failures", failures), SL_END);
  o->stats.breaker_state = (int)o->retry.state;
}

static void sl_output_delivered(struct sl_output *o, uint32_t n,
                                uint64_t bytes) {
  uint64_t now = sl_mono_ns();
  uint32_t i;
  for (i = 0; i < n; i++)
    sl_histogram_observe(&o->stats.latency,
                         (double)(now - sl_queue_at(&o->q, i)->ingest_ns) / 1e9);
  o->stats.events_out += n;
  o->stats.bytes_out += bytes;
  sl_buffer_delivered(&o->buf, &o->q, n);
  if (n > 0)
    succeeded(o);
  if (o->q.count > o->q.inflight)
    sl_output_kick(o); /* read back from a disk buffer, or already queued */
}

/* ---- retries, the circuit breaker and dead letters ---------------------- */

/* Delivery attempts, inside the core (an attempt: a connect, or a write
 * of the batch at the head of the queue). All run on the loop, from
 * callbacks.
 *
 * sl_output_failed: an attempt failed; error is the text for the log and
 * the sluice-error header. Counts it and feeds the breaker; when the head
 * events used up retry.max_attempts or retry.max_elapsed_ms and
 * may_dead_letter is set, moves them (the in-flight events, or one batch
 * when none are in flight) to the dead-letter output and out of the queue.
 * Returns the ms to wait before the next attempt; *moved (may be NULL)
 * gets the number of events moved. The dead-letter output never
 * dead-letters into itself: it retries for ever.
 *
 * sl_output_retry_wait: call when a retry timer fires, before the attempt.
 * Moves a head whose max_elapsed_ms ran out (as above) and returns the ms
 * the breaker still forbids attempts (0: attempt now; when the breaker was
 * open it is half-open now and this attempt is the probe).
 *
 * sl_output_may_send: may another write start? Not while the breaker is
 * open, and while half-open only when nothing is in flight (the probe).
 *
 * sl_output_quota: how many of want events rate_limit lets out now (the
 * tokens are taken). Below want, a timer kicks the output once a token is
 * back. Without a rate limit, want.
 *
 * sl_output_refuse_head: the event at the head of the queue can never be
 * delivered (say, it is larger than the peer accepts): with nothing in
 * flight, it leaves the queue now, to the dead-letter output with why as
 * its sluice-error, or, when o has no dead letter (or is it), dropped:
 * logged and counted in stats.refused. Returns 1 when it left, 0 when it
 * stays (something is in flight, or the dead letter cannot take it now). */

/* Move the head events (those in flight, or one batch when none are) to
 * the dead-letter output, each a copy with the sluice-error, sluice-output
 * and sluice-attempts headers, and out of o's queue (a disk buffer
 * acknowledges them). Stops early when the dead-letter output cannot take
 * more now (a full queue that blocks) or memory runs out: the rest stay
 * and are tried again. Returns how many left the queue. */
static uint32_t dead_letter_n(struct sl_output *o, uint32_t n,
                              const char *error);

static uint32_t dead_letter_head(struct sl_output *o) {
  uint32_t n = o->q.inflight ? o->q.inflight : o->q.count;
  if (n > o->cfg->batch_events)
    n = o->cfg->batch_events;
  return dead_letter_n(o, n,
                       o->last_error[0] ? o->last_error : "delivery failed");
}

/* The dead-letter output, or NULL when o has none to send to (none is
 * configured, o is it, or it stopped). */
static struct sl_output *dead_letter_of(struct sl_output *o) {
  struct sl_worker *w = o->w;
  if (w->cfg->dead_letter < 0 || w->cfg->dead_letter == o->index ||
      w->cfg->dead_letter >= w->noutputs)
    return NULL;
  if (w->outputs[w->cfg->dead_letter].stopped)
    return NULL;
  return &w->outputs[w->cfg->dead_letter];
}

/* ev (its reference taken) with o's notes as headers, or NULL when out of
 * memory. */
static struct sl_event *with_notes(struct sl_output *o, struct sl_event *ev) {
  int i;
  for (i = 0; ev && i < o->nnotes; i++) {
    struct sl_event *n = sl_event_with_header(ev, o->notes[i].name,
                                              o->notes[i].value,
                                              o->notes[i].len);
    sl_event_unref(ev);
    ev = n;
  }
  return ev;
}

void sl_output_note(struct sl_output *o, const char *name, const char *value,
                    size_t value_len) {
  struct sl_output_note *n;
  if (o->nnotes >= (int)(sizeof(o->notes) / sizeof(*o->notes)))
    return;
  n = &o->notes[o->nnotes++];
  snprintf(n->name, sizeof(n->name), "%s", name);
  if (value_len > sizeof(n->value))
    value_len = sizeof(n->value);
  memcpy(n->value, value, value_len);
  n->len = value_len;
}

void sl_output_retry_after(struct sl_output *o, uint32_t ms) {
  o->retry_after_ms = ms ? ms : 1;
}

/* As dead_letter_head, for the first n events, with error as the reason. */
static uint32_t dead_letter_n(struct sl_output *o, uint32_t n,
                              const char *error) {
  struct sl_output *dl = dead_letter_of(o);
  uint32_t i, moved = 0, taken = 0;
  uint64_t suppressed;
  char attempts[16];

  if (dl == NULL)
    return 0; /* the dead-letter output itself retries for ever */
  snprintf(attempts, sizeof(attempts), "%u", o->retry.attempts);
  for (i = 0; i < n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, i), *a, *b = NULL, *c = NULL;
    int rc;
    a = sl_event_with_header(ev, "sluice-error", error, strlen(error));
    if (a)
      b = sl_event_with_header(a, "sluice-output", o->cfg->name,
                               strlen(o->cfg->name));
    if (b)
      c = sl_event_with_header(b, "sluice-attempts", attempts,
                               strlen(attempts));
    sl_event_unref(a);
    sl_event_unref(b);
    c = with_notes(o, c);
    if (c == NULL)
      break;
    rc = sl_output_push(dl, c);
    sl_event_unref(c);
    if (rc == SL_EAGAIN || rc == SL_EIO)
      break; /* the dead letter cannot take it now: it stays here */
    moved++;
    if (rc == 0)
      taken++; /* else dropped by the dead-letter output, counted there */
  }
  if (moved == 0)
    return 0;
  sl_buffer_delivered(&o->buf, &o->q, moved);
  o->stats.dead_lettered += taken;
  if (sl_log_allow(&o->dead_letter_log, &suppressed))
    sl_log(SL_LOG_WARN, "output gave up on events; sent to the dead letter",
           SL_S("output", o->cfg->name), SL_U("events", moved),
           SL_U("attempts", o->retry.attempts), SL_S("error", error),
           SL_S("dead_letter", dl->cfg->name), SL_U("suppressed", suppressed),
           SL_END);
  sl_retry_head_done(&o->retry);
  if (o->q.count > o->q.inflight)
    sl_output_kick(o);
  return moved;
}

static uint32_t sl_output_refuse_head(struct sl_output *o, const char *why) {
  uint64_t suppressed;
  if (o->q.inflight || o->q.count == 0)
    return 0;
  if (dead_letter_n(o, 1, why) == 1)
    return 1;
  if (dead_letter_of(o) != NULL)
    return 0; /* the dead letter cannot take it now: try again later */
  /* nobody can take it, and sending it would wedge the output for good */
  sl_buffer_delivered(&o->buf, &o->q, 1);
  o->stats.refused++;
  if (sl_log_allow(&o->dead_letter_log, &suppressed))
    sl_log(SL_LOG_ERROR, "output cannot send an event and has no dead letter "
           "to give it to; dropped", SL_S("output", o->cfg->name),
           SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
  if (o->q.count > o->q.inflight)
    sl_output_kick(o);
  return 1;
}

static void log_half_open(struct sl_output *o, int was_open) {
  o->stats.breaker_state = (int)o->retry.state;
  if (was_open && o->retry.state == SL_BREAKER_HALF_OPEN)
    sl_log(SL_LOG_DEBUG, "output circuit breaker half-open; probing",
           SL_S("output", o->cfg->name), SL_END);
}

static uint32_t sl_output_failed(struct sl_output *o, const char *error,
                                 int may_dead_letter, uint32_t *moved) {
  struct sl_retry_verdict v;
  uint64_t now = sl_mono_ns();
  uint32_t n = 0, deadline;
  int has_head = o->q.count > 0, probing;

  snprintf(o->last_error, sizeof(o->last_error), "%s", error);
  probing = o->retry.state == SL_BREAKER_HALF_OPEN;
  sl_retry_fail(&o->retry, now, has_head, &v);
  if (v.opened) {
    o->stats.breaker_opens++;
    /* one line per outage at warn; its probes every open_ms at debug */
    sl_log(probing ? SL_LOG_DEBUG : SL_LOG_WARN,
           probing ? "output circuit breaker probe failed; open again"
                   : "output circuit breaker open; no attempts for open_ms",
           SL_S("output", o->cfg->name),
           SL_U("failures", o->retry.consecutive),
           SL_U("open_ms", o->cfg->breaker.open_ms), SL_S("error", error),
           SL_END);
  }
  if (v.exhausted && may_dead_letter)
    n = dead_letter_head(o);
  if (n == 0 && has_head)
    o->stats.retries++; /* the head stays for another attempt */
  o->stats.breaker_state = (int)o->retry.state;
  if (moved)
    *moved = n;
  /* wake up in time to dead-letter a head whose max_elapsed_ms runs out */
  deadline = sl_retry_deadline_ms(&o->retry, now);
  return v.delay_ms < deadline ? v.delay_ms : deadline;
}

static uint32_t sl_output_retry_wait(struct sl_output *o,
                                     int may_dead_letter, uint32_t *moved) {
  uint64_t now = sl_mono_ns();
  uint32_t n = 0, wait, deadline;
  int was_open = o->retry.state == SL_BREAKER_OPEN;

  if (may_dead_letter && o->q.count > 0 && sl_retry_exhausted(&o->retry, now))
    n = dead_letter_head(o);
  if (moved)
    *moved = n;
  if (!sl_retry_allow(&o->retry, now, &wait)) {
    deadline = sl_retry_deadline_ms(&o->retry, now);
    return wait < deadline ? wait : deadline;
  }
  log_half_open(o, was_open);
  return 0;
}

void sl_output_reachable(struct sl_output *o) { succeeded(o); }

static int sl_output_may_send(struct sl_output *o) {
  uint32_t wait;
  int was_open = o->retry.state == SL_BREAKER_OPEN;
  if (o->retry.state == SL_BREAKER_CLOSED)
    return 1;
  if (!sl_retry_allow(&o->retry, sl_mono_ns(), &wait))
    return 0;
  log_half_open(o, was_open);
  return o->q.inflight == 0; /* half-open: one probe at a time */
}

/* ---- rate limit ---------------------------------------------------------- */

static void on_rate_timer(uv_timer_t *t) {
  struct sl_output *o = container_of(t, struct sl_output, rate_timer);
  sl_output_kick(o);
}

/* The limit acts on the delivery side: events wait in the output's queue
 * for tokens, so an input faster than the limit fills the queue and
 * queue.when_full decides, as for any slow output (block pauses the
 * inputs, drop_* drop counted, spill goes to disk). Limiting at the push
 * instead would bypass spill and drop_oldest, and replays from a disk
 * buffer would skip the limit. */
static uint32_t sl_output_quota(struct sl_output *o, uint32_t want) {
  uint64_t now;
  uint32_t got, waiting, before, need;

  if (o->rate.rate == 0 || want == 0)
    return want;
  now = sl_mono_ns();
  got = sl_ratelimit_take(&o->rate, want, now);
  before = o->rate_waiting > got ? o->rate_waiting - got : 0;
  if (got < want) {
    waiting = o->q.count - o->q.inflight - got;
    if (before > waiting)
      before = waiting;
    o->stats.rate_limited += waiting - before; /* each waiting event once */
    o->rate_waiting = waiting;
    /* wake when the rest is there, or 10 ms worth, whichever is less:
     * at most about a hundred wake-ups a second, whatever the rate */
    need = want - got;
    if (need > o->rate.rate / 100)
      need = (uint32_t)(o->rate.rate / 100);
    if (o->rate_timer_open && !uv_is_active((uv_handle_t *)&o->rate_timer))
      uv_timer_start(&o->rate_timer, on_rate_timer,
                     sl_ratelimit_wait_ms(&o->rate, need, now), 0);
  } else {
    o->rate_waiting = before;
  }
  return got;
}

void sl_output_stopped(struct sl_output *o) { o->stopped = 1; }

/* ---- the queue's entry ------------------------------------------------- */

/* Put ev into o (taking a reference) and kick it. Returns 0 when queued
 * or spooled, SL_EAGAIN when the caller must wait on o's queue, SL_E2BIG
 * when it was dropped, counted: by the queue's policy, or as a repeat of
 * an id dedup saw inside its window. Only an event that got in is
 * remembered by dedup, so one that waited or was dropped may come again. */
int sl_output_push(struct sl_output *o, struct sl_event *ev) {
  uint64_t hash = 0, now = 0;
  int rc;

  if (o->dedup) {
    now = sl_mono_ns();
    hash = sl_dedup_hash(o->dedup, ev->data + ev->id_off, ev->id_len);
    if (sl_dedup_seen(o->dedup, hash, now)) {
      o->stats.dropped_dedup++;
      return SL_E2BIG;
    }
  }
  rc = sl_buffer_push(&o->buf, &o->q, ev);
  if (rc == 0) {
    if (o->dedup)
      sl_dedup_add(o->dedup, hash, now);
    sl_output_kick(o);
  }
  return rc;
}


/* ---- writes: the core's side of cb_write ------------------------------- */

static uint64_t bytes_of(struct sl_output *o, uint32_t first, uint32_t n) {
  uint64_t bytes = 0;
  uint32_t i;
  if (first == 0 && n == o->q.count)
    return o->q.bytes;
  for (i = 0; i < n; i++)
    bytes += sl_queue_at(&o->q, first + i)->len;
  return bytes;
}

/* How many of the n events from first fit the plugin's max_event_bytes:
 * the batch ends before one it could never send. */
static uint32_t fitting(struct sl_output *o, uint32_t first, uint32_t n) {
  uint32_t i;
  if (o->max_event_bytes == 0)
    return n;
  for (i = 0; i < n; i++)
    if (sl_queue_at(&o->q, first + i)->len > o->max_event_bytes)
      break;
  return i;
}

/* The head is larger than the plugin can send (sending it would wedge the
 * output for good): it leaves, to the dead letter or dropped, counted.
 * Returns 1 when it left. */
static int refuse_large(struct sl_output *o) {
  char why[200];
  snprintf(why, sizeof(why), "event of %u bytes is larger than the peer "
           "accepts (%u: max_event_bytes%s)",
           (unsigned)sl_queue_at(&o->q, 0)->len, (unsigned)o->max_event_bytes,
           o->max_event_note ? o->max_event_note : "");
  return (int)sl_output_refuse_head(o, why);
}

/* Hand out batches while none is in flight: a plugin that reports at once
 * (null) drains the queue in one go, the others get one write at a time.
 * A failed write's events stay in flight during its backoff, so a head
 * that runs out of time leaves as the batch that was tried. */
static void write_next(struct sl_output *o) {
  struct sl_batch b;
  uint32_t n;

  while (!o->writing && !o->closing && !o->stopped &&
         !uv_is_active((uv_handle_t *)&o->retry_timer) &&
         o->q.count > o->q.inflight) {
    memset(&b, 0, sizeof(b));
    b.first = o->q.inflight;
    if (o->again) {
      n = o->again <= o->q.count - b.first ? o->again : o->q.count - b.first;
      b.again = 1;
    } else {
      if (o->ops->cb_retry && o->ops->cb_healthy && !o->ops->cb_healthy(o))
        return; /* not connected: the plugin kicks us once it is */
      if (!sl_output_may_send(o))
        return; /* the breaker is open: its timer or a kick brings us back */
      n = o->q.count - b.first;
      if (n > o->cfg->batch_events)
        n = o->cfg->batch_events;
      n = fitting(o, b.first, n);
      if (n == 0) {
        if (o->q.inflight || !refuse_large(o))
          return; /* after what is in flight, or the dead letter has room */
        continue;
      }
      n = sl_output_quota(o, n);
      if (n == 0)
        return; /* rate_limit: kicked again when tokens are back */
    }
    b.n = n;
    b.bytes = bytes_of(o, b.first, n);
    o->again = 0;
    o->q.inflight = b.first + n;
    o->writing = n;
    o->ops->cb_write(o, &b);
  }
}

static void flush(struct sl_output *o) { write_next(o); }

static void on_retry_timer(uv_timer_t *t) {
  struct sl_output *o = container_of(t, struct sl_output, retry_timer);
  uint32_t wait;
  if (o->closing || o->writing)
    return;
  /* a head past max_elapsed_ms goes to the dead letter first (never half
   * a write: AGAIN); an open breaker makes us wait on */
  wait = sl_output_retry_wait(o, o->again == 0, NULL);
  if (wait) {
    uv_timer_start(&o->retry_timer, on_retry_timer, wait, 0);
    return;
  }
  o->q.inflight = 0; /* the failed events are offered again */
  if (o->ops->cb_retry)
    o->ops->cb_retry(o); /* reconnect; it kicks us once connected */
  write_next(o);
}

void sl_output_written(struct sl_output *o) {
  if (!o->acks || o->writing == 0)
    return;
  o->unconfirmed += o->writing; /* they leave with done() */
  o->writing = 0;
  if (!o->closing && o->q.count > o->q.inflight)
    sl_output_kick(o);
}

void sl_output_done(struct sl_output *o, uint32_t n_ok,
                    enum sl_write_status st, const char *why) {
  uint32_t delay, moved = 0;

  if (!o->acks && o->writing == 0 && st == SL_WRITE_OK)
    return; /* no write in flight: a second report */
  if (o->closing && n_ok == 0)
    return;
  /* n_ok: the oldest events in flight, those written and awaiting
   * confirmation first (acks), then the write in flight */
  if (n_ok > o->q.inflight)
    n_ok = o->q.inflight;
  if (n_ok) {
    sl_output_delivered(o, n_ok, bytes_of(o, 0, n_ok)); /* pops them */
    if (n_ok > o->unconfirmed) {
      uint32_t k = n_ok - o->unconfirmed;
      o->writing -= k < o->writing ? k : o->writing;
      o->unconfirmed = 0;
    } else {
      o->unconfirmed -= n_ok;
    }
  }
  if (!o->acks)
    o->writing = 0; /* the report ends the write */
  if (o->closing || st == SL_WRITE_OK) {
    if (!o->acks)
      o->q.inflight = 0; /* what was not written goes in a later write */
    if (!o->closing && o->q.count > o->q.inflight)
      sl_output_kick(o);
    return;
  }
  /* a failure ends everything in flight: what was not confirmed goes
   * again (at-least-once) */
  o->writing = 0;
  o->unconfirmed = 0;
  if (st == SL_WRITE_FATAL) {
    uint32_t left;
    o->q.inflight = 0;
    left = sl_output_refuse_head(o, why ? why : "cannot be delivered");
    o->nnotes = 0;
    if (left)
      return; /* it kicked us */
    /* the dead letter cannot take it now: look again after a while */
    uv_timer_start(&o->retry_timer, on_retry_timer,
                   o->cfg->retry.initial_ms ? o->cfg->retry.initial_ms : 100,
                   0);
    return;
  }
  o->stats.errors++;
  /* the failed events stay in flight during the backoff, so a head that
   * runs out of attempts leaves as the batch that was tried */
  delay = sl_output_failed(o, why ? why : "write failed",
                           st == SL_WRITE_RETRY, &moved);
  if (o->retry_after_ms && !moved) {
    /* the peer's wish, within the head's max_elapsed_ms */
    uint32_t deadline = sl_retry_deadline_ms(&o->retry, sl_mono_ns());
    delay = o->retry_after_ms < deadline ? o->retry_after_ms : deadline;
  }
  o->retry_after_ms = 0;
  o->nnotes = 0;
  if (st == SL_WRITE_AGAIN)
    o->again = o->q.inflight;
  else if (moved)
    o->q.inflight = 0; /* the batch left for the dead letter */
  uv_timer_start(&o->retry_timer, on_retry_timer, delay, 0);
}

/* ---- metrics ----------------------------------------------------------- */

/* A family read from a uint64_t of struct sl_output, one series each. */
struct field_metric {
  struct sl_metric m;
  size_t off;
};

#define C SL_METRIC_COUNTER
#define G SL_METRIC_GAUGE
#define OUT {"output", NULL}
#define AT(f) offsetof(struct sl_output, f)
static const struct field_metric field_metrics[] = {
    {{"sluice_output_events_total",
      "Events delivered and confirmed by an output.", C, OUT},
     AT(stats.events_out)},
    {{"sluice_output_bytes_total", "Bytes of events delivered by an output.",
      C, OUT}, AT(stats.bytes_out)},
    {{"sluice_output_errors_total",
      "Delivery failures (lost connections, write errors).", C, OUT},
     AT(stats.errors)},
    {{"sluice_output_retries_total",
      "Failed delivery attempts after which the events stayed queued for "
      "another attempt.", C, OUT}, AT(stats.retries)},
    {{"sluice_output_resolve_failures_total",
      "Connects whose peer host name did not resolve.", C, OUT},
     AT(stats.resolve_failures)},
    {{"sluice_output_dead_lettered_total",
      "Events that used up their retries and went to the dead-letter "
      "output.", C, OUT}, AT(stats.dead_lettered)},
    {{"sluice_output_refused_total",
      "Events the output could never send (larger than max_event_bytes) and "
      "no dead letter took: dropped.", C, OUT}, AT(stats.refused)},
    {{"sluice_output_rate_limited_total",
      "Events that had to wait for a rate_limit token.", C, OUT},
     AT(stats.rate_limited)},
    {{"sluice_output_breaker_opens_total",
      "Times the circuit breaker opened.", C, OUT}, AT(stats.breaker_opens)},
    {{"sluice_queue_bytes", "Bytes of the events in an output's queue.", G,
      OUT}, AT(q.bytes)},
    {{"sluice_queue_capacity_bytes", "The most bytes an output's queue holds.",
      G, OUT}, AT(q.max_bytes)},
};

static const struct sl_metric m_breaker_state = {
    "sluice_output_breaker_state",
    "Circuit breaker: 0 closed, 1 open (no attempts), 2 half-open "
    "(probing).", G, OUT};
static const struct sl_metric m_healthy = {
    "sluice_output_healthy",
    "1 when the output can deliver now (connected, file open).", G, OUT};
static const struct sl_metric m_queue_events = {
    "sluice_queue_events", "Events in an output's queue, in flight included.",
    G, OUT};
static const struct sl_metric m_queue_capacity = {
    "sluice_queue_capacity_events", "The most events an output's queue holds.",
    G, OUT};
static const struct sl_metric m_dropped = {
    "sluice_events_dropped_total",
    "Events dropped, by reason (and output for full queues).", C,
    {"reason", "output", NULL}};
static const struct sl_metric m_latency = {
    "sluice_delivery_latency_seconds",
    "Time from ingest to confirmed delivery.", SL_METRIC_HISTOGRAM, OUT};
#undef C
#undef G
#undef OUT
#undef AT

/* The gauges that are not a uint64_t of their own. */
static void collect(struct sl_metric_out *out, const struct sl_metric *m,
                    void *data) {
  struct sl_output *o = data;
  const char *v[] = {o->cfg->name};
  uint64_t n;
  if (m == &m_breaker_state)
    n = (uint64_t)o->stats.breaker_state;
  else if (m == &m_healthy)
    n = !o->stopped && (o->ops->cb_healthy == NULL || o->ops->cb_healthy(o));
  else if (m == &m_queue_events)
    n = o->q.count;
  else
    n = o->q.max_events;
  sl_metric_put_u64(out, v, n);
}

/* o's series in its worker's registry, removed by sl_output_close. */
static int add_metrics(struct sl_output *o) {
  struct sl_metric_registry *r = o->w->metrics;
  const char *name = o->cfg->name;
  const char *v[] = {name};
  const char *newest[] = {"queue_full_newest", name},
             *oldest[] = {"queue_full_oldest", name}, *dedup[] = {"dedup", name};
  size_t i;
  int rc = 0;
  for (i = 0; rc == 0 && i < sizeof(field_metrics) / sizeof(*field_metrics);
       i++)
    rc = sl_metric_add_u64(r, &field_metrics[i].m, v,
                           (const uint64_t *)((const char *)o +
                                              field_metrics[i].off), o);
  if (rc == 0)
    rc = sl_metric_add(r, &m_breaker_state, collect, o);
  if (rc == 0)
    rc = sl_metric_add(r, &m_healthy, collect, o);
  if (rc == 0)
    rc = sl_metric_add(r, &m_queue_events, collect, o);
  if (rc == 0)
    rc = sl_metric_add(r, &m_queue_capacity, collect, o);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_dropped, newest, &o->q.dropped_newest, o);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_dropped, oldest, &o->q.dropped_oldest, o);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_dropped, dedup, &o->stats.dropped_dedup, o);
  if (rc == 0)
    rc = sl_metric_add_hist(r, &m_latency, v, &o->stats.latency, o);
  return rc;
}

/* ---- lifecycle ----------------------------------------------------------- */

int sl_output_init(struct sl_output *o, struct sl_worker *w, int index,
                   const struct sl_output_ops *ops, char *why, size_t whylen) {
  /* a reload sets o->cfg first: its config is not w->cfg yet */
  const struct sl_output_config *oc = o->cfg ? o->cfg : &w->cfg->outputs[index];
  struct sl_buffer_config bc;
  int rc;

  o->ops = ops;
  o->cfg = oc;
  o->w = w;
  o->index = index;
  o->stopped = 1; /* until started */
  rc = sl_queue_init(&o->q, oc->queue.max_events, oc->queue.max_bytes,
                     oc->queue.when_full);
  if (rc != 0)
    return rc;
  sl_retry_init(&o->retry, &oc->retry, &oc->breaker,
                sl_mono_ns() ^ (uint64_t)getpid() << 32 ^ (uint64_t)index);
  sl_log_limiter_init(&o->dead_letter_log, 10000, 20);
  uv_timer_init(&w->loop, &o->retry_timer);
  o->retry_timer_open = 1;
  if (oc->rate_limit.events_per_second) {
    sl_ratelimit_init(&o->rate, oc->rate_limit.events_per_second,
                      oc->rate_limit.burst, sl_mono_ns());
    uv_timer_init(&w->loop, &o->rate_timer);
    o->rate_timer_open = 1;
  }
  if (oc->dedup.window_ms) {
    o->dedup = sl_dedup_new(oc->dedup.window_ms, oc->dedup.max_ids,
                            sl_mono_ns() * 0x9e3779b97f4a7c15ull ^
                                (uint64_t)getpid());
    if (o->dedup == NULL) {
      snprintf(why, whylen, "out of memory for dedup.max_ids");
      return SL_ENOMEM;
    }
  }
  memset(&bc, 0, sizeof(bc));
  bc.mode = oc->buffer.disk ? SL_BUFFER_DISK
            : oc->queue.when_full == SL_QUEUE_SPILL ? SL_BUFFER_SPILL
                                                    : SL_BUFFER_MEMORY;
  bc.path = oc->buffer.path;
  bc.max_bytes = oc->buffer.max_bytes;
  bc.fsync = (enum sl_buffer_fsync)oc->buffer.fsync;
  bc.fsync_interval_ms = oc->buffer.fsync_interval_ms;
  bc.max_record = w->cfg->max_event_bytes + 256;
  bc.when_full = oc->queue.when_full;
  rc = sl_buffer_init(&o->buf, &w->loop, oc->name, &bc, &o->q, why, whylen);
  if (rc == 0)
    rc = add_metrics(o);
  if (rc == 0 && o->buf.mode != SL_BUFFER_MEMORY)
    rc = sl_buffer_metrics(&o->buf, w->metrics);
  if (rc == SL_ENOMEM)
    snprintf(why, whylen, "out of memory");
  return rc;
}

void sl_output_renamed(struct sl_output *o) {
  o->buf.name = o->cfg->name; /* its log lines (and series) follow */
  /* label values are copied when registered: register o's series again */
  sl_metric_remove(o->w->metrics, o);
  if (add_metrics(o) != 0)
    sl_log(SL_LOG_WARN, "out of memory renaming an output's metrics",
           SL_S("output", o->cfg->name), SL_END);
}

void sl_output_stop(struct sl_output *o) {
  o->closing = 1; /* no new writes or retries from the core */
  if (o->retry_timer_open)
    uv_timer_stop(&o->retry_timer);
  if (!o->stopped)
    o->ops->cb_stop(o);
}

void sl_output_close_handles(struct sl_output *o) {
  sl_buffer_stop(&o->buf);
  if (o->rate_timer_open) {
    uv_close((uv_handle_t *)&o->rate_timer, NULL);
    o->rate_timer_open = 0;
  }
  if (o->retry_timer_open) {
    uv_close((uv_handle_t *)&o->retry_timer, NULL);
    o->retry_timer_open = 0;
  }
}

void sl_output_close(struct sl_output *o) {
  if (o->w)
    sl_metric_remove(o->w->metrics, o);
  sl_buffer_close(&o->buf);
  sl_queue_close(&o->q);
  sl_dedup_free(o->dedup);
  o->dedup = NULL;
}
