/* diff.c - comparing two loaded configs, key by key, for a whole-config
 * reload (worker/reload.c): which inputs and outputs changed, whether the
 * routes did, and which settings only a restart can change. Values are
 * compared as loaded (resolved paths, defaults filled in), so a key written
 * differently but meaning the same is no change. */
#include <string.h>

#include "config.h"

static int str_same(const char *a, const char *b) {
  if (a == NULL || b == NULL)
    return a == b;
  return strcmp(a, b) == 0;
}

static int strlist_same(char **a, int na, char **b, int nb) {
  int i;
  if (na != nb)
    return 0;
  for (i = 0; i < na; i++)
    if (!str_same(a[i], b[i]))
      return 0;
  return 1;
}

static int tls_same(const struct sl_tls_config *a,
                    const struct sl_tls_config *b) {
  return a->enabled == b->enabled && str_same(a->cert_file, b->cert_file) &&
         str_same(a->key_file, b->key_file) && str_same(a->ca_file, b->ca_file) &&
         str_same(a->client_ca_file, b->client_ca_file) &&
         str_same(a->server_name, b->server_name) &&
         str_same(a->ciphers, b->ciphers) && a->verify_peer == b->verify_peer &&
         a->min_version == b->min_version &&
         a->handshake_timeout_ms == b->handshake_timeout_ms &&
         strlist_same(a->allow_subjects, a->nallow, b->allow_subjects, b->nallow);
}

/* A plugin's keys without a field. Both lists come from the same plugin's
 * key table (same type) in table order. */
/* An SL_KEY_ARGV value: strings one after another, ended by an empty one
 * (a double NUL). */
static int argv_same(const char *a, const char *b) {
  if (a == NULL || b == NULL)
    return a == b;
  for (;;) {
    size_t n = strlen(a);
    if (strcmp(a, b) != 0)
      return 0;
    if (n == 0)
      return 1;
    a += n + 1;
    b += n + 1;
  }
}

static int values_same(const struct sl_config_value *a, int na,
                       const struct sl_config_value *b, int nb) {
  int i;
  if (na != nb)
    return 0;
  for (i = 0; i < na; i++) {
    int str = a[i].key && a[i].key->type == SL_KEY_ARGV
                  ? argv_same(a[i].str, b[i].str)
                  : str_same(a[i].str, b[i].str);
    if (a[i].key != b[i].key || !str || a[i].num != b[i].num ||
        a[i].flag != b[i].flag)
      return 0;
  }
  return 1;
}

int sl_config_input_same(const struct sl_input_config *a,
                         const struct sl_input_config *b) {
  return !a->retired && !b->retired && str_same(a->name, b->name) &&
         str_same(a->type, b->type) && str_same(a->listen, b->listen) &&
         str_same(a->topic, b->topic) &&
         str_same(a->bearer_token_file, b->bearer_token_file) &&
         a->max_body_bytes == b->max_body_bytes &&
         a->idle_timeout_ms == b->idle_timeout_ms &&
         a->max_connections == b->max_connections &&
         a->event_timeout_ms == b->event_timeout_ms &&
         a->max_pending_bytes == b->max_pending_bytes &&
         a->header_timeout_ms == b->header_timeout_ms &&
         a->body_timeout_ms == b->body_timeout_ms &&
         tls_same(&a->tls, &b->tls) &&
         values_same(a->values, a->nvalues, b->values, b->nvalues);
}

static int queue_buffer_same(const struct sl_output_config *a,
                             const struct sl_output_config *b) {
  const struct sl_output_buffer_config *x = &a->buffer, *y = &b->buffer;
  return a->queue.max_events == b->queue.max_events &&
         a->queue.max_bytes == b->queue.max_bytes &&
         a->queue.when_full == b->queue.when_full && x->disk == y->disk &&
         str_same(x->path, y->path) && x->max_bytes == y->max_bytes &&
         x->fsync == y->fsync && x->fsync_interval_ms == y->fsync_interval_ms;
}

static int delivery_same(const struct sl_output_config *a,
                         const struct sl_output_config *b) {
  return a->retry.initial_ms == b->retry.initial_ms &&
         a->retry.max_ms == b->retry.max_ms &&
         a->retry.max_attempts == b->retry.max_attempts &&
         a->retry.max_elapsed_ms == b->retry.max_elapsed_ms &&
         a->retry.timeout_ms == b->retry.timeout_ms &&
         a->breaker.failures == b->breaker.failures &&
         a->breaker.open_ms == b->breaker.open_ms &&
         a->rate_limit.events_per_second == b->rate_limit.events_per_second &&
         a->rate_limit.burst == b->rate_limit.burst &&
         a->dedup.window_ms == b->dedup.window_ms &&
         a->dedup.max_ids == b->dedup.max_ids;
}

