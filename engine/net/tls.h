/* tls.h - TLS for an endpoint: a context built from a tls = {...} block
 * (struct sl_tls_config), given to an endpoint with sl_endpoint_set_tls so
 * its conns run over the tls transport (tls.c). Protocols see plaintext and
 * change nothing; they may ask a conn for its peer's certificate identity.
 * Contexts live on the loop's thread; certificates are re-read by
 * sl_tls_reload_all (the reload path calls it). */
#ifndef SL_TLS_H
#define SL_TLS_H

#include <stddef.h>

#include "config.h"
#include "conn.h"

struct sl_tls;

/* A context for a listener (server 1) or a client (0) from cfg (enabled),
 * reading its certificate, key and CA files now. address is the endpoint's
 * "host:port": a client checks that host (or cfg->server_name) against the
 * server's certificate. name names the endpoint in logs. Returns NULL with
 * err filled naming the file or key at fault. The caller owns the one
 * reference; conns take their own. */
struct sl_tls *sl_tls_new(const struct sl_tls_config *cfg, int server,
                          const char *address, const char *name, char *err,
                          size_t errlen);
/* Drop the owner's reference (NULL: no-op); freed once no conn uses it. */
void sl_tls_free(struct sl_tls *t);

/* Re-read t's files into a new context for new conns; established conns
 * keep theirs. On error t is unchanged and err says why. Returns 0 or
 * SL_EINVAL. */
int sl_tls_reload(struct sl_tls *t, char *err, size_t errlen);
/* Reload every live context, logging each result (a bad file keeps the old
 * context). Returns how many failed. */
int sl_tls_reload_all(void);

/* Make ep (a tcp endpoint, after sl_endpoint_init) run over TLS with t
 * (NULL: leave it plain). ep borrows t. Returns 0 or UV_EINVAL. */
int sl_endpoint_set_tls(struct sl_endpoint *ep, struct sl_tls *t);

/* The identity in the peer's verified certificate: its subject CN, else
 * its first DNS name; NULL for a plain conn or no certificate. */
const char *sl_conn_peer_identity(const struct sl_conn *c);

#endif
