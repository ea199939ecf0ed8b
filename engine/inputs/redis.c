/* redis.c - the redis input: reads streams as one consumer of a consumer
 * group (XREADGROUP) with hiredis 0.14's async client on the worker's
 * loop, and acknowledges an entry (XACK) only once the engine is done with
 * its event: the event tracker's done callback with ok, after
 * sl_worker_durable says the disk buffers hold what was submitted. Acks
 * are batched: many ids per XACK, one XACK per stream per loop turn,
 * pipelined. A track that failed (ok = 0) leaves its entry pending.
 *
 * On each connect the consumer first re-reads its own pending entries
 * (XREADGROUP ... 0: what a previous run with the same consumer name read
 * and never acked), then new ones (>). Every claim_interval_ms it takes
 * over entries pending longer than claim_idle_ms with XAUTOCLAIM: those of
 * a consumer that died, and its own whose events failed. Entries whose
 * events are still in flight here are never taken twice. While the
 * pipeline pushes back (sl_worker_submit: SL_EAGAIN), or max_inflight
 * events are not done, it sends no XREADGROUP.
 *
 * An entry that does not map to an event goes to the dead letter (with
 * sluice-error) and is acked once the dead letter took it; the stream
 * never stalls on it. See the README for the field mapping. Owns its
 * hiredis context, timers, tracker and the events it read but did not
 * submit yet. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "redis.h"
#include "worker.h"
#include "plugins.h"

enum { FMT_JSON, FMT_EVENT, FMT_RAW, FMT_FIELDS };

#define ACK_MAX 512 /* ids per XACK */

struct rin_id {
  uint64_t ms, seq;
  uint32_t stream;
};

struct rin_list {
  uint32_t *v; /* slots */
  size_t n, cap;
};

struct rin_slot {
  struct rin_id id;
  int used;
};

struct redis_in;

/* A connection: reads (XREADGROUP may block it for block_ms) and acks
 * (XACK, XPENDING) each have one, so an ack never waits behind a blocked
 * read. */
struct rin_conn {
  struct redis_in *ri;
  const char *role;         /* "read" or "ack", for the log */
  struct sl_redis_dial dial;
  redisAsyncContext *ac;    /* NULL while down */
  uv_timer_t timer;         /* the reconnect backoff; the connect's and
                               (read) the reply's deadline */
  uint32_t backoff_ms;
  int connected, was_down, down_logged;
};

struct redis_in {
  struct sl_input *in;
  struct sl_worker *w;
  struct sl_source src;
  struct sl_tracker *tracker;
  struct sl_durable durable;
  struct rin_conn rd, ak;
  uv_timer_t tick;          /* claims and the XPENDING summary */
  uv_timer_t later;         /* a read after an error */
  uv_idle_t flush;          /* acks of one loop turn go together */
  int handles;              /* open handles (closing counts down) */
  const char *address, *group, *topic, *start_id;
  char consumer[128];
  char **streams;
  int nstreams;
  char (*cursor)[48];       /* per stream: an id while re-reading its own
                               pending entries, ">" after */
  char (*claim)[48];        /* per stream: XAUTOCLAIM's cursor */
  uint32_t count, block_ms, claim_idle_ms, claim_interval_ms, max_inflight;
  uint32_t timeout_ms;      /* a connect, or a reply beyond block_ms */
  int format, create_group;
  int reading, paused, draining, stopping;
  int claim_due, claim_stream;
  /* an entry too large to read (its reply is over the bounds: the
   * connection drops, and the entry, pending, would be re-read and drop
   * it at every connect): after such a drop the history is read one entry
   * of one stream at a time (careful); a careful read that drops points
   * at the entry after its cursor, whose id XPENDING gives without its
   * fields, and it goes to the dead letter unread */
  int careful;
  int probe_stream;         /* the careful read in flight: its stream, -1 */
  char probe_cursor[48];    /* and its cursor */
  int suspect;              /* 1 + the stream whose next pending entry
                               dropped a careful read; 0: none */
  char suspect_cursor[48];
  char suspect_why[64];
  int need_group;           /* XGROUP CREATE before the next read */
  uint64_t *pending_of;     /* per stream: XPENDING's count */
  /* events read and not submitted yet, in order */
  struct sl_event **batch;
  uint32_t batch_n, batch_i, batch_cap;
  /* entries held from their read until their XACK is answered: token =
   * index */
  struct rin_slot *slots;
  uint32_t *free_slots, nfree;
  struct rin_list ready;    /* done with ok: to ack once durable */
  struct rin_list durable_ids; /* waiting for sl_worker_durable */
  uint64_t acks_sent;       /* ids in XACKs not answered */
  /* metrics */
  uint64_t inflight, acked, claimed, pending, reconnects, dead_lettered,
      failed, deleted, redelivered, lag;
  uint64_t *lag_of;         /* per stream: XINFO GROUPS' lag */
  struct sl_log_limiter log;
  struct sl_log_limiter conn_log; /* connects and outages: a flapping
                                     server must not flood the log */
};

static const struct sl_metric m_inflight = {
    "sluice_redis_input_inflight",
    "Entries read and not acknowledged yet.",
    SL_METRIC_GAUGE, {"input", NULL}};
