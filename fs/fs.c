/* SPDX-License-Identifier: MIT */
/*
 * fs/fs.c - FUSE low-level operations over snap/.
 *
 * Each op is a thin shell: resolve the node id to (tree, ino), call one
 * snap_ function, reply exactly once.  snap_ functions return -errno;
 * fuse_reply_err() takes a positive errno, negated here only (reply_err).
 *
 * Caching: all changes to a tree come through this mount, so the kernel
 * may keep file pages across opens (keep_cache) and attributes for
 * ATTR_TIMEOUT.  By default writeback caching stays off: a write reaches
 * RocksDB before write(2) returns, and fsync only has to sync the WAL.
 * With --writeback (fs->writeback) the kernel caches writes and sends them
 * at fsync, close, or under memory pressure (op_init, wb_open_flags).
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs.h"
#include "fs_int.h"
#include "snap/snap.h"

#define ATTR_TIMEOUT 1.0
#define ENTRY_TIMEOUT 1.0
#define NODE_ROOT 1ull
#define NODE_SNAPDIR 2ull
#define SNAPDIR_NAME ".snapshots"
#define INO_MASK ((1ull << SNAP_INO_BITS) - 1)

static inline fuse_ino_t node_of(uint32_t tree, uint64_t ino)
{
	return ((fuse_ino_t)tree << SNAP_INO_BITS) | ino;
}

static inline uint32_t node_tree(fuse_ino_t n)
{
	return (uint32_t)(n >> SNAP_INO_BITS);
}

static inline uint64_t node_ino(fuse_ino_t n)
{
	return n & INO_MASK;
}

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void reply_err(fuse_req_t req, int err)
{
	fuse_reply_err(req, err < 0 ? -err : err);
}

/* Resolve @node to a tree reference (released with snap_tree_put). */
static int node_tree_get(struct fs *fs, fuse_ino_t node, struct snap_tree **t)
{
	if (node_tree(node) == 0)
		return -EPERM; /* synthetic directories */
	return snap_tree_get(fs->s, node_tree(node), t);
}

/* node_tree_get() for an operation that would change @node: .snapshots
 * holds only read-only snapshots, so it is a read-only filesystem (EROFS)
 * there like inside them; the mount root stays EPERM. */
static int node_tree_get_w(struct fs *fs, fuse_ino_t node,
			   struct snap_tree **t)
{
	int ret = node_tree_get(fs, node, t);

	return ret == -EPERM && node == NODE_SNAPDIR ? -EROFS : ret;
}

static void attr_to_stat(uint32_t tree, const struct snap_attr *a,
			 struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = node_of(tree, a->ino);
	st->st_mode = a->mode;
	st->st_nlink = a->nlink;
	st->st_uid = a->uid;
	st->st_gid = a->gid;
	st->st_size = (off_t)a->size;
	st->st_blocks = (blkcnt_t)a->blocks;
	st->st_blksize = 8192;
	st->st_rdev = (dev_t)a->rdev;
	st->st_atim = a->atime;
	st->st_mtim = a->mtime;
	st->st_ctim = a->ctime;
}

static void synth_stat(struct fs *fs, fuse_ino_t node, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = node;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
	st->st_uid = fs->root_uid;
	st->st_gid = fs->root_gid;
	st->st_blksize = 8192;
	st->st_atim = st->st_mtim = st->st_ctim = fs->start;
}

static void reply_entry(fuse_req_t req, uint32_t tree, const struct snap_attr *a)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = node_of(tree, a->ino);
	e.generation = 1;
	e.attr_timeout = ATTR_TIMEOUT;
	e.entry_timeout = ENTRY_TIMEOUT;
	attr_to_stat(tree, a, &e.attr);
	fuse_reply_entry(req, &e);
}

/* ---- synthetic root and .snapshots ----------------------------------- */

static int synth_lookup(struct fs *fs, fuse_ino_t parent, const char *name,
			struct fuse_entry_param *e)
{
	struct snap_branch_info *v;
	struct snap_tree *t;
	struct snap_attr a;
	size_t n;
	uint32_t id = 0;
	int ret;

