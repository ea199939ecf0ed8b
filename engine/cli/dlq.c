/* dlq.c - `sluice dlq replay`; see dlq.h. The file is read twice: once to
 * check every line (nothing is sent when one is bad), then to convert and
 * send, so memory stays bounded by one chunk of events whatever the file's
 * size. Owns its file, socket and buffers for the length of the call. */
#include "dlq.h"
#include "httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "codec.h"
#include "config.h"
#include "json.h"
#include "plugins.h"

#define CHUNK_BYTES (256u << 10) /* converted events sent at a time */
#define DEFAULT_TIMEOUT_S 60

static const char usage[] =
    "usage: sluice dlq replay FILE --to ADDRESS [--timeout SECONDS]\n"
    "       sluice dlq replay -c CONFIG --to ADDRESS [--timeout SECONDS]\n"
    "       sluice dlq replay FILE --to http://HOST:PORT[/PATH] [--token T]\n"
    "\n"
    "  Send the events of a dead-letter file (NDJSON, as the file output\n"
    "  writes it) to a sluice tcp or unix input, without the headers sluice\n"
    "  added when it gave up on them (sluice-error, sluice-rule,\n"
    "  sluice-output, sluice-attempts, sluice-input). Ids are kept, so an\n"
    "  output with dedup drops repeats if a replay is run twice. Uses the\n"
    "  input's ack mode and returns once the engine acknowledged every\n"
    "  event.\n"
    "\n"
    "  -c CONFIG          replay the config's dead-letter file (the implicit\n"
    "                     one is dead-letter.ndjson in its state_dir)\n"
    "  --to ADDRESS       host:port of a tcp input (host: a name or an IP\n"
    "                     address, [::1] for IPv6), or the path of a unix one,\n"
    "                     or http://host:port[/path] of an http input (path\n"
    "                     default /v1/events): msgpack batches of 256 KiB,\n"
    "                     each POSTed once the one before was answered 202\n"
    "                     (a 503 is retried); plain HTTP only\n"
    "  --token TOKEN      the http input's bearer token\n"
    "  --timeout SECONDS  give up when the engine makes no progress for this\n"
    "                     long (default 60)\n";

/* The headers sluice sets on a dead letter (sluice-input: an input's own,
 * for what it could not parse). sluice-peer is the event's origin, kept. */
static const char *const added[] = {"sluice-error", "sluice-rule",
                                    "sluice-output", "sluice-attempts",
                                    "sluice-input"};

struct replay {
  const char *file, *address;
  int fd;
  uint64_t total;    /* events in the file */
  uint64_t acked;    /* the engine's running count */
  struct sl_buf out; /* converted bytes not yet written */
  size_t out_pos;    /* of out, already written */
  struct sl_buf in;  /* ack bytes not yet parsed; the HTTP answer */
  int timeout_ms;
  int http;                /* --to http://...: POSTs, not the native protocol */
  struct sl_httpc_url url; /* of http */
  const char *token;       /* bearer token for http */
  uint64_t batch;          /* events in out not yet POSTed */
};

/* ---- converting --------------------------------------------------------- */

static int is_added(const char *s, uint32_t n) {
  size_t i;
  for (i = 0; i < SL_ARRAY_SIZE(added); i++)
    if (strlen(added[i]) == n && memcmp(added[i], s, n) == 0)
      return 1;
  return 0;
}

/* Copy the headers map at h without the headers sluice added; out gets a
 * whole map, or stays empty when nothing is left. */
static int strip_headers(const uint8_t *h, size_t len, uint32_t count,
                         struct sl_buf *out) {
  struct sl_buf pairs;
  size_t pos, used;
  uint32_t kept = 0, declared, i;
  int rc = 0;

  if (len == 0)
    return 0;
  if (sl_codec_read_map(h, len, &declared, &pos) != 0)
    return SL_EPROTO;
  sl_buf_init(&pairs);
  for (i = 0; i < count && rc == 0; i++) {
    struct sl_str k;
    size_t start = pos;
    if (sl_codec_read_str(h + pos, len - pos, &k, NULL) != 0 ||
        sl_codec_skip(h + pos, len - pos, len, &used, NULL) != 0) {
      rc = SL_EPROTO;
      break;
    }
    pos += used;
    if (sl_codec_skip(h + pos, len - pos, len, &used, NULL) != 0) {
      rc = SL_EPROTO;
      break;
    }
    pos += used;
    if (!is_added(k.p, k.len)) {
      rc = sl_buf_append(&pairs, h + start, pos - start);
      kept++;
    }
  }
  if (rc == 0 && kept > 0) {
    rc = sl_codec_put_map(out, kept);
    if (rc == 0)
      rc = sl_buf_append(out, pairs.data, pairs.len);
  }
  sl_buf_close(&pairs);
  return rc;
}

