/* conn.c - the generic stream over a transport: listeners and connections,
 * buffering, pause/resume, the write queue, limits and deferred close; the
 * transports are registered here (transports[]); see conn.h, transport.h. */
#include "conn.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define REFUSE_LINGER_MS 1000 /* a refused conn reads our answer in this */
#define MAX_REFUSING 64       /* refused conns lingering at once */
#define FD_RESERVE_MAX 256    /* fds inputs leave free (fd_guard) */
/* a conn whose answer made no progress this long may make room */
#define STUCK_WRITE_NS 1000000000ull

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
static void dial_free(struct sl_dial *d);
static int redial(struct sl_conn *c, int status);

/* A client conn's way to a host name: the lookup, then each address in
 * turn, each on a fresh handle (a socket whose connect failed cannot be
 * used again). Freed with the conn. */
struct sl_dial {
  uv_getaddrinfo_t req;
  struct sl_endpoint ep;   /* the caller's, with ss the address tried */
  struct addrinfo *list;   /* what the lookup gave */
  struct addrinfo *next;   /* the address to try after this one */
  int resolving;           /* the lookup is in flight (counts as a handle) */
};

/* ---- state and closing ------------------------------------------------ */

static const struct sl_transport_ops *const transports[] = {
    [SL_ENDPOINT_TCP] = &sl_transport_tcp,
    [SL_ENDPOINT_UNIX] = &sl_transport_unix,
};

int sl_endpoint_init(struct sl_endpoint *ep, enum sl_endpoint_kind kind,
                     const char *address, char *err, size_t errlen) {
  int rc;
  memset(ep, 0, sizeof(*ep));
  ep->kind = kind;
  if ((unsigned)kind >= sizeof(transports) / sizeof(transports[0]))
    rc = UV_EINVAL;
  else if (strlen(address) >= sizeof(ep->address))
    rc = UV_ENAMETOOLONG;
  else {
    ep->tp = transports[kind];
    snprintf(ep->address, sizeof(ep->address), "%s", address);
    rc = ep->tp->parse(ep);
  }
  if (rc != 0 && err)
    snprintf(err, errlen, "bad address %s: %s", address, uv_strerror(rc));
  return rc;
}

/* One of c's handles (or its name lookup) is done: free after the last. */
static void release(struct sl_conn *c) {
  /* three handles (stream, idle and partial timers), plus a name lookup in
   * flight: free after the last */
  if (--c->handles > 0)
    return;
  if (c->ops && c->ops->cb_close)
    c->ops->cb_close(c);
  in_free(&c->in);
  dial_free(c->dial);
  free(c);
}

static void on_handle_closed(uv_handle_t *h) {
  release(h->data);
}

static void close_handles(struct sl_conn *c) {
  c->state = SL_CONN_CLOSED;
  c->flags &= ~(SL_CONN_F_READING | SL_CONN_F_PARTIAL);
  uv_close((uv_handle_t *)&c->idle, on_handle_closed);
  uv_close((uv_handle_t *)&c->partial, on_handle_closed);
  if (c->dial && c->dial->resolving)
    uv_cancel((uv_req_t *)&c->dial->req); /* on_resolved still runs */
  if (!(c->flags & SL_CONN_F_REDIAL)) /* else on_redial_closed releases */
    c->tp->close(c, on_handle_closed);
}

/* Around every call into the protocol for c: a close it asks for is done
 * when the outermost such call returns (Redis's CLOSE_SCHEDULED), so the
 * caller below may still use c and its buffer. */
static void enter(struct sl_conn *c) {
  c->depth++;
}

static void leave(struct sl_conn *c) {
  if (--c->depth == 0 && c->state == SL_CONN_CLOSING)
    close_handles(c);
}

void sl_conn_close(struct sl_conn *c) {
  switch (c->state) {
  case SL_CONN_CLOSING:
  case SL_CONN_CLOSED:
    return; /* idempotent */
  case SL_CONN_CONNECTING:
  case SL_CONN_OPEN:
  case SL_CONN_PAUSED:
    break;
  }
  if (c->listener) {
    struct sl_listener *l = c->listener;
    if (c->prev)
      c->prev->next = c->next;
    else
      l->conns = c->next;
    if (c->next)
      c->next->prev = c->prev;
    c->next = c->prev = NULL;
    l->nconns--;
    l->pending -= c->charged; /* freed in the close callback */
    c->charged = 0;
  }
  c->state = SL_CONN_CLOSING;
  if (c->depth == 0)
    close_handles(c);
}

