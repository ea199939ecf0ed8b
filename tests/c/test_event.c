/* test_event.c - canonical events: ids, times, traceparent, headers. */
#include "event.h"
#include "test.h"

static struct sl_str S(const char *s) {
  struct sl_str x = {s, s ? (uint32_t)strlen(s) : 0};
  return x;
}

TEST(event_assigns_unique_ids_and_time_when_missing) {
  struct sl_idgen g;
  struct sl_event *a, *b;
  sl_idgen_init(&g);
  a = sl_event_new(&g, S(NULL), S("t"), S(NULL), 0, 0, NULL, 0, NULL, 0, 0);
  b = sl_event_new(&g, S(NULL), S("t"), S(NULL), 0, 0, NULL, 0, NULL, 0, 0);
  CHECK(a && b);
  CHECK_EQ(a->id_len, 32);
  CHECK(memcmp(a->data + a->id_off, b->data + b->id_off, 32) != 0);
  CHECK(a->time > 1600000000000000000LL);
  sl_event_unref(a);
  sl_event_unref(b);
}

TEST(event_keeps_given_fields_and_parses_back) {
  struct sl_idgen g;
  struct sl_event *e;
  struct sl_event_view v;
  struct sl_codec_error err;
  const uint8_t payload[] = {0x93, 0x01, 0xc0, 0xa1, 'x'};
  sl_idgen_init(&g);
  e = sl_event_new(&g, S("id1"), S("orders.eu"), S("k1"), 1, -5, NULL, 0,
                   payload, sizeof(payload), 0);
  CHECK(e != NULL);
  CHECK_EQ(sl_codec_parse_event(e->data, e->len, &v, &err), 0);
  CHECK(v.id.len == 3 && memcmp(v.id.p, "id1", 3) == 0);
  CHECK(v.key.len == 2 && memcmp(v.key.p, "k1", 2) == 0);
  CHECK_EQ(v.time, -5);
  CHECK_EQ(v.payload_len, sizeof(payload));
  CHECK(memcmp(v.payload, payload, sizeof(payload)) == 0);
  CHECK(memcmp(e->data + e->topic_off, "orders.eu", 9) == 0);
  CHECK(memcmp(e->data + e->payload_off, payload, sizeof(payload)) == 0);
  sl_event_unref(e);
}