/* Turn one NDJSON line into an event (appended to out). Returns 0, or
 * SL_EPROTO / SL_ENOMEM with why filled. */
static int convert(const char *line, size_t n, struct sl_buf *out, char *why,
                   size_t whylen) {
  struct sl_buf map, headers;
  struct sl_event_view v;
  struct sl_codec_error err;
  uint32_t offs[3];
  int rc;

  sl_buf_init(&map);
  sl_buf_init(&headers);
  rc = sl_json_to_msgpack(line, n, &map, why, whylen);
  if (rc == 0 && sl_codec_parse_event(map.data, map.len, &v, &err) != 0) {
    snprintf(why, whylen, "not an event: %s", err.msg);
    rc = SL_EPROTO;
  }
  if (rc == 0 && v.id.p == NULL) {
    snprintf(why, whylen, "not an event: no id (a dead letter always has "
                          "one)");
    rc = SL_EPROTO;
  }
  if (rc == 0 && (rc = strip_headers(v.headers, v.headers_len,
                                     v.headers_count, &headers)) != 0)
    snprintf(why, whylen, "%s", rc == SL_ENOMEM ? "out of memory"
                                                : "bad headers");
  if (rc == 0) {
    rc = sl_codec_write_event(out, v.id, v.topic, v.key,
                              v.has_time ? v.time : sl_now_ns(),
                              headers.len ? headers.data : NULL, headers.len,
                              v.payload, v.payload_len, offs);
    if (rc != 0)
      snprintf(why, whylen, "out of memory");
  }
  sl_buf_close(&map);
  sl_buf_close(&headers);
  return rc;
}

static int blank(const char *p, size_t n) {
  while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ' ||
                   p[n - 1] == '\t'))
    n--;
  return n == 0;
}

/* Check every line; count the events. Returns 0 or 1 (message printed). */
static int check_file(struct replay *r) {
  FILE *f = fopen(r->file, "r");
  struct sl_buf scratch;
  char *line = NULL, why[256];
  size_t cap = 0, lineno = 0;
  ssize_t n;
  int rc = 0;

  if (f == NULL) {
    fprintf(stderr, "sluice dlq replay: cannot open %s: %s\n", r->file,
            strerror(errno));
    return 1;
  }
  sl_buf_init(&scratch);
  while ((n = getline(&line, &cap, f)) > 0) {
    lineno++;
    if (blank(line, (size_t)n))
      continue;
    sl_buf_reset(&scratch);
    if (convert(line, (size_t)n, &scratch, why, sizeof(why)) != 0) {
      fprintf(stderr, "sluice dlq replay: %s:%zu: %s; nothing was sent\n",
              r->file, lineno, why);
      rc = 1;
      break;
    }
    r->total++;
  }
  if (rc == 0 && ferror(f)) {
    fprintf(stderr, "sluice dlq replay: cannot read %s: %s\n", r->file,
            strerror(errno));
    rc = 1;
  }
  free(line);
  sl_buf_close(&scratch);
  fclose(f);
  return rc;
}

/* ---- talking to the engine ---------------------------------------------- */

/* Connect to each address host:port resolves to, in turn (a blocking
 * lookup: this command has no loop to keep). Returns the fd, or -1 with
 * why filled. */
static int dial_host(const char *host, int port, char *why, size_t whylen) {
  struct addrinfo hints, *res, *ai;
  char service[8];
  int rc, fd = -1, err = ECONNREFUSED;

  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(service, sizeof(service), "%d", port);
  rc = getaddrinfo(host, service, &hints, &res);
  if (rc != 0) {
    snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  for (ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      close(fd);
      fd = -1;
    } else if (fd < 0) {
      err = errno;
    }
  }
  freeaddrinfo(res);
  if (fd < 0)
    snprintf(why, whylen, "%s", strerror(err));
  return fd;
}

