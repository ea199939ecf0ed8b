/* test_buffer.c - an output's buffer over its spool: a write error is
 * backpressure or a counted refusal and never covered by a durability
 * ticket; a record that is not an event is acknowledged only with the
 * records before it. Write errors come from RLIMIT_FSIZE (EFBIG), which
 * needs no root and no special filesystem. */
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include "buffer.h"
#include "test.h"

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void tmp_dir(char *buf, size_t n, const char *tag) {
  static int counter;
  snprintf(buf, n, "/tmp/sl_buffer_%s_%d_%d", tag, (int)getpid(), counter++);
  nftw(buf, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static struct sl_event *event(int i, size_t size) {
  static struct sl_idgen g;
  static int ready;
  uint8_t payload[4096];
  struct sl_str none = {NULL, 0}, topic = {"t", 1};
  if (!ready) {
    sl_idgen_init(&g);
    ready = 1;
  }
  if (size > sizeof(payload) - 3)
    size = sizeof(payload) - 3;
  payload[0] = 0xda; /* str 16 */
  payload[1] = (uint8_t)(size >> 8);
  payload[2] = (uint8_t)size;
  memset(payload + 3, 'a' + i % 26, size);
  return sl_event_new(&g, none, topic, none, 0, 0, NULL, 0, payload,
                      size + 3, 0);
}

/* RLIMIT_FSIZE: EFBIG instead of a signal */
__attribute__((constructor)) static void ignore_sigxfsz(void) {
  signal(SIGXFSZ, SIG_IGN);
  sl_log_set_fd(open("/dev/null", O_WRONLY)); /* the errors are expected */
}

static int durable_calls;
static void on_durable(struct sl_buffer *b) {
  (void)b;
  durable_calls++;
}

struct rig {
  uv_loop_t loop;
  struct sl_queue q;
  struct sl_buffer b;
  uint64_t ticket;
  char dir[128];
};

static int rig_open(struct rig *r, const char *tag, enum sl_queue_policy p,
                    enum sl_buffer_fsync fsync) {
  struct sl_buffer_config cfg;
  char err[256];
  memset(r, 0, sizeof(*r));
  tmp_dir(r->dir, sizeof(r->dir), tag);
  uv_loop_init(&r->loop);
  if (sl_queue_init(&r->q, 4, 1 << 20, p) != 0)
    return -1;
  memset(&cfg, 0, sizeof(cfg));
  cfg.mode = SL_BUFFER_DISK;
  cfg.path = r->dir;
  cfg.max_bytes = 64u << 20;
  cfg.fsync = fsync;
  cfg.fsync_interval_ms = 1000;
  cfg.when_full = p;
  if (sl_buffer_init(&r->b, &r->loop, "out", &cfg, &r->q, err, sizeof(err)))
    return -1;
  r->ticket = 1;
  r->b.ticket = &r->ticket;
  r->b.on_durable = on_durable;
  return 0;
}

static void rig_close(struct rig *r) {
  sl_buffer_stop(&r->b);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  sl_buffer_close(&r->b);
  sl_queue_close(&r->q);
  uv_loop_close(&r->loop);
  nftw(r->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void file_limit(rlim_t n) {
  struct rlimit rl;
  getrlimit(RLIMIT_FSIZE, &rl);
  rl.rlim_cur = n;
  setrlimit(RLIMIT_FSIZE, &rl);
}

/* Push 1 KiB events until one fails; returns its code, *pushed the count. */
static int push_until_error(struct rig *r, int max, int *pushed) {
  int i, rc = 0;
  for (i = 0; i < max; i++) {
    struct sl_event *ev = event(i, 1000);
    rc = sl_buffer_push(&r->b, &r->q, ev);
    sl_event_unref(ev);
    if (rc != 0)
      break;
  }
  *pushed = i;
  return rc;
}

TEST(buffer_write_error_with_block_is_backpressure_and_holds_the_ticket) {
  struct rig r;
  uint64_t ticket;
  int pushed, rc;
  CHECK(rig_open(&r, "block", SL_QUEUE_BLOCK, SL_BUFFER_FSYNC_NEVER) == 0);
  file_limit(256 << 10); /* segment files stop at 256 KiB: EFBIG */
  rc = push_until_error(&r, 2000, &pushed);
  CHECK_EQ(rc, SL_EAGAIN);
  CHECK(pushed > 100 && pushed < 2000);
  CHECK(r.b.failing);
  CHECK(r.b.stats.write_errors >= 1);
  CHECK_EQ(r.b.stats.refused, 0);
  CHECK_EQ(r.q.dropped_newest, 0); /* not a drop */
  CHECK(sl_buffer_blocked(&r.b, &r.q));
  /* what was appended cannot be written: no ticket may cover it */
  ticket = r.ticket++;
  CHECK_EQ(sl_buffer_durable(&r.b, ticket), SL_EAGAIN);
  CHECK(!sl_buffer_covers(&r.b, ticket));
  /* the disk has room again: the retry timer writes and says so */
  file_limit(RLIM_INFINITY);
  durable_calls = 0;
  while (!sl_buffer_covers(&r.b, ticket))
    uv_run(&r.loop, UV_RUN_ONCE);
  CHECK(durable_calls >= 1);
  CHECK(!r.b.failing);
  CHECK_EQ(sl_buffer_durable(&r.b, r.ticket++), 0);
  rig_close(&r);
}

/* Each event under its own stamp (as producers' batches are), until the
 * file limit stops the writes part way: the stamps whose events all
 * reached the file are covered, the later ones are not. Returns the stamp
 * of the first event pushed. */
static uint64_t push_stamped(struct rig *r, int n) {
  uint64_t first = r->ticket;
  int i;
  for (i = 0; i < n; i++) {
    struct sl_event *ev = event(i, 1000);
    if (sl_buffer_push(&r->b, &r->q, ev) != 0)
      first = 0; /* a write failed already: the test fails on it */
    sl_event_unref(ev);
    r->ticket++;
  }
  return first;
}

TEST(buffer_write_that_fails_part_way_covers_what_it_wrote) {
  struct rig r;
  uint64_t first, last;
  CHECK(rig_open(&r, "partial", SL_QUEUE_BLOCK, SL_BUFFER_FSYNC_NEVER) == 0);
  /* 100 events of ~1 KiB stay in the 256 KiB write buffer, then one
   * write of all of them meets a 50 KiB file limit */
  first = push_stamped(&r, 100);
  last = r.ticket - 1;
  CHECK(first != 0);
  file_limit(50 << 10);
  CHECK_EQ(sl_buffer_durable(&r.b, first), 0); /* written before the error */
  CHECK(r.b.failing);
  CHECK_EQ(sl_buffer_durable(&r.b, last), SL_EAGAIN); /* never written */
  CHECK(!sl_buffer_covers(&r.b, last));
  file_limit(RLIM_INFINITY);
  while (!sl_buffer_covers(&r.b, last))
    uv_run(&r.loop, UV_RUN_ONCE);
  rig_close(&r);
}

TEST(buffer_sync_that_fails_part_way_covers_what_it_wrote_and_synced) {
  struct rig r;
  uint64_t first, last;
  CHECK(rig_open(&r, "partsync", SL_QUEUE_BLOCK, SL_BUFFER_FSYNC_ALWAYS) == 0);
  first = push_stamped(&r, 100);
  last = r.ticket - 1;
  CHECK(first != 0);
  file_limit(50 << 10);
  CHECK_EQ(sl_buffer_durable(&r.b, last), SL_EAGAIN); /* starts a sync */
  while (r.b.syncing || r.b.stats.syncs == 0)
    uv_run(&r.loop, UV_RUN_ONCE);
  CHECK(sl_buffer_covers(&r.b, first)); /* on disk before the error */
  CHECK(!sl_buffer_covers(&r.b, last));
  file_limit(RLIM_INFINITY);
  while (!sl_buffer_covers(&r.b, last))
    uv_run(&r.loop, UV_RUN_ONCE);
  rig_close(&r);
}

TEST(buffer_write_error_with_drop_newest_is_a_counted_refusal) {
  struct rig r;
  int pushed, rc;
  CHECK(rig_open(&r, "drop", SL_QUEUE_DROP_NEWEST, SL_BUFFER_FSYNC_NEVER) == 0);
  file_limit(256 << 10);
  rc = push_until_error(&r, 2000, &pushed);
  CHECK_EQ(rc, SL_EIO);
  CHECK_EQ(r.b.stats.refused, 1);
  CHECK_EQ(r.q.dropped_newest, 0); /* refused to the producer, not dropped */
  CHECK(!sl_buffer_blocked(&r.b, &r.q));
  /* records still in the write buffer: an ack for them is refused too */
  CHECK_EQ(sl_buffer_durable(&r.b, r.ticket++), SL_EIO);
  CHECK_EQ(r.b.stats.refused, 2);
  file_limit(RLIM_INFINITY);
  rig_close(&r);
}

TEST(buffer_fsync_always_ticket_waits_for_the_sync) {
  struct rig r;
  struct sl_event *ev = NULL;
  uint64_t ticket;
  CHECK(rig_open(&r, "always", SL_QUEUE_BLOCK, SL_BUFFER_FSYNC_ALWAYS) == 0);
  ev = event(1, 10);
  CHECK_EQ(sl_buffer_push(&r.b, &r.q, ev), 0);
  sl_event_unref(ev);
  ticket = r.ticket++;
  CHECK_EQ(sl_buffer_durable(&r.b, ticket), SL_EAGAIN);
  durable_calls = 0;
  while (!sl_buffer_covers(&r.b, ticket))
    uv_run(&r.loop, UV_RUN_ONCE);
  CHECK(durable_calls >= 1);
  CHECK(r.b.stats.syncs >= 1);
  rig_close(&r);
}

TEST(buffer_record_that_is_not_an_event_is_acked_after_the_ones_before) {
  struct sl_spool s;
  struct sl_spool_opts o;
  struct sl_spool_stats st;
  struct rig r;
  struct sl_event *e1 = event(1, 10), *e2 = event(2, 10);
  char dir[128];
  static const uint8_t junk[] = {0x93, 1, 2, 3}; /* msgpack, not an event */

  tmp_dir(dir, sizeof(dir), "junk");
  memset(&o, 0, sizeof(o));
  o.max_bytes = 1 << 20;
  CHECK(sl_spool_init(&s, dir, &o, NULL) == 0);
  CHECK(sl_spool_append(&s, e1->data, e1->len, NULL) == 0);
  CHECK(sl_spool_append(&s, junk, sizeof(junk), NULL) == 0);
  CHECK(sl_spool_append(&s, e2->data, e2->len, NULL) == 0);
  sl_spool_close(&s);
  sl_event_unref(e1);
  sl_event_unref(e2);

  {
    struct sl_buffer_config cfg;
    char err[256];
    memset(&r, 0, sizeof(r));
    snprintf(r.dir, sizeof(r.dir), "%s", dir);
    uv_loop_init(&r.loop);
    CHECK(sl_queue_init(&r.q, 16, 1 << 20, SL_QUEUE_BLOCK) == 0);
    memset(&cfg, 0, sizeof(cfg));
    cfg.mode = SL_BUFFER_DISK;
    cfg.path = dir;
    cfg.max_bytes = 1 << 20;
    cfg.when_full = SL_QUEUE_BLOCK;
    CHECK(sl_buffer_init(&r.b, &r.loop, "out", &cfg, &r.q, err,
                         sizeof(err)) == 0);
  }
  CHECK_EQ(r.q.count, 2);
  CHECK_EQ(r.b.stats.not_events, 1);
  sl_spool_stats(&r.b.spool, &st);
  CHECK_EQ(st.ack_seq, 0); /* event 1 is not delivered yet */
  sl_buffer_delivered(&r.b, &r.q, 1);
  sl_spool_stats(&r.b.spool, &st);
  CHECK_EQ(st.ack_seq, 2); /* event 1 and the junk after it */
  sl_buffer_delivered(&r.b, &r.q, 1);
  sl_spool_stats(&r.b.spool, &st);
  CHECK_EQ(st.ack_seq, 3);
  rig_close(&r);
}

