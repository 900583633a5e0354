/* SPDX-License-Identifier: MIT */
/*
 * tools/main.c - the branchfs command line: a table of subcommands.
 *
 * Exit codes: 0 success, 1 the command failed (message on stderr),
 * 2 usage error.  Only `mount` reaches into fs/; everything else works
 * through snap/ (store not mounted) or the control socket (mounted).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs.h"
#include "kv/format.h"
#include "snap/check.h"
#include "snap/snap.h"
#include "tools.h"

struct cli_cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *usage;
	const char *help;
};

static const struct cli_cmd *find_cmd(const char *name);

void die_msg(const char *fmt, ...)
{
	va_list ap;

	fputs("branchfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int usage_err(const char *cmd)
{
	const struct cli_cmd *c = find_cmd(cmd);

	fprintf(stderr, "usage: branchfs %s\n", c ? c->usage : cmd);
	return 2;
}

static bool want_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return true;
	return false;
}

static int print_help(const char *cmd)
{
	const struct cli_cmd *c = find_cmd(cmd);

	printf("usage: branchfs %s\n\n%s\n", c->usage, c->help);
	return 0;
}

/* Why @store is not a store, in @msg; false if it looks like one. */
static bool not_a_store(const char *store, char *msg, size_t size)
{
	char p[PATH_MAX];
	struct stat st;

	if (stat(store, &st) < 0) {
		snprintf(msg, size, "store %s: %s", store, strerror(errno));
		return true;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(msg, size, "%s is not a branchfs store (not a "
			 "directory)", store);
		return true;
	}
	snprintf(p, sizeof(p), "%s/db", store);
	if (stat(p, &st) < 0 && errno != ENOENT && errno != ENOTDIR) {
		snprintf(msg, size, "store %s: %s", store, strerror(errno));
		return true;
	}
	if (stat(p, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(msg, size, "%s is not a branchfs store (no db/; create "
			 "one with 'branchfs init')", store);
		return true;
	}
	snprintf(p, sizeof(p), "%s/lock", store);
	if (stat(p, &st) < 0) {
		snprintf(msg, size, "%s is not a branchfs store (no lock file)",
			 store);
		return true;
	}
	return false;
}

/* Is @store a branchfs store?  Prints the reason when not. */
static bool check_store(const char *store)
{
	char msg[PATH_MAX + 128];

	if (!not_a_store(store, msg, sizeof(msg)))
		return true;
	die_msg("%s", msg);
	return false;
}

/* How long an offline command waits for another one to release the store. */
#define STORE_WAIT_MS 10000

static const char *open_error(int err)
{
	switch (err) {
	case -EBUSY:
		return "store is in use (mounted, or another branchfs command "
		       "is running)";
	case -EPROTONOSUPPORT:
		return "store format not supported by this version of branchfs";
	case -EINVAL:
		return "not a branchfs store, or it is damaged";
	case -ENOSPC:
		return "its disk is too full to open it for writing: free "
		       "some space";
	default:
		return strerror(-err);
	}
}

static bool word_in(const char *w, const char *const *set, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(w, set[i]))
			return true;
	return false;
}

/*
 * How to open @store for request @words offline: for writing, unless the
 * request only reads and the disk has not the room opening for writing
 * needs (snap_open_room): then read-only under a shared lock, which
 * writes nothing.  Only the requests that give space back may spend the
 * disk-full reserve to open the store.
 */
static unsigned open_flags(const char *store, int n, const char **words)
{
	static const char *const reads[] = { "branch-list", "snapshot-list",
					     "du", "stats" };
	static const char *const frees[] = { "branch-delete",
					     "snapshot-delete", "gc" };
	uint64_t need, avail;

	if (n < 1)
		return 0;
	if (word_in(words[0], frees, sizeof(frees) / sizeof(frees[0])))
		return SNAP_OPEN_USE_RESERVE;
	if (word_in(words[0], reads, sizeof(reads) / sizeof(reads[0])) &&
	    snap_open_room(store, &need, &avail) == 0 && avail < need)
		return SNAP_OPEN_READONLY | SNAP_OPEN_LOCK_SHARED;
	return 0;
}

/*
 * Send request @words to the daemon of @store (*local false, its status
 * returned, *reply its answer).  When the store is not mounted, open it
 * here instead (*local true; 0 with the store in *s, for the caller to
 * close, or the error, already printed).  Another offline command (or a
 * mount coming up or going down) holds the store for a moment: wait for
 * it, up to STORE_WAIT_MS, so that scripts may run commands in parallel.
 */
static int call_or_open(const char *store, int n, const char **words,
			char **reply, struct snap **s, bool *local)
{
	int ret;

	*s = NULL;
	for (int waited = 0;; waited += 50) {
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 50 * 1000 * 1000 };

		*local = false;
		ret = ctl_call(store, n, words, reply);
		if (ret == -ESHUTDOWN && waited < STORE_WAIT_MS) {
			/* unmounting: it did not run the request */
			free(*reply);
			*reply = NULL;
			nanosleep(&ts, NULL);
			continue;
		}
		if (ret != -ENOTCONN)
			return ret;
		free(*reply);
		*reply = NULL;
		*local = true;
		ret = snap_open(store, open_flags(store, n, words), s);
		if (ret != -EBUSY || waited >= STORE_WAIT_MS)
			break;
		nanosleep(&ts, NULL);
	}
	if (ret == -EBUSY)
		die_msg("cannot open store %s: %s (waited %d s)", store,
			open_error(ret), STORE_WAIT_MS / 1000);
	else if (ret < 0)
		die_msg("cannot open store %s: %s", store, open_error(ret));
	if (ret < 0)
		*s = NULL;
	return ret;
}

/* ---- init ----------------------------------------------------------------- */

static int cmd_init(int argc, char **argv)
{
	int ret;

	if (argc != 2)
		return usage_err("init");
	if (!argv[1][0]) {
		die_msg("init: the store path is empty");
		return usage_err("init");
	}
	ret = snap_store_init(argv[1], getuid(), getgid());
	if (ret == -ENOTEMPTY) {
		die_msg("%s exists and is not empty: refusing to create a "
			"store there (nothing was changed)", argv[1]);
		return 1;
	}
	if (ret == -ENOTDIR) {
		die_msg("%s exists and is not a directory", argv[1]);
		return 1;
	}
	if (ret < 0) {
		die_msg("cannot create store %s: %s", argv[1], strerror(-ret));
		return 1;
	}
	printf("created store %s (format %u, branch main)\n", argv[1],
	       BFS_FORMAT_VERSION);
	return 0;
}

/* $BRANCHFS_STORE, if set to something (empty counts as unset) */
static const char *env_store(void)
{
	const char *v = getenv("BRANCHFS_STORE");

	return v && *v ? v : NULL;
}

/* ---- mount ---------------------------------------------------------------- */

static int find_mount(const char *mnt, char *store, size_t size,
		      long *owner);
static int find_mount_above(const char *path, char *mp, size_t size);

/*
 * Open @store (mount, check).  An offline command that holds it for a
 * moment is waited for, up to STORE_WAIT_MS, as the CLI commands wait for
 * each other; a store that a daemon serves is refused at once (-EBUSY).
 */
static int open_unless_served(const char *store, unsigned flags,
			      struct snap **s)
{
	for (int waited = 0;; waited += 50) {
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 50 * 1000 * 1000 };
		int ret = snap_open(store, flags, s);

		if (ret != -EBUSY || waited >= STORE_WAIT_MS ||
		    ctl_serving(store))
			return ret;
		nanosleep(&ts, NULL);
	}
}

