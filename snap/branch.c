/* SPDX-License-Identifier: MIT */
/*
 * snap/branch.c - snapshots, branches, and the pruner.
 *
 * Every operation here is O(1): it writes one or two records (and bumps an
 * epoch) in one batch, synced before it returns.  Space is given back later
 * by the pruner (snap_prune), which deletes the versions no reader needs
 * any more (see "Readers" in kv/format.h); its cost is proportional to the
 * keys of the branches it visits.
 *
 * State of a branch record:
 *
 *   live --snap_branch_delete / snap_branch_reset--> deleted
 *   deleted --snap_prune, once no snapshot or branch reads it--> gone
 *
 * A deleted branch is invisible (no tree, no name) but keeps the versions
 * its remaining readers need.  Branch structs are never freed before
 * snap_close(): a tree held by an open file may still point at one.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snap_int.h"

/* Length of the valid UTF-8 sequence at @p (at most @n bytes) that is not
 * a C1 control, or 0: overlong forms, surrogates and code points past
 * U+10FFFF are invalid. */
size_t utf8_char(const unsigned char *p, size_t n)
{
	uint32_t cp;
	size_t len;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		len = 2, cp = p[0] & 0x1f;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		len = 3, cp = p[0] & 0x0f;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		len = 4, cp = p[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || cp < 0xa0)
		return 0;
	return len;
}

int snap_name_check(const char *name)
{
	size_t n = strlen(name);

	if (n == 0)
		return -EINVAL;
	if (n > SNAP_NAME_MAX)
		return -ENAMETOOLONG;
	if (name[0] == '.' || name[0] == '-')
		return -EINVAL; /* ".", "..", ".snapshots", options */
	/* Names are shown in listings, JSON and terminals: valid UTF-8
	 * without control characters (C0, DEL, C1). */
	for (size_t i = 0; i < n;) {
		const unsigned char *c = (const unsigned char *)name + i;
		size_t len = utf8_char(c, n - i);

		if (len == 0 || *c == '/' || *c < 0x20 || *c == 0x7f)
			return -EINVAL;
		i += len;
	}
	return 0;
}

/* Live branch or snapshot named @name; tree_lock held. */
static struct snap_branch *by_name(struct snap *s, const char *name)
{
	for (size_t i = 0; i < s->nbranches; i++) {
		struct snap_branch *br = s->branches[i];

		if (!br->deleted && strcmp(br->name, name) == 0)
			return br;
	}
	return NULL;
}

/*
 * Is deleted record @old continued by live branch @br: the branch a reset
 * made of it (BFS_BRANCH_RESET, same name, same origin)?  Not once the
 * pruner is dropping @old, nor after the line ended in a user's delete.
 */
static bool continues(const struct snap_branch *br,
		      const struct snap_branch *old)
{
	return old->deleted && old->superseded && !old->gone &&
	       !old->dropping && !old->is_snapshot && !br->deleted &&
	       !br->is_snapshot && strcmp(old->name, br->name) == 0 &&
	       old->origin_id == br->origin_id &&
	       old->origin_epoch == br->origin_epoch;
}

/* The records @br continues (tree_lock held), in a malloc()ed array with
 * room for one more; NULL if out of memory. */
static struct snap_branch **predecessors(struct snap *s,
					 const struct snap_branch *br,
					 size_t *n)
{
	struct snap_branch **v = calloc(s->nbranches + 1, sizeof(*v));

	*n = 0;
	if (!v)
		return NULL;
	for (size_t i = 0; i < s->nbranches; i++)
		if (continues(br, s->branches[i]))
			v[(*n)++] = s->branches[i];
	return v;
}

static struct snap_tree *tree_by_id(struct snap *s, uint32_t id)
{
	for (struct snap_tree *t = s->trees; t; t = t->next)
		if (t->id == id)
			return t;
	return NULL;
}

/*
 * Remove the table's reference to tree @id; tree_lock (W) held.  If others
 * still hold the tree (open files after a forced delete, requests in
 * flight), it pins the branch it reads at level 0: the pruner leaves that
 * branch alone until the last holder lets go (snap_tree_put), so what they
 * read stays what it was.
 */
