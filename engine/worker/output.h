/* output.h - an output: its queue and buffer, its plugin's ops, and the
 * runtime every plugin shares (confirmed deliveries, retries with backoff,
 * the circuit breaker, the dead letter, rate limits, dedup). Runs on its
 * worker's loop. */
#ifndef SL_OUTPUT_H
#define SL_OUTPUT_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "event.h"
#include "buffer.h"
#include "log.h"
#include "histogram.h"
#include "queue.h"
#include "ratelimit.h"
#include "retry.h"

struct sl_worker;
struct sl_output;
struct sl_dedup;

/* ---- outputs ----------------------------------------------------------- */

/* An output plugin, filled in by field name. */
/* A write the core hands a plugin: events [first, first + n) of o->q, in
 * order, bytes their size. The core picked them: at most batch_events,
 * what rate_limit and the breaker let out. */
struct sl_batch {
  uint32_t first;
  uint32_t n;
  uint64_t bytes;
  int again; /* the same events as the last write, which reported
                SL_WRITE_AGAIN: finish it */
};

/* A write's outcome, reported once with sl_output_done. */
enum sl_write_status {
  SL_WRITE_OK,    /* n_ok events delivered; the rest go in a later write */
  SL_WRITE_RETRY, /* n_ok delivered, the rest failed: retry them after the
                     backoff (the dead letter once they used up theirs) */
  SL_WRITE_AGAIN, /* as RETRY, but part of the rest is already out (half a
                     line in a file): the same events are written again,
                     never dead-lettered or re-batched */
  SL_WRITE_FATAL  /* n_ok delivered; the next event can never be
                     delivered: it goes to the dead letter (or is dropped,
                     counted in stats.refused), the rest go later */
};

/* An output plugin, filled in by field name: start, write(batch), stop,
 * and optionally retry (reconnect), reopen and healthy. The core owns
 * batching, in-flight accounting, retries with backoff, the breaker, rate
 * limits, dedup, acks and the dead letter. */
struct sl_output_ops {
  /* Open files or start connecting. 0 or a negative code, err filled. */
  int (*cb_start)(struct sl_output *o, char *err, size_t errlen);
  /* Deliver batch b; report once with sl_output_done (may be from here).
   * The core calls it again only after that report. b is valid for the
   * call only; its events stay in o->q until reported. */
  void (*cb_write)(struct sl_output *o, const struct sl_batch *b);
  /* The core's backoff after a failed attempt ran out: reconnect (a
   * connection-oriented plugin; its failed connects are reported with
   * sl_output_done(o, 0, SL_WRITE_RETRY, why), like failed writes). May be
   * NULL. When set, cb_write comes only while cb_healthy says yes: call
   * sl_output_kick once connected. */
  void (*cb_retry)(struct sl_output *o);
  /* Close everything; call sl_output_stopped(o) when the last handle is
   * closed (may be right away). */
  void (*cb_stop)(struct sl_output *o);
  /* SIGUSR1: reopen files (log rotation). May be NULL. */
  void (*cb_reopen)(struct sl_output *o);
  /* Is the output able to deliver now (connected, file open)? May be
   * NULL: always healthy. */
  int (*cb_healthy)(struct sl_output *o);
};

struct sl_output_stats {
  uint64_t events_out, bytes_out, errors;
  uint64_t retries;       /* failed attempts after which the events stayed */
  uint64_t dead_lettered; /* events that used up their retries and went to
                             the dead-letter output */
  uint64_t dropped_dedup; /* repeats of an id inside dedup.window_ms */
  uint64_t refused;       /* events it could never send and no dead letter
                             took (sl_output_refuse_head) */
  uint64_t rate_limited;  /* events that had to wait for a rate_limit token
                             (each counted once while it waits) */
  uint64_t breaker_opens; /* times the circuit breaker opened */
  uint64_t resolve_failures; /* connects whose host name did not resolve */
  int breaker_state;      /* enum sl_breaker_state: 0 closed, 1 open,
                             2 half-open */
  struct sl_histogram latency; /* ingest to confirmed delivery */
};

struct sl_output {
  const struct sl_output_ops *ops;
  const struct sl_output_config *cfg;
  struct sl_worker *w;
  int index;
  struct sl_queue q;   /* what is ready for delivery, in order */
  struct sl_buffer buf; /* the disk buffer or spill beside q, if any */
  struct sl_output *next_dirty;
  int dirty;
  int stopped;
  void *data; /* the plugin's state */
  struct sl_retry retry;         /* backoff, attempts, circuit breaker */
  struct sl_ratelimit rate;      /* rate_limit; rate 0 without one */
  uv_timer_t rate_timer;         /* kicks the output when tokens are back */
  int rate_timer_open;
  uint32_t rate_waiting;         /* events counted in stats.rate_limited
                                    that still wait */
  struct sl_dedup *dedup;        /* NULL without dedup */
  struct sl_log_limiter dead_letter_log;
  char last_error[128];          /* of the last failed attempt */
  struct sl_output_stats stats;
  /* the core's write state (cb_write plugins) */
  uint32_t writing;              /* events of the write in flight; 0: none */
  uint64_t due_ns;               /* sl_output_flush_due's last part batch */
  uint32_t again;                /* events the next write repeats; 0: none */
  uv_timer_t retry_timer;        /* the backoff after a failed write */
  int retry_timer_open;
  int closing;                   /* stopping: no new writes or retries */
  int acks;                      /* set by the plugin at cb_start: events
                                    leave when the peer confirms them, after
                                    their write (sl_output_written) */
  uint32_t unconfirmed;          /* acks: written, awaiting confirmation;
                                    the oldest in flight */
  uint32_t max_event_bytes;      /* set by the plugin: larger events can
                                    never be sent; the core refuses them
                                    (dead letter). 0: no limit */
  const char *max_event_note;    /* added to that refusal's reason */
  /* whole-config reload (reload.c): a removed or replaced output takes no
   * new events and drains (retiring) until retire_by_ns, then closes; its
   * slot is free again once gone */
  int retiring, gone;
  uint64_t retire_by_ns;
  const struct sl_output_config *cfg_base; /* the entry it started from */
  struct sl_output_config *cfg_copy; /* o->cfg when renamed or gone: owns
                                        name and type only */
  uint32_t retry_after_ms;       /* sl_output_retry_after: the next
                                    backoff; 0: the policy's */
  struct sl_output_note {        /* sl_output_note: headers for the next
                                    refusal's dead-letter copy */
    char name[32];
    char value[320];
    size_t len;
  } notes[2];
  int nnotes;
};

