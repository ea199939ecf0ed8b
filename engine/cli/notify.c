/* notify.c - see notify.h. Owns nothing past the call. */
#include "notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common.h"

int sl_notify_send(const char *state) {
  const char *path = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sa;
  socklen_t len;
  size_t n;
  ssize_t sent;
  int fd, rc = 0;

  if (path == NULL || path[0] == '\0')
    return 1;
  n = strlen(path);
  if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path))
    return SL_EINVAL;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, n);
  if (path[0] == '@')
    sa.sun_path[0] = '\0'; /* abstract: no trailing NUL in the length */
  len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                    (path[0] == '/'));
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
                (struct sockaddr *)&sa, len);
  if (sent < 0)
    rc = -errno;
  close(fd);
  return rc;
}
