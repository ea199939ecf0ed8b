/* otlp.c - ExportLogsServiceRequest (as msgpack from the JSON reader) to
 * events; see otlp.h. A log record's event:
 *   topic    the template, {NAME} from the resource's attributes
 *   time     timeUnixNano, else observedTimeUnixNano (decimal strings or
 *            numbers); neither: the ingest time
 *   payload  the body, its AnyValue as plain msgpack (stringValue str,
 *            intValue int, doubleValue float64, boolValue bool, bytesValue
 *            bin, arrayValue array, kvlistValue map); no body: nil
 *   headers  traceparent (00-traceId-spanId-flags) when both ids are set,
 *            otel.severity_number, otel.severity_text, otel.scope.name,
 *            otel.scope.version, and the attributes of the record
 *            (otel.attr.K), of its resource (otel.resource.K) and of its
 *            scope (otel.scope.attr.K) as strings: strings as they are,
 *            other values as their JSON text. */
#include "otlp.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "common.h"
#include "event.h"

struct span {
  const uint8_t *p;
  size_t len;
};

struct walk {
  const char *topic_tpl;
  uint32_t max;
  struct sl_buf *out;
  sl_otlp_event_cb cb;
  void *data;
  struct sl_otlp_result *res;
  struct span resource;   /* its attributes list; p NULL: none */
  struct sl_buf topic;    /* the topic for the current resource */
  struct sl_buf common;   /* header pairs of the resource and scope */
  uint32_t ncommon;
  struct sl_buf rec;      /* header pairs of the record */
  uint32_t nrec;
  struct sl_buf payload;
  struct sl_buf text;     /* a value as JSON text */
  size_t total;           /* bytes of the events made so far */
  char why[160];          /* why the current record is refused */
};

/* ---- reading msgpack ----------------------------------------------------- */

/* The value of key in the map s; p NULL when s is no map or lacks it. */
static struct span field(struct span s, const char *key) {
  struct span v = {NULL, 0};
  if (s.p == NULL || sl_codec_map_find(s.p, s.len, key, strlen(key), &v.p,
                                       &v.len) != 0)
    v.p = NULL;
  return v;
}

static int is_nil(struct span s) { return s.p == NULL || s.p[0] == 0xc0; }

/* Items of the array s, one after the other: *at starts at 0. */
static int next_item(struct span s, size_t *at, struct span *item) {
  size_t used;
  if (*at >= s.len || sl_codec_skip(s.p + *at, s.len - *at, s.len, &used,
                                    NULL) != 0)
    return 0;
  item->p = s.p + *at;
  item->len = used;
  *at += used;
  return 1;
}

/* Step into the array s: its count, *at past its header. SL_EPROTO when s
 * is no array. */
static int array_of(struct span s, uint32_t *count, size_t *at) {
  if (s.p == NULL)
    return SL_EPROTO;
  return sl_codec_read_array(s.p, s.len, count, at) == 0 ? 0 : SL_EPROTO;
}

/* A str value, or p NULL. */
static struct sl_str str_of(struct span s) {
  struct sl_str v = {NULL, 0};
  if (s.p == NULL || sl_codec_read_str(s.p, s.len, &v, NULL) != 0)
    v.p = NULL;
  return v;
}

/* An int64 from a msgpack integer or a decimal string (the proto3 JSON form
 * of 64-bit numbers); is_unsigned (a fixed64 time, flags): not negative.
 * A value int64 cannot hold is refused, never wrapped (a fixed64 time of
 * 2^64-1 is not -1). 0 or SL_EPROTO. */
