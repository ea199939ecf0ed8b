/* test_spool.c - the durable spool: order across segments, replay after
 * reopen, limits, and recovery from torn, flipped and garbage bytes. */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <errno.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"
#include "test.h"

#define SEG_HDR 24
#define REC_HDR 16

/* ---- helpers ----------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void rm_rf(const char *dir) {
  nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh empty directory name under /tmp (the spool creates it). */
static void tmp_dir(char *buf, size_t n, const char *tag) {
  static int counter;
  snprintf(buf, n, "/tmp/sl_spool_%s_%d_%d", tag, (int)getpid(), counter++);
  rm_rf(buf);
}

static uint32_t payload_len(uint64_t seq) {
  return 5 + (uint32_t)(seq * 37 % 90);
}

static void payload(uint64_t seq, uint8_t *p) {
  uint32_t i, n = payload_len(seq);
  for (i = 0; i < n; i++)
    p[i] = (uint8_t)(seq * 131 + i * 7);
}

static int payload_ok(const struct sl_spool_rec *r) {
  uint8_t want[128];
  if (r->len != payload_len(r->seq))
    return 0;
  payload(r->seq, want);
  return memcmp(want, r->data, r->len) == 0;
}

static uint64_t rec_size(uint64_t seq) { return REC_HDR + payload_len(seq); }

static struct sl_spool_opts opts_of(uint64_t max_bytes, uint64_t segment) {
  struct sl_spool_opts o;
  memset(&o, 0, sizeof(o));
  o.max_bytes = max_bytes;
  o.segment_bytes = segment;
  o.write_buffer = 1024;
  return o;
}

/* Append the records first..last; 0 when each got the expected seq. */
static int append_range(struct sl_spool *s, uint64_t first, uint64_t last) {
  uint8_t p[128];
  uint64_t seq, got;
  for (seq = first; seq <= last; seq++) {
    payload(seq, p);
    if (sl_spool_append(s, p, payload_len(seq), &got) != 0 || got != seq)
      return -1;
  }
  return 0;
}

/* Read everything unread in batches of `batch`; seqs get the order seen.
 * Returns the count, or -1 when a payload does not match its seq. */
static long read_all(struct sl_spool *s, uint64_t *seqs, size_t max,
                     int batch) {
  struct sl_spool_rec r[64];
  long n = 0;
  int k, i;
  for (;;) {
    k = sl_spool_read(s, r, batch, 1 << 20);
    if (k < 0)
      return -1;
    if (k == 0)
      return n;
    for (i = 0; i < k; i++) {
      if (!payload_ok(&r[i]) || (size_t)n >= max)
        return -1;
      seqs[n++] = r[i].seq;
    }
  }
}

/* seqs[0..n) == first, first+1, ... */
static int contiguous(const uint64_t *seqs, long n, uint64_t first) {
  long i;
  for (i = 0; i < n; i++)
    if (seqs[i] != first + (uint64_t)i)
      return 0;
  return 1;
}

