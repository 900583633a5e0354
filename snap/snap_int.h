/* SPDX-License-Identifier: MIT */
/*
 * snap/snap_int.h - internals shared by the snap/ source files.
 *
 * Lock order (outermost first); never take an earlier lock while holding a
 * later one:
 *   1. snap->tree_lock          (tree table; held only to look up / insert)
 *   2. branch->epoch_lock       shared by every write op on the branch,
 *                               exclusive by a snapshot of it (epoch bump)
 *   3. branch->ns_lock          namespace ops (dirents) of the branch
 *   4. snap->stripes[i]         per-inode record locks, ascending index
 *   5. kv's block lock          taken inside kv_block_ref*, until commit
 *   6. snap->open_lock, snap->ino_lock, a tree's upcache and bmcache locks: leaf locks
 *
 * Invariant: an operation reads the branch's current epoch E once, under
 * epoch_lock held shared, and writes keys at epoch E only; so a snapshot
 * (which bumps E under the exclusive lock) sees every operation either
 * wholly before or wholly after it.
 */
#ifndef BFS_SNAP_INT_H
#define BFS_SNAP_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "kv/kv.h"
#include "snap.h"

#define SNAP_STRIPES 1024u
#define SNAP_INO_CHUNK 1024u
#define SNAP_KEY_MAX 600u

struct upcache;
struct bmcache;

struct snap_branch {
	uint32_t id;
	uint32_t parent_id;     /* the tree it reads through (ancestry) */
	uint64_t parent_epoch;
	uint32_t origin_id;     /* where it was made from (branch point) */
	uint64_t origin_epoch;
	_Atomic uint64_t epoch; /* current epoch; changes under epoch_lock (W) */
	uint64_t created_ns;
	bool is_snapshot;
	bool deleted;           /* kept only as an ancestor; see format.h */
	bool superseded;        /* deleted by a reset (BFS_BRANCH_RESET) */
	bool dropping;          /* the pruner is deleting its record */
	bool gone;              /* pruned away: record and keys deleted */
	_Atomic bool prune_needed; /* its readers shrank */
	_Atomic int pins;          /* deleted trees still held that read its
				    * keys at level 0: no pruning meanwhile */
	/* kv ticket of its creation commit (adopt) or of the last commit of
	 * a write op on it (op_end): an fsync of one of its files syncs up to
	 * that one (snap_sync_tree) */
	_Atomic uint64_t sync_need;
	/* write ops between op_begin and op_end: their commits may be
	 * visible before sync_need covers them, so an fsync then syncs all */
	_Atomic int writers;
	char name[SNAP_NAME_MAX + 1];
	pthread_rwlock_t epoch_lock;
	pthread_mutex_t ns_lock;
};

struct snap_level {
	uint32_t b;  /* branch id whose keys this level reads */
	uint64_t e;  /* newest epoch visible at this level */
};

struct snap_tree {
	struct snap *s;
	uint32_t id;
	bool readonly;
	struct snap_branch *br; /* branch written to (NULL for snapshots) */
	_Atomic int refs;
	uint32_t base;          /* branch read at the first level (its own for
				 * a branch, the parent's for a snapshot) */
	int nlevels;
	struct snap_level *lv;  /* lv[0].e is live for branches: read br->epoch;
				 * levels of branches without keys are left out */
	struct snap_tree *next; /* tree table chain */
	struct snap_branch *pin; /* pinned branch, once deleted while held */
	_Atomic(struct upcache *) uc; /* ancestor lookups (upcache.c) */
	_Atomic(struct bmcache *) bc; /* ancestor block maps (bmcache.c) */
};

struct snap_open_ent {
	uint32_t b;
	uint64_t ino;
	uint32_t count;
	struct snap_open_ent *next;
};

struct snap {
	/*
	 * @path is the store's real path as opened, for messages.  Every file
	 * of the store is reached through @root instead: "/proc/self/fd/N"
	 * for @dir_fd, an open descriptor of the store directory, so that a
	 * store renamed or moved while open keeps being served from where it
	 * is now, and its new files (RocksDB makes them by path) never land
	 * in whatever takes its old path.  Without /proc, @root is @path.
	 */
	char *path;
	char *root;
	int dir_fd;
	int lock_fd;
	bool readonly;
	bool checking;  /* SNAP_OPEN_CHECK: tolerate damage, change nothing */
	struct kv *kv;

	pthread_rwlock_t tree_lock;
	struct snap_tree *trees;      /* protected by tree_lock */
	struct snap_branch **branches; /* protected by tree_lock */
	size_t nbranches;
	_Atomic size_t uc_bytes;      /* held by the trees' upcaches */
	_Atomic size_t bc_bytes;      /* held by the trees' bmcaches */
	size_t bc_budget;             /* their limit; 0: the default (tests) */

	pthread_mutex_t ino_lock;
	uint64_t next_ino;     /* protected by ino_lock */
	uint64_t ino_reserved; /* persisted limit, protected by ino_lock */

