/* SPDX-License-Identifier: MIT */
/*
 * snap/tree.c - versioned keys, ancestry fall-through, inode records.
 *
 * A read at (branch B, epoch E) sees, for each object, the newest version
 * with epoch <= E in B; if B has none, the newest version in B's parent at
 * or below the branch point, and so on (see kv/format.h).  Writes always go
 * to level 0 at the op's epoch.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "snap_int.h"

int op_begin(struct op *op, struct snap_tree *t, bool write)
{
	op->s = t->s;
	op->t = t;
	op->kv = t->s->kv;
	op->n = t->nlevels;
	op->lv = t->lv;
	op->write = false;
	if (write) {
		if (t->readonly || t->s->readonly)
			return -EROFS;
		pthread_rwlock_rdlock(&t->br->epoch_lock);
		if (t->br->deleted) {
			/* a file left open on a deleted branch */
			pthread_rwlock_unlock(&t->br->epoch_lock);
			return -ENOENT;
		}
		op->write = true;
		atomic_fetch_add(&t->br->writers, 1);
	}
	op->e0 = t->br ? atomic_load(&t->br->epoch) : t->lv[0].e;
	return 0;
}

void op_end(struct op *op)
{
	if (op->write) {
		/* Every commit of a write op runs on its thread between
		 * op_begin and here: what an fsync on this branch must cover
		 * (an op that did not commit adds an older or the latest
		 * ticket: at worst one sync too many). */
		struct snap_branch *br = op->t->br;
		uint64_t t = kv_thread_ticket(op->kv);
		uint64_t cur = atomic_load(&br->sync_need);

		while (cur < t &&
		       !atomic_compare_exchange_weak(&br->sync_need, &cur, t))
			;
		atomic_fetch_sub(&br->writers, 1);
		pthread_rwlock_unlock(&br->epoch_lock);
	}
	op->write = false;
}

size_t mkkey(uint8_t *k, char pfx, uint32_t b, const void *obj, size_t olen,
	     uint64_t e)
{
	k[0] = (uint8_t)pfx;
	bfs_put_u32(k + 1, b);
	memcpy(k + 5, obj, olen);
	bfs_put_u64(k + 5 + olen, UINT64_MAX - e);
	return 5 + olen + 8;
}

/*
 * Newest version of (pfx, b, obj) with epoch <= e at one level.
 * Returns 1 found (*val / *vlen / *epoch set), 0 none, -errno.
 */
int level_get(struct kv *kv, char pfx, uint32_t b, const void *obj,
	      size_t olen, uint64_t e, void **val, size_t *vlen,
	      uint64_t *epoch)
{
	uint8_t lo[SNAP_KEY_MAX], hi[SNAP_KEY_MAX];
	size_t klen = mkkey(lo, pfx, b, obj, olen, e);
	struct kv_iter *it;
	int ret = 0;

	/* Upper bound: the same object at epoch 0 (never used). */
	mkkey(hi, pfx, b, obj, olen, 0);
	it = kv_iter_new(kv, KV_CF_META, lo, klen, hi, klen);
	if (!it)
		return -ENOMEM;
	kv_iter_seek(it, lo, klen);
	if (kv_iter_valid(it)) {
		size_t kl, vl;
		const uint8_t *key = kv_iter_key(it, &kl);
		const void *v = kv_iter_value(it, &vl);

		if (kl == klen && memcmp(key, lo, klen - 8) == 0) {
			*epoch = UINT64_MAX - bfs_get_u64(key + klen - 8);
			*vlen = vl;
			*val = NULL;
			if (vl) {
				*val = malloc(vl);
				if (!*val) {
					ret = -ENOMEM;
					goto out;
				}
				memcpy(*val, v, vl);
			}
			ret = 1;
		}
	} else {
		ret = kv_iter_status(it);
	}
out:
	kv_iter_free(it);
	return ret;
}

/*
 * Fast path of vget at level 0: the exact key (level 0, op epoch).  What a
 * branch itself wrote since its last snapshot is there, and a point read
 * (bloom filters, no iterator to build) is far cheaper than creating an
 * iterator; a miss (an object inherited or older than the epoch) costs one
 * point read on top of the iterators.  The newest version <= e0 at level
 * 0, if the key at e0 exists, is that key, tombstone or not.  A read op
 * sees one instant either way: the epoch it loaded in op_begin.  A write op
 * holds the object's stripe lock, so no other op changes it between this
 * read and the op's commit.  Returns 1 found, 0 not there (use the
 * iterator), -errno.
 *
 * Every key of a branch carries an epoch from 1 (its first) to its current
 * one: writes go to the head epoch only (vput, vdel, set_block,
 * purge_current, fsck's repair), and epochs only grow.  So at e0 == 1 (a
 * branch not snapshotted since it was made or reset, the common case of a
 * fresh branch) a miss here means the object has no version at level 0 at
 * all, and callers skip level 0's iterator (level0_done).
 */
int level0_exact(struct op *op, char pfx, const void *obj, size_t olen,
		 struct vres *r)
{
	uint8_t k[SNAP_KEY_MAX];
	size_t kl = mkkey(k, pfx, op_branch(op), obj, olen, op->e0);
	int ret;

