/* SPDX-License-Identifier: MIT */
/*
 * snap/data.c - file data (block maps), setattr, fallocate, copy, xattrs.
 *
 * A file is a sparse array of 8 KiB blocks.  Block i of inode I in a tree
 * is the newest visible block-map version (see kv/format.h); no version or
 * an empty value (tombstone) is a hole and reads as zeros.
 *
 * Invariant D1: bytes of the last block beyond EOF are zero (truncate zeroes
 *   the tail), so growing a file never exposes old data.
 * Invariant D2: nblocks of an inode counts its visible non-hole blocks.
 * Writers of an inode's block map hold the inode's stripe lock; readers do
 * not, but hold kv's read lock so that a block they have just looked up
 * cannot be garbage-collected before they read it.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "snap_int.h"

#define BS BFS_BLOCK_SIZE
#define MAX_FILE_SIZE (1ull << 50) /* 1 PiB; keeps block indexes sane */

/* One visible block-map entry. */
struct bent {
	uint64_t blk;
	int level;
	uint64_t epoch;
	bool live;
	bool below; /* some version exists under the visible one */
	uint8_t hash[BFS_HASH_SIZE];
};

struct bvec {
	struct bent *e;
	size_t n, cap;
};

static int bvec_push(struct bvec *v, const struct bent *e)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 32;
		struct bent *ne = realloc(v->e, cap * sizeof(*ne));

		if (!ne)
			return -ENOMEM;
		v->e = ne;
		v->cap = cap;
	}
	v->e[v->n++] = *e;
	return 0;
}

/* Fill @be's live/hash from a block-map value (a hash, or empty: a hole). */
static void bent_value(struct bent *be, uint64_t ino, const void *v, size_t vl)
{
	be->live = vl == BFS_HASH_SIZE;
	if (be->live)
		memcpy(be->hash, v, BFS_HASH_SIZE);
	else if (vl != 0)
		kv_log("block map of inode %llu block %llu: bad value",
		       (unsigned long long)ino, (unsigned long long)be->blk);
}

static int bent_cmp(const void *a, const void *b)
{
	const struct bent *x = a, *y = b;

	if (x->blk != y->blk)
		return x->blk < y->blk ? -1 : 1;
	return x->level - y->level;
}

static void bmap_key_bounds(uint8_t *lo, uint8_t *hi, uint32_t b, uint64_t ino,
			    uint64_t first, uint64_t last, size_t *ll,
			    size_t *hl)
{
	lo[0] = hi[0] = BFS_PFX_BMAP;
	bfs_put_u32(lo + 1, b);
	bfs_put_u32(hi + 1, b);
	bfs_put_u64(lo + 5, ino);
	bfs_put_u64(lo + 13, first);
	*ll = 21;
	if (last == UINT64_MAX) {
		bfs_put_u64(hi + 5, ino + 1);
		*hl = 13;
	} else {
		bfs_put_u64(hi + 5, ino);
		bfs_put_u64(hi + 13, last);
		*hl = 21;
	}
}

/*
 * Fast path of a one-block access: the exact key (level 0, op epoch), which
 * shadows every older version and every ancestor.  Whether an older version
 * exists is not known here, so the entry says `below`: the conservative
 * answer (a hole written over it becomes a tombstone instead of a delete,
 * which is always correct; reads ignore it).  Returns 1 found (*out holds
 * it), 0 not there, -errno.  A writing caller holds the inode's stripe
 * lock; a reader sees the key as of one instant, as an iterator would.
 */
static int bmap_exact(struct op *op, uint64_t ino, uint64_t blk,
		      struct bvec *out)
{
	uint8_t obj[16];
	struct bent be = { 0 };
	struct vres r;
	int ret;

	bfs_put_u64(obj, ino);
	bfs_put_u64(obj + 8, blk);
	memset(&r, 0, sizeof(r));
	ret = level0_exact(op, BFS_PFX_BMAP, obj, 16, &r);
	if (ret <= 0)
		return ret;
	be.blk = blk;
	be.level = 0;
	be.epoch = op->e0;
	be.below = true;
	bent_value(&be, ino, r.val, r.vlen);
	free(r.val);
	ret = bvec_push(out, &be);
	return ret < 0 ? ret : 1;
}

/*
 * Push the newest version at level @l of each block of @ino in [first,
 * last) that has one there, `below` set when an older one is there too.
 */
static int scan_level(struct op *op, int l, uint64_t ino, uint64_t first,
		      uint64_t last, struct bvec *all)
{
	uint8_t lo[24], hi[24];
	size_t ll, hl;
	uint64_t e = op_epoch(op, l), lastblk = UINT64_MAX;
	struct kv_iter *it;
	int ret = 0;

	bmap_key_bounds(lo, hi, op->lv[l].b, ino, first, last, &ll, &hl);
	it = kv_iter_new(op->kv, KV_CF_META, lo, ll, hi, hl);
	if (!it)
		return -ENOMEM;
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl, vl;
		const uint8_t *k = kv_iter_key(it, &kl);
		const uint8_t *v = kv_iter_value(it, &vl);
		struct bent be = { 0 };
		uint64_t ve;

		if (kl != 29)
			continue;
		ve = UINT64_MAX - bfs_get_u64(k + 21);
		if (ve > e)
			continue;
		be.blk = bfs_get_u64(k + 13);
		if (be.blk == lastblk) {
			/* an older version at this level */
			if (all->n && all->e[all->n - 1].blk == be.blk)
				all->e[all->n - 1].below = true;
			continue;
		}
		lastblk = be.blk;
		be.level = l;
		be.epoch = ve;
		bent_value(&be, ino, v, vl);
		ret = bvec_push(all, &be);
		if (ret < 0)
			break;
	}
	if (ret == 0)
		ret = kv_iter_status(it);
	kv_iter_free(it);
	return ret;
}

