/* SPDX-License-Identifier: MIT */
/*
 * snap/ns.c - the namespace: lookup, create, link, unlink, rename, readdir.
 *
 * Every operation here runs under the branch's ns_lock (dirents change only
 * here) plus the stripe locks of every inode whose record it rewrites, and
 * commits one write batch.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "snap_int.h"

int name_check(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || strchr(name, '/'))
		return -EINVAL;
	if (n > 255)
		return -ENAMETOOLONG;
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	return 0;
}

static size_t dirent_obj(uint8_t *obj, uint64_t dir, const char *name)
{
	size_t nl = strlen(name);

	bfs_put_u64(obj, dir);
	memcpy(obj + 8, name, nl);
	obj[8 + nl] = 0;
	return 8 + nl + 1;
}

/*
 * A running postgres's postmaster.pid, inherited by a new branch, would make
 * a postgres started on the branch refuse to start (the pid is alive).  In
 * a writable tree, a "postmaster.pid" whose visible dirent comes from an
 * ancestor (level > 0) is therefore hidden: lookup and readdir do not show
 * it and creating the name replaces it.  Snapshots show it unchanged.
 */
#define PG_PIDFILE "postmaster.pid"

static bool hidden_inherited(const struct op *op, const char *name, int level)
{
	return level > 0 && !op->t->readonly && strcmp(name, PG_PIDFILE) == 0;
}

static int dirent_get_lv(struct op *op, uint64_t dir, const char *name,
			 uint64_t *ino, uint32_t *type, int *level);

int dirent_get(struct op *op, uint64_t dir, const char *name, uint64_t *ino,
	       uint32_t *type)
{
	int level, ret = dirent_get_lv(op, dir, name, ino, type, &level);

	if (ret == 0 && hidden_inherited(op, name, level))
		return -ENOENT;
	return ret;
}

static int dirent_get_lv(struct op *op, uint64_t dir, const char *name,
			 uint64_t *ino, uint32_t *type, int *level)
{
	uint8_t obj[8 + 256 + 1];
	struct vres r;
	int ret;

	if (strlen(name) > 255)
		return -ENAMETOOLONG;
	ret = vget(op, BFS_PFX_DIRENT, obj, dirent_obj(obj, dir, name), 0, 0,
		   &r);
	if (ret < 0)
		return ret;
	if (!r.live) {
		free(r.val);
		return -ENOENT;
	}
	if (r.vlen != BFS_DIRENT_VALUE_SIZE) {
		free(r.val);
		kv_log("dirent %s in dir %llu: bad record", name,
		       (unsigned long long)dir);
		return -EIO;
	}
	*ino = bfs_get_u64(r.val);
	if (type)
		*type = (uint32_t)((const uint8_t *)r.val)[8] << 12;
	*level = r.level;
	free(r.val);
	return 0;
}

static void dirent_put(struct op *op, struct kv_batch *b, uint64_t dir,
		       const char *name, uint64_t ino, uint32_t mode)
{
	uint8_t obj[8 + 256 + 1], v[BFS_DIRENT_VALUE_SIZE];

	bfs_put_u64(v, ino);
	v[8] = (uint8_t)((mode & S_IFMT) >> 12);
	vput(op, b, BFS_PFX_DIRENT, obj, dirent_obj(obj, dir, name), v, sizeof(v));
}

static int dirent_del(struct op *op, struct kv_batch *b, uint64_t dir,
		      const char *name)
{
	uint8_t obj[8 + 256 + 1];

	return vdel(op, b, BFS_PFX_DIRENT, obj, dirent_obj(obj, dir, name));
}

int snap_getattr(struct snap_tree *t, uint64_t ino, struct snap_attr *a)
{
	struct snap_inode in;
	struct op op;
	int ret;

	op_begin(&op, t, false);
	ret = inode_get(&op, ino, &in);
	op_end(&op);
	if (ret < 0)
		return ret;
	inode_to_attr(&in, a);
	inode_release(&in);
	return 0;
}

int snap_lookup(struct snap_tree *t, uint64_t dir, const char *name,
		struct snap_attr *a)
{
	struct snap_inode in;
	struct op op;
	uint64_t ino;
	int ret;

