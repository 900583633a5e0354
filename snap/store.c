/* SPDX-License-Identifier: MIT */
/*
 * snap/store.c - store lifecycle, branch table, trees, open-file tracking.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "snap_int.h"

static char *path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);

	if (!p)
		return NULL;
	memcpy(p, a, la);
	p[la] = '/';
	memcpy(p + la + 1, b, lb + 1);
	return p;
}

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- branch records -------------------------------------------------- */

size_t branch_encode(const struct snap_branch *br, uint8_t *v)
{
	size_t nl = strlen(br->name);

	memset(v, 0, BFS_REC_HDR_SIZE);
	v[0] = BFS_REC_VERSION;
	v[1] = (br->deleted ? BFS_BRANCH_DELETED : 0) |
	       (br->superseded ? BFS_BRANCH_RESET : 0);
	bfs_put_u32(v + 2, br->parent_id);
	bfs_put_u64(v + 6, br->parent_epoch);
	bfs_put_u64(v + 14, atomic_load(&br->epoch));
	bfs_put_u64(v + 22, br->created_ns);
	bfs_put_u16(v + 30, (uint16_t)nl);
	memcpy(v + BFS_REC_HDR_SIZE, br->name, nl);
	bfs_put_u32(v + BFS_REC_HDR_SIZE + nl, br->origin_id);
	bfs_put_u64(v + BFS_REC_HDR_SIZE + nl + 4, br->origin_epoch);
	return BFS_REC_HDR_SIZE + nl + 12;
}

struct snap_branch *branch_new(void)
{
	struct snap_branch *br = calloc(1, sizeof(*br));

	if (!br)
		return NULL;
	pthread_rwlockattr_t a;

	/* Writer-preferring: a snapshot must not wait behind a stream of
	 * overlapping writes.  Nothing takes epoch_lock shared twice in one
	 * thread, which this kind of lock would deadlock on. */
	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&br->epoch_lock, &a);
	pthread_rwlockattr_destroy(&a);
	pthread_mutex_init(&br->ns_lock, NULL);
	return br;
}

void branch_free(struct snap_branch *br)
{
	if (!br)
		return;
	pthread_rwlock_destroy(&br->epoch_lock);
	pthread_mutex_destroy(&br->ns_lock);
	free(br);
}

int rec_parse(const uint8_t *v, size_t vl, struct rec_fields *f)
{
	size_t nl;

	memset(f, 0, sizeof(*f));
	if (vl < BFS_REC_HDR_SIZE || v[0] != BFS_REC_VERSION)
		return REC_BAD_HEADER;
	nl = f->name_len = bfs_get_u16(v + 30);
	if (nl > SNAP_NAME_MAX || vl != BFS_REC_HDR_SIZE + nl + 12)
		return REC_BAD_NAME;
	f->flags = v[1];
	f->parent_id = bfs_get_u32(v + 2);
	f->parent_epoch = bfs_get_u64(v + 6);
	f->epoch = bfs_get_u64(v + 14);
	f->created_ns = bfs_get_u64(v + 22);
	memcpy(f->name, v + BFS_REC_HDR_SIZE, nl);
	f->name[nl] = 0;
	f->origin_id = bfs_get_u32(v + BFS_REC_HDR_SIZE + nl);
	f->origin_epoch = bfs_get_u64(v + BFS_REC_HDR_SIZE + nl + 4);
	return 0;
}

static int branch_decode(uint32_t id, bool snapshot, const uint8_t *v,
			 size_t vl, struct snap_branch **out)
{
	struct snap_branch *br;
	struct rec_fields f;

	if (rec_parse(v, vl, &f) != 0) {
		kv_log("%s record %u is damaged",
		       snapshot ? "snapshot" : "branch", id);
		return -EIO;
	}
	br = branch_new();
	if (!br)
		return -ENOMEM;
	br->id = id;
	br->is_snapshot = snapshot;
	br->deleted = f.flags & BFS_BRANCH_DELETED;
	br->superseded = br->deleted && (f.flags & BFS_BRANCH_RESET);
	br->parent_id = f.parent_id;
	br->parent_epoch = f.parent_epoch;
	atomic_store(&br->epoch, f.epoch);
	br->created_ns = f.created_ns;
	memcpy(br->name, f.name, f.name_len + 1);
	br->origin_id = f.origin_id;
	br->origin_epoch = f.origin_epoch;
	*out = br;
	return 0;
}

void branch_key(uint8_t *k, const struct snap_branch *br)
{
	k[0] = br->is_snapshot ? BFS_PFX_SNAPSHOT : BFS_PFX_BRANCH;
	bfs_put_u32(k + 1, br->id);
}

struct snap_branch *branch_by_id(struct snap *s, uint32_t id)
{
	for (size_t i = 0; i < s->nbranches; i++)
		if (s->branches[i]->id == id)
			return s->branches[i];
	return NULL;
}

/* ---- trees ----------------------------------------------------------- */

