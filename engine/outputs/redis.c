/* redis.c - the redis output: each event becomes one XADD to a stream
 * named by a template ("{topic}"), with an optional MAXLEN ~ N trim. A
 * batch goes out as a pipeline (every XADD of it written at once on one
 * connection, hiredis 0.14's async client on the worker's loop); the
 * replies come back in order and the batch is reported once the last one
 * is in: n_ok is the run of successful replies from its front. A reply
 * the server may give differently later (LOADING, OOM, READONLY, a lost
 * connection) is retried after the core's backoff; any other error reply
 * (WRONGTYPE: the key is not a stream) is fatal for that event, which the
 * core sends to the dead letter. Events after a failed one that the server
 * did take are sent again with it: at least once. A write the server does
 * not answer within retry.timeout_ms drops the connection. Reconnects on
 * the core's backoff (cb_retry). Owns its hiredis context and a timer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis.h"
#include "worker.h"
#include "plugins.h"

enum { FMT_JSON, FMT_EVENT, FMT_RAW };

struct redis_out {
  struct sl_output *o;
  struct sl_redis_dial dial;
  redisAsyncContext *ac; /* NULL while down */
  uv_timer_t watchdog;   /* retry.timeout_ms on the replies of a write */
  const char *address, *stream;
  uint64_t maxlen;
  int format;
  int connected;
  int closing;
  int was_down, down_logged;
  struct sl_log_limiter conn_log; /* a flapping server: not a line each */
  /* the write in flight */
  uint64_t gen;          /* tells its replies from a gone write's */
  uint32_t sent, got, n_ok;
  uint32_t fail_at;      /* the first event that failed; UINT32_MAX: none */
  int fatal;             /* it is not worth retrying */
  char why[160];
  /* metrics */
  uint64_t inflight, reconnects, replies_ok, replies_err;
  /* argv of one command */
  struct sl_buf args;
  size_t *off, *len, cap;
  const char **argv;
  int argc;
};

static const struct sl_metric m_inflight = {
    "sluice_redis_output_inflight", "XADDs sent and not answered yet.",
    SL_METRIC_GAUGE, {"output", NULL}};
static const struct sl_metric m_reconnects = {
    "sluice_redis_output_reconnects_total",
    "Connections to redis lost or refused.", SL_METRIC_COUNTER,
    {"output", NULL}};
static const struct sl_metric m_replies = {
    "sluice_redis_output_replies_total", "XADD replies by outcome.",
    SL_METRIC_COUNTER, {"output", "outcome", NULL}};

/* ---- building one XADD ------------------------------------------------- */

/* Start an argument at the end of args; arg_end closes it. */
static int arg_begin(struct redis_out *r) {
  if ((size_t)r->argc == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 32;
    size_t *off = realloc(r->off, cap * sizeof(*off));
    size_t *len;
    const char **argv;
    if (off == NULL)
      return SL_ENOMEM;
    r->off = off;
    if ((len = realloc(r->len, cap * sizeof(*len))) == NULL)
      return SL_ENOMEM;
    r->len = len;
    if ((argv = realloc(r->argv, cap * sizeof(*argv))) == NULL)
      return SL_ENOMEM;
    r->argv = argv;
    r->cap = cap;
  }
  r->off[r->argc] = r->args.len;
  r->len[r->argc] = 0;
  r->argc++;
  return 0;
}

static void arg_end(struct redis_out *r) {
  r->len[r->argc - 1] = r->args.len - r->off[r->argc - 1];
}

static int arg(struct redis_out *r, const void *p, size_t n) {
  int rc = arg_begin(r);
  if (rc == 0)
    rc = sl_buf_append(&r->args, p, n);
  if (rc == 0)
    arg_end(r);
  return rc;
}

static int arg_str(struct redis_out *r, const char *s) {
  return arg(r, s, strlen(s));
}

