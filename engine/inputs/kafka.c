/* kafka.c - the kafka input: a consumer in a consumer group (librdkafka),
 * at least once. Offsets are never committed by librdkafka on its own
 * (enable.auto.commit and enable.auto.offset.store off): each message is
 * submitted as an event tracked to its end (codec/event.h), and a
 * partition's offset moves only over a contiguous run of events whose
 * track ended ok (delivered, buffered, dropped or dead-lettered on
 * purpose), and only once sl_worker_durable says the disk buffers hold
 * them. A failed or pending event holds its partition's offset back; a
 * kill -9 loses nothing and the group redelivers what was in flight.
 * Commits are asynchronous, batched on a timer (commit_interval_ms) and
 * done again on revoke and at stop. The same timer polls once, so an idle
 * consumer still counts as alive (max.poll.interval.ms).
 *
 * Rebalances: on assign a partition gets a fresh tracking state (a new id
 * in the tokens); on revoke what is done is committed and the state goes,
 * so done callbacks of its events still in the pipeline find no owner and
 * commit nothing for a partition this instance no longer owns (the new
 * owner gets them again: duplicates, never a loss).
 *
 * Backpressure: when sl_worker_submit says SL_EAGAIN every assigned
 * partition is paused (rd_kafka_pause_partitions) and polling goes on
 * only to serve rebalances, logs and commit results; a message that
 * arrives meanwhile waits in a backlog, submitted first on on_resume.
 *
 * A partition tracks at most max_uncommitted messages past its commit
 * point: a failed message (a disk buffer refused it) holds the point back
 * for good in this assignment, and each later message would add an entry
 * without bound. At the bound the partition alone is paused and sought
 * back to the message it could not take. The commit timer resumes it
 * (seeking there again) once half the entries are done; when a failed one
 * holds the front, it rewinds instead: the partition's tracking starts
 * over (a new id) from the failed offset, so the failed message and those
 * after it are read and tried again (duplicates, never a loss).
 *
 * Mapping: the message value is the event (format "event": a msgpack
 * event map; "json": a JSON value, the payload; "raw": the bytes, a binary
 * payload; "auto", the default: event, else JSON); Kafka key -> ev.key,
 * headers -> ev.headers, topic -> ev.topic (or the `topic` key), timestamp
 * -> ev.time; headers kafka-topic, kafka-partition and kafka-offset are
 * added for rules. A message that does not parse or is larger than
 * max_event_bytes goes to the dead letter (sluice-error says why; its
 * bytes as a binary payload, its key and its headers, each cut to 4 KiB
 * when too large) and its offset is committed like any other: a bad
 * message never stalls a partition.
 *
 * The consumer queue (main queue forwarded into it) is watched by the
 * pipe bridge (net/kafka.h). */
#include <stdlib.h>
#include <string.h>

#include "worker.h"
#include "plugins.h"
#include "json.h"
#include "kafka.h"

enum { FORMAT_AUTO, FORMAT_EVENT, FORMAT_JSON, FORMAT_RAW };
enum { E_PENDING, E_OK, E_FAILED };

#define SEQ_BITS 40
#define SEQ_MASK ((UINT64_C(1) << SEQ_BITS) - 1)
#define POLL_BUDGET 512  /* messages per loop turn before yielding */
#define DEAD_CUT 4096    /* bytes of a too large message kept */

struct kentry {
  int64_t off;
  int st;
};

/* One assigned partition: the offsets submitted and not yet committable,
 * in order (a ring), and where its commit stands. */
struct kpart {
  char *topic;
  int32_t partition;
  uint32_t id;        /* in the tokens of its events; new per assignment */
  struct kentry *ring;
  uint32_t cap, head, count;
  uint64_t head_seq;  /* the sequence number of ring[head] */
  int64_t done;       /* every offset below is done: commit this; -1 none */
  int64_t snap;       /* done when durability was asked for */
  int64_t committed;  /* the last commit sent; -1 none */
  int64_t next;       /* the offset after the last one submitted */
  int capped;         /* paused at max_uncommitted; resumes at resume_at */
  int64_t resume_at;
};

struct kafka_in {
  struct sl_kafka_bridge bridge; /* first: the client's opaque */
  struct sl_input *in;
  rd_kafka_t *rk;
  rd_kafka_queue_t *q;
  struct sl_source src;
  struct sl_tracker *tracker;
  struct sl_durable dur;
  uv_idle_t more;
  uv_timer_t commit_timer, close_timer;
  int handles;        /* uv handles open */
  struct kpart **parts;
  int nparts, capparts;
  uint32_t next_id;
  rd_kafka_message_t **backlog;
  uint32_t bl_head, bl_count, bl_cap;
  int blocked, draining, closing, finished;
  uint64_t close_deadline; /* monotonic ns: give up leaving the group */
  uint64_t commit_interval_ns, next_commit_ns;
  int format;
  const char *topic;  /* ev.topic instead of the Kafka topic; NULL */
  struct sl_buf scratch;
  struct sl_log_limiter log;
  uint64_t rebalances, commits, commit_errors, bad_messages, refused;
  uint32_t max_uncommitted;
  uint64_t caps, rewinds;
};

static const struct sl_metric m_lag = {
    "sluice_kafka_consumer_lag",
    "Messages of an assigned partition not yet read (high watermark less the "
    "next offset).", SL_METRIC_GAUGE, {"input", "topic", "partition", NULL}};
static const struct sl_metric m_committed = {
    "sluice_kafka_committed_offset",
    "The last offset committed for an assigned partition.", SL_METRIC_GAUGE,
    {"input", "topic", "partition", NULL}};
static const struct sl_metric m_in_flight = {
    "sluice_kafka_input_in_flight",
    "Messages submitted whose events are not done yet.", SL_METRIC_GAUGE,
    {"input", NULL}};
static const struct sl_metric m_rebalances = {
    "sluice_kafka_rebalances_total",
    "Partition assignments and revocations.", SL_METRIC_COUNTER,
    {"input", NULL}};
