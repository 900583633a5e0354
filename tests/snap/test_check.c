/* SPDX-License-Identifier: MIT */
/*
 * tests/snap/test_check.c - unit tests of the store checker (snap/check.h).
 *
 * A store with files, hard links, symlinks, xattrs, holes, truncation,
 * shared blocks, snapshots, branches (one deleted but kept as a parent,
 * one reset to a snapshot, one reset to its branch point), a deleted
 * snapshot and an unlinked-open file must check clean.  Then each kind of
 * damage is written straight into RocksDB through kv/ and the check must
 * name it with the right kind, branch and path; --repair fixes the safe
 * ones (and the store is clean afterwards) and leaves the unsafe ones
 * reported.  Real RocksDB in a temporary directory under /tmp.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "snap/check.h"
#include "snap/snap_int.h"
#include "snap_env.h"

#define BS 8192u
#define UID 1000u
#define GID 1000u

/* ---- collected problems ------------------------------------------------ */

struct prob {
	char *kind, *branch, *path, *detail;
};

struct probs {
	struct prob p[512];
	int n;
};

static char *dupnull(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void collect(void *arg, const char *kind, const char *branch,
		    const char *path, const char *detail)
{
	struct probs *ps = arg;

	print_message("  problem: %s | %s | %s | %s\n", kind,
		      branch ? branch : "-", path ? path : "-", detail);
	if (ps->n == 512)
		return;
	ps->p[ps->n].kind = strdup(kind);
	ps->p[ps->n].branch = dupnull(branch);
	ps->p[ps->n].path = dupnull(path);
	ps->p[ps->n].detail = strdup(detail);
	ps->n++;
}

static void probs_free(struct probs *ps)
{
	for (int i = 0; i < ps->n; i++) {
		free(ps->p[i].kind);
		free(ps->p[i].branch);
		free(ps->p[i].path);
		free(ps->p[i].detail);
	}
	ps->n = 0;
}

/* Number of problems of @kind (and @branch / @path unless NULL). */
static int count(const struct probs *ps, const char *kind, const char *branch,
		 const char *path)
{
	int n = 0;

	for (int i = 0; i < ps->n; i++) {
		const struct prob *p = &ps->p[i];

		if (strcmp(p->kind, kind))
			continue;
		if (branch && (!p->branch || strcmp(p->branch, branch)))
			continue;
		if (path && (!p->path || strcmp(p->path, path)))
			continue;
		n++;
	}
	return n;
}

/* ---- the store ---------------------------------------------------------- */

struct fx {
	struct env *e;
	struct snap *cs; /* opened with SNAP_OPEN_CHECK */
	uint64_t a, f, big; /* inodes of /a, /d/f, /big in main */
	uint32_t b2;        /* id of branch b2 */
};

static void fill(uint8_t *buf, size_t n, uint32_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = (uint8_t)(x | 1);
	}
}

static uint64_t mk(struct snap_tree *t, uint64_t dir, const char *name,
		   uint32_t mode)
{
	struct snap_attr a;

	assert_int_equal(snap_mknod(t, dir, name, mode, 0, UID, GID, &a), 0);
	return a.ino;
}

static void wr(struct snap_tree *t, uint64_t ino, uint64_t off, size_t n,
	       uint32_t seed)
{
	uint8_t *buf = malloc(n);

	assert_non_null(buf);
	fill(buf, n, seed);
	assert_int_equal(snap_write(t, ino, buf, n, off), (ssize_t)n);
	free(buf);
}

static struct snap_tree *tree(struct snap *s, const char *name)
{
	struct snap_tree *t;
	uint32_t id;

	assert_int_equal(snap_branch_find(s, name, &id), 0);
	assert_int_equal(snap_tree_get(s, id, &t), 0);
	return t;
}

/* Build the varied store of the file comment, then close it and reopen it
 * for checking. */
