/* SPDX-License-Identifier: MIT */
/*
 * tests/e2e/ctl_peer.c - a hostile client of a store's control socket
 * (wire format in fs/ctl_proto.h), for tests/e2e/hostile.sh.
 *
 *   ctl_peer SOCK send WORD...   a well-formed request; prints the status
 *   ctl_peer SOCK garbage        random bytes, then reads the reply
 *   ctl_peer SOCK truncated      a length of 100, 10 bytes, then EOF
 *   ctl_peer SOCK huge           a length of 0xffffffff
 *   ctl_peer SOCK zero           a length of 0
 *   ctl_peer SOCK silent SECS    connects, sends nothing for SECS seconds
 *   ctl_peer SOCK many N         N connections at once, each sending half
 *                                a header, then all closed
 *   ctl_peer SOCK nowords        a length-prefixed run of NUL bytes
 *
 * Prints "status N" when the daemon answered (N = its status), "closed"
 * when it closed the connection without an answer.  Exit 0 unless the
 * socket could not be reached (1).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int conn(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	if (fd < 0 || strlen(path) >= sizeof(sa.sun_path)) {
		perror("socket");
		exit(1);
	}
	strcpy(sa.sun_path, path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		printf("connect: %s\n", strerror(errno));
		exit(1);
	}
	return fd;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

static void sendall(int fd, const void *buf, size_t n)
{
	if (send(fd, buf, n, MSG_NOSIGNAL) != (ssize_t)n)
		printf("send: %s\n", strerror(errno));
}

/* Read the 8-byte reply header and the text; print what came back. */
static void answer(int fd)
{
	unsigned char h[8];
	size_t got = 0;
	char text[4096];
	ssize_t r;

	while (got < 8 && (r = read(fd, h + got, 8 - got)) > 0)
		got += (size_t)r;
	if (got < 8) {
		printf("closed\n");
		return;
	}
	r = read(fd, text, sizeof(text) - 1);
	text[r > 0 ? r : 0] = 0;
	printf("status %d %s", (int32_t)((uint32_t)h[0] << 24 | h[1] << 16 | h[2] << 8 | h[3]),
	       text);
	if (!r || text[r - 1] != '\n')
		printf("\n");
}

int main(int argc, char **argv)
{
	unsigned char buf[8192 + 4];
	const char *mode;
	int fd;

	if (argc < 3) {
		fprintf(stderr, "usage: ctl_peer SOCK MODE [ARGS]\n");
		return 2;
	}
	mode = argv[2];
	if (!strcmp(mode, "many")) {
		/* Non-blocking connects: once the listen backlog is full they
		 * fail with EAGAIN instead of waiting for the daemon. */
		int n = argc > 3 ? atoi(argv[3]) : 100, open_ = 0, refused = 0;
		int *fds = calloc((size_t)n, sizeof(int));
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[1]);
		for (int i = 0; i < n; i++) {
			int fd1 = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);

			if (connect(fd1, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
				refused++;
				close(fd1);
				continue;
			}
			sendall(fd1, "\0\0", 2);
			fds[open_++] = fd1;
		}
		for (int i = 0; i < open_; i++)
			close(fds[i]);
		printf("connected %d, refused %d (backlog full)\n", open_, refused);
		return 0;
	}
	fd = conn(argv[1]);
	if (!strcmp(mode, "send")) {
		size_t n = 0;

		for (int i = 3; i < argc; i++) {
			size_t l = strlen(argv[i]) + 1;

			if (n + l > 8192)
				break;
			memcpy(buf + 4 + n, argv[i], l);
			n += l;
		}
		put32(buf, (uint32_t)n);
		sendall(fd, buf, n + 4);
	} else if (!strcmp(mode, "garbage")) {
		FILE *f = fopen("/dev/urandom", "r");

		if (!f || fread(buf, 1, 4096, f) != 4096)
			return 1;
		fclose(f);
		put32(buf, 4092); /* a length the daemon accepts, then noise */
		sendall(fd, buf, 4096);
	} else if (!strcmp(mode, "truncated")) {
		put32(buf, 100);
		memcpy(buf + 4, "branch-cre", 10);
		sendall(fd, buf, 14);
		shutdown(fd, SHUT_WR);
	} else if (!strcmp(mode, "huge")) {
		put32(buf, 0xffffffffu);
		sendall(fd, buf, 4);
	} else if (!strcmp(mode, "zero")) {
		put32(buf, 0);
		sendall(fd, buf, 4);
	} else if (!strcmp(mode, "nowords")) {
		put32(buf, 64);
		memset(buf + 4, 0, 64);
		sendall(fd, buf, 68);
	} else if (!strcmp(mode, "silent")) {
		sleep(argc > 3 ? (unsigned)atoi(argv[3]) : 6);
	} else {
		fprintf(stderr, "ctl_peer: unknown mode %s\n", mode);
		return 2;
	}
	answer(fd);
	close(fd);
	return 0;
}
