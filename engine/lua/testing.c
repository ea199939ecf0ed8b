/* testing.c - the Lua C module sluice_core: the engine's own rule sandbox,
 * loaded into the luajit that runs busted (scripts/sluice/testing.lua wraps
 * it). Built as build/sluice_core.so from the engine's objects and not
 * linked to libluajit: the host interpreter provides the Lua API.
 * Owns the rules it loads (freed by :close() or __gc), a clock per rule
 * that only moves when a spec says so, and what a call emitted and logged
 * until the result table is built. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>
#include <lua.h>

#include "codec.h"
#include "config.h"
#include "event.h"
#include "luacodec.h"
#include "sandbox.h"
#include "schema.h"

#define RULE_MT "sluice_core.rule"

struct emitted {
  char *output;
  struct sl_event *ev;
};

struct logged {
  int level;
  char *msg;
  uint8_t *fields;
  size_t fields_len;
};

struct trule {
  struct sl_rule *r;
  struct sl_idgen idgen;
  uint64_t now_ns; /* the rule's monotonic clock */
  struct emitted *em;
  int nem, capem;
  struct logged *lg;
  int nlg, caplg;
  int oom; /* a host callback could not keep something */
  struct sl_buf h, p;
};

static uint64_t host_clock(void *data) {
  return ((struct trule *)data)->now_ns;
}

static void host_emit(void *data, struct sl_rule *r, const char *output,
                      struct sl_event *ev) {
  struct trule *t = data;
  (void)r;
  if (t->nem == t->capem) {
    int cap = t->capem ? t->capem * 2 : 8;
    struct emitted *n = realloc(t->em, (size_t)cap * sizeof(*n));
    if (n == NULL)
      goto fail;
    t->em = n;
    t->capem = cap;
  }
  t->em[t->nem].output = strdup(output);
  if (t->em[t->nem].output == NULL)
    goto fail;
  t->em[t->nem++].ev = ev;
  return;
fail:
  t->oom = 1;
  sl_event_unref(ev);
}

static void host_log(void *data, struct sl_rule *r, int level,
                     const char *msg, const uint8_t *fields,
                     size_t fields_len) {
  struct trule *t = data;
  struct logged *l;
  (void)r;
  if (t->nlg == t->caplg) {
    int cap = t->caplg ? t->caplg * 2 : 8;
    struct logged *n = realloc(t->lg, (size_t)cap * sizeof(*n));
    if (n == NULL) {
      t->oom = 1;
      return;
    }
    t->lg = n;
    t->caplg = cap;
  }
  l = &t->lg[t->nlg];
  l->level = level;
  l->msg = strdup(msg);
  l->fields = NULL;
  l->fields_len = 0;
  if (fields_len && (l->fields = malloc(fields_len)) != NULL) {
    memcpy(l->fields, fields, fields_len);
    l->fields_len = fields_len;
  }
  if (l->msg == NULL) {
    free(l->fields);
    t->oom = 1;
    return;
  }
  t->nlg++;
}

static void clear_collected(struct trule *t) {
  int i;
  for (i = 0; i < t->nem; i++) {
    free(t->em[i].output);
    sl_event_unref(t->em[i].ev);
  }
  for (i = 0; i < t->nlg; i++) {
    free(t->lg[i].msg);
    free(t->lg[i].fields);
  }
  t->nem = t->nlg = 0;
  t->oom = 0;
}

static struct trule *check_rule(lua_State *L) {
  struct trule *t = luaL_checkudata(L, 1, RULE_MT);
  if (t->r == NULL)
    luaL_error(L, "the rule is closed");
  return t;
}

/* ---- events as tables ---------------------------------------------------- */

/* Push the table form of ev: id, topic, key, time (ms), headers, payload. */
static int push_payload(lua_State *L) {
  const struct sl_event *ev = lua_touserdata(L, 1);
  sl_luacodec_push(L, ev->data + ev->payload_off, ev->payload_len, NULL);
  return 1;
}

