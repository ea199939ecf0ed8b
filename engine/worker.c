/* worker.c - one loop, its inputs and outputs, and the pipeline between
 * them; see worker.h. An event is routed once (rules, then the config's
 * routes) and pushed into each target queue; a full blocking queue makes
 * its source hold the event and stop reading until there is room. */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rules.h"

#define DRAIN_CHECK_MS 20

static const struct sl_output_ops *output_ops(const char *type) {
  if (strcmp(type, "null") == 0)
    return &sl_output_null_ops;
  if (strcmp(type, "stdout") == 0)
    return &sl_output_stdout_ops;
  if (strcmp(type, "file") == 0)
    return &sl_output_file_ops;
  if (strcmp(type, "tcp") == 0 || strcmp(type, "unix") == 0)
    return &sl_output_native_ops;
  return NULL;
}

static const struct sl_input_ops *input_ops(const char *type) {
  if (strcmp(type, "tcp") == 0 || strcmp(type, "unix") == 0)
    return &sl_input_native_ops;
  return NULL;
}

/* ---- outputs ----------------------------------------------------------- */

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
      o->ops->cb_flush(o);
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

void sl_output_delivered(struct sl_output *o, uint32_t n, uint64_t bytes) {
  uint64_t now = sl_mono_ns();
  uint32_t i;
  for (i = 0; i < n; i++)
    sl_histogram_observe(&o->stats.latency,
                         (double)(now - sl_queue_at(&o->q, i)->ingest_ns) / 1e9);
  o->stats.events_out += n;
  o->stats.bytes_out += bytes;
  sl_queue_pop(&o->q, n);
}

void sl_output_stopped(struct sl_output *o) { o->stopped = 1; }

void sl_input_stopped(struct sl_input *in) { in->stopped = 1; }

/* ---- the pipeline ------------------------------------------------------ */

/* Push the held event into its remaining targets. */
static int push_held(struct sl_source *s) {
  struct sl_worker *w = s->w;
  int i;

  for (i = 0; i < s->ntargets; i++) {
    struct sl_output *o = &w->outputs[s->targets[i]];
    int rc = sl_queue_push(&o->q, s->held);
    if (rc == SL_EAGAIN) {
      /* keep the targets not yet served; the served ones are done */
      memmove(s->targets, s->targets + i, (size_t)(s->ntargets - i) *
                                              sizeof(s->targets[0]));
      s->ntargets -= i;
      sl_queue_wait(&o->q, &s->waiter);
      return SL_EAGAIN;
    }
    if (rc == 0)
      sl_output_kick(o);
  }
  sl_event_unref(s->held);
  s->held = NULL;
  s->ntargets = 0;
  return 0;
}

static void on_room(struct sl_waiter *wt) {
  struct sl_source *s = container_of(wt, struct sl_source, waiter);
  if (s->held && push_held(s) == 0 && s->on_resume)
    s->on_resume(s);
}

void sl_source_init(struct sl_source *s, struct sl_input *in,
                    void (*on_resume)(struct sl_source *s)) {
  memset(s, 0, sizeof(*s));
  s->w = in->w;
  s->input = in;
  s->on_resume = on_resume;
  s->waiter.on_ready = on_room;
}

void sl_source_close(struct sl_source *s) {
  sl_queue_unwait(&s->waiter);
  if (s->held) {
    /* only at a forced stop: a graceful one waits for held events */
    s->input->stats.abandoned++;
    sl_event_unref(s->held);
    s->held = NULL;
  }
}

int sl_worker_submit(struct sl_source *s, struct sl_event *ev) {
  struct sl_worker *w = s->w;
  struct sl_rules_result r;
  int i;

  sl_rules_decide(w->rules, ev, &r);
  if (w->tap)
    w->tap(w->tap_data, r.event, (int)r.outcome);
  s->ntargets = r.ntargets;
  for (i = 0; i < r.ntargets; i++)
    s->targets[i] = r.targets[i];
  s->held = r.event; /* r.event holds the reference now (maybe a new one) */
  if (s->ntargets == 0) {
    sl_event_unref(s->held);
    s->held = NULL;
    return 0;
  }
  return push_held(s);
}

int sl_worker_blocked(const struct sl_worker *w) {
  int i;
  for (i = 0; i < w->noutputs; i++) {
    const struct sl_queue *q = &w->outputs[i].q;
    if (q->policy == SL_QUEUE_BLOCK &&
        (q->waiters.next != &q->waiters || q->count >= q->max_events ||
         q->bytes >= q->max_bytes))
      return 1;
  }
  return 0;
}

/* Events a rule emits cannot make its caller wait (the rule has returned
 * long before there is room), so a full queue drops them, counted. */
static void on_emit(void *data, int output, struct sl_event *ev) {
  struct sl_worker *w = data;
  struct sl_output *o = &w->outputs[output];
  int rc = sl_queue_push(&o->q, ev);
  if (rc == 0)
    sl_output_kick(o);
  else if (rc == SL_EAGAIN) {
    o->q.dropped_newest++;
    w->stats.emit_dropped++;
  }
  sl_event_unref(ev);
}

