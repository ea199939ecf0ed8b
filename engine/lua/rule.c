/* rule.c - one rule's lifecycle (sandbox.h): load and the contract check,
 * on_event runs and their decisions, timers, snapshot/restore, rebuilding
 * a broken state from the vetted source, introspection. The pieces it
 * builds on are in box.h (state.c, env.c, api.c, ev.c). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <openssl/evp.h>

#include "box.h"
#include "codec.h"
#include "luacodec.h"
#include "router.h"

/* ---- building a box ------------------------------------------------------ */

/* Check the table the chunk returned (in ref_tmp) against the contract
 * and keep its parts. Run with lua_cpcall; ud is the box. */
/* t[name] of the rule table (index 1), which may be absent or a function,
 * into the registry slot ref; raises "path:line: name must be a function". */
static void optional_fn(lua_State *L, struct sl_rule *r, int line,
                        const char *name, int ref) {
  lua_pushstring(L, name);
  lua_rawget(L, 1); /* raw: C never runs rule code (no __index) */
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION)
    luaL_error(L, "%s:%d: %s must be a function (got %s)", r->path, line,
               name, luaL_typename(L, -1));
  set_ref(L, ref, -1);
}

static int box_contract(lua_State *L) {
  struct box *b = lua_touserdata(L, 1);
  struct sl_rule *r = b->rule;
  int line = b->last_line, i, n;

  lua_settop(L, 0);
  push_ref(L, b->ref_tmp);
  if (!lua_istable(L, 1))
    return luaL_error(L, "%s:%d: the rule must return a table with "
                         "on_event (got %s)", r->path, line,
                      lua_typename(L, b->ret_type));
  set_ref(L, b->ref_module, 1);
  lua_pushliteral(L, "on_event");
  lua_rawget(L, 1);
  if (lua_type(L, -1) != LUA_TFUNCTION)
    return luaL_error(L, "%s:%d: on_event must be a function (got %s)",
                      r->path, line, luaL_typename(L, -1));
  set_ref(L, b->ref_on_event, -1);
  optional_fn(L, r, line, "snapshot", b->ref_snapshot);
  optional_fn(L, r, line, "restore", b->ref_restore);
  optional_fn(L, r, line, "on_stop", b->ref_on_stop);
  optional_fn(L, r, line, "on_start", b->ref_tmp);

  lua_settop(L, 1);
  lua_pushliteral(L, "on_error");
  lua_rawget(L, 1);
  if (!lua_isnil(L, 2)) {
    b->on_error = lua_type(L, 2) == LUA_TSTRING
                      ? (int)sl_rule_on_error_parse(lua_tostring(L, 2))
                      : SL_RULE_ON_ERROR_UNSET;
    if (b->on_error == SL_RULE_ON_ERROR_UNSET)
      return luaL_error(L, "%s:%d: on_error must be \"dead_letter\", "
                           "\"drop\" or \"pass\"", r->path, line);
  }
  lua_settop(L, 1);
  lua_pushliteral(L, "topics");
  lua_rawget(L, 1); /* 2 */
  if (lua_isnil(L, 2))
    return 0;
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);
    lua_replace(L, 2);
  }
  if (!lua_istable(L, 2))
    return luaL_error(L, "%s:%d: topics must be a string or a list of "
                         "strings (got %s)", r->path, line,
                      luaL_typename(L, 2));
  n = (int)lua_objlen(L, 2);
  lua_pushnil(L);
  i = 0;
  while (lua_next(L, 2)) {
    i++;
    lua_pop(L, 1);
  }
  if (n == 0 || i != n)
    return luaL_error(L, "%s:%d: topics must be a non-empty list of "
                         "strings", r->path, line);
  b->topics = calloc((size_t)n, sizeof(char *));
  if (b->topics == NULL)
    return luaL_error(L, "not enough memory");
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING || lua_objlen(L, -1) == 0)
      return luaL_error(L, "%s:%d: topics[%d] must be a non-empty string "
                           "(got %s)", r->path, line, i,
                        luaL_typename(L, -1));
    b->topics[i - 1] = strdup(lua_tostring(L, -1));
    if (b->topics[i - 1] == NULL)
      return luaL_error(L, "not enough memory");
    b->ntopics = i;
    lua_pop(L, 1);
  }
  return 0;
}

enum sl_rule_on_error sl_rule_on_error_parse(const char *s) {
  if (strcmp(s, "dead_letter") == 0)
    return SL_RULE_ON_ERROR_DEAD_LETTER;
  if (strcmp(s, "drop") == 0)
    return SL_RULE_ON_ERROR_DROP;
  if (strcmp(s, "pass") == 0)
    return SL_RULE_ON_ERROR_PASS;
  return SL_RULE_ON_ERROR_UNSET;
}

enum sl_rule_on_error sl_rule_on_error(const struct sl_rule *r) {
  return r->box ? (enum sl_rule_on_error)r->box->on_error
                : SL_RULE_ON_ERROR_UNSET;
}

