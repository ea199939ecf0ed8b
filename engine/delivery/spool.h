/* spool.h - a durable FIFO of opaque records in segment files under one
 * directory: an output's disk buffer and spill. The spool owns its
 * directory (segments, the ack file, quarantine/) and copies every record it
 * is given; records handed out by sl_spool_read point into its read buffer.
 *
 * On disk: <dir>/<16 hex digits of the first seq>.seg, each a 24-byte header
 * ("SLSP", version, first seq, CRC32C) then records of
 *   u32 length | u32 CRC32C(length, seq, payload) | u64 seq | payload
 * (little endian). Sequences start at 1, are contiguous, and never go back,
 * across segments and restarts. <dir>/ack holds the acknowledged position in
 * two checksummed slots that are overwritten in turn.
 *
 * Threads: every function runs on the loop thread, except sl_spool_sync,
 * which may run on any thread (a uv_queue_work callback) while the loop
 * thread keeps calling the others. A small mutex guards what the two share
 * (the write buffer, the active segment's fd, the list of segments awaiting
 * fdatasync); sync holds it only to write out the buffer and dup an fd,
 * never across an fsync, so appends never wait for one. sl_spool_close must
 * not overlap a sync. Nothing here uses libuv: the engine schedules
 * sl_spool_sync itself (fsync = "always": after each batch of appends;
 * "interval": from a timer; "never": not at all).
 *
 * Space: delivered records leave the disk promptly. Segment files holding
 * only acknowledged records are deleted (the active one too, once 64 KiB or
 * more); the active segment rolls early once segment_bytes/16 (64 KiB..1
 * MiB) of it is acknowledged; the acknowledged prefix of the oldest segment
 * is punched out (FALLOC_FL_PUNCH_HOLE, every 256 KiB acked, and at once
 * when a write fails) and no longer counted in disk_bytes / max_bytes. So
 * the disk holds the backlog plus less than 256 KiB. Where punching is not
 * supported, a full disk whose active segment is acknowledged up to what is
 * written moves the still-buffered records to a new file instead. The next
 * open skips a punched (acknowledged) stretch in place. A failed flush
 * tries the reclaim before reporting the error.
 *
 * Memory: the write buffer, one read batch, 16 bytes per record read and not
 * yet acknowledged, one small entry per segment. Records stay on disk.
 * Files: one fd per rolled segment not yet synced (or acked), plus the
 * active segment, the read cursor's segment, the ack file and the dir. */
#ifndef SL_SPOOL_H
#define SL_SPOOL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "common.h"

#define SL_SPOOL_SEGMENT_DEFAULT (64u << 20) /* the most segment_bytes 0 gives */
#define SL_SPOOL_SEGMENT_MIN (1u << 20)      /* the least it gives */
#define SL_SPOOL_RECORD_DEFAULT (16u << 20)
/* A length field above this is corruption, whatever the configuration. */
#define SL_SPOOL_RECORD_MAX (256u << 20)
#define SL_SPOOL_WRITE_BUFFER_DEFAULT (64u << 10)

struct sl_spool_opts {
  uint64_t max_bytes;     /* disk budget for segment files; required */
  uint64_t segment_bytes; /* roll to a new segment past this; 0:
                             max_bytes/8 within 1..64 MiB */
  uint32_t max_record;    /* largest payload accepted; 0: 16 MiB */
  uint32_t write_buffer;  /* appends gather here before write(); 0: 64 KiB */
};

/* What sl_spool_init found and repaired. Nothing in it stops the spool from
 * opening; msg holds the first problems in words, with file and offset. */
struct sl_spool_report {
  uint64_t records;           /* unacknowledged records ready to replay */
  uint64_t bytes;             /* their size on disk, framing included */
  uint32_t segments;          /* segment files kept */
  uint64_t first_seq;         /* first unacknowledged record */
  uint64_t next_seq;          /* what the next append gets */
  uint32_t quarantine_files;  /* files written to or moved into quarantine/ */
  uint64_t quarantined_bytes; /* bytes moved aside */
  uint64_t lost_records;      /* unacked seqs missing between surviving
                                 records: a corrupt middle or lost tail */
  uint32_t gaps;              /* how many such holes */
  int ack_reset;              /* ack file missing or corrupt with records on
                                 disk: replaying from the oldest record */
  int ack_beyond_end;         /* ack past the last record (its tail was lost):
                                 nothing to replay, new seqs follow the ack */
  uint32_t ignored_files;     /* names in dir that are not ours; untouched */
  char msg[1024];
};

