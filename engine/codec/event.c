/* event.c - building, sharing and freeing events; see event.h.
 * Events are written once in canonical form at ingest so every later stage
 * finds its fields at known offsets without decoding anything. */
#include "event.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>


static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return x;
}

void sl_idgen_init(struct sl_idgen *g) {
  uint64_t seed[2] = {0, 0};

  if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
    seed[0] = (uint64_t)sl_now_ns() ^ (uint64_t)(uintptr_t)g;
    seed[1] = sl_mono_ns() * 0x9e3779b97f4a7c15ull;
  }
  g->prefix = seed[0];
  g->counter = 0;
  g->rng = seed[1] | 1; /* xorshift must not start at zero */
}

/* "000102...ff": two hex digits per byte in one lookup (ids and trace ids
 * are written for every event) */
static const char hexpairs[] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

/* digits is even. */
static void put_hex(char *dst, uint64_t v, int digits) {
  int i;
  for (i = digits - 2; i >= 0; i -= 2) {
    memcpy(dst + i, hexpairs + 2 * (v & 0xff), 2);
    v >>= 8;
  }
}

static int is_lower_hex(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return 1;
}

static int all_zero(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (s[i] != '0')
      return 0;
  return 1;
}

int sl_event_traceparent_valid(const char *s, size_t n) {
  if (n != 55 || s[0] != '0' || s[1] != '0' || s[2] != '-' || s[35] != '-' ||
      s[52] != '-')
    return 0;
  if (!is_lower_hex(s + 3, 32) || !is_lower_hex(s + 36, 16) ||
      !is_lower_hex(s + 53, 2))
    return 0;
  return !all_zero(s + 3, 32) && !all_zero(s + 36, 16);
}

static void new_traceparent(struct sl_idgen *g, char out[55]) {
  memcpy(out, "00-", 3);
  put_hex(out + 3, xorshift(&g->rng) | 1, 16); /* never all zero */
  put_hex(out + 19, xorshift(&g->rng), 16);
  out[35] = '-';
  put_hex(out + 36, xorshift(&g->rng) | 1, 16);
  memcpy(out + 52, "-01", 3);
}

/* Number of pairs in a raw map (already validated). */
static uint32_t map_count(const uint8_t *p, size_t len) {
  uint32_t n;
  size_t used;
  return sl_codec_read_map(p, len, &n, &used) == 0 ? n : 0;
}

/* Copy a headers map into out, replacing (or adding) name=value. The
 * replaced pair is dropped wherever it was. */
static int rewrite_headers(struct sl_buf *out, const uint8_t *h, size_t hlen,
                           const char *name, size_t namelen,
                           const char *value, size_t valuelen) {
  uint32_t n = 0, i, kept = 0;
  size_t hdr = 0;
  const uint8_t *p;
  const uint8_t *end = h ? h + hlen : NULL;
  size_t start = out->len, kused, vused;
  struct sl_str k;
  int rc;

  if (h && sl_codec_read_map(h, hlen, &n, &hdr) != 0)
    return SL_EPROTO;
  p = h ? h + hdr : NULL;
  /* the count is unknown until we have seen every key: reserve a map32
   * header and fix it up at the end */
  if ((rc = sl_buf_append(out, "\xdf\0\0\0\0", 5)) != 0)
    return rc;
  for (i = 0; i < n; i++) {
    if (sl_codec_read_str(p, (size_t)(end - p), &k, &kused) != 0 ||
        sl_codec_skip(p + kused, (size_t)(end - p) - kused, (size_t)(end - p),
                      &vused, NULL) != 0)
      return SL_EPROTO;
    if (!(k.len == namelen && memcmp(k.p, name, namelen) == 0)) {
      if ((rc = sl_buf_append(out, p, kused + vused)) != 0)
        return rc;
      kept++;
    }
    p += kused + vused;
  }
  if ((rc = sl_codec_put_str(out, name, namelen)) != 0 ||
      (rc = sl_codec_put_str(out, value, valuelen)) != 0)
    return rc;
  kept++;
  sl_codec_patch_header(out, start, 1, kept);
  return 0;
}

