/* rule.c - one rule file in its own sandboxed LuaJIT state (sandbox.h).
 * Owns, per rule: the state and its byte-budget allocator (a "box"), the
 * CPU deadline hook, the safe environment, the event userdata, the sluice
 * API, timers, counters, rate limiters and dedup windows. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>
#include <openssl/evp.h>

#include "box.h"
#include "codec.h"
#include "luacodec.h"
#include "router.h"

#if defined(__has_include)
#if __has_include("pattern.h")
#include "pattern.h"
#define HAVE_PATTERN 1
#endif
#endif

/* ---- no addresses for rules ----------------------------------------------
 * tostring and string.format("%s"/"%p") print the address of a table,
 * function, userdata or thread; sluice.drop()'s mark is even an address in
 * the engine binary. Either would hand a rule a map of the process (ASLR).
 * Rules get a tostring that names such values "<type>: #<n>", n counted
 * per state, a format that uses it for %s and refuses %p, and the mark
 * prints as "sluice.drop". __tostring metamethods work as before. The
 * format also refuses %q of a string over 1 MiB: LuaJIT quotes it byte by
 * byte in one C call (2.3 ms per MiB, unchecked). */
static const char hide_src[] =
    "local raw_tostring, raw_format, rawmt, find, type, rawget, select,\n"
    "      unpack, setmetatable, error = ...\n"
    "local hidden = { table = true, ['function'] = true, userdata = true,\n"
    "                 thread = true }\n"
    "local ids, n = setmetatable({}, { __mode = 'k' }), 0\n"
    "local function tostring(v)\n"
    "  local t = type(v)\n"
    "  if hidden[t] then\n"
    "    local mt = rawmt(v)\n"
    "    if mt == nil or rawget(mt, '__tostring') == nil then\n"
    "      local id = ids[v]\n"
    "      if id == nil then n = n + 1; id = n; ids[v] = id end\n"
    "      return t .. ': #' .. id\n"
    "    end\n"
    "  end\n"
    "  return raw_tostring(v)\n"
    "end\n"
    "local cache, ncache = {}, 0 -- format -> positions of its %s, or false\n"
    "local function scan(fmt)\n"
    "  local pos, i, argi = {}, 1, 0\n"
    "  while true do\n"
    "    local s, e, conv = find(fmt, '%%[-+ #0]*%d*%.?%d*(.)', i)\n"
    "    if s == nil then break end\n"
    "    i = e + 1\n"
    "    if conv ~= '%' then\n"
    "      argi = argi + 1\n"
    "      if conv == 'p' then pos = false break end\n"
    "      if conv == 's' then pos[#pos + 1] = argi end\n"
    "      if conv == 'q' then pos[#pos + 1] = -argi end\n"
    "    end\n"
    "  end\n"
    "  if ncache >= 256 then cache, ncache = {}, 0 end\n"
    "  ncache = ncache + 1\n"
    "  cache[fmt] = pos\n"
    "  return pos\n"
    "end\n"
    "local function format(fmt, ...)\n"
    "  if type(fmt) ~= 'string' then return raw_format(fmt, ...) end\n"
    "  local pos = cache[fmt]\n"
    "  if pos == nil then pos = scan(fmt) end\n"
    "  if pos == false then\n"
    "    error(\"bad argument #1 to 'format' (%p is not allowed)\", 2)\n"
    "  end\n"
    "  local args\n"
    "  for k = 1, #pos do\n"
    "    local a = pos[k]\n"
    "    if a < 0 then\n"
    "      local v = select(-a, ...)\n"
    "      if type(v) == 'string' and #v > 1048576 then\n"
    "        error('bad argument #' .. (1 - a) .. \" to 'format' (%q of a \"\n"
    "              .. 'string over 1 MiB: it runs unchecked in C)', 2)\n"
    "      end\n"
    "    elseif hidden[type((select(a, ...)))] then\n"
    "      args = args or { ... }\n"
    "      args[a] = tostring(args[a])\n"
    "    end\n"
    "  end\n"
    "  if args then return raw_format(fmt, unpack(args, 1, select('#', ...))) end\n"
    "  return raw_format(fmt, ...)\n"
    "end\n"
    "return tostring, format\n";

static int raw_metatable(lua_State *L) {
  if (!lua_getmetatable(L, 1)) /* ignores __metatable */
    lua_pushnil(L);
  return 1;
}

static int drop_tostring(lua_State *L) {
  lua_pushliteral(L, "sluice.drop");
  return 1;
}

/* Install the above in env (at index env, absolute) and in the strings'
 * metatable; g0 holds the original libraries. Raises on error. */
static void hide_addresses(lua_State *L, int g0, int env) {
  int top = lua_gettop(L);

  if (luaL_loadbuffer(L, hide_src, sizeof(hide_src) - 1, "=tostring") != 0)
    lua_error(L);
  lua_getfield(L, env, "tostring");
  lua_getfield(L, env, "string");
  lua_getfield(L, -1, "format"); /* as guarded for rules */
  lua_remove(L, -2);
  lua_pushcfunction(L, raw_metatable);
  lua_getfield(L, g0, "string");
  lua_getfield(L, -1, "find");
  lua_remove(L, -2);
  lua_getfield(L, g0, "type");
  lua_getfield(L, g0, "rawget");
  lua_getfield(L, g0, "select");
  lua_getfield(L, g0, "unpack");
  lua_getfield(L, g0, "setmetatable");
  lua_getfield(L, g0, "error");
  if (lua_pcall(L, 10, 2, 0) != 0)
    lua_error(L);
  lua_pushvalue(L, -2);
  lua_setfield(L, env, "tostring");
  lua_getfield(L, env, "string");
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "format");
  lua_pop(L, 1);
  lua_pushliteral(L, ""); /* ("%p"):format(x) */
  lua_getmetatable(L, -1);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -4);
  lua_setfield(L, -2, "format");
  /* every light userdata shares one metatable; the drop mark is the only
   * one a rule can reach */
  lua_pushlightuserdata(L, (void *)&drop_sentinel);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, drop_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_settop(L, top);
}

/* ---- the environment ----------------------------------------------------- */

static int l_collectgarbage(lua_State *L) {
  const char *opt = luaL_optstring(L, 1, "collect");
  if (strcmp(opt, "count") != 0)
    return luaL_error(L, "collectgarbage(\"%s\") is not allowed in a rule "
                         "(only \"count\")", opt);
  lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT, 0) +
                        (lua_Number)lua_gc(L, LUA_GCCOUNTB, 0) / 1024);
  return 1;
}

/* A C library function that may call back into Lua (upvalue 1), guarded. */
static int l_guarded(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  return guarded_call(L, lua_gettop(L) - 1);
}

/* coroutine.wrap: the function it returns resumes, so guard that too. */
static int l_co_wrap(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  if (lua_pcall(L, lua_gettop(L) - 1, 1, 0) != 0) /* it runs no Lua */
    return lua_error(L);
  lua_pushcclosure(L, l_guarded, 1);
  return 1;
}

/* Replace t[name] (t absolute) by a guarded version. */
static void guard(lua_State *L, int t, const char *name) {
  lua_getfield(L, t, name);
  lua_pushcclosure(L, l_guarded, 1);
  lua_setfield(L, t, name);
}

/* The comparator table.sort uses when the rule gives none: a < b as
 * LuaJIT compares it, charged by the bytes a string comparison reads
 * (long strings sharing a prefix made one sort take seconds). */