/* ---- lifecycle --------------------------------------------------------- */

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void finish(struct sl_worker *w) {
  int i;
  uv_timer_stop(&w->drain_timer);
  for (i = 0; i < w->ninputs; i++)
    if (!w->inputs[i].stopped)
      w->inputs[i].ops->cb_stop(&w->inputs[i]);
  for (i = 0; i < w->noutputs; i++)
    if (!w->outputs[i].stopped)
      w->outputs[i].ops->cb_stop(&w->outputs[i]);
  sl_rules_stop(w->rules);
  uv_close((uv_handle_t *)&w->sig_term, NULL);
  uv_close((uv_handle_t *)&w->sig_int, NULL);
  uv_close((uv_handle_t *)&w->sig_hup, NULL);
  uv_close((uv_handle_t *)&w->sig_usr1, NULL);
  uv_close((uv_handle_t *)&w->drain_timer, NULL);
  uv_close((uv_handle_t *)&w->flush_idle, NULL);
}

static void on_drain_timer(uv_timer_t *t) {
  struct sl_worker *w = container_of(t, struct sl_worker, drain_timer);
  uint64_t queued = 0, busy = 0;
  int i;

  for (i = 0; i < w->ninputs; i++)
    busy += w->inputs[i].ops->cb_busy(&w->inputs[i]);
  for (i = 0; i < w->noutputs; i++)
    queued += w->outputs[i].q.count;
  if (busy == 0 && queued == 0) {
    sl_log(SL_LOG_INFO, "drained; exiting",
           SL_U("ms", (sl_mono_ns() - w->drain_deadline_ns +
                       (uint64_t)w->cfg->shutdown_timeout_ms * 1000000u) /
                          1000000u),
           SL_END);
    finish(w);
    return;
  }
  if (sl_mono_ns() >= w->drain_deadline_ns) {
    sl_log(SL_LOG_ERROR,
           "shutdown_timeout reached; exiting with events undelivered",
           SL_U("queued_events", queued), SL_U("sources_holding", busy),
           SL_END);
    w->exit_code = 1;
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
    if (w->outputs[i].ops->cb_reopen)
      w->outputs[i].ops->cb_reopen(&w->outputs[i]);
}

static void on_hup(uv_signal_t *h, int signum) {
  struct sl_worker *w = h->data;
  (void)signum;
  sl_rules_reload(w->rules, "SIGHUP");
}

int sl_worker_init(struct sl_worker *w, const struct sl_config *cfg, char *err,
                   size_t errlen) {
  int i, rc;

  memset(w, 0, sizeof(*w));
  w->cfg = cfg;
  w->started_ns = (uint64_t)sl_now_ns();
  sl_idgen_init(&w->idgen);
  sl_log_limiter_init(&w->bad_input_log, 10000, 20);
  sl_log_limiter_init(&w->rule_error_log, 10000, 20);
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
  w->sig_term.data = w->sig_int.data = w->sig_hup.data = w->sig_usr1.data = w;

  w->outputs = calloc((size_t)cfg->noutputs + 1, sizeof(*w->outputs));
  w->inputs = calloc((size_t)cfg->ninputs + 1, sizeof(*w->inputs));
  if (w->outputs == NULL || w->inputs == NULL) {
    snprintf(err, errlen, "out of memory");
    rc = SL_ENOMEM;
    goto fail;
  }
  for (i = 0; i < cfg->noutputs; i++) {
    const struct sl_output_config *oc = &cfg->outputs[i];
    struct sl_output *o = &w->outputs[i];
    char why[256] = "";
    o->ops = output_ops(oc->type);
    o->cfg = oc;
    o->w = w;
    o->index = i;
    o->stopped = 1; /* until started */
    rc = sl_queue_init(&o->q, oc->queue.max_events, oc->queue.max_bytes,
                       oc->queue.when_full);
    if (rc == 0)
      w->noutputs = i + 1;
    if (rc == 0)
      rc = o->ops->cb_start(o, why, sizeof(why));
    if (rc != 0) {
      snprintf(err, errlen, "outputs[%d] (%s): %s", i + 1, oc->name,
               why[0] ? why : "cannot start");
      goto fail;
    }
    o->stopped = 0;
  }
  {
    struct sl_rules_owner owner = {w, on_emit};
    w->rules = sl_rules_new(cfg, &w->loop, &w->idgen, &owner, err, errlen);
    if (w->rules == NULL) {
      rc = SL_EINVAL;
      goto fail;
    }
  }
  for (i = 0; i < cfg->ninputs; i++) {
    const struct sl_input_config *ic = &cfg->inputs[i];
    struct sl_input *in = &w->inputs[i];
    char why[256] = "";
    in->ops = input_ops(ic->type);
    in->cfg = ic;
    in->w = w;
    in->index = i;
    w->ninputs = i + 1;
    if (in->ops == NULL) {
      snprintf(err, errlen, "inputs[%d] (%s): type %s is not built in", i + 1,
               ic->name, ic->type);
      in->stopped = 1;
      rc = SL_EINVAL;
      goto fail;
    }
    rc = in->ops->cb_start(in, why, sizeof(why));
    if (rc != 0) {
      snprintf(err, errlen, "inputs[%d] (%s): %s", i + 1, ic->name,
               why[0] ? why : "cannot start");
      goto fail;
    }
    sl_log(SL_LOG_INFO, "input listening", SL_S("input", ic->name),
           SL_S("type", ic->type), SL_S("listen", ic->listen), SL_END);
  }
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
  for (i = 0; i < w->noutputs; i++)
    sl_queue_close(&w->outputs[i].q);
  free(w->outputs);
  free(w->inputs);
  w->outputs = NULL;
  w->inputs = NULL;
  uv_loop_close(&w->loop);
}