static int cmd_mount(int argc, char **argv)
{
	struct fs_opts o = { .ready_fd = -1 };
	char store[PATH_MAX], mnt[PATH_MAX];
	const char *opts = NULL;
	const char *args[2];
	int nargs = 0, pfd[2], ret;
	struct stat st;
	pid_t pid;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--foreground") || !strcmp(argv[i], "-f")) {
			o.foreground = true;
		} else if (!strcmp(argv[i], "--writeback")) {
			o.writeback = true;
		} else if (!strcmp(argv[i], "--debug")) {
			o.debug = o.foreground = true;
		} else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
			opts = argv[++i];
		} else if (!strncmp(argv[i], "-o", 2) && argv[i][2]) {
			opts = argv[i] + 2;
		} else if (!strcmp(argv[i], "-o")) {
			die_msg("mount: -o needs a value (e.g. -o ro)");
			return usage_err("mount");
		} else if (argv[i][0] == '-') {
			die_msg("mount: unknown option %s", argv[i]);
			return usage_err("mount");
		} else if (nargs < 2) {
			args[nargs++] = argv[i];
		} else {
			return usage_err("mount");
		}
	}
	if (nargs != 2)
		return usage_err("mount");
	if (!check_store(args[0]))
		return 1;
	if (stat(args[1], &st) < 0) {
		if (errno == ENOTCONN)
			die_msg("mountpoint %s is a stale mount (its daemon died); "
				"clean it up with 'branchfs umount %s'",
				args[1], args[1]);
		else
			die_msg("mountpoint %s: %s", args[1], strerror(errno));
		return 1;
	}
	if (!S_ISDIR(st.st_mode)) {
		die_msg("mountpoint %s is not a directory", args[1]);
		return 1;
	}
	if (!realpath(args[0], store) || !realpath(args[1], mnt)) {
		die_msg("cannot resolve paths: %s", strerror(errno));
		return 1;
	}
	{
		char other[PATH_MAX];

		if (find_mount(mnt, other, sizeof(other), NULL) > 0) {
			die_msg("%s is already a branchfs mount (of %s)", mnt,
				other);
			return 1;
		}
		/* on top of a branch, it would hide it from everyone */
		if (find_mount_above(mnt, other, sizeof(other)) > 0) {
			die_msg("cannot mount on %s: it is inside the branchfs "
				"mount %s (use a directory outside it)", mnt,
				other);
			return 1;
		}
	}
	/* A mount over the store would hide its files from the daemon itself
	 * (the next new RocksDB file would resolve into the mount: every
	 * write EIO), and one inside it would shadow part of it. */
	if (fs_path_within(store, mnt) || fs_path_within(mnt, store)) {
		die_msg("cannot mount store %s on %s: the mountpoint must be "
			"outside the store and not contain it", store, mnt);
		return 1;
	}
	o.store = store;
	o.mountpoint = mnt;
	o.options = opts;

	if (o.foreground) {
		struct snap *s;

		ret = open_unless_served(store, 0, &s);
		if (ret < 0) {
			die_msg("cannot open store %s: %s", store, open_error(ret));
			return 1;
		}
		ret = fs_serve(s, &o);
		snap_close(s);
		if (ret == -ENOPROTOOPT) {
			die_msg("mount failed: FUSE refused the mount options '%s'",
				opts ? opts : "");
			return 1;
		}
		if (ret < 0) {
			die_msg("mount failed: %s", strerror(-ret));
			return 1;
		}
		return 0;
	}

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		die_msg("pipe: %s", strerror(errno));
		return 1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		die_msg("fork: %s", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		char logp[PATH_MAX];
		struct snap *s;
		int fd;

		close(pfd[0]);
		setsid();
		snprintf(logp, sizeof(logp), "%s/branchfs.log", store);
		fd = open("/dev/null", O_RDONLY);
		if (fd >= 0) {
			dup2(fd, STDIN_FILENO);
			close(fd);
		}
		fd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		ret = open_unless_served(store, 0, &s);
		if (ret < 0) {
			unsigned char c = (unsigned char)-ret;

			if (write(pfd[1], &c, 1) < 0)
				_exit(1);
			_exit(1);
		}
		/* Only the lock holder may write the log. */
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		if (chdir("/") < 0)
			_exit(1);
		fprintf(stderr, "branchfs: daemon %d serving %s at %s\n",
			(int)getpid(), store, mnt);
		o.ready_fd = pfd[1];
		ret = fs_serve(s, &o);
		snap_close(s);
		fprintf(stderr, "branchfs: daemon %d exiting (%s)\n", (int)getpid(),
			ret < 0 ? strerror(-ret) : "unmounted");
		_exit(ret < 0 ? 1 : 0);
	}
	close(pfd[1]);
	{
		unsigned char c;
		ssize_t r;

		do {
			r = read(pfd[0], &c, 1);
		} while (r < 0 && errno == EINTR);
		close(pfd[0]);
		if (r == 1 && c == 0)
			return 0;
		if (r != 1) {
			int status;

			waitpid(pid, &status, 0);
			die_msg("mount daemon died before the mount was live; "
				"see %s/branchfs.log", store);
			return 1;
		}
		waitpid(pid, NULL, 0);
		if (c == EBUSY)
			die_msg("store %s is in use (already mounted?): refusing "
				"a second mount", store);
		else if (c == EIO)
			die_msg("cannot mount %s on %s (see %s/branchfs.log)",
				store, mnt, store);
		else if (c == ENOPROTOOPT)
			die_msg("cannot mount %s: FUSE refused the mount options "
				"'%s' (see %s/branchfs.log)", store,
				opts ? opts : "", store);
		else
			die_msg("cannot mount %s: %s", store,
				open_error(-(int)c));
		return 1;
	}
}

/* ---- umount --------------------------------------------------------------- */

static int find_mount(const char *mnt, char *store, size_t size, long *owner)
{
	struct fs_mount_info mi;
	int ret = fs_mount_find(mnt, false, &mi);

	if (ret > 0) {
		if (store)
			snprintf(store, size, "%s", mi.store);
		if (owner)
			*owner = mi.owner;
	}
	return ret;
}

/* A branchfs mount whose tree holds @path: its mountpoint in @mp. */
static int find_mount_above(const char *path, char *mp, size_t size)
{
	struct fs_mount_info mi;
	int ret = fs_mount_find(path, true, &mi);

	if (ret > 0)
		snprintf(mp, size, "%s", mi.mp);
	return ret;
}

/* Absolute, normalised form of @path without following the last part
 * (a stale mount cannot be stat()ed). */
static int abs_path(const char *path, char *out, size_t size)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	char *slash;

	snprintf(tmp, sizeof(tmp), "%s", path);
	while (strlen(tmp) > 1 && tmp[strlen(tmp) - 1] == '/')
		tmp[strlen(tmp) - 1] = 0;
	slash = strrchr(tmp, '/');
	if (!slash) {
		if (!realpath(".", dir))
			return -errno;
		snprintf(out, size, "%s/%s", strcmp(dir, "/") ? dir : "", tmp);
		return 0;
	}
	if (slash == tmp) {
		snprintf(out, size, "%s", tmp);
		return 0;
	}
	*slash = 0;
	if (!realpath(tmp, dir))
		return -errno;
	snprintf(out, size, "%s/%s", strcmp(dir, "/") ? dir : "", slash + 1);
	return 0;
}

/* Wait until nobody holds the store lock (the daemon has exited). */
static int wait_unlocked(const char *store, int secs)
{
	char lp[PATH_MAX];
	int fd;

	snprintf(lp, sizeof(lp), "%s/lock", store);
	fd = open(lp, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	for (int i = 0; i < secs * 50; i++) {
		if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
			close(fd);
			return 0;
		}
		usleep(20000);
	}
	close(fd);
	return -ETIMEDOUT;
}

