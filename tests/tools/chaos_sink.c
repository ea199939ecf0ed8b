/* chaos_sink.c - a native-protocol TCP server that misbehaves on purpose,
 * for the delivery tests (tests/integration/test_chaos.py). Driven by a
 * seed, for --chaos-ms it keeps switching between behaving, stalling (not
 * reading: short stalls well under the sender's timeout, long ones well
 * over it), acknowledging slowly, dropping connections mid-stream (RST,
 * unacknowledged events discarded), refusing (listener closed for a while)
 * and restarting (everything closed, back shortly); after that it behaves.
 *
 * It speaks the sluice native protocol: msgpack event maps back to back,
 * optionally opened by the ack-mode hello {"sluice":1,"ack":true}, after
 * which it answers with the running count of events it accepted on the
 * connection. Every event it accepts has its id appended to the ledger
 * (one line each) before the ack that confirms it is written; events read
 * and not acknowledged when a connection is dropped are not recorded, as
 * a sender must send them again. So the ledger holds exactly what the
 * sender was told is delivered, plus what it may not have heard of only if
 * an ack raced a connection the sender itself gave up on (the chaos keeps
 * stalls and slow acks clear of --timeout-ms so that does not happen).
 *
 *   chaos_sink --port PORT --seed N --ledger FILE [--chaos-ms MS]
 *              [--timeout-ms MS] [--host IP]
 *
 * Prints "chaos_sink listening HOST:PORT" on stderr once it listens, one
 * line per action, and a summary at SIGTERM/SIGINT, then exits 0. Single
 * threaded (poll); owns its sockets and the ledger file. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "codec.h"

#define MAX_CONNS 16
#define READ_BYTES (64u << 10)
#define MAX_EVENT (16u << 20)

enum mode { CALM = 0, STALL, SLOW, DROP, REFUSE, RESTART, NMODES };
static const char *const mode_names[] = {"calm",   "stall",  "slow",
                                         "drop",   "refuse", "restart"};

struct conn {
  int fd;
  struct sl_buf in;
  struct sl_buf pending_ids; /* "id\n" of events read, not yet acked */
  uint64_t pending;          /* events in pending_ids */
  uint64_t count;            /* events acked on this connection */
  uint64_t ack_due_ns;       /* slow acks: when to answer; 0 none */
  uint32_t drop_after;       /* drop once this many are pending; 0 never */
  int first_seen, ack;
};

struct sink {
  const char *host;
  int port, listen_fd;
  FILE *ledger;
  uint64_t rng;
  uint64_t start_ns, chaos_end_ns;
  uint32_t timeout_ms;
  enum mode mode;
  uint64_t mode_until_ns;
  uint64_t stall_until_ns;
  uint64_t listen_at_ns; /* refusing: listen again at this time */
  uint32_t slow_ms;
  struct conn conns[MAX_CONNS];
  uint64_t accepted, connections, drops, actions[NMODES], bad;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t next(struct sink *s) {
  /* xorshift64* */
  s->rng ^= s->rng >> 12;
  s->rng ^= s->rng << 25;
  s->rng ^= s->rng >> 27;
  return s->rng * 0x2545f4914f6cdd1dull;
}

static uint32_t between(struct sink *s, uint32_t lo, uint32_t hi) {
  return hi <= lo ? lo : lo + (uint32_t)(next(s) % (hi - lo + 1));
}

static void say(struct sink *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void say(struct sink *s, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "chaos_sink: t=%llums ",
          (unsigned long long)((now_ns() - s->start_ns) / 1000000u));
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* ---- the listener ---------------------------------------------------------- */

static int listen_now(struct sink *s) {
  struct sockaddr_in a;
  int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)s->port);
  if (inet_pton(AF_INET, s->host, &a.sin_addr) != 1 ||
      bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0) {
    close(fd);
    return -1;
  }
  s->listen_fd = fd;
  return 0;
}

/* ---- connections ----------------------------------------------------------- */

static void conn_free(struct conn *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  sl_buf_close(&c->in);
  sl_buf_close(&c->pending_ids);
  memset(c, 0, sizeof(*c));
  c->fd = -1;
}

