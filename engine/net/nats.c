/* nats.c - one libnats connection for the nats input and output: see
 * nats.h. */
#include "nats.h"

#include <string.h>
#include <strings.h>

#include "common.h"

static const struct sl_metric m_reconnects = {
    "sluice_nats_reconnects_total", "Reconnects of a nats input's or "
    "output's connection.", SL_METRIC_COUNTER, {"name", NULL}};

void sl_nats_init(struct sl_nats *n, uv_async_t *async) {
  uv_mutex_init(&n->mu);
  uv_cond_init(&n->cond);
  n->async = async;
  n->write_timeout_ms = 500; /* the keys' default */
  sl_log_limiter_init(&n->log, 10000, 5);
}

int sl_nats_add_metrics(struct sl_nats *n, struct sl_metric_registry *r,
                        const char *name, void *owner) {
  const char *v[] = {name};
  if (r == NULL)
    return 0;
  return sl_metric_add_u64(r, &m_reconnects, v, &n->reconnects, owner);
}

/* ---- connection events (libnats threads) -------------------------------- */

static void wake(struct sl_nats *n) {
  uv_mutex_lock(&n->mu);
  if (!n->dead)
    uv_async_send(n->async);
  uv_mutex_unlock(&n->mu);
}

static void on_disconnected(natsConnection *nc, void *closure) {
  struct sl_nats *n = closure;
  atomic_store(&n->a_connected, 0);
  wake(n);
}

static void on_reconnected(natsConnection *nc, void *closure) {
  struct sl_nats *n = closure;
  atomic_fetch_add(&n->a_reconnects, 1);
  atomic_store(&n->a_connected, 1);
  wake(n);
}

static void on_closed(natsConnection *nc, void *closure) {
  struct sl_nats *n = closure;
  uv_mutex_lock(&n->mu);
  n->closed_seen = 1;
  uv_mutex_unlock(&n->mu);
  uv_cond_broadcast(&n->cond);
}

/* ---- connecting and closing (off the loop) ------------------------------ */

/* libnats has no minimum version setting: its OpenSSL default (TLS 1.2)
 * applies. */
static natsStatus apply_tls(natsOptions *opts, const struct sl_tls_config *t) {
  natsStatus s;
  if (!t->enabled)
    return NATS_OK;
  s = natsOptions_SetSecure(opts, true);
  if (s == NATS_OK && t->ca_file)
    s = natsOptions_LoadCATrustedCertificates(opts, t->ca_file);
  if (s == NATS_OK && t->cert_file)
    s = natsOptions_LoadCertificatesChain(opts, t->cert_file,
                                          t->key_file ? t->key_file
                                                      : t->cert_file);
  if (s == NATS_OK && t->server_name)
    s = natsOptions_SetExpectedHostname(opts, t->server_name);
  if (s == NATS_OK && t->ciphers)
    s = natsOptions_SetCiphers(opts, t->ciphers);
  if (s == NATS_OK && !t->verify_peer)
    s = natsOptions_SkipServerVerification(opts, true);
  return s;
}

natsStatus sl_nats_connect(struct sl_nats *n, const char *url,
                           const char *name, const struct sl_tls_config *tls,
                           natsConnection **nc) {
  natsOptions *opts = NULL;
  natsStatus s = natsOptions_Create(&opts);
  if (s == NATS_OK) s = natsOptions_SetURL(opts, url);
  if (s == NATS_OK) s = natsOptions_SetName(opts, name);
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 1000);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
  /* libnats writes from the caller (a publish or ack on our loop, once
   * its buffer is full) or from its flusher holding the connection's lock,
   * and by default with no deadline: a server that stops reading would hold
   * the loop until it read again. Past this, libnats drops the connection
   * and reconnects (write_timeout_ms). */
  if (s == NATS_OK)
    s = natsOptions_SetWriteDeadline(opts, (int64_t)n->write_timeout_ms);
  if (s == NATS_OK) s = apply_tls(opts, tls);
  if (s == NATS_OK)
    s = natsOptions_SetDisconnectedCB(opts, on_disconnected, n);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, on_reconnected, n);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(opts, on_closed, n);
  if (s == NATS_OK) s = natsConnection_Connect(nc, opts);
  natsOptions_Destroy(opts);
  return s;
}

void sl_nats_close(struct sl_nats *n, natsConnection *nc, int64_t flush_ms) {
  if (nc == NULL)
    return;
  natsConnection_FlushTimeout(nc, flush_ms);
  natsConnection_Close(nc);
  uv_mutex_lock(&n->mu);
  while (!n->closed_seen &&
         uv_cond_timedwait(&n->cond, &n->mu, 2000000000ull) == 0)
    ;
  uv_mutex_unlock(&n->mu);
}

int sl_nats_header_is_meta(const char *k, size_t n) {
  static const char *const names[] = {"nats-subject", "nats-stream",
                                      "nats-seq", "nats-delivered", NULL};
  int i;
  for (i = 0; names[i]; i++)
    if (strlen(names[i]) == n && strncasecmp(names[i], k, n) == 0)
      return 1;
  return 0;
}

/* ---- the loop's ---------------------------------------------------------- */

int sl_nats_changed(struct sl_nats *n, const char *kind, const char *name,
                    const char *url) {
  int connected = atomic_load(&n->a_connected);
  uint64_t suppressed = 0;
  n->reconnects = atomic_load(&n->a_reconnects);
  if (connected == n->was_connected)
    return 0;
  n->was_connected = connected;
  if (sl_log_allow(&n->log, &suppressed))
    sl_log(connected ? SL_LOG_INFO : SL_LOG_WARN,
           connected ? (n->reconnects ? "nats reconnected" : "nats connected")
                     : "nats disconnected; libnats reconnects",
           SL_S(kind, name), SL_S("url", url), SL_U("suppressed", suppressed),
           SL_END);
  return connected;
}

int sl_nats_release(struct sl_nats *n, int ever_connected) {
  int done;
  uv_mutex_lock(&n->mu);
  n->dead = 1;
  done = !ever_connected || n->closed_seen;
  uv_mutex_unlock(&n->mu);
  if (!done)
    return 0; /* libnats may still call us: the struct stays */
  uv_mutex_destroy(&n->mu);
  uv_cond_destroy(&n->cond);
  return 1;
}
