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