/* Does branch @b have any metadata key (any object, any epoch)? */
static bool branch_has_keys(struct snap *s, uint32_t b)
{
	static const char pfx[] = { BFS_PFX_INODE, BFS_PFX_DIRENT, BFS_PFX_BMAP,
				    BFS_PFX_XATTR };

	for (size_t i = 0; i < sizeof(pfx); i++) {
		uint8_t lo[5], hi[5];
		struct kv_iter *it;
		bool any;

		lo[0] = hi[0] = (uint8_t)pfx[i];
		bfs_put_u32(lo + 1, b);
		bfs_put_u32(hi + 1, b + 1);
		it = kv_iter_new(s->kv, KV_CF_META, lo, 5, hi, 5);
		kv_iter_seek_first(it);
		/* on a read error, keep the level (never wrong, only slower) */
		any = kv_iter_valid(it) || kv_iter_status(it) != 0;
		kv_iter_free(it);
		if (any)
			return true;
	}
	return false;
}

/* Build the tree of branch or snapshot @br; called under tree_lock (W). */
int tree_build(struct snap *s, struct snap_branch *br,
		      struct snap_tree **out)
{
	struct snap_tree *t = calloc(1, sizeof(*t));
	struct snap_branch *cur;
	int n = 0, cap = 8;

	if (!t)
		return -ENOMEM;
	t->s = s;
	t->id = br->id;
	t->readonly = br->is_snapshot;
	t->br = br->is_snapshot ? NULL : br;
	t->lv = malloc(sizeof(*t->lv) * (size_t)cap);
	if (!t->lv)
		goto out_nomem;
	if (br->is_snapshot) {
		t->lv[n].b = br->parent_id;
		t->lv[n++].e = br->parent_epoch;
		cur = branch_by_id(s, br->parent_id);
	} else {
		t->lv[n].b = br->id;
		t->lv[n++].e = 0; /* live: read br->epoch */
		cur = br;
	}
	while (cur && cur->parent_id) {
		struct snap_branch *p = branch_by_id(s, cur->parent_id);

		if (!p) {
			kv_log("branch %u: parent %u missing", cur->id,
			       cur->parent_id);
			free(t->lv);
			free(t);
			return -EIO;
		}
		if (n == cap) {
			struct snap_level *nl;

			cap *= 2;
			nl = realloc(t->lv, sizeof(*t->lv) * (size_t)cap);
			if (!nl)
				goto out_nomem;
			t->lv = nl;
		}
		t->lv[n].b = p->id;
		t->lv[n++].e = cur->parent_epoch;
		cur = p;
	}
	t->base = t->lv[0].b;
	/*
	 * Drop levels whose branch has no keys at all: they can never get
	 * any at or below the epoch this tree reads them at (writes go to
	 * later epochs), so a chain of untouched branches costs nothing.
	 * A branch's own level 0 stays: it is where its writes go.
	 */
	{
		int k = 0;

		for (int i = 0; i < n; i++)
			if ((i == 0 && !br->is_snapshot) ||
			    branch_has_keys(s, t->lv[i].b))
				t->lv[k++] = t->lv[i];
		if (k == 0) /* an empty snapshot: keep one level to read */
			k = 1;
		n = k;
	}
	t->nlevels = n;
	atomic_store(&t->refs, 1); /* the table's reference */
	*out = t;
	return 0;
out_nomem:
	free(t->lv);
	free(t);
	return -ENOMEM;
}

static void tree_free(struct snap_tree *t)
{
	upcache_free(atomic_load(&t->uc));
	bmcache_free(atomic_load(&t->bc));
	free(t->lv);
	free(t);
}

int snap_tree_get(struct snap *s, uint32_t id, struct snap_tree **out)
{
	int ret = -ENOENT;

	pthread_rwlock_rdlock(&s->tree_lock);
	for (struct snap_tree *t = s->trees; t; t = t->next) {
		if (t->id == id) {
			atomic_fetch_add(&t->refs, 1);
			*out = t;
			ret = 0;
			break;
		}
	}
	pthread_rwlock_unlock(&s->tree_lock);
	return ret;
}

void snap_tree_put(struct snap_tree *t)
{
	if (t && atomic_fetch_sub(&t->refs, 1) == 1) {
		struct snap_branch *pin = t->pin;
		struct snap *s = t->s;

		tree_free(t);
		if (pin) { /* the last holder of a deleted tree let go */
			atomic_store(&pin->prune_needed, true);
			atomic_fetch_sub(&pin->pins, 1);
			prune_schedule(s);
		}
	}
}

uint32_t snap_tree_id(const struct snap_tree *t)
{
	return t->id;
}

bool snap_tree_readonly(const struct snap_tree *t)
{
	return t->readonly || t->s->readonly;
}

int snap_branch_find(struct snap *s, const char *name, uint32_t *id)
{
	int ret = -ENOENT;

	pthread_rwlock_rdlock(&s->tree_lock);
	for (size_t i = 0; i < s->nbranches; i++) {
		struct snap_branch *br = s->branches[i];

		if (!br->is_snapshot && !br->deleted &&
		    strcmp(br->name, name) == 0) {
			*id = br->id;
			ret = 0;
			break;
		}
	}
	pthread_rwlock_unlock(&s->tree_lock);
	return ret;
}

static int info_cmp(const void *a, const void *b)
{
	return strcmp(((const struct snap_branch_info *)a)->name,
		      ((const struct snap_branch_info *)b)->name);
}

