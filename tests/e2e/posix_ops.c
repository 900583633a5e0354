/* SPDX-License-Identifier: MIT */
/*
 * tests/e2e/posix_ops.c - POSIX operations against a mounted branch.
 *
 *   build/tests/e2e/posix_ops DIR [TEST-GLOB]      (or BFS_TEST_DIR=DIR)
 *
 * DIR is a directory on the filesystem under test (tests/e2e/posix_ops.sh
 * passes MNT/main).  Every test works in its own subdirectory of
 * DIR/posix_ops.<pid>, left in place for the caller to inspect or remove.
 * Data is pseudo-random from a seed that is printed; BFS_SEED=N replays.
 * Links with cmocka only: it knows nothing of branchfs internals, so it
 * also runs against any local filesystem (e.g. DIR=/tmp/x) as a sanity
 * check of the test itself.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define KiB (1024ll)
#define MiB (1024ll * KiB)
#define GiB (1024ll * MiB)
#define BLK 8192 /* branchfs block size */
#define FUSE_SUPER_MAGIC 0x65735546

static int g_root = -1;
static char g_base[PATH_MAX];
static uint64_t g_rng;

/* ---- helpers ------------------------------------------------------------ */

/* A system call that must succeed; evaluates to its result. */
#define SYS(x)                                                                 \
	({                                                                     \
		long _r = (long)(x);                                           \
		if (_r < 0)                                                    \
			fail_msg("line %d: %s: %s", __LINE__, #x,              \
				 strerror(errno));                             \
		_r;                                                            \
	})

/* A system call that must fail with errno @e. */
#define ERR(x, e)                                                              \
	do {                                                                   \
		errno = 0;                                                     \
		long _r = (long)(x);                                           \
		int _e = errno;                                                \
		if (_r != -1 || _e != (e))                                     \
			fail_msg("line %d: %s: returned %ld errno %d (%s), "   \
				 "expected errno %d (%s)",                     \
				 __LINE__, #x, _r, _e, strerror(_e), (e),      \
				 strerror(e));                                 \
	} while (0)

/* A condition that must hold; the message says what was seen. */
#define CHECK(c, fmt, ...)                                                     \
	do {                                                                   \
		if (!(c))                                                      \
			fail_msg("line %d: " fmt, __LINE__, ##__VA_ARGS__);    \
	} while (0)

static uint64_t rnd(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return g_rng;
}

static void fill_random(void *buf, size_t n)
{
	unsigned char *p = buf;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		uint64_t v = rnd();
		memcpy(p + i, &v, 8);
	}
	for (; i < n; i++)
		p[i] = (unsigned char)rnd();
}

/* Compressible bytes: numbered text lines. */
static void fill_text(void *buf, size_t n, size_t start)
{
	char line[64];
	char *p = buf;
	size_t done = 0, k = start;

	while (done < n) {
		int len = snprintf(line, sizeof(line),
				   "line %010zu of highly compressible text\n", k++);
		size_t c = (size_t)len < n - done ? (size_t)len : n - done;
		memcpy(p + done, line, c);
		done += c;
	}
}

static void *xmalloc(size_t n)
{
	void *p = calloc(1, n ? n : 1);

	if (!p)
		fail_msg("out of memory (%zu bytes)", n);
	return p;
}

/* Work in a fresh subdirectory named after the test. */
static void enter(const char *name)
{
	SYS(mkdir(name, 0755));
	SYS(chdir(name));
}

static int leave(void **state)
{
	(void)state;
	if (fchdir(g_root) < 0)
		return -1;
	return 0;
}

static void pwrite_all(int fd, const void *buf, size_t n, off_t off)
{
	const char *p = buf;

	while (n > 0) {
		ssize_t w = pwrite(fd, p, n, off);
		if (w < 0)
			fail_msg("pwrite(%zu bytes at %lld): %s", n, (long long)off,
				 strerror(errno));
		if (w == 0)
			fail_msg("pwrite at %lld wrote nothing", (long long)off);
		p += w;
		n -= (size_t)w;
		off += w;
	}
}

/* Read up to @n bytes at @off until EOF; returns the count. */
static size_t pread_full(int fd, void *buf, size_t n, off_t off)
{
	char *p = buf;
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, p + done, n - done, off + (off_t)done);
		if (r < 0)
			fail_msg("pread(%zu bytes at %lld): %s", n - done,
				 (long long)(off + (off_t)done), strerror(errno));
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return done;
}

static void pread_exact(int fd, void *buf, size_t n, off_t off)
{
	size_t got = pread_full(fd, buf, n, off);

	if (got != n)
		fail_msg("short read at %lld: %zu of %zu bytes", (long long)off,
			 got, n);
}

/* Compare and name the first differing file offset. */
static void check_bytes(const char *what, const void *got, const void *want,
			size_t n, off_t base)
{
	const unsigned char *g = got, *w = want;
	size_t i;

	if (memcmp(g, w, n) == 0)
		return;
	for (i = 0; i < n && g[i] == w[i]; i++)
		;
	fail_msg("%s: first difference at file offset %lld: got 0x%02x, want "
		 "0x%02x (%zu bytes compared)",
		 what, (long long)(base + (off_t)i), g[i], w[i], n);
}

static void check_zero(const char *what, const void *buf, size_t n, off_t base)
{
	const unsigned char *b = buf;
	size_t i;

	for (i = 0; i < n; i++)
		if (b[i])
			fail_msg("%s: byte at file offset %lld is 0x%02x, want 0",
				 what, (long long)(base + (off_t)i), b[i]);
}

/* Check that file @fd holds @want[0..n) at @off. */
static void check_file(const char *what, int fd, const void *want, size_t n,
		       off_t off)
{
	char *got = xmalloc(n);

	pread_exact(fd, got, n, off);
	check_bytes(what, got, want, n, off);
	free(got);
}

static void check_path(const char *path, const void *want, size_t n)
{
	int fd = (int)SYS(open(path, O_RDONLY));
	char *got = xmalloc(n + 1);
	size_t r = pread_full(fd, got, n + 1, 0);

	if (r != n)
		fail_msg("%s: %zu bytes, want %zu", path, r, n);
	check_bytes(path, got, want, n, 0);
	free(got);
	close(fd);
}

static void make_file(const char *path, const void *buf, size_t n)
{
	int fd = (int)SYS(open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644));

	if (n)
		pwrite_all(fd, buf, n, 0);
	SYS(close(fd));
}

static void make_str(const char *path, const char *s)
{
	make_file(path, s, strlen(s));
}

static struct stat st_path(const char *path)
{
	struct stat st;

	SYS(lstat(path, &st));
	return st;
}

static struct stat st_fd(int fd)
{
	struct stat st;

	SYS(fstat(fd, &st));
	return st;
}

static void expect_missing(const char *path)
{
	struct stat st;

	ERR(lstat(path, &st), ENOENT);
}

static long long now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec;
}

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int ts_cmp(struct timespec a, struct timespec b)
{
	if (a.tv_sec != b.tv_sec)
		return a.tv_sec < b.tv_sec ? -1 : 1;
	if (a.tv_nsec != b.tv_nsec)
		return a.tv_nsec < b.tv_nsec ? -1 : 1;
	return 0;
}

static void set_old_times(const char *path)
{
	struct timespec old[2] = { { 1000000000, 0 }, { 1000000000, 0 } };

	SYS(utimensat(AT_FDCWD, path, old, AT_SYMLINK_NOFOLLOW));
}

/* The time was moved forward from set_old_times() to about now. */
static void expect_recent(const char *what, struct timespec t)
{
	long long now = now_sec();

	if (t.tv_sec < now - 5 || t.tv_sec > now + 5)
		fail_msg("%s: time %lld is not about now (%lld)", what,
			 (long long)t.tv_sec, now);
}

static bool is_root(void)
{
	return geteuid() == 0;
}

/* ---- create and open ---------------------------------------------------- */

