/* buf.h - a growable byte buffer.
 * The buffer owns its bytes; sl_buf_close frees them. Appends return 0 or
 * SL_ENOMEM and leave the content unchanged on failure. */
#ifndef SL_BUF_H
#define SL_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

struct sl_buf {
  uint8_t *data;
  size_t len;
  size_t cap;
};

void sl_buf_init(struct sl_buf *b);
void sl_buf_close(struct sl_buf *b);
/* Make room for at least n more bytes. */
int sl_buf_reserve(struct sl_buf *b, size_t n);
int sl_buf_append(struct sl_buf *b, const void *p, size_t n);
int sl_buf_printf(struct sl_buf *b, const char *fmt, ...) SL_PRINTF(2, 3);
/* Drop the first n bytes, moving the rest to the front. */
void sl_buf_consume(struct sl_buf *b, size_t n);

static inline void sl_buf_reset(struct sl_buf *b) { b->len = 0; }
/* A scratch buffer keeps its memory between uses, but not a big one. */
#define SL_BUF_SCRATCH_KEEP 65536
static inline void sl_buf_shrink(struct sl_buf *b) {
  if (b->cap > SL_BUF_SCRATCH_KEEP)
    sl_buf_close(b);
}

static inline int sl_buf_putc(struct sl_buf *b, uint8_t c) {
  if (sl_unlikely(b->len == b->cap) && sl_buf_reserve(b, 1) != 0)
    return SL_ENOMEM;
  b->data[b->len++] = c;
  return 0;
}

#endif
