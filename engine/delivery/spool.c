/* spool.c - durable FIFO of records in segment files; see spool.h.
 * Owns the files under the spool directory, the write buffer (shared with
 * sl_spool_sync under s->lock) and the read buffer. Corruption found at open
 * is moved to quarantine/ and counted, never fatal. */
#include "spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define SPOOL_HWCRC 1
#endif

#define SEG_HDR 24      /* "SLSP" u32 version, u64 first, u32 0, u32 crc */
#define REC_HDR 16      /* u32 len, u32 crc, u64 seq */
#define ACK_SLOT 32     /* "SLAK" u32 version, u64 gen, u64 ack, u32 0, crc */
#define ACK_SLOT1 512   /* the second slot sits in its own sector */
#define SEG_VERSION 1
#define ACK_VERSION 1
#define SEQ_SANE (1ull << 62) /* a seq or name beyond this is garbage */
#define SCAN_BUF (1u << 20)
#define READ_CHUNK (64u << 10)
#define QUARANTINE "quarantine"
/* Delivered space is given back by deleting segment files, so the active
 * segment rolls early once this much of it is acknowledged (clamped
 * segment_bytes/16), and is deleted at ack time once it is wholly acked and
 * at least RECLAIM_IDLE long: on disk sits the backlog plus at most about
 * one segment's acked prefix (the oldest) and RECLAIM_MAX. */
#define RESYNC_SLACK 8
/* The acked prefix of the segment holding the ack cursor is punched out
 * (FALLOC_FL_PUNCH_HOLE) in whole blocks past the first, which keeps the
 * header: at every ack once PUNCH_STEP more is acked, at once when a write
 * failed. The next open skips such a stretch in place, as it holds only
 * acknowledged records. */
#define PUNCH_BLOCK 4096u
#define PUNCH_STEP (256u << 10)
#define RECLAIM_MIN (64u << 10)
#define RECLAIM_MAX (1u << 20)
#define RECLAIM_IDLE (64u << 10)

struct sl_spool_seg {
  uint64_t first; /* seq of its first record, also its name */
  uint64_t count; /* records in it */
  uint64_t end;   /* header + records, buffered ones included */
  uint64_t punched; /* acked bytes below this are holes (from PUNCH_BLOCK) */
  uint64_t holes;   /* bytes given back that way: not counted on disk */
};

struct sl_spool_mark {
  uint64_t seq, off; /* off may carry MARK_DROPPED */
};

#define MARK_DROPPED (1ull << 63) /* sl_spool_drop: done, yet not acked */

struct sl_spool_handoff {
  int fd;
  uint64_t first;
};

/* ---- CRC32C ------------------------------------------------------------ */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  uint32_t i, k, c;

  for (i = 0; i < 256; i++) {
    c = i;
    for (k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1; /* reflected poly */
    crc_table[0][i] = c;
  }
  for (i = 0; i < 256; i++)
    for (k = 1; k < 8; k++)
      crc_table[k][i] =
          (crc_table[k - 1][i] >> 8) ^ crc_table[0][crc_table[k - 1][i] & 0xff];
}

uint32_t sl_spool_crc32c_portable(uint32_t crc, const void *p, size_t n) {
  const uint8_t *b = p;
  uint32_t c = ~crc, lo, hi;

  pthread_once(&crc_once, crc_init);
  while (n >= 8) { /* slicing by 8 */
    lo = c ^ ((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
              (uint32_t)b[3] << 24);
    hi = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 |
         (uint32_t)b[7] << 24;
    c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
        crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
        crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
        crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    b += 8;
    n -= 8;
  }
  while (n-- > 0)
    c = (c >> 8) ^ crc_table[0][(c ^ *b++) & 0xff];
  return ~c;
}

#ifdef SPOOL_HWCRC
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc,
                                                         const uint8_t *b,
                                                         size_t n) {
  uint32_t c = ~crc;
  uint64_t c64, v;

  while (n > 0 && ((uintptr_t)b & 7) != 0) {
    c = _mm_crc32_u8(c, *b++);
    n--;
  }
  c64 = c;
  while (n >= 8) {
    memcpy(&v, b, 8); /* x86 is little endian, as the format */
    c64 = _mm_crc32_u64(c64, v);
    b += 8;
    n -= 8;
  }
  c = (uint32_t)c64;
  while (n-- > 0)
    c = _mm_crc32_u8(c, *b++);
  return ~c;
}
#endif

uint32_t sl_spool_crc32c(uint32_t crc, const void *p, size_t n) {
#ifdef SPOOL_HWCRC
  if (__builtin_cpu_supports("sse4.2"))
    return crc_hw(crc, p, n);
#endif
  return sl_spool_crc32c_portable(crc, p, n);
}

/* ---- encoding ---------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p) {
  return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* The record CRC covers length and seq, so a flipped length is caught too. */
static uint32_t rec_crc_start(const uint8_t *h) {
  return sl_spool_crc32c(sl_spool_crc32c(0, h, 4), h + 8, 8);
}

static void seg_header(uint8_t *h, uint64_t first) {
  memcpy(h, "SLSP", 4);
  put32(h + 4, SEG_VERSION);
  put64(h + 8, first);
  put32(h + 16, 0);
  put32(h + 20, sl_spool_crc32c(0, h, 20));
}

static int seg_header_ok(const uint8_t *h, uint64_t first) {
  return memcmp(h, "SLSP", 4) == 0 && get32(h + 4) == SEG_VERSION &&
         get64(h + 8) == first && get32(h + 20) == sl_spool_crc32c(0, h, 20);
}

static void seg_name(char *out, size_t n, uint64_t first) {
  snprintf(out, n, "%016" PRIx64 ".seg", first);
}

/* "<16 lowercase hex>.seg" -> its first seq; 0 when not a segment name. */
static int seg_parse(const char *name, uint64_t *first) {
  uint64_t v = 0;
  int i;

  if (strlen(name) != 20 || strcmp(name + 16, ".seg") != 0)
    return 0;
  for (i = 0; i < 16; i++) {
    char c = name[i];
    if (c >= '0' && c <= '9')
      v = v << 4 | (uint64_t)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v = v << 4 | (uint64_t)(c - 'a' + 10);
    else
      return 0;
  }
  *first = v;
  return 1;
}

static SL_PRINTF(2, 3) void note(struct sl_spool_report *r, const char *fmt,
                                 ...) {
  size_t len = strlen(r->msg);
  va_list ap;

  if (len + 2 >= sizeof(r->msg))
    return;
  va_start(ap, fmt);
  vsnprintf(r->msg + len, sizeof(r->msg) - len, fmt, ap);
  va_end(ap);
  len = strlen(r->msg);
  if (len + 1 < sizeof(r->msg)) {
    r->msg[len] = '\n';
    r->msg[len + 1] = '\0';
  }
}

static int pread_full(int fd, uint8_t *p, size_t n, uint64_t off,
                      size_t *got) {
  ssize_t k;

  *got = 0;
  while (*got < n) {
    k = pread(fd, p + *got, n - *got, (off_t)(off + *got));
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      return -errno;
    if (k == 0)
      break;
    *got += (size_t)k;
  }
  return 0;
}

static int pwritev_full(int fd, struct iovec *iov, int n, uint64_t off,
                        size_t *done) {
  ssize_t k;

  *done = 0;
  while (n > 0) {
    k = pwritev(fd, iov, n, (off_t)(off + *done));
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      return -errno;
    if (k == 0)
      return SL_EIO;
    *done += (size_t)k;
    while (n > 0 && (size_t)k >= iov->iov_len) {
      k -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + k;
      iov->iov_len -= (size_t)k;
    }
  }
  return 0;
}

/* ---- quarantine -------------------------------------------------------- */

/* An unused name quarantine/<name>.<off>[.<n>].bad; 0 or SL_EIO. */
static int quarantine_name(struct sl_spool *s, const char *name, uint64_t off,
                           char *out, size_t n) {
  struct stat st;
  int i;

  if (mkdirat(s->dirfd, QUARANTINE, 0755) != 0 && errno != EEXIST)
    return -errno;
  for (i = 0; i < 1000; i++) {
    if (i == 0)
      snprintf(out, n, QUARANTINE "/%s.%" PRIu64 ".bad", name, off);
    else
      snprintf(out, n, QUARANTINE "/%s.%" PRIu64 ".%d.bad", name, off, i);
    if (fstatat(s->dirfd, out, &st, AT_SYMLINK_NOFOLLOW) != 0 &&
        errno == ENOENT)
      return 0;
  }
  return SL_EIO;
}

/* Copy bytes [off, size) of fd to quarantine. buf is scratch. The caller
 * truncates afterwards, whether or not the copy worked: a spool that
 * cannot keep the evidence still has to start. */
