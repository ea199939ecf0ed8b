/* exec.c - the exec output: runs a command (an argv list, no shell unless
 * the user writes one) and pipes the batches into its stdin as NDJSON or
 * msgpack. An event counts as delivered once the command has read it from
 * the pipe (the bytes we wrote minus what FIONREAD says is still in the
 * pipe), so a command that exits leaves what it did not read in the
 * queue, to go to the next one; a command killed with input in its own
 * buffers loses that. Writes are our own non-blocking write(2) calls
 * woken by a uv_poll, so every byte written is counted. A command that
 * exits is logged with its status and started again after the output's
 * backoff (cb_retry). It runs in the config's folder; its stderr goes to
 * our log, line by line, lines cut at 1 KiB, rate-limited; its stdout is
 * ours. On stop its stdin is closed and it is given stop_timeout_ms to
 * exit before SIGKILL. Owns the child, its pipes and the batch buffer. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "plugins.h"

#define CHECK_MS 2        /* how often a written batch is checked as read */
#define ERR_LINE 1024     /* a stderr line is cut here */

struct exec_out {
  struct sl_output *o;
  char *argv[65];
  int msgpack;
  uint32_t stop_ms;
  uv_process_t proc;
  uv_pipe_t err;     /* the command's stderr */
  uv_poll_t poll;    /* our end of its stdin, when a write would block */
  uv_timer_t check;  /* a written batch: has the command read it? */
  uv_timer_t kill_timer;
  int fd;            /* our end of its stdin; -1: closed */
  int running;       /* the process is alive */
  int handles;       /* of proc, err, poll still to close */
  int restart;       /* spawn once the last child's handles closed */
  int closing;
  int timers;        /* check and kill_timer not yet closed */
  int start_failed;  /* freed without sl_output_stopped */
  struct sl_buf batch;
  uint32_t *ends;    /* ends[i]: batch offset after event i */
  uint32_t nevents;  /* in the batch; 0: no write in flight */
  size_t written;
  char line[ERR_LINE];
  size_t line_len;
  struct sl_log_limiter err_log;
};

static void finish_stop(struct exec_out *e);
static void maybe_free(struct exec_out *e);
static int spawn(struct exec_out *e, char *err, size_t errlen);

/* ---- the command's stderr ------------------------------------------------ */

static void err_line(struct exec_out *e) {
  uint64_t suppressed = 0;
  if (e->line_len && sl_log_allow(&e->err_log, &suppressed))
    sl_log(SL_LOG_WARN, "exec command stderr", SL_S("output", e->o->cfg->name),
           SL_S("line", e->line), SL_U("suppressed", suppressed), SL_END);
  e->line_len = 0;
}

static void on_err_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  static char buf[4096]; /* consumed before the next read */
  *b = uv_buf_init(buf, sizeof(buf));
}

static void on_handle_closed(uv_handle_t *h) {
  struct exec_out *e = h->data;
  if (--e->handles > 0)
    return;
  if (e->closing) {
    finish_stop(e);
    maybe_free(e); /* when the timers closed first */
  } else if (e->restart) {
    char why[256];
    e->restart = 0;
    if (spawn(e, why, sizeof(why)) != 0)
      sl_output_done(e->o, 0, SL_WRITE_RETRY, why);
  }
}

static void close_handle(struct exec_out *e, uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, on_handle_closed);
}

static void on_err_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  struct exec_out *e = s->data;
  ssize_t i;
  if (n < 0) {
    e->line[e->line_len] = '\0';
    err_line(e);
    close_handle(e, (uv_handle_t *)s);
    return;
  }
  for (i = 0; i < n; i++) {
    if (b->base[i] == '\n' || e->line_len == ERR_LINE - 1) {
      e->line[e->line_len] = '\0';
      err_line(e);
      if (b->base[i] == '\n')
        continue;
    }
    e->line[e->line_len++] = b->base[i];
  }
}

/* ---- writing ------------------------------------------------------------- */

/* Bytes written that the command has not read yet. */
static size_t unread(const struct exec_out *e) {
  int n = 0;
  if (e->fd < 0 || ioctl(e->fd, FIONREAD, &n) != 0 || n < 0)
    return 0;
  return (size_t)n;
}

