/* schemas.c - payload contracts at the edge (see schemas.h). The contracts
 * and their compiled schemas live in the config (config/schemas.c), so a
 * reload swaps them with the config, all or nothing; this file keeps what
 * must outlive a reload: the counters (by contract glob and version, so
 * sluice_schema_events_total keeps counting across reloads) and the log
 * limiter. The contract label is the topics glob, not the event's topic:
 * topics are unbounded (one per customer, per host), globs are a handful
 * from the config, so the series stay few. */
#include "schemas.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "log.h"
#include "rules.h"
#include "worker.h"

struct counter {
  struct counter *next;
  char *contract;   /* the topics glob; an output's name for outputs */
  char version[16]; /* as written; "unknown" for an unknown version */
  uint64_t n[4];    /* by enum sl_schema_result (NONE unused) */
};

struct sl_schemas {
  struct sl_worker *w;
  const struct sl_config *built; /* the config idx was built for */
  struct counter ***idx; /* [contract][version], [nversions]: unknown */
  int nidx;
  struct counter *all, *outputs;
  int any_output; /* an output of built has a schema */
  struct sl_log_limiter log;
  char why[640]; /* the last misfit, for the tap (r->reason, r->schema) */
};

static const struct sl_metric m_events = {
    "sluice_schema_events_total",
    "Events checked against a payload contract, by contract (topics glob), "
    "version and result (valid, invalid, warned).",
    SL_METRIC_COUNTER,
    {"contract", "version", "result", NULL}};

static const struct sl_metric m_output = {
    "sluice_schema_output_rejected_total",
    "Events an output's schema refused (sent to the dead letter instead).",
    SL_METRIC_COUNTER,
    {"output", NULL}};

static void collect(struct sl_metric_out *out, const struct sl_metric *m,
                    void *data) {
  static const char *const names[] = {"", "valid", "invalid", "warned"};
  struct sl_schemas *s = data;
  const struct counter *c;
  int r;
  if (m == &m_output) {
    for (c = s->outputs; c; c = c->next) {
      const char *v[] = {c->contract};
      sl_metric_put_u64(out, v, c->n[SL_SCHEMA_INVALID]);
    }
    return;
  }
  for (c = s->all; c; c = c->next)
    for (r = SL_SCHEMA_VALID; r <= SL_SCHEMA_WARNED; r++) {
      const char *v[] = {c->contract, c->version, names[r]};
      sl_metric_put_u64(out, v, c->n[r]);
    }
}

/* The counter of (contract, version), made on first use. */
static struct counter *counter_of(struct counter **list, const char *contract,
                                  const char *version) {
  struct counter *c, **tail = list;
  for (c = *list; c; tail = &c->next, c = c->next)
    if (strcmp(c->contract, contract) == 0 &&
        strcmp(c->version, version) == 0)
      return c;
  if ((c = calloc(1, sizeof(*c))) == NULL ||
      (c->contract = strdup(contract)) == NULL) {
    free(c);
    return NULL;
  }
  snprintf(c->version, sizeof(c->version), "%s", version);
  *tail = c; /* in config order: the exposition reads like the config */
  return c;
}

static void free_idx(struct sl_schemas *s) {
  int i;
  for (i = 0; i < s->nidx; i++)
    free(s->idx[i]);
  free(s->idx);
  s->idx = NULL;
  s->nidx = 0;
  s->built = NULL;
}