/*
 * What levels >= 1 hold for blocks [from, to) of chunk @c of @ino: from the
 * tree's cache, or read at each level; the whole chunk, and cached, when
 * the cache has room for it (else only the blocks asked for).
 */
static int upper_chunk(struct op *op, uint64_t ino, uint64_t c,
		       uint64_t from, uint64_t to, struct bc_chunk *out)
{
	struct bvec all = { 0 };
	bool keep;
	int ret = 0;

	if (bmcache_get(op->t, ino, c, out))
		return 0;
	keep = bmcache_room(op->t, ino, c);
	if (keep) {
		from = c * BC_SPAN;
		to = (c + 1) * BC_SPAN;
	}
	for (int l = 1; l < op->n && ret == 0; l++)
		ret = scan_level(op, l, ino, from, to, &all);
	if (ret < 0) {
		free(all.e);
		return ret;
	}
	qsort(all.e, all.n, sizeof(*all.e), bent_cmp);
	out->present = out->live = 0;
	for (size_t i = 0; i < all.n; i++) {
		unsigned bit = (unsigned)(all.e[i].blk - c * BC_SPAN);

		if (out->present >> bit & 1)
			continue; /* a deeper level's, shadowed */
		out->present |= 1ull << bit;
		if (all.e[i].live) {
			out->live |= 1ull << bit;
			memcpy(out->hash[bit], all.e[i].hash, BFS_HASH_SIZE);
		}
	}
	free(all.e);
	if (keep)
		bmcache_put(op->t, ino, c, out);
	return 0;
}

/* Ranges up to this many blocks read the ancestor levels through the
 * cache (every READ and WRITE the kernel sends); longer ones (truncate,
 * lseek over a sparse file) iterate, which skips empty stretches. */
#define BC_MAX_BLOCKS (4 * BC_SPAN)

/*
 * The visible block-map entries of @ino for blocks [first, last), sorted by
 * block, one per block (holes without any version are absent).  Entries
 * from levels >= 1 may come from the tree's cache: those say level 1 and
 * epoch 0 (what set_block needs of them: not level 0).
 */
static int bmap_scan(struct op *op, uint64_t ino, uint64_t first,
		     uint64_t last, struct bvec *out)
{
	struct bvec all = { 0 };
	int ret = 0, start = 0, levels = op->n;
	bool cached;

	out->n = 0;
	/* One block: a point read of the exact key first.  Writes always try
	 * it (what they overwrite is mostly their own epoch's); reads only
	 * when it settles level 0 either way (level0_done), else a miss
	 * would cost the point read on top of the iterator. */
	if (last == first + 1 && (op->write || level0_done(op))) {
		ret = bmap_exact(op, ino, first, out);
		if (ret != 0)
			return ret < 0 ? ret : 0;
		if (level0_done(op))
			start = 1;
	}
	cached = op->n > 1 && first < last && last - first <= BC_MAX_BLOCKS &&
		 bmcache_on(op->t);
	if (cached)
		levels = 1;
	for (int l = start; l < levels && ret == 0; l++)
		ret = scan_level(op, l, ino, first, last, &all);
	for (uint64_t c = first / BC_SPAN; cached && ret == 0 &&
	     c <= (last - 1) / BC_SPAN; c++) {
		struct bc_chunk ch;
		uint64_t from = c * BC_SPAN > first ? c * BC_SPAN : first;
		uint64_t to = (c + 1) * BC_SPAN < last ? (c + 1) * BC_SPAN : last;

		ret = upper_chunk(op, ino, c, from, to, &ch);
		for (uint64_t blk = from; ret == 0 && blk < to; blk++) {
			unsigned bit = (unsigned)(blk - c * BC_SPAN);
			struct bent be = { .blk = blk, .level = 1 };

			if (!(ch.present >> bit & 1))
				continue;
			be.live = ch.live >> bit & 1;
			if (be.live)
				memcpy(be.hash, ch.hash[bit], BFS_HASH_SIZE);
			ret = bvec_push(&all, &be);
		}
	}
	if (ret < 0) {
		free(all.e);
		return ret;
	}
	if (op->n > 1)
		qsort(all.e, all.n, sizeof(*all.e), bent_cmp);
	for (size_t i = 0; i < all.n; i++) {
		if (out->n && out->e[out->n - 1].blk == all.e[i].blk) {
			out->e[out->n - 1].below = true;
			continue;
		}
		ret = bvec_push(out, &all.e[i]);
		if (ret < 0)
			break;
	}
	free(all.e);
	return ret;
}

/* Find block @blk in sorted @v starting at *pos (advanced). */
static const struct bent *bvec_find(const struct bvec *v, size_t *pos,
				    uint64_t blk)
{
	while (*pos < v->n && v->e[*pos].blk < blk)
		(*pos)++;
	if (*pos < v->n && v->e[*pos].blk == blk)
		return &v->e[*pos];
	return NULL;
}

/*
 * Point block @blk of @in at @hash (a reference the caller already added to
 * @b), or make it a hole (hash NULL).  @old is the visible entry or NULL.
 */
