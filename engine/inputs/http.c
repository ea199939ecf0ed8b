/* http.c - the http input: events over HTTP/1.1.
 *   POST /v1/events          a JSON object or array of event objects,
 *                            NDJSON (application/x-ndjson) or msgpack event
 *                            maps back to back (application/msgpack)
 *   POST /v1/topics/{topic}  bare payloads: the JSON value, each NDJSON
 *                            line or each msgpack value is the payload of
 *                            one event with that topic
 *   POST /v1/logs            OpenTelemetry logs (OTLP/HTTP, JSON encoding):
 *                            each log record is one event (codec/otlp.c),
 *                            answered 200 {} or with a partialSuccess
 * With the input's `topic` set, events posted to /v1/events without a topic
 * take that one.
 * A request is a batch. Every event is converted (JSON to msgpack with
 * yajl, no DOM) and checked before any is submitted; one bad event refuses
 * the whole batch with 400 naming its index and line (or byte offset). An
 * accepted batch goes through one source per request and is answered
 * 202 {"accepted": n} only once every event is queued; when an output is
 * full and blocks at the time the body is complete, nothing is taken and
 * the answer is 503 with Retry-After. Events without a valid traceparent
 * take the request's traceparent header when it is valid.
 * A body with Content-Encoding: gzip is inflated first (at most
 * max_body_bytes once inflated).
 * Owns its HTTP server (and through it the connections) and the per-request
 * batches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "codec.h"
#include "framed.h"
#include "http.h"
#include "json.h"
#include "otlp.h"
#include "worker.h"
#include "plugins.h"
#include "rfc3339.h"
#include "schemas.h"
#include "tls.h"

enum body_kind { BODY_JSON = 0, BODY_NDJSON, BODY_MSGPACK };

struct http_in {
  struct sl_input *in;
  struct sl_http_server srv;
  char *token; /* bearer token; NULL: no auth */
  size_t token_len;
  int started;
};

struct span {
  uint32_t off, len;
  uint32_t fixed; /* in batch.fixed (a topic was added), else in base */
};

/* One request's events, from conversion to the last submit. */
struct batch {
  struct sl_source src;
  struct http_in *hi;
  struct sl_http_request *r;
  enum body_kind kind;
  char *topic; /* /v1/topics/{topic}, decoded; NULL for /v1/events */
  size_t topic_len;
  char traceparent[56]; /* the request's, when valid */
  int has_traceparent;
  int source_open;
  const uint8_t *base;  /* the items' bytes: mp, or the msgpack body */
  struct sl_buf mp;     /* JSON converted to msgpack */
  struct sl_buf spans;  /* struct span[] into base or fixed */
  struct sl_buf fixed;  /* events given the input's default topic */
  size_t n, next;
  struct sl_buf scratch; /* headers with the traceparent added */
  struct sl_durable wait; /* the 202 waits for the disk buffers */
  int otlp;               /* POST /v1/logs */
  struct sl_otlp_result otlp_res;
};

#define SPAN(b, i) (((const struct span *)(b)->spans.data)[i])

static struct sl_str mp_str(const uint8_t *p, size_t len);

/* ---- requests ---------------------------------------------------------- */

static int path_is(struct sl_str p, const char *lit) {
  size_t n = strlen(lit);
  return p.len == n && memcmp(p.p, lit, n) == 0;
}

/* The media type of a Content-Type value, parameters dropped. */
static int kind_of(struct sl_str ct, enum body_kind *kind) {
  static const struct {
    const char *name;
    enum body_kind kind;
  } types[] = {{"application/json", BODY_JSON},
               {"application/x-ndjson", BODY_NDJSON},
               {"application/ndjson", BODY_NDJSON},
               {"application/msgpack", BODY_MSGPACK},
               {"application/x-msgpack", BODY_MSGPACK},
               {"application/vnd.msgpack", BODY_MSGPACK}};
  size_t n = 0, i;
  if (ct.p == NULL)
    return 0;
  while (n < ct.len && ct.p[n] != ';' && ct.p[n] != ' ')
    n++;
  for (i = 0; i < SL_ARRAY_SIZE(types); i++)
    if (strlen(types[i].name) == n && strncasecmp(ct.p, types[i].name, n) == 0) {
      *kind = types[i].kind;
      return 1;
    }
  return 0;
}

static void batch_free(struct batch *b) {
  if (b == NULL)
    return;
  sl_worker_undurable(&b->wait);
  if (b->source_open)
    sl_source_close(&b->src); /* a held event of a cut request is dropped */
  sl_buf_close(&b->mp);
  sl_buf_close(&b->spans);
  sl_buf_close(&b->fixed);
  sl_buf_close(&b->scratch);
  free(b->topic);
  free(b);
}

