/* rules.c - the live rule set and hot reload; see rules.h.
 * A set is an array of loaded rules with the version it was built as. A
 * reload builds the whole next set (load, contract check, on_start, state
 * handover) before it touches the live one, so a bad file never handles an
 * event. Events are decided synchronously on the loop thread, so a swap
 * between two decide calls is a swap at an event boundary. */
#include "rules.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "sandbox.h"
#include "statefile.h"

#define SL_RULES_TIME_EVERY 16 /* a power of two */

/* What we keep per rule file across versions. */
struct rule_stats {
  char *file; /* name inside the rules dir */
  char hash[65];
  uint64_t version; /* bumped when the file's content changes */
  int64_t loaded_at_ns;
  uint64_t calls, routed, dropped, passed;
  uint64_t err_runtime, err_cpu, err_memory;
  uint64_t timer_errors; /* over all versions */
  uint64_t on_error[3];  /* failures handled by policy: dead_letter, drop,
                            pass (enum sl_rule_on_error - 1) */
  struct sl_histogram duration;
  int present; /* in the live set */
};

#define SLOT_ROUTES 4 /* decisions a slot knows the output of */

struct slot {
  struct sl_rule *rule;
  struct rule_stats *stats;
  int borrowed; /* the live set's rule, unchanged: not ours to free */
  int any_topic; /* no topics list: runs on every event, no glob to match */
  const char *path; /* sl_rule_path, for results */
  /* the output the rule's last one-name decision resolved to: a rule
   * returns the same name event after event, and while routes_seq is the
   * same the name is (resolve_routes); valid for one config's outputs as
   * in struct route_cache */
  uint64_t route_seq[SLOT_ROUTES]; /* 0: none; a few, for a rule that */
  int route_idx[SLOT_ROUTES];       /* routes to some by turns */
  int route_next;
  const struct sl_config *route_cfg;
  const struct sl_output_config *route_outputs;
  int route_noutputs;
};

/* An emit or log of a version being built, held until its reload commits
 * (delivered then) or is rejected (dropped). */
struct staged {
  struct sl_rule *rule;
  struct sl_event *ev; /* an emit when non-NULL, else a log */
  char *output, *msg;
  uint8_t *fields;
  size_t fields_len;
  int level;
};

#define SL_RULES_MAX_STAGED 10000
#define SL_RULES_MAX_STAGED_BYTES (64u << 20) /* held until commit */

struct ruleset {
  uint64_t version;
  struct slot *slots;
  int n;
};

/* The outputs rules routed to lately, by name: a rule returns the same
 * few names event after event, and comparing one name costs less than
 * sl_config_output_index's walk over every output. Valid for one config
 * (and its outputs array: a reload lays those out anew). */
#define ROUTE_CACHE_N 4
#define ROUTE_CACHE_NAME 48
struct route_cache {
  const struct sl_config *cfg;
  const struct sl_output_config *outputs;
  int noutputs, next;
  struct {
    int idx; /* -1: empty */
    char name[ROUTE_CACHE_NAME];
  } e[ROUTE_CACHE_N];
};

struct sl_rules {
  const struct sl_config *cfg;
  struct route_cache rc;
  uv_loop_t *loop;
  struct sl_idgen *idgen;
  struct sl_rules_owner owner;
  struct sl_rule_host host;
  struct sl_rule_host staging; /* host of a version not yet live */
  struct staged *staged;
  int nstaged, staged_cap;
  size_t staged_bytes;
  uint64_t staged_dropped; /* over SL_RULES_MAX_STAGED(_BYTES) */
  struct sl_rule_limits limits;
  struct ruleset *live;
  struct rule_stats **stats; /* every file ever loaded */
  int nstats;
  uv_fs_event_t watch, watch_lib;
  uv_timer_t debounce, timers;
  int watching, watching_lib, stopped;
  uint32_t retry_ms;  /* the watcher's next retry of such a build; 0: none */
  int64_t next_timer_ms;
  int timer_next; /* the rule whose timers go first on the next turn */
  int64_t timers_rest_ms; /* no turn of timer work before (mono ms) */
  struct sl_rule_decision d;
  char reason[600];
  char last_result[16];
  char *last_error;
  int64_t last_reload_ns;
  uint64_t last_reload_ms;
  char scripts_dir[4096], lib_dir[4096];
  char *status_file;
  int status_failing;        /* the last write of status_file failed: 1,
                                the file removed; 2, left stale */
  struct sl_log_limiter error_log;
  struct sl_rules_stats st;
  struct sl_metric_registry *metrics; /* where sl_rules_metrics added */
  char *persist_dir;         /* rules.persist: <state_dir>/rule-state */
  uv_timer_t persist_timer;  /* every rules.persist_interval_s */
  int persist_timer_open, shut; /* shut: on_stop ran, state written */
  /* sl_rules_prepare's result, waiting for commit or abort */
  struct ruleset *prepared;
  const struct sl_config *prepared_cfg;
  struct sl_buf prepared_dropped; /* rules whose state did not carry over */
  char prepared_trigger[32];
  uint64_t prepared_ms;
  /* sl_rules_add_replica: sets whose counters ours sum */
  struct sl_rules **replicas;
  int nreplicas;
  struct sl_rules_stats sum; /* sl_rules_stats with replicas */
};

/* ---- the rule host ----------------------------------------------------- */

static void host_emit(void *data, struct sl_rule *r, const char *output,
                      struct sl_event *ev) {
  struct sl_rules *rs = data;
  int idx = sl_config_output_index(rs->cfg, output, strlen(output));
  if (idx < 0 || rs->owner.emit == NULL) {
    uint64_t suppressed;
    rs->st.emit_failed++;
    if (sl_log_allow(&rs->error_log, &suppressed))
      sl_log(SL_LOG_WARN, "sluice.emit to an unknown output; event dropped",
             SL_S("rule", sl_rule_path(r)), SL_S("output", output),
             SL_U("suppressed", suppressed), SL_END);
    sl_event_unref(ev);
    return;
  }
  rs->st.emitted++;
  rs->owner.emit(rs->owner.data, idx, ev);
}

static void host_log(void *data, struct sl_rule *r, int level, const char *msg,
                     const uint8_t *fields, size_t fields_len) {
  struct sl_buf json;
  sl_buf_init(&json);
  if (fields && sl_codec_to_json(fields, fields_len, &json) == 0 &&
      sl_buf_putc(&json, '\0') == 0)
    sl_log((enum sl_log_level)level, msg, SL_S("rule", sl_rule_path(r)),
           SL_J("fields", (const char *)json.data), SL_END);
  else
    sl_log((enum sl_log_level)level, msg, SL_S("rule", sl_rule_path(r)),
           SL_END);
  sl_buf_close(&json);
}

/* ---- staging: a reload has no side effects until it commits ------------ */

static struct staged *stage_slot(struct sl_rules *rs, size_t bytes) {
  struct staged *grown;
  if (rs->nstaged >= SL_RULES_MAX_STAGED ||
      bytes > SL_RULES_MAX_STAGED_BYTES - rs->staged_bytes)
    return NULL;
  if (rs->nstaged == rs->staged_cap) {
    /* doubled, not one more: grown by one a realloc each, 10000 emits of
     * an on_start copied the array 10000 times (quadratic; under ASan,
     * whose realloc always moves, a reload took 2-5 s instead of 15 ms) */
    int cap = rs->staged_cap ? rs->staged_cap * 2 : 64;
    if (cap > SL_RULES_MAX_STAGED)
      cap = SL_RULES_MAX_STAGED;
    grown = realloc(rs->staged, sizeof(*grown) * (size_t)cap);
    if (grown == NULL)
      return NULL;
    rs->staged = grown;
    rs->staged_cap = cap;
  }
  grown = rs->staged;
  memset(&grown[rs->nstaged], 0, sizeof(*grown));
  rs->staged_bytes += bytes;
  return &grown[rs->nstaged];
}

static void stage_emit(void *data, struct sl_rule *r, const char *output,
                       struct sl_event *ev) {
  struct sl_rules *rs = data;
  struct staged *st = stage_slot(rs, ev->len);
  if (st == NULL || (st->output = strdup(output)) == NULL) {
    rs->staged_dropped++;
    sl_event_unref(ev);
    return;
  }
  st->rule = r;
  st->ev = ev;
  rs->nstaged++;
}

