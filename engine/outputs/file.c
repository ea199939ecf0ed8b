/* file.c - the file and stdout outputs: both append formatted batches
 * (NDJSON or raw msgpack) to a descriptor through libuv's threadpool, so a
 * slow disk or a blocked terminal never stalls the loop. A batch leaves the
 * queue only once all its bytes are written. The file output reopens its
 * path on SIGUSR1 for log rotation. Reports each write to the core
 * (sl_output_done), which owns batching, retries with backoff, the circuit
 * breaker and the dead letter. Owns its descriptor and batch buffer. */
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plugins.h"

struct file_out {
  struct sl_output *o;
  uv_fs_t req;
  struct sl_buf batch;
  size_t written;    /* bytes of batch already written */
  uint32_t nevents;  /* events in the batch; 0: none being written */
  int fd;
  int is_stdout;
  int msgpack;
  int busy;          /* a write, sync or reopen is in flight */
  int reopen;        /* SIGUSR1 came: reopen after this write */
  int reopen_failed; /* the last reopen failed (no fds, ...): the file
                        still open is written, and the reopen is tried
                        again before each batch until it works */
  int failing;
  int closing;
  int fsync;         /* fdatasync each batch before it counts as delivered */
};

static void write_more(struct file_out *f);
static void batch_done(struct file_out *f);
static void finish_stop(struct file_out *f);