static void cb_headers(struct sl_http_request *r) {
  struct http_in *hi = r->server->data;
  struct batch *b;
  struct sl_str tp;
  enum body_kind kind;
  char *topic = NULL;
  long topic_len = 0;
  int otlp = path_is(r->path, "/v1/logs");

  if (!otlp && !path_is(r->path, "/v1/events")) {
    static const char prefix[] = "/v1/topics/";
    size_t n = sizeof(prefix) - 1;
    if (r->path.len <= n || memcmp(r->path.p, prefix, n) != 0 ||
        memchr(r->path.p + n, '/', r->path.len - n) != NULL) {
      sl_http_respond_error(r, 404,
                            "no such endpoint: use POST /v1/events, POST "
                            "/v1/topics/{topic} or POST /v1/logs (OTLP)");
      return;
    }
    topic = malloc(r->path.len - n + 1);
    if (topic == NULL) {
      sl_http_respond_error(r, 500, "out of memory");
      return;
    }
    memcpy(topic, r->path.p + n, r->path.len - n);
    topic_len = sl_http_unescape(topic, r->path.len - n, 0);
    if (topic_len <= 0) {
      free(topic);
      sl_http_respond_error(r, 400, "malformed topic in the path");
      return;
    }
  }
  if (strcmp(r->method, "POST") != 0) {
    free(topic);
    sl_http_add_header(r, "Allow", "POST");
    sl_http_respond_error(r, 405, "method %s not allowed: use POST", r->method);
    return;
  }
  if (hi->token && !sl_http_bearer_ok(r, hi->token, hi->token_len)) {
    free(topic);
    sl_http_add_header(r, "WWW-Authenticate", "Bearer realm=\"sluice\"");
    sl_http_respond_error(r, 401, "missing or wrong bearer token");
    return;
  }
  if (otlp && (!kind_of(sl_http_header(r, "content-type"), &kind) ||
               kind != BODY_JSON)) {
    struct sl_str ct = sl_http_header(r, "content-type");
    int proto = ct.p && ct.len >= 22 &&
                strncasecmp(ct.p, "application/x-protobuf", 22) == 0;
    sl_http_respond_error(r, 415, proto
        ? "OTLP/HTTP protobuf is not supported: send the OTLP JSON encoding "
          "(Content-Type: application/json)"
        : "/v1/logs takes OTLP JSON: use Content-Type: application/json");
    return;
  }
  if (!kind_of(sl_http_header(r, "content-type"), &kind)) {
    free(topic);
    sl_http_respond_error(r, 415,
                          "unsupported Content-Type: use application/json, "
                          "application/x-ndjson or application/msgpack");
    return;
  }
  b = calloc(1, sizeof(*b));
  if (b == NULL) {
    free(topic);
    sl_http_respond_error(r, 500, "out of memory");
    return;
  }
  b->hi = hi;
  b->r = r;
  b->kind = kind;
  b->otlp = otlp;
  b->topic = topic;
  b->topic_len = (size_t)topic_len;
  sl_buf_init(&b->mp);
  sl_buf_init(&b->spans);
  sl_buf_init(&b->fixed);
  sl_buf_init(&b->scratch);
  tp = sl_http_header(r, "traceparent");
  if (tp.p && sl_event_traceparent_valid(tp.p, tp.len)) {
    memcpy(b->traceparent, tp.p, tp.len);
    b->has_traceparent = 1;
  }
  r->data = b;
}

static void cb_done(struct sl_http_request *r) {
  batch_free(r->data);
  r->data = NULL;
}

/* ---- checking a batch -------------------------------------------------- */

static int add_span(struct batch *b, size_t off, size_t len, int fixed) {
  struct span s = {(uint32_t)off, (uint32_t)len, (uint32_t)fixed};
  return sl_buf_append(&b->spans, &s, sizeof(s));
}

/* Integer times below this are refused: as nanoseconds they would be
 * 1970-01-02, so they are milliseconds (Date.now()) or seconds. */
#define MIN_TIME_NS 100000000000000LL /* 1e14 */

/* "time" of the map at p: an RFC 3339 string becomes integer ns in *ns
 * (returns 1); an integer that looks like ms or s is refused (SL_EPROTO,
 * msg filled); anything else is left to sl_codec_parse_event (0). */
static int check_time(const uint8_t *p, size_t len, int64_t *ns, char *msg,
                      size_t msglen) {
  struct sl_str s;
  char why[128];
  int64_t v;
  size_t used;
  if (sl_codec_read_int(p, len, &v, &used) == 0) {
    if (v >= MIN_TIME_NS)
      return 0;
    snprintf(msg, msglen, "field 'time': %lld looks like milliseconds; send "
             "nanoseconds or an RFC 3339 string", (long long)v);
    return SL_EPROTO;
  }
  if (sl_codec_read_str(p, len, &s, NULL) != 0)
    return 0;
  if (sl_rfc3339_parse(s.p, s.len, ns, why, sizeof(why)) != 0) {
    snprintf(msg, msglen, "field 'time': %s", why);
    return SL_EPROTO;
  }
  return 1;
}

/* A copy of the map at p in b->fixed when it needs one: "topic" added
 * (the input has a default topic and the map has none) or an RFC 3339
 * "time" made integer nanoseconds. Returns 1 and sets *off, 0 when the
 * map stays as it is, SL_EPROTO (msg filled) or SL_ENOMEM. */