static void build(struct fx *x)
{
	struct env *e = x->e;
	struct snap_tree *t = e->t, *b1, *b3;
	struct snap_attr a;
	uint64_t d, sub, f2, open_ino, r, rx;
	uint32_t id;

	x->a = mk(t, SNAP_ROOT_INO, "a", S_IFREG | 0644);
	wr(t, x->a, 0, 3 * BS, 1);
	d = mk(t, SNAP_ROOT_INO, "d", S_IFDIR | 0755);
	sub = mk(t, d, "sub", S_IFDIR | 0700);
	x->f = mk(t, d, "f", S_IFREG | 0600);
	wr(t, x->f, 5 * BS + 100, 3000, 2); /* hole, then a partial block */
	assert_int_equal(snap_link(t, x->a, sub, "hl", &a), 0);
	assert_int_equal(snap_symlink(t, d, "sl", "../a", UID, GID, &a), 0);
	mk(t, sub, "fifo", S_IFIFO | 0644);
	assert_int_equal(snap_setxattr(t, x->a, "user.k", "v", 1, 0), 0);
	r = mk(t, SNAP_ROOT_INO, "r", S_IFDIR | 0755);
	rx = mk(t, r, "x", S_IFREG | 0644);
	wr(t, rx, 0, BS, 11);
	assert_int_equal(snap_link(t, rx, SNAP_ROOT_INO, "hx", &a), 0);
	x->big = mk(t, SNAP_ROOT_INO, "big", S_IFREG | 0644);
	wr(t, x->big, 0, 40 * BS, 3);
	assert_int_equal(snap_copy_range(t, x->big, 0, t, x->f, 16 * BS,
					 4 * BS), (ssize_t)(4 * BS));
	assert_int_equal(snap_fallocate(t, x->big, FALLOC_FL_PUNCH_HOLE |
					FALLOC_FL_KEEP_SIZE, 3 * BS + 10,
					5 * BS), 0);
	{
		struct snap_attr in = { .size = 20 * BS + 77 };

		assert_int_equal(snap_setattr(t, x->big, &in, SNAP_SET_SIZE,
					      &a), 0);
	}

	assert_int_equal(snap_snapshot_create(e->s, "main", "s1", NULL), 0);
	assert_int_equal(snap_branch_create(e->s, "b1", "main", NULL), 0);
	b1 = tree(e->s, "b1");
	wr(b1, x->a, BS, BS, 4);
	assert_int_equal(snap_unlink(b1, d, "f"), 0);
	f2 = mk(b1, sub, "new", S_IFREG | 0644);
	wr(b1, f2, 0, 2 * BS, 5);
	assert_int_equal(snap_rename(b1, d, "sl", SNAP_ROOT_INO, "sl2", 0), 0);
	assert_int_equal(snap_branch_create(e->s, "b2", "b1", &x->b2), 0);
	snap_tree_put(b1);
	assert_int_equal(snap_branch_delete(e->s, "b1", false), 0);
	/* an inherited directory removed in a branch: its entries show
	 * through from the parent under the removed inode, unreachable;
	 * the hard link elsewhere counts one link */
	b1 = tree(e->s, "b2");
	assert_int_equal(snap_unlink(b1, r, "x"), 0);
	assert_int_equal(snap_rmdir(b1, SNAP_ROOT_INO, "r"), 0);
	snap_tree_put(b1);

	assert_int_equal(snap_branch_create(e->s, "b3", "main", NULL), 0);
	b3 = tree(e->s, "b3");
	wr(b3, x->big, 0, BS, 6);
	snap_tree_put(b3);
	assert_int_equal(snap_branch_reset(e->s, "b3", "s1", false, &id), 0);
	assert_int_equal(snap_branch_create(e->s, "b4", "main", NULL), 0);
	b3 = tree(e->s, "b4");
	wr(b3, x->a, 0, BS, 7);
	snap_tree_put(b3);
	assert_int_equal(snap_branch_reset(e->s, "b4", NULL, false, &id), 0);
	assert_int_equal(snap_snapshot_create(e->s, "main", "s2", NULL), 0);
	assert_int_equal(snap_rmdir(t, d, "sub") == -ENOTEMPTY, 1);
	wr(t, x->big, 2 * BS, BS, 8);
	assert_int_equal(snap_snapshot_delete(e->s, "s2", false), 0);

	/* a file unlinked while open, and the store "crashes" with it open */
	open_ino = mk(t, SNAP_ROOT_INO, "open", S_IFREG | 0644);
	wr(t, open_ino, 0, BS, 9);
	snap_inode_open(t, open_ino);
	assert_int_equal(snap_unlink(t, SNAP_ROOT_INO, "open"), 0);

	/* last: a write to /a at main's current epoch */
	wr(t, x->a, 2 * BS, 100, 10);
	env_close(e);
	assert_int_equal(snap_open(e->store, SNAP_OPEN_CHECK, &x->cs), 0);
}

