/* syslog.c - the syslog input: RFC 5424 and RFC 3164 messages over TCP
 * (LF-framed or octet-counted, RFC 6587, told apart per frame), TLS (RFC
 * 5425, the conn layer's) or UDP (RFC 5426, one message per datagram).
 * Each message becomes an event: topic from a template, the parsed fields
 * as the payload map (codec/syslog.c). A TCP connection is a source that
 * pauses when an output blocks; a UDP socket cannot make its senders wait,
 * so datagrams that arrive while its event is held are dropped and
 * counted. A malformed message is kept raw or dead-lettered, an oversized
 * one skipped; neither closes the connection. Owns its socket; the
 * listener, the connection count and the stop are worker/framed.c's. */
#include <stdlib.h>
#include <string.h>

#include "framed.h"
#include "plugins.h"
#include "syslog.h"

enum { ON_MALFORMED_RAW = 0, ON_MALFORMED_DEAD_LETTER = 1 };

#define TOPIC_MAX 512       /* a rendered topic */
#define TOPIC_FIELD_MAX 64  /* one placeholder's value in it */
#define UDP_MAX 65536       /* the largest datagram there is */

struct syslog_in {
  struct sl_framed f;          /* tcp: the listener, its conns, the stop */
  uv_udp_t udp;
  struct sl_source udp_src;    /* the socket: holds one event at a time */
  char *rbuf;                  /* udp receive buffer, rcap bytes */
  size_t rcap;
  const char *udp_address;     /* udp = "host:port"; NULL: none */
  int udp_open, udp_closed;
  enum sl_syslog_format format;
  int on_malformed;
  const char *topic;           /* the template */
};

static struct syslog_in *syslog_in(struct sl_input *in) {
  return container_of((struct sl_framed *)in->data, struct syslog_in, f);
}

struct syslog_conn {
  struct sl_source src;
  struct sl_conn *conn;
  uint64_t skip;  /* bytes of an oversized octet-counted frame to drop */
  int skip_line;  /* dropping an oversized line up to its LF */
};

/* ---- events ------------------------------------------------------------- */

/* Append s to the topic, as letters, digits, '-' and '_' (anything else
 * becomes '_', so a value never adds a topic level); an absent value is
 * "unknown". */
static void topic_put(char *out, size_t *len, const char *s, size_t n) {
  size_t i;
  if (s == NULL || n == 0)
    s = "unknown", n = 7;
  if (n > TOPIC_FIELD_MAX)
    n = TOPIC_FIELD_MAX;
  for (i = 0; i < n && *len < TOPIC_MAX - 1; i++) {
    char ch = s[i];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
    out[(*len)++] = ok ? ch : '_';
  }
}

/* The placeholder at t ("{app}"...): its length, or 0 when t is none. */
static size_t placeholder(const char *t, const struct sl_syslog_msg *m,
                          struct sl_str *v) {
  static const char *const names[] = {"{facility}", "{severity}", "{host}",
                                      "{app}"};
  size_t i, n;
  for (i = 0; i < 4; i++) {
    n = strlen(names[i]);
    if (strncmp(t, names[i], n) != 0)
      continue;
    v->p = NULL, v->len = 0;
    if (m && i == 0)
      v->p = sl_syslog_facility_name(m->facility);
    else if (m && i == 1)
      v->p = sl_syslog_severity_name(m->severity);
    else if (m)
      *v = i == 2 ? m->hostname : m->app;
    if (v->p && i < 2)
      v->len = (uint32_t)strlen(v->p);
    return n;
  }
  return 0;
}

/* Render the template for m (NULL: a malformed message, every placeholder
 * "unknown") into out[TOPIC_MAX]. Returns its length. */
static size_t render_topic(const char *t, const struct sl_syslog_msg *m,
                           char *out) {
  size_t len = 0, n;
  struct sl_str v;
  while (*t && len < TOPIC_MAX - 1) {
    if (*t == '{' && (n = placeholder(t, m, &v)) > 0) {
      topic_put(out, &len, v.p, v.len);
      t += n;
    } else {
      out[len++] = *t++;
    }
  }
  out[len] = '\0';
  return len;
}

/* The raw payload of a malformed message, and the headers a dead letter
 * carries. */
