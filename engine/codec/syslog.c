/* syslog.c - RFC 5424 and RFC 3164 messages: parse into spans, write the
 * payload map. One forward pass with a cursor; every loop advances it and
 * stops at the end of the bytes, so the cost is linear in the message and
 * the parse allocates nothing (the payload map sorts an element's params
 * to find repeated names). Owns nothing. */
#include "syslog.h"

#include <stdlib.h>
#include <string.h>

#include "codec.h"

struct cur {
  const char *p;
  size_t n, i;
};

static const char *const facilities[24] = {
    "kern",   "user",   "mail",   "daemon", "auth",   "syslog",
    "lpr",    "news",   "uucp",   "cron",   "authpriv", "ftp",
    "ntp",    "security", "console", "solaris-cron", "local0", "local1",
    "local2", "local3", "local4", "local5", "local6", "local7"};
static const char *const severities[8] = {"emerg", "alert", "crit", "err",
                                          "warning", "notice", "info",
                                          "debug"};

const char *sl_syslog_facility_name(int f) {
  return f >= 0 && f < 24 ? facilities[f] : "unknown";
}
const char *sl_syslog_severity_name(int s) {
  return s >= 0 && s < 8 ? severities[s] : "unknown";
}

static int peek(const struct cur *c) {
  return c->i < c->n ? (unsigned char)c->p[c->i] : -1;
}
static int is_digit(int ch) { return ch >= '0' && ch <= '9'; }

/* n digits as a number, or -1. */
static int digits(struct cur *c, int n) {
  int v = 0;
  while (n-- > 0) {
    if (!is_digit(peek(c)))
      return -1;
    v = v * 10 + (c->p[c->i++] - '0');
  }
  return v;
}

