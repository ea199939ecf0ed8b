/* api.c - the sluice.* API a rule calls: drop, emit, log/print, now,
 * every, json, counter, rate_limit and seen (with their bounded LRU tables).
 * Internal to engine/lua (box.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "box.h"
#include "proxy.h"
#include "codec.h"
#include "luacodec.h"
#include "ratelimit.h"
#include "utf8.h"

const char drop_sentinel = 0; /* its address is sluice.drop's mark */

/* ---- hashing and LRU tables --------------------------------------------- */

uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static void hash128(lua_State *L, const struct sl_rule *r, const char *s,
                    size_t n, uint64_t *h1, uint64_t *h2) {
  uint64_t a = r->seed1 ^ (uint64_t)n, b = r->seed2 + (uint64_t)n * 31;
  uint64_t w;
  size_t i;

  for (i = 0; i + 8 <= n; i += 8) {
    if ((i & ((1u << 20) - 1)) == 0 && i > 0)
      check_cpu(L); /* a key may be as long as memory_mb: 10 ms per 16 MB */
    memcpy(&w, s + i, 8);
    a = mix64(a ^ w) + 0x9e3779b97f4a7c15ULL;
    b = mix64(b + (w * 0xbf58476d1ce4e5b9ULL)) ^ a;
  }
  w = 0;
  memcpy(&w, s + i, n - i);
  a = mix64(a ^ w ^ ((uint64_t)(n - i) << 56));
  b = mix64(b + w + a);
  *h1 = a;
  *h2 = b;
}

static int lru_open(struct lru *l, uint32_t cap) {
  uint32_t nb = 1, i;

  while (nb < cap)
    nb <<= 1;
  l->nodes = calloc(cap, sizeof(*l->nodes));
  l->buckets = malloc(nb * sizeof(*l->buckets));
  if (l->nodes == NULL || l->buckets == NULL) {
    free(l->nodes);
    free(l->buckets);
    l->nodes = NULL;
    l->buckets = NULL;
    return SL_ENOMEM;
  }
  for (i = 0; i < nb; i++)
    l->buckets[i] = NIL32;
  l->cap = cap;
  l->mask = nb - 1;
  l->n = 0;
  l->head = l->tail = NIL32;
  return 0;
}

void lru_close(struct lru *l) {
  free(l->nodes);
  free(l->buckets);
  memset(l, 0, sizeof(*l));
}

static void lru_unlink(struct lru *l, uint32_t i) {
  struct lru_node *x = &l->nodes[i];
  if (x->prev != NIL32)
    l->nodes[x->prev].next = x->next;
  else
    l->head = x->next;
  if (x->next != NIL32)
    l->nodes[x->next].prev = x->prev;
  else
    l->tail = x->prev;
}

static void lru_front(struct lru *l, uint32_t i) {
  struct lru_node *x = &l->nodes[i];
  x->prev = NIL32;
  x->next = l->head;
  if (l->head != NIL32)
    l->nodes[l->head].prev = i;
  l->head = i;
  if (l->tail == NIL32)
    l->tail = i;
}

/* Find the node for (h1, h2), moved to the front; or NIL32. */
static uint32_t lru_find(struct lru *l, uint64_t h1, uint64_t h2) {
  uint32_t i = l->buckets[h1 & l->mask];

  while (i != NIL32 && (l->nodes[i].h1 != h1 || l->nodes[i].h2 != h2))
    i = l->nodes[i].chain;
  if (i != NIL32 && l->head != i) {
    lru_unlink(l, i);
    lru_front(l, i);
  }
  return i;
}

/* Add a node for (h1, h2) at the front, evicting the least recent one
 * when full. The node's a and b are zero. */
