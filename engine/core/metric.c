/* metric.c - the metrics registry and its Prometheus text exposition; see
 * metric.h. Families in registration order, each with its sources in
 * registration order; rendering walks them once, so a family is one
 * HELP/TYPE block however many modules feed it. */
#include "metric.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "utf8.h"

struct source {
  const struct sl_metric *m; /* as its module declared it (label names) */
  sl_metric_collect_fn fn;   /* or one series: */
  const uint64_t *value;
  const struct sl_histogram *hist;
  char *labels;     /* the series' label text, rendered at registration */
  const void *data; /* fn's data, or the series' owner */
};

struct family {
  const struct sl_metric *m; /* the first registration: HELP and TYPE */
  struct source *src;
  int n, cap;
};

struct sl_metric_registry {
  struct family *fam;
  int n, cap;
};

struct sl_metric_out {
  struct sl_buf *b;
  struct sl_buf scratch; /* a histogram's label text */
  const struct sl_metric *m;
  int rc; /* the first failure: a lost line fails the whole rendering */
};

static const char *const type_names[] = {"counter", "gauge", "histogram"};

struct sl_metric_registry *sl_metric_registry_new(void) {
  return calloc(1, sizeof(struct sl_metric_registry));
}

void sl_metric_registry_free(struct sl_metric_registry *r) {
  int i, j;
  if (r == NULL)
    return;
  for (i = 0; i < r->n; i++) {
    for (j = 0; j < r->fam[i].n; j++)
      free(r->fam[i].src[j].labels);
    free(r->fam[i].src);
  }
  free(r->fam);
  free(r);
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* for metric names (colon), label names without */
static int valid_name(const char *s, int colon) {
  size_t i;
  if (s == NULL || s[0] == 0)
    return 0;
  for (i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return 0;
  }
  return 1;
}

static int valid_metric(const struct sl_metric *m) {
  int i;
  if (!valid_name(m->name, 1) || m->help == NULL ||
      (unsigned)m->type > SL_METRIC_HISTOGRAM)
    return 0;
  for (i = 0; i < SL_METRIC_MAX_LABELS && m->labels[i]; i++)
    if (!valid_name(m->labels[i], 0) || strncmp(m->labels[i], "__", 2) == 0 ||
        (m->type == SL_METRIC_HISTOGRAM && strcmp(m->labels[i], "le") == 0))
      return 0;
  return 1;
}

/* The family named m->name, made when new; NULL on a type clash or when
 * out of memory (*rc says which). */
static struct family *family_for(struct sl_metric_registry *r,
                                 const struct sl_metric *m, int *rc) {
  struct family *f;
  int i;
  for (i = 0; i < r->n; i++)
    if (strcmp(r->fam[i].m->name, m->name) == 0) {
      if (r->fam[i].m->type == m->type)
        return &r->fam[i];
      *rc = SL_EINVAL;
      return NULL;
    }
  if (r->n == r->cap) {
    int cap = r->cap ? r->cap * 2 : 32;
    f = realloc(r->fam, sizeof(*f) * (size_t)cap);
    if (f == NULL) {
      *rc = SL_ENOMEM;
      return NULL;
    }
    r->fam = f;
    r->cap = cap;
  }
  f = &r->fam[r->n++];
  memset(f, 0, sizeof(*f));
  f->m = m;
  return f;
}

static int add_source(struct sl_metric_registry *r, const struct source *s) {
  struct family *f;
  int rc = 0;
  if (!valid_metric(s->m))
    return SL_EINVAL;
  if ((f = family_for(r, s->m, &rc)) == NULL)
    return rc;
  if (f->n == f->cap) {
    int cap = f->cap ? f->cap * 2 : 4;
    struct source *grown = realloc(f->src, sizeof(*grown) * (size_t)cap);
    if (grown == NULL)
      return SL_ENOMEM;
    f->src = grown;
    f->cap = cap;
  }
  f->src[f->n++] = *s;
  return 0;
}

int sl_metric_add(struct sl_metric_registry *r, const struct sl_metric *m,
                  sl_metric_collect_fn fn, void *data) {
  struct source s = {m, fn, NULL, NULL, NULL, data};
  return fn ? add_source(r, &s) : SL_EINVAL;
}

/* m's labels with values[i] as `a="x",b="y"`, then `,extra` when given. */
static int put_labels(struct sl_buf *b, const struct sl_metric *m,
                      const char *const *values, const char *extra) {
  int i, rc = 0;
  for (i = 0; rc == 0 && i < SL_METRIC_MAX_LABELS && m->labels[i]; i++) {
    const char *v = values && values[i] ? values[i] : "";
    rc = sl_buf_printf(b, "%s%s=\"", i ? "," : "", m->labels[i]);
    if (rc == 0)
      rc = sl_metric_escape(b, v, strlen(v));
    if (rc == 0)
      rc = sl_buf_putc(b, '"');
  }
  if (rc == 0 && extra && extra[0])
    rc = sl_buf_printf(b, "%s%s", i ? "," : "", extra);
  return rc;
}

/* One series: its label text rendered now, so rendering copies it. */
static int add_series(struct sl_metric_registry *r, struct source *s,
                      const char *const *values) {
  struct sl_buf b;
  int rc;
  sl_buf_init(&b);
  rc = put_labels(&b, s->m, values, NULL);
  if (rc == 0)
    rc = sl_buf_putc(&b, 0);
  if (rc == 0) {
    s->labels = (char *)b.data;
    rc = add_source(r, s);
  }
  if (rc != 0)
    sl_buf_close(&b);
  return rc;
}

int sl_metric_add_u64(struct sl_metric_registry *r, const struct sl_metric *m,
                      const char *const *values, const uint64_t *value,
                      void *owner) {
  struct source s = {m, NULL, value, NULL, NULL, owner};
  if (value == NULL || m->type == SL_METRIC_HISTOGRAM)
    return SL_EINVAL;
  return add_series(r, &s, values);
}

int sl_metric_add_hist(struct sl_metric_registry *r, const struct sl_metric *m,
                       const char *const *values, const struct sl_histogram *h,
                       void *owner) {
  struct source s = {m, NULL, NULL, h, NULL, owner};
  if (h == NULL || m->type != SL_METRIC_HISTOGRAM)
    return SL_EINVAL;
  return add_series(r, &s, values);
}

void sl_metric_remove(struct sl_metric_registry *r, const void *data) {
  int i, j, k;
  for (i = 0; r && i < r->n; i++) {
    struct family *f = &r->fam[i];
    for (j = k = 0; j < f->n; j++) {
      if (f->src[j].data == data)
        free(f->src[j].labels);
      else
        f->src[k++] = f->src[j];
    }
    f->n = k;
  }
}

int sl_metric_escape(struct sl_buf *out, const char *s, size_t n) {
  const uint8_t *p = (const uint8_t *)s;
  size_t i = 0, seq, bad;
  int rc = 0;
  while (i < n && rc == 0) {
    if (p[i] == '\\' || p[i] == '"' || p[i] == '\n') {
      rc = sl_buf_append(out, p[i] == '\\' ? "\\\\"
                              : p[i] == '"' ? "\\\""
                                            : "\\n", 2);
      i++;
    } else if ((seq = sl_utf8_seq(p + i, n - i, &bad)) == 0) {
      rc = sl_buf_append(out, "\xef\xbf\xbd", 3);
      i += bad ? bad : 1;
    } else {
      rc = sl_buf_append(out, p + i, seq);
      i += seq;
    }
  }
  return rc;
}

/* ---- rendering --------------------------------------------------------- */

/* name{labels} value: labels is the text inside the braces (may be ""). */
static void put_line(struct sl_metric_out *o, const char *labels,
                     const char *const *values, const char *extra,
                     const char *value) {
  size_t open;
  if (o->rc)
    return;
  o->rc = sl_buf_printf(o->b, "%s{", o->m->name);
  open = o->b->len;
  if (o->rc == 0)
    o->rc = labels ? sl_buf_append(o->b, labels, strlen(labels))
                   : put_labels(o->b, o->m, values, extra);
  if (o->rc == 0 && o->b->len == open)
    o->b->len--; /* no labels: no braces */
  if (o->rc == 0)
    o->rc = sl_buf_printf(o->b, "%s %s\n", o->b->len >= open ? "}" : "",
                          value);
}

void sl_metric_put_u64(struct sl_metric_out *o, const char *const *values,
                       uint64_t v) {
  char num[24];
  snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
  put_line(o, NULL, values, NULL, num);
}

void sl_metric_put_extra(struct sl_metric_out *o, const char *const *values,
                         const char *extra, double v) {
  char num[32];
  if (isnan(v))
    snprintf(num, sizeof(num), "NaN");
  else if (isinf(v))
    snprintf(num, sizeof(num), "%cInf", v > 0 ? '+' : '-');
  else if (snprintf(num, sizeof(num), "%.15g", v) > 0 && strtod(num, NULL) != v)
    snprintf(num, sizeof(num), "%.17g", v); /* 15 digits did not round-trip */
  put_line(o, NULL, values, extra, num);
}

void sl_metric_put(struct sl_metric_out *o, const char *const *values,
                   double v) {
  sl_metric_put_extra(o, values, NULL, v);
}

static void put_hist_text(struct sl_metric_out *o, const char *labels,
                          const struct sl_histogram *h) {
  if (o->rc == 0)
    o->rc = sl_histogram_render(o->b, o->m->name, labels, h);
}

void sl_metric_put_hist(struct sl_metric_out *o, const char *const *values,
                        const struct sl_histogram *h) {
  if (o->rc || o->m->type != SL_METRIC_HISTOGRAM)
    return;
  sl_buf_reset(&o->scratch);
  o->rc = put_labels(&o->scratch, o->m, values, NULL);
  if (o->rc == 0)
    o->rc = sl_buf_putc(&o->scratch, 0);
  put_hist_text(o, (const char *)o->scratch.data, h);
}

/* HELP text escapes backslash and newline only. */
static int put_help(struct sl_buf *b, const struct sl_metric *m) {
  const char *s;
  int rc = sl_buf_printf(b, "# HELP %s ", m->name);
  for (s = m->help; rc == 0 && *s; s++)
    rc = *s == '\\'   ? sl_buf_append(b, "\\\\", 2)
         : *s == '\n' ? sl_buf_append(b, "\\n", 2)
                      : sl_buf_putc(b, (uint8_t)*s);
  if (rc == 0)
    rc = sl_buf_printf(b, "\n# TYPE %s %s\n", m->name, type_names[m->type]);
  return rc;
}

static void render_source(struct sl_metric_out *o, const struct source *s) {
  char num[24];
  o->m = s->m;
  if (s->fn) {
    s->fn(o, s->m, (void *)s->data);
  } else if (s->hist) {
    put_hist_text(o, s->labels, s->hist);
  } else {
    snprintf(num, sizeof(num), "%llu", (unsigned long long)*s->value);
    put_line(o, s->labels, NULL, NULL, num);
  }
}

int sl_metric_render(const struct sl_metric_registry *r, struct sl_buf *text) {
  struct sl_metric_out o;
  int i, j;
  memset(&o, 0, sizeof(o));
  o.b = text;
  sl_buf_init(&o.scratch);
  for (i = 0; o.rc == 0 && i < r->n; i++) {
    o.rc = put_help(text, r->fam[i].m);
    for (j = 0; o.rc == 0 && j < r->fam[i].n; j++)
      render_source(&o, &r->fam[i].src[j]);
  }
  sl_buf_close(&o.scratch);
  return o.rc;
}
