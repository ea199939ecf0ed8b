/* forward.c - the Fluent forward protocol v1 on the wire: frames, entries,
 * gzip with a bound on what inflates, shared-key digests. Every read goes
 * through the codec walker against the bytes measured before; nothing is
 * trusted before it is checked. No state. */
#include "forward.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

static int fail(struct sl_codec_error *err, size_t offset, const char *msg) {
  if (err) {
    err->offset = offset;
    snprintf(err->msg, sizeof(err->msg), "%s", msg);
  }
  return SL_EPROTO;
}

/* The option map: chunk (str), size (uint), compressed ("gzip", "text").
 * Other keys are ignored, as the spec lets senders add them. */
static int parse_option(const uint8_t *p, size_t len,
                        struct sl_forward_frame *f, size_t base,
                        struct sl_codec_error *err) {
  const uint8_t *v;
  size_t vlen, used;
  uint32_t n;
  struct sl_str s;
  if (sl_codec_read_nil(p, len, &used) == 0)
    return 0; /* nil: no options */
  if (sl_codec_read_map(p, len, &n, &used) != 0)
    return fail(err, base, "option is not a map");
  if (sl_codec_map_find(p, len, "chunk", 5, &v, &vlen) == 0) {
    if (sl_codec_read_str(v, vlen, &f->chunk, &used) != 0 || f->chunk.len == 0)
      return fail(err, base, "option chunk is not a non-empty string");
  }
  if (sl_codec_map_find(p, len, "size", 4, &v, &vlen) == 0) {
    if (sl_codec_read_uint(v, vlen, &f->size, &used) != 0)
      return fail(err, base, "option size is not an unsigned integer");
    f->has_size = 1;
  }
  if (sl_codec_map_find(p, len, "compressed", 10, &v, &vlen) == 0) {
    if (sl_codec_read_str(v, vlen, &s, &used) != 0)
      return fail(err, base, "option compressed is not a string");
    if (s.len == 4 && memcmp(s.p, "gzip", 4) == 0)
      f->gzip = 1;
    else if (!(s.len == 4 && memcmp(s.p, "text", 4) == 0))
      return fail(err, base, "option compressed is neither gzip nor text");
  }
  return 0;
}

int sl_forward_parse_frame(const uint8_t *p, size_t len,
                           struct sl_forward_frame *f,
                           struct sl_codec_error *err) {
  uint32_t n, count;
  size_t pos, used, at;
  struct sl_str s;
  memset(f, 0, sizeof(*f));
  if (sl_codec_read_array(p, len, &n, &pos) != 0)
    return fail(err, 0, "frame is not an array");
  if (n < 2 || n > 4)
    return fail(err, 0, "frame is not an array of 2 to 4 elements");
  if (sl_codec_read_str(p + pos, len - pos, &f->tag, &used) != 0)
    return fail(err, pos, "tag is not a string");
  if (f->tag.len == 0)
    return fail(err, pos, "tag is empty");
  pos += used;
  at = pos;
  if (sl_codec_read_array(p + pos, len - pos, &count, &used) == 0) {
    if (n > 3)
      return fail(err, 0, "forward mode frame has more than 3 elements");
    f->mode = SL_FORWARD_FORWARD;
    f->count = count;
    f->entries = p + pos + used;
    if (sl_codec_skip(p + pos, len - pos, len - pos, &used, NULL) != 0)
      return fail(err, pos, "entries are not complete");
    f->entries_len = used - (size_t)(f->entries - (p + pos));
    pos += used;
  } else if (sl_codec_read_strbin(p + pos, len - pos, &s, &used) == 0) {
    if (n > 3)
      return fail(err, 0, "packed forward frame has more than 3 elements");
    f->mode = SL_FORWARD_PACKED;
    f->entries = (const uint8_t *)s.p;
    f->entries_len = s.len;
    pos += used;
  } else {
    if (n < 3)
      return fail(err, at, "message mode frame lacks its record");
    f->mode = SL_FORWARD_MESSAGE;
    f->count = 1;
    f->entries = p + pos;
    for (count = 0; count < 2; count++) {
      if (sl_codec_skip(p + pos, len - pos, len - pos, &used, NULL) != 0)
        return fail(err, pos, "message is not complete");
      pos += used;
    }
    f->entries_len = pos - at;
  }
  if (pos < len) {
    if (parse_option(p + pos, len - pos, f, pos, err) != 0)
      return SL_EPROTO;
  }
  if (f->gzip && f->mode != SL_FORWARD_PACKED)
    return fail(err, 0, "compressed is set on a frame that is not packed");
  return 0;
}

/* seconds and nanoseconds to ns since the epoch, refusing what overflows */
static int to_ns(int64_t sec, int64_t nsec, int64_t *out) {
  if (sec > INT64_MAX / 1000000000 - 1 || sec < INT64_MIN / 1000000000 + 1)
    return -1;
  *out = sec * 1000000000 + nsec;
  return 0;
}

