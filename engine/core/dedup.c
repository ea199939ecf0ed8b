/* dedup.c - the recent-ids set; see dedup.h. Open addressing with linear
 * probing at most half full, and deletion by shifting the followers back,
 * so lookups never wade through tombstones however many ids expire. */
#include "dedup.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

struct sl_dedup {
  uint64_t window_ns;
  uint64_t seed;
  uint64_t *slots;   /* 0: empty */
  uint64_t mask;     /* slots - 1 */
  uint64_t *fifo_hash, *fifo_ns; /* ring of max_ids, oldest at head */
  uint32_t max_ids, head, count;
};

struct sl_dedup *sl_dedup_new(uint32_t window_ms, uint32_t max_ids,
                              uint64_t seed) {
  struct sl_dedup *d;
  uint64_t size = 16;

  if (window_ms == 0 || max_ids == 0)
    return NULL;
  d = calloc(1, sizeof(*d));
  if (d == NULL)
    return NULL;
  while (size < (uint64_t)max_ids * 2)
    size <<= 1;
  d->window_ns = (uint64_t)window_ms * 1000000u;
  d->seed = seed;
  d->mask = size - 1;
  d->max_ids = max_ids;
  d->slots = calloc(size, sizeof(*d->slots));
  d->fifo_hash = malloc(sizeof(*d->fifo_hash) * max_ids);
  d->fifo_ns = malloc(sizeof(*d->fifo_ns) * max_ids);
  if (d->slots == NULL || d->fifo_hash == NULL || d->fifo_ns == NULL) {
    sl_dedup_free(d);
    return NULL;
  }
  return d;
}

void sl_dedup_free(struct sl_dedup *d) {
  if (d == NULL)
    return;
  free(d->slots);
  free(d->fifo_hash);
  free(d->fifo_ns);
  free(d);
}

/* MurmurHash64A (Austin Appleby, public domain), keyed by the seed. */
uint64_t sl_dedup_hash(const struct sl_dedup *d, const void *id, size_t len) {
  const uint64_t m = 0xc6a4a7935bd1e995ull;
  const uint8_t *p = id;
  uint64_t h = d->seed ^ (len * m), k;
  size_t i, tail = len & 7;

  for (i = 0; i + 8 <= len; i += 8) {
    memcpy(&k, p + i, 8);
    k *= m;
    k ^= k >> 47;
    k *= m;
    h ^= k;
    h *= m;
  }
  if (tail) {
    for (k = 0; tail > 0; tail--)
      k |= (uint64_t)p[i + tail - 1] << (8 * (tail - 1));
    h ^= k;
    h *= m;
  }
  h ^= h >> 47;
  h *= m;
  h ^= h >> 47;
  return h ? h : 1; /* 0 marks an empty slot */
}

static uint64_t *find(struct sl_dedup *d, uint64_t hash) {
  uint64_t i = hash & d->mask;
  while (d->slots[i] != 0) {
    if (d->slots[i] == hash)
      return &d->slots[i];
    i = (i + 1) & d->mask;
  }
  return NULL;
}

/* Remove hash (present) and shift back the entries of its probe run that
 * would otherwise become unreachable. */
static void remove_hash(struct sl_dedup *d, uint64_t hash) {
  uint64_t *slot = find(d, hash);
  uint64_t i, j, home;

  if (slot == NULL)
    return;
  i = (uint64_t)(slot - d->slots);
  j = i;
  for (;;) {
    j = (j + 1) & d->mask;
    if (d->slots[j] == 0)
      break;
    home = d->slots[j] & d->mask;
    /* the entry at j may move to i unless its home lies in (i, j] */
    if ((i < j) ? (home <= i || home > j) : (home <= i && home > j)) {
      d->slots[i] = d->slots[j];
      i = j;
    }
  }
  d->slots[i] = 0;
}

static void forget_oldest(struct sl_dedup *d) {
  remove_hash(d, d->fifo_hash[d->head]);
  d->head = d->head + 1 == d->max_ids ? 0 : d->head + 1;
  d->count--;
}

static void expire(struct sl_dedup *d, uint64_t now) {
  while (d->count > 0 && now - d->fifo_ns[d->head] >= d->window_ns)
    forget_oldest(d);
}

int sl_dedup_seen(struct sl_dedup *d, uint64_t hash, uint64_t now) {
  expire(d, now);
  return find(d, hash) != NULL;
}

void sl_dedup_add(struct sl_dedup *d, uint64_t hash, uint64_t now) {
  uint64_t i;
  uint32_t tail;

  expire(d, now);
  if (find(d, hash) != NULL)
    return;
  if (d->count == d->max_ids)
    forget_oldest(d);
  for (i = hash & d->mask; d->slots[i] != 0; i = (i + 1) & d->mask)
    ;
  d->slots[i] = hash;
  tail = d->head + d->count;
  if (tail >= d->max_ids)
    tail -= d->max_ids;
  d->fifo_hash[tail] = hash;
  d->fifo_ns[tail] = now;
  d->count++;
}

uint32_t sl_dedup_count(const struct sl_dedup *d) { return d->count; }