static void test_create_excl(void **state)
{
	struct stat st;
	int fd;

	(void)state;
	enter("create_excl");
	fd = (int)SYS(open("f", O_CREAT | O_EXCL | O_WRONLY, 0644));
	st = st_fd(fd);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0644);
	assert_int_equal(st.st_size, 0);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(st.st_uid, geteuid());
	assert_int_equal(st.st_gid, getegid());
	SYS(close(fd));

	ERR(open("f", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
	SYS(mkdir("d", 0755));
	ERR(open("d", O_CREAT | O_EXCL | O_RDWR, 0644), EEXIST);
	SYS(symlink("nonexistent", "dangling"));
	ERR(open("dangling", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
	expect_missing("nonexistent");
	ERR(open("missing", O_RDONLY), ENOENT);

	/* O_CREAT without O_EXCL opens the existing file as it is. */
	make_str("g", "abc");
	fd = (int)SYS(open("g", O_CREAT | O_RDWR, 0600));
	st = st_fd(fd);
	assert_int_equal(st.st_size, 3);
	assert_int_equal(st.st_mode & 07777, 0644);
	SYS(close(fd));

	ERR(open("d", O_WRONLY), EISDIR);
	ERR(open("g", O_RDONLY | O_DIRECTORY), ENOTDIR);
	ERR(open("g/x", O_RDONLY), ENOTDIR);
	ERR(open("g/x", O_CREAT | O_WRONLY, 0644), ENOTDIR);

	/* The mode is honoured (under umask 0). */
	umask(0);
	fd = (int)SYS(open("m", O_CREAT | O_EXCL | O_WRONLY, 0751));
	umask(022);
	assert_int_equal(st_fd(fd).st_mode & 07777, 0751);
	SYS(close(fd));
	/* ... and masked by the umask. */
	fd = (int)SYS(open("u", O_CREAT | O_EXCL | O_WRONLY, 0777));
	assert_int_equal(st_fd(fd).st_mode & 07777, 0755);
	SYS(close(fd));

	/* Distinct files have distinct inode numbers on one device. */
	assert_int_not_equal(st_path("f").st_ino, st_path("g").st_ino);
	assert_int_equal(st_path("f").st_dev, st_path("g").st_dev);
}

static void test_open_trunc(void **state)
{
	char buf[20000], got[16];
	struct stat st;
	int fd;

	(void)state;
	enter("open_trunc");
	fill_random(buf, sizeof(buf));
	make_file("f", buf, sizeof(buf));
	set_old_times("f");

	fd = (int)SYS(open("f", O_WRONLY | O_TRUNC));
	st = st_fd(fd);
	assert_int_equal(st.st_size, 0);
	SYS(close(fd));
	st = st_path("f");
	assert_int_equal(st.st_size, 0);
	assert_int_equal(st.st_blocks, 0);
	expect_recent("mtime after O_TRUNC", st.st_mtim);

	fd = (int)SYS(open("f", O_RDONLY));
	assert_int_equal(SYS(read(fd, got, sizeof(got))), 0);
	SYS(close(fd));

	make_file("f", buf, sizeof(buf));
	fd = (int)SYS(open("f", O_RDWR | O_TRUNC));
	pwrite_all(fd, "xyz", 3, 0);
	assert_int_equal(pread_full(fd, got, sizeof(got), 0), 3);
	assert_memory_equal(got, "xyz", 3);
	assert_int_equal(st_fd(fd).st_size, 3);
	SYS(close(fd));
	check_path("f", "xyz", 3);

	/* O_TRUNC through a second descriptor while a first is open. */
	make_file("g", buf, sizeof(buf));
	fd = (int)SYS(open("g", O_RDONLY));
	{
		int t = (int)SYS(open("g", O_WRONLY | O_TRUNC));
		SYS(close(t));
	}
	assert_int_equal(SYS(pread(fd, got, sizeof(got), 0)), 0);
	assert_int_equal(st_fd(fd).st_size, 0);
	SYS(close(fd));
}

static void test_open_append(void **state)
{
	char big[10000], want[10020];
	int fd, fd2;

	(void)state;
	enter("open_append");
	make_str("f", "abc");
	fd = (int)SYS(open("f", O_WRONLY | O_APPEND));
	SYS(lseek(fd, 0, SEEK_SET));
	assert_int_equal(SYS(write(fd, "def", 3)), 3);
	SYS(close(fd));
	check_path("f", "abcdef", 6);

	fd = (int)SYS(open("f", O_WRONLY | O_APPEND));
	fd2 = (int)SYS(open("f", O_WRONLY | O_APPEND));
	assert_int_equal(SYS(write(fd, "1", 1)), 1);
	assert_int_equal(SYS(write(fd2, "2", 1)), 1);
	assert_int_equal(SYS(write(fd, "3", 1)), 1);
	/* Linux: pwrite on an O_APPEND descriptor appends. */
	assert_int_equal(SYS(pwrite(fd2, "P", 1, 0)), 1);
	check_path("f", "abcdef123P", 10);

	/* An append that crosses block boundaries. */
	fill_random(big, sizeof(big));
	assert_int_equal(SYS(write(fd, big, sizeof(big))), sizeof(big));
	SYS(close(fd));
	SYS(close(fd2));
	memcpy(want, "abcdef123P", 10);
	memcpy(want + 10, big, sizeof(big));
	check_path("f", want, 10 + sizeof(big));

	/* O_APPEND with O_CREAT on a new file. */
	fd = (int)SYS(open("n", O_CREAT | O_WRONLY | O_APPEND, 0644));
	assert_int_equal(SYS(write(fd, "x", 1)), 1);
	assert_int_equal(SYS(write(fd, "y", 1)), 1);
	SYS(close(fd));
	check_path("n", "xy", 2);
}

static void test_open_direct(void **state)
{
	unsigned char *buf = NULL, *got = NULL;
	int fd;

	(void)state;
	enter("open_direct");
	assert_int_equal(posix_memalign((void **)&buf, 4096, 4 * BLK), 0);
	assert_int_equal(posix_memalign((void **)&got, 4096, 4 * BLK), 0);
	fill_random(buf, 4 * BLK);

	fd = (int)SYS(open("f", O_CREAT | O_RDWR | O_DIRECT, 0644));
	assert_int_equal(SYS(pwrite(fd, buf, 2 * BLK, BLK)), 2 * BLK);
	memset(got, 0xee, 4 * BLK);
	assert_int_equal(SYS(pread(fd, got, 2 * BLK, BLK)), 2 * BLK);
	check_bytes("O_DIRECT read back", got, buf, 2 * BLK, BLK);
	/* a 4 KiB read straddling the hole and the data */
	assert_int_equal(SYS(pread(fd, got, 8192, 4096)), 8192);
	check_zero("hole before O_DIRECT data", got, 4096, 4096);
	check_bytes("O_DIRECT data", got + 4096, buf, 4096, BLK);
	assert_int_equal(st_fd(fd).st_size, 3 * BLK);
	SYS(close(fd));

	/* The same data through the page cache. */
	fd = (int)SYS(open("f", O_RDONLY));
	assert_int_equal(pread_full(fd, got, 4 * BLK, 0), 3 * BLK);
	check_zero("hole", got, BLK, 0);
	check_bytes("buffered read of O_DIRECT data", got + BLK, buf, 2 * BLK, BLK);
	SYS(close(fd));

	/* Buffered write, then O_DIRECT read sees it. */
	fd = (int)SYS(open("f", O_WRONLY));
	pwrite_all(fd, buf + 2 * BLK, BLK, 0);
	SYS(fsync(fd));
	SYS(close(fd));
	fd = (int)SYS(open("f", O_RDONLY | O_DIRECT));
	assert_int_equal(SYS(pread(fd, got, BLK, 0)), BLK);
	check_bytes("O_DIRECT read of buffered data", got, buf + 2 * BLK, BLK, 0);
	SYS(close(fd));
	free(buf);
	free(got);
}

static void test_open_sync(void **state)
{
	char buf[10000];
	int fd;

	(void)state;
	enter("open_sync");
	fill_random(buf, sizeof(buf));
	fd = (int)SYS(open("f", O_CREAT | O_RDWR | O_SYNC, 0644));
	pwrite_all(fd, buf, sizeof(buf), 3);
	check_file("O_SYNC", fd, buf, sizeof(buf), 3);
	SYS(close(fd));
	fd = (int)SYS(open("f", O_RDWR | O_DSYNC));
	pwrite_all(fd, buf, 100, 8190);
	check_file("O_DSYNC", fd, buf, 100, 8190);
	SYS(close(fd));
}

/* ---- data --------------------------------------------------------------- */

static void test_rw_offsets(void **state)
{
	static const struct {
		long long off, len;
	} fixed[] = {
		{ 0, 1 },	 { 1, 7 },	       { 8191, 1 },
		{ 8191, 2 },	 { 8190, 5 },	       { 16383, 8194 },
		{ 5000, 30000 }, { 3 * BLK + 17, 2 * BLK }, { 99999, 1 },
		{ 150001, 49999 }, { 12345, 1 },      { 8192, 8192 },
		{ 65536, 131072 },
	};
	const size_t N = 200000;
	unsigned char *mirror = xmalloc(N), *buf = xmalloc(N), *got = xmalloc(N + 100);
	size_t size = 0, i;
	int fd;

	(void)state;
	enter("rw_offsets");
	fd = (int)SYS(open("f", O_CREAT | O_RDWR, 0644));
	for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]) + 300; i++) {
		size_t off, len;

		if (i < sizeof(fixed) / sizeof(fixed[0])) {
			off = (size_t)fixed[i].off;
			len = (size_t)fixed[i].len;
		} else {
			off = rnd() % N;
			len = 1 + rnd() % 20000;
		}
		if (off + len > N)
			len = N - off;
		fill_random(buf, len);
		pwrite_all(fd, buf, len, (off_t)off);
		memcpy(mirror + off, buf, len);
		if (off + len > size)
			size = off + len;
		/* read back around the write: edges and neighbours */
		{
			size_t lo = off > 100 ? off - 100 : 0;
			size_t hi = off + len + 100 < size ? off + len + 100 : size;
			assert_int_equal(pread_full(fd, got, hi - lo, (off_t)lo), hi - lo);
			check_bytes("read around a write", got, mirror + lo, hi - lo,
				    (off_t)lo);
		}
	}
	assert_int_equal(st_fd(fd).st_size, size);
	assert_int_equal(pread_full(fd, got, N + 100, 0), size);
	check_bytes("whole file", got, mirror, size, 0);

	/* random reads, some past EOF */
	for (i = 0; i < 300; i++) {
		size_t off = rnd() % (size + 1000), len = 1 + rnd() % 30000;
		size_t want = off >= size ? 0 : (off + len > size ? size - off : len);
		assert_int_equal(pread_full(fd, got, len, (off_t)off), want);
		if (want)
			check_bytes("random read", got, mirror + off, want, (off_t)off);
	}
	assert_int_equal(SYS(pread(fd, got, 10, (off_t)size)), 0);
	assert_int_equal(SYS(pread(fd, got, 10, (off_t)size + 100000)), 0);

	/* sequential reads of an odd size through a fresh descriptor */
	SYS(close(fd));
	fd = (int)SYS(open("f", O_RDONLY));
	{
		size_t pos = 0;
		ssize_t r;
		while ((r = read(fd, got + pos, 777)) > 0)
			pos += (size_t)r;
		assert_true(r == 0);
		assert_int_equal(pos, size);
		check_bytes("sequential 777-byte reads", got, mirror, size, 0);
	}
	SYS(close(fd));

	/* one large write and read (split into many FUSE requests) */
	{
		size_t big = 4 * MiB + 123;
		unsigned char *b = xmalloc(big), *g = xmalloc(big);
		fill_random(b, big);
		fd = (int)SYS(open("big", O_CREAT | O_RDWR, 0644));
		assert_int_equal(SYS(pwrite(fd, b, big, 1)), big);
		assert_int_equal(pread_full(fd, g, big, 1), big);
		check_bytes("4 MiB write", g, b, big, 1);
		SYS(close(fd));
		free(b);
		free(g);
	}
	free(mirror);
	free(buf);
	free(got);
}

static void test_write_gap_reads_zero(void **state)
{
	char buf[100], got[3 * BLK];
	int fd;

	(void)state;
	enter("write_gap");
	fill_random(buf, sizeof(buf));
	fd = (int)SYS(open("f", O_CREAT | O_RDWR, 0644));
	pwrite_all(fd, buf, 10, 0);
	pwrite_all(fd, buf, 100, 2 * BLK + 50);
	assert_int_equal(st_fd(fd).st_size, 2 * BLK + 150);
	assert_int_equal(pread_full(fd, got, sizeof(got), 0), 2 * BLK + 150);
	check_bytes("head", got, buf, 10, 0);
	check_zero("gap", got + 10, 2 * BLK + 40, 10);
	check_bytes("tail", got + 2 * BLK + 50, buf, 100, 2 * BLK + 50);
	SYS(close(fd));
}