static void box_free(struct box *b) {
  int i;

  if (b == NULL)
    return;
  strbuf_release(b);
  if (b->L)
    lua_close(b->L);
  for (i = 0; i < b->ntopics; i++)
    free(b->topics[i]);
  free(b->topics);
  free(b);
}

static int on_panic(lua_State *L) {
  fprintf(stderr, "sluice: unprotected Lua error in a rule state: %s\n",
          lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
  abort();
}

static void sha256_hex(const uint8_t *p, size_t n, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0, i;

  if (EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) != 1)
    len = 0;
  for (i = 0; i < len && i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", md[i]);
  out[2 * i] = 0;
}

/* The rule's text, read once and kept in C memory for rebuilds; refused
 * when it is bytecode. 0, or a negative SL_E* code with err filled. */
static int read_source(struct sl_rule *r, char *err, size_t errlen) {
  int rc;

  if (!r->src_read) {
    /* kept in C memory for rebuilds */
    rc = read_file(&r->src, r->source, (size_t)r->memory_mb << 20);
    if (rc != 0) {
      snprintf(err, errlen, "%s:0: cannot read the rule: %s", r->path,
               rc == SL_E2BIG   ? "larger than memory_mb"
               : rc == SL_EINVAL ? "not a regular file"
                                 : strerror(-rc));
      return rc;
    }
    r->src_read = 1;
    sha256_hex(r->src.data, r->src.len, r->hash);
  }
  if (is_bytecode(r->src.data, r->src.len)) {
    snprintf(err, errlen, "%s:1: bytecode is not allowed, rules are loaded "
             "as text", r->path);
    return SL_EINVAL;
  }
  return 0;
}

/* Build a complete box from the rule's source (read once by sl_rule_load
 * and kept: a rebuild never rereads the file): state, sandbox, chunk,
 * contract, on_start. NULL with err filled ("path:line: message"). */
static struct box *box_new(struct sl_rule *r, char *err, size_t errlen) {
  struct box *b;
  lua_State *L;
  char msg[512], where[256];
  int st;
  size_t i;

  if (read_source(r, err, errlen) != 0)
    return NULL;
  b = calloc(1, sizeof(*b));
  if (b == NULL) {
    snprintf(err, errlen, "%s:0: not enough memory", r->path);
    return NULL;
  }
  b->rule = r;
  b->limit = (size_t)r->memory_mb << 20;
  b->last_line = 1;
  for (i = 0; i < r->src.len; i++)
    if (r->src.data[i] == '\n' && i + 1 < r->src.len)
      b->last_line++;
  for (i = 0; i < BOX_RESERVE_BLOCKS; i++)
    if ((b->reserve[b->nreserve] = malloc(BOX_RESERVE_BYTES)) != NULL)
      b->nreserve++;
  L = b->nreserve == BOX_RESERVE_BLOCKS ? lua_newstate(box_alloc, b) : NULL;
  while (b->nreserve > 0)
    free(b->reserve[--b->nreserve]);
  if (L == NULL) {
    snprintf(err, errlen, "%s:0: cannot create a Lua state within "
             "memory_mb=%u", r->path, (unsigned)r->memory_mb);
    goto fail;
  }
  b->L = L;
  lua_atpanic(L, on_panic);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  {
    /* the environment is the engine's own code, not the rule's: it gets a
     * budget of its own, so a loaded host never fails a load that has a
     * small cpu_budget_ms (seen: 10 ms passed while the tests ran beside
     * two builds) */
    uint32_t budget = r->cpu_budget_ms;
    int st;
    if (r->cpu_budget_ms < SETUP_BUDGET_MS)
      r->cpu_budget_ms = SETUP_BUDGET_MS;
    st = box_cpcall(b, box_setup, b);
    r->cpu_budget_ms = budget;
    if (st != 0) {
      snprintf(err, errlen, "%s:0: cannot set up the sandbox: %s", r->path,
               r->err_msg);
      goto fail;
    }
  }
  if (r->jit)
    box_jit_on(b); /* when the interrupt cannot be had: interpreted */
  /* fixed stack slots; pushing from the registry does not allocate */
  lua_settop(L, 0);
  push_ref(L, b->ref_handler);
  lua_pushnil(L);
  push_ref(L, b->ref_event);
  lua_pushboolean(L, 0); /* SLOT_ROUTE */
  /* no hook: box_call's watchdog, or the count hook without one */

  /* the chunk, as text, under the budget */
  /* the name in C memory: a pushed string is an allocation outside any
   * pcall, and out of memory there LuaJIT panics (the process aborts) */
  snprintf(msg, sizeof(msg), "@%s", r->path);
  st = luaL_loadbufferx(L, (const char *)r->src.data, r->src.len, msg, "t");
  if (st != 0) {
    snprintf(err, errlen, "%s", st == LUA_ERRMEM ? "not enough memory"
                                                 : lua_tostring(L, -1));
    goto fail;
  }
  st = box_call(b, 0, 1);
  if (st != 0) {
    describe(b, st, err, errlen, where, sizeof(where), NULL, 0);
    goto fail;
  }
  b->ret_type = lua_type(L, -1);
  set_ref(L, b->ref_tmp, -1);
  lua_pop(L, 1);
  if (box_cpcall(b, box_contract, b) != 0) {
    snprintf(err, errlen, "%s", r->err_msg);
    goto fail;
  }
  push_ref(L, b->ref_on_event);
  lua_replace(L, SLOT_ON_EVENT);
  push_ref(L, b->ref_tmp); /* on_start or false */
  if (lua_isfunction(L, -1)) {
    st = box_call(b, 0, 0);
    if (st != 0) {
      describe(b, st, msg, sizeof(msg), where, sizeof(where), NULL, 0);
      snprintf(err, errlen, "%s", msg);
      goto fail;
    }
  }
  lua_settop(L, SLOT_BASE);
  return b;

fail:
  box_free(b);
  return NULL;
}

/* Replace a broken box with a new one from the kept source. One that
 * could not be made (memory short in the whole process) is tried again
 * only after a backoff, REBUILD_WAIT_MIN_NS doubling to REBUILD_WAIT_MAX_NS:
 * each try builds a whole state and logs a line, and every event the broken
 * box failed asked for one (970 lines a second under ulimit -v). Meanwhile
 * the broken box serves on: a full one fails its calls with "not enough
 * memory", which the dead letter takes. */
static int rule_rebuild(struct sl_rule *r) {
  char err[512], msg[640];
  uint64_t now = rule_mono_ns(r), wait;
  struct box *b;

  if (r->rebuild_fails && now < r->rebuild_after_ns)
    return SL_EAGAIN;
  b = box_new(r, err, sizeof(err));
  if (b == NULL) {
    wait = REBUILD_WAIT_MIN_NS << (r->rebuild_fails < 8 ? r->rebuild_fails : 8);
    if (wait > REBUILD_WAIT_MAX_NS)
      wait = REBUILD_WAIT_MAX_NS;
    r->rebuild_fails++;
    r->rebuild_after_ns = now + wait;
    snprintf(msg, sizeof(msg), "%s: the rule's state could not be rebuilt "
             "(next try in %llu ms): %s", r->path,
             (unsigned long long)(wait / 1000000u), err);
    if (r->host.log)
      r->host.log(r->host.data, r, 3, msg, NULL, 0);
    return SL_EINVAL;
  }
  r->rebuild_fails = 0;
  box_free(r->box);
  r->box = b;
  r->rebuilds++;
  return 0;
}

/* ---- the public API ------------------------------------------------------ */

/* r->mods_hash: what the load required, in the order it did (the same
 * code requires the same modules in the same order at load). */
static void mods_digest(struct sl_rule *r) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0, i;
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  int k, ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;

  for (k = 0; ok && k < r->nmods; k++) {
    const struct module *m = &r->mods[k];
    uint64_t n = m->text.len;
    ok = EVP_DigestUpdate(c, m->path, strlen(m->path) + 1) == 1 &&
         EVP_DigestUpdate(c, &m->found, sizeof(m->found)) == 1 &&
         EVP_DigestUpdate(c, &n, sizeof(n)) == 1 &&
         (n == 0 || EVP_DigestUpdate(c, m->text.data, n) == 1);
  }
  if (!ok || EVP_DigestFinal_ex(c, md, &len) != 1)
    len = 0; /* "": never the same as another's (see sl_rule_same_code) */
  EVP_MD_CTX_free(c);
  for (i = 0; i < len && i < 32; i++)
    snprintf(r->mods_hash + 2 * i, 3, "%02x", md[i]);
  r->mods_hash[2 * i] = 0;
}