static int sort_less(lua_State *L) {
  size_t n = 0, m = 0;

  if (lua_type(L, 1) == LUA_TSTRING && lua_type(L, 2) == LUA_TSTRING) {
    lua_tolstring(L, 1, &n);
    lua_tolstring(L, 2, &m);
  }
  charge(L, 64 + (n < m ? n : m));
  lua_pushboolean(L, lua_lessthan(L, 1, 2));
  return 1;
}

/* Is sorting the table at 1 with LuaJIT's own comparison cheap: few
 * elements and no long strings (then it takes well under a millisecond)? */
static int sort_cheap(lua_State *L) {
  int i, n = (int)lua_objlen(L, 1);

  if (n > SORT_CHEAP_N)
    return 0;
  for (i = 1; i <= n; i++) {
    int big;
    lua_rawgeti(L, 1, i);
    big = lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) > SORT_CHEAP_LEN;
    lua_pop(L, 1);
    if (big)
      return 0;
  }
  return 1;
}

/* table.sort sorts in C, where the count hook cannot stop it: bound n,
 * and unless the sort is cheap, compare through sort_less when the rule
 * gives no comparator (its own is Lua, under the hook). */
static int l_sort(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_objlen(L, 1) > SORT_MAX)
    return luaL_error(L, "table.sort: more than %d elements in a rule",
                      (int)SORT_MAX);
  if ((n < 2 || lua_isnil(L, 2)) && !sort_cheap(L)) {
    lua_settop(L, 1);
    lua_pushcfunction(L, sort_less);
    n = 2;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  guarded_call(L, n);
  return 0;
}

/* table.insert (upvalue 1), but a position below 1 is refused (LuaJIT
 * walks from #t down to it: 2^31 steps for a negative one, 17 s in one
 * call) and the elements it shifts are charged to the budget. */
static int l_insert(lua_State *L) {
  int n, nargs = lua_gettop(L);
  lua_Number at = 0;

  luaL_checktype(L, 1, LUA_TTABLE);
  n = (int)lua_objlen(L, 1);
  if (nargs == 3) {
    at = luaL_checknumber(L, 2);
    if (!(at >= 1 && at <= (lua_Number)INT32_MAX))
      return luaL_argerror(L, 2, "position out of bounds");
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, nargs, 0); /* raw, runs no Lua */
  if (nargs == 3 && (int)at <= n)
    charge(L, (size_t)(n - (int)at + 1) * 16);
  return 0;
}

/* os.date (upvalue 1) with a bounded format: LuaJIT calls strftime once
 * per conversion, so a 2 MB format of "%c" took 0.5 s in one call. */
static int l_date(lua_State *L) {
  int n = lua_gettop(L);

  if (lua_type(L, 1) == LUA_TSTRING && lua_objlen(L, 1) > DATE_FORMAT_MAX)
    return luaL_error(L, "os.date: format longer than %d bytes",
                      DATE_FORMAT_MAX);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, 1); /* runs no Lua */
  return 1;
}

/* Copy n bytes in pieces with a clock check between them: one memcpy of
 * hundreds of MB would run unchecked for as long as it takes. */
static void copy_checked(lua_State *L, char *dst, const char *src, size_t n) {
  while (n > 0) {
    size_t k = n < BIGSTR_PIECE ? n : BIGSTR_PIECE;
    memcpy(dst, src, k);
    dst += k, src += k, n -= k;
    check_cpu(L);
  }
}

/* A C int from argument arg as LuaJIT's lj_lib_checkint makes it
 * (truncation; INT32_MIN for NaN and out of range). */
static int32_t check_int32(lua_State *L, int arg) {
  lua_Number d = luaL_checknumber(L, arg);
  return d >= -2147483648.0 && d < 2147483648.0 ? (int32_t)d : INT32_MIN;
}

/* string.rep (upvalue 1) for results over BIGSTR_MIN: LuaJIT builds one
 * in a single C call (0.9 s for 150 MB with a separator, and all of it
 * done before a result over memory_mb is refused). Here the bytes go
 * into scratch charged to the state first (so a result over the cap
 * fails at once), written by doubling in checked pieces. */
static int l_rep(lua_State *L) {
  size_t ls, lsep = 0, unit, filled, target;
  const char *s = luaL_checklstring(L, 1, &ls);
  int32_t n = check_int32(L, 2);
  const char *sep = luaL_optlstring(L, 3, "", &lsep);
  uint64_t tlen;
  char *buf;

  if (n <= 0 || (ls == 0 && lsep == 0)) {
    lua_pushliteral(L, "");
    return 1;
  }
  tlen = (uint64_t)ls * (uint64_t)n + (uint64_t)lsep * (uint64_t)(n - 1);
  if (tlen < BIGSTR_MIN) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1); /* runs no Lua */
    return 1;
  }
  if (tlen > 0x7fffff00u) { /* LuaJIT's LJ_MAX_STR: a memory error there */
    struct box *b = box_of(L);
    if (!b->oom && b->in_call)
      where_of(L, 0, b->oom_where, sizeof(b->oom_where), b->rule->path);
    b->oom = 1;
    return luaL_error(L, "not enough memory");
  }
  buf = strbuf_get(L, (size_t)tlen);
  unit = ls + lsep;
  target = (size_t)(n - 1) * unit; /* all but the last s: whole units */
  if (target > 0) {
    copy_checked(L, buf, s, ls);
    copy_checked(L, buf + ls, sep, lsep);
  }
  for (filled = target > 0 ? unit : 0; filled < target;) {
    size_t q = filled / unit * unit; /* a whole number of periods back */
    size_t k = target - filled < q ? target - filled : q;
    copy_checked(L, buf + filled, buf + filled - q, k);
    filled += k;
  }
  copy_checked(L, buf + target, s, ls);
  lua_pushlstring(L, buf, (size_t)tlen);
  return 1;
}

/* string.upper, lower and reverse (upvalue 1; upvalue 2 says which) for
 * strings over BIGSTR_MIN, in checked pieces: one call on a 32 MB string
 * ran 35 ms unchecked. ASCII only, as LuaJIT's. */
static int l_strmap(lua_State *L) {
  size_t n, i, done;
  const char *s = luaL_checklstring(L, 1, &n);
  int kind = (int)lua_tointeger(L, lua_upvalueindex(2));
  char *buf;

  if (n < BIGSTR_MIN) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1); /* runs no Lua */
    return 1;
  }
  buf = strbuf_get(L, n);
  for (done = 0; done < n;) {
    size_t end = n - done < BIGSTR_PIECE ? n : done + BIGSTR_PIECE;
    for (i = done; i < end; i++) {
      unsigned char c = (unsigned char)s[i];
      if (kind == 0)
        buf[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
      else if (kind == 1)
        buf[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
      else
        buf[n - 1 - i] = (char)c;
    }
    done = end;
    check_cpu(L);
  }
  lua_pushlstring(L, buf, n);
  return 1;
}

/* table.concat (upvalue 1) over more than CONCAT_PIECE elements: LuaJIT
 * joins them in one C call (24 ms for 8M short strings against a 10 ms
 * budget, and more as memory_mb allows). Here ranges of CONCAT_PIECE
 * elements are joined by the original with a clock check after each,
 * then the parts (a few hundred bytes of table per million elements)
 * in one last call that copies each byte once more. */
static int l_concat(lua_State *L) {
  size_t lsep = 0;
  int32_t i, j, k, nparts = 0;

  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_optlstring(L, 2, "", &lsep);
  i = lua_isnoneornil(L, 3) ? 1 : check_int32(L, 3);
  j = lua_isnoneornil(L, 4) ? (int32_t)lua_objlen(L, 1) : check_int32(L, 4);
  if ((int64_t)j - i < CONCAT_PIECE) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1); /* runs no Lua */
    return 1;
  }
  lua_settop(L, 2);
  lua_createtable(L, (int)(((int64_t)j - i) / CONCAT_PIECE + 1), 0); /* 3 */
  for (k = i;; k += CONCAT_PIECE) {
    int32_t last = (int64_t)j - k < CONCAT_PIECE ? j : k + CONCAT_PIECE - 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushinteger(L, k);
    lua_pushinteger(L, last);
    lua_call(L, 4, 1);
    lua_rawseti(L, 3, ++nparts);
    check_cpu(L);
    if (last == j)
      break;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 3);
  lua_pushvalue(L, 2);
  lua_call(L, 2, 1);
  return 1;
}

