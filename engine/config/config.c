/* config.c - loading and checking the Lua config file; see config.h.
 * The file runs in its own lua_State with only base, string, table and
 * math (no io, os, package or loaders) and must return a table. Checking
 * walks that table with a key path in hand so every message can say where
 * the problem is. The Lua state is closed before sl_config_load returns. */
#include "config.h"

#include <errno.h>
#include <lauxlib.h>
#include <libgen.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "schema.h"

/* the chunk name of the config in Lua's messages, replaced by its path */
#define CHUNK "sluice-config"

struct check {
  lua_State *L;
  struct sl_buf *err;
  const char *file;
  const char *dir;
  const char *state_dir; /* for the default paths of engine-written files */
  const struct sl_config_plugin *const *plugins; /* the registry's list */
  int nerr;
};

static void bad(struct check *c, const char *path, const char *fmt, ...)
    SL_PRINTF(3, 4);

static void bad(struct check *c, const char *path, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sl_buf_printf(c->err, "%s: %s: %s\n", c->file, path, msg);
  c->nerr++;
}

static const char *type_of(lua_State *L, int idx) {
  return lua_typename(L, lua_type(L, idx));
}

/* An allocation failed: the config is refused with that reason, so no
 * half-read config (a NULL name, a missing list) reaches the engine. */
static void no_memory(struct check *c) {
  c->nerr++;
  sl_buf_printf(c->err, "%s: out of memory\n", c->file);
}

static char *dupstr(struct check *c, const char *s) {
  char *d = s ? strdup(s) : NULL;
  if (s && d == NULL)
    no_memory(c);
  return d;
}

/* Resolve p against the config's folder; caller frees. */
static char *resolve(struct check *c, const char *p) {
  char *out;
  size_t n;
  if (p[0] == '/' || c->dir == NULL)
    return dupstr(c, p);
  n = strlen(c->dir) + strlen(p) + 2;
  out = malloc(n);
  if (out)
    snprintf(out, n, "%s/%s", c->dir, p);
  else
    no_memory(c);
  return out;
}

/* rel inside the state folder (defaults of files the engine writes on
 * its own); caller frees. */
static char *in_state(struct check *c, const char *rel) {
  char *out;
  size_t n;
  if (c->state_dir == NULL)
    return NULL;
  n = strlen(c->state_dir) + strlen(rel) + 2;
  out = malloc(n);
  if (out)
    snprintf(out, n, "%s/%s", c->state_dir, rel);
  else
    no_memory(c);
  return out;
}

static int absidx(lua_State *L, int i) {
  return i > 0 || i <= LUA_REGISTRYINDEX ? i : lua_gettop(L) + i + 1;
}

/* Every key of the table at idx must be in allowed (NULL-terminated). */
static void check_keys(struct check *c, int idx, const char *path,
                       const char *const *allowed) {
  lua_State *L = c->L;
  idx = absidx(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      bad(c, path, "keys must be names, found a %s key", type_of(L, -2));
    } else {
      const char *k = lua_tostring(L, -2);
      const char *const *a;
      for (a = allowed; *a; a++)
        if (strcmp(*a, k) == 0)
          break;
      if (*a == NULL) {
        char hint[256] = "";
        size_t off = 0;
        for (a = allowed; *a && off < sizeof(hint) - 32; a++)
          off += (size_t)snprintf(hint + off, sizeof(hint) - off, "%s%s",
                                  a == allowed ? "" : ", ", *a);
        /* at the top there is no path yet: the key is the path */
        bad(c, path[0] ? path : k, "unknown key '%s' (expected one of: %s)", k,
            hint);
      }
    }
    lua_pop(L, 1);
  }
}

/* Is the value at idx a sequence 1..n with nothing else? */
static int is_list(lua_State *L, int idx, int *n) {
  int count = 0;
  idx = absidx(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  *n = (int)lua_objlen(L, idx);
  return *n == count;
}

static void join(char *out, size_t n, const char *path, const char *key) {
  snprintf(out, n, "%s%s%s", path, path[0] ? "." : "", key);
}

/* ---- environment: ${VAR}, ${VAR:-default}, $$ in every string value ---- */

#define EXPAND_MAX_DEPTH 8   /* defaults nested in defaults */
#define EXPAND_MAX_TABLES 64 /* tables nested in the config */

struct expand {
  const char *s;
  size_t n, pos;
  struct sl_buf *out;
  char *why;
  size_t whylen;
};

static int expand_put(struct expand *x, const char *p, size_t len, int emit) {
  if (!emit)
    return 0;
  if (x->out->len + len > SL_CONFIG_MAX_EXPANDED) {
    snprintf(x->why, x->whylen,
             "longer than %u bytes once the environment is put in",
             (unsigned)SL_CONFIG_MAX_EXPANDED);
    return SL_E2BIG;
  }
  return sl_buf_append(x->out, p, len) == 0 ? 0 : SL_ENOMEM;
}

static int expand_text(struct expand *x, int in_default, int emit, int depth);

/* x->pos is at "${": expand the reference and step past it. */
static int expand_var(struct expand *x, int emit, int depth) {
  size_t start = x->pos + 2, p = start;
  char name[128];
  const char *value;
  int rc, use;

  while (p < x->n && (x->s[p] == '_' || (x->s[p] >= 'a' && x->s[p] <= 'z') ||
                      (x->s[p] >= 'A' && x->s[p] <= 'Z') ||
                      (x->s[p] >= '0' && x->s[p] <= '9')))
    p++;
  if (p == x->n) {
    snprintf(x->why, x->whylen, "unterminated \"${\" at byte %zu",
             x->pos + 1);
    return SL_EINVAL;
  }
  if (p == start || (x->s[start] >= '0' && x->s[start] <= '9') ||
      p - start >= sizeof(name) ||
      (x->s[p] != '}' && !(x->s[p] == ':' && p + 1 < x->n &&
                           x->s[p + 1] == '-'))) {
    snprintf(x->why, x->whylen,
             "bad variable reference at byte %zu: expected ${NAME} or "
             "${NAME:-default}, NAME of letters, digits and '_' ($$ is a $)",
             x->pos + 1);
    return SL_EINVAL;
  }
  memcpy(name, x->s + start, p - start);
  name[p - start] = '\0';
  value = getenv(name);
  if (x->s[p] == '}') {
    x->pos = p + 1;
    if (value == NULL && emit) {
      snprintf(x->why, x->whylen,
               "environment variable %s is not set (${%s:-default} gives "
               "a default)", name, name);
      return SL_EINVAL;
    }
    return value ? expand_put(x, value, strlen(value), emit) : 0;
  }
  if (depth >= EXPAND_MAX_DEPTH) {
    snprintf(x->why, x->whylen, "defaults nested deeper than %d",
             EXPAND_MAX_DEPTH);
    return SL_EINVAL;
  }
  use = value && value[0]; /* as the shell: unset or empty takes the default */
  if (use && (rc = expand_put(x, value, strlen(value), emit)) != 0)
    return rc;
  x->pos = p + 2;
  return expand_text(x, 1, emit && !use, depth + 1);
}

/* Copy from x->pos to the end or, in a default, to its closing '}' (braces
 * inside it must pair up; $} is a lone '}'). Only emit writes to out: a
 * default not taken is still checked. */
static int expand_text(struct expand *x, int in_default, int emit, int depth) {
  size_t open = x->pos;
  int braces = 0, rc = 0;

  while (rc == 0 && x->pos < x->n) {
    char ch = x->s[x->pos];
    char next = x->pos + 1 < x->n ? x->s[x->pos + 1] : '\0';
    if (ch == '$' && next == '{') {
      rc = expand_var(x, emit, depth);
      continue;
    }
    if (ch == '$' && (next == '$' || next == '}')) {
      rc = expand_put(x, &next, 1, emit);
      x->pos += 2;
      continue;
    }
    if (in_default && ch == '{')
      braces++;
    if (in_default && ch == '}' && braces-- == 0) {
      x->pos++;
      return 0;
    }
    rc = expand_put(x, &ch, 1, emit); /* a lone $ stays as it is */
    x->pos++;
  }
  if (rc == 0 && in_default) {
    snprintf(x->why, x->whylen, "unterminated \"${\": the default from byte "
             "%zu has no closing '}'", open + 1);
    return SL_EINVAL;
  }
  return rc;
}

int sl_config_expand(const char *s, size_t len, struct sl_buf *out,
                     char *why, size_t whylen) {
  struct expand x = {s, len, 0, out, why, whylen};
  sl_buf_reset(out);
  return expand_text(&x, 0, 1, 0);
}

/* Expand the environment in every string value of the table at t and the
 * tables in it (each once: visited is a set at index v), naming path in
 * errors. */
static void expand_table(struct check *c, int t, int v, const char *path,
                         int depth) {
  lua_State *L = c->L;
  struct sl_buf out;
  char p[256], why[256];

  if (depth > EXPAND_MAX_TABLES)
    return; /* the checker refuses what is nested this deep anyway */
  lua_pushvalue(L, t);
  lua_rawget(L, v);
  if (lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, t);
  lua_pushboolean(L, 1);
  lua_rawset(L, v);
  sl_buf_init(&out);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TNUMBER)
      snprintf(p, sizeof(p), "%s[%g]", path, lua_tonumber(L, -2));
    else if (lua_type(L, -2) == LUA_TSTRING)
      join(p, sizeof(p), path, lua_tostring(L, -2));
    else
      snprintf(p, sizeof(p), "%s", path);
    if (lua_type(L, -1) == LUA_TTABLE) {
      expand_table(c, lua_gettop(L), v, p, depth + 1);
    } else if (lua_type(L, -1) == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(L, -1, &n);
      if (memchr(s, '$', n) != NULL) {
        if (sl_config_expand(s, n, &out, why, sizeof(why)) != 0) {
          bad(c, p[0] ? p : "(top)", "%s", why);
        } else {
          lua_pushvalue(L, -2); /* an existing field: lua_next allows it */
          lua_pushlstring(L, (const char *)out.data, out.len);
          lua_rawset(L, t);
        }
      }
    }
    lua_pop(L, 1);
  }
  sl_buf_close(&out);
}

/* Is the string at key of the table at t free of CR, LF and NUL? */
static int one_line(struct check *c, int t, const char *key) {
  size_t n;
  const char *v;
  int ok;
  lua_getfield(c->L, t, key);
  v = lua_tolstring(c->L, -1, &n);
  ok = v && strlen(v) == n && strpbrk(v, "\r\n") == NULL;
  lua_pop(c->L, 1);
  return ok;
}

