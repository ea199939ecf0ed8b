/* peer.h - an output's client connection to its peer, shared by the
 * connection-oriented outputs that frame events themselves (tcp/unix,
 * forward): connecting (again after the core's backoff), a watchdog of
 * retry.timeout_ms on whatever waits for the peer (a connect, a
 * handshake, a write, acks), the outage and recovery logs, the write in
 * flight and its report to the core, health, and the stop. The plugin
 * keeps only its framing, its handshake and its ack parsing, through
 * struct sl_peer_ops. o->data is the struct sl_peer, embedded in the
 * plugin's own struct (container_of gets back to it). */
#ifndef SL_WORKER_PEER_H
#define SL_WORKER_PEER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "conn.h"
#include "output.h"

struct sl_peer;
struct sl_tls;

struct sl_peer_ops {
  /* log lines: connected after an outage; unreachable (once per outage);
   * the host name does not resolve (NULL: the unreachable line, and the
   * cause is not told apart) */
  const char *up, *down, *unresolved;
  const char *handshake; /* the watchdog's word for a wait before ready */
  /* Connected: 0 ready now; 1 a handshake follows (call sl_peer_ready
   * when it is done). May be NULL: ready now. */
  int (*cb_connected)(struct sl_peer *p);
  /* Ready and logged, before the core hears of it (a hello). 0, or a
   * nonzero code: the conn is dropped. May be NULL. */
  int (*cb_ready)(struct sl_peer *p);
  /* Bytes from the peer, as sl_conn_ops.cb_data; c is p->conn on entry
   * (the plugin may drop it). */
  size_t (*cb_data)(struct sl_peer *p, struct sl_conn *c, const uint8_t *data,
                    size_t len);
  /* The conn is gone: forget what belonged to it (acked counts, unacked
   * frames). May be NULL. */
  void (*cb_lost)(struct sl_peer *p);
  /* The last step of the stop: free the plugin's struct (p is in it). */
  void (*cb_free)(struct sl_peer *p);
};

/* Fields are read-only for the plugin but where said. */
struct sl_peer {
  struct sl_output *o;
  const struct sl_peer_ops *ops;
  struct sl_conn *conn;   /* NULL while disconnected */
  struct sl_tls *tls;     /* tls = {...}: its context; NULL: plain */
  uv_timer_t watchdog;
  struct sl_buf batch;    /* the plugin's: the bytes of the next write */
  uint32_t nevents;       /* events of the write in flight */
  enum sl_endpoint_kind kind;
  const char *address;    /* "host:port" or a socket path */
  int ack;                /* events leave with the peer's acks */
  int ready;              /* connected and past any handshake */
  int writing;            /* a write is in flight */
  int closing;
  int watch_grace;        /* the watchdog fired once: one more poll first */
  int write_error;        /* a write failed: dropped once acks are read */
  int was_down;           /* log the recovery once */
  int down_logged;        /* the outage is logged (once, also at start) */
  int down_resolve;       /* what was logged: the name did not resolve */
};

/* Set p up in the plugin's struct for o (o->data = p, o->acks = ack); the
 * first connect is logged as a recovery. Then sl_peer_start. */
void sl_peer_init(struct sl_peer *p, struct sl_output *o,
                  const struct sl_peer_ops *ops, enum sl_endpoint_kind kind,
                  const char *address, int ack);

/* The TLS context (o->cfg->tls enabled) and the first connect. 0, or
 * SL_EINVAL with err filled: p is stopped already and freed once its
 * timer closed (the core never stops an output whose start failed). */
int sl_peer_start(struct sl_peer *p, char *err, size_t errlen);

/* Write p->batch (taken, left empty) for nevents events: reported to the
 * core when written (ack: sl_output_written; else sl_output_done), which
 * may be at once, inside this call, when the kernel took it all; the conn
 * dropped when it fails. */
void sl_peer_write(struct sl_peer *p, uint32_t nevents);

/* The handshake is done (after cb_connected said 1): ready, logged, and
 * the core told. */
void sl_peer_ready(struct sl_peer *p);

/* The peer confirmed something: the watchdog starts over. */
void sl_peer_progress(struct sl_peer *p);

/* Let go of the conn (its callbacks no longer reach p), log the outage
 * and fail what is in flight (written again after the core's backoff).
 * error: what failed, or NULL for status's text. */
void sl_peer_drop(struct sl_peer *p, int status, const char *error);

/* The plugin's cb_retry, cb_stop and cb_healthy (o->data is the peer;
 * NULL: cb_start ran out of memory before it). */
void sl_peer_retry(struct sl_output *o);
void sl_peer_stop(struct sl_output *o);
int sl_peer_healthy(struct sl_output *o);

#endif