/*
 * Whether the store at @store (the mount's source in mountinfo) may be the
 * one mounted on @mnt: false only when a daemon there answers that it
 * serves another mountpoint - the store was renamed while mounted and a
 * new store now at its old path is mounted elsewhere.  Its lock says
 * nothing about @mnt's daemon then.
 */
static bool store_of_mount(const char *store, const char *mnt)
{
	const char *req[] = { "ping" };
	char *reply = NULL, m[PATH_MAX];
	bool ours = true;

	if (ctl_call_within(store, 1, req, &reply, 2) == 0 && reply &&
	    ctl_field(reply, "mnt", m, sizeof(m)) && strcmp(m, mnt))
		ours = false;
	free(reply);
	return ours;
}

/* Whether /proc/PID/@what (a link: cwd, root, fd/N) points under @mnt. */
static bool proc_link_within(const char *pid, const char *what,
			     const char *mnt)
{
	char p[64 + NAME_MAX], t[PATH_MAX];
	ssize_t n;

	snprintf(p, sizeof(p), "/proc/%s/%s", pid, what);
	n = readlink(p, t, sizeof(t) - 1);
	if (n <= 0)
		return false;
	t[n] = '\0';
	return fs_path_within(t, mnt);
}

/*
 * The processes with a working directory, root or open file under @mnt:
 * "PID (NAME), ..." (at most 5 named) in @buf; returns how many.
 */
static int mount_users(const char *mnt, char *buf, size_t size)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	size_t len = 0;
	int n = 0;

	buf[0] = '\0';
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		char fdp[64 + NAME_MAX], comm[64] = "?";
		bool uses = false;
		DIR *fds;
		FILE *f;

		if (de->d_name[0] < '1' || de->d_name[0] > '9' ||
		    atoi(de->d_name) == getpid())
			continue;
		uses = proc_link_within(de->d_name, "cwd", mnt) ||
		       proc_link_within(de->d_name, "root", mnt);
		snprintf(fdp, sizeof(fdp), "/proc/%s/fd", de->d_name);
		fds = uses ? NULL : opendir(fdp);
		for (struct dirent *fe; fds && !uses && (fe = readdir(fds));) {
			char w[16 + NAME_MAX];

			snprintf(w, sizeof(w), "fd/%s", fe->d_name);
			uses = fe->d_name[0] != '.' &&
			       proc_link_within(de->d_name, w, mnt);
		}
		if (fds)
			closedir(fds);
		if (!uses)
			continue;
		snprintf(fdp, sizeof(fdp), "/proc/%s/comm", de->d_name);
		if ((f = fopen(fdp, "re"))) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = '\0';
			fclose(f);
		}
		if (n < 5 && len < size)
			len += (size_t)snprintf(buf + len, size - len, "%s%s (%s)",
						n ? ", " : "", de->d_name, comm);
		n++;
	}
	closedir(d);
	if (n > 5 && len < size)
		snprintf(buf + len, size - len, " and %d more", n - 5);
	return n;
}

/*
 * Whether the daemon of FUSE mount @mnt is gone: statfs always asks the
 * daemon (stat may be answered from the kernel's cache), and a dead one's
 * connection answers ENOTCONN at once.  Asked from a child, given 2 s: a
 * stopped or hung daemon would block the caller for ever (it counts as
 * alive).
 */
static bool mount_dead(const char *mnt)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return false;
	if (pid == 0) {
		struct statfs sf;

		_exit(statfs(mnt, &sf) < 0 && errno == ENOTCONN ? 1 : 0);
	}
	for (int i = 0; i < 200; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return WIFEXITED(status) && WEXITSTATUS(status) == 1;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return false;
}

/* Before a stale mount is detached: name the processes still in it. */
static void warn_stale_users(const char *mnt)
{
	char users[512];

	/* they keep the dead mount, detached, for as long as they run: a
	 * postgres there can neither stop cleanly nor let a new one start on
	 * the remounted data directory */
	if (mount_users(mnt, users, sizeof(users)) > 0)
		fprintf(stderr, "branchfs: warning: still in use by %s: they "
			"keep the dead mount; stop them (a postgres there: kill "
			"it, its data directory recovers on the next start)\n",
			users);
}

static int cmd_umount(int argc, char **argv)
{
	char mnt[PATH_MAX], store[PATH_MAX] = "";
	long owner = -1;
	struct stat st;
	bool stale;
	int ret;

	if (argc != 2)
		return usage_err("umount");
	if (abs_path(argv[1], mnt, sizeof(mnt)) < 0) {
		die_msg("%s: %s", argv[1], strerror(errno));
		return 1;
	}
	ret = find_mount(mnt, store, sizeof(store), &owner);
	/* a path through a symlink: resolving it is fine for a live mount (a
	 * stale one is found by its literal path above) */
	if (ret <= 0 && realpath(argv[1], mnt))
		ret = find_mount(mnt, store, sizeof(store), &owner);
	if (ret <= 0) {
		die_msg("%s is not a branchfs mount", argv[1]);
		return 1;
	}
	stale = stat(mnt, &st) < 0 && errno == ENOTCONN;
	if (stale)
		warn_stale_users(mnt);
	if (store[0] && !stale && !store_of_mount(store, mnt))
		store[0] = 0; /* cannot wait for the daemon to let go */
	if (getuid() == 0) {
		/* The daemon itself opens the mount for a moment (the syncfs
		 * before a snapshot on a --writeback mount): EBUSY for 2 s
		 * before calling the mount busy. */
		int err;

		for (int i = 0;; i++) {
			ret = umount2(mnt, stale ? MNT_DETACH : 0);
			if (ret == 0 || errno != EBUSY || stale || i == 20)
				break;
			usleep(100000);
		}
		err = ret < 0 ? errno : 0;
		/* Busy, and its daemon dead: the kernel still had the
		 * root's attributes cached (stat did not say ENOTCONN) and
		 * processes are inside the mount. */
		if (err == EBUSY && !stale && mount_dead(mnt)) {
			stale = true;
			warn_stale_users(mnt);
			ret = umount2(mnt, MNT_DETACH);
			err = ret < 0 ? errno : 0;
		}
		if (err == EBUSY && !stale) {
			char users[512];

			if (mount_users(mnt, users, sizeof(users)) > 0)
				die_msg("%s is busy: in use by %s; stop them (e.g. "
					"a running postgres) and try again", mnt,
					users);
			else
				die_msg("%s is busy: close the files and "
					"processes using it (e.g. a running "
					"postgres) and try again", mnt);
			return 1;
		}
		if (ret < 0) {
			die_msg("umount %s: %s", mnt, strerror(err));
			return 1;
		}
	} else {
		pid_t pid;
		int status;

		if (owner >= 0 && owner != (long)getuid()) {
			die_msg("%s was mounted by uid %ld: only that user or "
				"root can unmount it", mnt, owner);
			return 1;
		}
		/* as for root: a mount the daemon itself holds for a
		 * moment gets 2 s of retries (only the last one talks) */
		for (int i = 0;; i++) {
			pid = fork();
			if (pid == 0) {
				int null = open("/dev/null", O_WRONLY);

				if (i < 20 && null >= 0)
					dup2(null, STDERR_FILENO);
				execlp("fusermount3", "fusermount3", "-u",
				       stale ? "-z" : "-u", mnt, (char *)NULL);
				_exit(127);
			}
			if (pid < 0 || waitpid(pid, &status, 0) < 0)
				status = -1;
			ret = WIFEXITED(status) && WEXITSTATUS(status) == 0;
			if (ret || stale || i == 20 ||
			    (WIFEXITED(status) && WEXITSTATUS(status) == 127))
				break;
			usleep(100000);
		}
		if (!ret) {
			char users[512];

			if (mount_users(mnt, users, sizeof(users)) > 0)
				die_msg("fusermount3 -u %s failed: in use by %s",
					mnt, users);
			else
				die_msg("fusermount3 -u %s failed", mnt);
			return 1;
		}
	}
	if (store[0] && wait_unlocked(store, 60) < 0) {
		die_msg("unmounted %s, but its daemon still holds %s", mnt, store);
		return 1;
	}
	if (stale)
		fprintf(stderr, "branchfs: cleaned up stale mount %s\n", mnt);
	return 0;
}

