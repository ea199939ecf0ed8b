/* tcp.c - the tcp transport: "host:port" endpoints, bind, listen, accept,
 * connect, TCP_NODELAY and peer names; the stream itself is stream.c's.
 * See transport.h. */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "transport.h"

static int tcp_parse(struct sl_endpoint *ep) {
  int port;
  if (sl_config_split_hostport(ep->address, ep->host, sizeof(ep->host),
                               &port) != 0)
    return UV_EINVAL;
  snprintf(ep->port, sizeof(ep->port), "%d", port);
  if (uv_ip4_addr(ep->host, port, (struct sockaddr_in *)&ep->ss) == 0 ||
      uv_ip6_addr(ep->host, port, (struct sockaddr_in6 *)&ep->ss) == 0)
    return 0;
  memset(&ep->ss, 0, sizeof(ep->ss)); /* the failed parses wrote to it */
  ep->resolve = 1; /* a name: sl_conn_connect resolves it */
  if (strcmp(ep->host, "localhost") == 0) /* what listeners bind */
    uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)&ep->ss);
  return 0;
}

static int tcp_listen(struct sl_listener *l, uv_loop_t *loop,
                      uv_connection_cb cb) {
  int rc;
  uv_tcp_init(loop, &l->h.tcp);
  if (l->ep.ss.ss_family == AF_UNSPEC)
    return UV_EADDRNOTAVAIL; /* a host name: listeners take addresses */
  rc = uv_tcp_bind(&l->h.tcp, (const struct sockaddr *)&l->ep.ss, 0);
  if (rc == 0)
    rc = uv_listen(&l->h.stream, 511, cb);
  return rc;
}

static int tcp_init(uv_loop_t *loop, struct sl_conn *c) {
  return uv_tcp_init(loop, &c->h.tcp);
}

static void peer_name(struct sl_conn *c) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  char ip[INET6_ADDRSTRLEN + 1];

  if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) != 0) {
    snprintf(c->peer, sizeof(c->peer), "unknown");
    return;
  }
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "[%s]:%d", ip,
             ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip,
             ntohs(((struct sockaddr_in *)&ss)->sin_port));
  }
}

static int tcp_accept(struct sl_listener *l, struct sl_conn *c) {
  int rc = uv_accept(&l->h.stream, &c->h.stream);
  if (rc == 0)
    peer_name(c);
  return rc;
}

static int tcp_connect(struct sl_conn *c, const struct sl_endpoint *ep,
                       uv_connect_cb cb) {
  return uv_tcp_connect(&c->connect_req, &c->h.tcp,
                        (const struct sockaddr *)&ep->ss, cb);
}

static void tcp_opened(struct sl_conn *c) {
  uv_tcp_nodelay(&c->h.tcp, 1); /* events and acks are small */
}

const struct sl_transport_ops sl_transport_tcp = {
    .name = "tcp",
    .parse = tcp_parse,
    .listen = tcp_listen,
    .init = tcp_init,
    .accept = tcp_accept,
    .connect = tcp_connect,
    .opened = tcp_opened,
    .read_start = sl_stream_read_start,
    .read_stop = sl_stream_read_stop,
    .write = sl_stream_write,
    .write_queue_size = sl_stream_write_queue_size,
    .try_write = sl_stream_try_write,
    .close = sl_stream_close,
};
