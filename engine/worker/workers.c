/* workers.c - workers = N: the replica threads, the rings between them and
 * the main loop, sharding, the results applied on the main loop, the
 * durability and drain bookkeeping, control messages and the reload of
 * every worker's rules together. See workers.h and README "Workers".
 *
 * Ownership: an event belongs to one thread at a time. The main thread
 * builds it and pushes it in a job; the ring's release/acquire hands it to
 * the replica, which decides it and pushes it (or what the rule made of
 * it, and what the rule emitted) back in a result; main applies it. Tags,
 * sources, outputs, counters of the worker: main only. A replica touches
 * its loop, its rule set, its idgen and the events it holds. */
#include "workers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "ring.h"
#include "rules.h"
#include "schemas.h"
#include "worker.h"
#include "worker_int.h"

#define RING_CAP 4096     /* jobs (and results) per replica */
#define PENDING_MAX 4096  /* emits outside a decide awaiting result room */
/* bytes of results (their events and emits) a replica holds for main: a
 * rule's emits per call are bounded only by its CPU budget, and 4096
 * results of them waited in the ring behind a full output (940 MB for
 * 3000 calls of 20 x 16 KiB; workers = 1 drops them at the output queue) */
#define HELD_MAX (64u << 20)
/* bytes of input events a replica holds, handed out and not yet applied:
 * its rings count events, not bytes, and 4096 events of up to
 * max_event_bytes is 4 GiB per worker (with one worker, an input waits at
 * its output queue's max_bytes). Past it a source waits as for a full
 * ring; an idle replica takes one event of any size. */
#define JOBS_MAX (64u << 20)
/* jobs one replica can have in flight: both rings, one being decided, one
 * held; a power of two above that */
#define INFLIGHT_CAP (4 * RING_CAP)

/* What a job says about its source: main only, outlives the source. */
struct sl_source_tag {
  struct sl_source *s; /* NULL once the source closed */
  uint32_t refs;       /* jobs in flight that carry it */
};

struct emit {
  struct emit *next;
  int output;
  struct sl_event *ev;
};

struct job {
  struct sl_event *ev;
  struct sl_source_tag *tag;
  uint64_t seq;  /* order of hand-out over all replicas (durability) */
  char *schema;  /* warn-mode misfit for the tap, or NULL */
  int input;     /* slot of the input it came from */
  uint8_t bucket; /* its shard bucket (in flight until applied) */
};

struct result {
  struct sl_event *ev; /* NULL: emits only (timers, on_stop, commit) */
  struct emit *emits;  /* what the rule emitted while deciding, in order */
  uint64_t bytes;      /* of ev and emits, in the replica's held_bytes */
  struct sl_source_tag *tag;
  uint64_t seq;
  char *rule, *reason, *schema; /* copies (the tap only), or NULL */
  int input, route, outcome, ntargets;
  uint8_t bucket;
  uint16_t targets[SL_CONFIG_MAX_OUTPUTS];
};

enum ctl_op { CTL_NONE, CTL_START, CTL_PREPARE, CTL_COMMIT, CTL_ABORT,
              CTL_SHUTDOWN, CTL_STOP };

struct replica {
  struct sl_workers *ws;
  int index; /* worker number, 1..N-1 */
  pthread_t thread;
  int thread_started;
  uv_loop_t loop;
  uv_async_t wake; /* jobs, room for results, control */
  struct sl_rules *rules;
  struct sl_idgen idgen;
  struct sl_config cfg_copy; /* the config without the rules-dir watcher */
  struct sl_ring jobs, results;
  /* the replica's thread only */
  struct emit **cur_tail; /* deciding: where its emits go */
  struct emit *pending, **pending_tail;
  uint32_t npending;
  uint64_t cur_bytes, pending_bytes; /* of the emits in cur_tail, pending */
  int paused;   /* prepared a reload: decide nothing until commit/abort */
  int stopping;
  /* both threads */
  _Atomic int stalled;          /* waits for room in results */
  _Atomic uint64_t decided;     /* events its rules decided */
  _Atomic uint64_t pending_n;   /* emits outside a decide not yet applied
                                   (pending, or in an emits-only result) */
  _Atomic uint64_t emit_dropped;
  _Atomic uint64_t held_bytes;  /* results pushed, not yet applied */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  enum ctl_op op;
  int done, rc;
  const struct sl_config *ctl_cfg;
  const char *trigger;
  char err[1024];
  /* the main thread only */
  int pushed;     /* jobs pushed since the last wake-up sent */
  int blocked;    /* holder holds a result waiting for output room */
  int draining;
  struct sl_source holder;
  struct sl_source_tag *held_tag;
  uint64_t held_seq;
  uint8_t held_bucket;
  struct sl_queue room_q; /* sources waiting for room in jobs */
  uint64_t inflight;      /* jobs handed out and not yet applied */
  uint64_t *seqs;         /* their seqs, oldest first (a circle of
                             INFLIGHT_CAP from seqs_head) */
  uint64_t seqs_head;
  uint32_t *sizes;        /* and their events' bytes, in the same circle */
  uint64_t job_bytes;     /* their sum, under JOBS_MAX */
  /* a source waits for job bytes: until room_q is woken, every other push
   * waits behind it. Else others' small events (read anew, or woken after
   * it) take each room that comes, inflight never reaches 0, and an event
   * over JOBS_MAX waits as long as they keep coming */
  int bytes_wait;
  uint32_t stale; /* results in the ring decided with routes a reload
                     since replaced: their route index means nothing now */
  /* results at the head of the ring decided before the last reload, and
   * whether the held one is one of them: counted in w->holding_old, as an
   * event a source holds, so an output that reload retires drains them
   * before it closes. The holder alone is not enough: once it pushed, it
   * holds the next result as a new one while older ones still name the
   * retired output (they were refused there: lost). */
  uint32_t old;
  int held_old;
};

struct sl_workers {
  struct sl_worker *w;
  int n; /* workers, main included */
  struct replica *r; /* n - 1 */
  uv_async_t results_async;
  uv_check_t check;
  int handles_open;
  uint8_t bucket[256]; /* hash & 255 -> worker */
  /* a bucket's events handed to a replica (in its rings, being decided,
   * held for ring or output room) and not yet applied: it moves to
   * another worker only at 0, so one key's events never overtake */
  uint32_t bucket_inflight[256];
  /* target + 1 of a bucket that moves once its in-flight count is 0: its
   * new events wait at their source (move_q) until then; 0: not moving */
  uint8_t moving[256];
  struct sl_queue move_q;
  int move_wake;       /* a move completed: wake move_q */
  int cur_bucket;      /* the bucket sl_workers_shard picked last */
  uint64_t rr;         /* round robin for keyless events */
  /* the balance (README "Workers"): every balance_ms, buckets move to
   * even out how busy the workers were */
  uv_timer_t balance;
  uint64_t balance_ms;
  int churn;           /* test hook: move every bucket each period */
  int cursor;          /* where the next move looks first */
  uint64_t bal_wall, bal_events, bal_cpu[SL_CONFIG_MAX_WORKERS];
  clockid_t clock[SL_CONFIG_MAX_WORKERS]; /* each worker thread's CPU */
  uint64_t moves;      /* buckets moved */
  uint64_t seq;        /* last job seq handed out */
  uint64_t inflight;   /* over all replicas */
  uint64_t main_decided; /* events decided inline (worker 0) */
  struct sl_durable waiters; /* durability waiters on jobs, by seq */
  _Atomic int tap_on;
  int shut;
  int finished;
};

