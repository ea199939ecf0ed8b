/* test_json.c - unit tests for engine/json.c: one value to msgpack, and
 * batches of items (NDJSON lines, the elements of a top-level array) with
 * the line and index of what went wrong. Items are checked by rendering
 * them back with sl_codec_to_json. */
#include <string.h>

#include "codec.h"
#include "json.h"
#include "test.h"

struct items {
  struct sl_buf *out;
  char text[4096]; /* items as JSON, one per line, "@line " first */
  size_t n;
  long refuse_at; /* refuse the item with this index; -1: none */
};

static int on_item(void *data, size_t off, size_t len, size_t index,
                   size_t line, struct sl_json_error *err) {
  struct items *it = data;
  struct sl_buf j;
  size_t used = strlen(it->text);
  if ((long)index == it->refuse_at) {
    snprintf(err->msg, sizeof(err->msg), "refused");
    err->index = index;
    err->line = line;
    return SL_EPROTO;
  }
  sl_buf_init(&j);
  if (sl_codec_to_json(it->out->data + off, len, &j) != 0)
    return SL_EPROTO;
  snprintf(it->text + used, sizeof(it->text) - used, "@%zu %.*s\n", line,
           (int)j.len, (const char *)j.data);
  sl_buf_close(&j);
  it->n++;
  return 0;
}

static int run(const char *text, int flags, struct items *it,
               struct sl_json_error *err, struct sl_buf *out) {
  memset(it, 0, sizeof(*it));
  it->out = out;
  it->refuse_at = -1;
  return sl_json_items_to_msgpack(text, strlen(text), flags, out, on_item, it,
                                  err);
}

TEST(json_items_split_a_top_level_array_into_its_elements) {
  struct sl_buf out;
  struct sl_json_error err;
  struct items it;
  sl_buf_init(&out);
  CHECK_EQ(run("[{\"a\":1},\n [2, 3],\n \"s\", null]", SL_JSON_SPLIT_ARRAY,
               &it, &err, &out),
           0);
  CHECK_EQ(it.n, 4);
  CHECK_STR(it.text, "@1 {\"a\":1}\n@2 [2,3]\n@3 \"s\"\n@3 null\n");
  sl_buf_close(&out);
}

TEST(json_items_without_split_an_array_is_one_item) {
  struct sl_buf out;
  struct sl_json_error err;
  struct items it;
  sl_buf_init(&out);
  CHECK_EQ(run("[1, [2]]", 0, &it, &err, &out), 0);
  CHECK_STR(it.text, "@1 [1,[2]]\n");
  sl_buf_reset(&out);
  CHECK_EQ(run("{\"topic\":\"t\"}", SL_JSON_SPLIT_ARRAY, &it, &err, &out), 0);
  CHECK_STR(it.text, "@1 {\"topic\":\"t\"}\n");
  sl_buf_close(&out);
}

TEST(json_items_ndjson_lines_are_items_and_blank_lines_skipped) {
  struct sl_buf out;
  struct sl_json_error err;
  struct items it;
  sl_buf_init(&out);
  CHECK_EQ(run("{\"a\":1}\n\n  \n7\n\"x\"\n{\"$bin\":\"AAE=\"}", SL_JSON_MANY,
               &it, &err, &out),
           0);
  CHECK_STR(it.text,
            "@1 {\"a\":1}\n@4 7\n@5 \"x\"\n@6 {\"$bin\":\"AAE=\"}\n");
  sl_buf_reset(&out);
  CHECK_EQ(run("", SL_JSON_MANY, &it, &err, &out), 0);
  CHECK_EQ(it.n, 0);
  sl_buf_close(&out);
}

