/* SPDX-License-Identifier: MIT */
/*
 * tests/tools/powercut_shim.c - LD_PRELOAD library for the power-cut test.
 *
 * Loaded into the branchfs daemon, it writes a journal of everything that
 * decides what a power cut would leave of the files under one directory
 * (the store): which sizes were made durable by fsync/fdatasync, which
 * directory entries were created, renamed or removed, and which directory
 * fsyncs made those changes durable.  After the daemon is killed (SIGKILL:
 * every journal record is one write(2) to an O_APPEND file, so it is in the
 * page cache the moment the call returns), tests/tools/powercut.c replays
 * the journal and rolls the store back to what the disk would hold after a
 * power cut at that instant.  The model itself is described there.
 *
 *   LD_PRELOAD=powercut.so POWERCUT_DIR=STORE POWERCUT_JOURNAL=FILE \
 *       POWERCUT_GRAVE=DIR branchfs mount STORE MNT
 *
 * POWERCUT_DIR must be an absolute path without symlinks; POWERCUT_GRAVE a
 * directory on the same filesystem, outside POWERCUT_DIR.  Without the
 * three variables the library does nothing.
 *
 * Records (text, one line each, paths relative to POWERCUT_DIR and
 * %-escaped; ID = pid.seq, unique in the journal):
 *   C ID PATH INO            PATH was created (open with O_CREAT)
 *   R ID OLD NEW INO         OLD was renamed to NEW
 *   U ID PATH INO            PATH was unlinked
 *   L ID OLD NEW INO         NEW was made a hard link of OLD
 *   M ID PATH INO            directory PATH was made
 *   B ID                     a fsync/fdatasync is about to start
 *   E ID f|d PATH INO SIZE   ... it succeeded; for a file, SIZE is the size
 *                            before it started (all of it is durable)
 *   P ID INO OFF HEX         bytes [OFF, OFF+len) of INO are about to be
 *                            overwritten; HEX is what was there before
 *   X ID WHAT PATH           an operation the model does not cover
 * Every record is written after the call it describes has returned, except
 * B and P, written before.  A file's entry or a rename is written after
 * the call, and a sync's B before it, so "record before B" implies
 * "finished before the sync started": the replay never takes a change as
 * covered by a sync that might have missed it.
 *
 * Before an unlink, or a rename over an existing file, the inode that is
 * about to lose its name gets a hard link POWERCUT_GRAVE/INO, so that the
 * replay can bring it back if the change was not durable.  Writes below a
 * size that may be durable (the size seen when the file was first opened,
 * or synced since) record the old bytes first (P); RocksDB only appends,
 * so in practice there are none, and the test prints how many there were.
 *
 * Not covered (recorded as X, and the replay refuses): shared writable
 * mmap, rmdir/symlink below the store, renames into or out of it.
 * Writes through a FILE's buffer are checked when it flushes only if they
 * go through write(2) symbols this library sees (glibc's own stdio does
 * not): RocksDB does not use stdio for its files, branchfs only for the
 * FORMAT file it creates once.  Writes through fds this library did not see
 * opened (dup) are not checked for overwrites, and their syncs are not
 * journaled: the replay then drops more, never less.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "powercut_journal.h"

#define PC_MAXFD 65536
#define PC_NHASH 4096

/* what the library knows about one open fd below the store */
struct pc_fd {
	char *rel;   /* path relative to the store when it was opened */
	ino_t ino;
	bool dir;
	bool append; /* O_APPEND: writes go to the end, never over old data */
};

/* per inode: the largest size that may be durable */
struct pc_ino {
	ino_t ino;
	off_t hint;
	struct pc_ino *next;
};

static struct {
	int (*open)(const char *, int, ...);
	int (*openat)(int, const char *, int, ...);
	int (*close)(int);
	ssize_t (*write)(int, const void *, size_t);
	ssize_t (*pwrite)(int, const void *, size_t, off_t);
	ssize_t (*writev)(int, const struct iovec *, int);
	ssize_t (*pwritev)(int, const struct iovec *, int, off_t);
	ssize_t (*pwritev2)(int, const struct iovec *, int, off_t, int);
	int (*fsync)(int);
	int (*fdatasync)(int);
	int (*ftruncate)(int, off_t);
	int (*truncate)(const char *, off_t);
	int (*fallocate)(int, int, off_t, off_t);
	int (*renameat2)(int, const char *, int, const char *, unsigned);
	int (*unlinkat)(int, const char *, int);
	int (*linkat)(int, const char *, int, const char *, int);
	int (*mkdirat)(int, const char *, mode_t);
	int (*symlinkat)(const char *, int, const char *);
	void *(*mmap)(void *, size_t, int, int, int, off_t);
	FILE *(*fopen)(const char *, const char *);
	int (*fclose)(FILE *);
} real;

