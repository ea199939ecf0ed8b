/* loadgen.c - the benchmark load generator. Pre-encodes a batch of native-
 * protocol events (~114 bytes: a few topics, a key, a small payload map),
 * writes it, repeated as often as needed, over one or more TCP connections
 * in large writes, as fast as the engine takes them or paced at a rate,
 * and waits until the engine has delivered them all: by polling its admin
 * /metrics for outputs' event counts, or by counting them in a sink of its
 * own that the engine's tcp output writes to. With --stamp every event
 * carries its send time (the event's time field, set just before the write)
 * and the sink reports the end-to-end latency percentiles (to the kernel's
 * arrival time of each read, see sink_recv). With --pid it
 * reports the engine's CPU over the run, and always its own, per event.
 * Prints one line of key=value results. Owns everything it allocates.
 *
 * A run that cannot complete says so at once instead of waiting out its
 * timeout: without acks nothing is ever sent again, so a connection the
 * engine refused or closed mid-stream (its listener's limits and memory
 * bound, a deadline, bad input: see its log) means events that never come.
 * With --metrics the engine's listener and input counters are compared with
 * their values before the run (refused, shed, timed out, bad input); in
 * both modes a write the engine reset and a connection it reset after our
 * last byte are seen on the socket. On a timeout, the /metrics series that
 * moved during the run (read, delivered, dropped, rule errors, queued...)
 * are printed, so the shortfall is accounted for.
 *
 *   loadgen --to HOST:PORT [--events N] [--conns C] [--topics K] [--batch B]
 *           (--metrics HOST:PORT --output NAME[,NAME...] | --sink-port PORT
 *            [--metrics HOST:PORT]) [--rate EVENTS_PER_S] [--stamp]
 *           [--pid PID | --pid-file FILE] [--timeout SECONDS]
 * (--metrics beside --sink-port: the sink counts, /metrics only tells of
 * refusals and where events went; it is read when the count stands still
 * and at the end, never while events flow: see wait_delivered.)
 *   loadgen --free-port      print a free TCP port on 127.0.0.1
 *
 * Exit codes: 0 done, 1 a connection or socket failed, 2 bad arguments,
 * 3 timed out before everything was delivered, 4 the engine refused or
 * closed a connection mid-stream, 5 the engine (--pid) exited mid-run,
 * 6 the engine dropped or dead-lettered events (with --metrics). */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "codec.h"

#define SINK_READ (1u << 20)
#define MAX_CONNS 64
#define MAX_OUTPUTS 8
#define WRITE_MAX (4u << 20)     /* bytes per write() when unpaced */
#define PACED_MAX 8192           /* events per write() when paced */
#define STAMP_AT 7               /* map header, "time", 0xcf: then 8 bytes */
#define LAT_US 1000000           /* 1 µs buckets up to 1 s, */
#define LAT_MS 100000            /* then 1 ms buckets up to 101 s */

/* The pre-encoded events, sent over and over: event j of the batch is
 * data[offs[j], offs[j + 1]). */
struct batch {
  struct sl_buf data;
  size_t *offs;
  uint64_t n;
};

struct sender {
  pthread_t thread;
  int fd;
  const struct batch *batch;
  uint64_t first, count; /* events [first, first + count) of the run, the
                            batch's event (first + i) % n for event i */
  double rate;           /* events/s; 0: as fast as the engine takes them */
  double t0;             /* the run's start (now_s) */
  int stamp;             /* set each event's time to the write's time */
  uint64_t bytes;        /* sent so far */
  uint64_t want_bytes;   /* of its events, all told */
  int error;             /* errno of a failed write, 0 when all went out */
  int done;              /* the thread ended (__atomic) */
  int reported;          /* its mid-stream close was printed */
  uint64_t late[32];     /* paced: events by how late their write was
                            (bucket i: under 2^i µs), see report_late */
};

struct sink {
  pthread_t thread;
  int listen_fd;
  volatile int stop;
  uint64_t events; /* read with __atomic builtins */
  uint64_t bytes;
  uint32_t accepted; /* connections so far */
  int error;
  /* latency of stamped events (--stamp): LAT_US + LAT_MS buckets */
  uint32_t *hist;
  uint64_t lat_n, lat_over, lat_max_ns;
};

struct opts {
  const char *to, *metrics;
  const char *outputs[MAX_OUTPUTS];
  int noutputs;
  uint64_t nevents, batch;
  int conns, ntopics, sink_port, stamp;
  double rate, timeout;
  pid_t pid;
  const char *pid_file; /* read when the clock starts: the engine may
                           start after us (--sink-port) */
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Event times are ns since the epoch (the wire's unit). */
static int64_t realtime_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(int code, const char *fmt, const char *arg) {
  fprintf(stderr, "loadgen: ");
  fprintf(stderr, fmt, arg);
  fputc('\n', stderr);
  exit(code);
}

static int parse_addr(const char *s, struct sockaddr_in *sa) {
  char host[64];
  const char *colon = strrchr(s, ':');
  size_t n;
  if (colon == NULL || (n = (size_t)(colon - s)) >= sizeof(host))
    return -1;
  memcpy(host, s, n);
  host[n] = '\0';
  if (strcmp(host, "localhost") == 0)
    strcpy(host, "127.0.0.1");
  memset(sa, 0, sizeof(*sa));
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)atoi(colon + 1));
  return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

/* Connect, retrying refused connections until deadline (the engine may
 * still be starting). Returns the fd or -1. */
static int connect_to(const struct sockaddr_in *sa, double deadline) {
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return -1;
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
      return fd;
    close(fd);
    if (now_s() > deadline)
      return -1;
    usleep(10000);
  }
}

/* ---- CPU time ---------------------------------------------------------- */

/* CPU time (user + system, all threads) of process pid in ns, or -1. The
 * kernel's per-process CPU clock is the same sum as utime + stime in
 * /proc/PID/stat, in ns instead of clock ticks (10 ms, too coarse for a
 * short run); the ticks are the fallback. */
