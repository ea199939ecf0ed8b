/* http.c - the HTTP/1.1 server; see http.h.
 * Each connection runs http_parser over the bytes its conn hands over and
 * pauses the parser at the end of a request head and of a request, so the
 * code here, not the parser's callbacks, decides what happens next. The
 * conn layer's own idle timer is off: a connection keeps one timer whose
 * meaning follows its phase (idle between requests, a fixed deadline for a
 * request head, idle between body reads, a short linger before closing). */
#include "http.h"
#include "tls.h"

#include <errno.h>
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec.h"

#define LINGER_MS 2000       /* after a refusal, read and drop at most this */
#define LINGER_QUIET_MS 250  /* ... or until the client is quiet this long */
#define MAX_BUFFERED (256u * 1024) /* unparsed input held while answering */
#define KEEP_BODY_CAP (64u * 1024) /* body buffer kept between requests */

enum phase {
  PH_IDLE = 0, /* between requests */
  PH_HEAD,     /* inside a request head */
  PH_BODY,     /* head read, body coming */
  PH_WAIT,     /* request read; the handler answers */
  PH_STREAM,   /* a streaming response runs; input is dropped */
  PH_CLOSING   /* the last response is out or going; input is dropped */
};

struct http_conn {
  struct sl_http_server *srv;
  struct sl_conn *conn; /* NULL once the conn is closing */
  http_parser parser;
  uv_timer_t timer;
  enum phase phase;
  struct sl_http_request req;
  uint32_t head_bytes;  /* head bytes consumed so far */
  uint64_t skipped;     /* body bytes dropped after an early answer */
  int in_data;          /* inside cb_data: do not resume the conn */
  int in_request;       /* between a head's start and cb_done */
  int head_done;        /* the parser paused at the end of a head */
  int message_done;     /* the parser paused at the end of a request */
  int responded;        /* the current request has its answer */
  int skip_body;        /* answered before the body: drop it */
  int keep_alive;       /* the client allows another request */
  int close_after;      /* close once the answer is written */
  int linger;           /* the client may still be sending */
  int lingering;        /* all written; dropping input until closed */
  uint64_t linger_end;  /* monotonic ns when lingering stops anyway */
  uint64_t body_end;    /* monotonic ns when the body must be in; 0: none */
  uint64_t charged;     /* body bytes counted in srv->pending */
  uint64_t body_seen_ns; /* monotonic, when body bytes last came */
  uint64_t waiting_ns;  /* monotonic, since when it waits for a request */
  int want_continue;    /* Expect: 100-continue */
  int body_too_big;
  int over_pending;     /* the body would pass limits.max_pending */
  int head_too_big;
  int too_many_headers;
  int no_memory;        /* the head or body could not be stored: 503 */
  int last_cb;          /* 1 after a header field piece, 2 after a value */
  int backlog_paused;   /* paused because the client does not read */
};

static const http_parser_settings settings;
static const struct sl_conn_ops conn_ops;

static void on_written(struct sl_conn *c, int status, void *arg);
static int shed_stalest_body(struct http_conn *hc);
static void finish_request(struct http_conn *hc);
static int respond(struct http_conn *hc, int status, const char *ctype,
                   const void *body, size_t len, int chunked);

/* ---- small helpers ----------------------------------------------------- */

const char *sl_http_status_text(int status) {
  const char *s = http_status_str((enum http_status)status);
  return s && s[0] != '<' ? s : "";
}

char *sl_http_load_token(const char *path, size_t *len, char *err,
                         size_t errlen) {
  struct sl_buf b;
  char chunk[4096];
  size_t n;
  FILE *f = fopen(path, "rb");

  if (f == NULL) {
    snprintf(err, errlen, "cannot read bearer_token_file %s: %s", path,
             strerror(errno));
    return NULL;
  }
  sl_buf_init(&b);
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len <= 65536)
    if (sl_buf_append(&b, chunk, n) != 0)
      break;
  if (ferror(f))
    b.len = 65537; /* a token cut short by an error is no token */
  fclose(f);
  while (b.len && (b.data[b.len - 1] == '\n' || b.data[b.len - 1] == '\r' ||
                   b.data[b.len - 1] == ' ' || b.data[b.len - 1] == '\t'))
    b.len--;
  if (b.len == 0 || b.len > 65536 || sl_buf_putc(&b, '\0') != 0) {
    snprintf(err, errlen, "bearer_token_file %s: %s", path,
             b.len == 0 ? "the file is empty" : "cannot read the token");
    sl_buf_close(&b);
    return NULL;
  }
  *len = b.len - 1;
  return (char *)b.data;
}

