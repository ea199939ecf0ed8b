/* nats.c - the nats output: JetStream publish (stream set) with the
 * publish acks driving the core's acks, or core NATS publish (at most
 * once: core NATS confirms nothing).
 *
 * JetStream: each event of a write is published with js_PublishMsgAsync
 * (Nats-Msg-Id = the event's id, so the server drops a repeat within the
 * stream's duplicate window) and waits in a ring; libnats calls the ack
 * handler on its own thread, which hands (message, outcome) to the loop
 * through a mutex-guarded list and a uv_async. The loop confirms the
 * oldest events whose acks came (sl_output_done), and fails everything in
 * flight on a negative ack or when the oldest waited ack_timeout_ms (a
 * server restart can lose a publish without an answer): the core writes
 * them again after its backoff (at least once). At most max_in_flight
 * publishes wait (plus one write): the next write is reported written only
 * below that. Connecting (a blocking call in libnats) runs on libuv's
 * threadpool; libnats reconnects by itself and the connection callbacks
 * only count and wake the loop, which logs (rate-limited). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "nats.h"
#include "plugins.h"

enum { OUT_EVENT, OUT_JSON, OUT_PAYLOAD };

struct slot {
  natsMsg *msg;     /* identifies the ack; libnats owns it until then */
  uint64_t sent_ns;
  int status;       /* 0 waiting, 1 acked, -1 refused */
};

struct puback {
  natsMsg *msg;
  int ok;
};

struct nats_out {
  struct sl_output *o;
  const char *url, *subject, *stream;
  uint32_t max_in_flight, ack_timeout_ms;
  int format, create_stream, js_mode;
  natsConnection *nc; /* set by the connect work; the loop's after that */
  jsCtx *js;
  uv_work_t conn_req;
  int connecting, conn_failed;
  char conn_err[200];
  uv_timer_t timer;   /* reconnect after a failed connect; ack timeouts */
  uv_async_t async;
  int handles;
  int closing;
  int ever_connected; /* libnats may hold our closure */
  uv_work_t close_req;
  struct sl_nats nats; /* its mu also guards the acks below */
  /* acks from libnats' thread */
  struct puback *acks;
  size_t nacks, cacks;
  char ack_err[160];
  /* the loop's */
  struct slot *ring;
  uint32_t cap, head, count;
  int written_pending; /* a write not yet reported written (ring full) */
  int too_big;         /* the write stopped at a message the server can
                          never take: reported once those before it are
                          confirmed, when it heads the queue */
  char too_big_why[200];
  struct sl_buf body;
  uint64_t in_flight, nacked;
};

static void on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                      void *closure) {
  struct nats_out *no = closure;
  uv_mutex_lock(&no->nats.mu);
  if (no->nats.dead) {
    uv_mutex_unlock(&no->nats.mu);
    natsMsg_Destroy(msg);
    return;
  }
  if (no->nacks == no->cacks) {
    size_t nc = no->cacks ? no->cacks * 2 : 256;
    struct puback *p = realloc(no->acks, nc * sizeof(*p));
    if (p == NULL) { /* the ack timeout fails it */
      uv_mutex_unlock(&no->nats.mu);
      natsMsg_Destroy(msg);
      return;
    }
    no->acks = p;
    no->cacks = nc;
  }
  no->acks[no->nacks].msg = msg;
  no->acks[no->nacks].ok = pa != NULL && pae == NULL;
  no->nacks++;
  if (pae && no->ack_err[0] == '\0')
    snprintf(no->ack_err, sizeof(no->ack_err), "publish refused: %s (%d)",
             pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err),
             (int)pae->ErrCode);
  uv_async_send(&no->async);
  uv_mutex_unlock(&no->nats.mu);
}

/* ---- connecting (threadpool) --------------------------------------------- */

/* The stream's subject for create_stream: the template with {topic} at
 * its end as ">", any other placeholder as "*". */
static void stream_subject(const char *tpl, char *out, size_t len) {
  size_t o = 0;
  while (*tpl && o + 2 < len) {
    if (*tpl == '{') {
      const char *e = strchr(tpl, '}');
      if (e == NULL)
        break;
      out[o++] = e[1] == '\0' ? '>' : '*';
      tpl = e + 1;
      continue;
    }
    out[o++] = *tpl++;
  }
  out[o] = '\0';
}

