/* event.c - building, sharing and freeing events; see event.h.
 * Events are written once in canonical form at ingest so every later stage
 * finds its fields at known offsets without decoding anything. */
#include "event.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif


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

/* The 16 lowercase hex digits of v, most significant first, at dst.
 * Ids and trace ids are written for every event: with SSE2 (every x86-64)
 * 16 digits take a dozen instructions, without a table or a loop. */
#if defined(__SSE2__)
static inline void put_hex16(char *dst, uint64_t v) {
  /* bytes most significant first; each gives its high nibble then its low */
  __m128i b = _mm_cvtsi64_si128((long long)__builtin_bswap64(v));
  __m128i f = _mm_set1_epi8(0x0f);
  __m128i n = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), f),
                                _mm_and_si128(b, f));
  __m128i letter = _mm_cmpgt_epi8(n, _mm_set1_epi8(9));
  __m128i d = _mm_add_epi8(_mm_add_epi8(n, _mm_set1_epi8('0')),
                           _mm_and_si128(letter, _mm_set1_epi8('a' - '0' - 10)));
  _mm_storeu_si128((__m128i *)(void *)dst, d);
}
#else
static void put_hex16(char *dst, uint64_t v) {
  static const char hex[] = "0123456789abcdef";
  int i;
  for (i = 15; i >= 0; i--, v >>= 4)
    dst[i] = hex[v & 15];
}
#endif

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