static void seg_path(char *buf, size_t n, const char *dir, uint64_t first) {
  snprintf(buf, n, "%s/%016" PRIx64 ".seg", dir, first);
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int count_files(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  struct dirent *de;
  size_t n = strlen(suffix), len;
  int count = 0;
  if (d == NULL)
    return -1;
  while ((de = readdir(d)) != NULL) {
    len = strlen(de->d_name);
    if (len >= n && strcmp(de->d_name + len - n, suffix) == 0)
      count++;
  }
  closedir(d);
  return count;
}

static uint8_t *read_file(const char *path, long *len) {
  FILE *f = fopen(path, "rb");
  uint8_t *b;
  if (f == NULL)
    return NULL;
  fseek(f, 0, SEEK_END);
  *len = ftell(f);
  fseek(f, 0, SEEK_SET);
  b = malloc((size_t)*len + 1);
  if (b && fread(b, 1, (size_t)*len, f) != (size_t)*len) {
    free(b);
    b = NULL;
  }
  fclose(f);
  return b;
}

static int write_file(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  int ok;
  if (f == NULL)
    return -1;
  ok = fwrite(p, 1, n, f) == n;
  return fclose(f) == 0 && ok ? 0 : -1;
}

static int poke(const char *path, long off, uint8_t xor_mask) {
  int fd = open(path, O_RDWR);
  uint8_t b;
  int ok;
  if (fd < 0)
    return -1;
  ok = pread(fd, &b, 1, off) == 1;
  b ^= xor_mask;
  ok = ok && pwrite(fd, &b, 1, off) == 1;
  close(fd);
  return ok ? 0 : -1;
}

/* Bit-by-bit CRC32C, the reference the fast versions must match. */
static uint32_t crc_ref(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  size_t i;
  int k;
  for (i = 0; i < n; i++) {
    c ^= p[i];
    for (k = 0; k < 8; k++)
      c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
  }
  return ~c;
}

/* A tmpfs of `size` ("256k") mounted on a fresh directory, for disk-full
 * tests; 0, or -1 (the caller skips) when it cannot be mounted. */
static int tmpfs_mount(char *buf, size_t n, const char *tag,
                       const char *size) {
  char opt[64];
  tmp_dir(buf, n, tag);
  snprintf(opt, sizeof(opt), "size=%s", size);
  if (mkdir(buf, 0755) != 0)
    return -1;
  if (mount("tmpfs", buf, "tmpfs", 0, opt) != 0) {
    fprintf(stderr, "  SKIP: cannot mount a tmpfs on %s (%s); run as root\n",
            buf, strerror(errno));
    rmdir(buf);
    return -1;
  }
  return 0;
}

static void tmpfs_umount(const char *dir) {
  umount2(dir, MNT_DETACH);
  rmdir(dir);
}

/* A test case run on a fresh tmpfs of size_ at mnt, unmounted whether the
 * body passes or fails (CHECK returns from the body). */
#define TMPFS_TEST(case_, size_)                                       \
  static void body_##case_(int *failed__, const char *mnt);            \
  TEST(case_) {                                                        \
    char mnt_[160];                                                    \
    if (tmpfs_mount(mnt_, sizeof(mnt_), #case_, size_) != 0)           \
      return;                                                          \
    body_##case_(failed__, mnt_);                                      \
    tmpfs_umount(mnt_);                                                \
  }                                                                    \
  static void body_##case_(int *failed__, const char *mnt)

/* Bytes the segment files of dir take on disk (allocated blocks). */
static long long seg_disk_bytes(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *de;
  struct stat st;
  char path[512];
  long long total = 0;
  size_t len;
  if (d == NULL)
    return -1;
  while ((de = readdir(d)) != NULL) {
    len = strlen(de->d_name);
    if (len < 4 || strcmp(de->d_name + len - 4, ".seg") != 0)
      continue;
    snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
    if (stat(path, &st) == 0)
      total += (long long)st.st_blocks * 512;
  }
  closedir(d);
  return total;
}

/* Payloads of any length, stamped with their seq. */
static void big_payload(uint64_t seq, uint8_t *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    p[i] = (uint8_t)(seq * 29 + i * 13 + (i >> 8));
}

static int big_payload_ok(const struct sl_spool_rec *r, size_t n) {
  size_t i;
  if (r->len != n)
    return 0;
  for (i = 0; i < n; i++)
    if (r->data[i] != (uint8_t)(r->seq * 29 + i * 13 + (i >> 8)))
      return 0;
  return 1;
}

/* Read what can be read; ack all but the newest `lag` of it. Returns the
 * newest seq read (0 when none), or -1 on a bad payload. */
static long long drain(struct sl_spool *s, size_t n, uint64_t lag) {
  struct sl_spool_rec r[64];
  long long last = 0;
  int k, i;
  while ((k = sl_spool_read(s, r, 64, 1 << 20)) > 0) {
    for (i = 0; i < k; i++)
      if (!big_payload_ok(&r[i], n))
        return -1;
    last = (long long)r[k - 1].seq;
  }
  if (last > (long long)lag && sl_spool_ack(s, (uint64_t)last - lag) != 0)
    return -1;
  return last;
}

/* ---- CRC32C ------------------------------------------------------------ */

TEST(crc32c_known_vectors) {
  uint8_t b[32];
  int i;
  CHECK_EQ(sl_spool_crc32c(0, "123456789", 9), 0xE3069283u);
  CHECK_EQ(sl_spool_crc32c_portable(0, "123456789", 9), 0xE3069283u);
  memset(b, 0, 32); /* RFC 3720 B.4 */
  CHECK_EQ(sl_spool_crc32c(0, b, 32), 0x8A9136AAu);
  CHECK_EQ(sl_spool_crc32c_portable(0, b, 32), 0x8A9136AAu);
  memset(b, 0xff, 32);
  CHECK_EQ(sl_spool_crc32c(0, b, 32), 0x62A8AB43u);
  CHECK_EQ(sl_spool_crc32c_portable(0, b, 32), 0x62A8AB43u);
  for (i = 0; i < 32; i++)
    b[i] = (uint8_t)i;
  CHECK_EQ(sl_spool_crc32c(0, b, 32), 0x46DD794Eu);
  CHECK_EQ(sl_spool_crc32c_portable(0, b, 32), 0x46DD794Eu);
  for (i = 0; i < 32; i++)
    b[i] = (uint8_t)(31 - i);
  CHECK_EQ(sl_spool_crc32c(0, b, 32), 0x113FDB5Cu);
  CHECK_EQ(sl_spool_crc32c(0, "", 0), 0);
}

TEST(crc32c_fast_paths_match_reference_at_every_length_and_alignment) {
  uint8_t b[600];
  size_t len, off, cut;
  uint32_t want;
  for (len = 0; len < sizeof(b); len++)
    b[len] = (uint8_t)(len * 2654435761u >> 13);
  for (off = 0; off < 8; off++) {
    for (len = 0; len + off <= 300; len++) {
      want = crc_ref(b + off, len);
      CHECK_EQ(sl_spool_crc32c(0, b + off, len), want);
      CHECK_EQ(sl_spool_crc32c_portable(0, b + off, len), want);
      cut = len / 3; /* continuing from a previous result */
      CHECK_EQ(sl_spool_crc32c(sl_spool_crc32c(0, b + off, cut), b + off + cut,
                               len - cut),
               want);
    }
  }
}

/* ---- normal operation -------------------------------------------------- */

TEST(spool_append_read_ack_keep_order_across_segment_rollover) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_opts o = opts_of(1 << 20, 512);
  uint64_t seqs[400];
  struct sl_spool_rec r[8];
  long n;
  int k, i, j;

  tmp_dir(dir, sizeof(dir), "order");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 300), 0);
  sl_spool_stats(&s, &st);
  CHECK(st.segments > 20);
  CHECK_EQ(st.records, 300);
  CHECK_EQ(st.unread, 300);
  /* read in odd batches, acking every other batch */
  n = 1;
  for (i = 0;; i++) {
    k = sl_spool_read(&s, r, 7, 1 << 20);
    CHECK(k >= 0);
    if (k == 0)
      break;
    for (j = 0; j < k; j++) {
      CHECK_EQ(r[j].seq, (uint64_t)n);
      CHECK(payload_ok(&r[j]));
      n++;
    }
    if (i % 2 == 1)
      CHECK_EQ(sl_spool_ack(&s, r[0].seq), 0);
  }
  CHECK_EQ(n, 301);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.unread, 0);
  CHECK_EQ(sl_spool_ack(&s, 300), 0);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.records, 0);
  CHECK_EQ(st.bytes, 0);
  CHECK_EQ(st.acked, 300);
  CHECK_EQ(st.segments, 1); /* the active one stays */
  CHECK_EQ(count_files(dir, ".seg"), 1);
  /* appends after a full drain continue the sequence */
  CHECK_EQ(append_range(&s, 301, 310), 0);
  n = read_all(&s, seqs, 400, 3);
  CHECK_EQ(n, 10);
  CHECK(contiguous(seqs, n, 301));
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_read_returns_pointers_in_seq_order_with_byte_budget) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  struct sl_spool_rec r[64];
  int k, i;

  tmp_dir(dir, sizeof(dir), "budget");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 40), 0);
  k = sl_spool_read(&s, r, 64, 200); /* payload budget of 200 bytes */
  CHECK(k >= 1);
  {
    uint64_t sum = 0;
    for (i = 0; i < k; i++) {
      CHECK_EQ(r[i].seq, (uint64_t)i + 1);
      CHECK(payload_ok(&r[i]));
      sum += r[i].len;
    }
    CHECK(sum <= 200);
  }
  k = sl_spool_read(&s, r, 1, 1); /* one record even over the budget */
  CHECK_EQ(k, 1);
  CHECK(payload_ok(&r[0]));
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_reopen_replays_exactly_the_unacked_records) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 700);
  struct sl_spool_rec r[32];
  uint64_t seqs[200], got;
  uint8_t p[128];
  long n;

  tmp_dir(dir, sizeof(dir), "replay");
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 0);
  CHECK_EQ(rep.next_seq, 1);
  CHECK_EQ(append_range(&s, 1, 50), 0);
  CHECK_EQ(sl_spool_read(&s, r, 30, 1 << 20), 30);
  CHECK_EQ(sl_spool_ack(&s, 20), 0);
  CHECK_EQ(sl_spool_sync(&s, &got), 0);
  CHECK_EQ(got, 50);
  sl_spool_close(&s);

  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 30);
  CHECK_EQ(rep.first_seq, 21);
  CHECK_EQ(rep.next_seq, 51);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.ack_reset, 0);
  CHECK_STR(rep.msg, "");
  n = read_all(&s, seqs, 200, 9);
  CHECK_EQ(n, 30);
  CHECK(contiguous(seqs, n, 21));
  payload(51, p);
  CHECK_EQ(sl_spool_append(&s, p, payload_len(51), &got), 0);
  CHECK_EQ(got, 51);
  sl_spool_close(&s); /* close writes the buffer out, no sync needed */

  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 31);
  n = read_all(&s, seqs, 200, 64);
  CHECK_EQ(n, 31);
  CHECK(contiguous(seqs, n, 21));
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_reopen_after_everything_acked_keeps_the_sequence) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 400);
  uint64_t seqs[16];

  tmp_dir(dir, sizeof(dir), "allacked");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 30), 0);
  CHECK_EQ(sl_spool_ack(&s, 30), 0); /* acking unread records reads them */
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 0);
  CHECK_EQ(rep.next_seq, 31);
  CHECK_EQ(rep.segments, 0);
  CHECK_EQ(count_files(dir, ".seg"), 0);
  CHECK_EQ(append_range(&s, 31, 32), 0);
  CHECK_EQ(read_all(&s, seqs, 16, 5), 2);
  CHECK_EQ(seqs[0], 31);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_rewind_reads_again_from_first_unacked) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_opts o = opts_of(1 << 20, 300);
  struct sl_spool_rec r[16];
  uint64_t seqs[64];
  long n;

  tmp_dir(dir, sizeof(dir), "rewind");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 20), 0);
  CHECK_EQ(sl_spool_read(&s, r, 10, 1 << 20), 10);
  CHECK_EQ(sl_spool_ack(&s, 5), 0);
  CHECK_EQ(sl_spool_read(&s, r, 5, 1 << 20), 5);
  CHECK_EQ(r[0].seq, 11);
  sl_spool_rewind(&s);
  n = read_all(&s, seqs, 64, 4);
  CHECK_EQ(n, 15);
  CHECK(contiguous(seqs, n, 6));
  /* rewind with nothing acked goes back to the very first record */
  CHECK_EQ(sl_spool_ack(&s, 12), 0);
  sl_spool_rewind(&s);
  sl_spool_rewind(&s);
  n = read_all(&s, seqs, 64, 16);
  CHECK_EQ(n, 8);
  CHECK(contiguous(seqs, n, 13));
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_ack_past_read_cursor_skips_those_records) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_opts o = opts_of(1 << 20, 256);
  uint64_t seqs[64];
  long n;

  tmp_dir(dir, sizeof(dir), "ackahead");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 40), 0);
  CHECK_EQ(sl_spool_ack(&s, 25), 0);
  CHECK_EQ(sl_spool_ack(&s, 10), 0); /* behind: no-op */
  CHECK_EQ(sl_spool_ack(&s, 41), SL_EINVAL); /* never appended */
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.ack_seq, 25);
  CHECK_EQ(st.records, 15);
  n = read_all(&s, seqs, 64, 6);
  CHECK_EQ(n, 15);
  CHECK(contiguous(seqs, n, 26));
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_max_bytes_returns_e2big_and_frees_after_ack) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_opts o = opts_of(4096, 1024);
  uint8_t p[128];
  uint64_t seq = 1, got;
  int rc;

  tmp_dir(dir, sizeof(dir), "full");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  for (;;) {
    payload(seq, p);
    rc = sl_spool_append(&s, p, payload_len(seq), &got);
    if (rc != 0)
      break;
    seq++;
  }
  CHECK_EQ(rc, SL_E2BIG);
  sl_spool_stats(&s, &st);
  CHECK(st.disk_bytes <= 4096);
  CHECK(st.disk_bytes > 4096 - 2 * (SEG_HDR + rec_size(seq)));
  CHECK_EQ(st.records, seq - 1);
  CHECK_EQ(sl_spool_append(&s, p, payload_len(seq), &got), SL_E2BIG);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.next_seq, seq); /* nothing changed */
  CHECK_EQ(sl_spool_ack(&s, seq - 1), 0);
  CHECK_EQ(sl_spool_append(&s, p, payload_len(seq), &got), 0);
  CHECK_EQ(got, seq);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_one_segment_budget_does_not_deadlock_when_drained) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_opts o = opts_of(512, 512);
  uint8_t p[128];
  uint64_t seq = 1, got, seqs[64];
  int round;

  tmp_dir(dir, sizeof(dir), "oneseg");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  for (round = 0; round < 5; round++) {
    uint64_t start = seq;
    for (;;) {
      payload(seq, p);
      if (sl_spool_append(&s, p, payload_len(seq), &got) != 0)
        break;
      seq++;
    }
    CHECK(seq > start); /* the full, acked segment made room */
    CHECK_EQ(read_all(&s, seqs, 64, 64), (long)(seq - start));
    CHECK_EQ(sl_spool_ack(&s, seq - 1), 0);
  }
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_record_over_max_record_is_einval_and_big_ones_bypass_buffer) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_opts o = opts_of(1 << 20, 4096);
  struct sl_spool_rec r[4];
  static uint8_t big[3000];
  uint64_t got;
  size_t i;

  o.max_record = 3000;
  o.write_buffer = 256;
  for (i = 0; i < sizeof(big); i++)
    big[i] = (uint8_t)(i * 7);
  tmp_dir(dir, sizeof(dir), "big");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(sl_spool_append(&s, big, 3001, &got), SL_EINVAL);
  CHECK_EQ(sl_spool_append(&s, "x", 1, &got), 0);
  CHECK_EQ(sl_spool_append(&s, big, 3000, &got), 0);
  CHECK_EQ(got, 2);
  CHECK_EQ(sl_spool_append(&s, big, 3000, &got), 0); /* its own segment */
  CHECK_EQ(sl_spool_append(&s, NULL, 0, &got), 0);    /* empty record */
  CHECK_EQ(sl_spool_read(&s, r, 4, 1 << 20), 4);
  CHECK_EQ(r[0].len, 1);
  CHECK_EQ(r[1].len, 3000);
  CHECK(memcmp(r[1].data, big, 3000) == 0);
  CHECK(memcmp(r[2].data, big, 3000) == 0);
  CHECK_EQ(r[3].len, 0);
  CHECK_EQ(r[3].seq, 4);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_second_open_of_same_dir_is_eagain) {
  char dir[128];
  struct sl_spool a, b;
  struct sl_spool_opts o = opts_of(1 << 20, 0);

  tmp_dir(dir, sizeof(dir), "lock");
  CHECK_EQ(sl_spool_init(&a, dir, &o, NULL), 0);
  CHECK_EQ(sl_spool_init(&b, dir, &o, NULL), SL_EAGAIN);
  sl_spool_close(&b); /* no-op after a failed init */
  sl_spool_close(&a);
  sl_spool_close(&a); /* twice is fine */
  CHECK_EQ(sl_spool_init(&b, dir, &o, NULL), 0);
  sl_spool_close(&b);
  rm_rf(dir);
}

