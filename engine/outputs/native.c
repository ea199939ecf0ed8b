/* native.c - the tcp and unix outputs: write events in the native protocol
 * (msgpack event maps back to back) to a peer, usually another sluice.
 * Reconnects with exponential backoff and full jitter while the peer is
 * away; a batch leaves the queue only after the kernel took all of it, and
 * a batch cut short by a broken connection is sent again after reconnect
 * (at-least-once). Owns its connection and reconnect timer. */
#include <stdlib.h>
#include <string.h>

#include "worker.h"

struct native_out {
  struct sl_output *o;
  struct sl_conn *conn;   /* NULL while disconnected */
  uv_timer_t reconnect;
  struct sl_buf batch;
  uint32_t nevents;       /* events in the write in flight */
  uint64_t nbytes;
  uint32_t backoff_ms;
  uint64_t rng;
  int connected;
  int closing;
  int was_down;           /* log the recovery once */
};

static void connect_now(struct native_out *n);

static const struct sl_conn_ops conn_ops;

static uint32_t jitter(struct native_out *n, uint32_t max) {
  n->rng ^= n->rng << 13;
  n->rng ^= n->rng >> 7;
  n->rng ^= n->rng << 17;
  return max ? (uint32_t)(n->rng % (max + 1)) : 0;
}

static void on_reconnect_timer(uv_timer_t *t) {
  struct native_out *n = t->data;
  connect_now(n);
}

static void schedule_reconnect(struct native_out *n) {
  const struct sl_retry_config *r = &n->o->cfg->retry;
  if (n->closing)
    return;
  n->backoff_ms = n->backoff_ms ? n->backoff_ms * 2 : r->initial_ms;
  if (n->backoff_ms > r->max_ms)
    n->backoff_ms = r->max_ms;
  /* full jitter: many senders do not reconnect in step */
  uv_timer_start(&n->reconnect, on_reconnect_timer, jitter(n, n->backoff_ms),
                 0);
}

static void lost(struct native_out *n, int status) {
  struct sl_output *o = n->o;
  if (n->connected || !n->was_down)
    sl_log(SL_LOG_WARN, "output peer unreachable; reconnecting with backoff",
           SL_S("output", o->cfg->name), SL_S("peer", n->conn ? n->conn->peer : ""),
           SL_S("error", status ? uv_strerror(status) : "closed by peer"), SL_END);
  n->was_down = 1;
  n->connected = 0;
  n->conn = NULL;
  /* what was in flight was not confirmed: it goes again */
  n->nevents = 0;
  o->q.inflight = 0;
  sl_buf_reset(&n->batch);
  o->stats.errors++;
  schedule_reconnect(n);
}

static size_t cb_data(struct sl_conn *c, const uint8_t *data, size_t len) {
  return len; /* the peer has nothing to say yet (acks come later) */
}

static void cb_eof(struct sl_conn *c, int status) {
  struct native_out *n = c->proto;
  if (n == NULL)
    return;
  c->proto = NULL;
  lost(n, status);
}

static void cb_connect(struct sl_conn *c, int status) {
  struct native_out *n = c->proto;
  if (n == NULL)
    return;
  if (status != 0) {
    c->proto = NULL;
    lost(n, status);
    return;
  }
  n->connected = 1;
  n->backoff_ms = 0;
  if (n->was_down)
    sl_log(SL_LOG_INFO, "output peer connected", SL_S("output", n->o->cfg->name),
           SL_S("peer", c->peer), SL_END);
  n->was_down = 0;
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
  if (n->closing || n->conn)
    return;
  n->conn = sl_conn_connect(&n->o->w->loop, tcp ? SL_CONN_TCP : SL_CONN_UNIX,
                            tcp ? cfg->address : cfg->path, &conn_ops, n);
  if (n->conn == NULL) {
    n->was_down = 1;
    schedule_reconnect(n);
  }
}

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  struct native_out *n = calloc(1, sizeof(*n));
  if (n == NULL)
    return SL_ENOMEM;
  n->o = o;
  n->rng = (uint64_t)sl_mono_ns() | 1;
  n->was_down = 1; /* the first connect is logged as well */
  sl_buf_init(&n->batch);
  uv_timer_init(&o->w->loop, &n->reconnect);
  n->reconnect.data = n;
  o->data = n;
  connect_now(n);
  return 0;
}

static void on_written(struct sl_conn *c, int status, void *arg) {
  /* a conn we let go of (stopped, or lost) has no proto: n may be gone */
  struct native_out *n = c->proto;
  (void)arg;
  if (n == NULL)
    return;
  if (status != 0) {
    c->proto = NULL;
    sl_conn_close(c);
    lost(n, status);
    return;
  }
  sl_output_delivered(n->o, n->nevents, n->nbytes);
  n->nevents = 0;
  if (n->o->q.count > 0)
    sl_output_kick(n->o);
}

static void cb_flush(struct sl_output *o) {
  struct native_out *n = o->data;
  uint32_t count, i;
  int rc;

  if (!n->connected || n->nevents || n->closing || o->q.count == 0)
    return;
  count = o->q.count < o->cfg->batch_events ? o->q.count : o->cfg->batch_events;
  sl_buf_reset(&n->batch);
  for (i = 0; i < count; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, i);
    if (sl_buf_append(&n->batch, ev->data, ev->len) != 0)
      break;
  }
  if (i == 0)
    return;
  n->nbytes = n->batch.len;
  rc = sl_conn_write(n->conn, &n->batch, on_written, n);
  if (rc != 0) {
    struct sl_conn *c = n->conn;
    c->proto = NULL;
    sl_conn_close(c);
    lost(n, rc);
    return;
  }
  n->nevents = i;
  o->q.inflight = i;
}

static void on_timer_closed(uv_handle_t *h) {
  struct native_out *n = h->data;
  struct sl_output *o = n->o;
  sl_buf_close(&n->batch);
  free(n);
  o->data = NULL;
  sl_output_stopped(o);
}

static void cb_stop(struct sl_output *o) {
  struct native_out *n = o->data;
  n->closing = 1;
  if (n->conn) {
    struct sl_conn *c = n->conn;
    c->proto = NULL;
    n->conn = NULL;
    sl_conn_close(c);
  }
  uv_close((uv_handle_t *)&n->reconnect, on_timer_closed);
}

static int cb_healthy(struct sl_output *o) {
  struct native_out *n = o->data;
  return n && n->connected;
}

const struct sl_output_ops sl_output_native_ops = {
    .type = "native",
    .cb_start = cb_start,
    .cb_flush = cb_flush,
    .cb_stop = cb_stop,
    .cb_healthy = cb_healthy,
};
