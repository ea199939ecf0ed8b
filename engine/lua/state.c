/* state.c - the Lua state of a rule's box: the allocator that budgets
 * every byte, the CPU deadline (count hook and watchdog timer), calls into
 * the rule under a traceback handler, the C-depth guard and the stepped GC.
 * Internal to engine/lua (box.h). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>

#include "box.h"

/* ---- allocator, clocks, hook --------------------------------------------- */

struct box *box_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

/* The frame's file in full: Lua's short_src is cut to 60 bytes. */
const char *src_of(const lua_Debug *ar) {
  return ar->source && ar->source[0] == '@' ? ar->source + 1 : ar->short_src;
}

/* The sandbox's own Lua chunks (SL_INTERNAL_CHUNK): an error they raise
 * for the rule (string.format's refusal of %p) is the rule's line's. */
static int internal_frame(const lua_Debug *ar) {
  return ar->source && strncmp(ar->source, SL_INTERNAL_CHUNK,
                               sizeof(SL_INTERNAL_CHUNK) - 1) == 0;
}

/* where_of looks at this many frames at most: LuaJIT finds each level by
 * walking the stack from its top, so a walk to level d costs d^2/2 frame
 * steps. A rule tail-calling into xpcall (its own frames gone, pcall's C
 * frames and the sandbox's xpcall chunk's left) nests thousands of frames with
 * none of its own near the top; after the budget every instruction raises
 * and each raise walked them all: a 20 ms budget ran 27 s of CPU at 2000
 * levels, longer deeper. Past the cap the rule's file stands (fallback). */
#define WHERE_MAX_LEVELS 32

void where_of(lua_State *L, int level, char *buf, size_t n,
              const char *fallback) {
  lua_Debug ar;
  int last = level + WHERE_MAX_LEVELS;

  for (; level < last && lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 &&
        !internal_frame(&ar)) {
      snprintf(buf, n, "%s:%d", src_of(&ar), ar.currentline);
      return;
    }
  }
  snprintf(buf, n, "%s", fallback);
}

/* Every byte of a state passes here. Growth past the limit is refused
 * (LuaJIT raises "not enough memory"); shrinking never fails. */
void *box_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  struct box *b = ud;
  void *p;

  if (ptr == NULL)
    osize = 0;
  if (nsize == 0) {
    free(ptr);
    b->used -= osize;
    return NULL;
  }
  if (nsize > osize && b->used - osize + nsize > b->limit) {
    if (!b->oom && b->in_call) /* remember where, for the message */
      where_of(b->L, 0, b->oom_where, sizeof(b->oom_where), b->rule->path);
    b->oom = 1;
    return NULL;
  }
  p = realloc(ptr, nsize);
  if (p == NULL && ptr == NULL && nsize <= BOX_RESERVE_BYTES && b->nreserve)
    p = b->reserve[--b->nreserve]; /* inside lua_newstate (box_new) */
  if (p == NULL) {
    if (nsize > osize)
      return NULL;
    p = ptr; /* a shrink that failed: keep the bigger block */
  }
  b->used = b->used - osize + nsize;
  return p;
}

/* Give back the string scratch (see strbuf_get) at the end of a call. */
void strbuf_release(struct box *b) {
  if (b->strbuf != NULL)
    box_alloc(b, b->strbuf, b->strbuf_cap, 0);
  b->strbuf = NULL;
  b->strbuf_cap = 0;
}

uint64_t rule_mono_ns(const struct sl_rule *r) {
  return r->host.mono_ns ? r->host.mono_ns(r->host.data) : sl_mono_ns();
}

static void on_hook(lua_State *L, lua_Debug *ar);
static void idle_hook(struct box *b);

/* Raise the budget's error. Past the budget every instruction raises, as
 * the rule's pcalls unwind, one raise per level: only the first looks up
 * where (the line that ran out of budget), the others say the same. Each
 * lookup walks up to WHERE_MAX_LEVELS frames, and a rule nesting xpcall
 * chains in coroutines (90 coroutines of 3000 levels) unwound 270000
 * levels: 1.9 s of CPU for a 200 ms budget, mostly in those walks. */
static void cpu_raise(lua_State *L, struct box *b) {
  if (!b->cpu_hit)
    where_of(L, 0, b->cpu_where, sizeof(b->cpu_where), b->rule->path);
  b->cpu_hit = 1;
  if (!b->fast_hook) { /* from now on every instruction raises */
    b->fast_hook = 1;
    lua_sethook(L, on_hook, LUA_MASKCOUNT, 1); /* hooks are per state */
  }
  lua_pushfstring(L, "%s: cpu budget of %d ms exceeded", b->cpu_where,
                  (int)b->rule->cpu_budget_ms);
  lua_error(L);
}

/* The budget is CPU time, not wall time: a rule preempted by a busy
 * machine (a noisy neighbour, a container's CPU quota) must not be
 * stopped for time it did not run. The thread's CPU clock is a syscall
 * (~225 ns here, 16 ns for the monotonic one), too dear for every call,
 * so a call is timed on the monotonic clock, which runs at least as fast
 * as the CPU clock; only once that deadline passes is the CPU clock read
 * and compared with a sample taken at most a sixteenth of the budget
 * before the call started. The call is stopped once the thread spent the
 * budget since that sample (so after at least 15/16 of it in the call,
 * at most all of it); otherwise the deadline moves out by the CPU time
 * left. */
static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
    return UINT64_MAX; /* no CPU clock: the wall deadline stands */
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Set b's deadline and CPU reference for a call starting now. The sample
 * is the box's own (thread-local storage costs more per call in the shared
 * module than the box's field), taken again when the call runs on another
 * thread than the sample's: a box loaded on one thread and run at once on
 * another compared the runner's CPU clock with the loader's, and a call
 * that had used 0.2 ms of a 200 ms budget was stopped at its wall
 * deadline (test_sandbox). */
