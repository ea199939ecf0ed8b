/* tls.c - the tls transport: OpenSSL over a tcp handle through two memory
 * BIOs, so conn.c and the protocols above read and write plaintext; and the
 * endpoint contexts (struct sl_tls) built from a tls = {...} block, rebuilt
 * on reload. Owns each TLS conn's SSL, its handshake deadline and the
 * writes asked for before the handshake finished. See tls.h, transport.h. */
#include "tls.h"
#include "transport.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

struct sl_tls {
  SSL_CTX *ctx;     /* what new conns take; conns hold their own ref */
  int server;
  int verify_peer;
  int min_version;
  uint32_t handshake_ms;
  char *cert_file, *key_file, *ca_file, *client_ca_file, *ciphers;
  char **allow;     /* subject CNs / SANs let in; nallow 0: any */
  int nallow;
  char host[256];   /* clients: the name checked and sent as SNI */
  int host_is_ip;
  char name[128];   /* for logs */
  int refs;         /* the owner's and one per conn */
  struct sl_log_limiter log;
  struct sl_tls *next, *prev; /* every live context, for reload */
};

static struct sl_tls *contexts; /* the loop's thread only */

/* ---- contexts ---------------------------------------------------------- */

/* A new SSL_CTX from t's files, or NULL with err saying which failed. */
static SSL_CTX *build_ctx(const struct sl_tls *t, char *err, size_t errlen) {
  const char *what = "cannot create a TLS context";
  const char *ca = t->client_ca_file ? t->client_ca_file : t->ca_file;
  SSL_CTX *ctx;
  unsigned long e;

  ERR_clear_error();
  ctx = SSL_CTX_new(t->server ? TLS_server_method() : TLS_client_method());
  if (ctx == NULL)
    goto fail;
  SSL_CTX_set_min_proto_version(ctx, t->min_version);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  what = "ciphers";
  if (t->ciphers && SSL_CTX_set_cipher_list(ctx, t->ciphers) != 1)
    goto fail;
  what = t->cert_file;
  if (t->cert_file && SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1)
    goto fail;
  what = t->key_file;
  if (t->key_file &&
      SSL_CTX_use_PrivateKey_file(ctx, t->key_file, SSL_FILETYPE_PEM) != 1)
    goto fail;
  what = "key_file does not match cert_file";
  if (t->cert_file && SSL_CTX_check_private_key(ctx) != 1)
    goto fail;
  what = ca;
  if (ca && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
    goto fail;
  if (t->server) {
    SSL_CTX_set_num_tickets(ctx, 0); /* no resumption: nothing to rotate */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (t->verify_peer) {
      STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
      if (names)
        SSL_CTX_set_client_CA_list(ctx, names);
    }
  } else if (ca == NULL && SSL_CTX_set_default_verify_paths(ctx) != 1) {
    what = "the system's CA certificates";
    goto fail;
  }
  return ctx;

fail:
  e = ERR_get_error();
  snprintf(err, errlen, "%s: %s", what,
           e && ERR_reason_error_string(e) ? ERR_reason_error_string(e)
                                           : "failed");
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return NULL;
}

/* A certificate outside its validity makes every peer refuse it: say so
 * when it is loaded (it is used anyway: the clock may be what is wrong). */
static void warn_validity(const struct sl_tls *t) {
  X509 *x = SSL_CTX_get0_certificate(t->ctx);
  const char *why = NULL;
  if (x == NULL)
    return;
  if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
    why = "expired";
  else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
    why = "not valid yet";
  if (why)
    sl_log(SL_LOG_WARN, "TLS certificate outside its validity; peers will "
                        "refuse it", SL_S("endpoint", t->name),
           SL_S("cert_file", t->cert_file), SL_S("problem", why), SL_END);
}

static char *dup_or_null(const char *s) {
  return s ? strdup(s) : NULL;
}

static void tls_destroy(struct sl_tls *t) {
  int i;
  if (t->prev)
    t->prev->next = t->next;
  else if (contexts == t)
    contexts = t->next;
  if (t->next)
    t->next->prev = t->prev;
  SSL_CTX_free(t->ctx);
  free(t->cert_file);
  free(t->key_file);
  free(t->ca_file);
  free(t->client_ca_file);
  free(t->ciphers);
  for (i = 0; i < t->nallow; i++)
    free(t->allow[i]);
  free(t->allow);
  free(t);
}

/* Copy what reload needs out of cfg (the config may be replaced). */
static int copy_config(struct sl_tls *t, const struct sl_tls_config *cfg) {
  int i;
  t->verify_peer = cfg->verify_peer;
  t->min_version = cfg->min_version ? cfg->min_version : TLS1_2_VERSION;
  t->handshake_ms = cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms
                                              : 10000;
  t->cert_file = dup_or_null(cfg->cert_file);
  t->key_file = dup_or_null(cfg->key_file);
  t->ca_file = dup_or_null(cfg->ca_file);
  t->client_ca_file = dup_or_null(cfg->client_ca_file);
  t->ciphers = dup_or_null(cfg->ciphers);
  if (cfg->nallow && (t->allow = calloc((size_t)cfg->nallow,
                                        sizeof(char *))) == NULL)
    return SL_ENOMEM;
  for (i = 0; i < cfg->nallow; i++, t->nallow++)
    if ((t->allow[i] = strdup(cfg->allow_subjects[i])) == NULL)
      return SL_ENOMEM;
  return 0;
}

/* The host of "host:port" or "[v6]:port", as written (a name stays a
 * name: it is what the certificate must show). Returns 0 or -1. */
static int host_of(const char *address, char *out, size_t len) {
  const char *colon = address ? strrchr(address, ':') : NULL;
  const char *start = address;
  size_t n;
  if (colon == NULL)
    return -1;
  n = (size_t)(colon - address);
  if (n >= 2 && address[0] == '[' && address[n - 1] == ']') {
    start++;
    n -= 2;
  }
  if (n == 0 || n >= len)
    return -1;
  memcpy(out, start, n);
  out[n] = '\0';
  return 0;
}

struct sl_tls *sl_tls_new(const struct sl_tls_config *cfg, int server,
                          const char *address, const char *name, char *err,
                          size_t errlen) {
  struct sl_tls *t = calloc(1, sizeof(*t));
  unsigned char ip[16];

  if (t == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  t->server = server;
  t->refs = 1;
  snprintf(t->name, sizeof(t->name), "%s", name ? name : address);
  sl_log_limiter_init(&t->log, 10000, 10);
  if (copy_config(t, cfg) != 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (cfg->server_name)
    snprintf(t->host, sizeof(t->host), "%s", cfg->server_name);
  else if (!server && host_of(address, t->host, sizeof(t->host)) != 0)
    t->host[0] = '\0';
  if (!server && t->verify_peer && t->host[0] == '\0') {
    /* never verify a chain without the name it must be for */
    snprintf(err, errlen, "no host name to check in \"%s\"; set server_name",
             address ? address : "");
    goto fail;
  }
  t->host_is_ip = uv_inet_pton(AF_INET, t->host, ip) == 0 ||
                  uv_inet_pton(AF_INET6, t->host, ip) == 0;
  if ((t->ctx = build_ctx(t, err, errlen)) == NULL)
    goto fail;
  warn_validity(t);
  t->next = contexts;
  if (contexts)
    contexts->prev = t;
  contexts = t;
  return t;

fail:
  tls_destroy(t);
  return NULL;
}

static void tls_unref(struct sl_tls *t) {
  if (t && --t->refs == 0)
    tls_destroy(t);
}

void sl_tls_free(struct sl_tls *t) {
  tls_unref(t);
}

int sl_tls_reload(struct sl_tls *t, char *err, size_t errlen) {
  SSL_CTX *ctx = build_ctx(t, err, errlen);
  if (ctx == NULL)
    return SL_EINVAL;
  SSL_CTX_free(t->ctx); /* conns made with it keep a reference */
  t->ctx = ctx;
  warn_validity(t);
  return 0;
}

int sl_tls_reload_all(void) {
  struct sl_tls *t;
  char err[512];
  int failed = 0;
  for (t = contexts; t; t = t->next) {
    if (sl_tls_reload(t, err, sizeof(err)) == 0) {
      sl_log(SL_LOG_INFO, "TLS certificates reloaded", SL_S("endpoint", t->name),
             SL_END);
      continue;
    }
    failed++;
    sl_log(SL_LOG_ERROR, "TLS certificates not reloaded; keeping the ones in "
                         "use", SL_S("endpoint", t->name), SL_S("error", err),
           SL_END);
  }
  return failed;
}

int sl_endpoint_set_tls(struct sl_endpoint *ep, struct sl_tls *t) {
  if (t == NULL)
    return 0;
  if (ep->kind != SL_ENDPOINT_TCP)
    return UV_EINVAL;
  ep->tls = t;
  ep->tp = &sl_transport_tls;
  return 0;
}

/* ---- conns ------------------------------------------------------------- */

enum tls_phase {
  TLS_CONNECTING = 0, /* client: tcp connect in flight */
  TLS_HANDSHAKE,
  TLS_ESTABLISHED,
  TLS_FAILED,         /* handshake failed: the error waits for a reader */
};

/* A write asked for before the handshake finished. */
struct queued {
  struct queued *next;
  uv_write_t *req;
  uv_buf_t buf;
  uv_write_cb cb;
};

/* Ciphertext on its way to the tcp handle; user: conn.c's write, done
 * when this is. */
struct sealed {
  uv_write_t req;
  uv_write_t *user;
  uv_write_cb cb;
  char data[];
};

struct tls_conn {
  struct sl_conn *c;
  struct sl_tls *tls;     /* a reference */
  SSL *ssl;
  BIO *in, *out;          /* ciphertext from / to the peer */
  enum tls_phase phase;
  uv_timer_t timer;       /* the handshake deadline, then deferred reads */
  uv_alloc_cb alloc;      /* conn.c's reader */
  uv_read_cb read;
  uv_connect_cb connected; /* clients: conn.c's, once the handshake is done */
  uv_close_cb closed;
  int reading;            /* conn.c wants bytes */
  int tcp_reading;
  int closing;
  int eof;                /* the tcp stream ended: eof_status */
  int eof_status;
  int fail_status;
  struct queued *queue, **tail;
  size_t queued_bytes;
  char identity[256];     /* the peer certificate's CN or first DNS name */
};

static _Thread_local char scratch[65536]; /* ciphertext goes to the BIO at once */

static void pump(struct tls_conn *t);

static void on_tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  (void)h, (void)suggested;
  b->base = scratch;
  b->len = sizeof(scratch);
}

static void on_tcp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  struct sl_conn *c = s->data;
  struct tls_conn *t = c->tls;
  if (n > 0) {
    BIO_write(t->in, b->base, (int)n);
    pump(t);
    return;
  }
  if (n == 0)
    return;
  t->eof = 1;
  t->eof_status = (int)n;
  uv_read_stop(s);
  t->tcp_reading = 0;
  pump(t);
}

/* Read the tcp stream while handshaking or while conn.c reads. */
static void tcp_reading(struct tls_conn *t) {
  int want = !t->closing && !t->eof &&
             (t->phase == TLS_HANDSHAKE || (t->phase == TLS_ESTABLISHED &&
                                            t->reading));
  if (want && !t->tcp_reading)
    t->tcp_reading = uv_read_start(&t->c->h.stream, on_tcp_alloc,
                                   on_tcp_read) == 0;
  else if (!want && t->tcp_reading) {
    uv_read_stop(&t->c->h.stream);
    t->tcp_reading = 0;
  }
}

static void on_sealed(uv_write_t *req, int status) {
  struct sealed *w = container_of(req, struct sealed, req);
  if (w->cb)
    w->cb(w->user, status);
  free(w);
}

/* Send what the SSL wrote to its out BIO; user (may be NULL) is done when
 * that is. Returns 0 or UV_E*. */
static int flush(struct tls_conn *t, uv_write_t *user, uv_write_cb cb) {
  size_t n = (size_t)BIO_ctrl_pending(t->out);
  struct sealed *w;
  uv_buf_t b;
  int rc;
  if (n == 0 && user == NULL)
    return 0;
  if ((w = malloc(sizeof(*w) + n)) == NULL)
    return UV_ENOMEM;
  if (n && BIO_read(t->out, w->data, (int)n) != (int)n) {
    free(w);
    return UV_EIO;
  }
  w->user = user;
  w->cb = cb;
  b = uv_buf_init(w->data, (unsigned)n);
  rc = uv_write(&w->req, &t->c->h.stream, &b, 1, on_sealed);
  if (rc != 0)
    free(w);
  return rc;
}

static int seal(struct tls_conn *t, uv_write_t *req, const uv_buf_t *b,
                uv_write_cb cb) {
  ERR_clear_error();
  if (b->len && SSL_write(t->ssl, b->base, (int)b->len) <= 0) {
    ERR_clear_error();
    return UV_EPROTO;
  }
  return flush(t, req, cb);
}

/* Why the handshake failed, for the log. */
static void failure(struct tls_conn *t, char *out, size_t len) {
  long v = SSL_get_verify_result(t->ssl);
  unsigned long e = ERR_peek_last_error();
  if (v != X509_V_OK)
    snprintf(out, len, "certificate: %s", X509_verify_cert_error_string(v));
  else if (e && ERR_reason_error_string(e))
    snprintf(out, len, "%s", ERR_reason_error_string(e));
  else
    snprintf(out, len, "%s", t->eof ? "the peer closed the connection"
                                    : "handshake failed");
  ERR_clear_error();
}

/* The handshake failed (status): log why, then tell conn.c, which closes
 * the conn (a client's connect fails, a server's read does). */
static void fail(struct tls_conn *t, int status, const char *why) {
  char reason[256];
  uint64_t suppressed = 0;
  uv_connect_cb cb;
  uv_buf_t none = uv_buf_init(NULL, 0);

  if (why)
    snprintf(reason, sizeof(reason), "%s", why);
  else
    failure(t, reason, sizeof(reason));
  uv_timer_stop(&t->timer);
  t->phase = TLS_FAILED;
  t->fail_status = status;
  if (t->c->listener && status != UV_ETIMEDOUT)
    t->c->listener->stats.refused_tls++; /* timeouts count as timed out */
  tcp_reading(t);
  if (sl_log_allow(&t->tls->log, &suppressed))
    sl_log(SL_LOG_WARN, t->tls->server ? "TLS handshake refused"
                                       : "TLS handshake with the peer failed",
           SL_S(t->tls->server ? "listener" : "output", t->tls->name),
           SL_S("peer", t->c->peer), SL_S("reason", reason),
           SL_S("subject", t->identity[0] ? t->identity : "none"),
           SL_U("suppressed", suppressed), SL_END);
  if (t->connected) {
    cb = t->connected;
    t->connected = NULL;
    cb(&t->c->connect_req, status);
  } else if (t->reading) {
    t->read(&t->c->h.stream, status, &none);
  }
}

/* The CN of x's subject, else its first DNS name, into out. */
static void name_of(X509 *x, char *out, size_t len) {
  GENERAL_NAMES *names;
  int i;
  out[0] = '\0';
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName,
                                out, (int)len) > 0)
    return;
  out[0] = '\0';
  names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  for (i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
    GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
    if (g->type == GEN_DNS) {
      snprintf(out, len, "%.*s", ASN1_STRING_length(g->d.dNSName),
               (const char *)ASN1_STRING_get0_data(g->d.dNSName));
      break;
    }
  }
  GENERAL_NAMES_free(names);
}

