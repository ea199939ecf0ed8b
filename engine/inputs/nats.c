/* nats.c - the nats input: a JetStream durable pull consumer (at least
 * once) or a core NATS subscription, optionally in a queue group (at most
 * once: core NATS keeps nothing for a subscriber that died).
 *
 * Threads. libnats 3.4 pulls with natsSubscription_Fetch, a blocking call
 * with no asynchronous form, and delivers publish acks and connection
 * events on its own threads even with its libuv adapter; so the adapter
 * buys nothing here and is not used. Each input runs one thread of its
 * own that connects, sets up the consumer and fetches; it hands messages
 * to the loop through a ring of 2 x batch slots guarded by a mutex and a
 * uv_async, and fetches again only when the ring has room and the loop
 * has not paused it (sl_worker_submit said SL_EAGAIN). Everything else
 * (events, tracker, acks) happens on the loop: natsMsg_Ack and _Nak are
 * buffered publishes (libnats' flusher thread writes them; a full buffer
 * is written in place, bounded by write_timeout_ms, net/nats.c).
 *
 * Acks. Each JetStream message is tracked (its natsMsg is the token); the
 * tracker's done callback with ok = 1 queues it, and a batch of them is
 * acked once sl_worker_durable says the events submitted so far are where
 * their outputs' policies promise. ok = 0 (given up, not delivered): nak,
 * so the server redelivers it now. A message that does not parse goes to
 * the dead letter (tracked like any event) and is acked once it is there;
 * without a dead letter it is terminated (natsMsg_Term) and counted. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "json.h"
#include "nats.h"
#include "plugins.h"
#include "utf8.h"

enum { FMT_AUTO, FMT_EVENT, FMT_JSON, FMT_RAW };

struct nats_in {
  struct sl_input *in;
  struct sl_worker *w;
  /* config */
  const char *url, *subject, *stream, *durable, *queue;
  uint32_t batch, max_ack_pending, ack_wait_ms;
  int format, create_stream, js_mode;
  /* the fetch thread's, published under mu */
  natsConnection *nc;
  jsCtx *js;
  natsSubscription *sub;
  natsSubscription **retired; /* subs of a consumer that went: messages
                                 in flight still point at them */
  size_t nretired;
  uv_thread_t thread;
  int thread_started;
  struct sl_nats nats; /* its mu and cond also guard the ring and quit */
  natsMsg **ring; /* hand-off: cap slots */
  uint32_t cap, head, count;
  int paused;     /* the loop waits on the pipeline: fetch no more */
  int quit;
  char error[200]; /* the thread's last problem, for the loop to log */
  int error_new;
  int subscribed_new; /* the thread subscribed: the loop logs it */
  _Atomic uint64_t a_pending, a_ack_pending;
  _Atomic uint64_t a_dropped; /* core: libnats' drops for a slow consumer */
  _Atomic int a_info;
  /* the loop's */
  uv_async_t async;
  int async_open;
  uv_timer_t ack_timer;
  int ack_timer_open;
  struct sl_source src;
  struct sl_tracker *tracker;
  natsMsg **to_ack, **acking;   /* done ok; acking waits for durable */
  size_t nto_ack, cto_ack, nacking, cacking;
  struct sl_durable dur;
  int draining, stopping, info_seen;
  uint64_t dropped_seen;  /* of a_dropped, counted in stats.dropped */
  struct sl_log_limiter drop_log;
  uv_work_t close_req;
  /* metrics */
  uint64_t acked, naked, redeliveries, pending, ack_pending, bad,
      termed, in_flight;
};

