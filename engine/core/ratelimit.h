/* ratelimit.h - the token bucket (outputs, routes and sluice.rate_limit):
 * events_per_second tokens flow in, at most burst of them are kept, one
 * event takes one token. Tokens are counted in fractions of a token
 * (unit per token) so a rate refills exactly from nanosecond clocks, with
 * no floating point. Pure arithmetic: callers pass the monotonic time in
 * ns. Lives in caller memory; nothing to free. */
#ifndef SL_RATELIMIT_H
#define SL_RATELIMIT_H

#include <stdint.h>

struct sl_ratelimit {
  uint64_t rate;     /* units added per ns; 0: no limit */
  uint64_t unit;     /* units per token */
  uint64_t cap;      /* most units kept */
  uint64_t tokens;   /* in units */
  uint64_t last_ns;  /* when tokens was last brought up to date */
};

/* Start full. A burst below 10 ms worth of events (rate / 100) is raised
 * to it: refills come from a millisecond timer, and a smaller bucket would
 * overflow between two ticks and deliver below the rate. rate 0: no
 * limit (sl_ratelimit_take grants everything). */
void sl_ratelimit_init(struct sl_ratelimit *rl, uint32_t rate, uint32_t burst,
                       uint64_t now);

/* Start full, with a rate and burst that may have fractions (rules'
 * sluice.rate_limit): the rate is kept to 1/1000 of a token per second
 * (at least that), the burst to 1e-12 of a token and at most 2^24 tokens.
 * No raising to 10 ms worth: the caller takes when it wants, not on a
 * timer. per_second must be > 0 and burst >= 1. */
void sl_ratelimit_init_fraction(struct sl_ratelimit *rl, double per_second,
                                double burst, uint64_t now);

/* Take up to want tokens; returns how many were taken. */
uint32_t sl_ratelimit_take(struct sl_ratelimit *rl, uint32_t want,
                           uint64_t now);

/* Milliseconds (at least 1) until n whole tokens are there (n is capped
 * at the bucket's size). */
uint32_t sl_ratelimit_wait_ms(struct sl_ratelimit *rl, uint32_t n,
                              uint64_t now);

#endif
