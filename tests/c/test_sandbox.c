/* test_sandbox.c - the rule sandbox (engine/lua/rule.c and its pieces)
 * from C, so ASan and UBSan see it: rules written to a temp dir, loaded,
 * run against events built with sl_event_new; limits, changed events, host
 * callbacks, timers, handover, rebuilds, rules on threads with a small
 * C stack. */
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "box.h" /* rules.jit cases look for compiled code in the state */
#include "codec.h"
#include "event.h"
#include "sandbox.h"
#include "test.h"

static char dir[64];

/* The rule files' temp dir goes at exit, not in a "test" that cannot fail. */
static void remove_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", dir);
}
static int nfile;

static const char *write_rule(const char *src) {
  static char path[128];
  FILE *f;

  if (dir[0] == 0) {
    snprintf(dir, sizeof(dir), "/tmp/sluice-sbx-XXXXXX");
    if (mkdtemp(dir) == NULL) {
      perror("mkdtemp");
      exit(1);
    }
    atexit(remove_dir);
  }
  snprintf(path, sizeof(path), "%s/r%d.lua", dir, ++nfile);
  f = fopen(path, "w");
  if (f == NULL || fputs(src, f) < 0 || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
  return path;
}

/* What the host callbacks saw. */
struct seen {
  int emits, logs, last_level;
  char last_output[64], last_log[512];
  struct sl_event *last_emit;
  uint64_t clock;
};

static void on_emit(void *data, struct sl_rule *r, const char *output,
                    struct sl_event *ev) {
  struct seen *s = data;
  (void)r;
  s->emits++;
  snprintf(s->last_output, sizeof(s->last_output), "%s", output);
  sl_event_unref(s->last_emit);
  s->last_emit = ev;
}

static void on_log(void *data, struct sl_rule *r, int level, const char *msg,
                   const uint8_t *fields, size_t len) {
  struct seen *s = data;
  (void)r, (void)fields, (void)len;
  s->logs++;
  s->last_level = level;
  snprintf(s->last_log, sizeof(s->last_log), "%s", msg);
}

static uint64_t on_clock(void *data) { return ((struct seen *)data)->clock; }

/* rules.jit for every rule the cases load: the suite runs with it off,
 * then once more with it on (sandbox_every_case_again_with_the_jit_on). */
static int jit_on;

static struct sl_rule *load(const char *src, uint32_t cpu, uint32_t mb,
                            struct seen *seen, char *err, size_t errlen) {
  struct sl_rule_limits lim = {cpu, mb, NULL, NULL, NULL, 0, jit_on};
  struct sl_rule_host host;

  memset(&host, 0, sizeof(host));
  if (seen) {
    host.data = seen;
    host.emit = on_emit;
    host.log = on_log;
    host.mono_ns = on_clock;
  }
  return sl_rule_load(write_rule(src), &lim, &host, err, errlen);
}

/* An event with topic and an optional payload {"amount": amount}. */
static struct sl_event *event(const char *topic, int amount) {
  static struct sl_idgen g;
  static int init;
  struct sl_buf p;
  struct sl_str id = {NULL, 0}, t = {topic, (uint32_t)strlen(topic)},
                key = {NULL, 0};
  struct sl_event *ev;

  if (!init) {
    sl_idgen_init(&g);
    init = 1;
  }
  sl_buf_init(&p);
  if (amount >= 0) {
    sl_codec_put_map(&p, 1);
    sl_codec_put_str(&p, "amount", 6);
    sl_codec_put_int(&p, amount);
  }
  ev = sl_event_new(&g, id, t, key, 1, 1000000, NULL, 0,
                    amount >= 0 ? p.data : NULL, p.len, 0);
  sl_buf_close(&p);
  return ev;
}

/* The budget counts the thread's CPU time: so do the bounds, which wall
 * time on a loaded machine would break (seen: 4x at a load of 8 on 2
 * cores). */
static uint64_t thread_cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void run(struct sl_rule *r, const char *topic, int amount,
                struct sl_rule_decision *d) {
  struct sl_event *ev = event(topic, amount);
  sl_rule_run(r, ev, d);
  sl_event_unref(ev);
}

TEST(sandbox_routes_on_topic) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "return { topics = 'orders.*', on_event = function(ev)\n"
      "  if ev.topic == 'orders.new' then return 'warehouse' end\n"
      "  if ev.topic == 'orders.many' then return { 'a', 'b' } end\n"
      "  if ev.topic == 'orders.drop' then return sluice.drop('nope') end\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  CHECK(sl_rule_matches(r, "orders.eu.new", 13));
  CHECK(!sl_rule_matches(r, "users.new", 9));
  run(r, "orders.new", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK_EQ(d.nroutes, 1);
  CHECK_STR(d.routes[0], "warehouse");
  CHECK(d.changed == NULL);
  run(r, "orders.many", -1, &d);
  CHECK_EQ(d.nroutes, 2);
  CHECK_STR(d.routes[1], "b");
  run(r, "orders.drop", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_DROP);
  CHECK_STR(d.message, "nope");
  run(r, "orders.other", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_PASS);
  CHECK_EQ(strlen(sl_rule_hash(r)), 64);
  sl_rule_free(r);
  sl_rule_free(NULL);
}

TEST(sandbox_load_errors_name_file_and_line) {
  char err[512], want[600];
  struct sl_rule *r = load("return {\n on_event = function(ev)\n  return = 1\n end }\n",
                           10, 16, NULL, err, sizeof(err));
  CHECK(r == NULL);
  snprintf(want, sizeof(want), "%s/r%d.lua:3: unexpected symbol near '='", dir,
           nfile);
  CHECK_STR(err, want);
  r = load("return {}", 10, 16, NULL, err, sizeof(err));
  CHECK(r == NULL);
  CHECK(strstr(err, ":1: on_event must be a function (got nil)") != NULL);
  r = load("\033LJ\002junk", 10, 16, NULL, err, sizeof(err));
  CHECK(r == NULL);
  CHECK(strstr(err, "bytecode is not allowed") != NULL);
}

TEST(sandbox_cpu_budget_stops_loops_and_patterns) {
  char err[512];
  struct sl_rule_decision d;
  uint64_t t0;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  if ev.topic == 'p' then return (('a'):rep(5000):find('.-.-.-.-b')) end\n"
      "  if ev.topic == 'ok' then return 'ok' end\n"
      "  while true do end\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  t0 = thread_cpu_us();
  run(r, "loop", -1, &d);
  CHECK(thread_cpu_us() - t0 < 40000u);
  CHECK_EQ(d.verdict, SL_RULE_ERROR);
  CHECK_EQ(d.error, SL_RULE_ERR_CPU);
  CHECK(strstr(d.message, ":4: cpu budget of 10 ms exceeded") != NULL);
  CHECK(strstr(d.where, ":4") != NULL);
  t0 = thread_cpu_us();
  run(r, "p", -1, &d);
  CHECK(thread_cpu_us() - t0 < 40000u);
  CHECK_EQ(d.error, SL_RULE_ERR_CPU);
  run(r, "ok", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  sl_rule_free(r);
}

TEST(sandbox_memory_errors_leave_the_state_usable) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "hoard = {}\n"
      "return { on_event = function(ev)\n"
      "  if ev.topic == 'bomb' then local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(100) .. i end end\n"
      "  if ev.topic == 'keep' then while true do hoard[#hoard + 1] = ('y'):rep(100) .. #hoard end end\n"
      "  return tostring(#hoard)\n"
      "end }\n", 5000, 8, NULL, err, sizeof(err));
  CHECK(r != NULL);
  run(r, "bomb", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_MEMORY);
  CHECK(strstr(d.message, "not enough memory (memory_mb=8)") != NULL);
  run(r, "x", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK(sl_rule_memory(r) < 2 * 1024 * 1024);
  CHECK_EQ(sl_rule_rebuilds(r), 0);
  run(r, "keep", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_MEMORY);
  CHECK_EQ(sl_rule_rebuilds(r), 1);
  run(r, "x", -1, &d);
  CHECK_STR(d.routes[0], "0");
  sl_rule_free(r);
}

TEST(sandbox_changed_event_only_when_changed) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_event *ev;
  const uint8_t *v;
  size_t vlen;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  if ev.payload.amount > 1000 then\n"
      "    ev.headers.priority = 'high'\n"
      "    ev.payload.amount = ev.payload.amount + 1\n"
      "  end\n"
      "  return 'out'\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  run(r, "t", 5, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK(d.changed == NULL);
  ev = event("t", 5000);
  sl_rule_run(r, ev, &d);
  CHECK(d.changed != NULL);
  CHECK_EQ(d.changed->time, ev->time);
  CHECK_EQ(d.changed->id_len, ev->id_len);
  CHECK(memcmp(d.changed->data + d.changed->id_off, ev->data + ev->id_off,
               ev->id_len) == 0);
  CHECK_EQ(d.changed->headers_count, 1);
  CHECK(sl_codec_map_find(d.changed->data + d.changed->payload_off,
                          d.changed->payload_len, "amount", 6, &v, &vlen) == 0);
  CHECK_EQ(vlen, 3); /* uint16 5001 */
  CHECK_EQ(v[0], 0xcd);
  CHECK_EQ((v[1] << 8) | v[2], 5001);
  sl_event_unref(d.changed);
  sl_event_unref(ev);
  sl_rule_free(r);
}

TEST(sandbox_host_callbacks_timers_and_counters) {
  char err[512];
  struct sl_rule_decision d;
  struct seen s;
  int64_t next;
  struct sl_rule *r;

  memset(&s, 0, sizeof(s));
  s.clock = 1000000000u;
  r = load("local n = 0\n"
           "sluice.every(100, function()\n"
           "  sluice.emit('summary', { topic = 'count', payload = { n = n } })\n"
           "  sluice.log('info', 'tick', { n = n })\n"
           "end)\n"
           "return { on_event = function(ev) n = n + 1\n"
           "  sluice.counter('events_total', { topic = ev.topic }):inc()\n"
           "end }\n", 10, 16, &s, err, sizeof(err));
  CHECK(r != NULL);
  run(r, "a", -1, &d);
  run(r, "a", -1, &d);
  next = sl_rule_next_timer(r);
  CHECK_EQ(next, 1000 + 100);
  sl_rule_run_timers(r, 1099);
  CHECK_EQ(s.emits, 0);
  s.clock = 1100000000u;
  sl_rule_run_timers(r, 1100);
  CHECK_EQ(s.emits, 1);
  CHECK_EQ(s.logs, 1);
  CHECK_STR(s.last_output, "summary");
  CHECK_STR(s.last_log, "tick");
  CHECK(s.last_emit != NULL);
  CHECK_EQ(s.last_emit->topic_len, 5);
  CHECK_EQ(sl_rule_next_timer(r), 1200);
  sl_event_unref(s.last_emit);
  s.last_emit = NULL;
  sl_rule_free(r);
}

