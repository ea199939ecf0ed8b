/* admin.c - the admin server; see admin.h.
 * Requests are answered on the spot from the worker's state, except the
 * tap: a tap client is a streaming response fed from the worker's tap hook.
 * Lines are rendered into the client's buffer inside the hook and written
 * once per loop turn (an idle handle), so a burst of events costs one write
 * per client, and a client whose unsent bytes reach the buffer bound loses
 * lines instead of holding anything up. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec.h"
#include "http.h"
#include "metrics.h"
#include "router.h"
#include "rules.h"
#include "tls.h"
#include "worker.h"

#define ADMIN_MAX_BODY (64u * 1024)
#define ADMIN_IDLE_MS 60000
#define MAX_GLOBS 16

struct tap_client {
  struct tap_client *next, *prev;
  struct sl_admin *a;
  struct sl_http_request *r;
  char *globs[MAX_GLOBS]; /* into patterns */
  int nglobs;
  char *patterns;
  uint64_t limit; /* 0: no limit */
  uint64_t sent, dropped;
  double sample;  /* keep this share of matching events */
  char rule[256];   /* glob on the deciding rule's file or base name; "" any */
  char output[128]; /* an output the event went to; "" any */
  unsigned outcomes; /* bit per enum sl_rules_outcome to show; 0 all */
  int text;          /* format=text: one line for people (sluice tap) */
  struct sl_buf out; /* lines not yet written */
  int dirty, ended;
  int full; /* dropping until the client read half of its buffer */
};

struct sl_admin {
  struct sl_worker *w;
  struct sl_http_server srv;
  char *token;
  size_t token_len;
  struct tap_client clients; /* list head */
  uv_idle_t flush;
  int flush_init, flushing, started, stopped;
  uint64_t rng;
  struct sl_admin_stats stats;
  struct sl_metrics_admin metrics; /* what our metrics read */
};

static const char *const outcome_names[] = {"routed", "unrouted", "dropped",
                                            "failed"};

/* ---- the tap ----------------------------------------------------------- */

static double rnd(struct sl_admin *a) {
  a->rng ^= a->rng << 13;
  a->rng ^= a->rng >> 7;
  a->rng ^= a->rng << 17;
  return (double)(a->rng >> 11) / 9007199254740992.0; /* [0, 1) */
}

/* The bytes of a msgpack str or bin of n bytes at p (a header key); p/len
 * NULL/0 for any other type. */
static struct sl_str key_str(const uint8_t *p, size_t n) {
  struct sl_str s = {NULL, 0};
  if (sl_codec_read_strbin(p, n, &s, NULL) != 0)
    s.p = NULL, s.len = 0;
  return s;
}

/* A header name as the redaction list compares it: surrounding white space
 * and control bytes dropped, ASCII lowercased, '_' read as '-' (proxies and
 * CGI turn one into the other), and the four non-ASCII letters whose case
 * mapping lands on ASCII (KELVIN SIGN, long s, dotted and dotless i) read
 * as that letter, so no spelling another system folds to a listed name
 * escapes. Returns the length written, or -1 when the name is longer than
 * out (no listed name is that long). */
static int norm_name(const char *p, size_t n, char *out, size_t outlen) {
  const unsigned char *s = (const unsigned char *)p;
  size_t i = 0, o = 0;
  while (n && (s[n - 1] <= 0x20 || s[n - 1] == 0x7f))
    n--;
  while (i < n && (s[i] <= 0x20 || s[i] == 0x7f))
    i++;
  for (; i < n; i++) {
    unsigned c = s[i];
    if (o == outlen)
      return -1;
    if (c >= 'A' && c <= 'Z') {
      c += 'a' - 'A';
    } else if (c == '_') {
      c = '-';
    } else if (c == 0xe2 && i + 2 < n && s[i + 1] == 0x84 && s[i + 2] == 0xaa) {
      c = 'k'; /* U+212A KELVIN SIGN */
      i += 2;
    } else if (c == 0xc5 && i + 1 < n && s[i + 1] == 0xbf) {
      c = 's'; /* U+017F LATIN SMALL LETTER LONG S */
      i++;
    } else if (c == 0xc4 && i + 1 < n && (s[i + 1] == 0xb0 || s[i + 1] == 0xb1)) {
      c = 'i'; /* U+0130 and U+0131, dotted capital and dotless small i */
      i++;
      if (i + 2 < n && s[i + 1] == 0xcc && s[i + 2] == 0x87)
        i += 2; /* "i" + U+0307, what U+0130 lowercases to */
    } else if (c == 'i' && i + 2 < n && s[i + 1] == 0xcc && s[i + 2] == 0x87) {
      i += 2;
    }
    out[o++] = (char)c;
  }
  return (int)o;
}

