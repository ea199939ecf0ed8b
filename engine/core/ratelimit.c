/* ratelimit.c - the token bucket; see ratelimit.h. */
#include "ratelimit.h"

#define UNIT 1000000000ull /* billionths of a token per token */

void sl_ratelimit_init(struct sl_ratelimit *rl, uint32_t rate, uint32_t burst,
                       uint64_t now) {
  uint64_t cap = burst;
  if (cap < (uint64_t)rate / 100)
    cap = (uint64_t)rate / 100;
  if (cap == 0)
    cap = 1;
  rl->rate = rate; /* a token is 1e9 units: rate units per ns */
  rl->unit = UNIT;
  rl->cap = cap * UNIT; /* at most 1e9 * 1e9: fits */
  rl->tokens = rl->cap;
  rl->last_ns = now;
}

void sl_ratelimit_init_fraction(struct sl_ratelimit *rl, double per_second,
                                double burst, uint64_t now) {
  /* a token is 1e12 units; per_second tokens a second are
   * per_second * 1e12 / 1e9 = per_second * 1000 units per ns */
  double rate = per_second * 1000.0 + 0.5, cap = burst * 1e12;
  rl->unit = UNIT * 1000;
  rl->rate = rate < 1 ? 1 : rate > 1e18 ? (uint64_t)1e18 : (uint64_t)rate;
  rl->cap = cap < (double)rl->unit ? rl->unit
            : cap > 16777216e12     ? (uint64_t)16777216e12
                                    : (uint64_t)cap;
  rl->tokens = rl->cap;
  rl->last_ns = now;
}

static void refill(struct sl_ratelimit *rl, uint64_t now) {
  uint64_t elapsed;
  if (now <= rl->last_ns)
    return;
  elapsed = now - rl->last_ns;
  rl->last_ns = now;
  /* past the time to fill the bucket it is full; below it the product
   * stays under cap, so it cannot overflow */
  if (elapsed >= (rl->cap - rl->tokens) / rl->rate + 1)
    rl->tokens = rl->cap;
  else
    rl->tokens += elapsed * rl->rate;
  if (rl->tokens > rl->cap)
    rl->tokens = rl->cap;
}

uint32_t sl_ratelimit_take(struct sl_ratelimit *rl, uint32_t want,
                           uint64_t now) {
  uint64_t whole;
  if (rl->rate == 0)
    return want;
  refill(rl, now);
  whole = rl->tokens / rl->unit;
  if (whole > want)
    whole = want;
  rl->tokens -= whole * rl->unit;
  return (uint32_t)whole;
}

uint32_t sl_ratelimit_wait_ms(struct sl_ratelimit *rl, uint32_t n,
                              uint64_t now) {
  uint64_t want, ns;
  if (rl->rate == 0)
    return 1;
  refill(rl, now);
  want = (uint64_t)(n ? n : 1) * rl->unit;
  if (want > rl->cap)
    want = rl->cap;
  if (rl->tokens >= want)
    return 1;
  ns = (want - rl->tokens + rl->rate - 1) / rl->rate; /* ns to refill */
  ns = (ns + 999999) / 1000000;
  return ns ? (uint32_t)ns : 1;
}
