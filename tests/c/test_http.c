/* test_http.c - unit tests for engine/http.c: the request parser fed in
 * fragments (byte by byte, and split at every point), pipelining with a
 * held answer, limits, refusals, the head deadline, streaming, and the
 * small helpers. A real server on a loopback port and a plain blocking
 * socket as the client; the loop is pumped by hand between writes, so each
 * write reaches the server as its own read. */
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "http.h"
#include "test.h"

/* ---- the harness ------------------------------------------------------- */

static uv_loop_t loop;
static struct sl_http_server srv;

static struct {
  int requests, done;
  char method[16], path[128], query[128], ctype[128], multi[128];
  char body[8192];
  size_t body_len;
  struct sl_http_request *held;
} seen;

static void copy(char *dst, size_t cap, const char *p, size_t n) {
  if (n >= cap)
    n = cap - 1;
  memcpy(dst, p ? p : "", p ? n : 0);
  dst[p ? n : 0] = '\0';
}

static int path_is(const struct sl_http_request *r, const char *s) {
  return r->path.len == strlen(s) && memcmp(r->path.p, s, r->path.len) == 0;
}

static void h_headers(struct sl_http_request *r) {
  if (path_is(r, "/refuse"))
    sl_http_respond_error(r, 401, "no");
}

static void h_request(struct sl_http_request *r) {
  struct sl_str v;
  char out[8300];
  int n;

  seen.requests++;
  copy(seen.method, sizeof(seen.method), r->method, strlen(r->method));
  copy(seen.path, sizeof(seen.path), r->path.p, r->path.len);
  copy(seen.query, sizeof(seen.query), r->query.p, r->query.len);
  v = sl_http_header(r, "CONTENT-TYPE");
  copy(seen.ctype, sizeof(seen.ctype), v.p, v.len);
  v = sl_http_header(r, "x-multi");
  copy(seen.multi, sizeof(seen.multi), v.p, v.len);
  seen.body_len = r->body.len < sizeof(seen.body) ? r->body.len : 0;
  if (seen.body_len)
    memcpy(seen.body, r->body.data, seen.body_len);
  if (path_is(r, "/hold")) {
    seen.held = r; /* answered by the test, later */
    return;
  }
  if (path_is(r, "/stream")) {
    sl_http_stream_start(r, 200, "text/plain");
    sl_http_stream_write(r, "a", 1);
    sl_http_stream_write(r, "bc", 2);
    sl_http_stream_end(r);
    return;
  }
  n = snprintf(out, sizeof(out), "echo:%.*s", (int)r->body.len,
               (const char *)r->body.data);
  sl_http_respond(r, 200, "text/plain", out, (size_t)n);
}

static void h_done(struct sl_http_request *r) {
  seen.done++;
  if (seen.held == r)
    seen.held = NULL;
}

static const struct sl_http_ops ops = {
    .cb_headers = h_headers, .cb_request = h_request, .cb_done = h_done};

static void pump(int n) {
  while (n-- > 0)
    uv_run(&loop, UV_RUN_NOWAIT);
}

static int free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM, 0), port;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, (struct sockaddr *)&a, sizeof(a));
  getsockname(fd, (struct sockaddr *)&a, &len);
  port = ntohs(a.sin_port);
  close(fd);
  return port;
}

static int server_port;
/* body_ms, max_conns and max_pending of the next start(); reset by it */
static struct sl_http_limits more;

/* Start a server with these limits (0: the defaults of the test). */
static int start(uint32_t max_header, uint64_t max_body, uint32_t idle_ms,
                 uint32_t header_ms) {
  char addr[64], err[256];
  memset(&seen, 0, sizeof(seen));
  memset(&srv, 0, sizeof(srv));
  sl_log_set_level(SL_LOG_ERROR); /* refusals are logged as warnings */
  uv_loop_init(&loop);
  server_port = free_port();
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", server_port);
  srv.name = "test";
  srv.limits.max_header_bytes = max_header;
  srv.limits.max_body_bytes = max_body ? max_body : 1 << 20;
  srv.limits.idle_ms = idle_ms ? idle_ms : 5000;
  srv.limits.header_ms = header_ms;
  srv.limits.body_ms = more.body_ms;
  srv.limits.max_conns = more.max_conns;
  srv.limits.max_pending = more.max_pending;
  memset(&more, 0, sizeof(more));
  return sl_http_start(&srv, &loop, addr, &ops, NULL, err, sizeof(err));
}