/* Optional string field key of the table at t. */
static void opt_str(struct check *c, int t, const char *path, const char *key,
                    char **out, int required) {
  char p[256];
  lua_getfield(c->L, t, key);
  join(p, sizeof(p), path, key);
  if (lua_type(c->L, -1) == LUA_TSTRING) {
    if (lua_objlen(c->L, -1) == 0)
      bad(c, p, "expected a non-empty string");
    else
      *out = dupstr(c, lua_tostring(c->L, -1));
  } else if (!lua_isnil(c->L, -1) || required) {
    bad(c, p, "expected string, got %s", type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
}

/* The list of strings at key of the table at t as an SL_KEY_ARGV value
 * ("a\0b\0\0") in *out; p names the key for errors. */
static void opt_argv(struct check *c, int t, const char *p, const char *key,
                     char **out) {
  struct sl_buf b;
  int i, n;
  lua_getfield(c->L, t, key);
  n = lua_istable(c->L, -1) ? (int)lua_objlen(c->L, -1) : 0;
  if (n < 1 || n > 64) {
    bad(c, p, "expected a list of 1 to 64 strings (the program and its "
        "arguments), got %s", lua_istable(c->L, -1) ? "an empty table"
                                                     : type_of(c->L, -1));
    lua_pop(c->L, 1);
    return;
  }
  sl_buf_init(&b);
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *s;
    lua_rawgeti(c->L, -1, i);
    s = lua_type(c->L, -1) == LUA_TSTRING ? lua_tolstring(c->L, -1, &len)
                                          : NULL;
    if (s == NULL || len == 0 || memchr(s, 0, len)) {
      bad(c, p, "item %d: expected a non-empty string, got %s", i,
          s ? "an empty or NUL-holding one" : type_of(c->L, -1));
      lua_pop(c->L, 2);
      sl_buf_close(&b);
      return;
    }
    if (sl_buf_append(&b, s, len + 1) != 0) {
      lua_pop(c->L, 2);
      sl_buf_close(&b);
      bad(c, p, "out of memory");
      return;
    }
    lua_pop(c->L, 1);
  }
  lua_pop(c->L, 1);
  if (sl_buf_putc(&b, 0) != 0) {
    sl_buf_close(&b);
    bad(c, p, "out of memory");
    return;
  }
  free(*out);
  *out = (char *)b.data; /* the config frees it as a string */
}

/* Parse a size string ("64MiB", "1 GB", "1048576"): 0, or -1 with why
 * filled. */
static int parse_size(const char *s, double *out, char *why, size_t whylen) {
  char *end;
  double v = strtod(s, &end);
  while (*end == ' ')
    end++;
  if (end == s) {
    snprintf(why, whylen,
             "expected a size like 1048576 or \"64MiB\", got \"%s\"", s);
    return -1;
  }
  if (strcmp(end, "KiB") == 0) v *= 1024.0;
  else if (strcmp(end, "MiB") == 0) v *= 1024.0 * 1024;
  else if (strcmp(end, "GiB") == 0) v *= 1024.0 * 1024 * 1024;
  else if (strcmp(end, "kB") == 0 || strcmp(end, "KB") == 0) v *= 1e3;
  else if (strcmp(end, "MB") == 0) v *= 1e6;
  else if (strcmp(end, "GB") == 0) v *= 1e9;
  else if (strcmp(end, "B") != 0 && *end != '\0') {
    snprintf(why, whylen,
             "unknown size unit '%s' (use B, KiB, MiB, GiB, kB, MB, GB)", end);
    return -1;
  }
  *out = v;
  return 0;
}

/* Optional whole number in [min, max]; strings with KiB/MiB/GiB (or kB,
 * MB, GB) are accepted when bytes is set. */
static void opt_uint(struct check *c, int t, const char *path, const char *key,
                     uint64_t min, uint64_t max, uint64_t *out, int bytes) {
  char p[256], why[256];
  double v;
  lua_getfield(c->L, t, key);
  join(p, sizeof(p), path, key);
  if (lua_isnil(c->L, -1)) {
    lua_pop(c->L, 1);
    return;
  }
  if (lua_type(c->L, -1) == LUA_TNUMBER) {
    v = lua_tonumber(c->L, -1);
  } else if (bytes && lua_type(c->L, -1) == LUA_TSTRING) {
    if (parse_size(lua_tostring(c->L, -1), &v, why, sizeof(why)) != 0) {
      bad(c, p, "%s", why);
      lua_pop(c->L, 1);
      return;
    }
  } else {
    bad(c, p, "expected %s, got %s", bytes ? "number or size string" : "number",
        type_of(c->L, -1));
    lua_pop(c->L, 1);
    return;
  }
  if (v != (double)(uint64_t)v || v < (double)min || v > (double)max)
    bad(c, p, "expected a whole number from %llu to %llu, got %.17g",
        (unsigned long long)min, (unsigned long long)max, v);
  else
    *out = (uint64_t)v;
  lua_pop(c->L, 1);
}

static void opt_u32(struct check *c, int t, const char *path, const char *key,
                    uint32_t min, uint32_t max, uint32_t *out, int bytes) {
  uint64_t v = *out;
  opt_uint(c, t, path, key, min, max, &v, bytes);
  *out = (uint32_t)v;
}

static void opt_bool(struct check *c, int t, const char *path, const char *key,
                     int *out) {
  char p[256];
  lua_getfield(c->L, t, key);
  join(p, sizeof(p), path, key);
  if (lua_type(c->L, -1) == LUA_TBOOLEAN)
    *out = lua_toboolean(c->L, -1);
  else if (!lua_isnil(c->L, -1))
    bad(c, p, "expected boolean, got %s", type_of(c->L, -1));
  lua_pop(c->L, 1);
}

/* A string or a list of strings at key; *out NULL-free array. */
static int opt_strlist(struct check *c, int t, const char *path,
                       const char *key, char ***out, int *nout, int required) {
  char p[256], pi[300];
  int n, i;
  lua_State *L = c->L;

  *out = NULL;
  *nout = 0;
  lua_getfield(L, t, key);
  join(p, sizeof(p), path, key);
  if (lua_type(L, -1) == LUA_TSTRING) {
    *out = calloc(1, sizeof(char *));
    if (*out == NULL)
      no_memory(c);
    else if (((*out)[0] = dupstr(c, lua_tostring(L, -1))) != NULL)
      *nout = 1;
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    if (!is_list(L, -1, &n) || n == 0) {
      bad(c, p, "expected a string or a non-empty list of strings");
    } else {
      *out = calloc((size_t)n, sizeof(char *));
      if (*out == NULL)
        no_memory(c);
      for (i = 1; *out && i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING || lua_objlen(L, -1) == 0) {
          snprintf(pi, sizeof(pi), "%s[%d]", p, i);
          bad(c, pi, "expected a non-empty string, got %s", type_of(L, -1));
        } else {
          if (((*out)[*nout] = dupstr(c, lua_tostring(L, -1))) != NULL)
            (*nout)++;
        }
        lua_pop(L, 1);
      }
    }
  } else if (!lua_isnil(L, -1) || required) {
    bad(c, p, "expected a string or a list of strings, got %s",
        type_of(L, -1));
  }
  lua_pop(L, 1);
  return *nout;
}

static void free_strlist(char **l, int n) {
  int i;
  for (i = 0; i < n; i++)
    free(l[i]);
  free(l);
}

/* A host name as DNS spells it: labels of letters, digits, '-' and '_'
 * joined by dots, 253 bytes at most. */
static int valid_hostname(const char *h) {
  size_t n = strlen(h), label = 0;
  if (n == 0 || n > 253)
    return 0;
  for (; *h; h++) {
    if (*h == '.') {
      if (label == 0)
        return 0;
      label = 0;
    } else if ((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') ||
               (*h >= '0' && *h <= '9') || *h == '-' || *h == '_') {
      if (++label > 63)
        return 0;
    } else {
      return 0;
    }
  }
  return 1;
}

int sl_config_split_hostport(const char *s, char *host, size_t hostlen,
                             int *port) {
  const char *colon;
  size_t hl;
  char *end;
  long p;
  struct sockaddr_in6 a6;

  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':')
      return SL_EINVAL;
    hl = (size_t)(close - s - 1);
    if (hl + 1 > hostlen)
      return SL_EINVAL;
    memcpy(host, s + 1, hl);
    host[hl] = '\0';
    colon = close + 1;
    if (uv_ip6_addr(host, 1, &a6) != 0) /* brackets hold IPv6 only */
      return SL_EINVAL;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL)
      return SL_EINVAL;
    hl = (size_t)(colon - s);
    if (hl + 1 > hostlen || hl == 0)
      return SL_EINVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    if (!valid_hostname(host) && uv_ip6_addr(host, 1, &a6) != 0)
      return SL_EINVAL;
  }
  p = strtol(colon + 1, &end, 10);
  if (colon[1] == '\0' || *end != '\0' || p < 1 || p > 65535)
    return SL_EINVAL;
  *port = (int)p;
  return 0;
}

int sl_config_parse_hostport(const char *s, char *host, size_t hostlen,
                             int *port) {
  struct sockaddr_in6 a6;
  struct sockaddr_in a4;
  int p;

  if (sl_config_split_hostport(s, host, hostlen, &p) != 0)
    return SL_EINVAL;
  if (strcmp(host, "localhost") == 0)
    snprintf(host, hostlen, "127.0.0.1");
  if (uv_ip4_addr(host, p, &a4) != 0 && uv_ip6_addr(host, p, &a6) != 0)
    return SL_EINVAL;
  *port = p;
  return 0;
}

/* The address of "host:port" into out (16 bytes); returns its family
 * (AF_INET, AF_INET6) or 0 when s is not such an address. */
static int listen_addr(const char *s, unsigned char *out, int *port) {
  char host[128];
  if (sl_config_parse_hostport(s, host, sizeof(host), port) != 0)
    return 0;
  if (uv_inet_pton(AF_INET, host, out) == 0)
    return AF_INET;
  if (uv_inet_pton(AF_INET6, host, out) == 0)
    return AF_INET6;
  return 0;
}

int sl_config_listen_collide(const char *a, const char *b) {
  static const unsigned char any[16];
  unsigned char x[16], y[16];
  int fx, fy, px, py;
  fx = listen_addr(a, x, &px);
  fy = listen_addr(b, y, &py);
  if (fx == 0 || fy == 0)
    return strcmp(a, b) == 0;
  if (px != py)
    return 0;
  if (fx == fy)
    return memcmp(x, y, fx == AF_INET ? 4 : 16) == 0 ||
           memcmp(x, any, fx == AF_INET ? 4 : 16) == 0 ||
           memcmp(y, any, fy == AF_INET ? 4 : 16) == 0;
  /* one of each: only a dual-stack wildcard (::) takes both */
  return memcmp(fx == AF_INET6 ? x : y, any, 16) == 0;
}

/* Can a file be created at path? The first folder that exists on the way
 * up must be writable (missing folders are created at start). */
