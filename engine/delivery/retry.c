/* retry.c - backoff, attempt counting and the circuit breaker; see
 * retry.h. */
#include "retry.h"

#include <string.h>

#define NS_PER_MS 1000000ull

void sl_retry_init(struct sl_retry *r, const struct sl_retry_config *cfg,
                   const struct sl_breaker_config *breaker, uint64_t seed) {
  memset(r, 0, sizeof(*r));
  r->cfg = cfg;
  r->breaker = breaker;
  r->rng = seed | 1; /* xorshift must not start at 0 */
}

static uint32_t jitter(struct sl_retry *r, uint32_t max) {
  r->rng ^= r->rng << 13;
  r->rng ^= r->rng >> 7;
  r->rng ^= r->rng << 17;
  return max ? (uint32_t)(r->rng % ((uint64_t)max + 1)) : 0;
}

void sl_retry_fail(struct sl_retry *r, uint64_t now, int has_head,
                   struct sl_retry_verdict *v) {
  uint32_t failures = r->breaker ? r->breaker->failures : 0;

  memset(v, 0, sizeof(*v));
  if (has_head) {
    r->attempts++;
    if (r->first_fail_ns == 0)
      r->first_fail_ns = now ? now : 1;
    v->exhausted = sl_retry_exhausted(r, now);
  }
  r->consecutive++;
  r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : r->cfg->initial_ms;
  if (r->backoff_ms > r->cfg->max_ms || r->backoff_ms == 0)
    r->backoff_ms = r->cfg->max_ms;
  /* full jitter: many senders do not come back in step */
  v->delay_ms = jitter(r, r->backoff_ms);
  if (failures && (r->state == SL_BREAKER_HALF_OPEN ||
                   (r->state == SL_BREAKER_CLOSED &&
                    r->consecutive >= failures))) {
    r->state = SL_BREAKER_OPEN;
    r->open_until_ns = now + (uint64_t)r->breaker->open_ms * NS_PER_MS;
    v->opened = 1;
    v->delay_ms = r->breaker->open_ms;
  } else if (r->state == SL_BREAKER_OPEN && now < r->open_until_ns) {
    /* a failure noticed while open (a write that was already out) */
    uint64_t left = (r->open_until_ns - now + NS_PER_MS - 1) / NS_PER_MS;
    if (v->delay_ms < left)
      v->delay_ms = (uint32_t)left;
  }
}

int sl_retry_succeed(struct sl_retry *r) {
  int closed = r->state != SL_BREAKER_CLOSED;
  r->state = SL_BREAKER_CLOSED;
  r->backoff_ms = 0;
  r->consecutive = 0;
  r->attempts = 0;
  r->first_fail_ns = 0;
  return closed;
}

void sl_retry_head_done(struct sl_retry *r) {
  r->attempts = 0;
  r->first_fail_ns = 0;
}

int sl_retry_exhausted(const struct sl_retry *r, uint64_t now) {
  const struct sl_retry_config *c = r->cfg;
  if (c->max_attempts && r->attempts >= c->max_attempts)
    return 1;
  return c->max_elapsed_ms && r->first_fail_ns &&
         now - r->first_fail_ns >= (uint64_t)c->max_elapsed_ms * NS_PER_MS;
}

uint32_t sl_retry_deadline_ms(const struct sl_retry *r, uint64_t now) {
  uint64_t end;
  if (r->cfg->max_elapsed_ms == 0 || r->first_fail_ns == 0)
    return UINT32_MAX;
  end = r->first_fail_ns + (uint64_t)r->cfg->max_elapsed_ms * NS_PER_MS;
  if (end <= now + NS_PER_MS)
    return 1;
  return (uint32_t)((end - now + NS_PER_MS - 1) / NS_PER_MS);
}

int sl_retry_allow(struct sl_retry *r, uint64_t now, uint32_t *wait_ms) {
  *wait_ms = 0;
  if (r->state != SL_BREAKER_OPEN)
    return 1;
  if (now >= r->open_until_ns) {
    r->state = SL_BREAKER_HALF_OPEN;
    return 1;
  }
  *wait_ms = (uint32_t)((r->open_until_ns - now + NS_PER_MS - 1) / NS_PER_MS);
  return 0;
}
