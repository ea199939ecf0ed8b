/* test.h - the C unit test harness: TEST(subject_behaviour) cases that
 * register themselves, CHECK macros that never compile out, and a main that
 * prints "N passed, N failed" for the suite. Include from one .c per suite. */
#ifndef SL_TEST_H
#define SL_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sl_test_fn)(int *failed);

struct sl_test_case {
  const char *name;
  sl_test_fn fn;
};

static struct sl_test_case sl_tests[256];
static int sl_ntests;

#define TEST(case_)                                                  \
  static void test_##case_(int *failed__);                           \
  __attribute__((constructor)) static void register_##case_(void) {  \
    sl_tests[sl_ntests].name = #case_;                               \
    sl_tests[sl_ntests++].fn = test_##case_;                         \
  }                                                                  \
  static void test_##case_(int *failed__)

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, \
              #cond);                                                     \
      *failed__ = 1;                                                      \
      return;                                                             \
    }                                                                     \
  } while (0)

#define CHECK_EQ(a, b)                                                      \
  do {                                                                      \
    long long a__ = (long long)(a), b__ = (long long)(b);                   \
    if (a__ != b__) {                                                       \
      fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__, \
              __LINE__, #a, #b, a__, b__);                                  \
      *failed__ = 1;                                                        \
      return;                                                               \
    }                                                                       \
  } while (0)

#define CHECK_STR(a, b)                                                        \
  do {                                                                         \
    const char *a__ = (a), *b__ = (b);                                         \
    if (a__ == NULL || b__ == NULL || strcmp(a__, b__) != 0) {                 \
      fprintf(stderr, "  %s:%d: %s == %s failed:\n    got  %s\n    want %s\n", \
              __FILE__, __LINE__, #a, #b, a__ ? a__ : "(null)",                \
              b__ ? b__ : "(null)");                                           \
      *failed__ = 1;                                                           \
      return;                                                                  \
    }                                                                          \
  } while (0)

int main(int argc, char **argv) {
  int passed = 0, failed = 0, i;
  /* a suite killed by run.sh's timeout shows in its log the last case that
   * passed (a full buffer into a file would be lost) */
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (i = 0; i < sl_ntests; i++) {
    int f = 0;
    if (argc > 1 && strstr(sl_tests[i].name, argv[1]) == NULL)
      continue;
    sl_tests[i].fn(&f);
    printf("%s %s\n", f ? "FAIL" : "ok  ", sl_tests[i].name);
    if (f)
      failed++;
    else
      passed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

#endif
