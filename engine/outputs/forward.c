/* forward.c - the forward output: events to a Fluent forward v1 peer
 * (Fluentd, Fluent Bit, another sluice) as PackedForward frames, one per
 * run of events with the same topic (the tag), each with a chunk id. With
 * `require_ack = true` (the default) events leave the queue only when the peer
 * answers {"ack": chunk}; a connection that breaks, or an ack that does
 * not come within retry.timeout_ms, sends every unconfirmed frame again
 * after the reconnect (at least once: a lost ack means duplicates). Entry
 * time is EventTime (ns kept); the record is the payload when it is a map,
 * else {"payload": value}. Optional gzip (CompressedPackedForward), the
 * shared-key handshake as client, and TLS. Reports to the output core
 * (sl_output_written, sl_output_done), which owns batching and backoff.
 * The connection, its watchdog and the write in flight are worker/peer.c's;
 * this file frames events, answers the handshake and reads acks. */
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "peer.h"
#include "plugins.h"

/* A frame written and not yet acked. */
struct fwd_chunk {
  char id[25];
  uint32_t events;
};

enum fwd_state {
  FS_DOWN = 0,   /* no conn, or connecting */
  FS_HELO,       /* connected; waiting for HELO (shared_key) */
  FS_PONG,       /* PING sent; waiting for PONG */
  FS_READY       /* writes go (peer.ready) */
};

struct fwd_out {
  struct sl_peer peer;    /* the conn, its watchdog, the write in flight
                             (peer.batch: its frames) */
  struct sl_buf entries;  /* one frame's entries, before gzip */
  struct sl_buf zipped;
  struct fwd_chunk *chunks; /* unacked frames, oldest first */
  uint32_t nchunks, capchunks;
  enum fwd_state state;
  int gzip;
  const char *shared_key; /* NULL: no handshake */
  char hostname[256];     /* self_hostname, sent in PING */
  char salt[33];          /* this connection's PING salt (hex) */
  struct sl_str nonce;    /* from HELO, copied into nonce_buf */
  uint8_t nonce_buf[256];
  size_t max_chunk;       /* entries per frame, before gzip */
};

static struct fwd_out *fwd(struct sl_peer *p) {
  return container_of(p, struct fwd_out, peer);
}

/* ---- the handshake as client ------------------------------------------ */

/* ["HELO", {"nonce": ..., "auth": ..., "keepalive": ...}]: answer PING.
 * User auth (a non-empty auth salt) is not supported. */
static int on_helo(struct fwd_out *n, const uint8_t *p, size_t len) {
  struct sl_str word, nonce, auth = {"", 0}, part[4];
  const uint8_t *v;
  size_t pos, used, vlen;
  uint32_t count;
  uint8_t raw[16];
  char digest[129];
  struct sl_buf b;
  int i, rc;
  if (sl_codec_read_array(p, len, &count, &pos) != 0 || count != 2 ||
      sl_codec_read_str(p + pos, len - pos, &word, &used) != 0 ||
      word.len != 4 || memcmp(word.p, "HELO", 4) != 0)
    return SL_EPROTO;
  pos += used;
  if (sl_codec_map_find(p + pos, len - pos, "nonce", 5, &v, &vlen) != 0 ||
      sl_codec_read_strbin(v, vlen, &nonce, &used) != 0 ||
      nonce.len > sizeof(n->nonce_buf))
    return SL_EPROTO;
  if (sl_codec_map_find(p + pos, len - pos, "auth", 4, &v, &vlen) == 0 &&
      sl_codec_read_strbin(v, vlen, &auth, &used) == 0 && auth.len > 0)
    return SL_ENOENT;
  memcpy(n->nonce_buf, nonce.p, nonce.len);
  n->nonce.p = (const char *)n->nonce_buf;
  n->nonce.len = nonce.len;
  if (sl_forward_random(raw) != 0)
    return SL_EIO;
  for (i = 0; i < 16; i++)
    snprintf(n->salt + 2 * i, 3, "%02x", raw[i]);
  part[0].p = n->salt;
  part[0].len = 32;
  part[1].p = n->hostname;
  part[1].len = (uint32_t)strlen(n->hostname);
  part[2] = n->nonce;
  part[3].p = n->shared_key;
  part[3].len = (uint32_t)strlen(n->shared_key);
  if (sl_forward_digest(digest, part, 4) != 0)
    return SL_ENOMEM;
  sl_buf_init(&b);
  rc = sl_codec_put_array(&b, 6) || sl_codec_put_str(&b, "PING", 4) ||
       sl_codec_put_str(&b, part[1].p, part[1].len) ||
       sl_codec_put_str(&b, n->salt, 32) ||
       sl_codec_put_str(&b, digest, 128) || sl_codec_put_str(&b, "", 0) ||
       sl_codec_put_str(&b, "", 0)
           ? SL_ENOMEM
           : sl_conn_write(n->peer.conn, &b, NULL, NULL);
  sl_buf_close(&b);
  if (rc == 0)
    n->state = FS_PONG;
  return rc;
}

