/* SPDX-License-Identifier: MIT */
/*
 * tests/snap/test_faults.c - every metadata, snapshot and branch operation
 * of snap/ under injected kv faults (SQLite's fault-injection loop).
 *
 * For each operation and each fault (the N-th commit, WAL sync or read
 * fails with EIO, ENOSPC or ENOMEM, once or from then on), N runs 1, 2, ...
 * until an iteration runs with no fault firing.  Every iteration starts
 * from a copy of one template store, runs the operation with the fault
 * armed, and checks:
 *   - a fired write or sync fault makes the operation fail with a clean
 *     negative errno (never 0); a read fault may be absorbed only if the
 *     result is then exactly the fault-free one;
 *   - after a failed commit the handle refuses further writes (-EIO);
 *   - what the still-open store shows equals what the reopened store
 *     shows (no in-memory state left diverging from the store);
 *   - the reopened store passes snap_check() and its visible state - a
 *     digest of every branch and snapshot: paths, types, modes, owners,
 *     sizes, link counts, hard-link identity, content hashes, xattrs,
 *     symlink targets - is either the state before the operation or the
 *     state a fault-free run leaves, never a mix (a copy_range that
 *     reports a short count may also leave the state of that shorter
 *     copy, as POSIX allows);
 *   - after pruning and collecting, the block statistics equal those of
 *     the matching fault-free state (no leaked or lost references), and
 *     the reopened store takes writes again.
 * The number of fault-injection points exercised is printed at the end.
 *
 * BFS_FAULT_FILTER=REGEX runs only the operations whose name matches;
 * BFS_FAULT_FULL=1 fails syncs and reads with every errno too (not in
 * turn); BFS_FAULT_STRIDE=K tries every K-th N only (default 4 under
 * AddressSanitizer, else 1).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/falloc.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "snap/check.h"
#include "snap/snap_int.h" /* s->kv: the kv handle to arm faults on */
#include "snap_env.h"

/*
 * Under AddressSanitizer a RocksDB open costs ~10x more (it starts ~60
 * threads), so a sanitizer build tries every 4th N of each loop, each loop
 * starting at the next offset: together the loops still reach every N of
 * most operations.  BFS_FAULT_STRIDE overrides.
 */
#if defined(__SANITIZE_ADDRESS__)
#define STRIDE_DEFAULT 4
#else
#define STRIDE_DEFAULT 1
#endif

#define BS 8192u
#define UID 1000u
#define GID 1000u

/* ---- text buffer ------------------------------------------------------ */

struct buf {
	char *p;
	size_t n, cap;
};

static void bprintf(struct buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int m;

	for (;;) {
		va_start(ap, fmt);
		m = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0,
			      fmt, ap);
		va_end(ap);
		assert_true(m >= 0);
		if (b->p && b->n + (size_t)m < b->cap)
			break;
		b->cap = (b->cap + (size_t)m + 1) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	b->n += (size_t)m;
}

/* ---- files ------------------------------------------------------------ */

static char copy_dst[256];
static size_t copy_srclen;

static int copy_entry(const char *path, const struct stat *st, int flag,
		      struct FTW *ftw)
{
	char to[512];
	char data[65536];
	int in, out;
	ssize_t n;

	snprintf(to, sizeof(to), "%s%s", copy_dst, path + copy_srclen);
	if (flag == FTW_D)
		return mkdir(to, st->st_mode & 07777) < 0 && errno != EEXIST;
	if (flag != FTW_F || !strncmp(path + ftw->base, "LOG", 3))
		return 0; /* (RocksDB's info logs are not needed) */
	if (!strcmp(path + ftw->base, "reserve")) {
		/* The store's 64 MiB disk-full reserve: an empty one keeps
		 * snap_open from allocating it again in every copy. */
		out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		return out < 0 ? -1 : close(out);
	}
	in = open(path, O_RDONLY | O_CLOEXEC);
	out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		   st->st_mode & 07777);
	if (in < 0 || out < 0)
		return -1;
	while ((n = read(in, data, sizeof(data))) > 0)
		if (write(out, data, (size_t)n) != n)
			return -1;
	close(in);
	close(out);
	return n < 0 ? -1 : 0;
}

/* Replace directory @to with a copy of @from. */
static void copy_tree(const char *from, const char *to)
{
	rm_rf(to);
	snprintf(copy_dst, sizeof(copy_dst), "%s", to);
	copy_srclen = strlen(from);
	assert_int_equal(nftw(from, copy_entry, 16, FTW_PHYS), 0);
}

/* ---- the visible state ------------------------------------------------ */

struct inomap {
	uint64_t ino[256];
	int n;
};

static int canon_ino(struct inomap *m, uint64_t ino)
{
	for (int i = 0; i < m->n; i++)
		if (m->ino[i] == ino)
			return i;
	assert_true(m->n < 256);
	m->ino[m->n] = ino;
	return m->n++;
}

