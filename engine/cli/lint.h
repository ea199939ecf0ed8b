/* lint.h - what `sluice check` finds in rule sources beyond loading them:
 * output names in string literals that name no output. */
#ifndef SL_LINT_H
#define SL_LINT_H

#include "config.h"

/* Scan every rule file (*.lua but *_spec.lua) of cfg's rules dir for
 * `return "name"`, `return { "a", "b" }` (one line, literals only) and
 * `sluice.emit("name"` whose name is no output of cfg; print each as
 * "file:line: warning: ..." to stderr. Returns how many. A heuristic on
 * the text: a helper function returning a string is a false alarm, a name
 * built at run time is not seen. */
int sl_lint_rules(const struct sl_config *cfg);

/* Warn of routes that can never decide: each of their globs is covered by
 * a glob of an earlier route (first match wins). Returns how many. */
int sl_lint_routes(const struct sl_config *cfg, const char *path);

/* Load every tls block's files as the engine will (OpenSSL: the
 * certificate, that the key is its key, the CA files, the ciphers), so a
 * key that does not match its certificate or a file that is no PEM fails
 * the check as it fails run; the checker itself only sees that the files
 * can be read. Prints each problem as "path: inputs[N].tls: why" and
 * returns how many. */
int sl_lint_tls(const struct sl_config *cfg, const char *path);

/* Compare each contract's consecutive versions (oldest first): a change
 * that breaks readers of the older one within the same MAJOR is an error
 * (printed to stderr unless info); across a major bump it is reported,
 * as are the compatible changes (printed to stdout when info). Returns
 * the number of errors. */
int sl_lint_schemas(const struct sl_config *cfg, int info);

#endif