/* (Re)build the counters' index for w's live config (after a reload). */
static int build(struct sl_schemas *s) {
  const struct sl_config *cfg = s->w->cfg;
  int i, j;
  free_idx(s);
  s->any_output = 0;
  for (i = 0; i < cfg->noutputs; i++) /* their series show from the start */
    if (cfg->outputs[i].schema) {
      s->any_output = 1;
      if (counter_of(&s->outputs, cfg->outputs[i].name, "") == NULL)
        return SL_ENOMEM;
    }
  if (cfg->nschemas == 0) {
    s->built = cfg;
    return 0;
  }
  if ((s->idx = calloc((size_t)cfg->nschemas, sizeof(*s->idx))) == NULL)
    return SL_ENOMEM;
  s->nidx = cfg->nschemas;
  for (i = 0; i < cfg->nschemas; i++) {
    const struct sl_schema_contract *k = &cfg->schemas[i];
    s->idx[i] = calloc((size_t)k->nversions + 1, sizeof(**s->idx));
    if (s->idx[i] == NULL)
      return SL_ENOMEM;
    for (j = 0; j <= k->nversions; j++) {
      s->idx[i][j] = counter_of(&s->all, k->topics,
                                j < k->nversions ? k->versions[j].version
                                                 : "unknown");
      if (s->idx[i][j] == NULL)
        return SL_ENOMEM;
    }
  }
  s->built = cfg;
  return 0;
}

int sl_schemas_init(struct sl_worker *w) {
  struct sl_schemas *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return SL_ENOMEM;
  s->w = w;
  w->schemas = s;
  sl_log_limiter_init(&s->log, 10000, 20);
  if (build(s) != 0 || sl_metric_add(w->metrics, &m_events, collect, s) != 0 ||
      sl_metric_add(w->metrics, &m_output, collect, s) != 0)
    return SL_ENOMEM;
  return 0;
}

static void free_list(struct counter *c) {
  while (c) {
    struct counter *n = c->next;
    free(c->contract);
    free(c);
    c = n;
  }
}

void sl_schemas_free(struct sl_worker *w) {
  struct sl_schemas *s = w->schemas;
  if (s == NULL)
    return;
  sl_metric_remove(w->metrics, s);
  free_idx(s);
  free_list(s->all);
  free_list(s->outputs);
  free(s);
  w->schemas = NULL;
}

enum sl_schema_result sl_schemas_verdict(const struct sl_config *cfg,
                                         struct sl_str topic,
                                         const uint8_t *headers, size_t hlen,
                                         const uint8_t *payload, size_t plen,
                                         struct sl_schema_verdict *v,
                                         int *index) {
  static const uint8_t nil = 0xc0;
  const struct sl_schema_contract *k;
  int i;

  v->result = SL_SCHEMA_NONE;
  v->contract = NULL;
  v->version = -1;
  k = sl_config_schema_find(cfg, topic.p, topic.len, &i);
  if (k == NULL)
    return SL_SCHEMA_NONE;
  if (index)
    *index = i;
  v->contract = k;
  if (payload == NULL || plen == 0) {
    payload = &nil; /* no payload: checked as null */
    plen = 1;
  }
  v->version = sl_config_schema_version(k, headers, hlen, payload, plen,
                                       &v->e);
  if (v->version >= 0 &&
      sl_schema_check(k->versions[v->version].schema, payload, plen, &v->e) ==
          0)
    v->result = SL_SCHEMA_VALID;
  else
    v->result = k->mode == SL_SCHEMA_WARN ? SL_SCHEMA_WARNED
                                          : SL_SCHEMA_INVALID;
  return v->result;
}

enum sl_schema_result sl_schemas_check(struct sl_worker *w, struct sl_str topic,
                                       const uint8_t *headers, size_t hlen,
                                       const uint8_t *payload, size_t plen,
                                       int count, struct sl_schema_verdict *v) {
  const struct sl_config *cfg = w->cfg;
  struct sl_schemas *s = w->schemas;
  int i = 0;

  if (sl_schemas_verdict(cfg, topic, headers, hlen, payload, plen, v, &i) ==
      SL_SCHEMA_NONE)
    return SL_SCHEMA_NONE;
  if (count && s && (s->built == cfg || build(s) == 0)) {
    struct counter *c = s->idx[i][v->version >= 0 ? v->version
                                                  : v->contract->nversions];
    c->n[v->result]++;
  }
  return v->result;
}

