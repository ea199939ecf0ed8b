/* utf8.c - see utf8.h. */
#include "utf8.h"

size_t sl_utf8_seq(const uint8_t *s, size_t n, size_t *bad) {
  uint8_t c = s[0], lo = 0x80, hi = 0xbf;
  size_t need, i;

  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    need = 1;
  } else if (c >= 0xe0 && c <= 0xef) {
    need = 2;
    if (c == 0xe0)
      lo = 0xa0; /* overlong */
    else if (c == 0xed)
      hi = 0x9f; /* surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    need = 3;
    if (c == 0xf0)
      lo = 0x90; /* overlong */
    else if (c == 0xf4)
      hi = 0x8f; /* above U+10FFFF */
  } else {
    if (bad)
      *bad = 1; /* stray continuation, 0xc0, 0xc1, 0xf5.. */
    return 0;
  }
  for (i = 1; i <= need; i++) {
    if (i >= n || s[i] < lo || s[i] > hi) {
      if (bad)
        *bad = i;
      return 0;
    }
    lo = 0x80;
    hi = 0xbf;
  }
  return need + 1;
}

size_t sl_utf8_prefix(const void *str, size_t n) {
  const uint8_t *s = str;
  size_t i = 0, seq;
  while (i < n) {
    if (s[i] < 0x80) { /* the common case, without a call */
      i++;
      continue;
    }
    if ((seq = sl_utf8_seq(s + i, n - i, NULL)) == 0)
      return i;
    i += seq;
  }
  return n;
}

int sl_utf8_valid(const void *s, size_t n) { return sl_utf8_prefix(s, n) == n; }