TEST(spool_bad_options_are_einval) {
  struct sl_spool s;
  struct sl_spool_opts o = opts_of(0, 0);

  memset(&s, 0, sizeof(s));
  sl_spool_close(&s); /* zeroed: no-op */
  CHECK_EQ(sl_spool_init(&s, "/tmp/sl_spool_never", &o, NULL), SL_EINVAL);
  o = opts_of(1 << 20, 0);
  o.max_record = SL_SPOOL_RECORD_MAX + 1;
  CHECK_EQ(sl_spool_init(&s, "/tmp/sl_spool_never", &o, NULL), SL_EINVAL);
  o = opts_of(1 << 20, 0);
  CHECK(sl_spool_init(&s, "/nonexistent/parent/spool", &o, NULL) < 0);
}

/* ---- sync -------------------------------------------------------------- */

struct syncer {
  struct sl_spool *s;
  atomic_int stop;
  atomic_int calls;
  int errors;
};

static void *sync_loop(void *arg) {
  struct syncer *y = arg;
  uint64_t d;
  while (!atomic_load(&y->stop)) {
    if (sl_spool_sync(y->s, &d) != 0)
      y->errors++;
    atomic_fetch_add(&y->calls, 1);
  }
  return NULL;
}

TEST(spool_sync_on_another_thread_while_appending_and_acking) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_opts o = opts_of(8 << 20, 16 << 10);
  struct syncer y;
  pthread_t t;
  struct sl_spool_rec r[64];
  uint64_t seq, d = 0;
  int k;

  tmp_dir(dir, sizeof(dir), "sync");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  memset(&y, 0, sizeof(y));
  atomic_init(&y.stop, 0);
  atomic_init(&y.calls, 0);
  y.s = &s;
  CHECK_EQ(pthread_create(&t, NULL, sync_loop, &y), 0);
  for (seq = 1; seq <= 20000; seq += 100) {
    CHECK_EQ(append_range(&s, seq, seq + 99), 0);
    k = sl_spool_read(&s, r, 64, 1 << 20);
    CHECK(k > 0);
    CHECK(payload_ok(&r[k - 1]));
    CHECK_EQ(sl_spool_ack(&s, r[k - 1].seq), 0);
  }
  /* on a loaded machine the appends can all finish before the syncer is
   * first scheduled: it must have synced at least once before it stops */
  while (atomic_load(&y.calls) == 0)
    sched_yield();
  atomic_store(&y.stop, 1);
  pthread_join(t, NULL);
  CHECK_EQ(y.errors, 0);
  CHECK(atomic_load(&y.calls) > 0);
  CHECK_EQ(sl_spool_sync(&s, &d), 0);
  CHECK_EQ(d, 20000);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.durable_seq, 20000);
  sl_spool_close(&s);
  rm_rf(dir);
}

/* ---- recovery ---------------------------------------------------------- */

/* One segment with records 1..5, closed; its bytes in *img. */
static int make_five(const char *dir, uint8_t **img, long *len) {
  struct sl_spool s;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  char path[256];
  if (sl_spool_init(&s, dir, &o, NULL) != 0)
    return -1;
  if (append_range(&s, 1, 5) != 0)
    return -1;
  sl_spool_close(&s);
  seg_path(path, sizeof(path), dir, 1);
  *img = read_file(path, len);
  return *img ? 0 : -1;
}