static int setup(void **state)
{
	struct fx *x = calloc(1, sizeof(*x));
	void *es;

	if (!x || env_setup(&es, "/tmp/bfs-check.XXXXXX", UID, GID) < 0) {
		free(x);
		return -1;
	}
	x->e = es;
	build(x);
	*state = x;
	return 0;
}

static int teardown(void **state)
{
	struct fx *x = *state;

	snap_close(x->cs);
	x->e->s = NULL;
	rm_rf(x->e->dir);
	free(x->e);
	free(x);
	return 0;
}

static int run(struct fx *x, unsigned flags, struct probs *ps,
	       struct snap_check_stats *st)
{
	probs_free(ps);
	print_message("snap_check(%s)\n", flags ? "repair" : "");
	return snap_check(x->cs, flags, collect, NULL, ps, st);
}

/* Reopen the check handle (as a new `branchfs check` would). */
static void reopen(struct fx *x)
{
	snap_close(x->cs);
	assert_int_equal(snap_open(x->e->store, SNAP_OPEN_CHECK, &x->cs), 0);
}

/* ---- raw access --------------------------------------------------------- */

static struct kv *KV(struct fx *x)
{
	return x->cs->kv;
}

/* The newest key (and value) with prefix @pfx (@plen bytes) in @cf. */
static void newest(struct fx *x, enum kv_cf cf, const uint8_t *pfx,
		   size_t plen, uint8_t *key, size_t *klen, uint8_t *val,
		   size_t *vlen)
{
	struct kv_iter *it;
	size_t kl, vl;
	const void *k, *v;
	bool ok;

	it = kv_iter_new(KV(x), cf, pfx, plen, NULL, 0);
	kv_iter_seek_first(it);
	ok = kv_iter_valid(it);
	k = ok ? kv_iter_key(it, &kl) : NULL;
	v = ok ? kv_iter_value(it, &vl) : NULL;
	if (!ok || kl < plen || memcmp(k, pfx, plen)) {
		kv_iter_free(it);
		fail_msg("no key with the prefix");
	}
	memcpy(key, k, kl);
	*klen = kl;
	if (val) {
		memcpy(val, v, vl);
		*vlen = vl;
	}
	kv_iter_free(it);
}

static void put(struct fx *x, enum kv_cf cf, const void *k, size_t kl,
		const void *v, size_t vl)
{
	struct kv_batch *b = kv_batch_new();

	kv_batch_put(b, cf, k, kl, v, vl);
	assert_int_equal(kv_commit(KV(x), b), 0);
	kv_batch_free(b);
}

static void del(struct fx *x, enum kv_cf cf, const void *k, size_t kl)
{
	struct kv_batch *b = kv_batch_new();

	kv_batch_delete(b, cf, k, kl);
	assert_int_equal(kv_commit(KV(x), b), 0);
	kv_batch_free(b);
}

/* Hash of block @blk of inode @ino in main (its newest version). */
static void main_block(struct fx *x, uint64_t ino, uint64_t blk,
		       uint8_t hash[BFS_HASH_SIZE])
{
	uint8_t p[21], k[64], v[64];
	size_t kl, vl;

	p[0] = BFS_PFX_BMAP;
	bfs_put_u32(p + 1, SNAP_MAIN_ID);
	bfs_put_u64(p + 5, ino);
	bfs_put_u64(p + 13, blk);
	newest(x, KV_CF_META, p, 21, k, &kl, v, &vl);
	assert_int_equal(vl, BFS_HASH_SIZE);
	memcpy(hash, v, BFS_HASH_SIZE);
}