static const struct sl_metric m_acked = {
    "sluice_redis_input_acked_total", "Entries acknowledged with XACK.",
    SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_claimed = {
    "sluice_redis_input_claimed_total",
    "Entries taken over from idle consumers (XAUTOCLAIM).",
    SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_pending = {
    "sluice_redis_input_pending",
    "Entries pending in the group (XPENDING, all consumers), last look.",
    SL_METRIC_GAUGE, {"input", NULL}};
static const struct sl_metric m_reconnects = {
    "sluice_redis_input_reconnects_total",
    "Connections to redis lost or refused.", SL_METRIC_COUNTER,
    {"input", NULL}};
static const struct sl_metric m_dead = {
    "sluice_redis_input_dead_lettered_total",
    "Entries that did not map to an event, sent to the dead letter.",
    SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_failed = {
    "sluice_redis_input_failed_total",
    "Events the engine gave up on; their entries stay pending.",
    SL_METRIC_COUNTER, {"input", NULL}};

static const struct sl_metric m_redelivered = {
    "sluice_redis_input_redelivered_total",
    "Entries read again: its own pending ones at a connect, and claimed.",
    SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_lag = {
    "sluice_redis_input_lag",
    "Entries in the streams the group has not read yet (XINFO GROUPS).",
    SL_METRIC_GAUGE, {"input", NULL}};

static void read_next(struct redis_in *ri);
static void pump(struct redis_in *ri);

/* ---- ids ------------------------------------------------------------- */

static int parse_id(const char *s, size_t n, struct rin_id *id) {
  char buf[48], *end;
  if (n == 0 || n >= sizeof(buf))
    return -1;
  memcpy(buf, s, n);
  buf[n] = '\0';
  id->ms = strtoull(buf, &end, 10);
  if (*end != '-')
    return -1;
  id->seq = strtoull(end + 1, &end, 10);
  return *end ? -1 : 0;
}

static int list_push(struct rin_list *a, uint32_t slot) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 256;
    uint32_t *v = realloc(a->v, cap * sizeof(*v));
    if (v == NULL)
      return SL_ENOMEM;
    a->v = v;
    a->cap = cap;
  }
  a->v[a->n++] = slot;
  return 0;
}

/* Is the entry held here (its event in the engine, or its ack on the
 * way)? Re-reading pending entries and claiming must not take it twice. */
static int in_flight(const struct redis_in *ri, const struct rin_id *id) {
  uint32_t i;
  if (ri->inflight == 0)
    return 0;
  for (i = 0; i < ri->max_inflight; i++) {
    const struct rin_slot *s = &ri->slots[i];
    if (s->used && s->id.ms == id->ms && s->id.seq == id->seq &&
        s->id.stream == id->stream)
      return 1;
  }
  return 0;
}

/* Hold an entry from its read until its XACK is answered (or given up):
 * a slot, or -1 when max_inflight are held. */
static int64_t hold(struct redis_in *ri, const struct rin_id *id) {
  uint32_t slot;
  if (ri->nfree == 0)
    return -1;
  slot = ri->free_slots[--ri->nfree];
  ri->slots[slot].id = *id;
  ri->slots[slot].used = 1;
  ri->inflight++;
  return slot;
}

static void release(struct redis_in *ri, uint32_t slot) {
  ri->slots[slot].used = 0;
  ri->free_slots[ri->nfree++] = slot;
  ri->inflight--;
}

/* ---- acks ------------------------------------------------------------ */

/* The slots one XACK covers (its privdata). */
struct rin_xack {
  uint32_t n;
  uint32_t slots[ACK_MAX];
};

static void on_xack(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_in *ri = ac->data;
  struct rin_xack *x = priv;
  redisReply *r = reply;
  uint64_t suppressed;
  uint32_t i;
  if (ri == NULL || ri->stopping) {
    free(x);
    return;
  }
  ri->acks_sent -= x->n < ri->acks_sent ? x->n : ri->acks_sent;
  for (i = 0; i < x->n; i++)
    release(ri, x->slots[i]);
  if (r && r->type == REDIS_REPLY_INTEGER) {
    ri->acked += (uint64_t)r->integer;
    ri->ak.backoff_ms = 0; /* it answered */
  } else if (sl_log_allow(&ri->log, &suppressed)) {
    /* not acked: they stay pending, read again (duplicates) */
    sl_log(SL_LOG_WARN, "redis input: XACK failed; entries stay pending",
           SL_S("input", ri->in->cfg->name), SL_U("entries", x->n),
           SL_S("error", sl_redis_error(ac, r)),
           SL_U("suppressed", suppressed), SL_END);
  }
  free(x);
  read_next(ri); /* max_inflight may have held it back */
}

/* One XACK for the durable slots of stream s from *i on, up to ACK_MAX. */
static void send_xack(struct redis_in *ri, int s, size_t *i) {
  const char *argv[3 + ACK_MAX];
  size_t lens[3 + ACK_MAX];
  char ids[ACK_MAX][48];
  struct rin_xack *x = malloc(sizeof(*x));
  uint32_t j = 0, k;
  argv[0] = "XACK";
  argv[1] = ri->streams[s];
  argv[2] = ri->group;
  for (k = 0; k < 3; k++)
    lens[k] = strlen(argv[k]);
  for (; *i < ri->durable_ids.n && j < ACK_MAX; (*i)++) {
    uint32_t slot = ri->durable_ids.v[*i];
    const struct rin_id *id = &ri->slots[slot].id;
    if (id->stream != (uint32_t)s)
      continue;
    lens[3 + j] = (size_t)snprintf(ids[j], sizeof(ids[j]), "%llu-%llu",
                                   (unsigned long long)id->ms,
                                   (unsigned long long)id->seq);
    argv[3 + j] = ids[j];
    if (x)
      x->slots[j] = slot;
    else
      release(ri, slot); /* no memory: left pending */
    j++;
  }
  if (x == NULL || j == 0) {
    free(x);
    return;
  }
  x->n = j;
  if (redisAsyncCommandArgv(ri->ak.ac, on_xack, x, (int)(3 + j), argv,
                            lens) == REDIS_OK) {
    ri->acks_sent += j;
    return;
  }
  for (k = 0; k < j; k++)
    release(ri, x->slots[k]);
  free(x);
}

/* XACK the durable slots, per stream, up to ACK_MAX ids a command. */
static void send_acks(struct redis_in *ri) {
  size_t i;
  int s;
  if (!ri->ak.connected) {
    /* down: kept for the next connect */
    for (i = 0; i < ri->durable_ids.n; i++)
      list_push(&ri->ready, ri->durable_ids.v[i]);
    ri->durable_ids.n = 0;
    return;
  }
  for (s = 0; s < ri->nstreams; s++)
    for (i = 0; i < ri->durable_ids.n;)
      send_xack(ri, s, &i);
  ri->durable_ids.n = 0;
}

/* The ids ready now wait for the disk buffers to hold every event
 * submitted so far (which covers theirs), then go out. */
static void flush_acks(struct redis_in *ri) {
  struct rin_list t;
  size_t i;
  int rc;
  uint64_t suppressed;
  if (ri->durable.waiting || ri->ready.n == 0 || ri->stopping)
    return;
  t = ri->durable_ids; /* empty: swap the lists */
  ri->durable_ids = ri->ready;
  ri->ready = t;
  rc = sl_worker_durable(ri->w, &ri->durable);
  if (rc == 0) {
    send_acks(ri);
  } else if (rc == SL_EIO) {
    /* a disk buffer cannot write: never ack what it may lose; the
     * entries stay pending and are claimed again */
    if (sl_log_allow(&ri->log, &suppressed))
      sl_log(SL_LOG_WARN, "redis input: a disk buffer cannot write; "
             "entries stay pending", SL_S("input", ri->in->cfg->name),
             SL_U("entries", ri->durable_ids.n),
             SL_U("suppressed", suppressed), SL_END);
    for (i = 0; i < ri->durable_ids.n; i++)
      release(ri, ri->durable_ids.v[i]);
    ri->durable_ids.n = 0;
    read_next(ri);
  } /* SL_EAGAIN: on_durable */
}

static void on_flush(uv_idle_t *h) {
  struct redis_in *ri = h->data;
  uv_idle_stop(h);
  flush_acks(ri);
}

static void on_durable(struct sl_durable *d) {
  struct redis_in *ri = container_of(d, struct redis_in, durable);
  if (ri->stopping)
    return;
  send_acks(ri);
  if (ri->ready.n)
    uv_idle_start(&ri->flush, on_flush);
}

/* An entry to ack without an event (deleted from the stream, or dropped
 * without a dead letter); not held: it stays pending. */
static void ack_only(struct redis_in *ri, const struct rin_id *id) {
  int64_t slot = hold(ri, id);
  if (slot < 0)
    return;
  if (list_push(&ri->ready, (uint32_t)slot) != 0) {
    release(ri, (uint32_t)slot);
    return;
  }
  uv_idle_start(&ri->flush, on_flush);
}

/* The tracker: the engine is done with the event of slot token. */
static void on_done(struct sl_tracker *t, uint64_t token, int ok) {
  struct redis_in *ri = t->data;
  if (ok && list_push(&ri->ready, (uint32_t)token) == 0) {
    uv_idle_start(&ri->flush, on_flush); /* held until its XACK's reply */
    return;
  }
  if (!ok)
    ri->failed++; /* stays pending: read again or claimed */
  release(ri, (uint32_t)token);
  read_next(ri); /* max_inflight may have held it back */
}

/* ---- entries to events ------------------------------------------------- */

static int track(struct redis_in *ri, struct sl_event *ev,
                 const struct rin_id *id) {
  int64_t slot = hold(ri, id);
  if (slot < 0)
    return SL_ENOMEM;
  if (sl_event_track(ev, ri->tracker, (uint64_t)slot) != 0) {
    release(ri, (uint32_t)slot);
    return SL_ENOMEM;
  }
  return 0;
}

static const redisReply *field(const redisReply *f, const char *name) {
  size_t i, n = strlen(name);
  for (i = 0; i + 1 < f->elements; i += 2)
    if (f->element[i]->len == n && memcmp(f->element[i]->str, name, n) == 0)
      return f->element[i + 1];
  return NULL;
}

static int reserved(const redisReply *k) {
  static const char *const names[] = {"id", "topic", "key", "time", NULL};
  int i;
  if (k->len >= 2 && memcmp(k->str, "h:", 2) == 0)
    return 1;
  for (i = 0; names[i]; i++)
    if (k->len == strlen(names[i]) && memcmp(k->str, names[i], k->len) == 0)
      return 1;
  return 0;
}

/* The headers map: h:<name> fields, then this entry's redis-id and
 * redis-stream. */
static int put_headers(struct sl_buf *b, const redisReply *f,
                       const redisReply *id, const char *stream,
                       uint32_t *count) {
  size_t i, at = b->len;
  uint32_t n = 2;
  int rc = sl_buf_append(b, "\0\0\0\0\0", 5);
  for (i = 0; rc == 0 && i + 1 < f->elements; i += 2) {
    const redisReply *k = f->element[i], *v = f->element[i + 1];
    if (k->len < 3 || memcmp(k->str, "h:", 2) != 0 ||
        (k->len == 10 && memcmp(k->str, "h:redis-id", 10) == 0) ||
        (k->len == 14 && memcmp(k->str, "h:redis-stream", 14) == 0))
      continue; /* this entry's replace what an earlier hop set */
    rc = sl_codec_put_str(b, k->str + 2, k->len - 2);
    if (rc == 0)
      rc = sl_codec_put_str(b, v->str, v->len);
    n++;
  }
  if (rc == 0)
    rc = sl_codec_put_str(b, "redis-id", 8);
  if (rc == 0)
    rc = sl_codec_put_str(b, id->str, id->len);
  if (rc == 0)
    rc = sl_codec_put_str(b, "redis-stream", 12);
  if (rc == 0)
    rc = sl_codec_put_str(b, stream, strlen(stream));
  if (rc == 0)
    sl_codec_patch_header(b, at, 1, n);
  *count = n;
  return rc;
}

/* The payload: per format, from the payload field or all plain fields. */
static const char *put_payload(struct redis_in *ri, struct sl_buf *b,
                               const redisReply *f, char *err,
                               size_t errlen) {
  const redisReply *p;
  size_t i, at;
  uint32_t n = 0;
  if (ri->format == FMT_FIELDS) {
    at = b->len;
    if (sl_buf_append(b, "\0\0\0\0\0", 5) != 0)
      return "out of memory";
    for (i = 0; i + 1 < f->elements; i += 2) {
      if (reserved(f->element[i]))
        continue;
      if (sl_codec_put_str(b, f->element[i]->str, f->element[i]->len) ||
          sl_codec_put_str(b, f->element[i + 1]->str,
                           f->element[i + 1]->len))
        return "out of memory";
      n++;
    }
    sl_codec_patch_header(b, at, 1, n);
    return NULL;
  }
  if ((p = field(f, "payload")) == NULL)
    /* sluice writes an id always, and no payload field for an event
     * without one; anyone else's entry without payload is a mistake */
    return field(f, "id") ? NULL : "no payload field";
  if (ri->format == FMT_RAW)
    return sl_codec_put_str(b, p->str, p->len) ? "out of memory" : NULL;
  if (sl_json_to_msgpack(p->str, p->len, b, err, errlen) != 0)
    return err;
  return NULL;
}

/* One entry (fields: the flat field/value array) as an event; NULL with
 * *why set when it does not map to one. */
static struct sl_event *entry_event(struct redis_in *ri, int s,
                                    const redisReply *id,
                                    const redisReply *f, const char **why,
                                    char *err, size_t errlen) {
  struct sl_buf h, p;
  struct sl_event *ev = NULL;
  const redisReply *v;
  struct sl_str eid = {NULL, 0}, topic, key = {NULL, 0};
  uint32_t hcount;
  int64_t time = 0;
  int has_time = 0;
  sl_buf_init(&h);
  sl_buf_init(&p);
  topic.p = ri->topic ? ri->topic : ri->streams[s];
  topic.len = (uint32_t)strlen(topic.p);
  if ((v = field(f, "topic")) != NULL)
    topic.p = v->str, topic.len = (uint32_t)v->len;
  if ((v = field(f, "key")) != NULL)
    key.p = v->str, key.len = (uint32_t)v->len;
  if ((v = field(f, "id")) != NULL)
    eid.p = v->str, eid.len = (uint32_t)v->len;
  if ((v = field(f, "time")) != NULL) {
    char num[24], *end;
    snprintf(num, sizeof(num), "%.*s", (int)v->len, v->str);
    time = strtoll(num, &end, 10);
    has_time = v->len > 0 && v->len < sizeof(num) && *end == '\0';
    if (!has_time) {
      *why = "time is not a whole number of ns since the epoch";
      goto out;
    }
  }
  if (topic.len == 0) {
    *why = "empty topic";
    goto out;
  }
  if (put_headers(&h, f, id, ri->streams[s], &hcount) != 0) {
    *why = "out of memory";
    goto out;
  }
  if ((*why = put_payload(ri, &p, f, err, errlen)) != NULL)
    goto out;
  ev = sl_event_new(&ri->w->idgen, eid, topic, key, has_time, time, h.data,
                    h.len, p.len ? p.data : NULL, p.len, 1);
  if (ev == NULL)
    *why = "out of memory";
out:
  sl_buf_close(&h);
  sl_buf_close(&p);
  return ev;
}

/* format = "event": the event field holds a msgpack event map. */
static struct sl_event *entry_msgpack(struct redis_in *ri, int s,
                                      const redisReply *id,
                                      const redisReply *f, const char **why,
                                      char *err, size_t errlen) {
  const redisReply *v = field(f, "event");
  struct sl_codec_error cerr;
  struct sl_event_view view;
  struct sl_event *ev, *a;
  size_t used = 0;
  int rc;
  if (v == NULL) {
    *why = "no event field";
    return NULL;
  }
  memset(&cerr, 0, sizeof(cerr));
  rc = sl_codec_skip((const uint8_t *)v->str, v->len, v->len, &used, &cerr);
  if (rc == 0 && used != v->len)
    snprintf(cerr.msg, sizeof(cerr.msg), "bytes after the event");
  if (rc != 0 && cerr.msg[0] == '\0')
    snprintf(cerr.msg, sizeof(cerr.msg), "not complete msgpack");
  if (rc != 0 || used != v->len ||
      sl_codec_parse_event((const uint8_t *)v->str, v->len, &view,
                           &cerr) != 0) {
    snprintf(err, errlen, "event field is not a msgpack event: %s",
             cerr.msg);
    *why = err;
    return NULL;
  }
  ev = sl_event_from_view(&ri->w->idgen, &view, 1);
  a = ev ? sl_event_with_header(ev, "redis-id", id->str, id->len) : NULL;
  sl_event_unref(ev);
  ev = a ? sl_event_with_header(a, "redis-stream", ri->streams[s],
                                strlen(ri->streams[s]))
         : NULL;
  sl_event_unref(a);
  if (ev == NULL)
    *why = "out of memory";
  return ev;
}

/* ---- the dead letter --------------------------------------------------- */

/* An entry that is no event goes to the dead letter as one: topic the
 * stream, its fields as a map payload (none when it is too big), the
 * reason in sluice-error. Tracked like any event, so it is acked once the
 * dead letter took it; without a dead letter it is acked now (dropped,
 * logged). Never holds the stream up: a dead letter that cannot take it
 * now leaves it pending, to be claimed again. */
static void dead_letter(struct redis_in *ri, int s, const redisReply *id,
                        const redisReply *f, const char *why, int big) {
  struct sl_worker *w = ri->w;
  struct sl_output *dl = NULL;
  struct sl_buf h, p;
  struct sl_str none = {NULL, 0}, topic = {ri->streams[s], 0};
  struct sl_event *ev = NULL;
  struct rin_id rid;
  size_t i;
  uint64_t suppressed;
  int rc = 0;
  ri->in->stats.bad_input++;
  if (sl_log_allow(&w->bad_input_log, &suppressed))
    sl_log(SL_LOG_WARN, "redis input: entry is not an event; sent to the "
           "dead letter", SL_S("input", ri->in->cfg->name),
           SL_S("stream", ri->streams[s]), SL_N("entry", id->str, id->len),
           SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
  if (parse_id(id->str, id->len, &rid) != 0)
    return;
  rid.stream = (uint32_t)s;
  if (w->cfg->dead_letter >= 0 && w->cfg->dead_letter < w->noutputs &&
      !w->outputs[w->cfg->dead_letter].stopped)
    dl = &w->outputs[w->cfg->dead_letter];
  if (dl == NULL) {
    ack_only(ri, &rid); /* dropped on purpose */
    return;
  }
  topic.len = (uint32_t)strlen(topic.p);
  sl_buf_init(&h);
  sl_buf_init(&p);
  rc |= sl_codec_put_map(&h, 4);
  rc |= sl_codec_put_str(&h, "sluice-error", 12);
  rc |= sl_codec_put_str(&h, why, strlen(why));
  rc |= sl_codec_put_str(&h, "sluice-input", 12);
  rc |= sl_codec_put_str(&h, ri->in->cfg->name, strlen(ri->in->cfg->name));
  rc |= sl_codec_put_str(&h, "redis-id", 8);
  rc |= sl_codec_put_str(&h, id->str, id->len);
  rc |= sl_codec_put_str(&h, "redis-stream", 12);
  rc |= sl_codec_put_str(&h, topic.p, topic.len);
  if (!big) {
    rc |= sl_codec_put_map(&p, (uint32_t)(f->elements / 2));
    for (i = 0; i + 1 < f->elements; i += 2) {
      rc |= sl_codec_put_str(&p, f->element[i]->str, f->element[i]->len);
      rc |= sl_codec_put_str(&p, f->element[i + 1]->str,
                             f->element[i + 1]->len);
    }
  }
  if (rc == 0)
    ev = sl_event_new(&w->idgen, none, topic, none, 0, 0, h.data, h.len,
                      p.len ? p.data : NULL, p.len, 1);
  sl_buf_close(&h);
  sl_buf_close(&p);
  if (ev == NULL || track(ri, ev, &rid) != 0) {
    sl_event_unref(ev); /* untracked: stays pending */
    return;
  }
  rc = sl_output_push(dl, ev);
  if (rc == 0)
    ri->dead_lettered++;
  else if (rc != SL_E2BIG)
    sl_event_fail_track(ev); /* cannot take it now: stays pending */
  sl_event_unref(ev); /* E2BIG: dropped by its policy, on purpose */
}

/* ---- reading ----------------------------------------------------------- */

static int batch_add(struct redis_in *ri, struct sl_event *ev) {
  if (ri->batch_n == ri->batch_cap) {
    uint32_t cap = ri->batch_cap ? ri->batch_cap * 2 : 64;
    struct sl_event **b = realloc(ri->batch, cap * sizeof(*b));
    if (b == NULL)
      return SL_ENOMEM;
    ri->batch = b;
    ri->batch_cap = cap;
  }
  ri->batch[ri->batch_n++] = ev;
  return 0;
}

/* One entry [id, fields] of stream s: an event for the batch, the dead
 * letter, or (deleted since it was read: fields nil) an ack. history: it
 * was pending already (re-read or claimed): skip it when its event is in
 * flight here. */
static void take_entry(struct redis_in *ri, int s, const redisReply *e,
                       int history) {
  const redisReply *id, *f;
  struct rin_id rid;
  struct sl_event *ev;
  const char *why = NULL;
  char err[200];
  size_t i, bytes = 0;
  uint32_t max = ri->w->cfg->max_event_bytes;
  if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
      e->element[0]->type != REDIS_REPLY_STRING)
    return;
  id = e->element[0];
  f = e->element[1];
  if (parse_id(id->str, id->len, &rid) != 0)
    return;
  rid.stream = (uint32_t)s;
  if (history && in_flight(ri, &rid))
    return;
  ri->redelivered += history;
  if (f->type != REDIS_REPLY_ARRAY) {
    ri->deleted++; /* gone from the stream: nothing to deliver */
    ack_only(ri, &rid);
    return;
  }
  for (i = 0; i < f->elements; i++) {
    if (f->element[i]->type != REDIS_REPLY_STRING) {
      dead_letter(ri, s, id, f, "a field is not a string", 1);
      return;
    }
    bytes += f->element[i]->len;
  }
  if (bytes > max || f->elements % 2) {
    snprintf(err, sizeof(err), f->elements % 2 ? "odd field list"
             : "entry larger than max_event_bytes (%u)", max);
    dead_letter(ri, s, id, f, err, 1);
    return;
  }
  ev = ri->format == FMT_EVENT
           ? entry_msgpack(ri, s, id, f, &why, err, sizeof(err))
           : entry_event(ri, s, id, f, &why, err, sizeof(err));
  if (ev && ev->len > max + SL_EVENT_HEADROOM) {
    sl_event_unref(ev);
    ev = NULL;
    snprintf(err, sizeof(err), "event larger than max_event_bytes (%u)",
             max);
    why = err;
  }
  if (ev == NULL) {
    dead_letter(ri, s, id, f, why, 0);
    return;
  }
  if (track(ri, ev, &rid) != 0 || batch_add(ri, ev) != 0) {
    sl_event_fail_track(ev); /* stays pending */
    sl_event_unref(ev);
    return;
  }
  ri->in->stats.events_in++;
  ri->in->stats.bytes_in += bytes;
}

static int stream_index(const struct redis_in *ri, const redisReply *name) {
  int s;
  for (s = 0; s < ri->nstreams; s++)
    if (strlen(ri->streams[s]) == name->len &&
        memcmp(ri->streams[s], name->str, name->len) == 0)
      return s;
  return -1;
}

static void on_conn_timeout(uv_timer_t *t);

/* A read is in flight: its reply is due within block_ms + timeout_ms, or
 * the server is taken for gone. */
static void reading(struct redis_in *ri) {
  ri->reading = 1;
  uv_timer_start(&ri->rd.timer, on_conn_timeout,
                 (uint64_t)ri->block_ms + ri->timeout_ms, 0);
}

static void read_done(struct redis_in *ri) {
  ri->reading = 0;
  ri->rd.backoff_ms = 0; /* it answered */
  uv_timer_stop(&ri->rd.timer);
}

/* Wait a second, then read again (an error reply). */
static void on_later_read(uv_timer_t *t) {
  read_next(t->data);
}

static void read_failed(struct redis_in *ri, redisAsyncContext *ac,
                        const redisReply *r, const char *what) {
  uint64_t suppressed;
  if (sl_log_allow(&ri->log, &suppressed))
    sl_log(SL_LOG_WARN, "redis input: read failed; trying again",
           SL_S("input", ri->in->cfg->name), SL_S("command", what),
           SL_S("error", sl_redis_error(ac, r)),
           SL_U("suppressed", suppressed), SL_END);
  if (r && r->str && strncmp(r->str, "NOGROUP", 7) == 0)
    ri->need_group = ri->create_group; /* the stream went (a restart) */
  uv_timer_start(&ri->later, on_later_read, 1000, 0);
}

static void on_read(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_in *ri = ac->data;
  redisReply *r = reply;
  size_t i, j;
  int history[64] = {0};
  int only;
  (void)priv;
  if (ri == NULL || ri->stopping || r == NULL)
    return; /* down: on_disconnect */
  read_done(ri);
  only = ri->probe_stream; /* a careful read names one stream */
  ri->probe_stream = -1;
  if (r->type == REDIS_REPLY_ERROR) {
    read_failed(ri, ac, r, "XREADGROUP");
    return;
  }
  if (r->type == REDIS_REPLY_ARRAY && !ri->draining) {
    for (i = 0; i < r->elements; i++) {
      const redisReply *sr = r->element[i], *entries;
      int s;
      if (sr->type != REDIS_REPLY_ARRAY || sr->elements != 2 ||
          sr->element[0]->type != REDIS_REPLY_STRING ||
          (s = stream_index(ri, sr->element[0])) < 0)
        continue;
      entries = sr->element[1];
      if (entries->type != REDIS_REPLY_ARRAY)
        continue;
      history[s % 64] = 1;
      if (strcmp(ri->cursor[s], ">") != 0) {
        /* re-reading its own pending entries: on from the last one */
        if (entries->elements == 0)
          strcpy(ri->cursor[s], ">");
        else {
          const redisReply *last = entries->element[entries->elements - 1];
          if (last->type == REDIS_REPLY_ARRAY && last->elements == 2 &&
              last->element[0]->len < sizeof(ri->cursor[s]))
            snprintf(ri->cursor[s], sizeof(ri->cursor[s]), "%.*s",
                     (int)last->element[0]->len, last->element[0]->str);
        }
        for (j = 0; j < entries->elements; j++)
          take_entry(ri, s, entries->element[j], 1);
      } else {
        for (j = 0; j < entries->elements; j++)
          take_entry(ri, s, entries->element[j], 0);
      }
    }
    /* a stream missing from a history reply has nothing pending */
    for (i = 0; i < (size_t)ri->nstreams; i++)
      if (strcmp(ri->cursor[i], ">") != 0 && !history[i % 64] &&
          r->elements > 0 && (only < 0 || (int)i == only))
        strcpy(ri->cursor[i], ">");
  }
  pump(ri);
}

static void on_claim(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_in *ri = ac->data;
  redisReply *r = reply;
  int s = (int)(uintptr_t)priv;
  size_t j;
  uint64_t before;
  if (ri == NULL || ri->stopping || r == NULL)
    return;
  read_done(ri);
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
      r->element[0]->type != REDIS_REPLY_STRING ||
      r->element[1]->type != REDIS_REPLY_ARRAY) {
    ri->claim_due = 0;
    read_failed(ri, ac, r, "XAUTOCLAIM");
    return;
  }
  snprintf(ri->claim[s], sizeof(ri->claim[s]), "%.*s",
           (int)r->element[0]->len, r->element[0]->str);
  if (strcmp(ri->claim[s], "0-0") == 0 && ++ri->claim_stream >= ri->nstreams)
    ri->claim_due = 0; /* every stream went round once */
  if (!ri->draining) {
    before = ri->in->stats.events_in + ri->in->stats.bad_input;
    for (j = 0; j < r->element[1]->elements; j++)
      take_entry(ri, s, r->element[1]->element[j], 1);
    ri->claimed += ri->in->stats.events_in + ri->in->stats.bad_input - before;
  }
  pump(ri);
}

static void on_group(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_in *ri = ac->data;
  redisReply *r = reply;
  uint64_t suppressed;
  (void)priv;
  if (ri == NULL || ri->stopping || r == NULL ||
      r->type != REDIS_REPLY_ERROR || strncmp(r->str, "BUSYGROUP", 9) == 0)
    return;
  if (sl_log_allow(&ri->log, &suppressed))
    sl_log(SL_LOG_WARN, "redis input: cannot create the group",
           SL_S("input", ri->in->cfg->name), SL_S("group", ri->group),
           SL_S("error", r->str), SL_U("suppressed", suppressed), SL_END);
}

/* XGROUP CREATE for each stream (MKSTREAM: the stream may not exist yet);
 * BUSYGROUP (it exists) is fine. Pipelined before the read that needs it. */
static void create_groups(struct redis_in *ri) {
  int s;
  ri->need_group = 0;
  for (s = 0; s < ri->nstreams; s++)
    redisAsyncCommand(ri->rd.ac, on_group, NULL, "XGROUP CREATE %s %s %s MKSTREAM",
                      ri->streams[s], ri->group, ri->start_id);
}

static void send_claim(struct redis_in *ri, uint32_t count) {
  int s = ri->claim_stream;
  char idle[24], n[24];
  snprintf(idle, sizeof(idle), "%u", ri->claim_idle_ms);
  snprintf(n, sizeof(n), "%u", count);
  if (redisAsyncCommand(ri->rd.ac, on_claim, (void *)(uintptr_t)s,
                        "XAUTOCLAIM %s %s %s %s %s COUNT %s", ri->streams[s],
                        ri->group, ri->consumer, idle, ri->claim[s],
                        n) == REDIS_OK)
    reading(ri);
}

/* XPENDING's answer for the suspect: [[id, consumer, idle, deliveries]],
 * the entry that cannot be read. It goes to the dead letter without its
 * fields, and the careful read goes on after it. */
static void on_probe(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_in *ri = ac->data;
  redisReply *r = reply, fields;
  const redisReply *e, *id;
  int s = (int)(uintptr_t)priv;
  struct rin_id rid;
  char why[128];
  if (ri == NULL || ri->stopping || r == NULL)
    return;
  read_done(ri);
  if (r->type != REDIS_REPLY_ARRAY) {
    read_failed(ri, ac, r, "XPENDING");
    return;
  }
  ri->suspect = 0;
  if (r->elements > 0 && (e = r->element[0])->type == REDIS_REPLY_ARRAY &&
      e->elements >= 1 && (id = e->element[0])->type == REDIS_REPLY_STRING &&
      id->len < sizeof(ri->cursor[s]) &&
      parse_id(id->str, id->len, &rid) == 0) {
    rid.stream = (uint32_t)s;
    snprintf(ri->cursor[s], sizeof(ri->cursor[s]), "%.*s", (int)id->len,
             id->str);
    if (!in_flight(ri, &rid)) {
      memset(&fields, 0, sizeof(fields));
      fields.type = REDIS_REPLY_ARRAY;
      snprintf(why, sizeof(why), "entry too large to read (%s)",
               ri->suspect_why);
      dead_letter(ri, s, id, &fields, why, 1);
    }
  } /* none: it went (deleted, trimmed); the careful read goes on */
  pump(ri);
}

static void send_probe(struct redis_in *ri) {
  int s = ri->suspect - 1;
  char start[50];
  snprintf(start, sizeof(start), "(%s", ri->suspect_cursor);
  if (redisAsyncCommand(ri->rd.ac, on_probe, (void *)(uintptr_t)s,
                        "XPENDING %s %s %s + 1 %s", ri->streams[s],
                        ri->group, start, ri->consumer) == REDIS_OK)
    reading(ri);
}

/* The next XREADGROUP (or XAUTOCLAIM when due), unless something holds
 * reading back: down, a read in flight, events not submitted yet (the
 * pipeline pushed back), max_inflight reached, draining. */
static void read_next(struct redis_in *ri) {
  const char *argv[10 + 2 * 64];
  char count[24], block[24];
  uint32_t room, n;
  int argc = 0, s, blocking = 1;
  if (!ri->rd.connected || ri->reading || ri->paused || ri->draining ||
      ri->stopping || ri->batch_i < ri->batch_n ||
      uv_is_active((uv_handle_t *)&ri->later))
    return;
  room = ri->max_inflight - (uint32_t)ri->inflight;
  n = room / (uint32_t)ri->nstreams; /* COUNT is per stream */
  if (n > ri->count)
    n = ri->count;
  if (n == 0)
    return; /* on_done reads on */
  if (ri->need_group)
    create_groups(ri);
  if (ri->suspect) {
    send_probe(ri);
    return;
  }
  if (ri->claim_due) {
    send_claim(ri, n);
    return;
  }
  for (s = 0; ri->careful && s < ri->nstreams; s++)
    if (strcmp(ri->cursor[s], ">") != 0)
      break;
  if (ri->careful && s == ri->nstreams)
    ri->careful = 0; /* the history is read: the entries it had are done */
  if (ri->careful) { /* one entry of stream s */
    ri->probe_stream = s;
    snprintf(ri->probe_cursor, sizeof(ri->probe_cursor), "%s", ri->cursor[s]);
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = ri->group;
    argv[argc++] = ri->consumer;
    argv[argc++] = "COUNT";
    argv[argc++] = "1";
    argv[argc++] = "STREAMS";
    argv[argc++] = ri->streams[s];
    argv[argc++] = ri->cursor[s];
    if (redisAsyncCommandArgv(ri->rd.ac, on_read, NULL, argc, argv, NULL) ==
        REDIS_OK)
      reading(ri);
    return;
  }
  snprintf(count, sizeof(count), "%u", n);
  snprintf(block, sizeof(block), "%u", ri->block_ms);
  argv[argc++] = "XREADGROUP";
  argv[argc++] = "GROUP";
  argv[argc++] = ri->group;
  argv[argc++] = ri->consumer;
  argv[argc++] = "COUNT";
  argv[argc++] = count;
  for (s = 0; s < ri->nstreams; s++)
    blocking &= strcmp(ri->cursor[s], ">") == 0;
  if (blocking) { /* history reads answer at once anyway */
    argv[argc++] = "BLOCK";
    argv[argc++] = block;
  }
  argv[argc++] = "STREAMS";
  for (s = 0; s < ri->nstreams; s++)
    argv[argc++] = ri->streams[s];
  for (s = 0; s < ri->nstreams; s++)
    argv[argc++] = ri->cursor[s];
  if (redisAsyncCommandArgv(ri->rd.ac, on_read, NULL, argc, argv, NULL) ==
      REDIS_OK)
    reading(ri);
}

/* Submit the batch in order; stop where the pipeline pushes back. */
static void pump(struct redis_in *ri) {
  while (ri->batch_i < ri->batch_n) {
    struct sl_event *ev = ri->batch[ri->batch_i++];
    int rc = sl_worker_submit(&ri->src, ev);
    if (rc == SL_EAGAIN) {
      ri->paused = 1; /* on_resume goes on */
      return;
    }
    /* SL_EIO: refused by a disk buffer; its track failed (stays pending) */
  }
  ri->batch_n = ri->batch_i = 0;
  read_next(ri);
}

static void on_resume(struct sl_source *src) {
  struct redis_in *ri = container_of(src, struct redis_in, src);
  ri->paused = 0;
  pump(ri);
}

/* ---- the connections --------------------------------------------------- */

static void connect_now(struct rin_conn *c);

static void on_reconnect(uv_timer_t *t) {
  connect_now(t->data);
}

static void down(struct rin_conn *c, const char *why) {
  struct redis_in *ri = c->ri;
  uint64_t suppressed = 0;
  c->ac = NULL;
  c->connected = 0;
  if (c == &ri->rd) {
    ri->reading = 0; /* what it read and never got is pending: re-read */
    if (strncmp(why, "reply ", 6) == 0) { /* over the bounds (net/redis.c) */
      ri->careful = 1;
      if (ri->probe_stream >= 0) {
        ri->suspect = ri->probe_stream + 1;
        memcpy(ri->suspect_cursor, ri->probe_cursor,
               sizeof(ri->suspect_cursor));
        snprintf(ri->suspect_why, sizeof(ri->suspect_why), "%s", why);
      }
    }
    ri->probe_stream = -1;
  } else
    ri->acks_sent = 0; /* not answered: pending, claimed again */
  ri->reconnects++;
  if (!c->down_logged && sl_log_allow(&ri->conn_log, &suppressed))
    sl_log(SL_LOG_WARN, "redis input disconnected; reconnecting with backoff",
           SL_S("input", ri->in->cfg->name), SL_S("connection", c->role),
           SL_S("address", ri->address), SL_S("error", why),
           SL_U("suppressed", suppressed), SL_END);
  c->down_logged = c->was_down = 1;
  if (ri->stopping)
    return;
  /* 100 ms doubling to 5 s, with jitter: many instances do not come back
   * all at once */
  c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : 100;
  if (c->backoff_ms > 5000)
    c->backoff_ms = 5000;
  uv_timer_start(&c->timer, on_reconnect,
                 c->backoff_ms / 2 + (uint64_t)rand() % (c->backoff_ms / 2 + 1),
                 0);
}

/* A connect that hangs (no SYN-ACK), or a read not answered in time:
 * drop the connection; it is made again with the backoff. */
static void on_conn_timeout(uv_timer_t *t) {
  struct rin_conn *c = t->data;
  redisAsyncContext *ac = c->ac;
  char why[64];
  if (ac == NULL || c->ri->stopping)
    return;
  if (!c->connected) {
    /* hiredis calls neither callback for a connect it did not finish */
    c->ac = NULL;
    redisAsyncFree(ac);
    snprintf(why, sizeof(why), "connect timed out after %u ms",
             c->ri->timeout_ms);
    down(c, why);
    return;
  }
  ac->c.err = REDIS_ERR_OTHER;
  snprintf(ac->c.errstr, sizeof(ac->c.errstr), "no reply within %u ms",
           c->ri->block_ms + c->ri->timeout_ms);
  ac->err = ac->c.err;
  ac->errstr = ac->c.errstr;
  redisAsyncFree(ac); /* on_disconnect: down */
}

static struct rin_conn *conn_of(struct redis_in *ri,
                                const redisAsyncContext *ac) {
  if (ri == NULL || ri->stopping)
    return NULL;
  return ri->rd.ac == ac ? &ri->rd : ri->ak.ac == ac ? &ri->ak : NULL;
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  struct rin_conn *c = conn_of(ac->data, ac);
  if (c)
    down(c, status == REDIS_OK && !ac->err ? "closed"
                                        : sl_redis_error(ac, NULL));
}

static void on_connect(const redisAsyncContext *ac, int status) {
  struct rin_conn *c = conn_of(ac->data, ac);
  struct redis_in *ri;
  uint64_t suppressed = 0;
  int s;
  if (c == NULL)
    return;
  if (status != REDIS_OK) {
    down(c, sl_redis_error(ac, NULL)); /* hiredis frees ac */
    return;
  }
  ri = c->ri;
  c->connected = 1;
  uv_timer_stop(&c->timer);
  /* the backoff starts over once the server answered (good_reply), not
   * here: a server that accepts and then fails must not be hammered */
  if (c->was_down && sl_log_allow(&ri->conn_log, &suppressed))
    sl_log(SL_LOG_INFO, "redis input connected",
           SL_S("input", ri->in->cfg->name), SL_S("connection", c->role),
           SL_S("address", ri->address), SL_S("group", ri->group),
           SL_S("consumer", ri->consumer), SL_U("suppressed", suppressed),
           SL_END);
  c->was_down = c->down_logged = 0;
  if (c == &ri->ak) {
    if (ri->ready.n)
      uv_idle_start(&ri->flush, on_flush); /* acks kept while down */
    return;
  }
  ri->need_group = ri->create_group;
  for (s = 0; s < ri->nstreams; s++) {
    strcpy(ri->cursor[s], "0-0"); /* its own pending entries first */
    strcpy(ri->claim[s], "0-0");
  }
  read_next(ri);
}

static void on_dialed(struct sl_redis_dial *d, redisAsyncContext *ac,
                      const char *why) {
  struct rin_conn *c = container_of(d, struct rin_conn, dial);
  if (ac == NULL) {
    if (!c->ri->stopping)
      down(c, why);
    return;
  }
  if (c->ri->stopping) {
    redisAsyncFree(ac);
    return;
  }
  c->ac = ac;
  uv_timer_start(&c->timer, on_conn_timeout, c->ri->timeout_ms, 0);
}

static void connect_now(struct rin_conn *c) {
  struct redis_in *ri = c->ri;
  if (ri->stopping || c->ac || c->dial.resolving)
    return;
  c->dial.data = ri;
  c->dial.on_connect = on_connect;
  c->dial.on_disconnect = on_disconnect;
  /* an entry is at most max_event_bytes (larger ones are refused by the
   * dead letter, but they must be read to be refused); arrays: fields of
   * an entry, entries of a reply, consumers of an XPENDING summary */
  c->dial.limits.max_bulk = (size_t)ri->w->cfg->max_event_bytes * 4 + 65536;
  c->dial.limits.max_elements = 1u << 20;
  sl_redis_dial(&c->dial, &ri->w->loop, ri->address, on_dialed);
}

static void on_xpending(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_in *ri = ac->data;
  redisReply *r = reply;
  int s = (int)(uintptr_t)priv, i;
  if (ri == NULL || ri->stopping || r == NULL ||
      r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
      r->element[0]->type != REDIS_REPLY_INTEGER)
    return;
  ri->pending_of[s] = (uint64_t)r->element[0]->integer;
  ri->ak.backoff_ms = 0; /* it answered */
  ri->pending = 0;
  for (i = 0; i < ri->nstreams; i++)
    ri->pending += ri->pending_of[i];
}

/* XINFO GROUPS: a map (RESP2: a flat array) per group of the stream;
 * ours has the lag (redis 7; nil while redis cannot tell). */
static void on_xinfo(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_in *ri = ac->data;
  redisReply *r = reply;
  int s = (int)(uintptr_t)priv, i;
  size_t g, k;
  if (ri == NULL || ri->stopping || r == NULL || r->type != REDIS_REPLY_ARRAY)
    return;
  for (g = 0; g < r->elements; g++) {
    const redisReply *m = r->element[g], *name = NULL, *lag = NULL;
    if (m->type != REDIS_REPLY_ARRAY)
      continue;
    for (k = 0; k + 1 < m->elements; k += 2) {
      const redisReply *key = m->element[k];
      if (key->type != REDIS_REPLY_STRING)
        continue;
      if (strcmp(key->str, "name") == 0)
        name = m->element[k + 1];
      else if (strcmp(key->str, "lag") == 0)
        lag = m->element[k + 1];
    }
    if (name && name->type == REDIS_REPLY_STRING &&
        strcmp(name->str, ri->group) == 0 && lag &&
        lag->type == REDIS_REPLY_INTEGER && lag->integer >= 0)
      ri->lag_of[s] = (uint64_t)lag->integer;
  }
  ri->lag = 0;
  for (i = 0; i < ri->nstreams; i++)
    ri->lag += ri->lag_of[i];
}

/* Every claim_interval_ms: the XPENDING summary and XINFO GROUPS (small
 * replies, one each per stream), and a round of XAUTOCLAIM over the
 * streams. */
static void on_tick(uv_timer_t *t) {
  struct redis_in *ri = t->data;
  int s;
  if (ri->draining)
    return;
  for (s = 0; s < ri->nstreams && ri->ak.connected; s++)
  {
    redisAsyncCommand(ri->ak.ac, on_xpending, (void *)(uintptr_t)s,
                      "XPENDING %s %s", ri->streams[s], ri->group);
    redisAsyncCommand(ri->ak.ac, on_xinfo, (void *)(uintptr_t)s,
                      "XINFO GROUPS %s", ri->streams[s]);
  }
  if (ri->claim_idle_ms && !ri->claim_due) {
    ri->claim_due = 1;
    ri->claim_stream = 0;
  }
  read_next(ri);
}

/* ---- the plugin -------------------------------------------------------- */

/* stream = "a,b": the names, split. 0 or SL_EINVAL / SL_ENOMEM. */
static int split_streams(struct redis_in *ri, const char *list) {
  const char *p = list;
  while (*p) {
    size_t n = strcspn(p, ", ");
    if (n) {
      char **v = realloc(ri->streams, (ri->nstreams + 1) * sizeof(*v));
      if (v == NULL)
        return SL_ENOMEM;
      ri->streams = v;
      if ((v[ri->nstreams] = strndup(p, n)) == NULL)
        return SL_ENOMEM;
      ri->nstreams++;
    }
    p += n;
    p += strspn(p, ", ");
  }
  return ri->nstreams > 0 && ri->nstreams <= 64 ? 0 : SL_EINVAL;
}

static int add_metrics(struct redis_in *ri) {
  struct sl_metric_registry *reg = ri->w->metrics;
  const char *v[] = {ri->in->cfg->name, NULL};
  int rc = 0;
  rc |= sl_metric_add_u64(reg, &m_inflight, v, &ri->inflight, ri);
  rc |= sl_metric_add_u64(reg, &m_acked, v, &ri->acked, ri);
  rc |= sl_metric_add_u64(reg, &m_claimed, v, &ri->claimed, ri);
  rc |= sl_metric_add_u64(reg, &m_pending, v, &ri->pending, ri);
  rc |= sl_metric_add_u64(reg, &m_reconnects, v, &ri->reconnects, ri);
  rc |= sl_metric_add_u64(reg, &m_dead, v, &ri->dead_lettered, ri);
  rc |= sl_metric_add_u64(reg, &m_failed, v, &ri->failed, ri);
  rc |= sl_metric_add_u64(reg, &m_redelivered, v, &ri->redelivered, ri);
  rc |= sl_metric_add_u64(reg, &m_lag, v, &ri->lag, ri);
  return rc ? SL_ENOMEM : 0;
}

static void read_config(struct redis_in *ri) {
  const struct sl_input_config *c = ri->in->cfg;
  const char *fmt, *consumer;
  char host[64] = "sluice";
  ri->address = sl_config_value_str(c->values, c->nvalues, "address");
  ri->group = sl_config_value_str(c->values, c->nvalues, "group");
  ri->topic = sl_config_value_str(c->values, c->nvalues, "topic");
  ri->start_id = sl_config_value_str(c->values, c->nvalues, "start_id");
  ri->create_group = (int)sl_config_value_num(c->values, c->nvalues,
                                              "create_group");
  ri->count = (uint32_t)sl_config_value_num(c->values, c->nvalues, "count");
  ri->block_ms =
      (uint32_t)sl_config_value_num(c->values, c->nvalues, "block_ms");
  ri->claim_idle_ms =
      (uint32_t)sl_config_value_num(c->values, c->nvalues, "claim_idle_ms");
  ri->claim_interval_ms = (uint32_t)sl_config_value_num(
      c->values, c->nvalues, "claim_interval_ms");
  ri->max_inflight =
      (uint32_t)sl_config_value_num(c->values, c->nvalues, "max_inflight");
  ri->timeout_ms =
      (uint32_t)sl_config_value_num(c->values, c->nvalues, "timeout_ms");
  fmt = sl_config_value_str(c->values, c->nvalues, "format");
  ri->format = strcmp(fmt, "event") == 0    ? FMT_EVENT
               : strcmp(fmt, "raw") == 0    ? FMT_RAW
               : strcmp(fmt, "fields") == 0 ? FMT_FIELDS
                                            : FMT_JSON;
  consumer = sl_config_value_str(c->values, c->nvalues, "consumer");
  if (consumer) {
    snprintf(ri->consumer, sizeof(ri->consumer), "%s", consumer);
  } else {
    /* unique per process: a restart is a new consumer, whose entries
     * others claim after claim_idle_ms (see the README) */
    gethostname(host, sizeof(host) - 1);
    snprintf(ri->consumer, sizeof(ri->consumer), "%s-%ld", host,
             (long)getpid());
  }
}

/* The keys taken together (sl_config_plugin.check, also run by cb_start):
 * 1 to 64 streams, and max_inflight at least one entry per stream (an
 * XREADGROUP takes at least one of each). 0, or SL_EINVAL with why. */
static int check_conf(const void *conf, char *err, size_t errlen) {
  const struct sl_input_config *cfg = conf;
  const char *p = sl_config_value_str(cfg->values, cfg->nvalues, "stream");
  uint64_t max_inflight =
      sl_config_value_num(cfg->values, cfg->nvalues, "max_inflight");
  int n = 0;
  if (p == NULL)
    return 0; /* required: the checker said so */
  while (*p) { /* as split_streams counts them */
    size_t len = strcspn(p, ", ");
    n += len > 0;
    p += len;
    p += strspn(p, ", ");
  }
  if (n < 1 || n > 64) {
    snprintf(err, errlen, "stream: expected 1 to 64 names, comma-separated");
    return SL_EINVAL;
  }
  if (max_inflight < (uint64_t)n) {
    snprintf(err, errlen, "max_inflight (%llu) is below the number of "
             "streams (%d)", (unsigned long long)max_inflight, n);
    return SL_EINVAL;
  }
  return 0;
}

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  struct redis_in *ri = calloc(1, sizeof(*ri));
  uint32_t i;
  if (ri == NULL)
    return SL_ENOMEM;
  ri->in = in;
  ri->w = in->w;
  in->data = ri;
  uv_timer_init(&in->w->loop, &ri->tick);
  uv_timer_init(&in->w->loop, &ri->later);
  uv_idle_init(&in->w->loop, &ri->flush);
  ri->tick.data = ri->later.data = ri->flush.data = ri;
  ri->rd.ri = ri->ak.ri = ri;
  ri->rd.role = "read";
  ri->ak.role = "ack";
  uv_timer_init(&in->w->loop, &ri->rd.timer);
  uv_timer_init(&in->w->loop, &ri->ak.timer);
  ri->rd.timer.data = &ri->rd;
  ri->ak.timer.data = &ri->ak;
  ri->rd.was_down = ri->ak.was_down = 1; /* the first connects are logged */
  ri->handles = 5;
  sl_source_init(&ri->src, in, on_resume);
  ri->durable.on_durable = on_durable;
  sl_log_limiter_init(&ri->log, 10000, 5);
  sl_log_limiter_init(&ri->conn_log, 10000, 6);
  read_config(ri);
  if (split_streams(ri, sl_config_value_str(in->cfg->values, in->cfg->nvalues,
                                            "stream")) != 0) {
    snprintf(err, errlen, "stream: expected 1 to 64 names, comma-separated");
    return SL_EINVAL; /* cb_stop frees ri */
  }
  if (ri->max_inflight < (uint32_t)ri->nstreams) {
    /* an XREADGROUP takes at least one entry per stream */
    snprintf(err, errlen, "max_inflight (%u) is below the number of streams "
             "(%d)", ri->max_inflight, ri->nstreams);
    return SL_EINVAL;
  }
  ri->cursor = calloc((size_t)ri->nstreams, sizeof(*ri->cursor));
  ri->probe_stream = -1;
  ri->claim = calloc((size_t)ri->nstreams, sizeof(*ri->claim));
  ri->pending_of = calloc((size_t)ri->nstreams, sizeof(*ri->pending_of));
  ri->lag_of = calloc((size_t)ri->nstreams, sizeof(*ri->lag_of));
  ri->slots = calloc(ri->max_inflight, sizeof(*ri->slots));
  ri->free_slots = calloc(ri->max_inflight, sizeof(*ri->free_slots));
  ri->tracker = sl_tracker_new(on_done, ri);
  if (!ri->cursor || !ri->claim || !ri->pending_of || !ri->lag_of || !ri->slots ||
      !ri->free_slots || !ri->tracker || add_metrics(ri) != 0) {
    snprintf(err, errlen, "out of memory");
    return SL_ENOMEM;
  }
  for (i = 0; i < ri->max_inflight; i++)
    ri->free_slots[ri->nfree++] = ri->max_inflight - 1 - i;
  sl_log(SL_LOG_INFO, "redis input joining its consumer group",
         SL_S("input", in->cfg->name), SL_S("group", ri->group),
         SL_S("consumer", ri->consumer), SL_END);
  uv_timer_start(&ri->tick, on_tick, ri->claim_interval_ms,
                   ri->claim_interval_ms);
  connect_now(&ri->rd);
  connect_now(&ri->ak);
  return 0;
}

