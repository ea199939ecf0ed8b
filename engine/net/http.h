/* http.h - an HTTP/1.1 server on the connection layer.
 * node's http_parser reads requests out of the bytes a conn hands over, so
 * TLS can slot in under it. One request per connection is in progress at a
 * time: a pipelined request is not read before the one ahead of it is
 * answered, so responses leave in request order. Keep-alive, Content-Length
 * and chunked bodies, a cap on header bytes (431) and body bytes (413, and
 * nothing past the cap is buffered), a deadline for a whole request head
 * from its first byte (a client trickling header bytes is cut off there),
 * one for the body, an idle limit between requests and body reads, a
 * connection limit and a bound on body bytes held over all connections.
 * The server owns its listener, its connections and their requests. A
 * handler (sl_http_ops) owns whatever it hangs on a request's data and
 * releases it in cb_done. All calls run on the server's loop thread. */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "common.h"
#include "conn.h"
#include "log.h"

#define SL_HTTP_MAX_HEADER_BYTES (16 * 1024) /* request line and headers */
#define SL_HTTP_MAX_HEADERS 100
#define SL_HTTP_MAX_BACKLOG (1u << 20) /* unsent response bytes before a
                                          connection stops reading */

struct sl_http_server;
struct sl_http_request;

/* What a server does with requests, filled in by field name. */
struct sl_http_ops {
  /* The head is in (method, path, headers). Respond now to refuse the
   * request (its body is then skipped, or the connection closed when the
   * body is too large to skip), or return to receive the body. May be
   * NULL. */
  void (*cb_headers)(struct sl_http_request *r);
  /* The whole body is in r->body. Respond now or later: until then the
   * connection reads nothing more. sl_http_stream_start makes the response
   * a stream that ends the connection. */
  void (*cb_request)(struct sl_http_request *r);
  /* The request is over: answered, or its connection closed first (the
   * response can no longer be sent). Release r->data. May be NULL. */
  void (*cb_done)(struct sl_http_request *r);
};

struct sl_http_limits {
  uint32_t max_header_bytes; /* 0: SL_HTTP_MAX_HEADER_BYTES */
  uint64_t max_body_bytes;   /* 0: no body is accepted */
  uint32_t idle_ms;          /* quiet keep-alive connection or body; 0: off */
  uint32_t header_ms;        /* whole request head from its first byte;
                                0: idle_ms */
  uint32_t body_ms;          /* whole body from the end of its head; 0: off */
  uint32_t max_conns;        /* open at once; over it a new connection gets
                                503 and is closed; 0: no limit */
  uint64_t max_pending;      /* body bytes held over all connections; a body
                                that would pass it closes the upload that
                                waited longest for its next byte, or gets
                                503 when there is none; 0: no bound */
  int fd_guard;              /* see sl_listener.fd_guard */
  int displace_waiting;      /* full: a new connection closes the one that
                                waited longest for a whole request (idle
                                keep-alive, a head or body trickling)
                                instead of getting 503 (the admin server:
                                its probes must get in) */
};

struct sl_http_stats {
  uint64_t requests;          /* request heads read */
  uint64_t connections_total; /* accepted */
  uint64_t timeouts;          /* connections cut by a deadline */
  uint64_t shed_memory;       /* bodies refused (503) for max_pending;
                                 stalled uploads closed for it are counted
                                 by the listener */
  uint64_t responses[600];    /* by status code */
};

struct sl_http_request {
  /* read-only for handlers */
  struct sl_http_server *server;
  struct sl_conn *conn;
  const char *method;      /* "GET", "POST", ... */
  struct sl_str path;      /* raw (not percent-decoded) */
  struct sl_str query;     /* after '?', raw; len 0 when none */
  struct sl_buf body;      /* complete when cb_request runs */
  int http_minor;          /* 1.0 or 1.1 */
  void *data;              /* the handler's; released in cb_done */
  int quiet;               /* handler: no log line for an error status */
  /* private to http.c */
  struct sl_buf head;      /* URL and header bytes */
  uint32_t url_len;
  struct {
    uint32_t name_off, name_len, value_off, value_len;
  } hdr[SL_HTTP_MAX_HEADERS];
  int nheaders;
  struct sl_buf extra;     /* response header lines set by the handler */
};

