/* event.h - the event as it travels: one heap block holding its canonical
 * msgpack map (id, topic, key, time, headers, payload) and the offsets of
 * its fields, shared by reference count between the queues that hold it.
 * One worker owns an event at a time, so counts are not atomic. */
#ifndef SL_EVENT_H
#define SL_EVENT_H

/* What sluice may add to an event a producer sent within max_event_bytes:
 * ingest's id, time and traceparent, a dead letter's sluice-* headers. A
 * sluice peer that announced itself (the native hello) may send events
 * this much larger, so an event that grew on its way is never refused by
 * the next sluice; anything beyond is never sent (the output refuses it). */
#define SL_EVENT_HEADROOM 4096u

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "common.h"

struct sl_track;

struct sl_event {
  uint32_t refs;
  uint32_t len;                  /* bytes of the msgpack map in data */
  uint32_t id_off, id_len;       /* string bytes of id */
  uint32_t topic_off, topic_len; /* string bytes of topic */
  uint32_t key_off, key_len;     /* key_off == 0: no key */
  uint32_t headers_off, headers_len; /* raw map; headers_len == 0: none */
  uint32_t payload_off, payload_len; /* raw value; payload_len == 0: none */
  uint32_t headers_count;
  uint32_t block;      /* allocation: 0 malloc, else a pool size class + 1 */
  uint32_t schema_version; /* the contract version it was checked against
                              (sl_config_version_parse code); 0: none */
  int64_t time;        /* ns since the epoch */
  uint64_t ingest_ns;  /* monotonic ns at ingest, for latency */
  struct sl_track *track; /* NULL unless its input tracks it to its end */
  uint8_t data[];
};

/* Makes ids unique: a random prefix per generator and a counter. One per
 * worker; not shared between threads. */
struct sl_idgen {
  uint64_t prefix;
  uint64_t counter;
  uint64_t rng; /* xorshift state for trace and span ids */
};

void sl_idgen_init(struct sl_idgen *g);

/* Build an event from its parts (raw msgpack headers and payload are
 * copied). id.p == NULL or time_missing: assigned from g and now. When
 * trace is set and the headers lack a valid W3C traceparent, one is
 * added (a new trace id and span id from g). Returns a new event with
 * one reference, or NULL when out of memory. */
struct sl_event *sl_event_new(struct sl_idgen *g, struct sl_str id,
                              struct sl_str topic, struct sl_str key,
                              int has_time, int64_t time,
                              const uint8_t *headers, size_t headers_len,
                              const uint8_t *payload, size_t payload_len,
                              int trace);

/* Writes an event's payload in place at dst and returns its length. */
typedef size_t (*sl_event_fill_fn)(void *ctx, uint8_t *dst);

/* sl_event_new for a payload written straight into the event's block by
 * fill (at most payload_max bytes), so a changed payload is not built
 * elsewhere and copied: time is given, no trace context is added, no
 * clock is read (ingest_ns is 0: the caller sets it). NULL on ENOMEM. */
struct sl_event *sl_event_new_fill(struct sl_idgen *g, struct sl_str id,
                                   struct sl_str topic, struct sl_str key,
                                   int64_t time, const uint8_t *headers,
                                   size_t headers_len, size_t payload_max,
                                   sl_event_fill_fn fill, void *ctx);

/* A copy of ev (its id, topic, key, time and headers, ingest_ns, schema
 * version and track) whose payload fill writes in place (at most
 * payload_max bytes): a rule's change to the payload alone, built in one
 * block with the bytes before the payload copied as they are. NULL on
 * ENOMEM. */
struct sl_event *sl_event_with_payload(const struct sl_event *ev,
                                       size_t payload_max,
                                       sl_event_fill_fn fill, void *ctx);

/* Build an event from a parsed wire view; see sl_event_new. */
struct sl_event *sl_event_from_view(struct sl_idgen *g,
                                    const struct sl_event_view *v, int trace);

