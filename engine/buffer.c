/* buffer.c - an output's memory queue with a disk spool; see buffer.h.
 * The queue holds events in delivery order; a ring of runs says, for each
 * stretch of the queue, whether its events came straight from an input
 * (seq 0) or were read back from the spool (their first seq), so that a
 * delivery of n events acknowledges exactly the spool records among them. */
#include "buffer.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

#define READ_BATCH 512

struct sl_buffer_run {
  uint64_t first_seq; /* 0: not from the spool */
  uint32_t count;
};

/* ---- runs --------------------------------------------------------------- */

static struct sl_buffer_run *run_at(struct sl_buffer *b, uint32_t i) {
  return &b->runs[(b->runs_head + i) % b->runs_cap];
}

static int run_add(struct sl_buffer *b, uint64_t seq) {
  struct sl_buffer_run *last = b->runs_len ? run_at(b, b->runs_len - 1) : NULL;
  if (last && ((seq == 0 && last->first_seq == 0) ||
               (seq != 0 && last->first_seq != 0 &&
                last->first_seq + last->count == seq))) {
    last->count++;
    return 0;
  }
  if (b->runs_len == b->runs_cap) {
    uint32_t cap = b->runs_cap ? b->runs_cap * 2 : 16, i;
    struct sl_buffer_run *grown = malloc(sizeof(*grown) * cap);
    if (grown == NULL)
      return SL_ENOMEM;
    for (i = 0; i < b->runs_len; i++)
      grown[i] = *run_at(b, i);
    free(b->runs);
    b->runs = grown;
    b->runs_cap = cap;
    b->runs_head = 0;
  }
  last = &b->runs[(b->runs_head + b->runs_len) % b->runs_cap];
  last->first_seq = seq;
  last->count = 1;
  b->runs_len++;
  return 0;
}

/* Consume n events from the front; the highest spool seq among them. */
static uint64_t runs_take(struct sl_buffer *b, uint32_t n) {
  uint64_t acked = 0;
  while (n > 0 && b->runs_len > 0) {
    struct sl_buffer_run *r = run_at(b, 0);
    uint32_t k = n < r->count ? n : r->count;
    if (r->first_seq) {
      acked = r->first_seq + k - 1;
      r->first_seq += k;
    }
    r->count -= k;
    n -= k;
    if (r->count == 0) {
      b->runs_head = (b->runs_head + 1) % b->runs_cap;
      b->runs_len--;
    }
  }
  return acked;
}

/* ---- syncing ------------------------------------------------------------ */

static void start_sync(struct sl_buffer *b);

static void on_sync_work(uv_work_t *req) {
  struct sl_buffer *b = container_of(req, struct sl_buffer, sync_req);
  b->sync_rc = sl_spool_sync(&b->spool, &b->synced_seq);
}

static void on_sync_done(uv_work_t *req, int status) {
  struct sl_buffer *b = container_of(req, struct sl_buffer, sync_req);
  b->syncing = 0;
  b->stats.syncs++;
  if (status == 0 && b->sync_rc != 0) {
    b->stats.sync_errors++;
    sl_log(SL_LOG_ERROR, "disk buffer fsync failed; events since the last "
                         "good sync may not survive a power loss",
           SL_S("output", b->name), SL_S("error", strerror(-b->sync_rc)),
           SL_END);
  }
  if (b->closing) {
    sl_spool_close(&b->spool);
    b->spool_open = 0;
    return;
  }
  if (b->sync_again) {
    b->sync_again = 0;
    start_sync(b);
  }
}

static void start_sync(struct sl_buffer *b) {
  if (!b->spool_open)
    return;
  if (b->syncing) {
    b->sync_again = 1;
    return;
  }
  b->syncing = 1;
  if (uv_queue_work(b->loop, &b->sync_req, on_sync_work, on_sync_done) != 0)
    b->syncing = 0;
}

/* fsync = "always": one sync per loop turn that appended */
static void on_sync_idle(uv_idle_t *h) {
  struct sl_buffer *b = container_of(h, struct sl_buffer, sync_idle);
  uv_idle_stop(h);
  start_sync(b);
}

