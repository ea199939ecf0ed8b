/* test_kafka.c - a tls block onto librdkafka's properties (sl_kafka_conf):
 * what is set, what verify_peer = false turns off, that the user's options
 * still win, and what is refused. Read back with rd_kafka_conf_get. */
#include "kafka.h"
#include "test.h"

static const char *get(rd_kafka_conf_t *c, const char *k, char *v, size_t n) {
  size_t sz = n;
  if (rd_kafka_conf_get(c, k, v, &sz) != RD_KAFKA_CONF_OK)
    return NULL;
  return v;
}

static struct sl_tls_config tls_on(void) {
  struct sl_tls_config t;
  memset(&t, 0, sizeof(t));
  t.enabled = 1;
  t.verify_peer = 1;
  t.min_version = 0x0303;
  t.ca_file = "/etc/sluice/ca.pem";
  return t;
}

TEST(kafka_tls_maps_onto_ssl_properties) {
  struct sl_kafka_bridge b;
  struct sl_tls_config t = tls_on();
  char err[256] = "", v[512];
  rd_kafka_conf_t *c;
  memset(&b, 0, sizeof(b));
  t.cert_file = "/etc/sluice/client.pem";
  t.key_file = "/etc/sluice/client.key";
  t.ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256";
  c = sl_kafka_conf(&b, "127.0.0.1:9093", NULL, &t, NULL, err, sizeof(err));
  CHECK(c != NULL);
  CHECK_STR(get(c, "security.protocol", v, sizeof(v)), "ssl");
  CHECK_STR(get(c, "ssl.ca.location", v, sizeof(v)), "/etc/sluice/ca.pem");
  CHECK_STR(get(c, "ssl.certificate.location", v, sizeof(v)),
            "/etc/sluice/client.pem");
  CHECK_STR(get(c, "ssl.key.location", v, sizeof(v)), "/etc/sluice/client.key");
  CHECK_STR(get(c, "enable.ssl.certificate.verification", v, sizeof(v)),
            "true");
  CHECK_STR(get(c, "ssl.endpoint.identification.algorithm", v, sizeof(v)),
            "https");
  CHECK_STR(get(c, "ssl.cipher.suites", v, sizeof(v)),
            "ECDHE-ECDSA-AES128-GCM-SHA256");
  rd_kafka_conf_destroy(c);
}

TEST(kafka_tls_verify_peer_false_turns_both_checks_off) {
  struct sl_kafka_bridge b;
  struct sl_tls_config t = tls_on();
  char err[256] = "", v[512];
  rd_kafka_conf_t *c;
  memset(&b, 0, sizeof(b));
  t.verify_peer = 0;
  c = sl_kafka_conf(&b, "127.0.0.1:9093", NULL, &t, NULL, err, sizeof(err));
  CHECK(c != NULL);
  CHECK_STR(get(c, "enable.ssl.certificate.verification", v, sizeof(v)),
            "false");
  CHECK_STR(get(c, "ssl.endpoint.identification.algorithm", v, sizeof(v)),
            "none");
  CHECK(get(c, "ssl.certificate.location", v, sizeof(v)) == NULL); /* unset */
  rd_kafka_conf_destroy(c);
}

TEST(kafka_tls_the_users_options_win_last) {
  struct sl_kafka_bridge b;
  struct sl_tls_config t = tls_on();
  char err[256] = "", v[512];
  rd_kafka_conf_t *c;
  memset(&b, 0, sizeof(b));
  c = sl_kafka_conf(&b, "127.0.0.1:9093", NULL, &t,
                    "security.protocol=sasl_ssl, ssl.ca.location=/other.pem",
                    err, sizeof(err));
  CHECK(c != NULL);
  CHECK_STR(get(c, "security.protocol", v, sizeof(v)), "sasl_ssl");
  CHECK_STR(get(c, "ssl.ca.location", v, sizeof(v)), "/other.pem");
  rd_kafka_conf_destroy(c);
}

TEST(kafka_without_tls_stays_plaintext) {
  struct sl_kafka_bridge b;
  struct sl_tls_config t;
  char err[256] = "", v[512];
  rd_kafka_conf_t *c;
  memset(&b, 0, sizeof(b));
  memset(&t, 0, sizeof(t));
  c = sl_kafka_conf(&b, "127.0.0.1:9092", NULL, &t, NULL, err, sizeof(err));
  CHECK(c != NULL);
  CHECK_STR(get(c, "security.protocol", v, sizeof(v)), "plaintext");
  rd_kafka_conf_destroy(c);
}

TEST(kafka_tls_server_name_is_refused) {
  struct sl_kafka_bridge b;
  struct sl_tls_config t = tls_on();
  char err[256] = "";
  memset(&b, 0, sizeof(b));
  t.server_name = "kafka.example";
  CHECK(sl_kafka_conf(&b, "127.0.0.1:9093", NULL, &t, NULL, err,
                      sizeof(err)) == NULL);
  CHECK(strstr(err, "tls.server_name") != NULL);
}
