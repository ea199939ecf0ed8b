/* lint.c - see lint.h. Reads the source line by line: a long comment or
 * string that spans lines can hide or fake a finding; the findings are
 * warnings for that reason. */
#include "lint.h"
#include "schema.h"

#include "router.h"
#include "tls.h"

#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A quoted literal at *p (" or ') into out; *p moves past it. 0, or -1
 * when *p holds no complete simple literal (escapes make it not simple). */
static int literal(const char **p, char *out, size_t outlen) {
  char q = **p;
  const char *s = *p + 1, *e;
  if (q != '"' && q != '\'')
    return -1;
  e = strchr(s, q);
  if (e == NULL || memchr(s, '\\', (size_t)(e - s)) ||
      (size_t)(e - s) >= outlen)
    return -1;
  memcpy(out, s, (size_t)(e - s));
  out[e - s] = '\0';
  *p = e + 1;
  return 0;
}

static const char *skip_space(const char *p) {
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

/* Does the statement end at p (end of line, ';', or a block keyword)? */
static int ends(const char *p) {
  p = skip_space(p);
  return *p == '\0' || *p == '\n' || *p == '\r' || *p == ';' ||
         strncmp(p, "--", 2) == 0 || strncmp(p, "end", 3) == 0 ||
         strncmp(p, "else", 4) == 0;
}

/* Could name be an output's (letters, digits, '_', '-', '.', as the
 * config allows)? A helper's "[card]" or "n/a" cannot: no warning. */
static int could_be_output(const char *name) {
  const char *c;
  if (*name == '\0')
    return 0;
  for (c = name; *c; c++)
    if (!isalnum((unsigned char)*c) && *c != '_' && *c != '-' && *c != '.')
      return 0;
  return 1;
}

static int check_name(const struct sl_config *cfg, const char *file, int line,
                      const char *what, const char *name) {
  if (!could_be_output(name) ||
      sl_config_output_index(cfg, name, strlen(name)) >= 0)
    return 0;
  fprintf(stderr, "%s:%d: warning: %s \"%s\", which names no output\n", file,
          line, what, name);
  return 1;
}

/* The names a `return` at p (just after the keyword) gives as literals. */
static int scan_return(const struct sl_config *cfg, const char *file,
                       int line, const char *p) {
  char names[16][128];
  int n = 0, i, found = 0;
  p = skip_space(p);
  if (*p == '{') {
    p = skip_space(p + 1);
    while (n < 16 && literal(&p, names[n], sizeof(names[n])) == 0) {
      n++;
      p = skip_space(p);
      if (*p == ',')
        p = skip_space(p + 1);
    }
    if (*p != '}' || n == 0 || !ends(p + 1))
      return 0; /* not a list of literals only */
  } else if (literal(&p, names[0], sizeof(names[0])) == 0 && ends(p)) {
    n = 1;
  }
  for (i = 0; i < n; i++)
    found += check_name(cfg, file, line, "returns", names[i]);
  return found;
}

/* Is the word w (not part of a longer name or a field) at p? */
static int word_at(const char *start, const char *p, const char *w) {
  size_t n = strlen(w);
  return strncmp(p, w, n) == 0 &&
         (p == start || !(isalnum((unsigned char)p[-1]) || p[-1] == '_' ||
                          p[-1] == '.')) &&
         !(isalnum((unsigned char)p[n]) || p[n] == '_');
}

static int scan_file(const struct sl_config *cfg, const char *path) {
  FILE *f = fopen(path, "r");
  char buf[4096], name[128];
  int line = 0, found = 0;
  if (f == NULL)
    return 0; /* loading it reported that */
  while (fgets(buf, sizeof(buf), f)) {
    char *cut = strstr(buf, "--"), *p;
    line++;
    if (cut)
      *cut = '\0'; /* a line comment (or "--" in a string: a miss) */
    for (p = buf; *p; p++) {
      if (word_at(buf, p, "return")) {
        found += scan_return(cfg, path, line, p + 6);
      } else if (strncmp(p, "sluice.emit(", 12) == 0) {
        const char *q = skip_space(p + 12);
        if (literal(&q, name, sizeof(name)) == 0)
          found += check_name(cfg, path, line, "emits to", name);
      }
    }
  }
  fclose(f);
  return found;
}

static int rule_file(const struct dirent *d) {
  size_t n = strlen(d->d_name);
  return d->d_name[0] != '.' && n > 4 &&
         strcmp(d->d_name + n - 4, ".lua") == 0 &&
         !(n >= 9 && strcmp(d->d_name + n - 9, "_spec.lua") == 0);
}

int sl_lint_rules(const struct sl_config *cfg) {
  struct dirent **names = NULL;
  char path[4200];
  int n, i, found = 0;
  if (cfg->rules.dir == NULL)
    return 0;
  n = scandir(cfg->rules.dir, &names, rule_file, alphasort);
  for (i = 0; i < n; i++) {
    snprintf(path, sizeof(path), "%s/%s", cfg->rules.dir, names[i]->d_name);
    found += scan_file(cfg, path);
    free(names[i]);
  }
  free(names);
  return found;
}

/* Does glob e match every topic glob g matches? Sound, not complete: g's
 * text, its '*' read as a character, must match e; e's literals then meet
 * only g's literals, and each '*' of g lies inside a run a '*' of e takes,
 * which takes whatever that '*' of g stands for too. */
static int covers(const char *e, const char *g) {
  return sl_router_glob(e, strlen(e), g, strlen(g));
}

int sl_lint_routes(const struct sl_config *cfg, const char *path) {
  const struct sl_router *r = &cfg->router;
  int i, j, k, m, found = 0;
  for (i = 1; i < r->nroutes; i++) {
    const struct sl_route *x = &r->routes[i];
    int by = -1, all = x->ntopics > 0;
    for (k = 0; k < x->ntopics && all; k++) {
      int hit = 0;
      for (j = 0; j < i && !hit; j++)
        for (m = 0; m < r->routes[j].ntopics && !hit; m++)
          if (covers(r->routes[j].topics[m], x->topics[k])) {
            hit = 1;
            by = j;
          }
      all = hit;
    }
    if (!all)
      continue;
    fprintf(stderr, "%s: routes[%d]: warning: never decides: every topic "
            "it matches is taken first by an earlier route (routes[%d])\n",
            path, i + 1, by + 1);
    found++;
  }
  return found;
}

/* ---- tls files ------------------------------------------------------------ */

/* One block: as a listener when it has a certificate and key (that loads
 * and matches them), else as a client (its CA files); a client's host
 * check needs no real address here, nothing connects. */
static int tls_one(const struct sl_tls_config *t, const char *path,
                   const char *where, int i, const char *name) {
  struct sl_tls_config c = *t;
  struct sl_tls *tls;
  char err[512];
  int server = c.cert_file && c.key_file;
  if (!c.enabled)
    return 0;
  if (!server && c.verify_peer && c.server_name == NULL)
    c.server_name = "check.invalid";
  tls = sl_tls_new(&c, server, "check.invalid:1", name, err, sizeof(err));
  if (tls) {
    sl_tls_free(tls);
    return 0;
  }
  if (i > 0)
    fprintf(stderr, "%s: %s[%d] (%s).tls: %s\n", path, where, i, name, err);
  else
    fprintf(stderr, "%s: %s.tls: %s\n", path, where, err);
  return 1;
}

int sl_lint_tls(const struct sl_config *cfg, const char *path) {
  int i, bad = 0;
  for (i = 0; i < cfg->ninputs; i++)
    bad += tls_one(&cfg->inputs[i].tls, path, "inputs", i + 1,
                   cfg->inputs[i].name);
  for (i = 0; i < cfg->noutputs; i++)
    bad += tls_one(&cfg->outputs[i].tls, path, "outputs", i + 1,
                   cfg->outputs[i].name);
  bad += tls_one(&cfg->admin.tls, path, "admin", 0, "admin");
  return bad;
}

/* ---- schema contracts ---------------------------------------------------- */

struct changes {
  char breaking[1024], compatible[1024];
  size_t nb, nc;
};

static void on_change(void *data, int breaking, const char *path,
                      const char *what) {
  struct changes *c = data;
  char *out = breaking ? c->breaking : c->compatible;
  size_t *off = breaking ? &c->nb : &c->nc;
  /* the schema path names the field when it is not at the root ("type
   * narrowed from number to integer at /properties/qty") */
  if (*off < sizeof(c->breaking) - 1)
    *off += (size_t)snprintf(out + *off, sizeof(c->breaking) - *off,
                             "%s%s%s%s", *off ? "; " : "", what,
                             path[0] ? " at " : "", path);
  if (*off >= sizeof(c->breaking))
    *off = sizeof(c->breaking) - 1;
}

int sl_lint_schemas(const struct sl_config *cfg, int info) {
  int i, j, errors = 0;
  for (i = 0; i < cfg->nschemas; i++) {
    const struct sl_schema_contract *k = &cfg->schemas[i];
    for (j = 1; j < k->nversions; j++) {
      const struct sl_schema_version *a = &k->versions[j - 1],
                                     *b = &k->versions[j];
      struct changes ch;
      int nb;
      memset(&ch, 0, sizeof(ch));
      nb = sl_schema_compare(a->schema, b->schema, on_change, &ch);
      if (nb > 0 && (a->code >> 16) == (b->code >> 16)) {
        errors++;
        if (info)
          continue;
        fprintf(stderr, "%s: error: %s %s breaks readers of %s: %s; a "
                "breaking change needs a new major version\n", b->file,
                k->topics, b->version, a->version, ch.breaking);
        continue;
      }
      if (!info)
        continue;
      if (nb > 0) {
        printf("info: %s %s breaks readers of %s (a new major version): "
               "%s\n", k->topics, b->version, a->version, ch.breaking);
      }
      if (ch.nc && nb > 0)
        printf("info: %s %s also changes compatibly from %s: %s\n",
               k->topics, b->version, a->version, ch.compatible);
      else if (ch.nc)
        printf("info: %s %s is compatible with %s: %s\n", k->topics,
               b->version, a->version, ch.compatible);
      else if (nb == 0)
        printf("info: %s %s is compatible with %s: no changes\n",
               k->topics, b->version, a->version);
    }
  }
  return errors;
}