static int redacted(const struct sl_config *cfg, struct sl_str name) {
  char want[256], got[256];
  int i, n, m;
  if (name.p == NULL)
    return 1; /* a key that is no string: mask rather than guess */
  n = norm_name(name.p, name.len, got, sizeof(got));
  if (n < 0)
    return 0;
  for (i = 0; i < cfg->admin.nredact; i++) {
    const char *r = cfg->admin.redact_headers[i];
    if (r == NULL)
      continue;
    m = norm_name(r, strlen(r), want, sizeof(want));
    if (m == n && memcmp(want, got, (size_t)n) == 0)
      return 1;
  }
  return 0;
}

/* The decision's fields after "outcome": the deciding rule's file, the
 * config route (1-based), the outputs by name, the drop reason or error. */
static int render_decision(struct sl_admin *a, struct sl_buf *b,
                           const struct sl_rules_result *d) {
  int i, rc = 0;
  if (d->rule) {
    rc = sl_buf_append(b, ",\"rule\":", 8);
    if (rc == 0)
      rc = sl_codec_json_str(b, d->rule, strlen(d->rule));
  }
  if (rc == 0 && d->route >= 0)
    rc = sl_buf_printf(b, ",\"route\":%d", d->route + 1);
  if (rc == 0)
    rc = sl_buf_append(b, ",\"outputs\":[", 12);
  for (i = 0; rc == 0 && i < d->ntargets; i++) {
    const char *name = a->w->outputs[d->targets[i]].cfg->name;
    if (i)
      rc = sl_buf_putc(b, ',');
    if (rc == 0)
      rc = sl_codec_json_str(b, name, strlen(name));
  }
  if (rc == 0)
    rc = sl_buf_putc(b, ']');
  if (rc == 0 && d->reason) {
    rc = sl_buf_append(b, ",\"reason\":", 10);
    if (rc == 0)
      rc = sl_codec_json_str(b, d->reason, strlen(d->reason));
  }
  if (rc == 0 && d->schema) { /* it did not fit its payload contract */
    rc = sl_buf_append(b, ",\"schema\":", 10);
    if (rc == 0)
      rc = sl_codec_json_str(b, d->schema, strlen(d->schema));
  }
  return rc;
}

/* One tap line: {"outcome":..,<decision>,"event":{..}} with masked header
 * values. */
static int render(struct sl_admin *a, struct sl_buf *b,
                  const struct sl_event *ev, const struct sl_rules_result *d) {
  int outcome = (int)d->outcome;
  const struct sl_config *cfg = a->w->cfg;
  struct sl_event_view v;
  const uint8_t *p, *end;
  uint32_t i;
  int rc;

  if (sl_codec_parse_event(ev->data, ev->len, &v, NULL) != 0)
    return SL_EPROTO;
  rc = sl_buf_printf(b, "{\"outcome\":\"%s\"",
                     outcome >= 0 && outcome < 4 ? outcome_names[outcome]
                                                 : "unknown");
  if (rc == 0)
    rc = render_decision(a, b, d);
  if (rc == 0)
    rc = sl_buf_append(b, ",\"event\":{\"id\":", 15);
  if (rc == 0)
    rc = sl_codec_json_str(b, v.id.p, v.id.len);
  if (rc == 0)
    rc = sl_buf_append(b, ",\"topic\":", 9);
  if (rc == 0)
    rc = sl_codec_json_str(b, v.topic.p, v.topic.len);
  if (rc == 0 && v.key.p) {
    rc = sl_buf_append(b, ",\"key\":", 7);
    if (rc == 0)
      rc = sl_codec_json_str(b, v.key.p, v.key.len);
  }
  if (rc == 0 && v.has_time)
    rc = sl_buf_printf(b, ",\"time\":%lld", (long long)v.time);
  if (rc == 0 && v.headers) {
    uint32_t count;
    size_t hdr;
    p = v.headers;
    end = p + v.headers_len;
    if (sl_codec_read_map(p, v.headers_len, &count, &hdr) != 0)
      return SL_EPROTO;
    p += hdr;
    rc = sl_buf_append(b, ",\"headers\":{", 12);
    for (i = 0; i < v.headers_count && rc == 0; i++) {
      size_t kused, vused;
      struct sl_str name;
      if (sl_codec_skip(p, (size_t)(end - p), (size_t)(end - p), &kused,
                        NULL) != 0 ||
          sl_codec_skip(p + kused, (size_t)(end - p) - kused,
                        (size_t)(end - p), &vused, NULL) != 0)
        return SL_EPROTO;
      if (i)
        rc = sl_buf_putc(b, ',');
      if (rc == 0)
        rc = sl_codec_to_json(p, kused, b);
      if (rc == 0)
        rc = sl_buf_putc(b, ':');
      name = key_str(p, kused);
      if (rc == 0 && redacted(cfg, name))
        rc = sl_buf_append(b, "\"***\"", 5);
      else if (rc == 0)
        rc = sl_codec_to_json(p + kused, vused, b);
      p += kused + vused;
    }
    if (rc == 0)
      rc = sl_buf_putc(b, '}');
  }
  if (rc == 0 && v.payload) {
    rc = sl_buf_append(b, ",\"payload\":", 11);
    if (rc == 0)
      rc = sl_codec_to_json(v.payload, v.payload_len, b);
  }
  if (rc == 0)
    rc = sl_buf_append(b, "}}\n", 3);
  return rc;
}

