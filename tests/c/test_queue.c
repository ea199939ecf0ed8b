/* test_queue.c - the bounded event queue: limits, policies, waiters. */
#include "queue.h"
#include "test.h"

static struct sl_event *mk(struct sl_idgen *g, const char *topic, size_t pad) {
  static uint8_t payload[4096];
  struct sl_str id = {NULL, 0}, t = {topic, (uint32_t)strlen(topic)},
                k = {NULL, 0};
  payload[0] = 0xc4; /* bin8 */
  payload[1] = (uint8_t)pad;
  return sl_event_new(g, id, t, k, 1, 1, NULL, 0, payload, pad + 2, 0);
}

static int woken;
static void on_ready(struct sl_waiter *w) { woken++; }

TEST(queue_block_full_by_count_returns_eagain_and_keeps_state) {
  struct sl_queue q;
  struct sl_idgen g;
  struct sl_event *e[4];
  int i;
  sl_idgen_init(&g);
  CHECK_EQ(sl_queue_init(&q, 3, 1 << 20, SL_QUEUE_BLOCK), 0);
  for (i = 0; i < 4; i++)
    e[i] = mk(&g, "t", 10);
  for (i = 0; i < 3; i++)
    CHECK_EQ(sl_queue_push(&q, e[i]), 0);
  CHECK_EQ(sl_queue_push(&q, e[3]), SL_EAGAIN);
  CHECK_EQ(q.count, 3);
  CHECK_EQ(e[3]->refs, 1); /* not taken */
  CHECK(sl_queue_at(&q, 0) == e[0]);
  for (i = 0; i < 4; i++)
    sl_event_unref(e[i]);
  CHECK_EQ(e[0]->refs, 1); /* the queue's reference */
  sl_queue_close(&q);
}

TEST(queue_block_full_by_bytes) {
  struct sl_queue q;
  struct sl_idgen g;
  struct sl_event *a, *b;
  sl_idgen_init(&g);
  a = mk(&g, "t", 200);
  b = mk(&g, "t", 200);
  CHECK_EQ(sl_queue_init(&q, 100, a->len + 10, SL_QUEUE_BLOCK), 0);
  CHECK_EQ(sl_queue_push(&q, a), 0);
  CHECK_EQ(sl_queue_push(&q, b), SL_EAGAIN);
  CHECK_EQ(q.bytes, a->len);
  sl_event_unref(a);
  sl_event_unref(b);
  sl_queue_close(&q);
}

TEST(queue_empty_takes_one_event_larger_than_max_bytes) {
  struct sl_queue q;
  struct sl_idgen g;
  struct sl_event *a;
  sl_idgen_init(&g);
  a = mk(&g, "t", 250);
  CHECK_EQ(sl_queue_init(&q, 100, 16, SL_QUEUE_BLOCK), 0);
  CHECK_EQ(sl_queue_push(&q, a), 0);
  sl_event_unref(a);
  sl_queue_close(&q);
}

TEST(queue_drop_newest_counts_and_keeps_old) {
  struct sl_queue q;
  struct sl_idgen g;
  struct sl_event *e[5];
  int i;
  sl_idgen_init(&g);
  CHECK_EQ(sl_queue_init(&q, 2, 1 << 20, SL_QUEUE_DROP_NEWEST), 0);
  for (i = 0; i < 5; i++) {
    e[i] = mk(&g, "t", 1);
    sl_queue_push(&q, e[i]);
  }
  CHECK_EQ(q.count, 2);
  CHECK_EQ(q.dropped_newest, 3);
  CHECK(sl_queue_at(&q, 0) == e[0] && sl_queue_at(&q, 1) == e[1]);
  for (i = 0; i < 5; i++)
    sl_event_unref(e[i]);
  sl_queue_close(&q);
}

TEST(queue_drop_oldest_keeps_inflight_and_newest) {
  struct sl_queue q;
  struct sl_idgen g;
  struct sl_event *e[6];
  int i;
  sl_idgen_init(&g);
  CHECK_EQ(sl_queue_init(&q, 3, 1 << 20, SL_QUEUE_DROP_OLDEST), 0);
  for (i = 0; i < 3; i++) {
    e[i] = mk(&g, "t", 1);
    CHECK_EQ(sl_queue_push(&q, e[i]), 0);
  }
  q.inflight = 1; /* e0 is being written: it must survive */
  for (i = 3; i < 6; i++) {
    e[i] = mk(&g, "t", 1);
    CHECK_EQ(sl_queue_push(&q, e[i]), 0);
  }
  CHECK_EQ(q.count, 3);
  CHECK_EQ(q.dropped_oldest, 3);
  CHECK(sl_queue_at(&q, 0) == e[0]);
  CHECK(sl_queue_at(&q, 1) == e[4]);
  CHECK(sl_queue_at(&q, 2) == e[5]);
  sl_queue_pop(&q, 1);
  CHECK_EQ(q.inflight, 0);
  for (i = 0; i < 6; i++)
    sl_event_unref(e[i]);
  sl_queue_close(&q);
}