	if (strlen(name) > 255)
		return -ENAMETOOLONG;
	op_begin(&op, t, false);
	ret = inode_get(&op, dir, &in);
	if (ret < 0)
		goto out;
	if (!S_ISDIR(in.mode)) {
		inode_release(&in);
		ret = -ENOTDIR;
		goto out;
	}
	inode_release(&in);
	ret = dirent_get(&op, dir, name, &ino, NULL);
	if (ret < 0)
		goto out;
	ret = inode_get(&op, ino, &in);
	if (ret == -ENOENT) {
		kv_log("dirent %s in dir %llu names missing inode %llu", name,
		       (unsigned long long)dir, (unsigned long long)ino);
		ret = -EIO;
	}
	if (ret < 0)
		goto out;
	inode_to_attr(&in, a);
	inode_release(&in);
out:
	op_end(&op);
	return ret;
}

/*
 * The inodes a namespace op reads and rewrites, each once even when two
 * roles name the same inode (olddir == newdir).
 */
struct iset {
	int n;
	struct snap_inode in[4];
	bool dirty[4];
};

static struct snap_inode *iset_get(struct op *op, struct iset *is,
				   uint64_t ino, int *err)
{
	for (int i = 0; i < is->n; i++)
		if (is->in[i].ino == ino)
			return &is->in[i];
	*err = inode_get(op, ino, &is->in[is->n]);
	if (*err < 0)
		return NULL;
	is->dirty[is->n] = false;
	return &is->in[is->n++];
}

static void iset_dirty(struct iset *is, struct snap_inode *in)
{
	is->dirty[in - is->in] = true;
}

static void iset_release(struct iset *is)
{
	for (int i = 0; i < is->n; i++)
		inode_release(&is->in[i]);
	is->n = 0;
}

/* Write back dirty inodes; an inode with no links left is purged, or, if
 * still open, kept with an orphan record. */
static int iset_flush(struct op *op, struct kv_batch *b, struct iset *is)
{
	for (int i = 0; i < is->n; i++) {
		struct snap_inode *in = &is->in[i];
		bool gone = S_ISDIR(in->mode) ? in->nlink < 2 : in->nlink == 0;
		int ret;

		if (!is->dirty[i])
			continue;
		if (gone && S_ISDIR(in->mode)) {
			ret = inode_purge(op, b, in);
			if (ret < 0)
				return ret;
		} else if (gone && !snap_is_open(op->s, op_branch(op), in->ino)) {
			ret = inode_purge(op, b, in);
			if (ret < 0)
				return ret;
		} else {
			if (gone) {
				uint8_t k[13];

				orphan_key(k, op_branch(op), in->ino);
				kv_batch_put(b, KV_CF_SYS, k, sizeof(k), "", 0);
			}
			inode_put(op, b, in);
		}
	}
	return 0;
}

/* Common frame of a namespace op: op + ns_lock + stripes + batch. */
struct nsop {
	struct op op;
	struct snap_branch *br;
	struct iset is;
	struct kv_batch *b;
	int held[4];
	int nheld;
};

static int nsop_begin(struct nsop *n, struct snap_tree *t)
{
	int ret;

	memset(n, 0, sizeof(*n));
	ret = op_begin(&n->op, t, true);
	if (ret < 0)
		return ret;
	n->br = t->br;
	pthread_mutex_lock(&n->br->ns_lock);
	n->b = kv_batch_new();
	return 0;
}

static void nsop_lock(struct nsop *n, uint64_t a, uint64_t b, uint64_t c,
		      uint64_t d)
{
	uint64_t inos[4] = { a, b, c, d };

	n->nheld = 4;
	stripes_lock(n->op.s, op_branch(&n->op), inos, 4, n->held);
}

/* Flush inodes and commit (if ret == 0), then release everything. */
static int nsop_end(struct nsop *n, int ret)
{
	if (ret == 0)
		ret = iset_flush(&n->op, n->b, &n->is);
	if (ret == 0)
		ret = kv_commit(n->op.kv, n->b);
	kv_batch_free(n->b);
	iset_release(&n->is);
	if (n->nheld)
		stripes_unlock(n->op.s, n->held, n->nheld);
	pthread_mutex_unlock(&n->br->ns_lock);
	op_end(&n->op);
	return ret;
}

static struct snap_inode *get_dir(struct nsop *n, uint64_t dir, int *err)
{
	struct snap_inode *d = iset_get(&n->op, &n->is, dir, err);

	if (d && !S_ISDIR(d->mode)) {
		*err = -ENOTDIR;
		return NULL;
	}
	return d;
}

