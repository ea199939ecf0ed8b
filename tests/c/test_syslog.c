/* test_syslog.c - the syslog parser (engine/codec/syslog.c): RFC 5424 and
 * 3164 fields, time conversion with zones and the 3164 year guess,
 * structured data unescaping, and what is refused. */
#include "test.h"

#include "codec.h"
#include "syslog.h"

#define NOW 1796545577 /* 2026-12-06T08:26:17Z */

static int parse(const char *s, enum sl_syslog_format f,
                 struct sl_syslog_msg *m) {
  const char *why;
  return sl_syslog_parse(s, strlen(s), f, NOW, m, &why);
}

static int eq(struct sl_str s, const char *want) {
  if (want == NULL)
    return s.p == NULL;
  return s.p && s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

TEST(syslog_5424_fields_and_time_with_zone) {
  struct sl_syslog_msg m;
  CHECK_EQ(parse("<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc "
                 "8710 - - %% It's time\n", SL_SYSLOG_AUTO, &m), 0);
  CHECK_EQ(m.format, SL_SYSLOG_5424);
  CHECK_EQ(m.facility, 20);
  CHECK_EQ(m.severity, 5);
  CHECK(eq(m.hostname, "192.0.2.1") && eq(m.app, "myproc"));
  CHECK(eq(m.procid, "8710") && eq(m.msgid, NULL) && eq(m.sd, NULL));
  CHECK(eq(m.message, "%% It's time"));
  CHECK_EQ(m.time, 1061727255000003000LL); /* 12:14:15.000003Z */
}

TEST(syslog_5424_nil_timestamp_and_empty_message) {
  struct sl_syslog_msg m;
  CHECK_EQ(parse("<0>1 - - - - - -", SL_SYSLOG_AUTO, &m), 0);
  CHECK_EQ(m.has_time, 0);
  CHECK(eq(m.hostname, NULL) && eq(m.message, ""));
}

TEST(syslog_5424_structured_data_is_unescaped_in_the_payload) {
  struct sl_syslog_msg m;
  struct sl_buf b, j;
  CHECK_EQ(parse("<13>1 - h a - - [x@1 k=\"q\\\"b\\\\s\\]c\\n\"][y z=\"\"] "
                 "\xEF\xBB\xBFmsg", SL_SYSLOG_AUTO, &m), 0);
  CHECK(eq(m.message, "msg"));
  sl_buf_init(&b);
  sl_buf_init(&j);
  CHECK_EQ(sl_syslog_put_payload(&b, &m), 0);
  CHECK_EQ(sl_codec_to_json(b.data, b.len, &j), 0);
  CHECK_EQ(sl_buf_putc(&j, 0), 0);
  CHECK(strstr((char *)j.data, "\"structured_data\":{\"x@1\":{\"k\":"
                               "\"q\\\"b\\\\s]c\\\\n\"},\"y\":{\"z\":\"\"}}"));
  sl_buf_close(&b);
  sl_buf_close(&j);
}

/* RFC 5424 7.2.2: origin's ip may be repeated. A repeated PARAM-NAME was
 * written as duplicate keys of one map; now its values are an array under
 * the one key, where it first came. */
TEST(syslog_5424_a_repeated_param_name_gives_an_array_not_duplicate_keys) {
  struct sl_syslog_msg m;
  struct sl_buf b, j;
  CHECK_EQ(parse("<13>1 - h a - - [origin ip=\"192.0.2.1\" software=\"s\" "
                 "ip=\"192.0.2.\\]2\" ip=\"\"][x k=\"1\"] msg",
                 SL_SYSLOG_AUTO, &m), 0);
  sl_buf_init(&b);
  sl_buf_init(&j);
  CHECK_EQ(sl_syslog_put_payload(&b, &m), 0);
  CHECK_EQ(sl_codec_to_json(b.data, b.len, &j), 0);
  CHECK_EQ(sl_buf_putc(&j, 0), 0);
  CHECK(strstr((char *)j.data,
               "\"structured_data\":{\"origin\":{\"ip\":[\"192.0.2.1\","
               "\"192.0.2.]2\",\"\"],\"software\":\"s\"},\"x\":{\"k\":"
               "\"1\"}}"));
  sl_buf_close(&b);
  sl_buf_close(&j);
}

TEST(syslog_5424_refuses_bad_headers) {
  struct sl_syslog_msg m;
  CHECK_EQ(parse("<13>1 2003-13-01T00:00:00Z h a - - - x", SL_SYSLOG_AUTO,
                 &m), SL_EPROTO);
  CHECK_EQ(parse("<13>1 - h a - - [unterminated x=\"y\"", SL_SYSLOG_AUTO, &m),
           SL_EPROTO);
  CHECK_EQ(parse("<13>1 - h a - -", SL_SYSLOG_AUTO, &m), SL_EPROTO);
  CHECK_EQ(parse("<192>1 - - - - - -", SL_SYSLOG_AUTO, &m), SL_EPROTO);
  CHECK_EQ(parse("no pri", SL_SYSLOG_AUTO, &m), SL_EPROTO);
  CHECK_EQ(parse("<13>Oct 11 22:14:15 h a: x", SL_SYSLOG_5424, &m), SL_EPROTO);
  /* an app-name over 48 bytes */
  CHECK_EQ(parse("<13>1 - h aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
                 "- - - x", SL_SYSLOG_AUTO, &m), SL_EPROTO);
}

/* README: an RFC 5424 timestamp with a year outside 1970-2261 (what ns
 * since the epoch in an int64 hold) makes the message malformed. */
TEST(syslog_5424_year_outside_1970_to_2261_is_malformed) {
  struct sl_syslog_msg m;
  CHECK_EQ(parse("<13>1 1970-01-01T00:00:00Z h a - - - x", SL_SYSLOG_AUTO,
                 &m), 0);
  CHECK_EQ(m.time, 0);
  CHECK_EQ(parse("<13>1 2261-12-31T23:59:59Z h a - - - x", SL_SYSLOG_AUTO,
                 &m), 0);
  CHECK_EQ(m.time, 9214646399000000000LL);
  CHECK_EQ(parse("<13>1 1969-12-31T23:59:59Z h a - - - x", SL_SYSLOG_AUTO,
                 &m), SL_EPROTO);
  CHECK_EQ(parse("<13>1 2262-01-01T00:00:00Z h a - - - x", SL_SYSLOG_AUTO,
                 &m), SL_EPROTO);
}

TEST(syslog_3164_host_tag_pid_and_this_years_time) {
  struct sl_syslog_msg m;
  CHECK_EQ(parse("<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed",
                 SL_SYSLOG_AUTO, &m), 0);
  CHECK_EQ(m.format, SL_SYSLOG_3164);
  CHECK(eq(m.hostname, "mymachine") && eq(m.app, "su") && eq(m.procid, "42"));
  CHECK(eq(m.message, "'su root' failed"));
  CHECK_EQ(m.time, 1791756855LL * 1000000000LL); /* 2026-10-11T22:14:15Z */
}

TEST(syslog_3164_a_december_message_in_january_is_last_year) {
  struct sl_syslog_msg m;
  const char *why;
  const char *s = "<13>Dec 31 23:59:59 h app: x";
  /* now: 2027-01-01T00:00:10Z */
  CHECK_EQ(sl_syslog_parse(s, strlen(s), SL_SYSLOG_AUTO, 1798761610, &m,
                           &why), 0);
  CHECK_EQ(m.time, 1798761599LL * 1000000000LL); /* 2026-12-31T23:59:59Z */
}

TEST(syslog_3164_without_host_or_timestamp_keeps_the_rest) {
  struct sl_syslog_msg m;
  CHECK_EQ(parse("<13>Feb  5 01:02:03 app: no host", SL_SYSLOG_AUTO, &m), 0);
  CHECK(eq(m.hostname, NULL) && eq(m.app, "app") && eq(m.message, "no host"));
  CHECK_EQ(parse("<13>just text", SL_SYSLOG_AUTO, &m), 0);
  CHECK_EQ(m.has_time, 0);
  CHECK(eq(m.app, NULL) && eq(m.message, "just text"));
  CHECK_EQ(parse("<13>1 looks like 5424", SL_SYSLOG_3164, &m), 0);
  CHECK(eq(m.message, "1 looks like 5424"));
}

TEST(syslog_names) {
  CHECK_STR(sl_syslog_facility_name(3), "daemon");
  CHECK_STR(sl_syslog_facility_name(23), "local7");
  CHECK_STR(sl_syslog_severity_name(4), "warning");
  CHECK_STR(sl_syslog_severity_name(9), "unknown");
}

TEST(syslog_frame_octet_counted_lf_and_waiting) {
  size_t start;
  uint64_t len;
  const uint8_t *oc = (const uint8_t *)"11 <13>1 - - x";
  CHECK_EQ(sl_syslog_frame(oc, 14, 100, &start, &len), 1);
  CHECK_EQ(start, 3);
  CHECK_EQ(len, 11);
  CHECK_EQ(sl_syslog_frame((const uint8_t *)"12", 2, 100, &start, &len), 0);
  CHECK_EQ(sl_syslog_frame((const uint8_t *)"<13>a\nb", 7, 100, &start, &len),
           1);
  CHECK_EQ(start, 0);
  CHECK_EQ(len, 6); /* with its LF */
  CHECK_EQ(sl_syslog_frame((const uint8_t *)"<13>abc", 7, 100, &start, &len),
           0);
  CHECK_EQ(sl_syslog_frame((const uint8_t *)"<13>abc", 7, 5, &start, &len),
           -1);
  /* digits not followed by a space: a line that starts with a number */
  CHECK_EQ(sl_syslog_frame((const uint8_t *)"123x\n", 5, 100, &start, &len),
           1);
  CHECK_EQ(start, 0);
  CHECK_EQ(len, 5);
  /* 11 digits are no count */
  CHECK_EQ(sl_syslog_frame((const uint8_t *)"12345678901 x\n", 14, 100,
                           &start, &len), 1);
  CHECK_EQ(start, 0);
}
