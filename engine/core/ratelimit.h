/* ratelimit.h - a token bucket: events_per_second tokens flow in, at most
 * burst of them are kept, one event takes one token. Tokens are counted in
 * billionths of an event so any rate refills exactly from nanosecond
 * clocks, with no floating point. Pure arithmetic: callers pass the
 * monotonic time in ns. Lives in caller memory; nothing to free. */
#ifndef SL_RATELIMIT_H
#define SL_RATELIMIT_H

#include <stdint.h>

struct sl_ratelimit {
  uint64_t rate;     /* events per second; 0: no limit */
  uint64_t cap;      /* most tokens kept, in billionths */
  uint64_t tokens;   /* in billionths */
  uint64_t last_ns;  /* when tokens was last brought up to date */
};

/* Start full. A burst below 10 ms worth of events (rate / 100) is raised
 * to it: refills come from a millisecond timer, and a smaller bucket would
 * overflow between two ticks and deliver below the rate. rate 0: no
 * limit (sl_ratelimit_take grants everything). */
void sl_ratelimit_init(struct sl_ratelimit *rl, uint32_t rate, uint32_t burst,
                       uint64_t now);

/* Take up to want tokens; returns how many were taken. */
uint32_t sl_ratelimit_take(struct sl_ratelimit *rl, uint32_t want,
                           uint64_t now);

/* Milliseconds (at least 1) until n whole tokens are there (n is capped
 * at the bucket's size). */
uint32_t sl_ratelimit_wait_ms(struct sl_ratelimit *rl, uint32_t n,
                              uint64_t now);

#endif