static inline void budget_start(struct box *b) {
  uint64_t now = sl_mono_ns(), budget = (uint64_t)b->rule->cpu_budget_ms *
                                        1000000u;
  pthread_t self = pthread_self();
  b->budget_ns = budget;
  if (sl_unlikely(now - b->sample_mono > budget / 16 || b->sample_mono == 0 ||
                  !pthread_equal(self, b->sample_thread))) {
    b->sample_cpu = thread_cpu_ns();
    b->sample_mono = now;
    b->sample_thread = self;
  }
  b->cpu_ref = b->sample_cpu;
  b->deadline = now + budget;
  b->call_no++;
}

static void wd_arm(uint64_t at);

/* The wall deadline has passed: 1 when the CPU budget is spent too, else
 * 0 with the deadline moved out by the CPU time left. */
static int budget_spent(struct box *b) {
  uint64_t budget = (uint64_t)b->rule->cpu_budget_ms * 1000000u;
  uint64_t cpu = thread_cpu_ns(), used;
  if (cpu == UINT64_MAX || b->cpu_ref == UINT64_MAX || cpu < b->cpu_ref)
    return 1;
  used = cpu - b->cpu_ref;
  if (used >= budget)
    return 1;
  b->deadline = sl_mono_ns() + (budget - used);
  return 0;
}

/* The hook between deadlines. With a watchdog (wd_start), none: under a
 * count hook the interpreter sends every VM instruction through a hook
 * check (a dozen machine instructions each, a tenth of a small rule's
 * call), and the watchdog sets the count-1 hook itself once a deadline
 * passes. Without one, and with rules.jit, every HOOK_COUNT
 * instructions. */
static void idle_hook(struct box *b) {
  if (b->counting || b->jit)
    lua_sethook(b->L, on_hook, LUA_MASKCOUNT, HOOK_COUNT);
  else
    lua_sethook(b->L, NULL, 0, 0);
}

static int past_budget(struct box *b) {
  if (!b->in_call || sl_mono_ns() < b->deadline)
    return 0;
  if (b->deadline == UINT64_MAX || budget_spent(b))
    return 1;
  if (b->fast_hook) { /* the watchdog fired early: back to the slow pace */
    b->fast_hook = 0;
    idle_hook(b);
  }
  wd_arm(b->deadline);
  return 0;
}

static void on_hook(lua_State *L, lua_Debug *ar) {
  struct box *b = box_of(L);
  (void)ar;
  if (past_budget(b))
    cpu_raise(L, b);
}

/* For C code that loops (patterns, codecs): the same deadline. */
void check_cpu(lua_State *L) {
  struct box *b = box_of(L);
  if (past_budget(b))
    cpu_raise(L, b);
}

void set_hook(struct box *b, int count) {
  lua_sethook(b->L, on_hook, LUA_MASKCOUNT, count);
}

/* ---- the JIT's interrupt (rules.jit) --------------------------------------
 * A count hook never fires inside compiled code (tests/c/test_jit_budget.c
 * measures it): a compiled loop would run past any budget. The one check
 * LuaJIT puts into machine code is its profiler's: in line mode ("l") each
 * trace tests its VM's profile-hook bit at every new source line and at its
 * start (so in every loop), and exits to the interpreter when the bit is
 * set; the profiler's SIGPROF timer sets it. The profiler serves one VM per
 * process, and stopping it flushes that VM's compiled code. So:
 * - a VM that never runs code (park) owns the profiler between overruns,
 *   with a timer that in effect never fires; a JIT state gets line mode
 *   from a start that the owned profiler otherwise ignores;
 * - past a call's deadline, its CPU budget spent, the watchdog hands the
 *   profiler to the running state and sends its first tick to this thread
 *   at once (the 1 ms timer ticks on, in the kernel's coarser steps): the
 *   compiled code exits at its next line, on_profile lowers the count hook
 *   to 1 and the hook decides as with the JIT off;
 * - after that call the state gives it back (its compiled code is flushed:
 *   a price paid only after an overrun) and gets line mode again.
 * One state holds the interrupt at a time; another overrunning call waits
 * for it (the watchdog retries every ms), so its overrun grows by the time
 * the first takes to stop. */
#define JIT_PARK_MODE "i1000000" /* ms of process CPU between samples */
#define JIT_HELD_MODE "i1"
/* Past a deadline, until the hook runs (or, holding the interrupt, until
 * the compiled code exits to it; or waiting for another state to give the
 * interrupt back): tick again this much later. */
#define RETICK_NS 1000000u

static lua_State *jit_park;
static atomic_int jit_busy; /* 1: the interrupt is moving or held */
static int jit_ok = -1;     /* the park VM: -1 not made, 0 failed, 1 made */

static void *park_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud, (void)osize;
  if (nsize == 0) {
    if (p) /* never in a signal handler: the park's buffer stays NULL */
      free(p);
    return NULL;
  }
  return realloc(p, nsize);
}

static void on_park(void *data, lua_State *L, int samples, int vmstate) {
  (void)data, (void)L, (void)samples, (void)vmstate; /* never runs code */
}

/* In the interpreter, the compiled code having exited on the profiler's
 * bit: the count hook now decides at the next instruction. */
static void on_profile(void *data, lua_State *L, int samples, int vmstate) {
  struct box *b = data;
  (void)samples, (void)vmstate;
  if (b->in_call) {
    b->fast_hook = 1;
    lua_sethook(L, on_hook, LUA_MASKCOUNT, 1);
  }
}