static int int_of(struct span s, int is_unsigned, int64_t *v) {
  struct sl_str t = str_of(s);
  char buf[32], *end;
  size_t used;
  uint64_t u;
  if (t.p) {
    if (t.len == 0 || t.len >= sizeof(buf))
      return SL_EPROTO;
    memcpy(buf, t.p, t.len);
    buf[t.len] = '\0';
    /* digits only: strtoll would take leading blanks and a '+' */
    if (!(buf[0] >= '0' && buf[0] <= '9') &&
        !(buf[0] == '-' && !is_unsigned && buf[1] >= '0' && buf[1] <= '9'))
      return SL_EPROTO;
    errno = 0;
    *v = strtoll(buf, &end, 10);
    return errno || *end ? SL_EPROTO : 0;
  }
  if (s.p && sl_codec_read_uint(s.p, s.len, &u, &used) == 0) {
    if (u > (uint64_t)INT64_MAX)
      return SL_EPROTO;
    *v = (int64_t)u;
    return 0;
  }
  if (s.p && is_unsigned)
    return SL_EPROTO; /* a negative integer, or none */
  if (s.p && s.p[0] >= 0xe0) { /* negative fixint */
    *v = (int8_t)s.p[0];
    return 0;
  }
  if (s.p && s.p[0] >= 0xd0 && s.p[0] <= 0xd3) { /* int 8..64 */
    size_t n = (size_t)1 << (s.p[0] - 0xd0), i;
    uint64_t u = 0;
    if (s.len < 1 + n)
      return SL_EPROTO;
    for (i = 0; i < n; i++)
      u = u << 8 | s.p[1 + i];
    if (n < 8 && (u >> (8 * n - 1)) & 1)
      u |= ~0ull << (8 * n); /* sign-extend */
    *v = (int64_t)u;
    return 0;
  }
  return SL_EPROTO;
}

/* ---- AnyValue to msgpack ---------------------------------------------------- */

static int put_any(struct walk *w, struct span v, struct sl_buf *out,
                   int depth);

static int hexval(int c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

/* Standard or URL-safe base64, padding optional, as bin. */
static int put_base64(struct walk *w, struct sl_str s, struct sl_buf *out) {
  uint8_t *bytes = malloc(s.len / 4 * 3 + 3);
  uint32_t acc = 0, i, bits = 0, n = 0;
  int rc;
  if (bytes == NULL)
    return SL_ENOMEM;
  for (i = 0; i < s.len && s.p[i] != '='; i++) {
    int v = b64val((unsigned char)s.p[i]);
    if (v < 0) {
      free(bytes);
      snprintf(w->why, sizeof(w->why), "bytesValue: not base64");
      return SL_EPROTO;
    }
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes[n++] = (uint8_t)(acc >> bits);
    }
  }
  rc = sl_codec_put_bin(out, bytes, n);
  free(bytes);
  return rc;
}

static int bad_value(struct walk *w, const char *what) {
  snprintf(w->why, sizeof(w->why), "%s", what);
  return SL_EPROTO;
}

/* A KeyValueList or ArrayValue ({"values": [...]}) as a map or array. */
static int put_list(struct walk *w, struct span v, int kv, struct sl_buf *out,
                    int depth) {
  struct span vals = field(v, "values"), item;
  uint32_t n = 0;
  size_t at = 0;
  int rc;
  if (v.p && is_nil(vals)) /* an empty list may leave values out */
    return kv ? sl_codec_put_map(out, 0) : sl_codec_put_array(out, 0);
  if (array_of(vals, &n, &at) != 0)
    return bad_value(w, kv ? "kvlistValue: expected {\"values\": [...]}"
                           : "arrayValue: expected {\"values\": [...]}");
  rc = kv ? sl_codec_put_map(out, n) : sl_codec_put_array(out, n);
  while (rc == 0 && next_item(vals, &at, &item)) {
    if (kv) {
      struct sl_str k = str_of(field(item, "key"));
      if (k.p == NULL)
        return bad_value(w, "kvlistValue: a value without a string key");
      rc = sl_codec_put_str(out, k.p, k.len);
      if (rc == 0)
        rc = put_any(w, field(item, "value"), out, depth + 1);
    } else {
      rc = put_any(w, item, out, depth + 1);
    }
  }
  return rc;
}