static void count_cb(void *data, const char *name, const char *labels,
                     double value) {
  double *sum = data;
  if (strcmp(name, "c_total") == 0 && strcmp(labels, "k=\"v\"") == 0)
    *sum += value;
}

TEST(sandbox_counters_and_handover) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_buf snap;
  double sum = 0;
  const char *src =
      "local total = 0\n"
      "return { on_event = function(ev) total = total + 1\n"
      "  sluice.counter('c_total', { k = 'v' }):add(2)\n"
      "  return tostring(total) end,\n"
      "  snapshot = function() return { total = total } end,\n"
      "  restore = function(v) total = v.total end }\n";
  struct sl_rule *a = load(src, 10, 16, NULL, err, sizeof(err)), *b;

  CHECK(a != NULL);
  run(a, "t", -1, &d);
  run(a, "t", -1, &d);
  sl_rule_counters(a, count_cb, &sum);
  CHECK(sum == 4);
  sl_buf_init(&snap);
  CHECK_EQ(sl_rule_snapshot(a, &snap, err, sizeof(err)), 0);
  b = load(src, 10, 16, NULL, err, sizeof(err));
  CHECK(b != NULL);
  CHECK_EQ(sl_rule_restore(b, snap.data, snap.len, err, sizeof(err)), 0);
  run(b, "t", -1, &d);
  CHECK_STR(d.routes[0], "3");
  sl_buf_close(&snap);
  sl_rule_free(a);
  sl_rule_free(b);
}

TEST(sandbox_refuses_escapes) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  if ev.topic == 'a' then return loadstring('return 1')() end\n"
      "  if ev.topic == 'b' then return io.open('/etc/passwd') end\n"
      "  if ev.topic == 'c' then local function g(s) return (s:gsub('.', g)) end return g('ab') end\n"
      "  if ev.topic == 'd' then local function f() return coroutine.wrap(f)() end return f() end\n"
      "  if ev.topic == 'e' then xpcall(error, function() while true do end end) end\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  run(r, "a", -1, &d);
  CHECK(strstr(d.message, "attempt to call global 'loadstring' (a nil value)"));
  run(r, "b", -1, &d);
  CHECK(strstr(d.message, "attempt to index global 'io' (a nil value)"));
  run(r, "c", -1, &d);
  CHECK(strstr(d.message, "C calls nested")); /* by depth, or by stack under ASan */
  run(r, "d", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ERROR);
  run(r, "e", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_CPU);
  sl_rule_free(r);
}

/* A rule called many times in a row decides the same each time and never
 * reports an unchanged event as changed (the per-call state is reset).
 * Rule speed is measured by `make bench`, through the binary. */
TEST(sandbox_repeated_calls_decide_the_same_and_change_nothing) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_event *ev = event("orders.new", 5);
  struct sl_rule *r = load(
      "return { topics = { 'orders.*' }, on_event = function(ev)\n"
      "  if ev.topic == 'orders.new' then return 'warehouse' end\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  struct sl_rule *p = load(
      "return { on_event = function(ev)\n"
      "  if ev.payload.amount > 1000 then return 'big' end\n"
      "  return 'small'\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  struct sl_rule *f = load(
      "return { on_event = function(ev)\n"
      "  if ev:field('amount') > 1000 then return 'big' end\n"
      "  return 'small'\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  int i;

  CHECK(r != NULL && p != NULL && f != NULL);
  for (i = 0; i < 2000; i++) {
    sl_rule_run(r, ev, &d);
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
    CHECK_STR(d.routes[0], "warehouse");
    sl_rule_run(p, ev, &d);
    CHECK_STR(d.routes[0], "small");
    CHECK(d.changed == NULL);
    sl_rule_run(f, ev, &d);
    CHECK_STR(d.routes[0], "small");
    CHECK(d.changed == NULL);
  }
  sl_event_unref(ev);
  sl_rule_free(r);
  sl_rule_free(p);
  sl_rule_free(f);
}

/* ev.topic comes from a cache of Lua strings (ev.c): every topic, whether
 * cached, evicted, sharing a slot or too long to cache, reads as its own
 * bytes, a topic the rule set reads back, and other keys keep their errors. */
TEST(sandbox_topic_reads_exact_bytes_across_many_topics) {
  char err[512], topic[128], longt[101];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  local t = ev.topic\n"
      "  if t == 'set' then ev.topic = 'changed' return ev.topic end\n"
      "  if t == 'num' then return ev[1] end\n"
      "  if ev['to' .. 'pic'] ~= t or ev.topic ~= t then return 'mismatch' end\n"
      "  return t\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  int round, i;

  CHECK(r != NULL);
  memset(longt, 'x', 100);
  longt[100] = 0;
  for (round = 0; round < 3; round++) {
    for (i = 0; i < 200; i++) { /* more topics than cache slots */
      snprintf(topic, sizeof(topic), "t.%d.%s", i * 7 % 200,
               i % 3 ? "a" : "bb");
      run(r, topic, -1, &d);
      CHECK_EQ(d.verdict, SL_RULE_ROUTE);
      CHECK_STR(d.routes[0], topic);
    }
    run(r, longt, -1, &d);
    CHECK_STR(d.routes[0], longt);
    run(r, "set", -1, &d);
    CHECK_STR(d.routes[0], "changed");
    CHECK(d.changed != NULL);
    CHECK(sl_event_topic(d.changed).len == 7 &&
          memcmp(sl_event_topic(d.changed).p, "changed", 7) == 0);
    sl_event_unref(d.changed);
    run(r, "set.not", -1, &d);
    CHECK_STR(d.routes[0], "set.not");
    run(r, "num", -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ERROR);
    CHECK(strstr(d.message, "event fields are named by strings") != NULL);
  }
  sl_rule_free(r);
}

/* take_result keeps the last returned name (rule.c): a repeat, a list
 * between two names, a name with a NUL after the same prefix and a longer
 * or shorter name each decide as if seen for the first time. */
TEST(sandbox_returned_names_decide_the_same_when_repeated) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  local t = ev.topic\n"
      "  if t == 'list' then return { 'out', 'b' } end\n"
      "  if t == 'nul' then return 'out\\0x' end\n"
      "  if t == 'bnul' then return 'b\\0' end\n"
      "  return t\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  static const char *const seq[] = {"out", "out", "list", "out", "nul",
                                    "out", "outs", "out", "ou", "list",
                                    "b", "bnul", "b", "out"};
  size_t i;

  CHECK(r != NULL);
  for (i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
    run(r, seq[i], -1, &d);
    if (strcmp(seq[i], "list") == 0) {
      CHECK_EQ(d.verdict, SL_RULE_ROUTE);
      CHECK_EQ(d.nroutes, 2);
      CHECK_STR(d.routes[0], "out");
      CHECK_STR(d.routes[1], "b");
    } else if (strstr(seq[i], "nul") != NULL) {
      CHECK_EQ(d.verdict, SL_RULE_ERROR);
      CHECK(strstr(d.message, "NUL byte") != NULL);
    } else {
      CHECK_EQ(d.verdict, SL_RULE_ROUTE);
      CHECK_EQ(d.nroutes, 1);
      CHECK_STR(d.routes[0], seq[i]);
    }
  }
  sl_rule_free(r);
}

/* encode_headers writes the map in one walk and patches its header: the
 * smallest header for the count (fixmap, map16), entries intact. */
TEST(sandbox_changed_headers_get_the_smallest_map_header) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_codec_error cerr;
  struct sl_event_view v;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  for i = 1, tonumber(ev.topic) do ev.headers['h' .. i] = ('v'):rep(i) end\n"
      "  return 'out'\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  static const char *const counts[] = {"3", "15", "16", "40"};
  size_t i;

  CHECK(r != NULL);
  for (i = 0; i < 4; i++) {
    int n = atoi(counts[i]);
    const uint8_t *h;
    run(r, counts[i], -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
    CHECK(d.changed != NULL);
    CHECK_EQ(sl_codec_parse_event(d.changed->data, d.changed->len, &v, &cerr),
             0);
    h = d.changed->data + d.changed->headers_off;
    if (n < 16) {
      CHECK_EQ(h[0], 0x80 | n);
    } else {
      CHECK_EQ(h[0], 0xde);
      CHECK_EQ(h[1] * 256 + h[2], n);
    }
    CHECK(memmem(h, d.changed->headers_len, "\xa3h16", 4) != NULL || n < 16);
    sl_event_unref(d.changed);
  }
  sl_rule_free(r);
}

/* Load with the real clock (no mono_ns) but the test's emit/log. */
static struct sl_rule *load_realclock(const char *src, uint32_t cpu,
                                      struct seen *seen, char *err,
                                      size_t errlen) {
  struct sl_rule_limits lim = {cpu, 16, NULL, NULL, NULL, 0, jit_on};
  struct sl_rule_host host;

  memset(&host, 0, sizeof(host));
  host.data = seen;
  host.emit = on_emit;
  host.log = on_log;
  return sl_rule_load(write_rule(src), &lim, &host, err, errlen);
}

static int64_t mono_ms(void) { return (int64_t)(sl_mono_ns() / 1000000u); }

/* Sleep at least ms: usleep returns early on a signal, and the watchdog
 * timer (armed by a previous case's call, or the running call's own, in a
 * host callback) fires on this thread. Cut short, the timers were not due
 * yet and the case saw none run (first 0, took 0 us). */
static void sleep_ms(int64_t ms) {
  int64_t until = mono_ms() + ms;
  while (mono_ms() < until)
    usleep(1000);
}

/* issue 9 finding 7: a 2 ms timer doing 3 ms of work was due again before
 * its run ended, so the host re-armed at 0 and never polled I/O. */
TEST(sandbox_timer_slower_than_its_interval_is_next_due_after_its_run) {
  char err[512];
  struct seen s;
  struct sl_rule *r;
  int64_t next, end;

  memset(&s, 0, sizeof(s));
  r = load_realclock("sluice.every(2, function()\n"
                     "  local t0 = sluice.now()\n"
                     "  while sluice.now() - t0 < 3 do end\n"
                     "end)\n"
                     "return { on_event = function() end }\n",
                     50, &s, err, sizeof(err));
  CHECK(r != NULL);
  sleep_ms(5);
  sl_rule_run_timers(r, mono_ms());
  end = mono_ms();
  next = sl_rule_next_timer(r);
  /* due no sooner than max(interval, run time) after the run ended (less
   * 1 ms of rounding: the rule reads the clock just before we do); before
   * the fix it was due 2 ms after the run *started*, i.e. already due */
  CHECK(next >= end + 1);
  CHECK_EQ(s.logs, 0);
  sl_rule_free(r);
}