#define TAP_TEXT_PAYLOAD 160 /* payload bytes a text line shows at most */

/* One text line: outcome, topic, "-> outputs", rule or route, reason, a
 * cut payload: what a person scans for (`sluice tap` prints these). */
static int render_text(struct sl_admin *a, struct sl_buf *b,
                       const struct sl_event *ev,
                       const struct sl_rules_result *d) {
  struct sl_str topic = sl_event_topic(ev);
  struct sl_event_view v;
  int i, rc, outcome = (int)d->outcome;
  size_t start;

  if (sl_codec_parse_event(ev->data, ev->len, &v, NULL) != 0)
    return SL_EPROTO;
  rc = sl_buf_printf(b, "%-8s %.*s ->",
                     outcome >= 0 && outcome < 4 ? outcome_names[outcome]
                                                 : "unknown",
                     (int)topic.len, topic.p);
  for (i = 0; rc == 0 && i < d->ntargets; i++)
    rc = sl_buf_printf(b, "%s%s", i ? "," : " ",
                       a->w->outputs[d->targets[i]].cfg->name);
  if (rc == 0 && d->ntargets == 0)
    rc = sl_buf_append(b, " (none)", 7);
  if (rc == 0 && d->rule)
    rc = sl_buf_printf(b, " rule=%s", d->rule);
  if (rc == 0 && d->route >= 0)
    rc = sl_buf_printf(b, " route=%d", d->route + 1);
  if (rc == 0 && d->reason) {
    rc = sl_buf_append(b, " reason=", 8);
    if (rc == 0)
      rc = sl_codec_json_str(b, d->reason, strlen(d->reason));
  }
  if (rc == 0 && d->schema && d->schema != d->reason) {
    rc = sl_buf_append(b, " schema=", 8);
    if (rc == 0)
      rc = sl_codec_json_str(b, d->schema, strlen(d->schema));
  }
  if (rc == 0)
    rc = sl_buf_printf(b, " id=%.*s", (int)v.id.len, v.id.p);
  if (rc == 0 && v.payload) {
    rc = sl_buf_append(b, " payload=", 9);
    start = b->len;
    if (rc == 0)
      rc = sl_codec_to_json(v.payload, v.payload_len, b);
    if (rc == 0 && b->len - start > TAP_TEXT_PAYLOAD) {
      b->len = start + TAP_TEXT_PAYLOAD;
      while (b->len > start && (b->data[b->len] & 0xc0) == 0x80)
        b->len--; /* not inside a UTF-8 sequence */
      rc = sl_buf_append(b, "...", 3);
    }
  }
  if (rc == 0)
    rc = sl_buf_putc(b, '\n');
  return rc;
}