/* Replace string.rep, upper, lower and reverse in the table at t. */
static void checked_strings(lua_State *L, int t) {
  static const char *const maps[] = {"upper", "lower", "reverse"};
  int i;

  lua_getfield(L, t, "rep");
  lua_pushcclosure(L, l_rep, 1);
  lua_setfield(L, t, "rep");
  for (i = 0; i < 3; i++) {
    lua_getfield(L, t, maps[i]);
    lua_pushinteger(L, i);
    lua_pushcclosure(L, l_strmap, 2);
    lua_setfield(L, t, maps[i]);
  }
}

static int valid_module(const char *s, size_t n) {
  size_t i;
  if (n == 0 || n > MAX_MODULE_NAME || s[0] == '.' || s[n - 1] == '.')
    return 0;
  for (i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
      return 0;
    if (c == '.' && s[i + 1] == '.')
      return 0;
  }
  return 1;
}

/* Is this chunk bytecode, also behind a "#!" line (which LuaJIT skips)? */
static int is_bytecode(const uint8_t *p, size_t n) {
  size_t i = 0;
  if (n > 0 && p[0] == '#')
    while (i < n && p[i] != '\n')
      i++;
  while (i < n && (p[i] == '\n' || p[i] == '\r'))
    i++;
  return (n > 0 && p[0] == 0x1b) || (i < n && p[i] == 0x1b);
}

/* Read a whole regular file of at most max bytes into out. 0, SL_ENOENT,
 * SL_E2BIG (longer: reading stops there), SL_EINVAL (not a regular file)
 * or another negative code. Rules and their modules are files a rule's
 * author writes: a FIFO named x.lua blocked the engine in open() or
 * read() for good, and a 1 GB file was read whole into C memory before
 * its size was refused. */
static int read_file(struct sl_buf *out, const char *path, size_t max) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  char chunk[16384];
  struct stat st;
  ssize_t n;
  int rc = 0;

  if (fd < 0)
    return errno == ENOENT ? SL_ENOENT : -errno;
  sl_buf_reset(out);
  if (fstat(fd, &st) != 0)
    rc = -errno;
  else if (!S_ISREG(st.st_mode))
    rc = SL_EINVAL;
  else if ((uint64_t)st.st_size > max)
    rc = SL_E2BIG;
  while (rc == 0 && (n = read(fd, chunk, sizeof(chunk))) != 0) {
    if (n < 0) {
      if (errno != EINTR)
        rc = SL_EIO;
    } else if ((size_t)n > max - out->len) {
      rc = SL_E2BIG; /* it grew while we read */
    } else if (sl_buf_append(out, chunk, (size_t)n) != 0) {
      rc = SL_ENOMEM;
    }
  }
  close(fd);
  return rc;
}

/* The text of a module file as this rule version first saw it: read once,
 * then kept, so a rebuilt state runs the same modules and an edit only
 * goes live through a reload. Absence is kept too. 0 with *text set,
 * SL_ENOENT, or another negative code. */
static int module_text(struct sl_rule *r, const char *path,
                       const struct sl_buf **text) {
  struct module *m, *grown;
  int i, rc;

  for (i = 0; i < r->nmods; i++)
    if (strcmp(r->mods[i].path, path) == 0) {
      *text = &r->mods[i].text;
      return r->mods[i].found ? 0 : SL_ENOENT;
    }
  if (r->nmods >= MAX_MODULE_LOOKUPS)
    return SL_E2BIG;
  grown = realloc(r->mods, sizeof(*grown) * (size_t)(r->nmods + 1));
  if (grown == NULL)
    return SL_ENOMEM;
  r->mods = grown;
  m = &r->mods[r->nmods];
  memset(m, 0, sizeof(*m));
  sl_buf_init(&m->text);
  /* kept in C memory: all of them within memory_mb */
  rc = read_file(&m->text, path, ((size_t)r->memory_mb << 20) - r->mods_bytes);
  if ((rc != 0 && rc != SL_ENOENT) || (m->path = strdup(path)) == NULL) {
    sl_buf_close(&m->text);
    return rc ? rc : SL_ENOMEM;
  }
  m->found = rc == 0;
  r->mods_bytes += m->text.len;
  r->nmods++;
  *text = &m->text;
  return rc;
}

/* require(name): pure-Lua modules from scripts_dir and lib_dir, as text,
 * in this sandbox. Upvalue 1 is the table of loaded modules. */
static int l_require(lua_State *L) {
  struct sl_rule *r = box_of(L)->rule;
  size_t n, i;
  const char *name = luaL_checklstring(L, 1, &n);
  const char *dirs[2] = {r->scripts_dir, r->lib_dir};
  char rel[MAX_MODULE_NAME + 16], path[4096];
  int d, v, rc = SL_ENOENT;
  const struct sl_buf *text = NULL;

  lua_settop(L, 1);
  if (!valid_module(name, n))
    return luaL_error(L, "require: invalid module name '%s' (letters, "
                         "digits, '_', '-' and dots only)", msg_str(L, 1));
  lua_pushvalue(L, 1);
  lua_rawget(L, lua_upvalueindex(1));
  if (lua_type(L, -1) == LUA_TLIGHTUSERDATA)
    return luaL_error(L, "require: module '%s' requires itself", name);
  if (!lua_isnil(L, -1))
    return 1;
  lua_pop(L, 1);
  for (i = 0; i <= n; i++)
    rel[i] = name[i] == '.' ? '/' : name[i];
  for (d = 0; d < 2 && rc == SL_ENOENT; d++) {
    if (dirs[d] == NULL)
      continue;
    for (v = 0; v < 2 && rc == SL_ENOENT; v++) {
      snprintf(path, sizeof(path), v ? "%s/%s/init.lua" : "%s/%s.lua", dirs[d],
               rel);
      rc = module_text(r, path, &text);
    }
  }
  if (rc == SL_ENOENT)
    return luaL_error(L, "module '%s' not found: a rule may require only "
                         "pure-Lua modules from %s%s%s", name,
                      r->scripts_dir ? r->scripts_dir : "",
                      r->scripts_dir && r->lib_dir ? " and " : "",
                      r->lib_dir ? r->lib_dir : "(no module dirs set)");
  if (rc == SL_E2BIG)
    return luaL_error(L, "require: %s: over the limits (at most %d module "
                         "paths per rule, each within memory_mb)", path,
                      MAX_MODULE_LOOKUPS);
  if (rc != 0)
    return luaL_error(L, "require: cannot read %s: %s", path,
                      rc == SL_EINVAL ? "not a regular file" : strerror(-rc));
  if (is_bytecode(text->data, text->len))
    return luaL_error(L, "%s: bytecode is not allowed", path);
  lua_pushfstring(L, "@%s", path);
  if (luaL_loadbufferx(L, (const char *)text->data, text->len,
                       lua_tostring(L, -1), "t") != 0)
    return lua_error(L);
  lua_pushvalue(L, 1);
  lua_pushlightuserdata(L, (void *)&drop_sentinel); /* "loading" */
  lua_rawset(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  cdepth_enter(L, box_of(L));
  if (lua_pcall(L, 1, 1, 0) != 0) {
    box_of(L)->cdepth--;
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    lua_rawset(L, lua_upvalueindex(1));
    return lua_error(L);
  }
  box_of(L)->cdepth--;
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -2);
  lua_rawset(L, lua_upvalueindex(1));
  return 1;
}

