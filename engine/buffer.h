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
};

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
  struct sl_buffer_stats stats;
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
 * spooled, SL_EAGAIN when the caller must wait on q (full and blocking),
 * SL_E2BIG when the policy dropped it (counted). */
int sl_buffer_push(struct sl_buffer *b, struct sl_queue *q,
                   struct sl_event *ev);

/* The n oldest queued events are delivered: acknowledge those that came
 * from the spool, pop them from q, and read more back from the spool. */
void sl_buffer_delivered(struct sl_buffer *b, struct sl_queue *q, uint32_t n);

/* Events that wait in the spool and are not in the queue. */
uint64_t sl_buffer_backlog(struct sl_buffer *b);

/* Close the spool after a last sync (waits for a sync in flight by running
 * the loop's close machinery: call from the worker's stop, then let the
 * loop run). */
void sl_buffer_stop(struct sl_buffer *b);
/* Free what is left once the loop has closed the handles. */
void sl_buffer_close(struct sl_buffer *b);

#endif
