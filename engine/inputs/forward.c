/* forward.c - the forward input: the Fluent forward protocol v1 (Fluent
 * Bit, Fluentd, the fluent-logger libraries) over TCP or TLS. Each entry of
 * a Message, Forward, PackedForward or CompressedPackedForward frame
 * becomes an event: topic = tag_prefix + tag, payload = the record map's
 * bytes as sent, time = the entry's time. A frame with the chunk option is
 * answered {"ack": chunk} once all its events are durable
 * (sl_worker_durable), never before. With shared_key, a connection must
 * pass the HELO/PING/PONG handshake first. Bad bytes close only the
 * connection that sent them, with one rate-limited log line naming the
 * peer and what was wrong. The listener, the connection count and the
 * stop are worker/framed.c's. */
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "framed.h"
#include "plugins.h"
#include "tls.h"

struct fwd_in {
  struct sl_framed f;       /* the listener, its conns, the stop */
  const char *tag_prefix;   /* "" when unset */
  const char *shared_key;   /* NULL: no handshake */
  char hostname[256];       /* self_hostname: what PONG names */
  size_t max_chunk;         /* a frame, and its entries once inflated */
};

struct fwd_conn {
  struct sl_source src;
  struct sl_conn *conn;
  struct fwd_in *fi;
  int authed;               /* the handshake passed (or none is asked) */
  uint8_t nonce[16];        /* sent in HELO */
  uv_timer_t ping_timer;    /* PING must come within event_timeout_ms */
  int timer_open;
  size_t frame_len;         /* the frame being submitted; 0: none */
  size_t entry_pos;         /* its next entry's offset in its entries */
  struct sl_buf inflated;   /* its entries, when it came compressed */
  struct sl_buf topic;      /* tag_prefix + tag */
  struct sl_buf pending;    /* {"ack": chunk} answers of whole frames,
                               oldest first, waiting for durability */
  size_t covered;           /* pending bytes the durable wait covers */
  struct sl_durable wait;
  int ack_full;             /* paused: too many acks not yet written */
  struct sl_codec_walk walk; /* the frame still arriving, walked so far */
  int eof;                  /* the peer finished sending: kept for acks */
};

/* Acks are the sender's chunk ids echoed: one that never reads them would
 * have us queue them without bound. Past this many unsent bytes the conn
 * stops reading; it goes on once half are written. */
#define ACK_BACKLOG (1u << 20)

/* A frame's tag is the topic of each of its entries' events: a long one
 * over many tiny entries would multiply the frame's bytes (an 8 MiB frame
 * of a 4 MiB tag and a million 4-byte entries: 4 TB of events). Fluent
 * tags are dotted names; this is generous. */
#define MAX_TAG 1024