int sl_config_output_same(const struct sl_output_config *a,
                          const struct sl_output_config *b) {
  return !a->retired && !b->retired && str_same(a->name, b->name) &&
         str_same(a->type, b->type) && str_same(a->path, b->path) &&
         str_same(a->address, b->address) && str_same(a->format, b->format) &&
         a->batch_events == b->batch_events && a->ack == b->ack &&
         a->fsync == b->fsync && queue_buffer_same(a, b) &&
         delivery_same(a, b) && tls_same(&a->tls, &b->tls) &&
         values_same(a->values, a->nvalues, b->values, b->nvalues);
}

static const char *output_name(const struct sl_config *c, int i) {
  return i >= 0 && i < c->noutputs ? c->outputs[i].name : NULL;
}

int sl_config_routes_same(const struct sl_config *a, const struct sl_config *b) {
  int i, j;
  if (a->router.nroutes != b->router.nroutes ||
      !str_same(output_name(a, a->dead_letter), output_name(b, b->dead_letter)) ||
      !str_same(output_name(a, a->unrouted - 1),
                output_name(b, b->unrouted - 1)))
    return 0;
  for (i = 0; i < a->router.nroutes; i++) {
    const struct sl_route *x = &a->router.routes[i], *y = &b->router.routes[i];
    if (x->ntopics != y->ntopics || x->nto != y->nto || x->rate != y->rate ||
        x->burst != y->burst)
      return 0;
    for (j = 0; j < x->ntopics; j++)
      if (!str_same(x->topics[j], y->topics[j]))
        return 0;
    for (j = 0; j < x->nto; j++)
      if (!str_same(output_name(a, x->to[j]), output_name(b, y->to[j])))
        return 0;
  }
  return 1;
}


/* Restart-only: the admin server (bound once, beside the worker), where
 * the pid goes, the rules folder, its watcher and the sandboxes' limits
 * (set when a sandbox is made), the engine-wide event size (inputs' and
 * buffers' limits are sized from it) and the log level (a command-line
 * flag may override it). */
int sl_config_restart_diff(const struct sl_config *a, const struct sl_config *b,
                           struct sl_buf *out) {
  int n = 0;
#define DIFF(cond, name)                                       \
  do {                                                         \
    if (!(cond)) {                                             \
      sl_buf_printf(out, "%s%s", n++ ? ", " : "", name);       \
    }                                                          \
  } while (0)
  DIFF(str_same(a->admin.listen, b->admin.listen), "admin.listen");
  DIFF(str_same(a->admin.bearer_token_file, b->admin.bearer_token_file),
       "admin.bearer_token_file");
  DIFF(strlist_same(a->admin.redact_headers, a->admin.nredact,
                    b->admin.redact_headers, b->admin.nredact),
       "admin.redact_headers");
  DIFF(a->admin.max_connections == b->admin.max_connections,
       "admin.max_connections");
  DIFF(tls_same(&a->admin.tls, &b->admin.tls), "admin.tls");
  DIFF(str_same(a->pid_file, b->pid_file), "pid_file");
  DIFF(str_same(a->state_dir, b->state_dir), "state_dir");
  DIFF(str_same(a->rules.dir, b->rules.dir), "rules.dir");
  DIFF(a->rules.watch == b->rules.watch, "rules.watch");
  DIFF(a->rules.cpu_budget_ms == b->rules.cpu_budget_ms, "rules.cpu_budget_ms");
  DIFF(a->rules.memory_mb == b->rules.memory_mb, "rules.memory_mb");
  DIFF(a->rules.jit == b->rules.jit, "rules.jit");
  DIFF(a->rules.persist == b->rules.persist, "rules.persist");
  DIFF(a->rules.persist_interval_s == b->rules.persist_interval_s,
       "rules.persist_interval_s");
  DIFF(a->max_event_bytes == b->max_event_bytes, "max_event_bytes");
  if (a->workers != b->workers)
    sl_buf_printf(out, "%sworkers (%d -> %d)", n++ ? ", " : "", a->workers,
                  b->workers);
  DIFF(a->workers_balance == b->workers_balance, "workers_balance");
  DIFF(a->log_level == b->log_level, "log_level");
#undef DIFF
  return n;
}
