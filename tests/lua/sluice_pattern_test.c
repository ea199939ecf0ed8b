/* sluice_pattern_test.c - engine/pattern.c as a Lua module for the
 * differential spec (tests/lua/pattern_spec.lua). Built as
 * build/sluice_pattern_test.so, not linked to libluajit: the luajit host
 * that runs busted provides the Lua API. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* clock_gettime, even when CFLAGS lacks it */
#endif
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "pattern.h"

static long calls;       /* check() calls since reset */
static long limit;       /* raise on this call; 0: never */
static double deadline;  /* raise after this monotonic time; 0: never */
static double last_cpu;  /* this thread's CPU time at the last check */
static double max_gap;   /* most CPU seconds between two checks */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(lua_State *L) {
  double cpu = cpu_now();
  if (calls > 0 && cpu - last_cpu > max_gap)
    max_gap = cpu - last_cpu;
  last_cpu = cpu;
  calls++;
  if (limit > 0 && calls >= limit)
    luaL_error(L, "pattern step budget exceeded");
  if (deadline > 0 && now() > deadline)
    luaL_error(L, "pattern deadline exceeded");
}

/* reset([limit [, seconds]]): zero the call count and the longest gap;
 * raise on call `limit` or once `seconds` have passed. */
static int reset(lua_State *L) {
  double seconds = luaL_optnumber(L, 2, 0);
  calls = 0;
  max_gap = 0;
  limit = (long)luaL_optinteger(L, 1, 0);
  deadline = seconds > 0 ? now() + seconds : 0;
  return 0;
}

static int get_calls(lua_State *L) {
  lua_pushinteger(L, calls);
  return 1;
}

/* The most CPU time (seconds, this thread) between two checks since reset. */
static int get_max_gap(lua_State *L) {
  lua_pushnumber(L, max_gap);
  return 1;
}

/* functions([checked]): a new table with find, match, gmatch and gsub;
 * checked false installs them without a check. */
static int functions(lua_State *L) {
  int checked = lua_isnoneornil(L, 1) || lua_toboolean(L, 1);
  lua_newtable(L);
  sl_pattern_install(L, -1, checked ? check : NULL);
  return 1;
}

int luaopen_sluice_pattern_test(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"reset", reset},
      {"calls", get_calls},
      {"max_gap", get_max_gap},
      {"functions", functions},
      {NULL, NULL},
  };
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_pushinteger(L, SL_PATTERN_CHECK_STEPS);
  lua_setfield(L, -2, "CHECK_STEPS");
  lua_pushinteger(L, SL_PATTERN_MAX_DEPTH);
  lua_setfield(L, -2, "MAX_DEPTH");
  return 1;
}
