/* null.c - the null output: counts events and discards them (benchmarks,
 * and routes whose events are not wanted). A rate_limit applies, so it
 * also stands in for a slow output in overload tests. */
#include "plugins.h"

static int cb_start(struct sl_output *o, char *err, size_t errlen) {
  return 0;
}

static void cb_write(struct sl_output *o, const struct sl_batch *b) {
  sl_output_done(o, b->n, SL_WRITE_OK, NULL);
}

static void cb_stop(struct sl_output *o) { sl_output_stopped(o); }

static const struct sl_output_ops ops = {
    .cb_start = cb_start,
    .cb_write = cb_write,
    .cb_stop = cb_stop,
};

static const struct sl_config_key keys[] = {{0}};

const struct sl_plugin sl_output_null = {
    .config = {.kind = SL_PLUGIN_OUTPUT, .type = "null",
               .doc = "counts events and discards them",
               .keys = keys},
    .output = &ops,
};