TEST(sandbox_timer_work_per_call_is_capped_and_rotates) {
  char err[512];
  struct seen s;
  struct sl_rule *r;
  uint64_t t0;
  int calls = 0, first;
  int64_t now;

  memset(&s, 0, sizeof(s));
  /* ten timers, each 4 ms of work, all due at once; budget 10 ms */
  r = load_realclock("for i = 1, 10 do\n"
                     "  sluice.every(1, function()\n"
                     "    local t0 = sluice.now()\n"
                     "    while sluice.now() - t0 < 4 do end\n"
                     "    sluice.log('info', 'ran ' .. i)\n"
                     "  end)\n"
                     "end\n"
                     "return { on_event = function() end }\n",
                     10, &s, err, sizeof(err));
  CHECK(r != NULL);
  sleep_ms(3);
  t0 = sl_mono_ns();
  now = mono_ms();
  sl_rule_run_timers(r, now);
  first = s.logs;
  CHECK(first >= 1 && first <= 4); /* stopped at the cap, not all ten */
  CHECK(sl_mono_ns() - t0 < 200000000u);
  CHECK(sl_rule_next_timer(r) <= mono_ms()); /* the rest are still due */
  /* the next calls start where the last stopped: every timer gets a turn */
  while (s.logs < 10 && calls++ < 20)
    sl_rule_run_timers(r, now); /* only the ones left behind are due */
  CHECK_EQ(s.logs, 10);
  sl_rule_free(r);
}

