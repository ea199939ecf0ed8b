/* conn.c - listeners and connections over libuv streams; see conn.h. */
#include "conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

#define READ_CHUNK 65536

struct write_req {
  uv_write_t req;
  struct sl_buf buf;
  struct sl_conn *conn;
  void (*cb)(struct sl_conn *c, int status, void *arg);
  void *arg;
};

static void deliver(struct sl_conn *c);
static void start_reading(struct sl_conn *c);

static int make_addr(const char *address, struct sockaddr_storage *ss) {
  char host[128];
  int port;
  if (sl_config_parse_hostport(address, host, sizeof(host), &port) != 0)
    return UV_EINVAL;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
}

static void peer_name(struct sl_conn *c) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  char ip[INET6_ADDRSTRLEN + 1];

  if (c->kind == SL_CONN_UNIX) {
    snprintf(c->peer, sizeof(c->peer), "unix:%s",
             c->listener ? c->listener->address : "");
    return;
  }
  if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) != 0) {
    snprintf(c->peer, sizeof(c->peer), "unknown");
    return;
  }
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "[%s]:%d", ip,
             ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip,
             ntohs(((struct sockaddr_in *)&ss)->sin_port));
  }
}

/* ---- closing ---------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
  struct sl_conn *c = h->data;
  /* two handles (stream and idle timer): free after the second */
  if (c->closing++ < 2)
    return;
  if (c->ops && c->ops->cb_close)
    c->ops->cb_close(c);
  sl_buf_close(&c->in);
  free(c);
}

void sl_conn_close(struct sl_conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  if (c->listener) {
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->next = c->prev = c;
    c->listener->nconns--;
  }
  uv_close((uv_handle_t *)&c->idle, on_handle_closed);
  uv_close(&c->h.handle, on_handle_closed);
}

/* ---- reading ---------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct sl_conn *c = h->data;
  (void)suggested;
  if (sl_buf_reserve(&c->in, READ_CHUNK) != 0) {
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  buf->base = (char *)c->in.data + c->in.len;
  buf->len = c->in.cap - c->in.len;
}

static void on_idle_timeout(uv_timer_t *t) {
  struct sl_conn *c = t->data;
  if (c->ops && c->ops->cb_eof)
    c->ops->cb_eof(c, UV_ETIMEDOUT);
  sl_conn_close(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct sl_conn *c = s->data;
  (void)buf;
  if (nread > 0) {
    c->in.len += (size_t)nread;
    c->bytes_in += (uint64_t)nread;
    if (c->idle_ms)
      uv_timer_start(&c->idle, on_idle_timeout, c->idle_ms, 0);
    deliver(c);
    return;
  }
  if (nread == 0)
    return;
  if (nread == UV_ENOBUFS) /* our buffer could not grow */
    nread = UV_ENOMEM;
  if (c->ops && c->ops->cb_eof)
    c->ops->cb_eof(c, nread == UV_EOF ? 0 : (int)nread);
  sl_conn_close(c);
}

static void start_reading(struct sl_conn *c) {
  if (c->reading || c->closing || c->paused || c->no_read)
    return;
  if (c->max_buffered && c->in.len >= c->max_buffered)
    return; /* the protocol must consume first */
  if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
    c->reading = 1;
}

static void stop_reading(struct sl_conn *c) {
  if (!c->reading)
    return;
  uv_read_stop(&c->h.stream);
  c->reading = 0;
}

static void deliver(struct sl_conn *c) {
  size_t used;

  if (c->paused || c->closing || c->in_data || c->in.len == 0)
    return;
  c->in_data = 1;
  used = c->ops->cb_data(c, c->in.data, c->in.len);
  c->in_data = 0;
  if (c->closing)
    return;
  c->offset += used;
  sl_buf_consume(&c->in, used);
  if (c->max_buffered && c->in.len >= c->max_buffered)
    stop_reading(c);
}

void sl_conn_stop_reading(struct sl_conn *c) {
  c->no_read = 1;
  stop_reading(c);
  uv_timer_stop(&c->idle);
}

void sl_conn_pause(struct sl_conn *c) {
  c->paused = 1;
  stop_reading(c);
  uv_timer_stop(&c->idle); /* waiting on us is not idleness */
}

void sl_conn_resume(struct sl_conn *c) {
  if (c->closing)
    return;
  c->paused = 0;
  if (c->idle_ms && !c->no_read)
    uv_timer_start(&c->idle, on_idle_timeout, c->idle_ms, 0);
  deliver(c);
  start_reading(c);
}

/* ---- writing ---------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  struct write_req *w = container_of(req, struct write_req, req);
  struct sl_conn *c = w->conn;
  c->pending_writes--;
  if (w->cb)
    w->cb(c, status, w->arg);
  sl_buf_close(&w->buf);
  free(w);
}

int sl_conn_write(struct sl_conn *c, struct sl_buf *b,
                  void (*cb)(struct sl_conn *c, int status, void *arg),
                  void *arg) {
  struct write_req *w;
  uv_buf_t ub;
  int rc;

  if (c->closing)
    return UV_ECANCELED;
  w = malloc(sizeof(*w));
  if (w == NULL)
    return UV_ENOMEM;
  w->buf = *b;
  w->conn = c;
  w->cb = cb;
  w->arg = arg;
  ub = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
  rc = uv_write(&w->req, &c->h.stream, &ub, 1, on_write);
  if (rc != 0) {
    free(w);
    return rc;
  }
  sl_buf_init(b);
  c->pending_writes++;
  return 0;
}

size_t sl_conn_write_queue_size(const struct sl_conn *c) {
  return c->h.stream.write_queue_size;
}

/* ---- conns ------------------------------------------------------------ */

