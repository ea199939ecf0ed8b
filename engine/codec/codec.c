/* codec.c - msgpack on the wire: the bounds-checked walker, event parsing,
 * canonical event encoding, JSON rendering and the small writers.
 * Readers never allocate and never trust a length before checking it against
 * the bytes left; writers reserve once, then msgpack-c's packer fills.
 * Owns no state. */
#include "codec.h"
#include "utf8.h"

#include <msgpack/pack.h>

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- byte helpers ---------------------------------------------------- */

static inline uint16_t be16(const uint8_t *p) {
  return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static inline uint64_t be64(const uint8_t *p) {
  return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* errors are rare; keep their formatting out of the hot loops */
#if defined(__GNUC__)
__attribute__((cold, noinline, format(printf, 3, 4)))
#endif
static void
seterr(struct sl_codec_error *err, size_t offset, const char *fmt, ...) {
  va_list ap;

  if (err == NULL)
    return;
  err->offset = offset;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
}

/* The family of a type byte, as a user reads it in a message. */
static const char *type_name(uint8_t c) {
  if (c <= 0x7f || c >= 0xe0)
    return "integer";
  if (c <= 0x8f)
    return "map";
  if (c <= 0x9f)
    return "array";
  if (c <= 0xbf)
    return "string";
  switch (c) {
  case 0xc0:
    return "nil";
  case 0xc2:
  case 0xc3:
    return "boolean";
  case 0xc4:
  case 0xc5:
  case 0xc6:
    return "binary";
  case 0xc7:
  case 0xc8:
  case 0xc9:
  case 0xd4:
  case 0xd5:
  case 0xd6:
  case 0xd7:
  case 0xd8:
    return "extension";
  case 0xca:
  case 0xcb:
    return "float";
  case 0xcc:
  case 0xcd:
  case 0xce:
  case 0xcf:
  case 0xd0:
  case 0xd1:
  case 0xd2:
  case 0xd3:
    return "integer";
  case 0xd9:
  case 0xda:
  case 0xdb:
    return "string";
  case 0xdc:
  case 0xdd:
    return "array";
  case 0xde:
  case 0xdf:
    return "map";
  default:
    return "invalid byte 0xc1";
  }
}

/* ---- skip -------------------------------------------------------------- */

/* Reading is this walker's job, not msgpack-c's unpacker: msgpack_unpack
 * and msgpack_unpacker size their allocations from the declared count or
 * length before checking it against the bytes that are there, with no
 * limit of their own (the 5 bytes df ff ff ff ff, a map32 of 2^32-1 pairs,
 * make msgpack-c 4.0 try to allocate 256 GiB), and they copy every value
 * into a zone where the engine wants spans into the bytes it already
 * holds. Here every count is checked against the bytes left first and
 * nothing is allocated or copied. */

/* One loop over type bytes, no recursion. cur counts the objects still to
 * read at the current depth; left[] holds the counts of the containers
 * around it (spilled on entry, so the common path touches no memory but
 * the input). owed is the sum of all those counts. Every object takes at
 * least one byte, so pos + owed is a lower bound on the final size:
 * checking it against max_bytes before each step rejects a huge declared
 * count or length at once, even when its bytes have not arrived. The
 * invariant pos + owed <= max_bytes holds at the top of the loop. */
/* The whole size of each type byte's value when the byte alone says it
 * (at most 32: a fixstr of 31), else 0. */
#define R8(x) x, x, x, x, x, x, x, x
#define R32(x) R8(x), R8(x), R8(x), R8(x)
static const uint8_t fixed_size[256] = {
    R32(1), R32(1), R32(1), R32(1),         /* 0x00-0x7f positive fixint */
    R32(0),                                 /* 0x80-0x9f fixmap, fixarray */
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, /* fixstr */
    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
    1, 0, 1, 1,                             /* nil, (c1), false, true */
    0, 0, 0, 0, 0, 0,                       /* bin 8-32, ext 8-32 */
    5, 9,                                   /* float 32, 64 */
    2, 3, 5, 9,                             /* uint 8-64 */
    2, 3, 5, 9,                             /* int 8-64 */
    3, 4, 6, 10, 18,                        /* fixext 1-16 */
    0, 0, 0, 0, 0, 0, 0,                    /* str 8-32, array/map 16-32 */
    R32(1),                                 /* 0xe0-0xff negative fixint */
};
#undef R32
#undef R8

/* sl_codec_skip over count objects back to back (the inside of a
 * container whose header another walk read), with at most max_depth
 * containers open (an object inside others nests that much less deep). */
static inline int skip_depth(const uint8_t *p, size_t len, size_t max_bytes,
                             size_t *used, struct sl_codec_error *err,
                             int max_depth, uint64_t count,
                             struct sl_codec_walk *w) {
  uint64_t left[SL_CODEC_MAX_DEPTH];
  uint64_t cur = count, owed = count, total, n, room;
  size_t pos = 0, hdr, width;
  int depth = 0, ismap;
  uint8_t c;

  if (w && w->pos && w->pos <= len && w->depth <= max_depth) {
    /* go on where the last walk of these bytes ran out of them */
    pos = w->pos;
    cur = w->cur;
    owed = w->owed;
    depth = w->depth;
    memcpy(left, w->left, (size_t)depth * sizeof(left[0]));
    w->pos = 0;
    if (pos + owed > max_bytes) /* the invariant, for a smaller max */
      goto too_big;
  } else {
    if (w)
      w->pos = 0; /* not a walk of these bytes: start over */
    if (max_bytes < owed) /* each object takes a byte at least */
      goto too_big;
  }
  for (;;) {
    /* far from the end of the bytes and from max_bytes, a value whose
     * type byte gives its size (most of an event) fits both: only that
     * byte is looked at.
     * Below lim, len - pos > 32 and room > 32 >= its size (owed only
     * falls on this path, so lim, taken once, stays on the safe side). */
    {
      size_t m = max_bytes - (size_t)owed; /* >= pos: the invariant */
      size_t lim = len > 32 ? len - 32 : 0;
      if (m < 31)
        lim = 0;
      else if (m - 31 < lim)
        lim = m - 31;
      uint64_t from = cur; /* owed falls by what cur fell, once */
      while (pos < lim) {
        uint8_t size = fixed_size[p[pos]];
        if (size == 0)
          break; /* a container, a blob or 0xc1: the checked path */
        pos += size;
        if (--cur == 0)
          break;
      }
      owed -= from - cur;
      if (cur == 0)
        goto pop;
    }
    if (sl_unlikely(pos >= len))
      goto again;
    c = p[pos];
    room = (uint64_t)(max_bytes - pos) - (owed - 1); /* >= 1, see above */

    if (c <= 0x7f || c >= 0xe0) { /* fixint: the common case */
      total = 1;
      goto scalar;
    }
    if (c >= 0xa0 && c <= 0xbf) { /* fixstr */
      total = 1 + (uint64_t)(c & 0x1f);
      goto scalar;
    }
    if (c <= 0x9f) { /* fixmap, fixarray */
      ismap = c <= 0x8f;
      n = c & 0x0f;
      hdr = 1;
      width = 0;
      goto container;
    }

    switch (c) {
    case 0xc0: /* nil */
    case 0xc2: /* false */
    case 0xc3: /* true */
      total = 1;
      goto scalar;
    case 0xcc:
    case 0xd0:
      total = 2;
      goto scalar;
    case 0xcd:
    case 0xd1:
    case 0xd4: /* fixext 1: type byte + 1 */
      total = 3;
      goto scalar;
    case 0xd5:
      total = 4;
      goto scalar;
    case 0xca:
    case 0xce:
    case 0xd2:
      total = 5;
      goto scalar;
    case 0xd6:
      total = 6;
      goto scalar;
    case 0xcb:
    case 0xcf:
    case 0xd3:
      total = 9;
      goto scalar;
    case 0xd7:
      total = 10;
      goto scalar;
    case 0xd8:
      total = 18;
      goto scalar;
    case 0xc4: /* bin 8 */
    case 0xd9: /* str 8 */
      width = 1;
      hdr = 2;
      goto blob;
    case 0xc5:
    case 0xda:
      width = 2;
      hdr = 3;
      goto blob;
    case 0xc6:
    case 0xdb:
      width = 4;
      hdr = 5;
      goto blob;
    case 0xc7: /* ext 8: length, then the ext type */
      width = 1;
      hdr = 3;
      goto blob;
    case 0xc8:
      width = 2;
      hdr = 4;
      goto blob;
    case 0xc9:
      width = 4;
      hdr = 6;
      goto blob;
    case 0xdc:
    case 0xde:
      ismap = c == 0xde;
      width = 2;
      hdr = 3;
      goto container;
    case 0xdd:
    case 0xdf:
      ismap = c == 0xdf;
      width = 4;
      hdr = 5;
      goto container;
    default: /* 0xc1, never used */
      seterr(err, pos, "invalid type byte 0x%02x", c);
      return SL_EPROTO;
    }

  blob:
    if (hdr > room)
      goto too_big;
    if (1 + width > len - pos) /* the length decides; the ext type can wait */
      goto again;
    n = width == 1 ? p[pos + 1] : width == 2 ? be16(p + pos + 1)
                                             : be32(p + pos + 1);
    total = hdr + n; /* now sized like any scalar */

  scalar:
    if (total > room)
      goto too_big;
    if (total > len - pos)
      goto again;
    pos += (size_t)total;
    owed--;
    if (--cur != 0)
      continue;
    goto pop;

  container:
    if (depth == max_depth) {
      seterr(err, pos, "nesting deeper than %d", SL_CODEC_MAX_DEPTH);
      return SL_EPROTO;
    }
    if (width) {
      if (hdr > room)
        goto too_big;
      if (hdr > len - pos)
        goto again;
      n = width == 2 ? be16(p + pos + 1) : be32(p + pos + 1);
    }
    if (ismap)
      n *= 2; /* keys and values */
    if (n > room - hdr)
      goto too_big;
    pos += hdr;
    owed = owed - 1 + n;
    cur--;
    if (n) {
      left[depth++] = cur;
      cur = n;
      continue;
    }
    if (cur != 0)
      continue;

  pop:
    do {
      if (depth == 0) {
        *used = pos;
        return 0;
      }
      cur = left[--depth];
    } while (cur == 0);
  }

again:
  /* every read that ends inside an event comes here: no formatting */
  if (w && pos > 0) { /* each goto again leaves the state of a loop top */
    w->pos = pos;
    w->cur = cur;
    w->owed = owed;
    w->depth = depth;
    memcpy(w->left, left, (size_t)depth * sizeof(left[0]));
  }
  if (err != NULL) {
    static const char msg[] = "incomplete: more bytes needed";
    err->offset = len;
    memcpy(err->msg, msg, sizeof(msg));
  }
  return SL_EAGAIN;
too_big:
  seterr(err, pos, "object larger than %zu bytes", max_bytes);
  return SL_E2BIG;
}

int sl_codec_skip(const uint8_t *p, size_t len, size_t max_bytes, size_t *used,
                  struct sl_codec_error *err) {
  return skip_depth(p, len, max_bytes, used, err, SL_CODEC_MAX_DEPTH, 1, NULL);
}

int sl_codec_skip_walk(const uint8_t *p, size_t len, size_t max_bytes,
                       size_t *used, struct sl_codec_error *err,
                       struct sl_codec_walk *w) {
  return skip_depth(p, len, max_bytes, used, err, SL_CODEC_MAX_DEPTH, 1, w);
}

int sl_codec_skip_payload(const uint8_t *p, size_t len, size_t max_bytes,
                          size_t *used, struct sl_codec_error *err) {
  return skip_depth(p, len, max_bytes, used, err, SL_CODEC_MAX_DEPTH - 1, 1,
                    NULL);
}

/* ---- small readers for validated-or-not bytes -------------------------- */

/* Each reader looks at p[*pos], advances *pos on success and returns 0;
 * returns 1 when the type is another one and -1 when the bytes end early.
 * *pos < len is the caller's job. */

static int read_str(const uint8_t *p, size_t len, size_t *pos,
                    struct sl_str *s) {
  size_t i = *pos, avail = len - i, hdr;
  uint32_t n;
  uint8_t c = p[i];

  if (c >= 0xa0 && c <= 0xbf) {
    hdr = 1;
    n = c & 0x1f;
  } else if (c == 0xd9) {
    if (avail < 2)
      return -1;
    hdr = 2;
    n = p[i + 1];
  } else if (c == 0xda) {
    if (avail < 3)
      return -1;
    hdr = 3;
    n = be16(p + i + 1);
  } else if (c == 0xdb) {
    if (avail < 5)
      return -1;
    hdr = 5;
    n = be32(p + i + 1);
  } else {
    return 1;
  }
  if (n > avail - hdr)
    return -1;
  s->p = (const char *)p + i + hdr;
  s->len = n;
  *pos = i + hdr + n;
  return 0;
}

/* read_str with a fixstr (an event's names, topics, keys, headers) read
 * in place: the event parser calls it for every field. */
static inline int read_str_hot(const uint8_t *p, size_t len, size_t *pos,
                               struct sl_str *s) {
  size_t i = *pos;
  uint8_t c = p[i];
  if (sl_likely((c & 0xe0) == 0xa0)) {
    uint32_t n = c & 0x1f;
    if (n > len - i - 1)
      return -1;
    s->p = (const char *)p + i + 1;
    s->len = n;
    *pos = i + 1 + n;
    return 0;
  }
  return read_str(p, len, pos, s);
}

static int read_map(const uint8_t *p, size_t len, size_t *pos, uint32_t *n) {
  size_t i = *pos;
  uint8_t c = p[i];

  if (c >= 0x80 && c <= 0x8f) {
    *n = c & 0x0f;
    *pos = i + 1;
    return 0;
  }
  if (c == 0xde) {
    if (len - i < 3)
      return -1;
    *n = be16(p + i + 1);
    *pos = i + 3;
    return 0;
  }
  if (c == 0xdf) {
    if (len - i < 5)
      return -1;
    *n = be32(p + i + 1);
    *pos = i + 5;
    return 0;
  }
  return 1;
}

/* Integers as int64; 2 when a uint64 is above INT64_MAX. */
static int read_int(const uint8_t *p, size_t len, size_t *pos, int64_t *v) {
  size_t i = *pos, avail = len - i;
  uint8_t c = p[i];
  uint64_t u;

  if (c <= 0x7f) {
    *v = c;
    *pos = i + 1;
    return 0;
  }
  if (c >= 0xe0) {
    *v = (int8_t)c;
    *pos = i + 1;
    return 0;
  }
  switch (c) {
  case 0xcc:
  case 0xd0:
    if (avail < 2)
      return -1;
    *v = c == 0xcc ? (int64_t)p[i + 1] : (int64_t)(int8_t)p[i + 1];
    *pos = i + 2;
    return 0;
  case 0xcd:
  case 0xd1:
    if (avail < 3)
      return -1;
    *v = c == 0xcd ? (int64_t)be16(p + i + 1)
                   : (int64_t)(int16_t)be16(p + i + 1);
    *pos = i + 3;
    return 0;
  case 0xce:
  case 0xd2:
    if (avail < 5)
      return -1;
    *v = c == 0xce ? (int64_t)be32(p + i + 1)
                   : (int64_t)(int32_t)be32(p + i + 1);
    *pos = i + 5;
    return 0;
  case 0xcf:
  case 0xd3:
    if (avail < 9)
      return -1;
    u = be64(p + i + 1);
    if (c == 0xcf && u > INT64_MAX)
      return 2;
    *v = (int64_t)u; /* two's complement, as for every int64 target */
    *pos = i + 9;
    return 0;
  default:
    return 1;
  }
}

int sl_codec_read_int(const uint8_t *p, size_t len, int64_t *v, size_t *used) {
  size_t pos = 0;
  if (len < 1 || read_int(p, len, &pos, v) != 0)
    return SL_EPROTO;
  *used = pos;
  return 0;
}

int sl_codec_read_bool(const uint8_t *p, size_t len, int *v, size_t *used) {
  if (len < 1 || (p[0] != 0xc2 && p[0] != 0xc3))
    return SL_EPROTO;
  *v = p[0] == 0xc3;
  *used = 1;
  return 0;
}

int sl_codec_read_nil(const uint8_t *p, size_t len, size_t *used) {
  if (len < 1 || p[0] != 0xc0)
    return SL_EPROTO;
  *used = 1;
  return 0;
}

int sl_codec_read_ext(const uint8_t *p, size_t len, int8_t *type,
                      struct sl_str *s, size_t *used) {
  size_t h, n;
  if (len < 2)
    return SL_EPROTO;
  if (p[0] >= 0xd4 && p[0] <= 0xd8) { /* fixext 1, 2, 4, 8, 16 */
    h = 2;
    n = (size_t)1 << (p[0] - 0xd4);
  } else if (p[0] >= 0xc7 && p[0] <= 0xc9) { /* ext 8, 16, 32 */
    h = p[0] == 0xc7 ? 3 : p[0] == 0xc8 ? 4 : 6;
    if (len < h)
      return SL_EPROTO;
    n = h == 3 ? p[1] : h == 4 ? be16(p + 1) : be32(p + 1);
  } else {
    return SL_EPROTO;
  }
  if (n > len - h)
    return SL_EPROTO;
  *type = (int8_t)p[h - 1];
  s->p = (const char *)p + h;
  s->len = (uint32_t)n;
  if (used)
    *used = h + n;
  return 0;
}

/* Advance over one value of any type; strings take a short path. */
static int skip_value(const uint8_t *p, size_t len, size_t *pos) {
  struct sl_str s;
  size_t used;
  int r;

  if (*pos >= len)
    return -1;
  r = read_str(p, len, pos, &s);
  if (r <= 0)
    return r;
  if (sl_codec_skip(p + *pos, len - *pos, len - *pos, &used, NULL) != 0)
    return -1;
  *pos += used;
  return 0;
}

/* ---- event parsing ----------------------------------------------------- */

enum { F_ID, F_TOPIC, F_KEY, F_TIME, F_HEADERS, F_PAYLOAD };

static const char *const field_names[] = {"id",   "topic",   "key",
                                          "time", "headers", "payload"};

static int field_of(struct sl_str k) {
  switch (k.len) {
  case 2:
    return memcmp(k.p, "id", 2) == 0 ? F_ID : -1;
  case 3:
    return memcmp(k.p, "key", 3) == 0 ? F_KEY : -1;
  case 4:
    return memcmp(k.p, "time", 4) == 0 ? F_TIME : -1;
  case 5:
    return memcmp(k.p, "topic", 5) == 0 ? F_TOPIC : -1;
  case 7:
    if (memcmp(k.p, "headers", 7) == 0)
      return F_HEADERS;
    return memcmp(k.p, "payload", 7) == 0 ? F_PAYLOAD : -1;
  default:
    return -1;
  }
}

/* A name from the input, made safe and short enough for a message. */
static const char *printable(char *dst, size_t cap, struct sl_str s) {
  static const char hex[] = "0123456789abcdef";
  size_t i, o = 0;
  uint8_t c;

  for (i = 0; i < s.len; i++) {
    if (o + 8 >= cap) { /* room for "\xNN" and "..." */
      memcpy(dst + o, "...", 3);
      o += 3;
      break;
    }
    c = (uint8_t)s.p[i];
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      dst[o++] = (char)c;
    } else {
      dst[o++] = '\\';
      dst[o++] = 'x';
      dst[o++] = hex[c >> 4];
      dst[o++] = hex[c & 15];
    }
  }
  dst[o] = '\0';
  return dst;
}

static int parse_headers(const uint8_t *p, size_t len, size_t *pos,
                         struct sl_event_view *v, struct sl_codec_error *err) {
  size_t start = *pos, at;
  uint32_t n, i;
  struct sl_str k, s;
  char name[40];
  int r;

  r = read_map(p, len, pos, &n);
  if (r < 0)
    goto truncated;
  if (r > 0) {
    seterr(err, start, "field 'headers': expected map, got %s",
           type_name(p[start]));
    return SL_EPROTO;
  }
  for (i = 0; i < n; i++) {
    at = *pos;
    if (at >= len)
      goto truncated;
    r = read_str_hot(p, len, pos, &k);
    if (r < 0)
      goto truncated;
    if (r > 0) {
      seterr(err, at, "headers: expected string key, got %s",
             type_name(p[at]));
      return SL_EPROTO;
    }
    at = *pos;
    if (at >= len)
      goto truncated;
    r = read_str_hot(p, len, pos, &s);
    if (r < 0)
      goto truncated;
    if (r > 0) {
      seterr(err, at, "headers['%s']: expected string value",
             printable(name, sizeof name, k));
      return SL_EPROTO;
    }
  }
  if (*pos - start > UINT32_MAX) {
    seterr(err, start, "field 'headers': larger than 4 GiB");
    return SL_EPROTO;
  }
  v->headers = p + start;
  v->headers_len = (uint32_t)(*pos - start);
  v->headers_count = n;
  return 0;

truncated:
  seterr(err, len, "truncated event");
  return SL_EPROTO;
}

/* The value of field f at *pos into v. Returns 0, SL_EPROTO (err set) or
 * SL_EAGAIN when the bytes end inside it. */
static int parse_field(const uint8_t *p, size_t len, size_t *pos, int f,
                       int last, struct sl_event_view *v,
                       struct sl_codec_error *err) {
  size_t at = *pos, used;
  struct sl_str *s;
  int r;

  switch (f) {
  case F_ID:
  case F_TOPIC:
  case F_KEY:
    s = f == F_ID ? &v->id : f == F_TOPIC ? &v->topic : &v->key;
    r = read_str_hot(p, len, pos, s);
    if (r < 0)
      return SL_EAGAIN;
    if (r > 0) {
      seterr(err, at, "field '%s': expected string, got %s", field_names[f],
             type_name(p[at]));
      return SL_EPROTO;
    }
    if (f == F_TOPIC && s->len == 0) {
      seterr(err, at, "field 'topic': expected non-empty string");
      return SL_EPROTO;
    }
    return 0;
  case F_TIME:
    r = read_int(p, len, pos, &v->time);
    if (r < 0)
      return SL_EAGAIN;
    if (r == 2) {
      seterr(err, at, "field 'time': integer out of int64 range");
      return SL_EPROTO;
    }
    if (r > 0) {
      seterr(err, at, "field 'time': expected integer, got %s",
             type_name(p[at]));
      return SL_EPROTO;
    }
    v->has_time = 1;
    return 0;
  case F_HEADERS:
    return parse_headers(p, len, pos, v, err);
  default: /* F_PAYLOAD */
    if (last) {
      /* the map's last value, in bytes sl_codec_skip measured: it ends
       * where they end, no need to walk it again */
      used = len - at;
      r = 0;
    } else {
      r = sl_codec_skip(p + at, len - at, len - at, &used, err);
    }
    if (r == SL_EAGAIN || r == SL_E2BIG) /* longer than the event */
      return SL_EAGAIN;
    if (r != 0) {
      if (err != NULL)
        err->offset += at;
      return SL_EPROTO;
    }
    if (used > UINT32_MAX) {
      seterr(err, at, "field 'payload': larger than 4 GiB");
      return SL_EPROTO;
    }
    v->payload = p + at;
    v->payload_len = (uint32_t)used;
    *pos = at + used;
    return 0;
  }
}

/* measured: p[0..len) is one object sl_codec_skip accepted. */
static int parse_event(const uint8_t *p, size_t len, int measured,
                       struct sl_event_view *v, struct sl_codec_error *err) {
  size_t pos = 0, at;
  uint32_t n, i;
  unsigned seen = 0;
  struct sl_str k;
  char name[40];
  int f, r;

  memset(v, 0, sizeof *v);
  if (len == 0)
    goto truncated;
  r = read_map(p, len, &pos, &n);
  if (r < 0)
    goto truncated;
  if (r > 0) {
    seterr(err, 0, "event is not a map (got %s)", type_name(p[0]));
    return SL_EPROTO;
  }

  for (i = 0; i < n; i++) {
    at = pos;
    if (at >= len)
      goto truncated;
    r = read_str_hot(p, len, &pos, &k);
    if (r < 0)
      goto truncated;
    if (r > 0) {
      seterr(err, at, "field name: expected string, got %s", type_name(p[at]));
      return SL_EPROTO;
    }
    f = field_of(k);
    if (f < 0) {
      seterr(err, at, "unknown field '%s'", printable(name, sizeof name, k));
      return SL_EPROTO;
    }
    if (seen & (1u << f)) {
      seterr(err, at, "duplicate field '%s'", field_names[f]);
      return SL_EPROTO;
    }
    seen |= 1u << f;
    if (pos >= len)
      goto truncated;
    r = parse_field(p, len, &pos, f, measured && i + 1 == n, v, err);
    if (r == SL_EAGAIN)
      goto truncated;
    if (r != 0)
      return r;
  }

  if (pos != len) {
    seterr(err, pos, "trailing bytes after event");
    return SL_EPROTO;
  }
  if (!(seen & (1u << F_TOPIC))) {
    seterr(err, 0, "missing field 'topic'");
    return SL_EPROTO;
  }
  return 0;

truncated:
  seterr(err, len, "truncated event");
  return SL_EPROTO;
}

int sl_codec_parse_event(const uint8_t *p, size_t len, struct sl_event_view *v,
                         struct sl_codec_error *err) {
  return parse_event(p, len, 0, v, err);
}

int sl_codec_parse_measured(const uint8_t *p, size_t len,
                            struct sl_event_view *v,
                            struct sl_codec_error *err) {
  return parse_event(p, len, 1, v, err);
}

/* The payload inside the event's map (one level less to nest), as
 * sl_codec_skip measures it there. A payload map or array of up to 15
 * has its header read here: the walk starts inside it, once. */
static int skip_payload(const uint8_t *p, size_t len, size_t max,
                        size_t *used) {
  uint64_t n = p[0] & 0x0f;
  int r;
  if ((p[0] & 0xe0) != 0x80 || n == 0 || max == 0)
    return skip_depth(p, len, max, used, NULL, SL_CODEC_MAX_DEPTH - 1, 1,
                      NULL);
  r = skip_depth(p + 1, len - 1, max - 1, used, NULL, SL_CODEC_MAX_DEPTH - 2,
                 p[0] <= 0x8f ? n * 2 : n, NULL);
  if (r == 0)
    *used += 1;
  return r;
}

/* A str field's value (read_str's forms) into *s; 0 or non-zero. */
static inline int stream_str(const uint8_t *p, size_t len, size_t *pos,
                             struct sl_str *s) {
  return *pos < len ? read_str_hot(p, len, pos, s) : -1;
}

/* Only what parse_event accepts, in the forms producers write (a fixmap
 * of fixstr names); anything else is the plain way's to answer. Every
 * read is bounded by len, and the end by max: the bytes up to *used are
 * then one object sl_codec_skip accepts, and parse_measured reads it as
 * here (the same readers, the payload measured by the same walk one
 * level down). */
int sl_codec_parse_stream(const uint8_t *p, size_t len, size_t max,
                          size_t *used, struct sl_event_view *v) {
  size_t pos = 1, n, klen, vlen = 0;
  unsigned seen = 0, f;
  const uint8_t *k;
  struct sl_codec_error err;
  int r;

  if (len == 0 || (p[0] & 0xf0) != 0x80)
    return SL_EAGAIN;
  n = p[0] & 0x0f;
  memset(v, 0, sizeof *v);
  while (n-- > 0) {
    if (pos >= len || (p[pos] & 0xe0) != 0xa0)
      return SL_EAGAIN;
    klen = p[pos] & 0x1f;
    k = p + pos + 1;
    pos += 1 + klen;
    if (pos >= len) /* the name, and a byte of its value */
      return SL_EAGAIN;
    switch (klen) {
    case 2:
      f = F_ID;
      r = memcmp(k, "id", 2) || stream_str(p, len, &pos, &v->id);
      break;
    case 3:
      f = F_KEY;
      r = memcmp(k, "key", 3) || stream_str(p, len, &pos, &v->key);
      break;
    case 4:
      f = F_TIME;
      r = memcmp(k, "time", 4) || read_int(p, len, &pos, &v->time);
      v->has_time = 1;
      break;
    case 5:
      f = F_TOPIC;
      r = memcmp(k, "topic", 5) || stream_str(p, len, &pos, &v->topic) ||
          v->topic.len == 0;
      break;
    case 7:
      if (memcmp(k, "payload", 7) == 0) {
        f = F_PAYLOAD;
        r = skip_payload(p + pos, len - pos, max > pos ? max - pos : 0,
                         &vlen) ||
            vlen > UINT32_MAX;
        v->payload = p + pos;
        v->payload_len = (uint32_t)vlen;
        pos += vlen;
      } else {
        f = F_HEADERS;
        r = memcmp(k, "headers", 7) || parse_headers(p, len, &pos, v, &err);
      }
      break;
    default:
      return SL_EAGAIN;
    }
    if (r != 0 || (seen & (1u << f)))
      return SL_EAGAIN;
    seen |= 1u << f;
  }
  if (!(seen & (1u << F_TOPIC)) || pos > max)
    return SL_EAGAIN;
  *used = pos;
  return 0;
}

/* Malformed bytes give SL_EPROTO rather than a wrong span. */
int sl_codec_map_find(const uint8_t *map, size_t len, const char *key,
                      size_t keylen, const uint8_t **val, size_t *vallen) {
  size_t pos = 0, at;
  uint32_t n, i;
  struct sl_str k;
  int r, match;

  if (len == 0 || read_map(map, len, &pos, &n) != 0)
    return SL_EPROTO;
  for (i = 0; i < n; i++) {
    if (pos >= len)
      return SL_EPROTO;
    r = read_str(map, len, &pos, &k);
    if (r < 0)
      return SL_EPROTO;
    match = r == 0 && k.len == keylen &&
            (keylen == 0 || memcmp(k.p, key, keylen) == 0);
    if (r > 0 && skip_value(map, len, &pos) != 0)
      return SL_EPROTO;
    at = pos;
    if (skip_value(map, len, &pos) != 0)
      return SL_EPROTO;
    if (match) {
      *val = map + at;
      *vallen = pos - at;
      return 0;
    }
  }
  return SL_ENOENT;
}

/* ---- writers -----------------------------------------------------------
 * Every msgpack value the engine writes is packed here, by msgpack-c's
 * packer (msgpack/pack.h: header-only static inline functions, so nothing
 * from libmsgpackc is linked in) into the caller's sl_buf. msgpack-c 4.0
 * picks the smallest encoding for every type, as the spec asks: fixint,
 * uint or int by value; fixstr then str 8/16/32 (str 8 is used: only the
 * separate v4raw calls skip it); bin 8/16/32; fixext 1/2/4/8/16 then ext
 * 8/16/32; fix/16/32 containers. tests/c/test_codec.c checks the bytes at
 * every width edge. Each writer reserves the value's largest size first,
 * then the packer writes into that room through a cursor (on_fill: no
 * capacity check per piece), so a failed call leaves b as it was. Lengths
 * over UINT32_MAX are refused before packing: msgpack-c would keep only
 * their low 32 bits. flatten inlines the packer's calls, so the cursor
 * stays in a register and constant-size pieces become plain stores: packed
 * through a checking callback instead, the event writer took 472
 * instructions per typical event against 355 by hand; this way 338
 * (tests/bench/codec.sh). */

/* Returns 0, SL_ENOMEM. */
#define RESERVE(b, n)                      \
  do {                                     \
    if (sl_buf_reserve((b), (n)) != 0)     \
      return SL_ENOMEM;                    \
  } while (0)

#if defined(__GNUC__)
#define FLAT __attribute__((flatten))
#else
#define FLAT
#endif

/* The room a writer reserved, and where the packer writes next. */
struct fill {
  uint8_t *d;
};

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int
on_fill(void *data, const char *p, size_t n) {
  struct fill *f = data;

  if (n) /* a zero-length body may come with p == NULL */
    memcpy(f->d, p, n);
  f->d += n;
  return 0;
}

FLAT
int sl_codec_write_event(struct sl_buf *out, struct sl_str id,
                         struct sl_str topic, struct sl_str key, int64_t time,
                         const uint8_t *headers, size_t headers_len,
                         const uint8_t *payload, size_t payload_len,
                         uint32_t offs[3]) {
  size_t total = 1 + 6 + 5 + topic.len + 5 + 9; /* headers at their largest */
  unsigned fields = 2; /* topic and time are always written */
  struct fill f;
  uint8_t *start;
  msgpack_packer pk = {&f, on_fill};

  offs[0] = offs[1] = offs[2] = 0;
  if (id.p != NULL) {
    fields++;
    total += 3 + 5 + id.len;
  }
  if (key.p != NULL) {
    fields++;
    total += 4 + 5 + key.len;
  }
  if (headers != NULL) {
    fields++;
    total += 8 + headers_len;
  }
  if (payload != NULL) {
    fields++;
    total += 8 + payload_len;
  }
  RESERVE(out, total);

  start = f.d = out->data + out->len;
  msgpack_pack_map(&pk, fields); /* on_fill cannot fail: not checked */
  if (id.p != NULL) {
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_str(&pk, id.len);
    offs[2] = (uint32_t)(f.d - start);
    msgpack_pack_str_body(&pk, id.p, id.len);
  }
  msgpack_pack_str_with_body(&pk, "topic", 5);
  msgpack_pack_str(&pk, topic.len);
  offs[0] = (uint32_t)(f.d - start);
  msgpack_pack_str_body(&pk, topic.p, topic.len);
  if (key.p != NULL) {
    msgpack_pack_str_with_body(&pk, "key", 3);
    msgpack_pack_str(&pk, key.len);
    offs[1] = (uint32_t)(f.d - start);
    msgpack_pack_str_body(&pk, key.p, key.len);
  }
  msgpack_pack_str_with_body(&pk, "time", 4);
  msgpack_pack_int64(&pk, time);
  /* headers and payload are msgpack already: copied as they are */
  if (headers != NULL) {
    msgpack_pack_str_with_body(&pk, "headers", 7);
    on_fill(&f, (const char *)headers, headers_len);
  }
  if (payload != NULL) {
    msgpack_pack_str_with_body(&pk, "payload", 7);
    on_fill(&f, (const char *)payload, payload_len);
  }
  out->len = (size_t)(f.d - out->data);
  return 0;
}

FLAT
size_t sl_codec_pack_int(uint8_t *d, int64_t v) {
  struct fill f = {d};
  msgpack_packer pk = {&f, on_fill};
  msgpack_pack_int64(&pk, v);
  return (size_t)(f.d - d);
}

FLAT
size_t sl_codec_pack_strhdr(uint8_t *d, size_t n) {
  struct fill f = {d};
  msgpack_packer pk = {&f, on_fill};
  msgpack_pack_str(&pk, n);
  return (size_t)(f.d - d);
}

FLAT
size_t sl_codec_pack_maphdr(uint8_t *d, uint32_t n) {
  struct fill f = {d};
  msgpack_packer pk = {&f, on_fill};
  msgpack_pack_map(&pk, n);
  return (size_t)(f.d - d);
}

FLAT
size_t sl_codec_pack_uint(uint8_t *d, uint64_t v) {
  struct fill f = {d};
  msgpack_packer pk = {&f, on_fill};
  msgpack_pack_uint64(&pk, v);
  return (size_t)(f.d - d);
}

FLAT
size_t sl_codec_pack_double(uint8_t *d, double v) {
  struct fill f = {d};
  msgpack_packer pk = {&f, on_fill};
  msgpack_pack_double(&pk, v);
  return (size_t)(f.d - d);
}

/* Each writer below: room for the value at its largest, then the packer
 * over that room, then the buffer's length set past what it wrote. */
#define PACK(b, max, call)                          \
  do {                                              \
    struct fill f;                                  \
    msgpack_packer pk = {&f, on_fill};              \
    RESERVE((b), (max));                            \
    f.d = (b)->data + (b)->len;                     \
    call;                                           \
    (b)->len = (size_t)(f.d - (b)->data);           \
    return 0;                                       \
  } while (0)

FLAT
int sl_codec_put_nil(struct sl_buf *b) {
  PACK(b, 1, msgpack_pack_nil(&pk));
}

FLAT
int sl_codec_put_bool(struct sl_buf *b, int v) {
  PACK(b, 1, v ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
}

FLAT
int sl_codec_put_int(struct sl_buf *b, int64_t v) {
  PACK(b, 9, msgpack_pack_int64(&pk, v));
}

FLAT
int sl_codec_put_uint(struct sl_buf *b, uint64_t v) {
  PACK(b, 9, msgpack_pack_uint64(&pk, v));
}

FLAT
int sl_codec_put_double(struct sl_buf *b, double v) {
  PACK(b, 9, msgpack_pack_double(&pk, v));
}

FLAT
int sl_codec_put_float(struct sl_buf *b, float v) {
  PACK(b, 5, msgpack_pack_float(&pk, v));
}

/* Longer than msgpack can say: SL_E2BIG. */
FLAT
int sl_codec_put_str(struct sl_buf *b, const char *s, size_t n) {
  if (n > UINT32_MAX)
    return SL_E2BIG;
  PACK(b, 5 + n, msgpack_pack_str_with_body(&pk, s, n));
}

FLAT
int sl_codec_put_bin(struct sl_buf *b, const void *s, size_t n) {
  if (n > UINT32_MAX)
    return SL_E2BIG;
  PACK(b, 5 + n, msgpack_pack_bin_with_body(&pk, s, n));
}

/* fixext for 1, 2, 4, 8 and 16 bytes, else ext 8/16/32. */
FLAT
int sl_codec_put_ext(struct sl_buf *b, int8_t type, const void *s, size_t n) {
  if (n > UINT32_MAX)
    return SL_E2BIG;
  PACK(b, 6 + n, msgpack_pack_ext_with_body(&pk, s, n, type));
}

FLAT
int sl_codec_put_array(struct sl_buf *b, uint32_t n) {
  PACK(b, 5, msgpack_pack_array(&pk, n));
}

FLAT
int sl_codec_put_map(struct sl_buf *b, uint32_t n) {
  PACK(b, 5, msgpack_pack_map(&pk, n));
}

void sl_codec_patch_header(struct sl_buf *b, size_t at, int is_map,
                           uint32_t n) {
  struct fill f = {b->data + at};
  msgpack_packer pk = {&f, on_fill};
  size_t hl, body = b->len - at - 5;

  if (is_map)
    msgpack_pack_map(&pk, n);
  else
    msgpack_pack_array(&pk, n);
  hl = (size_t)(f.d - (b->data + at)); /* 1, 3 or 5 */
  if (hl < 5) {
    memmove(f.d, b->data + at + 5, body);
    b->len -= 5 - hl;
  }
}

/* ---- JSON -------------------------------------------------------------- */

#define APPEND(out, lit)                                      \
  do {                                                        \
    if (sl_buf_append((out), (lit), sizeof(lit) - 1) != 0)    \
      return SL_ENOMEM;                                       \
  } while (0)

int sl_codec_json_str(struct sl_buf *out, const void *str, size_t n) {
  const uint8_t *s = str;
  static const char hex[] = "0123456789abcdef";
  size_t i = 0, run, seq, bad;
  char esc[6];
  uint8_t c;

  RESERVE(out, n + 2);
  out->data[out->len++] = '"';
  while (i < n) {
    run = i;
    for (;;) { /* a run of bytes that go out as they are */
      if (i >= n)
        break;
      c = s[i];
      if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
        i++;
        continue;
      }
      if (c < 0x80)
        break;
      seq = sl_utf8_seq(s + i, n - i, &bad);
      if (seq == 0)
        break;
      i += seq;
    }
    if (sl_buf_append(out, s + run, i - run) != 0)
      return SL_ENOMEM;
    if (i >= n)
      break;
    c = s[i];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      if (sl_buf_append(out, esc, 2) != 0)
        return SL_ENOMEM;
      i++;
    } else if (c < 0x20) {
      memcpy(esc, "\\u00", 4);
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      if (sl_buf_append(out, esc, 6) != 0)
        return SL_ENOMEM;
      i++;
    } else {
      sl_utf8_seq(s + i, n - i, &bad);
      APPEND(out, "\\ufffd");
      i += bad;
    }
  }
  return sl_buf_putc(out, '"');
}

