/* codec.h - msgpack on the wire: bounds-checked walking, event parsing,
 * canonical event encoding and JSON rendering.
 * Nothing here allocates while reading untrusted bytes: every length and
 * container count is checked against the bytes that remain before it is
 * used. Writers append to a caller-owned sl_buf. No state but what a
 * caller holds (struct sl_codec_walk). */
#ifndef SL_CODEC_H
#define SL_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "common.h"

#define SL_CODEC_MAX_DEPTH 64 /* nesting deeper than this is rejected */

/* Where reading stopped and why, for messages a user reads. */
struct sl_codec_error {
  size_t offset; /* byte offset from the start of the object */
  char msg[128];
};

/* Measure one complete msgpack object at p.
 * Returns 0 and sets *used; SL_EAGAIN when the bytes end before the object
 * does (more may come); SL_E2BIG when the object is certainly larger than
 * max_bytes (a declared length or count already proves it); SL_EPROTO on
 * bytes that are not msgpack (0xc1, nesting over SL_CODEC_MAX_DEPTH).
 * err may be NULL. */
int sl_codec_skip(const uint8_t *p, size_t len, size_t max_bytes, size_t *used,
                  struct sl_codec_error *err);

/* Where a walk of one object that ran out of bytes stopped, so the next
 * walk of the same object with more bytes behind it goes on from there:
 * an object that arrives in many reads is walked once, not once per read
 * (a 1 MiB event of one-byte values trickled in small reads cost the loop
 * a core). Zero it before the first walk of an object. */
struct sl_codec_walk {
  size_t pos;   /* bytes walked; 0: none yet */
  uint64_t cur, owed;
  int depth;
  uint64_t left[SL_CODEC_MAX_DEPTH];
};

/* sl_codec_skip that resumes w: p must start with the same object (and
 * the same bytes) as at the walk that filled w, with len no smaller, and
 * max_bytes the same (a smaller one still holds). On SL_EAGAIN w holds
 * where it stopped; on any other result w->pos is 0, ready for the next
 * object. */
int sl_codec_skip_walk(const uint8_t *p, size_t len, size_t max_bytes,
                       size_t *used, struct sl_codec_error *err,
                       struct sl_codec_walk *w);

/* sl_codec_skip for a payload, which nests one level inside its event's
 * map: what it accepts is a payload the native input takes in an event
 * (a payload 64 deep makes an event 65 deep, which it refuses). */
int sl_codec_skip_payload(const uint8_t *p, size_t len, size_t max_bytes,
                          size_t *used, struct sl_codec_error *err);

/* An event's fields, as spans into the bytes it was parsed from. */
struct sl_event_view {
  struct sl_str id, topic, key; /* p == NULL when absent */
  int has_time;
  int64_t time;
  const uint8_t *headers; /* the raw msgpack map, NULL when absent */
  uint32_t headers_len;
  uint32_t headers_count;
  const uint8_t *payload; /* the raw msgpack value, NULL when absent */
  uint32_t payload_len;
};

/* Parse one complete event map (len bytes, as measured by sl_codec_skip).
 * Keys must be strings; known keys: id (str), topic (str, required), key
 * (str), time (int), headers (map str->str), payload (any). An unknown key,
 * a duplicate key, a wrong type or a missing topic is an error.
 * Returns 0 or SL_EPROTO with err filled (offset of the bad value). */
int sl_codec_parse_event(const uint8_t *p, size_t len, struct sl_event_view *v,
                         struct sl_codec_error *err);

/* The same for bytes that are exactly one object sl_codec_skip accepted
 * (its *used): a payload that is the last field is not walked again. */
int sl_codec_parse_measured(const uint8_t *p, size_t len,
                            struct sl_event_view *v,
                            struct sl_codec_error *err);

/* The first event of a stream of len bytes, parsed and measured in one
 * walk: 0 with *used its size when sl_codec_skip(p, len, max) would give
 * that size and sl_codec_parse_measured would accept those bytes with
 * this view. Otherwise (more bytes needed, too large, not msgpack, not an
 * event) non-zero, and the caller takes those two steps for the exact
 * answer and error. */
