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
 * the dead letter. Owns its connection and watchdog timer. */
#include <stdlib.h>
#include <string.h>

#include "worker.h"
#include "plugins.h"
#include "tls.h"

struct native_out {
  struct sl_output *o;
  struct sl_conn *conn;   /* NULL while disconnected */
  struct sl_tls *tls;     /* tls = {...}: its context; NULL: plain */
  uv_timer_t watchdog;    /* retry.timeout_ms on what waits for the peer */
  struct sl_buf batch;
  uint32_t nevents;       /* events of the write in flight */
  int writing;            /* a write is in flight */
  int connected;
  int closing;
  int was_down;           /* log the recovery once */
  int down_logged;        /* the outage is logged (once, also at start) */
  int down_resolve;       /* what was logged: the name did not resolve */
  int ack;                /* ack mode */
  uint64_t acked;         /* the peer's running count on this connection */
};

static const struct sl_conn_ops conn_ops;

static void on_watchdog(uv_timer_t *t);

/* Keep a deadline on what waits for the peer (a connect, a write, acks):
 * restarted by each sign of progress, stopped when nothing waits. */
static void watch(struct native_out *n, int progress) {
  uint32_t ms = n->o->cfg->retry.timeout_ms;
  int waiting = n->conn && (!n->connected || n->writing || n->o->q.inflight);
  if (ms == 0 || n->closing)
    return;
  if (!waiting)
    uv_timer_stop(&n->watchdog);
  else if (progress || !uv_is_active((uv_handle_t *)&n->watchdog))
    uv_timer_start(&n->watchdog, on_watchdog, ms, 0);
}

/* error: what failed, or NULL for status's text. */
static void lost(struct native_out *n, int status, const char *error) {
  struct sl_output *o = n->o;
  char why[320];
  int resolve = !n->connected && sl_conn_resolve_error(status);
  if (resolve) {
    o->stats.resolve_failures++;
    snprintf(why, sizeof(why), "cannot resolve %s: %s", o->cfg->address,
             uv_strerror(status));
  } else {
    snprintf(why, sizeof(why), "%s",
             error ? error : status ? uv_strerror(status) : "closed by peer");
  }
  /* once per outage, and again when its cause turns from the name to the
   * peer or back: at most once per backoff, never a line per attempt */
  if (n->connected || !n->down_logged || resolve != n->down_resolve)
    sl_log(SL_LOG_WARN,
           resolve ? "output peer's host name does not resolve; retrying "
                     "with backoff"
                   : "output peer unreachable; reconnecting with backoff",
           SL_S("output", o->cfg->name),
           SL_S("peer", n->conn ? sl_conn_peer(n->conn) : ""),
           SL_S("error", why), SL_END);
  n->was_down = 1;
  n->down_logged = 1;
  n->down_resolve = resolve;
  n->connected = 0;
  n->conn = NULL;
  n->nevents = 0;
  n->writing = 0;
  n->acked = 0;
  sl_buf_reset(&n->batch);
  if (!n->closing)
    uv_timer_stop(&n->watchdog);
  /* a failed attempt: what was in flight was not confirmed and goes
   * again; the core calls cb_retry after its backoff */
  sl_output_done(o, 0, SL_WRITE_RETRY, why);
}

static void on_watchdog(uv_timer_t *t) {
  struct native_out *n = t->data;
  struct sl_conn *c = n->conn;
  char why[96];
  if (c == NULL || n->closing)
    return;
  snprintf(why, sizeof(why), "no answer from the peer within %u ms (%s)",
           n->o->cfg->retry.timeout_ms,
           !n->connected ? "connect" : n->writing ? "write" : "ack");
  sl_conn_set_proto(c, NULL);
  sl_conn_close(c);
  lost(n, UV_ETIMEDOUT, why);
}

/* Acks: msgpack unsigned integers, each the running count of events the
 * peer accepted on this connection. */