TEST(spool_torn_tail_at_every_byte_keeps_complete_records) {
  char dir[128], path[256];
  uint8_t *img;
  long len, cut;
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t ends[6], seqs[16], got;
  uint8_t p[128];
  int i;

  tmp_dir(dir, sizeof(dir), "torn");
  CHECK_EQ(make_five(dir, &img, &len), 0);
  ends[0] = SEG_HDR;
  for (i = 1; i <= 5; i++)
    ends[i] = ends[i - 1] + rec_size((uint64_t)i);
  CHECK_EQ((uint64_t)len, ends[5]);
  for (cut = 0; cut <= len; cut++) {
    int whole = 0;
    uint64_t lost;
    if (cut > SEG_HDR && (uint64_t)cut < ends[3])
      continue; /* every byte of the header and of the last two records */
    rm_rf(dir);
    CHECK_EQ(mkdir(dir, 0755), 0);
    seg_path(path, sizeof(path), dir, 1);
    CHECK_EQ(write_file(path, img, (size_t)cut), 0);
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    if (cut >= SEG_HDR)
      for (whole = 0; whole < 5 && ends[whole + 1] <= (uint64_t)cut; whole++)
        ;
    lost = cut >= SEG_HDR ? (uint64_t)cut - ends[whole] : (uint64_t)cut;
    CHECK_EQ(rep.records, whole);
    CHECK_EQ(rep.quarantined_bytes, lost);
    CHECK_EQ(rep.quarantine_files, lost > 0 ? 1 : 0);
    if (lost > 0) { /* the cut bytes are kept, byte for byte */
      char qpath[300];
      uint8_t *q;
      long qlen = 0;
      uint64_t from = cut >= SEG_HDR ? ends[whole] : 0;
      snprintf(qpath, sizeof(qpath),
               "%s/quarantine/0000000000000001.seg.%" PRIu64 ".bad", dir,
               from);
      q = read_file(qpath, &qlen);
      CHECK(q != NULL);
      CHECK_EQ(qlen, (long)lost);
      CHECK(memcmp(q, img + from, (size_t)lost) == 0);
      free(q);
    }
    CHECK_EQ(read_all(&s, seqs, 16, 3), whole);
    CHECK(contiguous(seqs, whole, 1));
    /* the next append continues right after the surviving records */
    payload((uint64_t)whole + 1, p);
    CHECK_EQ(sl_spool_append(&s, p, payload_len((uint64_t)whole + 1), &got),
             0);
    CHECK_EQ(got, (uint64_t)whole + 1);
    sl_spool_close(&s);
    /* and a second open finds nothing wrong */
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.quarantine_files, 0);
    CHECK_EQ(rep.records, (uint64_t)whole + 1);
    CHECK_EQ(read_all(&s, seqs, 16, 16), whole + 1);
    CHECK(contiguous(seqs, whole + 1, 1));
    sl_spool_close(&s);
  }
  free(img);
  rm_rf(dir);
}

TEST(spool_flipped_bit_anywhere_in_a_record_costs_that_record_only) {
  char dir[128], path[256];
  uint8_t *img;
  long len, at, rec3;
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[16];

  tmp_dir(dir, sizeof(dir), "flip");
  CHECK_EQ(make_five(dir, &img, &len), 0);
  rec3 = SEG_HDR + (long)(rec_size(1) + rec_size(2));
  for (at = rec3; at < rec3 + (long)rec_size(3); at++) {
    uint8_t save = img[at];
    rm_rf(dir);
    CHECK_EQ(mkdir(dir, 0755), 0);
    img[at] ^= (uint8_t)(1u << (at % 8));
    seg_path(path, sizeof(path), dir, 1);
    CHECK_EQ(write_file(path, img, (size_t)len), 0);
    img[at] = save;
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.records, 4); /* 1, 2, 4, 5 */
    CHECK_EQ(rep.quarantine_files, 1);
    CHECK_EQ(rep.quarantined_bytes, rec_size(3));
    CHECK_EQ(rep.lost_records, 1);
    CHECK_EQ(rep.gaps, 1);
    CHECK(strstr(rep.msg, "offset") != NULL);
    CHECK_EQ(read_all(&s, seqs, 16, 16), 4);
    CHECK(contiguous(seqs, 2, 1));
    CHECK(contiguous(seqs + 2, 2, 4));
    CHECK_EQ(rep.next_seq, 6);
    sl_spool_close(&s);
    /* the repair holds: the next open finds nothing new */
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.quarantine_files, 0);
    CHECK_EQ(rep.records, 4);
    CHECK_EQ(rep.gaps, 1);
    CHECK_EQ(count_files(dir, ".seg"), 2);
    sl_spool_close(&s);
  }
  free(img);
  rm_rf(dir);
}

TEST(spool_garbage_length_is_corruption_not_an_allocation) {
  static const uint32_t lens[] = {0xFFFFFFF0u, SL_SPOOL_RECORD_MAX + 1,
                                  200u << 20, 1000};
  char dir[128], path[256];
  uint8_t *img;
  long len, rec2;
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[16];
  size_t i;

  tmp_dir(dir, sizeof(dir), "len");
  CHECK_EQ(make_five(dir, &img, &len), 0);
  rec2 = SEG_HDR + (long)rec_size(1);
  for (i = 0; i < SL_ARRAY_SIZE(lens); i++) {
    uint8_t save[4];
    memcpy(save, img + rec2, 4);
    img[rec2] = (uint8_t)lens[i];
    img[rec2 + 1] = (uint8_t)(lens[i] >> 8);
    img[rec2 + 2] = (uint8_t)(lens[i] >> 16);
    img[rec2 + 3] = (uint8_t)(lens[i] >> 24);
    rm_rf(dir);
    CHECK_EQ(mkdir(dir, 0755), 0);
    seg_path(path, sizeof(path), dir, 1);
    CHECK_EQ(write_file(path, img, (size_t)len), 0);
    memcpy(img + rec2, save, 4);
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.records, 4); /* resync finds 3 by its CRC, not the length */
    CHECK_EQ(rep.quarantined_bytes, rec_size(2));
    CHECK_EQ(rep.lost_records, 1);
    CHECK_EQ(read_all(&s, seqs, 16, 16), 4);
    CHECK_EQ(seqs[0], 1);
    CHECK(contiguous(seqs + 1, 3, 3));
    sl_spool_close(&s);
  }
  free(img);
  rm_rf(dir);
}

TEST(spool_corrupt_record_in_middle_segment_is_cut_out_and_reported) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 400);
  uint64_t seqs[128], first2 = 0, first3 = 0, seq, off;
  long n, i, j;

  tmp_dir(dir, sizeof(dir), "middle");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 60), 0);
  sl_spool_close(&s);
  /* find the second and third segments by their names */
  for (seq = 2; seq <= 60 && first3 == 0; seq++) {
    seg_path(path, sizeof(path), dir, seq);
    if (file_size(path) > 0) {
      if (first2 == 0)
        first2 = seq;
      else
        first3 = seq;
    }
  }
  CHECK(first2 > 0 && first3 > first2 + 2);
  /* flip a payload byte of the second record of segment 2 */
  seg_path(path, sizeof(path), dir, first2);
  off = SEG_HDR + rec_size(first2) + REC_HDR + 1;
  CHECK_EQ(poke(path, (long)off, 0x40), 0);

  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.gaps, 1);
  CHECK_EQ(rep.lost_records, 1); /* before: first3 - first2 - 1 */
  CHECK_EQ(rep.quarantine_files, 1);
  CHECK_EQ(rep.quarantined_bytes, rec_size(first2 + 1));
  CHECK_EQ(rep.records, 59);
  CHECK_EQ(rep.next_seq, 61);
  CHECK(strstr(rep.msg, "lost") != NULL);
  n = read_all(&s, seqs, 128, 10);
  CHECK_EQ(n, (long)rep.records);
  for (i = 0, j = 0, seq = 1; seq <= 60; seq++) {
    if (seq == first2 + 1)
      continue;
    CHECK_EQ(seqs[j], seq);
    j++;
  }
  (void)i;
  CHECK_EQ(file_size(path), (long)(SEG_HDR + rec_size(first2)));
  sl_spool_close(&s);
  /* reopening again: clean, the gap is still reported */
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.gaps, 1);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_garbage_files_are_quarantined_foreign_files_left_alone) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint8_t junk[300];
  uint64_t seqs[32], got;
  size_t i;

  for (i = 0; i < sizeof(junk); i++)
    junk[i] = (uint8_t)(i * 151 + 3);
  tmp_dir(dir, sizeof(dir), "garbage");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 10), 0);
  sl_spool_close(&s);
  seg_path(path, sizeof(path), dir, 11); /* where the next one would go */
  CHECK_EQ(write_file(path, junk, sizeof(junk)), 0);
  seg_path(path, sizeof(path), dir, 5); /* inside segment 1's range */
  CHECK_EQ(write_file(path, junk, 10), 0);
  snprintf(path, sizeof(path), "%s/notes.txt", dir);
  CHECK_EQ(write_file(path, "hi", 2), 0);

  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 2);
  CHECK_EQ(rep.quarantined_bytes, sizeof(junk) + 10);
  CHECK_EQ(rep.ignored_files, 1);
  CHECK_EQ(rep.gaps, 0);
  CHECK_EQ(rep.records, 10);
  CHECK_EQ(file_size(path), 2);
  CHECK_EQ(count_files(dir, ".seg"), 1);
  snprintf(path, sizeof(path), "%s/quarantine/%016" PRIx64 ".seg.0.bad", dir,
           (uint64_t)11);
  CHECK_EQ(file_size(path), (long)sizeof(junk));
  CHECK_EQ(read_all(&s, seqs, 32, 32), 10);
  CHECK(contiguous(seqs, 10, 1));
  CHECK_EQ(append_range(&s, 11, 11), 0);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.records, 11);
  (void)got;
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_ack_file_corrupt_or_missing_replays_from_oldest) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[32];
  int round;

  tmp_dir(dir, sizeof(dir), "ackfile");
  for (round = 0; round < 2; round++) {
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    if (round == 0)
      CHECK_EQ(append_range(&s, 1, 10), 0);
    CHECK_EQ(sl_spool_ack(&s, 6), 0);
    sl_spool_close(&s);
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.first_seq, 7);
    CHECK_EQ(rep.records, 4);
    sl_spool_close(&s);

    snprintf(path, sizeof(path), "%s/ack", dir);
    if (round == 0)
      CHECK_EQ(write_file(path, "garbage garbage garbage garbage!!", 33), 0);
    else
      CHECK_EQ(unlink(path), 0);
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.ack_reset, 1);
    CHECK_EQ(rep.first_seq, 1);
    CHECK_EQ(rep.quarantine_files, round == 0 ? 1 : 0);
    CHECK_EQ(rep.records, 10);
    CHECK_EQ(read_all(&s, seqs, 32, 32), 10);
    CHECK(contiguous(seqs, 10, 1));
    sl_spool_close(&s);
  }
  rm_rf(dir);
}

