/* SPDX-License-Identifier: MIT */
/*
 * tests/snap/test_snap.c - unit tests of snap/: store lifecycle and every
 * metadata operation (mknod, symlink, lookup, getattr, setattr, unlink,
 * rmdir, link, rename, readdir, xattrs), through snap.h only, on real
 * RocksDB in a temporary directory under /tmp (removed afterwards).
 *
 * File data (read/write, truncate, holes, sparse files, fallocate,
 * copy_range, lseek, open-unlinked files, block freeing, concurrency) is
 * tested in test_snap_data.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "snap/snap.h"
#include "snap_env.h"

#define UID 1000u
#define GID 1000u
#define ROOT_UID 1234u
#define ROOT_GID 5678u

static int setup(void **state)
{
	return env_setup(state, "/tmp/bfs-snap-test.XXXXXX", ROOT_UID, ROOT_GID);
}


static uint64_t mk(struct env *e, uint64_t dir, const char *name,
		   uint32_t mode)
{
	struct snap_attr a;

	assert_int_equal(snap_mknod(e->t, dir, name, mode, 0, UID, GID, &a), 0);
	assert_true(a.ino > SNAP_ROOT_INO);
	return a.ino;
}

static struct snap_attr ga(struct env *e, uint64_t ino)
{
	struct snap_attr a;

	assert_int_equal(snap_getattr(e->t, ino, &a), 0);
	assert_int_equal(a.ino, ino);
	return a;
}

/* Ino of @name in @dir (asserting it exists). */
static uint64_t lk(struct env *e, uint64_t dir, const char *name)
{
	struct snap_attr a;

	assert_int_equal(snap_lookup(e->t, dir, name, &a), 0);
	return a.ino;
}

static int ts_cmp(const struct timespec *a, const struct timespec *b)
{
	if (a->tv_sec != b->tv_sec)
		return a->tv_sec < b->tv_sec ? -1 : 1;
	if (a->tv_nsec != b->tv_nsec)
		return a->tv_nsec < b->tv_nsec ? -1 : 1;
	return 0;
}

static struct timespec now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts;
}

/* Let the realtime clock move on so that "later" is strictly later. */
static void tick(void)
{
	struct timespec d = { 0, 2 * 1000 * 1000 };

	nanosleep(&d, NULL);
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

/* Number of entries (besides . and ..) of a host directory, -1 if none. */
static int host_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	int n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

/* The names of @dir, as one "a,b,c" string for easy comparison. */
static char *names_of(struct env *e, uint64_t dir)
{
	struct snap_dirent *d;
	size_t n, len = 1;
	char *s;

	assert_int_equal(snap_readdir(e->t, dir, &d, &n), 0);
	for (size_t i = 0; i < n; i++)
		len += strlen(d[i].name) + 1;
	s = calloc(1, len);
	assert_non_null(s);
	for (size_t i = 0; i < n; i++) {
		if (i)
			strcat(s, ",");
		strcat(s, d[i].name);
	}
	free(d);
	return s;
}

static void assert_names(struct env *e, uint64_t dir, const char *want)
{
	char *got = names_of(e, dir);

	assert_string_equal(got, want);
	free(got);
}

/* ---- store lifecycle ----------------------------------------------------- */

static void test_store_fresh(void **state)
{
	struct env *e = *state;
	struct snap_attr a = ga(e, SNAP_ROOT_INO);
	struct snap_dirent *d = NULL;
	struct snap_stats st;
	struct snap_tree *t2;
	uint64_t parent = 0;
	uint32_t id = 0;
	size_t n = 99;

	assert_int_equal(a.mode, S_IFDIR | 0755);
	assert_int_equal(a.uid, ROOT_UID);
	assert_int_equal(a.gid, ROOT_GID);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.size, 0);
	assert_int_equal(a.blocks, 0);
	assert_int_equal(snap_readdir(e->t, SNAP_ROOT_INO, &d, &n), 0);
	assert_int_equal(n, 0);
	free(d);
	assert_int_equal(snap_parent(e->t, SNAP_ROOT_INO, &parent), 0);
	assert_int_equal(parent, SNAP_ROOT_INO);

	assert_int_equal(snap_tree_id(e->t), SNAP_MAIN_ID);
	assert_false(snap_tree_readonly(e->t));
	assert_int_equal(snap_tree_get(e->s, 4242, &t2), -ENOENT);
	assert_int_equal(snap_branch_find(e->s, "main", &id), 0);
	assert_int_equal(id, SNAP_MAIN_ID);
	assert_int_equal(snap_branch_find(e->s, "nope", &id), -ENOENT);

	assert_int_equal(snap_stats(e->s, &st), 0);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.refs, 0);
	assert_int_equal(st.branches, 1);
	assert_int_equal(st.snapshots, 0);
	assert_int_equal(snap_open_count(e->s, 0), 0);
}

static void test_store_init_nonempty(void **state)
{
	struct env *e = *state;
	char d[160], f[200], file[160], buf[64] = { 0 };
	FILE *fp;

	/* A non-empty directory: -ENOTEMPTY, and nothing touched. */
	snprintf(d, sizeof(d), "%s/nonempty", e->dir);
	assert_int_equal(mkdir(d, 0755), 0);
	snprintf(f, sizeof(f), "%s/keep", d);
	put_file(f, "precious\n");
	assert_int_equal(snap_store_init(d, 0, 0), -ENOTEMPTY);
	assert_int_equal(host_entries(d), 1);
	fp = fopen(f, "r");
	assert_non_null(fp);
	assert_non_null(fgets(buf, sizeof(buf), fp));
	fclose(fp);
	assert_string_equal(buf, "precious\n");

	/* A hidden file makes a directory non-empty too. */
	snprintf(d, sizeof(d), "%s/hidden", e->dir);
	assert_int_equal(mkdir(d, 0755), 0);
	snprintf(f, sizeof(f), "%s/.dot", d);
	put_file(f, "x");
	assert_int_equal(snap_store_init(d, 0, 0), -ENOTEMPTY);
	assert_int_equal(host_entries(d), 1);

	/* An existing store (open, even) is not empty either. */
	assert_int_equal(snap_store_init(e->store, 0, 0), -ENOTEMPTY);
	assert_int_equal(ga(e, SNAP_ROOT_INO).uid, ROOT_UID);

	/* A regular file: -ENOTDIR, untouched. */
	snprintf(file, sizeof(file), "%s/plainfile", e->dir);
	put_file(file, "data");
	assert_int_equal(snap_store_init(file, 0, 0), -ENOTDIR);
	assert_true(exists(file));

	/* An empty existing directory is fine; a missing one is created. */
	snprintf(d, sizeof(d), "%s/empty", e->dir);
	assert_int_equal(mkdir(d, 0755), 0);
	assert_int_equal(snap_store_init(d, 0, 0), 0);
	snprintf(d, sizeof(d), "%s/new/", e->dir);
	assert_int_equal(snap_store_init(d, 0, 0), 0);
	snprintf(f, sizeof(f), "%s/new/FORMAT", e->dir);
	assert_true(exists(f));
}

static void test_open_not_store(void **state)
{
	struct env *e = *state;
	struct snap *s = NULL;
	char p[160], q[200];

	snprintf(p, sizeof(p), "%s/missing", e->dir);
	assert_true(snap_open(p, 0, &s) < 0);
	assert_null(s);
	assert_false(exists(p));

	snprintf(p, sizeof(p), "%s/emptydir", e->dir);
	assert_int_equal(mkdir(p, 0755), 0);
	assert_true(snap_open(p, 0, &s) < 0);
	assert_null(s);
	assert_int_equal(host_entries(p), 0);
	assert_true(snap_open(p, SNAP_OPEN_READONLY, &s) < 0);
	assert_null(s);

	snprintf(p, sizeof(p), "%s/afile", e->dir);
	put_file(p, "not a store");
	assert_true(snap_open(p, 0, &s) < 0);
	assert_null(s);

	/* Looks like a store (db/ and lock) but db/ is no database. */
	snprintf(p, sizeof(p), "%s/fake", e->dir);
	assert_int_equal(mkdir(p, 0755), 0);
	snprintf(q, sizeof(q), "%s/db", p);
	assert_int_equal(mkdir(q, 0755), 0);
	snprintf(q, sizeof(q), "%s/lock", p);
	put_file(q, "");
	assert_true(snap_open(p, 0, &s) < 0);
	assert_null(s);

	/* The real store is still fine. */
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 2);
}