static int fix_map(struct batch *b, const uint8_t *p, size_t len, size_t *off,
                   char *msg, size_t msglen) {
  const char *topic = b->hi->in->cfg->topic;
  size_t h, used, pos, time_at = 0, time_len = 0;
  int64_t ns = 0;
  uint32_t n, i;
  int rc, add_topic = topic != NULL, new_time = 0;

  if (sl_codec_read_map(p, len, &n, &h) != 0)
    return 0; /* not a map: sl_codec_parse_event says so */
  for (i = 0, pos = h; i < n; i++) {
    struct sl_str k = mp_str(p + pos, len - pos);
    if (k.p && k.len == 5 && memcmp(k.p, "topic", 5) == 0)
      add_topic = 0;
    if (sl_codec_skip(p + pos, len - pos, len, &used, NULL) != 0)
      return 0;
    pos += used;
    if (sl_codec_skip(p + pos, len - pos, len, &used, NULL) != 0)
      return 0;
    if (k.p && k.len == 4 && memcmp(k.p, "time", 4) == 0) {
      rc = check_time(p + pos, used, &ns, msg, msglen);
      if (rc < 0)
        return rc;
      new_time = rc;
      time_at = pos;
      time_len = used;
    }
    pos += used;
  }
  if (!add_topic && !new_time)
    return 0;
  *off = b->fixed.len;
  rc = sl_codec_put_map(&b->fixed, n + (uint32_t)add_topic);
  if (rc == 0 && add_topic)
    rc = sl_codec_put_str(&b->fixed, "topic", 5);
  if (rc == 0 && add_topic)
    rc = sl_codec_put_str(&b->fixed, topic, strlen(topic));
  if (new_time) { /* the pairs before the time value, it, the rest */
    if (rc == 0)
      rc = sl_buf_append(&b->fixed, p + h, time_at - h);
    if (rc == 0)
      rc = sl_codec_put_int(&b->fixed, ns);
    if (rc == 0)
      rc = sl_buf_append(&b->fixed, p + time_at + time_len,
                         len - time_at - time_len);
  } else if (rc == 0) {
    rc = sl_buf_append(&b->fixed, p + h, len - h);
  }
  return rc ? rc : 1;
}

/* Check one item, an event map or (with a topic path) any payload, and
 * note where it is. */
static int take_item(struct batch *b, const uint8_t *p, size_t off,
                     size_t len, char *msg, size_t msglen) {
  uint32_t max = b->hi->in->w->cfg->max_event_bytes;
  struct sl_event_view v;
  struct sl_codec_error ce;
  int fixed = 0;
  if (len > max) {
    snprintf(msg, msglen, "event larger than max_event_bytes (%u)", max);
    return SL_E2BIG;
  }
  if (b->topic == NULL) {
    size_t foff;
    fixed = fix_map(b, p + off, len, &foff, msg, msglen);
    if (fixed == SL_ENOMEM)
      snprintf(msg, msglen, "out of memory");
    if (fixed < 0)
      return fixed;
    if (fixed) {
      len = b->fixed.len - foff;
      off = foff;
      p = b->fixed.data;
    }
    if (sl_codec_parse_event(p + off, len, &v, &ce) != 0) {
      snprintf(msg, msglen, "%s", ce.msg);
      return SL_EPROTO;
    }
  }
  if (add_span(b, off, len, fixed) != 0) {
    snprintf(msg, msglen, "out of memory");
    return SL_ENOMEM;
  }
  return 0;
}

static int on_json_item(void *data, size_t off, size_t len, size_t index,
                        size_t line, struct sl_json_error *err) {
  struct batch *b = data;
  int rc = take_item(b, b->mp.data, off, len, err->msg, sizeof(err->msg));
  if (rc != 0) {
    err->index = index;
    err->line = line;
  }
  return rc;
}

/* 400 naming the bad event; the batch is refused whole. */
static void refuse(struct batch *b, const char *msg, size_t index,
                   const char *where, size_t at) {
  struct sl_input *in = b->hi->in;
  struct sl_buf out;
  in->stats.bad_input++;
  sl_buf_init(&out);
  sl_buf_append(&out, "{\"error\":", 9);
  sl_codec_json_str(&out, msg, strlen(msg));
  sl_buf_printf(&out, ",\"index\":%zu,\"%s\":%zu}", index, where, at);
  sl_http_respond(b->r, 400, "application/json", out.data, out.len);
  sl_buf_close(&out);
}

static int on_otlp_event(void *data, size_t off, size_t len) {
  return add_span(data, off, len, 1);
}

/* 400 for an OTLP request that does not decode, with a Status body. */
static void refuse_otlp(struct batch *b, const char *msg) {
  struct sl_buf out;
  b->hi->in->stats.bad_input++;
  sl_buf_init(&out);
  sl_buf_append(&out, "{\"code\":3,\"message\":", 20);
  sl_codec_json_str(&out, msg, strlen(msg));
  sl_buf_putc(&out, '}');
  sl_http_respond(b->r, 400, "application/json", out.data, out.len);
  sl_buf_close(&out);
}

/* POST /v1/logs: the JSON into b->mp, each valid log record an event in
 * b->fixed. Returns 0 or refuses the request. */
