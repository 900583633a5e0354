/* SPDX-License-Identifier: MIT */
/*
 * fs/ctl.c - the control socket of a mounted store (wire format in
 * ctl_proto.h).  One thread accepts connections and serves one request
 * each; a peer that is neither root nor the daemon's uid is refused, and a
 * malformed request gets an error reply without disturbing the daemon.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include "ctl_proto.h"
#include "fs_int.h"

struct reply {
	char *buf;
	size_t len, cap;
};

static void rprintf(struct reply *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void rprintf(struct reply *r, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(r->buf ? r->buf + r->len : NULL,
			      r->buf ? r->cap - r->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (r->buf && r->len + (size_t)n < r->cap) {
			r->len += (size_t)n;
			return;
		}
		{
			size_t cap = (r->cap ? r->cap : 256) * 2;
			char *nb;

			while (cap < r->len + (size_t)n + 1)
				cap *= 2;
			if (cap > CTL_MAX_REPLY)
				return;
			nb = realloc(r->buf, cap);
			if (!nb)
				return;
			r->buf = nb;
			r->cap = cap;
		}
	}
}

static int do_stats(struct fs *fs, struct reply *r)
{
	struct snap_stats st;
	int ret = snap_stats(fs->s, &st);

	if (ret < 0)
		return ret;
	rprintf(r, "logical_bytes %llu\n", (unsigned long long)st.logical_bytes);
	rprintf(r, "stored_bytes %llu\n", (unsigned long long)st.stored_bytes);
	rprintf(r, "blocks %llu\n", (unsigned long long)st.blocks);
	rprintf(r, "refs %llu\n", (unsigned long long)st.refs);
	rprintf(r, "gc_pending %llu\n", (unsigned long long)st.gc_pending);
	rprintf(r, "db_bytes %llu\n", (unsigned long long)st.db_bytes);
	rprintf(r, "branches %llu\n", (unsigned long long)st.branches);
	rprintf(r, "snapshots %llu\n", (unsigned long long)st.snapshots);
	rprintf(r, "open_files %zu\n", snap_open_count(fs->s, 0));
	return 0;
}

/* A branch or snapshot name changed meaning: drop the kernel's dentry so
 * the mount shows the change at once. */
static void invalidate(struct fs *fs, char **argv)
{
	fuse_ino_t parent = 1; /* mount root */

	if (!strcmp(argv[0], "snapshot-delete"))
		parent = 2; /* .snapshots */
	else if (strcmp(argv[0], "branch-delete") &&
		 strcmp(argv[0], "branch-reset") &&
		 strcmp(argv[0], "branch-rename"))
		return;
	fuse_lowlevel_notify_inval_entry(fs->se, parent, argv[1],
					 strlen(argv[1]));
	if (!strcmp(argv[0], "branch-rename"))
		fuse_lowlevel_notify_inval_entry(fs->se, 2, argv[1],
						 strlen(argv[1]));
}

/*
 * With the kernel writeback cache, write(2)s that returned may still sit in
 * the page cache.  Before a command takes a snapshot (snapshot create, and
 * branch create, which snapshots its source), push them to the store with
 * syncfs(2) on the mount, best effort: FUSE gives syncfs no way to wait for
 * WRITEs already in flight, so a write that returned just before the
 * command may still miss the snapshot.  The contract in this mode is the
 * crash-consistent one (a power cut at the moment of the snapshot): what
 * was fsynced, and every file closed before (close writes back), is in it.
 * syncfs goes through the FUSE threads, not this one, and no lock is held
 * here.  A failure is logged: the snapshot is still an image that was on
 * the store at one instant.
 */
