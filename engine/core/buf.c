/* buf.c - growable byte buffer; see buf.h. */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void sl_buf_init(struct sl_buf *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void sl_buf_close(struct sl_buf *b) {
  free(b->data);
  sl_buf_init(b);
}

int sl_buf_reserve(struct sl_buf *b, size_t n) {
  size_t want, cap;
  uint8_t *p;

  if (n > SIZE_MAX - b->len)
    return SL_ENOMEM;
  want = b->len + n;
  if (want <= b->cap)
    return 0;
  cap = b->cap ? b->cap : 256;
  while (cap < want)
    cap = cap > SIZE_MAX / 2 ? want : cap * 2;
  p = realloc(b->data, cap);
  if (p == NULL)
    return SL_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int sl_buf_append(struct sl_buf *b, const void *p, size_t n) {
  if (n == 0)
    return 0;
  if (sl_buf_reserve(b, n) != 0)
    return SL_ENOMEM;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

int sl_buf_printf(struct sl_buf *b, const char *fmt, ...) {
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0)
    return SL_EINVAL;
  if (sl_buf_reserve(b, (size_t)n + 1) != 0)
    return SL_ENOMEM;
  va_start(ap, fmt);
  vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void sl_buf_consume(struct sl_buf *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

int64_t sl_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t sl_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
