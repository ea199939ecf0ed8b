/* conn.h - the connection layer between libuv streams and protocols.
 * A listener accepts TCP or unix connections up to its limits (connection
 * count, fds left for others, bytes of partial input over its conns); a
 * conn owns its uv handle, its input buffer, an idle timer and a deadline
 * for unconsumed bytes, and hands bytes to the protocol above through
 * sl_conn_ops. Protocols never see libuv reads, so TLS can slot in
 * here later without touching a parser. Conns are heap objects freed after
 * their handle's close callback; the protocol's cb_close runs first. */
#ifndef SL_CONN_H
#define SL_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "log.h"

struct sl_conn;
struct sl_listener;

struct sl_conn_ops {
  /* New bytes: data[0..len) is everything buffered and not yet consumed.
   * Return how many bytes were consumed; the rest is offered again with
   * more. The protocol may pause or close the conn from here. */
  size_t (*cb_data)(struct sl_conn *c, const uint8_t *data, size_t len);
  /* The peer closed or an error happened (status: 0 or UV_E*); the conn
   * will be closed right after. May be NULL. */
  void (*cb_eof)(struct sl_conn *c, int status);
  /* The conn is closing: release protocol state. May be NULL. */
  void (*cb_close)(struct sl_conn *c);
  /* Client conns only: connected (status 0) or failed. */
  void (*cb_connect)(struct sl_conn *c, int status);
};

enum sl_conn_kind { SL_CONN_TCP = 0, SL_CONN_UNIX };

struct sl_conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_timer_t idle;
  uv_timer_t partial;    /* the deadline of unconsumed bytes */
  uv_connect_t connect_req;
  const struct sl_conn_ops *ops;
  void *proto;                 /* the protocol's state */
  struct sl_listener *listener; /* NULL for client conns */
  struct sl_conn *next, *prev;  /* listener's list */
  struct sl_buf in;
  size_t max_buffered;   /* stop reading when in.len reaches this */
  uint64_t offset;       /* stream bytes consumed before in.data[0] */
  uint32_t idle_ms;      /* 0: no idle limit */
  uint32_t partial_ms;   /* 0: unconsumed bytes may wait forever */
  size_t charged;        /* of in.cap, counted in listener->pending */
  uint64_t last_read_ns; /* monotonic, of the last bytes read */
  uint64_t bytes_in;
  enum sl_conn_kind kind;
  int paused;            /* the protocol asked to stop reading */
  int closing;
  int in_data;           /* inside cb_data: resume must not recurse */
  int reading;
  int no_read;           /* sl_conn_stop_reading: never read again */
  int pending_writes;
  int partial_running;   /* the partial timer runs */
  int refused;           /* over a limit: lingering to close */
  char peer[160];        /* "1.2.3.4:5678" or the socket path */
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
};

/* Buffers up to this much per conn are not charged to max_pending: what one
 * read needs. A conn whose partial event spans reads is charged. */
#define SL_CONN_FREE_BUFFER (64u * 1024)

struct sl_listener {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_loop_t *loop;
  enum sl_conn_kind kind;
  sl_listener_accept_cb on_accept; /* set ops/proto; nonzero rejects */
  void *data;
  struct sl_conn conns;   /* list head of open conns */
  uint32_t nconns;
  /* set before sl_listener_start; 0 means no limit */
  uint32_t idle_ms;
  uint32_t partial_ms; /* a conn's unconsumed bytes must be consumed within
                          this from the first of them (a partial event) */
  uint32_t max_conns;  /* over it a new conn is refused at once, unless a
                          conn quiet for displace_ms makes room */
  uint32_t displace_ms;
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
  /* read-only */
  size_t pending;      /* charged buffer bytes now */
  struct sl_listener_stats stats;
  struct sl_log_limiter refuse_log;
  int active;
  char address[128];
  void (*on_closed)(struct sl_listener *l); /* handle closed; may be NULL */
};

/* Bind and listen on address ("host:port" for TCP, a path for unix; a
 * stale socket file is replaced). Returns 0 or a UV_E* code, with err
 * filled for the operator; on failure the handle is closing and l->on_closed
 * (set it before) runs as after sl_listener_stop. */
int sl_listener_start(struct sl_listener *l, uv_loop_t *loop,
                      enum sl_conn_kind kind, const char *address,
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

/* Connect a client conn to address. ops->cb_connect reports the result;
 * on failure the conn is closed after it. Returns the new conn or NULL. */
struct sl_conn *sl_conn_connect(uv_loop_t *loop, enum sl_conn_kind kind,
                                const char *address,
                                const struct sl_conn_ops *ops, void *proto);

/* Stop handing bytes to the protocol and stop reading. */
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
 * closes first. Returns 0 or a UV_E* code (b is left unchanged then). */
int sl_conn_write(struct sl_conn *c, struct sl_buf *b,
                  void (*cb)(struct sl_conn *c, int status, void *arg),
                  void *arg);

/* Close (idempotent). cb_close runs, then the memory is freed. */
void sl_conn_close(struct sl_conn *c);

/* Bytes queued in the kernel-bound write queue not yet written. */
size_t sl_conn_write_queue_size(const struct sl_conn *c);

#endif