static int json_base64(struct sl_buf *out, const uint8_t *s, size_t n) {
  static const char b64[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i;
  uint32_t v;
  uint8_t *d;

  RESERVE(out, (n + 2) / 3 * 4 + 2);
  d = out->data + out->len;
  *d++ = '"';
  for (i = 0; i + 2 < n; i += 3) {
    v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    *d++ = (uint8_t)b64[v >> 18];
    *d++ = (uint8_t)b64[(v >> 12) & 63];
    *d++ = (uint8_t)b64[(v >> 6) & 63];
    *d++ = (uint8_t)b64[v & 63];
  }
  if (i < n) {
    v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
    *d++ = (uint8_t)b64[v >> 18];
    *d++ = (uint8_t)b64[(v >> 12) & 63];
    *d++ = i + 1 < n ? (uint8_t)b64[(v >> 6) & 63] : '=';
    *d++ = '=';
  }
  *d++ = '"';
  out->len = (size_t)(d - out->data);
  return 0;
}

/* A number as JSON. A float64 is plain ("%.17g"); a float32 keeps its
 * width as {"$float32":1.5} (nine digits are enough for strtod and a cast
 * back to float to give the same bits). NaN and infinities, which JSON has
 * no words for, go in the marker as strings. */
static int json_float(struct sl_buf *out, double v, int is32) {
  const char *marker = is32 ? "{\"$float32\":" : "{\"$float\":";
  char tmp[48];
  int n, i, rc;

  if (isnan(v) || isinf(v)) {
    const char *word = isnan(v) ? "\"nan\"}" : v > 0 ? "\"inf\"}" : "\"-inf\"}";
    if (sl_buf_append(out, marker, strlen(marker)) != 0)
      return SL_ENOMEM;
    return sl_buf_append(out, word, strlen(word));
  }
  n = snprintf(tmp, sizeof tmp - 2, is32 ? "%.9g" : "%.17g", v);
  for (i = 0; i < n; i++)
    if (tmp[i] == ',') /* a decimal comma from some LC_NUMERIC */
      tmp[i] = '.';
  if (strspn(tmp, "-0123456789") == (size_t)n) { /* keep a float a float */
    tmp[n++] = '.';
    tmp[n++] = '0';
  }
  if (is32 && sl_buf_append(out, marker, strlen(marker)) != 0)
    return SL_ENOMEM;
  if ((rc = sl_buf_append(out, tmp, (size_t)n)) != 0 || !is32)
    return rc;
  return sl_buf_putc(out, '}');
}

static int json_value(const uint8_t *p, size_t len, size_t *pos,
                      struct sl_buf *out, int depth);

/* The body of a str, bin or ext whose header is hdr bytes at p[*pos]. */
static int read_blob(const uint8_t *p, size_t len, size_t *pos, size_t hdr,
                     uint64_t n, const uint8_t **body) {
  if (hdr > len - *pos || n > len - *pos - hdr)
    return SL_EPROTO;
  *body = p + *pos + hdr;
  *pos += hdr + (size_t)n;
  return 0;
}

int sl_codec_json_marker(const char *s, size_t n) {
  return n >= 4 && s[0] == '$' &&
         ((n == 4 && (memcmp(s, "$bin", 4) == 0 || memcmp(s, "$ext", 4) == 0 ||
                      memcmp(s, "$map", 4) == 0)) ||
          (n == 6 && memcmp(s, "$float", 6) == 0) ||
          (n == 8 && memcmp(s, "$float32", 8) == 0));
}

/* Keys are all strings: render as an object, else as {"$map":[[k,v],..]}.
 * A one-key map whose key is a marker name goes the $map way too, so the
 * reader does not take the user's data for a marker. */
static int json_map(const uint8_t *p, size_t len, size_t *pos, uint64_t n,
                    struct sl_buf *out, int depth) {
  size_t scan = *pos;
  uint64_t i;
  int plain = 1, r;

  if (n == 1) {
    struct sl_str k;
    if (sl_codec_read_str(p + scan, len - scan, &k, NULL) == 0 &&
        sl_codec_json_marker(k.p, k.len))
      plain = 0;
  }
  for (i = 0; i < n && plain; i++) {
    if (scan >= len)
      return SL_EPROTO;
    if (!((p[scan] >= 0xa0 && p[scan] <= 0xbf) ||
          (p[scan] >= 0xd9 && p[scan] <= 0xdb)))
      plain = 0;
    else if (skip_value(p, len, &scan) != 0 || skip_value(p, len, &scan) != 0)
      return SL_EPROTO;
  }

  if (plain)
    r = sl_buf_putc(out, '{');
  else
    r = sl_buf_append(out, "{\"$map\":[", 9);
  if (r != 0)
    return r;
  for (i = 0; i < n; i++) {
    if (i > 0 && sl_buf_putc(out, ',') != 0)
      return SL_ENOMEM;
    if (!plain && sl_buf_putc(out, '[') != 0)
      return SL_ENOMEM;
    r = json_value(p, len, pos, out, depth);
    if (r != 0)
      return r;
    if (sl_buf_putc(out, plain ? ':' : ',') != 0)
      return SL_ENOMEM;
    r = json_value(p, len, pos, out, depth);
    if (r != 0)
      return r;
    if (!plain && sl_buf_putc(out, ']') != 0)
      return SL_ENOMEM;
  }
  if (plain)
    return sl_buf_putc(out, '}');
  APPEND(out, "]}");
  return 0;
}

/* depth counts the containers around p[*pos]. */
static int json_value(const uint8_t *p, size_t len, size_t *pos,
                      struct sl_buf *out, int depth) {
  const uint8_t *body;
  uint64_t n, i;
  size_t at = *pos, hdr;
  int64_t iv;
  uint32_t f32;
  float f;
  double d;
  int r, ismap;
  uint8_t c;

  if (at >= len)
    return SL_EPROTO;
  c = p[at];

  if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)) {
    r = read_int(p, len, pos, &iv);
    if (r == 2) { /* above INT64_MAX */
      *pos = at + 9;
      return sl_buf_printf(out, "%" PRIu64, be64(p + at + 1));
    }
    if (r != 0)
      return SL_EPROTO;
    return sl_buf_printf(out, "%" PRId64, iv);
  }
  if (c >= 0x80 && c <= 0x9f) {
    ismap = c <= 0x8f;
    n = c & 0x0f;
    hdr = 1;
    goto container;
  }
  if (c >= 0xa0 && c <= 0xbf) {
    n = c & 0x1f;
    hdr = 1;
    goto str;
  }

  switch (c) {
  case 0xc0:
    *pos = at + 1;
    APPEND(out, "null");
    return 0;
  case 0xc2:
    *pos = at + 1;
    APPEND(out, "false");
    return 0;
  case 0xc3:
    *pos = at + 1;
    APPEND(out, "true");
    return 0;
  case 0xca:
    if (len - at < 5)
      return SL_EPROTO;
    f32 = be32(p + at + 1);
    memcpy(&f, &f32, sizeof f);
    *pos = at + 5;
    return json_float(out, (double)f, 1);
  case 0xcb:
    if (len - at < 9)
      return SL_EPROTO;
    n = be64(p + at + 1);
    memcpy(&d, &n, sizeof d);
    *pos = at + 9;
    return json_float(out, d, 0);
  case 0xd9:
  case 0xc4:
  case 0xc7:
    if (len - at < 2)
      return SL_EPROTO;
    n = p[at + 1];
    hdr = 2;
    break;
  case 0xda:
  case 0xc5:
  case 0xc8:
    if (len - at < 3)
      return SL_EPROTO;
    n = be16(p + at + 1);
    hdr = 3;
    break;
  case 0xdb:
  case 0xc6:
  case 0xc9:
    if (len - at < 5)
      return SL_EPROTO;
    n = be32(p + at + 1);
    hdr = 5;
    break;
  case 0xd4:
  case 0xd5:
  case 0xd6:
  case 0xd7:
  case 0xd8:
    n = (uint64_t)1 << (c - 0xd4); /* fixext 1, 2, 4, 8, 16 */
    hdr = 2;
    goto ext;
  case 0xdc:
  case 0xde:
    if (len - at < 3)
      return SL_EPROTO;
    ismap = c == 0xde;
    n = be16(p + at + 1);
    hdr = 3;
    goto container;
  case 0xdd:
  case 0xdf:
    if (len - at < 5)
      return SL_EPROTO;
    ismap = c == 0xdf;
    n = be32(p + at + 1);
    hdr = 5;
    goto container;
  default:
    return SL_EPROTO;
  }

  if (c >= 0xd9)
    goto str;
  if (c >= 0xc7) {
    hdr++; /* ext 8/16/32: the ext type follows the length */
    goto ext;
  }
  if (read_blob(p, len, pos, hdr, n, &body) != 0)
    return SL_EPROTO;
  APPEND(out, "{\"$bin\":");
  r = json_base64(out, body, (size_t)n);
  if (r != 0)
    return r;
  return sl_buf_putc(out, '}');