static void log_thread_error(struct nats_in *ni, const char *what,
                             natsStatus s) {
  uv_mutex_lock(&ni->nats.mu);
  snprintf(ni->error, sizeof(ni->error), "%s: %s (%s)", what,
           natsStatus_GetText(s), nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
  ni->error_new = 1;
  uv_mutex_unlock(&ni->nats.mu);
  uv_async_send(&ni->async);
}

/* ---- the fetch thread ---------------------------------------------------- */

static int should_quit(struct nats_in *ni) {
  int q;
  uv_mutex_lock(&ni->nats.mu);
  q = ni->quit;
  uv_mutex_unlock(&ni->nats.mu);
  return q;
}

static natsStatus connect_nats(struct nats_in *ni) {
  natsConnection *nc = NULL;
  natsStatus s = sl_nats_connect(&ni->nats, ni->url, ni->in->cfg->name,
                                 &ni->in->cfg->tls, &nc);
  if (s != NATS_OK)
    return s;
  uv_mutex_lock(&ni->nats.mu);
  ni->nc = nc;
  uv_mutex_unlock(&ni->nats.mu);
  atomic_store(&ni->nats.a_connected, 1);
  uv_async_send(&ni->async);
  return NATS_OK;
}

/* The stream (create_stream) and the durable consumer, then a pull
 * subscription bound to it: bound, so that closing never deletes it. */
static natsStatus setup_js(struct nats_in *ni) {
  jsStreamConfig sc;
  jsConsumerConfig cc;
  jsSubOptions so;
  jsStreamInfo *si = NULL;
  jsConsumerInfo *ci = NULL;
  jsErrCode jerr = 0;
  const char *subjects[1] = {ni->subject};
  natsStatus s = ni->js ? NATS_OK : natsConnection_JetStream(&ni->js, ni->nc, NULL);
  if (s != NATS_OK)
    return s;
  if (ni->create_stream) {
    jsStreamConfig_Init(&sc);
    sc.Name = ni->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    s = js_AddStream(&si, ni->js, &sc, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK && jerr != JSStreamNameExistErr)
      return s;
  }
  jsConsumerConfig_Init(&cc);
  cc.Durable = ni->durable;
  cc.AckPolicy = js_AckExplicit;
  cc.AckWait = (int64_t)ni->ack_wait_ms * 1000000;
  cc.MaxAckPending = ni->max_ack_pending;
  cc.FilterSubject = ni->subject;
  s = js_AddConsumer(&ci, ni->js, ni->stream, &cc, NULL, &jerr);
  jsConsumerInfo_Destroy(ci);
  if (s != NATS_OK && jerr != JSConsumerNameExistErr &&
      jerr != JSConsumerExistingActiveErr)
    return s;
  jsSubOptions_Init(&so);
  so.Stream = ni->stream;
  so.Consumer = ni->durable;
  so.ManualAck = true;
  return js_PullSubscribe(&ni->sub, ni->js, ni->subject, ni->durable, NULL,
                          &so, &jerr);
}

static natsStatus setup(struct nats_in *ni) {
  natsStatus s;
  if (ni->nc == NULL && (s = connect_nats(ni)) != NATS_OK)
    return s;
  if (ni->js_mode)
    return setup_js(ni);
  if (ni->queue)
    return natsConnection_QueueSubscribeSync(&ni->sub, ni->nc, ni->subject,
                                             ni->queue);
  return natsConnection_SubscribeSync(&ni->sub, ni->nc, ni->subject);
}

/* Wait until the loop has room for want more messages; 0 when quitting. */
static int wait_room(struct nats_in *ni, uint32_t want) {
  int ok;
  uv_mutex_lock(&ni->nats.mu);
  while (!ni->quit && (ni->paused || ni->count + want > ni->cap))
    uv_cond_wait(&ni->nats.cond, &ni->nats.mu);
  ok = !ni->quit;
  uv_mutex_unlock(&ni->nats.mu);
  return ok;
}

static void hand_over(struct nats_in *ni, natsMsg **msgs, int n) {
  int i;
  uv_mutex_lock(&ni->nats.mu);
  for (i = 0; i < n; i++) {
    ni->ring[(ni->head + ni->count) % ni->cap] = msgs[i];
    ni->count++;
    msgs[i] = NULL;
  }
  uv_mutex_unlock(&ni->nats.mu);
  uv_async_send(&ni->async);
}

/* The consumer's pending count for the metric, every few seconds: one
 * request on this thread, never on the loop. Returns 1 when the server
 * says the consumer or its stream is gone (deleted, or a server that lost
 * its store): a fetch from it only ever times out, as on a quiet stream. */
static int poll_pending(struct nats_in *ni, uint64_t *last) {
  jsConsumerInfo *ci = NULL;
  jsErrCode jerr = 0;
  uint64_t now = sl_mono_ns();
  if (now - *last < 2000000000ull)
    return 0;
  *last = now;
  if (js_GetConsumerInfo(&ci, ni->js, ni->stream, ni->durable, NULL, &jerr) !=
      NATS_OK)
    return jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr;
  atomic_store(&ni->a_pending, ci->NumPending);
  atomic_store(&ni->a_ack_pending, (uint64_t)ci->NumAckPending);
  atomic_store(&ni->a_info, 1);
  jsConsumerInfo_Destroy(ci);
  uv_async_send(&ni->async);
  return 0;
}

/* Subscribe again (setup makes the stream, with create_stream, and the
 * consumer): the old subscription stops, and is kept until the input
 * stops, for its messages still in flight. */
static void resubscribe(struct nats_in *ni) {
  natsSubscription **v = realloc(ni->retired,
                                 (ni->nretired + 1) * sizeof(*v));
  if (v == NULL)
    return; /* tried again at the next look */
  ni->retired = v;
  natsSubscription_Unsubscribe(ni->sub); /* bound: the server's is kept */
  v[ni->nretired++] = ni->sub;
  ni->sub = NULL;
  log_thread_error(ni, "the durable consumer is gone; creating it again",
                   NATS_NOT_FOUND);
}

static void fetch_thread(void *arg) {
  struct nats_in *ni = arg;
  natsStatus s;
  uint64_t last_info = 0;
  int failing = 0;

  while (!should_quit(ni)) {
    if (ni->sub == NULL) {
      if ((s = setup(ni)) != NATS_OK) {
        if (!failing)
          log_thread_error(ni, "cannot subscribe; retrying", s);
        failing = 1;
        uv_sleep(500);
        continue;
      }
      failing = 0;
      /* the server has the subscription once a round trip is back */
      natsConnection_FlushTimeout(ni->nc, 2000);
      uv_mutex_lock(&ni->nats.mu);
      ni->subscribed_new = 1;
      uv_mutex_unlock(&ni->nats.mu);
      uv_async_send(&ni->async);
    }
    if (ni->js_mode) {
      natsMsgList list = {0};
      jsErrCode jerr = 0;
      if (!wait_room(ni, ni->batch))
        break;
      s = natsSubscription_Fetch(&list, ni->sub, (int)ni->batch, 1000, &jerr);
      if (s == NATS_OK)
        hand_over(ni, list.Msgs, list.Count);
      natsMsgList_Destroy(&list);
      if (s != NATS_OK && s != NATS_TIMEOUT) {
        if (s != NATS_CONNECTION_CLOSED && !failing)
          log_thread_error(ni, "fetch failed; retrying", s);
        failing = 1;
        uv_sleep(200); /* disconnected: libnats reconnects meanwhile */
      } else {
        failing = 0;
      }
      if (poll_pending(ni, &last_info))
        resubscribe(ni);
    } else {
      natsMsg *m = NULL;
      if (!wait_room(ni, 1))
        break;
      int64_t dropped = 0;
      s = natsSubscription_NextMsg(&m, ni->sub, 500);
      if (s == NATS_OK)
        hand_over(ni, &m, 1);
      else if (s != NATS_TIMEOUT && s != NATS_SLOW_CONSUMER)
        uv_sleep(200);
      /* past its pending limits libnats drops what arrives (the pipeline
       * blocks, or the loop is slow): lost, so at least counted */
      if (natsSubscription_GetDropped(ni->sub, &dropped) == NATS_OK &&
          (uint64_t)dropped != atomic_load(&ni->a_dropped)) {
        atomic_store(&ni->a_dropped, (uint64_t)dropped);
        uv_async_send(&ni->async);
      }
    }
  }
}

/* ---- messages to events (loop) ------------------------------------------ */

static int put_pair(struct sl_buf *b, const char *k, const char *v,
                    uint32_t *n) {
  (*n)++;
  return sl_codec_put_str(b, k, strlen(k)) ||
         sl_codec_put_str(b, v, strlen(v));
}

/* The event's headers: those it carried (an event body: its own map; else
 * the NATS headers, the first value of each), then nats-subject and, from
 * JetStream, nats-stream, nats-seq (stream sequence) and nats-delivered
 * (delivery count, 1 the first time). */
static int build_headers(struct sl_buf *b, natsMsg *m, jsMsgMetaData *md,
                         const struct sl_event_view *v) {
  size_t at = b->len;
  uint32_t n = 0, i;
  char num[32];
  int rc = sl_buf_append(b, "\0\0\0\0\0", 5);
  if (rc)
    return rc;
  if (v && v->headers) {
    const uint8_t *p = v->headers, *end = v->headers + v->headers_len;
    uint32_t cnt;
    size_t used;
    struct sl_str k;
    sl_codec_read_map(p, end - p, &cnt, &used);
    p += used;
    for (i = 0; i < cnt; i++) {
      size_t ku, vu;
      sl_codec_read_str(p, end - p, &k, &ku);
      sl_codec_skip(p + ku, end - p - ku, end - p, &vu, NULL);
      if (!sl_nats_header_is_meta(k.p, k.len)) {
        if ((rc = sl_buf_append(b, p, ku + vu)))
          return rc;
        n++;
      }
      p += ku + vu;
    }
  } else if (v == NULL) {
    const char **keys = NULL;
    int count = 0, j;
    if (natsMsgHeader_Keys(m, &keys, &count) == NATS_OK) {
      for (j = 0; j < count && rc == 0; j++) {
        const char *val = NULL;
        if (sl_nats_header_is_meta(keys[j], strlen(keys[j])) ||
            natsMsgHeader_Get(m, keys[j], &val) != NATS_OK || val == NULL)
          continue;
        rc = put_pair(b, keys[j], val, &n);
      }
      free((void *)keys);
      if (rc)
        return rc;
    }
  }
  rc = put_pair(b, "nats-subject", natsMsg_GetSubject(m), &n);
  if (rc == 0 && md) {
    rc = put_pair(b, "nats-stream", md->Stream ? md->Stream : "", &n);
    snprintf(num, sizeof(num), "%llu",
             (unsigned long long)md->Sequence.Stream);
    if (rc == 0)
      rc = put_pair(b, "nats-seq", num, &n);
    snprintf(num, sizeof(num), "%llu", (unsigned long long)md->NumDelivered);
    if (rc == 0)
      rc = put_pair(b, "nats-delivered", num, &n);
  }
  if (rc == 0)
    sl_codec_patch_header(b, at, 1, n);
  return rc;
}

/* The payload of a json or raw body into b; NULL why on success. */
static const char *body_payload(struct nats_in *ni, const char *data, int len,
                                struct sl_buf *b, char *err, size_t errlen) {
  if (ni->format == FMT_RAW) {
    if (sl_utf8_valid(data, (size_t)len))
      return sl_codec_put_str(b, data, (size_t)len) ? "out of memory" : NULL;
    return sl_codec_put_bin(b, data, (size_t)len) ? "out of memory" : NULL;
  }
  if (sl_json_to_msgpack(data, (size_t)len, b, err, errlen) != 0)
    return err;
  return NULL;
}

/* The body as a sluice event map (format event, or auto when it is one):
 * 1 with v filled, 0 when it is not one, -1 when format event and bad. */
static int body_event(struct nats_in *ni, const uint8_t *d, int len,
                      struct sl_event_view *v, char *err, size_t errlen) {
  struct sl_codec_error ce;
  size_t used;
  if (ni->format != FMT_EVENT && ni->format != FMT_AUTO)
    return 0;
  if (ni->format == FMT_AUTO &&
      (len == 0 || !((d[0] & 0xf0) == 0x80 || d[0] == 0xde || d[0] == 0xdf)))
    return 0;
  if (sl_codec_skip(d, (size_t)len, (size_t)len, &used, &ce) == 0 &&
      used == (size_t)len && sl_codec_parse_event(d, used, v, &ce) == 0)
    return 1;
  snprintf(err, errlen, "not a sluice event: %s at byte %zu", ce.msg,
           ce.offset);
  return ni->format == FMT_EVENT ? -1 : 0;
}

/* Build the event of message m; NULL with why set when it cannot be one. */
static struct sl_event *to_event(struct nats_in *ni, natsMsg *m,
                                 jsMsgMetaData *md, const char **why,
                                 char *err, size_t errlen) {
  const char *data = natsMsg_GetData(m);
  int len = natsMsg_GetDataLength(m);
  struct sl_event_view v;
  struct sl_buf hb, pb;
  struct sl_event *ev = NULL;
  char idbuf[160];
  struct sl_str id = {NULL, 0}, topic, nokey = {NULL, 0};
  int isev;

  *why = NULL;
  if ((uint32_t)len > ni->w->cfg->max_event_bytes) {
    *why = "message larger than max_event_bytes";
    return NULL;
  }
  isev = body_event(ni, (const uint8_t *)data, len, &v, err, errlen);
  if (isev < 0) {
    *why = err;
    return NULL;
  }
  sl_buf_init(&hb);
  sl_buf_init(&pb);
  if (build_headers(&hb, m, md, isev ? &v : NULL) != 0) {
    *why = "out of memory";
    goto fail_;
  }
  if (isev) {
    v.headers = hb.data;
    v.headers_len = (uint32_t)hb.len;
    ev = sl_event_from_view(&ni->w->idgen, &v, 1);
  } else {
    if ((*why = body_payload(ni, data, len, &pb, err, errlen)) != NULL)
      goto fail_;
    if (md) {
      /* a redelivery keeps its id: downstream dedup (and a JetStream
       * output's Nats-Msg-Id) can drop the repeat */
      snprintf(idbuf, sizeof(idbuf), "%s-%llu", md->Stream ? md->Stream : "",
               (unsigned long long)md->Sequence.Stream);
      id.p = idbuf;
      id.len = (uint32_t)strlen(idbuf);
    }
    topic.p = natsMsg_GetSubject(m);
    topic.len = (uint32_t)strlen(topic.p);
    ev = sl_event_new(&ni->w->idgen, id, topic, nokey, md != NULL,
                      md ? md->Timestamp : 0, hb.data, hb.len, pb.data,
                      pb.len, 1);
  }
  if (ev == NULL && *why == NULL)
    *why = "out of memory";
fail_:
  sl_buf_close(&hb);
  sl_buf_close(&pb);
  return ev;
}

/* ---- metrics ---------------------------------------------------------- */

static const struct sl_metric m_in_flight = {
    "sluice_nats_in_flight", "JetStream messages handed to the pipeline and "
    "not yet acked or naked.", SL_METRIC_GAUGE, {"input", NULL}};
static const struct sl_metric m_acked = {
    "sluice_nats_acked_total", "JetStream messages acked once their events "
    "were delivered, buffered or dropped on purpose.", SL_METRIC_COUNTER,
    {"input", NULL}};
static const struct sl_metric m_naked = {
    "sluice_nats_naked_total", "JetStream messages naked for redelivery "
    "(their events were given up, or the input drained).", SL_METRIC_COUNTER,
    {"input", NULL}};
static const struct sl_metric m_redelivered = {
    "sluice_nats_redeliveries_total", "JetStream messages received with a "
    "delivery count above 1.", SL_METRIC_COUNTER, {"input", NULL}};
static const struct sl_metric m_pending = {
    "sluice_nats_consumer_pending", "Messages in the stream not yet "
    "delivered to the durable consumer (consumer info, every 2 s).",
    SL_METRIC_GAUGE, {"input", NULL}};
static const struct sl_metric m_ack_pending = {
    "sluice_nats_consumer_ack_pending", "Messages delivered to the durable "
    "consumer (any instance) and not acked yet (consumer info, every 2 s).",
    SL_METRIC_GAUGE, {"input", NULL}};
static const struct sl_metric m_bad = {
    "sluice_nats_bad_messages_total", "Messages that were no event (sent "
    "to the dead letter, or terminated without one).", SL_METRIC_COUNTER,
    {"input", NULL}};

/* ---- acks (loop) --------------------------------------------------------- */

static int push_msg(natsMsg ***v, size_t *n, size_t *cap, natsMsg *m) {
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 64;
    natsMsg **p = realloc(*v, nc * sizeof(*p));
    if (p == NULL)
      return SL_ENOMEM;
    *v = p;
    *cap = nc;
  }
  (*v)[(*n)++] = m;
  return 0;
}