/* One AnyValue (v.p NULL or {}: nil). */
static int put_any(struct walk *w, struct span v, struct sl_buf *out,
                   int depth) {
  struct span x;
  uint32_t n;
  size_t used;
  int64_t i;
  double d;
  if (depth > 64)
    return bad_value(w, "AnyValue nested too deep");
  if (is_nil(v))
    return sl_codec_put_nil(out);
  if (sl_codec_read_map(v.p, v.len, &n, &used) != 0)
    return bad_value(w, "AnyValue: expected an object");
  if (n == 0)
    return sl_codec_put_nil(out);
  if ((x = field(v, "stringValue")).p) {
    struct sl_str s = str_of(x);
    if (s.p == NULL)
      return bad_value(w, "stringValue: expected a string");
    return sl_codec_put_str(out, s.p, s.len);
  }
  if ((x = field(v, "boolValue")).p) {
    if (x.p[0] != 0xc2 && x.p[0] != 0xc3)
      return bad_value(w, "boolValue: expected true or false");
    return sl_codec_put_bool(out, x.p[0] == 0xc3);
  }
  if ((x = field(v, "intValue")).p) {
    if (int_of(x, 0, &i) != 0)
      return bad_value(w, "intValue: expected an int64 (a decimal string)");
    return sl_codec_put_int(out, i);
  }
  if ((x = field(v, "doubleValue")).p) {
    struct sl_str s = str_of(x);
    if (s.p) { /* "NaN", "Infinity", "-Infinity" or a number as a string */
      char buf[64], *end;
      if (s.len == 0 || s.len >= sizeof(buf))
        return bad_value(w, "doubleValue: expected a number");
      memcpy(buf, s.p, s.len);
      buf[s.len] = '\0';
      if (strcmp(buf, "NaN") == 0) {
        d = NAN;
      } else if (strcmp(buf, "Infinity") == 0) {
        d = INFINITY;
      } else if (strcmp(buf, "-Infinity") == 0) {
        d = -INFINITY;
      } else {
        /* the whole string, as JSON writes a number: no blanks, no "0x",
         * no "inf" (strtod takes them all) */
        if (strspn(buf, "0123456789+-.eE") != s.len ||
            (d = strtod(buf, &end), *end != '\0'))
          return bad_value(w, "doubleValue: expected a number");
      }
    } else if (sl_codec_read_number(x.p, x.len, &d, &used) != 0) {
      return bad_value(w, "doubleValue: expected a number");
    }
    return sl_codec_put_double(out, d);
  }
  if ((x = field(v, "bytesValue")).p) {
    struct sl_str s = str_of(x);
    if (s.p == NULL)
      return bad_value(w, "bytesValue: expected a base64 string");
    return put_base64(w, s, out);
  }
  if ((x = field(v, "arrayValue")).p)
    return put_list(w, x, 0, out, depth);
  if ((x = field(v, "kvlistValue")).p)
    return put_list(w, x, 1, out, depth);
  return bad_value(w, "AnyValue: expected one of stringValue, boolValue, "
                      "intValue, doubleValue, arrayValue, kvlistValue, "
                      "bytesValue");
}

/* ---- headers ---------------------------------------------------------------- */

static int put_header(struct sl_buf *b, uint32_t *count, const char *prefix,
                      const char *name, size_t nlen, const void *val,
                      size_t vlen) {
  size_t plen = strlen(prefix);
  char key[256];
  int rc;
  if (plen + nlen >= sizeof(key))
    nlen = sizeof(key) - 1 - plen;
  memcpy(key, prefix, plen);
  memcpy(key + plen, name, nlen);
  rc = sl_codec_put_str(b, key, plen + nlen);
  if (rc == 0)
    rc = sl_codec_put_str(b, val, vlen);
  if (rc == 0)
    (*count)++;
  return rc;
}

