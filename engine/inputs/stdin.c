/* stdin.c - the stdin input: events read from standard input, one JSON
 * event per line (NDJSON) or msgpack event maps back to back. A pipe or a
 * terminal is read as a libuv stream (reading stops while an output
 * blocks: backpressure reaches the writer), a regular file through the
 * threadpool. A bad line is counted and logged with its line number, and
 * the next one is read; bad msgpack ends the reading (there is no line to
 * resume at). At EOF, with exit_on_eof, the run ends (exit code 0) once
 * every output delivered what it holds. Owns its handle and buffer. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "plugins.h"
#include "worker.h"

#define CHUNK 65536     /* bytes asked for per read */
#define EOF_CHECK_MS 20 /* how often, after EOF, outputs are looked at */

struct stdin_in {
  struct sl_input *in;
  struct sl_source src;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_pipe_t pipe;
    uv_tty_t tty;
  } h;
  int is_file;      /* read with uv_fs_read */
  uv_fs_t req;
  int reading;      /* stream: read started; file: a read in flight */
  int open;         /* h is open (not a file) */
  uv_timer_t eof_timer;
  struct sl_buf pend; /* bytes read and not yet consumed */
  char *chunk;        /* file reads land here */
  uint64_t line;      /* lines consumed (NDJSON) */
  uint64_t offset;    /* bytes consumed (msgpack) */
  uint64_t at;        /* where the msgpack event being handled starts */
  int msgpack;
  int exit_on_eof;
  int eof;            /* nothing more will come */
  int done;           /* eof and everything in pend handled */
  int skip_line;      /* dropping an oversized line up to its LF */
  int ended;          /* reached_end ran */
  int draining, stopping, handles;
};

static void pump(struct stdin_in *si);

static void bad(struct stdin_in *si, const char *why) {
  struct sl_input *in = si->in;
  uint64_t suppressed = 0;
  in->stats.bad_input++;
  if (!sl_log_allow(&in->w->bad_input_log, &suppressed))
    return;
  /* where: NDJSON by line, msgpack (no lines) by the event's byte offset */
  sl_log(SL_LOG_WARN, "bad input on stdin; skipped",
         SL_S("input", in->cfg->name),
         SL_U(si->msgpack ? "offset" : "line", si->msgpack ? si->at : si->line),
         SL_S("error", why), SL_U("suppressed", suppressed), SL_END);
}

/* msgpack that cannot be read at offset: nothing after it can be found, so
 * the reading ends (once per run, so not rate-limited). */
static void unreadable(struct stdin_in *si, uint64_t offset, const char *why) {
  struct sl_input *in = si->in;
  in->stats.bad_input++;
  sl_log(SL_LOG_WARN, "bad msgpack on stdin; stopped reading",
         SL_S("input", in->cfg->name), SL_U("offset", offset),
         SL_S("error", why), SL_END);
}

/* Submit the event map p[0..n). Returns sl_worker_submit's code, or 0
 * when it was bad (counted). */
static int submit(struct stdin_in *si, const uint8_t *p, size_t n) {
  struct sl_worker *w = si->in->w;
  struct sl_event_view v;
  struct sl_codec_error err;
  struct sl_event *ev;
  if (sl_codec_parse_event(p, n, &v, &err) != 0) {
    bad(si, err.msg);
    return 0;
  }
  if ((ev = sl_event_from_view(&w->idgen, &v, 1)) == NULL) {
    bad(si, "out of memory");
    return 0;
  }
  si->in->stats.events_in++;
  si->in->stats.bytes_in += n;
  return sl_worker_submit(&si->src, ev);
}

/* One NDJSON line (without its LF). */
static int one_line(struct stdin_in *si, const char *p, size_t n) {
  struct sl_buf mp;
  char err[200];
  int rc = 0;
  si->line++;
  while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
    n--;
  if (n == 0)
    return 0;
  sl_buf_init(&mp);
  if (sl_json_to_msgpack(p, n, &mp, err, sizeof(err)) != 0)
    bad(si, err);
  else
    rc = submit(si, mp.data, mp.len);
  sl_buf_close(&mp);
  return rc;
}

/* Consume what pend holds, up to the first event that must wait. Returns
 * 1 when paused (the source holds an event), 0 otherwise. */