/* Is x's subject CN, or one of its SAN names, in the allowlist? */
static int allowed(const struct sl_tls *tls, X509 *x, const char *cn) {
  int i;
  if (tls->nallow == 0)
    return 1;
  for (i = 0; i < tls->nallow; i++)
    if (strcmp(tls->allow[i], cn) == 0 ||
        X509_check_host(x, tls->allow[i], 0,
                        X509_CHECK_FLAG_NO_WILDCARDS, NULL) == 1 ||
        X509_check_email(x, tls->allow[i], 0, 0) == 1 ||
        X509_check_ip_asc(x, tls->allow[i], 0) == 1)
      return 1;
  return 0;
}

/* Records the claimed identity of the peer's certificate as it is checked,
 * so a refused handshake's log line can name it. */
static int on_verify(int ok, X509_STORE_CTX *store) {
  SSL *ssl = X509_STORE_CTX_get_ex_data(store,
                                        SSL_get_ex_data_X509_STORE_CTX_idx());
  struct tls_conn *t = ssl ? SSL_get_app_data(ssl) : NULL;
  X509 *x = X509_STORE_CTX_get_current_cert(store);
  if (t && x && X509_STORE_CTX_get_error_depth(store) == 0)
    name_of(x, t->identity, sizeof(t->identity));
  return ok;
}

