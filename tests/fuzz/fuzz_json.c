/* fuzz_json.c - libFuzzer target for engine/json.c: a text is converted as
 * one value, as a split array and as NDJSON. Every item handed out must be
 * exactly one well-formed msgpack value, items come in line order, a
 * refusal leaves the output as it was, the one-value API agrees with
 * the items API, and a converted value round-trips through JSON exactly.
 * Build with `make fuzz`; `make test` runs it for a few seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json.h"
#include "fuzz.h"


struct seen {
  struct sl_buf *out;
  size_t n, last_line, end;
};

static int on_item(void *data, size_t off, size_t len, size_t index,
                   size_t line, struct sl_json_error *err) {
  struct seen *s = data;
  size_t used;
  struct sl_buf j;
  (void)err;
  ASSERT(index == s->n);
  ASSERT(line >= s->last_line && line >= 1);
  ASSERT(off >= s->end && off + len <= s->out->len);
  ASSERT(sl_codec_skip(s->out->data + off, len, len, &used, NULL) == 0);
  ASSERT(used == len);
  sl_buf_init(&j);
  ASSERT(sl_codec_to_json(s->out->data + off, len, &j) == 0);
  sl_buf_close(&j);
  s->n++;
  s->last_line = line;
  s->end = off + len;
  return 0;
}

/* What the reader wrote survives msgpack -> JSON -> msgpack byte for
 * byte: every marker is read back, and a user's map shaped like a marker
 * is written so that it stays a map. */
static void round_trip(const struct sl_buf *mp) {
  struct sl_buf j, back;
  char msg[160];
  sl_buf_init(&j);
  sl_buf_init(&back);
  ASSERT(sl_codec_to_json(mp->data, mp->len, &j) == 0);
  ASSERT(sl_json_to_msgpack((const char *)j.data, j.len, &back, msg,
                            sizeof(msg)) == 0);
  ASSERT(back.len == mp->len && memcmp(back.data, mp->data, mp->len) == 0);
  sl_buf_close(&j);
  sl_buf_close(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const int modes[] = {0, SL_JSON_SPLIT_ARRAY, SL_JSON_MANY};
  struct sl_json_error err;
  struct sl_buf out, one;
  char msg[160];
  size_t i;
  int rc, rc1;

  for (i = 0; i < 3; i++) {
    struct seen s = {&out, 0, 1, 0};
    sl_buf_init(&out);
    ASSERT(sl_buf_append(&out, "x", 1) == 0); /* kept through a refusal */
    s.end = 1;
    rc = sl_json_items_to_msgpack((const char *)data, size, modes[i], &out,
                                  on_item, &s, &err);
    ASSERT(rc == 0 || rc == SL_EPROTO);
    if (rc != 0) {
      ASSERT(out.len == 1);
      ASSERT(err.msg[0] != '\0');
    }
    if (modes[i] == 0) {
      /* one value: the same verdict and bytes as sl_json_to_msgpack */
      sl_buf_init(&one);
      rc1 = sl_json_to_msgpack((const char *)data, size, &one, msg,
                               sizeof(msg));
      if (size > 0)
        ASSERT((rc == 0) == (rc1 == 0));
      if (rc == 0 && rc1 == 0) {
        ASSERT(s.n == 1);
        ASSERT(one.len == out.len - 1);
        ASSERT(memcmp(one.data, out.data + 1, one.len) == 0);
        round_trip(&one);
      }
      sl_buf_close(&one);
    }
    sl_buf_close(&out);
  }
  return 0;
}