static void jit_lock(void) {
  int z = 0;
  while (!atomic_compare_exchange_weak(&jit_busy, &z, 1)) {
    struct timespec ts = {0, 100000};
    z = 0;
    nanosleep(&ts, NULL);
  }
}

/* LuaJIT's SIGPROF mode has no lock (profile_lock is a no-op): its handler
 * sets the profiled VM's hook bit and rewrites its dispatch table, assuming
 * it runs on that VM's thread. But the profiler's timer is process-wide, and
 * its signal goes to whichever thread runs when it expires: measured, about
 * half the ticks landed on another thread (a worker spinning beside the
 * overrunning one). Those raced the holder's own hook updates on the bit and
 * the table; the interleaving that leaves the bit set over a table without
 * the hook loses the interrupt for good: the compiled loop exits at the
 * bit's check and comes back, no hook ever runs, no tick sets the bit again
 * (a rare hang of test_sandbox under load). So while a state holds the
 * interrupt, a tick on another thread is sent on to the holder's thread. */
static void (*jit_lj_sigprof)(int); /* LuaJIT's handler */
static volatile pid_t jit_tid;      /* the holder's thread */

static void on_sigprof(int sig) {
  int saved = errno;
  if ((pid_t)syscall(SYS_gettid) == jit_tid)
    jit_lj_sigprof(sig);
  else
    syscall(SYS_tgkill, getpid(), jit_tid, SIGPROF);
  errno = saved;
}

/* Right after the profiler was started for the state of this thread.
 * 1 when the ticks now come to this thread. */
static int jit_sigprof_here(void) {
  struct sigaction sa;
  sigset_t mask;
  /* a holder that blocks SIGPROF would see none: leave the ticks where
   * they land */
  if (pthread_sigmask(SIG_BLOCK, NULL, &mask) != 0 ||
      sigismember(&mask, SIGPROF) ||
      sigaction(SIGPROF, NULL, &sa) != 0 || (sa.sa_flags & SA_SIGINFO) ||
      sa.sa_handler == SIG_IGN || sa.sa_handler == SIG_DFL)
    return 0;
  jit_tid = (pid_t)syscall(SYS_gettid);
  if (sa.sa_handler == on_sigprof)
    return 1;
  jit_lj_sigprof = sa.sa_handler;
  sa.sa_handler = on_sigprof;
  /* LuaJIT's stop restores the one before */
  return sigaction(SIGPROF, &sa, NULL) == 0;
}

/* The watchdog (a signal handler on b's thread, b running): give the
 * interrupt to b. What runs is signal-safe: the park never ran code, so
 * stopping it only resets its fields, stops a timer and restores SIGPROF's
 * action; starting b sets fields, the timer and the action. 0 when another
 * state holds it. */
static int jit_ticks_here; /* the holder's thread gets the ticks */

/* A profiler tick on this thread, the holder's, now. */
static void jit_tick_now(void) {
  if (jit_ticks_here)
    syscall(SYS_tgkill, getpid(), (pid_t)syscall(SYS_gettid), SIGPROF);
}

/* Held by another state: nothing (the caller ticks again to retry). */
static void jit_take(struct box *b) {
  int z = 0, here;
  if (!atomic_compare_exchange_strong(&jit_busy, &z, 1))
    return;
  luaJIT_profile_stop(jit_park);
  luaJIT_profile_start(b->L, JIT_HELD_MODE, on_profile, b);
  here = jit_sigprof_here();
  b->jit_held = 1;
  /* The first tick now, on this thread, rather than from the timer: the
   * kernel counts a process's CPU timers in scheduler ticks (4 ms here, at
   * HZ=250, for the 1 ms asked), which left compiled loops running ~6 ms
   * past the deadline. Its handler runs at once, nested in this one and
   * over the same interrupted code, as a timer tick landing here would;
   * the timer still ticks after it. Only with the ticks sent here (not when this
   * thread blocks SIGPROF or its action is not LuaJIT's). */
  jit_ticks_here = here;
  jit_tick_now();
}

/* After the call that took it (the watchdog no longer looks at b). */
static void jit_give_back(struct box *b) {
  luaJIT_profile_stop(b->L); /* flushes b's traces, clears its line mode */
  luaJIT_profile_start(jit_park, JIT_PARK_MODE, on_park, NULL);
  luaJIT_profile_start(b->L, "l", on_profile, b); /* ignored but the mode */
  jit_ticks_here = 0;
  b->jit_held = 0;
  atomic_store(&jit_busy, 0);
}