static void nak(struct nats_in *ni, natsMsg *m) {
  if (ni->js_mode) {
    natsMsg_Nak(m, NULL); /* failing: AckWait redelivers it anyway */
    ni->naked++;
  }
  natsMsg_Destroy(m);
}

static void ack_all(struct nats_in *ni, int ok) {
  size_t i;
  for (i = 0; i < ni->nacking; i++) {
    if (!ok) {
      nak(ni, ni->acking[i]);
      continue;
    }
    natsMsg_Ack(ni->acking[i], NULL); /* buffered: the flusher writes it */
    natsMsg_Destroy(ni->acking[i]);
    ni->acked++;
  }
  ni->in_flight -= ni->nacking;
  ni->nacking = 0;
}

static void flush_acks(struct nats_in *ni) {
  natsMsg **t;
  size_t c;
  int rc;
  if (ni->dur.waiting || ni->nto_ack == 0)
    return;
  /* what is done now was submitted before this call: durable covers it */
  t = ni->acking, ni->acking = ni->to_ack, ni->to_ack = t;
  c = ni->cacking, ni->cacking = ni->cto_ack, ni->cto_ack = c;
  ni->nacking = ni->nto_ack;
  ni->nto_ack = 0;
  rc = sl_worker_durable(ni->w, &ni->dur);
  if (rc == SL_EAGAIN)
    return; /* on_durable acks them */
  ack_all(ni, rc == 0); /* SL_EIO: a disk refused them: redeliver */
}

