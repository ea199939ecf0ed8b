/* reload.c - whole-config reload (SIGHUP, `sluice reload`, POST /reload).
 *
 * All or nothing: the file is loaded and checked, the settings only a
 * restart can change are compared, every added or changed output (and each
 * added input whose address is free) is started and the rules are built
 * against the new config before anything switches; any failure undoes what
 * was started and keeps the running config, with the reason in the log and
 * the rules' status (last_reload.error). Then, between two events, routes,
 * rules and the output set switch together.
 *
 * Inputs and outputs live in slot arrays that never move (libuv handles
 * and plugin state point into them). An unchanged one keeps its slot, its
 * connections, queue, buffer and batches; the new config is laid out so
 * that its i-th output is slot i (routes, the dead letter and the rules
 * name outputs by index), with retired placeholders for slots that drain
 * or are free. A removed or replaced output takes no new events; it
 * drains, waiting also for events decided before the switch that sources
 * still hold, until shutdown_timeout, then closes (what is left on a disk
 * buffer stays there for a later output of the same name). A removed or
 * replaced input drains like at shutdown: no new connections, open ones
 * finish what they sent and close. */
#include "worker.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "plugins.h"
#include "rules.h"
#include "schemas.h"
#include "tls.h"
#include "workers.h"
#include "worker_int.h"

enum { KEEP, ADD, CHANGE };

struct plan {
  struct sl_worker *w;
  struct sl_config *next;
  const char *trigger;
  int *out_slot, *out_kind; /* by index in the file's order */
  int *in_slot, *in_kind;
  unsigned char *in_late; /* by slot */
  struct sl_route_limit *limits; /* for the new routes */
  unsigned char *out_taken, *out_retire; /* by slot */
  unsigned char *in_taken, *in_retire;
  int nout, nin; /* slots the laid-out config spans */
  int next_noutputs, next_ninputs; /* as in the file, before the layout */
  int old_ninputs;
  struct sl_buf ins, outs; /* " +web ~in -old" for the log */
  uint64_t number;          /* this reload's, once committed (w->gen) */
  int routes_same;
  char *err;
  size_t errlen;
};

/* ---- planning: which slot each input and output of the file takes ------ */

static int output_live(const struct sl_output *o) {
  return o->cfg && !o->retiring && !o->gone;
}

static int find_output(const struct sl_worker *w, const char *name) {
  int s;
  for (s = 0; s < w->noutputs; s++)
    if (output_live(&w->outputs[s]) && strcmp(w->outputs[s].cfg->name, name) == 0)
      return s;
  return -1;
}

/* The lowest free slot; first the one an output of that name left, so
 * that its counters carry on under one name. */
static int free_output_slot(const struct plan *p, const char *name) {
  const struct sl_worker *w = p->w;
  int s, first = -1;
  for (s = 0; s < w->output_slots; s++) {
    const struct sl_output *o = &w->outputs[s];
    if (p->out_taken[s] || !(o->cfg == NULL || (o->gone && !o->dirty)))
      continue;
    if (o->cfg && strcmp(o->cfg->name, name) == 0)
      return s;
    if (first < 0)
      first = s;
  }
  return first;
}

/* Does the new config oc keep its disk buffer (or spill) where o, running,
 * keeps one? A spool file cannot have two owners at once. */
static int same_spool(const struct sl_output *o, const struct sl_output_config *oc) {
  const char *a = o->cfg->buffer.path, *b = oc->buffer.path;
  if (o->buf.mode == SL_BUFFER_MEMORY ||
      !(oc->buffer.disk || oc->queue.when_full == SL_QUEUE_SPILL))
    return 0;
  return a && b ? strcmp(a, b) == 0 : strcmp(o->cfg->name, oc->name) == 0;
}

/* An added or changed output: refuse a disk buffer that a running output
 * (the one it replaces, or one still draining) owns. */
static int check_spool(struct plan *p, const struct sl_output_config *oc, int live) {
  struct sl_worker *w = p->w;
  int s;
  if (live >= 0 && same_spool(&w->outputs[live], oc)) {
    snprintf(p->err, p->errlen,
             "reload refused (restart to apply it): output %s keeps its disk "
             "buffer at the same path, which the running one owns",
             oc->name);
    return SL_EINVAL;
  }
  for (s = 0; s < w->noutputs; s++)
    if (w->outputs[s].retiring && !w->outputs[s].gone &&
        same_spool(&w->outputs[s], oc)) {
      snprintf(p->err, p->errlen,
               "reload refused: the disk buffer of output %s is still held "
               "by the removed output draining it; reload again once it is "
               "gone",
               oc->name);
      return SL_EAGAIN;
    }
  return 0;
}

