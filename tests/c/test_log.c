/* test_log.c - the JSON log line: what a failed allocation leaves of it is
 * still one valid JSON line, never a half-written one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"
#include "buf.h"
#include "json.h"
#include "log.h"

/* under ASan the allocator returns NULL too, as malloc does, when the
 * address space runs out (else it aborts the child) */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
  return "allocator_may_return_null=1";
}

static long vm_size_kb(void) {
  char line[256];
  long kb = -1;
  FILE *f = fopen("/proc/self/status", "r");
  while (f && fgets(line, sizeof(line), f))
    if (strncmp(line, "VmSize:", 7) == 0)
      kb = atol(line + 7);
  if (f)
    fclose(f);
  return kb;
}

/* Log a line with a value of 32 MiB in a child whose address space has
 * 8 MiB left: the value cannot be escaped. What reached fd? */
static void log_out_of_memory(int fd) {
  size_t n = 32u << 20;
  char *big = malloc(n + 1);
  struct rlimit rl;
  pid_t pid;
  int st;

  memset(big, 'x', n);
  big[n] = 0;
  pid = fork();
  if (pid == 0) {
    rl.rlim_cur = rl.rlim_max = (rlim_t)(vm_size_kb() + 8192) * 1024;
    setrlimit(RLIMIT_AS, &rl);
    sl_log_set_fd(fd);
    sl_log(SL_LOG_ERROR, "rule failed", SL_S("traceback", big),
           SL_S("rule", "r.lua:1"), SL_U("suppressed", 0), SL_END);
    _exit(0);
  }
  waitpid(pid, &st, 0);
  free(big);
}

TEST(log_line_stays_valid_json_when_a_value_cannot_be_allocated) {
  char path[] = "/tmp/sluice-test-log-XXXXXX";
  int fd = mkstemp(path);
  struct sl_buf text, mp;
  char err[256], *nl;
  FILE *f;

  CHECK(fd >= 0);
  unlink(path);
  log_out_of_memory(fd);
  sl_buf_init(&text);
  sl_buf_init(&mp);
  CHECK(sl_buf_reserve(&text, 1 << 16) == 0);
  f = fdopen(fd, "r");
  rewind(f);
  text.len = fread(text.data, 1, text.cap, f);
  fclose(f);
  /* before: {"time":..,"msg":"rule failed","traceback":,"rule":..} */
  CHECK(text.len > 0);
  CHECK(text.data[text.len - 1] == '\n');
  nl = memchr(text.data, '\n', text.len);
  CHECK(nl == (char *)text.data + text.len - 1); /* one line */
  CHECK(sl_json_to_msgpack((const char *)text.data, text.len - 1, &mp, err,
                           sizeof(err)) == 0);
  CHECK(memmem(text.data, text.len, "\"level\":\"error\"", 15) != NULL);
  CHECK(memmem(text.data, text.len, "not enough memory", 17) != NULL);
  sl_buf_close(&text);
  sl_buf_close(&mp);
}