/* The peer, a deadline or a limit ends c: tell the protocol, then close. */
static void eof_and_close(struct sl_conn *c, int status) {
  enter(c);
  if (c->ops && c->ops->cb_eof && !sl_conn_is_closing(c))
    c->ops->cb_eof(c, status);
  sl_conn_close(c);
  leave(c);
}

enum sl_conn_state sl_conn_state(const struct sl_conn *c) {
  return c->state;
}

int sl_conn_is_closing(const struct sl_conn *c) {
  return c->state == SL_CONN_CLOSING || c->state == SL_CONN_CLOSED;
}

int sl_conn_is_paused(const struct sl_conn *c) {
  return c->state == SL_CONN_PAUSED;
}

int sl_conn_read_stopped(const struct sl_conn *c) {
  return (c->flags & SL_CONN_F_NO_READ) != 0;
}

const char *sl_conn_peer(const struct sl_conn *c) {
  return c->peer;
}

uint64_t sl_conn_offset(const struct sl_conn *c) {
  return c->offset;
}

size_t sl_conn_buffered(const struct sl_conn *c) {
  return c->in.len;
}

int sl_conn_pending_writes(const struct sl_conn *c) {
  return c->pending_writes;
}

void sl_conn_set_ops(struct sl_conn *c, const struct sl_conn_ops *ops,
                     void *proto) {
  c->ops = ops;
  c->proto = proto;
}

void sl_conn_set_proto(struct sl_conn *c, void *proto) {
  c->proto = proto;
}

