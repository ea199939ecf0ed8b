/* http.c - the http output: POSTs batches of events to a URL (webhooks,
 * collectors) with libcurl's multi interface driven by the worker's libuv
 * loop (a uv_poll per socket curl names, one uv_timer for its timeouts),
 * so nothing blocks and connections are kept alive and reused. The URL may
 * be a template of the event ({topic}, {key}, {headers.x}): a batch becomes
 * one request per distinct URL, sent in parallel. 2xx delivers; 429 and 503
 * retry after the server's Retry-After; other 4xx refuse (the dead letter,
 * with the status and the start of the answer as headers); 5xx and network
 * errors retry with the output's policy. Owns its multi handle, requests
 * and bodies. */
#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "plugins.h"
#include "tls.h"
#include "utf8.h"

#define MAX_URLS 64           /* distinct URLs (requests) per batch */
#define BODY_KEPT 256         /* bytes of an answer kept for the dead letter */
#define BODY_MAX (1u << 20)   /* an answer longer than this is cut off */

enum format { F_NDJSON, F_JSON_ARRAY, F_MSGPACK, F_JSON };

struct request {
  struct http_out *h;
  CURL *easy;
  struct curl_slist *headers; /* the output's, plus Content-Type/-Encoding */
  struct sl_buf url;
  struct sl_buf body;
  uint32_t nevents;
  uint8_t answer[BODY_KEPT + 4];
  size_t answer_len;         /* kept bytes of the answer */
  size_t answer_total;       /* all bytes of the answer so far */
  uint32_t retry_after_ms;   /* from a Retry-After header; 0: none */
  int has_retry_after;
  int done;                  /* finished: result and status are set */
  CURLcode result;
  long status;
  char error[CURL_ERROR_SIZE];
};

struct http_out {
  struct sl_output *o;
  CURLM *multi;
  uv_timer_t timer;
  int open_handles;          /* the timer and poll handles not yet closed */
  struct sock *socks;        /* polls open */
  int closing;
  enum format format;
  int payload_only;          /* body = "payload" */
  int gzip;
  const char *url;           /* the template */
  int templated;
  struct curl_slist *headers; /* static headers and auth */
  char *userpwd;             /* basic auth "user:password"; NULL: none */
  uint32_t timeout_ms;
  struct request *reqs[MAX_URLS];
  int nreqs;
  int pending;               /* requests of the batch not finished */
  uint16_t *group;           /* request of each event of the batch */
  uint32_t group_cap;
  uint32_t batch_n;
  uint32_t isolate;          /* send this many events one per request: a
                                batch was refused and one of them is bad */
  int healthy;               /* the last request's outcome */
};

/* One socket curl watches: its uv_poll. */
struct sock {
  struct http_out *h;
  struct sock *next;         /* h->socks */
  uv_poll_t poll;
  curl_socket_t fd;
};

static void finish_batch(struct http_out *h);
static void on_sock_closed(uv_handle_t *hd);

/* ---- the loop: curl's sockets and timer on libuv ------------------------ */

static void check_done(struct http_out *h) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->multi, &left))) {
    struct request *r = NULL;
    if (m->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    if (r == NULL || r->done)
      continue;
    r->done = 1;
    r->result = m->data.result;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    h->pending--;
  }
  if (h->nreqs && h->pending == 0 && !h->closing)
    finish_batch(h);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  struct sock *s = p->data;
  struct http_out *h = s->h;
  int flags = 0, running;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  check_done(h);
}

static void on_timer(uv_timer_t *t) {
  struct http_out *h = t->data;
  int running;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(h);
}

/* The last handle closed after cb_stop: h goes. */
static void stopped(struct http_out *h) {
  struct sl_output *o = h->o;
  free(h->group);
  free(h);
  o->data = NULL;
  curl_global_cleanup();
  sl_output_stopped(o);
}

