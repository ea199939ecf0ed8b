/* test_retry.c - backoff with full jitter, attempt limits and the circuit
 * breaker's closed -> open -> half-open -> closed/open cycle. */
#include "retry.h"
#include "test.h"

#define MS 1000000ull

static struct sl_retry_config rc(uint32_t attempts, uint32_t elapsed) {
  struct sl_retry_config c;
  memset(&c, 0, sizeof(c));
  c.initial_ms = 100;
  c.max_ms = 1000;
  c.max_attempts = attempts;
  c.max_elapsed_ms = elapsed;
  return c;
}

TEST(retry_backoff_doubles_up_to_max_with_jitter_below_it) {
  struct sl_retry_config c = rc(0, 0);
  struct sl_breaker_config b = {0, 0};
  struct sl_retry r;
  struct sl_retry_verdict v;
  uint32_t ceilings[] = {100, 200, 400, 800, 1000, 1000};
  int i;
  sl_retry_init(&r, &c, &b, 42);
  for (i = 0; i < 6; i++) {
    sl_retry_fail(&r, (uint64_t)(i + 1) * MS, 1, &v);
    CHECK_EQ(r.backoff_ms, ceilings[i]);
    CHECK(v.delay_ms <= ceilings[i]);
    CHECK(!v.exhausted && !v.opened);
  }
  CHECK_EQ(r.attempts, 6);
  CHECK_EQ(sl_retry_succeed(&r), 0); /* the breaker was never open */
  CHECK_EQ(r.backoff_ms, 0);
  CHECK_EQ(r.attempts, 0);
}

TEST(retry_jitter_spreads_delays) {
  struct sl_retry_config c = rc(0, 0);
  struct sl_retry r;
  struct sl_retry_verdict v;
  uint32_t lo = UINT32_MAX, hi = 0;
  int i;
  sl_retry_init(&r, &c, NULL, 7);
  for (i = 0; i < 200; i++) {
    sl_retry_fail(&r, MS, 0, &v);
    if (v.delay_ms < lo) lo = v.delay_ms;
    if (v.delay_ms > hi) hi = v.delay_ms;
  }
  CHECK(lo < 200 && hi > 800); /* full jitter: anywhere in [0, max_ms] */
}

TEST(retry_max_attempts_exhausts_the_head) {
  struct sl_retry_config c = rc(3, 0);
  struct sl_retry r;
  struct sl_retry_verdict v;
  sl_retry_init(&r, &c, NULL, 1);
  sl_retry_fail(&r, MS, 1, &v);
  CHECK(!v.exhausted);
  sl_retry_fail(&r, 2 * MS, 0, &v); /* no events waiting: not counted */
  CHECK_EQ(r.attempts, 1);
  sl_retry_fail(&r, 3 * MS, 1, &v);
  CHECK(!v.exhausted);
  sl_retry_fail(&r, 4 * MS, 1, &v);
  CHECK(v.exhausted);
  sl_retry_head_done(&r);
  CHECK_EQ(r.attempts, 0);
  CHECK(!sl_retry_exhausted(&r, 5 * MS));
}

TEST(retry_max_elapsed_counts_from_the_first_failure) {
  struct sl_retry_config c = rc(0, 500);
  struct sl_retry r;
  struct sl_retry_verdict v;
  sl_retry_init(&r, &c, NULL, 1);
  CHECK_EQ(sl_retry_deadline_ms(&r, 0), UINT32_MAX);
  sl_retry_fail(&r, 1000 * MS, 1, &v);
  CHECK_EQ(sl_retry_deadline_ms(&r, 1000 * MS), 500);
  CHECK_EQ(sl_retry_deadline_ms(&r, 1200 * MS), 300);
  CHECK(!sl_retry_exhausted(&r, 1499 * MS));
  CHECK(sl_retry_exhausted(&r, 1500 * MS));
  sl_retry_fail(&r, 1600 * MS, 1, &v);
  CHECK(v.exhausted);
}

TEST(retry_breaker_opens_after_failures_and_allows_nothing_while_open) {
  struct sl_retry_config c = rc(0, 0);
  struct sl_breaker_config b = {3, 2000};
  struct sl_retry r;
  struct sl_retry_verdict v;
  uint32_t wait;
  sl_retry_init(&r, &c, &b, 1);
  sl_retry_fail(&r, 10 * MS, 1, &v);
  sl_retry_fail(&r, 20 * MS, 1, &v);
  CHECK(!v.opened && r.state == SL_BREAKER_CLOSED);
  CHECK(sl_retry_allow(&r, 25 * MS, &wait) && wait == 0);
  sl_retry_fail(&r, 30 * MS, 1, &v);
  CHECK(v.opened);
  CHECK_EQ(v.delay_ms, 2000);
  CHECK_EQ(r.state, SL_BREAKER_OPEN);
  CHECK(!sl_retry_allow(&r, 1030 * MS, &wait));
  CHECK_EQ(wait, 1000);
  CHECK(sl_retry_allow(&r, 2030 * MS, &wait)); /* the probe */
  CHECK_EQ(r.state, SL_BREAKER_HALF_OPEN);
}

TEST(retry_breaker_half_open_failure_reopens_success_closes) {
  struct sl_retry_config c = rc(0, 0);
  struct sl_breaker_config b = {2, 100};
  struct sl_retry r;
  struct sl_retry_verdict v;
  uint32_t wait;
  sl_retry_init(&r, &c, &b, 1);
  sl_retry_fail(&r, 1 * MS, 0, &v);
  sl_retry_fail(&r, 2 * MS, 0, &v);
  CHECK(v.opened);
  CHECK(sl_retry_allow(&r, 102 * MS, &wait));
  sl_retry_fail(&r, 103 * MS, 0, &v); /* the probe failed: one is enough */
  CHECK(v.opened);
  CHECK_EQ(r.state, SL_BREAKER_OPEN);
  CHECK(sl_retry_allow(&r, 203 * MS, &wait));
  CHECK_EQ(sl_retry_succeed(&r), 1);
  CHECK_EQ(r.state, SL_BREAKER_CLOSED);
  CHECK_EQ(r.consecutive, 0);
}

TEST(retry_breaker_off_with_zero_failures) {
  struct sl_retry_config c = rc(0, 0);
  struct sl_breaker_config b = {0, 100};
  struct sl_retry r;
  struct sl_retry_verdict v;
  int i;
  sl_retry_init(&r, &c, &b, 1);
  for (i = 0; i < 50; i++) {
    sl_retry_fail(&r, (uint64_t)i * MS, 1, &v);
    CHECK(!v.opened);
  }
  CHECK_EQ(r.state, SL_BREAKER_CLOSED);
}
