/* fuzz_pattern.c - libFuzzer target for engine/pattern.c. Splits the input
 * into a subject and a pattern, runs them through our find, match, gmatch
 * or gsub under a step budget, and, when ours finished in few steps, through
 * LuaJIT's own function too: results and error messages must be the same.
 * Build with `make fuzz`; `make test` runs it for a few seconds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "pattern.h"

#define BUDGET_CHECKS 64 /* ours stops after 64 * SL_PATTERN_CHECK_STEPS */

static lua_State *L;
static int checks;

static void check(lua_State *L) {
  if (++checks >= BUDGET_CHECKS)
    luaL_error(L, "fuzz step budget");
}

/* compare(fn, s, p, init, plain, repl): nil when both libraries agree or
 * ours ran out of budget (LuaJIT's matcher, which does about the same
 * work, could not be stopped), else a description of the difference. */
static const char harness[] =
    "local real, mine = ...\n"
    "local function pack(...) return { n = select('#', ...), ... } end\n"
    "local function show(t)\n"
    "  local o = {}\n"
    "  for i = 1, t.n do\n"
    "    local v = t[i]\n"
    "    o[i] = type(v) == 'string' and ('%q'):format(v) or tostring(v)\n"
    "  end\n"
    "  return table.concat(o, ', ')\n"
    "end\n"
    "local function run(lib, fn, s, p, init, plain, repl)\n"
    "  if fn == 'gmatch' then\n"
    "    return pack(pcall(function()\n"
    "      local out, it = {}, lib.gmatch(s, p)\n"
    "      for _ = 1, 50 do\n"
    "        local r = pack(it())\n"
    "        out[#out + 1] = show(r)\n"
    "        if r.n == 0 then break end\n"
    "      end\n"
    "      return table.concat(out, ' | ')\n"
    "    end))\n"
    "  elseif fn == 'gsub' then\n"
    "    return pack(pcall(lib.gsub, s, p, repl, init))\n"
    "  end\n"
    "  return pack(pcall(lib[fn], s, p, init, plain))\n"
    "end\n"
    "local repls = { '<%0>', '%1', '[%2]', '%', 'x%y', {},\n"
    "  { a = 'A', b = false, ['1'] = 1 },\n"
    "  function(...) return select('#', ...) end,\n"
    "  function(x) if x == 'a' then return {} end end }\n"
    "return function(fn, s, p, init, plain, r)\n"
    "  local repl = repls[r % #repls + 1]\n"
    "  local b = run(mine, fn, s, p, init, plain, repl)\n"
    "  if not b[1] and (tostring(b[2]):find('fuzz step budget', 1, true)\n"
    "      or b[2] == 'pattern too complex') then return nil end\n"
    "  local a = run(real, fn, s, p, init, plain, repl)\n"
    "  local same = a.n == b.n\n"
    "  for i = 1, a.n do same = same and a[i] == b[i] end\n"
    "  if same then return nil end\n"
    "  return fn .. '(' .. show(pack(s, p, init, plain)) .. ' repl ' .. r ..\n"
    "    ')\\n  luajit ' .. show(a) .. '\\n  sluice ' .. show(b)\n"
    "end\n";

static void setup(void) {
  L = luaL_newstate();
  if (L == NULL)
    abort();
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, harness, sizeof harness - 1, "=harness") != 0) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  lua_getglobal(L, "string");
  lua_newtable(L);
  sl_pattern_install(L, -1, check);
  if (lua_pcall(L, 2, 1, 0) != 0) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_pattern_compare");
}

/* Input: [function | plain << 2 | repl << 3] [init] [pattern length]
 * then the pattern and the subject. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const fns[] = {"find", "match", "gmatch", "gsub"};
  size_t plen;
  int top;

  if (L == NULL)
    setup();
  if (size < 3)
    return 0;
  plen = data[2] % (size - 3 + 1);
  top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_pattern_compare");
  lua_pushstring(L, fns[data[0] & 3]);
  lua_pushlstring(L, (const char *)data + 3 + plen, size - 3 - plen);
  lua_pushlstring(L, (const char *)data + 3, plen);
  if (data[1] == 0x80)
    lua_pushnil(L);
  else
    lua_pushinteger(L, (int8_t)data[1]);
  lua_pushboolean(L, data[0] & 4);
  lua_pushinteger(L, data[0] >> 3);
  checks = 0;
  if (lua_pcall(L, 6, 1, 0) != 0) {
    fprintf(stderr, "harness failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  if (!lua_isnil(L, -1)) {
    fprintf(stderr, "difference: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, top);
  return 0;
}