static uint32_t lru_add(struct lru *l, uint64_t h1, uint64_t h2) {
  uint32_t i, *pp;

  if (l->n < l->cap) {
    i = l->n++;
  } else {
    i = l->tail;
    lru_unlink(l, i);
    for (pp = &l->buckets[l->nodes[i].h1 & l->mask]; *pp != i;
         pp = &l->nodes[*pp].chain)
      ;
    *pp = l->nodes[i].chain;
  }
  l->nodes[i].h1 = h1;
  l->nodes[i].h2 = h2;
  l->nodes[i].a = l->nodes[i].b = 0;
  l->nodes[i].chain = l->buckets[h1 & l->mask];
  l->buckets[h1 & l->mask] = i;
  lru_front(l, i);
  return i;
}

/* ---- the sluice API ------------------------------------------------------ */

/* Push t[k] without metamethods; t is an absolute index. */
static void rawfield(lua_State *L, int t, const char *k) {
  lua_pushstring(L, k);
  lua_rawget(L, t);
}

static int l_drop(lua_State *L) {
  struct box *b = box_of(L);
  if (!lua_isnoneornil(L, 1) && lua_type(L, 1) != LUA_TSTRING)
    return luaL_argerror(L, 1, "a reason string expected");
  lua_settop(L, 1);
  if (lua_isnil(L, 1))
    lua_pushliteral(L, "dropped by rule");
  set_ref(L, b->ref_drop, -1);
  lua_pushlightuserdata(L, (void *)&drop_sentinel);
  return 1;
}

static int64_t num_to_ns(lua_State *L, int idx) {
  double ms = lua_tonumber(L, idx);
  if (!(ms > -9.2e12 && ms < 9.2e12))
    luaL_error(L, "time out of range");
  return (int64_t)llround(ms * 1e6);
}

/* The decimal string at idx (ev.time_ns's form) as int64 ns; raises when
 * it is not one. */
static int64_t ns_of_string(lua_State *L, int idx) {
  const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : "";
  char *end;
  long long v;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (!((s[0] >= '0' && s[0] <= '9') ||
        (s[0] == '-' && s[1] >= '0' && s[1] <= '9')) ||
      *end != '\0' || errno != 0)
    luaL_error(L, "sluice.emit: time_ns must be a string of decimal digits "
                  "(nanoseconds since the epoch, as ev.time_ns)");
  return (int64_t)v;
}

/* Raise unless every field of the event table at 2 is one sluice.emit
 * knows; the stack is cut to 2. */
static void emit_fields_known(lua_State *L) {
  lua_settop(L, 2);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    if (strcmp(k, "id") && strcmp(k, "topic") && strcmp(k, "key") &&
        strcmp(k, "time") && strcmp(k, "time_ns") && strcmp(k, "headers") &&
        strcmp(k, "payload"))
      luaL_error(L, "sluice.emit: unknown event field '%s' (use id, "
                    "topic, key, time, time_ns, headers, payload)",
                 lua_type(L, -2) == LUA_TSTRING ? msg_str(L, -2)
                                                : luaL_typename(L, -2));
    lua_pop(L, 1);
  }
}

