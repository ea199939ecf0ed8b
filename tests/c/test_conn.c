/* test_conn.c - the connection layer on a real libuv loop: a listener and a
 * client conn over loopback tcp and over a unix socket, each case run on
 * both transports. Close paths (deferred inside a callback, double close,
 * close with a write queued), pause/resume and the write queue; counters
 * named *_cb_called are asserted after uv_run. The main cases run over TLS
 * as well (certificates made with the openssl CLI). */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "test.h"
#include "tls.h"

/* One fixture: a listener, the server side of one accepted conn (s) and a
 * client conn (cl). Every callback counts itself. */
static struct fx {
  uv_loop_t loop;
  struct sl_listener l;
  struct sl_endpoint ep;
  uv_timer_t guard, timer;
  struct sl_conn *s, *cl;
  int timed_out;
  /* server side */
  int accept_cb_called, data_cb_called, eof_cb_called, close_cb_called;
  int eof_status;
  int write_cb_called, write_status, write_before_close;
  int state_in_cb, write_rc_in_cb, buffered_at_pause;
  char got[64];
  size_t ngot;
  /* client side */
  int connect_cb_called, connect_status, cl_eof_cb_called, cl_close_cb_called;
  char cl_got[64];
  size_t cl_ngot;
  /* what the case does */
  void (*on_data)(struct sl_conn *c, const uint8_t *d, size_t n, size_t *used);
  void (*on_connect)(void);
  void (*on_timer)(void);
} fx;

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

/* ---- server side -------------------------------------------------------- */

static size_t s_data(struct sl_conn *c, const uint8_t *d, size_t n) {
  size_t used = n;
  fx.data_cb_called++;
  if (fx.on_data)
    fx.on_data(c, d, n, &used);
  if (used && fx.ngot + used < sizeof(fx.got)) {
    memcpy(fx.got + fx.ngot, d, used);
    fx.ngot += used;
  }
  return used;
}

static void s_eof(struct sl_conn *c, int status) {
  fx.eof_cb_called++;
  fx.eof_status = status;
}

static void s_close(struct sl_conn *c) {
  fx.close_cb_called++;
  fx.s = NULL;
  sl_listener_stop(&fx.l); /* the loop ends once the client is gone too */
}

static const struct sl_conn_ops s_ops = {
    .cb_data = s_data, .cb_eof = s_eof, .cb_close = s_close};

static int on_accept(struct sl_listener *l, struct sl_conn *c) {
  fx.accept_cb_called++;
  fx.s = c;
  sl_conn_set_ops(c, &s_ops, &fx);
  return 0;
}

/* ---- client side -------------------------------------------------------- */

static size_t cl_data(struct sl_conn *c, const uint8_t *d, size_t n) {
  size_t k =
      n < sizeof(fx.cl_got) - fx.cl_ngot ? n : sizeof(fx.cl_got) - fx.cl_ngot;
  memcpy(fx.cl_got + fx.cl_ngot, d, k);
  fx.cl_ngot += k;
  return n;
}

static void cl_eof(struct sl_conn *c, int status) { fx.cl_eof_cb_called++; }

static void cl_close(struct sl_conn *c) {
  fx.cl_close_cb_called++;
  fx.cl = NULL;
}

static void cl_connect(struct sl_conn *c, int status) {
  fx.connect_cb_called++;
  fx.connect_status = status;
  if (status == 0 && fx.on_connect)
    fx.on_connect();
}

static const struct sl_conn_ops cl_ops = {.cb_data = cl_data,
                                          .cb_eof = cl_eof,
                                          .cb_close = cl_close,
                                          .cb_connect = cl_connect};

/* ---- the fixture -------------------------------------------------------- */

static void on_guard(uv_timer_t *t) {
  fx.timed_out = 1; /* a case that hangs fails instead */
  if (fx.s)
    sl_conn_close(fx.s);
  if (fx.cl)
    sl_conn_close(fx.cl);
  sl_listener_stop(&fx.l);
  uv_close((uv_handle_t *)&fx.timer, NULL);
}

static void on_timer(uv_timer_t *t) {
  if (fx.on_timer)
    fx.on_timer();
}

static void after(int ms) {
  uv_timer_start(&fx.timer, on_timer, (uint64_t)ms, 0);
}

static void send_str(struct sl_conn *c, const char *s) {
  struct sl_buf b;
  sl_buf_init(&b);
  sl_buf_append(&b, s, strlen(s));
  if (sl_conn_write(c, &b, NULL, NULL) != 0)
    sl_buf_close(&b);
}