static void on_flush(uv_idle_t *h) {
  struct sl_admin *a = container_of(h, struct sl_admin, flush);
  struct tap_client *c, *next;

  uv_idle_stop(&a->flush);
  a->flushing = 0;
  for (c = a->clients.next; c != &a->clients; c = next) {
    next = c->next; /* ending a stream may close the connection later, not
                       now: c stays valid through this turn */
    if (!c->dirty || c->ended)
      continue;
    c->dirty = 0;
    if (c->out.len && sl_http_stream_write(c->r, c->out.data, c->out.len) != 0)
      c->ended = 1;
    sl_buf_reset(&c->out);
    if (!c->ended && c->limit && c->sent >= c->limit) {
      c->ended = 1;
      sl_http_stream_end(c->r);
    }
  }
}

/* Does the decision pass c's rule, output and outcome filters? */
static int decision_matches(const struct tap_client *c,
                            const struct sl_rules_result *d) {
  int i;
  if (c->outcomes && !(c->outcomes & (1u << d->outcome)))
    return 0;
  if (c->rule[0]) {
    const char *base;
    if (d->rule == NULL)
      return 0;
    base = strrchr(d->rule, '/');
    base = base ? base + 1 : d->rule;
    if (!sl_router_glob(c->rule, strlen(c->rule), d->rule, strlen(d->rule)) &&
        !sl_router_glob(c->rule, strlen(c->rule), base, strlen(base)))
      return 0;
  }
  if (c->output[0]) {
    for (i = 0; i < d->ntargets; i++)
      if (strcmp(c->a->w->outputs[d->targets[i]].cfg->name, c->output) == 0)
        return 1;
    return 0;
  }
  return 1;
}

static void on_tap(void *data, const struct sl_event *ev,
                   const struct sl_rules_result *d) {
  struct sl_admin *a = data;
  struct sl_str topic = sl_event_topic(ev);
  struct tap_client *c;

  for (c = a->clients.next; c != &a->clients; c = c->next) {
    size_t pending, before;
    int i, match = 0;
    if (c->ended || (c->limit && c->sent >= c->limit))
      continue;
    for (i = 0; i < c->nglobs && !match; i++)
      match = sl_router_glob(c->globs[i], strlen(c->globs[i]), topic.p,
                             topic.len);
    if (!match || !decision_matches(c, d) ||
        (c->sample < 1.0 && rnd(a) >= c->sample))
      continue;
    /* a full buffer drops the line before any work is spent on it; once
     * full, it stays so until half of it is read, or a buffer stuck just
     * under the bound would have every line rendered and then dropped */
    pending = sl_http_pending(c->r) + c->out.len;
    if (c->full && pending <= SL_ADMIN_TAP_BUFFER / 2)
      c->full = 0;
    if (c->full || pending >= SL_ADMIN_TAP_BUFFER) {
      c->full = 1;
      c->dropped++;
      a->stats.tap_dropped++;
      continue;
    }
    before = c->out.len;
    if ((c->text ? render_text(a, &c->out, ev, d)
                 : render(a, &c->out, ev, d)) != 0 ||
        pending + (c->out.len - before) > SL_ADMIN_TAP_BUFFER) {
      c->out.len = before;
      c->full = 1;
      c->dropped++;
      a->stats.tap_dropped++;
      continue;
    }
    c->sent++;
    a->stats.tap_lines++;
    c->dirty = 1;
    if (!a->flushing) {
      a->flushing = 1;
      uv_idle_start(&a->flush, on_flush);
    }
  }
}

static void tap_free(struct tap_client *c) {
  struct sl_admin *a = c->a;
  c->prev->next = c->next;
  c->next->prev = c->prev;
  a->stats.tap_clients--;
  if (a->clients.next == &a->clients && a->w->tap == on_tap) {
    a->w->tap = NULL; /* no client: the pipeline skips the hook */
    a->w->tap_data = NULL;
  }
  sl_buf_close(&c->out);
  free(c->patterns);
  free(c);
}

/* The value of key in a query string, decoded into out; 0 when absent. */
static int query_get(struct sl_str q, const char *key, char *out,
                     size_t outlen) {
  size_t klen = strlen(key), i = 0;
  while (i < q.len) {
    size_t end = i, eq;
    long n;
    while (end < q.len && q.p[end] != '&')
      end++;
    eq = i;
    while (eq < end && q.p[eq] != '=')
      eq++;
    if (eq - i == klen && memcmp(q.p + i, key, klen) == 0) {
      size_t vlen = eq < end ? end - eq - 1 : 0;
      if (vlen >= outlen)
        return -1;
      memcpy(out, q.p + eq + 1, vlen);
      n = sl_http_unescape(out, vlen, 1);
      if (n < 0)
        return -1;
      out[n] = '\0';
      return 1;
    }
    i = end + 1;
  }
  return 0;
}

