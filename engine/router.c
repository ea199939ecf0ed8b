/* router.c - glob matching and first-match routing; see router.h. */
#include "router.h"

#include <string.h>

int sl_router_glob(const char *pat, size_t plen, const char *s, size_t slen) {
  size_t p = 0, i = 0, star_p = (size_t)-1, star_i = 0;

  /* greedy with one backtrack point: linear in practice, never exponential */
  while (i < slen) {
    if (p < plen && pat[p] == '*') {
      star_p = ++p;
      star_i = i;
    } else if (p < plen && pat[p] == s[i]) {
      p++;
      i++;
    } else if (star_p != (size_t)-1) {
      p = star_p;
      i = ++star_i;
    } else {
      return 0;
    }
  }
  while (p < plen && pat[p] == '*')
    p++;
  return p == plen;
}

const struct sl_route *sl_router_match(const struct sl_router *r,
                                       const char *topic, size_t len) {
  int i, j;
  for (i = 0; i < r->nroutes; i++) {
    const struct sl_route *rt = &r->routes[i];
    for (j = 0; j < rt->ntopics; j++)
      if (sl_router_glob(rt->topics[j], strlen(rt->topics[j]), topic, len))
        return rt;
  }
  return NULL;
}
