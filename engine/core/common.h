/* common.h - definitions every engine module shares.
 * Error codes, container_of and small helpers; no state lives here. */
#ifndef SL_COMMON_H
#define SL_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#define SL_VERSION "0.1.0"

/* Errors are 0 or a negative code; the codes are negative errno values so
 * libuv's UV_E* (also negative errno on unix) map one to one. */
#define SL_OK 0
#define SL_ENOMEM (-ENOMEM)   /* allocation failed */
#define SL_EINVAL (-EINVAL)   /* bad argument or configuration */
#define SL_EAGAIN (-EAGAIN)   /* not now: incomplete input or full queue */
#define SL_EPROTO (-EPROTO)   /* malformed input on the wire */
#define SL_E2BIG (-E2BIG)     /* over a size limit */
#define SL_ENOENT (-ENOENT)   /* no such thing */
#define SL_EIO (-EIO)         /* I/O failed */
#define SL_ETIMEDOUT (-ETIMEDOUT)

#define container_of(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))

#define SL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#if defined(__GNUC__)
#define sl_likely(x) __builtin_expect(!!(x), 1)
#define sl_unlikely(x) __builtin_expect(!!(x), 0)
#define SL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define sl_likely(x) (x)
#define sl_unlikely(x) (x)
#define SL_PRINTF(f, a)
#endif

/* A byte span that does not own its bytes. */
struct sl_str {
  const char *p;
  uint32_t len;
};

/* Wall clock in nanoseconds since the Unix epoch. */
int64_t sl_now_ns(void);
/* Monotonic clock in nanoseconds, for durations and deadlines. */
uint64_t sl_mono_ns(void);

#endif
