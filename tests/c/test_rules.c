/* test_rules.c - the rule set (engine/lua/rules.c): loading a folder in
 * lexical order, deciding (first decider wins, config routes, unrouted,
 * drops, failures to the dead letter), reloads that are all or nothing,
 * the handover of state and timers between versions, staged emits, and
 * the set's metrics in a registry. */
#include <fcntl.h>
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

/* A rule set over a fresh folder: outputs a, b and the dead letter; the
 * config routes "cfg.*" to b. */
struct set {
  char dir[64], rules[96];
  struct sl_config *cfg;
  struct sl_idgen g;
  uv_loop_t loop;
  int with_loop;
  struct sl_rules *rs;
  char err[1024];
  /* what the owner got from sluice.emit: topics, in order */
  char emitted[64][32];
  int nemitted;
};

__attribute__((constructor)) static void quiet(void) {
  sl_log_set_fd(open("/dev/null", O_WRONLY)); /* rejected reloads log */
}

static void write_file(const char *dir, const char *name, const char *text) {
  char path[256];
  FILE *f;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

static void on_emit(void *data, int output, struct sl_event *ev) {
  struct set *s = data;
  struct sl_str t = sl_event_topic(ev);
  if (s->nemitted < 64)
    snprintf(s->emitted[s->nemitted++], 32, "%d:%.*s", output, (int)t.len,
             t.p);
  sl_event_unref(ev);
}

/* Make the folder and config; rules are written by the test, then
 * set_start loads them. */
static int set_init(struct set *s, int with_loop) {
  char conf[512];
  struct sl_buf err;
  memset(s, 0, sizeof(*s));
  snprintf(s->dir, sizeof(s->dir), "/tmp/sluice-test-rules-XXXXXX");
  if (mkdtemp(s->dir) == NULL)
    return -1;
  snprintf(s->rules, sizeof(s->rules), "%s/rules", s->dir);
  mkdir(s->rules, 0700);
  snprintf(conf, sizeof(conf),
           "return { inputs = {{name='in', type='tcp', "
           "listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='a', type='null'}, {name='b', type='null'}},\n"
           " routes = {{topics='cfg.*', to='b'}},\n"
           " rules = { dir = '%s', watch = false } }\n",
           s->rules);
  write_file(s->dir, "c.lua", conf);
  snprintf(conf, sizeof(conf), "%s/c.lua", s->dir);
  sl_buf_init(&err);
  s->cfg = sl_config_load(conf, sl_plugins, &err);
  sl_buf_close(&err);
  sl_idgen_init(&s->g);
  s->with_loop = with_loop;
  if (with_loop && uv_loop_init(&s->loop) != 0)
    return -1;
  return s->cfg ? 0 : -1;
}

static int set_start(struct set *s) {
  struct sl_rules_owner owner = {s, on_emit, NULL, 0};
  s->rs = sl_rules_new(s->cfg, s->with_loop ? &s->loop : NULL, &s->g, &owner,
                       s->err, sizeof(s->err));
  return s->rs ? 0 : -1;
}

static void set_close(struct set *s) {
  char cmd[128];
  if (s->rs)
    sl_rules_stop(s->rs);
  if (s->with_loop) {
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
  }
  sl_rules_free(s->rs);
  sl_config_free(s->cfg);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", s->dir);
}

static struct sl_event *event(struct set *s, const char *topic) {
  struct sl_str none = {NULL, 0}, t = {topic, (uint32_t)strlen(topic)};
  return sl_event_new(&s->g, none, t, none, 1, 1000, NULL, 0, NULL, 0, 0);
}

/* Decide an event of topic; r->event is released here (its topic and
 * headers are checked through hdr, when given, before that). */
static void decide(struct set *s, const char *topic, struct sl_rules_result *r,
                   const char *hdr, char *hdr_value, size_t hdr_len) {
  sl_rules_decide(s->rs, event(s, topic), r);
  if (hdr) {
    char *found = memmem(r->event->data, r->event->len, hdr, strlen(hdr));
    snprintf(hdr_value, hdr_len, "%s", found ? "yes" : "no");
  }
  sl_event_unref(r->event);
  r->event = NULL;
}

static const char *route_to(const char *out) {
  static char src[256];
  snprintf(src, sizeof(src),
           "return { topics = 'x.*', on_event = function(ev) "
           "return '%s' end }\n", out);
  return src;
}

/* A rule that drops x.* with its own running count as the reason; kept
 * across versions through snapshot/restore when with_handover. */
static const char *counting(const char *tag, int with_handover) {
  static char src[512];
  snprintf(src, sizeof(src),
           "local n = 0 -- %s\n"
           "return { topics = 'x.*',\n"
           "  on_event = function(ev) n = n + 1\n"
           "    return sluice.drop('%s' .. n) end%s }\n",
           tag, tag,
           with_handover ? ",\n  snapshot = function() return { n = n } end,\n"
                           "  restore = function(v) n = v.n end"
                         : "");
  return src;
}

/* ---- loading and deciding ----------------------------------------------- */

TEST(rules_load_in_lexical_order_and_the_first_decider_wins) {
  struct set s;
  struct sl_rules_result r;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_pass.lua",
             "return { topics = '*', on_event = function(ev) end }\n");
  write_file(s.rules, "20_to_b.lua", route_to("b"));
  write_file(s.rules, "30_to_a.lua", route_to("a"));
  write_file(s.rules, "20_to_b_spec.lua", "this is not lua");
  write_file(s.rules, "notes.txt", "neither is this");
  CHECK_EQ(set_start(&s), 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  CHECK_EQ(r.outcome, SL_RULES_ROUTED);
  CHECK_EQ(r.ntargets, 1);
  CHECK_EQ(r.targets[0], 1); /* b */
  CHECK(strstr(r.rule, "20_to_b.lua") != NULL);
  CHECK_EQ(r.route, -1);
  CHECK_EQ(sl_rules_stats(s.rs)->version, 1u);
  set_close(&s);
}

TEST(rules_without_a_decider_fall_back_to_config_routes_then_unrouted) {
  struct set s;
  struct sl_rules_result r;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_to_a.lua", route_to("a"));
  CHECK_EQ(set_start(&s), 0);
  decide(&s, "cfg.1", &r, NULL, NULL, 0);
  CHECK_EQ(r.outcome, SL_RULES_ROUTED);
  CHECK_EQ(r.route, 0);
  CHECK(r.rule == NULL);
  CHECK_EQ(r.ntargets, 1);
  CHECK_EQ(r.targets[0], 1);
  decide(&s, "other", &r, NULL, NULL, 0);
  CHECK_EQ(r.outcome, SL_RULES_UNROUTED);
  CHECK_EQ(r.ntargets, 0);
  CHECK_EQ(sl_rules_stats(s.rs)->unrouted, 1u);
  set_close(&s);
}

TEST(rules_drop_counts_and_names_its_reason) {
  struct set s;
  struct sl_rules_result r;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_count.lua", counting("v", 0));
  CHECK_EQ(set_start(&s), 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  CHECK_EQ(r.outcome, SL_RULES_DROPPED);
  CHECK_STR(r.reason, "v2");
  CHECK_EQ(r.ntargets, 0);
  CHECK_EQ(sl_rules_stats(s.rs)->dropped, 2u);
  set_close(&s);
}

TEST(rules_failing_rule_sends_the_event_to_the_dead_letter_with_the_error) {
  struct set s;
  struct sl_rules_result r;
  char has[8];
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_boom.lua",
             "return { topics = '*', on_event = function(ev) "
             "error('boom') end }\n");
  CHECK_EQ(set_start(&s), 0);
  decide(&s, "x.1", &r, "sluice-error", has, sizeof(has));
  CHECK_EQ(r.outcome, SL_RULES_FAILED);
  CHECK_EQ(r.ntargets, 1);
  CHECK_EQ(r.targets[0], s.cfg->dead_letter);
  CHECK(strstr(r.reason, "boom") != NULL);
  CHECK_STR(has, "yes");
  CHECK_EQ(sl_rules_stats(s.rs)->dead_lettered, 1u);
  set_close(&s);
}

TEST(rules_routing_to_an_unknown_output_is_the_rules_error) {
  struct set s;
  struct sl_rules_result r;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_nowhere.lua", route_to("nowhere"));
  CHECK_EQ(set_start(&s), 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  CHECK_EQ(r.outcome, SL_RULES_FAILED);
  CHECK(strstr(r.reason, "unknown output \"nowhere\"") != NULL);
  CHECK_EQ(r.targets[0], s.cfg->dead_letter);
  set_close(&s);
}

/* Output names a rule returns are resolved through a small cache (rules.c):
 * more names than its slots, an unknown name after known ones, and a
 * config reload that moves every output all resolve as the config says. */
TEST(rules_returned_output_names_follow_the_config_across_reloads) {
  struct set s;
  struct sl_rules_result r;
  struct sl_config *old;
  struct sl_buf err;
  char conf[512], path[128];
  static const char *const names[] = {"a", "b", "b", "a", "nowhere", "a"};
  static const int want[] = {0, 1, 1, 0, -1, 0};
  int i, round;

  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_by_topic.lua",
             "return { topics = 'x.*', on_event = function(ev) "
             "return (ev.topic:sub(3)) end }\n");
  CHECK_EQ(set_start(&s), 0);
  for (round = 0; round < 3; round++)
    for (i = 0; i < 6; i++) {
      char topic[32];
      snprintf(topic, sizeof(topic), "x.%s", names[i]);
      decide(&s, topic, &r, NULL, NULL, 0);
      if (want[i] < 0) {
        CHECK_EQ(r.outcome, SL_RULES_FAILED);
        CHECK(strstr(r.reason, "unknown output \"nowhere\"") != NULL);
      } else {
        CHECK_EQ(r.outcome, SL_RULES_ROUTED);
        CHECK_EQ(r.ntargets, 1);
        CHECK_EQ(r.targets[0], want[i]);
      }
    }
  snprintf(conf, sizeof(conf),
           "return { inputs = {{name='in', type='tcp', "
           "listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='c', type='null'}, {name='b', type='null'}, "
           "{name='a', type='null'}, {name='nowhere', type='null'}},\n"
           " rules = { dir = '%s', watch = false } }\n", s.rules);
  write_file(s.dir, "c2.lua", conf);
  snprintf(path, sizeof(path), "%s/c2.lua", s.dir);
  sl_buf_init(&err);
  old = s.cfg;
  s.cfg = sl_config_load(path, sl_plugins, &err);
  sl_buf_close(&err);
  CHECK(s.cfg != NULL);
  CHECK_EQ(sl_rules_reload_with(s.rs, s.cfg, "test", NULL, NULL), 0);
  for (i = 0; i < 6; i++) {
    char topic[32];
    snprintf(topic, sizeof(topic), "x.%s", names[i]);
    decide(&s, topic, &r, NULL, NULL, 0);
    CHECK_EQ(r.outcome, SL_RULES_ROUTED);
    CHECK_EQ(r.targets[0], sl_config_output_index(s.cfg, names[i],
                                                  strlen(names[i])));
  }
  decide(&s, "x.a", &r, NULL, NULL, 0);
  CHECK_EQ(r.targets[0], 2);
  decide(&s, "x.nowhere", &r, NULL, NULL, 0);
  CHECK_EQ(r.targets[0], 3);
  set_close(&s);
  sl_config_free(old);
}

/* A rule's last one-name decision keeps its output (slot cache, keyed by
 * the decision's routes_seq): lists, one-name lists and names in any
 * order still resolve to what they name. */
TEST(rules_lists_and_names_in_turn_resolve_to_what_they_name) {
  struct set s;
  struct sl_rules_result r;
  static const char *const topics[] = {"x.b", "x.b", "x.one", "x.b",
                                       "x.list", "x.a", "x.a", "x.one",
                                       "x.one", "x.a", "x.b", "x.list"};
  static const int want[][2] = {{1, -1}, {1, -1}, {0, -1}, {1, -1},
                                {1, 0},  {0, -1}, {0, -1}, {0, -1},
                                {0, -1}, {0, -1}, {1, -1}, {1, 0}};
  int i, round;

  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_mixed.lua",
             "return { topics = 'x.*', on_event = function(ev)\n"
             "  local t = ev.topic\n"
             "  if t == 'x.list' then return { 'b', 'a' } end\n"
             "  if t == 'x.one' then return { 'a' } end\n"
             "  return (t:sub(3)) end }\n");
  CHECK_EQ(set_start(&s), 0);
  for (round = 0; round < 2; round++)
    for (i = 0; i < 12; i++) {
      decide(&s, topics[i], &r, NULL, NULL, 0);
      CHECK_EQ(r.outcome, SL_RULES_ROUTED);
      CHECK_EQ(r.ntargets, want[i][1] < 0 ? 1 : 2);
      CHECK_EQ(r.targets[0], want[i][0]);
      if (want[i][1] >= 0)
        CHECK_EQ(r.targets[1], want[i][1]);
    }
  set_close(&s);
}

