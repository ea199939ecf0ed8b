/* test_pattern.c - engine/pattern.c in a real LuaJIT state: results of the
 * four functions, their error messages, the depth bound, and a pattern bomb
 * stopped by a check that raises after a deadline. The differential test
 * against LuaJIT's own string library is tests/lua/pattern_spec.lua. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* clock_gettime, even when CFLAGS lacks it */
#endif
#include <stdint.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "pattern.h"
#include "test.h"

static long check_calls;
static uint64_t deadline_ns; /* 0: the check never raises */

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void check_deadline(lua_State *L) {
  check_calls++;
  if (deadline_ns != 0 && mono_ns() > deadline_ns)
    luaL_error(L, "cpu budget exceeded");
}

/* A state whose string table (and so string methods) uses pattern.c. */
static lua_State *state_new(sl_pattern_check_cb check) {
  lua_State *L = luaL_newstate();
  if (L == NULL)
    return NULL;
  luaL_openlibs(L);
  lua_getglobal(L, "string");
  sl_pattern_install(L, -1, check);
  lua_pop(L, 1);
  check_calls = 0;
  deadline_ns = 0;
  return L;
}

/* Run chunk; its results joined by spaces (nil and booleans by name), or
 * "error: msg". The result lives in a static buffer until the next call. */
static const char *eval(lua_State *L, const char *chunk) {
  static char out[1024];
  int top = lua_gettop(L), i, n;
  size_t used = 0;

  out[0] = '\0';
  if (luaL_loadstring(L, chunk) != 0 || lua_pcall(L, 0, LUA_MULTRET, 0) != 0) {
    snprintf(out, sizeof out, "error: %s", lua_tostring(L, -1));
    lua_settop(L, top);
    return out;
  }
  n = lua_gettop(L) - top;
  for (i = 1; i <= n && used < sizeof out; i++) {
    const char *v = lua_tostring(L, top + i);
    if (lua_isnil(L, top + i))
      v = "nil";
    else if (lua_isboolean(L, top + i))
      v = lua_toboolean(L, top + i) ? "true" : "false";
    used += (size_t)snprintf(out + used, sizeof out - used, "%s%s",
                             i > 1 ? " " : "", v != NULL ? v : "?");
  }
  lua_settop(L, top);
  return out;
}

TEST(find_returns_positions_and_captures) {
  lua_State *L = state_new(check_deadline);
  CHECK(L != NULL);
  CHECK_STR(eval(L, "return ('hello world'):find('o w')"), "5 7");
  CHECK_STR(eval(L, "return ('THE (quick) fox'):find('%((%a+)%)')"),
            "5 11 quick");
  CHECK_STR(eval(L, "return ('abc'):find('()b()')"), "2 2 2 3");
  CHECK_STR(eval(L, "return ('abc'):find('b', -1)"), "nil");
  CHECK_STR(eval(L, "return ('abc'):find('', 10)"), "4 3");
  CHECK_STR(eval(L, "return ('a.b'):find('.', 2, true)"), "2 2");
  CHECK_STR(eval(L, "return ('a\\0b'):find('%z')"), "2 2");
  CHECK_STR(eval(L, "return ('ab'):find('^b')"), "nil");
  CHECK_STR(eval(L, "return ('THE (quick) fox'):find('%f[%a]%a+', 5)"),
            "6 10");
  lua_close(L);
}

TEST(match_returns_captures_or_whole_match) {
  lua_State *L = state_new(check_deadline);
  CHECK(L != NULL);
  CHECK_STR(eval(L, "return ('key = val'):match('(%w+)%s*=%s*(%w+)')"),
            "key val");
  CHECK_STR(eval(L, "return ('f(a(b)c)d'):match('%b()')"), "(a(b)c)");
  CHECK_STR(eval(L, "return ('xyyx'):match('(.)(.)%2%1')"), "x y");
  CHECK_STR(eval(L, "return ('  trim  '):match('^%s*(.-)%s*$')"), "trim");
  CHECK_STR(eval(L, "return ('[[x]]'):match('[]]+')"), "]]");
  lua_close(L);
}

TEST(gmatch_iterates_until_exhausted) {
  lua_State *L = state_new(check_deadline);
  CHECK(L != NULL);
  CHECK_STR(eval(L, "local t = {} for k, v in ('a=1, b=2'):gmatch("
                    "'(%w+)=(%w+)') do t[#t+1] = k .. v end "
                    "return table.concat(t, ',')"),
            "a1,b2");
  CHECK_STR(eval(L, "local t = {} for w in ('abc'):gmatch('%a*') do "
                    "t[#t+1] = '<' .. w .. '>' end return table.concat(t)"),
            "<abc><>");
  CHECK_STR(eval(L, "local it = ('x'):gmatch('.') it() "
                    "return select('#', it())"),
            "0");
  lua_close(L);
}

TEST(gsub_replaces_with_string_table_and_function) {
  lua_State *L = state_new(check_deadline);
  CHECK(L != NULL);
  CHECK_STR(eval(L, "return ('hello world'):gsub('o', '0')"),
            "hell0 w0rld 2");
  CHECK_STR(eval(L, "return ('abc'):gsub('%w', '%0%0')"), "aabbcc 3");
  CHECK_STR(eval(L, "return ('abc'):gsub('', '-')"), "-a-b-c- 4");
  CHECK_STR(eval(L, "return ('$x $y'):gsub('%$(%w+)', {x = 1})"), "1 $y 2");
  CHECK_STR(eval(L, "return ('abc'):gsub('%w', function(c) "
                    "if c ~= 'b' then return c:upper() end end)"),
            "AbC 3");
  CHECK_STR(eval(L, "return ('aaaa'):gsub('a', 'x', 2)"), "xxaa 2");
  CHECK_STR(eval(L, "return ('abc'):gsub('^.', '%%')"), "%bc 1");
  lua_close(L);
}

