/* test_schema.c - the schema checker: each keyword on valid and invalid
 * msgpack, every type, the JSON path and expectation of the first
 * violation, compile errors, and the comparison of two versions. */
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "json.h"
#include "regex.h"
#include "schema.h"
#include "test.h"

static char cerr[256];

static struct sl_schema *comp(const char *json) {
  struct sl_schema *s = NULL;
  if (sl_schema_compile(json, strlen(json), "t.json", &s, cerr,
                        sizeof(cerr)) != 0)
    return NULL;
  return s;
}

/* Check a JSON document (converted to msgpack) against s: 0 or SL_EINVAL. */
static int chk(const struct sl_schema *s, const char *doc,
               struct sl_schema_error *e) {
  struct sl_buf b;
  char msg[160];
  int rc;
  sl_buf_init(&b);
  if (sl_json_to_msgpack(doc, strlen(doc), &b, msg, sizeof(msg)) != 0) {
    fprintf(stderr, "  bad test JSON %s: %s\n", doc, msg);
    abort();
  }
  rc = sl_schema_check(s, b.data, b.len, e);
  sl_buf_close(&b);
  return rc;
}

#define OK(s, doc) CHECK_EQ(chk(s, doc, NULL), 0)
#define BAD(s, doc) CHECK_EQ(chk(s, doc, NULL), SL_EINVAL)

/* Compile must fail with an error containing want. */
static int compile_fails(const char *json, const char *want) {
  struct sl_schema *s = comp(json);
  if (s != NULL) {
    sl_schema_free(s);
    fprintf(stderr, "  compiled: %s\n", json);
    return 0;
  }
  if (strstr(cerr, want) == NULL) {
    fprintf(stderr, "  error %s\n  does not name %s\n", cerr, want);
    return 0;
  }
  return 1;
}

TEST(schema_type_each_name_accepts_its_msgpack_type_only) {
  struct sl_schema *s;
  static const struct {
    const char *type, *good, *bad;
  } cases[] = {
      {"null", "null", "false"},
      {"boolean", "true", "1"},
      {"integer", "-5", "1.5"},
      {"integer", "3.0", "\"3\""}, /* zero fraction is an integer */
      {"number", "1.5", "\"1.5\""},
      {"number", "18446744073709551615", "null"},
      {"string", "\"x\"", "{\"$bin\":\"eA==\"}"},
      {"array", "[1]", "{}"},
      {"object", "{}", "[]"},
      {"binary", "{\"$bin\":\"eA==\"}", "\"x\""},
  };
  size_t i;
  char buf[128];
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    snprintf(buf, sizeof(buf), "{\"type\":\"%s\"}", cases[i].type);
    s = comp(buf);
    CHECK(s != NULL);
    if (chk(s, cases[i].good, NULL) != 0 ||
        chk(s, cases[i].bad, NULL) != SL_EINVAL) {
      fprintf(stderr, "  type %s: good %s bad %s\n", cases[i].type,
              cases[i].good, cases[i].bad);
      CHECK(0);
    }
    sl_schema_free(s);
  }
}

TEST(schema_type_list_and_ext_values) {
  struct sl_schema *s = comp("{\"type\":[\"string\",\"null\"]}");
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "\"a\"");
  OK(s, "null");
  CHECK_EQ(chk(s, "7", &e), SL_EINVAL);
  CHECK_STR(e.path, "");
  CHECK_STR(e.msg, "null or string");
  CHECK_EQ(chk(s, "{\"$ext\":[1,\"AA==\"]}", NULL), SL_EINVAL);
  sl_schema_free(s);
  s = comp("{}"); /* no type: anything, ext too */
  CHECK(s != NULL);
  OK(s, "{\"$ext\":[1,\"AA==\"]}");
  sl_schema_free(s);
}

static const char *order =
    "{\"type\":\"object\",\"required\":[\"id\",\"amount\"],"
    "\"additionalProperties\":false,"
    "\"properties\":{\"id\":{\"type\":\"string\",\"minLength\":2},"
    "\"amount\":{\"type\":\"number\",\"minimum\":0,\"maximum\":1000},"
    "\"items\":{\"type\":\"array\",\"maxItems\":3,\"items\":{\"type\":"
    "\"object\",\"properties\":{\"sku\":{\"type\":\"string\"}}}}}}";