/* rule=GLOB, output=NAME, outcome=routed,dropped,... into c; on a bad one
 * the 400 is sent and -1 returned. */
static int tap_filters(struct tap_client *c, struct sl_http_request *r) {
  char list[128], *tok, *save = NULL;
  int rc, k;
  if (query_get(r->query, "rule", c->rule, sizeof(c->rule)) < 0) {
    sl_http_respond_error(r, 400, "rule: expected a glob on a rule file");
    return -1;
  }
  if (query_get(r->query, "output", c->output, sizeof(c->output)) < 0) {
    sl_http_respond_error(r, 400, "output: expected an output name");
    return -1;
  }
  if (c->output[0] && sl_config_output_index(c->a->w->cfg, c->output,
                                             strlen(c->output)) < 0) {
    sl_http_respond_error(r, 400, "output: no output named \"%s\"",
                          c->output);
    return -1;
  }
  rc = query_get(r->query, "format", list, sizeof(list));
  if (rc < 0 || (rc > 0 && strcmp(list, "text") != 0 &&
                 strcmp(list, "json") != 0)) {
    sl_http_respond_error(r, 400, "format: expected json or text");
    return -1;
  }
  c->text = rc > 0 && strcmp(list, "text") == 0;
  rc = query_get(r->query, "outcome", list, sizeof(list));
  for (tok = rc > 0 ? strtok_r(list, ",", &save) : NULL; tok;
       tok = strtok_r(NULL, ",", &save)) {
    for (k = 0; k < 4 && strcmp(tok, outcome_names[k]) != 0; k++)
      ;
    if (k == 4)
      break;
    c->outcomes |= 1u << k;
  }
  if (rc < 0 || (rc > 0 && (tok || c->outcomes == 0))) {
    sl_http_respond_error(r, 400, "outcome: expected routed, unrouted, "
                                  "dropped or failed (comma separated)");
    return -1;
  }
  return 0;
}

static void start_tap(struct sl_admin *a, struct sl_http_request *r) {
  char topics[1024] = "*", num[64];
  struct tap_client *c;
  char *tok, *save = NULL;
  int rc;

  c = calloc(1, sizeof(*c));
  if (c == NULL) {
    sl_http_respond_error(r, 500, "out of memory");
    return;
  }
  c->a = a;
  c->r = r;
  c->sample = 1.0;
  sl_buf_init(&c->out);
  if (query_get(r->query, "topics", topics, sizeof(topics)) < 0 ||
      topics[0] == '\0') {
    sl_http_respond_error(r, 400, "topics: expected glob[,glob...]");
    goto fail;
  }
  rc = query_get(r->query, "limit", num, sizeof(num));
  if (rc != 0) {
    char *end;
    unsigned long long v = strtoull(num, &end, 10);
    if (rc < 0 || num[0] == '\0' || num[0] == '-' || *end || v == 0) {
      sl_http_respond_error(r, 400, "limit: expected a whole number above 0");
      goto fail;
    }
    c->limit = v;
  }
  rc = query_get(r->query, "sample", num, sizeof(num));
  if (rc != 0) {
    char *end;
    double v = strtod(num, &end);
    if (rc < 0 || num[0] == '\0' || *end || !(v > 0.0 && v <= 1.0)) {
      sl_http_respond_error(r, 400,
                            "sample: expected a share above 0 and up to 1");
      goto fail;
    }
    c->sample = v;
  }
  if (tap_filters(c, r) != 0)
    goto fail;
  c->patterns = strdup(topics);
  if (c->patterns == NULL) {
    sl_http_respond_error(r, 500, "out of memory");
    goto fail;
  }
  for (tok = strtok_r(c->patterns, ",", &save); tok && c->nglobs < MAX_GLOBS;
       tok = strtok_r(NULL, ",", &save))
    c->globs[c->nglobs++] = tok;
  if (c->nglobs == 0) {
    sl_http_respond_error(r, 400, "topics: expected glob[,glob...]");
    goto fail;
  }
  if (sl_http_stream_start(r, 200, c->text ? "text/plain; charset=utf-8"
                                           : "application/x-ndjson") != 0)
    goto fail;
  r->data = c;
  c->next = &a->clients;
  c->prev = a->clients.prev;
  a->clients.prev->next = c;
  a->clients.prev = c;
  a->stats.tap_clients++;
  a->stats.tap_clients_total++;
  a->w->tap = on_tap;
  a->w->tap_data = a;
  return;

fail:
  free(c->patterns);
  sl_buf_close(&c->out);
  free(c);
}

