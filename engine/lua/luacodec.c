/* luacodec.c - msgpack and JSON <-> Lua values with exact types; the
 * mapping and its side records are described in luacodec.h. Owns no state:
 * the marker metatables live in each state's registry. */
#include "luacodec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "codec.h"
#include "utf8.h"
#include "json.h"
#include "proxy.h"

/* Registry keys: the addresses are unique, the values unused. */
static const char array_key, map_key, bin_key, float_key, ext_key, check_key;

#define TWO53 9007199254740992.0
#define TWO63 9223372036854775808.0
#define TWO64 18446744073709551616.0

/* ---- shared helpers ---------------------------------------------------- */

enum tkind { T_SEQ, T_ARRAY, T_MAP, T_BIN, T_FLOAT, T_EXT };

struct hint {
  char kind; /* 0, 'f', 's', 'b', 'n', 'i', 'u' */
  uint64_t bits;
};

/* The CPU check of one call: check() runs every SL_LUACODEC_CHECK_STEPS
 * steps, where a step is a value, a table entry walked or a side-record
 * entry walked, so no loop in here runs unchecked. */
struct budget {
  sl_luacodec_check check;
  unsigned steps;
};

static void tick(lua_State *L, struct budget *b) {
  if (b && b->check && (++b->steps & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
    b->check(L);
}

/* Does the plain encoder write v as an int? */
static int would_be_int(double v) {
  return v == floor(v) && v >= -TWO63 && v < TWO64 && !(v == 0 && signbit(v));
}

static void push_mt(lua_State *L, const char *key, const char *name) {
  lua_pushlightuserdata(L, (void *)key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_isnil(L, -1))
    return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__sluice");
  lua_pushlightuserdata(L, (void *)key);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

/* The shared marker metatables, fetched from the registry once per call
 * into three stack slots reserved at its start. */
enum { SH_ARRAY, SH_MAP, SH_EXT };

struct shared {
  lua_State *L;
  int base;
  unsigned have;
};

static void shared_open(lua_State *L, struct shared *sh) {
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushnil(L);
  sh->L = L;
  sh->base = lua_gettop(L) - 2;
  sh->have = 0;
}

/* The absolute index of the slot that holds shared metatable `which`. */
static int shared_get(struct shared *sh, int which) {
  static const char *const names[] = {"array", "map", "ext"};
  static const char *const keys[] = {&array_key, &map_key, &ext_key};
  if (!(sh->have & (1u << which))) {
    push_mt(sh->L, keys[which], names[which]);
    lua_replace(sh->L, sh->base + which);
    sh->have |= 1u << which;
  }
  return sh->base + which;
}

/* The marker of the table at idx and, in *mt, the absolute index of its
 * metatable (0 when it has none; the metatable stays pushed otherwise).
 * With sh, the shared array and map metatables are recognised at once and
 * *mt is returned negated: a shared metatable holds no side records. */
static enum tkind table_kind_sh(lua_State *L, int idx, int *mt,
                                struct shared *sh) {
  const char *s;
  enum tkind k = T_SEQ;

  *mt = 0;
  if (!lua_getmetatable(L, idx))
    return T_SEQ;
  *mt = lua_gettop(L);
  if (sh) {
    if (lua_rawequal(L, *mt, shared_get(sh, SH_MAP))) {
      *mt = -*mt;
      return T_MAP;
    }
    if (lua_rawequal(L, *mt, shared_get(sh, SH_ARRAY))) {
      *mt = -*mt;
      return T_ARRAY;
    }
  }
  lua_pushliteral(L, "__sluice");
  lua_rawget(L, *mt);
  s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
  if (strcmp(s, "array") == 0)
    k = T_ARRAY;
  else if (strcmp(s, "map") == 0)
    k = T_MAP;
  else if (strcmp(s, "bin") == 0)
    k = T_BIN;
  else if (strcmp(s, "float") == 0)
    k = T_FLOAT;
  else if (strcmp(s, "ext") == 0)
    k = T_EXT;
  lua_pop(L, 1);
  return k;
}

static enum tkind table_kind(lua_State *L, int idx, int *mt) {
  return table_kind_sh(L, idx, mt, NULL);
}

/* Push t[k] without metamethods (t is an absolute index): a rule may put
 * a metatable on anything it can reach, and C must not call into it. */
static void rawfield(lua_State *L, int t, const char *k) {
  lua_pushstring(L, k);
  lua_rawget(L, t);
}

/* Push mt[name] (a table or nil) for mt at absolute index mt (0: nil). */
static void push_field(lua_State *L, int mt, const char *name) {
  if (mt <= 0) { /* none, or a shared marker metatable */
    lua_pushnil(L);
    return;
  }
  lua_pushstring(L, name);
  lua_rawget(L, mt);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

/* The hint for the value at vidx stored under the key at kidx, given the
 * hints and orig tables at hidx/oidx (absolute; nil when absent). A value
 * hint counts only while the value is still the one decoded. */
static struct hint hint_for(lua_State *L, int hidx, int oidx, int kidx,
                            int vidx) {
  struct hint h = {0, 0};
  const char *s;
  size_t n;

  if (lua_isnil(L, hidx))
    return h;
  lua_pushvalue(L, kidx);
  lua_rawget(L, hidx);
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    return h;
  }
  s = lua_tolstring(L, -1, &n);
  if (s[0] == 'n') {
    if (lua_isnil(L, vidx))
      h.kind = 'n';
    lua_pop(L, 1);
    return h;
  }
  if (!lua_isnil(L, oidx)) {
    lua_pushvalue(L, kidx);
    lua_rawget(L, oidx);
    if (lua_rawequal(L, -1, vidx) || /* NaN is not rawequal to itself */
        (lua_type(L, -1) == LUA_TNUMBER && lua_type(L, vidx) == LUA_TNUMBER &&
         isnan(lua_tonumber(L, -1)) && isnan(lua_tonumber(L, vidx)))) {
      h.kind = s[0];
      if ((s[0] == 'i' || s[0] == 'u') && n == 9) {
        int i;
        for (i = 1; i < 9; i++)
          h.bits = (h.bits << 8) | (uint8_t)s[i];
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return h;
}

/* The kind of a key at kidx from the khints table at kh (nil: none). */
static struct hint khint_for(lua_State *L, int kh, int kidx) {
  struct hint h = {0, 0};
  const char *s;
  size_t n;

  if (lua_isnil(L, kh))
    return h;
  lua_pushvalue(L, kidx);
  lua_rawget(L, kh);
  if (lua_type(L, -1) == LUA_TSTRING) {
    s = lua_tolstring(L, -1, &n);
    h.kind = s[0];
    if ((s[0] == 'i' || s[0] == 'u') && n == 9) {
      int i;
      for (i = 1; i < 9; i++)
        h.bits = (h.bits << 8) | (uint8_t)s[i];
    }
  }
  lua_pop(L, 1);
  return h;
}

static void push_hint(lua_State *L, const struct hint *h) {
  char s[9];
  int i;

  s[0] = h->kind;
  if (h->kind == 'i' || h->kind == 'u') {
    for (i = 0; i < 8; i++)
      s[1 + i] = (char)(h->bits >> (56 - 8 * i));
    lua_pushlstring(L, s, 9);
  } else {
    lua_pushlstring(L, s, 1);
  }
}

/* mt[field][key] = value, creating mt[field]. key and value are absolute
 * indices; value 0 stores the hint string of h instead. */
static void record(lua_State *L, int mt, const char *field, int key,
                   int value, const struct hint *h) {
  lua_getfield(L, mt, field);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, mt, field);
  }
  lua_pushvalue(L, key);
  if (value)
    lua_pushvalue(L, value);
  else
    push_hint(L, h);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Give the table at absolute index `table` a metatable of its own marked
 * `kind`, inserted on the stack right above the table; returns its index.
 * The caller sets it with lua_setmetatable once the values above are
 * gone. */
static int own_mt(lua_State *L, int table, const char *kind) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "__sluice");
  lua_insert(L, table + 1);
  return table + 1;
}

/* ---- reading msgpack ----------------------------------------------------- */

/* ---- msgpack -> Lua ---------------------------------------------------- */

struct dec {
  lua_State *L;
  const uint8_t *p, *end, *start;
  sl_luacodec_check check;
  unsigned steps;
  struct shared sh;
};

static void dec_fail(struct dec *d, const char *what) {
  luaL_error(d->L, "msgpack: %s at byte %d", what, (int)(d->p - d->start));
}

static void push_number(lua_State *L, const struct sl_codec_item *it, struct hint *h) {
  if (it->t == SL_MP_UINT) {
    lua_pushnumber(L, (lua_Number)it->u);
    if (it->u > (uint64_t)TWO53) {
      h->kind = 'u';
      h->bits = it->u;
    }
  } else {
    lua_pushnumber(L, (lua_Number)it->i);
    if (it->i > (int64_t)TWO53 || it->i < -(int64_t)TWO53) {
      h->kind = 'i';
      h->bits = (uint64_t)it->i;
    }
  }
}

/* Is the key at k already in the map t being built (a value, or a nil
 * value kept by a hint)? mt is its own metatable's index or 0. */
static int seen_key(lua_State *L, int t, int mt, int k) {
  int seen;

  lua_pushvalue(L, k);
  lua_rawget(L, t);
  seen = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (seen || !mt)
    return seen;
  push_field(L, mt, "hints");
  if (lua_istable(L, -1)) {
    lua_pushvalue(L, k);
    lua_rawget(L, -2);
    seen = lua_type(L, -1) == LUA_TSTRING && lua_tostring(L, -1)[0] == 'n';
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return seen;
}

/* Record a map pair left out of the Lua table: mt.skip[offset of its key]
 * = true, mt.nskip counts them, mt.lost is the first such key. */
static void note_dup(lua_State *L, int mt, int k, double at) {
  double n;

  push_field(L, mt, "skip");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushliteral(L, "skip");
    lua_pushvalue(L, -2);
    lua_rawset(L, mt);
  }
  lua_pushnumber(L, at);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_pushliteral(L, "nskip");
  lua_rawget(L, mt);
  n = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
  lua_pop(L, 1);
  lua_pushliteral(L, "nskip");
  lua_pushnumber(L, n + 1);
  lua_rawset(L, mt);
  if (n == 0) {
    lua_pushliteral(L, "lost");
    lua_pushvalue(L, k);
    lua_rawset(L, mt);
  }
}

static void dec_value(struct dec *d, int depth, struct hint *h);

/* An array: a table with the array marker, side records for its
 * elements' kinds (and nils) in a metatable of its own when needed. */
static void dec_array(struct dec *d, const struct sl_codec_item *it, int depth) {
  lua_State *L = d->L;
  int t, mt = 0, hasnil = 0;
  struct hint eh;
  uint32_t i;

  if (depth >= SL_CODEC_MAX_DEPTH)
    dec_fail(d, "nesting too deep");
  luaL_checkstack(L, 8, "msgpack nesting");
  lua_createtable(L, (int)it->n, 0);
  t = lua_gettop(L);
  for (i = 1; i <= it->n; i++) {
    dec_value(d, depth + 1, &eh);
    if (lua_isnil(L, -1))
      hasnil = 1;
    if (eh.kind) {
      if (!mt)
        mt = own_mt(L, t, "array");
      lua_pushinteger(L, (lua_Integer)i);
      record(L, mt, "hints", lua_gettop(L), 0, &eh);
      record(L, mt, "orig", lua_gettop(L), lua_gettop(L) - 1, NULL);
      lua_pop(L, 1);
    }
    lua_rawseti(L, t, (int)i);
  }
  if (hasnil && !mt)
    mt = own_mt(L, t, "array");
  if (mt) {
    lua_pushinteger(L, (lua_Integer)it->n);
    lua_setfield(L, mt, "n");
    lua_setmetatable(L, t); /* pops mt, which sat right above t */
  } else {
    lua_pushvalue(L, shared_get(&d->sh, SH_ARRAY));
    lua_setmetatable(L, t);
  }
}

/* A map: a table with the map marker; side records for kinds, nil
 * values and keys Lua cannot tell apart (note_dup) when needed. */
static void dec_map(struct dec *d, const struct sl_codec_item *it, int depth) {
  lua_State *L = d->L;
  int t, mt = 0, k, v;
  struct hint kh, vh;
  uint32_t i;

  if (depth >= SL_CODEC_MAX_DEPTH)
    dec_fail(d, "nesting too deep");
  luaL_checkstack(L, 10, "msgpack nesting");
  lua_createtable(L, 0, (int)it->n);
  t = lua_gettop(L);
  for (i = 0; i < it->n; i++) {
    const uint8_t *kat = d->p;
    dec_value(d, depth + 1, &kh);
    if (lua_isnil(L, -1) ||
        (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1)))) {
      d->p = kat;
      dec_fail(d, "map key that Lua cannot hold (nil or NaN)");
    }
    if (lua_istable(L, -1)) {
      d->p = kat;
      dec_fail(d, "map key that is a container");
    }
    dec_value(d, depth + 1, &vh);
    if (seen_key(L, t, mt, lua_gettop(L) - 1)) {
      /* a key Lua cannot tell from an earlier one (1 and 1.0, str and
       * bin, ints past 2^53, a repeat): the first stays, this pair is
       * listed so comparing still matches and encoding refuses */
      if (!mt)
        mt = own_mt(L, t, "map");
      note_dup(L, mt, lua_gettop(L) - 1, (double)(kat - d->start));
      lua_pop(L, 2);
      continue;
    }
    if (kh.kind || vh.kind || lua_isnil(L, -1)) {
      if (!mt)
        mt = own_mt(L, t, "map");
      k = lua_gettop(L) - 1;
      v = k + 1;
      if (kh.kind)
        record(L, mt, "khints", k, 0, &kh);
      if (lua_isnil(L, v)) {
        vh.kind = 'n';
        record(L, mt, "hints", k, 0, &vh);
      } else if (vh.kind) {
        record(L, mt, "hints", k, 0, &vh);
        record(L, mt, "orig", k, v, NULL);
      }
    }
    lua_rawset(L, t);
  }
  if (mt) {
    lua_setmetatable(L, t);
  } else {
    lua_pushvalue(L, shared_get(&d->sh, SH_MAP));
    lua_setmetatable(L, t);
  }
}

static void dec_value(struct dec *d, int depth, struct hint *h) {
  lua_State *L = d->L;
  struct sl_codec_item it;
  const uint8_t *at = d->p;

  h->kind = 0;
  if (d->check && (++d->steps & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
    d->check(L);
  if (sl_codec_read_item(&d->p, d->end, &it) != 0) {
    d->p = at;
    dec_fail(d, "truncated or invalid value");
  }
  switch (it.t) {
  case SL_MP_NIL: lua_pushnil(L); break;
  case SL_MP_BOOL: lua_pushboolean(L, it.b); break;
  case SL_MP_INT: case SL_MP_UINT: push_number(L, &it, h); break;
  case SL_MP_F32:
    lua_pushnumber(L, (lua_Number)it.f);
    h->kind = 's';
    break;
  case SL_MP_F64:
    lua_pushnumber(L, it.d);
    if (would_be_int(it.d))
      h->kind = 'f';
    break;
  case SL_MP_STR: lua_pushlstring(L, (const char *)it.s, it.n); break;
  case SL_MP_BIN:
    lua_pushlstring(L, (const char *)it.s, it.n);
    h->kind = 'b';
    break;
  case SL_MP_EXT:
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, it.ext);
    lua_setfield(L, -2, "type");
    lua_pushlstring(L, (const char *)it.s, it.n);
    lua_setfield(L, -2, "data");
    lua_pushvalue(L, shared_get(&d->sh, SH_EXT));
    lua_setmetatable(L, -2);
    break;
  case SL_MP_ARR: dec_array(d, &it, depth); break;
  case SL_MP_MAP: dec_map(d, &it, depth); break;
  default:
    d->p = at;
    dec_fail(d, "invalid byte");
  }
}

void sl_luacodec_push(lua_State *L, const uint8_t *p, size_t len,
                      sl_luacodec_check check) {
  struct dec d;
  struct hint h;
  int base;

  luaL_checkstack(L, 12, "msgpack");
  shared_open(L, &d.sh);
  base = d.sh.base + 2;
  d.L = L;
  d.p = d.start = p;
  d.end = p + len;
  d.check = check;
  d.steps = 0;
  dec_value(&d, 0, &h);
  if (d.p != d.end)
    dec_fail(&d, "trailing bytes");
  lua_replace(L, base - 2);
  lua_pop(L, 2);
}

/* ---- Lua -> msgpack ---------------------------------------------------- */

struct enc {
  lua_State *L;
  struct sl_buf *out;
  struct budget bud;
  size_t start, max;  /* out->len at the start; the most it may grow */
  size_t next_check;  /* out->len at which to check the CPU again */
  const char *what;   /* names the value in the size error */
  size_t jmax, jsize; /* JSON mode: bound and running upper estimate */
  int json;
  struct shared sh;
};

#define ENC_CHECK_BYTES 65536 /* copying big strings is work too */

/* Make sure n more bytes stay within the size bound before writing them,
 * and check the CPU budget every ENC_CHECK_BYTES written: one string
 * shared by many slots costs a copy per slot. */
static void room(struct enc *e, size_t n) {
  size_t used = e->out->len - e->start;

  if (n > e->max || used > e->max - n)
    luaL_error(e->L, "%s is larger than %d bytes", e->what,
               e->max > INT32_MAX ? INT32_MAX : (int)e->max);
  if (e->bud.check && e->out->len + n >= e->next_check) {
    e->bud.check(e->L);
    e->next_check = e->out->len + n + ENC_CHECK_BYTES;
  }
}

/* JSON mode: count add more bytes of the text sl_codec_to_json will make
 * (an upper bound), raising past jmax before any of it is rendered. */
static void jcost(struct enc *e, size_t add) {
  if (!e->json)
    return;
  if (add > e->jmax || e->jsize > e->jmax - add)
    luaL_error(e->L, "%s is larger than %d bytes as JSON", e->what,
               e->jmax > INT32_MAX ? INT32_MAX : (int)e->jmax);
  e->jsize += add;
}

/* The longest JSON string sl_codec_json_str makes of s[0..n): control
 * bytes become \u00XX, '"' and '\\' two bytes, each byte of an ill-formed
 * UTF-8 sequence at most one \ufffd (6 bytes), the rest as it is. */
static size_t json_str_len(const uint8_t *s, size_t n) {
  size_t i = 0, len = n + 2, seq;

  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) {
      if (c < 0x20)
        len += 5;
      else if (c == '"' || c == '\\')
        len += 1;
      i++;
    } else if ((seq = sl_utf8_seq(s + i, n - i, NULL)) != 0) {
      i += seq;
    } else {
      len += 5; /* this byte as (part of) one U+FFFD */
      i++;
    }
  }
  return len;
}

