/* ev.c - the event userdata a rule's on_event sees (ev.topic, ev.key,
 * ev.headers, ev.payload, ...) and the events leaving the rule: finish()
 * builds a changed event, wire_event() proves the wire takes it.
 * Internal to engine/lua (box.h). */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "box.h"
#include "proxy.h"
#include "codec.h"
#include "config.h"
#include "luacodec.h"

/* ---- the event userdata ------------------------------------------------- */

#define TOPIC_CACHE_MAX 64 /* topics this long or shorter are cached */
#define TOPIC_CACHE_N 16   /* topics cached, by a hash of their bytes */
#define TOPIC_UPVALUE 4    /* ev_index's upvalue of the first one */
#define PAY_SLOT TOPIC_CACHE_N /* the fields table of rules that read
                                  ev.payload but not ev.topic */

/* What makes ev.topic cheap (a rule routing on it runs on every event):
 * the field names as the interned strings Lua compares by address, so
 * ev_index finds "topic" without reading the name, and the topics pushed
 * lately, kept in ev_index's upvalues and pushed again instead
 * of interning the same bytes anew; inputs carry a handful of topics.
 * Lives in the event userdata; b->evc points at it. */
struct ev_cache {
  const void *k_topic, *k_payload; /* NULL: lua_topointer gives none */
  struct {
    uint32_t len; /* NIL32: nothing cached */
    char s[TOPIC_CACHE_MAX];
  } topic[TOPIC_CACHE_N];
  /* ev.topic without a C call (a rule routing on it runs per event): per
   * cached topic, a metatable for the event whose __index is a table
   * holding that topic, with ev_index behind it for the other names.
   * ev_begin gives the event the one of its topic when ev_index showed it
   * (show_topic), else the base metatable (__index = ev_index); so does
   * ev_hide when the rule sets ev.topic and before rule code runs outside
   * on_event, where the event must raise. b->ev_shown: the slot + 1. */
  int ref_base, ref_ktopic;          /* base metatable, the key "topic" */
  int ref_mt[TOPIC_CACHE_N + 1];     /* the per-topic metatables */
  int ref_fields[TOPIC_CACHE_N + 1]; /* and their __index tables */
  unsigned char shown[TOPIC_CACHE_N]; /* fields' topic is topic[slot]'s */
  /* ev.payload without a C call: a fields table (one per topic slot, and
   * PAY_SLOT's, which holds no topic) may hold the root of ev.payload
   * (pay[slot]). Whenever the event's metatable is the slot's, during
   * on_event, that is the running call's root: ev_begin makes the root
   * at once for a slot whose last event's rule read ev.payload (so reads
   * of it pay no C call at all), show_topic and cache_payload set it when
   * they switch, setting ev.payload hides it (ev_hide). */
  int ref_kpayload; /* the key "payload" */
  unsigned char pay[TOPIC_CACHE_N + 1];
};

static inline uint32_t topic_slot(const uint8_t *t, uint32_t n) {
  return ((n * 0x9e3779b1u) ^ t[0] ^ (t[n / 2] * 0x10001u) ^
          (t[n - 1] * 0x1000193u)) * 0x9e3779b1u >> 28; /* TOPIC_CACHE_N */
}

/* The event's topic (n bytes, 1..TOPIC_CACHE_MAX) is the cached s: in
 * words, without a call (memcmp was a tenth of ev_begin, which runs for
 * every event). Loads overlap at the end, never past n bytes of t. */
static inline int topic_eq(const uint8_t *t, const char *s, uint32_t n) {
  uint64_t x, y, d = 0;
  uint32_t i, a, b;

  if (n >= 8) {
    for (i = 0; i + 8 < n; i += 8) {
      memcpy(&x, t + i, 8);
      memcpy(&y, s + i, 8);
      d |= x ^ y;
    }
    memcpy(&x, t + n - 8, 8);
    memcpy(&y, s + n - 8, 8);
    return (d | (x ^ y)) == 0;
  }
  if (n >= 4) {
    memcpy(&a, t, 4);
    memcpy(&b, s, 4);
    d = a ^ b;
    memcpy(&a, t + n - 4, 4);
    memcpy(&b, s + n - 4, 4);
    return (d | (a ^ b)) == 0;
  }
  for (i = 0; i < n; i++)
    d |= (uint8_t)(t[i] ^ (uint8_t)s[i]);
  return d == 0;
}

/* Push the event's topic (not set by the rule). Returns its cache slot,
 * -1 when it is not cached. */
