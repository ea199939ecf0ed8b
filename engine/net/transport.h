/* transport.h - inside engine/net only: the transport seam under conn.c.
 * A transport (tcp.c, unix.c, tls.c) owns how a handle is made,
 * bound, accepted, connected, read, written and closed; conn.c owns the
 * stream on top (buffering, pause/resume, the write queue, limits, deferred
 * close) and reaches the transport only through sl_transport_ops. Transports
 * are registered in one place: sl_transport_of in conn.c. Protocols include
 * conn.h, never this. */
#ifndef SL_TRANSPORT_H
#define SL_TRANSPORT_H

#include "conn.h"

struct sl_transport_ops {
  const char *name;
  /* Check and parse ep->address into ep. Returns 0 or UV_E*. */
  int (*parse)(struct sl_endpoint *ep);
  /* Init l->h on loop, bind it to l->ep and listen; cb on a new conn.
   * l->h is initialised even when this fails. Returns 0 or UV_E*. */
  int (*listen)(struct sl_listener *l, uv_loop_t *loop, uv_connection_cb cb);
  /* After the listening handle was closed: remove what listen left (the
   * unix socket file) when l->bound. May be NULL. */
  void (*unlisten)(struct sl_listener *l);
  /* Init c->h on loop for a new conn. Returns 0 or UV_E*. */
  int (*init)(uv_loop_t *loop, struct sl_conn *c);
  /* Take the conn pending on l into c and name its peer in c->peer.
   * Returns 0 or UV_E*. */
  int (*accept)(struct sl_listener *l, struct sl_conn *c);
  /* Start connecting c to ep; cb reports. Returns 0 or UV_E*. */
  int (*connect)(struct sl_conn *c, const struct sl_endpoint *ep,
                 uv_connect_cb cb);
  /* c is open (accepted or connected): set options. May be NULL. */
  void (*opened)(struct sl_conn *c);
  int (*read_start)(struct sl_conn *c, uv_alloc_cb alloc, uv_read_cb cb);
  void (*read_stop)(struct sl_conn *c);
  int (*write)(struct sl_conn *c, uv_write_t *req, const uv_buf_t *b,
               uv_write_cb cb);
  size_t (*write_queue_size)(const struct sl_conn *c);
  /* Write what the kernel takes now, nothing queued: the bytes written,
   * or a UV_E* code (UV_EAGAIN: none now, or writes are queued). May be
   * NULL (TLS: its records go through its own queue). */
  int (*try_write)(struct sl_conn *c, const uv_buf_t *b);
  /* Close c's handle; cb runs once it is closed (writes still queued
   * get their callbacks with UV_ECANCELED before it). */
  void (*close)(struct sl_conn *c, uv_close_cb cb);
};

extern const struct sl_transport_ops sl_transport_tcp;
extern const struct sl_transport_ops sl_transport_unix;
extern const struct sl_transport_ops sl_transport_tls;

/* The plain libuv stream half that tcp and unix share (stream.c). */
int sl_stream_read_start(struct sl_conn *c, uv_alloc_cb alloc, uv_read_cb cb);
void sl_stream_read_stop(struct sl_conn *c);
int sl_stream_write(struct sl_conn *c, uv_write_t *req, const uv_buf_t *b,
                    uv_write_cb cb);
size_t sl_stream_write_queue_size(const struct sl_conn *c);
int sl_stream_try_write(struct sl_conn *c, const uv_buf_t *b);
void sl_stream_close(struct sl_conn *c, uv_close_cb cb);

/* Bits of sl_conn.flags: mechanics beside the state. */
#define SL_CONN_F_READING 0x01  /* the transport is reading */
#define SL_CONN_F_NO_READ 0x02  /* sl_conn_stop_reading: never read again */
#define SL_CONN_F_IN_DATA 0x04  /* inside cb_data: resume must not recurse */
#define SL_CONN_F_PARTIAL 0x08  /* the partial timer runs */
#define SL_CONN_F_REFUSED 0x10  /* over a listener limit: lingering to close */
#define SL_CONN_F_REDIAL 0x20   /* the handle is closing to try the next
                                   address: close_handles leaves it be */

struct sl_conn {
  union {                /* the transport's handle */
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  const struct sl_transport_ops *tp;
  uv_timer_t idle;
  uv_timer_t partial;    /* the deadline of unconsumed bytes */
  uv_connect_t connect_req;
  struct sl_dial *dial;  /* client to a host name: resolution, addresses */
  const struct sl_conn_ops *ops;
  void *proto;                  /* the protocol's state */
  struct sl_listener *listener; /* NULL for client conns and refused ones */
  struct sl_conn *next, *prev;  /* listener's list */
  struct sl_buf in;
  size_t max_buffered;   /* stop reading when in.len reaches this */
  uint64_t offset;       /* stream bytes consumed before in.data[0] */
  uint32_t idle_ms;      /* 0: no idle limit */
  uint32_t partial_ms;   /* 0: unconsumed bytes may wait forever */
  size_t charged;        /* of in.cap, counted in listener->pending */
  uint64_t last_read_ns; /* monotonic, of the last bytes read */
  uint64_t bytes_in;
  enum sl_conn_state state;
  unsigned flags;        /* SL_CONN_F_* */
  int depth;             /* protocol callbacks of this conn running now */
  int handles;           /* handles not closed yet (stream and two timers) */
  int pending_writes;
  uint64_t write_ns;     /* monotonic: the last write done, or the first
                            of those pending when none was */
  void *tls;             /* the tls transport's state (tls.c); else NULL */
  char peer[264];        /* "1.2.3.4:5678", "unix:path" or the address */
};

#endif
