/* buffer.c - an output's memory queue with a disk spool; see buffer.h.
 * The queue holds events in delivery order; a ring of runs says, for each
 * stretch of the queue, whether its events came straight from an input
 * (seq 0) or were read back from the spool (their first seq), so that a
 * delivery of n events acknowledges exactly the spool records among them. */
#include "buffer.h"

#include <limits.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

#define READ_BATCH 512

struct sl_buffer_run {
  uint64_t first_seq; /* 0: not from the spool */
  uint64_t ack_to;    /* records after it that are not events: acknowledge
                         up to here once the run is delivered (0: none) */
  uint32_t count;
};

/* ---- runs --------------------------------------------------------------- */

static struct sl_buffer_run *run_at(struct sl_buffer *b, uint32_t i) {
  return &b->runs[(b->runs_head + i) % b->runs_cap];
}

/* Room for `more` new runs, so that run_add cannot fail afterwards: a
 * queued event without its run would make a later delivery acknowledge
 * the wrong spool records. */
static int runs_reserve(struct sl_buffer *b, uint32_t more) {
  uint32_t cap = b->runs_cap ? b->runs_cap : 16, i;
  struct sl_buffer_run *grown;
  if (b->runs_len + more <= b->runs_cap)
    return 0;
  while (cap < b->runs_len + more)
    cap *= 2;
  grown = malloc(sizeof(*grown) * cap);
  if (grown == NULL)
    return SL_ENOMEM;
  for (i = 0; i < b->runs_len; i++)
    grown[i] = *run_at(b, i);
  free(b->runs);
  b->runs = grown;
  b->runs_cap = cap;
  b->runs_head = 0;
  return 0;
}

static int run_add(struct sl_buffer *b, uint64_t seq) {
  struct sl_buffer_run *last = b->runs_len ? run_at(b, b->runs_len - 1) : NULL;
  if (last && ((seq == 0 && last->first_seq == 0) ||
               (seq != 0 && last->first_seq != 0 &&
                last->first_seq + last->count == seq))) {
    last->count++;
    return 0;
  }
  if (runs_reserve(b, 1) != 0)
    return SL_ENOMEM;
  last = &b->runs[(b->runs_head + b->runs_len) % b->runs_cap];
  last->first_seq = seq;
  last->ack_to = 0;
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
      if (r->first_seq + k - 1 > acked)
        acked = r->first_seq + k - 1;
      r->first_seq += k;
    }
    r->count -= k;
    n -= k;
    if (r->count == 0) {
      if (r->ack_to > acked)
        acked = r->ack_to;
      b->runs_head = (b->runs_head + 1) % b->runs_cap;
      b->runs_len--;
    }
  }
  return acked;
}

/* ---- syncing ------------------------------------------------------------ */

static void start_sync(struct sl_buffer *b);
static void on_retry_timer(uv_timer_t *t);
static void arm_retry(struct sl_buffer *b);

static void on_sync_work(uv_work_t *req) {
  struct sl_buffer *b = container_of(req, struct sl_buffer, sync_req);
  b->sync_rc = sl_spool_sync(&b->spool, &b->synced_seq);
}

/* ---- partial coverage (see marks in buffer.h) ---------------------------- */

static void mark_append(struct sl_buffer *b, uint64_t ticket, uint64_t seq) {
  struct sl_buffer_mark *last =
      b->nmarks ? &b->marks[(b->marks_head + b->nmarks - 1) % SL_BUFFER_MARKS]
                : NULL;
  if (last && (last->ticket == ticket || b->nmarks == SL_BUFFER_MARKS)) {
    last->ticket = ticket; /* a full ring: the newest mark takes it too */
    last->seq = seq;
    return;
  }
  b->marks[(b->marks_head + b->nmarks) % SL_BUFFER_MARKS] =
      (struct sl_buffer_mark){ticket, seq};
  b->nmarks++;
}

/* Records <= seq are where the policy promises: cover the stamps whose
 * appends are all among them. Returns 1 when covered moved. */
static int cover_seq(struct sl_buffer *b, uint64_t seq) {
  uint64_t t = 0;
  while (b->nmarks > 0 && b->marks[b->marks_head].seq <= seq) {
    t = b->marks[b->marks_head].ticket;
    b->marks_head = (b->marks_head + 1) % SL_BUFFER_MARKS;
    b->nmarks--;
  }
  /* appends under a stamp can still come while it is the worker's current
   * one, and may already have (the first mark left): only stamps below
   * both are whole */
  if (b->nmarks > 0 && b->marks[b->marks_head].ticket <= t)
    t = b->marks[b->marks_head].ticket - 1;
  if (b->ticket && *b->ticket && t >= *b->ticket)
    t = *b->ticket - 1;
  if (t > b->covered) {
    b->covered = t;
    return 1;
  }
  return 0;
}