static inline int push_topic(lua_State *L, struct ev_cache *c,
                             const struct sl_event *ev) {
  const uint8_t *t = ev->data + ev->topic_off;
  uint32_t n = ev->topic_len, h;

  if (n == 0 || n > TOPIC_CACHE_MAX) {
    lua_pushlstring(L, (const char *)t, n);
    return -1;
  }
  h = topic_slot(t, n);
  if (c->topic[h].len == n && topic_eq(t, c->topic[h].s, n)) {
    lua_pushvalue(L, lua_upvalueindex(TOPIC_UPVALUE + (int)h));
    return (int)h;
  }
  c->topic[h].len = NIL32; /* until the upvalue holds it */
  c->shown[h] = 0;
  lua_pushlstring(L, (const char *)t, n);
  lua_pushvalue(L, -1);
  lua_replace(L, lua_upvalueindex(TOPIC_UPVALUE + (int)h));
  memcpy(c->topic[h].s, t, n);
  c->topic[h].len = n;
  return (int)h;
}

/* Give the event the metatable in registry slot ref. Allocates nothing. */
static void set_event_mt(lua_State *L, struct box *b, int ref) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->ref_event);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

/* Is ev.payload the root proxy of this call, as it came (not assigned)?
 * Then ref_payload does not hold it: the root is pushed again. */
static int root_is_payload(const struct box *b) {
  return b->proot != NULL && !(b->evflags & EV_PAYLOAD_SET);
}

/* Fields table s's payload becomes this call's root (root) or nil. Its
 * key exists, so nothing allocates. */
static void set_fields_payload(lua_State *L, struct box *b,
                               struct ev_cache *c, int s, int root) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_fields[s]);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_kpayload);
  if (root)
    sl_proxy_push_again(L, b);
  else
    lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  c->pay[s] = (unsigned char)root;
}

/* ev.topic reaches ev_index again. */
void ev_hide(lua_State *L, struct box *b) {
  set_event_mt(L, b, ((struct ev_cache *)b->evc)->ref_base);
  b->ev_shown = 0;
}

/* The topic ev_index pushed (on top) in slot h: put it in the slot's
 * table (its "topic" key exists, so nothing allocates) and index that
 * for the rest of the call and for later events of the same topic. */
static void show_topic(lua_State *L, struct box *b, struct ev_cache *c,
                       int h) {
  if (h < 0)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_fields[h]);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_ktopic);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  c->shown[h] = 1;
  if (c->pay[h] || ((b->evflags & EV_PAYLOAD) && root_is_payload(b)))
    set_fields_payload(L, b, c, h,
                       (b->evflags & EV_PAYLOAD) && root_is_payload(b));
  set_event_mt(L, b, c->ref_mt[h]);
  b->ev_shown = h + 1;
}

/* Fields table s is to hold the root of this event's payload (the last
 * event's rule read it): make the root now, or clear the slot when the
 * payload is no map or array (ev_index decodes it). */
static void begin_payload(struct box *b, struct ev_cache *c, int s) {
  const struct sl_event *ev = b->ev;
  const uint8_t *p = ev->data + ev->payload_off;
  int root = sl_codec_is_container(p, ev->payload_len) &&
             sl_proxy_begin_root(b, p, ev->payload_len) == 0;

  if (root)
    b->evflags |= EV_PAYLOAD;
  set_fields_payload(b->L, b, c, s, root);
}

/* Before on_event runs on b->ev (the event at SLOT_EVENT of b->L). */
void ev_begin(struct box *b) {
  struct ev_cache *c = b->evc;
  const struct sl_event *ev = b->ev;
  const uint8_t *t = ev->data + ev->topic_off;
  uint32_t n = ev->topic_len, h;
  int s = -1;

  if (sl_likely(n - 1 < TOPIC_CACHE_MAX)) {
    h = topic_slot(t, n);
    if (c->shown[h] && c->topic[h].len == n &&
        topic_eq(t, c->topic[h].s, n))
      s = (int)h;
  }
  if (s < 0 && c->pay[PAY_SLOT])
    s = PAY_SLOT;
  if (s < 0) {
    if (b->ev_shown)
      ev_hide(b->L, b);
    return;
  }
  if (c->pay[s])
    begin_payload(b, c, s);
  if (b->ev_shown != s + 1) {
    lua_rawgeti(b->L, LUA_REGISTRYINDEX, c->ref_mt[s]);
    lua_setmetatable(b->L, SLOT_EVENT);
    b->ev_shown = s + 1;
  }
}

/* ev.payload is this call's root: later reads find it in the fields
 * table of the event's metatable (PAY_SLOT's when ev.topic was not
 * read), and so do the next event's, made by ev_begin. */