static void sock_close(struct sock *s) {
  struct sock **p;
  for (p = &s->h->socks; *p && *p != s; p = &(*p)->next)
    ;
  if (*p)
    *p = s->next;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static void on_sock_closed(uv_handle_t *hd) {
  struct sock *s = hd->data;
  struct http_out *h = s->h;
  free(s);
  if (--h->open_handles == 0 && h->closing)
    stopped(h);
}

/* CURLMOPT_SOCKETFUNCTION: watch fd for what curl wants, or stop. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  struct http_out *h = userp;
  struct sock *s = socketp;
  int events = 0;
  (void)e;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      curl_multi_assign(h->multi, fd, NULL);
      sock_close(s);
    }
    return 0;
  }
  if (s == NULL) {
    if ((s = calloc(1, sizeof(*s))) == NULL)
      return -1;
    s->h = h;
    s->fd = fd;
    if (uv_poll_init_socket(&h->o->w->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    s->next = h->socks;
    h->socks = s;
    h->open_handles++;
    curl_multi_assign(h->multi, fd, s);
  }
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
    events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
    events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: run curl's timeouts after ms (-1: none). */
static int on_curl_timer(CURLM *m, long ms, void *userp) {
  struct http_out *h = userp;
  (void)m;
  if (h->closing)
    return 0;
  if (ms < 0)
    uv_timer_stop(&h->timer);
  else /* curl wants no socket_action from inside this callback */
    uv_timer_start(&h->timer, on_timer, (uint64_t)ms, 0);
  return 0;
}

/* ---- the URL template --------------------------------------------------- */

static int put_encoded(struct sl_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i;
  int rc = 0;
  for (i = 0; rc == 0 && i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
      rc = sl_buf_putc(b, ch);
    } else {
      char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
      rc = sl_buf_append(b, e, 3);
    }
  }
  return rc;
}

/* The value of field (topic, key, id, headers.x) of ev; empty when it is
 * missing or not a string. Returns 0, or SL_EINVAL for an unknown field. */
static int field_of(const struct sl_event *ev, const char *f, size_t n,
                    struct sl_str *out) {
  out->p = "";
  out->len = 0;
  if (n == 5 && memcmp(f, "topic", 5) == 0) {
    if (ev)
      *out = sl_event_topic(ev);
  } else if (n == 3 && memcmp(f, "key", 3) == 0) {
    if (ev && ev->key_off)
      *out = sl_event_key(ev);
  } else if (n == 2 && memcmp(f, "id", 2) == 0) {
    if (ev)
      *out = sl_event_id(ev);
  } else if (n > 8 && memcmp(f, "headers.", 8) == 0) {
    const uint8_t *v;
    size_t vlen;
    if (ev && ev->headers_len &&
        sl_codec_map_find(ev->data + ev->headers_off, ev->headers_len, f + 8,
                          n - 8, &v, &vlen) == 0 &&
        sl_codec_read_strbin(v, vlen, out, NULL) != 0) {
      out->p = "";
      out->len = 0;
    }
  } else {
    return SL_EINVAL;
  }
  if (out->p == NULL)
    out->p = "";
  return 0;
}

/* The URL of ev (NULL: only check the template) into b. Returns 0,
 * SL_EINVAL (an unknown or unclosed {field}, named in b) or SL_ENOMEM. */
static int render_url(const char *tpl, const struct sl_event *ev,
                      struct sl_buf *b) {
  const char *p = tpl, *open, *close;
  sl_buf_reset(b);
  while ((open = strchr(p, '{')) != NULL) {
    struct sl_str v;
    if (sl_buf_append(b, p, (size_t)(open - p)) != 0)
      return SL_ENOMEM;
    close = strchr(open, '}');
    if (close == NULL ||
        field_of(ev, open + 1, (size_t)(close - open - 1), &v) != 0) {
      sl_buf_reset(b);
      sl_buf_printf(b, "%.*s", close ? (int)(close - open + 1) : 32, open);
      return SL_EINVAL;
    }
    if (put_encoded(b, v.p, v.len) != 0)
      return SL_ENOMEM;
    p = close + 1;
  }
  if (sl_buf_append(b, p, strlen(p) + 1) != 0) /* with its NUL */
    return SL_ENOMEM;
  return 0;
}

/* ---- requests ----------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  struct request *r = userp;
  size_t n = size * nmemb, keep = sizeof(r->answer) - r->answer_len;
  if (keep > n)
    keep = n;
  memcpy(r->answer + r->answer_len, data, keep);
  r->answer_len += keep;
  r->answer_total += n;
  /* the rest is thrown away; a huge answer is cut off (its status stands) */
  return r->answer_total > BODY_MAX ? 0 : n;
}