static void test_open_busy(void **state)
{
	struct env *e = *state;
	struct snap *s2 = NULL, *ro = NULL;
	struct snap_tree *rt = NULL;
	struct snap_stats st;
	struct snap_attr a;
	uint64_t f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);

	assert_int_equal(snap_open(e->store, 0, &s2), -EBUSY);
	assert_null(s2);
	/* The first handle is unharmed. */
	assert_int_equal(snap_write(e->t, f, "hello", 5, 0), 5);
	assert_int_equal(ga(e, f).size, 5);
	assert_int_equal(snap_sync(e->s), 0);

	/* A read-only open takes no lock: it works next to the writer and
	 * refuses writes. */
	assert_int_equal(snap_open(e->store, SNAP_OPEN_READONLY, &ro), 0);
	assert_int_equal(snap_stats(ro, &st), 0);
	assert_int_equal(st.branches, 1);
	assert_int_equal(snap_tree_get(ro, SNAP_MAIN_ID, &rt), 0);
	assert_true(snap_tree_readonly(rt));
	assert_int_equal(snap_lookup(rt, SNAP_ROOT_INO, "f", &a), 0);
	assert_int_equal(a.ino, f);
	assert_int_equal(snap_mknod(rt, SNAP_ROOT_INO, "g", S_IFREG | 0644, 0,
				    0, 0, NULL), -EROFS);
	assert_int_equal(snap_write(rt, f, "x", 1, 0), -EROFS);
	snap_tree_put(rt);
	snap_close(ro);

	/* After close, the store opens again (and was not damaged). */
	env_reopen(e);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "f"), f);
	assert_int_equal(snap_open(e->store, 0, &s2), -EBUSY);

	/* Read-only under the shared lock (the CLI on a full disk): not
	 * beside a writer, either way round; readers share it. */
	ro = NULL;
	assert_int_equal(snap_open(e->store, SNAP_OPEN_READONLY |
					     SNAP_OPEN_LOCK_SHARED, &ro),
			 -EBUSY);
	assert_null(ro);
	env_close(e);
	assert_int_equal(snap_open(e->store, SNAP_OPEN_READONLY |
					     SNAP_OPEN_LOCK_SHARED, &ro), 0);
	assert_int_equal(snap_open(e->store, SNAP_OPEN_READONLY |
					     SNAP_OPEN_LOCK_SHARED, &s2), 0);
	assert_int_equal(snap_stats(s2, &st), 0);
	assert_int_equal(st.branches, 1);
	snap_close(s2);
	s2 = NULL;
	assert_int_equal(snap_open(e->store, 0, &s2), -EBUSY);
	assert_null(s2);
	snap_close(ro);
	env_open(e); /* the lock was released */
}

/* ---- create / lookup / getattr ------------------------------------------ */

static void test_mknod_types(void **state)
{
	struct env *e = *state;
	struct snap_attr a, b;
	uint64_t reg, fifo, dir, sock, chr;

	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "reg", S_IFREG | 0640,
				    0, 11, 22, &a), 0);
	reg = a.ino;
	assert_int_equal(a.mode, S_IFREG | 0640);
	assert_int_equal(a.uid, 11);
	assert_int_equal(a.gid, 22);
	assert_int_equal(a.nlink, 1);
	assert_int_equal(a.size, 0);
	assert_int_equal(a.blocks, 0);
	b = ga(e, reg);
	assert_int_equal(b.mode, a.mode);
	assert_int_equal(b.uid, 11);
	assert_int_equal(b.gid, 22);
	assert_int_equal(b.nlink, 1);

	fifo = mk(e, SNAP_ROOT_INO, "fifo", S_IFIFO | 0600);
	assert_int_equal(ga(e, fifo).mode, S_IFIFO | 0600);
	sock = mk(e, SNAP_ROOT_INO, "sock", S_IFSOCK | 0600);
	assert_int_equal(ga(e, sock).mode, S_IFSOCK | 0600);
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "chr", S_IFCHR | 0600,
				    makedev(1, 3), UID, GID, &a), 0);
	chr = a.ino;
	assert_int_equal(ga(e, chr).rdev, makedev(1, 3));
	assert_int_equal(ga(e, chr).mode, S_IFCHR | 0600);

	dir = mk(e, SNAP_ROOT_INO, "dir", S_IFDIR | 0750);
	a = ga(e, dir);
	assert_int_equal(a.mode, S_IFDIR | 0750);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.size, 0);

	/* Type 0 means a regular file. */
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "notype", 0644, 0,
				    UID, GID, &a), 0);
	assert_int_equal(a.mode, S_IFREG | 0644);
	/* Symlinks are not made by mknod. */
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "lnk", S_IFLNK | 0777,
				    0, UID, GID, &a), -EINVAL);

	/* All inode numbers distinct; lookup agrees. */
	assert_true(reg != fifo && fifo != dir && dir != sock && sock != chr);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "reg"), reg);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "fifo"), fifo);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "dir"), dir);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "dir", &a), 0);
	assert_int_equal(a.mode, S_IFDIR | 0750);

	/* Parent: one subdirectory, six entries. */
	a = ga(e, SNAP_ROOT_INO);
	assert_int_equal(a.nlink, 3);
	assert_int_equal(a.size, 6);

	/* Existing names and bad names. */
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "reg", S_IFREG | 0644,
				    0, UID, GID, NULL), -EEXIST);
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "dir", S_IFDIR | 0755,
				    0, UID, GID, NULL), -EEXIST);
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "", S_IFREG | 0644, 0,
				    UID, GID, NULL), -EINVAL);
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "a/b", S_IFREG | 0644,
				    0, UID, GID, NULL), -EINVAL);
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, ".", S_IFDIR | 0755,
				    0, UID, GID, NULL), -EINVAL);
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "..", S_IFDIR | 0755,
				    0, UID, GID, NULL), -EINVAL);
	/* In a non-directory, or a missing one. */
	assert_int_equal(snap_mknod(e->t, reg, "x", S_IFREG | 0644, 0, UID, GID,
				    NULL), -ENOTDIR);
	assert_int_equal(snap_mknod(e->t, 999999, "x", S_IFREG | 0644, 0, UID,
				    GID, NULL), -ENOENT);
	/* None of the failures changed the parent. */
	a = ga(e, SNAP_ROOT_INO);
	assert_int_equal(a.nlink, 3);
	assert_int_equal(a.size, 6);

	/* Nested directories. */
	{
		uint64_t d2 = mk(e, dir, "sub", S_IFDIR | 0755), p = 0;

		assert_int_equal(ga(e, dir).nlink, 3);
		assert_int_equal(ga(e, dir).size, 1);
		assert_int_equal(snap_parent(e->t, d2, &p), 0);
		assert_int_equal(p, dir);
		assert_int_equal(snap_parent(e->t, dir, &p), 0);
		assert_int_equal(p, SNAP_ROOT_INO);
		assert_int_equal(lk(e, dir, "sub"), d2);
	}
}

static void test_symlink_readlink(void **state)
{
	struct env *e = *state;
	const char *target = "../some/target path";
	size_t tl = strlen(target);
	char buf[64], *big, *bigbuf;
	struct snap_attr a;
	uint64_t ln, reg, lnbig;

	assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "ln", target, UID,
				      GID, &a), 0);
	ln = a.ino;
	assert_int_equal(a.mode, S_IFLNK | 0777);
	assert_int_equal(a.size, tl);
	assert_int_equal(a.nlink, 1);
	assert_int_equal(a.uid, UID);
	assert_int_equal(a.gid, GID);
	a = ga(e, ln);
	assert_int_equal(a.mode, S_IFLNK | 0777);
	assert_int_equal(a.size, tl);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "ln", &a), 0);
	assert_int_equal(a.ino, ln);
	assert_true(S_ISLNK(a.mode));

	memset(buf, 'X', sizeof(buf));
	assert_int_equal(snap_readlink(e->t, ln, buf, sizeof(buf)), (int)tl);
	assert_string_equal(buf, target);
	/* Exactly large enough (target + NUL). */
	memset(buf, 'X', sizeof(buf));
	assert_int_equal(snap_readlink(e->t, ln, buf, tl + 1), (int)tl);
	assert_string_equal(buf, target);
	/* Too small by one, or tiny. */
	assert_int_equal(snap_readlink(e->t, ln, buf, tl), -ENAMETOOLONG);
	assert_int_equal(snap_readlink(e->t, ln, buf, 1), -ENAMETOOLONG);

	/* Not a symlink; missing inode. */
	reg = mk(e, SNAP_ROOT_INO, "reg", S_IFREG | 0644);
	assert_int_equal(snap_readlink(e->t, reg, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(snap_readlink(e->t, SNAP_ROOT_INO, buf, sizeof(buf)),
			 -EINVAL);
	assert_int_equal(snap_readlink(e->t, 999999, buf, sizeof(buf)), -ENOENT);

	/* Bad targets and names. */
	assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "empty", "", UID, GID,
				      NULL), -ENOENT);
	assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "ln", "x", UID, GID,
				      NULL), -EEXIST);
	assert_int_equal(snap_symlink(e->t, reg, "x", "y", UID, GID, NULL),
			 -ENOTDIR);

	/* A long target (more than the inode codec's stack buffer). */
	big = malloc(4000);
	bigbuf = malloc(4096);
	assert_non_null(big);
	assert_non_null(bigbuf);
	for (int i = 0; i < 3999; i++)
		big[i] = (char)('a' + i % 26);
	big[3999] = 0;
	assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "big", big, UID, GID,
				      &a), 0);
	lnbig = a.ino;
	assert_int_equal(a.size, 3999);
	assert_int_equal(snap_readlink(e->t, lnbig, bigbuf, 4096), 3999);
	assert_string_equal(bigbuf, big);
	{
		char *huge = malloc(5000), *back = malloc(5000);

		assert_non_null(huge);
		assert_non_null(back);
		memset(huge, 'h', 4999);
		huge[4999] = 0;
		assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "huge", huge,
					      UID, GID, NULL), -ENAMETOOLONG);
		/* PATH_MAX - 1 bytes is the longest target. */
		huge[4096] = 0;
		assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "huge", huge,
					      UID, GID, NULL), -ENAMETOOLONG);
		huge[4095] = 0;
		assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "max", huge,
					      UID, GID, &a), 0);
		assert_int_equal(a.size, 4095);
		assert_int_equal(snap_readlink(e->t, a.ino, back, 5000), 4095);
		assert_string_equal(back, huge);
		free(huge);
		free(back);
	}

	/* Both survive a reopen; unlink of a symlink works. */
	env_reopen(e);
	assert_int_equal(snap_readlink(e->t, ln, buf, sizeof(buf)), (int)tl);
	assert_string_equal(buf, target);
	memset(bigbuf, 0, 4096);
	assert_int_equal(snap_readlink(e->t, lnbig, bigbuf, 4096), 3999);
	assert_string_equal(bigbuf, big);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "ln"), 0);
	assert_int_equal(snap_getattr(e->t, ln, &a), -ENOENT);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "ln", &a), -ENOENT);
	free(big);
	free(bigbuf);
}