static int usable(const char *path, int want_dir, char *why, size_t whylen) {
  char buf[PATH_MAX], *dir;
  struct stat st;

  if (stat(path, &st) == 0) {
    if (want_dir) {
      if (!S_ISDIR(st.st_mode)) {
        snprintf(why, whylen, "not a directory");
        return 0;
      }
      if (access(path, W_OK | X_OK) != 0) {
        snprintf(why, whylen, "not writable");
        return 0;
      }
      return 1;
    }
    if (S_ISDIR(st.st_mode)) {
      snprintf(why, whylen, "is a directory");
      return 0;
    }
    if (access(path, W_OK) != 0) {
      snprintf(why, whylen, "not writable");
      return 0;
    }
    return 1;
  }
  snprintf(buf, sizeof(buf), "%s", path);
  for (;;) {
    dir = dirname(buf);
    if (stat(dir, &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        snprintf(why, whylen, "'%s' is not a directory", dir);
        return 0;
      }
      if (access(dir, W_OK | X_OK) != 0) {
        snprintf(why, whylen, "directory '%s' is not writable", dir);
        return 0;
      }
      return 1;
    }
    if (strcmp(dir, "/") == 0 || strcmp(dir, ".") == 0)
      return 1;
    memmove(buf, dir, strlen(dir) + 1);
  }
}

static int path_writable(const char *path, char *why, size_t whylen) {
  return usable(path, 0, why, whylen);
}

static int valid_name(const char *s) {
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
      return 0;
  return 1;
}

static void check_name(struct check *c, const char *path, const char *name) {
  char p[256];
  join(p, sizeof(p), path, "name");
  if (name && !valid_name(name))
    bad(c, p, "'%s' may hold only letters, digits, '_', '-' and '.'", name);
}

static void check_address(struct check *c, const char *path, const char *key,
                          const char *v) {
  char p[256], host[128];
  int port;
  join(p, sizeof(p), path, key);
  if (v && sl_config_parse_hostport(v, host, sizeof(host), &port) != 0)
    bad(c, p,
        "expected \"host:port\" with an IP address (or localhost) and a port "
        "1-65535, got \"%s\"",
        v);
}

/* A peer to connect to: the host may be a name, resolved on each connect. */
static void check_peer(struct check *c, const char *path, const char *key,
                       const char *v) {
  char p[256], host[256];
  int port;
  join(p, sizeof(p), path, key);
  if (v && sl_config_split_hostport(v, host, sizeof(host), &port) != 0)
    bad(c, p,
        "expected \"host:port\" with a host name or IP address ([::1] for "
        "IPv6) and a port 1-65535, got \"%s\"",
        v);
}

static void check_socket_path(struct check *c, const char *path,
                              const char *key, char **v) {
  char p[256], why[256];
  char *abs;
  join(p, sizeof(p), path, key);
  if (*v == NULL)
    return;
  abs = resolve(c, *v);
  free(*v);
  *v = abs;
  if (abs && strlen(abs) >= 108)
    bad(c, p, "socket path longer than 107 bytes: %s", abs);
  else if (abs && !path_writable(abs, why, sizeof(why)))
    bad(c, p, "cannot create socket at %s: %s", abs, why);
}

/* ---- plugin keys: checked against the table each plugin declares ------- */

const char *sl_config_kind_name(enum sl_plugin_kind kind) {
  return kind == SL_PLUGIN_INPUT ? "input" : "output";
}

const struct sl_config_plugin *
sl_config_plugin_find(const struct sl_config_plugin *const *list,
                      enum sl_plugin_kind kind, const char *type) {
  for (; list && type && *list; list++)
    if ((*list)->kind == kind && strcmp((*list)->type, type) == 0)
      return *list;
  return NULL;
}

const struct sl_config_key *
sl_config_plugin_key(const struct sl_config_plugin *p, const char *name) {
  const struct sl_config_key *k;
  for (k = p ? p->keys : NULL; k && k->name; k++)
    if (strcmp(k->name, name) == 0)
      return k;
  return NULL;
}

const char *sl_config_key_type_name(enum sl_config_key_type t) {
  switch (t) {
  case SL_KEY_STRING: return "string";
  case SL_KEY_BOOL: return "boolean";
  case SL_KEY_UINT: return "number";
  case SL_KEY_BYTES: return "size";
  case SL_KEY_ENUM: return "choice";
  case SL_KEY_ADDRESS: return "host:port";
  case SL_KEY_PEER: return "host:port";
  case SL_KEY_PATH: return "path";
  case SL_KEY_FILE: return "file path";
  case SL_KEY_SOCKET: return "socket path";
  case SL_KEY_TLS: return "tls table";
  case SL_KEY_ARGV: return "list of strings";
  case SL_KEY_HEADERS: return "table of headers";
  case SL_KEY_CORE: return "core key";
  }
  return "?";
}

/* "a, b or c": the types of a kind (list NULL) or the plugins of that
 * kind declaring key, in registry order. Returns how many. */
static int type_list(struct check *c, enum sl_plugin_kind kind,
                     const char *key, const char *quote, char *out,
                     size_t len) {
  const struct sl_config_plugin *const *p;
  const char *names[32];
  int n = 0, i;
  size_t off = 0;
  for (p = c->plugins; p && *p && n < 32; p++)
    if ((*p)->kind == kind &&
        (key == NULL || sl_config_plugin_key(*p, key) != NULL))
      names[n++] = (*p)->type;
  out[0] = '\0';
  for (i = 0; i < n && off < len; i++)
    off += (size_t)snprintf(out + off, len - off, "%s%s%s%s",
                            i == 0 ? "" : i == n - 1 ? " or " : ", ", quote,
                            names[i], quote);
  return n;
}

/* "tcp and unix": the plugins of that kind that declare key. */
static int owners(struct check *c, enum sl_plugin_kind kind, const char *key,
                  char *out, size_t len) {
  char *or;
  int n = type_list(c, kind, key, "", out, len);
  if ((or = strstr(out, " or ")) != NULL) {
    memmove(or + 5, or + 4, strlen(or + 4) + 1);
    memcpy(or, " and ", 5);
  }
  return n;
}

/* A choice of k: its index, or -1. */
static int choice(const struct sl_config_key *k, const char *s) {
  int i;
  for (i = 0; k->choices && k->choices[i]; i++)
    if (strcmp(k->choices[i], s) == 0)
      return i;
  return -1;
}

static void choice_list(const struct sl_config_key *k, char *out, size_t len) {
  size_t off = 0;
  int i, n = 0;
  while (k->choices[n])
    n++;
  out[0] = '\0';
  for (i = 0; i < n && off < len; i++)
    off += (size_t)snprintf(out + off, len - off, "%s\"%s\"",
                            i == 0 ? "" : i == n - 1 ? " or " : ", ",
                            k->choices[i]);
}

static void store_uint(const struct sl_config_key *k, char *field,
                       uint64_t v) {
  if (k->size == sizeof(uint32_t)) {
    uint32_t u = (uint32_t)v;
    memcpy(field, &u, sizeof(u));
  } else {
    memcpy(field, &v, sizeof(v));
  }
}

static void store_str(char *field, char *s) {
  char *old;
  memcpy(&old, field, sizeof(old));
  free(old);
  memcpy(field, &s, sizeof(s));
}

/* ---- tls = {...} -------------------------------------------------------- */

const struct sl_config_key sl_config_tls_keys[] = {
    {.name = "cert_file", .type = SL_KEY_PATH,
     .doc = "PEM certificate chain (listeners: required; clients: for mTLS)"},
    {.name = "key_file", .type = SL_KEY_PATH,
     .doc = "PEM private key of cert_file"},
    {.name = "ca_file", .type = SL_KEY_PATH,
     .doc = "PEM CAs to trust (clients: default the system's)"},
    {.name = "client_ca_file", .type = SL_KEY_PATH,
     .doc = "listeners: client certificates must chain to these (mTLS)"},
    {.name = "verify_peer", .type = SL_KEY_BOOL,
     .doc = "clients: check the server (default true); listeners: demand "
            "a client certificate (default false)"},
    {.name = "server_name", .type = SL_KEY_STRING,
     .doc = "clients: SNI and the name checked (default the address's host)"},
    {.name = "min_version", .type = SL_KEY_STRING, .def = "1.2",
     .doc = "lowest TLS version: \"1.2\" or \"1.3\""},
    {.name = "ciphers", .type = SL_KEY_STRING,
     .doc = "OpenSSL cipher list for TLS 1.2 (default OpenSSL's)"},
    {.name = "allow_subjects", .type = SL_KEY_STRING,
     .doc = "listeners: client certificate CNs / SANs let in (list)"},
    {.name = "handshake_timeout_ms", .type = SL_KEY_UINT, .def = "10000",
     .min = 100, .max = 600000, .doc = "a handshake must finish within this"},
    {.name = NULL},
};

/* A readable file path at key of the tls table tt, resolved. */
static void tls_file(struct check *c, int tt, const char *path,
                     const char *who, const char *key, char **out) {
  char p[256];
  char *s = NULL, *abs;
  opt_str(c, tt, path, key, &s, 0);
  if (s == NULL)
    return;
  abs = resolve(c, s);
  free(s);
  join(p, sizeof(p), path, key);
  if (abs && access(abs, R_OK) != 0)
    bad(c, p, "cannot read %s: %s (%s)", abs, strerror(errno), who);
  *out = abs;
}

/* The tls table at key "tls" of the table at t into tc; who names the
 * plugin in messages ("tcp input"); server: a listener's block. */
