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
 * Direct-mapped: a slot holds one entry, a colliding insert replaces it.
 * Values above UC_VMAX bytes (large xattrs) are not kept.  One mutex per
 * tree, held for a hash-slot compare and a copy.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "snap_int.h"

#define UC_SLOTS 1024u
#define UC_VMAX 512u

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
	struct uc_ent *slot[UC_SLOTS];
};

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
	for (unsigned i = 0; i < UC_SLOTS; i++)
		free(c->slot[i]);
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
	if (!atomic_compare_exchange_strong(&t->uc, &expect, c)) {
		upcache_free(c);
		c = expect;
	}
	return c;
}

/* 1 found in the cache (*r filled, value copied), 0 not cached, -ENOMEM. */
static int uc_lookup(struct upcache *c, uint64_t h, char pfx, const void *obj,
		     size_t olen, struct vres *r)
{
	struct uc_ent *e;
	int ret = 0;

	pthread_mutex_lock(&c->lock);
	e = c->slot[h % UC_SLOTS];
	if (e && e->h == h && e->pfx == pfx && e->olen == olen &&
	    memcmp(e->buf, obj, olen) == 0) {
		ret = 1;
		r->level = e->level;
		r->epoch = e->epoch;
		r->vlen = e->vlen;
		r->val = NULL;
		if (e->vlen) {
			r->val = malloc(e->vlen);
			if (r->val)
				memcpy(r->val, e->buf + olen, e->vlen);
			else
				ret = -ENOMEM;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

static void uc_insert(struct upcache *c, uint64_t h, char pfx,
		      const void *obj, size_t olen, const struct vres *r)
{
	struct uc_ent *e, *old;

	if (olen > UINT16_MAX || r->vlen > UC_VMAX)
		return;
	e = malloc(sizeof(*e) + olen + r->vlen);
	if (!e)
		return;
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
	free(old);
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
		ret = uc_lookup(c, h, pfx, obj, olen, r);
		if (ret != 0)
			goto done;
	}
	ret = 0;
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
	ret = 0;
done:
	if (ret < 0)
		return ret;
	r->live = r->level >= 0 && r->vlen > 0;
	return 0;
}
