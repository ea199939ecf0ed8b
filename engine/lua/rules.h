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

#include <errno.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "config.h"
#include "event.h"
#include "histogram.h"
#include "metric.h"

struct sl_rules;

/* sl_rules_prepare: a "watch" reload found nothing changed. */
#ifndef SL_EALREADY
#define SL_EALREADY (-EALREADY)
#endif

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
  /* rule and reason point into the rule set: both stay valid (and
   * unchanged) until the next sl_rules_decide, reload, commit, abort,
   * shutdown or free of the same set, and nothing else in the set writes
   * them. So the thread that called sl_rules_decide (a worker replica) may
   * copy them right after it returns; a result handed to another thread
   * must carry copies, not these pointers. */
  const char *rule;   /* the deciding rule's file, or NULL (config) */
  const char *reason; /* drop reason or error, or NULL */
  const char *schema; /* set by the worker: why the event did not fit its
                         payload contract (warn mode), or NULL */
};

/* What the rule set needs from its owner. */
struct sl_rules_owner {
  void *data;
  /* sluice.emit: ev (the owner takes the reference) for output index. */
  void (*emit)(void *data, int output, struct sl_event *ev);
  /* The rules-dir watcher (after its debounce) calls reload(data,
   * "watch") instead of reloading this set alone, so the owner can reload
   * every worker's set together (sl_rules_prepare on each, then commit or
   * abort on all). NULL: the set reloads itself (sl_rules_reload). */
  int (*reload)(void *data, const char *trigger);
  /* Set for a worker replica's set: its loads and reloads are logged once,
   * by main's set, with the worker count (sl_workers_reload). */
  int quiet;
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

/* Two-phase reload, for the rule sets of several workers that must
 * change version together (all or nothing). sl_rules_reload_with is
 * prepare + commit on one set.
 *
 * sl_rules_prepare builds the next set against cfg (which must outlive the
 * set; NULL: the live config) beside the live one, runs what a reload runs
 * (chunks, on_start, state handover from the live rules by snapshot and
 * restore) and stages what they emit or log. The live set keeps deciding,
 * with its own config, until the commit; a rule's state changed by events
 * decided between prepare and commit is not in the handed-over snapshot,
 * so an owner that wants it exact decides nothing in between.
 * Returns 0: prepared, exactly one of commit / abort must follow;
 * SL_EALREADY: trigger is "watch" and no file changed: nothing prepared
 * (no commit/abort); another negative code: the build failed, nothing
 * prepared, err holds the reason (like sl_rules_new's), the live set
 * stays, and the set's status records the failure. A set already holding
 * a prepared version aborts it first. Same thread as sl_rules_decide. */
int sl_rules_prepare(struct sl_rules *rs, const struct sl_config *cfg,
                     const char *trigger, char *err, size_t errlen);

/* Make the prepared set live (a no-op when none): from the next decide on
 * it decides with the prepared config; the staged emits (to outputs
 * resolved in that config) and logs are delivered now; the version goes
 * up by one and the status says ok. The owner switches its own config
 * before (the commit callback of sl_rules_reload_with runs at that
 * point). */
void sl_rules_commit(struct sl_rules *rs);
/* sl_rules_commit with the owner's switch: commit(data) runs once the
 * set's config changed, before the staged emits (as in
 * sl_rules_reload_with). */
void sl_rules_commit_with(struct sl_rules *rs, void (*commit)(void *data),
                          void *data);

/* 1 when a and b will run the same rule files with the same content once
 * committed (each's prepared set, else its live one); 0 when a file
 * changed between their loads. Another thread may read a set this way
 * while its own thread is between control messages: its sets change
 * only in prepare, commit and abort. */
int sl_rules_same_code(const struct sl_rules *a, const struct sl_rules *b);

/* Drop the prepared set (a no-op when none): its new rules are freed,
 * their staged emits and logs dropped; the live set and config stay and
 * this set's status is not changed (the owner records why with
 * sl_rules_reload_failed on the set it reports). */
void sl_rules_abort(struct sl_rules *rs);

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

/* Threads. A set is used by one thread at a time (the one that made it,
 * or one its owner hands it to with a happens-before, e.g. a join or a
 * ring's release/acquire); several sets run on several threads at once
 * (tests/c/test_rules_threads.c). Per thread, not shared: each rule's Lua
 * state, seen/rate_limit tables, timers and sluice.counter series (the
 * primary sums them), the CPU watchdog timer, the C-stack budget, the
 * event block pool (an event may be freed on another thread than the one
 * that made it: blocks are plain malloc blocks of two sizes). Events: the
 * refcount is not atomic, so an event belongs to one thread at a time;
 * after sl_rules_decide returns, the set keeps no reference to the event
 * given or returned (proxies and payload views are cut at the call's
 * end, dead letters are new events, seen/rate_limit keep hashes, emits
 * are new events owned by the owner callback or the reload's staging).
 * Log lines are one write(2) each.
 *
 * rules.jit = true on several threads: the JIT's budget uses LuaJIT's
 * profiler (state.c), which is one per process: one state holds its
 * interrupt at a time (an overrunning call on another thread waits for it,
 * retrying every ms), and since its SIGPROF comes from a process-wide
 * ITIMER_PROF the kernel may deliver it to any thread, so state.c sends a
 * tick that lands elsewhere on to the holder's thread (LuaJIT's handler
 * rewrites the held VM's hook bit and dispatch table without a lock).
 * tests/c/test_rules_threads.c (two sets with the JIT on) and
 * tests/integration/test_workers_jit.py. */

/* Make replica a worker's copy of primary (the same rules dir, loaded
 * once more for another thread): sl_rules_metrics and sl_rules_stats of
 * primary then sum primary's and every replica's counters (calls, errors,
 * decisions, durations, timer errors, drops, emits, dead letters;
 * sluice.counter series merged by rule, name and labels into one series
 * each). Version and reloads stay primary's own (the sets reload
 * together). Call on the primary's thread before the replica runs;
 * replicas are never removed: free the primary after it stopped reading
 * them (sl_rules_free of a replica leaves the primary reading freed
 * memory: free replicas after the primary, or never collect in between).
 * Reading: the replica's counters are 64-bit words its own thread writes;
 * the primary reads them without a lock (aligned 64-bit loads are atomic
 * on every target we build for: x86-64 and aarch64), so a sum may miss the
 * last few events in flight, never tear. The per-rule tables of a replica
 * change only in sl_rules_commit/prepare (a new rule file), which the
 * owner runs while the primary's thread waits for it. 0 or SL_ENOMEM. */
int sl_rules_add_replica(struct sl_rules *primary, struct sl_rules *replica);

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

/* Counters for metrics and the worker's logs; with replicas
 * (sl_rules_add_replica) the sum over them (version and reloads:
 * primary's), valid until the next call. */
struct sl_rules_stats {
  uint64_t dropped, dead_lettered, unrouted, emitted, emit_failed;
  uint64_t reloads_ok, reloads_failed;
  uint64_t version;
  uint64_t error_dropped; /* failures dropped by on_error = "drop" */
};
const struct sl_rules_stats *sl_rules_stats(const struct sl_rules *rs);

/* The live version (sl_rules_stats(rs)->version without summing the
 * replicas: for per-event use). */
uint64_t sl_rules_version(const struct sl_rules *rs);

#endif