static int l_emit(lua_State *L) {
  struct box *b = box_of(L);
  struct sl_rule *r = b->rule;
  const char *output = luaL_checkstring(L, 1);
  struct sl_str id = {NULL, 0}, topic = {NULL, 0}, key = {NULL, 0};
  const uint8_t *hp = NULL, *pp = NULL;
  size_t hl = 0, pl = 0, n;
  int has_time = 0, has_tp;
  int64_t time = 0;
  struct sl_event *ev;
  char tp[55];

  check_cpu(L); /* each call scans and copies up to max_event_bytes */
  if (lua_objlen(L, 1) > ROUTE_NAME_MAX)
    return luaL_error(L, "sluice.emit: output name of %d bytes (at most %d)",
                      (int)lua_objlen(L, 1), ROUTE_NAME_MAX);
  if (strlen(output) != lua_objlen(L, 1)) /* it goes on as a C string */
    return luaL_error(L, "sluice.emit: output name with a NUL byte");
  luaL_checktype(L, 2, LUA_TTABLE);
  emit_fields_known(L);
  rawfield(L, 2, "topic"); /* 3 */
  if (lua_type(L, 3) != LUA_TSTRING || lua_objlen(L, 3) == 0)
    return luaL_error(L, "sluice.emit: topic must be a non-empty string "
                         "(got %s)", luaL_typename(L, 3));
  topic.p = lua_tolstring(L, 3, &n);
  topic.len = (uint32_t)n;
  rawfield(L, 2, "id"); /* 4 */
  if (!lua_isnil(L, 4)) {
    if (lua_type(L, 4) != LUA_TSTRING)
      return luaL_error(L, "sluice.emit: id must be a string");
    id.p = lua_tolstring(L, 4, &n);
    id.len = (uint32_t)n;
  }
  rawfield(L, 2, "key"); /* 5 */
  if (!lua_isnil(L, 5)) {
    if (lua_type(L, 5) != LUA_TSTRING)
      return luaL_error(L, "sluice.emit: key must be a string");
    key.p = lua_tolstring(L, 5, &n);
    key.len = (uint32_t)n;
  }
  if ((uint64_t)topic.len + id.len + key.len > r->max_event_bytes)
    return luaL_error(L, "sluice.emit: topic, id and key are larger than "
                         "max_event_bytes (%d bytes)",
                      (int)r->max_event_bytes);
  rawfield(L, 2, "time"); /* 6 */
  if (!lua_isnil(L, 6)) {
    if (lua_type(L, 6) != LUA_TNUMBER)
      return luaL_error(L, "sluice.emit: time must be a number (ms since "
                           "the epoch)");
    time = num_to_ns(L, 6);
    has_time = 1;
  }
  rawfield(L, 2, "time_ns"); /* 7, for now */
  if (!lua_isnil(L, 7)) {
    if (has_time)
      return luaL_error(L, "sluice.emit: give time or time_ns, not both");
    time = ns_of_string(L, 7);
    has_time = 1;
  }
  lua_settop(L, 6);
  has_tp = child_traceparent(r, b->ev, tp);
  sl_buf_reset(&r->buf1);
  rawfield(L, 2, "headers"); /* 7 */
  if (!lua_isnil(L, 7)) {
    if (!lua_istable(L, 7))
      return luaL_error(L, "sluice.emit: headers must be a table of "
                           "strings");
    encode_headers(L, 7, &r->buf1, "sluice.emit", r->max_event_bytes,
                   has_tp ? tp : NULL);
  } else if (has_tp) {
    lua_newtable(L);
    lua_replace(L, 7);
    encode_headers(L, 7, &r->buf1, "sluice.emit", r->max_event_bytes,
                   tp);
  }
  if (r->buf1.len > 1) { /* more than an empty map */
    hp = r->buf1.data;
    hl = r->buf1.len;
  }
  lua_settop(L, 7);
  rawfield(L, 2, "payload"); /* 8 */
  if (!lua_isnil(L, 8)) {
    sl_buf_reset(&r->buf2);
    sl_luacodec_encode_max(L, 8, &r->buf2, check_cpu, r->max_event_bytes,
                           "sluice.emit: payload (max_event_bytes)");
    pp = r->buf2.data;
    pl = r->buf2.len;
  }
  /* trace: no traceparent from the rule or a parent starts a new trace */
  ev = wire_event(L, r, "sluice.emit", id, topic, key, has_time, time, hp, hl,
                  pp, pl, 1);
  sl_buf_shrink(&r->buf1);
  sl_buf_shrink(&r->buf2);
  if (r->host.emit)
    r->host.emit(r->host.data, r, output, ev);
  else
    sl_event_unref(ev);
  return 0;
}

static int log_level(lua_State *L, int idx) {
  static const char *const names[] = {"debug", "info", "warn", "error", NULL};
  if (lua_type(L, idx) == LUA_TNUMBER) {
    int lv = (int)lua_tointeger(L, idx);
    if (lv < 0 || lv > 3)
      luaL_argerror(L, idx, "a level 0..3 expected");
    return lv;
  }
  return luaL_checkoption(L, idx, NULL, names);
}