static void set_block(struct op *op, struct kv_batch *b, struct snap_inode *in,
		      uint64_t blk, const struct bent *old, const uint8_t *hash)
{
	uint8_t obj[16];
	bool cur = old && old->level == 0 && old->epoch == op->e0;

	bfs_put_u64(obj, in->ino);
	bfs_put_u64(obj + 8, blk);
	if (cur && old->live)
		kv_block_unref(op->kv, b, old->hash);
	if (hash) {
		vput(op, b, BFS_PFX_BMAP, obj, 16, hash, BFS_HASH_SIZE);
		if (!(old && old->live))
			in->nblocks++;
		return;
	}
	if (old && old->live)
		in->nblocks--;
	if (cur) {
		uint8_t k[SNAP_KEY_MAX];
		size_t kl = mkkey(k, BFS_PFX_BMAP, op_branch(op), obj, 16, op->e0);

		if (old->below)
			kv_batch_put(b, KV_CF_META, k, kl, "", 0);
		else
			kv_batch_delete(b, KV_CF_META, k, kl);
	} else if (old && old->live) {
		vput(op, b, BFS_PFX_BMAP, obj, 16, "", 0);
	}
}

/* Store @data as block @blk of @in (hole if all zero). */
static int store_block(struct op *op, struct kv_batch *b, struct snap_inode *in,
		       uint64_t blk, const struct bent *old, const void *data)
{
	uint8_t hash[BFS_HASH_SIZE];
	int ret;

	if (kv_block_is_zero(data)) {
		set_block(op, b, in, blk, old, NULL);
		return 0;
	}
	ret = kv_block_ref(op->kv, b, data, hash);
	if (ret < 0)
		return ret;
	set_block(op, b, in, blk, old, hash);
	return 0;
}

int bmap_remove(struct op *op, struct kv_batch *b, struct snap_inode *in,
		uint64_t first, uint64_t last)
{
	struct bvec v = { 0 };
	int ret;

	if (first >= last)
		return 0;
	ret = bmap_scan(op, in->ino, first, last, &v);
	for (size_t i = 0; ret == 0 && i < v.n; i++)
		set_block(op, b, in, v.e[i].blk, &v.e[i], NULL);
	free(v.e);
	return ret;
}

/* Zero bytes [from, to) inside block @blk (read-modify-write). */
static int zero_in_block(struct op *op, struct kv_batch *b,
			 struct snap_inode *in, uint64_t blk, size_t from,
			 size_t to)
{
	struct bvec v = { 0 };
	uint8_t *buf;
	size_t pos = 0;
	const struct bent *old;
	int ret;

	ret = bmap_scan(op, in->ino, blk, blk + 1, &v);
	if (ret < 0)
		goto out;
	old = bvec_find(&v, &pos, blk);
	if (!old || !old->live)
		goto out;
	buf = malloc(BS);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	ret = kv_block_read(op->kv, old->hash, buf);
	if (ret == 0) {
		memset(buf + from, 0, to - from);
		ret = store_block(op, b, in, blk, old, buf);
	}
	free(buf);
out:
	free(v.e);
	return ret;
}

int bmap_zero_tail(struct op *op, struct kv_batch *b, struct snap_inode *in,
		   uint64_t size)
{
	if (size % BS == 0)
		return 0;
	return zero_in_block(op, b, in, size / BS, size % BS, BS);
}

/*
 * Remove every object of (@pfx, @ino) from the op's branch head: the newest
 * version of each object, if written at the op's epoch, is deleted (its
 * block reference dropped) - or overwritten with a tombstone when an older
 * version exists below it; a live newest version of an older epoch gets a
 * tombstone.  Older versions stay for the snapshots that read them; with a
 * newer tombstone above them, the pruner frees them once no reader needs
 * them (without it they would look current forever).
 */
static int purge_current(struct op *op, struct kv_batch *b, char pfx,
			 uint64_t ino)
{
	uint8_t lo[13], hi[13], obj[SNAP_KEY_MAX], cur[SNAP_KEY_MAX];
	size_t objlen = 0, curlen = 0;
	bool first = false;
	struct kv_iter *it;
	int ret;

	lo[0] = hi[0] = (uint8_t)pfx;
	bfs_put_u32(lo + 1, op_branch(op));
	bfs_put_u32(hi + 1, op_branch(op));
	bfs_put_u64(lo + 5, ino);
	bfs_put_u64(hi + 5, ino + 1);
	it = kv_iter_new(op->kv, KV_CF_META, lo, 13, hi, 13);
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl, vl;
		const uint8_t *k = kv_iter_key(it, &kl);
		const uint8_t *v = kv_iter_value(it, &vl);
		uint64_t ve;

		if (kl < 13 + 8 || kl > SNAP_KEY_MAX)
			continue;
		ve = UINT64_MAX - bfs_get_u64(k + kl - 8);
		first = objlen != kl - 8 || memcmp(obj, k, kl - 8) != 0;
		if (first) {
			memcpy(obj, k, kl - 8);
			objlen = kl - 8;
		}
		if (!first) {
			/* an older version below the newest one */
			if (curlen) { /* the newest was at our epoch */
				kv_batch_put(b, KV_CF_META, cur, curlen, "", 0);
				curlen = 0;
			}
			continue;
		}
		if (curlen) /* previous object: newest at our epoch, alone */
			kv_batch_delete(b, KV_CF_META, cur, curlen);
		curlen = 0;
		if (ve > op->e0)
			continue; /* cannot happen: keys above the head epoch */
		if (ve == op->e0) {
			if (pfx == BFS_PFX_BMAP && vl == BFS_HASH_SIZE)
				kv_block_unref(op->kv, b, v);
			memcpy(cur, k, kl);
			curlen = kl;
		} else if (vl) {
			uint8_t t[SNAP_KEY_MAX];

			memcpy(t, k, kl - 8);
			bfs_put_u64(t + kl - 8, UINT64_MAX - op->e0);
			kv_batch_put(b, KV_CF_META, t, kl, "", 0);
		}
	}
	if (curlen)
		kv_batch_delete(b, KV_CF_META, cur, curlen);
	ret = kv_iter_status(it);
	kv_iter_free(it);
	return ret;
}