TEST(json_items_syntax_error_names_line_index_and_offset) {
  struct sl_buf out;
  struct sl_json_error err;
  struct items it;
  sl_buf_init(&out);
  CHECK_EQ(run("{\"a\":1}\n{\"b\":2}\n{\"c\": nope}\n", SL_JSON_MANY, &it,
               &err, &out),
           SL_EPROTO);
  CHECK_EQ(err.line, 3);
  CHECK_EQ(err.index, 2);
  CHECK(err.offset >= 16 && err.offset <= 28);
  CHECK(strncmp(err.msg, "invalid JSON: ", 14) == 0);
  CHECK_EQ(out.len, 0); /* nothing kept */
  CHECK_EQ(run("[{\"a\":1},\n{\"b\":", SL_JSON_SPLIT_ARRAY, &it, &err, &out),
           SL_EPROTO);
  CHECK_EQ(err.line, 2);
  CHECK_EQ(err.index, 1);
  CHECK(strstr(err.msg, "premature EOF") != NULL);
  sl_buf_close(&out);
}

TEST(json_items_one_value_mode_refuses_a_second_value_and_empty_text) {
  struct sl_buf out;
  struct sl_json_error err;
  struct items it;
  sl_buf_init(&out);
  CHECK_EQ(run("{\"a\":1} {\"b\":2}", SL_JSON_SPLIT_ARRAY, &it, &err, &out),
           SL_EPROTO);
  CHECK(strstr(err.msg, "trailing garbage") != NULL);
  CHECK_EQ(run("", 0, &it, &err, &out), SL_EPROTO);
  CHECK(strstr(err.msg, "empty") != NULL);
  sl_buf_close(&out);
}

TEST(json_items_callback_refusal_stops_with_its_code_and_message) {
  struct sl_buf out;
  struct sl_json_error err;
  struct items it;
  sl_buf_init(&out);
  memset(&it, 0, sizeof(it));
  it.out = &out;
  it.refuse_at = 1;
  CHECK_EQ(sl_json_items_to_msgpack("[1,\n2,\n3]", 9, SL_JSON_SPLIT_ARRAY,
                                    &out, on_item, &it, &err),
           SL_EPROTO);
  CHECK_STR(err.msg, "refused");
  CHECK_EQ(err.index, 1);
  CHECK_EQ(err.line, 2);
  CHECK_EQ(it.n, 1);
  sl_buf_close(&out);
}

TEST(json_to_msgpack_converts_one_value_as_before) {
  struct sl_buf out, j;
  char err[128];
  sl_buf_init(&out);
  sl_buf_init(&j);
  CHECK_EQ(sl_json_to_msgpack("{\"a\":[1,-2,2.5,true,null,\"x\"]}", 30, &out,
                              err, sizeof(err)),
           0);
  CHECK_EQ(sl_codec_to_json(out.data, out.len, &j), 0);
  CHECK_EQ(sl_buf_putc(&j, '\0'), 0);
  CHECK_STR((const char *)j.data, "{\"a\":[1,-2,2.5,true,null,\"x\"]}");
  CHECK(sl_json_to_msgpack("[1,", 3, &out, err, sizeof(err)) == SL_EPROTO);
  sl_buf_close(&out);
  sl_buf_close(&j);
}

/* ---- msgpack -> JSON -> msgpack --------------------------------------- */

/* The corpus: every msgpack type at the edges of each of its encodings,
 * each written in its smallest encoding (as sluice writes it). */