static void test_lookup_errors(void **state)
{
	struct env *e = *state;
	char name255[256], name256[257];
	struct snap_attr a;
	uint64_t f, d, ino;

	f = mk(e, SNAP_ROOT_INO, "file", S_IFREG | 0644);
	d = mk(e, SNAP_ROOT_INO, "dir", S_IFDIR | 0755);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "nope", &a), -ENOENT);
	assert_int_equal(snap_lookup(e->t, d, "file", &a), -ENOENT);
	assert_int_equal(snap_lookup(e->t, f, "x", &a), -ENOTDIR);
	assert_int_equal(snap_lookup(e->t, 987654, "x", &a), -ENOENT);
	assert_int_equal(snap_getattr(e->t, 987654, &a), -ENOENT);
	/* Prefixes and extensions of a name are other names. */
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "fil", &a), -ENOENT);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "files", &a), -ENOENT);

	memset(name255, 'n', 255);
	name255[255] = 0;
	memset(name256, 'n', 256);
	name256[256] = 0;
	ino = mk(e, d, name255, S_IFREG | 0644);
	assert_int_equal(lk(e, d, name255), ino);
	assert_int_equal(snap_lookup(e->t, d, name256, &a), -ENAMETOOLONG);
	assert_int_equal(snap_mknod(e->t, d, name256, S_IFREG | 0644, 0, UID,
				    GID, NULL), -ENAMETOOLONG);
	assert_int_equal(snap_symlink(e->t, d, name256, "t", UID, GID, NULL),
			 -ENAMETOOLONG);
	assert_int_equal(snap_link(e->t, f, d, name256, NULL), -ENAMETOOLONG);
	assert_int_equal(snap_unlink(e->t, d, name256), -ENAMETOOLONG);
	assert_int_equal(snap_rename(e->t, d, name255, d, name256, 0),
			 -ENAMETOOLONG);
	assert_int_equal(lk(e, d, name255), ino);

	/* Non-ASCII (UTF-8) and odd bytes are just bytes. */
	ino = mk(e, d, "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93", S_IFREG | 0644);
	assert_int_equal(lk(e, d, "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93"), ino);
	assert_int_equal(snap_lookup(e->t, d, "hello world", &a), -ENOENT);
	{
		char want[300];

		snprintf(want, sizeof(want), "%s,%s",
			 "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93", name255);
		assert_names(e, d, want);
	}

	/* The 255-byte name survives a reopen. */
	env_reopen(e);
	assert_int_equal(snap_lookup(e->t, d, name255, &a), 0);
}

static void test_getattr_times(void **state)
{
	struct env *e = *state;
	struct snap_attr a, b, r0, r1;
	struct timespec t0, t1;
	uint64_t f;

	r0 = ga(e, SNAP_ROOT_INO);
	tick();
	t0 = now();
	f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);
	t1 = now();
	a = ga(e, f);
	assert_true(ts_cmp(&a.mtime, &t0) >= 0);
	assert_true(ts_cmp(&a.mtime, &t1) <= 0);
	assert_int_equal(ts_cmp(&a.atime, &a.mtime), 0);
	assert_int_equal(ts_cmp(&a.ctime, &a.mtime), 0);
	assert_true(a.mtime.tv_nsec >= 0 && a.mtime.tv_nsec < 1000000000);
	/* The parent's mtime and ctime moved. */
	r1 = ga(e, SNAP_ROOT_INO);
	assert_true(ts_cmp(&r1.mtime, &r0.mtime) > 0);
	assert_true(ts_cmp(&r1.ctime, &r0.ctime) > 0);
	assert_true(ts_cmp(&r1.mtime, &t0) >= 0);

	/* A write moves mtime and ctime, not atime. */
	tick();
	assert_int_equal(snap_write(e->t, f, "abc", 3, 0), 3);
	b = ga(e, f);
	assert_true(ts_cmp(&b.mtime, &a.mtime) > 0);
	assert_true(ts_cmp(&b.ctime, &a.ctime) > 0);
	assert_int_equal(ts_cmp(&b.atime, &a.atime), 0);
	assert_int_equal(b.size, 3);
	assert_int_equal(b.blocks, 16);

	/* link moves the inode's ctime and the directory's times. */
	tick();
	r0 = ga(e, SNAP_ROOT_INO);
	assert_int_equal(snap_link(e->t, f, SNAP_ROOT_INO, "g", NULL), 0);
	a = ga(e, f);
	assert_true(ts_cmp(&a.ctime, &b.ctime) > 0);
	assert_int_equal(ts_cmp(&a.mtime, &b.mtime), 0);
	r1 = ga(e, SNAP_ROOT_INO);
	assert_true(ts_cmp(&r1.mtime, &r0.mtime) > 0);

	/* unlink moves the ctime of a remaining link and the dir's times. */
	tick();
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "g"), 0);
	b = ga(e, f);
	assert_true(ts_cmp(&b.ctime, &a.ctime) > 0);
	r0 = ga(e, SNAP_ROOT_INO);
	assert_true(ts_cmp(&r0.mtime, &r1.mtime) > 0);

	/* rename moves both directories' times and the inode's ctime. */
	tick();
	{
		uint64_t d = mk(e, SNAP_ROOT_INO, "d", S_IFDIR | 0755);
		struct snap_attr d0 = ga(e, d), d1;

		tick();
		r0 = ga(e, SNAP_ROOT_INO);
		assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "f", d, "f", 0), 0);
		a = ga(e, f);
		assert_true(ts_cmp(&a.ctime, &b.ctime) > 0);
		d1 = ga(e, d);
		assert_true(ts_cmp(&d1.mtime, &d0.mtime) > 0);
		r1 = ga(e, SNAP_ROOT_INO);
		assert_true(ts_cmp(&r1.mtime, &r0.mtime) > 0);
	}

	/* Times survive a reopen exactly (nanoseconds). */
	a = ga(e, f);
	env_reopen(e);
	b = ga(e, f);
	assert_int_equal(ts_cmp(&a.atime, &b.atime), 0);
	assert_int_equal(ts_cmp(&a.mtime, &b.mtime), 0);
	assert_int_equal(ts_cmp(&a.ctime, &b.ctime), 0);
}

static void test_setgid_dir(void **state)
{
	struct env *e = *state;
	struct snap_attr a;
	uint64_t sg, plain, f, sub, subsub, f2, p;

	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "sg", S_IFDIR | 02775,
				    0, 500, 777, &a), 0);
	sg = a.ino;
	assert_int_equal(a.mode, S_IFDIR | 02775);
	assert_int_equal(a.gid, 777);

	/* A file in a setgid dir: the dir's group, no S_ISGID. */
	assert_int_equal(snap_mknod(e->t, sg, "f", S_IFREG | 0644, 0, UID, GID,
				    &a), 0);
	f = a.ino;
	assert_int_equal(a.uid, UID);
	assert_int_equal(a.gid, 777);
	assert_int_equal(a.mode, S_IFREG | 0644);
	assert_int_equal(ga(e, f).gid, 777);

	/* A subdirectory: the group and S_ISGID, transitively. */
	assert_int_equal(snap_mknod(e->t, sg, "sub", S_IFDIR | 0755, 0, UID, GID,
				    &a), 0);
	sub = a.ino;
	assert_int_equal(a.gid, 777);
	assert_int_equal(a.mode, S_IFDIR | S_ISGID | 0755);
	a = ga(e, sub);
	assert_int_equal(a.gid, 777);
	assert_true(a.mode & S_ISGID);
	assert_int_equal(snap_mknod(e->t, sub, "subsub", S_IFDIR | 0700, 0, UID,
				    GID, &a), 0);
	subsub = a.ino;
	assert_int_equal(a.gid, 777);
	assert_int_equal(a.mode, S_IFDIR | S_ISGID | 0700);
	assert_int_equal(snap_symlink(e->t, subsub, "ln", "x", UID, GID, &a), 0);
	assert_int_equal(a.gid, 777);
	assert_int_equal(snap_mknod(e->t, subsub, "fifo", S_IFIFO | 0600, 0, UID,
				    GID, &a), 0);
	assert_int_equal(a.gid, 777);
	assert_false(a.mode & S_ISGID);

	/* A plain dir: the creator's group, no S_ISGID. */
	plain = mk(e, SNAP_ROOT_INO, "plain", S_IFDIR | 0755);
	assert_int_equal(snap_mknod(e->t, plain, "f2", S_IFREG | 0644, 0, UID,
				    4321, &a), 0);
	f2 = a.ino;
	assert_int_equal(ga(e, f2).gid, 4321);
	assert_int_equal(snap_mknod(e->t, plain, "d2", S_IFDIR | 0755, 0, UID,
				    4321, &a), 0);
	assert_int_equal(a.gid, 4321);
	assert_false(a.mode & S_ISGID);

	/* Clearing S_ISGID (setattr) stops the inheritance. */
	a.mode = 0775;
	assert_int_equal(snap_setattr(e->t, sg, &a, SNAP_SET_MODE, &a), 0);
	assert_int_equal(a.mode, S_IFDIR | 0775);
	assert_int_equal(snap_mknod(e->t, sg, "later", S_IFREG | 0644, 0, UID,
				    GID, &a), 0);
	assert_int_equal(a.gid, GID);
	assert_int_equal(snap_parent(e->t, subsub, &p), 0);
	assert_int_equal(p, sub);
}

