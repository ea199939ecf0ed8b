/* test_state.c - the state folder's lock: one holder at a time, its pid
 * told to whoever is refused, and gone with the holder however it dies. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "state.h"
#include "test.h"

static char base[] = "/tmp/sluice-test-state-XXXXXX";

/* A child that takes the lock, says so on the pipe and waits to be killed. */
static pid_t holder_child(struct sl_config *cfg) {
  int p[2];
  char c;
  pid_t pid;
  if (pipe(p) != 0)
    return -1;
  pid = fork();
  if (pid == 0) {
    long h;
    char why[256];
    int fd = sl_state_lock(cfg, &h, why, sizeof(why));
    c = fd >= 0 ? 'y' : 'n';
    if (write(p[1], &c, 1) != 1)
      _exit(1);
    for (;;)
      pause();
  }
  close(p[1]);
  if (pid < 0 || read(p[0], &c, 1) != 1 || c != 'y')
    pid = -1;
  close(p[0]);
  return pid;
}

TEST(state_lock_names_the_holder_and_goes_with_a_killed_one) {
  struct sl_config cfg;
  char dir[256], why[512];
  long holder = -1;
  pid_t child;
  int fd, status;

  memset(&cfg, 0, sizeof(cfg));
  CHECK(mkdtemp(base) != NULL);
  snprintf(dir, sizeof(dir), "%s/a/b", base); /* made with its parents */
  cfg.state_dir = dir;
  CHECK_EQ(sl_state_holder(&cfg), 0); /* no folder yet: nobody */
  child = holder_child(&cfg);
  CHECK(child > 0);
  CHECK_EQ(sl_state_holder(&cfg), child);
  fd = sl_state_lock(&cfg, &holder, why, sizeof(why));
  CHECK_EQ(fd, SL_EAGAIN);
  CHECK_EQ(holder, child);
  CHECK(strstr(why, "sluice.lock") != NULL);
  kill(child, SIGKILL);
  CHECK_EQ(waitpid(child, &status, 0), child);
  CHECK_EQ(sl_state_holder(&cfg), 0); /* the kernel dropped it */
  fd = sl_state_lock(&cfg, &holder, why, sizeof(why));
  CHECK(fd >= 0);
  CHECK_EQ(holder, 0);
  close(fd);
  snprintf(why, sizeof(why), "%s/sluice.lock", dir);
  unlink(why);
  rmdir(dir);
  snprintf(why, sizeof(why), "%s/a", base);
  rmdir(why);
  rmdir(base);
}

TEST(state_lock_reports_a_folder_it_cannot_make) {
  struct sl_config cfg;
  char why[256];
  long holder;
  memset(&cfg, 0, sizeof(cfg));
  cfg.state_dir = "/proc/sluice-no/state";
  CHECK(sl_state_lock(&cfg, &holder, why, sizeof(why)) < 0);
  CHECK(strstr(why, "cannot create /proc/sluice-no/state") != NULL);
}