/* ---- stats ---------------------------------------------------------------- */

static int cmd_stats(int argc, char **argv)
{
	unsigned long long lb = 0, sb = 0, bl = 0, db = 0, gp = 0, br = 0, sn = 0;
	const char *store = NULL;
	bool json = false, mounted = false;
	char *reply = NULL, v[64];
	struct snap *s;
	double ratio;
	bool local;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "-s") || !strcmp(argv[i], "--store")) {
			if (i + 1 >= argc || store)
				return usage_err("stats");
			store = argv[++i];
		} else if (argv[i][0] == '-') {
			die_msg("stats: unknown option %s", argv[i]);
			return usage_err("stats");
		} else if (store)
			return usage_err("stats");
		else
			store = argv[i];
	}
	if (!store)
		store = env_store();
	if (!store)
		return usage_err("stats");
	if (!check_store(store))
		return 1;
	{
		const char *req[] = { "stats" };

		ret = call_or_open(store, 1, req, &reply, &s, &local);
	}
	if (local && ret < 0)
		return 1;
	if (!local && ret == 0) {
		mounted = true;
		lb = strtoull(ctl_field(reply, "logical_bytes", v, sizeof(v)) ?: "0", NULL, 10);
		sb = strtoull(ctl_field(reply, "stored_bytes", v, sizeof(v)) ?: "0", NULL, 10);
		bl = strtoull(ctl_field(reply, "blocks", v, sizeof(v)) ?: "0", NULL, 10);
		db = strtoull(ctl_field(reply, "db_bytes", v, sizeof(v)) ?: "0", NULL, 10);
		gp = strtoull(ctl_field(reply, "gc_pending", v, sizeof(v)) ?: "0", NULL, 10);
		br = strtoull(ctl_field(reply, "branches", v, sizeof(v)) ?: "0", NULL, 10);
		sn = strtoull(ctl_field(reply, "snapshots", v, sizeof(v)) ?: "0", NULL, 10);
		free(reply);
	} else if (local) {
		struct snap_stats st;

		ret = snap_stats(s, &st);
		snap_close(s);
		if (ret < 0) {
			die_msg("stats: %s", strerror(-ret));
			return 1;
		}
		lb = st.logical_bytes;
		sb = st.stored_bytes;
		bl = st.blocks;
		db = st.db_bytes;
		gp = st.gc_pending;
		br = st.branches;
		sn = st.snapshots;
	} else {
		die_msg("stats: %s%s%s", reply && *reply ? reply : "",
			reply && *reply ? "" : "daemon error: ",
			reply && *reply ? "" : strerror(-ret));
		free(reply);
		return 1;
	}
	ratio = sb ? (double)lb / (double)sb : 0.0;
	if (json) {
		printf("{\"store\": \"%s\", \"mounted\": %s, \"logical_bytes\": %llu, "
		       "\"stored_bytes\": %llu, \"blocks\": %llu, "
		       "\"compression_ratio\": %.3f, \"db_bytes\": %llu, "
		       "\"gc_pending\": %llu, \"branches\": %llu, "
		       "\"snapshots\": %llu}\n",
		       store, mounted ? "true" : "false", lb, sb, bl, ratio, db, gp,
		       br, sn);
	} else {
		printf("store:             %s (%s)\n", store,
		       mounted ? "mounted" : "not mounted");
		printf("logical bytes:     %llu\n", lb);
		printf("stored bytes:      %llu\n", sb);
		printf("blocks:            %llu\n", bl);
		printf("compression ratio: %.2fx\n", ratio);
		printf("database on disk:  %llu bytes\n", db);
		printf("blocks to free:    %llu\n", gp);
		printf("branches:          %llu\n", br);
		printf("snapshots:         %llu\n", sn);
	}
	return 0;
}


/* ---- branch and snapshot commands ---------------------------------------- */

struct bargs {
	const char *store, *from, *to, *checkpoint;
	bool json, force;
	const char *pos[4];
	int npos;
};

/* Options a subcommand takes besides -s STORE. */
enum {
	OPT_JSON = 1 << 0,
	OPT_FORCE = 1 << 1,
	OPT_FROM = 1 << 2,
	OPT_TO = 1 << 3,
	OPT_CHECKPOINT = 1 << 4,
};

/*
 * Parse the options of a branch/snapshot/du/gc command @what (e.g. "branch
 * create"), accepting those in @allow only: an option that belongs to
 * another subcommand is an error, never silently ignored (branch create
 * --to SNAP would otherwise branch from main).  -1 on a usage error.
 */
static int parse_bargs(int argc, char **argv, unsigned allow, const char *what,
		       struct bargs *a)
{
	static const struct {
		const char *name;
		unsigned bit;
	} opts[] = {
		{ "--json", OPT_JSON }, { "--force", OPT_FORCE },
		{ "--from", OPT_FROM }, { "--to", OPT_TO },
		{ "--checkpoint", OPT_CHECKPOINT },
	};

	memset(a, 0, sizeof(*a));
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		const char **dst = NULL;
		unsigned bit = 0;

		for (size_t k = 0; k < sizeof(opts) / sizeof(opts[0]); k++)
			if (!strcmp(o, opts[k].name))
				bit = opts[k].bit;
		if (bit && !(allow & bit)) {
			die_msg("'%s' does not take %s", what, o);
			return -1;
		}
		if (bit == OPT_JSON)
			a->json = true;
		else if (bit == OPT_FORCE)
			a->force = true;
		else if (bit == OPT_FROM)
			dst = &a->from;
		else if (bit == OPT_TO)
			dst = &a->to;
		else if (bit == OPT_CHECKPOINT)
			dst = &a->checkpoint;
		else if (!strcmp(o, "-s") || !strcmp(o, "--store"))
			dst = &a->store;
		else if (o[0] == '-' && o[1]) {
			die_msg("unknown option %s", o);
			return -1;
		} else if (a->npos < 4)
			a->pos[a->npos++] = o;
		else
			return -1;
		if (dst) {
			if (i + 1 >= argc) {
				die_msg("option %s needs a value", o);
				return -1;
			}
			*dst = argv[++i];
		}
	}
	if (!a->store)
		a->store = env_store();
	if (!a->store) {
		die_msg("no store given: use -s STORE or set BRANCHFS_STORE");
		return -1;
	}
	return 0;
}

static unsigned sub_opts(const char *cmd, const char *sub);

/* Whether @sub is a subcommand of @cmd; if not, say why (the usage
 * follows). */
static bool known_sub(const char *cmd, const char *sub)
{
	if (sub_opts(cmd, sub) != ~0u)
		return true;
	if (!*sub)
		die_msg("%s: a subcommand is missing", cmd);
	else if (sub[0] == '-')
		die_msg("%s: the subcommand comes first (branchfs %s "
			"SUBCOMMAND ... %s)", cmd, cmd, sub);
	else
		die_msg("%s: unknown subcommand '%s'", cmd, sub);
	return false;
}