static void test_large_sparse(void **state)
{
	const off_t x = 5 * GiB + 123, far = 100 * GiB + 4000;
	char got[BLK], buf[BLK];
	struct stat st;
	int fd;

	(void)state;
	enter("large_sparse");
	fd = (int)SYS(open("f", O_CREAT | O_RDWR, 0644));
	assert_int_equal(SYS(pwrite(fd, "X", 1, x)), 1);
	st = st_fd(fd);
	assert_int_equal(st.st_size, x + 1);
	CHECK(st.st_blocks <= 64, "st_blocks %lld for one byte at 5 GiB",
	      (long long)st.st_blocks);
	pread_exact(fd, got, 1, x);
	assert_int_equal(got[0], 'X');
	pread_exact(fd, got, 4096, 4 * GiB);
	check_zero("read at 4 GiB", got, 4096, 4 * GiB);
	assert_int_equal(pread_full(fd, got, 100, x - 50), 51);
	check_zero("before X", got, 50, x - 50);
	assert_int_equal(got[50], 'X');

	/* a write across the 4 GiB line */
	pwrite_all(fd, "0123456789", 10, 4 * GiB - 5);
	check_file("across 4 GiB", fd, "0123456789", 10, 4 * GiB - 5);
	pread_exact(fd, got, 10, 4 * GiB - 15);
	check_zero("before 4 GiB write", got, 10, 4 * GiB - 15);

	/* far away and unaligned */
	fill_random(buf, sizeof(buf));
	pwrite_all(fd, buf, sizeof(buf), far);
	check_file("at 100 GiB", fd, buf, sizeof(buf), far);
	assert_int_equal(st_fd(fd).st_size, far + BLK);
	check_file("4 GiB again", fd, "0123456789", 10, 4 * GiB - 5);
	pread_exact(fd, got, 1, x);
	assert_int_equal(got[0], 'X');
	SYS(fsync(fd));
	st = st_fd(fd);
	CHECK(st.st_blocks * 512 <= 16 * BLK,
	      "st_blocks %lld for 3 small writes in a 100 GiB file",
	      (long long)st.st_blocks);

	/* truncate down below the data, then up again: zeros */
	SYS(ftruncate(fd, 3 * GiB));
	assert_int_equal(st_fd(fd).st_size, 3 * GiB);
	assert_int_equal(SYS(pread(fd, got, 10, x)), 0);
	SYS(ftruncate(fd, 6 * GiB));
	pread_exact(fd, got, 10, 4 * GiB - 5);
	check_zero("4 GiB after truncate down and up", got, 10, 4 * GiB - 5);
	pread_exact(fd, got, 1, x);
	assert_int_equal(got[0], 0);
	SYS(close(fd));
	assert_int_equal(st_path("f").st_size, 6 * GiB);
}

static void test_truncate(void **state)
{
	char buf[30000], got[30000];
	struct stat st;
	int fd;

	(void)state;
	enter("truncate");
	memset(buf, 0xab, 20000);
	make_file("f", buf, 20000);
	SYS(truncate("f", 10000));
	assert_int_equal(st_path("f").st_size, 10000);
	check_path("f", buf, 10000);
	SYS(truncate("f", 30000));
	memset(buf + 10000, 0, 20000);
	check_path("f", buf, 30000);

	/* down into a block, then up: the block's tail reads zeros */
	memset(buf, 0xcd, BLK);
	make_file("g", buf, BLK);
	fd = (int)SYS(open("g", O_RDWR));
	SYS(ftruncate(fd, 100));
	SYS(ftruncate(fd, BLK));
	pread_exact(fd, got, BLK, 0);
	check_bytes("kept", got, buf, 100, 0);
	check_zero("regrown", got + 100, BLK - 100, 100);
	SYS(close(fd));

	/* down into a block, then a write past EOF: the gap reads zeros */
	memset(buf, 0xee, 3 * BLK);
	make_file("h", buf, 3 * BLK);
	fd = (int)SYS(open("h", O_RDWR));
	SYS(ftruncate(fd, 8200));
	pwrite_all(fd, "Z", 1, 20000);
	assert_int_equal(st_fd(fd).st_size, 20001);
	pread_exact(fd, got, 20001, 0);
	check_bytes("kept", got, buf, 8200, 0);
	check_zero("gap after truncate", got + 8200, 20000 - 8200, 8200);
	assert_int_equal(got[20000], 'Z');
	SYS(close(fd));

	/* boundaries */
	memset(buf, 0x11, 3 * BLK);
	make_file("b", buf, 3 * BLK);
	SYS(truncate("b", BLK));
	check_path("b", buf, BLK);
	SYS(truncate("b", BLK + 1));
	buf[BLK] = 0;
	check_path("b", buf, BLK + 1);
	SYS(truncate("b", 0));
	st = st_path("b");
	assert_int_equal(st.st_size, 0);
	assert_int_equal(st.st_blocks, 0);

	/* growing costs nothing */
	SYS(truncate("b", 64 * MiB));
	st = st_path("b");
	assert_int_equal(st.st_size, 64 * MiB);
	CHECK(st.st_blocks <= 16, "st_blocks %lld after truncate up",
	      (long long)st.st_blocks);

	/* times */
	set_old_times("f");
	SYS(truncate("f", 5));
	st = st_path("f");
	expect_recent("mtime after truncate", st.st_mtim);
	expect_recent("ctime after truncate", st.st_ctim);

	SYS(mkdir("d", 0755));
	ERR(truncate("d", 0), EISDIR);
	ERR(truncate("f", -1), EINVAL);
	ERR(truncate("missing", 0), ENOENT);
}

/* ---- attributes --------------------------------------------------------- */

static void test_chmod_chown(void **state)
{
	struct stat st, before;
	int fd;

	(void)state;
	enter("chmod_chown");
	make_str("f", "data");
	before = st_path("f");
	nap_ms(20);
	SYS(chmod("f", 0640));
	st = st_path("f");
	assert_int_equal(st.st_mode & 07777, 0640);
	assert_true(S_ISREG(st.st_mode));
	CHECK(ts_cmp(st.st_ctim, before.st_ctim) > 0, "ctime not advanced by chmod");

	fd = (int)SYS(open("f", O_RDWR));
	SYS(fchmod(fd, 04755));
	assert_int_equal(st_fd(fd).st_mode & 07777, 04755);
	SYS(fchmod(fd, 0600));
	SYS(mkdir("d", 0755));
	SYS(chmod("d", 01777));
	st = st_path("d");
	assert_int_equal(st.st_mode & 07777, 01777);
	assert_true(S_ISDIR(st.st_mode));

	if (!is_root()) {
		SYS(close(fd));
		return;
	}
	SYS(chown("f", 1234, 5678));
	st = st_path("f");
	assert_int_equal(st.st_uid, 1234);
	assert_int_equal(st.st_gid, 5678);
	SYS(fchown(fd, (uid_t)-1, (gid_t)-1));
	st = st_fd(fd);
	assert_int_equal(st.st_uid, 1234);
	assert_int_equal(st.st_gid, 5678);
	SYS(fchown(fd, (uid_t)-1, 42));
	st = st_fd(fd);
	assert_int_equal(st.st_uid, 1234);
	assert_int_equal(st.st_gid, 42);
	SYS(close(fd));

	SYS(symlink("f", "s"));
	SYS(lchown("s", 111, 222));
	st = st_path("s");
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(st.st_uid, 111);
	assert_int_equal(st.st_gid, 222);
	st = st_path("f");
	assert_int_equal(st.st_uid, 1234);
	/* chown through the symlink changes the target */
	SYS(chown("s", 7, 8));
	assert_int_equal(st_path("f").st_uid, 7);
	assert_int_equal(st_path("s").st_uid, 111);

	SYS(chown("d", 99, 98));
	st = st_path("d");
	assert_int_equal(st.st_uid, 99);
	assert_int_equal(st.st_gid, 98);
	assert_int_equal(st.st_mode & 07777, 01777);
	ERR(chmod("missing", 0644), ENOENT);
}

static void test_utimens(void **state)
{
	struct timespec ts[2] = { { 1000000000, 123456789 }, { 1100000000, 987654321 } };
	struct stat st;
	int fd;

	(void)state;
	enter("utimens");
	make_str("f", "x");
	SYS(utimensat(AT_FDCWD, "f", ts, 0));
	st = st_path("f");
	assert_int_equal(st.st_atim.tv_sec, 1000000000);
	assert_int_equal(st.st_atim.tv_nsec, 123456789);
	assert_int_equal(st.st_mtim.tv_sec, 1100000000);
	assert_int_equal(st.st_mtim.tv_nsec, 987654321);

	/* UTIME_OMIT keeps, an explicit time sets */
	{
		struct timespec t[2] = { { 0, UTIME_OMIT }, { 1200000000, 5 } };
		SYS(utimensat(AT_FDCWD, "f", t, 0));
		st = st_path("f");
		assert_int_equal(st.st_atim.tv_sec, 1000000000);
		assert_int_equal(st.st_atim.tv_nsec, 123456789);
		assert_int_equal(st.st_mtim.tv_sec, 1200000000);
		assert_int_equal(st.st_mtim.tv_nsec, 5);
	}
	/* UTIME_NOW for mtime, UTIME_OMIT for atime */
	{
		struct timespec t[2] = { { 0, UTIME_OMIT }, { 0, UTIME_NOW } };
		SYS(utimensat(AT_FDCWD, "f", t, 0));
		st = st_path("f");
		assert_int_equal(st.st_atim.tv_sec, 1000000000);
		expect_recent("UTIME_NOW mtime", st.st_mtim);
	}
	/* UTIME_NOW for atime, explicit mtime */
	{
		struct timespec t[2] = { { 0, UTIME_NOW }, { 1300000000, 0 } };
		SYS(utimensat(AT_FDCWD, "f", t, 0));
		st = st_path("f");
		expect_recent("UTIME_NOW atime", st.st_atim);
		assert_int_equal(st.st_mtim.tv_sec, 1300000000);
	}
	/* NULL: both now */
	set_old_times("f");
	SYS(utimensat(AT_FDCWD, "f", NULL, 0));
	st = st_path("f");
	expect_recent("NULL atime", st.st_atim);
	expect_recent("NULL mtime", st.st_mtim);

	/* futimens */
	fd = (int)SYS(open("f", O_RDWR));
	SYS(futimens(fd, ts));
	st = st_fd(fd);
	assert_int_equal(st.st_mtim.tv_sec, 1100000000);
	assert_int_equal(st.st_mtim.tv_nsec, 987654321);

	/* a write moves mtime and ctime */
	pwrite_all(fd, "y", 1, 1);
	st = st_fd(fd);
	expect_recent("mtime after write", st.st_mtim);
	expect_recent("ctime after write", st.st_ctim);
	SYS(close(fd));

	/* times of a symlink itself */
	SYS(symlink("f", "s"));
	SYS(utimensat(AT_FDCWD, "f", ts, 0));
	{
		struct timespec t[2] = { { 1400000000, 0 }, { 1400000000, 0 } };
		SYS(utimensat(AT_FDCWD, "s", t, AT_SYMLINK_NOFOLLOW));
	}
	assert_int_equal(st_path("s").st_mtim.tv_sec, 1400000000);
	assert_int_equal(st_path("f").st_mtim.tv_sec, 1100000000);

	/* directory mtime follows its entries */
	SYS(mkdir("d", 0755));
	set_old_times("d");
	make_str("d/new", "n");
	expect_recent("dir mtime after create", st_path("d").st_mtim);
	set_old_times("d");
	SYS(rename("d/new", "d/renamed"));
	expect_recent("dir mtime after rename", st_path("d").st_mtim);
	set_old_times("d");
	SYS(unlink("d/renamed"));
	expect_recent("dir mtime after unlink", st_path("d").st_mtim);
	set_old_times("d");
	SYS(mkdir("d/sub", 0755));
	expect_recent("dir mtime after mkdir", st_path("d").st_mtim);
}