static char pc_dir[PATH_MAX];
static size_t pc_dirlen;
static char pc_grave[PATH_MAX];
static int pc_jfd = -1;
static atomic_bool pc_on;
static atomic_ulong pc_seq;
static _Atomic(struct pc_fd *) pc_fds[PC_MAXFD];
static struct pc_ino *pc_inos[PC_NHASH];
static pthread_mutex_t pc_ino_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pc_once = PTHREAD_ONCE_INIT;

static void *pc_sym(const char *name)
{
	void *p = dlsym(RTLD_NEXT, name);

	if (!p) {
		static const char m[] = "powercut_shim: a libc symbol is missing\n";

		if (write(2, m, sizeof(m) - 1) < 0)
			abort();
		abort();
	}
	return p;
}

/* collapse "//", "/./" and "/../" and drop a trailing "/" in place */
static void pc_normalize(char *p)
{
	char *out = p, *in = p;

	while (*in) {
		while (*in == '/')
			in++;
		if (!*in)
			break;
		char *seg = in;
		size_t n;

		while (*in && *in != '/')
			in++;
		n = in - seg;
		if (n == 1 && seg[0] == '.')
			continue;
		if (n == 2 && seg[0] == '.' && seg[1] == '.') {
			while (out > p && *--out != '/')
				;
			continue;
		}
		*out++ = '/';
		memmove(out, seg, n);
		out += n;
	}
	if (out == p)
		*out++ = '/';
	*out = '\0';
}