struct sl_rule *sl_rule_load(const char *path,
                             const struct sl_rule_limits *limits,
                             const struct sl_rule_host *host, char *err,
                             size_t errlen) {
  struct sl_rule *r;

  r = calloc(1, sizeof(*r));
  if (r == NULL)
    goto fail_alloc;
  r->source = strdup(path);
  if (limits && limits->display_root) {
    size_t n = strlen(limits->display_root);
    if (strncmp(path, limits->display_root, n) == 0 && path[n] == '/' &&
        path[n + 1] != '\0')
      path += n + 1;
  }
  r->path = strdup(path);
  if (r->path == NULL || r->source == NULL)
    goto fail_alloc;
  r->cpu_budget_ms = limits && limits->cpu_budget_ms ? limits->cpu_budget_ms
                                                     : 10;
  r->memory_mb = limits && limits->memory_mb ? limits->memory_mb : 64;
  r->jit = limits && limits->jit;
  r->max_event_bytes = limits && limits->max_event_bytes
                           ? limits->max_event_bytes : 1u << 20;
  if (limits && limits->scripts_dir &&
      (r->scripts_dir = strdup(limits->scripts_dir)) == NULL)
    goto fail_alloc;
  if (limits && limits->lib_dir && (r->lib_dir = strdup(limits->lib_dir)) == NULL)
    goto fail_alloc;
  if (host)
    r->host = *host;
  sl_idgen_init(&r->idgen);
  if (getrandom(&r->seed1, sizeof(r->seed1), 0) != sizeof(r->seed1) ||
      getrandom(&r->seed2, sizeof(r->seed2), 0) != sizeof(r->seed2)) {
    r->seed1 = sl_mono_ns() ^ (uintptr_t)r;
    r->seed2 = mix64(r->seed1 + (uint64_t)sl_now_ns());
  }
  r->wall0_ns = sl_now_ns();
  r->mono0_ns = rule_mono_ns(r);
  sl_buf_init(&r->routes);
  sl_buf_init(&r->buf1);
  sl_buf_init(&r->buf2);
  sl_buf_init(&r->src);
  r->box = box_new(r, err, errlen);
  if (r->box == NULL)
    goto fail;
  mods_digest(r);
  return r;

fail_alloc:
  snprintf(err, errlen, "%s:0: not enough memory", path);
fail:
  sl_rule_free(r);
  return NULL;
}

