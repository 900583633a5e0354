/* SPDX-License-Identifier: MIT */
/*
 * snap/du.c - who holds which bytes.
 *
 * exclusive(X): stored bytes of the blocks that deleting X alone would free:
 *   blocks all of whose references are block-map versions needed only by
 *   X's reader (its head, the snapshot itself, or - for a branch without
 *   snapshots or children of its own - its branch point in its parent).
 * shared(X): stored bytes of the other distinct blocks X's tree shows (the
 *   newest visible version of every block of every live inode in X's view).
 * Both count compressed, deduplicated bytes, as "stats" does.
 *
 * Cost: one pass over all block-map keys and reference counts; with
 * want_shared, one more pass over each tree's ancestry (O(trees x keys)).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "snap_int.h"

#define OWNER_NONE (-1)   /* no reader yet */
#define OWNER_SHARED (-2) /* more than one owner, or pinned */
#define OWNER_PENDING (-3) /* reader of a deleted branch: goes away */

struct hent {
	uint8_t h[BFS_HASH_SIZE];
	int32_t owner; /* entity index or OWNER_* */
	uint32_t idx;  /* dense index, for bitmaps */
	bool used;
};

struct htab {
	struct hent *e;
	size_t cap, n;
};

static uint64_t hkey(const uint8_t *h)
{
	return bfs_get_u64(h + 8);
}

static struct hent *hfind(struct htab *t, const uint8_t *h, bool add)
{
	if (add && (t->n + 1) * 2 > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 4096;
		struct hent *ne = calloc(cap, sizeof(*ne));

		if (!ne)
			return NULL;
		for (size_t i = 0; i < t->cap; i++) {
			if (!t->e[i].used)
				continue;
			for (size_t j = hkey(t->e[i].h) & (cap - 1);;
			     j = (j + 1) & (cap - 1)) {
				if (!ne[j].used) {
					ne[j] = t->e[i];
					break;
				}
			}
		}
		free(t->e);
		t->e = ne;
		t->cap = cap;
	}
	if (!t->cap)
		return NULL;
	for (size_t j = hkey(h) & (t->cap - 1);; j = (j + 1) & (t->cap - 1)) {
		if (!t->e[j].used) {
			if (!add)
				return NULL;
			memcpy(t->e[j].h, h, BFS_HASH_SIZE);
			t->e[j].used = true;
			t->e[j].owner = OWNER_NONE;
			t->e[j].idx = (uint32_t)t->n++;
			return &t->e[j];
		}
		if (memcmp(t->e[j].h, h, BFS_HASH_SIZE) == 0)
			return &t->e[j];
	}
}

struct rdr {
	uint64_t e;
	int32_t owner;
};

static int rdr_cmp(const void *a, const void *b)
{
	const struct rdr *x = a, *y = b;

	return x->e < y->e ? -1 : x->e > y->e;
}

/* Index of entity (live branch or snapshot) @id in @ents, or -1. */
static int ent_index(const struct snap_du_ent *ents, size_t n, uint32_t id)
{
	for (size_t i = 0; i < n; i++)
		if (ents[i].id == id)
			return (int)i;
	return -1;
}

static bool has_dependents(struct snap *s, uint32_t id)
{
	for (size_t i = 0; i < s->nbranches; i++) {
		if (reads_via_parent(s->branches[i], id))
			return true;
	}
	return false;
}

/* Readers of @br with their owners; tree_lock held. */
static int readers(struct snap *s, const struct snap_branch *br,
		   const struct snap_du_ent *ents, size_t nents,
		   struct rdr **out, size_t *n)
{
	struct rdr *r = malloc(sizeof(*r) * (2 * s->nbranches + 1));
	size_t k = 0;