/* Events of the batch the command has read whole. */
static uint32_t events_read(const struct exec_out *e) {
  size_t done = e->written - unread(e);
  uint32_t n = 0;
  while (n < e->nevents && e->ends[n] <= done)
    n++;
  return n;
}

static void batch_over(struct exec_out *e, uint32_t n_ok,
                       enum sl_write_status st, const char *why) {
  e->nevents = 0;
  e->written = 0;
  sl_buf_reset(&e->batch);
  uv_timer_stop(&e->check);
  sl_output_done(e->o, n_ok, st, why);
}

static void on_check(uv_timer_t *t) {
  struct exec_out *e = t->data;
  if (e->nevents && e->written == e->batch.len && unread(e) == 0)
    batch_over(e, e->nevents, SL_WRITE_OK, NULL);
}

static void on_writable(uv_poll_t *p, int status, int events);

static void write_more(struct exec_out *e) {
  while (e->written < e->batch.len) {
    ssize_t n = write(e->fd, e->batch.data + e->written,
                      e->batch.len - e->written);
    if (n > 0) {
      e->written += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      uv_poll_start(&e->poll, UV_WRITABLE, on_writable);
      return; /* the command is slow: the queue holds the rest */
    }
    /* EPIPE: it closed its stdin; its exit (on_child_exit) settles the batch */
    uv_poll_stop(&e->poll);
    if (e->running)
      uv_process_kill(&e->proc, SIGTERM);
    return;
  }
  uv_poll_stop(&e->poll);
  on_check(&e->check);
  if (e->nevents)
    uv_timer_start(&e->check, on_check, CHECK_MS, CHECK_MS);
}

static void on_writable(uv_poll_t *p, int status, int events) {
  struct exec_out *e = p->data;
  if (e->nevents)
    write_more(e);
  else
    uv_poll_stop(p);
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct exec_out *e = o->data;
  uint32_t i;
  int rc = 0;
  uint32_t *ends = realloc(e->ends, (b->n ? b->n : 1) * sizeof(*ends));
  if (ends == NULL) {
    sl_output_done(o, 0, SL_WRITE_RETRY, "out of memory");
    return;
  }
  e->ends = ends;
  sl_buf_reset(&e->batch);
  e->written = 0;
  for (i = 0; i < b->n && rc == 0; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    size_t mark = e->batch.len;
    if (e->msgpack) {
      rc = sl_buf_append(&e->batch, ev->data, ev->len);
    } else if ((rc = sl_codec_to_json(ev->data, ev->len, &e->batch)) == 0) {
      rc = sl_buf_putc(&e->batch, '\n');
    }
    if (rc != 0) {
      e->batch.len = mark; /* the batch ends before it */
      break;
    }
    e->ends[i] = (uint32_t)e->batch.len;
  }
  if (i == 0) {
    sl_output_done(o, 0, SL_WRITE_RETRY,
                   rc == SL_ENOMEM ? "out of memory" : "cannot render");
    return;
  }
  e->nevents = i;
  if (e->fd < 0) {
    batch_over(e, 0, SL_WRITE_RETRY, "the command is not running");
    return;
  }
  write_more(e);
}

/* ---- the child ----------------------------------------------------------- */

static void close_stdin(struct exec_out *e) {
  if (e->fd >= 0) {
    uv_poll_stop(&e->poll);
    close_handle(e, (uv_handle_t *)&e->poll);
    close(e->fd);
    e->fd = -1;
  }
}