	pthread_mutex_t open_lock;
	struct snap_open_ent *open[256]; /* protected by open_lock */

	pthread_mutex_t stripes[SNAP_STRIPES];

	/* background block collector (writable stores) */
	pthread_t gc_thread;
	bool gc_running;
	bool gc_stop;            /* protected by gc_lock */
	pthread_mutex_t gc_lock;
	pthread_cond_t gc_cond;

	bool killpriv;              /* kill suid/sgid on write (see snap.h) */
	void (*killed)(void *arg, uint32_t tree, uint64_t ino);
	void *killed_arg;
	pthread_mutex_t prune_lock; /* one pruner at a time */
	bool prune_pending;         /* protected by gc_lock: wake the pruner */
	uint32_t next_id;           /* protected by tree_lock (W) */
};

/* In-memory inode. */
struct snap_inode {
	uint64_t ino;
	uint32_t mode, uid, gid, nlink;
	uint64_t size, nblocks, rdev, parent;
	struct timespec atime, mtime, ctime;
	char *target; /* symlink target (malloc()ed) or NULL */
};


/* ---- internal API between snap/ files (not exported) ---------------- */

/*
 * An operation on a tree: the ancestry levels with level 0's epoch fixed
 * for the duration of the op.  op_begin(write=true) takes the branch's
 * epoch_lock shared (and fails with -EROFS on snapshots); op_end releases.
 */
struct op {
	struct snap *s;
	struct snap_tree *t;
	struct kv *kv;
	int n;
	const struct snap_level *lv;
	uint64_t e0; /* epoch of level 0 for this op */
	bool write;
};
int op_begin(struct op *op, struct snap_tree *t, bool write);
void op_end(struct op *op);
static inline uint64_t op_epoch(const struct op *op, int level)
{
	return level == 0 ? op->e0 : op->lv[level].e;
}
static inline uint32_t op_branch(const struct op *op)
{
	return op->lv[0].b;
}

/* Build key pfx | b | obj | ~e; returns its length. */
size_t mkkey(uint8_t *k, char pfx, uint32_t b, const void *obj, size_t olen,
	     uint64_t e);

/* Result of a versioned lookup. */
struct vres {
	int level;      /* level of the newest visible version, -1: none */
	uint64_t epoch; /* its epoch */
	void *val;      /* malloc()ed value (NULL for a tombstone) */
	size_t vlen;
	bool live;      /* a version exists and is not a tombstone */
};
/*
 * Find the newest version of object (pfx, obj) visible from level @from
 * (0 or 1) downwards, with epochs <= @maxe at level 0 if maxe is not 0.
 * Returns 0 (r filled; r->level -1 if none) or -errno.  The caller frees
 * r->val.
 */
int vget(struct op *op, char pfx, const void *obj, size_t olen, int from,
	 uint64_t maxe, struct vres *r);
/*
 * vget's fast path: the exact key (level 0, op epoch), which shadows every
 * older version and ancestor.  1 found (*r filled as by vget), 0 not
 * there, -errno.
 */
int level0_exact(struct op *op, char pfx, const void *obj, size_t olen,
		 struct vres *r);
/* After level0_exact missed: true if level 0 holds no older version either
 * (epoch 1 is a branch's first; see level0_exact), so its iterator can be
 * skipped. */
static inline bool level0_done(const struct op *op)
{
	return op->e0 == 1;
}
/* Newest version of (pfx, obj) with epoch <= e in branch b alone: 1 found
 * (*val malloc()ed or NULL for a tombstone), 0 none, -errno. */
int level_get(struct kv *kv, char pfx, uint32_t b, const void *obj,
	      size_t olen, uint64_t e, void **val, size_t *vlen,
	      uint64_t *epoch);
/* vget over levels >= 1 only (the frozen ancestors), through the tree's
 * cache (upcache.c); *r must start zeroed.  0 or -errno. */
int upper_get(struct op *op, char pfx, const void *obj, size_t olen,
	      struct vres *r);
void upcache_free(struct upcache *c);
/* Lookups the tree's cache answered so far (tests). */
uint64_t upcache_hits(struct snap_tree *t);

/*
 * The block maps of a tree's levels >= 1, a chunk of BC_SPAN blocks at a
 * time (bmcache.c).  Bit i of @present: block chunk * BC_SPAN + i has a
 * version at some level >= 1 (a tombstone included); of @live: the newest
 * of those is a block, whose hash is hash[i].
 */
#define BC_SPAN 64
struct bc_chunk {
	uint64_t present;
	uint64_t live;
	uint8_t hash[BC_SPAN][BFS_HASH_SIZE];
};
/* True if @t has ancestor levels and a cache for them (made on first use,
 * within the store's budget). */
bool bmcache_on(struct snap_tree *t);
/* 1 and *out filled if the chunk is cached, else 0. */
int bmcache_get(struct snap_tree *t, uint64_t ino, uint64_t chunk,
		struct bc_chunk *out);