/* ---- control messages (main waits for the replica's reply) -------------- */

static void ctl_send(struct replica *r, enum ctl_op op,
                     const struct sl_config *cfg, const char *trigger) {
  pthread_mutex_lock(&r->mu);
  r->op = op;
  r->done = 0;
  r->rc = 0;
  r->err[0] = '\0';
  r->ctl_cfg = cfg;
  r->trigger = trigger;
  pthread_mutex_unlock(&r->mu);
  if (op != CTL_START)
    uv_async_send(&r->wake);
}

static int ctl_wait(struct replica *r, char *err, size_t errlen) {
  int rc;
  pthread_mutex_lock(&r->mu);
  while (!r->done)
    pthread_cond_wait(&r->cv, &r->mu);
  rc = r->rc;
  if (err)
    snprintf(err, errlen, "%s", r->err);
  r->op = CTL_NONE;
  pthread_mutex_unlock(&r->mu);
  return rc;
}

static void ctl_reply(struct replica *r, int rc, const char *err) {
  pthread_mutex_lock(&r->mu);
  r->rc = rc;
  snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
  r->done = 1;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* ---- the replica's thread ------------------------------------------------ */

/* What an event held in a result costs: its block and an emit node. */
static uint64_t held_cost(const struct sl_event *ev) {
  return sizeof(*ev) + ev->len + sizeof(struct emit);
}

static void replica_emit(void *data, int output, struct sl_event *ev) {
  struct replica *r = data;
  struct emit *e = NULL;
  uint64_t n = held_cost(ev);
  if ((r->cur_tail || r->npending < PENDING_MAX) &&
      atomic_load(&r->held_bytes) + r->cur_bytes + r->pending_bytes + n <=
          HELD_MAX)
    e = malloc(sizeof(*e));
  if (e == NULL) {
    sl_event_unref(ev);
    atomic_fetch_add_explicit(&r->emit_dropped, 1, memory_order_relaxed);
    return;
  }
  e->next = NULL;
  e->output = output;
  e->ev = ev;
  if (r->cur_tail) {
    *r->cur_tail = e;
    r->cur_tail = &e->next;
    r->cur_bytes += n;
    return;
  }
  *r->pending_tail = e;
  r->pending_tail = &e->next;
  r->npending++;
  r->pending_bytes += n;
  atomic_fetch_add(&r->pending_n, 1);
  /* a timer's emits go out at the end of this loop iteration, not with
   * the next job (an idle worker may get none) */
  uv_async_send(&r->wake);
}

/* Room for a result: a slot, and the results held under HELD_MAX
 * bytes (while over, some are in the ring for main to apply). */
static int room(struct replica *r) {
  return sl_ring_room(&r->results) &&
         atomic_load(&r->held_bytes) < HELD_MAX;
}

/* Is there room for a result? If not, say so to main first and look
 * again (main looks at stalled after it made room: one of us sees it). */
static int result_room(struct replica *r) {
  if (room(r))
    return 1;
  atomic_store(&r->stalled, 1);
  atomic_thread_fence(memory_order_seq_cst);
  if (!room(r))
    return 0;
  atomic_store(&r->stalled, 0);
  return 1;
}

/* Emits made outside a decide (timers, on_stop, a commit) go as one
 * emits-only result. */
static int flush_pending(struct replica *r) {
  struct result res;
  if (r->pending == NULL || !result_room(r))
    return 0;
  memset(&res, 0, sizeof(res));
  res.emits = r->pending;
  res.bytes = r->pending_bytes;
  atomic_fetch_add(&r->held_bytes, res.bytes);
  (void)sl_ring_push(&r->results, &res);
  r->pending = NULL;
  r->pending_tail = &r->pending;
  r->npending = 0; /* pending_n stays: main takes them off as it applies */
  r->pending_bytes = 0;
  return 1;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void decide(struct replica *r, const struct job *j) {
  struct result res;
  struct sl_rules_result rr;
  memset(&res, 0, offsetof(struct result, targets));
  res.tag = j->tag;
  res.seq = j->seq;
  res.input = j->input;
  res.bucket = j->bucket;
  res.schema = j->schema;
  r->cur_tail = &res.emits;
  r->cur_bytes = 0;
  sl_rules_decide(r->rules, j->ev, &rr);
  r->cur_tail = NULL;
  res.ev = rr.event;
  res.bytes = r->cur_bytes + (rr.event ? held_cost(rr.event) : 0);
  atomic_fetch_add(&r->held_bytes, res.bytes);
  res.outcome = (int)rr.outcome;
  res.route = rr.route;
  res.ntargets = rr.ntargets;
  memcpy(res.targets, rr.targets, (size_t)rr.ntargets * sizeof(rr.targets[0]));
  if (atomic_load_explicit(&r->ws->tap_on, memory_order_relaxed)) {
    res.rule = dup_or_null(rr.rule); /* the rule set may free its own */
    res.reason = dup_or_null(rr.reason);
  }
  atomic_fetch_add_explicit(&r->decided, 1, memory_order_relaxed);
  (void)sl_ring_push(&r->results, &res); /* room was checked */
}

/* Decide jobs while results have room; at most a ring's worth per wake-up
 * so control messages and timers get their turn. */
static void work(struct replica *r) {
  int pushed = flush_pending(r), n = 0;
  while (!r->paused && !r->stopping) {
    struct job *p, j;
    if (!result_room(r))
      break; /* main wakes us once it applied some */
    if (n == RING_CAP) {
      uv_async_send(&r->wake);
      break;
    }
    if ((p = sl_ring_peek(&r->jobs)) == NULL)
      break;
    j = *p;
    sl_ring_pop(&r->jobs);
    decide(r, &j);
    pushed = 1;
    n++;
  }
  if (pushed)
    uv_async_send(&r->ws->results_async);
}

static void serve_ctl(struct replica *r) {
  enum ctl_op op;
  char err[1024] = "";
  int rc = 0;
  pthread_mutex_lock(&r->mu);
  op = r->done ? CTL_NONE : r->op;
  pthread_mutex_unlock(&r->mu);
  switch (op) {
  case CTL_NONE:
  case CTL_START:
    return;
  case CTL_PREPARE:
    rc = sl_rules_prepare(r->rules, r->ctl_cfg, r->trigger, err, sizeof(err));
    r->paused = rc == 0; /* what it decides now would miss the handover */
    break;
  case CTL_COMMIT:
    sl_rules_commit(r->rules);
    r->paused = 0;
    break;
  case CTL_ABORT:
    sl_rules_abort(r->rules);
    r->paused = 0;
    break;
  case CTL_SHUTDOWN:
    sl_rules_shutdown(r->rules);
    break;
  case CTL_STOP:
    r->stopping = 1;
    sl_rules_stop(r->rules);
    uv_close((uv_handle_t *)&r->wake, NULL);
    break;
  }
  if (op != CTL_STOP) {
    /* emits of a commit or on_stop go before the reply; what does not
     * fit follows once main made room */
    (void)flush_pending(r);
    if (r->pending)
      uv_async_send(&r->wake);
    uv_async_send(&r->ws->results_async);
  }
  ctl_reply(r, rc, err);
}

static void on_wake(uv_async_t *a) {
  struct replica *r = a->data;
  serve_ctl(r);
  if (!r->stopping)
    work(r);
}

static void *replica_main(void *arg) {
  struct replica *r = arg;
  struct sl_rules_owner owner = {r, replica_emit, NULL, 1};
  char err[1024] = "";
  int rc, wake_open = 0;

  sl_idgen_init(&r->idgen); /* its own random prefix: ids stay unique */
  rc = uv_loop_init(&r->loop);
  if (rc == 0 && (rc = uv_async_init(&r->loop, &r->wake, on_wake)) == 0)
    wake_open = 1;
  if (rc != 0)
    snprintf(err, sizeof(err), "worker %d: cannot start its loop: %s",
             r->index, uv_strerror(rc));
  r->wake.data = r;
  if (rc == 0) {
    r->rules = sl_rules_new(&r->cfg_copy, &r->loop, &r->idgen, &owner, err,
                            sizeof(err));
    if (r->rules == NULL)
      rc = SL_EINVAL;
  }
  if (rc != 0) {
    if (wake_open)
      uv_close((uv_handle_t *)&r->wake, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
    ctl_reply(r, rc, err);
    return NULL;
  }
  ctl_reply(r, 0, NULL);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  /* stopped: close what the rules left (their handles are closed) */
  uv_run(&r->loop, UV_RUN_DEFAULT);
  uv_loop_close(&r->loop);
  return NULL;
}

/* ---- the main thread: handing out ---------------------------------------- */

/* One of bucket b's events in flight was applied (or dropped): at 0 a
 * move that waited for it is done. */
static void bucket_done(struct sl_workers *ws, int b) {
  if (--ws->bucket_inflight[b] == 0 && ws->moving[b]) {
    ws->bucket[b] = (uint8_t)(ws->moving[b] - 1);
    ws->moving[b] = 0;
    ws->move_wake = 1; /* not from inside an apply: at the drain's end */
  }
}

static void move_wake(struct sl_workers *ws) {
  if (ws->move_wake) {
    ws->move_wake = 0;
    sl_queue_wake(&ws->move_q);
  }
}

/* ev's bucket is moving: s holds ev until the move is done (moved_room),
 * so no event of the bucket overtakes one still in the old worker. */
static int hold_for_move(struct sl_source *s, struct sl_event *ev) {
  s->held = ev;
  s->shard_wait = SL_WORKERS_MOVING;
  s->shard_bucket = s->w->workers->cur_bucket;
  sl_queue_wait(&s->w->workers->move_q, &s->waiter);
  return SL_EAGAIN;
}

static uint32_t key_hash(const char *p, uint32_t n) {
  uint32_t h = 2166136261u; /* FNV-1a, then mixed: the low byte picks */
  uint32_t i;
  for (i = 0; i < n; i++)
    h = (h ^ (uint8_t)p[i]) * 16777619u;
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  return h;
}

int sl_workers_shard(struct sl_worker *w, const struct sl_event *ev) {
  struct sl_workers *ws = w->workers;
  uint32_t h = ev->key_off ? key_hash((const char *)ev->data + ev->key_off,
                                      ev->key_len)
                           : (uint32_t)ws->rr++;
  int shard = ws->bucket[h & 255];
  ws->cur_bucket = (int)(h & 255);
  if (ws->moving[h & 255])
    return SL_WORKERS_MOVING;
  if (shard == 0)
    ws->main_decided++;
  return shard;
}

static int push_job(struct replica *r, struct job *j) {
  struct sl_workers *ws = r->ws;
  uint32_t bytes = j->ev->len;
  j->seq = ws->seq + 1;
  if (r->inflight && (r->bytes_wait || r->job_bytes + bytes > JOBS_MAX)) {
    r->bytes_wait = 1; /* inflight > 0: a drain will wake room_q */
    return SL_EAGAIN;
  }
  if (sl_ring_push(&r->jobs, j) != 0)
    return SL_EAGAIN;
  ws->seq = j->seq;
  j->tag->refs++;
  r->seqs[(r->seqs_head + r->inflight) & (INFLIGHT_CAP - 1)] = j->seq;
  r->sizes[(r->seqs_head + r->inflight) & (INFLIGHT_CAP - 1)] = bytes;
  r->job_bytes += bytes;
  r->inflight++;
  ws->inflight++;
  r->pushed = 1; /* woken once, at the end of this loop iteration */
  return 0;
}

int sl_workers_submit(struct sl_source *s, struct sl_event *ev, int shard,
                      const char *schema) {
  struct sl_worker *w = s->w;
  struct replica *r;
  struct job j;
  if (shard == SL_WORKERS_MOVING)
    return hold_for_move(s, ev); /* the tap's note is lost, as held */
  if (s->tag == NULL) {
    s->tag = calloc(1, sizeof(*s->tag));
    if (s->tag == NULL)
      return SL_ENOMEM;
    s->tag->s = s;
  }
  r = &w->workers->r[shard - 1];
  /* s->refused stays: a refusal found in an earlier result is still news */
  j.ev = ev;
  j.tag = s->tag;
  j.input = s->input->index;
  j.schema = schema && w->tap ? strdup(schema) : NULL;
  j.bucket = (uint8_t)w->workers->cur_bucket;
  w->workers->bucket_inflight[j.bucket]++; /* held counts too */
  if (push_job(r, &j) == 0)
    return 0;
  free(j.schema); /* the tap's note is lost for a held event */
  s->held = ev;
  s->shard_wait = shard;
  s->shard_bucket = j.bucket;
  sl_queue_wait(&r->room_q, &s->waiter);
  return SL_EAGAIN;
}

/* A source held for a moving bucket: the move is done (or another one). */
static void moved_room(struct sl_source *s) {
  struct sl_workers *ws = s->w->workers;
  struct sl_event *ev = s->held;
  int b = s->shard_bucket, rc;
  if (ws->moving[b]) {
    sl_queue_wait(&ws->move_q, &s->waiter);
    return;
  }
  s->held = NULL;
  s->shard_wait = 0;
  ws->cur_bucket = b;
  if (ws->bucket[b] == 0) {
    ws->main_decided++;
    rc = sl_worker_decide_inline(s, ev, NULL);
  } else {
    rc = sl_workers_submit(s, ev, ws->bucket[b], NULL);
    if (rc == SL_ENOMEM) /* nothing of b in flight: inline keeps order */
      rc = sl_worker_decide_inline(s, ev, NULL);
  }
  if (rc == SL_EAGAIN)
    return; /* held again (ring or output room): that wake resumes it */
  if (s->on_resume)
    s->on_resume(s); /* s->refused tells a refusal */
}

void sl_workers_room(struct sl_source *s) {
  struct replica *r;
  struct job j;
  if (s->shard_wait == SL_WORKERS_MOVING) {
    moved_room(s);
    return;
  }
  r = &s->w->workers->r[s->shard_wait - 1];
  j.ev = s->held;
  j.tag = s->tag;
  j.input = s->input->index;
  j.schema = NULL;
  j.bucket = (uint8_t)s->shard_bucket;
  if (push_job(r, &j) != 0) {
    sl_queue_wait(&r->room_q, &s->waiter);
    return;
  }
  s->held = NULL;
  s->shard_wait = 0;
  if (s->on_resume)
    s->on_resume(s);
}

void sl_workers_source_gone(struct sl_source *s) {
  if (s->shard_wait > 0 && s->held) /* never handed out: frees the bucket */
    bucket_done(s->w->workers, s->shard_bucket);
  s->shard_wait = 0;
  if (s->tag == NULL)
    return;
  s->tag->s = NULL;
  if (s->tag->refs == 0)
    free(s->tag);
  s->tag = NULL;
}

/* Once per loop iteration: wake the replicas that got jobs. */
static void on_check(uv_check_t *c) {
  struct sl_workers *ws = c->data;
  int i;
  atomic_store_explicit(&ws->tap_on, ws->w->tap != NULL, memory_order_relaxed);
  move_wake(ws);
  for (i = 0; i < ws->n - 1; i++)
    if (ws->r[i].pushed) {
      ws->r[i].pushed = 0;
      uv_async_send(&ws->r[i].wake);
    }
}

/* ---- the main thread: applying results ----------------------------------- */

/* Every job up to seq is applied: each replica's oldest job in flight (if
 * any) came later. */
static int covered(const struct sl_workers *ws, uint64_t seq) {
  int i;
  for (i = 0; i < ws->n - 1; i++) {
    const struct replica *r = &ws->r[i];
    if (r->inflight && r->seqs[r->seqs_head & (INFLIGHT_CAP - 1)] <= seq)
      return 0;
  }
  return 1;
}

static void wake_durable(struct sl_workers *ws) {
  int rc;
  while (ws->waiters.next != &ws->waiters) {
    struct sl_durable *d = ws->waiters.next;
    if (!covered(ws, d->async_seq))
      return; /* later ones wait for later jobs */
    sl_worker_undurable(d);
    rc = sl_worker_durable_now(ws->w, d);
    d->failed = rc == SL_EIO; /* the callback tells the producer */
    if (rc != SL_EAGAIN)
      d->on_durable(d); /* may add or remove waiters: look again */
  }
}

static void tag_unref(struct sl_source_tag *t) {
  if (t && --t->refs == 0 && t->s == NULL)
    free(t);
}

static void job_done(struct replica *r, struct sl_source_tag *tag,
                     uint64_t seq, uint8_t bucket) {
  struct sl_workers *ws = r->ws;
  struct sl_source *s = tag ? tag->s : NULL;
  if (s && r->holder.refused && !s->refused_later) {
    s->refused_later = 1; /* its input refuses instead of acking */
    s->refused_output = r->holder.refused_output;
    if (s->on_refused_later)
      s->on_refused_later(s); /* a close is deferred: s and tag stay */
  }
  tag_unref(tag);
  bucket_done(ws, bucket);
  (void)seq; /* results come in job order: it is the oldest */
  r->job_bytes -= r->sizes[r->seqs_head & (INFLIGHT_CAP - 1)];
  r->seqs_head++;
  r->inflight--;
  ws->inflight--;
  if (ws->waiters.next != &ws->waiters)
    wake_durable(ws);
}

static void free_result_strings(struct result *res) {
  free(res->rule);
  free(res->reason);
  free(res->schema);
}

static void apply(struct replica *r, struct result *res) {
  struct sl_worker *w = r->ws->w;
  struct sl_rules_result rr;
  struct emit *e, *next;
  uint64_t emitted = 0;
  int rc, stale = r->stale > 0, old = r->old > 0;
  if (stale)
    r->stale--;
  if (old)
    r->old--;
  /* before drain's fence: a replica waiting on the bytes sees them gone */
  atomic_fetch_sub(&r->held_bytes, res->bytes);
  for (e = res->emits; e; e = next) { /* before the event, as inline */
    next = e->next;
    sl_worker_emit(w, e->output, e->ev);
    free(e);
    emitted++;
  }
  if (res->ev == NULL) {
    /* emits-only: counted in pending_n since they were made */
    atomic_fetch_sub(&r->pending_n, emitted);
    w->holding_old -= (uint32_t)old;
    return;
  }
  rr.event = res->ev;
  rr.ntargets = res->ntargets;
  memcpy(rr.targets, res->targets,
         (size_t)res->ntargets * sizeof(rr.targets[0]));
  rr.outcome = (enum sl_rules_outcome)res->outcome;
  rr.route = stale ? -1 : res->route; /* goes on without a token, as a
                                         held one does at a reload */
  rr.rule = res->rule;
  rr.reason = res->reason;
  rr.schema = res->schema;
  if (rr.ntargets)
    sl_schemas_outputs(w, &rr);
  r->holder.input = &w->inputs[res->input];
  r->holder.refused = 0;
  rc = sl_worker_deliver(&r->holder, res->tag ? res->tag->s : NULL, &rr);
  free_result_strings(res);
  if (rc == SL_EAGAIN) {
    r->blocked = 1; /* stop here: the replica fills its ring, then stops */
    r->held_tag = res->tag;
    r->held_seq = res->seq;
    r->held_bucket = res->bucket;
    r->held_old = old;
    return;
  }
  w->holding_old -= (uint32_t)old;
  job_done(r, res->tag, res->seq, res->bucket);
}

/* Sources waiting for room in r's jobs try again, in the order they came:
 * the first still short of bytes makes the rest wait behind it again. */
static void room_wake(struct replica *r) {
  r->bytes_wait = 0;
  sl_queue_wake(&r->room_q);
}

static void drain(struct replica *r) {
  int n = 0;
  if (r->draining)
    return;
  r->draining = 1;
  while (!r->blocked) {
    struct result *p = sl_ring_peek(&r->results), res;
    if (p == NULL)
      break;
    res = *p;
    sl_ring_pop(&r->results);
    apply(r, &res);
    n++;
  }
  r->draining = 0;
  if (n == 0)
    return;
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_exchange(&r->stalled, 0))
    uv_async_send(&r->wake);
  if (sl_ring_room(&r->jobs))
    room_wake(r);
  move_wake(r->ws);
}

/* From an input between two reads (its source holds nothing): libuv reads
 * a busy stream up to 32 times before the loop turn reaches the replicas'
 * wake-up (on_check) and their results (on_results). Deciding its own
 * share inline meanwhile, main left the replicas without their new jobs
 * and with full result rings for that whole stretch: they idled, and two
 * workers ran slower than one. */
void sl_worker_pump(struct sl_worker *w) {
  struct sl_workers *ws = w->workers;
  int i;
  if (ws == NULL)
    return;
  for (i = 0; i < ws->n - 1; i++) {
    if (ws->r[i].pushed) {
      ws->r[i].pushed = 0;
      uv_async_send(&ws->r[i].wake);
    }
    drain(&ws->r[i]);
  }
}

static void on_results(uv_async_t *a) {
  struct sl_workers *ws = a->data;
  int i;
  for (i = 0; i < ws->n - 1; i++)
    drain(&ws->r[i]);
}

/* The holder's result went into its outputs (or was refused there). */
static void holder_resume(struct sl_source *s) {
  struct replica *r = container_of(s, struct replica, holder);
  r->blocked = 0;
  r->ws->w->holding_old -= (uint32_t)r->held_old;
  r->held_old = 0;
  job_done(r, r->held_tag, r->held_seq, r->held_bucket);
  r->held_tag = NULL;
  drain(r);
  /* drain wakes sources only when it applied a result; this one's bytes
   * (JOBS_MAX) may be what a source waits for */
  if (sl_ring_room(&r->jobs))
    room_wake(r);
}

int sl_workers_durable(struct sl_worker *w, struct sl_durable *d) {
  struct sl_workers *ws = w->workers;
  if (ws->inflight == 0 || covered(ws, ws->seq))
    return 0;
  d->async_seq = ws->seq;
  d->waiting = 1;
  d->prev = ws->waiters.prev;
  d->next = &ws->waiters;
  d->prev->next = d;
  ws->waiters.prev = d;
  return SL_EAGAIN;
}

uint64_t sl_workers_busy(struct sl_worker *w) {
  struct sl_workers *ws = w->workers;
  uint64_t n;
  int i;
  if (ws == NULL)
    return 0;
  /* a result with an event in the ring is still a job in flight: counting
   * the ring too told the drain's timeout line each such event twice */
  n = ws->inflight;
  for (i = 0; i < ws->n - 1; i++)
    n += atomic_load(&ws->r[i].pending_n);
  return n;
}

/* ---- the balance: buckets move to where there is time for them ---------- */

#define BALANCE_MS 200 /* a period */
#define BALANCE_GAP 0.05 /* busy fractions closer than this: nothing moves */
#define BALANCE_MIN_EVENTS 1000 /* per period: fewer, the loads say nothing */

/* Who decides b's events from now on (a moving bucket: where it goes). */
static int owner(const struct sl_workers *ws, int b) {
  return ws->moving[b] ? ws->moving[b] - 1 : ws->bucket[b];
}

static int count_buckets(const struct sl_workers *ws, int worker) {
  int b, n = 0;
  for (b = 0; b < 256; b++)
    n += owner(ws, b) == worker;
  return n;
}

/* A bucket with nothing in flight moves now; else it moves once that is
 * applied (bucket_done), its new events waiting at their sources. */
static void move_one(struct sl_workers *ws, int b, int to) {
  if (ws->bucket_inflight[b] == 0)
    ws->bucket[b] = (uint8_t)to;
  else
    ws->moving[b] = (uint8_t)(to + 1);
  ws->moves++;
}

/* Move up to k of from's buckets to worker to, those with nothing in
 * flight first, looking from the cursor on (the next move goes on from
 * there). Keeps at least one bucket on from. Returns how many move. */
static int move_buckets(struct sl_workers *ws, int from, int to, int k) {
  int i, pass, nb = count_buckets(ws, from), moved = 0;
  if (k > nb - 1)
    k = nb - 1;
  /* first those with nothing in flight; a busy replica has none such */
  for (pass = 0; pass < 2; pass++)
    for (i = 0; i < 256 && moved < k; i++) {
      int b = (ws->cursor + i) & 255;
      if (owner(ws, b) != from || ws->moving[b] ||
          (pass == 0 && ws->bucket_inflight[b]))
        continue;
      move_one(ws, b, to);
      moved++;
      ws->cursor = (b + 1) & 255;
    }
  return moved;
}

/* Worker 0's share (buckets) that evens the loads, from a linear model of
 * the last period: a replica's busy fraction is C times its share (C: the
 * rules' cost of all events, the mean over the replicas); worker 0's is
 * A (reading, writing, applying results: whatever its share) plus C times
 * its share. Even loads: A + C s0 = C (1 - s0) / (N - 1). A worker at 1.0
 * is the limit of the rate, so its load at that rate is what it shows.
 * Worker 0 keeps at least half its even share: an event handed off costs
 * main ~600 instructions (push, apply) besides the replica's decision and
 * its cache misses, so below that main saves little while the replicas
 * become the limit; and on an oversubscribed machine, where busy fractions
 * say little (main, preempted, looks busy), it cannot swing there. */
static int target0(const struct sl_workers *ws, const double *busy,
                   const int *nb) {
  double c = 0, a, s0;
  int i, t, lo;
  for (i = 1; i < ws->n; i++)
    c += busy[i] * 256.0 / nb[i];
  c /= ws->n - 1;
  if (c <= 0)
    return nb[0];
  a = busy[0] - c * nb[0] / 256.0;
  s0 = (1.0 - (ws->n - 1) * (a > 0 ? a : 0) / c) / ws->n;
  t = (int)(s0 * 256.0 + 0.5);
  lo = 128 / ws->n;
  return t < lo ? lo : t > 256 - (ws->n - 1) ? 256 - (ws->n - 1) : t;
}

/* The replica with the fewest (more: 1) or most (0) buckets. */
static int replica_by_share(const int *nb, int n, int fewest) {
  int i, r = 1;
  for (i = 2; i < n; i++)
    if (fewest ? nb[i] < nb[r] : nb[i] > nb[r])
      r = i;
  return r;
}

/* One period's decision from the fraction of it each worker was busy (the
 * CPU time its thread used). Worker 0 reads and writes every input and output
 * and applies the replicas' results, so with a cheap rule it is the limit
 * and sheds buckets; with a costly one they come back. It goes 3/4 of the
 * way to target0 (the model is rough: a replica pays cache misses worker 0
 * does not), one bucket at a time to or from the replicas with the fewest
 * or most; then the busiest replica gives the least busy one half their
 * gap's share of its buckets. Nothing moves for a gap under BALANCE_GAP or
 * fewer than 3 buckets to go: it settles instead of swinging. */
static int balance_step(struct sl_workers *ws, const double *busy) {
  int nb[SL_CONFIG_MAX_WORKERS] = {0};
  int i, d, moved = 0, b = 1, l = 1;
  for (i = 0; i < 256; i++)
    nb[owner(ws, i)]++;
  d = target0(ws, busy, nb) - nb[0];
  if (d <= -3 || d >= 3) {
    int k = d * 3 / 4, step = k < 0 ? -1 : 1;
    for (; k != 0; k -= step) {
      int r = replica_by_share(nb, ws->n, k < 0);
      int from = k < 0 ? 0 : r, to = k < 0 ? r : 0;
      if (move_buckets(ws, from, to, 1) == 0)
        break; /* it keeps its last one (or the rest are moving) */
      nb[from]--;
      nb[to]++;
      moved++;
    }
  }
  for (i = 2; i < ws->n; i++) {
    if (busy[i] > busy[b])
      b = i;
    if (busy[i] < busy[l])
      l = i;
  }
  if (busy[b] - busy[l] >= BALANCE_GAP) {
    int k = (int)(nb[b] * (busy[b] - busy[l]) / 2);
    moved += move_buckets(ws, b, l, k < 1 ? 1 : k);
  }
  return moved;
}

/* The test hook (SLUICE_WORKERS_CHURN=1): every bucket not already moving
 * moves to the next worker each period, whatever the load (at once, or
 * once its events in flight are applied), so tests see many moves of
 * both kinds while events flow. */
static void churn(struct sl_workers *ws) {
  int b;
  for (b = 0; b < 256; b++)
    if (!ws->moving[b])
      move_one(ws, b, (ws->bucket[b] + 1) % ws->n);
}

/* The CPU time worker i's thread used. Not its loop's busy wall time: on
 * a machine with more runnable threads than cores a preempted thread looks
 * busy, and the balance would shed worker 0 for nothing, while an event
 * handed off costs more CPU in all than one decided inline. */
static uint64_t cpu_ns(struct sl_workers *ws, int i) {
  struct timespec ts;
  if (clock_gettime(ws->clock[i], &ts) != 0)
    return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t decided_all(struct sl_workers *ws) {
  uint64_t n = ws->main_decided;
  int i;
  for (i = 0; i < ws->n - 1; i++)
    n += atomic_load_explicit(&ws->r[i].decided, memory_order_relaxed);
  return n;
}

static void on_balance(uv_timer_t *t) {
  struct sl_workers *ws = t->data;
  uint64_t now = uv_hrtime(), wall = now - ws->bal_wall;
  uint64_t events = decided_all(ws), n = events - ws->bal_events;
  double busy[SL_CONFIG_MAX_WORKERS];
  int i, moved;
  for (i = 0; i < ws->n; i++) {
    uint64_t cpu = cpu_ns(ws, i), d = cpu - ws->bal_cpu[i];
    busy[i] = wall == 0 ? 0.0 : d >= wall ? 1.0 : (double)d / (double)wall;
    ws->bal_cpu[i] = cpu;
  }
  ws->bal_wall = now;
  ws->bal_events = events;
  if (ws->shut || ws->w->stopping)
    return; /* draining: where a bucket is does not matter any more */
  if (ws->churn)
    churn(ws);
  else if (n >= BALANCE_MIN_EVENTS && (moved = balance_step(ws, busy)) > 0)
    sl_log(SL_LOG_DEBUG, "workers rebalanced", SL_I("moved", moved),
           SL_U("events", n), SL_D("busy_worker0", busy[0]),
           SL_D("busy_worker1", busy[1]),
           SL_I("buckets_worker0", count_buckets(ws, 0)), SL_END);
}

/* Replicas' CPU clocks are read once their threads run. */
static void balance_start(struct sl_workers *ws) {
  int i;
  ws->clock[0] = CLOCK_THREAD_CPUTIME_ID; /* read on this thread */
  for (i = 1; i < ws->n; i++)
    if (pthread_getcpuclockid(ws->r[i - 1].thread, &ws->clock[i]) != 0)
      return; /* no balance: the even share stays */
  ws->bal_wall = uv_hrtime();
  for (i = 0; i < ws->n; i++)
    ws->bal_cpu[i] = cpu_ns(ws, i);
  uv_timer_start(&ws->balance, on_balance, ws->balance_ms, ws->balance_ms);
}

/* workers_balance = false: never move (a bucket's rule state, sluice.seen
 * and rate limits, stays with its keys). SLUICE_WORKERS_BALANCE_MS (the
 * period; 0: never move) and SLUICE_WORKERS_CHURN are for tests:
 * undocumented for users. */
static void balance_init(struct sl_workers *ws) {
  const char *ms = getenv("SLUICE_WORKERS_BALANCE_MS");
  const char *churn_env = getenv("SLUICE_WORKERS_CHURN");
  ws->balance_ms = !ws->w->cfg->workers_balance ? 0
                   : ms ? strtoull(ms, NULL, 10) : BALANCE_MS;
  ws->churn = churn_env && strcmp(churn_env, "1") == 0;
  uv_timer_init(&ws->w->loop, &ws->balance);
  ws->balance.data = ws;
  uv_unref((uv_handle_t *)&ws->balance); /* never what keeps the loop up */
}

/* ---- lifecycle ----------------------------------------------------------- */

/* The main thread's stack size for the replicas, so rules get the same C
 * stack, but never under 1 MiB (8 MiB then, as when unlimited): each
 * thread's depth budget is measured against its own stack (state.c
 * cstack_budget), so a bigger one is only more room. */
static size_t stack_size(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_STACK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
      rl.rlim_cur < (1u << 20))
    return 8u << 20;
  return rl.rlim_cur > (64u << 20) ? 64u << 20 : (size_t)rl.rlim_cur;
}

static int replica_start(struct sl_workers *ws, struct replica *r, int index,
                         char *err, size_t errlen) {
  pthread_attr_t attr;
  int rc;
  r->ws = ws;
  r->index = index;
  r->cfg_copy = *ws->w->cfg;
  r->cfg_copy.rules.watch = 0; /* worker 0's watcher reloads every set */
  r->pending_tail = &r->pending;
  sl_source_init(&r->holder, &ws->w->inputs[0], holder_resume);
  r->holder.w = ws->w;
  if (sl_ring_init(&r->jobs, RING_CAP, sizeof(struct job)) != 0 ||
      sl_ring_init(&r->results, RING_CAP, sizeof(struct result)) != 0 ||
      sl_queue_init(&r->room_q, 1, 1, SL_QUEUE_BLOCK) != 0 ||
      (r->seqs = calloc(INFLIGHT_CAP, sizeof(*r->seqs))) == NULL ||
      (r->sizes = calloc(INFLIGHT_CAP, sizeof(*r->sizes))) == NULL) {
    snprintf(err, errlen, "out of memory");
    return SL_ENOMEM;
  }
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  ctl_send(r, CTL_START, NULL, NULL);
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stack_size());
  rc = pthread_create(&r->thread, &attr, replica_main, r);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    snprintf(err, errlen, "worker %d: cannot start its thread: %s", index,
             strerror(rc));
    return -rc;
  }
  r->thread_started = 1;
  if ((rc = ctl_wait(r, err, errlen)) != 0)
    return rc; /* the thread ended */
  if (sl_rules_add_replica(ws->w->rules, r->rules) != 0) {
    snprintf(err, errlen, "out of memory");
    return SL_ENOMEM;
  }
  return 0;
}

