/* SPDX-License-Identifier: MIT */
/*
 * tests/snap/test_branch.c - unit tests of the snapshot/branch layer of
 * snap/ (issue 3): versioned reads at every epoch, tombstones, ancestry
 * fall-through 50 levels deep, rename and hard links across a snapshot,
 * truncate/extend/punch after a branch point, readdir merging, isolation,
 * the inherited postmaster.pid, names, lifecycle (create, delete, rename,
 * reset; deleting a parent with live children; 1,000 branches), space
 * (prune + gc, du, cost of a fresh branch), persistence (also across a
 * crash between a deletion and the pruner), atomicity of snapshots under
 * concurrent writers, the pruner racing with snapshots, and the
 * snap_command text interface.
 *
 * Through snap.h only, on real RocksDB in a temporary directory under /tmp
 * (removed afterwards).  Crash tests re-execute this binary (/proc/self/exe)
 * with BFS_BRANCH_TEST_CHILD set: the child does one operation on the store
 * and exits without snap_close(), so the pruner never finishes there.
 *
 * BFS_TEST_SEED=N reruns the randomised tests with seed N.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "snap/snap.h"

#define BS 8192u
#define KiB 1024ull
#define MiB (1024ull * KiB)
#define UID 1000u
#define GID 1000u
#define ROOT SNAP_ROOT_INO

struct env {
	char dir[64];
	char store[96];
	struct snap *s;
	struct snap_tree *t; /* main */
};

static uint64_t g_seed = 0x5eed1234abcdull;

/* ---- store setup -------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	return remove(path);
}

static void rm_rf(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));

	if (!e)
		return -1;
	strcpy(e->dir, "/tmp/bfs-branch-test.XXXXXX");
	if (!mkdtemp(e->dir)) {
		free(e);
		return -1;
	}
	snprintf(e->store, sizeof(e->store), "%s/store", e->dir);
	if (snap_store_init(e->store, UID, GID) != 0 ||
	    snap_open(e->store, 0, &e->s) != 0) {
		rm_rf(e->dir);
		free(e);
		return -1;
	}
	if (snap_tree_get(e->s, SNAP_MAIN_ID, &e->t) != 0) {
		snap_close(e->s);
		rm_rf(e->dir);
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	snap_tree_put(e->t);
	snap_close(e->s);
	rm_rf(e->dir);
	free(e);
	return 0;
}

static void close_store(struct env *e)
{
	snap_tree_put(e->t);
	e->t = NULL;
	snap_close(e->s);
	e->s = NULL;
}

static void open_store(struct env *e)
{
	assert_int_equal(snap_open(e->store, 0, &e->s), 0);
	assert_int_equal(snap_tree_get(e->s, SNAP_MAIN_ID, &e->t), 0);
}

/* Close and reopen the store (persistence). */
static void reopen(struct env *e)
{
	close_store(e);
	open_store(e);
}

/* ---- branches and snapshots by name -------------------------------------- */

/* Id of the live branch or snapshot @name, 0 if none. */
static uint32_t find_id(struct env *e, const char *name, bool *is_snapshot)
{
	for (int k = 0; k < 2; k++) {
		struct snap_branch_info *v;
		size_t n;

		assert_int_equal(snap_branch_list(e->s, k == 1, &v, &n), 0);
		for (size_t i = 0; i < n; i++) {
			if (strcmp(v[i].name, name) == 0) {
				uint32_t id = v[i].id;

				if (is_snapshot)
					*is_snapshot = v[i].is_snapshot;
				free(v);
				return id;
			}
		}
		free(v);
	}
	return 0;
}

static uint32_t id_of(struct env *e, const char *name)
{
	uint32_t id = find_id(e, name, NULL);

	if (!id)
		fail_msg("no branch or snapshot named '%s'", name);
	return id;
}

static struct snap_branch_info info_of(struct env *e, const char *name)
{
	struct snap_branch_info r;