TEST(schema_nested_violation_names_its_json_path) {
  struct sl_schema *s = comp(order);
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "{\"id\":\"ab\",\"amount\":5,\"items\":[{\"sku\":\"x\"}]}");
  CHECK_EQ(chk(s, "{\"id\":\"ab\",\"amount\":5,\"items\":[{\"sku\":\"x\"},"
                  "{\"sku\":4}]}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/items/1/sku");
  CHECK_STR(e.msg, "string");
  CHECK_EQ(chk(s, "{\"id\":\"ab\",\"amount\":5,\"items\":[1,2,3,4]}", &e),
           SL_EINVAL);
  CHECK_STR(e.path, "/items");
  CHECK_STR(e.msg, "at most 3 items");
  CHECK_EQ(chk(s, "{\"id\":\"ab\",\"amount\":-1}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/amount");
  CHECK_STR(e.msg, "a number >= 0");
  CHECK_EQ(chk(s, "{\"id\":\"ab\",\"amount\":1000.5}", &e), SL_EINVAL);
  CHECK_STR(e.msg, "a number <= 1000");
  CHECK_EQ(chk(s, "{\"id\":\"a\",\"amount\":1}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/id");
  CHECK_STR(e.msg, "at least 2 characters");
  sl_schema_free(s);
}

TEST(schema_required_and_additional_properties) {
  struct sl_schema *s = comp(order);
  struct sl_schema_error e;
  CHECK(s != NULL);
  CHECK_EQ(chk(s, "{\"id\":\"ab\"}", &e), SL_EINVAL);
  CHECK_STR(e.path, "");
  CHECK_STR(e.msg, "required property \"amount\"");
  CHECK_EQ(chk(s, "{\"id\":\"ab\",\"amount\":1,\"x/y\":1}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/x~1y");
  CHECK(strstr(e.msg, "additionalProperties") != NULL);
  sl_schema_free(s);
  /* additionalProperties as a schema; required without properties */
  s = comp("{\"required\":[\"a\"],\"additionalProperties\":{\"type\":"
           "\"integer\"}}");
  CHECK(s != NULL);
  OK(s, "{\"a\":1,\"b\":2}");
  BAD(s, "{\"b\":2}");
  CHECK_EQ(chk(s, "{\"a\":1,\"b\":\"x\"}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/b");
  OK(s, "[]"); /* object keywords ignore other types */
  sl_schema_free(s);
  /* a name only in required is no property: additionalProperties applies */
  s = comp("{\"required\":[\"a\"],\"additionalProperties\":false}");
  CHECK(s != NULL);
  BAD(s, "{\"a\":1}");
  BAD(s, "{}");
  sl_schema_free(s);
}

TEST(schema_required_beyond_64_names_each_counted) {
  char buf[8192], doc[8192];
  size_t n = 0, m = 0;
  struct sl_schema *s;
  struct sl_schema_error e;
  int i;
  n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{\"required\":[");
  m += (size_t)snprintf(doc + m, sizeof(doc) - m, "{");
  for (i = 0; i < 100; i++) {
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"f%d\"", i ? "," : "",
                          i);
    if (i != 77)
      m += (size_t)snprintf(doc + m, sizeof(doc) - m, "%s\"f%d\":%d",
                            m > 1 ? "," : "", i, i);
  }
  snprintf(buf + n, sizeof(buf) - n, "]}");
  snprintf(doc + m, sizeof(doc) - m, "}");
  s = comp(buf);
  CHECK(s != NULL);
  CHECK_EQ(chk(s, doc, &e), SL_EINVAL);
  CHECK_STR(e.msg, "required property \"f77\"");
  sl_schema_free(s);
}

TEST(schema_many_properties_found_out_of_order) {
  char buf[8192];
  size_t n = 0;
  struct sl_schema *s;
  struct sl_schema_error e;
  int i;
  n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                        "{\"additionalProperties\":false,\"properties\":{");
  for (i = 0; i < 40; i++)
    n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                          "%s\"k%d\":{\"const\":%d}", i ? "," : "", i, i);
  snprintf(buf + n, sizeof(buf) - n, "}}");
  s = comp(buf);
  CHECK(s != NULL);
  OK(s, "{\"k39\":39,\"k3\":3,\"k20\":20,\"k0\":0}");
  CHECK_EQ(chk(s, "{\"k39\":39,\"k3\":4}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/k3");
  CHECK_STR(e.msg, "the value 3");
  BAD(s, "{\"k40\":1}");
  sl_schema_free(s);
}

TEST(schema_enum_and_const_compare_numbers_by_value_and_containers_deeply) {
  struct sl_schema *s = comp("{\"enum\":[1,\"a\",null,[1,{\"x\":2}]]}");
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "1");
  OK(s, "1.0");
  OK(s, "\"a\"");
  OK(s, "null");
  OK(s, "[1.0,{\"x\":2}]");
  BAD(s, "true");
  BAD(s, "[1,{\"x\":3}]");
  BAD(s, "[{\"x\":2},1]");
  CHECK_EQ(chk(s, "\"b\"", &e), SL_EINVAL);
  CHECK_STR(e.msg, "one of [1,\"a\",null,[1,{\"x\":2}]]");
  sl_schema_free(s);
  s = comp("{\"const\":{\"a\":1,\"b\":[true]}}");
  CHECK(s != NULL);
  OK(s, "{\"b\":[true],\"a\":1}");
  BAD(s, "{\"b\":[true],\"a\":1,\"c\":0}");
  BAD(s, "{\"b\":[1],\"a\":1}"); /* true is not 1 */
  sl_schema_free(s);
  s = comp("{\"const\":-9007199254740993}");
  CHECK(s != NULL);
  OK(s, "-9007199254740993");
  BAD(s, "-9007199254740992"); /* exact for 64-bit integers */
  sl_schema_free(s);
}

TEST(schema_lengths_count_code_points) {
  struct sl_schema *s = comp("{\"minLength\":2,\"maxLength\":3}");
  CHECK(s != NULL);
  OK(s, "\"\xc3\xa9\xc3\xa9\"");         /* 2 code points, 4 bytes */
  OK(s, "\"\xf0\x9f\x98\x80\xc3\xa9\xc3\xa9\""); /* 3, 8 bytes */
  BAD(s, "\"\xf0\x9f\x98\x80\"");        /* 1 code point, 4 bytes */
  BAD(s, "\"abcd\"");
  OK(s, "7");
  sl_schema_free(s);
}

TEST(schema_items_and_item_counts) {
  struct sl_schema *s =
      comp("{\"type\":\"array\",\"minItems\":1,\"items\":{\"type\":"
           "\"integer\"}}");
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "[1,2,3]");
  CHECK_EQ(chk(s, "[]", &e), SL_EINVAL);
  CHECK_STR(e.msg, "at least 1 items");
  CHECK_EQ(chk(s, "[1,2,\"x\"]", &e), SL_EINVAL);
  CHECK_STR(e.path, "/2");
  sl_schema_free(s);
  s = comp("{\"items\":false}");
  CHECK(s != NULL);
  OK(s, "[]");
  BAD(s, "[1]");
  sl_schema_free(s);
}

TEST(schema_bounds_compare_64_bit_integers_exactly) {
  struct sl_schema *s = comp("{\"maximum\":9007199254740993}");
  CHECK(s != NULL);
  OK(s, "9007199254740993");
  BAD(s, "9007199254740994");
  BAD(s, "18446744073709551615");
  sl_schema_free(s);
  s = comp("{\"minimum\":0.5}");
  CHECK(s != NULL);
  OK(s, "1");
  BAD(s, "0");
  BAD(s, "{\"$float\":\"nan\"}");
  sl_schema_free(s);
}