static int check_otlp(struct batch *b) {
  const struct sl_input_config *cfg = b->hi->in->cfg;
  const struct sl_buf *body = &b->r->body;
  const char *topic =
      sl_config_value_str(cfg->values, cfg->nvalues, "otlp_topic");
  char err[200];
  int rc = sl_json_to_msgpack((const char *)body->data, body->len, &b->mp,
                              err, sizeof(err));
  if (rc == 0)
    rc = sl_otlp_logs(b->mp.data, b->mp.len, topic ? topic : "otel.logs",
                      b->hi->in->w->cfg->max_event_bytes, &b->fixed,
                      on_otlp_event, b, &b->otlp_res);
  else if (rc == SL_EPROTO)
    snprintf(b->otlp_res.error, sizeof(b->otlp_res.error), "%s", err);
  if (rc == SL_ENOMEM) {
    sl_http_respond_error(b->r, 500, "out of memory");
    return rc;
  }
  if (rc != 0) {
    refuse_otlp(b, b->otlp_res.error);
    return rc;
  }
  b->hi->in->stats.bad_input += b->otlp_res.rejected;
  b->base = b->fixed.data;
  b->n = b->spans.len / sizeof(struct span);
  return 0;
}

/* Convert and check the whole body. Returns 0 or refuses the request. */
static int check_batch(struct batch *b) {
  const struct sl_buf *body = &b->r->body;
  int rc;

  if (b->otlp)
    return check_otlp(b);
  if (b->kind != BODY_MSGPACK) {
    struct sl_json_error err;
    int flags = b->kind == BODY_NDJSON ? SL_JSON_MANY
                : b->topic              ? 0
                                        : SL_JSON_SPLIT_ARRAY;
    rc = sl_json_items_to_msgpack((const char *)body->data, body->len, flags,
                                  &b->mp, on_json_item, b, &err);
    if (rc == SL_ENOMEM) {
      sl_http_respond_error(b->r, 500, "out of memory");
      return rc;
    }
    if (rc != 0) {
      refuse(b, err.msg, err.index, "line", err.line);
      return rc;
    }
    b->base = b->mp.data;
  } else {
    size_t pos = 0, used, index = 0;
    uint32_t max = b->hi->in->w->cfg->max_event_bytes;
    struct sl_codec_error ce;
    char msg[200];
    while (pos < body->len) {
      rc = sl_codec_skip(body->data + pos, body->len - pos, max, &used, &ce);
      if (rc == SL_EAGAIN) {
        refuse(b, "truncated msgpack value at the end of the body", index,
               "offset", pos);
        return rc;
      }
      if (rc == SL_E2BIG) {
        snprintf(msg, sizeof(msg), "event larger than max_event_bytes (%u)",
                 max);
        refuse(b, msg, index, "offset", pos);
        return rc;
      }
      if (rc != 0) {
        refuse(b, ce.msg, index, "offset", pos + ce.offset);
        return rc;
      }
      rc = take_item(b, body->data, pos, used, msg, sizeof(msg));
      if (rc == SL_ENOMEM) {
        sl_http_respond_error(b->r, 500, "out of memory");
        return rc;
      }
      if (rc != 0) {
        refuse(b, msg, index, "offset", pos);
        return rc;
      }
      pos += used;
      index++;
    }
    b->base = body->data;
  }
  b->n = b->spans.len / sizeof(struct span);
  if (b->n == 0 && body->len == 0) {
    refuse(b, "empty body: expected at least one event", 0,
           b->kind == BODY_MSGPACK ? "offset" : "line",
           b->kind == BODY_MSGPACK ? 0 : 1);
    return SL_EPROTO;
  }
  return 0;
}

/* 400 for an event that does not fit its enforcing payload contract:
 * {"error": .., "index": i, "path": "/sku", "expected": "string",
 * "contract": "orders.*", "version": "2"}. */
static void refuse_schema(struct batch *b, size_t index,
                          const struct sl_schema_verdict *v) {
  const struct sl_schema_contract *k = v->contract;
  const char *ver = v->version >= 0 ? k->versions[v->version].version
                                    : "unknown";
  char why[640];
  struct sl_buf out;
  b->hi->in->stats.bad_input++;
  sl_schemas_describe(v, why, sizeof(why));
  sl_buf_init(&out);
  sl_buf_append(&out, "{\"error\":", 9);
  sl_codec_json_str(&out, why, strlen(why));
  sl_buf_printf(&out, ",\"index\":%zu,\"path\":", index);
  sl_codec_json_str(&out, v->e.path, strlen(v->e.path));
  sl_buf_append(&out, ",\"expected\":", 12);
  sl_codec_json_str(&out, v->e.msg, strlen(v->e.msg));
  sl_buf_append(&out, ",\"contract\":", 12);
  sl_codec_json_str(&out, k->topics, strlen(k->topics));
  sl_buf_append(&out, ",\"version\":", 11);
  sl_codec_json_str(&out, ver, strlen(ver));
  sl_buf_putc(&out, '}');
  sl_http_respond(b->r, 400, "application/json", out.data, out.len);
  sl_buf_close(&out);
}

