/* kafka.c - the kafka output: produces each event to a Kafka topic with
 * librdkafka, acks=all and idempotence on (no duplicates or reordering from
 * the client's own retries; per-key order, the key being ev.key). The
 * topic comes from a template ("{topic}" is the event's topic). The value
 * is the event: its msgpack map (format "event", what the kafka input
 * reads back as the same event) or that map as JSON (format "json");
 * ev.headers become Kafka headers, ev.time the message timestamp.
 *
 * One write (a batch from the core) is in flight at a time: every event of
 * it is handed to librdkafka (which batches them into produce requests),
 * and once every delivery report is in, the write is reported to the core
 * (sl_output_done): the events delivered in order from the front leave the
 * queue; the first failure decides the rest: retried after the core's
 * backoff, or, when Kafka can never take it (too large, invalid, a
 * timestamp out of the broker's range), sent to the dead letter. Kafka
 * answers a produce request with one error for all its records, so such
 * an error on more than one event does not say which one it is for: the
 * write is retried and its events go one per write until each is told
 * apart (the refused one to the dead letter, the others delivered).
 * Events behind a failed one that were delivered are produced again
 * (at-least-once). librdkafka's local queue being full
 * (QUEUE_FULL) ends the write early: what was handed over is waited for,
 * the rest goes in the next write (backpressure: the output's queue fills,
 * its when_full policy applies). message.timeout.ms is retry.timeout_ms,
 * so a broker that stays away fails the write and the core backs off.
 *
 * Delivery reports come through librdkafka's main queue, watched by the
 * pipe bridge (net/kafka.h): no timer, no busy loop, no blocking. */
#include <stdlib.h>
#include <string.h>

#include "worker.h"
#include "plugins.h"
#include "kafka.h"

enum { FORMAT_EVENT, FORMAT_JSON };

struct kafka_out {
  struct sl_kafka_bridge bridge; /* first: the client's opaque */
  struct sl_output *o;
  rd_kafka_t *rk;
  rd_kafka_queue_t *mainq;
  uv_idle_t more;           /* poll again: a serve left events behind */
  int more_open;
  uint32_t gen;             /* the write in flight; stale reports ignored */
  uint32_t n;               /* events handed to librdkafka in this write */
  uint32_t ndone;           /* their delivery reports so far */
  uint32_t nbatch;          /* events in the core's batch */
  uint32_t alone;           /* events still to write one per write: a
                               refusal that named no single event */
  int writing;
  int closing;
  rd_kafka_resp_err_t *results; /* per event of the write */
  uint32_t cap;
  int format;
  struct sl_buf value, topic;
  uint64_t delivery_errors; /* failed delivery reports */
  uint64_t queue_full;      /* writes cut short by librdkafka's queue */
};

static const struct sl_metric m_delivery_errors = {
    "sluice_kafka_output_delivery_errors_total",
    "Kafka delivery reports with an error (the core retries or dead-letters "
    "the event).", SL_METRIC_COUNTER, {"output", NULL}};
static const struct sl_metric m_queue_full = {
    "sluice_kafka_output_queue_full_total",
    "Writes cut short because librdkafka's local queue was full.",
    SL_METRIC_COUNTER, {"output", NULL}};
static const struct sl_metric m_client_errors = {
    "sluice_kafka_client_errors_total",
    "Errors the Kafka client reported (brokers unreachable, ...); it "
    "retries by itself.", SL_METRIC_COUNTER, {"plugin", NULL}};
static const struct sl_metric m_out_inflight = {
    "sluice_kafka_output_in_flight",
    "Messages handed to librdkafka and not yet reported delivered.",
    SL_METRIC_GAUGE, {"output", NULL}};

/* Kafka can never take it: retrying is pointless, the dead letter gets it */
static int permanent(rd_kafka_resp_err_t e) {
  switch (e) {
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
  case RD_KAFKA_RESP_ERR_INVALID_MSG:
  case RD_KAFKA_RESP_ERR_INVALID_RECORD:
  case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
  case RD_KAFKA_RESP_ERR__INVALID_ARG:
  case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
  case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
  case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    return 1;
  default:
    return 0;
  }
}

