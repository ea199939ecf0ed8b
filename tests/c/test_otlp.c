/* test_otlp.c - unit tests for engine/codec/otlp.c: ExportLogsServiceRequest
 * JSON (through the one JSON reader) to event maps, checked by parsing each
 * event and rendering it back as JSON. */
#include <string.h>

#include "codec.h"
#include "json.h"
#include "otlp.h"
#include "test.h"

struct got {
  struct sl_buf *out;
  char json[8][1024];
  int n;
};

static int on_event(void *data, size_t off, size_t len) {
  struct got *g = data;
  struct sl_event_view v;
  struct sl_buf j;
  if (sl_codec_parse_event(g->out->data + off, len, &v, NULL) != 0 || g->n == 8)
    return SL_EPROTO; /* an event the engine would not take */
  sl_buf_init(&j);
  sl_codec_to_json(g->out->data + off, len, &j);
  snprintf(g->json[g->n++], sizeof(g->json[0]), "%.*s", (int)j.len,
           (const char *)j.data);
  sl_buf_close(&j);
  return 0;
}

/* Run text through the JSON reader and the walk; the walk's result. */
static int run(const char *text, const char *topic, uint32_t max,
               struct got *g, struct sl_otlp_result *res) {
  struct sl_buf mp, out;
  char err[200];
  int rc;
  sl_buf_init(&mp);
  sl_buf_init(&out);
  memset(g, 0, sizeof(*g));
  g->out = &out;
  rc = sl_json_to_msgpack(text, strlen(text), &mp, err, sizeof(err));
  if (rc == 0)
    rc = sl_otlp_logs(mp.data, mp.len, topic, max, &out, on_event, g, res);
  sl_buf_close(&mp);
  sl_buf_close(&out);
  return rc;
}

#define REC(x) \
  "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[" x "]}]}]}"

TEST(otlp_record_maps_time_body_severity_and_trace_context) {
  struct got g;
  struct sl_otlp_result res;
  CHECK_EQ(run(REC("{\"timeUnixNano\":\"1544712660300000000\","
                   "\"severityNumber\":9,\"severityText\":\"INFO\","
                   "\"traceId\":\"5B8EFFF798038103D269B633813FC60C\","
                   "\"spanId\":\"EEE19B7EC3C1B174\",\"flags\":1,"
                   "\"body\":{\"kvlistValue\":{\"values\":[{\"key\":\"n\","
                   "\"value\":{\"intValue\":\"-5\"}}]}}}"),
               "otel.logs", 1 << 20, &g, &res), 0);
  CHECK_EQ(res.accepted, 1);
  CHECK_EQ(res.rejected, 0);
  CHECK_STR(g.json[0],
            "{\"topic\":\"otel.logs\",\"time\":1544712660300000000,"
            "\"headers\":{\"otel.severity_number\":\"9\","
            "\"otel.severity_text\":\"INFO\",\"traceparent\":"
            "\"00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01\"},"
            "\"payload\":{\"n\":-5}}");
}

TEST(otlp_observed_time_stands_in_and_no_time_leaves_it_to_ingest) {
  struct got g;
  struct sl_otlp_result res;
  CHECK_EQ(run(REC("{\"timeUnixNano\":\"0\",\"observedTimeUnixNano\":7},{}"),
               "t", 1 << 20, &g, &res), 0);
  CHECK_EQ(g.n, 2);
  CHECK_STR(g.json[0], "{\"topic\":\"t\",\"time\":7,\"headers\":{},"
                       "\"payload\":null}");
  CHECK_STR(g.json[1], "{\"topic\":\"t\",\"headers\":{},\"payload\":null}");
}

TEST(otlp_topic_template_reads_resource_attributes) {
  struct got g;
  struct sl_otlp_result res;
  CHECK_EQ(run("{\"resourceLogs\":[{\"resource\":{\"attributes\":[{\"key\":"
               "\"service.name\",\"value\":{\"stringValue\":\"api\"}}]},"
               "\"scopeLogs\":[{\"logRecords\":[{}]}]}]}",
               "logs.{service.name}.{zone}", 1 << 20, &g, &res), 0);
  CHECK_STR(g.json[0], "{\"topic\":\"logs.api.unknown\",\"headers\":{"
                       "\"otel.resource.service.name\":\"api\"},"
                       "\"payload\":null}");
  CHECK_EQ(sl_otlp_topic_check("a.{b}"), 0);
  CHECK_EQ(sl_otlp_topic_check("a.{b"), SL_EINVAL);
  CHECK_EQ(sl_otlp_topic_check("a.{}"), SL_EINVAL);
}

TEST(otlp_bad_records_are_counted_with_the_first_reason) {
  struct got g;
  struct sl_otlp_result res;
  CHECK_EQ(run(REC("{},{\"spanId\":\"abc\",\"traceId\":"
                   "\"5B8EFFF798038103D269B633813FC60C\"},"
                   "{\"body\":{\"intValue\":\"99999999999999999999\"}},"
                   "{\"body\":{\"bytesValue\":\"%%\"}},7,"
                   "{\"attributes\":[{\"value\":{}}]}"),
               "t", 1 << 20, &g, &res), 0);
  CHECK_EQ(res.accepted, 1);
  CHECK_EQ(res.rejected, 5);
  CHECK_STR(res.error, "resourceLogs[0].scopeLogs[0].logRecords[1]: spanId: "
                       "expected 16 hex digits");
}

/* README: severityNumber is 0-24 (OTLP's range); outside it the record
 * is rejected, the others taken. */
TEST(otlp_severity_number_outside_0_to_24_is_rejected) {
  struct got g;
  struct sl_otlp_result res;
  CHECK_EQ(run(REC("{\"severityNumber\":0},{\"severityNumber\":24},"
                   "{\"severityNumber\":25},{\"severityNumber\":-1}"),
               "t", 1 << 20, &g, &res), 0);
  CHECK_EQ(res.accepted, 2);
  CHECK_EQ(res.rejected, 2);
  CHECK_STR(res.error, "resourceLogs[0].scopeLogs[0].logRecords[2]: "
                       "severityNumber: expected an integer 0-24");
  CHECK(strstr(g.json[1], "\"otel.severity_number\":\"24\"") != NULL);
}

TEST(otlp_an_event_over_max_event_bytes_is_rejected) {
  struct got g;
  struct sl_otlp_result res;
  CHECK_EQ(run(REC("{\"body\":{\"stringValue\":\"0123456789012345678901234"
                   "567890123456789\"}},{}"), "t", 40, &g, &res), 0);
  CHECK_EQ(res.accepted, 1);
  CHECK_EQ(res.rejected, 1);
  CHECK(strstr(res.error, "max_event_bytes") != NULL);
}

TEST(otlp_a_malformed_request_is_an_error_naming_where) {
  struct got g;
  struct sl_otlp_result res;
  CHECK_EQ(run("[]", "t", 1 << 20, &g, &res), SL_EPROTO);
  CHECK_EQ(run("{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":{}}]}]}",
               "t", 1 << 20, &g, &res), SL_EPROTO);
  CHECK_STR(res.error,
            "resourceLogs[0].scopeLogs[0]: logRecords: expected an array");
  CHECK_EQ(run("{}", "t", 1 << 20, &g, &res), 0);
  CHECK_EQ(res.accepted, 0);
}