static void read_tls(struct check *c, int t, const char *path,
                     const char *who, int server, struct sl_tls_config *tc) {
  static const char *const keys[] = {
      "cert_file",   "key_file", "ca_file",        "client_ca_file",
      "verify_peer", "server_name", "min_version", "ciphers",
      "allow_subjects", "handshake_timeout_ms", NULL};
  lua_State *L = c->L;
  char p[256], *v = NULL;
  int tt;

  join(p, sizeof(p), path, "tls");
  lua_getfield(L, t, "tls");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1)) {
    bad(c, p, "expected table, got %s (%s)", type_of(L, -1), who);
    lua_pop(L, 1);
    return;
  }
  tt = lua_gettop(L);
  check_keys(c, tt, p, keys);
  tc->enabled = 1;
  tc->verify_peer = !server;
  tc->min_version = 0x0303;
  tc->handshake_timeout_ms = 10000;
  tls_file(c, tt, p, who, "cert_file", &tc->cert_file);
  tls_file(c, tt, p, who, "key_file", &tc->key_file);
  tls_file(c, tt, p, who, "ca_file", &tc->ca_file);
  tls_file(c, tt, p, who, "client_ca_file", &tc->client_ca_file);
  opt_bool(c, tt, p, "verify_peer", &tc->verify_peer);
  opt_str(c, tt, p, "server_name", &tc->server_name, 0);
  opt_str(c, tt, p, "ciphers", &tc->ciphers, 0);
  opt_strlist(c, tt, p, "allow_subjects", &tc->allow_subjects, &tc->nallow,
              0);
  opt_u32(c, tt, p, "handshake_timeout_ms", 100, 600000,
          &tc->handshake_timeout_ms, 0);
  opt_str(c, tt, p, "min_version", &v, 0);
  if (v && strcmp(v, "1.3") == 0)
    tc->min_version = 0x0304;
  else if (v && strcmp(v, "1.2") != 0)
    bad(c, p, "min_version: expected \"1.2\" or \"1.3\", got \"%s\" (%s; "
              "TLS 1.0 and 1.1 are not offered)", v, who);
  free(v);
  if (server && tc->client_ca_file)
    tc->verify_peer = 1;
  if (server && (tc->cert_file == NULL || tc->key_file == NULL))
    bad(c, p, "a listener's tls needs cert_file and key_file (%s)", who);
  else if (!server && (tc->cert_file == NULL) != (tc->key_file == NULL))
    bad(c, p, "cert_file and key_file go together (%s)", who);
  if (server && tc->verify_peer && !tc->client_ca_file && !tc->ca_file)
    bad(c, p, "verify_peer needs client_ca_file or ca_file (%s)", who);
  if (server && tc->server_name)
    bad(c, p, "server_name is for clients, not a %s", who);
  if (tc->nallow && !(server && tc->verify_peer))
    bad(c, p, "allow_subjects needs a listener with verify_peer (%s)", who);
  lua_pop(L, 1);
}

static void free_tls(struct sl_tls_config *tc) {
  free(tc->cert_file);
  free(tc->key_file);
  free(tc->ca_file);
  free(tc->client_ca_file);
  free(tc->server_name);
  free(tc->ciphers);
  free_strlist(tc->allow_subjects, tc->nallow);
}

/* The declared default into the field (tables are the engine's own, so a
 * default that does not parse is left out rather than reported). */
static void key_default(struct check *c, const struct sl_config_key *k,
                        char *field) {
  char why[128];
  double v;
  int i;
  if (k->def == NULL || field == NULL)
    return;
  switch (k->type) {
  case SL_KEY_BOOL:
    i = strcmp(k->def, "true") == 0;
    memcpy(field, &i, sizeof(i));
    break;
  case SL_KEY_UINT:
  case SL_KEY_BYTES:
    if (parse_size(k->def, &v, why, sizeof(why)) == 0)
      store_uint(k, field, (uint64_t)v);
    break;
  case SL_KEY_ENUM:
    if ((i = choice(k, k->def)) >= 0) {
      int val = k->values ? k->values[i] : i;
      memcpy(field, &val, sizeof(val));
    }
    break;
  case SL_KEY_CORE:
    break;
  default:
    store_str(field, dupstr(c, k->def));
    break;
  }
}

/* An HTTP token character (RFC 9110 tchar). */
static int is_tchar(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* A headers table (name = "value") at key of the table at t, as
 * "Name: value\n" lines into field (a char *); p names it in errors. */
static void read_headers(struct check *c, int t, const char *p,
                         const char *key, char *field) {
  lua_State *L = c->L;
  struct sl_buf out;
  sl_buf_init(&out);
  lua_getfield(L, t, key);
  if (!lua_istable(L, -1)) {
    bad(c, p, "expected a table of header = \"value\", got %s",
        type_of(L, -1));
    goto done;
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    const char *name, *val, *q;
    size_t n;
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
      bad(c, p, "expected header names and string values, found a %s = %s",
          type_of(L, -2), type_of(L, -1));
      lua_pop(L, 2);
      break;
    }
    name = lua_tostring(L, -2);
    val = lua_tolstring(L, -1, &n);
    for (q = name; *q && is_tchar((unsigned char)*q); q++)
      ;
    if (*q || q == name)
      bad(c, p, "header name \"%s\" is not an HTTP token", name);
    else if (strlen(val) != n || strpbrk(val, "\r\n"))
      bad(c, p, "header %s: the value holds a CR, LF or NUL", name);
    else if (sl_buf_printf(&out, "%s: %s\n", name, val) != 0)
      bad(c, p, "out of memory");
    lua_pop(L, 1);
  }
  if (out.len) {
    char *lines = strndup((const char *)out.data, out.len);
    if (lines == NULL)
      no_memory(c);
    store_str(field, lines);
  }
done:
  lua_pop(L, 1);
  sl_buf_close(&out);
}

/* Read key k of the table at t into its field of base, or, without one,
 * into slot (its value in the config's values list). */
/* A string key's value s (owned; NULL once taken): checked and resolved
 * by its type, stored at field. */
static void read_str_key(struct check *c, const char *path, const char *p,
                         const struct sl_config_key *k, char *field, char *s) {
  char why[256], list[256];
  int i = -1;
  if (k->choices && (i = choice(k, s)) < 0) {
    choice_list(k, list, sizeof(list));
    bad(c, p, "expected %s, got \"%s\"", list, s);
    free(s);
    return;
  }
  switch (k->type) {
  case SL_KEY_ENUM: {
    int val = k->values ? k->values[i] : i;
    memcpy(field, &val, sizeof(val));
    free(s);
    return;
  }
  case SL_KEY_ADDRESS:
    check_address(c, path, k->name, s);
    break;
  case SL_KEY_PEER:
    check_peer(c, path, k->name, s);
    break;
  case SL_KEY_PATH: {
    char *abs = resolve(c, s);
    free(s);
    s = abs;
    if (s && (k->flags & SL_KEY_READ) && access(s, R_OK) != 0)
      bad(c, p, "cannot read %s: %s", s, strerror(errno));
    break;
  }
  case SL_KEY_FILE: {
    char *abs = resolve(c, s);
    free(s);
    s = abs;
    if (s && !path_writable(s, why, sizeof(why)))
      bad(c, p, "cannot write %s: %s", s, why);
    break;
  }
  case SL_KEY_SOCKET:
    check_socket_path(c, path, k->name, &s);
    break;
  default:
    break;
  }
  store_str(field, s);
}

static void read_key(struct check *c, int t, const char *path,
                     const struct sl_config_plugin *pl,
                     const struct sl_config_key *k, void *base,
                     struct sl_config_value *slot) {
  char *field = k->field ? (char *)base + k->field - 1 : NULL;
  char p[256];
  char *s = NULL;
  uint64_t v = 0;
  int nil;

  if (k->type == SL_KEY_CORE)
    return;
  if (field == NULL) {
    slot->key = k;
    field = k->type == SL_KEY_BOOL || k->type == SL_KEY_ENUM ? (char *)&slot->flag
            : k->type == SL_KEY_UINT || k->type == SL_KEY_BYTES
                ? (char *)&slot->num /* size 0: stored as 8 bytes */
                : (char *)&slot->str;
  }
  key_default(c, k, field);
  join(p, sizeof(p), path, k->name);
  lua_getfield(c->L, t, k->name);
  nil = lua_isnil(c->L, -1);
  lua_pop(c->L, 1);
  if (nil) {
    if (k->flags & SL_KEY_REQUIRED)
      bad(c, p, "expected %s, got nil (a %s %s needs %s)",
          k->type == SL_KEY_BOOL ? "boolean"
          : k->type == SL_KEY_UINT || k->type == SL_KEY_BYTES ? "number"
                                                              : "string",
          pl->type, sl_config_kind_name(pl->kind), k->name);
    return;
  }
  switch (k->type) {
  case SL_KEY_BOOL:
    opt_bool(c, t, path, k->name, (int *)(void *)field);
    return;
  case SL_KEY_UINT:
  case SL_KEY_BYTES:
    if (k->size == sizeof(uint32_t)) {
      uint32_t u;
      memcpy(&u, field, sizeof(u));
      v = u;
    } else {
      memcpy(&v, field, sizeof(v));
    }
    opt_uint(c, t, path, k->name, k->min, k->max, &v,
             k->type == SL_KEY_BYTES);
    store_uint(k, field, v);
    return;
  case SL_KEY_TLS: {
    char who[96];
    snprintf(who, sizeof(who), "%s %s", pl->type, sl_config_kind_name(pl->kind));
    read_tls(c, t, path, who,
             pl->kind == SL_PLUGIN_INPUT && !(k->flags & SL_KEY_TLS_CLIENT),
             (struct sl_tls_config *)(void *)field);
    return;
  }
  case SL_KEY_ARGV:
    opt_argv(c, t, p, k->name, (char **)(void *)field);
    return;
  case SL_KEY_HEADERS:
    read_headers(c, t, p, k->name, field);
    return;
  default:
    break;
  }
  opt_str(c, t, path, k->name, &s, 0);
  if (s != NULL && (k->flags & SL_KEY_ONE_LINE) && !one_line(c, t, k->name)) {
    bad(c, p, "the value holds a CR, LF or NUL (it goes into one protocol "
              "line; a trailing newline from the environment?)");
    free(s);
    return;
  }
  if (s != NULL)
    read_str_key(c, path, p, k, field, s);
}

/* Read every key pl declares into cfg (the input's or output's config
 * struct) and its values list. */
static void read_keys(struct check *c, int t, const char *path,
                      const struct sl_config_plugin *pl, void *cfg,
                      struct sl_config_value **values, int *nvalues) {
  const struct sl_config_key *k;
  int n = 0;
  for (k = pl ? pl->keys : NULL; k && k->name; k++)
    n += k->field == 0 && k->type != SL_KEY_CORE;
  if (n > 0 && (*values = calloc((size_t)n, sizeof(**values))) == NULL) {
    bad(c, path, "out of memory");
    return;
  }
  n = 0;
  for (k = pl ? pl->keys : NULL; k && k->name; k++) {
    int own = k->field == 0 && k->type != SL_KEY_CORE;
    read_key(c, t, path, pl, k, cfg, own ? &(*values)[n] : NULL);
    n += own;
  }
  *nvalues = n;
}

static const struct sl_config_value *
value_of(const struct sl_config_value *v, int n, const char *name) {
  int i;
  for (i = 0; i < n; i++)
    if (v[i].key && strcmp(v[i].key->name, name) == 0)
      return &v[i];
  return NULL;
}

const char *sl_config_value_str(const struct sl_config_value *values, int n,
                                const char *name) {
  const struct sl_config_value *v = value_of(values, n, name);
  return v ? v->str : NULL;
}

uint64_t sl_config_value_num(const struct sl_config_value *values, int n,
                             const char *name) {
  const struct sl_config_value *v = value_of(values, n, name);
  if (v == NULL)
    return 0;
  if (v->key->type == SL_KEY_BOOL || v->key->type == SL_KEY_ENUM)
    return (uint64_t)v->flag;
  return v->num;
}