static int64_t proc_cpu_ns(pid_t pid) {
  clockid_t id;
  struct timespec ts;
  char path[64], line[1024], *p;
  unsigned long ut, st;
  FILE *f;
  size_t n;

  if (clock_getcpuclockid(pid, &id) == 0 && clock_gettime(id, &ts) == 0)
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if ((f = fopen(path, "r")) == NULL)
    return -1;
  n = fread(line, 1, sizeof(line) - 1, f);
  fclose(f);
  line[n] = '\0';
  /* fields 14 and 15; the name (field 2) may hold spaces, so count
   * from the last ')' */
  if ((p = strrchr(line, ')')) == NULL ||
      sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
             &ut, &st) != 2)
    return -1;
  return (int64_t)(ut + st) * (1000000000 / sysconf(_SC_CLK_TCK));
}

/* Has process pid exited (gone, or a zombie its parent has not reaped)? */
static int proc_gone(pid_t pid) {
  char path[64], line[512], *p;
  size_t n;
  FILE *f;
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if ((f = fopen(path, "r")) == NULL)
    return 1;
  n = fread(line, 1, sizeof(line) - 1, f);
  fclose(f);
  line[n] = '\0';
  p = strrchr(line, ')'); /* the state follows the name */
  return p != NULL && (p[2] == 'Z' || p[2] == 'X');
}

static int64_t self_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the events ---------------------------------------------------------- */

static const char *const topic_names[] = {"orders.created", "orders.paid",
                                          "users.signup", "metrics.cpu",
                                          "audit.login", "orders.refunded",
                                          "users.deleted", "metrics.mem"};

static int put_cstr(struct sl_buf *b, const char *s) {
  return sl_codec_put_str(b, s, strlen(s));
}

/* Event i: {topic, key, payload = {order, amount, currency, sku, source}},
 * with stamp {time, ...} first, its value always 0xcf and 8 bytes at
 * STAMP_AT (set when sent). Currency alternates EUR, USD (same size), so
 * a rule can route half and half on a payload field. */
static int encode_event(struct sl_buf *b, uint64_t i, int ntopics, int stamp) {
  static const uint8_t time_key[] = {0xa4, 't', 'i', 'm', 'e', 0xcf,
                                     0, 0, 0, 0, 0, 0, 0, 0};
  char key[32], sku[32];
  int rc = 0;
  snprintf(key, sizeof(key), "cust-%05u", (unsigned)(i % 50000));
  snprintf(sku, sizeof(sku), "SKU-%05u", (unsigned)((i * 7919) % 100000));
  rc |= sl_codec_put_map(b, stamp ? 4 : 3);
  if (stamp)
    rc |= sl_buf_append(b, time_key, sizeof(time_key));
  rc |= put_cstr(b, "topic");
  rc |= put_cstr(b, topic_names[i % (uint64_t)ntopics]);
  rc |= put_cstr(b, "key");
  rc |= put_cstr(b, key);
  rc |= put_cstr(b, "payload");
  rc |= sl_codec_put_map(b, 5);
  rc |= put_cstr(b, "order");
  rc |= sl_codec_put_uint(b, i);
  rc |= put_cstr(b, "amount");
  rc |= sl_codec_put_uint(b, (i * 7919) % 1000000);
  rc |= put_cstr(b, "currency");
  rc |= put_cstr(b, i % 2 ? "USD" : "EUR");
  rc |= put_cstr(b, "sku");
  rc |= put_cstr(b, sku);
  rc |= put_cstr(b, "source");
  rc |= put_cstr(b, "web-frontend");
  return rc;
}

/* Encode n events. Returns 0 or SL_ENOMEM. */
static int batch_build(struct batch *b, uint64_t n, int ntopics, int stamp) {
  uint64_t i;
  sl_buf_init(&b->data);
  b->n = n;
  b->offs = malloc(sizeof(*b->offs) * (size_t)(n + 1));
  if (b->offs == NULL || sl_buf_reserve(&b->data, (size_t)n * 128) != 0)
    return SL_ENOMEM;
  for (i = 0; i < n; i++) {
    b->offs[i] = b->data.len;
    if (encode_event(&b->data, i, ntopics, stamp) != 0)
      return SL_ENOMEM;
  }
  b->offs[n] = b->data.len;
  return 0;
}

static void batch_close(struct batch *b) {
  free(b->offs);
  sl_buf_close(&b->data);
}

/* ---- sending ------------------------------------------------------------- */

/* Write all n bytes, adding what went out to *sent. Returns 0 or an
 * errno (SIGPIPE is ignored: a connection the engine closed is EPIPE or
 * ECONNRESET here, reported, not a silent death). */
static int write_all(int fd, const uint8_t *p, size_t n, uint64_t *sent) {
  while (n > 0) {
    ssize_t w = write(fd, p, n < WRITE_MAX ? n : WRITE_MAX);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    p += w;
    n -= (size_t)w;
    *sent += (uint64_t)w;
  }
  return 0;
}

/* As fast as the engine reads: the batch's bytes as they are, in runs up
 * to the batch's end. */