static void push_event(lua_State *L, const struct sl_event *ev) {
  lua_createtable(L, 0, 6);
  lua_pushlstring(L, (const char *)ev->data + ev->id_off, ev->id_len);
  lua_setfield(L, -2, "id");
  lua_pushlstring(L, (const char *)ev->data + ev->topic_off, ev->topic_len);
  lua_setfield(L, -2, "topic");
  if (ev->key_off) {
    lua_pushlstring(L, (const char *)ev->data + ev->key_off, ev->key_len);
    lua_setfield(L, -2, "key");
  }
  lua_pushnumber(L, (lua_Number)ev->time / 1e6);
  lua_setfield(L, -2, "time");
  {
    char ns[24];
    snprintf(ns, sizeof(ns), "%lld", (long long)ev->time);
    lua_pushstring(L, ns);
    lua_setfield(L, -2, "time_ns");
  }
  if (ev->headers_len)
    sl_luacodec_push(L, ev->data + ev->headers_off, ev->headers_len, NULL);
  else
    lua_newtable(L);
  lua_setfield(L, -2, "headers");
  if (ev->payload_len) {
    /* payload stays nil when it has keys no Lua table can hold (nil,
     * containers, ext, NaN): payload_raw has every byte */
    lua_pushcfunction(L, push_payload);
    lua_pushlightuserdata(L, (void *)ev);
    if (lua_pcall(L, 1, 1, 0) == 0)
      lua_setfield(L, -2, "payload");
    else
      lua_pop(L, 1);
    lua_pushlstring(L, (const char *)ev->data + ev->payload_off,
                    ev->payload_len);
    lua_setfield(L, -2, "payload_raw");
  }
}

static const char *opt_field_str(lua_State *L, int t, const char *k,
                                 struct sl_str *out) {
  size_t n;
  lua_getfield(L, t, k);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    out->p = NULL;
    out->len = 0;
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "event.%s must be a string", k);
  out->p = lua_tolstring(L, -1, &n);
  out->len = (uint32_t)n;
  lua_pop(L, 1); /* the table keeps the string alive */
  return out->p;
}

/* Build an event from the table at idx: topic (required), id, key, time
 * (ms), headers, and payload (a value) or payload_raw (msgpack bytes). */
static struct sl_event *event_from_table(lua_State *L, struct trule *t,
                                         int idx) {
  struct sl_str id, topic, key;
  const uint8_t *hp = NULL, *pp = NULL;
  size_t hl = 0, pl = 0;
  int has_time = 0;
  int64_t time = 0;
  struct sl_event *ev;

  luaL_checktype(L, idx, LUA_TTABLE);
  if (!opt_field_str(L, idx, "topic", &topic))
    luaL_error(L, "event.topic is required");
  opt_field_str(L, idx, "id", &id);
  opt_field_str(L, idx, "key", &key);
  lua_getfield(L, idx, "time");
  if (!lua_isnil(L, -1)) {
    time = (int64_t)llround(luaL_checknumber(L, -1) * 1e6);
    has_time = 1;
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "time_ns"); /* exact: a decimal string */
  if (!lua_isnil(L, -1)) {
    const char *s = luaL_checkstring(L, -1);
    char *end;
    time = (int64_t)strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0')
      luaL_error(L, "event.time_ns must be a string of decimal digits");
    has_time = 1;
  }
  lua_pop(L, 1);
  sl_buf_reset(&t->h);
  lua_getfield(L, idx, "headers");
  if (!lua_isnil(L, -1)) {
    sl_luacodec_encode(L, lua_gettop(L), &t->h, NULL);
    if (t->h.len && t->h.data[0] != 0x80) {
      hp = t->h.data;
      hl = t->h.len;
    }
  }
  lua_pop(L, 1);
  sl_buf_reset(&t->p);
  lua_getfield(L, idx, "payload_raw");
  if (!lua_isnil(L, -1)) {
    size_t n, used;
    const char *s = luaL_checklstring(L, -1, &n);
    if (sl_codec_skip((const uint8_t *)s, n, n, &used, NULL) != 0 || used != n)
      luaL_error(L, "event.payload_raw is not one msgpack value");
    if (sl_buf_append(&t->p, s, n) != 0)
      luaL_error(L, "not enough memory");
  } else {
    lua_pop(L, 1);
    lua_getfield(L, idx, "payload");
    if (!lua_isnil(L, -1))
      sl_luacodec_encode(L, lua_gettop(L), &t->p, NULL);
  }
  lua_pop(L, 1);
  if (t->p.len) {
    pp = t->p.data;
    pl = t->p.len;
  }
  ev = sl_event_new(&t->idgen, id, topic, key, has_time, time, hp, hl, pp, pl,
                    0);
  if (ev == NULL)
    luaL_error(L, "not enough memory");
  lua_getfield(L, idx, "schema_version"); /* as ingest would stamp it */
  if (!lua_isnil(L, -1)) {
    size_t n;
    const char *s = lua_isstring(L, -1) ? lua_tolstring(L, -1, &n) : NULL;
    if (s == NULL || sl_config_version_parse(s, n, &ev->schema_version) != 0) {
      sl_event_unref(ev);
      luaL_error(L, "event.schema_version must be a version (\"2\", "
                    "\"2.1\")");
    }
  }
  lua_pop(L, 1);
  return ev;
}