struct sl_http_server {
  /* set before sl_http_start */
  const char *name;            /* for logs and metrics: an input's name */
  struct sl_http_limits limits;
  void (*on_stopped)(struct sl_http_server *s); /* all closed; may be NULL */
  struct sl_tls *tls;          /* serve HTTPS with it (borrowed); NULL: no */
  /* read-only */
  struct sl_listener listener;
  const struct sl_http_ops *ops;
  void *data;
  uv_loop_t *loop;
  uint32_t live;     /* connections not yet freed */
  uint64_t pending;  /* body bytes held now */
  int draining, stopping, listener_closed, stopped;
  struct sl_log_limiter error_log;
  struct sl_http_stats stats;
};

/* Listen on address ("host:port") and serve requests with ops. Set name,
 * limits and on_stopped first. Returns 0, or a UV_E* code with err filled;
 * then the listener is closing and on_stopped runs as after sl_http_stop. */
int sl_http_start(struct sl_http_server *s, uv_loop_t *loop,
                  const char *address, const struct sl_http_ops *ops,
                  void *data, char *err, size_t errlen);
/* Graceful stop: accept no more connections, close the idle ones, let
 * each request in progress finish and close its connection after it. */
void sl_http_drain(struct sl_http_server *s);
/* Close the listener and every connection now; requests in progress get
 * cb_done. on_stopped runs once all is closed (maybe before this
 * returns). Idempotent. */
void sl_http_stop(struct sl_http_server *s);

/* Connections with a request being read or answered (not idle, not in a
 * request head, not closing): what a graceful stop waits for. */
uint32_t sl_http_busy(const struct sl_http_server *s);

/* A request header's value (first of that name, case-insensitive);
 * p == NULL when absent. Valid until the request is over. */
struct sl_str sl_http_header(const struct sl_http_request *r,
                             const char *name);

/* Add a response header line ("Name: value") for the next response of r.
 * Returns 0 or SL_ENOMEM. */
int sl_http_add_header(struct sl_http_request *r, const char *name,
                       const char *value);

/* Answer r: status, Content-Type (NULL: none) and body (copied). May be
 * called from cb_headers, cb_request or any time later until cb_done.
 * Statuses of 400 and above are logged, rate-limited. Returns 0, SL_EINVAL
 * when r was answered already, or a negative code when the connection is
 * gone (cb_done has run or will run). */
int sl_http_respond(struct sl_http_request *r, int status,
                    const char *content_type, const void *body, size_t len);

/* Answer with a JSON body {"error": "<message>"}. See sl_http_respond. */
int sl_http_respond_error(struct sl_http_request *r, int status,
                          const char *fmt, ...) SL_PRINTF(3, 4);

/* Start a chunked response that runs until sl_http_stream_end or until the
 * client goes away (cb_done). The connection is closed after it. Bytes the
 * client sends meanwhile are read and ignored, so its leaving is noticed.
 * Returns 0 or a negative code as sl_http_respond. */
int sl_http_stream_start(struct sl_http_request *r, int status,
                         const char *content_type);
/* Send n bytes (copied) as one chunk. Returns 0 or a negative code. */
int sl_http_stream_write(struct sl_http_request *r, const void *p, size_t n);
/* Send the last chunk; the connection closes once it is written. */
int sl_http_stream_end(struct sl_http_request *r);
/* Bytes written to the connection that the kernel has not taken yet. */
size_t sl_http_pending(const struct sl_http_request *r);

/* Read a bearer token from path: the whole file, trailing white space
 * (the newline editors add) trimmed. Returns a NUL-terminated copy the
 * caller frees, or NULL with err filled (unreadable, empty). Blocking:
 * call it at start, not while serving. */
char *sl_http_load_token(const char *path, size_t *len, char *err,
                         size_t errlen);
/* Does r carry "Authorization: Bearer <token>"? Compared in time that
 * depends on the token's length only. */
int sl_http_bearer_ok(const struct sl_http_request *r, const char *token,
                      size_t len);

/* Decode %XX and (in queries) '+' in place; returns the new length, or -1
 * for a malformed escape. */
long sl_http_unescape(char *s, size_t n, int plus_is_space);
/* "Not Found" for 404; "" for codes unknown to http_parser. */
const char *sl_http_status_text(int status);

#endif