static void touch_dir(struct nsop *n, struct snap_inode *d)
{
	inode_touch(&d->mtime);
	d->ctime = d->mtime;
	iset_dirty(&n->is, d);
}

/*
 * The hidden inherited pid file of @d (inode @ino) goes away because its
 * name is being reused or its directory removed: drop its link (the entry
 * itself is overwritten or tombstoned by the caller) and its count in @d.
 */
static int drop_hidden(struct nsop *n, struct snap_inode *d, uint64_t ino)
{
	struct snap_inode *o;
	int ret;

	o = iset_get(&n->op, &n->is, ino, &ret);
	if (!o)
		return ret == -ENOENT ? 0 : ret;
	if (o->nlink)
		o->nlink--;
	iset_dirty(&n->is, o);
	if (d->size)
		d->size--;
	return 0;
}

static int create_common(struct snap_tree *t, uint64_t dir, const char *name,
			 uint32_t mode, uint64_t rdev, const char *target,
			 uint32_t uid, uint32_t gid, struct snap_attr *a)
{
	struct snap_inode *d, in = { 0 };
	struct nsop n;
	uint64_t ino, old;
	int ret;

	ret = name_check(name);
	if (ret < 0)
		return ret;
	ret = nsop_begin(&n, t);
	if (ret < 0)
		return ret;
	ino = ino_alloc(n.op.s, &ret);
	if (ret < 0)
		return nsop_end(&n, ret);
	nsop_lock(&n, dir, ino, 0, 0);
	d = get_dir(&n, dir, &ret);
	if (!d)
		return nsop_end(&n, ret);
	if (d->nlink == 0)
		return nsop_end(&n, -ENOENT);
	{
		int level;

		ret = dirent_get_lv(&n.op, dir, name, &old, NULL, &level);
		if (ret == 0 && hidden_inherited(&n.op, name, level)) {
			/* replace the inherited pid file */
			ret = drop_hidden(&n, d, old);
			if (ret < 0)
				return nsop_end(&n, ret);
			ret = -ENOENT;
		} else if (ret == 0) {
			return nsop_end(&n, -EEXIST);
		}
	}
	if (ret != -ENOENT)
		return nsop_end(&n, ret);

	in.ino = ino;
	in.mode = mode;
	in.uid = uid;
	in.gid = gid;
	if (d->mode & S_ISGID) {
		in.gid = d->gid;
		if (S_ISDIR(mode))
			in.mode |= S_ISGID;
	}
	in.nlink = S_ISDIR(mode) ? 2 : 1;
	in.rdev = rdev;
	in.parent = S_ISDIR(mode) ? dir : 0;
	if (target) {
		in.target = (char *)target;
		in.size = strlen(target);
	}
	inode_touch(&in.mtime);
	in.atime = in.ctime = in.mtime;
	inode_put(&n.op, n.b, &in);
	dirent_put(&n.op, n.b, dir, name, ino, mode);
	d->size++;
	if (S_ISDIR(mode))
		d->nlink++;
	touch_dir(&n, d);
	ret = nsop_end(&n, 0);
	if (ret == 0 && a)
		inode_to_attr(&in, a);
	return ret;
}

int snap_mknod(struct snap_tree *t, uint64_t dir, const char *name,
	       uint32_t mode, uint64_t rdev, uint32_t uid, uint32_t gid,
	       struct snap_attr *a)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFIFO:
	case S_IFSOCK:
	case S_IFCHR:
	case S_IFBLK:
		break;
	case 0:
		mode |= S_IFREG;
		break;
	default:
		return -EINVAL;
	}
	return create_common(t, dir, name, mode, rdev, NULL, uid, gid, a);
}

int snap_symlink(struct snap_tree *t, uint64_t dir, const char *name,
		 const char *target, uint32_t uid, uint32_t gid,
		 struct snap_attr *a)
{
	size_t tl = strlen(target);

	if (tl == 0)
		return -ENOENT;
	if (tl >= 4096)
		return -ENAMETOOLONG;
	return create_common(t, dir, name, S_IFLNK | 0777, 0, target, uid, gid,
			     a);
}