static void test_setattr(void **state)
{
	struct env *e = *state;
	struct snap_attr in, out, a;
	struct timespec t0, t1;
	uint64_t f, d, fifo;

	f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);
	d = mk(e, SNAP_ROOT_INO, "d", S_IFDIR | 0755);
	fifo = mk(e, SNAP_ROOT_INO, "p", S_IFIFO | 0644);
	memset(&in, 0, sizeof(in));

	/* mode: permission bits (with suid/sgid/sticky) change, type stays. */
	tick();
	a = ga(e, f);
	t0 = now();
	in.mode = S_IFDIR | 04751;
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_MODE, &out), 0);
	t1 = now();
	assert_int_equal(out.mode, S_IFREG | 04751);
	assert_int_equal(ga(e, f).mode, S_IFREG | 04751);
	/* ctime is now; mtime and atime did not move. */
	assert_true(ts_cmp(&out.ctime, &t0) >= 0);
	assert_true(ts_cmp(&out.ctime, &t1) <= 0);
	assert_int_equal(ts_cmp(&out.mtime, &a.mtime), 0);
	assert_int_equal(ts_cmp(&out.atime, &a.atime), 0);
	in.mode = 01777;
	assert_int_equal(snap_setattr(e->t, d, &in, SNAP_SET_MODE, &out), 0);
	assert_int_equal(out.mode, S_IFDIR | 01777);
	assert_int_equal(ga(e, d).nlink, 2);

	/* uid and gid, separately and together. */
	in.uid = 42;
	in.gid = 43;
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_UID, &out), 0);
	assert_int_equal(out.uid, 42);
	assert_int_equal(out.gid, GID);
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_GID, &out), 0);
	assert_int_equal(out.uid, 42);
	assert_int_equal(out.gid, 43);
	in.uid = 0;
	in.gid = 0;
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_UID | SNAP_SET_GID,
				      NULL), 0);
	a = ga(e, f);
	assert_int_equal(a.uid, 0);
	assert_int_equal(a.gid, 0);
	assert_int_equal(a.mode, S_IFREG | 04751);

	/* Explicit times, including the far past and nanoseconds. */
	in.atime.tv_sec = 1000000000;
	in.atime.tv_nsec = 123456789;
	in.mtime.tv_sec = 86400;
	in.mtime.tv_nsec = 999999999;
	assert_int_equal(snap_setattr(e->t, f, &in,
				      SNAP_SET_ATIME | SNAP_SET_MTIME, &out), 0);
	a = ga(e, f);
	assert_int_equal(a.atime.tv_sec, 1000000000);
	assert_int_equal(a.atime.tv_nsec, 123456789);
	assert_int_equal(a.mtime.tv_sec, 86400);
	assert_int_equal(a.mtime.tv_nsec, 999999999);
	assert_true(ts_cmp(&a.ctime, &t1) >= 0);
	/* Only atime. */
	in.atime.tv_sec = 5;
	in.atime.tv_nsec = 0;
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_ATIME, &out), 0);
	assert_int_equal(out.atime.tv_sec, 5);
	assert_int_equal(out.mtime.tv_sec, 86400);

	/* NOW variants. */
	t0 = now();
	assert_int_equal(snap_setattr(e->t, f, &in,
				      SNAP_SET_ATIME_NOW | SNAP_SET_MTIME_NOW,
				      &out), 0);
	t1 = now();
	assert_true(ts_cmp(&out.atime, &t0) >= 0);
	assert_true(ts_cmp(&out.atime, &t1) <= 0);
	assert_true(ts_cmp(&out.mtime, &t0) >= 0);
	assert_true(ts_cmp(&out.mtime, &t1) <= 0);
	/* Only mtime now: atime unchanged. */
	in.atime.tv_sec = 7;
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_ATIME, NULL), 0);
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_MTIME_NOW, &out), 0);
	assert_int_equal(out.atime.tv_sec, 7);
	assert_true(ts_cmp(&out.mtime, &t0) >= 0);

	/* Explicit ctime. */
	in.ctime.tv_sec = 12345;
	in.ctime.tv_nsec = 678;
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_CTIME, &out), 0);
	a = ga(e, f);
	assert_int_equal(a.ctime.tv_sec, 12345);
	assert_int_equal(a.ctime.tv_nsec, 678);

	/* An empty mask only touches ctime. */
	t0 = now();
	assert_int_equal(snap_setattr(e->t, f, &in, 0, &out), 0);
	assert_true(ts_cmp(&out.ctime, &t0) >= 0);
	assert_int_equal(out.uid, 0);

	/* out equals getattr. */
	a = ga(e, f);
	assert_memory_equal(&a, &out, sizeof(a));

	/* Size on non-files; missing inode. */
	in.size = 10;
	assert_int_equal(snap_setattr(e->t, d, &in, SNAP_SET_SIZE, NULL), -EISDIR);
	assert_int_equal(snap_setattr(e->t, fifo, &in, SNAP_SET_SIZE, NULL),
			 -EINVAL);
	assert_int_equal(ga(e, fifo).size, 0);
	assert_int_equal(snap_setattr(e->t, 999999, &in, SNAP_SET_MODE, NULL),
			 -ENOENT);
	/* Size on a file (details in test_snap_data.c). */
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_SIZE, &out), 0);
	assert_int_equal(out.size, 10);
	assert_int_equal(out.blocks, 0);

	/* Everything survives a reopen. */
	a = ga(e, f);
	env_reopen(e);
	out = ga(e, f);
	assert_memory_equal(&a, &out, sizeof(a));
	assert_int_equal(ga(e, d).mode, S_IFDIR | 01777);
}

/* ---- unlink / rmdir ------------------------------------------------------ */

static void test_unlink_rmdir(void **state)
{
	struct env *e = *state;
	struct snap_attr a;
	uint64_t f, d1, d2, sub, fifo;

	f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);
	fifo = mk(e, SNAP_ROOT_INO, "fifo", S_IFIFO | 0644);
	d1 = mk(e, SNAP_ROOT_INO, "d1", S_IFDIR | 0755);
	d2 = mk(e, SNAP_ROOT_INO, "d2", S_IFDIR | 0755);
	sub = mk(e, d1, "sub", S_IFDIR | 0755);
	mk(e, d1, "file", S_IFREG | 0644);
	a = ga(e, SNAP_ROOT_INO);
	assert_int_equal(a.nlink, 4);
	assert_int_equal(a.size, 4);
	assert_int_equal(ga(e, d1).nlink, 3);
	assert_int_equal(ga(e, d1).size, 2);

	/* Wrong kinds. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "d1"), -EISDIR);
	assert_int_equal(snap_rmdir(e->t, SNAP_ROOT_INO, "f"), -ENOTDIR);
	assert_int_equal(snap_rmdir(e->t, SNAP_ROOT_INO, "fifo"), -ENOTDIR);
	assert_int_equal(snap_rmdir(e->t, SNAP_ROOT_INO, "d1"), -ENOTEMPTY);
	assert_int_equal(snap_rmdir(e->t, d1, "."), -EINVAL);
	assert_int_equal(snap_rmdir(e->t, d1, ".."), -ENOTEMPTY);
	/* Missing names. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "nope"), -ENOENT);
	assert_int_equal(snap_rmdir(e->t, SNAP_ROOT_INO, "nope"), -ENOENT);
	/* Nothing changed. */
	assert_int_equal(lk(e, SNAP_ROOT_INO, "d1"), d1);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "f"), f);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
	assert_int_equal(ga(e, d1).size, 2);

	/* unlink a file: name and inode gone, parent size down. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "f"), 0);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "f", &a), -ENOENT);
	assert_int_equal(snap_getattr(e->t, f, &a), -ENOENT);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "f"), -ENOENT);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "fifo"), 0);
	assert_int_equal(snap_getattr(e->t, fifo, &a), -ENOENT);
	a = ga(e, SNAP_ROOT_INO);
	assert_int_equal(a.size, 2);
	assert_int_equal(a.nlink, 4);

	/* rmdir of a subdir: the parent's nlink drops. */
	assert_int_equal(snap_rmdir(e->t, d1, "sub"), 0);
	assert_int_equal(snap_getattr(e->t, sub, &a), -ENOENT);
	assert_int_equal(ga(e, d1).nlink, 2);
	assert_int_equal(ga(e, d1).size, 1);
	assert_int_equal(snap_rmdir(e->t, SNAP_ROOT_INO, "d1"), -ENOTEMPTY);
	assert_int_equal(snap_unlink(e->t, d1, "file"), 0);
	assert_int_equal(ga(e, d1).size, 0);
	assert_int_equal(snap_rmdir(e->t, SNAP_ROOT_INO, "d1"), 0);
	assert_int_equal(snap_getattr(e->t, d1, &a), -ENOENT);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "d1", &a), -ENOENT);
	a = ga(e, SNAP_ROOT_INO);
	assert_int_equal(a.nlink, 3);
	assert_int_equal(a.size, 1);
	assert_int_equal(snap_rmdir(e->t, SNAP_ROOT_INO, "d2"), 0);
	assert_int_equal(snap_getattr(e->t, d2, &a), -ENOENT);
	a = ga(e, SNAP_ROOT_INO);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.size, 0);
	assert_names(e, SNAP_ROOT_INO, "");

	/* A name can be reused, with a new inode number. */
	assert_true(mk(e, SNAP_ROOT_INO, "d1", S_IFREG | 0644) != d1);
	/* The removed dir's former entries do not reappear in a new dir. */
	env_reopen(e);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 2);
	assert_names(e, SNAP_ROOT_INO, "d1");
}

