/* top.c - `sluice top`: a plain-text view of the running engine from two
 * /metrics scrapes a second apart: rates per input, rule and output, the
 * rules' p99 from their duration histogram, queue fill and breakers.
 * Redrawn each second with ANSI clear+home (no curses: works over ssh and
 * into a file); --once prints one frame and exits. */
#include "tap.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adminget.h"

struct sample {
  char *name, *labels;
  double v;
};

struct scrape {
  struct sample *s;
  int n, cap;
  double t; /* monotonic seconds */
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void scrape_free(struct scrape *sc) {
  int i;
  for (i = 0; i < sc->n; i++)
    free(sc->s[i].name); /* labels share the allocation */
  free(sc->s);
  memset(sc, 0, sizeof(*sc));
}

/* One "name{labels} value" line; comments and anything else skipped. */
static int add_line(struct scrape *sc, char *line) {
  char *brace, *sp, *copy;
  struct sample *x;
  if (line[0] == '#' || line[0] == '\0' || (sp = strrchr(line, ' ')) == NULL)
    return 0;
  if (sc->n == sc->cap) {
    int cap = sc->cap ? sc->cap * 2 : 256;
    struct sample *s = realloc(sc->s, (size_t)cap * sizeof(*s));
    if (s == NULL)
      return -1;
    sc->s = s;
    sc->cap = cap;
  }
  x = &sc->s[sc->n];
  x->v = strtod(sp + 1, NULL);
  copy = strndup(line, (size_t)(sp - line));
  if (copy == NULL)
    return -1;
  brace = strchr(copy, '{');
  if (brace) {
    *brace = '\0';
    x->labels = brace + 1;
  } else {
    x->labels = copy + strlen(copy);
  }
  x->name = copy;
  sc->n++;
  return 0;
}

static int fetch(const struct sl_config *cfg, struct scrape *sc,
                 int timeout_ms, char *err, size_t errlen) {
  struct sl_admin_get g;
  struct sl_buf body;
  char *line, *save = NULL;
  int rc;
  memset(sc, 0, sizeof(*sc));
  if (sl_admin_get_open(&g, cfg, "/metrics", timeout_ms, err, errlen) != 0)
    return -1;
  sl_buf_init(&body);
  rc = sl_admin_get_body(&g, &body) == 0 ? 0 : -1;
  if (rc != 0)
    snprintf(err, errlen, "%s", g.err[0] ? g.err : "the admin API closed "
             "inside its answer to /metrics");
  if (rc == 0 && g.status != 200) {
    snprintf(err, errlen, "the admin API answered %d to /metrics: %.*s",
             g.status, (int)(body.len > 200 ? 200 : body.len),
             (const char *)body.data);
    rc = -1;
  }
  sl_admin_get_close(&g);
  if (rc == 0)
    rc = sl_buf_putc(&body, '\0');
  for (line = rc == 0 ? strtok_r((char *)body.data, "\n", &save) : NULL;
       line && rc == 0; line = strtok_r(NULL, "\n", &save))
    rc = add_line(sc, line);
  sl_buf_close(&body);
  sc->t = now_s();
  return rc;
}

/* The value of label key in a sample's labels into out ("" if absent). */
static void label(const char *labels, const char *key, char *out, size_t n) {
  size_t k = strlen(key), o = 0;
  const char *p = labels;
  out[0] = '\0';
  if (k == 0)
    return;
  while ((p = strstr(p, key)) != NULL) {
    if ((p == labels || p[-1] == ',') && strncmp(p + k, "=\"", 2) == 0)
      break;
    p += k;
  }
  if (p == NULL)
    return;
  for (p += k + 2; *p && *p != '"' && o + 1 < n; p++) {
    if (*p == '\\' && p[1])
      p++;
    out[o++] = *p;
  }
  out[o] = '\0';
}

/* Sum of name's samples whose key is val (and key2 is val2, if given). */
static double sum(const struct scrape *sc, const char *name, const char *key,
                  const char *val, const char *key2, const char *val2) {
  char got[256];
  double t = 0;
  int i;
  for (i = 0; i < sc->n; i++) {
    if (strcmp(sc->s[i].name, name) != 0)
      continue;
    label(sc->s[i].labels, key, got, sizeof(got));
    if (key[0] && strcmp(got, val) != 0)
      continue;
    if (key2) {
      label(sc->s[i].labels, key2, got, sizeof(got));
      if (strcmp(got, val2) != 0)
        continue;
    }
    t += sc->s[i].v;
  }
  return t;
}

static double rate(const struct scrape *a, const struct scrape *b,
                   const char *name, const char *key, const char *val,
                   const char *key2, const char *val2) {
  double dt = b->t - a->t, d = sum(b, name, key, val, key2, val2) -
                               sum(a, name, key, val, key2, val2);
  return dt > 0 && d > 0 ? d / dt : 0;
}

/* The p99 of rule's duration in the window (all time when the window has
 * no timed call), in ms; < 0 when there is none at all. */
static double p99_ms(const struct scrape *a, const struct scrape *b,
                     const char *rule) {
  static const char *const h = "sluice_rule_duration_seconds_bucket";
  const struct scrape *base = a;
  double total, best = -1;
  char le[64];
  int i, pass;
  for (pass = 0; pass < 2; pass++, base = NULL) {
    total = sum(b, h, "rule", rule, "le", "+Inf") -
            (base ? sum(base, h, "rule", rule, "le", "+Inf") : 0);
    if (total <= 0)
      continue;
    for (i = 0; i < b->n; i++) {
      double c, bound;
      if (strcmp(b->s[i].name, h) != 0)
        continue;
      label(b->s[i].labels, "rule", le, sizeof(le));
      if (strcmp(le, rule) != 0)
        continue;
      label(b->s[i].labels, "le", le, sizeof(le));
      bound = strcmp(le, "+Inf") == 0 ? 1e9 : strtod(le, NULL);
      c = b->s[i].v - (base ? sum(base, h, "rule", rule, "le", le) : 0);
      if (c >= 0.99 * total && (best < 0 || bound < best))
        best = bound;
    }
    return best * 1000;
  }
  return -1;
}

/* Each distinct value of key among name's samples, in order of first
 * appearance, to fn. */
static void each(const struct scrape *sc, const char *name, const char *key,
                 void (*fn)(const char *v, void *data), void *data) {
  char seen[64][160], v[160];
  int i, j, n = 0;
  for (i = 0; i < sc->n; i++) {
    if (strcmp(sc->s[i].name, name) != 0)
      continue;
    label(sc->s[i].labels, key, v, sizeof(v));
    for (j = 0; j < n && strcmp(seen[j], v) != 0; j++)
      ;
    if (j < n || n == 64)
      continue;
    snprintf(seen[n++], sizeof(seen[0]), "%s", v);
    fn(v, data);
  }
}

struct frame {
  const struct scrape *a, *b;
};

static void input_row(const char *in, void *data) {
  const struct frame *f = data;
  printf("  %-24s %12.1f %12.1f\n", in,
         rate(f->a, f->b, "sluice_input_events_total", "input", in, NULL, NULL),
         rate(f->a, f->b, "sluice_events_unrouted_total", "input", in, NULL,
              NULL));
}

static void rule_row(const char *r, void *data) {
  const struct frame *f = data;
  static const char *const d = "sluice_rule_decisions_total";
  double p = p99_ms(f->a, f->b, r);
  char p99[32];
  if (p < 0)
    snprintf(p99, sizeof(p99), "-");
  else
    snprintf(p99, sizeof(p99), "%.3gms", p);
  printf("  %-24s %9.1f %9.1f %9.1f %9.1f %9.1f %9s\n", r,
         rate(f->a, f->b, "sluice_rule_calls_total", "rule", r, NULL, NULL),
         rate(f->a, f->b, d, "rule", r, "decision", "routed"),
         rate(f->a, f->b, d, "rule", r, "decision", "dropped"),
         rate(f->a, f->b, d, "rule", r, "decision", "passed"),
         rate(f->a, f->b, "sluice_rule_errors_total", "rule", r, NULL, NULL),
         p99);
}

static void output_row(const char *o, void *data) {
  static const char *const states[] = {"closed", "open", "half-open"};
  const struct frame *f = data;
  double cap = sum(f->b, "sluice_queue_capacity_events", "output", o, NULL,
                   NULL);
  int st = (int)sum(f->b, "sluice_output_breaker_state", "output", o, NULL,
                    NULL);
  printf("  %-24s %12.1f %7.1f%% %10.1f %10s %12.0f\n", o,
         rate(f->a, f->b, "sluice_output_events_total", "output", o, NULL,
              NULL),
         cap > 0 ? 100.0 * sum(f->b, "sluice_queue_events", "output", o, NULL,
                               NULL) / cap
                 : 0.0,
         rate(f->a, f->b, "sluice_output_retries_total", "output", o, NULL,
              NULL),
         st >= 0 && st <= 2 ? states[st] : "?",
         sum(f->b, "sluice_output_dead_lettered_total", "output", o, NULL,
             NULL));
}

static void print_frame(const struct sl_config *cfg, const struct scrape *a,
                        const struct scrape *b) {
  struct frame f = {a, b};
  printf("sluice top - %s - rules version %.0f - over %.1f s\n\n",
         cfg->admin.listen, sum(b, "sluice_rules_version", "", NULL, NULL, NULL),
         b->t - a->t);
  printf("  %-24s %12s %12s\n", "INPUT", "events/s", "unrouted/s");
  each(b, "sluice_input_events_total", "input", input_row, &f);
  printf("\n  %-24s %9s %9s %9s %9s %9s %9s\n", "RULE", "calls/s", "routed/s",
         "dropped/s", "passed/s", "errors/s", "p99");
  each(b, "sluice_rule_calls_total", "rule", rule_row, &f);
  printf("\n  %-24s %12s %8s %10s %10s %12s\n", "OUTPUT", "delivered/s",
         "queue", "retries/s", "breaker", "dead_letters");
  each(b, "sluice_output_events_total", "output", output_row, &f);
  fflush(stdout);
}

int sl_top_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"once", no_argument, NULL, 'o'},
      {"timeout", required_argument, NULL, 'T'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *path = SL_CONFIG_DEFAULT_PATH;
  struct sl_config *cfg;
  struct scrape a, b;
  struct timespec second = {1, 0};
  char err[512];
  int c, once = 0, rc = 0, timeout_ms = 10000;

  optind = 1;
  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    if (c == 'c')
      path = optarg;
    else if (c == 'o')
      once = 1;
    else if (c == 'T' && (timeout_ms = sl_tap_timeout(optarg)) > 0)
      continue;
    else {
      fputs("usage: sluice top [-c FILE] [--once] [--timeout SECONDS]\n",
            c == 'h' ? stdout : stderr);
      return c == 'h' ? 0 : 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "sluice top: unexpected argument \"%s\"\n", argv[optind]);
    return 2;
  }
  cfg = sl_tap_load(path);
  if (cfg == NULL)
    return 1;
  if (fetch(cfg, &a, timeout_ms, err, sizeof(err)) != 0) {
    fprintf(stderr, "sluice top: %s\n", err);
    sl_config_free(cfg);
    scrape_free(&a);
    return 1;
  }
  for (;;) {
    nanosleep(&second, NULL);
    if (fetch(cfg, &b, timeout_ms, err, sizeof(err)) != 0) {
      fprintf(stderr, "sluice top: %s\n", err);
      scrape_free(&b);
      rc = 1;
      break;
    }
    if (!once)
      fputs("\033[H\033[2J", stdout);
    print_frame(cfg, &a, &b);
    scrape_free(&a);
    a = b;
    if (once)
      break;
  }
  scrape_free(&a);
  sl_config_free(cfg);
  return rc;
}
