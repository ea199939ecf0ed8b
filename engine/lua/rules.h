/* rules.h - the live rule set of a worker, and its hot reload.
 * The rule set is every *.lua file (not *_spec.lua) of rules.dir, each in
 * its own sandbox, run in lexical order. A reload builds a complete new set
 * beside the live one and swaps it in between two events only when every
 * file loaded; otherwise the live set stays and the error is kept for the
 * status output. A reload has no side effects until it commits: a file
 * whose content (and modules) did not change keeps its live rule, not run
 * again; what new versions emit or log while loading is delivered only on
 * commit. A failing snapshot() costs only that rule its state. Owns the
 * sets, the directory watcher and the rule timers. */
#ifndef SL_RULES_H
#define SL_RULES_H

#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "config.h"
#include "event.h"
#include "histogram.h"
#include "metric.h"

struct sl_rules;

enum sl_rules_outcome {
  SL_RULES_ROUTED = 0, /* by a rule or by the config's routes */
  SL_RULES_UNROUTED,   /* no rule decided and no route matched */
  SL_RULES_DROPPED,    /* a rule dropped it; reason says why */
  SL_RULES_FAILED      /* a rule failed: the dead letter is the target */
};

struct sl_rules_result {
  struct sl_event *event; /* the event to queue (the caller's reference) */
  int ntargets;
  uint16_t targets[SL_CONFIG_MAX_OUTPUTS];
  enum sl_rules_outcome outcome;
  int route;          /* index of the deciding config route, or -1 */
  const char *rule;   /* the deciding rule's file, or NULL (config) */
  const char *reason; /* drop reason or error; valid until the next call */
  const char *schema; /* set by the worker: why the event did not fit its
                         payload contract (warn mode), or NULL */
};

/* What the rule set needs from its owner. */
struct sl_rules_owner {
  void *data;
  /* sluice.emit: ev (the owner takes the reference) for output index. */
  void (*emit)(void *data, int output, struct sl_event *ev);
};

/* Load cfg's rules dir (if any). With a loop, also watch the dir (unless
 * rules.watch is false) and run sluice.every timers; without one (offline
 * use: sluice route) neither. g makes ids for emitted events. On error NULL
 * is returned and err holds "path:line: message". */
struct sl_rules *sl_rules_new(const struct sl_config *cfg, uv_loop_t *loop,
                              struct sl_idgen *g,
                              const struct sl_rules_owner *owner, char *err,
                              size_t errlen);

/* Decide where ev goes: the first matching rule that routes or drops
 * decides, else the config's routes. Takes the reference to ev; r->event
 * gets a reference (the same event, a changed one, or a dead letter). */
void sl_rules_decide(struct sl_rules *rs, struct sl_event *ev,
                     struct sl_rules_result *r);

/* Rebuild the set from the files now (SIGHUP, admin, watcher). Returns 0
 * when the new set is live (or nothing changed), a negative code when the
 * old one stays. trigger names the cause in the log; "watch" skips the
 * reload when no file changed, other triggers make a new version even
 * then (unchanged rules carry on as they are). */
int sl_rules_reload(struct sl_rules *rs, const char *trigger);

/* The same as part of a whole-config reload: the next set is built against
 * cfg (which must outlive the set; NULL: the live config) and, when it
 * loads, commit(data) runs just before it goes live, after which the set
 * decides with cfg. When it does not load, the live set and config stay
 * and commit is not called. */
int sl_rules_reload_with(struct sl_rules *rs, const struct sl_config *cfg,
                         const char *trigger, void (*commit)(void *data),
                         void *data);

/* Record a reload that failed before the rules were built (a bad config):
 * the status's last_reload says failed with error. */
void sl_rules_reload_failed(struct sl_rules *rs, const char *error);

/* The status as JSON: the set's version, per rule file, hash, version and
 * loaded-at time, and the last reload's result and error. */
int sl_rules_status_json(const struct sl_rules *rs, struct sl_buf *out);

/* Add the rule set's metrics to r (calls, errors, durations, timer
 * errors per rule file; reloads, version; drops, emits and dead letters;
 * the rules' own sluice.counter series as sluice_rule_value_total);
 * sl_rules_free removes them. 0 or SL_ENOMEM. */
int sl_rules_metrics(struct sl_rules *rs, struct sl_metric_registry *r);

/* Write the status JSON to path now and after every reload (for
 * `sluice status`); NULL stops it. The path is copied. */
void sl_rules_set_status_file(struct sl_rules *rs, const char *path);

/* rules.persist: give each live rule with restore() the state its
 * snapshot() left in dir (<rule file>.state; a corrupt file is logged,
 * moved aside and skipped), then write every rule's snapshot() there every
 * interval_s and at shutdown. dir is made when missing. 0 or a negative
 * errno. */
int sl_rules_persist(struct sl_rules *rs, const char *dir,
                     uint32_t interval_s);

/* The engine is stopping and no more events come: run each live rule's
 * on_stop() (its emits still reach the outputs), then write the states
 * (rules.persist). Once; sl_rules_stop does the state part if this never
 * ran. */
void sl_rules_shutdown(struct sl_rules *rs);

/* Close the watcher and timers (part of the worker's stop). */
void sl_rules_stop(struct sl_rules *rs);
void sl_rules_free(struct sl_rules *rs);

/* Counters for metrics and the worker's logs. */
struct sl_rules_stats {
  uint64_t dropped, dead_lettered, unrouted, emitted, emit_failed;
  uint64_t reloads_ok, reloads_failed;
  uint64_t version;
  uint64_t error_dropped; /* failures dropped by on_error = "drop" */
};
const struct sl_rules_stats *sl_rules_stats(const struct sl_rules *rs);

#endif
