/* rfc3339.h - RFC 3339 timestamps to integer nanoseconds since the epoch,
 * for the HTTP input's "time" field. Strict: the full form only. */
#ifndef SL_RFC3339_H
#define SL_RFC3339_H

#include <stddef.h>
#include <stdint.h>

/* Parse s (n bytes, no terminator needed) as YYYY-MM-DDTHH:MM:SS[.f]Z or
 * with a +HH:MM / -HH:MM offset ('T' and 'Z' in either case; 1 to 9
 * fraction digits; seconds 00..60, a leap second counting as the next
 * second's start; years 0000..9999, dates checked against the calendar).
 * Returns 0 with *ns, or SL_EINVAL with why saying what is wrong. */
int sl_rfc3339_parse(const char *s, size_t n, int64_t *ns, char *why,
                     size_t whylen);

#endif