/* One rate-limited line per bad connection, counted; the conn closes. */
static void bad_input(struct fwd_conn *nc, size_t offset, const char *why) {
  struct sl_input *in = nc->src.input;
  uint64_t suppressed = 0;
  in->stats.bad_input++;
  if (sl_log_allow(&in->w->bad_input_log, &suppressed))
    sl_log(SL_LOG_WARN, "bad forward input; closing connection",
           SL_S("input", in->cfg->name), SL_S("peer", sl_conn_peer(nc->conn)),
           SL_U("offset", sl_conn_offset(nc->conn) + offset),
           SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
  sl_conn_close(nc->conn);
}

/* A disk buffer refused events of this connection: nothing more is acked;
 * the sender resends its unacked chunks (they may arrive twice). */
static void refused(struct fwd_conn *nc) {
  struct sl_input *in = nc->src.input;
  char why[256];
  uint64_t suppressed = 0;
  if (sl_conn_is_closing(nc->conn))
    return;
  if (sl_log_allow(&in->w->bad_input_log, &suppressed)) {
    sl_worker_refusal(in->w, nc->src.refused_output, why, sizeof(why));
    sl_log(SL_LOG_WARN, "event refused; closing connection",
           SL_S("input", in->cfg->name), SL_S("peer", sl_conn_peer(nc->conn)),
           SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
  }
  sl_conn_close(nc->conn);
}

/* workers > 1: a worker's result of this connection was refused, maybe
 * after its last read (chunk acks or none, it must not read on unseen) */
static void on_refused_later(struct sl_source *s) {
  refused(container_of(s, struct fwd_conn, src));
}

/* ---- acks ----------------------------------------------------------- */

static size_t ack_backlog(struct fwd_conn *nc) {
  return sl_conn_write_queue_size(nc->conn) + nc->pending.len;
}

static void close_if_drained(struct fwd_conn *nc);

/* Acks were written; a conn kept for its acks (cb_eof) closes once the
 * last is out, or at once when the peer is gone. */
static void on_acks_written(struct sl_conn *c, int status, void *arg) {
  struct fwd_conn *nc;
  (void)arg;
  if (status == UV_ECANCELED || sl_conn_is_closing(c))
    return;
  nc = sl_conn_proto(c);
  if (status != 0) {
    if (nc->eof) /* nothing more to read or write */
      sl_conn_close(c);
    return;
  }
  if (nc->ack_full && ack_backlog(nc) <= ACK_BACKLOG / 2) {
    nc->ack_full = 0;
    if (nc->src.held == NULL) /* else on_resume resumes it */
      sl_conn_resume(c);
  }
  if (nc->eof)
    close_if_drained(nc);
}

static void write_acks(struct fwd_conn *nc) {
  struct sl_buf b;
  sl_buf_init(&b);
  if (sl_buf_append(&b, nc->pending.data, nc->covered) == 0 &&
      sl_conn_write(nc->conn, &b, on_acks_written, NULL) == 0)
    sl_buf_consume(&nc->pending, nc->covered);
  nc->covered = 0;
  sl_buf_close(&b);
}

/* Answer the whole frames whose events are durable now; the rest wait for
 * on_durable. */
static void send_acks(struct fwd_conn *nc) {
  int rc;
  if (nc->pending.len == 0 || sl_conn_is_closing(nc->conn) ||
      nc->wait.waiting)
    return;
  if (nc->src.refused_later) { /* workers > 1: found after its submit */
    refused(nc);
    return;
  }
  nc->covered = nc->pending.len;
  rc = sl_worker_durable(nc->src.w, &nc->wait);
  if (rc == SL_EIO) {
    nc->src.refused_output = nc->wait.refused_output;
    refused(nc);
    return;
  }
  if (rc == 0)
    write_acks(nc);
}

/* Draining: once what it sent is in and answered, the conn is done. */
static int is_drained(struct sl_conn *c) {
  struct fwd_conn *nc = sl_conn_proto(c);
  return nc->src.held == NULL && !nc->wait.waiting && nc->frame_len == 0 &&
         (!nc->eof || sl_conn_pending_writes(c) == 0);
}

static void close_if_drained(struct fwd_conn *nc) {
  sl_framed_close_if_drained(&nc->fi->f, nc->conn);
}

static void on_durable(struct sl_durable *d) {
  struct fwd_conn *nc = container_of(d, struct fwd_conn, wait);
  if (sl_conn_is_closing(nc->conn))
    return;
  if (d->failed || nc->src.refused_later) { /* workers > 1 */
    if (d->failed)
      nc->src.refused_output = d->refused_output;
    refused(nc);
    return;
  }
  write_acks(nc);
  send_acks(nc); /* what was taken meanwhile */
  close_if_drained(nc);
}

static int queue_ack(struct fwd_conn *nc, struct sl_str chunk) {
  if (sl_codec_put_map(&nc->pending, 1) != 0 ||
      sl_codec_put_str(&nc->pending, "ack", 3) != 0 ||
      sl_codec_put_str(&nc->pending, chunk.p, chunk.len) != 0)
    return SL_ENOMEM;
  return 0;
}

/* ---- the handshake (shared_key) -------------------------------------- */

static void send_helo(struct fwd_conn *nc) {
  struct sl_buf b;
  sl_buf_init(&b);
  if (sl_forward_random(nc->nonce) != 0 || sl_codec_put_array(&b, 2) ||
      sl_codec_put_str(&b, "HELO", 4) || sl_codec_put_map(&b, 3) ||
      sl_codec_put_str(&b, "nonce", 5) ||
      sl_codec_put_bin(&b, nc->nonce, sizeof(nc->nonce)) ||
      sl_codec_put_str(&b, "auth", 4) || sl_codec_put_str(&b, "", 0) ||
      sl_codec_put_str(&b, "keepalive", 9) || sl_codec_put_bool(&b, 1) ||
      sl_conn_write(nc->conn, &b, NULL, NULL) != 0)
    sl_conn_close(nc->conn);
  sl_buf_close(&b);
}

static void send_pong(struct fwd_conn *nc, int ok, const char *reason,
                      const char *digest) {
  struct sl_buf b;
  const char *host = ok ? nc->fi->hostname : "";
  sl_buf_init(&b);
  if (sl_codec_put_array(&b, 5) || sl_codec_put_str(&b, "PONG", 4) ||
      sl_codec_put_bool(&b, ok) ||
      sl_codec_put_str(&b, reason, strlen(reason)) ||
      sl_codec_put_str(&b, host, strlen(host)) ||
      sl_codec_put_str(&b, digest, strlen(digest)) ||
      sl_conn_write(nc->conn, &b, NULL, NULL) != 0)
    sl_conn_close(nc->conn);
  sl_buf_close(&b);
}

/* ["PING", client_hostname, salt, hex(sha512(salt + client_hostname +
 * nonce + shared_key)), username, password digest]: user auth is not
 * offered (HELO's auth is empty), so the last two are not checked. */
static void on_ping(struct fwd_conn *nc, const uint8_t *p, size_t len) {
  struct sl_str part[4], word, host, salt, digest;
  char want[129];
  size_t pos, used;
  uint32_t n;
  const char *why = "PING is not [\"PING\", hostname, salt, digest, ...]";
  if (sl_codec_read_array(p, len, &n, &pos) != 0 || n < 4 ||
      sl_codec_read_str(p + pos, len - pos, &word, &used) != 0 ||
      word.len != 4 || memcmp(word.p, "PING", 4) != 0)
    goto bad;
  pos += used;
  if (sl_codec_read_str(p + pos, len - pos, &host, &used) != 0)
    goto bad;
  pos += used;
  if (sl_codec_read_strbin(p + pos, len - pos, &salt, &used) != 0)
    goto bad;
  pos += used;
  if (sl_codec_read_str(p + pos, len - pos, &digest, &used) != 0)
    goto bad;
  part[0] = salt;
  part[1] = host;
  part[2].p = (const char *)nc->nonce;
  part[2].len = sizeof(nc->nonce);
  part[3].p = nc->fi->shared_key;
  part[3].len = (uint32_t)strlen(nc->fi->shared_key);
  why = "out of memory";
  if (sl_forward_digest(want, part, 4) != 0)
    goto bad;
  if (digest.len != 128 || !sl_forward_digest_equal(want, digest.p, 128)) {
    send_pong(nc, 0, "shared_key mismatch", "");
    why = "shared key handshake failed: the PING's digest does not match "
          "shared_key";
    goto bad;
  }
  part[1].p = nc->fi->hostname;
  part[1].len = (uint32_t)strlen(nc->fi->hostname);
  if (sl_forward_digest(want, part, 4) != 0)
    goto bad;
  nc->authed = 1;
  uv_timer_stop(&nc->ping_timer);
  send_pong(nc, 1, "", want);
  return;
bad:
  bad_input(nc, 0, why);
}

/* ---- frames ---------------------------------------------------------- */

/* Check every entry of a frame before any becomes an event: a bad chunk
 * is refused whole, never half taken. Inflates a compressed one. */
static int start_frame(struct fwd_conn *nc, const uint8_t *p, size_t len) {
  struct sl_worker *w = nc->src.w;
  struct sl_forward_frame f;
  struct sl_forward_entry e;
  struct sl_codec_error err;
  const uint8_t *entries;
  size_t elen, pos = 0;
  uint64_t n = 0;
  char msg[200];
  int rc;
  if (sl_forward_parse_frame(p, len, &f, &err) != 0) {
    bad_input(nc, err.offset, err.msg);
    return SL_EPROTO;
  }
  if (f.tag.len > MAX_TAG) { /* every entry's event repeats it */
    snprintf(msg, sizeof(msg), "tag longer than %d bytes", MAX_TAG);
    bad_input(nc, 0, msg);
    return SL_E2BIG;
  }
  entries = f.entries;
  elen = f.entries_len;
  if (f.gzip) {
    rc = sl_forward_gunzip(f.entries, f.entries_len, nc->fi->max_chunk,
                           &nc->inflated);
    if (rc != 0) {
      snprintf(msg, sizeof(msg),
               rc == SL_E2BIG ? "compressed entries inflate beyond "
                                "max_chunk_bytes (%zu); refused"
               : rc == SL_ENOMEM ? "out of memory inflating entries (%zu)"
                                 : "compressed entries are not valid gzip "
                                   "(limit %zu)",
               nc->fi->max_chunk);
      bad_input(nc, 0, msg);
      return rc;
    }
    entries = nc->inflated.data;
    elen = nc->inflated.len;
  }
  while (pos < elen) {
    if (sl_forward_next_entry(entries, elen, &pos,
                              f.mode != SL_FORWARD_MESSAGE, &e, &err) != 0) {
      snprintf(msg, sizeof(msg), "entry %llu: %s", (unsigned long long)n,
               err.msg);
      bad_input(nc, f.gzip ? 0 : (size_t)(entries - p) + err.offset, msg);
      return SL_EPROTO;
    }
    if (e.record_len > w->cfg->max_event_bytes) {
      snprintf(msg, sizeof(msg), "entry %llu: record larger than "
               "max_event_bytes (%u)", (unsigned long long)n,
               w->cfg->max_event_bytes);
      bad_input(nc, 0, msg);
      return SL_E2BIG;
    }
    n++;
  }
  if ((f.mode == SL_FORWARD_FORWARD && n != f.count) ||
      (f.mode != SL_FORWARD_MESSAGE && n == 0)) {
    bad_input(nc, 0, n == 0 ? "frame has no entries"
                            : "entries do not match the array's count");
    return SL_EPROTO;
  }
  sl_buf_reset(&nc->topic);
  if (sl_buf_append(&nc->topic, nc->fi->tag_prefix,
                    strlen(nc->fi->tag_prefix)) != 0 ||
      sl_buf_append(&nc->topic, f.tag.p, f.tag.len) != 0) {
    bad_input(nc, 0, "out of memory");
    return SL_ENOMEM;
  }
  nc->frame_len = len;
  nc->entry_pos = 0;
  return 0;
}

/* On a TLS conn whose peer showed a certificate, the peer's identity goes
 * in the sluice-peer header, as on the native input. Takes ev. */
static struct sl_event *with_peer(struct sl_event *ev, struct sl_conn *c) {
  const char *peer = ev ? sl_conn_peer_identity(c) : NULL;
  struct sl_event *out;
  if (peer == NULL)
    return ev;
  out = sl_event_with_header(ev, "sluice-peer", peer, strlen(peer));
  sl_event_unref(ev);
  return out;
}

/* Submit the current frame's entries from entry_pos on. 0: all in;
 * SL_EAGAIN: paused on a full queue (on_resume goes on); else closed. */
static int submit_frame(struct fwd_conn *nc, const struct sl_forward_frame *f) {
  struct sl_input *in = nc->src.input;
  struct sl_forward_entry e;
  struct sl_str topic = {(const char *)nc->topic.data,
                         (uint32_t)nc->topic.len};
  struct sl_str none = {NULL, 0};
  const uint8_t *entries = f->gzip ? nc->inflated.data : f->entries;
  size_t elen = f->gzip ? nc->inflated.len : f->entries_len;
  struct sl_event *ev;
  int rc;
  while (nc->entry_pos < elen) {
    if (sl_forward_next_entry(entries, elen, &nc->entry_pos,
                              f->mode != SL_FORWARD_MESSAGE, &e, NULL) != 0)
      return SL_EPROTO; /* checked by start_frame: cannot happen */
    ev = with_peer(sl_event_new(&in->w->idgen, none, topic, none, 1, e.time,
                                NULL, 0, e.record, e.record_len, 1),
                   nc->conn);
    if (ev == NULL) {
      bad_input(nc, 0, "out of memory");
      return SL_ENOMEM;
    }
    in->stats.events_in++;
    in->stats.bytes_in += e.record_len;
    rc = sl_worker_submit(&nc->src, ev);
    if (rc == SL_EAGAIN) {
      sl_conn_pause(nc->conn);
      return SL_EAGAIN;
    }
    if (rc == SL_EIO) {
      refused(nc);
      return SL_EIO;
    }
  }
  return 0;
}

static size_t cb_data(struct sl_conn *c, const uint8_t *data, size_t len) {
  struct fwd_conn *nc = sl_conn_proto(c);
  size_t max = nc->fi->max_chunk, pos = 0, used;
  struct sl_codec_error err;
  struct sl_forward_frame f;
  char msg[160];
  int rc;
  while (pos < len && !sl_conn_is_closing(c)) {
    if (nc->frame_len == 0 && ack_backlog(nc) > ACK_BACKLOG) {
      nc->ack_full = 1; /* on_acks_written resumes */
      sl_conn_pause(c);
      break;
    }
    if (nc->frame_len == 0) {
      /* a frame that came in part is walked on from where it ended, so
       * one trickled in many reads is walked once */
      rc = sl_codec_skip_walk(data + pos, len - pos, max, &used, &err,
                              &nc->walk);
      if (rc == SL_EAGAIN && len - pos <= max)
        break;
      if (rc == SL_EAGAIN || rc == SL_E2BIG) {
        snprintf(msg, sizeof(msg), "frame larger than max_chunk_bytes (%zu)",
                 max);
        bad_input(nc, pos, msg);
        return pos;
      }
      if (rc != 0) {
        bad_input(nc, pos + err.offset, err.msg);
        return pos;
      }
      if (!nc->authed) {
        on_ping(nc, data + pos, used);
        pos += used;
        continue;
      }
      if (start_frame(nc, data + pos, used) != 0)
        return pos;
    }
    if (sl_forward_parse_frame(data + pos, nc->frame_len, &f, NULL) != 0)
      return pos; /* parsed by start_frame: cannot happen */
    rc = submit_frame(nc, &f);
    if (rc != 0)
      return pos; /* paused inside the frame, or closed */
    if (f.chunk.p && queue_ack(nc, f.chunk) != 0) {
      bad_input(nc, pos, "out of memory");
      return pos;
    }
    pos += nc->frame_len;
    nc->frame_len = 0;
    if (nc->inflated.cap > SL_CONN_FREE_BUFFER) {
      sl_buf_close(&nc->inflated); /* an idle conn holds no large buffer */
      sl_buf_init(&nc->inflated);
    }
    sl_framed_read_some(&nc->src); /* a frame may hold thousands of events */
  }
  sl_framed_read_done(&nc->src);
  send_acks(nc);
  return pos;
}

static void on_resume(struct sl_source *s) {
  struct fwd_conn *nc = container_of(s, struct fwd_conn, src);
  if (s->refused) {
    refused(nc);
    return;
  }
  sl_conn_resume(nc->conn); /* the frame goes on from entry_pos */
  send_acks(nc);
  close_if_drained(nc);
}

static void cb_eof(struct sl_conn *c, int status) {
  struct fwd_conn *nc = sl_conn_proto(c);
  if (nc->frame_len != 0)
    return;
  sl_framed_partial(nc->src.input, c, status,
                    "forward frame not complete within event_timeout_ms; "
                    "partial frame discarded",
                    "connection closed inside a forward frame; partial frame "
                    "discarded");
  /* the sender finished and waits for acks a disk buffer's sync holds
   * back, or that it has not read yet (written, not all taken by the
   * kernel): keep the conn until they are out (on_durable,
   * on_acks_written), then close it; closed at once, the queued acks were
   * dropped (231013 of 280000 chunks acked) and the sender would resend
   * what was taken */
  if (status == 0 && sl_conn_buffered(c) == 0 &&
      (nc->wait.waiting || sl_conn_pending_writes(c) > 0)) {
    nc->eof = 1;
    sl_conn_stop_reading(c);
  }
}

static void on_timer_closed(uv_handle_t *h) {
  struct fwd_conn *nc = h->data;
  sl_framed_free(&nc->fi->f, nc);
}

static void cb_close(struct sl_conn *c) {
  struct fwd_conn *nc = sl_conn_proto(c);
  sl_worker_undurable(&nc->wait);
  sl_framed_closing(&nc->fi->f, &nc->src);
  sl_buf_close(&nc->inflated);
  sl_buf_close(&nc->topic);
  sl_buf_close(&nc->pending);
  if (nc->timer_open)
    uv_close((uv_handle_t *)&nc->ping_timer, on_timer_closed);
  else
    sl_framed_free(&nc->fi->f, nc);
}

/* A sender that never answers HELO would hold its connection forever. */
static void on_ping_timeout(uv_timer_t *t) {
  struct fwd_conn *nc = t->data;
  char msg[120];
  if (nc->authed || sl_conn_is_closing(nc->conn))
    return;
  snprintf(msg, sizeof(msg), "no PING within event_timeout_ms (%u ms) of "
           "HELO", nc->fi->f.in->cfg->event_timeout_ms);
  sl_listener_count_timeout(nc->conn);
  bad_input(nc, 0, msg);
}

static const struct sl_conn_ops conn_ops = {
    .cb_data = cb_data,
    .cb_eof = cb_eof,
    .cb_close = cb_close,
};

static int on_accept(struct sl_framed *f, struct sl_conn *c) {
  struct fwd_in *fi = container_of(f, struct fwd_in, f);
  struct fwd_conn *nc = calloc(1, sizeof(*nc));
  if (nc == NULL)
    return SL_ENOMEM;
  sl_source_init(&nc->src, f->in, on_resume);
  nc->src.on_refused_later = on_refused_later;
  nc->wait.on_durable = on_durable;
  nc->conn = c;
  nc->fi = fi;
  nc->authed = fi->shared_key == NULL;
  sl_buf_init(&nc->inflated);
  sl_buf_init(&nc->topic);
  sl_buf_init(&nc->pending);
  sl_conn_set_ops(c, &conn_ops, nc);
  if (!nc->authed) {
    uv_timer_init(&f->in->w->loop, &nc->ping_timer);
    nc->ping_timer.data = nc;
    nc->timer_open = 1;
    uv_timer_start(&nc->ping_timer, on_ping_timeout,
                   f->in->cfg->event_timeout_ms, 0);
    send_helo(nc);
  }
  return 0;
}

/* ---- the input ------------------------------------------------------- */

static void settings(struct fwd_in *fi) {
  const struct sl_input_config *cfg = fi->f.in->cfg;
  const char *s;
  size_t n = sizeof(fi->hostname);
  fi->tag_prefix = sl_config_value_str(cfg->values, cfg->nvalues,
                                       "tag_prefix");
  if (fi->tag_prefix == NULL)
    fi->tag_prefix = "";
  fi->shared_key = sl_config_value_str(cfg->values, cfg->nvalues,
                                       "shared_key");
  fi->max_chunk = sl_config_value_num(cfg->values, cfg->nvalues,
                                      "max_chunk_bytes");
  s = sl_config_value_str(cfg->values, cfg->nvalues, "self_hostname");
  if (s)
    snprintf(fi->hostname, sizeof(fi->hostname), "%s", s);
  else if (uv_os_gethostname(fi->hostname, &n) != 0)
    snprintf(fi->hostname, sizeof(fi->hostname), "sluice");
}

static void on_free(struct sl_framed *f) {
  free(container_of(f, struct fwd_in, f));
}

static const struct sl_framed_ops framed_ops = {
    .cb_accept = on_accept,
    .cb_drained = is_drained,
    .cb_free = on_free,
};

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  struct fwd_in *fi = calloc(1, sizeof(*fi));
  if (fi == NULL)
    return SL_ENOMEM;
  sl_framed_init(&fi->f, in, &framed_ops);
  settings(fi);
  return sl_framed_listen(&fi->f, SL_ENDPOINT_TCP, fi->max_chunk + 65536, err,
                          errlen);
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = sl_framed_drain,
    .cb_busy = sl_framed_busy,
    .cb_stop = sl_framed_stop,
};

#define IN struct sl_input_config
static const struct sl_config_key keys[] = {
    {.name = "listen", .type = SL_KEY_ADDRESS,
     .doc = "\"host:port\" to accept Fluent forward connections on",
     .flags = SL_KEY_REQUIRED, SL_KEY_FIELD(IN, listen)},
    {.name = "tag_prefix", .type = SL_KEY_STRING,
     .doc = "put before each tag to make the event's topic; none: topic = "
            "tag"},
    {.name = "shared_key", .type = SL_KEY_STRING,
     .doc = "require the HELO/PING/PONG handshake with this key "
            "(${ENV} for a secret)"},
    {.name = "self_hostname", .type = SL_KEY_STRING,
     .doc = "the name PONG gives the sender; none: the host name"},
    {.name = "max_chunk_bytes", .type = SL_KEY_BYTES, .def = "8MiB",
     .doc = "largest frame, and largest its entries inflate to",
     .min = 1024, .max = 1ull << 30},
    {.name = "idle_timeout_ms", .type = SL_KEY_UINT, .def = "0",
     .doc = "close a connection idle this long; 0: never", .min = 100,
     .max = 86400000, SL_KEY_FIELD(IN, idle_timeout_ms)},
    {.name = "max_connections", .type = SL_KEY_UINT, .def = "1024",
     .doc = "connections open at once", .min = 1, .max = 1000000,
     SL_KEY_FIELD(IN, max_connections)},
    {.name = "event_timeout_ms", .type = SL_KEY_UINT, .def = "30000",
     .doc = "a begun frame must be complete within this, and with "
            "shared_key the PING must come within it of HELO",
     .min = 100,
     .max = 86400000, SL_KEY_FIELD(IN, event_timeout_ms)},
    {.name = "max_pending_bytes", .type = SL_KEY_BYTES, .def = "64MiB",
     .doc = "partial frames held over all connections", .min = 1,
     .max = 1ull << 40, SL_KEY_FIELD(IN, max_pending_bytes)},
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "serve TLS (mTLS with verify_peer); see the tls keys",
     SL_KEY_FIELD(IN, tls)},
    {0}};

const struct sl_plugin sl_input_forward = {
    .config = {.kind = SL_PLUGIN_INPUT, .type = "forward",
               .doc = "the Fluent forward protocol (Fluent Bit, Fluentd, "
               "fluent-logger)",
               .keys = keys},
    .input = &ops,
};