	for (int k = 0; k < 2; k++) {
		struct snap_branch_info *v;
		size_t n;

		assert_int_equal(snap_branch_list(e->s, k == 1, &v, &n), 0);
		for (size_t i = 0; i < n; i++) {
			if (strcmp(v[i].name, name) == 0) {
				r = v[i];
				free(v);
				return r;
			}
		}
		free(v);
	}
	fail_msg("no branch or snapshot named '%s'", name);
	memset(&r, 0, sizeof(r));
	return r;
}

/* A reference on the tree of branch or snapshot @name (put it after). */
static struct snap_tree *T(struct env *e, const char *name)
{
	struct snap_tree *t;

	assert_int_equal(snap_tree_get(e->s, id_of(e, name), &t), 0);
	return t;
}

static uint32_t branch(struct env *e, const char *name, const char *from)
{
	uint32_t id = 0;
	int ret = snap_branch_create(e->s, name, from, &id);

	if (ret != 0)
		fail_msg("branch create %s from %s: %s", name,
			 from ? from : "(main)", strerror(-ret));
	assert_true(id > SNAP_MAIN_ID);
	return id;
}

static uint32_t snapshot(struct env *e, const char *br, const char *name)
{
	uint32_t id = 0;
	int ret = snap_snapshot_create(e->s, br, name, &id);

	if (ret != 0)
		fail_msg("snapshot create %s of %s: %s", name, br,
			 strerror(-ret));
	assert_true(id > SNAP_MAIN_ID);
	return id;
}

static size_t count_list(struct env *e, bool snapshots)
{
	struct snap_branch_info *v;
	size_t n;

	assert_int_equal(snap_branch_list(e->s, snapshots, &v, &n), 0);
	free(v);
	return n;
}

/* ---- files ------------------------------------------------------------- */

static uint64_t mkn(struct snap_tree *t, uint64_t dir, const char *name,
		    uint32_t mode)
{
	struct snap_attr a;
	int ret = snap_mknod(t, dir, name, mode, 0, UID, GID, &a);

	if (ret != 0)
		fail_msg("mknod %s in %llu: %s", name, (unsigned long long)dir,
			 strerror(-ret));
	assert_true(a.ino > ROOT);
	return a.ino;
}

static uint64_t mkf(struct snap_tree *t, uint64_t dir, const char *name)
{
	return mkn(t, dir, name, S_IFREG | 0644);
}

static uint64_t mkd(struct snap_tree *t, uint64_t dir, const char *name)
{
	return mkn(t, dir, name, S_IFDIR | 0755);
}

/* Ino of @name in @dir, or 0 if it does not exist (other errors fail). */
static uint64_t lkq(struct snap_tree *t, uint64_t dir, const char *name)
{
	struct snap_attr a;
	int ret = snap_lookup(t, dir, name, &a);

	if (ret == -ENOENT)
		return 0;
	if (ret != 0)
		fail_msg("lookup %s: %s", name, strerror(-ret));
	return a.ino;
}

static uint64_t lk(struct snap_tree *t, uint64_t dir, const char *name)
{
	uint64_t ino = lkq(t, dir, name);

	if (!ino)
		fail_msg("lookup %s in dir %llu (tree %u): ENOENT", name,
			 (unsigned long long)dir, snap_tree_id(t));
	return ino;
}

static struct snap_attr ga(struct snap_tree *t, uint64_t ino)
{
	struct snap_attr a;
	int ret = snap_getattr(t, ino, &a);

	if (ret != 0)
		fail_msg("getattr %llu (tree %u): %s", (unsigned long long)ino,
			 snap_tree_id(t), strerror(-ret));
	return a;
}

static void set_size(struct snap_tree *t, uint64_t ino, uint64_t size)
{
	struct snap_attr a = { .size = size };

	assert_int_equal(snap_setattr(t, ino, &a, SNAP_SET_SIZE, NULL), 0);
}

static void set_mode(struct snap_tree *t, uint64_t ino, uint32_t mode)
{
	struct snap_attr a = { .mode = mode };

	assert_int_equal(snap_setattr(t, ino, &a, SNAP_SET_MODE, NULL), 0);
}