/* ---- special files ------------------------------------------------------ */

static void test_mknod(void **state)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	char buf[8];
	int r, w, srv, cli, acc;

	(void)state;
	enter("mknod");
	SYS(mkfifo("p", 0644));
	st = st_path("p");
	assert_true(S_ISFIFO(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0644);
	r = (int)SYS(open("p", O_RDONLY | O_NONBLOCK));
	w = (int)SYS(open("p", O_WRONLY | O_NONBLOCK));
	assert_int_equal(SYS(write(w, "hi", 2)), 2);
	assert_int_equal(SYS(read(r, buf, sizeof(buf))), 2);
	assert_memory_equal(buf, "hi", 2);
	SYS(close(w));
	SYS(close(r));
	ERR(mkfifo("p", 0644), EEXIST);
	ERR(mknod("p", S_IFIFO | 0600, 0), EEXIST);

	SYS(mknod("r", S_IFREG | 0600, 0));
	st = st_path("r");
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_size, 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	SYS(mknod("s", S_IFSOCK | 0600, 0));
	assert_true(S_ISSOCK(st_path("s").st_mode));

	if (is_root()) {
		SYS(mknod("c", S_IFCHR | 0600, makedev(1, 3)));
		st = st_path("c");
		assert_true(S_ISCHR(st.st_mode));
		assert_int_equal(major(st.st_rdev), 1);
		assert_int_equal(minor(st.st_rdev), 3);
		SYS(mknod("b", S_IFBLK | 0600, makedev(7, 300)));
		st = st_path("b");
		assert_true(S_ISBLK(st.st_mode));
		assert_int_equal(major(st.st_rdev), 7);
		assert_int_equal(minor(st.st_rdev), 300);
	}

	/* a unix socket bound on the filesystem works */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "sock");
	srv = (int)SYS(socket(AF_UNIX, SOCK_STREAM, 0));
	SYS(bind(srv, (struct sockaddr *)&sa, sizeof(sa)));
	SYS(listen(srv, 1));
	assert_true(S_ISSOCK(st_path("sock").st_mode));
	cli = (int)SYS(socket(AF_UNIX, SOCK_STREAM, 0));
	SYS(connect(cli, (struct sockaddr *)&sa, sizeof(sa)));
	acc = (int)SYS(accept(srv, NULL, NULL));
	assert_int_equal(SYS(write(cli, "ok", 2)), 2);
	assert_int_equal(SYS(read(acc, buf, sizeof(buf))), 2);
	assert_memory_equal(buf, "ok", 2);
	close(acc);
	close(cli);
	close(srv);
	SYS(unlink("sock"));
}

/* ---- directories -------------------------------------------------------- */

static void test_mkdir_rmdir(void **state)
{
	struct stat st;
	char path[4096];
	int i;

	(void)state;
	enter("mkdir_rmdir");
	SYS(mkdir("d", 0755));
	st = st_path("d");
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0755);
	assert_int_equal(st.st_nlink, 2);
	assert_int_equal(st.st_uid, geteuid());
	ERR(mkdir("d", 0755), EEXIST);

	SYS(mkdir("d/s", 0700));
	assert_int_equal(st_path("d/s").st_mode & 07777, 0700);
	assert_int_equal(st_path("d").st_nlink, 3);
	make_str("d/s/f", "f");
	ERR(rmdir("d/s"), ENOTEMPTY);
	ERR(rmdir("d"), ENOTEMPTY);
	SYS(unlink("d/s/f"));
	SYS(rmdir("d/s"));
	expect_missing("d/s");
	assert_int_equal(st_path("d").st_nlink, 2);
	SYS(rmdir("d"));
	expect_missing("d");

	make_str("f", "f");
	ERR(rmdir("f"), ENOTDIR);
	ERR(mkdir("f/x", 0755), ENOTDIR);
	ERR(mkdir("f", 0755), EEXIST);
	SYS(mkdir("e", 0755));
	ERR(unlink("e"), EISDIR);
	ERR(rmdir("missing"), ENOENT);
	ERR(mkdir("x/y", 0755), ENOENT);
	ERR(rmdir("e/."), EINVAL);

	/* a deep chain, removed from the bottom */
	strcpy(path, "deep");
	for (i = 0; i < 40; i++) {
		SYS(mkdir(path, 0755));
		strcat(path, "/a");
	}
	make_str("deep/a/a/a/a/a/a/a/a/a/a/file", "deep");
	check_path("deep/a/a/a/a/a/a/a/a/a/a/file", "deep", 4);
	SYS(unlink("deep/a/a/a/a/a/a/a/a/a/a/file"));
	for (i = 40; i > 0; i--) {
		path[strlen(path) - 2] = 0;
		SYS(rmdir(path));
	}
	expect_missing("deep");
}

static void test_unlink(void **state)
{
	(void)state;
	enter("unlink");
	make_str("f", "data");
	SYS(symlink("f", "s"));
	SYS(unlink("s"));
	expect_missing("s");
	check_path("f", "data", 4);
	SYS(unlink("f"));
	expect_missing("f");
	ERR(unlink("f"), ENOENT);
	ERR(open("f", O_RDONLY), ENOENT);
	make_str("f", "again");
	check_path("f", "again", 5);
}

/* ---- rename ------------------------------------------------------------- */

static void test_rename_plain(void **state)
{
	struct stat a, st;

	(void)state;
	enter("rename_plain");
	make_str("a", "AAA");
	a = st_path("a");
	SYS(rename("a", "b"));
	expect_missing("a");
	st = st_path("b");
	assert_int_equal(st.st_ino, a.st_ino);
	check_path("b", "AAA", 3);

	SYS(mkdir("d1", 0755));
	SYS(mkdir("d2", 0755));
	SYS(rename("b", "d1/b"));
	SYS(rename("d1/b", "d2/c"));
	check_path("d2/c", "AAA", 3);
	expect_missing("d1/b");

	/* to itself, and between two links of one inode: nothing happens */
	SYS(rename("d2/c", "d2/c"));
	check_path("d2/c", "AAA", 3);
	SYS(link("d2/c", "d2/h"));
	SYS(rename("d2/c", "d2/h"));
	check_path("d2/c", "AAA", 3);
	check_path("d2/h", "AAA", 3);
	assert_int_equal(st_path("d2/c").st_nlink, 2);

	/* a directory with contents to another parent */
	SYS(mkdir("d1/sub", 0755));
	make_str("d1/sub/x", "X");
	assert_int_equal(st_path("d1").st_nlink, 3);
	SYS(rename("d1/sub", "d2/sub"));
	check_path("d2/sub/x", "X", 1);
	expect_missing("d1/sub");
	assert_int_equal(st_path("d1").st_nlink, 2);
	assert_int_equal(st_path("d2").st_nlink, 3);
	assert_int_equal(st_path("d2/sub/..").st_ino, st_path("d2").st_ino);

	/* a directory renamed in place keeps its children */
	SYS(rename("d2/sub", "d2/sub2"));
	check_path("d2/sub2/x", "X", 1);

	ERR(rename("missing", "x"), ENOENT);
	ERR(rename("d2/c", "nodir/x"), ENOENT);
}

static void test_rename_over_existing(void **state)
{
	(void)state;
	enter("rename_over");
	make_str("a", "new");
	make_str("b", "old contents");
	SYS(rename("a", "b"));
	expect_missing("a");
	check_path("b", "new", 3);

	/* over an empty directory */
	SYS(mkdir("x", 0755));
	make_str("x/inner", "i");
	SYS(mkdir("y", 0755));
	SYS(rename("x", "y"));
	expect_missing("x");
	check_path("y/inner", "i", 1);

	/* over a non-empty directory, file over dir, dir over file */
	SYS(mkdir("p", 0755));
	errno = 0;
	if (rename("p", "y") != -1 || (errno != ENOTEMPTY && errno != EEXIST))
		fail_msg("rename over a non-empty dir: errno %d (%s)", errno,
			 strerror(errno));
	make_str("g", "g");
	ERR(rename("g", "y"), EISDIR);
	ERR(rename("p", "g"), ENOTDIR);
	check_path("g", "g", 1);
	check_path("y/inner", "i", 1);

	/* the replaced inode keeps its other links */
	make_str("c", "ccc");
	SYS(link("c", "c2"));
	make_str("e", "eee");
	SYS(rename("e", "c"));
	check_path("c", "eee", 3);
	check_path("c2", "ccc", 3);
	assert_int_equal(st_path("c2").st_nlink, 1);
	assert_int_equal(st_path("c").st_nlink, 1);
}