static void set_count(struct fx *x, const uint8_t *h, int64_t delta)
{
	uint8_t v[BFS_REF_VALUE_SIZE];
	int64_t n;

	assert_int_equal(kv_block_refcount(KV(x), h, &n), 0);
	bfs_put_u64(v, (uint64_t)(n + delta));
	bfs_put_u32(v + 8, 0);
	/* keep the stored length: read it back from the record */
	{
		void *old;
		size_t ol;

		assert_int_equal(kv_get(KV(x), KV_CF_REFS, h, BFS_HASH_SIZE,
					&old, &ol), 0);
		assert_int_equal(ol, BFS_REF_VALUE_SIZE);
		memcpy(v + 8, (uint8_t *)old + 8, 4);
		free(old);
	}
	put(x, KV_CF_REFS, h, BFS_HASH_SIZE, v, sizeof(v));
}

/* ---- tests --------------------------------------------------------------- */

static void expect_clean(struct fx *x)
{
	struct probs ps = { 0 };
	struct snap_check_stats st;

	assert_int_equal(run(x, 0, &ps, &st), 0);
	assert_int_equal(ps.n, 0);
	assert_int_equal(st.problems, 0);
	probs_free(&ps);
}

static void test_clean(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	struct snap_check_stats st;

	assert_int_equal(run(x, 0, &ps, &st), 0);
	assert_int_equal(ps.n, 0);
	print_message("branches %llu snapshots %llu inodes %llu dirents %llu "
		      "bmap %llu blocks %llu\n",
		      (unsigned long long)st.branches,
		      (unsigned long long)st.snapshots,
		      (unsigned long long)st.inodes,
		      (unsigned long long)st.dirents,
		      (unsigned long long)st.bmap_entries,
		      (unsigned long long)st.blocks);
	/* main, b2, b3, b4; s1 (s2 deleted, b1 deleted but kept) */
	assert_int_equal(st.branches, 4);
	assert_int_equal(st.snapshots, 1);
	assert_true(st.blocks > 20);
	assert_true(st.bmap_entries >= st.blocks);
	/* repair on a clean store changes nothing */
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, &st), 0);
	assert_int_equal(st.repaired, 0);
	/* and the store still opens normally after all that */
	snap_close(x->cs);
	assert_int_equal(snap_open(x->e->store, 0, &x->cs), 0);
	snap_close(x->cs);
	assert_int_equal(snap_open(x->e->store, SNAP_OPEN_CHECK, &x->cs), 0);
	expect_clean(x);
	probs_free(&ps);
}

static void test_locked(void **state)
{
	struct fx *x = *state;
	struct snap *s2;

	assert_int_equal(snap_open(x->e->store, SNAP_OPEN_CHECK, &s2), -EBUSY);
	assert_int_equal(snap_open(x->e->store, 0, &s2), -EBUSY);
}

static void test_corrupt_block(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t h[BFS_HASH_SIZE], v[1 + BS];
	struct snap_tree *t;
	char buf[BS];

	main_block(x, x->a, 0, h);
	v[0] = BFS_CODEC_RAW;
	fill(v + 1, BS, 77); /* a well-formed value with other data */
	put(x, KV_CF_BLOCKS, h, BFS_HASH_SIZE, v, sizeof(v));

	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_true(count(&ps, "block-corrupt", "main", "/a") >= 1);
	/* only /a (its snapshot / branch copies too); nothing else */
	for (int i = 0; i < ps.n; i++) {
		assert_string_equal(ps.p[i].kind, "block-corrupt");
		assert_string_equal(ps.p[i].path, "/a");
	}
	/* unsafe: repair leaves it, and says so */
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 1);
	assert_true(count(&ps, "block-corrupt", "main", "/a") >= 1);
	reopen(x);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_true(count(&ps, "block-corrupt", "main", "/a") >= 1);
	/* and the file system refuses to return it */
	assert_int_equal(snap_tree_get(x->cs, SNAP_MAIN_ID, &t), 0);
	assert_int_equal(snap_read(t, x->a, buf, BS, 0), -EIO);
	assert_int_equal(snap_read(t, x->a, buf, BS, BS), BS);
	snap_tree_put(t);
	probs_free(&ps);
}