static int plan_outputs(struct plan *p) {
  struct sl_worker *w = p->w;
  int j, s, rc;
  for (j = 0; j < p->next->noutputs; j++) {
    const struct sl_output_config *oc = &p->next->outputs[j];
    int live = find_output(w, oc->name);
    if (live >= 0 && sl_config_output_same(w->outputs[live].cfg, oc)) {
      p->out_kind[j] = KEEP;
      p->out_slot[j] = live;
      p->out_taken[live] = 1;
      continue;
    }
    if ((rc = check_spool(p, oc, live)) != 0)
      return rc;
    p->out_kind[j] = live >= 0 ? CHANGE : ADD;
    sl_buf_printf(&p->outs, " %c%s", live >= 0 ? '~' : '+', oc->name);
    if (live >= 0)
      p->out_retire[live] = 1;
    if ((s = free_output_slot(p, oc->name)) < 0) {
      snprintf(p->err, p->errlen, "reload refused: no room for output %s "
               "beside the outputs still draining; reload again later",
               oc->name);
      return SL_EAGAIN;
    }
    p->out_slot[j] = s;
    p->out_taken[s] = 1;
  }
  for (s = 0; s < w->noutputs; s++)
    if (output_live(&w->outputs[s]) && !p->out_taken[s] && !p->out_retire[s]) {
      p->out_retire[s] = 1; /* removed */
      sl_buf_printf(&p->outs, " -%s", w->outputs[s].cfg->name);
    }
  p->nout = w->noutputs;
  for (j = 0; j < p->next->noutputs; j++)
    if (p->out_slot[j] + 1 > p->nout)
      p->nout = p->out_slot[j] + 1;
  return 0;
}

static int input_live(const struct sl_input *in) {
  return in->ops && !in->retiring && !in->gone;
}

static int free_input_slot(const struct plan *p, const char *name) {
  const struct sl_worker *w = p->w;
  int s, first = -1;
  for (s = 0; s < w->input_slots; s++) {
    const struct sl_input *in = &w->inputs[s];
    if (p->in_taken[s] || !((in->ops == NULL && !in->retiring) || in->gone))
      continue;
    if (in->cfg && strcmp(in->cfg->name, name) == 0)
      return s;
    if (first < 0)
      first = s;
  }
  return first;
}

/* Does input b (new) want an address input a (running) holds: its listen
 * or a syslog input's udp? */
static int inputs_collide(const struct sl_input_config *a,
                          const struct sl_input_config *b) {
  const char *as[2], *bs[2];
  int i, k;
  as[0] = a->listen;
  as[1] = sl_config_value_str(a->values, a->nvalues, "udp");
  bs[0] = b->listen;
  bs[1] = sl_config_value_str(b->values, b->nvalues, "udp");
  for (i = 0; i < 2; i++)
    for (k = 0; k < 2; k++)
      if (as[i] && bs[k] && sl_config_listen_collide(as[i], bs[k]))
        return 1;
  return 0;
}

static int plan_inputs(struct plan *p) {
  struct sl_worker *w = p->w;
  int j, s, k;
  for (j = 0; j < p->next->ninputs; j++) {
    const struct sl_input_config *ic = &p->next->inputs[j];
    int live = -1;
    for (s = 0; s < w->ninputs && live < 0; s++)
      if (input_live(&w->inputs[s]) && strcmp(w->inputs[s].cfg->name, ic->name) == 0)
        live = s;
    if (live >= 0 && sl_config_input_same(w->inputs[live].cfg, ic)) {
      p->in_kind[j] = KEEP;
      p->in_slot[j] = live;
      p->in_taken[live] = 1;
      continue;
    }
    p->in_kind[j] = live >= 0 ? CHANGE : ADD;
    sl_buf_printf(&p->ins, " %c%s", live >= 0 ? '~' : '+', ic->name);
    if (live >= 0)
      p->in_retire[live] = 1;
    if ((s = free_input_slot(p, ic->name)) < 0) {
      snprintf(p->err, p->errlen, "reload refused: no room for input %s "
               "beside the inputs still draining; reload again later",
               ic->name);
      return SL_EAGAIN;
    }
    p->in_slot[j] = s;
    p->in_taken[s] = 1;
  }
  for (s = 0; s < w->ninputs; s++)
    if (input_live(&w->inputs[s]) && !p->in_taken[s] && !p->in_retire[s]) {
      p->in_retire[s] = 1; /* removed */
      sl_buf_printf(&p->ins, " -%s", w->inputs[s].cfg->name);
    }
  /* a new input on the address of one this reload retires starts once
   * that one stopped listening, after the switch */
  for (j = 0; j < p->next->ninputs; j++)
    for (k = 0; p->in_kind[j] != KEEP && k < w->ninputs; k++)
      if (p->in_retire[k] &&
          inputs_collide(w->inputs[k].cfg, &p->next->inputs[j]))
        p->in_late[p->in_slot[j]] = 1; /* by slot */
  p->nin = w->ninputs;
  for (j = 0; j < p->next->ninputs; j++)
    if (p->in_slot[j] + 1 > p->nin)
      p->nin = p->in_slot[j] + 1;
  return 0;
}