static void stage_log(void *data, struct sl_rule *r, int level,
                      const char *msg, const uint8_t *fields,
                      size_t fields_len) {
  struct sl_rules *rs = data;
  struct staged *st = stage_slot(rs, strlen(msg) + fields_len);
  if (st == NULL || (st->msg = strdup(msg)) == NULL ||
      (fields_len && (st->fields = malloc(fields_len)) == NULL)) {
    if (st)
      free(st->msg);
    rs->staged_dropped++;
    return;
  }
  if (fields_len)
    memcpy(st->fields, fields, fields_len);
  st->rule = r;
  st->level = level;
  st->fields_len = fields_len;
  rs->nstaged++;
}

/* Deliver (commit) or drop (reject) what the build staged; counts in
 * *emits and *logs. Rules named by staged entries must still be alive. */
static void staged_finish(struct sl_rules *rs, int deliver, uint64_t *emits,
                          uint64_t *logs) {
  int i;
  *emits = *logs = 0;
  for (i = 0; i < rs->nstaged; i++) {
    struct staged *st = &rs->staged[i];
    if (st->ev) {
      ++*emits;
      if (deliver)
        host_emit(rs, st->rule, st->output, st->ev);
      else
        sl_event_unref(st->ev);
    } else {
      ++*logs;
      if (deliver)
        host_log(rs, st->rule, st->level, st->msg, st->fields,
                 st->fields_len);
    }
    free(st->output);
    free(st->msg);
    free(st->fields);
  }
  free(rs->staged);
  rs->staged = NULL;
  rs->nstaged = rs->staged_cap = 0;
  rs->staged_bytes = 0;
  if (rs->staged_dropped && deliver)
    sl_log(SL_LOG_WARN, "rules: emits and logs of on_start over the limit "
           "were dropped", SL_U("dropped", rs->staged_dropped),
           SL_I("limit", SL_RULES_MAX_STAGED), SL_END);
  rs->staged_dropped = 0;
}

/* ---- sets -------------------------------------------------------------- */

/* Free the set and the rules it owns (not the borrowed ones). */
static void set_free(struct ruleset *s) {
  int i;
  if (s == NULL)
    return;
  for (i = 0; i < s->n; i++)
    if (!s->slots[i].borrowed)
      sl_rule_free(s->slots[i].rule);
  free(s->slots);
  free(s);
}

static int rule_file(const struct dirent *d) {
  size_t n = strlen(d->d_name);
  if (d->d_name[0] == '.' || n < 5 || strcmp(d->d_name + n - 4, ".lua") != 0)
    return 0;
  return !(n >= 9 && strcmp(d->d_name + n - 9, "_spec.lua") == 0);
}

static struct rule_stats *stats_for(struct sl_rules *rs, const char *file) {
  struct rule_stats *s, **grown;
  int i;
  for (i = 0; i < rs->nstats; i++)
    if (strcmp(rs->stats[i]->file, file) == 0)
      return rs->stats[i];
  s = calloc(1, sizeof(*s));
  grown = realloc(rs->stats, sizeof(*grown) * (size_t)(rs->nstats + 1));
  if (s == NULL || grown == NULL || (s->file = strdup(file)) == NULL) {
    if (s)
      free(s->file);
    free(s);
    if (grown)
      rs->stats = grown;
    return NULL;
  }
  rs->stats = grown;
  rs->stats[rs->nstats++] = s;
  return s;
}

/* Build the next set from the dir: a file unchanged since the live set
 * loaded it (content and modules) is the live rule itself, borrowed, not
 * run again; others load with the staging host. On error NULL with err
 * filled. */