static void test_missing_block(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t h[BFS_HASH_SIZE];

	main_block(x, x->big, 10, h);
	del(x, KV_CF_BLOCKS, h, BFS_HASH_SIZE);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_true(count(&ps, "block-missing", "main", "/big") >= 1);
	assert_true(count(&ps, "block-missing", "s1", "/big") >= 1);
	for (int i = 0; i < ps.n; i++)
		assert_string_equal(ps.p[i].path, "/big");
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 1);
	assert_true(count(&ps, "block-missing", "main", "/big") >= 1);
	reopen(x);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_true(count(&ps, "block-missing", "main", "/big") >= 1);
	probs_free(&ps);
}

static void refcount_case(struct fx *x, int64_t delta)
{
	struct probs ps = { 0 };
	struct snap_check_stats st;
	uint8_t h[BFS_HASH_SIZE];
	int64_t before, after;

	main_block(x, x->big, 11, h);
	assert_int_equal(kv_block_refcount(KV(x), h, &before), 0);
	set_count(x, h, delta);
	assert_int_equal(run(x, 0, &ps, &st), 1);
	assert_int_equal(count(&ps, "refcount", NULL, NULL), 1);
	assert_int_equal(ps.n, 1);
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, &st), 0);
	assert_int_equal(st.repaired, 1);
	assert_int_equal(count(&ps, "refcount", NULL, NULL), 1);
	assert_non_null(strstr(ps.p[0].detail, "[repaired]"));
	assert_int_equal(kv_block_refcount(KV(x), h, &after), 0);
	assert_int_equal(after, before);
	reopen(x);
	expect_clean(x);
	probs_free(&ps);
}

static void test_refcount_high(void **state)
{
	refcount_case(*state, +2);
}

static void test_refcount_low(void **state)
{
	refcount_case(*state, -1);
}

static void test_dangling_dirent(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t rec[512], p[5], k[64], v[BFS_DIRENT_VALUE_SIZE];
	size_t rl, kl;
	uint64_t epoch;

	/* main's current epoch, from its record */
	p[0] = BFS_PFX_BRANCH;
	bfs_put_u32(p + 1, SNAP_MAIN_ID);
	newest(x, KV_CF_SYS, p, 5, k, &kl, rec, &rl);
	epoch = bfs_get_u64(rec + 14);
	k[0] = BFS_PFX_DIRENT;
	bfs_put_u32(k + 1, SNAP_MAIN_ID);
	bfs_put_u64(k + 5, SNAP_ROOT_INO);
	memcpy(k + 13, "ghost", 6);
	bfs_put_u64(k + 19, UINT64_MAX - epoch);
	bfs_put_u64(v, x->big + 1); /* an inode number never used */
	v[8] = S_IFREG >> 12;
	put(x, KV_CF_META, k, 27, v, sizeof(v));

	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(count(&ps, "dirent", "main", "/ghost"), 1);
	assert_int_equal(count(&ps, "size", "main", "/"), 1); /* one entry more */
	assert_int_equal(ps.n, 2);
	/* the entry is not dropped; the directory's size is counted right */
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 1);
	reopen(x);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(count(&ps, "dirent", "main", "/ghost"), 1);
	assert_int_equal(ps.n, 1);
	probs_free(&ps);
}

/* Patch the newest inode record of @ino in main: @off gets u32 @v. */
static void patch_inode(struct fx *x, uint64_t ino, size_t off, uint32_t v32,
			size_t newlen)
{
	uint8_t p[13], k[64], v[512];
	size_t kl, vl;

	p[0] = BFS_PFX_INODE;
	bfs_put_u32(p + 1, SNAP_MAIN_ID);
	bfs_put_u64(p + 5, ino);
	newest(x, KV_CF_META, p, 13, k, &kl, v, &vl);
	if (off)
		bfs_put_u32(v + off, v32);
	put(x, KV_CF_META, k, kl, v, newlen ? newlen : vl);
}

