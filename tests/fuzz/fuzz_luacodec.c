/* fuzz_luacodec.c - libFuzzer target for engine/lua/luacodec.c, the msgpack
 * <-> Lua codec behind ev.headers, ev.payload copies and sluice.copy. The
 * input is one msgpack value; in one lua_State made once it checks:
 *
 *  1. sl_luacodec_push decodes it or raises (a raise is fine). A decoded
 *     value is sl_luacodec_same as its bytes; encoding it (which may raise,
 *     e.g. for a map with keys Lua cannot tell apart) gives bytes it is
 *     also the same as, which decode again to a value the same as both.
 *  2. When sl_luacodec_push_strmap takes the bytes, sl_luacodec_push takes
 *     them too and makes a table with the same entries and metatable, and
 *     sl_luacodec_same_strmap says 1 of both tables. Then input-derived
 *     edits of the table (new value, delete, same value, new key, number
 *     value, other key kinds, another metatable): after each, when
 *     same_strmap answers 0 or 1 it is sl_luacodec_same's answer, and the
 *     edited table still encodes to bytes it is the same as.
 *  3. Whatever table sl_luacodec_push made, same_strmap of it and the
 *     bytes is -1 or sl_luacodec_same's answer (finish() in ev.c asks it
 *     of any ev.headers table).
 *
 * Every call that may raise runs under lua_pcall / lua_cpcall, so no
 * longjmp crosses libFuzzer's frames. Build with `make fuzz`; `make test`
 * runs it for a few seconds. Run e.g. build/fuzz/fuzz_luacodec -max_len=4096
 * -dict=tests/fuzz/fuzz_luacodec.dict -max_total_time=300. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "box.h"
#include "buf.h"
#include "luacodec.h"

/* proxy.c (linked for sl_proxy_is/_write/_kind, which luacodec.c calls
 * for a part of ev.payload) refers to these sandbox functions in state.c,
 * which would pull in the whole sandbox. They run only for a proxy, and
 * this target never makes one. */
struct box *box_of(lua_State *L) { (void)L; abort(); }
void check_cpu(lua_State *L) { (void)L; abort(); }
const char *msg_str(lua_State *L, int idx) { (void)L; (void)idx; abort(); }

#define FAIL(...)                                                  \
  do {                                                             \
    fprintf(stderr, "fuzz_luacodec: " __VA_ARGS__);                \
    fprintf(stderr, "\n");                                         \
    abort();                                                       \
  } while (0)

static lua_State *L;
static struct sl_buf enc1, enc2;
static unsigned runs;

static void nop_check(lua_State *L) { (void)L; }

struct bytes {
  const uint8_t *p;
  size_t n;
};

struct encarg {
  struct sl_buf *out;
};

static int f_push(lua_State *L) {
  const struct bytes *b = lua_touserdata(L, 1);
  lua_settop(L, 0);
  sl_luacodec_push(L, b->p, b->n, nop_check);
  return 1;
}

/* f_encode(value, buf): encodes into buf (reset first). */
static int f_encode(lua_State *L) {
  struct sl_buf *out = lua_touserdata(L, 2);
  sl_buf_reset(out);
  sl_luacodec_encode(L, 1, out, nop_check);
  return 0;
}

/* Push the decoded value and return 1, or push nothing and return 0. */
static int try_push(lua_State *L, const uint8_t *p, size_t n) {
  struct bytes b = {p, n};
  lua_pushcfunction(L, f_push);
  lua_pushlightuserdata(L, &b);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* Encode the value at idx into out; 1 on success, 0 if it raised. */
static int try_encode(lua_State *L, int idx, struct sl_buf *out) {
  lua_pushcfunction(L, f_encode);
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, out);
  if (lua_pcall(L, 2, 0, 0) != 0) {
    lua_pop(L, 1);
    sl_buf_reset(out);
    return 0;
  }
  return 1;
}

static void hexdump(const char *what, const uint8_t *p, size_t n) {
  size_t i;
  fprintf(stderr, "%s (%zu bytes):", what, n);
  for (i = 0; i < n && i < 256; i++)
    fprintf(stderr, " %02x", p[i]);
  fprintf(stderr, "%s\n", n > 256 ? " ..." : "");
}