int sl_codec_parse_stream(const uint8_t *p, size_t len, size_t max,
                          size_t *used, struct sl_event_view *v);

/* Find a string key in a raw msgpack map (as validated above). Sets the
 * value span and returns 0, or SL_ENOENT. */
int sl_codec_map_find(const uint8_t *map, size_t len, const char *key,
                      size_t keylen, const uint8_t **val, size_t *vallen);

/* Write the canonical event map: id, topic, key (when key.p), time,
 * headers (when non-NULL; the raw map bytes copied), payload (when
 * non-NULL; raw bytes copied). Returns 0 or SL_ENOMEM. On return the
 * offsets of the topic, key and id strings' bytes within out (relative to
 * the start of this event) are stored in offs[0..2] (0 when absent). */
int sl_codec_write_event(struct sl_buf *out, struct sl_str id,
                         struct sl_str topic, struct sl_str key, int64_t time,
                         const uint8_t *headers, size_t headers_len,
                         const uint8_t *payload, size_t payload_len,
                         uint32_t offs[3]);

/* Render one msgpack value as JSON. Strings are escaped (invalid UTF-8
 * as \ufffd); integers print exactly; float64 with 17 digits; NaN and
 * infinities as {"$float":"nan"|"inf"|"-inf"}; float32 as
 * {"$float32":<9 digits>} (or "nan"|"inf"|"-inf"); binary as
 * {"$bin":"<base64>"}; ext as {"$ext":[type,"<base64>"]}; a map with a
 * key that is not a string, or a single key that is a marker name, as
 * {"$map":[[k,v],...]}. Input must be valid
 * (already measured by sl_codec_skip). Returns 0, SL_ENOMEM or SL_EPROTO.
 * sl_json_to_msgpack reads every one of these markers back, so smallest-
 * encoded msgpack survives msgpack -> JSON -> msgpack byte for byte. */
int sl_codec_to_json(const uint8_t *p, size_t len, struct sl_buf *out);

/* 1 when s is the key of a JSON type marker ($bin, $float, $float32, $ext,
 * $map): the one list the writer above and sl_json_to_msgpack share. */
int sl_codec_json_marker(const char *s, size_t n);

/* Append s (n bytes) as a JSON string, escaped as sl_codec_to_json does.
 * Returns 0 or SL_ENOMEM. */
int sl_codec_json_str(struct sl_buf *out, const void *s, size_t n);

/* Read the msgpack str at p: its bytes in *s, and the bytes it takes in
 * *used (may be NULL). Returns 0, or SL_EPROTO when p is not a complete
 * str. */
int sl_codec_read_str(const uint8_t *p, size_t len, struct sl_str *s,
                      size_t *used);

/* The same for a str or a bin. */
int sl_codec_read_strbin(const uint8_t *p, size_t len, struct sl_str *s,
                         size_t *used);

/* Read the header of the msgpack map at p: its pair count and the header's
 * size. Returns 0, or SL_EPROTO when p does not start a map. */
int sl_codec_read_map(const uint8_t *p, size_t len, uint32_t *count,
                      size_t *used);
/* Read the msgpack unsigned integer at p (positive fixint, uint 8..64).
 * Returns 0, or SL_EPROTO for any other type or a short buffer. */
int sl_codec_read_uint(const uint8_t *p, size_t len, uint64_t *v,
                       size_t *used);

/* Read any msgpack int or float at p as a double. Returns 0, or SL_EPROTO
 * when p does not start a complete number. */
int sl_codec_read_number(const uint8_t *p, size_t len, double *v,
                         size_t *used);

/* Read the msgpack integer at p (any int format) as an int64. Returns 0, or
 * SL_EPROTO for another type, a short buffer or a uint64 over INT64_MAX. */
int sl_codec_read_int(const uint8_t *p, size_t len, int64_t *v, size_t *used);