/* Retry-After: seconds, or an HTTP date. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *userp) {
  struct request *r = userp;
  size_t n = size * nmemb;
  char v[80];
  if (n > 12 && n < 12 + sizeof(v) && strncasecmp(data, "Retry-After:", 12) == 0) {
    char *s = v, *end;
    long long secs;
    memcpy(v, data + 12, n - 12);
    v[n - 12] = '\0';
    while (*s == ' ' || *s == '\t')
      s++;
    s[strcspn(s, "\r\n")] = '\0';
    secs = strtoll(s, &end, 10);
    if (end == s || *end) { /* not a number: a date */
      time_t t = curl_getdate(s, NULL);
      secs = t < 0 ? -1 : (long long)(t - time(NULL));
      if (t >= 0 && secs < 0)
        secs = 0;
    }
    if (secs >= 0) {
      r->has_retry_after = 1;
      r->retry_after_ms = secs > 86400 ? 86400000u : (uint32_t)secs * 1000u;
    }
  }
  return n;
}

static void request_free(struct request *r) {
  if (r == NULL)
    return;
  if (r->easy) {
    curl_multi_remove_handle(r->h->multi, r->easy);
    curl_easy_cleanup(r->easy);
  }
  curl_slist_free_all(r->headers);
  sl_buf_close(&r->url);
  sl_buf_close(&r->body);
  free(r);
}

static void free_requests(struct http_out *h) {
  int i;
  for (i = 0; i < h->nreqs; i++)
    request_free(h->reqs[i]);
  h->nreqs = 0;
  h->pending = 0;
}

/* gzip body in place. 0 or SL_ENOMEM / SL_EIO. */
static int gzip_body(struct sl_buf *body) {
  struct sl_buf out;
  z_stream z;
  int rc;
  memset(&z, 0, sizeof(z));
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK)
    return SL_ENOMEM;
  sl_buf_init(&out);
  if (sl_buf_reserve(&out, deflateBound(&z, body->len)) != 0) {
    deflateEnd(&z);
    return SL_ENOMEM;
  }
  z.next_in = body->data;
  z.avail_in = (uInt)body->len;
  z.next_out = out.data;
  z.avail_out = (uInt)out.cap;
  rc = deflate(&z, Z_FINISH);
  out.len = z.total_out;
  deflateEnd(&z);
  if (rc != Z_STREAM_END) {
    sl_buf_close(&out);
    return SL_EIO;
  }
  sl_buf_close(body);
  *body = out;
  return 0;
}

static int slist_add(struct curl_slist **l, const char *line) {
  struct curl_slist *n = curl_slist_append(*l, line);
  if (n == NULL)
    return SL_ENOMEM;
  *l = n;
  return 0;
}

static const char *content_type(enum format f) {
  switch (f) {
  case F_NDJSON: return "Content-Type: application/x-ndjson";
  case F_MSGPACK: return "Content-Type: application/msgpack";
  default: return "Content-Type: application/json";
  }
}

/* The easy handle for r (its URL and body complete), added to the multi
 * handle. 0 or a negative code. */