static void put_corpus_value(struct sl_buf *b, int i, uint8_t *blob) {
  static const int64_t ints[] = {0, 1, 127, -1, -32, -33, -128, -129,
                                 -32768, -32769, -2147483647 - 1,
                                 (int64_t)-2147483647 - 2, INT64_MIN, INT64_MAX};
  static const uint64_t uints[] = {128, 255, 256, 65535, 65536, 4294967295u,
                                   4294967296u, UINT64_MAX};
  static const double dbls[] = {0.0, -0.0, 1.0, 0.1, -2.5, 1e300, 5e-324,
                                9007199254740993.0, 1.7976931348623157e308};
  static const float flts[] = {0.0f, -0.0f, 1.5f, 0.1f, -100.0f,
                               3.4028235e38f, 1e-45f, 16777217.0f};
  static const size_t lens[] = {0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 31, 32,
                                255, 256, 65535, 65536};
  static const int8_t ext_types[] = {-128, -1, 0, 5, 127};
  size_t nl = sizeof(lens) / sizeof(lens[0]), j;
  int k = i;

#define SECTION(n) if (k < (int)(n)) {
#define NEXT(n) } k -= (int)(n);
  SECTION(3)
    if (k == 0)
      sl_codec_put_nil(b);
    else
      sl_codec_put_bool(b, k == 1);
    return;
  NEXT(3)
  SECTION(sizeof(ints) / sizeof(ints[0]))
    sl_codec_put_int(b, ints[k]); return;
  NEXT(sizeof(ints) / sizeof(ints[0]))
  SECTION(sizeof(uints) / sizeof(uints[0]))
    sl_codec_put_uint(b, uints[k]); return;
  NEXT(sizeof(uints) / sizeof(uints[0]))
  SECTION(sizeof(dbls) / sizeof(dbls[0]) + 3)
    double d = k == 0 ? __builtin_nan("") : k == 1 ? __builtin_inf()
             : k == 2 ? -__builtin_inf() : dbls[k - 3];
    sl_codec_put_double(b, d); return;
  NEXT(sizeof(dbls) / sizeof(dbls[0]) + 3)
  SECTION(sizeof(flts) / sizeof(flts[0]) + 3)
    float f = k == 0 ? __builtin_nanf("") : k == 1 ? __builtin_inff()
            : k == 2 ? -__builtin_inff() : flts[k - 3];
    sl_codec_put_float(b, f); return;
  NEXT(sizeof(flts) / sizeof(flts[0]) + 3)
  SECTION(nl) /* str: ASCII, escapes and UTF-8 */
    for (j = 0; j < lens[k]; j++)
      blob[j] = "a\"\\\n\x01\x7f/\xc3\xa9z"[j % 10];
    if (lens[k] % 10 == 8) /* don't cut the two-byte sequence */
      blob[lens[k] - 1] = 'x';
    sl_codec_put_str(b, (const char *)blob, lens[k]); return;
  NEXT(nl)
  SECTION(nl) /* bin: every byte value */
    for (j = 0; j < lens[k]; j++)
      blob[j] = (uint8_t)(j * 7 + 3);
    sl_codec_put_bin(b, blob, lens[k]); return;
  NEXT(nl)
  SECTION(nl * 5) /* ext: fixext 1..16 and ext 8/16/32, every type edge */
    for (j = 0; j < lens[k / 5]; j++)
      blob[j] = (uint8_t)(255 - j);
    sl_codec_put_ext(b, ext_types[k % 5], blob, lens[k / 5]); return;
  NEXT(nl * 5)
  SECTION(5) /* arrays of 0, 15, 16, 65535, 65536 elements */
    static const uint32_t an[] = {0, 15, 16, 65535, 65536};
    sl_codec_put_array(b, an[k]);
    for (j = 0; j < an[k]; j++)
      sl_codec_put_int(b, (int64_t)(j % 200) - 100);
    return;
  NEXT(5)
  SECTION(4) /* string-keyed maps of 0, 15, 16 and 65536 pairs */
    static const uint32_t mn[] = {0, 15, 16, 65536};
    char key[16];
    sl_codec_put_map(b, mn[k]);
    for (j = 0; j < mn[k]; j++) {
      snprintf(key, sizeof key, "k%zu", j);
      sl_codec_put_str(b, key, strlen(key));
      sl_codec_put_uint(b, j);
    }
    return;
  NEXT(4)
  SECTION(1) /* non-string keys of every kind, nested markers inside */
    sl_codec_put_map(b, 10);
    sl_codec_put_int(b, -5); sl_codec_put_str(b, "int", 3);
    sl_codec_put_nil(b); sl_codec_put_bool(b, 0);
    sl_codec_put_bool(b, 1); sl_codec_put_double(b, 0.5);
    sl_codec_put_double(b, __builtin_nan("")); sl_codec_put_nil(b);
    sl_codec_put_bin(b, "\0\1", 2); sl_codec_put_ext(b, 3, "xyz", 3);
    sl_codec_put_ext(b, -2, "12345678", 8); sl_codec_put_float(b, 2.0f);
    sl_codec_put_array(b, 2); sl_codec_put_uint(b, 1); sl_codec_put_str(b, "a", 1);
    sl_codec_put_map(b, 1); sl_codec_put_uint(b, 7); sl_codec_put_uint(b, 8);
    sl_codec_put_map(b, 1); sl_codec_put_str(b, "s", 1); sl_codec_put_nil(b);
    sl_codec_put_str(b, "s", 1);
    sl_codec_put_map(b, 1); sl_codec_put_bin(b, "", 0); sl_codec_put_nil(b);
    sl_codec_put_str(b, "$map", 4);
    sl_codec_put_str(b, "$map", 4); sl_codec_put_nil(b);
    return;
  NEXT(1)
  SECTION(5) /* user maps that look like markers must stay maps */
    static const char *mk[] = {"$bin", "$float", "$float32", "$ext", "$map"};
    sl_codec_put_map(b, 1);
    sl_codec_put_str(b, mk[k], strlen(mk[k]));
    if (k == 4) { /* a list of pairs, the $map shape */
      sl_codec_put_array(b, 1); sl_codec_put_array(b, 2);
      sl_codec_put_uint(b, 1); sl_codec_put_uint(b, 2);
    } else if (k == 3) {
      sl_codec_put_array(b, 2); sl_codec_put_uint(b, 1);
      sl_codec_put_str(b, "AA==", 4);
    } else if (k == 2) {
      sl_codec_put_double(b, 1.5);
    } else {
      sl_codec_put_str(b, k == 0 ? "AA==" : "nan", k == 0 ? 4 : 3);
    }
    return;
  NEXT(5)
  SECTION(1) /* nesting to the depth limit */
    for (j = 0; j + 1 < SL_CODEC_MAX_DEPTH; j++)
      if (j % 2) sl_codec_put_array(b, 1);
      else { sl_codec_put_map(b, 1); sl_codec_put_uint(b, j); }
    sl_codec_put_ext(b, 1, "x", 1);
    return;
  NEXT(1)
#undef SECTION
#undef NEXT
}