void *sl_conn_proto(const struct sl_conn *c) {
  return c->proto;
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

/* The memory bound closes x: the stalest conn, or (self) the conn that
 * needed room when no other holds partial input. One line an operator can
 * act on: what was cut, the bound and its use. A producer without acks
 * loses what the conn had not delivered; one with acks resends it. */
static void shed_log(struct sl_listener *l, struct sl_conn *x, int self) {
  uint64_t suppressed = 0;
  if (sl_log_allow(&l->refuse_log, &suppressed))
    sl_log(SL_LOG_WARN, self ? "partial input over the listener's memory "
                               "bound and no other connection to shed; "
                               "closing this one (raise max_pending_bytes, "
                               "or send whole events)"
                             : "partial input over the listener's memory "
                               "bound; closing the stalest connection "
                               "(raise max_pending_bytes, or send whole "
                               "events)",
           SL_S("listener", l->name ? l->name : l->ep.address),
           SL_S("peer", x->peer), SL_U("bytes", x->in.len),
           SL_U("pending_bytes", l->pending), SL_U("connections", l->nconns),
           SL_U("max_pending_bytes", max_pending(l)),
           SL_U("suppressed", suppressed), SL_END);
}

/* Close the conn whose partial input has waited longest for its next byte
 * (not one we paused: its wait is ours), to make room for c. Returns 0 when
 * one was closed. */
static int shed_stalest(struct sl_listener *l, struct sl_conn *c) {
  struct sl_conn *x, *victim = NULL;
  for (x = l->conns; x; x = x->next)
    if (x != c && x->charged && x->in.len && x->state == SL_CONN_OPEN &&
        (victim == NULL || x->last_read_ns < victim->last_read_ns))
      victim = x;
  if (victim == NULL)
    return -1;
  l->stats.shed_memory++;
  shed_log(l, victim, 0);
  eof_and_close(victim, UV_ENOBUFS);
  return 0;
}

/* May c's buffer grow to hold n more bytes? Sheds stale conns as needed;
 * 0 (logged here, counted by the caller) when c itself must go. */
static int may_grow(struct sl_conn *c, size_t n) {
  struct sl_listener *l = c->listener;
  size_t more;
  if (l == NULL || (c->flags & SL_CONN_F_REFUSED))
    return 1;
  more = charge_of(grown_cap(&c->in, n));
  if (more <= c->charged)
    return 1;
  more -= c->charged;
  while (l->pending + more > max_pending(l))
    if (shed_stalest(l, c) != 0) {
      shed_log(l, c, 1);
      return 0;
    }
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
  if (c->listener && !(c->flags & SL_CONN_F_REFUSED))
    c->listener->stats.timed_out++;
  eof_and_close(c, UV_ETIMEDOUT);
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
  if (c->in.len == 0 || c->state != SL_CONN_OPEN) {
    if (c->flags & SL_CONN_F_PARTIAL)
      uv_timer_stop(&c->partial);
    c->flags &= ~SL_CONN_F_PARTIAL;
  } else if (progress || !(c->flags & SL_CONN_F_PARTIAL)) {
    uv_timer_start(&c->partial, on_partial_timeout, c->partial_ms, 0);
    c->flags |= SL_CONN_F_PARTIAL;
  }
}

/* The peer finished sending (EOF). A protocol that still owes it answers
 * (acks waiting for a disk buffer's sync) keeps c by calling
 * sl_conn_stop_reading from cb_eof, and closes it once they are out: a
 * producer that half-closes and waits for its last acks gets them. */
static void peer_done(struct sl_conn *c) {
  enter(c);
  if (c->ops && c->ops->cb_eof && !sl_conn_is_closing(c))
    c->ops->cb_eof(c, 0);
  if (!(c->flags & SL_CONN_F_NO_READ))
    sl_conn_close(c);
  leave(c);
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
  if (nread == UV_EOF) {
    peer_done(c);
    return;
  }
  if (nread == UV_ENOBUFS) /* our buffer could not grow */
    nread = UV_ENOMEM;
  eof_and_close(c, (int)nread);
}

static void start_reading(struct sl_conn *c) {
  switch (c->state) {
  case SL_CONN_OPEN:
    break;
  case SL_CONN_CONNECTING: /* on_connect starts it */
  case SL_CONN_PAUSED:     /* sl_conn_resume does */
  case SL_CONN_CLOSING:
  case SL_CONN_CLOSED:
    return;
  }
  if (c->flags & (SL_CONN_F_READING | SL_CONN_F_NO_READ))
    return;
  if (c->max_buffered && c->in.len >= c->max_buffered)
    return; /* the protocol must consume first */
  if (c->tp->read_start(c, on_alloc, on_read) == 0)
    c->flags |= SL_CONN_F_READING;
}

static void stop_reading(struct sl_conn *c) {
  if (!(c->flags & SL_CONN_F_READING))
    return;
  c->tp->read_stop(c);
  c->flags &= ~SL_CONN_F_READING;
}

static void deliver(struct sl_conn *c) {
  size_t used;

  if (c->state != SL_CONN_OPEN || (c->flags & SL_CONN_F_IN_DATA) ||
      c->in.len == 0)
    return;
  c->flags |= SL_CONN_F_IN_DATA;
  enter(c);
  used = c->ops->cb_data(c, c->in.data, c->in.len);
  c->flags &= ~SL_CONN_F_IN_DATA;
  if (sl_conn_is_closing(c)) {
    leave(c); /* the close it asked for happens here */
    return;
  }
  leave(c);
  c->offset += used;
  sl_buf_consume(&c->in, used);
  shrink(c);
  watch_partial(c, used > 0);
  if (c->max_buffered && c->in.len >= c->max_buffered)
    stop_reading(c);
}

void sl_conn_stop_reading(struct sl_conn *c) {
  if (sl_conn_is_closing(c))
    return;
  c->flags |= SL_CONN_F_NO_READ;
  stop_reading(c);
  uv_timer_stop(&c->idle);
}

void sl_conn_pause(struct sl_conn *c) {
  switch (c->state) {
  case SL_CONN_OPEN:
    break;
  case SL_CONN_CONNECTING: /* nothing is read before it is open */
  case SL_CONN_PAUSED:
  case SL_CONN_CLOSING:
  case SL_CONN_CLOSED:
    return;
  }
  c->state = SL_CONN_PAUSED;
  stop_reading(c);
  uv_timer_stop(&c->idle); /* waiting on us is not idleness */
  watch_partial(c, 0);     /* nor is it a slow client */
}

void sl_conn_resume(struct sl_conn *c) {
  switch (c->state) {
  case SL_CONN_PAUSED:
    c->state = SL_CONN_OPEN;
    break;
  case SL_CONN_OPEN: /* offer what is buffered again */
    break;
  case SL_CONN_CONNECTING:
  case SL_CONN_CLOSING:
  case SL_CONN_CLOSED:
    return;
  }
  if (c->idle_ms && !(c->flags & SL_CONN_F_NO_READ))
    uv_timer_start(&c->idle, on_idle_timeout, c->idle_ms, 0);
  deliver(c);
  watch_partial(c, 0); /* deliver may not have run: restart a stopped one */
  start_reading(c);
}

/* ---- writing ---------------------------------------------------------- */

/* Does c's listener close conns whose writes stand still (displace_waiting)?
 * Only then is the clock read per write: outputs and ack streams write on
 * every batch. */
static inline int watch_writes(const struct sl_conn *c) {
  return c->listener != NULL && c->listener->displaceable != NULL;
}

static void on_write(uv_write_t *req, int status) {
  struct write_req *w = container_of(req, struct write_req, req);
  struct sl_conn *c = w->conn;
  c->pending_writes--;
  if (watch_writes(c))
    c->write_ns = sl_mono_ns(); /* progress: the client takes our bytes */
  if (w->cb) {
    enter(c);
    w->cb(c, status, w->arg);
    leave(c);
  }
  sl_buf_close(&w->buf);
  free(w);
}

int sl_conn_write(struct sl_conn *c, struct sl_buf *b,
                  void (*cb)(struct sl_conn *c, int status, void *arg),
                  void *arg) {
  struct write_req *w;
  uv_buf_t ub;
  int rc;

  if (sl_conn_is_closing(c))
    return UV_ECANCELED;
  w = malloc(sizeof(*w));
  if (w == NULL)
    return UV_ENOMEM;
  w->buf = *b;
  w->conn = c;
  w->cb = cb;
  w->arg = arg;
  ub = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
  rc = c->tp->write(c, &w->req, &ub, on_write);
  if (rc != 0) {
    free(w);
    return rc;
  }
  sl_buf_init(b);
  if (c->pending_writes++ == 0 && watch_writes(c))
    c->write_ns = sl_mono_ns();
  return 0;
}

int sl_conn_try_write(struct sl_conn *c, const uint8_t *p, size_t n) {
  uv_buf_t ub;
  int rc;
  if (sl_conn_is_closing(c) || c->tp->try_write == NULL || c->pending_writes)
    return 0;
  ub = uv_buf_init((char *)p, (unsigned)n);
  rc = c->tp->try_write(c, &ub);
  return rc == UV_EAGAIN ? 0 : rc;
}

size_t sl_conn_write_queue_size(const struct sl_conn *c) {
  return c->tp->write_queue_size(c);
}

/* ---- conns ------------------------------------------------------------ */

static struct sl_conn *conn_new(uv_loop_t *loop,
                                const struct sl_transport_ops *tp) {
  struct sl_conn *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->tp = tp;
  c->state = SL_CONN_CONNECTING;
  c->handles = 3;
  sl_buf_init(&c->in);
  if (tp->init(loop, c) != 0) {
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

/* c: the refused conn (its peer is named), NULL when none was accepted */
static void refuse_log(struct sl_listener *l, const struct sl_conn *c,
                       const char *why) {
  uint64_t suppressed = 0;
  if (sl_log_allow(&l->refuse_log, &suppressed))
    sl_log(SL_LOG_WARN, "connection refused", SL_S("listener",
           l->name ? l->name : l->ep.address), SL_S("reason", why),
           SL_S("peer", c ? c->peer : ""),
           SL_U("open", l->nconns), SL_U("max_connections", l->max_conns),
           SL_U("suppressed", suppressed), SL_END);
}

/* c (accepted, not on l's list) is over a limit: close it, or with answer
 * write l->refusal if any and drain what the client sends for a moment so
 * the answer is not lost to a reset, then close. */
static void refuse(struct sl_listener *l, struct sl_conn *c, const char *why,
                   int answer) {
  struct sl_buf b;
  refuse_log(l, c, why);
  c->flags |= SL_CONN_F_REFUSED;
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
  for (x = l->conns; x; x = x->next)
    if (x->in.len == 0 && x->state == SL_CONN_OPEN &&
        !(x->flags & SL_CONN_F_NO_READ) && x->pending_writes == 0 &&
        now - x->last_read_ns >= l->displace_ms * 1000000ull &&
        (victim == NULL || x->last_read_ns < victim->last_read_ns))
      victim = x;
  if (victim == NULL)
    return 0;
  l->stats.displaced++;
  if (sl_log_allow(&l->refuse_log, &suppressed))
    sl_log(SL_LOG_INFO, "max_connections reached; closing the connection "
                        "quiet longest to admit a new one",
           SL_S("listener", l->name ? l->name : l->ep.address),
           SL_S("peer", victim->peer),
           SL_U("quiet_ms", (now - victim->last_read_ns) / 1000000u),
           SL_U("suppressed", suppressed), SL_END);
  eof_and_close(victim, 0);
  return 1;
}

/* l is full and no conn was quiet long enough: close the one that has
 * waited longest on its client: for a whole request, as its protocol says
 * (l->displaceable), or to take an answer, whose write has made no
 * progress for STUCK_WRITE_NS (clients that pipelined requests and read
 * none of the answers held every slot: their writes stayed pending).
 * Returns 1 when one was closed. */
static int displace_waiting(struct sl_listener *l) {
  struct sl_conn *x, *victim = NULL;
  uint64_t since, oldest = 0, now = sl_mono_ns(), suppressed = 0;
  int ok;
  if (l->displaceable == NULL)
    return 0;
  for (x = l->conns; x; x = x->next) {
    if (x->state != SL_CONN_OPEN)
      continue;
    if (x->pending_writes == 0)
      ok = l->displaceable(x, &since);
    else if ((ok = now - x->write_ns >= STUCK_WRITE_NS))
      since = x->write_ns;
    if (ok && (victim == NULL || since < oldest)) {
      victim = x;
      oldest = since;
    }
  }
  if (victim == NULL)
    return 0;
  l->stats.displaced++;
  if (sl_log_allow(&l->refuse_log, &suppressed))
    sl_log(SL_LOG_INFO, "max_connections reached; closing the connection "
                        "that waited longest on its client to admit a new "
                        "one",
           SL_S("listener", l->name ? l->name : l->ep.address),
           SL_S("peer", victim->peer),
           SL_U("waited_ms", oldest ? (now - oldest) / 1000000u : 0),
           SL_U("suppressed", suppressed), SL_END);
  eof_and_close(victim, 0);
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
  int rc;

  if (status != 0) {
    if (status == UV_EMFILE || status == UV_ENFILE) {
      l->stats.refused_fds++;
      refuse_log(l, NULL, "out of file descriptors");
      shed_backlog(l);
    }
    return;
  }
  if (l->spare == NULL)
    l->spare = conn_new(l->loop, l->ep.tp);
  c = conn_new(l->loop, l->ep.tp);
  if (c == NULL) {
    /* libuv holds the socket it accepted until we take it, and accepts
     * nothing more meanwhile: left there, the listener would stay deaf
     * for good. Out of memory: refuse this one, serve the next. */
    c = l->spare;
    l->spare = NULL;
    if (c == NULL)
      return; /* not even the spare: the next connection tries again */
    if (c->tp->accept(l, c) != 0) {
      sl_conn_close(c);
      return;
    }
    c->state = SL_CONN_OPEN;
    refuse(l, c, "out of memory", 0);
    return;
  }
  if (c->tp->accept(l, c) != 0) {
    sl_conn_close(c); /* not on l's list: nothing else to undo */
    return;
  }
  c->state = SL_CONN_OPEN;
  if (l->max_conns && l->nconns >= l->max_conns && !displace_quiet(l) &&
      !displace_waiting(l)) {
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
  if (c->tp->opened)
    c->tp->opened(c);
  c->listener = l;
  c->idle_ms = l->idle_ms;
  c->partial_ms = l->partial_ms;
  c->last_read_ns = sl_mono_ns(); /* quiet since it came */
  c->max_buffered = l->max_buffered;
  c->prev = NULL;
  c->next = l->conns;
  if (l->conns)
    l->conns->prev = c;
  l->conns = c;
  l->nconns++;
  enter(c);
  rc = l->on_accept(l, c);
  if (rc != 0)
    sl_conn_close(c);
  leave(c);
  if (rc != 0 || sl_conn_is_closing(c))
    return;
  if (c->idle_ms)
    uv_timer_start(&c->idle, on_idle_timeout, c->idle_ms, 0);
  start_reading(c);
}

int sl_listener_start(struct sl_listener *l, uv_loop_t *loop,
                      const struct sl_endpoint *ep,
                      sl_listener_accept_cb on_accept, void *data, char *err,
                      size_t errlen) {
  int rc;

  memset(&l->h, 0, sizeof(l->h));
  l->loop = loop;
  l->ep = *ep;
  l->on_accept = on_accept;
  l->data = data;
  l->conns = NULL;
  l->spare = NULL;
  l->nconns = 0;
  l->pending = 0;
  l->bound = 0;
  memset(&l->stats, 0, sizeof(l->stats));
  sl_log_limiter_init(&l->refuse_log, 10000, 10);
  if (reserve_fd < 0)
    reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  /* the handle exists from here on, so every failure below ends in
   * on_closed, like a normal stop */
  rc = l->ep.tp->listen(l, loop, on_connection);
  l->h.handle.data = l;
  l->active = 1;
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", ep->address,
             uv_strerror(rc));
    sl_listener_stop(l);
    return rc;
  }
  l->bound = 1;
  l->spare = conn_new(loop, l->ep.tp); /* NULL: on_connection tries again */
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
  if (l->spare) { /* never opened: closing it frees it */
    sl_conn_close(l->spare);
    l->spare = NULL;
  }
  uv_close(&l->h.handle, on_listener_closed);
  if (l->ep.tp->unlisten)
    l->ep.tp->unlisten(l);
}

void sl_listener_close_conns(struct sl_listener *l) {
  while (l->conns)
    sl_conn_close(l->conns); /* unlinks it at once */
}

struct sl_conn *sl_listener_next(const struct sl_listener *l,
                                 const struct sl_conn *c) {
  return c ? c->next : l->conns;
}

uint32_t sl_listener_open(const struct sl_listener *l) {
  return l->nconns;
}

const struct sl_listener_stats *sl_listener_stats(const struct sl_listener *l) {
  return &l->stats;
}

/* ---- dialing a host name ----------------------------------------------- */

int sl_conn_resolve_error(int status) {
  return status <= UV_EAI_ADDRFAMILY && status >= UV_EAI_PROTOCOL;
}

static void dial_free(struct sl_dial *d) {
  if (d == NULL)
    return;
  if (d->list)
    uv_freeaddrinfo(d->list);
  free(d);
}

static void on_connect(uv_connect_t *req, int status);

/* The connect failed with status or an address is tried first: start on
 * the next address. Returns 0 when an attempt is under way, or status
 * when no address is left. */
static int try_next(struct sl_conn *c, int status) {
  struct sl_dial *d = c->dial;
  while (d && d->next) {
    struct addrinfo *ai = d->next;
    d->next = ai->ai_next;
    if (ai->ai_addrlen > sizeof(d->ep.ss))
      continue;
    memset(&d->ep.ss, 0, sizeof(d->ep.ss));
    memcpy(&d->ep.ss, ai->ai_addr, ai->ai_addrlen);
    status = c->tp->connect(c, &d->ep, on_connect);
    if (status == 0)
      return 0;
    return redial(c, status); /* the handle may hold a socket: renew it */
  }
  return status;
}

static void on_redial_closed(uv_handle_t *h) {
  struct sl_conn *c = h->data;
  int rc;
  if (c->state != SL_CONN_CONNECTING) { /* closed meanwhile */
    release(c);
    return;
  }
  rc = c->tp->init(h->loop, c);
  if (rc == 0) {
    c->flags &= ~SL_CONN_F_REDIAL;
    c->h.handle.data = c;
    rc = try_next(c, UV_ECONNREFUSED);
    if (rc == 0)
      return;
  } else {
    c->handles--;        /* no stream handle left: close_handles skips it */
    c->dial->next = NULL; /* and no redial */
  }
  on_connect(&c->connect_req, rc);
}

/* The attempt failed with status: when another address is left, close the
 * handle and try it on a fresh one (on_redial_closed). Returns 0 then, or
 * status. */
static int redial(struct sl_conn *c, int status) {
  if (c->dial == NULL || c->dial->next == NULL ||
      c->state != SL_CONN_CONNECTING)
    return status;
  c->flags |= SL_CONN_F_REDIAL;
  c->tp->close(c, on_redial_closed);
  return 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  struct sl_conn *c = req->data;
  struct sl_dial *d = c->dial;
  struct addrinfo *ai;
  char first[INET6_ADDRSTRLEN + 1] = "";
  unsigned n = 0;

  d->resolving = 0;
  if (c->state != SL_CONN_CONNECTING) { /* closed meanwhile */
    if (res)
      uv_freeaddrinfo(res);
    release(c);
    return;
  }
  c->handles--; /* the stream and timers are still open */
  d->list = d->next = res;
  for (ai = res; ai; ai = ai->ai_next)
    n++;
  if (res)
    uv_ip_name(res->ai_addr, first, sizeof(first));
  sl_log(SL_LOG_DEBUG, "host name looked up", SL_S("address", d->ep.address),
         SL_I("status", status), SL_S("error", status ? uv_strerror(status) : ""),
         SL_U("addresses", n), SL_S("first", first), SL_END);
  if (status == 0 && res == NULL)
    status = UV_EAI_NONAME;
  if (status == 0)
    status = try_next(c, UV_EAI_NONAME);
  if (status != 0)
    on_connect(&c->connect_req, status);
}

/* Start looking up ep's host for c (on_resolved goes on). Returns 0 or
 * UV_E*. */
static int resolve(uv_loop_t *loop, struct sl_conn *c,
                   const struct sl_endpoint *ep) {
  struct addrinfo hints;
  int rc;

  c->dial = calloc(1, sizeof(*c->dial));
  if (c->dial == NULL)
    return UV_ENOMEM;
  c->dial->ep = *ep;
  c->dial->req.data = c;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC; /* not AI_ADDRCONFIG: it hides ::1 when only
                                  loopback has IPv6 */
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  rc = uv_getaddrinfo(loop, &c->dial->req, on_resolved, ep->host, ep->port,
                      &hints);
  if (rc != 0)
    return rc;
  c->dial->resolving = 1;
  c->handles++;
  return 0;
}

static void on_connect(uv_connect_t *req, int status) {
  struct sl_conn *c = req->data;
  switch (c->state) {
  case SL_CONN_CONNECTING:
    break;
  case SL_CONN_OPEN:
  case SL_CONN_PAUSED:
  case SL_CONN_CLOSING:
  case SL_CONN_CLOSED: /* closed first: the request was cancelled */
    return;
  }
  if (status != 0 && redial(c, status) == 0)
    return; /* the next address is being tried */
  enter(c);
  if (status != 0) {
    if (c->ops->cb_connect)
      c->ops->cb_connect(c, status);
    sl_conn_close(c);
    leave(c);
    return;
  }
  c->state = SL_CONN_OPEN;
  if (c->tp->opened)
    c->tp->opened(c);
  start_reading(c);
  if (c->ops->cb_connect)
    c->ops->cb_connect(c, 0);
  leave(c);
}

struct sl_conn *sl_conn_connect(uv_loop_t *loop, const struct sl_endpoint *ep,
                                const struct sl_conn_ops *ops, void *proto,
                                int *status) {
  struct sl_conn *c;
  int rc;

  c = conn_new(loop, ep->tp);
  if (c == NULL) {
    if (status)
      *status = UV_ENOMEM;
    return NULL;
  }
  c->ops = ops;
  c->proto = proto;
  c->connect_req.data = c;
  snprintf(c->peer, sizeof(c->peer), "%s", ep->address);
  rc = ep->resolve ? resolve(loop, c, ep) : c->tp->connect(c, ep, on_connect);
  if (rc != 0) {
    c->ops = NULL; /* the caller learns of it from the NULL return */
    sl_conn_close(c);
    if (status)
      *status = rc;
    return NULL;
  }
  return c;
}