/* Returns 0 (r->fd open) or 1 with why filled. */
static int dial(struct replay *r, char *why, size_t whylen) {
  char host[256];
  int port, fd;
  struct sockaddr_un un;

  if (strchr(r->address, '/') == NULL &&
      sl_config_split_hostport(r->address, host, sizeof(host), &port) == 0) {
    fd = dial_host(host, port, why, whylen);
  } else if (strchr(r->address, '/') != NULL) {
    if (strlen(r->address) >= sizeof(un.sun_path)) {
      snprintf(why, whylen, "socket path too long");
      return 1;
    }
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    memcpy(un.sun_path, r->address, strlen(r->address) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&un, sizeof(un)) != 0) {
      snprintf(why, whylen, "%s", strerror(errno));
      close(fd);
      fd = -1;
    } else if (fd < 0) {
      snprintf(why, whylen, "%s", strerror(errno));
    }
  } else {
    snprintf(why, whylen, "expected host:port or the path of a unix socket");
    return 1;
  }
  if (fd < 0)
    return 1;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  r->fd = fd;
  return 0;
}

/* Parse the acks read so far: msgpack unsigned integers, each the running
 * count of events the engine accepted. Returns 0 or SL_EPROTO. */
static int read_acks(struct replay *r) {
  size_t pos = 0, used;
  while (pos < r->in.len) {
    const uint8_t *p = r->in.data + pos;
    uint64_t count = 0;
    int rc = sl_codec_skip(p, r->in.len - pos, 16, &used, NULL);
    if (rc == SL_EAGAIN)
      break;
    if (rc != 0 || sl_codec_read_uint(p, used, &count, &used) != 0)
      return SL_EPROTO;
    if (count < r->acked || count > r->total)
      return SL_EPROTO;
    r->acked = count;
    pos += used;
  }
  sl_buf_consume(&r->in, pos);
  return 0;
}

/* Write what is pending and read acks until the pending bytes are out
 * and, when until_acked, every event is acknowledged. Returns 0 or 1
 * (message printed). */
static int pump(struct replay *r, int until_acked) {
  uint64_t last = sl_mono_ns();
  for (;;) {
    struct pollfd pfd;
    int pending = r->out_pos < r->out.len, n;
    if (!pending && (!until_acked || r->acked == r->total))
      break;
    pfd.fd = r->fd;
    pfd.events = POLLIN | (pending ? POLLOUT : 0);
    pfd.revents = 0;
    n = poll(&pfd, 1, 100);
    if (n < 0 && errno != EINTR) {
      fprintf(stderr, "sluice dlq replay: poll: %s\n", strerror(errno));
      return 1;
    }
    if (n > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
      uint8_t buf[4096];
      ssize_t got = read(r->fd, buf, sizeof(buf));
      if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
        fprintf(stderr,
                "sluice dlq replay: %s closed the connection (%s) after "
                "acknowledging %llu of %llu events; replaying again may "
                "repeat those (an output's dedup drops repeats by id)\n",
                r->address, got == 0 ? "end of stream" : strerror(errno),
                (unsigned long long)r->acked, (unsigned long long)r->total);
        return 1;
      }
      if (got > 0) {
        uint64_t before = r->acked;
        if (sl_buf_append(&r->in, buf, (size_t)got) != 0 ||
            read_acks(r) != 0) {
          fprintf(stderr, "sluice dlq replay: %s sent something that is not "
                          "an ack (is it a sluice tcp/unix input?)\n",
                  r->address);
          return 1;
        }
        if (r->acked != before)
          last = sl_mono_ns();
      }
    }
    if (n > 0 && (pfd.revents & POLLOUT) && pending) {
      ssize_t put = write(r->fd, r->out.data + r->out_pos,
                          r->out.len - r->out_pos);
      if (put < 0 && errno != EAGAIN && errno != EINTR) {
        fprintf(stderr, "sluice dlq replay: writing to %s: %s (%llu of %llu "
                        "events acknowledged)\n",
                r->address, strerror(errno), (unsigned long long)r->acked,
                (unsigned long long)r->total);
        return 1;
      }
      if (put > 0) {
        r->out_pos += (size_t)put;
        last = sl_mono_ns();
      }
    }
    if (sl_mono_ns() - last > (uint64_t)r->timeout_ms * 1000000u) {
      fprintf(stderr, "sluice dlq replay: %s made no progress for %d s (%llu "
                      "of %llu events acknowledged)\n",
              r->address, r->timeout_ms / 1000, (unsigned long long)r->acked,
              (unsigned long long)r->total);
      return 1;
    }
  }
  if (r->out_pos == r->out.len) {
    sl_buf_reset(&r->out);
    r->out_pos = 0;
  }
  return 0;
}