int snap_readlink(struct snap_tree *t, uint64_t ino, char *buf, size_t size)
{
	struct snap_inode in;
	struct op op;
	size_t tl;
	int ret;

	op_begin(&op, t, false);
	ret = inode_get(&op, ino, &in);
	op_end(&op);
	if (ret < 0)
		return ret;
	if (!S_ISLNK(in.mode) || !in.target) {
		inode_release(&in);
		return -EINVAL;
	}
	tl = strlen(in.target);
	if (tl + 1 > size) {
		inode_release(&in);
		return -ENAMETOOLONG;
	}
	memcpy(buf, in.target, tl + 1);
	inode_release(&in);
	return (int)tl;
}

int snap_link(struct snap_tree *t, uint64_t ino, uint64_t dir,
	      const char *name, struct snap_attr *a)
{
	struct snap_inode *d, *in;
	struct nsop n;
	uint64_t old;
	int ret;

	ret = name_check(name);
	if (ret < 0)
		return ret;
	ret = nsop_begin(&n, t);
	if (ret < 0)
		return ret;
	nsop_lock(&n, dir, ino, 0, 0);
	d = get_dir(&n, dir, &ret);
	if (!d)
		return nsop_end(&n, ret);
	in = iset_get(&n.op, &n.is, ino, &ret);
	if (!in)
		return nsop_end(&n, ret);
	if (S_ISDIR(in->mode))
		return nsop_end(&n, -EPERM);
	if (in->nlink == 0 || d->nlink == 0)
		return nsop_end(&n, -ENOENT);
	if (in->nlink >= 65000)
		return nsop_end(&n, -EMLINK);
	{
		int level;

		ret = dirent_get_lv(&n.op, dir, name, &old, NULL, &level);
		if (ret == 0 && hidden_inherited(&n.op, name, level)) {
			ret = drop_hidden(&n, d, old);
			if (ret < 0)
				return nsop_end(&n, ret);
			ret = -ENOENT;
		} else if (ret == 0) {
			return nsop_end(&n, -EEXIST);
		}
	}
	if (ret != -ENOENT)
		return nsop_end(&n, ret);
	dirent_put(&n.op, n.b, dir, name, ino, in->mode);
	in->nlink++;
	inode_touch(&in->ctime);
	iset_dirty(&n.is, in);
	d->size++;
	touch_dir(&n, d);
	if (a)
		inode_to_attr(in, a);
	return nsop_end(&n, 0);
}

static int remove_common(struct snap_tree *t, uint64_t dir, const char *name,
			 bool want_dir)
{
	struct snap_inode *d, *in;
	struct nsop n;
	uint64_t ino;
	int ret;

	if (strlen(name) > 255)
		return -ENAMETOOLONG;
	if (strcmp(name, ".") == 0)
		return -EINVAL;
	if (strcmp(name, "..") == 0)
		return -ENOTEMPTY;
	ret = nsop_begin(&n, t);
	if (ret < 0)
		return ret;
	ret = dirent_get(&n.op, dir, name, &ino, NULL);
	if (ret < 0)
		return nsop_end(&n, ret);
	nsop_lock(&n, dir, ino, 0, 0);
	d = get_dir(&n, dir, &ret);
	if (!d)
		return nsop_end(&n, ret);
	in = iset_get(&n.op, &n.is, ino, &ret);
	if (!in)
		return nsop_end(&n, ret == -ENOENT ? -EIO : ret);
	if (want_dir && !S_ISDIR(in->mode))
		return nsop_end(&n, -ENOTDIR);
	if (!want_dir && S_ISDIR(in->mode))
		return nsop_end(&n, -EISDIR);
	if (want_dir && in->size == 1) {
		/* only a hidden inherited pid file left: it goes too */
		uint64_t pino;
		int level;

		if (dirent_get_lv(&n.op, ino, PG_PIDFILE, &pino, NULL, &level) == 0 &&
		    hidden_inherited(&n.op, PG_PIDFILE, level)) {
			ret = dirent_del(&n.op, n.b, ino, PG_PIDFILE);
			if (ret == 0)
				ret = drop_hidden(&n, in, pino);
			if (ret < 0)
				return nsop_end(&n, ret);
		}
	}
	if (want_dir && in->size > 0)
		return nsop_end(&n, -ENOTEMPTY);
	ret = dirent_del(&n.op, n.b, dir, name);
	if (ret < 0)
		return nsop_end(&n, ret);
	d->size--;
	if (want_dir) {
		d->nlink--;
		in->nlink = 0;
	} else {
		in->nlink--;
	}
	inode_touch(&in->ctime);
	iset_dirty(&n.is, in);
	touch_dir(&n, d);
	return nsop_end(&n, 0);
}

