/* peer.c - an output's client connection to its peer: see peer.h. */
#include "peer.h"

#include <stdio.h>
#include <stdlib.h>

#include "tls.h"
#include "worker.h"

static const struct sl_conn_ops conn_ops;

static void on_watchdog(uv_timer_t *t);

/* Keep a deadline on what waits for the peer (a connect, a handshake, a
 * write, acks): restarted by each sign of progress, stopped when nothing
 * waits. */
static void watch(struct sl_peer *p, int progress) {
  uint32_t ms = p->o->cfg->retry.timeout_ms;
  int waiting = p->conn && (!p->ready || p->writing || p->o->q.inflight);
  if (ms == 0 || p->closing || p->write_error)
    return; /* a failed write's drop keeps the timer */
  if (!waiting) {
    uv_timer_stop(&p->watchdog);
  } else if (progress || !uv_is_active((uv_handle_t *)&p->watchdog)) {
    p->watch_grace = 0;
    uv_timer_start(&p->watchdog, on_watchdog, ms, 0);
  }
}

void sl_peer_progress(struct sl_peer *p) { watch(p, 1); }

/* The conn is gone (or given up): everything unconfirmed goes again after
 * the core's backoff. error: what failed, or NULL for status's text. */
static void lost(struct sl_peer *p, int status, const char *error) {
  struct sl_output *o = p->o;
  char why[320];
  int resolve = !p->ready && sl_conn_resolve_error(status);
  int cause = resolve && p->ops->unresolved;
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
  if (p->ready || !p->down_logged || cause != p->down_resolve)
    sl_log(SL_LOG_WARN, cause ? p->ops->unresolved : p->ops->down,
           SL_S("output", o->cfg->name),
           SL_S("peer", p->conn ? sl_conn_peer(p->conn) : p->address),
           SL_S("error", why), SL_END);
  p->was_down = 1;
  p->down_logged = 1;
  p->down_resolve = cause;
  p->ready = 0;
  p->conn = NULL;
  p->nevents = 0;
  p->writing = 0;
  p->write_error = 0;
  sl_buf_reset(&p->batch);
  if (p->ops->cb_lost)
    p->ops->cb_lost(p);
  if (!p->closing)
    uv_timer_stop(&p->watchdog);
  sl_output_done(o, 0, SL_WRITE_RETRY, why);
}

void sl_peer_drop(struct sl_peer *p, int status, const char *error) {
  struct sl_conn *c = p->conn;
  if (c) {
    sl_conn_set_proto(c, NULL);
    sl_conn_close(c);
  }
  lost(p, status, error);
}

static void on_watchdog(uv_timer_t *t) {
  struct sl_peer *p = t->data;
  char why[96];
  if (p->conn == NULL || p->closing)
    return;
  /* libuv runs due timers before it polls: after a turn that kept the
   * loop busy past the deadline (a slow disk write, a loaded machine) the
   * answer may be in the socket unread. Poll once more (a 1 ms timer lets
   * the next poll run first; 0 would fire again at once) and give up only
   * if that brought nothing. */
  if (!p->watch_grace) {
    p->watch_grace = 1;
    uv_timer_start(&p->watchdog, on_watchdog, 1, 0);
    return;
  }
  if (p->write_error) {
    sl_peer_drop(p, p->write_error, NULL);
    return;
  }
  snprintf(why, sizeof(why), "no answer from the peer within %u ms (%s)",
           p->o->cfg->retry.timeout_ms,
           !p->ready ? p->ops->handshake : p->writing ? "write" : "ack");
  sl_peer_drop(p, UV_ETIMEDOUT, why);
}

void sl_peer_ready(struct sl_peer *p) {
  p->ready = 1;
  if (p->was_down)
    sl_log(SL_LOG_INFO, p->ops->up, SL_S("output", p->o->cfg->name),
           SL_S("peer", sl_conn_peer(p->conn)), SL_END);
  p->was_down = 0;
  p->down_logged = 0;
  p->down_resolve = 0;
  if (p->ops->cb_ready && p->ops->cb_ready(p) != 0) {
    sl_peer_drop(p, UV_EIO, NULL);
    return;
  }
  /* reachable with nothing to deliver is a success; with events waiting,
   * the first batch confirmed is (it is the breaker's probe) */
  if (p->o->q.count == 0)
    sl_output_reachable(p->o);
  watch(p, 1);
  sl_output_kick(p->o);
}

/* ---- the conn's callbacks ------------------------------------------------ */

static size_t cb_data(struct sl_conn *c, const uint8_t *data, size_t len) {
  struct sl_peer *p = sl_conn_proto(c);
  if (p == NULL)
    return len;
  return p->ops->cb_data(p, c, data, len);
}

static void cb_eof(struct sl_conn *c, int status) {
  struct sl_peer *p = sl_conn_proto(c);
  if (p == NULL)
    return;
  sl_conn_set_proto(c, NULL);
  lost(p, status, NULL);
}

static void cb_connect(struct sl_conn *c, int status) {
  struct sl_peer *p = sl_conn_proto(c);
  if (p == NULL)
    return;
  if (status != 0) {
    sl_conn_set_proto(c, NULL);
    lost(p, status, NULL);
    return;
  }
  if (p->ops->cb_connected && p->ops->cb_connected(p) != 0) {
    watch(p, 1); /* the handshake: the peer speaks first */
    return;
  }
  sl_peer_ready(p);
}

static const struct sl_conn_ops conn_ops = {
    .cb_data = cb_data,
    .cb_eof = cb_eof,
    .cb_connect = cb_connect,
};

