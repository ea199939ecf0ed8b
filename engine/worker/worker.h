/* worker.h - a worker: one libuv loop with its inputs, outputs, queues and
 * rule states, and the pipeline that moves an event from an input through
 * the rules to the output queues. Nothing in a worker is shared with
 * another thread. The worker owns its inputs, outputs and rule set; the
 * config it was built from must outlive it (configs a reload loads are the
 * worker's, freed by sl_worker_close). */
#ifndef SL_WORKER_H
#define SL_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "conn.h"
#include "event.h"
#include "buffer.h"
#include "log.h"
#include "histogram.h"
#include "metric.h"
#include "queue.h"
#include "ratelimit.h"
#include "retry.h"

struct sl_worker;
struct sl_output;
struct sl_input;
struct sl_rules;
struct sl_admin;
struct sl_http_server;
struct sl_dedup;

#include "output.h"

/* Plugins declare themselves (ops, type, keys) in worker/plugins.h. */

/* ---- inputs ------------------------------------------------------------ */

/* Something that produces events and can be paused: one connection, one
 * HTTP request. When the pipeline cannot take an event now, the source
 * holds it here and waits; on_resume runs once it went through. */
struct sl_rules_result;

struct sl_source {
  struct sl_worker *w;
  struct sl_input *input;
  struct sl_event *held;     /* the event waiting for room */
  int route_wait;            /* >= 0: held for a token of that route */
  uint16_t targets[SL_CONFIG_MAX_OUTPUTS]; /* outputs it still must enter */
  int ntargets;
  struct sl_waiter waiter;
  void (*on_resume)(struct sl_source *s); /* the held event went through */
  int refused;  /* the last event was refused by a disk buffer that cannot
                   write (see sl_worker_submit): it is not accepted */
  int refused_output; /* which output refused it */
  int holding;        /* counted in the worker's holding (a reload waits
                         for events decided before it) */
  uint64_t hold_gen;  /* the reload generation it was counted in */
  uint64_t unrouted;  /* its events no rule or route decided (an HTTP
                         batch's 202 says how many) */
  /* workers > 1 (workers.c): what its events in other threads refer to
   * (outlives it), and > 0 when the held event waits for room in the
   * ring of that worker (not yet decided) */
  struct sl_source_tag *tag;
  int shard_wait;
  int shard_bucket;  /* the held event's bucket (counted in flight) */
  int refused_later; /* workers > 1: one of its events was refused after
                        sl_worker_submit returned (refused_output says
                        where): never ack it; refuse (close, 503) instead */
  /* optional, workers > 1: refused_later was just set, on the main loop
   * (maybe inside another source's read): a connection closes now, as at
   * an inline refusal; a producer done sending has no next read or ack
   * that would tell it */
  void (*on_refused_later)(struct sl_source *s);
};

/* Someone waiting until the events it submitted are where their outputs'
 * policies promise (sl_worker_durable). Embed it and get back with
 * container_of; zeroed memory is a valid idle one. */
struct sl_durable {
  struct sl_durable *next, *prev;
  uint64_t ticket;
  int waiting;
  int refused_output; /* after SL_EIO: the output whose disk refused */
  void (*on_durable)(struct sl_durable *d);
  uint64_t async_seq; /* workers > 1: waits for jobs up to this one */
  int failed; /* set when on_durable runs for a refusal (what SL_EIO says:
                 see refused_output), only with workers > 1 */
};