int sl_http_bearer_ok(const struct sl_http_request *r, const char *token,
                      size_t len) {
  struct sl_str h = sl_http_header(r, "authorization");
  unsigned diff;
  size_t i;

  if (h.p == NULL || h.len < 7 || strncasecmp(h.p, "Bearer ", 7) != 0)
    return 0;
  h.p += 7;
  h.len -= 7;
  while (h.len && *h.p == ' ') {
    h.p++;
    h.len--;
  }
  /* every byte of the token is looked at whatever the client sent */
  diff = h.len != len;
  for (i = 0; i < len; i++)
    diff |= (unsigned)((unsigned char)token[i] ^
                       (unsigned char)(i < h.len ? h.p[i] : 0));
  return diff == 0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

long sl_http_unescape(char *s, size_t n, int plus_is_space) {
  size_t i, o = 0;
  for (i = 0; i < n; i++) {
    if (s[i] == '%') {
      int hi, lo;
      if (i + 2 >= n || (hi = hexval(s[i + 1])) < 0 ||
          (lo = hexval(s[i + 2])) < 0)
        return -1;
      s[o++] = (char)(hi << 4 | lo);
      i += 2;
    } else if (s[i] == '+' && plus_is_space) {
      s[o++] = ' ';
    } else {
      s[o++] = s[i];
    }
  }
  return (long)o;
}

static void start_timer(struct http_conn *hc, uint32_t ms);

static void on_timer(uv_timer_t *t) {
  struct http_conn *hc = t->data;
  struct sl_conn *c = hc->conn;
  if (c == NULL)
    return;
  switch (hc->phase) {
  case PH_HEAD:
  case PH_BODY:
    /* a trickling or stalled client: answer 408 once, then close */
    hc->srv->stats.timeouts++;
    sl_listener_count_timeout(c);
    hc->close_after = 1;
    if (hc->responded ||
        respond(hc, 408, "application/json",
                "{\"error\":\"request not received in time\"}", 40, 0) != 0)
      sl_conn_close(c);
    return;
  case PH_IDLE:
    sl_listener_count_timeout(c);
    sl_conn_close(c);
    return;
  case PH_CLOSING:
    sl_conn_close(c);
    return;
  case PH_WAIT:
  case PH_STREAM:
    return; /* the wait is ours, not the client's */
  }
}

static void start_timer(struct http_conn *hc, uint32_t ms) {
  if (ms)
    uv_timer_start(&hc->timer, on_timer, ms, 0);
  else
    uv_timer_stop(&hc->timer);
}

/* While a body comes: the idle limit, or what is left of the body's
 * deadline when that is sooner. */
static void start_body_timer(struct http_conn *hc) {
  uint32_t ms = hc->srv->limits.idle_ms;
  if (hc->body_end) {
    uint64_t now = sl_mono_ns();
    uint64_t left = hc->body_end > now ? (hc->body_end - now) / 1000000u + 1 : 1;
    if (ms == 0 || left < ms)
      ms = (uint32_t)left;
  }
  start_timer(hc, ms);
}

static uint32_t header_ms(const struct sl_http_server *s) {
  return s->limits.header_ms ? s->limits.header_ms : s->limits.idle_ms;
}

static uint32_t max_header(const struct sl_http_server *s) {
  return s->limits.max_header_bytes ? s->limits.max_header_bytes
                                    : SL_HTTP_MAX_HEADER_BYTES;
}

/* ---- parser callbacks -------------------------------------------------- */

static int on_message_begin(http_parser *p) {
  struct http_conn *hc = p->data;
  struct sl_http_request *r = &hc->req;
  hc->phase = PH_HEAD;
  hc->in_request = 1;
  hc->responded = hc->skip_body = hc->want_continue = 0;
  hc->body_too_big = hc->head_too_big = hc->too_many_headers = 0;
  hc->over_pending = hc->no_memory = 0;
  hc->body_end = 0;
  hc->last_cb = 0;
  hc->skipped = 0;
  sl_buf_reset(&r->head);
  sl_buf_reset(&r->extra);
  sl_buf_reset(&r->body);
  r->url_len = 0;
  r->nheaders = 0;
  r->data = NULL;
  r->quiet = 0;
  r->method = "";
  r->path.p = r->query.p = NULL;
  r->path.len = r->query.len = 0;
  /* the whole head must arrive within this, however it trickles in */
  start_timer(hc, header_ms(hc->srv));
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  struct http_conn *hc = p->data;
  if (sl_buf_append(&hc->req.head, at, n) != 0)
    return hc->no_memory = 1;
  hc->req.url_len += (uint32_t)n;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  struct http_conn *hc = p->data;
  struct sl_http_request *r = &hc->req;
  if (hc->last_cb != 1) {
    if (r->nheaders == SL_HTTP_MAX_HEADERS) {
      hc->too_many_headers = 1;
      return 1;
    }
    r->hdr[r->nheaders].name_off = (uint32_t)r->head.len;
    r->hdr[r->nheaders].name_len = 0;
    r->hdr[r->nheaders].value_off = (uint32_t)r->head.len;
    r->hdr[r->nheaders].value_len = 0;
    r->nheaders++;
    hc->last_cb = 1;
  }
  if (sl_buf_append(&r->head, at, n) != 0)
    return hc->no_memory = 1;
  r->hdr[r->nheaders - 1].name_len += (uint32_t)n;
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  struct http_conn *hc = p->data;
  struct sl_http_request *r = &hc->req;
  if (r->nheaders == 0)
    return 1;
  if (hc->last_cb != 2) {
    r->hdr[r->nheaders - 1].value_off = (uint32_t)r->head.len;
    hc->last_cb = 2;
  }
  if (sl_buf_append(&r->head, at, n) != 0)
    return hc->no_memory = 1;
  r->hdr[r->nheaders - 1].value_len += (uint32_t)n;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  struct http_conn *hc = p->data;
  hc->head_done = 1;
  http_parser_pause(p, 1); /* cb_data takes it from here */
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  struct http_conn *hc = p->data;
  uint64_t max = hc->srv->limits.max_body_bytes;
  if (hc->skip_body) {
    hc->skipped += n;
    if (hc->skipped > max) { /* not worth reading: close instead */
      hc->close_after = 1;
      return 1;
    }
    return 0;
  }
  if (hc->req.body.len + n > max) {
    hc->body_too_big = 1;
    return 1;
  }
  if (hc->srv->limits.max_pending) {
    while (hc->srv->pending + n > hc->srv->limits.max_pending)
      if (shed_stalest_body(hc) != 0) {
        hc->over_pending = 1; /* many bodies at once: this one must wait */
        hc->srv->stats.shed_memory++;
        return 1;
      }
  }
  if (sl_buf_append(&hc->req.body, at, n) != 0)
    return hc->no_memory = 1;
  hc->body_seen_ns = sl_mono_ns();
  hc->charged += n;
  hc->srv->pending += n;
  return 0;
}

/* Bodies over max_pending: close the connection whose body has waited
 * longest for its next byte (a body still coming, not one the handler has),
 * so a few stalled uploads cannot refuse everyone else. Its share is
 * released now. Returns 0 when one was closed. */
static int shed_stalest_body(struct http_conn *hc) {
  struct sl_http_server *srv = hc->srv;
  struct http_conn *victim = NULL;
  struct sl_conn *c;
  uint64_t suppressed = 0;
  for (c = sl_listener_next(&srv->listener, NULL); c;
       c = sl_listener_next(&srv->listener, c)) {
    struct http_conn *x = sl_conn_proto(c);
    if (x != hc && x->phase == PH_BODY && x->charged &&
        !sl_conn_is_closing(c) &&
        (victim == NULL || x->body_seen_ns < victim->body_seen_ns))
      victim = x;
  }
  if (victim == NULL)
    return -1;
  sl_listener_shed(victim->conn);
  if (sl_log_allow(&srv->error_log, &suppressed))
    sl_log(SL_LOG_WARN,
           "request bodies over max_pending_bytes; closing the "
           "stalest upload",
           SL_S("server", srv->name ? srv->name : ""),
           SL_S("peer", sl_conn_peer(victim->conn)),
           SL_U("bytes", victim->charged), SL_U("suppressed", suppressed),
           SL_END);
  srv->pending -= victim->charged;
  victim->charged = 0;
  sl_conn_close(victim->conn);
  return 0;
}

static int on_message_complete(http_parser *p) {
  struct http_conn *hc = p->data;
  hc->message_done = 1;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- requests ---------------------------------------------------------- */

struct sl_str sl_http_header(const struct sl_http_request *r,
                             const char *name) {
  struct sl_str v = {NULL, 0};
  size_t n = strlen(name);
  int i;
  for (i = 0; i < r->nheaders; i++) {
    const char *k = (const char *)r->head.data + r->hdr[i].name_off;
    if (r->hdr[i].name_len == n && strncasecmp(k, name, n) == 0) {
      v.p = (const char *)r->head.data + r->hdr[i].value_off;
      v.len = r->hdr[i].value_len;
      /* optional white space around a value is not part of it */
      while (v.len && (v.p[v.len - 1] == ' ' || v.p[v.len - 1] == '\t'))
        v.len--;
      return v;
    }
  }
  return v;
}

int sl_http_add_header(struct sl_http_request *r, const char *name,
                       const char *value) {
  return sl_buf_printf(&r->extra, "%s: %s\r\n", name, value);
}

static int str_is(struct sl_str s, const char *lit) {
  size_t n = strlen(lit);
  return s.len == n && strncasecmp(s.p, lit, n) == 0;
}

/* The head is complete: check it and let the handler look at it. What
 * happens next follows from the phase it leaves (see cb_data). */
static void after_head(struct http_conn *hc) {
  struct sl_http_server *srv = hc->srv;
  struct sl_http_request *r = &hc->req;
  http_parser *p = &hc->parser;
  struct http_parser_url u;

  hc->phase = PH_BODY;
  srv->stats.requests++;
  r->method = http_method_str((enum http_method)p->method);
  r->http_minor = p->http_minor;
  hc->keep_alive = http_should_keep_alive(p) && !p->upgrade;
  hc->want_continue = str_is(sl_http_header(r, "expect"), "100-continue");
  http_parser_url_init(&u);
  if (http_parser_parse_url((const char *)r->head.data, r->url_len,
                            p->method == HTTP_CONNECT, &u) != 0) {
    hc->close_after = 1;
    respond(hc, 400, "application/json",
            "{\"error\":\"malformed request target\"}", 36, 0);
    return;
  }
  if (u.field_set & (1 << UF_PATH)) {
    r->path.p = (const char *)r->head.data + u.field_data[UF_PATH].off;
    r->path.len = u.field_data[UF_PATH].len;
  } else {
    r->path.p = (const char *)r->head.data;
    r->path.len = r->url_len;
  }
  if (u.field_set & (1 << UF_QUERY)) {
    r->query.p = (const char *)r->head.data + u.field_data[UF_QUERY].off;
    r->query.len = u.field_data[UF_QUERY].len;
  } else {
    r->query.p = "";
    r->query.len = 0;
  }
  if (srv->limits.body_ms)
    hc->body_end = sl_mono_ns() + srv->limits.body_ms * 1000000ull;
  start_body_timer(hc);
  if (srv->ops->cb_headers)
    srv->ops->cb_headers(r);
  if (hc->conn == NULL || sl_conn_is_closing(hc->conn) || hc->responded)
    return; /* refused: the body, if any, is skipped or never read */
  if ((p->flags & F_CONTENTLENGTH) &&
      p->content_length > srv->limits.max_body_bytes) {
    char msg[128];
    int n = snprintf(msg, sizeof(msg),
                     "{\"error\":\"body larger than max_body_bytes (%llu)\"}",
                     (unsigned long long)srv->limits.max_body_bytes);
    respond(hc, 413, "application/json", msg, (size_t)n, 0);
    return;
  }
  if (hc->want_continue) {
    struct sl_buf b;
    sl_buf_init(&b);
    if (sl_buf_append(&b, "HTTP/1.1 100 Continue\r\n\r\n", 25) != 0 ||
        sl_conn_write(hc->conn, &b, on_written, NULL) != 0)
      sl_buf_close(&b);
  }
}

/* The whole request is read: hand it over, unless it was refused early
 * (then its skipped body is behind us and it is over). */
static void after_message(struct http_conn *hc) {
  hc->phase = PH_WAIT;
  uv_timer_stop(&hc->timer);
  if (hc->parser.upgrade)
    hc->keep_alive = 0; /* what follows is not HTTP we speak */
  if (hc->responded)
    finish_request(hc);
  else
    hc->srv->ops->cb_request(&hc->req);
}

/* ---- ending a connection ----------------------------------------------- */

/* Everything is written: close now, or read and drop what the client still
 * sends for a while first, so a reset does not destroy our answer before
 * the client read it. */
static void closing_written(struct http_conn *hc) {
  struct sl_conn *c = hc->conn;
  if (hc->lingering)
    return;
  if (!hc->linger) {
    sl_conn_close(c);
    return;
  }
  hc->lingering = 1;
  hc->linger_end = sl_mono_ns() + LINGER_MS * 1000000ull;
  start_timer(hc, LINGER_QUIET_MS);
  if (sl_conn_is_paused(c) && !hc->in_data)
    sl_conn_resume(c);
}

/* No more requests on this connection: close it once its writes are out. */
static void end_conn(struct http_conn *hc, int linger) {
  hc->phase = PH_CLOSING;
  hc->linger = linger;
  uv_timer_stop(&hc->timer);
  if (hc->conn && !sl_conn_is_closing(hc->conn) &&
      sl_conn_pending_writes(hc->conn) == 0)
    closing_written(hc);
}

/* The request is over for the handler. */
static void finish_request(struct http_conn *hc) {
  struct sl_http_request *r = &hc->req;
  if (!hc->in_request)
    return;
  hc->in_request = 0;
  hc->srv->pending -= hc->charged; /* the body is the handler's no more */
  hc->charged = 0;
  if (hc->srv->ops->cb_done)
    hc->srv->ops->cb_done(r);
  r->data = NULL;
  if (r->body.cap > KEEP_BODY_CAP)
    sl_buf_close(&r->body); /* a large body's memory is not kept around */
  hc->head_bytes = 0;
  if (hc->conn == NULL || hc->phase == PH_CLOSING)
    return;
  if (hc->close_after || hc->srv->draining || hc->srv->stopping) {
    end_conn(hc, 0); /* the whole request was read: nothing to drop */
  } else if (hc->phase == PH_WAIT) {
    hc->phase = PH_IDLE;
    hc->waiting_ns = sl_mono_ns();
    start_timer(hc, hc->srv->limits.idle_ms);
  }
}

/* ---- responses --------------------------------------------------------- */

static void on_written(struct sl_conn *c, int status, void *arg) {
  struct http_conn *hc = sl_conn_proto(c);
  (void)arg;
  if (sl_conn_is_closing(c) || hc == NULL)
    return;
  if (status != 0) {
    sl_conn_close(c); /* the client is gone */
    return;
  }
  if (hc->phase == PH_CLOSING && sl_conn_pending_writes(c) == 0) {
    closing_written(hc);
    return;
  }
  if (hc->backlog_paused &&
      sl_conn_write_queue_size(c) < SL_HTTP_MAX_BACKLOG / 2) {
    hc->backlog_paused = 0;
    sl_conn_resume(c);
  }
}

static void put_date(struct sl_buf *b) {
  char stamp[64];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(stamp, sizeof(stamp), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  sl_buf_append(b, stamp, strlen(stamp));
}

static void log_error(struct http_conn *hc, int status, const char *ctype,
                      const void *body, size_t len) {
  struct sl_http_server *srv = hc->srv;
  struct sl_http_request *r = &hc->req;
  uint64_t suppressed = 0;
  char json[600];
  if (!sl_log_allow(&srv->error_log, &suppressed))
    return;
  if (ctype && strcmp(ctype, "application/json") == 0 && len > 0 &&
      len < sizeof(json)) {
    memcpy(json, body, len);
    json[len] = '\0';
  } else {
    snprintf(json, sizeof(json), "null");
  }
  sl_log(SL_LOG_WARN, "http request refused",
         SL_S("server", srv->name ? srv->name : ""),
         SL_S("peer", hc->conn ? sl_conn_peer(hc->conn) : ""),
         SL_S("method", r->method),
         SL_N("path", r->path.p ? r->path.p : "", r->path.len),
         SL_I("status", status), SL_J("response", json),
         SL_U("suppressed", suppressed), SL_END);
}

static int respond(struct http_conn *hc, int status, const char *ctype,
                   const void *body, size_t len, int chunked) {
  struct sl_http_server *srv = hc->srv;
  struct sl_http_request *r = &hc->req;
  struct sl_conn *c = hc->conn;
  int complete = hc->phase == PH_WAIT, rc;
  struct sl_buf b;

  if (hc->responded)
    return SL_EINVAL;
  if (c == NULL || sl_conn_is_closing(c))
    return SL_EIO;
  if (!complete && !chunked) {
    /* answered before the body is in: a small body is read and dropped;
     * a client that waits for 100-continue, a body over the limit or a
     * broken head ends the connection */
    hc->skip_body = 1;
    if (hc->phase != PH_BODY || hc->want_continue || status == 413 ||
        ((hc->parser.flags & F_CONTENTLENGTH) &&
         hc->parser.content_length > srv->limits.max_body_bytes))
      hc->close_after = 1;
  }
  if (!hc->keep_alive || srv->draining || srv->stopping || chunked)
    hc->close_after = 1;
  sl_buf_init(&b);
  rc = sl_buf_printf(&b, "HTTP/1.1 %d %s\r\n", status,
                     sl_http_status_text(status));
  put_date(&b);
  if (rc == 0 && ctype)
    rc = sl_buf_printf(&b, "Content-Type: %s\r\n", ctype);
  if (rc == 0 && chunked)
    rc = sl_buf_printf(&b, "Transfer-Encoding: chunked\r\n");
  else if (rc == 0)
    rc = sl_buf_printf(&b, "Content-Length: %zu\r\n", len);
  if (rc == 0 && hc->close_after)
    rc = sl_buf_printf(&b, "Connection: close\r\n");
  else if (rc == 0 && r->http_minor == 0)
    rc = sl_buf_printf(&b, "Connection: keep-alive\r\n");
  if (rc == 0 && r->extra.len)
    rc = sl_buf_append(&b, r->extra.data, r->extra.len);
  if (rc == 0)
    rc = sl_buf_append(&b, "\r\n", 2);
  if (rc == 0 && len)
    rc = sl_buf_append(&b, body, len);
  if (rc == 0 && (rc = sl_conn_write(c, &b, on_written, NULL)) != 0)
    rc = SL_EIO;
  sl_buf_close(&b);
  if (rc != 0) {
    sl_conn_close(c);
    return rc;
  }
  hc->responded = 1;
  if (status >= 100 && status < 600)
    srv->stats.responses[status]++;
  if (status >= 400 && !hc->req.quiet)
    log_error(hc, status, ctype, body, len);
  if (chunked) {
    hc->phase = PH_STREAM;
    uv_timer_stop(&hc->timer);
    if (sl_conn_is_paused(c) && !hc->in_data)
      sl_conn_resume(c); /* read on, to notice the client leaving */
    return 0;
  }
  if (complete) {
    finish_request(hc);
    if (hc->phase == PH_IDLE && hc->conn && sl_conn_is_paused(hc->conn) &&
        !hc->in_data)
      sl_conn_resume(hc->conn); /* read the next request */
  } else if (hc->close_after) {
    end_conn(hc, status != 408); /* cb_done runs when it closes */
  }
  return 0;
}

int sl_http_respond(struct sl_http_request *r, int status,
                    const char *content_type, const void *body, size_t len) {
  struct http_conn *hc = container_of(r, struct http_conn, req);
  return respond(hc, status, content_type, body, len, 0);
}

int sl_http_respond_error(struct sl_http_request *r, int status,
                          const char *fmt, ...) {
  struct sl_buf b;
  char msg[512];
  va_list ap;
  int rc;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sl_buf_init(&b);
  rc = sl_buf_append(&b, "{\"error\":", 9);
  if (rc == 0)
    rc = sl_codec_json_str(&b, msg, strlen(msg));
  if (rc == 0)
    rc = sl_buf_putc(&b, '}');
  if (rc == 0)
    rc = sl_http_respond(r, status, "application/json", b.data, b.len);
  sl_buf_close(&b);
  return rc;
}

int sl_http_stream_start(struct sl_http_request *r, int status,
                         const char *content_type) {
  struct http_conn *hc = container_of(r, struct http_conn, req);
  if (hc->phase != PH_WAIT)
    return SL_EINVAL;
  return respond(hc, status, content_type, NULL, 0, 1);
}

int sl_http_stream_write(struct sl_http_request *r, const void *p, size_t n) {
  struct http_conn *hc = container_of(r, struct http_conn, req);
  struct sl_buf b;
  int rc;
  if (hc->phase != PH_STREAM || hc->conn == NULL ||
      sl_conn_is_closing(hc->conn))
    return SL_EIO;
  if (n == 0)
    return 0; /* an empty chunk would end the stream */
  sl_buf_init(&b);
  rc = sl_buf_printf(&b, "%zx\r\n", n);
  if (rc == 0)
    rc = sl_buf_append(&b, p, n);
  if (rc == 0)
    rc = sl_buf_append(&b, "\r\n", 2);
  if (rc == 0 && (rc = sl_conn_write(hc->conn, &b, on_written, NULL)) != 0)
    rc = SL_EIO;
  sl_buf_close(&b);
  return rc;
}

int sl_http_stream_end(struct sl_http_request *r) {
  struct http_conn *hc = container_of(r, struct http_conn, req);
  struct sl_buf b;
  if (hc->phase != PH_STREAM || hc->conn == NULL ||
      sl_conn_is_closing(hc->conn))
    return SL_EIO;
  sl_buf_init(&b);
  if (sl_buf_append(&b, "0\r\n\r\n", 5) != 0 ||
      sl_conn_write(hc->conn, &b, on_written, NULL) != 0) {
    sl_buf_close(&b);
    sl_conn_close(hc->conn);
    return SL_EIO;
  }
  end_conn(hc, 0);
  return 0;
}

size_t sl_http_pending(const struct sl_http_request *r) {
  return r->conn && !sl_conn_is_closing(r->conn)
             ? sl_conn_write_queue_size(r->conn)
             : 0;
}

/* ---- connections ------------------------------------------------------- */

/* The parser stopped on an error: answer it and end the connection. */
static void parse_failed(struct http_conn *hc) {
  enum http_errno e = HTTP_PARSER_ERRNO(&hc->parser);
  char msg[200];
  int n, status = 400;

  hc->close_after = 1;
  if (hc->responded) { /* a skipped body went wrong or ran too long */
    if (hc->phase == PH_BODY && hc->conn)
      sl_conn_close(hc->conn);
    return;
  }
  if (hc->over_pending) {
    status = 503;
    sl_http_add_header(&hc->req, "Retry-After", "1");
    n = snprintf(msg, sizeof(msg),
                 "{\"error\":\"too many request bodies in progress; "
                 "retry\"}");
  } else if (hc->no_memory) {
    /* a request that is fine, refused for want of memory: the client must
     * send it again, not drop it as a 400 would tell it to */
    status = 503;
    sl_http_add_header(&hc->req, "Retry-After", "1");
    n = snprintf(msg, sizeof(msg), "{\"error\":\"out of memory; retry\"}");
  } else if (hc->body_too_big) {
    status = 413;
    n = snprintf(msg, sizeof(msg),
                 "{\"error\":\"body larger than max_body_bytes (%llu)\"}",
                 (unsigned long long)hc->srv->limits.max_body_bytes);
  } else if (hc->too_many_headers) {
    status = 431;
    n = snprintf(msg, sizeof(msg),
                 "{\"error\":\"more than %d header fields\"}",
                 SL_HTTP_MAX_HEADERS);
  } else if (hc->head_too_big || e == HPE_HEADER_OVERFLOW) {
    status = 431;
    n = snprintf(msg, sizeof(msg),
                 "{\"error\":\"request head larger than %u bytes\"}",
                 max_header(hc->srv));
  } else {
    n = snprintf(msg, sizeof(msg), "{\"error\":\"bad request: %s\"}",
                 http_errno_description(e));
  }
  if (hc->phase == PH_IDLE)
    hc->phase = PH_HEAD;
  respond(hc, status, "application/json", msg, (size_t)n, 0);
}

static size_t cb_data(struct sl_conn *c, const uint8_t *data, size_t len) {
  struct http_conn *hc = sl_conn_proto(c);
  struct sl_http_server *srv = hc->srv;
  size_t pos = 0;

  hc->in_data = 1;
  if (hc->phase == PH_BODY) {
    start_body_timer(hc); /* the body moves: not idle */
  } else if (hc->lingering) {
    uint64_t now = sl_mono_ns();
    if (now >= hc->linger_end)
      start_timer(hc, 1);
    else if (hc->linger_end - now < LINGER_QUIET_MS * 1000000ull)
      start_timer(hc, (uint32_t)((hc->linger_end - now) / 1000000u) + 1);
    else
      start_timer(hc, LINGER_QUIET_MS);
  }
  while (pos < len && !sl_conn_is_closing(c)) {
    size_t feed = len - pos, n;
    int in_head = hc->phase == PH_IDLE || hc->phase == PH_HEAD;
    enum http_errno e;

    if (hc->phase == PH_STREAM || hc->phase == PH_CLOSING) {
      pos = len; /* nothing more is read as requests */
      break;
    }
    if (hc->phase == PH_WAIT)
      break;
    if (sl_conn_write_queue_size(c) > SL_HTTP_MAX_BACKLOG) {
      /* the client sends requests but does not read the answers */
      hc->backlog_paused = 1;
      sl_conn_pause(c);
      break;
    }
    if (in_head && feed > max_header(srv) + 1 - hc->head_bytes)
      feed = max_header(srv) + 1 - hc->head_bytes;
    n = http_parser_execute(&hc->parser, &settings, (const char *)data + pos,
                            feed);
    pos += n;
    if (in_head)
      hc->head_bytes += (uint32_t)n;
    e = HTTP_PARSER_ERRNO(&hc->parser);
    if (e == HPE_PAUSED) {
      http_parser_pause(&hc->parser, 0);
      if (hc->head_done) {
        hc->head_done = 0;
        if (hc->head_bytes > max_header(srv)) {
          hc->head_too_big = 1;
          parse_failed(hc);
          break;
        }
        after_head(hc);
      }
      if (hc->message_done) {
        hc->message_done = 0;
        after_message(hc);
      }
      continue; /* the phase says what comes next */
    }
    if (e != HPE_OK) {
      parse_failed(hc);
      break;
    }
    if (in_head && hc->head_bytes > max_header(srv)) {
      hc->head_too_big = 1;
      parse_failed(hc);
      break;
    }
    if (n < feed)
      break; /* cannot happen without an error; do not spin */
  }
  hc->in_data = 0;
  if (sl_conn_is_closing(c))
    return pos;
  if (hc->phase == PH_WAIT && !hc->responded)
    sl_conn_pause(c); /* the handler answers later; later requests wait */
  else if (hc->phase == PH_CLOSING || hc->phase == PH_STREAM)
    pos = len;
  return pos;
}

static void cb_eof(struct sl_conn *c, int status) {
  struct http_conn *hc = sl_conn_proto(c);
  if (status != 0 && status != UV_ECONNRESET && status != UV_ETIMEDOUT)
    sl_log(SL_LOG_DEBUG, "http connection error",
           SL_S("server", hc->srv->name ? hc->srv->name : ""),
           SL_S("peer", sl_conn_peer(c)), SL_S("error", uv_strerror(status)),
           SL_END);
}

static void maybe_stopped(struct sl_http_server *s) {
  if (s->stopping && !s->stopped && s->live == 0 && s->listener_closed) {
    s->stopped = 1;
    if (s->on_stopped)
      s->on_stopped(s);
  }
}

static void on_timer_closed(uv_handle_t *h) {
  struct http_conn *hc = h->data;
  struct sl_http_server *srv = hc->srv;
  sl_buf_close(&hc->req.head);
  sl_buf_close(&hc->req.extra);
  sl_buf_close(&hc->req.body);
  free(hc);
  srv->live--;
  maybe_stopped(srv);
}

static void cb_close(struct sl_conn *c) {
  struct http_conn *hc = sl_conn_proto(c);
  hc->conn = NULL;
  hc->req.conn = NULL;
  finish_request(hc); /* the handler lets go of a request cut short */
  uv_close((uv_handle_t *)&hc->timer, on_timer_closed);
}

static const struct sl_conn_ops conn_ops = {
    .cb_data = cb_data,
    .cb_eof = cb_eof,
    .cb_close = cb_close,
};

static int on_accept(struct sl_listener *l, struct sl_conn *c) {
  struct sl_http_server *s = l->data;
  struct http_conn *hc;

  if (s->draining || s->stopping)
    return SL_EAGAIN;
  hc = calloc(1, sizeof(*hc));
  if (hc == NULL)
    return SL_ENOMEM;
  hc->srv = s;
  hc->conn = c;
  hc->req.server = s;
  hc->req.conn = c;
  hc->req.method = "";
  sl_buf_init(&hc->req.head);
  sl_buf_init(&hc->req.extra);
  sl_buf_init(&hc->req.body);
  http_parser_init(&hc->parser, HTTP_REQUEST);
  hc->parser.data = hc;
  uv_timer_init(s->loop, &hc->timer);
  hc->timer.data = hc;
  sl_conn_set_ops(c, &conn_ops, hc);
  s->live++;
  s->stats.connections_total++;
  hc->waiting_ns = sl_mono_ns();
  start_timer(hc, s->limits.idle_ms);
  return 0;
}

/* sl_listener.displaceable: c waits on its client for a whole request
 * (between requests, or its head or body still coming, nothing answered),
 * or was answered already (the answer written: displace_waiting checks)
 * and only drops what the client still sends, lingering or reading a
 * body answered early: closing it loses nothing the client was told was
 * taken. Answered ones go first: clients that each got a refusal (a bad
 * request, a 404 before a small body) and then sent a byte now and then
 * held every slot, for up to body_ms at a time, and probes got 503. */
static int displaceable(const struct sl_conn *c, uint64_t *since_ns) {
  const struct http_conn *hc = sl_conn_proto(c);
  if (hc == NULL)
    return 0;
  if (hc->lingering ||
      (hc->responded && (hc->phase == PH_HEAD || hc->phase == PH_BODY))) {
    *since_ns = 0;
    return 1;
  }
  if (hc->phase > PH_BODY)
    return 0;
  *since_ns = hc->waiting_ns;
  return 1;
}

/* ---- the server -------------------------------------------------------- */

/* Sent by the connection layer to a connection over max_conns. */
static const char refusal_503[] =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json\r\n"
    "Retry-After: 1\r\n"
    "Connection: close\r\n"
    "Content-Length: 32\r\n\r\n"
    "{\"error\":\"too many connections\"}";

static void on_listener_closed(struct sl_listener *l) {
  struct sl_http_server *s = l->data;
  s->listener_closed = 1;
  maybe_stopped(s);
}

int sl_http_start(struct sl_http_server *s, uv_loop_t *loop,
                  const char *address, const struct sl_http_ops *ops,
                  void *data, char *err, size_t errlen) {
  struct sl_endpoint ep;
  int rc;
  s->ops = ops;
  s->data = data;
  s->loop = loop;
  s->live = 0;
  s->draining = s->stopping = s->listener_closed = s->stopped = 0;
  memset(&s->stats, 0, sizeof(s->stats));
  sl_log_limiter_init(&s->error_log, 10000, 20);
  s->pending = 0;
  s->listener.idle_ms = 0; /* timing is ours: see on_timer */
  s->listener.partial_ms = 0;
  s->listener.max_pending = 0; /* bodies are bounded here, not there */
  s->listener.max_conns = s->limits.max_conns;
  s->listener.fd_guard = s->limits.fd_guard;
  s->listener.displaceable = s->limits.displace_waiting ? displaceable : NULL;
  s->listener.refusal = refusal_503;
  s->listener.refusal_len = sizeof(refusal_503) - 1;
  s->listener.name = s->name;
  s->listener.max_buffered = MAX_BUFFERED;
  s->listener.on_closed = on_listener_closed;
  rc = sl_endpoint_init(&ep, SL_ENDPOINT_TCP, address, NULL, 0);
  if (rc == 0)
    rc = sl_endpoint_set_tls(&ep, s->tls);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", address, uv_strerror(rc));
    s->listener_closed = 1; /* it never opened */
    return rc;
  }
  return sl_listener_start(&s->listener, loop, &ep, on_accept, s, err, errlen);
}

void sl_http_drain(struct sl_http_server *s) {
  struct sl_conn *c, *next;
  if (s->draining || s->stopping)
    return;
  s->draining = 1;
  sl_listener_stop(&s->listener);
  for (c = sl_listener_next(&s->listener, NULL); c; c = next) {
    struct http_conn *hc = sl_conn_proto(c);
    next = sl_listener_next(&s->listener, c);
    /* a request that has not shown its whole head is not ours yet */
    if (hc->phase == PH_IDLE || hc->phase == PH_HEAD)
      sl_conn_close(c);
    else
      hc->close_after = 1;
  }
}

void sl_http_stop(struct sl_http_server *s) {
  if (s->stopping)
    return;
  s->stopping = 1;
  sl_listener_stop(&s->listener); /* on_listener_closed follows */
  sl_listener_close_conns(&s->listener);
  maybe_stopped(s);
}

uint32_t sl_http_busy(const struct sl_http_server *s) {
  const struct sl_conn *c;
  uint32_t n = 0;
  for (c = sl_listener_next(&s->listener, NULL); c;
       c = sl_listener_next(&s->listener, c)) {
    const struct http_conn *hc = sl_conn_proto(c);
    if (hc->phase == PH_BODY || hc->phase == PH_WAIT)
      n++;
  }
  return n;
}