static void digest_inode(struct buf *b, struct snap_tree *t, uint64_t ino,
			 const char *path, uint32_t dtype, struct inomap *m,
			 int depth)
{
	struct snap_attr a;
	char lbuf[4096], names[4096];
	ssize_t xl;

	assert_true(depth < 16);
	assert_int_equal(snap_getattr(t, ino, &a), 0);
	if (dtype)
		assert_int_equal(dtype, a.mode & S_IFMT); /* dirent type */
	bprintf(b, "%s i%d %06o %u:%u n%u s%llu b%llu r%llu", path,
		canon_ino(m, ino), a.mode, a.uid, a.gid, a.nlink,
		(unsigned long long)a.size, (unsigned long long)a.blocks,
		(unsigned long long)a.rdev);
	if (S_ISREG(a.mode)) {
		uint8_t *data = malloc(a.size + 1);

		assert_non_null(data);
		assert_int_equal(snap_read(t, ino, data, a.size + 1, 0),
				 (ssize_t)a.size);
		bprintf(b, " h%016llx",
			(unsigned long long)XXH3_64bits(data, a.size));
		free(data);
	} else if (S_ISLNK(a.mode)) {
		assert_true(snap_readlink(t, ino, lbuf, sizeof(lbuf)) >= 0);
		bprintf(b, " -> %s", lbuf);
	}
	xl = snap_listxattr(t, ino, names, sizeof(names));
	assert_true(xl >= 0);
	for (ssize_t p = 0; p < xl; p += (ssize_t)strlen(names + p) + 1) {
		ssize_t vl = snap_getxattr(t, ino, names + p, lbuf,
					   sizeof(lbuf));

		assert_true(vl >= 0);
		bprintf(b, " x[%s]=%016llx", names + p,
			(unsigned long long)XXH3_64bits(lbuf, (size_t)vl));
	}
	bprintf(b, "\n");
	if (S_ISDIR(a.mode)) {
		struct snap_dirent *d;
		size_t n;

		assert_int_equal(snap_readdir(t, ino, &d, &n), 0);
		assert_int_equal(n, a.size); /* a directory's size: entries */
		for (size_t i = 0; i < n; i++) {
			char sub[1024];

			snprintf(sub, sizeof(sub), "%s%s%s", path,
				 depth ? "/" : "", d[i].name);
			digest_inode(b, t, d[i].ino, sub, d[i].type, m,
				     depth + 1);
		}
		free(d);
	}
}

/* Every branch and snapshot with its whole tree, as text (malloc()ed). */
static char *digest(struct snap *s)
{
	struct buf b = { 0 };

	for (int snaps = 0; snaps < 2; snaps++) {
		struct snap_branch_info *v;
		size_t n;

		assert_int_equal(snap_branch_list(s, snaps, &v, &n), 0);
		for (size_t i = 0; i < n; i++) {
			char from[SNAP_NAME_MAX + 1] = "-";
			struct snap_tree *t;
			struct inomap m = { .n = 0 };

			if (v[i].parent_id &&
			    snap_parent_name(s, v[i].parent_id, from,
					     sizeof(from)) < 0)
				snprintf(from, sizeof(from), "?");
			bprintf(&b, "%s %s from %s\n",
				snaps ? "snapshot" : "branch", v[i].name, from);
			assert_int_equal(snap_tree_get(s, v[i].id, &t), 0);
			digest_inode(&b, t, SNAP_ROOT_INO, "/", 0, &m, 0);
			snap_tree_put(t);
		}
		free(v);
	}
	if (!b.p)
		bprintf(&b, "%s", "");
	return b.p;
}

static void check_report(void *arg, const char *kind, const char *branch,
			 const char *path, const char *detail)
{
	fprintf(stderr, "check: %s: %s %s: %s\n", kind, branch ? branch : "-",
		path ? path : "-", detail);
}

/* snap_check() finds nothing wrong (@when says where we are). */
static void check_clean(struct snap *s, const char *opname, const char *when)
{
	struct snap_check_stats st;
	int ret = snap_check(s, 0, check_report, NULL, NULL, &st);

	if (ret != 0)
		fail_msg("%s: %s: snap_check returned %d (%llu problems)",
			 opname, when, ret, (unsigned long long)st.problems);
}

/* Block statistics once everything prunable is pruned and collected. */
static char *settled(struct snap *s)
{
	struct snap_stats st;
	struct buf b = { 0 };

	assert_int_equal(snap_prune(s), 0);
	assert_int_equal(snap_gc(s, 0), 0);
	assert_int_equal(snap_stats(s, &st), 0);
	bprintf(&b, "blocks %llu refs %llu stored %llu pending %llu",
		(unsigned long long)st.blocks, (unsigned long long)st.refs,
		(unsigned long long)st.stored_bytes,
		(unsigned long long)st.gc_pending);
	return b.p;
}

/* ---- the template store ----------------------------------------------- */

