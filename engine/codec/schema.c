/* schema.c - JSON Schema subset: the schema's JSON becomes msgpack, which is
 * compiled into a flat array of nodes (indices, no pointers between them);
 * the checker walks an event's msgpack against them with no allocation,
 * stopping at the first violation. The compiled schema owns the schema's
 * msgpack: property names and enum values point into it. */
#include "schema.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "common.h"
#include "json.h"
#include "regex.h"

/* type bits; "number" is INT|FRAC */
enum {
  T_NULL = 1, T_BOOL = 2, T_INT = 4, T_FRAC = 8, T_STR = 16, T_ARR = 32,
  T_OBJ = 64, T_BIN = 128, T_ALL = 255, T_EXT = 256 /* no type names it */
};

enum {
  F_FALSE = 1 << 0, F_MIN = 1 << 1, F_MAX = 1 << 2, F_MINLEN = 1 << 3,
  F_MAXLEN = 1 << 4, F_MINITEMS = 1 << 5, F_MAXITEMS = 1 << 6,
  F_ENUM = 1 << 7, F_CONST = 1 << 8, F_ADDL_FALSE = 1 << 9,
  F_MIN_INT = 1 << 10, F_MAX_INT = 1 << 11, F_OBJ = 1 << 12,
  F_SCALAR = 1 << 13, /* no keyword that descends or re-checks: inline */
  F_MORE = 1 << 14,   /* $ref, anyOf or oneOf */
  F_MIN_U64 = 1 << 15, F_MAX_U64 = 1 << 16 /* exact bound > INT64_MAX, */
};                                           /* as uint64 in imin/imax */

#define HOT static inline __attribute__((always_inline))

#define MAX_REQUIRED 512 /* required names per object (a bitset on stack) */
#define MAX_NEST 128     /* data nesting the checker descends into */

struct node {
  uint32_t flags;
  uint16_t types; /* 0: any */
  uint16_t tmask; /* the type bits that pass (T_EXT too when types is 0) */
  uint16_t nreq;
  uint32_t minlen, maxlen, minitems, maxitems;
  double min, max;
  int64_t imin, imax; /* exact bounds when F_MIN_INT / F_MAX_INT */
                      /* (uint64 when F_MIN_U64 / F_MAX_U64 too) */
  uint32_t prop0, nprop; /* props[prop0 .. +nprop), sorted[] likewise */
  int32_t addl, items, ref, re, konst;
  uint32_t enum0, nenum; /* vals[] */
  uint32_t any0, nany, one0, none; /* kids[] */
  uint32_t path;  /* offset in strs: this node's path in the schema */
  uint32_t emsg, cmsg; /* offsets in strs: enum and const expectations */
  uint32_t pat;   /* offset in strs: the pattern's text */
  uint32_t refname; /* offset in strs: the $ref text */
  uint32_t tmsg, minmsg, maxmsg; /* offsets in strs: type and bound texts */
};

struct prop {
  const struct node *child; /* nodes + node, set once compiled; or NULL */
  const uint8_t *key;
  uint64_t head; /* the key's first 8 bytes, zero-padded */
  uint64_t enc, encmask; /* its fixstr encoding's first 8 bytes, and which
                            of them count (0 when it is no fixstr) */
  uint32_t len;
  int32_t node; /* -1: any value (only named by required) */
  int32_t req;  /* bit index among required, -1 */
};

struct span {
  const uint8_t *p;
  uint32_t n;
  const uint8_t *str; /* a str value's bytes (strn of them), else NULL */
  uint32_t strn;
};

struct def {
  const uint8_t *name, *p, *end;
  uint32_t len;
  int32_t node; /* -1 until compiled */
};

struct sl_schema {
  struct sl_buf mp; /* the schema as msgpack */
  struct node *nodes;
  uint32_t nnodes, capnodes;
  struct prop *props;
  uint32_t nprops, capprops;
  uint32_t *sorted; /* per object, its props' indices by (len, bytes) */
  struct span *vals;
  uint32_t nvals, capvals;
  uint32_t *kids;
  uint32_t nkids, capkids;
  struct sl_regex **res;
  uint32_t nres, capres;
  struct sl_buf strs; /* NUL-terminated texts */
  struct def *defs;
  uint32_t ndefs;
};

/* ---- growing arrays --------------------------------------------------- */

static int grow(void **arr, uint32_t *cap, uint32_t need, size_t elem) {
  uint32_t c = *cap ? *cap : 8;
  void *n;
  if (need <= *cap)
    return 0;
  while (c < need)
    c *= 2;
  n = realloc(*arr, (size_t)c * elem);
  if (n == NULL)
    return SL_ENOMEM;
  *arr = n;
  *cap = c;
  return 0;
}

static int32_t new_node(struct sl_schema *s) {
  struct node *n;
  if (grow((void **)&s->nodes, &s->capnodes, s->nnodes + 1, sizeof(*n)))
    return -1;
  n = &s->nodes[s->nnodes];
  memset(n, 0, sizeof(*n));
  n->addl = n->items = n->ref = n->re = n->konst = -1;
  return (int32_t)s->nnodes++;
}

static int add_str(struct sl_buf *b, const void *p, size_t n, uint32_t *off) {
  *off = (uint32_t)b->len;
  if (sl_buf_append(b, p, n) || sl_buf_putc(b, 0))
    return SL_ENOMEM;
  return 0;
}

/* ---- JSON pointer paths ----------------------------------------------- */

/* Append "/" and key, escaped per RFC 6901, to path (cap bytes, always
 * NUL-terminated, cut when full). */
static size_t path_key(char *path, size_t len, size_t cap, const void *key,
                       size_t n) {
  const char *k = key;
  size_t i;
  if (len + 1 < cap)
    path[len++] = '/';
  for (i = 0; i < n && len + 2 < cap; i++) {
    if (k[i] == '~' || k[i] == '/') {
      path[len++] = '~';
      path[len++] = k[i] == '~' ? '0' : '1';
    } else if (k[i] == '\0') { /* U+FFFD: the path must not end here */
      if (len + 3 >= cap)
        break;
      memcpy(path + len, "\xef\xbf\xbd", 3);
      len += 3;
    } else {
      path[len++] = k[i];
    }
  }
  /* cut short: not inside a UTF-8 sequence (bytes >= 0x80 are never
   * escaped, so one key byte is one path byte there) */
  while (i > 0 && i < n && ((unsigned char)k[i] & 0xc0) == 0x80) {
    i--;
    len--;
  }
  path[len < cap ? len : cap - 1] = '\0';
  return len < cap ? len : cap - 1;
}

static size_t path_index(char *path, size_t len, size_t cap, uint64_t i) {
  char b[24];
  int n = snprintf(b, sizeof(b), "%llu", (unsigned long long)i);
  return path_key(path, len, cap, b, (size_t)n);
}

/* ---- compiling -------------------------------------------------------- */

struct cc {
  struct sl_schema *s;
  const char *name;
  char *err;
  size_t errlen;
  char path[512];
  size_t plen;
  int depth;
  int failed;
};

static int cfail(struct cc *c, const char *fmt, ...) SL_PRINTF(2, 3);
static int cfail(struct cc *c, const char *fmt, ...) {
  va_list ap;
  int n;
  if (c->failed++)
    return SL_EINVAL;
  if (c->err == NULL || c->errlen == 0)
    return SL_EINVAL;
  n = snprintf(c->err, c->errlen, "%s: ", c->name ? c->name : "schema");
  if (n < 0 || (size_t)n >= c->errlen)
    return SL_EINVAL;
  va_start(ap, fmt);
  vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return SL_EINVAL;
}

static const char *here(const struct cc *c) {
  return c->plen ? c->path : "the root";
}

static int compile_node(struct cc *c, const uint8_t **pp, const uint8_t *end,
                        int32_t idx);

/* Compile the subschema at *pp under path key (an extra path segment);
 * returns its node index or -1. */
static int32_t compile_sub(struct cc *c, const uint8_t **pp, const uint8_t *end,
                           const char *key, size_t klen, int64_t index) {
  size_t saved = c->plen;
  int32_t idx;
  c->plen = index >= 0 ? path_index(c->path, c->plen, sizeof(c->path),
                                    (uint64_t)index)
                       : path_key(c->path, c->plen, sizeof(c->path), key, klen);
  idx = new_node(c->s);
  if (idx < 0) {
    cfail(c, "out of memory");
    return -1;
  }
  if (compile_node(c, pp, end, idx) != 0)
    idx = -1;
  c->plen = saved;
  c->path[saved] = '\0';
  return idx;
}

static int read_item(const uint8_t **pp, const uint8_t *end,
                     struct sl_codec_item *it) {
  return sl_codec_read_item(pp, end, it);
}

/* Skip n values at p (bounds-checked), for compiling. */
static int skip_n(const uint8_t **pp, const uint8_t *end, uint64_t n) {
  struct sl_codec_item it;
  while (n > 0) {
    n--;
    if (sl_codec_read_item(pp, end, &it) != 0)
      return -1;
    if (it.t == SL_MP_ARR)
      n += it.n;
    else if (it.t == SL_MP_MAP)
      n += 2 * (uint64_t)it.n;
  }
  return 0;
}

static int is_number(const struct sl_codec_item *it) {
  return it->t == SL_MP_INT || it->t == SL_MP_UINT || it->t == SL_MP_F32 ||
         it->t == SL_MP_F64;
}

static double item_double(const struct sl_codec_item *it) {
  switch (it->t) {
  case SL_MP_INT: return (double)it->i;
  case SL_MP_UINT: return (double)it->u;
  case SL_MP_F32: return (double)it->f;
  default: return it->d;
  }
}

/* A non-negative integer keyword value (minLength...). */
static int read_count(struct cc *c, const uint8_t **pp, const uint8_t *end,
                      const char *kw, uint32_t *out) {
  struct sl_codec_item it;
  double d;
  if (read_item(pp, end, &it) != 0 || !is_number(&it))
    return cfail(c, "%s at %s must be a non-negative integer", kw, here(c));
  d = item_double(&it);
  if (it.t == SL_MP_UINT)
    d = it.u > UINT32_MAX ? (double)UINT32_MAX : (double)it.u;
  if (!(d >= 0) || d != floor(d))
    return cfail(c, "%s at %s must be a non-negative integer", kw, here(c));
  *out = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
  return 0;
}

/* minimum/maximum: the bound as a double, and exactly when integral:
 * *is_int 1 for an int64, 2 for a uint64 above INT64_MAX (kept in *i). Any
 * integral double in [-2^63, 2^64) is exact, so that a double bound is
 * either not integral (and below 2^53, where ints convert exactly) or out
 * of every integer's range: comparing ints with it as doubles is exact. */
static int read_bound(struct cc *c, const uint8_t **pp, const uint8_t *end,
                      const char *kw, double *d, int64_t *i, int *is_int) {
  struct sl_codec_item it;
  if (read_item(pp, end, &it) != 0 || !is_number(&it))
    return cfail(c, "%s at %s must be a number", kw, here(c));
  *d = item_double(&it);
  *is_int = 0;
  if (it.t == SL_MP_INT) {
    *i = it.i;
    *is_int = 1;
  } else if (it.t == SL_MP_UINT) {
    *i = (int64_t)it.u;
    *is_int = it.u <= INT64_MAX ? 1 : 2;
  } else if (*d == floor(*d) && *d >= -0x1p63 && *d < 0x1p63) {
    *i = (int64_t)*d;
    *is_int = 1;
  } else if (*d == floor(*d) && *d >= 0x1p63 && *d < 0x1p64) {
    *i = (int64_t)(uint64_t)*d;
    *is_int = 2;
  }
  if (isnan(*d))
    return cfail(c, "%s at %s must be a number", kw, here(c));
  return 0;
}

static int type_bit(const char *s, size_t n) {
  static const struct { const char *name; int bit; } names[] = {
      {"null", T_NULL},     {"boolean", T_BOOL}, {"integer", T_INT},
      {"number", T_INT | T_FRAC}, {"string", T_STR}, {"array", T_ARR},
      {"object", T_OBJ},    {"binary", T_BIN}};
  size_t i;
  for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (strlen(names[i].name) == n && memcmp(names[i].name, s, n) == 0)
      return names[i].bit;
  return 0;
}