struct sl_input_ops {
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

struct sl_route_limit {
  struct sl_ratelimit rl;
  uint64_t waited;  /* events that waited for a token (block, spill) */
  uint64_t dropped; /* events dropped for want of one (drop policies) */
};

struct sl_input_stats {
  uint64_t events_in, bytes_in, bad_input, connections_total;
  uint64_t abandoned; /* held events dropped by a forced stop */
  uint64_t malformed; /* messages that did not parse (kept raw or
                         dead-lettered): syslog */
  uint64_t dropped;   /* lost by an input that cannot make its sender
                         wait: udp datagrams while blocked */
  uint32_t connections_open;
  /* events no rule or route decided, by rule set version: the last
   * SL_UNROUTED_VERSIONS versions seen, slot version % that */
#define SL_UNROUTED_VERSIONS 4
  uint64_t unrouted_version[SL_UNROUTED_VERSIONS];
  uint64_t unrouted[SL_UNROUTED_VERSIONS];
  /* HTTP inputs: their server (responses by status, connections); NULL
   * for the others. Read by metrics. */
  const struct sl_http_server *http;
  /* tcp/unix inputs: their listener (limits, refusals); NULL otherwise */
  const struct sl_listener *listener;
};

struct sl_input {
  const struct sl_input_ops *ops;
  const struct sl_input_config *cfg;
  struct sl_worker *w;
  int index;
  void *data;
  int stopped;
  struct sl_input_stats stats;
  /* whole-config reload: removed or replaced, it drains like at shutdown
   * (retiring) until retire_by_ns, then stops; gone once stopped */
  int retiring, gone, stop_sent;
  uint64_t retire_by_ns;
  const struct sl_input_config *cfg_base; /* the entry it started from */
  struct sl_input_config *cfg_copy; /* in->cfg when renamed or gone: owns
                                       name and type only */
};

void sl_input_stopped(struct sl_input *in);

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
  /* routes' rate_limit: a token bucket per route; sources that must wait
   * for a token wait on route_waitq, a queue that never holds an event
   * (only its waiter list is used), woken by route_timer */
  struct sl_route_limit *route_limits;
  struct sl_queue route_waitq;
  uv_timer_t route_timer;
  int route_timer_open;
  /* called for every decided event when set (the admin tap), with the
   * decision (struct sl_rules_result, rules.h) */
  void (*tap)(void *data, const struct sl_event *ev,
              const struct sl_rules_result *r);
  void *tap_data;
  /* the admin server, attached from the layer above (sl_worker_attach);
   * NULL without admin.listen. The worker stops it when it drains and
   * frees it in sl_worker_close. */
  struct sl_admin *admin;
  void (*admin_stop)(struct sl_admin *a);
  void (*admin_free)(struct sl_admin *a);
  struct sl_log_limiter bad_input_log, rule_error_log;
  struct sl_worker_stats stats;
  /* what /metrics renders: every module of the worker registers its
   * metrics here (core/metric.h) and removes them when it goes */
  struct sl_metric_registry *metrics;
  struct sl_schemas *schemas; /* payload contracts' counters (schemas.c) */
  uint64_t started_ns;
  /* durability tickets: disk buffers stamp appends with durable_ticket;
   * durable_waiters (oldest ticket first) wait for their stamp to be
   * covered by a flush or a sync */
  uint64_t durable_ticket;
  struct sl_durable durable_waiters;
  /* whole-config reload (reload.c). inputs and outputs are slot arrays
   * that never move (handles live inside them): a reloaded config is laid
   * out so that its i-th input/output is slot i, with retired placeholders
   * for slots that drain or are free. A config it replaced is freed once
   * no input or output started from it runs. */
  int input_slots, output_slots;
  struct sl_config **old_cfgs;
  int nold_cfgs;
  int owns_cfg;            /* w->cfg was loaded by a reload */
  uint64_t gen;            /* reloads committed */
  uint32_t holding_now;    /* sources holding an event decided since the
                              last reload */
  uint32_t holding_old;    /* ... decided before it: retiring outputs
                              wait for them */
  uv_timer_t retire_timer;
  int retire_timer_open;
  int retiring;            /* inputs and outputs still retiring */
  /* workers > 1: the other rule threads and the rings to them
   * (workers.c); NULL with workers = 1, today's single-thread path */
  struct sl_workers *workers;
};

/* Set up inputs, outputs and rules from cfg on the worker's own loop. On
 * error a negative code is returned with err filled, and the worker is
 * closed. */
int sl_worker_init(struct sl_worker *w, const struct sl_config *cfg, char *err,
                   size_t errlen);