static struct {
	char dir[160];    /* mkdtemp() */
	char tmpl[200];   /* dir/tmpl: the template store */
	char work[200];   /* dir/work: the copy an iteration runs on */
	char ref[200];    /* dir/ref: the copy reference runs use */
	/* inode numbers in the template */
	uint64_t d, f1, sub, f2, e, ln, post, b1file;
	regex_t filter;
	bool filtered;
	bool full;        /* BFS_FAULT_FULL=1: every errno for every kind */
	unsigned long stride; /* BFS_FAULT_STRIDE: every stride-th N */
	unsigned long loops;
	/* fault-injection points exercised */
	unsigned long points[3];
	unsigned long iterations;
} G;

/*
 * Thousands of stores are opened, synced and closed: on tmpfs when there
 * is one (fsync is what would cost here, and this test is about what the
 * code does with failed calls, not about the disk).  BFS_FAULT_TMPDIR
 * overrides.
 */
static const char *tmpdir(void)
{
	const char *d = getenv("BFS_FAULT_TMPDIR");
	struct stat st;

	if (d && *d)
		return d;
	if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) &&
	    access("/dev/shm", W_OK) == 0)
		return "/dev/shm";
	return "/tmp";
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)((i * 7 + seed * 131 + (i >> 9)) % 251 + 1);
}

static uint64_t mk(struct snap_tree *t, uint64_t dir, const char *name,
		   uint32_t mode)
{
	struct snap_attr a;

	assert_int_equal(snap_mknod(t, dir, name, mode, 0, UID, GID, &a), 0);
	return a.ino;
}

static void put(struct snap_tree *t, uint64_t ino, uint64_t off, size_t n,
		unsigned seed)
{
	uint8_t *p = malloc(n);

	assert_non_null(p);
	fill(p, n, seed);
	assert_int_equal(snap_write(t, ino, p, n, off), (ssize_t)n);
	free(p);
}

static uint64_t look(struct snap_tree *t, uint64_t dir, const char *name)
{
	struct snap_attr a;

	assert_int_equal(snap_lookup(t, dir, name, &a), 0);
	return a.ino;
}

/*
 * main: /d (0750) with f1 (block 0, hole, block 2, 100 bytes of block 3)
 * and the empty directory sub; /f2 (5000 bytes, two xattrs); /e (empty);
 * /ln -> d/f1; /hl, a second link to d/f1.  Snapshot s1 of main, then
 * main changes f2 and gets /post; branch b1 of main writes b1file and
 * its own block 0 of d/f1.
 */
static int group_setup(void **state)
{
	struct snap *s;
	struct snap_tree *t, *tb;
	struct snap_attr a;
	uint32_t b1;
	const char *f = getenv("BFS_FAULT_FILTER");

	G.full = getenv("BFS_FAULT_FULL") && atoi(getenv("BFS_FAULT_FULL"));
	G.stride = STRIDE_DEFAULT;
	if (getenv("BFS_FAULT_STRIDE") && atoi(getenv("BFS_FAULT_STRIDE")) > 0)
		G.stride = (unsigned long)atoi(getenv("BFS_FAULT_STRIDE"));
	if (f && *f) {
		if (regcomp(&G.filter, f, REG_EXTENDED | REG_NOSUB))
			return -1;
		G.filtered = true;
	}
	snprintf(G.dir, sizeof(G.dir), "%s/bfs-faults.XXXXXX", tmpdir());
	if (!mkdtemp(G.dir))
		return -1;
	snprintf(G.tmpl, sizeof(G.tmpl), "%s/tmpl", G.dir);
	snprintf(G.work, sizeof(G.work), "%s/work", G.dir);
	snprintf(G.ref, sizeof(G.ref), "%s/ref", G.dir);
	assert_int_equal(snap_store_init(G.tmpl, UID, GID), 0);
	assert_int_equal(snap_open(G.tmpl, SNAP_OPEN_NO_BACKGROUND, &s), 0);
	assert_int_equal(snap_tree_get(s, SNAP_MAIN_ID, &t), 0);

	G.d = mk(t, SNAP_ROOT_INO, "d", S_IFDIR | 0750);
	G.f1 = mk(t, G.d, "f1", S_IFREG | 0644);
	put(t, G.f1, 0, BS, 1);
	put(t, G.f1, 2 * BS, BS + 100, 2);
	G.sub = mk(t, G.d, "sub", S_IFDIR | 0755);
	G.f2 = mk(t, SNAP_ROOT_INO, "f2", S_IFREG | 0600);
	put(t, G.f2, 0, 5000, 3);
	assert_int_equal(snap_setxattr(t, G.f2, "user.x", "xv", 2, 0), 0);
	assert_int_equal(snap_setxattr(t, G.f2, "user.y", "yv", 2, 0), 0);
	G.e = mk(t, SNAP_ROOT_INO, "e", S_IFREG | 0644);
	assert_int_equal(snap_symlink(t, SNAP_ROOT_INO, "ln", "d/f1", UID,
				      GID, &a), 0);
	G.ln = a.ino;
	assert_int_equal(snap_link(t, G.f1, SNAP_ROOT_INO, "hl", &a), 0);
	assert_int_equal(snap_snapshot_create(s, "main", "s1", NULL), 0);
	put(t, G.f2, 0, 100, 4);
	G.post = mk(t, SNAP_ROOT_INO, "post", S_IFREG | 0644);
	assert_int_equal(snap_branch_create(s, "b1", "main", &b1), 0);
	assert_int_equal(snap_tree_get(s, b1, &tb), 0);
	G.b1file = mk(tb, SNAP_ROOT_INO, "b1file", S_IFREG | 0644);
	put(tb, G.b1file, 0, BS, 5);
	put(tb, G.f1, 0, 300, 6);
	snap_tree_put(tb);
	snap_tree_put(t);
	snap_close(s);
	/* Reopen once and compact, so that copies open without replaying a
	 * WAL into new tables. */
	assert_int_equal(snap_open(G.tmpl, SNAP_OPEN_NO_BACKGROUND, &s), 0);
	assert_int_equal(snap_compact(s), 0);
	assert_int_equal(snap_tree_get(s, SNAP_MAIN_ID, &t), 0);
	assert_int_equal(look(t, SNAP_ROOT_INO, "f2"), G.f2);
	snap_tree_put(t);
	snap_close(s);
	*state = NULL;
	return 0;
}

