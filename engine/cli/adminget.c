/* adminget.c - see adminget.h. The request says Connection: close, so a
 * body without chunked framing ends when the server closes. */
#include "adminget.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "common.h"
#include "http.h"

/* Socket timeouts for what is left of the step's deadline (none: block),
 * so a read, write, connect or handshake step cannot outlast it. 0, or -1
 * when the deadline has passed. */
static int arm(int fd, uint64_t deadline) {
  struct timeval tv = {0, 0};
  if (deadline) {
    uint64_t now = sl_mono_ns(), left;
    if (now >= deadline)
      return -1;
    left = (deadline - now) / 1000;
    tv.tv_sec = (time_t)(left / 1000000);
    tv.tv_usec = (suseconds_t)(left % 1000000);
    if (tv.tv_sec == 0 && tv.tv_usec == 0)
      tv.tv_usec = 1;
  }
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  return 0;
}

static int dial(const char *listen, uint64_t deadline, char *err,
                size_t errlen) {
  char host[256], port[16];
  const char *colon = strrchr(listen, ':');
  struct addrinfo hints, *res = NULL, *ai;
  size_t hl;
  int fd = -1, rc;

  if (colon == NULL || strlen(colon + 1) >= sizeof(port) ||
      (hl = (size_t)(colon - listen)) >= sizeof(host)) {
    snprintf(err, errlen, "admin.listen \"%s\": expected host:port", listen);
    return -1;
  }
  memcpy(host, listen, hl);
  host[hl] = '\0';
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = '\0';
  }
  snprintf(port, sizeof(port), "%s", colon + 1);
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    snprintf(err, errlen, "admin.listen %s: %s", listen, gai_strerror(rc));
    return -1;
  }
  for (ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd >= 0 && (arm(fd, deadline) != 0 ||
                    connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)) {
      rc = errno;
      close(fd);
      fd = -1;
      errno = rc;
    }
  }
  freeaddrinfo(res);
  if (fd < 0)
    snprintf(err, errlen, "cannot connect to the admin API at %s: %s "
             "(is sluice running with this config?)", listen, strerror(errno));
  return fd;
}

/* TLS to the admin at listen: its certificate is trusted as it is (the
 * command reads the same config), and so is its ca_file; the host or IP
 * of listen is checked unless it is a wildcard. 0, or -1 with err. */
static int tls_open(struct sl_admin_get *g, const struct sl_config *cfg,
                    char *err, size_t errlen) {
  const struct sl_tls_config *t = &cfg->admin.tls;
  const char *listen = cfg->admin.listen, *colon = strrchr(listen, ':');
  char host[256];
  size_t hl = colon ? (size_t)(colon - listen) : 0;
  X509_VERIFY_PARAM *vp;

  if (t->verify_peer || t->client_ca_file) {
    snprintf(err, errlen, "the admin API demands client certificates, which "
                          "this command does not send: use curl --cert");
    return -1;
  }
  if (hl >= sizeof(host))
    hl = 0;
  memcpy(host, listen, hl);
  host[hl] = '\0';
  if (hl >= 2 && host[0] == '[') {
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = '\0';
  }
  if ((g->ctx = SSL_CTX_new(TLS_client_method())) == NULL)
    goto fail;
  SSL_CTX_set_min_proto_version(g->ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(g->ctx, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_load_verify_locations(g->ctx, t->cert_file, NULL) != 1 ||
      (t->ca_file &&
       SSL_CTX_load_verify_locations(g->ctx, t->ca_file, NULL) != 1))
    goto fail;
  vp = SSL_CTX_get0_param(g->ctx);
  X509_VERIFY_PARAM_set_flags(vp, X509_V_FLAG_PARTIAL_CHAIN);
  if ((g->ssl = SSL_new(g->ctx)) == NULL || SSL_set_fd(g->ssl, g->fd) != 1)
    goto fail;
  if (hl && strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0) {
    vp = SSL_get0_param(g->ssl);
    if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1) {
      X509_VERIFY_PARAM_set1_host(vp, host, 0);
      SSL_set_tlsext_host_name(g->ssl, host);
    }
  }
  if (arm(g->fd, g->deadline) == 0 && SSL_connect(g->ssl) == 1)
    return 0;
  if (g->deadline && sl_mono_ns() >= g->deadline - 1000000) {
    snprintf(err, errlen, "TLS to the admin API at %s: no handshake within "
             "%d ms", listen, g->timeout_ms);
    return -1;
  }
fail:
  snprintf(err, errlen, "TLS to the admin API at %s failed: %s", listen,
           ERR_reason_error_string(ERR_get_error()) ?: "handshake refused");
  return -1;
}