static void pc_init(void)
{
	const char *d = getenv("POWERCUT_DIR");
	const char *j = getenv("POWERCUT_JOURNAL");
	const char *g = getenv("POWERCUT_GRAVE");

	real.open = pc_sym("open");
	real.openat = pc_sym("openat");
	real.close = pc_sym("close");
	real.write = pc_sym("write");
	real.pwrite = pc_sym("pwrite");
	real.writev = pc_sym("writev");
	real.pwritev = pc_sym("pwritev");
	real.pwritev2 = pc_sym("pwritev2");
	real.fsync = pc_sym("fsync");
	real.fdatasync = pc_sym("fdatasync");
	real.ftruncate = pc_sym("ftruncate");
	real.truncate = pc_sym("truncate");
	real.fallocate = pc_sym("fallocate");
	real.renameat2 = pc_sym("renameat2");
	real.unlinkat = pc_sym("unlinkat");
	real.linkat = pc_sym("linkat");
	real.mkdirat = pc_sym("mkdirat");
	real.symlinkat = pc_sym("symlinkat");
	real.mmap = pc_sym("mmap");
	real.fopen = pc_sym("fopen");
	real.fclose = pc_sym("fclose");

	if (!d || !j || !g || d[0] != '/' || strlen(d) >= sizeof(pc_dir) ||
	    strlen(g) >= sizeof(pc_grave))
		return;
	strcpy(pc_dir, d);
	pc_normalize(pc_dir);
	pc_dirlen = strlen(pc_dir);
	strcpy(pc_grave, g);
	pc_jfd = real.open(j, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (pc_jfd < 0)
		return;
	atomic_store(&pc_on, true);
}

static inline bool pc_active(void)
{
	pthread_once(&pc_once, pc_init);
	return atomic_load_explicit(&pc_on, memory_order_relaxed);
}

static inline struct pc_fd *pc_fd_get(int fd)
{
	if (fd < 0 || fd >= PC_MAXFD)
		return NULL;
	return atomic_load(&pc_fds[fd]);
}

/*
 * The path of @path (relative to @dirfd) below the store, written to @rel
 * ("." for the store itself); false when it is outside the store.
 */
static bool pc_rel(int dirfd, const char *path, char *rel, size_t n)
{
	char abs[PATH_MAX * 2];
	size_t len;

	if (!path)
		return false;
	if (!strncmp(path, "/proc/self/fd/", 14)) {
		/* a path through a directory descriptor, as branchfs reaches
		 * its store (snap/snap_int.h: struct snap, root) */
		char lnk[64], base[PATH_MAX], *end;
		long fd = strtol(path + 14, &end, 10);
		ssize_t r;

		if (end == path + 14 || (*end != '/' && *end != '\0'))
			return false;
		snprintf(lnk, sizeof(lnk), "/proc/self/fd/%ld", fd);
		r = readlink(lnk, base, sizeof(base) - 1);
		if (r <= 0 || base[0] != '/')
			return false;
		base[r] = '\0';
		snprintf(abs, sizeof(abs), "%s%s", base, end);
	} else if (path[0] == '/') {
		if (strncmp(path, pc_dir, pc_dirlen) != 0)
			return false; /* the common case, and cheap */
		snprintf(abs, sizeof(abs), "%s", path);
	} else {
		char base[PATH_MAX];

		if (dirfd == AT_FDCWD) {
			if (!getcwd(base, sizeof(base)))
				return false;
		} else {
			char lnk[64];
			ssize_t r;

			snprintf(lnk, sizeof(lnk), "/proc/self/fd/%d", dirfd);
			r = readlink(lnk, base, sizeof(base) - 1);
			if (r < 0)
				return false;
			base[r] = '\0';
		}
		snprintf(abs, sizeof(abs), "%s/%s", base, path);
	}
	pc_normalize(abs);
	len = strlen(abs);
	if (strncmp(abs, pc_dir, pc_dirlen) != 0 ||
	    (len > pc_dirlen && abs[pc_dirlen] != '/'))
		return false;
	if (len == pc_dirlen)
		snprintf(rel, n, ".");
	else
		snprintf(rel, n, "%s", abs + pc_dirlen + 1);
	return true;
}

static unsigned long pc_id(void)
{
	return atomic_fetch_add(&pc_seq, 1) + 1;
}

/* one record, one write(2) */
static void pc_rec(char type, unsigned long id, const char *fmt, ...)
{
	char buf[3 * PATH_MAX * 2 + 256];
	int n, save = errno;
	va_list ap;

	n = snprintf(buf, sizeof(buf), "%c %d.%lu ", type, (int)getpid(), id);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(buf) - 1)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (real.write(pc_jfd, buf, n) < 0)
		abort(); /* a journal we cannot trust is worse than none */
	errno = save;
}

static off_t *pc_hint_slot(ino_t ino, bool create, off_t init)
{
	struct pc_ino **pp = &pc_inos[ino % PC_NHASH], *p;

	for (p = *pp; p; p = p->next)
		if (p->ino == ino)
			return &p->hint;
	if (!create)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (!p)
		abort();
	p->ino = ino;
	p->hint = init;
	p->next = *pp;
	*pp = p;
	return &p->hint;
}

static off_t pc_hint(ino_t ino)
{
	off_t *h, v;

	pthread_mutex_lock(&pc_ino_lock);
	h = pc_hint_slot(ino, false, 0);
	v = h ? *h : 0;
	pthread_mutex_unlock(&pc_ino_lock);
	return v;
}

static void pc_hint_raise(ino_t ino, off_t size)
{
	off_t *h;

	pthread_mutex_lock(&pc_ino_lock);
	h = pc_hint_slot(ino, true, size);
	if (*h < size)
		*h = size;
	pthread_mutex_unlock(&pc_ino_lock);
}

/*
 * Record the bytes [off, off+len) of the file open as @fd (clipped to what
 * may be durable) before they are overwritten or cut off.
 */