TEST(sandbox_timer_errors_are_rate_limited) {
  char err[512];
  struct seen s;
  struct sl_rule *r;
  int i;

  memset(&s, 0, sizeof(s));
  s.clock = 1000000000u;
  r = load("for i = 1, 64 do\n"
           "  sluice.every(1, function() error(('x'):rep(400)) end)\n"
           "end\n"
           "return { on_event = function() end }\n", 10, 16, &s, err,
           sizeof(err));
  CHECK(r != NULL);
  for (i = 1; i <= 1000; i++) { /* 1 s of hand clock: 64000 errors */
    s.clock += 1000000u;
    sl_rule_run_timers(r, (int64_t)(s.clock / 1000000u));
  }
  CHECK(s.logs >= 1 && s.logs <= 20);
  CHECK(strstr(s.last_log, "timer: ") != NULL);
  sl_rule_free(r);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

/* issue 9 finding 14: a rebuilt state used to reread the rule (and its
 * modules) from disk, so an edit never reloaded went live silently. */
TEST(sandbox_rebuild_uses_the_vetted_source_not_the_file_on_disk) {
  char err[512], mod[160];
  struct sl_rule_decision d;
  struct sl_rule_limits lim = {1000, 16, NULL, NULL, NULL, 0, jit_on};
  struct sl_rule *r;
  const char *path;
  char rule_path[128];

  path = write_rule("return { on_event = function() end }\n"); /* makes dir */
  lim.lib_dir = dir;
  snprintf(mod, sizeof(mod), "%s/vetmod.lua", dir);
  write_file(mod, "return 'mod-v1'\n");
  path = write_rule("local m = require('vetmod')\n"
                    "local keep = {}\n"
                    "return { on_event = function(ev)\n"
                    "  if ev.topic == 'fill' then\n"
                    "    while true do keep[#keep + 1] = ('x'):rep(1000) .. #keep end\n"
                    "  end\n"
                    "  return { 'v1', m }\n"
                    "end }\n");
  snprintf(rule_path, sizeof(rule_path), "%s", path);
  r = sl_rule_load(rule_path, &lim, NULL, err, sizeof(err));
  CHECK(r != NULL);
  /* edits on disk that no reload vetted */
  write_file(rule_path, "return { on_event = function() return 'EDITED' end }\n");
  write_file(mod, "return 'mod-EDITED'\n");
  run(r, "fill", -1, &d); /* fills the state for good: it is rebuilt */
  CHECK_EQ(d.error, SL_RULE_ERR_MEMORY);
  CHECK_EQ(sl_rule_rebuilds(r), 1);
  run(r, "a", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK_EQ(d.nroutes, 2);
  CHECK_STR(d.routes[0], "v1");
  CHECK_STR(d.routes[1], "mod-v1");
  sl_rule_free(r);
}

/* A rebuild that fails (memory short in the whole process; here the
 * rule's own chunk refusing a time window) was tried again by every event
 * the broken state failed, each try a whole state and a log line: 970
 * lines a second under ulimit -v. Now tries back off from 100 ms. */
TEST(sandbox_a_rebuild_that_fails_is_tried_again_only_after_a_backoff) {
  char err[512], src[640];
  struct sl_rule_decision d;
  struct seen s;
  long long wall = (long long)time(NULL) * 1000;
  uint64_t min = 60ull * 1000000000u;
  struct sl_rule *r;
  int i;

  memset(&s, 0, sizeof(s));
  snprintf(src, sizeof(src),
           "local now = sluice.now()\n"
           "if now > %lld and now < %lld then error('no state now') end\n"
           "local keep = {}\n"
           "return { on_event = function(ev)\n"
           "  if ev.topic == 'fill' then\n"
           "    while true do keep[#keep + 1] = ('x'):rep(1000) .. #keep end\n"
           "  end\n"
           "  return 'ok'\n"
           "end }\n", wall + 30 * 60000, wall + 90 * 60000);
  r = load(src, 1000, 16, &s, err, sizeof(err));
  CHECK(r != NULL);
  s.clock = 60 * min; /* inside the window: a new state cannot be made */
  for (i = 0; i < 50; i++) {
    run(r, "fill", -1, &d);
    CHECK_EQ(d.error, SL_RULE_ERR_MEMORY);
  }
  CHECK_EQ(s.logs, 1);
  CHECK(strstr(s.last_log, "could not be rebuilt (next try in 100 ms)"));
  CHECK(strstr(s.last_log, "no state now"));
  s.clock += 150000000u; /* past 100 ms: one more try, then 200 ms */
  run(r, "fill", -1, &d);
  run(r, "fill", -1, &d);
  CHECK_EQ(s.logs, 2);
  CHECK(strstr(s.last_log, "next try in 200 ms"));
  s.clock += 150000000u;
  run(r, "fill", -1, &d);
  CHECK_EQ(s.logs, 2);
  s.clock += 60000000u;
  run(r, "fill", -1, &d);
  CHECK_EQ(s.logs, 3);
  CHECK_EQ(sl_rule_rebuilds(r), 0);
  run(r, "a", -1, &d); /* the full state serves on */
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  s.clock = 100 * min; /* past the window: the next try makes a state */
  run(r, "fill", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_MEMORY);
  CHECK_EQ(sl_rule_rebuilds(r), 1);
  CHECK_EQ(s.logs, 3);
  run(r, "a", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  sl_rule_free(r);
}

TEST(sandbox_kept_rule_and_module_text_stays_within_memory_mb) {
  char err[512], mod[160];
  struct sl_rule_decision d;
  struct sl_rule_limits lim = {1000, 2, NULL, NULL, NULL, 0, jit_on};
  struct sl_rule *r;
  char *big = malloc(1200001);
  char rule_path[128];
  int i;

  CHECK(big != NULL);
  write_rule("return {}\n"); /* makes dir */
  lim.lib_dir = dir;
  memset(big, '-', 1200000); /* a comment line of 1.2 MB */
  big[0] = big[1] = '-';
  big[1200000] = 0;
  for (i = 0; i < 2; i++) {
    snprintf(mod, sizeof(mod), "%s/bigmod%d.lua", dir, i);
    write_file(mod, big);
  }
  snprintf(rule_path, sizeof(rule_path), "%s",
           write_rule("require('bigmod0')\n"
                      "return { on_event = function() require('bigmod1') end }\n"));
  r = sl_rule_load(rule_path, &lim, NULL, err, sizeof(err));
  CHECK(r != NULL);
  run(r, "a", -1, &d); /* 2.4 MB of module text kept: over memory_mb=2 */
  CHECK_EQ(d.verdict, SL_RULE_ERROR);
  CHECK(strstr(d.message, "over the limits") != NULL);
  sl_rule_free(r);
  /* a rule file itself larger than memory_mb */
  big[1200000] = 0;
  snprintf(mod, sizeof(mod), "%s/huge.lua", dir);
  write_file(mod, big);
  lim.memory_mb = 1;
  r = sl_rule_load(mod, &lim, NULL, err, sizeof(err));
  CHECK(r == NULL);
  CHECK(strstr(err, "larger than memory_mb") != NULL);
  free(big);
}

/* issue 9, finding 11: what leaves the rule must pass the native input's
 * parser within max_event_bytes, or the call fails and nothing leaves. */
TEST(sandbox_events_leaving_the_rule_fit_max_event_bytes) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule_limits lim = {10, 16, NULL, NULL, NULL, 256, jit_on};
  struct sl_rule_host host;
  struct seen seen;
  struct sl_codec_error cerr;
  struct sl_event_view v;
  struct sl_rule *r;

  memset(&seen, 0, sizeof(seen));
  memset(&host, 0, sizeof(host));
  host.data = &seen;
  host.emit = on_emit;
  host.log = on_log;
  r = sl_rule_load(write_rule(
      "return { on_event = function(ev)\n"
      "  local t = ev.topic\n"
      "  if t == 'emit_ok' then sluice.emit('o', { topic = 'x', payload = ('a'):rep(100) }) end\n"
      "  if t == 'emit_big' then sluice.emit('o', { topic = 'x', payload = ('a'):rep(300) }) end\n"
      "  if t == 'emit_near' then sluice.emit('o', { topic = 'x', payload = ('a'):rep(200),\n"
      "    headers = { h = ('b'):rep(30) } }) end\n"
      "  if t == 'change_big' then ev.payload = ('a'):rep(300) end\n"
      "  if t == 'header_bin' then ev.headers = setmetatable({ a = 'x' },\n"
      "    { __sluice = 'map', hints = { a = 'b' }, orig = { a = 'x' } }) end\n"
      "  return 'out'\n"
      "end }\n"), &lim, &host, err, sizeof(err));
  CHECK(r != NULL);
  run(r, "emit_ok", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK_EQ(seen.emits, 1);
  CHECK(seen.last_emit->len <= 256);
  CHECK(sl_codec_parse_event(seen.last_emit->data, seen.last_emit->len, &v,
                             &cerr) == 0);
  CHECK(v.headers != NULL); /* a new trace */
  run(r, "emit_big", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ERROR);
  CHECK(strstr(d.message, "larger than 256 bytes") != NULL);
  run(r, "emit_near", -1, &d); /* parts fit, the whole event does not */
  CHECK_EQ(d.verdict, SL_RULE_ERROR);
  CHECK(strstr(d.message, "max_event_bytes (256 bytes)") != NULL);
  CHECK_EQ(seen.emits, 1);
  run(r, "change_big", 1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ERROR);
  CHECK(strstr(d.message, "ev.payload (max_event_bytes)") != NULL);
  CHECK(d.changed == NULL);
  run(r, "header_bin", 1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK(d.changed != NULL);
  CHECK(sl_codec_parse_event(d.changed->data, d.changed->len, &v, &cerr) == 0);
  sl_event_unref(d.changed);
  sl_event_unref(seen.last_emit);
  sl_rule_free(r);
}

/* issue 9, finding 12 for headers: names Lua merges are never dropped. */
TEST(sandbox_repeated_header_names_are_kept_or_the_change_refused) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_idgen g;
  struct sl_buf h;
  struct sl_str id = {NULL, 0}, topic = {"read", 4}, key = {NULL, 0};
  struct sl_event *ev;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  if ev.headers.a ~= '1' then error('first pair expected') end\n"
      "  if ev.topic == 'write' then ev.headers.b = 'x' end\n"
      "  return 'out'\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  sl_idgen_init(&g);
  sl_buf_init(&h);
  sl_codec_put_map(&h, 2);
  sl_codec_put_str(&h, "a", 1);
  sl_codec_put_str(&h, "1", 1);
  sl_codec_put_str(&h, "a", 1);
  sl_codec_put_str(&h, "2", 1);
  ev = sl_event_new(&g, id, topic, key, 1, 1, h.data, h.len, NULL, 0, 0);
  CHECK(ev != NULL);
  sl_rule_run(r, ev, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK(d.changed == NULL); /* both pairs go out as they came */
  sl_event_unref(ev);
  topic.p = "write";
  topic.len = 5;
  ev = sl_event_new(&g, id, topic, key, 1, 1, h.data, h.len, NULL, 0, 0);
  sl_rule_run(r, ev, &d);
  CHECK_EQ(d.verdict, SL_RULE_ERROR);
  CHECK(strstr(d.message, "header 'a' came more than once") != NULL);
  CHECK(d.changed == NULL);
  sl_event_unref(ev);
  sl_buf_close(&h);
  sl_rule_free(r);
}

/* A map with a repeated header name (the table has a side record of the
 * pair left out) whose table the rule gives the shared map marker, kept
 * from an earlier event, or no metatable, and then adds a key: the count
 * matched the bytes' pairs and every pair was found, so the change was
 * dropped as "unchanged" (general path and the >16-pair fast path alike).
 * It must reach the output. */
TEST(sandbox_repeated_headers_without_their_records_keep_the_change) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_idgen g;
  struct sl_buf h;
  struct sl_str id = {NULL, 0}, key = {NULL, 0};
  static const uint32_t sizes[] = {3, 18};
  struct sl_rule *r = load(
      "local mt\n"
      "return { on_event = function(ev)\n"
      "  local h = ev.headers\n"
      "  if ev.topic == 'save' then mt = getmetatable(h) return 'out' end\n"
      "  setmetatable(h, ev.topic == 'marker' and mt or nil)\n"
      "  h.zz = 'x'\n"
      "  return 'out'\n"
      "end }\n", 10, 16, NULL, err, sizeof(err));
  size_t si;
  int ti;
  CHECK(r != NULL);
  sl_idgen_init(&g);
  for (si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
    struct sl_str topic = {"save", 4};
    struct sl_event *ev;
    uint32_t i, n = sizes[si];
    char name[16];
    sl_buf_init(&h);
    sl_codec_put_map(&h, 1);
    sl_codec_put_str(&h, "q", 1);
    sl_codec_put_str(&h, "1", 1);
    ev = sl_event_new(&g, id, topic, key, 1, 1, h.data, h.len, NULL, 0, 0);
    sl_rule_run(r, ev, &d);
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
    sl_event_unref(ev);
    sl_buf_reset(&h);
    /* n pairs: "a" twice with the same value, then h2.. */
    sl_codec_put_map(&h, n);
    for (i = 0; i < 2; i++) {
      sl_codec_put_str(&h, "a", 1);
      sl_codec_put_str(&h, "1", 1);
    }
    for (i = 2; i < n; i++) {
      int k = snprintf(name, sizeof(name), "h%u", (unsigned)i);
      sl_codec_put_str(&h, name, (size_t)k);
      sl_codec_put_str(&h, "v", 1);
    }
    for (ti = 0; ti < 2; ti++) {
      const uint8_t *v;
      size_t vlen;
      topic.p = ti ? "marker" : "nomt";
      topic.len = ti ? 6 : 4;
      ev = sl_event_new(&g, id, topic, key, 1, 1, h.data, h.len, NULL, 0, 0);
      CHECK(ev != NULL);
      sl_rule_run(r, ev, &d);
      CHECK_EQ(d.verdict, SL_RULE_ROUTE);
      CHECK(d.changed != NULL); /* was NULL: zz dropped */
      if (d.changed) {
        /* the rule's table: "a" once, h2.., zz */
        CHECK_EQ(d.changed->headers_count, n);
        CHECK(sl_codec_map_find(d.changed->data + d.changed->headers_off,
                                d.changed->headers_len, "zz", 2, &v,
                                &vlen) == 0);
        sl_event_unref(d.changed);
      }
      sl_event_unref(ev);
    }
    sl_buf_close(&h);
  }
  sl_rule_free(r);
}

/* gsub nested through its replacement (a function, a table's __index, a
 * gsub in a gsub in a pcall) down to the C-call bound: a Lua error, never a
 * crash, also under ASan, where each level holds gsub's 1 KiB result array
 * and its matcher on the C stack; the state works after. */
TEST(sandbox_gsub_nested_through_replacements_ends_in_a_lua_error) {
  char err[512];
  struct sl_rule_decision d;
  static const char *const topics[] = {"fn", "index", "pcall"};
  size_t i;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  local t = ev.topic\n"
      "  local big = ('x'):rep(3000)\n"
      "  if t == 'fn' then\n"
      "    local function g(c) return (big:gsub('^x', g)) end\n"
      "    g()\n"
      "  elseif t == 'index' then\n"
      "    local mt = {} local repl = setmetatable({}, mt)\n"
      "    mt.__index = function() return (big:gsub('^x', repl)) end\n"
      "    local _ = repl.x\n"
      "  elseif t == 'pcall' then\n"
      "    local function g(c)\n"
      "      local ok, y = pcall(string.gsub, big, '^x', g)\n"
      "      if not ok then error(y, 0) end return y\n"
      "    end\n"
      "    g()\n"
      "  end\n"
      "  local y, n = big:gsub('x', 'yz')\n"
      "  if n ~= 3000 or #y ~= 6000 then error('gsub after') end\n"
      "  return 'ok'\n"
      "end }\n", 5000, 64, NULL, err, sizeof(err));
  CHECK(r != NULL);
  for (i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
    run(r, topics[i], -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ERROR);
    CHECK(strstr(d.message, "C calls nested") ||
          strstr(d.message, "stack overflow"));
    run(r, "fine", -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  }
  sl_rule_free(r);
}

/* Metamethods re-entering C library functions, with a new coroutine every
 * few levels (each coroutine had its own bound in LuaJIT): a Lua error,
 * never a crash, also under ASan where frames are much bigger. */
TEST(sandbox_c_recursion_through_coroutines_ends_in_a_lua_error) {
  char err[512];
  struct sl_rule_decision d;
  static const char *const every[] = {"1", "7", "150", "5000"};
  size_t i;

  for (i = 0; i < sizeof(every) / sizeof(every[0]); i++) {
    char src[2048];
    struct sl_rule *r;
    snprintf(src, sizeof(src),
      "local E = %s\n"
      "return { on_event = function(ev)\n"
      "  local d, mt = 0, {}\n"
      "  local function nest(f) d = d + 1\n"
      "    if d %% E == 0 then return coroutine.wrap(f)() end return f() end\n"
      "  if ev.topic == 'time' then\n"
      "    mt.__index = function() return nest(function() return os.time(setmetatable({}, mt)) end) end\n"
      "    return tostring(os.time(setmetatable({}, mt)))\n"
      "  elseif ev.topic == 'gsub' then\n"
      "    local function g() return nest(function() return (('ab'):gsub('.', g)) end) end\n"
      "    return g()\n"
      "  elseif ev.topic == 'format' then\n"
      "    mt.__tostring = function(x) return nest(function() return ('%%s'):format(x) end) end\n"
      "    return string.format('%%s', setmetatable({}, mt))\n"
      "  elseif ev.topic == 'sort' then\n"
      "    local function c(a, b) nest(function() table.sort({3, 2, 1}, c) end) return a < b end\n"
      "    table.sort({3, 2, 1}, c)\n"
      "  end\n"
      "  return 'ok'\n"
      "end }\n", every[i]);
    r = load(src, 5000, 64, NULL, err, sizeof(err));
    CHECK(r != NULL);
    run(r, "time", -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ERROR);
    CHECK(strstr(d.message, "C calls nested"));
    run(r, "gsub", -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ERROR);
    CHECK(strstr(d.message, "C calls nested"));
    run(r, "format", -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ERROR);
    /* string.format is Lua code (it hides addresses): without a coroutine
     * every few levels it recurses in Lua, where LuaJIT's own bound holds */
    CHECK(strstr(d.message, "C calls nested") ||
          strstr(d.message, "stack overflow"));
    run(r, "sort", -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ERROR);
    CHECK(strstr(d.message, "C calls nested"));
    run(r, "fine", -1, &d);
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
    sl_rule_free(r);
  }
}

/* A watchdog tick whose hook is lost (LuaJIT's own read-modify-write of
 * its hook mask, entering or leaving a hook, overwrote the tick's) must
 * not leave the call unbounded: the next tick sets the hook again. The
 * rule's lose_hook() spins in C until the watchdog has set the hook past
 * the deadline, then clears it, as the lost write does; the endless loop
 * after it ran forever before (a rule recursing through xpcall and
 * coroutines ran 100x its budget under load). The call runs on its own
 * thread so that a regression fails the case rather than hanging it. */
static int lose_hook(lua_State *L) {
  uint64_t until = sl_mono_ns() + 5000000000u;
  while (lua_gethookmask(L) == 0 && sl_mono_ns() < until)
    ;
  lua_sethook(L, NULL, 0, 0);
  return 0;
}

struct lost_run {
  struct sl_rule *r;
  struct sl_rule_decision d;
  uint64_t cpu_us;
  volatile int done;
};

static void *lost_run_thread(void *arg) {
  struct lost_run *lr = arg;
  uint64_t t0 = thread_cpu_us();
  run(lr->r, "x", -1, &lr->d);
  lr->cpu_us = thread_cpu_us() - t0;
  lr->done = 1;
  return NULL;
}

TEST(sandbox_a_lost_watchdog_hook_is_set_again) {
  char err[512];
  struct lost_run lr;
  pthread_t t;
  uint64_t until;
  lua_State *L;
  int i;

  memset(&lr, 0, sizeof(lr));
  lr.r = load("return { on_event = function(ev)\n"
              "  lose_hook()\n"
              "  while true do end\n"
              "end }\n", 20, 16, NULL, err, sizeof(err));
  CHECK(lr.r != NULL);
  L = lr.r->box->L;
  lua_pushvalue(L, SLOT_ON_EVENT); /* its environment is the rule's */
  lua_getfenv(L, -1);
  lua_pushcfunction(L, lose_hook);
  lua_setfield(L, -2, "lose_hook");
  lua_pop(L, 2);
  for (i = 0; i < 3; i++) {
    lr.done = 0;
    CHECK_EQ(pthread_create(&t, NULL, lost_run_thread, &lr), 0);
    until = sl_mono_ns() + 10000000000u;
    while (!lr.done && sl_mono_ns() < until)
      usleep(1000);
    if (!lr.done) { /* still looping: the hook stayed lost */
      fprintf(stderr, "  call %d not stopped within 10 s\n", i);
      CHECK(lr.done);
      exit(1); /* the thread cannot be joined */
    }
    pthread_join(t, NULL);
    CHECK_EQ(lr.d.error, SL_RULE_ERR_CPU);
    /* the 20 ms budget (the spin in C spends it), one tick, slack */
    CHECK(lr.cpu_us < 200000u);
  }
  sl_rule_free(lr.r);
}

/* Work done in C or by costly VM instructions is stopped near the budget:
 * table.insert at a huge negative position (24 s before), table.sort of
 * long strings (4.5 s), comparing long strings in a loop (63x), os.date
 * with a long format; and the state stays usable. The bounds are CPU
 * time, 4x the 50 ms budget: on the wall clock a 50 ms stop took 390-730
 * ms on this 2-core VM under load and failed a 500 ms bound. */
/* Run r on one event: the CPU it took, in us of this thread's clock
 * (printed), d as it decided. */
static uint64_t stopped_after_us(struct sl_rule *r,
                                 struct sl_rule_decision *d) {
  uint64_t t0 = thread_cpu_us(), us;

  run(r, "x", -1, d);
  us = thread_cpu_us() - t0;
  fprintf(stderr, "    stopped after %lu us of CPU\n", (unsigned long)us);
  return us;
}

/* A rule that tail-calls into xpcall left thousands of frames, pcall's
 * and the xpcall wrapper's, none of its own near the top. Past the budget
 * every instruction raises, and each raise looked up its line through all
 * of them, each lookup walking the stack from its top (cubic: 1500 levels
 * took 11 s of CPU for a 20 ms budget). where_of now looks at 32 frames,
 * and xpcall nests at most MAX_C_DEPTH levels: this chain goes as deep as
 * that, and its deepest handler spins. */
TEST(sandbox_a_tail_call_chain_through_xpcall_stops_at_the_budget) {
  char err[512];
  struct sl_rule_decision d;
  uint64_t us;
  struct sl_rule *r = load(
      "local function h(e) while true do end end\n"
      "local function chain() return xpcall(chain, h) end\n"
      "return { on_event = function(ev) chain() return 'ok' end }\n",
      20, 16, NULL, err, sizeof(err));

  CHECK(r != NULL);
  us = stopped_after_us(r, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_CPU);
  CHECK(us < 1000000); /* 50x the budget: generous */
  sl_rule_free(r);
}

/* Past the budget each pcall level is unwound by its own throw (~1-2.4 us
 * in LuaJIT's DWARF unwinder; a level costs the rule ~0.1 us to make)
 * where the hook cannot yield the coroutine out of all its levels at once:
 * in the main thread, and in a coroutine whose chain sits over a C call (a
 * gsub callback here). With LuaJIT's pcall this rule nested ~10000 levels
 * per coroutine under ~50 coroutines and took 420-630 ms of CPU for a
 * 10 ms budget. The sandbox's pcall is a C level now: at most MAX_C_DEPTH
 * levels in all, so at most that many throws (10.2 ms measured). */
TEST(sandbox_pcall_chains_as_deep_as_they_go_stop_near_the_budget) {
  char err[512];
  struct sl_rule_decision d;
  uint64_t us;
  struct sl_rule *r = load(
      "local function dive()\n"
      "  if not pcall(dive) then\n"
      "    pcall(coroutine.wrap(function() string.gsub('a', '.', dive) end))\n"
      "    while true do end\n"
      "  end\n"
      "end\n"
      "return { on_event = function(ev) dive() return 'ok' end }\n",
      10, 512, NULL, err, sizeof(err));

  CHECK(r != NULL);
  us = stopped_after_us(r, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_CPU);
  CHECK(strstr(d.message, "cpu budget of 10 ms exceeded") != NULL);
  CHECK(us < 60000); /* 6x the budget; 420-630 ms before */
  sl_rule_free(r);
}

/* pcall and xpcall nest at most MAX_C_DEPTH levels, with the other C
 * levels: past that the call raises, naming them; the state goes on. */
TEST(sandbox_pcall_nested_past_the_c_levels_is_a_lua_error) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "local function f(d)\n"
      "  if d == 0 then return 'bottom' end\n"
      "  local ok, v = pcall(f, d - 1)\n"
      "  if not ok then error(v, 0) end\n"
      "  return v\n"
      "end\n"
      "local function h(e)\n"
      "  return e:sub(1, 9) == 'handled: ' and e or 'handled: ' .. e\n"
      "end\n"
      "local function g(d)\n"
      "  if d == 0 then return 'bottom' end\n"
      "  local ok, v = xpcall(g, h, d - 1)\n"
      "  if not ok then error(v, 0) end\n"
      "  return v\n"
      "end\n"
      "return { on_event = function(ev)\n"
      "  if ev.topic == 'pcall' then return f(500) end\n"
      "  if ev.topic == 'xpcall' then return g(500) end\n"
      "  return f(90) .. g(90)\n"
      "end }\n",
      200, 16, NULL, err, sizeof(err));

  CHECK(r != NULL);
  run(r, "pcall", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_RUNTIME);
  CHECK(strstr(d.message, "C calls nested deeper than 100 (recursion "
                          "through pcall, xpcall,") != NULL);
  run(r, "xpcall", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_RUNTIME);
  CHECK(strstr(d.message, "handled: ") != NULL);
  CHECK(strstr(d.message, "C calls nested deeper than 100") != NULL);
  run(r, "ok", -1, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK_EQ(d.nroutes, 1);
  CHECK_STR(d.routes[0], "bottombottom");
  sl_rule_free(r);
}

/* A __tostring that returns a table (function, thread) handed that value
 * to LuaJIT's own string.format, which printed its address. */
TEST(sandbox_a_tostring_returning_a_table_shows_no_address) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "return { on_event = function(ev)\n"
      "  local t = setmetatable({}, { __tostring = function() return {} end })\n"
      "  local v = string.format('%s', t)\n"
      "  return v\n"
      "end }\n",
      200, 16, NULL, err, sizeof(err));

  CHECK(r != NULL);
  run(r, "x", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_RUNTIME);
  CHECK(strstr(d.message, "'__tostring' must return a string") != NULL);
  CHECK(strstr(d.message, "0x") == NULL);
  CHECK(strstr(d.message, ".lua:3: ") != NULL); /* not "tostring:60: " */
  sl_rule_free(r);
}

