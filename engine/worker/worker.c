/* worker.c - a worker's loop: set up its inputs, outputs and rules, the
 * signals, the run and the graceful shutdown; see worker.h. The source side
 * (submit, held events, durability) is source.c, the output runtime
 * output.c. */
#include "worker.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dedup.h"
#include "plugins.h"
#include "rules.h"
#include "schemas.h"
#include "tls.h"
#include "worker_int.h"
#include "workers.h"

#define DRAIN_CHECK_MS 20

static const struct sl_output_ops *output_ops(const char *type) {
  const struct sl_plugin *p = sl_plugin_find(SL_PLUGIN_OUTPUT, type);
  return p ? p->output : NULL;
}

static const struct sl_input_ops *input_ops(const char *type) {
  const struct sl_plugin *p = sl_plugin_find(SL_PLUGIN_INPUT, type);
  return p ? p->input : NULL;
}


void sl_input_stopped(struct sl_input *in) { in->stopped = 1; }

/* Events a rule emits cannot make its caller wait (the rule has returned
 * long before there is room), so a full queue drops them, counted. */
static void on_emit(void *data, int output, struct sl_event *ev) {
  struct sl_worker *w = data;
  struct sl_output *o;
  int rc;
  if ((ev = sl_schemas_emitted(w, &output, ev)) == NULL)
    return; /* misfit, no dead letter: counted */
  o = &w->outputs[output];
  if (o->gone || o->cfg == NULL) {
    /* a timer's emit the old rules decided while a reload retired its
     * output, arriving after the close (not seen, but its queue is freed
     * by then): dropped and counted, never pushed into a closed output */
    w->stats.emit_dropped++;
    sl_event_unref(ev);
    return;
  }
  rc = sl_output_push(o, ev);
  if (rc == SL_EAGAIN) {
    o->q.dropped_newest++;
    w->stats.emit_dropped++;
  } else if (rc == SL_EIO) {
    w->stats.emit_dropped++; /* the disk buffer counted the refusal */
  }
  sl_event_unref(ev);
}

void sl_worker_emit(struct sl_worker *w, int output, struct sl_event *ev) {
  on_emit(w, output, ev);
}

/* ---- lifecycle --------------------------------------------------------- */

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* A stop signal once the watchers are closed (see finish). */
static void exit_now(int signum) {
  (void)signum;
  _exit(1);
}

static void finish(struct sl_worker *w) {
  int i;
  uv_timer_stop(&w->drain_timer);
  /* every slot: an input a failed reload started may sit past ninputs */
  for (i = 0; i < w->input_slots; i++)
    if (w->inputs[i].ops && !w->inputs[i].stopped)
      w->inputs[i].ops->cb_stop(&w->inputs[i]);
  for (i = 0; i < w->noutputs; i++)
    if (!w->outputs[i].gone)
      sl_output_stop(&w->outputs[i]);
  for (i = 0; i < w->noutputs; i++)
    if (!w->outputs[i].gone)
      sl_output_close_handles(&w->outputs[i]);
  sl_rules_stop(w->rules);
  sl_workers_finish(w);
  if (w->admin && w->admin_stop)
    w->admin_stop(w->admin);
  uv_close((uv_handle_t *)&w->sig_term, NULL);
  uv_close((uv_handle_t *)&w->sig_int, NULL);
  uv_close((uv_handle_t *)&w->sig_hup, NULL);
  uv_close((uv_handle_t *)&w->sig_usr1, NULL);
  /* libuv gave the signals back their default action, which kills: a
   * stop signal in the rest of the shutdown (threads joined, state files
   * written) ended the engine with the signal's status, not the 1 of a
   * second stop signal (seen: -15 for two SIGTERMs mid-drain), and a
   * SIGHUP or SIGUSR1 (a reload, a log rotation) killed it mid-way */
  signal(SIGTERM, exit_now);
  signal(SIGINT, exit_now);
  signal(SIGHUP, SIG_IGN);
  signal(SIGUSR1, SIG_IGN);
  uv_close((uv_handle_t *)&w->drain_timer, NULL);
  uv_close((uv_handle_t *)&w->flush_idle, NULL);
  if (w->route_timer_open) {
    uv_close((uv_handle_t *)&w->route_timer, NULL);
    w->route_timer_open = 0;
  }
  if (w->retire_timer_open) {
    uv_close((uv_handle_t *)&w->retire_timer, NULL);
    w->retire_timer_open = 0;
  }
}

/* One line per output at shutdown: where its events went. With the
 * inputs' counts this balances the books (sent = delivered +
 * dead-lettered + dropped + left over). */
