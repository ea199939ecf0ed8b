/* fuzz_codec.c - libFuzzer target for engine/codec.c. Measures the input,
 * checks the walker's promises on its prefixes (the way a socket delivers
 * fragments), then parses, re-encodes and renders what it measured: the
 * re-encoded event carries the same field bytes and is a fixed point.
 * Build with `make fuzz`; `make test` runs it for a few seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "event.h"
#include "fuzz.h"

#define LIMIT (1u << 20)


/* ---- a small JSON checker for what to_json wrote ----------------------- */

static const uint8_t *json_ws(const uint8_t *p, const uint8_t *end) {
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
    p++;
  return p;
}

static const uint8_t *json_check(const uint8_t *p, const uint8_t *end,
                                 int depth);

/* Length of the well-formed UTF-8 sequence at p, 0 if there is none. */
static size_t utf8_len(const uint8_t *p, const uint8_t *end) {
  size_t n, i;
  uint32_t cp;

  if (*p < 0x80)
    return 1;
  if (*p >= 0xc2 && *p <= 0xdf)
    n = 2, cp = *p & 0x1f;
  else if (*p >= 0xe0 && *p <= 0xef)
    n = 3, cp = *p & 0x0f;
  else if (*p >= 0xf0 && *p <= 0xf4)
    n = 4, cp = *p & 0x07;
  else
    return 0;
  if ((size_t)(end - p) < n)
    return 0;
  for (i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    cp = cp << 6 | (p[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

static const uint8_t *json_check_string(const uint8_t *p, const uint8_t *end) {
  size_t i, n;

  if (p >= end || *p != '"')
    return NULL;
  for (p++; p < end && *p != '"'; p++) {
    if (*p < 0x20)
      return NULL;
    if (*p >= 0x80) {
      n = utf8_len(p, end);
      if (n == 0)
        return NULL;
      p += n - 1;
      continue;
    }
    if (*p == '\\') {
      if (++p >= end)
        return NULL;
      if (*p == 'u') {
        for (i = 0; i < 4; i++)
          if (++p >= end || !strchr("0123456789abcdefABCDEF", *p) || !*p)
            return NULL;
      } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
        return NULL;
      }
    }
  }
  return p < end ? p + 1 : NULL;
}

static const uint8_t *json_check_number(const uint8_t *p, const uint8_t *end) {
  const uint8_t *s;

  if (p < end && *p == '-')
    p++;
  s = p;
  while (p < end && *p >= '0' && *p <= '9')
    p++;
  if (p == s || (*s == '0' && p - s > 1))
    return NULL;
  if (p < end && *p == '.') {
    s = ++p;
    while (p < end && *p >= '0' && *p <= '9')
      p++;
    if (p == s)
      return NULL;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-'))
      p++;
    s = p;
    while (p < end && *p >= '0' && *p <= '9')
      p++;
    if (p == s)
      return NULL;
  }
  return p;
}

static const uint8_t *json_check(const uint8_t *p, const uint8_t *end,
                                 int depth) {
  int first = 1;

  p = json_ws(p, end);
  if (p >= end || depth > 200)
    return NULL;
  switch (*p) {
  case '"':
    return json_check_string(p, end);
  case '[':
  case '{': {
    uint8_t close = *p == '[' ? ']' : '}';
    for (p++;; first = 0) {
      p = json_ws(p, end);
      if (p < end && *p == close)
        return p + 1;
      if (!first) {
        if (p >= end || *p != ',')
          return NULL;
        p++;
      }
      if (close == '}') {
        p = json_check_string(json_ws(p, end), end);
        if (p == NULL)
          return NULL;
        p = json_ws(p, end);
        if (p >= end || *p != ':')
          return NULL;
        p++;
      }
      p = json_check(p, end, depth + 1);
      if (p == NULL)
        return NULL;
    }
  }
  case 't':
    return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
  case 'f':
    return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
  case 'n':
    return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
  default:
    return json_check_number(p, end);
  }
}

/* ---- the target -------------------------------------------------------- */

static void check_prefixes(const uint8_t *data, size_t used) {
  size_t k, step, u;

  /* every cut of a whole object is "wait for more"; sample long ones */
  step = used <= 512 ? 1 : used / 256;
  for (k = 0; k < used; k += step)
    ASSERT(sl_codec_skip(data, k, LIMIT, &u, NULL) == SL_EAGAIN);
  ASSERT(sl_codec_skip(data, used - 1, LIMIT, &u, NULL) == SL_EAGAIN);
  /* the limit is exact */
  ASSERT(sl_codec_skip(data, used, used, &u, NULL) == 0 && u == used);
  ASSERT(sl_codec_skip(data, used, used - 1, &u, NULL) == SL_E2BIG);
}

static void check_event(const uint8_t *data, size_t used) {
  struct sl_event_view v, w;
  struct sl_codec_error err;
  struct sl_buf out;
  uint32_t offs[3];
  const uint8_t *val;
  size_t vallen, u;
  int r;

  r = sl_codec_parse_event(data, used, &v, &err);
  ASSERT(r == 0 || r == SL_EPROTO);
  if (r != 0) {
    ASSERT(err.offset <= used);
    return;
  }
  ASSERT(v.topic.p != NULL && v.topic.len > 0);
  ASSERT((const uint8_t *)v.topic.p + v.topic.len <= data + used);
  if (v.headers != NULL) {
    ASSERT(v.headers + v.headers_len <= data + used);
    r = sl_codec_map_find(v.headers, v.headers_len, "a", 1, &val, &vallen);
    ASSERT(r == 0 || r == SL_ENOENT);
    if (r == 0)
      ASSERT(val + vallen <= v.headers + v.headers_len);
  }

  /* what was parsed re-encodes to an event that parses the same */
  sl_buf_init(&out);
  ASSERT(sl_buf_append(&out, "xy", 2) == 0);
  r = sl_codec_write_event(&out, v.id, v.topic, v.key, v.time, v.headers,
                           v.headers_len, v.payload, v.payload_len, offs);
  ASSERT(r == 0);
  ASSERT(sl_codec_skip(out.data + 2, out.len - 2, out.len, &u, NULL) == 0);
  ASSERT(u == out.len - 2);
  ASSERT(sl_codec_parse_event(out.data + 2, u, &w, &err) == 0);
  ASSERT(w.topic.len == v.topic.len &&
         memcmp(w.topic.p, v.topic.p, v.topic.len) == 0);
  ASSERT(w.topic.p == (const char *)out.data + 2 + offs[0]);
  ASSERT((w.id.p == NULL) == (v.id.p == NULL));
  ASSERT(w.id.p == NULL || w.id.p == (const char *)out.data + 2 + offs[2]);
  ASSERT((w.key.p == NULL) == (v.key.p == NULL));
  ASSERT(w.key.p == NULL || w.key.p == (const char *)out.data + 2 + offs[1]);
  ASSERT(w.time == (v.has_time ? v.time : 0));
  ASSERT(w.headers_count == v.headers_count);
  ASSERT(w.payload_len == v.payload_len);
  /* the fields' bytes come through unchanged */
  ASSERT(w.id.p == NULL || (w.id.len == v.id.len &&
                            memcmp(w.id.p, v.id.p, v.id.len) == 0));
  ASSERT(w.key.p == NULL || (w.key.len == v.key.len &&
                             memcmp(w.key.p, v.key.p, v.key.len) == 0));
  ASSERT((w.headers == NULL) == (v.headers == NULL));
  ASSERT(w.headers == NULL ||
         (w.headers_len == v.headers_len &&
          memcmp(w.headers, v.headers, v.headers_len) == 0));
  ASSERT((w.payload == NULL) == (v.payload == NULL));
  ASSERT(w.payload == NULL ||
         memcmp(w.payload, v.payload, v.payload_len) == 0);
  /* the canonical form is a fixed point: written again, the same bytes */
  {
    struct sl_buf again;
    uint32_t offs2[3];
    sl_buf_init(&again);
    ASSERT(sl_codec_write_event(&again, w.id, w.topic, w.key, w.time,
                                w.headers, w.headers_len, w.payload,
                                w.payload_len, offs2) == 0);
    ASSERT(again.len == u && memcmp(again.data, out.data + 2, u) == 0);
    ASSERT(memcmp(offs, offs2, sizeof(offs)) == 0);
    sl_buf_close(&again);
  }
  if (v.payload != NULL) {
    sl_buf_reset(&out);
    ASSERT(sl_codec_to_json(v.payload, v.payload_len, &out) == 0);
  }
  sl_buf_close(&out);
}

static int same_str(struct sl_str a, struct sl_str b) {
  return a.p == b.p && a.len == b.len;
}

/* The native and forward readers' resumed walk (sl_codec_skip_walk, one
 * walk of an object that trickles in over many reads) answers at every
 * read what a fresh sl_codec_skip of the same bytes does: result, size,
 * error offset and message. Reads of step bytes, from the input. */
static void check_walk(const uint8_t *data, size_t size, size_t max,
                       size_t step) {
  struct sl_codec_walk w;
  struct sl_codec_error e1, e2;
  size_t k, u1 = 0, u2 = 0;
  int r1, r2;
  memset(&w, 0, sizeof(w));
  for (k = step < size ? step : size;; k = k + step < size ? k + step : size) {
    r1 = sl_codec_skip(data, k, max, &u1, &e1);
    r2 = sl_codec_skip_walk(data, k, max, &u2, &e2, &w);
    ASSERT(r1 == r2);
    ASSERT(r1 != 0 || u1 == u2);
    ASSERT(r1 == 0 || r1 == SL_EAGAIN ||
           (e1.offset == e2.offset && strcmp(e1.msg, e2.msg) == 0));
    if (r1 != SL_EAGAIN) {
      ASSERT(w.pos == 0); /* ready for the next object */
      return;
    }
    if (k == size)
      return;
  }
}

/* Every value of map a (n bytes) but the one under key skip is in map b
 * with the same bytes, and b has no key a lacks but skip. */
static void same_pairs_but(const uint8_t *a, size_t an, const uint8_t *b,
                           size_t bn, const char *skip) {
  uint32_t ac, bc, i, k = 0;
  size_t h, u, ahdr, bhdr;
  int a_has;
  const uint8_t *val, *val2;
  size_t vallen, vallen2;
  struct sl_str key;

  ASSERT(sl_codec_read_map(a, an, &ac, &ahdr) == 0);
  ASSERT(sl_codec_read_map(b, bn, &bc, &bhdr) == 0);
  a_has = sl_codec_map_find(a, an, skip, strlen(skip), &val, &vallen) == 0;
  for (h = ahdr, i = 0; i < ac; i++) {
    ASSERT(sl_codec_skip(a + h, an - h, an, &u, NULL) == 0);
    if (sl_codec_read_str(a + h, u, &key, NULL) == 0 &&
        !(key.len == strlen(skip) && memcmp(key.p, skip, key.len) == 0)) {
      ASSERT(sl_codec_map_find(b, bn, key.p, key.len, &val2, &vallen2) == 0);
      k++;
    }
    h += u;
    ASSERT(sl_codec_skip(a + h, an - h, an, &u, NULL) == 0);
    h += u;
  }
  ASSERT(k <= ac);
  /* b: a's pairs and the one under skip, added or kept where it was */
  ASSERT(bc == ac + (uint32_t)!a_has);
}

/* The ingest path's event (event.c's build: the id, time and traceparent
 * a reader gets, written in one pass into a block it sized) is what the
 * view says, in the canonical form sl_codec_parse_event reads back, and
 * built again from itself it is the same bytes. */
static void check_build(const struct sl_event_view *v, int trace) {
  static struct sl_idgen g;
  struct sl_event_view w, x;
  struct sl_codec_error err;
  struct sl_event *ev, *again;
  const uint8_t *tp;
  size_t tplen, i;
  struct sl_str tps;
  const int64_t now = 1796545577000000000LL;

  if (g.prefix == 0)
    sl_idgen_init(&g);
  ev = sl_event_from_view_at(&g, v, trace, now, 7);
  if (ev == NULL) { /* headers that are not a map get no traceparent */
    ASSERT(trace && v->headers != NULL);
    return;
  }
  ASSERT(sl_codec_parse_event(ev->data, ev->len, &w, &err) == 0);
  ASSERT(w.topic.len == v->topic.len &&
         memcmp(w.topic.p, v->topic.p, v->topic.len) == 0);
  ASSERT(w.topic.p == (const char *)ev->data + ev->topic_off &&
         ev->topic_len == w.topic.len);
  ASSERT((w.key.p == NULL) == (v->key.p == NULL));
  ASSERT(w.key.p == NULL ||
         (w.key.len == v->key.len && ev->key_len == w.key.len &&
          w.key.p == (const char *)ev->data + ev->key_off &&
          memcmp(w.key.p, v->key.p, v->key.len) == 0));
  ASSERT(w.id.p == (const char *)ev->data + ev->id_off &&
         w.id.len == ev->id_len);
  if (v->id.p != NULL) {
    ASSERT(w.id.len == v->id.len && memcmp(w.id.p, v->id.p, v->id.len) == 0);
  } else {
    ASSERT(w.id.len == 32);
    for (i = 0; i < 32; i++)
      ASSERT((w.id.p[i] >= '0' && w.id.p[i] <= '9') ||
             (w.id.p[i] >= 'a' && w.id.p[i] <= 'f'));
  }
  ASSERT(w.has_time && w.time == (v->has_time ? v->time : now));
  ASSERT(ev->time == w.time && ev->ingest_ns == 7);
  ASSERT((w.payload == NULL) == (v->payload == NULL));
  ASSERT(w.payload == NULL ||
         (w.payload_len == v->payload_len &&
          w.payload == ev->data + ev->payload_off &&
          ev->payload_len == w.payload_len &&
          memcmp(w.payload, v->payload, v->payload_len) == 0));
  ASSERT(w.headers == NULL ||
         (w.headers == ev->data + ev->headers_off &&
          w.headers_len == ev->headers_len &&
          w.headers_count == ev->headers_count));
  if (!trace) {
    ASSERT((w.headers == NULL) == (v->headers == NULL));
    ASSERT(w.headers == NULL ||
           (w.headers_len == v->headers_len &&
            memcmp(w.headers, v->headers, v->headers_len) == 0));
  } else {
    ASSERT(w.headers != NULL);
    ASSERT(sl_codec_map_find(w.headers, w.headers_len, "traceparent", 11, &tp,
                             &tplen) == 0);
    ASSERT(sl_codec_read_str(tp, tplen, &tps, NULL) == 0);
    ASSERT(sl_event_traceparent_valid(tps.p, tps.len));
    if (v->headers != NULL)
      same_pairs_but(v->headers, v->headers_len, w.headers, w.headers_len,
                     "traceparent");
  }
  /* a fixed point: its own view built again (an id and a time now, and
   * a valid traceparent when traced) gives the same bytes */
  again = sl_event_from_view_at(&g, &w, trace, now + 1, 8);
  ASSERT(again != NULL);
  ASSERT(again->len == ev->len && memcmp(again->data, ev->data, ev->len) == 0);
  ASSERT(sl_codec_parse_event(again->data, again->len, &x, &err) == 0);
  sl_event_unref(again);
  sl_event_unref(ev);
}

/* The native input's one-pass reader: whenever it answers, it is what
 * sl_codec_skip then sl_codec_parse_measured give, size and view. */
static void check_stream(const uint8_t *data, size_t size, size_t max) {
  struct sl_event_view v, w;
  struct sl_codec_error err;
  size_t used = 0, u = 0;
  if (sl_codec_parse_stream(data, size, max, &used, &v) != 0)
    return;
  ASSERT(sl_codec_skip(data, size, max, &u, NULL) == 0 && u == used);
  ASSERT(sl_codec_parse_measured(data, used, &w, &err) == 0);
  ASSERT(same_str(v.id, w.id) && same_str(v.topic, w.topic) &&
         same_str(v.key, w.key));
  ASSERT(v.has_time == w.has_time && (!v.has_time || v.time == w.time));
  ASSERT(v.headers == w.headers && v.headers_len == w.headers_len &&
         v.headers_count == w.headers_count);
  ASSERT(v.payload == w.payload && v.payload_len == w.payload_len);
  check_build(&v, 0);
  check_build(&v, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct sl_codec_error err;
  struct sl_buf json;
  size_t used = 0, pos, u;
  int r;

  check_stream(data, size, LIMIT);
  check_stream(data, size, size / 2 + 1);
  if (size > 0) {
    check_walk(data, size, LIMIT, (size_t)(data[size - 1] % 16) + 1);
    check_walk(data, size, size / 2 + 1, (size_t)(data[0] % 5) + 1);
  }

  r = sl_codec_skip(data, size, LIMIT, &used, &err);
  ASSERT(r == 0 || r == SL_EAGAIN || r == SL_E2BIG || r == SL_EPROTO);
  /* with the limit at the bytes in hand, nothing is left to wait for */
  ASSERT(sl_codec_skip(data, size, size, &u, NULL) != SL_EAGAIN);
  if (r != 0) {
    ASSERT(err.offset <= size);
    if (r == SL_EAGAIN)
      ASSERT(err.offset == size);
    return 0;
  }
  ASSERT(used >= 1 && used <= size);
  check_prefixes(data, used);

  /* the rest of the input as a stream of further objects */
  for (pos = used; pos < size; pos += u)
    if (sl_codec_skip(data + pos, size - pos, LIMIT, &u, NULL) != 0)
      break;

  check_event(data, used);

  sl_buf_init(&json);
  r = sl_codec_to_json(data, used, &json);
  ASSERT(r == 0);
  ASSERT(json_check(json.data, json.data + json.len, 0) ==
         json.data + json.len);
  sl_buf_close(&json);
  return 0;
}