int xattr_purge(struct op *op, struct kv_batch *b, uint64_t ino)
{
	return purge_current(op, b, BFS_PFX_XATTR, ino);
}

/*
 * Delete inode @in from the op's tree: its record, and every block-map,
 * xattr and (for directories) dirent key written at the current epoch.
 * Versions of older epochs stay: snapshots own them.
 */
int inode_purge(struct op *op, struct kv_batch *b, struct snap_inode *in)
{
	uint8_t obj[8];
	int ret;

	ret = purge_current(op, b, BFS_PFX_BMAP, in->ino);
	if (ret == 0)
		ret = purge_current(op, b, BFS_PFX_XATTR, in->ino);
	if (ret == 0 && S_ISDIR(in->mode))
		ret = purge_current(op, b, BFS_PFX_DIRENT, in->ino);
	if (ret < 0)
		return ret;
	bfs_put_u64(obj, in->ino);
	return vdel(op, b, BFS_PFX_INODE, obj, 8);
}

/* ---- read / write ----------------------------------------------------- */

/* Clear set-user-ID / set-group-ID (when group-executable) of a regular
 * file being modified, if the store does that (snap_set_killpriv). */
static bool kill_priv(const struct op *op, struct snap_inode *in)
{
	uint32_t old = in->mode;

	if (!op->s->killpriv || !S_ISREG(in->mode))
		return false;
	in->mode &= ~(uint32_t)S_ISUID;
	if ((in->mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP))
		in->mode &= ~(uint32_t)S_ISGID;
	return in->mode != old;
}

static void killed_notify(const struct op *op, uint64_t ino)
{
	if (op->s->killed)
		op->s->killed(op->s->killed_arg, op->t->id, ino);
}

ssize_t snap_read(struct snap_tree *t, uint64_t ino, void *buf, size_t size,
		  uint64_t off)
{
	struct snap_inode in;
	struct bvec v = { 0 };
	struct op op;
	uint64_t first, last, end;
	size_t pos = 0, done = 0;
	uint8_t *tmp = NULL;
	ssize_t ret;

	op_begin(&op, t, false);
	kv_read_begin(op.kv);
	ret = inode_get(&op, ino, &in);
	if (ret < 0)
		goto out;
	inode_release(&in);
	if (S_ISDIR(in.mode)) {
		ret = -EISDIR;
		goto out;
	}
	if (off >= in.size || size == 0) {
		ret = 0;
		goto out;
	}
	end = off + size;
	if (end > in.size || end < off)
		end = in.size;
	first = off / BS;
	last = (end + BS - 1) / BS;
	ret = bmap_scan(&op, ino, first, last, &v);
	if (ret < 0)
		goto out;
	for (uint64_t blk = first; blk < last; blk++) {
		const struct bent *e = bvec_find(&v, &pos, blk);
		uint64_t bstart = blk * BS;
		size_t a = blk == first ? off - bstart : 0;
		size_t z = blk == last - 1 ? end - bstart : BS;
		uint8_t *dst = (uint8_t *)buf + done;

		if (!e || !e->live) {
			memset(dst, 0, z - a);
		} else if (a == 0 && z == BS) {
			ret = kv_block_read(op.kv, e->hash, dst);
			if (ret < 0)
				goto out;
		} else {
			if (!tmp && !(tmp = malloc(BS))) {
				ret = -ENOMEM;
				goto out;
			}
			ret = kv_block_read(op.kv, e->hash, tmp);
			if (ret < 0)
				goto out;
			memcpy(dst, tmp + a, z - a);
		}
		done += z - a;
	}
	ret = (ssize_t)done;
out:
	kv_read_end(op.kv);
	op_end(&op);
	free(tmp);
	free(v.e);
	return ret;
}

/* Write @size bytes at @off into @in (stripe held, op writable). */
static int write_locked(struct op *op, struct kv_batch *b, struct snap_inode *in,
			const uint8_t *buf, size_t size, uint64_t off)
{
	uint64_t first = off / BS, last = (off + size + BS - 1) / BS;
	struct bvec v = { 0 };
	uint8_t *tmp = NULL;
	size_t pos = 0;
	int ret;

	ret = bmap_scan(op, in->ino, first, last, &v);
	for (uint64_t blk = first; ret == 0 && blk < last; blk++) {
		const struct bent *e = bvec_find(&v, &pos, blk);
		uint64_t bstart = blk * BS;
		size_t a = blk == first ? off - bstart : 0;
		size_t z = blk == last - 1 ? off + size - bstart : BS;
		const uint8_t *src = buf + (bstart + a - off);

		if (a == 0 && z == BS) {
			ret = store_block(op, b, in, blk, e, src);
			continue;
		}
		if (!tmp && !(tmp = malloc(BS))) {
			ret = -ENOMEM;
			break;
		}
		if (e && e->live) {
			ret = kv_block_read(op->kv, e->hash, tmp);
			if (ret < 0)
				break;
		} else {
			memset(tmp, 0, BS);
		}
		memcpy(tmp + a, src, z - a);
		ret = store_block(op, b, in, blk, e, tmp);
	}
	free(tmp);
	free(v.e);
	if (ret == 0 && off + size > in->size)
		in->size = off + size;
	return ret;
}