static const struct sl_metric m_commits = {
    "sluice_kafka_commits_total", "Offset commits sent.", SL_METRIC_COUNTER,
    {"input", NULL}};
static const struct sl_metric m_commit_errors = {
    "sluice_kafka_commit_errors_total",
    "Offset commits that failed (sent again on the next commit).",
    SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_bad = {
    "sluice_kafka_bad_messages_total",
    "Messages that did not parse or were too large (to the dead letter).",
    SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_caps = {
    "sluice_kafka_partition_pauses_total",
    "Times a partition was paused with max_uncommitted messages past its "
    "commit point.", SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_rewinds = {
    "sluice_kafka_partition_rewinds_total",
    "Times a paused partition was read again from a failed message.",
    SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_client_errors = {
    "sluice_kafka_client_errors_total",
    "Errors the Kafka client reported (brokers unreachable, ...); it "
    "retries by itself.", SL_METRIC_COUNTER, {"plugin", NULL}};

/* ---- partitions ---------------------------------------------------------- */

static struct kpart *part_by_id(struct kafka_in *k, uint32_t id) {
  int i;
  for (i = 0; i < k->nparts; i++)
    if (k->parts[i]->id == id)
      return k->parts[i];
  return NULL;
}

static struct kpart *part_of(struct kafka_in *k, const char *topic,
                             int32_t partition) {
  int i;
  for (i = 0; i < k->nparts; i++)
    if (k->parts[i]->partition == partition &&
        strcmp(k->parts[i]->topic, topic) == 0)
      return k->parts[i];
  return NULL;
}

static int part_add(struct kafka_in *k, const char *topic, int32_t partition) {
  struct kpart *p;
  if (part_of(k, topic, partition))
    return 0;
  if (k->nparts == k->capparts) {
    int cap = k->capparts ? k->capparts * 2 : 8;
    struct kpart **n = realloc(k->parts, (size_t)cap * sizeof(*n));
    if (n == NULL)
      return SL_ENOMEM;
    k->parts = n;
    k->capparts = cap;
  }
  if ((p = calloc(1, sizeof(*p))) == NULL ||
      (p->topic = strdup(topic)) == NULL) {
    free(p);
    return SL_ENOMEM;
  }
  p->partition = partition;
  p->id = ++k->next_id & 0xffffff;
  p->done = p->snap = p->committed = p->next = -1;
  k->parts[k->nparts++] = p;
  return 0;
}

static void part_free(struct kpart *p) {
  free(p->topic);
  free(p->ring);
  free(p);
}

/* Forget the partition: messages of it waiting in the backlog are let go
 * (uncommitted, the next owner reads them), its events' callbacks find
 * nothing. */
static void part_remove(struct kafka_in *k, const char *topic,
                        int32_t partition) {
  int i;
  uint32_t j, kept = 0;
  for (i = 0; i < k->nparts; i++)
    if (k->parts[i]->partition == partition &&
        strcmp(k->parts[i]->topic, topic) == 0)
      break;
  if (i == k->nparts)
    return;
  part_free(k->parts[i]);
  k->parts[i] = k->parts[--k->nparts];
  for (j = 0; j < k->bl_count; j++) {
    rd_kafka_message_t *m = k->backlog[(k->bl_head + j) % k->bl_cap];
    if (m->partition == partition &&
        strcmp(rd_kafka_topic_name(m->rkt), topic) == 0)
      rd_kafka_message_destroy(m);
    else
      k->backlog[(k->bl_head + kept++) % k->bl_cap] = m;
  }
  k->bl_count = kept;
}

/* A new entry for offset off: its token, or 0 with no memory. */
static int entry_add(struct kpart *p, int64_t off, uint64_t *token) {
  if (p->count == p->cap) {
    uint32_t cap = p->cap ? p->cap * 2 : 64, i;
    struct kentry *n = malloc(cap * sizeof(*n));
    if (n == NULL)
      return SL_ENOMEM;
    for (i = 0; i < p->count; i++)
      n[i] = p->ring[(p->head + i) & (p->cap - 1)];
    free(p->ring);
    p->ring = n;
    p->cap = cap;
    p->head = 0;
  }
  p->ring[(p->head + p->count) & (p->cap - 1)] = (struct kentry){off, E_PENDING};
  *token = ((uint64_t)p->id << SEQ_BITS) | ((p->head_seq + p->count) & SEQ_MASK);
  p->count++;
  return 0;
}

/* The tracker: an event is done. Marks its entry and moves done over the
 * contiguous run of ok entries at the front; a failed one stays there and
 * holds the partition's commit back (the group redelivers it). */
static void on_done(struct sl_tracker *t, uint64_t token, int ok) {
  struct kafka_in *k = t->data;
  struct kpart *p = part_by_id(k, (uint32_t)(token >> SEQ_BITS));
  uint64_t i;
  if (p == NULL)
    return; /* revoked since: not ours to commit */
  i = ((token & SEQ_MASK) - (p->head_seq & SEQ_MASK)) & SEQ_MASK;
  if (i >= p->count)
    return;
  p->ring[(p->head + i) & (p->cap - 1)].st = ok ? E_OK : E_FAILED;
  while (p->count && p->ring[p->head].st == E_OK) {
    p->done = p->ring[p->head].off + 1;
    p->head = (p->head + 1) & (p->cap - 1);
    p->count--;
    p->head_seq++;
  }
}

/* ---- commits --------------------------------------------------------------- */

static void commit_snaps(struct kafka_in *k) {
  rd_kafka_topic_partition_list_t *l;
  int i;
  if (k->rk == NULL)
    return;
  l = rd_kafka_topic_partition_list_new(k->nparts ? k->nparts : 1);
  for (i = 0; i < k->nparts; i++) {
    struct kpart *p = k->parts[i];
    if (p->snap > p->committed) {
      rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
          p->snap;
      p->committed = p->snap;
    }
  }
  if (l->cnt > 0) {
    rd_kafka_commit(k->rk, l, 1); /* result: offset_commit_cb */
    k->commits++;
  }
  rd_kafka_topic_partition_list_destroy(l);
}

static void on_durable(struct sl_durable *d) {
  commit_snaps(container_of(d, struct kafka_in, dur));
}

/* Commit what is done, once the disk buffers hold it. */
static void commit(struct kafka_in *k) {
  int i, any = 0, rc;
  uint64_t suppressed = 0;
  if (k->dur.waiting)
    return; /* on_durable commits; the next timer takes what came since */
  for (i = 0; i < k->nparts; i++) {
    k->parts[i]->snap = k->parts[i]->done;
    any |= k->parts[i]->done > k->parts[i]->committed;
  }
  if (!any)
    return;
  rc = sl_worker_durable(k->in->w, &k->dur);
  if (rc == 0)
    commit_snaps(k);
  else if (rc == SL_EIO && sl_log_allow(&k->log, &suppressed))
    sl_log(SL_LOG_WARN, "kafka offsets not committed: a disk buffer cannot "
           "write", SL_S("input", k->in->cfg->name),
           SL_U("suppressed", suppressed), SL_END);
}

static void pump(struct kafka_in *k);
static void parts_uncap(struct kafka_in *k);

/* Also a poll: librdkafka takes a consumer that has not polled for
 * max.poll.interval.ms (5 min) for stuck and leaves the group, and an
 * idle topic gives the pipe no byte. One empty poll a second is cheap. */
static void on_commit_timer(uv_timer_t *t) {
  struct kafka_in *k = container_of(t, struct kafka_in, commit_timer);
  uint64_t now = sl_mono_ns();
  if (!k->finished && !k->closing && !k->draining && k->rk)
    parts_uncap(k);
  pump(k);
  if (k->finished || now < k->next_commit_ns)
    return;
  k->next_commit_ns = now + k->commit_interval_ns;
  commit(k);
}

static void offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets,
                             void *opaque) {
  struct kafka_in *k = opaque;
  uint64_t suppressed = 0;
  int i;
  (void)rk;
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__NO_OFFSET)
    return;
  k->commit_errors++;
  for (i = 0; offsets && i < offsets->cnt; i++) {
    struct kpart *p = part_of(k, offsets->elems[i].topic,
                              offsets->elems[i].partition);
    if (p && p->committed <= offsets->elems[i].offset)
      p->committed = -1; /* the next commit sends it again */
  }
  if (sl_log_allow(&k->log, &suppressed))
    sl_log(SL_LOG_WARN, "kafka offset commit failed; retried on the next",
           SL_S("input", k->in->cfg->name),
           SL_S("error", rd_kafka_err2str(err)),
           SL_U("suppressed", suppressed), SL_END);
}

/* ---- rebalances and pausing ------------------------------------------------ */

static void pause_all(struct kafka_in *k, int pause) {
  rd_kafka_topic_partition_list_t *l = NULL;
  if (rd_kafka_assignment(k->rk, &l) == RD_KAFKA_RESP_ERR_NO_ERROR && l) {
    int i;
    for (i = 0; !pause && i < k->nparts; i++)
      if (k->parts[i]->capped) /* stays paused: the commit timer decides */
        rd_kafka_topic_partition_list_del(l, k->parts[i]->topic,
                                          k->parts[i]->partition);
    if (pause)
      rd_kafka_pause_partitions(k->rk, l);
    else
      rd_kafka_resume_partitions(k->rk, l);
  }
  if (l)
    rd_kafka_topic_partition_list_destroy(l);
}

static void list_text(const rd_kafka_topic_partition_list_t *l, char *out,
                      size_t n) {
  size_t used = 0;
  int i;
  out[0] = '\0';
  for (i = 0; i < l->cnt && used + 1 < n; i++) {
    int w = snprintf(out + used, n - used, "%s%s[%d]", i ? "," : "",
                     l->elems[i].topic, (int)l->elems[i].partition);
    if (w < 0)
      break;
    used += (size_t)w;
  }
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *l, void *opaque) {
  struct kafka_in *k = opaque;
  int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  int i, assign = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
  char text[400];
  k->rebalances++;
  if (assign)
    sl_kafka_bridge_up(&k->bridge);
  list_text(l, text, sizeof(text));
  sl_log(SL_LOG_INFO, assign ? "kafka partitions assigned"
                             : "kafka partitions revoked",
         SL_S("input", k->in->cfg->name), SL_U("count", l->cnt),
         SL_S("partitions", text), SL_END);
  if (assign) {
    for (i = 0; i < l->cnt; i++)
      if (part_add(k, l->elems[i].topic, l->elems[i].partition) != 0)
        sl_log(SL_LOG_ERROR, "kafka input out of memory",
               SL_S("input", k->in->cfg->name), SL_END);
    if (coop)
      rd_kafka_incremental_assign(rk, l);
    else
      rd_kafka_assign(rk, l);
    /* a partition paused here before a revoke may keep librdkafka's
     * pause flag when it comes back: say which state it is to be in */
    if (k->blocked || k->draining)
      rd_kafka_pause_partitions(rk, l);
    else
      rd_kafka_resume_partitions(rk, l);
    return;
  }
  /* revoked (or lost): commit what is done, then stop tracking */
  if (!rd_kafka_assignment_lost(rk))
    commit(k);
  for (i = 0; i < l->cnt; i++)
    part_remove(k, l->elems[i].topic, l->elems[i].partition);
  if (coop)
    rd_kafka_incremental_unassign(rk, l);
  else
    rd_kafka_assign(rk, NULL);
}

/* ---- messages to events ---------------------------------------------------- */

/* The headers map: the message's headers (those with a value; ours are
 * set by us) while their names and values total at most limit bytes (a
 * dead letter keeps DEAD_CUT of them: the headers may be what made the
 * message too large), kafka-topic/-partition/-offset, and error when
 * set. */
static int put_headers(struct sl_buf *b, const rd_kafka_message_t *m,
                       const char *error, size_t limit) {
  rd_kafka_headers_t *h = NULL;
  const char *name;
  const void *val;
  size_t size, idx, n = 0, at, total = 0;
  char num[24];
  const char *topic = rd_kafka_topic_name(m->rkt);
  int rc = 0;
  at = b->len;
  if (sl_codec_put_map(b, 0xffff) != 0) /* map16 header, patched below */
    return SL_ENOMEM;
  if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
    h = NULL;
  for (idx = 0; h && rd_kafka_header_get_all(h, idx, &name, &val, &size) ==
                         RD_KAFKA_RESP_ERR_NO_ERROR && n < 60000; idx++) {
    if (val == NULL || strncmp(name, "kafka-", 6) == 0 ||
        strcmp(name, "sluice-error") == 0)
      continue;
    total += strlen(name) + size;
    if (total > limit)
      break;
    rc |= sl_codec_put_str(b, name, strlen(name));
    rc |= sl_codec_put_str(b, val, size);
    n++;
  }
  rc |= sl_codec_put_str(b, "kafka-topic", 11);
  rc |= sl_codec_put_str(b, topic, strlen(topic));
  snprintf(num, sizeof(num), "%d", (int)m->partition);
  rc |= sl_codec_put_str(b, "kafka-partition", 15);
  rc |= sl_codec_put_str(b, num, strlen(num));
  snprintf(num, sizeof(num), "%lld", (long long)m->offset);
  rc |= sl_codec_put_str(b, "kafka-offset", 12);
  rc |= sl_codec_put_str(b, num, strlen(num));
  n += 3;
  if (error) {
    rc |= sl_codec_put_str(b, "sluice-error", 12);
    rc |= sl_codec_put_str(b, error, strlen(error));
    n++;
  }
  b->data[at + 1] = (uint8_t)(n >> 8);
  b->data[at + 2] = (uint8_t)n;
  return rc ? SL_ENOMEM : 0;
}

/* An event with the message's key, topic, time and headers around payload
 * (raw msgpack, may be NULL). */
static struct sl_event *wrap(struct kafka_in *k, const rd_kafka_message_t *m,
                             const uint8_t *payload, size_t plen,
                             const char *error) {
  struct sl_worker *w = k->in->w;
  const char *t = k->topic ? k->topic : rd_kafka_topic_name(m->rkt);
  struct sl_str none = {NULL, 0}, topic = {t, (uint32_t)strlen(t)};
  /* a dead letter keeps DEAD_CUT of the key, as of the value and headers */
  struct sl_str key = {m->key, (uint32_t)(error && m->key_len > DEAD_CUT
                                               ? DEAD_CUT
                                               : m->key_len)};
  rd_kafka_timestamp_type_t tt;
  int64_t ms = rd_kafka_message_timestamp(m, &tt);
  /* a producer may set any int64 ms: past 2262 ns would wrap; none then */
  int has_time = ms >= 0 && ms <= INT64_MAX / 1000000;
  struct sl_buf h;
  struct sl_event *ev = NULL;
  sl_buf_init(&h);
  if (put_headers(&h, m, error, error ? DEAD_CUT : SIZE_MAX) == 0)
    ev = sl_event_new(&w->idgen, none, topic, m->key ? key : none, has_time,
                      has_time ? ms * 1000000 : 0, h.data, h.len, payload,
                      plen, 1);
  sl_buf_close(&h);
  return ev;
}

/* The message as sent (format event): the event map plus our headers. */
static struct sl_event *as_event(struct kafka_in *k,
                                 const rd_kafka_message_t *m) {
  struct sl_event_view v;
  struct sl_event *ev, *a, *b;
  size_t used;
  char num[24];
  const char *topic = rd_kafka_topic_name(m->rkt);
  if (sl_codec_skip(m->payload, m->len, m->len, &used, NULL) != 0 ||
      used != m->len || sl_codec_parse_event(m->payload, m->len, &v, NULL) != 0)
    return NULL;
  if ((ev = sl_event_from_view(&k->in->w->idgen, &v, 1)) == NULL)
    return NULL;
  a = sl_event_with_header(ev, "kafka-topic", topic, strlen(topic));
  sl_event_unref(ev);
  snprintf(num, sizeof(num), "%d", (int)m->partition);
  b = a ? sl_event_with_header(a, "kafka-partition", num, strlen(num)) : NULL;
  sl_event_unref(a);
  snprintf(num, sizeof(num), "%lld", (long long)m->offset);
  ev = b ? sl_event_with_header(b, "kafka-offset", num, strlen(num)) : NULL;
  sl_event_unref(b);
  return ev;
}

static struct sl_event *as_json(struct kafka_in *k,
                                 const rd_kafka_message_t *m) {
  char err[160];
  struct sl_event *ev;
  sl_buf_reset(&k->scratch);
  if (m->len == 0 || sl_json_to_msgpack(m->payload, m->len, &k->scratch, err,
                                        sizeof(err)) != 0)
    return NULL;
  ev = wrap(k, m, k->scratch.data, k->scratch.len, NULL);
  return ev;
}

static struct sl_event *as_raw(struct kafka_in *k, const rd_kafka_message_t *m,
                               size_t n, const char *error) {
  sl_buf_reset(&k->scratch);
  if (sl_codec_put_bin(&k->scratch, m->payload ? m->payload : "", n) != 0)
    return NULL;
  return wrap(k, m, k->scratch.data, k->scratch.len, error);
}

/* The event for m, or NULL with *why saying why it is bad. */
static struct sl_event *build(struct kafka_in *k, const rd_kafka_message_t *m,
                              const char **why) {
  struct sl_event *ev = NULL;
  uint32_t max = k->in->w->cfg->max_event_bytes;
  *why = NULL;
  if (m->len > max) {
    *why = "message larger than max_event_bytes";
    return NULL;
  }
  switch (k->format) {
  case FORMAT_EVENT:
    ev = as_event(k, m);
    *why = "not a msgpack event map (format event)";
    break;
  case FORMAT_JSON:
    ev = as_json(k, m);
    *why = "not JSON (format json)";
    break;
  case FORMAT_RAW:
    ev = as_raw(k, m, m->len, NULL);
    *why = "out of memory";
    break;
  default:
    if ((ev = as_event(k, m)) == NULL)
      ev = as_json(k, m);
    *why = "neither a msgpack event map nor JSON";
  }
  if (ev && ev->len > max + SL_EVENT_HEADROOM) {
    sl_event_unref(ev);
    ev = NULL;
    *why = "event larger than max_event_bytes once its headers are added";
  }
  if (ev)
    *why = NULL;
  return ev;
}

/* A bad message to the dead letter (tracked like any event: its offset is
 * committed once the dead letter took it). SL_EAGAIN: the dead letter's
 * queue is full; the source holds it and on_resume comes. */
static int dead_letter(struct kafka_in *k, struct sl_event *ev) {
  struct sl_worker *w = k->in->w;
  struct sl_output *dl;
  int rc;
  if (w->cfg->dead_letter < 0 || w->cfg->dead_letter >= w->noutputs ||
      w->outputs[w->cfg->dead_letter].stopped) {
    sl_event_unref(ev); /* nobody takes it: dropped (logged by the caller) */
    return 0;
  }
  dl = &w->outputs[w->cfg->dead_letter];
  rc = sl_output_push(dl, ev);
  if (rc == SL_EAGAIN) {
    /* hold it as sl_worker_submit holds an event for its outputs */
    k->src.held = ev;
    k->src.targets[0] = (uint16_t)dl->index;
    k->src.ntargets = 1;
    k->src.refused = 0;
    sl_queue_wait(&dl->q, &k->src.waiter);
    return SL_EAGAIN;
  }
  if (rc == SL_EIO)
    sl_event_fail_track(ev);
  sl_event_unref(ev);
  return 0;
}

static void block(struct kafka_in *k) {
  k->blocked = 1;
  pause_all(k, 1);
}

/* Pause p alone (pause 1) or resume it and seek it to resume_at. */
static void part_pause(struct kafka_in *k, struct kpart *p, int pause) {
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_error_t *e;
  if (l == NULL)
    return;
  rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
      p->resume_at;
  if (pause) {
    rd_kafka_pause_partitions(k->rk, l);
  } else {
    if (!k->blocked && !k->draining)
      rd_kafka_resume_partitions(k->rk, l);
    /* after the resume: the fetch starts where we say, whatever the
     * client kept as the position of the messages it handed out */
    if ((e = rd_kafka_seek_partitions(k->rk, l, 0)) != NULL)
      rd_kafka_error_destroy(e);
  }
  rd_kafka_topic_partition_list_destroy(l);
}

/* p has max_uncommitted entries: pause it; the message at off and those
 * after it are read again once it resumes. */
static void part_cap(struct kafka_in *k, struct kpart *p, int64_t off) {
  uint64_t suppressed = 0;
  p->capped = 1;
  p->resume_at = off;
  k->caps++;
  part_pause(k, p, 1);
  if (sl_log_allow(&k->log, &suppressed))
    sl_log(SL_LOG_WARN, "kafka partition paused: max_uncommitted messages "
           "past its commit point (a failed or slow one holds it)",
           SL_S("input", k->in->cfg->name), SL_S("topic", p->topic),
           SL_I("partition", p->partition), SL_I("offset", off),
           SL_U("max_uncommitted", k->max_uncommitted),
           SL_I("committable", p->done), SL_U("suppressed", suppressed),
           SL_END);
}

/* The commit timer: resume capped partitions that have room again, rewind
 * those a failed message holds. */
static void parts_uncap(struct kafka_in *k) {
  int i;
  for (i = 0; i < k->nparts; i++) {
    struct kpart *p = k->parts[i];
    if (!p->capped)
      continue;
    if (p->count && p->ring[p->head].st == E_FAILED) {
      p->resume_at = p->ring[p->head].off;
      p->id = ++k->next_id & 0xffffff; /* its events in flight: not ours */
      p->head = p->count = 0;
      p->head_seq = 0;
      k->rewinds++;
    } else if (p->count > k->max_uncommitted / 2) {
      continue;
    }
    p->capped = 0;
    p->next = p->resume_at;
    part_pause(k, p, 0);
  }
}

/* Submit one message; it is freed here. */
static void handle(struct kafka_in *k, rd_kafka_message_t *m) {
  struct sl_input *in = k->in;
  struct kpart *p;
  struct sl_event *ev;
  const char *why;
  uint64_t token, suppressed = 0;
  int rc;

  if (m->err) {
    if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF &&
        sl_log_allow(&k->log, &suppressed))
      sl_log(SL_LOG_WARN, "kafka consumer error", SL_S("input", in->cfg->name),
             SL_S("error", rd_kafka_message_errstr(m)),
             SL_U("suppressed", suppressed), SL_END);
    rd_kafka_message_destroy(m);
    return;
  }
  p = m->rkt ? part_of(k, rd_kafka_topic_name(m->rkt), m->partition) : NULL;
  if (p == NULL || k->draining) {
    rd_kafka_message_destroy(m); /* not ours (any more): uncommitted */
    return;
  }
  if (!p->capped && p->count >= k->max_uncommitted)
    part_cap(k, p, m->offset);
  if (p->capped) {
    rd_kafka_message_destroy(m); /* read again from resume_at */
    return;
  }
  ev = build(k, m, &why);
  if (ev == NULL) {
    in->stats.bad_input++;
    k->bad_messages++;
    ev = as_raw(k, m, m->len > DEAD_CUT ? DEAD_CUT : m->len, why);
    if (sl_log_allow(&in->w->bad_input_log, &suppressed))
      sl_log(SL_LOG_WARN, "bad kafka message; to the dead letter",
             SL_S("input", in->cfg->name),
             SL_S("topic", rd_kafka_topic_name(m->rkt)),
             SL_I("partition", m->partition), SL_I("offset", m->offset),
             SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
  }
  if (ev == NULL || entry_add(p, m->offset, &token) != 0 ||
      sl_event_track(ev, k->tracker, token) != 0) {
    /* out of memory: not submitted, not committed; seek back so it is
     * read again rather than skipped */
    if (ev)
      sl_event_unref(ev);
    rd_kafka_seek(m->rkt, m->partition, m->offset, 0);
    rd_kafka_message_destroy(m);
    return;
  }
  p->next = m->offset + 1;
  sl_kafka_bridge_up(&k->bridge);
  in->stats.events_in++;
  in->stats.bytes_in += m->len;
  rc = why ? dead_letter(k, ev) : sl_worker_submit(&k->src, ev);
  rd_kafka_message_destroy(m);
  if (rc == SL_EAGAIN) {
    block(k);
  } else if (rc == SL_EIO && sl_log_allow(&k->log, &suppressed)) {
    /* the track failed: this partition's commit stays before it */
    sl_log(SL_LOG_WARN, "kafka message refused by a disk buffer; it will be "
           "redelivered", SL_S("input", in->cfg->name),
           SL_U("suppressed", suppressed), SL_END);
    k->refused++;
  }
}

static int backlog_push(struct kafka_in *k, rd_kafka_message_t *m) {
  if (k->bl_count == k->bl_cap) {
    uint32_t cap = k->bl_cap ? k->bl_cap * 2 : 256, i;
    rd_kafka_message_t **n = malloc(cap * sizeof(*n));
    if (n == NULL)
      return SL_ENOMEM;
    for (i = 0; i < k->bl_count; i++)
      n[i] = k->backlog[(k->bl_head + i) % k->bl_cap];
    free(k->backlog);
    k->backlog = n;
    k->bl_cap = cap;
    k->bl_head = 0;
  }
  k->backlog[(k->bl_head + k->bl_count++) % k->bl_cap] = m;
  return 0;
}

static void on_more(uv_idle_t *h);

/* Serve the consumer queue: messages (into the pipeline, or the backlog
 * while blocked), rebalances, commit results, logs. A budget per turn;
 * an idle handle brings us back when it ran out. */
static void pump(struct kafka_in *k) {
  int i;
  if (k->finished || k->rk == NULL)
    return;
  while (!k->blocked && k->bl_count && !k->closing) {
    rd_kafka_message_t *m = k->backlog[k->bl_head];
    k->bl_head = (k->bl_head + 1) % k->bl_cap;
    k->bl_count--;
    handle(k, m);
  }
  for (i = 0; i < POLL_BUDGET; i++) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->rk, 0);
    if (m == NULL)
      break;
    if (k->closing || (k->blocked && !m->err && backlog_push(k, m) != 0)) {
      /* closing: uncommitted, read again by whoever owns it next; no
       * memory for the backlog: read again after the pause */
      if (!k->closing)
        rd_kafka_seek(m->rkt, m->partition, m->offset, 0);
      rd_kafka_message_destroy(m);
    } else if (!k->blocked || m->err) {
      handle(k, m);
    }
  }
  if (i == POLL_BUDGET)
    uv_idle_start(&k->more, on_more);
  else
    uv_idle_stop(&k->more);
}

