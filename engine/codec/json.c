/* json.c - JSON to msgpack with yajl; see json.h.
 * Containers are written with a map32/array32 header whose count is
 * patched when the container closes (msgpack wants counts first, JSON gives
 * them last); the result is then valid msgpack though not always the
 * smallest encoding. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "codec.h"

#define MAX_DEPTH SL_CODEC_MAX_DEPTH

struct frame {
  size_t header; /* offset of the 5-byte header in out */
  uint32_t count;
  int is_map;
  /* marker detection: a map whose only key is "$bin" or "$float" */
  int marker;      /* 1: $bin, 2: $float, -1: not a marker */
  size_t key_start;
  int batch;       /* the split top-level array: writes no bytes */
};

struct ctx {
  struct sl_buf *out;
  struct frame stack[MAX_DEPTH + 1];
  int depth;
  int failed;
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
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

static void value_added(struct ctx *c) {
  if (c->depth > 0 && !c->stack[c->depth - 1].is_map)
    c->stack[c->depth - 1].count++;
}

/* A value starts: count it in its container and, at item level, note where
 * the item's bytes begin. */
static void begin_value(struct ctx *c) {
  value_added(c);
  if (c->cb && c->depth == c->item_depth) {
    c->item_start = c->out->len;
    c->item_line = c->line;
  }
}

/* A value ended; at item level hand the item to the callback. Returns the
 * yajl verdict (0 stops the parse). */
static int end_value(struct ctx *c) {
  int rc;
  if (c->cb == NULL || c->depth != c->item_depth)
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

static int on_null(void *p) {
  struct ctx *c = p;
  begin_value(c);
  return sl_codec_put_nil(c->out) == 0 && end_value(c);
}

static int on_boolean(void *p, int v) {
  struct ctx *c = p;
  begin_value(c);
  return sl_codec_put_bool(c->out, v) == 0 && end_value(c);
}

static int on_number(void *p, const char *s, size_t n) {
  struct ctx *c = p;
  char buf[64], *end;
  int integral = 1;
  size_t i;

  if (n >= sizeof(buf)) {
    snprintf(c->why, sizeof(c->why), "number too long");
    return 0;
  }
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
      return sl_codec_put_int(c->out, v) == 0 && end_value(c);
  } else if (integral) {
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno == 0)
      return sl_codec_put_uint(c->out, v) == 0 && end_value(c);
  }
  return sl_codec_put_double(c->out, strtod(buf, &end)) == 0 && end_value(c);
}

/* A string value inside a marker map replaces the map. */
static int finish_marker(struct ctx *c, const unsigned char *s, size_t n) {
  struct frame *f = &c->stack[c->depth - 1];
  if (f->marker == 2) {
    double v;
    if (n == 3 && memcmp(s, "nan", 3) == 0) v = __builtin_nan("");
    else if (n == 3 && memcmp(s, "inf", 3) == 0) v = __builtin_inf();
    else if (n == 4 && memcmp(s, "-inf", 4) == 0) v = -__builtin_inf();
    else return -1;
    c->out->len = f->key_start;
    return sl_codec_put_double(c->out, v) == 0 ? 1 : 0;
  }
  if (f->marker == 1) {
    size_t i, o = 0, len = f->key_start;
    uint32_t acc = 0;
    int bits = 0;
    struct sl_buf tmp;
    sl_buf_init(&tmp);
    for (i = 0; i < n; i++) {
      int v;
      if (s[i] == '=')
        break;
      v = b64val(s[i]);
      if (v < 0) {
        sl_buf_close(&tmp);
        return -1;
      }
      acc = acc << 6 | (uint32_t)v;
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        if (sl_buf_putc(&tmp, (uint8_t)(acc >> bits)) != 0) {
          sl_buf_close(&tmp);
          return 0;
        }
        o++;
      }
    }
    c->out->len = len;
    i = sl_codec_put_bin(c->out, tmp.data, tmp.len) == 0;
    sl_buf_close(&tmp);
    (void)o;
    return i ? 1 : 0;
  }
  return -1;
}

static int on_string(void *p, const unsigned char *s, size_t n) {
  struct ctx *c = p;
  if (c->depth > 0 && c->stack[c->depth - 1].marker > 0) {
    int rc = finish_marker(c, s, n);
    if (rc >= 0) {
      c->stack[c->depth - 1].marker = 3; /* done: the map is gone */
      return rc;
    }
    c->stack[c->depth - 1].marker = -1;
  }
  begin_value(c);
  return sl_codec_put_str(c->out, (const char *)s, n) == 0 && end_value(c);
}

