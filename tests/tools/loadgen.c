/* loadgen.c - the benchmark load generator. Pre-encodes N native-protocol
 * events (~120 bytes: a few topics, a key, a small payload map), writes
 * them over one or more TCP connections as fast as the engine takes them,
 * and waits until the engine has delivered them all: by polling its admin
 * /metrics for an output's event count, or by counting them in a sink of
 * its own that the engine's tcp output writes to. Prints one line of
 * key=value results. Owns everything it allocates; exits when done.
 *
 *   loadgen --to HOST:PORT [--events N] [--conns C] [--topics K]
 *           (--metrics HOST:PORT --output NAME | --sink-port PORT)
 *           [--timeout SECONDS]
 *   loadgen --free-port      print a free TCP port on 127.0.0.1
 *
 * Exit codes: 0 done, 1 a connection or socket failed, 2 bad arguments,
 * 3 timed out before everything was delivered. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "codec.h"

#define SINK_READ (1u << 20)
#define MAX_CONNS 64

struct sender {
  pthread_t thread;
  int fd;
  const uint8_t *data;
  size_t len;
  int error; /* errno of a failed write, 0 when all went out */
};

struct sink {
  pthread_t thread;
  int listen_fd;
  volatile int stop;
  uint64_t events; /* read with __atomic builtins */
  uint64_t bytes;
  uint32_t accepted; /* connections so far */
  int error;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

/* ---- the events ---------------------------------------------------------- */

static const char *const topic_names[] = {"orders.created", "orders.paid",
                                          "users.signup", "metrics.cpu",
                                          "audit.login", "orders.refunded",
                                          "users.deleted", "metrics.mem"};

static int put_cstr(struct sl_buf *b, const char *s) {
  return sl_codec_put_str(b, s, strlen(s));
}

/* Event i: {topic, key, payload = {order, amount, currency, sku, source}}. */
static int encode_event(struct sl_buf *b, uint64_t i, int ntopics) {
  char key[32], sku[32];
  int rc = 0;
  snprintf(key, sizeof(key), "cust-%05u", (unsigned)(i % 50000));
  snprintf(sku, sizeof(sku), "SKU-%05u", (unsigned)((i * 7919) % 100000));
  rc |= sl_codec_put_map(b, 3);
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
  rc |= put_cstr(b, "EUR");
  rc |= put_cstr(b, "sku");
  rc |= put_cstr(b, sku);
  rc |= put_cstr(b, "source");
  rc |= put_cstr(b, "web-frontend");
  return rc;
}

/* ---- sending ------------------------------------------------------------- */

static void *send_all(void *arg) {
  struct sender *s = arg;
  size_t off = 0;
  while (off < s->len) {
    size_t n = s->len - off < (4u << 20) ? s->len - off : (4u << 20);
    ssize_t w = write(s->fd, s->data + off, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      s->error = errno;
      return NULL;
    }
    off += (size_t)w;
  }
  shutdown(s->fd, SHUT_WR);
  return NULL;
}

/* ---- the sink: counts the events a tcp output writes -------------------- */

static void *sink_run(void *arg) {
  struct sink *k = arg;
  struct pollfd fds[1 + MAX_CONNS];
  struct sl_buf pending[1 + MAX_CONNS];
  int nfds = 1, i;
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
      int fd = accept4(k->listen_fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) {
        fds[nfds].fd = fd;
        fds[nfds].events = POLLIN;
        fds[nfds].revents = 0;
        sl_buf_init(&pending[nfds]);
        nfds++;
        __atomic_add_fetch(&k->accepted, 1, __ATOMIC_RELEASE);
      }
    }
    for (i = 1; i < nfds; i++) {
      struct sl_buf *p = &pending[i];
      const uint8_t *d;
      size_t len, pos = 0, used;
      uint64_t count = 0;
      ssize_t r;
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      r = read(fds[i].fd, chunk, SINK_READ);
      if (r <= 0) {
        close(fds[i].fd);
        sl_buf_close(p);
        fds[i] = fds[nfds - 1];
        pending[i] = pending[nfds - 1];
        nfds--;
        i--;
        continue;
      }
      __atomic_add_fetch(&k->bytes, (uint64_t)r, __ATOMIC_RELAXED);
      /* walk whole events; keep a cut one for the next read */
      if (p->len > 0) {
        if (sl_buf_append(p, chunk, (size_t)r) != 0) {
          k->error = ENOMEM;
          goto done;
        }
        d = p->data;
        len = p->len;
      } else {
        d = chunk;
        len = (size_t)r;
      }
      while (pos < len &&
             sl_codec_skip(d + pos, len - pos, 64u << 20, &used, NULL) == 0) {
        pos += used;
        count++;
      }
      if (d == chunk) {
        if (pos < len && sl_buf_append(p, d + pos, len - pos) != 0) {
          k->error = ENOMEM;
          goto done;
        }
      } else {
        sl_buf_consume(p, pos);
      }
      __atomic_add_fetch(&k->events, count, __ATOMIC_RELEASE);
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

/* The value of sluice_output_events_total{output="name"}, or -1 when the
 * scrape failed. */
static int64_t scrape(const struct sockaddr_in *sa, const char *output) {
  static char resp[1 << 20];
  char req[128], needle[160];
  size_t got = 0;
  ssize_t r;
  const char *p;
  int fd = connect_to(sa, 0);

  if (fd < 0)
    return -1;
  snprintf(req, sizeof(req),
           "GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n");
  if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
    close(fd);
    return -1;
  }
  while (got < sizeof(resp) - 1 &&
         (r = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
    got += (size_t)r;
  close(fd);
  resp[got] = '\0';
  snprintf(needle, sizeof(needle), "\nsluice_output_events_total{output=\"%s\"} ",
           output);
  p = strstr(resp, needle);
  if (p == NULL)
    return -1;
  return strtoll(p + strlen(needle), NULL, 10);
}

/* ---- main --------------------------------------------------------------------- */

static void usage(void) {
  fputs("usage: loadgen --to HOST:PORT [--events N] [--conns C] [--topics K]\n"
        "               (--metrics HOST:PORT --output NAME | --sink-port PORT)\n"
        "               [--timeout SECONDS]\n"
        "       loadgen --free-port\n",
        stderr);
  exit(2);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"to", required_argument, NULL, 't'},
      {"events", required_argument, NULL, 'n'},
      {"conns", required_argument, NULL, 'c'},
      {"topics", required_argument, NULL, 'k'},
      {"metrics", required_argument, NULL, 'm'},
      {"output", required_argument, NULL, 'o'},
      {"sink-port", required_argument, NULL, 's'},
      {"timeout", required_argument, NULL, 'T'},
      {"free-port", no_argument, NULL, 'F'},
      {NULL, 0, NULL, 0}};
  const char *to = NULL, *metrics = NULL, *output = NULL;
  uint64_t nevents = 2000000, i;
  int conns = 1, ntopics = 4, sink_port = -1, c, k, failed = 0;
  double timeout = 300, t0, t_done = 0;
  struct sockaddr_in to_sa, metrics_sa;
  struct sender senders[MAX_CONNS];
  struct sink sink;
  struct sl_buf data;
  size_t *ends;
  int64_t seen = 0;

  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 't': to = optarg; break;
    case 'n': nevents = strtoull(optarg, NULL, 10); break;
    case 'c': conns = atoi(optarg); break;
    case 'k': ntopics = atoi(optarg); break;
    case 'm': metrics = optarg; break;
    case 'o': output = optarg; break;
    case 's': sink_port = atoi(optarg); break;
    case 'T': timeout = atof(optarg); break;
    case 'F': {
      struct sockaddr_in sa;
      socklen_t len = sizeof(sa);
      int fd = listen_on(0);
      if (fd < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        die(1, "cannot find a free port%s", "");
      printf("%d\n", ntohs(sa.sin_port));
      return 0;
    }
    default: usage();
    }
  }
  if (to == NULL || nevents == 0 || conns < 1 || conns > MAX_CONNS ||
      ntopics < 1 || ntopics > (int)SL_ARRAY_SIZE(topic_names) ||
      (metrics == NULL) == (sink_port < 0) || (metrics && output == NULL))
    usage();
  if (parse_addr(to, &to_sa) != 0)
    die(2, "--to: expected IPv4 host:port, got %s", to);
  if (metrics && parse_addr(metrics, &metrics_sa) != 0)
    die(2, "--metrics: expected IPv4 host:port, got %s", metrics);