static int put_raw(struct sl_buf *b, const char *p, size_t n,
                   const char *why) {
  while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == '\0'))
    n--;
  return sl_codec_put_map(b, 3) || sl_codec_put_str(b, "message", 7) ||
         sl_codec_put_str(b, p, n) || sl_codec_put_str(b, "malformed", 9) ||
         sl_codec_put_bool(b, 1) || sl_codec_put_str(b, "error", 5) ||
         sl_codec_put_str(b, why, strlen(why));
}

static int put_dead_headers(struct sl_buf *b, const char *input,
                            const char *why) {
  return sl_codec_put_map(b, 2) || sl_codec_put_str(b, "sluice-error", 12) ||
         sl_codec_put_str(b, why, strlen(why)) ||
         sl_codec_put_str(b, "sluice-input", 12) ||
         sl_codec_put_str(b, input, strlen(input));
}

/* A malformed message for the dead letter: straight into its queue (the
 * rules never see it). When the queue is full a source that can wait (a
 * TCP connection: src->held, SL_EAGAIN, on_resume once it went in) holds
 * it as sl_worker_submit holds an event; a datagram cannot wait, so it is
 * dropped and counted, as it is when there is no dead letter. Takes ev.
 * Returns 0 or SL_EAGAIN. */
static int dead_letter(struct sl_input *in, struct sl_source *src,
                       struct sl_event *ev, int can_wait) {
  struct sl_worker *w = in->w;
  struct sl_output *dl = NULL;
  int rc = SL_ENOENT;
  uint64_t suppressed = 0;
  if (w->cfg->dead_letter >= 0 && w->cfg->dead_letter < w->noutputs &&
      !w->outputs[w->cfg->dead_letter].stopped)
    dl = &w->outputs[w->cfg->dead_letter];
  if (dl)
    rc = sl_output_push(dl, ev);
  if (rc == SL_EAGAIN && can_wait) {
    src->held = ev;
    src->targets[0] = (uint16_t)dl->index;
    src->ntargets = 1;
    src->refused = 0;
    sl_queue_wait(&dl->q, &src->waiter);
    return SL_EAGAIN;
  }
  sl_event_unref(ev);
  if (rc == 0)
    return 0;
  in->stats.dropped++;
  if (sl_log_allow(&w->bad_input_log, &suppressed))
    sl_log(SL_LOG_WARN,
           rc == SL_ENOENT ? "malformed syslog message dropped: no dead_letter "
                             "output"
                           : "malformed syslog message dropped: the "
                             "dead_letter output cannot take it now",
           SL_S("input", in->cfg->name), SL_U("suppressed", suppressed),
           SL_END);
  return 0;
}

