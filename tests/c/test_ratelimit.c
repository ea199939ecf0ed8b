/* test_ratelimit.c - the token bucket: burst, refill, waits, huge gaps. */
#include "ratelimit.h"
#include "test.h"

#define MS 1000000ull
#define S 1000000000ull

TEST(ratelimit_starts_full_then_refills_at_the_rate) {
  struct sl_ratelimit rl;
  sl_ratelimit_init(&rl, 100, 10, 0);
  CHECK_EQ(sl_ratelimit_take(&rl, 50, 0), 10);
  CHECK_EQ(sl_ratelimit_take(&rl, 50, 0), 0);
  CHECK_EQ(sl_ratelimit_wait_ms(&rl, 1, 0), 10);
  CHECK_EQ(sl_ratelimit_wait_ms(&rl, 5, 0), 50);
  CHECK_EQ(sl_ratelimit_wait_ms(&rl, 500, 0), 100); /* capped at burst */
  CHECK_EQ(sl_ratelimit_take(&rl, 50, 5 * MS), 0); /* half a token */
  CHECK_EQ(sl_ratelimit_wait_ms(&rl, 1, 5 * MS), 5);
  CHECK_EQ(sl_ratelimit_take(&rl, 50, 10 * MS), 1);
  CHECK_EQ(sl_ratelimit_take(&rl, 50, 1 * S + 10 * MS), 10); /* capped */
}

TEST(ratelimit_over_a_second_grants_the_rate) {
  struct sl_ratelimit rl;
  uint64_t t, got = 0;
  sl_ratelimit_init(&rl, 1000, 1, 0); /* burst raised to 10 (10 ms worth) */
  got += sl_ratelimit_take(&rl, 1000000, 0);
  CHECK_EQ(got, 10);
  for (t = 1; t <= 1000; t++)
    got += sl_ratelimit_take(&rl, 1000000, t * MS);
  CHECK_EQ(got, 1010);
}

TEST(ratelimit_long_idle_does_not_overflow) {
  struct sl_ratelimit rl;
  sl_ratelimit_init(&rl, 1000000000u, 1000000000u, 0);
  CHECK_EQ(sl_ratelimit_take(&rl, 4000000000u, 0), 1000000000u);
  CHECK_EQ(sl_ratelimit_take(&rl, 4000000000u, 100000 * S), 1000000000u);
}

TEST(ratelimit_zero_rate_is_no_limit) {
  struct sl_ratelimit rl;
  sl_ratelimit_init(&rl, 0, 0, 0);
  CHECK_EQ(sl_ratelimit_take(&rl, 123456, 0), 123456);
}
