/* test_schemas_config.c - the config's schemas list (config/schemas.c):
 * versions parsed and ordered, taken from file names, contracts grouped by
 * topics, the version an event falls under (header, field, default,
 * newest, unknown). */
#include <stdio.h>
#include <unistd.h>

#include "codec.h"
#include "config.h"
#include "plugins.h"
#include "schema.h"
#include "test.h"

static char dir[] = "/tmp/sluice-test-schemas-XXXXXX";

static void put(const char *name, const char *text) {
  char path[256];
  FILE *f;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

static struct sl_config *load(const char *schemas, struct sl_buf *err) {
  static int made;
  char text[2048], path[256];
  if (!made && mkdtemp(dir) == NULL)
    return NULL;
  made = 1;
  put("a.v1.json", "{\"type\":\"object\",\"required\":[\"sku\"]}");
  put("a.v2.1.json", "{\"type\":\"object\"}");
  put("b.json", "{\"type\":\"integer\"}");
  snprintf(text, sizeof(text),
           "return { inputs = { { name = \"in\", type = \"tcp\", "
           "listen = \"127.0.0.1:1\" } }, schemas = %s }", schemas);
  put("c.lua", text);
  snprintf(path, sizeof(path), "%s/c.lua", dir);
  sl_buf_reset(err);
  return sl_config_load(path, sl_plugins, err);
}

TEST(version_parse_keeps_how_it_was_written_and_orders_by_number) {
  uint32_t a, b, c;
  char out[16];
  CHECK_EQ(sl_config_version_parse("2", 1, &a), 0);
  CHECK_EQ(sl_config_version_parse("2.0", 3, &b), 0);
  CHECK_EQ(sl_config_version_parse("10.3", 4, &c), 0);
  CHECK_EQ(sl_config_version_order(a), sl_config_version_order(b));
  CHECK(sl_config_version_order(b) < sl_config_version_order(c));
  sl_config_version_format(a, out, sizeof(out));
  CHECK_STR(out, "2");
  sl_config_version_format(b, out, sizeof(out));
  CHECK_STR(out, "2.0");
  CHECK(a != 0 && b != 0);
  CHECK_EQ(sl_config_version_parse("", 0, &a), SL_EINVAL);
  CHECK_EQ(sl_config_version_parse("v2", 2, &a), SL_EINVAL);
  CHECK_EQ(sl_config_version_parse("2.", 2, &a), SL_EINVAL);
  CHECK_EQ(sl_config_version_parse("1.2.3", 5, &a), SL_EINVAL);
  CHECK_EQ(sl_config_version_parse("32768", 5, &a), SL_EINVAL);
  CHECK_EQ(sl_config_version_parse("32767.32767", 11, &a), 0);
}

TEST(entries_with_the_same_topics_are_one_contract_oldest_first) {
  struct sl_buf err;
  struct sl_config *cfg;
  sl_buf_init(&err);
  cfg = load("{ { topics = \"o.*\", file = \"a.v2.1.json\", mode = \"warn\" },"
             "  { topics = \"o.*\", file = \"a.v1.json\" },"
             "  { topics = \"n\", file = \"b.json\", version = 3,"
             "    version_field = \"v\" } }", &err);
  CHECK(cfg != NULL);
  CHECK_EQ(cfg->nschemas, 2);
  CHECK_STR(cfg->schemas[0].topics, "o.*");
  CHECK_EQ(cfg->schemas[0].nversions, 2);
  CHECK_STR(cfg->schemas[0].versions[0].version, "1");
  CHECK_STR(cfg->schemas[0].versions[1].version, "2.1");
  CHECK(cfg->schemas[0].versions[0].schema != NULL);
  CHECK_EQ(cfg->schemas[0].mode, SL_SCHEMA_WARN);
  CHECK_STR(cfg->schemas[0].version_header, "schema-version");
  CHECK_EQ(cfg->schemas[0].default_version, -1);
  CHECK_STR(cfg->schemas[1].versions[0].version, "3");
  CHECK_STR(cfg->schemas[1].version_field, "v");
  CHECK(cfg->schemas[1].version_header == NULL);
  sl_config_free(cfg);
  sl_buf_close(&err);
}

/* {"schema-version": v} as msgpack */
static size_t header(uint8_t *out, const char *v) {
  struct sl_buf b;
  size_t n;
  sl_buf_init(&b);
  sl_codec_put_map(&b, 1);
  sl_codec_put_str(&b, "schema-version", 14);
  sl_codec_put_str(&b, v, strlen(v));
  memcpy(out, b.data, b.len);
  n = b.len;
  sl_buf_close(&b);
  return n;
}

TEST(the_version_an_event_falls_under) {
  struct sl_buf err;
  struct sl_config *cfg;
  const struct sl_schema_contract *k;
  struct sl_schema_error e;
  uint8_t h[64];
  static const uint8_t nil = 0xc0;
  size_t hn;
  int i = -1;
  sl_buf_init(&err);
  cfg = load("{ { topics = \"o.*\", file = \"a.v2.1.json\" },"
             "  { topics = \"o.*\", file = \"a.v1.json\" },"
             "  { topics = \"*\", file = \"b.json\", version = \"1\" } }", &err);
  CHECK(cfg != NULL);
  k = sl_config_schema_find(cfg, "o.x", 3, &i);
  CHECK(k == &cfg->schemas[0] && i == 0);
  CHECK(sl_config_schema_find(cfg, "p", 1, &i) == &cfg->schemas[1] && i == 1);
  /* none named: the newest */
  CHECK_EQ(sl_config_schema_version(k, NULL, 0, &nil, 1, &e), 1);
  hn = header(h, "1");
  CHECK_EQ(sl_config_schema_version(k, h, hn, &nil, 1, &e), 0);
  hn = header(h, "2.1");
  CHECK_EQ(sl_config_schema_version(k, h, hn, &nil, 1, &e), 1);
  hn = header(h, "1.0"); /* the same version as "1" */
  CHECK_EQ(sl_config_schema_version(k, h, hn, &nil, 1, &e), 0);
  hn = header(h, "4");
  CHECK_EQ(sl_config_schema_version(k, h, hn, &nil, 1, &e), -1);
  CHECK_STR(e.msg, "a known schema version (1, 2.1) in header "
                   "schema-version, got \"4\"");
  hn = header(h, "latest");
  CHECK_EQ(sl_config_schema_version(k, h, hn, &nil, 1, &e), -1);
  sl_config_free(cfg);
  sl_buf_close(&err);
}

TEST(a_file_name_without_a_version_and_no_version_key_is_an_error) {
  struct sl_buf err;
  sl_buf_init(&err);
  CHECK(load("{ { topics = \"o\", file = \"b.json\" } }", &err) == NULL);
  sl_buf_putc(&err, '\0');
  CHECK(strstr((const char *)err.data, "c.lua: schemas[1].version: no "
                                       "version") != NULL);
  sl_buf_close(&err);
}