/* Let the acks already written leave (so they reach the sender before the
 * reset), then reset the connection: whatever it sent and was not
 * acknowledged is gone, as at a crash. */
static void conn_abort(struct sink *s, struct conn *c) {
  struct linger lg = {1, 0};
  int i, outq = 0;
  for (i = 0; i < 100; i++) {
    if (ioctl(c->fd, SIOCOUTQ, &outq) != 0 || outq == 0)
      break;
    usleep(1000);
  }
  setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  s->drops++;
  conn_free(c);
}

/* Record the pending events, then acknowledge them. A sender that already
 * closed its end gave up on them: nothing is recorded then. */
static int ack_now(struct sink *s, struct conn *c) {
  struct pollfd p = {c->fd, POLLRDHUP, 0};
  struct sl_buf b;
  int rc = 0;
  c->ack_due_ns = 0;
  if (c->pending == 0)
    return 0;
  if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
    conn_free(c);
    return -1;
  }
  if (fwrite(c->pending_ids.data, 1, c->pending_ids.len, s->ledger) !=
          c->pending_ids.len ||
      fflush(s->ledger) != 0) {
    perror("chaos_sink: ledger");
    exit(1);
  }
  s->accepted += c->pending;
  c->count += c->pending;
  c->pending = 0;
  sl_buf_reset(&c->pending_ids);
  if (!c->ack)
    return 0;
  sl_buf_init(&b);
  if (sl_codec_put_uint(&b, c->count) == 0) {
    size_t off = 0;
    while (off < b.len) {
      ssize_t n = write(c->fd, b.data + off, b.len - off);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        struct pollfd w = {c->fd, POLLOUT, 0};
        poll(&w, 1, 100);
        continue;
      }
      if (n <= 0) {
        rc = -1;
        break;
      }
      off += (size_t)n;
    }
  }
  sl_buf_close(&b);
  if (rc != 0)
    conn_free(c);
  return rc;
}

/* Is the map at p the ack-mode hello? */
static int is_hello(const uint8_t *p, size_t n, int *ack) {
  const uint8_t *v;
  size_t vlen;
  if (sl_codec_map_find(p, n, "topic", 5, &v, &vlen) == 0 ||
      sl_codec_map_find(p, n, "sluice", 6, &v, &vlen) != 0)
    return 0;
  *ack = sl_codec_map_find(p, n, "ack", 3, &v, &vlen) == 0 && vlen == 1 &&
         v[0] == 0xc3;
  return 1;
}

/* Read what is there and take the complete events. Returns -1 when the
 * connection went away. */
static int conn_read(struct sink *s, struct conn *c) {
  size_t pos = 0, used;
  ssize_t n;
  if (sl_buf_reserve(&c->in, READ_BYTES) != 0)
    return -1;
  n = read(c->fd, c->in.data + c->in.len, READ_BYTES);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return 0;
  if (n <= 0) {
    conn_free(c); /* unacknowledged events are the sender's to resend */
    return -1;
  }
  c->in.len += (size_t)n;
  while (pos < c->in.len) {
    struct sl_event_view v;
    struct sl_codec_error err;
    const uint8_t *p = c->in.data + pos;
    int rc = sl_codec_skip(p, c->in.len - pos, MAX_EVENT, &used, &err);
    if (rc == SL_EAGAIN)
      break;
    if (rc != 0) {
      fprintf(stderr, "chaos_sink: bad bytes: %s\n", err.msg);
      s->bad++;
      conn_free(c);
      return -1;
    }
    if (!c->first_seen) {
      c->first_seen = 1;
      if (is_hello(p, used, &c->ack)) {
        pos += used;
        continue;
      }
    }
    if (sl_codec_parse_event(p, used, &v, &err) != 0 || v.id.p == NULL) {
      fprintf(stderr, "chaos_sink: not an event: %s\n",
              v.id.p ? err.msg : "no id");
      s->bad++;
      conn_free(c);
      return -1;
    }
    if (sl_buf_append(&c->pending_ids, v.id.p, v.id.len) != 0 ||
        sl_buf_putc(&c->pending_ids, '\n') != 0)
      return -1;
    c->pending++;
    pos += used;
  }
  sl_buf_consume(&c->in, pos);
  if (c->drop_after && c->pending >= c->drop_after) {
    say(s, "drop mid-stream with %llu events unacknowledged",
        (unsigned long long)c->pending);
    conn_abort(s, c);
    return -1;
  }
  if (c->pending == 0)
    return 0;
  if (s->mode == SLOW && c->ack) {
    if (c->ack_due_ns == 0)
      c->ack_due_ns = now_ns() + (uint64_t)s->slow_ms * 1000000u;
    return 0;
  }
  return ack_now(s, c);
}