static void wr(struct snap_tree *t, uint64_t ino, const void *buf, size_t len,
	       uint64_t off)
{
	ssize_t r = snap_write(t, ino, buf, len, off);

	if (r != (ssize_t)len)
		fail_msg("write %zu bytes at %llu to %llu (tree %u): %zd", len,
			 (unsigned long long)off, (unsigned long long)ino,
			 snap_tree_id(t), r);
}

/* Make the content of @ino exactly @buf. */
static void put_data(struct snap_tree *t, uint64_t ino, const void *buf,
		     size_t len)
{
	set_size(t, ino, 0);
	if (len)
		wr(t, ino, buf, len, 0);
	assert_int_equal(ga(t, ino).size, len);
}

static void put_str(struct snap_tree *t, uint64_t ino, const char *s)
{
	put_data(t, ino, s, strlen(s));
}

/* Whole content of @ino (malloc()ed, NUL-terminated for convenience). */
static uint8_t *get_all(struct snap_tree *t, uint64_t ino, size_t *len)
{
	struct snap_attr a = ga(t, ino);
	uint8_t *buf = malloc(a.size + 1);
	ssize_t r;

	assert_non_null(buf);
	r = snap_read(t, ino, buf, a.size, 0);
	if (r != (ssize_t)a.size)
		fail_msg("read %llu bytes of %llu (tree %u): %zd",
			 (unsigned long long)a.size, (unsigned long long)ino,
			 snap_tree_id(t), r);
	buf[a.size] = 0;
	*len = a.size;
	return buf;
}

static void check_data(struct snap_tree *t, uint64_t ino, const void *want,
		       size_t len)
{
	size_t n;
	uint8_t *got = get_all(t, ino, &n);

	if (n != len)
		fail_msg("ino %llu (tree %u): size %zu, want %zu",
			 (unsigned long long)ino, snap_tree_id(t), n, len);
	for (size_t i = 0; i < len; i++)
		if (got[i] != ((const uint8_t *)want)[i])
			fail_msg("ino %llu (tree %u) offset %zu: %#x, want %#x",
				 (unsigned long long)ino, snap_tree_id(t), i,
				 got[i], ((const uint8_t *)want)[i]);
	free(got);
}

static void check_str(struct snap_tree *t, uint64_t ino, const char *want)
{
	size_t n;
	uint8_t *got = get_all(t, ino, &n);

	if (n != strlen(want) || memcmp(got, want, n) != 0)
		fail_msg("ino %llu (tree %u): '%s', want '%s'",
			 (unsigned long long)ino, snap_tree_id(t), (char *)got,
			 want);
	free(got);
}

/* Content of @name in @dir is @want. */
static void check_file(struct snap_tree *t, uint64_t dir, const char *name,
		       const char *want)
{
	check_str(t, lk(t, dir, name), want);
}

/* A deterministic, never-zero byte for offset @off of pattern @seed. */
static uint8_t pat_byte(uint64_t off, uint32_t seed)
{
	uint64_t x = (off + 1) * 0x9E3779B97F4A7C15ull ^
		     ((uint64_t)seed * 0xD1B54A32D192ED03ull);

	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 29;
	return (uint8_t)(x % 255 + 1);
}

static uint8_t *pat(size_t len, uint32_t seed)
{
	uint8_t *b = malloc(len ? len : 1);

	assert_non_null(b);
	for (size_t i = 0; i < len; i++)
		b[i] = pat_byte(i, seed);
	return b;
}

static uint64_t rnd(uint64_t *st)
{
	uint64_t x = *st;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*st = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* Incompressible bytes. */
static void fill_random(uint8_t *buf, size_t len, uint64_t *st)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t x = rnd(st);

		memcpy(buf + i, &x, len - i < 8 ? len - i : 8);
	}
}