/* Copy the fields of the table at src into a new table, skipping `skip`
 * (NULL-terminated names). Leaves the copy on top. */
static void copy_table(lua_State *L, int src, const char *const *skip) {
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, src)) {
    const char *const *s;
    int skipped = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (s = skip; s && *s; s++)
        if (strcmp(lua_tostring(L, -2), *s) == 0)
          skipped = 1;
    if (skipped) {
      lua_pop(L, 1);
      continue;
    }
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
}

static void open_lib(lua_State *L, lua_CFunction open, const char *name) {
  lua_pushcfunction(L, open);
  lua_pushstring(L, name);
  if (lua_pcall(L, 1, 0, 0) != 0)
    lua_error(L);
}

/* xpcall in Lua on top of pcall: the handler runs after the stack has
 * unwound. LuaJIT runs an xpcall handler before unwinding, and when the
 * error came from the count hook its hooks are still off then, so a
 * handler that loops could never be stopped. Rules have no debug library,
 * so the handler loses nothing it could have used. */
static const char xpcall_src[] =
    "local pcall, type, error = pcall, type, error\n"
    "local function finish(handler, ok, ...)\n"
    "  if ok then return true, ... end\n"
    "  local hok, v = pcall(handler, (...))\n"
    "  return false, v\n"
    "end\n"
    "return function(f, handler, ...)\n"
    "  if type(handler) ~= 'function' then\n"
    "    error(\"bad argument #2 to 'xpcall' (function expected)\", 2)\n"
    "  end\n"
    "  return finish(handler, pcall(f, ...))\n"
    "end\n";

static int new_ref(lua_State *L) {
  lua_pushboolean(L, 0);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Build the sandbox in a fresh state. Run with lua_cpcall; ud is the box. */
static int box_setup(lua_State *L) {
  static const char *const base_ok[] = {
      "assert", "error", "ipairs", "next", "pairs", "pcall",
      "select", "tonumber", "tostring", "type", "unpack", "rawequal",
      "rawget", "rawset", "setmetatable", "getmetatable", "_VERSION", NULL};
  static const char *const no_dump[] = {"dump", NULL};
  static const char *const no_sort[] = {"sort", NULL};
  struct box *b = lua_touserdata(L, 1);
  const char *const *name;
  int g0, env, str;

  lua_settop(L, 0);
  open_lib(L, luaopen_base, "");
  open_lib(L, luaopen_string, LUA_STRLIBNAME);
  open_lib(L, luaopen_table, LUA_TABLIBNAME);
  open_lib(L, luaopen_math, LUA_MATHLIBNAME);
  open_lib(L, luaopen_os, LUA_OSLIBNAME);
  open_lib(L, luaopen_bit, LUA_BITLIBNAME);
  lua_pushvalue(L, LUA_GLOBALSINDEX);
  g0 = lua_gettop(L);
  lua_newtable(L);
  env = lua_gettop(L);

  for (name = base_ok; *name; name++) {
    lua_getfield(L, g0, *name);
    lua_setfield(L, env, *name);
  }
  lua_pushvalue(L, env);
  lua_setfield(L, env, "_G");
  lua_pushcfunction(L, l_collectgarbage);
  lua_setfield(L, env, "collectgarbage");
  lua_pushcfunction(L, l_print);
  lua_setfield(L, env, "print");
  if (luaL_loadbuffer(L, xpcall_src, sizeof(xpcall_src) - 1, "=xpcall") != 0 ||
      lua_pcall(L, 0, 1, 0) != 0)
    lua_error(L);
  lua_setfield(L, env, "xpcall");

  lua_getfield(L, g0, "coroutine");
  copy_table(L, lua_gettop(L), NULL);
  guard(L, lua_gettop(L), "resume");
  lua_getfield(L, -1, "wrap");
  lua_pushcclosure(L, l_co_wrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_setfield(L, env, "coroutine");
  lua_pop(L, 1);

  /* string: one copy for rules, another behind the string metatable */
  lua_getfield(L, g0, "string");
  str = lua_gettop(L);
  copy_table(L, str, no_dump);
#ifdef HAVE_PATTERN
  sl_pattern_install(L, -1, check_cpu);
#endif
  guard(L, lua_gettop(L), "gsub");
  guard(L, lua_gettop(L), "format");
  checked_strings(L, lua_gettop(L));
  lua_setfield(L, env, "string");
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  copy_table(L, str, no_dump);
#ifdef HAVE_PATTERN
  sl_pattern_install(L, -1, check_cpu);
#endif
  guard(L, lua_gettop(L), "gsub");
  guard(L, lua_gettop(L), "format");
  checked_strings(L, lua_gettop(L));
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 3);

  lua_getfield(L, g0, "table");
  copy_table(L, lua_gettop(L), no_sort);
  lua_getfield(L, -2, "sort");
  lua_pushcclosure(L, l_sort, 1);
  lua_setfield(L, -2, "sort");
  lua_getfield(L, -2, "insert");
  lua_pushcclosure(L, l_insert, 1);
  lua_setfield(L, -2, "insert");
  lua_getfield(L, -2, "concat");
  lua_pushcclosure(L, l_concat, 1);
  lua_setfield(L, -2, "concat");
  lua_setfield(L, env, "table");
  lua_pop(L, 1);

  lua_getfield(L, g0, "math");
  copy_table(L, lua_gettop(L), NULL);
  lua_setfield(L, env, "math");
  lua_pop(L, 1);

  lua_getfield(L, g0, "bit");
  copy_table(L, lua_gettop(L), NULL);
  lua_setfield(L, env, "bit");
  lua_pop(L, 1);

  lua_getfield(L, g0, "os");
  lua_createtable(L, 0, 3);
  lua_getfield(L, -2, "time"); /* reads fields: runs __index */
  lua_pushcclosure(L, l_guarded, 1);
  lua_setfield(L, -2, "time");
  lua_getfield(L, -2, "clock");
  lua_setfield(L, -2, "clock");
  lua_getfield(L, -2, "date");
  lua_pushcclosure(L, l_date, 1);
  lua_setfield(L, -2, "date");
  lua_setfield(L, env, "os");
  lua_pop(L, 1);

  /* require and its table of loaded modules */
  lua_newtable(L);
  lua_pushcclosure(L, l_require, 1);
  lua_setfield(L, env, "require");

  open_sluice(L, env);
  open_event(L, b);
  lua_pushcfunction(L, on_error);
  b->ref_handler = luaL_ref(L, LUA_REGISTRYINDEX);
  b->ref_on_event = new_ref(L);
  b->ref_module = new_ref(L);
  b->ref_snapshot = new_ref(L);
  b->ref_restore = new_ref(L);
  b->ref_topic = new_ref(L);
  b->ref_key = new_ref(L);
  b->ref_headers = new_ref(L);
  b->ref_payload = new_ref(L);
  b->ref_drop = new_ref(L);
  b->ref_tmp = new_ref(L);

  hide_addresses(L, g0, env); /* after the guards: it wraps them */

  /* defence in depth: the old globals lose what a rule must not have,
   * although nothing reachable from the sandbox leads to them */
  {
    static const char *const bad[] = {"load", "loadstring", "dofile",
                                      "loadfile", "getfenv", "setfenv",
                                      "newproxy", "collectgarbage", "os",
                                      "gcinfo", "module", NULL};
    for (name = bad; *name; name++) {
      lua_pushnil(L);
      lua_setfield(L, g0, *name);
    }
  }
  lua_pushvalue(L, env);
  lua_replace(L, LUA_GLOBALSINDEX);
  lua_checkstack(L, LUA_MINSTACK + SLOT_BASE);
  return 0;
}

/* Check the table the chunk returned (in ref_tmp) against the contract
 * and keep its parts. Run with lua_cpcall; ud is the box. */
/* t[name] of the rule table (index 1), which may be absent or a function,
 * into the registry slot ref; raises "path:line: name must be a function". */
static void optional_fn(lua_State *L, struct sl_rule *r, int line,
                        const char *name, int ref) {
  lua_pushstring(L, name);
  lua_rawget(L, 1); /* raw: C never runs rule code (no __index) */
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION)
    luaL_error(L, "%s:%d: %s must be a function (got %s)", r->path, line,
               name, luaL_typename(L, -1));
  set_ref(L, ref, -1);
}

