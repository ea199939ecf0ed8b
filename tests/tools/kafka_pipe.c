/* kafka_pipe.c - line-at-a-time Kafka client for the broker benchmark
 * (tests/bench/brokers.py): kcat -P reads its stdin in large blocks, so a
 * paced writer's lines wait in kcat until the block fills; here each line
 * is produced the moment it is read, and each consumed message is written
 * and flushed at once.
 *
 *   kafka_pipe produce BROKERS TOPIC [MS]
 *                                      stdin lines -> messages (linger 0),
 *                                      with timestamp MS when given
 *   kafka_pipe consume BROKERS TOPIC   messages of partition 0, from the
 *                                      beginning -> stdout lines */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static rd_kafka_t *client(rd_kafka_type_t type, const char *brokers) {
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_t *rk;
  if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err,
                        sizeof(err)) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, type == RD_KAFKA_PRODUCER ? "linger.ms"
                                                        : "fetch.wait.max.ms",
                        type == RD_KAFKA_PRODUCER ? "0" : "10", err,
                        sizeof(err)) != RD_KAFKA_CONF_OK) {
    fprintf(stderr, "kafka_pipe: %s\n", err);
    exit(2);
  }
  rk = rd_kafka_new(type, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "kafka_pipe: %s\n", err);
    exit(1);
  }
  return rk;
}

static int produce(const char *brokers, const char *topic, int64_t ms) {
  rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, brokers);
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, stdin)) > 0) {
    if (line[n - 1] == '\n')
      n--;
    while (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
                             RD_KAFKA_V_VALUE(line, (size_t)n),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_TIMESTAMP(ms),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
      rd_kafka_poll(rk, 10);
    rd_kafka_poll(rk, 0);
  }
  free(line);
  rd_kafka_flush(rk, 10000);
  rd_kafka_destroy(rk);
  return 0;
}

static int consume(const char *brokers, const char *topic) {
  rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, brokers);
  rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
  if (rd_kafka_consume_start(t, 0, RD_KAFKA_OFFSET_BEGINNING) != 0) {
    fprintf(stderr, "kafka_pipe: consume_start failed\n");
    return 1;
  }
  for (;;) { /* until killed */
    rd_kafka_message_t *m = rd_kafka_consume(t, 0, 1000);
    if (m == NULL)
      continue;
    if (m->err == 0) {
      fwrite(m->payload, 1, m->len, stdout);
      fputc('\n', stdout);
      fflush(stdout);
    }
    rd_kafka_message_destroy(m);
  }
}

int main(int argc, char **argv) {
  if ((argc == 4 || argc == 5) && strcmp(argv[1], "produce") == 0)
    return produce(argv[2], argv[3], argc == 5 ? strtoll(argv[4], NULL, 10)
                                               : 0);
  if (argc == 4 && strcmp(argv[1], "consume") == 0)
    return consume(argv[2], argv[3]);
  fprintf(stderr, "usage: kafka_pipe produce|consume BROKERS TOPIC [MS]\n");
  return 2;
}
