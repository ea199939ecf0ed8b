/* json.c - JSON to msgpack with yajl; see json.h.
 * Containers are written with a map32/array32 header whose count is
 * patched when the container closes (msgpack wants counts first, JSON gives
 * them last); the result is then valid msgpack though not always the
 * smallest encoding. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "codec.h"
#include "utf8.h"

#define MAX_DEPTH SL_CODEC_MAX_DEPTH
/* A msgpack map with a key that is not a string is three JSON levels,
 * {"$map":[[k,v]]}; the msgpack depth is checked once markers are gone. */
#define JSON_MAX_DEPTH (3 * MAX_DEPTH + 1)

struct frame {
  size_t header; /* offset of the 5-byte header in out */
  uint32_t count;
  int is_map;
  int batch;       /* the split top-level array: writes no bytes */
};

struct ctx {
  struct sl_buf *out;
  struct frame stack[JSON_MAX_DEPTH + 1];
  int depth;
  int failed;
  int marked;      /* the current item has a map that may be a marker */
  int deep;        /* ... or is nested deeper than MAX_DEPTH in JSON */
  char why[128];
  /* several values (sl_json_items_to_msgpack); cb == NULL: one value */
  sl_json_item_cb cb;
  void *cb_data;
  struct sl_json_error *err;
  int cb_rc;       /* what cb returned when it stopped the parse */
  int split;       /* a top-level array's elements are the items */
  int item_depth;  /* 1 inside a split top-level array, else 0 */
  size_t item_start, item_line, items;
  size_t line;     /* 1-based line being parsed */
};

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62; /* and base64url */
  if (c == '/' || c == '_') return 63;
  return -1;
}

/* ---- markers ------------------------------------------------------------
 * sl_codec_to_json writes what JSON has no type for as a one-key object:
 * {"$bin":"<base64>"}, {"$float":"nan"|"inf"|"-inf"}, {"$float32":n},
 * {"$ext":[type,"<base64>"]}, {"$map":[[k,v],...]}. The parse writes such
 * an object as a plain map and notes it; once the item is complete it is
 * rewritten here with the typed values. An object of that shape whose
 * value does not fit (bad base64, a "$map" that is not a list of pairs)
 * stays a plain map. */

/* Base64 text (padding optional) to bytes in tmp: 0, 1 on a bad character
 * (so no marker), or SL_ENOMEM. */
static int b64_decode(const char *s, size_t n, struct sl_buf *tmp) {
  uint32_t acc = 0;
  int bits = 0, v;
  size_t i;
  for (i = 0; i < n && s[i] != '='; i++) {
    if ((v = b64val((unsigned char)s[i])) < 0)
      return 1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (sl_buf_putc(tmp, (uint8_t)(acc >> bits)) != 0)
        return SL_ENOMEM;
    }
  }
  return 0;
}

/* "nan", "inf", "-inf" as a double; -1 for anything else. */
static int special_float(struct sl_str s, double *v) {
  if (s.len == 3 && memcmp(s.p, "nan", 3) == 0)
    *v = __builtin_nan("");
  else if (s.len == 3 && memcmp(s.p, "inf", 3) == 0)
    *v = __builtin_inf();
  else if (s.len == 4 && memcmp(s.p, "-inf", 4) == 0)
    *v = -__builtin_inf();
  else
    return -1;
  return 0;
}

static int unmark(const uint8_t *p, size_t len, size_t *pos,
                  struct sl_buf *out, int depth);

/* The one-key map whose key is at p[k]: write its typed value to out and
 * set *pos after the map. Returns 0, 1 when it is no marker after all
 * (out unchanged), or a negative code. */