TEST(spool_ack_file_keeps_the_older_slot_when_the_newer_is_torn) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);

  tmp_dir(dir, sizeof(dir), "ackslot");
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(append_range(&s, 1, 10), 0);
  CHECK_EQ(sl_spool_ack(&s, 3), 0); /* generation 1: slot at 512 */
  CHECK_EQ(sl_spool_ack(&s, 7), 0); /* generation 2: slot at 0 */
  sl_spool_close(&s);
  snprintf(path, sizeof(path), "%s/ack", dir);
  CHECK_EQ(poke(path, 20, 0x80), 0); /* tear slot 0 */
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.ack_reset, 0);
  CHECK_EQ(rep.first_seq, 4);
  CHECK_EQ(rep.records, 7);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_ack_beyond_lost_tail_is_clamped_and_seqs_move_on) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[8], got;
  uint8_t p[128];

  tmp_dir(dir, sizeof(dir), "ackbeyond");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 10), 0);
  CHECK_EQ(sl_spool_ack(&s, 8), 0);
  sl_spool_close(&s);
  seg_path(path, sizeof(path), dir, 1); /* lose records 6..10 */
  CHECK_EQ(truncate(path, SEG_HDR + (long)(rec_size(1) + rec_size(2) +
                                            rec_size(3) + rec_size(4) +
                                            rec_size(5))),
           0);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.ack_beyond_end, 1);
  CHECK_EQ(rep.records, 0);
  CHECK_EQ(rep.next_seq, 9);
  CHECK_EQ(read_all(&s, seqs, 8, 8), 0);
  payload(9, p);
  CHECK_EQ(sl_spool_append(&s, p, payload_len(9), &got), 0);
  CHECK_EQ(got, 9);
  CHECK_EQ(read_all(&s, seqs, 8, 8), 1);
  CHECK_EQ(seqs[0], 9);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_corruption_found_while_reading_costs_that_record_only) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[32];
  long n;

  tmp_dir(dir, sizeof(dir), "runtime");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 10), 0);
  CHECK_EQ(sl_spool_flush(&s), 0);
  seg_path(path, sizeof(path), dir, 1);
  CHECK_EQ(poke(path, SEG_HDR + (long)(rec_size(1) + rec_size(2) + rec_size(3)) +
                          REC_HDR,
                0x01),
           0); /* record 4's payload */
  n = read_all(&s, seqs, 32, 32);
  CHECK_EQ(n, 9); /* before: 3, and 7 lost */
  CHECK(contiguous(seqs, 3, 1));
  CHECK(contiguous(seqs + 3, 6, 5));
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.lost_records, 1);
  CHECK_EQ(st.quarantined_records, 1);
  CHECK_EQ(st.quarantined_bytes, rec_size(4));
  /* appends go on */
  CHECK_EQ(append_range(&s, 11, 12), 0);
  n = read_all(&s, seqs, 32, 32);
  CHECK_EQ(n, 2);
  CHECK_EQ(seqs[0], 11);
  sl_spool_close(&s);
  /* and the next open finds the repair done */
  {
    struct sl_spool_report rep;
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.quarantine_files, 0);
    CHECK_EQ(rep.records, 11);
    CHECK_EQ(rep.lost_records, 1);
    n = read_all(&s, seqs, 32, 32);
    CHECK_EQ(n, 11);
    CHECK_EQ(seqs[3], 5);
    CHECK_EQ(seqs[10], 12);
    sl_spool_close(&s);
  }
  rm_rf(dir);
}

TEST(spool_kill_during_rollover_leaves_empty_or_torn_next_segment) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 64); /* a segment per record */
  uint64_t seqs[32];
  static const size_t sizes[] = {0, 1, 23, 24};
  size_t i;

  tmp_dir(dir, sizeof(dir), "rollover");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 10), 0);
  sl_spool_close(&s);
  for (i = 0; i < SL_ARRAY_SIZE(sizes); i++) {
    static const uint8_t hdr[24] = {'S', 'L', 'S', 'P', 1, 0, 0, 0, 11};
    seg_path(path, sizeof(path), dir, 11 + i);
    CHECK_EQ(write_file(path, hdr, sizes[i]), 0);
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.records, 10 + i);
    CHECK_EQ(rep.gaps, 0);
    CHECK_EQ(rep.quarantine_files, sizes[i] > 0 ? 1 : 0); /* 24: bad crc */
    CHECK_EQ(rep.next_seq, 11 + i);
    CHECK_EQ(read_all(&s, seqs, 32, 32), (long)(10 + i));
    CHECK(contiguous(seqs, (long)(10 + i), 1));
    CHECK_EQ(append_range(&s, 11 + i, 11 + i), 0); /* same name, new file */
    sl_spool_close(&s);
    CHECK(file_size(path) > 24);
  }
  CHECK_EQ(count_files(dir, ".seg"), 14);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.records, 14);
  sl_spool_close(&s);
  rm_rf(dir);
}

/* ---- reclaiming delivered space, write errors --------------------------- */

TEST(spool_delivered_space_is_reclaimed_long_before_the_segment_rolls) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_report rep;
  struct sl_spool_opts o;
  static uint8_t p[1000];
  long long peak = 0, d, last = 0;
  uint64_t seq, got;

  memset(&o, 0, sizeof(o));
  o.max_bytes = 1ull << 30;       /* the default: far over what is written */
  o.segment_bytes = 64ull << 20;  /* what the disk buffer passes for it */
  tmp_dir(dir, sizeof(dir), "reclaim");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  /* 8 MiB through, the consumer 100 records behind: before, all 8 MiB
   * stayed on disk until the 64 MiB segment rolled */
  for (seq = 1; seq <= 8192; seq++) {
    big_payload(seq, p, sizeof(p));
    CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
    CHECK_EQ(got, seq);
    if (seq % 64 == 0) {
      CHECK_EQ(sl_spool_flush(&s), 0);
      last = drain(&s, sizeof(p), 100);
      CHECK_EQ(last, (long long)seq);
      d = seg_disk_bytes(dir);
      if (d > peak)
        peak = d;
    }
  }
  CHECK(peak > 0);
  CHECK(peak < (2 << 20));
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.records, 100);
  CHECK(st.disk_bytes < (2 << 20));
  /* everything acked: the files go at once, not at the next append */
  CHECK_EQ(sl_spool_ack(&s, 8192), 0);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.records, 0);
  CHECK_EQ(st.disk_bytes, SEG_HDR); /* a fresh segment keeps next_seq */
  CHECK_EQ(st.segments, 1);
  CHECK_EQ(seg_disk_bytes(dir), 0);
  big_payload(8193, p, sizeof(p));
  CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
  CHECK_EQ(got, 8193);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 1);
  CHECK_EQ(rep.first_seq, 8193);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(drain(&s, sizeof(p), 0), 8193);
  sl_spool_close(&s);
  rm_rf(dir);
}