int sl_workers_start(struct sl_worker *w, char *err, size_t errlen) {
  struct sl_workers *ws;
  int i, rc;
  if (w->cfg->workers <= 1)
    return 0;
  ws = calloc(1, sizeof(*ws));
  if (ws == NULL || (ws->r = calloc((size_t)w->cfg->workers - 1,
                                    sizeof(*ws->r))) == NULL) {
    free(ws);
    snprintf(err, errlen, "out of memory");
    return SL_ENOMEM;
  }
  ws->w = w;
  ws->n = w->cfg->workers;
  ws->waiters.next = ws->waiters.prev = &ws->waiters;
  if (sl_queue_init(&ws->move_q, 1, 1, SL_QUEUE_BLOCK) != 0) {
    free(ws->r);
    free(ws);
    snprintf(err, errlen, "out of memory");
    return SL_ENOMEM;
  }
  for (i = 0; i < 256; i++)
    ws->bucket[i] = (uint8_t)(i % ws->n);
  w->workers = ws;
  uv_async_init(&w->loop, &ws->results_async, on_results);
  uv_check_init(&w->loop, &ws->check);
  ws->results_async.data = ws->check.data = ws;
  uv_check_start(&ws->check, on_check);
  balance_init(ws);
  ws->handles_open = 1;
  for (i = 0; i < ws->n - 1; i++)
    if ((rc = replica_start(ws, &ws->r[i], i + 1, err, errlen)) != 0)
      return rc; /* the worker's close stops the ones started */
  if ((rc = sl_workers_metrics(w)) != 0) {
    snprintf(err, errlen, "out of memory");
    return rc;
  }
  if (ws->balance_ms)
    balance_start(ws);
  sl_log(SL_LOG_INFO, "workers started", SL_I("workers", ws->n), SL_END);
  return 0;
}

