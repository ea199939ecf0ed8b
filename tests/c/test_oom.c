/* test_oom.c - out-of-memory paths: this binary's malloc, calloc, realloc,
 * strdup and strndup fail on command when called from the engine's code
 * (the n-th call, or every call from the n-th on), and each case walks n
 * over every allocation a routine makes. A routine must then fail with an error or succeed whole; it must
 * never crash nor hand back a half-built result. */
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "http.h"
#include "json.h"
#include "plugins.h"
#include "rules.h"
#include "sandbox.h"
#include "schemas.h"
#include "test.h"

/* Under ASan (make test-asan) malloc is the sanitizer's and cannot be
 * replaced here: the suite runs in `make test` only and is empty there. */
#if defined(__SANITIZE_ADDRESS__)
#define SL_OOM_NO_HOOK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SL_OOM_NO_HOOK 1
#endif
#endif

#ifndef SL_OOM_NO_HOOK
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static long fail_at = -1; /* the call that fails first; -1: none */
static int fail_rest;     /* and every call after it */
static long calls;

/* the text of this binary: the engine's objects are linked in */
extern char __executable_start[], etext[];

/* Only the engine's own calls fail: yajl and libc do not check all of
 * theirs (yajl_alloc dereferences a failed malloc), which no engine code
 * can mend. */
static int failing_from(const void *caller) {
  long k;
  if (fail_at < 0 || (const char *)caller < __executable_start ||
      (const char *)caller >= etext)
    return 0;
  k = calls++;
  return k == fail_at || (fail_rest && k > fail_at);
}

#define failing() failing_from(__builtin_return_address(0))

void *malloc(size_t n) { return failing() ? NULL : __libc_malloc(n); }
void *calloc(size_t n, size_t size) {
  return failing() ? NULL : __libc_calloc(n, size);
}
void *realloc(void *p, size_t n) {
  return n && failing() ? NULL : __libc_realloc(p, n);
}
char *strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = failing() ? NULL : __libc_malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}
char *strndup(const char *s, size_t max) {
  size_t n = strnlen(s, max);
  char *d = failing() ? NULL : __libc_malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = 0;
  }
  return d;
}

static void arm(long n, int rest) {
  calls = 0;
  fail_at = n;
  fail_rest = rest;
}

static void disarm(void) { fail_at = -1; }

static char dir[] = "/tmp/sluice-test-oom-XXXXXX";

static const char *write_conf(const char *text) {
  static char path[256];
  FILE *f;
  if (dir[sizeof(dir) - 2] == 'X' && mkdtemp(dir) == NULL)
    return NULL;
  snprintf(path, sizeof(path), "%s/c.lua", dir);
  f = fopen(path, "w");
  if (f == NULL)
    return NULL;
  fputs(text, f);
  fclose(f);
  return path;
}

/* A valid body that failed for want of memory is SL_ENOMEM (HTTP 500, the
 * client retries), never SL_EPROTO (400 "invalid JSON", it gives up). */
static void json_walk(int *failed__, int flags, const char *body) {
  struct sl_buf out;
  struct sl_json_error err;
  long n;
  int rc, refused = 0;
  sl_buf_init(&out);
  for (n = 0;; n++) {
    sl_buf_reset(&out);
    arm(n, 0);
    rc = sl_json_items_to_msgpack(body, strlen(body), flags, &out, NULL, NULL,
                                  &err);
    disarm();
    if (rc != 0 && rc != SL_ENOMEM)
      fprintf(stderr, "  allocation %ld: rc %d: %s\n", n, rc, err.msg);
    CHECK(rc == 0 || rc == SL_ENOMEM);
    refused += rc != 0;
    if (rc == 0 && calls <= n)
      break;
  }
  for (n = 0;; n++) {
    char msg[256];
    sl_buf_reset(&out);
    arm(n, 0);
    rc = sl_json_to_msgpack(body, strlen(body), &out, msg, sizeof(msg));
    disarm();
    if (flags != 0)
      break; /* a batch is not one value */
    if (rc != 0 && rc != SL_ENOMEM)
      fprintf(stderr, "  allocation %ld: rc %d: %s\n", n, rc, msg);
    CHECK(rc == 0 || rc == SL_ENOMEM);
    if (rc == 0 && calls <= n)
      break;
  }
  sl_buf_close(&out);
  CHECK(refused > 0);
}

/* big enough that the output buffer grows several times on the way */
#define ITEM                                                          \
  "{\"topic\":\"orders.eu\",\"payload\":{\"amount\":12.5,\"n\":-3,"     \
  "\"ok\":true,\"none\":null,\"tags\":[\"a\",\"b\",18446744073709551615],"  \
  "\"text\":\"0123456789012345678901234567890123456789012345678901\"}}"