/* Every report of the write is in: tell the core. */
static void finish_write(struct kafka_out *k) {
  struct sl_output *o = k->o;
  uint32_t i, n = k->n;
  char why[256];
  k->writing = 0;
  for (i = 0; i < n && k->results[i] == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
    ;
  if (i < n) {
    rd_kafka_resp_err_t e = k->results[i];
    uint32_t failed = 0, j;
    for (j = i; j < n; j++)
      failed += k->results[j] == e;
    snprintf(why, sizeof(why), "kafka: %s", rd_kafka_err2str(e));
    if (permanent(e) && failed > 1) {
      /* one request's answer for several events: find the one it meant */
      k->alone = n - i;
      sl_output_done(o, i, SL_WRITE_RETRY, why);
    } else {
      sl_output_done(o, i, permanent(e) ? SL_WRITE_FATAL : SL_WRITE_RETRY,
                     why);
      if (k->alone && permanent(e))
        k->alone--;
    }
  } else if (n == 0) {
    sl_output_done(o, 0, SL_WRITE_RETRY, "kafka: librdkafka's queue is full");
  } else {
    k->alone = k->alone > n ? k->alone - n : 0;
    sl_output_done(o, n, SL_WRITE_OK, NULL); /* the rest of a cut write
                                                goes in the next one */
  }
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
                      void *opaque) {
  struct kafka_out *k = opaque;
  uintptr_t tag = (uintptr_t)m->_private;
  uint32_t gen = (uint32_t)(tag >> 32), i = (uint32_t)(tag & 0xffffffffu);
  (void)rk;
  if (m->err)
    k->delivery_errors++;
  else
    sl_kafka_bridge_up(&k->bridge);
  if (!k->writing || gen != k->gen || i >= k->n)
    return; /* a report from a write already given up (stop) */
  k->results[i] = m->err;
  if (++k->ndone == k->n)
    finish_write(k);
}

static void on_more(uv_idle_t *h);
static int client_renew(struct kafka_out *k);

/* Serve delivery reports, logs and errors; stop after a budget and come
 * back from an idle handle so one burst cannot hold the loop. */
static void serve(struct kafka_out *k) {
  int i;
  for (i = 0; i < 64; i++)
    if (rd_kafka_poll(k->rk, 0) == 0)
      break;
  if (i == 64 && k->more_open && !k->closing)
    uv_idle_start(&k->more, on_more);
  else if (k->more_open)
    uv_idle_stop(&k->more);
}

static void on_more(uv_idle_t *h) { serve(h->data); }

static void on_ready(struct sl_kafka_bridge *b) {
  serve((struct kafka_out *)b);
}

/* topic template: "{topic}" is the event's topic; the rest is literal. */
static const char *topic_of(struct kafka_out *k, const struct sl_event *ev) {
  const char *t = sl_config_value_str(k->o->cfg->values, k->o->cfg->nvalues,
                                      "topic");
  struct sl_str et = sl_event_topic(ev);
  const char *at;
  sl_buf_reset(&k->topic);
  while ((at = strstr(t, "{topic}")) != NULL) {
    if (sl_buf_append(&k->topic, t, (size_t)(at - t)) != 0 ||
        sl_buf_append(&k->topic, et.p, et.len) != 0)
      return NULL;
    t = at + 7;
  }
  if (sl_buf_append(&k->topic, t, strlen(t) + 1) != 0)
    return NULL;
  return (const char *)k->topic.data;
}

/* ev.headers (a msgpack map str -> str) as Kafka headers; NULL: none. */
static rd_kafka_headers_t *headers_of(const struct sl_event *ev) {
  const uint8_t *p = ev->data + ev->headers_off;
  size_t len = ev->headers_len, used;
  uint32_t count, i;
  rd_kafka_headers_t *h;
  if (ev->headers_len == 0 || sl_codec_read_map(p, len, &count, &used) != 0 ||
      count == 0)
    return NULL;
  h = rd_kafka_headers_new(count);
  p += used;
  len -= used;
  for (i = 0; i < count; i++) {
    struct sl_str name, value;
    if (sl_codec_read_str(p, len, &name, &used) != 0)
      break;
    p += used;
    len -= used;
    if (sl_codec_read_str(p, len, &value, &used) != 0)
      break;
    p += used;
    len -= used;
    rd_kafka_header_add(h, name.p, (ssize_t)name.len, value.p,
                        (ssize_t)value.len);
  }
  return h;
}

/* Hand event i of the write to librdkafka. */
static rd_kafka_resp_err_t produce(struct kafka_out *k,
                                   const struct sl_event *ev, uint32_t i) {
  const char *topic = topic_of(k, ev);
  struct sl_str key = sl_event_key(ev);
  const void *val = ev->data;
  size_t vlen = ev->len;
  rd_kafka_headers_t *h;
  rd_kafka_resp_err_t e;
  if (topic == NULL)
    return RD_KAFKA_RESP_ERR__FAIL;
  if (k->format == FORMAT_JSON) {
    sl_buf_reset(&k->value);
    if (sl_codec_to_json(ev->data, ev->len, &k->value) != 0)
      return RD_KAFKA_RESP_ERR__FAIL;
    val = k->value.data;
    vlen = k->value.len;
  }
  h = headers_of(ev);
  e = rd_kafka_producev(
      k->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_VALUE((void *)val, vlen),
      RD_KAFKA_V_KEY(key.p, key.p ? key.len : 0),
      RD_KAFKA_V_TIMESTAMP(ev->time / 1000000),
      RD_KAFKA_V_HEADERS(h),
      RD_KAFKA_V_OPAQUE((void *)(((uintptr_t)k->gen << 32) | i)),
      RD_KAFKA_V_END);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR && h)
    rd_kafka_headers_destroy(h); /* librdkafka owns them only on success */
  return e;
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct kafka_out *k = o->data;
  uint32_t i;
  if (k->bridge.fatal && client_renew(k) != 0) {
    sl_output_done(o, 0, SL_WRITE_RETRY, "kafka: the producer had a fatal "
                   "error and cannot be created again");
    return;
  }
  if (b->n > k->cap) {
    rd_kafka_resp_err_t *r = realloc(k->results, b->n * sizeof(*r));
    if (r == NULL) {
      sl_output_done(o, 0, SL_WRITE_RETRY, "out of memory");
      return;
    }
    k->results = r;
    k->cap = b->n;
  }
  k->gen++;
  k->writing = 1;
  k->n = 0;
  k->ndone = 0;
  k->nbatch = b->n;
  for (i = 0; i < b->n && (k->alone == 0 || i < 1); i++) {
    rd_kafka_resp_err_t e = produce(k, sl_queue_at(&o->q, b->first + i), i);
    if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      k->queue_full++;
      break; /* wait for what went; the rest in the next write */
    }
    k->results[i] = e;
    k->n++;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      k->ndone++; /* refused at once: no report will come for it */
      break;
    }
  }
  if (k->ndone == k->n)
    finish_write(k); /* nothing handed over waits for a report */
  else
    serve(k); /* reports of earlier writes' retries, logs */
}