static void cache_payload(lua_State *L, struct box *b) {
  struct ev_cache *c = b->evc;
  int s = b->ev_shown ? b->ev_shown - 1 : PAY_SLOT;

  if (b->ev_shown == s + 1 && c->pay[s])
    return; /* holds it already (ev:field reaches here) */
  set_fields_payload(L, b, c, s, 1);
  if (b->ev_shown != s + 1) {
    set_event_mt(L, b, c->ref_mt[s]);
    b->ev_shown = s + 1;
  }
}

/* Push ev.payload: a map or array is a proxy over the bytes (proxy.h),
 * read lazily and written back by splicing; a scalar is decoded. Returns
 * the number of values pushed (0 for nil). */
static int push_payload(lua_State *L, struct box *b) {
  struct sl_event *ev = b->ev;
  const uint8_t *p = ev->data + ev->payload_off;

  if (b->evflags & EV_PAYLOAD) {
    if (b->evflags & EV_PAYLOAD_NIL)
      return 0;
    if (root_is_payload(b)) { /* a value: no registry slot holds it */
      sl_proxy_push_again(L, b);
      cache_payload(L, b);
    } else {
      push_ref(L, b->ref_payload);
    }
    return 1;
  }
  if (ev->payload_len == 0) {
    b->evflags |= EV_PAYLOAD | EV_PAYLOAD_NIL;
    return 0;
  }
  if (sl_codec_is_container(p, ev->payload_len)) {
    sl_proxy_push_root(L, p, ev->payload_len);
    b->evflags |= EV_PAYLOAD;
    cache_payload(L, b);
    return 1;
  }
  sl_luacodec_push(L, p, ev->payload_len, check_cpu);
  set_ref(L, b->ref_payload, -1);
  b->evflags |= EV_PAYLOAD | (lua_isnil(L, -1) ? EV_PAYLOAD_NIL : 0);
  return lua_isnil(L, -1) ? 0 : 1;
}

static int ev_index(lua_State *L) {
  struct box *b = box_of(L);
  struct sl_event *ev = b->ev;
  struct ev_cache *c = b->evc;
  const void *kp;
  const char *k;
  size_t n;

  if (ev == NULL)
    return luaL_error(L, "the event is only valid during on_event");
  kp = lua_topointer(L, 2); /* the hot names, by their interned address */
  if (kp != NULL && kp == c->k_topic && !(b->evflags & EV_TOPIC)) {
    show_topic(L, b, c, push_topic(L, c, ev));
    return 1;
  }
  if (kp != NULL && kp == c->k_payload)
    return push_payload(L, b);
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_error(L, "event fields are named by strings");
  k = lua_tolstring(L, 2, &n);
  if (n == 5 && memcmp(k, "topic", 5) == 0) {
    if (b->evflags & EV_TOPIC)
      push_ref(L, b->ref_topic);
    else
      show_topic(L, b, c, push_topic(L, c, ev));
  } else if (n == 7 && memcmp(k, "payload", 7) == 0) {
    return push_payload(L, b);
  } else if (n == 7 && memcmp(k, "headers", 7) == 0) {
    if (!(b->evflags & EV_HEADERS)) {
      if (ev->headers_len) {
        const uint8_t *hp = ev->data + ev->headers_off;
        if (!sl_luacodec_push_strmap(L, hp, ev->headers_len, check_cpu))
          sl_luacodec_push(L, hp, ev->headers_len, check_cpu);
      } else
        lua_newtable(L);
      set_ref(L, b->ref_headers, -1);
      b->evflags |= EV_HEADERS;
      return 1;
    }
    push_ref(L, b->ref_headers);
  } else if (n == 3 && memcmp(k, "key", 3) == 0) {
    if (b->evflags & EV_KEY) {
      if (b->evflags & EV_KEY_NIL)
        return 0;
      push_ref(L, b->ref_key);
    } else if (ev->key_off) {
      lua_pushlstring(L, (const char *)ev->data + ev->key_off, ev->key_len);
    } else {
      return 0;
    }
  } else if (n == 2 && memcmp(k, "id", 2) == 0) {
    lua_pushlstring(L, (const char *)ev->data + ev->id_off, ev->id_len);
  } else if (n == 4 && memcmp(k, "time", 4) == 0) {
    lua_pushnumber(L, (lua_Number)ev->time / 1e6);
  } else if (n == 7 && memcmp(k, "time_ns", 7) == 0) {
    /* exact: a double holds ns since 1970 only to about 256 ns, and the
     * sandbox has no ffi for an int64 cdata, so a decimal string */
    char ns[24];
    snprintf(ns, sizeof(ns), "%lld", (long long)ev->time);
    lua_pushstring(L, ns);
  } else if (n == 14 && memcmp(k, "schema_version", 14) == 0) {
    /* the contract version ingest checked it against; nil without one */
    char v[16];
    if (ev->schema_version == 0)
      return 0;
    sl_config_version_format(ev->schema_version, v, sizeof(v));
    lua_pushstring(L, v);
  } else if (n == 5 && memcmp(k, "field", 5) == 0) {
    lua_pushvalue(L, lua_upvalueindex(1)); /* ev:field(name) */
  } else {
    return luaL_error(L, "event has no field '%s' (it has id, topic, key, "
                         "time, time_ns, headers, payload, schema_version and "
                         "field())",
                      msg_str(L, 2));
  }
  return 1;
}