TEST(sandbox_c_work_and_costly_instructions_are_charged) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r = load(
      "local p, a, b\n"
      "return { on_event = function(ev)\n"
      "  local t = ev.topic\n"
      "  if t == 'insert' then table.insert({1, 2}, -2^31 + 10, 0) end\n"
      "  if t == 'sort' then local s = ('p'):rep(2^21) local u = {}\n"
      "    for i = 1, 2000 do u[i] = s end table.sort(u) end\n"
      "  if t == 'date' then return os.date(('%c'):rep(1e5)) end\n"
      "  if t == 'p' then p = ('p'):rep(2^23) end\n"
      "  if t == 'a' then a = p .. 'a' end\n"
      "  if t == 'b' then b = p .. 'b' end\n"
      "  if t == 'cmp' then local n = 0 while true do if a < b then n = n + 1 end end end\n"
      "  return 'ok'\n"
      "end }\n", 50, 64, NULL, err, sizeof(err));
  const char *steps[] = {"p", "a", "b"};
  uint64_t t0;
  int i, k;

  CHECK(r != NULL);
  t0 = thread_cpu_us();
  run(r, "insert", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_RUNTIME);
  CHECK(strstr(d.message, "position out of bounds"));
  run(r, "date", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_RUNTIME);
  CHECK(strstr(d.message, "os.date: format longer than 256 bytes"));
  CHECK(thread_cpu_us() - t0 < 200000u);
  t0 = thread_cpu_us();
  run(r, "sort", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_CPU);
  CHECK(thread_cpu_us() - t0 < 200000u);
  for (i = 0; i < 3; i++) {
    for (k = 0; k < 5; k++) { /* a loaded machine may preempt a step */
      run(r, steps[i], -1, &d);
      if (d.verdict == SL_RULE_ROUTE)
        break;
    }
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  }
  t0 = thread_cpu_us();
  run(r, "cmp", -1, &d);
  CHECK_EQ(d.error, SL_RULE_ERR_CPU);
  CHECK(thread_cpu_us() - t0 < 200000u);
  run(r, "fine", -1, &d);
  CHECK_STR(d.routes[0], "ok");
  sl_rule_free(r);
}

/* An event whose payload is the given msgpack bytes. */
static struct sl_event *event_raw(const char *hexs) {
  static struct sl_idgen g;
  static int init;
  struct sl_str id = {NULL, 0}, t = {"t", 1}, key = {NULL, 0};
  uint8_t p[256];
  size_t n = 0;
  unsigned v;

  if (!init) {
    sl_idgen_init(&g);
    init = 1;
  }
  for (; *hexs; hexs++) {
    if (*hexs == ' ')
      continue;
    sscanf(hexs, "%2x", &v);
    p[n++] = (uint8_t)v;
    hexs++;
  }
  return sl_event_new(&g, id, t, key, 1, 1000000, NULL, 0, p, n, 0);
}

/* A rule that only reads ev.payload leaves it byte for byte, whatever its
 * keys (these used to send the event to the dead letter or collapse keys),
 * and a write beside them re-encodes only what it wrote. */
