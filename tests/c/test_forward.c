/* test_forward.c - the Fluent forward wire format (engine/codec/forward.c):
 * frames of each mode, entries and their times, options, what is refused,
 * the bound on inflating, and the handshake digest against a known value. */
#include "test.h"

#include "forward.h"

/* A frame built with the codec's writers; entries with time t. */
static void put_record(struct sl_buf *b, int k) {
  sl_codec_put_map(b, 1);
  sl_codec_put_str(b, "k", 1);
  sl_codec_put_int(b, k);
}

static void packed_entries(struct sl_buf *b, int n) {
  int i;
  for (i = 0; i < n; i++) {
    sl_codec_put_array(b, 2);
    sl_codec_put_int(b, 1700000000 + i);
    put_record(b, i);
  }
}

TEST(frame_message_with_event_time_and_chunk) {
  struct sl_buf b;
  struct sl_forward_frame f;
  struct sl_forward_entry e;
  uint8_t et[8] = {0x65, 0x53, 0xf1, 0x00, 0x00, 0x00, 0x00, 0x2a};
  size_t pos = 0;
  sl_buf_init(&b);
  sl_codec_put_array(&b, 4);
  sl_codec_put_str(&b, "app.log", 7);
  sl_codec_put_ext(&b, 0, et, 8);
  put_record(&b, 7);
  sl_codec_put_map(&b, 2);
  sl_codec_put_str(&b, "chunk", 5);
  sl_codec_put_str(&b, "abc", 3);
  sl_codec_put_str(&b, "extra", 5); /* other keys are allowed */
  sl_codec_put_nil(&b);
  CHECK(sl_forward_parse_frame(b.data, b.len, &f, NULL) == 0);
  CHECK(f.mode == SL_FORWARD_MESSAGE && f.count == 1 && !f.gzip);
  CHECK(f.tag.len == 7 && memcmp(f.tag.p, "app.log", 7) == 0);
  CHECK(f.chunk.len == 3 && memcmp(f.chunk.p, "abc", 3) == 0);
  CHECK(sl_forward_next_entry(f.entries, f.entries_len, &pos, 0, &e, NULL) ==
        0);
  CHECK(e.time == 0x6553f100LL * 1000000000 + 42);
  CHECK(pos == f.entries_len && e.record_len == 4);
  sl_buf_close(&b);
}

TEST(frame_forward_and_packed_read_every_entry) {
  struct sl_buf b, ent;
  struct sl_forward_frame f;
  struct sl_forward_entry e;
  size_t pos = 0;
  int n = 0;
  sl_buf_init(&b);
  sl_buf_init(&ent);
  packed_entries(&ent, 3);
  sl_codec_put_array(&b, 2);
  sl_codec_put_str(&b, "t", 1);
  sl_codec_put_array(&b, 3);
  sl_buf_append(&b, ent.data, ent.len);
  CHECK(sl_forward_parse_frame(b.data, b.len, &f, NULL) == 0);
  CHECK(f.mode == SL_FORWARD_FORWARD && f.count == 3 && f.chunk.p == NULL);
  while (pos < f.entries_len) {
    CHECK(sl_forward_next_entry(f.entries, f.entries_len, &pos, 1, &e,
                                NULL) == 0);
    CHECK(e.time == (1700000000LL + n) * 1000000000);
    n++;
  }
  CHECK(n == 3);
  sl_buf_reset(&b);
  sl_codec_put_array(&b, 3);
  sl_codec_put_str(&b, "t", 1);
  sl_codec_put_bin(&b, ent.data, ent.len);
  sl_codec_put_map(&b, 1);
  sl_codec_put_str(&b, "size", 4);
  sl_codec_put_uint(&b, 3);
  CHECK(sl_forward_parse_frame(b.data, b.len, &f, NULL) == 0);
  CHECK(f.mode == SL_FORWARD_PACKED && f.has_size && f.size == 3);
  CHECK(f.entries_len == ent.len &&
        memcmp(f.entries, ent.data, ent.len) == 0);
  sl_buf_close(&b);
  sl_buf_close(&ent);
}