/* ev:field(name): ev.payload[name], kept for rules written when reading
 * ev.payload decoded all of it. nil when the payload is not a map. */
static int ev_field(lua_State *L) {
  struct box *b = box_of(L);

  if (b->ev == NULL)
    return luaL_error(L, "the event is only valid during on_event");
  luaL_checklstring(L, 2, NULL);
  lua_settop(L, 2);
  if (push_payload(L, b) == 0) {
    lua_pushnil(L);
    return 1;
  }
  if (sl_proxy_is(L, 3)) {
    lua_pushvalue(L, 2);
    lua_gettable(L, 3);
  } else if (lua_istable(L, 3)) {
    lua_pushvalue(L, 2);
    lua_rawget(L, 3);
  } else {
    lua_pushnil(L);
  }
  return 1;
}

static int ev_newindex(lua_State *L) {
  struct box *b = box_of(L);
  const char *k;
  size_t n;

  if (b->ev == NULL)
    return luaL_error(L, "the event is only valid during on_event");
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_error(L, "event fields are named by strings");
  k = lua_tolstring(L, 2, &n);
  if (strcmp(k, "topic") == 0) {
    if (lua_type(L, 3) != LUA_TSTRING || lua_objlen(L, 3) == 0)
      return luaL_error(L, "ev.topic must be a non-empty string (got %s)",
                        luaL_typename(L, 3));
    set_ref(L, b->ref_topic, 3);
    b->evflags |= EV_TOPIC;
    if (b->ev_shown) /* ev.topic reads the rule's now (ev_index) */
      ev_hide(L, b);
  } else if (strcmp(k, "key") == 0) {
    if (lua_isnil(L, 3)) {
      b->evflags |= EV_KEY | EV_KEY_NIL;
    } else if (lua_type(L, 3) == LUA_TSTRING) {
      set_ref(L, b->ref_key, 3);
      b->evflags = (b->evflags | EV_KEY) & ~(unsigned)EV_KEY_NIL;
    } else {
      return luaL_error(L, "ev.key must be a string or nil (got %s)",
                        luaL_typename(L, 3));
    }
  } else if (strcmp(k, "headers") == 0) {
    if (!lua_istable(L, 3))
      return luaL_error(L, "ev.headers must be a table of strings (got %s)",
                        luaL_typename(L, 3));
    set_ref(L, b->ref_headers, 3);
    b->evflags |= EV_HEADERS;
  } else if (strcmp(k, "payload") == 0) {
    /* the root's tree stays alive in the registry (proxy.c) */
    b->evflags |= EV_PAYLOAD_SET;
    if (b->ev_shown) /* ev.payload reads the rule's now (ev_index) */
      ev_hide(L, b);
    if (lua_isnil(L, 3)) {
      b->evflags |= EV_PAYLOAD | EV_PAYLOAD_NIL;
    } else {
      set_ref(L, b->ref_payload, 3);
      b->evflags = (b->evflags | EV_PAYLOAD) & ~(unsigned)EV_PAYLOAD_NIL;
    }
  } else if (strcmp(k, "id") == 0 || strcmp(k, "time") == 0 ||
             strcmp(k, "time_ns") == 0) {
    return luaL_error(L, "ev.%s is read-only", k);
  } else {
    return luaL_error(L, "event has no field '%s' (it has id, topic, key, "
                         "time, headers and payload)", msg_str(L, 2));
  }
  return 0;
}

static int ev_tostring(lua_State *L) {
  struct box *b = box_of(L);

  if (b->ev == NULL) {
    lua_pushliteral(L, "sluice event (outside on_event)");
    return 1;
  }
  lua_pushliteral(L, "sluice event ");
  lua_pushlstring(L, (const char *)b->ev->data + b->ev->id_off, b->ev->id_len);
  lua_concat(L, 2);
  return 1;
}

/* An event metatable (on top) whose __index is the value at idx. */
static void event_mt(lua_State *L, int idx) {
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, idx);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, ev_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, ev_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
}