static void tree_unlink(struct snap *s, uint32_t id)
{
	for (struct snap_tree **pp = &s->trees; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct snap_tree *t = *pp;

			*pp = t->next;
			if (atomic_load(&t->refs) > 1) {
				t->pin = branch_by_id(s, t->base);
				if (t->pin)
					atomic_fetch_add(&t->pin->pins, 1);
			}
			snap_tree_put(t);
			return;
		}
	}
}

/* In use: open files or requests hold the tree beyond the table's ref. */
static bool tree_busy(struct snap *s, uint32_t id)
{
	struct snap_tree *t = tree_by_id(s, id);

	return t && atomic_load(&t->refs) > 1;
}

/*
 * Before a delete or rename of branch @br (tree_lock W held): -EBUSY while
 * its files are open, unless @force (a postgres on it would find its files
 * gone); else the records it continues after resets (predecessors()), in
 * *@prev for the caller to free, or -ENOMEM.
 */
static int busy_or_line(struct snap *s, struct snap_branch *br, bool force,
			struct snap_branch ***prev, size_t *n)
{
	if (!force && tree_busy(s, br->id))
		return -EBUSY;
	*prev = predecessors(s, br, n);
	return *prev ? 0 : -ENOMEM;
}

static int table_add(struct snap *s, struct snap_branch *br)
{
	struct snap_branch **nb;
	struct snap_tree *t;
	int ret;

	nb = realloc(s->branches, sizeof(*nb) * (s->nbranches + 1));
	if (!nb)
		return -ENOMEM;
	s->branches = nb;
	s->branches[s->nbranches++] = br;
	ret = tree_build(s, br, &t);
	if (ret < 0) {
		s->nbranches--;
		return ret;
	}
	t->next = s->trees;
	s->trees = t;
	return 0;
}

/*
 * Finish creating record @nb, whose commit returned @ret: on success it
 * joins the table (its tree becomes visible) and *id (may be NULL) gets
 * its id; on failure it is freed.  tree_lock (W) held.
 */
static int adopt(struct snap *s, struct snap_branch *nb, int ret, uint32_t *id)
{
	/* Its record (and the data it shares) is durable once the commit
	 * just made on this thread is: an fsync in it waits for that. */
	if (ret == 0) {
		atomic_store(&nb->sync_need, kv_thread_ticket(s->kv));
		ret = table_add(s, nb);
	}
	if (ret < 0) {
		branch_free(nb);
		return ret;
	}
	if (id)
		*id = nb->id;
	return 0;
}

static void put_record(struct kv_batch *b, const struct snap_branch *br)
{
	uint8_t k[5], v[BFS_REC_HDR_SIZE + SNAP_NAME_MAX + 12];

	branch_key(k, br);
	kv_batch_put(b, KV_CF_SYS, k, 5, v, branch_encode(br, v));
}

static void put_next_id(struct kv_batch *b, uint32_t next)
{
	uint8_t v[4];

	bfs_put_u32(v, next);
	kv_batch_put(b, KV_CF_SYS, BFS_KEY_NEXT_ID, strlen(BFS_KEY_NEXT_ID), v, 4);
}

/* Persist "branch @id needs pruning" (or clear it) in batch @b. */
static void prune_mark(struct kv_batch *b, uint32_t id, bool set)
{
	uint8_t k[5];

	k[0] = BFS_PFX_PRUNE;
	bfs_put_u32(k + 1, id);
	if (set)
		kv_batch_put(b, KV_CF_SYS, k, 5, "", 0);
	else
		kv_batch_delete(b, KV_CF_SYS, k, 5);
}

/*
 * Make a record change that is already committed and published in memory
 * durable.  Called after every lock is released: operations go on during
 * the fsync.  The WAL is ordered, so anything written after the record and
 * synced by someone else makes the record durable too.  If the sync fails,
 * the change stays in effect in this process (its outcome after a crash
 * is unknown) and the caller reports the error.
 */
static int published_sync(struct snap *s)
{
	return kv_sync(s->kv);
}

static int commit_sync(struct snap *s, struct kv_batch *b)
{
	int ret = kv_commit(s->kv, b);

	if (ret == 0)
		ret = kv_sync(s->kv);
	return ret;
}