static void on_more(uv_idle_t *h) {
  pump(container_of(h, struct kafka_in, more));
}

static void finish(struct kafka_in *k);

static void on_ready(struct sl_kafka_bridge *b) {
  struct kafka_in *k = (struct kafka_in *)b;
  pump(k);
  if (k->closing && !k->finished && rd_kafka_consumer_closed(k->rk))
    finish(k);
}

static void on_resume(struct sl_source *s) {
  struct kafka_in *k = container_of(s, struct kafka_in, src);
  k->blocked = 0;
  if (k->closing || k->draining)
    return;
  pause_all(k, 0);
  pump(k);
}

/* ---- metrics --------------------------------------------------------------- */

static void collect_parts(struct sl_metric_out *out, const struct sl_metric *m,
                          void *data) {
  struct kafka_in *k = data;
  int i;
  for (i = 0; i < k->nparts && k->rk; i++) {
    struct kpart *p = k->parts[i];
    char num[16];
    const char *v[] = {k->in->cfg->name, p->topic, num};
    int64_t lo = -1, hi = -1, at;
    snprintf(num, sizeof(num), "%d", (int)p->partition);
    if (m == &m_committed) {
      if (p->committed >= 0)
        sl_metric_put_u64(out, v, (uint64_t)p->committed);
      continue;
    }
    /* cached from fetch responses: no request to a broker per scrape */
    if (rd_kafka_get_watermark_offsets(k->rk, p->topic, p->partition, &lo,
                                       &hi) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        hi < 0)
      continue;
    at = p->next >= 0 ? p->next : p->committed >= 0 ? p->committed : lo;
    sl_metric_put_u64(out, v, hi > at && at >= 0 ? (uint64_t)(hi - at) : 0);
  }
}