/* Write @len random bytes to new file @name in @dir of @t. */
static uint64_t write_random_file(struct snap_tree *t, uint64_t dir,
				  const char *name, size_t len, uint64_t *st)
{
	uint64_t ino = mkf(t, dir, name);
	size_t chunk = 1 * MiB;
	uint8_t *buf = malloc(chunk);

	assert_non_null(buf);
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;

		fill_random(buf, n, st);
		wr(t, ino, buf, n, off);
	}
	free(buf);
	return ino;
}

/* ---- directories --------------------------------------------------------- */

/* The names of @dir as "a,b,c"; asserts strictly sorted (so no dups). */
static char *names_of(struct snap_tree *t, uint64_t dir)
{
	struct snap_dirent *d;
	size_t n, len = 1;
	char *s;
	int ret = snap_readdir(t, dir, &d, &n);

	if (ret != 0)
		fail_msg("readdir %llu (tree %u): %s", (unsigned long long)dir,
			 snap_tree_id(t), strerror(-ret));
	for (size_t i = 0; i < n; i++) {
		len += strlen(d[i].name) + 1;
		if (i > 0 && strcmp(d[i - 1].name, d[i].name) >= 0)
			fail_msg("readdir (tree %u) not sorted/unique: '%s' then '%s'",
				 snap_tree_id(t), d[i - 1].name, d[i].name);
	}
	s = malloc(len);
	assert_non_null(s);
	s[0] = 0;
	for (size_t i = 0; i < n; i++) {
		if (i)
			strcat(s, ",");
		strcat(s, d[i].name);
	}
	free(d);
	return s;
}

static void assert_names(struct snap_tree *t, uint64_t dir, const char *want)
{
	char *got = names_of(t, dir);

	if (strcmp(got, want) != 0)
		fail_msg("dir %llu of tree %u lists '%s', want '%s'",
			 (unsigned long long)dir, snap_tree_id(t), got, want);
	free(got);
}

/* ---- whole-tree checksum ------------------------------------------------ */

static void ck_add(uint64_t *h, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++) {
		*h ^= b[i];
		*h *= 0x100000001b3ull;
	}
}

static void ck_u64(uint64_t *h, uint64_t v)
{
	ck_add(h, &v, sizeof(v));
}

static void ck_attr(uint64_t *h, const struct snap_attr *a)
{
	ck_u64(h, a->ino);
	ck_u64(h, a->mode);
	ck_u64(h, a->uid);
	ck_u64(h, a->gid);
	ck_u64(h, a->nlink);
	ck_u64(h, a->size);
	ck_u64(h, a->blocks);
	ck_u64(h, a->rdev);
	ck_u64(h, (uint64_t)a->mtime.tv_sec);
	ck_u64(h, (uint64_t)a->mtime.tv_nsec);
	ck_u64(h, (uint64_t)a->ctime.tv_sec);
	ck_u64(h, (uint64_t)a->ctime.tv_nsec);
	ck_u64(h, (uint64_t)a->atime.tv_sec);
	ck_u64(h, (uint64_t)a->atime.tv_nsec);
}

static void ck_inode(struct snap_tree *t, uint64_t ino, uint64_t *h, int depth)
{
	struct snap_attr a = ga(t, ino);
	char names[4096];
	ssize_t nl;

	ck_attr(h, &a);
	nl = snap_listxattr(t, ino, names, sizeof(names));
	assert_true(nl >= 0);
	for (ssize_t p = 0; p < nl; p += (ssize_t)strlen(names + p) + 1) {
		uint8_t val[1024];
		ssize_t vl = snap_getxattr(t, ino, names + p, val, sizeof(val));

		assert_true(vl >= 0);
		ck_add(h, names + p, strlen(names + p) + 1);
		ck_u64(h, (uint64_t)vl);
		ck_add(h, val, (size_t)vl);
	}
	if (S_ISREG(a.mode)) {
		size_t n;
		uint8_t *d = get_all(t, ino, &n);

		ck_add(h, d, n);
		free(d);
	} else if (S_ISLNK(a.mode)) {
		char tg[4096];
		int r = snap_readlink(t, ino, tg, sizeof(tg));

		assert_true(r >= 0);
		ck_add(h, tg, (size_t)r);
	} else if (S_ISDIR(a.mode)) {
		struct snap_dirent *d;
		size_t n;

		assert_true(depth < 64);
		assert_int_equal(snap_readdir(t, ino, &d, &n), 0);
		for (size_t i = 0; i < n; i++) {
			ck_add(h, d[i].name, strlen(d[i].name) + 1);
			ck_u64(h, d[i].ino);
			ck_u64(h, d[i].type);
			assert_int_equal(ga(t, d[i].ino).mode & S_IFMT, d[i].type);
			ck_inode(t, d[i].ino, h, depth + 1);
		}
		free(d);
	}
}

