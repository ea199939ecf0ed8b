/* dedup.h - which event ids an output saw lately: a set of 64-bit hashes
 * of ids with a FIFO of (hash, time), bounded by a time window and by a
 * count. An id is forgotten window_ms after it was first seen, or earlier
 * when max_ids newer ids came after it. Memory is fixed at creation:
 * 8 bytes per slot of the set (twice max_ids, rounded up to a power of
 * two) and 16 per FIFO entry, about 32-48 bytes per id.
 *
 * Only hashes are kept: a new id is taken for a repeat when its hash
 * equals one of the (at most max_ids) remembered ones. The hash is keyed
 * with a random seed per set, so for ids the sender does not choose to
 * collide the chance is at most max_ids / 2^64 per event (5e-15 for
 * 100000 ids), far below the chance of losing an event to hardware.
 *
 * A heap object: sl_dedup_new / sl_dedup_free. Pure: callers pass the
 * monotonic time in ns. */
#ifndef SL_DEDUP_H
#define SL_DEDUP_H

#include <stddef.h>
#include <stdint.h>

struct sl_dedup;

/* A set remembering at most max_ids ids for window_ms. NULL when out of
 * memory or a limit is 0. */
struct sl_dedup *sl_dedup_new(uint32_t window_ms, uint32_t max_ids,
                              uint64_t seed);
void sl_dedup_free(struct sl_dedup *d);

/* The keyed hash of an id (never 0). */
uint64_t sl_dedup_hash(const struct sl_dedup *d, const void *id, size_t len);

/* Was the id of this hash seen within the window? */
int sl_dedup_seen(struct sl_dedup *d, uint64_t hash, uint64_t now);

/* Remember it as seen at now (the oldest id makes room when full). No-op
 * when it is already remembered. */
void sl_dedup_add(struct sl_dedup *d, uint64_t hash, uint64_t now);

/* Ids remembered now. */
uint32_t sl_dedup_count(const struct sl_dedup *d);

#endif