/* The options of "@cmd @sub"; ~0u for an unknown @sub (known_sub). */
static unsigned sub_opts(const char *cmd, const char *sub)
{
	static const struct {
		const char *cmd, *sub;
		unsigned allow;
	} t[] = {
		{ "snapshot", "create", OPT_JSON | OPT_CHECKPOINT },
		{ "snapshot", "list", OPT_JSON },
		{ "snapshot", "delete", OPT_JSON | OPT_FORCE },
		{ "branch", "create", OPT_JSON | OPT_FROM | OPT_CHECKPOINT },
		{ "branch", "list", OPT_JSON },
		{ "branch", "delete", OPT_JSON | OPT_FORCE },
		{ "branch", "reset", OPT_JSON | OPT_TO | OPT_FORCE },
		{ "branch", "rename", OPT_JSON | OPT_FORCE },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (!strcmp(t[i].cmd, cmd) && !strcmp(t[i].sub, sub))
			return t[i].allow;
	return ~0u;
}

/* Print the error of a failed request (its reply, else @ret); @ret. */
static int request_failed(int ret, const char *reply)
{
	if (ret < 0) {
		const char *msg = reply && *reply ? reply : strerror(-ret);
		size_t l = strlen(msg);

		fprintf(stderr, "branchfs: %.*s\n",
			(int)(l && msg[l - 1] == '\n' ? l - 1 : l), msg);
	}
	return ret;
}

/*
 * Run request @words on @store: through the daemon when it is mounted,
 * else by opening the store here.  Prints the error text on failure.
 */
static int request(const char *store, int n, const char **words, char **reply)
{
	struct snap *s;
	bool local;
	int ret;

	if (!check_store(store))
		return -ENOENT;
	ret = call_or_open(store, n, words, reply, &s, &local);
	if (local) {
		if (ret < 0)
			return ret;
		ret = snap_command(s, n, (char **)words, reply);
		snap_close(s);
		return request_failed(ret, *reply);
	}
	if (ret == -EACCES && (!*reply || !**reply)) {
		die_msg("the daemon of %s refused the request", store);
		return ret;
	} else if (ret == -EPROTO) {
		/* it closed the connection (unmounting, or it died) or sent
		 * garbage: whether the request ran is unknown */
		die_msg("no valid answer from the daemon of %s: the request "
			"may or may not have taken effect (look with a listing)",
			store);
		return ret;
	} else if (ret == -ETIMEDOUT && (!*reply || !**reply)) {
		die_msg("the daemon of %s did not answer within %d s (stopped, "
			"or busy with a long gc?): the request may still take "
			"effect (look with a listing)",
			store, ctl_timeout_s());
		return ret;
	}
	return request_failed(ret, *reply);
}

static void json_str(const char *v)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

static bool all_digits(const char *v)
{
	if (!*v)
		return false;
	for (; *v; v++)
		if (*v < '0' || *v > '9')
			return false;
	return true;
}

/* Keys whose values are branch or snapshot names. */
static bool names_record(const char *key)
{
	return !strcmp(key, "name") || !strcmp(key, "branch") ||
	       !strcmp(key, "parent") || !strcmp(key, "snapshot") ||
	       !strcmp(key, "reset_to");
}

/* Characters in UTF-8 @v (table columns are padded by characters). */
static int u8len(const char *v)
{
	int n = 0;

	for (; *v; v++)
		n += ((unsigned char)*v & 0xc0) != 0x80;
	return n;
}

static void pad(const char *v, int width)
{
	fputs(v, stdout);
	printf("%*s", width > u8len(v) ? width - u8len(v) : 0, "");
}

struct rec {
	int n;
	char *k[12], *v[12];
};

/* Does @r have the keys of @h, in order? */
static bool same_keys(const struct rec *r, const struct rec *h)
{
	if (r->n != h->n)
		return false;
	for (int c = 0; c < r->n; c++)
		if (strcmp(r->k[c], h->k[c]))
			return false;
	return true;
}

/*
 * Print tab-separated key=value records as a JSON array of objects, or as
 * a table whose columns are the keys of the first record; a record with
 * other keys (du's store total) follows the table as "VALUE: key=value...".
 * -ENOMEM, else 0.
 */
static int print_records(const char *text, bool json)
{
	char *copy = strdup(text ? text : ""), *save = NULL, *line;
	struct rec *rows = NULL;
	size_t nrow = 0, cap = 0;
	int width[12] = { 0 };

	if (!copy)
		goto nomem;
	for (line = strtok_r(copy, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *fs = NULL, *f;
		struct rec *r;

		if (!strchr(line, '='))
			continue;
		if (nrow == cap) {
			size_t ncap = cap ? 2 * cap : 64;
			struct rec *nr = realloc(rows, ncap * sizeof(*rows));

			if (!nr)
				goto nomem;
			rows = nr;
			cap = ncap;
		}
		r = &rows[nrow++];
		r->n = 0;
		for (f = strtok_r(line, "\t", &fs); f && r->n < 12;
		     f = strtok_r(NULL, "\t", &fs)) {
			char *eq = strchr(f, '=');

			if (!eq)
				break;
			*eq = 0;
			r->k[r->n] = f;
			r->v[r->n++] = eq + 1;
		}
	}
	if (json) {
		printf("[");
		for (size_t i = 0; i < nrow; i++) {
			printf("%s{", i ? ", " : "");
			for (int c = 0; c < rows[i].n; c++) {
				printf("%s", c ? ", " : "");
				json_str(rows[i].k[c]);
				printf(": ");
				/* a name may be all digits: still a string;
				 * "-" (none) is null: no name is "-" */
				if (all_digits(rows[i].v[c]) &&
				    !names_record(rows[i].k[c]))
					printf("%s", rows[i].v[c]);
				else if (names_record(rows[i].k[c]) &&
					 !strcmp(rows[i].v[c], "-"))
					printf("null");
				else
					json_str(rows[i].v[c]);
			}
			printf("}");
		}
		printf("]\n");
		goto out;
	}
	if (!nrow)
		goto out;
	for (int c = 0; c < rows[0].n; c++) {
		width[c] = u8len(rows[0].k[c]);
		for (size_t i = 0; i < nrow; i++)
			if (same_keys(&rows[i], &rows[0]) &&
			    u8len(rows[i].v[c]) > width[c])
				width[c] = u8len(rows[i].v[c]);
	}
	for (int c = 0; c < rows[0].n; c++) {
		for (const char *k = rows[0].k[c]; *k; k++)
			putchar(*k >= 'a' && *k <= 'z' ? *k - 32 : *k);
		if (c + 1 < rows[0].n)
			printf("%*s", width[c] - u8len(rows[0].k[c]) + 2, "");
	}
	putchar('\n');
	for (size_t i = 0; i < nrow; i++) {
		if (!same_keys(&rows[i], &rows[0]))
			continue;
		for (int c = 0; c < rows[i].n; c++) {
			if (c + 1 < rows[i].n)
				pad(rows[i].v[c], width[c] + 2);
			else
				fputs(rows[i].v[c], stdout);
		}
		putchar('\n');
	}
	for (size_t i = 0; i < nrow; i++) {
		if (same_keys(&rows[i], &rows[0]) || !rows[i].n)
			continue;
		printf("%s:", rows[i].v[0]);
		for (int c = 1; c < rows[i].n; c++)
			printf(" %s=%s", rows[i].k[c], rows[i].v[c]);
		putchar('\n');
	}
out:
	free(rows);
	free(copy);
	return 0;
nomem:
	die_msg("out of memory");
	free(rows);
	free(copy);
	return -ENOMEM;
}

/* CHECKPOINT through psql before a snapshot of a running postgres. */
static int run_checkpoint(const char *url)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execlp("psql", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
		       url, "-c", "CHECKPOINT", (char *)NULL);
		execl("/usr/lib/postgresql/15/bin/psql", "psql", "-X", "-q", "-v",
		      "ON_ERROR_STOP=1", "-d", url, "-c", "CHECKPOINT",
		      (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		die_msg("CHECKPOINT through %s failed: nothing created", url);
		return -EIO;
	}
	return 0;
}

/* Print the "warning=" lines of a reply on stderr. */
static void print_warnings(const char *reply)
{
	for (const char *p = reply; p && *p;) {
		const char *eol = strchr(p, '\n');
		int len = eol ? (int)(eol - p) : (int)strlen(p);

		if (!strncmp(p, "warning=", 8))
			fprintf(stderr, "branchfs: warning: %.*s\n", len - 8, p + 8);
		p = eol ? eol + 1 : NULL;
	}
}

static int print_created(const char *what, const char *name, const char *reply,
			 bool json, double ms)
{
	char v[64];
	const char *us = ctl_field(reply, "elapsed_us", v, sizeof(v));
	double inner = us ? atof(us) / 1000.0 : 0;

	print_warnings(reply);

	if (json) {
		printf("{\"%s\": ", what);
		json_str(name);
		printf(", \"ms\": %.3f, \"store_ms\": %.3f}\n", ms, inner);
	} else
		printf("created %s %s (%.1f ms)\n", what, name, ms);
	return 0;
}

/*
 * Confirm a delete, reset or rename: "deleted branch b", "reset branch b
 * to snapshot s" (to its branch point: @to NULL), "renamed a to b"; with
 * --json one object: {"branch": "b", "deleted": true}, {"branch": "b",
 * "reset_to": "s" or null}, {"renamed": "a", "to": "b"}.
 */
static int print_done(const char *reply, bool json, const char *verb,
		      const char *what, const char *name, const char *to)
{
	print_warnings(reply);
	if (!strcmp(verb, "deleted")) {
		if (!json) {
			printf("deleted %s %s\n", what, name);
			return 0;
		}
		printf("{\"%s\": ", what);
		json_str(name);
		printf(", \"deleted\": true}\n");
	} else if (!strcmp(verb, "reset")) {
		if (!json) {
			if (to)
				printf("reset branch %s to snapshot %s\n", name, to);
			else
				printf("reset branch %s to its branch point\n",
				       name);
			return 0;
		}
		printf("{\"branch\": ");
		json_str(name);
		printf(", \"reset_to\": ");
		if (to)
			json_str(to);
		else
			printf("null");
		printf("}\n");
	} else {
		if (!json) {
			printf("renamed %s to %s\n", name, to);
			return 0;
		}
		printf("{\"renamed\": ");
		json_str(name);
		printf(", \"to\": ");
		json_str(to);
		printf("}\n");
	}
	return 0;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmd_snapshot(int argc, char **argv)
{
	struct bargs a;
	char what[32];
	char *reply = NULL;
	const char *sub = argc > 1 ? argv[1] : "";
	int ret = 1;
	double t0 = now_ms();

	if (!known_sub("snapshot", sub))
		return usage_err("snapshot");
	snprintf(what, sizeof(what), "snapshot %.20s", sub);
	if (parse_bargs(argc - 1, argv + 1, sub_opts("snapshot", sub), what,
			&a) < 0)
		return usage_err("snapshot");
	if (!strcmp(sub, "create") && a.npos == 2) {
		const char *w[] = { "snapshot-create", a.pos[0], a.pos[1] };

		if (a.checkpoint && run_checkpoint(a.checkpoint) < 0)
			return 1;
		t0 = now_ms();
		if (request(a.store, 3, w, &reply) == 0)
			ret = print_created("snapshot", a.pos[1], reply, a.json,
					    now_ms() - t0);
	} else if (!strcmp(sub, "list") && a.npos == 0) {
		const char *w[] = { "snapshot-list" };

		if (request(a.store, 1, w, &reply) == 0) {
			ret = print_records(reply, a.json) < 0;
		}
	} else if (!strcmp(sub, "delete") && a.npos == 1) {
		const char *w[] = { "snapshot-delete", a.pos[0], "--force" };

		if (request(a.store, a.force ? 3 : 2, w, &reply) == 0)
			ret = print_done(reply, a.json, "deleted", "snapshot",
					 a.pos[0], NULL);
	} else {
		return usage_err("snapshot");
	}
	free(reply);
	return ret;
}

static int cmd_branch(int argc, char **argv)
{
	struct bargs a;
	char what[32];
	char *reply = NULL;
	const char *sub = argc > 1 ? argv[1] : "";
	int ret = 1;

	if (!known_sub("branch", sub))
		return usage_err("branch");
	snprintf(what, sizeof(what), "branch %.20s", sub);
	if (parse_bargs(argc - 1, argv + 1, sub_opts("branch", sub), what,
			&a) < 0)
		return usage_err("branch");
	if (!strcmp(sub, "create") && a.npos == 1) {
		/* without --from the daemon picks main, and says so if
		 * there is none */
		const char *w[] = { "branch-create", a.pos[0], a.from };
		double t0;

		if (a.checkpoint && run_checkpoint(a.checkpoint) < 0)
			return 1;
		t0 = now_ms();
		if (request(a.store, a.from ? 3 : 2, w, &reply) == 0)
			ret = print_created("branch", a.pos[0], reply, a.json,
					    now_ms() - t0);
	} else if (!strcmp(sub, "list") && a.npos == 0) {
		const char *w[] = { "branch-list" };

		if (request(a.store, 1, w, &reply) == 0) {
			ret = print_records(reply, a.json) < 0;
		}
	} else if (!strcmp(sub, "delete") && a.npos == 1) {
		const char *w[] = { "branch-delete", a.pos[0], "--force" };

		if (request(a.store, a.force ? 3 : 2, w, &reply) == 0)
			ret = print_done(reply, a.json, "deleted", "branch",
					 a.pos[0], NULL);
	} else if (!strcmp(sub, "reset") && a.npos == 1) {
		const char *w[4] = { "branch-reset", a.pos[0] };
		int n = 2;

		if (a.to)
			w[n++] = a.to;
		if (a.force)
			w[n++] = "--force";
		if (request(a.store, n, w, &reply) == 0)
			ret = print_done(reply, a.json, "reset", "branch",
					 a.pos[0], a.to);
	} else if (!strcmp(sub, "rename") && a.npos == 2) {
		const char *w[] = { "branch-rename", a.pos[0], a.pos[1], "--force" };

		if (request(a.store, a.force ? 4 : 3, w, &reply) == 0)
			ret = print_done(reply, a.json, "renamed", NULL,
					 a.pos[0], a.pos[1]);
	} else {
		return usage_err("branch");
	}
	free(reply);
	return ret;
}

static int cmd_du(int argc, char **argv)
{
	struct bargs a;
	char *reply = NULL;
	const char *w[] = { "du" };
	int ret = 1;

	if (parse_bargs(argc, argv, OPT_JSON, "du", &a) < 0 || a.npos)
		return usage_err("du");
	if (request(a.store, 1, w, &reply) == 0) {
		ret = print_records(reply, a.json) < 0;
	}
	free(reply);
	return ret;
}

static int cmd_gc(int argc, char **argv)
{
	struct bargs a;
	char *reply = NULL;
	const char *w[] = { "gc" };
	int ret = 1;

	if (parse_bargs(argc, argv, 0, "gc", &a) < 0 || a.npos)
		return usage_err("gc");
	if (request(a.store, 1, w, &reply) == 0)
		ret = 0;
	free(reply);
	return ret;
}

/* ---- check ---------------------------------------------------------------- */

struct check_out {
	bool json, tty;
	bool json_open; /* '{"problems": [' printed */
	unsigned listed;
	double last_ms;
	bool progress_shown;
};

static void json_str(const char *v);
static double now_ms(void);

static void json_opt(const char *v)
{
	if (v)
		json_str(v);
	else
		fputs("null", stdout);
}

static void check_report(void *arg, const char *kind, const char *branch,
			 const char *path, const char *detail)
{
	struct check_out *o = arg;

	if (o->progress_shown) {
		fputs("\r\033[K", stderr);
		o->progress_shown = false;
	}
	if (o->json) {
		printf("%s{\"kind\": ", o->listed ? ", " : "");
		json_str(kind);
		printf(", \"branch\": ");
		json_opt(branch);
		printf(", \"path\": ");
		json_opt(path);
		printf(", \"detail\": ");
		json_str(detail);
		printf("}");
	} else if (branch && path) {
		printf("%-13s %s: %s: %s\n", kind, branch, path, detail);
	} else if (branch) {
		printf("%-13s %s: %s\n", kind, branch, detail);
	} else {
		printf("%-13s %s\n", kind, detail);
	}
	o->listed++;
}

static void check_progress(void *arg, const char *phase, uint64_t done,
			   uint64_t total)
{
	struct check_out *o = arg;
	double t = now_ms();

	if (!o->tty || t - o->last_ms < 100)
		return;
	o->last_ms = t;
	if (total)
		fprintf(stderr, "\r\033[Kchecking %s: %llu/%llu", phase,
			(unsigned long long)done, (unsigned long long)total);
	else
		fprintf(stderr, "\r\033[Kchecking %s: %llu", phase,
			(unsigned long long)done);
	o->progress_shown = true;
}

/*
 * The store cannot be checked (@msg says why): exit 2, and with --json an
 * object that says so - "clean" is null, not true or false - completing
 * the one begun (o->json_open: "{\"problems\": [" printed) or whole.
 */
static int check_cannot(struct check_out *o, const char *msg)
{
	if (o->json) {
		printf("%s\"clean\": null, \"error\": ",
		       o->json_open ? "], " : "{\"problems\": [], ");
		json_str(msg);
		printf("}\n");
	}
	die_msg("%s", msg);
	return 2;
}

static int cmd_check(int argc, char **argv)
{
	struct check_out o = { 0 };
	struct snap_check_stats st = { 0 };
	const char *store = NULL;
	unsigned flags = 0, oflags = SNAP_OPEN_CHECK;
	struct snap *s;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			o.json = true;
		else if (!strcmp(argv[i], "--repair"))
			flags |= SNAP_CHECK_REPAIR;
		else if ((!strcmp(argv[i], "-s") || !strcmp(argv[i], "--store")) &&
			 i + 1 < argc && !store)
			store = argv[++i];
		else if (argv[i][0] == '-' || store) {
			if (argv[i][0] == '-')
				die_msg("check: unknown option %s", argv[i]);
			return usage_err("check");
		} else
			store = argv[i];
	}
	if (!store)
		store = env_store();
	if (!store) {
		die_msg("no store given: use check STORE, -s STORE or set "
			"BRANCHFS_STORE");
		return usage_err("check");
	}
	o.tty = isatty(STDERR_FILENO);
	{
		char msg[PATH_MAX + 128];

		if (not_a_store(store, msg, sizeof(msg)))
			return check_cannot(&o, msg);
	}
	if (o.json) {
		printf("{\"problems\": [");
		o.json_open = true;
	}
	/* On a disk without room to open for writing, a check that repairs
	 * nothing opens read-only, under a shared lock; a repair may spend the
	 * disk-full reserve, as deletes do. */
	if (flags & SNAP_CHECK_REPAIR) {
		oflags |= SNAP_OPEN_USE_RESERVE;
	} else {
		uint64_t need, avail;

		if (snap_open_room(store, &need, &avail) == 0 && avail < need)
			oflags |= SNAP_OPEN_READONLY | SNAP_OPEN_LOCK_SHARED;
	}
	ret = open_unless_served(store, oflags, &s);
	if (ret == -EPROTONOSUPPORT) {
		check_report(&o, "format", NULL, NULL,
			     "the store's format version is not one this "
			     "branchfs knows");
		if (o.json)
			printf("], \"clean\": false, \"repaired\": 0, "
			       "\"counts\": {}}\n");
		return 1;
	}
	if (ret < 0) {
		char msg[PATH_MAX + 256];

		if (ret == -EBUSY && ctl_serving(store))
			snprintf(msg, sizeof(msg), "store %s is mounted: check "
				 "works on an unmounted store only (branchfs "
				 "umount MNT first)", store);
		else if (ret == -EBUSY)
			snprintf(msg, sizeof(msg), "store %s is in use by "
				 "another branchfs command (waited %d s): check "
				 "works on an unmounted, idle store only", store,
				 STORE_WAIT_MS / 1000);
		else
			snprintf(msg, sizeof(msg), "cannot open store %s: %s",
				 store, open_error(ret));
		return check_cannot(&o, msg);
	}
	ret = snap_check(s, flags, check_report, check_progress, &o, &st);
	snap_close(s);
	if (o.progress_shown)
		fputs("\r\033[K", stderr);
	if (ret < 0) {
		if (o.json)
			printf("]}\n");
		die_msg("check of %s failed: %s", store, strerror(-ret));
		return 2;
	}
	if (o.json) {
		printf("], \"clean\": %s, \"repaired\": %llu, \"counts\": "
		       "{\"branches\": %llu, \"snapshots\": %llu, "
		       "\"inodes\": %llu, \"dirents\": %llu, "
		       "\"bmap_entries\": %llu, \"blocks\": %llu, "
		       "\"problems\": %llu, \"repaired\": %llu}}\n",
		       ret == 0 ? "true" : "false",
		       (unsigned long long)st.repaired,
		       (unsigned long long)st.branches,
		       (unsigned long long)st.snapshots,
		       (unsigned long long)st.inodes,
		       (unsigned long long)st.dirents,
		       (unsigned long long)st.bmap_entries,
		       (unsigned long long)st.blocks,
		       (unsigned long long)st.problems,
		       (unsigned long long)st.repaired);
	} else {
		printf("checked %llu branches, %llu snapshots: %llu inodes, "
		       "%llu entries, %llu block-map entries, %llu blocks\n",
		       (unsigned long long)st.branches,
		       (unsigned long long)st.snapshots,
		       (unsigned long long)st.inodes,
		       (unsigned long long)st.dirents,
		       (unsigned long long)st.bmap_entries,
		       (unsigned long long)st.blocks);
		if (ret == 0 && !st.problems)
			printf("clean\n");
		else if (ret == 0)
			printf("%llu problems found, all repaired: clean\n",
			       (unsigned long long)st.problems);
		else
			printf("%llu problems found, %llu repaired, %llu remain%s\n",
			       (unsigned long long)st.problems,
			       (unsigned long long)st.repaired,
			       (unsigned long long)(st.problems - st.repaired),
			       flags & SNAP_CHECK_REPAIR ? " (not safe to repair "
			       "automatically: see above)" : "");
	}
	return ret == 0 ? 0 : 1;
}

static int cmd_version(int argc, char **argv)
{
	if (argc != 1)
		return usage_err("version");
	printf("branchfs %s (store format %u)\n", BRANCHFS_VERSION,
	       BFS_FORMAT_VERSION);
	return 0;
}

static int cmd_help(int argc, char **argv);

static const struct cli_cmd cmds[] = {
	{ "init", cmd_init, "init STORE",
	  "Create a new, empty store in directory STORE (created if absent;\n"
	  "an existing directory must be empty). The store starts with one\n"
	  "branch, main." },
	{ "mount", cmd_mount,
	  "mount STORE MNT [-o OPTIONS] [--foreground] [--writeback]",
	  "Mount STORE at MNT and return once the mount is live. MNT/main is\n"
	  "branch main. As root the mount uses allow_other,default_permissions\n"
	  "so that other users (postgres) can use it; -o adds FUSE options.\n"
	  "The daemon logs to STORE/branchfs.log. --foreground stays attached\n"
	  "and logs to stderr.\n"
	  "--writeback: the kernel caches writes and hands them over in large\n"
	  "batches (much faster small writes); fsync is as durable, but a\n"
	  "snapshot is crash-consistent (everything fsynced or closed before\n"
	  "it) instead of an exact instant. The mode for a PGDATA.\n"
	  "Without it every write reaches the store before it returns." },
	{ "umount", cmd_umount, "umount MNT",
	  "Unmount MNT and wait until its daemon has written everything and\n"
	  "exited. Also cleans up a stale mount left by a killed daemon\n"
	  "('Transport endpoint is not connected')." },
	{ "stats", cmd_stats, "stats [-s STORE | STORE] [--json]",
	  "Show logical bytes (all block references), stored bytes (after\n"
	  "dedup and compression), block count and compression ratio. Works on\n"
	  "a mounted store (through its daemon) and an unmounted one. STORE\n"
	  "defaults to $BRANCHFS_STORE." },
	{ "snapshot", cmd_snapshot,
	  "snapshot create BRANCH NAME [--checkpoint PGURL] | list | delete NAME [--force]  [-s STORE] [--json]",
	  "Snapshots are read-only, instant (O(1)) images of a branch, browsable\n"
	  "at MNT/.snapshots/NAME. 'create' takes one instant across all files\n"
	  "even while postgres writes; --checkpoint runs CHECKPOINT through psql\n"
	  "first. The store is -s STORE or $BRANCHFS_STORE; mounted or not." },
	{ "branch", cmd_branch,
	  "branch create NAME [--from BRANCH|SNAPSHOT] [--checkpoint PGURL] | list | delete NAME [--force] | reset NAME [--to SNAPSHOT] [--force] | rename OLD NEW [--force]  [-s STORE] [--json]",
	  "Branches are writable trees, MNT/NAME. 'create' is instant; from a\n"
	  "branch (default main) it snapshots that instant implicitly. 'delete'\n"
	  "refuses while files are open unless --force; its space comes back in\n"
	  "the background ('branchfs gc' waits for it). 'reset' makes the branch\n"
	  "its branch point again, or the snapshot given with --to. A postgres\n"
	  "running on the parent does not stop one from starting on the branch." },
	{ "du", cmd_du, "du [-s STORE] [--json]",
	  "Per branch and snapshot: exclusive bytes (freed by deleting it) and\n"
	  "shared bytes (other stored bytes its tree shows); then store totals." },
	{ "gc", cmd_gc, "gc [-s STORE]",
	  "Give back now the space of deleted branches and snapshots and of\n"
	  "overwritten data (otherwise done in the background)." },
	{ "check", cmd_check, "check [--json] [--repair] [-s STORE | STORE]",
	  "Verify every invariant of an unmounted store: format version,\n"
	  "counters, branch and snapshot records and their ancestry, every\n"
	  "directory entry, link count and size in every branch and snapshot,\n"
	  "every block (present, decodes, hash matches) and its reference\n"
	  "count, the GC queue. Each problem is listed with its branch and file\n"
	  "path. --repair fixes what is safe (reference counts, unreferenced\n"
	  "blocks, stale queue entries, link counts in branch heads) and lists\n"
	  "what it cannot (missing or corrupt data is never dropped). --json\n"
	  "prints one object {clean, problems[{kind, branch, path, detail}],\n"
	  "repaired, counts}. Exit 0 clean, 1 problems remain, 2 the store\n"
	  "cannot be checked (mounted, not a store; --json: {clean: null,\n"
	  "error}). Progress on a terminal." },
	{ "version", cmd_version, "version", "Print the version." },
	{ "help", cmd_help, "help [COMMAND]", "Show help." },
};

static const struct cli_cmd *find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmds[i].name, name))
			return &cmds[i];
	return NULL;
}

