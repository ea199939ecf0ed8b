/* source.c - the source side of a worker: an event from an input goes
 * through the rules and routes into its target output queues, waiting
 * (held by its source) for room or a route's token; and the durability
 * tickets that tell an input when it may acknowledge. See worker.h. */
#include "worker.h"

#include <stdio.h>
#include <string.h>

#include "rules.h"
#include "schemas.h"
#include "worker_int.h"
#include "workers.h"

/* ---- the pipeline ------------------------------------------------------ */

static void on_route_timer(uv_timer_t *t) {
  struct sl_worker *w = container_of(t, struct sl_worker, route_timer);
  sl_queue_wake(&w->route_waitq);
}

/* A held event that waits for its route's token: take one, or wait on. */
static int route_token(struct sl_source *s) {
  struct sl_worker *w = s->w;
  struct sl_route_limit *l = &w->route_limits[s->route_wait];
  uint64_t now = sl_mono_ns();
  if (sl_ratelimit_take(&l->rl, 1, now) == 1) {
    s->route_wait = -1;
    return 0;
  }
  sl_queue_wait(&w->route_waitq, &s->waiter);
  if (!uv_is_active((uv_handle_t *)&w->route_timer))
    uv_timer_start(&w->route_timer, on_route_timer,
                   sl_ratelimit_wait_ms(&l->rl, 1, now), 0);
  return SL_EAGAIN;
}

static int push_held(struct sl_source *s) {
  struct sl_worker *w = s->w;
  int i;

  if (s->route_wait >= 0 && route_token(s) == SL_EAGAIN)
    return SL_EAGAIN;

  for (i = 0; i < s->ntargets; i++) {
    struct sl_output *o = &w->outputs[s->targets[i]];
    int rc;
    if (o->gone) {
      /* a reload retired it and its drain timed out while we waited: not
       * accepted there, so the producer must not get an ack for it */
      o->q.dropped_newest++;
      sl_event_fail_track(s->held);
      if (!s->refused) {
        s->refused = 1;
        s->refused_output = o->index;
      }
      continue;
    }
    rc = sl_output_push(o, s->held);
    if (rc == SL_EIO)
      sl_event_fail_track(s->held); /* not accepted there */
    if (rc == SL_EIO && !s->refused) {
      /* the other targets still get it: the producer resends it, a
       * repeat there beats a loss here */
      s->refused = 1;
      s->refused_output = o->index;
    }
    if (rc == SL_EAGAIN) {
      /* keep the targets not yet served; the served ones are done */
      memmove(s->targets, s->targets + i, (size_t)(s->ntargets - i) *
                                              sizeof(s->targets[0]));
      s->ntargets -= i;
      sl_queue_wait(&o->q, &s->waiter);
      return SL_EAGAIN;
    }
  }
  sl_event_unref(s->held);
  s->held = NULL;
  s->ntargets = 0;
  return s->refused ? SL_EIO : 0;
}

/* A source that holds an event is counted, by reload generation: outputs
 * a reload retires wait until no event decided before it is held. */
static void hold_begin(struct sl_source *s) {
  s->holding = 1;
  s->hold_gen = s->w->gen;
  s->w->holding_now++;
}

static void hold_end(struct sl_source *s) {
  if (!s->holding)
    return;
  s->holding = 0;
  if (s->hold_gen == s->w->gen)
    s->w->holding_now--;
  else
    s->w->holding_old--;
}

static void on_room(struct sl_waiter *wt) {
  struct sl_source *s = container_of(wt, struct sl_source, waiter);
  int rc;
  if (s->held == NULL)
    return;
  if (s->shard_wait) { /* room in a worker's ring, not in an output */
    sl_workers_room(s);
    return;
  }
  rc = push_held(s);
  if (rc == 0 || rc == SL_EIO)
    hold_end(s);
  if ((rc == 0 || rc == SL_EIO) && s->on_resume)
    s->on_resume(s); /* s->refused tells a refusal */
}

void sl_source_init(struct sl_source *s, struct sl_input *in,
                    void (*on_resume)(struct sl_source *s)) {
  memset(s, 0, sizeof(*s));
  s->route_wait = -1;
  s->w = in->w;
  s->input = in;
  s->on_resume = on_resume;
  s->waiter.on_ready = on_room;
}

void sl_source_close(struct sl_source *s) {
  sl_queue_unwait(&s->waiter);
  sl_workers_source_gone(s); /* its events in other workers still go */
  hold_end(s);
  s->route_wait = -1;
  if (s->held) {
    /* only at a forced stop: a graceful one waits for held events */
    s->input->stats.abandoned++;
    sl_event_fail_track(s->held);
    sl_event_unref(s->held);
    s->held = NULL;
  }
}

static void count_unrouted(struct sl_source *s, struct sl_source *origin) {
  struct sl_input_stats *st = &s->input->stats;
  uint64_t v = sl_rules_version(s->w->rules);
  int slot = (int)(v % SL_UNROUTED_VERSIONS);
  if (st->unrouted_version[slot] != v) {
    st->unrouted_version[slot] = v; /* a version 4 reloads ago leaves */
    st->unrouted[slot] = 0;
  }
  st->unrouted[slot]++;
  if (origin)
    origin->unrouted++;
}

int sl_worker_decide_inline(struct sl_source *s, struct sl_event *ev,
                            const char *schema) {
  struct sl_rules_result r;
  sl_rules_decide(s->w->rules, ev, &r);
  r.schema = schema;
  if (r.ntargets)
    sl_schemas_outputs(s->w, &r);
  return sl_worker_deliver(s, s, &r);
}