static void on_child_exit(uv_process_t *p, int64_t status, int signo) {
  struct exec_out *e = p->data;
  char why[160];
  uint32_t n_ok = 0;
  e->running = 0;
  uv_timer_stop(&e->kill_timer);
  if (signo)
    snprintf(why, sizeof(why), "command killed by signal %d", signo);
  else
    snprintf(why, sizeof(why), "command exited with status %lld",
             (long long)status);
  if (e->nevents)
    n_ok = events_read(e); /* what it read stays delivered */
  close_stdin(e);
  close_handle(e, (uv_handle_t *)&e->proc);
  if (e->closing) {
    /* a process it left behind may hold its stderr open: we stop here */
    close_handle(e, (uv_handle_t *)&e->err);
    sl_log(SL_LOG_INFO, "exec command ended", SL_S("output", e->o->cfg->name),
           SL_S("status", why), SL_END);
    if (e->nevents)
      batch_over(e, n_ok, SL_WRITE_OK, NULL);
    return;
  }
  sl_log(SL_LOG_WARN, "exec command ended; restarting it with backoff",
         SL_S("output", e->o->cfg->name), SL_S("command", e->argv[0]),
         SL_I("exit_status", status), SL_I("signal", signo),
         SL_U("events_read", n_ok), SL_END);
  /* the rest of the batch goes again, to the next command; the core
   * calls cb_retry after its backoff */
  if (e->nevents)
    batch_over(e, n_ok, SL_WRITE_RETRY, why);
  else
    sl_output_done(e->o, 0, SL_WRITE_RETRY, why);
}

/* Start the command with a fresh stdin pipe. 0, or a UV_E* code with err
 * filled (nothing left open). */
static int spawn(struct exec_out *e, char *err, size_t errlen) {
  uv_loop_t *loop = &e->o->w->loop;
  uv_process_options_t opt;
  uv_stdio_container_t stdio[3];
  int fds[2], rc;

  if (pipe2(fds, O_CLOEXEC) != 0) {
    rc = -errno;
    snprintf(err, errlen, "cannot make a pipe: %s", uv_strerror(rc));
    return rc;
  }
  uv_pipe_init(loop, &e->err, 0);
  e->err.data = e;
  memset(&opt, 0, sizeof(opt));
  opt.file = e->argv[0];
  opt.args = e->argv;
  opt.exit_cb = on_child_exit;
  opt.cwd = e->o->w->cfg->dir; /* relative paths as in the config */
  opt.stdio_count = 3;
  opt.stdio = stdio;
  stdio[0].flags = UV_INHERIT_FD;
  stdio[0].data.fd = fds[0];
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&e->err;
  e->proc.data = e;
  rc = uv_spawn(loop, &e->proc, &opt);
  close(fds[0]);
  e->handles = 1; /* err */
  if (rc != 0) {
    close(fds[1]);
    snprintf(err, errlen, "cannot run %s: %s", e->argv[0], uv_strerror(rc));
    e->handles += 1; /* a failed spawn still closes the handle */
    uv_close((uv_handle_t *)&e->proc, on_handle_closed);
    uv_close((uv_handle_t *)&e->err, on_handle_closed);
    return rc;
  }
  e->handles = 3; /* proc, err, poll */
  e->running = 1;
  e->fd = fds[1];
  fcntl(e->fd, F_SETFL, fcntl(e->fd, F_GETFL) | O_NONBLOCK);
  uv_poll_init(loop, &e->poll, e->fd);
  e->poll.data = e;
  uv_read_start((uv_stream_t *)&e->err, on_err_alloc, on_err_read);
  sl_log(SL_LOG_INFO, "exec command started", SL_S("output", e->o->cfg->name),
         SL_S("command", e->argv[0]), SL_I("pid", e->proc.pid), SL_END);
  sl_output_kick(e->o);
  return 0;
}

static void cb_retry(struct sl_output *o) {
  struct exec_out *e = o->data;
  char why[256];
  if (e == NULL || e->closing || e->running || e->restart)
    return;
  if (e->handles > 0) {
    /* the last child's handles are still closing; its stderr may be held
     * open by a process it left behind: we stop listening */
    e->restart = 1;
    close_handle(e, (uv_handle_t *)&e->err);
    return;
  }
  if (spawn(e, why, sizeof(why)) != 0)
    sl_output_done(o, 0, SL_WRITE_RETRY, why);
}

