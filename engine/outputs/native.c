/* native.c - the tcp and unix outputs: write events in the native protocol
 * (msgpack event maps back to back) to a peer, usually another sluice.
 * Reconnects with exponential backoff and full jitter while the peer is
 * away. Without acks a batch leaves the queue once the kernel took all of
 * it; with `ack = true` (the peer is a sluice) the output opens with the
 * hello {"sluice":1,"ack":true}, keeps writing ahead, and events leave the
 * queue only when the peer's running count says it accepted them. Whatever
 * was not confirmed when a connection broke is sent again after the
 * reconnect (at-least-once). A connect, a write or an ack that takes
 * longer than retry.timeout_ms counts as a failure, so a peer that stalls
 * is given up on like one that refuses. Writes, acks and failures are
 * reported to the core (sl_output_written, sl_output_done), which owns
 * batching, the backoff before each reconnect, the circuit breaker and
 * the dead letter. The connection, its watchdog and the write in flight
 * are worker/peer.c's; this file frames events and reads acks. */
#include <stdlib.h>
#include <string.h>

#include "peer.h"
#include "plugins.h"

struct native_out {
  struct sl_peer peer;    /* the conn, its watchdog, the write in flight */
  uint64_t acked;         /* the peer's running count on this connection */
};

/* Acks: msgpack unsigned integers, each the running count of events the
 * peer accepted on this connection. */
static size_t on_data(struct sl_peer *p, struct sl_conn *c,
                      const uint8_t *data, size_t len) {
  struct native_out *n = container_of(p, struct native_out, peer);
  size_t pos = 0, used;
  if (!p->ack)
    return len; /* nothing expected from a plain peer */
  /* an ack's done may end the connection (as forward's reader checks):
   * what follows belongs to no connection any more */
  while (pos < len && p->conn == c) {
    uint64_t count, k;
    const uint8_t *d = data + pos;
    if (sl_codec_skip(d, len - pos, 16, &used, NULL) != 0) {
      if (len - pos >= 16)
        goto bad;
      break;
    }
    if (sl_codec_read_uint(d, used, &count, &used) != 0)
      goto bad;
    pos += used;
    /* the peer may ack part of the write in flight before libuv reports
     * the write done (the ack is read first in the same loop turn) */
    if (count < n->acked || count - n->acked > p->o->q.inflight)
      goto bad;
    k = count - n->acked;
    n->acked = count;
    if (k) {
      sl_output_done(p->o, (uint32_t)k, SL_WRITE_OK, NULL);
      sl_peer_progress(p);
    }
  }
  return p->conn == c ? pos : len;
bad:
  sl_log(SL_LOG_ERROR, "output peer sent a bad ack; reconnecting",
         SL_S("output", p->o->cfg->name), SL_S("peer", sl_conn_peer(c)),
         SL_END);
  sl_peer_drop(p, UV_EPROTO, "the peer sent a bad ack");
  return len;
}

/* Ack mode opens with the hello {"sluice":1,"ack":true}. */
static int on_ready(struct sl_peer *p) {
  struct sl_buf hello;
  int rc;
  if (!p->ack)
    return 0;
  sl_buf_init(&hello);
  sl_codec_put_map(&hello, 2);
  sl_codec_put_str(&hello, "sluice", 6);
  sl_codec_put_uint(&hello, 1);
  sl_codec_put_str(&hello, "ack", 3);
  sl_codec_put_bool(&hello, 1);
  rc = sl_conn_write(p->conn, &hello, NULL, NULL);
  sl_buf_close(&hello);
  return rc;
}

static void on_lost(struct sl_peer *p) {
  container_of(p, struct native_out, peer)->acked = 0;
}

static void on_free(struct sl_peer *p) {
  free(container_of(p, struct native_out, peer));
}

static const struct sl_peer_ops peer_ops = {
    .up = "output peer connected",
    .down = "output peer unreachable; reconnecting with backoff",
    .unresolved = "output peer's host name does not resolve; retrying with "
                  "backoff",
    .handshake = "connect",
    .cb_ready = on_ready,
    .cb_data = on_data,
    .cb_lost = on_lost,
    .cb_free = on_free,
};

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  struct native_out *n = calloc(1, sizeof(*n));
  int tcp = strcmp(o->cfg->type, "tcp") == 0;
  if (n == NULL)
    return SL_ENOMEM;
  sl_peer_init(&n->peer, o, &peer_ops,
               tcp ? SL_ENDPOINT_TCP : SL_ENDPOINT_UNIX,
               tcp ? o->cfg->address : o->cfg->path, o->cfg->ack);
  /* what the peer takes: a sluice peer (ack mode says hello) allows the
   * headroom for what sluice added on the way */
  o->max_event_bytes =
      o->w->cfg->max_event_bytes + (o->cfg->ack ? SL_EVENT_HEADROOM : 0);
  o->max_event_note = o->cfg->ack
                          ? " plus headroom"
                          : "; ack = true allows headroom between sluices";
  return sl_peer_start(&n->peer, err, errlen);
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct sl_peer *p = o->data;
  uint32_t i;
  sl_buf_reset(&p->batch);
  for (i = 0; i < b->n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    if (sl_buf_append(&p->batch, ev->data, ev->len) != 0) {
      sl_output_done(o, 0, SL_WRITE_RETRY, "out of memory");
      return;
    }
  }
  sl_peer_write(p, b->n);
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_retry = sl_peer_retry,
    .cb_stop = sl_peer_stop,
    .cb_healthy = sl_peer_healthy,
};

#define NATIVE_KEYS                                                         \
  {.name = "ack", .type = SL_KEY_BOOL, .def = "false",                      \
   .doc = "wait for the peer's acks (the peer is a sluice)",               \
   SL_KEY_FIELD(struct sl_output_config, ack)},                            \
  {.name = "retry.timeout_ms", .type = SL_KEY_CORE, .def = "30000",         \
   .doc = "a connect, write or ack that takes longer fails; 0: none",      \
   .min = 0, .max = 3600000}

static const struct sl_config_key tcp_keys[] = {
    {.name = "address", .type = SL_KEY_PEER,
     .doc = "the peer, \"host:port\"; a host name is resolved again on "
            "each connect and each of its addresses is tried",
     .flags = SL_KEY_REQUIRED | SL_KEY_TOLERATED,
     SL_KEY_FIELD(struct sl_output_config, address)},
    NATIVE_KEYS,
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "connect over TLS (verifies the server); see the tls keys",
     SL_KEY_FIELD(struct sl_output_config, tls)},
    {0}};

static const struct sl_config_key unix_keys[] = {
    {.name = "path", .type = SL_KEY_PATH, .doc = "the peer's socket",
     .flags = SL_KEY_REQUIRED | SL_KEY_TOLERATED,
     SL_KEY_FIELD(struct sl_output_config, path)},
    NATIVE_KEYS,
    {0}};

const struct sl_plugin sl_output_tcp = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "tcp",
               .doc = "sends msgpack events to a sluice (or any peer) over TCP",
               .keys = tcp_keys},
    .output = &ops,
};

const struct sl_plugin sl_output_unix = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "unix",
               .doc = "sends msgpack events over a unix socket",
               .keys = unix_keys},
    .output = &ops,
};
