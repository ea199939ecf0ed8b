/* state.h - the state folder (config state_dir): the paths of the files
 * the engine writes on its own, and the exclusive lock that makes one
 * engine its only owner. The lock is a POSIX record lock on
 * <state_dir>/sluice.lock held for the process's life: the kernel drops it
 * when the process dies, even by kill -9, so a stale pid file never blocks
 * a restart, and other commands learn the holder's pid from the kernel. */
#ifndef SL_STATE_H
#define SL_STATE_H

#include "config.h"

/* <state_dir>/name; caller frees. NULL on allocation failure. */
char *sl_state_path(const struct sl_config *cfg, const char *name);

/* Create the state folder (and the folders above it) and take its lock.
 * Returns the lock's fd (kept open for the process's life; it is
 * close-on-exec), SL_EAGAIN with *holder set when another process holds
 * it (*holder 0 if the kernel did not say who), or another negative code
 * with why filled in. */
int sl_state_lock(const struct sl_config *cfg, long *holder, char *why,
                  size_t whylen);

/* The pid of the process holding the state folder's lock, 0 when none
 * does (or the folder or lock file does not exist). Never takes it. */
long sl_state_holder(const struct sl_config *cfg);

/* The pid of the engine running on cfg's state folder: the pid file's
 * pid, checked against the lock holder. On failure returns 0 and why
 * says what is wrong (no pid file, a stale one, a mismatch). */
long sl_state_running_pid(const struct sl_config *cfg, char *why,
                          size_t whylen);

#endif
