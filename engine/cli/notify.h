/* notify.h - the systemd readiness protocol (sd_notify) without libsystemd:
 * one datagram to $NOTIFY_SOCKET, so a Type=notify unit starts its
 * dependents only once every listener is bound. */
#ifndef SL_NOTIFY_H
#define SL_NOTIFY_H

/* Send state ("READY=1", ...) to $NOTIFY_SOCKET (a path, or "@name" for
 * the abstract namespace). Returns 0 when sent, 1 when no manager asked
 * for it (the variable is unset), or a negative SL_E* code. Blocking but
 * short: a datagram to a local socket. */
int sl_notify_send(const char *state);

#endif