int snap_branch_list(struct snap *s, bool snapshots,
		     struct snap_branch_info **out, size_t *n)
{
	struct snap_branch_info *v;
	size_t k = 0;

	pthread_rwlock_rdlock(&s->tree_lock);
	v = calloc(s->nbranches ? s->nbranches : 1, sizeof(*v));
	if (!v) {
		pthread_rwlock_unlock(&s->tree_lock);
		return -ENOMEM;
	}
	for (size_t i = 0; i < s->nbranches; i++) {
		struct snap_branch *br = s->branches[i];

		if (br->is_snapshot != snapshots || br->deleted)
			continue;
		v[k].id = br->id;
		/* users know a branch by where it was made from */
		v[k].parent_id = br->origin_id;
		v[k].parent_epoch = br->origin_epoch;
		v[k].base_id = br->parent_id;
		v[k].base_epoch = br->parent_epoch;
		v[k].epoch = br->is_snapshot ? 0 : atomic_load(&br->epoch);
		v[k].created_ns = br->created_ns;
		v[k].is_snapshot = br->is_snapshot;
		snprintf(v[k].name, sizeof(v[k].name), "%s", br->name);
		k++;
	}
	pthread_rwlock_unlock(&s->tree_lock);
	qsort(v, k, sizeof(*v), info_cmp);
	*out = v;
	*n = k;
	return 0;
}

/* ---- open files ------------------------------------------------------ */

static unsigned open_slot(uint32_t b, uint64_t ino)
{
	return (unsigned)((ino * 31 + b) & 255);
}

void snap_inode_open(struct snap_tree *t, uint64_t ino)
{
	struct snap *s = t->s;
	uint32_t b = t->lv[0].b;
	unsigned h = open_slot(b, ino);
	struct snap_open_ent *e;

	if (t->readonly)
		return;
	pthread_mutex_lock(&s->open_lock);
	for (e = s->open[h]; e; e = e->next)
		if (e->b == b && e->ino == ino)
			break;
	if (!e) {
		e = calloc(1, sizeof(*e));
		if (!e) {
			/* Without the entry an unlinked open file is purged at
			 * unlink time; reads then fail with ENOENT, nothing
			 * wrong is returned. */
			pthread_mutex_unlock(&s->open_lock);
			kv_log("out of memory tracking open inode %llu",
			       (unsigned long long)ino);
			return;
		}
		e->b = b;
		e->ino = ino;
		e->next = s->open[h];
		s->open[h] = e;
	}
	e->count++;
	pthread_mutex_unlock(&s->open_lock);
}

bool snap_is_open(struct snap *s, uint32_t b, uint64_t ino)
{
	bool open = false;

	pthread_mutex_lock(&s->open_lock);
	for (struct snap_open_ent *e = s->open[open_slot(b, ino)]; e;
	     e = e->next)
		if (e->b == b && e->ino == ino)
			open = true;
	pthread_mutex_unlock(&s->open_lock);
	return open;
}

size_t snap_open_count(struct snap *s, uint32_t id)
{
	size_t n = 0;

	pthread_mutex_lock(&s->open_lock);
	for (int h = 0; h < 256; h++)
		for (struct snap_open_ent *e = s->open[h]; e; e = e->next)
			if (!id || e->b == id)
				n++;
	pthread_mutex_unlock(&s->open_lock);
	return n;
}

/* Purge inode @ino of tree @t if it has no links left (and is not open). */
static int purge_if_orphan(struct snap_tree *t, uint64_t ino)
{
	struct snap *s = t->s;
	struct snap_inode in;
	struct op op;
	struct kv_batch *b;
	uint8_t ok[13];
	int held[1], ret;

	ret = op_begin(&op, t, true);
	if (ret < 0) /* -ENOENT: the branch is gone, and the inode with it */
		return ret == -ENOENT ? 0 : ret;
	stripes_lock(s, op_branch(&op), &ino, 1, held);
	ret = inode_get(&op, ino, &in);
	if (ret < 0 || in.nlink > 0 || snap_is_open(s, op_branch(&op), ino))
		goto out_unlock;
	b = kv_batch_new();
	ret = inode_purge(&op, b, &in);
	orphan_key(ok, op_branch(&op), ino);
	kv_batch_delete(b, KV_CF_SYS, ok, sizeof(ok));
	if (ret == 0)
		ret = kv_commit(s->kv, b);
	kv_batch_free(b);
	inode_release(&in);
out_unlock:
	stripes_unlock(s, held, 1);
	op_end(&op);
	return ret == -ENOENT ? 0 : ret;
}

void snap_inode_release(struct snap_tree *t, uint64_t ino)
{
	struct snap *s = t->s;
	uint32_t b = t->lv[0].b;
	struct snap_open_ent **pp, *e;
	bool last = false;

	if (t->readonly)
		return;
	pthread_mutex_lock(&s->open_lock);
	for (pp = &s->open[open_slot(b, ino)]; (e = *pp); pp = &e->next) {
		if (e->b == b && e->ino == ino) {
			if (--e->count == 0) {
				*pp = e->next;
				free(e);
				last = true;
			}
			break;
		}
	}
	pthread_mutex_unlock(&s->open_lock);
	if (last) {
		int ret = purge_if_orphan(t, ino);

		if (ret < 0)
			kv_log("purging unlinked inode %llu: %s",
			       (unsigned long long)ino, strerror(-ret));
	}
}

