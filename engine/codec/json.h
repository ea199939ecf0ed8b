/* json.h - JSON text to msgpack, streaming (yajl's SAX parser), no DOM.
 * One value (sl_json_to_msgpack) or a batch of items: NDJSON lines, the
 * elements of an array (sl_json_items_to_msgpack).
 * The reader is RFC 8259 strict (form feed and vertical tab are not white
 * space). A number of any length is read: an integer stays exact as int64
 * or uint64 and is refused beyond them, any other number becomes the
 * nearest float64 and is refused beyond its range; each refusal names the
 * reason. Every marker sl_codec_to_json writes ({"$bin":..}, {"$float":..},
 * {"$float32":..}, {"$ext":[t,..]}, {"$map":[[k,v],..]}) turns back into its
 * msgpack type, and containers get their smallest header, so msgpack in its
 * smallest encoding survives msgpack -> JSON -> msgpack byte for byte
 * (except invalid UTF-8 in a str, which JSON carries as U+FFFD, and NaN
 * payloads). No state between calls. */
#ifndef SL_JSON_H
#define SL_JSON_H

#include <stddef.h>

#include "buf.h"

/* Convert one JSON value (the whole of p..p+n, surrounding white space
 * allowed) and append its msgpack encoding to out. Returns 0, or SL_EPROTO
 * with err holding the problem and its byte offset, or SL_ENOMEM. out is
 * unchanged on error. max_depth bounds nesting. */
int sl_json_to_msgpack(const char *p, size_t n, struct sl_buf *out,
                       char *err, size_t errlen);

/* Where a conversion stopped, for a user to read. */
struct sl_json_error {
  size_t index;  /* 0-based item that failed */
  size_t line;   /* 1-based line of the problem */
  size_t offset; /* byte offset in the text (JSON syntax errors) */
  char msg[160];
};

/* One value converted in steps of SL_JSON_STEP bytes, for a caller that
 * must check a budget between them (rules' json.decode). The reader owns
 * the parser and a copy of the text when it needs one. */
#define SL_JSON_STEP 65536
struct sl_json_reader;

/* NULL when out of memory. */
struct sl_json_reader *sl_json_reader_new(void);

/* Convert the one JSON value that fills p[0..n), appending its msgpack to
 * out, as sl_json_to_msgpack does; step(data), when not NULL, is called
 * between steps. step may not return (a Lua error): then out may hold a
 * partial value and sl_json_reader_free still cleans up. Returns 0,
 * SL_ENOMEM, or SL_EPROTO with err->offset and err->msg (yajl's text or
 * the reason a number or the nesting was refused). Once per reader. */
int sl_json_reader_run(struct sl_json_reader *r, const char *p, size_t n,
                       struct sl_buf *out, void (*step)(void *), void *data,
                       struct sl_json_error *err);

/* Free r; NULL is a no-op. */
void sl_json_reader_free(struct sl_json_reader *r);

#define SL_JSON_SPLIT_ARRAY 1 /* a top-level array's elements are the items */
#define SL_JSON_MANY 2        /* any number of top-level values (NDJSON) */

/* One converted item: out->data[off..off+len). line is where it starts.
 * Return 0 to go on; a negative code (with err->msg, index and line
 * filled) stops the conversion, which then returns that code. */
typedef int (*sl_json_item_cb)(void *data, size_t off, size_t len,
                               size_t index, size_t line,
                               struct sl_json_error *err);

/* Convert a text of several values, appending each item's msgpack to out
 * and calling cb for it once complete. Without SL_JSON_MANY the text must
 * hold exactly one value (empty text is an error); with it, values are
 * separated by white space (NDJSON; blank lines are skipped). With
 * SL_JSON_SPLIT_ARRAY a top-level array is not an item itself: each of its
 * elements is. Returns 0, SL_ENOMEM, SL_EPROTO with err filled (index,
 * line and byte offset of a syntax error), or what cb returned. out is
 * unchanged on error. */
int sl_json_items_to_msgpack(const char *p, size_t n, int flags,
                             struct sl_buf *out, sl_json_item_cb cb,
                             void *data, struct sl_json_error *err);

#endif
