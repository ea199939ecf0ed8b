/* natstls.h - a tls = {...} block onto libnats options, shared by the nats
 * input and output. */
#ifndef SL_NET_NATSTLS_H
#define SL_NET_NATSTLS_H

#include <nats/nats.h>

#include "config.h"

/* Nothing when tls is not enabled. Else a secure connection: ca_file
 * (NULL: the system's CAs), cert_file/key_file (mTLS), server_name as
 * the expected host name, ciphers (TLS 1.2) and, verify_peer off, no
 * server verification. libnats has no minimum version setting: its
 * OpenSSL default (TLS 1.2) applies. */
natsStatus sl_natstls_apply(natsOptions *opts, const struct sl_tls_config *t);

#endif
