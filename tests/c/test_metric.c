/* test_metric.c - the metrics registry (engine/core/metric.c): rendering,
 * one family per name over several sources, escaping and UTF-8 repair of
 * label values, histograms up to 10 s, unregistering, and refusals. */
#include "metric.h"

#include "common.h"
#include "test.h"
#include "utf8.h"

static const struct sl_metric m_sent = {
    "t_sent_total", "Frames sent.", SL_METRIC_COUNTER, {"output", NULL}};
static const struct sl_metric m_depth = {
    "t_depth", "Queue depth.", SL_METRIC_GAUGE, {0}};
static const struct sl_metric m_drop_a = {
    "t_dropped_total", "Drops by reason.", SL_METRIC_COUNTER,
    {"reason", "output", NULL}};
static const struct sl_metric m_drop_b = {
    "t_dropped_total", "Drops by reason (other module).", SL_METRIC_COUNTER,
    {"reason", NULL}};
static const struct sl_metric m_lat = {
    "t_latency_seconds", "Latency.", SL_METRIC_HISTOGRAM, {"output", NULL}};

/* The rendering of r as a NUL-terminated string in b (the caller closes). */
static const char *render(struct sl_metric_registry *r, struct sl_buf *b) {
  sl_buf_init(b);
  if (sl_metric_render(r, b) != 0 || sl_buf_putc(b, 0) != 0)
    return NULL;
  return (const char *)b->data;
}

static int count(const char *hay, const char *needle) {
  int n = 0;
  const char *p = hay;
  while ((p = strstr(p, needle)) != NULL) {
    n++;
    p += strlen(needle);
  }
  return n;
}

static void collect_depth(struct sl_metric_out *out, const struct sl_metric *m,
                          void *data) {
  sl_metric_put_u64(out, NULL, *(uint64_t *)data);
}

static void collect_drops(struct sl_metric_out *out, const struct sl_metric *m,
                          void *data) {
  const char *v[] = {"rule"};
  sl_metric_put_u64(out, v, 7);
}

TEST(metric_render_owned_values_and_collect_callbacks) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  uint64_t sent = 5, depth = 3;
  const char *v[] = {"out"};
  struct sl_buf b;
  const char *t;
  CHECK(r != NULL);
  CHECK_EQ(sl_metric_add_u64(r, &m_sent, v, &sent, &sent), 0);
  CHECK_EQ(sl_metric_add(r, &m_depth, collect_depth, &depth), 0);
  sent = 6; /* read at render, not at registration */
  t = render(r, &b);
  CHECK_STR(t, "# HELP t_sent_total Frames sent.\n"
               "# TYPE t_sent_total counter\n"
               "t_sent_total{output=\"out\"} 6\n"
               "# HELP t_depth Queue depth.\n"
               "# TYPE t_depth gauge\n"
               "t_depth 3\n");
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

TEST(metric_one_family_when_two_modules_feed_the_same_name) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  uint64_t full = 2;
  const char *v[] = {"queue_full", "out"};
  struct sl_buf b;
  const char *t;
  CHECK_EQ(sl_metric_add_u64(r, &m_drop_a, v, &full, &full), 0);
  CHECK_EQ(sl_metric_add(r, &m_drop_b, collect_drops, NULL), 0);
  t = render(r, &b);
  CHECK(t != NULL);
  CHECK_EQ(count(t, "# TYPE t_dropped_total counter\n"), 1);
  CHECK_EQ(count(t, "# HELP t_dropped_total"), 1);
  CHECK(strstr(t, "# HELP t_dropped_total Drops by reason.\n") != NULL);
  CHECK(strstr(t, "t_dropped_total{reason=\"queue_full\",output=\"out\"} 2\n"
                  "t_dropped_total{reason=\"rule\"} 7\n") != NULL);
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

TEST(metric_same_name_with_another_type_is_refused) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  static const struct sl_metric as_gauge = {
      "t_sent_total", "x", SL_METRIC_GAUGE, {0}};
  uint64_t n = 1;
  const char *v[] = {"out"};
  struct sl_buf b;
  const char *t;
  CHECK_EQ(sl_metric_add_u64(r, &m_sent, v, &n, &n), 0);
  CHECK_EQ(sl_metric_add_u64(r, &as_gauge, NULL, &n, &n), SL_EINVAL);
  t = render(r, &b);
  CHECK_EQ(count(t, "# TYPE"), 1);
  CHECK_EQ(count(t, "\nt_sent_total"), 1);
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