void sl_rule_free(struct sl_rule *r) {
  int i;

  if (r == NULL)
    return;
  box_free(r->box);
  for (i = 0; i < r->ncounters; i++) {
    free(r->counters[i].name);
    free(r->counters[i].labels);
  }
  free(r->counters);
  lru_close(&r->rate);
  lru_close(&r->seen);
  sl_buf_close(&r->routes);
  sl_buf_close(&r->buf1);
  sl_buf_close(&r->buf2);
  sl_buf_close(&r->src);
  for (i = 0; i < r->nmods; i++) {
    free(r->mods[i].path);
    sl_buf_close(&r->mods[i].text);
  }
  free(r->mods);
  free(r->scripts_dir);
  free(r->lib_dir);
  free(r->path);
  free(r->source);
  free(r);
}

/* Does s[0..n) match glob p, where '*' matches any run of characters?
 * The router's matcher: linear in topic and glob. */
static int glob_match(const char *p, const char *s, size_t n) {
  return sl_router_glob(p, strlen(p), s, n);
}

int sl_rule_any_topic(const struct sl_rule *r) { return r->box->ntopics == 0; }

int sl_rule_matches(const struct sl_rule *r, const char *topic, size_t len) {
  const struct box *b = r->box;
  int i;

  if (b->ntopics == 0)
    return 1;
  for (i = 0; i < b->ntopics; i++)
    if (glob_match(b->topics[i], topic, len))
      return 1;
  return 0;
}

static void decide_error(struct sl_rule_decision *d, enum sl_rule_error kind,
                         const char *where, const char *fmt, ...)
    SL_PRINTF(4, 5);

static void decide_error(struct sl_rule_decision *d, enum sl_rule_error kind,
                         const char *where, const char *fmt, ...) {
  va_list ap;

  d->verdict = SL_RULE_ERROR;
  d->error = kind;
  d->nroutes = 0;
  va_start(ap, fmt);
  vsnprintf(d->message, sizeof(d->message), fmt, ap);
  va_end(ap);
  snprintf(d->where, sizeof(d->where), "%s", where);
}

/* ---- on_event ------------------------------------------------------------ */

/* on_event returned a value (on top) that is no decision: say what is
 * wrong with it, at the line where on_event is defined. */
static void bad_result(struct box *b, struct sl_rule_decision *d) {
  struct sl_rule *r = b->rule;
  lua_State *L = b->L;
  char where[300];
  size_t count;
  lua_Debug ar;

  lua_pushvalue(L, SLOT_ON_EVENT);
  if (lua_getinfo(L, ">S", &ar))
    snprintf(where, sizeof(where), "%s:%d", src_of(&ar), ar.linedefined);
  else
    snprintf(where, sizeof(where), "%s", r->path);
  if (lua_type(L, -1) == LUA_TTABLE) {
    count = lua_objlen(L, -1);
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned %s (a list of 1..%d non-empty "
                 "output names expected, each at most %d bytes)", where,
                 count > SL_RULE_MAX_ROUTES ? "too many routes"
                 : count == 0 ? "an empty or non-list table"
                              : "a list with a non-string or empty entry, or "
                                "one too long or with a NUL byte",
                 SL_RULE_MAX_ROUTES, ROUTE_NAME_MAX);
  } else if (lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) > 0 &&
             lua_objlen(L, -1) <= ROUTE_NAME_MAX) {
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned an output name with a NUL byte",
                 where);
  } else if (lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) > 0) {
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned an output name of %d bytes (at most "
                 "%d)", where, (int)lua_objlen(L, -1), ROUTE_NAME_MAX);
  } else {
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned %s %s (expected nil, an output name, "
                 "a list of output names or sluice.drop(reason))", where,
                 lua_type(L, -1) == LUA_TSTRING ? "an empty" : "a",
                 luaL_typename(L, -1));
  }
}

