/* conn.h - the connection layer between transports and protocols.
 * A listener accepts connections on an endpoint up to its limits
 * (connection count, fds left for others, bytes of partial input over its
 * conns); a conn owns its transport handle, its input buffer, an idle timer
 * and a deadline for unconsumed bytes, and hands bytes to the protocol above
 * through sl_conn_ops. Protocols never see libuv reads nor the transport
 * (tcp, unix; TLS later, see transport.h), so a transport slots in here
 * without touching a parser. struct sl_conn is opaque: protocols use the
 * functions below. Conns are heap objects freed after their handles' close
 * callbacks; the protocol's cb_close runs first. */
#ifndef SL_CONN_H
#define SL_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "buf.h"
#include "log.h"

struct sl_conn;
struct sl_listener;
struct sl_transport_ops;
struct sl_tls;

/* Where to listen or connect: one description for listeners and clients,
 * parsed once by sl_endpoint_init; sl_endpoint_set_tls (tls.h) puts TLS
 * under a tcp endpoint. */
enum sl_endpoint_kind { SL_ENDPOINT_TCP = 0, SL_ENDPOINT_UNIX };

struct sl_endpoint {
  enum sl_endpoint_kind kind;
  char address[256];           /* "host:port" or a socket path */
  /* private: filled by sl_endpoint_init */
  const struct sl_transport_ops *tp;
  struct sockaddr_storage ss;  /* tcp: the parsed address; unset (family 0)
                                  for a host name other than localhost */
  int resolve;                 /* tcp: the host is a name, resolved again on
                                  every connect (localhost too: it may be
                                  ::1 and 127.0.0.1) */
  char host[256], port[8];     /* tcp: address split */
  struct sl_tls *tls;          /* borrowed; NULL: plain */
};

/* Parse address for kind into ep. A tcp host may be an IP address or a
 * host name: a client resolves a name on each connect (sl_conn_connect); a
 * listener takes an IP address or localhost (127.0.0.1) only, and fails to
 * start on another name. Returns 0, or UV_EINVAL (not "host:port") /
 * UV_ENAMETOOLONG with err (may be NULL) filled. */
int sl_endpoint_init(struct sl_endpoint *ep, enum sl_endpoint_kind kind,
                     const char *address, char *err, size_t errlen);

/* A conn's life. Only an open conn pauses; a close requested inside one of
 * the conn's own callbacks (cb_data, cb_eof, cb_connect, a write callback,
 * the listener's on_accept) is deferred until that callback returns: the
 * conn is CLOSING meanwhile, so the protocol can still read its fields and
 * no further cb_data or cb_eof reaches it. */
enum sl_conn_state {
  SL_CONN_CONNECTING = 0, /* client: connect in flight; accepted: not yet */
  SL_CONN_OPEN,           /* reading (unless the buffer is full or reading
                             was stopped) and writing */
  SL_CONN_PAUSED,         /* the protocol asked for no more bytes for now */
  SL_CONN_CLOSING,        /* close requested inside a callback (deferred) */
  SL_CONN_CLOSED,         /* handles closing; cb_close, then freed */
};

struct sl_conn_ops {
  /* New bytes: data[0..len) is everything buffered and not yet consumed.
   * Return how many bytes were consumed; the rest is offered again with
   * more. The protocol may pause or close the conn from here. */
  size_t (*cb_data)(struct sl_conn *c, const uint8_t *data, size_t len);
  /* The peer closed or an error happened (status: 0 or UV_E*); the conn
   * will be closed right after, unless (status 0 from the peer's EOF: it
   * finished sending) the protocol calls sl_conn_stop_reading here to
   * keep it for answers it still owes, and closes it itself once they
   * are written. May be NULL. */
  void (*cb_eof)(struct sl_conn *c, int status);
  /* The conn is closing: release protocol state. May be NULL. */
  void (*cb_close)(struct sl_conn *c);
  /* Client conns only: connected (status 0) or failed. */
  void (*cb_connect)(struct sl_conn *c, int status);
};

typedef int (*sl_listener_accept_cb)(struct sl_listener *l, struct sl_conn *c);