/* The stream's name: the template with {topic} and {key} filled in. */
static int arg_stream(struct redis_out *r, const struct sl_event *ev) {
  struct sl_str topic = sl_event_topic(ev), key = sl_event_key(ev);
  const char *t = r->stream;
  int rc = arg_begin(r);
  while (*t && rc == 0) {
    if (strncmp(t, "{topic}", 7) == 0) {
      rc = sl_buf_append(&r->args, topic.p, topic.len);
      t += 7;
    } else if (strncmp(t, "{key}", 5) == 0) {
      rc = key.p ? sl_buf_append(&r->args, key.p, key.len) : 0;
      t += 5;
    } else {
      rc = sl_buf_append(&r->args, t++, 1);
    }
  }
  if (rc == 0)
    arg_end(r);
  return rc;
}

/* The payload as the format wants it: JSON text, or with raw a str's or
 * bin's own bytes (other types still as JSON). */
static int arg_payload(struct redis_out *r, const struct sl_event *ev) {
  const uint8_t *p = ev->data + ev->payload_off;
  struct sl_str s;
  size_t used;
  int rc;
  if (r->format == FMT_RAW &&
      sl_codec_read_strbin(p, ev->payload_len, &s, &used) == 0)
    return arg(r, s.p, s.len);
  if ((rc = arg_begin(r)) != 0 ||
      (rc = sl_codec_to_json(p, ev->payload_len, &r->args)) != 0)
    return rc;
  arg_end(r);
  return 0;
}

/* Each header as a field h:<name>. */
static int arg_headers(struct redis_out *r, const struct sl_event *ev) {
  const uint8_t *p = ev->data + ev->headers_off;
  size_t left = ev->headers_len, used;
  uint32_t i, count;
  struct sl_str k, v;
  int rc;
  if (ev->headers_len == 0)
    return 0;
  if (sl_codec_read_map(p, left, &count, &used) != 0)
    return SL_EPROTO;
  p += used, left -= used;
  for (i = 0; i < count; i++) {
    if (sl_codec_read_str(p, left, &k, &used) != 0)
      return SL_EPROTO;
    p += used, left -= used;
    if (sl_codec_read_str(p, left, &v, &used) != 0)
      return SL_EPROTO;
    p += used, left -= used;
    if ((rc = arg_begin(r)) != 0 ||
        (rc = sl_buf_append(&r->args, "h:", 2)) != 0 ||
        (rc = sl_buf_append(&r->args, k.p, k.len)) != 0)
      return rc;
    arg_end(r);
    if ((rc = arg(r, v.p, v.len)) != 0)
      return rc;
  }
  return 0;
}

/* Fields of the json and raw formats: id, topic, key, time (ns since the
 * epoch), the headers as h:<name>, payload. */
static int arg_fields(struct redis_out *r, const struct sl_event *ev) {
  struct sl_str id = sl_event_id(ev), topic = sl_event_topic(ev),
                key = sl_event_key(ev);
  char num[24];
  int rc;
  if (arg_str(r, "id") || arg(r, id.p, id.len) || arg_str(r, "topic") ||
      arg(r, topic.p, topic.len))
    return SL_ENOMEM;
  if (key.p && (arg_str(r, "key") || arg(r, key.p, key.len)))
    return SL_ENOMEM;
  snprintf(num, sizeof(num), "%lld", (long long)ev->time);
  if (arg_str(r, "time") || arg_str(r, num))
    return SL_ENOMEM;
  if ((rc = arg_headers(r, ev)) != 0)
    return rc;
  if (ev->payload_len == 0)
    return 0;
  if (arg_str(r, "payload"))
    return SL_ENOMEM;
  return arg_payload(r, ev);
}

static int build_xadd(struct redis_out *r, const struct sl_event *ev) {
  char num[24];
  int i, rc;
  sl_buf_reset(&r->args);
  r->argc = 0;
  if (arg_str(r, "XADD") || arg_stream(r, ev))
    return SL_ENOMEM;
  if (r->maxlen) {
    snprintf(num, sizeof(num), "%llu", (unsigned long long)r->maxlen);
    if (arg_str(r, "MAXLEN") || arg_str(r, "~") || arg_str(r, num))
      return SL_ENOMEM;
  }
  if (arg_str(r, "*"))
    return SL_ENOMEM;
  if (r->format == FMT_EVENT)
    rc = arg_str(r, "event") ? SL_ENOMEM : arg(r, ev->data, ev->len);
  else
    rc = arg_fields(r, ev);
  if (rc != 0)
    return rc;
  /* args may have moved while it grew: point into it only now */
  for (i = 0; i < r->argc; i++)
    r->argv[i] = (const char *)r->args.data + r->off[i];
  return 0;
}

