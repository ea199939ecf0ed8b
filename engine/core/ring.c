/* ring.c - the SPSC ring; see ring.h. */
#include "ring.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

int sl_ring_init(struct sl_ring *r, uint32_t capacity, size_t esize) {
  memset(r, 0, sizeof(*r));
  if (capacity < 2 || (capacity & (capacity - 1)) != 0 || esize == 0)
    return SL_EINVAL;
  r->slots = calloc(capacity, esize);
  if (r->slots == NULL)
    return SL_ENOMEM;
  r->mask = capacity - 1;
  r->esize = esize;
  atomic_init(&r->head, 0);
  atomic_init(&r->tail, 0);
  return 0;
}

void sl_ring_close(struct sl_ring *r) {
  free(r->slots);
  r->slots = NULL;
}

int sl_ring_room(struct sl_ring *r) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  if (t - r->head_cache <= r->mask)
    return 1;
  r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
  return t - r->head_cache <= r->mask;
}

int sl_ring_push(struct sl_ring *r, const void *e) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  if (t - r->head_cache > r->mask) {
    /* acquire: the consumer is done with the slot before we reuse it */
    r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
    if (t - r->head_cache > r->mask)
      return SL_EAGAIN;
  }
  memcpy(r->slots + (t & r->mask) * r->esize, e, r->esize);
  atomic_store_explicit(&r->tail, t + 1, memory_order_release);
  return 0;
}

void *sl_ring_peek(struct sl_ring *r) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  if (h == r->tail_cache) {
    r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (h == r->tail_cache)
      return NULL;
  }
  return r->slots + (h & r->mask) * r->esize;
}

void sl_ring_pop(struct sl_ring *r) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  atomic_store_explicit(&r->head, h + 1, memory_order_release);
}

uint64_t sl_ring_count(const struct sl_ring *r) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
  return t >= h ? t - h : 0;
}