TEST(sandbox_payload_read_keeps_bytes_and_write_splices) {
  static const char *const odd[] = {
      "82 c0 01 a161 02",                      /* nil key */
      "82 9101 01 a161 02",                    /* array key */
      "82 d40541 01 a161 02",                  /* ext key */
      "82 01a161 cb3ff0000000000000a162",      /* 1 and 1.0 */
      "82 a16101 c4016102",                    /* str and bin "a" */
      "82 cf0020000000000001a178 cf0020000000000000a179", /* past 2^53 */
      "83 a16101 a16102 a16103",               /* a repeated key */
      "de0002 a161 dc0001 ca3f800000 a162 d90161", /* wide headers */
  };
  char err[512];
  struct sl_rule_decision d;
  struct sl_event *ev;
  size_t i;
  struct sl_rule *r = load(
      "local function walk(v)\n"
      "  if type(v) == 'table' then\n"
      "    for k, x in pairs(v) do walk(k) walk(x) end\n"
      "    for _, x in ipairs(v) do walk(x) end\n"
      "  end\n"
      "end\n"
      "return { on_event = function(ev)\n"
      "  walk(ev.payload)\n"
      "  if ev.payload.a == 2 or ev.payload.a == 1 then\n"
      "    if ev.topic == 'w' then ev.payload.z = 'x' end\n"
      "  end\n"
      "  return 'out'\n"
      "end }\n", 100, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  for (i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
    ev = event_raw(odd[i]);
    sl_rule_run(r, ev, &d);
    sl_event_unref(ev);
    if (d.verdict != SL_RULE_ROUTE)
      fprintf(stderr, "  payload %s: %s\n", odd[i], d.message);
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
    CHECK(d.changed == NULL);
  }
  sl_rule_free(r);
  r = load("return { on_event = function(ev)\n"
           "  ev.payload.m.b = true\n"
           "  return 'out'\n"
           "end }\n", 100, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  /* {"x": 1.0, "m": {"b": false, "k": bin}, 1: 1} */
  ev = event_raw("83 a178 cb3ff0000000000000 a16d 82 a162 c2 a16b c40101 01 01");
  sl_rule_run(r, ev, &d);
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK(d.changed != NULL);
  CHECK_EQ(d.changed->payload_len, ev->payload_len);
  CHECK(memcmp(d.changed->data + d.changed->payload_off,
               "\x83\xa1x\xcb\x3f\xf0\0\0\0\0\0\0\xa1m\x82\xa1" "b\xc3\xa1k"
               "\xc4\x01\x01\x01\x01", ev->payload_len) == 0);
  sl_event_unref(d.changed);
  sl_event_unref(ev);
  sl_rule_free(r);
}

/* The hook between calls is the idle one (state.c idle_hook): none when
 * the watchdog guards the thread, the count hook with rules.jit. */
static int idle_hook(const struct sl_rule *r) {
  const struct box *b = r->box;
  int mask = lua_gethookmask(b->L), count = lua_gethookcount(b->L);
  int idle = b->jit || b->counting ? mask == LUA_MASKCOUNT &&
                                         count == HOOK_COUNT
                                   : mask == 0;

  if (!idle || b->in_call || b->fast_hook)
    fprintf(stderr, "  hook mask %d count %d (jit %d counting %d), in_call "
            "%d fast_hook %d\n", mask, count, b->jit, b->counting,
            b->in_call, b->fast_hook);
  return idle && !b->in_call && !b->fast_hook;
}

/* finish (the changed event built after on_event) ends as every call does
 * (box_call's epilogue): a payload write, by the write log or by finish,
 * leaves the idle hook; so does finish running out of on_event's budget,
 * and the next call has a whole budget again. It used to put the count
 * hook back after an overrun, where the watchdog had removed it. */
TEST(sandbox_payload_writes_leave_the_idle_hook_and_a_whole_budget) {
  char err[512];
  struct sl_rule_limits lim = {2000, 128, NULL, NULL, NULL, 16u << 20,
                               jit_on};
  struct sl_rule_host host;
  struct sl_rule_decision d;
  struct sl_rule *r;
  int k;

  memset(&host, 0, sizeof(host));
  r = sl_rule_load(
      write_rule("local big = {}\n"
                 "return { on_start = function()\n"
                 "  for i = 1, 1000000 do big[i] = i % 100 end end,\n"
                 "on_event = function(ev)\n"
                 "  local t = ev.topic\n"
                 "  if t == 'log' then ev.payload.priority = 'high' end\n"
                 "  if t == 'set' then ev.payload = { amount = 1 } end\n"
                 "  if t == 'big' then ev.payload = big end\n"
                 "  return 'out'\n"
                 "end }\n"),
      &lim, &host, err, sizeof(err));
  CHECK(r != NULL);
  if (!jit_on) /* this thread has the watchdog: no hook between calls */
    CHECK_EQ(r->box->counting, 0);
  CHECK(idle_hook(r));
  run(r, "log", 5, &d); /* the write log's path: no call */
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK(d.changed != NULL);
  sl_event_unref(d.changed);
  CHECK(idle_hook(r));
  run(r, "set", 5, &d); /* finish, in a call */
  CHECK_EQ(d.verdict, SL_RULE_ROUTE);
  CHECK(d.changed != NULL);
  sl_event_unref(d.changed);
  CHECK(idle_hook(r));
  /* on_event itself takes no time; encoding a million values in finish
   * takes far more than 1 ms of CPU. The collector is stopped: a step that
   * traverses the million-entry table takes milliseconds too, in whichever
   * call it falls (seen once in make test, in the "set" below) */
  lua_gc(r->box->L, LUA_GCCOLLECT, 0);
  lua_gc(r->box->L, LUA_GCSTOP, 0);
  r->cpu_budget_ms = 1;
  for (k = 0; k < 3; k++) {
    run(r, "big", 5, &d);
    CHECK_EQ(d.verdict, SL_RULE_ERROR);
    CHECK_EQ(d.error, SL_RULE_ERR_CPU);
    CHECK(d.changed == NULL);
    CHECK(idle_hook(r));
    run(r, "set", 5, &d); /* a whole budget again */
    if (d.verdict != SL_RULE_ROUTE)
      fprintf(stderr, "  set: %s\n", d.message); /* which limit */
    CHECK_EQ(d.verdict, SL_RULE_ROUTE);
    CHECK(d.changed != NULL);
    sl_event_unref(d.changed);
    CHECK(idle_hook(r));
  }
  sl_rule_free(r);
}

/* ---- rules.jit: compiled code under the CPU budget (issue 14 item 3) ----
 * tests/c/test_jit_budget.c shows the mechanism on bare LuaJIT; these show
 * the engine's use of it: every kind of loop stopped within its budget once
 * compiled, again and again, in two states, and on two threads at once. */

#define JIT_BUDGET_MS 10
/* Over the budget: the exit at the first tick (sent at the deadline),
 * the unwind. It was 15 while the first tick came from the timer, which
 * the kernel counts in scheduler ticks (4 ms here): ~16 ms stops. */
#define JIT_SLACK_MS 3
/* A thread that overruns while another holds the interrupt also waits
 * for it (retrying every ms) */
#define JIT_WAIT_SLACK_MS 10

static const char jit_rule[] =
    "local function g(n) return n + 1 end\n"
    "local function tail(n) return tail(n + 1) end\n"
    "return { on_event = function(ev)\n"
    "  local t = ev.topic\n"
    "  if t == 'warm' then local x = 0 for i = 1, 300 do x = x + i % 7 end return 'ok' end\n"
    "  if t == 'while' then while true do end end\n"
    "  if t == 'for' then local x = 0 for i = 1, 1e15 do x = x + i end return tostring(x) end\n"
    "  if t == 'strings' then local n = 0 while true do\n"
    "      local s = string.rep('ab', 20) n = n + #s:gsub('a', 'b') end end\n"
    "  if t == 'cfunc' then local n = 0 while true do n = n + sluice.now() end end\n"
    "  if t == 'calls' then local n = 0 while true do n = g(n) end end\n"
    "  if t == 'tail' then return tail(1) end\n"
    "  if t == 'lines' then local n = 0\n"
    "    while true do\n"
    "      n = n + 1\n"
    "      if n % 3 == 0 then n = n - 1 end\n"
    "    end\n"
    "  end\n"
    "  return 'ok'\n"
    "end }\n";
static const char *const jit_loops[] = {"while", "for",   "strings", "cfunc",
                                        "calls", "tail", "lines"};

/* Does r's state hold compiled code? jit.util, preloaded in the state's
 * registry (out of the rule's reach), lists its traces. */
static int traced(struct sl_rule *r) {
  lua_State *L = r->box->L;
  int top = lua_gettop(L), n = -1;
  lua_getfield(L, LUA_REGISTRYINDEX, "_PRELOAD");
  lua_getfield(L, -1, "jit.util");
  if (lua_isfunction(L, -1)) {
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "traceinfo");
    lua_pushinteger(L, 1);
    lua_call(L, 1, 1);
    n = !lua_isnil(L, -1);
  }
  lua_settop(L, top);
  return n;
}

/* The least CPU (us) of three runs of topic, each of which must fail on
 * the CPU budget; -1 when one did not. */
static long overrun_us(struct sl_rule *r, const char *topic) {
  struct sl_rule_decision d;
  long best = -1;
  int i;
  for (i = 0; i < 3; i++) {
    uint64_t t0 = thread_cpu_us();
    run(r, topic, -1, &d);
    if (d.error != SL_RULE_ERR_CPU) {
      fprintf(stderr, "  %s: verdict %d error %d %s\n", topic, d.verdict,
              d.error, d.message);
      return -1;
    }
    if (best < 0 || (long)(thread_cpu_us() - t0) < best)
      best = (long)(thread_cpu_us() - t0);
    if (best <= (JIT_BUDGET_MS + JIT_SLACK_MS) * 1000)
      break;
  }
  return best;
}

TEST(sandbox_jit_off_leaves_no_compiled_code) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r;
  int i;
  if (jit_on)
    return; /* the case is about the default */
  r = load(jit_rule, JIT_BUDGET_MS, 16, NULL, err, sizeof(err));
  CHECK(r != NULL);
  for (i = 0; i < 500; i++)
    run(r, "warm", -1, &d);
  CHECK_STR(d.routes[0], "ok");
  CHECK_EQ(traced(r), 0);
  sl_rule_free(r);
}

TEST(sandbox_jit_compiled_loops_stop_within_the_cpu_budget) {
  char err[512];
  struct sl_rule_decision d;
  struct sl_rule *r;
  size_t i;
  int save = jit_on, k;
  long us;

  jit_on = 1;
  r = load(jit_rule, JIT_BUDGET_MS, 16, NULL, err, sizeof(err));
  jit_on = save;
  CHECK(r != NULL);
  for (k = 0; k < 500; k++)
    run(r, "warm", -1, &d);
  CHECK_STR(d.routes[0], "ok");
  CHECK_EQ(traced(r), 1); /* on_event runs compiled */
  for (k = 0; k < 2; k++) { /* the second round: after flush and rebuild */
    for (i = 0; i < sizeof(jit_loops) / sizeof(jit_loops[0]); i++) {
      us = overrun_us(r, jit_loops[i]);
      fprintf(stderr, "    jit %-8s stopped after %ld us of CPU\n",
              jit_loops[i], us);
      CHECK(us >= JIT_BUDGET_MS * 1000 * 15 / 16);
      CHECK(us <= (JIT_BUDGET_MS + JIT_SLACK_MS) * 1000);
      run(r, "ok", -1, &d);
      CHECK_EQ(d.verdict, SL_RULE_ROUTE);
      CHECK_STR(d.routes[0], "ok");
    }
    for (i = 0; i < 500; i++)
      run(r, "warm", -1, &d);
    CHECK_EQ(traced(r), 1); /* compiled again after the flush */
  }
  sl_rule_free(r);
}