uint64_t sl_workers_shutdown(struct sl_worker *w) {
  struct sl_workers *ws = w->workers;
  int i;
  if (ws == NULL)
    return 0;
  if (!ws->shut) {
    ws->shut = 1;
    for (i = 0; i < ws->n - 1; i++)
      ctl_send(&ws->r[i], CTL_SHUTDOWN, NULL, NULL);
    for (i = 0; i < ws->n - 1; i++)
      ctl_wait(&ws->r[i], NULL, 0);
  }
  return sl_workers_busy(w);
}

void sl_workers_finish(struct sl_worker *w) {
  struct sl_workers *ws = w->workers;
  int i;
  if (ws == NULL || ws->finished)
    return;
  ws->finished = 1;
  for (i = 0; i < ws->n - 1; i++)
    if (ws->r[i].rules) /* running */
      ctl_send(&ws->r[i], CTL_STOP, NULL, NULL);
  for (i = 0; i < ws->n - 1; i++)
    if (ws->r[i].rules)
      ctl_wait(&ws->r[i], NULL, 0);
  if (ws->handles_open) { /* (a failed init's close walked them) */
    if (!uv_is_closing((uv_handle_t *)&ws->results_async))
      uv_close((uv_handle_t *)&ws->results_async, NULL);
    if (!uv_is_closing((uv_handle_t *)&ws->check))
      uv_close((uv_handle_t *)&ws->check, NULL);
    if (!uv_is_closing((uv_handle_t *)&ws->balance))
      uv_close((uv_handle_t *)&ws->balance, NULL);
    ws->handles_open = 0;
  }
}