static void quarantine_tail(struct sl_spool *s, struct sl_spool_report *r,
                            const char *name, int fd, uint64_t off,
                            uint64_t size, uint8_t *buf, size_t cap) {
  char path[256];
  uint64_t at = off;
  size_t got, done;
  struct iovec iov;
  int qfd, err;

  err = quarantine_name(s, name, off, path, sizeof(path));
  if (err != 0)
    goto fail_name;
  qfd = openat(s->dirfd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (qfd < 0) {
    err = -errno;
    goto fail_name;
  }
  while (at < size) {
    size_t want = size - at < cap ? (size_t)(size - at) : cap;
    err = pread_full(fd, buf, want, at, &got);
    if (err == 0 && got == 0)
      err = SL_EIO;
    if (err != 0)
      break;
    iov.iov_base = buf;
    iov.iov_len = got;
    err = pwritev_full(qfd, &iov, 1, at - off, &done);
    if (err != 0)
      break;
    at += got;
  }
  if (err == 0 && fsync(qfd) != 0)
    err = -errno;
  close(qfd);
  r->quarantine_files++;
  r->quarantined_bytes += size - off;
  if (err != 0)
    note(r, "%s: copying to %s failed (%s); the bytes are dropped", name,
         path, strerror(-err));
  else
    note(r, "%s: %" PRIu64 " bytes from offset %" PRIu64 " moved to %s", name,
         size - off, off, path);
  return;

fail_name:
  r->quarantined_bytes += size - off;
  note(r, "%s: cannot write quarantine (%s); %" PRIu64 " bytes dropped", name,
       strerror(-err), size - off);
}

/* Move a whole file into quarantine. */
static void quarantine_file(struct sl_spool *s, struct sl_spool_report *r,
                            const char *name, uint64_t size) {
  char path[256];
  int err;

  err = quarantine_name(s, name, 0, path, sizeof(path));
  if (err == 0 && renameat(s->dirfd, name, s->dirfd, path) != 0)
    err = -errno;
  if (err != 0) {
    note(r, "%s: cannot move to quarantine (%s); removed", name,
         strerror(-err));
    unlinkat(s->dirfd, name, 0);
  } else {
    note(r, "%s: moved whole to %s", name, path);
  }
  r->quarantine_files++;
  r->quarantined_bytes += size;
}

/* ---- ack file ---------------------------------------------------------- */

static int ack_slot_ok(const uint8_t *b, uint64_t *gen, uint64_t *ack) {
  if (memcmp(b, "SLAK", 4) != 0 || get32(b + 4) != ACK_VERSION ||
      get32(b + 28) != sl_spool_crc32c(0, b, 28))
    return 0;
  *gen = get64(b + 8);
  *ack = get64(b + 16);
  return *ack < SEQ_SANE;
}

/* Open dir/ack and read the newest valid slot. *state: 0 no ack yet, 1 ack
 * read, -1 missing or corrupt (moved to quarantine). 0 or negative errno. */
static int ack_load(struct sl_spool *s, struct sl_spool_report *r,
                    uint64_t *ack, int *state, uint8_t *buf, size_t cap) {
  uint8_t b[ACK_SLOT1 + ACK_SLOT];
  uint64_t gen[2], val[2];
  int ok[2], err;
  size_t got;
  struct stat st;

  *ack = 0;
  *state = 0;
  s->ackfd = openat(s->dirfd, "ack", O_RDWR | O_CLOEXEC);
  if (s->ackfd < 0 && errno == ENOENT) {
    *state = -1; /* fine for a new spool; the caller decides */
    s->ackfd =
        openat(s->dirfd, "ack", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  }
  if (s->ackfd < 0)
    return -errno;
  if (fstat(s->ackfd, &st) != 0)
    return -errno;
  /* room for both slots now, so that acks, which free space, never need
   * new space on a full disk; best effort */
  if (st.st_size < ACK_SLOT1 + ACK_SLOT)
    (void)fallocate(s->ackfd, FALLOC_FL_KEEP_SIZE, 0, ACK_SLOT1 + ACK_SLOT);
  if (st.st_size == 0)
    return 0;
  memset(b, 0, sizeof(b));
  err = pread_full(s->ackfd, b, sizeof(b), 0, &got);
  ok[0] = err == 0 && got >= ACK_SLOT && ack_slot_ok(b, &gen[0], &val[0]);
  ok[1] = err == 0 && got >= sizeof(b) &&
          ack_slot_ok(b + ACK_SLOT1, &gen[1], &val[1]);
  if (ok[0] && (!ok[1] || gen[0] > gen[1])) {
    *ack = val[0];
    s->ack_gen = gen[0];
  } else if (ok[1]) {
    *ack = val[1];
    s->ack_gen = gen[1];
  } else {
    note(r, "ack: no valid slot in %lld bytes", (long long)st.st_size);
    quarantine_tail(s, r, "ack", s->ackfd, 0, (uint64_t)st.st_size, buf, cap);
    if (ftruncate(s->ackfd, 0) != 0)
      return -errno;
    *state = -1;
    return 0;
  }
  *state = 1;
  return 0;
}

/* Write the ack into the slot the last write did not use, so a torn write
 * leaves the previous value readable. */
static int ack_store(struct sl_spool *s) {
  uint8_t b[ACK_SLOT];
  uint64_t gen = s->ack_gen + 1;
  struct iovec iov = {b, sizeof(b)};
  size_t done;
  int err;

  memcpy(b, "SLAK", 4);
  put32(b + 4, ACK_VERSION);
  put64(b + 8, gen);
  put64(b + 16, s->ack_seq);
  put32(b + 24, 0);
  put32(b + 28, sl_spool_crc32c(0, b, 28));
  err = pwritev_full(s->ackfd, &iov, 1, (gen & 1) ? ACK_SLOT1 : 0, &done);
  if (err != 0)
    return err;
  s->ack_gen = gen;
  pthread_mutex_lock(&s->lock);
  s->ack_dirty = 1;
  pthread_mutex_unlock(&s->lock);
  return 0;
}

/* ---- open: find and check segments ------------------------------------ */

enum { FOUND_KEPT, FOUND_GONE };

struct found {
  uint64_t first, count, end;
  uint64_t target_off; /* offset of the record the ack cursor wants, or 0 */
  uint64_t split;      /* intact records after a bad stretch now live in
                          the segment file named by this seq, or 0 */
  int fd;
  int state;
};

/* A window of one file for scanning. */
struct scan {
  int fd;
  uint64_t size;
  uint8_t *buf;
  size_t cap;
  uint64_t woff;
  size_t wlen;
  uint64_t seq_limit; /* resync takes no run whose first seq is >= this:
                         the next segment file's name */
};

/* Bytes [off, off+n) of the file, n <= cap; NULL on a read error. */
static const uint8_t *scan_at(struct scan *sc, uint64_t off, size_t n) {
  size_t want, got;

  if (off >= sc->woff && off + n <= sc->woff + sc->wlen)
    return sc->buf + (off - sc->woff);
  want = sc->size - off < sc->cap ? (size_t)(sc->size - off) : sc->cap;
  sc->wlen = 0;
  if (pread_full(sc->fd, sc->buf, want, off, &got) != 0 || got < n)
    return NULL;
  sc->woff = off;
  sc->wlen = got;
  return sc->buf;
}

/* Walk the records of a segment whose header is good, from off where seq
 * should be. Sets f->count and returns where the good records end; *why
 * names what stopped it there. */
static uint64_t scan_records(struct scan *sc, struct found *f, uint64_t target,
                             uint64_t off, uint64_t seq, const char **why) {
  uint64_t at, left;
  const uint8_t *p;
  uint8_t h[REC_HDR];
  uint32_t len, crc;
  size_t k;

  *why = NULL;
  for (;;) {
    if (off == sc->size)
      break;
    if (sc->size - off < REC_HDR) {
      *why = "torn record header";
      break;
    }
    if ((p = scan_at(sc, off, REC_HDR)) == NULL) {
      *why = "read error";
      break;
    }
    memcpy(h, p, REC_HDR);
    len = get32(h);
    if (len > SL_SPOOL_RECORD_MAX) {
      *why = "length over the limit";
      break;
    }
    if (get64(h + 8) != seq) {
      *why = "sequence out of order";
      break;
    }
    if (sc->size - off - REC_HDR < len) {
      *why = "torn record";
      break;
    }
    crc = rec_crc_start(h);
    for (at = off + REC_HDR, left = len; left > 0; at += k, left -= k) {
      k = left < sc->cap ? (size_t)left : sc->cap;
      if ((p = scan_at(sc, at, k)) == NULL)
        break;
      crc = sl_spool_crc32c(crc, p, k);
    }
    if (left > 0) {
      *why = "read error";
      break;
    }
    if (crc != get32(h + 4)) {
      *why = "bad crc";
      break;
    }
    if (seq == target)
      f->target_off = off;
    off += REC_HDR + len;
    seq++;
  }
  f->count = seq - f->first;
  return off;
}

/* Is there a whole record at off with a seq in [lo, hi] and a good CRC?
 * *seq and *next (the offset after it) describe it when so. CRC work is
 * taken from *budget; none left: no. */
static int rec_at(struct scan *sc, uint64_t off, uint64_t lo, uint64_t hi,
                  uint64_t *seq, uint64_t *next, uint64_t *budget) {
  const uint8_t *p;
  uint8_t h[REC_HDR];
  uint64_t at, left;
  uint32_t len, crc;
  size_t k;

  if (off > sc->size || sc->size - off < REC_HDR ||
      (p = scan_at(sc, off, REC_HDR)) == NULL)
    return 0;
  memcpy(h, p, REC_HDR);
  len = get32(h);
  *seq = get64(h + 8);
  if (*seq < lo || *seq > hi || len > SL_SPOOL_RECORD_MAX ||
      sc->size - off - REC_HDR < len || *budget < len)
    return 0;
  *budget -= len;
  crc = rec_crc_start(h);
  for (at = off + REC_HDR, left = len; left > 0; at += k, left -= k) {
    k = left < sc->cap ? (size_t)left : sc->cap;
    if ((p = scan_at(sc, at, k)) == NULL)
      return 0;
    crc = sl_spool_crc32c(crc, p, k);
  }
  *next = off + REC_HDR + len;
  return crc == get32(h + 4);
}

/* A run of valid records with consecutive seqs from off, the first in
 * [lo, hi]. */
struct run {
  uint64_t at, first, last, end; /* end: offset after the last record */
  uint64_t count;
};

/* The run at off. Trusted when it holds two records or more (two CRCs and
 * two seqs in a row: random bytes never pass) or reaches the end of file. */
static int run_at(struct scan *sc, uint64_t off, uint64_t lo, uint64_t hi,
                  struct run *rn, uint64_t *budget) {
  uint64_t seq, next;

  rn->at = rn->end = off;
  rn->count = 0;
  while (rec_at(sc, rn->end, lo, hi, &seq, &next, budget)) {
    if (rn->count++ == 0)
      rn->first = seq;
    rn->last = seq;
    rn->end = next;
    lo = hi = seq + 1;
  }
  return rn->count >= 2 || (rn->count == 1 && rn->end == sc->size);
}

/* The first trusted run at or after off: a record found past k bytes of
 * junk since bad has a seq of at most expected + k/REC_HDR, as each lost
 * record took REC_HDR bytes at least, give or take RESYNC_SLACK records
 * for damage that also lost bytes. No seq from far away is believed. */
static int run_find(struct scan *sc, uint64_t off, uint64_t bad,
                    uint64_t expected, struct run *rn, uint64_t *budget) {
  uint64_t hi;

  for (; off < sc->size && sc->size - off >= REC_HDR && *budget > 0; off++) {
    if ((off & (PUNCH_BLOCK - 1)) == 0) { /* jump over holes */
      off_t d = lseek(sc->fd, (off_t)off, SEEK_DATA);
      if (d < 0 && errno == ENXIO)
        break; /* nothing but a hole to the end */
      if (d > (off_t)off)
        off = (uint64_t)d;
      if (off >= sc->size || sc->size - off < REC_HDR)
        break;
    }
    hi = expected + (off - bad) / REC_HDR + RESYNC_SLACK;
    if (hi >= sc->seq_limit) /* a file of that name exists: never replaced */
      hi = sc->seq_limit - 1;
    if (hi >= expected && run_at(sc, off, expected, hi, rn, budget))
      return 1;
  }
  return 0;
}

/* The bad stretch starting at bad, where record `expected` should be: find
 * the first intact record after it. First where the bad record's own
 * length points (a flipped payload, CRC or seq byte costs that record
 * only), then at every byte. A run found inside a payload (records forged
 * in an event) ends where the real records resume, and they repeat its
 * seqs: then the later run wins. The CRC work is bounded by a few times the
 * bytes scanned, so crafted payloads cannot make an open slow.
 * 1 with *at, *seq when found; 0 when nothing after bad is intact. */
static int resync(struct scan *sc, uint64_t bad, uint64_t expected,
                  uint64_t *at, uint64_t *seq) {
  uint64_t budget = 4 * (sc->size - bad) + (4u << 20);
  uint64_t hi = expected + RESYNC_SLACK;
  const uint8_t *p;
  struct run best, next;
  int found = 0, rounds;

  if (hi >= sc->seq_limit)
    hi = sc->seq_limit - 1;
  if (hi >= expected && run_at(sc, bad, expected, hi, &best, &budget))
    found = 1; /* intact after all: a seq gap, or a header lost whole */
  else if (sc->size - bad >= REC_HDR &&
           (p = scan_at(sc, bad, REC_HDR)) != NULL &&
           get32(p) <= SL_SPOOL_RECORD_MAX && expected + 1 < sc->seq_limit &&
           run_at(sc, bad + REC_HDR + get32(p), expected + 1, expected + 1,
                  &best, &budget) &&
           best.end == sc->size)
    found = 1; /* the common case, and nothing after it to doubt */
  if (!found && !run_find(sc, bad + 1, bad, expected, &best, &budget))
    return 0;
  for (rounds = 0; rounds < 8 && best.end < sc->size; rounds++) {
    if (!run_find(sc, best.end, bad, expected, &next, &budget) ||
        next.first > best.last)
      break; /* what follows continues it: best is real */
    best = next;
  }
  *at = best.at;
  *seq = best.first;
  return 1;
}

/* Copy bytes [from, size) of the scanned file, behind a fresh header, into
 * the segment file named by first: written under a temporary name, synced,
 * then renamed over whatever had that name (a copy an earlier, interrupted
 * open made). 0 or a negative errno; the scan window is spent. */
static int split_copy(struct sl_spool *s, struct scan *sc, uint64_t from,
                      uint64_t first) {
  char name[32], tmp[40];
  uint8_t h[SEG_HDR];
  struct iovec iov;
  uint64_t at = from;
  size_t got, done;
  int fd, err = 0;

  seg_name(name, sizeof(name), first);
  snprintf(tmp, sizeof(tmp), "%s.tmp", name);
  fd = openat(s->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return -errno;
  seg_header(h, first);
  iov.iov_base = h;
  iov.iov_len = SEG_HDR;
  err = pwritev_full(fd, &iov, 1, 0, &done);
  sc->wlen = 0;
  while (err == 0 && at < sc->size) {
    size_t want = sc->size - at < sc->cap ? (size_t)(sc->size - at) : sc->cap;
    err = pread_full(sc->fd, sc->buf, want, at, &got);
    if (err == 0 && got < want)
      err = SL_EIO;
    if (err != 0)
      break;
    iov.iov_base = sc->buf;
    iov.iov_len = got;
    err = pwritev_full(fd, &iov, 1, SEG_HDR + (at - from), &done);
    at += got;
  }
  if (err == 0 && fsync(fd) != 0)
    err = -errno;
  close(fd);
  if (err == 0 && renameat(s->dirfd, tmp, s->dirfd, name) != 0)
    err = -errno;
  if (err == 0 && fsync(s->dirfd) != 0) /* before the original shrinks */
    err = -errno;
  if (err != 0)
    unlinkat(s->dirfd, tmp, 0);
  return err;
}

/* Check one segment file. A bad stretch (bad record, or bad header) is
 * copied to quarantine and cut out: the intact records after it move to a
 * new segment file (f->split names it), the file is truncated before it
 * (or, with a bad header, removed). Only when nothing intact follows is the
 * whole rest quarantined. Leaves f->fd open when the file is kept. */
static void check_segment(struct sl_spool *s, struct sl_spool_report *r,
                          struct scan *sc, struct found *f, uint64_t target,
                          uint64_t limit) {
  char name[32];
  struct stat st;
  const char *why;
  const uint8_t *h;
  uint64_t good, at, next;
  int err;

  seg_name(name, sizeof(name), f->first);
  f->state = FOUND_GONE;
  f->count = 0;
  f->split = 0;
  f->fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
  if (f->fd < 0) {
    note(r, "%s: cannot open (%s); left alone", name, strerror(errno));
    return;
  }
  if (fstat(f->fd, &st) != 0) {
    note(r, "%s: cannot stat (%s); left alone", name, strerror(errno));
    goto fail_stat;
  }
  if (st.st_size == 0) { /* created, then killed before the header */
    unlinkat(s->dirfd, name, 0);
    note(r, "%s: empty, removed", name);
    goto fail_stat;
  }
  sc->fd = f->fd;
  sc->size = (uint64_t)st.st_size;
  sc->wlen = 0;
  sc->seq_limit = limit;
  if (f->first == 0 || f->first >= SEQ_SANE || sc->size < SEG_HDR ||
      (h = scan_at(sc, 0, SEG_HDR)) == NULL || !seg_header_ok(h, f->first)) {
    /* the name still says which seq comes first: look for the records */
    note(r, "%s: bad or torn segment header", name);
    if (f->first == 0 || f->first >= SEQ_SANE || sc->size < SEG_HDR ||
        !resync(sc, 0, f->first, &at, &next) ||
        (err = split_copy(s, sc, at, next)) != 0) {
      quarantine_file(s, r, name, sc->size);
      goto fail_stat;
    }
    note(r, "%s: records from seq %" PRIu64 " at offset %" PRIu64
            " kept in a new file",
         name, next, at);
    quarantine_tail(s, r, name, f->fd, 0, at, sc->buf, sc->cap);
    if (next != f->first)
      unlinkat(s->dirfd, name, 0); /* else the copy took its name */
    f->split = next;
    goto fail_stat;
  }
  good = scan_records(sc, f, target, SEG_HDR, f->first, &why);
  /* a stretch holding only acknowledged records (punched out, or damaged
   * where it no longer matters) is skipped in place: no reader goes there */
  while (good < sc->size && f->first + f->count < target &&
         resync(sc, good, f->first + f->count, &at, &next) && next <= target)
    good = scan_records(sc, f, target, at, next, &why);
  if (good < sc->size) {
    note(r, "%s: %s at offset %" PRIu64 " after %" PRIu64 " good records",
         name, why, good, f->count);
    if (resync(sc, good, f->first + f->count, &at, &next) &&
        (err = split_copy(s, sc, at, next)) == 0) {
      note(r, "%s: records from seq %" PRIu64 " at offset %" PRIu64
              " kept in a new file",
           name, next, at);
      f->split = next;
    } else {
      at = sc->size;
    }
    quarantine_tail(s, r, name, f->fd, good, at, sc->buf, sc->cap);
    sc->wlen = 0;
    if (ftruncate(f->fd, (off_t)good) != 0)
      note(r, "%s: truncate failed (%s)", name, strerror(errno));
  }
  f->end = good;
  f->state = FOUND_KEPT;
  return;

fail_stat:
  close(f->fd);
  f->fd = -1;
}

/* Put the file f[i] split off into the sorted list after i, unless a file
 * of that name is listed already (the copy replaced it) or is f[i]. */
static int add_split(struct found **fp, size_t *n, size_t i) {
  struct found *f = *fp, *nf;
  uint64_t first = f[i].split;
  size_t j;

  if (first == f[i].first) {
    f[i].state = FOUND_GONE;
    f[i].fd = -1;
    return 0;
  }
  for (j = i + 1; j < *n && f[j].first < first; j++)
    ;
  if (j < *n && f[j].first == first)
    return 0;
  if ((nf = realloc(f, (*n + 1) * sizeof(*f))) == NULL)
    return SL_ENOMEM;
  f = *fp = nf;
  memmove(f + j + 1, f + j, (*n - j) * sizeof(*f));
  memset(&f[j], 0, sizeof(f[j]));
  f[j].first = first;
  f[j].fd = -1;
  (*n)++;
  return 0;
}

static int cmp_found(const void *a, const void *b) {
  const struct found *x = a, *y = b;
  return x->first < y->first ? -1 : x->first > y->first;
}

/* Segment-named files in the directory; others are counted and left. */
static int list_segments(struct sl_spool *s, struct sl_spool_report *r,
                         struct found **out, size_t *n) {
  struct found *v = NULL, *nv;
  size_t cap = 0;
  struct dirent *de;
  uint64_t first;
  DIR *d;
  int fd;

  *n = 0;
  if ((fd = dup(s->dirfd)) < 0)
    return -errno;
  if ((d = fdopendir(fd)) == NULL) {
    close(fd);
    return -errno;
  }
  rewinddir(d);
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
        strcmp(de->d_name, "ack") == 0 || strcmp(de->d_name, QUARANTINE) == 0)
      continue;
    if (strlen(de->d_name) == 24 && strcmp(de->d_name + 20, ".tmp") == 0) {
      char seg[21];
      memcpy(seg, de->d_name, 20);
      seg[20] = '\0';
      if (seg_parse(seg, &first)) { /* a split copy cut short: redone */
        unlinkat(s->dirfd, de->d_name, 0);
        continue;
      }
    }
    if (!seg_parse(de->d_name, &first)) {
      r->ignored_files++;
      note(r, "%s: not a spool file, left alone", de->d_name);
      continue;
    }
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
        free(v);
        closedir(d);
        return SL_ENOMEM;
      }
      v = nv;
    }
    memset(&v[*n], 0, sizeof(v[*n]));
    v[*n].first = first;
    v[*n].fd = -1;
    (*n)++;
  }
  closedir(d);
  if (*n > 1)
    qsort(v, *n, sizeof(*v), cmp_found);
  *out = v;
  return 0;
}

