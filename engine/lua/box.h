/* box.h - INTERNAL to engine/lua: the struct box (one Lua state of a rule
 * and its budget) and struct sl_rule that the files of the sandbox (rule.c,
 * state.c, env.c, api.c, ev.c) share, with the functions they call in one
 * another. Only those include it; the public API is sandbox.h. */
#ifndef SL_BOX_H
#define SL_BOX_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "sandbox.h"

#define HOOK_COUNT 1000      /* VM instructions between deadline checks */
#define MAX_TIMERS 64        /* sluice.every per state */
#define MAX_COUNTERS 1024    /* sluice.counter series per rule */
#define MAX_LABELS 16
#define RATE_KEYS 8192       /* sluice.rate_limit buckets, LRU-evicted */
#define SEEN_KEYS 65536      /* sluice.seen entries, LRU-evicted */
#define SORT_MAX (1u << 17)  /* table.sort runs in C, where no hook fires */
#define MAX_MODULE_NAME 128
#define SETUP_BUDGET_MS 1000 /* building a state's environment (engine code) */
#define MAX_MODULE_LOOKUPS 256 /* require'd paths kept per rule version */
#define MAX_C_DEPTH 100      /* C functions re-entering Lua, nested */
#define C_STACK_MAX (2u << 20) /* C stack bytes those may take */
#define CWORK_CHECK (1u << 20) /* C work units between clock checks */
#define WATCHDOG_SIGNAL 5    /* SIGRTMIN + this stops a rule past its deadline */
#define GC_STEP_KB 64        /* box_gc_slice's step between clock checks */
#define DATE_FORMAT_MAX 256  /* os.date format bytes */
#define SORT_CHEAP_N 2048    /* table.sort this small may skip sort_less */
#define SORT_CHEAP_LEN 512   /* ... when no string is longer */
#define NIL32 UINT32_MAX
#define TIMER_LOG_BURST 20
#define TIMER_LOG_WINDOW_NS 10000000000ull
#define REBUILD_WAIT_MIN_NS 100000000ull    /* a failed rebuild: 100 ms */
#define REBUILD_WAIT_MAX_NS 10000000000ull  /* doubling to 10 s */
/* C copies of what a rule hands over are bounded (issue 9, finding 10) */
#define LABEL_MAX 128        /* bytes of a metric name, label name or value */
#define ROUTE_NAME_MAX 256   /* bytes of an output name on_event returns */
#define RESULT_CACHE_N 4     /* names take_result knows by address */
#define LOG_LINE_MAX 8192    /* bytes of a log message; longer is cut */
#define LOG_FIELDS_MAX 8192  /* bytes of a log line's fields (msgpack) */
#define LOG_CALL_MAX 65536   /* log bytes one call into the rule may write */
#define BIGSTR_MIN (256u << 10) /* string results built in checked pieces */
/* The sandbox's own Lua chunks (env.c) are named with this prefix; where_of
 * skips their frames, so an error they raise for the rule is placed at the
 * rule's line. */
#define SL_INTERNAL_CHUNK "=sluice:"
#define BIGSTR_PIECE (1u << 20) /* bytes written between clock checks */
#define CONCAT_PIECE 65536    /* table.concat elements between clock checks */

/* Fixed slots at the bottom of each state's main stack, so a call into
 * the rule needs no lookup. */
#define SLOT_HANDLER 1
#define SLOT_ON_EVENT 2
#define SLOT_EVENT 3
#define SLOT_ROUTE 4 /* the output name on_event returned last (take_result) */
#define SLOT_BASE 4

/* What on_event did to the event; the values live in registry slots. */
enum {
  EV_TOPIC = 1 << 0,      /* ev.topic set */
  EV_KEY = 1 << 1,        /* ev.key set */
  EV_KEY_NIL = 1 << 2,    /* ... to nil */
  EV_HEADERS = 1 << 3,    /* ev.headers decoded or set */
  EV_PAYLOAD = 1 << 4,    /* ev.payload decoded or set */
  EV_PAYLOAD_NIL = 1 << 5, /* ... and it is nil */
  EV_PAYLOAD_SET = 1 << 6  /* ev.payload was assigned */
};

struct timer {
  int64_t due_ms, every_ms;
  int ref;
};

/* A bounded hash of 128-bit key fingerprints with an LRU list, for
 * rate_limit and seen. Keys are not stored: two keys collide only when
 * both 64-bit halves of their keyed hash do. */
struct lru_node {
  uint64_t h1, h2;
  union {
    struct {
      double a, b; /* seen: expiry ns */
    };
    struct {
      uint64_t tokens, last_ns; /* rate_limit: the sl_ratelimit state */
    } rate;
  };
  uint32_t prev, next, chain;
};

