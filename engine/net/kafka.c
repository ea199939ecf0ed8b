/* kafka.c - librdkafka on a libuv loop: see kafka.h for why a pipe. */
#include "kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* librdkafka's log lines, served from the polled queue (log.queue), so on
 * the loop's thread. Its syslog levels map onto ours; debug stays debug. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf) {
  struct sl_kafka_bridge *b = rd_kafka_opaque(rk);
  uint64_t suppressed = 0;
  if (b == NULL || !sl_log_allow(&b->log, &suppressed))
    return;
  sl_log(level <= 3 ? SL_LOG_ERROR : level <= 4 ? SL_LOG_WARN
                                   : level <= 6 ? SL_LOG_INFO : SL_LOG_DEBUG,
         "kafka client", SL_S(b->kind, b->name), SL_S("facility", fac),
         SL_S("detail", buf), SL_U("suppressed", suppressed), SL_END);
}

/* Client errors: brokers unreachable, authentication, ... librdkafka keeps
 * retrying by itself; we count and log (rate-limited). A fatal one (the
 * idempotent producer's sequence lost with the broker) is not retried:
 * the client is unusable and its plugin must create another. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason,
                     void *opaque) {
  struct sl_kafka_bridge *b = opaque;
  uint64_t suppressed = 0;
  (void)rk;
  b->errors++;
  b->down = 1;
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    b->fatal = 1;
    sl_log(SL_LOG_ERROR,
           strcmp(b->kind, "output") == 0
               ? "kafka client fatal error; it takes no more messages (the "
                 "output creates its producer again)"
               : "kafka client fatal error; it reads no more messages (a "
                 "consumer's fatal error comes with static membership, "
                 "group.instance.id: restart sluice once it is fixed)",
           SL_S(b->kind, b->name), SL_S("detail", reason), SL_END);
    return;
  }
  if (sl_log_allow(&b->log, &suppressed))
    sl_log(SL_LOG_WARN, "kafka broker error; the client retries",
           SL_S(b->kind, b->name),
           SL_S("error", rd_kafka_err2name((rd_kafka_resp_err_t)err)),
           SL_S("detail", reason), SL_U("suppressed", suppressed), SL_END);
}

void sl_kafka_bridge_up(struct sl_kafka_bridge *b) {
  if (!b->down)
    return;
  b->down = 0;
  sl_log(SL_LOG_INFO, "kafka brokers reachable again", SL_S(b->kind, b->name),
         SL_END);
}

static int set(rd_kafka_conf_t *c, const char *k, const char *v, char *err,
               size_t errlen) {
  char why[256];
  if (rd_kafka_conf_set(c, k, v, why, sizeof(why)) == RD_KAFKA_CONF_OK)
    return 0;
  snprintf(err, errlen, "kafka property %s: %s", k, why);
  return SL_EINVAL;
}

/* options: "k=v,k=v"; white space around keys and values is ignored. */
static int set_options(rd_kafka_conf_t *c, const char *options, char *err,
                       size_t errlen) {
  char *copy, *item, *save = NULL;
  int rc = 0;
  if (options == NULL || options[0] == '\0')
    return 0;
  if ((copy = strdup(options)) == NULL)
    return SL_ENOMEM;
  for (item = strtok_r(copy, ",", &save); item && rc == 0;
       item = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(item, '='), *k = item, *v, *end;
    if (eq == NULL) {
      snprintf(err, errlen, "options: \"%s\" is not key=value", item);
      rc = SL_EINVAL;
      break;
    }
    *eq = '\0';
    v = eq + 1;
    while (*k == ' ')
      k++;
    while (*v == ' ')
      v++;
    for (end = eq; end > k && end[-1] == ' ';)
      *--end = '\0';
    for (end = v + strlen(v); end > v && end[-1] == ' ';)
      *--end = '\0';
    rc = set(c, k, v, err, errlen);
  }
  free(copy);
  return rc;
}