static char sock_path[64];
/* listener limits for the next setup(); reset by it */
static uint32_t opt_idle_ms, opt_max_conns;
static const char *opt_refusal;
static const char *opt_client_host; /* the client dials host:port instead */
static int opt_tls; /* the tcp endpoint runs over TLS (see tls_setup) */
static int tls_setup(void);
static struct sl_endpoint cl_ep; /* with TLS, the client's side */

/* Listen on kind and connect a client to it. Returns 0 or the failing rc. */
static int setup(enum sl_endpoint_kind kind) {
  char addr[64], err[256];
  int rc;
  memset(&fx, 0, sizeof(fx));
  sl_log_set_level(SL_LOG_ERROR);
  uv_loop_init(&fx.loop);
  if (kind == SL_ENDPOINT_TCP) {
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", free_port());
  } else {
    snprintf(sock_path, sizeof(sock_path), "/tmp/sl_test_conn.%d.sock",
             (int)getpid());
    snprintf(addr, sizeof(addr), "%s", sock_path);
  }
  if ((rc = sl_endpoint_init(&fx.ep, kind, addr, err, sizeof(err))) != 0)
    return rc;
  cl_ep = fx.ep;
  if (opt_tls && (rc = tls_setup()) != 0)
    return rc;
  opt_tls = 0;
  fx.l.max_buffered = 1 << 20;
  fx.l.idle_ms = opt_idle_ms;
  fx.l.max_conns = opt_max_conns;
  if (opt_refusal) {
    fx.l.refusal = opt_refusal;
    fx.l.refusal_len = strlen(opt_refusal);
  }
  opt_idle_ms = opt_max_conns = 0;
  opt_refusal = NULL;
  rc = sl_listener_start(&fx.l, &fx.loop, &fx.ep, on_accept, &fx, err,
                         sizeof(err));
  if (rc != 0) {
    fprintf(stderr, "  %s\n", err);
    return rc;
  }
  uv_timer_init(&fx.loop, &fx.guard);
  uv_timer_start(&fx.guard, on_guard, 5000, 0);
  uv_unref((uv_handle_t *)&fx.guard); /* the loop ends without it */
  uv_timer_init(&fx.loop, &fx.timer);
  uv_unref((uv_handle_t *)&fx.timer);
  if (opt_client_host) {
    struct sl_endpoint ep;
    snprintf(addr, sizeof(addr), "%s:%s", opt_client_host,
             strrchr(fx.ep.address, ':') + 1);
    opt_client_host = NULL;
    if ((rc = sl_endpoint_init(&ep, kind, addr, err, sizeof(err))) != 0)
      return rc;
    sl_endpoint_set_tls(&ep, cl_ep.tls);
    fx.cl = sl_conn_connect(&fx.loop, &ep, &cl_ops, &fx, NULL);
  } else {
    fx.cl = sl_conn_connect(&fx.loop, &cl_ep, &cl_ops, &fx, NULL);
  }
  return fx.cl ? 0 : -1;
}