/* What a listener refused or cut, for /metrics. */
struct sl_listener_stats {
  uint64_t accepted;
  uint64_t refused_limit;  /* over max_conns */
  uint64_t refused_fds;    /* the process is near or at its fd limit */
  uint64_t shed_memory;    /* closed to keep partial input under max_pending */
  uint64_t timed_out;      /* idle, partial or protocol deadlines */
  uint64_t displaced;      /* quiet conns closed to admit a new one */
  uint64_t refused_tls;    /* TLS handshake failed (timeouts: timed_out) */
};

/* Buffers up to this much per conn are not charged to max_pending: what one
 * read needs. A conn whose partial event spans reads is charged. */
#define SL_CONN_FREE_BUFFER (64u * 1024)

/* Embedded by value in the protocol's server. Fields are marked: "public"
 * ones are set before sl_listener_start, "read-only" ones may be read at any
 * time, "private" ones belong to conn.c and its transports. */
struct sl_listener {
  /* public: set before sl_listener_start; 0 means no limit */
  uint32_t idle_ms;
  uint32_t partial_ms; /* a conn's unconsumed bytes must be consumed within
                          this from the first of them (a partial event) */
  uint32_t max_conns;  /* over it a new conn is refused at once, unless a
                          conn quiet for displace_ms makes room */
  uint32_t displace_ms;
  /* Full, and no conn quiet for displace_ms: the protocol may name conns
   * waiting on their peer for a whole request (since *since_ns), and the
   * one waiting longest is closed to admit the new one, so clients that
   * trickle requests cannot keep others out (the admin server's probes).
   * NULL: none is. */
  int (*displaceable)(const struct sl_conn *c, uint64_t *since_ns);
  size_t max_pending;  /* bytes of conn buffers larger than
                          SL_CONN_FREE_BUFFER, over all conns; raised to
                          twice max_buffered */
  int fd_guard;        /* refuse conns once the process is within a reserve
                          of its fd limit, keeping fds for the admin server,
                          outputs and files */
  const char *refusal; /* written to a refused conn before it is closed
                          (HTTP: a 503); NULL: closed at once */
  size_t refusal_len;
  const char *name;    /* for logs; NULL: the address */
  size_t max_buffered;
  void (*on_closed)(struct sl_listener *l); /* handle closed; may be NULL */

  /* read-only */
  void *data;          /* sl_listener_start's data */
  uint32_t nconns;     /* open conns */
  size_t pending;      /* charged buffer bytes now */
  struct sl_listener_stats stats;

  /* private */
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_loop_t *loop;
  struct sl_endpoint ep;
  sl_listener_accept_cb on_accept; /* set ops/proto; nonzero rejects */
  struct sl_conn *conns;  /* open conns, newest first */
  /* made ahead: when a conn cannot be allocated, the waiting socket is
   * taken into this one and closed, since libuv accepts nothing more
   * until uv_accept takes the one it holds */
  struct sl_conn *spare;
  struct sl_log_limiter refuse_log;
  int active;          /* the handle is open */
  int bound;           /* listen succeeded: a socket file is ours */
};

/* Bind and listen on ep (a stale unix socket file is replaced). Returns 0
 * or a UV_E* code, with err filled for the operator; on failure the handle
 * is closing and l->on_closed (set it before) runs as after
 * sl_listener_stop. */
int sl_listener_start(struct sl_listener *l, uv_loop_t *loop,
                      const struct sl_endpoint *ep,
                      sl_listener_accept_cb on_accept, void *data, char *err,
                      size_t errlen);
/* Count a conn cut by the protocol's own deadline (HTTP) as timed out. */
void sl_listener_count_timeout(struct sl_conn *c);
/* Count a conn the protocol closes to stay under its memory bound. */
void sl_listener_shed(struct sl_conn *c);

/* Stop accepting (closes the listening handle; conns stay open). */
void sl_listener_stop(struct sl_listener *l);
/* Close every open conn of the listener. */
void sl_listener_close_conns(struct sl_listener *l);
/* The open conns: NULL gives the first; returns NULL after the last. The
 * caller may close c once it holds the next one. */
