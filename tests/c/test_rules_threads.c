/* test_rules_threads.c - rule sets of several workers (engine/lua/rules.c)
 * at once: two sets built from the same rules folder and config decide on
 * two threads at the same time (payload reads and writes, ev.topic, emit,
 * sluice.counter, seen, rate_limit, runtime errors, CPU and memory
 * budgets, dead letters), every result checked; the primary's metrics and
 * stats sum the replica's (read while both run); the two-phase reload
 * (prepare on every set, then commit on all or abort on all; a broken
 * file refusing prepare; "watch" with nothing changed); and the watcher
 * routing its reload through the owner.
 * TEST_RULES_THREADS_N sets the events per thread (valgrind runs fewer). */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "config.h"
#include "log.h"
#include "metric.h"
#include "plugins.h"
#include "rules.h"
#include "test.h"

#define NSETS 2

__attribute__((constructor)) static void quiet(void) {
  sl_log_set_fd(open("/dev/null", O_WRONLY)); /* failures log */
}

static void write_file(const char *dir, const char *name, const char *text) {
  char path[256];
  FILE *f;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

/* One worker: its set, id generator and what its owner callback got. */
struct worker {
  struct sl_rules *rs;
  struct sl_idgen g;
  int id, nevents;
  uint64_t emitted, emit_bad; /* emits seen / with a wrong topic */
  uint64_t reloads_asked;     /* owner->reload calls (watcher test) */
  uv_loop_t *loop;
  /* results, counted per kind */
  uint64_t ok, bad;
  char first_bad[512];
  int prepare_rc;
  char err[1024];
};

/* The rules folder and config shared by every set, as the workers share
 * the worker's config. */
struct fixture {
  char dir[64], rules[96];
  struct sl_config *cfg;
  struct worker w[NSETS];
};

static const char *const RULES[][2] = {
    {"10_pay.lua",
     "local paid = sluice.counter('pay_total', { kind = 'pay' })\n"
     "return { topics = 'pay.*', on_event = function(ev)\n"
     "  local n = ev.payload.n\n"
     "  paid:inc()\n"
     "  if n % 7 == 0 then return sluice.drop('seven ' .. n) end\n"
     "  if n % 2 == 0 then ev.payload.even = true end\n"
     "  if n % 10 == 1 then\n"
     "    sluice.emit('b', { topic = 'em.' .. n, payload = { n = n } })\n"
     "  end\n"
     "  return 'a'\n"
     "end }\n"},
    {"20_topic.lua",
     "return { topics = 't.*', on_event = function(ev)\n"
     "  if ev.topic == 't.a' then return 'a' end\n"
     "  return 'b'\n"
     "end }\n"},
    {"30_seen.lua",
     "return { topics = 'dup.*', on_event = function(ev)\n"
     "  if sluice.seen(ev.key, 600000) then return sluice.drop('dup') end\n"
     "  return 'a'\n"
     "end }\n"},
    {"40_rate.lua",
     "return { topics = 'rl.*', on_event = function(ev)\n"
     "  if not sluice.rate_limit(ev.key, 0.0001, 3) then\n"
     "    return sluice.drop('rate')\n"
     "  end\n"
     "  return 'b'\n"
     "end }\n"},
    {"50_fail.lua",
     "return { topics = { 'err.*', 'cpu.*', 'mem.*' },\n"
     "  on_event = function(ev)\n"
     "  if ev.topic == 'err.x' then error('boom ' .. ev.payload.n) end\n"
     "  if ev.topic == 'cpu.x' then while true do end end\n"
     "  local s = string.rep('m', 20000000)\n" /* over memory_mb at once */
     "  while true do s = s .. s end\n"
     "end }\n"},
};

static int fixture_init(struct fixture *f, int watch, int jit) {
  char conf[768];
  struct sl_buf err;
  size_t i;
  memset(f, 0, sizeof(*f));
  snprintf(f->dir, sizeof(f->dir), "/tmp/sluice-test-rthreads-XXXXXX");
  if (mkdtemp(f->dir) == NULL)
    return -1;
  snprintf(f->rules, sizeof(f->rules), "%s/rules", f->dir);
  mkdir(f->rules, 0700);
  for (i = 0; i < sizeof(RULES) / sizeof(RULES[0]); i++)
    write_file(f->rules, RULES[i][0], RULES[i][1]);
  snprintf(conf, sizeof(conf),
           "return { inputs = {{name='in', type='tcp', "
           "listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='a', type='null'}, {name='b', type='null'}},\n"
           " routes = {{topics='cfg.*', to='b'}},\n"
           " rules = { dir = '%s', watch = %s, debounce_ms = 20,\n"
           "           cpu_budget_ms = 50, memory_mb = 16, jit = %s } }\n",
           f->rules, watch ? "true" : "false", jit ? "true" : "false");
  write_file(f->dir, "c.lua", conf);
  snprintf(conf, sizeof(conf), "%s/c.lua", f->dir);
  sl_buf_init(&err);
  f->cfg = sl_config_load(conf, sl_plugins, &err);
  sl_buf_close(&err);
  return f->cfg ? 0 : -1;
}

static void on_emit(void *data, int output, struct sl_event *ev) {
  struct worker *w = data;
  struct sl_str t = sl_event_topic(ev);
  w->emitted++;
  if (output != 1 || t.len < 4 || memcmp(t.p, "em.", 3) != 0)
    w->emit_bad++;
  sl_event_unref(ev);
}

static int on_reload(void *data, const char *trigger) {
  struct worker *w = data;
  w->reloads_asked++;
  if (w->loop)
    uv_stop(w->loop);
  return strcmp(trigger, "watch") == 0 ? 0 : -1;
}

static int start(struct fixture *f, int i, uv_loop_t *loop) {
  struct worker *w = &f->w[i];
  struct sl_rules_owner owner = {w, on_emit, on_reload, 0};
  w->id = i;
  w->loop = loop;
  sl_idgen_init(&w->g);
  w->rs = sl_rules_new(f->cfg, loop, &w->g, &owner, w->err, sizeof(w->err));
  return w->rs ? 0 : -1;
}

static void fixture_close(struct fixture *f) {
  char cmd[128];
  int i;
  for (i = 0; i < NSETS; i++)
    if (f->w[i].rs)
      sl_rules_stop(f->w[i].rs);
  for (i = 0; i < NSETS; i++) /* primary (0) first: it reads the others */
    sl_rules_free(f->w[i].rs);
  sl_config_free(f->cfg);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", f->dir);
}

/* {"n": n} as msgpack. */
static struct sl_event *event(struct worker *w, const char *topic,
                              const char *key, uint32_t n) {
  struct sl_str none = {NULL, 0}, t = {topic, (uint32_t)strlen(topic)};
  struct sl_str k = {key, key ? (uint32_t)strlen(key) : 0};
  uint8_t p[8] = {0x81, 0xa1, 'n', 0xce, (uint8_t)(n >> 24),
                  (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
  return sl_event_new(&w->g, none, t, key ? k : none, 1, 1000, NULL, 0, p,
                      sizeof(p), 0);
}

static int has(const struct sl_event *ev, const char *bytes, size_t n) {
  return memmem(ev->data, ev->len, bytes, n) != NULL;
}

/* What event i of a run is and what must become of it. */
enum kind { K_PAY, K_TOPIC_A, K_TOPIC_B, K_DUP, K_RATE, K_ERR, K_CFG,
            K_NONE, K_CPU, K_MEM, NKINDS };

static enum kind kind_of(int i) {
  if (i % 4000 == 3999)
    return K_CPU; /* 50 ms each: a few per run */
  if (i % 10000 == 5001)
    return K_MEM;
  return (enum kind)(i % 8);
}

#define FAIL(...)                                                   \
  do {                                                              \
    if (w->bad++ == 0)                                              \
      snprintf(w->first_bad, sizeof(w->first_bad), __VA_ARGS__);   \
    goto done;                                                      \
  } while (0)

/* Decide event i on w's set and check the result; the result's rule and
 * reason are copied right after the call, as a replica does. */
static void one(struct worker *w, const struct sl_config *cfg, int i) {
  static const char *const topics[NKINDS] = {
      "pay.x", "t.a", "t.b", "dup.x", "rl.x", "err.x", "cfg.x", "none.x",
      "cpu.x", "mem.x"};
  enum kind k = kind_of(i);
  char key[32], rule[128] = "", reason[600] = "", want[64];
  struct sl_rules_result r;
  /* keys: dup: each key twice (i and i+8); rate: 5 events a key */
  if (k == K_DUP)
    snprintf(key, sizeof(key), "d%d", (i / 16));
  else
    snprintf(key, sizeof(key), "r%d", i / 40);
  sl_rules_decide(w->rs, event(w, topics[k], key, (uint32_t)i), &r);
  if (r.rule)
    snprintf(rule, sizeof(rule), "%s", r.rule);
  if (r.reason)
    snprintf(reason, sizeof(reason), "%s", r.reason);
  switch (k) {
  case K_PAY:
    snprintf(want, sizeof(want), "seven %d", i);
    if (i % 7 == 0) {
      if (r.outcome != SL_RULES_DROPPED || strcmp(reason, want) != 0)
        FAIL("pay %d: not dropped as seven (%d %s)", i, r.outcome, reason);
      break;
    }
    if (r.outcome != SL_RULES_ROUTED || r.ntargets != 1 || r.targets[0] != 0 ||
        strstr(rule, "10_pay.lua") == NULL)
      FAIL("pay %d: not routed to a by 10_pay (%d %s)", i, r.outcome, rule);
    if (has(r.event, "\xa4" "even\xc3", 6) != (i % 2 == 0) ||
        !has(r.event, "\xa1n", 2))
      FAIL("pay %d: payload wrong", i);
    break;
  case K_TOPIC_A:
  case K_TOPIC_B:
    if (r.outcome != SL_RULES_ROUTED || r.ntargets != 1 ||
        r.targets[0] != (k == K_TOPIC_A ? 0 : 1))
      FAIL("topic %d: wrong target", i);
    break;
  case K_DUP: /* key d<i/16>: the first of the pair passes */
    if (((i / 8) % 2 == 0) != (r.outcome == SL_RULES_ROUTED) ||
        (r.outcome == SL_RULES_DROPPED && strcmp(reason, "dup") != 0))
      FAIL("dup %d: outcome %d", i, r.outcome);
    break;
  case K_RATE: /* 5 a key (i/40), 3 allowed */
    if (((i % 40) / 8 < 3) != (r.outcome == SL_RULES_ROUTED))
      FAIL("rate %d: outcome %d", i, r.outcome);
    break;
  case K_ERR:
    snprintf(want, sizeof(want), "boom %d", i);
    if (r.outcome != SL_RULES_FAILED || strstr(reason, want) == NULL ||
        r.ntargets != 1 || r.targets[0] != cfg->dead_letter ||
        !has(r.event, "sluice-error", 12))
      FAIL("err %d: not a dead letter (%d %s)", i, r.outcome, reason);
    break;
  case K_CPU:
  case K_MEM:
    if (r.outcome != SL_RULES_FAILED ||
        strstr(reason, k == K_CPU ? "cpu budget" : "memory") == NULL)
      FAIL("budget %d: %d %s", i, r.outcome, reason);
    break;
  case K_CFG:
    if (r.outcome != SL_RULES_ROUTED || r.route != 0 || r.targets[0] != 1 ||
        r.rule != NULL)
      FAIL("cfg %d: not the config's route", i);
    break;
  default:
    if (r.outcome != SL_RULES_UNROUTED)
      FAIL("none %d: outcome %d", i, r.outcome);
    break;
  }
  w->ok++;
done:
  sl_event_unref(r.event);
}

struct run {
  struct worker *w;
  const struct sl_config *cfg;
};

static void *run_events(void *arg) {
  struct run *run = arg;
  int i;
  for (i = 0; i < run->w->nevents; i++)
    one(run->w, run->cfg, i);
  return NULL;
}

static int events_per_thread(void) {
  const char *n = getenv("TEST_RULES_THREADS_N");
  return n ? atoi(n) : 20000;
}

/* The sum of a family's series with this text in their labels. */
static double metric_sum(const char *text, const char *prefix) {
  double sum = 0;
  const char *p = text;
  size_t n = strlen(prefix);
  while ((p = strstr(p, prefix)) != NULL) {
    const char *sp = strchr(p, ' ');
    if (sp && (p == text || p[-1] == '\n'))
      sum += atof(sp + 1);
    p += n;
  }
  return sum;
}

static int count_lines(const char *text, const char *prefix) {
  int c = 0;
  const char *p = text;
  while ((p = strstr(p, prefix)) != NULL) {
    if (p == text || p[-1] == '\n')
      c++;
    p++;
  }
  return c;
}

/* rules.jit: each set's states compiled, the CPU overruns of both threads
 * stopped by the one profiler interrupt (state.c), every result as with
 * the interpreter. */
static void two_sets_decide(int *failed__, int jit);

TEST(rules_two_sets_decide_on_two_threads_at_once_and_metrics_sum) {
  two_sets_decide(failed__, 0);
}

TEST(rules_two_sets_decide_on_two_threads_at_once_with_the_jit_on) {
  two_sets_decide(failed__, 1);
}

static void two_sets_decide(int *failed__, int jit) {
  struct fixture f;
  struct run runs[NSETS];
  pthread_t th[NSETS];
  struct sl_metric_registry *reg = sl_metric_registry_new();
  struct sl_buf b;
  const struct sl_rules_stats *st;
  int i, n = events_per_thread(), pay = 0, sevens = 0, emits = 0, errs = 0;
  const char *t;

  CHECK(reg != NULL);
  CHECK_EQ(fixture_init(&f, 0, jit), 0);
  for (i = 0; i < NSETS; i++) {
    CHECK_EQ(start(&f, i, NULL), 0);
    f.w[i].nevents = n;
    runs[i].w = &f.w[i];
    runs[i].cfg = f.cfg;
    if (i > 0)
      CHECK_EQ(sl_rules_add_replica(f.w[0].rs, f.w[i].rs), 0);
  }
  CHECK_EQ(sl_rules_add_replica(f.w[0].rs, f.w[0].rs), SL_EINVAL);
  CHECK_EQ(sl_rules_metrics(f.w[0].rs, reg), 0);
  for (i = 0; i < NSETS; i++)
    CHECK_EQ(pthread_create(&th[i], NULL, run_events, &runs[i]), 0);
  sl_buf_init(&b);
  for (i = 0; i < 20; i++) { /* read the counters while they change */
    sl_buf_reset(&b);
    sl_metric_render(reg, &b);
    (void)sl_rules_stats(f.w[0].rs);
    usleep(1000);
  }
  for (i = 0; i < NSETS; i++)
    pthread_join(th[i], NULL);
  for (i = 0; i < NSETS; i++) {
    if (f.w[i].bad)
      fprintf(stderr, "  worker %d: %llu bad, first: %s\n", i,
              (unsigned long long)f.w[i].bad, f.w[i].first_bad);
    CHECK_EQ(f.w[i].bad, 0);
    CHECK_EQ(f.w[i].ok, (uint64_t)n);
    CHECK_EQ(f.w[i].emit_bad, 0);
  }
  for (i = 0; i < n; i++) {
    enum kind k = kind_of(i);
    pay += k == K_PAY;
    sevens += k == K_PAY && i % 7 == 0;
    emits += k == K_PAY && i % 7 != 0 && i % 10 == 1;
    errs += k == K_ERR || k == K_CPU || k == K_MEM;
  }
  CHECK_EQ(f.w[0].emitted, (uint64_t)emits);
  CHECK_EQ(f.w[1].emitted, (uint64_t)emits);

  /* stats and metrics of the primary: the sum over both sets */
  st = sl_rules_stats(f.w[0].rs);
  CHECK_EQ(st->emitted, (uint64_t)(NSETS * emits));
  CHECK_EQ(st->dead_lettered, (uint64_t)(NSETS * errs));
  CHECK_EQ(st->version, 1u); /* the primary's own */
  CHECK_EQ(sl_rules_version(f.w[0].rs), 1u);
  sl_buf_reset(&b);
  CHECK_EQ(sl_metric_render(reg, &b), 0);
  CHECK_EQ(sl_buf_putc(&b, '\0'), 0);
  t = (const char *)b.data;
  CHECK_EQ(count_lines(t, "sluice_rule_value_total{"), 1); /* one series */
  CHECK_EQ(metric_sum(t, "sluice_rule_value_total{rule=\"10_pay.lua\","
                         "name=\"pay_total\",kind=\"pay\"}"),
           NSETS * pay);
  CHECK_EQ(metric_sum(t, "sluice_rule_calls_total{rule=\"10_pay.lua\"}"),
           NSETS * pay);
  CHECK_EQ(metric_sum(t, "sluice_rule_decisions_total{rule=\"10_pay.lua\","
                         "decision=\"dropped\"}"),
           NSETS * sevens);
  CHECK_EQ(metric_sum(t, "sluice_rule_errors_total{rule=\"50_fail.lua\""),
           NSETS * errs);
  CHECK_EQ(metric_sum(t, "sluice_rule_duration_seconds_count{rule=\"10_pay"),
           NSETS * ((pay + 15) / 16)); /* one call in 16 is timed */
  CHECK_EQ(metric_sum(t, "sluice_events_emitted_total "), NSETS * emits);
  CHECK_EQ(metric_sum(t, "sluice_events_dead_lettered_total "), NSETS * errs);
  CHECK_EQ(count_lines(t, "sluice_events_emitted_total "), 1);
  CHECK_EQ(metric_sum(t, "sluice_rules_version "), 1);
  sl_buf_close(&b);
  fixture_close(&f); /* removes its sources from reg */
  sl_metric_registry_free(reg);
}

/* ---- two-phase reload ------------------------------------------------ */

static void *prepare_forced(void *arg) {
  struct worker *w = arg;
  w->prepare_rc = sl_rules_prepare(w->rs, NULL, "test", w->err,
                                   sizeof(w->err));
  return NULL;
}

/* Prepare every set at once, each on its own thread. */
static void prepare_all(struct fixture *f) {
  pthread_t th[NSETS];
  int i;
  for (i = 0; i < NSETS; i++)
    pthread_create(&th[i], NULL, prepare_forced, &f->w[i]);
  for (i = 0; i < NSETS; i++)
    pthread_join(th[i], NULL);
}

static const char *versioned(int v) {
  static char src[512];
  snprintf(src, sizeof(src),
           "return { topics = 'v.*',\n"
           "  on_start = function() sluice.emit('b', { topic = 'em.start%d' })"
           " end,\n"
           "  on_event = function(ev) return sluice.drop('v%d') end }\n",
           v, v);
  return src;
}

/* The drop reason of a v.* event: the version deciding. */
static const char *version_of(struct worker *w, char *out, size_t n) {
  struct sl_rules_result r;
  sl_rules_decide(w->rs, event(w, "v.x", NULL, 1), &r);
  snprintf(out, n, "%s", r.reason ? r.reason : "-");
  sl_event_unref(r.event);
  return out;
}

TEST(rules_prepare_commit_abort_move_every_set_together) {
  struct fixture f;
  char v[64], status[64];
  struct sl_buf js;
  int i;

  CHECK_EQ(fixture_init(&f, 0, 0), 0);
  write_file(f.rules, "05_v.lua", versioned(1));
  for (i = 0; i < NSETS; i++) {
    CHECK_EQ(start(&f, i, NULL), 0);
    CHECK_STR(version_of(&f.w[i], v, sizeof(v)), "v1");
    CHECK_EQ(f.w[i].emitted, 1u); /* on_start's emit, delivered at load */
  }
  /* commit on all: prepared sets go live only at the commit, with their
   * on_start emits; before it the live version decides */
  write_file(f.rules, "05_v.lua", versioned(2));
  prepare_all(&f);
  for (i = 0; i < NSETS; i++) {
    CHECK_EQ(f.w[i].prepare_rc, 0);
    CHECK_STR(version_of(&f.w[i], v, sizeof(v)), "v1");
    CHECK_EQ(f.w[i].emitted, 1u); /* staged, not delivered */
  }
  for (i = 0; i < NSETS; i++) {
    sl_rules_commit(f.w[i].rs);
    CHECK_STR(version_of(&f.w[i], v, sizeof(v)), "v2");
    CHECK_EQ(f.w[i].emitted, 2u);
    CHECK_EQ(sl_rules_stats(f.w[i].rs)->version, 2u);
  }
  sl_rules_commit(f.w[0].rs); /* nothing prepared: a no-op */
  CHECK_EQ(sl_rules_stats(f.w[0].rs)->version, 2u);

  /* abort on all: the live version stays, staged emits are dropped */
  write_file(f.rules, "05_v.lua", versioned(3));
  prepare_all(&f);
  for (i = 0; i < NSETS; i++) {
    CHECK_EQ(f.w[i].prepare_rc, 0);
    sl_rules_abort(f.w[i].rs);
    CHECK_STR(version_of(&f.w[i], v, sizeof(v)), "v2");
    CHECK_EQ(f.w[i].emitted, 2u);
    CHECK_EQ(sl_rules_stats(f.w[i].rs)->version, 2u);
  }
  sl_rules_abort(f.w[0].rs); /* nothing prepared: a no-op */

  /* "watch" with nothing changed since the live set: nothing prepared */
  write_file(f.rules, "05_v.lua", versioned(2)); /* what is live */
  for (i = 0; i < NSETS; i++)
    CHECK_EQ(sl_rules_prepare(f.w[i].rs, NULL, "watch", f.w[i].err,
                              sizeof(f.w[i].err)),
             SL_EALREADY);
  write_file(f.rules, "05_v.lua", versioned(4));
  CHECK_EQ(sl_rules_prepare(f.w[0].rs, NULL, "watch", f.w[0].err,
                            sizeof(f.w[0].err)),
           0);
  /* a second prepare replaces the first (aborted) */
  CHECK_EQ(sl_rules_prepare(f.w[0].rs, NULL, "test", f.w[0].err,
                            sizeof(f.w[0].err)),
           0);
  sl_rules_commit(f.w[0].rs);
  CHECK_STR(version_of(&f.w[0], v, sizeof(v)), "v4");
  CHECK_EQ(f.w[0].emitted, 3u); /* one start emit: the aborted one dropped */
  sl_rules_abort(f.w[0].rs);

  /* a broken file refuses prepare on every set; the live one stays and
   * the status says why */
  write_file(f.rules, "06_broken.lua", "return { on_event = \n");
  prepare_all(&f);
  for (i = 0; i < NSETS; i++) {
    CHECK(f.w[i].prepare_rc < 0);
    CHECK(strstr(f.w[i].err, "06_broken.lua") != NULL);
    CHECK_STR(version_of(&f.w[i], v, sizeof(v)), i == 0 ? "v4" : "v2");
    sl_rules_commit(f.w[i].rs); /* nothing prepared: no-op */
    CHECK_STR(version_of(&f.w[i], v, sizeof(v)), i == 0 ? "v4" : "v2");
  }
  sl_buf_init(&js);
  sl_rules_status_json(f.w[1].rs, &js);
  sl_buf_putc(&js, '\0');
  snprintf(status, sizeof(status), "%s", "\"result\":\"failed\"");
  CHECK(strstr((const char *)js.data, status) != NULL);
  CHECK(strstr((const char *)js.data, "06_broken.lua") != NULL);
  sl_buf_close(&js);
  CHECK_EQ(sl_rules_stats(f.w[1].rs)->reloads_failed, 1u);

  /* sl_rules_reload_with behaves as before: fails with the broken file */
  CHECK_EQ(sl_rules_reload(f.w[1].rs, "test"), SL_EINVAL);
  {
    char path[256];
    snprintf(path, sizeof(path), "%s/06_broken.lua", f.rules);
    unlink(path);
  }
  CHECK_EQ(sl_rules_reload(f.w[1].rs, "test"), 0);
  CHECK_STR(version_of(&f.w[1], v, sizeof(v)), "v4");
  CHECK_EQ(sl_rules_reload(f.w[1].rs, "watch"), 0); /* unchanged: skipped */
  CHECK_EQ(sl_rules_stats(f.w[1].rs)->version, 3u);
  fixture_close(&f);
}

/* ---- the watcher asks the owner -------------------------------------- */

static void on_give_up(uv_timer_t *t) { uv_stop(t->loop); }

TEST(rules_watcher_reloads_through_the_owner_when_it_has_reload) {
  struct fixture f;
  uv_loop_t loop;
  uv_timer_t give_up;
  char v[64];

  CHECK_EQ(fixture_init(&f, 1, 0), 0);
  write_file(f.rules, "05_v.lua", versioned(1));
  CHECK_EQ(uv_loop_init(&loop), 0);
  CHECK_EQ(start(&f, 0, &loop), 0);
  uv_timer_init(&loop, &give_up);
  uv_timer_start(&give_up, on_give_up, 10000, 0);
  write_file(f.rules, "05_v.lua", versioned(2));
  uv_run(&loop, UV_RUN_DEFAULT); /* until on_reload or the give-up */
  CHECK_EQ(f.w[0].reloads_asked, 1u);
  /* the owner did not reload: the set did not reload itself */
  CHECK_STR(version_of(&f.w[0], v, sizeof(v)), "v1");
  CHECK_EQ(sl_rules_stats(f.w[0].rs)->version, 1u);
  uv_close((uv_handle_t *)&give_up, NULL);
  sl_rules_stop(f.w[0].rs);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  fixture_close(&f);
}

/* ---- what threads leave behind ---------------------------------------- */

/* POSIX timers of this process (/proc/self/timers: one "ID:" line each),
 * or -1 when the kernel does not list them. */
static int process_timers(void) {
  char line[256];
  int n = 0;
  FILE *f = fopen("/proc/self/timers", "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof(line), f))
    n += strncmp(line, "ID:", 3) == 0;
  fclose(f);
  return n;
}

static void *run_few(void *arg) {
  struct run *run = arg;
  one(run->w, run->cfg, 3992); /* a payload rule */
  one(run->w, run->cfg, 3999); /* overruns: the watchdog timer fires */
  return NULL;
}

TEST(rules_a_thread_that_ran_rules_leaves_no_watchdog_timer_when_it_exits) {
  struct fixture f;
  struct run run;
  pthread_t th;
  int before, round;

  CHECK_EQ(fixture_init(&f, 0, 0), 0);
  CHECK_EQ(start(&f, 0, NULL), 0);
  run.w = &f.w[0];
  run.cfg = f.cfg;
  for (round = 0; round < 3; round++) {
    before = process_timers();
    CHECK_EQ(pthread_create(&th, NULL, run_few, &run), 0);
    pthread_join(th, NULL);
    if (before >= 0)
      CHECK_EQ(process_timers(), before);
  }
  CHECK_EQ(f.w[0].bad, 0);
  CHECK_EQ(f.w[0].ok, 6u);
  fixture_close(&f);
}

/* Events made on one thread and freed on another (a job's event freed by
 * the replica that decided it, a result's by the main thread): the block
 * pools of both stay sound. */
struct pool_run {
  struct sl_idgen g;
  struct sl_event **evs;
  int n, make;
};

static void *pool_side(void *arg) {
  struct pool_run *p = arg;
  int i;
  for (i = 0; i < p->n; i++) {
    if (p->make) {
      char topic[32];
      struct sl_str none = {NULL, 0}, t = {topic, 0};
      t.len = (uint32_t)snprintf(topic, sizeof(topic), "pool.%d", i);
      p->evs[i] = sl_event_new(&p->g, none, t, none, 1, 1000, NULL, 0,
                               NULL, 0, 0);
    } else {
      sl_event_unref(p->evs[i]);
      p->evs[i] = NULL;
    }
  }
  return NULL;
}

TEST(events_made_on_one_thread_are_freed_on_another) {
  enum { N = 30000 };
  struct pool_run a, b;
  pthread_t ta, tb;
  static struct sl_event *first[N], *second[N];
  int i, round;

  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));
  sl_idgen_init(&a.g);
  sl_idgen_init(&b.g);
  a.n = b.n = N;
  for (round = 0; round < 3; round++) {
    /* a makes the first batch; then b frees it while a makes the second */
    a.evs = first;
    a.make = 1;
    pthread_create(&ta, NULL, pool_side, &a);
    pthread_join(ta, NULL);
    b.evs = first;
    b.make = 0;
    a.evs = second;
    pthread_create(&tb, NULL, pool_side, &b);
    pthread_create(&ta, NULL, pool_side, &a);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (i = 0; i < N; i++) { /* whole and distinct */
      char want[32];
      struct sl_str t = sl_event_topic(second[i]);
      snprintf(want, sizeof(want), "pool.%d", i);
      CHECK(first[i] == NULL);
      CHECK_EQ(second[i]->refs, 1);
      CHECK(t.len == strlen(want) && memcmp(t.p, want, t.len) == 0);
    }
    for (i = 0; i < N; i++) /* back on the main thread */
      sl_event_unref(second[i]);
  }
}

/* Log lines longer than a pipe writes at once, from two threads: each
 * arrives whole, never mixed with the other thread's. */
struct log_run {
  char fill;
  int lines;
};

#define LOG_FIELD 20000

static void *log_side(void *arg) {
  struct log_run *l = arg;
  static _Thread_local char field[LOG_FIELD + 1];
  int i;
  memset(field, l->fill, LOG_FIELD);
  field[LOG_FIELD] = '\0';
  for (i = 0; i < l->lines; i++)
    sl_log(SL_LOG_ERROR, "long", SL_S("field", field), SL_END);
  return NULL;
}

struct log_reader {
  int fd, lines, bad;
};

static void *log_read(void *arg) {
  struct log_reader *r = arg;
  static char buf[1 << 20];
  size_t have = 0;
  ssize_t n;
  while ((n = read(r->fd, buf + have, sizeof(buf) - have)) > 0) {
    char *line = buf, *nl;
    have += (size_t)n;
    while ((nl = memchr(line, '\n', have - (size_t)(line - buf))) != NULL) {
      char *f = strstr(line, "\"field\":\"");
      /* whole: one run of one letter, closed by the line's end */
      if (f == NULL || (size_t)(nl - line) < LOG_FIELD ||
          (f[9] != 'a' && f[9] != 'b') || nl[-1] != '}' ||
          (f[9] == 'a' ? memchr(f + 9, 'b', LOG_FIELD) != NULL
                       : memchr(f + 9, 'a', LOG_FIELD) != NULL))
        r->bad++;
      r->lines++;
      line = nl + 1;
    }
    have -= (size_t)(line - buf);
    memmove(buf, line, have);
  }
  return NULL;
}

TEST(log_lines_of_two_threads_never_interleave) {
  struct log_run l[2] = {{'a', 200}, {'b', 200}};
  struct log_reader r = {0, 0, 0};
  pthread_t th[2], rd;
  int p[2], devnull;

  CHECK_EQ(pipe(p), 0);
  r.fd = p[0];
  pthread_create(&rd, NULL, log_read, &r);
  sl_log_set_fd(p[1]);
  pthread_create(&th[0], NULL, log_side, &l[0]);
  pthread_create(&th[1], NULL, log_side, &l[1]);
  pthread_join(th[0], NULL);
  pthread_join(th[1], NULL);
  devnull = open("/dev/null", O_WRONLY);
  sl_log_set_fd(devnull);
  close(p[1]);
  pthread_join(rd, NULL);
  close(p[0]);
  CHECK_EQ(r.lines, 400);
  CHECK_EQ(r.bad, 0);
}