ext: /* the ext type is the byte just before the body */
  if (read_blob(p, len, pos, hdr, n, &body) != 0)
    return SL_EPROTO;
  r = sl_buf_printf(out, "{\"$ext\":[%d,", (int)(int8_t)body[-1]);
  if (r != 0)
    return r;
  r = json_base64(out, body, (size_t)n);
  if (r != 0)
    return r;
  APPEND(out, "]}");
  return 0;

str:
  if (read_blob(p, len, pos, hdr, n, &body) != 0)
    return SL_EPROTO;
  return sl_codec_json_str(out, body, (size_t)n);

container:
  if (depth >= SL_CODEC_MAX_DEPTH)
    return SL_EPROTO;
  /* each element takes a byte: a count the bytes cannot hold is a lie */
  if (hdr > len - at || n > len - at - hdr)
    return SL_EPROTO;
  *pos = at + hdr;
  if (ismap)
    return json_map(p, len, pos, n, out, depth + 1);
  if (sl_buf_putc(out, '[') != 0)
    return SL_ENOMEM;
  for (i = 0; i < n; i++) {
    if (i > 0 && sl_buf_putc(out, ',') != 0)
      return SL_ENOMEM;
    r = json_value(p, len, pos, out, depth + 1);
    if (r != 0)
      return r;
  }
  return sl_buf_putc(out, ']');
}