static void *send_all(void *arg) {
  struct sender *s = arg;
  const struct batch *b = s->batch;
  uint64_t left = s->count, pos = s->first % b->n;
  while (left > 0) {
    uint64_t end = pos + left < b->n ? pos + left : b->n;
    size_t len = b->offs[end] - b->offs[pos];
    if ((s->error = write_all(s->fd, b->data.data + b->offs[pos], len,
                              &s->bytes)) != 0)
      break;
    left -= end - pos;
    pos = end % b->n;
  }
  shutdown(s->fd, SHUT_WR);
  __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

static void put_be64(uint8_t *p, uint64_t v) {
  int i;
  for (i = 7; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

/* Paced (rate events/s from t0) and/or stamped: every turn copies the
 * events now due (at most PACED_MAX, up to the batch's end) to a scratch
 * buffer, sets their time to now when stamping, and writes them at once;
 * then sleeps until the next is due (at least 50 µs, so each write
 * carries a few events at high rates). */
static void *send_paced(void *arg) {
  struct sender *s = arg;
  const struct batch *b = s->batch;
  uint64_t sent = 0, pos = s->first % b->n, due, n, j;
  struct sl_buf out;

  sl_buf_init(&out);
  while (sent < s->count) {
    double t = now_s(), wait;
    due = s->rate > 0 ? (uint64_t)((t - s->t0) * s->rate) + 1 : s->count;
    if (due > s->count)
      due = s->count;
    if (due <= sent) {
      struct timespec ts;
      wait = s->t0 + (double)sent / s->rate - t;
      wait = wait < 50e-6 ? 50e-6 : wait > 0.01 ? 0.01 : wait;
      ts.tv_sec = 0;
      ts.tv_nsec = (long)(wait * 1e9);
      nanosleep(&ts, NULL);
      continue;
    }
    n = due - sent;
    n = n > PACED_MAX ? PACED_MAX : n;
    n = n > b->n - pos ? b->n - pos : n;
    sl_buf_reset(&out);
    if (sl_buf_append(&out, b->data.data + b->offs[pos],
                      b->offs[pos + n] - b->offs[pos]) != 0) {
      s->error = ENOMEM;
      break;
    }
    if (s->rate > 0)
      for (j = 0; j < n; j++) {
        double us = (t - s->t0 - (double)(sent + j) / s->rate) * 1e6;
        int k = 0;
        while (k < 31 && us >= (double)(1u << k))
          k++;
        s->late[k]++;
      }
    if (s->stamp) {
      uint64_t ns = (uint64_t)realtime_ns();
      for (j = 0; j < n; j++)
        put_be64(out.data + (b->offs[pos + j] - b->offs[pos]) + STAMP_AT, ns);
    }
    if ((s->error = write_all(s->fd, out.data, out.len, &s->bytes)) != 0)
      break;
    sent += n;
    pos = (pos + n) % b->n;
  }
  sl_buf_close(&out);
  shutdown(s->fd, SHUT_WR);
  __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

/* ---- the sink: counts the events a tcp output writes -------------------- */

/* The latency of one stamped event that arrived at now_ns. */
static void sink_stamp(struct sink *k, const uint8_t *p, size_t len,
                       int64_t now_ns) {
  const uint8_t *t;
  size_t tlen, used;
  int64_t time;
  uint64_t lat;
  /* only the time: a full parse would make the sink a load of its own on
   * the cores the engine runs on */
  if (sl_codec_map_find(p, len, "time", 4, &t, &tlen) != 0 ||
      sl_codec_read_int(t, tlen, &time, &used) != 0)
    return;
  lat = now_ns > time ? (uint64_t)(now_ns - time) : 0;
  if (lat / 1000 < LAT_US)
    k->hist[lat / 1000]++;
  else if (lat / 1000000 - 1000 < LAT_MS)
    k->hist[LAT_US + lat / 1000000 - 1000]++;
  else
    k->lat_over++;
  if (lat > k->lat_max_ns)
    k->lat_max_ns = lat;
  k->lat_n++;
}

/* One read from fd into chunk; *at_ns (when stamping) gets the time the
 * kernel took in the last bytes read (SO_TIMESTAMPNS), not the time this
 * thread got to read them: on a loaded machine the sink runs late and its
 * lateness is not the engine's (the engine's write ended at or before
 * that time, so a latency is never understated). The read's time when the
 * kernel gives none. */
static ssize_t sink_recv(int fd, uint8_t *chunk, int stamp, int64_t *at_ns) {
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(struct timespec))];
  } ctl;
  struct iovec iov = {chunk, SINK_READ};
  struct msghdr m;
  struct cmsghdr *c;
  ssize_t r;

  memset(&m, 0, sizeof(m));
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = stamp ? ctl.buf : NULL;
  m.msg_controllen = stamp ? sizeof(ctl.buf) : 0;
  r = recvmsg(fd, &m, 0);
  if (r <= 0 || !stamp)
    return r;
  *at_ns = realtime_ns();
  for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
      struct timespec ts;
      int64_t t;
      memcpy(&ts, CMSG_DATA(c), sizeof(ts));
      t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
      if (t > 0 && t <= *at_ns)
        *at_ns = t;
    }
  return r;
}

/* Read once from fd and count the whole events; a cut one waits in p.
 * Returns 0, 1 when the connection ended, or SL_ENOMEM. */
static int sink_read(struct sink *k, int fd, struct sl_buf *p, uint8_t *chunk) {
  const uint8_t *d;
  size_t len, pos = 0, used;
  uint64_t count = 0;
  int64_t now_ns = 0;
  ssize_t r = sink_recv(fd, chunk, k->hist != NULL, &now_ns);

  if (r <= 0)
    return 1;
  __atomic_add_fetch(&k->bytes, (uint64_t)r, __ATOMIC_RELAXED);
  if (p->len > 0) {
    if (sl_buf_append(p, chunk, (size_t)r) != 0)
      return SL_ENOMEM;
    d = p->data;
    len = p->len;
  } else {
    d = chunk;
    len = (size_t)r;
  }
  while (pos < len &&
         sl_codec_skip(d + pos, len - pos, 64u << 20, &used, NULL) == 0) {
    if (k->hist)
      sink_stamp(k, d + pos, used, now_ns);
    pos += used;
    count++;
  }
  if (d == chunk) {
    if (pos < len && sl_buf_append(p, d + pos, len - pos) != 0)
      return SL_ENOMEM;
  } else {
    sl_buf_consume(p, pos);
  }
  __atomic_add_fetch(&k->events, count, __ATOMIC_RELEASE);
  return 0;
}

static void *sink_run(void *arg) {
  struct sink *k = arg;
  struct pollfd fds[1 + MAX_CONNS];
  struct sl_buf pending[1 + MAX_CONNS];
  int nfds = 1, i, rc;
  uint8_t *chunk = malloc(SINK_READ);

  if (chunk == NULL) {
    k->error = ENOMEM;
    return NULL;
  }
  fds[0].fd = k->listen_fd;
  fds[0].events = POLLIN;
  while (!k->stop) {
    if (poll(fds, (nfds_t)nfds, 50) <= 0)
      continue;
    if ((fds[0].revents & POLLIN) && nfds < 1 + MAX_CONNS) {
      int fd = accept4(k->listen_fd, NULL, NULL, SOCK_CLOEXEC), one = 1;
      if (fd >= 0) {
        if (k->hist) /* each read's arrival time: sink_recv */
          setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one));
        fds[nfds].fd = fd;
        fds[nfds].events = POLLIN;
        fds[nfds].revents = 0;
        sl_buf_init(&pending[nfds]);
        nfds++;
        __atomic_add_fetch(&k->accepted, 1, __ATOMIC_RELEASE);
      }
    }
    for (i = 1; i < nfds; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      rc = sink_read(k, fds[i].fd, &pending[i], chunk);
      if (rc < 0) {
        k->error = ENOMEM;
        goto done;
      }
      if (rc == 1) {
        close(fds[i].fd);
        sl_buf_close(&pending[i]);
        fds[i] = fds[nfds - 1];
        pending[i] = pending[nfds - 1];
        nfds--;
        i--;
      }
    }
  }
