/* luastate.c - the Lua state a config file runs in: a config computes, it
 * does not do I/O. Its own file so that sluice_core.so (sluice.testing's
 * contracts) runs config files exactly as the engine does. */
#include "config.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

/* A state with only the pure libraries: a config computes, it does not do
 * I/O. NULL when out of memory. (config.h) */
lua_State *sl_config_state(void) {
  static const char *const unsafe[] = {"dofile", "loadfile", "load",
                                       "loadstring", "require", "module",
                                       "collectgarbage", "newproxy",
                                       "getfenv", "setfenv", NULL};
  const char *const *u;
  lua_State *L = luaL_newstate();
  if (L == NULL)
    return NULL;
  lua_pushcfunction(L, luaopen_base);
  lua_call(L, 0, 0);
  lua_pushcfunction(L, luaopen_string);
  lua_call(L, 0, 0);
  lua_pushcfunction(L, luaopen_table);
  lua_call(L, 0, 0);
  lua_pushcfunction(L, luaopen_math);
  lua_call(L, 0, 0);
  for (u = unsafe; *u; u++) {
    lua_pushnil(L);
    lua_setglobal(L, *u);
  }
  return L;
}