/* An input that starts only after the switch (on the address of one this
 * reload retires) must not fail there for a file it reads: the old one
 * would be closed with nothing in its place. Load its certificate, key and
 * CAs and its bearer token now, so that a bad one rejects the reload
 * while the old listener still runs. Only binding is left to chance. */
static int check_late_inputs(struct plan *p) {
  char why[512];
  int j;
  for (j = 0; j < p->next->ninputs; j++) {
    const struct sl_input_config *ic = &p->next->inputs[j];
    struct sl_tls *tls;
    char *token;
    size_t len;
    if (!p->in_late[p->in_slot[j]])
      continue;
    if (ic->tls.enabled) {
      if ((tls = sl_tls_new(&ic->tls, 1, ic->listen, ic->name, why,
                            sizeof(why))) == NULL)
        goto fail;
      sl_tls_free(tls);
    }
    if (ic->bearer_token_file) {
      if ((token = sl_http_load_token(ic->bearer_token_file, &len, why,
                                      sizeof(why))) == NULL)
        goto fail;
      free(token);
    }
  }
  return 0;

fail:
  snprintf(p->err, p->errlen, "inputs[%d] (%s): %s", j + 1,
           p->next->inputs[j].name, why);
  return SL_EINVAL;
}

/* ---- laying the new config out by slot ----------------------------------- */

static char *dup_or_empty(const char *s) { return strdup(s ? s : ""); }

/* The name a retired slot goes by: its own, or, when c has a live one of
 * that name (it replaced it), "name (before reload N)", so that metrics
 * never show two series with one name. c's inputs (outputs when outputs
 * is set) are searched, skipping retired placeholders. */
static char *old_name(const struct plan *p, const char *name,
                      const struct sl_config *c, int outputs) {
  char buf[512];
  int j, n = outputs ? c->noutputs : c->ninputs;
  if (name == NULL)
    return strdup("");
  for (j = 0; j < n; j++) {
    const char *live = outputs ? c->outputs[j].name : c->inputs[j].name;
    int retired = outputs ? c->outputs[j].retired : c->inputs[j].retired;
    if (!retired && live && strcmp(live, name) == 0) {
      snprintf(buf, sizeof(buf), "%s (before reload %llu)", name,
               (unsigned long long)p->number);
      return strdup(buf);
    }
  }
  return strdup(name);
}

/* Copies of config entries that an output or input goes by once renamed
 * or gone: they own name and type; every other string is the original's
 * (a gone one has none). */
static void free_copy(char *name, char *type, void *copy) {
  free(name);
  free(type);
  free(copy);
}

void sl_worker_free_copies(struct sl_worker *w) {
  int s;
  for (s = 0; s < w->output_slots; s++) {
    struct sl_output_config *c = w->outputs[s].cfg_copy;
    if (c)
      free_copy(c->name, c->type, c);
    w->outputs[s].cfg_copy = NULL;
  }
  for (s = 0; s < w->input_slots; s++) {
    struct sl_input_config *c = w->inputs[s].cfg_copy;
    if (c)
      free_copy(c->name, c->type, c);
    w->inputs[s].cfg_copy = NULL;
  }
}

/* o goes by a copy of its config named name (taken); gone: a copy with
 * nothing but name and type, so that its config can be freed. */
static void output_goes_by(struct sl_output *o, char *name, int gone) {
  struct sl_output_config *copy = calloc(1, sizeof(*copy));
  char *type = o->cfg->type ? strdup(o->cfg->type) : NULL;
  if (name == NULL || copy == NULL || type == NULL) {
    free_copy(name, type, copy); /* keep the old one: a leak beats a crash */
    return;
  }
  if (!gone)
    *copy = *o->cfg;
  copy->name = name;
  copy->type = type;
  copy->retired = gone;
  if (o->cfg_copy)
    free_copy(o->cfg_copy->name, o->cfg_copy->type, o->cfg_copy);
  o->cfg_copy = copy;
  o->cfg = copy;
  if (gone)
    o->cfg_base = NULL;
}

