/* fuzz_spool.c - libFuzzer target for the spool's recovery (engine/spool.c):
 * a segment of 20 known records is damaged by the input (flipped bytes,
 * spliced junk, deleted stretches, a cut tail) and opened. No record may be
 * made up or come twice, seqs only go up, every intact record followed by
 * its intact successor (or ending the file) is kept, and a second open finds
 * nothing left to repair. With the first byte's top bit set the file is
 * damaged (flips only) while the spool has it open, for the repair done
 * when reading; its low bits ack the first records before the damage, and
 * a stretch of acked records is skipped in place (as a punched one is).
 * Build with `make fuzz`; `make test` runs it for a few seconds. */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"
#include "fuzz.h"


#define NREC 20
#define SEG_HDR 24
#define REC_HDR 16
#define MAXIMG 8192
/* Bytes the deletions may take in all. A file never loses bytes from its
 * middle (a crash cuts its tail or leaves zeroed pages, which keep every
 * later record at its offset), so the scan believes a seq found past junk
 * only as far as the junk's length accounts for, give or take the spool's
 * RESYNC_SLACK (8) records: that is what lets it refuse records forged in
 * an event's payload. A deleted stretch moves the records after it closer,
 * so deletions past what the slack covers could hide an intact record from
 * a correct scan; 16 deletions of 64 bytes each did. */
#define DELETE_MAX ((8 - 1) * REC_HDR)

static char dir[64];
static uint8_t tmpl[MAXIMG];
static size_t tmpl_len, rec_off[NREC + 2];

static uint32_t plen(uint64_t seq) { return 3 + (uint32_t)(seq * 37 % 60); }

static uint8_t pbyte(uint64_t seq, uint32_t i) {
  return (uint8_t)(seq * 131 + i * 7);
}