/* Is the value at the top something a plugin that does not take the key
 * may still be given? false, or an enum's choice that stores 0 ("never"):
 * it asks for nothing, and configs have said so. */
static int asks_nothing(struct check *c, const struct sl_config_key *k) {
  int i;
  if (k->type == SL_KEY_BOOL)
    return lua_type(c->L, -1) == LUA_TBOOLEAN && !lua_toboolean(c->L, -1);
  if (k->type == SL_KEY_ENUM && lua_type(c->L, -1) == LUA_TSTRING &&
      (i = choice(k, lua_tostring(c->L, -1))) >= 0)
    return (k->values ? k->values[i] : i) == 0;
  return 0;
}

/* Every key of the plugin table at t must be a core key of its kind (core:
 * NULL-terminated, name and type first) or a key pl declares. A key only
 * other plugins declare is refused naming them, unless they tolerate it;
 * with no plugin (type missing or unknown, already reported) a key some
 * plugin declares passes. */
static void check_plugin_keys(struct check *c, int t, const char *path,
                              enum sl_plugin_kind kind,
                              const struct sl_config_plugin *pl,
                              const char *const *core) {
  const struct sl_config_plugin *const *o;
  const struct sl_config_key *k, *other;
  lua_State *L = c->L;
  const char *const *a;
  char hint[640], who[256], p[256];
  size_t off;
  int tolerated;

  t = absidx(L, t);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    const char *name;
    if (lua_type(L, -2) != LUA_TSTRING) {
      bad(c, path, "keys must be names, found a %s key", type_of(L, -2));
      lua_pop(L, 1);
      continue;
    }
    name = lua_tostring(L, -2);
    for (a = core; *a; a++)
      if (strcmp(*a, name) == 0)
        break;
    k = sl_config_plugin_key(pl, name);
    if (*a || (k && k->type != SL_KEY_CORE)) {
      lua_pop(L, 1);
      continue;
    }
    other = NULL;
    tolerated = 0;
    for (o = c->plugins; o && *o; o++)
      if ((*o)->kind == kind && *o != pl &&
          (k = sl_config_plugin_key(*o, name)) && k->type != SL_KEY_CORE) {
        other = k;
        tolerated |= (k->flags & SL_KEY_TOLERATED) != 0;
      }
    join(p, sizeof(p), path, name);
    if (other && (pl == NULL || tolerated || asks_nothing(c, other))) {
      /* accepted, ignored */
    } else if (other) {
      owners(c, kind, name, who, sizeof(who));
      bad(c, p, "only %s %ss take %s", who, sl_config_kind_name(kind), name);
    } else {
      /* name and type, the plugin's own keys, then the rest of the core */
      off = (size_t)snprintf(hint, sizeof(hint), "%s, %s", core[0], core[1]);
      for (k = pl ? pl->keys : NULL; k && k->name; k++)
        if (k->type != SL_KEY_CORE && off < sizeof(hint))
          off += (size_t)snprintf(hint + off, sizeof(hint) - off, ", %s",
                                  k->name);
      for (a = core + 2; *a && off < sizeof(hint); a++)
        off += (size_t)snprintf(hint + off, sizeof(hint) - off, ", %s", *a);
      if (pl)
        bad(c, path, "unknown key '%s' (expected one of: %s for type %s)",
            name, hint, pl->type);
      else
        bad(c, path, "unknown key '%s' (expected one of: %s)", name, hint);
    }
    lua_pop(L, 1);
  }
}

/* The plugin named by the type field already read into type (NULL: the
 * type is missing, reported). An unknown type is reported here. */
static const struct sl_config_plugin *plugin_of(struct check *c,
                                                enum sl_plugin_kind kind,
                                                const char *path,
                                                const char *type) {
  const struct sl_config_plugin *pl;
  char p[256], list[256];
  if (type == NULL)
    return NULL;
  pl = sl_config_plugin_find(c->plugins, kind, type);
  if (pl == NULL) {
    join(p, sizeof(p), path, "type");
    type_list(c, kind, NULL, "", list, sizeof(list));
    bad(c, p, "unknown %s type \"%s\" (expected %s)", sl_config_kind_name(kind),
        type, list);
  }
  return pl;
}