static void pc_preimage(int fd, ino_t ino, off_t off, off_t len)
{
	off_t hint = pc_hint(ino), end;
	char lnk[64], *hex;
	unsigned char *data;
	ssize_t r;
	int rfd;

	if (off >= hint || len <= 0)
		return;
	end = off + len < hint ? off + len : hint;
	snprintf(lnk, sizeof(lnk), "/proc/self/fd/%d", fd);
	rfd = real.open(lnk, O_RDONLY | O_CLOEXEC);
	if (rfd < 0)
		abort();
	data = malloc(end - off);
	hex = malloc(2 * (end - off) + 1);
	if (!data || !hex)
		abort();
	r = pread(rfd, data, end - off, off);
	real.close(rfd);
	if (r < 0)
		abort();
	for (ssize_t i = 0; i < r; i++)
		sprintf(hex + 2 * i, "%02x", data[i]);
	hex[2 * r] = '\0';
	{
		/* too big for pc_rec's buffer: write it whole */
		char head[128];
		int n = snprintf(head, sizeof(head), "P %d.%lu %llu %lld ",
				 (int)getpid(), pc_id(),
				 (unsigned long long)ino, (long long)off);
		size_t tot = n + 2 * r + 1;
		char *rec = malloc(tot);

		if (!rec)
			abort();
		memcpy(rec, head, n);
		memcpy(rec + n, hex, 2 * r);
		rec[tot - 1] = '\n';
		if (real.write(pc_jfd, rec, tot) != (ssize_t)tot)
			abort();
		free(rec);
	}
	free(hex);
	free(data);
}

/* before a write of @len bytes at @off (-1: the fd's position) */
static void pc_guard_write(int fd, off_t off, size_t len)
{
	struct pc_fd *e = pc_fd_get(fd);
	int save = errno;

	if (!e || e->dir || e->append)
		return;
	if (off < 0)
		off = lseek(fd, 0, SEEK_CUR);
	if (off >= 0 && off < pc_hint(e->ino))
		pc_preimage(fd, e->ino, off, len);
	errno = save;
}

static void pc_grave_link(int dirfd, const char *path, ino_t ino)
{
	char g[PATH_MAX + 32];

	snprintf(g, sizeof(g), "%s/%llu", pc_grave, (unsigned long long)ino);
	if (real.linkat(dirfd, path, AT_FDCWD, g, 0) < 0 && errno != EEXIST)
		abort();
}

/* ---- open / close ------------------------------------------------------ */

static int pc_open(int dirfd, const char *path, int flags, mode_t mode)
{
	char rel[PATH_MAX], esc[3 * PATH_MAX];
	struct stat before, st;
	bool existed;
	struct pc_fd *e;
	int fd, save;

	if (!pc_active() || !pc_rel(dirfd, path, rel, sizeof(rel)))
		return real.openat(dirfd, path, flags, mode);
	existed = fstatat(dirfd, path, &before, 0) == 0;
	if (existed && S_ISREG(before.st_mode) && (flags & O_TRUNC) &&
	    (flags & O_ACCMODE) != O_RDONLY) {
		int rfd = real.openat(dirfd, path, O_RDONLY | O_CLOEXEC, 0);

		if (rfd >= 0) {
			pc_hint_raise(before.st_ino, before.st_size);
			pc_preimage(rfd, before.st_ino, 0, before.st_size);
			real.close(rfd);
		}
	}
	fd = real.openat(dirfd, path, flags, mode);
	if (fd < 0)
		return fd;
	save = errno;
	if (fstat(fd, &st) < 0)
		abort();
	pcj_esc(esc, sizeof(esc), rel);
	if (!existed || before.st_ino != st.st_ino) {
		if (S_ISDIR(st.st_mode)) /* O_TMPFILE and the like */
			pc_rec('X', pc_id(), "open-created-dir %s", esc);
		else
			pc_rec('C', pc_id(), "%s %llu", esc,
			       (unsigned long long)st.st_ino);
	}
	/* what it held when we first saw it may be durable */
	pc_hint_raise(st.st_ino, existed ? before.st_size : 0);
	if (fd < PC_MAXFD) {
		e = calloc(1, sizeof(*e));
		if (!e || !(e->rel = strdup(rel)))
			abort();
		e->ino = st.st_ino;
		e->dir = S_ISDIR(st.st_mode);
		e->append = flags & O_APPEND;
		/* leaked on close: a racing user of a closed fd must not
		 * read freed memory, and a run opens a few hundred files */
		atomic_store(&pc_fds[fd], e);
	}
	errno = save;
	return fd;
}

static mode_t pc_mode(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t m;

	va_start(ap, flags);
	m = pc_mode(flags, ap);
	va_end(ap);
	return pc_open(AT_FDCWD, path, flags, m);
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t m;

	va_start(ap, flags);
	m = pc_mode(flags, ap);
	va_end(ap);
	return pc_open(dirfd, path, flags, m);
}
int openat64(int dirfd, const char *path, int flags, ...)
	__attribute__((alias("openat")));