/* Attributes (a KeyValue list) as headers prefix+key = value as text. */
static int put_attributes(struct walk *w, struct span list, const char *prefix,
                          struct sl_buf *b, uint32_t *count) {
  struct span item;
  uint32_t n;
  size_t at = 0;
  int rc = 0;
  if (is_nil(list))
    return 0;
  if (array_of(list, &n, &at) != 0)
    return bad_value(w, "attributes: expected an array of {key, value}");
  while (rc == 0 && next_item(list, &at, &item)) {
    struct sl_str k = str_of(field(item, "key"));
    struct sl_str s;
    if (k.p == NULL)
      return bad_value(w, "attributes: an attribute without a string key");
    if (strlen(prefix) + k.len > 255) /* cut, it could be another key */
      return bad_value(w, "attributes: a key longer than its header name "
                          "can be (255 bytes with its otel. prefix)");
    sl_buf_reset(&w->payload);
    if ((rc = put_any(w, field(item, "value"), &w->payload, 0)) != 0)
      return rc;
    if (sl_codec_read_str(w->payload.data, w->payload.len, &s, NULL) == 0) {
      rc = put_header(b, count, prefix, k.p, k.len, s.p, s.len);
    } else if (w->payload.data[0] == 0xcb) { /* the shortest exact text */
      char num[40];
      double d = 0;
      size_t used;
      int prec;
      sl_codec_read_number(w->payload.data, w->payload.len, &d, &used);
      for (prec = 15; prec < 17; prec++)
        if (snprintf(num, sizeof(num), "%.*g", prec, d) > 0 &&
            strtod(num, NULL) == d)
          break;
      snprintf(num, sizeof(num), "%.*g", prec, d);
      rc = put_header(b, count, prefix, k.p, k.len, num, strlen(num));
    } else {
      sl_buf_reset(&w->text);
      rc = sl_codec_to_json(w->payload.data, w->payload.len, &w->text);
      if (rc == 0)
        rc = put_header(b, count, prefix, k.p, k.len, w->text.data,
                        w->text.len);
    }
  }
  return rc;
}

/* ---- the topic ------------------------------------------------------------- */

int sl_otlp_topic_check(const char *topic) {
  const char *p = topic, *open;
  while ((open = strchr(p, '{')) != NULL) {
    const char *close = strchr(open, '}');
    if (close == NULL || close == open + 1)
      return SL_EINVAL;
    p = close + 1;
  }
  return strchr(p, '}') ? SL_EINVAL : 0;
}

/* The resource attribute name (a string), or p NULL. */
static struct sl_str resource_attr(struct walk *w, const char *name,
                                   size_t n) {
  struct span item;
  struct sl_str none = {NULL, 0};
  uint32_t count;
  size_t at = 0;
  if (array_of(w->resource, &count, &at) != 0)
    return none;
  while (next_item(w->resource, &at, &item)) {
    struct sl_str k = str_of(field(item, "key"));
    if (k.p && k.len == n && memcmp(k.p, name, n) == 0)
      return str_of(field(field(item, "value"), "stringValue"));
  }
  return none;
}

static int render_topic(struct walk *w) {
  const char *p = w->topic_tpl, *open;
  int rc = 0;
  sl_buf_reset(&w->topic);
  while (rc == 0 && (open = strchr(p, '{')) != NULL) {
    const char *close = strchr(open, '}');
    struct sl_str v;
    rc = sl_buf_append(&w->topic, p, (size_t)(open - p));
    v = resource_attr(w, open + 1, (size_t)(close - open - 1));
    if (rc == 0)
      rc = v.p && v.len ? sl_buf_append(&w->topic, v.p, v.len)
                        : sl_buf_append(&w->topic, "unknown", 7);
    p = close + 1;
  }
  if (rc == 0)
    rc = sl_buf_append(&w->topic, p, strlen(p));
  return rc;
}

/* ---- records ------------------------------------------------------------ */