/* ---- the disk-full reserve (snap.h) ---------------------------------- */

bool snap_reserve_release(struct snap *s, const char *why)
{
	char *p = path_join(s->root, "reserve");
	bool had;

	if (!p)
		return false;
	had = unlink(p) == 0;
	if (had)
		kv_log("released the %llu MiB reserve %s/reserve: %s",
		       SNAP_RESERVE_BYTES >> 20, s->path, why);
	free(p);
	return had;
}

static int disk_avail(struct snap *s, uint64_t *avail)
{
	struct statvfs sv;

	if (statvfs(s->root, &sv) < 0)
		return -errno;
	*avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	return 0;
}

bool snap_disk_below(struct snap *s, uint64_t bytes)
{
	uint64_t avail = 0;

	return disk_avail(s, &avail) == 0 && avail < bytes;
}

bool snap_disk_has(struct snap *s, uint64_t bytes)
{
	uint64_t avail = 0;

	return disk_avail(s, &avail) == 0 && avail >= bytes;
}

void snap_reserve_take(struct snap *s)
{
	char *p = path_join(s->root, "reserve");
	struct stat st;
	int fd, err;

	if (!p)
		return;
	/* Only with room to spare: never be what fills the disk. */
	if (stat(p, &st) == 0 || snap_disk_below(s, SNAP_DISK_LOW))
		goto out;
	fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		goto out;
	err = posix_fallocate(fd, 0, (off_t)SNAP_RESERVE_BYTES);
	if (err == 0 && fsync(fd) < 0)
		err = errno;
	close(fd);
	if (err) {
		kv_log("%s/reserve: %s", s->path, strerror(err));
		unlink(p);
	}
out:
	free(p);
}

/* ---- store lifecycle ------------------------------------------------- */

int snap_open_room(const char *path, uint64_t *need, uint64_t *avail)
{
	char *dbp = path_join(path, "db");
	int ret;

	if (!dbp)
		return -ENOMEM;
	ret = kv_open_room(dbp, need, avail);
	free(dbp);
	return ret;
}

/*
 * Opening for writing needs the room kv_open_room() names.  On a disk too
 * full for it, a command that gives space back (@use_reserve) gives up the
 * disk-full reserve: it exists for this (a branch delete on a full disk
 * begins with an open).  Still too full, or another command: -ENOSPC,
 * rather than RocksDB aborting the process.  1: such a command opens on a
 * disk too full for a compaction besides (its output is preallocated, up
 * to 1.1 x the 64 MiB target file size): open without automatic ones.
 */
static int open_room(struct snap *s, bool use_reserve)
{
	uint64_t need, avail, reserve = 0;
	int ret = snap_open_room(s->root, &need, &avail);

	if (ret == 0 && avail < need && use_reserve) {
		char *rp = path_join(s->root, "reserve");
		struct stat st;

		if (rp && stat(rp, &st) == 0)
			reserve = (uint64_t)st.st_blocks * 512;
		free(rp);
		if (avail + reserve >= need &&
		    snap_reserve_release(s, "opening the store needs room on "
					    "a full disk"))
			ret = snap_open_room(s->root, &need, &avail);
	}
	if (ret < 0)
		return 0; /* cannot tell: let RocksDB try */
	if (avail >= need)
		return use_reserve && avail < need + (72ull << 20);
	kv_log("store %s: opening it needs about %llu MiB free on its disk, "
	       "only %llu MiB are", s->path,
	       (unsigned long long)((need + (1 << 20) - 1) >> 20),
	       (unsigned long long)(avail >> 20));
	return -ENOSPC;
}

static int lock_store(const char *path, bool shared, int *fdp)
{
	char *lp = path_join(path, "lock");
	int fd;

	if (!lp)
		return -ENOMEM;
	fd = open(lp, (shared ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	free(lp);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : -errno;
	if (flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
		int err = errno;

		close(fd);
		return err == EWOULDBLOCK ? -EBUSY : -err;
	}
	*fdp = fd;
	return 0;
}

static int dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	int empty = 1;

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			empty = 0;
			break;
		}
	}
	closedir(d);
	return empty;
}

static int fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* The directory that holds @path's entry, malloc()ed ("store/" names the
 * same entry as "store"); NULL if out of memory. */
static char *parent_dir(const char *path)
{
	char *p = strdup(path), *slash;

	if (!p)
		return NULL;
	while ((slash = strrchr(p, '/')) && slash[1] == '\0' && slash != p)
		*slash = '\0';
	slash = strrchr(p, '/');
	if (!slash) {
		free(p);
		return strdup(".");
	}
	if (slash == p)
		slash[1] = '\0'; /* "/x": the root */
	else
		*slash = '\0';
	return p;
}

/* fsync the directory that holds @path's entry */
static int fsync_parent(const char *path)
{
	char *p = parent_dir(path);
	int ret;

	if (!p)
		return -ENOMEM;
	ret = fsync_dir(p);
	free(p);
	return ret;
}

/* RocksDB aborts the process on a disk without room for the files of a
 * new database (kv_create_room): -ENOSPC first, with nothing made. */
