/* schemas.c - the config's schemas list: payload contracts per topic glob,
 * each with one or more versions of a schema file, compiled at load (all
 * or nothing: one bad file fails the load, and so a reload). Entries with
 * the same topics are the versions of one contract; the contract's own
 * keys (mode, default_version, version_header, version_field) may sit on
 * any of its entries but must agree. The worker enforces them
 * (worker/schemas.c). */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "codec.h"
#include "config.h"
#include "router.h"
#include "schema.h"

struct sctx {
  lua_State *L;
  const char *file, *dir;
  struct sl_buf *err;
  int nerr;
};

static void sbad(struct sctx *c, const char *path, const char *fmt, ...)
    SL_PRINTF(3, 4);

static void sbad(struct sctx *c, const char *path, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sl_buf_printf(c->err, "%s: %s: %s\n", c->file, path, msg);
  c->nerr++;
}

int sl_config_version_parse(const char *s, size_t n, uint32_t *code) {
  uint32_t major = 0, minor = 0, written = 0;
  size_t i = 0, digits = 0;
  for (; i < n && isdigit((unsigned char)s[i]); i++, digits++)
    if ((major = major * 10 + (uint32_t)(s[i] - '0')) > 0x7fff)
      return SL_EINVAL;
  if (digits == 0)
    return SL_EINVAL;
  if (i < n && s[i] == '.') {
    written = 1;
    for (i++, digits = 0; i < n && isdigit((unsigned char)s[i]);
         i++, digits++)
      if ((minor = minor * 10 + (uint32_t)(s[i] - '0')) > 0x7fff)
        return SL_EINVAL;
    if (digits == 0)
      return SL_EINVAL;
  }
  if (i != n)
    return SL_EINVAL;
  *code = 0x80000000u | major << 16 | written << 15 | minor;
  return 0;
}

/* The version in a file name: ".vN." or ".vN.M." (order.v2.json). */
static int version_of_name(const char *path, uint32_t *code) {
  const char *base = strrchr(path, '/'), *p;
  base = base ? base + 1 : path;
  for (p = strstr(base, ".v"); p; p = strstr(p + 1, ".v")) {
    const char *q = p + 2, *end = NULL;
    if (!isdigit((unsigned char)*q))
      continue;
    while (isdigit((unsigned char)*q))
      q++;
    if (*q == '.' && isdigit((unsigned char)q[1])) {
      const char *r = q + 1;
      while (isdigit((unsigned char)*r))
        r++;
      if (*r == '.')
        end = r; /* .vN.M. */
    }
    if (end == NULL && *q == '.')
      end = q;
    if (end && sl_config_version_parse(p + 2, (size_t)(end - p - 2), code) == 0)
      return 0;
  }
  return SL_EINVAL;
}

/* A version value (string, or a number as Lua prints it) at the top of
 * the stack into *code; 1 when absent, 0 when read, -1 when bad. */
static int read_version(struct sctx *c, const char *path, uint32_t *code) {
  lua_State *L = c->L;
  size_t n;
  const char *s;
  if (lua_isnil(L, -1))
    return 1;
  if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER) {
    sbad(c, path, "expected a version string (\"2\" or \"2.1\"), got %s",
         lua_typename(L, lua_type(L, -1)));
    return -1;
  }
  lua_pushvalue(L, -1);
  s = lua_tolstring(L, -1, &n);
  if (sl_config_version_parse(s, n, code) != 0) {
    sbad(c, path, "expected a version \"MAJOR\" or \"MAJOR.MINOR\" "
         "(numbers up to 32767), got \"%s\"", s);
    lua_pop(L, 1);
    return -1;
  }
  lua_pop(L, 1);
  return 0;
}