static void established(struct tls_conn *t) {
  struct queued *q;
  X509 *x = SSL_get0_peer_certificate(t->ssl);
  uv_connect_cb cb;

  if (x)
    name_of(x, t->identity, sizeof(t->identity));
  if (t->tls->server && x && !allowed(t->tls, x, t->identity)) {
    fail(t, UV_EACCES, "certificate subject not in allow_subjects");
    return;
  }
  uv_timer_stop(&t->timer);
  t->phase = TLS_ESTABLISHED;
  while ((q = t->queue) != NULL) {
    int rc;
    t->queue = q->next;
    t->queued_bytes -= q->buf.len;
    rc = seal(t, q->req, &q->buf, q->cb);
    if (rc != 0)
      q->cb(q->req, rc);
    free(q);
  }
  t->tail = &t->queue;
  tcp_reading(t);
  if (t->connected) {
    cb = t->connected;
    t->connected = NULL;
    cb(&t->c->connect_req, 0);
  }
}

static void handshake(struct tls_conn *t) {
  int rc, err;
  ERR_clear_error();
  rc = SSL_do_handshake(t->ssl);
  flush(t, NULL, NULL);
  if (rc == 1) {
    established(t);
    return;
  }
  err = SSL_get_error(t->ssl, rc);
  if (err == SSL_ERROR_WANT_READ && !t->eof)
    return;
  fail(t, t->eof && err == SSL_ERROR_WANT_READ ? UV_ECONNRESET : UV_EPROTO,
       NULL);
}