static int box_contract(lua_State *L) {
  struct box *b = lua_touserdata(L, 1);
  struct sl_rule *r = b->rule;
  int line = b->last_line, i, n;

  lua_settop(L, 0);
  push_ref(L, b->ref_tmp);
  if (!lua_istable(L, 1))
    return luaL_error(L, "%s:%d: the rule must return a table with "
                         "on_event (got %s)", r->path, line,
                      lua_typename(L, b->ret_type));
  set_ref(L, b->ref_module, 1);
  lua_pushliteral(L, "on_event");
  lua_rawget(L, 1);
  if (lua_type(L, -1) != LUA_TFUNCTION)
    return luaL_error(L, "%s:%d: on_event must be a function (got %s)",
                      r->path, line, luaL_typename(L, -1));
  set_ref(L, b->ref_on_event, -1);
  optional_fn(L, r, line, "snapshot", b->ref_snapshot);
  optional_fn(L, r, line, "restore", b->ref_restore);
  optional_fn(L, r, line, "on_start", b->ref_tmp);

  lua_settop(L, 1);
  lua_pushliteral(L, "topics");
  lua_rawget(L, 1); /* 2 */
  if (lua_isnil(L, 2))
    return 0;
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);
    lua_replace(L, 2);
  }
  if (!lua_istable(L, 2))
    return luaL_error(L, "%s:%d: topics must be a string or a list of "
                         "strings (got %s)", r->path, line,
                      luaL_typename(L, 2));
  n = (int)lua_objlen(L, 2);
  lua_pushnil(L);
  i = 0;
  while (lua_next(L, 2)) {
    i++;
    lua_pop(L, 1);
  }
  if (n == 0 || i != n)
    return luaL_error(L, "%s:%d: topics must be a non-empty list of "
                         "strings", r->path, line);
  b->topics = calloc((size_t)n, sizeof(char *));
  if (b->topics == NULL)
    return luaL_error(L, "not enough memory");
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING || lua_objlen(L, -1) == 0)
      return luaL_error(L, "%s:%d: topics[%d] must be a non-empty string "
                           "(got %s)", r->path, line, i,
                        luaL_typename(L, -1));
    b->topics[i - 1] = strdup(lua_tostring(L, -1));
    if (b->topics[i - 1] == NULL)
      return luaL_error(L, "not enough memory");
    b->ntopics = i;
    lua_pop(L, 1);
  }
  return 0;
}

static void box_free(struct box *b) {
  int i;

  if (b == NULL)
    return;
  strbuf_release(b);
  if (b->L)
    lua_close(b->L);
  for (i = 0; i < b->ntopics; i++)
    free(b->topics[i]);
  free(b->topics);
  free(b);
}