static int read_time(const uint8_t *p, size_t len, int64_t *ns,
                     size_t *used) {
  int64_t sec;
  double d;
  int8_t type;
  struct sl_str s;
  if (sl_codec_read_int(p, len, &sec, used) == 0)
    return to_ns(sec, 0, ns);
  if (sl_codec_read_ext(p, len, &type, &s, used) == 0) {
    const uint8_t *b = (const uint8_t *)s.p;
    uint32_t hi, lo;
    if (type != 0 || s.len != 8)
      return -1;
    hi = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
         b[3];
    lo = (uint32_t)b[4] << 24 | (uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 |
         b[7];
    if (lo >= 1000000000u)
      return -1;
    return to_ns(hi, lo, ns);
  }
  if (sl_codec_read_number(p, len, &d, used) == 0) {
    if (!(d > -9.2e9 && d < 9.2e9))
      return -1; /* NaN, infinities, beyond int64 ns */
    *ns = (int64_t)(d * 1e9);
    return 0;
  }
  return -1;
}

int sl_forward_next_entry(const uint8_t *entries, size_t len, size_t *pos,
                          int wrapped, struct sl_forward_entry *e,
                          struct sl_codec_error *err) {
  size_t at = *pos, used;
  uint32_t n;
  if (at >= len)
    return fail(err, at, "entry missing");
  if (wrapped) {
    if (sl_codec_read_array(entries + at, len - at, &n, &used) != 0 || n != 2)
      return fail(err, at, "entry is not a [time, record] array");
    at += used;
  }
  if (at >= len || read_time(entries + at, len - at, &e->time, &used) != 0)
    return fail(err, at,
                "time is not an integer, an EventTime (ext 0, 8 bytes) or a "
                "float within range");
  at += used;
  if (at >= len || sl_codec_read_map(entries + at, len - at, &n, &used) != 0)
    return fail(err, at, "record is not a map");
  if (sl_codec_skip(entries + at, len - at, len - at, &used, err) != 0)
    return fail(err, at, "record is not complete");
  e->record = entries + at;
  e->record_len = used;
  *pos = at + used;
  return 0;
}

int sl_forward_gunzip(const uint8_t *in, size_t n, size_t max,
                      struct sl_buf *out) {
  z_stream z;
  int rc = Z_OK, ret = 0;
  sl_buf_reset(out);
  memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
    return SL_ENOMEM;
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)(n > UINT32_MAX ? UINT32_MAX : n);
  for (;;) {
    size_t room = 64 * 1024;
    if (out->len > max) {
      ret = SL_E2BIG;
      break;
    }
    if (sl_buf_reserve(out, room) != 0) {
      ret = SL_ENOMEM;
      break;
    }
    z.next_out = out->data + out->len;
    z.avail_out = (uInt)room;
    rc = inflate(&z, Z_NO_FLUSH);
    out->len += room - z.avail_out;
    if (rc == Z_STREAM_END) {
      if (z.avail_in == 0)
        break;
      if (inflateReset(&z) != Z_OK) { /* another member follows */
        ret = SL_EPROTO;
        break;
      }
      continue;
    }
    if (rc == Z_BUF_ERROR && z.avail_in == 0) {
      ret = SL_EPROTO; /* truncated */
      break;
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      ret = rc == Z_MEM_ERROR ? SL_ENOMEM : SL_EPROTO;
      break;
    }
  }
  inflateEnd(&z);
  if (ret == 0 && out->len > max)
    ret = SL_E2BIG;
  return ret;
}

int sl_forward_gzip(const uint8_t *in, size_t n, struct sl_buf *out) {
  z_stream z;
  uLong bound;
  int rc;
  memset(&z, 0, sizeof(z));
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK)
    return SL_ENOMEM;
  bound = deflateBound(&z, (uLong)n) + 32;
  if (sl_buf_reserve(out, bound) != 0) {
    deflateEnd(&z);
    return SL_ENOMEM;
  }
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)n;
  z.next_out = out->data + out->len;
  z.avail_out = (uInt)bound;
  rc = deflate(&z, Z_FINISH);
  if (rc == Z_STREAM_END)
    out->len += bound - z.avail_out;
  deflateEnd(&z);
  return rc == Z_STREAM_END ? 0 : SL_ENOMEM;
}

int sl_forward_digest(char out[129], const struct sl_str *parts, int n) {
  static const char hex[] = "0123456789abcdef";
  unsigned char md[64];
  unsigned int mdlen = 0, i;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha512(), NULL) == 1;
  int k;
  for (k = 0; ok && k < n; k++)
    ok = EVP_DigestUpdate(ctx, parts[k].p, parts[k].len) == 1;
  ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 64;
  EVP_MD_CTX_free(ctx);
  if (!ok)
    return SL_ENOMEM;
  for (i = 0; i < 64; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[128] = '\0';
  return 0;
}

int sl_forward_random(uint8_t out[16]) {
  return RAND_bytes(out, 16) == 1 ? 0 : SL_EIO;
}

int sl_forward_digest_equal(const char *a, const char *b, size_t n) {
  return CRYPTO_memcmp(a, b, n) == 0;
}

int sl_forward_chunk_id(char out[25]) {
  uint8_t raw[16];
  if (sl_forward_random(raw) != 0)
    return SL_EIO;
  EVP_EncodeBlock((unsigned char *)out, raw, sizeof(raw)); /* 24 + NUL */
  return 0;
}