/* Counters for metrics, from sl_spool_stats. */
struct sl_spool_stats {
  uint64_t records;      /* backlog: appended and not acknowledged */
  uint64_t bytes;        /* their size on disk, framing included */
  uint64_t unread;       /* not yet returned by read since the last rewind */
  uint64_t disk_bytes;   /* segment files minus what is already reclaimed:
                            what max_bytes bounds */
  uint32_t segments;
  uint64_t next_seq;     /* seq of the next append */
  uint64_t ack_seq;      /* records <= this are acknowledged */
  uint64_t read_seq;     /* the next record sl_spool_read returns */
  uint64_t durable_seq;  /* records <= this survived an sl_spool_sync */
  uint64_t flushed_seq;  /* records <= this are in the kernel (see flush) */
  uint64_t appended;     /* since init */
  uint64_t acked;        /* records acknowledged (or dropped) since init */
  uint64_t lost_records; /* found corrupt while reading since init */
  /* corruption found at init plus while reading, since init: */
  uint64_t quarantined_records; /* seqs lost to it */
  uint64_t quarantined_bytes;   /* bytes moved aside or skipped */
  uint64_t write_errors; /* failed write()/open() of segments since init */
  uint64_t fsync_errors; /* failed fdatasync/fsync since init */
};

/* One record from sl_spool_read. data stays valid until the next
 * sl_spool_read, sl_spool_ack, sl_spool_rewind or sl_spool_close. */
struct sl_spool_rec {
  uint64_t seq;
  const uint8_t *data;
  uint32_t len;
};

struct sl_spool_seg;     /* spool.c: one segment file */
struct sl_spool_mark;    /* spool.c: where a read, unacked record starts */
struct sl_spool_handoff; /* spool.c: a rolled segment awaiting fdatasync */

/* Lives in caller memory; fields are private, read them via sl_spool_stats. */
struct sl_spool {
  char *dir;
  int dirfd;  /* holds the flock that keeps a second process out */
  int ackfd;
  uint64_t max_bytes, segment_bytes;
  uint32_t max_record, write_buffer;

  /* loop thread only */
  struct sl_spool_seg *segs; /* oldest first; the active one is last */
  uint32_t nsegs, capsegs;
  uint64_t next_seq, ack_seq, ack_gen;
  uint32_t aseg, rseg;      /* ack and read cursors: segment index, */
  uint64_t aoff, roff;      /* file offset, and the seq found there */
  uint64_t aseq, rseq;
  struct sl_spool_mark *marks; /* read and unacked, for ack and rewind */
  size_t mhead, mlen, mcap;
  int rfd;                  /* the read cursor's segment, or -1 */
  uint64_t rfd_first;
  struct sl_buf rbuf;
  size_t *rpos;             /* scratch: record offsets in rbuf */
  size_t rposcap;
  uint64_t disk_bytes, appended, acked, lost_records;
  uint64_t quarantined_records, quarantined_bytes;
  uint64_t reclaim_bytes;   /* roll early once this much of the active
                               segment is acknowledged */
  int no_punch;             /* the file system cannot punch holes */

  /* shared with sl_spool_sync, under lock */
  pthread_mutex_t lock;
  int wfd;                  /* the active segment, or -1 */
  uint64_t woff;            /* bytes of it already written */
  struct sl_buf wbuf;       /* appended, not yet written */
  struct sl_spool_handoff *handoff; /* rolled segments not yet synced */
  size_t nhandoff, caphandoff;
  uint64_t last_seq;        /* the newest appended seq */
  uint64_t durable_seq;
  int dir_dirty, ack_dirty;
  int sync_failed;          /* sticky: a failed fsync loses the promise */
  uint64_t flushed_seq;     /* records <= this are in the kernel */
  int write_failed;         /* the last write of the buffer failed */
  uint64_t write_errors, fsync_errors;
};

/* Open the spool in dir (created if missing; its parent must exist) and
 * check every segment, reading every byte once. A torn or corrupt stretch
 * (short header or payload, length over SL_SPOOL_RECORD_MAX, seq out of
 * order, bad CRC, bad segment header) costs only itself: the scan resyncs
 * to the next intact run of records (valid CRCs and consecutive seqs, two
 * in a row or ending the file, seq no further than the junk's length allows;
 * a run that the records after it contradict is taken for one forged inside
 * a payload and skipped), moves the records from there to a new segment
 * file named by their first seq, copies the bad bytes to
 * dir/quarantine/<segment>.<offset>.bad and truncates the file before them
 * (a bad header: the file goes, its records stay). Only when nothing intact
 * follows is the rest of the file quarantined. A bad stretch holding only
 * acknowledged records (a punched prefix) is skipped in place, unreported.
 * A hole left in the seqs is
 * reported as lost records; segments holding only acked records are
 * deleted. Corruption is counted in *report (may be NULL) and never stops
 * the open. The read cursor starts at the first unacknowledged record; the
 * first sl_spool_sync also syncs what an earlier process left unsynced.
 * Returns 0, SL_EINVAL (bad opts), SL_EAGAIN (another process holds dir),
 * SL_ENOMEM, or a negative errno when dir cannot be created or opened;
 * on error s holds nothing and sl_spool_close(s) is a no-op. Loop thread. */
int sl_spool_init(struct sl_spool *s, const char *dir,
                  const struct sl_spool_opts *opts,
                  struct sl_spool_report *report);

/* Write out buffered appends, close every file, free memory. Does not fsync:
 * call sl_spool_sync first when that matters. Safe on a zeroed struct, on
 * one whose init failed, and twice. No sync may be running. */