	if (!r)
		return -ENOMEM;
	if (!br->deleted) /* the head reads every version; below "no newer" */
		r[k++] = (struct rdr){ UINT64_MAX - 1,
				       ent_index(ents, nents, br->id) };
	for (size_t i = 0; i < s->nbranches; i++) {
		const struct snap_branch *c = s->branches[i];
		int32_t o;

		if (!reads_via_parent(c, br->id))
			continue;
		if (c->deleted)
			o = has_dependents(s, c->id) ? OWNER_SHARED : OWNER_PENDING;
		else if (!c->is_snapshot && has_dependents(s, c->id))
			o = OWNER_SHARED;
		else
			o = ent_index(ents, nents, c->id);
		r[k++] = (struct rdr){ c->parent_epoch, o };
	}
	for (size_t i = 0; i < s->nbranches; i++)
		if (reads_via_origin(s->branches[i], br->id))
			r[k++] = (struct rdr){ s->branches[i]->origin_epoch,
					       OWNER_SHARED };
	qsort(r, k, sizeof(*r), rdr_cmp);
	*out = r;
	*n = k;
	return 0;
}

/* Owner of a version [v, vnext) given the readers. */
static int32_t version_owner(const struct rdr *r, size_t n, uint64_t v,
			     uint64_t vnext)
{
	int32_t o = OWNER_NONE;

	for (size_t i = 0; i < n; i++) {
		if (r[i].e < v || r[i].e >= vnext || r[i].owner == OWNER_PENDING)
			continue;
		if (o == OWNER_NONE)
			o = r[i].owner;
		else if (o != r[i].owner)
			o = OWNER_SHARED;
	}
	return o;
}

static void merge_owner(struct hent *h, int32_t o)
{
	if (o == OWNER_NONE)
		return;
	if (h->owner == OWNER_NONE)
		h->owner = o;
	else if (h->owner != o)
		h->owner = OWNER_SHARED;
}

/* Pass 1: owner of every referenced block. */
static int scan_owners(struct snap *s, struct snap_du_ent *ents, size_t nents,
		       struct htab *ht)
{
	int ret = 0;

	for (size_t bi = 0; ret == 0; bi++) {
		struct snap_branch *br;
		struct rdr *r;
		size_t nr;
		uint8_t lo[5], hi[5], prev[32];
		uint64_t vprev = UINT64_MAX;
		struct kv_iter *it;

		pthread_rwlock_rdlock(&s->tree_lock);
		if (bi >= s->nbranches) {
			pthread_rwlock_unlock(&s->tree_lock);
			break;
		}
		br = s->branches[bi];
		if (br->is_snapshot || br->gone) {
			pthread_rwlock_unlock(&s->tree_lock);
			continue;
		}
		ret = readers(s, br, ents, nents, &r, &nr);
		pthread_rwlock_unlock(&s->tree_lock);
		if (ret < 0)
			break;
		lo[0] = hi[0] = BFS_PFX_BMAP;
		bfs_put_u32(lo + 1, br->id);
		bfs_put_u32(hi + 1, br->id + 1);
		it = kv_iter_new(s->kv, KV_CF_META, lo, 5, hi, 5);
		memset(prev, 0, sizeof(prev));
		for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
			size_t kl, vl;
			const uint8_t *k = kv_iter_key(it, &kl);
			const uint8_t *v = kv_iter_value(it, &vl);
			uint64_t ve;

			if (kl != 29)
				continue;
			ve = UINT64_MAX - bfs_get_u64(k + 21);
			if (memcmp(prev, k, 21) != 0) {
				memcpy(prev, k, 21);
				vprev = UINT64_MAX;
			}
			if (vl == BFS_HASH_SIZE) {
				struct hent *h = hfind(ht, v, true);

				if (!h) {
					ret = -ENOMEM;
					break;
				}
				merge_owner(h, version_owner(r, nr, ve, vprev));
			}
			vprev = ve;
		}
		if (ret == 0)
			ret = kv_iter_status(it);
		kv_iter_free(it);
		free(r);
	}
	return ret;
}