/* POST the events in r->out as one application/msgpack batch, on a
 * connection of its own; a 503 (an output full) is tried again each
 * second until the timeout. Returns 0 (r->acked counts them) or 1
 * (message printed). */
static int post_batch(struct replay *r) {
  uint64_t start = sl_mono_ns();
  char why[256];
  for (;;) {
    int status = 0, rc, fd = dial_host(r->url.host, r->url.port, why,
                                       sizeof(why));
    if (fd >= 0) {
      rc = sl_httpc_post(fd, &r->url, r->token, "application/msgpack",
                         r->out.data, r->out.len, r->timeout_ms, &status,
                         &r->in, why, sizeof(why));
      close(fd);
    } else {
      rc = SL_EIO;
    }
    if (rc == 0 && status == 202) {
      r->acked += r->batch;
      r->batch = 0;
      sl_buf_reset(&r->out);
      return 0;
    }
    if (rc == 0 && status == 503 &&
        sl_mono_ns() - start < (uint64_t)r->timeout_ms * 1000000u) {
      poll(NULL, 0, 1000);
      continue;
    }
    if (rc == 0)
      fprintf(stderr, "sluice dlq replay: %s answered %d: %.*s\n",
              r->address, status, (int)(r->in.len > 512 ? 512 : r->in.len),
              (const char *)r->in.data);
    else
      fprintf(stderr, "sluice dlq replay: %s: %s\n", r->address, why);
    fprintf(stderr, "sluice dlq replay: %llu of %llu events accepted; "
                    "replaying again may repeat those (an output's dedup "
                    "drops repeats by id)\n",
            (unsigned long long)r->acked, (unsigned long long)r->total);
    return 1;
  }
}

/* Convert and send every event, then wait for the last ack. */
static int send_file(struct replay *r) {
  FILE *f = fopen(r->file, "r");
  char *line = NULL, why[256];
  size_t cap = 0, lineno = 0;
  uint64_t sent = 0;
  ssize_t n;
  int rc = 0;

  if (f == NULL) {
    fprintf(stderr, "sluice dlq replay: cannot open %s: %s\n", r->file,
            strerror(errno));
    return 1;
  }
  /* the ack-mode hello: {"sluice": 1, "ack": true} */
  if (!r->http && (sl_codec_put_map(&r->out, 2) != 0 ||
      sl_codec_put_str(&r->out, "sluice", 6) != 0 ||
      sl_codec_put_uint(&r->out, 1) != 0 ||
      sl_codec_put_str(&r->out, "ack", 3) != 0 ||
      sl_codec_put_bool(&r->out, 1) != 0)) {
    fprintf(stderr, "sluice dlq replay: out of memory\n");
    fclose(f);
    return 1;
  }
  while (rc == 0 && sent < r->total && (n = getline(&line, &cap, f)) > 0) {
    lineno++;
    if (blank(line, (size_t)n))
      continue;
    if (convert(line, (size_t)n, &r->out, why, sizeof(why)) != 0) {
      /* it passed the check: the file changed under us */
      fprintf(stderr, "sluice dlq replay: %s:%zu: %s (the file changed "
                      "while it was sent?)\n",
              r->file, lineno, why);
      rc = 1;
      break;
    }
    sent++;
    r->batch++;
    if (r->out.len - r->out_pos >= CHUNK_BYTES)
      rc = r->http ? post_batch(r) : pump(r, 0);
  }
  if (rc == 0 && sent < r->total) {
    fprintf(stderr, "sluice dlq replay: %s got shorter while it was sent\n",
            r->file);
    r->total = sent;
  }
  if (rc == 0)
    rc = r->http ? (r->batch ? post_batch(r) : 0) : pump(r, 1);
  free(line);
  fclose(f);
  return rc;
}

/* The path of the config's dead-letter file output; caller frees. NULL
 * after printing why when there is none. */
