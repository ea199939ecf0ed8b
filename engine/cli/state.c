/* state.c - the state folder and its lock; see state.h. Record locks
 * (fcntl F_SETLK), not flock: F_GETLK reports the holder's pid, so a
 * refused start and `sluice reload` can name the process. Such a lock
 * goes when the process closes any fd of the file, so the file is opened
 * once, here, and never again by the engine. */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "route.h"

#define LOCK_NAME "sluice.lock"

char *sl_state_path(const struct sl_config *cfg, const char *name) {
  size_t n = strlen(cfg->state_dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p)
    snprintf(p, n, "%s/%s", cfg->state_dir, name);
  return p;
}

/* mkdir -p: the config check saw that the nearest existing folder above
 * is writable, so a failure here is a real one. */
static int mkdirs(const char *dir) {
  char buf[4096];
  size_t i, n = strlen(dir);
  if (n >= sizeof(buf))
    return -ENAMETOOLONG;
  memcpy(buf, dir, n + 1);
  for (i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0')
      continue;
    buf[i] = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      return -errno;
    buf[i] = dir[i];
  }
  return 0;
}

static long holder_of(int fd) {
  struct flock fl;
  memset(&fl, 0, sizeof(fl));
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_GETLK, &fl) != 0 || fl.l_type == F_UNLCK)
    return 0;
  return (long)fl.l_pid;
}

int sl_state_lock(const struct sl_config *cfg, long *holder, char *why,
                  size_t whylen) {
  struct flock fl;
  char *path = NULL, pid[32];
  int fd = -1, rc, n;

  *holder = 0;
  rc = mkdirs(cfg->state_dir);
  if (rc != 0) {
    snprintf(why, whylen, "cannot create %s: %s", cfg->state_dir,
             strerror(-rc));
    return rc;
  }
  path = sl_state_path(cfg, LOCK_NAME);
  if (path == NULL)
    return SL_ENOMEM;
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = -errno;
    snprintf(why, whylen, "cannot open %s: %s", path, strerror(errno));
    goto fail;
  }
  memset(&fl, 0, sizeof(fl));
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    rc = errno == EACCES || errno == EAGAIN ? SL_EAGAIN : -errno;
    if (rc == SL_EAGAIN)
      *holder = holder_of(fd);
    snprintf(why, whylen, "cannot lock %s: %s", path, strerror(errno));
    goto fail;
  }
  /* for people reading the folder; the kernel's lock is what counts */
  n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
    /* harmless: the lock is held */
  }
  free(path);
  return fd;

fail:
  if (fd >= 0)
    close(fd);
  free(path);
  return rc;
}

long sl_state_holder(const struct sl_config *cfg) {
  char *path = sl_state_path(cfg, LOCK_NAME);
  long pid = 0;
  int fd;
  if (path == NULL)
    return 0;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  free(path);
  if (fd < 0)
    return 0;
  pid = holder_of(fd);
  close(fd); /* drops no lock of ours: this process holds none on it */
  return pid;
}

long sl_state_running_pid(const struct sl_config *cfg, char *why,
                          size_t whylen) {
  char *pid_file = sl_route_pid_path(cfg), buf[32];
  long pid = 0, holder;
  FILE *f = pid_file ? fopen(pid_file, "r") : NULL;

  holder = sl_state_holder(cfg);
  if (f == NULL || fgets(buf, sizeof(buf), f) == NULL ||
      (pid = strtol(buf, NULL, 10)) <= 0) {
    snprintf(why, whylen, "cannot read %s%s",
             pid_file ? pid_file : "the pid file",
             holder ? "" : " and no process holds the state folder's lock");
    pid = 0;
  } else if (holder == 0) {
    snprintf(why, whylen,
             "%s names pid %ld, but no process holds the lock of %s: the "
             "engine is gone (a stale pid file)",
             pid_file, pid, cfg->state_dir);
    pid = 0;
  } else if (holder != pid) {
    snprintf(why, whylen,
             "%s names pid %ld, but pid %ld holds the lock of %s: not "
             "signalling either",
             pid_file, pid, holder, cfg->state_dir);
    pid = 0;
  }
  if (f)
    fclose(f);
  free(pid_file);
  return pid;
}
