/* syslog.h - one syslog message (RFC 5424 or RFC 3164) parsed into spans
 * of its bytes, and written as the msgpack payload map sluice events carry.
 * The parser is bounded and linear: one pass over the bytes, no
 * allocation, every field length checked. No state. */
#ifndef SL_SYSLOG_H
#define SL_SYSLOG_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "common.h"

enum sl_syslog_format {
  SL_SYSLOG_AUTO = 0, /* RFC 5424 when a version 1 follows the PRI */
  SL_SYSLOG_5424,
  SL_SYSLOG_3164
};

/* Spans into the parsed bytes; p == NULL when the field is absent ("-"
 * in RFC 5424, or not found in RFC 3164). */
struct sl_syslog_msg {
  enum sl_syslog_format format; /* what the message was read as */
  int facility, severity;
  struct sl_str timestamp, hostname, app, procid, msgid;
  struct sl_str sd;      /* the raw, validated structured data; NULL: "-" */
  struct sl_str message; /* BOM and trailing CR, LF and NUL stripped */
  int has_time;          /* the timestamp was read: time is set */
  int64_t time;          /* ns since the epoch */
};

/* Parse the message p[0..n) as format (AUTO: per message). RFC 3164
 * timestamps have no year and no zone: they are read as UTC, in the year
 * of now_s (seconds since the epoch) or the one before when that puts
 * them more than a day ahead of now_s. Returns 0, or SL_EPROTO with why
 * (may be NULL) pointing at a static reason. */
int sl_syslog_parse(const char *p, size_t n, enum sl_syslog_format format,
                    int64_t now_s, struct sl_syslog_msg *m, const char **why);

/* Append m as a msgpack map: format, facility, facility_name, severity,
 * severity_name, timestamp, hostname, app_name, procid, msgid,
 * structured_data ({SD-ID = {param = value}}, values unescaped), message.
 * Absent fields are nil. Returns 0 or SL_ENOMEM. */
int sl_syslog_put_payload(struct sl_buf *b, const struct sl_syslog_msg *m);

/* The next frame of a syslog TCP stream d[0..n) (RFC 6587), told apart
 * per frame: octet counting ("LEN SP MSG", LEN 1 to 10 digits) when the
 * bytes start with digits and a space, else a line up to and with its LF
 * (RFC 5424's parser drops the LF). Returns 1 with the message at
 * d[*start] and *len bytes long (*len may exceed max, and n - *start:
 * the caller skips or waits), 0 when more bytes are needed (n >= 1), -1
 * for a line without an LF already over max bytes. */
int sl_syslog_frame(const uint8_t *d, size_t n, uint32_t max, size_t *start,
                    uint64_t *len);

/* Names of a facility (0..23) and a severity (0..7): "daemon", "err". */
const char *sl_syslog_facility_name(int facility);
const char *sl_syslog_severity_name(int severity);

#endif