static void collect(struct sl_metric_out *out, const struct sl_metric *m,
                    void *data) {
  struct kafka_out *k = data;
  const char *v[] = {k->o->cfg->name};
  sl_metric_put_u64(out, v, k->rk ? (uint64_t)rd_kafka_outq_len(k->rk) : 0);
}

static int add_metrics(struct kafka_out *k) {
  struct sl_metric_registry *r = k->o->w->metrics;
  const char *v[] = {k->o->cfg->name};
  if (r == NULL)
    return 0;
  if (sl_metric_add_u64(r, &m_delivery_errors, v, &k->delivery_errors, k) ||
      sl_metric_add_u64(r, &m_queue_full, v, &k->queue_full, k) ||
      sl_metric_add_u64(r, &m_client_errors, v, &k->bridge.errors, k) ||
      sl_metric_add(r, &m_out_inflight, collect, k))
    return SL_ENOMEM;
  return 0;
}

/* The producer (k->rk) and its main queue (k->mainq) from o's config.
 * 0, or a negative code with err filled. */
static int client_new(struct kafka_out *k, char *err, size_t errlen) {
  const struct sl_output_config *cfg = k->o->cfg;
  rd_kafka_conf_t *conf;
  char tmo[32], max[32];
  size_t maxlen = sizeof(max);
  const char *defaults[] = {"acks", "all", "enable.idempotence", "true",
                            "message.timeout.ms", tmo, NULL};
  /* a delivery that takes longer fails the write (the core backs off) */
  snprintf(tmo, sizeof(tmo), "%u",
           cfg->retry.timeout_ms ? cfg->retry.timeout_ms : 300000);
  conf = sl_kafka_conf(
      &k->bridge, sl_config_value_str(cfg->values, cfg->nvalues, "brokers"),
      defaults, &cfg->tls,
      sl_config_value_str(cfg->values, cfg->nvalues, "options"), err,
      errlen);
  if (conf == NULL)
    return SL_EINVAL;
  /* events larger than Kafka takes go to the dead letter before a try */
  if (rd_kafka_conf_get(conf, "message.max.bytes", max, &maxlen) ==
          RD_KAFKA_CONF_OK && atol(max) > 4096)
    k->o->max_event_bytes = (uint32_t)atol(max) - 1024; /* key, headers */
  k->o->max_event_note = " (the producer's message.max.bytes less 1 KiB)";
  rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
  k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
  if (k->rk == NULL) {
    rd_kafka_conf_destroy(conf);
    return SL_EINVAL;
  }
  rd_kafka_set_log_queue(k->rk, NULL); /* logs on the main queue too */
  k->mainq = rd_kafka_queue_get_main(k->rk);
  return 0;
}