/* ["PONG", ok, reason, server_hostname, hex(sha512(salt + server_hostname
 * + nonce + shared_key))]: the peer knows the key too. */
static int on_pong(struct fwd_out *n, const uint8_t *p, size_t len,
                   char *why, size_t whylen) {
  struct sl_str word, reason, host, digest, part[4];
  size_t pos, used;
  uint32_t count;
  int ok;
  char want[129];
  snprintf(why, whylen, "the peer's PONG is malformed");
  if (sl_codec_read_array(p, len, &count, &pos) != 0 || count != 5 ||
      sl_codec_read_str(p + pos, len - pos, &word, &used) != 0 ||
      word.len != 4 || memcmp(word.p, "PONG", 4) != 0)
    return SL_EPROTO;
  pos += used;
  if (sl_codec_read_bool(p + pos, len - pos, &ok, &used) != 0)
    return SL_EPROTO;
  pos += used;
  if (!ok) {
    if (sl_codec_read_str(p + pos, len - pos, &reason, &used) != 0)
      reason.p = "", reason.len = 0;
    snprintf(why, whylen, "the peer refused the shared key handshake: %.*s",
             (int)(reason.len > 200 ? 200 : reason.len), reason.p);
    return SL_EPROTO;
  }
  if (sl_codec_read_str(p + pos, len - pos, &reason, &used) != 0)
    return SL_EPROTO;
  pos += used;
  if (sl_codec_read_str(p + pos, len - pos, &host, &used) != 0)
    return SL_EPROTO;
  pos += used;
  if (sl_codec_read_str(p + pos, len - pos, &digest, &used) != 0)
    return SL_EPROTO;
  part[0].p = n->salt;
  part[0].len = 32;
  part[1] = host;
  part[2] = n->nonce;
  part[3].p = n->shared_key;
  part[3].len = (uint32_t)strlen(n->shared_key);
  if (sl_forward_digest(want, part, 4) != 0)
    return SL_ENOMEM;
  if (digest.len != 128 || !sl_forward_digest_equal(want, digest.p, 128)) {
    snprintf(why, whylen, "the peer's PONG digest does not match shared_key");
    return SL_EPROTO;
  }
  return 0;
}

/* ---- acks --------------------------------------------------------------- */

/* {"ack": chunk}: the oldest unacked frame's id, or the peer is not
 * answering what we sent. */
static int on_ack(struct fwd_out *n, const uint8_t *p, size_t len) {
  const uint8_t *v;
  size_t vlen, used;
  struct sl_str id;
  uint32_t k;
  if (sl_codec_map_find(p, len, "ack", 3, &v, &vlen) != 0 ||
      sl_codec_read_str(v, vlen, &id, &used) != 0 || n->nchunks == 0 ||
      id.len != strlen(n->chunks[0].id) ||
      memcmp(id.p, n->chunks[0].id, id.len) != 0)
    return SL_EPROTO;
  k = n->chunks[0].events;
  memmove(n->chunks, n->chunks + 1, (n->nchunks - 1) * sizeof(*n->chunks));
  n->nchunks--;
  sl_output_done(n->peer.o, k, SL_WRITE_OK, NULL);
  sl_peer_progress(&n->peer);
  return 0;
}

static size_t on_data(struct sl_peer *p, struct sl_conn *c,
                      const uint8_t *data, size_t len) {
  struct fwd_out *n = fwd(p);
  size_t pos = 0, used;
  char why[300];
  int rc;
  while (pos < len && p->conn == c) {
    rc = sl_codec_skip(data + pos, len - pos, 4096, &used, NULL);
    if (rc == SL_EAGAIN && len - pos < 4096)
      break;
    snprintf(why, sizeof(why), "the peer sent a bad %s",
             p->ready ? "ack" : "handshake message");
    if (rc == 0) {
      if (n->state == FS_HELO) {
        rc = on_helo(n, data + pos, used);
        if (rc == SL_ENOENT)
          snprintf(why, sizeof(why), "the peer asks for user "
                   "authentication, which is not supported");
      } else if (n->state == FS_PONG) {
        rc = on_pong(n, data + pos, used, why, sizeof(why));
        if (rc == 0) {
          n->state = FS_READY;
          sl_peer_ready(p);
        }
      } else if (p->ack) {
        rc = on_ack(n, data + pos, used);
      }
    }
    if (rc != 0) {
      sl_log(SL_LOG_ERROR, "forward peer misbehaves; reconnecting",
             SL_S("output", p->o->cfg->name), SL_S("peer", sl_conn_peer(c)),
             SL_S("error", why), SL_END);
      sl_peer_drop(p, UV_EPROTO, why);
      return len;
    }
    pos += used;
  }
  return pos;
}

