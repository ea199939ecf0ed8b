/* worker_int.h - what worker.c and source.c share inside the worker and
 * nobody else needs. */
#ifndef SL_WORKER_INT_H
#define SL_WORKER_INT_H

#include "buffer.h"
#include "config.h"

struct sl_worker;

#define SL_WORKER_CHECK_MS 20 /* drain and retire checks */

/* Set up and start output (input) i of cfg in slot i of w (zeroed
 * memory). pos is its place in the file, for err ("outputs[pos]"): i + 1
 * at start; a reload's slot may be another. 0, or a negative code with
 * err filled. */
int sl_worker_start_output(struct sl_worker *w, const struct sl_config *cfg,
                           int i, int pos, char *err, size_t errlen);
int sl_worker_start_input(struct sl_worker *w, const struct sl_config *cfg,
                          int i, int pos, char *err, size_t errlen);

/* A disk buffer's flush or sync moved on (or it writes again): wake the
 * durability waiters it covers now (the buffers' on_durable). */
void sl_worker_buffer_durable(struct sl_buffer *b);

/* Free the renamed and gone inputs' and outputs' config copies (close). */
void sl_worker_free_copies(struct sl_worker *w);

struct sl_source;
struct sl_durable;
struct sl_event;
struct sl_rules_result;

/* What the rules emitted (output index; takes the reference): into the
 * output's queue, dropped and counted when full (the owner's emit). */
void sl_worker_emit(struct sl_worker *w, int output, struct sl_event *ev);

/* The part of sl_worker_submit after the rules decided r: counts, tap,
 * route rate limit and the outputs. s holds what waits (SL_EAGAIN);
 * unrouted events are counted on s->input and on origin (the source the
 * event came from; NULL once it closed). Returns as sl_worker_submit. */
/* Decide ev with set 0 on the main loop and deliver it (schema: the
 * warn-mode misfit or NULL); returns as sl_worker_deliver. */
int sl_worker_decide_inline(struct sl_source *s, struct sl_event *ev,
                            const char *schema);
int sl_worker_deliver(struct sl_source *s, struct sl_source *origin,
                      struct sl_rules_result *r);

/* sl_worker_durable's ticket part (the disk buffers), returning as it
 * does; workers.c runs it once the jobs in flight before it are applied. */
int sl_worker_durable_now(struct sl_worker *w, struct sl_durable *d);

#endif