/* The one name just taken (on top, in r->routes) goes to b->res. */
static void remember_result(struct box *b, struct sl_rule *r) {
  int i = b->res_next;

  b->res_next = (i + 1) % RESULT_CACHE_N;
  lua_pushvalue(b->L, -1); /* a slot that exists: no allocation */
  lua_rawseti(b->L, LUA_REGISTRYINDEX, b->ref_res[i]);
  b->res[i].p = b->route_p;
  b->res[i].seq = r->routes_seq;
  memcpy(b->res[i].name, r->routes.data, r->routes.len); /* with its NUL */
}

/* Turn on_event's return value (on top) into a decision. No allocation
 * in the state: only reads, and stores in slots that exist. */
static void take_result(struct box *b, struct sl_rule_decision *d) {
  struct sl_rule *r = b->rule;
  lua_State *L = b->L;
  size_t offs[SL_RULE_MAX_ROUTES], n, i, count;
  const char *s;
  const void *p;

  r->event_deadline = b->deadline; /* for finish() */
  r->event_cpu_ref = b->cpu_ref;
  /* the very string the last call returned (SLOT_ROUTE keeps it alive,
   * so no other value has its address): checked then */
  p = lua_topointer(L, -1);
  if (sl_likely(p != NULL && p == b->route_p && r->routes_one))
    goto one;
  for (i = 0; p != NULL && i < RESULT_CACHE_N; i++)
    if (b->res[i].p == p) { /* a name returned lately, checked then */
      d->verdict = SL_RULE_ROUTE;
      d->nroutes = 1;
      d->routes[0] = b->res[i].name;
      d->routes_seq = b->res[i].seq;
      return;
    }
  switch (lua_type(L, -1)) {
  case LUA_TNIL:
    return;
  case LUA_TSTRING:
    s = lua_tolstring(L, -1, &n);
    if (r->routes_one && n + 1 == r->routes.len &&
        memcmp(s, r->routes.data, n) == 0)
      goto same; /* the name the last call returned, checked then */
    r->routes_one = 0;
    if (n == 0 || n > ROUTE_NAME_MAX || memchr(s, 0, n) != NULL)
      break; /* names go on as C strings: "a\0x" would route to a */
    r->routes_seq++;
    sl_buf_reset(&r->routes);
    if (sl_buf_append(&r->routes, s, n + 1) != 0)
      goto nomem;
    r->routes_one = 1;
  same:
    lua_pushvalue(L, -1); /* a slot that exists: no allocation */
    lua_replace(L, SLOT_ROUTE);
    b->route_p = lua_topointer(L, -1);
    remember_result(b, r);
  one:
    d->verdict = SL_RULE_ROUTE;
    d->nroutes = 1;
    d->routes[0] = (const char *)r->routes.data;
    d->routes_seq = r->routes_seq;
    return;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, -1) != &drop_sentinel)
      break;
    push_ref(L, b->ref_drop);
    d->verdict = SL_RULE_DROP;
    if (lua_type(L, -1) == LUA_TSTRING) { /* copy only what fits */
      size_t n = lua_objlen(L, -1);
      snprintf(d->message, sizeof(d->message), "%.*s",
               (int)(n < sizeof(d->message) ? n : sizeof(d->message)),
               lua_tostring(L, -1));
    } else {
      snprintf(d->message, sizeof(d->message), "dropped");
    }
    lua_pop(L, 1);
    return;
  case LUA_TTABLE:
    count = lua_objlen(L, -1);
    if (count == 0 || count > SL_RULE_MAX_ROUTES)
      break;
    r->routes_one = 0;
    r->routes_seq++;
    sl_buf_reset(&r->routes);
    for (i = 0; i < count; i++) {
      lua_rawgeti(L, -1, (int)i + 1);
      if (lua_type(L, -1) != LUA_TSTRING || lua_objlen(L, -1) == 0 ||
          lua_objlen(L, -1) > ROUTE_NAME_MAX ||
          memchr(lua_tostring(L, -1), 0, lua_objlen(L, -1)) != NULL) {
        lua_pop(L, 1);
        count = 0;
        break;
      }
      s = lua_tolstring(L, -1, &n);
      offs[i] = r->routes.len;
      if (sl_buf_append(&r->routes, s, n + 1) != 0) {
        lua_pop(L, 1);
        goto nomem;
      }
      lua_pop(L, 1);
    }
    if (count == 0)
      break;
    d->verdict = SL_RULE_ROUTE;
    d->nroutes = (int)count;
    for (i = 0; i < count; i++)
      d->routes[i] = (const char *)r->routes.data + offs[i];
    d->routes_seq = r->routes_seq;
    return;
  default:
    break;
  }
  bad_result(b, d);
  return;
nomem:
  decide_error(d, SL_RULE_ERR_MEMORY, r->path, "%s: not enough memory",
               r->path);
}