static void test_rename_over_open(void **state)
{
	char got[32];
	struct stat st;
	int fd;

	(void)state;
	enter("rename_over_open");
	make_str("b", "old data");
	fd = (int)SYS(open("b", O_RDWR));
	make_str("a", "new data!");
	SYS(rename("a", "b"));

	assert_int_equal(pread_full(fd, got, sizeof(got), 0), 8);
	assert_memory_equal(got, "old data", 8);
	st = st_fd(fd);
	assert_int_equal(st.st_nlink, 0);
	check_path("b", "new data!", 9);

	pwrite_all(fd, "X", 1, 0);
	pwrite_all(fd, "tail", 4, 20000);
	assert_int_equal(pread_full(fd, got, 8, 0), 8);
	assert_memory_equal(got, "Xld data", 8);
	pread_exact(fd, got, 4, 20000);
	assert_memory_equal(got, "tail", 4);
	SYS(fsync(fd));
	check_path("b", "new data!", 9);
	SYS(close(fd));
	check_path("b", "new data!", 9);
	expect_missing("a");
}

static void test_rename_noreplace(void **state)
{
	(void)state;
	enter("rename_noreplace");
	make_str("a", "A");
	make_str("b", "B");
	ERR(renameat2(AT_FDCWD, "a", AT_FDCWD, "b", RENAME_NOREPLACE), EEXIST);
	check_path("a", "A", 1);
	check_path("b", "B", 1);
	SYS(renameat2(AT_FDCWD, "a", AT_FDCWD, "c", RENAME_NOREPLACE));
	expect_missing("a");
	check_path("c", "A", 1);
	SYS(mkdir("d", 0755));
	ERR(renameat2(AT_FDCWD, "c", AT_FDCWD, "d", RENAME_NOREPLACE), EEXIST);
	ERR(renameat2(AT_FDCWD, "c", AT_FDCWD, "b", RENAME_NOREPLACE | RENAME_EXCHANGE),
	    EINVAL);
}

static void test_rename_exchange(void **state)
{
	struct stat a, d;

	(void)state;
	enter("rename_exchange");
	make_str("a", "AAAA");
	SYS(mkdir("d", 0755));
	make_str("d/child", "C");
	a = st_path("a");
	d = st_path("d");
	SYS(renameat2(AT_FDCWD, "a", AT_FDCWD, "d", RENAME_EXCHANGE));
	assert_true(S_ISDIR(st_path("a").st_mode));
	assert_int_equal(st_path("a").st_ino, d.st_ino);
	check_path("a/child", "C", 1);
	assert_true(S_ISREG(st_path("d").st_mode));
	assert_int_equal(st_path("d").st_ino, a.st_ino);
	check_path("d", "AAAA", 4);

	ERR(renameat2(AT_FDCWD, "a", AT_FDCWD, "missing", RENAME_EXCHANGE), ENOENT);
	ERR(renameat2(AT_FDCWD, "missing", AT_FDCWD, "a", RENAME_EXCHANGE), ENOENT);

	/* two files */
	make_str("f1", "one");
	make_str("f2", "two!");
	SYS(renameat2(AT_FDCWD, "f1", AT_FDCWD, "f2", RENAME_EXCHANGE));
	check_path("f1", "two!", 4);
	check_path("f2", "one", 3);

	/* a directory and a file in different parents: ".." and link counts */
	SYS(mkdir("x", 0755));
	SYS(mkdir("y", 0755));
	SYS(mkdir("x/sub", 0755));
	make_str("x/sub/in", "in");
	make_str("y/f", "file");
	SYS(renameat2(AT_FDCWD, "x/sub", AT_FDCWD, "y/f", RENAME_EXCHANGE));
	check_path("y/f/in", "in", 2);
	check_path("x/sub", "file", 4);
	assert_int_equal(st_path("y/f/..").st_ino, st_path("y").st_ino);
	assert_int_equal(st_path("x").st_nlink, 2);
	assert_int_equal(st_path("y").st_nlink, 3);

	/* two directories */
	SYS(mkdir("x/d1", 0755));
	make_str("x/d1/one", "1");
	SYS(mkdir("y/d2", 0755));
	make_str("y/d2/two", "2");
	SYS(renameat2(AT_FDCWD, "x/d1", AT_FDCWD, "y/d2", RENAME_EXCHANGE));
	check_path("x/d1/two", "2", 1);
	check_path("y/d2/one", "1", 1);
	assert_int_equal(st_path("x/d1/..").st_ino, st_path("x").st_ino);
	assert_int_equal(st_path("y/d2/..").st_ino, st_path("y").st_ino);
}

static void test_rename_into_subdir(void **state)
{
	(void)state;
	enter("rename_into_subdir");
	SYS(mkdir("d", 0755));
	SYS(mkdir("d/sub", 0755));
	make_str("d/sub/f", "f");
	ERR(rename("d", "d/sub/x"), EINVAL);
	ERR(rename("d", "d/x"), EINVAL);
	ERR(renameat2(AT_FDCWD, "d", AT_FDCWD, "d/sub", RENAME_EXCHANGE), EINVAL);
	check_path("d/sub/f", "f", 1);
	assert_int_equal(st_path("d/sub/..").st_ino, st_path("d").st_ino);
}

/* ---- links -------------------------------------------------------------- */

static void test_link(void **state)
{
	struct stat a, b;
	char name[32];
	int fd, i;

	(void)state;
	enter("link");
	make_str("a", "hello");
	SYS(link("a", "b"));
	a = st_path("a");
	b = st_path("b");
	assert_int_equal(a.st_ino, b.st_ino);
	assert_int_equal(a.st_nlink, 2);
	assert_int_equal(b.st_nlink, 2);

	fd = (int)SYS(open("b", O_WRONLY));
	pwrite_all(fd, "J", 1, 0);
	SYS(close(fd));
	check_path("a", "Jello", 5);

	SYS(unlink("a"));
	assert_int_equal(st_path("b").st_nlink, 1);
	check_path("b", "Jello", 5);

	make_str("c", "c");
	ERR(link("b", "c"), EEXIST);
	SYS(mkdir("d", 0755));
	ERR(link("d", "dl"), EPERM);
	ERR(link("missing", "x"), ENOENT);

	SYS(link("b", "d/b2"));
	assert_int_equal(st_path("b").st_nlink, 2);
	check_path("d/b2", "Jello", 5);

	for (i = 0; i < 10; i++) {
		snprintf(name, sizeof(name), "l%d", i);
		SYS(link("b", name));
	}
	assert_int_equal(st_path("b").st_nlink, 12);
	for (i = 0; i < 10; i++) {
		snprintf(name, sizeof(name), "l%d", i);
		SYS(unlink(name));
	}
	assert_int_equal(st_path("d/b2").st_nlink, 2);

	/* link() of a symlink links the symlink itself */
	SYS(symlink("b", "s"));
	SYS(link("s", "s2"));
	assert_true(S_ISLNK(st_path("s2").st_mode));
	assert_int_equal(st_path("s").st_nlink, 2);
	assert_int_equal(st_path("b").st_nlink, 2);
}

static void test_symlink(void **state)
{
	static char longt[4096];
	char buf[8192];
	struct stat st;

	(void)state;
	enter("symlink");
	SYS(symlink("target/path", "s"));
	assert_int_equal(SYS(readlink("s", buf, sizeof(buf))), 11);
	assert_memory_equal(buf, "target/path", 11);
	st = st_path("s");
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(st.st_size, 11);
	ERR(stat("s", &st), ENOENT);

	make_str("t", "T");
	SYS(symlink("t", "st"));
	SYS(stat("st", &st));
	assert_true(S_ISREG(st.st_mode));
	check_path("st", "T", 1);

	SYS(mkdir("dd", 0755));
	SYS(symlink("dd", "sd"));
	make_str("sd/x", "via link");
	check_path("dd/x", "via link", 8);

	SYS(mkdir("sub", 0755));
	SYS(symlink("../t", "sub/up"));
	check_path("sub/up", "T", 1);

	ERR(open("st", O_RDONLY | O_NOFOLLOW), ELOOP);
	SYS(symlink("loop", "loop"));
	ERR(stat("loop", &st), ELOOP);
	ERR(symlink("x", "st"), EEXIST);
	ERR(readlink("t", buf, sizeof(buf)), EINVAL);

	memset(longt, 'a', 4095);
	longt[4095] = 0;
	SYS(symlink(longt, "long"));
	assert_int_equal(SYS(readlink("long", buf, sizeof(buf))), 4095);
	assert_memory_equal(buf, longt, 4095);
	assert_int_equal(st_path("long").st_size, 4095);

	/* readlink with a short buffer truncates */
	assert_int_equal(SYS(readlink("s", buf, 4)), 4);
	assert_memory_equal(buf, "targ", 4);
}

/* ---- statfs ------------------------------------------------------------- */

static void test_statfs(void **state)
{
	struct statvfs sv;
	struct statfs sf;
	int fd;

	(void)state;
	enter("statfs");
	SYS(statvfs(".", &sv));
	CHECK(sv.f_bsize > 0, "f_bsize 0");
	CHECK(sv.f_frsize > 0, "f_frsize 0");
	CHECK(sv.f_blocks > 0, "f_blocks 0");
	CHECK(sv.f_bfree <= sv.f_blocks, "f_bfree %llu > f_blocks %llu",
	      (unsigned long long)sv.f_bfree, (unsigned long long)sv.f_blocks);
	CHECK(sv.f_bavail <= sv.f_bfree, "f_bavail > f_bfree");
	CHECK(sv.f_bavail > 0, "f_bavail 0");
	assert_int_equal(sv.f_namemax, 255);

	make_str("f", "x");
	fd = (int)SYS(open("f", O_RDONLY));
	SYS(fstatfs(fd, &sf));
	/* posix_ops.sh sets BFS_EXPECT_FUSE=1: make sure we test the mount */
	if (getenv("BFS_EXPECT_FUSE"))
		CHECK(sf.f_type == FUSE_SUPER_MAGIC, "f_type 0x%llx is not FUSE's",
		      (unsigned long long)sf.f_type);
	assert_int_equal(sf.f_namelen, 255);
	SYS(close(fd));
}

/* ---- fallocate, copy_file_range, lseek ---------------------------------- */