/* Run until the listener, both conns and every timer are closed. */
static void run(void) {
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  if (!uv_is_closing((uv_handle_t *)&fx.timer))
    uv_close((uv_handle_t *)&fx.timer, NULL);
  uv_close((uv_handle_t *)&fx.guard, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  uv_loop_close(&fx.loop);
}

/* The tests name_tcp and name_unix: case run over each transport. */
#define ON_TCP_AND_UNIX(name, case_)                                         \
  TEST(name##_tcp) { case_(SL_ENDPOINT_TCP, failed__); }                     \
  TEST(name##_unix) { case_(SL_ENDPOINT_UNIX, failed__); }

/* A case's start: setup on kind, its hooks (each may be NULL), run, and
 * the guard never fired. Returns from the case when any of it failed. */
#define PLAY(kind, data, connect, timer)                                     \
  do {                                                                       \
    CHECK_EQ(setup(kind), 0);                                                \
    fx.on_data = (data);                                                     \
    fx.on_connect = (connect);                                               \
    fx.on_timer = (timer);                                                   \
    run();                                                                   \
    CHECK_EQ(fx.timed_out, 0);                                               \
  } while (0)

/* ---- close inside a read callback is deferred --------------------------- */

static void close_twice_in_data(struct sl_conn *c, const uint8_t *d, size_t n,
                                size_t *used) {
  struct sl_buf b;
  sl_conn_close(c);
  sl_conn_close(c); /* double close inside the callback: a no-op */
  fx.state_in_cb = (int)sl_conn_state(c);
  sl_buf_init(&b);
  sl_buf_append(&b, "late", 4);
  fx.write_rc_in_cb = sl_conn_write(c, &b, NULL, NULL);
  sl_buf_close(&b);
  /* the conn is still ours until we return: its fields read fine */
  if (strcmp(sl_conn_peer(c), "") == 0)
    fx.state_in_cb = -1;
}

static void send_twice(void) {
  send_str(fx.cl, "first");
  send_str(fx.cl, "second");
}

static void close_in_read_callback_is_deferred(enum sl_endpoint_kind kind,
                                               int *failed__) {
  PLAY(kind, close_twice_in_data, send_twice, NULL);
  CHECK_EQ(fx.accept_cb_called, 1);
  CHECK_EQ(fx.state_in_cb, SL_CONN_CLOSING); /* deferred, not yet closed */
  CHECK_EQ(fx.write_rc_in_cb, UV_ECANCELED);
  CHECK_EQ(fx.data_cb_called, 1); /* nothing after the close */
  CHECK_EQ(fx.eof_cb_called, 0);  /* closed by us, not by the peer */
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(fx.connect_cb_called, 1);
  CHECK_EQ(fx.cl_eof_cb_called, 1); /* the client saw the end */
  CHECK_EQ(fx.cl_close_cb_called, 1);
  CHECK_EQ(sl_listener_open(&fx.l), 0);
}

ON_TCP_AND_UNIX(conn_close_inside_read_callback_is_deferred,
                close_in_read_callback_is_deferred)

/* ---- double close outside a callback ------------------------------------ */

static void pause_in_data(struct sl_conn *c, const uint8_t *d, size_t n,
                          size_t *used) {
  sl_conn_pause(c);
  after(10);
}

static void close_twice_now(void) {
  struct sl_conn *s = fx.s;
  sl_conn_close(s);
  fx.state_in_cb = (int)sl_conn_state(s); /* not in its callback: at once */
  sl_conn_close(s);
  sl_conn_close(fx.cl);
  sl_conn_close(fx.cl);
}

static void double_close_is_safe(enum sl_endpoint_kind kind, int *failed__) {
  PLAY(kind, pause_in_data, send_twice, close_twice_now);
  CHECK_EQ(fx.state_in_cb, SL_CONN_CLOSED);
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(fx.cl_close_cb_called, 1);
  CHECK_EQ(fx.eof_cb_called, 0);
  CHECK_EQ(fx.cl_eof_cb_called, 0);
}

ON_TCP_AND_UNIX(conn_double_close_runs_close_callback_once,
                double_close_is_safe)

/* ---- close while a write is queued -------------------------------------- */

#define BIG (8u << 20) /* more than any socket buffer takes at once */

static void big_written(struct sl_conn *c, int status, void *arg) {
  fx.write_cb_called++;
  fx.write_status = status;
  fx.write_before_close = fx.close_cb_called == 0;
}

static void write_big_then_close(struct sl_conn *c, const uint8_t *d, size_t n,
                                 size_t *used) {
  struct sl_buf b;
  sl_buf_init(&b);
  if (sl_buf_reserve(&b, BIG) != 0)
    return;
  memset(b.data, 'x', BIG);
  b.len = BIG;
  fx.write_rc_in_cb = sl_conn_write(c, &b, big_written, NULL);
  fx.buffered_at_pause = sl_conn_pending_writes(c); /* 1: queued */
  fx.state_in_cb = sl_conn_write_queue_size(c) > 0;
  sl_conn_close(c);
}

static void close_with_write_queued(enum sl_endpoint_kind kind, int *failed__) {
  PLAY(kind, write_big_then_close, send_twice, NULL);
  CHECK_EQ(fx.write_rc_in_cb, 0);
  CHECK_EQ(fx.buffered_at_pause, 1);
  CHECK_EQ(fx.state_in_cb, 1); /* bytes were still queued at the close */
  CHECK_EQ(fx.write_cb_called, 1);
  CHECK_EQ(fx.write_status, UV_ECANCELED);
  CHECK_EQ(fx.write_before_close, 1); /* the protocol's state still lives */
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

ON_TCP_AND_UNIX(conn_close_with_a_write_queued_cancels_it_before_cb_close,
                close_with_write_queued)

/* ---- pause and resume --------------------------------------------------- */

static int pause_phase;

static void pause_first(struct sl_conn *c, const uint8_t *d, size_t n,
                        size_t *used) {
  if (pause_phase == 0) {
    pause_phase = 1;
    *used = 0; /* keep "abc" buffered */
    sl_conn_pause(c);
    fx.buffered_at_pause = (int)sl_conn_buffered(c);
    send_str(fx.cl, "def"); /* arrives while c is paused */
    after(30);
    return;
  }
  if (fx.ngot + n >= 6) { /* "abcdef" is in: done */
    fx.state_in_cb = (int)sl_conn_offset(c);
    sl_conn_close(fx.cl);
  }
}

static void resume_later(void) {
  if (pause_phase == 1) {
    /* "def" went out meanwhile: a paused conn delivered none of it */
    pause_phase = 2;
    fx.write_status = fx.data_cb_called;
    fx.write_before_close = sl_conn_is_paused(fx.s);
    sl_conn_resume(fx.s);
  }
}

static void connect_abc_def(void) { send_str(fx.cl, "abc"); }

static void pause_holds_bytes_until_resume(enum sl_endpoint_kind kind,
                                           int *failed__) {
  pause_phase = 0;
  PLAY(kind, pause_first, connect_abc_def, resume_later);
  CHECK_EQ(pause_phase, 2);
  CHECK_EQ(fx.buffered_at_pause, 3);
  CHECK_EQ(fx.write_status, 1);       /* data callbacks while paused: none */
  CHECK_EQ(fx.write_before_close, 1); /* it was paused until resumed */
  CHECK_EQ(fx.ngot, 6);
  CHECK(memcmp(fx.got, "abcdef", 6) == 0);
  CHECK_EQ(fx.state_in_cb, 3);   /* offset of "def": "abc" consumed before */
  CHECK_EQ(fx.eof_cb_called, 1); /* the client closed */
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

ON_TCP_AND_UNIX(conn_pause_holds_bytes_until_resume,
                pause_holds_bytes_until_resume)

/* ---- the write queue ---------------------------------------------------- */

static int wq_status_sum;

static void wq_written(struct sl_conn *c, int status, void *arg) {
  fx.write_cb_called++;
  wq_status_sum += status;
  /* each callback in the order of the writes */
  if ((intptr_t)arg != fx.write_cb_called)
    wq_status_sum += 1000;
  if (fx.write_cb_called == 3) {
    fx.state_in_cb = sl_conn_pending_writes(c);
  }
}

static void answer_three(struct sl_conn *c, const uint8_t *d, size_t n,
                         size_t *used) {
  static const char *const parts[] = {"one,", "two,", "three"};
  intptr_t i;
  for (i = 0; i < 3; i++) {
    struct sl_buf b;
    sl_buf_init(&b);
    sl_buf_append(&b, parts[i], strlen(parts[i]));
    if (sl_conn_write(c, &b, wq_written, (void *)(i + 1)) != 0)
      sl_buf_close(&b);
    if (b.len != 0 || b.data != NULL) /* the request took the memory */
      wq_status_sum += 100;
  }
  fx.buffered_at_pause = sl_conn_pending_writes(c);
}

static size_t cl_data_until_three(struct sl_conn *c, const uint8_t *d,
                                  size_t n) {
  cl_data(c, d, n);
  if (fx.cl_ngot >= 13)
    sl_conn_close(c); /* inside its own read callback: deferred */
  return n;
}

static const struct sl_conn_ops cl_ops_three = {.cb_data = cl_data_until_three,
                                                .cb_eof = cl_eof,
                                                .cb_close = cl_close,
                                                .cb_connect = cl_connect};

static void send_go(void) { send_str(fx.cl, "go"); }

static void write_queue_in_order(enum sl_endpoint_kind kind, int *failed__) {
  CHECK_EQ(setup(kind), 0);
  sl_conn_set_ops(fx.cl, &cl_ops_three, &fx);
  wq_status_sum = 0;
  fx.on_data = answer_three;
  fx.on_connect = send_go;
  run();
  CHECK_EQ(fx.timed_out, 0);
  CHECK_EQ(fx.buffered_at_pause, 3);
  CHECK_EQ(fx.write_cb_called, 3);
  CHECK_EQ(wq_status_sum, 0);  /* all ok, in order, memory taken */
  CHECK_EQ(fx.state_in_cb, 0); /* none pending after the last callback */
  CHECK_EQ(fx.cl_ngot, 13);
  CHECK(memcmp(fx.cl_got, "one,two,three", 13) == 0);
  CHECK_EQ(fx.eof_cb_called, 1);
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

ON_TCP_AND_UNIX(conn_write_queue_sends_in_order_and_calls_back_each,
                write_queue_in_order)

/* sl_conn_try_write: what the kernel takes now, no callback; 0 (nothing
 * written) while a queued write has not called back, so bytes never pass
 * it, and over TLS, whose records have their own queue. */
static int try_rc_first, try_rc_behind;
static size_t try_want; /* bytes the client waits for */

static void answer_try(struct sl_conn *c, const uint8_t *d, size_t n,
                       size_t *used) {
  struct sl_buf b;
  try_rc_first = sl_conn_try_write(c, (const uint8_t *)"now,", 4);
  sl_buf_init(&b);
  sl_buf_append(&b, "one,", 4);
  if (sl_conn_write(c, &b, wq_written, (void *)(intptr_t)1) != 0)
    sl_buf_close(&b);
  try_rc_behind = sl_conn_try_write(c, (const uint8_t *)"two,", 4);
}

static size_t cl_data_until_want(struct sl_conn *c, const uint8_t *d,
                                 size_t n) {
  cl_data(c, d, n);
  if (fx.cl_ngot >= try_want)
    sl_conn_close(c);
  return n;
}

static const struct sl_conn_ops cl_ops_want = {.cb_data = cl_data_until_want,
                                               .cb_eof = cl_eof,
                                               .cb_close = cl_close,
                                               .cb_connect = cl_connect};

static void try_write_now_or_not_at_all(enum sl_endpoint_kind kind,
                                        int *failed__) {
  int tls = opt_tls; /* setup clears it */
  const char *want = tls ? "one," : "now,one,";
  CHECK_EQ(setup(kind), 0);
  sl_conn_set_ops(fx.cl, &cl_ops_want, &fx);
  try_want = strlen(want);
  wq_status_sum = 0;
  fx.on_data = answer_try;
  fx.on_connect = send_go;
  run();
  CHECK_EQ(fx.timed_out, 0);
  CHECK_EQ(try_rc_first, tls ? 0 : 4);
  CHECK_EQ(try_rc_behind, 0);
  CHECK_EQ(fx.write_cb_called, 1);
  CHECK_EQ(wq_status_sum, 0);
  CHECK_EQ(fx.cl_ngot, try_want);
  CHECK(memcmp(fx.cl_got, want, try_want) == 0);
}

ON_TCP_AND_UNIX(conn_try_write_writes_now_and_never_passes_a_queued_write,
                try_write_now_or_not_at_all)

/* ---- connect failure ---------------------------------------------------- */

static void connect_refused(enum sl_endpoint_kind kind, int *failed__) {
  struct sl_endpoint ep;
  char addr[64];
  memset(&fx, 0, sizeof(fx));
  uv_loop_init(&fx.loop);
  if (kind == SL_ENDPOINT_TCP)
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", free_port());
  else
    snprintf(addr, sizeof(addr), "/tmp/sl_test_conn.%d.none", (int)getpid());
  CHECK_EQ(sl_endpoint_init(&ep, kind, addr, NULL, 0), 0);
  fx.cl = sl_conn_connect(&fx.loop, &ep, &cl_ops, &fx, NULL);
  CHECK(fx.cl != NULL);
  CHECK_EQ(sl_conn_state(fx.cl), SL_CONN_CONNECTING);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  uv_loop_close(&fx.loop);
  CHECK_EQ(fx.connect_cb_called, 1);
  CHECK(fx.connect_status ==
        (kind == SL_ENDPOINT_TCP ? UV_ECONNREFUSED : UV_ENOENT));
  CHECK_EQ(fx.cl_eof_cb_called, 0);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

ON_TCP_AND_UNIX(conn_connect_failure_reports_once_then_closes, connect_refused)

/* ---- host names ----------------------------------------------------------- */

static void send_hello(void) {
  send_str(fx.cl, "hello");
}

static void close_server_on_data(struct sl_conn *c, const uint8_t *d, size_t n,
                                 size_t *used) {
  sl_conn_close(c);
  if (fx.cl)
    sl_conn_close(fx.cl);
}

/* localhost is looked up (not taken as 127.0.0.1) and reached. */
TEST(conn_connect_resolves_a_host_name_and_reaches_the_listener) {
  opt_client_host = "localhost";
  CHECK_EQ(setup(SL_ENDPOINT_TCP), 0);
  CHECK_EQ(sl_conn_state(fx.cl), SL_CONN_CONNECTING);
  CHECK(strncmp(sl_conn_peer(fx.cl), "localhost:", 10) == 0);
  fx.on_connect = send_hello;
  fx.on_data = close_server_on_data;
  run();
  CHECK_EQ(fx.timed_out, 0);
  CHECK_EQ(fx.connect_cb_called, 1);
  CHECK_EQ(fx.connect_status, 0);
  CHECK_EQ(fx.accept_cb_called, 1);
  CHECK(fx.ngot >= 5 && memcmp(fx.got, "hello", 5) == 0);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

/* A name that does not resolve is one cb_connect with a resolver error. */
TEST(conn_connect_to_a_name_that_does_not_resolve_reports_a_resolve_error) {
  struct sl_endpoint ep;
  memset(&fx, 0, sizeof(fx));
  uv_loop_init(&fx.loop);
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "no-such-host.invalid:1",
                            NULL, 0), 0);
  fx.cl = sl_conn_connect(&fx.loop, &ep, &cl_ops, &fx, NULL);
  CHECK(fx.cl != NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  CHECK_EQ(uv_loop_close(&fx.loop), 0);
  CHECK_EQ(fx.connect_cb_called, 1);
  CHECK(sl_conn_resolve_error(fx.connect_status));
  CHECK(!sl_conn_resolve_error(UV_ECONNREFUSED));
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

/* Closed while its lookup runs: no cb_connect, freed once the lookup is
 * back (the loop ends with nothing left open). */
TEST(conn_close_during_the_lookup_frees_the_conn_after_it) {
  struct sl_endpoint ep;
  memset(&fx, 0, sizeof(fx));
  uv_loop_init(&fx.loop);
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "localhost:9", NULL, 0), 0);
  fx.cl = sl_conn_connect(&fx.loop, &ep, &cl_ops, &fx, NULL);
  CHECK(fx.cl != NULL);
  sl_conn_close(fx.cl);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  CHECK_EQ(uv_loop_close(&fx.loop), 0);
  CHECK_EQ(fx.connect_cb_called, 0);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

/* Listeners take addresses and localhost (127.0.0.1), not other names. */
TEST(listener_refuses_a_host_name_other_than_localhost) {
  struct sl_endpoint ep;
  char err[256];
  uv_loop_t loop;
  struct sl_listener l;
  uv_loop_init(&loop);
  memset(&l, 0, sizeof(l));
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "peer.example:9", NULL, 0),
           0);
  CHECK(sl_listener_start(&l, &loop, &ep, on_accept, NULL, err,
                          sizeof(err)) != 0);
  CHECK(strstr(err, "peer.example:9") != NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

/* ---- endpoints ----------------------------------------------------------- */

TEST(endpoint_parses_once_and_refuses_bad_addresses) {
  struct sl_endpoint ep;
  char err[256], longpath[200];
  CHECK_EQ(
      sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "127.0.0.1:9", err, sizeof(err)),
      0);
  CHECK_STR(ep.address, "127.0.0.1:9");
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "[::1]:9", err, sizeof(err)),
           0);
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "central.logging.svc:7400",
                            err, sizeof(err)), 0); /* a name: for clients */
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "bad_host!:9", err,
                            sizeof(err)), UV_EINVAL);
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "[name]:9", err,
                            sizeof(err)), UV_EINVAL);
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_TCP, "no-port", err, sizeof(err)),
           UV_EINVAL);
  CHECK(strstr(err, "no-port") != NULL);
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_UNIX, "", NULL, 0), UV_EINVAL);
  memset(longpath, 'a', sizeof(longpath) - 1);
  longpath[sizeof(longpath) - 1] = '\0';
  CHECK_EQ(sl_endpoint_init(&ep, SL_ENDPOINT_UNIX, longpath, NULL, 0),
           UV_ENAMETOOLONG);
  CHECK_EQ(sl_endpoint_init(&ep, (enum sl_endpoint_kind)7, "x", NULL, 0),
           UV_EINVAL);
}