static ssize_t io_read(struct sl_admin_get *g, void *buf, size_t n) {
  ssize_t r;
  if (g->ssl) {
    r = SSL_read(g->ssl, buf, (int)n);
    return r > 0 ? r : (SSL_get_error(g->ssl, (int)r) == SSL_ERROR_ZERO_RETURN
                            ? 0 : -1);
  }
  do
    r = read(g->fd, buf, n);
  while (r < 0 && errno == EINTR);
  return r;
}

static ssize_t io_write(struct sl_admin_get *g, const void *buf, size_t n) {
  ssize_t r;
  if (g->ssl)
    return (r = SSL_write(g->ssl, buf, (int)n)) > 0 ? r : -1;
  do
    r = write(g->fd, buf, n);
  while (r < 0 && errno == EINTR);
  return r;
}

/* Read more into g->in: > 0 bytes, 0 at the server's close, -1 (g->err
 * says why when it is the deadline or a size bound). */
static int fill(struct sl_admin_get *g) {
  uint8_t tmp[16384];
  ssize_t n;
  if (g->in.len > SL_ADMIN_GET_MAX) {
    snprintf(g->err, sizeof(g->err), "the admin API's answer is larger "
             "than %u MiB", SL_ADMIN_GET_MAX >> 20);
    return -1;
  }
  n = arm(g->fd, g->deadline) == 0 ? io_read(g, tmp, sizeof(tmp)) : -1;
  if (n < 0 && g->deadline && sl_mono_ns() >= g->deadline - 1000000) {
    snprintf(g->err, sizeof(g->err), "the admin API sent no complete "
             "answer within %d ms", g->timeout_ms);
    return -1;
  }
  if (n <= 0)
    return (int)n;
  return sl_buf_append(&g->in, tmp, (size_t)n) == 0 ? (int)n : -1;
}

static void consume(struct sl_buf *b, size_t n) {
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

static const char *find(const struct sl_buf *b, const char *s) {
  size_t n = strlen(s), i;
  for (i = 0; i + n <= b->len; i++)
    if (memcmp(b->data + i, s, n) == 0)
      return (const char *)b->data + i;
  return NULL;
}

/* Status line and the one header we need, then the head is dropped. */
static int read_head(struct sl_admin_get *g, char *err, size_t errlen) {
  const char *end;
  char *head, *line, *save = NULL;
  while ((end = find(&g->in, "\r\n\r\n")) == NULL) {
    if (g->in.len > 65536) {
      snprintf(err, errlen, "the admin API's answer has a head larger than "
               "64 KiB");
      return -1;
    }
    if (fill(g) <= 0) {
      snprintf(err, errlen, "%s", g->err[0] ? g->err : "the admin API closed "
               "without an HTTP answer");
      return -1;
    }
  }
  head = strndup((const char *)g->in.data, (size_t)(end - (char *)g->in.data));
  if (head == NULL)
    return -1;
  consume(&g->in, (size_t)(end - (char *)g->in.data) + 4);
  if (sscanf(head, "HTTP/1.%*d %d", &g->status) != 1) {
    snprintf(err, errlen, "the admin API answered no HTTP");
    free(head);
    return -1;
  }
  for (line = strtok_r(head, "\r\n", &save); line;
       line = strtok_r(NULL, "\r\n", &save))
    if (strncasecmp(line, "transfer-encoding:", 18) == 0 &&
        strstr(line + 18, "chunked"))
      g->chunked = 1;
  free(head);
  return 0;
}

int sl_admin_get_open(struct sl_admin_get *g, const struct sl_config *cfg,
                      const char *target, int timeout_ms, char *err,
                      size_t errlen) {
  struct sl_buf req;
  char *token = NULL;
  size_t tlen = 0;
  int rc = -1;

  memset(g, 0, sizeof(*g));
  g->fd = -1;
  g->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
  g->deadline = sl_mono_ns() + (uint64_t)g->timeout_ms * 1000000u;
  sl_buf_init(&g->in);
  if (cfg->admin.listen == NULL) {
    snprintf(err, errlen, "the config has no admin.listen: add admin = { "
                          "listen = \"127.0.0.1:9090\" } and restart sluice");
    return -1;
  }
  if (cfg->admin.bearer_token_file &&
      (token = sl_http_load_token(cfg->admin.bearer_token_file, &tlen, err,
                                  errlen)) == NULL)
    return -1;
  g->fd = dial(cfg->admin.listen, g->deadline, err, errlen);
  sl_buf_init(&req);
  if (g->fd >= 0 && cfg->admin.tls.enabled && tls_open(g, cfg, err, errlen))
    goto done;
  if (g->fd >= 0 &&
      sl_buf_printf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close"
                    "\r\n", target, cfg->admin.listen) == 0 &&
      (token == NULL ||
       sl_buf_printf(&req, "Authorization: Bearer %s\r\n", token) == 0) &&
      sl_buf_append(&req, "\r\n", 2) == 0) {
    size_t off = 0;
    while (off < req.len && arm(g->fd, g->deadline) == 0) {
      ssize_t n = io_write(g, req.data + off, req.len - off);
      if (n <= 0)
        break;
      off += (size_t)n;
    }
    if (off == req.len)
      rc = read_head(g, err, errlen);
    else
      snprintf(err, errlen, "cannot send to the admin API: %s",
               errno == EAGAIN ? "it takes nothing" : strerror(errno));
  }
done:
  sl_buf_close(&req);
  if (token) {
    memset(token, 0, tlen);
    free(token);
  }
  if (rc != 0)
    sl_admin_get_close(g);
  return rc;
}