TMPFS_TEST(spool_fill_ack_cycles_on_small_tmpfs_never_hit_enospc, "2m") {
  char dir[192];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_opts o;
  static uint8_t p[1000];
  uint64_t seq = 0, got;
  int cycle, i;

  snprintf(dir, sizeof(dir), "%s/spool", mnt);
  memset(&o, 0, sizeof(o));
  o.max_bytes = 64ull << 20; /* over the volume, as a default would be */
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  /* 10 MiB through a 2 MiB volume, the backlog never over ~350 KiB */
  for (cycle = 0; cycle < 40; cycle++) {
    for (i = 0; i < 256; i++) {
      big_payload(seq + 1, p, sizeof(p));
      CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
      CHECK_EQ(got, ++seq);
    }
    CHECK_EQ(sl_spool_flush(&s), 0);
    CHECK_EQ(drain(&s, sizeof(p), 100), (long long)seq);
  }
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.write_errors, 0);
  CHECK_EQ(st.records, 100);
  CHECK_EQ(sl_spool_sync(&s, NULL), 0);
  sl_spool_close(&s);
}

TMPFS_TEST(spool_disk_full_is_reported_and_acks_free_room_for_the_buffered,
           "256k") {
  char dir[192];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_report rep;
  struct sl_spool_opts o;
  static uint8_t p[500];
  uint64_t seq, got, last_ok = 0;
  long long last_read;
  int rc = 0;

  snprintf(dir, sizeof(dir), "%s/spool", mnt);
  memset(&o, 0, sizeof(o));
  o.max_bytes = 64ull << 20;
  o.write_buffer = 4096;
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  for (seq = 1; seq < 10000; seq++) {
    big_payload(seq, p, sizeof(p));
    rc = sl_spool_append(&s, p, sizeof(p), &got);
    if (rc != 0)
      break;
    CHECK_EQ(got, seq);
    last_ok = seq;
  }
  CHECK_EQ(rc, -ENOSPC); /* reported, not swallowed */
  CHECK(last_ok > 100);
  CHECK_EQ(sl_spool_flush(&s), -ENOSPC);
  CHECK_EQ(sl_spool_flush(&s), -ENOSPC); /* and again: nothing half-done */
  sl_spool_stats(&s, &st);
  CHECK(st.write_errors >= 3);
  CHECK(st.flushed_seq < last_ok); /* what may not be acked to producers */
  CHECK_EQ(st.next_seq, last_ok + 1);
  /* the consumer still gets every written record, and its acks give the
   * space back to the buffered ones */
  last_read = drain(&s, sizeof(p), 0);
  CHECK_EQ(last_read, (long long)st.flushed_seq);
  CHECK_EQ(sl_spool_flush(&s), 0);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.flushed_seq, last_ok);
  CHECK_EQ(st.records, last_ok - (uint64_t)last_read);
  for (seq = last_ok + 1; seq <= last_ok + 20; seq++) {
    big_payload(seq, p, sizeof(p));
    CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
    CHECK_EQ(got, seq);
  }
  CHECK_EQ(sl_spool_sync(&s, NULL), 0);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.lost_records, 0);
  CHECK_EQ(rep.first_seq, (uint64_t)last_read + 1);
  CHECK_EQ(rep.records, last_ok + 20 - (uint64_t)last_read);
  CHECK_EQ(drain(&s, sizeof(p), 0), (long long)(last_ok + 20));
  sl_spool_close(&s);
}

TMPFS_TEST(spool_failed_big_append_leaves_no_half_record_behind, "256k") {
  char dir[192];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_report rep;
  struct sl_spool_opts o;
  uint8_t *big = malloc(1 << 20);
  static uint8_t p[100];
  uint64_t seq, got;

  CHECK(big != NULL);
  snprintf(dir, sizeof(dir), "%s/spool", mnt);
  memset(&o, 0, sizeof(o));
  o.max_bytes = 64ull << 20;
  o.write_buffer = 1024;
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  for (seq = 1; seq <= 10; seq++) {
    big_payload(seq, p, sizeof(p));
    CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
  }
  big_payload(11, big, 1 << 20);
  CHECK_EQ(sl_spool_append(&s, big, 1 << 20, &got), -ENOSPC);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.next_seq, 11);
  CHECK_EQ(st.records, 10);
  CHECK_EQ(st.flushed_seq, 10); /* the earlier ones went out first */
  CHECK(st.write_errors >= 1);
  big_payload(11, p, sizeof(p));
  CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
  CHECK_EQ(got, 11);
  sl_spool_close(&s);
  /* no torn record for the next open to quarantine */
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.quarantined_bytes, 0);
  CHECK_EQ(rep.records, 11);
  CHECK_EQ(drain(&s, sizeof(p), 0), 11);
  sl_spool_close(&s);
  free(big);
}

TEST(spool_drop_skips_one_record_without_acking_the_ones_before) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  struct sl_spool_rec r[16];

  tmp_dir(dir, sizeof(dir), "drop");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 10), 0);
  CHECK_EQ(sl_spool_read(&s, r, 16, 1 << 20), 10);
  CHECK_EQ(sl_spool_drop(&s, 4), 0); /* 1..3 are still on their way */
  CHECK_EQ(sl_spool_drop(&s, 5), 0);
  CHECK_EQ(sl_spool_drop(&s, 11), SL_EINVAL); /* never read */
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.ack_seq, 0);
  CHECK_EQ(st.records, 10);
  CHECK_EQ(sl_spool_sync(&s, NULL), 0);
  sl_spool_close(&s);
  /* a crash now replays 1..3 (and the dropped ones: drops are not kept) */
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.first_seq, 1);
  CHECK_EQ(rep.records, 10);
  CHECK_EQ(sl_spool_read(&s, r, 16, 1 << 20), 10);
  CHECK_EQ(sl_spool_drop(&s, 4), 0);
  CHECK_EQ(sl_spool_ack(&s, 2), 0);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.ack_seq, 2);
  CHECK_EQ(sl_spool_ack(&s, 3), 0); /* 3 acked: 4 dropped follows it */
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.ack_seq, 4);
  CHECK_EQ(st.records, 6);
  CHECK_EQ(sl_spool_drop(&s, 5), 0); /* right behind the ack: an ack */
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.ack_seq, 5);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.first_seq, 6);
  CHECK_EQ(rep.records, 5);
  sl_spool_close(&s);
  rm_rf(dir);
}

/* ---- resync past corruption --------------------------------------------- */

/* Write img to dir/<first>.seg in a fresh dir. */
static int put_segment(const char *dir, uint64_t first, const uint8_t *img,
                       size_t n) {
  char path[256];
  rm_rf(dir);
  if (mkdir(dir, 0755) != 0)
    return -1;
  seg_path(path, sizeof(path), dir, first);
  return write_file(path, img, n);
}

TEST(spool_bad_segment_header_keeps_every_record_behind_it) {
  char dir[128];
  uint8_t *img;
  long len, at;
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[16];

  tmp_dir(dir, sizeof(dir), "hdr");
  CHECK_EQ(make_five(dir, &img, &len), 0);
  for (at = 0; at < SEG_HDR; at++) {
    img[at] ^= 0x04;
    CHECK_EQ(put_segment(dir, 1, img, (size_t)len), 0);
    img[at] ^= 0x04;
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.records, 5); /* before: 0, the file went to quarantine */
    CHECK_EQ(rep.lost_records, 0);
    CHECK_EQ(rep.quarantine_files, 1);
    CHECK_EQ(rep.quarantined_bytes, SEG_HDR);
    CHECK(strstr(rep.msg, "header") != NULL);
    CHECK_EQ(read_all(&s, seqs, 16, 16), 5);
    CHECK(contiguous(seqs, 5, 1));
    CHECK_EQ(append_range(&s, 6, 6), 0);
    sl_spool_close(&s);
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.quarantine_files, 0);
    CHECK_EQ(rep.records, 6);
    CHECK_EQ(count_files(dir, ".seg"), 1);
    sl_spool_close(&s);
  }
  free(img);
  rm_rf(dir);
}