/* ---- cursors and segments at run time --------------------------------- */

static int is_active(const struct sl_spool *s, uint32_t i) {
  return s->wfd >= 0 && i + 1 == s->nsegs;
}

/* Step a cursor that sits at the end of a finished segment onto the next. */
static void cursor_settle(const struct sl_spool *s, uint32_t *seg,
                          uint64_t *off, uint64_t *seq) {
  while (*seg < s->nsegs && *off >= s->segs[*seg].end && !is_active(s, *seg)) {
    (*seg)++;
    *off = SEG_HDR;
    *seq = *seg < s->nsegs ? s->segs[*seg].first : s->next_seq;
  }
}

/* Records and bytes from a cursor to the end. */
static void tally(const struct sl_spool *s, uint32_t seg, uint64_t off,
                  uint64_t seq, uint64_t *records, uint64_t *bytes) {
  uint32_t i;

  *records = *bytes = 0;
  for (i = seg; i < s->nsegs; i++) {
    *records += s->segs[i].count;
    *bytes += s->segs[i].end - SEG_HDR;
  }
  if (seg < s->nsegs) {
    *records -= seq - s->segs[seg].first;
    *bytes -= off - SEG_HDR;
  }
}

/* Forget a rolled segment's pending fdatasync; the caller holds the lock. */
static void handoff_drop(struct sl_spool *s, uint64_t first) {
  size_t i;

  for (i = 0; i < s->nhandoff; i++) {
    if (s->handoff[i].first == first) {
      close(s->handoff[i].fd);
      s->handoff[i] = s->handoff[--s->nhandoff];
      return;
    }
  }
}