/* The event: one userdata for the life of the state, in b->ref_event,
 * and its metatables (see struct ev_cache). */
void open_event(lua_State *L, struct box *b) {
  struct ev_cache *c = lua_newuserdata(L, sizeof(*c));
  int i, ud = lua_gettop(L), index;

  memset(c, 0, sizeof(*c));
  for (i = 0; i < TOPIC_CACHE_N; i++)
    c->topic[i].len = NIL32;
  b->evc = c;
  lua_pushcfunction(L, ev_field);
  lua_pushliteral(L, "topic"); /* upvalues keep the names interned */
  c->k_topic = lua_topointer(L, -1);
  lua_pushliteral(L, "payload");
  c->k_payload = lua_topointer(L, -1);
  for (i = 0; i < TOPIC_CACHE_N; i++) /* the cached topics */
    lua_pushnil(L);
  lua_pushcclosure(L, ev_index, TOPIC_UPVALUE - 1 + TOPIC_CACHE_N);
  index = lua_gettop(L);
  lua_pushliteral(L, "topic");
  c->ref_ktopic = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushliteral(L, "payload");
  c->ref_kpayload = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, 0, 1); /* the fields tables' metatable */
  lua_pushvalue(L, index);
  lua_setfield(L, -2, "__index");
  for (i = 0; i <= PAY_SLOT; i++) {
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, index + 1);
    lua_setmetatable(L, -2);
    if (i < PAY_SLOT) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_ktopic);
      lua_pushboolean(L, 0); /* makes the key's slot; later stores reuse it */
      lua_rawset(L, -3);
    }
    /* the payload's slot too, then nil: reads of it reach ev_index */
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_kpayload);
    lua_pushboolean(L, 0);
    lua_rawset(L, -3);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref_kpayload);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pushvalue(L, -1);
    c->ref_fields[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    event_mt(L, lua_gettop(L));
    c->ref_mt[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
  }
  event_mt(L, index);
  lua_pushvalue(L, -1);
  c->ref_base = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, ud);
  lua_settop(L, ud);
  b->ref_event = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- events leaving the rule --------------------------------------------- */

static int is_traceparent(lua_State *L, int idx) {
  size_t n;
  return lua_type(L, idx) == LUA_TSTRING && lua_objlen(L, idx) == 11 &&
         memcmp(lua_tolstring(L, idx, &n), "traceparent", 11) == 0;
}

/* Encode the headers table at idx into out as a msgpack map of str to
 * str, whatever side records or markers it carries (the wire accepts
 * nothing else), within max bytes. With tp (55 bytes), a traceparent
 * that is missing or not valid is replaced by tp. Raises naming what. */