/* The next chunk of a chunked body: its size line (bounded), then its
 * bytes, which must come within the timeout once the line began. */
static int read_chunk(struct sl_admin_get *g, struct sl_buf *out) {
  const char *crlf;
  unsigned long size;
  char *end;
  if (g->idle_ok && g->in.len == 0) {
    g->deadline = 0; /* between chunks a stream may be quiet */
    if (fill(g) <= 0)
      return -1;
  }
  if (g->idle_ok)
    g->deadline = sl_mono_ns() + (uint64_t)g->timeout_ms * 1000000u;
  while ((crlf = find(&g->in, "\r\n")) == NULL)
    if (g->in.len > 64 || fill(g) <= 0)
      return -1;
  size = strtoul((const char *)g->in.data, &end, 16);
  if (end == (const char *)g->in.data || (*end != '\r' && *end != ';') ||
      g->in.data[0] == '-' || g->in.data[0] == '+' || size > SL_ADMIN_GET_MAX) {
    snprintf(g->err, sizeof(g->err), "the admin API sent a bad or too "
             "large chunk size (at most %u MiB)", SL_ADMIN_GET_MAX >> 20);
    return -1;
  }
  consume(&g->in, (size_t)(crlf - (char *)g->in.data) + 2);
  while (g->in.len < size + 2)
    if (fill(g) <= 0)
      return -1;
  if (size == 0)
    return 0;
  if (sl_buf_append(out, g->in.data, size) != 0)
    return -1;
  consume(&g->in, size + 2);
  return (int)size;
}

int sl_admin_get_read(struct sl_admin_get *g, struct sl_buf *out) {
  if (!g->chunked) {
    int n = g->in.len ? (int)g->in.len : fill(g);
    if (n > 0) {
      n = (int)g->in.len;
      if (out->len + g->in.len > SL_ADMIN_GET_MAX) {
        snprintf(g->err, sizeof(g->err), "the admin API's answer is larger "
                 "than %u MiB", SL_ADMIN_GET_MAX >> 20);
        return -1;
      }
      if (sl_buf_append(out, g->in.data, g->in.len) != 0)
        return -1;
      g->in.len = 0;
    }
    return n;
  }
  return read_chunk(g, out);
}

int sl_admin_get_body(struct sl_admin_get *g, struct sl_buf *out) {
  int n;
  while ((n = sl_admin_get_read(g, out)) > 0)
    if (out->len > SL_ADMIN_GET_MAX) {
      snprintf(g->err, sizeof(g->err), "the admin API's answer is larger "
               "than %u MiB", SL_ADMIN_GET_MAX >> 20);
      return -1;
    }
  return n;
}

void sl_admin_get_close(struct sl_admin_get *g) {
  if (g->ssl)
    SSL_free(g->ssl);
  if (g->ctx)
    SSL_CTX_free(g->ctx);
  g->ssl = NULL;
  g->ctx = NULL;
  if (g->fd >= 0)
    close(g->fd);
  g->fd = -1;
  sl_buf_close(&g->in);
}
