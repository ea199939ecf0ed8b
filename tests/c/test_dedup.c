/* test_dedup.c - the recent-ids set: window, max_ids, deletion keeping
 * probe runs intact, hashing. */
#include <stdio.h>

#include "dedup.h"
#include "test.h"

#define MS 1000000ull

static uint64_t h(struct sl_dedup *d, const char *id) {
  return sl_dedup_hash(d, id, strlen(id));
}

TEST(dedup_remembers_ids_inside_the_window_only) {
  struct sl_dedup *d = sl_dedup_new(100, 10, 1);
  CHECK(d != NULL);
  CHECK(!sl_dedup_seen(d, h(d, "a"), 0));
  sl_dedup_add(d, h(d, "a"), 0);
  CHECK(sl_dedup_seen(d, h(d, "a"), 50 * MS));
  CHECK(!sl_dedup_seen(d, h(d, "b"), 50 * MS));
  CHECK(!sl_dedup_seen(d, h(d, "a"), 100 * MS));
  CHECK_EQ(sl_dedup_count(d), 0);
  sl_dedup_free(d);
}

TEST(dedup_max_ids_forgets_the_oldest) {
  struct sl_dedup *d = sl_dedup_new(100000, 3, 1);
  sl_dedup_add(d, h(d, "1"), 1);
  sl_dedup_add(d, h(d, "2"), 2);
  sl_dedup_add(d, h(d, "3"), 3);
  sl_dedup_add(d, h(d, "3"), 4); /* already there: no-op */
  CHECK_EQ(sl_dedup_count(d), 3);
  sl_dedup_add(d, h(d, "4"), 5);
  CHECK(!sl_dedup_seen(d, h(d, "1"), 6));
  CHECK(sl_dedup_seen(d, h(d, "2"), 6));
  CHECK(sl_dedup_seen(d, h(d, "4"), 6));
  CHECK_EQ(sl_dedup_count(d), 3);
  sl_dedup_free(d);
}

/* Colliding home slots: hashes chosen equal modulo the table size, so
 * removing from the middle of a probe run must shift the rest back. */
TEST(dedup_deletion_keeps_probe_runs_reachable) {
  struct sl_dedup *d = sl_dedup_new(1000, 8, 1); /* 16 slots */
  uint64_t k;
  for (k = 1; k <= 8; k++)
    sl_dedup_add(d, k * 16 + 3, k * MS); /* all home at slot 3 */
  for (k = 1; k <= 8; k++)
    CHECK(sl_dedup_seen(d, k * 16 + 3, 9 * MS));
  /* expire the first three (window 1000 ms): the rest must stay found */
  CHECK(!sl_dedup_seen(d, 1 * 16 + 3, 1003 * MS));
  for (k = 4; k <= 8; k++)
    CHECK(sl_dedup_seen(d, k * 16 + 3, 1003 * MS));
  CHECK_EQ(sl_dedup_count(d), 5);
  sl_dedup_free(d);
}

TEST(dedup_many_ids_churn) {
  struct sl_dedup *d = sl_dedup_new(1000000, 1000, 99);
  char id[32];
  int i, found = 0;
  for (i = 0; i < 100000; i++) {
    snprintf(id, sizeof(id), "id-%d", i);
    sl_dedup_add(d, h(d, id), (uint64_t)i);
  }
  CHECK_EQ(sl_dedup_count(d), 1000);
  for (i = 0; i < 100000; i++) {
    snprintf(id, sizeof(id), "id-%d", i);
    found += sl_dedup_seen(d, h(d, id), 100000);
  }
  CHECK_EQ(found, 1000); /* exactly the newest 1000 */
  sl_dedup_free(d);
}

TEST(dedup_hash_is_keyed_and_never_zero) {
  struct sl_dedup *a = sl_dedup_new(1, 1, 1), *b = sl_dedup_new(1, 1, 2);
  CHECK(sl_dedup_hash(a, "x", 1) != sl_dedup_hash(b, "x", 1));
  CHECK(sl_dedup_hash(a, "x", 1) == sl_dedup_hash(a, "x", 1));
  CHECK(sl_dedup_hash(a, "", 0) != 0);
  CHECK(sl_dedup_hash(a, "abcdefghi", 9) != sl_dedup_hash(a, "abcdefghj", 9));
  CHECK(sl_dedup_new(0, 1, 1) == NULL);
  sl_dedup_free(a);
  sl_dedup_free(b);
  sl_dedup_free(NULL);
}