TEST(queue_waiters_woken_below_low_watermark_only) {
  struct sl_queue q;
  struct sl_idgen g;
  struct sl_waiter w1, w2;
  struct sl_event *e[8];
  int i;
  sl_idgen_init(&g);
  memset(&w1, 0, sizeof(w1));
  memset(&w2, 0, sizeof(w2));
  w1.on_ready = w2.on_ready = on_ready;
  woken = 0;
  CHECK_EQ(sl_queue_init(&q, 8, 1 << 20, SL_QUEUE_BLOCK), 0);
  for (i = 0; i < 8; i++) {
    e[i] = mk(&g, "t", 1);
    CHECK_EQ(sl_queue_push(&q, e[i]), 0);
  }
  sl_queue_wait(&q, &w1);
  sl_queue_wait(&q, &w1); /* twice is once */
  sl_queue_wait(&q, &w2);
  sl_queue_pop(&q, 1); /* 7 > low watermark 6 */
  CHECK_EQ(woken, 0);
  sl_queue_unwait(&w2);
  sl_queue_pop(&q, 1); /* 6: wake */
  CHECK_EQ(woken, 1);
  CHECK_EQ(w1.waiting, 0);
  sl_queue_pop(&q, 6);
  CHECK_EQ(woken, 1);
  CHECK_EQ(q.count, 0);
  CHECK_EQ(q.bytes, 0);
  CHECK_EQ(q.popped, 8);
  for (i = 0; i < 8; i++)
    sl_event_unref(e[i]);
  sl_queue_close(&q);
}

TEST(queue_ring_wraps_in_order) {
  struct sl_queue q;
  struct sl_idgen g;
  int i, round;
  sl_idgen_init(&g);
  CHECK_EQ(sl_queue_init(&q, 16, 1 << 20, SL_QUEUE_BLOCK), 0);
  for (round = 0; round < 10; round++) {
    struct sl_event *e[11];
    for (i = 0; i < 11; i++) {
      e[i] = mk(&g, "t", 1);
      CHECK_EQ(sl_queue_push(&q, e[i]), 0);
    }
    for (i = 0; i < 11; i++) {
      CHECK(sl_queue_at(&q, 0) == e[i]);
      sl_queue_pop(&q, 1);
      sl_event_unref(e[i]);
    }
  }
  sl_queue_close(&q);
}

TEST(queue_init_rejects_zero_limits) {
  struct sl_queue q;
  CHECK_EQ(sl_queue_init(&q, 0, 100, SL_QUEUE_BLOCK), SL_EINVAL);
  CHECK_EQ(sl_queue_init(&q, 10, 0, SL_QUEUE_BLOCK), SL_EINVAL);
}

static int track_ends, track_ok;
static void on_track_end(struct sl_tracker *t, uint64_t token, int ok) {
  (void)t, (void)token;
  track_ends++;
  track_ok = ok;
}

TEST(queue_delivered_event_ends_its_track_ok_a_closed_queue_fails_it) {
  struct sl_queue q;
  struct sl_idgen g;
  struct sl_tracker *t = sl_tracker_new(on_track_end, NULL);
  struct sl_event *a, *b;
  sl_idgen_init(&g);
  CHECK_EQ(sl_queue_init(&q, 8, 1 << 20, SL_QUEUE_BLOCK), 0);
  a = mk(&g, "t", 10);
  b = mk(&g, "t", 10);
  CHECK_EQ(sl_event_track(a, t, 1), 0);
  CHECK_EQ(sl_event_track(b, t, 2), 0);
  CHECK_EQ(sl_queue_push(&q, a), 0);
  CHECK_EQ(sl_queue_push(&q, b), 0);
  sl_event_unref(a);
  sl_event_unref(b);
  sl_queue_pop(&q, 1); /* a delivered */
  CHECK_EQ(track_ends, 1);
  CHECK_EQ(track_ok, 1);
  sl_queue_close(&q); /* b never was: a broker must redeliver it */
  CHECK_EQ(track_ends, 2);
  CHECK_EQ(track_ok, 0);
  sl_tracker_close(t);
}
