/* test_luacodec.c - engine/luacodec.c from C: the JSON size estimate of
 * sl_luacodec_encode_json is an upper bound of what sl_codec_to_json
 * writes (json.encode relies on it to bound rendering before it runs),
 * over random values full of escapes and ill-formed UTF-8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "codec.h"
#include "luacodec.h"
#include "test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng % n);
}

/* Bytes that stress the escaper: controls, quotes, valid and ill-formed
 * UTF-8 (overlong, surrogates, truncated, stray continuations). */
static void push_string(lua_State *L) {
  static const char *const parts[] = {
      "a", "\"", "\\", "\x01", "\x1f", "\x7f", "\xc3\xa9", "\xe2\x82\xac",
      "\xf0\x9f\x98\x80", "\xc0\xaf", "\xe0\x80\x80", "\xed\xa0\x80",
      "\xf4\x90\x80\x80", "\xe2\x82", "\x80", "\xbf", "\xf5", "\xff", "\xc2"};
  char buf[512];
  size_t n = 0, k, len = rnd(60);

  while (len-- > 0) {
    const char *p = parts[rnd(sizeof(parts) / sizeof(parts[0]))];
    k = strlen(p);
    if (n + k > sizeof(buf))
      break;
    memcpy(buf + n, p, k);
    n += k;
  }
  lua_pushlstring(L, buf, n);
}

static void push_value(lua_State *L, int depth) {
  int kind = rnd(depth > 3 ? 6 : 9), i, n;

  switch (kind) {
  case 0: lua_pushnil(L); break;
  case 1: lua_pushboolean(L, rnd(2)); break;
  case 2: lua_pushnumber(L, (double)rnd(1u << 31) - 1e9); break;
  case 3: lua_pushnumber(L, (double)rnd(1000) / 7.0 * 1e300); break;
  case 4: case 5: push_string(L); break;
  case 6: /* array */
    n = (int)rnd(6);
    lua_createtable(L, n, 0);
    for (i = 1; i <= n; i++) {
      push_value(L, depth + 1);
      lua_rawseti(L, -2, i);
    }
    break;
  case 7: /* map with string keys */
    n = (int)rnd(6);
    lua_createtable(L, 0, n);
    for (i = 0; i < n; i++) {
      push_string(L);
      push_value(L, depth + 1);
      if (lua_isnil(L, -1))
        lua_pop(L, 2);
      else
        lua_rawset(L, -3);
    }
    break;
  default: /* map with number keys: rendered as {"$map": ...} */
    n = (int)rnd(4);
    lua_createtable(L, 0, n);
    for (i = 0; i < n; i++) {
      lua_pushnumber(L, (double)rnd(100) + 0.5);
      push_value(L, depth + 1);
      if (lua_isnil(L, -1))
        lua_pop(L, 2);
      else
        lua_rawset(L, -3);
    }
  }
}

struct job {
  struct sl_buf *out;
  size_t max;
};

static int encode_json(lua_State *L) {
  struct job *j = lua_touserdata(L, 2);
  sl_luacodec_encode_json(L, 1, j->out, NULL, j->max, "v");
  return 0;
}

/* Does the value on top encode within an estimate of max? */
static int fits(lua_State *L, struct sl_buf *out, size_t max) {
  struct job j = {out, max};
  int ok;

  sl_buf_reset(out);
  lua_pushcfunction(L, encode_json);
  lua_pushvalue(L, -2);
  lua_pushlightuserdata(L, &j);
  ok = lua_pcall(L, 2, 0, 0) == 0;
  if (!ok)
    lua_pop(L, 1);
  return ok;
}

TEST(luacodec_json_estimate_bounds_the_rendered_text) {
  lua_State *L = luaL_newstate();
  struct sl_buf mp, js;
  int i, tight = 0;

  CHECK(L != NULL);
  sl_buf_init(&mp);
  sl_buf_init(&js);
  for (i = 0; i < 2000; i++) {
    size_t lo = 0, hi = 1u << 20, est;
    push_value(L, 0);
    CHECK(fits(L, &mp, hi));
    while (lo < hi) { /* the estimate: the least max that fits */
      size_t mid = lo + (hi - lo) / 2;
      if (fits(L, &mp, mid))
        hi = mid;
      else
        lo = mid + 1;
    }
    est = lo;
    CHECK(fits(L, &mp, est));
    sl_buf_reset(&js);
    CHECK_EQ(sl_codec_to_json(mp.data, mp.len, &js), 0);
    if (js.len > est)
      fprintf(stderr, "  value %d: json %zu > estimate %zu\n", i, js.len, est);
    CHECK(js.len <= est);
    if (est <= js.len + 64 + js.len / 2)
      tight++;
    lua_pop(L, 1);
  }
  /* an estimate that refused most legit values would be useless */
  CHECK(tight > 1000);
  sl_buf_close(&mp);
  sl_buf_close(&js);
  lua_close(L);
}

TEST(luacodec_json_estimate_of_valid_utf8_is_not_inflated) {
  lua_State *L = luaL_newstate();
  struct sl_buf mp;
  char s[3000];
  int i;

  sl_buf_init(&mp);
  for (i = 0; i < 1000; i++)
    memcpy(s + 3 * i, "\xe2\x82\xac", 3); /* euro signs */
  lua_pushlstring(L, s, sizeof(s));
  CHECK(fits(L, &mp, 3000 + 2 + 32));
  CHECK(!fits(L, &mp, 3000 + 2 + 31));
  for (i = 0; i < 3000; i++)
    s[i] = 1; /* each becomes \u0001 */
  lua_pushlstring(L, s, sizeof(s));
  CHECK(fits(L, &mp, 6 * 3000 + 2 + 32));
  CHECK(!fits(L, &mp, 6 * 3000 + 2 + 31));
  sl_buf_close(&mp);
  lua_close(L);
}