static const char *level_name(int level) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  return level >= 0 && level <= 3 ? names[level] : "info";
}

/* Move what the host callbacks collected into the table on top:
 * emitted = {{output=, event=}...}, logs = {{level=, msg=, fields=}...}. */
static void push_collected(lua_State *L, struct trule *t) {
  int i, top = lua_gettop(L);

  lua_createtable(L, t->nem, 0);
  for (i = 0; i < t->nem; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, t->em[i].output);
    lua_setfield(L, -2, "output");
    push_event(L, t->em[i].ev);
    lua_setfield(L, -2, "event");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, top, "emitted");
  lua_createtable(L, t->nlg, 0);
  for (i = 0; i < t->nlg; i++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, level_name(t->lg[i].level));
    lua_setfield(L, -2, "level");
    lua_pushstring(L, t->lg[i].msg);
    lua_setfield(L, -2, "msg");
    if (t->lg[i].fields) {
      sl_luacodec_push(L, t->lg[i].fields, t->lg[i].fields_len, NULL);
      lua_setfield(L, -2, "fields");
    }
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, top, "logs");
  if (t->oom) {
    lua_pushboolean(L, 1);
    lua_setfield(L, top, "host_out_of_memory");
  }
}

/* The thread's CPU time: what the rule budget counts (a loaded machine
 * stretches wall time, not this). */
static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- rule methods ---------------------------------------------------- */