/* On error out is left as it was on entry. Trailing bytes after the value
 * are an error: len is the value's measured size. */
int sl_codec_to_json(const uint8_t *p, size_t len, struct sl_buf *out) {
  size_t start = out->len, pos = 0;
  int r;

  r = json_value(p, len, &pos, out, 0);
  if (r == 0 && pos != len)
    r = SL_EPROTO;
  if (r != 0)
    out->len = start;
  return r;
}

int sl_codec_read_str(const uint8_t *p, size_t len, struct sl_str *s,
                      size_t *used) {
  size_t h, n;
  if (len < 1)
    return SL_EPROTO;
  if ((p[0] & 0xe0) == 0xa0) {
    h = 1;
    n = p[0] & 0x1f;
  } else if (p[0] == 0xd9 && len >= 2) {
    h = 2;
    n = p[1];
  } else if (p[0] == 0xda && len >= 3) {
    h = 3;
    n = (size_t)p[1] << 8 | p[2];
  } else if (p[0] == 0xdb && len >= 5) {
    h = 5;
    n = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
  } else {
    return SL_EPROTO;
  }
  if (n > len - h)
    return SL_EPROTO;
  s->p = (const char *)p + h;
  s->len = (uint32_t)n;
  if (used)
    *used = h + n;
  return 0;
}

