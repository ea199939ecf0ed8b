/* test_router.c - topic globs and first-match routing. */
#include <stdint.h>
#include <time.h>

#include "router.h"
#include "test.h"

static int g(const char *p, const char *s) {
  return sl_router_glob(p, strlen(p), s, strlen(s));
}

TEST(glob_star_matches_any_run_including_dots) {
  CHECK(g("*", ""));
  CHECK(g("*", "a.b.c"));
  CHECK(g("orders.*", "orders.eu"));
  CHECK(g("orders.*", "orders.eu.north"));
  CHECK(g("orders.*", "orders."));
  CHECK(!g("orders.*", "orders"));
  CHECK(g("*.eu", "orders.eu"));
  CHECK(!g("*.eu", "orders.us"));
  CHECK(g("a*b*c", "axxbyyc"));
  CHECK(!g("a*b*c", "axxbyy"));
  CHECK(g("**", "x"));
}

TEST(glob_without_star_is_exact) {
  CHECK(g("orders", "orders"));
  CHECK(!g("orders", "orders2"));
  CHECK(!g("orders", "order"));
  CHECK(!g("", "x"));
  CHECK(g("", ""));
}

TEST(glob_is_not_exponential) {
  char s[4001];
  memset(s, 'a', 4000);
  s[4000] = '\0';
  CHECK(!g("*a*a*a*a*a*a*a*a*b", s));
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The definition, by backtracking: the reference for the fast matcher. */
static int slow(const char *p, const char *s) {
  if (*p == 0)
    return *s == 0;
  if (*p == '*')
    return slow(p + 1, s) || (*s && slow(p, s + 1));
  return *s == *p && slow(p + 1, s + 1);
}

TEST(glob_agrees_with_backtracking_on_random_globs) {
  unsigned seed = 12345;
  int n;

  for (n = 0; n < 200000; n++) {
    char p[12], s[14];
    int i, lp, ls;
    seed = seed * 1103515245u + 12345u;
    lp = (int)(seed >> 16) % 11;
    for (i = 0; i < lp; i++) {
      seed = seed * 1103515245u + 12345u;
      p[i] = "ab*."[(seed >> 16) % 4];
    }
    p[lp] = 0;
    seed = seed * 1103515245u + 12345u;
    ls = (int)(seed >> 16) % 13;
    for (i = 0; i < ls; i++) {
      seed = seed * 1103515245u + 12345u;
      s[i] = "ab."[(seed >> 16) % 3];
    }
    s[ls] = 0;
    if (g(p, s) != slow(p, s)) {
      fprintf(stderr, "  glob '%s' topic '%s': got %d\n", p, s, g(p, s));
      CHECK(0);
    }
  }
  CHECK(!g("a*a", "a")); /* prefix and suffix may not overlap */
  CHECK(g("a*a", "aa"));
  CHECK(g("*ab*ab*", "xabab"));
  CHECK(!g("*ab*ab*", "xaba"));
}

/* A long topic against a long glob: backtracking from one star took 0.7 s
 * per event (60 KB topic, 20 KB glob); linear, it takes microseconds. */
TEST(glob_is_linear_for_long_topics_and_globs) {
  size_t ns = 60000, np = 20002, i;
  char *s = malloc(ns + 1), *p = malloc(np + 1), *q = malloc(np + 1);
  uint64_t t0;

  CHECK(s && p && q);
  memset(s, 'a', ns);
  s[ns] = 0;
  p[0] = '*';
  memset(p + 1, 'a', np - 2);
  p[np - 1] = 'b';
  p[np] = 0;
  for (i = 0; i < np; i++) /* "*a*a*a...": many stars */
    q[i] = i % 2 ? 'a' : '*';
  q[np - 1] = 'b';
  q[np] = 0;
  t0 = now_ns();
  for (i = 0; i < 100; i++) {
    CHECK(!sl_router_glob(p, np, s, ns));
    CHECK(!sl_router_glob(q, np, s, ns));
    CHECK(sl_router_glob(p, np - 1, s, ns)); /* "*aaa...a" */
  }
  CHECK(now_ns() - t0 < 1000000000u); /* 300 matches; was 0.7 s each */
  free(s);
  free(p);
  free(q);
}

TEST(router_first_match_wins) {
  char *t1[] = {"orders.*"}, *t2[] = {"*"}, *t3[] = {"x", "orders.eu"};
  struct sl_route routes[3] = {
      {t1, 1, 1, {2}, 0, 0}, {t3, 2, 1, {5}, 0, 0}, {t2, 1, 1, {7}, 0, 0}};
  struct sl_router r = {routes, 3};
  const struct sl_route *m;
  m = sl_router_match(&r, "orders.eu", 9);
  CHECK(m == &routes[0]);
  m = sl_router_match(&r, "x", 1);
  CHECK(m == &routes[1]);
  m = sl_router_match(&r, "misc", 4);
  CHECK(m == &routes[2]);
  r.nroutes = 2;
  CHECK(sl_router_match(&r, "misc", 4) == NULL);
}