	memset(e, 0, sizeof(*e));
	e->generation = 1;
	e->attr_timeout = ATTR_TIMEOUT;
	if (parent == NODE_ROOT && strcmp(name, SNAPDIR_NAME) == 0) {
		e->ino = NODE_SNAPDIR;
		synth_stat(fs, NODE_SNAPDIR, &e->attr);
		e->entry_timeout = ENTRY_TIMEOUT;
		return 0;
	}
	if (parent == NODE_ROOT) {
		ret = snap_branch_find(fs->s, name, &id);
	} else {
		ret = snap_branch_list(fs->s, true, &v, &n);
		if (ret == 0) {
			ret = -ENOENT;
			for (size_t i = 0; i < n; i++) {
				if (strcmp(v[i].name, name) == 0) {
					id = v[i].id;
					ret = 0;
				}
			}
			free(v);
		}
	}
	if (ret < 0)
		return ret;
	ret = snap_tree_get(fs->s, id, &t);
	if (ret < 0)
		return ret;
	ret = snap_getattr(t, SNAP_ROOT_INO, &a);
	snap_tree_put(t);
	if (ret < 0)
		return ret;
	/* Branch directories come and go with branch commands: no caching. */
	e->ino = node_of(id, a.ino);
	e->entry_timeout = 0;
	attr_to_stat(id, &a, &e->attr);
	return 0;
}

/* ---- ops ---------------------------------------------------------------- */

/* snap cleared suid/sgid on a write: the kernel's cached mode is stale. */
static void attr_changed(void *arg, uint32_t tree, uint64_t ino)
{
	struct fs *fs = arg;

	if (fs->se) /* offset -1: attributes only, never page locks */
		fuse_lowlevel_notify_inval_inode(fs->se, node_of(tree, ino), -1, 0);
}

/*
 * With the writeback cache the kernel reads pages of files opened write-only
 * (to fill partial pages) and appends itself at its own idea of the size,
 * so every handle is read-write here and O_APPEND is the kernel's business.
 * Permission checks were made on the caller's flags before this point.
 */
static void wb_open_flags(struct fs *fs, struct fuse_file_info *fi)
{
	if (!fs->writeback_on)
		return;
	if ((fi->flags & O_ACCMODE) == O_WRONLY)
		fi->flags = (fi->flags & ~O_ACCMODE) | O_RDWR;
	fi->flags &= ~O_APPEND;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;

	/* Correctness first: no writeback cache, and our own writes must not
	 * make the kernel drop cached pages on the next getattr. */
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
	conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
	if (fs->writeback) {
		if (conn->capable & FUSE_CAP_WRITEBACK_CACHE) {
			conn->want |= FUSE_CAP_WRITEBACK_CACHE;
			fs->writeback_on = true;
		} else {
			fs_log("the kernel offers no writeback cache: writing through");
		}
	}
	fs_log("mode: %s", fs->writeback_on ?
	       "writeback (kernel cache; snapshots crash-consistent)" :
	       "write-through (snapshots exact instants)");
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	conn->max_write = 1u << 20;
	conn->max_readahead = 1u << 20;
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	conn->time_gran = 1;
	/* initio.c accepts KILLPRIV_V2 in the INIT reply when offered; from
	 * then on the kernel leaves suid/sgid killing to us. */
	snap_set_killpriv(fs->s, fs_killpriv_v2, attr_changed, fs);
}

static void op_destroy(void *userdata)
{
	struct fs *fs = userdata;

	snap_sync(fs->s);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	struct snap_attr a;
	int ret;

	if (node_tree(parent) == 0) {
		struct fuse_entry_param e;

		ret = synth_lookup(fs, parent, name, &e);
		if (ret < 0) {
			reply_err(req, ret);
			return;
		}
		fuse_reply_entry(req, &e);
		return;
	}
	ret = node_tree_get(fs, parent, &t);
	if (ret == 0) {
		ret = snap_lookup(t, node_ino(parent), name, &a);
		snap_tree_put(t);
	}
	if (ret < 0) {
		reply_err(req, ret);
		return;
	}
	reply_entry(req, node_tree(parent), &a);
}