/* Stored length of every block: one pass over "refs". */
static int scan_lengths(struct snap *s, struct htab *ht, uint32_t **len,
			uint64_t *total)
{
	struct kv_iter *it = kv_iter_new(s->kv, KV_CF_REFS, NULL, 0, NULL, 0);
	uint32_t *l = calloc(ht->n ? ht->n : 1, sizeof(*l));
	int ret;

	*total = 0;
	if (!l) {
		kv_iter_free(it);
		return -ENOMEM;
	}
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl, vl;
		const uint8_t *k = kv_iter_key(it, &kl);
		const uint8_t *v = kv_iter_value(it, &vl);
		struct hent *h;

		if (kl != BFS_HASH_SIZE || vl != BFS_REF_VALUE_SIZE ||
		    (int64_t)bfs_get_u64(v) <= 0)
			continue;
		*total += bfs_get_u32(v + 8);
		h = hfind(ht, k, false);
		if (h)
			l[h->idx] = bfs_get_u32(v + 8);
	}
	ret = kv_iter_status(it);
	kv_iter_free(it);
	*len = l;
	return ret;
}

/* Sorted set of inodes that are dead (tombstoned nearest) in a view. */
struct u64v {
	uint64_t *v;
	size_t n, cap;
};

static int u64v_push(struct u64v *a, uint64_t x)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 256;
		uint64_t *nv = realloc(a->v, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		a->v = nv;
		a->cap = cap;
	}
	a->v[a->n++] = x;
	return 0;
}