static int unmark_one(const uint8_t *p, size_t len, size_t k, size_t *pos,
                      struct sl_buf *out, int depth) {
  struct sl_str key, str;
  struct sl_buf tmp;
  size_t used, v, at;
  uint32_t n, i, two;
  double d, t;
  int r;

  if (sl_codec_read_str(p + k, len - k, &key, &used) != 0 ||
      !sl_codec_json_marker(key.p, key.len))
    return 1;
  v = k + used;
  if (key.len == 4 && memcmp(key.p, "$map", 4) == 0) {
    /* a list of [key, value] pairs; anything else leaves the map plain
     * (the caller drops what was written here) */
    if (sl_codec_read_array(p + v, len - v, &n, &used) != 0)
      return 1;
    if ((r = sl_codec_put_map(out, n)) != 0)
      return r;
    *pos = v + used;
    for (i = 0; i < n; i++) {
      if (sl_codec_read_array(p + *pos, len - *pos, &two, &used) != 0 ||
          two != 2)
        return 1;
      *pos += used;
      if ((r = unmark(p, len, pos, out, depth + 1)) != 0 ||
          (r = unmark(p, len, pos, out, depth + 1)) != 0)
        return r;
    }
    return 0;
  }
  if (key.len == 4 && memcmp(key.p, "$ext", 4) == 0) {
    if (sl_codec_read_array(p + v, len - v, &n, &used) != 0 || n != 2)
      return 1;
    at = v + used;
    if (sl_codec_read_number(p + at, len - at, &t, &used) != 0 ||
        !(t >= -128 && t <= 127) || t != (double)(int)t)
      return 1;
    at += used;
    if (sl_codec_read_str(p + at, len - at, &str, &used) != 0)
      return 1;
    sl_buf_init(&tmp);
    r = b64_decode(str.p, str.len, &tmp);
    if (r == 0)
      r = sl_codec_put_ext(out, (int8_t)t, tmp.data, tmp.len);
    sl_buf_close(&tmp);
    *pos = at + used;
    return r;
  }
  if (key.len == 8) { /* $float32: a number, or nan/inf/-inf */
    if (sl_codec_read_number(p + v, len - v, &d, &used) != 0 &&
        (sl_codec_read_str(p + v, len - v, &str, &used) != 0 ||
         special_float(str, &d) != 0))
      return 1;
    *pos = v + used;
    return sl_codec_put_float(out, (float)d);
  }
  if (sl_codec_read_str(p + v, len - v, &str, &used) != 0)
    return 1;
  *pos = v + used;
  if (key.len == 6) { /* $float */
    if (special_float(str, &d) != 0)
      return 1;
    return sl_codec_put_double(out, d);
  }
  sl_buf_init(&tmp); /* $bin */
  r = b64_decode(str.p, str.len, &tmp);
  if (r == 0)
    r = sl_codec_put_bin(out, tmp.data, tmp.len);
  sl_buf_close(&tmp);
  return r;
}

/* Copy the value at p[*pos] to out with its markers replaced. */
static int unmark(const uint8_t *p, size_t len, size_t *pos,
                  struct sl_buf *out, int depth) {
  size_t at = *pos, used, mark;
  uint64_t i, n;
  uint32_t count;
  int r, ismap;

  if (depth > JSON_MAX_DEPTH)
    return SL_EPROTO;
  ismap = sl_codec_read_map(p + at, len - at, &count, &used) == 0;
  if (ismap || sl_codec_read_array(p + at, len - at, &count, &used) == 0) {
    if (ismap && count == 1) {
      mark = out->len;
      r = unmark_one(p, len, at + used, pos, out, depth);
      if (r <= 0)
        return r;
      out->len = mark;
    }
    if (sl_buf_append(out, p + at, used) != 0)
      return SL_ENOMEM;
    *pos = at + used;
    n = ismap ? 2 * (uint64_t)count : count;
    for (i = 0; i < n; i++)
      if ((r = unmark(p, len, pos, out, depth + 1)) != 0)
        return r;
    return 0;
  }
  if (sl_codec_skip(p + at, len - at, len - at, &used, NULL) != 0)
    return SL_EPROTO;
  *pos = at + used;
  return sl_buf_append(out, p + at, used);
}

/* Rewrite the item that just ended, out[item_start..], without markers. */
static int unmark_item(struct ctx *c) {
  struct sl_buf tmp;
  size_t pos = 0;
  int r;

  c->marked = 0;
  sl_buf_init(&tmp);
  r = unmark(c->out->data + c->item_start, c->out->len - c->item_start, &pos,
             &tmp, 0);
  if (r == 0) {
    c->out->len = c->item_start;
    r = sl_buf_append(c->out, tmp.data, tmp.len);
  }
  sl_buf_close(&tmp);
  if (r != 0)
    snprintf(c->why, sizeof(c->why), "out of memory");
  return r;
}

/* ---- the parse ---------------------------------------------------------- */

static void value_added(struct ctx *c) {
  if (c->depth > 0 && !c->stack[c->depth - 1].is_map)
    c->stack[c->depth - 1].count++;
}

/* A value starts: count it in its container and, at item level, note where
 * the item's bytes begin. */