TEST(spool_junk_spliced_between_records_costs_no_record) {
  char dir[128];
  uint8_t *img, *bad;
  long len, rec3;
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[16];
  size_t i, junk = 100;

  tmp_dir(dir, sizeof(dir), "splice");
  CHECK_EQ(make_five(dir, &img, &len), 0);
  rec3 = SEG_HDR + (long)(rec_size(1) + rec_size(2));
  bad = malloc((size_t)len + junk);
  CHECK(bad != NULL);
  memcpy(bad, img, (size_t)rec3);
  for (i = 0; i < junk; i++)
    bad[rec3 + (long)i] = (uint8_t)(i * 97 + 1);
  memcpy(bad + rec3 + junk, img + rec3, (size_t)(len - rec3));
  CHECK_EQ(put_segment(dir, 1, bad, (size_t)len + junk), 0);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 5);
  CHECK_EQ(rep.lost_records, 0);
  CHECK_EQ(rep.quarantined_bytes, junk);
  CHECK_EQ(read_all(&s, seqs, 16, 16), 5);
  CHECK(contiguous(seqs, 5, 1));
  sl_spool_close(&s);
  free(bad);
  free(img);
  rm_rf(dir);
}

/* A record as the spool frames it, into out; its size. */
static size_t frame(uint8_t *out, uint64_t seq, const void *p, uint32_t n) {
  uint32_t crc;
  int i;
  for (i = 0; i < 4; i++)
    out[i] = (uint8_t)(n >> (8 * i));
  for (i = 0; i < 8; i++)
    out[8 + i] = (uint8_t)(seq >> (8 * i));
  crc = sl_spool_crc32c(sl_spool_crc32c(0, out, 4), out + 8, 8);
  crc = sl_spool_crc32c(crc, p, n);
  for (i = 0; i < 4; i++)
    out[4 + i] = (uint8_t)(crc >> (8 * i));
  memcpy(out + REC_HDR, p, n);
  return REC_HDR + n;
}

TEST(spool_records_forged_in_a_payload_do_not_replace_the_real_ones) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint8_t evil[200];
  uint64_t seqs[16], got;
  long rec3 = SEG_HDR + (long)(rec_size(1) + rec_size(2));
  size_t n;
  int tail_junk;

  /* an event whose bytes hold "records" 4 and 5, and the payload's length
   * field flipped, so the scan must look inside the payload */
  for (tail_junk = 0; tail_junk < 2; tail_junk++) {
    tmp_dir(dir, sizeof(dir), "forge");
    CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
    CHECK_EQ(append_range(&s, 1, 2), 0);
    memset(evil, 'x', sizeof(evil));
    n = 7;
    n += frame(evil + n, 4, "FAKE4", 5);
    n += frame(evil + n, 5, "FAKE5", 5);
    n += tail_junk ? 30 : 0;
    CHECK_EQ(sl_spool_append(&s, evil, n, &got), 0);
    CHECK_EQ(got, 3);
    CHECK_EQ(append_range(&s, 4, 6), 0);
    sl_spool_close(&s);
    seg_path(path, sizeof(path), dir, 1);
    CHECK_EQ(poke(path, rec3 + 1, 0x01), 0);
    CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
    CHECK_EQ(rep.records, 5);
    CHECK_EQ(rep.lost_records, 1);
    /* read_all checks every payload: a fake would fail it */
    CHECK_EQ(read_all(&s, seqs, 16, 16), 5);
    CHECK_EQ(seqs[0], 1);
    CHECK_EQ(seqs[1], 2);
    CHECK(contiguous(seqs + 2, 3, 4));
    sl_spool_close(&s);
    rm_rf(dir);
  }
}

TEST(spool_two_bad_stretches_in_one_segment_cost_two_records) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[64], seq, off = SEG_HDR;
  long n, j;

  tmp_dir(dir, sizeof(dir), "two");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 40), 0);
  sl_spool_close(&s);
  seg_path(path, sizeof(path), dir, 1);
  for (seq = 1; seq < 10; seq++)
    off += rec_size(seq);
  CHECK_EQ(poke(path, (long)off + 2, 0x10), 0); /* 10's length */
  for (; seq < 30; seq++)
    off += rec_size(seq);
  CHECK_EQ(poke(path, (long)off + REC_HDR, 0x10), 0); /* 30's payload */
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 38);
  CHECK_EQ(rep.lost_records, 2);
  CHECK_EQ(rep.gaps, 2);
  CHECK_EQ(rep.quarantine_files, 2);
  n = read_all(&s, seqs, 64, 7);
  CHECK_EQ(n, 38);
  for (j = 0, seq = 1; seq <= 40; seq++) {
    if (seq == 10 || seq == 30)
      continue;
    CHECK_EQ(seqs[j], seq);
    j++;
  }
  CHECK_EQ(sl_spool_ack(&s, 40), 0);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 0);
  CHECK_EQ(rep.quarantine_files, 0);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_roll_without_a_free_fd_is_emfile_and_the_next_append_works) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 64); /* a segment per record */
  struct rlimit old, low;
  static int fds[512];
  int n = 0, fd, rc;
  uint8_t p[128];
  uint64_t got;

  tmp_dir(dir, sizeof(dir), "emfile");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 3), 0);
  CHECK_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 256;
  CHECK_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  while (n < 512 && (fd = dup(0)) >= 0)
    fds[n++] = fd;
  payload(4, p);
  rc = sl_spool_append(&s, p, payload_len(4), &got);
  sl_spool_stats(&s, &st);
  close(fds[--n]);
  close(fds[--n]);
  if (rc == -EMFILE) { /* else the CHECKs below report it, fds restored */
    rc = sl_spool_append(&s, p, payload_len(4), &got);
  } else {
    rc = -1000 + rc;
  }
  while (n > 0)
    close(fds[--n]);
  CHECK_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  CHECK_EQ(rc, 0);
  CHECK_EQ(got, 4);
  CHECK_EQ(st.next_seq, 4); /* the failed append changed nothing */
  CHECK(st.write_errors >= 1);
  CHECK_EQ(sl_spool_sync(&s, NULL), 0);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 4);
  CHECK_EQ(rep.quarantine_files, 0);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_record_forged_with_the_next_segments_seq_cannot_replace_it) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 400);
  uint8_t evil[360]; /* with its header, fills a 400-byte segment */
  uint64_t seqs[16], got;
  size_t n = sizeof(evil) - REC_HDR - 5;

  tmp_dir(dir, sizeof(dir), "forgenext");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 3), 0);
  /* seq 4 fills a segment alone; its bytes end in a "record 5", which is
   * the name of the segment after it */
  memset(evil, 'x', sizeof(evil));
  frame(evil + n, 5, "FAKE5", 5);
  CHECK_EQ(sl_spool_append(&s, evil, sizeof(evil), &got), 0);
  CHECK_EQ(got, 4);
  CHECK_EQ(append_range(&s, 5, 8), 0);
  sl_spool_close(&s);
  seg_path(path, sizeof(path), dir, 5);
  CHECK(file_size(path) > 0);
  seg_path(path, sizeof(path), dir, 4);
  CHECK_EQ(file_size(path), (long)(SEG_HDR + REC_HDR + sizeof(evil)));
  CHECK_EQ(poke(path, SEG_HDR + 1, 0x01), 0); /* 4's length */
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 7);
  CHECK_EQ(rep.lost_records, 1);
  CHECK_EQ(read_all(&s, seqs, 16, 16), 7); /* checks every payload */
  CHECK(contiguous(seqs, 3, 1));
  CHECK(contiguous(seqs + 3, 4, 5));
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_open_killed_in_the_middle_of_a_split_loses_nothing_more) {
  char dir[128], path[256];
  uint8_t *img, copy[1024];
  long len, rec3, rec4;
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 0);
  uint64_t seqs[16];
  uint32_t crc;
  int i;

  tmp_dir(dir, sizeof(dir), "splitcrash");
  CHECK_EQ(make_five(dir, &img, &len), 0);
  rec3 = SEG_HDR + (long)(rec_size(1) + rec_size(2));
  rec4 = rec3 + (long)rec_size(3);
  img[rec3 + REC_HDR] ^= 0x20; /* 3 is bad */
  CHECK_EQ(put_segment(dir, 1, img, (size_t)len), 0);
  /* the copy of 4..5 is in place, the original not yet truncated */
  memcpy(copy, "SLSP\1\0\0\0\4\0\0\0\0\0\0\0\0\0\0\0", 20);
  crc = sl_spool_crc32c(0, copy, 20);
  for (i = 0; i < 4; i++)
    copy[20 + i] = (uint8_t)(crc >> (8 * i));
  memcpy(copy + SEG_HDR, img + rec4, (size_t)(len - rec4));
  seg_path(path, sizeof(path), dir, 4);
  CHECK_EQ(write_file(path, copy, (size_t)(SEG_HDR + len - rec4)), 0);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 4);
  CHECK_EQ(rep.lost_records, 1);
  CHECK_EQ(read_all(&s, seqs, 16, 16), 4);
  CHECK(contiguous(seqs, 2, 1));
  CHECK(contiguous(seqs + 2, 2, 4));
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.records, 4);
  sl_spool_close(&s);
  free(img);
  rm_rf(dir);
}