/* ---- endpoints --------------------------------------------------------- */

static int path_is(struct sl_str p, const char *lit) {
  size_t n = strlen(lit);
  return p.len == n && memcmp(p.p, lit, n) == 0;
}

/* "outputs":{name:"ok"|"failing",...} into b; counts the outputs that
 * readiness weighs (not a dead letter beside others) and the healthy ones. */
static void outputs_json(struct sl_worker *w, struct sl_buf *b, int *counted,
                         int *healthy) {
  const struct sl_config *cfg = w->cfg;
  int i, n = 0;
  sl_buf_append(b, "\"outputs\":{", 11);
  for (i = 0; i < w->noutputs; i++) {
    struct sl_output *o = &w->outputs[i];
    int ok;
    if (o->retiring || o->gone)
      continue; /* a reload removed or replaced it; it drains */
    ok = !o->stopped && (o->ops->cb_healthy == NULL || o->ops->cb_healthy(o));
    if (n++)
      sl_buf_putc(b, ',');
    sl_codec_json_str(b, o->cfg->name, strlen(o->cfg->name));
    sl_buf_printf(b, ":\"%s\"", ok ? "ok" : "failing");
    /* the dead letter is a side channel: it alone does not make us ready */
    if (i == cfg->dead_letter && w->noutputs > 1)
      continue;
    (*counted)++;
    *healthy += ok;
  }
  sl_buf_putc(b, '}');
}

/* Alive: the loop answers. Output health is a detail, never a failure. */
static void healthz(struct sl_admin *a, struct sl_http_request *r) {
  struct sl_buf b;
  int counted = 0, healthy = 0;
  sl_buf_init(&b);
  sl_buf_append(&b, "{\"status\":\"ok\",", 15);
  outputs_json(a->w, &b, &counted, &healthy);
  sl_buf_putc(&b, '}');
  sl_http_respond(r, 200, "application/json", b.data, b.len);
  sl_buf_close(&b);
}

/* Ready: listening with rules loaded. Failing outputs count only with
 * admin.ready_requires_outputs: a sidecar's probe must not take its
 * application out of service because an aggregator is down. */
static void readyz(struct sl_admin *a, struct sl_http_request *r) {
  struct sl_worker *w = a->w;
  const struct sl_config *cfg = w->cfg;
  struct sl_buf b, reasons;
  int i, nreasons = 0, counted = 0, healthy = 0;

  sl_buf_init(&b);
  sl_buf_init(&reasons);
#define REASON(...)                                           \
  do {                                                        \
    char msg_[300];                                           \
    snprintf(msg_, sizeof(msg_), __VA_ARGS__);                \
    if (nreasons++)                                           \
      sl_buf_putc(&reasons, ',');                             \
    sl_codec_json_str(&reasons, msg_, strlen(msg_));          \
  } while (0)
  if (w->stopping)
    REASON("stopping: inputs no longer accept events");
  if (w->rules == NULL ||
      (cfg->rules.dir && sl_rules_stats(w->rules)->version == 0))
    REASON("rules are not loaded");
  for (i = 0; i < w->ninputs; i++)
    if (!w->inputs[i].retiring && !w->inputs[i].gone && /* reload removed */
        (w->inputs[i].stopped || w->inputs[i].data == NULL))
      REASON("input %s is not listening", cfg->inputs[i].name);
  sl_buf_putc(&b, '{');
  outputs_json(w, &b, &counted, &healthy);
  if (cfg->admin.ready_requires_outputs && counted > 0 && healthy == 0)
    REASON("every output is failing");
#undef REASON
  sl_buf_printf(&b, ",\"ready\":%s,\"reasons\":[", nreasons ? "false" : "true");
  sl_buf_append(&b, reasons.data, reasons.len);
  sl_buf_append(&b, "]}", 2);
  sl_http_respond(r, nreasons ? 503 : 200, "application/json", b.data, b.len);
  sl_buf_close(&b);
  sl_buf_close(&reasons);
}