static void collect_inflight(struct sl_metric_out *out,
                             const struct sl_metric *m, void *data) {
  struct kafka_in *k = data;
  const char *v[] = {k->in->cfg->name};
  sl_metric_put_u64(out, v, k->tracker ? k->tracker->live : 0);
}

static int add_metrics(struct kafka_in *k) {
  struct sl_metric_registry *r = k->in->w->metrics;
  const char *v[] = {k->in->cfg->name};
  if (r == NULL)
    return 0;
  if (sl_metric_add(r, &m_lag, collect_parts, k) ||
      sl_metric_add(r, &m_committed, collect_parts, k) ||
      sl_metric_add(r, &m_in_flight, collect_inflight, k) ||
      sl_metric_add_u64(r, &m_rebalances, v, &k->rebalances, k) ||
      sl_metric_add_u64(r, &m_commits, v, &k->commits, k) ||
      sl_metric_add_u64(r, &m_commit_errors, v, &k->commit_errors, k) ||
      sl_metric_add_u64(r, &m_bad, v, &k->bad_messages, k) ||
      sl_metric_add_u64(r, &m_caps, v, &k->caps, k) ||
      sl_metric_add_u64(r, &m_rewinds, v, &k->rewinds, k) ||
      sl_metric_add_u64(r, &m_client_errors, v, &k->bridge.errors, k))
    return SL_ENOMEM;
  return 0;
}