static void cb_drain(struct sl_input *in) {
  struct redis_in *ri = in->data;
  if (ri)
    ri->draining = 1; /* what was read is still submitted (pump) */
}

/* What keeps the drain waiting: events read and not submitted, and, while
 * connected, acks not answered (a restart would deliver them again). */
static uint32_t cb_busy(struct sl_input *in) {
  struct redis_in *ri = in->data;
  uint64_t n;
  if (ri == NULL)
    return 0;
  n = (ri->batch_n - ri->batch_i) + (ri->src.held != NULL);
  if (ri->ak.connected)
    n += ri->ready.n + ri->durable_ids.n + ri->acks_sent;
  return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

static void finish(struct redis_in *ri) {
  struct sl_input *in = ri->in;
  int s;
  for (s = 0; s < ri->nstreams; s++)
    free(ri->streams[s]);
  free(ri->streams);
  free(ri->cursor);
  free(ri->claim);
  free(ri->pending_of);
  free(ri->lag_of);
  free(ri->slots);
  free(ri->free_slots);
  free(ri->batch);
  free(ri->ready.v);
  free(ri->durable_ids.v);
  free(ri);
  in->data = NULL;
  sl_input_stopped(in);
}

static void on_closed(uv_handle_t *h) {
  struct redis_in *ri = h->data;
  if (--ri->handles == 0)
    finish(ri);
}

static void on_conn_closed(uv_handle_t *h) {
  struct rin_conn *c = h->data; /* a connection's timer */
  if (--c->ri->handles == 0)
    finish(c->ri);
}

/* A name being resolved holds the dial: close once its callback ran. */
static void on_stop_wait(uv_timer_t *t) {
  struct redis_in *ri = t->data;
  if (!ri->rd.dial.resolving && !ri->ak.dial.resolving)
    uv_close((uv_handle_t *)t, on_closed);
}

static void cb_stop(struct sl_input *in) {
  struct redis_in *ri = in->data;
  struct rin_conn *cs[2];
  int i;
  if (ri == NULL) {
    sl_input_stopped(in);
    return;
  }
  cs[0] = &ri->rd;
  cs[1] = &ri->ak;
  ri->stopping = 1;
  sl_metric_remove(ri->w->metrics, ri);
  /* not submitted: left pending (the tracker goes first: no callbacks) */
  if (ri->tracker)
    sl_tracker_close(ri->tracker);
  for (; ri->batch_i < ri->batch_n; ri->batch_i++) {
    sl_event_fail_track(ri->batch[ri->batch_i]);
    sl_event_unref(ri->batch[ri->batch_i]);
  }
  sl_worker_undurable(&ri->durable);
  sl_source_close(&ri->src);
  for (i = 0; i < 2; i++) {
    redisAsyncContext *ac = cs[i]->ac;
    cs[i]->ac = NULL;
    cs[i]->connected = 0;
    sl_redis_dial_cancel(&cs[i]->dial);
    if (ac)
      redisAsyncFree(ac); /* its callbacks see stopping */
    uv_close((uv_handle_t *)&cs[i]->timer, on_conn_closed);
  }
  uv_close((uv_handle_t *)&ri->tick, on_closed);
  uv_close((uv_handle_t *)&ri->flush, on_closed);
  if (ri->rd.dial.resolving || ri->ak.dial.resolving)
    uv_timer_start(&ri->later, on_stop_wait, 10, 10);
  else
    uv_close((uv_handle_t *)&ri->later, on_closed);
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = cb_drain,
    .cb_busy = cb_busy,
    .cb_stop = cb_stop,
};

static const char *const formats[] = {"json", "event", "raw", "fields", NULL};

static const struct sl_config_key keys[] = {
    {.name = "address", .type = SL_KEY_STRING,
     .doc = "the redis server, \"host:port\" (a name is resolved off the "
            "loop on each connect) or a unix socket path",
     .flags = SL_KEY_REQUIRED},
    {.name = "stream", .type = SL_KEY_STRING,
     .doc = "the stream to read, or several: \"a,b\" (up to 64)",
     .flags = SL_KEY_REQUIRED},
    {.name = "group", .type = SL_KEY_STRING,
     .doc = "the consumer group", .flags = SL_KEY_REQUIRED},
    {.name = "consumer", .type = SL_KEY_STRING,
     .doc = "this instance's name in the group; default host-pid (see the "
            "README: a stable name re-reads its own pending entries at "
            "restart)"},
    {.name = "create_group", .type = SL_KEY_BOOL, .def = "true",
     .doc = "create the group (and the stream) when missing"},
    {.name = "start_id", .type = SL_KEY_STRING, .def = "$",
     .doc = "where a group it creates starts: $ (new entries) or 0 (all)"},
    {.name = "topic", .type = SL_KEY_STRING,
     .doc = "the events' topic when an entry has no topic field; default "
            "the stream's name"},
    {.name = "format", .type = SL_KEY_STRING, .def = "json",
     .doc = "json: the payload field is JSON; raw: its bytes as a string; "
            "fields: every other field into a map; event: the event field "
            "is a msgpack event",
     .choices = formats},
    {.name = "count", .type = SL_KEY_UINT, .def = "100",
     .doc = "entries per XREADGROUP (per stream)", .min = 1, .max = 10000},
    {.name = "block_ms", .type = SL_KEY_UINT, .def = "2000",
     .doc = "how long an XREADGROUP waits for new entries", .min = 1,
     .max = 60000},
    {.name = "max_inflight", .type = SL_KEY_UINT, .def = "10000",
     .doc = "entries read and not acked yet; at the limit it reads no more",
     .min = 1, .max = 1000000},
    {.name = "claim_idle_ms", .type = SL_KEY_UINT, .def = "60000",
     .doc = "take over entries pending this long (XAUTOCLAIM); 0: never. "
            "Keep it above the time an event may take to be delivered",
     .min = 0, .max = 86400000},
    {.name = "timeout_ms", .type = SL_KEY_UINT, .def = "10000",
     .doc = "a connect, or a reply later than block_ms by this, drops the "
            "connection",
     .min = 100, .max = 600000},
    {.name = "claim_interval_ms", .type = SL_KEY_UINT, .def = "5000",
     .doc = "how often to claim and to look at XPENDING", .min = 100,
     .max = 3600000},
    {0}};

const struct sl_plugin sl_input_redis = {
    .config = {SL_PLUGIN_INPUT, "redis",
               "reads redis streams in a consumer group, XACK once delivered",
               keys, check_conf},
    .input = &ops,
};