/* rule:run(event) -> result table (see scripts/sluice/testing.lua). */
static int l_run(lua_State *L) {
  struct trule *t = check_rule(L);
  struct sl_rule_decision d;
  struct sl_event *ev;
  uint64_t t0, c0;
  int i;

  clear_collected(t);
  ev = event_from_table(L, t, 2);
  c0 = thread_cpu_ns();
  t0 = sl_mono_ns();
  sl_rule_run(t->r, ev, &d);
  t0 = sl_mono_ns() - t0;
  c0 = thread_cpu_ns() - c0;
  lua_settop(L, 1);
  lua_createtable(L, 0, 12);
  lua_createtable(L, d.nroutes, 0);
  for (i = 0; i < d.nroutes; i++) {
    lua_pushstring(L, d.routes[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, 2, "routes");
  lua_pushstring(L, d.verdict == SL_RULE_PASS    ? "pass"
                    : d.verdict == SL_RULE_ROUTE ? "route"
                    : d.verdict == SL_RULE_DROP  ? "drop"
                                                 : "error");
  lua_setfield(L, 2, "verdict");
  if (d.verdict == SL_RULE_DROP) {
    lua_pushstring(L, d.message);
    lua_setfield(L, 2, "dropped");
  }
  if (d.verdict == SL_RULE_ERROR) {
    lua_pushstring(L, d.message);
    lua_setfield(L, 2, "error");
    lua_pushstring(L, d.error == SL_RULE_ERR_CPU      ? "cpu"
                      : d.error == SL_RULE_ERR_MEMORY ? "memory"
                                                      : "runtime");
    lua_setfield(L, 2, "error_kind");
    lua_pushstring(L, d.where);
    lua_setfield(L, 2, "where");
    lua_pushstring(L, d.traceback);
    lua_setfield(L, 2, "traceback");
  }
  push_event(L, d.changed ? d.changed : ev);
  lua_setfield(L, 2, "event");
  lua_pushboolean(L, d.changed != NULL);
  lua_setfield(L, 2, "changed");
  lua_pushnumber(L, (lua_Number)t0 / 1e6);
  lua_setfield(L, 2, "elapsed_ms");
  lua_pushnumber(L, (lua_Number)c0 / 1e6);
  lua_setfield(L, 2, "cpu_ms");
  sl_event_unref(d.changed);
  sl_event_unref(ev);
  push_collected(L, t);
  clear_collected(t);
  return 1;
}

/* rule:advance(ms) -> {emitted=, logs=}: move the clock, firing each due
 * timer at its own time. */
static int l_advance(lua_State *L) {
  struct trule *t = check_rule(L);
  double ms = luaL_checknumber(L, 2);
  uint64_t target;
  int64_t next;

  if (!(ms >= 0 && ms < 1e12))
    return luaL_argerror(L, 2, "ms >= 0 expected");
  clear_collected(t);
  target = t->now_ns + (uint64_t)(ms * 1e6);
  while ((next = sl_rule_next_timer(t->r)) >= 0 &&
         (uint64_t)next * 1000000u <= target) {
    if ((uint64_t)next * 1000000u > t->now_ns)
      t->now_ns = (uint64_t)next * 1000000u;
    sl_rule_run_timers(t->r, next);
  }
  t->now_ns = target;
  lua_settop(L, 1);
  lua_newtable(L);
  push_collected(L, t);
  clear_collected(t);
  return 1;
}

/* rule:stop() -> {emitted=, logs=} (nil when the rule has no on_stop):
 * on_stop() as at the engine's shutdown; raises its error. */
static int l_stop(lua_State *L) {
  struct trule *t = check_rule(L);
  char err[512];
  int rc;

  clear_collected(t);
  rc = sl_rule_stop(t->r, err, sizeof(err));
  if (rc == SL_ENOENT)
    return 0;
  if (rc != 0) {
    lua_pushstring(L, err);
    return lua_error(L);
  }
  lua_settop(L, 1);
  lua_newtable(L);
  push_collected(L, t);
  clear_collected(t);
  return 1;
}

static int l_snapshot(lua_State *L) {
  struct trule *t = check_rule(L);
  char err[512];
  int rc;

  sl_buf_reset(&t->p);
  rc = sl_rule_snapshot(t->r, &t->p, err, sizeof(err));
  if (rc == SL_ENOENT)
    return 0;
  if (rc != 0) {
    lua_pushstring(L, err);
    return lua_error(L);
  }
  lua_pushlstring(L, (const char *)t->p.data, t->p.len);
  return 1;
}

static int l_restore(lua_State *L) {
  struct trule *t = check_rule(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  char err[512];
  int rc = sl_rule_restore(t->r, (const uint8_t *)s, n, err, sizeof(err));

  if (rc == SL_ENOENT) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (rc != 0) {
    lua_pushstring(L, err);
    return lua_error(L);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static void counter_cb(void *data, const char *name, const char *labels,
                       double value) {
  lua_State *L = data;
  lua_pushfstring(L, "%s{%s}", name, labels);
  lua_pushnumber(L, value);
  lua_rawset(L, -3);
}

static int l_counters(lua_State *L) {
  struct trule *t = check_rule(L);
  lua_newtable(L);
  sl_rule_counters(t->r, counter_cb, L);
  return 1;
}

static int l_matches(lua_State *L) {
  struct trule *t = check_rule(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  lua_pushboolean(L, sl_rule_matches(t->r, s, n));
  return 1;
}

static int l_info(lua_State *L) {
  struct trule *t = check_rule(L);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, sl_rule_path(t->r));
  lua_setfield(L, -2, "path");
  lua_pushstring(L, sl_rule_hash(t->r));
  lua_setfield(L, -2, "hash");
  lua_pushnumber(L, (lua_Number)sl_rule_memory(t->r));
  lua_setfield(L, -2, "memory");
  lua_pushnumber(L, (lua_Number)sl_rule_rebuilds(t->r));
  lua_setfield(L, -2, "rebuilds");
  lua_pushnumber(L, (lua_Number)sl_rule_next_timer(t->r));
  lua_setfield(L, -2, "next_timer");
  return 1;
}

static int l_close(lua_State *L) {
  struct trule *t = luaL_checkudata(L, 1, RULE_MT);
  clear_collected(t);
  sl_rule_free(t->r);
  t->r = NULL;
  free(t->em);
  free(t->lg);
  t->em = NULL;
  t->lg = NULL;
  t->capem = t->caplg = 0;
  sl_buf_close(&t->h);
  sl_buf_close(&t->p);
  return 0;
}

/* ---- module functions ---------------------------------------------------- */

static const char *opt_str(lua_State *L, int t, const char *k) {
  const char *s;
  lua_getfield(L, t, k);
  s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  lua_pop(L, 1); /* the options table keeps it alive */
  return s;
}

static uint32_t opt_u32(lua_State *L, int t, const char *k) {
  double v;
  lua_getfield(L, t, k);
  v = lua_isnil(L, -1) ? 0 : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  if (!(v >= 0 && v < 4294967296.0))
    luaL_error(L, "option %s out of range", k);
  return (uint32_t)v;
}

/* load(path [, opts]) -> rule; raises "path:line: message". */
static int l_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct sl_rule_limits lim;
  struct sl_rule_host host;
  struct trule *t;
  char err[1024];

  lua_settop(L, 2);
  if (lua_isnil(L, 2)) {
    lua_newtable(L);
    lua_replace(L, 2);
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  memset(&lim, 0, sizeof(lim));
  lim.cpu_budget_ms = opt_u32(L, 2, "cpu_budget_ms");
  lim.memory_mb = opt_u32(L, 2, "memory_mb");
  lua_getfield(L, 2, "jit");
  lim.jit = lua_toboolean(L, -1); /* rules.jit */
  lua_pop(L, 1);
  lim.scripts_dir = opt_str(L, 2, "scripts_dir");
  lim.lib_dir = opt_str(L, 2, "lib_dir");
  t = lua_newuserdata(L, sizeof(*t));
  memset(t, 0, sizeof(*t));
  sl_buf_init(&t->h);
  sl_buf_init(&t->p);
  sl_idgen_init(&t->idgen);
  t->now_ns = sl_mono_ns();
  luaL_getmetatable(L, RULE_MT);
  lua_setmetatable(L, -2);
  memset(&host, 0, sizeof(host));
  host.data = t;
  host.emit = host_emit;
  host.log = host_log;
  host.idgen = &t->idgen;
  host.mono_ns = host_clock;
  t->r = sl_rule_load(path, &lim, &host, err, sizeof(err));
  if (t->r == NULL) {
    clear_collected(t);
    lua_pushstring(L, err);
    return lua_error(L);
  }
  clear_collected(t); /* on_start may have logged; nobody asked */
  return 1;
}

static int buf_gc(lua_State *L) {
  sl_buf_close(lua_touserdata(L, 1));
  return 0;
}

/* encode(v) -> msgpack bytes. The buffer is a userdata so that an error
 * from the encoder leaves nothing behind. */
static int l_encode(lua_State *L) {
  struct sl_buf *b;

  luaL_checkany(L, 1);
  lua_settop(L, 1);
  b = lua_newuserdata(L, sizeof(*b));
  sl_buf_init(b);
  luaL_getmetatable(L, "sluice_core.buf");
  lua_setmetatable(L, -2);
  sl_luacodec_encode(L, 1, b, NULL);
  lua_pushlstring(L, (const char *)b->data, b->len);
  return 1;
}

static int l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  sl_luacodec_push(L, (const uint8_t *)s, n, NULL);
  return 1;
}

static int l_decode_json(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  sl_luacodec_push_json(L, s, n, NULL);
  return 1;
}

/* validate(schema_path, msgpack) -> true | false, path, expected. A
 * schema that does not compile raises its error. Compiled per call: specs
 * check a handful of values. */
static int l_validate(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n;
  const char *mp = luaL_checklstring(L, 2, &n);
  struct sl_schema *s;
  struct sl_schema_error e;
  char err[512];
  int rc;
  size_t used;
  if (sl_schema_load_file(path, &s, err, sizeof(err)) != 0) {
    lua_pushstring(L, err);
    return lua_error(L);
  }
  if (sl_codec_skip((const uint8_t *)mp, n, n, &used, NULL) != 0 ||
      used != n) {
    sl_schema_free(s);
    return luaL_error(L, "validate: not one complete msgpack value");
  }
  rc = sl_schema_check(s, (const uint8_t *)mp, n, &e);
  sl_schema_free(s);
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushstring(L, e.path);
  lua_pushstring(L, e.msg);
  return 3;
}

#define CONTRACTS_MT "sluice_core.contracts"

/* contracts(config_path): the schemas of a config file, compiled as the
 * engine compiles them (config/schemas.c); the rest of the file is not
 * checked. The file runs in a state with the pure libraries only, as
 * sl_config_load runs it. Raises the config's errors. */
static int l_contracts(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct sl_config *cfg = lua_newuserdata(L, sizeof(*cfg));
  lua_State *C;
  struct sl_buf err;
  char dir[4096], *slash;
  int n;

  memset(cfg, 0, sizeof(*cfg));
  luaL_getmetatable(L, CONTRACTS_MT);
  lua_setmetatable(L, -2);
  snprintf(dir, sizeof(dir), "%s", path);
  slash = strrchr(dir, '/');
  if (slash)
    *slash = '\0';
  else
    snprintf(dir, sizeof(dir), ".");
  if ((C = sl_config_state()) == NULL) /* the engine's config state */
    return luaL_error(L, "out of memory");
  if (luaL_loadfile(C, path) != 0 || lua_pcall(C, 0, 1, 0) != 0 ||
      !lua_istable(C, -1)) {
    lua_pushfstring(L, "%s: %s", path,
                    lua_isstring(C, -1) ? lua_tostring(C, -1)
                                        : "the file must return a table");
    lua_close(C);
    return lua_error(L);
  }
  sl_buf_init(&err);
  n = sl_config_schemas(C, lua_gettop(C), path, dir, cfg, &err);
  lua_close(C);
  if (n > 0) {
    lua_pushlstring(L, (const char *)err.data, err.len);
    sl_buf_close(&err);
    return lua_error(L);
  }
  sl_buf_close(&err);
  return 1;
}

static int contracts_gc(lua_State *L) {
  sl_config_schemas_free(luaL_checkudata(L, 1, CONTRACTS_MT));
  return 0;
}

/* c:check(topic, headers_mp|nil, payload_mp|nil) -> nil (no contract),
 * or ok, contract, version|nil, path, expected: the engine's verdict. */
static int contracts_check(lua_State *L) {
  const struct sl_config *cfg = luaL_checkudata(L, 1, CONTRACTS_MT);
  size_t tn, hn = 0, pn = 0;
  const char *topic = luaL_checklstring(L, 2, &tn);
  const char *h = luaL_optlstring(L, 3, NULL, &hn);
  const char *p = luaL_optlstring(L, 4, "\xc0", &pn);
  const struct sl_schema_contract *k = sl_config_schema_find(cfg, topic, tn,
                                                             NULL);
  struct sl_schema_error e;
  char v[16];
  int i, ok;
  if (k == NULL)
    return 0;
  i = sl_config_schema_version(k, (const uint8_t *)h, hn, (const uint8_t *)p,
                               pn, &e);
  ok = i >= 0 && sl_schema_check(k->versions[i].schema, (const uint8_t *)p,
                                 pn, &e) == 0;
  lua_pushboolean(L, ok);
  lua_pushstring(L, k->topics);
  if (i >= 0) {
    sl_config_version_format(k->versions[i].code, v, sizeof(v));
    lua_pushstring(L, v);
  } else {
    lua_pushnil(L);
  }
  if (ok)
    return 3;
  lua_pushstring(L, e.path);
  lua_pushstring(L, e.msg);
  return 5;
}

int luaopen_sluice_core(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"run", l_run},           {"advance", l_advance},
      {"snapshot", l_snapshot}, {"restore", l_restore}, {"stop", l_stop},
      {"counters", l_counters}, {"matches", l_matches},
      {"info", l_info},         {"close", l_close},
      {NULL, NULL}};
  static const luaL_Reg fns[] = {{"load", l_load},
                                 {"encode", l_encode},
                                 {"decode", l_decode},
                                 {"decode_json", l_decode_json},
                                 {"validate", l_validate},
                                 {"contracts", l_contracts},
                                 {NULL, NULL}};
  const luaL_Reg *f;

  if (luaL_newmetatable(L, RULE_MT)) {
    lua_newtable(L);
    for (f = methods; f->name; f++) {
      lua_pushcfunction(L, f->func);
      lua_setfield(L, -2, f->name);
    }
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, CONTRACTS_MT)) {
    lua_newtable(L);
    lua_pushcfunction(L, contracts_check);
    lua_setfield(L, -2, "check");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, contracts_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, "sluice_core.buf")) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  sl_luacodec_register(L, -1);
  return 1;
}