static void clear_event(struct box *b) {
  lua_State *L = b->L;

  b->ev = NULL;
  if (sl_likely(b->evflags == 0)) /* a rule that only read ev.topic */
    return;
  /* the slots exist, so these stores do not allocate */
  if (b->evflags & EV_TOPIC) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_topic);
  }
  if (b->evflags & EV_KEY) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_key);
  }
  if (b->evflags & EV_HEADERS) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_headers);
  }
  if (b->evflags & EV_PAYLOAD) {
    /* a root read as it came is no value in ref_payload (ev.c) */
    if (b->proot == NULL || (b->evflags & EV_PAYLOAD_SET)) {
      lua_pushboolean(L, 0);
      lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_payload);
    }
    if (b->evflags & EV_PAYLOAD_SET) { /* only then is the root there */
      lua_pushboolean(L, 0);
      lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_proot);
    }
    b->proot = NULL;
  }
  b->evflags = 0;
}

/* finish() in protected mode, right after on_event and on its budget
 * (box_call_after: the function is made once per state, the clocks are
 * not read again, the epilogue is box_call's). A raised message is left
 * in err_msg as box_cpcall leaves it. */
static int finish_call(struct box *b) {
  if (finish_log(b)) /* the common change, without a call */
    return 0;
  return box_call_after(b, b->ref_finish, b);
}

void sl_rule_run(struct sl_rule *r, struct sl_event *ev,
                 struct sl_rule_decision *d) {
  struct box *b = r->box;
  lua_State *L = b->L;
  int st, rebuild = 0, ntimers = b->ntimers;

  d->verdict = SL_RULE_PASS;
  d->error = SL_RULE_ERR_NONE;
  d->nroutes = 0;
  d->message[0] = 0;
  d->where[0] = 0;
  d->traceback[0] = 0;
  d->changed = NULL;
  d->routes_seq = 0;
  d->timers_changed = 0;
  if (sl_unlikely(b->in_call)) {
    decide_error(d, SL_RULE_ERR_RUNTIME, r->path,
                 "%s: the rule was called again from inside itself", r->path);
    return;
  }
  b->ev = ev;
  b->evflags = 0;
  b->pgen++;
  ev_begin(b);
  lua_pushvalue(L, SLOT_ON_EVENT);
  lua_pushvalue(L, SLOT_EVENT);
  st = box_call(b, 1, 1);
  if (sl_likely(st == 0 && !b->cpu_hit)) {
    take_result(b, d);
    if (b->evflags && d->verdict != SL_RULE_DROP &&
        d->verdict != SL_RULE_ERROR && !read_only(b)) {
      b->changed = NULL;
      lua_settop(L, SLOT_BASE);
      st = finish_call(b);
      if (st != 0) {
        enum sl_rule_error kind = b->cpu_hit ? SL_RULE_ERR_CPU
                                  : st == LUA_ERRMEM ? SL_RULE_ERR_MEMORY
                                                     : SL_RULE_ERR_RUNTIME;
        decide_error(d, kind, r->err_where, "%s", r->err_msg);
        if (kind == SL_RULE_ERR_MEMORY && !box_usable_after_oom(b))
          rebuild = 1;
      } else {
        d->changed = b->changed;
      }
      b->changed = NULL;
    }
  } else {
    enum sl_rule_error kind =
        describe(b, st, d->message, sizeof(d->message), d->where,
                 sizeof(d->where), d->traceback, sizeof(d->traceback));
    d->verdict = SL_RULE_ERROR;
    d->error = kind;
    d->nroutes = 0;
    if (st == LUA_ERRERR ||
        (kind == SL_RULE_ERR_MEMORY && !box_usable_after_oom(b)))
      rebuild = 1;
  }
  lua_settop(L, SLOT_BASE);
  clear_event(b);
  d->timers_changed = b->ntimers != ntimers;
  if (rebuild) {
    rule_rebuild(r);
    d->timers_changed = 1;
  } else if (sl_unlikely(b->used > b->limit / 4 * 3 || b->gc_busy))
    box_gc_slice(b);
}

/* ---- timers -------------------------------------------------------------- */

int64_t sl_rule_next_timer(const struct sl_rule *r) {
  const struct box *b = r->box;
  int64_t best = -1;
  int i;

  for (i = 0; i < b->ntimers; i++)
    if (best < 0 || b->timers[i].due_ms < best)
      best = b->timers[i].due_ms;
  return best;
}

/* May a timer error be logged now? Then *suppressed says how many were
 * not since the last one. */
static int timer_log_allow(struct sl_rule *r, uint64_t *suppressed) {
  uint64_t now = sl_mono_ns();
  if (now - r->timer_log_start_ns >= TIMER_LOG_WINDOW_NS) {
    r->timer_log_start_ns = now;
    r->timer_log_n = 0;
  }
  if (r->timer_log_n >= TIMER_LOG_BURST) {
    r->timer_log_suppressed++;
    return 0;
  }
  r->timer_log_n++;
  *suppressed = r->timer_log_suppressed;
  r->timer_log_suppressed = 0;
  return 1;
}

/* Timer runs are bounded three ways so a timer can never starve the loop:
 * one call runs timers for at most cpu_budget_ms (the rest stay due for
 * the host's next turn), a timer is next due no sooner than its interval
 * after its run ended and never sooner than its run took (timers get at
 * most half the time), and errors are logged at a limited rate. */