static void put32(uint8_t *p, uint32_t v) {
  int i;
  for (i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}

/* The segment file the spool would write for records 1..NREC. */
static void build_template(void) {
  uint8_t *h = tmpl, *r;
  uint64_t seq;
  uint32_t i, n, crc;

  memcpy(h, "SLSP", 4);
  put32(h + 4, 1);
  put64(h + 8, 1);
  put32(h + 16, 0);
  put32(h + 20, sl_spool_crc32c(0, h, 20));
  tmpl_len = SEG_HDR;
  for (seq = 1; seq <= NREC; seq++) {
    r = tmpl + tmpl_len;
    rec_off[seq] = tmpl_len;
    n = plen(seq);
    put32(r, n);
    put64(r + 8, seq);
    for (i = 0; i < n; i++)
      r[REC_HDR + i] = pbyte(seq, i);
    crc = sl_spool_crc32c(sl_spool_crc32c(0, r, 4), r + 8, 8);
    put32(r + 4, sl_spool_crc32c(crc, r + REC_HDR, n));
    tmpl_len += REC_HDR + n;
  }
  rec_off[NREC + 1] = tmpl_len;
}

static int rm_one(const char *p, const struct stat *st, int f, struct FTW *w) {
  (void)st;
  (void)f;
  (void)w;
  return remove(p);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  snprintf(dir, sizeof(dir), "/tmp/fuzz_spool_%d", (int)getpid());
  build_template();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uint8_t img[MAXIMG];
  static int32_t origin[MAXIMG]; /* template offset of each byte, or -1 */
  struct sl_spool s;
  struct sl_spool_opts o;
  struct sl_spool_report rep;
  struct sl_spool_rec r[64];
  char path[128];
  uint64_t last = 0, got = 0;
  int seen[NREC + 2] = {0};
  size_t len = tmpl_len, i, k, deleted = 0;
  uint32_t j;
  int n, must, live = size > 0 && (data[0] & 0x80);
  uint64_t ack = size > 0 ? data[0] % 8 : 0;
  FILE *f;

  for (i = 0; i < len; i++) {
    img[i] = tmpl[i];
    origin[i] = (int32_t)i;
  }
  for (k = 0; k + 4 <= size && k < 4 * 16; k += 4) {
    size_t at = ((size_t)data[k + 1] << 8 | data[k + 2]) % (len + 1);
    size_t v = data[k + 3];
    switch (live ? 0 : data[k] % 4) {
    case 0: /* flip */
      if (at < len) {
        img[at] ^= (uint8_t)(v | 1);
        origin[at] = -1;
      }
      break;
    case 1: /* splice junk in */
      if (len + v > MAXIMG)
        break;
      memmove(img + at + v, img + at, len - at);
      memmove(origin + at + v, origin + at, (len - at) * sizeof(*origin));
      for (i = 0; i < v; i++) {
        img[at + i] = (uint8_t)(data[k] * 31 + i * 17);
        origin[at + i] = -1;
      }
      len += v;
      break;
    case 2: /* delete a stretch: short, DELETE_MAX in all */
      v %= 65;
      if (v > len - at)
        v = len - at;
      if (v > DELETE_MAX - deleted)
        v = DELETE_MAX - deleted;
      deleted += v;
      memmove(img + at, img + at + v, len - at - v);
      memmove(origin + at, origin + at + v, (len - at - v) * sizeof(*origin));
      len -= v;
      break;
    default: /* cut the tail */
      len = at;
      break;
    }
  }

  nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
  ASSERT(mkdir(dir, 0755) == 0);
  snprintf(path, sizeof(path), "%s/0000000000000001.seg", dir);
  ASSERT((f = fopen(path, "wb")) != NULL);
  ASSERT(fwrite(tmpl, 1, tmpl_len, f) == tmpl_len);
  ASSERT(fclose(f) == 0);

  memset(&o, 0, sizeof(o));
  o.max_bytes = 1 << 20;
  ASSERT(sl_spool_init(&s, dir, &o, &rep) == 0);
  ASSERT(rep.records == NREC);
  if (ack > 0)
    ASSERT(sl_spool_ack(&s, ack) == 0);
  if (!live)
    sl_spool_close(&s);
  /* the same inode, damaged (under the open spool when live) */
  ASSERT((f = fopen(path, live ? "r+b" : "wb")) != NULL);
  ASSERT(fwrite(img, 1, len, f) == len);
  ASSERT(fclose(f) == 0);
  if (!live)
    ASSERT(sl_spool_init(&s, dir, &o, &rep) == 0);
  while ((n = sl_spool_read(&s, r, 64, 1 << 20)) > 0) {
    for (k = 0; k < (size_t)n; k++) {
      ASSERT(r[k].seq > last && r[k].seq > ack && r[k].seq <= NREC);
      ASSERT(r[k].len == plen(r[k].seq));
      for (j = 0; j < r[k].len; j++)
        ASSERT(r[k].data[j] == pbyte(r[k].seq, j));
      last = r[k].seq;
      seen[last] = 1;
      got++;
    }
  }
  ASSERT(n == 0);
  if (!live)
    ASSERT(got == rep.records);

  /* record q is intact when its template bytes sit in order in img */
  for (i = 0; i < len; i++) {
    uint64_t q;
    for (q = 1; q <= NREC; q++)
      if (origin[i] == (int32_t)rec_off[q])
        break;
    if (q > NREC)
      continue;
    for (j = 0; j < rec_off[q + 1] - rec_off[q]; j++)
      if (i + j >= len || origin[i + j] != (int32_t)(rec_off[q] + j))
        break;
    if (j < rec_off[q + 1] - rec_off[q])
      continue;
    /* intact: kept when its successor follows intact, or it ends the file */
    must = i + j == len;
    if (!must && q < NREC && origin[i + j] == (int32_t)rec_off[q + 1]) {
      size_t m;
      for (m = 0; m < rec_off[q + 2] - rec_off[q + 1]; m++)
        if (i + j + m >= len ||
            origin[i + j + m] != (int32_t)(rec_off[q + 1] + m))
          break;
      must = m == rec_off[q + 2] - rec_off[q + 1];
    }
    if (must && q > ack && !seen[q]) {
      fprintf(stderr, "intact record %llu at %zu was lost\n",
              (unsigned long long)q, i);
      abort();
    }
  }
  ASSERT(sl_spool_append(&s, "x", 1, &last) == 0);
  sl_spool_close(&s);

  /* the repair holds (a live one that found nothing intact after the bad
   * bytes only cut the segment in memory: the open quarantines the rest) */
  ASSERT(sl_spool_init(&s, dir, &o, &rep) == 0);
  ASSERT(live || rep.quarantine_files == 0);
  ASSERT(rep.records == got + 1);
  sl_spool_close(&s);
  return 0;
}