TEST(schema_unknown_keyword_is_a_compile_error_naming_it_and_its_path) {
  CHECK(compile_fails("{\"properties\":{\"a\":{\"format\":\"email\"}}}",
                      "unsupported keyword \"format\" at /properties/a"));
  CHECK(compile_fails("{\"type\":\"float\"}", "unknown type \"float\""));
  CHECK(compile_fails("{\"items\":[{}]}", "prefixItems"));
  CHECK(compile_fails("{\"minLength\":-1}", "minLength"));
  CHECK(compile_fails("{\"minimum\":\"1\"}", "minimum"));
  CHECK(compile_fails("[]", "object or a boolean"));
  CHECK(compile_fails("{\"a\":", "not JSON"));
  CHECK(compile_fails("{\"properties\":{\"a\":1}}", "/properties/a"));
  CHECK(compile_fails("{\"required\":[1]}", "required"));
}

TEST(schema_annotations_are_accepted) {
  struct sl_schema *s =
      comp("{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\","
           "\"$id\":\"x\",\"title\":\"t\",\"description\":\"d\","
           "\"$comment\":\"c\",\"default\":1,\"examples\":[1],"
           "\"$defs\":{}}");
  CHECK(s != NULL);
  OK(s, "1");
  sl_schema_free(s);
}

TEST(schema_boolean_schemas) {
  struct sl_schema *s = comp("{\"properties\":{\"a\":false,\"b\":true}}");
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "{\"b\":1}");
  CHECK_EQ(chk(s, "{\"a\":1}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/a");
  sl_schema_free(s);
  s = comp("false");
  CHECK(s != NULL);
  BAD(s, "null");
  sl_schema_free(s);
}

TEST(schema_load_file_reads_and_names_the_file) {
  char path[] = "/tmp/test_schema_XXXXXX";
  char err[256];
  struct sl_schema *s = NULL;
  int fd = mkstemp(path);
  FILE *f;
  CHECK(fd >= 0);
  f = fdopen(fd, "w");
  fputs("{\"type\":\"integer\",\"bogus\":1}", f);
  fclose(f);
  CHECK_EQ(sl_schema_load_file(path, &s, err, sizeof(err)), SL_EINVAL);
  CHECK(strstr(err, path) != NULL);
  CHECK(strstr(err, "\"bogus\"") != NULL);
  f = fopen(path, "w");
  fputs("{\"type\":\"integer\"}", f);
  fclose(f);
  CHECK_EQ(sl_schema_load_file(path, &s, err, sizeof(err)), 0);
  OK(s, "1");
  sl_schema_free(s);
  unlink(path);
  CHECK_EQ(sl_schema_load_file(path, &s, err, sizeof(err)), SL_EINVAL);
  CHECK(strstr(err, "cannot open") != NULL);
}

TEST(schema_ref_to_defs_and_root_recurses_through_data) {
  struct sl_schema *s =
      comp("{\"type\":\"object\",\"properties\":{\"name\":{\"$ref\":"
           "\"#/$defs/name\"},\"kids\":{\"type\":\"array\",\"items\":"
           "{\"$ref\":\"#\"}}},\"$defs\":{\"name\":{\"type\":\"string\","
           "\"maxLength\":3}}}");
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "{\"name\":\"a\",\"kids\":[{\"name\":\"b\",\"kids\":[{}]}]}");
  CHECK_EQ(chk(s, "{\"kids\":[{\"kids\":[{\"name\":\"long\"}]}]}", &e),
           SL_EINVAL);
  CHECK_STR(e.path, "/kids/0/kids/0/name");
  CHECK_STR(e.msg, "at most 3 characters");
  sl_schema_free(s);
}

TEST(schema_ref_cycle_without_data_progress_is_a_compile_error) {
  CHECK(compile_fails("{\"$ref\":\"#\"}", "cycle"));
  CHECK(compile_fails("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":"
                      "{\"anyOf\":[{\"$ref\":\"#/$defs/a\"}]}},\"$ref\":"
                      "\"#/$defs/a\"}", "cycle"));
  CHECK(compile_fails("{\"$ref\":\"#/$defs/nope\"}", "names no entry"));
  CHECK(compile_fails("{\"$ref\":\"other.json\"}", "only \"#\""));
  CHECK(compile_fails("{\"$ref\":\"#/properties/a\"}", "only \"#\""));
}

TEST(schema_any_of_and_one_of) {
  struct sl_schema *s =
      comp("{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"object\","
           "\"required\":[\"a\"]}]}");
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "\"x\"");
  OK(s, "{\"a\":1}");
  CHECK_EQ(chk(s, "{\"b\":1}", &e), SL_EINVAL);
  CHECK(strstr(e.msg, "required property \"a\"") != NULL);
  CHECK(strstr(e.msg, "anyOf") != NULL);
  sl_schema_free(s);
  s = comp("{\"oneOf\":[{\"type\":\"integer\"},{\"minimum\":5}]}");
  CHECK(s != NULL);
  OK(s, "1");     /* integer only */
  OK(s, "5.5");   /* minimum only */
  CHECK_EQ(chk(s, "7", &e), SL_EINVAL); /* both */
  CHECK(strstr(e.msg, "exactly one") != NULL);
  BAD(s, "2.5");  /* neither */
  sl_schema_free(s);
  CHECK(compile_fails("{\"anyOf\":[]}", "non-empty"));
  CHECK(compile_fails("{\"oneOf\":[{},{},{},{},{},{},{},{},{},{},{},{},{},{},"
                      "{},{},{}]}", "at most 16"));
}