static void log_bad(struct sl_input *in, const char *peer, const char *msg,
                    const char *why) {
  uint64_t suppressed = 0;
  if (sl_log_allow(&in->w->bad_input_log, &suppressed))
    sl_log(SL_LOG_WARN, msg, SL_S("input", in->cfg->name), SL_S("peer", peer),
           SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
}

/* One message p[0..n) from src: parsed, turned into an event and
 * submitted. Returns what sl_worker_submit does (0, SL_EAGAIN: src holds
 * it, SL_EIO: refused), or 0 when it went elsewhere or was dropped
 * (counted). */
static int deliver(struct syslog_in *si, struct sl_source *src,
                   const char *peer, const char *p, size_t n) {
  struct sl_input *in = si->f.in;
  struct sl_worker *w = in->w;
  struct sl_syslog_msg m;
  struct sl_buf pay, hdr;
  struct sl_event *ev;
  char topic[TOPIC_MAX];
  struct sl_str t, none = {NULL, 0};
  const char *why = NULL;
  int bad, rc = 0;

  sl_buf_init(&pay);
  sl_buf_init(&hdr);
  bad = sl_syslog_parse(p, n, si->format, sl_now_ns() / 1000000000LL, &m,
                        &why) != 0;
  t.p = topic;
  t.len = (uint32_t)render_topic(si->topic, bad ? NULL : &m, topic);
  if (bad) {
    in->stats.malformed++;
    log_bad(in, peer, "malformed syslog message", why);
    if (put_raw(&pay, p, n, why) != 0 ||
        (si->on_malformed == ON_MALFORMED_DEAD_LETTER &&
         put_dead_headers(&hdr, in->cfg->name, why) != 0))
      goto fail_mem;
  } else if (sl_syslog_put_payload(&pay, &m) != 0) {
    goto fail_mem;
  }
  ev = sl_event_new(&w->idgen, none, t, none, !bad && m.has_time,
                    bad ? 0 : m.time, hdr.len ? hdr.data : NULL, hdr.len,
                    pay.data, pay.len, 1);
  if (ev == NULL)
    goto fail_mem;
  in->stats.events_in++;
  in->stats.bytes_in += n;
  if (bad && si->on_malformed == ON_MALFORMED_DEAD_LETTER)
    rc = dead_letter(in, src, ev, src != &si->udp_src);
  else
    rc = sl_worker_submit(src, ev);
  sl_buf_close(&pay);
  sl_buf_close(&hdr);
  return rc;
fail_mem:
  in->stats.dropped++;
  log_bad(in, peer, "syslog message dropped", "out of memory");
  sl_buf_close(&pay);
  sl_buf_close(&hdr);
  return 0;
}

/* ---- tcp and tls ---------------------------------------------------------- */

static void oversized(struct sl_input *in, struct sl_conn *c) {
  char why[96];
  in->stats.bad_input++;
  snprintf(why, sizeof(why), "message larger than max_event_bytes (%u)",
           in->w->cfg->max_event_bytes);
  log_bad(in, sl_conn_peer(c), "syslog message refused; skipped", why);
}

static void refused(struct syslog_conn *sc) {
  char why[256];
  if (sl_conn_is_closing(sc->conn))
    return;
  sl_worker_refusal(sc->src.w, sc->src.refused_output, why, sizeof(why));
  log_bad(sc->src.input, sl_conn_peer(sc->conn),
          "syslog message refused; closing connection", why);
  sl_conn_close(sc->conn);
}

/* workers > 1: a worker's result of this connection was refused, maybe
 * after its last read: it closes as at an inline refusal */
static void on_refused_later(struct sl_source *s) {
  refused(container_of(s, struct syslog_conn, src));
}

static size_t cb_data(struct sl_conn *c, const uint8_t *data, size_t len) {
  struct syslog_conn *sc = sl_conn_proto(c);
  struct sl_input *in = sc->src.input;
  uint32_t max = in->w->cfg->max_event_bytes;
  size_t pos = 0, start;
  uint32_t since = 0;
  uint64_t n;
  int rc;

  while (pos < len) {
    if (sc->skip > 0) {
      n = sc->skip < len - pos ? sc->skip : len - pos;
      sc->skip -= n;
      pos += n;
      continue;
    }
    if (sc->skip_line) {
      const uint8_t *lf = memchr(data + pos, '\n', len - pos);
      pos = lf ? (size_t)(lf - data) + 1 : len;
      sc->skip_line = lf == NULL;
      continue;
    }
    rc = sl_syslog_frame(data + pos, len - pos, max, &start, &n);
    if (rc == 0)
      break;
    if (rc < 0 || n > max) {
      oversized(in, c);
      sc->skip_line = rc < 0;
      sc->skip = rc < 0 ? 0 : n;
      pos += rc < 0 ? len - pos : start;
      continue;
    }
    if (len - pos - start < n)
      break; /* the rest of an octet-counted frame */
    pos += start + n;
    if (n == 0 ||
        (start == 0 && (n == 1 || (n == 2 && data[pos - 2] == '\r'))))
      continue; /* an empty frame or line */
    rc = deliver(syslog_in(in), &sc->src, sl_conn_peer(c),
                 (const char *)data + pos - n, n);
    if (rc == SL_EAGAIN) {
      sl_conn_pause(c); /* on_resume reads on */
      break;
    }
    if (rc == SL_EIO) {
      refused(sc);
      break;
    }
    if (sl_unlikely(++since % SL_OUTPUT_HOLD_EVENTS == 0))
      sl_framed_read_some(&sc->src); /* a long read's first lines go out */
  }
  sl_framed_read_done(&sc->src);
  return pos;
}

static void on_resume(struct sl_source *s) {
  struct syslog_conn *sc = container_of(s, struct syslog_conn, src);
  if (s->refused) {
    refused(sc);
    return;
  }
  sl_conn_resume(sc->conn);
  /* draining: its messages are in */
  sl_framed_close_if_drained(s->input->data, sc->conn);
}

static void cb_eof(struct sl_conn *c, int status) {
  struct syslog_conn *sc = sl_conn_proto(c);
  size_t n = sl_conn_buffered(c);
  if (n > 0 && !sc->skip_line && sc->skip == 0)
    log_bad(sc->src.input, sl_conn_peer(c),
            "connection closed inside a syslog frame; partial message "
            "discarded",
            status == UV_ETIMEDOUT ? "not complete within event_timeout_ms"
                                   : "closed");
  if (n > 0)
    sc->src.input->stats.bad_input++;
}

static void cb_close(struct sl_conn *c) {
  struct syslog_conn *sc = sl_conn_proto(c);
  struct sl_framed *f = sc->src.input->data;
  sl_framed_closing(f, &sc->src);
  sl_framed_free(f, sc);
}

static const struct sl_conn_ops conn_ops = {
    .cb_data = cb_data,
    .cb_eof = cb_eof,
    .cb_close = cb_close,
};

static int on_accept(struct sl_framed *f, struct sl_conn *c) {
  struct syslog_conn *sc = calloc(1, sizeof(*sc));
  if (sc == NULL)
    return SL_ENOMEM;
  sl_source_init(&sc->src, f->in, on_resume);
  sc->src.on_refused_later = on_refused_later;
  sc->conn = c;
  sl_conn_set_ops(c, &conn_ops, sc);
  return 0;
}

static int is_drained(struct sl_conn *c) {
  struct syslog_conn *sc = sl_conn_proto(c);
  return sc->src.held == NULL;
}

/* ---- udp ---------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct syslog_in *si = container_of((uv_udp_t *)h, struct syslog_in, udp);
  *buf = uv_buf_init(si->rbuf, (unsigned)si->rcap);
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr, unsigned flags) {
  struct syslog_in *si = container_of(h, struct syslog_in, udp);
  struct sl_input *in = si->f.in;
  char peer[64] = "udp";
  if (nread < 0) {
    sl_log(SL_LOG_WARN, "udp receive failed", SL_S("input", in->cfg->name),
           SL_S("error", uv_strerror((int)nread)), SL_END);
    return;
  }
  if (addr == NULL || nread == 0)
    return;
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const void *)addr;
    char ip[INET_ADDRSTRLEN];
    uv_ip4_name(a, ip, sizeof(ip));
    snprintf(peer, sizeof(peer), "%s:%u", ip, ntohs(a->sin_port));
  }
  if (si->udp_src.held != NULL) {
    in->stats.dropped++; /* blocked: a datagram sender cannot wait */
    return;
  }
  if ((flags & UV_UDP_PARTIAL) ||
      (size_t)nread > in->w->cfg->max_event_bytes) {
    in->stats.bad_input++;
    log_bad(in, peer, "syslog datagram refused",
            "larger than max_event_bytes");
    return;
  }
  if (deliver(si, &si->udp_src, peer, buf->base, (size_t)nread) == SL_EIO) {
    in->stats.dropped++;
    log_bad(in, peer, "syslog datagram refused", "a disk buffer cannot write");
  }
}

