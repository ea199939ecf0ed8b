/* unix.c - the unix socket transport: path endpoints, bind (replacing a
 * stale socket file, removing ours at stop), listen, accept and connect;
 * the stream itself is stream.c's. See transport.h. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "transport.h"

static int unix_parse(struct sl_endpoint *ep) {
  struct sockaddr_un sa;
  if (ep->address[0] == '\0')
    return UV_EINVAL;
  if (strlen(ep->address) >= sizeof(sa.sun_path))
    return UV_ENAMETOOLONG;
  return 0;
}

static int unix_listen(struct sl_listener *l, uv_loop_t *loop,
                       uv_connection_cb cb) {
  struct stat st;
  int rc;
  uv_pipe_init(loop, &l->h.pipe, 0);
  /* a socket file left by a previous run would make bind fail */
  if (stat(l->ep.address, &st) == 0 && S_ISSOCK(st.st_mode))
    unlink(l->ep.address);
  rc = uv_pipe_bind(&l->h.pipe, l->ep.address);
  if (rc == 0)
    rc = uv_listen(&l->h.stream, 511, cb);
  return rc;
}

static void unix_unlisten(struct sl_listener *l) {
  if (l->bound) /* not someone else's socket that made our bind fail */
    unlink(l->ep.address);
}

static int unix_init(uv_loop_t *loop, struct sl_conn *c) {
  return uv_pipe_init(loop, &c->h.pipe, 0);
}

static int unix_accept(struct sl_listener *l, struct sl_conn *c) {
  int rc = uv_accept(&l->h.stream, &c->h.stream);
  if (rc == 0)
    snprintf(c->peer, sizeof(c->peer), "unix:%s", l->ep.address);
  return rc;
}

static int unix_connect(struct sl_conn *c, const struct sl_endpoint *ep,
                        uv_connect_cb cb) {
  uv_pipe_connect(&c->connect_req, &c->h.pipe, ep->address, cb);
  return 0; /* failures come through cb */
}

const struct sl_transport_ops sl_transport_unix = {
    .name = "unix",
    .parse = unix_parse,
    .listen = unix_listen,
    .unlisten = unix_unlisten,
    .init = unix_init,
    .accept = unix_accept,
    .connect = unix_connect,
    .read_start = sl_stream_read_start,
    .read_stop = sl_stream_read_stop,
    .write = sl_stream_write,
    .write_queue_size = sl_stream_write_queue_size,
    .try_write = sl_stream_try_write,
    .close = sl_stream_close,
};