/* Optional non-empty string field; 1 absent, 0 read (*out owned), -1. */
static int read_str(struct sctx *c, int t, const char *path, const char *key,
                    char **out) {
  lua_State *L = c->L;
  char p[96];
  int rc = 1;
  snprintf(p, sizeof(p), "%s.%s", path, key);
  lua_getfield(L, t, key);
  if (lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) > 0) {
    *out = strdup(lua_tostring(L, -1));
    rc = *out ? 0 : -1;
  } else if (!lua_isnil(L, -1)) {
    sbad(c, p, "expected a non-empty string, got %s",
         lua_type(L, -1) == LUA_TSTRING ? "\"\""
                                        : lua_typename(L, lua_type(L, -1)));
    rc = -1;
  }
  lua_pop(L, 1);
  return rc;
}

/* A contract-level string key: set once, the same on every entry. */
static void contract_str(struct sctx *c, int t, const char *path,
                         const char *key, char **slot, const char *topics) {
  char *v = NULL, p[96];
  if (read_str(c, t, path, key, &v) != 0)
    return;
  snprintf(p, sizeof(p), "%s.%s", path, key);
  if (*slot && strcmp(*slot, v) != 0)
    sbad(c, p, "\"%s\" differs from \"%s\" set on another entry of the "
         "contract %s", v, *slot, topics);
  if (*slot == NULL)
    *slot = v;
  else
    free(v);
}

static struct sl_schema_contract *contract_for(struct sl_config *cfg,
                                               const char *topics) {
  struct sl_schema_contract *k;
  int i;
  for (i = 0; i < cfg->nschemas; i++)
    if (strcmp(cfg->schemas[i].topics, topics) == 0)
      return &cfg->schemas[i];
  k = &cfg->schemas[cfg->nschemas++];
  memset(k, 0, sizeof(*k));
  k->topics = strdup(topics);
  k->topics_len = strlen(topics);
  k->default_version = -1;
  return k->topics ? k : NULL;
}

static char *resolve_path(const char *dir, const char *p) {
  size_t n;
  char *out;
  if (p[0] == '/' || dir == NULL)
    return strdup(p);
  n = strlen(dir) + strlen(p) + 2;
  if ((out = malloc(n)) != NULL)
    snprintf(out, n, "%s/%s", dir, p);
  return out;
}

/* The version of entry t: version = .., else the file name's. */
static int entry_version(struct sctx *c, int t, const char *path,
                         const char *file, uint32_t *code) {
  char p[96];
  int rc;
  snprintf(p, sizeof(p), "%s.version", path);
  lua_getfield(c->L, t, "version");
  rc = read_version(c, p, code);
  lua_pop(c->L, 1);
  if (rc == 1 && file && version_of_name(file, code) != 0) {
    sbad(c, p, "no version: set version = \"2\" or name the file with it "
         "(order.v2.json, order.v2.1.json)");
    return -1;
  }
  return rc == 1 ? (file ? 0 : -1) : rc;
}

/* The contract-level keys of entry t (checked before: mode 0 unset, 1
 * enforce, 2 warn; dcode 0 or the default_version) onto k: the same on
 * every entry of the contract. */
static void contract_keys(struct sctx *c, struct sl_config *cfg,
                          struct sl_schema_contract *k, int t,
                          const char *path, int mode, uint32_t dcode,
                          uint32_t *defaults, int *modes) {
  char p[96];
  int i = (int)(k - cfg->schemas);
  contract_str(c, t, path, "version_header", &k->version_header, k->topics);
  contract_str(c, t, path, "version_field", &k->version_field, k->topics);
  if (mode) {
    snprintf(p, sizeof(p), "%s.mode", path);
    if (modes[i] && modes[i] != mode)
      sbad(c, p, "differs from the mode set on another entry of the "
           "contract %s", k->topics);
    modes[i] = mode;
    k->mode = mode == 2 ? SL_SCHEMA_WARN : SL_SCHEMA_ENFORCE;
  }
  if (dcode) {
    snprintf(p, sizeof(p), "%s.default_version", path);
    if (defaults[i] && sl_config_version_order(defaults[i]) !=
                           sl_config_version_order(dcode))
      sbad(c, p, "differs from the default_version set on another entry "
           "of the contract %s", k->topics);
    defaults[i] = dcode;
  }
}