/* Is s n hex digits (or empty: an id that is not set)? */
static int hex_id(struct sl_str s, size_t n) {
  size_t i;
  if (s.len == 0)
    return 1;
  if (s.len != n)
    return 0;
  for (i = 0; i < n; i++)
    if (hexval((unsigned char)s.p[i]) < 0)
      return 0;
  return 1;
}

/* traceId and spanId (hex) and flags as a traceparent header; nothing when
 * either is absent or empty (or all zero). SL_EPROTO when one is malformed,
 * also when the other is absent. */
static int put_traceparent(struct walk *w, struct span rec) {
  struct span ts = field(rec, "traceId"), ss = field(rec, "spanId");
  struct span fl = field(rec, "flags");
  struct sl_str t = str_of(ts), s = str_of(ss);
  int64_t flags = 0;
  char tp[64];
  size_t i;
  if ((!is_nil(ts) && t.p == NULL) || (!is_nil(ss) && s.p == NULL))
    return bad_value(w, "traceId, spanId: expected hex strings");
  if (!is_nil(fl) && (int_of(fl, 1, &flags) != 0 || flags > 0xffffffffLL))
    return bad_value(w, "flags: expected an integer from 0 to 2^32-1 (a "
                        "fixed32)");
  if (!hex_id(t, 32))
    return bad_value(w, "traceId: expected 32 hex digits");
  if (!hex_id(s, 16))
    return bad_value(w, "spanId: expected 16 hex digits");
  if (t.len == 0 || s.len == 0)
    return 0;
  memcpy(tp, "00-", 3);
  for (i = 0; i < 32; i++) {
    if (hexval((unsigned char)t.p[i]) < 0)
      return bad_value(w, "traceId: expected 32 hex digits");
    tp[3 + i] = "0123456789abcdef"[hexval((unsigned char)t.p[i])];
  }
  tp[35] = '-';
  for (i = 0; i < 16; i++) {
    if (hexval((unsigned char)s.p[i]) < 0)
      return bad_value(w, "spanId: expected 16 hex digits");
    tp[36 + i] = "0123456789abcdef"[hexval((unsigned char)s.p[i])];
  }
  snprintf(tp + 52, sizeof(tp) - 52, "-%02x", (unsigned)(flags & 0xff));
  if (!sl_event_traceparent_valid(tp, 55))
    return 0; /* all-zero ids: none */
  return put_header(&w->rec, &w->nrec, "", "traceparent", 11, tp, 55);
}

/* The event of one log record into w->out, handed to cb. SL_EPROTO with
 * w->why when the record is refused. */