static void on_durable(struct sl_durable *d) {
  struct nats_in *ni = container_of(d, struct nats_in, dur);
  ack_all(ni, 1);
  flush_acks(ni);
}

static void on_ack_timer(uv_timer_t *t) { flush_acks(t->data); }

static void on_done(struct sl_tracker *t, uint64_t token, int ok) {
  struct nats_in *ni = t->data;
  natsMsg *m = (natsMsg *)(uintptr_t)token;
  if (!ok || push_msg(&ni->to_ack, &ni->nto_ack, &ni->cto_ack, m) != 0) {
    nak(ni, m);
    ni->in_flight--;
    return;
  }
  /* batch the acks of one loop turn behind one durable check */
  if (!uv_is_active((uv_handle_t *)&ni->ack_timer))
    uv_timer_start(&ni->ack_timer, on_ack_timer, 0, 0);
}

/* ---- messages into the pipeline (loop) ---------------------------------- */

/* A message that is no event: to the dead letter with sluice-error, its
 * body as binary payload (cut to half of max_event_bytes); acked once
 * there. Without a dead letter (or when it cannot take it) it is
 * terminated: a redelivery would fail the same way. */
static void dead_letter(struct nats_in *ni, natsMsg *m, jsMsgMetaData *md,
                        const char *why) {
  struct sl_worker *w = ni->w;
  struct sl_output *dl = w->cfg->dead_letter >= 0 &&
                                 w->cfg->dead_letter < w->noutputs
                             ? &w->outputs[w->cfg->dead_letter]
                             : NULL;
  struct sl_buf hb, pb;
  struct sl_event *ev = NULL, *e2 = NULL;
  struct sl_str id = {NULL, 0}, topic, nokey = {NULL, 0};
  size_t len = (size_t)natsMsg_GetDataLength(m);
  uint64_t suppressed = 0;
  int rc = -1;

  ni->in->stats.bad_input++;
  ni->bad++;
  if (sl_log_allow(&w->bad_input_log, &suppressed))
    sl_log(SL_LOG_WARN, "bad message; to the dead letter",
           SL_S("input", ni->in->cfg->name),
           SL_S("subject", natsMsg_GetSubject(m)), SL_S("error", why),
           SL_U("suppressed", suppressed), SL_END);
  sl_buf_init(&hb);
  sl_buf_init(&pb);
  if (len > w->cfg->max_event_bytes / 2)
    len = w->cfg->max_event_bytes / 2;
  topic.p = natsMsg_GetSubject(m);
  topic.len = (uint32_t)strlen(topic.p);
  if (dl && !dl->stopped && build_headers(&hb, m, md, NULL) == 0 &&
      sl_codec_put_bin(&pb, natsMsg_GetData(m), len) == 0 &&
      (ev = sl_event_new(&w->idgen, id, topic, nokey, 0, 0, hb.data, hb.len,
                         pb.data, pb.len, 1)) != NULL &&
      (e2 = sl_event_with_header(ev, "sluice-error", why, strlen(why))) &&
      (!ni->js_mode || sl_event_track(e2, ni->tracker, (uintptr_t)m) == 0)) {
    if (ni->js_mode)
      ni->in_flight++;
    rc = sl_output_push(dl, e2);
    if (rc == SL_EAGAIN || rc == SL_EIO)
      sl_event_fail_track(e2); /* not taken: nak, it comes again */
  }
  sl_event_unref(ev);
  if (e2)
    sl_event_unref(e2);
  sl_buf_close(&hb);
  sl_buf_close(&pb);
  if (rc == -1) {
    if (ni->js_mode) {
      natsMsg_Term(m, NULL);
      ni->termed++;
    }
    natsMsg_Destroy(m);
  } else if (!ni->js_mode) {
    natsMsg_Destroy(m);
  }
}