/* Back to the interpreter for good (this thread has no watchdog). */
static void jit_off(struct box *b) {
  luaJIT_setmode(b->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  luaJIT_setmode(b->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_FLUSH);
  b->jit = 0;
}

int box_jit_on(struct box *b) {
  struct sigaction sa;

  jit_lock();
  if (jit_ok < 0) {
    /* a SIGPROF in flight as the profiler moves meets this, not death */
    if (sigaction(SIGPROF, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
      memset(&sa, 0, sizeof(sa));
      sa.sa_handler = SIG_IGN;
      sigaction(SIGPROF, &sa, NULL);
    }
    jit_park = lua_newstate(park_alloc, NULL);
    jit_ok = jit_park != NULL;
    if (jit_ok)
      luaJIT_profile_start(jit_park, JIT_PARK_MODE, on_park, NULL);
  }
  if (jit_ok) {
    luaJIT_profile_start(b->L, "l", on_profile, b);
    luaJIT_setmode(b->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
    b->jit = 1;
  }
  atomic_store(&jit_busy, 0);
  return jit_ok ? 0 : -1;
}

/* The watchdog: a per-thread POSIX timer whose signal, once the running
 * call is past its deadline, sets the count hook to 1 instruction (as
 * luajit's own SIGINT handler does with lua_sethook). The hook alone
 * looks at the clock only every HOOK_COUNT instructions, and one VM
 * instruction can take milliseconds (comparing or concatenating long
 * strings): comparing 16 MiB strings in a loop overran 63x. The timer stays
 * armed across calls while events keep coming, so a call costs a
 * syscall only after an idle spell. With the timer no hook runs before
 * the deadline (idle_hook); without one (creation failed, or the signal
 * blocked on this thread) the count hook does, at its coarser
 * granularity. */
static _Thread_local struct {
  struct box *volatile running; /* set during box_call/box_cpcall */
  volatile uint64_t armed;      /* expiry of the armed timer, 0: none */
  timer_t id;
  int state;                    /* 0: not made, 1: made, -1: failed */
} wd;

static void wd_arm(uint64_t at) {
  struct itimerspec its;

  if (wd.state != 1)
    return;

  memset(&its, 0, sizeof(its));
  its.it_value.tv_sec = (time_t)(at / 1000000000u);
  its.it_value.tv_nsec = (long)(at % 1000000000u);
  /* armed before the syscall: a time already past fires at once, and its
   * handler's "armed = 0" must not be overwritten by a stale "at", which
   * would keep wd_start from ever arming again. The hook covered that up;
   * compiled code (rules.jit) hung on it. */
  wd.armed = at;
  if (timer_settime(wd.id, TIMER_ABSTIME, &its, NULL) != 0)
    wd.armed = 0;
}

static void on_watchdog(int sig, siginfo_t *si, void *uc) {
  struct box *b = wd.running;
  int saved = errno;

  (void)sig, (void)si, (void)uc;
  wd.armed = 0;
  if (b && b->in_call && b->deadline != UINT64_MAX) {
    if (sl_mono_ns() < b->deadline) {
      wd_arm(b->deadline); /* a later call than the one it was armed for */
    } else if (b->jit && !b->jit_held && !budget_spent(b)) {
      /* Past the wall deadline with CPU left (the thread was preempted:
       * more rule threads than cores, or it waited in a host call): no
       * overrun yet, budget_spent moved the deadline out by the CPU left.
       * Taking the interrupt now would keep it, one per process, for the
       * rest of this call while overrunning calls on other threads wait
       * for it (workers = 4 on 2 cores: a waiter lost the race ~100 times
       * in a row, 250 ms of CPU into a 10 ms budget; a 10 ms runaway ran
       * 50 ms beside a 50 ms call that slept past its wall deadline). */
      wd_arm(b->deadline);
    } else {
      /* Set on every tick past the deadline, not only the first, and tick
       * again until the hook has run (it re-arms for a moved deadline, or
       * raises): LuaJIT keeps its hook mask with plain read-modify-writes
       * (entering and leaving a hook, lua_sethook), and a tick landing
       * inside one is overwritten as that write completes. Under heavy
       * load (a deadline moved out by a sliver of CPU left, so the timer
       * fired as the hook that moved it returned) the hook was lost with
       * fast_hook set and no timer armed: a rule recursing through xpcall
       * and coroutines ran 100x its budget. */
      b->fast_hook = 1;
      lua_sethook(b->L, on_hook, LUA_MASKCOUNT, 1);
      /* compiled code may be running, which the hook never sees: take
       * the interrupt (held by another state: the next tick retries) */
      if (b->jit && !b->jit_held) {
        jit_take(b);
      } else if (b->jit) {
        /* Held (taken with the budget spent), past a deadline, and no
         * hook ran since: the compiled code has not exited yet, or the
         * hook bit was lost. Set the hook again from this
         * thread (should an update of the bit and the dispatch table ever
         * be lost to a tick and a hook change interleaving, no later tick
         * would set the bit again) and tick now, rather than at the
         * timer's next coarse tick, so the compiled code exits to it
         * (the hook was set again above). */
        jit_tick_now();
      }
      wd_arm(sl_mono_ns() + RETICK_NS);
    }
  }
  errno = saved;
}

/* A thread that ran rules exits (a worker replica joined at stop): its
 * timer goes with it instead of staying in the process, armed for a
 * thread that is gone. */
static pthread_key_t wd_key;
static int wd_key_made;

static void wd_thread_exit(void *arg) {
  (void)arg;
  if (wd.state == 1)
    timer_delete(wd.id);
  wd.state = 0;
  wd.armed = 0;
}

static void wd_install(void) {
  struct sigaction sa;

  wd_key_made = pthread_key_create(&wd_key, wd_thread_exit) == 0;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_watchdog;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGRTMIN + WATCHDOG_SIGNAL, &sa, NULL);
}

/* No watchdog for this call: the count hook from now on (idle_hook). */
static void wd_counting(struct box *b) {
  if (!b->counting) {
    b->counting = 1;
    if (!b->fast_hook)
      set_hook(b, HOOK_COUNT);
  }
}

/* wd_start's first call on a thread (the timer is made), a thread without
 * one, and rules.jit. */
static __attribute__((noinline)) void wd_start_slow(struct box *b) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;

  if (wd.state == 0) {
    struct sigevent sev;
    sigset_t mask;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN + WATCHDOG_SIGNAL;
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    pthread_once(&once, wd_install);
    /* a thread that blocks the signal would never see it: no watchdog
     * (a thread must not block it later while it runs rules) */
    if (pthread_sigmask(SIG_BLOCK, NULL, &mask) != 0 ||
        sigismember(&mask, SIGRTMIN + WATCHDOG_SIGNAL))
      wd.state = -1;
    else
      wd.state = timer_create(CLOCK_MONOTONIC, &sev, &wd.id) == 0 ? 1 : -1;
    if (wd.state == 1 && wd_key_made) /* non-NULL: the destructor runs */
      (void)pthread_setspecific(wd_key, &wd);
  }
  if (wd.state < 0) {
    if (b->jit) /* no watchdog, no interrupt: compiled code is unstoppable */
      jit_off(b);
    wd_counting(b);
    return;
  }
  atomic_signal_fence(memory_order_seq_cst);
  wd.running = b;
  atomic_signal_fence(memory_order_seq_cst);
  /* armed for before this call started: it fired or is about to */
  if (wd.armed == 0 || wd.armed > b->deadline ||
      wd.armed + b->budget_ns <= b->deadline)
    wd_arm(b->deadline);
  /* rules.jit keeps the count hook too: the watchdog alone did not stop
   * xpcall handlers that swallow the budget's error and retry through C
   * (sandbox_cpu_attack_spec, jit on) */
  if (sl_unlikely(wd.armed == 0 || b->jit)) /* refused (or just fired) */
    wd_counting(b);
}

/* Before a call into the rule (deadline and in_call set). Every call
 * comes here, so the common case (the thread's timer made, the JIT off)
 * is kept short: the timer armed within one budget before this deadline
 * stays (its handler re-arms it for the running call); else it is armed,
 * and a refusal leaves the count hook on. */
static inline void wd_start(struct box *b) {
  uint64_t armed;

  if (sl_unlikely(wd.state != 1 || b->jit)) {
    wd_start_slow(b);
    return;
  }
  atomic_signal_fence(memory_order_seq_cst);
  wd.running = b;
  atomic_signal_fence(memory_order_seq_cst);
  armed = wd.armed;
  if (sl_unlikely(armed == 0 || armed > b->deadline ||
                  armed + b->budget_ns <= b->deadline)) {
    wd_arm(b->deadline);
    if (wd.armed == 0) /* refused (or fired past the deadline) */
      wd_counting(b);
  }
}

/* When this code is unloaded (the sluice_core module for busted is
 * dlclosed with its Lua state), its handler must not outlive it: an armed
 * timer would jump into unmapped memory. */
__attribute__((destructor)) static void wd_unload(void) {
  struct sigaction sa;

  if (wd.state == 1)
    timer_delete(wd.id);
  wd.state = 0;
  if (wd_key_made) /* no thread exit may call into unmapped code */
    pthread_key_delete(wd_key);
  wd_key_made = 0;
  if (jit_ok == 1) { /* nor the profiler's callback and park */
    luaJIT_profile_stop(jit_park);
    lua_close(jit_park);
    jit_ok = -1;
  }
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = SIG_IGN;
  sigaction(SIGRTMIN + WATCHDOG_SIGNAL, &sa, NULL);
}

/* After the call (in_call cleared); the timer stays armed and finds
 * nothing to do. Read fast_hook only after this. */
static void wd_stop(void) {
  atomic_signal_fence(memory_order_seq_cst);
  wd.running = NULL;
  atomic_signal_fence(memory_order_seq_cst);
}

/* ---- calls into the rule ------------------------------------------------- */

/* The error handler of every call into the rule: records message, where
 * and a short traceback in C memory (no allocation, so it works when the
 * state is out of memory) and returns the error object as it is. It never
 * calls __tostring: that would run rule code after the budget. */
int on_error(lua_State *L) {
  struct box *b = box_of(L);
  struct sl_rule *r = b->rule;
  char where[256], num[64];
  const char *msg;
  lua_Debug ar;
  size_t used = 0, mlen;
  int level, frames = 0;

  if (b->cpu_hit) /* the line that ran out of budget, as the message says */
    snprintf(where, sizeof(where), "%s", b->cpu_where);
  else
    where_of(L, 1, where, sizeof(where), r->path);
  if (lua_type(L, 1) == LUA_TSTRING) {
    msg = lua_tolstring(L, 1, &mlen);
  } else if (lua_type(L, 1) == LUA_TNUMBER) {
    snprintf(num, sizeof(num), "%.14g", lua_tonumber(L, 1));
    msg = num;
  } else {
    snprintf(num, sizeof(num), "(error object is a %s value)",
             lua_typename(L, lua_type(L, 1)));
    msg = num;
  }
  if (lua_type(L, 1) != LUA_TSTRING)
    mlen = strlen(msg);
  /* keep "file:line: msg" as it is, else prefix where. Look only at the
   * start and copy what fits: a message may be as long as memory_mb
   * allows, and snprintf("%s") of a 16 MB one took 40-95 ms, unchecked */
  {
    size_t scan = mlen < sizeof(r->err_msg) ? mlen : sizeof(r->err_msg);
    const char *c = memchr(msg, ':', scan), *end = msg + scan;
    int positioned = c && c > msg && c + 1 < end && c[1] >= '0' &&
                     c[1] <= '9';
    if (positioned) {
      c++;
      while (c < end && *c >= '0' && *c <= '9')
        c++;
      positioned = c + 1 < end && c[0] == ':' && c[1] == ' ';
    }
    if (positioned)
      snprintf(r->err_msg, sizeof(r->err_msg), "%.*s", (int)scan, msg);
    else
      snprintf(r->err_msg, sizeof(r->err_msg), "%s: %.*s", where, (int)scan,
               msg);
  }
  snprintf(r->err_where, sizeof(r->err_where), "%s", where);
  used = (size_t)snprintf(r->err_tb, sizeof(r->err_tb), "stack traceback:");
  for (level = 1; frames < 8 && lua_getstack(L, level, &ar); level++) {
    const char *what;
    char line[200];
    if (!lua_getinfo(L, "Sln", &ar))
      break;
    if (*ar.what == 'm')
      what = "in main chunk";
    else if (ar.name)
      what = NULL;
    else
      what = "in function <?>";
    if (what == NULL)
      snprintf(line, sizeof(line), "\n\t%s:%d: in function '%s'", ar.short_src,
               ar.currentline, ar.name);
    else if (*ar.what == 'C')
      snprintf(line, sizeof(line), "\n\t[C]: %s", what);
    else if (*ar.what == 'm')
      snprintf(line, sizeof(line), "\n\t%s:%d: %s", ar.short_src,
               ar.currentline, what);
    else
      snprintf(line, sizeof(line), "\n\t%s:%d: in function <%s:%d>",
               ar.short_src, ar.currentline, ar.short_src, ar.linedefined);
    if (used + strlen(line) + 1 > sizeof(r->err_tb))
      break;
    memcpy(r->err_tb + used, line, strlen(line) + 1);
    used += strlen(line);
    frames++;
  }
  r->err_set = 1;
  return 1;
}

/* The prologue of every call into the rule. fresh: the call has a budget
 * of its own; else it goes on with the one of the call before (on_event's,
 * for finish: deadline and CPU reference stay, no clock is read). */
static inline void call_enter(struct box *b, int fresh) {
  if (sl_unlikely(b->ev_shown) && b->ev == NULL)
    ev_hide(b->L, b); /* a kept event must raise outside on_event */
  b->rule->err_set = 0;
  b->oom = 0;
  if (fresh) {
    b->cpu_hit = 0;
    budget_start(b);
  }
  b->in_call = 1;
  wd_start(b);
}

/* The epilogue of every call into the rule, whichever path ran it: the
 * hook is the idle one after it (none under a watchdog, the count hook
 * without one or with rules.jit), the interrupt given back. */
static inline void call_leave(struct box *b) {
  b->in_call = 0;
  wd_stop();
  if (sl_unlikely(b->jit_held))
    jit_give_back(b);
  if (b->strbuf != NULL)
    strbuf_release(b);
  if (b->fast_hook) {
    b->fast_hook = 0;
    idle_hook(b);
  }
}

/* A call without a handler failed with st: its message (on top, popped)
 * into err_msg, cut to what fits (see on_error). */
static void unhandled_error(struct box *b, int st) {
  struct sl_rule *r = b->rule;
  size_t mlen = 0;
  const char *m = lua_tolstring(b->L, -1, &mlen);

  if (st == LUA_ERRMEM)
    snprintf(r->err_msg, sizeof(r->err_msg), "%s: not enough memory "
             "(memory_mb=%u)", b->oom ? b->oom_where : r->path,
             (unsigned)r->memory_mb);
  else
    snprintf(r->err_msg, sizeof(r->err_msg), "%.*s",
             m ? (int)(mlen < sizeof(r->err_msg) ? mlen : sizeof(r->err_msg))
               : 5,
             m ? m : "error");
  snprintf(r->err_where, sizeof(r->err_where), "%s",
           b->oom ? b->oom_where : r->path);
  r->err_tb[0] = 0;
  r->err_set = 1;
  lua_pop(b->L, 1);
}

/* Call the function below nargs arguments on top of the stack under the
 * CPU budget, with on_error as handler. Returns lua_pcall's status. */
int box_call(struct box *b, int nargs, int nresults) {
  int st;

  call_enter(b, 1);
  st = lua_pcall(b->L, nargs, nresults, SLOT_HANDLER);
  call_leave(b);
  return st;
}

/* The C function in registry slot ref, called with ud in protected mode
 * right after the call before it and on that call's budget (finish after
 * on_event): no closure is made (lua_cpcall makes one per call) and the
 * clocks are not read again. No handler: a raised message is left in
 * err_msg as box_cpcall leaves it. */
int box_call_after(struct box *b, int ref, void *ud) {
  int st;

  call_enter(b, 0);
  lua_rawgeti(b->L, LUA_REGISTRYINDEX, ref);
  lua_pushlightuserdata(b->L, ud);
  st = lua_pcall(b->L, 1, 0, 0);
  call_leave(b);
  if (st != 0)
    unhandled_error(b, st);
  return st;
}

/* Like box_call for a C function run in protected mode (lua_cpcall),
 * which has no handler; a raised message is left in err_msg. Inside a
 * call it runs on that call's budget and leaves its state alone. */
int box_cpcall(struct box *b, lua_CFunction fn, void *ud) {
  int st, keep = b->in_call;

  if (!keep)
    call_enter(b, 1);
  st = lua_cpcall(b->L, fn, ud);
  if (!keep)
    call_leave(b);
  if (st != 0)
    unhandled_error(b, st);
  return st;
}

/* Describe a failed call: which limit, message, where and traceback. */
enum sl_rule_error describe(struct box *b, int st, char *msg,
                            size_t msglen, char *where,
                            size_t wherelen, char *tb, size_t tblen) {
  struct sl_rule *r = b->rule;
  lua_State *L = b->L;
  enum sl_rule_error kind = SL_RULE_ERR_RUNTIME;
  const char *top = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";

  if (b->cpu_hit)
    kind = SL_RULE_ERR_CPU;
  else if (st == LUA_ERRMEM || (b->oom && strstr(top, "not enough memory")))
    kind = SL_RULE_ERR_MEMORY;
  if (kind == SL_RULE_ERR_MEMORY) {
    const char *w = b->oom ? b->oom_where : r->path;
    snprintf(msg, msglen, "%s: not enough memory (memory_mb=%u)", w,
             (unsigned)r->memory_mb);
    snprintf(where, wherelen, "%s", w);
    if (tb)
      snprintf(tb, tblen, "%s", r->err_set ? r->err_tb : "");
  } else if (r->err_set) {
    snprintf(msg, msglen, "%s", r->err_msg);
    snprintf(where, wherelen, "%s", r->err_where);
    if (tb)
      snprintf(tb, tblen, "%s", r->err_tb);
  } else { /* LUA_ERRERR: the handler itself failed */
    snprintf(msg, msglen, "%s: error in error handling%s%s", r->path,
             *top ? ": " : "", top);
    snprintf(where, wherelen, "%s", r->path);
    if (tb)
      tb[0] = 0;
  }
  return kind;
}

/* ---- registry slots and messages ----------------------------------------- */

void push_ref(lua_State *L, int ref) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
}

