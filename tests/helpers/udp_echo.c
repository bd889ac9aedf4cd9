/* A UDP echo for the network tests: busybox (the demo image) has no UDP
 * server or client. Built static by the test script, so it runs in any
 * container through a read-only volume.
 *   udp_echo serve PORT            answer each datagram with "echo:" + it
 *   udp_echo ask HOST PORT TEXT    send TEXT, print the answer (retries for
 *                                  up to 20 s while the server comes up)
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int serve(int port) {
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) {
		perror("udp_echo: bind");
		return 1;
	}
	for (;;) {
		char buf[1024], out[1100];
		struct sockaddr_in from;
		socklen_t len = sizeof from;
		ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &len);
		if (n < 0)
			continue;
		buf[n] = 0;
		int m = snprintf(out, sizeof out, "echo:%s", buf);
		sendto(s, out, m, 0, (struct sockaddr *)&from, len);
	}
}

static int ask(const char *host, int port, const char *text) {
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct timeval tv = {.tv_sec = 0, .tv_usec = 250000};
	if (s < 0 || inet_pton(AF_INET, host, &a.sin_addr) != 1) {
		fprintf(stderr, "udp_echo: bad address %s\n", host);
		return 1;
	}
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	for (int i = 0; i < 80; i++) {
		char buf[1100];
		sendto(s, text, strlen(text), 0, (struct sockaddr *)&a, sizeof a);
		ssize_t n = recv(s, buf, sizeof buf - 1, 0);
		if (n > 0) {
			buf[n] = 0;
			printf("%s\n", buf);
			return 0;
		}
	}
	fprintf(stderr, "udp_echo: no answer from %s:%d\n", host, port);
	return 1;
}

int main(int argc, char **argv) {
	if (argc == 3 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]));
	if (argc == 5 && !strcmp(argv[1], "ask"))
		return ask(argv[2], atoi(argv[3]), argv[4]);
	fprintf(stderr, "usage: udp_echo serve PORT | udp_echo ask HOST PORT TEXT\n");
	return 2;
}
