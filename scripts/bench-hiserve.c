/* A tiny HTTP server for scripts/bench-net.sh: one process answers every
 * request, as a model server does, where busybox httpd forks a child per
 * connection. Its latency is the network's and the VM's exits, not fork's.
 *   bench-hiserve PORT
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 128)) {
    perror("bench-hiserve");
    return 1;
  }
  static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 3\r\nConnection: close\r\n\r\nhi\n";
  char buf[4096];
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0)
      continue;
    size_t n = 0;
    ssize_t r;
    /* The request's headers end with an empty line. */
    while (n < sizeof buf - 1 && (r = read(c, buf + n, sizeof buf - 1 - n)) > 0) {
      n += (size_t)r;
      buf[n] = 0;
      if (strstr(buf, "\r\n\r\n"))
        break;
    }
    if (write(c, reply, sizeof reply - 1) < 0)
      perror("bench-hiserve: write");
    close(c);
  }
}