/* Append the string s to out (cap bytes, *at used), cut at the end and
 * kept NUL-terminated. */
static void put_str(char *out, size_t cap, size_t *at, const char *s) {
  size_t n = strlen(s);
  if (*at + 1 >= cap)
    return;
  if (n > cap - 1 - *at)
    n = cap - 1 - *at;
  memcpy(out + *at, s, n);
  *at += n;
  out[*at] = '\0';
}

void sl_schemas_describe(const struct sl_schema_verdict *v, char *out,
                         size_t n) {
  /* by hand, not snprintf: every misfit pays for this line (the
   * sluice-error header), and glibc's snprintf cost more than the check
   * that found it */
  const struct sl_schema_contract *k = v->contract;
  size_t at = 0;
  if (n == 0)
    return;
  out[0] = '\0';
  put_str(out, n, &at, "contract ");
  put_str(out, n, &at, k ? k->topics : "?");
  put_str(out, n, &at, " version ");
  put_str(out, n, &at, k && v->version >= 0 ? k->versions[v->version].version
                                            : "unknown");
  put_str(out, n, &at, ": ");
  put_str(out, n, &at, v->e.path[0] ? v->e.path : "/");
  put_str(out, n, &at, ": expected ");
  put_str(out, n, &at, v->e.msg);
}

enum sl_schema_result sl_schemas_event(struct sl_worker *w,
                                       struct sl_event *ev,
                                       struct sl_schema_verdict *v) {
  struct sl_schemas *s = w->schemas;
  enum sl_schema_result r = sl_schemas_check(
      w, sl_event_topic(ev), ev->headers_len ? ev->data + ev->headers_off : NULL,
      ev->headers_len, ev->payload_len ? ev->data + ev->payload_off : NULL,
      ev->payload_len, 1, v);
  uint64_t suppressed;
  char why[600];
  if (v->version >= 0)
    ev->schema_version = v->contract->versions[v->version].code;
  if ((r == SL_SCHEMA_INVALID || r == SL_SCHEMA_WARNED) && s &&
      sl_log_allow(&s->log, &suppressed)) {
    struct sl_str id = sl_event_id(ev), topic = sl_event_topic(ev);
    sl_schemas_describe(v, why, sizeof(why));
    sl_log(SL_LOG_WARN,
           r == SL_SCHEMA_INVALID
               ? "event does not fit its schema; sent to the dead letter"
               : "event does not fit its schema (warn mode); passed on",
           SL_S("error", why), SL_N("topic", topic.p, topic.len),
           SL_N("event_id", id.p, id.len), SL_U("suppressed", suppressed),
           SL_END);
  }
  return r;
}

int sl_schemas_misfit(const struct sl_config *cfg, int i,
                      const struct sl_event *ev, char *why, size_t n) {
  static const uint8_t nil = 0xc0;
  const struct sl_schema *schema;
  struct sl_schema_error e;

  if (i < 0 || i >= cfg->noutputs || (schema = cfg->outputs[i].schema) == NULL)
    return 0;
  if (sl_schema_check(schema, ev->payload_len ? ev->data + ev->payload_off
                                              : &nil,
                      ev->payload_len ? ev->payload_len : 1, &e) == 0)
    return 0;
  snprintf(why, n, "output %s schema: %s: expected %s", cfg->outputs[i].name,
           e.path[0] ? e.path : "/", e.msg);
  return 1;
}

/* A target i that ev does not fit (why): counted and logged. */
static void count_misfit(void *data, int i, const struct sl_event *ev,
                         const char *why) {
  struct sl_worker *w = data;
  struct counter *c;
  uint64_t suppressed;

  if (w->schemas &&
      (c = counter_of(&w->schemas->outputs, w->cfg->outputs[i].name, "")))
    c->n[SL_SCHEMA_INVALID]++;
  if (w->schemas && sl_log_allow(&w->schemas->log, &suppressed)) {
    struct sl_str id = sl_event_id(ev);
    sl_log(SL_LOG_WARN, "event does not fit its output's schema; sent to "
           "the dead letter", SL_S("error", why),
           SL_N("event_id", id.p, id.len), SL_U("suppressed", suppressed),
           SL_END);
  }
}

