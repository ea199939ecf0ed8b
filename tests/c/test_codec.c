/* test_codec.c - unit tests for engine/codec.c: the msgpack walker and its
 * limits, event parsing and its messages, canonical encoding, JSON output
 * and the writers. Inputs are written as hex with 'quoted' text. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "codec.h"
#include "test.h"

#define MIB (1024u * 1024u)

/* ---- helpers ----------------------------------------------------------- */

/* "92 01 'ab'" -> 92 01 61 62. Returns the byte count. */
static size_t unhex(const char *s, uint8_t *out) {
  size_t n = 0;
  unsigned v;

  while (*s) {
    if (*s == ' ') {
      s++;
    } else if (*s == '\'') {
      for (s++; *s && *s != '\''; s++)
        out[n++] = (uint8_t)*s;
      if (*s)
        s++;
    } else {
      sscanf(s, "%2x", &v);
      out[n++] = (uint8_t)v;
      s += 2;
    }
  }
  return n;
}

/* Bytes as "92 01 61", for readable failures. */
static const char *hexof(const uint8_t *p, size_t n) {
  static char s[4096];
  size_t i, o = 0;

  for (i = 0; i < n && o + 4 < sizeof s; i++)
    o += (size_t)snprintf(s + o, sizeof s - o, i ? " %02x" : "%02x", p[i]);
  s[o] = '\0';
  return s;
}

static int skip_hex(const char *hex, size_t max, size_t *used,
                    struct sl_codec_error *err) {
  static uint8_t b[4096];
  size_t n = unhex(hex, b);
  return sl_codec_skip(b, n, max, used, err);
}

/* JSON for hex input, or "ERR <code>". */
static const char *json_of(const char *hex) {
  static char s[4096];
  uint8_t b[1024];
  struct sl_buf out;
  size_t n = unhex(hex, b);
  int r;

  sl_buf_init(&out);
  r = sl_codec_to_json(b, n, &out);
  if (r != 0)
    snprintf(s, sizeof s, "ERR %d", r);
  else
    snprintf(s, sizeof s, "%.*s", (int)out.len, (const char *)out.data);
  sl_buf_close(&out);
  return s;
}

static struct sl_str S(const char *s) {
  struct sl_str r = {s, s ? (uint32_t)strlen(s) : 0};
  return r;
}