static void connect_work(uv_work_t *req) {
  struct nats_out *no = container_of(req, struct nats_out, conn_req);
  natsConnection *nc = NULL;
  jsCtx *js = NULL;
  jsOptions jo;
  natsStatus s = sl_nats_connect(&no->nats, no->url, no->o->cfg->name,
                                 &no->o->cfg->tls, &nc);
  if (s == NATS_OK && no->js_mode) {
    jsOptions_Init(&jo);
    jo.PublishAsync.AckHandler = on_puback;
    jo.PublishAsync.AckHandlerClosure = no;
    /* we bound what is in flight ourselves: libnats must never stall */
    jo.PublishAsync.MaxPending = (int64_t)no->cap * 4 + 1024;
    s = natsConnection_JetStream(&js, nc, &jo);
  }
  if (s == NATS_OK && no->js_mode && no->create_stream) {
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    char subj[256];
    const char *subjects[1] = {subj};
    stream_subject(no->subject, subj, sizeof(subj));
    jsStreamConfig_Init(&sc);
    sc.Name = no->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    s = js_AddStream(&si, js, &sc, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (jerr == JSStreamNameExistErr)
      s = NATS_OK;
  }
  if (s != NATS_OK) {
    const char *last = nats_GetLastError(NULL);
    snprintf(no->conn_err, sizeof(no->conn_err), "%s%s%s",
             natsStatus_GetText(s), last ? ": " : "", last ? last : "");
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    no->conn_failed = 1;
    return;
  }
  no->conn_failed = 0;
  no->ever_connected = 1;
  no->nc = nc;
  no->js = js;
  atomic_store(&no->nats.a_connected, 1);
}

static void start_connect(struct nats_out *no);
static void finish_stop(struct nats_out *no);

static void on_timer(uv_timer_t *t);

static void after_connect(uv_work_t *req, int status) {
  struct nats_out *no = container_of(req, struct nats_out, conn_req);
  struct sl_output *o = no->o;
  uint64_t suppressed = 0;
  no->connecting = 0;
  if (no->closing) {
    finish_stop(no);
    return;
  }
  if (no->nc == NULL) {
    if (sl_log_allow(&no->nats.log, &suppressed))
      sl_log(SL_LOG_WARN, "nats connect failed; retrying",
             SL_S("output", o->cfg->name), SL_S("url", no->url),
             SL_S("error", no->conn_err), SL_U("suppressed", suppressed),
             SL_END);
    uv_timer_start(&no->timer, on_timer, 1000, 0);
    return;
  }
  /* what the server takes, less room for the headers we add */
  if (natsConnection_GetMaxPayload(no->nc) > 8192)
    o->max_event_bytes = (uint32_t)natsConnection_GetMaxPayload(no->nc) - 4096;
  o->max_event_note = " (the server's max_payload less 4 KiB for headers)";
  sl_log(SL_LOG_INFO, "nats connected", SL_S("output", o->cfg->name),
         SL_S("url", no->url), SL_END);
  no->nats.was_connected = 1;
  if (no->js_mode)
    uv_timer_start(&no->timer, on_timer, 100, 100);
  sl_output_reachable(o);
  sl_output_kick(o);
}

static void start_connect(struct nats_out *no) {
  if (no->connecting || no->nc || no->closing)
    return;
  no->connecting = 1;
  if (uv_queue_work(&no->o->w->loop, &no->conn_req, connect_work,
                    after_connect) != 0) {
    no->connecting = 0;
    uv_timer_start(&no->timer, on_timer, 1000, 0);
  }
}

/* ---- acks (loop) --------------------------------------------------------- */

/* Everything in flight failed: the core writes it again after its
 * backoff. libnats gives back every publish still waiting for its ack
 * (destroyed here; an ack that comes later is dropped by libnats): an ack
 * that never comes (a server restart lost the publish, a stream that
 * answers none) would otherwise stay counted against MaxPending for good,
 * and past it every publish stalls the loop for StallWait (200 ms) and
 * fails, the output wedged even once the server answers again. An ack
 * libnats handed over already waits in acks and finds no slot. */
static void fail_all(struct nats_out *no, const char *why) {
  natsMsgList pending;
  uint32_t i;
  for (i = 0; i < no->count; i++) {
    struct slot *sl = &no->ring[(no->head + i) % no->cap];
    if (sl->status != 0)
      natsMsg_Destroy(sl->msg);
  }
  if (no->js && js_PublishAsyncGetPendingList(&pending, no->js) == NATS_OK)
    natsMsgList_Destroy(&pending);
  no->nacked += no->count;
  no->head = no->count = 0;
  no->in_flight = 0;
  no->written_pending = 0;
  no->too_big = 0; /* met again at its turn in the write that follows */
  sl_output_done(no->o, 0, SL_WRITE_RETRY, why);
}

/* Confirm the oldest acked events; a refused one fails what is in
 * flight; below max_in_flight the write waiting is reported written. */
static void advance(struct nats_out *no, const char *err) {
  uint32_t k = 0;
  while (no->count && no->ring[no->head].status == 1) {
    natsMsg_Destroy(no->ring[no->head].msg);
    no->head = (no->head + 1) % no->cap;
    no->count--;
    k++;
  }
  no->in_flight = no->count;
  if (k)
    sl_output_done(no->o, k, SL_WRITE_OK, NULL);
  if (no->count && no->ring[no->head].status == -1) {
    fail_all(no, err[0] ? err : "publish refused");
    return;
  }
  if (no->too_big && no->count == 0) {
    no->too_big = 0; /* it heads the queue now: to the dead letter */
    sl_output_done(no->o, 0, SL_WRITE_FATAL, no->too_big_why);
    return;
  }
  if (no->written_pending && no->count < no->max_in_flight) {
    no->written_pending = 0;
    sl_output_written(no->o);
  }
}

static void take_acks(struct nats_out *no) {
  struct puback *a;
  size_t n, i, ca;
  char err[sizeof(no->ack_err)];
  uint32_t j;
  uv_mutex_lock(&no->nats.mu);
  a = no->acks, n = no->nacks, ca = no->cacks;
  no->acks = NULL, no->nacks = no->cacks = 0;
  memcpy(err, no->ack_err, sizeof(err));
  no->ack_err[0] = '\0';
  uv_mutex_unlock(&no->nats.mu);
  for (i = 0; i < n; i++) {
    /* mostly in order: the slot is near the head */
    for (j = 0; j < no->count; j++) {
      struct slot *sl = &no->ring[(no->head + j) % no->cap];
      if (sl->msg == a[i].msg && sl->status == 0) {
        sl->status = a[i].ok ? 1 : -1;
        break;
      }
    }
    if (j == no->count)
      natsMsg_Destroy(a[i].msg); /* of a write already failed */
  }
  free(a);
  (void)ca;
  if (n)
    advance(no, err);
}

static void on_async(uv_async_t *h) {
  struct nats_out *no = h->data;
  if (no->closing)
    return;
  if (no->nc &&
      sl_nats_changed(&no->nats, "output", no->o->cfg->name, no->url))
    sl_output_kick(no->o);
  take_acks(no);
}

static void on_timer(uv_timer_t *t) {
  struct nats_out *no = t->data;
  if (no->closing)
    return;
  if (no->nc == NULL) {
    start_connect(no);
    return;
  }
  if (no->count && sl_mono_ns() - no->ring[no->head].sent_ns >
                       (uint64_t)no->ack_timeout_ms * 1000000u)
    fail_all(no, "publish ack timed out");
}

/* ---- writes (loop) -------------------------------------------------------- */

/* The subject for ev from the template: {topic} and {key} replaced;
 * what a subject cannot hold (white space, wildcards) becomes '_'. */
static void make_subject(const char *tpl, const struct sl_event *ev,
                         char *out, size_t len) {
  size_t o = 0;
  while (*tpl && o + 1 < len) {
    struct sl_str s = {NULL, 0};
    size_t i;
    if (strncmp(tpl, "{topic}", 7) == 0)
      s = sl_event_topic(ev), tpl += 7;
    else if (strncmp(tpl, "{key}", 5) == 0)
      s = sl_event_key(ev), tpl += 5;
    else
      s.p = tpl++, s.len = 1;
    for (i = 0; i < s.len && o + 1 < len; i++) {
      char c = s.p[i];
      out[o++] = (c == ' ' || c == '\t' || c == '\r' || c == '\n' ||
                  c == '*' || c == '>' || c == '\0')
                     ? '_'
                     : c;
    }
  }
  if (o == 0)
    out[o++] = '_';
  out[o] = '\0';
}

/* ev's string headers as NATS headers (not the input's nats-* ones). */
static natsStatus put_headers(natsMsg *m, const struct sl_event *ev) {
  const uint8_t *p = ev->data + ev->headers_off, *end = p + ev->headers_len;
  uint32_t cnt, i;
  size_t used;
  char k[256], v[4096];
  if (ev->headers_len == 0 || sl_codec_read_map(p, end - p, &cnt, &used))
    return NATS_OK;
  p += used;
  for (i = 0; i < cnt; i++) {
    struct sl_str ks, vs;
    size_t ku, vu;
    if (sl_codec_read_str(p, end - p, &ks, &ku) != 0)
      break;
    if (sl_codec_read_str(p + ku, end - p - ku, &vs, &vu) == 0 &&
        ks.len < sizeof(k) && vs.len < sizeof(v) && ks.len > 0 &&
        !sl_nats_header_is_meta(ks.p, ks.len) &&
        memchr(vs.p, '\n', vs.len) == NULL &&
        memchr(ks.p, ':', ks.len) == NULL) {
      natsStatus s;
      memcpy(k, ks.p, ks.len), k[ks.len] = '\0';
      memcpy(v, vs.p, vs.len), v[vs.len] = '\0';
      if ((s = natsMsgHeader_Add(m, k, v)) != NATS_OK)
        return s;
    } else if (sl_codec_skip(p + ku, end - p - ku, end - p, &vu, NULL) != 0) {
      break;
    }
    p += ku + vu;
  }
  return NATS_OK;
}

/* The body of ev in no->body: the event map, its JSON, or its payload
 * (a string or binary payload as its bytes, anything else as JSON). */
static int make_body(struct nats_out *no, const struct sl_event *ev) {
  sl_buf_reset(&no->body);
  if (no->format == OUT_EVENT)
    return sl_buf_append(&no->body, ev->data, ev->len);
  if (no->format == OUT_JSON)
    return sl_codec_to_json(ev->data, ev->len, &no->body);
  if (ev->payload_len == 0)
    return 0;
  {
    struct sl_str s;
    size_t used;
    const uint8_t *p = ev->data + ev->payload_off;
    if (sl_codec_read_strbin(p, ev->payload_len, &s, &used) == 0)
      return sl_buf_append(&no->body, s.p, s.len);
    return sl_codec_to_json(p, ev->payload_len, &no->body);
  }
}

static natsStatus make_msg(struct nats_out *no, const struct sl_event *ev,
                           natsMsg **m) {
  char subj[512], id[128];
  natsStatus s;
  struct sl_str sid = sl_event_id(ev);
  make_subject(no->subject, ev, subj, sizeof(subj));
  if (make_body(no, ev) != 0)
    return NATS_NO_MEMORY;
  s = natsMsg_Create(m, subj, NULL, (const char *)no->body.data,
                     (int)no->body.len);
  if (s == NATS_OK)
    s = put_headers(*m, ev);
  if (s == NATS_OK && no->js_mode && sid.len < sizeof(id)) {
    memcpy(id, sid.p, sid.len), id[sid.len] = '\0';
    s = natsMsgHeader_Set(*m, "Nats-Msg-Id", id);
  }
  if (s != NATS_OK) {
    natsMsg_Destroy(*m);
    *m = NULL;
  }
  return s;
}

/* Event i of the write is a message larger than the server's max_payload:
 * the core sends it to the dead letter, but only once it heads the queue,
 * so the events before it are confirmed first (core: at once; JetStream:
 * when their acks are in, advance). Nothing after it was published. */
static void too_big(struct nats_out *no, uint32_t i) {
  snprintf(no->too_big_why, sizeof(no->too_big_why),
           "publish failed: %s (body and headers larger than the server's "
           "max_payload, %lld bytes)", natsStatus_GetText(NATS_MAX_PAYLOAD),
           (long long)natsConnection_GetMaxPayload(no->nc));
  if (!no->js_mode) {
    sl_output_done(no->o, i, SL_WRITE_FATAL, no->too_big_why);
    return;
  }
  no->in_flight = no->count;
  if (no->count == 0) {
    sl_output_done(no->o, 0, SL_WRITE_FATAL, no->too_big_why);
    return;
  }
  no->too_big = 1; /* not reported written: no write follows this one */
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct nats_out *no = o->data;
  uint32_t i;
  char why[200];
  for (i = 0; i < b->n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    natsMsg *m = NULL, *keep;
    natsStatus s = make_msg(no, ev, &m);
    if (s == NATS_OK && no->js_mode) {
      keep = m;
      s = js_PublishMsgAsync(no->js, &m, NULL);
      if (s == NATS_OK) {
        struct slot *sl = &no->ring[(no->head + no->count) % no->cap];
        sl->msg = keep;
        sl->sent_ns = sl_mono_ns();
        sl->status = 0;
        no->count++;
      }
    } else if (s == NATS_OK) {
      s = natsConnection_PublishMsg(no->nc, m);
    }
    natsMsg_Destroy(m); /* NULL once libnats took it */
    if (s == NATS_MAX_PAYLOAD) {
      /* within max_event_bytes, but its body (JSON can be several times
       * the event) and headers are not: retrying would wedge the output */
      too_big(no, i);
      return;
    }
    if (s != NATS_OK) {
      snprintf(why, sizeof(why), "publish failed: %s", natsStatus_GetText(s));
      if (no->js_mode)
        fail_all(no, why);
      else
        sl_output_done(o, i, SL_WRITE_RETRY, why);
      return;
    }
  }
  no->in_flight = no->count;
  if (!no->js_mode) {
    sl_output_done(o, b->n, SL_WRITE_OK, NULL); /* at most once */
    return;
  }
  if (no->count < no->max_in_flight)
    sl_output_written(o);
  else
    no->written_pending = 1; /* an ack makes room */
}

/* ---- lifecycle ----------------------------------------------------------- */

static const struct sl_metric m_in_flight = {
    "sluice_nats_publish_in_flight", "JetStream publishes awaiting their ack.",
    SL_METRIC_GAUGE, {"output", NULL}};
static const struct sl_metric m_failed = {
    "sluice_nats_publish_failed_total", "JetStream publishes failed with "
    "their write (a refusal, an ack timeout, a lost connection): written "
    "again.", SL_METRIC_COUNTER, {"output", NULL}};

#define VAL(name) sl_config_value_str(o->cfg->values, o->cfg->nvalues, name)
#define NUM(name) sl_config_value_num(o->cfg->values, o->cfg->nvalues, name)

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  struct nats_out *no = calloc(1, sizeof(*no));
  const char *v[] = {o->cfg->name};
  if (no == NULL)
    return SL_ENOMEM;
  no->o = o;
  o->data = no;
  sl_nats_init(&no->nats, &no->async);
  sl_buf_init(&no->body);
  no->url = VAL("url");
  no->subject = VAL("subject");
  no->stream = VAL("stream");
  no->max_in_flight = (uint32_t)NUM("max_in_flight");
  no->ack_timeout_ms = (uint32_t)NUM("ack_timeout_ms");
  no->format = (int)NUM("format");
  no->create_stream = (int)NUM("create_stream");
  no->nats.write_timeout_ms = (uint32_t)NUM("write_timeout_ms");
  no->js_mode = no->stream != NULL;
  no->cap = no->max_in_flight + o->cfg->batch_events + 1;
  o->acks = no->js_mode;
  if ((no->ring = calloc(no->cap, sizeof(*no->ring))) == NULL)
    return SL_ENOMEM;
  uv_timer_init(&o->w->loop, &no->timer);
  no->timer.data = no;
  uv_async_init(&o->w->loop, &no->async, on_async);
  no->async.data = no;
  no->handles = 2;
  if (o->w->metrics &&
      (sl_nats_add_metrics(&no->nats, o->w->metrics, o->cfg->name, no) ||
       (no->js_mode &&
        (sl_metric_add_u64(o->w->metrics, &m_in_flight, v, &no->in_flight,
                           no) ||
         sl_metric_add_u64(o->w->metrics, &m_failed, v, &no->nacked, no)))))
    return SL_ENOMEM;
  (void)err, (void)errlen;
  start_connect(no); /* on the threadpool: a server down is retried */
  return 0;
}