static void on_udp_resume(struct sl_source *s) {
  /* the held datagram went in (or a disk buffer refused it: lost, as a
   * datagram sender cannot be told); new ones are taken again */
  if (s->refused)
    s->input->stats.dropped++;
}

/* workers > 1: a worker's result of a datagram was refused: counted and
 * logged as an inline refusal is (its sender is gone by now), and cleared
 * so the next one is counted too */
static void on_udp_refused_later(struct sl_source *s) {
  s->refused_later = 0;
  s->input->stats.dropped++;
  log_bad(s->input, "udp", "syslog datagram refused",
          "a disk buffer cannot write");
}

static void on_udp_closed(uv_handle_t *h) {
  struct syslog_in *si = container_of((uv_udp_t *)h, struct syslog_in, udp);
  si->udp_closed = 1;
  sl_framed_check(&si->f);
}

static int start_udp(struct syslog_in *si, char *err, size_t errlen) {
  struct sl_input *in = si->f.in;
  struct sl_endpoint ep;
  int rc;
  si->rcap = (size_t)in->w->cfg->max_event_bytes + 1; /* one over: refused */
  if (si->rcap > UDP_MAX)
    si->rcap = UDP_MAX;
  if ((si->rbuf = malloc(si->rcap)) == NULL)
    return SL_ENOMEM;
  sl_source_init(&si->udp_src, in, on_udp_resume);
  si->udp_src.on_refused_later = on_udp_refused_later;
  rc = sl_endpoint_init(&ep, SL_ENDPOINT_TCP, si->udp_address, err, errlen);
  if (rc != 0)
    return rc;
  if ((rc = uv_udp_init(&in->w->loop, &si->udp)) != 0)
    goto fail;
  si->udp_open = 1;
  si->udp_closed = 0;
  if ((rc = uv_udp_bind(&si->udp, (const struct sockaddr *)&ep.ss, 0)) != 0 ||
      (rc = uv_udp_recv_start(&si->udp, on_alloc, on_recv)) != 0)
    goto fail;
  sl_log(SL_LOG_INFO, "input receiving datagrams", SL_S("input", in->cfg->name),
         SL_S("udp", si->udp_address), SL_END);
  return 0;
fail:
  snprintf(err, errlen, "cannot receive on udp %s: %s", si->udp_address,
           uv_strerror(rc));
  return rc;
}