int sl_kafka_conf_tls(rd_kafka_conf_t *c, const struct sl_tls_config *t,
                      char *err, size_t errlen) {
  int verify = t->verify_peer;
  if (!t->enabled)
    return 0;
  if (t->server_name) {
    /* librdkafka checks each broker's advertised name; no override */
    snprintf(err, errlen, "tls.server_name: kafka checks each broker's "
                          "advertised host name; leave it out");
    return SL_EINVAL;
  }
  if (set(c, "security.protocol", "ssl", err, errlen) != 0 ||
      (t->ca_file && set(c, "ssl.ca.location", t->ca_file, err, errlen)) ||
      (t->cert_file &&
       set(c, "ssl.certificate.location", t->cert_file, err, errlen)) ||
      (t->key_file && set(c, "ssl.key.location", t->key_file, err, errlen)) ||
      set(c, "enable.ssl.certificate.verification", verify ? "true" : "false",
          err, errlen) != 0 ||
      set(c, "ssl.endpoint.identification.algorithm", verify ? "https" : "none",
          err, errlen) != 0 ||
      (t->ciphers && set(c, "ssl.cipher.suites", t->ciphers, err, errlen)))
    return SL_EINVAL;
  return 0;
}

rd_kafka_conf_t *sl_kafka_conf(struct sl_kafka_bridge *b, const char *brokers,
                               const char *const *defaults,
                               const struct sl_tls_config *tls,
                               const char *options, char *err, size_t errlen) {
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  int i;
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  sl_log_limiter_init(&b->log, 10000, 5);
  rd_kafka_conf_set_opaque(c, b);
  rd_kafka_conf_set_log_cb(c, log_cb);
  rd_kafka_conf_set_error_cb(c, error_cb);
  if (set(c, "bootstrap.servers", brokers, err, errlen) != 0 ||
      set(c, "log.queue", "true", err, errlen) != 0 ||
      set(c, "log_level", "4", err, errlen) != 0)
    goto fail_;
  for (i = 0; defaults && defaults[i]; i += 2)
    if (set(c, defaults[i], defaults[i + 1], err, errlen) != 0)
      goto fail_;
  if (tls && sl_kafka_conf_tls(c, tls, err, errlen) != 0)
    goto fail_;
  if (set_options(c, options, err, errlen) != 0) /* the user's win */
    goto fail_;
  return c;
fail_:
  rd_kafka_conf_destroy(c);
  return NULL;
}

int sl_kafka_check(const char *brokers, const struct sl_tls_config *tls,
                   const char *options, char *err, size_t errlen) {
  struct sl_kafka_bridge b; /* the conf only keeps its address */
  rd_kafka_conf_t *c;
  memset(&b, 0, sizeof(b));
  if ((c = sl_kafka_conf(&b, brokers, NULL, tls, options, err, errlen)) == NULL)
    return SL_EINVAL;
  rd_kafka_conf_destroy(c);
  return 0;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  struct sl_kafka_bridge *b = h->data;
  char junk[256];
  (void)status;
  (void)events;
  while (read(b->fds[0], junk, sizeof(junk)) > 0)
    ; /* one byte per empty -> non-empty; the queue holds the events */
  b->on_ready(b);
}

int sl_kafka_bridge_start(struct sl_kafka_bridge *b, uv_loop_t *loop,
                          rd_kafka_queue_t *q) {
  int rc;
  if (pipe2(b->fds, O_NONBLOCK | O_CLOEXEC) != 0)
    return -errno;
  rc = uv_poll_init(loop, &b->poll, b->fds[0]);
  if (rc != 0) {
    close(b->fds[0]);
    close(b->fds[1]);
    return rc;
  }
  b->poll.data = b;
  b->open = 1;
  b->q = q;
  rd_kafka_queue_io_event_enable(q, b->fds[1], "1", 1);
  rc = uv_poll_start(&b->poll, UV_READABLE, on_readable);
  /* events queued before the pipe was set gave no byte: look now */
  return rc;
}

void sl_kafka_bridge_switch(struct sl_kafka_bridge *b, rd_kafka_queue_t *q) {
  char junk[256];
  if (b->open) {
    rd_kafka_queue_io_event_enable(b->q, -1, NULL, 0);
    while (read(b->fds[0], junk, sizeof(junk)) > 0)
      ; /* the old queue's bytes */
    rd_kafka_queue_io_event_enable(q, b->fds[1], "1", 1);
  }
  b->q = q;
  b->fatal = 0;
}

static void on_poll_closed(uv_handle_t *h) {
  struct sl_kafka_bridge *b = h->data;
  close(b->fds[0]);
  close(b->fds[1]);
  b->open = 0;
  if (b->on_closed)
    b->on_closed(b);
}

void sl_kafka_bridge_close(struct sl_kafka_bridge *b) {
  if (!b->open) {
    if (b->on_closed)
      b->on_closed(b);
    return;
  }
  rd_kafka_queue_io_event_enable(b->q, -1, NULL, 0);
  uv_close((uv_handle_t *)&b->poll, on_poll_closed);
}
