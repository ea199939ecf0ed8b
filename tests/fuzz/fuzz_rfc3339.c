/* fuzz_rfc3339.c - libFuzzer target for engine/codec/rfc3339.c (the HTTP
 * input's "time" field), differential: a second reading of the same
 * grammar, written another way (a character template, libc's timegm and
 * gmtime_r for the calendar), must accept exactly what the parser accepts
 * and give the same nanoseconds; a refusal must say why. Build with
 * `make fuzz`; `make test` runs it for a few seconds (tests/run.sh). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "rfc3339.h"
#include "fuzz.h"


static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* s matches the template t at its start: 'd' a digit, 'T' T or t, other
 * characters themselves. */
static int fits(const char *s, const char *t) {
  size_t i;
  for (i = 0; t[i]; i++) {
    if (t[i] == 'd' ? !is_digit(s[i])
        : t[i] == 'T' ? s[i] != 'T' && s[i] != 't'
                      : s[i] != t[i])
      return 0;
  }
  return 1;
}

static int num(const char *s, int n) {
  int v = 0;
  while (n-- > 0)
    v = v * 10 + (*s++ - '0');
  return v;
}

/* The oracle: 1 and *ns when s[0..n) is a time the parser must accept. */
static int oracle(const char *s, size_t n, int64_t *ns) {
  struct tm tm, want, back;
  size_t i = 19, fd = 0;
  int64_t frac = 0, secs;
  int off = 0, sec;
  time_t t;

  if (n < 20 || !fits(s, "dddd-dd-ddTdd:dd:dd"))
    return 0;
  if (s[i] == '.') {
    for (i++; i < n && is_digit(s[i]); i++, fd++)
      if (fd < 9)
        frac = frac * 10 + (s[i] - '0');
    if (fd < 1 || fd > 9)
      return 0;
    while (fd++ < 9)
      frac *= 10;
  }
  if (n - i == 1 && (s[i] == 'Z' || s[i] == 'z')) {
    off = 0;
  } else if (n - i == 6 && (s[i] == '+' || s[i] == '-') &&
             fits(s + i + 1, "dd:dd")) {
    if (num(s + i + 1, 2) > 23 || num(s + i + 4, 2) > 59)
      return 0;
    off = (num(s + i + 1, 2) * 60 + num(s + i + 4, 2)) * 60;
    if (s[i] == '-')
      off = -off;
  } else {
    return 0;
  }
  if (num(s + 11, 2) > 23 || num(s + 14, 2) > 59 || num(s + 17, 2) > 60)
    return 0;
  memset(&tm, 0, sizeof(tm));
  tm.tm_year = num(s, 4) - 1900;
  tm.tm_mon = num(s + 5, 2) - 1;
  tm.tm_mday = num(s + 8, 2);
  tm.tm_hour = num(s + 11, 2);
  tm.tm_min = num(s + 14, 2);
  sec = num(s + 17, 2);
  tm.tm_sec = sec == 60 ? 59 : sec; /* a leap second: the next second */
  if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1)
    return 0;
  want = tm;
  t = timegm(&tm); /* normalises tm: keep the fields in want */
  /* a day past the month's end rolls over: not a date */
  if (gmtime_r(&t, &back) == NULL || back.tm_mday != want.tm_mday ||
      back.tm_mon != want.tm_mon || back.tm_year != want.tm_year)
    return 0;
  secs = (int64_t)t + (sec == 60) - off;
  if (secs < -9223372036LL || secs > 9223372035LL)
    return 0;
  *ns = secs * 1000000000LL + frac;
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char why[256];
  int64_t ns = 0, want = 0;
  char *s = malloc(size ? size : 1); /* no terminator: reads must stop */
  int rc, ok;

  ASSERT(s != NULL);
  memcpy(s, data, size);
  why[0] = 0;
  rc = sl_rfc3339_parse(s, size, &ns, why, sizeof(why));
  ok = oracle(s, size, &want);
  if (rc == 0) {
    ASSERT(ok);
    ASSERT(ns == want);
  } else {
    ASSERT(rc == SL_EINVAL);
    ASSERT(!ok);
    ASSERT(why[0] != 0);
  }
  free(s);
  return 0;
}
