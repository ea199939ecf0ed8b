/* adminget.h - a blocking HTTP/1.1 GET to the admin API of a config, for
 * the commands that read a running engine (sluice tap, sluice top): plain
 * sockets, or TLS when the admin has a tls block (the admin's own
 * certificate file is trusted as it is, beside its ca_file: the command
 * runs where the config is), and the config's bearer token. An admin that
 * demands client certificates is not supported (the call says so). */
#ifndef SL_ADMINGET_H
#define SL_ADMINGET_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "buf.h"
#include "config.h"

struct sl_admin_get {
  int fd;
  SSL_CTX *ctx;      /* TLS: both NULL for a plain admin */
  SSL *ssl;
  int status;        /* the response's status code */
  int chunked;       /* Transfer-Encoding: chunked (the tap) */
  struct sl_buf in;  /* bytes read past the head, not yet handed out */
  int timeout_ms;    /* the most a step may take (see open) */
  int idle_ok;       /* a stream (the tap): may wait for its next chunk */
  uint64_t deadline; /* monotonic ns the current step must end by */
  char err[160];     /* why the last read failed, or "" */
};

/* Bounds against a stalling or lying server: the connect, the TLS
 * handshake and the head must all be done within timeout_ms; so must a
 * whole body read with sl_admin_get_body, and each chunk of a stream once
 * its size line came (between chunks a stream with idle_ok set waits as
 * long as it must: a tap with no matching events is quiet). A head larger
 * than 64 KiB, a body or chunk larger than SL_ADMIN_GET_MAX are refused. */
#define SL_ADMIN_GET_MAX (64u << 20)

/* Connect to cfg's admin.listen and send GET target (path and query).
 * Reads the head. 0, or -1 with err filled (no admin, TLS, connect,
 * token, a response that is no HTTP). */
int sl_admin_get_open(struct sl_admin_get *g, const struct sl_config *cfg,
                      const char *target, int timeout_ms, char *err,
                      size_t errlen);

/* The next piece of the body into out (appended): > 0 bytes, 0 at its
 * end, -1 on a read error, a timeout or broken chunk framing (g->err says
 * which when it knows). Blocks. */
int sl_admin_get_read(struct sl_admin_get *g, struct sl_buf *out);

/* The whole body into out (a non-streaming answer, like /metrics). */
int sl_admin_get_body(struct sl_admin_get *g, struct sl_buf *out);

void sl_admin_get_close(struct sl_admin_get *g);

#endif