static void on_closed(uv_handle_t *h) {
  struct nats_out *no = h->data;
  struct sl_output *o = no->o;
  uint32_t i;
  if (--no->handles > 0)
    return;
  for (i = 0; i < no->count; i++) {
    struct slot *sl = &no->ring[(no->head + i) % no->cap];
    if (sl->status != 0)
      natsMsg_Destroy(sl->msg);
  }
  free(no->ring);
  sl_buf_close(&no->body);
  o->data = NULL;
  if (sl_nats_release(&no->nats, no->ever_connected))
    free(no);
  sl_output_stopped(o);
}

/* Off the loop: flush core publishes, close, wait for the closed
 * callback (the last one libnats makes). */
static void close_work(uv_work_t *req) {
  struct nats_out *no = container_of(req, struct nats_out, close_req);
  sl_nats_close(&no->nats, no->nc, 1000);
  jsCtx_Destroy(no->js);
  natsConnection_Destroy(no->nc);
  no->nc = NULL;
}

static void after_close_work(uv_work_t *req, int status) {
  struct nats_out *no = container_of(req, struct nats_out, close_req);
  uv_close((uv_handle_t *)&no->timer, on_closed);
  uv_close((uv_handle_t *)&no->async, on_closed);
}

static void finish_stop(struct nats_out *no) {
  struct puback *a;
  size_t n, i;
  uv_mutex_lock(&no->nats.mu);
  no->nats.dead = 1;
  a = no->acks, n = no->nacks;
  no->acks = NULL, no->nacks = no->cacks = 0;
  uv_mutex_unlock(&no->nats.mu);
  for (i = 0; i < n; i++)
    natsMsg_Destroy(a[i].msg);
  free(a);
  sl_metric_remove(no->o->w->metrics, no);
  if (no->nc == NULL ||
      uv_queue_work(&no->o->w->loop, &no->close_req, close_work,
                    after_close_work) != 0) {
    if (no->nc)
      close_work(&no->close_req);
    after_close_work(&no->close_req, 0);
  }
}