done:
  for (i = 1; i < nfds; i++) {
    close(fds[i].fd);
    sl_buf_close(&pending[i]);
  }
  free(chunk);
  return NULL;
}

/* The latency at quantile q in µs (a bucket's upper edge; the slowest
 * seen when q falls past the buckets). */
static double sink_quantile(const struct sink *k, double q) {
  uint64_t want = (uint64_t)(q * (double)k->lat_n), seen = 0;
  uint32_t i;
  if (want < 1)
    want = 1;
  for (i = 0; i < LAT_US + LAT_MS; i++) {
    seen += k->hist[i];
    if (seen >= want)
      return i < LAT_US ? (double)(i + 1) : (double)(i - LAT_US + 1001) * 1000;
  }
  return (double)k->lat_max_ns / 1000.0;
}

static int listen_on(int port) {
  struct sockaddr_in sa;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  socklen_t len = sizeof(sa);
  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* ---- the engine's /metrics ------------------------------------------------ */

#define METRICS_MAX (4u << 20)

/* GET /metrics: the whole response (head and body), NUL-terminated, in a
 * buffer the caller frees; NULL when the scrape failed. */
static char *metrics_get(const struct sockaddr_in *sa) {
  static const char req[] =
      "GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n";
  /* a hung engine must not hang us: the scrape fails, the wait goes on */
  struct timeval tv = {10, 0};
  char *resp;
  size_t got = 0;
  ssize_t r = 0;
  const char *body, *cl;
  int fd = connect_to(sa, 0);

  if (fd < 0)
    return NULL;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (write(fd, req, sizeof(req) - 1) != (ssize_t)sizeof(req) - 1 ||
      (resp = malloc(METRICS_MAX)) == NULL) {
    close(fd);
    return NULL;
  }
  while (got < METRICS_MAX - 1 &&
         (r = read(fd, resp + got, METRICS_MAX - 1 - got)) > 0)
    got += (size_t)r;
  close(fd);
  resp[got] = '\0';
  /* timed out or cut short: not a count to trust */
  if (r < 0 || (body = strstr(resp, "\r\n\r\n")) == NULL ||
      ((cl = strstr(resp, "Content-Length: ")) != NULL && cl < body &&
       strtoull(cl + 16, NULL, 10) > (unsigned long long)(resp + got -
                                                          (body + 4)))) {
    free(resp);
    return NULL;
  }
  return resp;
}

/* The sum of sluice_output_events_total{output="name"} over the outputs,
 * or -1 when one is missing. */
static int64_t delivered_in(const char *resp, const char *const *outputs,
                            int noutputs) {
  char needle[160];
  const char *p;
  int64_t sum = 0;
  int i;
  for (i = 0; i < noutputs; i++) {
    snprintf(needle, sizeof(needle),
             "\nsluice_output_events_total{output=\"%s\"} ", outputs[i]);
    if ((p = strstr(resp, needle)) == NULL)
      return -1;
    sum += strtoll(p + strlen(needle), NULL, 10);
  }
  return sum;
}

/* Does the line [line, end) (end NULL: to the end) hold label? */
static int has_label(const char *line, const char *end, const char *label) {
  const char *a = strstr(line, label);
  return a != NULL && (end == NULL || a < end);
}

/* The next series line of family in text from *p on (its start; *p moves
 * past it), or NULL; with label set, only series that have it. The admin
 * listener's own series are left out: they are our scrapes, not the run's
 * connections. */
static const char *next_series(const char **p, const char *family,
                               const char *label) {
  size_t n = strlen(family);
  const char *line = *p, *end;
  while (line && *line) {
    end = strchr(line, '\n');
    *p = end ? end + 1 : line + strlen(line);
    if (strncmp(line, family, n) == 0 && (line[n] == '{' || line[n] == ' ') &&
        !has_label(line, end, "type=\"admin\"") &&
        (label == NULL || has_label(line, end, label)))
      return line;
    line = *p;
  }
  return NULL;
}

/* The value of the series whose name and labels are line[0, keylen) in
 * text; 0 when text lacks it (a series not there before the run). */
static double series_in(const char *text, const char *line, size_t keylen) {
  const char *p = text;
  while (p && *p) {
    if (strncmp(p, line, keylen) == 0 && p[keylen] == ' ')
      return strtod(p + keylen + 1, NULL);
    p = strchr(p, '\n');
    p = p ? p + 1 : NULL;
  }
  return 0;
}

/* How much family (its series with label, all when NULL; the admin's left
 * out) rose from base to now; with out set, each series that moved is
 * printed as "  series: before -> now". family_rise: all its series. */
static double series_rise(const char *base, const char *now,
                          const char *family, const char *label, FILE *out) {
  const char *p = now, *line;
  double rise = 0;
  while ((line = next_series(&p, family, label)) != NULL) {
    const char *sp = strchr(line, ' ');
    size_t keylen;
    double was, is;
    if (sp == NULL)
      continue;
    keylen = (size_t)(sp - line);
    is = strtod(sp + 1, NULL);
    was = series_in(base, line, keylen);
    rise += is - was;
    if (out && is != was)
      fprintf(out, "  %.*s: %.0f -> %.0f\n", (int)keylen, line, was, is);
  }
  return rise;
}

static double family_rise(const char *base, const char *now,
                          const char *family, FILE *out) {
  return series_rise(base, now, family, NULL, out);
}

/* What ends connections early, by design or not: each is in the engine's
 * log with the peer and the reason. */
static const char *const refusal_families[] = {
    "sluice_listener_connections_refused_total",
    "sluice_listener_connections_timed_out_total", "sluice_input_bad_total"};

/* Where the events went, for a run that fell short. */
static const char *const account_families[] = {
    "sluice_input_events_total", "sluice_output_events_total",
    "sluice_events_dropped_total", "sluice_events_unrouted_total",
    "sluice_rule_errors_total", "sluice_rule_on_error_total",
    "sluice_output_dead_lettered_total",
    "sluice_output_refused_total", "sluice_input_abandoned_total",
    "sluice_queue_events", "sluice_input_connections_open",
    "sluice_input_connections_total"};

/* Events the engine took but that will never reach an output: dropped
 * (a rule, unrouted, a full queue's policy, dedup), refused by an output,
 * or given to the dead letter (a failed rule: its CPU or memory budget, an
 * error; an output that gave up), unless the dead letter is counted. */
static double lost(const char *base, const char *now, const struct opts *o,
                   FILE *out) {
  double sum = family_rise(base, now, "sluice_events_dropped_total", out) +
               family_rise(base, now, "sluice_output_refused_total", out);
  int i;
  for (i = 0; i < o->noutputs; i++)
    if (strcmp(o->outputs[i], "dead_letter") == 0)
      return sum;
  return sum +
         series_rise(base, now, "sluice_rule_on_error_total",
                     "policy=\"dead_letter\"", out) +
         family_rise(base, now, "sluice_output_dead_lettered_total", out);
}

static double refusals(const char *base, const char *now, FILE *out) {
  double sum = 0;
  size_t i;
  for (i = 0; i < SL_ARRAY_SIZE(refusal_families); i++)
    sum += family_rise(base, now, refusal_families[i], out);
  return sum;
}

/* ---- main --------------------------------------------------------------------- */

static void usage(void) {
  fputs("usage: loadgen --to HOST:PORT [--events N] [--conns C] [--topics K]\n"
        "               [--batch B] (--metrics HOST:PORT --output NAME[,NAME...]\n"
        "               | --sink-port PORT [--metrics HOST:PORT])\n"
        "               [--rate EVENTS_PER_S] [--stamp]\n"
        "               [--pid PID | --pid-file FILE] [--timeout SECONDS]\n"
        "       loadgen --free-port\n",
        stderr);
  exit(2);
}

static void free_port(void) {
  struct sockaddr_in sa;
  socklen_t len = sizeof(sa);
  int fd = listen_on(0);
  if (fd < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
    die(1, "cannot find a free port%s", "");
  printf("%d\n", ntohs(sa.sin_port));
  exit(0);
}

/* Split "a,b" into o->outputs (the string is argv's, kept). */
static void split_outputs(struct opts *o, char *list) {
  char *save = NULL, *name;
  for (name = strtok_r(list, ",", &save); name != NULL;
       name = strtok_r(NULL, ",", &save)) {
    if (o->noutputs == MAX_OUTPUTS)
      die(2, "--output: at most 8 outputs%s", "");
    o->outputs[o->noutputs++] = name;
  }
}

static void parse_opts(struct opts *o, int argc, char **argv) {
  static const struct option opts[] = {
      {"to", required_argument, NULL, 't'},
      {"events", required_argument, NULL, 'n'},
      {"conns", required_argument, NULL, 'c'},
      {"topics", required_argument, NULL, 'k'},
      {"batch", required_argument, NULL, 'b'},
      {"metrics", required_argument, NULL, 'm'},
      {"output", required_argument, NULL, 'o'},
      {"sink-port", required_argument, NULL, 's'},
      {"rate", required_argument, NULL, 'r'},
      {"stamp", no_argument, NULL, 'S'},
      {"pid", required_argument, NULL, 'p'},
      {"pid-file", required_argument, NULL, 'P'},
      {"timeout", required_argument, NULL, 'T'},
      {"free-port", no_argument, NULL, 'F'},
      {NULL, 0, NULL, 0}};
  int c;

  memset(o, 0, sizeof(*o));
  o->nevents = 2000000;
  o->batch = 262144;
  o->conns = 1;
  o->ntopics = 4;
  o->sink_port = -1;
  o->timeout = 300;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 't': o->to = optarg; break;
    case 'n': o->nevents = strtoull(optarg, NULL, 10); break;
    case 'c': o->conns = atoi(optarg); break;
    case 'k': o->ntopics = atoi(optarg); break;
    case 'b': o->batch = strtoull(optarg, NULL, 10); break;
    case 'm': o->metrics = optarg; break;
    case 'o': split_outputs(o, optarg); break;
    case 's': o->sink_port = atoi(optarg); break;
    case 'r': o->rate = atof(optarg); break;
    case 'S': o->stamp = 1; break;
    case 'p': o->pid = (pid_t)atoi(optarg); break;
    case 'P': o->pid_file = optarg; break;
    case 'T': o->timeout = atof(optarg); break;
    case 'F': free_port(); break;
    default: usage();
    }
  }
  if (o->to == NULL || o->nevents == 0 || o->batch == 0 || o->conns < 1 ||
      o->conns > MAX_CONNS || o->ntopics < 1 ||
      o->ntopics > (int)SL_ARRAY_SIZE(topic_names) || o->rate < 0 ||
      (o->metrics == NULL && o->sink_port < 0) ||
      (o->sink_port < 0 && o->noutputs == 0) ||
      (o->stamp && o->sink_port < 0))
    usage();
  if (o->batch > o->nevents)
    o->batch = o->nevents;
}