/* May this call into the rule log n more bytes? Each call (on_event, a
 * timer; told apart by their call numbers) has LOG_CALL_MAX bytes; the line
 * that runs out writes one notice, later lines of the call are dropped. */
static int log_allow(lua_State *L, struct sl_rule *r, size_t n) {
  struct box *b = box_of(L);

  if (r->log_call != b->call_no || r->log_box != b) {
    r->log_call = b->call_no;
    r->log_box = b;
    r->log_bytes = 0;
  }
  if (r->log_bytes <= LOG_CALL_MAX && r->log_bytes + n > LOG_CALL_MAX) {
    r->log_bytes = LOG_CALL_MAX + 1;
    if (r->host.log)
      r->host.log(r->host.data, r, 2, "log budget of 65536 bytes for this "
                  "call used up; its further log lines are dropped",
                  NULL, 0);
    return 0;
  }
  if (r->log_bytes > LOG_CALL_MAX)
    return 0;
  r->log_bytes += n;
  return 1;
}

/* The message at msg[0..n) cut to LOG_LINE_MAX bytes (at a UTF-8
 * boundary) with a marker, NUL-terminated in out. */
static const char *log_text(lua_State *L, struct sl_buf *out, const char *msg,
                            size_t n) {
  size_t cut = n;

  if (n <= LOG_LINE_MAX && memchr(msg, 0, n) == NULL)
    return msg; /* Lua strings end in NUL */
  if (memchr(msg, 0, n))
    cut = n = strlen(msg);
  if (cut > LOG_LINE_MAX) {
    cut = LOG_LINE_MAX;
    while (cut > 0 && ((unsigned char)msg[cut] & 0xc0) == 0x80)
      cut--;
  }
  sl_buf_reset(out);
  if (sl_buf_append(out, msg, cut) != 0 ||
      (cut < n && sl_buf_printf(out, "... [cut: %zu bytes, at most %d]", n,
                                LOG_LINE_MAX) != 0) ||
      sl_buf_putc(out, 0) != 0)
    luaL_error(L, "not enough memory");
  return (const char *)out->data;
}

static int l_log(lua_State *L) {
  struct box *b = box_of(L);
  struct sl_rule *r = b->rule;
  int level = log_level(L, 1);
  size_t ml;
  const char *msg = luaL_checklstring(L, 2, &ml);
  const uint8_t *fp = NULL;
  size_t fl = 0;

  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    sl_buf_reset(&r->buf1);
    lua_settop(L, 3);
    lua_pushnil(L);
    if (lua_next(L, 3)) {
      lua_settop(L, 3);
      sl_luacodec_encode_max(L, 3, &r->buf1, check_cpu, LOG_FIELDS_MAX,
                             "sluice.log: fields");
      if (r->buf1.len && sl_codec_read_map(r->buf1.data, r->buf1.len,
                                           &(uint32_t){0}, &(size_t){0}) != 0)
        return luaL_error(L, "sluice.log: fields must be a map");
    } else {
      sl_buf_putc(&r->buf1, 0x80);
    }
    fp = r->buf1.data;
    fl = r->buf1.len;
  }
  if (log_allow(L, r, (ml < LOG_LINE_MAX ? ml : LOG_LINE_MAX) + fl)) {
    msg = log_text(L, &r->buf2, msg, ml);
    if (r->host.log)
      r->host.log(r->host.data, r, level, msg, fp, fl);
  }
  sl_buf_shrink(&r->buf1);
  sl_buf_shrink(&r->buf2);
  return 0;
}

/* print(...) is sluice.log("info", ...) with the arguments joined by tabs;
 * tables and functions print as their type, __tostring is not called. */
