/* null.c - the null output: counts events and discards them (benchmarks,
 * and routes whose events are not wanted). A rate_limit applies, so it
 * also stands in for a slow output in overload tests. */
#include "plugins.h"

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  return 0;
}

static void cb_flush(struct sl_output *o) {
  uint32_t n = sl_output_quota(o, o->q.count), i;
  uint64_t bytes = 0;
  if (n == o->q.count) {
    bytes = o->q.bytes;
  } else {
    for (i = 0; i < n; i++)
      bytes += sl_queue_at(&o->q, i)->len;
  }
  if (n > 0)
    sl_output_delivered(o, n, bytes);
}

static void cb_stop(struct sl_output *o) { sl_output_stopped(o); }

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_flush = cb_flush,
    .cb_stop = cb_stop,
};

static const struct sl_config_key keys[] = {{NULL}};

const struct sl_plugin sl_output_null = {
    .config = {SL_PLUGIN_OUTPUT, "null", "counts events and discards them",
               keys},
    .output = &ops,
};