static void close_all(struct sink *s) {
  int i;
  for (i = 0; i < MAX_CONNS; i++)
    if (s->conns[i].fd >= 0)
      conn_abort(s, &s->conns[i]);
  if (s->listen_fd >= 0)
    close(s->listen_fd);
  s->listen_fd = -1;
}

/* ---- the chaos ------------------------------------------------------------- */

static void choose(struct sink *s, uint64_t now) {
  uint32_t t = s->timeout_ms, ms;
  enum mode m = now >= s->chaos_end_ns ? CALM : (enum mode)(next(s) % NMODES);
  int i;

  s->mode = m;
  s->actions[m]++;
  s->slow_ms = 0;
  for (i = 0; i < MAX_CONNS; i++)
    s->conns[i].drop_after = 0;
  switch (m) {
  case CALM:
    ms = between(s, 100, 400);
    break;
  case STALL:
    /* clear of the sender's timeout either way: a short stall it sits
     * out, a long one it gives up on well before the sink reads again */
    ms = next(s) % 2 ? between(s, t / 10, t / 3) : between(s, 2 * t, 3 * t);
    s->stall_until_ns = now + (uint64_t)ms * 1000000u;
    break;
  case SLOW:
    ms = between(s, 200, 600);
    s->slow_ms = between(s, 5, t / 4);
    break;
  case DROP:
    ms = between(s, 100, 300);
    for (i = 0; i < MAX_CONNS; i++)
      s->conns[i].drop_after = between(s, 1, 400);
    break;
  case REFUSE:
  case RESTART:
    ms = m == REFUSE ? between(s, 100, 500) : between(s, 20, 150);
    close_all(s);
    s->listen_at_ns = now + (uint64_t)ms * 1000000u;
    break;
  default:
    ms = 100;
  }
  s->mode_until_ns = now + (uint64_t)ms * 1000000u;
  if (now < s->chaos_end_ns)
    say(s, "%s for %u ms", mode_names[m], ms);
}

static void usage(void) {
  fprintf(stderr, "usage: chaos_sink --port PORT --seed N --ledger FILE "
                  "[--chaos-ms MS] [--timeout-ms MS] [--host IP]\n");
  exit(2);
}

