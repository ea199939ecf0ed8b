/* nats.h - what the nats input and output share: one libnats connection
 * made the same way (servers, client name, timeouts, endless reconnects,
 * the tls block) and its connection callbacks. libnats calls those on its
 * own threads, even after the owner stopped: they only count and wake the
 * owner's loop through its uv_async, and touch nothing once it is dead.
 * The closed callback is the last one libnats makes: until it ran, a
 * struct that ever connected must stay allocated. The owner embeds a
 * struct sl_nats and shares its mutex and condition for its own hand-off. */
#ifndef SL_NET_NATS_H
#define SL_NET_NATS_H

#include <nats/nats.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "log.h"
#include "metric.h"

struct sl_nats {
  uv_mutex_t mu;       /* dead, closed_seen and whatever the owner adds */
  uv_cond_t cond;      /* broadcast when the closed callback ran */
  uv_async_t *async;   /* the owner's, sent on each connection event */
  int dead;            /* under mu: stopped, callbacks wake nobody */
  int closed_seen;     /* under mu: the closed callback ran, none follow */
  _Atomic int a_connected;
  _Atomic uint64_t a_reconnects;
  /* the loop's */
  int was_connected;   /* the state last logged */
  uint64_t reconnects; /* sluice_nats_reconnects_total */
  struct sl_log_limiter log; /* connection logs: 5 per 10 s */
  uint32_t write_timeout_ms; /* set by the owner before connecting */
};

/* Set up n (mutex, condition, log limiter) for an owner whose loop is
 * woken through async (initialised by the owner). */
void sl_nats_init(struct sl_nats *n, uv_async_t *async);

/* Register sluice_nats_reconnects_total{name} for n under owner (removed
 * with sl_metric_remove(r, owner)). 0 with r NULL; else as
 * sl_metric_add_u64. */
int sl_nats_add_metrics(struct sl_nats *n, struct sl_metric_registry *r,
                        const char *name, void *owner);

/* Blocking, off the loop: connect to url (comma-separated servers) as
 * client name, with tls (nothing when not enabled), a 1 s connect
 * timeout, n->write_timeout_ms as libnats' write deadline and endless
 * reconnects 250 ms apart, the callbacks bound to n.
 * NATS_OK with *nc set; else libnats' status (nats_GetLastError says
 * more) and *nc untouched. Does not set a_connected. */
natsStatus sl_nats_connect(struct sl_nats *n, const char *url,
                           const char *name, const struct sl_tls_config *tls,
                           natsConnection **nc);

/* On the loop, after a wake-up: update reconnects and, when the state
 * changed since the last call, log it (rate-limited) as "nats connected",
 * "nats reconnected" or "nats disconnected; libnats reconnects" with
 * kind = name and url. 1 when it just came up, else 0. */
int sl_nats_changed(struct sl_nats *n, const char *kind, const char *name,
                    const char *url);

/* Blocking, off the loop: flush for up to flush_ms, close nc and wait (up
 * to 2 s) for its closed callback. nc NULL: nothing. nc stays the
 * caller's to destroy. */
void sl_nats_close(struct sl_nats *n, natsConnection *nc, int64_t flush_ms);

/* 1 when the header name k (n bytes, any case) is one the input sets
 * itself: nats-subject, nats-stream, nats-seq, nats-delivered (a NATS
 * header of that name is dropped, and the output does not publish them). */
int sl_nats_header_is_meta(const char *k, size_t n);

/* The owner stops: n is dead (its callbacks wake nobody). When libnats
 * can call no more (never connected, or the closed callback ran) the
 * mutex and condition are destroyed and 1 says the owner may free the
 * struct holding n; 0: it must stay (libnats may still call). */
int sl_nats_release(struct sl_nats *n, int ever_connected);

#endif