/* A run in progress, as the wait sees it. */
struct run {
  const struct opts *o;
  struct sink *sink;
  struct sender *senders;
  const struct sockaddr_in *metrics_sa; /* NULL: no --metrics */
  char *last;                           /* the latest /metrics read, or NULL */
  char *base;                           /* /metrics before the first write
                                           ("" when it could not be read) */
};

/* Did the engine end connection k before it read all we sent? A write it
 * reset or closed (EPIPE, ECONNRESET), or, after our last byte, a reset:
 * it closed with bytes of ours unread (a close after reading them all is
 * a FIN, the normal end). Printed once. */
static int sender_cut(struct sender *s, int k) {
  char c;
  if (!__atomic_load_n(&s->done, __ATOMIC_ACQUIRE))
    return 0;
  if (s->error == 0) {
    if (recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0 ||
        (errno != ECONNRESET && errno != EPIPE))
      return 0;
    s->error = errno; /* the kernel reports a reset once */
  }
  if (s->error != EPIPE && s->error != ECONNRESET) {
    if (!s->reported)
      fprintf(stderr, "loadgen: connection %d: write: %s\n", k,
              strerror(s->error));
    s->reported = 1;
    return 2; /* ours, not the engine's */
  }
  if (!s->reported)
    fprintf(stderr, "loadgen: connection %d: the engine closed it mid-stream "
            "(%s) after %llu of its %llu bytes were written; what it had not "
            "read is lost\n", k, strerror(s->error),
            (unsigned long long)s->bytes, (unsigned long long)s->want_bytes);
  s->reported = 1;
  return 1;
}

