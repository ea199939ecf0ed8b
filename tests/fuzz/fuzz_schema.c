/* fuzz_schema.c - libFuzzer target for engine/codec/schema.c and
 * engine/core/regex.c. The first byte picks a mode: compile the rest as a
 * schema's JSON (then check fixed values against it and compare it with
 * itself), check the rest as msgpack against a fixed schema that uses
 * every keyword, or compile the rest as a pattern and search texts with
 * it (its DFA and its NFA must agree). A check gives the same verdict with
 * and without an error to fill, an error always has a message, and a
 * schema compared with itself has no breaking change. Build with `make
 * fuzz`; `make test` runs it for a few seconds. Run
 * e.g. build/fuzz/fuzz_schema -dict=tests/fuzz/fuzz_schema.dict
 * -max_total_time=60. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json.h"
#include "regex.h"
#include "schema.h"
#include "fuzz.h"


static const char fixed_schema[] =
    "{\"$defs\":{\"tree\":{\"type\":\"object\",\"properties\":{\"kids\":"
    "{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/tree\"}},\"v\":"
    "{\"type\":[\"integer\",\"null\"],\"minimum\":-5,\"maximum\":1e6}}}},"
    "\"type\":\"object\",\"required\":[\"id\"],\"properties\":{\"id\":"
    "{\"type\":\"string\",\"minLength\":1,\"maxLength\":8,\"pattern\":"
    "\"^[a-z]+(-\\\\d{1,3})?$\"},\"kind\":{\"enum\":[\"a\",1,null,[1,{}]]},"
    "\"c\":{\"const\":{\"x\":[1.5,true]}},\"t\":{\"$ref\":\"#/$defs/tree\"},"
    "\"any\":{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"array\","
    "\"minItems\":1,\"maxItems\":3,\"items\":{\"$ref\":\"#\"}}]},\"one\":"
    "{\"oneOf\":[{\"type\":\"integer\"},{\"minimum\":2}]},\"b\":{\"type\":"
    "\"binary\"}},\"additionalProperties\":{\"type\":\"boolean\"}}";

static const char *const values[] = {
    "{\"id\":\"ab-12\",\"kind\":1}", "[]", "null", "\"x\"", "1.5",
    "{\"a\":{\"b\":[1,2,{\"c\":null}]}}", "[[[[\"deep\"]]]]", "true",
    "{\"$bin\":\"AAE=\"}", "{\"$ext\":[3,\"AA==\"]}"};

static void check_both(const struct sl_schema *s, const uint8_t *p,
                       size_t n) {
  struct sl_schema_error e;
  int a = sl_schema_check(s, p, n, NULL);
  int b = sl_schema_check(s, p, n, &e);
  ASSERT(a == b);
  ASSERT(a == 0 || a == SL_EINVAL);
  if (b != 0)
    ASSERT(e.msg[0] != '\0');
  ASSERT(memchr(e.path, 0, sizeof(e.path)) && memchr(e.msg, 0, sizeof(e.msg)));
}

static void on_change(void *data, int breaking, const char *path,
                      const char *what) {
  (void)data;
  (void)path;
  ASSERT(!breaking);
  ASSERT(what[0] != '\0');
}

static void as_schema(const uint8_t *data, size_t size) {
  struct sl_schema *s = NULL;
  char err[256];
  size_t i;
  int rc = sl_schema_compile((const char *)data, size, "f", &s, err,
                             sizeof(err));
  ASSERT(rc == 0 || rc == SL_EINVAL || rc == SL_ENOMEM);
  if (rc != 0) {
    ASSERT(s == NULL && err[0] != '\0');
    return;
  }
  for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    struct sl_buf b;
    char msg[160];
    sl_buf_init(&b);
    ASSERT(sl_json_to_msgpack(values[i], strlen(values[i]), &b, msg,
                              sizeof(msg)) == 0);
    check_both(s, b.data, b.len);
    sl_buf_close(&b);
  }
  ASSERT(sl_schema_compare(s, s, on_change, NULL) == 0);
  sl_schema_free(s);
}

static void as_msgpack(const uint8_t *data, size_t size) {
  static struct sl_schema *s;
  char err[256];
  size_t used;
  if (s == NULL)
    ASSERT(sl_schema_compile(fixed_schema, strlen(fixed_schema), "fixed", &s,
                             err, sizeof(err)) == 0);
  if (sl_codec_skip(data, size, size, &used, NULL) != 0)
    return;
  check_both(s, data, used);
}

static void as_pattern(const uint8_t *data, size_t size) {
  static const char *const texts[] = {"", "a", "abc-123", "\xc3\xa9\n",
                                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"};
  struct sl_regex *re;
  char err[160];
  size_t i;
  int rc = sl_regex_compile((const char *)data, size, &re, err, sizeof(err));
  ASSERT(rc == 0 || rc == SL_EINVAL || rc == SL_ENOMEM);
  if (rc != 0)
    return;
  for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
    int m = sl_regex_search(re, (const uint8_t *)texts[i], strlen(texts[i]));
    ASSERT(m == 0 || m == 1);
    ASSERT(m == sl_regex_search_nfa(re, (const uint8_t *)texts[i],
                                    strlen(texts[i]))); /* DFA = NFA */
  }
  ASSERT(sl_regex_search(re, data, size) <= 1);
  ASSERT(sl_regex_search(re, data, size) ==
         sl_regex_search_nfa(re, data, size));
  sl_regex_free(re);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  switch (data[0] % 3) {
  case 0: as_schema(data + 1, size - 1); break;
  case 1: as_msgpack(data + 1, size - 1); break;
  default: as_pattern(data + 1, size - 1); break;
  }
  return 0;
}
