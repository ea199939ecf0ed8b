/* worker_int.h - what worker.c and source.c share inside the worker and
 * nobody else needs. */
#ifndef SL_WORKER_INT_H
#define SL_WORKER_INT_H

#include "buffer.h"

/* A disk buffer's flush or sync moved on (or it writes again): wake the
 * durability waiters it covers now (the buffers' on_durable). */
void sl_worker_buffer_durable(struct sl_buffer *b);

#endif