struct lru {
  struct lru_node *nodes;
  uint32_t *buckets;
  uint32_t cap, n, mask, head, tail;
};

struct module {
  char *path;
  struct sl_buf text;
  int found; /* 0: the file was not there */
};

struct counter {
  char *name, *labels;
  double value;
};

/* One Lua state of a rule and the allocator that budgets it. A rebuild
 * makes a new box before the old one is closed. */
#define BOX_RESERVE_BLOCKS 8
#define BOX_RESERVE_BYTES 2048 /* the largest lua_newstate asks for after
                                  its GG_State (whose failure it handles) */

struct box {
  struct sl_rule *rule;
  lua_State *L;
  size_t used, limit;
  uint64_t deadline; /* monotonic ns; past it, the CPU clock decides */
  uint64_t budget_ns; /* the rule's cpu_budget_ms when the call started */
  uint64_t cpu_ref;  /* the thread's CPU clock shortly before the call */
  uint64_t sample_mono, sample_cpu; /* both clocks, sampled now and then */
  pthread_t sample_thread; /* whose CPU clock sample_cpu is */
  uint64_t call_no;  /* counts calls: tells one from the next */
  int in_call;       /* a call into Lua is running */
  int cpu_hit;       /* the hook or a check raised for the deadline */
  char cpu_where[256]; /* where it first did in this call (cpu_raise) */
  int fast_hook;     /* hook count lowered to 1 after the deadline */
  int counting;      /* no watchdog: the count hook runs between deadlines */
  int oom;           /* the allocator refused during this call */
  char oom_where[256];
  /* blocks made before lua_newstate and handed out by box_alloc when
   * malloc fails inside it: LuaJIT 2.1 crashes (NULL dereference) when
   * an allocation after its first one fails there */
  void *reserve[BOX_RESERVE_BLOCKS];
  int nreserve;
  int ref_handler, ref_event, ref_on_event, ref_module, ref_snapshot,
      ref_restore, ref_topic, ref_key, ref_headers, ref_payload, ref_drop,
      ref_tmp, ref_proot, ref_on_stop;
  int ref_finish; /* finish() as a function value: none made per call */
  uint32_t pgen; /* counts on_event calls: payload proxies of older ones
                    are stale (proxy.c) */
  void *proot;   /* the payload's root proxy in this call, or NULL */
  void *pwlog;   /* proxy.c's write log of that root (in the state) */
  int last_line; /* of the file, for contract errors */
  int ret_type;  /* what the chunk returned */
  int cdepth;    /* nesting of C functions that call back into Lua */
  uintptr_t cstack0; /* C stack address at the outermost guarded call */
  size_t cwork;      /* C work (bytes, elements) since the last clock check */
  size_t gc_live;    /* bytes in use after the last full GC cycle */
  int gc_busy;       /* GC cycle ends box_gc_run still owes */
  int gc_oom, gc_dirty; /* they were owed after a memory error; another
                           came while they ran */
  char *strbuf;      /* l_rep/l_strmap's scratch, charged to the cap and */
  size_t strbuf_cap; /* ... given back when the call ends */
  struct sl_event *ev; /* the event of the running on_event */
  unsigned evflags;
  struct sl_event *changed; /* built by finish() */
  struct timer timers[MAX_TIMERS];
  int ntimers;
  int timer_next; /* where the next sl_rule_run_timers starts looking */
  char **topics;
  int ntopics;
  int on_error; /* enum sl_rule_on_error, from the rule table */
  int jit;      /* runs compiled, with the profiler interrupt (state.c) */
  volatile int jit_held; /* this state holds the profiler interrupt */
  void *evc; /* ev.c's per-state cache (in the event userdata) */
  const void *route_p; /* the string at SLOT_ROUTE (take_result) */
  /* the output names on_event returned lately, for a rule that routes to
   * a few by turns (take_result): each string alive in its registry slot
   * (ref_res), so its address names it; seq is r->routes_seq when it was
   * the decision (each seq names one list of routes) */
  struct {
    const void *p; /* NULL: empty */
    uint64_t seq;
    char name[ROUTE_NAME_MAX + 1];
  } res[RESULT_CACHE_N];
  int ref_res[RESULT_CACHE_N], res_next;
  int ev_shown; /* ev.topic reads a table ev.c filled: ev_hide before
                   rule code runs outside on_event */
};

