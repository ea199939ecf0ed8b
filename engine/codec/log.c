/* log.c - JSON line logging on stderr; see log.h. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "codec.h"

static enum sl_log_level level_min = SL_LOG_INFO; /* set before threads */
static int log_fd = 2;
/* One write(2) is whole only up to PIPE_BUF on a pipe (2 KiB chunks on a
 * tty), and a signal may cut it short: with rule sets on several threads
 * a long line (a traceback) could interleave with another thread's. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = {"debug", "info", "warn", "error"};

void sl_log_set_level(enum sl_log_level level) { level_min = level; }
enum sl_log_level sl_log_get_level(void) { return level_min; }
void sl_log_set_fd(int fd) { log_fd = fd; }

static _Thread_local const char *thread_key;
static _Thread_local long long thread_value;

void sl_log_thread_field(const char *key, long long value) {
  thread_key = key;
  thread_value = value;
}

int sl_log_level_parse(const char *name) {
  int i;
  for (i = 0; i < 4; i++)
    if (strcmp(name, level_names[i]) == 0)
      return i;
  return -1;
}

void sl_log(enum sl_log_level level, const char *msg, ...) {
  char stamp[40], lost[160];
  struct sl_buf b;
  const uint8_t *out;
  size_t len;
  struct timespec ts;
  struct tm tm;
  va_list ap;
  int type, bad = 0; /* an append failed: the line is not whole */

  if (level < level_min)
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  sl_buf_init(&b);
  bad |= sl_buf_printf(&b, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":",
                       stamp, ts.tv_nsec / 1000000, level_names[level]);
  bad |= sl_codec_json_str(&b, msg, strlen(msg));
  va_start(ap, msg);
  while ((type = va_arg(ap, int)) != 0) {
    const char *k = va_arg(ap, const char *);
    bad |= sl_buf_putc(&b, ',');
    bad |= sl_codec_json_str(&b, k, strlen(k));
    bad |= sl_buf_putc(&b, ':');
    switch (type) {
    case 's': {
      const char *v = va_arg(ap, const char *);
      if (v)
        bad |= sl_codec_json_str(&b, v, strlen(v));
      else
        bad |= sl_buf_append(&b, "null", 4);
      break;
    }
    case 'n': {
      const char *v = va_arg(ap, const char *);
      int n = va_arg(ap, int);
      bad |= sl_codec_json_str(&b, v, (size_t)n);
      break;
    }
    case 'j': {
      const char *v = va_arg(ap, const char *);
      bad |= sl_buf_append(&b, v, strlen(v));
      break;
    }
    case 'i':
      bad |= sl_buf_printf(&b, "%lld", va_arg(ap, long long));
      break;
    case 'u':
      bad |= sl_buf_printf(&b, "%llu", va_arg(ap, unsigned long long));
      break;
    case 'd':
      bad |= sl_buf_printf(&b, "%.6g", va_arg(ap, double));
      break;
    default:
      bad |= sl_buf_append(&b, "null", 4);
      break;
    }
  }
  va_end(ap);
  if (thread_key) {
    bad |= sl_buf_putc(&b, ',');
    bad |= sl_codec_json_str(&b, thread_key, strlen(thread_key));
    bad |= sl_buf_printf(&b, ":%lld", thread_value);
  }
  bad |= sl_buf_append(&b, "}\n", 2);
  out = b.data;
  len = b.len;
  if (bad) {
    /* a failed append left a value out ("traceback":,): readers of the
     * log take each line as JSON, so say what was lost in a line that
     * needs no allocation instead */
    len = (size_t)snprintf(lost, sizeof(lost),
                           "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":"
                           "\"log line lost: not enough memory\"}\n",
                           stamp, ts.tv_nsec / 1000000, level_names[level]);
    out = (const uint8_t *)lost;
  }
  if (out) {
    size_t off = 0;
    pthread_mutex_lock(&log_lock);
    while (off < len) {
      ssize_t rc = write(log_fd, out + off, len - off);
      if (rc < 0 && errno == EINTR)
        continue;
      if (rc <= 0)
        break; /* nowhere to report a failed log write */
      off += (size_t)rc;
    }
    pthread_mutex_unlock(&log_lock);
  }
  sl_buf_close(&b);
}

void sl_log_limiter_init(struct sl_log_limiter *l, uint32_t window_ms,
                         uint32_t burst) {
  memset(l, 0, sizeof(*l));
  l->window_ms = window_ms;
  l->burst = burst;
}

int sl_log_allow(struct sl_log_limiter *l, uint64_t *suppressed) {
  uint64_t now = sl_mono_ns();
  if (now - l->window_start_ns >= (uint64_t)l->window_ms * 1000000u) {
    l->window_start_ns = now;
    l->in_window = 0;
  }
  if (l->in_window >= l->burst) {
    l->suppressed++;
    return 0;
  }
  l->in_window++;
  *suppressed = l->suppressed;
  l->suppressed = 0;
  return 1;
}