static void check_queue(struct check *c, int t, const char *path,
                        struct sl_queue_config *q) {
  static const char *const keys[] = {"max_events", "max_bytes", "when_full",
                                     NULL};
  char p[256], pw[300];
  char *when = NULL;

  q->max_events = 100000;
  q->max_bytes = 64u << 20;
  q->when_full = SL_QUEUE_BLOCK;
  lua_getfield(c->L, t, "queue");
  join(p, sizeof(p), path, "queue");
  if (lua_istable(c->L, -1)) {
    int qt = lua_gettop(c->L);
    check_keys(c, qt, p, keys);
    opt_u32(c, qt, p, "max_events", 1, 1u << 30, &q->max_events, 0);
    opt_uint(c, qt, p, "max_bytes", 1024, 1ull << 40, &q->max_bytes, 1);
    opt_str(c, qt, p, "when_full", &when, 0);
    if (when) {
      snprintf(pw, sizeof(pw), "%s.when_full", p);
      if (strcmp(when, "block") == 0)
        q->when_full = SL_QUEUE_BLOCK;
      else if (strcmp(when, "drop_newest") == 0)
        q->when_full = SL_QUEUE_DROP_NEWEST;
      else if (strcmp(when, "drop_oldest") == 0)
        q->when_full = SL_QUEUE_DROP_OLDEST;
      else if (strcmp(when, "spill") == 0)
        q->when_full = SL_QUEUE_SPILL;
      else
        bad(c, pw,
            "expected \"block\", \"drop_newest\", \"drop_oldest\" or "
            "\"spill\", got \"%s\"",
            when);
      free(when);
    }
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, p, "expected table, got %s", type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
}

static void check_buffer(struct check *c, int t, const char *path,
                         struct sl_output_config *o) {
  static const char *const keys[] = {"type", "path", "max_bytes", "fsync",
                                     "fsync_interval_ms", NULL};
  struct sl_output_buffer_config *b = &o->buffer;
  char p[256], pk[300], why[256];
  char *type = NULL, *fsync = NULL;

  b->max_bytes = 1ull << 30;
  b->fsync_interval_ms = 1000;
  b->fsync = 1;
  lua_getfield(c->L, t, "buffer");
  join(p, sizeof(p), path, "buffer");
  if (lua_istable(c->L, -1)) {
    int bt = lua_gettop(c->L);
    check_keys(c, bt, p, keys);
    /* spill takes buffer.path and max_bytes without a type (README) */
    opt_str(c, bt, p, "type", &type, o->queue.when_full != SL_QUEUE_SPILL);
    opt_str(c, bt, p, "path", &b->path, 0);
    opt_uint(c, bt, p, "max_bytes", 1u << 20, 1ull << 50, &b->max_bytes, 1);
    opt_str(c, bt, p, "fsync", &fsync, 0);
    opt_u32(c, bt, p, "fsync_interval_ms", 1, 3600000, &b->fsync_interval_ms,
            0);
    snprintf(pk, sizeof(pk), "%s.type", p);
    if (type && strcmp(type, "disk") == 0)
      b->disk = 1;
    else if (type)
      bad(c, pk, "expected \"disk\", got \"%s\"", type);
    snprintf(pk, sizeof(pk), "%s.fsync", p);
    if (fsync == NULL || strcmp(fsync, "interval") == 0)
      b->fsync = 1;
    else if (strcmp(fsync, "always") == 0)
      b->fsync = 2;
    else if (strcmp(fsync, "never") == 0)
      b->fsync = 0;
    else
      bad(c, pk, "expected \"always\", \"interval\" or \"never\", got "
                 "\"%s\"", fsync);
    free(type);
    free(fsync);
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, p, "expected table, got %s", type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
  if (b->disk && o->queue.when_full == SL_QUEUE_DROP_OLDEST)
    bad(c, p, "a disk buffer keeps events in order until delivered: "
              "queue.when_full must be \"block\" or \"drop_newest\"");
  if (b->disk && o->queue.when_full == SL_QUEUE_SPILL)
    bad(c, p, "a disk buffer already keeps every event on disk: "
              "queue.when_full = \"spill\" is for memory queues");
  if (!b->disk && o->queue.when_full != SL_QUEUE_SPILL) {
    free(b->path);
    b->path = NULL;
    return;
  }
  if (!b->disk)
    b->fsync = 0; /* spill is overflow, not durability */
  if (b->path == NULL && o->name) {
    char rel[300];
    snprintf(rel, sizeof(rel), "buffer/%s", o->name);
    b->path = in_state(c, rel);
  } else if (b->path) {
    char *abs = resolve(c, b->path);
    free(b->path);
    b->path = abs;
  }
  snprintf(pk, sizeof(pk), "%s.path", p);
  if (b->path && !usable(b->path, 1, why, sizeof(why)))
    bad(c, pk, "cannot use %s: %s", b->path, why);
}

static void check_retry(struct check *c, int t, const char *path,
                        struct sl_output_config *o,
                        const struct sl_config_plugin *pl) {
  static const char *const keys[] = {"initial_ms",     "max_ms",
                                     "max_attempts",   "max_elapsed_ms",
                                     "timeout_ms",     NULL};
  struct sl_retry_config *r = &o->retry;
  char p[256], pk[300];
  r->initial_ms = 100;
  r->max_ms = 10000;
  r->timeout_ms = 30000;
  lua_getfield(c->L, t, "retry");
  join(p, sizeof(p), path, "retry");
  if (lua_istable(c->L, -1)) {
    int rt = lua_gettop(c->L);
    check_keys(c, rt, p, keys);
    opt_u32(c, rt, p, "initial_ms", 1, 3600000, &r->initial_ms, 0);
    opt_u32(c, rt, p, "max_ms", 1, 3600000, &r->max_ms, 0);
    opt_u32(c, rt, p, "max_attempts", 1, 1000000000, &r->max_attempts, 0);
    opt_u32(c, rt, p, "max_elapsed_ms", 1, 604800000, &r->max_elapsed_ms, 0);
    opt_u32(c, rt, p, "timeout_ms", 0, 3600000, &r->timeout_ms, 0);
    if (r->max_ms < r->initial_ms)
      bad(c, p, "max_ms (%u) is below initial_ms (%u)", r->max_ms,
          r->initial_ms);
    lua_getfield(c->L, rt, "timeout_ms");
    snprintf(pk, sizeof(pk), "%s.timeout_ms", p);
    if (!lua_isnil(c->L, -1) && pl &&
        !sl_config_plugin_key(pl, "retry.timeout_ms")) {
      char who[256];
      owners(c, SL_PLUGIN_OUTPUT, "retry.timeout_ms", who, sizeof(who));
      bad(c, pk, "only %s outputs time out (a file write cannot be cut "
                 "short)", who);
    }
    lua_pop(c->L, 1);
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, p, "expected table, got %s", type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
}

/* breaker = { failures, open_ms }, or false for none. Runs after
 * check_retry: open_ms defaults to 5000, or to retry.max_ms when lower, so
 * an output told to retry fast is not paused for longer than it asked. */
static void check_breaker(struct check *c, int t, const char *path,
                          struct sl_output_config *o) {
  static const char *const keys[] = {"failures", "open_ms", NULL};
  struct sl_breaker_config *b = &o->breaker;
  char p[256];
  b->failures = 5;
  b->open_ms = o->retry.max_ms < 5000 ? o->retry.max_ms : 5000;
  lua_getfield(c->L, t, "breaker");
  join(p, sizeof(p), path, "breaker");
  if (lua_istable(c->L, -1)) {
    int bt = lua_gettop(c->L);
    check_keys(c, bt, p, keys);
    opt_u32(c, bt, p, "failures", 0, 1000000, &b->failures, 0);
    opt_u32(c, bt, p, "open_ms", 1, 86400000, &b->open_ms, 0);
  } else if (lua_type(c->L, -1) == LUA_TBOOLEAN) {
    if (!lua_toboolean(c->L, -1))
      b->failures = 0;
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, p, "expected table or boolean, got %s", type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
}

/* The plugin's own check of its keys taken together (keys.h), when the
 * entry's keys read cleanly (nerr: the error count before the entry). */
static void plugin_check(struct check *c, const char *path,
                         const struct sl_config_plugin *pl, const void *conf,
                         int nerr) {
  char why[400];
  int rc;
  if (pl == NULL || pl->check == NULL || c->nerr != nerr)
    return;
  why[0] = '\0';
  rc = pl->check(conf, why, sizeof(why));
  if (rc != 0)
    bad(c, path, "%s", why[0]              ? why
                       : rc == SL_ENOMEM ? "out of memory"
                                         : "refused by its plugin");
}

static void check_rate_limit(struct check *c, int t, const char *path,
                             struct sl_rate_limit_config *r) {
  static const char *const keys[] = {"events_per_second", "burst", NULL};
  char p[256], pk[300];
  lua_getfield(c->L, t, "rate_limit");
  join(p, sizeof(p), path, "rate_limit");
  if (lua_istable(c->L, -1)) {
    int rt = lua_gettop(c->L);
    check_keys(c, rt, p, keys);
    opt_u32(c, rt, p, "events_per_second", 1, 1000000000,
            &r->events_per_second, 0);
    opt_u32(c, rt, p, "burst", 1, 1000000000, &r->burst, 0);
    snprintf(pk, sizeof(pk), "%s.events_per_second", p);
    if (r->events_per_second == 0)
      bad(c, pk, "expected a number of events per second, got nil");
    if (r->burst == 0)
      r->burst = r->events_per_second;
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, p, "expected table, got %s", type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
}

static void check_dedup(struct check *c, int t, const char *path,
                        struct sl_dedup_config *d) {
  static const char *const keys[] = {"window_ms", "max_ids", NULL};
  char p[256], pk[300];
  lua_getfield(c->L, t, "dedup");
  join(p, sizeof(p), path, "dedup");
  if (lua_istable(c->L, -1)) {
    int dt = lua_gettop(c->L);
    check_keys(c, dt, p, keys);
    d->max_ids = 100000;
    opt_u32(c, dt, p, "window_ms", 1, 604800000, &d->window_ms, 0);
    opt_u32(c, dt, p, "max_ids", 1, 1u << 24, &d->max_ids, 0);
    snprintf(pk, sizeof(pk), "%s.window_ms", p);
    if (d->window_ms == 0)
      bad(c, pk, "expected the window in milliseconds, got nil");
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, p, "expected table, got %s", type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
}

/* The keys the core reads for every plugin of a kind: name and type first
 * (the hint of an unknown key lists the plugin's own keys after them). */
static const char *const input_core[] = {"name", "type", NULL};
static const char *const output_core[] = {
    "name",       "type",  "queue",  "retry",        "breaker",
    "rate_limit", "dedup", "buffer", "batch_events", "schema", NULL};

const char *const *sl_config_core_keys(enum sl_plugin_kind kind) {
  return kind == SL_PLUGIN_INPUT ? input_core : output_core;
}

static void check_inputs(struct check *c, struct sl_config *cfg, int t) {
  const char *const *core = input_core;
  lua_State *L = c->L;
  char p[64];
  int n, i, j;

  lua_getfield(L, t, "inputs");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1) || !is_list(L, -1, &n)) {
    bad(c, "inputs", "expected a list of tables, got %s", type_of(L, -1));
    lua_pop(L, 1);
    return;
  }
  cfg->inputs = calloc((size_t)n + 1, sizeof(*cfg->inputs));
  if (cfg->inputs == NULL) {
    no_memory(c);
    goto done;
  }
  for (i = 1; i <= n; i++) {
    struct sl_input_config *in = &cfg->inputs[cfg->ninputs++];
    const struct sl_config_plugin *pl;
    const char *udp;
    int it, nerr = c->nerr;
    snprintf(p, sizeof(p), "inputs[%d]", i);
    lua_rawgeti(L, -1, i);
    it = lua_gettop(L);
    if (!lua_istable(L, it)) {
      bad(c, p, "expected table, got %s", type_of(L, it));
      lua_pop(L, 1);
      continue;
    }
    opt_str(c, it, p, "name", &in->name, 1);
    check_name(c, p, in->name);
    opt_str(c, it, p, "type", &in->type, 1);
    pl = plugin_of(c, SL_PLUGIN_INPUT, p, in->type);
    check_plugin_keys(c, it, p, SL_PLUGIN_INPUT, pl, core);
    read_keys(c, it, p, pl, in, &in->values, &in->nvalues);
    plugin_check(c, p, pl, in, nerr);
    udp = sl_config_value_str(in->values, in->nvalues, "udp");
    for (j = 0; j < cfg->ninputs - 1; j++) {
      const char *uj;
      if (in->name && cfg->inputs[j].name &&
          strcmp(in->name, cfg->inputs[j].name) == 0) {
        char pn[80];
        snprintf(pn, sizeof(pn), "%s.name", p);
        bad(c, pn, "duplicate input name \"%s\" (also inputs[%d])", in->name,
            j + 1);
      }
      if (in->listen && cfg->inputs[j].listen &&
          sl_config_listen_collide(in->listen, cfg->inputs[j].listen)) {
        char pl2[80];
        snprintf(pl2, sizeof(pl2), "%s.listen", p);
        bad(c, pl2, "\"%s\" is already used by inputs[%d]", in->listen,
            j + 1);
      }
      /* a syslog input's datagram socket: only another one takes its
       * address (tcp and udp on one port do not meet) */
      if (udp && (uj = sl_config_value_str(cfg->inputs[j].values,
                                           cfg->inputs[j].nvalues, "udp")) &&
          sl_config_listen_collide(udp, uj)) {
        char pl2[80];
        snprintf(pl2, sizeof(pl2), "%s.udp", p);
        bad(c, pl2, "\"%s\" is already used by inputs[%d] (udp)", udp,
            j + 1);
      }
    }
    lua_pop(L, 1);
  }
done:
  lua_pop(L, 1);
}

/* schema = "path.json": events routed to the output must fit it. */
static void check_output_schema(struct check *c, int ot, const char *p,
                                struct sl_output_config *o) {
  char *rel = NULL, why[512], pk[96];
  opt_str(c, ot, p, "schema", &rel, 0);
  if (rel == NULL)
    return;
  o->schema_file = resolve(c, rel);
  free(rel);
  snprintf(pk, sizeof(pk), "%s.schema", p);
  if (o->schema_file && sl_schema_load_file(o->schema_file, &o->schema, why,
                                            sizeof(why)) != 0)
    bad(c, pk, "%s", why);
}

static void check_output(struct check *c, struct sl_config *cfg, int ot,
                         const char *p, struct sl_output_config *o) {
  const char *const *core = output_core;
  const struct sl_config_plugin *pl;
  int nerr = c->nerr;

  opt_str(c, ot, p, "name", &o->name, 1);
  check_name(c, p, o->name);
  opt_str(c, ot, p, "type", &o->type, 1);
  pl = plugin_of(c, SL_PLUGIN_OUTPUT, p, o->type);
  check_plugin_keys(c, ot, p, SL_PLUGIN_OUTPUT, pl, core);
  read_keys(c, ot, p, pl, o, &o->values, &o->nvalues);
  plugin_check(c, p, pl, o, nerr);
  o->batch_events = 1024;
  opt_u32(c, ot, p, "batch_events", 1, 65536, &o->batch_events, 0);
  check_queue(c, ot, p, &o->queue);
  check_buffer(c, ot, p, o);
  check_retry(c, ot, p, o, pl);
  check_breaker(c, ot, p, o);
  check_rate_limit(c, ot, p, &o->rate_limit);
  check_dedup(c, ot, p, &o->dedup);
  check_output_schema(c, ot, p, o);
  (void)cfg;
}

static void check_outputs(struct check *c, struct sl_config *cfg, int t) {
  lua_State *L = c->L;
  char p[64];
  int n, i, j;

  lua_getfield(L, t, "outputs");
  if (lua_isnil(L, -1)) {
    n = 0;
  } else if (!lua_istable(L, -1) || !is_list(L, -1, &n)) {
    bad(c, "outputs", "expected a list of tables, got %s", type_of(L, -1));
    lua_pop(L, 1);
    return;
  }
  if (n > SL_CONFIG_MAX_OUTPUTS - 1) {
    bad(c, "outputs", "at most %d outputs", SL_CONFIG_MAX_OUTPUTS - 1);
    lua_pop(L, 1);
    return;
  }
  /* one more slot for the implicit dead-letter output */
  cfg->outputs = calloc((size_t)n + 2, sizeof(*cfg->outputs));
  if (cfg->outputs == NULL) {
    no_memory(c);
    goto done;
  }
  for (i = 1; i <= n; i++) {
    struct sl_output_config *o = &cfg->outputs[cfg->noutputs++];
    snprintf(p, sizeof(p), "outputs[%d]", i);
    lua_rawgeti(L, -1, i);
    if (!lua_istable(L, -1))
      bad(c, p, "expected table, got %s", type_of(L, -1));
    else
      check_output(c, cfg, lua_gettop(L), p, o);
    lua_pop(L, 1);
    for (j = 0; j < cfg->noutputs - 1; j++)
      if (o->name && cfg->outputs[j].name &&
          strcmp(o->name, cfg->outputs[j].name) == 0) {
        char pn[80];
        snprintf(pn, sizeof(pn), "%s.name", p);
        bad(c, pn, "duplicate output name \"%s\" (also outputs[%d])", o->name,
            j + 1);
      }
  }
done:
  lua_pop(L, 1);
}

static void check_rate_limit(struct check *c, int t, const char *path,
                             struct sl_rate_limit_config *r);

static void check_routes(struct check *c, struct sl_config *cfg, int t) {
  static const char *const keys[] = {"topics", "to", "rate_limit", NULL};
  lua_State *L = c->L;
  char p[64];
  int n, i, j;

  lua_getfield(L, t, "routes");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1) || !is_list(L, -1, &n)) {
    bad(c, "routes", "expected a list of tables, got %s", type_of(L, -1));
    lua_pop(L, 1);
    return;
  }
  cfg->router.routes = calloc((size_t)n + 1, sizeof(struct sl_route));
  if (cfg->router.routes == NULL) {
    no_memory(c);
    goto done;
  }
  for (i = 1; i <= n; i++) {
    struct sl_route *r = &cfg->router.routes[cfg->router.nroutes++];
    char **to = NULL;
    int nto = 0, rt;
    snprintf(p, sizeof(p), "routes[%d]", i);
    lua_rawgeti(L, -1, i);
    rt = lua_gettop(L);
    if (!lua_istable(L, rt)) {
      bad(c, p, "expected table, got %s", type_of(L, rt));
      lua_pop(L, 1);
      continue;
    }
    check_keys(c, rt, p, keys);
    {
      struct sl_rate_limit_config rl = {0, 0};
      check_rate_limit(c, rt, p, &rl);
      r->rate = rl.events_per_second;
      r->burst = rl.burst;
    }
    opt_strlist(c, rt, p, "topics", &r->topics, &r->ntopics, 1);
    opt_strlist(c, rt, p, "to", &to, &nto, 1);
    if (nto > SL_ROUTER_MAX_TO) {
      bad(c, p, "at most %d outputs in 'to'", SL_ROUTER_MAX_TO);
      nto = SL_ROUTER_MAX_TO;
    }
    for (j = 0; j < nto; j++) {
      int idx = sl_config_output_index(cfg, to[j], strlen(to[j]));
      if (idx < 0) {
        char pt[80];
        if (nto == 1)
          snprintf(pt, sizeof(pt), "%s.to", p);
        else
          snprintf(pt, sizeof(pt), "%s.to[%d]", p, j + 1);
        bad(c, pt, "no output named \"%s\"", to[j]);
      } else {
        r->to[r->nto++] = (uint16_t)idx;
      }
    }
    free_strlist(to, nto);
    lua_pop(L, 1);
  }
done:
  lua_pop(L, 1);
}

static void check_rules(struct check *c, struct sl_config *cfg, int t) {
  static const char *const keys[] = {"dir",        "watch",     "cpu_budget_ms",
                                     "memory_mb",  "debounce_ms",
                                     "on_error", "persist",
                                     "persist_interval_s", "jit", NULL};
  struct sl_rules_config *r = &cfg->rules;
  lua_State *L = c->L;
  struct stat st;

  r->watch = 1;
  r->cpu_budget_ms = 10;
  r->memory_mb = 64;
  r->debounce_ms = 50;
  r->persist_interval_s = 60;
  lua_getfield(L, t, "rules");
  if (lua_istable(L, -1)) {
    int rt = lua_gettop(L);
    check_keys(c, rt, "rules", keys);
    opt_str(c, rt, "rules", "dir", &r->dir, 0);
    opt_bool(c, rt, "rules", "watch", &r->watch);
    opt_u32(c, rt, "rules", "cpu_budget_ms", 1, 60000, &r->cpu_budget_ms, 0);
    opt_u32(c, rt, "rules", "memory_mb", 1, 65536, &r->memory_mb, 0);
    opt_bool(c, rt, "rules", "jit", &r->jit);
    opt_u32(c, rt, "rules", "debounce_ms", 0, 10000, &r->debounce_ms, 0);
    opt_str(c, rt, "rules", "on_error", &r->on_error, 0);
    if (r->on_error && strcmp(r->on_error, "dead_letter") != 0 &&
        strcmp(r->on_error, "drop") != 0 && strcmp(r->on_error, "pass") != 0)
      bad(c, "rules.on_error", "expected \"dead_letter\", \"drop\" or "
          "\"pass\", got \"%s\"", r->on_error);
    opt_bool(c, rt, "rules", "persist", &r->persist);
    opt_u32(c, rt, "rules", "persist_interval_s", 1, 86400,
            &r->persist_interval_s, 0);
    if (r->dir) {
      char *abs = resolve(c, r->dir);
      free(r->dir);
      r->dir = abs;
      if (abs && (stat(abs, &st) != 0 || !S_ISDIR(st.st_mode)))
        bad(c, "rules.dir", "%s is not a directory", abs);
    }
  } else if (!lua_isnil(L, -1)) {
    bad(c, "rules", "expected table, got %s", type_of(L, -1));
  }
  lua_pop(L, 1);
}

static void check_admin(struct check *c, struct sl_config *cfg, int t) {
  static const char *const keys[] = {"listen", "bearer_token_file",
                                     "redact_headers", "max_connections",
                                     "ready_requires_outputs", "tls",
                                     NULL};
  struct sl_admin_config *a = &cfg->admin;
  lua_State *L = c->L;

  a->max_connections = 64;
  lua_getfield(L, t, "admin");
  if (lua_istable(L, -1)) {
    int at = lua_gettop(L);
    check_keys(c, at, "admin", keys);
    opt_str(c, at, "admin", "listen", &a->listen, 0);
    check_address(c, "admin", "listen", a->listen);
    opt_str(c, at, "admin", "bearer_token_file", &a->bearer_token_file, 0);
    if (a->bearer_token_file) {
      char *abs = resolve(c, a->bearer_token_file);
      free(a->bearer_token_file);
      a->bearer_token_file = abs;
      if (abs && access(abs, R_OK) != 0) /* read at start */
        bad(c, "admin.bearer_token_file", "cannot read %s: %s", abs,
            strerror(errno));
    }
    opt_strlist(c, at, "admin", "redact_headers", &a->redact_headers,
                &a->nredact, 0);
    opt_u32(c, at, "admin", "max_connections", 1, 100000, &a->max_connections,
            0);
    opt_bool(c, at, "admin", "ready_requires_outputs",
             &a->ready_requires_outputs);
    read_tls(c, at, "admin", "admin server", 1, &a->tls);
  } else if (!lua_isnil(L, -1)) {
    bad(c, "admin", "expected table, got %s", type_of(L, -1));
  }
  lua_pop(L, 1);
  {
    /* credentials and session state that travel in headers: always
     * masked; a configured list adds to them (a list that replaced them
     * would unmask authorization by naming one header of one's own) */
    static const char *const defaults[] = {"authorization",
                                           "proxy-authorization", "cookie",
                                           "set-cookie", "x-api-key"};
    size_t k, nd = SL_ARRAY_SIZE(defaults);
    char **all = calloc(nd + (size_t)a->nredact, sizeof(char *));
    if (all == NULL)
      no_memory(c);
    if (all) {
      for (k = 0; k < nd; k++)
        all[k] = dupstr(c, defaults[k]);
      for (k = 0; k < (size_t)a->nredact; k++)
        all[nd + k] = a->redact_headers[k];
      free(a->redact_headers);
      a->redact_headers = all;
      a->nredact += (int)nd;
    }
  }
}

static void check_dead_letter(struct check *c, struct sl_config *cfg, int t) {
  lua_State *L = c->L;
  char why[256];

  cfg->dead_letter = -1;
  lua_getfield(L, t, "dead_letter");
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *name = lua_tostring(L, -1);
    cfg->dead_letter = sl_config_output_index(cfg, name, strlen(name));
    if (cfg->dead_letter < 0)
      bad(c, "dead_letter", "no output named \"%s\"", name);
  } else if (lua_isnil(L, -1)) {
    /* the implicit dead-letter output: a file in the state folder */
    struct sl_output_config *o;
    if (cfg->outputs == NULL)
      cfg->outputs = calloc(2, sizeof(*cfg->outputs));
    if (cfg->outputs == NULL) {
      no_memory(c);
      goto done;
    }
    if (sl_config_output_index(cfg, "dead_letter", 11) >= 0) {
      bad(c, "dead_letter",
          "an output is called \"dead_letter\": name it in dead_letter = "
          "\"dead_letter\" or rename it");
      goto done;
    }
    o = &cfg->outputs[cfg->noutputs];
    memset(o, 0, sizeof(*o));
    o->name = dupstr(c, "dead_letter");
    o->type = dupstr(c, "file");
    o->format = dupstr(c, "ndjson");
    o->path = in_state(c, "dead-letter.ndjson");
    o->batch_events = 1024;
    o->queue.max_events = 100000;
    o->queue.max_bytes = 64u << 20;
    o->queue.when_full = SL_QUEUE_BLOCK;
    o->retry.initial_ms = 100;
    o->retry.max_ms = 10000;
    o->breaker.failures = 5;
    o->breaker.open_ms = 5000;
    cfg->dead_letter = cfg->noutputs++;
    if (o->path && !path_writable(o->path, why, sizeof(why)))
      bad(c, "dead_letter", "cannot write the default %s: %s", o->path, why);
  } else {
    bad(c, "dead_letter", "expected the name of an output, got %s",
        type_of(L, -1));
  }
done:
  lua_pop(L, 1);
}

/* unrouted = "drop" (the default) or the name of an output that takes
 * the events no rule and no route decided. */
static void check_unrouted(struct check *c, struct sl_config *cfg, int t) {
  lua_State *L = c->L;
  cfg->unrouted = 0;
  lua_getfield(L, t, "unrouted");
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *name = lua_tostring(L, -1);
    if (strcmp(name, "drop") != 0) {
      cfg->unrouted = 1 + sl_config_output_index(cfg, name, strlen(name));
      if (cfg->unrouted == 0)
        bad(c, "unrouted", "expected \"drop\" or the name of an output, "
                           "no output named \"%s\"", name);
    }
  } else if (!lua_isnil(L, -1)) {
    bad(c, "unrouted", "expected \"drop\" or the name of an output, got %s",
        type_of(L, -1));
  }
  lua_pop(L, 1);
}