static size_t cb_data(struct sl_conn *c, const uint8_t *data, size_t len) {
  struct native_out *n = sl_conn_proto(c);
  size_t pos = 0, used;
  if (n == NULL || !n->ack)
    return len; /* nothing expected from a plain peer */
  while (pos < len) {
    uint64_t count, k;
    const uint8_t *p = data + pos;
    if (sl_codec_skip(p, len - pos, 16, &used, NULL) != 0) {
      if (len - pos >= 16)
        goto bad;
      break;
    }
    if (sl_codec_read_uint(p, used, &count, &used) != 0)
      goto bad;
    pos += used;
    /* the peer may ack part of the write in flight before libuv reports
     * the write done (the ack is read first in the same loop turn) */
    if (count < n->acked || count - n->acked > n->o->q.inflight)
      goto bad;
    k = count - n->acked;
    n->acked = count;
    if (k) {
      sl_output_done(n->o, (uint32_t)k, SL_WRITE_OK, NULL);
      watch(n, 1);
    }
  }
  return pos;
bad:
  sl_log(SL_LOG_ERROR, "output peer sent a bad ack; reconnecting",
         SL_S("output", n->o->cfg->name), SL_S("peer", sl_conn_peer(c)),
         SL_END);
  sl_conn_set_proto(c, NULL);
  sl_conn_close(c);
  lost(n, UV_EPROTO, "the peer sent a bad ack");
  return len;
}

static void cb_eof(struct sl_conn *c, int status) {
  struct native_out *n = sl_conn_proto(c);
  if (n == NULL)
    return;
  sl_conn_set_proto(c, NULL);
  lost(n, status, NULL);
}

static void cb_connect(struct sl_conn *c, int status) {
  struct native_out *n = sl_conn_proto(c);
  if (n == NULL)
    return;
  if (status != 0) {
    sl_conn_set_proto(c, NULL);
    lost(n, status, NULL);
    return;
  }
  n->connected = 1;
  if (n->was_down)
    sl_log(SL_LOG_INFO, "output peer connected",
           SL_S("output", n->o->cfg->name), SL_S("peer", sl_conn_peer(c)),
           SL_END);
  n->was_down = 0;
  n->down_logged = 0;
  n->down_resolve = 0;
  if (n->ack) {
    struct sl_buf hello;
    sl_buf_init(&hello);
    sl_codec_put_map(&hello, 2);
    sl_codec_put_str(&hello, "sluice", 6);
    sl_codec_put_uint(&hello, 1);
    sl_codec_put_str(&hello, "ack", 3);
    sl_codec_put_bool(&hello, 1);
    if (sl_conn_write(c, &hello, NULL, NULL) != 0) {
      sl_buf_close(&hello);
      sl_conn_set_proto(c, NULL);
      sl_conn_close(c);
      lost(n, UV_EIO, NULL);
      return;
    }
    sl_buf_close(&hello);
  }
  /* reachable with nothing to deliver is a success; with events waiting,
   * the first batch confirmed is (it is the breaker's probe) */
  if (n->o->q.count == 0)
    sl_output_reachable(n->o);
  watch(n, 1);
  sl_output_kick(n->o);
}

static const struct sl_conn_ops conn_ops = {
    .cb_data = cb_data,
    .cb_eof = cb_eof,
    .cb_connect = cb_connect,
};

static void connect_now(struct native_out *n) {
  const struct sl_output_config *cfg = n->o->cfg;
  int tcp = strcmp(cfg->type, "tcp") == 0;
  struct sl_endpoint ep;
  if (n->closing || n->conn)
    return;
  if (sl_endpoint_init(&ep, tcp ? SL_ENDPOINT_TCP : SL_ENDPOINT_UNIX,
                       tcp ? cfg->address : cfg->path, NULL, 0) == 0 &&
      sl_endpoint_set_tls(&ep, n->tls) == 0)
    n->conn = sl_conn_connect(&n->o->w->loop, &ep, &conn_ops, n);
  if (n->conn == NULL) {
    n->was_down = 1;
    sl_output_done(n->o, 0, SL_WRITE_RETRY, "cannot start a connection");
    return;
  }
  watch(n, 1);
}

