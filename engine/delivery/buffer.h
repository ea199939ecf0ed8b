/* buffer.h - an output's buffer: its bounded memory queue and, when the
 * config asks for it, a disk spool beside it.
 *   memory: the queue alone.
 *   spill:  the queue first; once it is full, events go to the spool, and
 *           keep going there (order) until the spool has been read back.
 *   disk:   every event is written to the spool first (durable per the
 *           fsync policy) and read back into the queue for delivery; it
 *           leaves the spool only once the output confirmed delivery, so a
 *           crash replays what was not delivered.
 * The buffer owns its spool, the sync machinery and the bookkeeping that
 * maps queue positions to spool sequences. The queue stays the output's. */
#ifndef SL_BUFFER_H
#define SL_BUFFER_H

#include <stdint.h>
#include <uv.h>

#include "log.h"
#include "metric.h"
#include "queue.h"
#include "spool.h"

enum sl_buffer_mode { SL_BUFFER_MEMORY = 0, SL_BUFFER_SPILL, SL_BUFFER_DISK };
enum sl_buffer_fsync {
  SL_BUFFER_FSYNC_NEVER = 0, /* write to the kernel: survives kill -9 */
  SL_BUFFER_FSYNC_INTERVAL,  /* and fdatasync every fsync_interval_ms */
  SL_BUFFER_FSYNC_ALWAYS     /* and fdatasync after every batch */
};

struct sl_buffer_run; /* buffer.c: a run of queued events of one origin */

struct sl_buffer_stats {
  uint64_t spilled;        /* events written to the spool */
  uint64_t replayed;       /* unacknowledged records found at start */
  uint64_t read_back;      /* records read from the spool into the queue */
  uint64_t dropped_full;   /* the spool was full and the policy dropped */
  uint64_t quarantined_bytes, lost_records; /* found at start */
  uint64_t syncs, sync_errors;
  uint64_t write_errors;   /* appends and flushes that failed (disk full, no
                              fds, I/O error) */
  uint64_t refused;        /* events refused to the producer: a drop policy
                              met a write error */
  uint64_t not_events;     /* records read back that were not events */
};

#define SL_BUFFER_MARKS 64

struct sl_buffer {
  enum sl_buffer_mode mode;
  enum sl_buffer_fsync fsync;
  enum sl_queue_policy when_full; /* disk full: block or drop_newest */
  struct sl_spool spool;
  int spool_open;
  struct sl_buffer_run *runs; /* ring of runs covering the queue in order */
  uint32_t runs_head, runs_len, runs_cap;
  uv_loop_t *loop;
  uv_work_t sync_req;
  uv_timer_t sync_timer;
  uv_idle_t sync_idle;
  int syncing, sync_again, closing, timers_open;
  int full; /* an append found the spool full: wake waiters after acks */
  uint64_t synced_seq;
  int sync_rc;
  const char *name; /* the output's, for logs */
  const char *path; /* the spool's folder, for logs */
  struct sl_buffer_stats stats;
  struct sl_metric_registry *metrics; /* where sl_buffer_metrics added */

  /* Durability tickets (see sl_buffer_durable): *ticket is the worker's
   * counter; an append is stamped with its value, and every append stamped
   * <= covered is where the fsync policy promises (in the kernel, or on
   * disk for "always"). */
  const uint64_t *ticket;
  uint64_t last_stamp, covered, sync_ticket;
  /* The last seq appended under each recent stamp, oldest first: when a
   * write or sync gets only part of the appends to disk (the disk filled),
   * the stamps whose appends all made it are covered. A ring; when full,
   * the newest mark takes the next stamp too (later coverage, never
   * early). */
  struct sl_buffer_mark {
    uint64_t ticket, seq;
  } marks[SL_BUFFER_MARKS];
  uint32_t marks_head, nmarks;
  void (*on_durable)(struct sl_buffer *b); /* covered moved, or writes work
                                              again; may be NULL */
  void *data;                              /* the caller's, for on_durable */
  struct sl_queue *q;
  /* A write failed: appends wait (block) or are refused (drop policies)
   * and retry_timer tries again until a write works. */
  int failing, last_error;
  uv_timer_t retry_timer;
  struct sl_log_limiter error_log, recover_log;
};