/* ---- the plugin --------------------------------------------------------- */

static int check_topic(const char *t, char *err, size_t errlen) {
  const char *brace;
  struct sl_str v;
  for (brace = strchr(t, '{'); brace; brace = strchr(brace + 1, '{'))
    if (placeholder(brace, NULL, &v) == 0) {
      snprintf(err, errlen,
               "topic template %s: unknown placeholder at \"%.20s\" (expected "
               "{facility}, {severity}, {host} or {app})",
               t, brace);
      return SL_EINVAL;
    }
  return 0;
}

/* The keys taken together (sl_config_plugin.check, also run by cb_start):
 * a topic template of known placeholders, and listen or udp. 0, or
 * SL_EINVAL with why in err. */
static int check_conf(const void *conf, char *err, size_t errlen) {
  const struct sl_input_config *cfg = conf;
  const char *topic = sl_config_value_str(cfg->values, cfg->nvalues, "topic");
  if (check_topic(topic ? topic : "syslog.{app}", err, errlen) != 0)
    return SL_EINVAL;
  if (cfg->listen == NULL &&
      sl_config_value_str(cfg->values, cfg->nvalues, "udp") == NULL) {
    snprintf(err, errlen, "set listen (tcp) or udp, or both");
    return SL_EINVAL;
  }
  return 0;
}

static int udp_open(const struct sl_framed *f) {
  return !container_of(f, struct syslog_in, f)->udp_closed;
}

static void on_free(struct sl_framed *f) {
  struct syslog_in *si = container_of(f, struct syslog_in, f);
  if (si->rbuf)
    sl_source_close(&si->udp_src);
  free(si->rbuf);
  free(si);
}

static const struct sl_framed_ops framed_ops = {
    .cb_accept = on_accept,
    .cb_drained = is_drained,
    .cb_open = udp_open,
    .cb_free = on_free,
};

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  const struct sl_config_value *v = in->cfg->values;
  int nv = in->cfg->nvalues;
  struct syslog_in *si = calloc(1, sizeof(*si));
  int rc;
  if (si == NULL)
    return SL_ENOMEM;
  sl_framed_init(&si->f, in, &framed_ops);
  si->udp_closed = 1; /* until it opens */
  si->udp_address = sl_config_value_str(v, nv, "udp");
  si->format = (enum sl_syslog_format)sl_config_value_num(v, nv, "format");
  si->on_malformed = (int)sl_config_value_num(v, nv, "on_malformed");
  si->topic = sl_config_value_str(v, nv, "topic");
  if (si->topic == NULL)
    si->topic = "syslog.{app}";
  if (check_conf(in->cfg, err, errlen) != 0)
    return SL_EINVAL;
  /* a whole frame fits: its count, the message and one read beyond */
  if (in->cfg->listen &&
      (rc = sl_framed_listen(&si->f, SL_ENDPOINT_TCP,
                             (size_t)in->w->cfg->max_event_bytes + 65536, err,
                             errlen)) != 0)
    return rc;
  return si->udp_address ? start_udp(si, err, errlen) : 0;
}