/* Queue fd for the next sync; the caller holds the lock. */
static int handoff_push(struct sl_spool *s, int fd, uint64_t first) {
  struct sl_spool_handoff *h;
  size_t cap;

  if (s->nhandoff == s->caphandoff) {
    cap = s->caphandoff ? s->caphandoff * 2 : 8;
    if ((h = realloc(s->handoff, cap * sizeof(*h))) == NULL)
      return SL_ENOMEM;
    s->handoff = h;
    s->caphandoff = cap;
  }
  s->handoff[s->nhandoff].fd = fd;
  s->handoff[s->nhandoff].first = first;
  s->nhandoff++;
  return 0;
}

/* Remove the oldest n segments (fully acknowledged, none active). */
static void drop_front(struct sl_spool *s, uint32_t n) {
  char name[32];
  uint32_t i;

  for (i = 0; i < n; i++) {
    struct sl_spool_seg *g = &s->segs[i];
    seg_name(name, sizeof(name), g->first);
    pthread_mutex_lock(&s->lock);
    handoff_drop(s, g->first); /* acked: no need to make it durable */
    s->dir_dirty = 1;
    pthread_mutex_unlock(&s->lock);
    unlinkat(s->dirfd, name, 0); /* on failure the next init removes it */
    if (s->rfd >= 0 && s->rfd_first == g->first) {
      close(s->rfd);
      s->rfd = -1;
    }
    s->disk_bytes -= g->end - g->holes;
  }
  memmove(s->segs, s->segs + n, (s->nsegs - n) * sizeof(*s->segs));
  s->nsegs -= n;
  s->aseg -= n;
  s->rseg -= n;
}

static int roll(struct sl_spool *s);

/* The longest prefix of the first n bytes of the write buffer that ends at
 * a record boundary. The buffer holds the segment header when woff is 0,
 * then whole records. */
static size_t whole_records(const struct sl_spool *s, size_t n,
                            uint64_t *behind) {
  size_t at = s->woff == 0 ? SEG_HDR : 0, end = 0, rec;

  *behind = 0; /* records in the buffer past the prefix */
  if (n < at)
    n = 0;
  while (at + REC_HDR <= s->wbuf.len) {
    rec = REC_HDR + (size_t)get32(s->wbuf.data + at);
    if (at + rec <= n)
      end = at + rec;
    else
      (*behind)++;
    at += rec;
  }
  return n == 0 ? 0 : end ? end : (s->woff == 0 ? SEG_HDR : 0);
}

/* Writes fail (disk full) and the active segment, the only one left, is
 * acknowledged up to what is written: move the buffered records to a new
 * segment and delete the old file, so the acks give space back. Without
 * this the spool would wait for space only its own acked bytes hold.
 * Best effort: 1 when done; 0 and nothing changed otherwise. */
static int detach_buffered(struct sl_spool *s) {
  struct sl_spool_seg *g = &s->segs[0];
  uint64_t first = s->aseq, oldwoff;
  char name[32], oldname[32];
  int fd;

  seg_name(name, sizeof(name), first);
  seg_name(oldname, sizeof(oldname), g->first);
  fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return 0;
  pthread_mutex_lock(&s->lock);
  if (!s->write_failed || s->woff != s->aoff || s->wbuf.len == 0 ||
      sl_buf_reserve(&s->wbuf, SEG_HDR) != 0) {
    pthread_mutex_unlock(&s->lock);
    close(fd);
    unlinkat(s->dirfd, name, 0);
    return 0;
  }
  memmove(s->wbuf.data + SEG_HDR, s->wbuf.data, s->wbuf.len);
  seg_header(s->wbuf.data, first);
  s->wbuf.len += SEG_HDR;
  oldwoff = s->woff;
  close(s->wfd);
  s->wfd = fd;
  s->woff = 0;
  s->dir_dirty = 1;
  pthread_mutex_unlock(&s->lock);
  unlinkat(s->dirfd, oldname, 0);
  if (s->rfd >= 0 && s->rfd_first == g->first) {
    close(s->rfd);
    s->rfd = -1;
  }
  s->disk_bytes -= g->end - g->holes;
  g->count -= first - g->first;
  g->end = SEG_HDR + (g->end - oldwoff);
  g->first = first;
  g->punched = g->holes = 0;
  s->disk_bytes += g->end;
  s->aseg = s->rseg = 0;
  s->aoff = s->roff = SEG_HDR;
  s->aseq = s->rseq = first;
  return 1;
}

/* Give back the acknowledged prefix of the segment holding the ack cursor:
 * all of it when force, else once PUNCH_STEP more is acked. Best effort: a
 * file system that cannot punch leaves the bytes (they go with the file). */
static int punch_acked(struct sl_spool *s, int force) {
  struct sl_spool_seg *g;
  uint64_t from, to;
  char name[32];
  int fd, rc;

  if (s->no_punch || s->aseg >= s->nsegs)
    return 0;
  g = &s->segs[s->aseg];
  to = s->aoff & ~(uint64_t)(PUNCH_BLOCK - 1);
  from = g->punched > PUNCH_BLOCK ? g->punched : PUNCH_BLOCK;
  if (to <= from || (!force && to - from < PUNCH_STEP))
    return 0;
  if (is_active(s, s->aseg)) {
    fd = s->wfd; /* the sync thread only dups it */
  } else {
    seg_name(name, sizeof(name), g->first);
    if ((fd = openat(s->dirfd, name, O_WRONLY | O_CLOEXEC)) < 0)
      return 0;
  }
  rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)from,
                 (off_t)(to - from));
  if (rc != 0 && (errno == EOPNOTSUPP || errno == ENOSYS))
    s->no_punch = 1;
  if (fd != s->wfd)
    close(fd);
  if (rc != 0)
    return 0;
  g->punched = to;
  g->holes += to - from;
  s->disk_bytes -= to - from;
  return 1;
}

/* After a failed write: when the active segment is the only one and is
 * acknowledged up to what was written, detach the buffered records (from
 * an ack, or from the flush that keeps failing when the acks came first). */
static int reclaim_stuck(struct sl_spool *s) {
  return s->nsegs == 1 && is_active(s, 0) && s->aoff > SEG_HDR &&
         s->rseq == s->aseq && s->aoff < s->segs[0].end &&
         detach_buffered(s); /* checks the write state under the lock */
}

/* Delete the active segment, the only one left and wholly acknowledged,
 * so its space comes back now rather than at the next roll. Buffered bytes
 * of it are acked: dropped. A roll does it, leaving an empty segment whose
 * name keeps next_seq on disk (the ack file is not synced yet); failing
 * that (no fd), the file just goes and the next append starts one. */