int snap_unlink(struct snap_tree *t, uint64_t dir, const char *name)
{
	return remove_common(t, dir, name, false);
}

int snap_rmdir(struct snap_tree *t, uint64_t dir, const char *name)
{
	return remove_common(t, dir, name, true);
}

/* -EINVAL if @dir is @anc or lies below it. */
static int check_not_below(struct op *op, uint64_t dir, uint64_t anc)
{
	for (int depth = 0; depth < 4096; depth++) {
		struct snap_inode in;
		uint64_t p;
		int ret;

		if (dir == anc)
			return -EINVAL;
		if (dir == SNAP_ROOT_INO)
			return 0;
		ret = inode_get(op, dir, &in);
		if (ret < 0)
			return ret;
		p = in.parent;
		inode_release(&in);
		if (p == 0 || p == dir)
			return 0;
		dir = p;
	}
	return -ELOOP;
}

int snap_rename(struct snap_tree *t, uint64_t olddir, const char *oldname,
		uint64_t newdir, const char *newname, unsigned flags)
{
	struct snap_inode *od, *nd, *src, *dst = NULL;
	uint64_t sino, dino = 0;
	struct nsop n;
	int ret;

	if (flags & ~(SNAP_RENAME_NOREPLACE | SNAP_RENAME_EXCHANGE))
		return -EINVAL;
	if ((flags & SNAP_RENAME_NOREPLACE) && (flags & SNAP_RENAME_EXCHANGE))
		return -EINVAL;
	if (strlen(oldname) > 255)
		return -ENAMETOOLONG;
	ret = name_check(newname);
	if (ret < 0)
		return ret;
	if (strcmp(oldname, ".") == 0 || strcmp(oldname, "..") == 0)
		return -EINVAL;
	ret = nsop_begin(&n, t);
	if (ret < 0)
		return ret;
	ret = dirent_get(&n.op, olddir, oldname, &sino, NULL);
	if (ret < 0)
		return nsop_end(&n, ret);
	{
		int level;
		bool hidden;

		ret = dirent_get_lv(&n.op, newdir, newname, &dino, NULL, &level);
		hidden = ret == 0 && hidden_inherited(&n.op, newname, level);
		if (ret == -ENOENT)
			dino = 0;
		else if (ret < 0)
			return nsop_end(&n, ret);
		/* a hidden pid file is replaced as if absent */
		if ((flags & SNAP_RENAME_EXCHANGE) && (!dino || hidden))
			return nsop_end(&n, -ENOENT);
		if ((flags & SNAP_RENAME_NOREPLACE) && dino && !hidden)
			return nsop_end(&n, -EEXIST);
	}
	if (sino == dino) /* same file (hard links): nothing to do */
		return nsop_end(&n, 0);

	nsop_lock(&n, olddir, newdir, sino, dino);
	od = get_dir(&n, olddir, &ret);
	if (!od)
		return nsop_end(&n, ret);
	nd = get_dir(&n, newdir, &ret);
	if (!nd)
		return nsop_end(&n, ret);
	src = iset_get(&n.op, &n.is, sino, &ret);
	if (!src)
		return nsop_end(&n, ret == -ENOENT ? -EIO : ret);
	if (dino) {
		dst = iset_get(&n.op, &n.is, dino, &ret);
		if (!dst)
			return nsop_end(&n, ret == -ENOENT ? -EIO : ret);
	}
	if (S_ISDIR(src->mode) && olddir != newdir) {
		ret = check_not_below(&n.op, newdir, sino);
		if (ret < 0)
			return nsop_end(&n, ret);
	}
	if ((flags & SNAP_RENAME_EXCHANGE) && S_ISDIR(dst->mode) &&
	    olddir != newdir) {
		ret = check_not_below(&n.op, olddir, dino);
		if (ret < 0)
			return nsop_end(&n, ret);
	}

	if (flags & SNAP_RENAME_EXCHANGE) {
		dirent_put(&n.op, n.b, olddir, oldname, dino, dst->mode);
		dirent_put(&n.op, n.b, newdir, newname, sino, src->mode);
		if (olddir != newdir) {
			if (S_ISDIR(src->mode)) {
				od->nlink--;
				nd->nlink++;
				src->parent = newdir;
			}
			if (S_ISDIR(dst->mode)) {
				nd->nlink--;
				od->nlink++;
				dst->parent = olddir;
			}
		}
		inode_touch(&src->ctime);
		dst->ctime = src->ctime;
		iset_dirty(&n.is, src);
		iset_dirty(&n.is, dst);
		touch_dir(&n, od);
		touch_dir(&n, nd);
		return nsop_end(&n, 0);
	}

	if (dst) {
		if (S_ISDIR(src->mode) && !S_ISDIR(dst->mode))
			return nsop_end(&n, -ENOTDIR);
		if (!S_ISDIR(src->mode) && S_ISDIR(dst->mode))
			return nsop_end(&n, -EISDIR);
		if (S_ISDIR(dst->mode) && dst->size > 0)
			return nsop_end(&n, -ENOTEMPTY);
	}
	ret = dirent_del(&n.op, n.b, olddir, oldname);
	if (ret < 0)
		return nsop_end(&n, ret);
	dirent_put(&n.op, n.b, newdir, newname, sino, src->mode);
	od->size--;
	if (dst) {
		if (S_ISDIR(dst->mode)) {
			dst->nlink = 0;
			nd->nlink--;
		} else {
			dst->nlink--;
		}
		inode_touch(&dst->ctime);
		iset_dirty(&n.is, dst);
	} else {
		nd->size++;
	}
	if (S_ISDIR(src->mode) && olddir != newdir) {
		od->nlink--;
		nd->nlink++;
		src->parent = newdir;
	}
	inode_touch(&src->ctime);
	iset_dirty(&n.is, src);
	touch_dir(&n, od);
	touch_dir(&n, nd);
	return nsop_end(&n, 0);
}