static struct sl_conn *conn_new(uv_loop_t *loop, enum sl_conn_kind kind) {
  struct sl_conn *c = calloc(1, sizeof(*c));
  int rc;
  if (c == NULL)
    return NULL;
  c->kind = kind;
  c->next = c->prev = c;
  sl_buf_init(&c->in);
  rc = kind == SL_CONN_TCP ? uv_tcp_init(loop, &c->h.tcp)
                           : uv_pipe_init(loop, &c->h.pipe, 0);
  if (rc != 0) {
    free(c);
    return NULL;
  }
  uv_timer_init(loop, &c->idle);
  c->h.handle.data = c;
  c->idle.data = c;
  return c;
}

static void on_connection(uv_stream_t *server, int status) {
  struct sl_listener *l = server->data;
  struct sl_conn *c;

  if (status != 0)
    return;
  c = conn_new(l->loop, l->kind);
  if (c == NULL)
    return; /* the kernel keeps it in the backlog; we retry next time */
  if (uv_accept(server, &c->h.stream) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
    uv_close(&c->h.handle, on_handle_closed);
    return;
  }
  if (l->kind == SL_CONN_TCP)
    uv_tcp_nodelay(&c->h.tcp, 1);
  c->listener = l;
  c->idle_ms = l->idle_ms;
  c->max_buffered = l->max_buffered;
  c->next = l->conns.next;
  c->prev = &l->conns;
  l->conns.next->prev = c;
  l->conns.next = c;
  l->nconns++;
  peer_name(c);
  if (l->on_accept(l, c) != 0) {
    sl_conn_close(c);
    return;
  }
  if (c->idle_ms)
    uv_timer_start(&c->idle, on_idle_timeout, c->idle_ms, 0);
  start_reading(c);
}

int sl_listener_start(struct sl_listener *l, uv_loop_t *loop,
                      enum sl_conn_kind kind, const char *address,
                      sl_listener_accept_cb on_accept, void *data, char *err,
                      size_t errlen) {
  struct sockaddr_storage ss;
  struct stat st;
  int rc;

  memset(&l->h, 0, sizeof(l->h));
  l->loop = loop;
  l->kind = kind;
  l->on_accept = on_accept;
  l->data = data;
  l->conns.next = l->conns.prev = &l->conns;
  l->nconns = 0;
  snprintf(l->address, sizeof(l->address), "%s", address);
  /* the handle exists from here on, so every failure below ends in
   * on_closed, like a normal stop */
  if (kind == SL_CONN_TCP)
    uv_tcp_init(loop, &l->h.tcp);
  else
    uv_pipe_init(loop, &l->h.pipe, 0);
  l->h.handle.data = l;
  l->active = 1;
  if (kind == SL_CONN_TCP) {
    rc = make_addr(address, &ss);
    if (rc == 0)
      rc = uv_tcp_bind(&l->h.tcp, (struct sockaddr *)&ss, 0);
  } else {
    /* a socket file left by a previous run would make bind fail */
    if (stat(address, &st) == 0 && S_ISSOCK(st.st_mode))
      unlink(address);
    rc = uv_pipe_bind(&l->h.pipe, address);
  }
  if (rc == 0)
    rc = uv_listen(&l->h.stream, 511, on_connection);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", address, uv_strerror(rc));
    l->kind = SL_CONN_TCP; /* not ours to unlink: someone else's socket */
    sl_listener_stop(l);
    return rc;
  }
  return 0;
}

static void on_listener_closed(uv_handle_t *h) {
  struct sl_listener *l = h->data;
  if (l->on_closed)
    l->on_closed(l);
}

void sl_listener_stop(struct sl_listener *l) {
  if (!l->active)
    return;
  l->active = 0;
  uv_close(&l->h.handle, on_listener_closed);
  if (l->kind == SL_CONN_UNIX)
    unlink(l->address);
}

void sl_listener_close_conns(struct sl_listener *l) {
  while (l->conns.next != &l->conns)
    sl_conn_close(l->conns.next);
}

static void on_connect(uv_connect_t *req, int status) {
  struct sl_conn *c = req->data;
  if (c->closing)
    return;
  if (status != 0) {
    if (c->ops->cb_connect)
      c->ops->cb_connect(c, status);
    sl_conn_close(c);
    return;
  }
  if (c->kind == SL_CONN_TCP)
    uv_tcp_nodelay(&c->h.tcp, 1);
  start_reading(c);
  if (c->ops->cb_connect)
    c->ops->cb_connect(c, 0);
}

struct sl_conn *sl_conn_connect(uv_loop_t *loop, enum sl_conn_kind kind,
                                const char *address,
                                const struct sl_conn_ops *ops, void *proto) {
  struct sockaddr_storage ss;
  struct sl_conn *c;
  int rc;

  if (kind == SL_CONN_TCP && make_addr(address, &ss) != 0)
    return NULL;
  c = conn_new(loop, kind);
  if (c == NULL)
    return NULL;
  c->ops = ops;
  c->proto = proto;
  c->connect_req.data = c;
  snprintf(c->peer, sizeof(c->peer), "%s", address);
  if (kind == SL_CONN_TCP) {
    rc = uv_tcp_connect(&c->connect_req, &c->h.tcp, (struct sockaddr *)&ss,
                        on_connect);
    if (rc != 0) {
      c->ops = NULL; /* the caller learns of it from the NULL return */
      sl_conn_close(c);
      return NULL;
    }
  } else {
    uv_pipe_connect(&c->connect_req, &c->h.pipe, address, on_connect);
  }
  return c;
}