/* mode and default_version of entry t, checked: *mode 0 (unset), 1, 2. */
static void entry_mode(struct sctx *c, int t, const char *path, int *mode,
                       uint32_t *dcode) {
  char *m = NULL, p[96];
  *mode = 0;
  *dcode = 0;
  if (read_str(c, t, path, "mode", &m) == 0) {
    snprintf(p, sizeof(p), "%s.mode", path);
    if (strcmp(m, "warn") == 0)
      *mode = 2;
    else if (strcmp(m, "enforce") == 0)
      *mode = 1;
    else
      sbad(c, p, "expected \"enforce\" or \"warn\", got \"%s\"", m);
    free(m);
  }
  snprintf(p, sizeof(p), "%s.default_version", path);
  lua_getfield(c->L, t, "default_version");
  if (read_version(c, p, dcode) != 0)
    *dcode = 0;
  lua_pop(c->L, 1);
}

/* Every key of entry t is one of ours. */
static void entry_keys(struct sctx *c, int t, const char *path) {
  static const char *const keys[] = {"topics", "file", "version",
                                     "default_version", "mode",
                                     "version_header", "version_field", NULL};
  lua_State *L = c->L;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    const char *const *a = keys;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (; *a && strcmp(*a, lua_tostring(L, -2)) != 0; a++)
        ;
    if (lua_type(L, -2) != LUA_TSTRING || *a == NULL)
      sbad(c, path, "unknown key '%s' (expected one of: topics, file, "
           "version, default_version, mode, version_header, version_field)",
           lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
    lua_pop(L, 1);
  }
}

/* The entry at t: its version added to its contract, compiled. */
static void read_entry(struct sctx *c, struct sl_config *cfg, int t,
                       const char *path, uint32_t *defaults, int *modes) {
  struct sl_schema_contract *k;
  struct sl_schema_version *v;
  char *topics = NULL, *file = NULL, p[96], why[512];
  uint32_t code = 0, dcode;
  int i, mode;

  entry_keys(c, t, path);
  snprintf(p, sizeof(p), "%s.topics", path);
  if (read_str(c, t, path, "topics", &topics) == 1)
    sbad(c, p, "expected a topic glob (\"orders.*\"), got nil");
  snprintf(p, sizeof(p), "%s.file", path);
  if (read_str(c, t, path, "file", &file) == 1)
    sbad(c, p, "expected the path of a JSON Schema file, got nil");
  entry_mode(c, t, path, &mode, &dcode);
  if (topics == NULL || file == NULL ||
      entry_version(c, t, path, file, &code) != 0 ||
      (k = contract_for(cfg, topics)) == NULL)
    goto done;
  if (k->versions == NULL &&
      (k->versions = calloc(64, sizeof(*k->versions))) == NULL)
    goto done;
  for (i = 0; i < k->nversions; i++)
    if (sl_config_version_order(k->versions[i].code) ==
        sl_config_version_order(code)) {
      snprintf(p, sizeof(p), "%s.version", path);
      sbad(c, p, "version %s of %s is given twice", k->versions[i].version,
           topics);
      goto done;
    }
  if (k->nversions == 64) {
    sbad(c, path, "at most 64 versions per contract");
    goto done;
  }
  v = &k->versions[k->nversions++];
  v->code = code;
  if ((v->version = malloc(16)) != NULL)
    sl_config_version_format(code, v->version, 16);
  v->file = resolve_path(c->dir, file);
  snprintf(p, sizeof(p), "%s.file", path);
  if (v->file &&
      sl_schema_load_file(v->file, &v->schema, why, sizeof(why)) != 0)
    sbad(c, p, "%s", why);
  contract_keys(c, cfg, k, t, path, mode, dcode, defaults, modes);
done:
  free(topics);
  free(file);
}