TEST(schema_any_of_over_recursion_stays_bounded) {
  /* the first branch walks the whole value and only then fails (const):
   * without a budget, 2^depth checks */
  struct sl_schema *s =
      comp("{\"anyOf\":[{\"items\":{\"$ref\":\"#\"},\"const\":0},"
           "{\"items\":{\"$ref\":\"#\"}}]}");
  char doc[256];
  int i;
  struct sl_schema_error e;
  CHECK(s != NULL);
  for (i = 0; i < 8; i++) {
    doc[i] = '[';
    doc[9 + i] = ']';
  }
  doc[8] = '1';
  doc[17] = '\0';
  OK(s, doc); /* shallow: fits within the budget */
  for (i = 0; i < 60; i++) {
    doc[i] = '[';
    doc[61 + i] = ']';
  }
  doc[60] = '1';
  doc[121] = '\0';
  CHECK_EQ(chk(s, doc, &e), SL_EINVAL);
  CHECK(strstr(e.msg, "bounded time") != NULL);
  sl_schema_free(s);
}

/* 1 match, 0 no match, -1 compile error */
static int re_search(const char *pat, const char *text) {
  struct sl_regex *re;
  char err[160];
  int m;
  if (sl_regex_compile(pat, strlen(pat), &re, err, sizeof(err)) != 0)
    return -1;
  m = sl_regex_search(re, (const uint8_t *)text, strlen(text));
  sl_regex_free(re);
  return m;
}

static int re_error(const char *pat, const char *want) {
  struct sl_regex *re = NULL;
  char err[160];
  if (sl_regex_compile(pat, strlen(pat), &re, err, sizeof(err)) == 0) {
    sl_regex_free(re);
    fprintf(stderr, "  compiled: %s\n", pat);
    return 0;
  }
  if (strstr(err, want) == NULL) {
    fprintf(stderr, "  %s: error %s does not name %s\n", pat, err, want);
    return 0;
  }
  return 1;
}

TEST(regex_searches_unanchored_with_anchors_where_given) {
  CHECK_EQ(re_search("abc", "xxabcxx"), 1);
  CHECK_EQ(re_search("^abc", "xxabc"), 0);
  CHECK_EQ(re_search("^abc$", "abc"), 1);
  CHECK_EQ(re_search("abc$", "abcx"), 0);
  CHECK_EQ(re_search("", "anything"), 1);
  CHECK_EQ(re_search("^$", ""), 1);
  CHECK_EQ(re_search("^$", "\n"), 0); /* $ is the end only */
  CHECK_EQ(re_search("a|^b", "cb"), 0);
  CHECK_EQ(re_search("x|^b", "bc"), 1);
}

TEST(regex_classes_escapes_and_dot) {
  CHECK_EQ(re_search("^\\d+$", "0123"), 1);
  CHECK_EQ(re_search("^\\d+$", "01a3"), 0);
  CHECK_EQ(re_search("^\\w\\W\\s\\S$", "a- x"), 1);
  CHECK_EQ(re_search("^\\D$", "5"), 0);
  CHECK_EQ(re_search("^[a-c_\\d]+$", "ab_9c"), 1);
  CHECK_EQ(re_search("^[^a-c]$", "d"), 1);
  CHECK_EQ(re_search("^[^a-c]$", "b"), 0);
  CHECK_EQ(re_search("^[\\D]$", "x"), 1);
  CHECK_EQ(re_search("^[\\S]$", " "), 0);
  CHECK_EQ(re_search("^[-a]+$", "-a-"), 1);
  CHECK_EQ(re_search("^[a-]+$", "-a-"), 1);
  CHECK_EQ(re_search("^\\.\\*\\\\$", ".*\\"), 1);
  CHECK_EQ(re_search("^\\x41\\u00e9$", "A\xc3\xa9"), 1);
  CHECK_EQ(re_search("^\\t\\n$", "\t\n"), 1);
  CHECK_EQ(re_search("^.$", "\xc3\xa9"), 1);      /* one code point */
  CHECK_EQ(re_search("^..$", "\xc3\xa9"), 0);
  CHECK_EQ(re_search("^.$", "\n"), 0);
  CHECK_EQ(re_search("^[\xc3\xa0-\xc3\xbf]$", "\xc3\xa9"), 1);
  CHECK_EQ(re_search("^\\}]$", "}]"), 1);
}

TEST(regex_groups_alternation_and_quantifiers) {
  CHECK_EQ(re_search("^(ab|cd)+$", "abcdab"), 1);
  CHECK_EQ(re_search("^(ab|cd)+$", "abc"), 0);
  CHECK_EQ(re_search("^(?:a|b|)c$", "c"), 1);
  CHECK_EQ(re_search("^a{3}$", "aaa"), 1);
  CHECK_EQ(re_search("^a{3}$", "aa"), 0);
  CHECK_EQ(re_search("^a{2,}$", "aaaaa"), 1);
  CHECK_EQ(re_search("^a{2,}$", "a"), 0);
  CHECK_EQ(re_search("^a{1,3}$", "aaa"), 1);
  CHECK_EQ(re_search("^a{1,3}$", "aaaa"), 0);
  CHECK_EQ(re_search("^a{0,0}b$", "b"), 1);
  CHECK_EQ(re_search("^a?b*?c+$", "bbc"), 1);
  CHECK_EQ(re_search("^(a*)*$", "aaaa"), 1);
  CHECK_EQ(re_search("^(a|ab)(c|bcd)(d*)$", "abcd"), 1);
  CHECK_EQ(re_search("^\\d{1000}$", "1"), 0);
}

TEST(regex_time_stays_linear_on_backtracking_killers) {
  char text[4096];
  memset(text, 'a', sizeof(text) - 2);
  text[sizeof(text) - 2] = 'b';
  text[sizeof(text) - 1] = '\0';
  /* a backtracking engine takes 2^n steps on these */
  CHECK_EQ(re_search("^(a+)+$", text), 0);
  CHECK_EQ(re_search("^(a|a)*c", text), 0);
  CHECK_EQ(re_search("(a*)*c", text), 0);
}