/* Print what moved on the engine's /metrics during the run: the refusals
 * and where the events went. */
static void explain(const struct run *r) {
  char *now;
  size_t i;
  if (r->metrics_sa == NULL) {
    fprintf(stderr, "loadgen: (no --metrics: the engine's counters of "
            "refusals, drops and rule errors were not read)\n");
    return;
  }
  if ((now = metrics_get(r->metrics_sa)) == NULL) {
    fprintf(stderr, "loadgen: the engine's /metrics could not be read\n");
    return;
  }
  fprintf(stderr, "loadgen: the engine's /metrics, what moved during the "
          "run:\n");
  for (i = 0; i < SL_ARRAY_SIZE(refusal_families); i++)
    family_rise(r->base, now, refusal_families[i], stderr);
  for (i = 0; i < SL_ARRAY_SIZE(account_families); i++)
    family_rise(r->base, now, account_families[i], stderr);
  free(now);
}

/* One look at the run: the count delivered so far into *seen, and
 * whether a connection was refused or cut (1; see sender_cut, refusals),
 * a write of ours failed (2), or events were lost on purpose (4: lost).
 * scrape: read /metrics too (else only our sockets and the sink). */
static int look(struct run *r, int64_t *seen, int scrape) {
  const struct opts *o = r->o;
  char *m = NULL;
  int k, cut = 0;
  if (r->metrics_sa && scrape)
    m = metrics_get(r->metrics_sa);
  if (o->sink_port >= 0) {
    *seen = (int64_t)__atomic_load_n(&r->sink->events, __ATOMIC_ACQUIRE);
  } else if (m != NULL) {
    int64_t v = delivered_in(m, o->outputs, o->noutputs),
            was = delivered_in(r->base, o->outputs, o->noutputs);
    /* counted from before the run: an engine may have served others */
    if (v >= 0)
      *seen = v - (was > 0 ? was : 0);
  }
  for (k = 0; k < o->conns; k++)
    cut |= sender_cut(&r->senders[k], k);
  if (m != NULL && refusals(r->base, m, NULL) > 0)
    cut |= 1;
  if (m != NULL && lost(r->base, m, o, NULL) > 0)
    cut |= 4;
  if (m != NULL) {
    free(r->last);
    r->last = m;
  }
  return cut;
}

/* Has the engine exited? After a cut a moment more is allowed: a dying
 * process resets its sockets before it shows as exited, and its exit, not
 * the reset, is the news. */
static int engine_exited(pid_t pid, int cut) {
  int i;
  for (i = 0; i < (cut ? 50 : 1); i++) {
    if (proc_gone(pid))
      return 1;
    if (cut)
      usleep(10000);
  }
  return 0;
}

/* Wait until the engine delivered every event; *t_done gets the time it
 * did. Returns 0, 3 on the timeout or 4 as soon as the engine refused or
 * cut a connection (no acks: the rest never comes), 5 as soon as the
 * engine (--pid) exited, 6 as soon as it dropped or dead-lettered events,
 * after printing why; 1 when a write of ours failed otherwise.
 * A scrape costs the engine ~0.4 ms of CPU, so /metrics is polled at half
 * the time the rate so far says is left (2 to 50 ms): a few dozen scrapes
 * a run, and the end is seen within 2 ms while the rate holds. The sink's
 * count is only a load: every 1 ms, with our sockets (a cut shows there)
 * and the engine's pid. /metrics beside the sink is read only when the
 * count stood still for a second (a refusal or a drop then says why, at
 * most once a second) and once at the end (what was dropped or refused
 * fails the run): a scrape stalls the engine's loop, and the stall would
 * be in the latency the sink measures. */
static int wait_delivered(struct run *r, double t0, double *t_done) {
  const struct opts *o = r->o;
  int64_t seen = 0, last_seen = -1;
  double wait, t, moved = now_s(), last_scrape = 0;
  int cut = 0, scrape, done = 0;
  for (;;) {
    t = now_s();
    scrape = o->sink_port < 0 || done ||
             (t - moved >= 1 && t - last_scrape >= 1);
    cut = look(r, &seen, scrape);
    if (scrape)
      last_scrape = now_s();
    /* after the scrape: the engine may answer it only once it has read
     * everything (one loop serves both), so the time before is too early */
    t = now_s();
    if (seen != last_seen) {
      last_seen = seen;
      moved = t;
    }
    if (!done && (uint64_t)seen >= o->nevents) {
      *t_done = t;
      done = 1;
      if (o->sink_port >= 0 && r->metrics_sa != NULL && !scrape)
        continue; /* the clock stopped; the scrape that ends the run */
    }
    if (done && (o->sink_port < 0 || !(cut & 5)))
      return 0;
    if (cut & 2)
      return 1;
    if (o->pid > 0 && engine_exited(o->pid, cut)) {
      /* its counters went with it: what was last seen is not the end */
      fprintf(stderr, "loadgen: the engine (pid %d) exited mid-run: %lld of "
              "%llu events delivered when last seen; its log says why (a "
              "crash leaves none: see its exit status)\n", (int)o->pid,
              (long long)seen, (unsigned long long)o->nevents);
      return 5;
    }
    if (cut & 1) {
      fprintf(stderr, "loadgen: the engine refused or closed a connection "
              "mid-stream: %lld of %llu events delivered, and without acks "
              "nothing is sent again, so the rest never comes (the engine's "
              "log names the connection and the reason)\n",
              (long long)seen, (unsigned long long)o->nevents);
      explain(r);
      return 4;
    }
    if (cut) {
      fprintf(stderr, "loadgen: the engine dropped or dead-lettered events "
              "(a rule, a budget, a queue's policy: see below and its log), "
              "so they never reach the counted outputs: %lld of %llu "
              "delivered\n", (long long)seen, (unsigned long long)o->nevents);
      explain(r);
      return 6;
    }
    if (t - t0 > o->timeout) {
      fprintf(stderr, "loadgen: timed out: %lld of %llu events delivered\n",
              (long long)seen, (unsigned long long)o->nevents);
      explain(r);
      return 3;
    }
    wait = 0.001;
    if (o->sink_port < 0) {
      wait = seen > 0 ? (double)(o->nevents - (uint64_t)seen) * (t - t0) /
                            (double)seen / 2
                      : 0.005;
      wait = wait < 0.002 ? 0.002 : wait > 0.05 ? 0.05 : wait;
    }
    usleep((useconds_t)(wait * 1e6));
  }
}