int sl_codec_read_map(const uint8_t *p, size_t len, uint32_t *count,
                      size_t *used) {
  if (len >= 1 && (p[0] & 0xf0) == 0x80) {
    *count = p[0] & 0x0f;
    *used = 1;
  } else if (len >= 3 && p[0] == 0xde) {
    *count = (uint32_t)p[1] << 8 | p[2];
    *used = 3;
  } else if (len >= 5 && p[0] == 0xdf) {
    *count = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 |
             (uint32_t)p[3] << 8 | p[4];
    *used = 5;
  } else {
    return SL_EPROTO;
  }
  return 0;
}

int sl_codec_read_array(const uint8_t *p, size_t len, uint32_t *count,
                        size_t *used) {
  if (len >= 1 && (p[0] & 0xf0) == 0x90) {
    *count = p[0] & 0x0f;
    *used = 1;
  } else if (len >= 3 && p[0] == 0xdc) {
    *count = be16(p + 1);
    *used = 3;
  } else if (len >= 5 && p[0] == 0xdd) {
    *count = be32(p + 1);
    *used = 5;
  } else {
    return SL_EPROTO;
  }
  return 0;
}

int sl_codec_read_number(const uint8_t *p, size_t len, double *v,
                         size_t *used) {
  size_t pos = 0;
  int64_t iv;
  uint64_t bits;
  uint32_t b32;
  float f;
  int r;

  if (len < 1)
    return SL_EPROTO;
  if (p[0] == 0xcb || p[0] == 0xca) {
    if (len < (p[0] == 0xcb ? 9u : 5u))
      return SL_EPROTO;
    if (p[0] == 0xcb) {
      bits = be64(p + 1);
      memcpy(v, &bits, sizeof *v);
      *used = 9;
    } else {
      b32 = be32(p + 1);
      memcpy(&f, &b32, sizeof f);
      *v = f;
      *used = 5;
    }
    return 0;
  }
  if (!(p[0] <= 0x7f || p[0] >= 0xe0 || (p[0] >= 0xcc && p[0] <= 0xd3)))
    return SL_EPROTO;
  r = read_int(p, len, &pos, &iv);
  if (r == 2) {
    *v = (double)be64(p + 1);
    *used = 9;
    return 0;
  }
  if (r != 0)
    return SL_EPROTO;
  *v = (double)iv;
  *used = pos;
  return 0;
}