static void log_totals(struct sl_worker *w) {
  int i;
  for (i = 0; i < w->noutputs; i++) {
    const struct sl_output *o = &w->outputs[i];
    if (o->gone)
      continue; /* its totals were logged when it retired */
    sl_log(SL_LOG_INFO, "output totals", SL_S("output", o->cfg->name),
           SL_U("delivered", o->stats.events_out),
           SL_U("dead_lettered", o->stats.dead_lettered),
           SL_U("dropped_queue_full",
                o->q.dropped_newest + o->q.dropped_oldest),
           SL_U("dropped_dedup", o->stats.dropped_dedup),
           SL_U("retries", o->stats.retries), SL_U("errors", o->stats.errors),
           SL_U("rate_limited", o->stats.rate_limited),
           SL_U("breaker_opens", o->stats.breaker_opens),
           SL_U("left_queued", o->q.count + sl_buffer_backlog(
                                                 (struct sl_buffer *)&o->buf)),
           SL_END);
  }
}

static void on_drain_timer(uv_timer_t *t) {
  struct sl_worker *w = container_of(t, struct sl_worker, drain_timer);
  uint64_t queued = 0, busy = 0, on_disk = 0, memory_only = 0;
  int i;

  for (i = 0; i < w->ninputs; i++)
    if (!w->inputs[i].gone)
      busy += w->inputs[i].ops->cb_busy(&w->inputs[i]);
  busy += sl_workers_busy(w); /* events in the other workers */
  if (busy == 0) { /* no more events: on_stop (its emits drain too), state */
    sl_rules_shutdown(w->rules);
    busy = sl_workers_shutdown(w); /* theirs come back as results */
  }
  for (i = 0; i < w->noutputs; i++) {
    struct sl_output *o = &w->outputs[i];
    uint64_t backlog;
    if (o->gone)
      continue;
    backlog = sl_buffer_backlog(&o->buf);
    queued += o->q.count + backlog;
    if (o->buf.mode == SL_BUFFER_DISK)
      on_disk += o->q.count + backlog;
    else
      memory_only += o->q.count, on_disk += backlog;
  }
  if (busy == 0 && queued == 0) {
    sl_log(SL_LOG_INFO, "drained; exiting",
           SL_U("ms", (sl_mono_ns() - w->drain_deadline_ns +
                       (uint64_t)w->cfg->shutdown_timeout_ms * 1000000u) /
                          1000000u),
           SL_END);
    log_totals(w);
    finish(w);
    return;
  }
  if (sl_mono_ns() >= w->drain_deadline_ns) {
    /* what sits in a disk buffer is replayed at the next start */
    if (memory_only || busy) {
      sl_log(SL_LOG_ERROR,
             "shutdown_timeout reached; exiting with events undelivered",
             SL_U("lost_events", memory_only), SL_U("sources_holding", busy),
             SL_U("kept_in_disk_buffers", on_disk), SL_END);
      w->exit_code = 1;
    } else {
      sl_log(SL_LOG_WARN,
             "shutdown_timeout reached; undelivered events stay in the disk "
             "buffers for the next start",
             SL_U("kept_in_disk_buffers", on_disk), SL_END);
    }
    log_totals(w);
    finish(w);
  }
}

void sl_worker_stop(struct sl_worker *w) {
  int i;
  if (w->stopping)
    return;
  w->stopping = 1;
  sl_log(SL_LOG_INFO, "stopping: no new input; draining queues",
         SL_U("shutdown_timeout_ms", w->cfg->shutdown_timeout_ms), SL_END);
  for (i = 0; i < w->ninputs; i++)
    if (!w->inputs[i].gone && !w->inputs[i].retiring)
      w->inputs[i].ops->cb_drain(&w->inputs[i]);
  w->drain_deadline_ns =
      sl_mono_ns() + (uint64_t)w->cfg->shutdown_timeout_ms * 1000000u;
  uv_timer_start(&w->drain_timer, on_drain_timer, 0, DRAIN_CHECK_MS);
}

static void on_stop_signal(uv_signal_t *h, int signum) {
  struct sl_worker *w = h->data;
  if (++w->signals > 1) {
    sl_log(SL_LOG_WARN, "second stop signal; exiting now", SL_I("signal", signum),
           SL_END);
    _exit(1);
  }
  sl_log(SL_LOG_INFO, "stop signal", SL_S("signal", signum == SIGTERM ? "SIGTERM" : "SIGINT"),
         SL_END);
  sl_worker_stop(w);
}

static void on_usr1(uv_signal_t *h, int signum) {
  struct sl_worker *w = h->data;
  int i;
  (void)signum;
  for (i = 0; i < w->noutputs; i++)
    if (!w->outputs[i].gone && w->outputs[i].ops->cb_reopen)
      w->outputs[i].ops->cb_reopen(&w->outputs[i]);
}

static void on_hup(uv_signal_t *h, int signum) {
  struct sl_worker *w = h->data;
  char err[1024];
  (void)signum;
  sl_tls_reload_all(); /* rotated certificates; a bad one keeps the old */
  sl_worker_reload(w, "SIGHUP", err, sizeof(err));
}