static int expect(struct cur *c, char ch) {
  if (peek(c) != (unsigned char)ch)
    return -1;
  c->i++;
  return 0;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t days_since_epoch(int64_t y, int m, int d) {
  int64_t era, yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static int64_t to_ns(int64_t y, int mo, int d, int h, int mi, int s) {
  return ((days_since_epoch(y, mo, d) * 86400) + h * 3600 + mi * 60 + s) *
         1000000000LL;
}

/* "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)" (RFC 3339) at c. */
static int rfc3339(struct cur *c, int64_t *ns) {
  int y, mo, d, h, mi, s, zone = 0, sign;
  int64_t frac = 0, scale = 1000000000LL;
  /* ns since the epoch in an int64: 1970 to 2261 */
  if ((y = digits(c, 4)) < 1970 || y > 2261 || expect(c, '-') || (mo = digits(c, 2)) < 1 ||
      mo > 12 || expect(c, '-') || (d = digits(c, 2)) < 1 || d > 31 ||
      expect(c, 'T') || (h = digits(c, 2)) < 0 || h > 23 || expect(c, ':') ||
      (mi = digits(c, 2)) < 0 || mi > 59 || expect(c, ':') ||
      (s = digits(c, 2)) < 0 || s > 60)
    return -1;
  if (peek(c) == '.') {
    int nd = 0;
    c->i++;
    while (is_digit(peek(c))) {
      if (++nd > 9)
        return -1;
      scale /= 10;
      frac += (c->p[c->i++] - '0') * scale;
    }
    if (nd == 0)
      return -1;
  }
  if (peek(c) == 'Z') {
    c->i++;
  } else if (peek(c) == '+' || peek(c) == '-') {
    int zh, zm;
    sign = peek(c) == '-' ? -1 : 1;
    c->i++;
    if ((zh = digits(c, 2)) < 0 || zh > 23 || expect(c, ':') ||
        (zm = digits(c, 2)) < 0 || zm > 59)
      return -1;
    zone = sign * (zh * 60 + zm);
  } else {
    return -1;
  }
  *ns = to_ns(y, mo, d, h, mi, s) + frac - (int64_t)zone * 60000000000LL;
  return 0;
}

/* A header field of RFC 5424: 1..max printable ASCII bytes up to a space;
 * "-" is the nil value (span left NULL). */
static int field(struct cur *c, size_t max, struct sl_str *out) {
  size_t start = c->i;
  int ch;
  while ((ch = peek(c)) > 32 && ch < 127)
    c->i++;
  if (c->i == start || c->i - start > max || peek(c) != ' ')
    return -1;
  out->p = NULL;
  if (!(c->i - start == 1 && c->p[start] == '-')) {
    out->p = c->p + start;
    out->len = (uint32_t)(c->i - start);
  }
  c->i++; /* the space */
  return 0;
}

/* An SD-NAME: 1..32 printable ASCII but '=', ' ', ']', '"'. */
static int sd_name(struct cur *c) {
  size_t start = c->i;
  int ch;
  while ((ch = peek(c)) > 32 && ch < 127 && ch != '=' && ch != ']' &&
         ch != '"')
    c->i++;
  return c->i > start && c->i - start <= 32 ? 0 : -1;
}

/* A PARAM-VALUE from after its opening quote up to the closing one (which
 * is consumed); a backslash takes the next byte with it. */
static int sd_value(struct cur *c) {
  int ch;
  while ((ch = peek(c)) >= 0) {
    c->i++;
    if (ch == '"')
      return 0;
    if (ch == '\\') {
      if (c->i >= c->n)
        return -1;
      c->i++;
    }
  }
  return -1;
}

/* STRUCTURED-DATA: "-" or one or more [ID param="value" ...]. */
static int sd(struct cur *c, struct sl_str *out) {
  size_t start = c->i;
  out->p = NULL;
  if (peek(c) == '-') {
    c->i++;
    return 0;
  }
  if (peek(c) != '[')
    return -1;
  while (peek(c) == '[') {
    c->i++;
    if (sd_name(c))
      return -1;
    while (peek(c) == ' ') {
      c->i++;
      if (sd_name(c) || expect(c, '=') || expect(c, '"') || sd_value(c))
        return -1;
    }
    if (expect(c, ']'))
      return -1;
  }
  out->p = c->p + start;
  out->len = (uint32_t)(c->i - start);
  return 0;
}

/* The message from c to the end: a UTF-8 BOM and trailing CR, LF and NUL
 * bytes dropped. */
static void rest(struct cur *c, struct sl_str *msg, int bom) {
  size_t a = c->i, b = c->n;
  if (bom && b - a >= 3 && memcmp(c->p + a, "\xEF\xBB\xBF", 3) == 0)
    a += 3;
  while (b > a && (c->p[b - 1] == '\n' || c->p[b - 1] == '\r' ||
                   c->p[b - 1] == '\0'))
    b--;
  msg->p = c->p + a;
  msg->len = (uint32_t)(b - a);
  c->i = c->n;
}

static int parse_5424(struct cur *c, struct sl_syslog_msg *m,
                      const char **why) {
  size_t ts;
  *why = "bad RFC 5424 header";
  if (expect(c, '1') || expect(c, ' '))
    return -1;
  ts = c->i;
  if (peek(c) == '-') {
    c->i++;
  } else if (rfc3339(c, &m->time) == 0) {
    m->has_time = 1;
    m->timestamp.p = c->p + ts;
    m->timestamp.len = (uint32_t)(c->i - ts);
  } else {
    *why = "bad RFC 5424 timestamp";
    return -1;
  }
  if (expect(c, ' ') || field(c, 255, &m->hostname) ||
      field(c, 48, &m->app) || field(c, 128, &m->procid) ||
      field(c, 32, &m->msgid))
    return -1;
  if (sd(c, &m->sd)) {
    *why = "bad RFC 5424 structured data";
    return -1;
  }
  if (c->i < c->n && expect(c, ' ')) {
    *why = "no space after RFC 5424 structured data";
    return -1;
  }
  rest(c, &m->message, 1);
  return 0;
}

/* "Mmm dd hh:mm:ss" (the day space- or zero-padded), UTC, year guessed
 * from now_s. */
static int bsd_time(struct cur *c, int64_t now_s, int64_t *ns) {
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  int mo, d, h, mi, s;
  int64_t days, y;
  if (c->n - c->i < 15)
    return -1;
  for (mo = 0; mo < 12; mo++)
    if (memcmp(c->p + c->i, months + 3 * mo, 3) == 0)
      break;
  if (mo == 12 || c->p[c->i + 3] != ' ')
    return -1;
  c->i += 4;
  if (peek(c) == ' ')
    c->i++, d = digits(c, 1);
  else
    d = digits(c, 2);
  if (d < 1 || d > 31 || expect(c, ' ') || (h = digits(c, 2)) < 0 || h > 23 ||
      expect(c, ':') || (mi = digits(c, 2)) < 0 || mi > 59 || expect(c, ':') ||
      (s = digits(c, 2)) < 0 || s > 60)
    return -1;
  /* the civil year of now_s: count from the days since the epoch */
  days = now_s / 86400;
  y = 1970 + days / 366;
  while (days_since_epoch(y + 1, 1, 1) <= days)
    y++;
  *ns = to_ns(y, mo + 1, d, h, mi, s);
  if (*ns / 1000000000LL > now_s + 86400)
    *ns = to_ns(y - 1, mo + 1, d, h, mi, s); /* December read in January */
  return 0;
}

/* "TAG[PID]:" or "TAG:" at c: sets app and procid and moves past the
 * colon and one space. Returns -1 (c unchanged) when the word is not one. */
static int bsd_tag(struct cur *c, struct sl_syslog_msg *m) {
  size_t start = c->i, end, pid = 0, pidend = 0;
  int ch;
  while ((ch = peek(c)) > 32 && ch < 127 && ch != '[' && ch != ':')
    c->i++;
  end = c->i;
  if (end == start || end - start > 128)
    goto not_tag;
  if (peek(c) == '[') {
    pid = ++c->i;
    while ((ch = peek(c)) > 32 && ch < 127 && ch != ']')
      c->i++;
    pidend = c->i;
    if (expect(c, ']') || pidend == pid || pidend - pid > 128)
      goto not_tag;
    if (peek(c) == ':')
      c->i++;
    else if (peek(c) != ' ' && peek(c) != -1)
      goto not_tag;
  } else if (expect(c, ':')) {
    goto not_tag;
  }
  if (peek(c) == ' ')
    c->i++;
  m->app.p = c->p + start;
  m->app.len = (uint32_t)(end - start);
  if (pidend > pid) {
    m->procid.p = c->p + pid;
    m->procid.len = (uint32_t)(pidend - pid);
  }
  return 0;
not_tag:
  c->i = start;
  return -1;
}

/* RFC 3164 is a description of practice, not a grammar: after the PRI an
 * optional timestamp (BSD "Mmm dd hh:mm:ss" or RFC 3339), then an
 * optional host and a "tag[pid]:", then the message. What is not
 * recognised stays in the message; only the PRI is required. */
static int parse_3164(struct cur *c, int64_t now_s, struct sl_syslog_msg *m) {
  size_t ts = c->i, host;
  int ch;
  if (bsd_time(c, now_s, &m->time) == 0 ||
      (c->i = ts, rfc3339(c, &m->time) == 0)) {
    m->has_time = 1;
    m->timestamp.p = c->p + ts;
    m->timestamp.len = (uint32_t)(c->i - ts);
    if (peek(c) == ' ')
      c->i++;
    if (bsd_tag(c, m) != 0) {
      host = c->i; /* not a tag: a host name, then maybe a tag */
      while ((ch = peek(c)) > 32 && ch < 127)
        c->i++;
      if (peek(c) == ' ' && c->i - host <= 255) {
        m->hostname.p = c->p + host;
        m->hostname.len = (uint32_t)(c->i - host);
        c->i++;
        bsd_tag(c, m);
      } else {
        c->i = host;
      }
    }
  } else {
    c->i = ts;
  }
  rest(c, &m->message, 0);
  return 0;
}

int sl_syslog_parse(const char *p, size_t n, enum sl_syslog_format format,
                    int64_t now_s, struct sl_syslog_msg *m, const char **why) {
  struct cur c = {p, n, 0};
  const char *reason = "no <PRI> at the start";
  int pri = 0, nd = 0, rc;
  memset(m, 0, sizeof(*m));
  if (expect(&c, '<'))
    goto fail;
  while (is_digit(peek(&c)) && nd < 3)
    pri = pri * 10 + (c.p[c.i++] - '0'), nd++;
  if (nd == 0 || expect(&c, '>') || pri > 191) {
    reason = "bad <PRI>";
    goto fail;
  }
  m->facility = pri >> 3;
  m->severity = pri & 7;
  if (format == SL_SYSLOG_AUTO)
    format = c.n - c.i >= 2 && c.p[c.i] == '1' && c.p[c.i + 1] == ' '
                 ? SL_SYSLOG_5424
                 : SL_SYSLOG_3164;
  m->format = format;
  rc = format == SL_SYSLOG_5424 ? parse_5424(&c, m, &reason)
                                : parse_3164(&c, now_s, m);
  if (rc != 0)
    goto fail;
  return 0;
fail:
  if (why)
    *why = reason;
  return SL_EPROTO;
}

int sl_syslog_frame(const uint8_t *d, size_t n, uint32_t max, size_t *start,
                    uint64_t *len) {
  const uint8_t *lf;
  size_t i = 0;
  uint64_t v = 0;
  while (i < n && i < 11 && d[i] >= '0' && d[i] <= '9')
    v = v * 10 + (uint64_t)(d[i++] - '0');
  if (i > 0 && i == n && i < 11)
    return 0; /* "12" so far: a count or a line, more will tell */
  if (i > 0 && i < 11 && d[i] == ' ') {
    *start = i + 1;
    *len = v;
    return 1;
  }
  lf = memchr(d, '\n', n);
  if (lf == NULL)
    return n > max ? -1 : 0;
  *start = 0;
  *len = (uint64_t)(lf - d) + 1;
  return 1;
}

/* ---- the payload map ---------------------------------------------------- */

static int put_opt(struct sl_buf *b, struct sl_str s) {
  return s.p ? sl_codec_put_str(b, s.p, s.len) : sl_codec_put_nil(b);
}

static int put_key(struct sl_buf *b, const char *k) {
  return sl_codec_put_str(b, k, strlen(k));
}

/* A param value (between its quotes, escapes still in): RFC 5424 escapes
 * only '"', '\' and ']'; any other backslash stays. Written as a str of
 * the unescaped length whose bytes are then rewritten in place. */
static int put_value(struct sl_buf *b, const char *v, size_t n) {
  size_t i, len = 0;
  uint8_t *out;
  for (i = 0; i < n; i++, len++)
    if (v[i] == '\\' && i + 1 < n &&
        (v[i + 1] == '"' || v[i + 1] == '\\' || v[i + 1] == ']'))
      i++;
  if (sl_codec_put_str(b, v, len) != 0)
    return SL_ENOMEM;
  out = b->data + b->len - len;
  for (i = 0; i < n; i++) {
    if (v[i] == '\\' && i + 1 < n &&
        (v[i + 1] == '"' || v[i + 1] == '\\' || v[i + 1] == ']'))
      i++;
    *out++ = (uint8_t)v[i];
  }
  return 0;
}

/* A PARAM of an SD-ELEMENT: its name and its value (between the quotes,
 * escapes still in); at is its place in the element, run where its
 * name's run starts in the sorted copy and count that run's length (0
 * for all but the first PARAM of a name). */
struct param {
  const char *name, *val;
  uint32_t nlen, vlen, at, run, count;
};

static int by_name(const void *a, const void *b) {
  const struct param *x = a, *y = b;
  uint32_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
  int c = memcmp(x->name, y->name, n);
  if (c == 0)
    c = x->nlen < y->nlen ? -1 : x->nlen > y->nlen;
  return c ? c : x->at < y->at ? -1 : x->at > y->at;
}

/* One SD-ELEMENT at c (validated by sd()): {ID = {name = value}}'s pair.
 * A PARAM-NAME may come more than once (RFC 5424 7.2.2, origin's ip):
 * then its key appears once, where it first came, with the array of its
 * values in order, never as duplicate map keys (a rule would see one, a
 * JSON reader one or the other). Sorted, so n log n in the params. */
static int put_element(struct sl_buf *b, struct cur *c) {
  struct param *ps = NULL, *sorted;
  size_t start, cap = 0;
  uint32_t np = 0, nkeys = 0, i, j;
  int rc = SL_ENOMEM;
  c->i++; /* '[' */
  start = c->i;
  sd_name(c);
  if (sl_codec_put_str(b, c->p + start, c->i - start) != 0)
    return SL_ENOMEM;
  while (peek(c) == ' ') {
    size_t vs;
    if (np == cap) {
      struct param *n;
      cap = cap ? cap * 2 : 8;
      if ((n = realloc(ps, 2 * cap * sizeof(*ps))) == NULL)
        goto done;
      ps = n;
    }
    c->i++;
    start = c->i;
    sd_name(c);
    ps[np].name = c->p + start;
    ps[np].nlen = (uint32_t)(c->i - start);
    c->i += 2; /* '="' */
    vs = c->i;
    sd_value(c);
    ps[np].val = c->p + vs;
    ps[np].vlen = (uint32_t)(c->i - 1 - vs);
    ps[np].at = np;
    ps[np].count = 0;
    np++;
  }
  c->i++; /* ']' */
  sorted = np ? ps + cap : NULL;
  if (np > 0) {
    memcpy(sorted, ps, np * sizeof(*ps));
    qsort(sorted, np, sizeof(*ps), by_name);
  }
  for (i = 0; i < np; i = j) {
    for (j = i + 1; j < np && sorted[j].nlen == sorted[i].nlen &&
                    memcmp(sorted[j].name, sorted[i].name, sorted[i].nlen) == 0;
         j++)
      ;
    ps[sorted[i].at].run = i; /* the run's first is the earliest */
    ps[sorted[i].at].count = j - i;
    nkeys++;
  }
  if (sl_codec_put_map(b, nkeys) != 0)
    goto done;
  for (i = 0; i < np; i++) {
    const struct param *q = &ps[i];
    if (q->count == 0)
      continue; /* a repeat: in its first's array */
    if (sl_codec_put_str(b, q->name, q->nlen) != 0 ||
        (q->count > 1 && sl_codec_put_array(b, q->count) != 0))
      goto done;
    for (j = 0; j < q->count; j++)
      if (put_value(b, sorted[q->run + j].val, sorted[q->run + j].vlen) != 0)
        goto done;
  }
  rc = 0;
done:
  free(ps);
  return rc;
}

static int put_sd(struct sl_buf *b, struct sl_str s) {
  struct cur c = {s.p, s.len, 0};
  size_t at;
  uint32_t n = 0;
  if (s.p == NULL)
    return sl_codec_put_nil(b);
  if (sl_buf_append(b, "\xdf\0\0\0\0", 5) != 0)
    return SL_ENOMEM;
  at = b->len - 5;
  while (peek(&c) == '[') {
    if (put_element(b, &c) != 0)
      return SL_ENOMEM;
    n++;
  }
  sl_codec_patch_header(b, at, 1, n);
  return 0;
}

int sl_syslog_put_payload(struct sl_buf *b, const struct sl_syslog_msg *m) {
  const char *f = m->format == SL_SYSLOG_5424 ? "rfc5424" : "rfc3164";
  const char *fn = sl_syslog_facility_name(m->facility);
  const char *sn = sl_syslog_severity_name(m->severity);
  if (sl_codec_put_map(b, 12) || put_key(b, "format") ||
      sl_codec_put_str(b, f, strlen(f)) || put_key(b, "facility") ||
      sl_codec_put_uint(b, (uint64_t)m->facility) ||
      put_key(b, "facility_name") || sl_codec_put_str(b, fn, strlen(fn)) ||
      put_key(b, "severity") || sl_codec_put_uint(b, (uint64_t)m->severity) ||
      put_key(b, "severity_name") || sl_codec_put_str(b, sn, strlen(sn)) ||
      put_key(b, "timestamp") || put_opt(b, m->timestamp) ||
      put_key(b, "hostname") || put_opt(b, m->hostname) ||
      put_key(b, "app_name") || put_opt(b, m->app) || put_key(b, "procid") ||
      put_opt(b, m->procid) || put_key(b, "msgid") || put_opt(b, m->msgid) ||
      put_key(b, "structured_data") || put_sd(b, m->sd) ||
      put_key(b, "message") || sl_codec_put_str(b, m->message.p ? m->message.p : "", m->message.len))
    return SL_ENOMEM;
  return 0;
}