/* ---- hard links ----------------------------------------------------------- */

static void test_hardlinks(void **state)
{
	struct env *e = *state;
	struct snap_attr a;
	char buf[32] = { 0 };
	uint64_t f, d, d2;

	f = mk(e, SNAP_ROOT_INO, "a", S_IFREG | 0644);
	d = mk(e, SNAP_ROOT_INO, "d", S_IFDIR | 0755);
	assert_int_equal(snap_write(e->t, f, "shared data", 11, 0), 11);

	assert_int_equal(snap_link(e->t, f, SNAP_ROOT_INO, "b", &a), 0);
	assert_int_equal(a.ino, f);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(snap_link(e->t, f, d, "c", &a), 0);
	assert_int_equal(a.nlink, 3);
	assert_int_equal(ga(e, f).nlink, 3);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "b"), f);
	assert_int_equal(lk(e, d, "c"), f);
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, 3);
	assert_int_equal(ga(e, d).size, 1);
	/* Links do not count as subdirectories. */
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 3);
	assert_int_equal(ga(e, d).nlink, 2);

	/* Data is shared: write through one name, read through another. */
	assert_int_equal(snap_lookup(e->t, d, "c", &a), 0);
	assert_int_equal(snap_write(e->t, a.ino, "SHARED", 6, 0), 6);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "b", &a), 0);
	assert_int_equal(a.size, 11);
	assert_int_equal(snap_read(e->t, a.ino, buf, sizeof(buf), 0), 11);
	assert_memory_equal(buf, "SHARED data", 11);

	/* Errors. */
	assert_int_equal(snap_link(e->t, d, SNAP_ROOT_INO, "dlink", NULL), -EPERM);
	assert_int_equal(snap_link(e->t, SNAP_ROOT_INO, d, "root", NULL), -EPERM);
	assert_int_equal(snap_link(e->t, f, SNAP_ROOT_INO, "b", NULL), -EEXIST);
	assert_int_equal(snap_link(e->t, f, SNAP_ROOT_INO, "d", NULL), -EEXIST);
	assert_int_equal(snap_link(e->t, f, f, "x", NULL), -ENOTDIR);
	assert_int_equal(snap_link(e->t, 999999, SNAP_ROOT_INO, "x", NULL),
			 -ENOENT);
	assert_int_equal(snap_link(e->t, f, SNAP_ROOT_INO, "", NULL), -EINVAL);
	assert_int_equal(ga(e, f).nlink, 3);

	/* Unlink names one by one: data stays until the last. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "a"), 0);
	a = ga(e, f);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.size, 11);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0), 11);
	assert_memory_equal(buf, "SHARED data", 11);
	assert_int_equal(snap_unlink(e->t, d, "c"), 0);
	assert_int_equal(ga(e, f).nlink, 1);
	env_reopen(e);
	assert_int_equal(ga(e, f).nlink, 1);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "b"), f);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0), 11);
	assert_memory_equal(buf, "SHARED data", 11);

	/* Links of symlinks and fifos are fine too. */
	assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "sl", "tgt", UID, GID,
				      &a), 0);
	assert_int_equal(snap_link(e->t, a.ino, SNAP_ROOT_INO, "sl2", &a), 0);
	assert_int_equal(a.nlink, 2);
	assert_true(S_ISLNK(a.mode));
	d2 = mk(e, SNAP_ROOT_INO, "fifo", S_IFIFO | 0644);
	assert_int_equal(snap_link(e->t, d2, d, "fifo2", &a), 0);
	assert_int_equal(a.nlink, 2);

	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "b"), 0);
	assert_int_equal(snap_getattr(e->t, f, &a), -ENOENT);
	assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0), -ENOENT);
}

/* ---- rename ----------------------------------------------------------------- */