static void stop(void) {
  sl_http_stop(&srv);
  while (!srv.stopped && uv_run(&loop, UV_RUN_ONCE))
    ;
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

static int client(void) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  /* each write leaves at once: Nagle would merge the fragments */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)server_port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
    return -1;
  fcntl(fd, F_SETFL, O_NONBLOCK);
  pump(3);
  return fd;
}

/* Write s in pieces of step bytes, letting the server read each. */
static void feed(int fd, const char *s, size_t n, size_t step) {
  size_t off;
  for (off = 0; off < n; off += step) {
    size_t k = n - off < step ? n - off : step;
    if (send(fd, s + off, k, MSG_NOSIGNAL) != (ssize_t)k)
      return;
    pump(2);
  }
  pump(3);
}

/* What the server sent so far, NUL-terminated; *eof set when closed. */
static const char *got(int fd, int *eof) {
  static char buf[65536];
  static size_t len;
  ssize_t n;
  pump(5);
  len = 0;
  if (eof)
    *eof = 0;
  for (;;) {
    n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
    if (n > 0) {
      len += (size_t)n;
      continue;
    }
    if (n == 0 && eof)
      *eof = 1;
    break;
  }
  buf[len] = '\0';
  return buf;
}

static int count(const char *s, const char *what) {
  int n = 0;
  while ((s = strstr(s, what)) != NULL) {
    n++;
    s += strlen(what);
  }
  return n;
}

static const char post[] =
    "POST /v1/x?a=1&b=%20 HTTP/1.1\r\n"
    "Host: t\r\n"
    "Content-Type: application/json\r\n"
    "X-Multi:   spaced value  \r\n"
    "Content-Length: 11\r\n"
    "\r\n"
    "hello world";

/* ---- parsing in fragments ---------------------------------------------- */

TEST(http_request_fed_byte_by_byte_is_parsed_whole) {
  int fd, eof;
  const char *r;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  CHECK(fd >= 0);
  feed(fd, post, sizeof(post) - 1, 1);
  r = got(fd, &eof);
  CHECK_EQ(seen.requests, 1);
  CHECK_STR(seen.method, "POST");
  CHECK_STR(seen.path, "/v1/x");
  CHECK_STR(seen.query, "a=1&b=%20");
  CHECK_STR(seen.ctype, "application/json");
  CHECK_STR(seen.multi, "spaced value");
  CHECK_EQ(seen.body_len, 11);
  CHECK(memcmp(seen.body, "hello world", 11) == 0);
  CHECK(strncmp(r, "HTTP/1.1 200 OK\r\n", 17) == 0);
  CHECK(strstr(r, "Content-Length: 16\r\n") != NULL);
  CHECK(strstr(r, "\r\n\r\necho:hello world") != NULL);
  CHECK(!eof); /* kept alive */
  close(fd);
  stop();
  CHECK_EQ(seen.done, 1);
}

TEST(http_every_split_point_gives_the_same_request) {
  size_t k, n = sizeof(post) - 1;
  CHECK(start(0, 0, 0, 0) == 0);
  for (k = 1; k < n; k++) {
    int fd = client(), before = seen.requests;
    const char *r;
    CHECK(fd >= 0);
    feed(fd, post, k, k);
    feed(fd, post + k, n - k, n - k);
    r = got(fd, NULL);
    CHECK_EQ(seen.requests, before + 1);
    CHECK_EQ(seen.body_len, 11);
    CHECK_STR(seen.multi, "spaced value");
    CHECK(strstr(r, "echo:hello world") != NULL);
    close(fd);
  }
  stop();
}

TEST(http_chunked_body_fed_byte_by_byte_is_reassembled) {
  static const char req[] = "POST /c HTTP/1.1\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n"
                            "5;ext=1\r\nhello\r\n"
                            "1\r\n \r\n"
                            "5\r\nworld\r\n"
                            "0\r\nTrailer: x\r\n\r\n";
  int fd;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  feed(fd, req, sizeof(req) - 1, 1);
  CHECK(strstr(got(fd, NULL), "echo:hello world") != NULL);
  CHECK_EQ(seen.requests, 1);
  close(fd);
  stop();
}