/* Payload contracts (worker/schemas.h), before anything is submitted: one
 * event that does not fit an enforcing contract refuses the whole batch.
 * Counted once here for the refused event; accepted ones are counted as
 * they are submitted. OTLP records are checked at submit (dead letter). */
static int check_schemas(struct batch *b) {
  struct sl_worker *w = b->hi->in->w;
  size_t i;
  if (w->cfg->nschemas == 0 || b->otlp)
    return 0;
  for (i = 0; i < b->n; i++) {
    const uint8_t *p = (SPAN(b, i).fixed ? b->fixed.data : b->base) +
                       SPAN(b, i).off;
    struct sl_event_view ev;
    struct sl_schema_verdict v;
    memset(&ev, 0, sizeof(ev));
    if (b->topic) {
      ev.topic.p = b->topic;
      ev.topic.len = (uint32_t)b->topic_len;
      ev.payload = p;
      ev.payload_len = SPAN(b, i).len;
    } else if (sl_codec_parse_event(p, SPAN(b, i).len, &ev, NULL) != 0) {
      continue; /* checked before: cannot happen */
    }
    if (sl_schemas_check(w, ev.topic, ev.headers, ev.headers_len, ev.payload,
                         ev.payload_len, 0, &v) == SL_SCHEMA_INVALID) {
      sl_schemas_check(w, ev.topic, ev.headers, ev.headers_len, ev.payload,
                       ev.payload_len, 1, &v); /* counted once */
      refuse_schema(b, i, &v);
      return SL_EINVAL;
    }
  }
  return 0;
}

/* ---- building and submitting ------------------------------------------- */

/* The string at p (a msgpack str), or p == NULL. */
static struct sl_str mp_str(const uint8_t *p, size_t len) {
  struct sl_str s = {NULL, 0};
  if (sl_codec_read_str(p, len, &s, NULL) != 0)
    s.p = NULL;
  return s;
}

/* The size of the header of the map at p (headers a parse has validated). */
static size_t map_header(const uint8_t *p, size_t len) {
  uint32_t count;
  size_t used = 0;
  sl_codec_read_map(p, len, &count, &used);
  return used;
}

/* Headers of v with the request's traceparent in place of a missing or
 * invalid one, written to b->scratch. Returns 0, 1 (keep v's headers) or
 * SL_ENOMEM. */
static int with_traceparent(struct batch *b, const struct sl_event_view *v) {
  const uint8_t *p = v->headers, *end, *val;
  size_t vlen, used, kept = 0, i, count;
  struct sl_buf *out = &b->scratch;
  int rc = 0;

  if (p) {
    struct sl_str cur = {NULL, 0};
    if (sl_codec_map_find(p, v->headers_len, "traceparent", 11, &val, &vlen) ==
        0)
      cur = mp_str(val, vlen);
    if (cur.p && sl_event_traceparent_valid(cur.p, cur.len))
      return 1; /* the event's own wins */
  }
  sl_buf_reset(out);
  count = v->headers_count;
  /* the count of the new map first: the pairs kept plus ours */
  if (p) {
    end = p + v->headers_len;
    p += map_header(p, v->headers_len);
    for (i = 0; i < count; i++) {
      struct sl_str k = mp_str(p, (size_t)(end - p));
      size_t kused;
      sl_codec_skip(p, (size_t)(end - p), (size_t)(end - p), &kused, NULL);
      sl_codec_skip(p + kused, (size_t)(end - p) - kused, (size_t)(end - p),
                    &used, NULL);
      if (!(k.len == 11 && memcmp(k.p, "traceparent", 11) == 0))
        kept++;
      p += kused + used;
    }
  }
  rc = sl_codec_put_map(out, (uint32_t)kept + 1);
  if (v->headers) {
    p = v->headers;
    end = p + v->headers_len;
    p += map_header(p, v->headers_len);
    for (i = 0; i < count && rc == 0; i++) {
      struct sl_str k = mp_str(p, (size_t)(end - p));
      size_t kused;
      sl_codec_skip(p, (size_t)(end - p), (size_t)(end - p), &kused, NULL);
      sl_codec_skip(p + kused, (size_t)(end - p) - kused, (size_t)(end - p),
                    &used, NULL);
      if (!(k.len == 11 && memcmp(k.p, "traceparent", 11) == 0))
        rc = sl_buf_append(out, p, kused + used);
      p += kused + used;
    }
  }
  if (rc == 0)
    rc = sl_codec_put_str(out, "traceparent", 11);
  if (rc == 0)
    rc = sl_codec_put_str(out, b->traceparent, 55);
  return rc;
}

/* On a TLS conn whose peer showed a certificate, the event carries the
 * peer's identity in the sluice-peer header for rules (replacing one the
 * producer may have set). Takes ev; NULL when out of memory. */
static struct sl_event *with_peer(struct sl_event *ev, struct sl_conn *c) {
  const char *peer = ev ? sl_conn_peer_identity(c) : NULL;
  struct sl_event *out;
  if (peer == NULL)
    return ev;
  out = sl_event_with_header(ev, "sluice-peer", peer, strlen(peer));
  sl_event_unref(ev);
  return out;
}