static void test_fallocate(void **state)
{
	unsigned char *buf = xmalloc(200000), *got = xmalloc(200000);
	struct stat st;
	blkcnt_t before;
	int fd;

	(void)state;
	enter("fallocate");
	fd = (int)SYS(open("f", O_CREAT | O_RDWR, 0644));
	SYS(fallocate(fd, 0, 0, 100000));
	assert_int_equal(st_fd(fd).st_size, 100000);
	pread_exact(fd, got, 100000, 0);
	check_zero("fallocate 0", got, 100000, 0);
	SYS(fallocate(fd, 0, 50000, 100000));
	assert_int_equal(st_fd(fd).st_size, 150000);
	SYS(fallocate(fd, FALLOC_FL_KEEP_SIZE, 150000, 50000));
	assert_int_equal(st_fd(fd).st_size, 150000);
	assert_int_equal(pread_full(fd, got, 200000, 0), 150000);
	check_zero("fallocate", got, 150000, 0);
	SYS(close(fd));

	/* mode 0 over data keeps the data */
	fill_random(buf, 64 * KiB);
	make_file("g", buf, 64 * KiB);
	fd = (int)SYS(open("g", O_RDWR));
	SYS(fallocate(fd, 0, 0, 64 * KiB));
	SYS(fallocate(fd, FALLOC_FL_KEEP_SIZE, 1000, 200000));
	assert_int_equal(st_fd(fd).st_size, 64 * KiB);
	check_file("fallocate over data", fd, buf, 64 * KiB, 0);

	/* punch aligned blocks: zeros, same size, fewer blocks */
	SYS(fsync(fd));
	before = st_fd(fd).st_blocks;
	SYS(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BLK, 4 * BLK));
	SYS(fsync(fd));
	st = st_fd(fd);
	assert_int_equal(st.st_size, 64 * KiB);
	CHECK(st.st_blocks < before, "st_blocks %lld not below %lld after punching 32 KiB",
	      (long long)st.st_blocks, (long long)before);
	pread_exact(fd, got, 64 * KiB, 0);
	check_bytes("before hole", got, buf, BLK, 0);
	check_zero("punched", got + BLK, 4 * BLK, BLK);
	check_bytes("after hole", got + 5 * BLK, buf + 5 * BLK, 64 * KiB - 5 * BLK, 5 * BLK);

	/* unaligned punch */
	SYS(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 6 * BLK + 1000, 5000));
	pread_exact(fd, got, 64 * KiB, 0);
	check_bytes("before small hole", got + 5 * BLK, buf + 5 * BLK, BLK + 1000, 5 * BLK);
	check_zero("small hole", got + 6 * BLK + 1000, 5000, 6 * BLK + 1000);
	check_bytes("after small hole", got + 6 * BLK + 6000, buf + 6 * BLK + 6000,
		    64 * KiB - 6 * BLK - 6000, 6 * BLK + 6000);

	/* punching past EOF changes nothing */
	SYS(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 60 * KiB, 1 * MiB));
	assert_int_equal(st_fd(fd).st_size, 64 * KiB);
	pread_exact(fd, got, 4 * KiB, 60 * KiB);
	check_zero("punched tail", got, 4 * KiB, 60 * KiB);

	/* PUNCH_HOLE needs KEEP_SIZE (the kernel says so) */
	ERR(fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, BLK), EOPNOTSUPP);
	/* ZERO_RANGE: unsupported, or zeros */
	if (fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, 100) == 0) {
		pread_exact(fd, got, 100, 0);
		check_zero("ZERO_RANGE", got, 100, 0);
	} else {
		assert_int_equal(errno, EOPNOTSUPP);
	}
	SYS(close(fd));
	free(buf);
	free(got);
}

static void copy_range(int in, off_t off_in, int out, off_t off_out, size_t len)
{
	loff_t oi = off_in, oo = off_out;

	while (len > 0) {
		ssize_t n = copy_file_range(in, &oi, out, &oo, len, 0);
		if (n < 0)
			fail_msg("copy_file_range(%zu at %lld -> %lld): %s", len,
				 (long long)oi, (long long)oo, strerror(errno));
		if (n == 0)
			fail_msg("copy_file_range: early EOF at %lld", (long long)oi);
		len -= (size_t)n;
	}
}

static void test_copy_file_range(void **state)
{
	const size_t n = 1 * MiB + 1000;
	unsigned char *src = xmalloc(n), *got = xmalloc(n + BLK), *z = xmalloc(200 * KiB);
	struct stat ss, ds;
	loff_t oi, oo;
	int in, out, fd;

	(void)state;
	enter("copy_file_range");
	fill_random(src, 512 * KiB);
	fill_text(src + 512 * KiB, n - 512 * KiB, 0);
	make_file("src", src, n);
	in = (int)SYS(open("src", O_RDONLY));

	/* whole file */
	out = (int)SYS(open("dst", O_CREAT | O_WRONLY, 0644));
	copy_range(in, 0, out, 0, n);
	SYS(fsync(out));
	SYS(close(out));
	check_path("dst", src, n);
	ss = st_path("src");
	ds = st_path("dst");
	assert_int_equal(ds.st_size, n);
	CHECK(ds.st_blocks > 0, "copy has st_blocks 0");
	CHECK(ds.st_blocks <= ss.st_blocks + 2 * BLK / 512,
	      "copy st_blocks %lld, source %lld", (long long)ds.st_blocks,
	      (long long)ss.st_blocks);
	CHECK(ds.st_blocks * 512 <= (blkcnt_t)(n + 2 * BLK),
	      "copy st_blocks %lld for %zu bytes", (long long)ds.st_blocks, n);

	/* copies are independent afterwards, both ways */
	fd = (int)SYS(open("dst", O_WRONLY));
	pwrite_all(fd, "DST", 3, 10);
	SYS(close(fd));
	check_path("src", src, n);
	fd = (int)SYS(open("src", O_WRONLY));
	pwrite_all(fd, "SRC", 3, 600 * KiB);
	SYS(close(fd));
	fd = (int)SYS(open("dst", O_RDONLY));
	check_file("dst after writing src", fd, src + 13, 600 * KiB - 13, 13);
	check_file("dst after writing src", fd, src + 600 * KiB, 100, 600 * KiB);
	SYS(close(fd));
	memcpy(src + 600 * KiB, "SRC", 3);

	/* unaligned source and destination */
	out = (int)SYS(open("dst2", O_CREAT | O_WRONLY, 0644));
	copy_range(in, 1000, out, 3000, 50000);
	SYS(close(out));
	fd = (int)SYS(open("dst2", O_RDONLY));
	assert_int_equal(pread_full(fd, got, n, 0), 53000);
	check_zero("dst2 head", got, 3000, 0);
	check_bytes("dst2", got + 3000, src + 1000, 50000, 3000);
	SYS(close(fd));

	/* into the middle of existing data, block aligned */
	memset(z, 0x11, 200 * KiB);
	make_file("dst3", z, 200 * KiB);
	out = (int)SYS(open("dst3", O_WRONLY));
	copy_range(in, BLK, out, 2 * BLK, 3 * BLK);
	SYS(close(out));
	fd = (int)SYS(open("dst3", O_RDONLY));
	pread_exact(fd, got, 200 * KiB, 0);
	check_bytes("dst3 head", got, z, 2 * BLK, 0);
	check_bytes("dst3 copied", got + 2 * BLK, src + BLK, 3 * BLK, 2 * BLK);
	check_bytes("dst3 tail", got + 5 * BLK, z, 200 * KiB - 5 * BLK, 5 * BLK);
	SYS(close(fd));

	/* at EOF: nothing */
	out = (int)SYS(open("dst4", O_CREAT | O_WRONLY, 0644));
	oi = (loff_t)n;
	oo = 0;
	assert_int_equal(SYS(copy_file_range(in, &oi, out, &oo, 100, 0)), 0);
	/* a range that runs past EOF stops there */
	oi = (loff_t)n - 10;
	oo = 0;
	assert_int_equal(SYS(copy_file_range(in, &oi, out, &oo, 100, 0)), 10);
	SYS(close(out));
	check_path("dst4", src + n - 10, 10);

	/* within one file, beyond its end */
	fd = (int)SYS(open("dst", O_RDWR));
	oi = 0;
	oo = 2 * MiB;
	assert_int_equal(SYS(copy_file_range(fd, &oi, fd, &oo, BLK, 0)), BLK);
	assert_int_equal(st_fd(fd).st_size, 2 * MiB + BLK);
	pread_exact(fd, got, BLK, 2 * MiB);
	check_bytes("copy within a file", got, src, 10, 2 * MiB);
	SYS(close(fd));
	SYS(close(in));

	/* a sparse source: the copy stays sparse */
	fill_random(got, 2 * BLK);
	fd = (int)SYS(open("sparse", O_CREAT | O_RDWR, 0644));
	pwrite_all(fd, got, BLK, 0);
	pwrite_all(fd, got + BLK, BLK, 10 * MiB);
	SYS(close(fd));
	in = (int)SYS(open("sparse", O_RDONLY));
	out = (int)SYS(open("sparse2", O_CREAT | O_WRONLY, 0644));
	copy_range(in, 0, out, 0, 10 * MiB + BLK);
	SYS(fsync(out));
	SYS(close(out));
	SYS(close(in));
	ds = st_path("sparse2");
	assert_int_equal(ds.st_size, 10 * MiB + BLK);
	CHECK(ds.st_blocks * 512 <= 64 * KiB,
	      "sparse copy uses %lld bytes for 16 KiB of data",
	      (long long)ds.st_blocks * 512);
	fd = (int)SYS(open("sparse2", O_RDONLY));
	check_file("sparse copy head", fd, got, BLK, 0);
	check_file("sparse copy tail", fd, got + BLK, BLK, 10 * MiB);
	pread_exact(fd, z, 200 * KiB, 5 * MiB);
	check_zero("sparse copy hole", z, 200 * KiB, 5 * MiB);
	SYS(close(fd));
	free(src);
	free(got);
	free(z);
}