static void drop_active(struct sl_spool *s) {
  struct sl_spool_seg *g;
  char name[32];

  pthread_mutex_lock(&s->lock);
  sl_buf_reset(&s->wbuf);
  s->flushed_seq = s->last_seq;
  pthread_mutex_unlock(&s->lock);
  if (roll(s) == 0)
    return;
  g = &s->segs[0];
  seg_name(name, sizeof(name), g->first);
  pthread_mutex_lock(&s->lock);
  close(s->wfd);
  s->wfd = -1;
  s->woff = 0;
  s->flushed_seq = s->last_seq;
  s->dir_dirty = 1;
  pthread_mutex_unlock(&s->lock);
  unlinkat(s->dirfd, name, 0); /* on failure the next init removes it */
  if (s->rfd >= 0 && s->rfd_first == g->first) {
    close(s->rfd);
    s->rfd = -1;
  }
  s->disk_bytes -= g->end - g->holes;
  s->nsegs = 0;
  s->aseg = s->rseg = 0;
  s->aoff = s->roff = SEG_HDR;
  s->aseq = s->rseq = s->next_seq;
}

/* Write the buffer to the active segment; the caller holds the lock. On
 * error what was written is dropped from the buffer, the rest stays. */
static int flush_locked(struct sl_spool *s) {
  struct iovec iov;
  size_t done;
  int err;

  if (s->wbuf.len == 0)
    return 0;
  iov.iov_base = s->wbuf.data;
  iov.iov_len = s->wbuf.len;
  err = pwritev_full(s->wfd, &iov, 1, s->woff, &done);
  if (err != 0) {
    /* keep the file at a record boundary: the torn record's bytes are
     * written again from woff by the retry (or cut off at the next open),
     * and the buffer still holds whole records, which detach can move */
    uint64_t behind;
    done = whole_records(s, done, &behind);
    s->flushed_seq = s->last_seq - behind;
    s->write_errors++;
    s->write_failed = 1;
  } else {
    s->flushed_seq = s->last_seq; /* the buffer held everything up to it */
    s->write_failed = 0;
  }
  s->woff += done;
  sl_buf_consume(&s->wbuf, done);
  return err;
}

/* Start a new segment at next_seq. A fully acknowledged active segment is
 * deleted instead of being handed to sync. */
static int roll(struct sl_spool *s) {
  struct sl_spool_seg *old = s->wfd >= 0 ? &s->segs[s->nsegs - 1] : NULL;
  int drop = old && s->aseg + 1 == s->nsegs && s->aoff >= old->end;
  struct sl_spool_seg *g;
  uint8_t h[SEG_HDR];
  char name[32];
  int fd, err;

  if (s->nsegs == s->capsegs) {
    uint32_t cap = s->capsegs ? s->capsegs * 2 : 8;
    g = realloc(s->segs, cap * sizeof(*g));
    if (g == NULL)
      return SL_ENOMEM;
    s->segs = g;
    s->capsegs = cap;
    old = s->wfd >= 0 ? &s->segs[s->nsegs - 1] : NULL;
  }
  pthread_mutex_lock(&s->lock);
  err = s->wfd >= 0 ? flush_locked(s) : 0;
  pthread_mutex_unlock(&s->lock);
  if (err != 0)
    return err;

  seg_name(name, sizeof(name), s->next_seq);
  fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    err = -errno;
    pthread_mutex_lock(&s->lock);
    s->write_errors++;
    pthread_mutex_unlock(&s->lock);
    return err;
  }
  seg_header(h, s->next_seq);

  pthread_mutex_lock(&s->lock);
  if (old != NULL && !drop && handoff_push(s, s->wfd, old->first) != 0) {
    pthread_mutex_unlock(&s->lock);
    err = SL_ENOMEM;
    goto fail_handoff;
  }
  if (s->wbuf.len != 0 || sl_buf_append(&s->wbuf, h, SEG_HDR) != 0) {
    /* flushed above and reserved at init: neither can happen */
    if (old != NULL && !drop)
      s->nhandoff--;
    pthread_mutex_unlock(&s->lock);
    err = SL_ENOMEM;
    goto fail_handoff;
  }
  if (old != NULL && drop)
    close(s->wfd);
  s->wfd = fd;
  s->woff = 0;
  s->dir_dirty = 1;
  pthread_mutex_unlock(&s->lock);

  if (drop) {
    char oldname[32];
    seg_name(oldname, sizeof(oldname), old->first);
    unlinkat(s->dirfd, oldname, 0);
    if (s->rfd >= 0 && s->rfd_first == old->first) {
      close(s->rfd);
      s->rfd = -1;
    }
    s->disk_bytes -= old->end - old->holes;
    s->nsegs--;
  }
  g = &s->segs[s->nsegs++];
  g->first = s->next_seq;
  g->count = 0;
  g->end = SEG_HDR;
  g->punched = g->holes = 0;
  s->disk_bytes += SEG_HDR;
  /* a cursor past every segment (or on the deleted one) now points at the
   * start of this one */
  if (s->aseg + 1 >= s->nsegs) {
    s->aseg = s->nsegs - 1;
    s->aoff = SEG_HDR;
    s->aseq = g->first;
  }
  if (s->rseg + 1 >= s->nsegs) {
    s->rseg = s->nsegs - 1;
    s->roff = SEG_HDR;
    s->rseq = g->first;
  }
  return 0;

fail_handoff:
  close(fd);
  unlinkat(s->dirfd, name, 0);
  return err;
}

/* No memory to hand fd to the next sync: sync it here and close it, so a
 * later sync never claims its records durable unsynced. Rare; blocks the
 * loop and appends for one fdatasync. The caller holds the lock. */
static void sync_now_locked(struct sl_spool *s, int fd) {
  if (fdatasync(fd) != 0) {
    s->sync_failed = 1; /* as a failed sync: the promise is lost */
    s->fsync_errors++;
  }
  close(fd);
}

/* A record in segment i at off (expected seq) is bad while reading: the
 * segment ends there for this run, and the active one stops taking
 * appends (they would land behind the bad bytes). */
static void cut(struct sl_spool *s, uint32_t i, uint64_t off, uint64_t seq) {
  struct sl_spool_seg *g = &s->segs[i];

  s->lost_records += g->first + g->count - seq;
  s->quarantined_records += g->first + g->count - seq;
  s->quarantined_bytes += g->end - off;
  g->count = seq - g->first;
  s->disk_bytes -= g->end - off;
  g->end = off;
  if (is_active(s, i)) {
    pthread_mutex_lock(&s->lock);
    sl_buf_reset(&s->wbuf); /* all of it lies behind the cut */
    if (handoff_push(s, s->wfd, g->first) != 0)
      sync_now_locked(s, s->wfd);
    s->wfd = -1;
    pthread_mutex_unlock(&s->lock);
  }
}

/* A record in segment i at off (expected seq) is bad while reading (the
 * disk changed under us): as at open, move the intact records after the
 * bad stretch to a new segment file and quarantine the stretch, so the
 * corruption costs the bad records only. 0 when done; nonzero when it
 * could not be (the caller cuts the segment instead). */
static int repair(struct sl_spool *s, uint32_t i, uint64_t off, uint64_t seq) {
  struct sl_spool_report scratch;
  struct sl_spool_seg *g;
  struct scan sc;
  struct stat st;
  char name[32], nname[32];
  uint64_t at, nseq, old_end, old_last;
  int fd = -1, nfd = -1, err = SL_EIO, active = is_active(s, i);

  memset(&sc, 0, sizeof(sc));
  memset(&scratch, 0, sizeof(scratch));
  if (active) { /* the scan must see every record of the segment */
    pthread_mutex_lock(&s->lock);
    err = flush_locked(s);
    if (err == 0 && s->wbuf.len > 0)
      err = SL_EIO;
    pthread_mutex_unlock(&s->lock);
    if (err != 0)
      return err;
  }
  if (s->nsegs == s->capsegs) {
    uint32_t cap = s->capsegs * 2;
    struct sl_spool_seg *v = realloc(s->segs, cap * sizeof(*v));
    if (v == NULL)
      return SL_ENOMEM;
    s->segs = v;
    s->capsegs = cap;
  }
  g = &s->segs[i];
  seg_name(name, sizeof(name), g->first);
  if ((fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC)) < 0 ||
      fstat(fd, &st) != 0)
    goto fail;
  sc.fd = fd;
  sc.size = (uint64_t)st.st_size < g->end ? (uint64_t)st.st_size : g->end;
  sc.cap = READ_CHUNK;
  sc.seq_limit = g->first + g->count; /* its own records only */
  err = SL_ENOMEM;
  if ((sc.buf = malloc(sc.cap)) == NULL)
    goto fail;
  err = SL_EIO;
  if (off >= sc.size || !resync(&sc, off, seq, &at, &nseq) ||
      nseq == g->first || nseq >= g->first + g->count)
    goto fail;
  if ((err = split_copy(s, &sc, at, nseq)) != 0)
    goto fail;
  seg_name(nname, sizeof(nname), nseq);
  if (active &&
      (nfd = openat(s->dirfd, nname, O_RDWR | O_CLOEXEC)) < 0) {
    err = -errno;
    unlinkat(s->dirfd, nname, 0);
    goto fail;
  }
  quarantine_tail(s, &scratch, name, fd, off, at, sc.buf, sc.cap);
  if (ftruncate(fd, (off_t)off) != 0) {
    /* the bad bytes stay: the next open repairs this file again, and
     * its copy replaces the one made here */
  }

  old_end = g->end;
  old_last = g->first + g->count;
  memmove(s->segs + i + 2, s->segs + i + 1,
          (s->nsegs - i - 1) * sizeof(*s->segs));
  s->nsegs++;
  g = &s->segs[i];
  g[1].first = nseq;
  g[1].count = old_last - nseq;
  g[1].end = SEG_HDR + (old_end - at);
  g[1].punched = g[1].holes = 0;
  g->count = seq - g->first;
  g->end = off;
  s->disk_bytes = s->disk_bytes - (old_end - off) + g[1].end;
  s->lost_records += nseq - seq;
  s->quarantined_records += nseq - seq;
  s->quarantined_bytes += at - off;
  if (s->aseg > i)
    s->aseg++;
  if (s->rseg > i)
    s->rseg++;
  if (active) { /* appends continue after the copied records */
    pthread_mutex_lock(&s->lock);
    if (handoff_push(s, s->wfd, g->first) != 0)
      sync_now_locked(s, s->wfd);
    s->wfd = nfd;
    s->woff = g[1].end;
    s->dir_dirty = 1;
    pthread_mutex_unlock(&s->lock);
  }
  free(sc.buf);
  close(fd);
  return 0;

