/* pattern.h - Lua 5.1 patterns whose matcher a rule's CPU budget can stop.
 * LuaJIT's string.find/match/gmatch/gsub match in C, where no count hook
 * fires; these replacements count matcher steps and bound its recursion. */
#ifndef SL_PATTERN_H
#define SL_PATTERN_H

#include <lua.h>

#define SL_PATTERN_CHECK_STEPS 4096 /* matcher steps between two checks */
#define SL_PATTERN_MAX_DEPTH 200    /* nested matcher calls (C stack) */
#define SL_PATTERN_MAX_CAPTURES 32  /* as LuaJIT's LUA_MAXCAPTURES */

/* Called every SL_PATTERN_CHECK_STEPS steps with the calling state. It
 * either returns, leaving the Lua stack as it found it, or raises a Lua
 * error (lua_error/luaL_error), which unwinds out of the string function. */
typedef void (*sl_pattern_check_cb)(lua_State *L);

/* Replace find, match, gmatch and gsub in the table at index idx (any
 * acceptable index, pseudo-indices included) of L with step-limited
 * versions. They behave as LuaJIT's for every valid input and raise the
 * same messages for malformed patterns; in addition a pattern that nests
 * more than SL_PATTERN_MAX_DEPTH matcher calls raises "pattern too
 * complex". Every SL_PATTERN_CHECK_STEPS matcher steps (one step is about
 * one character comparison or backtrack) they call check(L), which may
 * raise a Lua error; it never returns then. check may be NULL: no checks.
 * The stack of L is left as it was; like any allocation in L, install may
 * raise "not enough memory". The closures hold no resource that a raised
 * error would leak, and may be called from any Lua code in L. */
void sl_pattern_install(lua_State *L, int idx, sl_pattern_check_cb check);

#endif
