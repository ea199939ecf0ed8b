/* worker_int.h - what worker.c and source.c share inside the worker and
 * nobody else needs. */
#ifndef SL_WORKER_INT_H
#define SL_WORKER_INT_H

#include "buffer.h"
#include "config.h"

struct sl_worker;

#define SL_WORKER_CHECK_MS 20 /* drain and retire checks */

/* Set up and start output (input) i of cfg in slot i of w (zeroed
 * memory). 0, or a negative code with err filled. */
int sl_worker_start_output(struct sl_worker *w, const struct sl_config *cfg,
                           int i, char *err, size_t errlen);
int sl_worker_start_input(struct sl_worker *w, const struct sl_config *cfg,
                          int i, char *err, size_t errlen);

/* A disk buffer's flush or sync moved on (or it writes again): wake the
 * durability waiters it covers now (the buffers' on_durable). */
void sl_worker_buffer_durable(struct sl_buffer *b);

/* Free the renamed and gone inputs' and outputs' config copies (close). */
void sl_worker_free_copies(struct sl_worker *w);

#endif