static int group_teardown(void **state)
{
	unsigned long total = G.points[0] + G.points[1] + G.points[2];

	printf("fault-injection points exercised: %lu (commits %lu, syncs "
	       "%lu, reads %lu) in %lu iterations%s\n",
	       total, G.points[0], G.points[1], G.points[2], G.iterations,
	       G.stride > 1 ? " (every stride-th N only)" : "");
	rm_rf(G.dir);
	if (G.filtered)
		regfree(&G.filter);
	return 0;
}

/* ---- operations --------------------------------------------------------- */

struct ctx {
	const char *path;
	struct snap *s;
	struct snap_tree *t;  /* main */
	struct snap_tree *tb; /* b1 */
	size_t len;           /* copy_range length (partial results) */
};

struct opdef {
	const char *name;
	/* unfaulted preparation on top of the template (may be NULL) */
	void (*prep)(struct ctx *c);
	/* the operation: >= 0 success, else -errno */
	ssize_t (*run)(struct ctx *c);
	size_t len;   /* ctx.len for the full operation */
	bool partial; /* a short count is a legal result (copy_range) */
};

static ssize_t op_mknod(struct ctx *c)
{
	return snap_mknod(c->t, SNAP_ROOT_INO, "new", S_IFREG | 0640, 0, 7, 8,
			  NULL);
}

static ssize_t op_mkdir(struct ctx *c)
{
	return snap_mknod(c->t, G.d, "newdir", S_IFDIR | 0700, 0, UID, GID,
			  NULL);
}

static ssize_t op_mknod_b1(struct ctx *c)
{
	return snap_mknod(c->tb, G.d, "new", S_IFREG | 0644, 0, UID, GID,
			  NULL);
}

static ssize_t op_symlink(struct ctx *c)
{
	return snap_symlink(c->t, G.d, "sl", "../f2", UID, GID, NULL);
}

static ssize_t op_link(struct ctx *c)
{
	return snap_link(c->t, G.f2, G.d, "f2link", NULL);
}

static ssize_t op_unlink(struct ctx *c)
{
	return snap_unlink(c->t, SNAP_ROOT_INO, "f2");
}

static ssize_t op_unlink_hardlinked(struct ctx *c)
{
	return snap_unlink(c->t, SNAP_ROOT_INO, "hl");
}

static ssize_t op_unlink_b1(struct ctx *c)
{
	return snap_unlink(c->tb, SNAP_ROOT_INO, "f2");
}

static ssize_t op_rmdir(struct ctx *c)
{
	return snap_rmdir(c->t, G.d, "sub");
}

static ssize_t op_rename(struct ctx *c)
{
	return snap_rename(c->t, SNAP_ROOT_INO, "f2", SNAP_ROOT_INO, "f2r", 0);
}

static ssize_t op_rename_dir(struct ctx *c)
{
	return snap_rename(c->t, G.d, "sub", SNAP_ROOT_INO, "sub2", 0);
}

static ssize_t op_rename_over(struct ctx *c)
{
	return snap_rename(c->t, SNAP_ROOT_INO, "e", SNAP_ROOT_INO, "f2", 0);
}

static ssize_t op_rename_noreplace(struct ctx *c)
{
	return snap_rename(c->t, SNAP_ROOT_INO, "e", G.d, "e",
			   SNAP_RENAME_NOREPLACE);
}

static ssize_t op_rename_exchange(struct ctx *c)
{
	return snap_rename(c->t, SNAP_ROOT_INO, "f2", G.d, "sub",
			   SNAP_RENAME_EXCHANGE);
}

static ssize_t op_rename_b1(struct ctx *c)
{
	return snap_rename(c->tb, G.d, "f1", SNAP_ROOT_INO, "f1moved", 0);
}