/* ---- pipelining and answers held for later ----------------------------- */

TEST(http_pipelined_requests_wait_behind_a_held_answer_and_keep_order) {
  static const char reqs[] = "GET /hold HTTP/1.1\r\n\r\n"
                             "POST /two HTTP/1.1\r\nContent-Length: 3\r\n\r\n222"
                             "POST /three HTTP/1.1\r\nContent-Length: 1\r\n\r\n3";
  const char *r, *one, *two, *three;
  int fd;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  feed(fd, reqs, sizeof(reqs) - 1, sizeof(reqs) - 1);
  r = got(fd, NULL);
  CHECK_EQ(seen.requests, 1); /* the rest is not read yet */
  CHECK(r[0] == '\0');
  CHECK(seen.held != NULL);
  CHECK(sl_http_respond(seen.held, 200, "text/plain", "one", 3) == 0);
  r = got(fd, NULL);
  CHECK_EQ(seen.requests, 3);
  one = strstr(r, "\r\n\r\none");
  two = strstr(r, "echo:222");
  three = strstr(r, "echo:3");
  CHECK(one && two && three && one < two && two < three);
  CHECK_EQ(count(r, "HTTP/1.1 200 OK"), 3);
  close(fd);
  stop();
}

TEST(http_a_held_request_cut_by_the_client_ends_with_cb_done) {
  int fd;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  feed(fd, "GET /hold HTTP/1.1\r\n\r\n", 22, 22);
  CHECK(seen.held != NULL);
  stop(); /* closing the server closes the connection */
  CHECK(seen.held == NULL);
  CHECK_EQ(seen.done, 1);
  close(fd);
}

TEST(http_keep_alive_serves_many_requests_on_one_connection) {
  static const char req[] = "POST /k HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
  int fd, i, eof;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  for (i = 0; i < 200; i++) {
    feed(fd, req, sizeof(req) - 1, sizeof(req) - 1);
    CHECK(strstr(got(fd, &eof), "echo:x") != NULL);
    CHECK(!eof);
  }
  CHECK_EQ(seen.requests, 200);
  close(fd);
  stop();
}

/* ---- limits and refusals ----------------------------------------------- */

TEST(http_head_over_the_limit_is_431_and_closed) {
  char req[1024];
  const char *r;
  int fd, eof;
  CHECK(start(256, 0, 0, 0) == 0);
  fd = client();
  snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Pad: %0300d\r\n\r\n", 0);
  feed(fd, req, strlen(req), 7);
  r = got(fd, &eof);
  CHECK(strncmp(r, "HTTP/1.1 431 ", 13) == 0);
  CHECK(strstr(r, "Connection: close") != NULL);
  CHECK_EQ(seen.requests, 0);
  close(fd);
  stop();
}

TEST(http_body_over_the_limit_is_413_before_it_is_read) {
  static const char req[] = "POST /big HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
  const char *r;
  int fd;
  CHECK(start(0, 100, 0, 0) == 0);
  fd = client();
  feed(fd, req, sizeof(req) - 1, sizeof(req) - 1);
  r = got(fd, NULL);
  CHECK(strncmp(r, "HTTP/1.1 413 ", 13) == 0);
  CHECK(strstr(r, "max_body_bytes (100)") != NULL);
  CHECK_EQ(seen.requests, 0);
  close(fd);
  stop();
}

TEST(http_chunked_body_over_the_limit_is_413) {
  static const char req[] = "POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "40\r\n0123456789012345678901234567890123456789"
                            "012345678901234567890123\r\n"
                            "40\r\n0123456789012345678901234567890123456789"
                            "012345678901234567890123\r\n0\r\n\r\n";
  int fd;
  CHECK(start(0, 100, 0, 0) == 0);
  fd = client();
  feed(fd, req, sizeof(req) - 1, 3);
  CHECK(strncmp(got(fd, NULL), "HTTP/1.1 413 ", 13) == 0);
  CHECK_EQ(seen.requests, 0);
  close(fd);
  stop();
}