static int cmd_help(int argc, char **argv)
{
	if (argc >= 2 && find_cmd(argv[1])) /* "help branch create" too */
		return print_help(argv[1]);
	if (argc >= 2) {
		die_msg("unknown command '%s' (see 'branchfs help')", argv[1]);
		return 2;
	}
	printf("branchfs - branchable copy-on-write filesystem for PostgreSQL data\n\n"
	       "usage: branchfs COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		printf("  %s\n", cmds[i].usage);
	printf("\n'branchfs COMMAND --help' describes one command.\n");
	return 0;
}

/*
 * RocksDB keeps every table file of a store open (kv.c: max_open_files,
 * sized from this limit), one per ~32-64 MiB stored: a soft limit of 1,024
 * would end in "Too many open files" (EIO until a remount) at ~40 GB.  The
 * hard limit is ours to take.
 */
static void raise_nofile(void)
{
	struct rlimit r;

	if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
		r.rlim_cur = r.rlim_max;
		setrlimit(RLIMIT_NOFILE, &r);
	}
}

/*
 * Output that did not reach its reader (a full disk, an I/O error) is a
 * failure too; a reader that stopped reading (EPIPE: "| head", "| grep -q")
 * is not.  @ret: the command's exit status; @c its command (NULL: --help,
 * --version): "check" exits 2 (it could not report), and the others that
 * may change the store say that they did their work.
 */