	ret = kv_get(op->kv, KV_CF_META, k, kl, &r->val, &r->vlen);
	if (ret == -ENOENT)
		return 0;
	if (ret < 0)
		return ret;
	r->level = 0;
	r->epoch = op->e0;
	r->live = r->vlen > 0;
	if (!r->live) { /* kv_get allocates even for an empty value */
		free(r->val);
		r->val = NULL;
	}
	return 1;
}

int vget(struct op *op, char pfx, const void *obj, size_t olen, int from,
	 uint64_t maxe, struct vres *r)
{
	memset(r, 0, sizeof(*r));
	r->level = -1;
	if (from == 0 && op->e0 && (!maxe || maxe == op->e0)) {
		int ret = level0_exact(op, pfx, obj, olen, r);

		if (ret != 0)
			return ret < 0 ? ret : 0;
		if (level0_done(op))
			from = 1, maxe = 0;
	}
	if (from == 0) {
		uint64_t e = maxe ? maxe : op->e0;
		int ret = 0;

		if (e)
			ret = level_get(op->kv, pfx, op->lv[0].b, obj, olen, e,
					&r->val, &r->vlen, &r->epoch);
		if (ret < 0)
			return ret;
		if (ret == 1) {
			r->level = 0;
			r->live = r->vlen > 0;
			return 0;
		}
		from = 1, maxe = 0;
	}
	if (from != 1 || maxe)
		return -EINVAL; /* no caller: maxe applies at level 0 only */
	return upper_get(op, pfx, obj, olen, r);
}

/*
 * True if any version (live or tombstone) exists below (level 0, op
 * epoch).  Deleting the current-epoch key is only safe without one: an
 * older tombstone may be pruned later and let an ancestor show through.
 */
int vhas_older(struct op *op, char pfx, const void *obj, size_t olen)
{
	struct vres r;
	int ret;

	if (op->e0 > 1)
		ret = vget(op, pfx, obj, olen, 0, op->e0 - 1, &r);
	else if (op->n > 1)
		ret = vget(op, pfx, obj, olen, 1, 0, &r);
	else
		return 0;
	if (ret < 0)
		return ret;
	free(r.val);
	return r.level >= 0;
}

void vput(struct op *op, struct kv_batch *b, char pfx, const void *obj,
	  size_t olen, const void *val, size_t vlen)
{
	uint8_t k[SNAP_KEY_MAX];
	size_t kl = mkkey(k, pfx, op_branch(op), obj, olen, op->e0);

	kv_batch_put(b, KV_CF_META, k, kl, val, vlen);
}

int vdel(struct op *op, struct kv_batch *b, char pfx, const void *obj,
	 size_t olen)
{
	uint8_t k[SNAP_KEY_MAX];
	size_t kl = mkkey(k, pfx, op_branch(op), obj, olen, op->e0);
	int older = vhas_older(op, pfx, obj, olen);

	if (older < 0)
		return older;
	if (older)
		kv_batch_put(b, KV_CF_META, k, kl, "", 0);
	else
		kv_batch_delete(b, KV_CF_META, k, kl);
	return 0;
}

/* ---- inode records --------------------------------------------------- */

static void put_ts(uint8_t *p, const struct timespec *ts)
{
	bfs_put_u64(p, (uint64_t)ts->tv_sec);
	bfs_put_u32(p + 8, (uint32_t)ts->tv_nsec);
}

static void get_ts(const uint8_t *p, struct timespec *ts)
{
	ts->tv_sec = (time_t)bfs_get_u64(p);
	ts->tv_nsec = (long)bfs_get_u32(p + 8);
}

static int inode_decode(uint64_t ino, const uint8_t *v, size_t vl,
			struct snap_inode *in)
{
	memset(in, 0, sizeof(*in));
	if (vl < BFS_INODE_HDR_SIZE || v[0] != BFS_REC_VERSION) {
		kv_log("inode %llu: bad record (%zu bytes)",
		       (unsigned long long)ino, vl);
		return -EIO;
	}
	in->ino = ino;
	in->mode = bfs_get_u32(v + 4);
	in->uid = bfs_get_u32(v + 8);
	in->gid = bfs_get_u32(v + 12);
	in->nlink = bfs_get_u32(v + 16);
	in->size = bfs_get_u64(v + 24);
	in->nblocks = bfs_get_u64(v + 32);
	in->rdev = bfs_get_u64(v + 40);
	in->parent = bfs_get_u64(v + 48);
	get_ts(v + 56, &in->atime);
	get_ts(v + 68, &in->mtime);
	get_ts(v + 80, &in->ctime);
	if (S_ISLNK(in->mode)) {
		size_t tl = vl - BFS_INODE_HDR_SIZE;

		in->target = malloc(tl + 1);
		if (!in->target)
			return -ENOMEM;
		memcpy(in->target, v + BFS_INODE_HDR_SIZE, tl);
		in->target[tl] = 0;
	}
	return 0;
}