void sl_rule_run_timers(struct sl_rule *r, int64_t now_ms) {
  struct box *b = r->box;
  int i, k, n = b->ntimers, st;
  uint64_t t0 = sl_mono_ns(),
           cap = (uint64_t)r->cpu_budget_ms * 1000000u;

  if (b->in_call)
    return;
  for (k = 0; k < n && r->box == b; k++) {
    struct timer *t;
    int64_t start, end, took;
    i = (b->timer_next + k) % n; /* start after the last one run */
    t = &b->timers[i];
    if (t->due_ms > now_ms)
      continue;
    if (sl_mono_ns() - t0 >= cap)
      break; /* enough for this turn; the rest stay due */
    start = (int64_t)(rule_mono_ns(r) / 1000000u);
    t->due_ms += t->every_ms; /* set before the call: it may fail */
    if (t->due_ms <= now_ms) /* fell behind: skip, do not burst */
      t->due_ms = now_ms + t->every_ms;
    b->timer_next = (i + 1) % n;
    push_ref(b->L, t->ref);
    st = box_call(b, 0, 0);
    end = (int64_t)(rule_mono_ns(r) / 1000000u);
    took = end - start;
    if (r->box == b && (t->due_ms <= end || took >= t->every_ms))
      t->due_ms = end + (took > t->every_ms ? took : t->every_ms);
    if (st != 0) {
      char msg[512], where[256], line[1500];
      uint64_t suppressed = 0;
      enum sl_rule_error kind =
          describe(b, st, msg, sizeof(msg), where, sizeof(where), NULL, 0);
      lua_settop(b->L, SLOT_BASE);
      r->timer_errors++;
      if (r->host.log && timer_log_allow(r, &suppressed)) {
        snprintf(line, sizeof(line), "timer: %s%s%s", msg,
                 r->err_set && kind == SL_RULE_ERR_RUNTIME ? "\n" : "",
                 r->err_set && kind == SL_RULE_ERR_RUNTIME ? r->err_tb : "");
        if (suppressed)
          snprintf(line + strlen(line), sizeof(line) - strlen(line),
                   "\n(%llu more timer errors of this rule were not logged)",
                   (unsigned long long)suppressed);
        r->host.log(r->host.data, r, 3, line, NULL, 0);
      }
      if (st == LUA_ERRERR ||
          (kind == SL_RULE_ERR_MEMORY && !box_usable_after_oom(b))) {
        rule_rebuild(r);
        break; /* b may be gone; the new state has its own timers */
      }
    }
    lua_settop(b->L, SLOT_BASE);
  }
}

/* ---- state handover ------------------------------------------------------ */

struct codec_job {
  struct box *b;
  struct sl_buf *out;
  const uint8_t *p;
  size_t len;
  int nil; /* the decoded value is nil (the slot holds false) */
};

static int encode_tmp(lua_State *L) {
  struct codec_job *j = lua_touserdata(L, 1);
  push_ref(L, j->b->ref_tmp);
  /* bounded like the state itself: a value sharing one big string in many
   * slots must not grow C memory past memory_mb */
  sl_luacodec_encode_max(L, -1, j->out, check_cpu, j->b->limit,
                         "snapshot()'s value (memory_mb)");
  return 0;
}

static int decode_tmp(lua_State *L) {
  struct codec_job *j = lua_touserdata(L, 1);
  sl_luacodec_push(L, j->p, j->len, check_cpu);
  j->nil = lua_isnil(L, -1);
  set_ref(L, j->b->ref_tmp, -1);
  return 0;
}

static int handover_error(struct box *b, int st, const char *what, char *err,
                          size_t errlen) {
  char msg[512], where[256];
  enum sl_rule_error kind;

  kind = describe(b, st, msg, sizeof(msg), where, sizeof(where), NULL, 0);
  snprintf(err, errlen, "%s (in %s)", msg, what);
  lua_settop(b->L, SLOT_BASE);
  return kind == SL_RULE_ERR_CPU ? SL_ETIMEDOUT
         : kind == SL_RULE_ERR_MEMORY ? SL_ENOMEM : SL_EINVAL;
}

int sl_rule_snapshot(struct sl_rule *r, struct sl_buf *out, char *err,
                     size_t errlen) {
  struct box *b = r->box;
  struct codec_job j = {b, out, NULL, 0, 0};
  size_t start = out->len;
  int st;

  push_ref(b->L, b->ref_snapshot);
  if (!lua_isfunction(b->L, -1)) {
    lua_settop(b->L, SLOT_BASE);
    return SL_ENOENT;
  }
  st = box_call(b, 0, 1);
  if (st != 0)
    return handover_error(b, st, "snapshot", err, errlen);
  if (lua_isnil(b->L, -1)) {
    lua_settop(b->L, SLOT_BASE);
    return sl_codec_put_nil(out) == 0 ? 0 : SL_ENOMEM;
  }
  lua_rawseti(b->L, LUA_REGISTRYINDEX, b->ref_tmp);
  st = box_cpcall(b, encode_tmp, &j);
  lua_pushboolean(b->L, 0);
  lua_rawseti(b->L, LUA_REGISTRYINDEX, b->ref_tmp);
  lua_settop(b->L, SLOT_BASE);
  if (st != 0) {
    out->len = start;
    snprintf(err, errlen, "%s: snapshot() returned a value msgpack cannot "
             "hold: %s", r->path, r->err_msg);
    return st == LUA_ERRMEM ? SL_ENOMEM : SL_EINVAL;
  }
  return 0;
}

