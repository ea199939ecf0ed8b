/* json.h - JSON text to msgpack, streaming (yajl's SAX parser), no DOM.
 * Integers stay integers (int64/uint64), other numbers become float64;
 * the markers that sl_codec_to_json writes ({"$bin":"<base64>"},
 * {"$float":"nan"}) turn back into their msgpack types, so NDJSON written by
 * sluice reads back exactly. No state between calls. */
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

#endif