TEST(json_round_trip_of_every_msgpack_type_is_byte_identical) {
  struct sl_buf mp, js, back, all;
  uint8_t *blob = malloc(65536);
  char err[160];
  int i, done = 0, n = 0;

  CHECK(blob != NULL);
  sl_buf_init(&mp);
  sl_buf_init(&js);
  sl_buf_init(&back);
  sl_buf_init(&all);
  for (i = 0; !done; i++) {
    sl_buf_reset(&mp);
    put_corpus_value(&mp, i, blob);
    if (mp.len == 0) {
      done = 1;
      break;
    }
    n++;
    sl_buf_reset(&js);
    sl_buf_reset(&back);
    if (sl_codec_to_json(mp.data, mp.len, &js) != 0)
      fprintf(stderr, "  value %d does not render\n", i);
    CHECK_EQ(js.len > 0, 1);
    if (sl_json_to_msgpack((const char *)js.data, js.len, &back, err,
                           sizeof err) != 0 ||
        back.len != mp.len || memcmp(back.data, mp.data, mp.len) != 0) {
      fprintf(stderr, "  value %d (%s): %.*s\n", i, err, (int)(js.len > 200 ? 200 : js.len),
              (const char *)js.data);
      CHECK(0);
    }
    CHECK_EQ(sl_buf_append(&all, mp.data, mp.len), 0);
  }
  CHECK(n > 100);
  /* all of them in one array, as one document */
  sl_buf_reset(&mp);
  sl_codec_put_array(&mp, (uint32_t)n);
  CHECK_EQ(sl_buf_append(&mp, all.data, all.len), 0);
  sl_buf_reset(&js);
  sl_buf_reset(&back);
  CHECK_EQ(sl_codec_to_json(mp.data, mp.len, &js), 0);
  CHECK_EQ(sl_json_to_msgpack((const char *)js.data, js.len, &back, err,
                              sizeof err),
           0);
  CHECK_EQ(back.len, mp.len);
  CHECK(memcmp(back.data, mp.data, mp.len) == 0);
  free(blob);
  sl_buf_close(&mp);
  sl_buf_close(&js);
  sl_buf_close(&back);
  sl_buf_close(&all);
}