/* A unix listener removes its own socket file when it stops. */
TEST(listener_unix_removes_its_socket_file_at_stop) {
  CHECK_EQ(setup(SL_ENDPOINT_UNIX), 0);
  CHECK_EQ(access(sock_path, F_OK), 0);
  fx.on_connect = send_go;
  fx.on_data = close_twice_in_data;
  run();
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK(access(sock_path, F_OK) != 0);
}

/* ---- close inside a write callback is deferred -------------------------- */

static void pong_written(struct sl_conn *c, int status, void *arg) {
  fx.write_cb_called++;
  fx.write_status = status;
  sl_conn_close(c);
  fx.state_in_cb = (int)sl_conn_state(c);
  sl_conn_close(c);
}

static void answer_pong(struct sl_conn *c, const uint8_t *d, size_t n,
                        size_t *used) {
  struct sl_buf b;
  sl_buf_init(&b);
  sl_buf_append(&b, "pong", 4);
  if (sl_conn_write(c, &b, pong_written, NULL) != 0)
    sl_buf_close(&b);
}

static void close_in_write_callback(enum sl_endpoint_kind kind,
                                    int *failed__) {
  PLAY(kind, answer_pong, send_go, NULL);
  CHECK_EQ(fx.write_cb_called, 1);
  CHECK_EQ(fx.write_status, 0);
  CHECK_EQ(fx.state_in_cb, SL_CONN_CLOSING);
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(fx.cl_ngot, 4);
  CHECK(memcmp(fx.cl_got, "pong", 4) == 0); /* written before the close */
  CHECK_EQ(fx.cl_eof_cb_called, 1);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

ON_TCP_AND_UNIX(conn_close_inside_write_callback_is_deferred,
                close_in_write_callback)

/* ---- stop reading: what is buffered is still offered, nothing more ------ */

static int stop_phase;

static void stop_then_offer(struct sl_conn *c, const uint8_t *d, size_t n,
                            size_t *used) {
  if (stop_phase == 0) {
    stop_phase = 1;
    *used = 0; /* "abc" stays buffered */
    sl_conn_pause(c);
    sl_conn_stop_reading(c);
    send_str(fx.cl, "def"); /* must never reach the protocol */
    after(30);
  }
}

static void stop_timer(void) {
  if (stop_phase == 1) {
    stop_phase = 2;
    sl_conn_resume(fx.s); /* offers "abc" again; reads no more */
    fx.write_before_close = sl_conn_read_stopped(fx.s);
    after(30);
  } else if (stop_phase == 2) {
    stop_phase = 3;
    sl_conn_close(fx.cl);
    sl_conn_close(fx.s);
  }
}

static void stop_reading_offers_buffered(enum sl_endpoint_kind kind,
                                         int *failed__) {
  stop_phase = 0;
  PLAY(kind, stop_then_offer, connect_abc_def, stop_timer);
  CHECK_EQ(stop_phase, 3);
  CHECK_EQ(fx.write_before_close, 1);
  CHECK_EQ(fx.data_cb_called, 2); /* "abc" twice, "def" never */
  CHECK_EQ(fx.ngot, 3);
  CHECK(memcmp(fx.got, "abc", 3) == 0);
  CHECK_EQ(fx.close_cb_called, 1);
}

ON_TCP_AND_UNIX(conn_stop_reading_offers_buffered_bytes_and_reads_no_more,
                stop_reading_offers_buffered)

/* ---- listener limits over each transport -------------------------------- */

static struct sl_conn *cl2;
static int cl2_close_cb_called, cl2_open_seen;
static char cl2_got[16];
static size_t cl2_ngot;

static size_t cl2_data(struct sl_conn *c, const uint8_t *d, size_t n) {
  if (cl2_ngot + n <= sizeof(cl2_got)) {
    memcpy(cl2_got + cl2_ngot, d, n);
    cl2_ngot += n;
  }
  cl2_open_seen = (int)sl_listener_open(&fx.l);
  sl_conn_close(c); /* got the refusal: leave */
  return n;
}

static void cl2_close(struct sl_conn *c) {
  cl2_close_cb_called++;
  if (fx.cl)
    sl_conn_close(fx.cl); /* the end: the kept conn closes too */
}

static const struct sl_conn_ops cl2_ops = {.cb_data = cl2_data,
                                           .cb_close = cl2_close};

static void connect_second(void) {
  cl2 = sl_conn_connect(&fx.loop, &fx.ep, &cl2_ops, NULL, NULL);
}

static void over_max_conns_gets_refusal(enum sl_endpoint_kind kind,
                                        int *failed__) {
  cl2 = NULL;
  cl2_close_cb_called = cl2_open_seen = 0;
  cl2_ngot = 0;
  opt_max_conns = 1;
  opt_refusal = "full\n";
  PLAY(kind, NULL, connect_second, NULL);
  CHECK(cl2 != NULL);
  CHECK_EQ(fx.accept_cb_called, 1);
  CHECK_EQ(sl_listener_stats(&fx.l)->accepted, 1);
  CHECK_EQ(sl_listener_stats(&fx.l)->refused_limit, 1);
  CHECK_EQ(cl2_open_seen, 1);
  CHECK_EQ(cl2_ngot, 5);
  CHECK(memcmp(cl2_got, "full\n", 5) == 0);
  CHECK_EQ(cl2_close_cb_called, 1);
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(sl_listener_open(&fx.l), 0);
}

ON_TCP_AND_UNIX(listener_over_max_conns_writes_the_refusal_and_closes,
                over_max_conns_gets_refusal)

static void idle_conn_times_out(enum sl_endpoint_kind kind, int *failed__) {
  opt_idle_ms = 50;
  PLAY(kind, NULL, NULL, NULL);
  CHECK_EQ(fx.eof_cb_called, 1);
  CHECK_EQ(fx.eof_status, UV_ETIMEDOUT);
  CHECK_EQ(sl_listener_stats(&fx.l)->timed_out, 1);
  CHECK_EQ(fx.close_cb_called, 1);
  CHECK_EQ(fx.cl_eof_cb_called, 1);
  CHECK_EQ(fx.cl_close_cb_called, 1);
}

ON_TCP_AND_UNIX(listener_idle_conn_times_out, idle_conn_times_out)

/* ---- the same cases over TLS ------------------------------------------- */

static char tls_dir[64];
static struct sl_tls *srv_tls, *cl_tls;
static const char *opt_server_name; /* the client checks this name */

/* A CA and a certificate for 127.0.0.1, made once with the openssl CLI. */
static int make_certs(void) {
  char cmd[1024];
  if (tls_dir[0])
    return 0;
  snprintf(tls_dir, sizeof(tls_dir), "/tmp/sl_test_conn_tls.%d", (int)getpid());
  snprintf(cmd, sizeof(cmd),
           "(set -e; mkdir -p %s; cd %s; k='-newkey ec -pkeyopt "
           "ec_paramgen_curve:P-256 -nodes';"
           "openssl req -x509 $k -keyout ca.key -out ca.pem -days 2 -subj /CN=ca;"
           "openssl req $k -keyout s.key -out s.csr -subj /CN=server;"
           "echo subjectAltName=IP:127.0.0.1 > s.ext;"
           "openssl x509 -req -in s.csr -CA ca.pem -CAkey ca.key -set_serial 7"
           " -days 2 -extfile s.ext -out s.pem) >/dev/null 2>&1",
           tls_dir, tls_dir);
  return system(cmd) == 0 ? 0 : -1;
}

__attribute__((destructor)) static void remove_certs(void) {
  char cmd[128];
  if (tls_dir[0]) {
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tls_dir);
    if (system(cmd) != 0)
      fprintf(stderr, "cannot remove %s\n", tls_dir);
  }
}