static void test_rename_plain(void **state)
{
	struct env *e = *state;
	struct snap_attr a;
	uint64_t f, d1, d2, sub, p;

	f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);
	d1 = mk(e, SNAP_ROOT_INO, "d1", S_IFDIR | 0755);
	d2 = mk(e, SNAP_ROOT_INO, "d2", S_IFDIR | 0755);
	sub = mk(e, d1, "sub", S_IFDIR | 0755);
	mk(e, sub, "inner", S_IFREG | 0644);

	/* Same directory. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "f", SNAP_ROOT_INO,
				     "g", 0), 0);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "f", &a), -ENOENT);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "g"), f);
	assert_int_equal(ga(e, f).nlink, 1);
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, 3);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
	/* To itself: nothing happens. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "g", SNAP_ROOT_INO,
				     "g", 0), 0);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "g"), f);

	/* A file across directories. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "g", d2, "g2", 0), 0);
	assert_int_equal(lk(e, d2, "g2"), f);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "g", &a), -ENOENT);
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, 2);
	assert_int_equal(ga(e, d2).size, 1);
	assert_int_equal(ga(e, d2).nlink, 2);

	/* A directory across directories: nlink bookkeeping and parent. */
	assert_int_equal(ga(e, d1).nlink, 3);
	assert_int_equal(snap_rename(e->t, d1, "sub", d2, "moved", 0), 0);
	assert_int_equal(ga(e, d1).nlink, 2);
	assert_int_equal(ga(e, d1).size, 0);
	assert_int_equal(ga(e, d2).nlink, 3);
	assert_int_equal(ga(e, d2).size, 2);
	assert_int_equal(ga(e, sub).nlink, 2);
	assert_int_equal(snap_parent(e->t, sub, &p), 0);
	assert_int_equal(p, d2);
	assert_int_equal(lk(e, d2, "moved"), sub);
	assert_int_equal(snap_lookup(e->t, sub, "inner", &a), 0);
	/* A directory in the same directory: counts unchanged. */
	assert_int_equal(snap_rename(e->t, d2, "moved", d2, "renamed", 0), 0);
	assert_int_equal(ga(e, d2).nlink, 3);
	assert_int_equal(ga(e, d2).size, 2);
	assert_int_equal(snap_parent(e->t, sub, &p), 0);
	assert_int_equal(p, d2);
	/* Up to the root. */
	assert_int_equal(snap_rename(e->t, d2, "renamed", SNAP_ROOT_INO, "top", 0),
			 0);
	assert_int_equal(ga(e, d2).nlink, 2);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 5);
	assert_int_equal(snap_parent(e->t, sub, &p), 0);
	assert_int_equal(p, SNAP_ROOT_INO);

	/* Errors. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "nope", SNAP_ROOT_INO,
				     "x", 0), -ENOENT);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "top", SNAP_ROOT_INO,
				     "a/b", 0), -EINVAL);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "top", SNAP_ROOT_INO,
				     "", 0), -EINVAL);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "top", 999999, "x", 0),
			 -ENOENT);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "top", f, "x", 0),
			 -ENOTDIR);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "top", SNAP_ROOT_INO,
				     "x", 1u << 5), -EINVAL);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "top", SNAP_ROOT_INO,
				     "x", SNAP_RENAME_NOREPLACE |
				     SNAP_RENAME_EXCHANGE), -EINVAL);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "top"), sub);

	env_reopen(e);
	assert_names(e, SNAP_ROOT_INO, "d1,d2,top");
	assert_names(e, d2, "g2");
	assert_names(e, sub, "inner");
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 5);
	assert_int_equal(snap_parent(e->t, sub, &p), 0);
	assert_int_equal(p, SNAP_ROOT_INO);
}

static void test_rename_replace(void **state)
{
	struct env *e = *state;
	struct snap_stats st0, st1;
	struct snap_attr a;
	char buf[16] = { 0 };
	uint64_t a1, b1, d, ed, ned, h, p;
	uint8_t blk[8192];

	a1 = mk(e, SNAP_ROOT_INO, "a", S_IFREG | 0644);
	b1 = mk(e, SNAP_ROOT_INO, "b", S_IFREG | 0644);
	assert_int_equal(snap_write(e->t, a1, "AAAA", 4, 0), 4);
	memset(blk, 0xbb, sizeof(blk));
	assert_int_equal(snap_write(e->t, b1, blk, sizeof(blk), 0), 8192);
	assert_int_equal(snap_stats(e->s, &st0), 0);
	assert_int_equal(st0.blocks, 2);

	/* Over an existing file: the old inode and its blocks go. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "a", SNAP_ROOT_INO,
				     "b", 0), 0);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "b"), a1);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "a", &a), -ENOENT);
	assert_int_equal(snap_getattr(e->t, b1, &a), -ENOENT);
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, 1);
	assert_int_equal(snap_read(e->t, a1, buf, sizeof(buf), 0), 4);
	assert_memory_equal(buf, "AAAA", 4);
	assert_int_equal(snap_stats(e->s, &st1), 0);
	assert_int_equal(st1.blocks, 1);

	/* Over a file that has another link: only that link goes. */
	h = mk(e, SNAP_ROOT_INO, "h", S_IFREG | 0644);
	assert_int_equal(snap_link(e->t, h, SNAP_ROOT_INO, "h2", NULL), 0);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "b", SNAP_ROOT_INO,
				     "h", 0), 0);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "h"), a1);
	assert_int_equal(ga(e, h).nlink, 1);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "h2"), h);

	/* A directory over an empty directory, same parent. */
	d = mk(e, SNAP_ROOT_INO, "d", S_IFDIR | 0755);
	mk(e, d, "x", S_IFREG | 0644);
	ed = mk(e, SNAP_ROOT_INO, "ed", S_IFDIR | 0755);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "d", SNAP_ROOT_INO,
				     "ed", 0), 0);
	assert_int_equal(snap_getattr(e->t, ed, &a), -ENOENT);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "ed"), d);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 3);
	assert_names(e, d, "x");
	assert_names(e, SNAP_ROOT_INO, "ed,h,h2");

	/* A directory over an empty directory in another parent. */
	ned = mk(e, d, "inner_empty", S_IFDIR | 0755);
	ed = mk(e, SNAP_ROOT_INO, "src", S_IFDIR | 0755);
	mk(e, ed, "payload", S_IFREG | 0644);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
	assert_int_equal(ga(e, d).nlink, 3);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "src", d,
				     "inner_empty", 0), 0);
	assert_int_equal(snap_getattr(e->t, ned, &a), -ENOENT);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 3);
	assert_int_equal(ga(e, d).nlink, 3);
	assert_int_equal(ga(e, d).size, 2);
	assert_int_equal(snap_parent(e->t, ed, &p), 0);
	assert_int_equal(p, d);
	assert_int_equal(lk(e, d, "inner_empty"), ed);
	assert_names(e, ed, "payload");

	/* Over a non-empty directory; kind mismatches. */
	mk(e, SNAP_ROOT_INO, "ndir", S_IFDIR | 0755);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "ndir", SNAP_ROOT_INO,
				     "ed", 0), -ENOTEMPTY);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "h2", SNAP_ROOT_INO,
				     "ndir", 0), -EISDIR);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "ndir", SNAP_ROOT_INO,
				     "h2", 0), -ENOTDIR);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "h2"), h);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
	assert_names(e, SNAP_ROOT_INO, "ed,h,h2,ndir");

	/* A directory into itself or below itself: EINVAL. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "ed", d, "loop", 0),
			 -EINVAL);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "ed", ed, "loop", 0),
			 -EINVAL);
	assert_int_equal(snap_rename(e->t, d, "inner_empty", ed, "loop", 0),
			 -EINVAL);
	/* Over its own (empty) child. */
	{
		uint64_t kid = mk(e, ed, "kid", S_IFDIR | 0755);

		assert_int_equal(snap_rename(e->t, d, "inner_empty", ed, "kid", 0),
				 -EINVAL);
		assert_int_equal(snap_rmdir(e->t, ed, "kid"), 0);
		assert_int_equal(snap_getattr(e->t, kid, &a), -ENOENT);
	}
	assert_int_equal(lk(e, SNAP_ROOT_INO, "ed"), d);
	assert_int_equal(snap_parent(e->t, d, &p), 0);
	assert_int_equal(p, SNAP_ROOT_INO);
	/* But a sibling's subdir is fine. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "ndir", ed, "ndir", 0),
			 0);
	assert_int_equal(ga(e, ed).nlink, 3);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 3);

	env_reopen(e);
	assert_names(e, SNAP_ROOT_INO, "ed,h,h2");
	assert_names(e, d, "inner_empty,x");
	assert_names(e, ed, "ndir,payload");
	assert_int_equal(snap_stats(e->s, &st1), 0);
	assert_int_equal(st1.blocks, 1);
}

static void test_rename_noreplace_exchange(void **state)
{
	struct env *e = *state;
	struct snap_dirent *de;
	struct snap_attr a;
	uint64_t f, g, d, d2, sub, p;
	size_t n;

	f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);
	g = mk(e, SNAP_ROOT_INO, "g", S_IFREG | 0644);
	d = mk(e, SNAP_ROOT_INO, "d", S_IFDIR | 0755);
	d2 = mk(e, SNAP_ROOT_INO, "d2", S_IFDIR | 0755);
	sub = mk(e, d, "sub", S_IFDIR | 0755);

	/* NOREPLACE. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "f", SNAP_ROOT_INO,
				     "g", SNAP_RENAME_NOREPLACE), -EEXIST);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "f", SNAP_ROOT_INO,
				     "d", SNAP_RENAME_NOREPLACE), -EEXIST);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "f"), f);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "g"), g);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "f", SNAP_ROOT_INO,
				     "f1", SNAP_RENAME_NOREPLACE), 0);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "f1"), f);

	/* EXCHANGE needs both. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "f1", SNAP_ROOT_INO,
				     "none", SNAP_RENAME_EXCHANGE), -ENOENT);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "none", SNAP_ROOT_INO,
				     "f1", SNAP_RENAME_EXCHANGE), -ENOENT);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "f1"), f);

	/* EXCHANGE two files. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "f1", SNAP_ROOT_INO,
				     "g", SNAP_RENAME_EXCHANGE), 0);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "f1"), g);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "g"), f);
	assert_int_equal(ga(e, f).nlink, 1);
	assert_int_equal(ga(e, g).nlink, 1);

	/* EXCHANGE a file and a directory in one parent: types follow. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "g", SNAP_ROOT_INO,
				     "d", SNAP_RENAME_EXCHANGE), 0);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "g", &a), 0);
	assert_int_equal(a.ino, d);
	assert_true(S_ISDIR(a.mode));
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "d", &a), 0);
	assert_int_equal(a.ino, f);
	assert_true(S_ISREG(a.mode));
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, 4);
	assert_int_equal(snap_readdir(e->t, SNAP_ROOT_INO, &de, &n), 0);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(de[i].name, "g") == 0) {
			assert_int_equal(de[i].ino, d);
			assert_int_equal(de[i].type, S_IFDIR);
		}
		if (strcmp(de[i].name, "d") == 0) {
			assert_int_equal(de[i].ino, f);
			assert_int_equal(de[i].type, S_IFREG);
		}
	}
	free(de);
	assert_int_equal(snap_parent(e->t, d, &p), 0);
	assert_int_equal(p, SNAP_ROOT_INO);

	/* EXCHANGE across directories: a dir (root/g = d) with a file in
	 * d2; nlink moves from root to d2. */
	mk(e, d2, "file_in_d2", S_IFREG | 0644);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "g", d2, "file_in_d2",
				     SNAP_RENAME_EXCHANGE), 0);
	assert_int_equal(lk(e, d2, "file_in_d2"), d);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "g", &a), 0);
	assert_true(S_ISREG(a.mode));
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 3);
	assert_int_equal(ga(e, d2).nlink, 3);
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, 4);
	assert_int_equal(ga(e, d2).size, 1);
	assert_int_equal(snap_parent(e->t, d, &p), 0);
	assert_int_equal(p, d2);

	/* EXCHANGE two directories across parents: counts unchanged,
	 * parents swapped. */
	{
		uint64_t x = mk(e, SNAP_ROOT_INO, "x", S_IFDIR | 0755);

		assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
		assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "x", d,
					     "sub", SNAP_RENAME_EXCHANGE), 0);
		assert_int_equal(lk(e, d, "sub"), x);
		assert_int_equal(lk(e, SNAP_ROOT_INO, "x"), sub);
		assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
		assert_int_equal(ga(e, d).nlink, 3);
		assert_int_equal(snap_parent(e->t, x, &p), 0);
		assert_int_equal(p, d);
		assert_int_equal(snap_parent(e->t, sub, &p), 0);
		assert_int_equal(p, SNAP_ROOT_INO);

		/* EXCHANGE a dir with something below itself: EINVAL both
		 * ways.  d2/file_in_d2 is d, d/sub is x. */
		assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "d2", d, "sub",
					     SNAP_RENAME_EXCHANGE), -EINVAL);
		assert_int_equal(snap_rename(e->t, d, "sub", SNAP_ROOT_INO, "d2",
					     SNAP_RENAME_EXCHANGE), -EINVAL);
		assert_int_equal(lk(e, d, "sub"), x);
		assert_int_equal(lk(e, SNAP_ROOT_INO, "d2"), d2);
	}

	env_reopen(e);
	assert_names(e, SNAP_ROOT_INO, "d,d2,f1,g,x");
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 4);
	assert_int_equal(ga(e, d2).nlink, 3);
}

static void test_rename_hardlink_noop(void **state)
{
	struct env *e = *state;
	struct snap_attr r0, r1;
	uint64_t f, d;

	f = mk(e, SNAP_ROOT_INO, "a", S_IFREG | 0644);
	d = mk(e, SNAP_ROOT_INO, "d", S_IFDIR | 0755);
	assert_int_equal(snap_link(e->t, f, SNAP_ROOT_INO, "b", NULL), 0);
	assert_int_equal(snap_link(e->t, f, d, "c", NULL), 0);
	r0 = ga(e, SNAP_ROOT_INO);

	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "a", SNAP_ROOT_INO,
				     "b", 0), 0);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "a", d, "c", 0), 0);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "a", SNAP_ROOT_INO,
				     "b", SNAP_RENAME_EXCHANGE), 0);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "a"), f);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "b"), f);
	assert_int_equal(lk(e, d, "c"), f);
	assert_int_equal(ga(e, f).nlink, 3);
	r1 = ga(e, SNAP_ROOT_INO);
	assert_int_equal(r1.size, r0.size);
	assert_int_equal(ts_cmp(&r1.mtime, &r0.mtime), 0);
	assert_names(e, SNAP_ROOT_INO, "a,b,d");
	/* With NOREPLACE the target exists: EEXIST. */
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "a", SNAP_ROOT_INO,
				     "b", SNAP_RENAME_NOREPLACE), -EEXIST);
}

/* ---- readdir ------------------------------------------------------------------ */