static void op_getattr(fuse_req_t req, fuse_ino_t node,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	struct snap_attr a;
	struct stat st;
	int ret;

	if (node_tree(node) == 0) {
		synth_stat(fs, node, &st);
		if (node == NODE_ROOT) {
			struct snap_branch_info *v;
			size_t n;

			if (snap_branch_list(fs->s, false, &v, &n) == 0) {
				st.st_nlink = 3 + n;
				free(v);
			}
		}
		fuse_reply_attr(req, &st, ATTR_TIMEOUT);
		return;
	}
	ret = node_tree_get(fs, node, &t);
	if (ret == 0) {
		ret = snap_getattr(t, node_ino(node), &a);
		snap_tree_put(t);
	}
	if (ret < 0) {
		reply_err(req, ret);
		return;
	}
	attr_to_stat(node_tree(node), &a, &st);
	fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t node, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	struct snap_attr in, out;
	struct stat st;
	unsigned set = 0;
	int ret;

	memset(&in, 0, sizeof(in));
	if (to_set & FUSE_SET_ATTR_MODE) {
		set |= SNAP_SET_MODE;
		in.mode = attr->st_mode;
	}
	if (to_set & FUSE_SET_ATTR_UID) {
		set |= SNAP_SET_UID;
		in.uid = attr->st_uid;
	}
	if (to_set & FUSE_SET_ATTR_GID) {
		set |= SNAP_SET_GID;
		in.gid = attr->st_gid;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		set |= SNAP_SET_SIZE;
		in.size = (uint64_t)attr->st_size;
	}
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		set |= SNAP_SET_ATIME_NOW;
	else if (to_set & FUSE_SET_ATTR_ATIME) {
		set |= SNAP_SET_ATIME;
		in.atime = attr->st_atim;
	}
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		set |= SNAP_SET_MTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_MTIME) {
		set |= SNAP_SET_MTIME;
		in.mtime = attr->st_mtim;
	}
	if (to_set & FUSE_SET_ATTR_CTIME) {
		set |= SNAP_SET_CTIME;
		in.ctime = attr->st_ctim;
	}
	ret = node_tree_get_w(fs, node, &t);
	if (ret == 0) {
		ret = snap_setattr(t, node_ino(node), &in, set, &out);
		snap_tree_put(t);
	}
	if (ret == -ENOENT && fs->writeback_on &&
	    set == (SNAP_SET_MTIME | SNAP_SET_CTIME)) {
		/*
		 * With the writeback cache the kernel writes a regular file's
		 * cached times back when it evicts the inode, which for an
		 * unlinked file is after we deleted it.  Nothing is left to
		 * update; failing would record a writeback error that a later
		 * syncfs(2) of the whole mount reports.  The kernel discards
		 * this reply.
		 */
		memset(&st, 0, sizeof(st));
		st.st_ino = node;
		st.st_mode = S_IFREG;
		fuse_reply_attr(req, &st, 0);
		return;
	}
	if (ret < 0) {
		reply_err(req, ret);
		return;
	}
	attr_to_stat(node_tree(node), &out, &st);
	fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void do_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, dev_t rdev, const char *link,
		      struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct snap_tree *t;
	struct snap_attr a;
	int ret;

	ret = node_tree_get_w(fs, parent, &t);
	if (ret < 0) {
		reply_err(req, ret == -EPERM ? -EPERM : ret);
		return;
	}
	if (link)
		ret = snap_symlink(t, node_ino(parent), name, link, ctx->uid,
				   ctx->gid, &a);
	else
		ret = snap_mknod(t, node_ino(parent), name,
				 mode, (uint64_t)rdev, ctx->uid,
				 ctx->gid, &a);
	if (ret < 0) {
		snap_tree_put(t);
		reply_err(req, ret);
		return;
	}
	if (fi) {
		struct fuse_entry_param e;

		wb_open_flags(fs, fi);
		ret = fh_new(fs, t, a.ino, fi->flags, &fi->fh);
		if (ret < 0) {
			snap_tree_put(t);
			reply_err(req, ret);
			return;
		}
		fi->keep_cache = 1;
		fi->noflush = 1; /* as in op_open */
		memset(&e, 0, sizeof(e));
		e.ino = node_of(node_tree(parent), a.ino);
		e.generation = 1;
		e.attr_timeout = ATTR_TIMEOUT;
		e.entry_timeout = ENTRY_TIMEOUT;
		attr_to_stat(node_tree(parent), &a, &e.attr);
		if (fuse_reply_create(req, &e, fi) == -ENOENT)
			fh_release(fs, fi->fh); /* interrupted: undo the open */
		snap_tree_put(t);
		return;
	}
	snap_tree_put(t);
	reply_entry(req, node_tree(parent), &a);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	do_create(req, parent, name, mode, rdev, NULL, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	do_create(req, parent, name, S_IFDIR | (mode & 07777), 0, NULL, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	do_create(req, parent, name, S_IFLNK | 0777, 0, link, NULL);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	do_create(req, parent, name, S_IFREG | (mode & 07777), 0, NULL, fi);
}

static void op_link(fuse_req_t req, fuse_ino_t node, fuse_ino_t newparent,
		    const char *newname)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	struct snap_attr a;
	int ret;

	if (node_tree(node) != node_tree(newparent)) {
		reply_err(req, -EXDEV);
		return;
	}
	ret = node_tree_get_w(fs, newparent, &t);
	if (ret == 0) {
		ret = snap_link(t, node_ino(node), node_ino(newparent), newname,
				&a);
		snap_tree_put(t);
	}
	if (ret < 0) {
		reply_err(req, ret);
		return;
	}
	reply_entry(req, node_tree(newparent), &a);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	int ret = node_tree_get_w(fs, parent, &t);

	if (ret == 0) {
		ret = snap_unlink(t, node_ino(parent), name);
		snap_tree_put(t);
	}
	reply_err(req, ret);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	int ret = node_tree_get_w(fs, parent, &t);

	if (ret == 0) {
		ret = snap_rmdir(t, node_ino(parent), name);
		snap_tree_put(t);
	}
	reply_err(req, ret);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	unsigned f = 0;
	int ret;

	if (node_tree(parent) != node_tree(newparent)) {
		reply_err(req, -EXDEV);
		return;
	}
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		reply_err(req, -EINVAL);
		return;
	}
	if (flags & RENAME_NOREPLACE)
		f |= SNAP_RENAME_NOREPLACE;
	if (flags & RENAME_EXCHANGE)
		f |= SNAP_RENAME_EXCHANGE;
	ret = node_tree_get_w(fs, parent, &t);
	if (ret == 0) {
		ret = snap_rename(t, node_ino(parent), name,
				  node_ino(newparent), newname, f);
		snap_tree_put(t);
	}
	reply_err(req, ret);
}