static char *in_dir(char *buf, size_t n, const char *file) {
  snprintf(buf, n, "%s/%s", tls_dir, file);
  return buf;
}

static int tls_setup(void) {
  struct sl_tls_config sc = {0}, cc = {0};
  char cert[128], key[128], ca[128], err[256];
  if (make_certs() != 0)
    return -1;
  sc.enabled = cc.enabled = 1;
  sc.cert_file = in_dir(cert, sizeof(cert), "s.pem");
  sc.key_file = in_dir(key, sizeof(key), "s.key");
  cc.ca_file = in_dir(ca, sizeof(ca), "ca.pem");
  cc.verify_peer = 1;
  cc.server_name = (char *)opt_server_name;
  opt_server_name = NULL;
  srv_tls = sl_tls_new(&sc, 1, fx.ep.address, "test", err, sizeof(err));
  cl_tls = sl_tls_new(&cc, 0, fx.ep.address, "test", err, sizeof(err));
  if (srv_tls == NULL || cl_tls == NULL) {
    fprintf(stderr, "  %s\n", err);
    return -1;
  }
  if (sl_endpoint_set_tls(&fx.ep, srv_tls) != 0 ||
      sl_endpoint_set_tls(&cl_ep, cl_tls) != 0)
    return -1;
  return 0;
}