/* Store the value at idx in a registry slot; nil is stored as false so
 * the slot never leaves the table (a later store must not allocate). */
void set_ref(lua_State *L, int ref, int idx) {
  if (lua_isnil(L, idx))
    lua_pushboolean(L, 0);
  else
    lua_pushvalue(L, idx);
  lua_rawseti(L, LUA_REGISTRYINDEX, ref);
}

/* A rule's string as error messages show it: at most 128 bytes. Pushed
 * (it stays on the stack until the error unwinds it). lua_pushfstring
 * has no precision, and copying a 64 MB name into a message, then again
 * to prefix the position, cost 0.1-0.3 s after the rule's deadline. */
const char *msg_str(lua_State *L, int idx) {
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);

  if (s == NULL)
    return "?";
  if (n <= 128)
    return s;
  lua_pushlstring(L, s, 128);
  lua_pushliteral(L, "...");
  lua_concat(L, 2);
  return lua_tostring(L, -1);
}

/* ---- C code calling back into Lua, C work -------------------------------- */

/* C stack a rule's nested C calls may take: a quarter of this thread's
 * stack, at most C_STACK_MAX. Measured, not estimated, so it also holds
 * where frames are big (ASan) and whatever runs between two guarded
 * levels. */
static size_t cstack_budget(void) {
  static _Thread_local size_t budget; /* per thread: stacks differ */
  pthread_attr_t a;
  size_t size = 0;

  if (budget)
    return budget;
  if (pthread_getattr_np(pthread_self(), &a) == 0) {
    if (pthread_attr_getstacksize(&a, &size) != 0)
      size = 0;
    pthread_attr_destroy(&a);
  }
  if (size == 0)
    size = (size_t)1 << 20; /* unknown: assume a small thread */
  budget = size / 4 < C_STACK_MAX ? size / 4 : C_STACK_MAX;
  return budget;
}