/*
 * Create record @nb (a snapshot, or a branch) whose parent is @src at this
 * instant: @src's epoch E is frozen for it and @src moves to E + 1.  Holds
 * @src's epoch lock exclusively, so every operation on @src is wholly
 * before or wholly after the instant.  tree_lock (W) held.
 */
static int freeze_into(struct snap *s, struct snap_branch *src,
		       struct snap_branch *nb)
{
	struct kv_batch *b = kv_batch_new();
	uint64_t e;
	int ret;

	pthread_rwlock_wrlock(&src->epoch_lock);
	e = atomic_load(&src->epoch);
	nb->parent_id = nb->origin_id = src->id;
	nb->parent_epoch = nb->origin_epoch = e;
	atomic_store(&src->epoch, e + 1);
	put_record(b, nb);
	put_record(b, src);
	put_next_id(b, s->next_id);
	ret = kv_commit(s->kv, b);
	if (ret < 0)
		atomic_store(&src->epoch, e);
	pthread_rwlock_unlock(&src->epoch_lock);
	kv_batch_free(b);
	return ret;
}

static struct snap_branch *new_record(struct snap *s, const char *name,
				      bool snapshot, int *err)
{
	struct snap_branch *nb;

	if (s->next_id > SNAP_ID_MAX) {
		*err = -ENOSPC;
		return NULL;
	}
	nb = branch_new();
	if (!nb) {
		*err = -ENOMEM;
		return NULL;
	}
	nb->id = s->next_id++;
	nb->is_snapshot = snapshot;
	nb->created_ns = now_ns();
	atomic_store(&nb->epoch, snapshot ? 0 : 1);
	snprintf(nb->name, sizeof(nb->name), "%s", name);
	return nb;
}

static int check_new_name(struct snap *s, const char *name)
{
	int ret = snap_name_check(name);

	if (ret < 0)
		return ret;
	/* what listings show for a deleted parent or snapshot (a store may
	 * hold one made before this rule: snap_name_check() allows it) */
	if (strcmp(name, "(deleted)") == 0)
		return -EINVAL;
	return by_name(s, name) ? -EEXIST : 0;
}

int snap_snapshot_create(struct snap *s, const char *branch, const char *name,
			 uint32_t *id)
{
	struct snap_branch *src, *nb;
	int ret;

	if (s->readonly)
		return -EROFS;
	pthread_rwlock_wrlock(&s->tree_lock);
	ret = check_new_name(s, name);
	if (ret < 0)
		goto out;
	src = by_name(s, branch);
	if (!src || src->is_snapshot) {
		ret = src ? -EISDIR : -ENOENT; /* EISDIR: names a snapshot */
		goto out;
	}
	nb = new_record(s, name, true, &ret);
	if (!nb)
		goto out;
	ret = freeze_into(s, src, nb);
	ret = adopt(s, nb, ret, id);
out:
	pthread_rwlock_unlock(&s->tree_lock);
	if (ret == 0)
		ret = published_sync(s);
	return ret;
}

int snap_branch_create(struct snap *s, const char *name, const char *from,
		       uint32_t *id)
{
	struct snap_branch *src, *nb;
	int ret;

	if (s->readonly)
		return -EROFS;
	pthread_rwlock_wrlock(&s->tree_lock);
	ret = check_new_name(s, name);
	if (ret < 0)
		goto out;
	src = by_name(s, from ? from : "main");
	if (!src) {
		ret = -ENOENT;
		goto out;
	}
	nb = new_record(s, name, false, &ret);
	if (!nb)
		goto out;
	if (src->is_snapshot) {
		/* The snapshot already froze its instant. */
		struct kv_batch *b = kv_batch_new();

		nb->parent_id = nb->origin_id = src->parent_id;
		nb->parent_epoch = nb->origin_epoch = src->parent_epoch;
		put_record(b, nb);
		put_next_id(b, s->next_id);
		ret = kv_commit(s->kv, b);
		kv_batch_free(b);
	} else {
		ret = freeze_into(s, src, nb);
	}
	ret = adopt(s, nb, ret, id);
out:
	pthread_rwlock_unlock(&s->tree_lock);
	if (ret == 0)
		ret = published_sync(s);
	return ret;
}