/* Hand conn.c the plaintext the SSL can give while it reads. */
static void deliver(struct tls_conn *t) {
  uv_stream_t *s = &t->c->h.stream;
  while (t->reading && !t->closing) {
    uv_buf_t b = uv_buf_init(NULL, 0);
    int n, err;
    t->alloc(&t->c->h.handle, 65536, &b);
    if (b.base == NULL || b.len == 0) {
      t->read(s, UV_ENOBUFS, &b);
      return;
    }
    ERR_clear_error();
    n = SSL_read(t->ssl, b.base, (int)(b.len > INT32_MAX ? INT32_MAX : b.len));
    if (n > 0) {
      t->read(s, n, &b);
      continue;
    }
    err = SSL_get_error(t->ssl, n);
    if (err == SSL_ERROR_WANT_READ && !t->eof)
      t->read(s, 0, &b);
    else if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_ZERO_RETURN)
      t->read(s, t->eof_status && t->eof_status != UV_EOF ? t->eof_status
                                                          : UV_EOF, &b);
    else
      t->read(s, UV_EPROTO, &b);
    break;
  }
  if (!t->closing)
    flush(t, NULL, NULL); /* a read may answer (key updates, alerts) */
}

static void pump(struct tls_conn *t) {
  switch (t->phase) {
  case TLS_HANDSHAKE:
    handshake(t);
    if (t->phase == TLS_ESTABLISHED)
      deliver(t);
    break;
  case TLS_ESTABLISHED:
    deliver(t);
    break;
  case TLS_CONNECTING:
  case TLS_FAILED:
    break;
  }
}