static int request_start(struct http_out *h, struct request *r) {
  const struct sl_tls_config *tls = &h->o->cfg->tls;
  struct curl_slist *l;
  CURL *e;

  if (h->format == F_JSON_ARRAY && sl_buf_putc(&r->body, ']') != 0)
    return SL_ENOMEM;
  if (h->gzip && gzip_body(&r->body) != 0)
    return SL_ENOMEM;
  for (l = h->headers; l; l = l->next)
    if (slist_add(&r->headers, l->data) != 0)
      return SL_ENOMEM;
  if (slist_add(&r->headers, content_type(h->format)) != 0 ||
      slist_add(&r->headers, "Expect:") != 0 ||
      (h->gzip &&
       slist_add(&r->headers, "Content-Encoding: gzip") != 0))
    return SL_ENOMEM;
  if ((r->easy = e = curl_easy_init()) == NULL)
    return SL_ENOMEM;
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_URL, (const char *)r->url.data);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)r->body.data);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body.len);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->error);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice");
  if (h->timeout_ms)
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)h->timeout_ms);
  if (h->userpwd) {
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_USERPWD, h->userpwd);
  }
  if (tls->enabled) {
    if (tls->ca_file)
      curl_easy_setopt(e, CURLOPT_CAINFO, tls->ca_file);
    if (tls->cert_file)
      curl_easy_setopt(e, CURLOPT_SSLCERT, tls->cert_file);
    if (tls->key_file)
      curl_easy_setopt(e, CURLOPT_SSLKEY, tls->key_file);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, tls->verify_peer ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, tls->verify_peer ? 2L : 0L);
    curl_easy_setopt(e, CURLOPT_SSLVERSION,
                     tls->min_version == 0x0304 ? CURL_SSLVERSION_TLSv1_3
                                                : CURL_SSLVERSION_TLSv1_2);
    if (tls->ciphers)
      curl_easy_setopt(e, CURLOPT_SSL_CIPHER_LIST, tls->ciphers);
    if (tls->handshake_timeout_ms)
      curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                       (long)tls->handshake_timeout_ms);
  }
  if (curl_multi_add_handle(h->multi, e) != CURLM_OK)
    return SL_ENOMEM;
  return 0;
}

/* Append ev to body in the output's format (the first event of body when
 * it is empty). 0 or SL_ENOMEM / SL_EPROTO. */
static int put_event(struct http_out *h, struct sl_buf *body,
                     const struct sl_event *ev) {
  const uint8_t *p = ev->data;
  size_t n = ev->len;
  int rc;
  static const uint8_t nil = 0xc0;
  if (h->payload_only) {
    p = ev->payload_len ? ev->data + ev->payload_off : &nil;
    n = ev->payload_len ? ev->payload_len : 1;
  }
  switch (h->format) {
  case F_MSGPACK:
    return sl_buf_append(body, p, n);
  case F_JSON_ARRAY:
    if ((rc = sl_buf_putc(body, body->len ? ',' : '[')) != 0)
      return rc;
    return sl_codec_to_json(p, n, body);
  case F_JSON:
    return sl_codec_to_json(p, n, body);
  default:
    if ((rc = sl_codec_to_json(p, n, body)) != 0)
      return rc;
    return sl_buf_putc(body, '\n');
  }
}

/* The request of the batch for url (the first one when templated is off),
 * a new one when none has it yet; NULL when MAX_URLS are in use or out of
 * memory. */
static struct request *request_for(struct http_out *h, const struct sl_buf *url,
                                   int *index) {
  struct request *r;
  int i;
  if (h->format != F_JSON)
    for (i = 0; i < h->nreqs; i++)
      if (h->reqs[i]->url.len == url->len &&
          memcmp(h->reqs[i]->url.data, url->data, url->len) == 0) {
        *index = i;
        return h->reqs[i];
      }
  if (h->nreqs == MAX_URLS || (r = calloc(1, sizeof(*r))) == NULL)
    return NULL;
  r->h = h;
  sl_buf_init(&r->url);
  sl_buf_init(&r->body);
  if (sl_buf_append(&r->url, url->data, url->len) != 0) {
    request_free(r);
    return NULL;
  }
  *index = h->nreqs;
  h->reqs[h->nreqs++] = r;
  return r;
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct http_out *h = o->data;
  struct sl_buf url;
  uint32_t i, n = b->n;
  int rc = 0;

  if (h->isolate || h->format == F_JSON)
    n = h->format == F_JSON && n > MAX_URLS ? MAX_URLS : h->isolate ? 1 : n;
  if (n > h->group_cap) {
    uint16_t *g = realloc(h->group, n * sizeof(*g));
    if (g == NULL) {
      sl_output_done(o, 0, SL_WRITE_RETRY, "out of memory");
      return;
    }
    h->group = g;
    h->group_cap = n;
  }
  sl_buf_init(&url);
  for (i = 0; i < n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    struct request *r;
    int g;
    size_t mark;
    if ((rc = render_url(h->url, ev, &url)) != 0 ||
        (r = request_for(h, &url, &g)) == NULL)
      break; /* the batch ends here (more URLs than MAX_URLS) */
    mark = r->body.len;
    if ((rc = put_event(h, &r->body, ev)) != 0) {
      r->body.len = mark;
      break;
    }
    r->nevents++;
    h->group[i] = (uint16_t)g;
  }
  sl_buf_close(&url);
  /* a request left empty by the event that ended the batch is dropped */
  if (h->nreqs && h->reqs[h->nreqs - 1]->nevents == 0)
    request_free(h->reqs[--h->nreqs]);
  h->batch_n = i;
  if (h->batch_n == 0 && rc == SL_EPROTO) {
    free_requests(h);
    sl_output_done(o, 0, SL_WRITE_FATAL, "cannot encode the event");
    return;
  }
  if (h->batch_n)
    rc = 0; /* the batch ends before the event that failed */
  for (i = 0; rc == 0 && (int)i < h->nreqs; i++)
    rc = request_start(h, h->reqs[i]);
  if (h->batch_n == 0 || rc != 0) {
    free_requests(h);
    sl_output_done(o, 0, SL_WRITE_RETRY,
                   rc == SL_ENOMEM ? "out of memory" : "cannot build a request");
    return;
  }
  h->pending = h->nreqs;
  /* curl's timer callback starts the transfers from the loop */
}

