/* SPDX-License-Identifier: MIT */
/*
 * snap/upcache.c - a cache of lookups in a tree's ancestor levels.
 *
 * What a tree reads at levels >= 1 never changes: each is a branch frozen
 * at an epoch (the branch point), and writes to that branch go to its later
 * epochs (invariant M4 and the epoch bump of a branch create); the pruner
 * deletes only versions that no reader, this tree included, needs.  A
 * tree's levels are fixed when it is built (a reset makes a new tree).  So
 * the answer of "newest version of (pfx, obj) at levels >= 1" can be kept
 * for the tree's lifetime, misses included.
 *
 * It matters on branches: every op on an inherited file reads its inode
 * (and a lookup its dirent) through the ancestors, one RocksDB iterator
 * per level, until the branch writes its own version.  Replaying WAL after
 * a branch of a busy postgres repeats that for the same few files
 * thousands of times; a branch 10 levels deep pays it 10 times over.
 *
 * One exception, harmless: the pruner drops a tombstone of a parentless
 * branch (main) once nothing older is left under it, so a cached tombstone
 * at level l may later read as "no version".  Both are "not live"; only
 * vhas_older tells them apart, and there the cached answer makes a delete
 * write a tombstone where a plain delete would do (a key kept, not wrong
 * data).
 *
 * Direct-mapped: a slot holds one entry, a colliding insert replaces it.
 * Values above UC_VMAX bytes (large xattrs) are not kept, nor anything
 * once the store's caches hold UC_BUDGET bytes (every tree of a store
 * lives until it is closed: 1,000 branches must not mean 1,000 full
 * caches).  One mutex per tree, held for a slot compare and a copy of at
 * most UC_VMAX bytes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "snap_int.h"

#define UC_SLOTS 1024u
#define UC_VMAX 512u
#define UC_BUDGET ((size_t)16 << 20)

struct uc_ent {
	uint64_t h;
	uint64_t epoch;
	int level;     /* -1: no version at any level >= 1 */
	char pfx;
	uint16_t olen;
	uint32_t vlen;
	uint8_t buf[]; /* obj, then value */
};

struct upcache {
	pthread_mutex_t lock;
	struct snap *s;            /* its uc_bytes counts this cache's entries */
	_Atomic uint64_t hits;     /* answers given (tests) */
	struct uc_ent *slot[UC_SLOTS];
};

static size_t uc_size(const struct uc_ent *e)
{
	return sizeof(*e) + e->olen + e->vlen;
}

static uint64_t uc_hash(char pfx, const void *obj, size_t olen)
{
	const uint8_t *p = obj;
	uint64_t h = 0xcbf29ce484222325ull ^ (uint8_t)pfx;

	for (size_t i = 0; i < olen; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

void upcache_free(struct upcache *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < UC_SLOTS; i++) {
		if (c->slot[i])
			atomic_fetch_sub(&c->s->uc_bytes, uc_size(c->slot[i]));
		free(c->slot[i]);
	}
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* The tree's cache, made on first use; NULL without memory. */
static struct upcache *uc_of(struct snap_tree *t)
{
	struct upcache *c = atomic_load(&t->uc), *expect = NULL;

	if (c)
		return c;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	c->s = t->s;
	if (!atomic_compare_exchange_strong(&t->uc, &expect, c)) {
		upcache_free(c);
		c = expect;
	}
	return c;
}

/* 1 found in the cache (*r filled, value copied), 0 not cached or no
 * memory for the copy (then read it). */
static int uc_lookup(struct upcache *c, uint64_t h, char pfx, const void *obj,
		     size_t olen, struct vres *r)
{
	uint8_t val[UC_VMAX];
	struct uc_ent *e;
	struct vres got = { 0 };
	bool found = false;

	pthread_mutex_lock(&c->lock);
	e = c->slot[h % UC_SLOTS];
	if (e && e->h == h && e->pfx == pfx && e->olen == olen &&
	    memcmp(e->buf, obj, olen) == 0) {
		found = true;
		got.level = e->level;
		got.epoch = e->epoch;
		got.vlen = e->vlen;
		memcpy(val, e->buf + olen, e->vlen);
	}
	pthread_mutex_unlock(&c->lock);
	if (!found)
		return 0;
	if (got.vlen) {
		got.val = malloc(got.vlen);
		if (!got.val)
			return 0;
		memcpy(got.val, val, got.vlen);
	}
	*r = got;
	atomic_fetch_add(&c->hits, 1);
	return 1;
}

static void uc_insert(struct upcache *c, uint64_t h, char pfx,
		      const void *obj, size_t olen, const struct vres *r)
{
	size_t size = sizeof(struct uc_ent) + olen + r->vlen;
	struct uc_ent *e, *old;

	if (olen > UINT16_MAX || r->vlen > UC_VMAX)
		return;
	if (atomic_fetch_add(&c->s->uc_bytes, size) + size > UC_BUDGET) {
		atomic_fetch_sub(&c->s->uc_bytes, size);
		return;
	}
	e = malloc(size);
	if (!e) {
		atomic_fetch_sub(&c->s->uc_bytes, size);
		return;
	}
	e->h = h;
	e->epoch = r->epoch;
	e->level = r->level;
	e->pfx = pfx;
	e->olen = (uint16_t)olen;
	e->vlen = (uint32_t)r->vlen;
	memcpy(e->buf, obj, olen);
	if (r->vlen)
		memcpy(e->buf + olen, r->val, r->vlen);
	pthread_mutex_lock(&c->lock);
	old = c->slot[h % UC_SLOTS];
	c->slot[h % UC_SLOTS] = e;
	pthread_mutex_unlock(&c->lock);
	if (old)
		atomic_fetch_sub(&c->s->uc_bytes, uc_size(old));
	free(old);
}

uint64_t upcache_hits(struct snap_tree *t)
{
	struct upcache *c = atomic_load(&t->uc);

	return c ? atomic_load(&c->hits) : 0;
}

int upper_get(struct op *op, char pfx, const void *obj, size_t olen,
	      struct vres *r)
{
	struct upcache *c = op->n > 1 ? uc_of(op->t) : NULL;
	uint64_t h = 0;
	int ret;

	r->level = -1;
	if (c) {
		h = uc_hash(pfx, obj, olen);
		if (uc_lookup(c, h, pfx, obj, olen, r))
			goto done;
	}
	for (int l = 1; l < op->n; l++) {
		uint64_t e = op_epoch(op, l);

		if (e == 0)
			continue;
		ret = level_get(op->kv, pfx, op->lv[l].b, obj, olen, e,
				&r->val, &r->vlen, &r->epoch);
		if (ret < 0)
			return ret;
		if (ret == 1) {
			r->level = l;
			break;
		}
	}
	if (c)
		uc_insert(c, h, pfx, obj, olen, r);
done:
	r->live = r->level >= 0 && r->vlen > 0;
	return 0;
}
