/* statefile.h - small versioned state files written crash-safe: a rule's
 * snapshot() kept across restarts (rules.persist). A file is a 32-byte
 * header (magic "SLRS", format version, payload length, CRC-32C of the
 * payload, the time it was written) and the payload. A write goes to a
 * temp file that is fsynced and renamed over the old one, then the folder
 * is fsynced: after a crash at any point the file is the old or the new
 * one, whole. Blocking I/O; callers keep payloads small. */
#ifndef SL_STATEFILE_H
#define SL_STATEFILE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define SL_STATEFILE_VERSION 1
#define SL_STATEFILE_HEADER 32

/* Write p (len bytes) to path crash-safe. Returns 0, or a negative code
 * with why filled (the old file, if any, stays). */
int sl_statefile_write(const char *path, const uint8_t *p, size_t len,
                       char *why, size_t whylen);

/* Read path's payload into out (reset first) and the time it was written
 * (ns since the epoch) into *saved_ns. Returns 0; SL_ENOENT when there is
 * no file; SL_EPROTO when it is not a whole state file of a version we
 * read (why says what is wrong); another negative code for I/O errors.
 * max bounds the payload. */
int sl_statefile_read(const char *path, struct sl_buf *out, size_t max,
                      int64_t *saved_ns, char *why, size_t whylen);

/* CRC-32C (Castagnoli), as the disk buffers use. */
uint32_t sl_statefile_crc(const uint8_t *p, size_t len);

#endif