void sl_spool_close(struct sl_spool *s);

/* Copy n bytes as the next record; *seq (may be NULL) gets its sequence.
 * The record sits in the write buffer until the buffer fills or
 * sl_spool_flush / sl_spool_read / sl_spool_sync writes it out: a return of
 * 0 promises nothing about the disk yet (see sl_spool_flush).
 * Returns 0; SL_E2BIG when the files would pass max_bytes (nothing changed:
 * the caller's policy blocks or drops, and retries after an ack); SL_EINVAL
 * when n > max_record (it never fits); SL_ENOMEM; or a negative errno
 * (ENOSPC, EIO, EMFILE, ...) from writing the earlier buffered records or
 * creating a segment. On any error nothing changed: the record is not in
 * the spool, gets no seq, and no partial copy of it is left that a later
 * open could count; buffered earlier records stay buffered, and the next
 * append (once space or fds are free) works. */
int sl_spool_append(struct sl_spool *s, const void *p, size_t n,
                    uint64_t *seq);

/* Hand buffered appends to the kernel, so they survive the process being
 * killed (not a power loss: that is sl_spool_sync). Call it before telling a
 * client that an event is accepted when fsync is off.
 * Returns 0: every record whose sl_spool_append returned 0 before this call
 * is in the kernel (stats.flushed_seq covers it) and survives kill -9.
 * Returns a negative errno (ENOSPC, EIO, ...): some of those records may
 * still be only in memory; they stay buffered, a later flush, append, read
 * or sync retries, and the caller must not acknowledge records above
 * stats.flushed_seq. Any bytes of a record written before the error are
 * completed by the retry (or cut off as a torn tail at the next open). */
int sl_spool_flush(struct sl_spool *s);

/* Return up to max records after the read cursor, oldest first, into
 * out[0..], advancing the cursor but not removing them. Stops before the
 * payload total passes max_bytes, yet always returns at least one record
 * if any is unread. Returns the count, 0 when everything was read, or a
 * negative errno from reading. A record that fails its CRC while reading
 * (the disk changed under us) is repaired as init would: the bad stretch
 * goes to quarantine, the records after it stay, the loss is counted in
 * lost_records. Only when that repair fails (no fd, no memory) does the
 * rest of the segment count as lost. While the write buffer cannot be
 * written (disk full), records already on disk are still returned, so
 * that their acks can free space. */
int sl_spool_read(struct sl_spool *s, struct sl_spool_rec *out, int max,
                  size_t max_bytes);

/* Every record <= seq is delivered: remember it (the ack file, made durable
 * by the next sl_spool_sync) and delete segment files holding only acked
 * records, the one being appended to as well once it is 64 KiB or more
 * (the next append starts a new file). seq may lie beyond the read
 * cursor (the records in between count as read). seq <= the current ack is
 * a no-op. Returns 0, SL_EINVAL when seq was never appended, or a negative
 * errno when the ack file could not be written (the ack still holds in
 * memory and is written again by the next ack). */
int sl_spool_ack(struct sl_spool *s, uint64_t seq);

/* The record seq, returned by sl_spool_read, will never be delivered (it
 * does not parse, say): count it as done WITHOUT acknowledging the records
 * before it, which sl_spool_ack(seq) would. The ack position moves past it
 * once every earlier record is acked. A rewind forgets drops (the record is
 * read again). Returns 0, SL_EINVAL when seq is not a record read since the
 * last rewind and not acked, or an error from writing the ack file as for
 * sl_spool_ack. Loop thread. */
int sl_spool_drop(struct sl_spool *s, uint64_t seq);

/* Move the read cursor back to the first unacknowledged record, after a
 * failed delivery. */
void sl_spool_rewind(struct sl_spool *s);

/* Make durable every record whose append returned, and every ack made,
 * before this call started: write the buffer, fdatasync the segments written
 * since the last sync and the ack file, and fsync the directory when files
 * were created or removed. The only function that may run off the loop
 * thread, concurrently with the others. *durable (may be NULL) gets the
 * highest seq known durable. When writing the buffer fails part way (the
 * disk filled), what was written is still synced (*durable covers it) and
 * the write's error is returned. Returns 0 or a negative errno; after an fsync
 * failure every later sync fails too (SL_EIO), since the kernel may have
 * dropped the pages: reopen the spool to recover. */
int sl_spool_sync(struct sl_spool *s, uint64_t *durable);

/* Fill *st. Loop thread. */
void sl_spool_stats(struct sl_spool *s, struct sl_spool_stats *st);

/* CRC32C (Castagnoli), as used in the record format; crc is 0 to start or
 * a previous result to continue. Uses SSE4.2 when the CPU has it. */
uint32_t sl_spool_crc32c(uint32_t crc, const void *p, size_t n);
/* The table-driven version the above falls back to; exported for tests. */
uint32_t sl_spool_crc32c_portable(uint32_t crc, const void *p, size_t n);

#endif
