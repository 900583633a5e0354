/* SPDX-License-Identifier: MIT */
/* tools/ctl_client.c - client side of the control socket (fs/ctl_proto.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fs/ctl_proto.h"
#include "tools.h"

static int io_full(int fd, void *buf, size_t n, bool wr)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = wr ? send(fd, (char *)buf + done, n - done, MSG_NOSIGNAL)
			       : read(fd, (char *)buf + done, n - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && !wr && (errno == EAGAIN || errno == EWOULDBLOCK))
			return -ETIMEDOUT; /* SO_RCVTIMEO */
		if (r <= 0)
			return -EPROTO;
		done += (size_t)r;
	}
	return 0;
}

/* A connected socket to @store's daemon, or -ENOTCONN if none serves it. */
static int ctl_connect(const char *store)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int dfd, fd, ret;

	dfd = open(store, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", dfd,
		 CTL_SOCK_NAME);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ret = -errno;
		close(dfd);
		return ret;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = (errno == ENOENT || errno == ECONNREFUSED) ? -ENOTCONN
								: -errno;
		close(fd);
		close(dfd);
		return ret;
	}
	close(dfd);
	return fd;
}

bool ctl_serving(const char *store)
{
	int fd = ctl_connect(store);

	if (fd < 0)
		return fd != -ENOTCONN;
	close(fd);
	return true;
}

int ctl_timeout_s(void)
{
	static bool warned;
	const char *v = getenv("BRANCHFS_TIMEOUT");
	char *end;
	long t;

	if (v && *v) {
		errno = 0;
		t = strtol(v, &end, 10);
		if (!*end && !errno && t > 0 && t <= 86400)
			return (int)t;
		if (!warned)
			fprintf(stderr, "branchfs: ignoring BRANCHFS_TIMEOUT=%s "
				"(want 1 to 86400 seconds): waiting 120 s\n", v);
		warned = true;
	}
	return 120;
}

int ctl_call(const char *store, int argc, const char *const *argv, char **reply)
{
	/* gc compacts the whole database: as long as that takes */
	return ctl_call_within(store, argc, argv, reply,
			       argc > 0 && !strcmp(argv[0], "gc") ?
			       0 : ctl_timeout_s());
}

int ctl_call_within(const char *store, int argc, const char *const *argv,
		    char **reply, int secs)
{
	struct timeval tv = { .tv_sec = secs };
	unsigned char hdr[8];
	size_t n = 0, off = 4;
	uint32_t len;
	char *req;
	int fd, ret, status;

	*reply = NULL;
	for (int i = 0; i < argc; i++)
		n += strlen(argv[i]) + 1;
	if (n > CTL_MAX_REQUEST)
		return -E2BIG;
	fd = ctl_connect(store);
	if (fd < 0)
		return fd;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	req = malloc(n + 4);
	if (!req) {
		close(fd);
		return -ENOMEM;
	}
	req[0] = (char)(n >> 24);
	req[1] = (char)(n >> 16);
	req[2] = (char)(n >> 8);
	req[3] = (char)n;
	for (int i = 0; i < argc; i++) {
		size_t l = strlen(argv[i]) + 1;

		memcpy(req + off, argv[i], l);
		off += l;
	}
	ret = io_full(fd, req, n + 4, true);
	free(req);
	if (ret == 0)
		ret = io_full(fd, hdr, 8, false);
	if (ret < 0) {
		close(fd);
		return ret == -ETIMEDOUT ? ret : -EPROTO;
	}
	status = (int)(((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) |
		       ((uint32_t)hdr[2] << 8) | hdr[3]);
	len = ((uint32_t)hdr[4] << 24) | ((uint32_t)hdr[5] << 16) |
	      ((uint32_t)hdr[6] << 8) | hdr[7];
	if (len > CTL_MAX_REPLY) {
		close(fd);
		return -EPROTO;
	}
	*reply = malloc(len + 1);
	if (!*reply) {
		close(fd);
		return -ENOMEM;
	}
	if (len && (ret = io_full(fd, *reply, len, false)) < 0) {
		free(*reply);
		*reply = NULL;
		close(fd);
		return ret == -ETIMEDOUT ? ret : -EPROTO;
	}
	(*reply)[len] = 0;
	close(fd);
	return status;
}

/* Value of "key value" line @key in @text, or NULL. */
const char *ctl_field(const char *text, const char *key, char *buf, size_t size)
{
	size_t kl = strlen(key);

	for (const char *p = text; p && *p;) {
		const char *eol = strchr(p, '\n');
		size_t ll = eol ? (size_t)(eol - p) : strlen(p);

		if (ll > kl && strncmp(p, key, kl) == 0 && p[kl] == ' ') {
			size_t vl = ll - kl - 1;

			if (vl >= size)
				vl = size - 1;
			memcpy(buf, p + kl + 1, vl);
			buf[vl] = 0;
			return buf;
		}
		p = eol ? eol + 1 : NULL;
	}
	return NULL;
}