/* The loop and the worker's own handles and route limits. */
static int init_loop(struct sl_worker *w, const struct sl_config *cfg,
                     char *err, size_t errlen) {
  int i, rc;
  if ((rc = uv_loop_init(&w->loop)) != 0) {
    snprintf(err, errlen, "cannot create the event loop: %s", uv_strerror(rc));
    return rc;
  }
  uv_idle_init(&w->loop, &w->flush_idle);
  uv_timer_init(&w->loop, &w->drain_timer);
  uv_signal_init(&w->loop, &w->sig_term);
  uv_signal_init(&w->loop, &w->sig_int);
  uv_signal_init(&w->loop, &w->sig_hup);
  uv_signal_init(&w->loop, &w->sig_usr1);
  uv_timer_init(&w->loop, &w->route_timer);
  w->route_timer_open = 1;
  uv_timer_init(&w->loop, &w->retire_timer);
  w->retire_timer_open = 1;
  w->sig_term.data = w->sig_int.data = w->sig_hup.data = w->sig_usr1.data = w;
  if (sl_queue_init(&w->route_waitq, 1, 1, SL_QUEUE_BLOCK) != 0)
    goto fail_oom;
  if (cfg->router.nroutes > 0) {
    w->route_limits = calloc((size_t)cfg->router.nroutes,
                             sizeof(*w->route_limits));
    if (w->route_limits == NULL)
      goto fail_oom;
    for (i = 0; i < cfg->router.nroutes; i++)
      if (cfg->router.routes[i].rate)
        sl_ratelimit_init(&w->route_limits[i].rl, cfg->router.routes[i].rate,
                          cfg->router.routes[i].burst, sl_mono_ns());
  }
  /* slots for a reload's new inputs and outputs beside draining ones */
  w->output_slots = 2 * SL_CONFIG_MAX_OUTPUTS + 2;
  if (w->output_slots < cfg->noutputs + 1)
    w->output_slots = cfg->noutputs + 1;
  w->input_slots = 2 * (cfg->ninputs > 32 ? cfg->ninputs : 32);
  w->outputs = calloc((size_t)w->output_slots, sizeof(*w->outputs));
  w->inputs = calloc((size_t)w->input_slots, sizeof(*w->inputs));
  if (w->outputs == NULL || w->inputs == NULL)
    goto fail_oom;
  return 0;

fail_oom:
  snprintf(err, errlen, "out of memory");
  return SL_ENOMEM;
}

/* Set up and start output i of cfg. */
int sl_worker_start_output(struct sl_worker *w, const struct sl_config *cfg,
                           int i, int pos, char *err, size_t errlen) {
  const struct sl_output_config *oc = &cfg->outputs[i];
  struct sl_output *o = &w->outputs[i];
  char why[256] = "";
  int rc;
  o->cfg = oc;
  o->cfg_base = oc;
  o->stopped = 1; /* until started */
  if (output_ops(oc->type) == NULL) {
    snprintf(err, errlen, "outputs[%d] (%s): type %s is not built in", pos,
             oc->name, oc->type);
    return SL_EINVAL;
  }
  if (w->noutputs < i + 1)
    w->noutputs = i + 1;
  rc = sl_output_init(o, w, i, output_ops(oc->type), why, sizeof(why));
  if (rc == 0) {
    o->buf.ticket = &w->durable_ticket;
    o->buf.on_durable = sl_worker_buffer_durable;
    o->buf.data = o;
  }
  if (rc == 0)
    rc = o->ops->cb_start(o, why, sizeof(why));
  if (rc != 0) {
    snprintf(err, errlen, "outputs[%d] (%s): %s", pos, oc->name,
             why[0] ? why : "cannot start");
    return rc;
  }
  o->stopped = 0;
  if (o->q.count > 0)
    sl_output_kick(o); /* replayed from its disk buffer */
  return 0;
}

/* Set up and start input i of cfg: it listens. */
int sl_worker_start_input(struct sl_worker *w, const struct sl_config *cfg,
                          int i, int pos, char *err, size_t errlen) {
  const struct sl_input_config *ic = &cfg->inputs[i];
  struct sl_input *in = &w->inputs[i];
  char why[256] = "";
  int rc;
  in->ops = input_ops(ic->type);
  in->cfg = ic;
  in->cfg_base = ic;
  in->w = w;
  in->index = i;
  if (w->ninputs < i + 1)
    w->ninputs = i + 1;
  if (in->ops == NULL) {
    snprintf(err, errlen, "inputs[%d] (%s): type %s is not built in", pos,
             ic->name, ic->type);
    in->stopped = 1;
    return SL_EINVAL;
  }
  rc = in->ops->cb_start(in, why, sizeof(why));
  if (rc != 0) {
    snprintf(err, errlen, "inputs[%d] (%s): %s", pos, ic->name,
             why[0] ? why : "cannot start");
    return rc;
  }
  sl_log(SL_LOG_INFO, "input listening", SL_S("input", ic->name),
         SL_S("type", ic->type), SL_S("listen", ic->listen), SL_END);
  return 0;
}