/* ---- the connection ---------------------------------------------------- */

static void on_watchdog(uv_timer_t *t);

/* The write in flight is over: report it once. */
static void finish_write(struct redis_out *r, int lost) {
  uint32_t n_ok = r->n_ok;
  enum sl_write_status st = SL_WRITE_OK;
  r->gen++;
  r->inflight = 0;
  r->sent = r->got = 0;
  uv_timer_stop(&r->watchdog);
  if (lost || (r->fail_at != UINT32_MAX && !r->fatal))
    st = SL_WRITE_RETRY;
  else if (r->fail_at != UINT32_MAX)
    st = SL_WRITE_FATAL;
  r->n_ok = 0;
  r->fail_at = UINT32_MAX;
  r->fatal = 0;
  sl_output_done(r->o, n_ok, st, st == SL_WRITE_OK ? NULL : r->why);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
  struct redis_out *r = ac->data;
  redisReply *rep = reply;
  uint32_t idx;
  if (r == NULL || r->closing || (uint64_t)(uintptr_t)priv != r->gen ||
      rep == NULL)
    return; /* a gone write, or the connection is lost (on_disconnect) */
  idx = r->got++;
  r->inflight--;
  if (rep->type == REDIS_REPLY_STRING) {
    r->replies_ok++;
    if (idx < r->fail_at)
      r->n_ok++; /* after a failure it is sent again with the rest */
  } else {
    r->replies_err++;
    if (idx < r->fail_at) {
      r->fail_at = idx;
      r->fatal = !sl_redis_transient(rep);
      snprintf(r->why, sizeof(r->why), "XADD: %s", sl_redis_error(ac, rep));
    }
  }
  if (r->got == r->sent)
    finish_write(r, 0);
  else
    uv_timer_again(&r->watchdog); /* progress */
}