int snap_parent(struct snap_tree *t, uint64_t dir, uint64_t *parent)
{
	struct snap_inode in;
	struct op op;
	int ret;

	op_begin(&op, t, false);
	ret = inode_get(&op, dir, &in);
	op_end(&op);
	if (ret < 0)
		return ret;
	*parent = in.parent ? in.parent : SNAP_ROOT_INO;
	inode_release(&in);
	return 0;
}

/* ---- readdir ---------------------------------------------------------- */

struct dlist {
	struct snap_dirent *e;
	bool *dead; /* tombstone at this level: hides ancestors' entry */
	size_t n, cap;
	char *names;
	size_t nlen, ncap;
};

static int dlist_add(struct dlist *l, const char *name, size_t nl,
		     uint64_t ino, uint32_t type, bool dead)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		void *ne = realloc(l->e, cap * sizeof(*l->e));
		void *nd;

		if (!ne)
			return -ENOMEM;
		l->e = ne;
		nd = realloc(l->dead, cap * sizeof(*l->dead));
		if (!nd)
			return -ENOMEM;
		l->dead = nd;
		l->cap = cap;
	}
	if (l->nlen + nl + 1 > l->ncap) {
		size_t cap = l->ncap ? l->ncap * 2 : 4096;
		char *nn;

		while (cap < l->nlen + nl + 1)
			cap *= 2;
		nn = realloc(l->names, cap);
		if (!nn)
			return -ENOMEM;
		l->names = nn;
		l->ncap = cap;
	}
	memcpy(l->names + l->nlen, name, nl);
	l->names[l->nlen + nl] = 0;
	/* names is reallocated: store offsets now, pointers at the end */
	l->e[l->n].name = (char *)(uintptr_t)l->nlen;
	l->e[l->n].ino = ino;
	l->e[l->n].type = type;
	l->dead[l->n] = dead;
	l->n++;
	l->nlen += nl + 1;
	return 0;
}

static void dlist_free(struct dlist *l)
{
	free(l->e);
	free(l->dead);
	free(l->names);
}

static const char *dname(const struct dlist *l, size_t i)
{
	return l->names + (uintptr_t)l->e[i].name;
}

