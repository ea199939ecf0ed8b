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