/* A request's outcome: SL_WRITE_OK, RETRY or FATAL, with why filled. */
static enum sl_write_status outcome(struct http_out *h, struct request *r,
                                    char *why, size_t whylen) {
  why[0] = '\0';
  if (r->result != CURLE_OK &&
      !(r->result == CURLE_WRITE_ERROR && r->status >= 200)) {
    snprintf(why, whylen, "%s%s%s", curl_easy_strerror(r->result),
             r->error[0] ? ": " : "", r->error);
    return SL_WRITE_RETRY;
  }
  if (r->status >= 200 && r->status < 300)
    return SL_WRITE_OK;
  snprintf(why, whylen, "HTTP %ld from %s", r->status,
           (const char *)r->url.data);
  if (r->status == 429 || r->status == 503 || r->status >= 500 ||
      r->status < 200)
    return SL_WRITE_RETRY;
  return r->status >= 400 ? SL_WRITE_FATAL : SL_WRITE_RETRY;
}

/* Every request of the batch finished: report the events from the front
 * whose requests succeeded, and what happens to the first that failed. */
static void finish_batch(struct http_out *h) {
  struct sl_output *o = h->o;
  struct request *r;
  enum sl_write_status st = SL_WRITE_OK;
  uint32_t n_ok, i;
  char why[512], status[16];
  int healthy = 1;

  /* healthy: the server answered (a refused event is no outage) */
  for (i = 0; healthy && (int)i < h->nreqs; i++)
    healthy = outcome(h, h->reqs[i], why, sizeof(why)) != SL_WRITE_RETRY;
  if (healthy != h->healthy)
    sl_log(healthy ? SL_LOG_INFO : SL_LOG_WARN,
           healthy ? "http output delivers again"
                   : "http output cannot deliver; retrying with backoff",
           SL_S("output", o->cfg->name), SL_S("error", why), SL_END);
  h->healthy = healthy;
  for (n_ok = 0; n_ok < h->batch_n; n_ok++)
    if (outcome(h, h->reqs[h->group[n_ok]], why, sizeof(why)) != SL_WRITE_OK)
      break;
  if (n_ok == h->batch_n) {
    if (h->isolate)
      h->isolate -= h->isolate < n_ok ? h->isolate : n_ok;
    free_requests(h);
    sl_output_done(o, n_ok, SL_WRITE_OK, NULL);
    return;
  }
  r = h->reqs[h->group[n_ok]];
  st = outcome(h, r, why, sizeof(why));
  if (st == SL_WRITE_FATAL && r->nevents > 1) {
    /* the server refused a request of several events: find the bad one
     * by sending them one per request */
    h->isolate = h->batch_n - n_ok;
    sl_log(SL_LOG_WARN, "http output batch refused; resending its events "
           "one per request to find the refused ones",
           SL_S("output", o->cfg->name), SL_S("error", why), SL_END);
    free_requests(h);
    sl_output_done(o, n_ok, SL_WRITE_OK, NULL);
    return;
  }
  if (st == SL_WRITE_FATAL && h->isolate)
    h->isolate--;
  if (r->status) {
    snprintf(status, sizeof(status), "%ld", r->status);
    sl_output_note(o, "sluice-http-status", status, strlen(status));
    sl_output_note(o, "sluice-http-body", (const char *)r->answer,
                   sl_utf8_prefix(r->answer, r->answer_len < BODY_KEPT
                                                 ? r->answer_len
                                                 : BODY_KEPT));
  }
  if (st == SL_WRITE_RETRY && r->has_retry_after &&
      (r->status == 429 || r->status == 503))
    sl_output_retry_after(o, r->retry_after_ms);
  free_requests(h);
  sl_output_done(o, n_ok, st, why);
}