int sl_worker_init(struct sl_worker *w, const struct sl_config *cfg, char *err,
                   size_t errlen) {
  struct sl_rules_owner owner = {w, on_emit, NULL, 0};
  int i, rc;

  if (cfg->workers > 1) /* the watcher reloads every worker's set */
    owner.reload = sl_workers_rules_reload;
  memset(w, 0, sizeof(*w));
  w->cfg = cfg;
  w->started_ns = (uint64_t)sl_now_ns();
  w->durable_ticket = 1;
  w->durable_waiters.next = w->durable_waiters.prev = &w->durable_waiters;
  sl_idgen_init(&w->idgen);
  sl_log_limiter_init(&w->bad_input_log, 10000, 20);
  sl_log_limiter_init(&w->rule_error_log, 10000, 20);
  if ((rc = init_loop(w, cfg, err, errlen)) != 0) {
    if (!w->route_timer_open)
      return rc; /* no loop to close */
    goto fail;
  }
  w->metrics = sl_metric_registry_new();
  if (w->metrics == NULL || sl_worker_metrics(w) != 0 ||
      sl_schemas_init(w) != 0) {
    snprintf(err, errlen, "out of memory");
    rc = SL_ENOMEM;
    goto fail;
  }
  for (i = 0; i < cfg->noutputs; i++)
    if ((rc = sl_worker_start_output(w, cfg, i, i + 1, err, errlen)) != 0)
      goto fail;
  w->rules = sl_rules_new(cfg, &w->loop, &w->idgen, &owner, err, errlen);
  if (w->rules == NULL) {
    rc = SL_EINVAL;
    goto fail;
  }
  if ((rc = sl_rules_metrics(w->rules, w->metrics)) != 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if ((rc = sl_workers_start(w, err, errlen)) != 0)
    goto fail;
  for (i = 0; i < cfg->ninputs; i++)
    if ((rc = sl_worker_start_input(w, cfg, i, i + 1, err, errlen)) != 0)
      goto fail;
  uv_signal_start(&w->sig_term, on_stop_signal, SIGTERM);
  uv_signal_start(&w->sig_int, on_stop_signal, SIGINT);
  uv_signal_start(&w->sig_hup, on_hup, SIGHUP);
  uv_signal_start(&w->sig_usr1, on_usr1, SIGUSR1);
  return 0;

fail:
  finish(w);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  sl_worker_close(w);
  return rc;
}

void sl_worker_attach(struct sl_worker *w, struct sl_admin *a,
                      void (*stop)(struct sl_admin *a),
                      void (*free_fn)(struct sl_admin *a)) {
  w->admin = a;
  w->admin_stop = stop;
  w->admin_free = free_fn;
}

void sl_worker_abort(struct sl_worker *w) {
  finish(w);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  sl_worker_close(w);
}

int sl_worker_run(struct sl_worker *w) {
  uv_run(&w->loop, UV_RUN_DEFAULT);
  return w->exit_code;
}

void sl_worker_close(struct sl_worker *w) {
  int i;
  if (w->outputs == NULL && w->inputs == NULL)
    return;
  /* anything a plugin left open is closed here, so the loop can end */
  uv_walk(&w->loop, close_walk_cb, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  sl_rules_free(w->rules);
  w->rules = NULL;
  sl_workers_close(w); /* after set 0, which reads the replicas' sets */
  if (w->admin && w->admin_free)
    w->admin_free(w->admin); /* its handles closed in the run above */
  w->admin = NULL;
  for (i = 0; i < w->noutputs; i++)
    if (!w->outputs[i].gone)
      sl_output_close(&w->outputs[i]);
  free(w->route_limits);
  w->route_limits = NULL;
  sl_queue_close(&w->route_waitq);
  sl_worker_free_copies(w);
  free(w->outputs);
  free(w->inputs);
  for (i = 0; i < w->nold_cfgs; i++)
    sl_config_free(w->old_cfgs[i]);
  free(w->old_cfgs);
  w->old_cfgs = NULL;
  w->nold_cfgs = 0;
  if (w->owns_cfg)
    sl_config_free((struct sl_config *)w->cfg);
  w->owns_cfg = 0;
  w->outputs = NULL;
  w->inputs = NULL;
  sl_schemas_free(w);
  sl_metric_registry_free(w->metrics); /* after every module removed its */
  w->metrics = NULL;
  uv_loop_close(&w->loop);
}
