/* queue.c - bounded event queue; see queue.h. */
#include "queue.h"

#include <assert.h>
#include <stdlib.h>

int sl_queue_init(struct sl_queue *q, uint32_t max_events, uint64_t max_bytes,
                  enum sl_queue_policy policy) {
  uint32_t size = 16;

  memset(q, 0, sizeof(*q));
  if (max_events == 0 || max_bytes == 0 || max_events > (1u << 30))
    return SL_EINVAL;
  while (size < max_events)
    size <<= 1;
  q->ring = malloc(sizeof(*q->ring) * size);
  if (q->ring == NULL)
    return SL_ENOMEM;
  q->mask = size - 1;
  q->max_events = max_events;
  q->max_bytes = max_bytes;
  q->low_events = max_events - max_events / 4;
  q->low_bytes = max_bytes - max_bytes / 4;
  q->policy = policy;
  q->waiters.next = q->waiters.prev = &q->waiters;
  return 0;
}

void sl_queue_close(struct sl_queue *q) {
  struct sl_waiter *w, *next;

  while (q->count > 0) {
    sl_event_fail_track(sl_queue_at(q, 0)); /* closed undelivered */
    sl_event_unref(sl_queue_at(q, 0));
    q->head = (q->head + 1) & q->mask;
    q->count--;
  }
  for (w = q->waiters.next; w && w != &q->waiters; w = next) {
    next = w->next;
    w->next = w->prev = NULL;
    w->waiting = 0;
  }
  q->waiters.next = q->waiters.prev = &q->waiters;
  free(q->ring);
  q->ring = NULL;
}

static void append(struct sl_queue *q, struct sl_event *ev) {
  q->ring[(q->head + q->count) & q->mask] = ev;
  q->count++;
  q->bytes += ev->len;
  q->pushed++;
  sl_event_ref(ev);
}

int sl_queue_push_force(struct sl_queue *q, struct sl_event *ev) {
  if (q->count > q->mask)
    return SL_E2BIG; /* the ring itself is full */
  append(q, ev);
  return 0;
}

int sl_queue_push_full(struct sl_queue *q, struct sl_event *ev) {
  if (sl_queue_has_room(q, ev->len)) {
    append(q, ev);
    return 0;
  }
  switch (q->policy) {
  case SL_QUEUE_BLOCK:
  case SL_QUEUE_SPILL:
    return SL_EAGAIN;
  case SL_QUEUE_DROP_NEWEST:
    q->dropped_newest++;
    return SL_E2BIG;
  case SL_QUEUE_DROP_OLDEST:
    /* evict the oldest undelivered event (the one after those in flight)
     * by sliding the in-flight batch, usually short, one slot forward */
    while (q->count > q->inflight && !sl_queue_has_room(q, ev->len)) {
      struct sl_event *old = q->ring[(q->head + q->inflight) & q->mask];
      uint32_t j;
      for (j = q->inflight; j > 0; j--)
        q->ring[(q->head + j) & q->mask] = q->ring[(q->head + j - 1) & q->mask];
      q->head = (q->head + 1) & q->mask;
      q->count--;
      q->bytes -= old->len;
      q->dropped_oldest++;
      sl_event_unref(old);
    }
    if (!sl_queue_has_room(q, ev->len)) {
      q->dropped_newest++;
      return SL_E2BIG;
    }
    append(q, ev);
    return 0;
  }
  return SL_EINVAL;
}

void sl_queue_pop(struct sl_queue *q, uint32_t n) {
  assert(n <= q->count);
  while (n-- > 0) {
    struct sl_event *ev = q->ring[q->head];
    q->head = (q->head + 1) & q->mask;
    q->count--;
    q->bytes -= ev->len;
    q->popped++;
    if (q->inflight)
      q->inflight--;
    sl_event_unref(ev);
  }
  if (q->count <= q->low_events && q->bytes <= q->low_bytes)
    sl_queue_wake(q);
}

void sl_queue_wake(struct sl_queue *q) {
  struct sl_waiter list, *w;
  if (q->waiters.next == &q->waiters)
    return;
  /* detach the whole list first: a woken producer may wait again */
  list = q->waiters;
  list.next->prev = &list;
  list.prev->next = &list;
  q->waiters.next = q->waiters.prev = &q->waiters;
  while ((w = list.next) != &list) {
    list.next = w->next;
    w->next->prev = &list;
    w->next = w->prev = NULL;
    w->waiting = 0;
    w->on_ready(w);
  }
}

void sl_queue_wait(struct sl_queue *q, struct sl_waiter *w) {
  if (w->waiting)
    return;
  w->waiting = 1;
  w->prev = q->waiters.prev;
  w->next = &q->waiters;
  q->waiters.prev->next = w;
  q->waiters.prev = w;
}

void sl_queue_unwait(struct sl_waiter *w) {
  if (!w->waiting)
    return;
  w->prev->next = w->next;
  w->next->prev = w->prev;
  w->next = w->prev = NULL;
  w->waiting = 0;
}