static void on_timer(uv_timer_t *h) {
  struct tls_conn *t = h->data;
  uv_buf_t none = uv_buf_init(NULL, 0);
  switch (t->phase) {
  case TLS_CONNECTING:
  case TLS_HANDSHAKE:
    if (t->c->listener)
      sl_listener_count_timeout(t->c);
    fail(t, UV_ETIMEDOUT, "handshake timed out");
    break;
  case TLS_ESTABLISHED: /* reads resumed with bytes already here */
    deliver(t);
    break;
  case TLS_FAILED:
    if (t->reading && !t->closing)
      t->read(&t->c->h.stream, t->fail_status, &none);
    break;
  }
}

/* The TLS state of c over tls, with its SSL; NULL when out of memory. */
static struct tls_conn *tls_conn_new(struct sl_conn *c, struct sl_tls *tls) {
  struct tls_conn *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return NULL;
  t->ssl = SSL_new(tls->ctx);
  t->in = BIO_new(BIO_s_mem());
  t->out = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->in == NULL || t->out == NULL) {
    BIO_free(t->in);
    BIO_free(t->out);
    SSL_free(t->ssl);
    free(t);
    return NULL;
  }
  BIO_set_mem_eof_return(t->in, -1); /* empty is "want more", not EOF */
  SSL_set_bio(t->ssl, t->in, t->out);
  SSL_set_app_data(t->ssl, t);
  SSL_set_verify(t->ssl, tls->server
                             ? (tls->verify_peer ? SSL_VERIFY_PEER |
                                    SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                 : SSL_VERIFY_NONE)
                             : (tls->verify_peer ? SSL_VERIFY_PEER
                                                 : SSL_VERIFY_NONE),
                 on_verify);
  t->c = c;
  t->tls = tls;
  tls->refs++;
  t->tail = &t->queue;
  uv_timer_init(c->h.handle.loop, &t->timer);
  t->timer.data = t;
  c->tls = t;
  return t;
}