ssize_t snap_write(struct snap_tree *t, uint64_t ino, const void *buf,
		   size_t size, uint64_t off)
{
	return snap_write_ex(t, ino, buf, size, off, NULL);
}

ssize_t snap_write_ex(struct snap_tree *t, uint64_t ino, const void *buf,
		      size_t size, uint64_t off, bool *blocks_changed)
{
	struct snap_inode in;
	struct kv_batch *b;
	struct op op;
	bool killed = false;
	uint64_t nblocks = 0;
	int held[1];
	int ret;

	if (blocks_changed)
		*blocks_changed = false;

	if (size == 0)
		return 0;
	if (off + size > MAX_FILE_SIZE || off + size < off)
		return -EFBIG;
	ret = op_begin(&op, t, true);
	if (ret < 0)
		return ret;
	stripes_lock(op.s, op_branch(&op), &ino, 1, held);
	b = kv_batch_new();
	ret = inode_get(&op, ino, &in);
	if (ret < 0)
		goto out;
	if (S_ISDIR(in.mode))
		ret = -EISDIR;
	else if (!S_ISREG(in.mode))
		ret = -EINVAL;
	if (ret == 0) {
		nblocks = in.nblocks;
		ret = write_locked(&op, b, &in, buf, size, off);
	}
	if (ret == 0) {
		inode_touch(&in.mtime);
		in.ctime = in.mtime;
		killed = kill_priv(&op, &in);
		inode_put(&op, b, &in);
		ret = kv_commit(op.kv, b);
		if (ret == 0 && blocks_changed)
			*blocks_changed = in.nblocks != nblocks;
	}
	inode_release(&in);
out:
	kv_batch_free(b);
	stripes_unlock(op.s, held, 1);
	if (ret == 0 && killed)
		killed_notify(&op, ino);
	op_end(&op);
	return ret < 0 ? ret : (ssize_t)size;
}

/* Change the size of regular file @in to @size (stripe held). */
static int truncate_locked(struct op *op, struct kv_batch *b,
			   struct snap_inode *in, uint64_t size)
{
	int ret = 0;

	if (size > MAX_FILE_SIZE)
		return -EFBIG;
	if (size < in->size) {
		ret = bmap_remove(op, b, in, (size + BS - 1) / BS, UINT64_MAX);
		if (ret == 0)
			ret = bmap_zero_tail(op, b, in, size);
	}
	if (ret == 0)
		in->size = size;
	return ret;
}

int snap_setattr(struct snap_tree *t, uint64_t ino, const struct snap_attr *a,
		 unsigned set, struct snap_attr *out)
{
	struct snap_inode in;
	struct kv_batch *b;
	struct timespec now;
	struct op op;
	int held[1];
	int ret;

	ret = op_begin(&op, t, true);
	if (ret < 0)
		return ret;
	stripes_lock(op.s, op_branch(&op), &ino, 1, held);
	b = kv_batch_new();
	ret = inode_get(&op, ino, &in);
	if (ret < 0)
		goto out;
	inode_touch(&now);
	if (set & SNAP_SET_SIZE) {
		if (S_ISDIR(in.mode))
			ret = -EISDIR;
		else if (!S_ISREG(in.mode))
			ret = -EINVAL;
		else if (a->size != in.size)
			ret = truncate_locked(&op, b, &in, a->size);
		if (ret < 0)
			goto out_release;
		in.mtime = now;
	}
	if ((set & (SNAP_SET_SIZE | SNAP_SET_UID | SNAP_SET_GID)) &&
	    !(set & SNAP_SET_MODE))
		kill_priv(&op, &in);
	if (set & SNAP_SET_MODE)
		in.mode = (in.mode & S_IFMT) | (a->mode & 07777);
	if (set & SNAP_SET_UID)
		in.uid = a->uid;
	if (set & SNAP_SET_GID)
		in.gid = a->gid;
	if (set & SNAP_SET_ATIME_NOW)
		in.atime = now;
	else if (set & SNAP_SET_ATIME)
		in.atime = a->atime;
	if (set & SNAP_SET_MTIME_NOW)
		in.mtime = now;
	else if (set & SNAP_SET_MTIME)
		in.mtime = a->mtime;
	in.ctime = (set & SNAP_SET_CTIME) ? a->ctime : now;
	inode_put(&op, b, &in);
	ret = kv_commit(op.kv, b);
	if (ret == 0 && out)
		inode_to_attr(&in, out);
out_release:
	inode_release(&in);
out:
	kv_batch_free(b);
	stripes_unlock(op.s, held, 1);
	op_end(&op);
	return ret;
}

