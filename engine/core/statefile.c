/* statefile.c - see statefile.h. */
#include "statefile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static const char magic[4] = {'S', 'L', 'R', 'S'};

uint32_t sl_statefile_crc(const uint8_t *p, size_t len) {
  uint32_t c = 0xffffffffu;
  size_t i;
  int k;
  for (i = 0; i < len; i++) {
    c ^= p[i];
    for (k = 0; k < 8; k++)
      c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
  }
  return ~c;
}

static void put_le(uint8_t *p, uint64_t v, int n) {
  int i;
  for (i = 0; i < n; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  int i;
  for (i = n - 1; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

static int write_all(int fd, const uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* fsync the folder holding path, so the rename is on disk. */
static int sync_dir(const char *path) {
  char *copy = strdup(path);
  int fd, rc = -1;
  if (copy == NULL)
    return -1;
  fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    rc = fsync(fd);
    close(fd);
  }
  free(copy);
  return rc;
}

int sl_statefile_write(const char *path, const uint8_t *p, size_t len,
                       char *why, size_t whylen) {
  uint8_t h[SL_STATEFILE_HEADER];
  char tmp[4200];
  int fd;

  memset(h, 0, sizeof(h));
  memcpy(h, magic, 4);
  h[4] = SL_STATEFILE_VERSION;
  put_le(h + 8, len, 8);
  put_le(h + 16, sl_statefile_crc(p, len), 4);
  put_le(h + 24, (uint64_t)sl_now_ns(), 8);
  if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
    snprintf(why, whylen, "path too long");
    return SL_EINVAL;
  }
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(why, whylen, "cannot create %s: %s", tmp, strerror(errno));
    return SL_EIO;
  }
  if (write_all(fd, h, sizeof(h)) != 0 || write_all(fd, p, len) != 0 ||
      fsync(fd) != 0) {
    snprintf(why, whylen, "cannot write %s: %s", tmp, strerror(errno));
    close(fd);
    unlink(tmp);
    return SL_EIO;
  }
  close(fd);
  if (rename(tmp, path) != 0) {
    snprintf(why, whylen, "cannot rename %s: %s", tmp, strerror(errno));
    unlink(tmp);
    return SL_EIO;
  }
  if (sync_dir(path) != 0) {
    snprintf(why, whylen, "cannot fsync the folder of %s: %s", path,
             strerror(errno));
    return SL_EIO;
  }
  return 0;
}

int sl_statefile_read(const char *path, struct sl_buf *out, size_t max,
                      int64_t *saved_ns, char *why, size_t whylen) {
  uint8_t h[SL_STATEFILE_HEADER];
  FILE *f = fopen(path, "rb");
  uint64_t len;
  size_t got;
  int rc = SL_EPROTO;

  sl_buf_reset(out);
  if (f == NULL) {
    if (errno == ENOENT)
      return SL_ENOENT;
    snprintf(why, whylen, "cannot open: %s", strerror(errno));
    return SL_EIO;
  }
  got = fread(h, 1, sizeof(h), f);
  len = got == sizeof(h) ? get_le(h + 8, 8) : 0;
  if (got != sizeof(h) || memcmp(h, magic, 4) != 0) {
    snprintf(why, whylen, "not a sluice state file (bad header)");
  } else if (h[4] != SL_STATEFILE_VERSION) {
    snprintf(why, whylen, "format version %u (this sluice reads %d)",
             (unsigned)h[4], SL_STATEFILE_VERSION);
  } else if (len > max) {
    snprintf(why, whylen, "payload of %llu bytes (at most %zu)",
             (unsigned long long)len, max);
  } else if (sl_buf_reserve(out, (size_t)len + 1) != 0) {
    snprintf(why, whylen, "out of memory");
    rc = SL_ENOMEM;
  } else if (fread(out->data, 1, (size_t)len + 1, f) != len) {
    snprintf(why, whylen, "payload is not %llu bytes (truncated or grown)",
             (unsigned long long)len);
  } else if (sl_statefile_crc(out->data, (size_t)len) !=
             (uint32_t)get_le(h + 16, 4)) {
    snprintf(why, whylen, "checksum mismatch");
  } else {
    out->len = (size_t)len;
    *saved_ns = (int64_t)get_le(h + 24, 8);
    rc = 0;
  }
  fclose(f);
  return rc;
}
