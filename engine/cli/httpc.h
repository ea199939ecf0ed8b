/* httpc.h - a small blocking HTTP/1.1 client for commands (not the engine
 * loop): one POST on a connected socket, the answer read to its end. Used
 * by `sluice dlq replay --to http://...`. Plain HTTP only. */
#ifndef SL_HTTPC_H
#define SL_HTTPC_H

#include <stddef.h>

#include "buf.h"

struct sl_httpc_url {
  char host[256];
  int port;       /* 80 when the URL names none */
  char path[1024]; /* "/..." with the query; "/v1/events" when empty */
};

/* Parse "http://host[:port][/path]" (host a name, an IPv4 address or
 * [IPv6]). Returns 0, or SL_EINVAL with why filled (https is refused:
 * this client has no TLS). */
int sl_httpc_parse_url(const char *url, struct sl_httpc_url *u, char *why,
                       size_t whylen);

/* Send one POST of body on fd (connected; made non-blocking here) and read
 * the answer until its Content-Length is in or the peer closes. token, when
 * not NULL, goes as a bearer token. No progress for timeout_ms fails.
 * Returns 0 with *status and the answer's body in resp (reset first), or
 * SL_EIO/SL_ETIMEDOUT/SL_EPROTO with why filled. Does not close fd. */
int sl_httpc_post(int fd, const struct sl_httpc_url *u, const char *token,
                  const char *ctype, const void *body, size_t len,
                  int timeout_ms, int *status, struct sl_buf *resp, char *why,
                  size_t whylen);

#endif