static void test_lseek_data_hole(void **state)
{
	char buf[BLK];
	off_t r;
	int fd;

	(void)state;
	enter("lseek");
	memset(buf, 'A', sizeof(buf));
	fd = (int)SYS(open("f", O_CREAT | O_RDWR, 0644));
	pwrite_all(fd, buf, BLK, 0);
	pwrite_all(fd, buf, 100, 1 * MiB);
	SYS(ftruncate(fd, 2 * MiB));

	if (getenv("BFS_WRITEBACK")) {
		/* `mount --writeback` leaves SEEK_DATA/SEEK_HOLE to the kernel,
		 * which sees the whole file as data (allowed by POSIX): the
		 * daemon cannot see dirty pages still in the page cache. */
		assert_int_equal(SYS(lseek(fd, 5000, SEEK_DATA)), 5000);
		assert_int_equal(SYS(lseek(fd, 0, SEEK_HOLE)), 2 * MiB);
		ERR(lseek(fd, 2 * MiB, SEEK_DATA), ENXIO);
		SYS(close(fd));
		return;
	}
	assert_int_equal(SYS(lseek(fd, 0, SEEK_DATA)), 0);
	assert_int_equal(SYS(lseek(fd, 5000, SEEK_DATA)), 5000);
	assert_int_equal(SYS(lseek(fd, 0, SEEK_HOLE)), BLK);
	assert_int_equal(SYS(lseek(fd, BLK, SEEK_DATA)), 1 * MiB);
	assert_int_equal(SYS(lseek(fd, BLK + 1, SEEK_HOLE)), BLK + 1);
	r = SYS(lseek(fd, 1 * MiB, SEEK_HOLE));
	CHECK(r >= 1 * MiB + 100 && r <= 1 * MiB + BLK, "SEEK_HOLE after data: %lld",
	      (long long)r);
	ERR(lseek(fd, 1 * MiB + BLK, SEEK_DATA), ENXIO);
	assert_int_equal(SYS(lseek(fd, 1 * MiB + BLK, SEEK_HOLE)), 1 * MiB + BLK);
	assert_int_equal(SYS(lseek(fd, 2 * MiB - 1, SEEK_HOLE)), 2 * MiB - 1);
	ERR(lseek(fd, 2 * MiB, SEEK_DATA), ENXIO);
	ERR(lseek(fd, 2 * MiB, SEEK_HOLE), ENXIO);
	ERR(lseek(fd, 3 * MiB, SEEK_DATA), ENXIO);

	/* data up to EOF: the hole is at EOF */
	SYS(ftruncate(fd, 1 * MiB + 100));
	assert_int_equal(SYS(lseek(fd, 1 * MiB, SEEK_HOLE)), 1 * MiB + 100);
	SYS(close(fd));

	/* an empty file has neither */
	fd = (int)SYS(open("e", O_CREAT | O_RDWR, 0644));
	ERR(lseek(fd, 0, SEEK_DATA), ENXIO);
	ERR(lseek(fd, 0, SEEK_HOLE), ENXIO);
	/* all hole */
	SYS(ftruncate(fd, 1 * MiB));
	ERR(lseek(fd, 0, SEEK_DATA), ENXIO);
	assert_int_equal(SYS(lseek(fd, 0, SEEK_HOLE)), 0);
	SYS(close(fd));
}

/* ---- xattrs ------------------------------------------------------------- */

static bool list_has(const char *list, ssize_t len, const char *name)
{
	ssize_t i = 0;

	while (i < len) {
		if (strcmp(list + i, name) == 0)
			return true;
		i += (ssize_t)strlen(list + i) + 1;
	}
	return false;
}

static void test_xattr(void **state)
{
	unsigned char bin[256], big[1500], got[8192];
	char list[4096];
	ssize_t len;
	int fd, i;

	(void)state;
	enter("xattr");
	make_str("f", "x");
	SYS(setxattr("f", "user.a", "v1", 2, 0));
	assert_int_equal(SYS(getxattr("f", "user.a", got, sizeof(got))), 2);
	assert_memory_equal(got, "v1", 2);
	assert_int_equal(SYS(getxattr("f", "user.a", NULL, 0)), 2);
	ERR(setxattr("f", "user.a", "v", 1, XATTR_CREATE), EEXIST);
	ERR(setxattr("f", "user.zz", "v", 1, XATTR_REPLACE), ENODATA);
	SYS(setxattr("f", "user.a", "value2", 6, XATTR_REPLACE));
	assert_int_equal(SYS(getxattr("f", "user.a", got, sizeof(got))), 6);
	assert_memory_equal(got, "value2", 6);
	ERR(getxattr("f", "user.a", got, 3), ERANGE);
	ERR(getxattr("f", "user.none", got, sizeof(got)), ENODATA);

	for (i = 0; i < 256; i++)
		bin[i] = (unsigned char)i;
	SYS(setxattr("f", "user.b", bin, sizeof(bin), XATTR_CREATE));
	assert_int_equal(SYS(getxattr("f", "user.b", got, sizeof(got))), 256);
	assert_memory_equal(got, bin, 256);
	SYS(setxattr("f", "user.empty", "", 0, 0));
	assert_int_equal(SYS(getxattr("f", "user.empty", got, sizeof(got))), 0);
	fill_random(big, sizeof(big));
	SYS(setxattr("f", "user.big", big, sizeof(big), 0));
	assert_int_equal(SYS(getxattr("f", "user.big", got, sizeof(got))), sizeof(big));
	assert_memory_equal(got, big, sizeof(big));

	len = SYS(listxattr("f", NULL, 0));
	assert_int_equal(SYS(listxattr("f", list, sizeof(list))), len);
	CHECK(list_has(list, len, "user.a") && list_has(list, len, "user.b") &&
		      list_has(list, len, "user.empty") && list_has(list, len, "user.big"),
	      "listxattr misses a name");
	ERR(listxattr("f", list, 3), ERANGE);

	SYS(removexattr("f", "user.a"));
	ERR(getxattr("f", "user.a", got, sizeof(got)), ENODATA);
	ERR(removexattr("f", "user.a"), ENODATA);
	len = SYS(listxattr("f", list, sizeof(list)));
	CHECK(!list_has(list, len, "user.a"), "removed name still listed");
	CHECK(list_has(list, len, "user.b"), "user.b lost");

	/* on a directory, through a descriptor */
	SYS(mkdir("d", 0755));
	SYS(setxattr("d", "user.x", "1", 1, 0));
	assert_int_equal(SYS(getxattr("d", "user.x", got, sizeof(got))), 1);
	fd = (int)SYS(open("f", O_RDWR));
	SYS(fsetxattr(fd, "user.fd", "fd", 2, 0));
	assert_int_equal(SYS(fgetxattr(fd, "user.fd", got, sizeof(got))), 2);
	assert_memory_equal(got, "fd", 2);
	SYS(fremovexattr(fd, "user.fd"));
	ERR(fgetxattr(fd, "user.fd", got, sizeof(got)), ENODATA);
	SYS(close(fd));

	/* they follow the inode: rename and hard links */
	SYS(rename("f", "g"));
	assert_int_equal(SYS(getxattr("g", "user.b", got, sizeof(got))), 256);
	assert_memory_equal(got, bin, 256);
	SYS(link("g", "h"));
	SYS(setxattr("h", "user.c", "c", 1, 0));
	assert_int_equal(SYS(getxattr("g", "user.c", got, sizeof(got))), 1);

	/* a new file has none */
	make_str("n", "n");
	assert_int_equal(SYS(listxattr("n", list, sizeof(list))), 0);
}

/* ---- sync --------------------------------------------------------------- */

static void test_fsync(void **state)
{
	int fd, dfd;

	(void)state;
	enter("fsync");
	fd = (int)SYS(open("tmp", O_CREAT | O_RDWR, 0644));
	pwrite_all(fd, "durable", 7, 0);
	SYS(fsync(fd));
	pwrite_all(fd, "!", 1, 7);
	SYS(fdatasync(fd));
	SYS(syncfs(fd));
	SYS(sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE));
	SYS(close(fd));

	/* PostgreSQL's durable rename */
	SYS(rename("tmp", "final"));
	dfd = (int)SYS(open(".", O_RDONLY | O_DIRECTORY));
	SYS(fsync(dfd));
	SYS(fdatasync(dfd));
	SYS(close(dfd));
	check_path("final", "durable!", 8);

	fd = (int)SYS(open("final", O_RDONLY));
	SYS(fsync(fd));
	SYS(fdatasync(fd));
	SYS(close(fd));
	/* and a clean file many times: cheap and fine */
	for (int i = 0; i < 100; i++) {
		fd = (int)SYS(open("final", O_RDWR));
		SYS(fsync(fd));
		SYS(close(fd));
	}
}

/* ---- readdir ------------------------------------------------------------ */

struct want_ent {
	const char *name;
	unsigned char type;
	int seen;
};

static void test_readdir(void **state)
{
	struct want_ent want[] = {
		{ ".", DT_DIR, 0 },  { "..", DT_DIR, 0 }, { "f", DT_REG, 0 },
		{ "sub", DT_DIR, 0 }, { "l", DT_LNK, 0 },  { "p", DT_FIFO, 0 },
		{ "s", DT_SOCK, 0 }, { "c", DT_CHR, 0 },
	};
	const size_t nwant = sizeof(want) / sizeof(want[0]) - (is_root() ? 0 : 1);
	char path[300];
	struct dirent *de;
	DIR *dir;
	size_t i, count;

	(void)state;
	enter("readdir");
	SYS(mkdir("d", 0755));
	make_str("d/f", "f");
	SYS(mkdir("d/sub", 0755));
	SYS(symlink("f", "d/l"));
	SYS(mkfifo("d/p", 0644));
	SYS(mknod("d/s", S_IFSOCK | 0644, 0));
	if (is_root())
		SYS(mknod("d/c", S_IFCHR | 0644, makedev(1, 3)));

	dir = opendir("d");
	assert_non_null(dir);
	for (int pass = 0; pass < 2; pass++) {
		for (i = 0; i < nwant; i++)
			want[i].seen = 0;
		count = 0;
		while ((errno = 0, de = readdir(dir)) != NULL) {
			count++;
			for (i = 0; i < nwant; i++)
				if (strcmp(de->d_name, want[i].name) == 0)
					break;
			if (i == nwant)
				fail_msg("unexpected entry '%s'", de->d_name);
			want[i].seen++;
			CHECK(de->d_type == want[i].type, "'%s': d_type %d, want %d",
			      de->d_name, de->d_type, want[i].type);
			if (i >= 2) {
				snprintf(path, sizeof(path), "d/%s", de->d_name);
				CHECK(de->d_ino == st_path(path).st_ino,
				      "'%s': d_ino %llu, st_ino %llu", de->d_name,
				      (unsigned long long)de->d_ino,
				      (unsigned long long)st_path(path).st_ino);
			}
		}
		assert_int_equal(errno, 0);
		for (i = 0; i < nwant; i++)
			CHECK(want[i].seen == 1, "'%s' seen %d times", want[i].name,
			      want[i].seen);
		assert_int_equal(count, nwant);
		rewinddir(dir);
	}
	closedir(dir);

	/* an empty directory */
	dir = opendir("d/sub");
	assert_non_null(dir);
	count = 0;
	while ((de = readdir(dir)) != NULL) {
		CHECK(!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."),
		      "'%s' in an empty dir", de->d_name);
		count++;
	}
	assert_int_equal(count, 2);
	closedir(dir);
}

