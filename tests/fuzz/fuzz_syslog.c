/* fuzz_syslog.c - libFuzzer target for engine/codec/syslog.c: a message is
 * parsed as auto, RFC 5424 and RFC 3164. Every span must lie inside the
 * input, facility and severity in range, and a parsed message must write
 * exactly one well-formed msgpack map that renders as JSON and carries
 * each field's bytes. Build with `make fuzz`; `make test` runs it for a
 * few seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "syslog.h"
#include "fuzz.h"


static void inside(struct sl_str s, const char *p, size_t n) {
  if (s.p == NULL)
    return;
  ASSERT(s.p >= p && s.p + s.len <= p + n);
}

/* The payload's value at key is the span's bytes (nil when absent). */
static void carries(const struct sl_buf *b, const char *key, struct sl_str s) {
  const uint8_t *v;
  size_t vl;
  struct sl_str got;
  ASSERT(sl_codec_map_find(b->data, b->len, key, strlen(key), &v, &vl) == 0);
  if (s.p == NULL) {
    ASSERT(vl == 1 && v[0] == 0xc0);
    return;
  }
  ASSERT(sl_codec_read_str(v, vl, &got, NULL) == 0);
  ASSERT(got.len == s.len && memcmp(got.p, s.p, s.len) == 0);
}

static void one(const char *p, size_t n, enum sl_syslog_format f) {
  struct sl_syslog_msg m;
  struct sl_buf b, j;
  const char *why = NULL;
  size_t used;
  uint32_t count;
  if (sl_syslog_parse(p, n, f, 1796545577, &m, &why) != 0) {
    ASSERT(why != NULL);
    return;
  }
  ASSERT(m.facility >= 0 && m.facility < 24);
  ASSERT(m.severity >= 0 && m.severity < 8);
  ASSERT(f == SL_SYSLOG_AUTO || m.format == f);
  inside(m.timestamp, p, n);
  inside(m.hostname, p, n);
  inside(m.app, p, n);
  inside(m.procid, p, n);
  inside(m.msgid, p, n);
  inside(m.sd, p, n);
  inside(m.message, p, n);
  ASSERT(m.has_time == (m.timestamp.p != NULL));
  sl_buf_init(&b);
  sl_buf_init(&j);
  ASSERT(sl_syslog_put_payload(&b, &m) == 0);
  ASSERT(sl_codec_skip(b.data, b.len, b.len, &used, NULL) == 0);
  ASSERT(used == b.len);
  ASSERT(sl_codec_read_map(b.data, b.len, &count, &used) == 0 && count == 12);
  carries(&b, "timestamp", m.timestamp);
  carries(&b, "hostname", m.hostname);
  carries(&b, "app_name", m.app);
  carries(&b, "procid", m.procid);
  carries(&b, "msgid", m.msgid);
  if (m.message.p != NULL)
    carries(&b, "message", m.message);
  ASSERT(sl_codec_to_json(b.data, b.len, &j) == 0);
  sl_buf_close(&b);
  sl_buf_close(&j);
}

/* Split the bytes into frames as the TCP input does (max 64 bytes, so
 * oversized frames happen): every step moves forward, spans stay inside,
 * and every whole frame goes through the parser. */
static void frames(const uint8_t *d, size_t n) {
  size_t pos = 0, start;
  uint64_t len;
  int rc;
  while (pos < n) {
    rc = sl_syslog_frame(d + pos, n - pos, 64, &start, &len);
    if (rc == 0)
      break;
    if (rc < 0) {
      ASSERT(n - pos > 64);
      break;
    }
    ASSERT(start <= 11 && start < n - pos + 1);
    if (len > n - pos - start)
      break; /* waits for more (or is skipped when over max) */
    one((const char *)d + pos + start, (size_t)len, SL_SYSLOG_AUTO);
    ASSERT(start + len > 0);
    pos += start + (size_t)len;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  frames(data, size);
  one(p, size, SL_SYSLOG_AUTO);
  one(p, size, SL_SYSLOG_5424);
  one(p, size, SL_SYSLOG_3164);
  return 0;
}