static void start_handshake(struct tls_conn *t) {
  t->phase = TLS_HANDSHAKE;
  uv_timer_start(&t->timer, on_timer, t->tls->handshake_ms, 0);
  tcp_reading(t);
  handshake(t);
}

/* ---- the transport ----------------------------------------------------- */

static int tls_accept(struct sl_listener *l, struct sl_conn *c) {
  struct tls_conn *t;
  int rc = sl_transport_tcp.accept(l, c);
  if (rc != 0)
    return rc;
  if ((t = tls_conn_new(c, l->ep.tls)) == NULL)
    return UV_ENOMEM;
  SSL_set_accept_state(t->ssl);
  t->phase = TLS_HANDSHAKE;
  uv_timer_start(&t->timer, on_timer, t->tls->handshake_ms, 0);
  tcp_reading(t); /* the ClientHello comes first */
  return 0;
}

static void on_tcp_connect(uv_connect_t *req, int status) {
  struct sl_conn *c = req->data;
  struct tls_conn *t = c->tls;
  uv_connect_cb cb;
  if (status != 0 || t->closing) {
    cb = t->connected;
    t->connected = NULL;
    if (cb) /* NULL: the handshake deadline already reported */
      cb(req, status ? status : UV_ECANCELED);
    return;
  }
  uv_tcp_nodelay(&c->h.tcp, 1);
  start_handshake(t);
}

static int tls_connect(struct sl_conn *c, const struct sl_endpoint *ep,
                       uv_connect_cb cb) {
  struct sl_tls *tls = ep->tls;
  struct tls_conn *t = tls_conn_new(c, tls);
  if (t == NULL)
    return UV_ENOMEM;
  SSL_set_connect_state(t->ssl);
  if (tls->host[0] && !tls->host_is_ip)
    SSL_set_tlsext_host_name(t->ssl, tls->host);
  if (tls->verify_peer && tls->host[0] &&
      (tls->host_is_ip
           ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), tls->host)
           : SSL_set1_host(t->ssl, tls->host)) != 1)
    return UV_EINVAL;
  t->connected = cb;
  uv_timer_start(&t->timer, on_timer, tls->handshake_ms, 0);
  return sl_transport_tcp.connect(c, ep, on_tcp_connect);
}

static int tls_read_start(struct sl_conn *c, uv_alloc_cb alloc,
                          uv_read_cb cb) {
  struct tls_conn *t = c->tls;
  if (t == NULL) /* not connected yet (a name being looked up) */
    return UV_ENOTCONN;
  t->alloc = alloc;
  t->read = cb;
  t->reading = 1;
  if (t->phase == TLS_FAILED ||
      (t->phase == TLS_ESTABLISHED &&
       (SSL_pending(t->ssl) || BIO_ctrl_pending(t->in) || t->eof)))
    uv_timer_start(&t->timer, on_timer, 0, 0); /* not from inside conn.c */
  tcp_reading(t);
  return 0;
}