static void on_sync_timer(uv_timer_t *t) {
  struct sl_buffer *b = container_of(t, struct sl_buffer, sync_timer);
  start_sync(b);
}

/* ---- moving events ------------------------------------------------------ */

/* Read spooled records back into q while it has room. */
static void refill(struct sl_buffer *b, struct sl_queue *q) {
  struct sl_spool_rec recs[READ_BATCH];
  struct sl_idgen unused;
  int n, i;

  if (!b->spool_open)
    return;
  memset(&unused, 0, sizeof(unused));
  while (q->count < q->max_events && q->bytes < q->max_bytes) {
    uint32_t room = q->max_events - q->count;
    n = sl_spool_read(&b->spool, recs, room < READ_BATCH ? (int)room : READ_BATCH,
                      (size_t)(q->max_bytes - q->bytes));
    if (n <= 0)
      break;
    for (i = 0; i < n; i++) {
      struct sl_event_view v;
      struct sl_codec_error err;
      struct sl_event *ev;
      /* the spool's CRC vouches for the bytes, this for their meaning */
      if (sl_codec_parse_event(recs[i].data, recs[i].len, &v, &err) != 0 ||
          (ev = sl_event_from_view(&unused, &v, 0)) == NULL) {
        b->stats.lost_records++;
        sl_log(SL_LOG_ERROR, "disk buffer record is not an event; skipped",
               SL_S("output", b->name), SL_U("seq", recs[i].seq),
               SL_S("error", err.msg), SL_END);
        sl_spool_ack(&b->spool, recs[i].seq); /* never deliverable */
        continue;
      }
      sl_queue_push_force(q, ev);
      sl_event_unref(ev);
      run_add(b, recs[i].seq);
      b->stats.read_back++;
    }
  }
}

int sl_buffer_push(struct sl_buffer *b, struct sl_queue *q,
                   struct sl_event *ev) {
  uint64_t seq;
  int rc;

  if (b->mode == SL_BUFFER_MEMORY)
    return sl_queue_push(q, ev);
  if (b->mode == SL_BUFFER_SPILL && sl_buffer_backlog(b) == 0 &&
      sl_queue_has_room(q, ev->len)) {
    sl_queue_push_force(q, ev);
    run_add(b, 0);
    return 0;
  }
  rc = sl_spool_append(&b->spool, ev->data, ev->len, &seq);
  if (rc == SL_E2BIG) {
    if (b->when_full == SL_QUEUE_DROP_NEWEST) {
      b->stats.dropped_full++;
      q->dropped_newest++;
      return SL_E2BIG;
    }
    b->full = 1;
    return SL_EAGAIN; /* woken once deliveries free the spool */
  }
  if (rc != 0) {
    b->stats.dropped_full++;
    q->dropped_newest++;
    sl_log(SL_LOG_ERROR, "disk buffer append failed; event dropped",
           SL_S("output", b->name), SL_S("error", strerror(-rc)), SL_END);
    return SL_E2BIG;
  }
  b->stats.spilled++;
  if (b->fsync == SL_BUFFER_FSYNC_ALWAYS)
    uv_idle_start(&b->sync_idle, on_sync_idle);
  refill(b, q);
  return 0;
}

void sl_buffer_delivered(struct sl_buffer *b, struct sl_queue *q, uint32_t n) {
  uint64_t acked = 0;
  if (b->mode != SL_BUFFER_MEMORY)
    acked = runs_take(b, n);
  if (acked)
    sl_spool_ack(&b->spool, acked);
  sl_queue_pop(q, n);
  if (b->mode != SL_BUFFER_MEMORY)
    refill(b, q);
  if (acked && b->full) {
    b->full = 0;
    sl_queue_wake(q); /* the spool has room again */
  }
}

uint64_t sl_buffer_backlog(struct sl_buffer *b) {
  struct sl_spool_stats st;
  if (!b->spool_open)
    return 0;
  sl_spool_stats(&b->spool, &st);
  return st.unread;
}