/* Enter one more level of C calling back into Lua, or raise. Every path
 * that re-enters Lua from C comes here (guarded_call, require), because
 * LuaJIT bounds C recursion per coroutine only by its Lua stack: nested
 * coroutines multiply it past any thread's C stack. */
void cdepth_enter(lua_State *L, struct box *b) {
  char here;
  uintptr_t sp = (uintptr_t)&here;

  if (b->cdepth == 0)
    b->cstack0 = sp;
  if (b->cdepth >= MAX_C_DEPTH)
    luaL_error(L, "C calls nested deeper than %d (recursion through "
                  "pcall, xpcall, metamethods, string.gsub, string.format, "
                  "table.sort, os.time, require or coroutines)", MAX_C_DEPTH);
  if (b->cstack0 > sp && b->cstack0 - sp > cstack_budget())
    luaL_error(L, "C calls nested too deep (%d levels used %d KiB of C "
                  "stack)", b->cdepth, (int)((b->cstack0 - sp) >> 10));
  b->cdepth++;
}

/* Call the function below nargs arguments in protected mode as one C
 * level (cdepth_enter), never letting it swallow the budget's error (a
 * pcall, a resume). pcall and xpcall run through it: LuaJIT's own pcall
 * nests as deep as a coroutine's Lua stack goes, and past the budget each
 * level is unwound by its own throw (~1-2.4 us in LuaJIT's DWARF
 * unwinder): a chain as deep as it went took 50 ms of CPU for a 10 ms
 * budget, chains over a gsub callback in ~50 coroutines 420-630 ms. Now a
 * call nests at most MAX_C_DEPTH levels in all, so past the budget at most
 * that many throws. A yield cannot cross them (it could cross LuaJIT's
 * pcall): "attempt to yield across C-call boundary". */