/* After a forced stop or a drain that timed out: what is still in the
 * rings never reaches an output (its producer got no ack). */
static void abandon(struct sl_worker *w, struct sl_event *ev, int input) {
  if (ev == NULL)
    return;
  if (input >= 0)
    w->inputs[input].stats.abandoned++;
  sl_event_fail_track(ev);
  sl_event_unref(ev);
}

static void free_emits(struct emit *e) {
  while (e) {
    struct emit *next = e->next;
    sl_event_unref(e->ev);
    free(e);
    e = next;
  }
}

static void replica_close(struct sl_worker *w, struct replica *r) {
  void *p;
  if (r->thread_started)
    pthread_join(r->thread, NULL);
  sl_source_close(&r->holder);
  if (r->jobs.slots)
    while ((p = sl_ring_peek(&r->jobs)) != NULL) {
      struct job *j = p;
      abandon(w, j->ev, j->input);
      free(j->schema);
      tag_unref(j->tag);
      sl_ring_pop(&r->jobs);
    }
  if (r->results.slots)
    while ((p = sl_ring_peek(&r->results)) != NULL) {
      struct result *res = p;
      free_emits(res->emits);
      abandon(w, res->ev, res->ev ? res->input : -1);
      free_result_strings(res);
      tag_unref(res->tag);
      sl_ring_pop(&r->results);
    }
  free_emits(r->pending);
  tag_unref(r->held_tag);
  sl_rules_free(r->rules); /* set 0 that read it is freed */
  sl_ring_close(&r->jobs);
  sl_ring_close(&r->results);
  sl_queue_close(&r->room_q);
  free(r->seqs);
  free(r->sizes);
  if (r->thread_started) {
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
  }
}