/* NDJSON batches (HTTP ingest, file output read back) keep the types too. */
TEST(json_items_read_back_ext_and_non_string_keys) {
  struct sl_buf out, mp, js;
  struct sl_json_error err;
  struct items it;
  sl_buf_init(&out);
  sl_buf_init(&mp);
  sl_buf_init(&js);
  sl_codec_put_map(&mp, 2);
  sl_codec_put_uint(&mp, 1);
  sl_codec_put_ext(&mp, 9, "abcd", 4);
  sl_codec_put_str(&mp, "f", 1);
  sl_codec_put_float(&mp, 0.25f);
  CHECK_EQ(sl_codec_to_json(mp.data, mp.len, &js), 0);
  CHECK_EQ(sl_buf_append(&js, "\n", 2), 0); /* and the NUL */
  memset(&it, 0, sizeof it);
  it.out = &out;
  it.refuse_at = -1;
  CHECK_EQ(sl_json_items_to_msgpack((const char *)js.data, js.len - 1,
                                    SL_JSON_MANY, &out, on_item, &it, &err),
           0);
  CHECK_EQ(it.n, 1);
  CHECK_EQ(out.len, mp.len);
  CHECK(memcmp(out.data, mp.data, mp.len) == 0);
  sl_buf_close(&out);
  sl_buf_close(&mp);
  sl_buf_close(&js);
}

TEST(json_markers_of_the_wrong_shape_stay_plain_maps) {
  static const char *texts[] = {
      "{\"$bin\":\"!!\"}", "{\"$float\":\"zero\"}", "{\"$float32\":[]}",
      "{\"$ext\":[300,\"AA==\"]}", "{\"$ext\":[1]}", "{\"$map\":[1,2]}",
      "{\"$map\":[[1,2,3]]}", "{\"$bin\":\"AA==\",\"x\":1}"};
  struct sl_buf out, js;
  char err[160];
  size_t i;
  sl_buf_init(&out);
  sl_buf_init(&js);
  for (i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    sl_buf_reset(&out);
    sl_buf_reset(&js);
    CHECK_EQ(sl_json_to_msgpack(texts[i], strlen(texts[i]), &out, err,
                                sizeof err),
             0);
    CHECK((out.data[0] & 0xf0) == 0x80); /* a map */
    CHECK_EQ(sl_codec_to_json(out.data, out.len, &js), 0);
    CHECK_EQ(sl_buf_putc(&js, '\0'), 0);
    /* and it says so when written back: the user's key is kept */
    CHECK(strstr((const char *)js.data, texts[i] + 2) != NULL ||
          strncmp((const char *)js.data, "{\"$map\":[[", 10) == 0);
  }
  sl_buf_close(&out);
  sl_buf_close(&js);
}

/* ---- RFC 8259 strictness ------------------------------------------------ */

static int one(const char *text, struct sl_buf *out, char *err, size_t n) {
  sl_buf_reset(out);
  err[0] = '\0';
  return sl_json_to_msgpack(text, strlen(text), out, err, n);
}