static int protected_call(lua_State *L, struct box *b, int nargs, int nres) {
  int st;

  cdepth_enter(L, b);
  st = lua_pcall(L, nargs, nres, 0);
  b->cdepth--;
  if (b->cpu_hit && b->in_call && b->deadline != UINT64_MAX)
    cpu_raise(L, b); /* never swallowed: not by a pcall, not by a resume */
  return st;
}

/* Run the function below the n arguments on top in protected mode and
 * rethrow its error, counting how deep C functions that call back into
 * Lua are nested: each level takes C stack, and LuaJIT does not bound it
 * (recursion through string.gsub or coroutine.wrap crashes the process). */
int guarded_call(lua_State *L, int n) {
  if (protected_call(L, box_of(L), n, LUA_MULTRET) != 0)
    return lua_error(L); /* the error as it was, limits still marked */
  return lua_gettop(L);
}

int box_pcall(lua_State *L) {
  int st;

  luaL_checkany(L, 1);
  st = protected_call(L, box_of(L), lua_gettop(L) - 1, LUA_MULTRET);
  luaL_checkstack(L, 1, "too many results");
  lua_pushboolean(L, st == 0);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/* xpcall(f, handler, ...): f's arguments follow the handler (LuaJIT's
 * extension). The handler runs after f's frames are unwound, on the error
 * value alone, and its first result (or its own error) is returned after
 * false. LuaJIT runs an xpcall handler before unwinding, and when the
 * error came from the count hook its hooks are still off then, so a
 * handler that loops could never be stopped. Rules have no debug library,
 * so the handler loses nothing it could have used. */
int box_xpcall(lua_State *L) {
  struct box *b = box_of(L);

  if (lua_type(L, 2) != LUA_TFUNCTION)
    return luaL_error(L, "bad argument #2 to 'xpcall' (function expected)");
  lua_pushvalue(L, 2);
  lua_insert(L, 1); /* handler, f, handler, args */
  lua_remove(L, 3);
  if (protected_call(L, b, lua_gettop(L) - 2, LUA_MULTRET) == 0) {
    luaL_checkstack(L, 1, "too many results");
    lua_pushboolean(L, 1);
    lua_replace(L, 1);
    return lua_gettop(L);
  }
  protected_call(L, b, 1, 1); /* handler, error: its result or error */
  lua_pushboolean(L, 0);
  lua_insert(L, 1);
  return 2;
}

/* Charge n units of C work (bytes compared or moved, elements) to the
 * running call and look at the clock every CWORK_CHECK units: work in C
 * runs no VM instructions, so the count hook never sees it. */
void charge(lua_State *L, size_t n) {
  struct box *b = box_of(L);

  b->cwork += n;
  if (b->cwork >= CWORK_CHECK) {
    b->cwork = 0;
    check_cpu(L);
  }
}

/* n bytes of scratch for a string result, charged to the state's cap
 * (refused at once past it) and kept for the rest of the call, so a loop
 * makes no garbage beyond its results (a userdata per call ran a 128 MB
 * state out of memory). Raises "not enough memory". */
char *strbuf_get(lua_State *L, size_t n) {
  struct box *b = box_of(L);

  if (n > b->strbuf_cap) {
    strbuf_release(b);
    b->strbuf = box_alloc(b, NULL, 0, n);
    if (b->strbuf == NULL)
      luaL_error(L, "not enough memory");
    b->strbuf_cap = n;
  }
  return b->strbuf;
}

/* ---- the collector ------------------------------------------------------- */

struct gc_job {
  uint64_t until;
  int *ends; /* cycle ends still wanted */
};

static int box_gc_steps(lua_State *L) {
  struct gc_job *j = lua_touserdata(L, 1);

  do {
    if (lua_gc(L, LUA_GCSTEP, GC_STEP_KB) && --*j->ends == 0)
      break;
  } while (sl_mono_ns() < j->until);
  return 0;
}

/* Run the collector in steps for at most a quarter of the rule's budget,
 * until gc_busy more cycles have ended (an earlier call may have left
 * one half done). 1 when they have (gc_live is then what the last left
 * live), 0 when they go on after a later call, -1 when the collector
 * failed. */
static int box_gc_run(struct box *b) {
  struct gc_job j = {0, &b->gc_busy};
  size_t limit = b->limit;
  int st;

  j.until = sl_mono_ns() + (uint64_t)b->rule->cpu_budget_ms * 250000u;
  b->in_call = 1; /* the collection may run no rule code, but be safe */
  b->deadline = UINT64_MAX;
  b->limit = limit + limit / 4 + (1u << 20); /* the collector may allocate
                                               a little (string table) */
  st = lua_cpcall(b->L, box_gc_steps, &j);
  b->limit = limit;
  b->in_call = 0;
  if (st != 0) {
    lua_pop(b->L, 1);
    b->gc_busy = 0;
    return -1;
  }
  if (b->gc_busy > 0)
    return 0;
  b->gc_live = b->used;
  return 1;
}

/* After a memory error: is the state still worth keeping (its live data
 * leaves room for work)? A full collection here ran outside any budget
 * on every failing call (a state kept full and asked for one huge string
 * per event: 90 ms a call), so the collector steps as in box_gc_slice,
 * through the cycle under way (which may keep what the failed call left)
 * and one more; until they end the state is kept. A state is given up
 * only on the word of cycles no other failed call overlapped; one the
 * last cycle found roomy is kept without collecting again. */
int box_usable_after_oom(struct box *b) {
  size_t limit = b->limit;
  int st;

  if (!b->gc_busy && b->gc_live && b->gc_live < limit / 10 * 9 &&
      b->used < b->gc_live + limit / 16)
    return 1;
  if (b->gc_busy && b->gc_oom) {
    b->gc_dirty = 1;
  } else {
    b->gc_busy = 2;
    b->gc_oom = 1;
    b->gc_dirty = 0;
  }
  st = box_gc_run(b);
  if (st <= 0)
    return st == 0;
  b->gc_oom = 0;
  if (b->used < limit / 10 * 9)
    return 1;
  if (b->gc_dirty) { /* ask again, of a cycle that starts now */
    b->gc_busy = 1;
    b->gc_oom = 1;
    b->gc_dirty = 0;
    return 1;
  }
  return 0;
}

/* LuaJIT has no emergency GC: a state near its cap fails allocations its
 * garbage could satisfy, so one left 3/4 full is collected after the
 * call. Not fully, as it was (a full collection of a 50 MiB state took
 * 16-300 ms per event, outside any budget), but in steps (box_gc_run);
 * the cycle goes on after the next call. Nothing is done while the state
 * has grown little since the last cycle ended: that would only mark the
 * same live data again. */
void box_gc_slice(struct box *b) {
  if (!b->gc_busy) {
    if (b->used < b->gc_live + b->limit / 16)
      return;
    b->gc_busy = 1;
  }
  box_gc_run(b);
}