static ssize_t op_chmod_chown(struct ctx *c)
{
	struct snap_attr a = { .mode = 0604, .uid = 11, .gid = 12 };

	return snap_setattr(c->t, G.f2,
			    &a, SNAP_SET_MODE | SNAP_SET_UID | SNAP_SET_GID,
			    NULL);
}

static ssize_t op_truncate_down(struct ctx *c)
{
	struct snap_attr a = { .size = 100 };

	return snap_setattr(c->t, G.f1, &a, SNAP_SET_SIZE, NULL);
}

static ssize_t op_truncate_up(struct ctx *c)
{
	struct snap_attr a = { .size = 5 * BS + 10 };

	return snap_setattr(c->t, G.f2, &a, SNAP_SET_SIZE, NULL);
}

static ssize_t op_truncate_b1(struct ctx *c)
{
	struct snap_attr a = { .size = BS + 1 };

	return snap_setattr(c->tb, G.f1, &a, SNAP_SET_SIZE, NULL);
}

static ssize_t wr(struct snap_tree *t, uint64_t ino, uint64_t off, size_t n,
		  unsigned seed)
{
	uint8_t *p = malloc(n);
	ssize_t r;

	assert_non_null(p);
	fill(p, n, seed);
	r = snap_write(t, ino, p, n, off);
	free(p);
	return r;
}

static ssize_t op_write_partial(struct ctx *c)
{
	return wr(c->t, G.f1, 100, 50, 20);
}

static ssize_t op_write_multi(struct ctx *c)
{
	return wr(c->t, G.f1, 4096, 3 * BS, 21);
}

static ssize_t op_write_hole(struct ctx *c)
{
	return wr(c->t, G.f1, BS, BS, 22);
}

static ssize_t op_write_extend(struct ctx *c)
{
	return wr(c->t, G.e, 3 * BS + 5, 20, 23);
}

static ssize_t op_write_b1(struct ctx *c)
{
	return wr(c->tb, G.f1, 2 * BS + 10, BS, 24);
}

static ssize_t op_falloc(struct ctx *c)
{
	return snap_fallocate(c->t, G.e, 0, 0, 3 * BS);
}

static ssize_t op_falloc_keep(struct ctx *c)
{
	return snap_fallocate(c->t, G.f2, FALLOC_FL_KEEP_SIZE, 0, 4 * BS);
}

static ssize_t op_punch(struct ctx *c)
{
	return snap_fallocate(c->t, G.f1,
			      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100,
			      3 * BS);
}

static ssize_t op_copy_shared(struct ctx *c)
{
	return snap_copy_range(c->t, G.f1, 0, c->t, G.e, 0, c->len);
}

static ssize_t op_copy_bytes(struct ctx *c)
{
	return snap_copy_range(c->t, G.f2, 10, c->t, G.e, 3, c->len);
}

static ssize_t op_copy_mixed(struct ctx *c)
{
	/* head (bytes), two shared blocks, tail (bytes) */
	return snap_copy_range(c->t, G.f1, 100, c->t, G.e, 100, c->len);
}

static ssize_t op_copy_b1(struct ctx *c)
{
	/* from main into b1 */
	return snap_copy_range(c->t, G.f1, 0, c->tb, G.b1file, BS, c->len);
}

static ssize_t op_setxattr(struct ctx *c)
{
	return snap_setxattr(c->t, G.d, "user.new", "value", 5, 0);
}

static ssize_t op_setxattr_replace(struct ctx *c)
{
	return snap_setxattr(c->t, G.f2, "user.x", "other", 5, XATTR_REPLACE);
}

static ssize_t op_removexattr(struct ctx *c)
{
	return snap_removexattr(c->t, G.f2, "user.y");
}

static ssize_t op_removexattr_b1(struct ctx *c)
{
	return snap_removexattr(c->tb, G.f2, "user.x");
}

static ssize_t op_snapshot_create(struct ctx *c)
{
	return snap_snapshot_create(c->s, "main", "s2", NULL);
}

static ssize_t op_snapshot_create_b1(struct ctx *c)
{
	return snap_snapshot_create(c->s, "b1", "s2", NULL);
}

static ssize_t op_snapshot_delete(struct ctx *c)
{
	return snap_snapshot_delete(c->s, "s1", false);
}

static ssize_t op_branch_create(struct ctx *c)
{
	return snap_branch_create(c->s, "b2", "main", NULL);
}

static ssize_t op_branch_create_snap(struct ctx *c)
{
	return snap_branch_create(c->s, "b2", "s1", NULL);
}

static ssize_t op_branch_create_b1(struct ctx *c)
{
	return snap_branch_create(c->s, "b2", "b1", NULL);
}

static ssize_t op_branch_delete(struct ctx *c)
{
	return snap_branch_delete(c->s, "b1", true);
}

static ssize_t op_branch_reset(struct ctx *c)
{
	return snap_branch_reset(c->s, "b1", NULL, true, NULL);
}

static ssize_t op_branch_reset_to(struct ctx *c)
{
	return snap_branch_reset(c->s, "b1", "s1", true, NULL);
}