static int on_panic(lua_State *L) {
  fprintf(stderr, "sluice: unprotected Lua error in a rule state: %s\n",
          lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
  abort();
}

static void sha256_hex(const uint8_t *p, size_t n, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0, i;

  if (EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) != 1)
    len = 0;
  for (i = 0; i < len && i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", md[i]);
  out[2 * i] = 0;
}

/* Build a complete box from the rule's source (read once by sl_rule_load
 * and kept: a rebuild never rereads the file): state, sandbox, chunk,
 * contract, on_start. NULL with err filled ("path:line: message"). */
static struct box *box_new(struct sl_rule *r, char *err, size_t errlen) {
  struct box *b;
  lua_State *L;
  char msg[512], where[256];
  int rc, st;
  size_t i;

  if (!r->src_read) {
    /* kept in C memory for rebuilds */
    rc = read_file(&r->src, r->source, (size_t)r->memory_mb << 20);
    if (rc != 0) {
      snprintf(err, errlen, "%s:0: cannot read the rule: %s", r->path,
               rc == SL_E2BIG   ? "larger than memory_mb"
               : rc == SL_EINVAL ? "not a regular file"
                                 : strerror(-rc));
      return NULL;
    }
    r->src_read = 1;
    sha256_hex(r->src.data, r->src.len, r->hash);
  }
  if (is_bytecode(r->src.data, r->src.len)) {
    snprintf(err, errlen, "%s:1: bytecode is not allowed, rules are loaded "
             "as text", r->path);
    return NULL;
  }
  b = calloc(1, sizeof(*b));
  if (b == NULL) {
    snprintf(err, errlen, "%s:0: not enough memory", r->path);
    return NULL;
  }
  b->rule = r;
  b->limit = (size_t)r->memory_mb << 20;
  b->last_line = 1;
  for (i = 0; i < r->src.len; i++)
    if (r->src.data[i] == '\n' && i + 1 < r->src.len)
      b->last_line++;
  L = lua_newstate(box_alloc, b);
  if (L == NULL) {
    snprintf(err, errlen, "%s:0: cannot create a Lua state within "
             "memory_mb=%u", r->path, (unsigned)r->memory_mb);
    goto fail;
  }
  b->L = L;
  lua_atpanic(L, on_panic);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  {
    /* the environment is the engine's own code, not the rule's: it gets a
     * budget of its own, so a loaded host never fails a load that has a
     * small cpu_budget_ms (seen: 10 ms passed while the tests ran beside
     * two builds) */
    uint32_t budget = r->cpu_budget_ms;
    int st;
    if (r->cpu_budget_ms < SETUP_BUDGET_MS)
      r->cpu_budget_ms = SETUP_BUDGET_MS;
    st = box_cpcall(b, box_setup, b);
    r->cpu_budget_ms = budget;
    if (st != 0) {
      snprintf(err, errlen, "%s:0: cannot set up the sandbox: %s", r->path,
               r->err_msg);
      goto fail;
    }
  }
  /* fixed stack slots; pushing from the registry does not allocate */
  lua_settop(L, 0);
  push_ref(L, b->ref_handler);
  lua_pushnil(L);
  push_ref(L, b->ref_event);
  set_hook(b, HOOK_COUNT);

  /* the chunk, as text, under the budget */
  lua_pushfstring(L, "@%s", r->path);
  st = luaL_loadbufferx(L, (const char *)r->src.data, r->src.len,
                        lua_tostring(L, -1), "t");
  if (st != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    goto fail;
  }
  lua_remove(L, -2);
  st = box_call(b, 0, 1);
  if (st != 0) {
    describe(b, st, err, errlen, where, sizeof(where), NULL, 0);
    goto fail;
  }
  b->ret_type = lua_type(L, -1);
  set_ref(L, b->ref_tmp, -1);
  lua_pop(L, 1);
  if (box_cpcall(b, box_contract, b) != 0) {
    snprintf(err, errlen, "%s", r->err_msg);
    goto fail;
  }
  push_ref(L, b->ref_on_event);
  lua_replace(L, SLOT_ON_EVENT);
  push_ref(L, b->ref_tmp); /* on_start or false */
  if (lua_isfunction(L, -1)) {
    st = box_call(b, 0, 0);
    if (st != 0) {
      describe(b, st, msg, sizeof(msg), where, sizeof(where), NULL, 0);
      snprintf(err, errlen, "%s", msg);
      goto fail;
    }
  }
  lua_settop(L, SLOT_BASE);
  return b;

fail:
  box_free(b);
  return NULL;
}

/* Replace a broken box with a new one from the kept source. */
static int rule_rebuild(struct sl_rule *r) {
  char err[512];
  struct box *b = box_new(r, err, sizeof(err));

  if (b == NULL) {
    if (r->host.log)
      r->host.log(r->host.data, r, 3, err, NULL, 0);
    return SL_EINVAL;
  }
  box_free(r->box);
  r->box = b;
  r->rebuilds++;
  return 0;
}

/* ---- the public API ------------------------------------------------------ */

struct sl_rule *sl_rule_load(const char *path,
                             const struct sl_rule_limits *limits,
                             const struct sl_rule_host *host, char *err,
                             size_t errlen) {
  struct sl_rule *r;

  r = calloc(1, sizeof(*r));
  if (r == NULL)
    goto fail_alloc;
  r->source = strdup(path);
  if (limits && limits->display_root) {
    size_t n = strlen(limits->display_root);
    if (strncmp(path, limits->display_root, n) == 0 && path[n] == '/' &&
        path[n + 1] != '\0')
      path += n + 1;
  }
  r->path = strdup(path);
  if (r->path == NULL || r->source == NULL)
    goto fail_alloc;
  r->cpu_budget_ms = limits && limits->cpu_budget_ms ? limits->cpu_budget_ms
                                                     : 10;
  r->memory_mb = limits && limits->memory_mb ? limits->memory_mb : 64;
  r->max_event_bytes = limits && limits->max_event_bytes
                           ? limits->max_event_bytes : 1u << 20;
  if (limits && limits->scripts_dir &&
      (r->scripts_dir = strdup(limits->scripts_dir)) == NULL)
    goto fail_alloc;
  if (limits && limits->lib_dir && (r->lib_dir = strdup(limits->lib_dir)) == NULL)
    goto fail_alloc;
  if (host)
    r->host = *host;
  sl_idgen_init(&r->idgen);
  if (getrandom(&r->seed1, sizeof(r->seed1), 0) != sizeof(r->seed1) ||
      getrandom(&r->seed2, sizeof(r->seed2), 0) != sizeof(r->seed2)) {
    r->seed1 = sl_mono_ns() ^ (uintptr_t)r;
    r->seed2 = mix64(r->seed1 + (uint64_t)sl_now_ns());
  }
  r->wall0_ns = sl_now_ns();
  r->mono0_ns = rule_mono_ns(r);
  sl_buf_init(&r->routes);
  sl_buf_init(&r->buf1);
  sl_buf_init(&r->buf2);
  sl_buf_init(&r->src);
  r->box = box_new(r, err, errlen);
  if (r->box == NULL)
    goto fail;
  return r;

fail_alloc:
  snprintf(err, errlen, "%s:0: not enough memory", path);
fail:
  sl_rule_free(r);
  return NULL;
}

void sl_rule_free(struct sl_rule *r) {
  int i;

  if (r == NULL)
    return;
  box_free(r->box);
  for (i = 0; i < r->ncounters; i++) {
    free(r->counters[i].name);
    free(r->counters[i].labels);
  }
  free(r->counters);
  lru_close(&r->rate);
  lru_close(&r->seen);
  sl_buf_close(&r->routes);
  sl_buf_close(&r->buf1);
  sl_buf_close(&r->buf2);
  sl_buf_close(&r->src);
  for (i = 0; i < r->nmods; i++) {
    free(r->mods[i].path);
    sl_buf_close(&r->mods[i].text);
  }
  free(r->mods);
  free(r->scripts_dir);
  free(r->lib_dir);
  free(r->path);
  free(r->source);
  free(r);
}

/* Does s[0..n) match glob p, where '*' matches any run of characters?
 * The router's matcher: linear in topic and glob. */
static int glob_match(const char *p, const char *s, size_t n) {
  return sl_router_glob(p, strlen(p), s, n);
}

int sl_rule_matches(const struct sl_rule *r, const char *topic, size_t len) {
  const struct box *b = r->box;
  int i;

  if (b->ntopics == 0)
    return 1;
  for (i = 0; i < b->ntopics; i++)
    if (glob_match(b->topics[i], topic, len))
      return 1;
  return 0;
}

static void decide_error(struct sl_rule_decision *d, enum sl_rule_error kind,
                         const char *where, const char *fmt, ...)
    SL_PRINTF(4, 5);

static void decide_error(struct sl_rule_decision *d, enum sl_rule_error kind,
                         const char *where, const char *fmt, ...) {
  va_list ap;

  d->verdict = SL_RULE_ERROR;
  d->error = kind;
  d->nroutes = 0;
  va_start(ap, fmt);
  vsnprintf(d->message, sizeof(d->message), fmt, ap);
  va_end(ap);
  snprintf(d->where, sizeof(d->where), "%s", where);
}

/* Turn on_event's return value (on top) into a decision. No allocation
 * in the state: only reads. */
static void take_result(struct box *b, struct sl_rule_decision *d) {
  struct sl_rule *r = b->rule;
  lua_State *L = b->L;
  size_t offs[SL_RULE_MAX_ROUTES], n, i, count;
  char where[300];
  const char *s;
  lua_Debug ar;

  r->event_deadline = b->deadline; /* for finish() */
  switch (lua_type(L, -1)) {
  case LUA_TNIL:
    return;
  case LUA_TSTRING:
    s = lua_tolstring(L, -1, &n);
    if (n == 0 || n > ROUTE_NAME_MAX || memchr(s, 0, n) != NULL)
      break; /* names go on as C strings: "a\0x" would route to a */
    sl_buf_reset(&r->routes);
    if (sl_buf_append(&r->routes, s, n + 1) != 0)
      goto nomem;
    d->verdict = SL_RULE_ROUTE;
    d->nroutes = 1;
    d->routes[0] = (const char *)r->routes.data;
    return;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, -1) != &drop_sentinel)
      break;
    push_ref(L, b->ref_drop);
    d->verdict = SL_RULE_DROP;
    if (lua_type(L, -1) == LUA_TSTRING) { /* copy only what fits */
      size_t n = lua_objlen(L, -1);
      snprintf(d->message, sizeof(d->message), "%.*s",
               (int)(n < sizeof(d->message) ? n : sizeof(d->message)),
               lua_tostring(L, -1));
    } else {
      snprintf(d->message, sizeof(d->message), "dropped");
    }
    lua_pop(L, 1);
    return;
  case LUA_TTABLE:
    count = lua_objlen(L, -1);
    if (count == 0 || count > SL_RULE_MAX_ROUTES)
      break;
    sl_buf_reset(&r->routes);
    for (i = 0; i < count; i++) {
      lua_rawgeti(L, -1, (int)i + 1);
      if (lua_type(L, -1) != LUA_TSTRING || lua_objlen(L, -1) == 0 ||
          lua_objlen(L, -1) > ROUTE_NAME_MAX ||
          memchr(lua_tostring(L, -1), 0, lua_objlen(L, -1)) != NULL) {
        lua_pop(L, 1);
        count = 0;
        break;
      }
      s = lua_tolstring(L, -1, &n);
      offs[i] = r->routes.len;
      if (sl_buf_append(&r->routes, s, n + 1) != 0) {
        lua_pop(L, 1);
        goto nomem;
      }
      lua_pop(L, 1);
    }
    if (count == 0)
      break;
    d->verdict = SL_RULE_ROUTE;
    d->nroutes = (int)count;
    for (i = 0; i < count; i++)
      d->routes[i] = (const char *)r->routes.data + offs[i];
    return;
  default:
    break;
  }
  /* a bad value: name it, at the line where on_event is defined */
  lua_pushvalue(L, SLOT_ON_EVENT);
  if (lua_getinfo(L, ">S", &ar))
    snprintf(where, sizeof(where), "%s:%d", src_of(&ar), ar.linedefined);
  else
    snprintf(where, sizeof(where), "%s", r->path);
  if (lua_type(L, -1) == LUA_TTABLE) {
    count = lua_objlen(L, -1);
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned %s (a list of 1..%d non-empty "
                 "output names expected, each at most %d bytes)", where,
                 count > SL_RULE_MAX_ROUTES ? "too many routes"
                 : count == 0 ? "an empty or non-list table"
                              : "a list with a non-string or empty entry, or "
                                "one too long or with a NUL byte",
                 SL_RULE_MAX_ROUTES, ROUTE_NAME_MAX);
  } else if (lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) > 0 &&
             lua_objlen(L, -1) <= ROUTE_NAME_MAX) {
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned an output name with a NUL byte",
                 where);
  } else if (lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) > 0) {
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned an output name of %d bytes (at most "
                 "%d)", where, (int)lua_objlen(L, -1), ROUTE_NAME_MAX);
  } else {
    decide_error(d, SL_RULE_ERR_RUNTIME, where,
                 "%s: on_event returned %s %s (expected nil, an output name, "
                 "a list of output names or sluice.drop(reason))", where,
                 lua_type(L, -1) == LUA_TSTRING ? "an empty" : "a",
                 luaL_typename(L, -1));
  }
  return;