/* ---- lifecycle ---------------------------------------------------------- */

/* The first line of file (a secret), without its line end, whatever its
 * length (an OAuth token can take several KB): malloc'd, or NULL with err
 * filled. */
static char *read_secret(const char *file, char *err, size_t errlen) {
  FILE *f = fopen(file, "r");
  char *line = NULL;
  size_t cap = 0;
  if (f == NULL || getline(&line, &cap, f) < 0) {
    snprintf(err, errlen, "cannot read %s: %s", file,
             f ? "empty" : strerror(errno));
    if (f)
      fclose(f);
    free(line);
    return NULL;
  }
  fclose(f);
  line[strcspn(line, "\r\n")] = '\0';
  return line;
}

/* "<prefix><n bytes of v>" as a header of h; 0 or SL_ENOMEM. */
static int add_header(struct http_out *h, const char *prefix, const char *v,
                      size_t n) {
  char *line;
  int rc;
  if (asprintf(&line, "%s%.*s", prefix, (int)n, v) < 0)
    return SL_ENOMEM;
  rc = slist_add(&h->headers, line);
  free(line);
  return rc;
}

/* The static headers and auth of the config into h. Lines of any length:
 * a bearer token was cut to the first 1077 bytes (1023 from a file). */
static int setup_headers(struct http_out *h, char *err, size_t errlen) {
  const struct sl_output_config *c = h->o->cfg;
  const char *lines = sl_config_value_str(c->values, c->nvalues, "headers");
  const char *token = sl_config_value_str(c->values, c->nvalues, "bearer_token");
  const char *token_file =
      sl_config_value_str(c->values, c->nvalues, "bearer_token_file");
  const char *user = sl_config_value_str(c->values, c->nvalues, "user");
  const char *pass = sl_config_value_str(c->values, c->nvalues, "password");
  const char *pass_file =
      sl_config_value_str(c->values, c->nvalues, "password_file");
  char *secret = NULL;
  int rc = 0;

  while (lines && *lines && rc == 0) {
    size_t n = strcspn(lines, "\n");
    rc = add_header(h, "", lines, n);
    lines += n + (lines[n] == '\n');
  }
  if (rc == 0 && token_file &&
      (secret = read_secret(token_file, err, errlen)) == NULL)
    return SL_EINVAL;
  if (rc == 0 && (token || token_file)) {
    const char *t = token ? token : secret;
    rc = add_header(h, "Authorization: Bearer ", t, strlen(t));
  }
  free(secret);
  secret = NULL;
  if (rc == 0 && user) {
    if (pass_file && (secret = read_secret(pass_file, err, errlen)) == NULL)
      return SL_EINVAL;
    if (asprintf(&h->userpwd, "%s:%s", user,
                 pass ? pass : pass_file ? secret : "") < 0) {
      h->userpwd = NULL;
      rc = SL_ENOMEM;
    }
    free(secret);
  }
  return rc;
}

/* The keys taken together (sl_config_plugin.check, also run by cb_start):
 * the url's template and scheme, tls only for https and without
 * server_name, one kind of auth. 0, or SL_EINVAL with why in err. */
