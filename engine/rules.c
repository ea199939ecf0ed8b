/* rules.c - the live rule set and hot reload; see rules.h.
 * A set is an array of loaded rules with the version it was built as. A
 * reload builds the whole next set (load, contract check, on_start, state
 * handover) before it touches the live one, so a bad file never handles an
 * event. Events are decided synchronously on the loop thread, so a swap
 * between two decide calls is a swap at an event boundary. */
#include "rules.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "sandbox.h"

#define SL_RULES_TIME_EVERY 16 /* a power of two */

const double sl_histogram_bounds[SL_HIST_BUCKETS] = {
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4,
    2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1};

/* What we keep per rule file across versions. */
struct rule_stats {
  char *file; /* name inside the rules dir */
  char hash[65];
  uint64_t version; /* bumped when the file's content changes */
  int64_t loaded_at_ns;
  uint64_t calls, routed, dropped, passed;
  uint64_t err_runtime, err_cpu, err_memory;
  struct sl_histogram duration;
  int present; /* in the live set */
};

struct slot {
  struct sl_rule *rule;
  struct rule_stats *stats;
};

struct ruleset {
  uint64_t version;
  struct slot *slots;
  int n;
};

struct sl_rules {
  const struct sl_config *cfg;
  uv_loop_t *loop;
  struct sl_idgen *idgen;
  struct sl_rules_owner owner;
  struct sl_rule_host host;
  struct sl_rule_limits limits;
  struct ruleset *live;
  struct rule_stats **stats; /* every file ever loaded */
  int nstats;
  uv_fs_event_t watch, watch_lib;
  uv_timer_t debounce, timers;
  int watching, watching_lib, stopped;
  int64_t next_timer_ms;
  struct sl_rule_decision d;
  char reason[600];
  char last_result[16];
  char *last_error;
  int64_t last_reload_ns;
  uint64_t last_reload_ms;
  char scripts_dir[4096], lib_dir[4096];
  char *status_file;
  struct sl_log_limiter error_log;
  struct sl_rules_stats st;
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

/* ---- sets -------------------------------------------------------------- */

static void set_free(struct ruleset *s) {
  int i;
  if (s == NULL)
    return;
  for (i = 0; i < s->n; i++)
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
    free(s);
    if (grown)
      rs->stats = grown;
    return NULL;
  }
  rs->stats = grown;
  rs->stats[rs->nstats++] = s;
  return s;
}

/* Build the next set from the dir. On error NULL with err filled. */
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
    struct sl_rule *r;
    snprintf(path, sizeof(path), "%s/%s", rs->cfg->rules.dir,
             names[i]->d_name);
    r = sl_rule_load(path, &rs->limits, &rs->host, err, errlen);
    if (r == NULL)
      goto fail;
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