TEST(json_valid_body_out_of_memory_is_enomem_not_invalid) {
  json_walk(failed__, 0, ITEM);
  json_walk(failed__, SL_JSON_SPLIT_ARRAY, "[" ITEM "," ITEM "," ITEM "]");
  json_walk(failed__, SL_JSON_MANY, ITEM "\n" ITEM "\n" ITEM "\n");
}

/* ---- an HTTP request whose head or body cannot be stored ------------------ */

static uv_loop_t loop;
static struct sl_http_server srv;

static void h_request(struct sl_http_request *r) {
  sl_http_respond(r, 200, "text/plain", "ok", 2);
}

static const struct sl_http_ops http_ops = {.cb_request = h_request};

static void pump(int n) {
  while (n-- > 0)
    uv_run(&loop, UV_RUN_NOWAIT);
}

static int client(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, O_NONBLOCK);
  pump(3);
  return fd;
}

/* The answer to req on a new connection, NUL-terminated, with the n-th
 * allocation after the accept failing. */
static const char *answer(int port, const char *req, long n) {
  static char buf[4096];
  size_t len = 0;
  ssize_t k;
  int fd = client(port);
  buf[0] = '\0';
  if (fd < 0)
    return buf;
  arm(n, 0);
  if (send(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t)strlen(req))
    pump(10);
  disarm();
  pump(5);
  while ((k = recv(fd, buf + len, sizeof(buf) - 1 - len, 0)) > 0)
    len += (size_t)k;
  buf[len] = '\0';
  close(fd);
  pump(5);
  return buf;
}

TEST(http_request_out_of_memory_is_503_not_400) {
  static const char req[] =
      "POST /v1/events?topic=a HTTP/1.1\r\nHost: x\r\n"
      "Content-Type: application/json\r\nX-Long: "
      "0123456789012345678901234567890123456789012345678901234567890123"
      "\r\nContent-Length: 20\r\n\r\n{\"a\":\"0123456789012\"}";
  char addr[64], err[256];
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  long n;
  int port, fd, unavailable = 0;
  /* a free port: bind to 0, read it back, let it go */
  fd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
  CHECK(getsockname(fd, (struct sockaddr *)&a, &alen) == 0);
  port = ntohs(a.sin_port);
  close(fd);
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  sl_log_set_level(SL_LOG_ERROR);
  uv_loop_init(&loop);
  memset(&srv, 0, sizeof(srv));
  srv.name = "oom";
  srv.limits.max_body_bytes = 1 << 20;
  srv.limits.idle_ms = 5000;
  CHECK(sl_http_start(&srv, &loop, addr, &http_ops, NULL, err, sizeof(err)) ==
        0);
  for (n = 0; n < 10000; n++) {
    const char *got = answer(port, req, n);
    if (strncmp(got, "HTTP/1.1 400", 12) == 0)
      fprintf(stderr, "  allocation %ld: %.80s\n", n, got);
    CHECK(strncmp(got, "HTTP/1.1 400", 12) != 0);
    unavailable += strncmp(got, "HTTP/1.1 503", 12) == 0;
    if (strncmp(got, "HTTP/1.1 200", 12) == 0 && calls <= n)
      break;
  }
  sl_http_stop(&srv);
  while (!srv.stopped && uv_run(&loop, UV_RUN_ONCE))
    ;
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  CHECK(n < 10000);
  CHECK(unavailable > 0);
}

/* ---- a refusal without memory for its reason headers --------------------- */

TEST(schemas_refuse_out_of_memory_still_sends_the_event_to_the_dead_letter) {
  static const uint8_t payload[] = {0x81, 0xa1, 'a', 0x01}; /* {a = 1} */
  struct sl_config cfg;
  struct sl_idgen g;
  long n;
  memset(&cfg, 0, sizeof(cfg));
  cfg.dead_letter = 1;
  sl_idgen_init(&g);
  for (n = 0; n < 100; n++) {
    struct sl_rules_result r;
    struct sl_str id = {NULL, 0}, topic = {"t", 1}, key = {NULL, 0};
    struct sl_event *ev = sl_event_new(&g, id, topic, key, 0, 0, NULL, 0,
                                       payload, sizeof(payload), 0);
    CHECK(ev != NULL);
    memset(&r, 0, sizeof(r));
    arm(n, 0);
    CHECK_EQ(sl_schemas_refuse(&cfg, &r, ev, "does not fit", "out"), 0);
    disarm();
    CHECK(r.event != NULL);
    CHECK_EQ(r.ntargets, 1);
    CHECK_EQ(r.targets[0], 1);
    sl_event_unref(r.event);
    if (calls <= n)
      break;
  }
  CHECK(n < 100);
}

/* ---- a rule's Lua state ---------------------------------------------------- */

/* LuaJIT 2.1's lua_newstate dereferences NULL when an allocation after its
 * first fails: box_new keeps blocks for it, so loading a rule with any one
 * allocation failing refuses or loads, and never crashes. */