/* ---- life --------------------------------------------------------------- */

/* mkdir -p path: the folders above the spool's own. */
static void make_dirs(const char *path) {
  char buf[PATH_MAX], *s;
  snprintf(buf, sizeof(buf), "%s", path);
  for (s = buf + 1; *s; s++)
    if (*s == '/') {
      *s = '\0';
      mkdir(buf, 0755);
      *s = '/';
    }
  mkdir(buf, 0755);
}

int sl_buffer_init(struct sl_buffer *b, uv_loop_t *loop, const char *name,
                   const struct sl_buffer_config *cfg, struct sl_queue *q,
                   char *err, size_t errlen) {
  struct sl_spool_opts opts;
  struct sl_spool_report rep;
  int rc;

  memset(b, 0, sizeof(*b));
  b->mode = cfg->mode;
  b->fsync = cfg->fsync;
  b->when_full = cfg->when_full;
  b->loop = loop;
  b->name = name;
  if (b->mode == SL_BUFFER_MEMORY)
    return 0;
  memset(&opts, 0, sizeof(opts));
  opts.max_bytes = cfg->max_bytes;
  opts.segment_bytes = cfg->max_bytes / 4 < SL_SPOOL_SEGMENT_DEFAULT
                           ? cfg->max_bytes / 4
                           : SL_SPOOL_SEGMENT_DEFAULT;
  opts.max_record = cfg->max_record;
  make_dirs(cfg->path);
  rc = sl_spool_init(&b->spool, cfg->path, &opts, &rep);
  if (rc != 0) {
    snprintf(err, errlen, "cannot open the disk buffer %s: %s%s%s", cfg->path,
             rc == SL_EAGAIN ? "another process has it open" : strerror(-rc),
             rep.msg[0] ? ": " : "", rep.msg);
    return rc;
  }
  b->spool_open = 1;
  b->stats.replayed = rep.records;
  b->stats.quarantined_bytes = rep.quarantined_bytes;
  b->stats.lost_records = rep.lost_records;
  if (rep.quarantine_files || rep.lost_records || rep.ack_reset ||
      rep.ack_beyond_end)
    sl_log(SL_LOG_WARN, "disk buffer repaired at start; bad records moved to "
                        "quarantine/",
           SL_S("output", name), SL_S("path", cfg->path),
           SL_U("quarantine_files", rep.quarantine_files),
           SL_U("quarantined_bytes", rep.quarantined_bytes),
           SL_U("lost_records", rep.lost_records), SL_S("detail", rep.msg),
           SL_END);
  if (rep.records)
    sl_log(SL_LOG_INFO, "disk buffer replays undelivered events",
           SL_S("output", name), SL_U("events", rep.records),
           SL_U("bytes", rep.bytes), SL_END);
  uv_idle_init(loop, &b->sync_idle);
  uv_timer_init(loop, &b->sync_timer);
  b->timers_open = 1;
  if (b->fsync == SL_BUFFER_FSYNC_INTERVAL)
    uv_timer_start(&b->sync_timer, on_sync_timer, cfg->fsync_interval_ms,
                   cfg->fsync_interval_ms);
  refill(b, q);
  return 0;
}

void sl_buffer_stop(struct sl_buffer *b) {
  if (!b->spool_open || b->closing)
    return;
  b->closing = 1;
  if (b->timers_open) {
    uv_close((uv_handle_t *)&b->sync_idle, NULL);
    uv_close((uv_handle_t *)&b->sync_timer, NULL);
    b->timers_open = 0;
  }
  /* a last sync makes acks and spilled events durable; close after it */
  b->sync_again = 0;
  if (!b->syncing)
    start_sync(b);
  if (!b->syncing) {
    sl_spool_close(&b->spool);
    b->spool_open = 0;
  }
}

void sl_buffer_close(struct sl_buffer *b) {
  if (b->spool_open && !b->syncing) {
    sl_spool_close(&b->spool);
    b->spool_open = 0;
  }
  free(b->runs);
  b->runs = NULL;
}