/* Covered moved to t (every append stamped <= t): drop the marks it
 * passed. */
static void cover_ticket(struct sl_buffer *b, uint64_t t) {
  if (t > b->covered)
    b->covered = t;
  while (b->nmarks > 0 && b->marks[b->marks_head].ticket <= b->covered) {
    b->marks_head = (b->marks_head + 1) % SL_BUFFER_MARKS;
    b->nmarks--;
  }
}

/* A write failed part way: what did reach the kernel? */
static int cover_flushed(struct sl_buffer *b) {
  struct sl_spool_stats st;
  if (b->fsync == SL_BUFFER_FSYNC_ALWAYS)
    return 0; /* only a sync covers */
  sl_spool_stats(&b->spool, &st);
  return cover_seq(b, st.flushed_seq);
}

static void on_sync_done(uv_work_t *req, int status) {
  struct sl_buffer *b = container_of(req, struct sl_buffer, sync_req);
  b->syncing = 0;
  b->stats.syncs++;
  if (status == 0 && b->sync_rc != 0) {
    uint64_t suppressed;
    b->stats.sync_errors++;
    arm_retry(b); /* acknowledgements wait for a sync that works */
    if (sl_log_allow(&b->error_log, &suppressed))
      sl_log(SL_LOG_ERROR, "disk buffer fsync failed; events since the last "
                           "good sync may not survive a power loss",
             SL_S("output", b->name), SL_S("path", b->path),
             SL_S("error", strerror(-b->sync_rc)),
             SL_U("suppressed", suppressed), SL_END);
  }
  if (b->closing) {
    sl_spool_close(&b->spool);
    b->spool_open = 0;
    return;
  }
  if (status == 0 && b->sync_rc != 0 && cover_seq(b, b->synced_seq) &&
      b->on_durable)
    b->on_durable(b); /* the write failed part way; the rest is on disk */
  if (status == 0 && b->sync_rc == 0 && b->sync_ticket > b->covered) {
    cover_ticket(b, b->sync_ticket); /* every append stamped <= it is on disk */
    if (b->on_durable)
      b->on_durable(b);
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
  /* appends stamped below the current ticket all returned before now */
  b->sync_ticket = b->ticket && *b->ticket ? *b->ticket - 1 : 0;
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

/* ---- write errors ------------------------------------------------------- */

#define RETRY_MS 200 /* after a failed write: how soon to try again */

static int drops(const struct sl_buffer *b) {
  return b->when_full == SL_QUEUE_DROP_NEWEST ||
         b->when_full == SL_QUEUE_DROP_OLDEST;
}

/* One rate-limited line an operator can act on: which output, which
 * folder, what the system said, and what happens to the events. */
static void log_write_error(struct sl_buffer *b, const char *msg, int rc) {
  uint64_t suppressed;
  if (sl_log_allow(&b->error_log, &suppressed))
    sl_log(SL_LOG_ERROR, msg, SL_S("output", b->name), SL_S("path", b->path),
           SL_S("error", strerror(-rc)), SL_U("write_errors",
                                              b->stats.write_errors),
           SL_U("refused", b->stats.refused), SL_U("suppressed", suppressed),
           SL_END);
}

static void arm_retry(struct sl_buffer *b) {
  if (b->timers_open && !uv_is_active((uv_handle_t *)&b->retry_timer))
    uv_timer_start(&b->retry_timer, on_retry_timer, RETRY_MS, 0);
}

/* A write (or the allocation that goes with it) failed with rc: the event
 * waits (blocking policies) or is refused (drop policies). */
static int write_failed(struct sl_buffer *b, int rc) {
  b->stats.write_errors++;
  b->last_error = rc;
  b->failing = 1;
  arm_retry(b);
  if (drops(b)) {
    b->stats.refused++;
    log_write_error(b, "disk buffer cannot write; event refused", rc);
    return SL_EIO;
  }
  log_write_error(b, "disk buffer cannot write; waiting (backpressure)", rc);
  return SL_EAGAIN;
}

/* Rate-limited too: with a full disk an empty write buffer flushes fine
 * and the next append fails again, so this can flip every RETRY_MS. */
static void writes_again(struct sl_buffer *b) {
  uint64_t suppressed;
  if (!b->failing)
    return;
  b->failing = 0;
  if (sl_log_allow(&b->recover_log, &suppressed))
    sl_log(SL_LOG_INFO, "disk buffer writes again", SL_S("output", b->name),
           SL_S("path", b->path), SL_U("write_errors", b->stats.write_errors),
           SL_U("refused", b->stats.refused), SL_U("suppressed", suppressed),
           SL_END);
}

/* Everything appended so far is in the kernel: with fsync "never" and
 * "interval" that is the promise. */
static void flushed(struct sl_buffer *b) {
  uint64_t t = b->ticket && *b->ticket ? *b->ticket - 1 : 0;
  if (b->fsync != SL_BUFFER_FSYNC_ALWAYS && t > b->covered)
    cover_ticket(b, t);
}

static void refill(struct sl_buffer *b, struct sl_queue *q);

static void on_retry_timer(uv_timer_t *t) {
  struct sl_buffer *b = container_of(t, struct sl_buffer, retry_timer);
  int rc;
  if (!b->spool_open || b->closing)
    return;
  rc = sl_spool_flush(&b->spool);
  if (rc != 0) {
    b->stats.write_errors++;
    b->last_error = rc;
    b->failing = 1;
    log_write_error(b, "disk buffer cannot write; retrying", rc);
    arm_retry(b);
    if (cover_flushed(b) && b->on_durable)
      b->on_durable(b); /* what did get written before the error */
    return;
  }
  writes_again(b);
  flushed(b);
  if (b->fsync == SL_BUFFER_FSYNC_ALWAYS && b->last_stamp > b->covered)
    start_sync(b); /* a sync that failed on a write: try it again */
  if (b->q) {
    refill(b, b->q);
    sl_queue_wake(b->q); /* producers waiting for the disk try again */
  }
  if (b->on_durable)
    b->on_durable(b);
}

/* ---- moving events ------------------------------------------------------ */

/* Read spooled records back into q while it has room. */
static void refill(struct sl_buffer *b, struct sl_queue *q) {
  struct sl_spool_rec recs[READ_BATCH];
  struct sl_idgen unused;
  int n, i, want;

  if (!b->spool_open)
    return;
  memset(&unused, 0, sizeof(unused));
  while (q->count < q->max_events && q->bytes < q->max_bytes) {
    uint32_t room = q->max_events - q->count;
    want = room < READ_BATCH ? (int)room : READ_BATCH;
    /* each record may start a run (after a gap): room for all first, so
     * no record read is left out of the queue */
    if (runs_reserve(b, (uint32_t)want) != 0) {
      arm_retry(b); /* out of memory: read them later */
      break;
    }
    n = sl_spool_read(&b->spool, recs, want,
                      (size_t)(q->max_bytes - q->bytes));
    if (n < 0) {
      /* reading the active file writes out what is buffered for it first:
       * ENOSPC here is a write that failed, not the disk's reading */
      log_write_error(b, n == -ENOSPC || n == -EDQUOT || n == -EFBIG
                          ? "disk buffer cannot write out the events it "
                            "would read back; retrying"
                          : "disk buffer cannot read; retrying", n);
      arm_retry(b);
      break;
    }
    if (n == 0)
      break;
    for (i = 0; i < n; i++) {
      struct sl_event_view v;
      struct sl_codec_error err;
      struct sl_event *ev;
      /* the spool's CRC vouches for the bytes, this for their meaning */
      if (sl_codec_parse_event(recs[i].data, recs[i].len, &v, &err) != 0) {
        struct sl_buffer_run *last = NULL;
        uint32_t k;
        b->stats.not_events++;
        sl_log(SL_LOG_ERROR, "disk buffer record is not an event; skipped",
               SL_S("output", b->name), SL_U("seq", recs[i].seq),
               SL_S("error", err.msg), SL_END);
        /* never deliverable: acknowledge it with the queued records
         * before it, not before they are delivered */
        for (k = b->runs_len; k > 0 && last == NULL; k--)
          if (run_at(b, k - 1)->first_seq)
            last = run_at(b, k - 1);
        if (last)
          last->ack_to = recs[i].seq;
        else
          sl_spool_ack(&b->spool, recs[i].seq);
        continue;
      }
      ev = sl_event_from_view(&unused, &v, 0);
      if (ev == NULL) {
        /* out of memory: the rest of this batch was read but is not
         * queued; read from the oldest unacknowledged record again (a
         * repeat is better than a loss) */
        sl_spool_rewind(&b->spool);
        arm_retry(b);
        return;
      }
      if (sl_queue_push_force(q, ev) != 0) {
        sl_event_unref(ev);
        sl_spool_rewind(&b->spool);
        return;
      }
      sl_event_unref(ev);
      run_add(b, recs[i].seq); /* cannot fail: reserved above */
      b->stats.read_back++;
    }
  }
}

int sl_buffer_push_spool(struct sl_buffer *b, struct sl_queue *q,
                         struct sl_event *ev) {
  uint64_t seq;
  int rc;

  if (b->mode == SL_BUFFER_MEMORY)
    return sl_queue_push(q, ev);
  if (b->mode == SL_BUFFER_SPILL && sl_buffer_backlog(b) == 0 &&
      sl_queue_has_room(q, ev->len)) {
    if (runs_reserve(b, 1) != 0)
      return write_failed(b, SL_ENOMEM);
    if (sl_queue_push_force(q, ev) != 0)
      return write_failed(b, SL_ENOMEM);
    run_add(b, 0);
    return 0;
  }
  rc = sl_spool_append(&b->spool, ev->data, ev->len, &seq);
  if (rc == SL_E2BIG || rc == SL_EINVAL) {
    if (rc == SL_EINVAL || b->when_full == SL_QUEUE_DROP_NEWEST ||
        b->when_full == SL_QUEUE_DROP_OLDEST) {
      b->stats.dropped_full++;
      q->dropped_newest++;
      return SL_E2BIG; /* the policy's drop (or a record that never fits) */
    }
    b->full = 1;
    return SL_EAGAIN; /* woken once deliveries free the spool */
  }
  if (rc != 0)
    return write_failed(b, rc);
  writes_again(b);
  if (b->ticket) {
    b->last_stamp = *b->ticket;
    mark_append(b, b->last_stamp, seq);
  }
  b->stats.spilled++;
  if (b->fsync == SL_BUFFER_FSYNC_ALWAYS)
    uv_idle_start(&b->sync_idle, on_sync_idle);
  refill(b, q);
  return 0;
}

int sl_buffer_covers(const struct sl_buffer *b, uint64_t ticket) {
  return b->mode == SL_BUFFER_MEMORY || !b->spool_open ||
         b->covered >= ticket || b->last_stamp <= b->covered;
}

int sl_buffer_durable(struct sl_buffer *b, uint64_t ticket) {
  int rc;
  if (sl_buffer_covers(b, ticket))
    return 0;
  if (b->closing)
    return SL_EAGAIN;
  if (b->fsync == SL_BUFFER_FSYNC_ALWAYS) {
    start_sync(b); /* on_sync_done moves covered */
    return SL_EAGAIN;
  }
  rc = sl_spool_flush(&b->spool);
  if (rc != 0) {
    b->stats.write_errors++;
    b->last_error = rc;
    b->failing = 1;
    arm_retry(b);
    cover_flushed(b); /* the appends before the error are in */
    if (sl_buffer_covers(b, ticket))
      return 0;
    if (drops(b)) {
      b->stats.refused++;
      log_write_error(b, "disk buffer cannot write; acknowledgement refused",
                      rc);
      return SL_EIO;
    }
    log_write_error(b, "disk buffer cannot write; acknowledgements wait",
                    rc);
    return SL_EAGAIN;
  }
  flushed(b);
  return sl_buffer_covers(b, ticket) ? 0 : SL_EAGAIN;
}

int sl_buffer_blocked(const struct sl_buffer *b, const struct sl_queue *q) {
  int waited_on = q->waiters.next != &q->waiters;
  if (b->mode == SL_BUFFER_MEMORY)
    return q->policy == SL_QUEUE_BLOCK &&
           (waited_on || q->count >= q->max_events || q->bytes >= q->max_bytes);
  if (drops(b))
    return 0; /* each event is dropped or refused on its own */
  /* disk and spill: a full memory queue is normal, the spool takes more */
  return waited_on || b->full || b->failing;
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
  b->path = cfg->path ? cfg->path : "";
  b->q = q;
  sl_log_limiter_init(&b->error_log, 10000, 5);
  sl_log_limiter_init(&b->recover_log, 10000, 2);
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
  uv_timer_init(loop, &b->retry_timer);
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
    uv_close((uv_handle_t *)&b->retry_timer, NULL);
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

/* ---- metrics ------------------------------------------------------------ */

/* A disk buffer family and how to read it from the buffer and its spool's
 * stats. */
struct buffer_metric {
  struct sl_metric m; /* first: the registry hands back &m */
  uint64_t (*get)(const struct sl_buffer *b, const struct sl_spool_stats *st);
};

static uint64_t db_events(const struct sl_buffer *b,
                          const struct sl_spool_stats *st) {
  return st->records;
}
static uint64_t db_bytes(const struct sl_buffer *b,
                         const struct sl_spool_stats *st) {
  return st->bytes;
}
static uint64_t db_segments(const struct sl_buffer *b,
                            const struct sl_spool_stats *st) {
  return st->segments;
}
static uint64_t db_disk_bytes(const struct sl_buffer *b,
                              const struct sl_spool_stats *st) {
  return st->disk_bytes;
}
static uint64_t db_max_bytes(const struct sl_buffer *b,
                             const struct sl_spool_stats *st) {
  return b->spool.max_bytes;
}
static uint64_t db_quarantined_records(const struct sl_buffer *b,
                                       const struct sl_spool_stats *st) {
  return b->stats.lost_records + st->lost_records + b->stats.not_events;
}
static uint64_t db_quarantined_bytes(const struct sl_buffer *b,
                                     const struct sl_spool_stats *st) {
  return b->stats.quarantined_bytes;
}
static uint64_t db_write_errors(const struct sl_buffer *b,
                                const struct sl_spool_stats *st) {
  return b->stats.write_errors;
}
static uint64_t db_fsync_errors(const struct sl_buffer *b,
                                const struct sl_spool_stats *st) {
  return b->stats.sync_errors;
}
static uint64_t db_refused(const struct sl_buffer *b,
                           const struct sl_spool_stats *st) {
  return b->stats.refused;
}
static uint64_t db_failing(const struct sl_buffer *b,
                           const struct sl_spool_stats *st) {
  return (uint64_t)b->failing;
}

#define C SL_METRIC_COUNTER
#define G SL_METRIC_GAUGE
#define OUT {"output", NULL}
static const struct buffer_metric buffer_metrics[] = {
    {{"sluice_disk_buffer_backlog_events",
      "Events in an output's disk buffer not yet delivered.", G, OUT},
     db_events},
    {{"sluice_disk_buffer_backlog_bytes",
      "Bytes on disk of the events not yet delivered, framing included.", G,
      OUT}, db_bytes},
    {{"sluice_disk_buffer_segments",
      "Segment files of an output's disk buffer.", G, OUT}, db_segments},
    {{"sluice_disk_buffer_disk_bytes",
      "Bytes of an output's disk buffer segment files, delivered parts not "
      "yet reclaimed included.", G, OUT}, db_disk_bytes},
    {{"sluice_disk_buffer_capacity_bytes", "The disk buffer's max_bytes.", G,
      OUT}, db_max_bytes},
    {{"sluice_disk_buffer_quarantined_records_total",
      "Records found corrupt or lost (at start or while reading) and "
      "skipped.", C, OUT}, db_quarantined_records},
    {{"sluice_disk_buffer_quarantined_bytes_total",
      "Bytes moved to the disk buffer's quarantine/ folder.", C, OUT},
     db_quarantined_bytes},
    {{"sluice_disk_buffer_write_errors_total",
      "Writes to the disk buffer that failed (disk full, no file "
      "descriptors, I/O error).", C, OUT}, db_write_errors},
    {{"sluice_disk_buffer_fsync_errors_total",
      "fdatasync calls on the disk buffer that failed.", C, OUT},
     db_fsync_errors},
    {{"sluice_disk_buffer_refused_total",
      "Events refused to the producer because the disk buffer could not "
      "write them (drop policies; block waits).", C, OUT}, db_refused},
    {{"sluice_disk_buffer_failing",
      "1 while the disk buffer's last write failed.", G, OUT}, db_failing},
};
#undef C
#undef G
#undef OUT

static void collect(struct sl_metric_out *out, const struct sl_metric *m,
                    void *data) {
  const struct buffer_metric *bm = (const struct buffer_metric *)m;
  struct sl_buffer *b = data;
  struct sl_spool_stats st;
  const char *v[] = {b->name};
  memset(&st, 0, sizeof(st));
  if (b->spool_open)
    sl_spool_stats(&b->spool, &st); /* only reads */
  sl_metric_put_u64(out, v, bm->get(b, &st));
}

int sl_buffer_metrics(struct sl_buffer *b, struct sl_metric_registry *r) {
  size_t i;
  int rc = 0;
  b->metrics = r;
  for (i = 0; rc == 0 && i < sizeof(buffer_metrics) / sizeof(*buffer_metrics);
       i++)
    rc = sl_metric_add(r, &buffer_metrics[i].m, collect, b);
  return rc;
}

void sl_buffer_close(struct sl_buffer *b) {
  sl_metric_remove(b->metrics, b);
  b->metrics = NULL;
  if (b->spool_open && !b->syncing) {
    sl_spool_close(&b->spool);
    b->spool_open = 0;
  }
  free(b->runs);
  b->runs = NULL;
}
