/* spool_crash.c - a driver for kill -9 tests of the spool. "run" checks what
 * an earlier run left, then appends numbered records forever, delivering
 * (read + ack, with the odd rewind) behind them and syncing, and prints each
 * confirmation as "durable D acked A". "verify" only checks. A test kills
 * run with SIGKILL and calls verify with the last confirmation.
 *
 *   spool_crash DIR run [--sync-every N | --sync-ms MS] [--segment BYTES]
 *                       [--max-bytes BYTES] [--seed S]
 *   spool_crash DIR verify [--durable D] [--acked A]
 *   spool_crash DIR flip [--segment BYTES] [--records N] [--offset OFF]
 *
 * "flip" measures what one flipped byte costs: it writes N records to a
 * fresh spool, flips the byte at OFF of the second segment file, reopens
 * and prints how many records came back.
 *
 * Exit status: 0 ok, 1 usage or spool error, 2 a check failed. */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "spool.h"

struct driver {
  struct sl_spool spool;
  atomic_uint_least64_t acked; /* the ack made before the sync to come */
  int sync_ms;
};

static uint32_t rec_len(uint64_t seq) {
  return 20 + (uint32_t)(seq * 7919 % 280);
}

static void rec_fill(uint64_t seq, uint8_t *p) {
  uint32_t i, n = rec_len(seq);
  for (i = 0; i < 8; i++)
    p[i] = (uint8_t)(seq >> (8 * i));
  for (; i < n; i++)
    p[i] = (uint8_t)((seq + i) * 31);
}

static int rec_ok(const struct sl_spool_rec *r) {
  uint8_t want[512];
  if (r->len != rec_len(r->seq))
    return 0;
  rec_fill(r->seq, want);
  return memcmp(want, r->data, r->len) == 0;
}

/* Read every unacked record: contiguous, each payload matching its seq.
 * Prints the result; 0 ok, 2 bad. */
static int check_replay(struct sl_spool *s, uint64_t durable, uint64_t acked,
                        int strict) {
  struct sl_spool_rec r[256];
  struct sl_spool_stats st;
  uint64_t first = 0, last = 0, count = 0;
  int k, i;

  sl_spool_stats(s, &st);
  first = st.read_seq;
  for (;;) {
    k = sl_spool_read(s, r, 256, 1 << 20);
    if (k < 0) {
      printf("replay FAIL read error %d\n", k);
      return 2;
    }
    if (k == 0)
      break;
    for (i = 0; i < k; i++) {
      uint64_t want = count == 0 ? r[i].seq : last + 1;
      if (count == 0)
        first = r[i].seq;
      if (r[i].seq != want || !rec_ok(&r[i])) {
        printf("replay FAIL seq %" PRIu64 " (want %" PRIu64 ", len %u)\n",
               r[i].seq, want, r[i].len);
        return 2;
      }
      last = r[i].seq;
      count++;
    }
  }
  sl_spool_stats(s, &st);
  printf("replay first=%" PRIu64 " last=%" PRIu64 " count=%" PRIu64
         " ack=%" PRIu64 " next=%" PRIu64 "\n",
         first, last, count, st.ack_seq, st.next_seq);
  if (strict && st.ack_seq < acked) {
    printf("check FAIL ack %" PRIu64 " went back below confirmed %" PRIu64
           "\n",
           st.ack_seq, acked);
    return 2;
  }
  if (strict && st.next_seq <= durable) {
    printf("check FAIL durable %" PRIu64 " missing: next seq %" PRIu64 "\n",
           durable, st.next_seq);
    return 2;
  }
  if (count > 0 && first != st.ack_seq + 1) {
    printf("check FAIL replay starts at %" PRIu64 ", ack is %" PRIu64 "\n",
           first, st.ack_seq);
    return 2;
  }
  if (count > 0 && last + 1 != st.next_seq) {
    printf("check FAIL last record %" PRIu64 " but next seq %" PRIu64 "\n",
           last, st.next_seq);
    return 2;
  }
  printf("check ok\n");
  return 0;
}

static void *sync_main(void *arg) {
  struct driver *d = arg;
  struct timespec ts;
  uint64_t durable, acked;

  ts.tv_sec = d->sync_ms / 1000;
  ts.tv_nsec = (long)(d->sync_ms % 1000) * 1000000L;
  for (;;) {
    nanosleep(&ts, NULL);
    acked = atomic_load(&d->acked);
    if (sl_spool_sync(&d->spool, &durable) != 0) {
      printf("sync FAIL\n");
      fflush(stdout);
      exit(1);
    }
    printf("durable %" PRIu64 " acked %" PRIu64 "\n", durable, acked);
    fflush(stdout);
  }
  return NULL;
}

/* Take up to n records off the front: read, sometimes fail (rewind), ack. */
static int deliver(struct driver *d, int n, unsigned *rng) {
  struct sl_spool_rec r[128];
  int k, i;

  if (n > 128)
    n = 128;
  k = sl_spool_read(&d->spool, r, n, 1 << 20);
  if (k <= 0)
    return k;
  for (i = 0; i < k; i++) {
    if (!rec_ok(&r[i])) {
      printf("deliver FAIL seq %" PRIu64 "\n", r[i].seq);
      return -2;
    }
  }
  if (rand_r(rng) % 10 == 0) {
    sl_spool_rewind(&d->spool);
    return 0;
  }
  if (sl_spool_ack(&d->spool, r[k - 1].seq) != 0)
    return -1;
  atomic_store(&d->acked, r[k - 1].seq);
  return k;
}