int sl_schemas_output_fits(struct sl_worker *w, int i,
                           const struct sl_event *ev, char *why, size_t n) {
  if (!sl_schemas_misfit(w->cfg, i, ev, why, n))
    return 1;
  count_misfit(w, i, ev, why);
  return 0;
}

const char *sl_schemas_keep_fitting(const struct sl_config *cfg,
                                    struct sl_rules_result *r, char *why,
                                    size_t n, sl_schemas_misfit_fn seen,
                                    void *data) {
  const char *name = NULL;
  int i, kept = 0;

  for (i = 0; i < r->ntargets; i++) {
    int t = r->targets[i];
    if (t == cfg->dead_letter || !sl_schemas_misfit(cfg, t, r->event, why, n)) {
      r->targets[kept++] = (uint16_t)t;
      continue;
    }
    name = cfg->outputs[t].name;
    if (seen)
      seen(data, t, r->event, why);
  }
  r->ntargets = kept;
  return name;
}

struct sl_event *sl_schemas_emit_to(const struct sl_config *cfg, int *output,
                                    struct sl_event *ev, char *why, size_t n,
                                    sl_schemas_misfit_fn seen, void *data) {
  struct sl_event *dl = NULL;
  int o = *output;

  /* a rule-made event reaches the consumer like a routed one: it must
   * fit too (the dead letter itself is never checked: nowhere to go) */
  if (o == cfg->dead_letter || !sl_schemas_misfit(cfg, o, ev, why, n))
    return ev;
  if (seen)
    seen(data, o, ev, why);
  if (cfg->dead_letter >= 0)
    dl = sl_schemas_dead_letter_copy(ev, why, cfg->outputs[o].name);
  *output = cfg->dead_letter;
  if (dl == NULL && cfg->dead_letter >= 0)
    return ev; /* no memory for the reason: it goes as it came */
  sl_event_unref(ev);
  return dl;
}

int sl_schemas_refuse(const struct sl_config *cfg, struct sl_rules_result *r,
                      struct sl_event *ev, const char *why,
                      const char *output) {
  struct sl_event *dl = cfg->dead_letter >= 0
      ? sl_schemas_dead_letter_copy(ev, why, output) : NULL;

  r->outcome = SL_RULES_FAILED;
  r->reason = why;
  r->ntargets = 0;
  r->event = ev;
  if (cfg->dead_letter < 0)
    return 1; /* nowhere to put it: the engine drops it, counted */
  if (dl != NULL) { /* else no memory for the reason: the event goes as
                       it came, never dropped for that */
    sl_event_unref(ev);
    r->event = dl;
  }
  r->ntargets = 1;
  r->targets[0] = (uint16_t)cfg->dead_letter;
  return 0;
}

struct breaks {
  char *out;
  size_t n, off;
  int nbreaking;
};

static void note_break(void *data, int breaking, const char *path,
                       const char *what) {
  struct breaks *b = data;
  if (!breaking || b->off >= b->n)
    return;
  b->off += (size_t)snprintf(b->out + b->off, b->n - b->off, "%s%s%s%s",
                             b->nbreaking++ ? "; " : "", what,
                             path[0] ? " at " : "", path);
}

