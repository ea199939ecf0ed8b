/* regex.c - placeholder until the NFA lands: every pattern is refused. */
#include "regex.h"

#include <stdio.h>

#include "common.h"

int sl_regex_compile(const char *pat, size_t n, struct sl_regex **out,
                     char *err, size_t errlen) {
  (void)pat;
  (void)n;
  *out = NULL;
  snprintf(err, errlen, "pattern is not supported yet");
  return SL_EINVAL;
}

int sl_regex_search(const struct sl_regex *re, const uint8_t *s, size_t n) {
  (void)re;
  (void)s;
  (void)n;
  return 0;
}

void sl_regex_free(struct sl_regex *re) { (void)re; }