/* See the usage above; 0 when every record but the damaged one is back. */
static int flip(const char *dir, struct sl_spool_opts *o, uint64_t n,
                uint64_t off) {
  struct sl_spool s;
  struct sl_spool_report rep;
  struct sl_spool_rec r[256];
  char path[4096];
  uint64_t seq, got = 0, last = 0;
  uint8_t p[512], b;
  int k, i, fd;

  if (sl_spool_init(&s, dir, o, NULL) != 0)
    return 1;
  for (seq = 1; seq <= n; seq++) {
    rec_fill(seq, p);
    if (sl_spool_append(&s, p, rec_len(seq), NULL) != 0)
      return 1;
  }
  sl_spool_close(&s);
  for (seq = 2; seq <= n; seq++) {
    snprintf(path, sizeof(path), "%s/%016" PRIx64 ".seg", dir, seq);
    if (access(path, F_OK) == 0)
      break;
  }
  if (seq > n || (fd = open(path, O_RDWR)) < 0) {
    fprintf(stderr, "no second segment: write more records\n");
    return 1;
  }
  if (pread(fd, &b, 1, (off_t)off) != 1 ||
      (b ^= 0x10, pwrite(fd, &b, 1, (off_t)off)) != 1) {
    close(fd);
    return 1;
  }
  close(fd);
  if (sl_spool_init(&s, dir, o, &rep) != 0)
    return 1;
  while ((k = sl_spool_read(&s, r, 256, 1u << 30)) > 0) {
    for (i = 0; i < k; i++) {
      if (r[i].seq <= last || !rec_ok(&r[i]))
        return 2;
      last = r[i].seq;
    }
    got += (uint64_t)k;
  }
  sl_spool_close(&s);
  printf("flip at offset %" PRIu64 " of segment %s: %" PRIu64 " of %" PRIu64
         " records back, %" PRIu64 " lost (reported lost %" PRIu64
         ", quarantined %" PRIu64 " bytes)\n",
         off, strrchr(path, '/') + 1, got, n, n - got, rep.lost_records,
         rep.quarantined_bytes);
  return got + 1 >= n ? 0 : 2;
}

int main(int argc, char **argv) {
  static struct driver d;
  struct sl_spool_opts o;
  struct sl_spool_report rep;
  uint64_t durable = 0, acked = 0, seq, dur, next;
  uint64_t flip_records = 40000, flip_offset = 1000;
  unsigned rng = 1;
  int sync_every = 0, i, rc, verify;
  pthread_t t;
  uint8_t p[512];

  if (argc < 3 || (strcmp(argv[2], "run") && strcmp(argv[2], "verify") &&
                   strcmp(argv[2], "flip"))) {
    fprintf(stderr, "usage: %s DIR run|verify|flip [options]\n", argv[0]);
    return 1;
  }
  verify = strcmp(argv[2], "verify") == 0;
  memset(&o, 0, sizeof(o));
  o.max_bytes = 64u << 20;
  o.segment_bytes = 256u << 10;
  o.write_buffer = 16u << 10;
  for (i = 3; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--sync-every") == 0)
      sync_every = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--sync-ms") == 0)
      d.sync_ms = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--segment") == 0)
      o.segment_bytes = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--max-bytes") == 0)
      o.max_bytes = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--seed") == 0)
      rng = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--durable") == 0)
      durable = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--acked") == 0)
      acked = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--records") == 0)
      flip_records = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--offset") == 0)
      flip_offset = strtoull(argv[i + 1], NULL, 10);
    else {
      fprintf(stderr, "unknown option %s\n", argv[i]);
      return 1;
    }
  }
  if (strcmp(argv[2], "flip") == 0)
    return flip(argv[1], &o, flip_records, flip_offset);
  if (!verify && sync_every <= 0 && d.sync_ms <= 0)
    sync_every = 100;

  rc = sl_spool_init(&d.spool, argv[1], &o, &rep);
  printf("open rc=%d records=%" PRIu64 " first=%" PRIu64 " next=%" PRIu64
         " quarantine_files=%u quarantined_bytes=%" PRIu64 " lost=%" PRIu64
         " gaps=%u ack_reset=%d\n",
         rc, rep.records, rep.first_seq, rep.next_seq, rep.quarantine_files,
         rep.quarantined_bytes, rep.lost_records, rep.gaps, rep.ack_reset);
  if (rep.msg[0])
    printf("report: %s", rep.msg);
  fflush(stdout);
  if (rc != 0)
    return 1;
  rc = check_replay(&d.spool, durable, acked, verify);
  fflush(stdout);
  if (verify || rc != 0) {
    sl_spool_close(&d.spool);
    return rc;
  }

  sl_spool_rewind(&d.spool);
  next = rep.next_seq;
  atomic_init(&d.acked, 0);
  if (d.sync_ms > 0 && pthread_create(&t, NULL, sync_main, &d) != 0)
    return 1;
  for (i = 1;; i++) {
    rec_fill(next, p);
    rc = sl_spool_append(&d.spool, p, rec_len(next), &seq);
    if (rc == SL_E2BIG) { /* full: deliver until there is room */
      if (deliver(&d, 128, &rng) < 0)
        return 1;
      continue;
    }
    if (rc != 0 || seq != next) {
      printf("append FAIL %d\n", rc);
      return 1;
    }
    next++;
    if (i % 50 == 0 && deliver(&d, 1 + rand_r(&rng) % 40, &rng) < 0)
      return 1;
    if (sync_every > 0 && i % sync_every == 0) {
      uint64_t a = atomic_load(&d.acked);
      if (sl_spool_sync(&d.spool, &dur) != 0) {
        printf("sync FAIL\n");
        return 1;
      }
      printf("durable %" PRIu64 " acked %" PRIu64 "\n", dur, a);
      fflush(stdout);
    }
  }
}
