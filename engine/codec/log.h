/* log.h - structured logs: one JSON object per line on stderr.
 * The level is set once at startup, before workers start; each line is
 * written with a single write(2) so lines from threads do not interleave.
 * A rate limiter (owned by the caller, one per worker or subsystem) keeps a
 * repeating error from flooding the log and reports what it suppressed. */
#ifndef SL_LOG_H
#define SL_LOG_H

#include <stdint.h>

#include "common.h"

enum sl_log_level { SL_LOG_DEBUG = 0, SL_LOG_INFO, SL_LOG_WARN, SL_LOG_ERROR };

/* Field builders for sl_log's variadic list, ended by SL_END. */
#define SL_S(k, v) 's', (const char *)(k), (const char *)(v)
#define SL_I(k, v) 'i', (const char *)(k), (long long)(v)
#define SL_U(k, v) 'u', (const char *)(k), (unsigned long long)(v)
#define SL_D(k, v) 'd', (const char *)(k), (double)(v)
/* a string of known length (not NUL-terminated) */
#define SL_N(k, p, n) 'n', (const char *)(k), (const char *)(p), (int)(n)
/* raw JSON text inserted as the value */
#define SL_J(k, v) 'j', (const char *)(k), (const char *)(v)
#define SL_END 0

void sl_log_set_level(enum sl_log_level level);
enum sl_log_level sl_log_get_level(void);
/* "debug", "info", "warn", "error" to a level; -1 when unknown. */
int sl_log_level_parse(const char *name);
/* Redirect logs to fd (tests); default 2. */
void sl_log_set_fd(int fd);

void sl_log(enum sl_log_level level, const char *msg, ...);

/* Every line of this thread gets the field key: value until key is NULL
 * again (the worker count on the lines of a reload of every worker). */
void sl_log_thread_field(const char *key, long long value);

/* At most burst lines per window_ms from one limiter; the next line let
 * through after a quiet spell carries "suppressed": n. */
struct sl_log_limiter {
  uint64_t window_start_ns;
  uint32_t window_ms, burst, in_window;
  uint64_t suppressed;
};

void sl_log_limiter_init(struct sl_log_limiter *l, uint32_t window_ms,
                         uint32_t burst);
/* Returns 1 when a line may be logged now (then *suppressed holds how many
 * were held back since the last one), 0 when it must be skipped. */
int sl_log_allow(struct sl_log_limiter *l, uint64_t *suppressed);

#endif
