/* redis.c - hiredis 0.14's async client on a libuv loop, never blocking it:
 * names resolved off the loop, replies bounded. See redis.h. */
#include "redis.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>

/* ---- bounded replies --------------------------------------------------- */

static void *guard_string(const redisReadTask *t, char *s, size_t n) {
  struct sl_redis_dial *d = t->privdata;
  if (n > d->limits.max_bulk) {
    snprintf(d->refused, sizeof(d->refused), "reply larger than %zu bytes",
             d->limits.max_bulk);
    return NULL; /* the reader fails: the connection drops */
  }
  return d->orig->createString(t, s, n);
}

static void *guard_array(const redisReadTask *t, int n) {
  struct sl_redis_dial *d = t->privdata;
  if (n < 0 || (size_t)n > d->limits.max_elements) {
    snprintf(d->refused, sizeof(d->refused),
             "reply array of more than %zu elements", d->limits.max_elements);
    return NULL;
  }
  return d->orig->createArray(t, n);
}

/* The adapter's poll callback, fixed, then a look at the unread bytes.
 * 0.14's adapter ignores a poll error: a refused connect (EPOLLERR) then
 * stops the handle and hiredis never learns, so the connection hangs for
 * ever; here hiredis handles what it waited for and finds the error. A
 * string is only handed to the hooks once all of it arrived, so a server
 * sending a huge one is stopped here, before the buffer holds all of it. */
static void guarded_poll(uv_poll_t *h, int status, int events) {
  redisLibuvEvents *p = h->data;
  redisAsyncContext *ac = p->context;
  redisReader *r;
  const struct sl_redis_dial *d;
  int ev = status ? p->events : events;
  if (p->context && (ev & UV_READABLE))
    redisAsyncHandleRead(p->context);
  if (p->context && (ev & UV_WRITABLE))
    redisAsyncHandleWrite(p->context);
  if (p->context != ac || ac == NULL || (r = ac->c.reader) == NULL)
    return; /* freed inside */
  d = r->privdata;
  if (d && r->len - r->pos > d->limits.max_bulk + 65536) {
    ac->c.err = REDIS_ERR_OTHER;
    snprintf(ac->c.errstr, sizeof(ac->c.errstr),
             "reply larger than %zu bytes", d->limits.max_bulk);
    ac->err = ac->c.err;
    ac->errstr = ac->c.errstr;
    redisAsyncFree(ac);
  }
}

static void poll_update(redisLibuvEvents *p) {
  if (p->events)
    uv_poll_start(&p->handle, p->events, guarded_poll);
  else
    uv_poll_stop(&p->handle);
}

static void add_read(void *data) {
  redisLibuvEvents *p = data;
  p->events |= UV_READABLE;
  poll_update(p);
}

static void del_read(void *data) {
  redisLibuvEvents *p = data;
  p->events &= ~UV_READABLE;
  poll_update(p);
}

static void add_write(void *data) {
  redisLibuvEvents *p = data;
  p->events |= UV_WRITABLE;
  poll_update(p);
}

static void del_write(void *data) {
  redisLibuvEvents *p = data;
  p->events &= ~UV_WRITABLE;
  poll_update(p);
}

/* ---- connecting -------------------------------------------------------- */

static void open_ctx(struct sl_redis_dial *d, const char *ip, int port,
                     const char *path) {
  redisAsyncContext *ac = path ? redisAsyncConnectUnix(path)
                               : redisAsyncConnect(ip, port);
  static char why[160];
  if (ac == NULL) {
    d->cb(d, NULL, "out of memory");
    return;
  }
  if (ac->err) {
    snprintf(why, sizeof(why), "%s", ac->errstr);
    redisAsyncFree(ac);
    d->cb(d, NULL, why);
    return;
  }
  if (redisLibuvAttach(ac, d->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    d->cb(d, NULL, "cannot watch the connection");
    return;
  }
  ac->ev.addRead = add_read;
  ac->ev.delRead = del_read;
  ac->ev.addWrite = add_write;
  ac->ev.delWrite = del_write;
  d->refused[0] = '\0';
  d->orig = ac->c.reader->fn;
  d->fn = *d->orig;
  d->fn.createString = guard_string;
  d->fn.createArray = guard_array;
  ac->c.reader->fn = &d->fn;
  ac->c.reader->privdata = d;
  ac->data = d->data;
  redisAsyncSetConnectCallback(ac, d->on_connect);
  redisAsyncSetDisconnectCallback(ac, d->on_disconnect);
  d->cb(d, ac, NULL);
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  struct sl_redis_dial *d = req->data;
  char ip[64] = "";
  char why[160];
  d->resolving = 0;
  if (d->cancelled) {
    uv_freeaddrinfo(res);
    return;
  }
  if (status == 0 && res) {
    if (res->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, ip, sizeof(ip));
    else
      uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof(ip));
  }
  uv_freeaddrinfo(res);
  if (ip[0] == '\0') {
    snprintf(why, sizeof(why), "cannot resolve the host: %s",
             uv_strerror(status ? status : UV_EAI_NONAME));
    d->cb(d, NULL, why);
    return;
  }
  open_ctx(d, ip, d->port, NULL);
}