int main(int argc, char **argv) {
  struct sink s;
  struct sigaction sa;
  uint64_t seed = 1, z;
  const char *ledger = NULL;
  uint32_t chaos_ms = 4000;
  int i;

  memset(&s, 0, sizeof(s));
  s.host = "127.0.0.1";
  s.timeout_ms = 500;
  s.listen_fd = -1;
  for (i = 0; i < MAX_CONNS; i++)
    s.conns[i].fd = -1;
  for (i = 1; i < argc; i++) {
    if (i + 1 >= argc)
      usage();
    if (strcmp(argv[i], "--port") == 0)
      s.port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--seed") == 0)
      seed = strtoull(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--ledger") == 0)
      ledger = argv[++i];
    else if (strcmp(argv[i], "--chaos-ms") == 0)
      chaos_ms = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--timeout-ms") == 0)
      s.timeout_ms = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--host") == 0)
      s.host = argv[++i];
    else
      usage();
  }
  if (s.port <= 0 || ledger == NULL || s.timeout_ms < 30)
    usage();
  s.ledger = fopen(ledger, "a");
  if (s.ledger == NULL) {
    perror("chaos_sink: ledger");
    return 1;
  }
  z = seed + 0x9e3779b97f4a7c15ull; /* splitmix64: any seed, a good state */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  s.rng = (z ^ (z >> 31)) | 1;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal; /* no SA_RESTART: poll returns */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (listen_now(&s) != 0) {
    fprintf(stderr, "chaos_sink: cannot listen on %s:%d: %s\n", s.host, s.port,
            strerror(errno));
    return 1;
  }
  s.start_ns = now_ns();
  s.chaos_end_ns = s.start_ns + (uint64_t)chaos_ms * 1000000u;
  s.mode = CALM;
  s.mode_until_ns = s.start_ns + 200u * 1000000u; /* let the sender connect */
  fprintf(stderr, "chaos_sink listening %s:%d seed=%llu\n", s.host, s.port,
          (unsigned long long)seed);

  while (!stop) {
    struct pollfd pfd[MAX_CONNS + 1];
    int map[MAX_CONNS + 1], np = 0, wait_ms = 50, n;
    uint64_t now = now_ns(), soonest = now + 50u * 1000000u;
    int stalled;

    if (now >= s.mode_until_ns)
      choose(&s, now);
    if (s.listen_fd < 0 && now >= s.listen_at_ns && listen_now(&s) == 0)
      say(&s, "listening again");
    stalled = s.mode == STALL && now < s.stall_until_ns;
    for (i = 0; i < MAX_CONNS; i++) {
      struct conn *c = &s.conns[i];
      if (c->fd < 0)
        continue;
      if (c->ack_due_ns && now >= c->ack_due_ns) {
        if (ack_now(&s, c) != 0)
          continue;
      }
      if (c->ack_due_ns && c->ack_due_ns < soonest)
        soonest = c->ack_due_ns;
      if (!stalled) {
        pfd[np].fd = c->fd;
        pfd[np].events = POLLIN;
        map[np++] = i;
      }
    }
    if (s.listen_fd >= 0) {
      pfd[np].fd = s.listen_fd;
      pfd[np].events = POLLIN;
      map[np++] = -1;
    }
    if (s.mode_until_ns < soonest)
      soonest = s.mode_until_ns;
    if (stalled && s.stall_until_ns < soonest)
      soonest = s.stall_until_ns;
    if (s.listen_fd < 0 && s.listen_at_ns < soonest)
      soonest = s.listen_at_ns;
    wait_ms = soonest > now ? (int)((soonest - now) / 1000000u) + 1 : 0;
    n = poll(pfd, (nfds_t)np, wait_ms);
    if (n <= 0)
      continue;
    for (i = 0; i < np; i++) {
      if (pfd[i].revents == 0)
        continue;
      if (map[i] < 0) {
        int fd, k;
        while ((fd = accept4(s.listen_fd, NULL, NULL,
                             SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          for (k = 0; k < MAX_CONNS && s.conns[k].fd >= 0; k++)
            ;
          if (k == MAX_CONNS) {
            close(fd);
            continue;
          }
          memset(&s.conns[k], 0, sizeof(s.conns[k]));
          s.conns[k].fd = fd;
          if (s.mode == DROP)
            s.conns[k].drop_after = between(&s, 1, 400);
          s.connections++;
        }
      } else if (s.conns[map[i]].fd >= 0) {
        conn_read(&s, &s.conns[map[i]]);
      }
    }
  }
  for (i = 0; i < MAX_CONNS; i++)
    if (s.conns[i].fd >= 0)
      conn_free(&s.conns[i]);
  if (s.listen_fd >= 0)
    close(s.listen_fd);
  fclose(s.ledger);
  fprintf(stderr,
          "chaos_sink: done accepted=%llu connections=%llu drops=%llu bad=%llu "
          "calm=%llu stall=%llu slow=%llu drop=%llu refuse=%llu "
          "restart=%llu\n",
          (unsigned long long)s.accepted, (unsigned long long)s.connections,
          (unsigned long long)s.drops, (unsigned long long)s.bad,
          (unsigned long long)s.actions[CALM],
          (unsigned long long)s.actions[STALL],
          (unsigned long long)s.actions[SLOW],
          (unsigned long long)s.actions[DROP],
          (unsigned long long)s.actions[REFUSE],
          (unsigned long long)s.actions[RESTART]);
  return s.bad ? 1 : 0;
}