/* The same for an input (its slot in w->inputs, read by metrics). */
static void input_goes_by(struct sl_input *in, char *name, int gone) {
  struct sl_input_config *copy = calloc(1, sizeof(*copy));
  char *type = in->cfg->type ? strdup(in->cfg->type) : NULL;
  if (name == NULL || copy == NULL || type == NULL) {
    free_copy(name, type, copy);
    return;
  }
  if (!gone)
    *copy = *in->cfg;
  copy->name = name;
  copy->type = type;
  copy->retired = gone;
  if (in->cfg_copy)
    free_copy(in->cfg_copy->name, in->cfg_copy->type, in->cfg_copy);
  in->cfg_copy = copy;
  in->cfg = copy;
  if (gone)
    in->cfg_base = NULL;
}

/* Zero a free slot for a new start, dropping the copy a gone one had. */
static void clear_output_slot(struct sl_output *o) {
  if (o->cfg_copy)
    free_copy(o->cfg_copy->name, o->cfg_copy->type, o->cfg_copy);
  memset(o, 0, sizeof(*o));
}

static void clear_input_slot(struct sl_input *in) {
  if (in->cfg_copy)
    free_copy(in->cfg_copy->name, in->cfg_copy->type, in->cfg_copy);
  memset(in, 0, sizeof(*in));
}

/* A draining or gone output whose name the new config gives a live one
 * goes by "name (before reload N)" from now on (metrics, logs). */
static void rename_output(struct plan *p, struct sl_output *o,
                          const struct sl_config *c) {
  char *name = old_name(p, o->cfg->name, c, 1);
  if (name && strcmp(name, o->cfg->name) == 0) {
    free(name);
    return;
  }
  output_goes_by(o, name, o->gone);
  if (!o->gone)
    sl_output_renamed(o);
}

static void rename_input(struct plan *p, struct sl_input *in,
                         const struct sl_config *c) {
  char *name = old_name(p, in->cfg->name, c, 0);
  if (name && strcmp(name, in->cfg->name) == 0) {
    free(name);
    return;
  }
  input_goes_by(in, name, in->gone);
}

/* Free the configs no running input or output started from. */
static int uses(const void *p, const void *base, int n, size_t size) {
  uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
  return p && a >= b && a < b + (size_t)n * size;
}

static void free_unused_configs(struct sl_worker *w) {
  int i, s, n = 0;
  for (i = 0; i < w->nold_cfgs; i++) {
    struct sl_config *c = w->old_cfgs[i];
    int used = 0;
    for (s = 0; s < w->output_slots && !used; s++)
      used = uses(w->outputs[s].cfg_base, c->outputs, c->noutputs,
                  sizeof(*c->outputs));
    for (s = 0; s < w->input_slots && !used; s++)
      used = uses(w->inputs[s].cfg_base, c->inputs, c->ninputs,
                  sizeof(*c->inputs));
    if (used)
      w->old_cfgs[n++] = c;
    else
      sl_config_free(c);
  }
  w->nold_cfgs = n;
}

static int layout_outputs(struct plan *p) {
  struct sl_config *c = p->next;
  struct sl_output_config *a = calloc((size_t)p->nout + 1, sizeof(*a));
  int j, k, s;
  if (a == NULL)
    return SL_ENOMEM;
  for (j = 0; j < c->noutputs; j++)
    a[p->out_slot[j]] = c->outputs[j]; /* the strings move with it */
  for (s = 0; s < p->nout; s++)
    if (!p->out_taken[s]) {
      struct sl_output *o = &p->w->outputs[s];
      a[s].name = dup_or_empty(o->cfg ? o->cfg->name : NULL);
      a[s].type = dup_or_empty(o->cfg ? o->cfg->type : NULL);
      a[s].retired = 1;
    }
  for (j = 0; j < c->router.nroutes; j++)
    for (k = 0; k < c->router.routes[j].nto; k++)
      c->router.routes[j].to[k] =
          (uint16_t)p->out_slot[c->router.routes[j].to[k]];
  if (c->dead_letter >= 0)
    c->dead_letter = p->out_slot[c->dead_letter];
  free(c->outputs);
  c->outputs = a;
  c->noutputs = p->nout;
  for (s = 0; s < p->nout; s++)
    if (a[s].name == NULL || a[s].type == NULL)
      return SL_ENOMEM;
  return 0;
}

static int layout_inputs(struct plan *p) {
  struct sl_config *c = p->next;
  struct sl_input_config *a = calloc((size_t)p->nin + 1, sizeof(*a));
  int j, s;
  if (a == NULL)
    return SL_ENOMEM;
  for (j = 0; j < c->ninputs; j++)
    a[p->in_slot[j]] = c->inputs[j];
  for (s = 0; s < p->nin; s++)
    if (!p->in_taken[s]) {
      const struct sl_config *live = p->w->cfg;
      const struct sl_input_config *old = p->w->inputs[s].cfg;
      /* the name it went by so far (a placeholder's, if it was one) */
      const char *name = s < live->ninputs ? live->inputs[s].name
                         : old             ? old->name
                                           : NULL;
      a[s].name = old_name(p, name, c, 0);
      a[s].type = dup_or_empty(old ? old->type : NULL);
      a[s].retired = 1;
    }
  free(c->inputs);
  c->inputs = a;
  c->ninputs = p->nin;
  for (s = 0; s < p->nin; s++)
    if (a[s].name == NULL || a[s].type == NULL)
      return SL_ENOMEM;
  return 0;
}