static int by_version(const void *a, const void *b) {
  uint32_t x = sl_config_version_order(((const struct sl_schema_version *)a)->code);
  uint32_t y = sl_config_version_order(((const struct sl_schema_version *)b)->code);
  return x < y ? -1 : x > y;
}

/* Sort each contract's versions and find its default version. */
static void finish(struct sctx *c, struct sl_config *cfg,
                   const uint32_t *defaults) {
  int i, j;
  for (i = 0; i < cfg->nschemas; i++) {
    struct sl_schema_contract *k = &cfg->schemas[i];
    char known[256] = "", d[16];
    size_t off = 0;
    qsort(k->versions, (size_t)k->nversions, sizeof(*k->versions),
          by_version);
    if (k->version_header && k->version_field)
      sbad(c, "schemas", "contract %s: version_header and version_field "
           "both set: the version comes from one place", k->topics);
    if (k->version_header == NULL && k->version_field == NULL)
      k->version_header = strdup("schema-version");
    /* '*' is the only wildcard: an earlier glob that matches this glob's
     * text matches every topic it does, so this contract is dead */
    for (j = 0; j < i; j++)
      if (sl_router_glob(cfg->schemas[j].topics, cfg->schemas[j].topics_len,
                         k->topics, k->topics_len))
        sbad(c, "schemas", "contract %s is never used: every topic it "
             "matches takes the earlier contract %s", k->topics,
             cfg->schemas[j].topics);
    if (defaults[i] == 0)
      continue;
    for (j = 0; j < k->nversions; j++) {
      if (sl_config_version_order(k->versions[j].code) ==
          sl_config_version_order(defaults[i]))
        k->default_version = j;
      if (off < sizeof(known) - 20)
        off += (size_t)snprintf(known + off, sizeof(known) - off, "%s%s",
                                j ? ", " : "", k->versions[j].version);
    }
    if (k->default_version < 0) {
      sl_config_version_format(defaults[i], d, sizeof(d));
      sbad(c, "schemas", "contract %s: default_version %s is none of its "
           "versions (%s)", k->topics, d, known);
    }
  }
}

int sl_config_schemas(void *Lv, int t, const char *file, const char *dir,
                      struct sl_config *cfg, struct sl_buf *err) {
  struct sctx c = {(lua_State *)Lv, file, dir, err, 0};
  lua_State *L = c.L;
  uint32_t *defaults = NULL;
  int *modes = NULL;
  char p[64];
  int i, n;

  lua_getfield(L, t, "schemas");
  if (lua_isnil(L, -1))
    goto done;
  n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : -1;
  if (n >= 0) { /* a list: keys 1..n and nothing else */
    int count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pop(L, 1);
      count++;
    }
    if (count != n)
      n = -1;
  }
  if (n < 0) {
    sbad(&c, "schemas", "expected a list of tables, got %s",
         lua_typename(L, lua_type(L, -1)));
    goto done;
  }
  cfg->schemas = calloc((size_t)n + 1, sizeof(*cfg->schemas));
  defaults = calloc((size_t)n + 1, sizeof(*defaults));
  modes = calloc((size_t)n + 1, sizeof(*modes));
  if (cfg->schemas == NULL || defaults == NULL || modes == NULL) {
    sbad(&c, "schemas", "out of memory");
    goto done;
  }
  for (i = 1; i <= n; i++) {
    snprintf(p, sizeof(p), "schemas[%d]", i);
    lua_rawgeti(L, -1, i);
    if (!lua_istable(L, -1))
      sbad(&c, p, "expected a table { topics = \"orders.*\", file = "
           "\"schemas/order.v2.json\" }, got %s",
           lua_typename(L, lua_type(L, -1)));
    else
      read_entry(&c, cfg, lua_gettop(L), p, defaults, modes);
    lua_pop(L, 1);
  }
  finish(&c, cfg, defaults);
done:
  free(defaults);
  free(modes);
  lua_pop(L, 1);
  return c.nerr;
}