void sl_redis_dial(struct sl_redis_dial *d, uv_loop_t *loop,
                   const char *address, sl_redis_dial_cb cb) {
  struct addrinfo hints;
  unsigned char bin[16];
  char host[256], port[8], why[160];
  const char *colon = strrchr(address, ':');
  size_t hl;
  int rc;
  d->loop = loop;
  d->cb = cb;
  d->cancelled = 0;
  if (strchr(address, '/') || colon == NULL) {
    open_ctx(d, NULL, 0, address);
    return;
  }
  hl = (size_t)(colon - address);
  if (address[0] == '[' && hl >= 2 && address[hl - 1] == ']') {
    address++; /* [v6]:port */
    hl -= 2;
  }
  if (hl == 0 || hl >= sizeof(host) || strlen(colon + 1) >= sizeof(port)) {
    cb(d, NULL, "bad address");
    return;
  }
  memcpy(host, address, hl);
  host[hl] = '\0';
  snprintf(port, sizeof(port), "%s", colon + 1);
  d->port = atoi(port);
  if (inet_pton(AF_INET, host, bin) == 1 || inet_pton(AF_INET6, host, bin) == 1) {
    open_ctx(d, host, d->port, NULL); /* numeric: hiredis does not block */
    return;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  d->req.data = d;
  rc = uv_getaddrinfo(loop, &d->req, on_resolved, host, port, &hints);
  if (rc != 0) {
    snprintf(why, sizeof(why), "cannot resolve the host: %s", uv_strerror(rc));
    cb(d, NULL, why);
    return;
  }
  d->resolving = 1;
}

void sl_redis_dial_cancel(struct sl_redis_dial *d) {
  if (d->resolving) {
    d->cancelled = 1;
    uv_cancel((uv_req_t *)&d->req);
  }
}

const char *sl_redis_error(const redisAsyncContext *ac, const redisReply *r) {
  const struct sl_redis_dial *d;
  if (r && r->type == REDIS_REPLY_ERROR && r->str)
    return r->str;
  if (r)
    return "unexpected reply";
  d = ac && ac->c.reader ? ac->c.reader->privdata : NULL;
  if (d && d->refused[0])
    return d->refused; /* hiredis says "Out of memory" */
  if (ac && ac->errstr && ac->errstr[0])
    return ac->errstr;
  return "connection lost";
}

int sl_redis_transient(const redisReply *r) {
  /* NOAUTH, WRONGPASS and redis 7's protocol errors for an
   * unauthenticated client ("unauthenticated multibulk length", "...
   * bulk length": its long command, then it closes) are about the
   * connection, not the event: it can go once the server lets us in.
   * Other protocol errors are about the command: "invalid bulk length" is
   * an event with a field over the server's proto-max-bulk-len, which no
   * retry gets in (taken as transient, it wedged the output for good) */
  static const char *const words[] = {
      "LOADING",    "OOM",       "READONLY",
      "BUSY",       "MASTERDOWN", "TRYAGAIN",
      "CLUSTERDOWN", "NOREPLICAS", "NOAUTH",
      "WRONGPASS",  "ERR Protocol error: unauthenticated", NULL};
  int i;
  if (r == NULL || r->type != REDIS_REPLY_ERROR || r->str == NULL)
    return 1;
  for (i = 0; words[i]; i++)
    if (strncmp(r->str, words[i], strlen(words[i])) == 0)
      return 1;
  return 0;
}