static inline void new_traceparent(struct sl_idgen *g, char out[55]) {
  memcpy(out, "00-", 3);
  put_hex16(out + 3, xorshift(&g->rng) | 1); /* never all zero */
  put_hex16(out + 19, xorshift(&g->rng));
  out[35] = '-';
  put_hex16(out + 36, xorshift(&g->rng) | 1);
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

/* ---- event blocks -------------------------------------------------------
 * Events come and go by the million, in batches (a read builds hundreds,
 * an output frees them together): too many for malloc's per-thread cache,
 * so each thread keeps its own free lists of two block sizes. A block goes
 * back to the list of the thread that frees it (any thread: an event may
 * move between workers), up to pool_max per size; the rest to free(). A
 * thread's lists are freed when it ends. Under AddressSanitizer every
 * event is its own malloc, so a use after free is still caught. */

#if defined(__SANITIZE_ADDRESS__)
#define SL_EVENT_POOL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SL_EVENT_POOL 0
#endif
#endif
#ifndef SL_EVENT_POOL
#define SL_EVENT_POOL 1
#endif

/* A read may bring ~20000 events before the output frees any (libuv reads
 * up to 2 MiB at once): the lists must hold a burst. At most 16 MiB a
 * thread stay with them, as malloc's heap would keep them. */
static const size_t pool_size[2] = {512, 2048}; /* header included */
static const uint32_t pool_max[2] = {24576, 2048}; /* 12 + 4 MiB */

struct free_block {
  struct free_block *next;
};

struct ev_pool {
  struct free_block *head[2];
  uint32_t n[2];
  int keyed; /* its thread frees it at exit */
};

static _Thread_local struct ev_pool pool;
static pthread_key_t pool_key;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_drain(void *arg) {
  struct ev_pool *p = arg;
  int c;
  for (c = 0; c < 2; c++)
    while (p->head[c]) {
      struct free_block *b = p->head[c];
      p->head[c] = b->next;
      free(b);
    }
  p->n[0] = p->n[1] = 0;
}

static void pool_key_make(void) {
  (void)pthread_key_create(&pool_key, pool_drain);
}

static struct sl_event *ev_alloc(size_t room) {
  size_t need = sizeof(struct sl_event) + room;
  int c = !SL_EVENT_POOL ? -1 : need <= pool_size[0] ? 0
                              : need <= pool_size[1] ? 1
                                                     : -1;
  struct sl_event *ev;
  if (c >= 0 && pool.head[c]) {
    struct free_block *b = pool.head[c];
    pool.head[c] = b->next;
    pool.n[c]--;
    ev = (struct sl_event *)(void *)b;
  } else {
    ev = malloc(c >= 0 ? pool_size[c] : need);
    if (ev == NULL)
      return NULL;
  }
  ev->block = (uint32_t)(c + 1);
  return ev;
}

static void ev_free(struct sl_event *ev) {
  int c = (int)ev->block - 1;
  struct free_block *b;
  if (c < 0 || pool.n[c] >= pool_max[c]) {
    free(ev);
    return;
  }
  if (sl_unlikely(!pool.keyed)) {
    pool.keyed = 1;
    if (pthread_once(&pool_once, pool_key_make) == 0)
      (void)pthread_setspecific(pool_key, &pool);
  }
  b = (struct free_block *)(void *)ev;
  b->next = pool.head[c];
  pool.head[c] = b;
  pool.n[c]++;
}

/* Copy n bytes at d; returns the end. An event's names, topic, key and
 * often its payload are short: up to 128 bytes, moves of a fixed size
 * (which the compiler inlines), the last one overlapping, copy them
 * without a call to memcpy. (d is a new event: never overlapping p.) */
static inline uint8_t *put(uint8_t *d, const void *p, size_t n) {
  const uint8_t *s = p;
  if (n > 128) {
    memcpy(d, s, n);
  } else if (n > 32) {
    memcpy(d, s, 32);
    if (n > 64) {
      memcpy(d + 32, s + 32, 32);
      if (n > 96)
        memcpy(d + 64, s + 64, 32);
    }
    memcpy(d + n - 32, s + n - 32, 32);
  } else if (n >= 16)
    memcpy(d, s, 16), memcpy(d + n - 16, s + n - 16, 16);
  else if (n >= 8)
    memcpy(d, s, 8), memcpy(d + n - 8, s + n - 8, 8);
  else if (n >= 4)
    memcpy(d, s, 4), memcpy(d + n - 4, s + n - 4, 4);
  else if (n) /* p may be NULL when n is 0 */
    d[0] = s[0], d[n / 2] = s[n / 2], d[n - 1] = s[n - 1];
  return d + n;
}

/* A str field: its name (a fixstr, given whole) then the string; *off
 * gets where the string's bytes start. */
static inline uint8_t *put_field(uint8_t *d, const uint8_t *data,
                                 const char *name, size_t namelen,
                                 struct sl_str s, uint32_t *off) {
  d = put(d, name, namelen);
  if (s.len < 32)
    *d++ = (uint8_t)(0xa0 | s.len); /* a fixstr, as the packer writes it */
  else
    d += sl_codec_pack_strhdr(d, s.len);
  *off = (uint32_t)(d - data);
  return put(d, s.p, s.len);
}

/* The headers map a traceparent is added to: with the pairs of h (hcount
 * of them after a header of hhdr bytes; h may be NULL) and the new one
 * last, as rewrite_headers would write it. */
static inline uint8_t *put_headers_tp(uint8_t *d, const uint8_t *h,
                                      size_t hlen, size_t hhdr,
                                      uint32_t hcount, struct sl_idgen *g) {
  if (hcount < 15)
    *d++ = (uint8_t)(0x80 | (hcount + 1)); /* a fixmap, as packed */
  else
    d += sl_codec_pack_maphdr(d, hcount + 1);
  if (h)
    d = put(d, h + hhdr, hlen - hhdr);
  d = put(d, "\xab" "traceparent" "\xd9\x37", 14); /* str 8 of 55 */
  new_traceparent(g, (char *)d); /* a new one, written in place */
  return d + 55;
}

/* The canonical event, written once into its block: id, topic, key, time,
 * headers, payload (sl_codec_write_event's bytes). now and mono are the
 * clocks to use for what is missing. */
/* Inlined into each caller: ingest's sl_event_from_view_at reads its
 * arguments straight from the view. */
static inline __attribute__((always_inline)) struct sl_event *
build(struct sl_idgen *g, struct sl_str id,
                              struct sl_str topic, struct sl_str key,
                              int has_time, int64_t time,
                              const uint8_t *headers, size_t headers_len,
                              const uint8_t *payload, size_t payload_len,
                              int trace, int64_t now, uint64_t mono,
                              sl_event_fill_fn fill, void *ctx) {
  char tp[55];
  const uint8_t *tpval = NULL;
  size_t tplen = 0, bound, hhdr = 0;
  uint32_t hcount = 0, fields = 3;
  struct sl_buf hb;
  struct sl_event *ev;
  uint8_t *d;
  int add_tp = 0;

  hb.data = NULL; /* set up only for a rewrite of the headers (rare) */
  if (id.p == NULL)
    id.len = 32; /* written in place below */
  if (!has_time)
    time = now;
  if (headers && sl_codec_read_map(headers, headers_len, &hcount, &hhdr) != 0)
    hcount = 0, hhdr = 0; /* not a map: copied as it is (not ours to judge) */
  if (trace) {
    int found = headers && sl_codec_map_find(headers, headers_len,
                                             "traceparent", 11, &tpval,
                                             &tplen) == 0;
    struct sl_str v = {NULL, 0};
    if (!found || sl_codec_read_str(tpval, tplen, &v, NULL) != 0 ||
        !sl_event_traceparent_valid(v.p, v.len)) {
      if (found) { /* rare: an invalid one is replaced where it was */
        new_traceparent(g, tp);
        sl_buf_init(&hb);
        if (rewrite_headers(&hb, headers, headers_len, "traceparent", 11, tp,
                            sizeof(tp)) != 0)
          goto fail;
        headers = hb.data;
        headers_len = hb.len;
        hcount = map_count(headers, headers_len);
      } else if (headers && hhdr == 0) {
        goto fail; /* not a map: no pair can be added */
      } else {
        add_tp = 1;
      }
    }
  }

  bound = 1 + 3 + 5 + id.len + 6 + 5 + topic.len + 5 + 9;
  if (key.p)
    bound += 4 + 5 + key.len, fields++;
  if (headers || add_tp)
    bound += 8 + 5 + headers_len + 14 + 55, fields++;
  if (payload || fill)
    bound += 8 + payload_len, fields++;
  ev = ev_alloc(bound);
  if (ev == NULL)
    goto fail;
  d = ev->data;
  *d++ = (uint8_t)(0x80 | fields); /* a fixmap: at most 6 fields */
  if (id.p) {
    d = put_field(d, ev->data, "\xa2" "id", 3, id, &ev->id_off);
  } else {
    /* a new id: the generator's prefix and count, 32 hex digits */
    d = put(d, "\xa2" "id" "\xd9\x20", 5); /* str 8 of 32 */
    ev->id_off = (uint32_t)(d - ev->data);
    put_hex16((char *)d, g->prefix);
    put_hex16((char *)d + 16, ++g->counter);
    d += 32;
  }
  d = put_field(d, ev->data, "\xa5" "topic", 6, topic, &ev->topic_off);
  ev->key_off = 0;
  if (key.p)
    d = put_field(d, ev->data, "\xa3" "key", 4, key, &ev->key_off);
  d = put(d, "\xa4" "time", 5);
  if (time >= (int64_t)1 << 32) { /* any time since 1970 + 4 s: a uint 64 */
    uint64_t be = (uint64_t)time;
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__
    be = __builtin_bswap64(be);
#endif
    *d = 0xcf;
    memcpy(d + 1, &be, 8);
    d += 9;
  } else {
    d += sl_codec_pack_int(d, time);
  }
  ev->headers_off = ev->headers_len = ev->headers_count = 0;
  if (headers || add_tp) {
    d = put(d, "\xa7" "headers", 8);
    ev->headers_off = (uint32_t)(d - ev->data);
    if (add_tp)
      d = put_headers_tp(d, headers, headers_len, hhdr, hcount, g);
    else
      d = put(d, headers, headers_len);
    ev->headers_len = (uint32_t)(d - ev->data) - ev->headers_off;
    ev->headers_count = hcount + (uint32_t)add_tp;
  }
  ev->payload_off = ev->payload_len = 0;
  if (payload || fill) {
    d = put(d, "\xa7" "payload", 8);
    ev->payload_off = (uint32_t)(d - ev->data);
    d = fill ? d + fill(ctx, d) : put(d, payload, payload_len);
    ev->payload_len = (uint32_t)(d - ev->data) - ev->payload_off;
  }
  ev->len = (uint32_t)(d - ev->data);
  assert(ev->len <= bound);
  ev->refs = 1;
  ev->topic_len = topic.len;
  ev->key_len = key.p ? key.len : 0;
  ev->id_len = id.len;
  ev->time = time;
  ev->ingest_ns = mono;
  ev->track = NULL;
  ev->schema_version = 0;
  if (hb.data)
    sl_buf_close(&hb);
  return ev;

fail:
  if (hb.data)
    sl_buf_close(&hb);
  return NULL;
}

struct sl_event *sl_event_new(struct sl_idgen *g, struct sl_str id,
                              struct sl_str topic, struct sl_str key,
                              int has_time, int64_t time,
                              const uint8_t *headers, size_t headers_len,
                              const uint8_t *payload, size_t payload_len,
                              int trace) {
  return build(g, id, topic, key, has_time, time, headers, headers_len,
               payload, payload_len, trace, has_time ? 0 : sl_now_ns(),
               sl_mono_ns(), NULL, NULL);
}

struct sl_event *sl_event_new_fill(struct sl_idgen *g, struct sl_str id,
                                   struct sl_str topic, struct sl_str key,
                                   int64_t time, const uint8_t *headers,
                                   size_t headers_len, size_t payload_max,
                                   sl_event_fill_fn fill, void *ctx) {
  return build(g, id, topic, key, 1, time, headers, headers_len, NULL,
               payload_max, 0, 0, 0, fill, ctx);
}

struct sl_event *sl_event_from_view(struct sl_idgen *g,
                                    const struct sl_event_view *v, int trace) {
  return sl_event_new(g, v->id, v->topic, v->key, v->has_time, v->time,
                      v->headers, v->headers_len, v->payload, v->payload_len,
                      trace);
}

struct sl_event *sl_event_from_view_at(struct sl_idgen *g,
                                       const struct sl_event_view *v,
                                       int trace, int64_t now,
                                       uint64_t mono) {
  return build(g, v->id, v->topic, v->key, v->has_time, v->time, v->headers,
               v->headers_len, v->payload, v->payload_len, trace, now, mono,
               NULL, NULL);
}

struct sl_event *sl_event_with_payload(const struct sl_event *ev,
                                       size_t payload_max,
                                       sl_event_fill_fn fill, void *ctx) {
  struct sl_event *nev;
  size_t n;

  if (ev->payload_len == 0 || ev->payload_off + ev->payload_len != ev->len) {
    struct sl_idgen unused; /* the id is kept: none is made */
    memset(&unused, 0, sizeof(unused));
    nev = sl_event_new_fill(&unused, sl_event_id(ev), sl_event_topic(ev),
                            sl_event_key(ev), ev->time,
                            ev->headers_len ? ev->data + ev->headers_off
                                            : NULL,
                            ev->headers_len, payload_max, fill, ctx);
  } else { /* canonical, the payload last: all before it stays */
    nev = ev_alloc(ev->payload_off + payload_max);
    if (nev != NULL) {
      uint32_t block = nev->block;
      memcpy(nev, ev, sizeof(*ev) + ev->payload_off);
      nev->block = block;
      n = fill(ctx, nev->data + ev->payload_off);
      assert(n <= payload_max);
      nev->payload_len = (uint32_t)n;
      nev->len = ev->payload_off + (uint32_t)n;
      nev->refs = 1;
      nev->track = NULL;
    }
  }
  if (nev != NULL) {
    nev->ingest_ns = ev->ingest_ns;
    nev->schema_version = ev->schema_version;
    sl_event_share_track(ev, nev);
  }
  return nev;
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

void sl_event_free(struct sl_event *ev) {
  if (sl_unlikely(ev->track != NULL))
    track_release(ev->track);
  ev_free(ev);
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