TEST(metric_bad_names_are_refused) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  static const struct sl_metric bad_name = {
      "9lives", "x", SL_METRIC_GAUGE, {0}};
  static const struct sl_metric bad_label = {
      "t_ok", "x", SL_METRIC_GAUGE, {"a-b", NULL}};
  static const struct sl_metric reserved = {
      "t_ok", "x", SL_METRIC_GAUGE, {"__name__", NULL}};
  static const struct sl_metric le = {
      "t_h", "x", SL_METRIC_HISTOGRAM, {"le", NULL}};
  struct sl_histogram h;
  uint64_t n = 0;
  memset(&h, 0, sizeof(h));
  CHECK_EQ(sl_metric_add_u64(r, &bad_name, NULL, &n, &n), SL_EINVAL);
  CHECK_EQ(sl_metric_add_u64(r, &bad_label, NULL, &n, &n), SL_EINVAL);
  CHECK_EQ(sl_metric_add_u64(r, &reserved, NULL, &n, &n), SL_EINVAL);
  CHECK_EQ(sl_metric_add_hist(r, &le, NULL, &h, &n), SL_EINVAL);
  CHECK_EQ(sl_metric_add_hist(r, &m_sent, NULL, &h, &n), SL_EINVAL);
  CHECK_EQ(sl_metric_add_u64(r, &m_lat, NULL, &n, &n), SL_EINVAL);
  CHECK_EQ(sl_metric_add(r, &m_depth, NULL, &n), SL_EINVAL);
  sl_metric_registry_free(r);
}

TEST(metric_label_values_are_escaped) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  uint64_t n = 1;
  const char *v[] = {"a\\b\"c\nd"};
  struct sl_buf b;
  const char *t;
  CHECK_EQ(sl_metric_add_u64(r, &m_sent, v, &n, &n), 0);
  t = render(r, &b);
  CHECK(strstr(t, "t_sent_total{output=\"a\\\\b\\\"c\\nd\"} 1\n") != NULL);
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

TEST(metric_invalid_utf8_in_a_label_becomes_replacement_characters) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  uint64_t n = 1;
  /* a stray continuation byte, a truncated 3-byte sequence before an
   * ASCII byte, an overlong NUL and a surrogate; é passes as it is */
  const char *v[] = {"x\x80y\xe2\x82z\xc0\x80\xed\xa0\x80\xc3\xa9"};
  struct sl_buf b;
  const char *t;
  CHECK_EQ(sl_metric_add_u64(r, &m_sent, v, &n, &n), 0);
  t = render(r, &b);
  CHECK(strstr(t, "{output=\"x\xef\xbf\xbdy\xef\xbf\xbdz") != NULL);
  CHECK(strstr(t, "\xc3\xa9\"} 1\n") != NULL);
  CHECK(sl_utf8_valid(t, strlen(t)));
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

TEST(metric_escape_keeps_a_bad_value_from_breaking_the_line) {
  struct sl_buf b;
  sl_buf_init(&b);
  CHECK_EQ(sl_metric_escape(&b, "\"}\nevil 1\n", 10), 0);
  CHECK_EQ(sl_buf_putc(&b, 0), 0);
  CHECK_STR((const char *)b.data, "\\\"}\\nevil 1\\n");
  sl_buf_close(&b);
}

TEST(metric_histogram_buckets_reach_10_seconds_and_count_above) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  struct sl_histogram h;
  const char *v[] = {"out"};
  struct sl_buf b;
  const char *t;
  memset(&h, 0, sizeof(h));
  sl_histogram_observe(&h, 0.000002);
  sl_histogram_observe(&h, 9.5);
  sl_histogram_observe(&h, 30);
  CHECK_EQ(sl_metric_add_hist(r, &m_lat, v, &h, &h), 0);
  t = render(r, &b);
  CHECK(strstr(t, "# TYPE t_latency_seconds histogram\n") != NULL);
  CHECK(strstr(t, "t_latency_seconds_bucket{output=\"out\",le=\"1e-06\"} 0\n"));
  CHECK(strstr(t, "t_latency_seconds_bucket{output=\"out\",le=\"2.5e-06\"} 1\n"));
  CHECK(strstr(t, "t_latency_seconds_bucket{output=\"out\",le=\"5\"} 1\n"));
  CHECK(strstr(t, "t_latency_seconds_bucket{output=\"out\",le=\"10\"} 2\n"));
  CHECK(strstr(t, "t_latency_seconds_bucket{output=\"out\",le=\"+Inf\"} 3\n"));
  CHECK(strstr(t, "t_latency_seconds_count{output=\"out\"} 3\n"));
  CHECK(strstr(t, "t_latency_seconds_sum{output=\"out\"} 39.500002000\n"));
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