/* The raw JSON value of "error" inside "last_reload" of the status. */
static struct sl_str reload_error(const struct sl_buf *status) {
  struct sl_str v = {"null", 4};
  const char *s = (const char *)status->data, *end = s + status->len, *p;
  p = memmem(s, status->len, "\"last_reload\":", 14);
  if (p)
    p = memmem(p, (size_t)(end - p), "\"error\":", 8);
  if (p == NULL)
    return v;
  p += 8;
  if (*p == '"') {
    const char *q = p + 1;
    while (q < end && *q != '"')
      q += *q == '\\' ? 2 : 1;
    if (q < end) {
      v.p = p;
      v.len = (uint32_t)(q - p + 1);
    }
  }
  return v;
}

static void reload(struct sl_admin *a, struct sl_http_request *r) {
  struct sl_buf status, b;
  char err[1024];
  int rc;
  sl_tls_reload_all(); /* rotated certificates; a bad one keeps the old */
  rc = sl_worker_reload(a->w, "admin", err, sizeof(err));
  sl_buf_init(&status);
  sl_buf_init(&b);
  sl_rules_status_json(a->w->rules, &status);
  if (rc == 0) {
    sl_http_respond(r, 200, "application/json", status.data, status.len);
  } else {
    struct sl_str e = reload_error(&status);
    sl_buf_append(&b, "{\"error\":", 9);
    sl_buf_append(&b, e.p, e.len);
    sl_buf_append(&b, ",\"status\":", 10);
    sl_buf_append(&b, status.data, status.len);
    sl_buf_putc(&b, '}');
    sl_http_respond(r, 422, "application/json", b.data, b.len);
  }
  sl_buf_close(&status);
  sl_buf_close(&b);
}

static const struct {
  const char *path, *method;
} endpoints[] = {{"/healthz", "GET"}, {"/readyz", "GET"}, {"/metrics", "GET"},
                 {"/rules", "GET"},   {"/reload", "POST"}, {"/tap", "GET"}};

static void cb_headers(struct sl_http_request *r) {
  struct sl_admin *a = r->server->data;
  size_t i;
  for (i = 0; i < SL_ARRAY_SIZE(endpoints); i++)
    if (path_is(r->path, endpoints[i].path))
      break;
  r->quiet = i < 2; /* probes run every few seconds: no log lines */
  if (i == SL_ARRAY_SIZE(endpoints)) {
    sl_http_respond_error(r, 404,
                          "no such endpoint: /healthz, /readyz, /metrics, "
                          "/rules, /reload (POST) or /tap");
    return;
  }
  if (strcmp(r->method, endpoints[i].method) != 0) {
    sl_http_add_header(r, "Allow", endpoints[i].method);
    sl_http_respond_error(r, 405, "method %s not allowed: use %s", r->method,
                          endpoints[i].method);
    return;
  }
  /* probes need no token: a kubelet's httpGet probe carries no secret */
  if (a->token && i > 1 && !sl_http_bearer_ok(r, a->token, a->token_len)) {
    sl_http_add_header(r, "WWW-Authenticate", "Bearer realm=\"sluice-admin\"");
    sl_http_respond_error(r, 401, "missing or wrong bearer token");
  }
}

static void cb_request(struct sl_http_request *r) {
  struct sl_admin *a = r->server->data;
  struct sl_buf b;

  if (path_is(r->path, "/healthz")) {
    healthz(a, r);
  } else if (path_is(r->path, "/readyz")) {
    readyz(a, r);
  } else if (path_is(r->path, "/metrics")) {
    sl_buf_init(&b);
    if (sl_metric_render(a->w->metrics, &b) == 0)
      sl_http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8",
                      b.data, b.len);
    else
      sl_http_respond_error(r, 500, "out of memory");
    sl_buf_close(&b);
  } else if (path_is(r->path, "/rules")) {
    sl_buf_init(&b);
    sl_rules_status_json(a->w->rules, &b);
    sl_http_respond(r, 200, "application/json", b.data, b.len);
    sl_buf_close(&b);
  } else if (path_is(r->path, "/reload")) {
    reload(a, r);
  } else if (path_is(r->path, "/tap")) {
    start_tap(a, r);
  }
}