static struct sl_event *build(struct batch *b, size_t i) {
  struct sl_worker *w = b->hi->in->w;
  const uint8_t *p = (SPAN(b, i).fixed ? b->fixed.data : b->base) +
                     SPAN(b, i).off;
  size_t len = SPAN(b, i).len;
  struct sl_str none = {NULL, 0};
  struct sl_event_view v;

  if (b->topic) {
    struct sl_str topic = {b->topic, (uint32_t)b->topic_len};
    const uint8_t *h = NULL;
    size_t hlen = 0;
    if (b->has_traceparent) {
      sl_buf_reset(&b->scratch);
      if (sl_codec_put_map(&b->scratch, 1) != 0 ||
          sl_codec_put_str(&b->scratch, "traceparent", 11) != 0 ||
          sl_codec_put_str(&b->scratch, b->traceparent, 55) != 0)
        return NULL;
      h = b->scratch.data;
      hlen = b->scratch.len;
    }
    return sl_event_new(&w->idgen, none, topic, none, 0, 0, h, hlen, p, len,
                        1);
  }
  if (sl_codec_parse_event(p, len, &v, NULL) != 0)
    return NULL; /* checked before: cannot happen */
  if (b->has_traceparent) {
    int rc = with_traceparent(b, &v);
    if (rc < 0)
      return NULL;
    if (rc == 0) {
      v.headers = b->scratch.data;
      v.headers_len = (uint32_t)b->scratch.len;
    }
  }
  return sl_event_from_view(&w->idgen, &v, 1);
}

/* OTLP/HTTP: 200 with {} or the partial success. */
static void answer_otlp(struct batch *b) {
  struct sl_buf out;
  sl_buf_init(&out);
  if (b->otlp_res.rejected) {
    sl_buf_printf(&out, "{\"partialSuccess\":{\"rejectedLogRecords\":\"%zu\","
                  "\"errorMessage\":", b->otlp_res.rejected);
    sl_codec_json_str(&out, b->otlp_res.error, strlen(b->otlp_res.error));
    sl_buf_append(&out, "}}", 2);
  } else {
    sl_buf_append(&out, "{}", 2);
  }
  sl_http_respond(b->r, 200, "application/json", out.data, out.len);
  sl_buf_close(&out);
}

static void answer_202(struct batch *b) {
  char out[96];
  int n;
  if (b->otlp) {
    answer_otlp(b);
    return;
  }
  if (b->src.unrouted) /* no rule or route decided them: say so */
    n = snprintf(out, sizeof(out), "{\"accepted\":%zu,\"unrouted\":%llu}",
                 b->n, (unsigned long long)b->src.unrouted);
  else
    n = snprintf(out, sizeof(out), "{\"accepted\":%zu}", b->n);
  sl_http_respond(b->r, 202, "application/json", out, (size_t)n);
}

static void answer_refused(struct batch *b);

static void on_durable(struct sl_durable *d) {
  struct batch *b = container_of(d, struct batch, wait);
  if (d->failed || b->src.refused_later) { /* workers > 1 */
    if (d->failed)
      b->src.refused_output = d->refused_output;
    answer_refused(b);
    return;
  }
  answer_202(b);
}

/* A disk buffer refused an event: 503, and the client sends the batch
 * again (the events before it may arrive twice, none is lost). */
static void answer_refused(struct batch *b) {
  char why[256];
  sl_worker_refusal(b->hi->in->w, b->src.refused_output, why, sizeof(why));
  sl_http_add_header(b->r, "Retry-After", "1");
  sl_http_respond_error(b->r, 503,
                        "%s; the batch was not accepted: retry later", why);
}

/* Submit from b->next on; answer 202 once all are in, and in the disk
 * buffers' files as their fsync policy promises (a kill -9 after the 202
 * loses nothing). */
static void submit_more(struct batch *b) {
  struct sl_input *in = b->hi->in;
  int rc;

  if (b->src.refused || b->src.refused_later) {
    answer_refused(b);
    return;
  }
  while (b->next < b->n) {
    struct sl_event *ev = with_peer(build(b, b->next), b->r->conn);
    if (ev == NULL) {
      sl_http_respond_error(b->r, 500,
                            "out of memory after %zu of %zu events were "
                            "accepted",
                            b->next, b->n);
      return;
    }
    b->next++;
    in->stats.events_in++;
    rc = sl_worker_submit(&b->src, ev);
    if (rc == SL_EAGAIN)
      return; /* on_resume goes on once the held event is in */
    if (rc == SL_EIO) {
      answer_refused(b);
      return;
    }
  }
  sl_framed_read_done(&b->src); /* as a stream input between two reads */
  b->wait.on_durable = on_durable;
  rc = sl_worker_durable(in->w, &b->wait);
  if (rc == 0 && b->src.refused_later) {
    answer_refused(b);
  } else if (rc == 0) {
    answer_202(b);
  } else if (rc == SL_EIO) {
    b->src.refused_output = b->wait.refused_output;
    answer_refused(b);
  }
}

static void on_resume(struct sl_source *s) {
  submit_more(container_of(s, struct batch, src));
}

/* Content-Encoding: gzip (OTLP exporters send it): r->body inflated in
 * place, every member of it, at most max_body_bytes once inflated. Returns 0, or answers (415,
 * 413, 400) and returns nonzero. */
