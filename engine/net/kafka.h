/* kafka.h - librdkafka on a libuv loop, shared by the kafka input and
 * output. librdkafka runs its own threads and hands results (messages,
 * delivery reports, rebalances, logs, errors) to the application through
 * queues that must be polled. The bridge asks librdkafka to write a byte
 * to a non-blocking pipe whenever one of those queues goes from empty to
 * non-empty (rd_kafka_queue_io_event_enable) and watches the pipe with a
 * uv_poll, so the loop sleeps until there is work and never blocks on
 * the client: no busy loop, no thread hand-over of our own, no timer
 * latency. The byte comes only on empty -> non-empty, so whoever polls
 * must drain the queue (or come back from an idle handle) before sleeping.
 * Logs and errors are served on the loop too (log.queue) and go to the
 * engine's log, rate-limited.
 *
 * Why this and not the alternatives: a uv_timer calling rd_kafka_poll
 * every N ms adds up to N ms to every delivery report and message and
 * wakes an idle engine 1000/N times a second; a thread of ours blocking in
 * rd_kafka_consumer_poll would need a second bounded queue and a uv_async
 * to hand over what librdkafka already queues. The pipe costs one write
 * and one read per empty -> non-empty transition (none per message while
 * the queue stays busy) and nothing while idle. */
#ifndef SL_NET_KAFKA_H
#define SL_NET_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "log.h"

struct sl_kafka_bridge {
  uv_poll_t poll;
  int fds[2];                 /* the pipe librdkafka writes to, [1] */
  rd_kafka_queue_t *q;        /* the queue with the io event */
  void (*on_ready)(struct sl_kafka_bridge *b); /* the queue has events */
  void (*on_closed)(struct sl_kafka_bridge *b);
  const char *kind;           /* "input", "output" (log field) */
  const char *name;           /* the plugin's config name */
  struct sl_log_limiter log;  /* client logs and errors */
  uint64_t errors;            /* error_cb calls (broker down, ...) */
  int down;                   /* an error was logged; not reachable since */
  int fatal;                  /* the client had a fatal error (idempotent
                                 producer): it must be created anew */
  int open;
};

/* Watch q instead of the queue b watched (its client is being replaced
 * by a new one). q must outlive the watch. */
void sl_kafka_bridge_switch(struct sl_kafka_bridge *b, rd_kafka_queue_t *q);

/* A client config: bootstrap.servers = brokers, the bridge as opaque,
 * logs and errors routed to the engine's log, the plugin's defaults
 * (key, value, ..., NULL), the tls block (may be NULL), then options
 * ("k=v,k=v", librdkafka's own properties; may be NULL) over them. NULL
 * with err filled on an unknown property or a bad value. */
rd_kafka_conf_t *sl_kafka_conf(struct sl_kafka_bridge *b, const char *brokers,
                               const char *const *defaults,
                               const struct sl_tls_config *tls,
                               const char *options, char *err, size_t errlen);

/* What sl_kafka_conf would refuse of these (an unknown property or a bad
 * value in options, a tls block librdkafka cannot take), without making a
 * client: for a plugin's config check. 0, or SL_EINVAL with err filled. */
int sl_kafka_check(const char *brokers, const struct sl_tls_config *tls,
                   const char *options, char *err, size_t errlen);

/* A tls block onto c (nothing when not enabled): security.protocol=ssl,
 * ssl.ca.location, ssl.certificate.location, ssl.key.location,
 * enable.ssl.certificate.verification and
 * ssl.endpoint.identification.algorithm (https; none when verify_peer is
 * off), ssl.cipher.suites. server_name is refused (librdkafka has no
 * override); min_version is not applied (OpenSSL's default, TLS 1.2). 0
 * or SL_EINVAL with err filled. */
int sl_kafka_conf_tls(rd_kafka_conf_t *c, const struct sl_tls_config *t,
                      char *err, size_t errlen);

/* Something went through (a delivery, a message, an assignment): after
 * errors, log once that the brokers are reachable again. */
void sl_kafka_bridge_up(struct sl_kafka_bridge *b);

/* Watch q (an rd_kafka_queue_t the caller keeps) on loop: on_ready runs
 * on the loop when it has events. 0 or a negative code. */
int sl_kafka_bridge_start(struct sl_kafka_bridge *b, uv_loop_t *loop,
                          rd_kafka_queue_t *q);
/* Stop watching; b->on_closed runs once the handle is closed (right away
 * when it never started). */
void sl_kafka_bridge_close(struct sl_kafka_bridge *b);

#endif