/* The interrupt moves from state to state and comes back each time. */
TEST(sandbox_jit_interrupt_serves_every_state_in_turn) {
  char err[512];
  struct sl_rule *r[3];
  int save = jit_on, i, k;
  long us;

  jit_on = 1;
  for (i = 0; i < 3; i++)
    r[i] = load(jit_rule, JIT_BUDGET_MS, 16, NULL, err, sizeof(err));
  jit_on = save;
  CHECK(r[0] && r[1] && r[2]);
  for (k = 0; k < 3; k++)
    for (i = 0; i < 3; i++) {
      us = overrun_us(r[i], k == 1 ? "for" : "while");
      CHECK(us >= 0 && us <= (JIT_BUDGET_MS + JIT_SLACK_MS) * 1000);
    }
  for (i = 0; i < 3; i++)
    sl_rule_free(r[i]);
}

struct jit_thread {
  struct sl_rule *r;
  long us;
  int traced; /* compiled on this thread before the overrun */
};

static void *jit_thread_run(void *arg) {
  struct jit_thread *t = arg;
  struct sl_rule_decision d;
  int k;
  for (k = 0; k < 500; k++) /* compiled again after the last overrun */
    run(t->r, "warm", -1, &d);
  t->traced = traced(t->r);
  t->us = overrun_us(t->r, "while");
  return NULL;
}

/* Two threads (each its own watchdog) overrun at once: one holds the
 * interrupt, the other waits for it and is stopped next. */
TEST(sandbox_jit_two_threads_overrunning_at_once_are_both_stopped) {
  char err[512];
  struct jit_thread t[2];
  pthread_t th[2];
  int save = jit_on, i, round;

  jit_on = 1;
  for (i = 0; i < 2; i++)
    t[i].r = load(jit_rule, JIT_BUDGET_MS, 16, NULL, err, sizeof(err));
  jit_on = save;
  CHECK(t[0].r && t[1].r);
  for (round = 0; round < 3; round++) {
    for (i = 0; i < 2; i++)
      CHECK_EQ(pthread_create(&th[i], NULL, jit_thread_run, &t[i]), 0);
    for (i = 0; i < 2; i++)
      pthread_join(th[i], NULL);
    for (i = 0; i < 2; i++) {
      fprintf(stderr, "    thread %d stopped after %ld us of CPU\n", i,
              t[i].us);
      CHECK(t[i].us >= 0);
      CHECK_EQ(t[i].traced, 1);
      /* the waiter's wait for the interrupt is CPU too */
      CHECK(t[i].us <= (JIT_BUDGET_MS + JIT_WAIT_SLACK_MS) * 1000);
    }
  }
  for (i = 0; i < 2; i++)
    sl_rule_free(t[i].r);
}

/* A call that passes its wall deadline with its CPU budget unspent (its
 * thread preempted; here a host callback that sleeps past it) is no
 * overrun: it must not take the one interrupt and keep it while it runs
 * on, for an overrunning call on another thread waits for that interrupt.
 * A (50 ms budget) naps 60 ms in sluice.log, then spins; B (10 ms) starts
 * its runaway once A's nap is over. B must be stopped within its budget
 * plus the waiter's slack, not after A's remaining 50 ms of CPU; A is not
 * stopped before 15/16 of its budget for the time it slept. */
struct nap_case {
  struct sl_rule *a, *b;
  const char *src;
  struct sl_rule_limits la, lb;
  struct sl_rule_host host;
  char err[512];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int b_ready, go;
  long a_us, b_us;
  int a_error, b_error, b_traced;
};

