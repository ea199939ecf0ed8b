/* worker.h - a worker: one libuv loop with its inputs, outputs, queues and
 * rule states, and the pipeline that moves an event from an input through
 * the rules to the output queues. Nothing in a worker is shared with
 * another thread. The worker owns its inputs, outputs and rule set; the
 * config it was built from must outlive it. */
#ifndef SL_WORKER_H
#define SL_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "conn.h"
#include "event.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"

struct sl_worker;
struct sl_output;
struct sl_input;
struct sl_rules;

/* ---- outputs ----------------------------------------------------------- */

/* An output plugin, filled in by field name. */
struct sl_output_ops {
  const char *type;
  /* Open files or start connecting. 0 or a negative code, err filled. */
  int (*cb_start)(struct sl_output *o, char *err, size_t errlen);
  /* The queue has events that are not in flight: deliver some, and call
   * sl_output_delivered once they are confirmed. */
  void (*cb_flush)(struct sl_output *o);
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
  struct sl_histogram latency; /* ingest to confirmed delivery */
};

struct sl_output {
  const struct sl_output_ops *ops;
  const struct sl_output_config *cfg;
  struct sl_worker *w;
  int index;
  struct sl_queue q;
  struct sl_output *next_dirty;
  int dirty;
  int stopped;
  void *data; /* the plugin's state */
  struct sl_output_stats stats;
};

/* The output's queue changed: schedule cb_flush on the loop. */
void sl_output_kick(struct sl_output *o);
/* n events (bytes bytes) from the front of the queue are delivered. */
void sl_output_delivered(struct sl_output *o, uint32_t n, uint64_t bytes);
void sl_output_stopped(struct sl_output *o);

extern const struct sl_output_ops sl_output_null_ops;
extern const struct sl_output_ops sl_output_stdout_ops;
extern const struct sl_output_ops sl_output_file_ops;
extern const struct sl_output_ops sl_output_native_ops; /* tcp and unix */

/* ---- inputs ------------------------------------------------------------ */

/* Something that produces events and can be paused: one connection, one
 * HTTP request. When the pipeline cannot take an event now, the source
 * holds it here and waits; on_resume runs once it went through. */
struct sl_source {
  struct sl_worker *w;
  struct sl_input *input;
  struct sl_event *held;     /* the event waiting for room */
  uint16_t targets[SL_CONFIG_MAX_OUTPUTS]; /* outputs it still must enter */
  int ntargets;
  struct sl_waiter waiter;
  void (*on_resume)(struct sl_source *s); /* the held event went through */
};

struct sl_input_ops {
  const char *type;
  int (*cb_start)(struct sl_input *in, char *err, size_t errlen);
  /* Graceful stop: accept nothing new and read no more, finish what was
   * already read, then close connections as they become idle. */
  void (*cb_drain)(struct sl_input *in);
  /* Sources still open (holding an event or answering a request). */
  uint32_t (*cb_busy)(struct sl_input *in);
  /* Close everything now; call sl_input_stopped when all is closed (may be
   * right away). The input's state is freed by then. */
  void (*cb_stop)(struct sl_input *in);
};

struct sl_input_stats {
  uint64_t events_in, bytes_in, bad_input, connections_total;
  uint64_t abandoned; /* held events dropped by a forced stop */
};

struct sl_input {
  const struct sl_input_ops *ops;
  const struct sl_input_config *cfg;
  struct sl_worker *w;
  int index;
  void *data;
  int stopped;
  struct sl_input_stats stats;
};

void sl_input_stopped(struct sl_input *in);

extern const struct sl_input_ops sl_input_native_ops; /* tcp and unix */

/* ---- the worker -------------------------------------------------------- */

struct sl_worker_stats {
  uint64_t emit_dropped; /* sluice.emit into a full queue */
};

struct sl_worker {
  uv_loop_t loop;
  const struct sl_config *cfg;
  struct sl_idgen idgen;
  struct sl_input *inputs;
  int ninputs;
  struct sl_output *outputs;
  int noutputs;
  struct sl_output *dirty; /* outputs with new events to flush */
  uv_idle_t flush_idle;
  uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
  uv_timer_t drain_timer;
  uint64_t drain_deadline_ns;
  int stopping;          /* a stop signal came */
  int signals;           /* how many stop signals came */
  int exit_code;
  struct sl_rules *rules;  /* the live rules and the config routes */
  /* called for every decided event when set (the admin tap) */
  void (*tap)(void *data, const struct sl_event *ev, int outcome);
  void *tap_data;
  struct sl_log_limiter bad_input_log, rule_error_log;
  struct sl_worker_stats stats;
  uint64_t started_ns;
};

/* Set up inputs, outputs and rules from cfg on the worker's own loop. On
 * error a negative code is returned with err filled, and the worker is
 * closed. */
int sl_worker_init(struct sl_worker *w, const struct sl_config *cfg, char *err,
                   size_t errlen);
/* Run until stopped by a signal and drained. Returns the exit code. */
int sl_worker_run(struct sl_worker *w);
/* Begin the graceful stop (what SIGTERM does). */
void sl_worker_stop(struct sl_worker *w);
void sl_worker_close(struct sl_worker *w);

/* Run the event through rules and routes into the output queues. Takes
 * the caller's reference to ev. Returns 0 when it is done with the event
 * (queued, dropped or dead-lettered), or SL_EAGAIN when a blocking queue is
 * full: then s holds the event and waits, and s->on_resume runs once it is
 * queued. The caller must not submit more from s until then. */
int sl_worker_submit(struct sl_source *s, struct sl_event *ev);

/* Is any blocking output queue full or waited on? Inputs that answer
 * requests (HTTP) refuse new work while it is (503), rather than accept
 * part of a batch. */
int sl_worker_blocked(const struct sl_worker *w);

/* Set up / tear down a source (tear down drops a held event, counted). */
void sl_source_init(struct sl_source *s, struct sl_input *in,
                    void (*on_resume)(struct sl_source *s));
void sl_source_close(struct sl_source *s);

#endif
