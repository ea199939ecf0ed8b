/* fuzz_otlp.c - libFuzzer target for engine/codec/otlp.c: a text goes
 * through the JSON reader and, when it converts, through the OTLP logs walk
 * (twice: as it is, and wrapped as the body of one log record, so AnyValue
 * mapping gets arbitrary shapes). Every event handed out must be an event
 * map the engine takes (sl_codec_parse_event), within max_event_bytes, and
 * the counts must add up, with no bytes left over from a skipped record.
 * Build with `make fuzz`; `make test` runs it for a few seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json.h"
#include "otlp.h"
#include "fuzz.h"


#define MAX_EVENT 4096u

struct seen {
  struct sl_buf *out;
  size_t n, end;
};

static int on_event(void *data, size_t off, size_t len) {
  struct seen *s = data;
  struct sl_event_view v;
  struct sl_buf j;
  ASSERT(off >= s->end && off + len == s->out->len);
  ASSERT(len <= MAX_EVENT);
  ASSERT(sl_codec_parse_event(s->out->data + off, len, &v, NULL) == 0);
  /* the template's fixed part, then the name or "unknown" */
  ASSERT(v.topic.len >= 2 && memcmp(v.topic.p, "t.", 2) == 0);
  sl_buf_init(&j);
  ASSERT(sl_codec_to_json(s->out->data + off, len, &j) == 0);
  sl_buf_close(&j);
  s->end = off + len;
  s->n++;
  return 0;
}

static void walk(const char *text, size_t n) {
  struct sl_buf mp, out;
  struct sl_otlp_result res;
  struct seen s;
  char err[200];
  int rc;
  sl_buf_init(&mp);
  sl_buf_init(&out);
  memset(&s, 0, sizeof(s));
  s.out = &out;
  if (sl_json_to_msgpack(text, n, &mp, err, sizeof(err)) == 0) {
    rc = sl_otlp_logs(mp.data, mp.len, "t.{service.name}", MAX_EVENT, &out,
                      on_event, &s, &res);
    ASSERT(rc == 0 || rc == SL_EPROTO);
    if (rc == 0) {
      ASSERT(res.accepted == s.n);
      ASSERT(out.len == s.end); /* a skipped record leaves no bytes */
    }
    ASSERT(memchr(res.error, '\0', sizeof(res.error)) != NULL);
  }
  sl_buf_close(&mp);
  sl_buf_close(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char pre[] =
      "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":";
  static const char post[] = "}]}]}]}";
  char *wrapped;
  walk((const char *)data, size);
  wrapped = malloc(sizeof(pre) + size + sizeof(post));
  if (wrapped == NULL)
    return 0;
  memcpy(wrapped, pre, sizeof(pre) - 1);
  memcpy(wrapped + sizeof(pre) - 1, data, size);
  memcpy(wrapped + sizeof(pre) - 1 + size, post, sizeof(post) - 1);
  walk(wrapped, sizeof(pre) - 1 + size + sizeof(post) - 1);
  free(wrapped);
  return 0;
}