struct sl_event *sl_event_new(struct sl_idgen *g, struct sl_str id,
                              struct sl_str topic, struct sl_str key,
                              int has_time, int64_t time,
                              const uint8_t *headers, size_t headers_len,
                              const uint8_t *payload, size_t payload_len,
                              int trace) {
  char idbuf[32], tp[55];
  const uint8_t *tpval = NULL;
  size_t tplen = 0, bound;
  struct sl_buf hb, out;
  struct sl_event *ev;
  uint32_t offs[3];
  int rc;

  sl_buf_init(&hb);
  if (id.p == NULL) {
    put_hex(idbuf, g->prefix, 16);
    put_hex(idbuf + 16, ++g->counter, 16);
    id.p = idbuf;
    id.len = sizeof(idbuf);
  }
  if (!has_time)
    time = sl_now_ns();
  if (trace) {
    int found = headers && sl_codec_map_find(headers, headers_len,
                                             "traceparent", 11, &tpval,
                                             &tplen) == 0;
    struct sl_str v = {NULL, 0};
    if (!found || sl_codec_read_str(tpval, tplen, &v, NULL) != 0 ||
        !sl_event_traceparent_valid(v.p, v.len)) {
      new_traceparent(g, tp);
      if (rewrite_headers(&hb, headers, headers_len, "traceparent", 11, tp,
                          sizeof(tp)) != 0)
        goto fail;
      headers = hb.data;
      headers_len = hb.len;
    }
  }

  bound = 64 + id.len + topic.len + (key.p ? key.len : 0) + headers_len +
          payload_len + 4 * 5;
  ev = malloc(sizeof(*ev) + bound);
  if (ev == NULL)
    goto fail;
  out.data = ev->data; /* bound is an upper bound: out never grows */
  out.len = 0;
  out.cap = bound;
  rc = sl_codec_write_event(&out, id, topic, key, time, headers, headers_len,
                            payload, payload_len, offs);
  assert(rc == 0 && out.data == ev->data && out.len <= bound);
  (void)rc;
  ev->refs = 1;
  ev->len = (uint32_t)out.len;
  ev->topic_off = offs[0];
  ev->topic_len = topic.len;
  ev->key_off = key.p ? offs[1] : 0;
  ev->key_len = key.p ? key.len : 0;
  ev->id_off = offs[2];
  ev->id_len = id.len;
  ev->payload_len = payload ? (uint32_t)payload_len : 0;
  ev->payload_off = payload ? ev->len - (uint32_t)payload_len : 0;
  ev->headers_len = headers ? (uint32_t)headers_len : 0;
  ev->headers_off =
      headers ? ev->len - (uint32_t)headers_len -
                    (payload ? (uint32_t)payload_len + 8 : 0)
              : 0;
  ev->headers_count = headers ? map_count(headers, headers_len) : 0;
  ev->time = time;
  ev->ingest_ns = sl_mono_ns();
  ev->track = NULL;
  ev->schema_version = 0;
  sl_buf_close(&hb);
  return ev;

fail:
  sl_buf_close(&hb);
  return NULL;
}

struct sl_event *sl_event_from_view(struct sl_idgen *g,
                                    const struct sl_event_view *v, int trace) {
  return sl_event_new(g, v->id, v->topic, v->key, v->has_time, v->time,
                      v->headers, v->headers_len, v->payload, v->payload_len,
                      trace);
}

struct sl_event *sl_event_with_header(const struct sl_event *ev,
                                      const char *name, const char *value,
                                      size_t value_len) {
  struct sl_buf hb;
  struct sl_event *copy;
  struct sl_str id = sl_event_id(ev), topic = sl_event_topic(ev),
                key = sl_event_key(ev);
  struct sl_idgen unused;

  sl_buf_init(&hb);
  if (rewrite_headers(&hb, ev->headers_len ? ev->data + ev->headers_off : NULL,
                      ev->headers_len, name, strlen(name), value,
                      value_len) != 0) {
    sl_buf_close(&hb);
    return NULL;
  }
  memset(&unused, 0, sizeof(unused));
  copy = sl_event_new(&unused, id, topic, key, 1, ev->time, hb.data, hb.len,
                      ev->payload_len ? ev->data + ev->payload_off : NULL,
                      ev->payload_len, 0);
  if (copy) {
    copy->ingest_ns = ev->ingest_ns;
    copy->schema_version = ev->schema_version;
    sl_event_share_track(ev, copy);
  }
  sl_buf_close(&hb);
  return copy;
}

static void track_release(struct sl_track *tr) {
  struct sl_tracker *t = tr->t;
  if (--tr->holders > 0)
    return;
  t->live--;
  if (!t->closed)
    t->done(t, tr->token, !tr->failed);
  else if (t->live == 0)
    free(t);
  free(tr);
}

void sl_event_unref(struct sl_event *ev) {
  if (ev == NULL)
    return;
  assert(ev->refs > 0);
  if (--ev->refs == 0) {
    if (sl_unlikely(ev->track != NULL))
      track_release(ev->track);
    free(ev);
  }
}

struct sl_tracker *sl_tracker_new(sl_tracker_done_cb done, void *data) {
  struct sl_tracker *t = calloc(1, sizeof(*t));
  if (t) {
    t->done = done;
    t->data = data;
  }
  return t;
}

void sl_tracker_close(struct sl_tracker *t) {
  if (t == NULL)
    return;
  t->closed = 1;
  if (t->live == 0)
    free(t);
}

int sl_event_track(struct sl_event *ev, struct sl_tracker *t, uint64_t token) {
  struct sl_track *tr = malloc(sizeof(*tr));
  assert(ev->track == NULL && !t->closed);
  if (tr == NULL)
    return SL_ENOMEM;
  tr->t = t;
  tr->token = token;
  tr->holders = 1;
  tr->failed = 0;
  t->live++;
  ev->track = tr;
  return 0;
}

void sl_event_share_track(const struct sl_event *from, struct sl_event *to) {
  if (from->track == NULL || to->track == from->track)
    return;
  assert(to->track == NULL);
  to->track = from->track;
  to->track->holders++;
}

void sl_event_fail_track(struct sl_event *ev) {
  if (ev && ev->track)
    ev->track->failed = 1;
}
