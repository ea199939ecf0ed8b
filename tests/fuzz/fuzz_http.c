/* fuzz_http.c - libFuzzer target for engine/http.c: the request parser and
 * the connection state machine behind it. Each input is a stream of bytes
 * sent over a fresh loopback connection to one long-lived server, cut into
 * fragments whose sizes come from the first byte (the way a socket
 * delivers them), with the loop pumped between fragments. The handler
 * answers at once, holds an answer until the next fragment, streams, or
 * refuses at the head, depending on the path. After the client closes, the
 * server must have freed the connection and ended every request it began
 * (cb_done). Build with `make fuzz`; `make test` runs it for a few seconds. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "fuzz.h"


static uv_loop_t loop;
static struct sl_http_server srv;
static int port;
static int open_requests; /* r->data set and not yet released */
static struct sl_http_request *held;

static int path_is(const struct sl_http_request *r, const char *s) {
  return r->path.len == strlen(s) && memcmp(r->path.p, s, r->path.len) == 0;
}

static void h_headers(struct sl_http_request *r) {
  r->data = &open_requests;
  open_requests++;
  if (path_is(r, "/refuse"))
    sl_http_respond_error(r, 401, "no");
}

static void h_request(struct sl_http_request *r) {
  char out[64];
  int n;
  ASSERT(r->data == &open_requests);
  ASSERT(r->body.len <= srv.limits.max_body_bytes);
  if (path_is(r, "/hold") && held == NULL) {
    held = r;
    return;
  }
  if (path_is(r, "/stream")) {
    ASSERT(sl_http_stream_start(r, 200, "text/plain") == 0);
    sl_http_stream_write(r, "abc", 3);
    sl_http_stream_end(r);
    return;
  }
  n = snprintf(out, sizeof(out), "%zu", r->body.len);
  ASSERT(sl_http_respond(r, 200, "text/plain", out, (size_t)n) == 0);
  ASSERT(sl_http_respond(r, 200, NULL, NULL, 0) == SL_EINVAL);
}

static void h_done(struct sl_http_request *r) {
  if (r->data == &open_requests)
    open_requests--;
  r->data = NULL;
  if (held == r)
    held = NULL;
}

static const struct sl_http_ops ops = {
    .cb_headers = h_headers, .cb_request = h_request, .cb_done = h_done};

static void pump(int n) {
  while (n-- > 0)
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void setup(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  char addr[64], err[256];
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, (struct sockaddr *)&a, sizeof(a));
  getsockname(fd, (struct sockaddr *)&a, &len);
  port = ntohs(a.sin_port);
  close(fd);
  sl_log_set_level(SL_LOG_ERROR);
  uv_loop_init(&loop);
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  srv.name = "fuzz";
  srv.limits.max_header_bytes = 1024;
  srv.limits.max_body_bytes = 4096;
  srv.limits.idle_ms = 0; /* no timers: every run is the same */
  ASSERT(sl_http_start(&srv, &loop, addr, &ops, NULL, err, sizeof(err)) == 0);
}

/* Each run's client closes first and leaves its port in TIME_WAIT for a
 * minute; from one source address the ephemeral ports run out after some
 * 28000 runs and connect fails. Spread the clients over 127.1.0.0/16. */
static void bind_source(int fd) {
  static uint32_t n;
  struct sockaddr_in s;
  memset(&s, 0, sizeof(s));
  s.sin_family = AF_INET;
  s.sin_addr.s_addr = htonl(0x7f010001u + n++ % 65000);
  ASSERT(bind(fd, (struct sockaddr *)&s, sizeof(s)) == 0);
}

static void drain(int fd) {
  char buf[65536];
  while (recv(fd, buf, sizeof(buf), 0) > 0)
    ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  struct sockaddr_in a;
  size_t off, step;
  int fd, one = 1, i;

  if (!ready) {
    setup();
    ready = 1;
  }
  if (size < 1)
    return 0;
  step = (data[0] & 15) + 1;
  data++;
  size--;
  fd = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind_source(fd);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    fprintf(stderr, "connect: %s\n", strerror(errno));
    abort();
  }
  fcntl(fd, F_SETFL, O_NONBLOCK);
  pump(2);
  for (off = 0; off < size; off += step) {
    size_t k = size - off < step ? size - off : step;
    if (send(fd, data + off, k, MSG_NOSIGNAL) < 0)
      break;
    pump(2);
    if (held) { /* answer a held request a fragment later */
      struct sl_http_request *r = held;
      held = NULL;
      ASSERT(sl_http_respond(r, 202, NULL, NULL, 0) == 0);
    }
    drain(fd);
  }
  pump(2);
  if (held) {
    struct sl_http_request *r = held;
    held = NULL;
    sl_http_respond(r, 202, NULL, NULL, 0);
  }
  drain(fd);
  close(fd);
  /* the server notices the close and frees the connection */
  for (i = 0; i < 1000 && srv.live > 0; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ASSERT(srv.live == 0);
  ASSERT(open_requests == 0);
  ASSERT(held == NULL);
  return 0;
}
