/* retry.h - when an output tries again: exponential backoff with full
 * jitter, the count of failed attempts of the events at the head of its
 * queue (for max_attempts / max_elapsed_ms) and a circuit breaker.
 *
 * The breaker: closed (attempts go ahead) -> after breaker.failures failed
 * attempts in a row, open (no attempt for open_ms) -> half-open (one probe:
 * a connect, or one batch written) -> closed when the probe succeeds, open
 * again when it fails. A success is a confirmed delivery, or a peer that is
 * reachable while nothing waits.
 *
 * Pure state and arithmetic: no clock, no loop, no logging; callers pass
 * the monotonic time in ns. Lives in caller memory; nothing to free. */
#ifndef SL_RETRY_H
#define SL_RETRY_H

#include <stdint.h>

#include "config.h"

enum sl_breaker_state {
  SL_BREAKER_CLOSED = 0,
  SL_BREAKER_OPEN = 1,
  SL_BREAKER_HALF_OPEN = 2
};

struct sl_retry {
  const struct sl_retry_config *cfg;
  const struct sl_breaker_config *breaker;
  uint64_t rng;            /* xorshift state for the jitter */
  uint32_t backoff_ms;     /* the current backoff ceiling; 0 after success */
  uint32_t attempts;       /* failed attempts of the head events */
  uint64_t first_fail_ns;  /* when the first of them failed; 0: none yet */
  uint32_t consecutive;    /* failed attempts since the last success */
  enum sl_breaker_state state;
  uint64_t open_until_ns;  /* open: no attempt before this */
};

/* What a failed attempt led to. */
struct sl_retry_verdict {
  uint32_t delay_ms; /* wait this long before the next attempt */
  int exhausted;     /* the head used up max_attempts / max_elapsed_ms */
  int opened;        /* the breaker opened with this failure */
};

/* Set up for an output's config (both kept by reference). seed makes the
 * jitter differ between outputs and processes; any value. */
void sl_retry_init(struct sl_retry *r, const struct sl_retry_config *cfg,
                   const struct sl_breaker_config *breaker, uint64_t seed);

/* An attempt failed at now. has_head: events wait at the head of the
 * queue (their attempts are counted; without events only the breaker and
 * the backoff move). Fills v. */
void sl_retry_fail(struct sl_retry *r, uint64_t now, int has_head,
                   struct sl_retry_verdict *v);

/* A delivery was confirmed, or the peer is reachable with nothing to send:
 * resets the backoff, the failure count and the head's attempts. Returns 1
 * when this closed an open or half-open breaker. */
int sl_retry_succeed(struct sl_retry *r);

/* The head events left the queue (dead-lettered): the next head starts
 * with no attempts. */
void sl_retry_head_done(struct sl_retry *r);

/* Has the head used up its attempts or its time (max_elapsed_ms since its
 * first failed attempt)? 0 when neither limit is set. */
int sl_retry_exhausted(const struct sl_retry *r, uint64_t now);

/* The ms until the head's max_elapsed_ms runs out (at least 1), or
 * UINT32_MAX when it has no deadline. */
uint32_t sl_retry_deadline_ms(const struct sl_retry *r, uint64_t now);

/* May an attempt be made at now? An open breaker whose time is up turns
 * half-open here (returns 1: the attempt is the probe); *wait_ms gets what
 * is left while it stays open. Returns 1 or 0. */
int sl_retry_allow(struct sl_retry *r, uint64_t now, uint32_t *wait_ms);

#endif