static void test_nlink(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	struct snap_tree *t;
	struct snap_attr a;

	patch_inode(x, x->a, 16, 7, 0); /* /a has 2 links */
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(count(&ps, "nlink", "main", "/a"), 1);
	assert_int_equal(ps.n, 1);
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 0);
	assert_int_equal(count(&ps, "nlink", "main", "/a"), 1);
	reopen(x);
	expect_clean(x);
	assert_int_equal(snap_tree_get(x->cs, SNAP_MAIN_ID, &t), 0);
	assert_int_equal(snap_getattr(t, x->a, &a), 0);
	assert_int_equal(a.nlink, 2);
	snap_tree_put(t);
	probs_free(&ps);
}

static void test_damaged_inode(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };

	patch_inode(x, x->a, 0, 0, 40); /* truncated record */
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(count(&ps, "inode", "main", "/a"), 1);
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 1);
	assert_int_equal(count(&ps, "inode", "main", "/a"), 1);
	/* nothing else of main is blamed */
	for (int i = 0; i < ps.n; i++)
		if (ps.p[i].path && ps.p[i].branch &&
		    !strcmp(ps.p[i].branch, "main"))
			assert_string_equal(ps.p[i].path, "/a");
	probs_free(&ps);
}

static void test_orphan_block(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	struct snap_check_stats st;
	uint8_t data[BS], h[BFS_HASH_SIZE], v[1 + BS];
	void *got;
	size_t gl;

	fill(data, BS, 99);
	kv_block_hash(data, h);
	v[0] = BFS_CODEC_RAW;
	memcpy(v + 1, data, BS);
	put(x, KV_CF_BLOCKS, h, BFS_HASH_SIZE, v, sizeof(v));
	assert_int_equal(run(x, 0, &ps, &st), 1);
	assert_int_equal(count(&ps, "orphan-block", NULL, NULL), 1);
	assert_int_equal(ps.n, 1);
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, &st), 0);
	assert_int_equal(st.repaired, 1);
	assert_int_equal(kv_get(KV(x), KV_CF_BLOCKS, h, BFS_HASH_SIZE, &got,
				&gl), -ENOENT);
	reopen(x);
	expect_clean(x);
	probs_free(&ps);
}

static void test_stale_queue(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t q[1 + BFS_HASH_SIZE], p[6];

	q[0] = BFS_PFX_GCQ;
	fill(q + 1, BFS_HASH_SIZE, 5);
	put(x, KV_CF_SYS, q, sizeof(q), "", 0);
	p[0] = BFS_PFX_PRUNE; /* a prune mark of an id that never existed */
	bfs_put_u32(p + 1, 4000);
	put(x, KV_CF_SYS, p, 5, "", 0);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(count(&ps, "gc-queue", NULL, NULL), 1);
	assert_int_equal(count(&ps, "prune-mark", NULL, NULL), 1);
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 0);
	reopen(x);
	expect_clean(x);
	probs_free(&ps);
}

static void test_bad_format(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t v[4];
	struct snap *s2;

	bfs_put_u32(v, 99);
	put(x, KV_CF_SYS, BFS_KEY_FORMAT, strlen(BFS_KEY_FORMAT), v, 4);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(count(&ps, "format", NULL, NULL), 1);
	assert_int_equal(ps.n, 1);
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 1);
	assert_int_equal(count(&ps, "format", NULL, NULL), 1);
	/* and no one opens it any more */
	snap_close(x->cs);
	x->cs = NULL;
	assert_int_equal(snap_open(x->e->store, SNAP_OPEN_CHECK, &s2),
			 -EPROTONOSUPPORT);
	assert_int_equal(snap_open(x->e->store, 0, &s2), -EPROTONOSUPPORT);
	probs_free(&ps);
}

static void test_broken_parent(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t p[5], k[16], v[512];
	size_t kl, vl;
	struct snap *s2;

	p[0] = BFS_PFX_BRANCH;
	bfs_put_u32(p + 1, x->b2);
	newest(x, KV_CF_SYS, p, 5, k, &kl, v, &vl);
	bfs_put_u32(v + 2, 4000); /* a parent that does not exist */
	put(x, KV_CF_SYS, k, kl, v, vl);
	reopen(x); /* the check handle opens it anyway */
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_true(count(&ps, "ancestry", "b2", NULL) >= 1);
	for (int i = 0; i < ps.n; i++)
		assert_string_equal(ps.p[i].kind, "ancestry");
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 1);
	assert_true(count(&ps, "ancestry", "b2", NULL) >= 1);
	/* the deleted parent b1 and its keys are kept: b2 still needs them */
	reopen(x);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_true(count(&ps, "ancestry", "b2", NULL) >= 1);
	for (int i = 0; i < ps.n; i++)
		assert_string_equal(ps.p[i].kind, "ancestry");
	snap_close(x->cs);
	x->cs = NULL;
	assert_int_equal(snap_open(x->e->store, 0, &s2), -EIO);
	assert_int_equal(snap_open(x->e->store, SNAP_OPEN_CHECK, &x->cs), 0);
	probs_free(&ps);
}