struct sl_rule {
  char *path;   /* the name in messages (relative to display_root) */
  char *source; /* the file, as given to sl_rule_load */
  char hash[65];
  char *scripts_dir, *lib_dir;
  uint32_t cpu_budget_ms, memory_mb;
  int jit; /* limits->jit */
  struct sl_rule_host host;
  struct sl_idgen idgen; /* when the host has none */
  struct box *box;
  uint64_t rebuilds;
  uint32_t rebuild_fails;     /* tries failed in a row (rule_rebuild) */
  uint64_t rebuild_after_ns;  /* and no new one before this */
  /* filled by the error handler */
  int err_set;
  char err_msg[512], err_where[256], err_tb[768];
  /* scratch, reused between calls */
  struct sl_buf routes, buf1, buf2;
  int routes_one; /* routes holds one name: a string result, checked */
  uint64_t routes_seq; /* bumped whenever routes changes (the decision's) */
  struct sl_buf src; /* the rule's text as loaded: rebuilds use it */
  int src_read;
  struct module *mods; /* require'd files as first read */
  int nmods;
  /* the modules its load looked up (paths, presence, text), as a digest:
   * what sl_rule_same_code compares. mods itself grows at any later
   * require, on the rule's own thread and only in the workers whose events
   * ran that line, so it differs between workers on the same code (and
   * another thread may not read it then) */
  char mods_hash[65];
  size_t mods_bytes;
  struct counter *counters;
  int ncounters;
  struct lru rate, seen;
  uint32_t max_event_bytes;
  uint64_t log_call; /* the call (box call_no) log_bytes counts for */
  const void *log_box; /* and its box */
  size_t log_bytes;
  uint64_t span_seq; /* for span ids of emitted events */
  uint64_t event_deadline; /* on_event's, which finish() also spends */
  uint64_t event_cpu_ref;  /* and its CPU reference */
  uint64_t seed1, seed2;
  int64_t wall0_ns;
  uint64_t mono0_ns;
  /* timer errors: at most TIMER_LOG_BURST lines per TIMER_LOG_WINDOW_NS
   * (sluice_core.so for busted has no log.c, hence not sl_log_limiter) */
  uint64_t timer_log_start_ns, timer_log_suppressed;
  uint32_t timer_log_n;
  uint64_t timer_errors;
};

#pragma GCC visibility push(hidden) /* not exported from sluice_core.so */

extern const char drop_sentinel; /* its address is sluice.drop's mark */

/* state.c */
struct box *box_of(lua_State *L);
const char *src_of(const lua_Debug *ar);
void where_of(lua_State *L, int level, char *buf, size_t n,
              const char *fallback);
void *box_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void strbuf_release(struct box *b);
uint64_t rule_mono_ns(const struct sl_rule *r);
void check_cpu(lua_State *L);
void set_hook(struct box *b, int count);
/* Let b's state run compiled (rules.jit): the JIT on, with the profiler
 * interrupt that stops compiled code past the deadline. 0, or -1 when the
 * interrupt cannot be had (the state then stays interpreted). */
int box_jit_on(struct box *b);
int on_error(lua_State *L);
int box_call(struct box *b, int nargs, int nresults);
/* The C function in registry slot ref with ud, right after a call and on
 * its budget (finish after on_event); the epilogue is box_call's. */
int box_call_after(struct box *b, int ref, void *ud);
int box_cpcall(struct box *b, lua_CFunction fn, void *ud);
enum sl_rule_error describe(struct box *b, int st, char *msg,
                            size_t msglen, char *where,
                            size_t wherelen, char *tb, size_t tblen);
void push_ref(lua_State *L, int ref);
void set_ref(lua_State *L, int ref, int idx);
const char *msg_str(lua_State *L, int idx);
void cdepth_enter(lua_State *L, struct box *b);
int guarded_call(lua_State *L, int n);
int box_pcall(lua_State *L);
int box_xpcall(lua_State *L);
void charge(lua_State *L, size_t n);
char *strbuf_get(lua_State *L, size_t n);
int box_usable_after_oom(struct box *b);
void box_gc_slice(struct box *b);

/* env.c */
int is_bytecode(const uint8_t *p, size_t n);
int read_file(struct sl_buf *out, const char *path, size_t max);
int box_setup(lua_State *L);

/* api.c */
uint64_t mix64(uint64_t x);
void lru_close(struct lru *l);
int l_print(lua_State *L);
void open_sluice(lua_State *L, int env);

/* ev.c */
void open_event(lua_State *L, struct box *b);
void encode_headers(lua_State *L, int idx, struct sl_buf *out,
                    const char *what, size_t max, const char *tp);
struct sl_event *wire_event(lua_State *L, struct sl_rule *r,
                            const char *what, struct sl_str id,
                            struct sl_str topic, struct sl_str key,
                            int has_time, int64_t time,
                            const uint8_t *hp, size_t hl,
                            const uint8_t *pp, size_t pl, int trace);
int child_traceparent(struct sl_rule *r, const struct sl_event *ev,
                      char out[55]);
int finish(lua_State *L);
int finish_log(struct box *b);
int read_only(struct box *b);
void ev_begin(struct box *b);
void ev_hide(lua_State *L, struct box *b);

#pragma GCC visibility pop

#endif