int __open_2(const char *path, int flags);
int __open_2(const char *path, int flags)
{
	return pc_open(AT_FDCWD, path, flags, 0);
}
int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));
int __openat_2(int dirfd, const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags)
{
	return pc_open(dirfd, path, flags, 0);
}
int __openat64_2(int dirfd, const char *path, int flags)
	__attribute__((alias("__openat_2")));

int creat(const char *path, mode_t mode)
{
	return pc_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}
int creat64(const char *path, mode_t mode) __attribute__((alias("creat")));

/* fopen opens through glibc's internal open, which the wrappers above do
 * not see: register its fd the same way */
static FILE *pc_fopen(const char *path, const char *mode,
		      FILE *(*call)(const char *, const char *))
{
	char rel[PATH_MAX], esc[3 * PATH_MAX];
	struct stat before, st;
	bool existed;
	struct pc_fd *e;
	FILE *f;
	int fd, save;

	if (!pc_active() || !pc_rel(AT_FDCWD, path, rel, sizeof(rel)))
		return call(path, mode);
	existed = stat(path, &before) == 0;
	if (existed && S_ISREG(before.st_mode) && mode[0] == 'w') {
		int rfd = real.open(path, O_RDONLY | O_CLOEXEC);

		if (rfd >= 0) {
			pc_hint_raise(before.st_ino, before.st_size);
			pc_preimage(rfd, before.st_ino, 0, before.st_size);
			real.close(rfd);
		}
	}
	f = call(path, mode);
	if (!f)
		return f;
	save = errno;
	fd = fileno(f);
	if (fstat(fd, &st) < 0)
		abort();
	if (!existed || before.st_ino != st.st_ino) {
		pcj_esc(esc, sizeof(esc), rel);
		pc_rec('C', pc_id(), "%s %llu", esc, (unsigned long long)st.st_ino);
	}
	pc_hint_raise(st.st_ino, existed ? before.st_size : 0);
	if (fd < PC_MAXFD) {
		e = calloc(1, sizeof(*e));
		if (!e || !(e->rel = strdup(rel)))
			abort();
		e->ino = st.st_ino;
		e->append = mode[0] == 'a';
		atomic_store(&pc_fds[fd], e);
	}
	errno = save;
	return f;
}

FILE *fopen(const char *path, const char *mode)
{
	pc_active();
	return pc_fopen(path, mode, real.fopen);
}
FILE *fopen64(const char *path, const char *mode) __attribute__((alias("fopen")));

int fclose(FILE *f)
{
	int fd = f ? fileno(f) : -1;

	pc_active();
	if (fd >= 0 && fd < PC_MAXFD)
		atomic_store(&pc_fds[fd], NULL);
	return real.fclose(f);
}

int close(int fd)
{
	pc_active();
	if (fd >= 0 && fd < PC_MAXFD)
		atomic_store(&pc_fds[fd], NULL);
	return real.close(fd);
}

/* ---- writes -------------------------------------------------------------- */

static size_t pc_iovlen(const struct iovec *iov, int n)
{
	size_t t = 0;

	for (int i = 0; i < n; i++)
		t += iov[i].iov_len;
	return t;
}

ssize_t write(int fd, const void *buf, size_t n)
{
	if (pc_active())
		pc_guard_write(fd, -1, n);
	return real.write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	if (pc_active())
		pc_guard_write(fd, off, n);
	return real.pwrite(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
	__attribute__((alias("pwrite")));

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	if (pc_active() && pc_fd_get(fd))
		pc_guard_write(fd, -1, pc_iovlen(iov, cnt));
	return real.writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	if (pc_active() && pc_fd_get(fd))
		pc_guard_write(fd, off, pc_iovlen(iov, cnt));
	return real.pwritev(fd, iov, cnt, off);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
	__attribute__((alias("pwritev")));

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int fl)
{
	if (pc_active() && pc_fd_get(fd))
		pc_guard_write(fd, off, pc_iovlen(iov, cnt));
	return real.pwritev2(fd, iov, cnt, off, fl);
}
ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int fl)
	__attribute__((alias("pwritev2")));

