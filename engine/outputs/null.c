/* null.c - the null output: counts events and discards them (benchmarks,
 * and routes whose events are not wanted). */
#include "worker.h"

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  return 0;
}

static void cb_flush(struct sl_output *o) {
  uint64_t bytes = o->q.bytes;
  sl_output_delivered(o, o->q.count, bytes);
}

static void cb_stop(struct sl_output *o) { sl_output_stopped(o); }

const struct sl_output_ops sl_output_null_ops = {
    .type = "null",
    .cb_start = cb_start,
    .cb_flush = cb_flush,
    .cb_stop = cb_stop,
};
