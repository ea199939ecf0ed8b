/* tap.h - `sluice tap` and `sluice top`: read a running engine through
 * its admin API (the config's admin.listen and bearer token). */
#ifndef SL_TAP_H
#define SL_TAP_H

#include "config.h"

/* argv[0] is the command's name. Return the exit code. */
int sl_tap_main(int argc, char **argv);
int sl_top_main(int argc, char **argv);

/* Load the config at path, printing its problems; NULL when rejected. */
struct sl_config *sl_tap_load(const char *path);

/* --timeout SECONDS (0.1 to 3600) in ms; -1 when it is not that. */
int sl_tap_timeout(const char *arg);

#endif