static int output_done(int ret, const struct cli_cmd *c)
{
	bool check = c && c->fn == cmd_check;
	bool acted = c && !check && c->fn != cmd_help &&
		     c->fn != cmd_version && c->fn != cmd_stats;

	errno = 0;
	if ((fflush(stdout) != 0 || ferror(stdout)) && errno != EPIPE) {
		die_msg("cannot write the output%s%s%s", errno ? ": " : "",
			errno ? strerror(errno) : "",
			ret == 0 && acted ? " (the command itself succeeded)" :
			"");
		return check ? 2 : ret ? ret : 1;
	}
	return ret;
}

int main(int argc, char **argv)
{
	const struct cli_cmd *c;
	int ret;

	/* Started with stdin, stdout or stderr closed, the store's
	 * descriptors would take those numbers, and the daemon's dup2() of
	 * its log onto 1 and 2 would replace them: keep 0-2 taken. */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			return 2;
	if (argc < 2) {
		fprintf(stderr, "usage: branchfs COMMAND [ARGS]  (see 'branchfs help')\n");
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
		return output_done(cmd_help(1, argv), NULL);
	if (!strcmp(argv[1], "--version"))
		return output_done(cmd_version(1, argv), NULL);
	c = find_cmd(argv[1]);
	if (!c) {
		die_msg("unknown command '%s' (see 'branchfs help')", argv[1]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (want_help(argc - 1, argv + 1))
		ret = print_help(c->name);
	else
		ret = c->fn(argc - 1, argv + 1);
	return output_done(ret, c);
}