/* Read the msgpack bool (true, false) or nil at p. Returns 0, or
 * SL_EPROTO for another type or a short buffer. */
int sl_codec_read_bool(const uint8_t *p, size_t len, int *v, size_t *used);
int sl_codec_read_nil(const uint8_t *p, size_t len, size_t *used);

/* Read the msgpack ext at p (fixext 1..16, ext 8/16/32): its type, and its
 * data's bytes in *s. Returns 0, or SL_EPROTO when p is not a complete ext. */
int sl_codec_read_ext(const uint8_t *p, size_t len, int8_t *type,
                      struct sl_str *s, size_t *used);

/* The same as sl_codec_read_map for an array header. */
int sl_codec_read_array(const uint8_t *p, size_t len, uint32_t *count,
                        size_t *used);

/* Raw writers for a caller that sized its room already (the event
 * builder): the bytes msgpack-c's packer writes, at d. Return the bytes
 * written: an integer takes at most 9, a str or map header at most 5. */
size_t sl_codec_pack_int(uint8_t *d, int64_t v);
size_t sl_codec_pack_strhdr(uint8_t *d, size_t n);
size_t sl_codec_pack_maphdr(uint8_t *d, uint32_t n);
size_t sl_codec_pack_uint(uint8_t *d, uint64_t v);
size_t sl_codec_pack_double(uint8_t *d, double v);

/* msgpack writers (smallest encoding). Return 0 or SL_ENOMEM. */
int sl_codec_put_nil(struct sl_buf *b);
int sl_codec_put_bool(struct sl_buf *b, int v);
int sl_codec_put_int(struct sl_buf *b, int64_t v);
int sl_codec_put_uint(struct sl_buf *b, uint64_t v);
int sl_codec_put_double(struct sl_buf *b, double v);
int sl_codec_put_float(struct sl_buf *b, float v); /* float32 */
int sl_codec_put_str(struct sl_buf *b, const char *s, size_t n);
int sl_codec_put_bin(struct sl_buf *b, const void *s, size_t n);
int sl_codec_put_ext(struct sl_buf *b, int8_t type, const void *s, size_t n);
int sl_codec_put_array(struct sl_buf *b, uint32_t n);
int sl_codec_put_map(struct sl_buf *b, uint32_t n);

/* For a writer that learns a container's count only at its end: the
 * container was opened with 5 placeholder bytes at b->data[at], and
 * everything after them up to b->len is its body. Writes the smallest map
 * (is_map) or array header for n there and moves the body down over the
 * bytes the header does not need. Cannot fail. */
void sl_codec_patch_header(struct sl_buf *b, size_t at, int is_map,
                           uint32_t n);

/* Is the value at p (len bytes) a map or an array? The msgpack true? */
int sl_codec_is_container(const uint8_t *p, size_t len);
int sl_codec_is_true(const uint8_t *p, size_t len);

/* One msgpack item, read by sl_codec_read_item: what the Lua side (the
 * payload proxies, Lua <-> msgpack) walks values with. */
enum sl_mp_type {
  SL_MP_NIL, SL_MP_BOOL, SL_MP_INT, SL_MP_UINT, SL_MP_F32, SL_MP_F64,
  SL_MP_STR, SL_MP_BIN, SL_MP_ARR, SL_MP_MAP, SL_MP_EXT, SL_MP_BAD
};

struct sl_codec_item {
  enum sl_mp_type t;
  int b;
  int64_t i;
  uint64_t u;
  double d;
  float f;
  const uint8_t *s; /* body of str, bin, ext */
  uint32_t n;       /* body length, or element count */
  int8_t ext;
};

/* Read one header (and the body of a str/bin/ext) at *pp. Returns 0 and
 * advances, or -1 when the bytes end or are not msgpack. Container counts
 * are checked against the bytes left (every element takes a byte). */
int sl_codec_read_item(const uint8_t **pp, const uint8_t *end,
                       struct sl_codec_item *it);

#endif