/* Many entries: several getdents calls, seekdir, and removal during a scan. */
static void test_readdir_many(void **state)
{
	enum { N = 3000 };
	static int seen[N];
	char name[32], first[10][300], again[10][300];
	struct dirent *de;
	long pos;
	DIR *dir;
	int i, n;

	(void)state;
	enter("readdir_many");
	for (i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "entry-%05d", i);
		int t = (int)SYS(open(name, O_CREAT | O_EXCL | O_WRONLY, 0644));
		SYS(close(t));
	}

	dir = opendir(".");
	assert_non_null(dir);
	memset(seen, 0, sizeof(seen));
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		assert_int_equal(sscanf(de->d_name, "entry-%d", &i), 1);
		assert_true(i >= 0 && i < N);
		seen[i]++;
	}
	for (i = 0; i < N; i++)
		CHECK(seen[i] == 1, "entry-%05d seen %d times", i, seen[i]);

	/* telldir / seekdir replay the same names */
	rewinddir(dir);
	for (i = 0; i < 100; i++)
		assert_non_null(readdir(dir));
	pos = telldir(dir);
	for (i = 0; i < 10; i++) {
		de = readdir(dir);
		assert_non_null(de);
		snprintf(first[i], sizeof(first[i]), "%s", de->d_name);
	}
	seekdir(dir, pos);
	for (i = 0; i < 10; i++) {
		de = readdir(dir);
		assert_non_null(de);
		snprintf(again[i], sizeof(again[i]), "%s", de->d_name);
		assert_string_equal(first[i], again[i]);
	}

	/*
	 * Remove every even entry in the middle of a scan: every odd entry is
	 * present during the whole scan and must be returned exactly once.
	 */
	rewinddir(dir);
	memset(seen, 0, sizeof(seen));
	n = 0;
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		assert_int_equal(sscanf(de->d_name, "entry-%d", &i), 1);
		seen[i]++;
		if (++n == 1000) {
			for (int k = 0; k < N; k += 2) {
				snprintf(name, sizeof(name), "entry-%05d", k);
				SYS(unlink(name));
			}
		}
	}
	for (i = 1; i < N; i += 2)
		CHECK(seen[i] == 1, "entry-%05d (never removed) seen %d times", i, seen[i]);
	for (i = 0; i < N; i += 2)
		CHECK(seen[i] <= 1, "entry-%05d seen %d times", i, seen[i]);
	closedir(dir);
}

/* ---- space -------------------------------------------------------------- */

static void test_sparse_blocks(void **state)
{
	unsigned char *buf = xmalloc(8 * MiB);
	struct stat st;
	blkcnt_t b;
	int fd;

	(void)state;
	enter("sparse_blocks");
	fd = (int)SYS(open("f", O_CREAT | O_RDWR, 0644));
	SYS(ftruncate(fd, 100 * MiB));
	st = st_fd(fd);
	assert_int_equal(st.st_size, 100 * MiB);
	assert_int_equal(st.st_blocks, 0);

	pwrite_all(fd, "x", 1, 50 * MiB);
	SYS(fsync(fd));
	st = st_fd(fd);
	CHECK(st.st_blocks > 0, "st_blocks 0 after writing a byte");
	CHECK(st.st_blocks * 512 <= 2 * BLK, "st_blocks %lld for one byte",
	      (long long)st.st_blocks);
	assert_int_equal(st_path("f").st_blocks, st.st_blocks);

	fill_random(buf, 1 * MiB);
	pwrite_all(fd, buf, 1 * MiB, 0);
	SYS(fsync(fd));
	st = st_fd(fd);
	CHECK(st.st_blocks * 512 >= 512 * KiB && st.st_blocks * 512 <= 1 * MiB + 4 * BLK,
	      "st_blocks %lld for 1 MiB of random data", (long long)st.st_blocks);
	b = st.st_blocks;

	/* writing zeros costs nothing */
	memset(buf, 0, 8 * MiB);
	pwrite_all(fd, buf, 8 * MiB, 60 * MiB);
	SYS(fsync(fd));
	st = st_fd(fd);
	CHECK(st.st_blocks <= b + 2 * BLK / 512, "st_blocks %lld -> %lld after 8 MiB of zeros",
	      (long long)b, (long long)st.st_blocks);
	assert_int_equal(st.st_size, 100 * MiB);

	/* overwriting data with zeros frees it */
	pwrite_all(fd, buf, 1 * MiB, 0);
	SYS(fsync(fd));
	st = st_fd(fd);
	CHECK(st.st_blocks * 512 <= 2 * BLK, "st_blocks %lld after zeroing the data",
	      (long long)st.st_blocks);
	SYS(close(fd));
	free(buf);
}

/* ---- open files --------------------------------------------------------- */

static void test_unlink_open(void **state)
{
	unsigned char *big = xmalloc(2 * MiB), *got = xmalloc(2 * MiB);
	char buf[16];
	struct dirent *de;
	struct stat st;
	DIR *dir;
	int fd, fd2;

	(void)state;
	enter("unlink_open");
	make_str("f", "hello");
	fd = (int)SYS(open("f", O_RDWR));
	fd2 = (int)SYS(open("f", O_RDONLY));
	SYS(unlink("f"));
	expect_missing("f");
	dir = opendir(".");
	assert_non_null(dir);
	while ((de = readdir(dir)) != NULL)
		CHECK(strcmp(de->d_name, "f") != 0, "unlinked file still listed");
	closedir(dir);

	assert_int_equal(pread_full(fd, buf, sizeof(buf), 0), 5);
	assert_memory_equal(buf, "hello", 5);
	pwrite_all(fd, "world", 5, 10000);
	pread_exact(fd2, buf, 5, 10000);
	assert_memory_equal(buf, "world", 5);
	st = st_fd(fd);
	assert_int_equal(st.st_nlink, 0);
	assert_int_equal(st.st_size, 10005);
	SYS(fsync(fd));
	SYS(fchmod(fd, 0600));
	assert_int_equal(st_fd(fd2).st_mode & 07777, 0600);
	SYS(ftruncate(fd, 3));
	assert_int_equal(st_fd(fd2).st_size, 3);

	/* a new file of the same name is another file */
	make_str("f", "new");
	assert_int_equal(pread_full(fd2, buf, sizeof(buf), 0), 3);
	assert_memory_equal(buf, "hel", 3);
	check_path("f", "new", 3);
	SYS(close(fd2));
	assert_int_equal(pread_full(fd, buf, sizeof(buf), 0), 3);
	SYS(close(fd));
	check_path("f", "new", 3);

	/* a bigger one */
	fill_random(big, 2 * MiB);
	fd = (int)SYS(open("g", O_CREAT | O_RDWR, 0644));
	pwrite_all(fd, big, 2 * MiB, 0);
	SYS(unlink("g"));
	pread_exact(fd, got, 2 * MiB, 0);
	check_bytes("unlinked 2 MiB file", got, big, 2 * MiB, 0);
	SYS(close(fd));
	expect_missing("g");
	free(big);
	free(got);
}

static void test_mmap(void **state)
{
	const size_t n = 3 * BLK + 100;
	unsigned char *buf = xmalloc(n), *m;
	int fd;

	(void)state;
	enter("mmap");
	fill_random(buf, n);
	make_file("f", buf, n);
	fd = (int)SYS(open("f", O_RDWR));
	m = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "mmap read: %s", strerror(errno));
	check_bytes("mmap read", m, buf, n, 0);
	munmap(m, n);

	m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "mmap shared write: %s", strerror(errno));
	m[100] ^= 0xff;
	m[BLK + 5] ^= 0xff;
	buf[100] ^= 0xff;
	buf[BLK + 5] ^= 0xff;
	SYS(msync(m, n, MS_SYNC));
	munmap(m, n);
	SYS(close(fd));
	check_path("f", buf, n);
	free(buf);
}

/* ---- main --------------------------------------------------------------- */

#define T(f) cmocka_unit_test_teardown(f, leave)

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		T(test_create_excl),	    T(test_open_trunc),
		T(test_open_append),	    T(test_open_direct),
		T(test_open_sync),	    T(test_rw_offsets),
		T(test_write_gap_reads_zero), T(test_large_sparse),
		T(test_truncate),	    T(test_chmod_chown),
		T(test_utimens),	    T(test_mknod),
		T(test_mkdir_rmdir),	    T(test_unlink),
		T(test_rename_plain),	    T(test_rename_over_existing),
		T(test_rename_over_open),   T(test_rename_noreplace),
		T(test_rename_exchange),    T(test_rename_into_subdir),
		T(test_link),		    T(test_symlink),
		T(test_statfs),		    T(test_fallocate),
		T(test_copy_file_range),    T(test_lseek_data_hole),
		T(test_xattr),		    T(test_fsync),
		T(test_readdir),	    T(test_readdir_many),
		T(test_sparse_blocks),	    T(test_unlink_open),
		T(test_mmap),
	};
	const char *dir = argc > 1 ? argv[1] : getenv("BFS_TEST_DIR");
	const char *seed = getenv("BFS_SEED");

	if (!dir || (argc > 1 && argv[1][0] == '-')) {
		fprintf(stderr, "usage: posix_ops DIR [TEST-GLOB]   (or BFS_TEST_DIR=DIR)\n");
		return 2;
	}
	if (argc > 2)
		cmocka_set_test_filter(argv[2]);
	g_rng = seed ? strtoull(seed, NULL, 0) : (uint64_t)time(NULL) * 2654435761u;
	if (!g_rng)
		g_rng = 1;
	printf("posix_ops: dir %s, BFS_SEED=%llu\n", dir, (unsigned long long)g_rng);
	umask(022);
	snprintf(g_base, sizeof(g_base), "%s/posix_ops.%d", dir, (int)getpid());
	if (mkdir(g_base, 0755) < 0 || (g_root = open(g_base, O_RDONLY | O_DIRECTORY)) < 0 ||
	    fchdir(g_root) < 0) {
		fprintf(stderr, "posix_ops: %s: %s\n", g_base, strerror(errno));
		return 1;
	}
	return cmocka_run_group_tests_name("posix_ops", tests, NULL, NULL);
}
