/* SPDX-License-Identifier: MIT */
/*
 * snap/bmcache.c - a cache of a tree's block maps at its ancestor levels.
 *
 * The block-map twin of upcache.c, on the same ground: what a tree reads
 * at levels >= 1 never changes for the tree's lifetime (see upcache.c), so
 * the merged answer of those levels for a range of blocks can be kept.
 *
 * It matters on branches.  Without it every read and every write of an
 * inherited block built one RocksDB iterator per ancestor level to find
 * the block's hash (or, for a write, whether a block was there: st_blocks
 * counts it).  A branch of a busy postgres replays its WAL by reading and
 * writing pages all over the inherited files, one 8 KiB request at a time:
 * those iterators were ~12% of the daemon's CPU in such a start, and a
 * branch 10 levels deep paid them 10 times over.
 *
 * An entry covers BC_SPAN blocks of one inode (a chunk): which of them
 * have a version at some level >= 1 (`present`, tombstones included, as
 * bmap_scan's `below` needs), which of those newest versions are blocks
 * (`live`), and the hashes of the live ones in block order.  It is filled
 * once by reading the chunk at every ancestor level, so a neighbouring
 * page costs no RocksDB read at all.
 *
 * The pruner's exception of upcache.c applies the same way: a cached
 * tombstone may later have no key under it, and both mean "no block".
 *
 * Direct-mapped, BC_SLOTS per tree, made on first use; the slot array (32
 * KiB) and every entry count against one per-store budget (BC_BUDGET), so
 * that 1,000 branches never mean 1,000 full caches.  Past it a chunk that
 * is not cached is read as before, only the blocks asked for, and a fill
 * is kept only in place of another chunk in its slot.  One mutex per tree,
 * held for a compare and a copy (at most 1 KiB).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "snap_int.h"

#define BC_SLOTS 4096u
#define BC_BUDGET ((size_t)32 << 20) /* unless s->bc_budget says */

struct bc_ent {
	uint64_t ino;
	uint64_t chunk;
	uint64_t present;
	uint64_t live;
	uint8_t hash[][BFS_HASH_SIZE]; /* popcount(live), in block order */
};

struct bmcache {
	pthread_mutex_t lock;
	struct snap *s;        /* its bc_bytes counts this cache */
	_Atomic uint64_t hits; /* chunks answered (tests) */
	struct bc_ent *slot[BC_SLOTS];
};

static size_t bc_budget(const struct snap *s)
{
	return s->bc_budget ? s->bc_budget : BC_BUDGET;
}

static size_t bc_size(const struct bc_ent *e)
{
	return sizeof(*e) + (size_t)__builtin_popcountll(e->live) * BFS_HASH_SIZE;
}

static unsigned bc_slot(uint64_t ino, uint64_t chunk)
{
	uint64_t h = ino * 0x9e3779b97f4a7c15ull ^ chunk * 0xc2b2ae3d27d4eb4full;

	return (unsigned)((h ^ (h >> 31)) % BC_SLOTS);
}

void bmcache_free(struct bmcache *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < BC_SLOTS; i++) {
		if (c->slot[i])
			atomic_fetch_sub(&c->s->bc_bytes, bc_size(c->slot[i]));
		free(c->slot[i]);
	}
	atomic_fetch_sub(&c->s->bc_bytes, sizeof(*c));
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* The tree's cache, made on first use; NULL without memory or budget. */
static struct bmcache *bc_of(struct snap_tree *t)
{
	struct bmcache *c = atomic_load(&t->bc), *expect = NULL;
	struct snap *s = t->s;

	if (c)
		return c;
	if (atomic_fetch_add(&s->bc_bytes, sizeof(*c)) + sizeof(*c) > bc_budget(s)) {
		atomic_fetch_sub(&s->bc_bytes, sizeof(*c));
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		atomic_fetch_sub(&s->bc_bytes, sizeof(*c));
		return NULL;
	}
	pthread_mutex_init(&c->lock, NULL);
	c->s = s;
	if (!atomic_compare_exchange_strong(&t->bc, &expect, c)) {
		bmcache_free(c);
		c = expect;
	}
	return c;
}

bool bmcache_on(struct snap_tree *t)
{
	return t->nlevels > 1 && bc_of(t) != NULL;
}

int bmcache_get(struct snap_tree *t, uint64_t ino, uint64_t chunk,
		struct bc_chunk *out)
{
	struct bmcache *c = atomic_load(&t->bc);
	struct bc_ent *e;
	unsigned k = 0;

	if (!c)
		return 0;
	pthread_mutex_lock(&c->lock);
	e = c->slot[bc_slot(ino, chunk)];
	if (!e || e->ino != ino || e->chunk != chunk) {
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	out->present = e->present;
	out->live = e->live;
	for (unsigned i = 0; i < BC_SPAN; i++)
		if (e->live >> i & 1)
			memcpy(out->hash[i], e->hash[k++], BFS_HASH_SIZE);
	pthread_mutex_unlock(&c->lock);
	atomic_fetch_add(&c->hits, 1);
	return 1;
}

/* Whether a fill of the chunk can be kept: its slot holds another chunk
 * (a replacement) or the budget has room for a full entry.  Without,
 * the caller reads only what it needs instead of a whole chunk. */
bool bmcache_room(struct snap_tree *t, uint64_t ino, uint64_t chunk)
{
	struct bmcache *c = atomic_load(&t->bc);
	bool occupied;

	if (!c)
		return false;
	pthread_mutex_lock(&c->lock);
	occupied = c->slot[bc_slot(ino, chunk)] != NULL;
	pthread_mutex_unlock(&c->lock);
	return occupied || atomic_load(&c->s->bc_bytes) + sizeof(struct bc_ent) +
					   BC_SPAN * BFS_HASH_SIZE <= bc_budget(c->s);
}

void bmcache_put(struct snap_tree *t, uint64_t ino, uint64_t chunk,
		 const struct bc_chunk *in)
{
	struct bmcache *c = atomic_load(&t->bc);
	size_t size = sizeof(struct bc_ent) +
		      (size_t)__builtin_popcountll(in->live) * BFS_HASH_SIZE;
	struct bc_ent *e, *old;
	unsigned k = 0, slot = bc_slot(ino, chunk);

	if (!c)
		return;
	e = malloc(size);
	if (!e)
		return;
	e->ino = ino;
	e->chunk = chunk;
	e->present = in->present;
	e->live = in->live;
	for (unsigned i = 0; i < BC_SPAN; i++)
		if (in->live >> i & 1)
			memcpy(e->hash[k++], in->hash[i], BFS_HASH_SIZE);
	pthread_mutex_lock(&c->lock);
	old = c->slot[slot];
	/* the budget bounds what the caches grow by: a replacement that
	 * grows is charged the difference */
	if (atomic_fetch_add(&c->s->bc_bytes, size) + size -
		    (old ? bc_size(old) : 0) > bc_budget(c->s)) {
		atomic_fetch_sub(&c->s->bc_bytes, size);
		pthread_mutex_unlock(&c->lock);
		free(e);
		return;
	}
	c->slot[slot] = e;
	pthread_mutex_unlock(&c->lock);
	if (old)
		atomic_fetch_sub(&c->s->bc_bytes, bc_size(old));
	free(old);
}

uint64_t bmcache_hits(struct snap_tree *t)
{
	struct bmcache *c = atomic_load(&t->bc);

	return c ? atomic_load(&c->hits) : 0;
}