static int take_record(struct walk *w, struct span rec) {
  static const char *const times[] = {"timeUnixNano", "observedTimeUnixNano"};
  struct span x;
  struct sl_str st;
  int64_t t = 0, v;
  size_t mark = w->out->len, used, i;
  uint32_t n;
  int has_time = 0, rc;
  char num[24];

  sl_buf_reset(&w->rec);
  w->nrec = 0;
  if (sl_codec_read_map(rec.p, rec.len, &n, &used) != 0)
    return bad_value(w, "expected a LogRecord object");
  for (i = 0; i < 2; i++) {
    x = field(rec, times[i]);
    if (is_nil(x))
      continue;
    if (int_of(x, 1, &v) != 0) {
      snprintf(w->why, sizeof(w->why), "%s: expected nanoseconds since the "
               "epoch (a decimal string)", times[i]);
      return SL_EPROTO;
    }
    if (v && !has_time) {
      t = v;
      has_time = 1;
    }
  }
  x = field(rec, "severityNumber");
  if (!is_nil(x)) {
    if (int_of(x, 0, &v) != 0 || v < 0 || v > 24)
      return bad_value(w, "severityNumber: expected an integer 0-24");
    snprintf(num, sizeof(num), "%lld", (long long)v);
    if ((rc = put_header(&w->rec, &w->nrec, "otel.", "severity_number", 15,
                         num, strlen(num))) != 0)
      return rc;
  }
  x = field(rec, "severityText");
  st = str_of(x);
  if (!is_nil(x) && st.p == NULL)
    return bad_value(w, "severityText: expected a string");
  if (st.len && (rc = put_header(&w->rec, &w->nrec, "otel.", "severity_text",
                                 13, st.p, st.len)) != 0)
    return rc;
  if ((rc = put_traceparent(w, rec)) != 0 ||
      (rc = put_attributes(w, field(rec, "attributes"), "otel.attr.",
                           &w->rec, &w->nrec)) != 0)
    return rc;
  sl_buf_reset(&w->payload);
  if ((rc = put_any(w, field(rec, "body"), &w->payload, 0)) != 0)
    return rc;
  /* sized before anything is copied: the resource's headers come again in
   * every record, and a large copy per small record must not happen */
  used = w->topic.len + w->common.len + w->rec.len + w->payload.len;
  if (used > w->max) {
    snprintf(w->why, sizeof(w->why), "the event is larger than "
             "max_event_bytes (%u)", (unsigned)w->max);
    return SL_EPROTO;
  }
  if (w->total + used > SL_OTLP_MAX_EVENTS) {
    snprintf(w->res->error, sizeof(w->res->error), "the events of this "
             "request would be larger than %u MiB (each repeats its "
             "resource and scope attributes): send fewer records per "
             "request", SL_OTLP_MAX_EVENTS >> 20);
    return SL_E2BIG;
  }
  rc = sl_codec_put_map(w->out, 3u + (uint32_t)has_time);
  if (rc == 0 && (rc = sl_codec_put_str(w->out, "topic", 5)) == 0)
    rc = sl_codec_put_str(w->out, (const char *)w->topic.data, w->topic.len);
  if (rc == 0 && has_time && (rc = sl_codec_put_str(w->out, "time", 4)) == 0)
    rc = sl_codec_put_int(w->out, t);
  if (rc == 0 && (rc = sl_codec_put_str(w->out, "headers", 7)) == 0)
    rc = sl_codec_put_map(w->out, w->ncommon + w->nrec);
  if (rc == 0)
    rc = sl_buf_append(w->out, w->common.data, w->common.len);
  if (rc == 0)
    rc = sl_buf_append(w->out, w->rec.data, w->rec.len);
  if (rc == 0 && (rc = sl_codec_put_str(w->out, "payload", 7)) == 0)
    rc = sl_buf_append(w->out, w->payload.data, w->payload.len);
  if (rc != 0) {
    w->out->len = mark;
    return rc;
  }
  if (w->out->len - mark > w->max) {
    w->out->len = mark;
    snprintf(w->why, sizeof(w->why), "the event is larger than "
             "max_event_bytes (%u)", (unsigned)w->max);
    return SL_EPROTO;
  }
  w->total += w->out->len - mark;
  return w->cb(w->data, mark, w->out->len - mark);
}

/* Every record of one ScopeLogs; at names it in errors. */
static int take_scope(struct walk *w, struct span sc, const char *at) {
  struct span scope = field(sc, "scope"), recs, item;
  struct sl_str name = str_of(field(scope, "name"));
  struct sl_str version = str_of(field(scope, "version"));
  size_t mark = w->common.len, pos = 0, i = 0;
  uint32_t nmark = w->ncommon, n;
  int rc = 0;

  if (name.len)
    rc = put_header(&w->common, &w->ncommon, "otel.scope.", "name", 4,
                    name.p, name.len);
  if (rc == 0 && version.len)
    rc = put_header(&w->common, &w->ncommon, "otel.scope.", "version", 7,
                    version.p, version.len);
  if (rc == 0)
    rc = put_attributes(w, field(scope, "attributes"), "otel.scope.attr.",
                        &w->common, &w->ncommon);
  recs = field(sc, "logRecords");
  if (rc == 0 && !is_nil(recs) && array_of(recs, &n, &pos) != 0)
    rc = bad_value(w, "logRecords: expected an array");
  if (rc == SL_EPROTO)
    snprintf(w->res->error, sizeof(w->res->error), "%s: %s", at, w->why);
  while (rc == 0 && !is_nil(recs) && next_item(recs, &pos, &item)) {
    w->why[0] = '\0';
    rc = take_record(w, item);
    if (rc == SL_EPROTO) {
      if (w->res->rejected++ == 0)
        snprintf(w->res->error, sizeof(w->res->error),
                 "%s.logRecords[%zu]: %s", at, i, w->why);
      rc = 0;
    } else if (rc == 0) {
      w->res->accepted++;
    }
    i++;
  }
  w->common.len = mark;
  w->ncommon = nmark;
  return rc;
}