int sl_codec_read_strbin(const uint8_t *p, size_t len, struct sl_str *s,
                         size_t *used) {
  size_t h, n;
  if (len >= 1 && p[0] >= 0xc4 && p[0] <= 0xc6) {
    h = p[0] == 0xc4 ? 2 : p[0] == 0xc5 ? 3 : 5;
    if (len < h)
      return SL_EPROTO;
    n = h == 2 ? p[1] : h == 3 ? be16(p + 1) : be32(p + 1);
    if (n > len - h)
      return SL_EPROTO;
    s->p = (const char *)p + h;
    s->len = (uint32_t)n;
    if (used)
      *used = h + n;
    return 0;
  }
  return sl_codec_read_str(p, len, s, used);
}

int sl_codec_read_uint(const uint8_t *p, size_t len, uint64_t *v,
                       size_t *used) {
  size_t w;
  if (len >= 1 && p[0] <= 0x7f) {
    *v = p[0];
    *used = 1;
    return 0;
  }
  if (len < 1 || p[0] < 0xcc || p[0] > 0xcf)
    return SL_EPROTO;
  w = (size_t)1 << (p[0] - 0xcc); /* 1, 2, 4, 8 bytes */
  if (len < 1 + w)
    return SL_EPROTO;
  *v = w == 1 ? p[1] : w == 2 ? be16(p + 1) : w == 4 ? be32(p + 1) : be64(p + 1);
  *used = 1 + w;
  return 0;
}