static void nap_log(void *data, struct sl_rule *r, int level, const char *msg,
                    const uint8_t *fields, size_t len) {
  struct nap_case *c = data;
  (void)r, (void)level, (void)msg, (void)fields, (void)len;
  sleep_ms(60);
  pthread_mutex_lock(&c->mu);
  c->go = 1;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void *nap_b_run(void *arg) {
  struct nap_case *c = arg;
  struct sl_rule_decision d;
  uint64_t t0;
  int k;
  /* loaded here, not on the main thread: the box's CPU sample, taken at
   * load, is the loading thread's clock and is kept by calls that follow
   * within a sixteenth of the budget */
  c->b = sl_rule_load(write_rule(c->src), &c->lb, NULL, c->err,
                      sizeof(c->err));
  for (k = 0; c->b && k < 500; k++)
    run(c->b, "warm", -1, &d);
  c->b_traced = c->b ? traced(c->b) : -1;
  pthread_mutex_lock(&c->mu);
  c->b_ready = 1;
  pthread_cond_broadcast(&c->cv);
  while (!c->go && c->b)
    pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  if (c->b == NULL)
    return NULL;
  t0 = thread_cpu_us();
  run(c->b, "while", -1, &d);
  c->b_us = (long)(thread_cpu_us() - t0);
  c->b_error = d.error;
  return NULL;
}

static void *nap_a_run(void *arg) {
  struct nap_case *c = arg;
  struct sl_rule_decision d;
  uint64_t t0;
  int k;
  c->a = sl_rule_load(write_rule(c->src), &c->la, &c->host, c->err,
                      sizeof(c->err));
  if (c->a == NULL) {
    nap_log(c, NULL, 0, NULL, NULL, 0); /* let B go */
    return NULL;
  }
  for (k = 0; k < 500; k++)
    run(c->a, "warm", -1, &d);
  t0 = thread_cpu_us();
  run(c->a, "nap", -1, &d);
  c->a_us = (long)(thread_cpu_us() - t0);
  c->a_error = d.error;
  return NULL;
}

TEST(sandbox_jit_a_preempted_call_does_not_keep_the_interrupt_from_a_runaway) {
  static const char nap_rule[] =
      "return { on_event = function(ev)\n"
      "  local t = ev.topic\n"
      "  if t == 'warm' then local x = 0 for i = 1, 300 do x = x + i % 7 end return 'ok' end\n"
      "  if t == 'nap' then sluice.log('info', 'nap') while true do end end\n"
      "  if t == 'while' then while true do end end\n"
      "  return 'ok'\n"
      "end }\n";
  struct sl_rule_limits la = {50, 16, NULL, NULL, NULL, 0, 1},
                        lb = {JIT_BUDGET_MS, 16, NULL, NULL, NULL, 0, 1};
  struct nap_case c;
  pthread_t ta, tb;

  memset(&c, 0, sizeof(c));
  pthread_mutex_init(&c.mu, NULL);
  pthread_cond_init(&c.cv, NULL);
  c.src = nap_rule;
  c.la = la;
  c.lb = lb;
  c.host.data = &c;
  c.host.log = nap_log;
  CHECK_EQ(pthread_create(&tb, NULL, nap_b_run, &c), 0);
  pthread_mutex_lock(&c.mu);
  while (!c.b_ready)
    pthread_cond_wait(&c.cv, &c.mu);
  pthread_mutex_unlock(&c.mu);
  CHECK_EQ(pthread_create(&ta, NULL, nap_a_run, &c), 0);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  CHECK(c.a != NULL && c.b != NULL);
  if (c.a == NULL || c.b == NULL)
    fprintf(stderr, "  load: %s\n", c.err);
  fprintf(stderr, "    napping A stopped after %ld us of CPU, B after %ld us\n",
          c.a_us, c.b_us);
  CHECK_EQ(c.b_traced, 1);
  CHECK_EQ(c.a_error, SL_RULE_ERR_CPU);
  CHECK_EQ(c.b_error, SL_RULE_ERR_CPU);
  CHECK(c.a_us >= 50 * 1000 * 15 / 16);
  CHECK(c.b_us >= JIT_BUDGET_MS * 1000 * 15 / 16);
  CHECK(c.b_us <= (JIT_BUDGET_MS + JIT_WAIT_SLACK_MS) * 1000);
  sl_rule_free(c.a);
  sl_rule_free(c.b);
  pthread_mutex_destroy(&c.mu);
  pthread_cond_destroy(&c.cv);
}

/* The budget is the CPU time of the thread that runs the call. A rule
 * loaded on one thread (this one, which has run for a while) and run at
 * once on another must be measured on the other's clock: a call that
 * sleeps 220 ms in sluice.log (past its 200 ms wall deadline, no CPU) and
 * then returns is no overrun. The box kept the sample of the loading
 * thread's clock (taken within a sixteenth of the budget), found the
 * running thread's clock behind it and stopped the call for CPU it never
 * used. */
struct moved_case {
  struct sl_rule *r;
  struct sl_rule_decision d;
  long us;
};

static void sleep_log(void *data, struct sl_rule *r, int level,
                      const char *msg, const uint8_t *fields, size_t len) {
  (void)data, (void)r, (void)level, (void)msg, (void)fields, (void)len;
  sleep_ms(220);
}

static void *moved_run(void *arg) {
  struct moved_case *c = arg;
  uint64_t t0 = thread_cpu_us();
  run(c->r, "nap", -1, &c->d);
  c->us = (long)(thread_cpu_us() - t0);
  return NULL;
}

TEST(sandbox_a_rule_run_on_another_thread_than_its_load_gets_its_budget) {
  struct sl_rule_limits lim = {200, 16, NULL, NULL, NULL, 0, jit_on};
  struct sl_rule_host host;
  struct moved_case c;
  pthread_t th;
  uint64_t t0 = thread_cpu_us();
  char err[512];
  volatile unsigned long spin = 0;

  while (thread_cpu_us() - t0 < 50000) /* this thread's clock well ahead */
    spin++;
  memset(&c, 0, sizeof(c));
  memset(&host, 0, sizeof(host));
  host.log = sleep_log;
  c.r = sl_rule_load(write_rule("return { on_event = function(ev)\n"
                                "  sluice.log('info', 'nap')\n"
                                "  return 'ok' end }"),
                     &lim, &host, err, sizeof(err));
  CHECK(c.r != NULL);
  if (c.r == NULL)
    return;
  CHECK_EQ(pthread_create(&th, NULL, moved_run, &c), 0);
  pthread_join(th, NULL);
  if (c.d.error)
    fprintf(stderr, "  %s (%ld us of CPU)\n", c.d.message, c.us);
  CHECK_EQ(c.d.error, SL_RULE_ERR_NONE);
  CHECK_EQ(c.d.verdict, SL_RULE_ROUTE);
  sl_rule_free(c.r);
}

/* Between deadlines a call runs with no hook when the watchdog can stop
 * it; a thread that blocks the watchdog's signal gets the count hook
 * instead, so runaway code is stopped there too, within the budget. */
struct blocked_thread {
  int error;
  long us;
};

static void *blocked_thread_run(void *arg) {
  struct blocked_thread *t = arg;
  struct sl_rule_decision d;
  struct sl_rule *r;
  sigset_t set;
  char err[512];
  uint64_t t0;

  sigemptyset(&set);
  sigaddset(&set, SIGRTMIN + WATCHDOG_SIGNAL);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  r = load("return { on_event = function(ev)\n"
           "  if ev.topic == 'spin' then while true do end end\n"
           "  return 'ok' end }", 20, 16, NULL, err, sizeof(err));
  if (r == NULL) {
    fprintf(stderr, "  load: %s\n", err);
    return NULL;
  }
  run(r, "warm", -1, &d); /* a call that ends in time stays fine */
  t->error = d.verdict == SL_RULE_ROUTE ? 0 : -1;
  if (t->error == 0) {
    t0 = thread_cpu_us();
    run(r, "spin", -1, &d);
    t->us = (long)(thread_cpu_us() - t0);
    t->error = d.error;
  }
  sl_rule_free(r);
  return NULL;
}

TEST(sandbox_a_thread_blocking_the_watchdog_signal_still_stops_runaways) {
  struct blocked_thread t = {-1, -1};
  pthread_t th;

  CHECK_EQ(pthread_create(&th, NULL, blocked_thread_run, &t), 0);
  pthread_join(th, NULL);
  fprintf(stderr, "    stopped after %ld us of CPU\n", t.us);
  CHECK_EQ(t.error, SL_RULE_ERR_CPU);
  CHECK(t.us >= 20 * 1000 * 15 / 16);
  CHECK(t.us <= 200 * 1000); /* 20 ms budget, generous for load */
}

/* Red team (r10/jitred): four threads (workers = 4 on 2 cores), each its
 * own state, overrun together again and again with loops that swallow the
 * budget's error (pcall, xpcall, coroutines) besides plain ones; each call
 * is measured, not the least of three. */
static const char jit_red_rule[] =
    "local function spin() local x = 0 for i = 1, 1e15 do x = x + i % 7 end end\n"
    "local function swallow(e) local x = 0 for i = 1, 1e12 do x = x + i end return e end\n"
    "local function cospin() local x = 0 while true do x = x + 1 coroutine.yield(x) end end\n"
    "return { on_event = function(ev)\n"
    "  local t = ev.topic\n"
    "  if t == 'warm' then local x = 0 for i = 1, 300 do x = x + i % 7 end return 'ok' end\n"
    "  if t == 'while' then while true do end end\n"
    "  if t == 'pcall' then while true do pcall(spin) end end\n"
    "  if t == 'xpcall' then while true do xpcall(spin, swallow) end end\n"
    "  if t == 'coro' then while true do local co = coroutine.create(cospin)\n"
    "      for i = 1, 1e6 do coroutine.resume(co) end end end\n"
    "  return 'ok'\n"
    "end }\n";
static const char *const jit_red_loops[] = {"while", "pcall", "xpcall", "coro"};
#define JIT_RED_MAX 8
static int jit_red_threads(void) {
  const char *e = getenv("JIT_RED_THREADS");
  int n = e ? atoi(e) : 4;
  return n >= 1 && n <= JIT_RED_MAX ? n : JIT_RED_MAX;
}
#define JIT_RED_THREADS jit_red_threads()
#define JIT_RED_ROUNDS 10

struct jit_red_thread {
  struct sl_rule *r;
  long max_us[4];
  int errors;
};

static void *jit_red_run(void *arg) {
  struct jit_red_thread *t = arg;
  struct sl_rule_decision d;
  int k, i;
  for (k = 0; k < JIT_RED_ROUNDS; k++) {
    for (i = 0; i < 500; i++)
      run(t->r, "warm", -1, &d);
    for (i = 0; i < 4; i++) {
      uint64_t t0 = thread_cpu_us();
      long us;
      run(t->r, jit_red_loops[i], -1, &d);
      us = (long)(thread_cpu_us() - t0);
      if (d.error != SL_RULE_ERR_CPU)
        t->errors++;
      if (us > t->max_us[i])
        t->max_us[i] = us;
    }
  }
  return NULL;
}

TEST(sandbox_jit_red_four_threads_every_shape_each_call_bounded) {
  char err[512];
  struct jit_red_thread t[JIT_RED_MAX];
  pthread_t th[JIT_RED_MAX];
  int save = jit_on, i, j;
  long worst = 0;

  memset(t, 0, sizeof(t));
  jit_on = 1;
  for (i = 0; i < JIT_RED_THREADS; i++)
    t[i].r = load(jit_red_rule, JIT_BUDGET_MS, 16, NULL, err, sizeof(err));
  jit_on = save;
  for (i = 0; i < JIT_RED_THREADS; i++)
    CHECK(t[i].r != NULL);
  for (i = 0; i < JIT_RED_THREADS; i++)
    CHECK_EQ(pthread_create(&th[i], NULL, jit_red_run, &t[i]), 0);
  for (i = 0; i < JIT_RED_THREADS; i++)
    pthread_join(th[i], NULL);
  for (i = 0; i < JIT_RED_THREADS; i++) {
    fprintf(stderr, "    thread %d worst:", i);
    for (j = 0; j < 4; j++) {
      fprintf(stderr, " %s %ld us", jit_red_loops[j], t[i].max_us[j]);
      if (t[i].max_us[j] > worst)
        worst = t[i].max_us[j];
    }
    fprintf(stderr, "\n");
  }
  for (i = 0; i < JIT_RED_THREADS; i++) {
    CHECK_EQ(t[i].errors, 0);
    sl_rule_free(t[i].r);
  }
  /* a waiter waits for the others to be stopped, each within ms of its
   * budget, and there is no queue for the one interrupt: with four threads
   * on two cores a waiter can be behind all three others, each preempted
   * while it holds it. Typically 13-15 ms; 32.5 ms seen once in a clean-clone
   * CI here (a coroutine runaway), against the 144-267 ms of the bug this
   * case was written for. */
  CHECK(worst <= (JIT_BUDGET_MS + 5 * JIT_WAIT_SLACK_MS) * 1000);
}

/* A rule run on a thread with a small C stack: C levels that re-enter
 * Lua (gsub through its replacement, table.sort through its comparison,
 * os.time through a metamethod) stop once they have used a quarter of the
 * thread's stack, before the count of 100 levels: "C calls nested too deep
 * (N levels used K KiB of C stack)", a Lua error, never a crash; the state
 * works after on that thread. On this (main, 8 MiB) thread the same rule
 * ends at the count instead: the share is what stopped the small one. The
 * shapes take 0.5-2 KiB per level here (pcall's ~0.3 KiB, a coroutine's
 * ~0.3 KiB reach the count or the share first by a few levels, so they
 * are not among them). */
#define SMALL_STACK (128u << 10)

static const char *const deep_topics[] = {"gsub", "sort", "time"};
#define NDEEP (int)(sizeof(deep_topics) / sizeof(deep_topics[0]))

struct deep_run {
  struct sl_rule *r;
  char messages[NDEEP][512];
  int errors[NDEEP];
  int fine_verdict;
};

static void *deep_run_all(void *arg) {
  struct deep_run *c = arg;
  struct sl_rule_decision d;
  int i;

  for (i = 0; i < NDEEP; i++) {
    run(c->r, deep_topics[i], -1, &d);
    c->errors[i] = d.error;
    snprintf(c->messages[i], sizeof(c->messages[i]), "%s", d.message);
  }
  run(c->r, "fine", -1, &d);
  c->fine_verdict = d.verdict;
  return NULL;
}

TEST(sandbox_c_levels_past_a_quarter_of_a_small_thread_stack_end_in_a_lua_error) {
  char err[512];
  struct deep_run small, main_thread;
  pthread_attr_t a;
  pthread_t th;
  int i;

  memset(&small, 0, sizeof(small));
  memset(&main_thread, 0, sizeof(main_thread));
  small.r = load(
      "local big = ('x'):rep(3000)\n"
      "return { on_event = function(ev)\n"
      "  local t, mt = ev.topic, {}\n"
      "  if t == 'gsub' then\n"
      "    local function g(x) return (big:gsub('^x', g)) end\n"
      "    return g()\n"
      "  elseif t == 'sort' then\n"
      "    local function c(a, b) table.sort({3, 2, 1}, c) return a < b end\n"
      "    table.sort({3, 2, 1}, c)\n"
      "  elseif t == 'time' then\n"
      "    mt.__index = function() return os.time(setmetatable({}, mt)) end\n"
      "    return tostring(os.time(setmetatable({}, mt)))\n"
      "  end\n"
      "  return 'ok'\n"
      "end }\n", 5000, 64, NULL, err, sizeof(err));
  CHECK(small.r != NULL);
  main_thread.r = small.r;
  CHECK_EQ(pthread_attr_init(&a), 0);
  CHECK_EQ(pthread_attr_setstacksize(&a, SMALL_STACK), 0);
  CHECK_EQ(pthread_create(&th, &a, deep_run_all, &small), 0);
  pthread_join(th, NULL);
  pthread_attr_destroy(&a);
  deep_run_all(&main_thread);
  for (i = 0; i < NDEEP; i++) {
    int levels = 0, kib = 0;
    const char *m = strstr(small.messages[i], "C calls nested too deep (");
    fprintf(stderr, "    %s: %s\n", deep_topics[i], small.messages[i]);
    CHECK_EQ(small.errors[i], SL_RULE_ERR_RUNTIME);
    CHECK(m != NULL);
    CHECK_EQ(sscanf(m, "C calls nested too deep (%d levels used %d KiB of C "
                       "stack)", &levels, &kib), 2);
    /* the share, a quarter of the stack, stopped it, not the count: the
     * level that passed it is the last (a level takes at most ~3 KiB) */
    CHECK(levels > 0 && levels < 100);
    CHECK(kib >= (int)(SMALL_STACK >> 12) && kib < (int)(SMALL_STACK >> 12) + 8);
    CHECK_EQ(main_thread.errors[i], SL_RULE_ERR_RUNTIME);
    CHECK(strstr(main_thread.messages[i], "C calls nested deeper than 100"));
  }
  CHECK_EQ(small.fine_verdict, SL_RULE_ROUTE);
  CHECK_EQ(main_thread.fine_verdict, SL_RULE_ROUTE);
  sl_rule_free(small.r);
}

/* Last: every case above once more with rules.jit on. */
TEST(sandbox_every_case_again_with_the_jit_on) {
  int i, f, bad = 0;
  jit_on = 1;
  for (i = 0; i < sl_ntests; i++) {
    if (sl_tests[i].fn == test_sandbox_every_case_again_with_the_jit_on)
      continue;
    f = 0;
    sl_tests[i].fn(&f);
    if (f) {
      fprintf(stderr, "  with the jit on: FAIL %s\n", sl_tests[i].name);
      bad = 1;
    }
  }
  jit_on = 0;
  CHECK_EQ(bad, 0);
}