/* ---- starting, undoing, retiring ------------------------------------------ */

static void keep_config(struct sl_worker *w, struct sl_config *c) {
  struct sl_config **grown =
      realloc(w->old_cfgs, (size_t)(w->nold_cfgs + 1) * sizeof(*grown));
  if (grown == NULL) {
    /* cannot happen in practice; leaking beats freeing what runs */
    sl_log(SL_LOG_ERROR, "out of memory keeping a replaced config", SL_END);
    return;
  }
  w->old_cfgs = grown;
  w->old_cfgs[w->nold_cfgs++] = c;
}

static void retire_output(struct sl_worker *w, struct sl_output *o,
                          uint64_t by_ns) {
  o->retiring = 1;
  o->retire_by_ns = by_ns;
  w->retiring++;
}

static void retire_input(struct sl_worker *w, struct sl_input *in,
                         uint64_t by_ns) {
  in->retiring = 1;
  in->retire_by_ns = by_ns;
  w->retiring++;
  if (in->ops && !in->stopped)
    in->ops->cb_drain(in);
}

static void on_retire_timer(uv_timer_t *t);

static void arm_retire(struct sl_worker *w) {
  if (w->retiring && w->retire_timer_open &&
      !uv_is_active((uv_handle_t *)&w->retire_timer))
    uv_timer_start(&w->retire_timer, on_retire_timer, SL_WORKER_CHECK_MS,
                   SL_WORKER_CHECK_MS);
}

/* The place in the file (1-based) of the output (input) laid out in slot
 * s, for errors: the slot differs once outputs drain beside it. */
static int out_pos(const struct plan *p, int s) {
  int j;
  for (j = 0; j < p->next_noutputs; j++)
    if (p->out_slot[j] == s)
      return j + 1;
  return s + 1;
}

static int in_pos(const struct plan *p, int s) {
  int j;
  for (j = 0; j < p->next_ninputs; j++)
    if (p->in_slot[j] == s)
      return j + 1;
  return s + 1;
}

/* Start the outputs the file adds or changes, and the inputs it adds whose
 * address is free. On failure the ones started are retired at once. */
static int start_new(struct plan *p) {
  struct sl_worker *w = p->w;
  int j, rc;
  for (j = 0; j < p->nout; j++) { /* by slot: the config is laid out */
    struct sl_output *o = &w->outputs[j];
    if (!p->out_taken[j] || output_live(o))
      continue; /* kept, or not in the new config */
    clear_output_slot(o);
    rc = sl_worker_start_output(w, p->next, j, out_pos(p, j), p->err,
                                p->errlen);
    if (rc != 0) {
      retire_output(w, o, 0);
      return rc;
    }
  }
  for (j = 0; j < p->nin; j++) {
    struct sl_input *in = &w->inputs[j];
    if (!p->in_taken[j] || input_live(in) || p->in_late[j])
      continue;
    clear_input_slot(in);
    rc = sl_worker_start_input(w, p->next, j, in_pos(p, j), p->err,
                               p->errlen);
    if (rc != 0) {
      in->retiring = in->stop_sent = 1; /* as sl_worker_init's failure */
      w->retiring++;
      if (in->ops && !in->stopped)
        in->ops->cb_stop(in);
      return rc;
    }
  }
  return 0;
}

/* Undo start_new: what started is stopped and closed by the retire timer;
 * the config it points into stays. */
static void undo(struct plan *p) {
  struct sl_worker *w = p->w;
  int s;
  for (s = 0; s < p->nout; s++) {
    struct sl_output *o = &w->outputs[s];
    if (p->out_taken[s] && !o->retiring && o->cfg &&
        o->cfg >= p->next->outputs && o->cfg < p->next->outputs + p->nout)
      retire_output(w, o, 0);
  }
  for (s = 0; s < p->nin; s++) {
    struct sl_input *in = &w->inputs[s];
    if (p->in_taken[s] && !in->retiring && in->cfg &&
        in->cfg >= p->next->inputs && in->cfg < p->next->inputs + p->nin)
      retire_input(w, in, 0);
  }
  w->ninputs = p->old_ninputs; /* w->cfg names only those */
  keep_config(w, p->next);
  p->next = NULL;
  arm_retire(w);
  free_unused_configs(w); /* at once when nothing started */
}