/* Checksum of everything the API shows of tree @t. */
static uint64_t tree_ck(struct snap_tree *t)
{
	uint64_t h = 0xcbf29ce484222325ull;

	ck_inode(t, ROOT, &h, 0);
	return h;
}

static uint64_t ck_named(struct env *e, const char *name)
{
	struct snap_tree *t = T(e, name);
	uint64_t h = tree_ck(t);

	snap_tree_put(t);
	return h;
}

/* ---- space ---------------------------------------------------------------- */

static struct snap_stats stats(struct env *e)
{
	struct snap_stats st;

	assert_int_equal(snap_stats(e->s, &st), 0);
	return st;
}

static void prune_gc(struct env *e)
{
	assert_int_equal(snap_prune(e->s), 0);
	assert_int_equal(snap_gc(e->s, 0), 0);
}

static struct snap_du_ent du_of(struct env *e, const char *name,
				uint64_t *total)
{
	struct snap_du_ent *v, r;
	size_t n;
	uint64_t tot;

	assert_int_equal(snap_du(e->s, true, &v, &n, &tot), 0);
	if (total)
		*total = tot;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i].name, name) == 0) {
			r = v[i];
			free(v);
			return r;
		}
	}
	free(v);
	fail_msg("du lists no '%s'", name);
	memset(&r, 0, sizeof(r));
	return r;
}

static void sleep_ms(long ms)
{
	struct timespec d = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&d, NULL);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- crash child ---------------------------------------------------------
 *
 * run_child() closes the store, re-executes this binary with the operation
 * in the environment and reopens the store after it exited.  The child
 * opens the store, runs the operation (which commits and syncs) and exits
 * at once with _exit(): no snap_close(), so no prune at close, and the
 * background pruner it may have woken dies with it - as in a crash.
 */
static int child_main(const char *op)
{
	const char *store = getenv("BFS_BRANCH_TEST_STORE");
	const char *name = getenv("BFS_BRANCH_TEST_NAME");
	struct snap *s;
	int ret;

	if (!store || !name)
		_exit(2);
	if (snap_open(store, 0, &s) != 0)
		_exit(3);
	if (strcmp(op, "snapshot-delete") == 0)
		ret = snap_snapshot_delete(s, name, false);
	else if (strcmp(op, "branch-delete") == 0)
		ret = snap_branch_delete(s, name, false);
	else if (strcmp(op, "branch-reset") == 0)
		ret = snap_branch_reset(s, name, NULL, false, NULL);
	else
		ret = -EINVAL;
	_exit(ret == 0 ? 0 : 4);
}

static void run_child(struct env *e, const char *op, const char *name)
{
	char a[128], b[256], c[512];
	char *envp[] = { a, b, c, NULL };
	char *argv[] = { "test_branch", NULL };
	int status;
	pid_t pid;

	snprintf(a, sizeof(a), "BFS_BRANCH_TEST_CHILD=%s", op);
	snprintf(b, sizeof(b), "BFS_BRANCH_TEST_STORE=%s", e->store);
	snprintf(c, sizeof(c), "BFS_BRANCH_TEST_NAME=%s", name);
	close_store(e);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execve("/proc/self/exe", argv, envp);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("crash child '%s %s' failed: status %#x", op, name,
			 status);
	open_store(e);
}
