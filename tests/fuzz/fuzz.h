/* fuzz.h - what the libFuzzer targets share: ASSERT, which reports the
 * failed condition and aborts (libFuzzer then keeps the input). */
#ifndef SL_FUZZ_H
#define SL_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

#define ASSERT(c)                                                       \
  do {                                                                  \
    if (!(c)) {                                                         \
      fprintf(stderr, "%s:%d: ASSERT(%s) failed\n", __FILE__, __LINE__, \
              #c);                                                      \
      abort();                                                          \
    }                                                                   \
  } while (0)

#endif