static void op_readlink(fuse_req_t req, fuse_ino_t node)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	char buf[4096];
	int ret = node_tree_get(fs, node, &t);

	if (ret == 0) {
		ret = snap_readlink(t, node_ino(node), buf, sizeof(buf));
		snap_tree_put(t);
	}
	if (ret < 0) {
		reply_err(req, ret);
		return;
	}
	fuse_reply_readlink(req, buf);
}

static void op_open(fuse_req_t req, fuse_ino_t node, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	struct snap_attr a;
	int ret;

	ret = node_tree_get(fs, node, &t);
	if (ret < 0) {
		reply_err(req, ret == -EPERM ? -EISDIR : ret);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY && snap_tree_readonly(t)) {
		snap_tree_put(t);
		reply_err(req, -EROFS);
		return;
	}
	wb_open_flags(fs, fi);
	ret = snap_getattr(t, node_ino(node), &a);
	if (ret == 0 && (fi->flags & O_TRUNC) && S_ISREG(a.mode) && a.size) {
		struct snap_attr in = { .size = 0 };

		ret = snap_setattr(t, node_ino(node), &in, SNAP_SET_SIZE, NULL);
	}
	if (ret == 0)
		ret = fh_new(fs, t, node_ino(node), fi->flags, &fi->fh);
	snap_tree_put(t);
	if (ret < 0) {
		reply_err(req, ret);
		return;
	}
	/* Pages stay valid across opens unless O_TRUNC just dropped them.
	 * close(2) has nothing to tell the daemon, so no FLUSH: noflush
	 * asks for that.  In write-back mode the kernel ignores noflush (it
	 * writes the file's dirty pages back at close, then sends FLUSH);
	 * there is no .flush op, libfuse answers the first FLUSH with ENOSYS,
	 * and the kernel then stops sending FLUSH for the mount. */
	fi->keep_cache = !(fi->flags & O_TRUNC);
	fi->noflush = 1;
	if (fuse_reply_open(req, fi) == -ENOENT)
		fh_release(fs, fi->fh);
}

static void op_read(fuse_req_t req, fuse_ino_t node, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_fh *fh = fh_get(fs, fi->fh);
	char *buf;
	ssize_t ret;

	if (!fh) {
		reply_err(req, -EBADF);
		return;
	}
	buf = malloc(size ? size : 1);
	if (!buf) {
		fh_put(fs, fh);
		reply_err(req, -ENOMEM);
		return;
	}
	ret = snap_read(fh->t, fh->ino, buf, size, (uint64_t)off);
	fh_put(fs, fh);
	if (ret < 0)
		reply_err(req, (int)ret);
	else
		fuse_reply_buf(req, buf, (size_t)ret);
	free(buf);
}

static void op_write(fuse_req_t req, fuse_ino_t node, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_fh *fh = fh_get(fs, fi->fh);
	bool blocks_changed;
	ssize_t ret;

	if (!fh) {
		reply_err(req, -EBADF);
		return;
	}
	ret = snap_write_ex(fh->t, fh->ino, buf, size, (uint64_t)off,
			    &blocks_changed);
	/* O_SYNC / O_DSYNC writes are durable when write(2) returns. */
	if (ret >= 0 && (fh->flags & (O_SYNC | O_DSYNC))) {
		int r = snap_sync_tree(fh->t);

		if (r < 0)
			ret = r;
	}
	fh_put(fs, fh);
	if (ret < 0) {
		reply_err(req, (int)ret);
		return;
	}
	/* A write-back WRITE that filled or made a hole changes st_blocks
	 * behind the kernel's cached attributes (which it does not drop for
	 * these WRITEs as it does for write-through ones); offset -1:
	 * attributes only, no page locks.  Only then: a dropped attribute
	 * costs the next write(2) a GETATTR and, since that clears the
	 * kernel's "no security xattrs" flag, a GETXATTR. */
	if (fs->writeback_on && fs->se && blocks_changed)
		fuse_lowlevel_notify_inval_inode(fs->se, node, -1, 0);
	fuse_reply_write(req, (size_t)ret);
}