int sl_schemas_reload_check(const struct sl_config *cur,
                            const struct sl_config *next, char *err,
                            size_t errlen) {
  int i, j, a, b;
  for (i = 0; i < next->nschemas; i++)
    for (j = 0; j < cur->nschemas; j++) {
      const struct sl_schema_contract *n = &next->schemas[i],
                                      *o = &cur->schemas[j];
      if (strcmp(n->topics, o->topics) != 0)
        continue;
      for (a = 0; a < n->nversions; a++)
        for (b = 0; b < o->nversions; b++) {
          char what[300];
          struct breaks br = {what, sizeof(what), 0, 0};
          if (sl_config_version_order(n->versions[a].code) !=
              sl_config_version_order(o->versions[b].code))
            continue;
          what[0] = '\0';
          if (sl_schema_compare(o->versions[b].schema, n->versions[a].schema,
                                note_break, &br) > 0) {
            snprintf(err, errlen,
                     "reload refused: schema %s version %s (%s) changed in "
                     "a way that breaks its readers: %s; a breaking change "
                     "needs a new version",
                     n->topics, n->versions[a].version, n->versions[a].file,
                     what);
            return SL_EINVAL;
          }
        }
    }
  return 0;
}

struct sl_event *sl_schemas_dead_letter_copy(struct sl_event *ev, const char *why,
                                         const char *output) {
  struct sl_event *a = sl_event_with_header(ev, "sluice-error", why,
                                            strlen(why));
  struct sl_event *b = a;
  if (a && output) {
    b = sl_event_with_header(a, "sluice-output", output, strlen(output));
    sl_event_unref(a);
  }
  return b;
}

int sl_schemas_ingest(struct sl_worker *w, struct sl_event *ev,
                      struct sl_rules_result *r) {
  struct sl_schemas *s = w->schemas;
  struct sl_schema_verdict v;
  enum sl_schema_result res;

  r->schema = NULL;
  if (w->cfg->nschemas == 0 || s == NULL)
    return 0;
  res = sl_schemas_event(w, ev, &v);
  if (res == SL_SCHEMA_VALID || res == SL_SCHEMA_NONE)
    return 0;
  sl_schemas_describe(&v, s->why, sizeof(s->why));
  if (res == SL_SCHEMA_WARNED) {
    r->schema = s->why;
    return 0;
  }
  r->route = -1;
  r->rule = NULL;
  r->schema = s->why;
  sl_schemas_refuse(w->cfg, r, ev, s->why, NULL);
  return 1;
}

void sl_schemas_outputs(struct sl_worker *w, struct sl_rules_result *r) {
  const struct sl_config *cfg = w->cfg;
  struct sl_schemas *s = w->schemas;
  struct sl_event *dl;
  const char *name;
  int dead = cfg->dead_letter;

  if (s == NULL || (s->built != cfg && build(s) != 0) || !s->any_output)
    return;
  name = sl_schemas_keep_fitting(cfg, r, s->why, sizeof(s->why),
                                 count_misfit, w);
  if (name == NULL)
    return;
  r->schema = s->why;
  if (dead < 0)
    return; /* counted; nowhere to put it */
  if (r->ntargets == 0) {
    /* the usual case, one output: the copy is the decision, and waits
     * for room in the dead letter like any event (no memory for the
     * copy: failed with no target, as at ingest) */
    sl_schemas_refuse(cfg, r, r->event, s->why, name);
    return;
  }
  /* other targets take the event: the copy goes in beside it, or is
   * dropped (counted by the queue) when the dead letter is full */
  dl = sl_schemas_dead_letter_copy(r->event, s->why, name);
  if (dl == NULL) { /* no memory for the reason: it goes as it came */
    dl = r->event;
    sl_event_ref(dl);
  }
  if (!w->outputs[dead].stopped)
    sl_output_push(&w->outputs[dead], dl);
  sl_event_unref(dl);
}

struct sl_event *sl_schemas_emitted(struct sl_worker *w, int *output,
                                    struct sl_event *ev) {
  struct sl_schemas *s = w->schemas;

  if (s == NULL || *output >= w->cfg->noutputs)
    return ev;
  return sl_schemas_emit_to(w->cfg, output, ev, s->why, sizeof(s->why),
                            count_misfit, w);
}