nomem:
  decide_error(d, SL_RULE_ERR_MEMORY, r->path, "%s: not enough memory",
               r->path);
}

static void clear_event(struct box *b) {
  lua_State *L = b->L;

  /* the slots exist, so these stores do not allocate */
  if (b->evflags & EV_TOPIC) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_topic);
  }
  if (b->evflags & EV_KEY) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_key);
  }
  if (b->evflags & EV_HEADERS) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_headers);
  }
  if (b->evflags & EV_PAYLOAD) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, b->ref_payload);
  }
  b->evflags = 0;
  b->ev = NULL;
}

void sl_rule_run(struct sl_rule *r, struct sl_event *ev,
                 struct sl_rule_decision *d) {
  struct box *b = r->box;
  lua_State *L = b->L;
  int st, rebuild = 0;

  d->verdict = SL_RULE_PASS;
  d->error = SL_RULE_ERR_NONE;
  d->nroutes = 0;
  d->message[0] = 0;
  d->where[0] = 0;
  d->traceback[0] = 0;
  d->changed = NULL;
  if (sl_unlikely(b->in_call)) {
    decide_error(d, SL_RULE_ERR_RUNTIME, r->path,
                 "%s: the rule was called again from inside itself", r->path);
    return;
  }
  b->ev = ev;
  b->evflags = 0;
  lua_pushvalue(L, SLOT_ON_EVENT);
  lua_pushvalue(L, SLOT_EVENT);
  st = box_call(b, 1, 1);
  if (sl_likely(st == 0 && !b->cpu_hit)) {
    take_result(b, d);
    if (b->evflags && d->verdict != SL_RULE_DROP &&
        d->verdict != SL_RULE_ERROR) {
      b->changed = NULL;
      lua_settop(L, SLOT_BASE);
      st = box_cpcall(b, finish, b);
      if (st != 0) {
        enum sl_rule_error kind = b->cpu_hit ? SL_RULE_ERR_CPU
                                  : st == LUA_ERRMEM ? SL_RULE_ERR_MEMORY
                                                     : SL_RULE_ERR_RUNTIME;
        decide_error(d, kind, r->err_where, "%s", r->err_msg);
        if (kind == SL_RULE_ERR_MEMORY && !box_usable_after_oom(b))
          rebuild = 1;
      } else {
        d->changed = b->changed;
      }
      b->changed = NULL;
    }
  } else {
    enum sl_rule_error kind =
        describe(b, st, d->message, sizeof(d->message), d->where,
                 sizeof(d->where), d->traceback, sizeof(d->traceback));
    d->verdict = SL_RULE_ERROR;
    d->error = kind;
    d->nroutes = 0;
    if (st == LUA_ERRERR ||
        (kind == SL_RULE_ERR_MEMORY && !box_usable_after_oom(b)))
      rebuild = 1;
  }
  lua_settop(L, SLOT_BASE);
  clear_event(b);
  if (rebuild)
    rule_rebuild(r);
  else if (sl_unlikely(b->used > b->limit / 4 * 3 || b->gc_busy))
    box_gc_slice(b);
}

int64_t sl_rule_next_timer(const struct sl_rule *r) {
  const struct box *b = r->box;
  int64_t best = -1;
  int i;

  for (i = 0; i < b->ntimers; i++)
    if (best < 0 || b->timers[i].due_ms < best)
      best = b->timers[i].due_ms;
  return best;
}

/* May a timer error be logged now? Then *suppressed says how many were
 * not since the last one. */
static int timer_log_allow(struct sl_rule *r, uint64_t *suppressed) {
  uint64_t now = sl_mono_ns();
  if (now - r->timer_log_start_ns >= TIMER_LOG_WINDOW_NS) {
    r->timer_log_start_ns = now;
    r->timer_log_n = 0;
  }
  if (r->timer_log_n >= TIMER_LOG_BURST) {
    r->timer_log_suppressed++;
    return 0;
  }
  r->timer_log_n++;
  *suppressed = r->timer_log_suppressed;
  r->timer_log_suppressed = 0;
  return 1;
}

/* Timer runs are bounded three ways so a timer can never starve the loop:
 * one call runs timers for at most cpu_budget_ms (the rest stay due for
 * the host's next turn), a timer is next due no sooner than its interval
 * after its run ended and never sooner than its run took (timers get at
 * most half the time), and errors are logged at a limited rate. */
