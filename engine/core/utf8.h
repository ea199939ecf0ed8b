/* utf8.h - the one UTF-8 validator: well-formed sequences per RFC 3629 (no
 * overlongs, no surrogates, nothing past U+10FFFF). Used wherever bytes
 * must become text that a strict reader accepts (JSON, /metrics labels). */
#ifndef SL_UTF8_H
#define SL_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1-4) of the well-formed UTF-8 sequence at s[0..n), n > 0; 0 when
 * there is none, with *bad (may be NULL) set to the length of the maximal
 * ill-formed prefix, which a renderer replaces by one U+FFFD. */
size_t sl_utf8_seq(const uint8_t *s, size_t n, size_t *bad);

/* The length of the longest prefix of s[0..n) that is well-formed UTF-8
 * (n when all of it is). */
size_t sl_utf8_prefix(const void *s, size_t n);

/* Is s[0..n) well-formed UTF-8 throughout? */
int sl_utf8_valid(const void *s, size_t n);

#endif