static int init_room(const char *path)
{
	uint64_t need, avail;
	struct stat st;
	char *parent = NULL;
	int ret;

	/* a store to be made: its parent's filesystem */
	if (stat(path, &st) < 0 && !(parent = parent_dir(path)))
		return -ENOMEM;
	ret = kv_create_room(parent ? parent : path, &need, &avail);
	free(parent);
	if (ret < 0 || avail >= need)
		return 0; /* room, or cannot tell: let RocksDB try */
	kv_log("a new store needs about %llu MiB free on its disk, only %llu "
	       "MiB are", (unsigned long long)((need + (1 << 20) - 1) >> 20),
	       (unsigned long long)(avail >> 20));
	return -ENOSPC;
}

int snap_store_init(const char *path, uint32_t uid, uint32_t gid)
{
	struct snap_branch main_br = { .id = SNAP_MAIN_ID, .epoch = 1 };
	struct snap_tree t = { 0 };
	struct snap_level lv = { SNAP_MAIN_ID, 1 };
	struct snap_inode root = { 0 };
	struct snap fake = { 0 };
	struct kv *kv = NULL;
	struct kv_batch *b = NULL;
	struct stat st;
	uint8_t v[BFS_REC_HDR_SIZE + SNAP_NAME_MAX + 12], k[8];
	char *dbp = NULL, *lp = NULL, *fp = NULL;
	bool made_dir = false;
	int fd = -1, lockfd = -1, ret;
	FILE *f;
	struct op op;

	if (stat(path, &st) == 0) {
		if (!S_ISDIR(st.st_mode))
			return -ENOTDIR;
		ret = dir_is_empty(path);
		if (ret < 0)
			return ret;
		if (!ret)
			return -ENOTEMPTY;
	}
	ret = init_room(path);
	if (ret < 0)
		return ret;
	if (stat(path, &st) < 0) {
		if (errno != ENOENT)
			return -errno;
		if (mkdir(path, 0700) < 0)
			return -errno;
		made_dir = true;
	}

	ret = -ENOMEM;
	dbp = path_join(path, "db");
	lp = path_join(path, "lock");
	fp = path_join(path, "FORMAT");
	if (!dbp || !lp || !fp)
		goto out;
	fd = open(lp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	lockfd = fd;
	if (flock(lockfd, LOCK_EX | LOCK_NB) < 0) {
		ret = -EBUSY;
		goto out;
	}
	ret = kv_open(dbp, KV_CREATE, &kv);
	if (ret < 0)
		goto out;

	b = kv_batch_new();
	bfs_put_u64(k, BFS_FIRST_INO);
	kv_batch_put(b, KV_CF_SYS, BFS_KEY_NEXT_INO, strlen(BFS_KEY_NEXT_INO),
		     k, 8);
	bfs_put_u32(k, SNAP_MAIN_ID + 1);
	kv_batch_put(b, KV_CF_SYS, BFS_KEY_NEXT_ID, strlen(BFS_KEY_NEXT_ID), k,
		     4);
	main_br.created_ns = now_ns();
	snprintf(main_br.name, sizeof(main_br.name), "main");
	{
		uint8_t bk[5];

		branch_key(bk, &main_br);
		kv_batch_put(b, KV_CF_SYS, bk, 5, v, branch_encode(&main_br, v));
	}
	/* The root directory of main, written through the normal codec. */
	fake.kv = kv;
	t.s = &fake;
	t.id = SNAP_MAIN_ID;
	t.nlevels = 1;
	t.lv = &lv;
	op.s = &fake;
	op.t = &t;
	op.kv = kv;
	op.n = 1;
	op.lv = &lv;
	op.e0 = 1;
	op.write = false;
	root.ino = SNAP_ROOT_INO;
	root.mode = S_IFDIR | 0755;
	root.uid = uid;
	root.gid = gid;
	root.nlink = 2;
	root.parent = SNAP_ROOT_INO;
	inode_touch(&root.mtime);
	root.atime = root.ctime = root.mtime;
	inode_put(&op, b, &root);
	ret = kv_commit(kv, b);
	if (ret == 0)
		ret = kv_sync(kv);
	if (ret < 0)
		goto out;

	f = fopen(fp, "we");
	if (!f) {
		ret = -errno;
		goto out;
	}
	fprintf(f, "branchfs store format %u\n", BFS_FORMAT_VERSION);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		ret = -errno;
		fclose(f);
		goto out;
	}
	if (fclose(f) != 0) {
		ret = -EIO;
		goto out;
	}
	/* RocksDB syncs what is inside db/, but not db/'s own entry: the
	 * entries of lock, FORMAT and db/ (and of the store, if we made it)
	 * are durable only once their directory is synced. */
	ret = fsync_dir(path);
	if (ret == 0 && made_dir)
		ret = fsync_parent(path);
	if (ret < 0)
		goto out;
	ret = 0;
out:
	kv_batch_free(b);
	kv_close(kv);
	if (lockfd >= 0)
		close(lockfd);
	if (ret < 0 && made_dir) {
		/* Leave nothing half-made behind in a directory we created. */
		if (dbp) {
			DIR *d;
			struct dirent *de;

			d = opendir(dbp);
			while (d && (de = readdir(d))) {
				char *q = path_join(dbp, de->d_name);

				if (q && de->d_name[0] != '.')
					unlink(q);
				free(q);
			}
			if (d)
				closedir(d);
			rmdir(dbp);
		}
		if (lp)
			unlink(lp);
		if (fp)
			unlink(fp);
		rmdir(path);
	}
	free(dbp);
	free(lp);
	free(fp);
	return ret;
}

