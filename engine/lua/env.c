/* env.c - the environment a rule runs in: copies of the standard
 * libraries with guards on what runs in C (sort, rep, concat, format, ...),
 * tostring/format without addresses, and require over the rule's lib dirs.
 * Internal to engine/lua (box.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "box.h"
#include "proxy.h"

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
 * prints as "sluice.drop". __tostring metamethods work as before, but
 * one that returns a table, function, userdata or thread raises (format's
 * %s printed what it returned with its address). The
 * format also refuses %q of a string over 1 MiB: LuaJIT quotes it byte by
 * byte in one C call (2.3 ms per MiB, unchecked). */
static const char hide_src[] =
    "local raw_tostring, raw_format, rawmt, find, type, rawget, select,\n"
    "      unpack, setmetatable, error = ...\n"
    "local hidden = { table = true, ['function'] = true, userdata = true,\n"
    "                 thread = true }\n"
    "local ids, n = setmetatable({}, { __mode = 'k' }), 0\n"
    "-- level: of the rule's frame, for error (format calls it too)\n"
    "local function tostr(v, level)\n"
    "  local t = type(v)\n"
    "  if hidden[t] then\n"
    "    local mt = rawmt(v)\n"
    "    if mt == nil or rawget(mt, '__tostring') == nil then\n"
    "      local id = ids[v]\n"
    "      if id == nil then n = n + 1; id = n; ids[v] = id end\n"
    "      return t .. ': #' .. id\n"
    "    end\n"
    "    local s = raw_tostring(v)\n"
    "    if hidden[type(s)] then\n"
    "      error(\"'__tostring' must return a string\", level)\n"
    "    end\n"
    "    return s\n"
    "  end\n"
    "  return raw_tostring(v)\n"
    "end\n"
    "local function tostring(v)\n"
    "  local s = tostr(v, 3)\n"
    "  return s\n"
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
    "      args[a] = tostr(args[a], 3)\n"
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

  if (luaL_loadbuffer(L, hide_src, sizeof(hide_src) - 1,
                      SL_INTERNAL_CHUNK "tostring") != 0)
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
  sl_proxy_light_mt(L, lua_gettop(L)); /* ev.payload's root is one too */
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
  if (sl_proxy_is(L, 1)) { /* a part of ev.payload: sorted as a copy */
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, l_sort, 1);
    return sl_proxy_sort(L);
  }
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

  if (sl_proxy_is(L, 1))
    return sl_proxy_insert(L);
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

  if (sl_proxy_is(L, 1))
    sl_proxy_plain_at_1(L);
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
int is_bytecode(const uint8_t *p, size_t n) {
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
int read_file(struct sl_buf *out, const char *path, size_t max) {
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

static int new_ref(lua_State *L) {
  lua_pushboolean(L, 0);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* A guarded copy of the string library at str (absolute), pushed. */
static void string_copy(lua_State *L, int str) {
  static const char *const no_dump[] = {"dump", NULL};

  copy_table(L, str, no_dump);
#ifdef HAVE_PATTERN
  sl_pattern_install(L, -1, check_cpu);
#endif
  guard(L, lua_gettop(L), "gsub");
  guard(L, lua_gettop(L), "format");
  checked_strings(L, lua_gettop(L));
}

/* string: one copy for rules in env, another behind the string
 * metatable (g0 and env absolute). */
static void open_string(lua_State *L, int g0, int env) {
  int str;

  lua_getfield(L, g0, "string");
  str = lua_gettop(L);
  string_copy(L, str);
  lua_setfield(L, env, "string");
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  string_copy(L, str);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 3);
}

/* table, with sort, insert and concat that charge their C work. */
static void open_table(lua_State *L, int g0, int env) {
  static const char *const no_sort[] = {"sort", NULL};

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
}

/* The registry slots of a box: the error handler and the values a call
 * fills in. */
static void make_refs(lua_State *L, struct box *b) {
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
  b->ref_proot = new_ref(L);
  b->ref_on_stop = new_ref(L);
  for (int i = 0; i < RESULT_CACHE_N; i++)
    b->ref_res[i] = new_ref(L);
  lua_pushcfunction(L, finish);
  b->ref_finish = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Take from the original globals (g0, absolute) what a rule must not have. */
static void strip_globals(lua_State *L, int g0) {
  static const char *const bad[] = {"load", "loadstring", "dofile",
                                    "loadfile", "getfenv", "setfenv",
                                    "newproxy", "collectgarbage", "os",
                                    "gcinfo", "module", "jit", NULL};
  const char *const *name;

  for (name = bad; *name; name++) {
    lua_pushnil(L);
    lua_setfield(L, g0, *name);
  }
}

/* Build the sandbox in a fresh state. Run with lua_cpcall; ud is the box. */
int box_setup(lua_State *L) {
  static const char *const base_ok[] = {
      "assert", "error", "ipairs", "next", "pairs", "select", "tonumber", "tostring", "type", "unpack", "rawequal",
      "rawget", "rawset", "setmetatable", "getmetatable", "_VERSION", NULL};
  struct box *b = lua_touserdata(L, 1);
  const char *const *name;
  int g0, env;

  lua_settop(L, 0);
  open_lib(L, luaopen_base, "");
  open_lib(L, luaopen_string, LUA_STRLIBNAME);
  open_lib(L, luaopen_table, LUA_TABLIBNAME);
  open_lib(L, luaopen_math, LUA_MATHLIBNAME);
  open_lib(L, luaopen_os, LUA_OSLIBNAME);
  open_lib(L, luaopen_bit, LUA_BITLIBNAME);
  /* the JIT's parameters and CPU features are set only here; the engine
   * stays off until box_jit_on (rules.jit), and rules never see jit */
  open_lib(L, luaopen_jit, LUA_JITLIBNAME);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_pushvalue(L, LUA_GLOBALSINDEX);
  g0 = lua_gettop(L);
  lua_newtable(L);
  env = lua_gettop(L);

  for (name = base_ok; *name; name++) {
    lua_getfield(L, g0, *name);
    lua_setfield(L, env, *name);
  }
  sl_proxy_open(L, env); /* pairs, ipairs, next, type know ev.payload */
  lua_pushvalue(L, env);
  lua_setfield(L, env, "_G");
  lua_pushcfunction(L, l_collectgarbage);
  lua_setfield(L, env, "collectgarbage");
  lua_pushcfunction(L, l_print);
  lua_setfield(L, env, "print");
  lua_pushcfunction(L, box_pcall); /* each level a C level (state.c) */
  lua_setfield(L, env, "pcall");
  lua_pushcfunction(L, box_xpcall);
  lua_setfield(L, env, "xpcall");

  lua_getfield(L, g0, "coroutine");
  copy_table(L, lua_gettop(L), NULL);
  guard(L, lua_gettop(L), "resume");
  lua_getfield(L, -1, "wrap");
  lua_pushcclosure(L, l_co_wrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_setfield(L, env, "coroutine");
  lua_pop(L, 1);

  open_string(L, g0, env);
  open_table(L, g0, env);
  sl_proxy_open_table(L, env);

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
  make_refs(L, b);

  hide_addresses(L, g0, env); /* after the guards: it wraps them */

  /* defence in depth: the old globals lose what a rule must not have,
   * although nothing reachable from the sandbox leads to them */
  strip_globals(L, g0);
  lua_pushvalue(L, env);
  lua_replace(L, LUA_GLOBALSINDEX);
  lua_checkstack(L, LUA_MINSTACK + SLOT_BASE);
  return 0;
}