static void begin_value(struct ctx *c) {
  value_added(c);
  if (c->depth == c->item_depth) {
    c->item_start = c->out->len;
    c->item_line = c->line;
  }
}

/* A value ended; at item level replace its markers and hand the item to
 * the callback. Returns the yajl verdict (0 stops the parse). */
static int end_value(struct ctx *c) {
  int rc;
  if (c->depth != c->item_depth)
    return 1;
  if (c->marked && unmark_item(c) != 0)
    return 0;
  if (c->deep) {
    size_t used;
    c->deep = 0;
    if (sl_codec_skip(c->out->data + c->item_start,
                      c->out->len - c->item_start, SIZE_MAX, &used,
                      NULL) != 0) {
      snprintf(c->why, sizeof(c->why), "nesting deeper than %d", MAX_DEPTH);
      return 0;
    }
  }
  if (c->cb == NULL)
    return 1;
  rc = c->cb(c->cb_data, c->item_start, c->out->len - c->item_start,
             c->items, c->item_line, c->err);
  if (rc != 0) {
    c->cb_rc = rc;
    return 0;
  }
  c->items++;
  return 1;
}

/* A put into out failed: the parse stops with a reason that says so (not
 * yajl's "client cancelled parse"), so the caller answers "out of memory",
 * not "invalid JSON" to a body that is fine. Returns 0 for yajl. */
static int no_memory(struct ctx *c) {
  snprintf(c->why, sizeof(c->why), "out of memory");
  return 0;
}

static int on_null(void *p) {
  struct ctx *c = p;
  begin_value(c);
  return sl_codec_put_nil(c->out) == 0 ? end_value(c) : no_memory(c);
}

static int on_boolean(void *p, int v) {
  struct ctx *c = p;
  begin_value(c);
  return sl_codec_put_bool(c->out, v) == 0 ? end_value(c) : no_memory(c);
}

/* RFC 8259 sets no length on a number. An integer stays exact as int64 or
 * uint64 and is refused beyond them; any other number becomes the nearest
 * float64 and is refused when it is beyond a float64's range. */
static int on_number(void *p, const char *s, size_t n) {
  struct ctx *c = p;
  char small[64], *buf = small, *end;
  int integral = 1, rc = 0;
  double d;
  size_t i;

  if (n >= sizeof(small) && (buf = malloc(n + 1)) == NULL)
    return no_memory(c);
  memcpy(buf, s, n);
  buf[n] = '\0';
  for (i = 0; i < n; i++)
    if (buf[i] == '.' || buf[i] == 'e' || buf[i] == 'E')
      integral = 0;
  begin_value(c);
  errno = 0;
  if (integral && buf[0] == '-') {
    long long v = strtoll(buf, &end, 10);
    if (errno == 0)
      rc = sl_codec_put_int(c->out, v) == 0 ? end_value(c) : no_memory(c);
    else
      snprintf(c->why, sizeof(c->why),
               "integer below -9223372036854775808 (int64)");
  } else if (integral) {
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno == 0)
      rc = sl_codec_put_uint(c->out, v) == 0 ? end_value(c) : no_memory(c);
    else
      snprintf(c->why, sizeof(c->why),
               "integer above 18446744073709551615 (uint64)");
  } else {
    d = strtod(buf, &end);
    if (isinf(d))
      snprintf(c->why, sizeof(c->why), "number beyond the range of float64");
    else
      rc = sl_codec_put_double(c->out, d) == 0 ? end_value(c) : no_memory(c);
  }
  if (buf != small)
    free(buf);
  return rc;
}

/* yajl's own check lets overlong forms and surrogates through: strings
 * are checked here instead (yajl_dont_validate_strings), strictly. */
static int utf8_ok(struct ctx *c, const unsigned char *s, size_t n) {
  if (sl_utf8_prefix(s, n) == n)
    return 1;
  snprintf(c->why, sizeof(c->why), "invalid UTF-8 in a string");
  return 0;
}

static int on_string(void *p, const unsigned char *s, size_t n) {
  struct ctx *c = p;
  if (!utf8_ok(c, s, n))
    return 0;
  begin_value(c);
  if (sl_codec_put_str(c->out, (const char *)s, n) != 0)
    return no_memory(c);
  return end_value(c);
}