/* One message into the pipeline. SL_EAGAIN: the source holds it. */
static int submit(struct nats_in *ni, natsMsg *m) {
  jsMsgMetaData *md = NULL;
  struct sl_event *ev;
  const char *why;
  char err[200];
  int rc;

  if (ni->js_mode && natsMsg_GetMetaData(&md, m) != NATS_OK)
    md = NULL;
  if (md && md->NumDelivered > 1)
    ni->redeliveries++;
  ev = to_event(ni, m, md, &why, err, sizeof(err));
  if (ev == NULL) {
    dead_letter(ni, m, md, why);
    jsMsgMetaData_Destroy(md);
    return 0;
  }
  jsMsgMetaData_Destroy(md);
  ni->in->stats.events_in++;
  ni->in->stats.bytes_in += (uint64_t)natsMsg_GetDataLength(m);
  if (ni->js_mode) {
    if (sl_event_track(ev, ni->tracker, (uintptr_t)m) != 0) {
      sl_event_unref(ev);
      nak(ni, m);
      return 0;
    }
    ni->in_flight++;
  } else {
    natsMsg_Destroy(m); /* at most once: nothing to ack */
  }
  rc = sl_worker_submit(&ni->src, ev); /* SL_EIO: the track failed: nak */
  return rc == SL_EAGAIN ? SL_EAGAIN : 0;
}