TEST(malformed_pattern_raises_luajit_message) {
  lua_State *L = state_new(check_deadline);
  CHECK(L != NULL);
  CHECK_STR(eval(L, "return pcall(string.find, 'a', '%')"),
            "false malformed pattern (ends with '%')");
  CHECK_STR(eval(L, "return pcall(string.find, 'a', '[a')"),
            "false malformed pattern (missing ']')");
  CHECK_STR(eval(L, "return pcall(string.match, 'a', 'a)')"),
            "false invalid pattern capture");
  CHECK_STR(eval(L, "return pcall(string.find, 'a', '(()')"),
            "false unfinished capture");
  CHECK_STR(eval(L, "return pcall(string.find, 'a', '%1')"),
            "false invalid capture index");
  CHECK_STR(eval(L, "return pcall(string.find, 'a', '%fa')"),
            "false missing '[' after '%f' in pattern");
  CHECK_STR(eval(L, "return pcall(string.find, 'a', ('()'):rep(33))"),
            "false too many captures");
  CHECK_STR(eval(L, "return pcall(string.find, 'a', '%b')"),
            "false unbalanced pattern");
  CHECK_STR(eval(L, "return pcall(string.gsub, 'a', 'a', {a = {}})"),
            "false invalid replacement value (a table)");
  CHECK_STR(eval(L, "return pcall(string.gsub, 'a', 'a', true)"),
            "false bad argument #3 to '?' (string/function/table expected)");
  lua_close(L);
}

TEST(deep_pattern_raises_pattern_too_complex) {
  lua_State *L = state_new(check_deadline);
  CHECK(L != NULL);
  CHECK_STR(eval(L, "return pcall(string.find, ('a'):rep(1000), "
                    "('a?'):rep(1000))"),
            "false pattern too complex");
  CHECK_STR(eval(L, "return pcall(string.find, ('a'):rep(1000), "
                    "('a?'):rep(150))"),
            "true 1 150");
  lua_close(L);
}

TEST(pattern_bomb_stopped_by_deadline_check) {
  lua_State *L = state_new(check_deadline);
  uint64_t start, elapsed;
  CHECK(L != NULL);
  start = mono_ns();
  deadline_ns = start + 10 * 1000000u; /* a rule's 10 ms budget */
  CHECK_STR(eval(L, "return pcall(string.find, ('a'):rep(5000), "
                    "'.-.-.-.-b')"),
            "false cpu budget exceeded");
  elapsed = mono_ns() - start;
  CHECK(check_calls > 0);
  CHECK(elapsed < 500u * 1000000u); /* generous for ASan; LuaJIT: minutes */
  deadline_ns = mono_ns() + 10 * 1000000u;
  CHECK_STR(eval(L, "return pcall(string.gsub, ('a'):rep(5000), "
                    "'.-.-.-.-b', 'x')"),
            "false cpu budget exceeded");
  deadline_ns = mono_ns() + 10 * 1000000u;
  CHECK_STR(eval(L, "local ok, e = pcall(function() for _ in "
                    "(('a'):rep(5000)):gmatch('.-.-.-.-b') do end end) "
                    "return ok, e:match('cpu budget exceeded$')"),
            "false cpu budget exceeded");
  /* the state is still usable after the error unwound the matcher */
  deadline_ns = 0;
  CHECK_STR(eval(L, "return ('abc'):match('b.')"), "bc");
  lua_close(L);
}

TEST(check_called_once_per_check_steps) {
  lua_State *L = state_new(check_deadline);
  CHECK(L != NULL);
  CHECK_STR(eval(L, "return ('hello'):find('l+')"), "3 4");
  CHECK_EQ(check_calls, 0); /* short work never pays for a check */
  /* ".-b" on n bytes: about n*n/2 steps */
  CHECK_STR(eval(L, "return (('a'):rep(2000)):find('.-b')"), "nil");
  CHECK(check_calls >= 2000L * 2000 / 2 / SL_PATTERN_CHECK_STEPS);
  CHECK(check_calls <= 4L * 2000 * 2000 / SL_PATTERN_CHECK_STEPS);
  lua_close(L);
}

TEST(install_accepts_relative_index_and_keeps_stack) {
  lua_State *L = luaL_newstate();
  int top;
  CHECK(L != NULL);
  lua_newtable(L);
  lua_pushnil(L);
  top = lua_gettop(L);
  sl_pattern_install(L, -2, NULL); /* NULL: no checks at all */
  CHECK_EQ(lua_gettop(L), top);
  lua_pop(L, 1);
  lua_getfield(L, -1, "gsub");
  CHECK(lua_iscfunction(L, -1));
  lua_pushliteral(L, "a-b");
  lua_pushliteral(L, "%-");
  lua_pushliteral(L, "+");
  CHECK_EQ(lua_pcall(L, 3, 2, 0), 0);
  CHECK_STR(lua_tostring(L, -2), "a+b");
  CHECK_EQ(lua_tointeger(L, -1), 1);
  lua_close(L);
}

TEST(install_into_globals_pseudo_index) {
  lua_State *L = luaL_newstate();
  CHECK(L != NULL);
  luaL_openlibs(L);
  sl_pattern_install(L, LUA_GLOBALSINDEX, check_deadline);
  CHECK_EQ(lua_gettop(L), 0);
  CHECK_STR(eval(L, "return match('x=1', '(%w)=(%d)')"), "x 1");
  lua_close(L);
}
