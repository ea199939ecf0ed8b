/* dlq.h - `sluice dlq`: tools for dead letters. `replay` reads a dead-letter
 * NDJSON file (as the file output writes it), takes off the headers sluice
 * added when it gave up on the events (sluice-error, sluice-rule,
 * sluice-output, sluice-attempts, sluice-input) and sends the events, ids
 * kept, to a native input in ack mode, waiting for the engine's final ack.
 * A command, not part of the engine loop: it blocks on its one socket. */
#ifndef SL_DLQ_H
#define SL_DLQ_H

/* Run `sluice dlq ARGS...` (argv holds what follows "dlq"). Prints the
 * result on stdout and problems on stderr. Returns the exit code: 0 done,
 * 1 failed (bad file, unreachable or lost engine, timeout), 2 bad
 * arguments. */
int sl_dlq_main(int argc, char **argv);

#endif