/* state_dir: resolved against the config's folder (default var/); it
 * need not exist yet, but it or the nearest folder above must be
 * writable. The config's own folder may be read-only. */
static void check_state_dir(struct check *c, struct sl_config *cfg, int t) {
  char *dir = NULL, why[256];
  opt_str(c, t, "", "state_dir", &dir, 0);
  cfg->state_dir = resolve(c, dir ? dir : "var");
  free(dir);
  if (cfg->state_dir == NULL)
    return;
  {
    size_t n = strlen(cfg->state_dir);
    while (n > 1 && cfg->state_dir[n - 1] == '/')
      cfg->state_dir[--n] = '\0';
  }
  c->state_dir = cfg->state_dir;
  if (!usable(cfg->state_dir, 1, why, sizeof(why)))
    bad(c, "state_dir", "cannot use %s: %s", cfg->state_dir, why);
}

/* workers = N (1..64) or "auto" (the CPUs this process may use: online,
 * in its affinity mask, within its cgroup's CPU quota; at most 64);
 * default 1.
 * workers_balance = false keeps each worker's even share of the buckets,
 * so a key's rule state stays with it. What is not safe with several rule
 * states yet is refused by name. */
static void check_workers(struct check *c, struct sl_config *cfg, int t) {
  long n;
  cfg->workers = 1;
  lua_getfield(c->L, t, "workers");
  if (lua_type(c->L, -1) == LUA_TNUMBER) {
    double v = lua_tonumber(c->L, -1);
    if (v != (double)(long)v || v < 1 || v > SL_CONFIG_MAX_WORKERS)
      bad(c, "workers", "expected an integer from 1 to %d or \"auto\", got %g",
          SL_CONFIG_MAX_WORKERS, v);
    else
      cfg->workers = (int)v;
  } else if (lua_type(c->L, -1) == LUA_TSTRING &&
             strcmp(lua_tostring(c->L, -1), "auto") == 0) {
    sl_cpus_available(&cfg->cpus);
    n = cfg->cpus.n;
    cfg->workers_auto = 1;
    cfg->workers = n < 1 ? 1 : n > SL_CONFIG_MAX_WORKERS
                                   ? SL_CONFIG_MAX_WORKERS : (int)n;
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, "workers", "expected an integer from 1 to %d or \"auto\", got %s",
        SL_CONFIG_MAX_WORKERS,
        lua_type(c->L, -1) == LUA_TSTRING ? lua_tostring(c->L, -1)
                                          : type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
  cfg->workers_balance = 1;
  opt_bool(c, t, "", "workers_balance", &cfg->workers_balance);
  if (cfg->workers > 1 && cfg->rules.persist)
    bad(c, "workers", "rules.persist keeps one state file per rule, and "
        "workers = %d would run %d states: use workers = 1 with "
        "rules.persist", cfg->workers, cfg->workers);
}

static void check_top(struct check *c, struct sl_config *cfg, int t) {
  static const char *const keys[] = {
      "inputs",    "outputs",          "routes",          "rules",
      "admin",     "dead_letter",      "pid_file",        "shutdown_timeout",
      "log_level", "max_event_bytes",  "state_dir",       "unrouted",
      "schemas",   "workers",          "workers_balance", NULL};
  double timeout;
  char *level = NULL, *pid = NULL;

  check_keys(c, t, "", keys);
  check_state_dir(c, cfg, t); /* first: other defaults live in it */
  check_inputs(c, cfg, t);
  check_outputs(c, cfg, t);
  check_dead_letter(c, cfg, t);
  check_unrouted(c, cfg, t);
  check_routes(c, cfg, t);
  check_rules(c, cfg, t);
  check_admin(c, cfg, t);
  c->nerr += sl_config_schemas(c->L, t, c->file, c->dir, cfg, c->err);
  check_workers(c, cfg, t);
  cfg->max_event_bytes = 1u << 20;
  opt_u32(c, t, "", "max_event_bytes", 64, 256u << 20, &cfg->max_event_bytes,
          1);
  cfg->shutdown_timeout_ms = 10000;
  lua_getfield(c->L, t, "shutdown_timeout");
  if (lua_type(c->L, -1) == LUA_TNUMBER) {
    timeout = lua_tonumber(c->L, -1);
    if (timeout < 0 || timeout > 3600)
      bad(c, "shutdown_timeout", "expected seconds from 0 to 3600, got %g",
          timeout);
    else
      cfg->shutdown_timeout_ms = (uint32_t)(timeout * 1000);
  } else if (!lua_isnil(c->L, -1)) {
    bad(c, "shutdown_timeout", "expected number (seconds), got %s",
        type_of(c->L, -1));
  }
  lua_pop(c->L, 1);
  cfg->log_level = -1;
  opt_str(c, t, "", "log_level", &level, 0);
  if (level) {
    cfg->log_level = sl_log_level_parse(level);
    if (cfg->log_level < 0)
      bad(c, "log_level", "expected debug, info, warn or error, got \"%s\"",
          level);
    free(level);
  }
  opt_str(c, t, "", "pid_file", &pid, 0);
  if (pid) {
    char why[256];
    cfg->pid_file = resolve(c, pid);
    free(pid);
    if (cfg->pid_file && !path_writable(cfg->pid_file, why, sizeof(why)))
      bad(c, "pid_file", "cannot write %s: %s", cfg->pid_file, why);
  }
  if (cfg->ninputs == 0 && cfg->rules.dir == NULL)
    bad(c, "inputs", "no inputs: nothing would ever arrive");
}

/* The config file's bytes into text. 0, or -1 with err filled. */
static int read_config_file(const char *path, struct sl_buf *text,
                            struct sl_buf *err) {
  char chunk[4096];
  size_t n;
  int failed, no_room = 0;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    sl_buf_printf(err, "%s: cannot open: %s\n", path, strerror(errno));
    return -1;
  }
  /* a short file is at its end after one read: a failed append must fail
   * the load, not leave an empty (or cut) chunk that Lua runs */
  while (!no_room && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    no_room = sl_buf_append(text, chunk, n) != 0;
  failed = ferror(f) || (!no_room && !feof(f));
  fclose(f);
  if (no_room) {
    sl_buf_printf(err, "%s: cannot read: out of memory\n", path);
    return -1;
  }
  if (failed) {
    sl_buf_printf(err, "%s: cannot read: %s\n", path, strerror(errno));
    return -1;
  }
  if (text->len > 0 && text->data[0] == 0x1b) {
    sl_buf_printf(err, "%s: precompiled chunks are not accepted\n", path);
    return -1;
  }
  return 0;
}

/* Run the file's chunk; its table is left on top. 0, or -1 with err. */
static int run_config_chunk(lua_State *L, const char *path,
                            const struct sl_buf *text, struct sl_buf *err) {
  /* a short chunk name swapped for the whole path below: Lua cuts long
   * names to their last 60 bytes ("...of-root/x.lua:3:") */
  if (luaL_loadbuffer(L, (const char *)text->data, text->len, "=" CHUNK) != 0 ||
      lua_pcall(L, 0, 1, 0) != 0) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL)
      sl_buf_printf(err, "%s: error object is a %s\n", path, type_of(L, -1));
    else if (strncmp(msg, CHUNK ":", sizeof(CHUNK)) == 0)
      sl_buf_printf(err, "%s:%s\n", path, msg + sizeof(CHUNK));
    else
      sl_buf_printf(err, "%s: %s\n", path, msg);
    return -1;
  }
  if (!lua_istable(L, -1)) {
    sl_buf_printf(err, "%s: the file must return a table, it returned %s\n",
                  path, type_of(L, -1));
    return -1;
  }
  return 0;
}