/* Mark live branch @br deleted (writes wait for in-flight ops). */
static int mark_deleted(struct snap *s, struct snap_branch *br,
			struct kv_batch *b)
{
	int ret;

	pthread_rwlock_wrlock(&br->epoch_lock);
	br->deleted = true;
	put_record(b, br);
	prune_mark(b, br->id, true);
	ret = kv_commit(s->kv, b);
	if (ret < 0)
		br->deleted = false;
	pthread_rwlock_unlock(&br->epoch_lock);
	if (ret == 0) {
		br->prune_needed = true;
		tree_unlink(s, br->id);
	}
	return ret;
}

int snap_branch_delete(struct snap *s, const char *name, bool force)
{
	struct snap_branch *br, **prev;
	struct kv_batch *b;
	size_t nprev;
	int ret;

	if (s->readonly)
		return -EROFS;
	pthread_rwlock_wrlock(&s->tree_lock);
	br = by_name(s, name);
	if (!br || br->is_snapshot) {
		ret = br ? -EISDIR : -ENOENT;
		goto out;
	}
	ret = busy_or_line(s, br, force, &prev, &nprev);
	if (ret < 0)
		goto out;
	b = kv_batch_new();
	/* its line ends here: the records it continued are nobody's now */
	for (size_t i = 0; i < nprev; i++) {
		prev[i]->superseded = false;
		put_record(b, prev[i]);
	}
	ret = mark_deleted(s, br, b);
	kv_batch_free(b);
	for (size_t i = 0; ret < 0 && i < nprev; i++)
		prev[i]->superseded = true;
	free(prev);
out:
	pthread_rwlock_unlock(&s->tree_lock);
	if (ret == 0)
		ret = published_sync(s);
	if (ret == 0)
		prune_schedule(s);
	return ret;
}

int snap_snapshot_delete(struct snap *s, const char *name, bool force)
{
	struct snap_branch *br;
	struct kv_batch *b;
	uint8_t k[5];
	int ret;

	if (s->readonly)
		return -EROFS;
	pthread_rwlock_wrlock(&s->tree_lock);
	br = by_name(s, name);
	if (!br || !br->is_snapshot) {
		ret = br ? -ENOTDIR : -ENOENT; /* ENOTDIR: names a branch */
		goto out;
	}
	if (!force && tree_busy(s, br->id)) {
		ret = -EBUSY;
		goto out;
	}
	b = kv_batch_new();
	branch_key(k, br);
	kv_batch_delete(b, KV_CF_SYS, k, 5);
	prune_mark(b, br->parent_id, true);
	ret = kv_commit(s->kv, b);
	kv_batch_free(b);
	if (ret == 0) {
		/* Snapshots are not readers of anything once gone; keep the
		 * struct (trees may point at it) but hide it. */
		struct snap_branch *p = branch_by_id(s, br->parent_id);

		br->deleted = true;
		br->gone = true;
		if (p)
			p->prune_needed = true;
		tree_unlink(s, br->id);
	}
out:
	pthread_rwlock_unlock(&s->tree_lock);
	if (ret == 0)
		ret = published_sync(s);
	if (ret == 0)
		prune_schedule(s);
	return ret;
}