static bool u64v_has(const struct u64v *a, uint64_t x)
{
	size_t lo = 0, hi = a->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (a->v[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < a->n && a->v[lo] == x;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Visible, live (ino, blk) versions of view @t, by a merge over its
 * levels: bits of their blocks are set in @bits.
 */
static int scan_view(struct snap *s, struct snap_tree *t, struct htab *ht,
		     uint8_t *bits)
{
	struct op op;
	struct u64v seen = { 0 }, dead = { 0 }, done = { 0 };
	int ret = 0;

	op_begin(&op, t, false);
	/* inodes: nearest version decides; collect the dead ones */
	for (int l = 0; l < op.n && ret == 0; l++) {
		uint8_t lo[5], hi[5];
		uint64_t e = op_epoch(&op, l), last = 0;
		bool have_last = false;
		struct kv_iter *it;
		size_t before = seen.n;

		lo[0] = hi[0] = BFS_PFX_INODE;
		bfs_put_u32(lo + 1, op.lv[l].b);
		bfs_put_u32(hi + 1, op.lv[l].b + 1);
		it = kv_iter_new(s->kv, KV_CF_META, lo, 5, hi, 5);
		for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
			size_t kl, vl;
			const uint8_t *k = kv_iter_key(it, &kl);
			uint64_t ino;

			kv_iter_value(it, &vl);
			if (kl != 21 || UINT64_MAX - bfs_get_u64(k + 13) > e)
				continue;
			ino = bfs_get_u64(k + 5);
			if (have_last && ino == last)
				continue;
			last = ino;
			have_last = true;
			if (u64v_has(&seen, ino))
				continue; /* decided by a nearer level */
			if (u64v_push(&done, ino) < 0 ||
			    (vl == 0 && u64v_push(&dead, ino) < 0)) {
				ret = -ENOMEM;
				break;
			}
		}
		kv_iter_free(it);
		/* merge this level's inodes into "seen" */
		for (size_t i = 0; i < done.n && ret == 0; i++)
			ret = u64v_push(&seen, done.v[i]);
		done.n = 0;
		if (seen.n != before)
			qsort(seen.v, seen.n, sizeof(uint64_t), cmp_u64);
		if (dead.n)
			qsort(dead.v, dead.n, sizeof(uint64_t), cmp_u64);
	}
	free(seen.v);
	free(done.v);

	/* blocks: per (ino, blk) the nearest level wins */
	{
		struct kv_iter **its = calloc((size_t)op.n, sizeof(*its));
		uint8_t lo[5], hi[5];

		if (!its) {
			ret = -ENOMEM;
			goto out;
		}
		for (int l = 0; l < op.n; l++) {
			lo[0] = hi[0] = BFS_PFX_BMAP;
			bfs_put_u32(lo + 1, op.lv[l].b);
			bfs_put_u32(hi + 1, op.lv[l].b + 1);
			its[l] = kv_iter_new(s->kv, KV_CF_META, lo, 5, hi, 5);
			kv_iter_seek_first(its[l]);
		}
		for (;;) {
			/* smallest (ino, blk) among the level heads */
			const uint8_t *best = NULL;
			int bl = -1;

			for (int l = 0; l < op.n; l++) {
				size_t kl;
				const uint8_t *k;

				while (kv_iter_valid(its[l])) {
					k = kv_iter_key(its[l], &kl);
					if (kl == 29 && UINT64_MAX - bfs_get_u64(k + 21) <=
								op_epoch(&op, l))
						break;
					kv_iter_next(its[l]);
				}
				if (!kv_iter_valid(its[l]))
					continue;
				k = kv_iter_key(its[l], &kl);
				if (!best || memcmp(k + 5, best + 5, 16) < 0) {
					best = k;
					bl = l;
				}
			}
			if (bl < 0)
				break;
			{
				uint8_t obj[16];
				size_t vl;
				const uint8_t *v = kv_iter_value(its[bl], &vl);

				memcpy(obj, best + 5, 16);
				if (vl == BFS_HASH_SIZE &&
				    !u64v_has(&dead, bfs_get_u64(obj))) {
					struct hent *h = hfind(ht, v, false);

					if (h)
						bits[h->idx / 8] |= (uint8_t)(1u << (h->idx % 8));
				}
				/* skip this (ino, blk) on every level */
				for (int l = 0; l < op.n; l++) {
					while (kv_iter_valid(its[l])) {
						size_t kl;
						const uint8_t *k = kv_iter_key(its[l], &kl);

						if (kl != 29 || memcmp(k + 5, obj, 16) > 0)
							break;
						kv_iter_next(its[l]);
					}
				}
			}
		}
		for (int l = 0; l < op.n; l++)
			kv_iter_free(its[l]);
		free(its);
	}
out:
	free(dead.v);
	op_end(&op);
	return ret;
}

int snap_du(struct snap *s, bool want_shared, struct snap_du_ent **out,
	    size_t *nout, uint64_t *total)
{
	struct snap_branch_info *bv = NULL, *sv = NULL;
	struct snap_du_ent *ents;
	struct htab ht = { 0 };
	uint32_t *len = NULL;
	size_t nb, ns, n;
	int ret;

	ret = snap_branch_list(s, false, &bv, &nb);
	if (ret == 0)
		ret = snap_branch_list(s, true, &sv, &ns);
	if (ret < 0)
		goto out;
	n = nb + ns;
	ents = calloc(n ? n : 1, sizeof(*ents));
	if (!ents) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const struct snap_branch_info *b = i < nb ? &bv[i] : &sv[i - nb];

		ents[i].id = b->id;
		ents[i].is_snapshot = b->is_snapshot;
		memcpy(ents[i].name, b->name, sizeof(ents[i].name));
	}
	ret = scan_owners(s, ents, n, &ht);
	if (ret == 0)
		ret = scan_lengths(s, &ht, &len, total);
	for (size_t i = 0; ret == 0 && i < ht.cap; i++) {
		const struct hent *h = &ht.e[i];

		if (h->used && h->owner >= 0)
			ents[h->owner].exclusive += len[h->idx];
	}
	for (size_t i = 0; ret == 0 && want_shared && i < n; i++) {
		uint8_t *bits = calloc(ht.n / 8 + 1, 1);
		struct snap_tree *t;

		if (!bits) {
			ret = -ENOMEM;
			break;
		}
		if (snap_tree_get(s, ents[i].id, &t) == 0) {
			ret = scan_view(s, t, &ht, bits);
			snap_tree_put(t);
		}
		for (size_t j = 0; ret == 0 && j < ht.cap; j++) {
			const struct hent *h = &ht.e[j];

			if (h->used && (bits[h->idx / 8] >> (h->idx % 8)) & 1 &&
			    h->owner != (int32_t)i)
				ents[i].shared += len[h->idx];
		}
		free(bits);
	}
	if (ret < 0) {
		free(ents);
		goto out;
	}
	*out = ents;
	*nout = n;
out:
	free(len);
	free(ht.e);
	free(bv);
	free(sv);
	return ret;
}