static const struct sl_metric m_plain_hist = {
    "t_plain_seconds", "No labels.", SL_METRIC_HISTOGRAM, {0}};

static void collect_hist(struct sl_metric_out *out, const struct sl_metric *m,
                         void *data) {
  sl_metric_put_hist(out, NULL, data);
}

TEST(metric_histogram_without_labels_has_le_alone) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  struct sl_histogram h;
  struct sl_buf b;
  const char *t;
  memset(&h, 0, sizeof(h));
  sl_histogram_observe(&h, 0.5);
  CHECK_EQ(sl_metric_add(r, &m_plain_hist, collect_hist, &h), 0);
  t = render(r, &b);
  CHECK(strstr(t, "t_plain_seconds_bucket{le=\"0.5\"} 1\n") != NULL);
  CHECK(strstr(t, "t_plain_seconds_sum 0.500000000\n"
                  "t_plain_seconds_count 1\n") != NULL);
  CHECK(strstr(t, "{,") == NULL);
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

TEST(metric_remove_drops_every_source_of_its_owner_and_keeps_the_rest) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  uint64_t a = 1, c = 3;
  int owner_a, owner_c;
  const char *va[] = {"a"}, *vc[] = {"c"};
  struct sl_histogram h;
  struct sl_buf b;
  const char *t;
  memset(&h, 0, sizeof(h));
  CHECK_EQ(sl_metric_add_u64(r, &m_sent, va, &a, &owner_a), 0);
  CHECK_EQ(sl_metric_add_hist(r, &m_lat, va, &h, &owner_a), 0);
  CHECK_EQ(sl_metric_add_u64(r, &m_sent, vc, &c, &owner_c), 0);
  CHECK_EQ(sl_metric_add(r, &m_depth, collect_depth, &owner_a), 0);
  sl_metric_remove(r, &owner_a);
  t = render(r, &b);
  CHECK(strstr(t, "output=\"a\"") == NULL);
  CHECK(strstr(t, "\nt_depth ") == NULL);
  CHECK(strstr(t, "t_sent_total{output=\"c\"} 3\n") != NULL);
  /* the families stay, empty: a scrape still knows their type */
  CHECK(strstr(t, "# TYPE t_latency_seconds histogram\n") != NULL);
  CHECK(strstr(t, "# TYPE t_depth gauge\n") != NULL);
  sl_buf_close(&b);
  /* adding again after a removal works, in order */
  CHECK_EQ(sl_metric_add_u64(r, &m_sent, va, &a, &owner_a), 0);
  t = render(r, &b);
  CHECK(strstr(t, "t_sent_total{output=\"c\"} 3\n"
                  "t_sent_total{output=\"a\"} 1\n") != NULL);
  sl_buf_close(&b);
  sl_metric_remove(NULL, &owner_a); /* a no-op */
  sl_metric_registry_free(r);
  sl_metric_registry_free(NULL);
}

static void collect_values(struct sl_metric_out *out,
                           const struct sl_metric *m, void *data) {
  const char *v[] = {"r"};
  sl_metric_put_extra(out, v, "topic=\"a\"", 2.5);
  sl_metric_put(out, v, 1.0 / 0.0);
  sl_metric_put(out, v, 0.0 / 0.0);
}

TEST(metric_extra_labels_and_special_values) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  static const struct sl_metric m = {
      "t_value_total", "Values.", SL_METRIC_COUNTER, {"rule", NULL}};
  struct sl_buf b;
  const char *t;
  CHECK_EQ(sl_metric_add(r, &m, collect_values, NULL), 0);
  t = render(r, &b);
  CHECK(strstr(t, "t_value_total{rule=\"r\",topic=\"a\"} 2.5\n"
                  "t_value_total{rule=\"r\"} +Inf\n"
                  "t_value_total{rule=\"r\"} NaN\n") != NULL);
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}

TEST(metric_help_text_is_escaped) {
  struct sl_metric_registry *r = sl_metric_registry_new();
  static const struct sl_metric m = {
      "t_help", "a\\b\nc", SL_METRIC_GAUGE, {0}};
  uint64_t n = 0;
  struct sl_buf b;
  const char *t;
  CHECK_EQ(sl_metric_add_u64(r, &m, NULL, &n, &n), 0);
  t = render(r, &b);
  CHECK_STR(t, "# HELP t_help a\\\\b\\nc\n# TYPE t_help gauge\nt_help 0\n");
  sl_buf_close(&b);
  sl_metric_registry_free(r);
}