static void log_conn(struct nats_in *ni) {
  ni->pending = atomic_load(&ni->a_pending);
  ni->ack_pending = atomic_load(&ni->a_ack_pending);
  if (!ni->info_seen && !ni->stopping && atomic_load(&ni->a_info)) {
    /* the consumer's counts appear once known: never a made-up 0 */
    const char *v[] = {ni->in->cfg->name};
    ni->info_seen = 1;
    if (ni->w->metrics) {
      sl_metric_add_u64(ni->w->metrics, &m_pending, v, &ni->pending, ni);
      sl_metric_add_u64(ni->w->metrics, &m_ack_pending, v, &ni->ack_pending,
                        ni);
    }
  }
  sl_nats_changed(&ni->nats, "input", ni->in->cfg->name, ni->url);
}

/* Take messages from the ring until it is empty or the pipeline is full. */
static void drain_ring(struct nats_in *ni) {
  natsMsg *m;
  int woke = 0;
  for (;;) {
    uv_mutex_lock(&ni->nats.mu);
    if (ni->paused || ni->count == 0) {
      uv_mutex_unlock(&ni->nats.mu);
      break;
    }
    m = ni->ring[ni->head];
    ni->head = (ni->head + 1) % ni->cap;
    ni->count--;
    uv_mutex_unlock(&ni->nats.mu);
    woke = 1;
    if (ni->draining) {
      nak(ni, m); /* another consumer takes it now */
      continue;
    }
    if (submit(ni, m) == SL_EAGAIN) {
      uv_mutex_lock(&ni->nats.mu);
      ni->paused = 1; /* on_resume goes on */
      uv_mutex_unlock(&ni->nats.mu);
      break;
    }
  }
  if (woke)
    uv_cond_signal(&ni->nats.cond);
}

static void on_async(uv_async_t *a) {
  struct nats_in *ni = a->data;
  char err[sizeof(ni->error)];
  int has_err, subscribed;
  uint64_t suppressed = 0, dropped;
  uv_mutex_lock(&ni->nats.mu);
  has_err = ni->error_new;
  ni->error_new = 0;
  subscribed = ni->subscribed_new;
  ni->subscribed_new = 0;
  memcpy(err, ni->error, sizeof(err));
  uv_mutex_unlock(&ni->nats.mu);
  if (has_err && sl_log_allow(&ni->nats.log, &suppressed))
    sl_log(SL_LOG_WARN, "nats input problem", SL_S("input", ni->in->cfg->name),
           SL_S("url", ni->url), SL_S("error", err),
           SL_U("suppressed", suppressed), SL_END);
  log_conn(ni);
  dropped = atomic_load(&ni->a_dropped);
  if (dropped > ni->dropped_seen) {
    ni->in->stats.dropped += dropped - ni->dropped_seen;
    ni->dropped_seen = dropped;
    if (sl_log_allow(&ni->drop_log, &suppressed))
      sl_log(SL_LOG_WARN, "nats input: messages dropped by libnats for a "
             "slow consumer (core NATS is at most once; a JetStream stream "
             "keeps them)", SL_S("input", ni->in->cfg->name),
             SL_S("subject", ni->subject), SL_U("dropped", dropped),
             SL_U("suppressed", suppressed), SL_END);
  }
  if (subscribed)
    sl_log(SL_LOG_INFO, "nats input subscribed",
           SL_S("input", ni->in->cfg->name), SL_S("subject", ni->subject),
           SL_S("stream", ni->stream ? ni->stream : ""),
           SL_S("durable", ni->js_mode ? ni->durable : ""),
           SL_S("queue", ni->queue ? ni->queue : ""), SL_END);
  if (!ni->stopping)
    drain_ring(ni);
}

static void on_resume(struct sl_source *s) {
  struct nats_in *ni = container_of(s, struct nats_in, src);
  uv_mutex_lock(&ni->nats.mu);
  ni->paused = 0;
  uv_mutex_unlock(&ni->nats.mu);
  uv_cond_signal(&ni->nats.cond);
  drain_ring(ni);
}

/* ---- lifecycle ----------------------------------------------------------- */

static int add_metrics(struct nats_in *ni) {
  struct sl_metric_registry *r = ni->w->metrics;
  const char *v[] = {ni->in->cfg->name};
  int rc = 0;
  if (r == NULL)
    return 0;
  rc |= sl_metric_add_u64(r, &m_bad, v, &ni->bad, ni);
  rc |= sl_nats_add_metrics(&ni->nats, r, ni->in->cfg->name, ni);
  if (!ni->js_mode)
    return rc;
  rc |= sl_metric_add_u64(r, &m_in_flight, v, &ni->in_flight, ni);
  rc |= sl_metric_add_u64(r, &m_acked, v, &ni->acked, ni);
  rc |= sl_metric_add_u64(r, &m_naked, v, &ni->naked, ni);
  rc |= sl_metric_add_u64(r, &m_redelivered, v, &ni->redeliveries, ni);
  return rc;
}