static void tls_read_stop(struct sl_conn *c) {
  struct tls_conn *t = c->tls;
  if (t == NULL)
    return;
  t->reading = 0;
  if (t->phase == TLS_ESTABLISHED)
    uv_timer_stop(&t->timer);
  tcp_reading(t);
}

static int tls_write(struct sl_conn *c, uv_write_t *req, const uv_buf_t *b,
                     uv_write_cb cb) {
  struct tls_conn *t = c->tls;
  struct queued *q;
  if (t == NULL)
    return UV_ENOTCONN;
  switch (t->phase) {
  case TLS_ESTABLISHED:
    return seal(t, req, b, cb);
  case TLS_FAILED:
    return UV_EPROTO;
  case TLS_CONNECTING:
  case TLS_HANDSHAKE:
    break;
  }
  if ((q = malloc(sizeof(*q))) == NULL)
    return UV_ENOMEM;
  q->next = NULL;
  q->req = req;
  q->buf = *b;
  q->cb = cb;
  *t->tail = q;
  t->tail = &q->next;
  t->queued_bytes += b->len;
  return 0;
}

static size_t tls_write_queue_size(const struct sl_conn *c) {
  const struct tls_conn *t = c->tls;
  return c->h.stream.write_queue_size + (t ? t->queued_bytes : 0);
}

static void on_tcp_closed(uv_handle_t *h) {
  struct sl_conn *c = h->data;
  struct tls_conn *t = c->tls;
  uv_close_cb cb = t->closed;
  c->tls = NULL;
  SSL_free(t->ssl); /* and its BIOs */
  tls_unref(t->tls);
  free(t);
  cb(h);
}

static void on_timer_closed(uv_handle_t *h) {
  struct tls_conn *t = h->data;
  struct queued *q;
  /* writes never sent end like libuv's queued ones: cancelled */
  while ((q = t->queue) != NULL) {
    t->queue = q->next;
    q->cb(q->req, UV_ECANCELED);
    free(q);
  }
  t->queued_bytes = 0;
  uv_close(&t->c->h.handle, on_tcp_closed);
}

static void tls_close(struct sl_conn *c, uv_close_cb cb) {
  struct tls_conn *t = c->tls;
  if (t == NULL) { /* accept failed before TLS began */
    uv_close(&c->h.handle, cb);
    return;
  }
  t->closing = 1;
  t->reading = 0;
  t->closed = cb;
  if (t->phase == TLS_ESTABLISHED) {
    ERR_clear_error();
    SSL_shutdown(t->ssl); /* close_notify, best effort */
    flush(t, NULL, NULL);
  }
  tcp_reading(t);
  uv_close((uv_handle_t *)&t->timer, on_timer_closed);
}

const char *sl_conn_peer_identity(const struct sl_conn *c) {
  const struct tls_conn *t = c->tls;
  if (c->tp != &sl_transport_tls || t == NULL ||
      t->phase != TLS_ESTABLISHED || t->identity[0] == '\0')
    return NULL;
  return t->identity;
}

static void tls_opened(struct sl_conn *c) {
  sl_transport_tcp.opened(c); /* TCP_NODELAY */
}

static int tls_parse(struct sl_endpoint *ep) {
  return sl_transport_tcp.parse(ep);
}

static int tls_listen(struct sl_listener *l, uv_loop_t *loop,
                      uv_connection_cb cb) {
  return sl_transport_tcp.listen(l, loop, cb);
}

static int tls_init(uv_loop_t *loop, struct sl_conn *c) {
  return sl_transport_tcp.init(loop, c);
}

const struct sl_transport_ops sl_transport_tls = {
    .name = "tls",
    .parse = tls_parse,
    .listen = tls_listen,
    .init = tls_init,
    .accept = tls_accept,
    .connect = tls_connect,
    .opened = tls_opened,
    .read_start = tls_read_start,
    .read_stop = tls_read_stop,
    .write = tls_write,
    .write_queue_size = tls_write_queue_size,
    .close = tls_close,
};