static int open_container(struct ctx *c, int is_map) {
  struct frame *f;
  if (c->depth >= MAX_DEPTH) {
    snprintf(c->why, sizeof(c->why), "nesting deeper than %d", MAX_DEPTH);
    return 0;
  }
  if (c->split && c->depth == 0 && !is_map) {
    /* the batch array itself: no bytes, its elements are the items */
    f = &c->stack[c->depth++];
    memset(f, 0, sizeof(*f));
    f->marker = -1;
    f->batch = 1;
    c->item_depth = 1;
    return 1;
  }
  begin_value(c);
  f = &c->stack[c->depth++];
  f->header = c->out->len;
  f->count = 0;
  f->is_map = is_map;
  f->marker = is_map ? 0 : -1;
  f->key_start = f->header;
  f->batch = 0;
  return sl_buf_append(c->out, is_map ? "\xdf\0\0\0\0" : "\xdd\0\0\0\0", 5) ==
         0;
}

static int on_start_map(void *p) { return open_container(p, 1); }
static int on_start_array(void *p) { return open_container(p, 0); }

static int on_map_key(void *p, const unsigned char *s, size_t n) {
  struct ctx *c = p;
  struct frame *f = &c->stack[c->depth - 1];
  if (f->marker == 3) {
    snprintf(c->why, sizeof(c->why), "a $bin or $float marker has more keys");
    return 0;
  }
  if (f->count == 0 && f->marker == 0) {
    if (n == 4 && memcmp(s, "$bin", 4) == 0)
      f->marker = 1;
    else if (n == 6 && memcmp(s, "$float", 6) == 0)
      f->marker = 2;
    else
      f->marker = -1;
  } else {
    f->marker = -1;
  }
  f->count++;
  return sl_codec_put_str(c->out, (const char *)s, n) == 0;
}

static int close_container(struct ctx *c) {
  struct frame *f = &c->stack[--c->depth];
  uint8_t *h;
  if (f->batch)
    return 1; /* the split batch array ends */
  if (f->marker == 3)
    return end_value(c); /* replaced by its value */
  h = c->out->data + f->header;
  h[1] = (uint8_t)(f->count >> 24);
  h[2] = (uint8_t)(f->count >> 16);
  h[3] = (uint8_t)(f->count >> 8);
  h[4] = (uint8_t)f->count;
  return end_value(c);
}

static int on_end_map(void *p) { return close_container(p); }
static int on_end_array(void *p) { return close_container(p); }

static const yajl_callbacks callbacks = {
    on_null,      on_boolean,   NULL,       NULL,        on_number,
    on_string,    on_start_map, on_map_key, on_end_map,  on_start_array,
    on_end_array};

int sl_json_to_msgpack(const char *p, size_t n, struct sl_buf *out, char *err,
                       size_t errlen) {
  struct ctx *c = calloc(1, sizeof(*c));
  size_t start = out->len;
  yajl_handle h;
  yajl_status st;
  int rc = 0;

  if (c == NULL)
    return SL_ENOMEM;
  c->out = out;
  h = yajl_alloc(&callbacks, NULL, c);
  if (h == NULL) {
    free(c);
    return SL_ENOMEM;
  }
  st = yajl_parse(h, (const unsigned char *)p, n);
  if (st == yajl_status_ok)
    st = yajl_complete_parse(h);
  if (st != yajl_status_ok) {
    size_t at = yajl_get_bytes_consumed(h);
    if (c->why[0]) {
      snprintf(err, errlen, "byte %zu: %s", at, c->why);
    } else {
      unsigned char *e = yajl_get_error(h, 0, (const unsigned char *)p, n);
      char *nl;
      snprintf(err, errlen, "byte %zu: %s", at, (const char *)e);
      if ((nl = strchr(err, '\n')) != NULL)
        *nl = '\0';
      yajl_free_error(h, e);
    }
    out->len = start;
    rc = SL_EPROTO;
  }
  yajl_free(h);
  free(c);
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
  size_t start = out->len, pos = 0, seg;
  const char *nl;
  yajl_handle h;
  yajl_status st = yajl_status_ok;
  int rc = 0;

  memset(err, 0, sizeof(*err));
  if (c == NULL)
    return SL_ENOMEM;
  c->out = out;
  c->cb = cb;
  c->cb_data = data;
  c->err = err;
  c->split = (flags & SL_JSON_SPLIT_ARRAY) != 0;
  c->line = 1;
  h = yajl_alloc(&callbacks, NULL, c);
  if (h == NULL) {
    free(c);
    return SL_ENOMEM;
  }
  if (flags & SL_JSON_MANY)
    yajl_config(h, yajl_allow_multiple_values, 1);
  /* one line per call, so every callback knows its line */
  while (pos < n && st == yajl_status_ok) {
    nl = memchr(p + pos, '\n', n - pos);
    seg = nl ? (size_t)(nl - (p + pos)) + 1 : n - pos;
    st = yajl_parse(h, (const unsigned char *)p + pos, seg);
    if (st == yajl_status_ok) {
      pos += seg;
      if (nl)
        c->line++;
    }
  }
  if (st == yajl_status_ok && (flags & SL_JSON_MANY) && c->items == 0 &&
      blank(p, n)) {
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
    rc = c->cb_rc ? c->cb_rc : SL_EPROTO;
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
  free(c);
  return rc;
}