/* Run case over TLS, then drop the contexts (conns are gone by then). */
#define OVER_TLS(case_)                       \
  do {                                        \
    opt_tls = 1;                              \
    case_(SL_ENDPOINT_TCP, failed__);         \
    sl_tls_free(srv_tls);                     \
    sl_tls_free(cl_tls);                      \
    srv_tls = cl_tls = NULL;                  \
  } while (0)

TEST(conn_close_inside_read_callback_is_deferred_tls) {
  OVER_TLS(close_in_read_callback_is_deferred);
}

TEST(conn_close_with_a_write_queued_cancels_it_before_cb_close_tls) {
  OVER_TLS(close_with_write_queued);
}

TEST(conn_pause_holds_bytes_until_resume_tls) {
  OVER_TLS(pause_holds_bytes_until_resume);
}

TEST(conn_write_queue_sends_in_order_and_calls_back_each_tls) {
  OVER_TLS(write_queue_in_order);
}

TEST(conn_try_write_writes_nothing_over_tls) {
  OVER_TLS(try_write_now_or_not_at_all);
}

TEST(conn_stop_reading_offers_buffered_bytes_and_reads_no_more_tls) {
  OVER_TLS(stop_reading_offers_buffered);
}

/* The client checks the server's name: a wrong one fails the connect once
 * (no plaintext reaches the server) and the conns close. */
static void tls_wrong_name_fails_connect(enum sl_endpoint_kind kind,
                                         int *failed__) {
  opt_server_name = "not-the-server.example";
  PLAY(kind, NULL, send_twice, NULL);
  CHECK_EQ(fx.connect_cb_called, 1);
  CHECK(fx.connect_status != 0);
  CHECK_EQ(fx.cl_close_cb_called, 1);
  CHECK_EQ(fx.data_cb_called, 0);
  CHECK_EQ(fx.close_cb_called, 1); /* the server side closed too */
  CHECK_EQ(fx.eof_cb_called, 1);
}

TEST(conn_tls_client_refuses_a_server_with_another_name) {
  OVER_TLS(tls_wrong_name_fails_connect);
}