/* Drop a producer: what it was not reported to have delivered stays in
 * o's queue (or its disk buffer), so librdkafka's copies are purged
 * rather than waited for. */
static void client_free(rd_kafka_t *rk, rd_kafka_queue_t *q) {
  if (q)
    rd_kafka_queue_destroy(q);
  if (rk) {
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_destroy(rk);
  }
}

/* After a fatal error (the idempotent producer lost its sequence with a
 * broker) librdkafka refuses every message for good: a new producer
 * takes over, between writes. What the old one had in flight failed its
 * write and is retried there (at-least-once). 0, or the old one stays
 * and the next write tries again. */
static int client_renew(struct kafka_out *k) {
  rd_kafka_t *old = k->rk;
  rd_kafka_queue_t *oldq = k->mainq;
  char err[256];
  if (client_new(k, err, sizeof(err)) != 0) {
    k->rk = old;
    k->mainq = oldq;
    sl_log(SL_LOG_ERROR, "kafka producer cannot be created again",
           SL_S("output", k->o->cfg->name), SL_S("error", err), SL_END);
    return SL_EINVAL;
  }
  sl_kafka_bridge_switch(&k->bridge, k->mainq);
  k->gen++; /* a late report of the old one's is stale */
  client_free(old, oldq);
  sl_log(SL_LOG_INFO, "kafka producer created again",
         SL_S("output", k->o->cfg->name), SL_END);
  return 0;
}

static void cb_stop(struct sl_output *o);

/* A start that fails stops what it began (the core never stops an output
 * whose start failed: a reload that refuses it would leak the client and
 * its threads). */
