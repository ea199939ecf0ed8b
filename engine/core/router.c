/* router.c - glob matching and first-match routing; see router.h. */
#include "router.h"

#include <string.h>

static int same(const char *a, const char *b, size_t n) {
  return n == 0 || memcmp(a, b, n) == 0; /* memcmp(NULL, .., 0) is UB */
}

/* The next '*' in pat[from..plen), or plen. */
static size_t next_star(const char *pat, size_t plen, size_t from) {
  const char *p = memchr(pat + from, '*', plen - from);
  return p ? (size_t)(p - pat) : plen;
}

int sl_router_glob(const char *pat, size_t plen, const char *s, size_t slen) {
  size_t head, tail, p, i, end;

  if (plen == 1 && pat[0] == '*')
    return 1; /* the catch-all route, checked for every event */
  /* the literal before the first '*' is a prefix; no '*': all of it */
  head = next_star(pat, plen, 0);
  if (head == plen)
    return plen == slen && same(pat, s, slen);
  if (head > slen || !same(pat, s, head))
    return 0;
  /* the literal after the last '*' is a suffix */
  tail = plen;
  while (pat[tail - 1] != '*')
    tail--;
  if (plen - tail > slen - head ||
      !same(pat + tail, s + slen - (plen - tail), plen - tail))
    return 0;
  /* each literal between stars at its leftmost place, in order: with '*'
   * the only wildcard, leftmost is never worse, and each search starts
   * where the last match ended, so the whole match is linear in the topic
   * and the glob (backtracking took seconds for long ones) */
  i = head;
  end = slen - (plen - tail);
  for (p = head + 1; p < tail; p = next_star(pat, tail, p) + 1) {
    size_t q = next_star(pat, tail, p);
    const char *at;
    if (q == p)
      continue; /* "**" */
    at = memmem(s + i, end - i, pat + p, q - p);
    if (at == NULL)
      return 0;
    i = (size_t)(at - s) + (q - p);
  }
  return 1;
}

const struct sl_route *sl_router_match(const struct sl_router *r,
                                       const char *topic, size_t len) {
  int i, j;
  for (i = 0; i < r->nroutes; i++) {
    const struct sl_route *rt = &r->routes[i];
    for (j = 0; j < rt->ntopics; j++) {
      const char *t = rt->topics[j];
      if ((t[0] == '*' && t[1] == '\0') ||
          sl_router_glob(t, strlen(t), topic, len))
        return rt; /* "*" (the catch-all) without a call */
    }
  }
  return NULL;
}