static void connect_now(struct sl_peer *p) {
  struct sl_endpoint ep;
  char why[160];
  int rc;
  if (p->closing || p->conn)
    return;
  rc = sl_endpoint_init(&ep, p->kind, p->address, NULL, 0);
  if (rc == 0)
    rc = sl_endpoint_set_tls(&ep, p->tls);
  if (rc == 0)
    p->conn = sl_conn_connect(&p->o->w->loop, &ep, &conn_ops, p, &rc);
  if (p->conn == NULL) {
    /* as a connect that failed later: logged once per outage, with why
     * (no fd for the socket, most often) */
    snprintf(why, sizeof(why), "cannot start a connection: %s",
             uv_strerror(rc));
    lost(p, rc, why);
    return;
  }
  watch(p, 1);
}

/* ---- writes -------------------------------------------------------------- */

static void written(struct sl_peer *p) {
  p->writing = 0;
  if (p->ack)
    sl_output_written(p->o); /* they leave with the peer's acks */
  else
    sl_output_done(p->o, p->nevents, SL_WRITE_OK, NULL);
  p->nevents = 0;
  watch(p, 1);
}

static void on_written(struct sl_conn *c, int status, void *arg) {
  /* a conn we let go of (stopped, or lost) has no proto: p may be gone */
  struct sl_peer *p = sl_conn_proto(c);
  (void)arg;
  if (p == NULL)
    return;
  if (status != 0 && p->ack) {
    /* the peer reset the connection: the acks it sent before the reset
     * are still in the socket, but libuv reports a failed write before it
     * polls again. Dropping now lost them, and the events they confirmed
     * went again (or to the dead letter). Let the read side take them and
     * the reset (cb_eof drops); else the watchdog drops, after its poll. */
    p->write_error = status;
    p->watch_grace = 0;
    uv_timer_start(&p->watchdog, on_watchdog, 0, 0);
    return;
  }
  if (status != 0) {
    sl_peer_drop(p, status, NULL);
    return;
  }
  written(p);
}

/* What the kernel takes now is written at once, and a batch it takes
 * whole is reported done here: the core then hands out the next in the
 * same loop turn. Through libuv alone the report waits for the next turn,
 * one batch a turn, while the input reads up to 32 times a turn: under
 * load the queue filled to its limit and every event waited in it. */
void sl_peer_write(struct sl_peer *p, uint32_t nevents) {
  int rc;
  p->nevents = nevents;
  p->writing = 1;
  rc = sl_conn_try_write(p->conn, p->batch.data, p->batch.len);
  if (rc > 0 && (size_t)rc == p->batch.len) {
    sl_buf_reset(&p->batch);
    written(p);
    return;
  }
  /* a failure (the peer reset) is left to the queued write, whose callback
   * reports it in a later turn: dropping here, inside whatever handed out
   * this batch (a native ack's callback, whose room woke the input), reset
   * the conn's ack count under the acks still to be read, and they popped
   * events nobody acked */
  if (rc > 0)
    sl_buf_consume(&p->batch, (size_t)rc);
  rc = sl_conn_write(p->conn, &p->batch, on_written, p);
  if (rc != 0) {
    sl_peer_drop(p, rc, NULL);
    return;
  }
  watch(p, 0);
}

/* ---- the output's lifecycle ---------------------------------------------- */

void sl_peer_init(struct sl_peer *p, struct sl_output *o,
                  const struct sl_peer_ops *ops, enum sl_endpoint_kind kind,
                  const char *address, int ack) {
  p->o = o;
  p->ops = ops;
  p->kind = kind;
  p->address = address;
  p->ack = ack;
  p->was_down = 1; /* the first connect is logged as well */
  sl_buf_init(&p->batch);
  uv_timer_init(&o->w->loop, &p->watchdog);
  p->watchdog.data = p;
  o->data = p;
  o->acks = ack;
}

int sl_peer_start(struct sl_peer *p, char *err, size_t errlen) {
  const struct sl_output_config *cfg = p->o->cfg;
  if (cfg->tls.enabled &&
      (p->tls = sl_tls_new(&cfg->tls, 0, cfg->address, cfg->name, err,
                           errlen)) == NULL) {
    /* the core never stops an output whose start failed (a reload that
     * refuses a bad certificate): free p once its timer has closed */
    sl_peer_stop(p->o);
    return SL_EINVAL;
  }
  connect_now(p);
  return 0;
}

void sl_peer_retry(struct sl_output *o) {
  struct sl_peer *p = o->data;
  if (p)
    connect_now(p);
}

static void on_timer_closed(uv_handle_t *h) {
  struct sl_peer *p = h->data;
  struct sl_output *o = p->o;
  sl_buf_close(&p->batch);
  sl_tls_free(p->tls);
  p->ops->cb_free(p);
  o->data = NULL;
  sl_output_stopped(o);
}

void sl_peer_stop(struct sl_output *o) {
  struct sl_peer *p = o->data;
  if (p == NULL) { /* cb_start ran out of memory */
    sl_output_stopped(o);
    return;
  }
  p->closing = 1;
  if (p->conn) {
    struct sl_conn *c = p->conn;
    sl_conn_set_proto(c, NULL);
    p->conn = NULL;
    sl_conn_close(c);
  }
  uv_close((uv_handle_t *)&p->watchdog, on_timer_closed);
}

int sl_peer_healthy(struct sl_output *o) {
  struct sl_peer *p = o->data;
  return p && p->ready && !p->closing;
}