/* All entries (and tombstones) of @dir at one level, sorted by name. */
static int level_list(struct op *op, int level, uint64_t dir, struct dlist *l)
{
	uint8_t lo[16], hi[16];
	uint64_t e = op_epoch(op, level);
	struct kv_iter *it;
	const char *last = NULL;
	size_t lastlen = 0;
	int ret = 0;

	lo[0] = BFS_PFX_DIRENT;
	bfs_put_u32(lo + 1, op->lv[level].b);
	bfs_put_u64(lo + 5, dir);
	memcpy(hi, lo, 13);
	bfs_put_u64(hi + 5, dir + 1);
	it = kv_iter_new(op->kv, KV_CF_META, lo, 13, hi, 13);
	if (!it)
		return -ENOMEM;
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		size_t kl, vl, nl;
		const uint8_t *k = kv_iter_key(it, &kl);
		const uint8_t *v = kv_iter_value(it, &vl);
		const char *name = (const char *)k + 13;
		uint64_t ve;

		if (kl < 13 + 2 + 8)
			continue;
		nl = kl - 13 - 8 - 1;
		ve = UINT64_MAX - bfs_get_u64(k + kl - 8);
		if (ve > e)
			continue; /* newer than this level sees */
		if (last && lastlen == nl && memcmp(last, name, nl) == 0)
			continue; /* older version of a name already taken */
		ret = dlist_add(l, name, nl, vl >= 8 ? bfs_get_u64(v) : 0,
				vl >= 9 ? (uint32_t)v[8] << 12 : 0,
				vl != BFS_DIRENT_VALUE_SIZE);
		if (ret < 0)
			break;
		last = dname(l, l->n - 1);
		lastlen = nl;
	}
	if (ret == 0)
		ret = kv_iter_status(it);
	kv_iter_free(it);
	return ret;
}

int snap_readdir(struct snap_tree *t, uint64_t dir, struct snap_dirent **out,
		 size_t *nout)
{
	struct snap_inode in;
	struct dlist acc = { 0 };
	struct op op;
	int ret;

	op_begin(&op, t, false);
	ret = inode_get(&op, dir, &in);
	if (ret < 0)
		goto out;
	if (!S_ISDIR(in.mode)) {
		inode_release(&in);
		ret = -ENOTDIR;
		goto out;
	}
	inode_release(&in);

	/* Merge levels: a name at a nearer level hides the same name below. */
	for (int l = 0; l < op.n; l++) {
		struct dlist cur = { 0 }, m = { 0 };
		size_t i = 0, j = 0;

		ret = level_list(&op, l, dir, &cur);
		if (ret < 0) {
			dlist_free(&cur);
			goto out;
		}
		if (l == 0) {
			acc = cur;
			continue;
		}
		while (ret == 0 && (i < acc.n || j < cur.n)) {
			int c;

			if (i == acc.n)
				c = 1;
			else if (j == cur.n)
				c = -1;
			else
				c = strcmp(dname(&acc, i), dname(&cur, j));
			if (c <= 0) {
				ret = dlist_add(&m, dname(&acc, i),
						strlen(dname(&acc, i)),
						acc.e[i].ino, acc.e[i].type,
						acc.dead[i]);
				i++;
				if (c == 0)
					j++;
			} else {
				ret = dlist_add(&m, dname(&cur, j),
						strlen(dname(&cur, j)),
						cur.e[j].ino, cur.e[j].type,
						cur.dead[j]);
				j++;
			}
		}
		dlist_free(&cur);
		dlist_free(&acc);
		acc = m;
		if (ret < 0)
			goto out;
	}

	/* Hide an inherited postmaster.pid (see hidden_inherited). */
	if (!t->readonly) {
		for (size_t i = 0; i < acc.n; i++) {
			uint64_t ino;
			int level;

			if (acc.dead[i] || strcmp(dname(&acc, i), PG_PIDFILE))
				continue;
			if (dirent_get_lv(&op, dir, PG_PIDFILE, &ino, NULL,
					  &level) == 0 &&
			    hidden_inherited(&op, PG_PIDFILE, level))
				acc.dead[i] = true;
		}
	}

	/* One block: entries, then names. */
	{
		size_t live = 0, k = 0;
		struct snap_dirent *res;
		char *names;

		for (size_t i = 0; i < acc.n; i++)
			live += !acc.dead[i];
		res = malloc(live * sizeof(*res) + acc.nlen + 1);
		if (!res) {
			ret = -ENOMEM;
			goto out;
		}
		names = (char *)(res + live);
		memcpy(names, acc.names ? acc.names : "", acc.nlen);
		for (size_t i = 0; i < acc.n; i++) {
			if (acc.dead[i])
				continue;
			res[k] = acc.e[i];
			res[k].name = names + (uintptr_t)acc.e[i].name;
			k++;
		}
		*out = res;
		*nout = live;
	}
out:
	dlist_free(&acc);
	op_end(&op);
	return ret;
}
