/* conn.c - listeners and connections over libuv streams; see conn.h. */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

#define READ_CHUNK 65536
#define REFUSE_LINGER_MS 1000 /* a refused conn reads our answer in this */
#define MAX_REFUSING 64       /* refused conns lingering at once */
#define FD_RESERVE_MAX 256    /* fds inputs leave free (fd_guard) */

/* A descriptor held in reserve: when accept fails for want of fds, it is
 * closed so the pending connection can be accepted and closed at once,
 * instead of staying in the backlog and waking the loop forever. */
static int reserve_fd = -1;
static uint32_t refusing; /* refused conns still lingering */

struct write_req {
  uv_write_t req;
  struct sl_buf buf;
  struct sl_conn *conn;
  void (*cb)(struct sl_conn *c, int status, void *arg);
  void *arg;
};

static void deliver(struct sl_conn *c);
static void start_reading(struct sl_conn *c);
static void on_idle_timeout(uv_timer_t *t);
static void in_free(struct sl_buf *b);

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
  /* three handles (stream, idle and partial timers): free after the last */
  if (c->closing++ < 3)
    return;
  if (c->ops && c->ops->cb_close)
    c->ops->cb_close(c);
  in_free(&c->in);
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
    c->listener->pending -= c->charged; /* freed in the close callback */
    c->charged = 0;
  }
  uv_close((uv_handle_t *)&c->idle, on_handle_closed);
  uv_close((uv_handle_t *)&c->partial, on_handle_closed);
  uv_close(&c->h.handle, on_handle_closed);
}

/* ---- the memory bound -------------------------------------------------- */

/* The capacity sl_buf_reserve(b, n) ends with. */
static size_t grown_cap(const struct sl_buf *b, size_t n) {
  size_t want = b->len + n, cap = b->cap ? b->cap : 256;
  if (want <= b->cap)
    return b->cap;
  while (cap < want)
    cap *= 2;
  return cap;
}

/* Input buffers past SL_CONN_FREE_BUFFER live in mappings of their own:
 * what a shed or finished partial event held goes back to the system at
 * once, so the process's memory follows max_pending (the heap would keep
 * the high-water mark of a flood). Smaller ones come from malloc. */
static int in_reserve(struct sl_buf *b, size_t n) {
  size_t cap = grown_cap(b, n);
  void *p;
  if (cap == b->cap)
    return 0;
  if (cap <= SL_CONN_FREE_BUFFER)
    return sl_buf_reserve(b, n);
  if (b->cap > SL_CONN_FREE_BUFFER) {
    p = mremap(b->data, b->cap, cap, MREMAP_MAYMOVE);
  } else {
    p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
             -1, 0);
    if (p != MAP_FAILED) {
      if (b->len)
        memcpy(p, b->data, b->len);
      free(b->data);
    }
  }
  if (p == MAP_FAILED)
    return SL_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

static void in_free(struct sl_buf *b) {
  if (b->cap > SL_CONN_FREE_BUFFER)
    munmap(b->data, b->cap);
  else
    free(b->data);
  sl_buf_init(b);
}

static size_t charge_of(size_t cap) {
  return cap > SL_CONN_FREE_BUFFER ? cap : 0;
}

static void account(struct sl_conn *c) {
  size_t now = charge_of(c->in.cap);
  if (c->listener) {
    c->listener->pending += now;
    c->listener->pending -= c->charged;
  }
  c->charged = now;
}

/* At least one conn's largest buffer (its capacity doubles past
 * max_buffered), so one whole event always fits. */
static size_t max_pending(const struct sl_listener *l) {
  if (l->max_pending == 0)
    return SIZE_MAX;
  return l->max_pending > l->max_buffered * 2 ? l->max_pending
                                              : l->max_buffered * 2;
}

/* Close the conn whose partial input has waited longest for its next byte
 * (not one we paused: its wait is ours), to make room for c. Returns 0 when
 * one was closed. */
