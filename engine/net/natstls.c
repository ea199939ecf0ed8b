/* natstls.c - see natstls.h. */
#include "natstls.h"

natsStatus sl_natstls_apply(natsOptions *opts, const struct sl_tls_config *t) {
  natsStatus s;
  if (!t->enabled)
    return NATS_OK;
  s = natsOptions_SetSecure(opts, true);
  if (s == NATS_OK && t->ca_file)
    s = natsOptions_LoadCATrustedCertificates(opts, t->ca_file);
  if (s == NATS_OK && t->cert_file)
    s = natsOptions_LoadCertificatesChain(opts, t->cert_file,
                                          t->key_file ? t->key_file
                                                      : t->cert_file);
  if (s == NATS_OK && t->server_name)
    s = natsOptions_SetExpectedHostname(opts, t->server_name);
  if (s == NATS_OK && t->ciphers)
    s = natsOptions_SetCiphers(opts, t->ciphers);
  if (s == NATS_OK && !t->verify_peer)
    s = natsOptions_SkipServerVerification(opts, true);
  return s;
}