static int check_conf(const void *conf, char *err, size_t errlen) {
  const struct sl_output_config *c = conf;
  const struct sl_config_value *v = c->values;
  const char *url = sl_config_value_str(v, c->nvalues, "url");
  const char *token = sl_config_value_str(v, c->nvalues, "bearer_token");
  const char *token_file =
      sl_config_value_str(v, c->nvalues, "bearer_token_file");
  const char *user = sl_config_value_str(v, c->nvalues, "user");
  const char *pass = sl_config_value_str(v, c->nvalues, "password");
  const char *pass_file = sl_config_value_str(v, c->nvalues, "password_file");
  struct sl_buf check;
  int rc;

  if (url == NULL)
    return 0; /* required: the checker said so */
  sl_buf_init(&check);
  rc = render_url(url, NULL, &check);
  if (rc == SL_EINVAL)
    snprintf(err, errlen, "url: unknown or unclosed field %.*s (expected "
             "{topic}, {key}, {id} or {headers.NAME})",
             (int)check.len, (const char *)check.data);
  else if (rc == 0 && strncmp(url, "http://", 7) != 0 &&
           strncmp(url, "https://", 8) != 0)
    snprintf(err, errlen, "url: expected http://... or https://..., got %s",
             url), rc = SL_EINVAL;
  else if (rc == 0 && c->tls.enabled && strncmp(url, "https://", 8) != 0)
    snprintf(err, errlen, "a tls block needs an https:// url"), rc = SL_EINVAL;
  else if (rc == 0 && c->tls.server_name)
    snprintf(err, errlen, "tls.server_name: the http output checks the "
             "url's host"), rc = SL_EINVAL;
  else if (rc == 0 && (token || token_file) && (user || pass || pass_file))
    snprintf(err, errlen, "bearer_token and user/password are two kinds of "
             "auth: give one"), rc = SL_EINVAL;
  else if (rc == 0 && token && token_file)
    snprintf(err, errlen, "give bearer_token or bearer_token_file, not both"),
        rc = SL_EINVAL;
  else if (rc == 0 && (pass || pass_file) && !user)
    snprintf(err, errlen, "password needs user"), rc = SL_EINVAL;
  sl_buf_close(&check);
  return rc;
}

static void cb_stop(struct sl_output *o);

/* curl reads the tls files on each request: load them once here, so that
 * a key that does not match its certificate or a CA file that is not PEM
 * stops the start (a reload is refused) naming the file, as on the other
 * outputs, instead of failing every request. Host checks are curl's. */
static int check_tls(const struct sl_output_config *c, char *err,
                     size_t errlen) {
  struct sl_tls_config t = c->tls;
  struct sl_tls *tls;
  t.verify_peer = 0; /* no host name to give: only the files count here */
  if ((tls = sl_tls_new(&t, 0, NULL, c->name, err, errlen)) == NULL)
    return SL_EINVAL;
  sl_tls_free(tls);
  return 0;
}

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  const struct sl_output_config *c = o->cfg;
  struct http_out *h;
  const char *fmt = c->format ? c->format : "ndjson";
  long conns;
  int rc;

  if ((h = calloc(1, sizeof(*h))) == NULL)
    return SL_ENOMEM;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) { /* counted */
    free(h);
    return SL_ENOMEM;
  }
  h->o = o;
  h->healthy = 1;
  o->data = h;
  uv_timer_init(&o->w->loop, &h->timer);
  h->timer.data = h;
  h->open_handles = 1;
  h->url = sl_config_value_str(c->values, c->nvalues, "url");
  h->format = strcmp(fmt, "json_array") == 0 ? F_JSON_ARRAY
              : strcmp(fmt, "msgpack") == 0  ? F_MSGPACK
              : strcmp(fmt, "json") == 0     ? F_JSON
                                             : F_NDJSON;
  h->payload_only = sl_config_value_num(c->values, c->nvalues, "body") == 1;
  h->gzip = (int)sl_config_value_num(c->values, c->nvalues, "gzip");
  h->timeout_ms =
      (uint32_t)sl_config_value_num(c->values, c->nvalues, "timeout_ms");
  conns = (long)sl_config_value_num(c->values, c->nvalues, "max_connections");
  rc = check_conf(c, err, errlen);
  if (rc == 0 && c->tls.enabled)
    rc = check_tls(c, err, errlen);
  if (rc == 0)
    rc = setup_headers(h, err, errlen);
  if (rc == 0 && (h->multi = curl_multi_init()) == NULL)
    rc = SL_ENOMEM;
  if (rc != 0) {
    /* the core never stops an output whose start failed: free h once
     * its timer has closed */
    cb_stop(o);
    return rc;
  }
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
  curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, conns);
  curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, conns);
  return 0;
}