/* With a shared_key the peer speaks first (HELO). */
static int on_connected(struct sl_peer *p) {
  struct fwd_out *n = fwd(p);
  n->state = n->shared_key ? FS_HELO : FS_READY;
  return n->state == FS_HELO;
}

static void on_lost(struct sl_peer *p) {
  fwd(p)->state = FS_DOWN;
  fwd(p)->nchunks = 0;
}

static void on_free(struct sl_peer *p) {
  struct fwd_out *n = fwd(p);
  sl_buf_close(&n->entries);
  sl_buf_close(&n->zipped);
  free(n->chunks);
  free(n);
}

static const struct sl_peer_ops peer_ops = {
    .up = "forward peer connected",
    .down = "forward peer unreachable; reconnecting with backoff",
    .handshake = "connect or handshake",
    .cb_connected = on_connected,
    .cb_data = on_data,
    .cb_lost = on_lost,
    .cb_free = on_free,
};

/* ---- writes -------------------------------------------------------------- */

/* [time, record] for ev: EventTime keeps the ns; a payload that is not a
 * map is wrapped as {"payload": value}. */
static int put_entry(struct sl_buf *b, const struct sl_event *ev) {
  int64_t t = ev->time, sec = t / 1000000000, ns = t % 1000000000;
  uint8_t et[8];
  uint32_t count;
  size_t used;
  const uint8_t *pl = ev->data + ev->payload_off;
  if (ns < 0)
    sec--, ns += 1000000000;
  et[0] = (uint8_t)(sec >> 24), et[1] = (uint8_t)(sec >> 16);
  et[2] = (uint8_t)(sec >> 8), et[3] = (uint8_t)sec;
  et[4] = (uint8_t)(ns >> 24), et[5] = (uint8_t)(ns >> 16);
  et[6] = (uint8_t)(ns >> 8), et[7] = (uint8_t)ns;
  if (sl_codec_put_array(b, 2) || sl_codec_put_ext(b, 0, et, 8))
    return SL_ENOMEM;
  if (ev->payload_len && sl_codec_read_map(pl, ev->payload_len, &count,
                                           &used) == 0)
    return sl_buf_append(b, pl, ev->payload_len);
  if (ev->payload_len == 0)
    return sl_codec_put_map(b, 0);
  if (sl_codec_put_map(b, 1) || sl_codec_put_str(b, "payload", 7))
    return SL_ENOMEM;
  return sl_buf_append(b, pl, ev->payload_len);
}

/* Append one frame of events [from, to) of the batch (same topic). */
static int put_frame(struct fwd_out *n, const struct sl_batch *b,
                     uint32_t from, uint32_t to) {
  struct sl_output *o = n->peer.o;
  struct sl_buf *out = &n->peer.batch;
  struct sl_event *first = sl_queue_at(&o->q, b->first + from);
  struct sl_str tag = sl_event_topic(first);
  struct sl_buf *body = &n->entries;
  struct fwd_chunk *ch;
  uint32_t i;
  sl_buf_reset(&n->entries);
  for (i = from; i < to; i++)
    if (put_entry(&n->entries, sl_queue_at(&o->q, b->first + i)) != 0)
      return SL_ENOMEM;
  if (n->gzip) {
    sl_buf_reset(&n->zipped);
    if (sl_forward_gzip(n->entries.data, n->entries.len, &n->zipped) != 0)
      return SL_ENOMEM;
    body = &n->zipped;
  }
  if (n->nchunks == n->capchunks) {
    uint32_t cap = n->capchunks ? n->capchunks * 2 : 16;
    struct fwd_chunk *p = realloc(n->chunks, cap * sizeof(*p));
    if (p == NULL)
      return SL_ENOMEM;
    n->chunks = p;
    n->capchunks = cap;
  }
  ch = &n->chunks[n->nchunks];
  if (sl_forward_chunk_id(ch->id) != 0)
    return SL_EIO;
  ch->events = to - from;
  if (sl_codec_put_array(out, 3) || sl_codec_put_str(out, tag.p, tag.len) ||
      sl_codec_put_bin(out, body->data, body->len) ||
      sl_codec_put_map(out, 2 + (n->peer.ack ? 1 : 0)) ||
      sl_codec_put_str(out, "size", 4) ||
      sl_codec_put_uint(out, to - from) ||
      sl_codec_put_str(out, "compressed", 10) ||
      sl_codec_put_str(out, n->gzip ? "gzip" : "text", 4))
    return SL_ENOMEM;
  if (n->peer.ack && (sl_codec_put_str(out, "chunk", 5) ||
                      sl_codec_put_str(out, ch->id, strlen(ch->id))))
    return SL_ENOMEM;
  if (n->peer.ack)
    n->nchunks++;
  return 0;
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct fwd_out *n = fwd(o->data);
  uint32_t i, from = 0;
  size_t bytes = 0;
  sl_buf_reset(&n->peer.batch);
  for (i = 0; i < b->n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    struct sl_event *prev = i ? sl_queue_at(&o->q, b->first + i - 1) : ev;
    struct sl_str t = sl_event_topic(ev), pt = sl_event_topic(prev);
    if (i > from && (t.len != pt.len || memcmp(t.p, pt.p, t.len) != 0 ||
                     bytes + ev->payload_len + 32 > n->max_chunk)) {
      if (put_frame(n, b, from, i) != 0)
        goto nomem;
      from = i;
      bytes = 0;
    }
    bytes += ev->payload_len + 32;
  }
  if (put_frame(n, b, from, b->n) != 0)
    goto nomem;
  sl_peer_write(&n->peer, b->n);
  return;
nomem:
  sl_peer_drop(&n->peer, UV_ENOMEM, "out of memory building a frame");
}