static int compile_type(struct cc *c, const uint8_t **pp, const uint8_t *end,
                        struct node *n) {
  struct sl_codec_item it;
  uint32_t count = 1, i;
  int bit;
  if (read_item(pp, end, &it) != 0)
    return cfail(c, "bad type at %s", here(c));
  if (it.t == SL_MP_ARR) {
    count = it.n;
    if (count == 0)
      return cfail(c, "type at %s is an empty list", here(c));
    if (read_item(pp, end, &it) != 0)
      return cfail(c, "bad type at %s", here(c));
  }
  for (i = 0; i < count; i++) {
    if (i > 0 && read_item(pp, end, &it) != 0)
      return cfail(c, "bad type at %s", here(c));
    if (it.t != SL_MP_STR)
      return cfail(c, "type at %s must be a type name or a list of them",
                   here(c));
    bit = type_bit((const char *)it.s, it.n);
    if (bit == 0)
      return cfail(c, "unknown type \"%.*s\" at %s", (int)it.n, it.s, here(c));
    n->types |= (uint16_t)bit;
  }
  return 0;
}

/* Render the values of vals[v0..v0+nv) as JSON into strs for messages. */
static int values_text(struct sl_schema *s, uint32_t v0, uint32_t nv,
                       const char *prefix, uint32_t *off) {
  struct sl_buf b;
  uint32_t i;
  int rc = SL_ENOMEM;
  sl_buf_init(&b);
  if (sl_buf_append(&b, prefix, strlen(prefix)))
    goto fail_buf;
  for (i = 0; i < nv; i++) {
    if (i > 0 && sl_buf_putc(&b, ','))
      goto fail_buf;
    if (sl_codec_to_json(s->vals[v0 + i].p, s->vals[v0 + i].n, &b))
      goto fail_buf;
    if (b.len > 160)
      break;
  }
  if (b.len > 160) {
    b.len = 156;
    while (b.len > 0 && (b.data[b.len] & 0xc0) == 0x80)
      b.len--; /* do not cut a UTF-8 sequence */
    if (sl_buf_append(&b, "...", 3))
      goto fail_buf;
  }
  if (prefix[0] == 'o' && sl_buf_putc(&b, ']'))
    goto fail_buf;
  rc = add_str(&s->strs, b.data, b.len, off);
fail_buf:
  sl_buf_close(&b);
  return rc;
}

static int add_val(struct sl_schema *s, const uint8_t *p, const uint8_t *q) {
  if (grow((void **)&s->vals, &s->capvals, s->nvals + 1, sizeof(*s->vals)))
    return SL_ENOMEM;
  s->vals[s->nvals].p = p;
  s->vals[s->nvals].n = (uint32_t)(q - p);
  s->vals[s->nvals].str = NULL;
  {
    struct sl_str str;
    size_t used;
    if (sl_codec_read_str(p, (size_t)(q - p), &str, &used) == 0) {
      s->vals[s->nvals].str = (const uint8_t *)str.p;
      s->vals[s->nvals].strn = (uint32_t)str.len;
    }
  }
  s->nvals++;
  return 0;
}

static int compile_enum(struct cc *c, const uint8_t **pp, const uint8_t *end,
                        int32_t idx, int is_const) {
  struct sl_schema *s = c->s;
  struct sl_codec_item it;
  const uint8_t *q = *pp;
  uint32_t count = 1, i, v0 = s->nvals;
  if (!is_const) {
    if (read_item(pp, end, &it) != 0 || it.t != SL_MP_ARR)
      return cfail(c, "enum at %s must be a list", here(c));
    count = it.n;
  }
  for (i = 0; i < count; i++) {
    q = *pp;
    if (skip_n(pp, end, 1) != 0 || add_val(s, q, *pp) != 0)
      return cfail(c, "out of memory");
  }
  if (is_const) {
    s->nodes[idx].flags |= F_CONST;
    s->nodes[idx].konst = (int32_t)v0;
  } else {
    s->nodes[idx].flags |= F_ENUM;
    s->nodes[idx].enum0 = v0;
    s->nodes[idx].nenum = count;
  }
  if (values_text(s, v0, count, is_const ? "the value " : "one of [",
                  is_const ? &s->nodes[idx].cmsg : &s->nodes[idx].emsg))
    return cfail(c, "out of memory");
  return 0;
}

static int compile_branches(struct cc *c, const uint8_t **pp,
                            const uint8_t *end, int32_t idx, const char *kw) {
  struct sl_schema *s = c->s;
  struct sl_codec_item it;
  uint32_t i, k0;
  int32_t kid;
  if (read_item(pp, end, &it) != 0 || it.t != SL_MP_ARR || it.n == 0)
    return cfail(c, "%s at %s must be a non-empty list of schemas", kw,
                 here(c));
  if (it.n > SL_SCHEMA_MAX_BRANCHES)
    return cfail(c, "%s at %s has %u branches, at most %d are allowed", kw,
                 here(c), it.n, SL_SCHEMA_MAX_BRANCHES);
  k0 = s->nkids;
  if (grow((void **)&s->kids, &s->capkids, k0 + it.n, sizeof(*s->kids)))
    return cfail(c, "out of memory");
  s->nkids += it.n; /* reserved: nested branches go after these */
  {
    size_t saved = c->plen;
    c->plen = path_key(c->path, c->plen, sizeof(c->path), kw, strlen(kw));
    for (i = 0; i < it.n; i++) {
      kid = compile_sub(c, pp, end, NULL, 0, i);
      if (kid < 0)
        return SL_EINVAL;
      s->kids[k0 + i] = (uint32_t)kid;
    }
    c->plen = saved;
    c->path[saved] = '\0';
  }
  if (kw[0] == 'a') {
    s->nodes[idx].any0 = k0;
    s->nodes[idx].nany = it.n;
  } else {
    s->nodes[idx].one0 = k0;
    s->nodes[idx].none = it.n;
  }
  return 0;
}

