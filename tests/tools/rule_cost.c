/* rule_cost.c - run one rule file over N copies of a ~114-byte event, for
 * callgrind instruction counts per event (not wall time: the machine is
 * shared). Usage: rule_cost RULE.lua N [jit] [trace]  (jit: with rules.jit
 * on; trace: the event carries a traceparent header, as every event does
 * once a sluice input has read it)
 *   valgrind --tool=callgrind --toggle-collect=run_events rule_cost r.lua 2000
 * Prints the verdict and whether the event changed, so a run proves the
 * rule did what it was measured for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "codec.h"
#include "event.h"
#include "sandbox.h"

static struct sl_event *make_event(struct sl_idgen *g, int trace) {
  struct sl_str id = {NULL, 0}, topic = {"orders.eu", 9}, key = {"k1", 2};
  struct sl_buf p;
  struct sl_event *ev;

  sl_buf_init(&p);
  sl_codec_put_map(&p, 6);
  sl_codec_put_str(&p, "amount", 6);
  sl_codec_put_uint(&p, 1500);
  sl_codec_put_str(&p, "currency", 8);
  sl_codec_put_str(&p, "EUR", 3);
  sl_codec_put_str(&p, "user", 4);
  sl_codec_put_str(&p, "user-000123", 11);
  sl_codec_put_str(&p, "sku", 3);
  sl_codec_put_str(&p, "sku-4711-blue", 13);
  sl_codec_put_str(&p, "qty", 3);
  sl_codec_put_uint(&p, 3);
  sl_codec_put_str(&p, "note", 4);
  sl_codec_put_str(&p, "gift wrap, leave at door", 24);
  ev = sl_event_new(g, id, topic, key, 1, 1000000, NULL, 0, p.data, p.len, trace);
  sl_buf_close(&p);
  return ev;
}

/* The measured loop: callgrind --toggle-collect=run_events. */
__attribute__((noinline)) int run_events(struct sl_rule *r,
                                         struct sl_event *ev, int n) {
  struct sl_rule_decision d;
  int i, changed = 0;

  for (i = 0; i < n; i++) {
    sl_rule_run(r, ev, &d);
    if (d.changed) {
      changed++;
      sl_event_unref(d.changed);
    }
  }
  printf("verdict %d routes %d first %s changed %d of %d, payload %u bytes\n",
         (int)d.verdict, d.nroutes, d.nroutes ? d.routes[0] : "-", changed, n,
         (unsigned)ev->payload_len);
  if (d.verdict == SL_RULE_ERROR)
    printf("error: %s\n", d.message);
  return changed;
}

int main(int argc, char **argv) {
  struct sl_rule_limits lim = {1000, 64, NULL, NULL, NULL, 0, 0};
  /* 1 s CPU budget, 64 MB: the measured rule never nears them */
  struct sl_rule_host host;
  struct sl_idgen g;
  struct sl_event *ev;
  struct sl_rule *r;
  char err[512];

  int i, trace = 0;

  for (i = 3; i < argc; i++) {
    if (strcmp(argv[i], "jit") == 0)
      lim.jit = 1;
    else if (strcmp(argv[i], "trace") == 0)
      trace = 1;
    else
      argc = 0;
  }
  if (argc < 3) {
    fprintf(stderr, "usage: rule_cost RULE.lua N [jit] [trace]\n");
    return 2;
  }
  memset(&host, 0, sizeof(host));
  sl_idgen_init(&g);
  r = sl_rule_load(argv[1], &lim, &host, err, sizeof(err));
  if (r == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  ev = make_event(&g, trace);
  run_events(r, ev, atoi(argv[2]));
  sl_event_unref(ev);
  sl_rule_free(r);
  return 0;
}