TEST(regex_unsupported_constructs_are_named) {
  CHECK(re_error("(a)\\1", "backreference"));
  CHECK(re_error("a(?=b)", "lookahead"));
  CHECK(re_error("a(?!b)", "lookahead"));
  CHECK(re_error("(?<=a)b", "lookbehind"));
  CHECK(re_error("(?<n>a)", "named groups"));
  CHECK(re_error("\\bword", "word boundary"));
  CHECK(re_error("\\p{L}", "Unicode property"));
  CHECK(re_error("a{1001}", "over 1000"));
  CHECK(re_error("a{3,2}", "out of order"));
  CHECK(re_error("a{x}", "quantifier"));
  CHECK(re_error("*a", "nothing to repeat"));
  CHECK(re_error("a**", "nothing to repeat"));
  CHECK(re_error("^*", "nothing to repeat"));
  CHECK(re_error("(a", "not closed"));
  CHECK(re_error("a)", "unmatched"));
  CHECK(re_error("[a", "not closed"));
  CHECK(re_error("[z-a]", "out of order"));
  CHECK(re_error("\\q", "unknown escape"));
  CHECK(re_error("a\\", "backslash"));
  CHECK(re_error("(a{1000}){3}", "instructions"));
}

TEST(schema_pattern_checks_strings_only) {
  struct sl_schema *s = comp("{\"properties\":{\"sku\":{\"pattern\":"
                             "\"^[A-Z]{2}-\\\\d+$\"}}}");
  struct sl_schema_error e;
  CHECK(s != NULL);
  OK(s, "{\"sku\":\"AB-12\"}");
  OK(s, "{\"sku\":12}");
  CHECK_EQ(chk(s, "{\"sku\":\"ab-12\"}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/sku");
  CHECK_STR(e.msg, "a string matching \"^[A-Z]{2}-\\d+$\"");
  sl_schema_free(s);
  CHECK(compile_fails("{\"pattern\":\"(?=x)\"}", "pattern at the root: "));
  CHECK(compile_fails("{\"pattern\":\"(?=x)\"}", "lookahead"));
}

/* Compare two schemas; collect "B path: what" / "C path: what" lines. */
struct changes {
  char text[4096];
  size_t len;
};

static void on_change(void *data, int breaking, const char *path,
                      const char *what) {
  struct changes *ch = data;
  ch->len += (size_t)snprintf(ch->text + ch->len, sizeof(ch->text) - ch->len,
                              "%c %s: %s\n", breaking ? 'B' : 'C', path, what);
}

static int compare(const char *older, const char *newer, struct changes *ch) {
  struct sl_schema *a = comp(older), *b = comp(newer);
  int n;
  ch->len = 0;
  ch->text[0] = '\0';
  if (a == NULL || b == NULL) {
    fprintf(stderr, "  compile: %s\n", cerr);
    abort();
  }
  n = sl_schema_compare(a, b, on_change, ch);
  sl_schema_free(a);
  sl_schema_free(b);
  return n;
}

#define CHANGE(older, newer, nbreaking, line)                              \
  do {                                                                     \
    struct changes ch_;                                                    \
    int n_ = compare(older, newer, &ch_);                                  \
    if (n_ != (nbreaking) || strstr(ch_.text, line) == NULL) {             \
      fprintf(stderr, "  got %d breaking:\n%s  want %d and: %s\n", n_,    \
              ch_.text, (nbreaking), line);                                \
      CHECK(0);                                                            \
    }                                                                      \
  } while (0)

#define P(x) "{\"type\":\"object\",\"properties\":{" x "}}"
#define PR(x, r) "{\"type\":\"object\",\"required\":[" r "],\"properties\":{" x "}}"

TEST(compare_same_schema_reports_nothing) {
  struct changes ch;
  CHECK_EQ(compare(order, order, &ch), 0);
  CHECK_EQ(ch.len, 0);
}

TEST(compare_field_removed_or_made_required_breaks) {
  CHANGE(P("\"a\":{},\"b\":{}"), P("\"a\":{}"), 1,
         "B : field \"b\" removed");
  CHANGE(P("\"a\":{}"), PR("\"a\":{}", "\"a\""), 1,
         "B : field \"a\" made required");
  CHANGE(P("\"a\":{}"), PR("\"a\":{},\"b\":{}", "\"b\""), 1,
         "B : required field \"b\" added");
  CHANGE(PR("\"a\":{}", "\"a\""), P("\"a\":{}"), 0,
         "C : field \"a\" made optional");
}

TEST(compare_optional_field_added_is_compatible) {
  CHANGE(P("\"a\":{}"), P("\"a\":{},\"note\":{\"type\":\"string\"}"), 0,
         "C : optional field \"note\" added");
}

TEST(compare_type_narrowed_breaks_and_widened_does_not) {
  CHANGE(P("\"n\":{\"type\":\"number\"}"), P("\"n\":{\"type\":\"integer\"}"),
         1, "B /properties/n: type narrowed from number to integer");
  CHANGE(P("\"n\":{\"type\":\"integer\"}"), P("\"n\":{\"type\":\"number\"}"),
         0, "C /properties/n: type widened from integer to number");
  CHANGE("{\"type\":[\"string\",\"null\"]}", "{\"type\":\"string\"}", 1,
         "type narrowed from null/string to string");
  CHANGE("{}", "{\"type\":\"string\"}", 1, "type narrowed from any");
}

TEST(compare_enum_and_const) {
  CHANGE("{\"enum\":[\"a\",\"b\"]}", "{\"enum\":[\"a\"]}", 1,
         "B : enum value \"b\" removed");
  CHANGE("{\"enum\":[\"a\"]}", "{\"enum\":[\"a\",\"c\"]}", 0,
         "C : enum value \"c\" added");
  CHANGE("{\"enum\":[1]}", "{\"enum\":[1.0]}", 0, "");
  CHANGE("{}", "{\"enum\":[1]}", 1, "enum added");
  CHANGE("{\"const\":1}", "{\"const\":2}", 1, "const changed from 1 to 2");
  CHANGE("{\"const\":1}", "{}", 0, "const removed");
}

TEST(compare_bounds_raised_or_lowered) {
  CHANGE("{\"minimum\":0}", "{\"minimum\":1}", 1, "minimum raised from 0 to 1");
  CHANGE("{\"minimum\":1}", "{\"minimum\":0}", 0, "minimum lowered");
  CHANGE("{\"maximum\":9}", "{\"maximum\":8}", 1, "maximum lowered");
  CHANGE("{\"maximum\":9}", "{}", 0, "maximum 9 removed");
  CHANGE("{}", "{\"maximum\":9}", 1, "maximum 9 added");
  CHANGE("{\"maxLength\":9}", "{\"maxLength\":3}", 1, "maxLength lowered");
  CHANGE("{\"minLength\":1}", "{\"minLength\":3}", 1, "minLength raised");
  CHANGE("{\"maxItems\":9}", "{\"maxItems\":10}", 0, "maxItems raised");
  CHANGE("{\"minItems\":2}", "{\"minItems\":3}", 1, "minItems raised");
}

TEST(compare_additional_properties_and_pattern) {
  CHANGE("{}", "{\"additionalProperties\":false}", 1,
         "additionalProperties changed from true to false");
  CHANGE("{\"additionalProperties\":false}", "{}", 0,
         "additionalProperties changed from false to true");
  CHANGE("{\"additionalProperties\":{\"type\":\"number\"}}",
         "{\"additionalProperties\":{\"type\":\"integer\"}}", 1,
         "B /additionalProperties: type narrowed");
  CHANGE("{}", "{\"pattern\":\"^a\"}", 1, "pattern \"^a\" added");
  CHANGE("{\"pattern\":\"^a\"}", "{\"pattern\":\"^b\"}", 1, "pattern \"^b\"");
  CHANGE("{\"pattern\":\"^a\"}", "{}", 0, "pattern removed");
}

TEST(compare_recurses_into_items_and_defs) {
  CHANGE("{\"items\":" P("\"q\":{\"type\":\"number\"}") "}",
         "{\"items\":" P("\"q\":{\"type\":\"integer\"}") "}", 1,
         "B /items/properties/q: type narrowed");
  CHANGE("{\"$defs\":{\"d\":{\"enum\":[1,2]}},\"$ref\":\"#/$defs/d\"}",
         "{\"$defs\":{\"d\":{\"enum\":[1]}},\"$ref\":\"#/$defs/d\"}", 1,
         "B /$defs/d: enum value 2 removed");
  CHANGE("{\"anyOf\":[{\"type\":\"string\"}]}",
         "{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]}", 0,
         "anyOf branch 1 added");
}

TEST(schema_property_names_of_every_length_are_found_in_and_out_of_order) {
  /* 1, 7, 8, 31 and 40 bytes: fixstr and str8 keys, the in-order fast
   * path and the lookup behind it */
  static const char *names[] = {"a", "abcdefg", "abcdefgh",
                                "abcdefghijklmnopqrstuvwxyz01234",
                                "abcdefghijklmnopqrstuvwxyz0123456789ABCD"};
  char schema[1024], doc[1024], rev[1024];
  size_t n = 0, m = 0, r = 0;
  struct sl_schema *s;
  struct sl_schema_error e;
  int i;
  n += (size_t)snprintf(schema + n, sizeof(schema) - n,
                        "{\"additionalProperties\":false,\"properties\":{");
  for (i = 0; i < 5; i++) {
    n += (size_t)snprintf(schema + n, sizeof(schema) - n,
                          "%s\"%s\":{\"const\":%d}", i ? "," : "", names[i], i);
    m += (size_t)snprintf(doc + m, sizeof(doc) - m, "%s\"%s\":%d",
                          i ? "," : "{", names[i], i);
    r += (size_t)snprintf(rev + r, sizeof(rev) - r, "%s\"%s\":%d",
                          i ? "," : "{", names[4 - i], 4 - i);
  }
  snprintf(schema + n, sizeof(schema) - n, "}}");
  snprintf(doc + m, sizeof(doc) - m, "}");
  snprintf(rev + r, sizeof(rev) - r, "}");
  s = comp(schema);
  CHECK(s != NULL);
  OK(s, doc);
  OK(s, rev);
  BAD(s, "{\"abcdefgx\":1}");  /* a 7-byte prefix of a name is not it */
  BAD(s, "{\"abcdefghijklmnopqrstuvwxyz01235\":1}");
  CHECK_EQ(chk(s, "{\"a\":0,\"abcdefg\":1,\"abcdefgh\":3}", &e), SL_EINVAL);
  CHECK_STR(e.path, "/abcdefgh");
  sl_schema_free(s);
}

TEST(schema_bounds_hold_for_every_integer_encoding) {
  struct sl_schema *s = comp("{\"type\":\"integer\",\"minimum\":-3,"
                             "\"maximum\":300.5}");
  CHECK(s != NULL);
  OK(s, "-3");    /* negative fixint */
  BAD(s, "-4");
  OK(s, "300");   /* uint16 */
  BAD(s, "301");
  BAD(s, "70000"); /* uint32 */
  BAD(s, "-200"); /* int16 */
  OK(s, "200");   /* uint8 */
  OK(s, "2.0");   /* float64, integral */
  BAD(s, "2.5");
  sl_schema_free(s);
}

TEST(schema_bounds_compare_floats_and_uint64_with_integral_bounds_exactly) {
  /* 2^63 as a float is above INT64_MAX, though (double)INT64_MAX is 2^63 */
  struct sl_schema *s = comp("{\"maximum\":9223372036854775807}");
  CHECK(s != NULL);
  OK(s, "9223372036854775807");
  OK(s, "9223372036854774784.0"); /* 2^63 - 1024, the float below */
  BAD(s, "9223372036854775808.0");
  sl_schema_free(s);
  /* 2^53 as a float is below 2^53 + 1 */
  s = comp("{\"minimum\":9007199254740993}");
  CHECK(s != NULL);
  OK(s, "9007199254740993");
  BAD(s, "9007199254740992.0");
  BAD(s, "9007199254740992");
  sl_schema_free(s);
  /* bounds above INT64_MAX compare uint64 values exactly */
  s = comp("{\"maximum\":18446744073709551613}");
  CHECK(s != NULL);
  OK(s, "18446744073709551613");
  OK(s, "-1");
  BAD(s, "18446744073709551614");
  BAD(s, "18446744073709551616.0");
  sl_schema_free(s);
  s = comp("{\"minimum\":9223372036854775809}");
  CHECK(s != NULL);
  OK(s, "9223372036854775809");
  BAD(s, "9223372036854775808");
  BAD(s, "9223372036854775807");
  BAD(s, "9223372036854775808.0");
  sl_schema_free(s);
  /* an integral float bound near 2^63 holds for the integers around it */
  s = comp("{\"maximum\":-9.2233720368547748e18}"); /* -2^63 + 1024 */
  CHECK(s != NULL);
  OK(s, "-9223372036854774784");
  BAD(s, "-9223372036854774783");
  sl_schema_free(s);
}

/* The CPU this thread spent, s: the bounds below catch quadratic work
 * (minutes), and wall time measures the machine instead (a compare of
 * 0.6 s of CPU took 4.4 s on this 2-core VM under load, 1.3 s took 13.9 s
 * under ASan). */
static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

TEST(schema_compile_of_a_wide_object_stays_fast) {
  /* 100000 properties in reverse order and a long required list: a few
   * MiB a schema file may hold. Compile time must not be quadratic (it
   * took minutes): the bound is ~50x what it takes. */
  enum { N = 100000, R = 200000 };
  size_t cap = (size_t)N * 40 + (size_t)R * 12 + 64;
  char *j = malloc(cap), *q = j;
  struct sl_schema *s;
  double t0;
  int i;
  CHECK(j != NULL);
  q += sprintf(q, "{\"properties\":{");
  for (i = N - 1; i >= 0; i--)
    q += sprintf(q, "\"p%d\":{\"type\":\"integer\"}%s", i, i ? "," : "");
  q += sprintf(q, "},\"required\":[");
  for (i = 0; i < R; i++)
    q += sprintf(q, "\"p%d\"%s", i % 100, i < R - 1 ? "," : "");
  sprintf(q, "]}");
  t0 = cpu_s();
  s = comp(j);
  if (cpu_s() - t0 > 5.0)
    fprintf(stderr, "  compile took %.1f s\n", cpu_s() - t0);
  CHECK(cpu_s() - t0 < 5.0);
  CHECK(s != NULL);
  q = j;
  q += sprintf(q, "{");
  for (i = 99; i >= 0; i--)
    q += sprintf(q, "\"p%d\":%d%s", i, i, i ? "," : "}");
  OK(s, j);
  BAD(s, "{\"p0\":1}");
  BAD(s, "{\"p0\":\"x\"}");
  sl_schema_free(s);
  free(j);
  /* and a duplicate among them is still found */
  CHECK(compile_fails("{\"properties\":{\"b\":true,\"a\":true,\"c\":true,"
                      "\"a\":false}}",
                      "property \"a\" appears twice at /properties"));
}

TEST(schema_const_map_is_not_matched_by_a_map_repeating_one_key) {
  /* {"a":1,"a":1} has as many pairs as {"a":1,"b":2} and each of its pairs
   * is in it, but it has no "b": a producer must not pass const or enum
   * with a repeated key */
  struct sl_schema *s = comp("{\"const\":{\"a\":1,\"b\":2}}");
  static const uint8_t dup[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x01};
  static const uint8_t ok[] = {0x82, 0xa1, 'b', 0x02, 0xa1, 'a', 0x01};
  CHECK(s != NULL);
  CHECK_EQ(sl_schema_check(s, ok, sizeof(ok), NULL), 0);
  CHECK_EQ(sl_schema_check(s, dup, sizeof(dup), NULL), SL_EINVAL);
  sl_schema_free(s);
  s = comp("{\"enum\":[{\"a\":1,\"b\":2},3]}");
  CHECK(s != NULL);
  CHECK_EQ(sl_schema_check(s, ok, sizeof(ok), NULL), 0);
  CHECK_EQ(sl_schema_check(s, dup, sizeof(dup), NULL), SL_EINVAL);
  sl_schema_free(s);
}

/* older: N enum values, N properties, N $defs; newer: the same reversed
 * (1 as 1.0, maps reordered), with v0 / p0 / d0 left out and one added. */
static char *wide_schema(int n, int newer) {
  char *j = malloc((size_t)n * 120 + 256), *q = j;
  int i, k;
  q += sprintf(q, "{\"enum\":[");
  for (k = 0; k < n; k++) {
    i = newer ? n - 1 - k : k;
    if (newer && i == 0)
      q += sprintf(q, "\"new\",");
    else if (i % 3 == 0)
      q += sprintf(q, newer ? "%d.0," : "%d,", i);
    else if (i % 3 == 1)
      q += sprintf(q, newer ? "{\"b\":%d,\"a\":1}," : "{\"a\":1,\"b\":%d},", i);
    else
      q += sprintf(q, "\"v%d\",", i);
  }
  q[-1] = ']';
  q += sprintf(q, ",\"properties\":{");
  for (k = 0; k < n; k++) {
    i = newer ? n - 1 - k : k;
    q += sprintf(q, "\"%s%d\":{\"type\":\"integer\"},",
                 newer && i == 0 ? "x" : "p", i);
  }
  q[-1] = '}';
  q += sprintf(q, ",\"$defs\":{");
  for (k = 0; k < n; k++) {
    i = newer ? n - 1 - k : k;
    q += sprintf(q, "\"d%d\":{\"minimum\":%d},", i, newer && i == 0 ? 1 : 0);
  }
  q[-1] = '}';
  sprintf(q, "}");
  return j;
}

TEST(compare_of_wide_schemas_stays_fast_and_finds_each_change) {
  /* pairwise lookups made a reload of a 100000-value enum take minutes,
   * as every reload compares each version with its previous text */
  char *a = wide_schema(100000, 0), *b = wide_schema(100000, 1);
  struct changes ch;
  double t0 = cpu_s();
  int n = compare(a, b, &ch);
  double dt = cpu_s() - t0;
  free(a);
  free(b);
  if (dt > 5.0)
    fprintf(stderr, "  compare took %.1f s\n", dt);
  CHECK(dt < 5.0);
  CHECK_EQ(n, 3); /* 0 removed, p0 removed, d0's minimum raised */
  CHECK(strstr(ch.text, "B : enum value 0 removed") != NULL);
  CHECK(strstr(ch.text, "C : enum value \"new\" added") != NULL);
  CHECK(strstr(ch.text, "B : field \"p0\" removed") != NULL);
  CHECK(strstr(ch.text, "C : optional field \"x0\" added") != NULL);
  CHECK(strstr(ch.text, "B /$defs/d0: minimum raised") != NULL);
}

TEST(schema_load_file_refuses_a_fifo_or_directory_without_blocking) {
  /* a schema path that names a FIFO blocked the config load (and a reload)
   * in open() until some writer came; alarm() fails the test instead */
  char dir[] = "/tmp/test_schema_XXXXXX", fifo[64], err[256];
  struct sl_schema *s = NULL;
  CHECK(mkdtemp(dir) != NULL);
  snprintf(fifo, sizeof(fifo), "%s/p.v1.json", dir);
  CHECK_EQ(mkfifo(fifo, 0600), 0);
  alarm(10);
  CHECK_EQ(sl_schema_load_file(fifo, &s, err, sizeof(err)), SL_EINVAL);
  alarm(0);
  CHECK(strstr(err, "not a regular file") != NULL);
  CHECK(strstr(err, fifo) != NULL);
  CHECK_EQ(sl_schema_load_file(dir, &s, err, sizeof(err)), SL_EINVAL);
  CHECK(strstr(err, "not a regular file") != NULL);
  unlink(fifo);
  rmdir(dir);
}

TEST(compare_bounds_beyond_2_pow_53_are_exact) {
  /* as doubles 2^53+1 and 2^53 are one number: lowering a maximum by one
   * there went unreported, so a breaking change passed a reload in place */
  CHANGE("{\"maximum\":9007199254740993}", "{\"maximum\":9007199254740992}",
                1, "B : maximum lowered from 9007199254740993 to 9007199254740992");
  CHANGE("{\"maximum\":18446744073709551615}",
                "{\"maximum\":18446744073709551614}", 1,
                "B : maximum lowered from 18446744073709551615 to 18446744073709551614");
  CHANGE("{\"minimum\":-9223372036854775808}",
                "{\"minimum\":-9223372036854775807}", 1,
                "B : minimum raised from -9223372036854775808 to -9223372036854775807");
  CHANGE("{\"minimum\":9007199254740993}", "{\"minimum\":9007199254740992.0}",
                0, "C : minimum lowered from 9007199254740993 to 9007199254740992");
  CHANGE("{\"maximum\":0.5}", "{\"maximum\":1}", 0,
                "C : maximum raised from 0.5 to 1");
}

TEST(compare_a_schema_where_there_was_false_is_compatible_whatever_it_says) {
  /* no value fitted false, so readers of the older version saw none: the
   * keywords of the newer schema narrow nothing they knew */
  CHANGE("{\"items\":false}",
         "{\"items\":{\"type\":\"string\",\"minLength\":2,\"enum\":[\"ab\"]}}", 0,
         "C /items: schema changed from false");
  CHANGE(P("\"x\":false"), P("\"x\":{\"type\":\"integer\",\"maximum\":3}"), 0,
         "C /properties/x: schema changed from false");
  CHANGE("{\"items\":{\"type\":\"string\"}}", "{\"items\":false}", 1,
         "B /items: schema changed to false (no value fits)");
}

static int valid_utf8(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2
          : (*p & 0xf8) == 0xf0 ? 3 : -1;
    if (n < 0)
      return 0;
    for (p++; n > 0; n--, p++)
      if ((*p & 0xc0) != 0x80)
        return 0;
  }
  return 1;
}

