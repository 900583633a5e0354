/* SPDX-License-Identifier: MIT */
/*
 * snap/check.c - the store checker; see snap/check.h for what it checks.
 *
 * Passes, each one streaming over the database:
 *   1. records   the "default" family: format, counters, branch and
 *                snapshot records (kept: a few hundred bytes each), prune
 *                marks, orphan records, GC queue keys; then ancestry.
 *   2. metadata  every "meta" key once: layout, owner, epoch, value; every
 *                block-map value counts one reference in a hash table
 *                (the only structure proportional to the data).
 *   3. blocks    "refs", "blocks" and the GC queue walked together in hash
 *                order: counts against references, presence, decode + hash.
 *   4. trees     per branch head, snapshot and reset point: the tree as it
 *                reads (levels merged newest-first, as vget/readdir do):
 *                inodes into a per-tree table, then entries, then block
 *                maps; link counts, sizes, damaged blocks by file path.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "snap_int.h"

#define LIST_MAX 200u       /* problems listed per kind; the rest counted */
#define PROGRESS_EVERY 4096u
#define REPAIR_BATCH 4096u
#define PATH_DEPTH_MAX 4096

/* ---- records ---------------------------------------------------------- */

struct rec {
	uint32_t id;
	bool snap, deleted;
	uint32_t parent, origin;
	uint64_t pepoch, epoch, oepoch;
	bool reported_keys; /* a key problem of this id was listed */
	char name[SNAP_NAME_MAX + 1];
	char label[SNAP_NAME_MAX + 40];
};

/* A branch id that owns metadata keys but has no record. */
struct unknown_id {
	uint32_t id;
	uint64_t keys;
	bool named; /* some record names it as parent or origin */
};

struct ck;
static struct unknown_id *unknown(struct ck *c, uint32_t id);

/* ---- referenced blocks ------------------------------------------------- */

enum {
	BH_USED = 1,
	BH_VISITED = 2,  /* seen in pass 3 */
	BH_MISSING = 4,
	BH_CORRUPT = 8,
	BH_REPORTED = 16, /* reported with a file path */
};

struct bh {
	uint8_t h[BFS_HASH_SIZE];
	uint32_t seen; /* block-map values naming it */
	uint8_t flags;
};

struct btab {
	struct bh *e;
	size_t cap, n;
};

/* ---- trees ------------------------------------------------------------- */

struct tlevel {
	uint32_t b;
	uint64_t e;
};

struct ctree {
	const struct rec *r; /* the branch or snapshot */
	char name[SNAP_NAME_MAX + 40];
	bool head;           /* a live branch's head: writable, repairable */
	int n;
	struct tlevel *lv;
};

struct ient {
	uint64_t ino, size, nblocks, parent, pdir, entries, blocks;
	uint32_t mode, nlink, links, subdirs, dirlinks;
	bool bad;
};

struct itab {
	struct ient *e;
	size_t n, cap;
};

/* A problem found in a tree pass, reported once paths can be resolved. */
struct defer {
	const char *kind;
	uint64_t ino;    /* path of this inode ... */
	uint64_t dir;    /* ... or of entry @name in @dir (name != NULL) */
	char *name;
	char *detail;
	bool repaired;
};

struct kindcount {
	const char *kind;
	uint64_t n;
};

struct ck {
	struct snap *s;
	struct kv *kv;
	unsigned flags;
	snap_check_report_fn report;
	snap_check_progress_fn progress;
	void *arg;
	struct snap_check_stats st;

	struct rec *recs;
	size_t nrecs;
	struct unknown_id *unk;
	size_t nunk;
	uint64_t next_ino, max_ino;
	uint32_t next_id, max_id;
	bool have_next_ino, have_next_id;

	struct btab bt;
	struct kv_batch *b; /* repairs */
	int err;            /* first write error */

	struct kindcount kinds[32];
	int nkinds;
};

static bool repairing(const struct ck *c)
{
	return c->flags & SNAP_CHECK_REPAIR;
}

/* ---- reporting ---------------------------------------------------------- */

static struct kindcount *kind_slot(struct ck *c, const char *kind)
{
	for (int i = 0; i < c->nkinds; i++)
		if (!strcmp(c->kinds[i].kind, kind))
			return &c->kinds[i];
	if (c->nkinds == (int)(sizeof(c->kinds) / sizeof(c->kinds[0])))
		return NULL;
	c->kinds[c->nkinds].kind = kind;
	c->kinds[c->nkinds].n = 0;
	return &c->kinds[c->nkinds++];
}

static void vproblem(struct ck *c, const char *kind, const char *branch,
		     const char *path, bool repaired, const char *fmt,
		     va_list ap)
{
	struct kindcount *k = kind_slot(c, kind);
	char detail[1024];
	size_t n;

	c->st.problems++;
	if (repaired)
		c->st.repaired++;
	if (k && k->n++ >= LIST_MAX)
		return;
	vsnprintf(detail, sizeof(detail), fmt, ap);
	n = strlen(detail);
	if (repaired && n + 12 < sizeof(detail))
		memcpy(detail + n, " [repaired]", 12);
	if (c->report)
		c->report(c->arg, kind, branch, path, detail);
}