/* Listen (before encoding: the engine's output may connect meanwhile). */
static void sink_start(const struct opts *o, struct sink *sink) {
  memset(sink, 0, sizeof(*sink));
  if (o->sink_port < 0)
    return;
  if (o->stamp && (sink->hist = calloc(LAT_US + LAT_MS, sizeof(*sink->hist))) == NULL)
    die(1, "out of memory%s", "");
  sink->listen_fd = listen_on(o->sink_port);
  if (sink->listen_fd < 0)
    die(1, "cannot listen on the sink port: %s", strerror(errno));
  if (pthread_create(&sink->thread, NULL, sink_run, sink) != 0)
    die(1, "cannot start the sink thread%s", "");
  fprintf(stderr, "loadgen: sink listening\n");
}

/* The bytes of count events from event first of the run on. */
static uint64_t batch_span(const struct batch *b, uint64_t first,
                           uint64_t count) {
  uint64_t pos = first % b->n, bytes = 0;
  while (count > 0) {
    uint64_t end = pos + count < b->n ? pos + count : b->n;
    bytes += b->offs[end] - b->offs[pos];
    count -= end - pos;
    pos = end % b->n;
  }
  return bytes;
}

/* Connect every sender and give it its share of the events. */
static void senders_connect(const struct opts *o, struct sender *senders,
                            const struct batch *b) {
  struct sockaddr_in to_sa;
  int k, one = 1;
  if (parse_addr(o->to, &to_sa) != 0)
    die(2, "--to: expected IPv4 host:port, got %s", o->to);
  for (k = 0; k < o->conns; k++) {
    struct sender *s = &senders[k];
    memset(s, 0, sizeof(*s));
    s->fd = connect_to(&to_sa, now_s() + 20);
    if (s->fd < 0)
      die(1, "cannot connect to %s", o->to);
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->batch = b;
    s->first = o->nevents * (uint64_t)k / (uint64_t)o->conns;
    s->count = o->nevents * (uint64_t)(k + 1) / (uint64_t)o->conns - s->first;
    s->rate = o->rate / o->conns;
    s->stamp = o->stamp;
    s->want_bytes = batch_span(b, s->first, s->count);
  }
}

/* The pid in file, waiting until deadline for it to be written. */
static pid_t read_pid_file(const char *file, double deadline) {
  for (;;) {
    FILE *f = fopen(file, "r");
    int pid = 0;
    if (f != NULL) {
      if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
      fclose(f);
    }
    if (pid > 0)
      return (pid_t)pid;
    if (now_s() > deadline)
      die(1, "no pid in %s", file);
    usleep(1000);
  }
}

/* The engine's own part of the latency: sluice_delivery_latency_seconds
 * (an output's read -> written, per event), summed over the outputs, as
 * it rose from base to now. Printed as the bucket bounds (µs) that hold
 * quantiles 0.5, 0.99, 0.999: "at most"; its buckets are coarse (1 ms
 * lies between 500 µs and 5 ms). Nothing when /metrics was not read. */
#define HIST_FAMILY "sluice_delivery_latency_seconds_bucket"
static void report_engine_latency(const char *base, const char *now) {
  static const double qs[] = {0.5, 0.99, 0.999};
  static const char *const names[] = {"p50", "p99", "p999"};
  double le[64], count[64], total = 0;
  const char *p = now, *line;
  int n = 0, i, j, k;
  while ((line = next_series(&p, HIST_FAMILY, NULL)) != NULL) {
    const char *sp = strchr(line, ' '), *l = strstr(line, "le=\"");
    double bound;
    if (sp == NULL || l == NULL || l > sp)
      continue;
    bound = strncmp(l + 4, "+Inf", 4) == 0 ? -1 : strtod(l + 4, NULL);
    for (i = 0; i < n && le[i] != bound; i++)
      ;
    if (i == n) {
      if (n == 64)
        continue;
      le[n] = bound;
      count[n++] = 0;
    }
    count[i] += strtod(sp + 1, NULL) - series_in(base, line, (size_t)(sp - line));
  }
  /* cumulative buckets: the +Inf one is the count */
  for (i = 0; i < n; i++)
    if (le[i] < 0)
      total = count[i];
  if (total <= 0)
    return;
  printf(" engine_lat_events=%.0f", total);
  for (k = 0; k < 3; k++) {
    double best = -1;
    for (j = 0; j < n; j++)
      if (le[j] >= 0 && count[j] >= qs[k] * total && (best < 0 || le[j] < best))
        best = le[j];
    if (best < 0)
      printf(" engine_lat_%s_le_us=inf", names[k]);
    else
      printf(" engine_lat_%s_le_us=%.0f", names[k], best * 1e6);
  }
}

