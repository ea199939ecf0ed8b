/* test_rfc3339.c - the HTTP input's RFC 3339 "time": exact nanoseconds for
 * every form the RFC allows, and a refusal saying why for the rest. */
#include <string.h>

#include "rfc3339.h"
#include "test.h"

static int parse(const char *s, int64_t *ns) {
  char why[128];
  return sl_rfc3339_parse(s, strlen(s), ns, why, sizeof(why));
}

static const char *why_of(const char *s) {
  static char why[128];
  int64_t ns;
  why[0] = '\0';
  if (sl_rfc3339_parse(s, strlen(s), &ns, why, sizeof(why)) == 0)
    return "(accepted)";
  return why;
}

TEST(rfc3339_gives_exact_nanoseconds) {
  int64_t ns = -1;
  CHECK_EQ(parse("1970-01-01T00:00:00Z", &ns), 0);
  CHECK_EQ(ns, 0);
  CHECK_EQ(parse("2023-11-14T22:13:20Z", &ns), 0);
  CHECK_EQ(ns, 1700000000000000000LL);
  CHECK_EQ(parse("2023-11-14T22:13:20.000000123Z", &ns), 0);
  CHECK_EQ(ns, 1700000000000000123LL);
  CHECK_EQ(parse("2023-11-14T22:13:20.5z", &ns), 0);
  CHECK_EQ(ns, 1700000000500000000LL);
  CHECK_EQ(parse("2023-11-14t22:13:20.123Z", &ns), 0);
  CHECK_EQ(ns, 1700000000123000000LL);
}

TEST(rfc3339_applies_offsets) {
  int64_t ns = -1;
  CHECK_EQ(parse("2023-11-15T00:13:20+02:00", &ns), 0);
  CHECK_EQ(ns, 1700000000000000000LL);
  CHECK_EQ(parse("2023-11-14T17:43:20-04:30", &ns), 0);
  CHECK_EQ(ns, 1700000000000000000LL);
  CHECK_EQ(parse("1969-12-31T23:59:59Z", &ns), 0);
  CHECK_EQ(ns, -1000000000LL);
}

TEST(rfc3339_knows_the_calendar) {
  int64_t ns;
  CHECK_EQ(parse("2024-02-29T00:00:00Z", &ns), 0);
  CHECK_EQ(parse("2000-02-29T00:00:00Z", &ns), 0);
  CHECK_STR(why_of("2023-02-29T00:00:00Z"), "no such date 2023-02-29");
  CHECK_STR(why_of("1900-02-29T00:00:00Z"), "no such date 1900-02-29");
  CHECK_STR(why_of("2024-04-31T00:00:00Z"), "no such date 2024-04-31");
  CHECK_STR(why_of("2024-13-01T00:00:00Z"), "no such date 2024-13-01");
  CHECK_STR(why_of("2024-01-01T24:00:00Z"), "no such time of day 24:00:00");
  /* a leap second is the start of the next second */
  CHECK_EQ(parse("2016-12-31T23:59:60Z", &ns), 0);
  CHECK_EQ(ns, 1483228800000000000LL);
}

TEST(rfc3339_refuses_what_it_does_not_define) {
  CHECK_STR(why_of("2024-01-01T00:00:00"),
            "expected Z or an offset +HH:MM / -HH:MM at the end");
  CHECK_STR(why_of("2024-01-01 00:00:00Z"),
            "expected an RFC 3339 time such as 2024-05-01T12:00:00.5Z");
  CHECK_STR(why_of("2024-01-01"),
            "expected an RFC 3339 time such as 2024-05-01T12:00:00.5Z");
  CHECK_STR(why_of("2024-01-01T00:00:00.Z"), "expected digits after the '.'");
  CHECK_STR(why_of("2024-01-01T00:00:00.1234567891Z"),
            "at most 9 fraction digits (nanoseconds)");
  CHECK_STR(why_of("2024-01-01T00:00:00+0200"),
            "expected Z or an offset +HH:MM / -HH:MM at the end");
  CHECK_STR(why_of("2024-01-01T00:00:00+24:00"), "bad offset +24:00");
  CHECK_STR(why_of("2024-01-01T00:00:00Zjunk"),
            "expected Z or an offset +HH:MM / -HH:MM at the end");
  CHECK_STR(why_of("2024-0a-01T00:00:00Z"),
            "expected digits in YYYY-MM-DDTHH:MM:SS");
  CHECK_STR(why_of("3000-01-01T00:00:00Z"),
            "out of range: nanoseconds since 1970 must fit in 64 bits");
}