TEST(json_form_feed_and_vertical_tab_are_not_white_space) {
  struct sl_buf out;
  struct sl_json_error e;
  struct items it;
  char err[160];
  sl_buf_init(&out);
  CHECK_EQ(one("\f1", &out, err, sizeof err), SL_EPROTO);
  CHECK_STR(err, "byte 0: form feed or vertical tab outside a string");
  CHECK_EQ(one("[1,\v2]", &out, err, sizeof err), SL_EPROTO);
  CHECK_STR(err, "byte 3: form feed or vertical tab outside a string");
  CHECK_EQ(one("\"a\f\"", &out, err, sizeof err), SL_EPROTO); /* raw in a string */
  CHECK_EQ(one("[x\f]", &out, err, sizeof err), SL_EPROTO);
  CHECK(strstr(err, "form feed") == NULL); /* the earlier error is named */
  CHECK_EQ(out.len, 0);
  CHECK_EQ(one("\"a\\f\" ", &out, err, sizeof err), 0); /* escaped: fine */
  CHECK_EQ(run("{\"a\":1}\n{\"b\":2}\f\n", SL_JSON_MANY, &it, &e, &out),
           SL_EPROTO);
  CHECK_EQ(e.index, 2);
  CHECK_EQ(e.line, 2);
  CHECK_EQ(e.offset, 15);
  CHECK_STR(e.msg, "invalid JSON: form feed or vertical tab outside a string");
  sl_buf_close(&out);
}

TEST(json_numbers_of_any_length_are_exact_or_refused_with_the_reason) {
  struct sl_buf out, want;
  char err[160], text[400];
  sl_buf_init(&out);
  sl_buf_init(&want);
  /* 300 digits that are a plain float64 */
  memset(text, '0', sizeof text);
  memcpy(text, "0.", 2);
  text[298] = '1';
  text[299] = '\0';
  CHECK_EQ(one(text, &out, err, sizeof err), 0);
  CHECK_EQ(out.len, 9);
  CHECK_EQ(out.data[0], 0xcb);
  /* the integer edges stay exact */
  CHECK_EQ(one("18446744073709551615", &out, err, sizeof err), 0);
  sl_codec_put_uint(&want, UINT64_MAX);
  CHECK(out.len == want.len && memcmp(out.data, want.data, want.len) == 0);
  CHECK_EQ(one("-9223372036854775808", &out, err, sizeof err), 0);
  sl_buf_reset(&want);
  sl_codec_put_int(&want, INT64_MIN);
  CHECK(out.len == want.len && memcmp(out.data, want.data, want.len) == 0);
  CHECK_EQ(one("00000000000000000000000000000000000000000000000000000000000000000001", &out, err, sizeof err), SL_EPROTO); /* leading zeros: not JSON */
  /* a long integer that fits is exact */
  CHECK_EQ(one("[1, 123456789012345678]", &out, err, sizeof err), 0);
  /* beyond them: refused, saying why */
  CHECK_EQ(one("[18446744073709551616]", &out, err, sizeof err), SL_EPROTO);
  CHECK(strstr(err, "integer above 18446744073709551615 (uint64)") != NULL);
  CHECK_EQ(one("-9223372036854775809", &out, err, sizeof err), SL_EPROTO);
  CHECK(strstr(err, "integer below -9223372036854775808 (int64)") != NULL);
  CHECK_EQ(one("1e400", &out, err, sizeof err), SL_EPROTO);
  CHECK(strstr(err, "number beyond the range of float64") != NULL);
  CHECK_EQ(out.len, 0);
  CHECK_EQ(one("1e-400", &out, err, sizeof err), 0); /* rounds to 0: a float */
  sl_buf_close(&out);
  sl_buf_close(&want);
}

TEST(json_nesting_limit_counts_msgpack_levels) {
  struct sl_buf out;
  char err[160], text[2 * 3 * SL_CODEC_MAX_DEPTH + 8];
  int i;
  sl_buf_init(&out);
  for (i = 0; i < SL_CODEC_MAX_DEPTH; i++) {
    text[i] = '[';
    text[2 * SL_CODEC_MAX_DEPTH - 1 - i] = ']';
  }
  text[2 * SL_CODEC_MAX_DEPTH] = '\0';
  CHECK_EQ(one(text, &out, err, sizeof err), 0);
  for (i = 0; i <= SL_CODEC_MAX_DEPTH; i++) {
    text[i] = '[';
    text[2 * SL_CODEC_MAX_DEPTH + 1 - i] = ']';
  }
  text[2 * SL_CODEC_MAX_DEPTH + 2] = '\0';
  CHECK_EQ(one(text, &out, err, sizeof err), SL_EPROTO);
  CHECK(strstr(err, "nesting deeper than 64") != NULL);
  CHECK_EQ(out.len, 0);
  /* far deeper still is refused while parsing, with the same reason */
  for (i = 0; i < 3 * SL_CODEC_MAX_DEPTH + 3; i++)
    text[i] = '[';
  text[i] = '\0';
  CHECK_EQ(one(text, &out, err, sizeof err), SL_EPROTO);
  CHECK(strstr(err, "nesting deeper than 64") != NULL);
  sl_buf_close(&out);
}