void sl_workers_close(struct sl_worker *w) {
  struct sl_workers *ws = w->workers;
  int i;
  if (ws == NULL)
    return;
  sl_workers_finish(w); /* a start that failed half way */
  for (i = 0; i < ws->n - 1; i++)
    replica_close(w, &ws->r[i]);
  sl_metric_remove(w->metrics, ws);
  sl_queue_close(&ws->move_q);
  free(ws->r);
  free(ws);
  w->workers = NULL;
}

/* ---- reload: every worker's rules, all or nothing ------------------------ */

struct reload_ctx {
  struct sl_workers *ws;
  void (*commit)(void *data);
  void *data;
  char prepared[SL_CONFIG_MAX_WORKERS];
  int committed;
};

/* Set 0 loaded: the worker switches, then every replica (main waits, so
 * no event is decided in between). */
static void commit_all(void *data) {
  struct reload_ctx *c = data;
  struct sl_route_limit *limits = c->ws->w->route_limits;
  int i;
  sl_log_thread_field(NULL, 0); /* the config's own lines: as they are */
  if (c->commit)
    c->commit(c->data);
  sl_log_thread_field("workers", c->ws->n);
  for (i = 0; i < c->ws->n - 1; i++) { /* replicas paused: the ring holds
                                          all they decided before it */
    struct replica *r = &c->ws->r[i];
    uint32_t n = (uint32_t)sl_ring_count(&r->results);
    c->ws->w->holding_old += n - r->old; /* those since the last reload */
    r->old = n;
  }
  if (c->ws->w->route_limits != limits) /* routes changed; replicas paused */
    for (i = 0; i < c->ws->n - 1; i++)
      c->ws->r[i].stale = (uint32_t)sl_ring_count(&c->ws->r[i].results);
  for (i = 0; i < c->ws->n - 1; i++)
    if (c->prepared[i])
      ctl_send(&c->ws->r[i], CTL_COMMIT, NULL, NULL);
  for (i = 0; i < c->ws->n - 1; i++)
    if (c->prepared[i]) {
      ctl_wait(&c->ws->r[i], NULL, 0);
      c->prepared[i] = 0;
    }
  c->committed = 1;
}