void encode_headers(lua_State *L, int idx, struct sl_buf *out,
                    const char *what, size_t max, const char *tp) {
  size_t total = 0, at = out->len;
  uint64_t count = 0, steps = 0;
  uint32_t n = 0, i;
  int add_tp = tp != NULL, ks = 0, top;
  struct sl_luacodec_slot slot[SL_LUACODEC_FEW_KEYS];

  if (lua_getmetatable(L, idx)) { /* decoded with names Lua merged */
    lua_pushliteral(L, "lost");
    lua_rawget(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING)
      luaL_error(L, "%s: header '%s' came more than once in the event; a "
                    "copy would lose some", what, lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  /* the pairs, checked, then written sorted by name (the table's own order
   * follows string hashes LuaJIT seeds per state, so the same headers came
   * out in another order from the engine, the dry run and sluice.testing):
   * a few on the stack, more through a table of names; the map's count is
   * patched in at the end */
  top = lua_gettop(L);
  luaL_checkstack(L, 2 * SL_LUACODEC_FEW_KEYS + 8, "headers");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if ((++steps & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
      check_cpu(L);
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "%s: header names must be strings (got %s)", what,
                 luaL_typename(L, -2));
    if (lua_type(L, -1) != LUA_TSTRING) {
      const char *got = luaL_typename(L, -1); /* before msg_str pushes */
      luaL_error(L, "%s: header '%s' must be a string (got %s)", what,
                 msg_str(L, -2), got);
    }
    if (++n <= SL_LUACODEC_FEW_KEYS)
      lua_pushvalue(L, -2); /* the pair stays, the walk goes on */
    else
      lua_pop(L, 1);
  }
  if (n <= SL_LUACODEC_FEW_KEYS) {
    for (i = 0; i < n; i++)
      sl_luacodec_slot_of(L, top + 1 + 2 * (int)i, &slot[i]);
    sl_luacodec_sort_slots(slot, (int)n);
  } else {
    lua_settop(L, top);
    lua_createtable(L, (int)n, 0);
    ks = lua_gettop(L);
    n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_rawseti(L, ks, (int)++n);
    }
    sl_luacodec_sort_keys(L, ks, n, check_cpu);
  }
  if (sl_buf_append(out, "\xdf\0\0\0\0", 5) != 0)
    luaL_error(L, "%s: not enough memory", what);
  for (i = 0; i < n; i++) {
    const char *k, *v;
    size_t kl, vl;
    int at = lua_gettop(L), ki;
    if (ks) {
      lua_rawgeti(L, ks, (int)i + 1);
      lua_pushvalue(L, -1);
      lua_rawget(L, idx);
      ki = at + 1;
    } else {
      ki = slot[i].idx;
    }
    k = lua_tolstring(L, ki, &kl);
    v = lua_tolstring(L, ki + 1, &vl);
    if (tp && is_traceparent(L, ki)) {
      if (sl_event_traceparent_valid(v, vl)) {
        add_tp = 0; /* the rule's own trace context stands */
      } else {
        lua_settop(L, at);
        continue;
      }
    }
    total += kl + vl + 10;
    if (total > max)
      luaL_error(L, "%s: headers are larger than max_event_bytes (%d "
                    "bytes)", what, (int)max);
    if (sl_codec_put_str(out, k, kl) != 0 || sl_codec_put_str(out, v, vl) != 0)
      luaL_error(L, "%s: not enough memory", what);
    count++;
    lua_settop(L, at);
  }
  lua_settop(L, top);
  if (add_tp && (sl_codec_put_str(out, "traceparent", 11) != 0 ||
                 sl_codec_put_str(out, tp, 55) != 0))
    luaL_error(L, "%s: not enough memory", what);
  if (count + (uint64_t)add_tp > UINT32_MAX)
    luaL_error(L, "%s: not enough memory", what);
  sl_codec_patch_header(out, at, 1, (uint32_t)(count + (uint64_t)add_tp));
}

/* How much of a built event build_checked parses again. */
enum {
  CHECK_ALL,     /* every field: parts a rule handed over as they are */
  CHECK_PAYLOAD, /* the envelope is made of checked parts (finish: topic
                    and key strings, headers as they came or encoded as
                    str -> str): only a new payload is measured */
  CHECK_NONE     /* ... and the payload is the one that came in */
};

/* Build an event, then prove the wire takes it: at most max_event_bytes
 * and parseable as the native input parses (an event the receiver
 * refuses would be resent forever and wedge a sluice -> sluice link);
 * check says how much of it may be taken as proven already. Raises naming
 * what; returns the event otherwise. */
static struct sl_event *build_checked(lua_State *L, struct sl_rule *r,
                                      const char *what, struct sl_str id,
                                      struct sl_str topic, struct sl_str key,
                                      int has_time, int64_t time,
                                      const uint8_t *hp, size_t hl,
                                      const uint8_t *pp, size_t pl, int trace,
                                      int check) {
  struct sl_codec_error cerr;
  struct sl_event_view v;
  struct sl_event *ev;
  char msg[300];
  size_t used = 0;
  int rc = 0;

  if ((uint64_t)id.len + topic.len + key.len + hl + pl > r->max_event_bytes)
    luaL_error(L, "%s: event is larger than max_event_bytes (%d bytes)", what,
               (int)r->max_event_bytes);
  ev = sl_event_new(r->host.idgen ? r->host.idgen : &r->idgen, id, topic, key,
                    has_time, time, hp, hl, pp, pl, trace);
  if (ev == NULL)
    luaL_error(L, "%s: not enough memory", what);
  msg[0] = 0;
  if (ev->len > r->max_event_bytes)
    snprintf(msg, sizeof(msg), "%s: event of %u bytes is larger than "
             "max_event_bytes (%u bytes)", what, (unsigned)ev->len,
             (unsigned)r->max_event_bytes);
  else if (check == CHECK_ALL &&
           sl_codec_parse_event(ev->data, ev->len, &v, &cerr) != 0)
    snprintf(msg, sizeof(msg), "%s: the event is not valid on the wire: %s",
             what, cerr.msg);
  else if (check == CHECK_PAYLOAD && pp != NULL &&
           ((rc = sl_codec_skip_payload(pp, pl, pl, &used, &cerr)) != 0 ||
            used != pl))
    snprintf(msg, sizeof(msg), "%s: the event is not valid on the wire: "
             "payload: %s", what, rc == 0 ? "trailing bytes"
                                   : rc == SL_EPROTO ? cerr.msg : "truncated");
  if (msg[0]) {
    sl_event_unref(ev); /* before raising: nothing else frees it */
    luaL_error(L, "%s", msg);
  }
  return ev;
}

struct sl_event *wire_event(lua_State *L, struct sl_rule *r,
                            const char *what, struct sl_str id,
                            struct sl_str topic, struct sl_str key,
                            int has_time, int64_t time,
                            const uint8_t *hp, size_t hl,
                            const uint8_t *pp, size_t pl, int trace) {
  return build_checked(L, r, what, id, topic, key, has_time, time, hp, hl,
                       pp, pl, trace, CHECK_ALL);
}

/* A traceparent for an event emitted while ev is being handled: same
 * trace id and flags, a new span id (a child span). 0 when ev has no
 * valid one (sl_event_new then starts a trace). */
int child_traceparent(struct sl_rule *r, const struct sl_event *ev,
                      char out[55]) {
  static const char hex[] = "0123456789abcdef";
  const uint8_t *val;
  size_t vlen;
  struct sl_str s;
  uint64_t span;
  int i;

  if (ev == NULL || ev->headers_len == 0 ||
      sl_codec_map_find(ev->data + ev->headers_off, ev->headers_len,
                        "traceparent", 11, &val, &vlen) != 0 ||
      sl_codec_read_str(val, vlen, &s, NULL) != 0 ||
      !sl_event_traceparent_valid(s.p, s.len))
    return 0;
  memcpy(out, s.p, 55);
  span = mix64(r->seed2 ^ mix64(++r->span_seq + r->seed1)) | 1;
  for (i = 0; i < 16; i++)
    out[36 + i] = hex[(span >> (60 - 4 * i)) & 0xf];
  return 1;
}

/* Did on_event only read the event (ev.payload's proxy untouched, nothing
 * else set)? Then finish has nothing to do. Neither raises nor allocates. */
int read_only(struct box *b) {
  return b->evflags == EV_PAYLOAD && b->proot != NULL &&
         sl_proxy_clean(b->proot);
}

/* The payload after on_event: *pp and *pl become the new bytes when it
 * changed (then 1 is returned). A proxy is spliced (proxy.h) and counts as
 * changed only when the bytes differ; another value is compared with the
 * original and encoded when it differs. */
static int finish_payload(lua_State *L, struct box *b, const uint8_t **pp,
                          size_t *pl) {
  struct sl_rule *r = b->rule;
  int is_root;

  if (b->evflags & EV_PAYLOAD_NIL) {
    if (*pp && !(*pl == 1 && (*pp)[0] == 0xc0)) { /* a nil payload stays */
      *pp = NULL;
      *pl = 0;
      return 1;
    }
    return 0;
  }
  if (root_is_payload(b))
    sl_proxy_push_again(L, b);
  else
    push_ref(L, b->ref_payload);
  /* this call's root, known by its value (no metatable lookups); one of
   * an earlier call goes to sl_proxy_write, which refuses it */
  is_root = sl_proxy_is_root(L, -1);
  if (is_root && sl_proxy_clean(b->proot))
    return 0; /* read only: the bytes as they came */
  sl_buf_reset(&r->buf2);
  if (is_root || sl_proxy_is(L, -1)) {
    sl_proxy_write(L, -1, &r->buf2, 0, r->max_event_bytes,
                   "ev.payload (max_event_bytes)");
    if (*pp && *pl == r->buf2.len && memcmp(*pp, r->buf2.data, *pl) == 0)
      return 0;
  } else if (*pp && sl_luacodec_same(L, -1, *pp, *pl, check_cpu)) {
    return 0;
  } else {
    sl_luacodec_encode_max(L, -1, &r->buf2, check_cpu, r->max_event_bytes,
                           "ev.payload (max_event_bytes)");
  }
  *pp = r->buf2.data;
  *pl = r->buf2.len;
  return 1;
}

/* After on_event, before finish: when the payload changed by the root's
 * write log alone (top-level scalars set, nothing else touched: the rule
 * operators write first), build the changed event in one block with the
 * splice written in place: no Lua call, no buffer, no parse (the
 * envelope's parts are the event's own, the payload's runs came checked
 * and the rest is encoded here). 1: done, b->changed is the event or NULL
 * when the bytes came out as they were; 0: finish must run (also for any
 * error, which it then reports as it always did). */
int finish_log(struct box *b) {
  struct sl_rule *r = b->rule;
  struct sl_event *ev = b->ev, *nev;
  long n;

  if (b->evflags != EV_PAYLOAD || (n = sl_proxy_log_bound(b)) < 0)
    return 0;
  /* the bound is the allocation, made and filled outside the rule's
   * memory_mb and CPU budget: one past the limit (a big string written
   * under 8 keys: 8 x memory_mb) goes the general path, which refuses it
   * within the budgets; the bound exceeds the size by a few bytes a key */
  if ((uint64_t)ev->len - ev->payload_len + (uint64_t)n > r->max_event_bytes)
    return 0;
  nev = sl_event_with_payload(ev, (size_t)n, sl_proxy_log_fill, b);
  if (nev == NULL || sl_proxy_log_failed(b) || nev->len > r->max_event_bytes) {
    sl_event_unref(nev); /* the general path decides and reports */
    return 0;
  }
  b->changed = NULL;
  if (!sl_proxy_log_changed(b) ||
      (nev->payload_len == ev->payload_len &&
       memcmp(nev->data + nev->payload_off, ev->data + ev->payload_off,
              ev->payload_len) == 0)) {
    sl_event_unref(nev); /* the same values (a NaN over the same NaN) */
    return 1;
  }
  b->changed = nev;
  return 1;
}

/* After on_event: build the changed event, if anything changed. Run with
 * lua_cpcall; ud is the box. */
int finish(lua_State *L) {
  struct box *b = lua_touserdata(L, 1);
  struct sl_rule *r = b->rule;
  struct sl_event *ev = b->ev, *nev;
  struct sl_str id = sl_event_id(ev), topic = sl_event_topic(ev),
                key = sl_event_key(ev), s;
  const uint8_t *hp = ev->headers_len ? ev->data + ev->headers_off : NULL;
  const uint8_t *pp = ev->payload_len ? ev->data + ev->payload_off : NULL;
  size_t hl = ev->headers_len, pl = ev->payload_len, n;
  int changed = 0;

  /* comparing and encoding is work done for on_event: same budget */
  b->deadline = r->event_deadline;
  b->cpu_ref = r->event_cpu_ref;
  lua_settop(L, 0);
  if (b->evflags & EV_TOPIC) {
    push_ref(L, b->ref_topic);
    s.p = lua_tolstring(L, -1, &n);
    s.len = (uint32_t)n;
    if (n > r->max_event_bytes)
      return luaL_error(L, "ev.topic is larger than max_event_bytes (%d "
                           "bytes)", (int)r->max_event_bytes);
    if (s.len != topic.len || memcmp(s.p, topic.p, n) != 0) {
      topic = s;
      changed = 1;
    }
  }
  if (b->evflags & EV_KEY) {
    if (b->evflags & EV_KEY_NIL) {
      if (key.p) {
        key.p = NULL;
        key.len = 0;
        changed = 1;
      }
    } else {
      push_ref(L, b->ref_key);
      s.p = lua_tolstring(L, -1, &n);
      s.len = (uint32_t)n;
      if (n > r->max_event_bytes)
        return luaL_error(L, "ev.key is larger than max_event_bytes (%d "
                             "bytes)", (int)r->max_event_bytes);
      if (!key.p || s.len != key.len || memcmp(s.p, key.p, n) != 0) {
        key = s;
        changed = 1;
      }
    }
  }
  if (b->evflags & EV_HEADERS) {
    int t, empty, same;
    push_ref(L, b->ref_headers);
    t = lua_gettop(L);
    lua_pushnil(L);
    empty = !lua_next(L, t);
    lua_settop(L, t);
    same = hp ? sl_luacodec_same_strmap(L, t, hp, hl, check_cpu) : empty;
    if (same < 0)
      same = sl_luacodec_same(L, t, hp, hl, check_cpu);
    if (!same) {
      sl_buf_reset(&r->buf1);
      if (empty) {
        hp = NULL; /* no headers left */
        hl = 0;
      } else {
        encode_headers(L, t, &r->buf1, "ev.headers", r->max_event_bytes,
                       NULL);
        hp = r->buf1.data;
        hl = r->buf1.len;
      }
      changed = 1;
    }
    lua_settop(L, t);
  }
  if (b->evflags & EV_PAYLOAD)
    changed |= finish_payload(L, b, &pp, &pl);
  if (!changed)
    return 0;
  nev = build_checked(L, r, "the changed event", id, topic, key, 1, ev->time,
                      hp, hl, pp, pl, 0,
                      pp == NULL || pp == ev->data + ev->payload_off
                          ? CHECK_NONE : CHECK_PAYLOAD);
  nev->ingest_ns = ev->ingest_ns;
  nev->schema_version = ev->schema_version; /* the next rule reads it too */
  sl_event_share_track(ev, nev);
  b->changed = nev;
  sl_buf_shrink(&r->buf1);
  sl_buf_shrink(&r->buf2);
  return 0;
}