static void put(struct enc *e, int rc) {
  if (rc != 0)
    luaL_error(e->L, rc == SL_E2BIG ? "value too large for msgpack"
                                    : "not enough memory");
}

static void put_number(struct enc *e, double v, const struct hint *h) {
  room(e, 9);
  if (h->kind == 'f') {
    put(e, sl_codec_put_double(e->out, v));
  } else if (h->kind == 's') {
    put(e, sl_codec_put_float(e->out, (float)v));
  } else if (h->kind == 'i') {
    put(e, sl_codec_put_int(e->out, (int64_t)h->bits));
  } else if (h->kind == 'u') {
    put(e, sl_codec_put_uint(e->out, h->bits));
  } else if (would_be_int(v)) {
    if (v < 0)
      put(e, sl_codec_put_int(e->out, (int64_t)v));
    else
      put(e, sl_codec_put_uint(e->out, (uint64_t)v));
  } else {
    put(e, sl_codec_put_double(e->out, v));
  }
}

static void put_ext(struct enc *e, int type, const char *s, size_t n) {
  if (n > UINT32_MAX)
    luaL_error(e->L, "value too large for msgpack");
  room(e, n + 6);
  jcost(e, n / 3 * 4 + 32); /* {"$ext":[t,"<base64>"]} */
  put(e, sl_codec_put_ext(e->out, (int8_t)type, s, n));
}