int sl_rule_stop(struct sl_rule *r, char *err, size_t errlen) {
  struct box *b = r->box;
  int st;
  push_ref(b->L, b->ref_on_stop);
  if (!lua_isfunction(b->L, -1)) {
    lua_settop(b->L, SLOT_BASE);
    return SL_ENOENT;
  }
  st = box_call(b, 0, 0);
  if (st != 0)
    return handover_error(b, st, "on_stop", err, errlen);
  lua_settop(b->L, SLOT_BASE);
  return 0;
}

int sl_rule_restore(struct sl_rule *r, const uint8_t *p, size_t len,
                    char *err, size_t errlen) {
  struct box *b = r->box;
  struct codec_job j = {b, NULL, p, len, 0};
  int st;

  push_ref(b->L, b->ref_restore);
  if (!lua_isfunction(b->L, -1)) {
    lua_settop(b->L, SLOT_BASE);
    return SL_ENOENT;
  }
  st = box_cpcall(b, decode_tmp, &j);
  if (st != 0) {
    lua_settop(b->L, SLOT_BASE);
    snprintf(err, errlen, "%s: cannot decode the snapshot: %s", r->path,
             r->err_msg);
    return st == LUA_ERRMEM ? SL_ENOMEM : SL_EINVAL;
  }
  if (j.nil)
    lua_pushnil(b->L);
  else
    push_ref(b->L, b->ref_tmp);
  st = box_call(b, 1, 0);
  lua_pushboolean(b->L, 0);
  lua_rawseti(b->L, LUA_REGISTRYINDEX, b->ref_tmp);
  if (st != 0)
    return handover_error(b, st, "restore", err, errlen);
  lua_settop(b->L, SLOT_BASE);
  return 0;
}

void sl_rule_set_host(struct sl_rule *r, const struct sl_rule_host *host) {
  r->host = *host;
}

int sl_rule_has_restore(struct sl_rule *r) {
  int yes;
  push_ref(r->box->L, r->box->ref_restore);
  yes = lua_isfunction(r->box->L, -1);
  lua_pop(r->box->L, 1);
  return yes;
}

int sl_rule_unchanged(const struct sl_rule *r, const char *path) {
  struct sl_buf now;
  char hash[65];
  int i, rc, same = strcmp(path, r->source) == 0;

  sl_buf_init(&now);
  if (same) {
    rc = read_file(&now, path, (size_t)r->memory_mb << 20);
    sha256_hex(now.data, now.len, hash);
    same = rc == 0 && strcmp(hash, r->hash) == 0;
  }
  for (i = 0; same && i < r->nmods; i++) {
    const struct module *m = &r->mods[i];
    rc = read_file(&now, m->path, (size_t)r->memory_mb << 20);
    same = m->found ? rc == 0 && now.len == m->text.len &&
                          (now.len == 0 ||
                           memcmp(now.data, m->text.data, now.len) == 0)
                    : rc == SL_ENOENT;
  }
  sl_buf_close(&now);
  return same;
}

/* Only what is fixed once loaded: this runs on main while a replica whose
 * set did not change decides events (and may require, growing mods). */
int sl_rule_same_code(const struct sl_rule *a, const struct sl_rule *b) {
  return strcmp(a->source, b->source) == 0 && strcmp(a->hash, b->hash) == 0 &&
         a->mods_hash[0] != 0 && strcmp(a->mods_hash, b->mods_hash) == 0;
}

const char *sl_rule_path(const struct sl_rule *r) { return r->path; }
const char *sl_rule_source(const struct sl_rule *r) { return r->source; }
const char *sl_rule_hash(const struct sl_rule *r) { return r->hash; }
size_t sl_rule_memory(const struct sl_rule *r) { return r->box->used; }
uint64_t sl_rule_rebuilds(const struct sl_rule *r) { return r->rebuilds; }
uint64_t sl_rule_timer_errors(const struct sl_rule *r) {
  return r->timer_errors;
}

void sl_rule_counters(const struct sl_rule *r, sl_rule_counter_cb cb,
                      void *data) {
  /* acquire: pairs with l_counter's release (another thread's rule) */
  int i, n = __atomic_load_n(&r->ncounters, __ATOMIC_ACQUIRE);
  for (i = 0; i < n; i++)
    cb(data, r->counters[i].name, r->counters[i].labels,
       r->counters[i].value); /* an aligned double: loads whole */
}