  /* listen first: the engine's output may connect while we encode */
  memset(&sink, 0, sizeof(sink));
  if (sink_port >= 0) {
    sink.listen_fd = listen_on(sink_port);
    if (sink.listen_fd < 0)
      die(1, "cannot listen on the sink port: %s", strerror(errno));
    if (pthread_create(&sink.thread, NULL, sink_run, &sink) != 0)
      die(1, "cannot start the sink thread%s", "");
    fprintf(stderr, "loadgen: sink listening\n");
  }
  /* encode everything first: the run measures the engine, not us */
  sl_buf_init(&data);
  ends = malloc(sizeof(*ends) * (size_t)(conns + 1));
  if (ends == NULL || sl_buf_reserve(&data, (size_t)nevents * 128) != 0)
    die(1, "out of memory%s", "");
  ends[0] = 0;
  for (i = 0, k = 1; i < nevents; i++) {
    if (encode_event(&data, i, ntopics) != 0)
      die(1, "out of memory%s", "");
    /* connection k-1 sends a contiguous slice (empty when conns > N) */
    while (k <= conns && i + 1 >= nevents * (uint64_t)k / (uint64_t)conns)
      ends[k++] = data.len;
  }

  for (k = 0; k < conns; k++) {
    int one = 1;
    senders[k].fd = connect_to(&to_sa, now_s() + 20);
    if (senders[k].fd < 0)
      die(1, "cannot connect to %s", to);
    setsockopt(senders[k].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    senders[k].data = data.data + ends[k];
    senders[k].len = ends[k + 1] - ends[k];
    senders[k].error = 0;
  }
  if (sink_port >= 0) {
    /* the engine's output must be connected before the clock starts */
    double deadline = now_s() + 20;
    while (__atomic_load_n(&sink.accepted, __ATOMIC_ACQUIRE) == 0) {
      if (now_s() > deadline)
        die(1, "the engine's output never connected to the sink%s", "");
      usleep(1000);
    }
  }

  t0 = now_s();
  for (k = 0; k < conns; k++)
    if (pthread_create(&senders[k].thread, NULL, send_all, &senders[k]) != 0)
      die(1, "cannot start a sender thread%s", "");
  for (;;) {
    double t = now_s();
    if (sink_port >= 0) {
      seen = (int64_t)__atomic_load_n(&sink.events, __ATOMIC_ACQUIRE);
    } else {
      int64_t v = scrape(&metrics_sa, output);
      if (v >= 0)
        seen = v;
    }
    if ((uint64_t)seen >= nevents) {
      t_done = t;
      break;
    }
    if (t - t0 > timeout) {
      fprintf(stderr, "loadgen: timed out: %lld of %llu events delivered\n",
              (long long)seen, (unsigned long long)nevents);
      failed = 3;
      break;
    }
    usleep(sink_port >= 0 ? 1000 : 5000);
  }
  for (k = 0; k < conns; k++) {
    pthread_join(senders[k].thread, NULL);
    if (senders[k].error) {
      fprintf(stderr, "loadgen: connection %d: write: %s\n", k,
              strerror(senders[k].error));
      failed = 1;
    }
    close(senders[k].fd);
  }
  if (sink_port >= 0) {
    sink.stop = 1;
    pthread_join(sink.thread, NULL);
    close(sink.listen_fd);
  }
  if (!failed) {
    double secs = t_done - t0;
    printf("events=%llu bytes=%zu avg_event_bytes=%.1f seconds=%.4f "
           "events_per_s=%.0f mb_per_s=%.1f\n",
           (unsigned long long)nevents, data.len,
           (double)data.len / (double)nevents, secs,
           (double)nevents / secs, (double)data.len / secs / 1e6);
  }
  free(ends);
  sl_buf_close(&data);
  return failed;
}