static void down(struct redis_out *r, const char *why) {
  struct sl_output *o = r->o;
  uint64_t suppressed = 0;
  r->ac = NULL;
  r->connected = 0;
  r->reconnects++;
  if (!r->down_logged && sl_log_allow(&r->conn_log, &suppressed))
    sl_log(SL_LOG_WARN, "redis output disconnected; reconnecting with backoff",
           SL_S("output", o->cfg->name), SL_S("address", r->address),
           SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
  r->down_logged = 1;
  r->was_down = 1;
  if (r->sent == 0 || r->fail_at == UINT32_MAX) /* else: the reply's error
                                                   says more (NOAUTH) */
    snprintf(r->why, sizeof(r->why), "%s", why);
  if (r->sent)
    finish_write(r, 1); /* what was not answered goes again */
  else
    sl_output_done(o, 0, SL_WRITE_RETRY, r->why);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  struct redis_out *r = ac->data;
  if (r == NULL || r->closing || r->ac != ac)
    return;
  down(r, status == REDIS_OK && !ac->err ? "closed"
                                        : sl_redis_error(ac, NULL));
}

static void on_connect(const redisAsyncContext *ac, int status) {
  struct redis_out *r = ac->data;
  uint64_t suppressed = 0;
  if (r == NULL || r->closing || r->ac != ac)
    return;
  if (status != REDIS_OK) {
    down(r, sl_redis_error(ac, NULL)); /* hiredis frees ac */
    return;
  }
  r->connected = 1;
  uv_timer_stop(&r->watchdog);
  if (r->was_down && sl_log_allow(&r->conn_log, &suppressed))
    sl_log(SL_LOG_INFO, "redis output connected",
           SL_S("output", r->o->cfg->name), SL_S("address", r->address),
           SL_U("suppressed", suppressed), SL_END);
  r->was_down = r->down_logged = 0;
  if (r->o->q.count == 0)
    sl_output_reachable(r->o);
  sl_output_kick(r->o);
}

static void on_dialed(struct sl_redis_dial *d, redisAsyncContext *ac,
                      const char *why) {
  struct redis_out *r = container_of(d, struct redis_out, dial);
  if (ac == NULL) {
    if (!r->closing)
      down(r, why);
    return;
  }
  if (r->closing) {
    redisAsyncFree(ac);
    return;
  }
  r->ac = ac;
  if (r->o->cfg->retry.timeout_ms) /* a connect that hangs (no SYN-ACK) */
    uv_timer_start(&r->watchdog, on_watchdog, r->o->cfg->retry.timeout_ms, 0);
}

static void connect_now(struct redis_out *r) {
  if (r->closing || r->ac || r->dial.resolving)
    return;
  r->dial.data = r;
  r->dial.on_connect = on_connect;
  r->dial.on_disconnect = on_disconnect;
  r->dial.limits.max_bulk = 4096; /* XADD answers an id or an error */
  r->dial.limits.max_elements = 16;
  sl_redis_dial(&r->dial, &r->o->w->loop, r->address, on_dialed);
}

/* No answer within retry.timeout_ms: drop the connection (its pending
 * replies fail; on_disconnect reports the write); a connect not done by
 * then is given up. */
static void on_watchdog(uv_timer_t *t) {
  struct redis_out *r = t->data;
  redisAsyncContext *ac = r->ac;
  char why[64];
  if (ac == NULL || r->closing)
    return;
  if (!r->connected) {
    /* hiredis calls neither callback for a connect it did not finish */
    r->ac = NULL;
    redisAsyncFree(ac);
    snprintf(why, sizeof(why), "connect timed out after %u ms",
             r->o->cfg->retry.timeout_ms);
    down(r, why);
    return;
  }
  ac->c.err = REDIS_ERR_OTHER;
  snprintf(ac->c.errstr, sizeof(ac->c.errstr), "no reply within %u ms",
           r->o->cfg->retry.timeout_ms);
  ac->err = ac->c.err;
  ac->errstr = ac->c.errstr;
  redisAsyncFree(ac);
}

/* ---- the plugin -------------------------------------------------------- */

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct redis_out *r = o->data;
  uint32_t i;
  void *priv = (void *)(uintptr_t)r->gen;
  r->sent = r->got = r->n_ok = 0;
  r->fail_at = UINT32_MAX;
  r->fatal = 0;
  for (i = 0; i < b->n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    int rc = build_xadd(r, ev);
    if (rc == 0 &&
        redisAsyncCommandArgv(r->ac, on_reply, priv, r->argc, r->argv,
                              r->len) != REDIS_OK)
      rc = SL_EIO;
    if (rc != 0) {
      r->fail_at = r->sent; /* after every reply of those sent */
      r->fatal = rc == SL_EPROTO;
      snprintf(r->why, sizeof(r->why), "cannot build the XADD: %s",
               rc == SL_EPROTO ? "bad headers" : "out of memory");
      break; /* the replies of those sent report the write */
    }
    r->sent++;
    r->inflight++;
  }
  if (r->sent == 0) {
    finish_write(r, 0);
    return;
  }
  if (o->cfg->retry.timeout_ms)
    uv_timer_start(&r->watchdog, on_watchdog, o->cfg->retry.timeout_ms,
                   o->cfg->retry.timeout_ms);
}

static void cb_retry(struct sl_output *o) {
  struct redis_out *r = o->data;
  if (r)
    connect_now(r);
}