static int32_t find_def(const struct sl_schema *s, const uint8_t *name, size_t n) {
  uint32_t lo = 0, hi = s->ndefs; /* defs[] is sorted by (len, name) */
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    const struct def *d = &s->defs[mid];
    int r = d->len != n ? (d->len < n ? -1 : 1) : memcmp(d->name, name, n);
    if (r == 0)
      return (int32_t)mid;
    if (r < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return -1;
}

static int by_def_name(const void *pa, const void *pb) {
  const struct def *a = pa, *b = pb;
  if (a->len != b->len)
    return a->len < b->len ? -1 : 1;
  return memcmp(a->name, b->name, a->len);
}

/* The node of $defs entry d, compiled on first use (a node is allocated
 * before its body is compiled, so recursion finds it). */
static int32_t def_node(struct cc *c, int32_t d) {
  struct sl_schema *s = c->s;
  char saved[sizeof(c->path)];
  size_t plen = c->plen;
  const uint8_t *p;
  int32_t idx;
  int rc;
  if (s->defs[d].node >= 0)
    return s->defs[d].node;
  idx = new_node(s);
  if (idx < 0) {
    cfail(c, "out of memory");
    return -1;
  }
  s->defs[d].node = idx;
  memcpy(saved, c->path, plen + 1);
  c->plen = path_key(c->path, 0, sizeof(c->path), "$defs", 5);
  c->plen = path_key(c->path, c->plen, sizeof(c->path), s->defs[d].name,
                     s->defs[d].len);
  p = s->defs[d].p;
  rc = compile_node(c, &p, s->defs[d].end, idx);
  memcpy(c->path, saved, plen + 1);
  c->plen = plen;
  return rc == 0 ? idx : -1;
}

static int compile_ref(struct cc *c, const uint8_t **pp, const uint8_t *end,
                       int32_t idx) {
  struct sl_schema *s = c->s;
  struct sl_codec_item it;
  int32_t d, target;
  if (read_item(pp, end, &it) != 0 || it.t != SL_MP_STR)
    return cfail(c, "$ref at %s must be a string", here(c));
  if (add_str(&s->strs, it.s, it.n, &s->nodes[idx].refname))
    return cfail(c, "out of memory");
  if (it.n == 1 && it.s[0] == '#') {
    s->nodes[idx].ref = 0;
    return 0;
  }
  if (it.n > 8 && memcmp(it.s, "#/$defs/", 8) == 0) {
    /* the name as a JSON pointer token; ~ and / escapes are not decoded */
    if (memchr(it.s + 8, '~', it.n - 8) || memchr(it.s + 8, '/', it.n - 8))
      return cfail(c, "$ref \"%.*s\" at %s: only \"#\" and "
                   "\"#/$defs/<name>\" are supported", (int)it.n, it.s,
                   here(c));
    d = find_def(s, it.s + 8, it.n - 8);
    if (d < 0)
      return cfail(c, "$ref \"%.*s\" at %s names no entry of the root's $defs",
                   (int)it.n, it.s, here(c));
    target = def_node(c, d);
    if (target < 0)
      return SL_EINVAL;
    s->nodes[idx].ref = target;
    return 0;
  }
  return cfail(c, "$ref \"%.*s\" at %s: only \"#\" and \"#/$defs/<name>\" "
               "are supported", (int)it.n, it.s, here(c));
}

static int compile_pattern(struct cc *c, const uint8_t **pp,
                           const uint8_t *end, int32_t idx) {
  struct sl_schema *s = c->s;
  struct sl_codec_item it;
  struct sl_regex *re;
  char msg[160];
  int rc;
  if (read_item(pp, end, &it) != 0 || it.t != SL_MP_STR)
    return cfail(c, "pattern at %s must be a string", here(c));
  rc = sl_regex_compile((const char *)it.s, it.n, &re, msg, sizeof(msg));
  if (rc == SL_ENOMEM)
    return cfail(c, "out of memory");
  if (rc != 0)
    return cfail(c, "pattern at %s: %s", here(c), msg);
  if (grow((void **)&s->res, &s->capres, s->nres + 1, sizeof(*s->res))) {
    sl_regex_free(re);
    return cfail(c, "out of memory");
  }
  s->res[s->nres] = re;
  s->nodes[idx].re = (int32_t)s->nres++;
  if (add_str(&s->strs, it.s, it.n, &s->nodes[idx].pat))
    return cfail(c, "out of memory");
  return 0;
}

static void set_key(struct prop *pr, const uint8_t *k, uint32_t n) {
  uint8_t e[8] = {0};
  pr->key = k;
  pr->len = n;
  pr->head = 0;
  memcpy(&pr->head, k, n < 8 ? n : 8);
  pr->enc = pr->encmask = 0;
  if (n <= 31) {
    e[0] = (uint8_t)(0xa0 | n);
    memcpy(e + 1, k, n < 7 ? n : 7);
    memcpy(&pr->enc, e, 8);
    pr->encmask = n >= 7 ? UINT64_MAX : ((uint64_t)1 << (8 * (n + 1))) - 1;
  }
}

/* A property name and its index in props[], to sort names by (length,
 * bytes): finding duplicates and required names costs n log n, not n^2
 * (a schema file of 100000 properties took minutes). */
struct keyref {
  const uint8_t *key;
  uint32_t len, idx;
};

static int by_keyref(const void *pa, const void *pb) {
  const struct keyref *a = pa, *b = pb;
  int r;
  if (a->len != b->len)
    return a->len < b->len ? -1 : 1;
  r = memcmp(a->key, b->key, a->len);
  return r ? r : (a->idx > b->idx) - (a->idx < b->idx);
}

/* props[p0 .. p0+n) by (length, bytes); NULL when out of memory. */
static struct keyref *sorted_keys(const struct prop *props, uint32_t p0,
                                  uint32_t n) {
  struct keyref *kr = malloc((n ? n : 1) * sizeof(*kr));
  uint32_t i;
  if (kr == NULL)
    return NULL;
  for (i = 0; i < n; i++) {
    kr[i].key = props[p0 + i].key;
    kr[i].len = props[p0 + i].len;
    kr[i].idx = p0 + i;
  }
  qsort(kr, n, sizeof(*kr), by_keyref);
  return kr;
}

/* The index in props[] of the name k among the sorted kr[0..n), or -1. */
static int64_t find_key(const struct keyref *kr, uint32_t n,
                        const struct sl_codec_item *k) {
  uint32_t lo = 0, hi = n;
  struct keyref want = {k->s, k->n, 0};
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    int r = kr[mid].len != want.len ? (kr[mid].len < want.len ? -1 : 1)
                                    : memcmp(kr[mid].key, want.key, want.len);
    if (r == 0)
      return kr[mid].idx;
    if (r < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return -1;
}

/* The props of required names of node idx after its ndecl properties:
 * found by name among them (kr) or among the required-only names added
 * after them (at most MAX_REQUIRED of those). */
static int compile_required(struct cc *c, int32_t idx, const uint8_t *reqs,
                            const uint8_t *end, uint32_t nr,
                            const struct keyref *kr, uint32_t ndecl,
                            uint32_t *used) {
  struct sl_schema *s = c->s;
  struct sl_codec_item key;
  uint32_t p0 = s->nodes[idx].prop0, i, j, nreq = 0;
  int64_t at;
  for (i = 0; i < nr; i++) {
    if (read_item(&reqs, end, &key) != 0 || key.t != SL_MP_STR)
      return cfail(c, "required at %s must list property names", here(c));
    at = find_key(kr, ndecl, &key);
    for (j = ndecl; at < 0 && j < *used; j++)
      if (s->props[p0 + j].len == key.n &&
          memcmp(s->props[p0 + j].key, key.s, key.n) == 0)
        at = p0 + j;
    if (at < 0) {
      at = p0 + *used;
      set_key(&s->props[at], key.s, key.n);
      s->props[at].node = -1;
      s->props[at].req = -1;
      (*used)++;
    }
    if (s->props[at].req < 0) {
      if (nreq == MAX_REQUIRED)
        return cfail(c, "required at %s names more than %d properties",
                     here(c), MAX_REQUIRED);
      s->props[at].req = (int32_t)nreq++;
    }
  }
  s->nodes[idx].nreq = (uint16_t)nreq;
  return 0;
}

/* properties and required of node idx: its props are one contiguous run,
 * reserved before the subschemas (which add their own runs after it). */
static int compile_object(struct cc *c, int32_t idx, const uint8_t *props,
                          const uint8_t *reqs, const uint8_t *end) {
  struct sl_schema *s = c->s;
  struct sl_codec_item it, key;
  struct keyref *kr = NULL;
  uint32_t np = 0, nr = 0, p0 = s->nprops, used = 0, i;
  size_t saved = c->plen;
  int rc;
  if (props && read_item(&props, end, &it) == 0)
    np = it.n;
  if (reqs && read_item(&reqs, end, &it) == 0)
    nr = it.n;
  if (grow((void **)&s->props, &s->capprops, p0 + np + nr, sizeof(*s->props)))
    return cfail(c, "out of memory");
  /* a name both in properties and required takes one slot: the spare ones
   * stay, blank (finish walks every slot) */
  memset(&s->props[p0], 0, (np + nr) * sizeof(*s->props));
  for (i = 0; i < np + nr; i++)
    s->props[p0 + i].node = s->props[p0 + i].req = -1;
  s->nprops += np + nr;
  c->plen = path_key(c->path, c->plen, sizeof(c->path), "properties", 10);
  for (i = 0; i < np; i++) {
    int32_t kid;
    if (read_item(&props, end, &key) != 0 || key.t != SL_MP_STR)
      return cfail(c, "a property name at %s is not a string", here(c));
    kid = compile_sub(c, &props, end, (const char *)key.s, key.n, -1);
    if (kid < 0)
      return SL_EINVAL;
    set_key(&s->props[p0 + used], key.s, key.n);
    s->props[p0 + used].node = kid;
    s->props[p0 + used].req = -1;
    used++;
  }
  if ((kr = sorted_keys(s->props, p0, used)) == NULL)
    return cfail(c, "out of memory");
  for (i = 1; i < used; i++)
    if (kr[i].len == kr[i - 1].len &&
        memcmp(kr[i].key, kr[i - 1].key, kr[i].len) == 0) {
      cfail(c, "property \"%.*s\" appears twice at %s", (int)kr[i].len,
            kr[i].key, here(c));
      free(kr);
      return SL_EINVAL;
    }
  c->plen = saved;
  c->path[saved] = '\0';
  s->nodes[idx].prop0 = p0;
  rc = compile_required(c, idx, reqs, end, nr, kr, used, &used);
  free(kr);
  if (rc != 0)
    return rc;
  s->nodes[idx].flags |= F_OBJ;
  s->nodes[idx].nprop = used;
  return 0;
}

/* $defs below the root: nothing can refer to them, but they must still be
 * valid schemas. */
static int compile_inner_defs(struct cc *c, const uint8_t **pp,
                              const uint8_t *end) {
  struct sl_codec_item it, key;
  size_t saved = c->plen;
  uint32_t i;
  if (read_item(pp, end, &it) != 0 || it.t != SL_MP_MAP)
    return cfail(c, "$defs at %s must be an object", here(c));
  c->plen = path_key(c->path, c->plen, sizeof(c->path), "$defs", 5);
  for (i = 0; i < it.n; i++) {
    if (read_item(pp, end, &key) != 0 || key.t != SL_MP_STR)
      return cfail(c, "bad $defs at %s", here(c));
    if (compile_sub(c, pp, end, (const char *)key.s, key.n, -1) < 0)
      return SL_EINVAL;
  }
  c->plen = saved;
  c->path[saved] = '\0';
  return 0;
}

static int is_kw(const struct sl_codec_item *k, const char *name) {
  return strlen(name) == k->n && memcmp(k->s, name, k->n) == 0;
}

static int compile_keyword(struct cc *c, const struct sl_codec_item *k,
                           const uint8_t **pp, const uint8_t *end,
                           int32_t idx, const uint8_t **props,
                           const uint8_t **reqs) {
  static const char *const annotations[] = {
      "$schema", "$id", "title", "description", "$comment", "default",
      "examples"};
  static const struct { const char *kw; uint32_t flag; } counts[] = {
      {"minLength", F_MINLEN}, {"maxLength", F_MAXLEN},
      {"minItems", F_MINITEMS}, {"maxItems", F_MAXITEMS}};
  struct sl_schema *s = c->s;
  struct node *n = &s->nodes[idx];
  struct sl_codec_item it;
  const uint8_t *q = *pp;
  int32_t kid;
  size_t i;
  int is_int;
  if (is_kw(k, "type"))
    return compile_type(c, pp, end, n);
  for (i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
    if (is_kw(k, counts[i].kw)) {
      uint32_t *dst = i == 0 ? &n->minlen : i == 1 ? &n->maxlen
                      : i == 2 ? &n->minitems : &n->maxitems;
      n->flags |= counts[i].flag;
      return read_count(c, pp, end, counts[i].kw, dst);
    }
  }
  if (is_kw(k, "minimum")) {
    n->flags |= F_MIN;
    if (read_bound(c, pp, end, "minimum", &n->min, &n->imin, &is_int))
      return SL_EINVAL;
    n->flags |= is_int ? F_MIN_INT : 0;
    n->flags |= is_int == 2 ? F_MIN_U64 : 0;
    return 0;
  }
  if (is_kw(k, "maximum")) {
    n->flags |= F_MAX;
    if (read_bound(c, pp, end, "maximum", &n->max, &n->imax, &is_int))
      return SL_EINVAL;
    n->flags |= is_int ? F_MAX_INT : 0;
    n->flags |= is_int == 2 ? F_MAX_U64 : 0;
    return 0;
  }
  if (is_kw(k, "properties") || is_kw(k, "required")) {
    int props_kw = k->s[0] == 'p';
    if (read_item(&q, end, &it) != 0 ||
        it.t != (props_kw ? SL_MP_MAP : SL_MP_ARR))
      return cfail(c, "%.*s at %s must be %s", (int)k->n, k->s, here(c),
                   props_kw ? "an object" : "a list");
    *(props_kw ? props : reqs) = *pp;
    return skip_n(pp, end, 1) ? cfail(c, "bad %.*s", (int)k->n, k->s) : 0;
  }
  if (is_kw(k, "additionalProperties") || is_kw(k, "items")) {
    int addl = k->s[0] == 'a';
    if (read_item(&q, end, &it) == 0 && it.t == SL_MP_BOOL) {
      if (addl) {
        *pp = q;
        n->flags |= it.b ? 0 : F_ADDL_FALSE;
        return 0;
      }
    } else if (!addl && it.t == SL_MP_ARR) {
      return cfail(c, "items at %s must be a schema (prefixItems, the list "
                   "form, is not supported)", here(c));
    }
    kid = compile_sub(c, pp, end, (const char *)k->s, k->n, -1);
    if (kid < 0)
      return SL_EINVAL;
    *(addl ? &s->nodes[idx].addl : &s->nodes[idx].items) = kid;
    return 0;
  }
  if (is_kw(k, "enum") || is_kw(k, "const"))
    return compile_enum(c, pp, end, idx, k->s[0] == 'c');
  if (is_kw(k, "pattern"))
    return compile_pattern(c, pp, end, idx);
  if (is_kw(k, "$ref"))
    return compile_ref(c, pp, end, idx);
  if (is_kw(k, "anyOf") || is_kw(k, "oneOf"))
    return compile_branches(c, pp, end, idx, k->s[0] == 'a' ? "anyOf"
                                                             : "oneOf");
  if (is_kw(k, "$defs")) {
    if (idx != 0)
      return compile_inner_defs(c, pp, end);
    for (i = 0; i < s->ndefs; i++) /* collected before the root */
      if (def_node(c, (int32_t)i) < 0)
        return SL_EINVAL;
    return skip_n(pp, end, 1) ? cfail(c, "bad $defs") : 0;
  }
  for (i = 0; i < sizeof(annotations) / sizeof(annotations[0]); i++)
    if (is_kw(k, annotations[i]))
      return skip_n(pp, end, 1) ? cfail(c, "bad %s", annotations[i]) : 0;
  return cfail(c, "unsupported keyword \"%.*s\" at %s", (int)k->n, k->s,
               here(c));
}

static int compile_node(struct cc *c, const uint8_t **pp, const uint8_t *end,
                        int32_t idx) {
  struct sl_schema *s = c->s;
  struct sl_codec_item it, key;
  const uint8_t *props = NULL, *reqs = NULL;
  uint32_t i;
  if (add_str(&s->strs, c->path, c->plen, &s->nodes[idx].path))
    return cfail(c, "out of memory");
  if (read_item(pp, end, &it) != 0)
    return cfail(c, "bad schema at %s", here(c));
  if (it.t == SL_MP_BOOL) {
    s->nodes[idx].flags |= it.b ? 0 : F_FALSE;
    return 0;
  }
  if (it.t != SL_MP_MAP)
    return cfail(c, "the schema at %s must be an object or a boolean",
                 here(c));
  if (++c->depth > SL_SCHEMA_MAX_DEPTH)
    return cfail(c, "schema nested deeper than %d at %s",
                 SL_SCHEMA_MAX_DEPTH, here(c));
  for (i = 0; i < it.n; i++) {
    if (read_item(pp, end, &key) != 0 || key.t != SL_MP_STR)
      return cfail(c, "a keyword at %s is not a string", here(c));
    if (compile_keyword(c, &key, pp, end, idx, &props, &reqs) != 0)
      return SL_EINVAL;
  }
  if ((props || reqs) && compile_object(c, idx, props, reqs, end) != 0)
    return SL_EINVAL;
  c->depth--;
  return 0;
}

/* Record the root's $defs entries so that $ref can compile them on first
 * use, wherever it appears. */
static int collect_defs(struct cc *c, const uint8_t *p, const uint8_t *end) {
  struct sl_schema *s = c->s;
  struct sl_codec_item it, key, d;
  uint32_t i, j;
  if (read_item(&p, end, &it) != 0 || it.t != SL_MP_MAP)
    return 0;
  for (i = 0; i < it.n; i++) {
    if (read_item(&p, end, &key) != 0 || key.t != SL_MP_STR)
      return 0; /* compile_node says so */
    if (!is_kw(&key, "$defs")) {
      if (skip_n(&p, end, 1) != 0)
        return 0;
      continue;
    }
    if (read_item(&p, end, &d) != 0 || d.t != SL_MP_MAP)
      return cfail(c, "$defs at the root must be an object");
    s->defs = calloc(d.n ? d.n : 1, sizeof(*s->defs));
    if (s->defs == NULL)
      return cfail(c, "out of memory");
    for (j = 0; j < d.n; j++) {
      struct def *df = &s->defs[j];
      if (read_item(&p, end, &key) != 0 || key.t != SL_MP_STR)
        return cfail(c, "a name in $defs is not a string");
      df->name = key.s;
      df->len = key.n;
      df->p = p;
      df->node = -1;
      if (skip_n(&p, end, 1) != 0)
        return cfail(c, "bad $defs");
      df->end = p;
      s->ndefs++;
    }
    /* sorted for find_def: n log n, where a lookup per name was n^2 */
    qsort(s->defs, s->ndefs, sizeof(*s->defs), by_def_name);
    for (j = 1; j < s->ndefs; j++)
      if (by_def_name(&s->defs[j - 1], &s->defs[j]) == 0)
        return cfail(c, "$defs names \"%.*s\" twice", (int)s->defs[j].len,
                     s->defs[j].name);
    return 0;
  }
  return 0;
}

static const char *node_path(const struct sl_schema *s, uint32_t n) {
  const char *p = (const char *)s->strs.data + s->nodes[n].path;
  return p[0] ? p : "the root";
}

/* Same-value edges ($ref, anyOf, oneOf branches) must not cycle: such a
 * cycle would check one value forever. Returns the longest chain below n,
 * or -1 after cfail. color: 0 new, 1 on the stack, 2 done. */
static int chain(struct cc *c, uint32_t n, uint8_t *color, uint8_t *longest) {
  const struct sl_schema *s = c->s;
  const struct node *nd = &s->nodes[n];
  uint32_t targets[2 * SL_SCHEMA_MAX_BRANCHES + 1], nt = 0, i;
  int best = 0, l;
  if (color[n] == 2)
    return longest[n];
  color[n] = 1;
  if (nd->ref >= 0)
    targets[nt++] = (uint32_t)nd->ref;
  for (i = 0; i < nd->nany; i++)
    targets[nt++] = s->kids[nd->any0 + i];
  for (i = 0; i < nd->none; i++)
    targets[nt++] = s->kids[nd->one0 + i];
  for (i = 0; i < nt; i++) {
    if (color[targets[i]] == 1) {
      cfail(c, "$ref at %s makes a cycle that never descends into the "
            "data", node_path(s, n));
      return -1;
    }
    l = chain(c, targets[i], color, longest);
    if (l < 0)
      return -1;
    if (l + 1 > best)
      best = l + 1;
  }
  if (best > SL_SCHEMA_MAX_DEPTH) {
    cfail(c, "$ref and anyOf/oneOf chain at %s is longer than %d",
          node_path(s, n), SL_SCHEMA_MAX_DEPTH);
    return -1;
  }
  color[n] = 2;
  longest[n] = (uint8_t)best;
  return best;
}

/* Each object's props, by (length, bytes), for binary search. */
static int sort_props(struct sl_schema *s) {
  uint32_t n, i;
  s->sorted = malloc((s->nprops ? s->nprops : 1) * sizeof(*s->sorted));
  if (s->sorted == NULL)
    return SL_ENOMEM;
  for (n = 0; n < s->nnodes; n++) {
    const struct node *nd = &s->nodes[n];
    uint32_t *o = s->sorted + nd->prop0;
    struct keyref *kr;
    if (!(nd->flags & F_OBJ))
      continue;
    if ((kr = sorted_keys(s->props, nd->prop0, nd->nprop)) == NULL)
      return SL_ENOMEM;
    for (i = 0; i < nd->nprop; i++)
      o[i] = kr[i].idx;
    free(kr);
  }
  return 0;
}

static void type_text(char *b, size_t cap, unsigned t, const char *sep);

/* What the checker says on failure, made once here so that rejecting a
 * value costs no printf. */
static int node_texts(struct sl_schema *s, uint32_t i) {
  struct node *n = &s->nodes[i];
  char b[160];
  int len;
  type_text(b, sizeof(b), n->types, " or ");
  if (add_str(&s->strs, b, strlen(b), &s->nodes[i].tmsg))
    return SL_ENOMEM;
  n = &s->nodes[i];
  if (n->flags & F_MIN_U64)
    len = snprintf(b, sizeof(b), "a number >= %llu",
                   (unsigned long long)(uint64_t)n->imin);
  else if (n->flags & F_MIN_INT)
    len = snprintf(b, sizeof(b), "a number >= %lld", (long long)n->imin);
  else
    len = snprintf(b, sizeof(b), "a number >= %.17g", n->min);
  if (add_str(&s->strs, b, (size_t)len, &s->nodes[i].minmsg))
    return SL_ENOMEM;
  n = &s->nodes[i];
  if (n->flags & F_MAX_U64)
    len = snprintf(b, sizeof(b), "a number <= %llu",
                   (unsigned long long)(uint64_t)n->imax);
  else if (n->flags & F_MAX_INT)
    len = snprintf(b, sizeof(b), "a number <= %lld", (long long)n->imax);
  else
    len = snprintf(b, sizeof(b), "a number <= %.17g", n->max);
  if (add_str(&s->strs, b, (size_t)len, &s->nodes[i].maxmsg))
    return SL_ENOMEM;
  n = &s->nodes[i];
  n->tmask = n->types ? n->types : T_ALL | T_EXT;
  if (n->ref >= 0 || n->nany || n->none)
    n->flags |= F_MORE;
  if (!(n->flags & (F_FALSE | F_MINITEMS | F_MAXITEMS | F_ADDL_FALSE | F_OBJ |
                    F_MORE)) && n->items < 0 && n->addl < 0)
    n->flags |= F_SCALAR;
  return 0;
}

static int finish(struct cc *c) {
  struct sl_schema *s = c->s;
  uint8_t *color = calloc(s->nnodes, 2);
  uint32_t n;
  int rc = 0;
  for (n = 0; n < s->nprops; n++) /* the nodes array moves no more */
    s->props[n].child = s->props[n].node >= 0 ? &s->nodes[s->props[n].node]
                                              : NULL;
  for (n = 0; n < s->nnodes; n++)
    if (node_texts(s, n) != 0) {
      free(color);
      return cfail(c, "out of memory");
    }
  if (color == NULL)
    return cfail(c, "out of memory");
  for (n = 0; n < s->nnodes && rc == 0; n++)
    if (chain(c, n, color, color + s->nnodes) < 0)
      rc = SL_EINVAL;
  free(color);
  if (rc == 0 && sort_props(s) != 0)
    rc = cfail(c, "out of memory");
  return rc;
}

int sl_schema_compile(const char *json, size_t n, const char *name,
                      struct sl_schema **out, char *err, size_t errlen) {
  struct cc c;
  struct sl_schema *s;
  const uint8_t *p, *end;
  char msg[160];
  int rc;
  memset(&c, 0, sizeof(c));
  c.name = name;
  c.err = err;
  c.errlen = errlen;
  if (err && errlen)
    err[0] = '\0';
  *out = NULL;
  s = calloc(1, sizeof(*s));
  if (s == NULL)
    return SL_ENOMEM;
  c.s = s;
  sl_buf_init(&s->mp);
  sl_buf_init(&s->strs);
  rc = sl_json_to_msgpack(json, n, &s->mp, msg, sizeof(msg));
  if (rc != 0) {
    if (rc != SL_ENOMEM)
      rc = cfail(&c, "not JSON: %s", msg);
    goto fail_schema;
  }
  p = s->mp.data;
  end = p + s->mp.len;
  rc = SL_EINVAL;
  if (collect_defs(&c, p, end) != 0 || new_node(s) != 0)
    goto fail_schema;
  if (compile_node(&c, &p, end, 0) != 0 || finish(&c) != 0)
    goto fail_schema;
  *out = s;
  return 0;
fail_schema:
  if (rc == SL_EINVAL && err && errlen && err[0] == '\0')
    snprintf(err, errlen, "%s: out of memory", name ? name : "schema");
  sl_schema_free(s);
  return rc;
}

int sl_schema_load_file(const char *path, struct sl_schema **out, char *err,
                        size_t errlen) {
  /* O_NONBLOCK: a FIFO must not block the load (or a reload) in open() */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  FILE *f;
  struct stat st;
  struct sl_buf b;
  char chunk[65536];
  size_t got;
  int rc;
  *out = NULL;
  if (fd < 0) {
    snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return SL_EINVAL;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "%s: not a regular file", path);
    close(fd);
    return SL_EINVAL;
  }
  if ((f = fdopen(fd, "rb")) == NULL) {
    close(fd);
    return SL_ENOMEM;
  }
  sl_buf_init(&b);
  while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
    if (b.len + got > (size_t)4 << 20) {
      snprintf(err, errlen, "%s: larger than 4 MiB", path);
      fclose(f);
      sl_buf_close(&b);
      return SL_EINVAL;
    }
    if (sl_buf_append(&b, chunk, got) != 0) {
      fclose(f);
      sl_buf_close(&b);
      return SL_ENOMEM;
    }
  }
  if (ferror(f)) {
    snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    fclose(f);
    sl_buf_close(&b);
    return SL_EINVAL;
  }
  fclose(f);
  rc = sl_schema_compile(b.data ? (const char *)b.data : "", b.len, path, out,
                         err, errlen);
  sl_buf_close(&b);
  return rc;
}

