/* rfc3339.c - see rfc3339.h. No libc time functions: timegm and strptime
 * accept more than RFC 3339 and depend on the locale and TZ. */
#include "rfc3339.h"

#include <stdio.h>

#include "common.h"

/* n digits at s as a number, or -1. */
static int digits(const char *s, int n) {
  int v = 0, i;
  for (i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; Howard Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  int64_t era, yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static int month_days(int y, int m) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : days[m - 1];
}

#define FAIL(...)                                                              \
  do {                                                                         \
    snprintf(why, whylen, __VA_ARGS__);                                        \
    return SL_EINVAL;                                                          \
  } while (0)

int sl_rfc3339_parse(const char *s, size_t n, int64_t *ns, char *why,
                     size_t whylen) {
  int y, mo, d, h, mi, sec, off = 0, fdigits = 0;
  int64_t frac = 0, secs;
  size_t i = 19;

  if (n < 19 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
      s[13] != ':' || s[16] != ':')
    FAIL("expected an RFC 3339 time such as 2024-05-01T12:00:00.5Z");
  y = digits(s, 4);
  mo = digits(s + 5, 2);
  d = digits(s + 8, 2);
  h = digits(s + 11, 2);
  mi = digits(s + 14, 2);
  sec = digits(s + 17, 2);
  if (y < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || sec < 0)
    FAIL("expected digits in YYYY-MM-DDTHH:MM:SS");
  if (mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo))
    FAIL("no such date %.10s", s);
  if (h > 23 || mi > 59 || sec > 60)
    FAIL("no such time of day %.8s", s + 11);
  if (i < n && s[i] == '.') {
    for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
      if (++fdigits > 9)
        FAIL("at most 9 fraction digits (nanoseconds)");
      frac = frac * 10 + (s[i] - '0');
    }
    if (fdigits == 0)
      FAIL("expected digits after the '.'");
    for (int k = fdigits; k < 9; k++)
      frac *= 10;
  }
  if (i + 1 == n && (s[i] == 'Z' || s[i] == 'z')) {
    off = 0;
  } else if (i + 6 == n && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
    int oh = digits(s + i + 1, 2), om = digits(s + i + 4, 2);
    if (oh < 0 || om < 0 || oh > 23 || om > 59)
      FAIL("bad offset %.6s", s + i);
    off = (oh * 60 + om) * 60 * (s[i] == '-' ? -1 : 1);
  } else {
    FAIL("expected Z or an offset +HH:MM / -HH:MM at the end");
  }
  secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - off;
  /* int64 ns reach 1677-09-21 .. 2262-04-11 */
  if (secs < -9223372036LL || secs > 9223372035LL)
    FAIL("out of range: nanoseconds since 1970 must fit in 64 bits");
  *ns = secs * 1000000000LL + frac;
  return 0;
}