static int cb_healthy(struct sl_output *o) {
  struct redis_out *r = o->data;
  return r && r->connected && !r->closing;
}

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  struct redis_out *r = calloc(1, sizeof(*r));
  const struct sl_output_config *c = o->cfg;
  const char *fmt;
  const char *v[] = {c->name, NULL, NULL};
  int rc = 0;
  if (r == NULL)
    return SL_ENOMEM;
  r->o = o;
  o->data = r;
  r->fail_at = UINT32_MAX;
  sl_log_limiter_init(&r->conn_log, 10000, 6);
  sl_buf_init(&r->args);
  uv_timer_init(&o->w->loop, &r->watchdog);
  r->watchdog.data = r;
  r->address = sl_config_value_str(c->values, c->nvalues, "address");
  r->stream = sl_config_value_str(c->values, c->nvalues, "stream");
  r->maxlen = sl_config_value_num(c->values, c->nvalues, "maxlen");
  fmt = sl_config_value_str(c->values, c->nvalues, "format");
  r->format = strcmp(fmt, "event") == 0 ? FMT_EVENT
              : strcmp(fmt, "raw") == 0 ? FMT_RAW
                                        : FMT_JSON;
  r->was_down = 1; /* the first connect is logged as well */
  /* what one XADD may carry: redis takes 512 MiB strings; the engine's
   * limit (plus headroom) is what matters */
  o->max_event_bytes = o->w->cfg->max_event_bytes + SL_EVENT_HEADROOM;
  rc |= sl_metric_add_u64(o->w->metrics, &m_inflight, v, &r->inflight, r);
  rc |= sl_metric_add_u64(o->w->metrics, &m_reconnects, v, &r->reconnects,
                          r);
  v[1] = "ok";
  rc |= sl_metric_add_u64(o->w->metrics, &m_replies, v, &r->replies_ok, r);
  v[1] = "error";
  rc |= sl_metric_add_u64(o->w->metrics, &m_replies, v, &r->replies_err, r);
  if (rc != 0) {
    snprintf(err, errlen, "cannot register the redis output's metrics");
    return SL_ENOMEM; /* cb_stop frees r */
  }
  connect_now(r);
  return 0;
}

static void finish_stop(struct redis_out *r) {
  struct sl_output *o = r->o;
  sl_buf_close(&r->args);
  free(r->off);
  free(r->len);
  free(r->argv);
  free(r);
  o->data = NULL;
  sl_output_stopped(o);
}

static void on_timer_closed(uv_handle_t *h) {
  finish_stop(h->data);
}

/* A name being resolved holds the dial: wait until its callback ran. */
static void on_stop_wait(uv_timer_t *t) {
  struct redis_out *r = t->data;
  if (!r->dial.resolving)
    uv_close((uv_handle_t *)t, on_timer_closed);
}

static void cb_stop(struct sl_output *o) {
  struct redis_out *r = o->data;
  redisAsyncContext *ac = r->ac;
  r->closing = 1;
  r->ac = NULL;
  r->connected = 0;
  sl_metric_remove(o->w->metrics, r);
  sl_redis_dial_cancel(&r->dial);
  if (ac)
    redisAsyncFree(ac); /* its callbacks see closing */
  if (r->dial.resolving)
    uv_timer_start(&r->watchdog, on_stop_wait, 10, 10);
  else
    uv_close((uv_handle_t *)&r->watchdog, on_timer_closed);
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_retry = cb_retry,
    .cb_stop = cb_stop,
    .cb_healthy = cb_healthy,
};

static const char *const formats[] = {"json", "event", "raw", NULL};

static const struct sl_config_key keys[] = {
    {.name = "address", .type = SL_KEY_STRING,
     .doc = "the redis server, \"host:port\" (a name is resolved off the "
            "loop on each connect) or a unix socket path",
     .flags = SL_KEY_REQUIRED},
    {.name = "stream", .type = SL_KEY_STRING, .def = "{topic}",
     .doc = "the stream to XADD to; {topic} and {key} are the event's"},
    {.name = "maxlen", .type = SL_KEY_UINT, .def = "0",
     .doc = "trim the stream with MAXLEN ~ this on each XADD; 0: never",
     .min = 0, .max = 1ull << 40},
    {.name = "format", .type = SL_KEY_STRING, .def = "json",
     .doc = "json: fields id, topic, key, time, h:<header>, payload (JSON); "
            "raw: the same, a string payload as its bytes; event: one field "
            "event (the msgpack event)",
     .choices = formats},
    {.name = "retry.timeout_ms", .type = SL_KEY_CORE, .def = "30000",
     .doc = "a write whose replies take longer drops the connection; 0: "
            "none",
     .min = 0, .max = 3600000},
    {0}};

const struct sl_plugin sl_output_redis = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "redis",
               .doc = "XADDs events to redis streams, pipelined",
               .keys = keys},
    .output = &ops,
};