/* Check 1 for the value at idx decoded from p[0..n). */
static void check_roundtrip(lua_State *L, int idx, const uint8_t *p,
                            size_t n) {
  int top = lua_gettop(L);
  if (sl_luacodec_same(L, idx, p, n, nop_check) != 1)
    FAIL("sl_luacodec_same(push(p), p) != 1");
  if (!try_encode(L, idx, &enc1))
    return;
  if (sl_luacodec_same(L, idx, enc1.data, enc1.len, nop_check) != 1) {
    hexdump("re-encoded", enc1.data, enc1.len);
    FAIL("sl_luacodec_same(v, encode(v)) != 1");
  }
  if (!try_push(L, enc1.data, enc1.len)) {
    hexdump("re-encoded", enc1.data, enc1.len);
    FAIL("push(encode(push(p))) raised");
  }
  if (sl_luacodec_same(L, -1, enc1.data, enc1.len, nop_check) != 1)
    FAIL("sl_luacodec_same(push(e), e) != 1 for e = encode(push(p))");
  if (sl_luacodec_same(L, -1, p, n, nop_check) != 1) {
    hexdump("re-encoded", enc1.data, enc1.len);
    FAIL("sl_luacodec_same(push(encode(push(p))), p) != 1");
  }
  lua_settop(L, top);
}

/* Check 3: same_strmap of any table is -1 or same's answer. */
static void check_agree(lua_State *L, int t, const uint8_t *p, size_t n,
                        const char *after) {
  int fast = sl_luacodec_same_strmap(L, t, p, n, nop_check);
  int slow;
  if (fast < -1 || fast > 1)
    FAIL("same_strmap returned %d %s", fast, after);
  if (fast < 0)
    return;
  slow = sl_luacodec_same(L, t, p, n, nop_check);
  if (fast != slow)
    FAIL("same_strmap says %d, same says %d %s", fast, slow, after);
}

static uint64_t rng;

static unsigned rnd(unsigned m) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (unsigned)(rng % m);
}

/* Edit the table at t (a strmap table) a few times; keys at kt (a list of
 * its original keys), orig at o (the general decoder's table). */
static void mutate(lua_State *L, int t, int kt, int o, const uint8_t *p,
                   size_t n) {
  static const char *const what[] = {
      "after setting a key to a new string", "after deleting a key",
      "after setting a key to its own value", "after adding a key",
      "after setting a key to a number", "after restoring a key",
      "after adding a number key", "after setting a key to a table",
      "after setting a key to another key's value",
      "after replacing the metatable"};
  int nkeys = (int)lua_objlen(L, kt);
  int edits = 1 + (int)rnd(6), e;

  for (e = 0; e < edits; e++) {
    unsigned op = rnd(10);
    int top = lua_gettop(L);
    if (nkeys == 0 && op != 3 && op != 6 && op != 9)
      op = 3;
    if (op == 9 && rnd(4) != 0)
      op = 2; /* now and then only: same_strmap says -1 from then on */
    if (op != 3 && op != 6 && op != 9)
      lua_rawgeti(L, kt, 1 + (int)rnd((unsigned)nkeys)); /* key at top */
    switch (op) {
    case 0: { /* a new string: the old one and a byte, or a short one */
      const char *s;
      size_t sl = 0;
      lua_pushvalue(L, -1);
      lua_rawget(L, t);
      s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &sl) : "";
      if (rnd(2)) {
        lua_pushlstring(L, s, sl);
        lua_pushlstring(L, "x", 1);
        lua_concat(L, 2);
      } else {
        lua_pushlstring(L, s, sl > 0 ? sl - 1 : 0);
      }
      lua_remove(L, -2);
      lua_rawset(L, t);
      break;
    }
    case 1: /* delete */
      lua_pushnil(L);
      lua_rawset(L, t);
      break;
    case 2: /* the same value again */
      lua_pushvalue(L, -1);
      lua_rawget(L, t);
      lua_rawset(L, t);
      break;
    case 3: { /* a new key (or an old one back) with a string value */
      char k[8];
      int kl = snprintf(k, sizeof k, "k%u", rnd(4));
      if (nkeys > 0 && rnd(2)) {
        lua_rawgeti(L, kt, 1 + (int)rnd((unsigned)nkeys));
      } else {
        lua_pushlstring(L, k, (size_t)kl);
      }
      lua_pushlstring(L, k, (size_t)kl);
      lua_rawset(L, t);
      break;
    }
    case 4: /* a number */
      lua_pushnumber(L, rnd(2) ? 1 : 0.5);
      lua_rawset(L, t);
      break;
    case 5: /* back to the decoded value */
      lua_pushvalue(L, -1);
      lua_rawget(L, o);
      lua_rawset(L, t);
      break;
    case 6: /* a key that is not a string */
      lua_pushnumber(L, rnd(2) ? 1 : 2.5);
      lua_pushliteral(L, "v");
      lua_rawset(L, t);
      break;
    case 7: /* a table value */
      lua_newtable(L);
      lua_rawset(L, t);
      break;
    case 8: /* another key's value */
      lua_rawgeti(L, kt, 1 + (int)rnd((unsigned)nkeys));
      lua_rawget(L, o);
      lua_rawset(L, t);
      break;
    case 9: /* no metatable, or a fresh map marker table */
      if (rnd(2)) {
        lua_pushnil(L);
      } else {
        lua_newtable(L);
        lua_pushliteral(L, "map");
        lua_setfield(L, -2, "__sluice");
      }
      lua_setmetatable(L, t);
      break;
    }
    lua_settop(L, top);
    check_agree(L, t, p, n, what[op]);
    /* an edited table still encodes to what it is the same as */
    if (try_encode(L, t, &enc2) &&
        sl_luacodec_same(L, t, enc2.data, enc2.len, nop_check) != 1) {
      hexdump("re-encoded", enc2.data, enc2.len);
      FAIL("sl_luacodec_same(t, encode(t)) != 1 %s", what[op]);
    }
  }
}