void sl_rule_run_timers(struct sl_rule *r, int64_t now_ms) {
  struct box *b = r->box;
  int i, k, n = b->ntimers, st;
  uint64_t t0 = sl_mono_ns(),
           cap = (uint64_t)r->cpu_budget_ms * 1000000u;

  if (b->in_call)
    return;
  for (k = 0; k < n && r->box == b; k++) {
    struct timer *t;
    int64_t start, end, took;
    i = (b->timer_next + k) % n; /* start after the last one run */
    t = &b->timers[i];
    if (t->due_ms > now_ms)
      continue;
    if (sl_mono_ns() - t0 >= cap)
      break; /* enough for this turn; the rest stay due */
    start = (int64_t)(rule_mono_ns(r) / 1000000u);
    t->due_ms += t->every_ms; /* set before the call: it may fail */
    if (t->due_ms <= now_ms) /* fell behind: skip, do not burst */
      t->due_ms = now_ms + t->every_ms;
    b->timer_next = (i + 1) % n;
    push_ref(b->L, t->ref);
    st = box_call(b, 0, 0);
    end = (int64_t)(rule_mono_ns(r) / 1000000u);
    took = end - start;
    if (r->box == b && (t->due_ms <= end || took >= t->every_ms))
      t->due_ms = end + (took > t->every_ms ? took : t->every_ms);
    if (st != 0) {
      char msg[512], where[256], line[1500];
      uint64_t suppressed = 0;
      enum sl_rule_error kind =
          describe(b, st, msg, sizeof(msg), where, sizeof(where), NULL, 0);
      lua_settop(b->L, SLOT_BASE);
      r->timer_errors++;
      if (r->host.log && timer_log_allow(r, &suppressed)) {
        snprintf(line, sizeof(line), "timer: %s%s%s", msg,
                 r->err_set && kind == SL_RULE_ERR_RUNTIME ? "\n" : "",
                 r->err_set && kind == SL_RULE_ERR_RUNTIME ? r->err_tb : "");
        if (suppressed)
          snprintf(line + strlen(line), sizeof(line) - strlen(line),
                   "\n(%llu more timer errors of this rule were not logged)",
                   (unsigned long long)suppressed);
        r->host.log(r->host.data, r, 3, line, NULL, 0);
      }
      if (st == LUA_ERRERR ||
          (kind == SL_RULE_ERR_MEMORY && !box_usable_after_oom(b))) {
        rule_rebuild(r);
        break; /* b may be gone; the new state has its own timers */
      }
    }
    lua_settop(b->L, SLOT_BASE);
  }
}

struct codec_job {
  struct box *b;
  struct sl_buf *out;
  const uint8_t *p;
  size_t len;
  int nil; /* the decoded value is nil (the slot holds false) */
};

static int encode_tmp(lua_State *L) {
  struct codec_job *j = lua_touserdata(L, 1);
  push_ref(L, j->b->ref_tmp);
  /* bounded like the state itself: a value sharing one big string in many
   * slots must not grow C memory past memory_mb */
  sl_luacodec_encode_max(L, -1, j->out, check_cpu, j->b->limit,
                         "snapshot()'s value (memory_mb)");
  return 0;
}

static int decode_tmp(lua_State *L) {
  struct codec_job *j = lua_touserdata(L, 1);
  sl_luacodec_push(L, j->p, j->len, check_cpu);
  j->nil = lua_isnil(L, -1);
  set_ref(L, j->b->ref_tmp, -1);
  return 0;
}

static int handover_error(struct box *b, int st, const char *what, char *err,
                          size_t errlen) {
  char msg[512], where[256];
  enum sl_rule_error kind;

  kind = describe(b, st, msg, sizeof(msg), where, sizeof(where), NULL, 0);
  snprintf(err, errlen, "%s (in %s)", msg, what);
  lua_settop(b->L, SLOT_BASE);
  return kind == SL_RULE_ERR_CPU ? SL_ETIMEDOUT
         : kind == SL_RULE_ERR_MEMORY ? SL_ENOMEM : SL_EINVAL;
}

int sl_rule_snapshot(struct sl_rule *r, struct sl_buf *out, char *err,
                     size_t errlen) {
  struct box *b = r->box;
  struct codec_job j = {b, out, NULL, 0, 0};
  size_t start = out->len;
  int st;

  push_ref(b->L, b->ref_snapshot);
  if (!lua_isfunction(b->L, -1)) {
    lua_settop(b->L, SLOT_BASE);
    return SL_ENOENT;
  }
  st = box_call(b, 0, 1);
  if (st != 0)
    return handover_error(b, st, "snapshot", err, errlen);
  if (lua_isnil(b->L, -1)) {
    lua_settop(b->L, SLOT_BASE);
    return sl_codec_put_nil(out) == 0 ? 0 : SL_ENOMEM;
  }
  lua_rawseti(b->L, LUA_REGISTRYINDEX, b->ref_tmp);
  st = box_cpcall(b, encode_tmp, &j);
  lua_pushboolean(b->L, 0);
  lua_rawseti(b->L, LUA_REGISTRYINDEX, b->ref_tmp);
  lua_settop(b->L, SLOT_BASE);
  if (st != 0) {
    out->len = start;
    snprintf(err, errlen, "%s: snapshot() returned a value msgpack cannot "
             "hold: %s", r->path, r->err_msg);
    return st == LUA_ERRMEM ? SL_ENOMEM : SL_EINVAL;
  }
  return 0;
}

int sl_rule_restore(struct sl_rule *r, const uint8_t *p, size_t len,
                    char *err, size_t errlen) {
  struct box *b = r->box;
  struct codec_job j = {b, NULL, p, len, 0};
  int st;

  push_ref(b->L, b->ref_restore);
  if (!lua_isfunction(b->L, -1)) {
    lua_settop(b->L, SLOT_BASE);
    return SL_ENOENT;
  }
  st = box_cpcall(b, decode_tmp, &j);
  if (st != 0) {
    lua_settop(b->L, SLOT_BASE);
    snprintf(err, errlen, "%s: cannot decode the snapshot: %s", r->path,
             r->err_msg);
    return st == LUA_ERRMEM ? SL_ENOMEM : SL_EINVAL;
  }
  if (j.nil)
    lua_pushnil(b->L);
  else
    push_ref(b->L, b->ref_tmp);
  st = box_call(b, 1, 0);
  lua_pushboolean(b->L, 0);
  lua_rawseti(b->L, LUA_REGISTRYINDEX, b->ref_tmp);
  if (st != 0)
    return handover_error(b, st, "restore", err, errlen);
  lua_settop(b->L, SLOT_BASE);
  return 0;
}

void sl_rule_set_host(struct sl_rule *r, const struct sl_rule_host *host) {
  r->host = *host;
}

int sl_rule_has_restore(struct sl_rule *r) {
  int yes;
  push_ref(r->box->L, r->box->ref_restore);
  yes = lua_isfunction(r->box->L, -1);
  lua_pop(r->box->L, 1);
  return yes;
}

int sl_rule_unchanged(const struct sl_rule *r, const char *path) {
  struct sl_buf now;
  char hash[65];
  int i, rc, same = strcmp(path, r->source) == 0;

  sl_buf_init(&now);
  if (same) {
    rc = read_file(&now, path, (size_t)r->memory_mb << 20);
    sha256_hex(now.data, now.len, hash);
    same = rc == 0 && strcmp(hash, r->hash) == 0;
  }
  for (i = 0; same && i < r->nmods; i++) {
    const struct module *m = &r->mods[i];
    rc = read_file(&now, m->path, (size_t)r->memory_mb << 20);
    same = m->found ? rc == 0 && now.len == m->text.len &&
                          (now.len == 0 ||
                           memcmp(now.data, m->text.data, now.len) == 0)
                    : rc == SL_ENOENT;
  }
  sl_buf_close(&now);
  return same;
}

const char *sl_rule_path(const struct sl_rule *r) { return r->path; }
const char *sl_rule_source(const struct sl_rule *r) { return r->source; }
const char *sl_rule_hash(const struct sl_rule *r) { return r->hash; }
size_t sl_rule_memory(const struct sl_rule *r) { return r->box->used; }
uint64_t sl_rule_rebuilds(const struct sl_rule *r) { return r->rebuilds; }
uint64_t sl_rule_timer_errors(const struct sl_rule *r) {
  return r->timer_errors;
}

void sl_rule_counters(const struct sl_rule *r, sl_rule_counter_cb cb,
                      void *data) {
  int i;
  for (i = 0; i < r->ncounters; i++)
    cb(data, r->counters[i].name, r->counters[i].labels,
       r->counters[i].value);
}