fail:
  free(sc.buf);
  if (fd >= 0)
    close(fd);
  return err != 0 ? err : SL_EIO;
}

/* ---- init and close ---------------------------------------------------- */

/* Sizes from opts, with their defaults and bounds. */
static int spool_size(struct sl_spool *s, const struct sl_spool_opts *opts) {
  s->max_bytes = opts->max_bytes;
  s->segment_bytes = opts->segment_bytes;
  if (s->segment_bytes == 0) { /* a segment is the unit of reclaim */
    s->segment_bytes = s->max_bytes / 8;
    if (s->segment_bytes < SL_SPOOL_SEGMENT_MIN)
      s->segment_bytes = SL_SPOOL_SEGMENT_MIN;
    if (s->segment_bytes > SL_SPOOL_SEGMENT_DEFAULT)
      s->segment_bytes = SL_SPOOL_SEGMENT_DEFAULT;
  }
  if (s->segment_bytes < 64)
    return SL_EINVAL;
  if (s->segment_bytes > s->max_bytes)
    s->segment_bytes = s->max_bytes;
  s->reclaim_bytes = s->segment_bytes / 16;
  if (s->reclaim_bytes < RECLAIM_MIN)
    s->reclaim_bytes = RECLAIM_MIN;
  if (s->reclaim_bytes > RECLAIM_MAX)
    s->reclaim_bytes = RECLAIM_MAX;
  s->max_record = opts->max_record ? opts->max_record : SL_SPOOL_RECORD_DEFAULT;
  if (s->max_record > SL_SPOOL_RECORD_MAX)
    return SL_EINVAL;
  if ((uint64_t)s->max_record + SEG_HDR + REC_HDR > s->max_bytes)
    s->max_record = (uint32_t)(s->max_bytes - SEG_HDR - REC_HDR);
  s->write_buffer =
      opts->write_buffer ? opts->write_buffer : SL_SPOOL_WRITE_BUFFER_DEFAULT;
  if (s->write_buffer < SEG_HDR)
    s->write_buffer = SEG_HDR;
  return 0;
}

/* Create and open the folder and lock it for this spool alone. */
static int spool_open_dir(struct sl_spool *s, const char *dir,
                          struct sl_spool_report *r) {
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    note(r, "%s: cannot create (%s)", dir, strerror(errno));
    return -errno;
  }
  s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (s->dirfd < 0) {
    int err = -errno;
    note(r, "%s: cannot open (%s)", dir, strerror(errno));
    return err;
  }
  if (flock(s->dirfd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno == EWOULDBLOCK ? SL_EAGAIN : -errno;
    note(r, "%s: in use by another spool", dir);
    return err;
  }
  return 0;
}

/* Check each listed file in order; a file that overlaps the one before
 * it is bogus, a hole between surviving seqs is records lost to
 * corruption. Returns 0 or SL_ENOMEM; *chain_next is the seq after the
 * last chained record (0: none). */
static int spool_chain(struct sl_spool *s, struct sl_spool_report *r,
                       struct scan *sc, struct found **fp, size_t *nfp,
                       uint64_t ack, uint64_t *chain_next) {
  uint64_t prev_next = 0, target = ack + 1;
  int have_prev = 0, err;
  size_t i, redo = 0;

  for (i = 0; i < *nfp; i++) {
    struct found *f = *fp;
    /* a split never takes the name of a listed file: after a crash in
     * the middle of one, that file holds the copy already */
    check_segment(s, r, sc, &f[i], target,
                  i + 1 < *nfp ? f[i + 1].first : UINT64_MAX);
    if (f[i].split != 0 && (err = add_split(fp, nfp, i)) != 0)
      return err;
    f = *fp;
    if (f[i].split != 0 && f[i].split == f[i].first && redo != i + 1) {
      redo = i + 1; /* the new file took this name: check it once more */
      i--;
      continue;
    }
    if (have_prev && f[i].first < prev_next) {
      char name[32];
      seg_name(name, sizeof(name), f[i].first);
      if (f[i].state == FOUND_KEPT) {
        note(r, "%s: overlaps the segment before it", name);
        close(f[i].fd);
        f[i].fd = -1;
        f[i].state = FOUND_GONE;
        quarantine_file(s, r, name, f[i].end);
      }
      f[i].first = 0; /* out of the chain */
      continue;
    }
    if (f[i].first == 0 || f[i].first >= SEQ_SANE)
      continue;
    if (have_prev && f[i].first > prev_next) {
      uint64_t from = prev_next > ack + 1 ? prev_next : ack + 1;
      if (f[i].first > from) {
        r->lost_records += f[i].first - from;
        r->gaps++;
        note(r, "records %" PRIu64 "..%" PRIu64 " are lost", from,
             f[i].first - 1);
      }
    }
    prev_next = f[i].first + f[i].count;
    have_prev = 1;
  }
  *chain_next = have_prev ? prev_next : 0;
  return 0;
}

/* Keep the segments holding unacknowledged records, in order; remove the
 * fully acknowledged ones. */
static int spool_keep(struct sl_spool *s, struct found *f, size_t nf,
                      uint64_t ack) {
  size_t i;
  for (i = 0; i < nf; i++) {
    char name[32];
    if (f[i].state != FOUND_KEPT)
      continue;
    if (f[i].count == 0 || f[i].first + f[i].count - 1 <= ack) {
      seg_name(name, sizeof(name), f[i].first);
      close(f[i].fd);
      f[i].fd = -1;
      unlinkat(s->dirfd, name, 0);
      s->dir_dirty = 1;
      continue;
    }
    if (s->nsegs == s->capsegs) {
      uint32_t cap = s->capsegs ? s->capsegs * 2 : 8;
      struct sl_spool_seg *g = realloc(s->segs, cap * sizeof(*g));
      if (g == NULL)
        return SL_ENOMEM;
      s->segs = g;
      s->capsegs = cap;
    }
    s->segs[s->nsegs].first = f[i].first;
    s->segs[s->nsegs].count = f[i].count;
    s->segs[s->nsegs].end = f[i].end;
    s->segs[s->nsegs].punched = s->segs[s->nsegs].holes = 0;
    s->disk_bytes += f[i].end;
    s->nsegs++;
  }
  return 0;
}

/* The ack and read cursors at the first record after the ack; the last
 * segment keeps taking appends if it continues the sequence, the others
 * wait for the first sync (a killed process may have left their pages
 * unwritten). */
static int spool_place(struct sl_spool *s, struct found *f, size_t nf,
                       uint64_t ack) {
  size_t i;
  uint32_t k;
  s->aseg = 0;
  s->aoff = SEG_HDR;
  s->aseq = s->nsegs ? s->segs[0].first : s->next_seq;
  for (i = 0; i < nf && s->nsegs > 0; i++) {
    if (f[i].state == FOUND_KEPT && f[i].fd >= 0 &&
        f[i].first == s->segs[0].first && ack + 1 > f[i].first) {
      s->aoff = f[i].target_off;
      s->aseq = ack + 1;
    }
  }
  s->ack_seq = s->aseq - 1;
  s->rseg = s->aseg;
  s->roff = s->aoff;
  s->rseq = s->aseq;
  for (i = 0, k = 0; i < nf; i++) {
    if (f[i].state != FOUND_KEPT || f[i].fd < 0)
      continue;
    k++;
    if (k == s->nsegs && f[i].first + f[i].count == s->next_seq &&
        f[i].end < s->segment_bytes) {
      s->wfd = f[i].fd;
      s->woff = f[i].end;
    } else if (handoff_push(s, f[i].fd, f[i].first) != 0) {
      return SL_ENOMEM;
    }
    f[i].fd = -1;
  }
  return 0;
}