/* Every ScopeLogs of one ResourceLogs. */
static int take_resource(struct walk *w, struct span r, size_t index) {
  struct span sls, item;
  uint32_t n;
  size_t pos = 0, i = 0;
  char at[96];
  int rc;

  snprintf(at, sizeof(at), "resourceLogs[%zu]", index);
  if (sl_codec_read_map(r.p, r.len, &n, &pos) != 0)
    rc = bad_value(w, "expected a ResourceLogs object");
  else
    rc = 0;
  pos = 0;
  w->resource = field(field(r, "resource"), "attributes");
  sl_buf_reset(&w->common);
  w->ncommon = 0;
  if (rc == 0)
    rc = render_topic(w);
  if (rc == 0)
    rc = put_attributes(w, w->resource, "otel.resource.", &w->common,
                        &w->ncommon);
  sls = field(r, "scopeLogs");
  if (rc == 0 && !is_nil(sls) && array_of(sls, &n, &pos) != 0)
    rc = bad_value(w, "scopeLogs: expected an array");
  if (rc == SL_EPROTO) {
    snprintf(w->res->error, sizeof(w->res->error), "%s: %s", at, w->why);
    return rc;
  }
  while (rc == 0 && !is_nil(sls) && next_item(sls, &pos, &item)) {
    char sat[128];
    snprintf(sat, sizeof(sat), "%s.scopeLogs[%zu]", at, i++);
    rc = take_scope(w, item, sat);
  }
  return rc;
}

int sl_otlp_logs(const uint8_t *p, size_t len, const char *topic,
                 uint32_t max_event_bytes, struct sl_buf *out,
                 sl_otlp_event_cb cb, void *data, struct sl_otlp_result *res) {
  struct walk w;
  struct span root = {p, len}, rls, item;
  uint32_t n;
  size_t pos = 0, i = 0;
  int rc = 0;

  memset(res, 0, sizeof(*res));
  memset(&w, 0, sizeof(w));
  w.topic_tpl = topic;
  w.max = max_event_bytes;
  w.out = out;
  w.cb = cb;
  w.data = data;
  w.res = res;
  sl_buf_init(&w.topic);
  sl_buf_init(&w.common);
  sl_buf_init(&w.rec);
  sl_buf_init(&w.payload);
  sl_buf_init(&w.text);
  rls = field(root, "resourceLogs");
  if (sl_codec_read_map(p, len, &n, &pos) != 0) {
    snprintf(res->error, sizeof(res->error),
             "expected an ExportLogsServiceRequest object");
    rc = SL_EPROTO;
  } else if (!is_nil(rls) && array_of(rls, &n, &pos) != 0) {
    snprintf(res->error, sizeof(res->error),
             "resourceLogs: expected an array");
    rc = SL_EPROTO;
  }
  while (rc == 0 && !is_nil(rls) && next_item(rls, &pos, &item))
    rc = take_resource(&w, item, i++);
  sl_buf_close(&w.topic);
  sl_buf_close(&w.common);
  sl_buf_close(&w.rec);
  sl_buf_close(&w.payload);
  sl_buf_close(&w.text);
  return rc;
}