static const char *const formats[] = {"auto", "event", "json", "raw", NULL};
static const int format_values[] = {FMT_AUTO, FMT_EVENT, FMT_JSON, FMT_RAW};

#define VAL(name) sl_config_value_str(in->cfg->values, in->cfg->nvalues, name)
#define NUM(name) sl_config_value_num(in->cfg->values, in->cfg->nvalues, name)

/* The keys taken together (sl_config_plugin.check, also run by cb_start):
 * with a stream (JetStream), no queue group and a durable name without
 * '.'. 0, or SL_EINVAL with why in err. */
static int check_conf(const void *conf, char *err, size_t errlen) {
  const struct sl_input_config *cfg = conf;
  const struct sl_config_value *v = cfg->values;
  const char *durable = sl_config_value_str(v, cfg->nvalues, "durable");
  if (sl_config_value_str(v, cfg->nvalues, "stream") == NULL)
    return 0; /* a core subscription */
  if (sl_config_value_str(v, cfg->nvalues, "queue")) {
    snprintf(err, errlen, "queue is for core subscriptions; instances of "
             "one durable consumer already share its messages");
    return SL_EINVAL;
  }
  if (strchr(durable ? durable : cfg->name ? cfg->name : "", '.')) {
    snprintf(err, errlen, "durable%s must not contain '.'",
             durable ? "" : " (the input's name, by default)");
    return SL_EINVAL;
  }
  return 0;
}

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  struct nats_in *ni = calloc(1, sizeof(*ni));
  if (ni == NULL)
    return SL_ENOMEM;
  ni->in = in;
  ni->w = in->w;
  in->data = ni;
  sl_nats_init(&ni->nats, &ni->async);
  sl_log_limiter_init(&ni->drop_log, 10000, 1); /* a line per 10 s */
  ni->url = VAL("url");
  ni->subject = VAL("subject");
  ni->stream = VAL("stream");
  ni->durable = VAL("durable");
  ni->queue = VAL("queue");
  ni->batch = (uint32_t)NUM("batch");
  ni->max_ack_pending = (uint32_t)NUM("max_ack_pending");
  ni->ack_wait_ms = (uint32_t)NUM("ack_wait_ms");
  ni->format = (int)NUM("format");
  ni->create_stream = (int)NUM("create_stream");
  ni->nats.write_timeout_ms = (uint32_t)NUM("write_timeout_ms");
  ni->js_mode = ni->stream != NULL;
  if (ni->js_mode && ni->durable == NULL)
    ni->durable = in->cfg->name;
  if (check_conf(in->cfg, err, errlen) != 0)
    return SL_EINVAL;
  ni->cap = ni->js_mode ? 2 * ni->batch : 256;
  if ((ni->ring = calloc(ni->cap, sizeof(*ni->ring))) == NULL ||
      (ni->tracker = sl_tracker_new(on_done, ni)) == NULL)
    return SL_ENOMEM;
  sl_source_init(&ni->src, in, on_resume);
  ni->dur.on_durable = on_durable;
  uv_async_init(&in->w->loop, &ni->async, on_async);
  ni->async.data = ni;
  ni->async_open = 1;
  uv_timer_init(&in->w->loop, &ni->ack_timer);
  ni->ack_timer.data = ni;
  ni->ack_timer_open = 1;
  if (add_metrics(ni) != 0)
    return SL_ENOMEM;
  /* connecting and subscribing happen on the thread: a server that is
   * down at start is retried there, the loop never waits */
  if (uv_thread_create(&ni->thread, fetch_thread, ni) != 0) {
    snprintf(err, errlen, "inputs.%s: cannot start its thread",
             in->cfg->name);
    return SL_EIO;
  }
  ni->thread_started = 1;
  return 0;
}

static void cb_drain(struct sl_input *in) {
  struct nats_in *ni = in->data;
  if (ni == NULL)
    return;
  ni->draining = 1;
  uv_mutex_lock(&ni->nats.mu);
  ni->quit = 1; /* fetch no more; what it hands over yet is naked */
  uv_mutex_unlock(&ni->nats.mu);
  uv_cond_signal(&ni->nats.cond);
  if (ni->src.held == NULL) {
    uv_mutex_lock(&ni->nats.mu);
    ni->paused = 0;
    uv_mutex_unlock(&ni->nats.mu);
    drain_ring(ni);
  }
}

static uint32_t cb_busy(struct sl_input *in) {
  struct nats_in *ni = in->data;
  if (ni == NULL)
    return 0;
  /* events on their way, and acks waiting for a durable answer */
  return (uint32_t)(ni->tracker->live + ni->nto_ack + ni->nacking +
                    (ni->src.held != NULL));
}

/* Off the loop: flush the last acks, close (which wakes a fetch), join
 * the thread, free what libnats gave us. */
static void close_work(uv_work_t *req) {
  struct nats_in *ni = container_of(req, struct nats_in, close_req);
  natsConnection *nc;
  uv_mutex_lock(&ni->nats.mu);
  ni->quit = 1;
  nc = ni->nc;
  uv_mutex_unlock(&ni->nats.mu);
  uv_cond_signal(&ni->nats.cond);
  sl_nats_close(&ni->nats, nc, 2000);
  if (ni->thread_started)
    uv_thread_join(&ni->thread);
  natsSubscription_Destroy(ni->sub);
  while (ni->nretired > 0)
    natsSubscription_Destroy(ni->retired[--ni->nretired]);
  free(ni->retired);
  jsCtx_Destroy(ni->js);
  natsConnection_Destroy(ni->nc);
}