TEST(rule_load_one_failed_allocation_refuses_or_loads) {
  struct sl_rule_limits lim = {1000, 16, NULL, NULL, NULL, 0, 0};
  char err[512], path[300];
  FILE *f;
  long n;
  int refused = 0;
  if (dir[sizeof(dir) - 2] == 'X')
    CHECK(write_conf("") != NULL); /* makes dir */
  snprintf(path, sizeof(path), "%s/r.lua", dir);
  f = fopen(path, "w");
  CHECK(f != NULL);
  fputs("return { on_event = function(ev) return 'x' end }\n", f);
  fclose(f);
  for (n = 0; n < 100000; n++) {
    struct sl_rule *r;
    arm(n, 0);
    r = sl_rule_load(path, &lim, NULL, err, sizeof(err));
    disarm();
    refused += r == NULL;
    sl_rule_free(r);
    if (r != NULL && calls <= n)
      break;
  }
  unlink(path);
  CHECK(n < 100000);
  CHECK(refused > 0);
}

/* inputs, outputs of several kinds, routes, a disk buffer, headers, the
 * implicit dead letter and the admin's redaction defaults */
static const char conf[] =
    "return {\n"
    "  inputs = { { name = 'app', type = 'tcp', listen = '127.0.0.1:7400' },\n"
    "             { name = 'web', type = 'http', listen = '127.0.0.1:7401',\n"
    "               topic = 'web' } },\n"
    "  outputs = { { name = 'archive', type = 'file', path = 'out.ndjson' },\n"
    "              { name = 'up', type = 'tcp', address = '127.0.0.1:7500',\n"
    "                buffer = { type = 'disk' } },\n"
    "              { name = 'hook', type = 'http', url = 'http://h:1/x',\n"
    "                headers = { ['X-Key'] = 'v' } } },\n"
    "  routes = { { topics = { 'orders.*', 'web' }, to = { 'archive', 'up' } },\n"
    "             { topics = '*', to = 'hook' } },\n"
    "  admin = { listen = '127.0.0.1:7402', redact_headers = { 'x-secret' } },\n"
    "}\n";

/* Whole: every name and address the engine dereferences is there. */
static int whole(const struct sl_config *cfg) {
  int i, k;
  if (cfg->ninputs != 2 || cfg->noutputs != 4 || cfg->router.nroutes != 2)
    return 0;
  for (i = 0; i < cfg->ninputs; i++)
    if (!cfg->inputs[i].name || !cfg->inputs[i].type ||
        !cfg->inputs[i].listen)
      return 0;
  for (i = 0; i < cfg->noutputs; i++)
    if (!cfg->outputs[i].name || !cfg->outputs[i].type)
      return 0;
  if (!cfg->outputs[0].path || !cfg->outputs[1].address ||
      !cfg->outputs[3].path || !cfg->outputs[3].format)
    return 0;
  for (i = 0; i < cfg->router.nroutes; i++)
    for (k = 0; k < cfg->router.routes[i].ntopics; k++)
      if (!cfg->router.routes[i].topics[k])
        return 0;
  return 1;
}

static void config_walk(int *failed__, int rest) {
  struct sl_buf err;
  const char *path = write_conf(conf);
  long n;
  int refused = 0;
  CHECK(path != NULL);
  sl_buf_init(&err);
  for (n = 0;; n++) {
    struct sl_config *cfg;
    sl_buf_reset(&err);
    arm(n, rest);
    cfg = sl_config_load(path, sl_plugins, &err);
    disarm();
    if (cfg == NULL) {
      if (err.len == 0 && !rest)
        fprintf(stderr, "  allocation %ld: refused without a reason\n", n);
      CHECK(err.len > 0 || rest); /* all failing: even the reason may not fit */
      /* the file is fine: want of memory is the only reason there is */
      if (err.len && !memmem(err.data, err.len, "out of memory", 13) &&
          !memmem(err.data, err.len, "not enough memory", 17))
        fprintf(stderr, "  allocation %ld: %.*s", n, (int)err.len,
                (const char *)err.data);
      CHECK(err.len == 0 || memmem(err.data, err.len, "out of memory", 13) ||
            memmem(err.data, err.len, "not enough memory", 17));
      refused++;
      continue;
    }
    if (!whole(cfg))
      fprintf(stderr, "  allocation %ld failed: a half-read config\n", n);
    CHECK(whole(cfg));
    sl_config_free(cfg);
    if (calls <= n)
      break; /* no allocation failed: every one was walked */
  }
  sl_buf_close(&err);
  CHECK(refused > 0);
}

TEST(config_load_one_failed_allocation_refuses_or_loads_whole) {
  config_walk(failed__, 0);
}

TEST(config_load_failing_from_any_allocation_on_refuses_or_loads_whole) {
  config_walk(failed__, 1);
}

__attribute__((destructor)) static void cleanup(void) {
  char path[256];
  snprintf(path, sizeof(path), "%s/c.lua", dir);
  unlink(path);
  rmdir(dir);
}

#endif /* SL_OOM_NO_HOOK */