TEST(event_adds_traceparent_when_missing_or_invalid_keeps_valid) {
  struct sl_idgen g;
  struct sl_event *e;
  const uint8_t *val;
  size_t vlen;
  const char *valid =
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  struct sl_buf h;
  sl_idgen_init(&g);
  /* missing */
  e = sl_event_new(&g, S(NULL), S("t"), S(NULL), 0, 0, NULL, 0, NULL, 0, 1);
  CHECK(e && e->headers_len > 0);
  CHECK_EQ(sl_codec_map_find(e->data + e->headers_off, e->headers_len,
                             "traceparent", 11, &val, &vlen),
           0);
  CHECK(sl_event_traceparent_valid((const char *)val + 2, vlen - 2));
  sl_event_unref(e);
  /* valid: kept as is, other headers too */
  sl_buf_init(&h);
  sl_codec_put_map(&h, 2);
  sl_codec_put_str(&h, "a", 1);
  sl_codec_put_str(&h, "b", 1);
  sl_codec_put_str(&h, "traceparent", 11);
  sl_codec_put_str(&h, valid, 55);
  e = sl_event_new(&g, S(NULL), S("t"), S(NULL), 0, 0, h.data, h.len, NULL, 0,
                   1);
  CHECK(e && e->headers_len == h.len);
  CHECK(memcmp(e->data + e->headers_off, h.data, h.len) == 0);
  sl_event_unref(e);
  /* invalid (all-zero trace id): replaced, "a" kept */
  sl_buf_reset(&h);
  sl_codec_put_map(&h, 2);
  sl_codec_put_str(&h, "traceparent", 11);
  sl_codec_put_str(&h,
                   "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                   55);
  sl_codec_put_str(&h, "a", 1);
  sl_codec_put_str(&h, "b", 1);
  e = sl_event_new(&g, S(NULL), S("t"), S(NULL), 0, 0, h.data, h.len, NULL, 0,
                   1);
  CHECK(e != NULL);
  CHECK_EQ(e->headers_count, 2);
  CHECK_EQ(sl_codec_map_find(e->data + e->headers_off, e->headers_len, "a", 1,
                             &val, &vlen),
           0);
  CHECK_EQ(sl_codec_map_find(e->data + e->headers_off, e->headers_len,
                             "traceparent", 11, &val, &vlen),
           0);
  CHECK(sl_event_traceparent_valid((const char *)val + 2, vlen - 2));
  sl_event_unref(e);
  sl_buf_close(&h);
}

TEST(event_with_header_adds_and_replaces) {
  struct sl_idgen g;
  struct sl_event *e, *e2, *e3;
  const uint8_t *val;
  size_t vlen;
  const uint8_t payload[] = {0x2a};
  sl_idgen_init(&g);
  e = sl_event_new(&g, S("x"), S("t"), S("k"), 1, 7, NULL, 0, payload, 1, 0);
  e2 = sl_event_with_header(e, "sluice-error", "boom", 4);
  CHECK(e2 != NULL);
  CHECK_EQ(e2->headers_count, 1);
  CHECK_EQ(sl_codec_map_find(e2->data + e2->headers_off, e2->headers_len,
                             "sluice-error", 12, &val, &vlen),
           0);
  CHECK(vlen == 5 && memcmp(val + 1, "boom", 4) == 0);
  CHECK_EQ(e2->time, 7);
  CHECK(e2->payload_len == 1 && e2->data[e2->payload_off] == 0x2a);
  e3 = sl_event_with_header(e2, "sluice-error", "again", 5);
  CHECK_EQ(e3->headers_count, 1);
  sl_event_unref(e);
  sl_event_unref(e2);
  sl_event_unref(e3);
}

/* The bytes sl_codec_write_event writes for e's fields, with headers h
 * (NULL: none); e's traceparent, when it has one, appended to h. */
static int same_as_writer(const struct sl_event *e, const struct sl_buf *h,
                          int with_tp, const uint8_t *payload, size_t plen) {
  struct sl_buf want, hdr;
  uint32_t offs[3], n = 0;
  size_t used = 0;
  const uint8_t *val;
  size_t vlen;
  int same;
  sl_buf_init(&want);
  sl_buf_init(&hdr);
  if (h && sl_codec_read_map(h->data, h->len, &n, &used) != 0)
    return 0;
  if (with_tp) {
    if (sl_codec_map_find(e->data + e->headers_off, e->headers_len,
                          "traceparent", 11, &val, &vlen) != 0)
      return 0;
    sl_codec_put_map(&hdr, n + 1);
    if (h)
      sl_buf_append(&hdr, h->data + used, h->len - used);
    sl_codec_put_str(&hdr, "traceparent", 11);
    sl_buf_append(&hdr, val, vlen);
    h = &hdr;
  }
  sl_codec_write_event(&want, sl_event_id(e), sl_event_topic(e),
                       sl_event_key(e), e->time, h ? h->data : NULL,
                       h ? h->len : 0, payload, plen, offs);
  same = want.len == e->len && memcmp(want.data, e->data, e->len) == 0 &&
         offs[0] == e->topic_off && offs[2] == e->id_off &&
         (e->key_off == 0 || offs[1] == e->key_off);
  if (h)
    same = same && e->headers_len == h->len &&
           memcmp(e->data + e->headers_off, h->data, h->len) == 0 &&
           e->headers_count == n + (uint32_t)with_tp;
  sl_buf_close(&want);
  sl_buf_close(&hdr);
  return same;
}

TEST(event_builder_writes_the_canonical_writers_bytes) {
  struct sl_idgen g;
  struct sl_event *e;
  struct sl_buf h;
  const uint8_t payload[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0xc0};
  int64_t times[] = {0, -1, -33, 127, 128, 65535, 1LL << 32, -(1LL << 40),
                     1765000000123456789LL};
  char name[8];
  size_t i;
  sl_idgen_init(&g);
  for (i = 0; i < SL_ARRAY_SIZE(times); i++) {
    e = sl_event_new(&g, S("an-id"), S("orders.eu"), S(i % 2 ? "k" : NULL), 1,
                     times[i], NULL, 0, i % 3 ? payload : NULL,
                     i % 3 ? sizeof(payload) : 0, 0);
    CHECK(e && same_as_writer(e, NULL, 0, i % 3 ? payload : NULL,
                              i % 3 ? sizeof(payload) : 0));
    CHECK_EQ(e->time, times[i]);
    sl_event_unref(e);
  }
  /* a traceparent added: to no headers, to one pair, to 15 (a map 16 then) */
  e = sl_event_new(&g, S(NULL), S("t"), S("k"), 0, 0, NULL, 0, payload,
                   sizeof(payload), 1);
  CHECK(e && same_as_writer(e, NULL, 1, payload, sizeof(payload)));
  CHECK_EQ(e->headers_count, 1);
  sl_event_unref(e);
  sl_buf_init(&h);
  for (i = 1; i <= 15; i += 14) {
    size_t j;
    sl_buf_reset(&h);
    sl_codec_put_map(&h, (uint32_t)i);
    for (j = 0; j < i; j++) {
      snprintf(name, sizeof(name), "h%zu", j);
      sl_codec_put_str(&h, name, strlen(name));
      sl_codec_put_str(&h, "v", 1);
    }
    e = sl_event_new(&g, S(NULL), S("t"), S(NULL), 1, 5, h.data, h.len, NULL,
                     0, 1);
    CHECK(e && same_as_writer(e, &h, 1, NULL, 0));
    CHECK_EQ(e->headers_count, i + 1); /* 2 and 16 */
    sl_event_unref(e);
    /* without trace: copied as they are */
    e = sl_event_new(&g, S(NULL), S("t"), S(NULL), 1, 5, h.data, h.len, NULL,
                     0, 0);
    CHECK(e && same_as_writer(e, &h, 0, NULL, 0));
    CHECK_EQ(e->headers_count, i);
    sl_event_unref(e);
  }
  sl_buf_close(&h);
}

struct fill_job {
  const uint8_t *p;
  size_t n;
  int calls;
};

static size_t fill_from(void *ctx, uint8_t *dst) {
  struct fill_job *j = ctx;
  j->calls++;
  memcpy(dst, j->p, j->n);
  return j->n;
}

TEST(event_filled_in_place_is_the_event_built_from_its_parts) {
  struct sl_idgen g;
  struct sl_event *a, *b;
  const uint8_t payload[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0xc0};
  const uint8_t headers[] = {0x81, 0xa1, 'h', 0xa1, 'v'};
  struct fill_job j = {payload, sizeof(payload), 0};
  sl_idgen_init(&g);
  a = sl_event_new(&g, S("id1"), S("orders.eu"), S("k1"), 1, 1765000000123456789LL,
                   headers, sizeof(headers), payload, sizeof(payload), 0);
  /* room for more than it writes: the length is what fill wrote */
  b = sl_event_new_fill(&g, S("id1"), S("orders.eu"), S("k1"), 1765000000123456789LL,
                        headers, sizeof(headers), sizeof(payload) + 40,
                        fill_from, &j);
  CHECK(a && b);
  CHECK_EQ(j.calls, 1);
  CHECK_EQ(a->len, b->len);
  CHECK(memcmp(a->data, b->data, a->len) == 0);
  CHECK_EQ(a->payload_off, b->payload_off);
  CHECK_EQ(a->payload_len, b->payload_len);
  CHECK_EQ(a->headers_count, b->headers_count);
  CHECK_EQ(b->ingest_ns, 0); /* no clock read: the caller sets it */
  CHECK_EQ(b->refs, 1);
  sl_event_unref(b);
  /* a copy of a with another payload: the bytes before it as they were */
  {
    const uint8_t other[] = {0x83, 0xa1, 'a', 0x01, 0xa1, 'b', 0xc0,
                             0xa1, 'z', 0xa3, 'n', 'e', 'w'};
    struct fill_job j2 = {other, sizeof(other), 0};
    struct sl_event *c;
    a->ingest_ns = 42;
    a->schema_version = 7;
    b = sl_event_with_payload(a, sizeof(other) + 9, fill_from, &j2);
    c = sl_event_new(&g, S("id1"), S("orders.eu"), S("k1"), 1,
                     1765000000123456789LL, headers, sizeof(headers), other,
                     sizeof(other), 0);
    CHECK(b && c);
    CHECK_EQ(j2.calls, 1);
    CHECK_EQ(b->len, c->len);
    CHECK(memcmp(b->data, c->data, c->len) == 0);
    CHECK_EQ(b->payload_len, sizeof(other));
    CHECK_EQ(b->id_off, c->id_off);
    CHECK_EQ(b->key_off, c->key_off);
    CHECK_EQ(b->headers_count, 1);
    CHECK_EQ(b->ingest_ns, 42);
    CHECK_EQ(b->schema_version, 7);
    CHECK_EQ(b->refs, 1);
    CHECK_EQ(a->refs, 1);
    sl_event_unref(c);
    sl_event_unref(b);
  }
  sl_event_unref(a);
}

/* The builder copies short spans by fixed-size moves: every length of
 * topic, key and payload on each side of those sizes comes out whole. */
TEST(event_builder_copies_every_length_of_topic_key_and_payload) {
  struct sl_idgen g;
  struct sl_event *e;
  static char text[300];
  static uint8_t payload[300];
  struct sl_str t, k;
  size_t n, i;
  sl_idgen_init(&g);
  for (i = 0; i < sizeof(text); i++)
    text[i] = (char)('a' + i % 26 + (i / 26) % 2 * ('A' - 'a'));
  for (n = 1; n <= 260; n++) {
    /* a bin payload of n bytes in all: c4 len, then distinct bytes */
    payload[0] = 0xc4;
    payload[1] = (uint8_t)(n - 2 < 256 ? (n >= 2 ? n - 2 : 0) : 0);
    for (i = 2; i < n; i++)
      payload[i] = (uint8_t)(i * 7 + 1);
    t.p = text + n % 7;
    t.len = (uint32_t)(n % 70 + 1);
    k.p = text + n % 5;
    k.len = (uint32_t)(n % 45);
    e = sl_event_new(&g, S(NULL), t, k, 1, 5, NULL, 0,
                     n >= 2 ? payload : NULL, n >= 2 ? n : 0, 0);
    CHECK(e && same_as_writer(e, NULL, 0, n >= 2 ? payload : NULL,
                              n >= 2 ? n : 0));
    CHECK(e && sl_event_topic(e).len == t.len &&
          memcmp(sl_event_topic(e).p, t.p, t.len) == 0);
    CHECK(e && sl_event_key(e).len == k.len &&
          memcmp(sl_event_key(e).p, k.p, k.len) == 0);
    sl_event_unref(e);
  }
}

TEST(event_ids_are_the_prefix_and_counter_in_hex) {
  struct sl_idgen g;
  struct sl_event *e;
  char want[40];
  uint64_t prefixes[] = {0, 0x0123456789abcdefull, ~0ull, 0xa0b1c2d3e4f50617ull};
  size_t i;
  sl_idgen_init(&g);
  for (i = 0; i < SL_ARRAY_SIZE(prefixes); i++) {
    g.prefix = prefixes[i];
    g.counter = prefixes[SL_ARRAY_SIZE(prefixes) - 1 - i] - 1;
    e = sl_event_new(&g, S(NULL), S("t"), S(NULL), 1, 0, NULL, 0, NULL, 0, 0);
    snprintf(want, sizeof(want), "%016llx%016llx",
             (unsigned long long)prefixes[i],
             (unsigned long long)prefixes[SL_ARRAY_SIZE(prefixes) - 1 - i]);
    CHECK(e && e->id_len == 32 && memcmp(e->data + e->id_off, want, 32) == 0);
    sl_event_unref(e);
  }
}

TEST(traceparent_validation) {
  CHECK(sl_event_traceparent_valid(
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 55));
  CHECK(!sl_event_traceparent_valid(
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", 55));
  CHECK(!sl_event_traceparent_valid(
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", 55));
  CHECK(!sl_event_traceparent_valid("00-4bf9", 7));
}

/* ---- tracking an event to its end ---- */

static uint64_t ended_token;
static int ended, ended_ok;

static void on_ended(struct sl_tracker *t, uint64_t token, int ok) {
  (void)t;
  ended++;
  ended_token = token;
  ended_ok = ok;
}

static struct sl_event *tracked(struct sl_idgen *g, struct sl_tracker *t,
                                uint64_t token) {
  struct sl_event *e =
      sl_event_new(g, S(NULL), S("t"), S(NULL), 0, 0, NULL, 0, NULL, 0, 0);
  if (e && sl_event_track(e, t, token) != 0) {
    sl_event_unref(e);
    return NULL;
  }
  return e;
}

TEST(tracked_event_ends_once_its_last_holder_lets_go) {
  struct sl_idgen g;
  struct sl_tracker *t = sl_tracker_new(on_ended, NULL);
  struct sl_event *e;
  sl_idgen_init(&g);
  ended = 0;
  CHECK(t != NULL);
  e = tracked(&g, t, 42);
  CHECK(e != NULL);
  CHECK_EQ(t->live, 1);
  sl_event_ref(e); /* a second output's queue */
  sl_event_unref(e);
  CHECK_EQ(ended, 0);
  sl_event_unref(e);
  CHECK_EQ(ended, 1);
  CHECK_EQ(ended_token, 42);
  CHECK_EQ(ended_ok, 1);
  CHECK_EQ(t->live, 0);
  sl_tracker_close(t);
}

TEST(tracked_event_ends_after_its_derived_copies_and_fails_if_one_fails) {
  struct sl_idgen g;
  struct sl_tracker *t = sl_tracker_new(on_ended, NULL);
  struct sl_event *e, *dl, *changed;
  sl_idgen_init(&g);
  ended = 0;
  e = tracked(&g, t, 7);
  CHECK(e != NULL);
  /* a dead letter's copy and a rule's changed event share the track */
  dl = sl_event_with_header(e, "sluice-error", "x", 1);
  changed = sl_event_new(&g, S(NULL), S("t2"), S(NULL), 0, 0, NULL, 0, NULL,
                         0, 0);
  CHECK(dl && changed);
  sl_event_share_track(e, changed);
  CHECK_EQ(e->track->holders, 3);
  {
    /* ... and so does a changed payload written in place */
    const uint8_t one[] = {0x01};
    struct fill_job j = {one, 1, 0};
    struct sl_event *spliced = sl_event_with_payload(e, 1, fill_from, &j);
    CHECK(spliced != NULL && spliced->track == e->track);
    CHECK_EQ(e->track->holders, 4);
    sl_event_unref(spliced);
  }
  sl_event_unref(e);
  sl_event_unref(changed);
  CHECK_EQ(ended, 0);
  sl_event_fail_track(dl); /* e.g. its queue closed at a forced stop */
  sl_event_unref(dl);
  CHECK_EQ(ended, 1);
  CHECK_EQ(ended_token, 7);
  CHECK_EQ(ended_ok, 0);
  sl_tracker_close(t);
}

TEST(tracker_closed_by_its_input_outlives_it_without_callbacks) {
  struct sl_idgen g;
  struct sl_tracker *t = sl_tracker_new(on_ended, NULL);
  struct sl_event *a, *b;
  sl_idgen_init(&g);
  ended = 0;
  a = tracked(&g, t, 1);
  b = tracked(&g, t, 2);
  CHECK(a && b);
  sl_tracker_close(t); /* the input is gone; events still queued */
  sl_event_unref(a);
  sl_event_unref(b); /* frees the tracker (ASan/valgrind: no leak) */
  CHECK_EQ(ended, 0);
}