/* mkdir -p for the folder of path. */
static int make_parent(const char *path) {
  char buf[PATH_MAX], *p;
  snprintf(buf, sizeof(buf), "%s", path);
  p = dirname(buf);
  if (strcmp(p, ".") == 0 || strcmp(p, "/") == 0)
    return 0;
  {
    char *s;
    for (s = p + 1; *s; s++) {
      if (*s == '/') {
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
          return -errno;
        *s = '/';
      }
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
      return -errno;
  }
  return 0;
}

static int open_path(const char *path) {
  int fd;
  make_parent(path);
  fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  return fd < 0 ? -errno : fd;
}

/* How far back a torn tail is looked for: the longest line we write is
 * an event at the largest max_event_bytes, escaped (a few times larger). */
#define TORN_SCAN_MAX ((off_t)256 << 20)

/* A crash (kill -9, power loss) in the middle of a write can leave the
 * file's last line cut short, and the next line written would glue onto
 * it. Its events were never delivered (the write did not finish, so no
 * producer was told), so an NDJSON tail that is one of our records
 * ("{...") is cut back to the last newline; any other unterminated tail
 * is not ours to delete and gets its newline instead. Logged either way.
 * Only at engine start: an output a reload starts may share the path with
 * one still writing. */
static void mend_torn_tail(struct sl_output *o, int fd) {
  struct stat st;
  char buf[4096], first = 0;
  off_t pos, cut = -1;
  int rfd;

  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
    return;
  rfd = open(o->cfg->path, O_RDONLY | O_CLOEXEC);
  if (rfd < 0)
    return;
  for (pos = st.st_size; pos > 0 && cut < 0 && st.st_size - pos < TORN_SCAN_MAX;) {
    size_t n = pos >= (off_t)sizeof(buf) ? sizeof(buf) : (size_t)pos;
    ssize_t r = pread(rfd, buf, n, pos - (off_t)n), i;
    if (r != (ssize_t)n)
      break;
    if (pos == st.st_size && buf[n - 1] == '\n')
      break; /* whole: nothing torn */
    for (i = r - 1; i >= 0; i--)
      if (buf[i] == '\n') {
        cut = pos - (off_t)n + i + 1;
        break;
      }
    pos -= (off_t)n;
    if (cut < 0 && pos == 0)
      cut = 0;
  }
  if (cut >= 0 && cut < st.st_size &&
      pread(rfd, &first, 1, cut) == 1 && first == '{' &&
      ftruncate(fd, cut) == 0) {
    sl_log(SL_LOG_WARN, "output file ended in a torn line (a crash during "
           "a write); cut it: its events were never delivered and come again",
           SL_S("output", o->cfg->name), SL_S("path", o->cfg->path),
           SL_I("bytes", (int64_t)(st.st_size - cut)), SL_END);
  } else if (cut >= 0 && cut < st.st_size) {
    ssize_t w = write(fd, "\n", 1);
    sl_log(SL_LOG_WARN, "output file did not end in a newline; added one so "
           "records do not glue onto its last line",
           SL_S("output", o->cfg->name), SL_S("path", o->cfg->path),
           SL_S("result", w == 1 ? "ok" : "failed"), SL_END);
  }
  close(rfd);
}

static int start(struct sl_output *o, int is_stdout, char *err,
                 size_t errlen) {
  struct file_out *f = calloc(1, sizeof(*f));
  const char *fmt = o->cfg->format;

  if (f == NULL)
    return SL_ENOMEM;
  f->o = o;
  f->is_stdout = is_stdout;
  f->msgpack = fmt && strcmp(fmt, "msgpack") == 0;
  f->fsync = !is_stdout && o->cfg->fsync;
  sl_buf_init(&f->batch);
  if (is_stdout) {
    f->fd = 1;
  } else {
    f->fd = open_path(o->cfg->path);
    if (f->fd < 0) {
      snprintf(err, errlen, "cannot open %s: %s", o->cfg->path,
               strerror(-f->fd));
      free(f);
      return SL_EIO;
    }
    if (!f->msgpack && o->w->rules == NULL) /* engine start, see above */
      mend_torn_tail(o, f->fd);
  }
  o->data = f;
  return 0;
}

static int cb_start_file(struct sl_output *o, char *err, size_t errlen) {
  return start(o, 0, err, errlen);
}

static int cb_start_stdout(struct sl_output *o, char *err, size_t errlen) {
  return start(o, 1, err, errlen);
}

/* A write failed with error: the core retries after its backoff. A batch
 * partly written must be finished (or the file would hold half a line):
 * it is kept and written again as it is (SL_WRITE_AGAIN); one not begun
 * is dropped here and the core hands out the events again, or gives them
 * to the dead letter once they used up their retries. */
static void failed(struct file_out *f, int error) {
  struct sl_output *o = f->o;
  enum sl_write_status st = f->written ? SL_WRITE_AGAIN : SL_WRITE_RETRY;
  if (!f->failing)
    sl_log(SL_LOG_ERROR, "output write failed; retrying",
           SL_S("output", o->cfg->name), SL_S("error", uv_strerror(error)),
           SL_END);
  f->failing = 1;
  if (st == SL_WRITE_RETRY) {
    f->nevents = 0;
    sl_buf_reset(&f->batch);
  }
  sl_output_done(o, 0, st, uv_strerror(error));
}

static void on_reopened(uv_fs_t *req) {
  struct file_out *f = req->data;
  int fd = (int)req->result;
  uv_fs_req_cleanup(req);
  f->busy = 0;
  if (f->closing) {
    if (fd >= 0)
      close(fd);
    finish_stop(f);
    return;
  }
  if (fd < 0) {
    if (!f->reopen_failed)
      sl_log(SL_LOG_ERROR, "cannot reopen output file; writing to the file "
                           "still open, trying again before each batch",
             SL_S("output", f->o->cfg->name), SL_S("path", f->o->cfg->path),
             SL_S("error", uv_strerror(fd)), SL_END);
    f->reopen_failed = 1; /* the rotated file must not take events for good */
  } else {
    close(f->fd);
    f->fd = fd;
    f->reopen_failed = 0;
    sl_log(SL_LOG_INFO, "output file reopened", SL_S("output", f->o->cfg->name),
           SL_S("path", f->o->cfg->path), SL_END);
  }
  if (f->nevents)
    write_more(f); /* a batch came during the reopen */
  else
    sl_output_kick(f->o);
}

static void reopen_now(struct file_out *f) {
  f->reopen = 0;
  f->busy = 1;
  f->req.data = f;
  make_parent(f->o->cfg->path);
  if (uv_fs_open(&f->o->w->loop, &f->req, f->o->cfg->path,
                 O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644,
                 on_reopened) != 0)
    f->busy = 0;
}

static void on_synced(uv_fs_t *req);

static void on_written(uv_fs_t *req) {
  struct file_out *f = req->data;
  struct sl_output *o = f->o;
  ssize_t n = req->result;

  uv_fs_req_cleanup(req);
  f->busy = 0;
  if (f->closing) {
    /* the core only counts what is delivered while stopping */
    sl_output_done(o, n > 0 && f->written + (size_t)n >= f->batch.len
                          ? f->nevents : 0, SL_WRITE_OK, NULL);
    finish_stop(f);
    return;
  }
  if (n < 0) {
    failed(f, (int)n);
    return;
  }
  if (f->failing)
    sl_log(SL_LOG_INFO, "output writes again", SL_S("output", o->cfg->name),
           SL_END);
  f->failing = 0;
  f->written += (size_t)n;
  if (f->written < f->batch.len) {
    write_more(f);
    return;
  }
  if (f->fsync) {
    /* durable before delivered: the queue (or disk buffer) keeps the
     * batch until the data is on disk */
    f->busy = 1;
    f->req.data = f;
    if (uv_fs_fdatasync(&o->w->loop, &f->req, f->fd, on_synced) != 0) {
      f->busy = 0;
      f->written = 0;
      failed(f, UV_EIO);
    }
    return;
  }
  batch_done(f);
}

static void on_synced(uv_fs_t *req) {
  struct file_out *f = req->data;
  ssize_t rc = req->result;
  uv_fs_req_cleanup(req);
  f->busy = 0;
  if (f->closing) {
    sl_output_done(f->o, rc == 0 ? f->nevents : 0, SL_WRITE_OK, NULL);
    finish_stop(f);
    return;
  }
  if (rc < 0) {
    /* the bytes were written but may not be on disk: write them again
     * (a duplicate after a crash beats a loss) */
    f->written = 0;
    failed(f, (int)rc);
    return;
  }
  batch_done(f);
}

/* The whole batch is written (and synced when asked): it is delivered. */
static void batch_done(struct file_out *f) {
  uint32_t n = f->nevents;
  f->nevents = 0;
  f->written = 0;
  sl_buf_reset(&f->batch);
  sl_output_done(f->o, n, SL_WRITE_OK, NULL); /* the next batch comes later */
  if (f->reopen && !f->is_stdout && !f->busy)
    reopen_now(f);
}

static void write_more(struct file_out *f) {
  uv_buf_t b;
  int rc;

  if (f->busy)
    return;
  b = uv_buf_init((char *)f->batch.data + f->written,
                  (unsigned)(f->batch.len - f->written));
  f->req.data = f;
  f->busy = 1;
  rc = uv_fs_write(&f->o->w->loop, &f->req, f->fd, &b, 1, -1, on_written);
  if (rc != 0) {
    f->busy = 0;
    failed(f, rc);
  }
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  struct file_out *f = o->data;
  uint32_t i;
  int rc = 0;

  if (b->again && f->nevents == b->n) {
    write_more(f); /* finish the batch begun before the failure */
    return;
  }
  sl_buf_reset(&f->batch);
  f->written = 0;
  for (i = 0; i < b->n; i++) {
    struct sl_event *ev = sl_queue_at(&o->q, b->first + i);
    size_t mark = f->batch.len;
    if (f->msgpack) {
      rc = sl_buf_append(&f->batch, ev->data, ev->len);
    } else {
      rc = sl_codec_to_json(ev->data, ev->len, &f->batch);
      if (rc == 0)
        rc = sl_buf_putc(&f->batch, '\n');
    }
    if (rc != 0) {
      /* an event missing from the batch must not count as delivered: the
       * batch ends before it (the core offers it again later) */
      f->batch.len = mark;
      break;
    }
  }
  if (i == 0) {
    failed(f, rc == SL_ENOMEM ? UV_ENOMEM : UV_EINVAL);
    return;
  }
  f->nevents = i;
  if (f->busy)
    return; /* a reopen runs: it writes the batch when done */
  if (f->reopen_failed)
    reopen_now(f); /* and on_reopened writes the batch, here or there */
  else
    write_more(f);
}

static void finish_stop(struct file_out *f) {
  struct sl_output *o = f->o;
  if (!f->is_stdout && f->fd >= 0)
    close(f->fd);
  sl_buf_close(&f->batch);
  free(f);
  o->data = NULL;
  sl_output_stopped(o);
}

static void cb_stop(struct sl_output *o) {
  struct file_out *f = o->data;
  if (f == NULL) {
    sl_output_stopped(o);
    return;
  }
  f->closing = 1;
  if (f->busy) {
    /* a threadpool write cannot be taken back once running: its callback
     * finishes the stop */
    uv_cancel((uv_req_t *)&f->req);
    return;
  }
  finish_stop(f);
}

static void cb_reopen(struct sl_output *o) {
  struct file_out *f = o->data;
  if (f == NULL || f->is_stdout)
    return;
  if (f->busy || f->nevents)
    f->reopen = 1; /* after the write in flight */
  else
    reopen_now(f);
}

static int cb_healthy(struct sl_output *o) {
  struct file_out *f = o->data;
  return f && !f->failing;
}

static const struct sl_output_ops file_ops = {
    .cb_start = cb_start_file,
    .cb_write = cb_write,
    .cb_stop = cb_stop,
    .cb_reopen = cb_reopen,
    .cb_healthy = cb_healthy,
};

static const struct sl_output_ops stdout_ops = {
    .cb_start = cb_start_stdout,
    .cb_write = cb_write,
    .cb_stop = cb_stop,
    .cb_healthy = cb_healthy,
};

static const char *const formats[] = {"ndjson", "msgpack", NULL};
static const char *const fsyncs[] = {"always", "never", NULL};
static const int fsync_values[] = {1, 0};

#define FORMAT                                                              \
  {.name = "format", .type = SL_KEY_STRING, .def = "ndjson",                \
   .doc = "one event per line as JSON, or msgpack events back to back",    \
   .choices = formats, SL_KEY_FIELD(struct sl_output_config, format)}

static const struct sl_config_key file_keys[] = {
    {.name = "path", .type = SL_KEY_FILE,
     .doc = "the file appended to (reopened on SIGUSR1)",
     .flags = SL_KEY_REQUIRED | SL_KEY_TOLERATED,
     SL_KEY_FIELD(struct sl_output_config, path)},
    FORMAT,
    {.name = "fsync", .type = SL_KEY_ENUM, .def = "never",
     .doc = "\"always\": fdatasync each batch before it counts as delivered",
     .choices = fsyncs, .values = fsync_values,
     SL_KEY_FIELD(struct sl_output_config, fsync)},
    {0}};

static const struct sl_config_key stdout_keys[] = {FORMAT, {0}};

const struct sl_plugin sl_output_file = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "file",
               .doc = "appends events to a file",
               .keys = file_keys},
    .output = &file_ops,
};

const struct sl_plugin sl_output_stdout = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "stdout",
               .doc = "writes events to standard output",
               .keys = stdout_keys},
    .output = &stdout_ops,
};