TEST(schema_error_path_cut_short_never_splits_a_character) {
  /* a producer's long non-ASCII field name fills the 256-byte path: the
   * cut must fall between characters, as the path goes out in a 400 body
   * and in sluice-error */
  struct sl_schema *s = comp("{\"additionalProperties\":false,\"properties\":"
                             "{\"o\":{\"additionalProperties\":false}}}");
  struct sl_schema_error e;
  char doc[4096], *q;
  int i, pad;
  CHECK(s != NULL);
  for (pad = 0; pad < 3; pad++) {
    q = doc + sprintf(doc, "{\"");
    for (i = 0; i < pad; i++)
      *q++ = 'x';
    for (i = 0; i < 200; i++)
      q += sprintf(q, "\xe2\x82\xac"); /* a 3-byte euro sign */
    sprintf(q, "\":1}");
    CHECK_EQ(chk(s, doc, &e), SL_EINVAL);
    CHECK(strlen(e.path) > 200);
    CHECK(valid_utf8(e.path));
    /* the same name one level down: the outer part is kept, the inner cut */
    q = doc + sprintf(doc, "{\"o\":{\"");
    for (i = 0; i < pad; i++)
      *q++ = 'x';
    for (i = 0; i < 200; i++)
      q += sprintf(q, "\xc3\xa9\xe2\x82\xac");
    sprintf(q, "\":1}}");
    CHECK_EQ(chk(s, doc, &e), SL_EINVAL);
    CHECK(strncmp(e.path, "/o/", 3) == 0);
    CHECK(valid_utf8(e.path));
  }
  sl_schema_free(s);
}

TEST(schema_error_path_shows_a_nul_in_a_field_name) {
  /* "sku\0x" is not "sku": the path must not end at the NUL and blame a
   * field the producer did not send */
  struct sl_schema *s = comp("{\"additionalProperties\":false}");
  static const uint8_t doc[] = {0x81, 0xa5, 's', 'k', 'u', 0, 'x', 0x01};
  struct sl_schema_error e;
  CHECK(s != NULL);
  CHECK_EQ(sl_schema_check(s, doc, sizeof(doc), &e), SL_EINVAL);
  CHECK_STR(e.path, "/sku\xef\xbf\xbdx"); /* U+FFFD for the NUL */
  sl_schema_free(s);
}