static struct ruleset *set_build(struct sl_rules *rs, char *err,
                                 size_t errlen, int *changed) {
  struct dirent **names = NULL;
  struct ruleset *s;
  int n, i, live_n = rs->live ? rs->live->n : 0;

  *changed = 0;
  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (rs->cfg->rules.dir == NULL)
    return s;
  n = scandir(rs->cfg->rules.dir, &names, rule_file, alphasort);
  if (n < 0) {
    snprintf(err, errlen, "%s: cannot read the rules folder: %s",
             rs->cfg->rules.dir, strerror(errno));
    free(s);
    return NULL;
  }
  s->slots = calloc((size_t)n + 1, sizeof(*s->slots));
  if (s->slots == NULL) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (n != live_n)
    *changed = 1;
  for (i = 0; i < n; i++) {
    char path[4096];
    struct sl_rule *r = NULL;
    int j;
    snprintf(path, sizeof(path), "%s/%s", rs->cfg->rules.dir,
             names[i]->d_name);
    for (j = 0; j < live_n && r == NULL; j++)
      if (sl_rule_unchanged(rs->live->slots[j].rule, path))
        r = rs->live->slots[j].rule;
    if (r) {
      s->slots[s->n].borrowed = 1;
    } else {
      r = sl_rule_load(path, &rs->limits, &rs->staging, err, errlen);
      if (r == NULL)
        goto fail;
      *changed = 1;
    }
    s->slots[s->n].any_topic = sl_rule_any_topic(r);
    s->slots[s->n].path = sl_rule_path(r);
    s->slots[s->n++].rule = r;
    if (i >= live_n ||
        strcmp(sl_rule_source(rs->live->slots[i].rule), path) != 0 ||
        strcmp(sl_rule_hash(rs->live->slots[i].rule), sl_rule_hash(r)) != 0)
      *changed = 1;
  }
  for (i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return s;

fail:
  for (i = 0; i < n; i++)
    free(names[i]);
  free(names);
  set_free(s);
  return NULL;
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* Hand state from the live set's rules to the new set's newly loaded
 * ones, by file name, when the new version has restore(). A snapshot()
 * that fails costs that rule its state only: the new version starts
 * fresh, which is logged and named in *dropped ("a.lua b.lua"); a fixed
 * version must stay loadable. A restore() that fails rejects the reload
 * (the new version said it cannot start from this state). */
static int handover(struct sl_rules *rs, struct ruleset *next, char *err,
                    size_t errlen, struct sl_buf *dropped) {
  struct sl_buf snap;
  int i, j, rc = 0;

  if (rs->live == NULL)
    return 0;
  sl_buf_init(&snap);
  for (i = 0; i < next->n && rc == 0; i++) {
    struct sl_rule *nr = next->slots[i].rule;
    const char *name = base_name(sl_rule_path(nr));
    if (next->slots[i].borrowed || !sl_rule_has_restore(nr))
      continue; /* the same rule goes on / nothing would take the state */
    for (j = 0; j < rs->live->n; j++) {
      struct sl_rule *old = rs->live->slots[j].rule;
      char why[1024] = "";
      if (strcmp(base_name(sl_rule_path(old)), name) != 0)
        continue;
      sl_buf_reset(&snap);
      sl_rule_set_host(old, &rs->staging); /* its emits count as the build's */
      rc = sl_rule_snapshot(old, &snap, why, sizeof(why));
      sl_rule_set_host(old, &rs->host);
      if (rc == SL_ENOENT) {
        rc = 0; /* nothing to hand over */
        break;
      }
      if (rc != 0) {
        sl_log(SL_LOG_WARN, "rule snapshot failed; its new version starts "
               "without the old state", SL_S("rule", sl_rule_path(nr)),
               SL_S("error", why), SL_END);
        sl_buf_printf(dropped, "%s%s", dropped->len ? " " : "", name);
        rc = 0;
        break;
      }
      rc = sl_rule_restore(nr, snap.data, snap.len, err, errlen);
      if (rc == SL_ENOENT)
        rc = 0; /* the new version starts fresh */
      break;
    }
  }
  sl_buf_close(&snap);
  return rc;
}

static void arm_timers(struct sl_rules *rs);
static void write_status(struct sl_rules *rs);
static void persist_all(struct sl_rules *rs);

/* Make next live; describe in changes what differs from the live set
 * ("+new.lua ~changed.lua -removed.lua"). */
static void swap_in(struct sl_rules *rs, struct ruleset *next,
                    struct sl_buf *changes) {
  int64_t now = sl_now_ns();
  int i;

  next->version = ++rs->st.version;
  for (i = 0; i < rs->nstats; i++)
    if (rs->stats[i]->present)
      rs->stats[i]->present = 2; /* live before: not seen in next yet */
  for (i = 0; i < next->n; i++) {
    struct sl_rule *r = next->slots[i].rule;
    struct rule_stats *st = stats_for(rs, base_name(sl_rule_path(r)));
    int was_live;
    next->slots[i].stats = st;
    if (st == NULL)
      continue;
    was_live = st->present == 2;
    st->present = 1;
    /* loaded anew (not borrowed): its file or one of its modules changed */
    if (strcmp(st->hash, sl_rule_hash(r)) != 0 || !was_live ||
        !next->slots[i].borrowed) {
      if (changes)
        sl_buf_printf(changes, "%s%c%s", changes->len ? " " : "",
                      was_live ? '~' : '+', st->file);
      snprintf(st->hash, sizeof(st->hash), "%s", sl_rule_hash(r));
      st->version++;
      st->loaded_at_ns = now;
    }
  }
  for (i = 0; i < rs->nstats; i++)
    if (rs->stats[i]->present == 2) {
      rs->stats[i]->present = 0;
      rs->stats[i]->hash[0] = '\0'; /* back later: a new load */
      if (changes)
        sl_buf_printf(changes, "%s-%s", changes->len ? " " : "",
                      rs->stats[i]->file);
    }
  for (i = 0; i < next->n; i++) {
    struct slot *sl = &next->slots[i];
    int j;
    if (!sl->borrowed) {
      sl_rule_set_host(sl->rule, &rs->host); /* live now: deliver */
      continue;
    }
    for (j = 0; rs->live && j < rs->live->n; j++)
      if (rs->live->slots[j].rule == sl->rule)
        rs->live->slots[j].rule = NULL; /* moves to next */
    sl->borrowed = 0;
  }
  set_free(rs->live); /* no event is inside it: decide is synchronous */
  rs->live = next;
  arm_timers(rs);
}

/* A reload is side-effect free until it commits: files that did not
 * change are not run again, and what the new versions emit or log while
 * they load (chunk, on_start, restore) is staged, delivered only when the
 * set goes live and dropped when it is rejected. */
int sl_rules_reload(struct sl_rules *rs, const char *trigger) {
  return sl_rules_reload_with(rs, NULL, trigger, NULL, NULL);
}

void sl_rules_reload_failed(struct sl_rules *rs, const char *error) {
  rs->last_reload_ns = sl_now_ns();
  rs->last_reload_ms = 0;
  rs->st.reloads_failed++;
  snprintf(rs->last_result, sizeof(rs->last_result), "failed");
  free(rs->last_error);
  rs->last_error = strdup(error);
  write_status(rs);
}

/* Build the next set and hand state over; the live set and config stay
 * live. See rules.h. */
int sl_rules_prepare(struct sl_rules *rs, const struct sl_config *cfg,
                     const char *trigger, char *err, size_t errlen) {
  struct ruleset *next;
  uint64_t t0 = sl_mono_ns(), ms, emits, logs;
  const struct sl_config *live_cfg = rs->cfg;
  int changed, forced = strcmp(trigger, "watch") != 0;

  if (rs->prepared)
    sl_rules_abort(rs);
  err[0] = '\0';
  sl_buf_init(&rs->prepared_dropped);
  if (cfg)
    rs->cfg = cfg; /* the next set is built against it */
  next = set_build(rs, err, errlen, &changed);
  if (next && !changed && !forced) {
    rs->cfg = live_cfg;
    set_free(next); /* it only borrowed the live rules */
    staged_finish(rs, 0, &emits, &logs);
    if (!rs->owner.quiet)
      sl_log(SL_LOG_DEBUG, "rules unchanged; reload skipped",
           SL_S("trigger", trigger), SL_END);
    return SL_EALREADY;
  }
  if (next &&
      handover(rs, next, err, errlen, &rs->prepared_dropped) != 0) {
    set_free(next);
    next = NULL;
  }
  rs->cfg = live_cfg; /* until the commit: events still decide with it */
  ms = (sl_mono_ns() - t0) / 1000000u;
  rs->last_reload_ns = sl_now_ns();
  rs->last_reload_ms = ms;
  free(rs->last_error);
  rs->last_error = NULL;
  if (next == NULL) {
    staged_finish(rs, 0, &emits, &logs);
    sl_buf_close(&rs->prepared_dropped);
    rs->st.reloads_failed++;
    snprintf(rs->last_result, sizeof(rs->last_result), "failed");
    rs->last_error = strdup(err);
    if (!rs->owner.quiet)
      sl_log(SL_LOG_ERROR, "rules reload rejected; the live version stays",
           SL_S("trigger", trigger), SL_U("live_version", rs->st.version),
           SL_S("error", err), SL_U("ms", ms),
           SL_U("discarded_emits", emits), SL_U("discarded_logs", logs),
           SL_END);
    write_status(rs);
    return SL_EINVAL;
  }
  rs->prepared = next;
  rs->prepared_cfg = cfg ? cfg : live_cfg;
  rs->prepared_ms = ms;
  snprintf(rs->prepared_trigger, sizeof(rs->prepared_trigger), "%s", trigger);
  return 0;
}

/* The commit with the owner's switch (sl_rules_reload_with's callback)
 * run after the set's config changed and before the staged emits. */
void sl_rules_commit_with(struct sl_rules *rs, void (*commit)(void *data),
                          void *data) {
  struct ruleset *next = rs->prepared;
  struct sl_buf changes;
  uint64_t emits, logs;

  if (next == NULL)
    return;
  rs->prepared = NULL;
  rs->cfg = rs->prepared_cfg;
  rs->rc.cfg = NULL; /* output indexes may move with the config */
  if (commit)
    commit(data); /* the owner switches to cfg: emits below resolve in it */
  staged_finish(rs, 1, &emits, &logs); /* before the swap: the rules named
                                          by staged entries are alive */
  sl_buf_init(&changes);
  swap_in(rs, next, &changes);
  sl_buf_putc(&changes, '\0');
  sl_buf_putc(&rs->prepared_dropped, '\0');
  rs->st.reloads_ok++;
  snprintf(rs->last_result, sizeof(rs->last_result), "ok");
  if (!rs->owner.quiet)
    sl_log(SL_LOG_INFO, "rules reloaded", SL_S("trigger", rs->prepared_trigger),
         SL_U("version", rs->st.version), SL_I("rules", next->n),
         SL_S("files_changed", changes.data ? (const char *)changes.data : ""),
         SL_S("state_dropped", (const char *)rs->prepared_dropped.data),
         SL_U("ms", rs->prepared_ms), SL_END);
  sl_buf_close(&changes);
  sl_buf_close(&rs->prepared_dropped);
  write_status(rs);
}

void sl_rules_commit(struct sl_rules *rs) {
  sl_rules_commit_with(rs, NULL, NULL);
}

/* The set rs runs once its owner commits: the prepared one, else (none
 * prepared: unchanged or not asked) the live one. */
static const struct ruleset *next_set(const struct sl_rules *rs) {
  return rs->prepared ? rs->prepared : rs->live;
}

int sl_rules_same_code(const struct sl_rules *a, const struct sl_rules *b) {
  const struct ruleset *x = next_set(a), *y = next_set(b);
  int i, n = x ? x->n : 0;
  if (n != (y ? y->n : 0))
    return 0;
  for (i = 0; i < n; i++)
    if (!sl_rule_same_code(x->slots[i].rule, y->slots[i].rule))
      return 0;
  return 1;
}

void sl_rules_abort(struct sl_rules *rs) {
  uint64_t emits, logs;
  if (rs->prepared == NULL)
    return;
  set_free(rs->prepared); /* its borrowed rules stay the live set's */
  rs->prepared = NULL;
  staged_finish(rs, 0, &emits, &logs);
  sl_buf_close(&rs->prepared_dropped);
  sl_log(SL_LOG_DEBUG, "prepared rules version aborted",
         SL_S("trigger", rs->prepared_trigger),
         SL_U("discarded_emits", emits), SL_U("discarded_logs", logs), SL_END);
}

int sl_rules_reload_with(struct sl_rules *rs, const struct sl_config *cfg,
                         const char *trigger, void (*commit)(void *data),
                         void *data) {
  char err[1024];
  int rc = sl_rules_prepare(rs, cfg, trigger, err, sizeof(err));
  if (rc == SL_EALREADY)
    return 0;
  if (rc != 0)
    return SL_EINVAL;
  sl_rules_commit_with(rs, commit, data);
  return 0;
}

/* ---- watching and timers ----------------------------------------------- */

#define WATCH_RETRY_MIN_MS 1000
#define WATCH_RETRY_MAX_MS 30000

/* Can the process open a file now? A reload that failed while it could
 * not failed for want of fds (reading the folder, a rule, a module), not
 * for what the files say. */
static int fds_short_now(void) {
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  return errno == EMFILE || errno == ENFILE;
}

static void on_debounce(uv_timer_t *t) {
  struct sl_rules *rs = container_of(t, struct sl_rules, debounce);
  int rc;
  if (rs->owner.reload) /* every worker's set together */
    rc = rs->owner.reload(rs->owner.data, "watch");
  else
    rc = sl_rules_reload(rs, "watch");
  if (rc == 0 || rs->stopped || !fds_short_now()) {
    rs->retry_ms = 0;
    return;
  }
  /* the files changed but could not be read for want of fds: the watcher
   * will not see this change again, so try again until fds come back */
  rs->retry_ms = rs->retry_ms == 0 ? WATCH_RETRY_MIN_MS
                 : rs->retry_ms * 2 > WATCH_RETRY_MAX_MS ? WATCH_RETRY_MAX_MS
                                                         : rs->retry_ms * 2;
  sl_log(SL_LOG_WARN, "rules reload failed for want of file descriptors; "
         "trying again", SL_U("retry_ms", rs->retry_ms), SL_END);
  uv_timer_start(&rs->debounce, on_debounce, rs->retry_ms, 0);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events,
                        int status) {
  struct sl_rules *rs = h->data;
  (void)filename;
  (void)events;
  if (status != 0 || rs->stopped)
    return;
  /* editors write in bursts (temp file, rename, chmod): wait for quiet */
  rs->retry_ms = 0;
  uv_timer_start(&rs->debounce, on_debounce, rs->cfg->rules.debounce_ms, 0);
}

/* One turn of timer work is capped at the CPU budget (each rule's
 * sl_rule_run_timers caps itself too); rules whose timers did not get a
 * turn stay due and go first next time, after the loop polled I/O. The
 * next turn starts no sooner than this one took after it ended, so timers
 * have at most half the loop's time: each timer waits at least its own
 * run, but 64 timers that each overran their budget, due again as soon
 * as they could be, kept a worker's loop busy with them all the time. */
static void on_rule_timers(uv_timer_t *t) {
  struct sl_rules *rs = container_of(t, struct sl_rules, timers);
  int64_t now = (int64_t)(sl_mono_ns() / 1000000u);
  uint64_t t0 = sl_mono_ns(), t1,
           cap = (uint64_t)rs->limits.cpu_budget_ms * 1000000u;
  uint64_t errors;
  int i, k, n;
  if (rs->live && (n = rs->live->n) > 0)
    for (k = 0; k < n; k++) {
      struct sl_rule *r;
      int64_t due;
      i = (rs->timer_next + k) % n;
      r = rs->live->slots[i].rule;
      due = sl_rule_next_timer(r);
      if (due < 0 || due > now)
        continue;
      if (sl_mono_ns() - t0 >= cap)
        break; /* the rest run on the next turn */
      errors = sl_rule_timer_errors(r);
      sl_rule_run_timers(r, now);
      if (rs->live->slots[i].stats)
        rs->live->slots[i].stats->timer_errors +=
            sl_rule_timer_errors(r) - errors;
      rs->timer_next = (i + 1) % n;
    }
  t1 = sl_mono_ns();
  rs->timers_rest_ms =
      t1 - t0 >= 1000000u ? (int64_t)((t1 + (t1 - t0)) / 1000000u) + 1 : 0;
  arm_timers(rs);
}

static void arm_timers(struct sl_rules *rs) {
  int64_t next = -1, now;
  int i;
  if (rs->loop == NULL || rs->stopped || rs->live == NULL)
    return;
  for (i = 0; i < rs->live->n; i++) {
    int64_t t = sl_rule_next_timer(rs->live->slots[i].rule);
    if (t >= 0 && (next < 0 || t < next))
      next = t;
  }
  rs->next_timer_ms = next;
  if (next < 0) {
    uv_timer_stop(&rs->timers);
    return;
  }
  if (next < rs->timers_rest_ms) /* the last turn's rest (on_rule_timers) */
    next = rs->timers_rest_ms;
  now = (int64_t)(sl_mono_ns() / 1000000u);
  /* libuv counts the timeout from its loop time, read when this pass of
   * the loop began: a turn of timer work (tens of ms) later, the timer
   * fired that much early, and the rest above never happened */
  uv_update_time(rs->loop);
  /* never 0: libuv runs a timer re-armed with 0 from its own callback
   * again in the same pass, before polling I/O (the loop would spin) */
  uv_timer_start(&rs->timers, on_rule_timers,
                 next > now + 1 ? (uint64_t)(next - now) : 1, 0);
}

/* ---- life -------------------------------------------------------------- */

struct sl_rules *sl_rules_new(const struct sl_config *cfg, uv_loop_t *loop,
                              struct sl_idgen *g,
                              const struct sl_rules_owner *owner, char *err,
                              size_t errlen) {
  struct sl_rules *rs = calloc(1, sizeof(*rs));
  struct ruleset *first;
  struct stat st;
  int changed;
  const char *scripts = getenv("SLUICE_SCRIPTS");

  if (rs == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  rs->cfg = cfg;
  rs->loop = loop;
  rs->idgen = g;
  rs->next_timer_ms = -1;
  if (owner)
    rs->owner = *owner;
  rs->host.data = rs;
  rs->host.emit = host_emit;
  rs->host.log = host_log;
  rs->host.idgen = g;
  rs->staging = rs->host;
  rs->staging.emit = stage_emit;
  rs->staging.log = stage_log;
  sl_log_limiter_init(&rs->error_log, 10000, 20);
  rs->limits.cpu_budget_ms = cfg->rules.cpu_budget_ms;
  rs->limits.memory_mb = cfg->rules.memory_mb;
  rs->limits.jit = cfg->rules.jit;
  rs->limits.max_event_bytes = cfg->max_event_bytes; /* emitted events */
  rs->limits.display_root = cfg->dir; /* "rules/x.lua:12: ..." */
  snprintf(rs->scripts_dir, sizeof(rs->scripts_dir), "%s",
           scripts ? scripts : "scripts");
  rs->limits.scripts_dir = rs->scripts_dir;
  if (cfg->rules.dir) {
    snprintf(rs->lib_dir, sizeof(rs->lib_dir), "%s/lib", cfg->rules.dir);
    rs->limits.lib_dir = rs->lib_dir;
  }
  snprintf(rs->last_result, sizeof(rs->last_result), "none");
  first = set_build(rs, err, errlen, &changed);
  if (first == NULL) {
    uint64_t emits, logs;
    staged_finish(rs, 0, &emits, &logs);
    free(rs);
    return NULL;
  }
  if (loop) {
    uv_timer_init(loop, &rs->debounce);
    uv_timer_init(loop, &rs->timers);
  }
  {
    uint64_t emits, logs;
    staged_finish(rs, 1, &emits, &logs);
  }
  swap_in(rs, first, NULL);
  rs->last_reload_ns = sl_now_ns();
  snprintf(rs->last_result, sizeof(rs->last_result), "ok");
  if (loop && cfg->rules.dir && cfg->rules.watch) {
    int rc;
    uv_fs_event_init(loop, &rs->watch);
    rs->watch.data = rs;
    rc = uv_fs_event_start(&rs->watch, on_fs_event, cfg->rules.dir, 0);
    rs->watching = 1;
    if (rc != 0)
      sl_log(SL_LOG_WARN, "cannot watch the rules folder; use SIGHUP to reload",
             SL_S("dir", cfg->rules.dir), SL_S("error", uv_strerror(rc)), SL_END);
    if (stat(rs->lib_dir, &st) == 0 && S_ISDIR(st.st_mode)) {
      uv_fs_event_init(loop, &rs->watch_lib);
      rs->watch_lib.data = rs;
      uv_fs_event_start(&rs->watch_lib, on_fs_event, rs->lib_dir, 0);
      rs->watching_lib = 1;
    }
  }
  if (first->n > 0 && loop && !rs->owner.quiet)
    sl_log(SL_LOG_INFO, "rules loaded", SL_U("version", rs->st.version),
           SL_I("rules", first->n), SL_S("dir", cfg->rules.dir), SL_END);
  return rs;
}

void sl_rules_stop(struct sl_rules *rs) {
  if (rs == NULL || rs->stopped)
    return;
  if (!rs->shut) { /* no on_stop now: the outputs are gone; state still */
    rs->owner.emit = NULL;
    rs->shut = 1;
    persist_all(rs);
  }
  rs->stopped = 1;
  if (rs->persist_timer_open)
    uv_close((uv_handle_t *)&rs->persist_timer, NULL);
  if (rs->loop == NULL)
    return;
  uv_close((uv_handle_t *)&rs->debounce, NULL);
  uv_close((uv_handle_t *)&rs->timers, NULL);
  if (rs->watching)
    uv_close((uv_handle_t *)&rs->watch, NULL);
  if (rs->watching_lib)
    uv_close((uv_handle_t *)&rs->watch_lib, NULL);
}

void sl_rules_free(struct sl_rules *rs) {
  int i;
  if (rs == NULL)
    return;
  sl_rules_abort(rs);
  sl_metric_remove(rs->metrics, rs);
  set_free(rs->live);
  for (i = 0; i < rs->nstats; i++) {
    free(rs->stats[i]->file);
    free(rs->stats[i]);
  }
  free(rs->stats);
  free(rs->last_error);
  free(rs->status_file);
  free(rs->persist_dir);
  free(rs->replicas);
  free(rs);
}

void sl_rules_set_status_file(struct sl_rules *rs, const char *path) {
  free(rs->status_file);
  rs->status_file = path ? strdup(path) : NULL;
  write_status(rs);
}

/* Write to a temp file and rename, so a reader never sees half of it.
 * When that fails (a full or read-only state folder) the old file would
 * show an earlier version as the running one: it is removed instead, so
 * `sluice status` says there is none, and the log says why (once until a
 * write works again). */
static void write_status(struct sl_rules *rs) {
  char tmp[4200];
  struct sl_buf b;
  const char *step = "cannot create";
  FILE *f;
  int err = 0;
  if (rs->status_file == NULL)
    return;
  sl_buf_init(&b);
  sl_rules_status_json(rs, &b);
  snprintf(tmp, sizeof(tmp), "%s.tmp", rs->status_file);
  f = fopen(tmp, "w");
  if (f == NULL)
    err = errno;
  else {
    int ok = fwrite(b.data, 1, b.len, f) == b.len;
    ok = fputc('\n', f) != EOF && ok;
    if (!ok)
      err = errno;
    if (fclose(f) != 0 && err == 0)
      err = errno;
    step = "cannot write";
    if (err == 0 && ok && rename(tmp, rs->status_file) != 0) {
      err = errno;
      step = "cannot rename over";
    } else if (err == 0 && !ok) {
      err = EIO;
    }
    if (err)
      unlink(tmp);
  }
  sl_buf_close(&b);
  if (err == 0) {
    if (rs->status_failing)
      sl_log(SL_LOG_INFO, "status file written again",
             SL_S("file", rs->status_file), SL_END);
    rs->status_failing = 0;
    return;
  }
  /* stale: it names an older version. A read-only folder (EROFS, or
   * one whose mode no longer lets us write) keeps it: then the log must
   * not promise it went */
  if (unlink(rs->status_file) != 0 && errno != ENOENT) {
    if (rs->status_failing != 2)
      sl_log(SL_LOG_ERROR, "cannot write the status file nor remove it; "
                           "`sluice status` shows an older version until a "
                           "write works",
             SL_S("file", rs->status_file), SL_S("step", step),
             SL_S("error", strerror(err)),
             SL_S("remove_error", strerror(errno)), SL_END);
    rs->status_failing = 2;
    return;
  }
  if (rs->status_failing != 1)
    sl_log(SL_LOG_WARN, "cannot write the status file; `sluice status` "
                        "has none until a write works",
           SL_S("file", rs->status_file), SL_S("step", step),
           SL_S("error", strerror(err)), SL_END);
  rs->status_failing = 1;
}

/* A counter another thread (a replica's) may be writing: one relaxed
 * load (a plain mov on x86-64 and aarch64, so the writer's plain ++ costs
 * nothing extra); a sum may miss the events in flight, never tears. */
static uint64_t peek(const uint64_t *v) {
  return __atomic_load_n(v, __ATOMIC_RELAXED);
}

static void stats_add(struct sl_rules_stats *to,
                      const struct sl_rules_stats *from) {
  to->dropped += peek(&from->dropped);
  to->dead_lettered += peek(&from->dead_lettered);
  to->unrouted += peek(&from->unrouted);
  to->emitted += peek(&from->emitted);
  to->emit_failed += peek(&from->emit_failed);
  to->error_dropped += peek(&from->error_dropped);
}

const struct sl_rules_stats *sl_rules_stats(const struct sl_rules *rs) {
  struct sl_rules *m = (struct sl_rules *)rs; /* the sum is a cache */
  int i;
  if (rs->nreplicas == 0)
    return &rs->st;
  m->sum = rs->st;
  for (i = 0; i < rs->nreplicas; i++)
    stats_add(&m->sum, &rs->replicas[i]->st);
  return &m->sum;
}

uint64_t sl_rules_version(const struct sl_rules *rs) { return rs->st.version; }

int sl_rules_add_replica(struct sl_rules *primary, struct sl_rules *replica) {
  struct sl_rules **grown;
  if (replica == NULL || replica == primary || replica->nreplicas)
    return SL_EINVAL;
  grown = realloc(primary->replicas,
                  sizeof(*grown) * (size_t)(primary->nreplicas + 1));
  if (grown == NULL)
    return SL_ENOMEM;
  primary->replicas = grown;
  grown[primary->nreplicas++] = replica;
  return 0;
}

/* ---- deciding ---------------------------------------------------------- */

static void dead_letter(struct sl_rules *rs, struct sl_event *orig,
                        const struct sl_rule_decision *d,
                        struct sl_rules_result *r) {
  static const char *const kinds[] = {"none", "runtime", "cpu", "memory"};
  struct sl_event *a, *b = NULL;
  uint64_t suppressed;

  if (sl_log_allow(&rs->error_log, &suppressed))
    sl_log(SL_LOG_ERROR, "rule failed; event sent to the dead letter",
           SL_S("rule", d->where), SL_S("kind", kinds[d->error]),
           SL_S("error", d->message), SL_S("traceback", d->traceback),
           SL_N("event_id", orig->data + orig->id_off, orig->id_len),
           SL_U("suppressed", suppressed), SL_END);
  rs->st.dead_lettered++;
  r->outcome = SL_RULES_FAILED;
  r->reason = d->message;
  if (rs->cfg->dead_letter < 0) {
    r->ntargets = 0; /* counted above; nowhere to put it */
    sl_event_ref(orig);
    r->event = orig;
    return;
  }
  a = sl_event_with_header(orig, "sluice-error", d->message,
                           strlen(d->message));
  if (a)
    b = sl_event_with_header(a, "sluice-rule", d->where, strlen(d->where));
  sl_event_unref(a);
  if (b == NULL) {
    /* no memory for the reason headers: the event goes to the dead letter
     * as it came (the reason is in the log line above); dropping it would
     * lose an event its producer may have been told is accepted */
    sl_event_ref(orig);
    b = orig;
  }
  r->event = b;
  r->ntargets = 1;
  r->targets[0] = (uint16_t)rs->cfg->dead_letter;
}

/* The failure policy of sl: its own on_error, else rules.on_error, else
 * the dead letter. */
static enum sl_rule_on_error policy_of(const struct sl_rules *rs,
                                       const struct slot *sl) {
  enum sl_rule_on_error p = sl_rule_on_error(sl->rule);
  if (p == SL_RULE_ON_ERROR_UNSET && rs->cfg->rules.on_error)
    p = sl_rule_on_error_parse(rs->cfg->rules.on_error);
  return p == SL_RULE_ON_ERROR_UNSET ? SL_RULE_ON_ERROR_DEAD_LETTER : p;
}

/* A failure under on_error "drop" or "pass": logged as dead letters are
 * (rate-limited), with what became of the event. */
static void log_failure(struct sl_rules *rs, const struct sl_event *orig,
                        const struct sl_rule_decision *d, const char *msg) {
  static const char *const kinds[] = {"none", "runtime", "cpu", "memory"};
  uint64_t suppressed;
  if (sl_log_allow(&rs->error_log, &suppressed))
    sl_log(SL_LOG_ERROR, msg, SL_S("rule", d->where),
           SL_S("kind", kinds[d->error]), SL_S("error", d->message),
           SL_S("traceback", d->traceback),
           SL_N("event_id", orig->data + orig->id_off, orig->id_len),
           SL_U("suppressed", suppressed), SL_END);
}

/* sl_config_output_index of a name a rule returned, through rs->rc. */
static int route_output(struct sl_rules *rs, const char *name) {
  struct route_cache *c = &rs->rc;
  size_t n;
  int i, idx;

  if (sl_unlikely(c->cfg != rs->cfg || c->outputs != rs->cfg->outputs ||
                  c->noutputs != rs->cfg->noutputs)) {
    c->cfg = rs->cfg;
    c->outputs = rs->cfg->outputs;
    c->noutputs = rs->cfg->noutputs;
    for (i = 0; i < ROUTE_CACHE_N; i++)
      c->e[i].idx = -1;
  }
  for (i = 0; i < ROUTE_CACHE_N; i++)
    if (c->e[i].idx >= 0 && c->e[i].name[0] == name[0] &&
        strcmp(c->e[i].name, name) == 0)
      return c->e[i].idx;
  n = strlen(name);
  idx = sl_config_output_index(rs->cfg, name, n);
  if (idx >= 0 && n < ROUTE_CACHE_NAME) {
    i = c->next;
    c->next = (i + 1) % ROUTE_CACHE_N;
    memcpy(c->e[i].name, name, n + 1);
    c->e[i].idx = idx;
  }
  return idx;
}

/* The outputs a routing decision names into r; an unknown one makes the
 * decision the rule's runtime error (r->ntargets back to 0). */
static void resolve_routes(struct sl_rules *rs, struct slot *sl,
                           struct sl_rule_decision *d,
                           struct sl_rules_result *r) {
  const struct sl_config *cfg = rs->cfg;
  int j;
  if (d->nroutes == 1 && sl->route_cfg == cfg &&
      sl->route_outputs == cfg->outputs &&
      sl->route_noutputs == cfg->noutputs)
    for (j = 0; j < SLOT_ROUTES; j++)
      if (d->routes_seq == sl->route_seq[j]) {
        r->targets[r->ntargets++] = (uint16_t)sl->route_idx[j];
        return;
      }
  for (j = 0; j < d->nroutes; j++) {
    int idx = route_output(rs, d->routes[j]);
    if (idx < 0) {
      d->verdict = SL_RULE_ERROR;
      d->error = SL_RULE_ERR_RUNTIME;
      snprintf(d->message, sizeof(d->message),
               "%s: on_event returned unknown output \"%s\"",
               sl_rule_path(sl->rule), d->routes[j]);
      snprintf(d->where, sizeof(d->where), "%s", sl_rule_path(sl->rule));
      r->ntargets = 0;
      return;
    }
    r->targets[r->ntargets++] = (uint16_t)idx;
  }
  if (d->nroutes == 1) {
    if (sl->route_cfg != cfg || sl->route_outputs != cfg->outputs ||
        sl->route_noutputs != cfg->noutputs)
      memset(sl->route_seq, 0, sizeof(sl->route_seq));
    j = sl->route_next;
    sl->route_next = (j + 1) % SLOT_ROUTES;
    sl->route_seq[j] = d->routes_seq;
    sl->route_cfg = cfg;
    sl->route_outputs = cfg->outputs;
    sl->route_noutputs = cfg->noutputs;
    sl->route_idx[j] = r->targets[r->ntargets - 1];
  }
}

/* Run slot sl on *ev when its topics match (0 when they do not): time one
 * call in SL_RULES_TIME_EVERY, arm the timers it added, resolve the
 * outputs it routed to into r, and take the event it changed unless it
 * failed (an unknown output fails it too, so on_error "pass" goes on with
 * the event as it came to the rule). The decision is in rs->d. */
static int run_slot(struct sl_rules *rs, struct slot *sl,
                    struct sl_event **ev, struct sl_rules_result *r) {
  struct sl_rule_decision *d = &rs->d;
  uint64_t t0 = 0;
  int64_t next;
  int timed;
  if (!sl->any_topic) {
    struct sl_str topic = sl_event_topic(*ev);
    if (!sl_rule_matches(sl->rule, topic.p, topic.len))
      return 0;
  }
  /* two clock reads cost as much as a small rule: time one call in
   * SL_RULES_TIME_EVERY (the histogram is a sample; calls_total exact) */
  timed = sl->stats && (sl->stats->calls & (SL_RULES_TIME_EVERY - 1)) == 0;
  if (timed)
    t0 = sl_mono_ns();
  sl_rule_run(sl->rule, *ev, d);
  if (sl->stats) {
    sl->stats->calls++;
    if (timed)
      sl_histogram_observe(&sl->stats->duration,
                           (double)(sl_mono_ns() - t0) / 1e9);
  }
  if (rs->loop && d->timers_changed &&
      (next = sl_rule_next_timer(sl->rule)) >= 0 &&
      (rs->next_timer_ms < 0 || next < rs->next_timer_ms))
    arm_timers(rs);
  if (d->verdict == SL_RULE_ROUTE) /* before the changes are taken: an */
    resolve_routes(rs, sl, d, r);   /* unknown output fails the call */
  if (d->changed && d->verdict != SL_RULE_ERROR) {
    sl_event_unref(*ev);
    *ev = d->changed;
  } else if (d->changed) {
    sl_event_unref(d->changed);
  }
  d->changed = NULL;
  return 1;
}


static void count_error(struct rule_stats *st,
                        const struct sl_rule_decision *d) {
  if (st == NULL)
    return;
  if (d->error == SL_RULE_ERR_CPU)
    st->err_cpu++;
  else if (d->error == SL_RULE_ERR_MEMORY)
    st->err_memory++;
  else
    st->err_runtime++;
}

/* No rule decided: the config's routes do, or nothing. Takes ev. */
static void config_route(struct sl_rules *rs, struct sl_event *ev,
                         struct sl_rules_result *r) {
  struct sl_str topic = sl_event_topic(ev);
  const struct sl_route *route;
  int j;
  r->rule = NULL;
  r->event = ev;
  route = sl_router_match(&rs->cfg->router, topic.p, topic.len);
  if (route == NULL) {
    rs->st.unrouted++;
    r->outcome = SL_RULES_UNROUTED;
    if (rs->cfg->unrouted > 0) { /* unrouted = "<output>" */
      r->ntargets = 1;
      r->targets[0] = (uint16_t)(rs->cfg->unrouted - 1);
    }
    return;
  }
  r->route = (int)(route - rs->cfg->router.routes);
  r->ntargets = route->nto;
  for (j = 0; j < route->nto; j++)
    r->targets[j] = route->to[j];
}

void sl_rules_decide(struct sl_rules *rs, struct sl_event *ev,
                     struct sl_rules_result *r) {
  struct ruleset *set = rs->live;
  struct sl_rule_decision *d = &rs->d;
  struct sl_event *orig = ev;
  int i;

  r->ntargets = 0;
  r->outcome = SL_RULES_ROUTED;
  r->route = -1;
  r->rule = NULL;
  r->reason = NULL;
  sl_event_ref(orig); /* the original stays for a dead letter */
  for (i = 0; set && i < set->n; i++) {
    struct slot *sl = &set->slots[i];
    if (!run_slot(rs, sl, &ev, r))
      continue;
    r->rule = sl->path;
    switch (d->verdict) {
    case SL_RULE_PASS:
      if (sl->stats)
        sl->stats->passed++;
      continue;
    case SL_RULE_DROP:
      if (sl->stats)
        sl->stats->dropped++;
      rs->st.dropped++;
      r->outcome = SL_RULES_DROPPED;
      snprintf(rs->reason, sizeof(rs->reason), "%s", d->message);
      r->reason = rs->reason;
      r->event = ev;
      sl_event_unref(orig);
      return;
    case SL_RULE_ROUTE:
      if (sl->stats)
        sl->stats->routed++;
      r->event = ev;
      sl_event_unref(orig);
      return;
    case SL_RULE_ERROR: {
      enum sl_rule_on_error p = policy_of(rs, sl);
      count_error(sl->stats, d);
      if (sl->stats)
        sl->stats->on_error[p - 1]++;
      if (p == SL_RULE_ON_ERROR_PASS) { /* ev is as it came to this rule */
        log_failure(rs, orig, d, "rule failed; event passed on unchanged "
                                 "(on_error = \"pass\")");
        r->rule = NULL;
        continue;
      }
      if (p == SL_RULE_ON_ERROR_DROP) {
        log_failure(rs, orig, d, "rule failed; event dropped (on_error = "
                                 "\"drop\")");
        rs->st.error_dropped++;
        r->outcome = SL_RULES_DROPPED;
        snprintf(rs->reason, sizeof(rs->reason), "on_error drop: %s",
                 d->message);
        r->reason = rs->reason;
        r->event = ev;
        sl_event_unref(orig);
        return;
      }
      sl_event_unref(ev);
      dead_letter(rs, orig, d, r);
      sl_event_unref(orig);
      return;
    }
    }
  }
  sl_event_unref(orig);
  config_route(rs, ev, r);
}

/* ---- status and metrics ------------------------------------------------ */

static void iso_time(char *out, size_t n, int64_t ns) {
  time_t s = (time_t)(ns / 1000000000);
  struct tm tm;
  gmtime_r(&s, &tm);
  strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int sl_rules_status_json(const struct sl_rules *rs, struct sl_buf *out) {
  char t[40];
  int i;
  sl_buf_printf(out, "{\"version\":%llu,\"dir\":",
                (unsigned long long)rs->st.version);
  if (rs->cfg->rules.dir)
    sl_codec_json_str(out, rs->cfg->rules.dir, strlen(rs->cfg->rules.dir));
  else
    sl_buf_append(out, "null", 4);
  sl_buf_append(out, ",\"rules\":[", 10);
  for (i = 0; rs->live && i < rs->live->n; i++) {
    const struct slot *s = &rs->live->slots[i];
    iso_time(t, sizeof(t), s->stats ? s->stats->loaded_at_ns : 0);
    sl_buf_printf(out, "%s{\"file\":", i ? "," : "");
    const char *path = sl_rule_path(s->rule);
    sl_codec_json_str(out, path, strlen(path));
    sl_buf_printf(out, ",\"hash\":\"%s\",\"version\":%llu,\"loaded_at\":\"%s\","
                       "\"memory_bytes\":%zu}",
                  sl_rule_hash(s->rule),
                  (unsigned long long)(s->stats ? s->stats->version : 0), t,
                  sl_rule_memory(s->rule));
  }
  iso_time(t, sizeof(t), rs->last_reload_ns);
  sl_buf_printf(out, "],\"last_reload\":{\"result\":\"%s\",\"at\":\"%s\","
                     "\"ms\":%llu,\"error\":",
                rs->last_result, t, (unsigned long long)rs->last_reload_ms);
  if (rs->last_error)
    sl_codec_json_str(out, rs->last_error, strlen(rs->last_error));
  else
    sl_buf_append(out, "null", 4);
  sl_buf_printf(out, "},\"reloads\":{\"ok\":%llu,\"failed\":%llu}}",
                (unsigned long long)rs->st.reloads_ok,
                (unsigned long long)rs->st.reloads_failed);
  return 0;
}

/* The rule set's families; every source is added with rs as its data. */
static const struct sl_metric m_calls = {
    "sluice_rule_calls_total", "Calls into a rule's on_event.",
    SL_METRIC_COUNTER, {"rule", NULL}};
static const struct sl_metric m_errors = {
    "sluice_rule_errors_total", "Rule failures by kind.", SL_METRIC_COUNTER,
    {"rule", "kind", NULL}};
static const struct sl_metric m_timer_errors = {
    "sluice_rule_timer_errors_total",
    "Timer runs that failed (error, cpu or memory).", SL_METRIC_COUNTER,
    {"rule", NULL}};
static const struct sl_metric m_duration = {
    "sluice_rule_duration_seconds",
    "Time in on_event (one call in 16 is timed).", SL_METRIC_HISTOGRAM,
    {"rule", NULL}};
static const struct sl_metric m_decisions = {
    "sluice_rule_decisions_total",
    "What a rule's on_event decided: routed, dropped or passed (errors "
    "are in sluice_rule_errors_total).", SL_METRIC_COUNTER,
    {"rule", "decision", NULL}};
static const struct sl_metric m_reloads = {
    "sluice_rules_reloads_total", "Rule set reloads by result.",
    SL_METRIC_COUNTER, {"result", NULL}};
static const struct sl_metric m_version = {
    "sluice_rules_version", "The live rule set's version.", SL_METRIC_GAUGE,
    {0}};
static const struct sl_metric m_value = {
    "sluice_rule_value_total", "Counters defined by rules with sluice.counter.",
    SL_METRIC_COUNTER, {"rule", "name", NULL}};
static const struct sl_metric m_dropped = {
    "sluice_events_dropped_total",
    "Events dropped, by reason (and output for full queues).",
    SL_METRIC_COUNTER, {"reason", NULL}};
static const struct sl_metric m_emitted = {
    "sluice_events_emitted_total", "Events rules emitted with sluice.emit.",
    SL_METRIC_COUNTER, {0}};
static const struct sl_metric m_on_error = {
    "sluice_rule_on_error_total",
    "Rule failures by the on_error policy that handled them.",
    SL_METRIC_COUNTER, {"rule", "policy", NULL}};
static const struct sl_metric m_dead_lettered = {
    "sluice_events_dead_lettered_total",
    "Events a failing rule sent to the dead letter output.",
    SL_METRIC_COUNTER, {0}};

static void put_decisions(struct sl_metric_out *out,
                          const struct rule_stats *s) {
  const char *v[] = {s->file, "routed"};
  sl_metric_put_u64(out, v, s->routed);
  v[1] = "dropped";
  sl_metric_put_u64(out, v, s->dropped);
  v[1] = "passed";
  sl_metric_put_u64(out, v, s->passed);
}

static void hist_add(struct sl_histogram *to, const struct sl_histogram *h) {
  int k;
  for (k = 0; k <= SL_HIST_BUCKETS; k++)
    to->buckets[k] += peek(&h->buckets[k]);
  to->count += peek(&h->count);
  to->sum += h->sum; /* an aligned double: loads whole */
}

/* rs's counters of one rule file plus every replica's of the same file
 * (see peek). */
static void file_sum(const struct sl_rules *rs, const struct rule_stats *s,
                     struct rule_stats *to) {
  int i, j, k;
  *to = *s;
  for (i = 0; i < rs->nreplicas; i++) {
    const struct sl_rules *rp = rs->replicas[i];
    for (j = 0; j < rp->nstats; j++) {
      const struct rule_stats *x = rp->stats[j];
      if (strcmp(x->file, s->file) != 0)
        continue;
      to->calls += peek(&x->calls);
      to->routed += peek(&x->routed);
      to->dropped += peek(&x->dropped);
      to->passed += peek(&x->passed);
      to->err_runtime += peek(&x->err_runtime);
      to->err_cpu += peek(&x->err_cpu);
      to->err_memory += peek(&x->err_memory);
      to->timer_errors += peek(&x->timer_errors);
      for (k = 0; k < 3; k++)
        to->on_error[k] += peek(&x->on_error[k]);
      hist_add(&to->duration, &x->duration);
      break;
    }
  }
}

/* Per rule file ever loaded (its counters outlive its versions), summed
 * over the replicas. */
static void collect_files(struct sl_metric_out *out, const struct sl_metric *m,
                          void *data) {
  static const char *const kinds[] = {"runtime", "cpu", "memory"};
  const struct sl_rules *rs = data;
  struct rule_stats sum;
  int i, k;
  for (i = 0; i < rs->nstats; i++) {
    const struct rule_stats *s = rs->stats[i];
    if (rs->nreplicas) {
      file_sum(rs, s, &sum);
      s = &sum;
    }
    const char *v[] = {s->file, NULL};
    const uint64_t errs[] = {s->err_runtime, s->err_cpu, s->err_memory};
    if (m == &m_calls)
      sl_metric_put_u64(out, v, s->calls);
    else if (m == &m_timer_errors)
      sl_metric_put_u64(out, v, s->timer_errors);
    else if (m == &m_duration)
      sl_metric_put_hist(out, v, &s->duration);
    else if (m == &m_on_error)
      for (k = 0; k < 3; k++) {
        static const char *const policies[] = {"dead_letter", "drop", "pass"};
        v[1] = policies[k];
        sl_metric_put_u64(out, v, s->on_error[k]);
      }
    else if (m == &m_decisions)
      put_decisions(out, s);
    else
      for (k = 0; k < 3; k++) {
        v[1] = kinds[k];
        sl_metric_put_u64(out, v, errs[k]);
      }
  }
}

/* One sluice.counter series of some set's rule, for merging. */
struct series {
  const char *rule, *name, *labels;
  double value;
};

struct counter_ctx {
  struct sl_metric_out *out;
  const char *rule;
  struct series *all; /* with replicas: gathered, then merged */
  size_t n, cap;
  int nomem;
};

static void on_counter(void *data, const char *name, const char *labels,
                       double value) {
  struct counter_ctx *c = data;
  const char *v[] = {c->rule, name};
  if (c->out) { /* no replicas: straight out */
    sl_metric_put_extra(c->out, v, labels, value);
    return;
  }
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 256;
    struct series *grown = realloc(c->all, cap * sizeof(*grown));
    if (grown == NULL) {
      c->nomem = 1;
      return;
    }
    c->all = grown;
    c->cap = cap;
  }
  c->all[c->n++] = (struct series){c->rule, name, labels, value};
}

static int series_cmp(const void *a, const void *b) {
  const struct series *x = a, *y = b;
  int d = strcmp(x->rule, y->rule);
  if (d == 0)
    d = strcmp(x->name, y->name);
  return d ? d : strcmp(x->labels, y->labels);
}

static void values_of(const struct sl_rules *rs, struct counter_ctx *c) {
  int i;
  for (i = 0; rs->live && i < rs->live->n; i++) {
    const struct slot *sl = &rs->live->slots[i];
    c->rule = sl->stats ? sl->stats->file : "?";
    sl_rule_counters(sl->rule, on_counter, c);
  }
}

/* The live rules' sluice.counter series; with replicas, one series per
 * rule file, name and labels holding the sum over every set. The names
 * and labels read stay valid: a replica frees a rule only in a commit,
 * while the primary's thread waits. */
static void collect_values(struct sl_metric_out *out,
                           const struct sl_metric *m, void *data) {
  const struct sl_rules *rs = data;
  struct counter_ctx c = {out, NULL, NULL, 0, 0, 0};
  size_t i, j;
  (void)m;
  if (rs->nreplicas == 0) {
    values_of(rs, &c);
    return;
  }
  c.out = NULL; /* gather */
  values_of(rs, &c);
  for (i = 0; i < (size_t)rs->nreplicas; i++)
    values_of(rs->replicas[i], &c);
  if (c.n)
    qsort(c.all, c.n, sizeof(*c.all), series_cmp);
  for (i = 0; i < c.n; i = j) {
    const char *v[] = {c.all[i].rule, c.all[i].name};
    double sum = 0;
    for (j = i; j < c.n && series_cmp(&c.all[i], &c.all[j]) == 0; j++)
      sum += c.all[j].value;
    sl_metric_put_extra(out, v, c.all[i].labels, sum);
  }
  free(c.all);
}

/* The set-wide counters, summed over the replicas: m_dropped's four
 * series, emits and dead letters. */
static void collect_totals(struct sl_metric_out *out,
                           const struct sl_metric *m, void *data) {
  const struct sl_rules_stats *st = sl_rules_stats(data);
  if (m == &m_emitted) {
    sl_metric_put_u64(out, NULL, st->emitted);
  } else if (m == &m_dead_lettered) {
    sl_metric_put_u64(out, NULL, st->dead_lettered);
  } else {
    const char *v[] = {"rule_error"};
    sl_metric_put_u64(out, v, st->error_dropped);
    v[0] = "rule";
    sl_metric_put_u64(out, v, st->dropped);
    v[0] = "unrouted";
    sl_metric_put_u64(out, v, st->unrouted);
    v[0] = "emit_unknown_output";
    sl_metric_put_u64(out, v, st->emit_failed);
  }
}

int sl_rules_metrics(struct sl_rules *rs, struct sl_metric_registry *r) {
  static const char *const ok[] = {"ok"}, *const failed[] = {"failed"};
  int rc;
  sl_metric_remove(rs->metrics, rs); /* added once, wherever */
  rs->metrics = r;
  rc = sl_metric_add(r, &m_calls, collect_files, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_errors, collect_files, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_timer_errors, collect_files, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_duration, collect_files, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_on_error, collect_files, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_dropped, collect_totals, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_decisions, collect_files, rs);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_reloads, ok, &rs->st.reloads_ok, rs);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_reloads, failed, &rs->st.reloads_failed, rs);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_version, NULL, &rs->st.version, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_value, collect_values, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_emitted, collect_totals, rs);
  if (rc == 0)
    rc = sl_metric_add(r, &m_dead_lettered, collect_totals, rs);
  return rc;
}