static int consume(struct stdin_in *si) {
  uint32_t max = si->in->w->cfg->max_event_bytes;
  const uint8_t *d = si->pend.data;
  size_t pos = 0, len = si->pend.len, used;
  int rc = 0, paused = 0;
  while (pos < len && !paused && !si->done) {
    if (si->msgpack) {
      struct sl_codec_error err;
      rc = sl_codec_skip(d + pos, len - pos, max, &used, &err);
      if (rc == SL_EAGAIN && !si->eof && len - pos <= max)
        break;
      if (rc != 0) {
        unreadable(si, si->offset + pos + (rc == SL_EPROTO ? err.offset : 0),
                   rc == SL_EAGAIN ? "truncated msgpack at the end of input"
                   : rc == SL_E2BIG ? "event larger than max_event_bytes"
                                    : err.msg);
        si->done = 1; /* no way to find the next event: stop reading */
        si->in->w->exit_code = 1; /* the input was not read to its end */
        break;
      }
      si->at = si->offset + pos;
      rc = submit(si, d + pos, used);
      pos += used;
    } else {
      const uint8_t *lf = memchr(d + pos, '\n', len - pos);
      size_t end = lf ? (size_t)(lf - d) : len;
      if (si->skip_line) {
        si->skip_line = lf == NULL;
        pos = lf ? end + 1 : len;
        continue;
      }
      if (lf == NULL && !si->eof && len - pos <= max)
        break;
      if (end - pos > max) {
        si->line++;
        bad(si, "line larger than max_event_bytes");
        si->skip_line = lf == NULL;
        pos = lf ? end + 1 : len;
        continue;
      }
      rc = one_line(si, (const char *)d + pos, end - pos);
      pos = lf ? end + 1 : len;
    }
    if (rc == SL_EAGAIN)
      paused = 1;
    else if (rc == SL_EIO)
      bad(si, "refused: a disk buffer cannot write");
  }
  sl_buf_consume(&si->pend, pos);
  si->offset += pos;
  return paused;
}

/* ---- the end ------------------------------------------------------------- */

static int outputs_empty(struct sl_worker *w) {
  int i;
  for (i = 0; i < w->noutputs; i++)
    if (w->outputs[i].q.count > 0 || sl_buffer_backlog(&w->outputs[i].buf))
      return 0;
  return 1;
}

static void on_eof_timer(uv_timer_t *t) {
  struct stdin_in *si = t->data;
  struct sl_worker *w = si->in->w;
  if (si->src.held || !outputs_empty(w))
    return;
  uv_timer_stop(t);
  sl_log(SL_LOG_INFO, "stdin ended and every output delivered; stopping",
         SL_S("input", si->in->cfg->name), SL_END);
  sl_worker_stop(w);
}

static void reached_end(struct stdin_in *si) {
  si->done = si->ended = 1;
  /* msgpack has no lines: how far it was read, in bytes */
  sl_log(SL_LOG_INFO, "stdin ended", SL_S("input", si->in->cfg->name),
         SL_U(si->msgpack ? "bytes" : "lines",
              si->msgpack ? si->offset : si->line),
         SL_U("events", si->in->stats.events_in), SL_END);
  if (si->exit_on_eof && !si->draining)
    uv_timer_start(&si->eof_timer, on_eof_timer, 0, EOF_CHECK_MS);
}

/* ---- reading ------------------------------------------------------------- */

static void release(struct stdin_in *si);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  struct stdin_in *si = h->data;
  if (sl_buf_reserve(&si->pend, CHUNK) != 0) {
    *b = uv_buf_init(NULL, 0); /* read fails with UV_ENOBUFS */
    return;
  }
  *b = uv_buf_init((char *)si->pend.data + si->pend.len, CHUNK);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  struct stdin_in *si = s->data;
  if (n > 0) {
    si->pend.len += (size_t)n;
  } else if (n < 0) {
    if (n != UV_EOF)
      sl_log(SL_LOG_WARN, "stdin read failed", SL_S("input", si->in->cfg->name),
             SL_S("error", uv_strerror((int)n)), SL_END);
    uv_read_stop(s);
    si->reading = 0;
    si->eof = 1;
  }
  pump(si);
}

static void on_file_read(uv_fs_t *req) {
  struct stdin_in *si = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  si->reading = 0;
  if (si->stopping) {
    release(si);
    return;
  }
  if (n > 0) {
    if (sl_buf_append(&si->pend, si->chunk, (size_t)n) != 0) {
      bad(si, "out of memory");
      si->eof = 1;
    }
  } else {
    if (n < 0)
      sl_log(SL_LOG_WARN, "stdin read failed", SL_S("input", si->in->cfg->name),
             SL_S("error", uv_strerror((int)n)), SL_END);
    si->eof = 1;
  }
  pump(si);
}

/* Consume what is buffered, then read on, wait (paused) or end. */
static void pump(struct stdin_in *si) {
  int paused = 0, want;
  if (si->stopping)
    return;
  if (!si->done)
    paused = consume(si); /* bad msgpack sets done */
  if (!si->ended && !paused &&
      (si->done || (si->eof && si->pend.len == 0)))
    reached_end(si);
  want = !paused && !si->eof && !si->done && !si->draining;
  if (si->is_file) {
    if (want && !si->reading) {
      uv_buf_t b = uv_buf_init(si->chunk, CHUNK);
      si->req.data = si;
      if (uv_fs_read(&si->in->w->loop, &si->req, 0, &b, 1, -1,
                     on_file_read) == 0)
        si->reading = 1;
    }
    return;
  }
  if (want && !si->reading && si->open)
    si->reading = uv_read_start(&si->h.stream, on_alloc, on_read) == 0;
  else if (!want && si->reading) {
    uv_read_stop(&si->h.stream); /* backpressure: the writer waits */
    si->reading = 0;
  }
}