int sl_spool_init(struct sl_spool *s, const char *dir,
                  const struct sl_spool_opts *opts,
                  struct sl_spool_report *report) {
  struct sl_spool_report local;
  struct sl_spool_report *r = report ? report : &local;
  struct found *f = NULL;
  size_t nf = 0, i;
  struct scan sc;
  uint64_t ack = 0, chain_next = 0;
  int ack_state, err, any_seg;

  memset(s, 0, sizeof(*s));
  s->dirfd = s->ackfd = s->wfd = s->rfd = -1;
  memset(r, 0, sizeof(*r));
  memset(&sc, 0, sizeof(sc));
  if (dir == NULL || opts == NULL || opts->max_bytes < 64)
    return SL_EINVAL;
  if ((err = spool_size(s, opts)) != 0)
    return err;
  if ((err = pthread_mutex_init(&s->lock, NULL)) != 0)
    return -err;
  sl_buf_init(&s->wbuf);
  sl_buf_init(&s->rbuf);
  if ((s->dir = strdup(dir)) == NULL) {
    pthread_mutex_destroy(&s->lock);
    return SL_ENOMEM;
  }
  /* from here on sl_spool_close undoes whatever was done */

  if ((err = spool_open_dir(s, dir, r)) != 0)
    goto fail;
  if (sl_buf_reserve(&s->wbuf, s->write_buffer) != 0) {
    err = SL_ENOMEM;
    goto fail;
  }
  sc.cap = SCAN_BUF;
  if ((sc.buf = malloc(sc.cap)) == NULL) {
    err = SL_ENOMEM;
    goto fail;
  }
  if ((err = ack_load(s, r, &ack, &ack_state, sc.buf, sc.cap)) != 0) {
    note(r, "ack: cannot open (%s)", strerror(-err));
    goto fail;
  }
  if ((err = list_segments(s, r, &f, &nf)) != 0)
    goto fail;
  any_seg = nf > 0;
  if ((err = spool_chain(s, r, &sc, &f, &nf, ack, &chain_next)) != 0)
    goto fail;
  s->next_seq = 1;
  if (chain_next > s->next_seq)
    s->next_seq = chain_next;
  if (ack_state == 1 && chain_next != 0 && ack >= chain_next) {
    r->ack_beyond_end = 1;
    note(r, "ack: %" PRIu64 " is past the last record %" PRIu64
            "; nothing to replay",
         ack, chain_next - 1);
  }
  if (ack + 1 > s->next_seq)
    s->next_seq = ack + 1; /* never hand out a seq again */
  if (ack_state == -1 && any_seg) {
    r->ack_reset = 1;
    note(r, "ack: missing or corrupt; replaying from the oldest record");
  }
  if ((err = spool_keep(s, f, nf, ack)) != 0 ||
      (err = spool_place(s, f, nf, ack)) != 0)
    goto fail;
  s->last_seq = s->next_seq - 1;
  s->flushed_seq = s->last_seq;
  s->quarantined_records = r->lost_records;
  s->quarantined_bytes = r->quarantined_bytes;
  s->dir_dirty = 1;
  s->ack_dirty = 1;
  if (r->quarantine_files > 0) {
    int qfd = openat(s->dirfd, QUARANTINE, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (qfd >= 0) {
      fsync(qfd);
      close(qfd);
    }
  }

  (void)punch_acked(s, 1); /* holes an earlier run punched: count them */
  tally(s, s->aseg, s->aoff, s->aseq, &r->records, &r->bytes);
  r->segments = s->nsegs;
  r->first_seq = s->aseq;
  r->next_seq = s->next_seq;
  free(f);
  free(sc.buf);
  return 0;

fail:
  for (i = 0; i < nf; i++)
    if (f[i].fd >= 0)
      close(f[i].fd);
  free(f);
  free(sc.buf);
  sl_spool_close(s);
  return err;
}

void sl_spool_close(struct sl_spool *s) {
  size_t i;

  if (s->dir == NULL)
    return;
  if (s->wfd >= 0) {
    pthread_mutex_lock(&s->lock);
    flush_locked(s); /* best effort: close has no one to report to */
    pthread_mutex_unlock(&s->lock);
    close(s->wfd);
  }
  for (i = 0; i < s->nhandoff; i++)
    close(s->handoff[i].fd);
  if (s->rfd >= 0)
    close(s->rfd);
  if (s->ackfd >= 0)
    close(s->ackfd);
  if (s->dirfd >= 0)
    close(s->dirfd); /* drops the flock */
  free(s->handoff);
  free(s->segs);
  free(s->marks);
  free(s->rpos);
  sl_buf_close(&s->rbuf);
  sl_buf_close(&s->wbuf);
  pthread_mutex_destroy(&s->lock);
  free(s->dir);
  memset(s, 0, sizeof(*s));
  s->dirfd = s->ackfd = s->wfd = s->rfd = -1;
}

/* ---- append, flush, sync ----------------------------------------------- */

int sl_spool_append(struct sl_spool *s, const void *p, size_t n,
                    uint64_t *seq) {
  struct sl_spool_seg *act = s->wfd >= 0 ? &s->segs[s->nsegs - 1] : NULL;
  uint64_t rec = REC_HDR + (uint64_t)n, disk;
  uint8_t h[REC_HDR];
  int need_roll, early, err = 0;

  if (n > s->max_record)
    return SL_EINVAL;
  need_roll = act == NULL || (act->count > 0 && act->end + rec > s->segment_bytes);
  /* most of the active segment delivered: roll, so that the file can go as
   * soon as the rest is acked */
  early = !need_roll && s->aseg + 1 == s->nsegs &&
          s->aoff - SEG_HDR >= s->reclaim_bytes;
  for (;;) {
    disk = s->disk_bytes + rec;
    if (need_roll || early) {
      disk += SEG_HDR;
      if (act != NULL && s->aseg + 1 == s->nsegs && s->aoff >= act->end)
        disk -= act->end - act->holes; /* fully acked: roll deletes it */
    }
    if (disk <= s->max_bytes || !early)
      break;
    early = 0; /* no room for a new header: fill this one instead */
  }
  if (disk > s->max_bytes)
    return SL_E2BIG;
  need_roll |= early;
  if (need_roll && (err = roll(s)) != 0)
    return err;
  act = &s->segs[s->nsegs - 1];

  put32(h, (uint32_t)n);
  put64(h + 8, s->next_seq);
  put32(h + 4, sl_spool_crc32c(rec_crc_start(h), p, n));

  pthread_mutex_lock(&s->lock);
  if (s->wbuf.len + rec > s->write_buffer)
    err = flush_locked(s);
  if (err == 0 && rec > s->write_buffer) {
    struct iovec iov[2] = {{h, REC_HDR}, {(void *)p, n}};
    size_t done;
    err = pwritev_full(s->wfd, iov, 2, s->woff, &done);
    if (err == 0) {
      s->woff += done;
      s->flushed_seq = s->next_seq; /* the buffer was empty before it */
    } else {
      /* cut the half record off so no later open finds it; should that
       * fail too, the next write overwrites it from woff */
      s->write_errors++;
      if (done > 0 && ftruncate(s->wfd, (off_t)s->woff) != 0)
        s->write_errors++;
    }
  } else if (err == 0) { /* fits what init reserved; checked all the same */
    if (sl_buf_append(&s->wbuf, h, REC_HDR) != 0)
      err = SL_ENOMEM;
    else if (sl_buf_append(&s->wbuf, p, n) != 0) {
      s->wbuf.len -= REC_HDR;
      err = SL_ENOMEM;
    }
  }
  if (err == 0)
    s->last_seq = s->next_seq;
  pthread_mutex_unlock(&s->lock);
  if (err != 0)
    return err;

  act->count++;
  act->end += rec;
  s->disk_bytes += rec;
  s->appended++;
  if (seq != NULL)
    *seq = s->next_seq;
  s->next_seq++;
  return 0;
}

int sl_spool_flush(struct sl_spool *s) {
  int err;

  if (s->wfd < 0)
    return 0;
  pthread_mutex_lock(&s->lock);
  err = flush_locked(s);
  pthread_mutex_unlock(&s->lock);
  /* delivered bytes may fill the disk: give them back and try again */
  if (err != 0 && (punch_acked(s, 1) || reclaim_stuck(s))) {
    pthread_mutex_lock(&s->lock);
    err = flush_locked(s);
    pthread_mutex_unlock(&s->lock);
  }
  return err;
}

int sl_spool_sync(struct sl_spool *s, uint64_t *durable) {
  struct sl_spool_handoff *h = NULL;
  size_t nh = 0, i;
  int fd = -1, dir, ack, err = 0, werr = 0;
  uint64_t target;

  pthread_mutex_lock(&s->lock);
  if (s->sync_failed) {
    err = SL_EIO;
    goto out_locked;
  }
  /* a write that fails part way (the disk filled) still syncs what it
   * wrote: those records become durable, the write error is returned */
  if (s->wfd >= 0)
    werr = flush_locked(s);
  if (s->wfd >= 0 && (fd = dup(s->wfd)) < 0) {
    err = -errno;
    goto out_locked;
  }
  h = s->handoff; /* ours now; the loop thread starts a new list */
  nh = s->nhandoff;
  s->handoff = NULL;
  s->nhandoff = s->caphandoff = 0;
  dir = s->dir_dirty;
  ack = s->ack_dirty;
  s->dir_dirty = s->ack_dirty = 0;
  target = werr ? s->flushed_seq : s->last_seq;
  pthread_mutex_unlock(&s->lock);

  /* the slow part, outside the lock: appends go on meanwhile */
  for (i = 0; i < nh; i++) {
    if (fdatasync(h[i].fd) != 0 && err == 0)
      err = -errno;
    close(h[i].fd);
  }
  free(h);
  if (fd >= 0) {
    if (fdatasync(fd) != 0 && err == 0)
      err = -errno;
    close(fd);
  }
  if (ack && fdatasync(s->ackfd) != 0 && err == 0)
    err = -errno;
  if (dir && fsync(s->dirfd) != 0 && err == 0)
    err = -errno;

  pthread_mutex_lock(&s->lock);
  if (err != 0) {
    s->sync_failed = 1;
    s->fsync_errors++;
  }
  else if (target > s->durable_seq)
    s->durable_seq = target;
out_locked:
  if (durable != NULL)
    *durable = s->durable_seq;
  pthread_mutex_unlock(&s->lock);
  return err ? err : werr;
}

/* ---- read, ack, rewind ------------------------------------------------- */

/* Make file bytes [from, to) of segment rseg the tail of rbuf, where the
 * window [*wstart, *wstart + *wlen) ends. 0, 1 when the file is shorter
 * than the spool believes, or a negative errno. */
static int window_grow(struct sl_spool *s, uint64_t *wstart, uint64_t *wlen,
                       uint64_t to) {
  struct sl_spool_seg *g = &s->segs[s->rseg];
  uint64_t from = *wstart + *wlen, want;
  size_t got;
  int err;

  want = to - from < READ_CHUNK ? READ_CHUNK : to - from;
  if (want > g->end - from)
    want = g->end - from;
  if (s->rfd < 0 || s->rfd_first != g->first) {
    char name[32];
    if (s->rfd >= 0)
      close(s->rfd);
    seg_name(name, sizeof(name), g->first);
    s->rfd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (s->rfd < 0)
      return -errno;
    s->rfd_first = g->first;
  }
  if (is_active(s, s->rseg)) { /* what we want may still be buffered */
    pthread_mutex_lock(&s->lock);
    err = s->woff < from + want ? flush_locked(s) : 0;
    if (err != 0 && s->woff >= to) {
      err = 0; /* what was asked for is written: deliver it, so acks can */
      want = s->woff - from; /* free the space the flush lacks */
    }
    pthread_mutex_unlock(&s->lock);
    if (err != 0)
      return err;
  }
  if (sl_buf_reserve(&s->rbuf, (size_t)want) != 0)
    return SL_ENOMEM;
  err = pread_full(s->rfd, s->rbuf.data + s->rbuf.len, (size_t)want, from,
                   &got);
  if (err != 0)
    return err;
  s->rbuf.len += got;
  *wlen += got;
  return *wstart + *wlen < to ? 1 : 0;
}

static int mark_push(struct sl_spool *s, uint64_t seq, uint64_t off) {
  struct sl_spool_mark *m;
  size_t cap;

  if (s->mhead > 0 && s->mhead + s->mlen == s->mcap) {
    memmove(s->marks, s->marks + s->mhead, s->mlen * sizeof(*m));
    s->mhead = 0;
  }
  if (s->mhead + s->mlen == s->mcap) {
    cap = s->mcap ? s->mcap * 2 : 256;
    if ((m = realloc(s->marks, cap * sizeof(*m))) == NULL)
      return SL_ENOMEM;
    s->marks = m;
    s->mcap = cap;
  }
  s->marks[s->mhead + s->mlen].seq = seq;
  s->marks[s->mhead + s->mlen].off = off;
  s->mlen++;
  return 0;
}

/* Read records with seq <= limit; see sl_spool_read. */
static int read_upto(struct sl_spool *s, struct sl_spool_rec *out, int max,
                     size_t max_bytes, uint64_t limit) {
  uint64_t wstart = 0, wlen = 0, payload = 0;
  uint32_t wseg = UINT32_MAX;
  int n = 0, err = 0, i;

  if (max <= 0)
    return 0;
  if ((size_t)max > s->rposcap) {
    size_t *p = realloc(s->rpos, (size_t)max * sizeof(*p));
    if (p == NULL)
      return SL_ENOMEM;
    s->rpos = p;
    s->rposcap = (size_t)max;
  }
  sl_buf_reset(&s->rbuf);
  while (n < max) {
    struct sl_spool_seg *g;
    const uint8_t *h;
    uint32_t len;
    size_t base;

    cursor_settle(s, &s->rseg, &s->roff, &s->rseq);
    if (s->rseg >= s->nsegs || s->roff >= s->segs[s->rseg].end ||
        s->rseq > limit)
      break;
    g = &s->segs[s->rseg];
    if (wseg != s->rseg) { /* a new window at the end of rbuf */
      wseg = s->rseg;
      wstart = s->roff;
      wlen = 0;
    }
    base = s->rbuf.len - (size_t)wlen; /* rbuf offset of wstart */
    if (s->roff + REC_HDR > wstart + wlen &&
        (err = window_grow(s, &wstart, &wlen, s->roff + REC_HDR)) != 0)
      goto bad_or_fail;
    h = s->rbuf.data + base + (s->roff - wstart);
    len = get32(h);
    if (len > SL_SPOOL_RECORD_MAX || g->end - s->roff - REC_HDR < len ||
        get64(h + 8) != s->rseq) {
      err = 1;
      goto bad_or_fail;
    }
    if (n > 0 && payload + len > max_bytes)
      break;
    if (s->roff + REC_HDR + len > wstart + wlen) {
      err = window_grow(s, &wstart, &wlen, s->roff + REC_HDR + len);
      if (err != 0)
        goto bad_or_fail;
      base = s->rbuf.len - (size_t)wlen;
      h = s->rbuf.data + base + (s->roff - wstart);
    }
    if (sl_spool_crc32c(rec_crc_start(h), h + REC_HDR, len) != get32(h + 4)) {
      err = 1;
      goto bad_or_fail;
    }
    if ((err = mark_push(s, s->rseq, s->roff)) != 0)
      break;
    s->rpos[n] = (size_t)(h - s->rbuf.data) + REC_HDR;
    out[n].seq = s->rseq;
    out[n].len = len;
    n++;
    payload += len;
    s->roff += REC_HDR + len;
    s->rseq++;
    continue;

  bad_or_fail:
    if (err < 0)
      break;
    /* err == 1: corrupt or short */
    if (repair(s, s->rseg, s->roff, s->rseq) != 0)
      cut(s, s->rseg, s->roff, s->rseq);
    err = 0;
    wseg = UINT32_MAX;
  }
  for (i = 0; i < n; i++)
    out[i].data = s->rbuf.data + s->rpos[i];
  return n > 0 ? n : err;
}

int sl_spool_read(struct sl_spool *s, struct sl_spool_rec *out, int max,
                  size_t max_bytes) {
  return read_upto(s, out, max, max_bytes, UINT64_MAX);
}

int sl_spool_ack(struct sl_spool *s, uint64_t seq) {
  uint64_t before, after, bytes;
  uint32_t i;
  int err;

  if (seq <= s->ack_seq)
    return 0;
  if (seq >= s->next_seq)
    return SL_EINVAL;
  if (seq >= s->rseq) { /* acking unread records: read past them */
    struct sl_spool_rec tmp[64];
    int k;
    do {
      k = read_upto(s, tmp, (int)SL_ARRAY_SIZE(tmp), SIZE_MAX, seq);
      if (k < 0)
        return k;
    } while (k > 0 && s->rseq <= seq);
  }
  tally(s, s->aseg, s->aoff, s->aseq, &before, &bytes);
  /* dropped records right behind the ack are done too; the ack never
   * passes a record that is neither acked nor dropped */
  while (s->mlen > 0 && (s->marks[s->mhead].seq <= seq ||
                         (s->marks[s->mhead].off & MARK_DROPPED))) {
    if (s->marks[s->mhead].seq > seq)
      seq = s->marks[s->mhead].seq;
    s->mhead++;
    s->mlen--;
  }
  if (s->mlen == 0)
    s->mhead = 0;
  if (s->mlen > 0) {
    const struct sl_spool_mark *m = &s->marks[s->mhead];
    for (i = s->aseg; i < s->nsegs; i++)
      if (m->seq < s->segs[i].first + s->segs[i].count)
        break;
    s->aseg = i;
    s->aoff = m->off & ~MARK_DROPPED;
    s->aseq = m->seq;
  } else {
    s->aseg = s->rseg;
    s->aoff = s->roff;
    s->aseq = s->rseq;
  }
  s->ack_seq = seq;
  err = ack_store(s);

  cursor_settle(s, &s->aseg, &s->aoff, &s->aseq);
  if (s->rseg < s->aseg) { /* the read cursor sat at the same place */
    s->rseg = s->aseg;
    s->roff = s->aoff;
    s->rseq = s->aseq;
  }
  if (s->aseg > 0)
    drop_front(s, s->aseg);
  if (s->nsegs == 1 && is_active(s, 0) && s->aoff >= s->segs[0].end &&
      s->segs[0].end - SEG_HDR >= RECLAIM_IDLE)
    drop_active(s);
  else if (!punch_acked(s, 0))
    (void)reclaim_stuck(s);
  tally(s, s->aseg, s->aoff, s->aseq, &after, &bytes);
  s->acked += before - after;
  return err;
}

int sl_spool_drop(struct sl_spool *s, uint64_t seq) {
  size_t lo = 0, hi = s->mlen, mid;
  struct sl_spool_mark *m = s->marks + s->mhead;

  if (seq <= s->ack_seq)
    return 0;
  while (lo < hi) { /* marks are in seq order */
    mid = lo + (hi - lo) / 2;
    if (m[mid].seq < seq)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == s->mlen || m[lo].seq != seq)
    return SL_EINVAL;
  if (lo == 0)
    return sl_spool_ack(s, seq); /* nothing undelivered before it */
  m[lo].off |= MARK_DROPPED;
  return 0;
}

void sl_spool_rewind(struct sl_spool *s) {
  s->rseg = s->aseg;
  s->roff = s->aoff;
  s->rseq = s->aseq;
  s->mhead = s->mlen = 0;
}

void sl_spool_stats(struct sl_spool *s, struct sl_spool_stats *st) {
  memset(st, 0, sizeof(*st));
  tally(s, s->aseg, s->aoff, s->aseq, &st->records, &st->bytes);
  {
    uint64_t b;
    uint32_t rseg = s->rseg;
    uint64_t roff = s->roff, rseq = s->rseq;
    cursor_settle(s, &rseg, &roff, &rseq);
    tally(s, rseg, roff, rseq, &st->unread, &b);
  }
  st->disk_bytes = s->disk_bytes;
  st->segments = s->nsegs;
  st->next_seq = s->next_seq;
  st->ack_seq = s->ack_seq;
  st->read_seq = s->rseq;
  st->appended = s->appended;
  st->acked = s->acked;
  st->lost_records = s->lost_records;
  st->quarantined_records = s->quarantined_records;
  st->quarantined_bytes = s->quarantined_bytes;
  pthread_mutex_lock(&s->lock);
  st->durable_seq = s->durable_seq;
  st->flushed_seq = s->flushed_seq;
  st->write_errors = s->write_errors;
  st->fsync_errors = s->fsync_errors;
  pthread_mutex_unlock(&s->lock);
}