static void test_readdir_basic(void **state)
{
	struct env *e = *state;
	struct snap_dirent *d;
	uint64_t c, a, b, ab, l, f;
	size_t n;

	c = mk(e, SNAP_ROOT_INO, "c", S_IFREG | 0644);
	a = mk(e, SNAP_ROOT_INO, "a", S_IFIFO | 0644);
	b = mk(e, SNAP_ROOT_INO, "b", S_IFDIR | 0755);
	ab = mk(e, SNAP_ROOT_INO, "ab", S_IFREG | 0644);
	assert_int_equal(snap_symlink(e->t, SNAP_ROOT_INO, "B", "t", UID, GID,
				      NULL), 0);
	l = lk(e, SNAP_ROOT_INO, "B");
	assert_int_equal(snap_readdir(e->t, SNAP_ROOT_INO, &d, &n), 0);
	assert_int_equal(n, 5);
	/* Bytewise order: "B" < "a" < "ab" < "b" < "c". */
	assert_string_equal(d[0].name, "B");
	assert_int_equal(d[0].ino, l);
	assert_int_equal(d[0].type, S_IFLNK);
	assert_string_equal(d[1].name, "a");
	assert_int_equal(d[1].ino, a);
	assert_int_equal(d[1].type, S_IFIFO);
	assert_string_equal(d[2].name, "ab");
	assert_int_equal(d[2].ino, ab);
	assert_int_equal(d[2].type, S_IFREG);
	assert_string_equal(d[3].name, "b");
	assert_int_equal(d[3].ino, b);
	assert_int_equal(d[3].type, S_IFDIR);
	assert_string_equal(d[4].name, "c");
	assert_int_equal(d[4].ino, c);
	assert_int_equal(d[4].type, S_IFREG);
	free(d);

	/* Entries of a subdirectory are not the parent's, and vice versa. */
	mk(e, b, "inside", S_IFREG | 0644);
	assert_names(e, b, "inside");
	assert_names(e, SNAP_ROOT_INO, "B,a,ab,b,c");

	/* After unlinks, renames and new creates: exactly the live set. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "a"), 0);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "c", SNAP_ROOT_INO,
				     "zz", 0), 0);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "ab", b, "ab", 0), 0);
	mk(e, SNAP_ROOT_INO, "a", S_IFREG | 0644);
	assert_names(e, SNAP_ROOT_INO, "B,a,b,zz");
	assert_names(e, b, "ab,inside");
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, 4);

	/* Empty directory; not a directory; missing. */
	f = mk(e, b, "emptydir", S_IFDIR | 0755);
	assert_int_equal(snap_readdir(e->t, f, &d, &n), 0);
	assert_int_equal(n, 0);
	free(d);
	assert_int_equal(snap_readdir(e->t, c, &d, &n), -ENOTDIR);
	assert_int_equal(snap_readdir(e->t, 999999, &d, &n), -ENOENT);

	env_reopen(e);
	assert_names(e, SNAP_ROOT_INO, "B,a,b,zz");
	assert_names(e, b, "ab,emptydir,inside");
}

static void test_readdir_5000(void **state)
{
	struct env *e = *state;
	enum { N = 5000 };
	uint64_t *inos = calloc(N, sizeof(*inos));
	int *order = malloc(N * sizeof(*order));
	struct snap_dirent *d;
	uint64_t dir;
	char name[32];
	size_t n, k;

	assert_non_null(inos);
	assert_non_null(order);
	dir = mk(e, SNAP_ROOT_INO, "big", S_IFDIR | 0755);
	/* Create in a shuffled order (fixed seed). */
	for (int i = 0; i < N; i++)
		order[i] = i;
	srand(12345);
	for (int i = N - 1; i > 0; i--) {
		int j = rand() % (i + 1), tmp = order[i];

		order[i] = order[j];
		order[j] = tmp;
	}
	for (int i = 0; i < N; i++) {
		int x = order[i];

		snprintf(name, sizeof(name), "entry-%05d", x);
		inos[x] = mk(e, dir, name, (x % 10 == 0 ? S_IFDIR | 0755 :
					    S_IFREG | 0644));
	}
	assert_int_equal(ga(e, dir).size, N);
	assert_int_equal(ga(e, dir).nlink, 2 + N / 10);

	assert_int_equal(snap_readdir(e->t, dir, &d, &n), 0);
	assert_int_equal(n, N);
	for (size_t i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "entry-%05zu", i);
		assert_string_equal(d[i].name, name);
		assert_int_equal(d[i].ino, inos[i]);
		assert_int_equal(d[i].type, i % 10 == 0 ? S_IFDIR : S_IFREG);
	}
	free(d);

	/* Remove every third entry; the listing is exactly the rest. */
	for (int i = 0; i < N; i += 3) {
		snprintf(name, sizeof(name), "entry-%05d", i);
		if (i % 10 == 0)
			assert_int_equal(snap_rmdir(e->t, dir, name), 0);
		else
			assert_int_equal(snap_unlink(e->t, dir, name), 0);
	}
	env_reopen(e);
	assert_int_equal(snap_readdir(e->t, dir, &d, &n), 0);
	assert_int_equal(n, N - (N + 2) / 3);
	assert_int_equal(ga(e, dir).size, n);
	k = 0;
	for (int i = 0; i < N; i++) {
		if (i % 3 == 0)
			continue;
		snprintf(name, sizeof(name), "entry-%05d", i);
		assert_true(k < n);
		assert_string_equal(d[k].name, name);
		assert_int_equal(d[k].ino, inos[i]);
		k++;
	}
	assert_int_equal(k, n);
	free(d);
	{
		int subdirs = 0;

		for (int i = 0; i < N; i += 10)
			subdirs += i % 3 != 0;
		assert_int_equal(ga(e, dir).nlink, 2 + subdirs);
	}
	free(inos);
	free(order);
}

/* ---- xattrs --------------------------------------------------------------- */