/* The version the event names: a str (or a non-negative int) at the
 * contract's header or payload field. 1 found (*code), 0 none, -1 one
 * that is not a version (raw gets its text). */
static int named_version(const struct sl_schema_contract *k,
                         const uint8_t *headers, size_t hlen,
                         const uint8_t *payload, size_t plen, uint32_t *code,
                         char *raw, size_t rawlen) {
  const char *name = k->version_field ? k->version_field : k->version_header;
  const uint8_t *map = k->version_field ? payload : headers, *val;
  size_t mlen = k->version_field ? plen : hlen, vlen;
  struct sl_str str;
  uint64_t u;
  size_t used;
  if (map == NULL || mlen == 0 ||
      ((*map & 0xf0) != 0x80 && *map != 0xde && *map != 0xdf))
    return 0;
  if (sl_codec_map_find(map, mlen, name, strlen(name), &val, &vlen) != 0)
    return 0;
  if (sl_codec_read_str(val, vlen, &str, NULL) == 0) {
    snprintf(raw, rawlen, "%.*s", (int)(str.len < 40 ? str.len : 40), str.p);
    return sl_config_version_parse(str.p, str.len, code) == 0 ? 1 : -1;
  }
  if (sl_codec_read_uint(val, vlen, &u, &used) == 0) {
    snprintf(raw, rawlen, "%llu", (unsigned long long)u);
    return sl_config_version_parse(raw, strlen(raw), code) == 0 ? 1 : -1;
  }
  snprintf(raw, rawlen, "(not a string)");
  return -1;
}

int sl_config_schema_version(const struct sl_schema_contract *k,
                             const uint8_t *headers, size_t hlen,
                             const uint8_t *payload, size_t plen,
                             struct sl_schema_error *e) {
  char raw[48], known[100];
  size_t off = 0;
  uint32_t code = 0;
  int i, rc = named_version(k, headers, hlen, payload, plen, &code, raw,
                            sizeof(raw));
  if (rc == 0)
    return k->default_version >= 0 ? k->default_version : k->nversions - 1;
  for (i = 0; rc == 1 && i < k->nversions; i++)
    if (sl_config_version_order(k->versions[i].code) ==
        sl_config_version_order(code))
      return i;
  for (i = 0; i < k->nversions && off < sizeof(known) - 20; i++)
    off += (size_t)snprintf(known + off, sizeof(known) - off, "%s%s",
                            i ? ", " : "", k->versions[i].version);
  snprintf(e->path, sizeof(e->path), "%s%s",
           k->version_field ? "/" : "",
           k->version_field ? k->version_field : "");
  snprintf(e->msg, sizeof(e->msg),
           "a known schema version (%s) in %s %s, got \"%s\"", known,
           k->version_field ? "payload field" : "header",
           k->version_field ? k->version_field : k->version_header, raw);
  return -1;
}

const struct sl_schema_contract *
sl_config_schema_find(const struct sl_config *cfg, const char *topic,
                      size_t len, int *index) {
  int i;
  for (i = 0; i < cfg->nschemas; i++) {
    const struct sl_schema_contract *c = &cfg->schemas[i];
    if ((c->topics_len == 1 && c->topics[0] == '*') ||
        sl_router_glob(c->topics, c->topics_len, topic, len)) {
      if (index)
        *index = i;
      return c;
    }
  }
  return NULL;
}

void sl_config_schemas_free(struct sl_config *cfg) {
  int i, j;
  for (i = 0; i < cfg->nschemas; i++) {
    struct sl_schema_contract *k = &cfg->schemas[i];
    for (j = 0; j < k->nversions; j++) {
      free(k->versions[j].version);
      free(k->versions[j].file);
      sl_schema_free(k->versions[j].schema);
    }
    free(k->versions);
    free(k->topics);
    free(k->version_header);
    free(k->version_field);
  }
  free(cfg->schemas);
  cfg->schemas = NULL;
  cfg->nschemas = 0;
}