/* ---- the output ------------------------------------------------------- */

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  const struct sl_output_config *cfg = o->cfg;
  struct fwd_out *n = calloc(1, sizeof(*n));
  const char *s;
  size_t len = sizeof(n->hostname);
  if (n == NULL)
    return SL_ENOMEM;
  sl_peer_init(&n->peer, o, &peer_ops, SL_ENDPOINT_TCP, cfg->address,
               sl_config_value_num(cfg->values, cfg->nvalues,
                                   "require_ack") == 1);
  n->gzip = sl_config_value_num(cfg->values, cfg->nvalues, "compress") == 1;
  n->shared_key = sl_config_value_str(cfg->values, cfg->nvalues,
                                      "shared_key");
  n->max_chunk = sl_config_value_num(cfg->values, cfg->nvalues,
                                     "max_chunk_bytes");
  s = sl_config_value_str(cfg->values, cfg->nvalues, "self_hostname");
  if (s)
    snprintf(n->hostname, sizeof(n->hostname), "%s", s);
  else if (uv_os_gethostname(n->hostname, &len) != 0)
    snprintf(n->hostname, sizeof(n->hostname), "sluice");
  sl_buf_init(&n->entries);
  sl_buf_init(&n->zipped);
  o->max_event_bytes = o->w->cfg->max_event_bytes;
  o->max_event_note = " (the record a forward peer takes)";
  return sl_peer_start(&n->peer, err, errlen);
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_retry = sl_peer_retry,
    .cb_stop = sl_peer_stop,
    .cb_healthy = sl_peer_healthy,
};

static const char *const compress_choices[] = {"none", "gzip", NULL};
static const int compress_values[] = {0, 1};

static const struct sl_config_key keys[] = {
    {.name = "address", .type = SL_KEY_PEER,
     .doc = "the forward peer, \"host:port\" (Fluentd, Fluent Bit, a "
            "sluice forward input)",
     .flags = SL_KEY_REQUIRED, SL_KEY_FIELD(struct sl_output_config, address)},
    {.name = "require_ack", .type = SL_KEY_BOOL, .def = "true",
     .doc = "send each frame with a chunk id; events are delivered when the "
            "peer acks it (false: once written)"},
    {.name = "compress", .type = SL_KEY_ENUM, .def = "none",
     .doc = "gzip: CompressedPackedForward", .choices = compress_choices,
     .values = compress_values},
    {.name = "shared_key", .type = SL_KEY_STRING,
     .doc = "answer the peer's HELO with this key (${ENV} for a secret)"},
    {.name = "self_hostname", .type = SL_KEY_STRING,
     .doc = "the name PING gives the peer; none: the host name"},
    {.name = "max_chunk_bytes", .type = SL_KEY_BYTES, .def = "4MiB",
     .doc = "a frame's entries, before gzip, stay about under this",
     .min = 1024, .max = 1ull << 30},
    {.name = "retry.timeout_ms", .type = SL_KEY_CORE, .def = "30000",
     .doc = "a connect, handshake, write or ack that takes longer fails; "
            "0: none",
     .min = 0, .max = 3600000},
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "connect over TLS (verifies the server); see the tls keys",
     SL_KEY_FIELD(struct sl_output_config, tls)},
    {0}};

const struct sl_plugin sl_output_forward = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "forward",
               .doc = "sends events to a Fluent forward peer as PackedForward with "
               "acks",
               .keys = keys},
    .output = &ops,
};