int inode_get(struct op *op, uint64_t ino, struct snap_inode *in)
{
	uint8_t obj[8];
	struct vres r;
	int ret;

	bfs_put_u64(obj, ino);
	ret = vget(op, BFS_PFX_INODE, obj, 8, 0, 0, &r);
	if (ret < 0)
		return ret;
	if (!r.live) {
		free(r.val);
		return -ENOENT;
	}
	ret = inode_decode(ino, r.val, r.vlen, in);
	free(r.val);
	return ret;
}

void inode_put(struct op *op, struct kv_batch *b, const struct snap_inode *in)
{
	size_t tl = in->target ? strlen(in->target) : 0;
	uint8_t obj[8], stackbuf[BFS_INODE_HDR_SIZE + 256];
	uint8_t *v = stackbuf;

	if (tl > 256) {
		v = malloc(BFS_INODE_HDR_SIZE + tl);
		if (!v)
			abort(); /* a few KiB: treat as fatal like the batch's own allocations */
	}
	memset(v, 0, BFS_INODE_HDR_SIZE);
	v[0] = BFS_REC_VERSION;
	bfs_put_u32(v + 4, in->mode);
	bfs_put_u32(v + 8, in->uid);
	bfs_put_u32(v + 12, in->gid);
	bfs_put_u32(v + 16, in->nlink);
	bfs_put_u64(v + 24, in->size);
	bfs_put_u64(v + 32, in->nblocks);
	bfs_put_u64(v + 40, in->rdev);
	bfs_put_u64(v + 48, in->parent);
	put_ts(v + 56, &in->atime);
	put_ts(v + 68, &in->mtime);
	put_ts(v + 80, &in->ctime);
	if (tl)
		memcpy(v + BFS_INODE_HDR_SIZE, in->target, tl);
	bfs_put_u64(obj, in->ino);
	vput(op, b, BFS_PFX_INODE, obj, 8, v, BFS_INODE_HDR_SIZE + tl);
	if (v != stackbuf)
		free(v);
}

void inode_release(struct snap_inode *in)
{
	free(in->target);
	in->target = NULL;
}

void inode_to_attr(const struct snap_inode *in, struct snap_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->ino = in->ino;
	a->mode = in->mode;
	a->uid = in->uid;
	a->gid = in->gid;
	a->nlink = in->nlink;
	a->size = in->size;
	a->blocks = in->nblocks * (BFS_BLOCK_SIZE / 512);
	a->rdev = in->rdev;
	a->atime = in->atime;
	a->mtime = in->mtime;
	a->ctime = in->ctime;
}

void inode_touch(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

/* ---- inode record locks ---------------------------------------------- */

static int stripe_of(uint32_t b, uint64_t ino)
{
	uint64_t h = (ino * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)b << 17);

	return (int)((h >> 20) % SNAP_STRIPES);
}

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* Lock the stripes of up to 4 inodes in ascending order; @held gets the
 * distinct stripes (-1 for unused slots) for stripes_unlock(). */
void stripes_lock(struct snap *s, uint32_t b, const uint64_t *inos, int n,
		  int *held)
{
	for (int i = 0; i < n; i++)
		held[i] = inos[i] ? stripe_of(b, inos[i]) : -1;
	qsort(held, (size_t)n, sizeof(int), cmp_int);
	for (int i = 0; i < n; i++) {
		if (held[i] < 0)
			continue;
		if (i > 0 && held[i] == held[i - 1]) {
			held[i - 1] = -1; /* lock once, unlock once */
			continue;
		}
		pthread_mutex_lock(&s->stripes[held[i]]);
	}
}

void stripes_unlock(struct snap *s, const int *held, int n)
{
	for (int i = n - 1; i >= 0; i--)
		if (held[i] >= 0)
			pthread_mutex_unlock(&s->stripes[held[i]]);
}

/* ---- inode numbers --------------------------------------------------- */

/*
 * Numbers are reserved in chunks: the new limit is committed (to the WAL,
 * ahead of any batch that uses a number below it) before a number of the
 * chunk is handed out, so a crash never reuses a number.
 */
uint64_t ino_alloc(struct snap *s, int *err)
{
	uint64_t ino;

	*err = 0;
	pthread_mutex_lock(&s->ino_lock);
	if (s->next_ino >= s->ino_reserved) {
		uint8_t v[8];
		struct kv_batch *b = kv_batch_new();
		int ret;

		bfs_put_u64(v, s->next_ino + SNAP_INO_CHUNK);
		kv_batch_put(b, KV_CF_SYS, BFS_KEY_NEXT_INO,
			     strlen(BFS_KEY_NEXT_INO), v, 8);
		ret = kv_commit(s->kv, b);
		kv_batch_free(b);
		if (ret < 0) {
			pthread_mutex_unlock(&s->ino_lock);
			*err = ret;
			return 0;
		}
		s->ino_reserved = s->next_ino + SNAP_INO_CHUNK;
	}
	ino = s->next_ino++;
	pthread_mutex_unlock(&s->ino_lock);
	return ino;
}

void orphan_key(uint8_t *k, uint32_t b, uint64_t ino)
{
	k[0] = BFS_PFX_ORPHAN;
	bfs_put_u32(k + 1, b);
	bfs_put_u64(k + 5, ino);
}