TEST(frame_refuses_wrong_shapes_with_a_reason) {
  struct sl_buf b;
  struct sl_forward_frame f;
  struct sl_codec_error err;
  sl_buf_init(&b);
  sl_codec_put_array(&b, 2); /* a message without its record */
  sl_codec_put_str(&b, "t", 1);
  sl_codec_put_int(&b, 1);
  CHECK(sl_forward_parse_frame(b.data, b.len, &f, &err) == SL_EPROTO);
  CHECK_STR(err.msg, "message mode frame lacks its record");
  sl_buf_reset(&b);
  sl_codec_put_array(&b, 3); /* gzip on a message */
  sl_codec_put_str(&b, "t", 1);
  sl_codec_put_int(&b, 1);
  put_record(&b, 1);
  b.data[0] = 0x94;
  sl_codec_put_map(&b, 1);
  sl_codec_put_str(&b, "compressed", 10);
  sl_codec_put_str(&b, "gzip", 4);
  CHECK(sl_forward_parse_frame(b.data, b.len, &f, &err) == SL_EPROTO);
  CHECK_STR(err.msg, "compressed is set on a frame that is not packed");
  sl_buf_reset(&b);
  sl_codec_put_array(&b, 3); /* empty tag */
  sl_codec_put_str(&b, "", 0);
  sl_codec_put_int(&b, 1);
  put_record(&b, 1);
  CHECK(sl_forward_parse_frame(b.data, b.len, &f, &err) == SL_EPROTO);
  CHECK_STR(err.msg, "tag is empty");
  sl_buf_close(&b);
}

TEST(entry_refuses_times_out_of_range_and_records_not_maps) {
  struct sl_buf b;
  struct sl_forward_entry e;
  struct sl_codec_error err;
  uint8_t bad_ns[8] = {0, 0, 0, 1, 0x3b, 0x9a, 0xca, 0x00}; /* 1e9 ns */
  size_t pos = 0;
  sl_buf_init(&b);
  sl_codec_put_ext(&b, 0, bad_ns, 8);
  put_record(&b, 1);
  CHECK(sl_forward_next_entry(b.data, b.len, &pos, 0, &e, &err) ==
        SL_EPROTO);
  CHECK(pos == 0 && strstr(err.msg, "time is not") != NULL);
  sl_buf_reset(&b);
  sl_codec_put_int(&b, INT64_MAX / 1000); /* beyond int64 ns */
  put_record(&b, 1);
  CHECK(sl_forward_next_entry(b.data, b.len, &pos, 0, &e, &err) ==
        SL_EPROTO);
  sl_buf_reset(&b);
  sl_codec_put_int(&b, 1);
  sl_codec_put_str(&b, "x", 1);
  CHECK(sl_forward_next_entry(b.data, b.len, &pos, 0, &e, &err) ==
        SL_EPROTO);
  CHECK_STR(err.msg, "record is not a map");
  sl_buf_reset(&b);
  sl_codec_put_double(&b, -1.5); /* before the epoch, as a float */
  put_record(&b, 1);
  CHECK(sl_forward_next_entry(b.data, b.len, &pos, 0, &e, &err) == 0);
  CHECK(e.time == -1500000000LL);
  sl_buf_close(&b);
}

TEST(gunzip_round_trips_members_and_stops_a_bomb_at_its_bound) {
  struct sl_buf in, z, out;
  size_t i;
  sl_buf_init(&in);
  sl_buf_init(&z);
  sl_buf_init(&out);
  for (i = 0; i < 100000; i++)
    sl_buf_putc(&in, (uint8_t)(i * 7));
  CHECK(sl_forward_gzip(in.data, in.len, &z) == 0);
  CHECK(sl_forward_gzip(in.data, 10, &z) == 0); /* a second member */
  CHECK(sl_forward_gunzip(z.data, z.len, 1 << 20, &out) == 0);
  CHECK(out.len == in.len + 10);
  CHECK(memcmp(out.data, in.data, in.len) == 0);
  CHECK(memcmp(out.data + in.len, in.data, 10) == 0);
  CHECK(sl_forward_gunzip(z.data, z.len - 5, 1 << 20, &out) == SL_EPROTO);
  CHECK(sl_forward_gunzip((const uint8_t *)"plain", 5, 1 << 20, &out) ==
        SL_EPROTO);
  /* 64 MiB of zeros is ~64 KiB of gzip; inflating stops near the bound */
  sl_buf_reset(&in);
  sl_buf_reset(&z);
  CHECK(sl_buf_reserve(&in, 64u << 20) == 0);
  memset(in.data, 0, 64u << 20);
  in.len = 64u << 20;
  CHECK(sl_forward_gzip(in.data, in.len, &z) == 0);
  CHECK(z.len < (1u << 20));
  CHECK(sl_forward_gunzip(z.data, z.len, 1 << 20, &out) == SL_E2BIG);
  CHECK(out.cap <= 2 * ((1u << 20) + 65536)); /* the buffer doubles */
  sl_buf_close(&in);
  sl_buf_close(&z);
  sl_buf_close(&out);
}

TEST(digest_is_the_sha512_hex_of_the_parts) {
  struct sl_str parts[2] = {{"a", 1}, {"bc", 2}};
  char hex[129];
  CHECK(sl_forward_digest(hex, parts, 2) == 0);
  /* sha512("abc") */
  CHECK_STR(hex, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b"
                 "55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9a"
                 "c94fa54ca49f");
  CHECK(sl_forward_digest_equal(hex, hex, 128));
}