static void log_output_retired(const struct sl_output *o, uint64_t left,
                               int timed_out) {
  if (left && o->buf.mode != SL_BUFFER_DISK)
    sl_log(SL_LOG_ERROR, "retired output closed at shutdown_timeout with "
                         "events undelivered",
           SL_S("output", o->cfg->name), SL_U("lost_events", o->q.count),
           SL_U("kept_in_disk_buffer", sl_buffer_backlog((struct sl_buffer *)&o->buf)),
           SL_END);
  else
    sl_log(SL_LOG_INFO, timed_out && left
                            ? "retired output closed; its disk buffer keeps "
                              "the rest for an output of the same name"
                            : "retired output drained and closed",
           SL_S("output", o->cfg->name), SL_U("delivered", o->stats.events_out),
           SL_U("dead_lettered", o->stats.dead_lettered),
           SL_U("left_on_disk", left), SL_END);
}

/* One retiring output: drained (nothing queued, nothing decided before the
 * switch still held) or out of time: stop it; stopped and synced: close
 * it, the slot is free. Returns 1 once gone. */
static int retire_output_step(struct sl_worker *w, struct sl_output *o,
                              uint64_t now) {
  if (!o->closing) {
    uint64_t left = o->q.count + sl_buffer_backlog(&o->buf);
    if ((left > 0 || w->holding_old > 0) && now < o->retire_by_ns)
      return 0;
    if (o->retire_by_ns) /* 0: an undone start, nothing to tell */
      log_output_retired(o, left, now >= o->retire_by_ns);
    sl_output_stop(o);
    sl_output_close_handles(o);
    return 0;
  }
  if (!o->stopped || o->buf.syncing)
    return 0;
  o->gone = 1;
  o->retiring = 0;
  /* producers still waiting for room in it (out of time) go on without
   * it: their event is refused to them, never acked (source.c) */
  sl_queue_wake(&o->q);
  sl_output_close(o);
  output_goes_by(o, strdup(o->cfg->name), 1); /* lets its config go */
  return 1;
}

static int retire_input_step(struct sl_input *in, uint64_t now) {
  if (!in->stop_sent &&
      (in->ops == NULL || in->ops->cb_busy(in) == 0 || now >= in->retire_by_ns)) {
    in->stop_sent = 1;
    if (in->ops && !in->stopped)
      in->ops->cb_stop(in);
  }
  if (!in->stop_sent || !in->stopped)
    return 0;
  if (in->retire_by_ns)
    sl_log(SL_LOG_INFO, "retired input closed", SL_S("input", in->cfg->name),
           SL_U("events_in", in->stats.events_in), SL_END);
  in->gone = 1;
  in->retiring = 0;
  input_goes_by(in, strdup(in->cfg->name), 1); /* lets its config go */
  return 1;
}

static void on_retire_timer(uv_timer_t *t) {
  struct sl_worker *w = container_of(t, struct sl_worker, retire_timer);
  uint64_t now = sl_mono_ns();
  int s, gone = 0;
  if (w->stopping)
    return; /* the shutdown drains and closes everything */
  for (s = 0; s < w->input_slots; s++) {
    struct sl_input *in = &w->inputs[s];
    if (in->retiring && !in->gone && retire_input_step(in, now))
      w->retiring--, gone++;
  }
  for (s = 0; s < w->output_slots; s++) {
    struct sl_output *o = &w->outputs[s];
    if (o->retiring && !o->gone && retire_output_step(w, o, now))
      w->retiring--, gone++;
  }
  if (gone)
    free_unused_configs(w);
  if (w->retiring == 0)
    uv_timer_stop(t);
}

/* ---- the switch ---------------------------------------------------------- */


static void on_wake_routes(uv_timer_t *t) {
  struct sl_worker *w = container_of(t, struct sl_worker, route_timer);
  sl_queue_wake(&w->route_waitq);
}

/* Inputs on the address of one that stopped listening just now. */
static void start_late_inputs(struct plan *p, struct sl_buf *failed) {
  struct sl_worker *w = p->w;
  char why[512];
  int s;
  for (s = 0; s < p->nin; s++) {
    struct sl_input *in = &w->inputs[s];
    if (!p->in_late[s])
      continue;
    clear_input_slot(in);
    if (sl_worker_start_input(w, p->next, s, in_pos(p, s), why, sizeof(why)) ==
        0)
      continue;
    sl_log(SL_LOG_ERROR, "reloaded input cannot start", SL_S("error", why),
           SL_END);
    sl_buf_printf(failed, "%s%s", failed->len ? "; " : "", why);
    in->retiring = in->stop_sent = 1;
    w->retiring++;
    if (in->ops && !in->stopped)
      in->ops->cb_stop(in);
  }
}