struct sl_conn *sl_listener_next(const struct sl_listener *l,
                                 const struct sl_conn *c);
uint32_t sl_listener_open(const struct sl_listener *l);
const struct sl_listener_stats *sl_listener_stats(const struct sl_listener *l);

/* Connect a client conn to ep. A host name is resolved first (libuv's
 * threadpool: the loop never waits), then each address it gave is tried
 * in turn. ops->cb_connect reports the result: the last address's error,
 * or the resolver's (sl_conn_resolve_error tells); on failure the conn is
 * closed after it. Returns the new conn, or NULL when the connect could
 * not start, with *status (when status is not NULL) its UV_E* code: no
 * file descriptor for the socket (UV_EMFILE) is the one to expect. */
struct sl_conn *sl_conn_connect(uv_loop_t *loop, const struct sl_endpoint *ep,
                                const struct sl_conn_ops *ops, void *proto,
                                int *status);

/* status (from cb_connect) says the host name did not resolve. */
int sl_conn_resolve_error(int status);

/* The protocol of an accepted conn (from on_accept), or a new proto. */
void sl_conn_set_ops(struct sl_conn *c, const struct sl_conn_ops *ops,
                     void *proto);
void sl_conn_set_proto(struct sl_conn *c, void *proto);
void *sl_conn_proto(const struct sl_conn *c);

/* Stop handing bytes to the protocol and stop reading (an open conn only). */
void sl_conn_pause(struct sl_conn *c);
/* Offer the buffered bytes again, then read again. Safe to call from a
 * callback of another conn; not re-entrant for the same conn. */
void sl_conn_resume(struct sl_conn *c);

/* Never read from the peer again (graceful stop); bytes already buffered
 * are still offered to the protocol on resume. */
void sl_conn_stop_reading(struct sl_conn *c);

/* Write the bytes of b. The request takes b's memory (b is left empty and
 * usable), so nothing is copied. cb (may be NULL) runs when the write
 * finished, with 0 or UV_E*; it also runs (with UV_ECANCELED) when the conn
 * closes first. Returns 0 or a UV_E* code (b is left unchanged then;
 * UV_ECANCELED once the conn is closing). */
int sl_conn_write(struct sl_conn *c, struct sl_buf *b,
                  void (*cb)(struct sl_conn *c, int status, void *arg),
                  void *arg);

/* Close (idempotent; deferred inside the conn's own callbacks, see
 * enum sl_conn_state). cb_close runs, then the memory is freed. */
void sl_conn_close(struct sl_conn *c);

/* Reading a conn. */
enum sl_conn_state sl_conn_state(const struct sl_conn *c);
/* Closing or closed: no more bytes, writes fail. */
int sl_conn_is_closing(const struct sl_conn *c);
int sl_conn_is_paused(const struct sl_conn *c);
/* sl_conn_stop_reading was called. */
int sl_conn_read_stopped(const struct sl_conn *c);
/* "1.2.3.4:5678", "unix:/path" (accepted) or the address (client). */
const char *sl_conn_peer(const struct sl_conn *c);
/* Stream bytes consumed before the first buffered one, and how many are
 * buffered and not consumed. */
uint64_t sl_conn_offset(const struct sl_conn *c);
size_t sl_conn_buffered(const struct sl_conn *c);
/* Writes whose callback has not run yet. */
int sl_conn_pending_writes(const struct sl_conn *c);
/* Bytes queued in the kernel-bound write queue not yet written. */
size_t sl_conn_write_queue_size(const struct sl_conn *c);
/* Write what the kernel takes of [p, p + n) now, without a request or a
 * callback: for a writer that goes on at once when all went (libuv would
 * report even a write done at once only in the next loop turn). Returns
 * the bytes written, 0 when none could be now (the socket is full, writes
 * are queued, or the transport cannot: TLS), or a UV_E* code. Never after
 * sl_conn_close. */
int sl_conn_try_write(struct sl_conn *c, const uint8_t *p, size_t n);

#endif
