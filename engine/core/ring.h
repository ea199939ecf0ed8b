/* ring.h - a bounded single-producer single-consumer ring of fixed-size
 * elements between two threads, lock-free. The producer copies an element
 * in and publishes it with a release store of tail; the consumer sees it
 * with an acquire load, so whatever the element points to (an event)
 * changes hands with it: one thread owns it before, the other after. */
#ifndef SL_RING_H
#define SL_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct sl_ring {
  /* producer side and consumer side on their own cache lines: each thread
   * writes only its index, and reads the other's only when it must */
  _Alignas(64) _Atomic uint64_t tail; /* next slot the producer fills */
  uint64_t head_cache;                /* producer's last view of head */
  _Alignas(64) _Atomic uint64_t head; /* next slot the consumer reads */
  uint64_t tail_cache;                /* consumer's last view of tail */
  _Alignas(64) uint8_t *slots;
  uint64_t mask;
  size_t esize;
};

/* An empty ring of capacity elements (a power of two, >= 2) of esize
 * bytes. 0, SL_EINVAL or SL_ENOMEM. */
int sl_ring_init(struct sl_ring *r, uint32_t capacity, size_t esize);
void sl_ring_close(struct sl_ring *r);

/* Producer: copy e in. 0, or SL_EAGAIN when full. */
int sl_ring_push(struct sl_ring *r, const void *e);
/* Producer: is there room for one more? */
int sl_ring_room(struct sl_ring *r);

/* Consumer: the oldest element (stays in the ring, the consumer may read
 * and change it), or NULL when empty; sl_ring_pop lets it go. */
void *sl_ring_peek(struct sl_ring *r);
void sl_ring_pop(struct sl_ring *r);

/* Either side (or a third, for metrics): elements in the ring now; a
 * moment's view. */
uint64_t sl_ring_count(const struct sl_ring *r);
static inline uint64_t sl_ring_capacity(const struct sl_ring *r) {
  return r->mask + 1;
}

#endif