int snap_fallocate(struct snap_tree *t, uint64_t ino, int mode, uint64_t off,
		   uint64_t len)
{
	struct snap_inode in;
	struct kv_batch *b;
	struct op op;
	int held[1];
	int ret;

	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE))
		return -EOPNOTSUPP;
	if ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE))
		return -EINVAL;
	if (len == 0)
		return -EINVAL;
	if (off + len > MAX_FILE_SIZE || off + len < off)
		return -EFBIG;
	ret = op_begin(&op, t, true);
	if (ret < 0)
		return ret;
	stripes_lock(op.s, op_branch(&op), &ino, 1, held);
	b = kv_batch_new();
	ret = inode_get(&op, ino, &in);
	if (ret < 0)
		goto out;
	if (S_ISDIR(in.mode))
		ret = -EISDIR;
	else if (!S_ISREG(in.mode))
		ret = -ENODEV;
	if (ret < 0)
		goto out_release;

	if (mode & FALLOC_FL_PUNCH_HOLE) {
		uint64_t end = off + len > in.size ? in.size : off + len;
		uint64_t fb = (off + BS - 1) / BS, lb = end / BS;

		if (off >= end)
			goto out_release; /* nothing inside the file */
		if (fb > lb) {
			/* within one block */
			ret = zero_in_block(&op, b, &in, off / BS, off % BS,
					    end - (off / BS) * BS);
		} else {
			if (off % BS)
				ret = zero_in_block(&op, b, &in, off / BS,
						    off % BS, BS);
			if (ret == 0)
				ret = bmap_remove(&op, b, &in, fb, lb);
			if (ret == 0 && end % BS && lb * BS < end)
				ret = zero_in_block(&op, b, &in, lb, 0,
						    end % BS);
		}
	} else if (!(mode & FALLOC_FL_KEEP_SIZE) && off + len > in.size) {
		in.size = off + len;
	} else {
		goto out_release; /* KEEP_SIZE: holes need no space */
	}
	if (ret == 0) {
		inode_touch(&in.mtime);
		in.ctime = in.mtime;
		inode_put(&op, b, &in);
		ret = kv_commit(op.kv, b);
	}
out_release:
	inode_release(&in);
out:
	kv_batch_free(b);
	stripes_unlock(op.s, held, 1);
	op_end(&op);
	return ret;
}

/* ---- copy_file_range ------------------------------------------------- */

#define COPY_CHUNK 256u /* blocks per batch */

/* Share whole blocks [sblk, sblk+n) of the source at dblk of @out. */
static int share_blocks(struct snap_tree *tin, uint64_t ino_in, uint64_t sblk,
			struct snap_tree *tout, uint64_t ino_out,
			uint64_t dblk, uint64_t n, uint64_t newsize)
{
	struct bvec sv = { 0 }, dv = { 0 };
	struct snap_inode in;
	struct kv_batch *b;
	struct op sop, dop;
	size_t sp = 0, dp = 0;
	int held[1];
	int ret;

	ret = op_begin(&dop, tout, true);
	if (ret < 0)
		return ret;
	stripes_lock(dop.s, op_branch(&dop), &ino_out, 1, held);
	b = kv_batch_new();
	/* Hold the block lock before reading the source's hashes: the GC
	 * must not free one of them before our references are committed. */
	kv_batch_lock_blocks(dop.kv, b);
	op_begin(&sop, tin, false);
	ret = bmap_scan(&sop, ino_in, sblk, sblk + n, &sv);
	op_end(&sop);
	if (ret < 0)
		goto out;
	ret = inode_get(&dop, ino_out, &in);
	if (ret < 0)
		goto out;
	ret = bmap_scan(&dop, ino_out, dblk, dblk + n, &dv);
	for (uint64_t i = 0; ret == 0 && i < n; i++) {
		const struct bent *s = bvec_find(&sv, &sp, sblk + i);
		const struct bent *d = bvec_find(&dv, &dp, dblk + i);

		if (s && s->live) {
			ret = kv_block_ref_hash(dop.kv, b, s->hash);
			if (ret == 0)
				set_block(&dop, b, &in, dblk + i, d, s->hash);
		} else {
			set_block(&dop, b, &in, dblk + i, d, NULL);
		}
	}
	if (ret == 0) {
		if (newsize > in.size)
			in.size = newsize;
		inode_touch(&in.mtime);
		in.ctime = in.mtime;
		inode_put(&dop, b, &in);
		ret = kv_commit(dop.kv, b);
	}
	inode_release(&in);
out:
	kv_batch_free(b);
	stripes_unlock(dop.s, held, 1);
	op_end(&dop);
	free(sv.e);
	free(dv.e);
	return ret;
}

static ssize_t copy_bytes(struct snap_tree *tin, uint64_t ino_in,
			  uint64_t off_in, struct snap_tree *tout,
			  uint64_t ino_out, uint64_t off_out, size_t len)
{
	size_t cap = 128 * 1024, done = 0;
	uint8_t *buf = malloc(cap);
	ssize_t ret = 0;

	if (!buf)
		return -ENOMEM;
	while (done < len) {
		size_t want = len - done < cap ? len - done : cap;

		ret = snap_read(tin, ino_in, buf, want, off_in + done);
		if (ret <= 0)
			break;
		ret = snap_write(tout, ino_out, buf, (size_t)ret, off_out + done);
		if (ret < 0)
			break;
		done += (size_t)ret;
	}
	free(buf);
	return ret < 0 && done == 0 ? ret : (ssize_t)done;
}