int snap_branch_reset(struct snap *s, const char *name, const char *to,
		      bool force, uint32_t *newid)
{
	struct snap_branch *br, *nb, *snap = NULL;
	struct kv_batch *b;
	int ret;

	if (s->readonly)
		return -EROFS;
	pthread_rwlock_wrlock(&s->tree_lock);
	br = by_name(s, name);
	if (!br || br->is_snapshot) {
		ret = br ? -EISDIR : -ENOENT;
		goto out;
	}
	if (to) {
		snap = by_name(s, to);
		if (!snap || !snap->is_snapshot) {
			ret = snap ? -ENOTDIR : -ENOENT;
			goto out;
		}
	} else if (!br->origin_id) {
		ret = -EINVAL; /* no branch point (main) */
		goto out;
	}
	if (!force && tree_busy(s, br->id)) {
		ret = -EBUSY;
		goto out;
	}
	/*
	 * The branch gets a new id whose parent is the target; the old id is
	 * deleted (and pruned).  One batch: both records and the counter.
	 */
	nb = new_record(s, br->name, false, &ret);
	if (!nb)
		goto out;
	nb->parent_id = snap ? snap->parent_id : br->origin_id;
	nb->parent_epoch = snap ? snap->parent_epoch : br->origin_epoch;
	/* still "made from" the same place: a later plain reset goes there */
	nb->origin_id = br->origin_id;
	nb->origin_epoch = br->origin_epoch;
	b = kv_batch_new();
	put_record(b, nb);
	put_next_id(b, s->next_id);
	br->superseded = true; /* nb takes its place (BFS_BRANCH_RESET) */
	ret = mark_deleted(s, br, b);
	kv_batch_free(b);
	if (ret < 0)
		br->superseded = false;
	ret = adopt(s, nb, ret, newid);
out:
	pthread_rwlock_unlock(&s->tree_lock);
	if (ret == 0)
		ret = published_sync(s);
	if (ret == 0)
		prune_schedule(s);
	return ret;
}

int snap_parent_name(struct snap *s, uint32_t id, char *buf, size_t size)
{
	struct snap_branch *br, *live;
	int ret = -ENOENT;

	pthread_rwlock_rdlock(&s->tree_lock);
	br = branch_by_id(s, id);
	if (br && !br->gone) {
		live = br->deleted ? by_name(s, br->name) : br;
		if (live && (live == br || continues(live, br))) {
			snprintf(buf, size, "%s", live->name);
			ret = 0;
		}
	}
	pthread_rwlock_unlock(&s->tree_lock);
	return ret;
}

int snap_branch_rename(struct snap *s, const char *oldname, const char *newname,
		       bool force)
{
	struct snap_branch *br, **prev;
	struct kv_batch *b;
	char saved[SNAP_NAME_MAX + 1];
	size_t nprev;
	int ret;

	if (s->readonly)
		return -EROFS;
	pthread_rwlock_wrlock(&s->tree_lock);
	br = by_name(s, oldname);
	if (!br) {
		ret = -ENOENT;
		goto out;
	}
	ret = check_new_name(s, newname);
	if (ret < 0)
		goto out;
	/* its paths change; the records it continues after resets take the
	 * name too, so that their snapshots and branches still name it as
	 * their parent */
	ret = busy_or_line(s, br, force, &prev, &nprev);
	if (ret < 0)
		goto out;
	memcpy(saved, br->name, sizeof(saved));
	prev[nprev++] = br;
	b = kv_batch_new();
	for (size_t i = 0; i < nprev; i++) {
		snprintf(prev[i]->name, sizeof(prev[i]->name), "%s", newname);
		put_record(b, prev[i]);
	}
	ret = kv_commit(s->kv, b);
	kv_batch_free(b);
	if (ret < 0)
		for (size_t i = 0; i < nprev; i++)
			memcpy(prev[i]->name, saved, sizeof(saved));
	free(prev);
out:
	pthread_rwlock_unlock(&s->tree_lock);
	if (ret == 0)
		ret = published_sync(s);
	return ret;
}

/* ---- pruner ------------------------------------------------------------ */