static int cb_healthy(struct sl_output *o) {
  struct exec_out *e = o->data;
  return e && e->running && e->fd >= 0;
}

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  struct exec_out *e = calloc(1, sizeof(*e));
  const char *cmd = sl_config_value_str(o->cfg->values, o->cfg->nvalues,
                                        "command");
  const char *fmt = o->cfg->format;
  int n = 0, rc;
  if (e == NULL)
    return SL_ENOMEM;
  for (; cmd && *cmd && n < 64; cmd += strlen(cmd) + 1)
    e->argv[n++] = (char *)cmd; /* the config outlives the output */
  e->o = o;
  e->fd = -1;
  e->msgpack = fmt && strcmp(fmt, "msgpack") == 0;
  e->stop_ms = (uint32_t)sl_config_value_num(o->cfg->values, o->cfg->nvalues,
                                             "stop_timeout_ms");
  sl_buf_init(&e->batch);
  sl_log_limiter_init(&e->err_log, 10000, 20);
  uv_timer_init(&o->w->loop, &e->check);
  uv_timer_init(&o->w->loop, &e->kill_timer);
  e->timers = 2;
  e->check.data = e->kill_timer.data = e;
  o->data = e;
  rc = spawn(e, err, errlen);
  if (rc != 0) {
    /* the core never stops an output that did not start: e goes once its
     * handles closed */
    e->closing = e->start_failed = 1;
    o->data = NULL;
    finish_stop(e);
  }
  return rc;
}

/* Free e once its child's handles and its timers are all closed. */
static void maybe_free(struct exec_out *e) {
  struct sl_output *o = e->o;
  int started = !e->start_failed;
  if (e->handles > 0 || e->timers > 0)
    return;
  sl_buf_close(&e->batch);
  free(e->ends);
  free(e);
  if (started) {
    o->data = NULL;
    sl_output_stopped(o);
  }
}

static void on_timer_closed(uv_handle_t *h) {
  struct exec_out *e = h->data;
  e->timers--;
  maybe_free(e);
}

/* Stopping: close the timers; e is freed once they and the child's
 * handles are closed. */
static void finish_stop(struct exec_out *e) {
  if (!uv_is_closing((uv_handle_t *)&e->check)) {
    uv_close((uv_handle_t *)&e->check, on_timer_closed);
    uv_close((uv_handle_t *)&e->kill_timer, on_timer_closed);
  }
}

static void on_kill_timer(uv_timer_t *t) {
  struct exec_out *e = t->data;
  if (!e->running)
    return;
  sl_log(SL_LOG_WARN, "exec command did not exit within stop_timeout_ms; "
         "killing it", SL_S("output", e->o->cfg->name),
         SL_U("stop_timeout_ms", e->stop_ms), SL_END);
  uv_process_kill(&e->proc, SIGKILL);
}

static void cb_stop(struct sl_output *o) {
  struct exec_out *e = o->data;
  if (e == NULL) {
    sl_output_stopped(o);
    return;
  }
  e->closing = 1;
  if (e->nevents) /* the core counts only what is delivered now */
    batch_over(e, events_read(e), SL_WRITE_OK, NULL);
  close_stdin(e); /* EOF: the command ends on its own */
  if (e->running)
    uv_timer_start(&e->kill_timer, on_kill_timer, e->stop_ms, 0);
  if (e->handles == 0)
    finish_stop(e); /* else once the child's handles closed */
}

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_retry = cb_retry,
    .cb_stop = cb_stop,
    .cb_healthy = cb_healthy,
};

static const char *const formats[] = {"ndjson", "msgpack", NULL};

static const struct sl_config_key exec_keys[] = {
    {.name = "command", .type = SL_KEY_ARGV,
     .doc = "the program and its arguments, e.g. {\"sh\", \"-c\", \"cat >> "
            "f\"}; no shell unless you name one",
     .flags = SL_KEY_REQUIRED},
    {.name = "format", .type = SL_KEY_STRING, .def = "ndjson",
     .doc = "what its stdin gets: one event per line as JSON, or msgpack "
            "events back to back",
     .choices = formats, SL_KEY_FIELD(struct sl_output_config, format)},
    {.name = "stop_timeout_ms", .type = SL_KEY_UINT, .def = "5000",
     .doc = "at shutdown, after its stdin is closed, wait this long for the "
            "command to exit before SIGKILL", .min = 0, .max = 600000},
    {0}};

const struct sl_plugin sl_output_exec = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "exec",
               .doc = "pipes events into a command's stdin",
               .keys = exec_keys},
    .output = &ops,
};
