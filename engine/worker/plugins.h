/* plugins.h - the registry of input and output plugins. A plugin declares
 * itself in its own file as a struct sl_plugin (kind, type, doc and key
 * table for the config checker; its ops for the worker); plugins.c lists
 * them, one line each. Nothing else names a plugin. */
#ifndef SL_PLUGINS_H
#define SL_PLUGINS_H

#include "keys.h"
#include "worker.h"

struct sl_plugin {
  struct sl_config_plugin config; /* first: the registry's list points here */
  const struct sl_input_ops *input;   /* by config.kind: one of the two */
  const struct sl_output_ops *output;
};

/* Every plugin's config part, NULL-terminated, in the order the checker
 * names them ("expected stdout, file, ..."): hand it to sl_config_load. */
extern const struct sl_config_plugin *const sl_plugins[];

/* The plugin of that kind and type, or NULL when none is built in. */
const struct sl_plugin *sl_plugin_find(enum sl_plugin_kind kind,
                                       const char *type);

#endif