/* (b1's tree is held open: --force) */
static ssize_t op_branch_rename(struct ctx *c)
{
	return snap_branch_rename(c->s, "b1", "b1new", true);
}

static ssize_t op_snapshot_rename(struct ctx *c)
{
	return snap_branch_rename(c->s, "s1", "s1new", true);
}

/* b1 was reset: its old record (BFS_BRANCH_RESET) is renamed along, or
 * loses the flag on a delete, in the same batch */
static void prep_reset(struct ctx *c)
{
	assert_int_equal(snap_branch_reset(c->s, "b1", NULL, true, NULL), 0);
}

static ssize_t op_rename_after_reset(struct ctx *c)
{
	return op_branch_rename(c);
}

static ssize_t op_delete_after_reset(struct ctx *c)
{
	return op_branch_delete(c);
}

/* gc/prune: deletions and freed blocks are waiting for them. */
static void prep_gc(struct ctx *c)
{
	assert_int_equal(snap_unlink(c->t, SNAP_ROOT_INO, "post"), 0);
	assert_int_equal(snap_unlink(c->tb, SNAP_ROOT_INO, "b1file"), 0);
	assert_int_equal(wr(c->t, G.f2, 0, BS, 30), BS);
	snap_tree_put(c->tb); /* a held tree would pin what it reads */
	c->tb = NULL;
	assert_int_equal(snap_snapshot_delete(c->s, "s1", false), 0);
	assert_int_equal(snap_branch_delete(c->s, "b1", true), 0);
}

static ssize_t op_gc(struct ctx *c)
{
	return snap_gc(c->s, 0);
}

static ssize_t op_prune_gc(struct ctx *c)
{
	int ret = snap_prune(c->s);

	return ret < 0 ? ret : snap_gc(c->s, 0);
}

#define OP(n, ...) { .name = #n, .run = op_##n, __VA_ARGS__ }
static const struct opdef ops[] = {
	OP(mknod), OP(mkdir), OP(mknod_b1), OP(symlink),
	OP(link), OP(unlink), OP(unlink_hardlinked), OP(unlink_b1), OP(rmdir),
	OP(rename), OP(rename_dir), OP(rename_over), OP(rename_noreplace),
	OP(rename_exchange), OP(rename_b1), OP(chmod_chown),
	OP(truncate_down), OP(truncate_up), OP(truncate_b1),
	OP(write_partial), OP(write_multi), OP(write_hole), OP(write_extend),
	OP(write_b1), OP(falloc), OP(falloc_keep), OP(punch),
	OP(copy_shared, .len = 3 * BS, .partial = true),
	OP(copy_bytes, .len = 3000, .partial = true),
	OP(copy_mixed, .len = 3 * BS, .partial = true),
	OP(copy_b1, .len = 2 * BS, .partial = true),
	OP(setxattr), OP(setxattr_replace), OP(removexattr),
	OP(removexattr_b1),
	OP(snapshot_create), OP(snapshot_create_b1), OP(snapshot_delete),
	OP(branch_create), OP(branch_create_snap), OP(branch_create_b1),
	OP(branch_delete), OP(branch_reset), OP(branch_reset_to),
	OP(branch_rename), OP(snapshot_rename),
	OP(rename_after_reset, .prep = prep_reset),
	OP(delete_after_reset, .prep = prep_reset),
	OP(gc, .prep = prep_gc), OP(prune_gc, .prep = prep_gc),
};

/* ---- the loop ------------------------------------------------------------ */

static void ctx_open(struct ctx *c, const char *path)
{
	uint32_t b1;

	memset(c, 0, sizeof(*c));
	c->path = path;
	assert_int_equal(snap_open(path, SNAP_OPEN_NO_BACKGROUND, &c->s), 0);
	assert_int_equal(snap_tree_get(c->s, SNAP_MAIN_ID, &c->t), 0);
	if (snap_branch_find(c->s, "b1", &b1) == 0)
		assert_int_equal(snap_tree_get(c->s, b1, &c->tb), 0);
}

static void ctx_close(struct ctx *c)
{
	snap_tree_put(c->tb);
	snap_tree_put(c->t);
	snap_close(c->s);
	c->s = NULL;
}

/* A fresh copy of the template in @path, @op's preparation done. */
static void fresh(struct ctx *c, const char *path, const struct opdef *op)
{
	copy_tree(G.tmpl, path);
	ctx_open(c, path);
	if (op->prep)
		op->prep(c);
	c->len = op->len;
}

/* The reference states of one operation. */
struct refs {
	char *old, *old_settled; /* before the operation */
	char *neu, *neu_settled; /* after a fault-free run */
	ssize_t ret;             /* its result */
	/* short copies seen: their states (partial operations) */
	struct { ssize_t len; char *state, *settled; } part[8];
	int nparts;
};