static char *dead_letter_of(const char *config) {
  struct sl_buf err;
  struct sl_config *cfg;
  char *path = NULL;
  sl_buf_init(&err);
  cfg = sl_config_load(config, sl_plugins, &err);
  if (cfg == NULL) {
    fprintf(stderr, "%.*s", (int)err.len, (const char *)err.data);
  } else if (cfg->dead_letter < 0 ||
             strcmp(cfg->outputs[cfg->dead_letter].type, "file") != 0 ||
             cfg->outputs[cfg->dead_letter].path == NULL) {
    fprintf(stderr, "sluice dlq replay: %s: the dead letter is not a file "
                    "output; name the FILE\n",
            config);
  } else {
    path = strdup(cfg->outputs[cfg->dead_letter].path);
  }
  sl_buf_close(&err);
  sl_config_free(cfg);
  return path;
}

static int replay(struct replay *rp);

int sl_dlq_main(int argc, char **argv) {
  struct replay r;
  const char *config = NULL;
  char *from_config = NULL;
  int i, rc;

  memset(&r, 0, sizeof(r));
  r.fd = -1;
  r.timeout_ms = DEFAULT_TIMEOUT_S * 1000;
  if (argc < 1 || strcmp(argv[0], "replay") != 0) {
    if (argc >= 1 && (strcmp(argv[0], "-h") == 0 ||
                      strcmp(argv[0], "--help") == 0)) {
      fputs(usage, stdout);
      return 0;
    }
    fputs(usage, stderr);
    return 2;
  }
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--to") == 0 && i + 1 < argc) {
      r.address = argv[++i];
    } else if (strncmp(argv[i], "--to=", 5) == 0) {
      r.address = argv[i] + 5;
    } else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc) {
      r.token = argv[++i];
    } else if ((strcmp(argv[i], "-c") == 0 ||
                strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
      config = argv[++i];
    } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
      char *end;
      long t = strtol(argv[++i], &end, 10);
      if (*end != '\0' || t < 1 || t > 86400) {
        fprintf(stderr, "sluice dlq replay: --timeout: expected seconds from "
                        "1 to 86400, got \"%s\"\n",
                argv[i]);
        return 2;
      }
      r.timeout_ms = (int)t * 1000;
    } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      return 0;
    } else if (argv[i][0] != '-' && r.file == NULL) {
      r.file = argv[i];
    } else {
      fprintf(stderr, "sluice dlq replay: unexpected argument \"%s\"\n%s",
              argv[i], usage);
      return 2;
    }
  }
  if (config && r.file) {
    fprintf(stderr, "sluice dlq replay: give FILE or -c CONFIG, not both\n");
    return 2;
  }
  if (config && r.address) {
    from_config = dead_letter_of(config);
    if (from_config == NULL)
      return 1;
    r.file = from_config;
  }
  if (r.file == NULL || r.address == NULL) {
    fprintf(stderr, "sluice dlq replay: %s\n%s",
            r.file || config ? "--to ADDRESS is required" : "FILE is required",
            usage);
    return 2;
  }
  rc = replay(&r);
  free(from_config);
  return rc;
}

/* Check the file, then send it and wait for the acks. The exit code. */
static int replay(struct replay *rp) {
  struct replay r = *rp;
  char why[320];
  int rc;
  if ((rc = check_file(&r)) != 0)
    return rc;
  if (r.total == 0) {
    printf("replayed 0 events from %s: the file holds none\n", r.file);
    return 0;
  }
  if (strncasecmp(r.address, "http", 4) == 0 && strstr(r.address, "://")) {
    if (sl_httpc_parse_url(r.address, &r.url, why, sizeof(why)) != 0) {
      fprintf(stderr, "sluice dlq replay: --to %s: %s\n", r.address, why);
      return 2;
    }
    r.http = 1;
  } else if (dial(&r, why, sizeof(why)) != 0) {
    fprintf(stderr, "sluice dlq replay: cannot connect to %s: %s\n", r.address,
            why);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  sl_buf_init(&r.out);
  sl_buf_init(&r.in);
  rc = send_file(&r);
  if (r.fd >= 0)
    close(r.fd);
  sl_buf_close(&r.out);
  sl_buf_close(&r.in);
  if (rc == 0)
    printf("replayed %llu events from %s to %s\n",
           (unsigned long long)r.total, r.file, r.address);
  return rc;
}
