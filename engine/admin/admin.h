/* admin.h - the admin server: health, readiness, Prometheus metrics, rule
 * status and reload, and the live tap of decided events.
 *   GET  /healthz   200 while the process runs (never needs the token)
 *   GET  /readyz    200, or 503 with the reasons (rules not loaded, an input
 *                   not listening, every output failing, stopping)
 *   GET  /metrics   Prometheus text exposition 0.0.4
 *   GET  /rules     the rule set's status (JSON)
 *   POST /reload    reload the rules: 200 with the status, 422 with the
 *                   error when the new files are rejected
 *   GET  /tap?topics=GLOB[,GLOB]&limit=N&sample=F
 *                   NDJSON of matching decided events, chunked, while the
 *                   client stays; header values named in
 *                   admin.redact_headers are masked as "***"
 * With admin.bearer_token_file every endpoint but /healthz wants
 * "Authorization: Bearer <token>". The tap never slows the pipeline: each
 * client has a bounded buffer (SL_ADMIN_TAP_BUFFER) and lines that do not
 * fit are dropped and counted. The admin owns its HTTP server, the tap
 * clients and the worker's tap hook while it runs. */
#ifndef SL_ADMIN_H
#define SL_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define SL_ADMIN_TAP_BUFFER (1u << 20) /* unsent tap bytes per client */

struct sl_admin;
struct sl_worker;

struct sl_admin_stats {
  uint64_t tap_lines;         /* written to tap clients */
  uint64_t tap_dropped;       /* did not fit a client's buffer */
  uint64_t tap_clients_total; /* tap requests served */
  uint32_t tap_clients;       /* connected now */
};

/* A stopped admin server for w (which must outlive it). NULL when out of
 * memory. */
struct sl_admin *sl_admin_new(struct sl_worker *w);
/* Read the token file and listen on w's admin.listen. Returns 0, or a
 * negative code with err filled; call sl_admin_stop either way before the
 * loop ends. */
int sl_admin_start(struct sl_admin *a, char *err, size_t errlen);
/* Close the listener, every connection (tap streams end) and the tap hook.
 * Idempotent; NULL is a no-op. */
void sl_admin_stop(struct sl_admin *a);
/* Free after sl_admin_stop once the loop has run the close callbacks.
 * NULL is a no-op. */
void sl_admin_free(struct sl_admin *a);

#endif