int l_print(lua_State *L) {
  struct box *b = box_of(L);
  struct sl_rule *r = b->rule;
  int i, n = lua_gettop(L);
  size_t total = 0;

  sl_buf_reset(&r->buf1);
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *s;
    char tmp[64];
    switch (lua_type(L, i)) {
    case LUA_TSTRING:
      s = lua_tolstring(L, i, &len);
      break;
    case LUA_TNUMBER:
      len = (size_t)snprintf(tmp, sizeof(tmp), "%.14g", lua_tonumber(L, i));
      s = tmp;
      break;
    case LUA_TBOOLEAN:
      s = lua_toboolean(L, i) ? "true" : "false";
      len = strlen(s);
      break;
    default:
      s = luaL_typename(L, i);
      len = strlen(s);
    }
    total += len + (i > 1);
    if (r->buf1.len > LOG_LINE_MAX)
      continue; /* only the length still counts, for the marker */
    if (i > 1 && sl_buf_putc(&r->buf1, '\t') != 0)
      return luaL_error(L, "not enough memory");
    if (sl_buf_append(&r->buf1, s, len > LOG_LINE_MAX + 1 ? LOG_LINE_MAX + 1
                                                          : len) != 0)
      return luaL_error(L, "not enough memory");
  }
  if (r->buf1.len > LOG_LINE_MAX) {
    r->buf1.len = LOG_LINE_MAX;
    while (r->buf1.len > 0 && (r->buf1.data[r->buf1.len] & 0xc0) == 0x80)
      r->buf1.len--;
    if (sl_buf_printf(&r->buf1, "... [cut: %zu bytes, at most %d]", total,
                      LOG_LINE_MAX) != 0)
      return luaL_error(L, "not enough memory");
  }
  if (sl_buf_putc(&r->buf1, 0) != 0)
    return luaL_error(L, "not enough memory");
  if (log_allow(L, r, r->buf1.len) && r->host.log)
    r->host.log(r->host.data, r, 1, (const char *)r->buf1.data, NULL, 0);
  sl_buf_shrink(&r->buf1);
  return 0;
}

static int l_now(lua_State *L) {
  struct sl_rule *r = box_of(L)->rule;
  double ms;
  if (r->host.mono_ns)
    ms = ((double)r->wall0_ns + (double)(rule_mono_ns(r) - r->mono0_ns)) / 1e6;
  else
    ms = (double)sl_now_ns() / 1e6;
  lua_pushnumber(L, ms);
  return 1;
}

static int l_every(lua_State *L) {
  struct box *b = box_of(L);
  double ms = luaL_checknumber(L, 1);
  struct timer *t;

  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!(ms >= 1 && ms <= 86400000.0 * 365))
    return luaL_argerror(L, 1, "an interval of at least 1 ms expected");
  if (b->ntimers >= MAX_TIMERS)
    return luaL_error(L, "sluice.every: at most %d timers per rule",
                      MAX_TIMERS);
  lua_settop(L, 2);
  t = &b->timers[b->ntimers];
  t->every_ms = (int64_t)ms;
  t->due_ms = (int64_t)(rule_mono_ns(b->rule) / 1000000u) + t->every_ms;
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  b->ntimers++;
  return 0;
}

/* The JSON text must fit in the state and can only leave the rule inside
 * an event: so it may take at most what is left of memory_mb and
 * max_event_bytes, bounded before it is rendered (rendering runs in C
 * without deadline checks; 1 MiB of escapes takes ~10 ms). */
static int l_json_encode(lua_State *L) {
  struct box *b = box_of(L);
  struct sl_rule *r = b->rule;
  size_t left = b->used < b->limit ? b->limit - b->used : 0;
  int rc;

  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (left > r->max_event_bytes)
    left = r->max_event_bytes;
  sl_buf_reset(&r->buf1);
  sl_luacodec_encode_json(L, 1, &r->buf1, check_cpu, left,
                          "json.encode: the value (max_event_bytes, or what "
                          "is left of memory_mb)");
  check_cpu(L);
  sl_buf_reset(&r->buf2);
  rc = sl_codec_to_json(r->buf1.data, r->buf1.len, &r->buf2);
  sl_buf_shrink(&r->buf1);
  if (rc != 0)
    return luaL_error(L, "json.encode: %s",
                      rc == SL_ENOMEM ? "not enough memory" : "bad value");
  lua_pushlstring(L, (const char *)r->buf2.data, r->buf2.len);
  sl_buf_shrink(&r->buf2);
  return 1;
}

