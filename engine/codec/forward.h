/* forward.h - the Fluent forward protocol v1 on the wire: its frames
 * (Message, Forward, PackedForward, CompressedPackedForward), their
 * entries, gzip with a bound on what inflates, and the shared-key digests.
 * Reads only through the codec walker; allocates only into caller buffers.
 * No state. */
#ifndef SL_FORWARD_H
#define SL_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "codec.h"
#include "common.h"

enum sl_forward_mode {
  SL_FORWARD_MESSAGE, /* [tag, time, record(, option)] */
  SL_FORWARD_FORWARD, /* [tag, [[time, record], ...](, option)] */
  SL_FORWARD_PACKED   /* [tag, bin of [time, record]...(, option)] */
};

/* One frame's parts, as spans into the bytes it was parsed from. */
struct sl_forward_frame {
  enum sl_forward_mode mode;
  struct sl_str tag;
  const uint8_t *entries; /* MESSAGE: time then record; FORWARD: the
                             [time, record] arrays back to back; PACKED: the
                             bin's bytes (gzip members when .gzip) */
  size_t entries_len;
  uint32_t count;         /* FORWARD: entries declared; MESSAGE: 1 */
  struct sl_str chunk;    /* option "chunk"; p == NULL when absent */
  int has_size;
  uint64_t size;          /* option "size": the entries the sender counted */
  int gzip;               /* option "compressed" = "gzip" */
};

/* One entry: its time in ns since the epoch and its record (a map). */
struct sl_forward_entry {
  int64_t time;
  const uint8_t *record;
  size_t record_len;
};

/* Parse one complete frame (len bytes, as measured by sl_codec_skip).
 * Returns 0 or SL_EPROTO with err filled (offset within the frame). */
int sl_forward_parse_frame(const uint8_t *p, size_t len,
                           struct sl_forward_frame *f,
                           struct sl_codec_error *err);

/* Read the entry at entries[*pos] (wrapped: a [time, record] array, as in
 * FORWARD and PACKED; else time then record, as in MESSAGE) and advance
 * *pos. Time: an integer (seconds), EventTime (ext type 0: seconds and
 * nanoseconds, 32-bit big endian each) or a float (seconds). Returns 0,
 * SL_EPROTO with err filled (offset within entries). */
int sl_forward_next_entry(const uint8_t *entries, size_t len, size_t *pos,
                          int wrapped, struct sl_forward_entry *e,
                          struct sl_codec_error *err);

/* Inflate gzip data (one or more members back to back) into out (reset
 * first). More than max bytes of output is refused as SL_E2BIG once
 * max + 64 KiB came out: out never grows past twice that (a gzip bomb
 * costs a bounded buffer, not what it claims).
 * Returns 0, SL_E2BIG, SL_EPROTO (not gzip, corrupt, truncated) or
 * SL_ENOMEM. */
int sl_forward_gunzip(const uint8_t *in, size_t n, size_t max,
                      struct sl_buf *out);

/* Append in[0..n) as one gzip member to out. 0 or SL_ENOMEM. */
int sl_forward_gzip(const uint8_t *in, size_t n, struct sl_buf *out);

/* hex out (129 bytes with the NUL) = lowercase hex of the SHA-512 of the
 * parts concatenated: the digests of the shared-key handshake. 0, or
 * SL_ENOMEM when OpenSSL fails. */
int sl_forward_digest(char out[129], const struct sl_str *parts, int n);

/* 16 random bytes (a nonce or a salt) from OpenSSL. 0 or SL_EIO. */
int sl_forward_random(uint8_t out[16]);

/* A fresh chunk id: 16 random bytes in base64 (24 characters and the
 * NUL). 0 or SL_EIO. */
int sl_forward_chunk_id(char out[25]);

/* Equal in constant time (digests). */
int sl_forward_digest_equal(const char *a, const char *b, size_t n);

#endif