static int load_u64(struct kv *kv, const char *key, uint64_t *out)
{
	void *v;
	size_t vl;
	int ret = kv_get(kv, KV_CF_SYS, key, strlen(key), &v, &vl);

	if (ret < 0)
		return ret;
	if (vl == 8)
		*out = bfs_get_u64(v);
	else if (vl == 4)
		*out = bfs_get_u32(v);
	else
		ret = -EIO;
	free(v);
	return ret;
}

static int load_branches(struct snap *s)
{
	static const char pfx[] = { BFS_PFX_BRANCH, BFS_PFX_SNAPSHOT };
	int ret = 0;

	for (int p = 0; p < 2 && ret == 0; p++) {
		uint8_t lo[1] = { (uint8_t)pfx[p] }, hi[1] = { (uint8_t)(pfx[p] + 1) };
		struct kv_iter *it = kv_iter_new(s->kv, KV_CF_SYS, lo, 1, hi, 1);

		if (!it)
			return -ENOMEM;
		for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
			size_t kl, vl;
			const uint8_t *k = kv_iter_key(it, &kl);
			const uint8_t *v = kv_iter_value(it, &vl);
			struct snap_branch *br, **nb;

			if (kl != 5)
				continue;
			ret = branch_decode(bfs_get_u32(k + 1), p == 1, v, vl, &br);
			if (ret == -EIO && s->checking) {
				ret = 0; /* snap_check reports it */
				continue;
			}
			if (ret < 0)
				break;
			nb = realloc(s->branches,
				     sizeof(*nb) * (s->nbranches + 1));
			if (!nb) {
				branch_free(br);
				ret = -ENOMEM;
				break;
			}
			s->branches = nb;
			s->branches[s->nbranches++] = br;
		}
		if (ret == 0)
			ret = kv_iter_status(it);
		kv_iter_free(it);
	}
	for (size_t i = 0; ret == 0 && i < s->nbranches; i++)
		if (s->branches[i]->deleted)
			s->branches[i]->prune_needed = true;
	if (ret == 0) {
		/* prunes interrupted by a crash resume */
		uint8_t lo[1] = { BFS_PFX_PRUNE }, hi[1] = { BFS_PFX_PRUNE + 1 };
		struct kv_iter *it = kv_iter_new(s->kv, KV_CF_SYS, lo, 1, hi, 1);

		for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
			size_t kl;
			const uint8_t *k = kv_iter_key(it, &kl);
			struct snap_branch *br;

			if (kl == 5 && (br = branch_by_id(s, bfs_get_u32(k + 1))))
				br->prune_needed = true;
		}
		ret = kv_iter_status(it);
		kv_iter_free(it);
	}
	if (ret == 0 && !branch_by_id(s, SNAP_MAIN_ID))
		kv_log("store has no branch main");
	for (size_t i = 0; ret == 0 && i < s->nbranches; i++) {
		struct snap_tree *t;

		if (s->branches[i]->deleted)
			continue;
		ret = tree_build(s, s->branches[i], &t);
		if (ret == -EIO && s->checking) {
			ret = 0; /* broken ancestry: snap_check reports it */
			continue;
		}
		if (ret == 0) {
			t->next = s->trees;
			s->trees = t;
		}
	}
	return ret;
}

/* Purge inodes unlinked while open when the store was last used. */
static int purge_orphans(struct snap *s)
{
	uint8_t lo[1] = { BFS_PFX_ORPHAN }, hi[1] = { BFS_PFX_ORPHAN + 1 };
	struct kv_iter *it = kv_iter_new(s->kv, KV_CF_SYS, lo, 1, hi, 1);
	struct { uint32_t b; uint64_t ino; } *v = NULL;
	size_t n = 0;
	int ret;

	if (!it)
		return -ENOMEM;
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl;
		const uint8_t *k = kv_iter_key(it, &kl);
		void *nv;

		if (kl != 13)
			continue;
		nv = realloc(v, sizeof(*v) * (n + 1));
		if (!nv)
			break;
		v = nv;
		v[n].b = bfs_get_u32(k + 1);
		v[n].ino = bfs_get_u64(k + 5);
		n++;
	}
	ret = kv_iter_status(it);
	kv_iter_free(it);
	for (size_t i = 0; ret == 0 && i < n; i++) {
		struct snap_tree *t;

		if (snap_tree_get(s, v[i].b, &t) < 0) {
			uint8_t k[13];
			struct kv_batch *b = kv_batch_new();

			orphan_key(k, v[i].b, v[i].ino);
			kv_batch_delete(b, KV_CF_SYS, k, sizeof(k));
			ret = kv_commit(s->kv, b);
			kv_batch_free(b);
			continue;
		}
		ret = purge_if_orphan(t, v[i].ino);
		if (ret == 0) {
			/* purge_if_orphan leaves the record if the inode
			 * has links again (it was renamed back): drop it. */
			uint8_t k[13];
			struct kv_batch *b = kv_batch_new();

			orphan_key(k, v[i].b, v[i].ino);
			kv_batch_delete(b, KV_CF_SYS, k, sizeof(k));
			ret = kv_commit(s->kv, b);
			kv_batch_free(b);
		}
		snap_tree_put(t);
	}
	if (n)
		kv_log("purged %zu orphaned inode(s)", n);
	free(v);
	return ret;
}

