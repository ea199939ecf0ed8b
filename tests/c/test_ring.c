/* test_ring.c - the SPSC ring: bounds, FIFO, and a producer and consumer
 * thread passing a million elements with none lost, repeated or
 * reordered (run it under ASan/TSan builds too). */
#include <pthread.h>

#include "common.h"
#include "ring.h"
#include "test.h"

struct elem {
  uint64_t seq;
  uint64_t check;
};

TEST(ring_rejects_a_capacity_that_is_not_a_power_of_two) {
  struct sl_ring r;
  CHECK_EQ(sl_ring_init(&r, 3, 8), SL_EINVAL);
  CHECK_EQ(sl_ring_init(&r, 1, 8), SL_EINVAL);
  CHECK_EQ(sl_ring_init(&r, 4, 0), SL_EINVAL);
}

TEST(ring_full_says_eagain_and_keeps_fifo_order) {
  struct sl_ring r;
  struct elem e, *p;
  uint64_t i;
  CHECK_EQ(sl_ring_init(&r, 4, sizeof(e)), 0);
  CHECK(sl_ring_peek(&r) == NULL);
  for (i = 0; i < 4; i++) {
    e.seq = i;
    CHECK_EQ(sl_ring_push(&r, &e), 0);
  }
  CHECK_EQ(sl_ring_room(&r), 0);
  CHECK_EQ(sl_ring_push(&r, &e), SL_EAGAIN);
  CHECK_EQ(sl_ring_count(&r), 4);
  for (i = 0; i < 4; i++) {
    p = sl_ring_peek(&r);
    CHECK(p != NULL);
    CHECK_EQ(p->seq, i);
    sl_ring_pop(&r);
  }
  CHECK(sl_ring_peek(&r) == NULL);
  CHECK_EQ(sl_ring_room(&r), 1);
  sl_ring_close(&r);
}

#define N_PASS 1000000u

static void *producer(void *arg) {
  struct sl_ring *r = arg;
  struct elem e;
  uint64_t i = 0;
  while (i < N_PASS) {
    e.seq = i;
    e.check = i * 2654435761u;
    if (sl_ring_push(r, &e) == 0)
      i++;
  }
  return NULL;
}

TEST(ring_two_threads_pass_every_element_once_in_order) {
  struct sl_ring r;
  pthread_t t;
  uint64_t want = 0, bad = 0;
  CHECK_EQ(sl_ring_init(&r, 64, sizeof(struct elem)), 0);
  CHECK_EQ(pthread_create(&t, NULL, producer, &r), 0);
  while (want < N_PASS) {
    struct elem *p = sl_ring_peek(&r);
    if (p == NULL)
      continue;
    if (p->seq != want || p->check != want * 2654435761u)
      bad++;
    sl_ring_pop(&r);
    want++;
  }
  pthread_join(t, NULL);
  CHECK_EQ(bad, 0);
  CHECK(sl_ring_peek(&r) == NULL);
  sl_ring_close(&r);
}