static int shed_stalest(struct sl_listener *l, struct sl_conn *c) {
  struct sl_conn *x, *victim = NULL;
  uint64_t suppressed = 0;
  for (x = l->conns.next; x != &l->conns; x = x->next)
    if (x != c && x->charged && x->in.len && !x->paused && !x->closing &&
        (victim == NULL || x->last_read_ns < victim->last_read_ns))
      victim = x;
  if (victim == NULL)
    return -1;
  l->stats.shed_memory++;
  if (sl_log_allow(&l->refuse_log, &suppressed))
    sl_log(SL_LOG_WARN, "partial input over the listener's memory bound; "
                        "closing the stalest connection",
           SL_S("listener", l->name ? l->name : l->address),
           SL_S("peer", victim->peer), SL_U("bytes", victim->in.len),
           SL_U("max_pending_bytes", max_pending(l)),
           SL_U("suppressed", suppressed), SL_END);
  if (victim->ops && victim->ops->cb_eof)
    victim->ops->cb_eof(victim, UV_ENOBUFS);
  sl_conn_close(victim);
  return 0;
}

/* May c's buffer grow to hold n more bytes? Sheds stale conns as needed. */
static int may_grow(struct sl_conn *c, size_t n) {
  struct sl_listener *l = c->listener;
  size_t more;
  if (l == NULL || c->refused)
    return 1;
  more = charge_of(grown_cap(&c->in, n));
  if (more <= c->charged)
    return 1;
  more -= c->charged;
  while (l->pending + more > max_pending(l))
    if (shed_stalest(l, c) != 0)
      return 0;
  return 1;
}

/* A buffer that held a large event is given back once it is (nearly)
 * empty, so a conn does not keep its largest event's memory for life. */
static void shrink(struct sl_conn *c) {
  void *p;
  if (c->in.len == 0 && c->in.cap > SL_CONN_FREE_BUFFER) {
    in_free(&c->in);
  } else {
    if (c->in.cap <= READ_CHUNK * 2 || c->in.len > READ_CHUNK)
      return;
    p = mremap(c->in.data, c->in.cap, READ_CHUNK * 2, 0); /* in place */
    if (p == MAP_FAILED)
      return;
    c->in.cap = READ_CHUNK * 2;
  }
  account(c);
}

/* ---- reading ---------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct sl_conn *c = h->data;
  (void)suggested;
  if (!may_grow(c, READ_CHUNK)) {
    c->listener->stats.shed_memory++;
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  if (in_reserve(&c->in, READ_CHUNK) != 0) {
    buf->base = NULL; /* on_read gets UV_ENOBUFS and closes c */
    buf->len = 0;
    return;
  }
  account(c);
  buf->base = (char *)c->in.data + c->in.len;
  buf->len = c->in.cap - c->in.len;
}

static void timed_out(struct sl_conn *c) {
  if (c->listener && !c->refused)
    c->listener->stats.timed_out++;
  if (c->ops && c->ops->cb_eof)
    c->ops->cb_eof(c, UV_ETIMEDOUT);
  sl_conn_close(c);
}

static void on_idle_timeout(uv_timer_t *t) {
  timed_out(t->data);
}

static void on_partial_timeout(uv_timer_t *t) {
  timed_out(t->data);
}

void sl_listener_count_timeout(struct sl_conn *c) {
  if (c->listener)
    c->listener->stats.timed_out++;
}

void sl_listener_shed(struct sl_conn *c) {
  if (c->listener)
    c->listener->stats.shed_memory++;
}

/* Unconsumed bytes are a partial message: it must be complete within
 * partial_ms of its first byte. progress: the protocol consumed something,
 * so what is left began with the latest read. */
