/* spool_bench.c - throughput of the spool with 120-byte records:
 * appends alone, then appends with delivery (read + ack) behind them, with
 * no fsync, with a thread syncing every 100 ms, and with a sync after every
 * append (short). Prints records/s, payload MB/s and the slowest append, which
 * shows whether appends ever wait for an fsync.
 *
 *   spool_bench [DIR] [--seconds S] [--size BYTES]
 *
 * DIR defaults to a folder under /tmp and is removed at the end; use a path
 * on the disk you want to measure. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "spool.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct syncer {
  struct sl_spool *s;
  atomic_int stop;
  int interval_ms;
  long calls;
  double total, worst;
};

static void *sync_main(void *arg) {
  struct syncer *y = arg;
  struct timespec ts = {0, 0};
  double t0, dt;

  ts.tv_nsec = (long)y->interval_ms * 1000000L;
  while (!atomic_load(&y->stop)) {
    nanosleep(&ts, NULL);
    t0 = now_s();
    if (sl_spool_sync(y->s, NULL) != 0) {
      fprintf(stderr, "sync failed\n");
      exit(1);
    }
    dt = now_s() - t0;
    y->calls++;
    y->total += dt;
    if (dt > y->worst)
      y->worst = dt;
  }
  return NULL;
}

struct result {
  uint64_t records;
  double secs, worst_append;
  uint64_t over_1ms, over_10ms; /* appends that took longer */
};

/* Append (and deliver, when drain) for about secs seconds. */
static int run(struct sl_spool *s, const uint8_t *rec, size_t size,
               double secs, int drain, int sync_each, struct result *res) {
  struct sl_spool_rec r[1024];
  double t0 = now_s(), t, dt;
  uint64_t seq;
  int i, k;

  memset(res, 0, sizeof(*res));
  for (;;) {
    for (i = 0; i < (sync_each ? 10 : 1000); i++) {
      t = now_s();
      if (sl_spool_append(s, rec, size, &seq) != 0)
        return drain ? -1 : 0; /* append-only: stop when full */
      if (sync_each && sl_spool_sync(s, NULL) != 0)
        return -1;
      dt = now_s() - t;
      if (dt > res->worst_append)
        res->worst_append = dt;
      res->over_1ms += dt > 1e-3;
      res->over_10ms += dt > 1e-2;
      res->records++;
    }
    while (drain && (k = sl_spool_read(s, r, 1024, 1 << 20)) > 0) {
      if (sl_spool_ack(s, r[k - 1].seq) != 0)
        return -1;
    }
    res->secs = now_s() - t0;
    if (res->secs >= secs)
      break;
  }
  if (sl_spool_flush(s) != 0)
    return -1;
  res->secs = now_s() - t0;
  return 0;
}

static void print(const char *mode, const char *phase, const struct result *r,
                  size_t size) {
  printf("%-8s %-14s %8" PRIu64 " records %5.2fs %9.0f rec/s %6.1f MB/s"
         "  appends >1ms %" PRIu64 " >10ms %" PRIu64 " max %.1f ms\n",
         mode, phase, r->records, r->secs, (double)r->records / r->secs,
         (double)r->records * (double)size / r->secs / 1e6, r->over_1ms,
         r->over_10ms, r->worst_append * 1e3);
}

static int drain_all(struct sl_spool *s, struct result *res) {
  struct sl_spool_rec r[1024];
  double t0 = now_s();
  int k;

  memset(res, 0, sizeof(*res));
  while ((k = sl_spool_read(s, r, 1024, 1 << 20)) > 0) {
    res->records += (uint64_t)k;
    if (sl_spool_ack(s, r[k - 1].seq) != 0)
      return -1;
  }
  res->secs = now_s() - t0;
  return k;
}

int main(int argc, char **argv) {
  static const char *modes[] = {"none", "interval", "always"};
  char dir[256], cmd[300];
  struct sl_spool_opts o;
  struct sl_spool s;
  struct result res;
  double secs = 2;
  size_t size = 120, i;
  uint8_t rec[65536];
  int m, argi = 1;

  snprintf(dir, sizeof(dir), "/tmp/sl_spool_bench_%d", (int)getpid());
  if (argc > 1 && argv[1][0] != '-') {
    snprintf(dir, sizeof(dir), "%s", argv[1]);
    argi = 2;
  }
  for (; argi + 1 < argc; argi += 2) {
    if (strcmp(argv[argi], "--seconds") == 0)
      secs = atof(argv[argi + 1]);
    else if (strcmp(argv[argi], "--size") == 0)
      size = (size_t)atol(argv[argi + 1]);
  }
  if (size > sizeof(rec))
    size = sizeof(rec);
  for (i = 0; i < size; i++)
    rec[i] = (uint8_t)(i * 37 + 11);
  memset(&o, 0, sizeof(o));
  o.max_bytes = 2ull << 30; /* append-only phases stop when this is full */

  printf("spool bench: %zu-byte records in %s, %.1fs per phase\n", size, dir,
         secs);
  for (m = 0; m < 3; m++) {
    struct syncer y;
    pthread_t t;
    int phase;

    for (phase = 0; phase < 2; phase++) {
      double limit = m == 2 ? secs / 2 : secs;
      snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
      if (system(cmd) != 0)
        return 1;
      if (sl_spool_init(&s, dir, &o, NULL) != 0) {
        fprintf(stderr, "cannot open %s\n", dir);
        return 1;
      }
      memset(&y, 0, sizeof(y));
      atomic_init(&y.stop, 0);
      y.s = &s;
      y.interval_ms = 100;
      if (m == 1 && pthread_create(&t, NULL, sync_main, &y) != 0)
        return 1;
      if (run(&s, rec, size, limit, phase, m == 2, &res) != 0) {
        fprintf(stderr, "run failed\n");
        return 1;
      }
      if (m == 1) {
        atomic_store(&y.stop, 1);
        pthread_join(t, NULL);
      }
      print(modes[m], phase ? "append+deliver" : "append", &res, size);
      if (m == 1)
        printf("%-8s %-14s %8ld syncs, mean %.1f ms, slowest %.1f ms\n", "",
               "", y.calls, y.calls ? y.total / (double)y.calls * 1e3 : 0.0,
               y.worst * 1e3);
      if (phase == 0 && m == 0) {
        if (drain_all(&s, &res) < 0)
          return 1;
        print(modes[m], "read+ack", &res, size);
      }
      sl_spool_close(&s);
    }
  }
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : 1;
}
