/* plugins.c - the registry: every input and output plugin, one line each.
 * A new plugin is its own file in inputs/ or outputs/ defining a struct
 * sl_plugin, plus its line here (and its package in the Makefile if it
 * needs a library). */
#include "plugins.h"

#include <stddef.h>

/* The list, in the order the checker names types ("expected tcp, unix or
 * http"). One line per plugin: the file that defines it, its variable. */
#define PLUGINS(X)                  \
  X(sl_input_tcp)     /* inputs/native.c */  \
  X(sl_input_unix)    /* inputs/native.c */  \
  X(sl_input_http)    /* inputs/http.c */    \
  X(sl_input_forward) /* inputs/forward.c */ \
  X(sl_input_syslog)  /* inputs/syslog.c */  \
  X(sl_input_stdin)   /* inputs/stdin.c */   \
  X(sl_input_redis)   /* inputs/redis.c */   \
  X(sl_input_nats)    /* inputs/nats.c */    \
  X(sl_input_kafka)   /* inputs/kafka.c */   \
  X(sl_output_stdout) /* outputs/file.c */   \
  X(sl_output_file)   /* outputs/file.c */   \
  X(sl_output_null)   /* outputs/null.c */   \
  X(sl_output_tcp)    /* outputs/native.c */ \
  X(sl_output_unix)   /* outputs/native.c */ \
  X(sl_output_forward) /* outputs/forward.c */ \
  X(sl_output_exec)   /* outputs/exec.c */ \
  X(sl_output_http)   /* outputs/http.c */ \
  X(sl_output_redis)  /* outputs/redis.c */ \
  X(sl_output_nats)   /* outputs/nats.c */ \
  X(sl_output_kafka)  /* outputs/kafka.c */

#define DECLARE(p) extern const struct sl_plugin p;
#define LIST(p) &p.config,
PLUGINS(DECLARE)

const struct sl_config_plugin *const sl_plugins[] = {PLUGINS(LIST) NULL};

const struct sl_plugin *sl_plugin_find(enum sl_plugin_kind kind,
                                       const char *type) {
  const struct sl_config_plugin *p =
      sl_config_plugin_find(sl_plugins, kind, type);
  /* config is the first member of struct sl_plugin */
  return p ? (const struct sl_plugin *)(const void *)p : NULL;
}
