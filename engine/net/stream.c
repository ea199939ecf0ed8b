/* stream.c - the plain libuv stream half of a transport, shared by tcp and
 * unix (a TLS transport reads and writes through its own engine instead);
 * see transport.h. */
#include "transport.h"

int sl_stream_read_start(struct sl_conn *c, uv_alloc_cb alloc, uv_read_cb cb) {
  return uv_read_start(&c->h.stream, alloc, cb);
}

void sl_stream_read_stop(struct sl_conn *c) {
  uv_read_stop(&c->h.stream);
}

int sl_stream_write(struct sl_conn *c, uv_write_t *req, const uv_buf_t *b,
                    uv_write_cb cb) {
  return uv_write(req, &c->h.stream, b, 1, cb);
}

int sl_stream_try_write(struct sl_conn *c, const uv_buf_t *b) {
  return uv_try_write(&c->h.stream, b, 1);
}

size_t sl_stream_write_queue_size(const struct sl_conn *c) {
  return c->h.stream.write_queue_size;
}

void sl_stream_close(struct sl_conn *c, uv_close_cb cb) {
  uv_close(&c->h.handle, cb);
}