/* Run @op fault-free with length @len; digest it live and settled. */
static ssize_t reference(const struct opdef *op, size_t len, bool run,
			 char **state, char **settle)
{
	struct ctx c;
	ssize_t ret = 0;
	char *live;

	fresh(&c, G.ref, op);
	if (run) {
		c.len = len;
		ret = op->run(&c);
		if (ret >= 0)
			assert_int_equal(snap_sync(c.s), 0);
	}
	live = digest(c.s);
	ctx_close(&c);
	ctx_open(&c, G.ref);
	check_clean(c.s, op->name, run ? "fault-free run" : "before");
	*state = digest(c.s);
	assert_string_equal(live, *state);
	*settle = settled(c.s);
	check_clean(c.s, op->name, "fault-free run, pruned");
	ctx_close(&c);
	free(live);
	return ret;
}

static void refs_free(struct refs *r)
{
	free(r->old);
	free(r->old_settled);
	free(r->neu);
	free(r->neu_settled);
	for (int i = 0; i < r->nparts; i++) {
		free(r->part[i].state);
		free(r->part[i].settled);
	}
}

static void show_states(const char *got, const struct refs *r)
{
	fprintf(stderr, "--- before:\n%s--- fault-free after:\n%s--- got:\n%s",
		r->old, r->neu, got);
}

enum kind { K_WRITE, K_SYNC, K_READ };
static const char *const kind_name[] = { "commit", "sync", "read" };
static const unsigned kind_ops[] = {
	KV_FAULT_WRITE, KV_FAULT_SYNC, KV_FAULT_READ | KV_FAULT_ITER
};

/*
 * One iteration: the @nth call among @kind fails with @err.  Returns
 * whether the fault fired (false: the loop is over).
 */
static bool iteration(const struct opdef *op, struct refs *r, enum kind kind,
		      unsigned long nth, int err, bool persistent,
		      unsigned long *calls)
{
	struct ctx c;
	const char *st_ref = NULL, *settled_ref = NULL;
	char *live, *after, *settle, *live_settle = NULL;
	char when[128];
	bool fired;
	ssize_t ret;

	G.iterations++;
	fresh(&c, G.work, op);
	kv_fault_set(c.s->kv, kind_ops[kind] | KV_FAULT_THIS_THREAD, nth, err,
		     persistent);
	ret = op->run(&c);
	if (ret >= 0) { /* as fsync after the operation would */
		int sret = snap_sync(c.s);

		if (sret < 0)
			ret = sret;
	}
	*calls = kv_fault_calls(c.s->kv, &fired);
	kv_fault_set(c.s->kv, 0, 0, 0, false);

	/* (a copy may report the part done before the failure) */
	if (fired && ret >= 0 && kind != K_READ &&
	    !(op->partial && ret < r->ret))
		fail_msg("%s: %s fault %lu (%s) fired but the operation "
			 "returned %zd", op->name, kind_name[kind], nth,
			 strerror(err), ret);
	if (ret < 0 && ret != -err && ret != -EIO && !(ret == r->ret))
		fail_msg("%s: %s fault %lu (%s): unexpected error %zd (%s)",
			 op->name, kind_name[kind], nth, strerror(err), ret,
			 strerror((int)-ret));

	live = digest(c.s);
	if (!(fired && kind == K_WRITE)) {
		/* Not poisoned: pruning and collecting in this process must
		 * end where they end after a reopen (no work forgotten).
		 * Let go of b1 first: a held tree pins what it reads. */
		snap_tree_put(c.tb);
		c.tb = NULL;
		live_settle = settled(c.s);
	} else {
		/* The failed commit poisoned the handle. */
		ssize_t probe = snap_mknod(c.t, SNAP_ROOT_INO, "probe",
					   S_IFREG | 0644, 0, UID, GID, NULL);

		if (probe != -EIO)
			fail_msg("%s: write after failed commit %lu returned "
				 "%zd, not -EIO", op->name, nth, probe);
	}
	if (persistent && fired) /* close under the fault too */
		kv_fault_set(c.s->kv, kind_ops[kind] | KV_FAULT_THIS_THREAD, 1,
			     err, true);
	ctx_close(&c);

	ctx_open(&c, G.work);
	snprintf(when, sizeof(when), "%s fault %lu (%s%s)", kind_name[kind],
		 nth, strerror(err), persistent ? ", persistent" : "");
	check_clean(c.s, op->name, when);
	after = digest(c.s);
	if (strcmp(live, after)) {
		fprintf(stderr, "--- open store showed:\n%s--- reopened:\n%s",
			live, after);
		fail_msg("%s: %s fault %lu (%s%s): the open store diverged from "
			 "the store", op->name, kind_name[kind], nth,
			 strerror(err), persistent ? ", persistent" : "");
	}
	if (!strcmp(after, r->neu)) {
		st_ref = r->neu;
		settled_ref = r->neu_settled;
	} else if (ret < 0 && !strcmp(after, r->old)) {
		st_ref = r->old;
		settled_ref = r->old_settled;
	} else if (op->partial && ret > 0 && ret != r->ret) {
		int i;

		for (i = 0; i < r->nparts && r->part[i].len != ret; i++)
			;
		if (i == r->nparts) {
			assert_true(i < 8);
			reference(op, (size_t)ret, true, &r->part[i].state,
				  &r->part[i].settled);
			r->part[i].len = ret;
			r->nparts++;
		}
		if (!strcmp(after, r->part[i].state)) {
			st_ref = r->part[i].state;
			settled_ref = r->part[i].settled;
		}
	}
	if (!st_ref) {
		show_states(after, r);
		fail_msg("%s: %s fault %lu (%s%s) returned %zd and left a state "
			 "that is neither the old nor the new one", op->name,
			 kind_name[kind], nth, strerror(err),
			 persistent ? ", persistent" : "", ret);
	}
	if (ret >= 0 && ret != r->ret && !op->partial)
		fail_msg("%s: returned %zd, fault-free %zd", op->name, ret,
			 r->ret);
	settle = settled(c.s);
	check_clean(c.s, op->name, "after prune and gc");
	if (strcmp(settle, settled_ref))
		fail_msg("%s: %s fault %lu (%s%s): settled blocks \"%s\", "
			 "expected \"%s\"", op->name, kind_name[kind], nth,
			 strerror(err), persistent ? ", persistent" : "",
			 settle, settled_ref);
	if (live_settle && strcmp(live_settle, settle))
		fail_msg("%s: %s fault %lu (%s%s): settled blocks \"%s\" in the "
			 "open store, \"%s\" after reopening", op->name,
			 kind_name[kind], nth, strerror(err),
			 persistent ? ", persistent" : "", live_settle, settle);
	free(live_settle);
	/* The reopened store takes writes. */
	assert_int_equal(snap_mknod(c.t, SNAP_ROOT_INO, "probe2",
				    S_IFREG | 0644, 0, UID, GID, NULL), 0);
	ctx_close(&c);
	free(live);
	free(after);
	free(settle);
	return fired;
}