static int inflate_body(struct batch *b) {
  struct sl_http_request *r = b->r;
  struct sl_str ce = sl_http_header(r, "content-encoding");
  uint64_t max = b->hi->in->cfg->max_body_bytes;
  struct sl_buf out;
  z_stream z;
  int rc = Z_OK;

  if (ce.p == NULL || (ce.len == 8 && strncasecmp(ce.p, "identity", 8) == 0))
    return 0;
  if (!(ce.len == 4 && strncasecmp(ce.p, "gzip", 4) == 0)) {
    sl_http_respond_error(r, 415, "unsupported Content-Encoding: use gzip "
                          "or none");
    return -1;
  }
  memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, 15 + 16) != Z_OK) {
    sl_http_respond_error(r, 500, "out of memory");
    return -1;
  }
  sl_buf_init(&out);
  z.next_in = r->body.data;
  z.avail_in = (uInt)r->body.len;
  while (rc == Z_OK) {
    if (out.len >= max) {
      rc = Z_MEM_ERROR + 100; /* over the limit */
      break;
    }
    if (sl_buf_reserve(&out, 65536) != 0) {
      rc = Z_MEM_ERROR;
      break;
    }
    z.next_out = out.data + out.len;
    z.avail_out = (uInt)(out.cap - out.len);
    rc = inflate(&z, Z_NO_FLUSH);
    out.len = (size_t)((uint8_t *)z.next_out - out.data);
    if (rc == Z_BUF_ERROR && z.avail_in == 0)
      break; /* the stream ends early */
    /* a gzip body is a series of members (RFC 1952): bytes after one are
     * the next, or not gzip (refused, never ignored) */
    if (rc == Z_STREAM_END && z.avail_in > 0)
      rc = inflateReset(&z);
  }
  inflateEnd(&z);
  if (rc != Z_STREAM_END || out.len > max) {
    sl_buf_close(&out);
    b->hi->in->stats.bad_input++;
    if (rc == Z_MEM_ERROR)
      sl_http_respond_error(r, 500, "out of memory");
    else if (rc == Z_MEM_ERROR + 100 || out.len > max)
      sl_http_respond_error(r, 413, "the body inflates past max_body_bytes "
                            "(%llu)", (unsigned long long)max);
    else
      sl_http_respond_error(r, 400, "the body is not valid gzip");
    return -1;
  }
  sl_buf_close(&r->body);
  r->body = out;
  return 0;
}

static void cb_request(struct sl_http_request *r) {
  struct batch *b = r->data;
  struct sl_input *in = b->hi->in;

  if (sl_worker_blocked(in->w)) {
    sl_http_add_header(r, "Retry-After", "1");
    sl_http_respond_error(r, 503,
                          "an output is full and blocks (backpressure): "
                          "nothing was accepted; retry later");
    return;
  }
  if (inflate_body(b) != 0 || check_batch(b) != 0 || check_schemas(b) != 0)
    return;
  in->stats.bytes_in += r->body.len;
  sl_source_init(&b->src, in, on_resume);
  b->source_open = 1;
  submit_more(b);
}

static const struct sl_http_ops http_ops = {
    .cb_headers = cb_headers,
    .cb_request = cb_request,
    .cb_done = cb_done,
};

/* ---- the input --------------------------------------------------------- */

static void finish(struct http_in *hi) {
  struct sl_input *in = hi->in;
  in->data = NULL;
  in->stats.http = NULL;
  free(hi->token);
  sl_tls_free(hi->srv.tls);
  free(hi);
  sl_input_stopped(in);
}

static void on_stopped(struct sl_http_server *s) {
  finish(container_of(s, struct http_in, srv));
}

/* The keys taken together (sl_config_plugin.check, also run by cb_start):
 * an otlp_topic whose {fields} close. 0, or SL_EINVAL with why in err. */