/* Count the entries of the table at t; *seq tells whether its keys are
 * exactly 1..n. */
static uint32_t count_entries(lua_State *L, int t, int *seq,
                              struct budget *bud) {
  uint64_t n = 0;
  double max = 0;
  int ints = 1;

  lua_pushnil(L);
  while (lua_next(L, t)) {
    tick(L, bud);
    n++;
    if (ints) {
      if (lua_type(L, -2) == LUA_TNUMBER) {
        double k = lua_tonumber(L, -2);
        if (k >= 1 && k == floor(k)) {
          if (k > max)
            max = k;
        } else {
          ints = 0;
        }
      } else {
        ints = 0;
      }
    }
    lua_pop(L, 1);
  }
  if (n > UINT32_MAX)
    luaL_error(L, "table too large for msgpack");
  *seq = n > 0 && ints && max == (double)n;
  return (uint32_t)n;
}

/* Keys with a nil hint whose value is still nil: encoded as nil values.
 * The hints table is the rule's to grow, so walking it is budgeted. */
static uint32_t count_nil_hints(lua_State *L, int t, int hints,
                                struct budget *bud) {
  uint32_t n = 0;

  if (lua_isnil(L, hints))
    return 0;
  lua_pushnil(L);
  while (lua_next(L, hints)) {
    tick(L, bud);
    if (lua_type(L, -1) == LUA_TSTRING && lua_tostring(L, -1)[0] == 'n') {
      lua_pushvalue(L, -2);
      lua_rawget(L, t);
      if (lua_isnil(L, -1))
        n++;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  return n;
}

/* Describe the value at idx for a message: a string (cut, quoted) or a
 * number. */
static const char *key_text(lua_State *L, int idx, char *buf, size_t n) {
  size_t len, i, o = 0;
  const char *s;

  if (lua_type(L, idx) == LUA_TNUMBER) {
    snprintf(buf, n, "%.17g", lua_tonumber(L, idx));
    return buf;
  }
  if (lua_type(L, idx) != LUA_TSTRING) {
    snprintf(buf, n, "%s", lua_typename(L, lua_type(L, idx)));
    return buf;
  }
  s = lua_tolstring(L, idx, &len);
  buf[o++] = '"';
  for (i = 0; i < len && o + 6 < n; i++)
    buf[o++] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
  if (i < len) {
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o++] = '"';
  buf[o] = 0;
  return buf;
}

static void enc_value(struct enc *e, int idx, int depth, const struct hint *h);

static void enc_key(struct enc *e, int idx, const struct hint *h) {
  lua_State *L = e->L;
  int t = lua_type(L, idx);

  if (t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN)
    enc_value(e, idx, 0, h);
  else
    luaL_error(L, "cannot encode a %s as a map key", lua_typename(L, t));
}

/* The boxes sluice.bin, sluice.float and sluice.ext make (kind k), table
 * at t; pops the metatable (or its nil stand-in) on top of the stack. */
static void enc_box(struct enc *e, int t, enum tkind k) {
  lua_State *L = e->L;
  const char *s;
  size_t n;

  if (k == T_BIN || k == T_FLOAT) {
    lua_rawgeti(L, t, 1);
    if (k == T_BIN && lua_type(L, -1) == LUA_TSTRING) {
      s = lua_tolstring(L, -1, &n);
      room(e, n + 5);
      jcost(e, n / 3 * 4 + 32); /* {"$bin":"<base64>"} */
      put(e, sl_codec_put_bin(e->out, s, n));
    } else if (k == T_FLOAT && lua_type(L, -1) == LUA_TNUMBER) {
      room(e, 9);
      put(e, sl_codec_put_double(e->out, lua_tonumber(L, -1)));
    } else {
      luaL_error(L, "cannot encode a broken %s box",
                 k == T_BIN ? "binary" : "float");
    }
    lua_pop(L, 2);
    return;
  }
  rawfield(L, t, "type"); /* T_EXT */
  rawfield(L, t, "data");
  if (lua_type(L, -2) != LUA_TNUMBER || lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "cannot encode an ext without a numeric type and string "
                  "data");
  s = lua_tolstring(L, -1, &n);
  put_ext(e, (int)lua_tointeger(L, -2), s, n);
  lua_pop(L, 3);
}

int sl_luacodec_key_less(lua_State *L, int a, int b) {
  static const int rank[] = {[LUA_TBOOLEAN] = 1, [LUA_TNUMBER] = 2,
                             [LUA_TSTRING] = 3};
  int ta = lua_type(L, a), tb = lua_type(L, b);
  int ra = ta >= 0 && ta <= LUA_TSTRING ? rank[ta] : 4;
  int rb = tb >= 0 && tb <= LUA_TSTRING ? rank[tb] : 4;
  const char *sa, *sb;
  size_t la, lb;
  int c;

  if (ra != rb)
    return ra < rb;
  switch (ta) {
  case LUA_TBOOLEAN:
    return !lua_toboolean(L, a) && lua_toboolean(L, b);
  case LUA_TNUMBER:
    return lua_tonumber(L, a) < lua_tonumber(L, b);
  case LUA_TSTRING:
    sa = lua_tolstring(L, a, &la);
    sb = lua_tolstring(L, b, &lb);
    c = memcmp(sa, sb, la < lb ? la : lb);
    return c < 0 || (c == 0 && la < lb);
  default:
    return 0;
  }
}

static int ks_less(lua_State *L, int ks, uint32_t i, uint32_t j) {
  int r;

  lua_rawgeti(L, ks, (int)i);
  lua_rawgeti(L, ks, (int)j);
  r = sl_luacodec_key_less(L, -2, -1);
  lua_pop(L, 2);
  return r;
}

static void ks_swap(lua_State *L, int ks, uint32_t i, uint32_t j) {
  lua_rawgeti(L, ks, (int)i);
  lua_rawgeti(L, ks, (int)j);
  lua_rawseti(L, ks, (int)i);
  lua_rawseti(L, ks, (int)j);
}

static void ks_sift(lua_State *L, struct budget *b, int ks, uint32_t root,
                    uint32_t n) {
  for (;;) {
    uint32_t c = 2 * root;
    tick(L, b);
    if (c > n)
      return;
    if (c < n && ks_less(L, ks, c, c + 1))
      c++;
    if (!ks_less(L, ks, root, c))
      return;
    ks_swap(L, ks, root, c);
    root = c;
  }
}

/* A heapsort: no allocation outside the state, budgeted. */
static void ks_sort(lua_State *L, struct budget *b, int ks, uint32_t n) {
  uint32_t i;

  for (i = n / 2; i >= 1; i--)
    ks_sift(L, b, ks, i, n);
  for (i = n; i > 1; i--) {
    ks_swap(L, ks, 1, i);
    ks_sift(L, b, ks, 1, i - 1);
  }
}

void sl_luacodec_sort_keys(lua_State *L, int ks, uint32_t n,
                           sl_luacodec_check check) {
  struct budget b = {check, 0};

  ks_sort(L, &b, ks, n);
}

void sl_luacodec_slot_of(lua_State *L, int idx, struct sl_luacodec_slot *k) {
  k->idx = idx;
  k->type = lua_type(L, idx);
  k->num = 0;
  k->s = NULL;
  k->len = 0;
  if (k->type == LUA_TNUMBER)
    k->num = lua_tonumber(L, idx);
  else if (k->type == LUA_TBOOLEAN)
    k->num = lua_toboolean(L, idx);
  else if (k->type == LUA_TSTRING)
    k->s = lua_tolstring(L, idx, &k->len);
}

/* key_less on slots read already: no Lua calls. */
static int slot_less(const struct sl_luacodec_slot *a,
                     const struct sl_luacodec_slot *b) {
  static const int rank[] = {[LUA_TBOOLEAN] = 1, [LUA_TNUMBER] = 2,
                             [LUA_TSTRING] = 3};
  int ra = a->type >= 0 && a->type <= LUA_TSTRING ? rank[a->type] : 4;
  int rb = b->type >= 0 && b->type <= LUA_TSTRING ? rank[b->type] : 4;
  int c;

  if (ra != rb)
    return ra < rb;
  if (a->type != LUA_TSTRING)
    return a->num < b->num;
  c = memcmp(a->s, b->s, a->len < b->len ? a->len : b->len);
  return c < 0 || (c == 0 && a->len < b->len);
}

void sl_luacodec_sort_slots(struct sl_luacodec_slot *k, int n) {
  int i, j;

  for (i = 1; i < n; i++) {
    struct sl_luacodec_slot x = k[i];
    for (j = i; j > 0 && slot_less(&x, &k[j - 1]); j--)
      k[j] = k[j - 1];
    k[j] = x;
  }
}

/* The pairs a map table encodes, c in all: its own and the nil-hinted
 * keys whose value is nil (with nil), sorted by sl_luacodec_key_less.
 * lua_next's order follows the string hashes, which LuaJIT seeds anew in
 * every state: walked that way, the same table would encode to different
 * bytes in the engine, a rebuilt state, the dry run and sluice.testing.
 * Up to SL_LUACODEC_FEW_KEYS pairs are pushed on the stack (key at
 * slot[i].idx, its value above); more keys go in a sequence at *table
 * (0 otherwise), their values left for rawget. */
static void sorted_pairs(struct enc *e, int t, int hints, uint32_t c,
                         struct sl_luacodec_slot *slot, int *table) {
  lua_State *L = e->L;
  uint32_t n = 0, i;

  *table = 0;
  if (c > SL_LUACODEC_FEW_KEYS) {
    lua_createtable(L, (int)c, 0);
    *table = lua_gettop(L);
  } else {
    luaL_checkstack(L, 2 * (int)c + 8, "msgpack map");
  }
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (*table) {
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_rawseti(L, *table, (int)++n);
    } else if (n < c) { /* the pair stays, the walk goes on from a copy */
      n++;
      lua_pushvalue(L, -2);
    } else {
      lua_pop(L, 1);
    }
  }
  if (!lua_isnil(L, hints)) {
    lua_pushnil(L);
    while (lua_next(L, hints)) {
      tick(L, &e->bud);
      if (lua_type(L, -1) == LUA_TSTRING && lua_tostring(L, -1)[0] == 'n') {
        lua_pushvalue(L, -2);
        lua_rawget(L, t);
        if (lua_isnil(L, -1) && n < c) {
          lua_replace(L, -2); /* the key and nil */
          n++;
          if (*table) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_rawseti(L, *table, (int)n);
          } else {
            lua_pushvalue(L, -2);
          }
          continue;
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  if (*table) {
    ks_sort(L, &e->bud, *table, n);
    return;
  }
  for (i = 0; i < n; i++)
    sl_luacodec_slot_of(L, lua_gettop(L) - 2 * (int)(n - i) + 1, &slot[i]);
  sl_luacodec_sort_slots(slot, (int)n);
}

static void enc_table(struct enc *e, int t, int depth) {
  lua_State *L = e->L;
  int mt, seq = 0, hints, orig, kh;
  enum tkind k;

  if (depth >= SL_CODEC_MAX_DEPTH)
    luaL_error(L, "cannot encode: nesting deeper than %d (a cycle?)",
               SL_CODEC_MAX_DEPTH);
  luaL_checkstack(L, 12, "msgpack nesting");
  k = table_kind_sh(L, t, &mt, &e->sh);
  if (mt == 0)
    lua_pushnil(L); /* keep the stack shape the same */
  if (k == T_BIN || k == T_FLOAT || k == T_EXT) {
    enc_box(e, t, k);
    return;
  }
  if (k == T_MAP && mt > 0) {
    rawfield(L, mt, "lost");
    if (!lua_isnil(L, -1)) { /* see note_dup: writing it would lose pairs */
      char kb[80];
      luaL_error(L, "cannot encode a map decoded with keys Lua cannot tell "
                    "apart (key %s came more than once, e.g. as 1 and 1.0, "
                    "or as string and binary); the original has every pair, "
                    "a copy would lose some", key_text(L, -1, kb, sizeof(kb)));
    }
    lua_pop(L, 1);
  }
  push_field(L, mt, "hints");
  hints = lua_gettop(L);
  push_field(L, mt, "orig");
  orig = lua_gettop(L);
  push_field(L, mt, "khints");
  kh = lua_gettop(L);
  if (k == T_SEQ) {
    count_entries(L, t, &seq, &e->bud);
    k = seq ? T_ARRAY : T_MAP;
  }
  if (k == T_ARRAY) {
    uint32_t i;
    size_t len = lua_objlen(L, t);
    if (mt > 0) {
      rawfield(L, mt, "n");
      if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) > (double)len &&
          lua_tonumber(L, -1) <= (double)UINT32_MAX)
        len = (size_t)lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
    if (len > UINT32_MAX)
      luaL_error(L, "table too large for msgpack");
    room(e, 5);
    put(e, sl_codec_put_array(e->out, (uint32_t)len));
    for (i = 1; i <= len; i++) {
      struct hint h;
      lua_pushinteger(L, (lua_Integer)i);
      lua_rawgeti(L, t, (int)i);
      h = hint_for(L, hints, orig, lua_gettop(L) - 1, lua_gettop(L));
      enc_value(e, lua_gettop(L), depth + 1, &h);
      lua_pop(L, 2);
    }
  } else {
    uint32_t c = count_entries(L, t, &seq, &e->bud) +
                 count_nil_hints(L, t, hints, &e->bud), i;
    struct sl_luacodec_slot slot[SL_LUACODEC_FEW_KEYS];
    int top = lua_gettop(L), table;
    sorted_pairs(e, t, hints, c, slot, &table);
    room(e, 5);
    put(e, sl_codec_put_map(e->out, c));
    for (i = 0; i < c; i++) {
      int ki, vi, at = lua_gettop(L);
      struct hint khh, vh;
      if (table) {
        lua_rawgeti(L, table, (int)i + 1);
        ki = lua_gettop(L);
        lua_pushvalue(L, ki);
        lua_rawget(L, t);
      } else {
        ki = slot[i].idx;
      }
      vi = ki + 1;
      khh = khint_for(L, kh, ki);
      enc_key(e, ki, &khh);
      if (lua_isnil(L, vi)) { /* a nil-hinted key: a nil value */
        room(e, 1);
        put(e, sl_codec_put_nil(e->out));
      } else {
        vh = hint_for(L, hints, orig, ki, vi);
        enc_value(e, vi, depth + 1, &vh);
      }
      lua_settop(L, at);
    }
    lua_settop(L, top); /* the sorted pairs */
  }
  lua_pop(L, 4); /* mt (or its nil stand-in), hints, orig, khints */
}

static void enc_value(struct enc *e, int idx, int depth, const struct hint *h) {
  lua_State *L = e->L;
  size_t n;
  const char *s;

  tick(L, &e->bud);
  jcost(e, 32); /* a number, a marker, separators: never longer */
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    room(e, 1);
    put(e, sl_codec_put_nil(e->out));
    break;
  case LUA_TBOOLEAN:
    room(e, 1);
    put(e, sl_codec_put_bool(e->out, lua_toboolean(L, idx)));
    break;
  case LUA_TNUMBER:
    put_number(e, lua_tonumber(L, idx), h);
    break;
  case LUA_TSTRING:
    s = lua_tolstring(L, idx, &n);
    room(e, n + 5);
    if (h->kind == 'b') {
      jcost(e, n / 3 * 4 + 32);
      put(e, sl_codec_put_bin(e->out, s, n));
    } else {
      if (e->json)
        jcost(e, json_str_len((const uint8_t *)s, n));
      put(e, sl_codec_put_str(e->out, s, n));
    }
    break;
  case LUA_TTABLE:
    enc_table(e, idx, depth);
    break;
  case LUA_TLIGHTUSERDATA: /* ev.payload's root is one (proxy.c) */
  case LUA_TUSERDATA:
    if (sl_proxy_is(L, idx)) { /* a part of ev.payload: its bytes */
      size_t at = e->out->len;
      sl_proxy_write(L, idx, e->out, depth, e->max - (at - e->start),
                     e->what);
      jcost(e, (e->out->len - at) * 10); /* no byte renders longer */
      break;
    }
    /* fall through */
  default:
    luaL_error(L, "cannot encode a %s value",
               lua_typename(L, lua_type(L, idx)));
  }
}

static void encode(lua_State *L, int idx, struct sl_buf *out,
                   sl_luacodec_check check, size_t max, const char *what,
                   int json, int depth) {
  struct enc e;
  struct hint none = {0, 0};

  if (idx < 0 && idx > LUA_REGISTRYINDEX)
    idx = lua_gettop(L) + idx + 1;
  luaL_checkstack(L, 12, "msgpack");
  e.L = L;
  e.out = out;
  e.bud.check = check;
  e.bud.steps = 0;
  e.start = out->len;
  e.max = max;
  e.next_check = out->len + ENC_CHECK_BYTES;
  e.what = what ? what : "the value";
  e.json = json;
  e.jmax = max;
  e.jsize = 0;
  if (json)
    e.max = SIZE_MAX / 2; /* the JSON estimate is the larger: it bounds */
  shared_open(L, &e.sh);
  enc_value(&e, idx, depth, &none);
  lua_pop(L, 3);
}

void sl_luacodec_encode_max(lua_State *L, int idx, struct sl_buf *out,
                            sl_luacodec_check check, size_t max,
                            const char *what) {
  encode(L, idx, out, check, max, what, 0, 0);
}

void sl_luacodec_encode_at(lua_State *L, int idx, struct sl_buf *out,
                           sl_luacodec_check check, size_t max,
                           const char *what, int depth) {
  encode(L, idx, out, check, max, what, 0, depth);
}

void sl_luacodec_encode_json(lua_State *L, int idx, struct sl_buf *out,
                             sl_luacodec_check check, size_t max,
                             const char *what) {
  encode(L, idx, out, check, max, what, 1, 0);
}

void sl_luacodec_encode(lua_State *L, int idx, struct sl_buf *out,
                        sl_luacodec_check check) {
  encode(L, idx, out, check, SIZE_MAX, NULL, 0, 0);
}

/* ---- comparing a Lua value with msgpack bytes -------------------------- */

struct cmp {
  lua_State *L;
  const uint8_t *start, *end;
  struct budget bud;
  struct shared sh;
};

static int same_value(struct cmp *c, int idx, const uint8_t **pp,
                      const struct hint *h, int lenient, int depth);

/* Push the Lua value a msgpack map key decodes to; 0 when it cannot be a
 * Lua key. */
static int push_key(lua_State *L, const struct sl_codec_item *it) {
  switch (it->t) {
  case SL_MP_STR: case SL_MP_BIN:
    lua_pushlstring(L, (const char *)it->s, it->n);
    return 1;
  case SL_MP_UINT: lua_pushnumber(L, (lua_Number)it->u); return 1;
  case SL_MP_INT: lua_pushnumber(L, (lua_Number)it->i); return 1;
  case SL_MP_F32: lua_pushnumber(L, (lua_Number)it->f); return 1;
  case SL_MP_F64:
    if (isnan(it->d))
      return 0;
    lua_pushnumber(L, it->d);
    return 1;
  case SL_MP_BOOL: lua_pushboolean(L, it->b); return 1;
  default: return 0;
  }
}

/* Step over one value at *pp (a pair the decoder left out). */
static int skip_value(struct cmp *c, const uint8_t **pp, int depth) {
  struct sl_codec_item it;
  uint32_t i, n;

  tick(c->L, &c->bud);
  if (sl_codec_read_item(pp, c->end, &it) != 0)
    return 0;
  /* as dec_value: a container this deep is refused, a scalar is not */
  if ((it.t == SL_MP_ARR || it.t == SL_MP_MAP) && depth >= SL_CODEC_MAX_DEPTH)
    return 0;
  n = it.t == SL_MP_ARR ? it.n : it.t == SL_MP_MAP ? it.n * 2 : 0;
  for (i = 0; i < n; i++)
    if (!skip_value(c, pp, depth + 1))
      return 0;
  return 1;
}

static int same_table(struct cmp *c, int t, const struct sl_codec_item *it,
                      const uint8_t **pp, int depth) {
  lua_State *L = c->L;
  int mt, seq, hints, orig, skip, ok = 1;
  enum tkind k;
  uint32_t i;

  if (depth >= SL_CODEC_MAX_DEPTH || !lua_checkstack(L, 12))
    return 0;
  k = table_kind_sh(L, t, &mt, &c->sh);
  if (mt == 0)
    lua_pushnil(L);
  if (k == T_SEQ) {
    count_entries(L, t, &seq, &c->bud);
    k = seq ? T_ARRAY : T_MAP;
  }
  if ((it->t == SL_MP_ARR && k != T_ARRAY) || (it->t == SL_MP_MAP && k != T_MAP)) {
    lua_pop(L, 1);
    return 0;
  }
  push_field(L, mt, "hints");
  hints = lua_gettop(L);
  push_field(L, mt, "orig");
  orig = hints + 1;
  push_field(L, mt, "skip");
  skip = hints + 2;
  if (it->t == SL_MP_ARR) {
    size_t len = lua_objlen(L, t);
    if (mt > 0) {
      rawfield(L, mt, "n");
      if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) > (double)len)
        len = (size_t)lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
    ok = len == it->n;
    for (i = 1; ok && i <= it->n; i++) {
      struct hint h;
      lua_pushinteger(L, (lua_Integer)i);
      lua_rawgeti(L, t, (int)i);
      h = hint_for(L, hints, orig, lua_gettop(L) - 1, lua_gettop(L));
      ok = same_value(c, lua_gettop(L), pp, &h, 0, depth + 1);
      lua_pop(L, 2);
    }
  } else {
    int s, seen = 0;
    uint32_t nskip = 0;
    if (!lua_isnil(L, skip)) {
      rawfield(L, mt, "nskip");
      nskip = lua_type(L, -1) == LUA_TNUMBER ? (uint32_t)lua_tonumber(L, -1)
                                              : 0;
      lua_pop(L, 1);
    }
    ok = count_entries(L, t, &s, &c->bud) +
             count_nil_hints(L, t, hints, &c->bud) + nskip == it->n;
    if (ok && lua_isnil(L, skip) && it->n > 1) {
      /* no record of a left-out pair (the rule may have replaced the
       * metatable that held them): a name the bytes repeat makes them a
       * map no table equals, or a key added beside the repeat would pass
       * for the pair the decoder left out and the change be dropped */
      lua_createtable(L, 0, (int)it->n);
      seen = lua_gettop(L);
    }
    for (i = 0; ok && i < it->n; i++) {
      struct sl_codec_item key;
      struct hint h;
      const uint8_t *kat = *pp;
      if (!lua_isnil(L, skip)) { /* a pair the decoder left out */
        lua_pushnumber(L, (lua_Number)(kat - c->start));
        lua_rawget(L, skip);
        s = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (s) {
          ok = skip_value(c, pp, depth + 1) && skip_value(c, pp, depth + 1);
          continue;
        }
      }
      if (sl_codec_read_item(pp, c->end, &key) != 0 || !push_key(L, &key))
        ok = 0;
      if (!ok)
        break;
      if (seen) {
        lua_pushvalue(L, -1);
        lua_rawget(L, seen);
        ok = lua_isnil(L, -1);
        lua_pop(L, 1);
        if (!ok) {
          lua_pop(L, 1);
          break;
        }
        lua_pushvalue(L, -1);
        lua_pushboolean(L, 1);
        lua_rawset(L, seen);
      }
      lua_pushvalue(L, -1);
      lua_rawget(L, t);
      h = hint_for(L, hints, orig, lua_gettop(L) - 1, lua_gettop(L));
      ok = same_value(c, lua_gettop(L), pp, &h, 0, depth + 1);
      lua_pop(L, 2);
    }
    if (seen)
      lua_remove(L, seen);
  }
  lua_pop(L, 4);
  return ok;
}

/* Is the box at idx (what sluice.float, bin or ext make: kind want) the
 * msgpack value it? */
static int same_box(lua_State *L, int idx, const struct sl_codec_item *it,
                    enum tkind want) {
  const char *s;
  size_t n;
  int mt, ok;

  if (table_kind(L, idx, &mt) != want) {
    if (mt)
      lua_pop(L, 1);
    return 0;
  }
  if (want == T_FLOAT) {
    lua_rawgeti(L, idx, 1);
    ok = lua_type(L, -1) == LUA_TNUMBER &&
         memcmp(&(double){lua_tonumber(L, -1)}, &it->d, 8) == 0;
    lua_pop(L, 2);
    return ok;
  }
  if (want == T_BIN) {
    lua_rawgeti(L, idx, 1);
    s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    ok = s && n == it->n && memcmp(s, it->s, n) == 0;
    lua_pop(L, 2);
    return ok;
  }
  rawfield(L, idx, "type");
  rawfield(L, idx, "data");
  s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
  ok = lua_type(L, -2) == LUA_TNUMBER && lua_tonumber(L, -2) == it->ext &&
       s && n == it->n && memcmp(s, it->s, n) == 0;
  lua_pop(L, 3);
  return ok;
}

static int same_value(struct cmp *c, int idx, const uint8_t **pp,
                      const struct hint *h, int lenient, int depth) {
  lua_State *L = c->L;
  struct sl_codec_item it;
  int type = lua_type(L, idx);
  double v = type == LUA_TNUMBER ? lua_tonumber(L, idx) : 0;
  size_t n;
  const char *s;

  tick(L, &c->bud);
  if (sl_codec_read_item(pp, c->end, &it) != 0)
    return 0;
  switch (it.t) {
  case SL_MP_NIL:
    return type == LUA_TNIL;
  case SL_MP_BOOL:
    return type == LUA_TBOOLEAN && lua_toboolean(L, idx) == it.b;
  case SL_MP_INT: case SL_MP_UINT: {
    int big = it.t == SL_MP_UINT ? it.u > (uint64_t)TWO53
                             : (it.i > (int64_t)TWO53 || it.i < -(int64_t)TWO53);
    double x = it.t == SL_MP_UINT ? (double)it.u : (double)it.i;
    if (type != LUA_TNUMBER || v != x)
      return 0;
    if (h->kind == 'f' || h->kind == 's')
      return 0;
    if (!big)
      return 1;
    if (lenient)
      return 1;
    return (h->kind == 'i' || h->kind == 'u') &&
           h->bits == (it.t == SL_MP_UINT ? it.u : (uint64_t)it.i);
  }
  case SL_MP_F32:
    if (type != LUA_TNUMBER ||
        ((float)v != it.f && !(isnan(v) && isnan(it.f))))
      return 0;
    return h->kind == 's' || lenient;
  case SL_MP_F64:
    if (type == LUA_TTABLE)
      return same_box(L, idx, &it, T_FLOAT);
    if (type != LUA_TNUMBER)
      return 0;
    if (would_be_int(v))
      return v == it.d && (h->kind == 'f' || lenient);
    if (isnan(v) && isnan(it.d))
      return 1;
    return memcmp(&v, &it.d, 8) == 0 && h->kind != 's';
  case SL_MP_STR:
    if (type != LUA_TSTRING || h->kind == 'b')
      return 0;
    s = lua_tolstring(L, idx, &n);
    return n == it.n && memcmp(s, it.s, n) == 0;
  case SL_MP_BIN:
    if (type == LUA_TTABLE)
      return same_box(L, idx, &it, T_BIN);
    if (type != LUA_TSTRING || !(h->kind == 'b' || lenient))
      return 0;
    s = lua_tolstring(L, idx, &n);
    return n == it.n && memcmp(s, it.s, n) == 0;
  case SL_MP_EXT:
    return type == LUA_TTABLE && same_box(L, idx, &it, T_EXT);
  case SL_MP_ARR: case SL_MP_MAP:
    if (type != LUA_TTABLE)
      return 0;
    return same_table(c, idx, &it, pp, depth);
  default:
    return 0;
  }
}

int sl_luacodec_same(lua_State *L, int idx, const uint8_t *p, size_t len,
                     sl_luacodec_check check) {
  const uint8_t *q = p;
  struct hint none = {0, 0};
  struct cmp c;
  int top = lua_gettop(L), ok;

  if (idx < 0 && idx > LUA_REGISTRYINDEX)
    idx = top + idx + 1;
  if (!lua_checkstack(L, 16))
    return 0;
  c.L = L;
  c.start = p;
  c.end = p + len;
  c.bud.check = check;
  c.bud.steps = 0;
  shared_open(L, &c.sh);
  ok = same_value(&c, idx, &q, &none, 1, 0) && q == p + len;
  lua_settop(L, top);
  return ok;
}

/* ---- str -> str maps (ev.headers) ----------------------------------------
 * Every event's headers are a map of str to str (the parsers and builders
 * take nothing else). Decoded by dec_map, such a map is a table with the
 * shared map marker and no side records, unless a name comes twice; these
 * two make and compare exactly that table without dec_value's and
 * same_value's per-value work (ev.headers cost a rule ~2,400 instructions
 * to read and ~1,800 to compare after, for one traceparent), and leave
 * anything else to the general functions. */

/* The pair at *q (both str), advancing *q; 0 if it is not that. */
static int read_strpair(const uint8_t **q, const uint8_t *end,
                        struct sl_str *k, struct sl_str *v) {
  size_t used;
  if (sl_codec_read_str(*q, (size_t)(end - *q), k, &used) != 0)
    return 0;
  *q += used;
  if (sl_codec_read_str(*q, (size_t)(end - *q), v, &used) != 0)
    return 0;
  *q += used;
  return 1;
}

#define STRMAP_SMALL 16 /* pairs compared by their bytes, not through Lua */

/* The pairs of a small map at q (n <= STRMAP_SMALL) into k and v; 0 if it
 * is not all str -> str or does not end at end. */
static int read_small(const uint8_t *q, const uint8_t *end, uint32_t n,
                      struct sl_str *k, struct sl_str *v) {
  uint32_t i;
  for (i = 0; i < n; i++)
    if (!read_strpair(&q, end, &k[i], &v[i]))
      return 0;
  return q == end;
}

static int str_eq(struct sl_str a, const char *p, size_t n) {
  return a.len == n && memcmp(a.p, p, n) == 0;
}

/* read_small, and no name repeats: 0 otherwise (a repeat is the general
 * functions' case: the decoder keeps side records for it). */
static int read_small_unique(const uint8_t *q, const uint8_t *end,
                             uint32_t n, struct sl_str *k, struct sl_str *v) {
  uint32_t i, j;
  if (!read_small(q, end, n, k, v))
    return 0;
  for (i = 1; i < n; i++)
    for (j = 0; j < i; j++)
      if (str_eq(k[i], k[j].p, k[j].len))
        return 0;
  return 1;
}

int sl_luacodec_push_strmap(lua_State *L, const uint8_t *p, size_t len,
                            sl_luacodec_check check) {
  const uint8_t *q, *end = p + len;
  struct sl_str ks[STRMAP_SMALL], vs[STRMAP_SMALL], k, v;
  uint32_t n, i;
  size_t used;
  int t;

  if (sl_codec_read_map(p, len, &n, &used) != 0 || n > len)
    return 0;
  if (n <= STRMAP_SMALL) { /* the usual headers: a repeat found in bytes */
    if (!read_small_unique(p + used, end, n, ks, vs))
      return 0; /* a repeat: dec_map's side records */
    luaL_checkstack(L, 4, "msgpack");
    lua_createtable(L, 0, (int)n);
    for (i = 0; i < n; i++) {
      lua_pushlstring(L, ks[i].p, ks[i].len);
      lua_pushlstring(L, vs[i].p, vs[i].len);
      lua_rawset(L, -3);
    }
    push_mt(L, &map_key, "map");
    lua_setmetatable(L, -2);
    return 1;
  }
  luaL_checkstack(L, 6, "msgpack");
  lua_createtable(L, 0, (int)n);
  t = lua_gettop(L);
  for (q = p + used, i = 0; i < n; i++) {
    if (check && ((i + 1) & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
      check(L);
    if (!read_strpair(&q, end, &k, &v))
      break;
    lua_pushlstring(L, k.p, k.len);
    lua_pushvalue(L, -1);
    lua_rawget(L, t);
    if (!lua_isnil(L, -1)) /* a repeat: dec_map's side records */
      break;
    lua_pop(L, 1);
    lua_pushlstring(L, v.p, v.len);
    lua_rawset(L, t);
  }
  if (i < n || q != end) {
    lua_settop(L, t - 1);
    return 0;
  }
  push_mt(L, &map_key, "map");
  lua_setmetatable(L, t);
  return 1;
}

/* same_strmap for a map of at most STRMAP_SMALL pairs without repeats:
 * one walk of the table, each entry found among the pairs by its bytes. */
static int same_small(lua_State *L, int idx, uint32_t n,
                      const struct sl_str *ks, const struct sl_str *vs) {
  uint32_t count = 0, i;
  int ok = 1;

  lua_pushnil(L);
  while (ok && lua_next(L, idx)) {
    const char *k, *v;
    size_t kl, vl;
    ok = ++count <= n && lua_type(L, -2) == LUA_TSTRING &&
         lua_type(L, -1) == LUA_TSTRING;
    if (ok) {
      k = lua_tolstring(L, -2, &kl);
      v = lua_tolstring(L, -1, &vl);
      for (i = 0; i < n && !str_eq(ks[i], k, kl); i++)
        ;
      ok = i < n && str_eq(vs[i], v, vl);
    }
    lua_pop(L, 1);
  }
  return ok && count == n; /* keys are unique on both sides */
}

int sl_luacodec_same_strmap(lua_State *L, int idx, const uint8_t *p,
                            size_t len, sl_luacodec_check check) {
  const uint8_t *q, *end = p + len;
  struct sl_str ks[STRMAP_SMALL], vs[STRMAP_SMALL], k, v;
  uint32_t n, i, count = 0;
  size_t used;
  int top = lua_gettop(L), ok = 1;

  if (idx < 0 && idx > LUA_REGISTRYINDEX)
    idx = top + idx + 1;
  if (lua_type(L, idx) != LUA_TTABLE ||
      sl_codec_read_map(p, len, &n, &used) != 0 || !lua_checkstack(L, 6))
    return -1;
  if (!lua_getmetatable(L, idx))
    return -1;
  push_mt(L, &map_key, "map");
  if (!lua_rawequal(L, -1, -2)) { /* not the table the decoder made */
    lua_settop(L, top);
    return -1;
  }
  lua_settop(L, top);
  if (n <= STRMAP_SMALL) {
    if (!read_small_unique(p + used, end, n, ks, vs))
      return -1; /* a repeat: the general comparison knows them */
    ok = same_small(L, idx, n, ks, vs);
    lua_settop(L, top);
    return ok;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (++count > n) { /* more entries than the map: not the same */
      lua_settop(L, top);
      return 0;
    }
    if (check && (count & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
      check(L);
  }
  if (count != n)
    return 0;
  /* the names seen: a repeat in the bytes makes a map no table with the
   * shared marker equals (its decoding has side records), and a key added
   * beside it would pass for the pair the decoder left out */
  lua_createtable(L, 0, (int)n);
  for (q = p + used, i = 0; ok && i < n; i++) {
    const char *s;
    size_t sl;
    if (check && ((i + 1) & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
      check(L);
    if (!read_strpair(&q, end, &k, &v)) {
      ok = -1;
      break;
    }
    lua_pushlstring(L, k.p, k.len);
    lua_pushvalue(L, -1);
    lua_rawget(L, top + 1);
    if (!lua_isnil(L, -1)) {
      ok = 0;
      break;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, top + 1);
    lua_rawget(L, idx);
    s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &sl) : NULL;
    ok = s != NULL && sl == v.len && memcmp(s, v.p, sl) == 0;
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  return ok;
}

/* ---- JSON -> Lua --------------------------------------------------------- */

/* JSON goes through the engine's one reader (json.c) to msgpack, then the
 * msgpack decoder above pushes it: the same types, markers and limits as
 * an event ingested as JSON. The reader and its output are owned by one
 * userdata per state (in the registry), so what a raise (a parse error,
 * check() between steps) leaves there is freed by the next decode, or
 * with the state. A new userdata per decode left it to the collector,
 * which a tiny userdata does not hurry: a rule failing decodes of a 1 MiB
 * text in a loop held 2 MB of C memory per decode after its call. */

static const char jread_key = 0;

struct jread {
  struct sl_json_reader *r;
  struct sl_buf out;
};

static int jread_gc(lua_State *L) {
  struct jread *j = lua_touserdata(L, 1);
  sl_json_reader_free(j->r);
  j->r = NULL;
  sl_buf_close(&j->out);
  return 0;
}

/* The state's reader slot, emptied of what a raise left; raises "not
 * enough memory". */
static struct jread *jread_of(lua_State *L) {
  struct jread *j;

  lua_pushlightuserdata(L, (void *)&jread_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  j = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (j == NULL) {
    lua_pushlightuserdata(L, (void *)&jread_key);
    j = lua_newuserdata(L, sizeof(*j));
    j->r = NULL;
    sl_buf_init(&j->out);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, jread_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  sl_json_reader_free(j->r);
  j->r = NULL;
  sl_buf_reset(&j->out);
  return j;
}

/* yajl's messages in the words json.decode has always used. */
static const char *json_words(const char *msg) {
  static const struct {
    const char *has, *say;
  } words[] = {
      {"premature EOF", "unexpected end"},
      {"trailing garbage", "trailing characters"},
      {"invalid escape", "bad escape"},
      {"before a character which it may not", "bad escape"},
      {"invalid (non-hex) character", "bad \\u escape"},
      {"I expect ',' or ']'", "expected ',' or ']'"},
      {"I expect ',' or '}'", "expected ',' or '}'"},
      {"separated by a colon", "expected ':'"},
      {"invalid object key", "expected a string key"},
      {"invalid UTF-8 in a string", "invalid UTF-8 in string"},
      {"invalid character inside string", "control character in string"},
      {"malformed number", "bad number"},
      {"unallowed token", "unexpected character"},
      {"invalid char in json text", "unexpected character"},
      {"invalid string in json text", "unexpected character"},
      {"probable comment found", "unexpected character"},
      {"nesting deeper than", "nesting too deep"},
  };
  size_t i;
  for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
    if (strstr(msg, words[i].has) != NULL)
      return words[i].say;
  return msg; /* the reader's own reasons (numbers) say it already */
}

struct jstep {
  lua_State *L;
  sl_luacodec_check check;
};

static void on_jstep(void *data) {
  struct jstep *st = data;
  st->check(st->L);
}

void sl_luacodec_push_json(lua_State *L, const char *s, size_t len,
                           sl_luacodec_check check) {
  struct sl_json_error err;
  struct jstep st = {L, check};
  struct jread *j;
  char msg[sizeof(err.msg)];
  int rc;

  luaL_checkstack(L, 4, "json");
  j = jread_of(L);
  if ((j->r = sl_json_reader_new()) == NULL)
    luaL_error(L, "not enough memory");
  rc = sl_json_reader_run(j->r, s, len, &j->out, check ? on_jstep : NULL, &st,
                          &err);
  if (rc == SL_ENOMEM)
    luaL_error(L, "not enough memory");
  if (rc != 0) {
    size_t at = err.offset;
    snprintf(msg, sizeof(msg), "%s", json_words(err.msg));
    if (strncmp(err.msg, "parse error", 11) == 0 && at > 0 && at <= len &&
        strstr(err.msg, "premature EOF") == NULL) {
      at--; /* yajl counts the token it refused in; point at its end */
      if (at >= 1 && s[at] >= '0' && s[at] <= '9' && s[at - 1] == '0' &&
          (at < 2 || strchr("0123456789.eE+", s[at - 2]) == NULL)) {
        at--; /* "01": yajl read 0, then 1 after it */
        snprintf(msg, sizeof(msg), "leading zero");
      }
    }
    luaL_error(L, "json: %s at byte %d", msg,
               at > INT32_MAX ? INT32_MAX : (int)at);
  }
  sl_json_reader_free(j->r);
  j->r = NULL;
  sl_luacodec_push(L, j->out.data, j->out.len, check);
  sl_buf_shrink(&j->out);
}

/* ---- constructors for rules ---------------------------------------------- */

static int l_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 2)) {
    lua_Number n = luaL_checknumber(L, 2);
    if (n < 0 || n != floor(n) || n > UINT32_MAX)
      luaL_argerror(L, 2, "a length 0..2^32-1 expected");
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__sluice");
    lua_pushnumber(L, n);
    lua_setfield(L, -2, "n");
  } else {
    push_mt(L, &array_key, "array");
  }
  lua_setmetatable(L, 1);
  lua_settop(L, 1);
  return 1;
}

static int l_map(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  push_mt(L, &map_key, "map");
  lua_setmetatable(L, 1);
  lua_settop(L, 1);
  return 1;
}

static int l_bin(lua_State *L) {
  luaL_checktype(L, 1, LUA_TSTRING);
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  push_mt(L, &bin_key, "bin");
  lua_setmetatable(L, -2);
  return 1;
}

static int l_float(lua_State *L) {
  luaL_checknumber(L, 1);
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  push_mt(L, &float_key, "float");
  lua_setmetatable(L, -2);
  return 1;
}

static int l_ext(lua_State *L) {
  lua_Number t = luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TSTRING);
  if (t < -128 || t > 127 || t != floor(t))
    luaL_argerror(L, 1, "an ext type -128..127 expected");
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "type");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "data");
  push_mt(L, &ext_key, "ext");
  lua_setmetatable(L, -2);
  return 1;
}

/* The check set by sl_luacodec_set_check, for the constructors. */
static sl_luacodec_check state_check(lua_State *L) {
  sl_luacodec_check c = NULL;
  lua_pushlightuserdata(L, (void *)&check_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_type(L, -1) == LUA_TUSERDATA)
    c = *(sl_luacodec_check *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return c;
}

static const char *kind_name(lua_State *L, int idx, const struct hint *h) {
  int mt;

  switch (lua_type(L, idx)) {
  case LUA_TNIL: return "nil";
  case LUA_TBOOLEAN: return "boolean";
  case LUA_TNUMBER:
    if (h->kind == 'f')
      return "float";
    if (h->kind == 's')
      return "float32";
    if (h->kind == 'i' || h->kind == 'u')
      return "int";
    return would_be_int(lua_tonumber(L, idx)) ? "int" : "float";
  case LUA_TSTRING:
    return h->kind == 'b' ? "binary" : "string";
  case LUA_TTABLE: {
    enum tkind k = table_kind(L, idx, &mt);
    int seq;
    if (mt)
      lua_pop(L, 1);
    if (k == T_SEQ) { /* walks the table: budgeted */
      struct budget bud = {state_check(L), 0};
      count_entries(L, idx, &seq, &bud);
      k = seq ? T_ARRAY : T_MAP;
    }
    return k == T_ARRAY ? "array" : k == T_MAP ? "map" : k == T_BIN ? "binary"
           : k == T_FLOAT ? "float" : "ext";
  }
  default:
    return lua_typename(L, lua_type(L, idx));
  }
}

static int l_kind(lua_State *L) {
  struct hint h = {0, 0};
  int mt;

  if (sl_proxy_is(L, 1)) { /* a part of ev.payload: from its bytes */
    const char *k = sl_proxy_kind(L, 1, lua_gettop(L) >= 2 ? 2 : 0);
    if (k == NULL) /* a value the rule wrote: the plain rules */
      k = sl_proxy_is(L, -1) ? sl_proxy_kind(L, lua_gettop(L), 0)
                             : kind_name(L, lua_gettop(L), &h);
    lua_pushstring(L, k);
    return 1;
  }
  if (lua_gettop(L) < 2) {
    lua_settop(L, 1);
    lua_pushstring(L, kind_name(L, 1, &h));
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  lua_rawget(L, 1); /* 3: value */
  table_kind(L, 1, &mt);
  if (mt == 0)
    lua_pushnil(L);
  push_field(L, mt, "hints");
  push_field(L, mt, "orig");
  h = hint_for(L, 5, 6, 2, 3);
  lua_pushstring(L, kind_name(L, 3, &h));
  return 1;
}

void sl_luacodec_set_check(lua_State *L, sl_luacodec_check check) {
  sl_luacodec_check *slot = lua_newuserdata(L, sizeof(*slot));
  *slot = check;
  lua_pushlightuserdata(L, (void *)&check_key);
  lua_insert(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

void sl_luacodec_register(lua_State *L, int idx) {
  static const luaL_Reg fns[] = {{"array", l_array}, {"map", l_map},
                                 {"bin", l_bin},     {"float", l_float},
                                 {"ext", l_ext},     {"kind", l_kind},
                                 {NULL, NULL}};
  const luaL_Reg *f;

  if (idx < 0 && idx > LUA_REGISTRYINDEX)
    idx = lua_gettop(L) + idx + 1;
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, idx, f->name);
  }
  push_mt(L, &array_key, "array");
  push_mt(L, &map_key, "map");
  push_mt(L, &bin_key, "bin");
  push_mt(L, &float_key, "float");
  push_mt(L, &ext_key, "ext");
  lua_pop(L, 5);
}