/* ---- one item ------------------------------------------------------------ */

static uint64_t item_rd(const uint8_t *p, int n) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < n; i++)
    v = (v << 8) | p[i];
  return v;
}

/* Read one header (and the body of a str/bin/ext) at *pp. Returns 0 and
 * advances, or -1 when the bytes end or are not msgpack. Container counts
 * are checked against the bytes left (every element takes a byte). */
int sl_codec_read_item(const uint8_t **pp, const uint8_t *end,
                       struct sl_codec_item *it) {
  const uint8_t *p = *pp;
  size_t left = (size_t)(end - p), hdr = 1, body = 0;
  uint8_t c;

  if (left < 1)
    return -1;
  c = p[0];
  it->n = 0;
  it->s = NULL;
  if (c <= 0x7f) {
    it->t = SL_MP_UINT;
    it->u = c;
  } else if (c >= 0xe0) {
    it->t = SL_MP_INT;
    it->i = (int8_t)c;
  } else if (c >= 0x80 && c <= 0x8f) {
    it->t = SL_MP_MAP;
    it->n = c & 0x0f;
  } else if (c >= 0x90 && c <= 0x9f) {
    it->t = SL_MP_ARR;
    it->n = c & 0x0f;
  } else if (c >= 0xa0 && c <= 0xbf) {
    it->t = SL_MP_STR;
    body = c & 0x1f;
  } else {
    static const uint8_t size[] = {
        /* c0 */ 0, 0, 0, 0, 1, 2, 4, 1, 2, 4, 4, 8, 1, 2, 4, 8,
        /* d0 */ 1, 2, 4, 8, 1, 1, 1, 1, 1, 1, 2, 4, 2, 4, 2, 4};
    size_t sz = size[c - 0xc0];
    if (left < 1 + sz)
      return -1;
    hdr = 1 + sz;
    switch (c) {
    case 0xc0: it->t = SL_MP_NIL; break;
    case 0xc2: case 0xc3: it->t = SL_MP_BOOL; it->b = c == 0xc3; break;
    case 0xc4: case 0xc5: case 0xc6:
      it->t = SL_MP_BIN; body = (size_t)item_rd(p + 1, (int)sz); break;
    case 0xc7: case 0xc8: case 0xc9:
      it->t = SL_MP_EXT; body = (size_t)item_rd(p + 1, (int)sz); hdr++;
      break;
    case 0xca: {
      uint32_t b = (uint32_t)item_rd(p + 1, 4);
      it->t = SL_MP_F32;
      memcpy(&it->f, &b, 4);
      break;
    }
    case 0xcb: {
      uint64_t b = item_rd(p + 1, 8);
      it->t = SL_MP_F64;
      memcpy(&it->d, &b, 8);
      break;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
      it->t = SL_MP_UINT; it->u = item_rd(p + 1, (int)sz); break;
    case 0xd0: it->t = SL_MP_INT; it->i = (int8_t)item_rd(p + 1, 1); break;
    case 0xd1: it->t = SL_MP_INT; it->i = (int16_t)item_rd(p + 1, 2); break;
    case 0xd2: it->t = SL_MP_INT; it->i = (int32_t)item_rd(p + 1, 4); break;
    case 0xd3: it->t = SL_MP_INT; it->i = (int64_t)item_rd(p + 1, 8); break;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
      it->t = SL_MP_EXT; body = (size_t)1 << (c - 0xd4); hdr = 2; break;
    case 0xd9: case 0xda: case 0xdb:
      it->t = SL_MP_STR; body = (size_t)item_rd(p + 1, (int)sz); break;
    case 0xdc: case 0xdd:
      it->t = SL_MP_ARR; it->n = (uint32_t)item_rd(p + 1, (int)sz); break;
    case 0xde: case 0xdf:
      it->t = SL_MP_MAP; it->n = (uint32_t)item_rd(p + 1, (int)sz); break;
    default:
      return -1; /* 0xc1 */
    }
  }
  if (left < hdr)
    return -1;
  if (it->t == SL_MP_EXT) {
    it->ext = (int8_t)p[hdr - 1];
  }
  if (it->t == SL_MP_STR || it->t == SL_MP_BIN || it->t == SL_MP_EXT) {
    if (body > left - hdr)
      return -1;
    it->s = p + hdr;
    it->n = (uint32_t)body;
    *pp = p + hdr + body;
    return 0;
  }
  if (it->t == SL_MP_ARR && it->n > left - hdr)
    return -1;
  if (it->t == SL_MP_MAP && (uint64_t)it->n * 2 > left - hdr)
    return -1;
  *pp = p + hdr;
  return 0;
}

int sl_codec_is_container(const uint8_t *p, size_t len) {
  return len > 0 && ((p[0] >= 0x80 && p[0] <= 0x9f) ||
                     (p[0] >= 0xdc && p[0] <= 0xdf));
}

int sl_codec_is_true(const uint8_t *p, size_t len) {
  return len == 1 && p[0] == 0xc3;
}
