/* tap.c - `sluice tap`: stream /tap of the running engine, one line per
 * decided event; the server renders both forms (format=text for people,
 * NDJSON for machines with --json), so this command only forwards the
 * filters and copies the stream to stdout. */
#include "tap.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adminget.h"
#include "plugins.h"

static const char tap_usage[] =
    "usage: sluice tap [-c FILE] [--topics GLOB[,GLOB...]] [--rule GLOB]\n"
    "                  [--output NAME] [--outcome routed|unrouted|dropped|"
    "failed[,...]]\n"
    "                  [--sample SHARE] [--limit N] [--json]"
    " [--timeout SECONDS]\n"
    "  --timeout: the most the admin API may take to answer, and to send\n"
    "  a line once it began (default 10); between lines the tap waits\n";

/* Append key=value to q, percent-encoding what a query must not hold. */
static int add_param(struct sl_buf *q, const char *key, const char *value) {
  const unsigned char *p;
  int rc = sl_buf_printf(q, "%s%s=", q->len ? "&" : "?", key);
  for (p = (const unsigned char *)value; rc == 0 && *p; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
        (*p >= '0' && *p <= '9') || strchr("-._~*,/", *p))
      rc = sl_buf_putc(q, (char)*p);
    else
      rc = sl_buf_printf(q, "%%%02X", *p);
  }
  return rc;
}

struct sl_config *sl_tap_load(const char *path) {
  struct sl_buf err;
  struct sl_config *cfg;
  sl_buf_init(&err);
  cfg = sl_config_load(path, sl_plugins, &err);
  if (cfg == NULL)
    fprintf(stderr, "%.*ssluice: %s: config rejected\n", (int)err.len,
            (const char *)err.data, path);
  sl_buf_close(&err);
  return cfg;
}

int sl_tap_timeout(const char *arg) {
  char *end;
  double s = strtod(arg, &end);
  if (end == arg || *end || !(s >= 0.1 && s <= 3600))
    return -1;
  return (int)(s * 1000);
}

static int stream(const struct sl_config *cfg, const char *target,
                  int timeout_ms) {
  struct sl_admin_get g;
  struct sl_buf chunk;
  char err[512];
  int n;

  if (sl_admin_get_open(&g, cfg, target, timeout_ms, err, sizeof(err)) !=
      0) {
    fprintf(stderr, "sluice tap: %s\n", err);
    return 1;
  }
  sl_buf_init(&chunk);
  if (g.status != 200) {
    sl_admin_get_body(&g, &chunk);
    fprintf(stderr, "sluice tap: the admin API answered %d: %.*s\n",
            g.status, (int)chunk.len, (const char *)chunk.data);
    n = -1;
  } else {
    g.idle_ok = 1; /* a quiet tap is no stalled server */
    while ((n = sl_admin_get_read(&g, &chunk)) > 0) {
      if (fwrite(chunk.data, 1, chunk.len, stdout) != chunk.len ||
          fflush(stdout) != 0) {
        n = 0; /* our reader left (a pipe to head): done */
        break;
      }
      sl_buf_reset(&chunk);
    }
    if (n < 0)
      fprintf(stderr, "sluice tap: %s\n",
              g.err[0] ? g.err : "the admin API closed the stream");
  }
  sl_buf_close(&chunk);
  sl_admin_get_close(&g);
  return n < 0 ? 1 : 0;
}

int sl_tap_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"topics", required_argument, NULL, 't'},
      {"rule", required_argument, NULL, 'r'},
      {"output", required_argument, NULL, 'o'},
      {"outcome", required_argument, NULL, 'O'},
      {"sample", required_argument, NULL, 's'},
      {"limit", required_argument, NULL, 'n'},
      {"json", no_argument, NULL, 'j'},
      {"timeout", required_argument, NULL, 'T'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  static const char *const keys[] = {
      ['t'] = "topics", ['r'] = "rule", ['o'] = "output", ['O'] = "outcome",
      ['s'] = "sample", ['n'] = "limit"};
  const char *path = SL_CONFIG_DEFAULT_PATH;
  struct sl_config *cfg;
  struct sl_buf q, target;
  int c, json = 0, rc = 0, timeout_ms = 10000;

  sl_buf_init(&q);
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    if (c == 'c') {
      path = optarg;
    } else if (c == 'j') {
      json = 1;
    } else if (c == 'T' && (timeout_ms = sl_tap_timeout(optarg)) < 0) {
      fprintf(stderr, "sluice tap: --timeout: expected seconds from 0.1 to "
              "3600, got \"%s\"\n", optarg);
      sl_buf_close(&q);
      return 2;
    } else if (c == 'T') {
      continue;
    } else if (c == 'h') {
      fputs(tap_usage, stdout);
      sl_buf_close(&q);
      return 0;
    } else if (c > 0 && c < (int)(sizeof(keys) / sizeof(*keys)) && keys[c]) {
      rc |= add_param(&q, keys[c], optarg);
    } else {
      fputs(tap_usage, stderr);
      sl_buf_close(&q);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "sluice tap: unexpected argument \"%s\"\n%s",
            argv[optind], tap_usage);
    sl_buf_close(&q);
    return 2;
  }
  if (!json)
    rc |= add_param(&q, "format", "text");
  cfg = rc == 0 ? sl_tap_load(path) : NULL;
  if (cfg == NULL) {
    sl_buf_close(&q);
    return 1;
  }
  sl_buf_init(&target);
  rc = sl_buf_printf(&target, "/tap%.*s", (int)q.len, (const char *)q.data);
  if (rc == 0)
    rc = sl_buf_putc(&target, '\0');
  rc = rc == 0 ? stream(cfg, (const char *)target.data, timeout_ms) : 1;
  sl_buf_close(&target);
  sl_buf_close(&q);
  sl_config_free(cfg);
  return rc;
}