static void abort_all(struct reload_ctx *c) {
  int i;
  for (i = 0; i < c->ws->n - 1; i++)
    if (c->prepared[i])
      ctl_send(&c->ws->r[i], CTL_ABORT, NULL, NULL);
  for (i = 0; i < c->ws->n - 1; i++)
    if (c->prepared[i]) {
      ctl_wait(&c->ws->r[i], NULL, 0);
      c->prepared[i] = 0;
    }
}

int sl_workers_reload(struct sl_worker *w, const struct sl_config *cfg,
                      const char *trigger, void (*commit)(void *data),
                      void *data, char *err, size_t errlen) {
  struct sl_workers *ws = w->workers;
  struct reload_ctx c;
  char why[1024];
  int i, rc, failed = 0;

  sl_log_thread_field("workers", ws->n); /* set 0's lines speak for all */
  memset(&c, 0, sizeof(c));
  c.ws = ws;
  c.commit = commit;
  c.data = data;
  for (i = 0; i < ws->n - 1; i++) /* they build in parallel */
    ctl_send(&ws->r[i], CTL_PREPARE, cfg, trigger);
  for (i = 0; i < ws->n - 1; i++) {
    rc = ctl_wait(&ws->r[i], why, sizeof(why));
    c.prepared[i] = rc == 0;
    if (rc != 0 && rc != SL_EALREADY && !failed) {
      failed = rc;
      snprintf(err, errlen, "worker %d: %s", i + 1, why);
    }
  }
  if (failed) {
    abort_all(&c);
    sl_rules_reload_failed(w->rules, err);
    sl_log(SL_LOG_ERROR, "rules reload failed on a worker; every worker "
           "keeps the running rules", SL_S("trigger", trigger),
           SL_S("error", err), SL_END);
    sl_log_thread_field(NULL, 0);
    return failed;
  }
  rc = sl_rules_prepare(w->rules, cfg, trigger, why, sizeof(why));
  /* each worker read the files on its own, the replicas before set 0: a
   * file written in between (an editor, a deploy) would leave them on
   * different code under one version number. None switches then; the
   * next reload (the watcher's, for one) reads them again. */
  for (i = 0; (rc == 0 || rc == SL_EALREADY) && i < ws->n - 1; i++)
    if (!sl_rules_same_code(w->rules, ws->r[i].rules)) {
      sl_rules_abort(w->rules);
      abort_all(&c);
      snprintf(err, errlen, "worker %d: a rules file changed while the "
               "workers loaded it; reload again", i + 1);
      sl_rules_reload_failed(w->rules, err);
      sl_log(SL_LOG_ERROR, "rules reload failed on a worker; every worker "
             "keeps the running rules", SL_S("trigger", trigger),
             SL_S("error", err), SL_END);
      sl_log_thread_field(NULL, 0);
      return SL_EINVAL;
    }
  if (rc == 0)
    sl_rules_commit_with(w->rules, commit_all, &c);
  rc = rc == SL_EALREADY ? 0 : rc != 0 ? SL_EINVAL : 0; /* as reload_with */
  if (rc != 0 || !c.committed)
    abort_all(&c); /* set 0 failed, or found nothing to change */
  sl_log_thread_field(NULL, 0);
  return rc;
}

