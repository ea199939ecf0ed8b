/* redis.h - what the redis input and output share: connecting hiredis 0.14's
 * async client on a libuv loop without ever blocking it, and bounding what
 * a server may make it allocate. hiredis 0.14 resolves a host name with a
 * blocking getaddrinfo inside redisAsyncConnect, so names are resolved here
 * first (uv_getaddrinfo) and hiredis only ever sees a numeric address. Its
 * reader has no limit on reply sizes (0.14 has no maxelements; maxbuf is
 * only when an idle buffer is freed), so a dial installs reply hooks that
 * refuse a bulk string or an array beyond the limits (the reader then fails
 * and the connection drops, like any other error), and the poll callback
 * drops a connection whose unread buffer grows beyond them. */
#ifndef SL_NET_REDIS_H
#define SL_NET_REDIS_H

#include <stddef.h>
#include <uv.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

struct sl_redis_dial;

/* Connected (ac set, status 0) or failed (ac NULL, why says what). An ac
 * handed over is the caller's: its connect callback was already set and
 * will report the TCP connect. */
typedef void (*sl_redis_dial_cb)(struct sl_redis_dial *d,
                                 redisAsyncContext *ac, const char *why);

struct sl_redis_limits {
  size_t max_bulk;     /* one string in a reply */
  size_t max_elements; /* one array in a reply */
};

struct sl_redis_dial {
  uv_getaddrinfo_t req;
  uv_loop_t *loop;
  int resolving;   /* req in flight: keep d alive until it ends */
  int cancelled;   /* its callback is not to be called */
  int port;
  sl_redis_dial_cb cb;
  redisConnectCallback *on_connect;
  redisDisconnectCallback *on_disconnect;
  void *data;      /* set as ac->data */
  struct sl_redis_limits limits;
  char refused[64];  /* what a guard refused, for the error's text */
  redisReplyObjectFunctions fn; /* the guarded reply hooks */
  const redisReplyObjectFunctions *orig;
};

/* Start connecting to address: "host:port" (a name is resolved off the
 * loop) or a unix socket path (anything with a '/'). cb runs once, from
 * here or from the loop. The dial must stay valid while d->resolving. */
void sl_redis_dial(struct sl_redis_dial *d, uv_loop_t *loop,
                   const char *address, sl_redis_dial_cb cb);

/* Forget a dial in flight: its callback will not run. */
void sl_redis_dial_cancel(struct sl_redis_dial *d);

/* The text of an error reply, or of what a NULL reply means. */
const char *sl_redis_error(const redisAsyncContext *ac, const redisReply *r);

/* Is an error reply one a later attempt may not get (the server is
 * loading, out of memory, a replica, or does not let this connection in:
 * NOAUTH)? */
int sl_redis_transient(const redisReply *r);

#endif