static void op_release(fuse_req_t req, fuse_ino_t node,
		       struct fuse_file_info *fi)
{
	fh_release(fs_of(req), fi->fh);
	reply_err(req, 0);
}

/*
 * fsync/fsyncdir/O_SYNC: make the changes of @node's branch durable (and
 * everything committed before them): nothing to wait for when they are
 * already, however busy other branches are.  The whole store when the
 * tree cannot be had (synthetic directories).
 */
static int sync_node(struct fs *fs, fuse_ino_t node)
{
	struct snap_tree *t;
	int ret;

	if (node_tree_get(fs, node, &t) < 0)
		return snap_sync(fs->s);
	ret = snap_sync_tree(t);
	snap_tree_put(t);
	return ret;
}

static void op_fsync(fuse_req_t req, fuse_ino_t node, int datasync,
		     struct fuse_file_info *fi)
{
	reply_err(req, sync_node(fs_of(req), node));
}

static void op_opendir(fuse_req_t req, fuse_ino_t node,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_dirh *d = calloc(1, sizeof(*d));

	if (!d) {
		reply_err(req, -ENOMEM);
		return;
	}
	pthread_mutex_init(&d->lock, NULL);
	d->node = node;
	fi->fh = (uint64_t)(uintptr_t)d;
	fi->cache_readdir = 0;
	(void)fs;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		pthread_mutex_destroy(&d->lock);
		free(d);
	}
}

/* (Re)build the listing of a directory handle; called with d->lock. */
static int dirh_fill(struct fs *fs, struct fs_dirh *d)
{
	struct snap_tree *t;
	int ret;

	free(d->ents);
	d->ents = NULL;
	d->n = 0;
	d->tree = node_tree(d->node);
	if (d->tree == 0) {
		struct snap_branch_info *v;
		size_t n;

		ret = snap_branch_list(fs->s, d->node == NODE_SNAPDIR, &v, &n);
		if (ret < 0)
			return ret;
		d->synth = v;
		d->nsynth = n;
		return 0;
	}
	ret = snap_tree_get(fs->s, d->tree, &t);
	if (ret < 0)
		return ret;
	ret = snap_readdir(t, node_ino(d->node), &d->ents, &d->n);
	if (ret == 0)
		ret = snap_parent(t, node_ino(d->node), &d->parent);
	snap_tree_put(t);
	return ret;
}

