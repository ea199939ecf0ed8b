/* workers.h - workers = N: rule threads beside the main loop. Worker 0 is
 * the main loop (every input, output, queue and set 0 of the rules);
 * workers 1..N-1 ("replicas") each run a libuv loop on their own thread
 * with their own rule set, fed over a bounded lock-free ring of jobs and
 * answering over a ring of results that the main loop applies (outputs,
 * emits, tap, counts) in ring order. An event is assigned to a worker by
 * a hash of its key (round robin without one), so one key's events keep
 * their order. README "Workers". Used by the worker (main thread) only. */
#ifndef SL_WORKERS_H
#define SL_WORKERS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "event.h"

struct sl_worker;
struct sl_source;
struct sl_durable;
struct sl_workers;

/* Start cfg->workers - 1 replicas (each loads the rules once) and set
 * w->workers; with workers = 1 nothing (w->workers stays NULL). 0, or a
 * negative code with err filled. After w->rules exists. */
int sl_workers_start(struct sl_worker *w, char *err, size_t errlen);

/* Which worker decides ev: 0 (inline, today's path) .. N-1, or
 * SL_WORKERS_MOVING: its bucket moves to another worker once its events in
 * flight are applied, and ev waits for that (sl_workers_submit holds it). */
#define SL_WORKERS_MOVING (-1)
int sl_workers_shard(struct sl_worker *w, const struct sl_event *ev);

/* Hand ev (the caller's reference) to worker shard >= 1 for the rules;
 * schema: the warn-mode misfit text or NULL. 0: in its ring; SL_EAGAIN:
 * the ring is full (or the bucket moving), s holds ev and on_resume runs
 * once it went in (or was decided); SL_ENOMEM: not taken, decide it
 * inline. */
int sl_workers_submit(struct sl_source *s, struct sl_event *ev, int shard,
                      const char *schema);
/* The waiter of a source held for ring room (s->shard_wait) was woken. */
void sl_workers_room(struct sl_source *s);
/* A source goes: its events in flight are still delivered. */
void sl_workers_source_gone(struct sl_source *s);

/* sl_worker_durable with jobs in flight: d waits (SL_EAGAIN) until every
 * job handed out so far is applied, then the ticket logic goes on.
 * 0: nothing in flight, go on now. */
int sl_workers_durable(struct sl_worker *w, struct sl_durable *d);

/* Events in flight, each counted once: in rings, being decided, held for
 * output room, and replicas' emits not yet applied (the drain counts them
 * as busy; its timeout line says how many were left). */
uint64_t sl_workers_busy(struct sl_worker *w);
/* Run on_stop on every replica (once; their emits come back as
 * results). Returns sl_workers_busy after. */
uint64_t sl_workers_shutdown(struct sl_worker *w);
/* The worker finishes: stop the replicas' loops, close the main loop's
 * handles. */
void sl_workers_finish(struct sl_worker *w);
/* Join the threads; what is left in the rings is dropped, counted as
 * abandoned on its input. Frees the replicas' rule sets: call after
 * sl_rules_free of set 0 (it reads them). */
void sl_workers_close(struct sl_worker *w);

/* The rules reload of every worker, all or nothing: every replica
 * prepares against cfg (NULL: the live one), then set 0 reloads with
 * sl_rules_reload_with whose commit runs commit(data) and then commits
 * every replica; any failure aborts all, and set 0's status records it.
 * Returns as sl_rules_reload_with. err gets a replica's error. */
int sl_workers_reload(struct sl_worker *w, const struct sl_config *cfg,
                      const char *trigger, void (*commit)(void *data),
                      void *data, char *err, size_t errlen);
/* The rules-dir watcher's reload (struct sl_rules_owner's reload). */
int sl_workers_rules_reload(void *data, const char *trigger);

/* Register the workers' metrics in w->metrics. 0 or SL_ENOMEM. */
int sl_workers_metrics(struct sl_worker *w);

#endif