/* Hand state from the live set's rules to the new set's, by file name. */
static int handover(struct sl_rules *rs, struct ruleset *next, char *err,
                    size_t errlen) {
  struct sl_buf snap;
  int i, j, rc = 0;

  if (rs->live == NULL)
    return 0;
  sl_buf_init(&snap);
  for (i = 0; i < next->n && rc == 0; i++) {
    const char *name = base_name(sl_rule_path(next->slots[i].rule));
    for (j = 0; j < rs->live->n; j++) {
      struct sl_rule *old = rs->live->slots[j].rule;
      if (strcmp(base_name(sl_rule_path(old)), name) != 0)
        continue;
      sl_buf_reset(&snap);
      rc = sl_rule_snapshot(old, &snap, err, errlen);
      if (rc == SL_ENOENT) {
        rc = 0; /* nothing to hand over */
        break;
      }
      if (rc != 0)
        break;
      rc = sl_rule_restore(next->slots[i].rule, snap.data, snap.len, err,
                           errlen);
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
    if (strcmp(st->hash, sl_rule_hash(r)) != 0 || !was_live) {
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
  set_free(rs->live); /* no event is inside it: decide is synchronous */
  rs->live = next;
  arm_timers(rs);
}

int sl_rules_reload(struct sl_rules *rs, const char *trigger) {
  char err[1024] = "";
  struct ruleset *next;
  struct sl_buf changes;
  uint64_t t0 = sl_mono_ns(), ms;
  int changed, rc, forced = strcmp(trigger, "watch") != 0;

  next = set_build(rs, err, sizeof(err), &changed);
  if (next && !changed && !forced) {
    set_free(next);
    sl_log(SL_LOG_DEBUG, "rules unchanged; reload skipped",
           SL_S("trigger", trigger), SL_END);
    return 0;
  }
  if (next && (rc = handover(rs, next, err, sizeof(err))) != 0) {
    set_free(next);
    next = NULL;
  }
  ms = (sl_mono_ns() - t0) / 1000000u;
  rs->last_reload_ns = sl_now_ns();
  rs->last_reload_ms = ms;
  free(rs->last_error);
  rs->last_error = NULL;
  if (next == NULL) {
    rs->st.reloads_failed++;
    snprintf(rs->last_result, sizeof(rs->last_result), "failed");
    rs->last_error = strdup(err);
    sl_log(SL_LOG_ERROR, "rules reload rejected; the live version stays",
           SL_S("trigger", trigger), SL_U("live_version", rs->st.version),
           SL_S("error", err), SL_U("ms", ms), SL_END);
    write_status(rs);
    return SL_EINVAL;
  }
  sl_buf_init(&changes);
  swap_in(rs, next, &changes);
  sl_buf_putc(&changes, '\0');
  rs->st.reloads_ok++;
  snprintf(rs->last_result, sizeof(rs->last_result), "ok");
  sl_log(SL_LOG_INFO, "rules reloaded", SL_S("trigger", trigger),
         SL_U("version", rs->st.version), SL_I("rules", next->n),
         SL_S("files_changed", changes.data ? (const char *)changes.data : ""),
         SL_U("ms", ms), SL_END);
  sl_buf_close(&changes);
  write_status(rs);
  return 0;
}

/* ---- watching and timers ----------------------------------------------- */

static void on_debounce(uv_timer_t *t) {
  struct sl_rules *rs = container_of(t, struct sl_rules, debounce);
  sl_rules_reload(rs, "watch");
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events,
                        int status) {
  struct sl_rules *rs = h->data;
  (void)filename;
  (void)events;
  if (status != 0 || rs->stopped)
    return;
  /* editors write in bursts (temp file, rename, chmod): wait for quiet */
  uv_timer_start(&rs->debounce, on_debounce, rs->cfg->rules.debounce_ms, 0);
}

static void on_rule_timers(uv_timer_t *t) {
  struct sl_rules *rs = container_of(t, struct sl_rules, timers);
  int64_t now = (int64_t)(sl_mono_ns() / 1000000u);
  int i;
  if (rs->live)
    for (i = 0; i < rs->live->n; i++) {
      struct sl_rule *r = rs->live->slots[i].rule;
      int64_t due = sl_rule_next_timer(r);
      if (due >= 0 && due <= now)
        sl_rule_run_timers(r, now);
    }
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
  now = (int64_t)(sl_mono_ns() / 1000000u);
  uv_timer_start(&rs->timers, on_rule_timers,
                 next > now ? (uint64_t)(next - now) : 0, 0);
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
  sl_log_limiter_init(&rs->error_log, 10000, 20);
  rs->limits.cpu_budget_ms = cfg->rules.cpu_budget_ms;
  rs->limits.memory_mb = cfg->rules.memory_mb;
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
    free(rs);
    return NULL;
  }
  if (loop) {
    uv_timer_init(loop, &rs->debounce);
    uv_timer_init(loop, &rs->timers);
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
  if (first->n > 0 && loop)
    sl_log(SL_LOG_INFO, "rules loaded", SL_U("version", rs->st.version),
           SL_I("rules", first->n), SL_S("dir", cfg->rules.dir), SL_END);
  return rs;
}

void sl_rules_stop(struct sl_rules *rs) {
  if (rs == NULL || rs->stopped)
    return;
  rs->stopped = 1;
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
  set_free(rs->live);
  for (i = 0; i < rs->nstats; i++) {
    free(rs->stats[i]->file);
    free(rs->stats[i]);
  }
  free(rs->stats);
  free(rs->last_error);
  free(rs->status_file);
  free(rs);
}

void sl_rules_set_status_file(struct sl_rules *rs, const char *path) {
  free(rs->status_file);
  rs->status_file = path ? strdup(path) : NULL;
  write_status(rs);
}

/* Write to a temp file and rename, so a reader never sees half of it. */
static void write_status(struct sl_rules *rs) {
  char tmp[4200];
  struct sl_buf b;
  FILE *f;
  if (rs->status_file == NULL)
    return;
  sl_buf_init(&b);
  sl_rules_status_json(rs, &b);
  snprintf(tmp, sizeof(tmp), "%s.tmp", rs->status_file);
  f = fopen(tmp, "w");
  if (f) {
    int ok = fwrite(b.data, 1, b.len, f) == b.len;
    ok = fputc('\n', f) != EOF && ok;
    if (fclose(f) == 0 && ok)
      rename(tmp, rs->status_file);
  }
  sl_buf_close(&b);
}

const struct sl_rules_stats *sl_rules_stats(const struct sl_rules *rs) {
  return &rs->st;
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
  a = sl_event_with_header(orig, "sluice-error", d->message,
                           strlen(d->message));
  if (a)
    b = sl_event_with_header(a, "sluice-rule", d->where, strlen(d->where));
  sl_event_unref(a);
  if (b == NULL || rs->cfg->dead_letter < 0) {
    sl_event_unref(b);
    r->ntargets = 0; /* counted above; nowhere to put it */
    sl_event_ref(orig);
    r->event = orig;
    return;
  }
  r->event = b;
  r->ntargets = 1;
  r->targets[0] = (uint16_t)rs->cfg->dead_letter;
}

void sl_rules_decide(struct sl_rules *rs, struct sl_event *ev,
                     struct sl_rules_result *r) {
  struct ruleset *set = rs->live;
  struct sl_event *orig = ev;
  struct sl_str topic;
  const struct sl_route *route;
  int i, j;

  r->ntargets = 0;
  r->outcome = SL_RULES_ROUTED;
  r->route = -1;
  r->rule = NULL;
  r->reason = NULL;
  sl_event_ref(orig); /* the original stays for a dead letter */
  for (i = 0; set && i < set->n; i++) {
    struct slot *sl = &set->slots[i];
    struct sl_rule_decision *d = &rs->d;
    uint64_t t0 = 0;
    int64_t next;
    int timed;
    topic = sl_event_topic(ev);
    if (!sl_rule_matches(sl->rule, topic.p, topic.len))
      continue;
    /* two clock reads cost as much as a small rule: time one call in
     * SL_RULES_TIME_EVERY (the histogram is a sample; calls_total exact) */
    timed = sl->stats && (sl->stats->calls & (SL_RULES_TIME_EVERY - 1)) == 0;
    if (timed)
      t0 = sl_mono_ns();
    sl_rule_run(sl->rule, ev, d);
    if (sl->stats) {
      sl->stats->calls++;
      if (timed)
        sl_histogram_observe(&sl->stats->duration,
                             (double)(sl_mono_ns() - t0) / 1e9);
    }
    if (rs->loop && (next = sl_rule_next_timer(sl->rule)) >= 0 &&
        (rs->next_timer_ms < 0 || next < rs->next_timer_ms))
      arm_timers(rs);
    if (d->changed && d->verdict != SL_RULE_ERROR) {
      sl_event_unref(ev);
      ev = d->changed;
      d->changed = NULL;
    } else if (d->changed) {
      sl_event_unref(d->changed);
      d->changed = NULL;
    }
    r->rule = sl_rule_path(sl->rule);
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
      for (j = 0; j < d->nroutes; j++) {
        int idx = sl_config_output_index(rs->cfg, d->routes[j],
                                         strlen(d->routes[j]));
        if (idx < 0) {
          d->verdict = SL_RULE_ERROR;
          d->error = SL_RULE_ERR_RUNTIME;
          snprintf(d->message, sizeof(d->message),
                   "%s: on_event returned unknown output \"%s\"",
                   sl_rule_path(sl->rule), d->routes[j]);
          snprintf(d->where, sizeof(d->where), "%s", sl_rule_path(sl->rule));
          break;
        }
        r->targets[r->ntargets++] = (uint16_t)idx;
      }
      if (d->verdict == SL_RULE_ROUTE) {
        if (sl->stats)
          sl->stats->routed++;
        r->event = ev;
        sl_event_unref(orig);
        return;
      }
      r->ntargets = 0;
      /* fall through: an unknown output is the rule's error */
      /* FALLTHRU */
    case SL_RULE_ERROR:
      if (sl->stats) {
        if (d->error == SL_RULE_ERR_CPU)
          sl->stats->err_cpu++;
        else if (d->error == SL_RULE_ERR_MEMORY)
          sl->stats->err_memory++;
        else
          sl->stats->err_runtime++;
      }
      sl_event_unref(ev);
      dead_letter(rs, orig, d, r);
      sl_event_unref(orig);
      return;
    }
  }
  sl_event_unref(orig);
  r->rule = NULL;
  r->event = ev;
  topic = sl_event_topic(ev);
  route = sl_router_match(&rs->cfg->router, topic.p, topic.len);
  if (route == NULL) {
    rs->st.unrouted++;
    r->outcome = SL_RULES_UNROUTED;
    return;
  }
  r->route = (int)(route - rs->cfg->router.routes);
  r->ntargets = route->nto;
  for (j = 0; j < route->nto; j++)
    r->targets[j] = route->to[j];
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

struct counter_ctx {
  struct sl_buf *out;
  const char *rule;
};

static void on_counter(void *data, const char *name, const char *labels,
                       double value) {
  struct counter_ctx *c = data;
  sl_buf_printf(c->out, "sluice_rule_value{rule=\"%s\",name=\"%s\"%s%s} %.17g\n",
                c->rule, name, labels[0] ? "," : "", labels, value);
}

int sl_rules_metrics(const struct sl_rules *rs, struct sl_buf *out) {
  int i, k;
  sl_buf_printf(out,
                "# HELP sluice_rule_calls_total Calls into a rule's on_event.\n"
                "# TYPE sluice_rule_calls_total counter\n");
  for (i = 0; i < rs->nstats; i++)
    sl_buf_printf(out, "sluice_rule_calls_total{rule=\"%s\"} %llu\n",
                  rs->stats[i]->file, (unsigned long long)rs->stats[i]->calls);
  sl_buf_printf(out,
                "# HELP sluice_rule_errors_total Rule failures by kind.\n"
                "# TYPE sluice_rule_errors_total counter\n");
  for (i = 0; i < rs->nstats; i++) {
    const struct rule_stats *s = rs->stats[i];
    sl_buf_printf(out,
                  "sluice_rule_errors_total{rule=\"%s\",kind=\"runtime\"} %llu\n"
                  "sluice_rule_errors_total{rule=\"%s\",kind=\"cpu\"} %llu\n"
                  "sluice_rule_errors_total{rule=\"%s\",kind=\"memory\"} %llu\n",
                  s->file, (unsigned long long)s->err_runtime, s->file,
                  (unsigned long long)s->err_cpu, s->file,
                  (unsigned long long)s->err_memory);
  }
  sl_buf_printf(out, "# HELP sluice_rule_duration_seconds Time in on_event "
                     "(one call in 16 is timed).\n"
                     "# TYPE sluice_rule_duration_seconds histogram\n");
  for (i = 0; i < rs->nstats; i++) {
    const struct rule_stats *s = rs->stats[i];
    uint64_t cum = 0;
    for (k = 0; k < SL_HIST_BUCKETS; k++) {
      cum += s->duration.buckets[k];
      sl_buf_printf(out,
                    "sluice_rule_duration_seconds_bucket{rule=\"%s\",le=\"%g\"} "
                    "%llu\n",
                    s->file, sl_histogram_bounds[k], (unsigned long long)cum);
    }
    cum += s->duration.buckets[SL_HIST_BUCKETS];
    sl_buf_printf(out,
                  "sluice_rule_duration_seconds_bucket{rule=\"%s\",le=\"+Inf\"} "
                  "%llu\n"
                  "sluice_rule_duration_seconds_sum{rule=\"%s\"} %.9f\n"
                  "sluice_rule_duration_seconds_count{rule=\"%s\"} %llu\n",
                  s->file, (unsigned long long)cum, s->file, s->duration.sum,
                  s->file, (unsigned long long)s->duration.count);
  }
  sl_buf_printf(out,
                "# HELP sluice_rules_reloads_total Rule set reloads by result.\n"
                "# TYPE sluice_rules_reloads_total counter\n"
                "sluice_rules_reloads_total{result=\"ok\"} %llu\n"
                "sluice_rules_reloads_total{result=\"failed\"} %llu\n"
                "# HELP sluice_rules_version The live rule set's version.\n"
                "# TYPE sluice_rules_version gauge\n"
                "sluice_rules_version %llu\n",
                (unsigned long long)rs->st.reloads_ok,
                (unsigned long long)rs->st.reloads_failed,
                (unsigned long long)rs->st.version);
  sl_buf_printf(out, "# HELP sluice_rule_value Counters defined by rules "
                     "with sluice.counter.\n# TYPE sluice_rule_value gauge\n");
  for (i = 0; rs->live && i < rs->live->n; i++) {
    struct counter_ctx c = {out, base_name(sl_rule_path(rs->live->slots[i].rule))};
    sl_rule_counters(rs->live->slots[i].rule, on_counter, &c);
  }
  return 0;
}