static void on_timer_closed(uv_handle_t *hd) {
  struct http_out *h = hd->data;
  if (--h->open_handles == 0) /* else the last poll handle's close does */
    stopped(h);
}

static void cb_stop(struct sl_output *o) {
  struct http_out *h = o->data;
  if (h == NULL) {
    sl_output_stopped(o);
    return;
  }
  /* requests in flight are dropped: their events stay queued (or in the
   * disk buffer) and go again after a restart */
  free_requests(h);
  h->closing = 1;
  if (h->multi)
    curl_multi_cleanup(h->multi); /* closes its sockets: polls are closed */
  h->multi = NULL;
  while (h->socks) /* any curl did not say it is done with */
    sock_close(h->socks);
  curl_slist_free_all(h->headers);
  free(h->userpwd);
  h->headers = NULL;
  h->userpwd = NULL;
  uv_close((uv_handle_t *)&h->timer, on_timer_closed);
}

static int cb_healthy(struct sl_output *o) {
  struct http_out *h = o->data;
  return h && h->healthy && !h->closing;
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_stop = cb_stop,
    .cb_healthy = cb_healthy,
};

static const char *const formats[] = {"ndjson", "json_array", "msgpack",
                                      "json", NULL};
static const char *const bodies[] = {"event", "payload", NULL};

static const struct sl_config_key keys[] = {
    {.name = "url", .type = SL_KEY_STRING, .flags = SL_KEY_REQUIRED,
     .doc = "http:// or https:// URL; {topic}, {key}, {id} and "
            "{headers.NAME} are filled in from the event (percent-encoded): "
            "one request per distinct URL in a batch"},
    {.name = "format", .type = SL_KEY_STRING, .def = "ndjson",
     .doc = "body of a request: ndjson (one event a line), json_array, "
            "msgpack (back to back), or json (one event per request)",
     .choices = formats, SL_KEY_FIELD(struct sl_output_config, format)},
    {.name = "body", .type = SL_KEY_ENUM, .def = "event",
     .doc = "what is sent of each event: the whole event (id, topic, key, "
            "time, headers, payload), or its payload only",
     .choices = bodies},
    {.name = "headers", .type = SL_KEY_HEADERS,
     .doc = "static request headers, { [\"X-Name\"] = \"value\" } "
            "(${ENV} works)"},
    {.name = "bearer_token", .type = SL_KEY_STRING, .flags = SL_KEY_ONE_LINE,
     .doc = "sends Authorization: Bearer <token> (use ${ENV})"},
    {.name = "bearer_token_file", .type = SL_KEY_PATH,
     .doc = "the bearer token, the first line of this file (read at start)",
     .flags = SL_KEY_READ},
    {.name = "user", .type = SL_KEY_STRING, .doc = "basic auth user"},
    {.name = "password", .type = SL_KEY_STRING,
     .doc = "basic auth password (use ${ENV})"},
    {.name = "password_file", .type = SL_KEY_PATH,
     .doc = "basic auth password, the first line of this file",
     .flags = SL_KEY_READ},
    {.name = "timeout_ms", .type = SL_KEY_UINT, .def = "30000", .min = 0,
     .max = 3600000, .doc = "a request (connect to answer) that takes longer "
     "fails and is retried; 0: none"},
    {.name = "max_connections", .type = SL_KEY_UINT, .def = "8", .min = 1,
     .max = 1024, .doc = "kept-alive connections to the server, at most"},
    {.name = "gzip", .type = SL_KEY_BOOL, .def = "false",
     .doc = "compress request bodies (Content-Encoding: gzip)"},
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "for https:// urls: ca_file, cert_file/key_file (mTLS), "
            "verify_peer, min_version, ciphers, handshake_timeout_ms",
     SL_KEY_FIELD(struct sl_output_config, tls)},
    {0}};

const struct sl_plugin sl_output_http = {
    .config = {SL_PLUGIN_OUTPUT, "http",
               "POSTs batches of events to an HTTP(S) URL (webhooks, "
               "collectors)", keys, check_conf},
    .output = &ops,
};
