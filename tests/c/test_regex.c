/* test_regex.c - the regex's compile-time DFA against its NFA: both must
 * give the same answer on every text (generated patterns and texts with
 * non-ASCII and invalid UTF-8), typical schema patterns must get a DFA and
 * the right answers, and a pattern over the DFA's caps falls back to the
 * NFA with the same answers. */
#include <stdint.h>

#include "regex.h"
#include "test.h"

static uint32_t seed = 12345;

static uint32_t rnd(uint32_t n) {
  seed = seed * 1103515245u + 12345u;
  return (seed >> 16) % n;
}

static struct sl_regex *comp(const char *pat) {
  struct sl_regex *re = NULL;
  char err[256];
  if (sl_regex_compile(pat, strlen(pat), &re, err, sizeof(err)) != 0) {
    fprintf(stderr, "  compile %s: %s\n", pat, err);
    return NULL;
  }
  return re;
}

static int both(const struct sl_regex *re, const char *s, size_t n,
                int *agree) {
  int d = sl_regex_search(re, (const uint8_t *)s, n);
  int f = sl_regex_search_nfa(re, (const uint8_t *)s, n);
  *agree = d == f;
  return d;
}

static int search(const struct sl_regex *re, const char *s) {
  int agree, m = both(re, s, strlen(s), &agree);
  return agree ? m : -1;
}

static const char *atoms[] = {
    "a", "b", "c", "1", " ", ".", "[a-c]", "[^ab]", "\\d", "\\w", "\\s",
    "\\D", "\\W", "\\S", "\xc3\xa9", "\\u00e9", "[\xc3\xa0-\xc3\xbf]",
    "[^\\x00-\\x7f]", "\xce\xbb", "\\n", "^", "$", "\\.", "[0-9a-f]"};
static const char *quants[] = {"", "", "", "*", "+", "?", "{2}", "{1,3}",
                               "{0,2}", "{2,}", "*?"};

static void gen_pat(char *out, size_t cap, int depth) {
  int i, n = 1 + (int)rnd(4);
  size_t len = strlen(out);
  for (i = 0; i < n && len + 40 < cap; i++) {
    if (depth < 2 && rnd(5) == 0) {
      strcat(out, rnd(2) ? "(" : "(?:");
      gen_pat(out, cap, depth + 1);
      if (rnd(2)) {
        strcat(out, "|");
        gen_pat(out, cap, depth + 1);
      }
      strcat(out, ")");
    } else {
      const char *a = atoms[rnd(sizeof(atoms) / sizeof(*atoms))];
      strcat(out, a);
      if (a[0] == '^' || a[0] == '$') {
        len = strlen(out);
        continue;
      }
    }
    strcat(out, quants[rnd(sizeof(quants) / sizeof(*quants))]);
    len = strlen(out);
  }
  if (depth == 0 && rnd(4) == 0) {
    strcat(out, "|");
    gen_pat(out, cap, 1);
  }
}

static const char *pieces[] = {
    "a", "b", "c", "1", "9", " ", "\n", "\r", "x", "Z", "_", ".",
    "\xc3\xa9",         /* e acute */
    "\xce\xbb",         /* lambda */
    "\xe2\x80\xa8",     /* U+2028 */
    "\xf0\x9f\x98\x80", /* emoji */
    "\xff",             /* invalid byte */
    "\xc3",             /* truncated */
    "\xed\xa0\x80",     /* surrogate */
    "\xc0\xaf",         /* overlong */
    "\x80",             /* stray continuation */
    "\xe2\x80"};        /* truncated three-byte */

static size_t gen_text(char *out, size_t cap) {
  size_t len = 0, k;
  int i, n = (int)rnd(9);
  for (i = 0; i < n; i++) {
    const char *p = pieces[rnd(sizeof(pieces) / sizeof(*pieces))];
    k = strlen(p);
    if (len + k >= cap)
      break;
    memcpy(out + len, p, k);
    len += k;
  }
  out[len] = 0;
  return len;
}

TEST(regex_dfa_agrees_with_nfa_on_generated_patterns_and_texts) {
  char pat[512], text[64];
  int i, j, agree, with_dfa = 0, matches = 0, total = 0;
  for (i = 0; i < 3000; i++) {
    struct sl_regex *re;
    pat[0] = 0;
    gen_pat(pat, sizeof(pat), 0);
    re = comp(pat);
    CHECK(re != NULL);
    with_dfa += sl_regex_has_dfa(re);
    for (j = 0; j < 40; j++) {
      size_t n = gen_text(text, sizeof(text));
      int m = both(re, text, n, &agree);
      if (!agree) {
        fprintf(stderr, "  pattern /%s/ text \"", pat);
        for (size_t k = 0; k < n; k++)
          fprintf(stderr, "\\x%02x", (uint8_t)text[k]);
        fprintf(stderr, "\": dfa %d, nfa %d\n", m, !m);
      }
      CHECK(agree);
      matches += m;
      total++;
    }
    sl_regex_free(re);
  }
  /* the generator reaches both answers, and nearly all get a DFA */
  CHECK(matches > total / 10 && matches < total * 9 / 10);
  CHECK(with_dfa > 2900);
}