static int check_conf(const void *conf, char *err, size_t errlen) {
  const struct sl_input_config *cfg = conf;
  const char *t = sl_config_value_str(cfg->values, cfg->nvalues, "otlp_topic");
  if (t && sl_otlp_topic_check(t) != 0) {
    snprintf(err, errlen, "otlp_topic: a {field} does not close");
    return SL_EINVAL;
  }
  return 0;
}

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  const struct sl_input_config *cfg = in->cfg;
  struct http_in *hi = calloc(1, sizeof(*hi));
  int rc;

  if (hi == NULL)
    return SL_ENOMEM;
  hi->in = in;
  in->data = hi;
  if (cfg->bearer_token_file) {
    hi->token = sl_http_load_token(cfg->bearer_token_file, &hi->token_len,
                                   err, errlen);
    if (hi->token == NULL)
      return SL_EINVAL; /* cb_stop frees hi */
  }
  hi->srv.name = cfg->name;
  hi->srv.limits.max_header_bytes = SL_HTTP_MAX_HEADER_BYTES;
  hi->srv.limits.max_body_bytes = cfg->max_body_bytes;
  hi->srv.limits.idle_ms = cfg->idle_timeout_ms;
  hi->srv.limits.header_ms =
      cfg->header_timeout_ms ? cfg->header_timeout_ms
      : cfg->idle_timeout_ms < 10000 ? cfg->idle_timeout_ms : 10000;
  hi->srv.limits.body_ms = cfg->body_timeout_ms;
  hi->srv.limits.max_conns = cfg->max_connections;
  hi->srv.limits.max_pending = cfg->max_pending_bytes > cfg->max_body_bytes
                                   ? cfg->max_pending_bytes
                                   : cfg->max_body_bytes; /* one body fits */
  hi->srv.limits.fd_guard = 1; /* leave fds for the admin server */
  hi->srv.on_stopped = on_stopped;
  if (cfg->tls.enabled &&
      (hi->srv.tls = sl_tls_new(&cfg->tls, 1, cfg->listen, cfg->name, err,
                                errlen)) == NULL)
    return SL_EINVAL; /* cb_stop frees hi */
  if (check_conf(cfg, err, errlen) != 0)
    return SL_EINVAL; /* cb_stop frees hi */
  hi->started = 1;
  in->stats.http = &hi->srv;
  rc = sl_http_start(&hi->srv, &in->w->loop, cfg->listen, &http_ops, hi, err,
                     errlen);
  return rc; /* on failure cb_stop still runs and frees hi */
}

static void cb_drain(struct sl_input *in) {
  struct http_in *hi = in->data;
  if (hi && hi->started)
    sl_http_drain(&hi->srv);
}

static uint32_t cb_busy(struct sl_input *in) {
  struct http_in *hi = in->data;
  return hi && hi->started ? sl_http_busy(&hi->srv) : 0;
}

static void cb_stop(struct sl_input *in) {
  struct http_in *hi = in->data;
  if (hi == NULL) {
    sl_input_stopped(in);
    return;
  }
  if (!hi->started) {
    finish(hi);
    return;
  }
  sl_http_stop(&hi->srv); /* on_stopped finishes, maybe right away */
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = cb_drain,
    .cb_busy = cb_busy,
    .cb_stop = cb_stop,
};

#define IN struct sl_input_config
static const struct sl_config_key keys[] = {
    {.name = "listen", .type = SL_KEY_ADDRESS,
     .doc = "\"host:port\" to serve POST /v1/events, /v1/topics/{topic} "
            "and /v1/logs on",
     .flags = SL_KEY_REQUIRED, SL_KEY_FIELD(IN, listen)},
    {.name = "topic", .type = SL_KEY_STRING,
     .doc = "the topic of bare payloads (bodies that are not events)",
     .flags = SL_KEY_TOLERATED, SL_KEY_FIELD(IN, topic)},
    {.name = "max_body_bytes", .type = SL_KEY_BYTES, .def = "8MiB",
     .doc = "a larger request body is refused (413)",
     .flags = SL_KEY_TOLERATED, .min = 1, .max = 1u << 30,
     SL_KEY_FIELD(IN, max_body_bytes)},
    {.name = "idle_timeout_ms", .type = SL_KEY_UINT, .def = "60000",
     .doc = "close a connection idle this long", .min = 100, .max = 86400000,
     SL_KEY_FIELD(IN, idle_timeout_ms)},
    {.name = "bearer_token_file", .type = SL_KEY_PATH,
     .doc = "requests must carry this token (Authorization: Bearer)",
     .flags = SL_KEY_TOLERATED | SL_KEY_READ,
     SL_KEY_FIELD(IN, bearer_token_file)},
    {.name = "max_connections", .type = SL_KEY_UINT, .def = "1024",
     .doc = "connections open at once", .min = 1, .max = 1000000,
     SL_KEY_FIELD(IN, max_connections)},
    {.name = "max_pending_bytes", .type = SL_KEY_BYTES, .def = "64MiB",
     .doc = "request bodies held over all connections", .min = 1,
     .max = 1ull << 40, SL_KEY_FIELD(IN, max_pending_bytes)},
    {.name = "header_timeout_ms", .type = SL_KEY_UINT,
     .doc = "the request head from its first byte; unset: min(10 s, "
            "idle_timeout_ms)",
     .flags = SL_KEY_TOLERATED, .min = 100, .max = 86400000,
     SL_KEY_FIELD(IN, header_timeout_ms)},
    {.name = "body_timeout_ms", .type = SL_KEY_UINT, .def = "60000",
     .doc = "the body from the end of the head", .flags = SL_KEY_TOLERATED,
     .min = 100, .max = 86400000, SL_KEY_FIELD(IN, body_timeout_ms)},
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "serve HTTPS (mTLS with verify_peer); see the tls keys",
     SL_KEY_FIELD(IN, tls)},
    {.name = "otlp_topic", .type = SL_KEY_STRING, .def = "otel.logs",
     .doc = "topic of OTLP log records (POST /v1/logs); {NAME} is the "
            "resource attribute NAME, e.g. \"logs.{service.name}\""},
    {0}};

const struct sl_plugin sl_input_http = {
    .config = {SL_PLUGIN_INPUT, "http", "JSON or msgpack events over HTTP",
               keys, check_conf},
    .input = &ops,
};