/* Check 2 for p[0..n). */
static void check_strmap(lua_State *L, const uint8_t *p, size_t n) {
  int top = lua_gettop(L), r, t, o, kt, cnt = 0, cnt2 = 0;

  r = sl_luacodec_push_strmap(L, p, n, nop_check);
  if (r == 0) {
    if (lua_gettop(L) != top)
      FAIL("push_strmap returned 0 but left %d values", lua_gettop(L) - top);
    return;
  }
  if (r != 1 || lua_gettop(L) != top + 1 || !lua_istable(L, -1))
    FAIL("push_strmap returned %d, pushing %d values", r, lua_gettop(L) - top);
  t = lua_gettop(L);
  if (!try_push(L, p, n))
    FAIL("push_strmap took bytes sl_luacodec_push refuses");
  o = lua_gettop(L);
  if (!lua_istable(L, o))
    FAIL("push_strmap made a table, sl_luacodec_push a %s",
         luaL_typename(L, o));
  /* same entries */
  lua_newtable(L);
  kt = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      FAIL("push_strmap made a key or value that is not a string");
    lua_pushvalue(L, -2);
    lua_rawget(L, o);
    if (!lua_rawequal(L, -1, -2))
      FAIL("push_strmap and push disagree on key '%s'", lua_tostring(L, -3));
    lua_pop(L, 2);
    lua_pushvalue(L, -1);
    lua_rawseti(L, kt, ++cnt);
  }
  lua_pushnil(L);
  while (lua_next(L, o)) {
    lua_pop(L, 1);
    cnt2++;
  }
  if (cnt != cnt2)
    FAIL("push_strmap made %d entries, push %d", cnt, cnt2);
  /* same metatable */
  if (!lua_getmetatable(L, t) || !lua_getmetatable(L, o) ||
      !lua_rawequal(L, -1, -2))
    FAIL("push_strmap and push give different metatables");
  lua_pop(L, 2);
  r = sl_luacodec_same_strmap(L, t, p, n, nop_check);
  if (r != 1)
    FAIL("same_strmap(push_strmap(p), p) = %d", r);
  if (sl_luacodec_same(L, t, p, n, nop_check) != 1)
    FAIL("same(push_strmap(p), p) != 1");
  r = sl_luacodec_same_strmap(L, o, p, n, nop_check);
  if (r != 1)
    FAIL("same_strmap(push(p), p) = %d", r);
  mutate(L, t, kt, o, p, n);
  lua_settop(L, top);
}

struct run {
  const uint8_t *p;
  size_t n;
};

static int f_run(lua_State *L) {
  struct run *r = lua_touserdata(L, 1);
  int v;

  lua_settop(L, 0);
  if (try_push(L, r->p, r->n)) {
    v = lua_gettop(L);
    check_roundtrip(L, v, r->p, r->n);
    if (lua_istable(L, v))
      check_agree(L, v, r->p, r->n, "of push(p)");
    lua_settop(L, 0);
  }
  check_strmap(L, r->p, r->n);
  return 0;
}

static void setup(void) {
  L = luaL_newstate();
  if (L == NULL)
    abort();
  luaL_openlibs(L);
  lua_newtable(L);
  sl_luacodec_register(L, -1);
  lua_setglobal(L, "sluice");
  sl_buf_init(&enc1);
  sl_buf_init(&enc2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct run r = {data, size};
  uint64_t h = 1469598103934665603ull;
  size_t i;

  if (L == NULL)
    setup();
  for (i = 0; i < size; i++)
    h = (h ^ data[i]) * 1099511628211ull;
  rng = h | 1;
  if (lua_cpcall(L, f_run, &r) != 0) {
    /* only the checks above raise on their own (out of memory) */
    fprintf(stderr, "fuzz_luacodec: raised outside a check: %s\n",
            lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
  if (++runs % 256 == 0)
    lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