static void on_resume(struct sl_source *s) {
  struct stdin_in *si = container_of(s, struct stdin_in, src);
  pump(si);
}

/* workers > 1: a worker's result of a line was refused, found after its
 * submit returned: counted and logged as an inline refusal is (at the
 * line or offset read by now), and cleared so the next one is too */
static void on_refused_later(struct sl_source *s) {
  s->refused_later = 0;
  bad(container_of(s, struct stdin_in, src),
      "refused: a disk buffer cannot write");
}

/* ---- the plugin ---------------------------------------------------------- */

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  struct stdin_in *si = calloc(1, sizeof(*si));
  uv_loop_t *loop = &in->w->loop;
  const char *fmt = sl_config_value_str(in->cfg->values, in->cfg->nvalues,
                                        "format");
  uv_handle_type t = uv_guess_handle(0);
  int rc = 0;
  if (si == NULL)
    return SL_ENOMEM;
  si->in = in;
  in->data = si;
  sl_buf_init(&si->pend);
  sl_source_init(&si->src, in, on_resume);
  si->src.on_refused_later = on_refused_later;
  si->msgpack = fmt && strcmp(fmt, "msgpack") == 0;
  si->exit_on_eof = (int)sl_config_value_num(in->cfg->values,
                                             in->cfg->nvalues, "exit_on_eof");
  uv_timer_init(loop, &si->eof_timer);
  si->eof_timer.data = si;
  if (t == UV_TTY) {
    if ((rc = uv_tty_init(loop, &si->h.tty, 0, 1)) == 0)
      si->open = 1;
  } else if (t == UV_NAMED_PIPE || t == UV_TCP || t == UV_UDP) {
    if ((rc = uv_pipe_init(loop, &si->h.pipe, 0)) == 0) {
      si->open = 1; /* closed by cb_stop, also when the open failed */
      rc = uv_pipe_open(&si->h.pipe, 0);
    }
  } else if (t == UV_FILE) {
    si->is_file = 1;
    if ((si->chunk = malloc(CHUNK)) == NULL)
      rc = UV_ENOMEM;
  } else {
    rc = UV_EBADF; /* closed or unknown */
  }
  si->h.handle.data = si;
  if (rc != 0) {
    snprintf(err, errlen, "cannot read stdin: %s", uv_strerror(rc));
    return rc; /* cb_stop frees si */
  }
  pump(si);
  return 0;
}

/* One of the things a stop waits for (the timer, the stream, a file read
 * in flight) is over; the last frees the input. */
static void release(struct stdin_in *si) {
  struct sl_input *in = si->in;
  if (--si->handles > 0)
    return;
  sl_source_close(&si->src);
  sl_buf_close(&si->pend);
  free(si->chunk);
  free(si);
  in->data = NULL;
  sl_input_stopped(in);
}

static void on_closed(uv_handle_t *h) { release(h->data); }

static void cb_drain(struct sl_input *in) {
  struct stdin_in *si = in->data;
  if (si == NULL)
    return;
  si->draining = 1; /* what is buffered still goes in; nothing new is read */
  uv_timer_stop(&si->eof_timer);
  pump(si);
}

static uint32_t cb_busy(struct sl_input *in) {
  struct stdin_in *si = in->data;
  return si && si->src.held ? 1 : 0;
}

static void cb_stop(struct sl_input *in) {
  struct stdin_in *si = in->data;
  if (si == NULL) {
    sl_input_stopped(in);
    return;
  }
  si->stopping = 1;
  si->handles = 1 + si->open + (si->is_file && si->reading);
  if (si->open) {
    si->open = 0;
    uv_close(&si->h.handle, on_closed);
  }
  uv_close((uv_handle_t *)&si->eof_timer, on_closed);
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = cb_drain,
    .cb_busy = cb_busy,
    .cb_stop = cb_stop,
};

static const char *const formats[] = {"ndjson", "msgpack", NULL};

static const struct sl_config_key stdin_keys[] = {
    {.name = "format", .type = SL_KEY_STRING, .def = "ndjson",
     .doc = "one JSON event per line, or msgpack event maps back to back",
     .choices = formats},
    {.name = "exit_on_eof", .type = SL_KEY_BOOL, .def = "false",
     .doc = "at the end of stdin, stop the run (exit code 0) once every "
            "output delivered what it holds"},
    {0}};

const struct sl_plugin sl_input_stdin = {
    .config = {.kind = SL_PLUGIN_INPUT, .type = "stdin",
               .doc = "events read from standard input",
               .keys = stdin_keys},
    .input = &ops,
};
