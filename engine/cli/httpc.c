/* httpc.c - see httpc.h. Blocking with poll: a command has no loop. The
 * answer is read whole into memory; answers here are short JSON. */
#include "httpc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common.h"
#include "config.h"

#define MAX_ANSWER (1u << 20)

int sl_httpc_parse_url(const char *url, struct sl_httpc_url *u, char *why,
                       size_t whylen) {
  const char *hp, *slash, *colon, *bracket;
  char hostport[256];
  size_t n;

  memset(u, 0, sizeof(*u));
  if (strncasecmp(url, "https://", 8) == 0) {
    snprintf(why, whylen, "https is not supported here: use http:// to a "
                          "local input, or the native tcp input");
    return SL_EINVAL;
  }
  if (strncasecmp(url, "http://", 7) != 0) {
    snprintf(why, whylen, "expected http://host[:port][/path]");
    return SL_EINVAL;
  }
  hp = url + 7;
  slash = strchr(hp, '/');
  n = slash ? (size_t)(slash - hp) : strlen(hp);
  if (n == 0 || n >= sizeof(hostport)) {
    snprintf(why, whylen, "no host in %s", url);
    return SL_EINVAL;
  }
  memcpy(hostport, hp, n);
  hostport[n] = '\0';
  snprintf(u->path, sizeof(u->path), "%s",
           slash && slash[1] ? slash : "/v1/events");
  /* a port: after the last ':' outside [IPv6] */
  colon = strrchr(hostport, ':');
  bracket = strrchr(hostport, ']');
  if (colon && (bracket == NULL || colon > bracket)) {
    if (sl_config_split_hostport(hostport, u->host, sizeof(u->host),
                                 &u->port) != 0) {
      snprintf(why, whylen, "bad host:port \"%s\"", hostport);
      return SL_EINVAL;
    }
    return 0;
  }
  u->port = 80;
  if (hostport[0] == '[') { /* [::1] without a port */
    hostport[n - 1] = '\0';
    snprintf(u->host, sizeof(u->host), "%s", hostport + 1);
  } else {
    snprintf(u->host, sizeof(u->host), "%s", hostport);
  }
  return 0;
}

/* Wait for fd to be ready for events; 0, or SL_ETIMEDOUT / SL_EIO. */
static int wait_fd(int fd, short events, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do
    n = poll(&p, 1, timeout_ms);
  while (n < 0 && errno == EINTR);
  if (n == 0)
    return SL_ETIMEDOUT;
  return n < 0 ? SL_EIO : 0;
}

static int write_all(int fd, const void *p, size_t len, int timeout_ms,
                     char *why, size_t whylen) {
  const char *s = p;
  while (len > 0) {
    ssize_t put = write(fd, s, len);
    if (put > 0) {
      s += put;
      len -= (size_t)put;
      continue;
    }
    if (put < 0 && errno != EAGAIN && errno != EINTR) {
      snprintf(why, whylen, "writing: %s", strerror(errno));
      return SL_EIO;
    }
    if (wait_fd(fd, POLLOUT, timeout_ms) != 0) {
      snprintf(why, whylen, "no progress writing for %d ms", timeout_ms);
      return SL_ETIMEDOUT;
    }
  }
  return 0;
}

/* The answer is complete when its headers and Content-Length bytes of
 * body are in. Returns 1 (complete), 0 (read on) or SL_EPROTO; *len is
 * the Content-Length, -1 when none came (yet). */
static int complete(const struct sl_buf *in, size_t *body_off, int *status,
                    long *len) {
  const char *p = (const char *)in->data, *end, *cl;
  char head[8192];
  size_t hlen;

  end = memmem(p, in->len, "\r\n\r\n", 4);
  if (end == NULL)
    return in->len > sizeof(head) ? SL_EPROTO : 0;
  hlen = (size_t)(end - p);
  if (hlen >= sizeof(head) || sscanf(p, "HTTP/1.%*d %d", status) != 1)
    return SL_EPROTO;
  memcpy(head, p, hlen);
  head[hlen] = '\0';
  for (cl = head; (cl = strcasestr(cl, "\ncontent-length:")) != NULL; cl++)
    *len = strtol(cl + 16, NULL, 10);
  *body_off = hlen + 4;
  return *len >= 0 && in->len - *body_off >= (size_t)*len;
}

int sl_httpc_post(int fd, const struct sl_httpc_url *u, const char *token,
                  const char *ctype, const void *body, size_t len,
                  int timeout_ms, int *status, struct sl_buf *resp, char *why,
                  size_t whylen) {
  struct sl_buf head;
  size_t body_off = 0;
  long clen = -1;
  uint64_t deadline;
  int rc, done = 0;

  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  sl_buf_init(&head);
  rc = sl_buf_printf(&head,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n",
                     u->path, u->host, u->port, ctype, len);
  if (rc == 0 && token)
    rc = sl_buf_printf(&head, "Authorization: Bearer %s\r\n", token);
  if (rc == 0)
    rc = sl_buf_append(&head, "\r\n", 2);
  if (rc != 0) {
    snprintf(why, whylen, "out of memory");
    sl_buf_close(&head);
    return SL_ENOMEM;
  }
  rc = write_all(fd, head.data, head.len, timeout_ms, why, whylen);
  sl_buf_close(&head);
  if (rc == 0)
    rc = write_all(fd, body, len, timeout_ms, why, whylen);
  if (rc != 0)
    return rc;
  sl_buf_reset(resp);
  /* the whole answer within the timeout: a server trickling a byte at a
   * time must not keep us forever */
  deadline = sl_mono_ns() + (uint64_t)timeout_ms * 1000000u;
  while (!done) {
    char buf[4096];
    ssize_t got = read(fd, buf, sizeof(buf));
    uint64_t now = sl_mono_ns();
    if (got > 0) {
      if (resp->len + (size_t)got > MAX_ANSWER ||
          sl_buf_append(resp, buf, (size_t)got) != 0) {
        snprintf(why, whylen, "answer too large");
        return SL_EPROTO;
      }
      done = complete(resp, &body_off, status, &clen);
    } else if (got == 0) {
      done = complete(resp, &body_off, status, &clen);
      if (done == 0 && body_off > 0 && clen < 0) /* ends at close */
        done = 1;
      if (done == 0 && body_off > 0) {
        snprintf(why, whylen, "the answer was cut short (%zu of %ld bytes "
                 "of body)", resp->len - body_off, clen);
        return SL_EPROTO;
      }
      if (done == 0)
        done = SL_EPROTO;
    } else if (errno != EAGAIN && errno != EINTR) {
      snprintf(why, whylen, "reading: %s", strerror(errno));
      return SL_EIO;
    } else if (now >= deadline ||
               wait_fd(fd, POLLIN, (int)((deadline - now) / 1000000) + 1) !=
                   0) {
      snprintf(why, whylen, "no complete answer within %d ms", timeout_ms);
      return SL_ETIMEDOUT;
    }
    if (done == 0 && sl_mono_ns() >= deadline) {
      snprintf(why, whylen, "no complete answer within %d ms", timeout_ms);
      return SL_ETIMEDOUT;
    }
  }
  if (done < 0) {
    snprintf(why, whylen, "not an HTTP answer");
    return SL_EPROTO;
  }
  sl_buf_consume(resp, body_off);
  return 0;
}
