/* fuzz_forward.c - libFuzzer target for engine/codec/forward.c, the parser
 * the forward input runs on every byte a sender writes. Walks the input as
 * a stream of frames the way the input does (measure, parse, inflate, read
 * every entry) and checks the parser's promises: spans stay inside what
 * was measured, inflating never passes its bound, a record is a complete
 * map, a Forward frame holds the entries it declares, gzip round-trips.
 * Build with `make fuzz`; `make test` runs it for a few seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "fuzz.h"

#define LIMIT (64u * 1024)


/* Read every entry; the number read, or -1 when one was refused. */
static long entries(const uint8_t *e, size_t len, int wrapped) {
  struct sl_forward_entry ent;
  struct sl_codec_error err;
  size_t pos = 0, used, prev;
  uint32_t n;
  long got = 0;
  while (pos < len) {
    prev = pos;
    if (sl_forward_next_entry(e, len, &pos, wrapped, &ent, &err) != 0) {
      ASSERT(pos == prev && err.offset <= len);
      return -1;
    }
    got++;
    ASSERT(pos > prev && pos <= len);
    ASSERT(ent.record >= e && ent.record + ent.record_len <= e + len);
    ASSERT(sl_codec_read_map(ent.record, ent.record_len, &n, &used) == 0);
    ASSERT(sl_codec_skip(ent.record, ent.record_len, ent.record_len, &used,
                         NULL) == 0 && used == ent.record_len);
    if (!wrapped)
      return got; /* a Message frame has one */
  }
  return got;
}

static void frame(const uint8_t *p, size_t len, struct sl_buf *out,
                  struct sl_buf *again) {
  struct sl_forward_frame f;
  struct sl_codec_error err;
  int rc;
  if (sl_forward_parse_frame(p, len, &f, &err) != 0) {
    ASSERT(err.offset <= len);
    return;
  }
  ASSERT(f.tag.len > 0 && (const uint8_t *)f.tag.p >= p &&
         (const uint8_t *)f.tag.p + f.tag.len <= p + len);
  ASSERT(f.entries >= p && f.entries + f.entries_len <= p + len);
  if (!f.gzip) {
    long got =
        entries(f.entries, f.entries_len, f.mode != SL_FORWARD_MESSAGE);
    /* the entries span holds exactly the entries the array declared */
    if (f.mode == SL_FORWARD_FORWARD && got >= 0)
      ASSERT((uint64_t)got == f.count);
    return;
  }
  rc = sl_forward_gunzip(f.entries, f.entries_len, LIMIT, out);
  ASSERT(rc == 0 || rc == SL_E2BIG || rc == SL_EPROTO);
  ASSERT(out->len <= LIMIT + 64 * 1024);
  if (rc != 0)
    return;
  ASSERT(out->len <= LIMIT);
  entries(out->data, out->len, 1);
  /* what inflated deflates and inflates back to itself */
  sl_buf_reset(again);
  ASSERT(sl_forward_gzip(out->data, out->len, again) == 0);
  {
    struct sl_buf back;
    sl_buf_init(&back);
    ASSERT(sl_forward_gunzip(again->data, again->len, LIMIT, &back) == 0);
    ASSERT(back.len == out->len &&
           (back.len == 0 || memcmp(back.data, out->data, back.len) == 0));
    sl_buf_close(&back);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct sl_buf out, again;
  size_t pos = 0, used, cut;
  sl_buf_init(&out);
  sl_buf_init(&again);
  while (pos < size) {
    int rc = sl_codec_skip(data + pos, size - pos, LIMIT, &used, NULL);
    if (rc != 0)
      break;
    ASSERT(used > 0 && used <= size - pos);
    /* a socket hands the frame over in pieces: no prefix is complete */
    cut = used / 2;
    if (cut > 0)
      ASSERT(sl_codec_skip(data + pos, cut, LIMIT, &used, NULL) != 0 ||
             used <= cut);
    sl_codec_skip(data + pos, size - pos, LIMIT, &used, NULL);
    frame(data + pos, used, &out, &again);
    pos += used;
  }
  sl_buf_close(&out);
  sl_buf_close(&again);
  return 0;
}
