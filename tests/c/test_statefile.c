/* test_statefile.c - the rule state files of rules.persist: a round trip,
 * and every way a file can be wrong refused with the reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "statefile.h"
#include "test.h"

static void tmp_path(char *out, size_t n, const char *name) {
  snprintf(out, n, "/tmp/sl-statefile-%d-%s", (int)getpid(), name);
}

static void put_file(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  fwrite(p, 1, n, f);
  fclose(f);
}

static size_t get_file(const char *path, uint8_t *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

TEST(statefile_round_trip_keeps_the_bytes_and_the_time) {
  char path[256], why[256], tmp[300];
  struct sl_buf out;
  int64_t at = 0, before = sl_now_ns();
  tmp_path(path, sizeof(path), "rt.state");
  sl_buf_init(&out);
  CHECK_EQ(sl_statefile_write(path, (const uint8_t *)"\x81\xa1n\x03", 4, why,
                              sizeof(why)), 0);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  CHECK(access(tmp, F_OK) != 0); /* renamed away */
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), 0);
  CHECK_EQ(out.len, 4);
  CHECK(memcmp(out.data, "\x81\xa1n\x03", 4) == 0);
  CHECK(at >= before && at <= sl_now_ns());
  /* an empty payload is a payload */
  CHECK_EQ(sl_statefile_write(path, (const uint8_t *)"", 0, why, sizeof(why)), 0);
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), 0);
  CHECK_EQ(out.len, 0);
  unlink(path);
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), SL_ENOENT);
  sl_buf_close(&out);
}

TEST(statefile_refuses_damaged_or_foreign_files) {
  char path[256], why[256];
  uint8_t good[64], bad[64];
  struct sl_buf out;
  int64_t at;
  size_t n;
  tmp_path(path, sizeof(path), "bad.state");
  sl_buf_init(&out);
  CHECK_EQ(sl_statefile_write(path, (const uint8_t *)"hello", 5, why, sizeof(why)), 0);
  n = get_file(path, good, sizeof(good));
  CHECK_EQ(n, SL_STATEFILE_HEADER + 5);

  put_file(path, good, n - 1); /* truncated */
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), SL_EPROTO);
  CHECK_STR(why, "payload is not 5 bytes (truncated or grown)");
  memcpy(bad, good, n);
  bad[n] = 'x'; /* grown */
  put_file(path, bad, n + 1);
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), SL_EPROTO);
  CHECK_STR(why, "payload is not 5 bytes (truncated or grown)");
  memcpy(bad, good, n);
  bad[SL_STATEFILE_HEADER] ^= 1; /* a flipped bit */
  put_file(path, bad, n);
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), SL_EPROTO);
  CHECK_STR(why, "checksum mismatch");
  memcpy(bad, good, n);
  bad[4] = 2; /* a later format */
  put_file(path, bad, n);
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), SL_EPROTO);
  CHECK_STR(why, "format version 2 (this sluice reads 1)");
  put_file(path, "{}", 2);
  CHECK_EQ(sl_statefile_read(path, &out, 1024, &at, why, sizeof(why)), SL_EPROTO);
  CHECK_STR(why, "not a sluice state file (bad header)");
  put_file(path, good, n);
  CHECK_EQ(sl_statefile_read(path, &out, 4, &at, why, sizeof(why)), SL_EPROTO);
  CHECK_STR(why, "payload of 5 bytes (at most 4)");
  unlink(path);
  sl_buf_close(&out);
}

TEST(statefile_crc_is_crc32c) {
  CHECK_EQ(sl_statefile_crc((const uint8_t *)"123456789", 9), 0xe3069283u);
}