static void cb_done(struct sl_http_request *r) {
  if (r->data)
    tap_free(r->data);
  r->data = NULL;
}

static const struct sl_http_ops admin_ops = {
    .cb_headers = cb_headers,
    .cb_request = cb_request,
    .cb_done = cb_done,
};

/* ---- life -------------------------------------------------------------- */

struct sl_admin *sl_admin_new(struct sl_worker *w) {
  struct sl_admin *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return NULL;
  a->w = w;
  a->clients.next = a->clients.prev = &a->clients;
  a->rng = (uint64_t)sl_mono_ns() | 1;
  return a;
}

/* Is address ("host:port") on a loopback interface? */
static int loopback(const char *address) {
  char host[128];
  int port;
  if (sl_config_parse_hostport(address, host, sizeof(host), &port) != 0)
    return 0;
  return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

int sl_admin_start(struct sl_admin *a, char *err, size_t errlen) {
  const struct sl_admin_config *cfg = &a->w->cfg->admin;
  char why[256] = "";
  int rc;

  if (cfg->bearer_token_file) {
    a->token = sl_http_load_token(cfg->bearer_token_file, &a->token_len, why,
                                  sizeof(why));
    if (a->token == NULL) {
      snprintf(err, errlen, "admin: %s", why);
      return SL_EINVAL;
    }
  }
  uv_idle_init(&a->w->loop, &a->flush);
  a->flush_init = 1;
  a->srv.name = "admin";
  a->srv.limits.max_header_bytes = SL_HTTP_MAX_HEADER_BYTES;
  a->srv.limits.max_body_bytes = ADMIN_MAX_BODY;
  a->srv.limits.idle_ms = ADMIN_IDLE_MS;
  a->srv.limits.header_ms = 10000;
  a->srv.limits.body_ms = 10000;
  a->srv.limits.max_conns = a->w->cfg->admin.max_connections;
  a->srv.limits.fd_guard = 0; /* the fds inputs leave free are for us */
  a->srv.limits.displace_waiting = 1; /* probes get in past tricklers */
  if (cfg->tls.enabled &&
      (a->srv.tls = sl_tls_new(&cfg->tls, 1, cfg->listen, "admin", why,
                               sizeof(why))) == NULL) {
    snprintf(err, errlen, "admin.tls: %s", why);
    return SL_EINVAL;
  }
  a->started = 1;
  rc = sl_http_start(&a->srv, &a->w->loop, cfg->listen, &admin_ops, a, why,
                     sizeof(why));
  if (rc != 0) {
    snprintf(err, errlen, "admin.listen: %s", why);
    return rc;
  }
  a->metrics.stats = &a->stats;
  a->metrics.srv = &a->srv;
  a->metrics.started_ns = a->w->started_ns;
  if (sl_metrics_register(a->w->metrics, &a->metrics) != 0) {
    snprintf(err, errlen, "admin: out of memory");
    return SL_ENOMEM;
  }
  sl_log(SL_LOG_INFO, "admin listening", SL_S("listen", cfg->listen),
         SL_S("auth", a->token ? "bearer" : "none"), SL_END);
  if (a->token == NULL && !loopback(cfg->listen))
    sl_log(SL_LOG_WARN,
           "admin listens beyond loopback without a bearer token: anyone who "
           "reaches it can tap events and reload rules; set "
           "admin.bearer_token_file",
           SL_S("listen", cfg->listen), SL_END);
  return 0;
}

void sl_admin_stop(struct sl_admin *a) {
  if (a == NULL || a->stopped)
    return;
  a->stopped = 1;
  if (a->w->tap == on_tap) {
    a->w->tap = NULL;
    a->w->tap_data = NULL;
  }
  if (a->started)
    sl_http_stop(&a->srv); /* tap clients leave through cb_done */
  if (a->flush_init)
    uv_close((uv_handle_t *)&a->flush, NULL);
}

void sl_admin_free(struct sl_admin *a) {
  if (a == NULL)
    return;
  sl_metric_remove(a->w->metrics, &a->metrics);
  sl_metrics_close(&a->metrics);
  free(a->token);
  sl_tls_free(a->srv.tls);
  free(a);
}