static void watch_partial(struct sl_conn *c, int progress) {
  if (c->partial_ms == 0)
    return;
  if (c->in.len == 0 || c->paused || c->closing) {
    if (c->partial_running)
      uv_timer_stop(&c->partial);
    c->partial_running = 0;
  } else if (progress || !c->partial_running) {
    uv_timer_start(&c->partial, on_partial_timeout, c->partial_ms, 0);
    c->partial_running = 1;
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct sl_conn *c = s->data;
  (void)buf;
  if (nread > 0) {
    c->in.len += (size_t)nread;
    c->bytes_in += (uint64_t)nread;
    c->last_read_ns = sl_mono_ns();
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
  shrink(c);
  watch_partial(c, used > 0);
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
  watch_partial(c, 0);     /* nor is it a slow client */
}

void sl_conn_resume(struct sl_conn *c) {
  if (c->closing)
    return;
  c->paused = 0;
  if (c->idle_ms && !c->no_read)
    uv_timer_start(&c->idle, on_idle_timeout, c->idle_ms, 0);
  deliver(c);
  watch_partial(c, 0); /* deliver may not have run: restart a stopped one */
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
  uv_timer_init(loop, &c->partial);
  c->h.handle.data = c;
  c->idle.data = c;
  c->partial.data = c;
  return c;
}

/* ---- refusing ---------------------------------------------------------- */

static void refused_eof(struct sl_conn *c, int status) { (void)c, (void)status; }

static size_t refused_data(struct sl_conn *c, const uint8_t *d, size_t n) {
  (void)c, (void)d;
  return n; /* the request is not read, only drained */
}

static void refused_close(struct sl_conn *c) {
  (void)c;
  refusing--;
}

static const struct sl_conn_ops refused_ops = {
    .cb_data = refused_data,
    .cb_eof = refused_eof,
    .cb_close = refused_close,
};

static void refuse_log(struct sl_listener *l, const char *why) {
  uint64_t suppressed = 0;
  if (sl_log_allow(&l->refuse_log, &suppressed))
    sl_log(SL_LOG_WARN, "connection refused", SL_S("listener",
           l->name ? l->name : l->address), SL_S("reason", why),
           SL_U("open", l->nconns), SL_U("max_connections", l->max_conns),
           SL_U("suppressed", suppressed), SL_END);
}

/* c (accepted, not on l's list) is over a limit: close it, or with answer
 * write l->refusal if any and drain what the client sends for a moment so
 * the answer is not lost to a reset, then close. */
static void refuse(struct sl_listener *l, struct sl_conn *c, const char *why,
                   int answer) {
  struct sl_buf b;
  refuse_log(l, why);
  c->refused = 1;
  if (!answer || l->refusal == NULL || refusing >= MAX_REFUSING) {
    sl_conn_close(c);
    return;
  }
  refusing++;
  c->ops = &refused_ops;
  sl_buf_init(&b);
  if (sl_buf_append(&b, l->refusal, l->refusal_len) != 0 ||
      sl_conn_write(c, &b, NULL, NULL) != 0) {
    sl_buf_close(&b);
    sl_conn_close(c);
    return;
  }
  c->idle_ms = REFUSE_LINGER_MS;
  uv_timer_start(&c->idle, on_idle_timeout, REFUSE_LINGER_MS, 0);
  start_reading(c);
}

/* l is full: close the conn that has been quiet longest, when that is
 * longer than displace_ms and it holds nothing (no partial input, no event
 * waiting on us), so idle connections cannot keep producers out for good.
 * Returns 1 when one was closed. */
static int displace_quiet(struct sl_listener *l) {
  struct sl_conn *x, *victim = NULL;
  uint64_t now = sl_mono_ns(), suppressed = 0;
  if (l->displace_ms == 0)
    return 0;
  for (x = l->conns.next; x != &l->conns; x = x->next)
    if (x->in.len == 0 && !x->paused && !x->closing && !x->no_read &&
        x->pending_writes == 0 &&
        now - x->last_read_ns >= l->displace_ms * 1000000ull &&
        (victim == NULL || x->last_read_ns < victim->last_read_ns))
      victim = x;
  if (victim == NULL)
    return 0;
  l->stats.displaced++;
  if (sl_log_allow(&l->refuse_log, &suppressed))
    sl_log(SL_LOG_INFO, "max_connections reached; closing the connection "
                        "quiet longest to admit a new one",
           SL_S("listener", l->name ? l->name : l->address),
           SL_S("peer", victim->peer),
           SL_U("quiet_ms", (now - victim->last_read_ns) / 1000000u),
           SL_U("suppressed", suppressed), SL_END);
  if (victim->ops && victim->ops->cb_eof)
    victim->ops->cb_eof(victim, 0);
  sl_conn_close(victim);
  return 1;
}

/* Is the process within a reserve of its fd limit? fd is the one just
 * accepted: the lowest free number, so every fd below it is open. */
static int fds_short(int fd) {
  struct rlimit rl;
  rlim_t reserve;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
    return 0;
  reserve = rl.rlim_cur / 4 < FD_RESERVE_MAX ? rl.rlim_cur / 4 : FD_RESERVE_MAX;
  return (rlim_t)fd + reserve >= rl.rlim_cur;
}

/* accept failed for want of fds (libuv's own reserve is spent): take one
 * pending connection off the backlog with our reserve fd and close it, so
 * the loop does not wake for it again and again. */
static void shed_backlog(struct sl_listener *l) {
  uv_os_fd_t lfd;
  int fd;
  if (reserve_fd < 0 || uv_fileno(&l->h.handle, &lfd) != 0)
    return;
  close(reserve_fd);
  fd = accept(lfd, NULL, NULL);
  if (fd >= 0)
    close(fd);
  reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void on_connection(uv_stream_t *server, int status) {
  struct sl_listener *l = server->data;
  struct sl_conn *c;

  if (status != 0) {
    if (status == UV_EMFILE || status == UV_ENFILE) {
      l->stats.refused_fds++;
      refuse_log(l, "out of file descriptors");
      shed_backlog(l);
    }
    return;
  }
  c = conn_new(l->loop, l->kind);
  if (c == NULL)
    return; /* the kernel keeps it in the backlog; we retry next time */
  if (uv_accept(server, &c->h.stream) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
    uv_close((uv_handle_t *)&c->partial, on_handle_closed);
    uv_close(&c->h.handle, on_handle_closed);
    return;
  }
  c->listener = l; /* for peer_name; a refused conn is not on l's list */
  peer_name(c);
  c->listener = NULL;
  if (l->max_conns && l->nconns >= l->max_conns && !displace_quiet(l)) {
    l->stats.refused_limit++;
    refuse(l, c, "max_connections reached", 1);
    return;
  }
  if (l->fd_guard) {
    uv_os_fd_t fd;
    if (uv_fileno(&c->h.handle, &fd) == 0 && fds_short(fd)) {
      l->stats.refused_fds++;
      /* no answer: a lingering conn would hold the fd we are short of */
      refuse(l, c, "near the process's file descriptor limit", 0);
      return;
    }
  }
  l->stats.accepted++;
  if (l->kind == SL_CONN_TCP)
    uv_tcp_nodelay(&c->h.tcp, 1);
  c->listener = l;
  c->idle_ms = l->idle_ms;
  c->partial_ms = l->partial_ms;
  c->last_read_ns = sl_mono_ns(); /* quiet since it came */
  c->max_buffered = l->max_buffered;
  c->next = l->conns.next;
  c->prev = &l->conns;
  l->conns.next->prev = c;
  l->conns.next = c;
  l->nconns++;
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
  l->pending = 0;
  memset(&l->stats, 0, sizeof(l->stats));
  sl_log_limiter_init(&l->refuse_log, 10000, 10);
  if (reserve_fd < 0)
    reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
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
