/* kafka_mock.c - librdkafka's mock cluster (rdkafka_mock.h) as a process,
 * for the Kafka tests: there is no Kafka server in Debian. It listens on
 * loopback ports the mock picks itself (it has no way to ask for one),
 * prints one line "bootstrap=HOST:PORT,..." on stdout and runs until
 * SIGTERM/SIGINT. Produce, fetch, consumer groups and offset commits are
 * the mock's; kcat and sluice talk to it like to a cluster.
 *
 *   kafka_mock [-b BROKERS] [-d] [-e API:ERR:COUNT] [TOPIC:PARTITIONS ...]
 *
 * -b: brokers (default 1); -d: start with every broker down (connections
 * are refused until SIGUSR2); -e: the next COUNT requests of API key API
 * (0 Produce, 8 OffsetCommit, ...) are answered with error code ERR
 * (rd_kafka_mock_push_request_errors; may be given more than once);
 * TOPIC:PARTITIONS creates a topic (others
 * are created on first use with the mock's default partition count).
 * SIGUSR1 takes every broker down, SIGUSR2 brings them back. */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop, down_req, up_req;

static void on_signal(int sig) {
  if (sig == SIGUSR1)
    down_req = 1;
  else if (sig == SIGUSR2)
    up_req = 1;
  else
    stop = 1;
}

int main(int argc, char **argv) {
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_t *rk;
  rd_kafka_mock_cluster_t *mc;
  int brokers = 1, down = 0, i, nerr = 0;
  int errs[8][3];
  struct sigaction sa;

  for (i = 1; i < argc && argv[i][0] == '-'; i++) {
    if (strcmp(argv[i], "-b") == 0 && i + 1 < argc)
      brokers = atoi(argv[++i]);
    else if (strcmp(argv[i], "-d") == 0)
      down = 1;
    else if (strcmp(argv[i], "-e") == 0 && i + 1 < argc && nerr < 8 &&
             sscanf(argv[i + 1], "%d:%d:%d", &errs[nerr][0], &errs[nerr][1],
                    &errs[nerr][2]) == 3)
      nerr++, i++;
    else {
      fprintf(stderr, "usage: kafka_mock [-b BROKERS] [-d] "
                      "[-e API:ERR:COUNT] [TOPIC:N ...]\n");
      return 2;
    }
  }
  /* the mock needs a client instance for its own book keeping; quiet */
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
  rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "kafka_mock: %s\n", err);
    return 1;
  }
  mc = rd_kafka_mock_cluster_new(rk, brokers);
  if (mc == NULL) {
    fprintf(stderr, "kafka_mock: cannot start the mock cluster\n");
    return 1;
  }
  for (; i < argc; i++) {
    char *colon = strrchr(argv[i], ':');
    if (colon == NULL) {
      fprintf(stderr, "kafka_mock: %s: expected TOPIC:PARTITIONS\n", argv[i]);
      return 2;
    }
    *colon = '\0';
    if (rd_kafka_mock_topic_create(mc, argv[i], atoi(colon + 1), 1) != 0) {
      fprintf(stderr, "kafka_mock: cannot create topic %s\n", argv[i]);
      return 1;
    }
  }
  for (i = 0; i < nerr; i++) {
    rd_kafka_resp_err_t *e = malloc((size_t)errs[i][2] * sizeof(*e));
    int j;
    if (e == NULL)
      return 1;
    for (j = 0; j < errs[i][2]; j++)
      e[j] = (rd_kafka_resp_err_t)errs[i][1];
    rd_kafka_mock_push_request_errors_array(mc, (int16_t)errs[i][0],
                                            (size_t)errs[i][2], e);
    free(e);
  }
  if (down)
    rd_kafka_mock_broker_set_down(mc, -1);
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGUSR2, &sa, NULL);
  printf("bootstrap=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);
  while (!stop) {
    if (down_req) {
      down_req = 0;
      rd_kafka_mock_broker_set_down(mc, -1);
      printf("down\n");
      fflush(stdout);
    }
    if (up_req) {
      up_req = 0;
      rd_kafka_mock_broker_set_up(mc, -1);
      printf("up\n");
      fflush(stdout);
    }
    rd_kafka_poll(rk, 100);
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