static int l_json_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_settop(L, 1);
  sl_luacodec_push_json(L, s, n, check_cpu);
  return 1;
}

/* Prometheus names: [a-zA-Z_:][a-zA-Z0-9_:]*, labels without ':'. */
static int valid_name(const char *s, int colon) {
  const char *p;
  if (*s == 0 || (*s >= '0' && *s <= '9'))
    return 0;
  for (p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
          (*p >= '0' && *p <= '9') || *p == '_' || (colon && *p == ':')))
      return 0;
  return 1;
}

struct label {
  const char *k, *v;
  size_t vlen;
};

static int cmp_label(const void *a, const void *b) {
  return strcmp(((const struct label *)a)->k, ((const struct label *)b)->k);
}

/* The labels table at index 2 (nil: none) into lb[0..MAX_LABELS),
 * checked; returns how many. Raises on a bad name or value. */
static int read_labels(lua_State *L, struct label *lb) {
  int nl = 0;

  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      if (lua_type(L, -2) != LUA_TSTRING || !valid_name(lua_tostring(L, -2), 0) ||
          strlen(lua_tostring(L, -2)) != lua_objlen(L, -2))
        return luaL_error(L, "sluice.counter: label names must match "
                             "[a-zA-Z_][a-zA-Z0-9_]*");
      /* /metrics adds rule and name itself, and Prometheus keeps names
       * starting "__" (__name__ is the metric's): either would make the
       * sample a duplicate label or another metric, and break the scrape */
      if (strcmp(lua_tostring(L, -2), "rule") == 0 ||
          strcmp(lua_tostring(L, -2), "name") == 0 ||
          strncmp(lua_tostring(L, -2), "__", 2) == 0)
        return luaL_error(L, "sluice.counter: label name '%s' is reserved "
                             "(rule, name and names starting with __)",
                          msg_str(L, -2));
      if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "sluice.counter: label '%s' must be a string",
                          msg_str(L, -2));
      if (lua_objlen(L, -2) > LABEL_MAX || lua_objlen(L, -1) > LABEL_MAX)
        return luaL_error(L, "sluice.counter: label '%s' has a name or "
                             "value over %d bytes", msg_str(L, -2),
                          LABEL_MAX); /* luaL_error has no precision */
      if (nl == MAX_LABELS)
        return luaL_error(L, "sluice.counter: at most %d labels", MAX_LABELS);
      lb[nl].k = lua_tostring(L, -2);
      lb[nl].v = lua_tolstring(L, -1, &lb[nl].vlen);
      if (!sl_utf8_valid(lb[nl].v, lb[nl].vlen))
        return luaL_error(L, "sluice.counter: label '%s' is not valid UTF-8",
                          lb[nl].k);
      if (memchr(lb[nl].v, 0, lb[nl].vlen) != NULL) /* kept as C strings: */
        return luaL_error(L, "sluice.counter: label '%s' holds a NUL byte",
                          lb[nl].k); /* cut there, the quote was lost */
      nl++;
      lua_pop(L, 1);
    }
  }
  return nl;
}

/* lb[0..nl) as a Prometheus label list without braces, NUL-terminated,
 * into out. Raises "not enough memory". */
