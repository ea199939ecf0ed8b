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

/* sluice.rate_limit's buckets: fractions of a token per second and of a
 * burst, no raising of a small burst. */
TEST(ratelimit_fraction_takes_rates_and_bursts_below_one_per_second) {
  struct sl_ratelimit rl;
  uint64_t t, got = 0;
  sl_ratelimit_init_fraction(&rl, 0.5, 2, 0);
  CHECK_EQ(sl_ratelimit_take(&rl, 5, 0), 2);
  CHECK_EQ(sl_ratelimit_take(&rl, 1, 1999 * MS), 0);
  CHECK_EQ(sl_ratelimit_take(&rl, 1, 2000 * MS), 1);
  CHECK_EQ(sl_ratelimit_take(&rl, 5, 100 * S), 2); /* capped at the burst */
  sl_ratelimit_init_fraction(&rl, 1000, 1, 0); /* burst 1 stays 1 */
  CHECK_EQ(sl_ratelimit_take(&rl, 5, 0), 1);
  for (t = 1; t <= 1000; t++)
    got += sl_ratelimit_take(&rl, 5, t * MS);
  CHECK_EQ(got, 1000);
  sl_ratelimit_init_fraction(&rl, 1, 2.5, 0); /* half a token of burst */
  CHECK_EQ(sl_ratelimit_take(&rl, 5, 0), 2);
  CHECK_EQ(sl_ratelimit_take(&rl, 5, 500 * MS), 1);
}

TEST(ratelimit_fraction_clamps_extreme_arguments) {
  struct sl_ratelimit rl;
  sl_ratelimit_init_fraction(&rl, 1e-9, 1e300, 0); /* slowest, largest */
  CHECK_EQ(sl_ratelimit_take(&rl, 4000000000u, 0), 16777216);
  CHECK_EQ(sl_ratelimit_take(&rl, 1, 999 * S), 0);
  CHECK_EQ(sl_ratelimit_take(&rl, 1, 1000 * S), 1); /* 1/1000 a second */
  sl_ratelimit_init_fraction(&rl, 1e300, 1, 0);
  CHECK_EQ(sl_ratelimit_take(&rl, 5, 0), 1);
  CHECK_EQ(sl_ratelimit_take(&rl, 5, 1), 1); /* full again within a ns */
  CHECK_EQ(sl_ratelimit_take(&rl, 5, UINT64_MAX), 1);
}