static void wb_flush(struct fs *fs, const char *cmd)
{
	int fd;

	if (!fs->writeback_on || !fs->mountpoint ||
	    (strcmp(cmd, "snapshot-create") && strcmp(cmd, "branch-create")))
		return;
	fd = open(fs->mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	/* ENOENT: pages of a branch deleted with --force, now unwritable */
	if (fd < 0 || (syncfs(fd) < 0 && errno != ENOENT))
		fs_log("flushing the page cache of %s before %s: %s",
		       fs->mountpoint, cmd, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Run one request; returns the status to send. */
static int dispatch(struct fs *fs, int argc, char **argv, struct reply *r)
{
	if (argc == 1 && strcmp(argv[0], "ping") == 0) {
		rprintf(r, "pid %d\nmnt %s\n", (int)getpid(), fs->mountpoint);
		return 0;
	}
	if (argc == 1 && strcmp(argv[0], "stats") == 0)
		return do_stats(fs, r);
	{
		char *text = NULL;
		int ret;

		if (argc > 0)
			wb_flush(fs, argv[0]);
		ret = snap_command(fs->s, argc, argv, &text);

		if (text)
			rprintf(r, "%s", text);
		free(text);
		if (ret == 0 && argc >= 2 && fs->se)
			invalidate(fs, argv);
		return ret;
	}
}

/* Read exactly @n bytes, giving up @ms after @start (a slow or stuck
 * client must not hold the single control thread). */
static int read_full(int fd, void *buf, size_t n, const struct timespec *start,
		     long ms)
{
	size_t done = 0;

	while (done < n) {
		struct pollfd p = { fd, POLLIN, 0 };
		struct timespec now;
		long left;
		ssize_t r;

		clock_gettime(CLOCK_MONOTONIC, &now);
		left = ms - (long)((now.tv_sec - start->tv_sec) * 1000 +
				     (now.tv_nsec - start->tv_nsec) / 1000000);
		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			return -ETIMEDOUT;
		r = read(fd, (char *)buf + done, n - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -EPROTO;
		done += (size_t)r;
	}
	return 0;
}

static void write_full(int fd, const void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t w = send(fd, (const char *)buf + done, n - done,
				 MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		done += (size_t)w;
	}
}

/*
 * Read the request on connection @c, giving up @ms after @start, into a
 * malloc()ed *@reqp of *@np bytes plus a NUL.  0, or -EPROTO (nothing came:
 * nothing to answer), or an error status whose reason is in @r.
 */
static int read_request(int c, const struct timespec *start, long ms,
			char **reqp, uint32_t *np, struct reply *r)
{
	unsigned char hdr[4];
	uint32_t n;

	if (read_full(c, hdr, 4, start, ms) < 0)
		return -EPROTO;
	n = ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) |
	    ((uint32_t)hdr[2] << 8) | hdr[3];
	if (n == 0 || n > CTL_MAX_REQUEST) {
		rprintf(r, "bad request length %u\n", n);
		return -EINVAL;
	}
	*reqp = malloc(n + 1);
	if (!*reqp)
		return -ENOMEM;
	if (read_full(c, *reqp, n, start, ms) < 0) {
		rprintf(r, "truncated request\n");
		return -EINVAL;
	}
	(*reqp)[n] = 0;
	*np = n;
	return 0;
}

/*
 * Serve the request on connection @c.  @closing: the daemon is stopping -
 * read the request (briefly) but do not run it: answer -ESHUTDOWN, which
 * tells the CLI that nothing was done and that it may run the request
 * itself once the store is free.
 */
static void serve_one(struct fs *fs, int c, bool closing)
{
	long ms = closing ? 200 : 5000; /* to read the request */
	struct reply r = { 0 };
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct timeval tv = { .tv_sec = 5 };
	struct timespec start;
	unsigned char hdr[8];
	char *req = NULL, *argv[CTL_MAX_WORDS];
	uint32_t n = 0;
	int argc = 0, status;

	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
	    (cred.uid != 0 && cred.uid != getuid())) {
		rprintf(&r, "permission denied: not the owner of the store\n");
		status = -EACCES;
		goto reply;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	status = read_request(c, &start, ms, &req, &n, &r);
	if (closing) {
		/* what came was read (so that closing does not reset the
		 * connection under the reply); whatever it is: not run */
		r.len = 0;
		rprintf(&r, "the daemon is unmounting: request not run\n");
		status = -ESHUTDOWN;
		goto reply;
	}
	if (status == -EPROTO)
		goto out; /* nothing to answer */
	if (status < 0)
		goto reply;
	for (size_t i = 0; i < n && argc < CTL_MAX_WORDS;) {
		argv[argc++] = req + i;
		i += strlen(req + i) + 1;
	}
	status = dispatch(fs, argc, argv, &r);
reply:
	hdr[0] = (unsigned char)((uint32_t)status >> 24);
	hdr[1] = (unsigned char)((uint32_t)status >> 16);
	hdr[2] = (unsigned char)((uint32_t)status >> 8);
	hdr[3] = (unsigned char)status;
	hdr[4] = (unsigned char)(r.len >> 24);
	hdr[5] = (unsigned char)(r.len >> 16);
	hdr[6] = (unsigned char)(r.len >> 8);
	hdr[7] = (unsigned char)r.len;
	write_full(c, hdr, 8);
	if (r.len)
		write_full(c, r.buf, r.len);
out:
	free(req);
	free(r.buf);
}

static void *ctl_main(void *arg)
{
	struct fs *fs = arg;

	for (;;) {
		struct pollfd p[2] = { { fs->ctl_fd, POLLIN, 0 },
				       { fs->ctl_wake[0], POLLIN, 0 } };
		int c;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		c = accept4(fs->ctl_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		serve_one(fs, c, false);
		close(c);
	}
	return NULL;
}

int ctl_start(struct fs *fs, const char *store)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int dfd, ret;
	mode_t old;

	fs->ctl_fd = -1;
	fs->ctl_dfd = -1;
	fs->ctl_wake[0] = fs->ctl_wake[1] = -1;
	dfd = open(store, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	/* Paths of any length: bind through /proc/self/fd. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", dfd,
		 CTL_SOCK_NAME);
	unlinkat(dfd, CTL_SOCK_NAME, 0); /* stale: we hold the store lock */
	fs->ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fs->ctl_fd < 0) {
		ret = -errno;
		goto out_close;
	}
	old = umask(0177);
	ret = bind(fs->ctl_fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (ret < 0 || fchmodat(dfd, CTL_SOCK_NAME, 0600, 0) < 0 ||
	    fstatat(dfd, CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    listen(fs->ctl_fd, 16) < 0) {
		ret = -errno;
		fs_log("control socket: %s", strerror(errno));
		goto out_close;
	}
	if (pipe2(fs->ctl_wake, O_CLOEXEC) < 0) {
		ret = -errno;
		goto out_close;
	}
	ret = pthread_create(&fs->ctl_thread, NULL, ctl_main, fs);
	if (ret) {
		ret = -ret;
		goto out_close;
	}
	fs->ctl_running = true;
	fs->ctl_dfd = dfd;
	fs->ctl_dev = st.st_dev;
	fs->ctl_ino = st.st_ino;
	return 0;
out_close:
	if (fs->ctl_fd >= 0)
		close(fs->ctl_fd);
	fs->ctl_fd = -1;
	unlinkat(dfd, CTL_SOCK_NAME, 0);
	close(dfd);
	return ret;
}

/*
 * Stop serving: first remove the socket (if it is still ours), so that a
 * new client finds no daemon and opens the store itself once it is free
 * (the CLI waits for that); let the control thread finish the request it
 * is running; then answer every connection still queued with -ESHUTDOWN
 * rather than closing it unanswered ("no valid answer ... may or may not
 * have taken effect"), until none has come for 50 ms.
 */
void ctl_stop(struct fs *fs)
{
	if (fs->ctl_dfd >= 0) {
		struct stat st;

		if (fstatat(fs->ctl_dfd, CTL_SOCK_NAME, &st,
			    AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_dev == fs->ctl_dev && st.st_ino == fs->ctl_ino)
			unlinkat(fs->ctl_dfd, CTL_SOCK_NAME, 0);
		close(fs->ctl_dfd);
		fs->ctl_dfd = -1;
	}
	if (fs->ctl_running) {
		if (write(fs->ctl_wake[1], "x", 1) < 0)
			fs_log("control socket: wake-up failed");
		pthread_join(fs->ctl_thread, NULL);
		fs->ctl_running = false;
	}
	if (fs->ctl_fd >= 0) {
		struct pollfd p = { fs->ctl_fd, POLLIN, 0 };

		while (poll(&p, 1, 50) > 0) {
			int c = accept4(fs->ctl_fd, NULL, NULL, SOCK_CLOEXEC);

			if (c < 0)
				break;
			serve_one(fs, c, true);
			close(c);
		}
		close(fs->ctl_fd);
	}
	fs->ctl_fd = -1;
	for (int i = 0; i < 2; i++)
		if (fs->ctl_wake[i] >= 0)
			close(fs->ctl_wake[i]);
}