static void free_in(struct nats_in *ni) {
  struct sl_input *in = ni->in;
  uint32_t i;
  for (i = 0; i < ni->count; i++)
    natsMsg_Destroy(ni->ring[(ni->head + i) % ni->cap]);
  free(ni->ring);
  free(ni->to_ack);
  free(ni->acking);
  in->data = NULL;
  if (sl_nats_release(&ni->nats, ni->nc != NULL))
    free(ni);
  sl_input_stopped(in);
}

static void on_handle_closed(uv_handle_t *h) {
  struct nats_in *ni = h->data;
  if (--ni->async_open == 0)
    free_in(ni);
}

static void after_close_work(uv_work_t *req, int status) {
  struct nats_in *ni = container_of(req, struct nats_in, close_req);
  ni->async_open = 2;
  uv_close((uv_handle_t *)&ni->async, on_handle_closed);
  uv_close((uv_handle_t *)&ni->ack_timer, on_handle_closed);
}

static void cb_stop(struct sl_input *in) {
  struct nats_in *ni = in->data;
  uint32_t i;
  if (ni == NULL) {
    sl_input_stopped(in);
    return;
  }
  ni->stopping = 1;
  sl_metric_remove(ni->w->metrics, ni);
  sl_source_close(&ni->src);
  if (ni->tracker) {
    /* acks decided: send those the disk buffers now hold; the rest are
     * naked (redelivered: a duplicate, never a loss) */
    if (!ni->dur.waiting)
      flush_acks(ni);
    sl_worker_undurable(&ni->dur);
    ack_all(ni, 0);
    for (i = 0; i < ni->nto_ack; i++)
      nak(ni, ni->to_ack[i]);
    ni->nto_ack = 0;
    sl_tracker_close(ni->tracker);
  }
  uv_mutex_lock(&ni->nats.mu);
  for (i = 0; i < ni->count; i++)
    nak(ni, ni->ring[(ni->head + i) % ni->cap]);
  ni->count = 0;
  uv_mutex_unlock(&ni->nats.mu);
  if (!ni->async_open) {
    free_in(ni);
    return;
  }
  if (uv_queue_work(&ni->w->loop, &ni->close_req, close_work,
                    after_close_work) != 0) {
    close_work(&ni->close_req);
    after_close_work(&ni->close_req, 0);
  }
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = cb_drain,
    .cb_busy = cb_busy,
    .cb_stop = cb_stop,
};

static const struct sl_config_key nats_keys[] = {
    {.name = "url", .type = SL_KEY_STRING, .def = "nats://127.0.0.1:4222",
     .doc = "server URL(s), comma-separated; libnats reconnects"},
    {.name = "subject", .type = SL_KEY_STRING, .flags = SL_KEY_REQUIRED,
     .doc = "subject to consume (wildcards allowed); it becomes ev.topic"},
    {.name = "stream", .type = SL_KEY_STRING,
     .doc = "JetStream stream: set, a durable pull consumer (at least once); "
            "unset, a core subscription (at most once)"},
    {.name = "durable", .type = SL_KEY_STRING,
     .doc = "durable consumer name (JetStream); default: the input's name"},
    {.name = "queue", .type = SL_KEY_STRING,
     .doc = "core subscriptions: queue group shared by instances"},
    {.name = "batch", .type = SL_KEY_UINT, .def = "64",
     .doc = "messages per JetStream fetch", .min = 1, .max = 4096},
    {.name = "max_ack_pending", .type = SL_KEY_UINT, .def = "1024",
     .doc = "JetStream: unacked messages the server lets out to the "
            "consumer (all instances): the backpressure bound",
     .min = 1, .max = 1000000},
    {.name = "ack_wait_ms", .type = SL_KEY_UINT, .def = "30000",
     .doc = "JetStream: redeliver a message not acked within this",
     .min = 100, .max = 86400000},
    {.name = "format", .type = SL_KEY_ENUM, .def = "auto",
     .doc = "body: auto (a msgpack event map, else JSON), event, json, raw",
     .choices = formats, .values = format_values},
    {.name = "create_stream", .type = SL_KEY_BOOL, .def = "false",
     .doc = "create the stream (file storage, subject) when missing"},
    {.name = "write_timeout_ms", .type = SL_KEY_UINT, .def = "500",
     .doc = "a write to the server that takes longer drops the connection "
            "(libnats reconnects): the longest the engine's loop waits on a "
            "server that stopped reading",
     .min = 10, .max = 60000},
    {.name = "tls", .type = SL_KEY_TLS, .flags = SL_KEY_TLS_CLIENT,
     .doc = "TLS to the server: ca_file, cert_file/key_file (mTLS), "
            "verify_peer, server_name, ciphers",
     SL_KEY_FIELD(struct sl_input_config, tls)},
    {0}};

const struct sl_plugin sl_input_nats = {
    .config = {SL_PLUGIN_INPUT, "nats",
               "NATS: JetStream durable pull consumer or core subscription",
               nats_keys, check_conf},
    .input = &ops,
};