/* ---- state across restarts (rules.persist) ----------------------------- */

#define SL_RULES_MAX_STATE_BYTES (64u << 20)

/* <persist_dir>/<rule file>.state; caller frees. */
static char *state_path(const struct sl_rules *rs, const struct sl_rule *r) {
  const char *name = base_name(sl_rule_path(r));
  size_t n = strlen(rs->persist_dir) + strlen(name) + 8;
  char *p = malloc(n);
  if (p)
    snprintf(p, n, "%s/%s.state", rs->persist_dir, name);
  return p;
}

/* Each live rule's snapshot() to its state file. A rule without snapshot
 * keeps no file; a failing one keeps its last good file. */
static void persist_all(struct sl_rules *rs) {
  struct sl_buf snap;
  char why[1024];
  int i, rc;
  if (rs->persist_dir == NULL || rs->live == NULL)
    return;
  sl_buf_init(&snap);
  for (i = 0; i < rs->live->n; i++) {
    struct sl_rule *r = rs->live->slots[i].rule;
    char *path;
    sl_buf_reset(&snap);
    rc = sl_rule_snapshot(r, &snap, why, sizeof(why));
    if (rc == SL_ENOENT)
      continue;
    if (rc != 0) {
      sl_log(SL_LOG_WARN, "rule snapshot failed; its state file stays as it "
             "was", SL_S("rule", sl_rule_path(r)), SL_S("error", why), SL_END);
      continue;
    }
    path = state_path(rs, r);
    if (path && sl_statefile_write(path, snap.data, snap.len, why,
                                   sizeof(why)) != 0)
      sl_log(SL_LOG_WARN, "cannot write the rule's state file",
             SL_S("rule", sl_rule_path(r)), SL_S("error", why), SL_END);
    free(path);
  }
  sl_buf_close(&snap);
}