static void do_readdir(fuse_req_t req, fuse_ino_t node, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	struct fs *fs = fs_of(req);
	struct fs_dirh *d = (struct fs_dirh *)(uintptr_t)fi->fh;
	struct snap_tree *t = NULL;
	char *buf = malloc(size);
	size_t used = 0, total;
	int ret = 0;

	if (!buf) {
		reply_err(req, -ENOMEM);
		return;
	}
	pthread_mutex_lock(&d->lock);
	if (off == 0 || !d->filled) {
		free(d->synth);
		d->synth = NULL;
		d->nsynth = 0;
		ret = dirh_fill(fs, d);
		if (ret < 0)
			goto out;
		d->filled = true;
	}
	if (d->tree)
		snap_tree_get(fs->s, d->tree, &t);
	/* offsets: 1 ".", 2 "..", 3.. entries (+1 ".snapshots" in the root) */
	total = 2 + (d->tree ? d->n : d->nsynth + (d->node == NODE_ROOT));
	for (size_t i = (size_t)off; i < total; i++) {
		struct fuse_entry_param e;
		const char *name;
		size_t len;

		memset(&e, 0, sizeof(e));
		e.generation = 1;
		e.attr_timeout = ATTR_TIMEOUT;
		e.entry_timeout = ENTRY_TIMEOUT;
		if (i == 0) {
			name = ".";
			e.attr.st_ino = node;
			e.attr.st_mode = S_IFDIR;
		} else if (i == 1) {
			name = "..";
			/* a branch root's parent is the mount root */
			e.attr.st_ino = NODE_ROOT;
			if (d->tree && node_ino(node) != SNAP_ROOT_INO)
				e.attr.st_ino = node_of(d->tree, d->parent);
			e.attr.st_mode = S_IFDIR;
		} else if (d->tree) {
			const struct snap_dirent *de = &d->ents[i - 2];

			name = de->name;
			e.attr.st_ino = node_of(d->tree, de->ino);
			e.attr.st_mode = de->type;
			if (plus) {
				struct snap_attr a;

				if (!t || snap_getattr(t, de->ino, &a) < 0)
					continue; /* deleted meanwhile */
				attr_to_stat(d->tree, &a, &e.attr);
				e.ino = e.attr.st_ino;
			}
		} else if (d->node == NODE_ROOT && i == 2) {
			name = SNAPDIR_NAME;
			synth_stat(fs, NODE_SNAPDIR, &e.attr);
			if (plus)
				e.ino = NODE_SNAPDIR;
		} else {
			size_t k = i - 2 - (d->node == NODE_ROOT);

			name = d->synth[k].name;
			e.attr.st_ino = node_of(d->synth[k].id, SNAP_ROOT_INO);
			e.attr.st_mode = S_IFDIR;
			/* the kernel may not cache branch dirs: no plus entry */
		}
		if (plus)
			len = fuse_add_direntry_plus(req, buf + used, size - used,
						     name, &e, (off_t)(i + 1));
		else
			len = fuse_add_direntry(req, buf + used, size - used,
						name, &e.attr, (off_t)(i + 1));
		if (len > size - used)
			break;
		used += len;
	}
out:
	pthread_mutex_unlock(&d->lock);
	snap_tree_put(t);
	if (ret < 0)
		reply_err(req, ret);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t node, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, node, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t node, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	do_readdir(req, node, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t node,
			  struct fuse_file_info *fi)
{
	struct fs_dirh *d = (struct fs_dirh *)(uintptr_t)fi->fh;

	free(d->ents);
	free(d->synth);
	pthread_mutex_destroy(&d->lock);
	free(d);
	reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t node, int datasync,
			struct fuse_file_info *fi)
{
	reply_err(req, sync_node(fs_of(req), node));
}

static void op_statfs(fuse_req_t req, fuse_ino_t node)
{
	struct snap_statfs sf;
	struct statvfs v;
	int ret = snap_statfs(fs_of(req)->s, &sf);

	if (ret < 0) {
		reply_err(req, ret);
		return;
	}
	memset(&v, 0, sizeof(v));
	v.f_bsize = sf.bsize;
	v.f_frsize = sf.bsize;
	v.f_blocks = sf.blocks;
	v.f_bfree = sf.bfree;
	v.f_bavail = sf.bavail;
	v.f_files = sf.files + sf.ffree;
	v.f_ffree = sf.ffree;
	v.f_favail = sf.ffree;
	v.f_namemax = 255;
	fuse_reply_statfs(req, &v);
}

/*
 * POSIX ACLs are not supported: the mount does not ask the kernel to
 * enforce them (FUSE_CAP_POSIX_ACL would also make the daemon keep the mode
 * and the ACL in step and inherit default ACLs), so an ACL stored as a
 * plain xattr would show in ls and getfacl while only the mode bits are
 * enforced.  Like a file system mounted noacl: EOPNOTSUPP, which makes
 * cp -a and rsync -A fall back to the mode.
 */
static bool posix_acl_name(const char *name)
{
	return !strcmp(name, "system.posix_acl_access") ||
	       !strcmp(name, "system.posix_acl_default");
}

/* Drop the POSIX ACL names from listxattr's answer @buf of @len bytes. */
static size_t drop_acl_names(char *buf, size_t len)
{
	size_t w = 0;

	for (size_t r = 0; r < len;) {
		size_t l = strnlen(buf + r, len - r);

		if (r + l == len) /* no NUL: not a name */
			break;
		l++;
		if (!posix_acl_name(buf + r)) {
			memmove(buf + w, buf + r, l);
			w += l;
		}
		r += l;
	}
	return w;
}

static void op_setxattr(fuse_req_t req, fuse_ino_t node, const char *name,
			const char *value, size_t size, int flags)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	int ret;

	if (posix_acl_name(name)) {
		reply_err(req, -EOPNOTSUPP);
		return;
	}
	ret = node_tree_get_w(fs, node, &t);

	if (ret == 0) {
		ret = snap_setxattr(t, node_ino(node), name, value, size, flags);
		snap_tree_put(t);
	}
	reply_err(req, ret == -EPERM && node_tree(node) == 0 ? -ENOTSUP : ret);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t node, const char *name,
			size_t size)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	char *buf = NULL;
	ssize_t ret;

	if (posix_acl_name(name)) {
		reply_err(req, -EOPNOTSUPP);
		return;
	}
	if (node_tree(node) == 0) {
		reply_err(req, -ENODATA);
		return;
	}
	ret = node_tree_get(fs, node, &t);
	if (ret == 0) {
		if (size && !(buf = malloc(size)))
			ret = -ENOMEM;
		else
			ret = snap_getxattr(t, node_ino(node), name, buf, size);
		snap_tree_put(t);
	}
	if (ret < 0)
		reply_err(req, (int)ret);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)ret);
	else
		fuse_reply_buf(req, buf, (size_t)ret);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t node, size_t size)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	char *buf = NULL;
	ssize_t ret;

	if (node_tree(node) == 0) {
		if (size == 0)
			fuse_reply_xattr(req, 0);
		else
			fuse_reply_buf(req, NULL, 0);
		return;
	}
	ret = node_tree_get(fs, node, &t);
	if (ret == 0) {
		/* the whole list (snap_setxattr keeps it within
		 * XATTR_LIST_MAX), to leave out ACL names stored before they
		 * were refused */
		if (!(buf = malloc(XATTR_LIST_MAX)))
			ret = -ENOMEM;
		else
			ret = snap_listxattr(t, node_ino(node), buf,
					     XATTR_LIST_MAX);
		if (ret > 0)
			ret = (ssize_t)drop_acl_names(buf, (size_t)ret);
		if (ret > 0 && size && (size_t)ret > size)
			ret = -ERANGE;
		snap_tree_put(t);
	}
	if (ret < 0)
		reply_err(req, (int)ret);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)ret);
	else
		fuse_reply_buf(req, buf, (size_t)ret);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t node, const char *name)
{
	struct fs *fs = fs_of(req);
	struct snap_tree *t;
	int ret;

	if (posix_acl_name(name)) {
		reply_err(req, -EOPNOTSUPP);
		return;
	}
	ret = node_tree_get_w(fs, node, &t);

	if (ret == 0) {
		ret = snap_removexattr(t, node_ino(node), name);
		snap_tree_put(t);
	}
	reply_err(req, ret == -EPERM && node_tree(node) == 0 ? -ENODATA : ret);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t node, int mode,
			 off_t offset, off_t length, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_fh *fh = fh_get(fs, fi->fh);
	int ret;

	if (!fh) {
		reply_err(req, -EBADF);
		return;
	}
	if (offset < 0 || length <= 0)
		ret = -EINVAL;
	else
		ret = snap_fallocate(fh->t, fh->ino, mode, (uint64_t)offset,
				     (uint64_t)length);
	fh_put(fs, fh);
	reply_err(req, ret);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			       off_t off_out, struct fuse_file_info *fi_out,
			       size_t len, int flags)
{
	struct fs *fs = fs_of(req);
	struct fs_fh *in = fh_get(fs, fi_in->fh), *out = fh_get(fs, fi_out->fh);
	ssize_t ret;

	if (!in || !out)
		ret = -EBADF;
	else if (flags)
		ret = -EINVAL;
	else
		ret = snap_copy_range(in->t, in->ino, (uint64_t)off_in, out->t,
				      out->ino, (uint64_t)off_out, len);
	if (in)
		fh_put(fs, in);
	if (out)
		fh_put(fs, out);
	if (ret < 0)
		reply_err(req, (int)ret);
	else
		fuse_reply_write(req, (size_t)ret);
}