ssize_t snap_copy_range(struct snap_tree *tin, uint64_t ino_in, uint64_t off_in,
			struct snap_tree *tout, uint64_t ino_out,
			uint64_t off_out, size_t len)
{
	struct snap_attr sa, da;
	size_t done = 0;
	int ret;

	if (snap_tree_readonly(tout))
		return -EROFS;
	ret = snap_getattr(tin, ino_in, &sa);
	if (ret < 0)
		return ret;
	ret = snap_getattr(tout, ino_out, &da);
	if (ret < 0)
		return ret;
	if (S_ISDIR(sa.mode) || S_ISDIR(da.mode))
		return -EISDIR;
	if (!S_ISREG(sa.mode) || !S_ISREG(da.mode))
		return -EINVAL;
	if (off_in >= sa.size)
		return 0;
	if (len > sa.size - off_in)
		len = (size_t)(sa.size - off_in);
	if (off_out + len > MAX_FILE_SIZE)
		return -EFBIG;
	if (tin == tout && ino_in == ino_out && off_in < off_out + len &&
	    off_out < off_in + len)
		return -EINVAL;
	if (off_in % BS != off_out % BS)
		return copy_bytes(tin, ino_in, off_in, tout, ino_out, off_out,
				  len);

	/* Head up to a block boundary, shared middle, tail: by bytes. */
	if (off_in % BS) {
		size_t head = BS - off_in % BS;
		ssize_t r;

		if (head > len)
			head = len;
		r = copy_bytes(tin, ino_in, off_in, tout, ino_out, off_out, head);
		if (r < 0)
			return r;
		done += (size_t)r;
		if ((size_t)r < head)
			return (ssize_t)done;
	}
	while (len - done >= BS) {
		uint64_t n = (len - done) / BS;

		if (n > COPY_CHUNK)
			n = COPY_CHUNK;
		ret = share_blocks(tin, ino_in, (off_in + done) / BS, tout,
				   ino_out, (off_out + done) / BS, n,
				   off_out + done + n * BS);
		if (ret < 0)
			return done ? (ssize_t)done : ret;
		done += n * BS;
	}
	if (done < len) {
		ssize_t r = copy_bytes(tin, ino_in, off_in + done, tout, ino_out,
				       off_out + done, len - done);

		if (r < 0)
			return done ? (ssize_t)done : r;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

int snap_lseek(struct snap_tree *t, uint64_t ino, uint64_t off, int whence,
	       uint64_t *res)
{
	struct snap_inode in;
	struct bvec v = { 0 };
	struct op op;
	uint64_t blk, nblk;
	int ret;

	op_begin(&op, t, false);
	ret = inode_get(&op, ino, &in);
	if (ret < 0)
		goto out;
	inode_release(&in);
	if (off >= in.size) {
		ret = -ENXIO;
		goto out;
	}
	nblk = (in.size + BS - 1) / BS;
	ret = bmap_scan(&op, ino, off / BS, nblk, &v);
	if (ret < 0)
		goto out;
	blk = off / BS;
	if (whence == SEEK_DATA) {
		ret = -ENXIO;
		for (size_t i = 0; i < v.n; i++) {
			if (v.e[i].live) {
				uint64_t p = v.e[i].blk * BS;

				*res = p > off ? p : off;
				ret = 0;
				break;
			}
		}
	} else if (whence == SEEK_HOLE) {
		size_t i = 0;

		for (; blk < nblk; blk++) {
			while (i < v.n && v.e[i].blk < blk)
				i++;
			if (i == v.n || v.e[i].blk != blk || !v.e[i].live)
				break;
		}
		*res = blk * BS > off ? blk * BS : off;
		if (*res > in.size)
			*res = in.size;
		ret = 0;
	} else {
		ret = -EINVAL;
	}
out:
	op_end(&op);
	free(v.e);
	return ret;
}

/* ---- xattrs ---------------------------------------------------------- */

static int xattr_obj(uint8_t *obj, uint64_t ino, const char *name)
{
	size_t nl = strlen(name);

	if (nl == 0 || nl > 255)
		return -ERANGE;
	bfs_put_u64(obj, ino);
	memcpy(obj + 8, name, nl);
	obj[8 + nl] = 0;
	return (int)(8 + nl + 1);
}

ssize_t snap_getxattr(struct snap_tree *t, uint64_t ino, const char *name,
		      void *buf, size_t size)
{
	uint8_t obj[8 + 256 + 1];
	struct snap_inode in;
	struct vres r;
	struct op op;
	ssize_t ret;
	int ol = xattr_obj(obj, ino, name);

	if (ol < 0)
		return ol;
	op_begin(&op, t, false);
	ret = inode_get(&op, ino, &in);
	if (ret == 0) {
		inode_release(&in);
		ret = vget(&op, BFS_PFX_XATTR, obj, (size_t)ol, 0, 0, &r);
	}
	op_end(&op);
	if (ret < 0)
		return ret;
	if (!r.live || r.vlen < 1) {
		free(r.val);
		return -ENODATA;
	}
	ret = (ssize_t)(r.vlen - 1);
	if (size && (size_t)ret > size)
		ret = -ERANGE;
	else if (size)
		memcpy(buf, (uint8_t *)r.val + 1, r.vlen - 1);
	free(r.val);
	return ret;
}

/* Common frame for setxattr/removexattr: the inode's ctime changes too. */
static int xattr_change(struct snap_tree *t, uint64_t ino, const char *name,
			const void *val, size_t size, int flags, bool remove)
{
	uint8_t obj[8 + 256 + 1];
	struct snap_inode in;
	struct kv_batch *b;
	struct vres r = { 0 };
	struct op op;
	int held[1];
	int ret, ol = xattr_obj(obj, ino, name);

	if (ol < 0)
		return ol;
	if (size > 65536)
		return -E2BIG;
	ret = op_begin(&op, t, true);
	if (ret < 0)
		return ret;
	stripes_lock(op.s, op_branch(&op), &ino, 1, held);
	b = kv_batch_new();
	ret = inode_get(&op, ino, &in);
	if (ret < 0)
		goto out;
	ret = vget(&op, BFS_PFX_XATTR, obj, (size_t)ol, 0, 0, &r);
	if (ret < 0)
		goto out_release;
	if (remove || (flags & XATTR_REPLACE)) {
		if (!r.live) {
			ret = -ENODATA;
			goto out_release;
		}
	}
	if ((flags & XATTR_CREATE) && r.live) {
		ret = -EEXIST;
		goto out_release;
	}
	if (remove) {
		ret = vdel(&op, b, BFS_PFX_XATTR, obj, (size_t)ol);
	} else {
		uint8_t *v = malloc(size + 1);

		if (!v) {
			ret = -ENOMEM;
			goto out_release;
		}
		v[0] = 1;
		if (size)
			memcpy(v + 1, val, size);
		vput(&op, b, BFS_PFX_XATTR, obj, (size_t)ol, v, size + 1);
		free(v);
	}
	if (ret == 0) {
		inode_touch(&in.ctime);
		inode_put(&op, b, &in);
		ret = kv_commit(op.kv, b);
	}
out_release:
	free(r.val);
	inode_release(&in);
out:
	kv_batch_free(b);
	stripes_unlock(op.s, held, 1);
	op_end(&op);
	return ret;
}

int snap_setxattr(struct snap_tree *t, uint64_t ino, const char *name,
		  const void *val, size_t size, int flags)
{
	if (flags & ~(XATTR_CREATE | XATTR_REPLACE))
		return -EINVAL;
	if (t->readonly || t->s->readonly) /* as op_begin says, first */
		return -EROFS;
	/* A new name must fit in the list, which listxattr(2) returns whole
	 * or not at all (E2BIG beyond XATTR_LIST_MAX, for good): ENOSPC, as
	 * ext4 says when a file's xattrs fill their block.  (Two racing new
	 * names may pass together and overshoot by one name.) */
	if (!(flags & XATTR_REPLACE)) {
		ssize_t n = snap_getxattr(t, ino, name, NULL, 0);

		if (n == -ENODATA) {
			n = snap_listxattr(t, ino, NULL, 0);
			if (n >= 0 &&
			    (size_t)n + strlen(name) + 1 > XATTR_LIST_MAX)
				return -ENOSPC;
		}
		if (n < 0)
			return (int)n;
	}
	return xattr_change(t, ino, name, val, size, flags, false);
}

int snap_removexattr(struct snap_tree *t, uint64_t ino, const char *name)
{
	return xattr_change(t, ino, name, NULL, 0, 0, true);
}

ssize_t snap_listxattr(struct snap_tree *t, uint64_t ino, char *buf,
		       size_t size)
{
	struct snap_inode in;
	struct op op;
	char *seen = NULL; /* NUL-separated names decided so far */
	size_t seenlen = 0, total = 0;
	ssize_t ret;

	op_begin(&op, t, false);
	ret = inode_get(&op, ino, &in);
	if (ret < 0)
		goto out;
	inode_release(&in);
	for (int l = 0; l < op.n && ret == 0; l++) {
		uint8_t lo[13], hi[13];
		uint64_t e = op_epoch(&op, l);
		struct kv_iter *it;

		lo[0] = hi[0] = BFS_PFX_XATTR;
		bfs_put_u32(lo + 1, op.lv[l].b);
		bfs_put_u32(hi + 1, op.lv[l].b);
		bfs_put_u64(lo + 5, ino);
		bfs_put_u64(hi + 5, ino + 1);
		it = kv_iter_new(op.kv, KV_CF_META, lo, 13, hi, 13);
		if (!it) {
			ret = -ENOMEM;
			break;
		}
		for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
			size_t kl, vl, nl;
			const uint8_t *k = kv_iter_key(it, &kl);
			const char *name = (const char *)k + 13;
			bool dup = false;
			char *ns;

			kv_iter_value(it, &vl);
			if (kl < 13 + 2 + 8 ||
			    UINT64_MAX - bfs_get_u64(k + kl - 8) > e)
				continue;
			nl = kl - 13 - 8 - 1;
			for (size_t p = 0; p < seenlen; p += strlen(seen + p) + 2)
				if (strlen(seen + p) == nl &&
				    memcmp(seen + p, name, nl) == 0)
					dup = true;
			if (dup)
				continue;
			/* remember the name with a live/dead marker byte */
			ns = realloc(seen, seenlen + nl + 2);
			if (!ns) {
				ret = -ENOMEM;
				break;
			}
			seen = ns;
			memcpy(seen + seenlen, name, nl);
			seen[seenlen + nl] = 0;
			seen[seenlen + nl + 1] = vl > 0 ? 1 : 0;
			seenlen += nl + 2;
		}
		if (ret == 0)
			ret = kv_iter_status(it);
		kv_iter_free(it);
	}
	if (ret < 0)
		goto out;
	for (size_t p = 0; p < seenlen; p += strlen(seen + p) + 2) {
		size_t nl = strlen(seen + p);

		if (!seen[p + nl + 1])
			continue;
		if (size) {
			if (total + nl + 1 > size) {
				ret = -ERANGE;
				goto out;
			}
			memcpy(buf + total, seen + p, nl + 1);
		}
		total += nl + 1;
	}
	ret = (ssize_t)total;
out:
	op_end(&op);
	free(seen);
	return ret;
}