/* One live rule's state file handed to its restore(); a file that is not
 * whole or not ours is logged, moved aside (.corrupt) and skipped. */
static void restore_one(struct sl_rules *rs, struct sl_rule *r,
                        struct sl_buf *data) {
  char why[1024], aside[4200];
  int64_t saved = 0;
  char *path = state_path(rs, r);
  int rc;
  if (path == NULL)
    return;
  rc = sl_statefile_read(path, data, SL_RULES_MAX_STATE_BYTES, &saved, why,
                         sizeof(why));
  if (rc == SL_EPROTO) {
    snprintf(aside, sizeof(aside), "%s.corrupt", path);
    rename(path, aside);
    sl_log(SL_LOG_WARN, "rule state file is corrupt; skipped (the rule "
           "starts fresh)", SL_S("rule", sl_rule_path(r)), SL_S("file", path),
           SL_S("error", why), SL_S("moved_to", aside), SL_END);
  } else if (rc != 0 && rc != SL_ENOENT) {
    sl_log(SL_LOG_WARN, "cannot read the rule's state file; skipped",
           SL_S("rule", sl_rule_path(r)), SL_S("file", path),
           SL_S("error", why), SL_END);
  } else if (rc == 0 &&
             (rc = sl_rule_restore(r, data->data, data->len, why,
                                   sizeof(why))) != 0) {
    sl_log(SL_LOG_WARN, "rule restore() failed on its saved state; the rule "
           "starts fresh", SL_S("rule", sl_rule_path(r)), SL_S("file", path),
           SL_S("error", why), SL_END);
  } else if (rc == 0) {
    sl_log(SL_LOG_INFO, "rule state restored", SL_S("rule", sl_rule_path(r)),
           SL_S("file", path), SL_U("bytes", data->len),
           SL_I("saved_at_ns", saved), SL_END);
  }
  free(path);
}