/* Whether reading the whole chunk to keep it is worth it: the cache can
 * keep it (a free slot within the budget, or a slot to replace). */
bool bmcache_room(struct snap_tree *t, uint64_t ino, uint64_t chunk);
/* Keep what levels >= 1 hold for the chunk (read by the caller). */
void bmcache_put(struct snap_tree *t, uint64_t ino, uint64_t chunk,
		 const struct bc_chunk *in);
void bmcache_free(struct bmcache *c);
/* Chunks the tree's cache answered so far (tests). */
uint64_t bmcache_hits(struct snap_tree *t);
/* True if a live version exists below (level 0, op epoch). */
int vhas_older(struct op *op, char pfx, const void *obj, size_t olen);
/*
 * Remove object (pfx, obj) in the op's branch at its epoch: delete the key
 * at the current epoch, plus a tombstone when an older version would
 * otherwise show through.
 */
int vdel(struct op *op, struct kv_batch *b, char pfx, const void *obj,
	 size_t olen);
void vput(struct op *op, struct kv_batch *b, char pfx, const void *obj,
	  size_t olen, const void *val, size_t vlen);

/* Inodes */
int inode_get(struct op *op, uint64_t ino, struct snap_inode *in);
void inode_put(struct op *op, struct kv_batch *b, const struct snap_inode *in);
void inode_release(struct snap_inode *in);
void inode_to_attr(const struct snap_inode *in, struct snap_attr *a);
void inode_touch(struct timespec *ts);
int inode_purge(struct op *op, struct kv_batch *b, struct snap_inode *in);

/* Inode record locks */
void stripes_lock(struct snap *s, uint32_t b, const uint64_t *inos, int n,
		  int *held);
void stripes_unlock(struct snap *s, const int *held, int n);

uint64_t ino_alloc(struct snap *s, int *err);
bool snap_is_open(struct snap *s, uint32_t b, uint64_t ino);
void orphan_key(uint8_t *k, uint32_t b, uint64_t ino);

/* Directory entries */
int dirent_get(struct op *op, uint64_t dir, const char *name, uint64_t *ino,
	       uint32_t *type);
int name_check(const char *name);

/* Block map: remove blocks [first, last) of @in (last = UINT64_MAX: all). */
int bmap_remove(struct op *op, struct kv_batch *b, struct snap_inode *in,
		uint64_t first, uint64_t last);
/* Zero the tail of block containing @size (size not block aligned). */
int bmap_zero_tail(struct op *op, struct kv_batch *b, struct snap_inode *in,
		   uint64_t size);
int xattr_purge(struct op *op, struct kv_batch *b, uint64_t ino);
/*
 * The readers of a branch (see "Readers" in kv/format.h), as the pruner
 * and du count them.  Record @c reads branch @id at c->parent_epoch while
 * it is not gone and is not a deleted snapshot (a deleted branch reads on
 * until the pruner removes it) ...
 */
static inline bool reads_via_parent(const struct snap_branch *c, uint32_t id)
{
	return c->parent_id == id && !c->gone && !(c->is_snapshot && c->deleted);
}

/* ... and a live branch reset elsewhere also reads, at c->origin_epoch,
 * the place it was made from: a plain reset may go back there. */
static inline bool reads_via_origin(const struct snap_branch *c, uint32_t id)
{
	return c->origin_id == id && !c->gone && !c->deleted &&
	       !c->is_snapshot && (c->origin_id != c->parent_id ||
				   c->origin_epoch != c->parent_epoch);
}

/* Branch table (store.c); callers hold tree_lock as noted. */
/* Length of the valid, non-control UTF-8 character at @p (<= @n bytes; an
 * ASCII byte counts as 1), or 0 if it is not one (branch.c). */
size_t utf8_char(const unsigned char *p, size_t n);
size_t branch_encode(const struct snap_branch *br, uint8_t *v);
/* The fields of a branch or snapshot record value (kv/format.h). */
struct rec_fields {
	uint8_t flags;
	uint32_t parent_id, origin_id;
	uint64_t parent_epoch, epoch, created_ns, origin_epoch;
	size_t name_len;
	char name[SNAP_NAME_MAX + 1];
};
/* The one decoder of that layout: 0, REC_BAD_HEADER (short or unknown
 * version) or REC_BAD_NAME (name length does not fit; f->name_len holds
 * it).  Neither logs: callers word the report. */
enum { REC_BAD_HEADER = 1, REC_BAD_NAME = 2 };
int rec_parse(const uint8_t *v, size_t vl, struct rec_fields *f);
struct snap_branch *branch_new(void);
void branch_free(struct snap_branch *br);
void branch_key(uint8_t *k, const struct snap_branch *br);
struct snap_branch *branch_by_id(struct snap *s, uint32_t id);
int tree_build(struct snap *s, struct snap_branch *br, struct snap_tree **out);
uint64_t now_ns(void);
void prune_schedule(struct snap *s);
#endif /* BFS_SNAP_INT_H */