static const int errs[] = { EIO, ENOSPC, ENOMEM };

/*
 * N = 1, 2, ... until no fault fires.  The fault-free run counted
 * @expect calls (count_calls), so N = expect + 1 is that run: it is not
 * repeated.  Each N up to @expect must fire (the calls are deterministic:
 * background threads are off and only this thread's calls count).
 */
static void run_loop(const struct opdef *op, struct refs *r, enum kind kind,
		     int errsel, bool persistent, unsigned long expect)
{
	unsigned long calls = 0;
	/* with a stride, successive loops start at successive offsets */
	unsigned long first = 1 + G.loops++ % G.stride;

	for (unsigned long nth = first; nth <= expect; nth += G.stride) {
		/* errsel < 0: rotate through the errnos with N */
		int err = errs[errsel < 0 ? (int)((nth + persistent) % 3)
					  : errsel];

		if (!iteration(op, r, kind, nth, err, persistent, &calls))
			fail_msg("%s: %s fault %lu did not fire, the fault-free "
				 "run made %lu calls (this one %lu)", op->name,
				 kind_name[kind], nth, expect, calls);
		G.points[kind]++;
	}
}

/* Calls among @kind that a fault-free run of @op makes. */
static unsigned long count_calls(const struct opdef *op, enum kind kind)
{
	struct ctx c;
	unsigned long n;

	fresh(&c, G.ref, op);
	kv_fault_set(c.s->kv, kind_ops[kind] | KV_FAULT_THIS_THREAD, 0, 0,
		     false);
	if (op->run(&c) >= 0)
		snap_sync(c.s);
	n = kv_fault_calls(c.s->kv, NULL);
	kv_fault_set(c.s->kv, 0, 0, 0, false);
	ctx_close(&c);
	return n;
}

static void test_op(const struct opdef *op)
{
	struct refs r = { 0 };

	if (G.filtered && regexec(&G.filter, op->name, 0, NULL, 0))
		return;
	reference(op, 0, false, &r.old, &r.old_settled);
	r.ret = reference(op, op->len, true, &r.neu, &r.neu_settled);
	for (enum kind k = K_WRITE; k <= K_READ; k++) {
		unsigned long expect = count_calls(op, k);

		for (int p = 0; p < 2; p++) {
			/* The errno changes no path in snap/ (it is passed
			 * up): every commit fails once with each of them;
			 * persistent commit faults (after the first, the
			 * poisoned handle refuses writes anyway), syncs and
			 * reads take the errnos in turn, unless
			 * BFS_FAULT_FULL=1. */
			if ((k != K_WRITE || p) && !G.full) {
				run_loop(op, &r, k, -1, p, expect);
				continue;
			}
			for (int e = 0; e < 3; e++)
				run_loop(op, &r, k, e, p, expect);
		}
	}
	refs_free(&r);
}

static void test_all(void **state)
{
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		unsigned long before = G.points[0] + G.points[1] + G.points[2];

		test_op(&ops[i]);
		printf("%-22s %lu points\n", ops[i].name,
		       G.points[0] + G.points[1] + G.points[2] - before);
		fflush(stdout);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_all),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
