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
  rl->rate = rate;
  rl->cap = cap * UNIT; /* at most 1e9 * 1e9: fits */
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
  whole = rl->tokens / UNIT;
  if (whole > want)
    whole = want;
  rl->tokens -= whole * UNIT;
  return (uint32_t)whole;
}

uint32_t sl_ratelimit_wait_ms(struct sl_ratelimit *rl, uint32_t n,
                              uint64_t now) {
  uint64_t want, ns;
  if (rl->rate == 0)
    return 1;
  refill(rl, now);
  want = (uint64_t)(n ? n : 1) * UNIT;
  if (want > rl->cap)
    want = rl->cap;
  if (rl->tokens >= want)
    return 1;
  ns = (want - rl->tokens + rl->rate - 1) / rl->rate; /* ns to refill */
  ns = (ns + 999999) / 1000000;
  return ns ? (uint32_t)ns : 1;
}