/* Called by the rules between two events, just before the new set goes
 * live: everything else switches here. */
static void commit(void *data) {
  struct plan *p = data;
  struct sl_worker *w = p->w;
  uint64_t by = sl_mono_ns() + (uint64_t)p->next->shutdown_timeout_ms * 1000000u;
  struct sl_waiter *wt;
  int s;

  /* events decided until now target the old set: retiring outputs wait
   * for the ones still held */
  w->holding_old += w->holding_now;
  w->holding_now = 0;
  w->gen++;
  if (!p->routes_same) {
    /* a held event waiting for an old route's token goes on without one;
     * the same routes keep their token buckets */
    for (wt = w->route_waitq.waiters.next; wt != &w->route_waitq.waiters;
         wt = wt->next)
      container_of(wt, struct sl_source, waiter)->route_wait = -1;
    if (w->route_waitq.waiters.next != &w->route_waitq.waiters)
      uv_timer_start(&w->route_timer, on_wake_routes, 0, 0);
    free(w->route_limits);
    w->route_limits = p->limits;
    p->limits = NULL;
  }
  for (s = 0; s < w->noutputs; s++) {
    if (p->out_retire[s])
      retire_output(w, &w->outputs[s], by);
    if (!p->out_taken[s] && w->outputs[s].cfg)
      rename_output(p, &w->outputs[s], p->next);
  }
  for (s = 0; s < w->ninputs; s++)
    if (p->in_retire[s])
      retire_input(w, &w->inputs[s], by);
  for (s = 0; s < p->nin; s++)
    if (!p->in_taken[s] && w->inputs[s].cfg)
      rename_input(p, &w->inputs[s], p->next);
  if (w->owns_cfg)
    keep_config(w, (struct sl_config *)w->cfg);
  w->cfg = p->next;
  w->owns_cfg = 1;
  if (w->noutputs < p->nout)
    w->noutputs = p->nout;
  w->ninputs = p->nin;
  arm_retire(w);
}

static int plan_alloc(struct plan *p) {
  struct sl_worker *w = p->w;
  int no = p->next->noutputs + 1, ni = p->next->ninputs + 1, i;
  p->out_slot = calloc((size_t)no, sizeof(int));
  p->out_kind = calloc((size_t)no, sizeof(int));
  p->in_slot = calloc((size_t)ni, sizeof(int));
  p->in_kind = calloc((size_t)ni, sizeof(int));
  p->in_late = calloc((size_t)w->input_slots, 1);
  p->out_taken = calloc((size_t)w->output_slots, 1);
  p->out_retire = calloc((size_t)w->output_slots, 1);
  p->in_taken = calloc((size_t)w->input_slots, 1);
  p->in_retire = calloc((size_t)w->input_slots, 1);
  if (p->next->router.nroutes > 0) {
    p->limits = calloc((size_t)p->next->router.nroutes, sizeof(*p->limits));
    if (p->limits == NULL)
      return SL_ENOMEM;
    for (i = 0; i < p->next->router.nroutes; i++)
      if (p->next->router.routes[i].rate)
        sl_ratelimit_init(&p->limits[i].rl, p->next->router.routes[i].rate,
                          p->next->router.routes[i].burst, sl_mono_ns());
  }
  if (!p->out_slot || !p->out_kind || !p->in_slot || !p->in_kind ||
      !p->in_late || !p->out_taken || !p->out_retire || !p->in_taken ||
      !p->in_retire)
    return SL_ENOMEM;
  return 0;
}

static void plan_free(struct plan *p) {
  free(p->out_slot);
  free(p->out_kind);
  free(p->in_slot);
  free(p->in_kind);
  free(p->in_late);
  free(p->out_taken);
  free(p->out_retire);
  free(p->in_taken);
  free(p->in_retire);
  free(p->limits);
  sl_buf_close(&p->ins);
  sl_buf_close(&p->outs);
  sl_config_free(p->next); /* NULL once the worker owns it */
}