/* yajl alone turns a lone surrogate into "?" and drops the next character,
 * or into bytes that are not UTF-8. */
TEST(json_surrogate_escapes_give_utf8_and_lone_halves_u_fffd) {
  static const struct {
    const char *json, *want;
  } cases[] = {
      {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80"},
      {"\"\\uD83D\\uDE00!\"", "\xf0\x9f\x98\x80!"},
      {"\"\\ud800abc\"", "\xef\xbf\xbd" "abc"},
      {"\"x\\udc00y\"", "x\xef\xbf\xbdy"},
      {"\"\\ud800\\u0041\"", "\xef\xbf\xbd" "A"},
      {"\"\\ud800\\ud800\\udc00\"", "\xef\xbf\xbd\xf0\x90\x80\x80"},
      {"\"\\\\ud800\"", "\\ud800"}, /* an escaped backslash: plain text */
      {"\"\\u00e9\"", "\xc3\xa9"},
  };
  struct sl_buf out;
  struct sl_str s;
  char err[160];
  size_t i;
  sl_buf_init(&out);
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK_EQ(one(cases[i].json, &out, err, sizeof err), 0);
    CHECK_EQ(sl_codec_read_str(out.data, out.len, &s, NULL), 0);
    CHECK_EQ(s.len, strlen(cases[i].want));
    CHECK(memcmp(s.p, cases[i].want, s.len) == 0);
  }
  /* as map keys and in NDJSON batches too */
  CHECK_EQ(one("{\"\\ud800\":1}", &out, err, sizeof err), 0);
  CHECK(out.len == 6 && memcmp(out.data + 1, "\xa3\xef\xbf\xbd", 4) == 0);
  sl_buf_close(&out);
}

/* yajl's own UTF-8 check passes overlong forms, encoded surrogates and
 * code points past U+10FFFF; RFC 8259 text is UTF-8, so they are refused. */
TEST(json_strings_and_keys_must_be_well_formed_utf8) {
  static const char *bad[] = {"\"\xc1\x84\"", "\"\xe0\x80\xaf\"",
                              "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
                              "\"\xff\"", "{\"\xc0\xaf\":1}", "[\"a\xe2\x82\"]"};
  struct sl_buf out;
  char err[160];
  size_t i;
  sl_buf_init(&out);
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_EQ(one(bad[i], &out, err, sizeof err), SL_EPROTO);
    CHECK(strstr(err, "invalid UTF-8 in a string") != NULL);
    CHECK_EQ(out.len, 0);
  }
  CHECK_EQ(one("\"\xf4\x8f\xbf\xbf \xc3\xa9\"", &out, err, sizeof err), 0);
  sl_buf_close(&out);
}

/* An empty HTTP body reaches the reader as (NULL, 0): refused as empty,
 * with no pointer arithmetic on NULL (UBSan caught p + 0). */
TEST(json_empty_input_as_a_null_pointer_is_refused_cleanly) {
  struct sl_buf out;
  struct sl_json_error err;
  struct items it;
  char msg[200];
  sl_buf_init(&out);
  memset(&it, 0, sizeof(it));
  it.out = &out;
  it.refuse_at = -1;
  CHECK(sl_json_items_to_msgpack(NULL, 0, SL_JSON_SPLIT_ARRAY, &out, on_item,
                                 &it, &err) != 0 || it.n == 0);
  CHECK_EQ(it.n, 0);
  CHECK(sl_json_to_msgpack(NULL, 0, &out, msg, sizeof(msg)) != 0);
  sl_buf_close(&out);
}