static void op_lseek(fuse_req_t req, fuse_ino_t node, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_fh *fh = fh_get(fs, fi->fh);
	uint64_t res = 0;
	int ret;

	if (!fh) {
		reply_err(req, -EBADF);
		return;
	}
	if (fs->writeback_on) {
		/* Dirty pages in the kernel are data we cannot see; ENOSYS
		 * makes the kernel answer SEEK_DATA/SEEK_HOLE itself (the
		 * whole file is data), which is correct if less sparse. */
		fh_put(fs, fh);
		reply_err(req, -ENOSYS);
		return;
	}
	if (off < 0)
		ret = -ENXIO;
	else if (whence == SEEK_DATA || whence == SEEK_HOLE)
		ret = snap_lseek(fh->t, fh->ino, (uint64_t)off, whence, &res);
	else
		ret = -EINVAL;
	fh_put(fs, fh);
	if (ret < 0)
		reply_err(req, ret);
	else
		fuse_reply_lseek(req, (off_t)res);
}

static const struct fuse_lowlevel_ops fs_ops = {
	.init = op_init,
	.destroy = op_destroy,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.create = op_create,
	.fallocate = op_fallocate,
	.copy_file_range = op_copy_file_range,
	.lseek = op_lseek,
};

/* ---- serving ------------------------------------------------------------ */