static void close_udp(struct syslog_in *si) {
  if (!si->udp_open) {
    si->udp_closed = 1;
    return;
  }
  si->udp_open = 0;
  uv_close((uv_handle_t *)&si->udp, on_udp_closed);
}

static void cb_drain(struct sl_input *in) {
  struct syslog_in *si = in->data ? syslog_in(in) : NULL;
  if (si == NULL)
    return;
  /* a datagram socket has nothing to finish: closed now (the held event
   * still goes in), so that a reload's input on its address can bind */
  close_udp(si);
  if (in->cfg->listen)
    sl_framed_drain(in);
}

static uint32_t cb_busy(struct sl_input *in) {
  struct syslog_in *si = in->data ? syslog_in(in) : NULL;
  if (si == NULL)
    return 0;
  return si->f.live + (si->udp_src.held != NULL);
}

static void cb_stop(struct sl_input *in) {
  if (in->data)
    close_udp(syslog_in(in));
  sl_framed_stop(in);
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = cb_drain,
    .cb_busy = cb_busy,
    .cb_stop = cb_stop,
};

#define IN struct sl_input_config
static const char *const formats[] = {"auto", "rfc5424", "rfc3164", NULL};
static const int format_values[] = {SL_SYSLOG_AUTO, SL_SYSLOG_5424,
                                    SL_SYSLOG_3164};
static const char *const malformed[] = {"raw", "dead_letter", NULL};
static const int malformed_values[] = {ON_MALFORMED_RAW,
                                       ON_MALFORMED_DEAD_LETTER};

static const struct sl_config_key syslog_keys[] = {
    {.name = "listen", .type = SL_KEY_ADDRESS,
     .doc = "\"host:port\" to accept syslog over TCP on (LF-framed or "
            "octet-counted, per frame; TLS with tls)",
     SL_KEY_FIELD(IN, listen)},
    {.name = "udp", .type = SL_KEY_ADDRESS,
     .doc = "\"host:port\" to receive syslog datagrams on (one message "
            "each); may be listen's"},
    {.name = "format", .type = SL_KEY_ENUM, .def = "auto",
     .doc = "\"auto\" (RFC 5424 when the PRI is followed by version 1, else "
            "RFC 3164), \"rfc5424\" or \"rfc3164\"",
     .choices = formats, .values = format_values},
    {.name = "topic", .type = SL_KEY_STRING, .def = "syslog.{app}",
     .doc = "topic template: {facility}, {severity}, {host}, {app} (values "
            "as [A-Za-z0-9_-], others '_', absent: unknown)"},
    {.name = "on_malformed", .type = SL_KEY_ENUM, .def = "raw",
     .doc = "a message that does not parse: \"raw\" (payload {message, "
            "malformed = true}) or \"dead_letter\"",
     .choices = malformed, .values = malformed_values},
    {.name = "idle_timeout_ms", .type = SL_KEY_UINT, .def = "0",
     .doc = "tcp: close a connection idle this long; 0: never", .min = 100,
     .max = 86400000, SL_KEY_FIELD(IN, idle_timeout_ms)},
    {.name = "max_connections", .type = SL_KEY_UINT, .def = "1024",
     .doc = "tcp: connections open at once", .min = 1, .max = 1000000,
     SL_KEY_FIELD(IN, max_connections)},
    {.name = "event_timeout_ms", .type = SL_KEY_UINT, .def = "30000",
     .doc = "tcp: a begun frame must be complete within this",
     .flags = SL_KEY_TOLERATED, .min = 100, .max = 86400000,
     SL_KEY_FIELD(IN, event_timeout_ms)},
    {.name = "max_pending_bytes", .type = SL_KEY_BYTES, .def = "64MiB",
     .doc = "tcp: partial frames held over all connections", .min = 1,
     .max = 1ull << 40, SL_KEY_FIELD(IN, max_pending_bytes)},
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "tcp: serve TLS (RFC 5425); see the tls keys",
     SL_KEY_FIELD(IN, tls)},
    {0}};

const struct sl_plugin sl_input_syslog = {
    .config = {SL_PLUGIN_INPUT, "syslog",
               "RFC 5424 and RFC 3164 syslog over TCP, TLS or UDP",
               syslog_keys, check_conf},
    .input = &ops,
};
