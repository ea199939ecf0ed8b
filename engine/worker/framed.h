/* framed.h - what the stream inputs share (tcp/unix, forward, syslog over
 * tcp): a listener with the input's limits (and its TLS context), the
 * connection count and the stop that waits for the listener and every
 * connection, the drain that closes each connection once what it sent is
 * in, and the log of an event cut short. Each connection is the plugin's
 * (its struct, its sl_conn_ops, its frame parser); the plugin reports its
 * accept through a hook and its close through sl_framed_closing and
 * sl_framed_free. in->data is the struct sl_framed, embedded in the
 * plugin's own struct (container_of gets back to it). */
#ifndef SL_WORKER_FRAMED_H
#define SL_WORKER_FRAMED_H

#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "worker.h"

struct sl_framed;
struct sl_tls;

struct sl_framed_ops {
  /* A new conn: the plugin's struct for it, sl_conn_set_ops. 0, or
   * SL_ENOMEM: refused. */
  int (*cb_accept)(struct sl_framed *f, struct sl_conn *c);
  /* Draining (c reads no more): may c close now, what it sent being in
   * and answered? */
  int (*cb_drained)(struct sl_conn *c);
  /* Another handle of the input is still open (syslog's udp socket), so
   * the stop waits. May be NULL. */
  int (*cb_open)(const struct sl_framed *f);
  /* The last step of the stop: free the plugin's struct (f is in it). */
  void (*cb_free)(struct sl_framed *f);
};

/* Fields are read-only for the plugin. */
struct sl_framed {
  struct sl_input *in;
  const struct sl_framed_ops *ops;
  struct sl_listener listener;
  struct sl_tls *tls;       /* tls = {...}: its context; NULL: plain */
  int listener_closed;      /* or never opened */
  int stopping;
  uint32_t live;            /* conns not yet freed */
};

/* Set f up in the plugin's struct for in (in->data = f); nothing is open
 * yet. */
void sl_framed_init(struct sl_framed *f, struct sl_input *in,
                    const struct sl_framed_ops *ops);

/* Listen on in->cfg->listen (kind; TLS when in->cfg->tls is enabled)
 * with the input's idle, event and connection limits; a conn buffers up
 * to max_buffered bytes. 0, or a negative code with err filled; cb_stop
 * then frees. */
int sl_framed_listen(struct sl_framed *f, enum sl_endpoint_kind kind,
                     size_t max_buffered, char *err, size_t errlen);

/* The plugin's cb_eof, when c still holds bytes of an unfinished event:
 * counted as bad input and logged (rate-limited) with timed_out when
 * status is UV_ETIMEDOUT (event_timeout_ms), else with cut. Nothing when
 * c holds none. */
void sl_framed_partial(struct sl_input *in, struct sl_conn *c, int status,
                       const char *timed_out, const char *cut);

/* The plugin's cb_close: the conn's source closes (src), it no longer
 * counts as open. Then sl_framed_free, right away or once the plugin's
 * own handles of the conn closed. */
void sl_framed_closing(struct sl_framed *f, struct sl_source *src);
/* Free conn (the plugin's struct of a conn): the stop may finish. */
void sl_framed_free(struct sl_framed *f, void *conn);

/* The end of a stream input's read (its cb_data, before it answers acks;
 * an HTTP batch once submitted): when src holds no event (so a wake-up
 * cannot reenter it), the other workers get their new jobs and their
 * results are applied now (sl_worker_pump), and the outputs' full batches
 * (and part ones that waited SL_OUTPUT_HOLD_NS) go out. libuv reads a
 * busy stream up to 32 times before its loop turn reaches those:
 * meanwhile the replicas would idle, and 2 workers ran slower than 1. */
void sl_framed_read_done(struct sl_source *src);

/* Inside a read, every SL_OUTPUT_HOLD_EVENTS events: when src holds no
 * event, the part batches that waited SL_OUTPUT_HOLD_NS go out now, so
 * the first events of a long read are not written after its last. */
void sl_framed_read_some(struct sl_source *src);

/* Close c when it reads no more and cb_drained says it is done. */
void sl_framed_close_if_drained(struct sl_framed *f, struct sl_conn *c);

/* Stopping and everything closed (see cb_open): free and report the input
 * stopped. For the plugin's other handles' close callbacks. */
void sl_framed_check(struct sl_framed *f);

/* The plugin's cb_drain, cb_busy and cb_stop (in->data is the framed;
 * NULL: cb_start failed before it). */
void sl_framed_drain(struct sl_input *in);
uint32_t sl_framed_busy(struct sl_input *in);
void sl_framed_stop(struct sl_input *in);

#endif