/* Tell the waiting parent how the mount went (once). */
static void ready(int *fd, int status)
{
	if (*fd >= 0) {
		unsigned char c = (unsigned char)status;

		if (write(*fd, &c, 1) != 1)
			fs_log("mount status not delivered: %s", strerror(errno));
		close(*fd);
		*fd = -1;
	}
}

/*
 * libfuse ends the session cleanly on SIGHUP, SIGINT and SIGTERM.  Signals
 * whose default action would kill the daemon and leave a stale mount behind
 * ("Transport endpoint is not connected") get a meaning too: SIGQUIT (^\ in
 * a --foreground terminal) ends the session as SIGTERM does, and SIGUSR1,
 * SIGUSR2 and SIGALRM, which no one should send a file system, are ignored.
 * @on false restores the defaults.
 */
static void quiet_signals(bool on)
{
	static const int ignored[] = { SIGUSR1, SIGUSR2, SIGALRM };
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	if (on && sigaction(SIGTERM, NULL, &sa) != 0)
		sa.sa_handler = SIG_DFL;
	sigaction(SIGQUIT, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on ? SIG_IGN : SIG_DFL;
	for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
		sigaction(ignored[i], &sa, NULL);
}

int fs_serve(struct snap *s, const struct fs_opts *o)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *cfg;
	struct fuse_session *se;
	struct fs fs;
	char *mopts = NULL, *fsname = NULL;
	int ret, ready_fd = o->ready_fd;

	memset(&fs, 0, sizeof(fs));
	fs.s = s;
	fs.writeback = o->writeback;
	fs.mountpoint = o->mountpoint;
	fs.root_uid = getuid();
	fs.root_gid = getgid();
	clock_gettime(CLOCK_REALTIME, &fs.start);
	pthread_mutex_init(&fs.fh_lock, NULL);
	fs.next_fh = 1;

	/* libfuse splits -o at commas: the store path's are escaped */
	if (asprintf(&fsname, "fsname=branchfs:%s", o->store) < 0)
		fsname = NULL;
	if (!fsname || fuse_opt_add_opt_escaped(&mopts, fsname) ||
	    fuse_opt_add_opt(&mopts, "subtype=branchfs,default_permissions") ||
	    (getuid() == 0 && fuse_opt_add_opt(&mopts, "allow_other")) ||
	    (o->options && *o->options && fuse_opt_add_opt(&mopts, o->options)) ||
	    fuse_opt_add_arg(&args, "branchfs") || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, mopts) ||
	    (o->debug && fuse_opt_add_arg(&args, "-d"))) {
		ret = -ENOMEM;
		goto out_args;
	}
	se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), &fs);
	if (!se) {
		fs_log("cannot create the FUSE session (bad -o options?)");
		ret = -ENOPROTOOPT; /* the CLI's "bad mount options" */
		goto out_args;
	}
	if (fuse_set_signal_handlers(se) != 0) {
		ret = -EIO;
		goto out_session;
	}
	quiet_signals(true);
	ret = ctl_start(&fs, o->store);
	if (ret < 0)
		goto out_signals;
	if (fuse_session_mount(se, o->mountpoint) != 0) {
		fs_log("cannot mount on %s", o->mountpoint);
		ret = -EIO;
		goto out_ctl;
	}
	if (fs_initio_setup(se) != 0)
		fs_log("cannot install the /dev/fuse shim; writes will be slower");
	if (o->writeback) {
		int r = fs_bdi_raise(o->mountpoint, FS_WRITEBACK_DIRTY_RATIO);

		if (r < 0)
			fs_log("cannot raise the dirty-page limit of the mount "
			       "(max_ratio of its backing device): %s; writes "
			       "will be throttled sooner", strerror(-r));
	}
	fs.se = se;
	ready(&ready_fd, 0);
	cfg = fuse_loop_cfg_create();
	if (!cfg) {
		ret = -ENOMEM;
		goto out_unmount;
	}
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	fuse_loop_cfg_set_idle_threads(cfg, 8);
	fuse_loop_cfg_set_max_threads(cfg, 32);
	ret = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	ret = ret < 0 ? ret : 0;
out_unmount:
	fuse_session_unmount(se);
out_ctl:
	ctl_stop(&fs);
out_signals:
	quiet_signals(false);
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_args:
	fuse_opt_free_args(&args);
	free(mopts);
	free(fsname);
	if (ret < 0)
		ready(&ready_fd, -ret);
	fh_table_free(&fs);
	pthread_mutex_destroy(&fs.fh_lock);
	return ret;
}