/* The write in flight (cb_write) is over: n_ok events from the front of
 * the queue are delivered, and st says what happens to the rest of the
 * batch; why is the failure's text (log, sluice-error header), or NULL.
 * Call once per cb_write, from any loop callback.
 *
 * With o->acks (a peer that confirms what it took, by count) a write is
 * two steps: sl_output_written when its bytes went out (its events now
 * await confirmation, and the core may hand out the next batch), then
 * sl_output_done(o, k, SL_WRITE_OK, NULL) each time the peer confirms the
 * k oldest events in flight, which may cover part of a write not yet
 * reported written. A failure (RETRY: the connection broke) ends all in
 * flight: whatever was not confirmed is written again after the backoff.
 * FATAL is for the oldest event not confirmed: report it with nothing
 * else in flight. */
void sl_output_done(struct sl_output *o, uint32_t n_ok,
                    enum sl_write_status st, const char *why);
void sl_output_written(struct sl_output *o);

/* The peer asked to be left alone for ms (HTTP Retry-After): call before
 * sl_output_done(.., SL_WRITE_RETRY, ..), whose backoff becomes ms (never
 * past the head's retry.max_elapsed_ms). The attempt still counts. */
void sl_output_retry_after(struct sl_output *o, uint32_t ms);

/* A header (name = value, value_len bytes; both truncated to fit) that
 * dead-letter copies made by the next failure report carry beside
 * sluice-error: what the peer said (an HTTP status, the start of its
 * answer). That report is sl_output_done with SL_WRITE_FATAL (the refused
 * event), or SL_WRITE_RETRY when the head used up its retries. At most
 * two; that report clears them. */
void sl_output_note(struct sl_output *o, const char *name, const char *value,
                    size_t value_len);

/* The output's queue changed (or it connected): hand out writes on the
 * loop. */
void sl_output_kick(struct sl_output *o);
void sl_output_stopped(struct sl_output *o);

/* An input queued a read's worth of events: write now, rather than once
 * the loop turn ends, the kicked outputs of w that hold a whole batch
 * (batch_events) not yet handed out. Safe inside an input's data
 * callback; the rest still waits for the loop's flush. */
void sl_output_flush_full(struct sl_worker *w);

/* As sl_output_flush_full, and a part batch too once its oldest event
 * waited hold_ns since its read (UINT64_MAX: never). Inputs call it with
 * SL_OUTPUT_HOLD_NS after a read and every SL_OUTPUT_HOLD_EVENTS events
 * inside one: an event waits for about that much of the engine's own
 * work before its write starts, whatever else the loop turn reads. */
#define SL_OUTPUT_HOLD_NS 200000u
#define SL_OUTPUT_HOLD_EVENTS 64u
void sl_output_flush_due(struct sl_worker *w, uint64_t hold_ns);

/* The peer answered and nothing waits (a connect with an empty queue): a
 * success for the breaker and the backoff, like a delivery. */
void sl_output_reachable(struct sl_output *o);

/* Put ev into o (taking a reference) and kick it. Returns 0 when queued
 * or spooled, SL_EAGAIN when the caller must wait on o's queue, SL_E2BIG
 * when it was dropped, counted: by the queue's policy, or as a repeat of
 * an id dedup saw inside its window. */
int sl_output_push(struct sl_output *o, struct sl_event *ev);

/* Set up output index of w (its config is w->cfg->outputs[index]) with
 * plugin ops: queue, buffer, retry, rate limit, dedup, and its metrics in
 * w->metrics (by o's address: o must not move until sl_output_close, which
 * removes them); does not start the plugin (o->stopped stays set). 0 or
 * a negative code, why filled. Tear down with sl_output_stop (plugin),
 * sl_output_close_handles (timers, buffer) and, once the loop closed them,
 * sl_output_close. */
int sl_output_init(struct sl_output *o, struct sl_worker *w, int index,
                   const struct sl_output_ops *ops, char *why, size_t whylen);
/* (A reload sets o->cfg before: then that is its config, not yet w->cfg's.) */
/* A reload renamed o (o->cfg now goes by "name (before reload N)"):
 * whatever copied its name must take the new one. */
void sl_output_renamed(struct sl_output *o);
void sl_output_stop(struct sl_output *o);
void sl_output_close_handles(struct sl_output *o);
void sl_output_close(struct sl_output *o);

#endif