static int open_container(struct ctx *c, int is_map) {
  struct frame *f;
  if (c->depth >= JSON_MAX_DEPTH) {
    snprintf(c->why, sizeof(c->why), "nesting deeper than %d", MAX_DEPTH);
    return 0;
  }
  if (c->depth >= MAX_DEPTH + c->item_depth)
    c->deep = 1;
  if (c->split && c->depth == 0 && !is_map) {
    /* the batch array itself: no bytes, its elements are the items */
    f = &c->stack[c->depth++];
    memset(f, 0, sizeof(*f));
    f->batch = 1;
    c->item_depth = 1;
    return 1;
  }
  begin_value(c);
  f = &c->stack[c->depth++];
  f->header = c->out->len;
  f->count = 0;
  f->is_map = is_map;
  f->batch = 0;
  if (sl_buf_append(c->out, is_map ? "\xdf\0\0\0\0" : "\xdd\0\0\0\0", 5) != 0)
    return no_memory(c);
  return 1;
}

static int on_start_map(void *p) { return open_container(p, 1); }
static int on_start_array(void *p) { return open_container(p, 0); }

static int on_map_key(void *p, const unsigned char *s, size_t n) {
  struct ctx *c = p;
  struct frame *f = &c->stack[c->depth - 1];
  if (!utf8_ok(c, s, n))
    return 0;
  if (f->count == 0 && n > 0 && s[0] == '$' &&
      sl_codec_json_marker((const char *)s, n))
    c->marked = 1;
  f->count++;
  return sl_codec_put_str(c->out, (const char *)s, n) == 0 ? 1 : no_memory(c);
}

/* The count is known now: write it in the smallest header, moving the
 * elements down over the bytes the 5-byte placeholder no longer needs. */
static int close_container(struct ctx *c) {
  struct frame *f = &c->stack[--c->depth];
  if (f->batch)
    return 1; /* the split batch array ends */
  sl_codec_patch_header(c->out, f->header, f->is_map, f->count);
  return end_value(c);
}

static int on_end_map(void *p) { return close_container(p); }
static int on_end_array(void *p) { return close_container(p); }

static const yajl_callbacks callbacks = {
    on_null,      on_boolean,   NULL,       NULL,        on_number,
    on_string,    on_start_map, on_map_key, on_end_map,  on_start_array,
    on_end_array};

/* yajl takes form feed and vertical tab for white space; RFC 8259 does
 * not, and inside a string they must be escaped. Returns the offset of the
 * first such byte in p[0..n), or n. */
static size_t not_space(const char *p, size_t n) {
  const char *f = memchr(p, '\f', n), *v = memchr(p, '\v', n);
  if (f == NULL && v == NULL)
    return n;
  if (f == NULL || (v != NULL && v < f))
    f = v;
  return (size_t)(f - p);
}

#define NOT_SPACE_MSG "form feed or vertical tab outside a string"

/* ---- surrogates -----------------------------------------------------------
 * yajl decodes a \uD800-\uDFFF escape that is not half of a pair into "?"
 * and drops the character after it, or into bytes that are not UTF-8.
 * Before yajl sees the text, such escapes are rewritten: a pair into the
 * UTF-8 of its code point, a lone half into U+FFFD, both as raw bytes
 * (valid inside a JSON string). Only a text with such an escape is copied;
 * byte offsets in errors after one then count the rewritten text. */

static long hex4(const char *p) {
  long v = 0;
  int i, c;
  for (i = 0; i < 4; i++) {
    c = (unsigned char)p[i];
    if (c >= '0' && c <= '9') c -= '0';
    else if (c >= 'a' && c <= 'f') c -= 'a' - 10;
    else if (c >= 'A' && c <= 'F') c -= 'A' - 10;
    else return -1;
    v = v << 4 | c;
  }
  return v;
}

/* The surrogate escape at p[i] ("\uXXXX", in range), or -1. */
static long surrogate_at(const char *p, size_t n, size_t i) {
  long v;
  if (n - i < 6 || p[i] != '\\' || p[i + 1] != 'u')
    return -1;
  v = hex4(p + i + 2);
  return v >= 0xd800 && v <= 0xdfff ? v : -1;
}