static void cb_stop(struct sl_output *o) {
  struct nats_out *no = o->data;
  if (no == NULL) {
    sl_output_stopped(o);
    return;
  }
  no->closing = 1;
  if (no->handles == 0) { /* cb_start failed before its handles */
    free(no->ring);
    sl_buf_close(&no->body);
    sl_nats_release(&no->nats, 0);
    free(no);
    o->data = NULL;
    sl_output_stopped(o);
    return;
  }
  if (!no->connecting)
    finish_stop(no); /* else after_connect does */
}

static void cb_retry(struct sl_output *o) {
  struct nats_out *no = o->data;
  if (no->nc == NULL && !no->closing)
    start_connect(no);
}

static int cb_healthy(struct sl_output *o) {
  struct nats_out *no = o->data;
  return no && !no->closing && no->nc &&
         atomic_load(&no->nats.a_connected);
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_retry = cb_retry,
    .cb_stop = cb_stop,
    .cb_healthy = cb_healthy,
};

static const char *const formats[] = {"event", "json", "payload", NULL};
static const int format_values[] = {OUT_EVENT, OUT_JSON, OUT_PAYLOAD};

static const struct sl_config_key nats_keys[] = {
    {.name = "url", .type = SL_KEY_STRING, .def = "nats://127.0.0.1:4222",
     .doc = "server URL(s), comma-separated; libnats reconnects"},
    {.name = "subject", .type = SL_KEY_STRING, .def = "{topic}",
     .doc = "subject template: {topic} and {key} are the event's (a rule "
            "sets them); white space and wildcards become _"},
    {.name = "stream", .type = SL_KEY_STRING,
     .doc = "JetStream stream: set, publish with acks (at least once; "
            "Nats-Msg-Id = event id); unset, core publish (at most once)"},
    {.name = "max_in_flight", .type = SL_KEY_UINT, .def = "256",
     .doc = "JetStream publishes awaiting their ack", .min = 1,
     .max = 100000},
    {.name = "ack_timeout_ms", .type = SL_KEY_UINT, .def = "5000",
     .doc = "a publish not acked within this fails its write (written again)",
     .min = 100, .max = 600000},
    {.name = "format", .type = SL_KEY_ENUM, .def = "event",
     .doc = "body: event (msgpack event map), json (the event as JSON), "
            "payload (its bytes; a non-string payload as JSON)",
     .choices = formats, .values = format_values},
    {.name = "create_stream", .type = SL_KEY_BOOL, .def = "false",
     .doc = "create the stream (file storage, the subject template with "
            "{topic} as >) when missing"},
    {.name = "write_timeout_ms", .type = SL_KEY_UINT, .def = "500",
     .doc = "a write to the server that takes longer drops the connection "
            "(libnats reconnects): the longest the engine's loop waits on a "
            "server that stopped reading",
     .min = 10, .max = 60000},
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "TLS to the server: ca_file, cert_file/key_file (mTLS), "
            "verify_peer, server_name, ciphers",
     SL_KEY_FIELD(struct sl_output_config, tls)},
    {0}};

const struct sl_plugin sl_output_nats = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "nats",
               .doc = "NATS: JetStream publish with acks, or core publish",
               .keys = nats_keys},
    .output = &ops,
};