/* ---- lifecycle ------------------------------------------------------------- */

/* The keys taken together (sl_config_plugin.check): a topic named, and
 * brokers, tls and options librdkafka takes. 0, or SL_EINVAL with why. */
static int check_conf(const void *conf, char *err, size_t errlen) {
  const struct sl_input_config *cfg = conf;
  const char *topics = sl_config_value_str(cfg->values, cfg->nvalues, "topics");
  if (topics && strspn(topics, ", ") == strlen(topics)) {
    snprintf(err, errlen, "topics: no topic named");
    return SL_EINVAL;
  }
  return sl_kafka_check(
      sl_config_value_str(cfg->values, cfg->nvalues, "brokers"), &cfg->tls,
      sl_config_value_str(cfg->values, cfg->nvalues, "options"), err, errlen);
}

/* topics: "a,b,^re.*" (a leading ^ subscribes to a regex). */
static int subscribe(struct kafka_in *k, const char *topics, char *err,
                     size_t errlen) {
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
  char *copy = strdup(topics), *t, *save = NULL;
  rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
  int n;
  if (copy == NULL) {
    rd_kafka_topic_partition_list_destroy(l);
    return SL_ENOMEM;
  }
  for (t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
    rd_kafka_topic_partition_list_add(l, t, RD_KAFKA_PARTITION_UA);
  if ((n = l->cnt) == 0)
    snprintf(err, errlen, "topics: no topic named");
  else if ((e = rd_kafka_subscribe(k->rk, l)) != RD_KAFKA_RESP_ERR_NO_ERROR)
    snprintf(err, errlen, "cannot subscribe to %s: %s", topics,
             rd_kafka_err2str(e));
  free(copy);
  rd_kafka_topic_partition_list_destroy(l);
  return n == 0 || e ? SL_EINVAL : 0;
}

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  const struct sl_input_config *cfg = in->cfg;
  struct kafka_in *k = calloc(1, sizeof(*k));
  rd_kafka_conf_t *conf;
  const char *defaults[] = {
      "group.id", sl_config_value_str(cfg->values, cfg->nvalues, "group"),
      "enable.auto.commit", "false", "enable.auto.offset.store", "false",
      "auto.offset.reset",
      sl_config_value_num(cfg->values, cfg->nvalues, "start") ? "earliest"
                                                              : "latest",
      /* bounds what a pause leaves prefetched (the backlog) */
      "queued.max.messages.kbytes", "16384", NULL};
  uint64_t interval;
  int rc;
  if (k == NULL)
    return SL_ENOMEM;
  k->in = in;
  in->data = k;
  sl_source_init(&k->src, in, on_resume);
  sl_buf_init(&k->scratch);
  sl_log_limiter_init(&k->log, 10000, 5);
  k->dur.on_durable = on_durable;
  k->format = (int)sl_config_value_num(cfg->values, cfg->nvalues, "format");
  k->topic = sl_config_value_str(cfg->values, cfg->nvalues, "topic");
  k->max_uncommitted = (uint32_t)sl_config_value_num(cfg->values, cfg->nvalues,
                                                     "max_uncommitted");
  k->bridge.kind = "input";
  k->bridge.name = cfg->name;
  k->bridge.on_ready = on_ready;
  uv_idle_init(&in->w->loop, &k->more);
  uv_timer_init(&in->w->loop, &k->commit_timer);
  uv_timer_init(&in->w->loop, &k->close_timer);
  k->handles = 3;
  if ((k->tracker = sl_tracker_new(on_done, k)) == NULL)
    return SL_ENOMEM;
  conf = sl_kafka_conf(&k->bridge,
                       sl_config_value_str(cfg->values, cfg->nvalues, "brokers"),
                       defaults, &cfg->tls,
                       sl_config_value_str(cfg->values, cfg->nvalues, "options"),
                       err, errlen);
  if (conf == NULL)
    return SL_EINVAL;
  rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
  rd_kafka_conf_set_offset_commit_cb(conf, offset_commit_cb);
  if ((k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen)) == NULL) {
    rd_kafka_conf_destroy(conf);
    return SL_EINVAL;
  }
  rd_kafka_poll_set_consumer(k->rk); /* main queue (logs, errors) into it */
  rd_kafka_set_log_queue(k->rk, NULL);
  k->q = rd_kafka_queue_get_consumer(k->rk);
  if ((rc = sl_kafka_bridge_start(&k->bridge, &in->w->loop, k->q)) != 0) {
    snprintf(err, errlen, "kafka: cannot watch the client: %s",
             uv_strerror(rc));
    return rc;
  }
  k->handles++;
  if ((rc = subscribe(k, sl_config_value_str(cfg->values, cfg->nvalues,
                                             "topics"), err, errlen)) != 0)
    return rc;
  if (add_metrics(k) != 0)
    return SL_ENOMEM;
  interval = sl_config_value_num(cfg->values, cfg->nvalues,
                                 "commit_interval_ms");
  k->commit_interval_ns = interval * 1000000;
  /* at least once a second: the timer polls too */
  if (interval > 1000)
    interval = 1000;
  uv_timer_start(&k->commit_timer, on_commit_timer, interval, interval);
  pump(k);
  return 0;
}