static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  const struct sl_output_config *cfg = o->cfg;
  struct kafka_out *k = calloc(1, sizeof(*k));
  int rc;
  if (k == NULL)
    return SL_ENOMEM;
  k->o = o;
  o->data = k;
  sl_buf_init(&k->value);
  sl_buf_init(&k->topic);
  k->format = (int)sl_config_value_num(cfg->values, cfg->nvalues, "format");
  k->bridge.kind = "output";
  k->bridge.name = cfg->name;
  k->bridge.on_ready = on_ready;
  if ((rc = client_new(k, err, errlen)) != 0) {
    cb_stop(o);
    return rc;
  }
  uv_idle_init(&o->w->loop, &k->more);
  k->more.data = k;
  k->more_open = 1;
  rc = sl_kafka_bridge_start(&k->bridge, &o->w->loop, k->mainq);
  if (rc != 0) {
    snprintf(err, errlen, "kafka: cannot watch the client: %s",
             uv_strerror(rc));
    cb_stop(o);
    return rc;
  }
  if (add_metrics(k) != 0) {
    snprintf(err, errlen, "out of memory");
    cb_stop(o);
    return SL_ENOMEM;
  }
  serve(k);
  return 0;
}

static void on_bridge_closed(struct sl_kafka_bridge *b) {
  struct kafka_out *k = (struct kafka_out *)b;
  struct sl_output *o = k->o;
  client_free(k->rk, k->mainq); /* no waiting on a broker at exit */
  sl_metric_remove(o->w->metrics, k);
  sl_buf_close(&k->value);
  sl_buf_close(&k->topic);
  free(k->results);
  free(k);
  o->data = NULL;
  sl_output_stopped(o);
}

static void on_idle_closed(uv_handle_t *h) {
  struct kafka_out *k = container_of((uv_idle_t *)h, struct kafka_out, more);
  k->bridge.on_closed = on_bridge_closed;
  sl_kafka_bridge_close(&k->bridge);
}

static void cb_stop(struct sl_output *o) {
  struct kafka_out *k = o->data;
  if (k == NULL) {
    sl_output_stopped(o);
    return;
  }
  if (k->closing)
    return; /* stopping already (a failed start stopped itself) */
  k->closing = 1;
  k->writing = 0; /* late reports are ignored */
  if (k->more_open) {
    k->more_open = 0;
    uv_close((uv_handle_t *)&k->more, on_idle_closed);
  } else {
    on_idle_closed((uv_handle_t *)&k->more);
  }
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_stop = cb_stop,
};

static const char *const formats[] = {"event", "json", NULL};
static const int format_values[] = {FORMAT_EVENT, FORMAT_JSON};

static const struct sl_config_key keys[] = {
    {.name = "brokers", .type = SL_KEY_STRING,
     .doc = "bootstrap brokers, \"host:port,host:port\"",
     .flags = SL_KEY_REQUIRED},
    {.name = "topic", .type = SL_KEY_STRING, .def = "{topic}",
     .doc = "the Kafka topic; {topic} is replaced by the event's topic"},
    {.name = "format", .type = SL_KEY_ENUM, .def = "event",
     .doc = "the message value: the event's msgpack map (event) or it as "
            "JSON (json)",
     .choices = formats, .values = format_values},
    {.name = "options", .type = SL_KEY_STRING,
     .doc = "librdkafka properties \"k=v,k=v\", set last (acks=all and "
            "enable.idempotence=true are the defaults)"},
    {.name = "retry.timeout_ms", .type = SL_KEY_CORE, .def = "30000",
     .doc = "message.timeout.ms: a delivery not reported by then fails",
     .min = 0, .max = 3600000},
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "TLS to the brokers (security.protocol=ssl): ca_file, "
            "cert_file/key_file (mTLS), verify_peer, ciphers",
     SL_KEY_FIELD(struct sl_output_config, tls)},
    {0}};

/* The keys taken together (sl_config_plugin.check): brokers, tls and
 * options librdkafka takes. 0, or SL_EINVAL with why in err. */
static int check_conf(const void *conf, char *err, size_t errlen) {
  const struct sl_output_config *cfg = conf;
  return sl_kafka_check(
      sl_config_value_str(cfg->values, cfg->nvalues, "brokers"), &cfg->tls,
      sl_config_value_str(cfg->values, cfg->nvalues, "options"), err, errlen);
}

const struct sl_plugin sl_output_kafka = {
    .config = {SL_PLUGIN_OUTPUT, "kafka",
               "produces events to Kafka (acks=all, idempotent)", keys,
               check_conf},
    .output = &ops,
};