static void render_labels(lua_State *L, struct sl_buf *out,
                          const struct label *lb, int nl) {
  int i;

  sl_buf_reset(out);
  for (i = 0; i < nl; i++) {
    size_t j;
    if (sl_buf_printf(out, "%s%s=\"", i ? "," : "", lb[i].k) != 0)
      luaL_error(L, "not enough memory");
    for (j = 0; j < lb[i].vlen; j++) {
      char c = lb[i].v[j];
      int rc = c == '\\' ? sl_buf_append(out, "\\\\", 2)
               : c == '"' ? sl_buf_append(out, "\\\"", 2)
               : c == '\n' ? sl_buf_append(out, "\\n", 2)
                           : sl_buf_putc(out, (uint8_t)c);
      if (rc != 0)
        luaL_error(L, "not enough memory");
    }
    if (sl_buf_putc(out, '"') != 0)
      luaL_error(L, "not enough memory");
  }
  if (sl_buf_putc(out, 0) != 0)
    luaL_error(L, "not enough memory");
}

static int l_counter(lua_State *L) {
  struct sl_rule *r = box_of(L)->rule;
  const char *name = luaL_checkstring(L, 1);
  struct label lb[MAX_LABELS];
  int nl, i;
  uint32_t *slot;

  check_cpu(L); /* finding a series compares up to 1024 label sets */
  if (!valid_name(name, 1) || strlen(name) != lua_objlen(L, 1))
    return luaL_argerror(L, 1, "a metric name [a-zA-Z_:][a-zA-Z0-9_:]* "
                               "expected");
  if (strlen(name) > LABEL_MAX)
    return luaL_error(L, "sluice.counter: name of %d bytes (at most %d)",
                      (int)strlen(name), LABEL_MAX);
  nl = read_labels(L, lb);
  qsort(lb, (size_t)nl, sizeof(lb[0]), cmp_label);
  render_labels(L, &r->buf1, lb, nl);
  for (i = 0; i < r->ncounters; i++)
    if (strcmp(r->counters[i].name, name) == 0 &&
        strcmp(r->counters[i].labels, (const char *)r->buf1.data) == 0)
      break;
  if (i == r->ncounters) {
    struct counter *c;
    if (r->ncounters == MAX_COUNTERS)
      return luaL_error(L, "sluice.counter: at most %d series per rule",
                        MAX_COUNTERS);
    if (r->counters == NULL) {
      r->counters = calloc(MAX_COUNTERS, sizeof(*r->counters));
      if (r->counters == NULL)
        return luaL_error(L, "not enough memory");
    }
    c = &r->counters[i];
    c->name = strdup(name);
    c->labels = strdup((const char *)r->buf1.data);
    if (c->name == NULL || c->labels == NULL) {
      free(c->name);
      free(c->labels);
      c->name = c->labels = NULL;
      return luaL_error(L, "not enough memory");
    }
    c->value = 0;
    /* published after the series is whole: a worker's primary set reads
     * the series from its own thread (sl_rule_counters) */
    __atomic_store_n(&r->ncounters, r->ncounters + 1, __ATOMIC_RELEASE);
  }
  sl_buf_shrink(&r->buf1);
  slot = lua_newuserdata(L, sizeof(*slot));
  *slot = (uint32_t)i;
  luaL_getmetatable(L, "sluice.counter");
  lua_setmetatable(L, -2);
  return 1;
}

static int counter_add(lua_State *L, double dflt) {
  struct sl_rule *r = box_of(L)->rule;
  uint32_t *slot = luaL_checkudata(L, 1, "sluice.counter");
  double n = dflt >= 0 ? luaL_optnumber(L, 2, dflt) : luaL_checknumber(L, 2);

  if (!(n >= 0 && n < HUGE_VAL))
    return luaL_argerror(L, 2, "counters only go up: a finite amount >= 0 "
                               "expected");
  r->counters[*slot].value += n;
  lua_settop(L, 1);
  return 1;
}

static int l_counter_inc(lua_State *L) { return counter_add(L, 1); }
static int l_counter_add(lua_State *L) { return counter_add(L, -1); }