static void cb_retry(struct sl_output *o) {
  struct native_out *n = o->data;
  if (n)
    connect_now(n);
}

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  struct native_out *n = calloc(1, sizeof(*n));
  if (n == NULL)
    return SL_ENOMEM;
  n->o = o;
  n->ack = o->cfg->ack;
  n->was_down = 1; /* the first connect is logged as well */
  sl_buf_init(&n->batch);
  uv_timer_init(&o->w->loop, &n->watchdog);
  n->watchdog.data = n;
  o->data = n;
  o->acks = n->ack;
  /* what the peer takes: a sluice peer (ack mode says hello) allows the
   * headroom for what sluice added on the way */
  o->max_event_bytes =
      o->w->cfg->max_event_bytes + (n->ack ? SL_EVENT_HEADROOM : 0);
  o->max_event_note = n->ack ? " plus headroom"
                             : "; ack = true allows headroom between sluices";
  if (o->cfg->tls.enabled &&
      (n->tls = sl_tls_new(&o->cfg->tls, 0, o->cfg->address, o->cfg->name,
                           err, errlen)) == NULL)
    return SL_EINVAL; /* cb_stop frees n */
  connect_now(n);
  return 0;
}

static void on_written(struct sl_conn *c, int status, void *arg) {
  /* a conn we let go of (stopped, or lost) has no proto: n may be gone */
  struct native_out *n = sl_conn_proto(c);
  (void)arg;
  if (n == NULL)
    return;
  if (status != 0) {
    sl_conn_set_proto(c, NULL);
    sl_conn_close(c);
    lost(n, status, NULL);
    return;
  }
  n->writing = 0;
  if (n->ack)
    sl_output_written(n->o); /* they leave with the peer's ack */
  else
    sl_output_done(n->o, n->nevents, SL_WRITE_OK, NULL);
  n->nevents = 0;
  watch(n, 1);
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct native_out *n = o->data;
  uint32_t i;
  int rc;

  sl_buf_reset(&n->batch);
  for (i = 0; i < b->n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    if (sl_buf_append(&n->batch, ev->data, ev->len) != 0) {
      sl_output_done(o, 0, SL_WRITE_RETRY, "out of memory");
      return;
    }
  }
  n->nevents = b->n;
  n->writing = 1;
  rc = sl_conn_write(n->conn, &n->batch, on_written, n);
  if (rc != 0) {
    struct sl_conn *c = n->conn;
    sl_conn_set_proto(c, NULL);
    sl_conn_close(c);
    lost(n, rc, NULL);
    return;
  }
  watch(n, 0);
}

static void on_timer_closed(uv_handle_t *h) {
  struct native_out *n = h->data;
  struct sl_output *o = n->o;
  sl_buf_close(&n->batch);
  sl_tls_free(n->tls);
  free(n);
  o->data = NULL;
  sl_output_stopped(o);
}

static void cb_stop(struct sl_output *o) {
  struct native_out *n = o->data;
  n->closing = 1;
  if (n->conn) {
    struct sl_conn *c = n->conn;
    sl_conn_set_proto(c, NULL);
    n->conn = NULL;
    sl_conn_close(c);
  }
  uv_close((uv_handle_t *)&n->watchdog, on_timer_closed);
}

static int cb_healthy(struct sl_output *o) {
  struct native_out *n = o->data;
  return n && n->connected && !n->closing;
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_retry = cb_retry,
    .cb_stop = cb_stop,
    .cb_healthy = cb_healthy,
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
    {NULL}};

static const struct sl_config_key unix_keys[] = {
    {.name = "path", .type = SL_KEY_PATH, .doc = "the peer's socket",
     .flags = SL_KEY_REQUIRED | SL_KEY_TOLERATED,
     SL_KEY_FIELD(struct sl_output_config, path)},
    NATIVE_KEYS,
    {NULL}};

const struct sl_plugin sl_output_tcp = {
    .config = {SL_PLUGIN_OUTPUT, "tcp",
               "sends msgpack events to a sluice (or any peer) over TCP",
               tcp_keys},
    .output = &ops,
};

const struct sl_plugin sl_output_unix = {
    .config = {SL_PLUGIN_OUTPUT, "unix",
               "sends msgpack events over a unix socket", unix_keys},
    .output = &ops,
};