/* Ask the background thread to prune soon (snap_close prunes too). */
void prune_schedule(struct snap *s)
{
	pthread_mutex_lock(&s->gc_lock);
	s->prune_pending = true;
	pthread_cond_signal(&s->gc_cond);
	pthread_mutex_unlock(&s->gc_lock);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The live head reads every version: its epoch is HEAD_READER, above any
 * real epoch, and below UINT64_MAX, which stands for "no newer version".
 */
#define HEAD_READER (UINT64_MAX - 1)

/* Readers of branch @b (sorted epochs; HEAD_READER = the live head). */
static int readers_of(struct snap *s, const struct snap_branch *br,
		      uint64_t **out, size_t *n, uint64_t *cut)
{
	uint64_t *r = malloc(sizeof(*r) * (2 * s->nbranches + 1));
	size_t k = 0;

	if (!r)
		return -ENOMEM;
	/*
	 * Readers added after this moment freeze the epoch current now or a
	 * later one: a version whose next version is newer than @cut may be
	 * needed by one of them, so the pruner keeps it.
	 */
	*cut = br->deleted ? UINT64_MAX : atomic_load(&br->epoch);
	if (!br->deleted && !br->is_snapshot)
		r[k++] = HEAD_READER;
	for (size_t i = 0; i < s->nbranches; i++) {
		const struct snap_branch *c = s->branches[i];

		if (reads_via_parent(c, br->id))
			r[k++] = c->parent_epoch;
		if (reads_via_origin(c, br->id))
			r[k++] = c->origin_epoch;
	}
	qsort(r, k, sizeof(*r), cmp_u64);
	*out = r;
	*n = k;
	return 0;
}

static bool needed(const uint64_t *r, size_t n, uint64_t v, uint64_t vnext)
{
	size_t lo = 0, hi = n;

	while (lo < hi) { /* first reader >= v */
		size_t mid = (lo + hi) / 2;

		if (r[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && r[lo] < vnext;
}

/*
 * Delete the keys of branch @id that no reader needs (all of them when it
 * has none), committing every few thousand keys.  *freed counts deletions.
 */
static int prune_keys(struct snap *s, const struct snap_branch *br,
		      const uint64_t *r, size_t n, uint64_t cut, uint64_t *freed)
{
	uint32_t id = br->id;
	static const char pfx[] = { BFS_PFX_BMAP, BFS_PFX_DIRENT, BFS_PFX_INODE,
				    BFS_PFX_XATTR };
	struct kv_batch *b = kv_batch_new();
	int ret = 0;

	for (size_t p = 0; p < sizeof(pfx) && ret == 0; p++) {
		uint8_t lo[5], hi[5], prev[SNAP_KEY_MAX], tomb[SNAP_KEY_MAX];
		size_t prevlen = 0, tomblen = 0;
		uint64_t vprev = UINT64_MAX;
		struct kv_iter *it;

		lo[0] = hi[0] = (uint8_t)pfx[p];
		bfs_put_u32(lo + 1, id);
		bfs_put_u32(hi + 1, id + 1);
		it = kv_iter_new(s->kv, KV_CF_META, lo, 5, hi, 5);
		for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
			size_t kl, vl;
			const uint8_t *k = kv_iter_key(it, &kl);
			const uint8_t *v = kv_iter_value(it, &vl);
			uint64_t ve;

			if (kl < 5 + 8 || kl > SNAP_KEY_MAX)
				continue;
			ve = UINT64_MAX - bfs_get_u64(k + kl - 8);
			if (prevlen != kl - 8 || memcmp(prev, k, kl - 8) != 0) {
				/* a kept tombstone that was the oldest
				 * version of the last object hides nothing
				 * in a branch without a parent: drop it */
				if (tomblen) {
					kv_batch_delete(b, KV_CF_META, tomb, tomblen);
					(*freed)++;
				}
				tomblen = 0;
				memcpy(prev, k, kl - 8);
				prevlen = kl - 8;
				vprev = UINT64_MAX; /* newest version of an object */
			}
			if (vprev != UINT64_MAX && vprev > cut) {
				/* the next version is newer than the readers we
				 * know (a snapshot was taken since): keep.  A
				 * next version at the head epoch may still be
				 * rewritten by writers, but never deleted while
				 * an older version exists (vhas_older, bmap
				 * "below"), so deciding on it is safe. */
				tomblen = 0;
			} else if (needed(r, n, ve, vprev)) {
				tomblen = 0;
				/* only below the head epoch: writers never
				 * touch those keys */
				if (vl == 0 && !br->parent_id && ve < cut) {
					memcpy(tomb, k, kl);
					tomblen = kl;
				}
			} else {
				if (pfx[p] == BFS_PFX_BMAP && vl == BFS_HASH_SIZE)
					kv_block_unref(s->kv, b, v);
				kv_batch_delete(b, KV_CF_META, k, kl);
				(*freed)++;
			}
			if (kv_batch_count(b) >= 8192) {
				ret = kv_commit(s->kv, b);
				if (ret < 0)
					break;
			}
			vprev = ve;
		}
		if (ret == 0 && tomblen) {
			kv_batch_delete(b, KV_CF_META, tomb, tomblen);
			(*freed)++;
		}
		if (ret == 0)
			ret = kv_iter_status(it);
		kv_iter_free(it);
	}
	if (ret == 0)
		ret = kv_commit(s->kv, b);
	kv_batch_free(b);
	return ret;
}

/* Forget branch @br entirely (no readers left, keys gone). */
static int drop_record(struct snap *s, struct snap_branch *br)
{
	struct kv_batch *b = kv_batch_new();
	uint8_t k[13], lo[5], hi[5];
	struct kv_iter *it;
	int ret;

	branch_key(k, br);
	kv_batch_delete(b, KV_CF_SYS, k, 5);
	prune_mark(b, br->id, false);
	if (br->parent_id)
		prune_mark(b, br->parent_id, true);
	lo[0] = hi[0] = BFS_PFX_ORPHAN;
	bfs_put_u32(lo + 1, br->id);
	bfs_put_u32(hi + 1, br->id + 1);
	it = kv_iter_new(s->kv, KV_CF_SYS, lo, 5, hi, 5);
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl;
		const void *key = kv_iter_key(it, &kl);

		kv_batch_delete(b, KV_CF_SYS, key, kl);
	}
	/* A scan cut short by a read error would drop the record and leave
	 * orphan entries behind: commit nothing, the pruner tries again. */
	ret = kv_iter_status(it);
	kv_iter_free(it);
	if (ret == 0)
		ret = commit_sync(s, b);
	kv_batch_free(b);
	return ret;
}

int snap_prune(struct snap *s)
{
	int ret = 0;
	bool again = true;

	if (s->readonly)
		return 0;
	pthread_mutex_lock(&s->prune_lock);
	while (again && ret == 0) {
		again = false;
		for (size_t i = 0; ret == 0; i++) {
			struct snap_branch *br;
			uint64_t *r = NULL, freed = 0, cut;
			size_t n;
			bool gone;

			pthread_rwlock_rdlock(&s->tree_lock);
			if (i >= s->nbranches) {
				pthread_rwlock_unlock(&s->tree_lock);
				break;
			}
			br = s->branches[i];
			if (br->is_snapshot || br->gone || !br->prune_needed ||
			    atomic_load(&br->pins) > 0) {
				pthread_rwlock_unlock(&s->tree_lock);
				continue;
			}
			br->prune_needed = false;
			ret = readers_of(s, br, &r, &n, &cut);
			if (ret < 0)
				br->prune_needed = true;
			pthread_rwlock_unlock(&s->tree_lock);
			if (ret < 0)
				break;
			gone = br->deleted && n == 0;
			ret = prune_keys(s, br, r, n, cut, &freed);
			free(r);
			if (ret == 0 && !gone) {
				struct kv_batch *b = kv_batch_new();

				prune_mark(b, br->id, false);
				ret = kv_commit(s->kv, b);
				kv_batch_free(b);
			}
			if (ret == 0 && gone) {
				/* a rename or delete must not write the
				 * record back meanwhile (continues()) */
				pthread_rwlock_wrlock(&s->tree_lock);
				br->dropping = true;
				pthread_rwlock_unlock(&s->tree_lock);
				ret = drop_record(s, br);
				if (ret < 0) {
					pthread_rwlock_wrlock(&s->tree_lock);
					br->dropping = false;
					pthread_rwlock_unlock(&s->tree_lock);
				}
				if (ret == 0) {
					struct snap_branch *p;

					/* it read its parent; now it reads
					 * nothing, so the parent may shrink */
					pthread_rwlock_wrlock(&s->tree_lock);
					br->gone = true;
					p = branch_by_id(s, br->parent_id);
					if (p)
						p->prune_needed = true;
					pthread_rwlock_unlock(&s->tree_lock);
					again = true;
				}
			}
			if (ret < 0) /* e.g. a full disk: try again later */
				br->prune_needed = true;
		}
	}
	pthread_mutex_unlock(&s->prune_lock);
	if (ret < 0)
		kv_log("prune: %s", strerror(-ret));
	return ret;
}