static int str_is(struct sl_str s, const char *want) {
  return s.p != NULL && s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

/* One of each type family, with the size each must measure. */
static const struct {
  const char *hex;
  size_t size;
} families[] = {
    {"00", 1},
    {"7f", 1},
    {"e0", 1},
    {"ff", 1},
    {"c0", 1},
    {"c2", 1},
    {"c3", 1},
    {"cc ff", 2},
    {"cd ff ff", 3},
    {"ce 00 00 00 01", 5},
    {"cf 00 00 00 00 00 00 00 01", 9},
    {"d0 80", 2},
    {"d1 80 00", 3},
    {"d2 80 00 00 00", 5},
    {"d3 80 00 00 00 00 00 00 00", 9},
    {"ca 3f 80 00 00", 5},
    {"cb 3f f0 00 00 00 00 00 00", 9},
    {"a0", 1},
    {"a3 'abc'", 4},
    {"bf '0123456789012345678901234567890'", 32},
    {"d9 03 'abc'", 5},
    {"da 00 03 'abc'", 6},
    {"db 00 00 00 03 'abc'", 8},
    {"c4 00", 2},
    {"c4 02 01 02", 4},
    {"c5 00 02 01 02", 5},
    {"c6 00 00 00 02 01 02", 7},
    {"d4 01 aa", 3},
    {"d5 01 aa bb", 4},
    {"d6 01 00 01 02 03", 6},
    {"d7 ff 00 01 02 03 04 05 06 07", 10},
    {"d8 01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f", 18},
    {"c7 00 05", 3},
    {"c7 02 05 aa bb", 5},
    {"c8 00 02 05 aa bb", 6},
    {"c9 00 00 00 02 05 aa bb", 8},
    {"90", 1},
    {"92 01 02", 3},
    {"dc 00 02 01 02", 5},
    {"dd 00 00 00 02 01 02", 7},
    {"80", 1},
    {"81 a1 'a' 01", 4},
    {"de 00 01 a1 'a' 01", 6},
    {"df 00 00 00 01 a1 'a' 01", 8},
    {"82 a1 'a' 92 01 93 c0 c2 c3 a1 'b' 80", 12},
    {"81 92 01 02 81 c0 90", 7},
};

/* ---- skip -------------------------------------------------------------- */

TEST(skip_measures_every_type_family) {
  uint8_t b[256];
  size_t i, n, used;

  for (i = 0; i < SL_ARRAY_SIZE(families); i++) {
    n = unhex(families[i].hex, b);
    CHECK_EQ(n, families[i].size);
    b[n] = 0xc0; /* a following object must not be counted */
    used = 0;
    if (sl_codec_skip(b, n + 1, MIB, &used, NULL) != 0 ||
        used != families[i].size) {
      fprintf(stderr, "  family %s\n", families[i].hex);
      CHECK(0);
    }
  }
}

TEST(skip_every_prefix_is_eagain) {
  uint8_t b[1024];
  size_t i, n = 3, k, used;
  struct sl_codec_error err;

  b[0] = 0xdc; /* one array holding every family */
  b[1] = 0;
  b[2] = (uint8_t)SL_ARRAY_SIZE(families);
  for (i = 0; i < SL_ARRAY_SIZE(families); i++)
    n += unhex(families[i].hex, b + n);
  CHECK_EQ(sl_codec_skip(b, n, MIB, &used, NULL), 0);
  CHECK_EQ(used, n);
  for (k = 0; k < n; k++) {
    if (sl_codec_skip(b, k, MIB, &used, &err) != SL_EAGAIN) {
      fprintf(stderr, "  prefix of %zu bytes\n", k);
      CHECK(0);
    }
    CHECK_EQ(err.offset, k);
  }
  CHECK_STR(err.msg, "incomplete: more bytes needed");
}

/* Long runs of fixstrs and fixints take a short path far from the ends:
 * its answers must be the checked path's at every length and limit. */
TEST(skip_fast_path_keeps_every_prefix_and_limit_exact) {
  uint8_t b[2048];
  size_t i, n = 0, k, used;
  struct sl_codec_error err;
  b[n++] = 0x94;
  for (i = 0; i < 3; i++) {
    n += unhex("86 a5 'topic' ae 'orders.created' a3 'key' aa 'cust-00042' "
               "a6 'amount' 7f a3 'neg' e0 a4 'list' 93 01 a0 "
               "bf '0123456789012345678901234567890' "
               "a4 'nums' 99 cc ff cd 01 02 d2 00 00 00 01 "
               "d3 00 00 00 00 00 00 00 01 cb 3f f0 00 00 00 00 00 00 "
               "c0 c3 d4 01 02 d8 05 00 00 00 00 00 00 00 00 00 00 00 00 00 "
               "00 00 00", b + n);
  }
  n += unhex("dc 00 03 cc ff a1 'z' 81 a1 'k' c0", b + n);
  CHECK_EQ(sl_codec_skip(b, n, MIB, &used, NULL), 0);
  CHECK_EQ(used, n);
  for (k = 0; k < n; k++) {
    CHECK_EQ(sl_codec_skip(b, k, MIB, &used, &err), SL_EAGAIN);
    CHECK_EQ(err.offset, k);
  }
  for (k = 1; k < n; k++)
    CHECK_EQ(sl_codec_skip(b, n, k, &used, NULL), SL_E2BIG);
  CHECK_EQ(sl_codec_skip(b, n, n, &used, NULL), 0);
  CHECK_EQ(used, n);
  /* and one more object after it is not part of it */
  b[n] = 0x01;
  CHECK_EQ(sl_codec_skip(b, n + 1, MIB, &used, NULL), 0);
  CHECK_EQ(used, n);
}

TEST(skip_map32_bomb_is_e2big_at_once) {
  struct sl_codec_error err;
  size_t used;

  CHECK_EQ(skip_hex("df ff ff ff ff", MIB, &used, &err), SL_E2BIG);
  CHECK_EQ(err.offset, 0);
  CHECK_STR(err.msg, "object larger than 1048576 bytes");
  CHECK_EQ(skip_hex("dd ff ff ff ff", MIB, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("de ff ff", 1000, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("db ff ff ff ff", MIB, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("c6 00 10 00 00", MIB, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("c9 00 10 00 00", MIB, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("92 01 df ff ff ff ff", MIB, &used, &err), SL_E2BIG);
  CHECK_EQ(err.offset, 2);
  /* the count itself has not arrived yet: wait for it */
  CHECK_EQ(skip_hex("df ff ff", MIB, &used, NULL), SL_EAGAIN);
}

TEST(skip_large_count_within_limit_waits_for_bytes) {
  size_t used;

  CHECK_EQ(skip_hex("dc 01 00", MIB, &used, NULL), SL_EAGAIN);
  CHECK_EQ(skip_hex("df 00 00 00 10 a1 'a'", MIB, &used, NULL), SL_EAGAIN);
  CHECK_EQ(skip_hex("db 00 00 10 00 'abc'", MIB, &used, NULL), SL_EAGAIN);
}

TEST(skip_limit_is_exact) {
  size_t used;

  CHECK_EQ(skip_hex("a3 'abc'", 4, &used, NULL), 0);
  CHECK_EQ(used, 4);
  CHECK_EQ(skip_hex("a3 'abc'", 3, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("a3", 3, &used, NULL), SL_E2BIG); /* before its bytes */
  CHECK_EQ(skip_hex("93 01 02 03", 4, &used, NULL), 0);
  CHECK_EQ(skip_hex("93", 3, &used, NULL), SL_E2BIG); /* 3 elements + hdr */
  CHECK_EQ(skip_hex("82 01 02 03 04", 5, &used, NULL), 0);
  CHECK_EQ(skip_hex("82", 4, &used, NULL), SL_E2BIG); /* entries take 2 */
  /* the string plus the array's one element still owed */
  CHECK_EQ(skip_hex("92 d9 05", 8, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("92 d9 05", 9, &used, NULL), SL_EAGAIN);
  /* consumed bytes over the limit */
  CHECK_EQ(skip_hex("91 cb 00 00 00 00 00 00 00 00", 9, &used, NULL),
           SL_E2BIG);
  CHECK_EQ(skip_hex("91 cb 00 00 00 00 00 00 00 00", 10, &used, NULL), 0);
  CHECK_EQ(skip_hex("c0", 0, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("", 0, &used, NULL), SL_E2BIG);
  CHECK_EQ(skip_hex("", 1, &used, NULL), SL_EAGAIN);
}

TEST(skip_c1_is_eproto) {
  struct sl_codec_error err;
  size_t used;

  CHECK_EQ(skip_hex("c1", MIB, &used, &err), SL_EPROTO);
  CHECK_EQ(err.offset, 0);
  CHECK_STR(err.msg, "invalid type byte 0xc1");
  CHECK_EQ(skip_hex("92 01 c1", MIB, &used, &err), SL_EPROTO);
  CHECK_EQ(err.offset, 2);
  CHECK_EQ(skip_hex("81 c1 01", MIB, &used, NULL), SL_EPROTO);
}

TEST(skip_depth_limit) {
  uint8_t b[200];
  struct sl_codec_error err;
  size_t used;

  memset(b, 0x91, sizeof b);
  b[SL_CODEC_MAX_DEPTH] = 0xc0; /* 64 arrays around a nil */
  CHECK_EQ(sl_codec_skip(b, SL_CODEC_MAX_DEPTH + 1, MIB, &used, &err), 0);
  CHECK_EQ(used, SL_CODEC_MAX_DEPTH + 1);

  b[SL_CODEC_MAX_DEPTH] = 0x90; /* an empty 65th still nests */
  CHECK_EQ(sl_codec_skip(b, SL_CODEC_MAX_DEPTH + 1, MIB, &used, &err),
           SL_EPROTO);
  CHECK_EQ(err.offset, SL_CODEC_MAX_DEPTH);
  CHECK_STR(err.msg, "nesting deeper than 64");

  memset(b, 0x81, sizeof b); /* maps, truncated after the 65th header */
  CHECK_EQ(sl_codec_skip(b, SL_CODEC_MAX_DEPTH + 1, MIB, &used, &err),
           SL_EPROTO);
  CHECK_EQ(err.offset, SL_CODEC_MAX_DEPTH);
}

TEST(skip_sets_nothing_on_failure_and_takes_null_err) {
  size_t used = 12345;

  CHECK_EQ(skip_hex("92 01", MIB, &used, NULL), SL_EAGAIN);
  CHECK_EQ(used, 12345);
}

/* A stream of events arriving in uneven fragments, the way a reader sees
 * them: measure, parse, consume, repeat. */
TEST(skip_stream_in_fragments) {
  struct sl_buf all, in;
  struct sl_event_view v;
  struct sl_codec_error err;
  char topic[32], big[700];
  uint32_t offs[3];
  size_t pos = 0, chunk, used;
  int i, got = 0, r;

  sl_buf_init(&all);
  sl_buf_init(&in);
  memset(big, 'x', sizeof big);
  for (i = 0; i < 60; i++) {
    struct sl_str key = {big, (uint32_t)(i * 11)};
    snprintf(topic, sizeof topic, "t%d", i);
    CHECK_EQ(sl_codec_write_event(&all, S("id"), S(topic), key, i * -1000,
                                  NULL, 0, (const uint8_t *)"\x92\x01\xc0",
                                  3, offs),
             0);
  }
  for (chunk = 1; pos < all.len; chunk = chunk % 37 + 1) {
    if (chunk > all.len - pos)
      chunk = all.len - pos;
    CHECK_EQ(sl_buf_append(&in, all.data + pos, chunk), 0);
    pos += chunk;
    for (;;) {
      r = sl_codec_skip(in.data, in.len, 4096, &used, &err);
      if (r == SL_EAGAIN)
        break;
      CHECK_EQ(r, 0);
      CHECK_EQ(sl_codec_parse_event(in.data, used, &v, &err), 0);
      snprintf(topic, sizeof topic, "t%d", got);
      CHECK(str_is(v.topic, topic));
      CHECK_EQ(v.key.len, got * 11);
      CHECK_EQ(v.time, got * -1000);
      got++;
      sl_buf_consume(&in, used);
    }
  }
  CHECK_EQ(got, 60);
  CHECK_EQ(in.len, 0);
  sl_buf_close(&all);
  sl_buf_close(&in);
}

/* A walk resumed read after read answers what a fresh walk of the same
 * bytes does (result, size, error offset and message), whatever the reads
 * and the limit, so a reader can walk an object that trickles in once. */
static int walk_agrees(const uint8_t *b, size_t n, size_t max, size_t step) {
  struct sl_codec_walk w;
  struct sl_codec_error e1, e2;
  size_t k, u1 = 0, u2 = 0;
  int r1, r2;
  memset(&w, 0, sizeof(w));
  for (k = 0;; k = k + step < n ? k + step : n) {
    r1 = sl_codec_skip(b, k, max, &u1, &e1);
    r2 = sl_codec_skip_walk(b, k, max, &u2, &e2, &w);
    if (r1 != r2 || (r1 == 0 && u1 != u2) ||
        (r1 != 0 && (e1.offset != e2.offset || strcmp(e1.msg, e2.msg)))) {
      fprintf(stderr, "  %s: %zu of %zu bytes, max %zu, step %zu: %d/%zu "
              "vs %d/%zu\n", hexof(b, n), k, n, max, step, r1, u1, r2, u2);
      return 0;
    }
    if (r1 != SL_EAGAIN)
      return w.pos == 0; /* ready for the next object */
    if (k == n)
      return 1;
  }
}

TEST(skip_walk_resumed_agrees_with_a_fresh_walk) {
  static const char *const objects[] = {
      "dc 00 05 92 c0 c0 a3 'abc' 81 a1 'k' 93 01 02 03 d9 03 'xyz' "
      "c7 02 05 aa bb",
      "82 a5 'topic' a1 't' a7 'payload' dd 00 00 00 04 91 91 91 c0 "
      "cb 3f f0 00 00 00 00 00 00 de 00 01 a1 'a' 90 c3",
      "93 01 92 02 c1 03", /* bad bytes after a pause */
      "92 01 df ff ff ff ff", /* a bomb after a pause */
      "91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 "
      "91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 "
      "91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 91 90",
  };
  uint8_t b[1024];
  size_t i, n, max, step;
  for (i = 0; i < SL_ARRAY_SIZE(objects); i++) {
    n = unhex(objects[i], b);
    for (step = 1; step <= 7; step++)
      for (max = 1; max <= n + 2; max++)
        CHECK(walk_agrees(b, n, max, step));
    CHECK(walk_agrees(b, n, MIB, 1));
  }
  /* fixints past the fast path's 32-byte margin, in uneven reads */
  b[0] = 0xdc;
  b[1] = 0x01;
  b[2] = 0x2c; /* 300 */
  memset(b + 3, 0x05, 300);
  for (step = 1; step <= 40; step += 13)
    for (max = 290; max <= 305; max++)
      CHECK(walk_agrees(b, 303, max, step));
}

/* ---- parse_event ------------------------------------------------------- */

TEST(parse_event_reads_every_field) {
  uint8_t b[256];
  struct sl_event_view v;
  struct sl_codec_error err;
  size_t n, used;

  n = unhex("86 a2 'id' a2 'e1' a5 'topic' a6 'orders' a3 'key' a1 'k' "
            "a4 'time' d0 fb a7 'headers' 82 a1 'a' a1 '1' a1 'b' a0 "
            "a7 'payload' 92 01 a1 'x'",
            b);
  CHECK_EQ(sl_codec_skip(b, n, MIB, &used, NULL), 0);
  CHECK_EQ(used, n);
  CHECK_EQ(sl_codec_parse_event(b, n, &v, &err), 0);
  CHECK(str_is(v.id, "e1"));
  CHECK_EQ((const uint8_t *)v.id.p - b, 5);
  CHECK(str_is(v.topic, "orders"));
  CHECK_EQ((const uint8_t *)v.topic.p - b, 14);
  CHECK(str_is(v.key, "k"));
  CHECK_EQ(v.has_time, 1);
  CHECK_EQ(v.time, -5);
  CHECK_EQ(v.headers - b, 41);
  CHECK_EQ(v.headers_len, 8);
  CHECK_EQ(v.headers_count, 2);
  CHECK_STR(hexof(v.payload, v.payload_len), "92 01 a1 78");
}

TEST(parse_measured_reads_what_parse_event_reads) {
  const char *events[] = {
      /* payload last: its span is the rest of the bytes */
      ("83 a5 'topic' a1 't' a3 'key' a1 'k' a7 'payload' 82 a1 'a' 01 a1 'b' "
       "92 c0 a1 'x'"),
      /* payload first: walked as before */
      "83 a7 'payload' 92 01 a1 'x' a5 'topic' a1 't' a4 'time' 05",
      "82 a5 'topic' a1 't' a7 'headers' 81 a1 'a' a1 'b'",
  };
  uint8_t b[256];
  struct sl_event_view v, m;
  size_t i, n, used;
  for (i = 0; i < SL_ARRAY_SIZE(events); i++) {
    n = unhex(events[i], b);
    CHECK_EQ(sl_codec_skip(b, n, MIB, &used, NULL), 0);
    CHECK_EQ(used, n);
    CHECK_EQ(sl_codec_parse_event(b, n, &v, NULL), 0);
    CHECK_EQ(sl_codec_parse_measured(b, n, &m, NULL), 0);
    CHECK(memcmp(&v, &m, sizeof(v)) == 0);
  }
  /* the errors stay: a wrong type before the payload, an unknown field */
  n = unhex("82 a5 'topic' 01 a7 'payload' 01", b);
  CHECK_EQ(sl_codec_parse_measured(b, n, &m, NULL), SL_EPROTO);
  n = unhex("82 a5 'topic' a1 't' a3 'bad' 01", b);
  CHECK_EQ(sl_codec_parse_measured(b, n, &m, NULL), SL_EPROTO);
}

/* The one-walk reader of a stream: whenever it answers, skip then
 * parse_measured give that size and that view; for a whole event of the
 * common shapes it does answer. Every prefix, with an event after it, and
 * limits around the size. */
TEST(parse_stream_agrees_with_skip_then_parse_measured) {
  static const char *const events[] = {
      ("83 a5 'topic' a1 't' a3 'key' a1 'k' a7 'payload' 82 a1 'a' 01 a1 'b' "
       "92 c0 a1 'x'"),
      "83 a7 'payload' 92 01 a1 'x' a5 'topic' a1 't' a4 'time' 05",
      "82 a5 'topic' a1 't' a7 'headers' 81 a1 'a' a1 'b'",
      "84 a2 'id' a2 'ab' a5 'topic' d9 01 't' a4 'time' cf 00 00 01 00 00 "
      "00 00 00 a7 'payload' c4 02 00 01",
      "86 a2 'id' a1 'i' a5 'topic' a1 't' a3 'key' da 00 01 'k' a4 'time' "
      "d3 ff ff ff ff ff ff ff ff a7 'headers' 80 a7 'payload' c0",
      "82 a5 'topic' a1 't' a7 'headers' de 00 01 a1 'a' a1 'b'",
      /* not events, not whole, or in forms producers do not write: the
       * plain way answers */
      "de 00 01 a5 'topic' a1 't'",
      "81 d9 05 'topic' a1 't'",
      "81 a5 'topic' a0",
      "82 a5 'topic' a1 't' a4 'time' c0",
      "82 a5 'topic' a1 't' a5 'level' 01",
      "83 a2 'id' a1 'x' a2 'id' a1 'y' a5 'topic' a1 't'",
      "81 a2 'id' a1 'x'",
      "82 a5 'topic' a1 't' a4 'time' cf 80 00 00 00 00 00 00 00",
      "82 a5 'topic' a1 't' a7 'payload' c1",
      "82 a5 'topic' a1 't' a7 'headers' 81 01 a1 'x'",
      "82 a7 'payload' 92 c1 01 a5 'topic' a1 't'",
      "92 01 02",
      "c1",
  };
  static uint8_t b[512];
  struct sl_event_view v, m;
  size_t i, n, k, cut, used, used2, maxes[4];
  int rc, answered = 0;

  for (i = 0; i < SL_ARRAY_SIZE(events) + 3; i++) {
    if (i < SL_ARRAY_SIZE(events)) {
      n = unhex(events[i], b);
    } else {
      /* a payload nested 62, 63, 64 deep: the event adds one level */
      size_t depth = SL_CODEC_MAX_DEPTH - 2 + (i - SL_ARRAY_SIZE(events));
      n = unhex("82 a5 'topic' a1 't' a7 'payload'", b);
      memset(b + n, 0x91, depth);
      n += depth;
      b[n++] = 0xc0;
    }
    k = unhex("81 a5 'topic' a1 'u'", b + n); /* the next event */
    maxes[0] = n > 1 ? n - 1 : 1;
    maxes[1] = n;
    maxes[2] = n + 1;
    maxes[3] = MIB;
    for (cut = 0; cut <= n + k; cut++) {
      size_t j;
      for (j = 0; j < 4; j++) {
        memset(&v, 0xee, sizeof v);
        if (sl_codec_parse_stream(b, cut, maxes[j], &used, &v) != 0)
          continue;
        rc = sl_codec_skip(b, cut, maxes[j], &used2, NULL);
        if (rc != 0 || used2 != used)
          fprintf(stderr, "  event %zu cut %zu max %zu\n", i, cut, maxes[j]);
        CHECK_EQ(rc, 0);
        CHECK_EQ(used2, used);
        CHECK_EQ(sl_codec_parse_measured(b, used, &m, NULL), 0);
        CHECK(memcmp(&v, &m, sizeof(v)) == 0);
        if (cut >= n && maxes[j] >= n)
          answered++;
      }
    }
  }
  /* the six events and the payloads 62 and 63 deep, each with k + 1
   * cuts and three limits that hold them */
  CHECK_EQ(answered, 8 * (int)(k + 1) * 3);
}

TEST(parse_event_topic_alone_is_enough) {
  uint8_t b[64];
  struct sl_event_view v;
  size_t n = unhex("81 a5 'topic' a1 't'", b);

  CHECK_EQ(sl_codec_parse_event(b, n, &v, NULL), 0);
  CHECK(str_is(v.topic, "t"));
  CHECK(v.id.p == NULL && v.key.p == NULL);
  CHECK_EQ(v.has_time, 0);
  CHECK(v.headers == NULL && v.payload == NULL);
  CHECK_EQ(v.headers_count, 0);
}

TEST(parse_event_time_takes_the_int64_range) {
  uint8_t b[64];
  struct sl_event_view v;
  struct sl_codec_error err;
  size_t n;

  n = unhex("82 a5 'topic' a1 't' a4 'time' cf 7f ff ff ff ff ff ff ff", b);
  CHECK_EQ(sl_codec_parse_event(b, n, &v, &err), 0);
  CHECK_EQ(v.time, INT64_MAX);
  n = unhex("82 a5 'topic' a1 't' a4 'time' d3 80 00 00 00 00 00 00 00", b);
  CHECK_EQ(sl_codec_parse_event(b, n, &v, &err), 0);
  CHECK(v.time == INT64_MIN);
  n = unhex("82 a5 'topic' a1 't' a4 'time' ce ff ff ff ff", b);
  CHECK_EQ(sl_codec_parse_event(b, n, &v, &err), 0);
  CHECK_EQ(v.time, 4294967295LL);
  n = unhex("82 a5 'topic' a1 't' a4 'time' d1 80 00", b);
  CHECK_EQ(sl_codec_parse_event(b, n, &v, &err), 0);
  CHECK_EQ(v.time, -32768);
  n = unhex("82 a5 'topic' a1 't' a4 'time' cf 80 00 00 00 00 00 00 00", b);
  CHECK_EQ(sl_codec_parse_event(b, n, &v, &err), SL_EPROTO);
  CHECK_EQ(err.offset, 14);
  CHECK_STR(err.msg, "field 'time': integer out of int64 range");
}

TEST(parse_event_rejects_bad_events_with_a_message) {
  static const struct {
    const char *hex, *msg;
    size_t offset;
  } bad[] = {
      {"92 01 02", "event is not a map (got array)", 0},
      {"a5 'topic'", "event is not a map (got string)", 0},
      {"81 01 02", "field name: expected string, got integer", 1},
      {"82 a5 'topic' a1 't' a5 'level' 01", "unknown field 'level'", 9},
      {"81 a3 'l' 27 00 01", "unknown field 'l\\x27\\x00'", 1},
      {"83 a2 'id' a1 'x' a2 'id' a1 'y' a5 'topic' a1 't'",
       "duplicate field 'id'", 6},
      {"81 a5 'topic' 05", "field 'topic': expected string, got integer", 7},
      {"81 a5 'topic' a0", "field 'topic': expected non-empty string", 7},
      {"81 a2 'id' a1 'x'", "missing field 'topic'", 0},
      {"80", "missing field 'topic'", 0},
      {"82 a5 'topic' a1 't' a3 'key' c0",
       "field 'key': expected string, got nil", 13},
      {"82 a2 'id' c4 01 00 a5 'topic' a1 't'",
       "field 'id': expected string, got binary", 4},
      {"82 a5 'topic' a1 't' a4 'time' cb 3f f0 00 00 00 00 00 00",
       "field 'time': expected integer, got float", 14},
      {"82 a5 'topic' a1 't' a4 'time' a1 '1'",
       "field 'time': expected integer, got string", 14},
      {"82 a5 'topic' a1 't' a7 'headers' 91 01",
       "field 'headers': expected map, got array", 17},
      {"82 a5 'topic' a1 't' a7 'headers' 81 01 a1 'x'",
       "headers: expected string key, got integer", 18},
      {"82 a5 'topic' a1 't' a7 'headers' 82 a1 'y' a0 a1 'x' 01",
       "headers['x']: expected string value", 23},
      {"82 a5 'topic' a1 't' a7 'payload' c1",
       "invalid type byte 0xc1", 17},
      {"82 a5 'topic' a1 't' a7 'payload' 92 01",
       "truncated event", 19},
      {"81 a5 'topic' a1 't' c0", "trailing bytes after event", 9},
      {"82 a5 'topic' a1 't'", "truncated event", 9},
      {"81 a5 'topic' a3 't'", "truncated event", 9},
      {"", "truncated event", 0},
  };
  uint8_t b[256];
  struct sl_event_view v;
  struct sl_codec_error err;
  size_t i, n;

  for (i = 0; i < SL_ARRAY_SIZE(bad); i++) {
    n = unhex(bad[i].hex, b);
    memset(&err, 0, sizeof err);
    CHECK_EQ(sl_codec_parse_event(b, n, &v, &err), SL_EPROTO);
    if (strcmp(err.msg, bad[i].msg) != 0 || err.offset != bad[i].offset) {
      fprintf(stderr, "  input %s\n", bad[i].hex);
      CHECK_STR(err.msg, bad[i].msg);
      CHECK_EQ(err.offset, bad[i].offset);
    }
    CHECK_EQ(sl_codec_parse_event(b, n, &v, NULL), SL_EPROTO);
  }
}

/* ---- write_event ------------------------------------------------------- */

TEST(write_event_writes_canonical_bytes) {
  struct sl_buf out;
  struct sl_str none = {NULL, 0};
  uint32_t offs[3];

  sl_buf_init(&out);
  CHECK_EQ(sl_codec_write_event(&out, S("1"), S("t"), none, 0, NULL, 0, NULL,
                                0, offs),
           0);
  CHECK_STR(hexof(out.data, out.len),
            "83 a2 69 64 a1 31 a5 74 6f 70 69 63 a1 74 a4 74 69 6d 65 00");
  CHECK_EQ(offs[0], 13);
  CHECK_EQ(offs[1], 0);
  CHECK_EQ(offs[2], 5);

  sl_buf_reset(&out); /* no id either */
  CHECK_EQ(sl_codec_write_event(&out, none, S("t"), none, -1, NULL, 0, NULL, 0,
                                offs),
           0);
  CHECK_STR(hexof(out.data, out.len),
            "82 a5 74 6f 70 69 63 a1 74 a4 74 69 6d 65 ff");
  CHECK_EQ(offs[0], 8);
  CHECK_EQ(offs[2], 0);
  sl_buf_close(&out);
}

TEST(write_event_round_trips_through_parse_event) {
  static const uint8_t headers[] = "\x81\xa1" "a\xa1" "b";
  static const uint8_t payload[] = "\x82\xa1x\xcb\x3f\xf0\0\0\0\0\0\0\xa1y\xc0";
  struct sl_buf out;
  struct sl_event_view v;
  struct sl_codec_error err;
  char topic[300];
  uint32_t offs[3];
  const uint8_t *ev;
  size_t used;

  memset(topic, 'q', sizeof topic - 1);
  topic[sizeof topic - 1] = '\0'; /* 299 bytes: a str 16 header */
  sl_buf_init(&out);
  CHECK_EQ(sl_buf_append(&out, "junk", 4), 0); /* offsets are per event */
  CHECK_EQ(sl_codec_write_event(&out, S("abc"), S(topic), S("kk"),
                                INT64_MIN, headers, sizeof headers - 1,
                                payload, sizeof payload - 1, offs),
           0);
  ev = out.data + 4;
  CHECK_EQ(sl_codec_skip(ev, out.len - 4, MIB, &used, NULL), 0);
  CHECK_EQ(used, out.len - 4);
  CHECK_EQ(sl_codec_parse_event(ev, used, &v, &err), 0);
  CHECK(str_is(v.id, "abc"));
  CHECK(str_is(v.topic, topic));
  CHECK(str_is(v.key, "kk"));
  CHECK(v.time == INT64_MIN);
  CHECK_EQ(v.headers_count, 1);
  CHECK_STR(hexof(v.headers, v.headers_len), "81 a1 61 a1 62");
  CHECK_EQ(v.payload_len, sizeof payload - 1);
  CHECK(memcmp(v.payload, payload, v.payload_len) == 0);
  CHECK_EQ(offs[0], (const uint8_t *)v.topic.p - ev);
  CHECK_EQ(offs[1], (const uint8_t *)v.key.p - ev);
  CHECK_EQ(offs[2], (const uint8_t *)v.id.p - ev);
  CHECK(memcmp(ev, "\x86\xa2id", 4) == 0); /* id comes first */
  sl_buf_close(&out);
}

/* ---- to_json ----------------------------------------------------------- */

TEST(to_json_renders_every_type) {
  static const struct {
    const char *hex, *json;
  } cases[] = {
      {"c0", "null"},
      {"c2", "false"},
      {"c3", "true"},
      {"00", "0"},
      {"7f", "127"},
      {"ff", "-1"},
      {"e0", "-32"},
      {"cc ff", "255"},
      {"cd ff ff", "65535"},
      {"ce ff ff ff ff", "4294967295"},
      {"cf ff ff ff ff ff ff ff ff", "18446744073709551615"},
      {"cf 80 00 00 00 00 00 00 00", "9223372036854775808"},
      {"d0 80", "-128"},
      {"d1 80 00", "-32768"},
      {"d2 80 00 00 00", "-2147483648"},
      {"d3 80 00 00 00 00 00 00 00", "-9223372036854775808"},
      {"d3 7f ff ff ff ff ff ff ff", "9223372036854775807"},
      {"cb 3f f0 00 00 00 00 00 00", "1.0"},
      {"cb 40 59 00 00 00 00 00 00", "100.0"},
      {"cb 80 00 00 00 00 00 00 00", "-0.0"},
      {"cb 3f b9 99 99 99 99 99 9a", "0.10000000000000001"},
      {"cb 43 e0 00 00 00 00 00 00", "9.2233720368547758e+18"},
      {"cb 00 00 00 00 00 00 00 01", "4.9406564584124654e-324"},
      {"cb 7f f8 00 00 00 00 00 00", "{\"$float\":\"nan\"}"},
      {"cb ff f8 00 00 00 00 00 00", "{\"$float\":\"nan\"}"},
      {"cb 7f f0 00 00 00 00 00 00", "{\"$float\":\"inf\"}"},
      {"cb ff f0 00 00 00 00 00 00", "{\"$float\":\"-inf\"}"},
      {"ca 3f c0 00 00", "{\"$float32\":1.5}"},
      {"ca c2 c8 00 00", "{\"$float32\":-100.0}"},
      {"ca 3d cc cc cd", "{\"$float32\":0.100000001}"},
      {"ca 7f c0 00 00", "{\"$float32\":\"nan\"}"},
      {"ca ff 80 00 00", "{\"$float32\":\"-inf\"}"},
      {"a0", "\"\""},
      {"a3 'abc'", "\"abc\""},
      {"d9 01 'a'", "\"a\""},
      {"da 00 01 'a'", "\"a\""},
      {"db 00 00 00 01 'a'", "\"a\""},
      {"a5 22 5c 0a 1f 7f", "\"\\\"\\\\\\u000a\\u001f\x7f\""},
      {"a2 c3 a9", "\"\xc3\xa9\""},
      {"a4 f0 9f 98 80", "\"\xf0\x9f\x98\x80\""},
      {"a1 ff", "\"\\ufffd\""},
      {"a1 80", "\"\\ufffd\""},
      {"a3 e2 82 41", "\"\\ufffdA\""},
      {"a2 c0 80", "\"\\ufffd\\ufffd\""},
      {"a3 ed a0 80", "\"\\ufffd\\ufffd\\ufffd\""},
      {"a3 f0 9f 98", "\"\\ufffd\""},
      {"a4 f4 90 80 80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""},
      {"a3 'a' 00 'b'", "\"a\\u0000b\""},
      {"c4 00", "{\"$bin\":\"\"}"},
      {"c4 01 'f'", "{\"$bin\":\"Zg==\"}"},
      {"c4 02 'fo'", "{\"$bin\":\"Zm8=\"}"},
      {"c4 03 'foo'", "{\"$bin\":\"Zm9v\"}"},
      {"c5 00 06 'foobar'", "{\"$bin\":\"Zm9vYmFy\"}"},
      {"c6 00 00 00 02 fb ff", "{\"$bin\":\"+/8=\"}"},
      {"d4 01 aa", "{\"$ext\":[1,\"qg==\"]}"},
      {"d5 ff 'ab'", "{\"$ext\":[-1,\"YWI=\"]}"},
      {"d6 7f 'abcd'", "{\"$ext\":[127,\"YWJjZA==\"]}"},
      {"d7 80 'abcdefgh'", "{\"$ext\":[-128,\"YWJjZGVmZ2g=\"]}"},
      {"d8 02 'abcdefghijklmnop'",
       "{\"$ext\":[2,\"YWJjZGVmZ2hpamtsbW5vcA==\"]}"},
      {"c7 00 05", "{\"$ext\":[5,\"\"]}"},
      {"c8 00 01 05 'f'", "{\"$ext\":[5,\"Zg==\"]}"},
      {"c9 00 00 00 01 05 'f'", "{\"$ext\":[5,\"Zg==\"]}"},
      {"90", "[]"},
      {"93 01 a1 'a' c0", "[1,\"a\",null]"},
      {"dc 00 02 c2 c3", "[false,true]"},
      {"dd 00 00 00 01 90", "[[]]"},
      {"80", "{}"},
      {"82 a1 'a' 01 a1 'b' 92 c2 c3", "{\"a\":1,\"b\":[false,true]}"},
      {"de 00 01 a1 'a' 80", "{\"a\":{}}"},
      {"df 00 00 00 01 a1 'a' c0", "{\"a\":null}"},
      {"81 a1 22 01", "{\"\\\"\":1}"},
      {"82 01 a1 'x' a1 'y' c0", "{\"$map\":[[1,\"x\"],[\"y\",null]]}"},
      {"82 a1 'y' 81 c0 c3 92 01 02 80",
       "{\"$map\":[[\"y\",{\"$map\":[[null,true]]}],[[1,2],{}]]}"},
      {"c1", "ERR -71"},
      {"c0 c0", "ERR -71"},
      {"92 01", "ERR -71"},
      {"a3 'ab'", "ERR -71"},
      {"dc ff ff 01", "ERR -71"},
  };
  size_t i;

  for (i = 0; i < SL_ARRAY_SIZE(cases); i++) {
    const char *got = json_of(cases[i].hex);
    if (strcmp(got, cases[i].json) != 0) {
      fprintf(stderr, "  input %s\n", cases[i].hex);
      CHECK_STR(got, cases[i].json);
    }
  }
}

TEST(to_json_leaves_out_unchanged_on_error) {
  uint8_t b[16];
  struct sl_buf out;
  size_t n = unhex("92 a1 'x' c1", b);

  sl_buf_init(&out);
  CHECK_EQ(sl_buf_append(&out, "keep", 4), 0);
  CHECK_EQ(sl_codec_to_json(b, n, &out), SL_EPROTO);
  CHECK_EQ(out.len, 4);
  CHECK_EQ(sl_codec_to_json(b + 1, 2, &out), 0); /* just the "x" */
  CHECK_EQ(out.len, 4 + 3);
  CHECK(memcmp(out.data, "keep\"x\"", 7) == 0);
  sl_buf_close(&out);
}

TEST(to_json_depth_limit) {
  uint8_t b[100];
  struct sl_buf out;
  int i;

  memset(b, 0x91, sizeof b);
  b[SL_CODEC_MAX_DEPTH] = 0x01;
  sl_buf_init(&out);
  CHECK_EQ(sl_codec_to_json(b, SL_CODEC_MAX_DEPTH + 1, &out), 0);
  CHECK_EQ(out.len, 2 * SL_CODEC_MAX_DEPTH + 1);
  for (i = 0; i < SL_CODEC_MAX_DEPTH; i++)
    CHECK(out.data[i] == '[');
  sl_buf_reset(&out);
  b[SL_CODEC_MAX_DEPTH] = 0x90;
  CHECK_EQ(sl_codec_to_json(b, SL_CODEC_MAX_DEPTH + 1, &out), SL_EPROTO);
  CHECK_EQ(out.len, 0);
  sl_buf_close(&out);
}

/* ---- map_find ---------------------------------------------------------- */

TEST(map_find_returns_the_value_span) {
  uint8_t b[64];
  const uint8_t *val;
  size_t vallen, n;

  n = unhex("85 a1 'a' 01 a2 'bb' 92 01 a1 'z' 01 a1 'x' 81 01 02 c0 "
            "a1 'c' a1 'v'",
            b);
  CHECK_EQ(sl_codec_map_find(b, n, "a", 1, &val, &vallen), 0);
  CHECK_STR(hexof(val, vallen), "01");
  CHECK_EQ(sl_codec_map_find(b, n, "bb", 2, &val, &vallen), 0);
  CHECK_STR(hexof(val, vallen), "92 01 a1 7a");
  CHECK_EQ(sl_codec_map_find(b, n, "c", 1, &val, &vallen), 0);
  CHECK_STR(hexof(val, vallen), "a1 76");
  CHECK_EQ(val - b, n - 2);
  /* "z" is inside a value and "x" is a value: neither is a key */
  CHECK_EQ(sl_codec_map_find(b, n, "z", 1, &val, &vallen), SL_ENOENT);
  CHECK_EQ(sl_codec_map_find(b, n, "x", 1, &val, &vallen), SL_ENOENT);
  CHECK_EQ(sl_codec_map_find(b, n, "b", 1, &val, &vallen), SL_ENOENT);
  CHECK_EQ(sl_codec_map_find(b, n, "", 0, &val, &vallen), SL_ENOENT);
  CHECK_EQ(sl_codec_map_find(b, 1, "a", 1, &val, &vallen), SL_EPROTO);
  n = unhex("81 a0 c3", b);
  CHECK_EQ(sl_codec_map_find(b, n, "", 0, &val, &vallen), 0);
  CHECK_STR(hexof(val, vallen), "c3");
  n = unhex("92 01 02", b);
  CHECK_EQ(sl_codec_map_find(b, n, "a", 1, &val, &vallen), SL_EPROTO);
}

TEST(map_find_reads_parsed_headers) {
  uint8_t b[128];
  struct sl_event_view v;
  const uint8_t *val;
  size_t vallen, n;

  n = unhex("82 a5 'topic' a1 't' a7 'headers' "
            "83 a2 'ct' a4 'json' a3 'env' a4 'prod' da 00 02 'ct' a1 'x'",
            b);
  CHECK_EQ(sl_codec_parse_event(b, n, &v, NULL), 0);
  CHECK_EQ(v.headers_count, 3);
  CHECK_EQ(sl_codec_map_find(v.headers, v.headers_len, "env", 3, &val,
                             &vallen),
           0);
  CHECK_STR(hexof(val, vallen), "a4 70 72 6f 64");
  /* the first of two equal keys wins */
  CHECK_EQ(sl_codec_map_find(v.headers, v.headers_len, "ct", 2, &val,
                             &vallen),
           0);
  CHECK_STR(hexof(val, vallen), "a4 6a 73 6f 6e");
}

/* ---- writers ----------------------------------------------------------- */

static const char *put_int_hex(int64_t v) {
  static char s[64];
  struct sl_buf b;

  sl_buf_init(&b);
  if (sl_codec_put_int(&b, v) != 0)
    return "ENOMEM";
  snprintf(s, sizeof s, "%s", hexof(b.data, b.len));
  sl_buf_close(&b);
  return s;
}

static const char *put_uint_hex(uint64_t v) {
  static char s[64];
  struct sl_buf b;

  sl_buf_init(&b);
  if (sl_codec_put_uint(&b, v) != 0)
    return "ENOMEM";
  snprintf(s, sizeof s, "%s", hexof(b.data, b.len));
  sl_buf_close(&b);
  return s;
}

TEST(put_int_uses_the_smallest_encoding) {
  CHECK_STR(put_int_hex(0), "00");
  CHECK_STR(put_int_hex(127), "7f");
  CHECK_STR(put_int_hex(128), "cc 80");
  CHECK_STR(put_int_hex(255), "cc ff");
  CHECK_STR(put_int_hex(256), "cd 01 00");
  CHECK_STR(put_int_hex(65535), "cd ff ff");
  CHECK_STR(put_int_hex(65536), "ce 00 01 00 00");
  CHECK_STR(put_int_hex(4294967295LL), "ce ff ff ff ff");
  CHECK_STR(put_int_hex(4294967296LL), "cf 00 00 00 01 00 00 00 00");
  CHECK_STR(put_int_hex(INT64_MAX), "cf 7f ff ff ff ff ff ff ff");
  CHECK_STR(put_int_hex(-1), "ff");
  CHECK_STR(put_int_hex(-32), "e0");
  CHECK_STR(put_int_hex(-33), "d0 df");
  CHECK_STR(put_int_hex(-128), "d0 80");
  CHECK_STR(put_int_hex(-129), "d1 ff 7f");
  CHECK_STR(put_int_hex(-32768), "d1 80 00");
  CHECK_STR(put_int_hex(-32769), "d2 ff ff 7f ff");
  CHECK_STR(put_int_hex(INT32_MIN), "d2 80 00 00 00");
  CHECK_STR(put_int_hex((int64_t)INT32_MIN - 1), "d3 ff ff ff ff 7f ff ff ff");
  CHECK_STR(put_int_hex(INT64_MIN), "d3 80 00 00 00 00 00 00 00");
  CHECK_STR(put_uint_hex(UINT64_MAX), "cf ff ff ff ff ff ff ff ff");
  CHECK_STR(put_uint_hex(200), "cc c8");
}

TEST(put_int_round_trips_through_json) {
  static const int64_t vals[] = {0,         1,         -1,        31,
                                 -32,       -33,       127,       128,
                                 -128,      -129,      32767,     -32769,
                                 65536,     INT32_MAX, INT32_MIN, INT64_MAX,
                                 INT64_MIN, 1LL << 40, -(1LL << 40)};
  struct sl_buf b, j;
  char want[32];
  size_t i, used;

  sl_buf_init(&b);
  sl_buf_init(&j);
  for (i = 0; i < SL_ARRAY_SIZE(vals); i++) {
    sl_buf_reset(&b);
    sl_buf_reset(&j);
    CHECK_EQ(sl_codec_put_int(&b, vals[i]), 0);
    CHECK_EQ(sl_codec_skip(b.data, b.len, 100, &used, NULL), 0);
    CHECK_EQ(used, b.len);
    CHECK_EQ(sl_codec_to_json(b.data, b.len, &j), 0);
    CHECK_EQ(sl_buf_putc(&j, 0), 0);
    snprintf(want, sizeof want, "%lld", (long long)vals[i]);
    CHECK_STR((const char *)j.data, want);
  }
  sl_buf_close(&b);
  sl_buf_close(&j);
}

TEST(put_str_bin_and_containers_use_the_smallest_header) {
  static const struct {
    size_t n;
    const char *str, *bin, *arr, *map;
  } cases[] = {
      {0, "a0", "c4 00", "90", "80"},
      {15, "af", "c4 0f", "9f", "8f"},
      {16, "b0", "c4 10", "dc 00 10", "de 00 10"},
      {31, "bf", "c4 1f", "dc 00 1f", "de 00 1f"},
      {32, "d9 20", "c4 20", "dc 00 20", "de 00 20"},
      {255, "d9 ff", "c4 ff", "dc 00 ff", "de 00 ff"},
      {256, "da 01 00", "c5 01 00", "dc 01 00", "de 01 00"},
      {65535, "da ff ff", "c5 ff ff", "dc ff ff", "de ff ff"},
      {65536, "db 00 01 00 00", "c6 00 01 00 00", "dd 00 01 00 00",
       "df 00 01 00 00"},
  };
  static char data[70000];
  struct sl_buf b;
  size_t i, hl, used;

  sl_buf_init(&b);
  memset(data, 'z', sizeof data);
  for (i = 0; i < SL_ARRAY_SIZE(cases); i++) {
    size_t n = cases[i].n;

    sl_buf_reset(&b);
    CHECK_EQ(sl_codec_put_str(&b, data, n), 0);
    hl = b.len - n;
    CHECK_STR(hexof(b.data, hl), cases[i].str);
    CHECK(n == 0 || b.data[hl] == 'z');
    CHECK_EQ(sl_codec_skip(b.data, b.len, MIB, &used, NULL), 0);
    CHECK_EQ(used, b.len);

    sl_buf_reset(&b);
    CHECK_EQ(sl_codec_put_bin(&b, data, n), 0);
    CHECK_STR(hexof(b.data, b.len - n), cases[i].bin);
    CHECK_EQ(sl_codec_skip(b.data, b.len, MIB, &used, NULL), 0);
    CHECK_EQ(used, b.len);

    sl_buf_reset(&b);
    CHECK_EQ(sl_codec_put_array(&b, (uint32_t)n), 0);
    CHECK_STR(hexof(b.data, b.len), cases[i].arr);
    sl_buf_reset(&b);
    CHECK_EQ(sl_codec_put_map(&b, (uint32_t)n), 0);
    CHECK_STR(hexof(b.data, b.len), cases[i].map);
  }
  sl_buf_reset(&b);
  CHECK_EQ(sl_codec_put_array(&b, UINT32_MAX), 0);
  CHECK_STR(hexof(b.data, b.len), "dd ff ff ff ff");
  sl_buf_close(&b);
}

TEST(put_scalars_encode_exactly) {
  struct sl_buf b;

  sl_buf_init(&b);
  CHECK_EQ(sl_codec_put_nil(&b), 0);
  CHECK_EQ(sl_codec_put_bool(&b, 1), 0);
  CHECK_EQ(sl_codec_put_bool(&b, 0), 0);
  CHECK_EQ(sl_codec_put_double(&b, 1.0), 0);
  CHECK_EQ(sl_codec_put_double(&b, 0.5f), 0); /* always float 64 */
  CHECK_STR(hexof(b.data, b.len), "c0 c3 c2 cb 3f f0 00 00 00 00 00 00 "
                                  "cb 3f e0 00 00 00 00 00 00");
  sl_buf_reset(&b);
  CHECK_EQ(sl_codec_put_double(&b, -HUGE_VAL), 0);
  CHECK_STR(hexof(b.data, b.len), "cb ff f0 00 00 00 00 00 00");
  sl_buf_close(&b);
}

/* The header readers that other modules use instead of their own. */
TEST(read_headers_take_every_width_and_refuse_the_rest) {
  uint8_t b[64];
  struct sl_str s;
  uint32_t count;
  size_t used, n;
  double d;

  n = unhex("c4 02 'ab'", b);
  CHECK_EQ(sl_codec_read_strbin(b, n, &s, &used), 0);
  CHECK(s.len == 2 && memcmp(s.p, "ab", 2) == 0 && used == 4);
  CHECK_EQ(sl_codec_read_str(b, n, &s, &used), SL_EPROTO); /* bin: no str */
  n = unhex("c5 00 01 'a'", b);
  CHECK_EQ(sl_codec_read_strbin(b, n, &s, &used), 0);
  CHECK_EQ(used, 4);
  CHECK_EQ(sl_codec_read_strbin(b, n - 1, &s, &used), SL_EPROTO); /* short */
  n = unhex("a1 'x'", b);
  CHECK_EQ(sl_codec_read_strbin(b, n, &s, &used), 0);
  n = unhex("c0", b);
  CHECK_EQ(sl_codec_read_strbin(b, n, &s, &used), SL_EPROTO);

  n = unhex("9f", b);
  CHECK_EQ(sl_codec_read_array(b, n, &count, &used), 0);
  CHECK(count == 15 && used == 1);
  n = unhex("dc 01 00", b);
  CHECK_EQ(sl_codec_read_array(b, n, &count, &used), 0);
  CHECK(count == 256 && used == 3);
  n = unhex("dd 00 01 00 00", b);
  CHECK_EQ(sl_codec_read_array(b, n, &count, &used), 0);
  CHECK(count == 65536 && used == 5);
  CHECK_EQ(sl_codec_read_array(b, 4, &count, &used), SL_EPROTO);
  n = unhex("80", b);
  CHECK_EQ(sl_codec_read_array(b, n, &count, &used), SL_EPROTO);
  CHECK_EQ(sl_codec_read_map(b, n, &count, &used), 0);

  {
    uint64_t u;
    n = unhex("7f", b);
    CHECK_EQ(sl_codec_read_uint(b, n, &u, &used), 0);
    CHECK(u == 127 && used == 1);
    n = unhex("cd 01 02", b);
    CHECK_EQ(sl_codec_read_uint(b, n, &u, &used), 0);
    CHECK(u == 258 && used == 3);
    n = unhex("cf 80 00 00 00 00 00 00 01", b);
    CHECK_EQ(sl_codec_read_uint(b, n, &u, &used), 0);
    CHECK(u == 0x8000000000000001ull && used == 9);
    CHECK_EQ(sl_codec_read_uint(b, n - 1, &u, &used), SL_EPROTO);
    n = unhex("ff", b); /* -1: not an unsigned encoding */
    CHECK_EQ(sl_codec_read_uint(b, n, &u, &used), SL_EPROTO);
    n = unhex("d0 01", b);
    CHECK_EQ(sl_codec_read_uint(b, n, &u, &used), SL_EPROTO);
  }
  n = unhex("ca 3f c0 00 00", b);
  CHECK_EQ(sl_codec_read_number(b, n, &d, &used), 0);
  CHECK(d == 1.5 && used == 5);
  n = unhex("cf ff ff ff ff ff ff ff ff", b);
  CHECK_EQ(sl_codec_read_number(b, n, &d, &used), 0);
  CHECK(d == 18446744073709551615.0 && used == 9);
  n = unhex("d0 80", b);
  CHECK_EQ(sl_codec_read_number(b, n, &d, &used), 0);
  CHECK(d == -128 && used == 2);
  CHECK_EQ(sl_codec_read_number(b, 1, &d, &used), SL_EPROTO);
  n = unhex("a1 '1'", b);
  CHECK_EQ(sl_codec_read_number(b, n, &d, &used), SL_EPROTO);
}

/* ---- writers: every width edge, byte for byte ----------------------------
 * The writers pack through msgpack-c; these pin its choices to the smallest
 * encodings the hand-written writers made (and the JSON round trip and the
 * canonical event encoding need). The expected bytes come from the
 * msgpack spec, not from msgpack-c. */

TEST(put_ext_uses_fixext_then_the_smallest_ext_header) {
  static const struct {
    size_t n;
    const char *hdr;
  } cases[] = {
      {0, "c7 00 05"},        {1, "d4 05"},           {2, "d5 05"},
      {3, "c7 03 05"},        {4, "d6 05"},           {5, "c7 05 05"},
      {7, "c7 07 05"},        {8, "d7 05"},           {9, "c7 09 05"},
      {15, "c7 0f 05"},       {16, "d8 05"},          {17, "c7 11 05"},
      {255, "c7 ff 05"},      {256, "c8 01 00 05"},   {65535, "c8 ff ff 05"},
      {65536, "c9 00 01 00 00 05"},
  };
  static char data[70000];
  struct sl_buf b;
  size_t i, n, hl, used;

  memset(data, 'e', sizeof data);
  sl_buf_init(&b);
  for (i = 0; i < SL_ARRAY_SIZE(cases); i++) {
    n = cases[i].n;
    sl_buf_reset(&b);
    CHECK_EQ(sl_buf_append(&b, "pre", 3), 0); /* appends, never overwrites */
    CHECK_EQ(sl_codec_put_ext(&b, 5, data, n), 0);
    CHECK(memcmp(b.data, "pre", 3) == 0);
    hl = b.len - 3 - n;
    CHECK_STR(hexof(b.data + 3, hl), cases[i].hdr);
    CHECK(n == 0 || (b.data[3 + hl] == 'e' && b.data[b.len - 1] == 'e'));
    CHECK_EQ(sl_codec_skip(b.data + 3, b.len - 3, MIB, &used, NULL), 0);
    CHECK_EQ(used, b.len - 3);
  }
  sl_buf_reset(&b); /* the type byte is signed */
  CHECK_EQ(sl_codec_put_ext(&b, -1, "\x01", 1), 0);
  CHECK_EQ(sl_codec_put_ext(&b, -128, "abc", 3), 0);
  CHECK_STR(hexof(b.data, b.len), "d4 ff 01 c7 03 80 61 62 63");
  sl_buf_close(&b);
}

TEST(put_uint_float32_bool_and_map_encode_at_every_width_edge) {
  static const struct {
    uint64_t v;
    const char *hex;
  } uints[] = {
      {0, "00"},
      {0x7f, "7f"},
      {0x80, "cc 80"},
      {0xff, "cc ff"},
      {0x100, "cd 01 00"},
      {0xffff, "cd ff ff"},
      {0x10000, "ce 00 01 00 00"},
      {0xffffffffu, "ce ff ff ff ff"},
      {0x100000000u, "cf 00 00 00 01 00 00 00 00"},
      {(uint64_t)INT64_MAX + 1, "cf 80 00 00 00 00 00 00 00"},
  };
  struct sl_buf b;
  size_t i;

  for (i = 0; i < SL_ARRAY_SIZE(uints); i++)
    CHECK_STR(put_uint_hex(uints[i].v), uints[i].hex);
  sl_buf_init(&b);
  CHECK_EQ(sl_codec_put_float(&b, 1.5f), 0);
  CHECK_EQ(sl_codec_put_float(&b, -0.0f), 0);
  CHECK_EQ(sl_codec_put_float(&b, (float)HUGE_VAL), 0);
  CHECK_EQ(sl_codec_put_double(&b, -0.0), 0);
  CHECK_STR(hexof(b.data, b.len), "ca 3f c0 00 00 ca 80 00 00 00 "
                                  "ca 7f 80 00 00 cb 80 00 00 00 00 00 00 00");
  sl_buf_reset(&b);
  CHECK_EQ(sl_codec_put_bool(&b, 2), 0); /* any non-zero is true */
  CHECK_EQ(sl_codec_put_map(&b, UINT32_MAX), 0);
  CHECK_EQ(sl_codec_put_nil(&b), 0);
  CHECK_STR(hexof(b.data, b.len), "c3 df ff ff ff ff c0");
  sl_buf_close(&b);
}

/* msgpack-c would write only the low 32 bits of such a length. */
TEST(put_longer_than_uint32_is_refused_and_leaves_the_buffer_as_it_was) {
  struct sl_buf b;
  size_t big = (size_t)UINT32_MAX + 1;

  sl_buf_init(&b);
  CHECK_EQ(sl_buf_append(&b, "ab", 2), 0);
  /* NULL data: the refusal must come before any byte is read */
  CHECK_EQ(sl_codec_put_str(&b, NULL, big), SL_E2BIG);
  CHECK_EQ(sl_codec_put_bin(&b, NULL, big), SL_E2BIG);
  CHECK_EQ(sl_codec_put_ext(&b, 1, NULL, big), SL_E2BIG);
  CHECK_EQ(b.len, 2);
  CHECK(memcmp(b.data, "ab", 2) == 0);
  sl_buf_close(&b);
}

/* An independent encoder for the test below, written from the spec. */
static size_t ref_str(uint8_t *d, const char *s, size_t n) {
  size_t h;

  if (n < 32) {
    d[0] = (uint8_t)(0xa0 | n), h = 1;
  } else if (n < 256) {
    d[0] = 0xd9, d[1] = (uint8_t)n, h = 2;
  } else if (n < 65536) {
    d[0] = 0xda, d[1] = (uint8_t)(n >> 8), d[2] = (uint8_t)n, h = 3;
  } else {
    d[0] = 0xdb, d[1] = (uint8_t)(n >> 24), d[2] = (uint8_t)(n >> 16);
    d[3] = (uint8_t)(n >> 8), d[4] = (uint8_t)n, h = 5;
  }
  memcpy(d + h, s, n);
  return h + n;
}

static size_t ref_be(uint8_t *d, uint8_t type, uint64_t v, int bytes) {
  int i;

  d[0] = type;
  for (i = 0; i < bytes; i++)
    d[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
  return 1 + (size_t)bytes;
}

static size_t ref_int(uint8_t *d, int64_t v) {
  uint64_t u = (uint64_t)v;

  if (v >= 0 && v < 128)
    return d[0] = (uint8_t)v, 1;
  if (v < 0 && v >= -32)
    return d[0] = (uint8_t)v, 1;
  if (v >= 0)
    return v < 256 ? ref_be(d, 0xcc, u, 1)
           : v < 65536 ? ref_be(d, 0xcd, u, 2)
           : v <= 0xffffffffLL ? ref_be(d, 0xce, u, 4)
                               : ref_be(d, 0xcf, u, 8);
  return v >= -128 ? ref_be(d, 0xd0, u, 1)
         : v >= -32768 ? ref_be(d, 0xd1, u, 2)
         : v >= INT32_MIN ? ref_be(d, 0xd2, u, 4)
                          : ref_be(d, 0xd3, u, 8);
}

TEST(write_event_matches_a_reference_encoder_at_every_width_edge) {
  static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536};
  static const int64_t times[] = {0,          127,       128,       255,
                                  256,        65535,     65536,     -1,
                                  -32,        -33,       -128,      -129,
                                  -32768,     -32769,    INT32_MIN, INT64_MIN,
                                  4294967295LL, 4294967296LL, INT64_MAX};
  static const uint8_t headers[] = "\x81\xa1" "a\xa1" "b";
  static const uint8_t payload[] = "\x92\x01\xc0";
  static char text[65536];
  static uint8_t want[4 * 65536 + 256];
  struct sl_buf out;
  struct sl_str s, none = {NULL, 0};
  uint32_t offs[3], woffs[3];
  size_t i, j, w;
  int with;

  memset(text, 'x', sizeof text);
  sl_buf_init(&out);
  for (i = 0; i < SL_ARRAY_SIZE(lens); i++) {
    for (j = 0; j < SL_ARRAY_SIZE(times); j++) {
      for (with = 0; with < 2; with++) { /* all fields, or topic and time */
        s.p = text;
        s.len = lens[i];
        w = 0;
        want[w++] = with ? 0x86 : 0x82;
        woffs[0] = woffs[1] = woffs[2] = 0;
        if (with) {
          w += ref_str(want + w, "id", 2);
          woffs[2] = (uint32_t)(w + ref_str(want + w, text, lens[i]) - lens[i]);
          w = woffs[2] + lens[i];
        }
        w += ref_str(want + w, "topic", 5);
        woffs[0] = (uint32_t)(w + ref_str(want + w, text, lens[i]) - lens[i]);
        w = woffs[0] + lens[i];
        if (with) {
          w += ref_str(want + w, "key", 3);
          woffs[1] =
              (uint32_t)(w + ref_str(want + w, text, lens[i]) - lens[i]);
          w = woffs[1] + lens[i];
        }
        w += ref_str(want + w, "time", 4);
        w += ref_int(want + w, times[j]);
        if (with) {
          w += ref_str(want + w, "headers", 7);
          memcpy(want + w, headers, sizeof headers - 1);
          w += sizeof headers - 1;
          w += ref_str(want + w, "payload", 7);
          memcpy(want + w, payload, sizeof payload - 1);
          w += sizeof payload - 1;
        }

        sl_buf_reset(&out);
        CHECK_EQ(sl_buf_append(&out, "x", 1), 0); /* offsets per event */
        CHECK_EQ(sl_codec_write_event(
                     &out, with ? s : none, s, with ? s : none, times[j],
                     with ? headers : NULL, with ? sizeof headers - 1 : 0,
                     with ? payload : NULL, with ? sizeof payload - 1 : 0,
                     offs),
                 0);
        if (out.len - 1 != w || memcmp(out.data + 1, want, w) != 0) {
          fprintf(stderr, "  len %zu time %lld with %d: %zu bytes, want %zu\n",
                  lens[i], (long long)times[j], with, out.len - 1, w);
          CHECK(0);
        }
        CHECK_EQ(offs[0], woffs[0]);
        CHECK_EQ(offs[1], woffs[1]);
        CHECK_EQ(offs[2], woffs[2]);
      }
    }
  }
  sl_buf_close(&out);
}

TEST(patch_header_writes_the_smallest_header_and_moves_the_body_down) {
  static const struct {
    uint32_t n;
    const char *map, *arr;
  } cases[] = {
      {0, "80", "90"},
      {15, "8f", "9f"},
      {16, "de 00 10", "dc 00 10"},
      {65535, "de ff ff", "dc ff ff"},
      {65536, "df 00 01 00 00", "dd 00 01 00 00"},
      {UINT32_MAX, "df ff ff ff ff", "dd ff ff ff ff"},
  };
  struct sl_buf b;
  size_t i, hl;
  int is_map;

  sl_buf_init(&b);
  for (i = 0; i < SL_ARRAY_SIZE(cases); i++) {
    for (is_map = 0; is_map < 2; is_map++) {
      const char *want = is_map ? cases[i].map : cases[i].arr;

      sl_buf_reset(&b);
      CHECK_EQ(sl_buf_append(&b, "pre", 3), 0);
      CHECK_EQ(sl_buf_append(&b, "\xdf\0\0\0\0" "body", 9), 0);
      sl_codec_patch_header(&b, 3, is_map, cases[i].n);
      hl = b.len - 3 - 4;
      CHECK_STR(hexof(b.data + 3, hl), want);
      CHECK(memcmp(b.data, "pre", 3) == 0);
      CHECK(memcmp(b.data + 3 + hl, "body", 4) == 0);
    }
  }
  sl_buf_close(&b);
}