void sl_schema_free(struct sl_schema *s) {
  uint32_t i;
  if (s == NULL)
    return;
  for (i = 0; i < s->nres; i++)
    sl_regex_free(s->res[i]);
  free(s->res);
  free(s->nodes);
  free(s->props);
  free(s->sorted);
  free(s->vals);
  free(s->kids);
  free(s->defs);
  sl_buf_close(&s->strs);
  sl_buf_close(&s->mp);
  free(s);
}

/* ---- checking --------------------------------------------------------- */

/* An error's path is built on the way back up from the failure: each
 * container prepends its key or index, so an accepted value pays nothing
 * for paths. */
struct ck {
  const struct sl_schema *s;
  struct sl_schema_error *e;
  int64_t budget; /* check() calls left: anyOf over recursion stays linear */
  int nest;       /* containers entered */
  int type_failed; /* the last failure was a type mismatch */
};

static void fail_path(struct ck *c) { c->e->path[0] = '\0'; }

/* Put "/key" (or "/index" when key is NULL) in front of the error's path;
 * returns 1 (the failure goes on up). */
static int up(struct ck *c, const uint8_t *key, uint32_t len, uint32_t index) {
  char seg[sizeof(c->e->path)];
  size_t n, old;
  if (c->e == NULL)
    return 1;
  n = key ? path_key(seg, 0, sizeof(seg), key, len)
          : path_index(seg, 0, sizeof(seg), index);
  old = strlen(c->e->path);
  if (n + old >= sizeof(c->e->path)) {
    old = sizeof(c->e->path) - 1 - n; /* keep the outer part, */
    while (old > 0 && ((unsigned char)c->e->path[old] & 0xc0) == 0x80)
      old--; /* cut between characters */
  }
  memmove(c->e->path + n, c->e->path, old);
  memcpy(c->e->path, seg, n);
  c->e->path[n + old] = '\0';
  return 1;
}

static int fail(struct ck *c, const char *fmt, ...) SL_PRINTF(2, 3);
static int fail(struct ck *c, const char *fmt, ...) {
  va_list ap;
  c->type_failed = 0;
  if (c->e == NULL)
    return 1;
  fail_path(c);
  va_start(ap, fmt);
  vsnprintf(c->e->msg, sizeof(c->e->msg), fmt, ap);
  va_end(ap);
  return 1;
}

/* The failure text a, then b[0..bn), then z (each may be NULL): no printf,
 * so that rejecting costs about what accepting does. */
static int fail_text(struct ck *c, const char *a, const void *b, size_t bn,
                     const char *z) {
  char *m;
  size_t len = 0, n, cap;
  c->type_failed = 0;
  if (c->e == NULL)
    return 1;
  fail_path(c);
  m = c->e->msg;
  cap = sizeof(c->e->msg) - 1;
  if (a) {
    n = strlen(a);
    n = n < cap ? n : cap;
    memcpy(m, a, n);
    len = n;
  }
  if (b) {
    n = bn < cap - len ? bn : cap - len;
    memcpy(m + len, b, n);
    len += n;
  }
  if (z) {
    n = strlen(z);
    n = n < cap - len ? n : cap - len;
    memcpy(m + len, z, n);
    len += n;
  }
  m[len] = '\0';
  return 1;
}

