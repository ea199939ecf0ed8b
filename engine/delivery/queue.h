/* queue.h - a bounded FIFO of events in front of one output.
 * A ring of event references, bounded by count and by bytes. The queue
 * owns one reference per queued event. The output reads a batch from the
 * front (sl_queue_peek), delivers it and only then removes it
 * (sl_queue_pop), so bytes stay counted until delivery is confirmed.
 * Producers that find it full wait on it (sl_queue_wait) and are woken once
 * it drains below the low watermark. */
#ifndef SL_QUEUE_H
#define SL_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h" /* enum sl_queue_policy, the config's when_full */
#include "event.h"

/* Someone waiting for room. Embed it and get back with container_of. */
struct sl_waiter {
  struct sl_waiter *next, *prev;
  void (*on_ready)(struct sl_waiter *w);
  int waiting;
};

struct sl_queue {
  struct sl_event **ring;
  uint32_t mask;       /* ring size - 1 (a power of two) */
  uint32_t head;       /* index of the oldest event */
  uint32_t count;      /* events queued, including those in flight */
  uint32_t inflight;   /* the first inflight events are being delivered */
  uint32_t max_events, low_events;
  uint64_t bytes, max_bytes, low_bytes;
  enum sl_queue_policy policy;
  struct sl_waiter waiters; /* list head */
  uint64_t pushed, popped, dropped_newest, dropped_oldest;
};

/* Set up an empty queue. Watermarks are 3/4 of each limit. Returns 0 or
 * SL_ENOMEM / SL_EINVAL (a zero limit). */
int sl_queue_init(struct sl_queue *q, uint32_t max_events, uint64_t max_bytes,
                  enum sl_queue_policy policy);
/* Release every queued event and the ring; waiters are forgotten. */
void sl_queue_close(struct sl_queue *q);

/* Is there room for one more event of n bytes? An empty queue always has
 * room, so one event larger than max_bytes still passes. */
static inline int sl_queue_has_room(const struct sl_queue *q, uint64_t n) {
  return q->count == 0 ||
         (q->count < q->max_events && q->bytes + n <= q->max_bytes);
}

/* Append ev, taking a new reference. Full: with BLOCK returns SL_EAGAIN
 * (nothing changed: wait and retry); with DROP_NEWEST returns SL_E2BIG and
 * counts the drop; with DROP_OLDEST drops the oldest event not in flight
 * (or, all in flight, the new one) and returns 0 / SL_E2BIG. */
int sl_queue_push_full(struct sl_queue *q, struct sl_event *ev);
/* Inline: every event goes through it; with room it only appends. */
static inline int sl_queue_push(struct sl_queue *q, struct sl_event *ev) {
  if (sl_likely(sl_queue_has_room(q, ev->len))) {
    q->ring[(q->head + q->count) & q->mask] = ev;
    q->count++;
    q->bytes += ev->len;
    q->pushed++;
    sl_event_ref(ev);
    return 0;
  }
  return sl_queue_push_full(q, ev); /* the policy decides */
}

/* Append ev past max_bytes (taking a reference): for events already
 * accepted elsewhere, such as records read back from a disk buffer in
 * batches bounded by max_events. Returns 0, or SL_E2BIG when the ring
 * (at least max_events slots) is full. */
int sl_queue_push_force(struct sl_queue *q, struct sl_event *ev);

/* The i-th queued event, 0 the oldest. */
static inline struct sl_event *sl_queue_at(const struct sl_queue *q,
                                           uint32_t i) {
  return q->ring[(q->head + i) & q->mask];
}

/* Remove the n oldest events (delivered), dropping their references; wakes
 * waiters when below the low watermark. Clears n from inflight. */
void sl_queue_pop(struct sl_queue *q, uint32_t n);

/* Call every waiter now (room appeared elsewhere, e.g. in a disk buffer). */
void sl_queue_wake(struct sl_queue *q);

/* Register w to be called once the queue drains; no-op if already
 * waiting. sl_queue_unwait removes it (safe when not waiting). */
void sl_queue_wait(struct sl_queue *q, struct sl_waiter *w);
void sl_queue_unwait(struct sl_waiter *w);

#endif