/* Free unreferenced blocks every second, so that space comes back while
 * the store is mounted (WAL pages rewritten by postgres free a block each). */
static void *gc_main(void *arg)
{
	struct snap *s = arg;
	unsigned tick = 0, retry_prune = 0;
	int last_err = 0;

	pthread_mutex_lock(&s->gc_lock);
	while (!s->gc_stop) {
		struct timespec ts;
		bool prune;
		int ret;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		if (!s->prune_pending)
			pthread_cond_timedwait(&s->gc_cond, &s->gc_lock, &ts);
		if (s->gc_stop)
			break;
		tick++;
		/* a prune that failed (a full disk) is retried every 10 s */
		prune = s->prune_pending || (retry_prune && tick >= retry_prune);
		s->prune_pending = false;
		pthread_mutex_unlock(&s->gc_lock);
		if (prune)
			retry_prune = snap_prune(s) < 0 ? tick + 10 : 0;
		ret = kv_gc_if_queued(s->kv, 16384, NULL);
		/* log a failure once, not every second while the disk is full */
		if (ret < 0 && ret != last_err)
			kv_log("background gc: %s", strerror(-ret));
		else if (ret == 0 && last_err)
			kv_log("background gc: working again");
		last_err = ret < 0 ? ret : 0;
		pthread_mutex_lock(&s->gc_lock);
	}
	pthread_mutex_unlock(&s->gc_lock);
	return NULL;
}

/*
 * Set s->root (see struct snap): "/proc/self/fd/N" for an open descriptor
 * of the store directory, once a stat() through it shows that very
 * directory; else (no /proc) the path itself.
 */