int sl_workers_rules_reload(void *data, const char *trigger) {
  struct sl_worker *w = data;
  char err[1024];
  if (w->workers == NULL)
    return sl_rules_reload(w->rules, trigger);
  if (w->stopping || w->workers->shut)
    return SL_EINVAL; /* draining: the rules stay as they are */
  return sl_workers_reload(w, NULL, trigger, NULL, NULL, err, sizeof(err));
}

/* ---- metrics --------------------------------------------------------------- */

#define C SL_METRIC_COUNTER
#define G SL_METRIC_GAUGE
static const struct sl_metric m_workers = {
    "sluice_workers", "Rule workers (threads deciding events; workers = N).",
    G, {0}};
static const struct sl_metric m_decided = {
    "sluice_worker_events_total",
    "Events decided by each worker (worker 0: the main loop, inline).", C,
    {"worker", NULL}};
static const struct sl_metric m_queue = {
    "sluice_worker_queue_events",
    "Events in the rings to and from each worker (jobs and results).", G,
    {"worker", NULL}};
static const struct sl_metric m_held = {
    "sluice_worker_held",
    "1 while a worker's results wait for room in an output queue.", G,
    {"worker", NULL}};
static const struct sl_metric m_emit_dropped = {
    "sluice_worker_emit_dropped_total",
    "Events a worker's rules emitted dropped because its result ring "
    "stayed full (timers, on_stop) or held 64 MiB.", C, {"worker", NULL}};
static const struct sl_metric m_buckets = {
    "sluice_worker_buckets",
    "Shard buckets (of 256) each worker decides: its share of the keys "
    "and of the keyless events; the balance moves them (a bucket counts "
    "for the worker it moves to while its last events finish).", G,
    {"worker", NULL}};
static const struct sl_metric m_moves = {
    "sluice_worker_bucket_moves_total",
    "Shard buckets the balance moved from one worker to another.", C, {0}};
#undef C
#undef G

static void collect(struct sl_metric_out *out, const struct sl_metric *m,
                    void *data) {
  struct sl_workers *ws = data;
  char num[16];
  const char *v[] = {num};
  int i;
  if (m == &m_workers || m == &m_moves) {
    sl_metric_put_u64(out, NULL, m == &m_workers ? (uint64_t)ws->n : ws->moves);
    return;
  }
  for (i = 0; i < ws->n; i++) {
    struct replica *r = i ? &ws->r[i - 1] : NULL;
    uint64_t x = 0;
    snprintf(num, sizeof(num), "%d", i);
    if (m == &m_decided)
      x = r ? atomic_load_explicit(&r->decided, memory_order_relaxed)
            : ws->main_decided;
    else if (m == &m_queue)
      x = r ? sl_ring_count(&r->jobs) + sl_ring_count(&r->results) : 0;
    else if (m == &m_held)
      x = r ? (uint64_t)r->blocked : 0;
    else if (m == &m_buckets)
      x = (uint64_t)count_buckets(ws, i);
    else if (m == &m_emit_dropped)
      x = r ? atomic_load_explicit(&r->emit_dropped, memory_order_relaxed)
            : 0;
    sl_metric_put_u64(out, v, x);
  }
}

int sl_workers_metrics(struct sl_worker *w) {
  struct sl_workers *ws = w->workers;
  int rc = sl_metric_add(w->metrics, &m_workers, collect, ws);
  if (rc == 0)
    rc = sl_metric_add(w->metrics, &m_decided, collect, ws);
  if (rc == 0)
    rc = sl_metric_add(w->metrics, &m_queue, collect, ws);
  if (rc == 0)
    rc = sl_metric_add(w->metrics, &m_held, collect, ws);
  if (rc == 0)
    rc = sl_metric_add(w->metrics, &m_emit_dropped, collect, ws);
  if (rc == 0)
    rc = sl_metric_add(w->metrics, &m_buckets, collect, ws);
  if (rc == 0)
    rc = sl_metric_add(w->metrics, &m_moves, collect, ws);
  return rc;
}