/* A rule that routes to more outputs by turns than either cache holds
 * (take_result's names by address, the slot's decisions by routes_seq):
 * every name, an unknown one among them and lists between them resolve
 * to what they name, round after round, in orders that evict each slot. */
TEST(rules_more_names_in_turn_than_the_caches_hold_resolve_to_what_they_name) {
  struct set s;
  struct sl_rules_result r;
  struct sl_config *old;
  struct sl_buf err;
  char conf[640], path[128], topic[32];
  static const char *const names[] = {"o1", "o2", "o3", "o4", "o5", "o6",
                                      "o1", "o6", "nowhere", "o2", "list",
                                      "o5", "o5", "o3", "o1", "o4"};
  int i, round, want;

  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_turns.lua",
             "return { topics = 'x.*', on_event = function(ev)\n"
             "  local t = ev.topic:sub(3)\n"
             "  if t == 'list' then return { 'o6', 'o1' } end\n"
             "  return t end }\n");
  CHECK_EQ(set_start(&s), 0);
  snprintf(conf, sizeof(conf),
           "return { inputs = {{name='in', type='tcp', "
           "listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='o3', type='null'}, {name='o1', type='null'}, "
           "{name='o6', type='null'}, {name='o2', type='null'}, "
           "{name='o5', type='null'}, {name='o4', type='null'}},\n"
           " rules = { dir = '%s', watch = false } }\n", s.rules);
  write_file(s.dir, "c2.lua", conf);
  snprintf(path, sizeof(path), "%s/c2.lua", s.dir);
  sl_buf_init(&err);
  old = s.cfg;
  s.cfg = sl_config_load(path, sl_plugins, &err);
  sl_buf_close(&err);
  CHECK(s.cfg != NULL);
  CHECK_EQ(sl_rules_reload_with(s.rs, s.cfg, "test", NULL, NULL), 0);
  for (round = 0; round < 4; round++)
    for (i = 0; i < 16; i++) {
      snprintf(topic, sizeof(topic), "x.%s", names[i]);
      decide(&s, topic, &r, NULL, NULL, 0);
      if (strcmp(names[i], "nowhere") == 0) {
        CHECK_EQ(r.outcome, SL_RULES_FAILED);
        CHECK(strstr(r.reason, "unknown output \"nowhere\"") != NULL);
        continue;
      }
      CHECK_EQ(r.outcome, SL_RULES_ROUTED);
      if (strcmp(names[i], "list") == 0) {
        CHECK_EQ(r.ntargets, 2);
        CHECK_EQ(r.targets[0], 2);
        CHECK_EQ(r.targets[1], 1);
        continue;
      }
      want = sl_config_output_index(s.cfg, names[i], strlen(names[i]));
      CHECK(want >= 0);
      CHECK_EQ(r.ntargets, 1);
      CHECK_EQ(r.targets[0], want);
    }
  set_close(&s);
  sl_config_free(old);
}