static void on_handle_closed(uv_handle_t *h) {
  struct kafka_in *k = h->data;
  struct sl_input *in = k->in;
  int i;
  if (--k->handles > 0)
    return;
  if (k->q)
    rd_kafka_queue_destroy(k->q);
  if (k->rk)
    rd_kafka_destroy_flags(k->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
  sl_metric_remove(in->w->metrics, k);
  for (i = 0; i < k->nparts; i++)
    part_free(k->parts[i]);
  free(k->parts);
  free(k->backlog);
  sl_buf_close(&k->scratch);
  free(k);
  in->data = NULL;
  sl_input_stopped(in);
}

static void on_bridge_closed(struct sl_kafka_bridge *b) {
  on_handle_closed((uv_handle_t *)&((struct kafka_in *)b)->more);
}

static void drop_backlog(struct kafka_in *k) {
  while (k->bl_count) {
    rd_kafka_message_destroy(k->backlog[k->bl_head]);
    k->bl_head = (k->bl_head + 1) % k->bl_cap;
    k->bl_count--;
  }
}

/* Closed (or given up on): close the handles; on_handle_closed frees. */
static void finish(struct kafka_in *k) {
  if (k->finished)
    return;
  k->finished = 1;
  k->more.data = k->commit_timer.data = k->close_timer.data = k;
  uv_close((uv_handle_t *)&k->more, on_handle_closed);
  uv_close((uv_handle_t *)&k->commit_timer, on_handle_closed);
  uv_close((uv_handle_t *)&k->close_timer, on_handle_closed);
  if (k->bridge.open) {
    k->bridge.on_closed = on_bridge_closed;
    sl_kafka_bridge_close(&k->bridge);
  }
}

/* Leaving the group: poll until the consumer closed, at most 5 s. */
static void on_close_timer(uv_timer_t *t) {
  struct kafka_in *k = container_of(t, struct kafka_in, close_timer);
  pump(k);
  if (rd_kafka_consumer_closed(k->rk) ||
      sl_mono_ns() > k->close_deadline)
    finish(k);
}

static void cb_drain(struct sl_input *in) {
  struct kafka_in *k = in->data;
  if (k == NULL || k->rk == NULL)
    return;
  k->draining = 1;
  pause_all(k, 1);
  drop_backlog(k); /* uncommitted: read again after a restart */
}

static uint32_t cb_busy(struct sl_input *in) {
  struct kafka_in *k = in->data;
  return k && k->src.held ? 1 : 0;
}

static void cb_stop(struct sl_input *in) {
  struct kafka_in *k = in->data;
  rd_kafka_error_t *e = NULL;
  if (k == NULL) {
    sl_input_stopped(in);
    return;
  }
  k->closing = 1;
  uv_timer_stop(&k->commit_timer);
  sl_source_close(&k->src);
  if (k->tracker) {
    commit(k); /* what the drain finished */
    sl_worker_undurable(&k->dur);
    sl_tracker_close(k->tracker);
    k->tracker = NULL;
  }
  drop_backlog(k);
  if (k->rk && k->bridge.open)
    e = rd_kafka_consumer_close_queue(k->rk, k->q);
  if (k->rk == NULL || !k->bridge.open || e != NULL) {
    if (e)
      rd_kafka_error_destroy(e);
    finish(k);
    return;
  }
  k->close_deadline = sl_mono_ns() + UINT64_C(5000000000);
  uv_timer_start(&k->close_timer, on_close_timer, 50, 50);
  pump(k);
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = cb_drain,
    .cb_busy = cb_busy,
    .cb_stop = cb_stop,
};

static const char *const starts[] = {"latest", "earliest", NULL};
static const int start_values[] = {0, 1};
static const char *const formats[] = {"auto", "event", "json", "raw", NULL};
static const int format_values[] = {FORMAT_AUTO, FORMAT_EVENT, FORMAT_JSON,
                                    FORMAT_RAW};

static const struct sl_config_key keys[] = {
    {.name = "brokers", .type = SL_KEY_STRING,
     .doc = "bootstrap brokers, \"host:port,host:port\"",
     .flags = SL_KEY_REQUIRED},
    {.name = "group", .type = SL_KEY_STRING,
     .doc = "the consumer group (group.id): instances sharing it share the "
            "partitions", .flags = SL_KEY_REQUIRED},
    {.name = "topics", .type = SL_KEY_STRING,
     .doc = "topics to subscribe to, \"a,b\"; one starting with ^ is a "
            "regex", .flags = SL_KEY_REQUIRED},
    {.name = "start", .type = SL_KEY_ENUM, .def = "latest",
     .doc = "where a group without a committed offset starts "
            "(auto.offset.reset)",
     .choices = starts, .values = start_values},
    {.name = "format", .type = SL_KEY_ENUM, .def = "auto",
     .doc = "the message value: a msgpack event map (event), JSON as the "
            "payload (json), bytes as a binary payload (raw), or event "
            "else JSON (auto)",
     .choices = formats, .values = format_values},
    {.name = "topic", .type = SL_KEY_STRING,
     .doc = "ev.topic for events built from json/raw messages instead of "
            "the Kafka topic"},
    {.name = "commit_interval_ms", .type = SL_KEY_UINT, .def = "1000",
     .doc = "how often done offsets are committed (also on revoke and at "
            "stop)", .min = 10, .max = 3600000},
    {.name = "max_uncommitted", .type = SL_KEY_UINT, .def = "1000000",
     .doc = "messages a partition may have past its commit point (in "
            "flight, or behind a failed one) before it is paused",
     .min = 2, .max = 10000000},
    {.name = "options", .type = SL_KEY_STRING,
     .doc = "librdkafka properties \"k=v,k=v\", set last"},
    {.name = "tls", .type = SL_KEY_TLS, .flags = SL_KEY_TLS_CLIENT,
     .doc = "TLS to the brokers (security.protocol=ssl): ca_file, "
            "cert_file/key_file (mTLS), verify_peer, ciphers",
     SL_KEY_FIELD(struct sl_input_config, tls)},
    {0}};

const struct sl_plugin sl_input_kafka = {
    .config = {SL_PLUGIN_INPUT, "kafka",
               "consumes Kafka topics in a consumer group, at least once",
               keys, check_conf},
    .input = &ops,
};