struct sl_config *sl_config_load(const char *path,
                                 const struct sl_config_plugin *const *plugins,
                                 struct sl_buf *err) {
  struct sl_config *cfg = NULL;
  struct check c;
  lua_State *L = NULL;
  char *copy = NULL;
  struct sl_buf text;

  memset(&c, 0, sizeof(c));
  c.err = err;
  c.file = path;
  c.plugins = plugins;
  sl_buf_init(&text);
  if (read_config_file(path, &text, err) != 0)
    goto fail;
  if ((L = sl_config_state()) == NULL) {
    sl_buf_printf(err, "%s: out of memory\n", path);
    goto fail;
  }
  if (run_config_chunk(L, path, &text, err) != 0)
    goto fail;
  cfg = calloc(1, sizeof(*cfg));
  copy = strdup(path);
  if (cfg == NULL || copy == NULL) {
    sl_buf_printf(err, "%s: out of memory\n", path);
    goto fail;
  }
  cfg->path = strdup(path);
  {
    /* absolute, so paths stay right whatever the cwd of later commands */
    char *real = realpath(dirname(copy), NULL);
    cfg->dir = real ? real : strdup(".");
  }
  if (cfg->path == NULL || cfg->dir == NULL) {
    sl_buf_printf(err, "%s: out of memory\n", path);
    goto fail;
  }
  c.L = L;
  c.dir = cfg->dir;
  lua_newtable(L); /* the tables expand_table visited */
  expand_table(&c, lua_gettop(L) - 1, lua_gettop(L), "", 0);
  lua_pop(L, 1);
  if (c.nerr == 0)
    check_top(&c, cfg, lua_gettop(L));
  if (c.nerr > 0)
    goto fail;
  free(copy);
  lua_close(L);
  sl_buf_close(&text);
  return cfg;

fail:
  free(copy);
  sl_config_free(cfg);
  if (L)
    lua_close(L);
  sl_buf_close(&text);
  return NULL;
}

static void free_values(struct sl_config_value *v, int n) {
  int i;
  for (i = 0; i < n; i++)
    free(v[i].str);
  free(v);
}

void sl_config_free(struct sl_config *c) {
  int i;
  if (c == NULL)
    return;
  for (i = 0; i < c->ninputs; i++) {
    struct sl_input_config *in = &c->inputs[i];
    free(in->name);
    free(in->type);
    free(in->listen);
    free(in->topic);
    free(in->bearer_token_file);
    free_tls(&in->tls);
    free_values(in->values, in->nvalues);
  }
  free(c->inputs);
  for (i = 0; i < c->noutputs; i++) {
    struct sl_output_config *o = &c->outputs[i];
    free(o->name);
    free(o->type);
    free(o->path);
    free(o->address);
    free(o->format);
    free(o->buffer.path);
    free_tls(&o->tls);
    free_values(o->values, o->nvalues);
    free(o->schema_file);
    sl_schema_free(o->schema);
  }
  sl_config_schemas_free(c);
  free(c->outputs);
  for (i = 0; i < c->router.nroutes; i++)
    free_strlist(c->router.routes[i].topics, c->router.routes[i].ntopics);
  free(c->router.routes);
  free(c->rules.dir);
  free(c->rules.on_error);
  free(c->admin.listen);
  free(c->admin.bearer_token_file);
  free_strlist(c->admin.redact_headers, c->admin.nredact);
  free_tls(&c->admin.tls);
  free(c->pid_file);
  free(c->state_dir);
  free(c->path);
  free(c->dir);
  free(c);
}

int sl_config_output_index(const struct sl_config *c, const char *name,
                           size_t len) {
  int i;
  for (i = 0; i < c->noutputs; i++)
    if (c->outputs[i].name && !c->outputs[i].retired &&
        strlen(c->outputs[i].name) == len &&
        memcmp(c->outputs[i].name, name, len) == 0)
      return i;
  return -1;
}