static void test_xattrs(void **state)
{
	struct env *e = *state;
	static const uint8_t bin[] = { 0, 1, 2, 0, 255, 0 };
	struct snap_attr a0, a1;
	char buf[256];
	uint64_t f, d;

	f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);
	d = mk(e, SNAP_ROOT_INO, "d", S_IFDIR | 0755);

	assert_int_equal(snap_listxattr(e->t, f, buf, sizeof(buf)), 0);
	assert_int_equal(snap_listxattr(e->t, f, NULL, 0), 0);
	assert_int_equal(snap_getxattr(e->t, f, "user.a", buf, sizeof(buf)),
			 -ENODATA);

	a0 = ga(e, f);
	tick();
	assert_int_equal(snap_setxattr(e->t, f, "user.b", "value-b", 7, 0), 0);
	a1 = ga(e, f);
	assert_true(ts_cmp(&a1.ctime, &a0.ctime) > 0);
	assert_int_equal(ts_cmp(&a1.mtime, &a0.mtime), 0);
	assert_int_equal(snap_setxattr(e->t, f, "user.a", bin, sizeof(bin),
				       XATTR_CREATE), 0);
	assert_int_equal(snap_setxattr(e->t, f, "trusted.empty", "", 0, 0), 0);

	/* get: size query, exact, too small. */
	assert_int_equal(snap_getxattr(e->t, f, "user.b", NULL, 0), 7);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(snap_getxattr(e->t, f, "user.b", buf, 7), 7);
	assert_memory_equal(buf, "value-b", 7);
	assert_int_equal(snap_getxattr(e->t, f, "user.b", buf, 6), -ERANGE);
	assert_int_equal(snap_getxattr(e->t, f, "user.a", buf, sizeof(buf)),
			 (ssize_t)sizeof(bin));
	assert_memory_equal(buf, bin, sizeof(bin));
	assert_int_equal(snap_getxattr(e->t, f, "trusted.empty", buf,
				       sizeof(buf)), 0);
	assert_int_equal(snap_getxattr(e->t, f, "trusted.empty", NULL, 0), 0);
	assert_int_equal(snap_getxattr(e->t, f, "user.", buf, sizeof(buf)),
			 -ENODATA);
	assert_int_equal(snap_getxattr(e->t, f, "user.bb", buf, sizeof(buf)),
			 -ENODATA);

	/* list: size query, content (each name once, NUL-terminated). */
	{
		const char want[] = "trusted.empty\0user.a\0user.b";
		ssize_t len = snap_listxattr(e->t, f, NULL, 0);

		assert_int_equal(len, (ssize_t)sizeof(want));
		memset(buf, 'X', sizeof(buf));
		assert_int_equal(snap_listxattr(e->t, f, buf, sizeof(buf)), len);
		assert_memory_equal(buf, want, sizeof(want));
		assert_int_equal(snap_listxattr(e->t, f, buf, (size_t)len), len);
		assert_int_equal(snap_listxattr(e->t, f, buf, (size_t)len - 1),
				 -ERANGE);
		assert_int_equal(snap_listxattr(e->t, f, buf, 3), -ERANGE);
	}

	/* CREATE / REPLACE. */
	assert_int_equal(snap_setxattr(e->t, f, "user.a", "x", 1, XATTR_CREATE),
			 -EEXIST);
	assert_int_equal(snap_getxattr(e->t, f, "user.a", buf, sizeof(buf)),
			 (ssize_t)sizeof(bin));
	assert_int_equal(snap_setxattr(e->t, f, "user.new", "x", 1,
				       XATTR_REPLACE), -ENODATA);
	assert_int_equal(snap_getxattr(e->t, f, "user.new", buf, sizeof(buf)),
			 -ENODATA);
	assert_int_equal(snap_setxattr(e->t, f, "user.a", "replaced", 8,
				       XATTR_REPLACE), 0);
	assert_int_equal(snap_getxattr(e->t, f, "user.a", buf, sizeof(buf)), 8);
	assert_memory_equal(buf, "replaced", 8);
	/* Plain set overwrites too, shorter. */
	assert_int_equal(snap_setxattr(e->t, f, "user.a", "s", 1, 0), 0);
	assert_int_equal(snap_getxattr(e->t, f, "user.a", buf, sizeof(buf)), 1);
	assert_int_equal(buf[0], 's');
	/* Invalid flags, empty name. */
	assert_int_equal(snap_setxattr(e->t, f, "user.z", "x", 1, 0x100),
			 -EINVAL);
	assert_true(snap_setxattr(e->t, f, "", "x", 1, 0) < 0);

	/* remove. */
	assert_int_equal(snap_removexattr(e->t, f, "user.b"), 0);
	assert_int_equal(snap_getxattr(e->t, f, "user.b", buf, sizeof(buf)),
			 -ENODATA);
	assert_int_equal(snap_removexattr(e->t, f, "user.b"), -ENODATA);
	assert_int_equal(snap_removexattr(e->t, f, "user.never"), -ENODATA);
	{
		const char want[] = "trusted.empty\0user.a";

		assert_int_equal(snap_listxattr(e->t, f, buf, sizeof(buf)),
				 (ssize_t)sizeof(want));
		assert_memory_equal(buf, want, sizeof(want));
	}
	/* Names fill listxattr's 64 KiB at most: then ENOSPC, and the list
	 * still reads (it was E2BIG for good after ~270 such names). */
	{
		char name[256], *big = malloc(65536);
		ssize_t len = 0;
		int i, r = 0;

		assert_non_null(big);
		for (i = 0; i < 400 && r == 0; i++) {
			snprintf(name, sizeof(name), "user.%03d%0240d", i, 0);
			r = snap_setxattr(e->t, f, name, "v", 1, 0);
		}
		assert_int_equal(r, -ENOSPC);
		assert_true(i > 200);
		len = snap_listxattr(e->t, f, NULL, 0);
		assert_true(len > 65536 - 256 && len <= 65536);
		assert_int_equal(snap_listxattr(e->t, f, big, 65536), len);
		/* an existing name can still be set; one removed makes room */
		snprintf(name, sizeof(name), "user.%03d%0240d", 0, 0);
		assert_int_equal(snap_setxattr(e->t, f, name, "w", 1, 0), 0);
		assert_int_equal(snap_removexattr(e->t, f, name), 0);
		assert_int_equal(snap_setxattr(e->t, f, name, "v", 1, 0), 0);
		for (int j = 0; j < i - 1; j++) {
			snprintf(name, sizeof(name), "user.%03d%0240d", j, 0);
			assert_int_equal(snap_removexattr(e->t, f, name), 0);
		}
		free(big);
	}

	/* Set again after remove. */
	assert_int_equal(snap_setxattr(e->t, f, "user.b", "again", 5,
				       XATTR_CREATE), 0);

	/* Directories have xattrs too; other inodes are separate. */
	assert_int_equal(snap_setxattr(e->t, d, "user.dir", "D", 1, 0), 0);
	assert_int_equal(snap_listxattr(e->t, d, buf, sizeof(buf)), 9);
	assert_memory_equal(buf, "user.dir", 9);
	assert_int_equal(snap_getxattr(e->t, f, "user.dir", buf, sizeof(buf)),
			 -ENODATA);
	assert_int_equal(snap_listxattr(e->t, SNAP_ROOT_INO, buf, sizeof(buf)),
			 0);
	/* A large value. */
	{
		char *big = malloc(65536), *back = malloc(65536);

		assert_non_null(big);
		assert_non_null(back);
		for (int i = 0; i < 65536; i++)
			big[i] = (char)(i * 7);
		assert_int_equal(snap_setxattr(e->t, d, "user.big", big, 65536,
					       0), 0);
		assert_int_equal(snap_getxattr(e->t, d, "user.big", back, 65536),
				 65536);
		assert_memory_equal(big, back, 65536);
		assert_int_equal(snap_setxattr(e->t, d, "user.big2", big, 65537,
					       0), -E2BIG);
		free(big);
		free(back);
	}
	/* Name length limits: 255 bytes fine, 256 not. */
	{
		char n255[256], n256[257];

		memcpy(n255, "user.", 5);
		memset(n255 + 5, 'x', 250);
		n255[255] = 0;
		memcpy(n256, n255, 255);
		n256[255] = 'x';
		n256[256] = 0;
		assert_int_equal(snap_setxattr(e->t, d, n255, "v", 1, 0), 0);
		assert_int_equal(snap_getxattr(e->t, d, n255, buf, sizeof(buf)), 1);
		assert_true(snap_setxattr(e->t, d, n256, "v", 1, 0) < 0);
		assert_true(snap_getxattr(e->t, d, n256, buf, sizeof(buf)) < 0);
		assert_int_equal(snap_removexattr(e->t, d, n255), 0);
	}
	/* Missing inode. */
	assert_int_equal(snap_getxattr(e->t, 999999, "user.a", buf, sizeof(buf)),
			 -ENOENT);
	assert_int_equal(snap_setxattr(e->t, 999999, "user.a", "x", 1, 0),
			 -ENOENT);
	assert_int_equal(snap_listxattr(e->t, 999999, buf, sizeof(buf)), -ENOENT);

	/* Persistence. */
	env_reopen(e);
	assert_int_equal(snap_getxattr(e->t, f, "user.a", buf, sizeof(buf)), 1);
	assert_int_equal(snap_getxattr(e->t, f, "user.b", buf, sizeof(buf)), 5);
	assert_memory_equal(buf, "again", 5);
	{
		const char want[] = "trusted.empty\0user.a\0user.b";

		assert_int_equal(snap_listxattr(e->t, f, buf, sizeof(buf)),
				 (ssize_t)sizeof(want));
		assert_memory_equal(buf, want, sizeof(want));
	}

	/* An unlinked inode's xattrs do not leak to anything. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "f"), 0);
	assert_int_equal(snap_getxattr(e->t, f, "user.a", buf, sizeof(buf)),
			 -ENOENT);
	f = mk(e, SNAP_ROOT_INO, "f", S_IFREG | 0644);
	assert_int_equal(snap_listxattr(e->t, f, buf, sizeof(buf)), 0);
}

/* ---- persistence ------------------------------------------------------------- */

static void test_persistence(void **state)
{
	struct env *e = *state;
	struct snap_attr in = { 0 }, a, b;
	uint64_t d, f, ln, maxino, p;
	char buf[32];

	d = mk(e, SNAP_ROOT_INO, "dir", S_IFDIR | 0700);
	f = mk(e, d, "file", S_IFREG | 0600);
	assert_int_equal(snap_link(e->t, f, SNAP_ROOT_INO, "hard", NULL), 0);
	assert_int_equal(snap_symlink(e->t, d, "ln", "file", UID, GID, &a), 0);
	ln = a.ino;
	assert_int_equal(snap_write(e->t, f, "persist me", 10, 0), 10);
	in.uid = 7;
	in.gid = 8;
	in.mode = 0751;
	assert_int_equal(snap_setattr(e->t, f, &in,
				      SNAP_SET_UID | SNAP_SET_GID | SNAP_SET_MODE,
				      NULL), 0);
	assert_int_equal(snap_setxattr(e->t, f, "user.k", "v", 1, 0), 0);
	assert_int_equal(snap_sync(e->s), 0);
	a = ga(e, f);
	maxino = ln > f ? ln : f;

	env_reopen(e);
	b = ga(e, f);
	assert_memory_equal(&a, &b, sizeof(a));
	assert_int_equal(b.mode, S_IFREG | 0751);
	assert_int_equal(b.uid, 7);
	assert_int_equal(b.nlink, 2);
	assert_int_equal(lk(e, SNAP_ROOT_INO, "hard"), f);
	assert_int_equal(lk(e, d, "file"), f);
	assert_int_equal(snap_readlink(e->t, ln, buf, sizeof(buf)), 4);
	assert_string_equal(buf, "file");
	assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0), 10);
	assert_memory_equal(buf, "persist me", 10);
	assert_int_equal(snap_getxattr(e->t, f, "user.k", buf, sizeof(buf)), 1);
	assert_int_equal(ga(e, SNAP_ROOT_INO).nlink, 3);
	assert_int_equal(ga(e, d).mode, S_IFDIR | 0700);
	assert_int_equal(snap_parent(e->t, d, &p), 0);
	assert_int_equal(p, SNAP_ROOT_INO);
	assert_names(e, SNAP_ROOT_INO, "dir,hard");
	assert_names(e, d, "file,ln");

	/* Inode numbers are never reused after a reopen. */
	for (int i = 0; i < 5; i++) {
		char name[16];

		snprintf(name, sizeof(name), "new%d", i);
		assert_true(mk(e, SNAP_ROOT_INO, name, S_IFREG | 0644) > maxino);
	}
	env_reopen(e);
	assert_true(mk(e, SNAP_ROOT_INO, "newer", S_IFREG | 0644) > maxino + 5);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_store_fresh, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_store_init_nonempty, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_open_not_store, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_open_busy, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_mknod_types, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_symlink_readlink, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_lookup_errors, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_getattr_times, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_setgid_dir, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_setattr, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_unlink_rmdir, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_hardlinks, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_rename_plain, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_rename_replace, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_rename_noreplace_exchange,
						setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_rename_hardlink_noop, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_readdir_basic, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_readdir_5000, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_xattrs, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_persistence, setup, env_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
