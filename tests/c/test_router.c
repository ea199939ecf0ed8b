/* test_router.c - topic globs and first-match routing. */
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
