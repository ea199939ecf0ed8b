/* sandbox.h - one rule file in its own sandboxed LuaJIT state.
 * A rule owns its lua_State, the state's allocator (a byte budget) and its
 * timers, counters, rate limiters and dedup windows. It never touches the
 * event loop: the host passes events in, reads decisions out, and drives
 * timers through sl_rule_next_timer/sl_rule_run_timers, so the same code
 * runs in the engine, in `sluice route` and under busted (sluice.testing).
 * A rule is used by one thread at a time. */
#ifndef SL_SANDBOX_H
#define SL_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h"

#define SL_RULE_MAX_ROUTES 16

struct sl_rule;

struct sl_rule_limits {
  uint32_t cpu_budget_ms;   /* per call into the rule; default 10 */
  uint32_t memory_mb;       /* per state; default 64 */
  const char *scripts_dir;  /* runtime library for require; may be NULL */
  const char *lib_dir;      /* the rules dir's lib/ for require; may be NULL */
  /* messages name the rule by its path relative to this folder (the
   * config's), as in "rules/orders.lua:12: ..."; NULL: the path as given */
  const char *display_root;
  /* an event the rule emits or changes must encode to at most this many
   * bytes (what the native input accepts); default 1 MiB */
  uint32_t max_event_bytes;
  /* run the rule compiled by LuaJIT's JIT (rules.jit); the CPU budget
   * holds either way (state.c: the profiler interrupt). Default 0. */
  int jit;
};

/* What a rule can ask of its host. Every member may be NULL. Strings passed
 * are valid only during the call. */
struct sl_rule_host {
  void *data;
  /* sluice.emit(output, event_table): ev is a complete canonical event
   * (built with the host's idgen); the host takes the reference. */
  void (*emit)(void *data, struct sl_rule *r, const char *output,
               struct sl_event *ev);
  /* sluice.log(level, msg, fields): level 0 debug .. 3 error; fields is a
   * raw msgpack map or NULL. */
  void (*log)(void *data, struct sl_rule *r, int level, const char *msg,
              const uint8_t *fields, size_t fields_len);
  struct sl_idgen *idgen; /* for ids of emitted events; NULL: rule-owned */
  /* Monotonic clock in ns for sluice.every, rate_limit, seen and
   * sluice.now (as an offset from the wall clock at load). NULL: the
   * system clocks. sluice.testing sets it to move time by hand. The CPU
   * budget always uses the system clock. */
  uint64_t (*mono_ns)(void *data);
};

enum sl_rule_verdict {
  SL_RULE_PASS = 0, /* no decision: the next rule or the config routes */
  SL_RULE_ROUTE,    /* send to routes[0..nroutes-1] */
  SL_RULE_DROP,     /* dropped, message holds the reason */
  SL_RULE_ERROR     /* failed, see error and message */
};

enum sl_rule_error {
  SL_RULE_ERR_NONE = 0,
  SL_RULE_ERR_RUNTIME, /* a Lua error, or a bad return value */
  SL_RULE_ERR_CPU,     /* over cpu_budget_ms */
  SL_RULE_ERR_MEMORY   /* over memory_mb */
};

/* What the host does with the event when on_event fails: the rule
 * table's on_error, or UNSET for the host's default (rules.on_error). */
enum sl_rule_on_error {
  SL_RULE_ON_ERROR_UNSET = 0,
  SL_RULE_ON_ERROR_DEAD_LETTER, /* "dead_letter": to the dead letter output */
  SL_RULE_ON_ERROR_DROP,        /* "drop": counted, logged, gone */
  SL_RULE_ON_ERROR_PASS         /* "pass": unchanged, to the next rule */
};

/* The policy named s ("dead_letter", "drop", "pass"), or UNSET. */
enum sl_rule_on_error sl_rule_on_error_parse(const char *s);

struct sl_rule_decision {
  enum sl_rule_verdict verdict;
  enum sl_rule_error error;
  int nroutes;
  const char *routes[SL_RULE_MAX_ROUTES]; /* owned by the rule; valid until
                                             its next call */
  char message[512];  /* drop reason, or "file:line: message" on error */
  char where[256];    /* file:line of the failure, for sluice-rule */
  char traceback[768]; /* "stack traceback:\n\t..." on a Lua error, a few
                          frames; "" otherwise */
  struct sl_event *changed; /* non-NULL: the event after the rule changed
                               it (topic, key, headers or payload); the
                               caller takes the reference */
  uint64_t routes_seq; /* routes[] names what they named in the rule's last
                          decision with the same routes_seq (a caller may
                          keep what it looked up for them) */
  int timers_changed; /* the call added timers (or rebuilt the state):
                         sl_rule_next_timer may be sooner */
};