static void on_persist_timer(uv_timer_t *t) {
  persist_all(container_of(t, struct sl_rules, persist_timer));
}

int sl_rules_persist(struct sl_rules *rs, const char *dir,
                     uint32_t interval_s) {
  struct sl_buf data;
  int i;
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    return -errno;
  free(rs->persist_dir);
  rs->persist_dir = strdup(dir);
  if (rs->persist_dir == NULL)
    return SL_ENOMEM;
  sl_buf_init(&data);
  for (i = 0; rs->live && i < rs->live->n; i++)
    if (sl_rule_has_restore(rs->live->slots[i].rule))
      restore_one(rs, rs->live->slots[i].rule, &data);
  sl_buf_close(&data);
  if (rs->loop && !rs->persist_timer_open && interval_s > 0) {
    uv_timer_init(rs->loop, &rs->persist_timer);
    uv_timer_start(&rs->persist_timer, on_persist_timer,
                   (uint64_t)interval_s * 1000, (uint64_t)interval_s * 1000);
    uv_unref((uv_handle_t *)&rs->persist_timer);
    rs->persist_timer_open = 1;
  }
  return 0;
}

void sl_rules_shutdown(struct sl_rules *rs) {
  char why[1024];
  int i;
  if (rs == NULL || rs->shut)
    return;
  rs->shut = 1;
  if (rs->persist_timer_open)
    uv_timer_stop(&rs->persist_timer);
  for (i = 0; rs->live && i < rs->live->n; i++) {
    struct sl_rule *r = rs->live->slots[i].rule;
    int rc = sl_rule_stop(r, why, sizeof(why));
    if (rc != 0 && rc != SL_ENOENT)
      sl_log(SL_LOG_WARN, "rule on_stop failed", SL_S("rule", sl_rule_path(r)),
             SL_S("error", why), SL_END);
  }
  persist_all(rs);
}
