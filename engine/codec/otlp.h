/* otlp.h - OpenTelemetry logs (OTLP/HTTP, JSON encoding) to events: each
 * log record of an ExportLogsServiceRequest becomes one event map (topic,
 * time, headers, payload) in the canonical form sl_codec_parse_event reads.
 * The request comes already converted to msgpack by the one JSON reader
 * (sl_json_to_msgpack); this walks it, no second parser. */
#ifndef SL_OTLP_H
#define SL_OTLP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* What a request led to: records turned into events, records refused (the
 * OTLP partial success) and why the first was. */
struct sl_otlp_result {
  size_t accepted;
  size_t rejected;
  char error[200];
};

/* Called with each event map, at out->data[off..off+len). 0 to go on; a
 * negative code stops the walk, which returns it. */
typedef int (*sl_otlp_event_cb)(void *data, size_t off, size_t len);

/* Walk the ExportLogsServiceRequest at p (len bytes of msgpack) and append
 * one event map per valid log record to out, calling cb for each.
 * topic: the topic of every event, where {NAME} is the resource attribute
 * NAME ("unknown" when it is missing or not a string). Records that are not
 * valid, or whose event would exceed max_event_bytes, are counted in
 * res->rejected (the first one's reason in res->error) and skipped.
 * Every event repeats its resource's and scope's headers, so a request of
 * small records under large resource attributes would make far more bytes
 * than it has: the events of one request are at most SL_OTLP_MAX_EVENTS
 * bytes, else the whole request is refused (SL_E2BIG, res->error says so).
 * Returns 0, SL_EPROTO when the request itself is malformed (res->error
 * says where: answer 400), SL_E2BIG, SL_ENOMEM, or what cb returned. */
#define SL_OTLP_MAX_EVENTS (64u << 20)
int sl_otlp_logs(const uint8_t *p, size_t len, const char *topic,
                 uint32_t max_event_bytes, struct sl_buf *out,
                 sl_otlp_event_cb cb, void *data, struct sl_otlp_result *res);

/* Does the topic template hold only {NAME} fields that close? 0, or
 * SL_EINVAL. */
int sl_otlp_topic_check(const char *topic);

#endif
