/* framed.c - what the stream inputs share: see framed.h. */
#include "framed.h"

#include <stdio.h>
#include <stdlib.h>

#include "output.h"
#include "tls.h"

void sl_framed_read_done(struct sl_source *src) {
  if (src->held != NULL)
    return;
  sl_worker_pump(src->w);
  sl_output_flush_due(src->w, SL_OUTPUT_HOLD_NS);
}

void sl_framed_read_some(struct sl_source *src) {
  if (src->held == NULL)
    sl_output_flush_due(src->w, SL_OUTPUT_HOLD_NS);
}

void sl_framed_init(struct sl_framed *f, struct sl_input *in,
                    const struct sl_framed_ops *ops) {
  f->in = in;
  f->ops = ops;
  f->listener_closed = 1; /* until it opens */
  in->data = f;
}

static int closed(const struct sl_framed *f) {
  return f->listener_closed && f->live == 0 &&
         !(f->ops->cb_open && f->ops->cb_open(f));
}

void sl_framed_check(struct sl_framed *f) {
  struct sl_input *in = f->in;
  if (!f->stopping || !closed(f))
    return;
  in->data = NULL;
  in->stats.listener = NULL;
  sl_tls_free(f->tls); /* conns still open keep their own reference */
  f->ops->cb_free(f);
  sl_input_stopped(in);
}

/* ---- the listener -------------------------------------------------------- */

static void on_listener_closed(struct sl_listener *l) {
  struct sl_framed *f = l->data;
  f->listener_closed = 1;
  sl_framed_check(f);
}

static int on_accept(struct sl_listener *l, struct sl_conn *c) {
  struct sl_framed *f = l->data;
  int rc = f->ops->cb_accept(f, c);
  if (rc != 0)
    return rc;
  f->live++;
  f->in->stats.connections_total++;
  f->in->stats.connections_open++;
  return 0;
}

int sl_framed_listen(struct sl_framed *f, enum sl_endpoint_kind kind,
                     size_t max_buffered, char *err, size_t errlen) {
  struct sl_input *in = f->in;
  struct sl_listener *l = &f->listener;
  struct sl_endpoint ep;
  int rc;
  l->idle_ms = in->cfg->idle_timeout_ms; /* default 0: a quiet producer is
                                            normal */
  l->partial_ms = in->cfg->event_timeout_ms;
  l->max_conns = in->cfg->max_connections;
  /* at the limit, a conn quiet longer than an event may take gives way */
  l->displace_ms = in->cfg->event_timeout_ms;
  l->max_pending = in->cfg->max_pending_bytes;
  l->fd_guard = 1;
  l->name = in->cfg->name;
  l->max_buffered = max_buffered;
  l->on_closed = on_listener_closed;
  in->stats.listener = l;
  if (in->cfg->tls.enabled &&
      (f->tls = sl_tls_new(&in->cfg->tls, 1, in->cfg->listen, in->cfg->name,
                           err, errlen)) == NULL)
    return SL_EINVAL; /* it never opened */
  rc = sl_endpoint_init(&ep, kind, in->cfg->listen, NULL, 0);
  if (rc == 0)
    rc = sl_endpoint_set_tls(&ep, f->tls);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", in->cfg->listen,
             uv_strerror(rc));
    return rc;
  }
  /* on failure the listener reports itself closed, as after a stop */
  f->listener_closed = 0;
  return sl_listener_start(l, &in->w->loop, &ep, on_accept, f, err, errlen);
}

/* ---- conns --------------------------------------------------------------- */

void sl_framed_partial(struct sl_input *in, struct sl_conn *c, int status,
                       const char *timed_out, const char *cut) {
  uint64_t suppressed = 0;
  if (sl_conn_buffered(c) == 0)
    return;
  in->stats.bad_input++;
  /* rate-limited: a flood of stalled connections must not flood the log */
  if (sl_log_allow(&in->w->bad_input_log, &suppressed))
    sl_log(SL_LOG_WARN, status == UV_ETIMEDOUT ? timed_out : cut,
           SL_S("input", in->cfg->name), SL_S("peer", sl_conn_peer(c)),
           SL_U("offset", sl_conn_offset(c)),
           SL_U("bytes", sl_conn_buffered(c)),
           /* who closed it: the peer, or our memory bound (logged apart) */
           SL_S("cause", status == 0            ? "the peer closed"
                         : status == UV_ENOBUFS ? "max_pending_bytes"
                                                : uv_strerror(status)),
           SL_U("suppressed", suppressed), SL_END);
}

void sl_framed_closing(struct sl_framed *f, struct sl_source *src) {
  sl_source_close(src);
  f->in->stats.connections_open--;
}

void sl_framed_free(struct sl_framed *f, void *conn) {
  free(conn);
  f->live--;
  sl_framed_check(f);
}

void sl_framed_close_if_drained(struct sl_framed *f, struct sl_conn *c) {
  if (sl_conn_read_stopped(c) && f->ops->cb_drained(c))
    sl_conn_close(c);
}

/* ---- the input's lifecycle ----------------------------------------------- */

void sl_framed_drain(struct sl_input *in) {
  struct sl_framed *f = in->data;
  struct sl_conn *c, *next;
  if (f == NULL)
    return;
  sl_listener_stop(&f->listener);
  for (c = sl_listener_next(&f->listener, NULL); c; c = next) {
    next = sl_listener_next(&f->listener, c);
    sl_conn_stop_reading(c);
    /* what it sent is in; a partial event is not */
    sl_framed_close_if_drained(f, c);
  }
}

uint32_t sl_framed_busy(struct sl_input *in) {
  struct sl_framed *f = in->data;
  return f ? f->live : 0;
}

void sl_framed_stop(struct sl_input *in) {
  struct sl_framed *f = in->data;
  if (f == NULL) {
    sl_input_stopped(in);
    return;
  }
  f->stopping = 1;
  sl_listener_stop(&f->listener); /* both nothing when it never opened */
  sl_listener_close_conns(&f->listener);
  sl_framed_check(f);
}