static int open_root(struct snap *s)
{
	struct stat a, b;
	char buf[64];

	s->root = s->path;
	s->dir_fd = open(s->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (s->dir_fd < 0)
		return errno == ENOTDIR ? -EINVAL : -errno;
	snprintf(buf, sizeof(buf), "/proc/self/fd/%d", s->dir_fd);
	if (fstat(s->dir_fd, &a) == 0 && stat(buf, &b) == 0 &&
	    a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
		char *r = strdup(buf);

		if (!r)
			return -ENOMEM;
		s->root = r;
	}
	return 0;
}

int snap_open(const char *path, unsigned flags, struct snap **out)
{
	struct snap *s = calloc(1, sizeof(*s));
	struct stat st;
	char *dbp = NULL;
	int ret;

	if (!s)
		return -ENOMEM;
	s->lock_fd = -1;
	s->dir_fd = -1;
	s->readonly = flags & SNAP_OPEN_READONLY;
	s->checking = flags & SNAP_OPEN_CHECK;
	pthread_rwlock_init(&s->tree_lock, NULL);
	pthread_mutex_init(&s->ino_lock, NULL);
	pthread_mutex_init(&s->open_lock, NULL);
	pthread_mutex_init(&s->gc_lock, NULL);
	pthread_mutex_init(&s->prune_lock, NULL);
	pthread_cond_init(&s->gc_cond, NULL);
	for (unsigned i = 0; i < SNAP_STRIPES; i++)
		pthread_mutex_init(&s->stripes[i], NULL);

	ret = -ENOMEM;
	s->path = realpath(path, NULL);
	if (!s->path) {
		ret = -errno;
		goto out_free;
	}
	ret = open_root(s);
	if (ret < 0)
		goto out_free;
	ret = -ENOMEM;
	dbp = path_join(s->root, "db");
	if (!dbp)
		goto out_free;
	if (stat(dbp, &st) < 0 || !S_ISDIR(st.st_mode)) {
		ret = -EINVAL; /* not a store */
		goto out_free;
	}
	if (!s->readonly || (flags & SNAP_OPEN_LOCK_SHARED)) {
		ret = lock_store(s->root, s->readonly, &s->lock_fd);
		if (ret == -ENOENT)
			ret = -EINVAL;
		if (ret < 0)
			goto out_free;
	}
	if (!s->readonly) {
		ret = open_room(s, flags & SNAP_OPEN_USE_RESERVE);
		if (ret < 0)
			goto out_free;
	}
	ret = kv_open_named(dbp, s->path,
			    s->readonly ? KV_READONLY :
			    ret ? KV_NO_AUTO_COMPACT : 0,
			    &s->kv);
	if (ret < 0)
		goto out_free;
	ret = load_u64(s->kv, BFS_KEY_NEXT_INO, &s->next_ino);
	if (ret < 0 && s->checking)
		ret = 0; /* snap_check reports it */
	if (ret < 0) {
		kv_log("store %s: cannot read the inode counter", s->path);
		goto out_free;
	}
	s->ino_reserved = s->next_ino;
	{
		uint64_t id;

		id = 0;
		ret = load_u64(s->kv, BFS_KEY_NEXT_ID, &id);
		if (ret < 0 && s->checking)
			ret = 0;
		if (ret < 0) {
			kv_log("store %s: cannot read the id counter", s->path);
			goto out_free;
		}
		s->next_id = (uint32_t)id;
	}
	ret = load_branches(s);
	if (ret < 0)
		goto out_free;
	if (!s->readonly && !s->checking) {
		ret = purge_orphans(s);
		if (ret < 0)
			goto out_free;
	}
	if (!s->readonly && !s->checking)
		snap_reserve_take(s);
	if (!s->readonly && !s->checking &&
	    !(flags & SNAP_OPEN_NO_BACKGROUND)) {
		ret = pthread_create(&s->gc_thread, NULL, gc_main, s);
		if (ret) {
			ret = -ret;
			goto out_free;
		}
		s->gc_running = true;
		prune_schedule(s); /* resume deletions a crash interrupted */
	}
	free(dbp);
	*out = s;
	return 0;
out_free:
	free(dbp);
	snap_close(s);
	return ret;
}

void snap_close(struct snap *s)
{
	if (!s)
		return;
	if (s->gc_running) {
		pthread_mutex_lock(&s->gc_lock);
		s->gc_stop = true;
		pthread_cond_signal(&s->gc_cond);
		pthread_mutex_unlock(&s->gc_lock);
		pthread_join(s->gc_thread, NULL);
	}
	if (s->kv && !s->readonly && !s->checking && s->branches) {
		snap_prune(s);
		kv_gc(s->kv, 0, NULL);
		kv_sync(s->kv);
	}
	kv_close(s->kv);
	while (s->trees) {
		struct snap_tree *t = s->trees;

		s->trees = t->next;
		snap_tree_put(t);
	}
	for (size_t i = 0; i < s->nbranches; i++)
		branch_free(s->branches[i]);
	free(s->branches);
	for (int h = 0; h < 256; h++) {
		while (s->open[h]) {
			struct snap_open_ent *e = s->open[h];

			s->open[h] = e->next;
			free(e);
		}
	}
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	if (s->dir_fd >= 0)
		close(s->dir_fd);
	if (s->root != s->path)
		free(s->root);
	for (unsigned i = 0; i < SNAP_STRIPES; i++)
		pthread_mutex_destroy(&s->stripes[i]);
	pthread_rwlock_destroy(&s->tree_lock);
	pthread_mutex_destroy(&s->ino_lock);
	pthread_mutex_destroy(&s->open_lock);
	pthread_mutex_destroy(&s->gc_lock);
	pthread_mutex_destroy(&s->prune_lock);
	pthread_cond_destroy(&s->gc_cond);
	free(s->path);
	free(s);
}

void snap_set_killpriv(struct snap *s, bool on,
		       void (*killed)(void *arg, uint32_t tree, uint64_t ino),
		       void *arg)
{
	s->killpriv = on;
	s->killed = killed;
	s->killed_arg = arg;
}

int snap_sync(struct snap *s)
{
	return kv_sync(s->kv);
}

int snap_sync_tree(struct snap_tree *t)
{
	struct snap_branch *br = t->br;

	/* Snapshots (read-only, rarely fsynced): everything.  A branch with
	 * a write op in flight: everything too, as that op's commit may
	 * already be visible (to a reader who then fsyncs) before op_end
	 * records it.  Otherwise up to its newest recorded change. */
	if (!br || atomic_load(&br->writers) > 0)
		return kv_sync(t->s->kv);
	return kv_sync_to(t->s->kv, atomic_load(&br->sync_need));
}

int snap_gc(struct snap *s, size_t max)
{
	if (s->readonly)
		return 0;
	return kv_gc(s->kv, max, NULL);
}

int snap_compact(struct snap *s)
{
	return kv_compact(s->kv);
}

int snap_stats(struct snap *s, struct snap_stats *st)
{
	struct kv_stats ks;
	int ret = kv_stats(s->kv, &ks);

	if (ret < 0)
		return ret;
	memset(st, 0, sizeof(*st));
	st->logical_bytes = ks.logical_bytes;
	st->stored_bytes = ks.stored_bytes;
	st->blocks = ks.blocks;
	st->refs = ks.refs;
	st->gc_pending = ks.gc_pending;
	st->db_bytes = ks.sst_bytes + ks.wal_bytes;
	pthread_rwlock_rdlock(&s->tree_lock);
	for (size_t i = 0; i < s->nbranches; i++) {
		if (s->branches[i]->deleted)
			continue;
		if (s->branches[i]->is_snapshot)
			st->snapshots++;
		else
			st->branches++;
	}
	pthread_rwlock_unlock(&s->tree_lock);
	return 0;
}

int snap_statfs(struct snap *s, struct snap_statfs *st)
{
	struct statvfs v;

	if (statvfs(s->root, &v) < 0)
		return -errno;
	st->bsize = v.f_frsize;
	st->blocks = v.f_blocks;
	st->bfree = v.f_bfree;
	st->bavail = v.f_bavail;
	pthread_mutex_lock(&s->ino_lock);
	st->files = s->next_ino;
	pthread_mutex_unlock(&s->ino_lock);
	st->ffree = (1ull << SNAP_INO_BITS) - st->files;
	return 0;
}