/* Sets *copy (to free) when p has a surrogate escape; 0 or SL_ENOMEM. */
static int unsurrogate(const char *p, size_t n, char **copy, size_t *cn) {
  const char *q;
  size_t i = 0, from = 0, o = 0, at;
  long hi, lo, cp;
  char *d = NULL;

  *copy = NULL;
  while ((q = memchr(p + i, '\\', n - i)) != NULL) {
    at = (size_t)(q - p);
    if ((hi = surrogate_at(p, n, at)) < 0) {
      i = at + 2 > n ? n : at + 2; /* an escape pair: its 2nd byte is taken */
      continue;
    }
    if (d == NULL && (d = malloc(n)) == NULL) /* 6 bytes become <= 4 */
      return SL_ENOMEM;
    memcpy(d + o, p + from, at - from);
    o += at - from;
    lo = hi <= 0xdbff ? surrogate_at(p, n, at + 6) : -1;
    if (lo >= 0xdc00) {
      cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
      d[o++] = (char)(0xf0 | (cp >> 18));
      d[o++] = (char)(0x80 | ((cp >> 12) & 0x3f));
      d[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
      d[o++] = (char)(0x80 | (cp & 0x3f));
      i = from = at + 12;
    } else {
      memcpy(d + o, "\xef\xbf\xbd", 3);
      o += 3;
      i = from = at + 6;
    }
  }
  if (d != NULL) {
    memcpy(d + o, p + from, n - from);
    *copy = d;
    *cn = o + n - from;
  }
  return 0;
}

/* ---- one value, in steps -------------------------------------------------- */

struct sl_json_reader {
  struct ctx c;
  yajl_handle h;
  char *copy; /* the text with its surrogate escapes rewritten */
};

struct sl_json_reader *sl_json_reader_new(void) {
  struct sl_json_reader *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->h = yajl_alloc(&callbacks, NULL, &r->c);
  if (r->h == NULL) {
    free(r);
    return NULL;
  }
  yajl_config(r->h, yajl_dont_validate_strings, 1);
  return r;
}

void sl_json_reader_free(struct sl_json_reader *r) {
  if (r == NULL)
    return;
  yajl_free(r->h);
  free(r->copy);
  free(r);
}

/* yajl's message, first line only. */
static void yajl_message(struct sl_json_reader *r, char *msg, size_t n) {
  unsigned char *e = yajl_get_error(r->h, 0, NULL, 0);
  char *nl;
  snprintf(msg, n, "%s", e ? (const char *)e : "parse error");
  if (e)
    yajl_free_error(r->h, e);
  if ((nl = strchr(msg, '\n')) != NULL)
    *nl = '\0';
}

int sl_json_reader_run(struct sl_json_reader *r, const char *p, size_t n,
                       struct sl_buf *out, void (*step)(void *), void *data,
                       struct sl_json_error *err) {
  size_t start = out->len, pos = 0, seg, bad;
  yajl_status st = yajl_status_ok;
  int rc;

  memset(err, 0, sizeof(*err));
  if (p == NULL)
    p = ""; /* an empty body: keep pointer arithmetic defined */
  r->c.out = out;
  if ((rc = unsurrogate(p, n, &r->copy, &n)) != 0)
    return rc;
  if (r->copy)
    p = r->copy;
  while (pos < n) {
    seg = n - pos < SL_JSON_STEP ? n - pos : SL_JSON_STEP;
    bad = not_space(p + pos, seg);
    st = yajl_parse(r->h, (const unsigned char *)p + pos, bad);
    if (st != yajl_status_ok)
      break;
    if (bad < seg) {
      err->offset = pos + bad;
      snprintf(err->msg, sizeof(err->msg), NOT_SPACE_MSG);
      goto fail;
    }
    pos += seg;
    if (step && pos < n)
      step(data); /* may not return; sl_json_reader_free cleans up */
  }
  if (st == yajl_status_ok) {
    st = yajl_complete_parse(r->h);
    if (st == yajl_status_ok)
      return 0;
    err->offset = n; /* the text ended too soon */
  } else {
    err->offset = pos + yajl_get_bytes_consumed(r->h);
  }
  if (r->c.why[0])
    snprintf(err->msg, sizeof(err->msg), "%s", r->c.why);
  else
    yajl_message(r, err->msg, sizeof(err->msg));
fail:
  out->len = start;
  return strcmp(err->msg, "out of memory") == 0 ? SL_ENOMEM : SL_EPROTO;
}

int sl_json_to_msgpack(const char *p, size_t n, struct sl_buf *out, char *err,
                       size_t errlen) {
  struct sl_json_reader *r = sl_json_reader_new();
  struct sl_json_error e;
  int rc;

  if (r == NULL)
    return SL_ENOMEM;
  rc = sl_json_reader_run(r, p, n, out, NULL, NULL, &e);
  if (rc == SL_EPROTO)
    snprintf(err, errlen, "byte %zu: %s", e.offset, e.msg);
  sl_json_reader_free(r);
  return rc;
}

/* The message of a failed parse, without yajl's trailing newline. */
static void parse_error(yajl_handle h, const struct ctx *c, char *msg,
                        size_t n) {
  unsigned char *e;
  char *nl;
  if (c->why[0]) {
    snprintf(msg, n, "%s", c->why);
    return;
  }
  e = yajl_get_error(h, 0, NULL, 0);
  snprintf(msg, n, "invalid JSON: %s", e ? (const char *)e : "parse error");
  if (e)
    yajl_free_error(h, e);
  if ((nl = strchr(msg, '\n')) != NULL)
    *nl = '\0';
  if (strncmp(msg, "invalid JSON: parse error: ", 27) == 0)
    memmove(msg + 14, msg + 27, strlen(msg + 27) + 1);
}

static int blank(const char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
      return 0;
  return 1;
}

int sl_json_items_to_msgpack(const char *p, size_t n, int flags,
                             struct sl_buf *out, sl_json_item_cb cb,
                             void *data, struct sl_json_error *err) {
  struct ctx *c = calloc(1, sizeof(*c));
  size_t start = out->len, pos = 0, seg, bad;
  char *copy = NULL;
  const char *nl;
  yajl_handle h;
  yajl_status st = yajl_status_ok;
  int rc = 0;

  memset(err, 0, sizeof(*err));
  if (c == NULL)
    return SL_ENOMEM;
  if (p == NULL)
    p = ""; /* an empty body: keep pointer arithmetic defined */
  if (unsurrogate(p, n, &copy, &n) != 0) {
    free(c);
    return SL_ENOMEM;
  }
  if (copy)
    p = copy;
  c->out = out;
  c->cb = cb;
  c->cb_data = data;
  c->err = err;
  c->split = (flags & SL_JSON_SPLIT_ARRAY) != 0;
  c->line = 1;
  h = yajl_alloc(&callbacks, NULL, c);
  if (h == NULL) {
    free(copy);
    free(c);
    return SL_ENOMEM;
  }
  yajl_config(h, yajl_dont_validate_strings, 1);
  if (flags & SL_JSON_MANY)
    yajl_config(h, yajl_allow_multiple_values, 1);
  /* one line per call, so every callback knows its line */
  while (pos < n && st == yajl_status_ok) {
    nl = memchr(p + pos, '\n', n - pos);
    seg = nl ? (size_t)(nl - (p + pos)) + 1 : n - pos;
    if ((bad = not_space(p + pos, seg)) < seg) {
      st = yajl_parse(h, (const unsigned char *)p + pos, bad);
      if (st == yajl_status_ok) {
        err->index = c->items;
        err->line = c->line;
        err->offset = pos + bad;
        snprintf(err->msg, sizeof(err->msg), "invalid JSON: " NOT_SPACE_MSG);
        rc = SL_EPROTO;
        break;
      }
      continue;
    }
    st = yajl_parse(h, (const unsigned char *)p + pos, seg);
    if (st == yajl_status_ok) {
      pos += seg;
      if (nl)
        c->line++;
    }
  }
  if (rc != 0) {
    /* a byte that is not white space stopped the parse */
  } else if (st == yajl_status_ok && (flags & SL_JSON_MANY) &&
             c->items == 0 && blank(p, n)) {
    /* no value at all is an empty batch here; yajl calls it an error */
  } else if (st == yajl_status_ok) {
    if (n == 0 && !(flags & SL_JSON_MANY)) {
      snprintf(err->msg, sizeof(err->msg), "empty body: expected a JSON value");
      rc = SL_EPROTO;
    } else {
      st = yajl_complete_parse(h);
      /* an error at the very end belongs to the last line, not after it */
      if (st != yajl_status_ok && n > 0 && p[n - 1] == '\n' && c->line > 1)
        c->line--;
    }
  }
  if (rc == 0 && st != yajl_status_ok) {
    rc = c->cb_rc                           ? c->cb_rc
         : strcmp(c->why, "out of memory") == 0 ? SL_ENOMEM
                                                 : SL_EPROTO;
    if (c->cb_rc == 0) {
      err->index = c->items;
      err->line = c->line;
      err->offset = pos + yajl_get_bytes_consumed(h);
      parse_error(h, c, err->msg, sizeof(err->msg));
    }
  }
  if (rc != 0)
    out->len = start;
  yajl_free(h);
  free(copy);
  free(c);
  return rc;
}
