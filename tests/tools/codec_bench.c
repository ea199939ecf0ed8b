/* codec_bench.c - the msgpack write paths, N encodes of one typical input,
 * for counting instructions under callgrind rather than timing a shared,
 * noisy machine (tests/bench/codec.sh runs it):
 *
 *   valgrind --tool=callgrind --toggle-collect=run_case \
 *     build/tools/codec_bench CASE N
 *
 * and divide the instructions collected by N. CASE is one of
 *   event  the canonical event writer (id, topic, key, time, headers, payload)
 *   json   a 160-byte JSON object to msgpack (yajl included)
 *   lua    a Lua table of the same object to msgpack (luacodec)
 *   ack    one ack: a uint as the native input writes it
 *   puts   one value of every type through the sl_codec_put_* writers
 * Each run checks its output against the first encode, so a broken writer
 * is not measured as a fast one. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json.h"
#include "luacodec.h"

#define S(lit) ((struct sl_str){lit, sizeof(lit) - 1})

static const char json_text[] =
    "{\"user\":\"alice\",\"id\":4242,\"amount\":12.5,\"ok\":true,"
    "\"tags\":[\"new\",\"eu\",\"mobile\"],\"note\":null,"
    "\"address\":{\"city\":\"Lyon\",\"zip\":\"69001\"},"
    "\"ts\":1700000000123,\"delta\":-17,\"ratio\":0.3333}";

static const char lua_value[] =
    "return {user='alice', id=4242, amount=12.5, ok=true,"
    " tags={'new','eu','mobile'}, address={city='Lyon', zip='69001'},"
    " ts=1700000000123, delta=-17, ratio=0.3333}";

struct bench {
  struct sl_buf out;
  struct sl_buf payload, headers;
  lua_State *L;
  uint64_t ack;
};

static int encode_puts(struct sl_buf *b) {
  static const char long_str[] = "a string of forty bytes, give or take..";
  int rc = 0;

  rc |= sl_codec_put_map(b, 2);
  rc |= sl_codec_put_str(b, "values", 6);
  rc |= sl_codec_put_array(b, 12);
  rc |= sl_codec_put_nil(b);
  rc |= sl_codec_put_bool(b, 1);
  rc |= sl_codec_put_int(b, 7);
  rc |= sl_codec_put_int(b, -100000);
  rc |= sl_codec_put_uint(b, 1700000000123u);
  rc |= sl_codec_put_double(b, 12.5);
  rc |= sl_codec_put_float(b, 0.25f);
  rc |= sl_codec_put_str(b, "alice", 5);
  rc |= sl_codec_put_str(b, long_str, sizeof long_str - 1);
  rc |= sl_codec_put_bin(b, "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a", 10);
  rc |= sl_codec_put_ext(b, 1, "\0\0\0\1", 4);
  rc |= sl_codec_put_array(b, 0);
  rc |= sl_codec_put_str(b, "n", 1);
  rc |= sl_codec_put_int(b, 300);
  return rc;
}

/* One encode of the case; 0 or an error. Not inlined: callgrind collects
 * inside it only. */
__attribute__((noinline)) static int run_case(struct bench *bn, char c) {
  uint32_t offs[3];
  char err[128];

  sl_buf_reset(&bn->out);
  switch (c) {
  case 'e':
    return sl_codec_write_event(
        &bn->out, S("01HGW2N7XKQ4W8Z2Y6V3T5R9PA"), S("orders.created"),
        S("user-42"), 1700000000123, bn->headers.data, bn->headers.len,
        bn->payload.data, bn->payload.len, offs);
  case 'j':
    return sl_json_to_msgpack(json_text, sizeof json_text - 1, &bn->out, err,
                              sizeof err);
  case 'l':
    sl_luacodec_encode(bn->L, 1, &bn->out, NULL);
    return 0;
  case 'a':
    return sl_codec_put_uint(&bn->out, bn->ack);
  case 'p':
    return encode_puts(&bn->out);
  }
  return -1;
}

int main(int argc, char **argv) {
  struct bench bn;
  struct sl_buf first;
  char err[128];
  long i, n;
  char c;

  if (argc != 3 || strchr("ejlap", argv[1][0]) == NULL) {
    fprintf(stderr, "usage: codec_bench event|json|lua|ack|puts N\n");
    return 2;
  }
  c = argv[1][0];
  n = atol(argv[2]);
  memset(&bn, 0, sizeof bn);
  sl_buf_init(&bn.out);
  sl_buf_init(&first);
  sl_buf_init(&bn.payload);
  sl_buf_init(&bn.headers);
  bn.ack = 123456;
  if (sl_json_to_msgpack(json_text, sizeof json_text - 1, &bn.payload, err,
                         sizeof err) != 0 ||
      sl_codec_put_map(&bn.headers, 1) != 0 ||
      sl_codec_put_str(&bn.headers, "traceparent", 11) != 0 ||
      sl_codec_put_str(&bn.headers,
                       "00-4bf92f3577b34da6a3ce929d0e0e4736-"
                       "00f067aa0ba902b7-01",
                       55) != 0) {
    fprintf(stderr, "codec_bench: setup failed\n");
    return 1;
  }
  bn.L = luaL_newstate();
  luaL_openlibs(bn.L);
  if (luaL_dostring(bn.L, lua_value) != 0) {
    fprintf(stderr, "codec_bench: %s\n", lua_tostring(bn.L, -1));
    return 1;
  }
  if (run_case(&bn, c) != 0 ||
      sl_buf_append(&first, bn.out.data, bn.out.len) != 0) {
    fprintf(stderr, "codec_bench: first encode failed\n");
    return 1;
  }
  for (i = 0; i < n; i++) {
    if (run_case(&bn, c) != 0 || bn.out.len != first.len ||
        memcmp(bn.out.data, first.data, first.len) != 0) {
      fprintf(stderr, "codec_bench: encode %ld differs\n", i);
      return 1;
    }
  }
  printf("%s: %ld encodes of %zu bytes\n", argv[1], n + 1, first.len);
  lua_close(bn.L);
  sl_buf_close(&bn.out);
  sl_buf_close(&first);
  sl_buf_close(&bn.payload);
  sl_buf_close(&bn.headers);
  return 0;
}