static void problem(struct ck *c, const char *kind, const char *branch,
		    const char *path, bool repaired, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static void problem(struct ck *c, const char *kind, const char *branch,
		    const char *path, bool repaired, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vproblem(c, kind, branch, path, repaired, fmt, ap);
	va_end(ap);
}

static void progress(struct ck *c, const char *phase, uint64_t done,
		     uint64_t total)
{
	if (c->progress)
		c->progress(c->arg, phase, done, total);
}

static void hexstr(const uint8_t *h, char *out)
{
	static const char d[] = "0123456789abcdef";

	for (unsigned i = 0; i < BFS_HASH_SIZE; i++) {
		out[2 * i] = d[h[i] >> 4];
		out[2 * i + 1] = d[h[i] & 15];
	}
	out[2 * BFS_HASH_SIZE] = 0;
}

/* ---- repairs ------------------------------------------------------------ */

static int repair_flush(struct ck *c)
{
	int ret;

	if (!c->b || !kv_batch_count(c->b))
		return 0;
	ret = kv_commit(c->kv, c->b);
	if (ret < 0 && !c->err)
		c->err = ret;
	return ret;
}

/* Queue a repair write; false (nothing done) when not repairing or a
 * write failed before. */
static bool rput(struct ck *c, enum kv_cf cf, const void *k, size_t kl,
		 const void *v, size_t vl)
{
	if (!repairing(c) || c->err)
		return false;
	kv_batch_put(c->b, cf, k, kl, v, vl);
	if (kv_batch_count(c->b) >= REPAIR_BATCH)
		repair_flush(c);
	return !c->err;
}

static bool rdel(struct ck *c, enum kv_cf cf, const void *k, size_t kl)
{
	if (!repairing(c) || c->err)
		return false;
	kv_batch_delete(c->b, cf, k, kl);
	if (kv_batch_count(c->b) >= REPAIR_BATCH)
		repair_flush(c);
	return !c->err;
}

/* ---- the block table ---------------------------------------------------- */

static size_t bslot(const uint8_t *h, size_t cap)
{
	return (size_t)bfs_get_u64(h + 8) & (cap - 1);
}

static struct bh *bfind(struct btab *t, const uint8_t *h)
{
	if (!t->cap)
		return NULL;
	for (size_t j = bslot(h, t->cap);; j = (j + 1) & (t->cap - 1)) {
		if (!(t->e[j].flags & BH_USED))
			return NULL;
		if (!memcmp(t->e[j].h, h, BFS_HASH_SIZE))
			return &t->e[j];
	}
}

static struct bh *badd(struct btab *t, const uint8_t *h)
{
	struct bh *e;

	if ((t->n + 1) * 4 > t->cap * 3) {
		size_t cap = t->cap ? t->cap * 2 : 1u << 16;
		struct bh *ne = calloc(cap, sizeof(*ne));

		if (!ne)
			return NULL;
		for (size_t i = 0; i < t->cap; i++) {
			if (!(t->e[i].flags & BH_USED))
				continue;
			for (size_t j = bslot(t->e[i].h, cap);;
			     j = (j + 1) & (cap - 1)) {
				if (!(ne[j].flags & BH_USED)) {
					ne[j] = t->e[i];
					break;
				}
			}
		}
		free(t->e);
		t->e = ne;
		t->cap = cap;
	}
	for (size_t j = bslot(h, t->cap);; j = (j + 1) & (t->cap - 1)) {
		e = &t->e[j];
		if (!(e->flags & BH_USED)) {
			memcpy(e->h, h, BFS_HASH_SIZE);
			e->flags = BH_USED;
			e->seen = 0;
			t->n++;
			return e;
		}
		if (!memcmp(e->h, h, BFS_HASH_SIZE))
			return e;
	}
}

/* ---- pass 1: store records --------------------------------------------- */

static struct rec *rec_find(struct ck *c, uint32_t id)
{
	size_t lo = 0, hi = c->nrecs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (c->recs[mid].id == id)
			return &c->recs[mid];
		if (c->recs[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static int rec_cmp(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

static void note_id(struct ck *c, uint32_t id)
{
	if (id > c->max_id)
		c->max_id = id;
}

static void note_ino(struct ck *c, uint64_t ino)
{
	if (ino > c->max_ino)
		c->max_ino = ino;
}

/* Decode one 'R'/'S' record; false (reported) if damaged. */
static bool rec_decode(struct ck *c, uint32_t id, bool snap, const uint8_t *v,
		       size_t vl, struct rec *r)
{
	const char *what = snap ? "snapshot" : "branch";
	struct rec_fields f;
	size_t nl;

	memset(r, 0, sizeof(*r));
	r->id = id;
	r->snap = snap;
	switch (rec_parse(v, vl, &f)) {
	case REC_BAD_HEADER:
		problem(c, "record", NULL, NULL, false,
			"%s record %u: %zu bytes, version %u: damaged", what, id,
			vl, vl ? v[0] : 0);
		return false;
	case REC_BAD_NAME:
		problem(c, "record", NULL, NULL, false,
			"%s record %u: name length %zu in a record of %zu bytes: "
			"damaged", what, id, f.name_len, vl);
		return false;
	}
	nl = f.name_len;
	memcpy(r->name, f.name, nl + 1);
	r->deleted = f.flags & BFS_BRANCH_DELETED;
	r->parent = f.parent_id;
	r->pepoch = f.parent_epoch;
	r->epoch = f.epoch;
	r->origin = f.origin_id;
	r->oepoch = f.origin_epoch;
	if (r->deleted)
		snprintf(r->label, sizeof(r->label), "%s (deleted, id %u)",
			 r->name, id);
	else
		snprintf(r->label, sizeof(r->label), "%s", r->name);
	if (f.flags & ~(BFS_BRANCH_DELETED | BFS_BRANCH_RESET))
		problem(c, "record", r->label, NULL, false,
			"%s record %u: unknown flags 0x%02x", what, id, f.flags);
	else if ((f.flags & BFS_BRANCH_RESET) &&
		 (snap || !(f.flags & BFS_BRANCH_DELETED)))
		problem(c, "record", r->label, NULL, false,
			"%s record %u: flags 0x%02x: 'reset' without 'deleted'",
			what, id, f.flags);
	if (snap && r->deleted)
		problem(c, "record", r->label, NULL, false,
			"snapshot record %u is marked deleted (deleted snapshots "
			"have no record)", id);
	if (strlen(r->name) != nl || snap_name_check(r->name) < 0)
		problem(c, "record", r->label, NULL, false,
			"%s record %u: invalid name", what, id);
	if (snap && (r->epoch != 0 || r->origin != r->parent ||
		     r->oepoch != r->pepoch))
		problem(c, "record", r->label, NULL, false,
			"snapshot record %u: current epoch %llu / origin %u@%llu "
			"(must be 0 / its parent %u@%llu)", id,
			(unsigned long long)r->epoch, r->origin,
			(unsigned long long)r->oepoch, r->parent,
			(unsigned long long)r->pepoch);
	if (!snap && r->epoch == 0)
		problem(c, "record", r->label, NULL, false,
			"branch record %u: current epoch 0", id);
	if (id == 0)
		problem(c, "record", r->label, NULL, false,
			"%s record with id 0 (never used)", what);
	note_id(c, id);
	return true;
}

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* The parent (or origin) @pid at @pe of record @r must be a kept branch
 * whose epoch lies above @pe. */
static void check_link(struct ck *c, const struct rec *r, const char *what,
		       uint32_t pid, uint64_t pe)
{
	const struct rec *p = rec_find(c, pid);

	if (!p) {
		problem(c, "ancestry", r->label, NULL, false,
			"%s %u of %s %u does not exist", what, pid,
			r->snap ? "snapshot" : "branch", r->id);
		return;
	}
	if (p->snap) {
		problem(c, "ancestry", r->label, NULL, false,
			"%s %u of %s %u is a snapshot record, not a branch", what,
			pid, r->snap ? "snapshot" : "branch", r->id);
		return;
	}
	if (pe == 0 || pe >= p->epoch)
		problem(c, "ancestry", r->label, NULL, false,
			"branch point %llu in %s %s is not below its epoch %llu",
			(unsigned long long)pe, what, p->label,
			(unsigned long long)p->epoch);
}

static int pass_records(struct ck *c)
{
	struct kv_iter *it;
	uint32_t *pmarks = NULL;
	size_t npm = 0, cpm = 0;
	uint64_t done = 0;
	bool have_format = false;
	int ret;

	it = kv_iter_new(c->kv, KV_CF_SYS, NULL, 0, NULL, 0);
	if (!it)
		return -ENOMEM;
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl, vl;
		const uint8_t *k = kv_iter_key(it, &kl);
		const uint8_t *v = kv_iter_value(it, &vl);

		if (++done % PROGRESS_EVERY == 0)
			progress(c, "records", done, 0);
		if (kl == strlen(BFS_KEY_FORMAT) &&
		    !memcmp(k, BFS_KEY_FORMAT, kl)) {
			have_format = true;
			if (vl != 4 || bfs_get_u32(v) != BFS_FORMAT_VERSION)
				problem(c, "format", NULL, NULL, false,
					"format version %u (%zu bytes) is not "
					"the version this branchfs knows (%u)",
					vl == 4 ? bfs_get_u32(v) : 0, vl,
					BFS_FORMAT_VERSION);
		} else if (kl == strlen(BFS_KEY_NEXT_INO) &&
			   !memcmp(k, BFS_KEY_NEXT_INO, kl)) {
			if (vl == 8) {
				c->next_ino = bfs_get_u64(v);
				c->have_next_ino = true;
			}
		} else if (kl == strlen(BFS_KEY_NEXT_ID) &&
			   !memcmp(k, BFS_KEY_NEXT_ID, kl)) {
			if (vl == 4) {
				c->next_id = bfs_get_u32(v);
				c->have_next_id = true;
			}
		} else if (kl == 5 && (k[0] == BFS_PFX_BRANCH ||
				       k[0] == BFS_PFX_SNAPSHOT)) {
			struct rec r, *nr;

			if (!rec_decode(c, bfs_get_u32(k + 1),
					k[0] == BFS_PFX_SNAPSHOT, v, vl, &r)) {
				/* Reported by rec_decode.  Its keys are not
				 * "unreachable": --repair must never delete a
				 * branch because its record is damaged. */
				struct unknown_id *u = unknown(c, bfs_get_u32(k + 1));

				if (u)
					u->named = true;
				continue;
			}
			nr = realloc(c->recs, sizeof(*nr) * (c->nrecs + 1));
			if (!nr) {
				kv_iter_free(it);
				free(pmarks);
				return -ENOMEM;
			}
			c->recs = nr;
			c->recs[c->nrecs++] = r;
		} else if (kl == 1 + BFS_HASH_SIZE && k[0] == BFS_PFX_GCQ) {
			/* checked in pass 3 */
		} else if (kl == 5 && k[0] == BFS_PFX_PRUNE) {
			if (npm == cpm) {
				size_t nc = cpm ? cpm * 2 : 16;
				uint32_t *np = realloc(pmarks, nc * sizeof(*np));

				if (!np) {
					kv_iter_free(it);
					free(pmarks);
					return -ENOMEM;
				}
				pmarks = np;
				cpm = nc;
			}
			pmarks[npm++] = bfs_get_u32(k + 1);
		} else if (kl == 13 && k[0] == BFS_PFX_ORPHAN) {
			/* purged at the next open; the inode number counts */
			note_id(c, bfs_get_u32(k + 1));
			note_ino(c, bfs_get_u64(k + 5));
		} else {
			char hex[64];
			size_t n = kl < 20 ? kl : 20;

			for (size_t i = 0; i < n; i++)
				snprintf(hex + 2 * i, 3, "%02x", k[i]);
			problem(c, "record", NULL, NULL,
				rdel(c, KV_CF_SYS, k, kl),
				"unknown store record key %s%s (%zu bytes)", hex,
				kl > n ? "..." : "", kl);
		}
	}
	ret = kv_iter_status(it);
	kv_iter_free(it);
	if (ret < 0) {
		free(pmarks);
		return ret;
	}
	if (!have_format)
		problem(c, "format", NULL, NULL, false, "no format version record");
	if (!c->have_next_ino)
		problem(c, "counter", NULL, NULL, false,
			"inode counter next_ino missing or damaged");
	if (!c->have_next_id)
		problem(c, "counter", NULL, NULL, false,
			"id counter next_id missing or damaged");

	qsort(c->recs, c->nrecs, sizeof(*c->recs), rec_cmp);
	for (size_t i = 0; i < c->nrecs; i++) {
		struct rec *r = &c->recs[i];

		if (i && c->recs[i - 1].id == r->id)
			problem(c, "record", r->label, NULL, false,
				"id %u has both a branch and a snapshot record",
				r->id);
		if (!r->deleted) {
			if (r->snap)
				c->st.snapshots++;
			else
				c->st.branches++;
			for (size_t j = 0; j < i; j++)
				if (!c->recs[j].deleted &&
				    !strcmp(c->recs[j].name, r->name))
					problem(c, "record", r->label, NULL,
						false, "name used by records "
						"%u and %u", c->recs[j].id,
						r->id);
		}
		if (r->parent)
			check_link(c, r, "parent", r->parent, r->pepoch);
		/* a live branch still reads where it was made from */
		if (!r->snap && !r->deleted && r->origin &&
		    (r->origin != r->parent || r->oepoch != r->pepoch))
			check_link(c, r, "origin", r->origin, r->oepoch);
		/* cycles */
		{
			const struct rec *p = r;
			size_t steps = 0;

			while (p && p->parent && steps <= c->nrecs) {
				p = rec_find(c, p->parent);
				steps++;
			}
			if (steps > c->nrecs)
				problem(c, "ancestry", r->label, NULL, false,
					"the parents of %u form a cycle", r->id);
		}
	}
	qsort(pmarks, npm, sizeof(*pmarks), u32_cmp);
	for (size_t i = 0; i < npm; i++) {
		uint8_t k[5];

		note_id(c, pmarks[i]);
		if (rec_find(c, pmarks[i]))
			continue;
		k[0] = BFS_PFX_PRUNE;
		bfs_put_u32(k + 1, pmarks[i]);
		problem(c, "prune-mark", NULL, NULL, rdel(c, KV_CF_SYS, k, 5),
			"prune mark for id %u, which has no record", pmarks[i]);
	}
	free(pmarks);
	return 0;
}

/* ---- pass 2: every metadata key ----------------------------------------- */

static struct unknown_id *unknown(struct ck *c, uint32_t id)
{
	struct unknown_id *n;

	for (size_t i = 0; i < c->nunk; i++)
		if (c->unk[i].id == id)
			return &c->unk[i];
	n = realloc(c->unk, sizeof(*n) * (c->nunk + 1));
	if (!n)
		return NULL;
	c->unk = n;
	n = &c->unk[c->nunk++];
	memset(n, 0, sizeof(*n));
	n->id = id;
	for (size_t i = 0; i < c->nrecs; i++)
		if (c->recs[i].parent == id || c->recs[i].origin == id)
			n->named = true;
	return n;
}

static const char *pfx_name(uint8_t p)
{
	switch (p) {
	case BFS_PFX_INODE:
		return "inode";
	case BFS_PFX_DIRENT:
		return "dirent";
	case BFS_PFX_BMAP:
		return "bmap";
	default:
		return "xattr";
	}
}

/* A problem with one metadata key (listed once per owner and kind of
 * problem would be nicer; the per-kind limit keeps it short). */
static void key_problem(struct ck *c, const char *kind, const struct rec *r,
			uint32_t b, const uint8_t *k, size_t kl, bool repaired,
			const char *what)
{
	char owner[64];
	uint64_t obj = kl >= 13 ? bfs_get_u64(k + 5) : 0;
	uint64_t e = kl >= 13 ? UINT64_MAX - bfs_get_u64(k + kl - 8) : 0;

	snprintf(owner, sizeof(owner), "(unknown id %u)", b);
	problem(c, kind, r ? r->label : owner, NULL, repaired,
		"%s key of inode %llu at epoch %llu: %s", pfx_name(k[0]),
		(unsigned long long)obj, (unsigned long long)e, what);
}

/* Check a dirent key's name: NUL-terminated, 1..255 bytes, no '/'. */
static bool dirent_name_ok(const uint8_t *k, size_t kl)
{
	size_t nl;

	if (kl < 13 + 2 + 8 || k[kl - 9] != 0)
		return false;
	nl = kl - 13 - 9;
	if (nl > 255)
		return false;
	for (size_t i = 0; i < nl; i++)
		if (k[13 + i] == 0 || k[13 + i] == '/')
			return false;
	if ((nl == 1 && k[13] == '.') ||
	    (nl == 2 && k[13] == '.' && k[14] == '.'))
		return false;
	return true;
}

static bool mode_ok(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
	case S_IFIFO:
	case S_IFSOCK:
	case S_IFCHR:
	case S_IFBLK:
		return true;
	default:
		return false;
	}
}

/* Why inode value @v is damaged, or NULL. */
static const char *inode_value_bad(const uint8_t *v, size_t vl, char *buf,
				   size_t size)
{
	uint32_t mode;

	if (vl < BFS_INODE_HDR_SIZE || v[0] != BFS_REC_VERSION) {
		snprintf(buf, size, "record of %zu bytes, version %u: damaged",
			 vl, vl ? v[0] : 0);
		return buf;
	}
	mode = bfs_get_u32(v + 4);
	if (!mode_ok(mode)) {
		snprintf(buf, size, "mode 0%o: no file type", mode);
		return buf;
	}
	if (S_ISLNK(mode) ? vl - BFS_INODE_HDR_SIZE != bfs_get_u64(v + 24)
			  : vl != BFS_INODE_HDR_SIZE) {
		snprintf(buf, size, "record of %zu bytes for size %llu", vl,
			 (unsigned long long)bfs_get_u64(v + 24));
		return buf;
	}
	return NULL;
}

static void check_meta_key(struct ck *c, const uint8_t *k, size_t kl,
			   const uint8_t *v, size_t vl)
{
	uint32_t b = kl >= 5 ? bfs_get_u32(k + 1) : 0;
	struct rec *r = rec_find(c, b);
	struct unknown_id *u = NULL;
	bool count = true, bad = false;
	uint64_t e, ino;
	char why[128];

	if (kl < 5 + 8 + 8 || kl > SNAP_KEY_MAX ||
	    (k[0] != BFS_PFX_INODE && k[0] != BFS_PFX_DIRENT &&
	     k[0] != BFS_PFX_BMAP && k[0] != BFS_PFX_XATTR) ||
	    (k[0] == BFS_PFX_INODE && kl != 21) ||
	    (k[0] == BFS_PFX_BMAP && kl != 29) ||
	    (k[0] == BFS_PFX_DIRENT && !dirent_name_ok(k, kl)) ||
	    (k[0] == BFS_PFX_XATTR && (kl < 13 + 2 + 8 || k[kl - 9] != 0))) {
		char hex[48];
		size_t n = kl < 16 ? kl : 16;

		for (size_t i = 0; i < n; i++)
			snprintf(hex + 2 * i, 3, "%02x", k[i]);
		problem(c, "key", r ? r->label : NULL, NULL,
			rdel(c, KV_CF_META, k, kl),
			"malformed metadata key %s%s (%zu bytes)", hex,
			kl > n ? "..." : "", kl);
		return;
	}
	note_id(c, b);
	ino = bfs_get_u64(k + 5);
	e = UINT64_MAX - bfs_get_u64(k + kl - 8);
	if (!r) {
		u = unknown(c, b);
		if (u) {
			u->keys++;
			/* no record has these keys nor reads them: unreachable */
			if (!u->named && rdel(c, KV_CF_META, k, kl))
				count = false;
		}
	} else if (r->snap) {
		if (!r->reported_keys)
			key_problem(c, "key", r, b, k, kl, false,
				    "a snapshot id owns metadata keys");
		r->reported_keys = true;
	} else if (e == 0 || e > r->epoch) {
		if (!r->reported_keys)
			key_problem(c, "key", r, b, k, kl, false,
				    "epoch outside 1..the branch's current epoch");
		r->reported_keys = true;
	}
	note_ino(c, ino);
	if (ino == 0)
		key_problem(c, "key", r, b, k, kl, false, "inode number 0");

	switch (k[0]) {
	case BFS_PFX_INODE:
		if (vl && inode_value_bad(v, vl, why, sizeof(why))) {
			key_problem(c, "inode", r, b, k, kl, false, why);
			bad = true;
		}
		break;
	case BFS_PFX_DIRENT:
		if (vl && vl != BFS_DIRENT_VALUE_SIZE) {
			snprintf(why, sizeof(why), "entry value of %zu bytes", vl);
			key_problem(c, "dirent", r, b, k, kl, false, why);
			bad = true;
		} else if (vl) {
			uint64_t t = bfs_get_u64(v);

			note_ino(c, t);
			if (t == 0 || !mode_ok((uint32_t)v[8] << 12)) {
				key_problem(c, "dirent", r, b, k, kl, false,
					    "entry names inode 0 or no file type");
				bad = true;
			}
		}
		break;
	case BFS_PFX_BMAP:
		c->st.bmap_entries++;
		if (vl && vl != BFS_HASH_SIZE) {
			snprintf(why, sizeof(why), "block map value of %zu bytes",
				 vl);
			key_problem(c, "bmap", r, b, k, kl, false, why);
			bad = true;
		} else if (vl && count) {
			struct bh *h = badd(&c->bt, v);

			if (!h) {
				c->err = c->err ? c->err : -ENOMEM;
				return;
			}
			h->seen++;
		}
		break;
	default:
		if (vl && v[0] != 0x01) {
			key_problem(c, "xattr", r, b, k, kl, false,
				    "xattr value without its 0x01 marker");
			bad = true;
		}
		break;
	}
	(void)bad;
}

static int pass_meta(struct ck *c)
{
	struct kv_iter *it;
	uint64_t done = 0;
	int ret;

	it = kv_iter_new(c->kv, KV_CF_META, NULL, 0, NULL, 0);
	if (!it)
		return -ENOMEM;
	for (kv_iter_seek_first(it); kv_iter_valid(it) && !c->err;
	     kv_iter_next(it)) {
		size_t kl, vl;
		const uint8_t *k = kv_iter_key(it, &kl);
		const uint8_t *v = kv_iter_value(it, &vl);

		check_meta_key(c, k, kl, v, vl);
		if (++done % PROGRESS_EVERY == 0)
			progress(c, "metadata", done, 0);
	}
	progress(c, "metadata", done, done);
	ret = kv_iter_status(it);
	kv_iter_free(it);
	if (ret < 0)
		return ret;
	for (size_t i = 0; i < c->nunk; i++) {
		const struct unknown_id *u = &c->unk[i];
		char owner[64];

		snprintf(owner, sizeof(owner), "(unknown id %u)", u->id);
		if (u->named)
			continue; /* broken ancestry: reported in pass 1 */
		problem(c, "key", owner, NULL, repairing(c) && !c->err,
			"%llu metadata keys of id %u, which has no record and "
			"that no tree reads", (unsigned long long)u->keys,
			u->id);
	}
	/* the counters must be above everything in use */
	if (c->have_next_ino && c->max_ino >= c->next_ino) {
		uint8_t v[8];

		bfs_put_u64(v, c->max_ino + 1);
		problem(c, "counter", NULL, NULL,
			rput(c, KV_CF_SYS, BFS_KEY_NEXT_INO,
			     strlen(BFS_KEY_NEXT_INO), v, 8),
			"next_ino %llu is not above inode %llu in use",
			(unsigned long long)c->next_ino,
			(unsigned long long)c->max_ino);
	}
	if (c->have_next_id && c->max_id >= c->next_id) {
		uint8_t v[4];

		bfs_put_u32(v, c->max_id + 1);
		problem(c, "counter", NULL, NULL,
			rput(c, KV_CF_SYS, BFS_KEY_NEXT_ID,
			     strlen(BFS_KEY_NEXT_ID), v, 4),
			"next_id %u is not above id %u in use", c->next_id,
			c->max_id);
	}
	return 0;
}

/* ---- pass 3: counts, blocks and the GC queue ---------------------------- */

/* Free block @h entirely (block, count, queue entry), as GC would. */
static bool free_block(struct ck *c, const uint8_t *h)
{
	uint8_t q[1 + BFS_HASH_SIZE];

	q[0] = BFS_PFX_GCQ;
	memcpy(q + 1, h, BFS_HASH_SIZE);
	return rdel(c, KV_CF_BLOCKS, h, BFS_HASH_SIZE) &&
	       rdel(c, KV_CF_REFS, h, BFS_HASH_SIZE) &&
	       rdel(c, KV_CF_SYS, q, sizeof(q));
}

static bool set_count(struct ck *c, const uint8_t *h, int64_t n, uint32_t len)
{
	uint8_t v[BFS_REF_VALUE_SIZE];

	bfs_put_u64(v, (uint64_t)n);
	bfs_put_u32(v + 8, len);
	return rput(c, KV_CF_REFS, h, BFS_HASH_SIZE, v, sizeof(v));
}

/* Advance @it past keys that are not hashes (reported, deleted on repair);
 * for the queue, keys are 'Q' | hash. */
static const uint8_t *walk_key(struct ck *c, struct kv_iter *it, enum kv_cf cf)
{
	size_t want = cf == KV_CF_SYS ? 1 + BFS_HASH_SIZE : BFS_HASH_SIZE;

	for (; kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl;
		const uint8_t *k = kv_iter_key(it, &kl);

		if (kl == want)
			return cf == KV_CF_SYS ? k + 1 : k;
		if (cf == KV_CF_SYS)
			problem(c, "gc-queue", NULL, NULL,
				rdel(c, cf, k, kl),
				"malformed queue key of %zu bytes", kl);
		else
			problem(c, cf == KV_CF_REFS ? "refcount" : "key",
				NULL, NULL, rdel(c, cf, k, kl),
				"malformed %s key of %zu bytes",
				cf == KV_CF_REFS ? "refs" : "blocks", kl);
	}
	return NULL;
}

static void check_hash(struct ck *c, const uint8_t *h, const uint8_t *rv,
		       size_t rvl, bool has_ref, const uint8_t *bv, size_t bvl,
		       bool has_block, bool queued, uint8_t *buf)
{
	struct bh *e = bfind(&c->bt, h);
	uint32_t seen = e ? e->seen : 0;
	int64_t count = 0;
	uint32_t len = 0;
	bool corrupt = false;
	char hex[2 * BFS_HASH_SIZE + 1], why[96];

	hexstr(h, hex);
	if (e)
		e->flags |= BH_VISITED;
	if (has_ref) {
		if (rvl == BFS_REF_VALUE_SIZE) {
			count = (int64_t)bfs_get_u64(rv);
			len = bfs_get_u32(rv + 8);
		} else {
			count = -1; /* forces a correction below */
			problem(c, "refcount", NULL, NULL, false,
				"block %s: count record of %zu bytes", hex, rvl);
		}
	}
	if (has_block) {
		c->st.blocks++;
		corrupt = kv_block_verify(bv, bvl, h, buf, why, sizeof(why)) < 0;
	}

	if (!seen) {
		if (has_block && corrupt)
			problem(c, "orphan-block", NULL, NULL, free_block(c, h),
				"block %s: unreferenced and corrupt (%s)", hex,
				why);
		else if (has_block && count <= 0 && queued)
			; /* waiting for the collector (R2) */
		else if (has_block)
			problem(c, count > 0 ? "refcount" : "orphan-block",
				NULL, NULL, free_block(c, h),
				"block %s: count %lld but no block map names it%s",
				hex, (long long)count,
				queued ? "" : "; not queued for collection");
		else if (has_ref && count != 0)
			problem(c, "refcount", NULL, NULL, free_block(c, h),
				"count record of absent block %s: count %lld", hex,
				(long long)count);
		else if (has_ref && !queued)
			problem(c, "gc-queue", NULL, NULL, free_block(c, h),
				"count record of absent block %s, not queued", hex);
		else if (!has_ref && queued)
			problem(c, "gc-queue", NULL, NULL, free_block(c, h),
				"queue entry for block %s, which is neither stored "
				"nor counted", hex);
		return;
	}
	if (!has_block) {
		e->flags |= BH_MISSING;
		return; /* reported per file; the count waits for the block */
	}
	if (corrupt)
		e->flags |= BH_CORRUPT; /* reported per file */
	if (count != (int64_t)seen)
		problem(c, "refcount", NULL, NULL,
			set_count(c, h, seen, (uint32_t)bvl),
			"block %s: count %lld, referenced by %u block-map "
			"entries", hex, (long long)count, seen);
	else if (len != bvl)
		problem(c, "refcount", NULL, NULL,
			set_count(c, h, seen, (uint32_t)bvl),
			"block %s: recorded length %u, stored %zu bytes", hex,
			len, bvl);
}

static int hash_cmp(const uint8_t *a, const uint8_t *b)
{
	if (!a)
		return b ? 1 : 0;
	if (!b)
		return -1;
	return memcmp(a, b, BFS_HASH_SIZE);
}

static int pass_blocks(struct ck *c)
{
	static const uint8_t qlo[1] = { BFS_PFX_GCQ }, qhi[1] = { BFS_PFX_GCQ + 1 };
	struct kv_iter *ir, *ib, *iq;
	uint8_t *buf = malloc(BFS_BLOCK_SIZE);
	uint64_t done = 0;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	ir = kv_iter_new(c->kv, KV_CF_REFS, NULL, 0, NULL, 0);
	ib = kv_iter_new(c->kv, KV_CF_BLOCKS, NULL, 0, NULL, 0);
	iq = kv_iter_new(c->kv, KV_CF_SYS, qlo, 1, qhi, 1);
	kv_iter_seek_first(ir);
	kv_iter_seek_first(ib);
	kv_iter_seek_first(iq);
	while (!c->err) {
		const uint8_t *hr = walk_key(c, ir, KV_CF_REFS);
		const uint8_t *hb = walk_key(c, ib, KV_CF_BLOCKS);
		const uint8_t *hq = walk_key(c, iq, KV_CF_SYS);
		const uint8_t *h = hr, *rv = NULL, *bv = NULL;
		uint8_t cur[BFS_HASH_SIZE];
		size_t rvl = 0, bvl = 0;
		bool inr, inb, inq;

		if (hash_cmp(hb, h) < 0)
			h = hb;
		if (hash_cmp(hq, h) < 0)
			h = hq;
		if (!h)
			break;
		memcpy(cur, h, BFS_HASH_SIZE);
		inr = hr && !memcmp(hr, cur, BFS_HASH_SIZE);
		inb = hb && !memcmp(hb, cur, BFS_HASH_SIZE);
		inq = hq && !memcmp(hq, cur, BFS_HASH_SIZE);
		if (inr)
			rv = kv_iter_value(ir, &rvl);
		if (inb)
			bv = kv_iter_value(ib, &bvl);
		check_hash(c, cur, rv, rvl, inr, bv, bvl, inb, inq, buf);
		if (inr)
			kv_iter_next(ir);
		if (inb)
			kv_iter_next(ib);
		if (inq)
			kv_iter_next(iq);
		if (++done % PROGRESS_EVERY == 0)
			progress(c, "blocks", done, c->bt.n);
	}
	progress(c, "blocks", done, done);
	if (!ret)
		ret = kv_iter_status(ir);
	if (!ret)
		ret = kv_iter_status(ib);
	if (!ret)
		ret = kv_iter_status(iq);
	kv_iter_free(ir);
	kv_iter_free(ib);
	kv_iter_free(iq);
	free(buf);
	if (ret < 0)
		return ret;
	/* referenced, but neither stored, counted nor queued */
	for (size_t i = 0; i < c->bt.cap; i++)
		if ((c->bt.e[i].flags & (BH_USED | BH_VISITED)) == BH_USED)
			c->bt.e[i].flags |= BH_MISSING;
	return 0;
}

/* ---- pass 4: trees ------------------------------------------------------ */

/* Levels of the tree that reads (@b, @e) and then @b's ancestry.  0, or -1
 * if the ancestry is broken (reported in pass 1). */
static int tree_levels(struct ck *c, struct ctree *t, uint32_t b, uint64_t e)
{
	const struct rec *cur = rec_find(c, b);
	int cap = 8;

	t->n = 0;
	t->lv = malloc(sizeof(*t->lv) * (size_t)cap);
	if (!t->lv || !cur || cur->snap)
		return -1;
	t->lv[t->n].b = b;
	t->lv[t->n++].e = e;
	while (cur->parent) {
		const struct rec *p = rec_find(c, cur->parent);

		if (!p || p->snap || t->n > (int)c->nrecs)
			return -1;
		if (t->n == cap) {
			struct tlevel *nl;

			cap *= 2;
			nl = realloc(t->lv, sizeof(*t->lv) * (size_t)cap);
			if (!nl)
				return -1;
			t->lv = nl;
		}
		t->lv[t->n].b = p->id;
		t->lv[t->n++].e = cur->pepoch;
		cur = p;
	}
	return 0;
}

/* One level of a view: the newest version <= e of each object. */
struct vlev {
	struct kv_iter *it;
	uint64_t e;
	bool has, adv;
	const uint8_t *k, *v;
	size_t kl, vl;
	uint8_t prev[SNAP_KEY_MAX];
	size_t prevlen;
};

/* The objects of one key family as a tree sees them, in object order. */
struct view {
	int n;
	struct vlev *l;
	/* the current object */
	const uint8_t *obj, *val;
	size_t olen, vlen;
	int level;
	uint64_t epoch;
	bool started;
};

static void vlev_fill(struct vlev *L)
{
	for (; kv_iter_valid(L->it); kv_iter_next(L->it)) {
		size_t kl, vl;
		const uint8_t *k = kv_iter_key(L->it, &kl);
		uint64_t ve;

		if (kl < 5 + 1 + 8 || kl > SNAP_KEY_MAX)
			continue;
		ve = UINT64_MAX - bfs_get_u64(k + kl - 8);
		if (ve == 0 || ve > L->e)
			continue;
		L->k = k;
		L->kl = kl;
		L->v = kv_iter_value(L->it, &vl);
		L->vl = vl;
		L->has = true;
		return;
	}
	L->has = false;
}

/* Skip the older versions of the current object, then fill. */
static void vlev_advance(struct vlev *L)
{
	L->prevlen = L->kl - 13;
	memcpy(L->prev, L->k + 5, L->prevlen);
	for (kv_iter_next(L->it); kv_iter_valid(L->it); kv_iter_next(L->it)) {
		size_t kl;
		const uint8_t *k = kv_iter_key(L->it, &kl);

		if (kl < 14 || kl - 13 != L->prevlen ||
		    memcmp(k + 5, L->prev, L->prevlen))
			break;
	}
	vlev_fill(L);
}

static int obj_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
	int r = memcmp(a, b, al < bl ? al : bl);

	if (r)
		return r;
	return al < bl ? -1 : al > bl;
}

/* Open a view of family @pfx over objects [lo, hi) (hi NULL: all). */
static int view_open(struct view *V, struct ck *c, const struct ctree *t,
		     char pfx, const uint8_t *lo, size_t lolen,
		     const uint8_t *hi, size_t hilen)
{
	memset(V, 0, sizeof(*V));
	V->l = calloc((size_t)t->n, sizeof(*V->l));
	if (!V->l)
		return -ENOMEM;
	V->n = t->n;
	for (int i = 0; i < t->n; i++) {
		uint8_t kl[5 + 32], kh[5 + 32];
		size_t ll = 5, hl = 5;

		kl[0] = kh[0] = (uint8_t)pfx;
		bfs_put_u32(kl + 1, t->lv[i].b);
		bfs_put_u32(kh + 1, t->lv[i].b);
		if (lo) {
			memcpy(kl + 5, lo, lolen);
			ll += lolen;
		}
		if (hi) {
			memcpy(kh + 5, hi, hilen);
			hl += hilen;
		} else {
			bfs_put_u32(kh + 1, t->lv[i].b + 1);
		}
		V->l[i].e = t->lv[i].e;
		V->l[i].it = kv_iter_new(c->kv, KV_CF_META, kl, ll, kh, hl);
		if (!V->l[i].it) {
			V->n = i;
			return -ENOMEM;
		}
		kv_iter_seek_first(V->l[i].it);
		vlev_fill(&V->l[i]);
	}
	return 0;
}

/* Next visible object (tombstones included: V->vlen 0).  1, 0 at the end,
 * or -errno. */
static int view_next(struct view *V)
{
	int best = -1;

	for (int i = 0; i < V->n; i++) {
		if (V->l[i].adv) {
			V->l[i].adv = false;
			vlev_advance(&V->l[i]);
		}
	}
	for (int i = 0; i < V->n; i++) {
		struct vlev *L = &V->l[i];

		if (!L->has)
			continue;
		if (best < 0 || obj_cmp(L->k + 5, L->kl - 13, V->l[best].k + 5,
					V->l[best].kl - 13) < 0)
			best = i;
	}
	if (best < 0) {
		for (int i = 0; i < V->n; i++) {
			int ret = kv_iter_status(V->l[i].it);

			if (ret < 0)
				return ret;
		}
		return 0;
	}
	for (int i = 0; i < V->n; i++) {
		struct vlev *L = &V->l[i];

		if (L->has && !obj_cmp(L->k + 5, L->kl - 13,
				       V->l[best].k + 5, V->l[best].kl - 13))
			L->adv = true;
	}
	V->obj = V->l[best].k + 5;
	V->olen = V->l[best].kl - 13;
	V->val = V->l[best].v;
	V->vlen = V->l[best].vl;
	V->level = best;
	V->epoch = UINT64_MAX - bfs_get_u64(V->l[best].k + V->l[best].kl - 8);
	return 1;
}

static void view_close(struct view *V)
{
	for (int i = 0; i < V->n; i++)
		kv_iter_free(V->l[i].it);
	free(V->l);
	V->l = NULL;
}

static struct ient *ifind(struct itab *t, uint64_t ino)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (t->e[mid].ino == ino)
			return &t->e[mid];
		if (t->e[mid].ino < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Name of an entry of directory @dir that names @ino (malloc()ed), or
 * NULL. */
static char *find_name(struct ck *c, const struct ctree *t, uint64_t dir,
		       uint64_t ino)
{
	uint8_t lo[8], hi[8];
	struct view V;
	char *name = NULL;

	bfs_put_u64(lo, dir);
	bfs_put_u64(hi, dir + 1);
	if (view_open(&V, c, t, BFS_PFX_DIRENT, lo, 8, hi, 8) == 0) {
		while (view_next(&V) > 0) {
			if (V.vlen == BFS_DIRENT_VALUE_SIZE &&
			    bfs_get_u64(V.val) == ino && V.olen > 9) {
				name = strndup((const char *)V.obj + 8,
					       V.olen - 9);
				break;
			}
		}
	}
	view_close(&V);
	return name;
}

/* Path of @ino in tree @t (malloc()ed). */
static char *path_of(struct ck *c, const struct ctree *t, struct itab *it,
		     uint64_t ino)
{
	char *path = strdup(""), *np;
	uint64_t cur = ino;
	int depth = 0;

	while (path && cur != SNAP_ROOT_INO) {
		struct ient *e = ifind(it, cur);
		char *name = NULL, tmp[64];
		const char *part;

		if (!e || !e->pdir || depth++ > PATH_DEPTH_MAX) {
			snprintf(tmp, sizeof(tmp), "(%s inode %llu)",
				 !e ? "missing" : e->pdir ? "deep" : "unlinked",
				 (unsigned long long)cur);
			np = malloc(strlen(tmp) + strlen(path) + 1);
			if (np)
				sprintf(np, "%s%s", tmp, path);
			free(path);
			return np;
		}
		name = find_name(c, t, e->pdir, cur);
		if (!name)
			snprintf(tmp, sizeof(tmp), "(inode %llu)",
				 (unsigned long long)cur);
		part = name ? name : tmp;
		np = malloc(strlen(part) + strlen(path) + 2);
		if (np)
			sprintf(np, "/%s%s", part, path);
		free(name);
		free(path);
		path = np;
		cur = e->pdir;
	}
	if (path && !*path) {
		free(path);
		path = strdup("/");
	}
	return path;
}

struct dlist {
	struct defer *d;
	size_t n, cap;
};

static void defer_add(struct ck *c, struct dlist *l, const char *kind,
		      uint64_t ino, uint64_t dir, const char *name,
		      size_t namelen, bool repaired, const char *fmt, ...)
	__attribute__((format(printf, 9, 10)));
static void defer_add(struct ck *c, struct dlist *l, const char *kind,
		      uint64_t ino, uint64_t dir, const char *name,
		      size_t namelen, bool repaired, const char *fmt, ...)
{
	char detail[512];
	va_list ap;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct defer *nd = realloc(l->d, cap * sizeof(*nd));

		if (!nd) {
			c->err = c->err ? c->err : -ENOMEM;
			return;
		}
		l->d = nd;
		l->cap = cap;
	}
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	l->d[l->n].kind = kind;
	l->d[l->n].ino = ino;
	l->d[l->n].dir = dir;
	l->d[l->n].name = name ? strndup(name, namelen) : NULL;
	l->d[l->n].detail = strdup(detail);
	l->d[l->n].repaired = repaired;
	l->n++;
}

static void defer_flush(struct ck *c, const struct ctree *t, struct itab *it,
			struct dlist *l)
{
	for (size_t i = 0; i < l->n; i++) {
		struct defer *d = &l->d[i];
		struct kindcount *k = kind_slot(c, d->kind);
		bool listed = !k || k->n < LIST_MAX;
		char *p = NULL;

		if (!listed) {
			/* counted, not listed: spare the path lookups */
		} else if (d->name) {
			char *dp = path_of(c, t, it, d->dir);

			if (dp && asprintf(&p, "%s/%s", strcmp(dp, "/") ? dp : "",
					   d->name) < 0)
				p = NULL;
			free(dp);
		} else {
			p = path_of(c, t, it, d->ino);
		}
		problem(c, d->kind, t->name, listed ? (p ? p : "?") : NULL,
			d->repaired, "%s", d->detail ? d->detail : "");
		free(p);
		free(d->name);
		free(d->detail);
	}
	l->n = 0;
}

/* Rewrite inode @e of head tree @t at its current epoch with corrected
 * nlink/size/nblocks (as a write would: a new version at level 0). */
static bool fix_inode(struct ck *c, const struct ctree *t, const struct ient *e,
		      uint32_t nlink, uint64_t size, uint64_t nblocks)
{
	uint8_t lo[8], hi[8], k[21];
	struct view V;
	bool done = false;

	if (!t->head || !repairing(c) || c->err)
		return false;
	bfs_put_u64(lo, e->ino);
	bfs_put_u64(hi, e->ino + 1);
	if (view_open(&V, c, t, BFS_PFX_INODE, lo, 8, hi, 8) == 0 &&
	    view_next(&V) > 0 && V.vlen >= BFS_INODE_HDR_SIZE) {
		uint8_t *v = malloc(V.vlen);

		if (v) {
			memcpy(v, V.val, V.vlen);
			bfs_put_u32(v + 16, nlink);
			bfs_put_u64(v + 24, size);
			bfs_put_u64(v + 32, nblocks);
			k[0] = BFS_PFX_INODE;
			bfs_put_u32(k + 1, t->lv[0].b);
			bfs_put_u64(k + 5, e->ino);
			bfs_put_u64(k + 13, UINT64_MAX - t->lv[0].e);
			done = rput(c, KV_CF_META, k, sizeof(k), v, V.vlen);
			free(v);
		}
	}
	view_close(&V);
	return done;
}

static int tree_inodes(struct ck *c, const struct ctree *t, struct itab *it,
		       struct dlist *dl)
{
	struct view V;
	char why[128];
	int ret;

	ret = view_open(&V, c, t, BFS_PFX_INODE, NULL, 0, NULL, 0);
	while (ret == 0 && (ret = view_next(&V)) > 0) {
		struct ient *e;

		ret = 0;
		if (!V.vlen || V.olen != 8)
			continue;
		if (it->n == it->cap) {
			size_t cap = it->cap ? it->cap * 2 : 1024;
			struct ient *ne = realloc(it->e, cap * sizeof(*ne));

			if (!ne) {
				ret = -ENOMEM;
				break;
			}
			it->e = ne;
			it->cap = cap;
		}
		e = &it->e[it->n++];
		memset(e, 0, sizeof(*e));
		e->ino = bfs_get_u64(V.obj);
		if (inode_value_bad(V.val, V.vlen, why, sizeof(why))) {
			e->bad = true;
			defer_add(c, dl, "inode", e->ino, 0, NULL, 0, false,
				  "inode %llu: %s", (unsigned long long)e->ino,
				  why);
			continue;
		}
		e->mode = bfs_get_u32(V.val + 4);
		e->nlink = bfs_get_u32(V.val + 16);
		e->size = bfs_get_u64(V.val + 24);
		e->nblocks = bfs_get_u64(V.val + 32);
		e->parent = bfs_get_u64(V.val + 48);
		c->st.inodes++;
	}
	view_close(&V);
	return ret;
}

static int tree_dirents(struct ck *c, const struct ctree *t, struct itab *it,
			struct dlist *dl)
{
	struct view V;
	int ret;

	ret = view_open(&V, c, t, BFS_PFX_DIRENT, NULL, 0, NULL, 0);
	while (ret == 0 && (ret = view_next(&V)) > 0) {
		uint64_t dir, ino;
		const char *name;
		size_t nl;
		struct ient *d, *e;
		uint32_t type;

		ret = 0;
		if (!V.vlen || V.olen < 10)
			continue;
		dir = bfs_get_u64(V.obj);
		name = (const char *)V.obj + 8;
		nl = V.olen - 9;
		d = ifind(it, dir);
		/*
		 * Entries of a removed directory may show through from an
		 * ancestor (inode_purge clears only the branch's own keys):
		 * unreachable, since inode numbers are never reused, and not
		 * links.  A damaged directory is reported as an inode.
		 */
		if (!d || d->bad)
			continue;
		c->st.dirents++;
		if (V.vlen != BFS_DIRENT_VALUE_SIZE) {
			defer_add(c, dl, "dirent", 0, dir, name, nl, false,
				  "entry record of %zu bytes: damaged", V.vlen);
			continue;
		}
		ino = bfs_get_u64(V.val);
		type = (uint32_t)V.val[8] << 12;
		if (!S_ISDIR(d->mode)) {
			defer_add(c, dl, "dirent", 0, dir, name, nl, false,
				  "entry in inode %llu, which is not a directory",
				  (unsigned long long)dir);
			continue;
		}
		d->entries++;
		e = ifind(it, ino);
		if (!e) {
			defer_add(c, dl, "dirent", 0, dir, name, nl, false,
				  "entry names inode %llu, which does not exist",
				  (unsigned long long)ino);
			continue;
		}
		e->links++;
		if (!e->pdir)
			e->pdir = dir;
		if (e->bad)
			continue;
		if ((e->mode & S_IFMT) != type)
			defer_add(c, dl, "dirent", 0, dir, name, nl, false,
				  "entry says file type 0%o, inode %llu is 0%o",
				  type, (unsigned long long)ino,
				  e->mode & S_IFMT);
		if (S_ISDIR(e->mode)) {
			d->subdirs++;
			if (ino == SNAP_ROOT_INO || ++e->dirlinks > 1)
				defer_add(c, dl, "dirent", 0, dir, name, nl,
					  false, "%s named by more than one entry",
					  ino == SNAP_ROOT_INO ? "the root" :
					  "directory");
			else if (e->parent != dir)
				defer_add(c, dl, "inode", ino, 0, NULL, 0, false,
					  "directory's parent field says %llu, "
					  "its entry is in %llu",
					  (unsigned long long)e->parent,
					  (unsigned long long)dir);
		}
	}
	view_close(&V);
	return ret;
}

static int tree_bmaps(struct ck *c, const struct ctree *t, struct itab *it,
		      struct dlist *dl)
{
	struct view V;
	uint64_t done = 0;
	int ret;

	ret = view_open(&V, c, t, BFS_PFX_BMAP, NULL, 0, NULL, 0);
	while (ret == 0 && (ret = view_next(&V)) > 0) {
		uint64_t ino, blk;
		struct ient *e;
		struct bh *h;

		ret = 0;
		if (++done % PROGRESS_EVERY == 0)
			progress(c, t->name, done, 0);
		if (!V.vlen || V.olen != 16)
			continue;
		ino = bfs_get_u64(V.obj);
		blk = bfs_get_u64(V.obj + 8);
		e = ifind(it, ino);
		if (!e || e->bad)
			continue; /* versions of removed inodes stay for others */
		if (V.vlen != BFS_HASH_SIZE) {
			defer_add(c, dl, "bmap", ino, 0, NULL, 0, false,
				  "block %llu: block map value of %zu bytes",
				  (unsigned long long)blk, V.vlen);
			continue;
		}
		e->blocks++;
		if (!S_ISREG(e->mode))
			defer_add(c, dl, "bmap", ino, 0, NULL, 0, false,
				  "block %llu mapped on a file of type 0%o",
				  (unsigned long long)blk, e->mode & S_IFMT);
		else if (blk >= (e->size + BFS_BLOCK_SIZE - 1) / BFS_BLOCK_SIZE)
			defer_add(c, dl, "bmap", ino, 0, NULL, 0, false,
				  "block %llu mapped beyond the end of file "
				  "(size %llu)", (unsigned long long)blk,
				  (unsigned long long)e->size);
		h = bfind(&c->bt, V.val);
		if (h && (h->flags & (BH_MISSING | BH_CORRUPT))) {
			char hex[2 * BFS_HASH_SIZE + 1];

			hexstr(V.val, hex);
			h->flags |= BH_REPORTED;
			defer_add(c, dl,
				  (h->flags & BH_MISSING) ? "block-missing"
							  : "block-corrupt",
				  ino, 0, NULL, 0, false,
				  "data at offset %llu (block %llu, %s): %s",
				  (unsigned long long)(blk * BFS_BLOCK_SIZE),
				  (unsigned long long)blk, hex,
				  (h->flags & BH_MISSING)
					  ? "block missing"
					  : "block corrupt (hash mismatch or "
					    "undecodable)");
		}
	}
	view_close(&V);
	return ret;
}

/* Link counts and sizes, once every entry and block has been counted. */
static void tree_counts(struct ck *c, const struct ctree *t, struct itab *it,
			struct dlist *dl)
{
	struct ient *root = ifind(it, SNAP_ROOT_INO);

	if (!root || root->bad || !S_ISDIR(root->mode))
		defer_add(c, dl, "inode", SNAP_ROOT_INO, 0, NULL, 0, false,
			  "root directory %s", !root ? "missing" :
			  root->bad ? "damaged" : "is not a directory");
	for (size_t i = 0; i < it->n; i++) {
		struct ient *e = &it->e[i];
		uint32_t nlink = e->nlink;
		uint64_t size = e->size, nblocks = e->nblocks;
		bool dir = S_ISDIR(e->mode), bad_nlink, bad_size = false;

		if (e->bad)
			continue;
		if (dir) {
			nlink = 2 + e->subdirs;
			bad_nlink = e->nlink != nlink;
			if (e->ino != SNAP_ROOT_INO && e->links == 0) {
				defer_add(c, dl, "nlink", e->ino, 0, NULL, 0,
					  false, "directory %llu is named by no "
					  "entry (lost)",
					  (unsigned long long)e->ino);
				continue;
			}
			if (e->size != e->entries) {
				size = e->entries;
				bad_size = true;
			}
		} else {
			nlink = e->links;
			if (e->links == 0 && e->nlink != 0) {
				defer_add(c, dl, "nlink", e->ino, 0, NULL, 0,
					  false, "nlink %u but named by no entry "
					  "(lost file)", e->nlink);
				continue;
			}
			bad_nlink = e->nlink != nlink;
			if (S_ISREG(e->mode) && e->nblocks != e->blocks) {
				nblocks = e->blocks;
				bad_size = true;
			}
		}
		if (!bad_nlink && !bad_size)
			continue;
		{
			bool fixed = fix_inode(c, t, e, nlink, size, nblocks);

			if (bad_nlink)
				defer_add(c, dl, "nlink", e->ino, 0, NULL, 0,
					  fixed, "nlink %u, named by %u entr%s%s",
					  e->nlink, e->links,
					  e->links == 1 ? "y" : "ies",
					  dir ? " (directories: 2 + "
						"subdirectories)" : "");
			if (bad_size && dir)
				defer_add(c, dl, "size", e->ino, 0, NULL, 0,
					  fixed, "directory size %llu, has %llu "
					  "entries", (unsigned long long)e->size,
					  (unsigned long long)e->entries);
			else if (bad_size)
				defer_add(c, dl, "size", e->ino, 0, NULL, 0,
					  fixed, "block count %llu, maps %llu "
					  "blocks",
					  (unsigned long long)e->nblocks,
					  (unsigned long long)e->blocks);
		}
	}
}

static int check_tree(struct ck *c, const struct ctree *t)
{
	struct itab it = { 0 };
	struct dlist dl = { 0 };
	int ret;

	progress(c, t->name, 0, 0);
	ret = tree_inodes(c, t, &it, &dl);
	if (ret == 0)
		ret = tree_dirents(c, t, &it, &dl);
	if (ret == 0)
		ret = tree_bmaps(c, t, &it, &dl);
	if (ret == 0)
		tree_counts(c, t, &it, &dl);
	defer_flush(c, t, &it, &dl);
	free(dl.d);
	free(it.e);
	return ret;
}

static int pass_trees(struct ck *c)
{
	int ret = 0;

	for (size_t i = 0; i < c->nrecs && ret == 0 && !c->err; i++) {
		const struct rec *r = &c->recs[i];
		struct ctree t = { .r = r };

		if (r->deleted)
			continue;
		snprintf(t.name, sizeof(t.name), "%s", r->name);
		t.head = !r->snap;
		if (r->snap ? tree_levels(c, &t, r->parent, r->pepoch)
			    : tree_levels(c, &t, r->id, r->epoch)) {
			problem(c, "ancestry", t.name, NULL, false,
				"%s %s cannot be read: its ancestry is broken",
				r->snap ? "snapshot" : "branch", r->name);
			free(t.lv);
			continue;
		}
		ret = check_tree(c, &t);
		free(t.lv);
		/* the reset point a plain "branch reset" goes back to */
		if (ret == 0 && !r->snap && r->origin &&
		    (r->origin != r->parent || r->oepoch != r->pepoch)) {
			struct ctree o = { .r = r };

			snprintf(o.name, sizeof(o.name), "%s (reset point)",
				 r->name);
			if (tree_levels(c, &o, r->origin, r->oepoch) == 0)
				ret = check_tree(c, &o);
			free(o.lv);
		}
	}
	if (ret < 0)
		return ret;
	/* damaged blocks that no tree shows (versions awaiting the pruner) */
	for (size_t i = 0; i < c->bt.cap; i++) {
		struct bh *h = &c->bt.e[i];
		char hex[2 * BFS_HASH_SIZE + 1];

		if (!(h->flags & (BH_MISSING | BH_CORRUPT)) ||
		    (h->flags & BH_REPORTED))
			continue;
		hexstr(h->h, hex);
		problem(c, (h->flags & BH_MISSING) ? "block-missing"
						   : "block-corrupt",
			NULL, NULL, false,
			"block %s (%u references in versions no tree shows): %s",
			hex, h->seen,
			(h->flags & BH_MISSING) ? "missing" : "corrupt");
	}
	return 0;
}

/* ---- entry point -------------------------------------------------------- */

int snap_check(struct snap *s, unsigned flags, snap_check_report_fn report,
	       snap_check_progress_fn progress_fn, void *arg,
	       struct snap_check_stats *st)
{
	struct ck *c = calloc(1, sizeof(*c));
	int ret;

	if (!c)
		return -ENOMEM;
	c->s = s;
	c->kv = s->kv;
	c->flags = flags;
	c->report = report;
	c->progress = progress_fn;
	c->arg = arg;
	if ((flags & SNAP_CHECK_REPAIR) && s->readonly) {
		free(c);
		return -EROFS;
	}
	c->b = kv_batch_new();
	if (!c->b) {
		free(c);
		return -ENOMEM;
	}

	ret = pass_records(c);
	if (ret == 0 && !c->err)
		ret = pass_meta(c);
	if (ret == 0 && !c->err)
		ret = pass_blocks(c);
	if (ret == 0 && !c->err)
		ret = pass_trees(c);
	if (ret == 0 && !c->err)
		repair_flush(c);
	if (ret == 0 && !c->err && c->st.repaired)
		ret = kv_sync(c->kv);
	if (ret == 0)
		ret = c->err;
	/* problems beyond the listing limit */
	for (int i = 0; i < c->nkinds; i++)
		if (c->kinds[i].n > LIST_MAX && c->report) {
			char d[96];

			snprintf(d, sizeof(d), "%llu more problems of this kind "
				 "not listed",
				 (unsigned long long)(c->kinds[i].n - LIST_MAX));
			c->report(c->arg, c->kinds[i].kind, NULL, NULL, d);
		}
	if (ret == 0)
		ret = c->st.problems > c->st.repaired ? 1 : 0;
	if (st)
		*st = c->st;
	kv_batch_free(c->b);
	free(c->bt.e);
	free(c->recs);
	free(c->unk);
	free(c);
	return ret;
}