/* Paced: how late the senders wrote events past their due time (p99 and
 * p99.9, as bucket bounds in µs). The latency counts from the write (the
 * engine cannot see an event before), so a sender that fell behind (a
 * busy core, or a write the engine's backpressure blocked) would hide
 * that wait from it: printed beside, a reader sees whether it did. */
static void report_late(const struct opts *o, const struct sender *senders) {
  static const double qs[] = {0.99, 0.999};
  uint64_t late[32] = {0}, total = 0, seen;
  int i, k, q;
  for (k = 0; k < o->conns; k++)
    for (i = 0; i < 32; i++)
      late[i] += senders[k].late[i];
  for (i = 0; i < 32; i++)
    total += late[i];
  if (o->rate <= 0 || total == 0)
    return;
  for (q = 0; q < 2; q++) {
    for (i = 0, seen = 0; i < 31; i++)
      if ((seen += late[i]) >= qs[q] * (double)total)
        break;
    printf(" gen_late_%s_le_us=%u", q ? "p999" : "p99", 1u << i);
  }
}

static void report(const struct opts *o, const struct sink *sink,
                   const struct run *r, uint64_t bytes, double secs,
                   int64_t gen_ns, int64_t eng_ns) {
  double n = (double)o->nevents;
  printf("events=%llu bytes=%llu avg_event_bytes=%.1f seconds=%.4f "
         "events_per_s=%.0f mb_per_s=%.1f gen_cpu_us_per_event=%.3f",
         (unsigned long long)o->nevents, (unsigned long long)bytes,
         (double)bytes / n, secs, n / secs, (double)bytes / secs / 1e6,
         (double)gen_ns / 1e3 / n);
  if (o->pid > 0)
    printf(" engine_cpu_us_per_event=%.3f", (double)eng_ns / 1e3 / n);
  /* no stamped event came back (the time key lost on the way): no
   * percentiles, rather than zeros that read as a measurement */
  if (o->stamp)
    printf(" lat_events=%llu", (unsigned long long)sink->lat_n);
  if (o->stamp && sink->lat_n > 0)
    printf(" lat_p50_us=%.0f lat_p99_us=%.0f lat_p999_us=%.0f lat_max_us=%.0f",
           sink_quantile(sink, 0.5), sink_quantile(sink, 0.99),
           sink_quantile(sink, 0.999), (double)sink->lat_max_ns / 1000.0);
  if (o->stamp && r->last != NULL)
    report_engine_latency(r->base, r->last);
  report_late(o, r->senders);
  printf("\n");
}

int main(int argc, char **argv) {
  struct opts o;
  struct sockaddr_in metrics_sa;
  struct sender senders[MAX_CONNS];
  struct sink sink;
  struct batch batch;
  struct run run;
  uint64_t bytes = 0;
  int64_t gen0, eng0 = 0, gen_ns, eng_ns = 0;
  double t0, t_done = 0;
  int k, failed;

  /* a connection the engine closes is an error to report, not a death */
  signal(SIGPIPE, SIG_IGN);
  parse_opts(&o, argc, argv);
  if (o.metrics && parse_addr(o.metrics, &metrics_sa) != 0)
    die(2, "--metrics: expected IPv4 host:port, got %s", o.metrics);
  if (o.pid > 0 && proc_cpu_ns(o.pid) < 0)
    die(2, "--pid: cannot read the CPU time of process %s", "(gone?)");
  sink_start(&o, &sink);
  /* encode first: the run measures the engine, not us */
  if (batch_build(&batch, o.batch, o.ntopics, o.stamp) != 0)
    die(1, "out of memory%s", "");
  memset(&run, 0, sizeof(run));
  run.o = &o;
  run.sink = &sink;
  run.senders = senders;
  run.metrics_sa = o.metrics ? &metrics_sa : NULL;
  /* the counters before we connect: refusals are what rises past them */
  if ((run.base = o.metrics ? metrics_get(&metrics_sa) : NULL) == NULL &&
      (run.base = strdup("")) == NULL)
    die(1, "out of memory%s", "");
  senders_connect(&o, senders, &batch);
  if (o.sink_port >= 0) {
    /* the engine's output must be connected before the clock starts */
    double deadline = now_s() + 20;
    while (__atomic_load_n(&sink.accepted, __ATOMIC_ACQUIRE) == 0) {
      if (now_s() > deadline)
        die(1, "the engine's output never connected to the sink%s", "");
      usleep(1000);
    }
  }

  if (o.pid_file)
    o.pid = read_pid_file(o.pid_file, now_s() + 20);
  if (o.pid > 0 && proc_cpu_ns(o.pid) < 0)
    die(2, "--pid: cannot read the CPU time of process %s", "(gone?)");
  gen0 = self_cpu_ns();
  if (o.pid > 0)
    eng0 = proc_cpu_ns(o.pid);
  t0 = now_s();
  for (k = 0; k < o.conns; k++) {
    senders[k].t0 = t0;
    if (pthread_create(&senders[k].thread, NULL,
                       o.rate > 0 || o.stamp ? send_paced : send_all,
                       &senders[k]) != 0)
      die(1, "cannot start a sender thread%s", "");
  }
  failed = wait_delivered(&run, t0, &t_done);
  gen_ns = self_cpu_ns() - gen0;
  if (o.pid > 0)
    eng_ns = proc_cpu_ns(o.pid) - eng0;
  for (k = 0; k < o.conns; k++) {
    if (failed)
      shutdown(senders[k].fd, SHUT_RDWR); /* a sender the engine stopped
                                             reading is blocked in write */
    pthread_join(senders[k].thread, NULL);
    if (senders[k].error && !senders[k].reported && !failed) {
      fprintf(stderr, "loadgen: connection %d: write: %s\n", k,
              strerror(senders[k].error));
      failed = 1;
    }
    bytes += senders[k].bytes;
    close(senders[k].fd);
  }
  if (o.sink_port >= 0) {
    sink.stop = 1;
    pthread_join(sink.thread, NULL);
    close(sink.listen_fd);
  }
  if (!failed)
    report(&o, &sink, &run, bytes, t_done - t0, gen_ns, eng_ns);
  free(run.base);
  free(run.last);
  free(sink.hist);
  batch_close(&batch);
  return failed;
}