TEST(rules_a_bad_file_at_start_fails_with_file_and_line) {
  struct set s;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_bad.lua", "return {\n  topics = 'x', on_event = \n");
  CHECK(set_start(&s) != 0);
  CHECK(strstr(s.err, "10_bad.lua:") != NULL);
  set_close(&s);
}

/* ---- reloads -------------------------------------------------------------- */

TEST(rules_reload_is_all_or_nothing) {
  struct set s;
  struct sl_rules_result r;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_route.lua", route_to("a"));
  CHECK_EQ(set_start(&s), 0);
  /* one good change and one bad new file: nothing of it goes live */
  write_file(s.rules, "10_route.lua", route_to("b"));
  write_file(s.rules, "20_bad.lua", "return { on_event = 42 }\n");
  CHECK(sl_rules_reload(s.rs, "test") < 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  CHECK_EQ(r.targets[0], 0); /* still a */
  CHECK_EQ(sl_rules_stats(s.rs)->version, 1u);
  CHECK_EQ(sl_rules_stats(s.rs)->reloads_failed, 1u);
  /* fixed: both go live together */
  unlink(strcat(strcpy(s.err, s.rules), "/20_bad.lua"));
  CHECK_EQ(sl_rules_reload(s.rs, "test"), 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  CHECK_EQ(r.targets[0], 1); /* b */
  CHECK_EQ(sl_rules_stats(s.rs)->version, 2u);
  CHECK_EQ(sl_rules_stats(s.rs)->reloads_ok, 1u);
  set_close(&s);
}

/* One version of 10_count.lua: counting(tag, handover), or src when set. */
struct version {
  const char *tag;
  int handover;
  const char *src;
};

/* A reload over 10_count.lua: the old version decides `before` events
 * (the last one's drop reason is before_reason, when set), the new one is
 * loaded (reload_ok: it goes live; else it is rejected), and the next
 * event's reason tells whose code and whose count decided it. */
struct handover {
  struct version old, new;
  int before;
  const char *before_reason;
  int reload_ok;
  const char *reason;
};

static void write_version(struct set *s, const struct version *v) {
  write_file(s->rules, "10_count.lua",
             v->src ? v->src : counting(v->tag, v->handover));
}

static void reload_case(const struct handover *h, int *failed__) {
  struct set s;
  struct sl_rules_result r;
  int i;
  CHECK_EQ(set_init(&s, 0), 0);
  write_version(&s, &h->old);
  CHECK_EQ(set_start(&s), 0);
  for (i = 0; i < h->before; i++)
    decide(&s, "x.1", &r, NULL, NULL, 0);
  if (h->before_reason)
    CHECK_STR(r.reason, h->before_reason);
  write_version(&s, &h->new);
  CHECK_EQ(sl_rules_reload(s.rs, "test") == 0, h->reload_ok);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  CHECK_STR(r.reason, h->reason);
  set_close(&s);
}

TEST(rules_reload_hands_state_to_the_new_version) {
  /* the new code, the old count */
  static const struct handover h = {{"v1", 1, NULL}, {"v2", 1, NULL}, 2,
                                    "v12", 1, "v23"};
  reload_case(&h, failed__);
}

TEST(rules_reload_without_restore_starts_the_new_version_fresh) {
  static const struct handover h = {{"v1", 1, NULL}, {"v2", 0, NULL}, 1,
                                    NULL, 1, "v21"};
  reload_case(&h, failed__);
}

TEST(rules_an_unchanged_rule_carries_on_with_its_state_not_run_again) {
  struct set s;
  struct sl_rules_result r;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_count.lua", counting("v1", 0)); /* no handover */
  CHECK_EQ(set_start(&s), 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  write_file(s.rules, "20_new.lua", route_to("a"));
  CHECK_EQ(sl_rules_reload(s.rs, "test"), 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  CHECK_STR(r.reason, "v13"); /* the same live rule: its count goes on */
  CHECK_EQ(sl_rules_stats(s.rs)->version, 2u);
  /* the watcher's trigger with nothing changed makes no new version */
  CHECK_EQ(sl_rules_reload(s.rs, "watch"), 0);
  CHECK_EQ(sl_rules_stats(s.rs)->version, 2u);
  set_close(&s);
}

TEST(rules_failing_snapshot_costs_that_rule_its_state_only) {
  static const struct handover h = {
      {NULL, 0,
       "local n = 0\n"
       "return { topics = 'x.*', on_event = function(ev) n = n + 1\n"
       "  return sluice.drop('v1' .. n) end,\n"
       "  snapshot = function() error('cannot') end }\n"},
      {"v2", 1, NULL}, 1, NULL, 1, "v21"};
  reload_case(&h, failed__);
}

TEST(rules_failing_restore_rejects_the_reload) {
  /* the old version goes on, its state intact */
  static const struct handover h = {
      {"v1", 1, NULL},
      {NULL, 0,
       "return { topics = 'x.*', on_event = function(ev) end,\n"
       "  restore = function(v) error('not this state') end }\n"},
      1, NULL, 0, "v12"};
  reload_case(&h, failed__);
}

TEST(rules_emits_of_a_rejected_reload_are_dropped_of_a_committed_delivered) {
  struct set s;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_route.lua", route_to("a"));
  CHECK_EQ(set_start(&s), 0);
  write_file(s.rules, "20_hello.lua",
             "sluice.emit('b', { topic = 'hello' })\n"
             "return { topics = 'x.*', on_event = function(ev) end }\n");
  write_file(s.rules, "30_bad.lua", "syntax error here\n");
  CHECK(sl_rules_reload(s.rs, "test") < 0);
  CHECK_EQ(s.nemitted, 0);
  unlink(strcat(strcpy(s.err, s.rules), "/30_bad.lua"));
  CHECK_EQ(sl_rules_reload(s.rs, "test"), 0);
  CHECK_EQ(s.nemitted, 1);
  CHECK_STR(s.emitted[0], "1:hello");
  set_close(&s);
}

static int count_emitted(struct set *s, const char *what) {
  int i, n = 0;
  for (i = 0; i < s->nemitted; i++)
    n += strcmp(s->emitted[i], what) == 0;
  return n;
}

/* Turn the loop until a and b were each emitted at least once (or 5 s,
 * far above the few ms it takes); 1 when they were. */
static int run_until_emitted(struct set *s, const char *a, const char *b) {
  uint64_t end = sl_mono_ns() + 5000000000ull;
  while ((count_emitted(s, a) == 0 || count_emitted(s, b) == 0) &&
         sl_mono_ns() < end && s->nemitted < 60) {
    uv_run(&s->loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  return count_emitted(s, a) > 0 && count_emitted(s, b) > 0;
}

static const char *ticking(const char *tag) {
  static char src[256];
  snprintf(src, sizeof(src),
           "sluice.every(5, function() sluice.emit('a', { topic = '%s' }) "
           "end)\n"
           "return { topics = 'x.*', on_event = function(ev) end }\n",
           tag);
  return src;
}

TEST(rules_reload_stops_the_old_versions_timers_and_starts_the_new_ones) {
  struct set s;
  CHECK_EQ(set_init(&s, 1), 0);
  write_file(s.rules, "10_tick.lua", ticking("v1"));
  write_file(s.rules, "20_keep.lua", ticking("keep"));
  CHECK_EQ(set_start(&s), 0);
  CHECK(run_until_emitted(&s, "0:v1", "0:keep"));
  write_file(s.rules, "10_tick.lua", ticking("v2"));
  CHECK_EQ(sl_rules_reload(s.rs, "test"), 0);
  s.nemitted = 0;
  /* the new version's timer runs, and the unchanged rule kept its own */
  CHECK(run_until_emitted(&s, "0:v2", "0:keep"));
  CHECK_EQ(count_emitted(&s, "0:v1"), 0); /* closed with its version */
  set_close(&s);
}

/* A timer on_event adds is armed on the loop (the set looks at a rule's
 * timers only after a call that added one): no other timer would wake
 * the loop for it. */
TEST(rules_a_timer_added_by_on_event_runs) {
  struct set s;
  struct sl_rules_result r;
  int i;
  CHECK_EQ(set_init(&s, 1), 0);
  write_file(s.rules, "10_later.lua",
             "return { topics = 'x.*', on_event = function(ev)\n"
             "  if ev.topic == 'x.start' then\n"
             "    sluice.every(5, function() sluice.emit('a', { topic = "
             "'tick' }) end)\n"
             "  end\n"
             "end }\n");
  CHECK_EQ(set_start(&s), 0);
  for (i = 0; i < 3; i++)
    decide(&s, "x.quiet", &r, NULL, NULL, 0);
  for (i = 0; i < 20; i++) {
    uv_run(&s.loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  CHECK_EQ(count_emitted(&s, "0:tick"), 0);
  decide(&s, "x.start", &r, NULL, NULL, 0);
  decide(&s, "x.quiet", &r, NULL, NULL, 0);
  CHECK(run_until_emitted(&s, "0:tick", "0:tick"));
  set_close(&s);
}

/* ---- metrics ---------------------------------------------------------------- */

TEST(rules_metrics_count_per_file_and_go_with_the_set) {
  struct set s;
  struct sl_rules_result r;
  struct sl_metric_registry *reg = sl_metric_registry_new();
  struct sl_buf b;
  const char *t;
  CHECK_EQ(set_init(&s, 0), 0);
  write_file(s.rules, "10_q\"x.lua",
             "return { topics = 'x.*', on_event = function(ev)\n"
             "  sluice.counter('seen_total', { topic = ev.topic }):inc()\n"
             "  if ev.topic == 'x.bad' then error('no') end end }\n");
  CHECK_EQ(set_start(&s), 0);
  CHECK_EQ(sl_rules_metrics(s.rs, reg), 0);
  decide(&s, "x.1", &r, NULL, NULL, 0);
  decide(&s, "x.bad", &r, NULL, NULL, 0);
  decide(&s, "nowhere", &r, NULL, NULL, 0); /* x.1 passed: unrouted too */
  sl_buf_init(&b);
  CHECK_EQ(sl_metric_render(reg, &b), 0);
  CHECK_EQ(sl_buf_putc(&b, 0), 0);
  t = (const char *)b.data;
  CHECK(strstr(t, "sluice_rule_calls_total{rule=\"10_q\\\"x.lua\"} 2\n"));
  CHECK(strstr(t, "sluice_rule_errors_total{rule=\"10_q\\\"x.lua\","
                  "kind=\"runtime\"} 1\n"));
  CHECK(strstr(t, "# TYPE sluice_rule_value_total counter\n"));
  CHECK(strstr(t, "sluice_rule_value_total{rule=\"10_q\\\"x.lua\","
                  "name=\"seen_total\",topic=\"x.1\"} 1\n"));
  CHECK(strstr(t, "sluice_events_dropped_total{reason=\"unrouted\"} 2\n"));
  CHECK(strstr(t, "sluice_events_dead_lettered_total 1\n"));
  CHECK(strstr(t, "sluice_rules_version 1\n"));
  CHECK(strstr(t, "sluice_rule_duration_seconds_bucket{rule=\"10_q\\\"x.lua\","
                  "le=\"10\"}"));
  sl_buf_close(&b);
  set_close(&s); /* frees the set: its sources go */
  sl_buf_init(&b);
  CHECK_EQ(sl_metric_render(reg, &b), 0);
  CHECK_EQ(sl_buf_putc(&b, 0), 0);
  CHECK(strstr((const char *)b.data, "10_q") == NULL);
  CHECK(strstr((const char *)b.data, "sluice_rules_version 1") == NULL);
  sl_buf_close(&b);
  sl_metric_registry_free(reg);
}
