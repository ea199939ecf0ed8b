/* router.h - topic globs and the config's routes table.
 * A route is a list of topic globs and the outputs they go to; the first
 * route whose globs match an event's topic decides. The router owns its
 * routes (copied from the config). No state beyond the table. */
#ifndef SL_ROUTER_H
#define SL_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#define SL_ROUTER_MAX_TO 16

/* Does topic match pattern? '*' matches any run of characters (dots
 * included); every other character matches itself. */
int sl_router_glob(const char *pat, size_t plen, const char *s, size_t slen);

struct sl_route {
  char **topics;
  int ntopics;
  int nto;
  uint16_t to[SL_ROUTER_MAX_TO]; /* output indices */
  uint32_t rate, burst;          /* rate_limit: events/s (0: none), burst */
};

struct sl_router {
  struct sl_route *routes;
  int nroutes;
};

/* The first route matching topic, or NULL. */
const struct sl_route *sl_router_match(const struct sl_router *r,
                                       const char *topic, size_t len);

#endif