TEST(http_refused_head_skips_the_body_and_keeps_the_connection) {
  static const char reqs[] = "POST /refuse HTTP/1.1\r\nContent-Length: 5\r\n\r\nxxxxx"
                             "POST /ok HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
  const char *r;
  int fd, eof;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  feed(fd, reqs, sizeof(reqs) - 1, 1);
  r = got(fd, &eof);
  CHECK(strncmp(r, "HTTP/1.1 401 ", 13) == 0);
  CHECK(strstr(r, "{\"error\":\"no\"}") != NULL);
  CHECK(strstr(r, "echo:ok") != NULL);
  CHECK_EQ(seen.requests, 1);
  CHECK(!eof);
  close(fd);
  stop();
  CHECK_EQ(seen.done, 2);
}

TEST(http_garbage_is_400_and_closed) {
  int fd, eof;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  feed(fd, "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 38, 1);
  CHECK(strncmp(got(fd, &eof), "HTTP/1.1 400 ", 13) == 0);
  close(fd);
  stop();
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

TEST(http_head_deadline_does_not_move_with_trickled_bytes) {
  static const char req[] = "GET /slow HTTP/1.1\r\nHost: x\r\nX-A: bbbbbbbbbb\r\n\r\n";
  const char *r = "";
  int fd, eof = 0, i, cut = -1;
  /* idle 1 s would never fire with a byte every 30 ms; the head deadline
   * of 150 ms from the first byte does */
  CHECK(start(0, 0, 1000, 150) == 0);
  fd = client();
  for (i = 0; i < (int)sizeof(req) - 1; i++) {
    if (send(fd, req + i, 1, MSG_NOSIGNAL) != 1) {
      cut = i;
      break;
    }
    sleep_ms(30);
    r = got(fd, &eof);
    if (r[0] || eof) {
      cut = i;
      break;
    }
  }
  CHECK(cut >= 3 && cut <= 8); /* about 150 ms / 30 ms in */
  CHECK(strncmp(r, "HTTP/1.1 408 ", 13) == 0);
  CHECK_EQ(srv.stats.timeouts, 1);
  CHECK_EQ(seen.requests, 0);
  close(fd);
  stop();
}

TEST(http_body_deadline_does_not_move_with_trickled_bytes) {
  static const char head[] = "POST /slow HTTP/1.1\r\nContent-Length: 50\r\n\r\n";
  const char *r = "";
  int fd, eof = 0, i, cut = -1;
  /* before: each body byte restarted the idle limit, so a byte every 30 ms
   * held the connection for good; the body deadline (150 ms) does not move */
  more.body_ms = 150;
  CHECK(start(0, 0, 1000, 0) == 0);
  fd = client();
  feed(fd, head, sizeof(head) - 1, sizeof(head) - 1);
  for (i = 0; i < 50; i++) {
    if (send(fd, "x", 1, MSG_NOSIGNAL) != 1) {
      cut = i;
      break;
    }
    sleep_ms(30);
    r = got(fd, &eof);
    if (r[0] || eof) {
      cut = i;
      break;
    }
  }
  CHECK(cut >= 3 && cut <= 8);
  CHECK(strncmp(r, "HTTP/1.1 408 ", 13) == 0);
  CHECK_EQ(srv.stats.timeouts, 1);
  CHECK_EQ(srv.listener.stats.timed_out, 1);
  CHECK_EQ(seen.requests, 0);
  close(fd);
  stop();
}

TEST(http_connection_over_max_conns_gets_503_and_is_closed) {
  static const char req[] = "POST /k HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
  const char *r;
  int a, b, eof = 0, i;
  more.max_conns = 1;
  CHECK(start(0, 0, 0, 0) == 0);
  a = client();
  b = client();
  feed(b, req, sizeof(req) - 1, sizeof(req) - 1);
  r = got(b, &eof);
  CHECK(strncmp(r, "HTTP/1.1 503 ", 13) == 0);
  CHECK(strstr(r, "Retry-After: 1\r\n") != NULL);
  CHECK(strstr(r, "Connection: close\r\n") != NULL);
  CHECK(strstr(r, "\r\n\r\n{\"error\":\"too many connections\"}") != NULL);
  for (i = 0; i < 100 && !eof; i++) {
    sleep_ms(20);
    got(b, &eof);
  }
  CHECK(eof);
  CHECK_EQ(srv.listener.stats.refused_limit, 1);
  CHECK_EQ(srv.listener.nconns, 1);
  /* the one within the limit is served */
  feed(a, req, sizeof(req) - 1, sizeof(req) - 1);
  CHECK(strstr(got(a, NULL), "echo:x") != NULL);
  close(a);
  close(b);
  stop();
}

TEST(http_bodies_over_max_pending_shed_the_stalest_upload_or_get_503) {
  static const char head[] = "POST /p HTTP/1.1\r\nContent-Length: 80\r\n\r\n";
  static const char big[] = "POST /p HTTP/1.1\r\nContent-Length: 150\r\n\r\n";
  char part[121];
  const char *r;
  int a, b, c, eof = 0;
  memset(part, 'x', 120);
  part[120] = '\0';
  more.max_pending = 100;
  CHECK(start(0, 0, 0, 0) == 0);
  a = client();
  b = client();
  feed(a, head, sizeof(head) - 1, sizeof(head) - 1);
  feed(a, part, 60, 60);
  CHECK_EQ(srv.pending, 60);
  sleep_ms(5);
  feed(b, head, sizeof(head) - 1, sizeof(head) - 1);
  feed(b, part, 60, 60); /* 120 held would pass 100: a waited longest */
  got(a, &eof);
  CHECK(eof);
  CHECK_EQ(srv.listener.stats.shed_memory, 1);
  CHECK_EQ(srv.pending, 60);
  feed(b, part, 20, 20); /* b completes within the bound */
  CHECK(strstr(got(b, NULL), "echo:xxxx") != NULL);
  CHECK_EQ(srv.pending, 0);
  /* one body alone over the bound: nothing to shed, 503 */
  c = client();
  feed(c, big, sizeof(big) - 1, sizeof(big) - 1);
  feed(c, part, 120, 120);
  r = got(c, NULL);
  CHECK(strncmp(r, "HTTP/1.1 503 ", 13) == 0);
  CHECK(strstr(r, "Retry-After: 1") != NULL);
  CHECK_EQ(srv.stats.shed_memory, 1);
  close(a);
  close(b);
  close(c);
  stop();
  CHECK_EQ(srv.pending, 0);
}

/* ---- streaming --------------------------------------------------------- */

TEST(http_stream_sends_chunks_then_closes) {
  const char *r;
  int fd, eof;
  CHECK(start(0, 0, 0, 0) == 0);
  fd = client();
  feed(fd, "GET /stream HTTP/1.1\r\n\r\n", 24, 24);
  r = got(fd, &eof);
  CHECK(strstr(r, "Transfer-Encoding: chunked\r\n") != NULL);
  CHECK(strstr(r, "\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n") != NULL);
  r = got(fd, &eof);
  CHECK(eof);
  close(fd);
  stop();
}

/* ---- helpers ----------------------------------------------------------- */

TEST(http_unescape_decodes_and_refuses_broken_escapes) {
  char s[64];
  strcpy(s, "a%2Fb+c%20");
  CHECK_EQ(sl_http_unescape(s, strlen(s), 1), 6);
  CHECK(memcmp(s, "a/b c ", 6) == 0);
  strcpy(s, "a+b");
  CHECK_EQ(sl_http_unescape(s, 3, 0), 3);
  CHECK(memcmp(s, "a+b", 3) == 0);
  strcpy(s, "bad%2");
  CHECK_EQ(sl_http_unescape(s, 5, 0), -1);
  strcpy(s, "bad%zz");
  CHECK_EQ(sl_http_unescape(s, 6, 0), -1);
}

/* The tap and error bodies use the one escaper: bytes that are not UTF-8
 * must not reach a JSON reader as they are. */
TEST(json_str_escapes_controls_and_replaces_invalid_utf8) {
  struct sl_buf b;
  sl_buf_init(&b);
  CHECK(sl_codec_json_str(&b, "a\"b\\c\n\x01\xff\xc3\xa9", 10) == 0);
  CHECK(sl_buf_putc(&b, '\0') == 0);
  CHECK_STR((const char *)b.data,
            "\"a\\\"b\\\\c\\u000a\\u0001\\ufffd\xc3\xa9\"");
  sl_buf_close(&b);
}

TEST(http_status_text_names_known_codes) {
  CHECK_STR(sl_http_status_text(413), "Payload Too Large");
  CHECK_STR(sl_http_status_text(431), "Request Header Fields Too Large");
  CHECK_STR(sl_http_status_text(799), "");
}