TEST(regex_typical_schema_patterns_get_a_dfa_and_the_right_answers) {
  struct sl_regex *re;
  CHECK((re = comp("^[A-Z]{3}-[0-9]{4,8}$")) != NULL);
  CHECK(sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "ABC-1234"), 1);
  CHECK_EQ(search(re, "ABC-12345678"), 1);
  CHECK_EQ(search(re, "ABC-123456789"), 0);
  CHECK_EQ(search(re, "ABC-123"), 0);
  CHECK_EQ(search(re, "xABC-1234"), 0);
  CHECK_EQ(search(re, "ABC-1234\n"), 0);
  CHECK_EQ(search(re, "AB\xc3\xa9-1234"), 0);
  sl_regex_free(re);
  CHECK((re = comp("^[a-z0-9._-]+@[a-z0-9.-]+$")) != NULL);
  CHECK(sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "jane.doe@example.com"), 1);
  CHECK_EQ(search(re, "jane@"), 0);
  CHECK_EQ(search(re, "j\xc3\xa9@x.org"), 0);
  CHECK_EQ(search(re, "j@x\xff"), 0);
  sl_regex_free(re);
  CHECK((re = comp("^(EUR|USD|GBP)$")) != NULL);
  CHECK(sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "USD"), 1);
  CHECK_EQ(search(re, "USDX"), 0);
  CHECK_EQ(search(re, ""), 0);
  sl_regex_free(re);
  CHECK((re = comp("[0-9]+")) != NULL);
  CHECK(sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "item 42"), 1);
  CHECK_EQ(search(re, "\xc3\xa9\xff" "7"), 1);
  CHECK_EQ(search(re, "none"), 0);
  CHECK_EQ(search(re, ""), 0);
  sl_regex_free(re);
  CHECK((re = comp("^ord-[0-9a-f]{8}$")) != NULL);
  CHECK(sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "ord-0a1b2c3d"), 1);
  CHECK_EQ(search(re, "ord-0a1b2c3"), 0);
  CHECK_EQ(search(re, "ord-0a1b2c3dd"), 0);
  sl_regex_free(re);
  CHECK((re = comp("")) != NULL); /* the empty pattern matches anything */
  CHECK_EQ(search(re, ""), 1);
  CHECK_EQ(search(re, "\xff"), 1);
  sl_regex_free(re);
  CHECK((re = comp("\xef\xbf\xbd")) != NULL); /* U+FFFD: invalid bytes */
  CHECK_EQ(search(re, "a\xff"), 1);
  CHECK_EQ(search(re, "a\xef\xbf\xbd"), 1);
  CHECK_EQ(search(re, "a\xc3\xa9"), 0);
  sl_regex_free(re);
}

/* Anchors in the middle: ^ holds only at the start, $ only at the end. */
TEST(regex_dfa_anchors_inside_the_pattern_hold_only_at_the_ends) {
  struct sl_regex *re;
  CHECK((re = comp("a^b|c$d|(^|x)y($|z)")) != NULL);
  CHECK(sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "ab"), 0);
  CHECK_EQ(search(re, "cd"), 0);
  CHECK_EQ(search(re, "y"), 1);
  CHECK_EQ(search(re, "yq"), 0);
  CHECK_EQ(search(re, "qyz"), 0);
  CHECK_EQ(search(re, "qxyz"), 1);
  CHECK_EQ(search(re, "qxy"), 1);
  sl_regex_free(re);
}

/* (a|b)*a(a|b){12} needs 2^13 DFA states: over the cap, the NFA answers. */
TEST(regex_over_the_dfa_caps_falls_back_to_the_nfa) {
  struct sl_regex *re;
  char pat[1024], text[64];
  int i, c, agree;
  size_t n;
  CHECK((re = comp("(a|b)*a(a|b){12}")) != NULL);
  CHECK(!sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "baaaaaaaaaaaaa"), 1);
  CHECK_EQ(search(re, "abbbbbbbbbbbb"), 1);
  CHECK_EQ(search(re, "bbbbbbbbbbbbbbbbbbbba"), 0);
  for (i = 0; i < 200; i++) {
    n = gen_text(text, sizeof(text));
    both(re, text, n, &agree);
    CHECK(agree);
  }
  sl_regex_free(re);
  /* a class per code point of 200 distinct ones: over the class cap */
  strcpy(pat, "x[");
  for (c = 0x100; c < 0x100 + 400; c += 2) {
    n = strlen(pat);
    pat[n] = (char)(0xc0 | (c >> 6));
    pat[n + 1] = (char)(0x80 | (c & 0x3f));
    pat[n + 2] = 0;
  }
  strcat(pat, "]");
  CHECK((re = comp(pat)) != NULL);
  CHECK(!sl_regex_has_dfa(re));
  CHECK_EQ(search(re, "x\xc4\x80"), 1); /* U+0100 */
  CHECK_EQ(search(re, "x\xc4\x81"), 0); /* U+0101 */
  sl_regex_free(re);
}