int ftruncate(int fd, off_t len)
{
	struct pc_fd *e;
	struct stat st;

	if (pc_active() && (e = pc_fd_get(fd)) && !e->dir &&
	    fstat(fd, &st) == 0 && len < st.st_size)
		pc_preimage(fd, e->ino, len, st.st_size - len);
	return real.ftruncate(fd, len);
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

int truncate(const char *path, off_t len)
{
	char rel[PATH_MAX];

	if (pc_active() && pc_rel(AT_FDCWD, path, rel, sizeof(rel))) {
		int fd = real.open(path, O_RDONLY | O_CLOEXEC);
		struct stat st;

		if (fd >= 0 && fstat(fd, &st) == 0 && len < st.st_size)
			pc_preimage(fd, st.st_ino, len, st.st_size - len);
		if (fd >= 0)
			real.close(fd);
	}
	return real.truncate(path, len);
}
int truncate64(const char *path, off_t len) __attribute__((alias("truncate")));

int fallocate(int fd, int mode, off_t off, off_t len)
{
	struct pc_fd *e;

	if (pc_active() && (e = pc_fd_get(fd)) && !e->dir) {
		char esc[3 * PATH_MAX];

		if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) {
			pcj_esc(esc, sizeof(esc), e->rel);
			pc_rec('X', pc_id(), "fallocate-shift %s", esc);
		} else if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
			pc_preimage(fd, e->ino, off, len);
		}
	}
	return real.fallocate(fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len)
	__attribute__((alias("fallocate")));

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct pc_fd *e;

	if (pc_active() && (e = pc_fd_get(fd)) && (prot & PROT_WRITE) &&
	    (flags & MAP_SHARED)) {
		char esc[3 * PATH_MAX];

		pcj_esc(esc, sizeof(esc), e->rel);
		pc_rec('X', pc_id(), "mmap-shared-write %s", esc);
	}
	return real.mmap(addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

/* ---- syncs --------------------------------------------------------------- */

static int pc_sync(int fd, int (*call)(int))
{
	char esc[3 * PATH_MAX];
	struct pc_fd *e;
	struct stat st;
	unsigned long id;
	int r, save;

	if (!pc_active() || !(e = pc_fd_get(fd)))
		return call(fd);
	id = pc_id();
	pc_rec('B', id, "");
	/* whatever was written before this is covered by the sync */
	if (fstat(fd, &st) < 0)
		return call(fd);
	r = call(fd);
	if (r != 0)
		return r;
	save = errno;
	pcj_esc(esc, sizeof(esc), e->rel);
	pc_rec('E', id, "%c %s %llu %lld", e->dir ? 'd' : 'f', esc,
	       (unsigned long long)st.st_ino, (long long)st.st_size);
	if (!e->dir)
		pc_hint_raise(st.st_ino, st.st_size);
	errno = save;
	return r;
}

int fsync(int fd)
{
	pc_active();
	return pc_sync(fd, real.fsync);
}

int fdatasync(int fd)
{
	pc_active();
	return pc_sync(fd, real.fdatasync);
}

/* ---- directory entries ---------------------------------------------------- */

int renameat2(int ofd, const char *old, int nfd, const char *new, unsigned fl)
{
	char orel[PATH_MAX], nrel[PATH_MAX], oesc[3 * PATH_MAX], nesc[3 * PATH_MAX];
	struct stat ost, nst;
	bool oin, nin, had_new;
	int r, save;

	if (!pc_active())
		return real.renameat2(ofd, old, nfd, new, fl);
	oin = pc_rel(ofd, old, orel, sizeof(orel));
	nin = pc_rel(nfd, new, nrel, sizeof(nrel));
	if (!oin && !nin)
		return real.renameat2(ofd, old, nfd, new, fl);
	pcj_esc(oesc, sizeof(oesc), oin ? orel : old);
	pcj_esc(nesc, sizeof(nesc), nin ? nrel : new);
	if (oin != nin || (fl & RENAME_EXCHANGE) ||
	    fstatat(ofd, old, &ost, AT_SYMLINK_NOFOLLOW) < 0) {
		r = real.renameat2(ofd, old, nfd, new, fl);
		if (r == 0)
			pc_rec('X', pc_id(), "rename %s %s", oesc, nesc);
		return r;
	}
	had_new = fstatat(nfd, new, &nst, AT_SYMLINK_NOFOLLOW) == 0;
	if (had_new && !S_ISDIR(nst.st_mode))
		pc_grave_link(nfd, new, nst.st_ino);
	r = real.renameat2(ofd, old, nfd, new, fl);
	if (r != 0)
		return r;
	save = errno;
	if (S_ISDIR(ost.st_mode))
		pc_rec('X', pc_id(), "rename-dir %s %s", oesc, nesc);
	else
		pc_rec('R', pc_id(), "%s %s %llu", oesc, nesc,
		       (unsigned long long)ost.st_ino);
	errno = save;
	return r;
}

int renameat(int ofd, const char *old, int nfd, const char *new)
{
	return renameat2(ofd, old, nfd, new, 0);
}

int rename(const char *old, const char *new)
{
	return renameat2(AT_FDCWD, old, AT_FDCWD, new, 0);
}

int unlinkat(int dirfd, const char *path, int flags)
{
	char rel[PATH_MAX], esc[3 * PATH_MAX];
	struct stat st;
	int r, save;

	if (!pc_active() || !pc_rel(dirfd, path, rel, sizeof(rel)))
		return real.unlinkat(dirfd, path, flags);
	if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return real.unlinkat(dirfd, path, flags);
	if (!(flags & AT_REMOVEDIR) && !S_ISDIR(st.st_mode))
		pc_grave_link(dirfd, path, st.st_ino);
	r = real.unlinkat(dirfd, path, flags);
	if (r != 0)
		return r;
	save = errno;
	pcj_esc(esc, sizeof(esc), rel);
	if (flags & AT_REMOVEDIR)
		pc_rec('X', pc_id(), "rmdir %s", esc);
	else
		pc_rec('U', pc_id(), "%s %llu", esc, (unsigned long long)st.st_ino);
	errno = save;
	return r;
}

int unlink(const char *path)
{
	return unlinkat(AT_FDCWD, path, 0);
}

int rmdir(const char *path)
{
	return unlinkat(AT_FDCWD, path, AT_REMOVEDIR);
}

int linkat(int ofd, const char *old, int nfd, const char *new, int flags)
{
	char orel[PATH_MAX], nrel[PATH_MAX], oesc[3 * PATH_MAX], nesc[3 * PATH_MAX];
	bool oin, nin;
	struct stat st;
	int r, save;

	if (!pc_active())
		return real.linkat(ofd, old, nfd, new, flags);
	oin = pc_rel(ofd, old, orel, sizeof(orel));
	nin = pc_rel(nfd, new, nrel, sizeof(nrel));
	r = real.linkat(ofd, old, nfd, new, flags);
	if (r != 0 || !nin)
		return r;
	save = errno;
	pcj_esc(oesc, sizeof(oesc), oin ? orel : old);
	pcj_esc(nesc, sizeof(nesc), nrel);
	if (!oin || fstatat(nfd, new, &st, AT_SYMLINK_NOFOLLOW) < 0)
		pc_rec('X', pc_id(), "link %s %s", oesc, nesc);
	else
		pc_rec('L', pc_id(), "%s %s %llu", oesc, nesc,
		       (unsigned long long)st.st_ino);
	errno = save;
	return r;
}

int link(const char *old, const char *new)
{
	return linkat(AT_FDCWD, old, AT_FDCWD, new, 0);
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
	char rel[PATH_MAX], esc[3 * PATH_MAX];
	int r = (pc_active(), real.mkdirat(dirfd, path, mode));

	if (r == 0 && atomic_load(&pc_on) && pc_rel(dirfd, path, rel, sizeof(rel))) {
		int save = errno;

		struct stat st;

		pcj_esc(esc, sizeof(esc), rel);
		if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
			abort();
		pc_rec('M', pc_id(), "%s %llu", esc, (unsigned long long)st.st_ino);
		errno = save;
	}
	return r;
}

int mkdir(const char *path, mode_t mode)
{
	return mkdirat(AT_FDCWD, path, mode);
}

int symlinkat(const char *target, int dirfd, const char *path)
{
	char rel[PATH_MAX], esc[3 * PATH_MAX];
	int r = (pc_active(), real.symlinkat(target, dirfd, path));

	if (r == 0 && atomic_load(&pc_on) && pc_rel(dirfd, path, rel, sizeof(rel))) {
		int save = errno;

		pcj_esc(esc, sizeof(esc), rel);
		pc_rec('X', pc_id(), "symlink %s", esc);
		errno = save;
	}
	return r;
}

int symlink(const char *target, const char *path)
{
	return symlinkat(target, AT_FDCWD, path);
}