/* Number of metadata keys of branch id @b. */
static size_t keys_of(struct fx *x, uint32_t b)
{
	struct kv_iter *it = kv_iter_new(KV(x), KV_CF_META, NULL, 0, NULL, 0);
	size_t n = 0;

	assert_non_null(it);
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl;
		const uint8_t *k = kv_iter_key(it, &kl);

		if (kl >= 5 && bfs_get_u32(k + 1) == b)
			n++;
	}
	kv_iter_free(it);
	return n;
}

/* A leaf branch whose record is damaged: reported, and --repair leaves its
 * keys (and the blocks they reference) alone instead of dropping them as
 * the keys of an unknown id. */
static void test_damaged_record_kept(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t p[5], k[16], v[512];
	size_t kl, vl, before;

	before = keys_of(x, x->b2);
	assert_true(before > 0);
	p[0] = BFS_PFX_BRANCH;
	bfs_put_u32(p + 1, x->b2);
	newest(x, KV_CF_SYS, p, 5, k, &kl, v, &vl);
	put(x, KV_CF_SYS, k, kl, v, 1); /* truncated record */
	reopen(x);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 1);
	reopen(x);
	assert_int_equal(keys_of(x, x->b2), before);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	for (int i = 0; i < ps.n; i++) /* no data went missing */
		assert_true(strcmp(ps.p[i].kind, "block-missing") != 0);
	probs_free(&ps);
}

/* Keys of a branch id without a record, that no tree reads: unreachable
 * (a pruner that died between its last key batch and the record would
 * leave the opposite; this is what a lost record looks like). */
static void test_unreachable_keys(void **state)
{
	struct fx *x = *state;
	struct probs ps = { 0 };
	uint8_t data[BS], h[BFS_HASH_SIZE], k[29];
	struct kv_batch *b = kv_batch_new();

	fill(data, BS, 123);
	k[0] = BFS_PFX_BMAP;
	bfs_put_u32(k + 1, 3000);
	bfs_put_u64(k + 5, x->a);
	bfs_put_u64(k + 13, 0);
	bfs_put_u64(k + 21, UINT64_MAX - 1);
	assert_int_equal(kv_block_ref(KV(x), b, data, h), 0);
	kv_batch_put(b, KV_CF_META, k, sizeof(k), h, BFS_HASH_SIZE);
	assert_int_equal(kv_commit(KV(x), b), 0);
	kv_batch_free(b);
	assert_int_equal(run(x, 0, &ps, NULL), 1);
	assert_int_equal(count(&ps, "key", "(unknown id 3000)", NULL), 1);
	assert_int_equal(count(&ps, "counter", NULL, NULL), 1); /* next_id */
	assert_int_equal(run(x, SNAP_CHECK_REPAIR, &ps, NULL), 0);
	/* the key went, and so did the block it alone referenced */
	assert_int_equal(count(&ps, "refcount", NULL, NULL), 1);
	reopen(x);
	expect_clean(x);
	probs_free(&ps);
}

#define T_(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T_(test_clean),
		T_(test_locked),
		T_(test_corrupt_block),
		T_(test_missing_block),
		T_(test_refcount_high),
		T_(test_refcount_low),
		T_(test_dangling_dirent),
		T_(test_nlink),
		T_(test_damaged_inode),
		T_(test_orphan_block),
		T_(test_stale_queue),
		T_(test_bad_format),
		T_(test_broken_parent),
		T_(test_unreachable_keys),
		T_(test_damaged_record_kept),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