/* Load path into a new state: the sandboxed environment, the runtime
 * library, the chunk (the JIT off unless limits->jit), the contract check
 * (a table with on_event; topics a string or list of globs) and on_start.
 * On error NULL is returned and err holds "path:line: message". */
struct sl_rule *sl_rule_load(const char *path,
                             const struct sl_rule_limits *limits,
                             const struct sl_rule_host *host, char *err,
                             size_t errlen);

/* Close the state and free everything the rule owns. NULL is a no-op. */
void sl_rule_free(struct sl_rule *r);

/* Does the rule's topics list match topic? */
int sl_rule_matches(const struct sl_rule *r, const char *topic, size_t len);
/* Does it match every topic (no topics list)? Fixed for the rule's life. */
int sl_rule_any_topic(const struct sl_rule *r);

/* Run on_event for ev (not consumed). Fills d; never raises. After an error
 * the rule is still usable (a state that is broken beyond use is rebuilt
 * from the source vetted at load, never the file on disk again, by this
 * call; sl_rule_rebuilds counts how often). */
void sl_rule_run(struct sl_rule *r, struct sl_event *ev,
                 struct sl_rule_decision *d);

/* Monotonic ms of the earliest timer (sluice.every), or -1 when none. The
 * clock is sl_mono_ns() / 1e6 (CLOCK_MONOTONIC, as uv_hrtime), or the
 * host's mono_ns when it has one. A timer that fell behind runs once; a
 * run is next due no sooner than its interval, and no sooner than the run
 * took, after it ended. Timers of a rebuilt state start anew. */
int64_t sl_rule_next_timer(const struct sl_rule *r);
/* Run the timers due at now_ms, for at most cpu_budget_ms in all (the
 * rest stay due; the next call starts with them). Errors are logged
 * through the host, at most 20 lines per 10 s, and all counted. */
void sl_rule_run_timers(struct sl_rule *r, int64_t now_ms);

/* State handover for hot reload: snapshot() of the old rule to msgpack,
 * restore(value) into the new one. Both return 0, SL_ENOENT when the rule
 * does not export the function, or a negative code with err filled. */
int sl_rule_snapshot(struct sl_rule *r, struct sl_buf *out, char *err,
                     size_t errlen);
int sl_rule_restore(struct sl_rule *r, const uint8_t *p, size_t len,
                    char *err, size_t errlen);

/* Run on_stop() (the engine is shutting down), under the CPU budget;
 * what it emits goes out through the host as usual. Returns 0, SL_ENOENT
 * when the rule has none, or a negative code with err filled. */
int sl_rule_stop(struct sl_rule *r, char *err, size_t errlen);

/* Replace the host (rules.c stages a new version's emits and logs until
 * its reload commits). Not during a call into the rule. */
void sl_rule_set_host(struct sl_rule *r, const struct sl_rule_host *host);

/* The rule table's on_error (UNSET when it has none). */
enum sl_rule_on_error sl_rule_on_error(const struct sl_rule *r);

/* Does the rule export restore()? */
int sl_rule_has_restore(struct sl_rule *r);

/* 1 when path is the file r was loaded from, its content is what r runs
 * and every module file r read is as r read it (reading them again); 0
 * when anything differs or cannot be read. */
int sl_rule_unchanged(const struct sl_rule *r, const char *path);

/* 1 when a and b (loaded by two workers) read the same file with the same
 * content and the same module files as each other; 0 otherwise. */
int sl_rule_same_code(const struct sl_rule *a, const struct sl_rule *b);

/* Introspection for status and metrics. */
const char *sl_rule_path(const struct sl_rule *r);   /* as shown in messages */
const char *sl_rule_source(const struct sl_rule *r); /* the file it reads */
const char *sl_rule_hash(const struct sl_rule *r); /* hex SHA-256 of file */
size_t sl_rule_memory(const struct sl_rule *r);    /* bytes in the state */
uint64_t sl_rule_rebuilds(const struct sl_rule *r);
uint64_t sl_rule_timer_errors(const struct sl_rule *r); /* timer runs that
                                                           failed */

/* sluice.counter(name, labels) values, for /metrics. labels is a rendered
 * Prometheus label list without braces ("k=\"v\",...") or "". */
typedef void (*sl_rule_counter_cb)(void *data, const char *name,
                                   const char *labels, double value);
void sl_rule_counters(const struct sl_rule *r, sl_rule_counter_cb cb,
                      void *data);

#endif