struct sl_buffer_config {
  enum sl_buffer_mode mode;
  const char *path;
  uint64_t max_bytes;
  enum sl_buffer_fsync fsync;
  uint32_t fsync_interval_ms;
  uint32_t max_record;
  enum sl_queue_policy when_full;
};

/* Open the spool (when the mode has one), log what its replay found and
 * fill the queue from it. Returns 0 or a negative code with err filled. */
int sl_buffer_init(struct sl_buffer *b, uv_loop_t *loop, const char *name,
                   const struct sl_buffer_config *cfg, struct sl_queue *q,
                   char *err, size_t errlen);

/* Put ev (not consumed) into the buffer. Returns 0 when it is queued or
 * appended to the spool (durable only once sl_buffer_durable says so),
 * SL_EAGAIN when the caller must wait on q (full and blocking, or the disk
 * cannot write: the retry timer wakes q), SL_E2BIG when the policy dropped
 * it (counted), SL_EIO when the disk cannot write and the policy drops:
 * the event is refused (counted in stats.refused) and the caller must tell
 * its producer, never acknowledge it. */
int sl_buffer_push_spool(struct sl_buffer *b, struct sl_queue *q,
                         struct sl_event *ev);
/* Inline: a memory buffer is its queue. */
static inline int sl_buffer_push(struct sl_buffer *b, struct sl_queue *q,
                                 struct sl_event *ev) {
  if (b->mode == SL_BUFFER_MEMORY)
    return sl_queue_push(q, ev);
  return sl_buffer_push_spool(b, q, ev);
}

/* The n oldest queued events are delivered: acknowledge those that came
 * from the spool, pop them from q, and read more back from the spool. */
void sl_buffer_delivered(struct sl_buffer *b, struct sl_queue *q, uint32_t n);

/* Is every event appended before the worker's counter moved past ticket
 * where the fsync policy promises? Returns 0 when it is (a flush of the
 * spool's write buffer is tried here), SL_EAGAIN when it will be later: a
 * sync is under way ("always") or the flush failed (retried from a timer);
 * b->on_durable runs when covered moves. A failed flush with a drop policy
 * returns SL_EIO instead (counted as a refusal): do not wait, refuse the
 * events to the producer. Memory mode: always 0. */
int sl_buffer_durable(struct sl_buffer *b, uint64_t ticket);

/* Does ticket hold already (no flush tried)? */
int sl_buffer_covers(const struct sl_buffer *b, uint64_t ticket);

/* Would a new event have to wait? A blocking policy and a full queue
 * (memory mode), or a full or failing spool, or producers already waiting
 * (disk and spill: a full memory queue is normal there, the spool takes
 * the event). */
int sl_buffer_blocked(const struct sl_buffer *b, const struct sl_queue *q);

/* Events that wait in the spool and are not in the queue. */
uint64_t sl_buffer_backlog(struct sl_buffer *b);

/* Add the disk buffer's metrics (backlog, segments, bytes on disk,
 * capacity, quarantine, write and fsync errors, refusals, failing),
 * labelled output=<name>, to r; sl_buffer_close removes them. 0, or
 * SL_ENOMEM. */
int sl_buffer_metrics(struct sl_buffer *b, struct sl_metric_registry *r);

/* Close the spool after a last sync (waits for a sync in flight by running
 * the loop's close machinery: call from the worker's stop, then let the
 * loop run). */
void sl_buffer_stop(struct sl_buffer *b);
/* Free what is left once the loop has closed the handles. */
void sl_buffer_close(struct sl_buffer *b);

#endif
