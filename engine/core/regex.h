/* regex.h - a bounded regular-expression subset matched in linear time (a
 * Thompson NFA simulated over the code points of UTF-8 text; no
 * backtracking). For JSON Schema's pattern: ECMA-262 syntax, unanchored
 * search.
 *
 * Subset: literals; escapes \d \w \s \D \W \S, \t \n \r \f \v \0, \xHH,
 * \uHHHH and any escaped punctuation; classes [...] with ranges, negation
 * and the class escapes; . (any code point but \n \r U+2028 U+2029); ^ and
 * $ (start and end of the text only); groups (...) and (?:...); |; the
 * quantifiers * + ? {m} {m,} {m,n} (n <= 1000), and their lazy forms, which
 * match the same texts. \d \w \s are ASCII-only as in ECMA-262 (\s adds
 * the Unicode spaces). Anything else (backreferences, lookaround, \b, named
 * groups, \p{..}, a { that does not start a quantifier) is a compile error
 * naming the construct. A compiled program has at most SL_REGEX_MAX_INSNS
 * instructions. A compiled regex is read-only: threads may share one. */
#ifndef SL_REGEX_H
#define SL_REGEX_H

#include <stddef.h>
#include <stdint.h>

#define SL_REGEX_MAX_INSNS 2048
#define SL_REGEX_MAX_REPEAT 1000

struct sl_regex;

/* Compile pat[0..n). Returns 0 and sets *out, SL_EINVAL with err naming
 * the problem and its offset in the pattern, or SL_ENOMEM. */
int sl_regex_compile(const char *pat, size_t n, struct sl_regex **out,
                     char *err, size_t errlen);

/* 1 when the pattern matches somewhere in s[0..n), else 0. Time is
 * O(n) with the DFA (O(n * program size) with the NFA); no allocation
 * (the NFA takes about 13 KiB of stack). Invalid
 * UTF-8 bytes are read as one code point each (U+FFFD). */
int sl_regex_search(const struct sl_regex *re, const uint8_t *s, size_t n);

/* The same answer by the NFA alone, and whether the regex has a DFA (one
 * is built at compile time when it stays under its caps: 256 states,
 * 32768 state x class cells). For tests. */
int sl_regex_search_nfa(const struct sl_regex *re, const uint8_t *s,
                        size_t n);
int sl_regex_has_dfa(const struct sl_regex *re);

/* Free; NULL is a no-op. */
void sl_regex_free(struct sl_regex *re);

#endif