static int l_rate_limit(lua_State *L) {
  struct sl_rule *r = box_of(L)->rule;
  size_t n;
  const char *key = luaL_checklstring(L, 1, &n);
  double rate = luaL_checknumber(L, 2);
  double burst = luaL_optnumber(L, 3, rate > 1 ? rate : 1);
  uint64_t h1, h2, now = rule_mono_ns(r);
  uint32_t i;
  struct lru_node *x;
  struct sl_ratelimit rl;

  if (!(rate > 0 && rate < HUGE_VAL))
    return luaL_argerror(L, 2, "a rate > 0 per second expected");
  if (!(burst >= 1 && burst < HUGE_VAL))
    return luaL_argerror(L, 3, "a burst >= 1 expected");
  if (r->rate.nodes == NULL && lru_open(&r->rate, RATE_KEYS) != 0)
    return luaL_error(L, "not enough memory");
  hash128(L, r, key, n, &h1, &h2);
  sl_ratelimit_init_fraction(&rl, rate, burst, now); /* a new key: full */
  i = lru_find(&r->rate, h1, h2);
  if (i == NIL32) {
    i = lru_add(&r->rate, h1, h2);
  } else { /* this call's rate and burst, the key's tokens */
    x = &r->rate.nodes[i];
    rl.tokens = x->rate.tokens < rl.cap ? x->rate.tokens : rl.cap;
    rl.last_ns = x->rate.last_ns;
  }
  lua_pushboolean(L, sl_ratelimit_take(&rl, 1, now) == 1);
  x = &r->rate.nodes[i];
  x->rate.tokens = rl.tokens;
  x->rate.last_ns = rl.last_ns;
  return 1;
}

static int l_seen(lua_State *L) {
  struct sl_rule *r = box_of(L)->rule;
  size_t n;
  const char *id = luaL_checklstring(L, 1, &n);
  double ttl = luaL_checknumber(L, 2);
  uint64_t h1, h2, now = rule_mono_ns(r);
  uint32_t i;

  if (!(ttl > 0 && ttl < HUGE_VAL))
    return luaL_argerror(L, 2, "a ttl > 0 ms expected");
  if (r->seen.nodes == NULL && lru_open(&r->seen, SEEN_KEYS) != 0)
    return luaL_error(L, "not enough memory");
  hash128(L, r, id, n, &h1, &h2);
  i = lru_find(&r->seen, h1, h2);
  if (i != NIL32 && r->seen.nodes[i].a > (double)now) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (i == NIL32)
    i = lru_add(&r->seen, h1, h2);
  r->seen.nodes[i].a = (double)now + ttl * 1e6;
  lua_pushboolean(L, 0);
  return 1;
}

/* The sluice table in env (absolute) and the counters' metatable. */
void open_sluice(lua_State *L, int env) {
  static const luaL_Reg sluice_fns[] = {
      {"drop", l_drop}, {"emit", l_emit}, {"log", l_log},
      {"now", l_now}, {"every", l_every}, {"counter", l_counter},
      {"rate_limit", l_rate_limit}, {"seen", l_seen}, {NULL, NULL}};
  const luaL_Reg *f;

  lua_newtable(L);
  for (f = sluice_fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  sl_luacodec_register(L, -1);
  lua_pushcfunction(L, sl_proxy_copy);
  lua_setfield(L, -2, "copy");
  sl_luacodec_set_check(L, check_cpu); /* kind() walks tables */
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, l_json_encode);
  lua_setfield(L, -2, "encode");
  lua_pushcfunction(L, l_json_decode);
  lua_setfield(L, -2, "decode");
  lua_setfield(L, -2, "json");
  lua_pushliteral(L, SL_VERSION);
  lua_setfield(L, -2, "version");
  lua_setfield(L, env, "sluice");

  luaL_newmetatable(L, "sluice.counter");
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, l_counter_inc);
  lua_setfield(L, -2, "inc");
  lua_pushcfunction(L, l_counter_add);
  lua_setfield(L, -2, "add");
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}