/* Load, check and lay out the file; start what it adds. */
static int prepare(struct plan *p) {
  struct sl_worker *w = p->w;
  struct sl_buf eb;
  int rc;
  sl_buf_init(&eb);
  p->next = sl_config_load(w->cfg->path, sl_plugins, &eb);
  if (p->next == NULL) {
    while (eb.len && eb.data[eb.len - 1] == '\n')
      eb.len--;
    snprintf(p->err, p->errlen, "%.*s", (int)eb.len,
             eb.data ? (const char *)eb.data : "cannot load the config");
    sl_buf_close(&eb);
    return SL_EINVAL;
  }
  sl_buf_close(&eb);
  /* workers = "auto" is read again by the load: once the process may use
   * other CPUs than at its start (taskset, a CPU limit resized in place)
   * it gives another count, and the unchanged file would have every
   * reload refused as a workers change. The running count stays; a
   * restart takes the new one. */
  if (w->cfg->workers_auto && p->next->workers_auto &&
      p->next->workers != w->cfg->workers) {
    sl_log(SL_LOG_WARN, "workers = \"auto\" gives another count now; the "
                        "running one stays until a restart",
           SL_I("workers", w->cfg->workers),
           SL_I("auto_now", p->next->workers),
           SL_I("cpus_allowed", p->next->cpus.allowed),
           SL_D("cpu_quota", p->next->cpus.quota), SL_END);
    p->next->workers = w->cfg->workers;
  }
  if (sl_config_restart_diff(w->cfg, p->next, &eb) > 0) {
    snprintf(p->err, p->errlen,
             "reload refused: these settings need a restart: %.*s",
             (int)eb.len, (const char *)eb.data);
    sl_buf_close(&eb);
    return SL_EINVAL;
  }
  if (sl_schemas_reload_check(w->cfg, p->next, p->err, p->errlen) != 0)
    return SL_EINVAL;
  p->next_noutputs = p->next->noutputs;
  p->next_ninputs = p->next->ninputs;
  if ((rc = plan_alloc(p)) != 0 || (rc = plan_outputs(p)) != 0 ||
      (rc = plan_inputs(p)) != 0 || (rc = check_late_inputs(p)) != 0 ||
      (rc = layout_outputs(p)) != 0 ||
      (rc = layout_inputs(p)) != 0) {
    if (rc == SL_ENOMEM)
      snprintf(p->err, p->errlen, "out of memory");
    return rc;
  }
  p->old_ninputs = w->ninputs;
  if ((rc = start_new(p)) != 0)
    undo(p);
  return rc;
}

int sl_worker_reload(struct sl_worker *w, const char *trigger, char *err,
                     size_t errlen) {
  struct plan p;
  struct sl_buf failed;
  uint64_t t0 = sl_mono_ns();
  int rc;

  memset(&p, 0, sizeof(p));
  p.w = w;
  p.trigger = trigger;
  p.number = w->gen + 1;
  p.err = err;
  p.errlen = errlen;
  err[0] = '\0';
  sl_buf_init(&p.ins);
  sl_buf_init(&p.outs);
  sl_buf_init(&failed);
  if (w->stopping) {
    snprintf(err, errlen, "stopping: no reload");
    return SL_EINVAL;
  }
  if ((rc = prepare(&p)) != 0) {
    sl_rules_reload_failed(w->rules, err);
    goto fail;
  }
  p.routes_same = sl_config_routes_same(w->cfg, p.next);
  rc = w->workers ? sl_workers_reload(w, p.next, trigger, commit, &p, err,
                                      errlen)
                  : sl_rules_reload_with(w->rules, p.next, trigger, commit, &p);
  if (rc != 0) { /* the rules logged and recorded why */
    if (err[0] == '\0')
      snprintf(err, errlen, "the rules did not load: see last_reload.error");
    undo(&p);
    goto fail;
  }
  start_late_inputs(&p, &failed);
  p.next = NULL; /* the worker's now */
  free_unused_configs(w);
  sl_buf_putc(&p.ins, '\0');
  sl_buf_putc(&p.outs, '\0');
  sl_buf_putc(&failed, '\0');
  {
    char changes[2048];
    snprintf(changes, sizeof(changes),
             "inputs%s; outputs%s; routes %s; rules version %llu",
             p.ins.len > 1 ? (const char *)p.ins.data : " unchanged",
             p.outs.len > 1 ? (const char *)p.outs.data : " unchanged",
             p.routes_same ? "unchanged" : "changed",
             (unsigned long long)sl_rules_stats(w->rules)->version);
    sl_log(failed.len > 1 ? SL_LOG_WARN : SL_LOG_INFO, "config reloaded",
           SL_S("trigger", trigger), SL_S("changes", changes),
           SL_S("inputs_not_started", (const char *)failed.data),
           /* replaced configs that something still runs from */
           SL_I("configs_held", w->nold_cfgs),
           SL_U("ms", (sl_mono_ns() - t0) / 1000000u), SL_END);
  }
  sl_buf_close(&failed);
  plan_free(&p);
  return 0;

fail:
  sl_log(SL_LOG_ERROR, "config reload rejected; the running config stays",
         SL_S("trigger", trigger), SL_S("error", err), SL_END);
  sl_buf_close(&failed);
  plan_free(&p);
  return rc ? rc : SL_EINVAL;
}
