/* route.h - offline commands that use the rules without running the
 * engine: `sluice route` (dry run) and `sluice status`. */
#ifndef SL_ROUTE_H
#define SL_ROUTE_H

#include "config.h"

/* Read events from path (NULL or "-": stdin), NDJSON or a msgpack stream
 * (told apart by the first byte), decide each with the config's rules and
 * routes, and print one JSON line per event. Returns the exit code: 0, or
 * 1 when the config or rules are rejected (nothing is read then). */
int sl_route_main(const char *config, const char *path);

/* `sluice check --events`: the same dry run, printing only the events
 * that failed, were unrouted or did not parse (with the reason) and a
 * count by outcome. Returns 1 when there was any such event (or the
 * config or rules are rejected), else 0: a pre-deploy gate. */
int sl_route_gate(const char *config, const char *path);

/* Print the running engine's status file. Returns the exit code. */
int sl_route_status(const char *config);

/* The status file of a config (<state_dir>/sluice.status.json) and its
 * pid file (pid_file, default <state_dir>/sluice.pid). Caller frees. */
char *sl_route_status_path(const struct sl_config *cfg);
char *sl_route_pid_path(const struct sl_config *cfg);

#endif