/* Run until stopped by a signal and drained. Returns the exit code. */
/* Attach the admin server a (a layer above the worker, which must not
 * include it): stop is called when the worker drains, free in
 * sl_worker_close after the loop closed a's handles. */
void sl_worker_attach(struct sl_worker *w, struct sl_admin *a,
                      void (*stop)(struct sl_admin *a),
                      void (*free_fn)(struct sl_admin *a));
/* Tear down a worker that sl_worker_init started but that will not run
 * (something attached failed to start): stops and closes it. */
void sl_worker_abort(struct sl_worker *w);
int sl_worker_run(struct sl_worker *w);
/* Begin the graceful stop (what SIGTERM does). */
void sl_worker_stop(struct sl_worker *w);
/* Reload the config file as a whole (SIGHUP, POST /reload): all or
 * nothing, see reload.c and README "Hot reload". trigger names the cause
 * in the log. Returns 0 when the new config is live; otherwise the running
 * one stays, and err (also in the rules' status, last_reload.error) says
 * why. */
int sl_worker_reload(struct sl_worker *w, const char *trigger, char *err,
                     size_t errlen);
void sl_worker_close(struct sl_worker *w);

/* Run the event through rules and routes into the output queues. Takes
 * the caller's reference to ev. Returns 0 when it is done with the event
 * (queued, dropped or dead-lettered), or SL_EAGAIN when a blocking queue is
 * full: then s holds the event and waits, and s->on_resume runs once it is
 * queued. The caller must not submit more from s until then. SL_EIO: a
 * disk buffer that cannot write refused it (drop policies; s->refused and
 * s->refused_output say so, also when on_resume runs): the event is not
 * accepted and the producer must be told (close, 503), never acked.
 * Queued or spooled is not yet acknowledgeable: see sl_worker_durable. */
int sl_worker_submit(struct sl_source *s, struct sl_event *ev);

/* With workers > 1: wake the workers that got events and apply their
 * decisions now. Stream inputs call it between two reads (through
 * sl_framed_read_done), when their source holds no event (a wake-up cannot
 * reenter it). */
void sl_worker_pump(struct sl_worker *w);

/* Is any blocking output queue full or waited on? Inputs that answer
 * requests (HTTP) refuse new work while it is (503), rather than accept
 * part of a batch. */
int sl_worker_blocked(const struct sl_worker *w);

/* May the events submitted so far be acknowledged? They are once every
 * disk buffer holds them where its fsync policy promises (written to the
 * kernel; on disk with fsync "always"). Returns 0 when they are now (a
 * flush is tried here), or SL_EAGAIN: d->on_durable runs later, from the
 * loop, once they are (a sync finished, or a failed write worked on
 * retry). SL_EIO: a disk buffer with a drop policy cannot write them
 * (d->refused_output says which): refuse them to the producer (close,
 * 503); some may still be delivered. Never acknowledge before 0 or the
 * callback. sl_worker_undurable forgets d (call
 * it when the connection or request goes away; safe when not waiting). */
int sl_worker_durable(struct sl_worker *w, struct sl_durable *d);
void sl_worker_undurable(struct sl_durable *d);

/* Words for a refusal: "the disk buffer of output X cannot write: why". */
void sl_worker_refusal(const struct sl_worker *w, int output, char *buf,
                       size_t len);

/* Register the worker's own metrics in w->metrics: inputs (iterating the
 * live list at each scrape), their listeners and HTTP servers, route rate
 * limits, sluice.emit drops. 0 or SL_ENOMEM. In worker_metrics.c. */
int sl_worker_metrics(struct sl_worker *w);
/* The per-listener families (labels listener, type; refused adds reason),
 * for listeners outside the inputs (the admin server's) to join. */
extern const struct sl_metric sl_worker_listener_open;
extern const struct sl_metric sl_worker_listener_refused;
extern const struct sl_metric sl_worker_listener_timed_out;

/* Set up / tear down a source (tear down drops a held event, counted). */
void sl_source_init(struct sl_source *s, struct sl_input *in,
                    void (*on_resume)(struct sl_source *s));
void sl_source_close(struct sl_source *s);

#endif