/* The same with the clocks given: now (sl_now_ns) for a missing time, mono
 * (sl_mono_ns) for ingest_ns. An input reads them once per batch. */
struct sl_event *sl_event_from_view_at(struct sl_idgen *g,
                                       const struct sl_event_view *v,
                                       int trace, int64_t now, uint64_t mono);

/* Copy of ev with one header set (added or replaced). NULL on ENOMEM. */
struct sl_event *sl_event_with_header(const struct sl_event *ev,
                                      const char *name, const char *value,
                                      size_t value_len);

static inline void sl_event_ref(struct sl_event *ev) { ev->refs++; }
/* Frees ev, its last reference gone (ends its track's piece). */
void sl_event_free(struct sl_event *ev);
/* Inline: every event is let go of two or three times on its way. */
static inline void sl_event_unref(struct sl_event *ev) {
  if (ev != NULL && --ev->refs == 0)
    sl_event_free(ev);
}

/* ---- tracking an event to its end ---------------------------------------
 * An input that may only let go of what it read once the engine is done
 * with it (a broker input commits an offset, acks a message) tracks each
 * event it submits. The engine is done with an event once every event
 * object carrying its track is freed: delivered by every output it was
 * routed to, written to their disk buffers, or dropped or dead-lettered on
 * purpose (a rule's drop, unrouted, a full queue's drop policy). Events
 * derived from it (sl_event_with_header: dead letters; a rule's change,
 * sl_event_share_track) share the track, so it ends when the last piece
 * does. A piece given up without that (a queue closed with events in it,
 * a held event at a forced stop, a disk buffer that refused it) fails the
 * track: done then runs with ok = 0 and the input must not let go of the
 * event (a broker redelivers it). ok = 1 covers disk buffers only up to
 * their write: call sl_worker_durable before letting go of events that may
 * have been spilled. Not thread-safe: one worker owns events and tracker. */
struct sl_tracker;
typedef void (*sl_tracker_done_cb)(struct sl_tracker *t, uint64_t token,
                                   int ok);

struct sl_tracker {
  sl_tracker_done_cb done;
  void *data;      /* the input's */
  uint64_t live;   /* tracks not ended yet */
  int closed;      /* the input went: no more callbacks */
};

struct sl_track {
  struct sl_tracker *t;
  uint64_t token;    /* the input's name for the event (an offset) */
  uint32_t holders;  /* event objects carrying it */
  int failed;
};

/* A tracker for an input; NULL on ENOMEM. */
struct sl_tracker *sl_tracker_new(sl_tracker_done_cb done, void *data);
/* The input goes: no callback runs after this; the tracker is freed once
 * the last of its tracks ends (events may outlive their input). */
void sl_tracker_close(struct sl_tracker *t);

/* Track ev (untracked, as the input built it) under token. 0 or
 * SL_ENOMEM. */
int sl_event_track(struct sl_event *ev, struct sl_tracker *t, uint64_t token);
/* to (a new event built from from's content) carries from's track too. */
void sl_event_share_track(const struct sl_event *from, struct sl_event *to);
/* The holder gives ev up without the engine being done with it. */
void sl_event_fail_track(struct sl_event *ev);

static inline struct sl_str sl_event_topic(const struct sl_event *ev) {
  struct sl_str s = {(const char *)ev->data + ev->topic_off, ev->topic_len};
  return s;
}
static inline struct sl_str sl_event_key(const struct sl_event *ev) {
  struct sl_str s = {ev->key_off ? (const char *)ev->data + ev->key_off : NULL,
                     ev->key_len};
  return s;
}
static inline struct sl_str sl_event_id(const struct sl_event *ev) {
  struct sl_str s = {(const char *)ev->data + ev->id_off, ev->id_len};
  return s;
}

/* Is s a valid W3C traceparent (version 00, non-zero ids)? */
int sl_event_traceparent_valid(const char *s, size_t n);

#endif