TMPFS_TEST(spool_flush_on_a_disk_full_of_delivered_bytes_gives_them_back,
           "256k") {
  char dir[192], filler[256];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_report rep;
  struct sl_spool_opts o;
  struct statvfs vfs;
  static uint8_t p[500], zero[4096];
  uint64_t seq, got;
  long long avail;
  FILE *f;
  int rc = 0;

  snprintf(dir, sizeof(dir), "%s/spool", mnt);
  memset(&o, 0, sizeof(o));
  o.max_bytes = 64ull << 20;
  o.write_buffer = 4096;
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  /* 50 KB delivered (under the 64 KiB that deletes it at ack time) */
  for (seq = 1; seq <= 100; seq++) {
    big_payload(seq, p, sizeof(p));
    CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
  }
  CHECK_EQ(sl_spool_flush(&s), 0);
  CHECK_EQ(drain(&s, sizeof(p), 0), 100);
  /* something else fills the volume */
  CHECK_EQ(statvfs(mnt, &vfs), 0);
  avail = (long long)vfs.f_bavail * (long long)vfs.f_frsize;
  snprintf(filler, sizeof(filler), "%s/filler", mnt);
  CHECK((f = fopen(filler, "wb")) != NULL);
  while (avail > 0 && fwrite(zero, 1, sizeof(zero), f) == sizeof(zero))
    avail -= (long long)sizeof(zero);
  fclose(f);
  for (seq = 101; seq <= 120 && rc == 0; seq++) {
    big_payload(seq, p, sizeof(p));
    rc = sl_spool_append(&s, p, sizeof(p), &got);
  }
  if (rc == 0)
    rc = sl_spool_flush(&s);
  /* either the append's own flush or flush failed at first... */
  sl_spool_stats(&s, &st);
  CHECK(st.write_errors >= 1);
  /* ...and a flush gets the space of the delivered records back */
  CHECK_EQ(sl_spool_flush(&s), 0);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.flushed_seq, st.next_seq - 1);
  CHECK(st.next_seq > 105);
  CHECK_EQ(st.records, st.next_seq - 101);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.first_seq, 101);
  CHECK_EQ(rep.records, st.next_seq - 101);
  sl_spool_close(&s);
}

TEST(spool_acked_prefix_of_a_lagging_segment_is_punched_and_reopens_clean) {
  char dir[128];
  struct sl_spool s;
  struct sl_spool_stats st, st2;
  struct sl_spool_report rep;
  struct sl_spool_opts o;
  struct sl_spool_rec r[64];
  static uint8_t p[1000];
  long long before, after;
  uint64_t seq, got, last = 0;
  int k;

  memset(&o, 0, sizeof(o));
  o.max_bytes = 1ull << 30;
  o.segment_bytes = 2u << 20;
  tmp_dir(dir, sizeof(dir), "punch");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  for (seq = 1; seq <= 3000; seq++) { /* ~3 MiB: two segments */
    big_payload(seq, p, sizeof(p));
    CHECK_EQ(sl_spool_append(&s, p, sizeof(p), &got), 0);
  }
  CHECK_EQ(sl_spool_flush(&s), 0);
  before = seg_disk_bytes(dir);
  /* the consumer gets through half of the first segment */
  while (last < 1000 && (k = sl_spool_read(&s, r, 64, 1 << 20)) > 0)
    last = r[k - 1].seq;
  CHECK_EQ(sl_spool_ack(&s, 1000), 0);
  sl_spool_stats(&s, &st);
  after = seg_disk_bytes(dir);
  CHECK(st.segments >= 2);
  CHECK(before - after > 900 << 10); /* before: nothing came back */
  CHECK(st.disk_bytes < 2100u << 10);
  CHECK(st.disk_bytes >= st.bytes);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.lost_records, 0);
  CHECK_EQ(rep.first_seq, 1001);
  CHECK_EQ(rep.records, 2000);
  sl_spool_stats(&s, &st2);
  CHECK_EQ(st2.disk_bytes, st.disk_bytes);
  CHECK_EQ(drain(&s, sizeof(p), 0), 3000);
  sl_spool_close(&s);
  rm_rf(dir);
}

TEST(spool_repair_while_reading_keeps_rewind_and_acks_consistent) {
  char dir[128], path[256];
  struct sl_spool s;
  struct sl_spool_stats st;
  struct sl_spool_report rep;
  struct sl_spool_opts o = opts_of(1 << 20, 400);
  struct sl_spool_rec r[8];
  uint64_t seqs[128], seqs2[128], first2 = 0, seq;
  long n, n2, i;

  tmp_dir(dir, sizeof(dir), "repairrw");
  CHECK_EQ(sl_spool_init(&s, dir, &o, NULL), 0);
  CHECK_EQ(append_range(&s, 1, 60), 0);
  CHECK_EQ(sl_spool_flush(&s), 0);
  CHECK_EQ(sl_spool_read(&s, r, 5, 1 << 20), 5); /* 1..5 out, not acked */
  for (seq = 2; seq <= 60 && first2 == 0; seq++) {
    seg_path(path, sizeof(path), dir, seq);
    if (file_size(path) > 0)
      first2 = seq;
  }
  CHECK(first2 > 6);
  /* the second segment (rolled, not active) goes bad under the reader */
  CHECK_EQ(poke(path, SEG_HDR + (long)rec_size(first2) + REC_HDR + 2, 0x08),
           0);
  n = read_all(&s, seqs, 128, 7);
  CHECK_EQ(n, 54); /* 6..60 but first2 + 1 */
  sl_spool_rewind(&s);
  n2 = read_all(&s, seqs2, 128, 3);
  CHECK_EQ(n2, 59); /* from 1 again: the same records */
  CHECK(contiguous(seqs2, 5, 1));
  for (i = 0; i < n; i++)
    CHECK_EQ(seqs2[i + 5], seqs[i]);
  CHECK_EQ(sl_spool_ack(&s, first2), 0);
  sl_spool_stats(&s, &st);
  CHECK_EQ(st.records, 60 - first2 - 1);
  CHECK_EQ(st.lost_records, 1);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.quarantine_files, 0);
  CHECK_EQ(rep.first_seq, first2 + 2);
  CHECK_EQ(rep.records, 60 - first2 - 1);
  CHECK_EQ(read_all(&s, seqs, 128, 16), (long)(60 - first2 - 1));
  CHECK_EQ(sl_spool_ack(&s, 60), 0);
  sl_spool_close(&s);
  CHECK_EQ(sl_spool_init(&s, dir, &o, &rep), 0);
  CHECK_EQ(rep.records, 0);
  CHECK_EQ(rep.next_seq, 61);
  sl_spool_close(&s);
  rm_rf(dir);
}