int sl_worker_submit(struct sl_source *s, struct sl_event *ev) {
  struct sl_worker *w = s->w;
  struct sl_rules_result r;
  int shard;

  if (sl_schemas_ingest(w, ev, &r) == 0) {
    const char *mark = r.schema;
    if (w->workers && (shard = sl_workers_shard(w, ev)) != 0) {
      int rc = sl_workers_submit(s, ev, shard, mark); /* < 0: moving */
      if (rc != SL_ENOMEM)
        return rc; /* else decided here */
    }
    return sl_worker_decide_inline(s, ev, mark);
  }
  return sl_worker_deliver(s, s, &r);
}

int sl_worker_deliver(struct sl_source *s, struct sl_source *origin,
                      struct sl_rules_result *r) {
  struct sl_worker *w = s->w;
  int i, rc;

  if (r->outcome == SL_RULES_UNROUTED)
    count_unrouted(s, origin);
  if (w->tap)
    w->tap(w->tap_data, r->event, r);
  s->ntargets = r->ntargets;
  for (i = 0; i < r->ntargets; i++)
    s->targets[i] = r->targets[i];
  s->refused = 0;
  s->held = r->event; /* r->event holds the reference now (maybe a new one) */
  if (s->ntargets == 0) {
    sl_event_unref(s->held);
    s->held = NULL;
    return 0;
  }
  if (r->route >= 0 && w->route_limits &&
      w->route_limits[r->route].rl.rate &&
      sl_ratelimit_take(&w->route_limits[r->route].rl, 1, sl_mono_ns()) == 0) {
    /* over the route's rate: the excess follows its outputs' when_full
     * policy, block (or spill) winning over drop when they differ */
    struct sl_route_limit *l = &w->route_limits[r->route];
    int blocks = 0;
    for (i = 0; i < s->ntargets; i++) {
      enum sl_queue_policy p = w->outputs[s->targets[i]].q.policy;
      blocks |= p == SL_QUEUE_BLOCK || p == SL_QUEUE_SPILL;
    }
    if (!blocks) {
      l->dropped++;
      sl_event_unref(s->held);
      s->held = NULL;
      s->ntargets = 0;
      return 0;
    }
    l->waited++;
    s->route_wait = r->route;
  }
  rc = push_held(s);
  if (rc == SL_EAGAIN)
    hold_begin(s);
  return rc;
}

int sl_worker_blocked(const struct sl_worker *w) {
  int i;
  for (i = 0; i < w->noutputs; i++)
    if (!w->outputs[i].gone &&
        sl_buffer_blocked(&w->outputs[i].buf, &w->outputs[i].q))
      return 1;
  return 0;
}

/* ---- durability ---------------------------------------------------------- */

int sl_worker_durable(struct sl_worker *w, struct sl_durable *d) {
  if (d->waiting)
    return SL_EAGAIN; /* its callback comes; it asks again after */
  d->failed = 0;
  if (w->workers && sl_workers_durable(w, d) == SL_EAGAIN)
    return SL_EAGAIN; /* jobs still in other workers: then the tickets */
  return sl_worker_durable_now(w, d);
}

int sl_worker_durable_now(struct sl_worker *w, struct sl_durable *d) {
  uint64_t ticket;
  int i, pending = 0;

  /* appends from now on are stamped later than this ticket */
  ticket = w->durable_ticket++;
  for (i = 0; i < w->noutputs; i++) {
    int rc = sl_buffer_durable(&w->outputs[i].buf, ticket);
    if (rc == SL_EIO) {
      d->refused_output = i;
      return SL_EIO;
    }
    if (rc != 0)
      pending = 1;
  }
  if (!pending)
    return 0;
  d->ticket = ticket;
  d->waiting = 1;
  d->prev = w->durable_waiters.prev;
  d->next = &w->durable_waiters;
  d->prev->next = d;
  w->durable_waiters.prev = d;
  return SL_EAGAIN;
}

void sl_worker_undurable(struct sl_durable *d) {
  if (!d->waiting)
    return;
  d->prev->next = d->next;
  d->next->prev = d->prev;
  d->next = d->prev = NULL;
  d->waiting = 0;
}

/* A disk buffer's flush or sync moved on (or it writes again): call the
 * waiters whose tickets every buffer covers now, oldest first. */
void sl_worker_buffer_durable(struct sl_buffer *b) {
  struct sl_output *o = b->data;
  struct sl_worker *w = o->w;
  int i;

  if (o->q.count > o->q.inflight)
    sl_output_kick(o); /* read back from the disk after a retry */
  while (w->durable_waiters.next != &w->durable_waiters) {
    struct sl_durable *d = w->durable_waiters.next;
    for (i = 0; i < w->noutputs; i++)
      if (!sl_buffer_covers(&w->outputs[i].buf, d->ticket))
        return; /* later tickets need at least as much */
    sl_worker_undurable(d);
    d->on_durable(d); /* may add or remove waiters: start again */
  }
}

void sl_worker_refusal(const struct sl_worker *w, int output, char *buf,
                       size_t len) {
  const struct sl_output *o;
  if (output < 0 || output >= w->noutputs) {
    snprintf(buf, len, "a disk buffer cannot write");
    return;
  }
  o = &w->outputs[output];
  if (o->gone) {
    snprintf(buf, len, "output %s was removed by a reload before it took "
                       "the event", o->cfg->name);
    return;
  }
  snprintf(buf, len, "the disk buffer of output %s cannot write: %s",
           o->cfg->name,
           o->buf.last_error ? strerror(-o->buf.last_error) : "I/O error");
}