static int fail_count(struct ck *c, const char *a, uint32_t v,
                      const char *z) {
  char b[12];
  int i = 12;
  do {
    b[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return fail_text(c, a, b + i, (size_t)(12 - i), z);
}

static inline uint64_t load_be(const uint8_t *p, int n) {
  uint64_t v;
  uint32_t w;
  uint16_t h;
  switch (n) {
  case 1: return p[0];
  case 2: memcpy(&h, p, 2); return __builtin_bswap16(h);
  case 4: memcpy(&w, p, 4); return __builtin_bswap32(w);
  default: memcpy(&v, p, 8); return __builtin_bswap64(v);
  }
}

/* One item; the common headers inline, the rest by the codec. */
HOT int rd(const uint8_t **pp, const uint8_t *end,
           struct sl_codec_item *it) {
  const uint8_t *p = *pp;
  size_t left = (size_t)(end - p);
  uint8_t b;
  if (sl_unlikely(left == 0))
    return -1;
  b = *p;
  if (b <= 0x7f) {
    it->t = SL_MP_UINT;
    it->u = b;
    *pp = p + 1;
    return 0;
  }
  if ((b & 0xe0) == 0xa0) {
    uint32_t n = b & 0x1f;
    if (left <= n)
      return -1;
    it->t = SL_MP_STR;
    it->s = p + 1;
    it->n = n;
    *pp = p + 1 + n;
    return 0;
  }
  if ((b & 0xe0) == 0x80) { /* fixmap, fixarray */
    it->t = b < 0x90 ? SL_MP_MAP : SL_MP_ARR;
    it->n = b & 0x0f;
    if (left - 1 < it->n)
      return -1;
    *pp = p + 1;
    return 0;
  }
  switch (b) {
  case 0xc0: it->t = SL_MP_NIL; *pp = p + 1; return 0;
  case 0xc2: case 0xc3:
    it->t = SL_MP_BOOL;
    it->b = b == 0xc3;
    *pp = p + 1;
    return 0;
  case 0xcb:
    if (left < 9)
      return -1;
    {
      uint64_t v = load_be(p + 1, 8);
      it->t = SL_MP_F64;
      memcpy(&it->d, &v, 8);
    }
    *pp = p + 9;
    return 0;
  case 0xcc: case 0xcd: case 0xce: case 0xcf: {
    int n = 1 << (b - 0xcc);
    if (left < (size_t)n + 1)
      return -1;
    it->t = SL_MP_UINT;
    it->u = load_be(p + 1, n);
    *pp = p + 1 + n;
    return 0;
  }
  default:
    return sl_codec_read_item(pp, end, it);
  }
}

/* Skip n values (bounds-checked) with the inline reader: the checker's
 * cost for a part of a value no keyword looks into. */
static int skip_fast(const uint8_t **pp, const uint8_t *end, uint64_t n) {
  struct sl_codec_item it;
  while (n > 0) {
    n--;
    if (rd(pp, end, &it) != 0)
      return -1;
    if (it.t == SL_MP_ARR)
      n += it.n;
    else if (it.t == SL_MP_MAP)
      n += 2 * (uint64_t)it.n;
  }
  return 0;
}

static inline int integral(double d) {
  if (d > -9007199254740992.0 && d < 9007199254740992.0)
    return d == (double)(int64_t)d;
  return !isinf(d) && !isnan(d); /* from 2^53 on, every double is whole */
}

HOT unsigned type_of(const struct sl_codec_item *it) {
  static const uint16_t bits[] = {T_NULL, T_BOOL, T_INT, T_INT,
                                  T_FRAC, T_FRAC, T_STR, T_BIN,
                                  T_ARR,  T_OBJ,  T_EXT, 0};
  unsigned b = bits[it->t];
  if (b == T_FRAC && integral(item_double(it)))
    b = T_INT;
  return b;
}

static void type_text(char *b, size_t cap, unsigned t, const char *sep) {
  static const char *const names[] = {"null",   "boolean", "integer",
                                      "number", "string",  "array",
                                      "object", "binary"};
  size_t len = 0;
  unsigned i;
  b[0] = '\0';
  if (t == 0 || t == T_ALL) {
    snprintf(b, cap, "any");
    return;
  }
  if ((t & (T_INT | T_FRAC)) == (T_INT | T_FRAC))
    t &= ~(unsigned)T_INT; /* "number" says it */
  else if (t & T_FRAC)
    t = (t & ~(unsigned)T_FRAC) | T_INT; /* cannot be named alone */
  for (i = 0; i < 8 && len < cap; i++)
    if (t & (1u << i))
      len += (size_t)snprintf(b + len, cap - len, "%s%s", len ? sep : "",
                              names[i]);
}

static int fail_type(struct ck *c, const struct node *n) {
  fail_text(c, (const char *)c->s->strs.data + n->tmsg, NULL, 0, NULL);
  c->type_failed = 1;
  return 1;
}

/* -1, 0, 1 as the double x (not NaN) compares with the integer that is
 * i (an int64, or a uint64 when u), exactly: no rounding of either. */
static int float_vs_int(double x, int64_t i, int u) {
  double t;
  if (x < (u ? 0x1p63 : -0x1p63))
    return -1;
  if (x >= (u ? 0x1p64 : 0x1p63))
    return 1;
  t = floor(x); /* in range: converts exactly */
  if (u ? (uint64_t)t != (uint64_t)i : (int64_t)t != i)
    return u ? ((uint64_t)t < (uint64_t)i ? -1 : 1)
             : ((int64_t)t < i ? -1 : 1);
  return x > t;
}

/* -1, 0, 1 as the number compares with a bound; 2 for NaN (fails all).
 * exact: 0 the bound is d, 1 the int64 i, 2 the uint64 (uint64_t)i. */
HOT int num_cmp(const struct sl_codec_item *it, double d, int64_t i,
                int exact) {
  double x;
  if (it->t == SL_MP_INT || (it->t == SL_MP_UINT && it->u <= INT64_MAX)) {
    int64_t v = it->t == SL_MP_INT ? it->i : (int64_t)it->u;
    if (exact == 2)
      return -1;
    if (exact)
      return v < i ? -1 : v > i;
    x = (double)v;
  } else if (it->t == SL_MP_UINT) {
    if (exact == 2)
      return it->u < (uint64_t)i ? -1 : it->u > (uint64_t)i;
    if (exact)
      return 1;
    x = (double)it->u;
  } else {
    x = item_double(it);
    if (isnan(x))
      return 2;
    if (exact)
      return float_vs_int(x, i, exact == 2);
  }
  return x < d ? -1 : x > d;
}

HOT int check_num(struct ck *c, const struct node *n,
                     const struct sl_codec_item *it) {
  const char *t = (const char *)c->s->strs.data;
  int r;
  if (n->flags & F_MIN) {
    r = num_cmp(it, n->min, n->imin,
                (n->flags & F_MIN_U64) ? 2 : !!(n->flags & F_MIN_INT));
    if (r < 0 || r == 2)
      return fail_text(c, t + n->minmsg, NULL, 0, NULL);
  }
  if (n->flags & F_MAX) {
    r = num_cmp(it, n->max, n->imax,
                (n->flags & F_MAX_U64) ? 2 : !!(n->flags & F_MAX_INT));
    if (r > 0)
      return fail_text(c, t + n->maxmsg, NULL, 0, NULL);
  }
  return 0;
}

HOT int check_str(struct ck *c, const struct node *n, const uint8_t *s,
                     uint32_t len) {
  if (n->flags & (F_MINLEN | F_MAXLEN)) {
    uint32_t cps = len, i;
    /* code points <= bytes <= 4 * code points: count only when needed */
    int need = ((n->flags & F_MAXLEN) && len > n->maxlen) ||
               ((n->flags & F_MINLEN) && len >= n->minlen &&
                (uint64_t)n->minlen * 4 > len);
    if (need)
      for (i = 0; i < len; i++)
        cps -= (s[i] & 0xc0) == 0x80;
    if ((n->flags & F_MINLEN) && cps < n->minlen)
      return fail_count(c, "at least ", n->minlen, " characters");
    if ((n->flags & F_MAXLEN) && cps > n->maxlen)
      return fail_count(c, "at most ", n->maxlen, " characters");
  }
  if (n->re >= 0 && !sl_regex_search(c->s->res[n->re], s, len))
    return fail_text(c, "a string matching \"",
                     (const char *)c->s->strs.data + n->pat,
                     strlen((const char *)c->s->strs.data + n->pat), "\"");
  return 0;
}

static int check(struct ck *c, uint32_t ni, const uint8_t **pp,
                 const uint8_t *end);
static int check_enum(struct ck *c, const struct node *n, const uint8_t *v,
                      const uint8_t *ve, int is_str, const uint8_t *str,
                      uint32_t strn);

static inline int same(const uint8_t *a, const uint8_t *b, uint32_t n) {
  uint64_t x, y;
  while (n >= 8) {
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    if (x != y)
      return 0;
    a += 8;
    b += 8;
    n -= 8;
  }
  while (n > 0) {
    if (*a++ != *b++)
      return 0;
    n--;
  }
  return 1;
}

/* minimum/maximum of an integer read inline. */
HOT int int_bounds(struct ck *c, const struct node *n, int64_t v) {
  const char *t = (const char *)c->s->strs.data;
  if ((n->flags & F_MIN) &&
      ((n->flags & F_MIN_U64) ||
       ((n->flags & F_MIN_INT) ? v < n->imin : (double)v < n->min)))
    return fail_text(c, t + n->minmsg, NULL, 0, NULL);
  if ((n->flags & F_MAX) && !(n->flags & F_MAX_U64) &&
      ((n->flags & F_MAX_INT) ? v > n->imax : (double)v > n->max))
    return fail_text(c, t + n->maxmsg, NULL, 0, NULL);
  return 0;
}

/* enum of a string: bytes compared, no decoding. */
HOT int enum_str(struct ck *c, const struct node *n, const uint8_t *str,
                 uint32_t len) {
  const struct span *v = c->s->vals + n->enum0;
  uint32_t i;
  for (i = 0; i < n->nenum; i++)
    if (v[i].str && v[i].strn == len && same(v[i].str, str, len))
      return 0;
  return fail_text(c, (const char *)c->s->strs.data + n->emsg, NULL, 0,
                   NULL);
}

/* A value against a node with no keyword that descends into it or checks
 * it again (F_SCALAR): no recursion, inlined into the object walk. */
HOT int check_scalar(struct ck *c, const struct node *n,
                               const uint8_t **pp, const uint8_t *end) {
  const uint8_t *start = *pp;
  struct sl_codec_item it;
  if (sl_likely(start < end)) { /* one-byte values and short strings */
    uint8_t b = *start;
    uint32_t f = n->flags;
    if ((b & 0xe0) == 0xa0 && (size_t)(end - start) > (size_t)(b & 0x1f)) {
      const uint8_t *str = start + 1;
      uint32_t len = b & 0x1f;
      if (!(n->tmask & T_STR))
        return fail_type(c, n);
      *pp = str + len;
      if ((f & (F_MINLEN | F_MAXLEN)) || n->re >= 0)
        if (check_str(c, n, str, len))
          return 1;
      if (f & F_ENUM && !(f & F_CONST))
        return enum_str(c, n, str, len);
      if (f & F_CONST)
        return check_enum(c, n, start, *pp, 1, str, len);
      return 0;
    }
    if ((b <= 0x7f || b == 0xc0 || b == 0xc2 || b == 0xc3) &&
        !(f & (F_MIN | F_MAX | F_ENUM | F_CONST))) {
      if (!(n->tmask & (b <= 0x7f ? T_INT : b == 0xc0 ? T_NULL : T_BOOL)))
        return fail_type(c, n);
      *pp = start + 1;
      return 0;
    }
    if (!(f & (F_ENUM | F_CONST))) { /* integers up to 32 bits */
      int64_t v;
      size_t len;
      if (b <= 0x7f || b >= 0xe0) {
        v = b <= 0x7f ? (int64_t)b : (int64_t)(int8_t)b;
        len = 1;
      } else if (b >= 0xcc && b <= 0xce) {
        len = 1 + ((size_t)1 << (b - 0xcc));
        if ((size_t)(end - start) < len)
          return fail_text(c, "valid msgpack", NULL, 0, NULL);
        v = (int64_t)load_be(start + 1, (int)len - 1);
      } else {
        goto general;
      }
      if (!(n->tmask & T_INT))
        return fail_type(c, n);
      *pp = start + len;
      return (f & (F_MIN | F_MAX)) ? int_bounds(c, n, v) : 0;
    }
  }
general:
  if (rd(pp, end, &it) != 0)
    return fail_text(c, "valid msgpack", NULL, 0, NULL);
  if (!(n->tmask & type_of(&it)))
    return fail_type(c, n);
  switch (it.t) {
  case SL_MP_STR:
    if ((n->flags & (F_MINLEN | F_MAXLEN) || n->re >= 0) &&
        check_str(c, n, it.s, it.n))
      return 1;
    break;
  case SL_MP_ARR: case SL_MP_MAP:
    if (skip_fast(pp, end, it.t == SL_MP_MAP ? 2 * (uint64_t)it.n : it.n))
      return fail_text(c, "valid msgpack", NULL, 0, NULL);
    break;
  case SL_MP_INT: case SL_MP_UINT: case SL_MP_F32: case SL_MP_F64:
    if ((n->flags & (F_MIN | F_MAX)) && check_num(c, n, &it))
      return 1;
    break;
  default:
    break;
  }
  if (n->flags & (F_ENUM | F_CONST))
    return check_enum(c, n, start, *pp, it.t == SL_MP_STR, it.s, it.n);
  return 0;
}

static int check_array(struct ck *c, const struct node *n, uint32_t count,
                       const uint8_t **pp, const uint8_t *end) {
  uint32_t i;
  if ((n->flags & F_MINITEMS) && count < n->minitems)
    return fail_count(c, "at least ", n->minitems, " items");
  if ((n->flags & F_MAXITEMS) && count > n->maxitems)
    return fail_count(c, "at most ", n->maxitems, " items");
  if (n->items < 0)
    return skip_fast(pp, end, count) ? fail_text(c, "valid msgpack", NULL, 0, NULL) : 0;
  if (c->nest == MAX_NEST)
    return fail(c, "a value nested at most %d deep", MAX_NEST);
  c->nest++;
  for (i = 0; i < count; i++)
    if (check(c, (uint32_t)n->items, pp, end))
      return up(c, NULL, 0, i);
  c->nest--;
  return 0;
}


/* The first 8 bytes of key k (kl bytes, zero-padded); end bounds the
 * read. */
HOT uint64_t key_head(const uint8_t *k, uint32_t kl,
                                const uint8_t *end) {
  uint64_t x;
  uint32_t i;
  if (sl_likely(end - k >= 8)) {
    memcpy(&x, k, 8);
    if (kl < 8)
      x &= ((uint64_t)1 << (8 * kl)) - 1;
    return x;
  }
  x = 0; /* near the end of the bytes: no 8-byte load */
  for (i = 0; i < kl && i < 8; i++)
    x |= (uint64_t)k[i] << (8 * i);
  return x;
}

HOT int key_is(const struct prop *pr, const uint8_t *k,
                         uint32_t kl, uint64_t head) {
  return pr->head == head && pr->len == kl &&
         (kl <= 8 || same(pr->key + 8, k + 8, kl - 8));
}

/* The index among n's props of key k, or -1. Events usually list fields in
 * the schema's order, so the one after the last match is tried first. */
HOT int32_t find_prop(const struct prop *pr, const uint32_t *o,
                      uint32_t prop0, uint32_t np, const uint8_t *k,
                      uint32_t kl, const uint8_t *end, uint32_t *hint) {
  uint32_t h = *hint, i, lo = 0, hi = np;
  uint64_t head = key_head(k, kl, end);
  if (h < np && key_is(&pr[h], k, kl, head)) {
    *hint = h + 1;
    return (int32_t)h;
  }
  if (np <= 16) {
    for (i = 0; i < np; i++) {
      if (key_is(&pr[i], k, kl, head)) {
        *hint = i + 1;
        return (int32_t)i;
      }
    }
    return -1;
  }
  while (lo < hi) {
    uint32_t mid = (lo + hi) / 2;
    const struct prop *m = &pr[o[mid] - prop0];
    int r = m->len != kl ? (m->len < kl ? -1 : 1) : memcmp(m->key, k, kl);
    if (r == 0) {
      *hint = o[mid] - prop0 + 1;
      return (int32_t)(o[mid] - prop0);
    }
    if (r < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return -1;
}

static int missing_required(struct ck *c, const struct node *n,
                            const uint64_t *seen) {
  const struct prop *pr = c->s->props + n->prop0;
  uint32_t i;
  for (i = 0; i < n->nprop; i++) {
    int32_t r = pr[i].req;
    if (r >= 0 && !(seen[r >> 6] & ((uint64_t)1 << (r & 63))))
      return fail_text(c, "required property \"", pr[i].key, pr[i].len,
                       "\"");
  }
  return 0;
}

/* The part of the object walk past a key that names no property. */
static int check_other_key(struct ck *c, const struct node *n,
                           const struct sl_codec_item *k, const uint8_t **pp,
                           const uint8_t *end) {
  if (k->t != SL_MP_STR &&
      (k->t == SL_MP_ARR || k->t == SL_MP_MAP) &&
      skip_fast(pp, end, k->t == SL_MP_MAP ? 2 * (uint64_t)k->n : k->n))
    return fail_text(c, "valid msgpack", NULL, 0, NULL);
  if (n->flags & F_ADDL_FALSE)
    return fail_text(c, "no such property (additionalProperties is false)",
                     NULL, 0, NULL);
  if (n->addl >= 0)
    return check(c, (uint32_t)n->addl, pp, end);
  return skip_fast(pp, end, 1) ? fail_text(c, "valid msgpack", NULL, 0, NULL)
                               : 0;
}

static int check_required(struct ck *c, const struct node *n, uint64_t seen0,
                          uint64_t *seen) {
  uint32_t w, nw = (n->nreq + 63u) / 64u;
  seen[0] = seen0;
  for (w = 0; w + 1 < nw; w++)
    if (seen[w] != UINT64_MAX)
      return missing_required(c, n, seen);
  if (seen[nw - 1] != (n->nreq % 64 ? ((uint64_t)1 << (n->nreq % 64)) - 1
                                     : UINT64_MAX))
    return missing_required(c, n, seen);
  return 0;
}

/* The walk of a map: the cursor p is local (written back at the end) so
 * that the loop keeps it in a register. */
static __attribute__((noinline)) int
check_object(struct ck *c, const struct node *n, uint32_t count,
             const uint8_t **pp, const uint8_t *end) {
  uint64_t seen[MAX_REQUIRED / 64], seen0 = 0; /* seen[0] kept in seen0 */
  const struct prop *props = n->nprop ? c->s->props + n->prop0 : NULL;
  uint32_t hint = 0, i, w, nw = (n->nreq + 63u) / 64u;
  const uint8_t *p = *pp;
  const struct node *nodes = c->s->nodes;
  const uint32_t *order = c->s->sorted + n->prop0;
  const uint32_t np = n->nprop;
  struct sl_codec_item k;
  if (!(n->flags & (F_OBJ | F_ADDL_FALSE)) && n->addl < 0)
    return skip_fast(pp, end, 2 * (uint64_t)count)
               ? fail_text(c, "valid msgpack", NULL, 0, NULL) : 0;
  for (w = 1; w < nw; w++)
    seen[w] = 0;
  if (c->nest == MAX_NEST)
    return fail(c, "a value nested at most %d deep", MAX_NEST);
  c->nest++;
  for (i = 0; i < count; i++) {
    const struct prop *pr = NULL;
    const uint8_t *ks;
    uint32_t kn;
    int str_key = 1;
    if (sl_likely(hint < np && end - p >= 8)) {
      /* the expected next field: its encoded name against 8 bytes */
      const struct prop *h = props + hint;
      uint64_t w;
      memcpy(&w, p, 8);
      if ((w & h->encmask) == h->enc && h->encmask &&
          (size_t)(end - p) > h->len &&
          (h->len <= 7 || same(h->key + 7, p + 8, h->len - 7))) {
        ks = p + 1;
        kn = h->len;
        p += 1 + kn;
        pr = h;
        hint++;
        goto found;
      }
    }
    if (sl_likely(p < end && (*p & 0xe0) == 0xa0 &&
                  (size_t)(end - p) > (size_t)(*p & 0x1f))) {
      ks = p + 1; /* a fixstr key, read here: the common case */
      kn = *p & 0x1f;
      p += 1 + kn;
    } else {
      const uint8_t *q = p;
      if (rd(&q, end, &k) != 0)
        return fail_text(c, "valid msgpack", NULL, 0, NULL);
      p = q;
      ks = k.t == SL_MP_STR ? k.s : (const uint8_t *)"?";
      kn = k.t == SL_MP_STR ? k.n : 1; /* "?": a key JSON cannot name */
      if (k.t != SL_MP_STR) {
        str_key = 0;
        goto other;
      }
    }
    {
      int32_t j = find_prop(props, order, n->prop0, np, ks, kn, end, &hint);
      if (j >= 0)
        pr = props + j;
    }
  other:
  found:
    if (sl_likely(pr != NULL)) {
      const struct node *cn = pr->child;
      if (pr->req >= 0) {
        if (pr->req < 64)
          seen0 |= (uint64_t)1 << pr->req;
        else
          seen[pr->req >> 6] |= (uint64_t)1 << (pr->req & 63);
      }
      if (cn == NULL) { /* only named by required: still additional */
        const uint8_t *q = p;
        k.t = SL_MP_STR;
        if (check_other_key(c, n, &k, &q, end))
          return up(c, ks, kn, 0);
        p = q;
      } else if (cn->flags & F_SCALAR) {
        if (check_scalar(c, cn, &p, end))
          return up(c, ks, kn, 0);
      } else {
        const uint8_t *q = p; /* p itself stays in a register */
        if (check(c, (uint32_t)(cn - nodes), &q, end))
          return up(c, ks, kn, 0);
        p = q;
      }
    } else {
      const uint8_t *q = p;
      if (str_key)
        k.t = SL_MP_STR;
      if (check_other_key(c, n, &k, &q, end))
        return up(c, ks, kn, 0);
      p = q;
    }
  }
  c->nest--;
  *pp = p;
  if (n->nreq)
    return check_required(c, n, seen0, seen);
  return 0;
}

/* ---- equality for enum and const -------------------------------------- */

static uint64_t as_u64(const struct sl_codec_item *it) {
  return it->t == SL_MP_INT ? (uint64_t)it->i : it->u;
}

/* Numbers are equal by value: 1 == 1.0, exactly for 64-bit integers. */
static int num_eq(const struct sl_codec_item *x, const struct sl_codec_item *y) {
  int xi = x->t == SL_MP_INT || x->t == SL_MP_UINT;
  int yi = y->t == SL_MP_INT || y->t == SL_MP_UINT;
  const struct sl_codec_item *in, *fl;
  double d;
  if (xi && yi) {
    int xneg = x->t == SL_MP_INT && x->i < 0;
    int yneg = y->t == SL_MP_INT && y->i < 0;
    return xneg == yneg && as_u64(x) == as_u64(y);
  }
  if (!xi && !yi)
    return item_double(x) == item_double(y);
  in = xi ? x : y;
  fl = xi ? y : x;
  d = item_double(fl);
  if (!integral(d))
    return 0;
  if (in->t == SL_MP_INT && in->i < 0)
    return d >= -9223372036854775808.0 && (int64_t)d == in->i;
  return d >= 0 && d < 18446744073709551616.0 && (uint64_t)d == as_u64(in);
}

static int eq_value(const uint8_t **a, const uint8_t *ae, const uint8_t **b,
                    const uint8_t *be, int depth);

/* Is each of the n pairs at a0 among the n pairs at b0 (the first pair
 * with an equal key must have an equal value)? */
static int pairs_in(const uint8_t *a0, const uint8_t *ae, const uint8_t *b0,
                    const uint8_t *be, uint32_t n, int depth) {
  const uint8_t *a = a0;
  uint32_t i, j;
  for (i = 0; i < n; i++) {
    const uint8_t *ka = a, *va, *q = b0, *kb, *vb, *t1, *t2;
    int found = 0;
    if (skip_n(&a, ae, 1))
      return 0;
    va = a;
    if (skip_n(&a, ae, 1))
      return 0;
    for (j = 0; j < n && !found; j++) {
      kb = q;
      if (skip_n(&q, be, 1))
        return 0;
      vb = q;
      if (skip_n(&q, be, 1))
        return 0;
      t1 = ka;
      t2 = kb;
      if (!eq_value(&t1, ae, &t2, be, depth + 1))
        continue;
      t1 = va;
      t2 = vb;
      if (!eq_value(&t1, ae, &t2, be, depth + 1))
        return 0;
      found = 1;
    }
    if (!found)
      return 0;
  }
  return 1;
}

/* Is the value at *a equal to the one at *b? Advances both past their
 * values when it is. Maps compare as sets of pairs. */
static int eq_value(const uint8_t **a, const uint8_t *ae, const uint8_t **b,
                    const uint8_t *be, int depth) {
  struct sl_codec_item x, y;
  uint32_t i;
  if (depth > SL_CODEC_MAX_DEPTH || rd(a, ae, &x) || rd(b, be, &y))
    return 0;
  if (is_number(&x) && is_number(&y))
    return num_eq(&x, &y);
  if (x.t != y.t)
    return 0;
  switch (x.t) {
  case SL_MP_NIL: return 1;
  case SL_MP_BOOL: return x.b == y.b;
  case SL_MP_EXT:
    if (x.ext != y.ext)
      return 0;
    /* fall through */
  case SL_MP_STR: case SL_MP_BIN:
    return x.n == y.n && memcmp(x.s, y.s, x.n) == 0;
  case SL_MP_ARR:
    if (x.n != y.n)
      return 0;
    for (i = 0; i < x.n; i++)
      if (!eq_value(a, ae, b, be, depth + 1))
        return 0;
    return 1;
  case SL_MP_MAP: {
    const uint8_t *a0 = *a, *b0 = *b;
    if (x.n != y.n || skip_n(a, ae, 2 * (uint64_t)x.n) ||
        skip_n(b, be, 2 * (uint64_t)y.n))
      return 0;
    /* both ways: each pair of {"a":1,"a":1} is in {"a":1,"b":2}, and the
     * counts match, but "b" is not in it */
    return pairs_in(a0, ae, b0, be, x.n, depth) &&
           pairs_in(b0, be, a0, ae, x.n, depth);
  }
  default: return 0;
  }
}

static int equal(const uint8_t *a, const uint8_t *ae, const struct span *v) {
  const uint8_t *b = v->p;
  return eq_value(&a, ae, &b, v->p + v->n, 0);
}

static int check_enum(struct ck *c, const struct node *n, const uint8_t *v,
                      const uint8_t *ve, int is_str, const uint8_t *str,
                      uint32_t strn) {
  const struct sl_schema *s = c->s;
  uint32_t i;
  if (is_str && !(n->flags & F_CONST)) {
    for (i = 0; i < n->nenum; i++) { /* strings: bytes, no decoding */
      const struct span *e = &s->vals[n->enum0 + i];
      if (e->str && e->strn == strn && same(e->str, str, strn))
        return 0;
    }
    return fail_text(c, (const char *)s->strs.data + n->emsg, NULL, 0,
                     NULL);
  }
  if (n->flags & F_CONST) {
    if (!equal(v, ve, &s->vals[n->konst]))
      return fail_text(c, (const char *)s->strs.data + n->cmsg, NULL, 0,
                       NULL);
  }
  if (n->flags & F_ENUM) {
    for (i = 0; i < n->nenum; i++)
      if (equal(v, ve, &s->vals[n->enum0 + i]))
        return 0;
    return fail_text(c, (const char *)s->strs.data + n->emsg, NULL, 0,
                     NULL);
  }
  return 0;
}

/* ---- $ref, anyOf, oneOf ----------------------------------------------- */

/* No branch matched: run them again for errors and report the one that
 * got deepest into the value. */
static int branch_fail(struct ck *c, uint32_t k0, uint32_t nk,
                       const uint8_t *start, const uint8_t *end,
                       const char *kw) {
  struct sl_schema_error *e = c->e, tmp;
  int nest = c->nest;
  size_t best = 0, score;
  uint32_t i, besti = 0;
  if (e == NULL)
    return 1;
  for (i = 0; i < nk; i++) {
    const uint8_t *q = start;
    c->e = &tmp;
    c->nest = nest;
    if (check(c, c->s->kids[k0 + i], &q, end) == 0)
      continue; /* only when the budget ran out the first time */
    /* deepest first; at one depth, not a mere type mismatch */
    score = 2 * strlen(tmp.path) + !c->type_failed;
    if (i == 0 || score > best) {
      best = score;
      besti = i;
      *e = tmp;
    }
  }
  c->e = e;
  c->nest = nest;
  {
    char msg[sizeof(e->msg)];
    snprintf(msg, sizeof(msg), "%.160s (%s branch %u)", e->msg, kw, besti);
    memcpy(e->msg, msg, sizeof(msg));
  }
  return 1;
}

static int check_more(struct ck *c, const struct node *n, const uint8_t *start,
                      const uint8_t *end) {
  struct sl_schema_error *e = c->e;
  const uint8_t *q;
  int nest = c->nest, matched = -1, ok = 0;
  uint32_t i;
  if (n->ref >= 0) {
    q = start;
    if (check(c, (uint32_t)n->ref, &q, end))
      return 1;
  }
  c->e = NULL; /* a failing branch is no error yet */
  for (i = 0; i < n->nany && !ok; i++) {
    q = start;
    c->nest = nest;
    ok = check(c, c->s->kids[n->any0 + i], &q, end) == 0;
  }
  c->e = e;
  c->nest = nest;
  if (n->nany && !ok)
    return branch_fail(c, n->any0, n->nany, start, end, "anyOf");
  c->e = NULL;
  for (i = 0; i < n->none; i++) {
    q = start;
    c->nest = nest;
    if (check(c, c->s->kids[n->one0 + i], &q, end) != 0)
      continue;
    if (matched >= 0) {
      c->e = e;
      c->nest = nest;
      return fail(c, "exactly one oneOf branch (%d and %u both match)",
                  matched, i);
    }
    matched = (int)i;
  }
  c->e = e;
  c->nest = nest;
  if (n->none && matched < 0)
    return branch_fail(c, n->one0, n->none, start, end, "oneOf");
  return 0;
}

static int check(struct ck *c, uint32_t ni, const uint8_t **pp,
                 const uint8_t *end) {
  const struct node *n = &c->s->nodes[ni];
  const uint8_t *start = *pp;
  struct sl_codec_item it;
  if (sl_unlikely(--c->budget < 0))
    return fail(c, "a value this schema can check in bounded time");
  if (n->flags & F_SCALAR)
    return check_scalar(c, n, pp, end);
  if (sl_unlikely(n->flags & F_FALSE))
    return fail(c, "nothing (the schema is false)");
  if (rd(pp, end, &it) != 0)
    return fail_text(c, "valid msgpack", NULL, 0, NULL);
  if (!(n->tmask & type_of(&it)))
    return fail_type(c, n);
  switch (it.t) {
  case SL_MP_STR:
    if (check_str(c, n, it.s, it.n))
      return 1;
    break;
  case SL_MP_ARR:
    if (check_array(c, n, it.n, pp, end))
      return 1;
    break;
  case SL_MP_MAP:
    if (check_object(c, n, it.n, pp, end))
      return 1;
    break;
  case SL_MP_INT: case SL_MP_UINT: case SL_MP_F32: case SL_MP_F64:
    if ((n->flags & (F_MIN | F_MAX)) && check_num(c, n, &it))
      return 1;
    break;
  default:
    break;
  }
  if (sl_unlikely(n->flags & (F_ENUM | F_CONST)) &&
      check_enum(c, n, start, *pp, it.t == SL_MP_STR, it.s, it.n))
    return 1;
  if (sl_unlikely(n->flags & F_MORE))
    return check_more(c, n, start, end);
  return 0;
}

int sl_schema_check(const struct sl_schema *s, const uint8_t *p, size_t n,
                    struct sl_schema_error *e) {
  struct ck c;
  const uint8_t *q = p;
  c.s = s;
  c.e = e;
  c.nest = 0;
  c.budget = ((int64_t)n + 64) * (int64_t)s->nnodes * 8;
  if (e) {
    e->path[0] = '\0';
    e->msg[0] = '\0';
  }
  return check(&c, 0, &q, p + n) ? SL_EINVAL : 0;
}

/* ---- comparing versions ----------------------------------------------- */

struct cmp {
  const struct sl_schema *a, *b; /* older, newer */
  void (*report)(void *data, int breaking, const char *path,
                 const char *what);
  void *data;
  int breaking, depth;
  char path[512];
  size_t plen;
};

static void say(struct cmp *c, int breaking, const char *fmt, ...)
    SL_PRINTF(3, 4);
static void say(struct cmp *c, int breaking, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  c->breaking += breaking;
  if (c->report)
    c->report(c->data, breaking, c->path, what);
}

static void value_text(char *b, size_t cap, const struct span *v) {
  struct sl_buf j;
  sl_buf_init(&j);
  if (sl_codec_to_json(v->p, v->n, &j) == 0)
    snprintf(b, cap, "%.*s", (int)(j.len > 200 ? 200 : j.len),
             (const char *)j.data);
  else
    snprintf(b, cap, "?");
  sl_buf_close(&j);
}

/* A bound: has/value in the older and newer. up_breaks: raising it
 * narrows (a minimum); otherwise lowering it does (a maximum). */
static void cmp_bound(struct cmp *c, const char *kw, int ha, double va, int hb,
                      double vb, int up_breaks) {
  if (!ha && !hb)
    return;
  if (!ha)
    say(c, 1, "%s %.15g added", kw, vb);
  else if (!hb)
    say(c, 0, "%s %.15g removed", kw, va);
  else if (va != vb)
    say(c, (vb > va) == up_breaks, "%s %s from %.15g to %.15g", kw,
        vb > va ? "raised" : "lowered", va, vb);
}

/* A minimum (max 0) or maximum (max 1) of n: exact 0 (the double d), 1
 * (the int64 i) or 2 (the uint64 (uint64_t)i). */
struct bound {
  int exact;
  int64_t i;
  double d;
};

static struct bound bound_of(const struct node *n, int max) {
  struct bound b;
  uint32_t f = n->flags;
  b.exact = (f & (max ? F_MAX_U64 : F_MIN_U64)) ? 2
            : (f & (max ? F_MAX_INT : F_MIN_INT)) ? 1 : 0;
  b.i = max ? n->imax : n->imin;
  b.d = max ? n->max : n->min;
  return b;
}

/* -1, 0, 1 as bound a compares with b, exactly (2^53 + 1 is not 2^53). */
static int bound_cmp(const struct bound *a, const struct bound *b) {
  if (a->exact && b->exact) {
    if (a->exact != b->exact)
      return a->exact == 2 ? 1 : -1;
    if (a->exact == 2)
      return (uint64_t)a->i < (uint64_t)b->i ? -1 : (uint64_t)a->i > (uint64_t)b->i;
    return a->i < b->i ? -1 : a->i > b->i;
  }
  if (a->exact)
    return -float_vs_int(b->d, a->i, a->exact == 2);
  if (b->exact)
    return float_vs_int(a->d, b->i, b->exact == 2);
  return a->d < b->d ? -1 : a->d > b->d;
}

static void bound_text(char *t, size_t n, const struct bound *b) {
  if (b->exact == 2)
    snprintf(t, n, "%llu", (unsigned long long)(uint64_t)b->i);
  else if (b->exact)
    snprintf(t, n, "%lld", (long long)b->i);
  else
    snprintf(t, n, "%.15g", b->d);
}

/* minimum (max 0) or maximum (max 1) of the older a and the newer b. */
static void cmp_num_bound(struct cmp *c, const char *kw, const struct node *a,
                          const struct node *b, int max) {
  uint32_t flag = max ? F_MAX : F_MIN;
  struct bound ba = bound_of(a, max), bb = bound_of(b, max);
  char ta[32], tb[32];
  int r;
  bound_text(ta, sizeof(ta), &ba);
  bound_text(tb, sizeof(tb), &bb);
  if (!(a->flags & flag) && !(b->flags & flag))
    return;
  if (!(a->flags & flag))
    say(c, 1, "%s %s added", kw, tb);
  else if (!(b->flags & flag))
    say(c, 0, "%s %s removed", kw, ta);
  else if ((r = bound_cmp(&bb, &ba)) != 0)
    say(c, (r > 0) == !max, "%s %s from %s to %s", kw,
        r > 0 ? "raised" : "lowered", ta, tb);
}

static void cmp_node(struct cmp *c, uint32_t oa, uint32_t ob);

static void cmp_sub(struct cmp *c, uint32_t oa, uint32_t ob, const char *k1,
                    const void *k2, size_t k2len, int64_t index) {
  size_t saved = c->plen;
  c->plen = path_key(c->path, c->plen, sizeof(c->path), k1, strlen(k1));
  if (k2)
    c->plen = path_key(c->path, c->plen, sizeof(c->path), k2, k2len);
  else if (index >= 0)
    c->plen = path_index(c->path, c->plen, sizeof(c->path), (uint64_t)index);
  cmp_node(c, oa, ob);
  c->plen = saved;
  c->path[saved] = '\0';
}

static const struct prop *prop_named(const struct sl_schema *s,
                                     const struct node *n, const uint8_t *k,
                                     uint32_t len) {
  const uint32_t *o = s->sorted + n->prop0; /* by (len, bytes) */
  uint32_t lo = 0, hi = n->nprop;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    const struct prop *m = &s->props[o[mid]];
    int r = m->len != len ? (m->len < len ? -1 : 1) : memcmp(m->key, k, len);
    if (r == 0)
      return m;
    if (r < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

static void cmp_props(struct cmp *c, const struct node *a,
                      const struct node *b) {
  uint32_t i;
  for (i = 0; i < a->nprop; i++) {
    const struct prop *pa = &c->a->props[a->prop0 + i];
    const struct prop *pb = prop_named(c->b, b, pa->key, pa->len);
    int na = pa->node >= 0, nb = pb && pb->node >= 0;
    int ra = pa->req >= 0, rb = pb && pb->req >= 0;
    const char *k = (const char *)pa->key;
    int kl = (int)pa->len;
    if (na && !nb)
      say(c, 1, "field \"%.*s\" removed", kl, k);
    else if (na && nb)
      cmp_sub(c, (uint32_t)pa->node, (uint32_t)pb->node, "properties",
              pa->key, pa->len, -1);
    else if (nb)
      say(c, rb && !ra, "%s field \"%.*s\" added",
          rb ? "required" : "optional", kl, k);
    if (!ra && rb && !(nb && !na))
      say(c, 1, "field \"%.*s\" made required", kl, k);
    else if (ra && !rb)
      say(c, 0, "field \"%.*s\" made optional", kl, k);
  }
  for (i = 0; i < b->nprop; i++) {
    const struct prop *pb = &c->b->props[b->prop0 + i];
    if (prop_named(c->a, a, pb->key, pb->len) != NULL)
      continue;
    if (pb->node >= 0)
      say(c, pb->req >= 0, "%s field \"%.*s\" added",
          pb->req >= 0 ? "required" : "optional", (int)pb->len,
          (const char *)pb->key);
    else if (pb->req >= 0)
      say(c, 1, "field \"%.*s\" made required", (int)pb->len,
          (const char *)pb->key);
  }
}

static void cmp_addl(struct cmp *c, const struct node *a,
                     const struct node *b) {
  static const char *const names[] = {"true", "false", "a schema"};
  int sa = a->flags & F_ADDL_FALSE ? 1 : a->addl >= 0 ? 2 : 0;
  int sb = b->flags & F_ADDL_FALSE ? 1 : b->addl >= 0 ? 2 : 0;
  if (sa == 2 && sb == 2)
    cmp_sub(c, (uint32_t)a->addl, (uint32_t)b->addl, "additionalProperties",
            NULL, 0, -1);
  else if (sa != sb) /* true < a schema < false, by what they allow */
    say(c, (sb == 1) || (sa == 0 && sb == 2),
        "additionalProperties changed from %s to %s", names[sa], names[sb]);
}

static uint64_t mix64(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9e3779b97f4a7c15ull ^ (b + 0xbf58476d1ce4e5b9ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* A hash of the value at *pp (advanced past it) that equal values share,
 * as eq_value sees them: numbers by value, maps by their set of pairs
 * (the smallest and largest pair hash, so order and repeats do not
 * count). Enum comparisons look values up by it. */
static uint64_t val_hash(const uint8_t **pp, const uint8_t *end, int depth) {
  struct sl_codec_item it;
  uint64_t h, lo = UINT64_MAX, hi = 0, ph;
  uint32_t i;
  double d;
  if (depth > SL_CODEC_MAX_DEPTH || rd(pp, end, &it))
    return 0;
  if (it.t == SL_MP_INT && it.i < 0)
    return mix64(11, (uint64_t)it.i);
  if (it.t == SL_MP_INT || it.t == SL_MP_UINT)
    return mix64(1, as_u64(&it));
  if (is_number(&it)) {
    d = item_double(&it);
    if (integral(d) && d < 0 && d >= -0x1p63)
      return mix64(11, (uint64_t)(int64_t)d);
    if (integral(d) && d >= 0 && d < 0x1p64)
      return mix64(1, (uint64_t)d);
    memcpy(&h, &d, sizeof(h));
    return mix64(2, h);
  }
  switch (it.t) {
  case SL_MP_NIL: return mix64(3, 0);
  case SL_MP_BOOL: return mix64(4, (uint64_t)it.b);
  case SL_MP_STR: case SL_MP_BIN: case SL_MP_EXT:
    h = mix64(it.t == SL_MP_EXT ? 100 + (uint64_t)(it.ext & 0xff)
                                : (uint64_t)it.t + 5, it.n);
    for (i = 0; i < it.n; i++)
      h = h * 0x100000001b3ull ^ it.s[i];
    return mix64(h, 0);
  case SL_MP_ARR:
    h = mix64(20, it.n);
    for (i = 0; i < it.n; i++)
      h = mix64(h, val_hash(pp, end, depth + 1));
    return h;
  case SL_MP_MAP:
    for (i = 0; i < it.n; i++) {
      ph = val_hash(pp, end, depth + 1);
      ph = mix64(ph, val_hash(pp, end, depth + 1));
      lo = ph < lo ? ph : lo;
      hi = ph > hi ? ph : hi;
    }
    return mix64(mix64(21, it.n), mix64(lo, hi));
  default: return 0;
  }
}

struct vhash {
  uint64_t h;
  uint32_t i;
};

static int by_vhash(const void *pa, const void *pb) {
  const struct vhash *a = pa, *b = pb;
  return a->h < b->h ? -1 : a->h > b->h;
}

/* vals[v0 .. v0+nv) by hash; NULL when out of memory. */
static struct vhash *hash_vals(const struct sl_schema *s, uint32_t v0,
                               uint32_t nv) {
  struct vhash *ix = malloc((nv ? nv : 1) * sizeof(*ix));
  uint32_t i;
  if (ix == NULL)
    return NULL;
  for (i = 0; i < nv; i++) {
    const uint8_t *p = s->vals[v0 + i].p;
    ix[i].h = val_hash(&p, p + s->vals[v0 + i].n, 0);
    ix[i].i = v0 + i;
  }
  qsort(ix, nv, sizeof(*ix), by_vhash);
  return ix;
}

/* Is v among vals[v0 .. v0+nv)? Through their hash index ix when there
 * is one (n log n for two enums, where pairwise was n^2: a 100000-value
 * enum took minutes on each reload). */
static int in_vals(const struct sl_schema *s, uint32_t v0, uint32_t nv,
                   const struct vhash *ix, const struct span *v) {
  const uint8_t *p = v->p;
  uint64_t h;
  uint32_t i, lo = 0, hi = nv;
  if (ix == NULL) {
    for (i = 0; i < nv; i++)
      if (equal(v->p, v->p + v->n, &s->vals[v0 + i]))
        return 1;
    return 0;
  }
  h = val_hash(&p, v->p + v->n, 0);
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (ix[mid].h < h)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (i = lo; i < nv && ix[i].h == h; i++)
    if (equal(v->p, v->p + v->n, &s->vals[ix[i].i]))
      return 1;
  return 0;
}

static void cmp_values(struct cmp *c, const struct node *a,
                       const struct node *b) {
  char t[256], u[256];
  uint32_t i;
  if ((a->flags & F_ENUM) && (b->flags & F_ENUM)) {
    struct vhash *ia = hash_vals(c->a, a->enum0, a->nenum);
    struct vhash *ib = hash_vals(c->b, b->enum0, b->nenum);
    for (i = 0; i < a->nenum; i++)
      if (!in_vals(c->b, b->enum0, b->nenum, ib, &c->a->vals[a->enum0 + i])) {
        value_text(t, sizeof(t), &c->a->vals[a->enum0 + i]);
        say(c, 1, "enum value %s removed", t);
      }
    for (i = 0; i < b->nenum; i++)
      if (!in_vals(c->a, a->enum0, a->nenum, ia, &c->b->vals[b->enum0 + i])) {
        value_text(t, sizeof(t), &c->b->vals[b->enum0 + i]);
        say(c, 0, "enum value %s added", t);
      }
    free(ia);
    free(ib);
  } else if (b->flags & F_ENUM) {
    say(c, 1, "enum added");
  } else if (a->flags & F_ENUM) {
    say(c, 0, "enum removed");
  }
  if ((a->flags & F_CONST) && (b->flags & F_CONST)) {
    const struct span *va = &c->a->vals[a->konst], *vb = &c->b->vals[b->konst];
    if (!equal(va->p, va->p + va->n, vb)) {
      value_text(t, sizeof(t), va);
      value_text(u, sizeof(u), vb);
      say(c, 1, "const changed from %s to %s", t, u);
    }
  } else if (b->flags & F_CONST) {
    say(c, 1, "const added");
  } else if (a->flags & F_CONST) {
    say(c, 0, "const removed");
  }
}

static void cmp_branches(struct cmp *c, const char *kw, uint32_t a0,
                         uint32_t na, uint32_t b0, uint32_t nb) {
  uint32_t i;
  for (i = 0; i < na && i < nb; i++)
    cmp_sub(c, c->a->kids[a0 + i], c->b->kids[b0 + i], kw, NULL, 0, i);
  for (; i < na; i++) /* dropping the keyword altogether widens */
    say(c, nb > 0, "%s branch %u removed", kw, i);
  for (; i < nb; i++)
    say(c, nb > 0 && na == 0, "%s branch %u added", kw, i);
}

static void cmp_refs(struct cmp *c, const struct node *a,
                     const struct node *b) {
  const char *ra = (const char *)c->a->strs.data + a->refname;
  const char *rb = (const char *)c->b->strs.data + b->refname;
  if (a->ref >= 0 && b->ref >= 0 && strcmp(ra, rb) != 0)
    say(c, 1, "$ref changed from \"%s\" to \"%s\"", ra, rb);
  else if (a->ref < 0 && b->ref >= 0)
    say(c, 1, "$ref \"%s\" added", rb);
  else if (a->ref >= 0 && b->ref < 0)
    say(c, 0, "$ref \"%s\" removed", ra);
}

static void cmp_node(struct cmp *c, uint32_t oa, uint32_t ob) {
  const struct node *a = &c->a->nodes[oa], *b = &c->b->nodes[ob];
  unsigned ta = a->types ? a->types : T_ALL, tb = b->types ? b->types : T_ALL;
  char x[128], y[128];
  if (++c->depth > 2 * SL_SCHEMA_MAX_DEPTH)
    goto done;
  if ((a->flags & F_FALSE) != (b->flags & F_FALSE)) {
    say(c, !!(b->flags & F_FALSE), "schema %s", b->flags & F_FALSE
        ? "changed to false (no value fits)" : "changed from false");
    goto done; /* from false nothing narrows (no reader saw a value); to
                  false, that one change says it all */
  }
  if (ta != tb) {
    type_text(x, sizeof(x), ta, "/");
    type_text(y, sizeof(y), tb, "/");
    say(c, (ta & ~tb) != 0, "type %s from %s to %s",
        (ta & ~tb) ? "narrowed" : "widened", x, y);
  }
  cmp_num_bound(c, "minimum", a, b, 0);
  cmp_num_bound(c, "maximum", a, b, 1);
  cmp_bound(c, "minLength", !!(a->flags & F_MINLEN), a->minlen,
            !!(b->flags & F_MINLEN), b->minlen, 1);
  cmp_bound(c, "maxLength", !!(a->flags & F_MAXLEN), a->maxlen,
            !!(b->flags & F_MAXLEN), b->maxlen, 0);
  cmp_bound(c, "minItems", !!(a->flags & F_MINITEMS), a->minitems,
            !!(b->flags & F_MINITEMS), b->minitems, 1);
  cmp_bound(c, "maxItems", !!(a->flags & F_MAXITEMS), a->maxitems,
            !!(b->flags & F_MAXITEMS), b->maxitems, 0);
  if (b->re >= 0 && (a->re < 0 || strcmp((const char *)c->a->strs.data + a->pat,
                                         (const char *)c->b->strs.data + b->pat)))
    say(c, 1, "pattern \"%s\" %s", (const char *)c->b->strs.data + b->pat,
        a->re < 0 ? "added" : "replaces the old one");
  else if (a->re >= 0 && b->re < 0)
    say(c, 0, "pattern removed");
  cmp_values(c, a, b);
  cmp_props(c, a, b);
  cmp_addl(c, a, b);
  if (a->items >= 0 && b->items >= 0)
    cmp_sub(c, (uint32_t)a->items, (uint32_t)b->items, "items", NULL, 0, -1);
  else if (a->items != b->items)
    say(c, b->items >= 0, "items schema %s", b->items >= 0 ? "added"
                                                           : "removed");
  cmp_branches(c, "anyOf", a->any0, a->nany, b->any0, b->nany);
  cmp_branches(c, "oneOf", a->one0, a->none, b->one0, b->none);
  cmp_refs(c, a, b);
done:
  c->depth--;
}

int sl_schema_compare(const struct sl_schema *older,
                      const struct sl_schema *newer,
                      void (*report)(void *data, int breaking,
                                     const char *path, const char *what),
                      void *data) {
  struct cmp c;
  uint32_t i;
  int32_t d;
  memset(&c, 0, sizeof(c));
  c.a = older;
  c.b = newer;
  c.report = report;
  c.data = data;
  cmp_node(&c, 0, 0);
  for (i = 0; i < older->ndefs; i++) {
    const struct def *da = &older->defs[i];
    d = find_def(newer, da->name, da->len);
    if (d >= 0 && da->node >= 0 && newer->defs[d].node >= 0) {
      cmp_sub(&c, (uint32_t)da->node, (uint32_t)newer->defs[d].node, "$defs",
              da->name, da->len, -1);
    } else if (d < 0) {
      c.plen = path_key(c.path, 0, sizeof(c.path), "$defs", 5);
      c.plen = path_key(c.path, c.plen, sizeof(c.path), da->name, da->len);
      say(&c, 0, "definition removed");
      c.plen = 0;
      c.path[0] = '\0';
    }
  }
  return c.breaking;
}
