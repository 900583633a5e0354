/* SPDX-License-Identifier: MIT */
/*
 * snap/snap.h - branches, snapshots and per-branch inode trees of a store.
 *
 * A store holds trees: every branch is a writable tree, every snapshot a
 * read-only one.  Both are named by a 32-bit id (main is 1).  Objects in a
 * tree are store-wide inode numbers: an inode keeps its number in every
 * tree that inherited it, so (tree id, ino) is unique in a mount.
 *
 * Every function returns 0 (or a count) on success and a negative errno on
 * failure.  Every metadata change is one atomic RocksDB write batch.  All
 * functions are thread-safe; locking is internal (see snap_int.h for the
 * lock order).
 *
 * This header does not include libfuse nor kv/: the fs layer and the CLI
 * use only what is declared here.
 */
#ifndef BFS_SNAP_H
#define BFS_SNAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct snap;
struct snap_tree;

#define SNAP_ROOT_INO 1u       /* root directory of every tree */
#define SNAP_MAIN_ID 1u        /* the branch "main" */
#define SNAP_NAME_MAX 200u     /* branch and snapshot names, bytes */
#define SNAP_INO_BITS 40       /* fs packs (tree id << 40 | ino) */
#define SNAP_ID_MAX ((1u << 24) - 1)

struct snap_attr {
	uint64_t ino;
	uint32_t mode, uid, gid, nlink;
	uint64_t size;
	uint64_t blocks; /* 512-byte units really used */
	uint64_t rdev;
	struct timespec atime, mtime, ctime;
};

/* setattr mask */
enum snap_set {
	SNAP_SET_MODE = 1 << 0,
	SNAP_SET_UID = 1 << 1,
	SNAP_SET_GID = 1 << 2,
	SNAP_SET_SIZE = 1 << 3,
	SNAP_SET_ATIME = 1 << 4,
	SNAP_SET_MTIME = 1 << 5,
	SNAP_SET_ATIME_NOW = 1 << 6,
	SNAP_SET_MTIME_NOW = 1 << 7,
	SNAP_SET_CTIME = 1 << 8,
};

enum snap_open_flags {
	/* no writes; no lock unless SNAP_OPEN_LOCK_SHARED (stats on a live
	 * store) */
	SNAP_OPEN_READONLY = 1 << 0,
	/* For snap_check (snap/check.h): takes the lock but changes nothing at
	 * open or close (no orphan purge, pruning or GC), and opens a store
	 * whose branch records or ancestry are damaged (those trees are left
	 * out) so that the check can report them. */
	SNAP_OPEN_CHECK = 1 << 1,
	/* no background collector/pruner thread: space comes back only at
	 * snap_prune / snap_gc / snap_close (deterministic tests, one-shot
	 * commands) */
	SNAP_OPEN_NO_BACKGROUND = 1 << 2,
	/* with SNAP_OPEN_READONLY: hold the store lock shared (-EBUSY while
	 * a mount or a writing command holds it), so that no writer changes
	 * the files under the reader */
	SNAP_OPEN_LOCK_SHARED = 1 << 3,
	/* opening for writing on a disk without the room it needs may give
	 * up the disk-full reserve (snap_open_room): for the commands that
	 * give space back (branch/snapshot delete, gc) */
	SNAP_OPEN_USE_RESERVE = 1 << 4,
};

/* ---- stores ---------------------------------------------------------- */

/*
 * Create a new store in directory @path (created if absent; an existing
 * directory must be empty, else -ENOTEMPTY).  The store gets branch main
 * whose root directory belongs to @uid/@gid with mode 0755.
 */
int snap_store_init(const char *path, uint32_t uid, uint32_t gid);

/*
 * Open the store at @path.  Unless SNAP_OPEN_READONLY, takes the store
 * lock (shared with SNAP_OPEN_READONLY | SNAP_OPEN_LOCK_SHARED): -EBUSY if
 * another process holds it (a mount or another command), -ENOSPC without
 * the room to open for writing (snap_open_room),
 * -ENOENT / -EINVAL if @path is not a store, -EPROTONOSUPPORT for an
 * unknown format.  Purges orphaned inodes left by a crash.  On success *out
 * is owned by the caller until snap_close().
 */
int snap_open(const char *path, unsigned flags, struct snap **out);

/* Sync, free every block that is no longer referenced, close, unlock. */
void snap_close(struct snap *s);

/* Make every change so far durable (group-committed WAL fsync). */
int snap_sync(struct snap *s);
/* fsync of a file or directory of tree @t: durable are at least every
 * change made to @t's branch (and everything committed before them);
 * returns at once when that already is.  Errors as snap_sync(). */
int snap_sync_tree(struct snap_tree *t);

/* Run the block garbage collector over up to @max queued blocks (0 = all).
 * Call snap_prune() first to free the space of deleted branches/snapshots. */
int snap_gc(struct snap *s, size_t max);

struct snap_stats {
	uint64_t logical_bytes; /* bytes of all block references */
	uint64_t stored_bytes;  /* compressed bytes of distinct blocks */
	uint64_t blocks;        /* distinct stored blocks */
	uint64_t refs;          /* block references */
	uint64_t gc_pending;    /* freed blocks not yet collected */
	uint64_t db_bytes;      /* RocksDB SST + WAL bytes on disk */
	uint64_t branches, snapshots;
};
int snap_stats(struct snap *s, struct snap_stats *st);

/* Compact the database (space of deleted keys goes back to the disk). */
int snap_compact(struct snap *s);

/*
 * The disk-full reserve: a file STORE/reserve of SNAP_RESERVE_BYTES that a
 * writable snap_open() creates while the filesystem has room for it.  When
 * the disk fills up, RocksDB refuses every write, and to recover it needs
 * free space of about one memtable (32 MiB) - so even deleting a branch to
 * make room would fail; and a compaction that gives deleted data back needs
 * room for the live data it rewrites.  snap_reserve_release() deletes the
 * file (true if there was one; @why is logged), snap_reserve_take() creates
 * it again if there is room.
 */
#define SNAP_RESERVE_BYTES (64ull << 20)
bool snap_reserve_release(struct snap *s, const char *why);
void snap_reserve_take(struct snap *s);
/* Room opening the store at @path for writing needs on its disk, and the
 * room there is (kv_open_room); 0 or -errno.  Without that room,
 * snap_open() for writing fails -ENOSPC, unless SNAP_OPEN_USE_RESERVE and
 * giving up the reserve makes the room. */
int snap_open_room(const char *path, uint64_t *need, uint64_t *avail);
/* Less than @bytes available (f_bavail) on the store's filesystem, and at
 * least that many; both false when statvfs fails.  "Low" is under
 * SNAP_DISK_LOW. */
bool snap_disk_below(struct snap *s, uint64_t bytes);
bool snap_disk_has(struct snap *s, uint64_t bytes);
#define SNAP_DISK_LOW (4 * SNAP_RESERVE_BYTES)

struct snap_statfs {
	uint64_t bsize, blocks, bfree, bavail, files, ffree;
};
/* Capacity of the filesystem holding the store; files = inodes allocated. */
int snap_statfs(struct snap *s, struct snap_statfs *st);

/*
 * Make writes, truncates and owner changes of regular files clear their
 * set-user-ID bit (and set-group-ID when group-executable), as the kernel
 * does for local filesystems; the FUSE layer turns this on when it takes
 * over that duty from the kernel (FUSE_HANDLE_KILLPRIV_V2).  @killed (may
 * be NULL) is called after a commit that cleared such bits, so that cached
 * attributes can be dropped.
 */
void snap_set_killpriv(struct snap *s, bool on,
		       void (*killed)(void *arg, uint32_t tree, uint64_t ino),
		       void *arg);

/* ---- trees ----------------------------------------------------------- */

/*
 * Take a reference on tree @id (branch or snapshot): -ENOENT if none.
 * The reference keeps the tree usable until snap_tree_put(), even if the
 * branch is deleted meanwhile.
 */
int snap_tree_get(struct snap *s, uint32_t id, struct snap_tree **out);
void snap_tree_put(struct snap_tree *t);
uint32_t snap_tree_id(const struct snap_tree *t);
bool snap_tree_readonly(const struct snap_tree *t);

/* Name of record @id as a parent in listings: a live branch or snapshot's
 * name; for a deleted branch still kept as an ancestor, the name of the
 * live branch a reset made of it (same name and origin); else -ENOENT
 * (shown as "(deleted)": a new branch that took the name is not it). */
int snap_parent_name(struct snap *s, uint32_t id, char *buf, size_t size);

/* Id of the branch named @name: -ENOENT if none. */
int snap_branch_find(struct snap *s, const char *name, uint32_t *id);

struct snap_branch_info {
	uint32_t id;
	uint32_t parent_id;    /* where it was made from (origin); 0: none */
	uint64_t parent_epoch;
	uint32_t base_id;      /* what it reads through now: the origin, or */
	uint64_t base_epoch;   /* the snapshot of its last reset --to */
	uint64_t epoch;        /* current epoch (branches); 0 for snapshots */
	uint64_t created_ns;
	bool is_snapshot;
	char name[SNAP_NAME_MAX + 1];
};

/*
 * List branches (or snapshots) sorted by name: *out is a malloc()ed array
 * of *n entries that the caller frees with free().
 */
int snap_branch_list(struct snap *s, bool snapshots,
		     struct snap_branch_info **out, size_t *n);

/*
 * Branch and snapshot names: 1..SNAP_NAME_MAX bytes of valid UTF-8, no '/',
 * no control characters (C0, DEL, C1), not starting with '.' or '-'; unique
 * across live branches and snapshots.  -EINVAL / -ENAMETOOLONG.
 */
int snap_name_check(const char *name);

/*
 * Snapshot branch @branch as @name: O(1), one instant across all its files
 * (concurrent operations on the branch land wholly before or after), durable
 * when it returns.  -ENOENT no such branch, -EISDIR @branch is a snapshot,
 * -EEXIST name taken.  *id (may be NULL) gets the new snapshot's id.
 */
int snap_snapshot_create(struct snap *s, const char *branch, const char *name,
			 uint32_t *id);
/*
 * New branch @name from @from (a branch, which is snapshotted implicitly at
 * this instant, or a snapshot; NULL = main).  O(1), durable on return.
 */
int snap_branch_create(struct snap *s, const char *name, const char *from,
		       uint32_t *id);
/*
 * Delete a branch (snapshot).  -EBUSY if files in it are open, unless
 * @force.  Snapshots and branches made from it keep working; its space is
 * given back by the pruner (in the background, or at snap_close / snap_gc).
 */
int snap_branch_delete(struct snap *s, const char *name, bool force);
int snap_snapshot_delete(struct snap *s, const char *name, bool force);
/*
 * Reset branch @name to its branch point, or to snapshot @to: its content
 * becomes exactly that instant's.  The branch gets a new id (*newid); -EINVAL
 * for a branch without a parent and no @to; -EBUSY if open, unless @force.
 */
int snap_branch_reset(struct snap *s, const char *name, const char *to,
		      bool force, uint32_t *newid);
/* Rename a branch or a snapshot; -EBUSY while files on it are open (their
 * paths change under the program using them), unless @force. */
int snap_branch_rename(struct snap *s, const char *oldname,
		       const char *newname, bool force);
struct snap_du_ent {
	uint32_t id;
	bool is_snapshot;
	char name[SNAP_NAME_MAX + 1];
	uint64_t exclusive; /* stored bytes freed by deleting it alone */
	uint64_t shared;    /* stored bytes of other blocks its tree shows */
};
/*
 * Space per live branch and snapshot (branches first, each group sorted by
 * name): *out is malloc()ed (caller frees), *total the stored bytes of the
 * whole store.  @want_shared also computes shared (a scan per tree).
 */
int snap_du(struct snap *s, bool want_shared, struct snap_du_ent **out,
	    size_t *n, uint64_t *total);

/*
 * Run one branch/snapshot command given as words (the control-socket
 * protocol, fs/ctl_proto.h): snapshot-create BRANCH NAME, snapshot-list,
 * snapshot-delete NAME [--force], branch-create NAME [FROM], branch-list,
 * branch-delete NAME [--force], branch-reset NAME [SNAPSHOT] [--force],
 * branch-rename OLD NEW, du, gc, pgcheck BRANCH.  *reply is a malloc()ed
 * text (data lines, or an error message when the return is -errno).  The
 * create requests also carry pgcheck's "warning=" lines for the source.
 */
int snap_command(struct snap *s, int argc, char **argv, char **reply);

/* Delete versions that no branch or snapshot needs any more (after
 * deletions); the freed blocks go at the next snap_gc. */
int snap_prune(struct snap *s);

/* ---- metadata -------------------------------------------------------- */

int snap_getattr(struct snap_tree *t, uint64_t ino, struct snap_attr *a);
/* Look @name up in directory @dir: -ENOENT, -ENOTDIR, -ENAMETOOLONG. */
int snap_lookup(struct snap_tree *t, uint64_t dir, const char *name,
		struct snap_attr *a);

/*
 * Create @name in @dir: regular file, fifo, socket, device or directory by
 * the type bits of @mode.  Owner @uid/@gid, except that in a setgid
 * directory the group is the directory's (and a new directory inherits
 * S_ISGID).  -EEXIST if @name exists.  *a describes the new inode.
 */
int snap_mknod(struct snap_tree *t, uint64_t dir, const char *name,
	       uint32_t mode, uint64_t rdev, uint32_t uid, uint32_t gid,
	       struct snap_attr *a);
int snap_symlink(struct snap_tree *t, uint64_t dir, const char *name,
		 const char *target, uint32_t uid, uint32_t gid,
		 struct snap_attr *a);
/* New name @name in @dir for inode @ino (not a directory: -EPERM). */
int snap_link(struct snap_tree *t, uint64_t ino, uint64_t dir,
	      const char *name, struct snap_attr *a);
int snap_unlink(struct snap_tree *t, uint64_t dir, const char *name);
int snap_rmdir(struct snap_tree *t, uint64_t dir, const char *name);

#define SNAP_RENAME_NOREPLACE (1u << 0) /* same values as RENAME_* */
#define SNAP_RENAME_EXCHANGE (1u << 1)
int snap_rename(struct snap_tree *t, uint64_t olddir, const char *oldname,
		uint64_t newdir, const char *newname, unsigned flags);

/* Copy a symlink's target into @buf (NUL-terminated); returns its length,
 * -ENAMETOOLONG if @size is too small, -EINVAL if not a symlink. */
int snap_readlink(struct snap_tree *t, uint64_t ino, char *buf, size_t size);

/* Change the attributes named by @set (enum snap_set) from @in. */
int snap_setattr(struct snap_tree *t, uint64_t ino, const struct snap_attr *in,
		 unsigned set, struct snap_attr *out);

struct snap_dirent {
	uint64_t ino;
	uint32_t type; /* S_IFMT bits */
	char *name;    /* points into the listing's storage */
};

/*
 * The whole listing of directory @dir, sorted by name, without "." and
 * "..": *out is one malloc()ed block (entries and names) that the caller
 * frees with free().  Entries present during the whole call appear exactly
 * once.
 */
int snap_readdir(struct snap_tree *t, uint64_t dir, struct snap_dirent **out,
		 size_t *n);
/* Parent directory of directory @dir (the root is its own parent). */
int snap_parent(struct snap_tree *t, uint64_t dir, uint64_t *parent);

/* ---- data ------------------------------------------------------------ */

/* Read up to @size bytes at @off; returns the count (0 at or past EOF). */
ssize_t snap_read(struct snap_tree *t, uint64_t ino, void *buf, size_t size,
		  uint64_t off);
/* Write @size bytes at @off, growing the file as needed; returns @size. */
ssize_t snap_write(struct snap_tree *t, uint64_t ino, const void *buf,
		   size_t size, uint64_t off);
/* The same; *@blocks_changed (may be NULL) tells whether the file's count
 * of stored blocks (st_blocks) changed: a hole filled or made. */
ssize_t snap_write_ex(struct snap_tree *t, uint64_t ino, const void *buf,
		      size_t size, uint64_t off, bool *blocks_changed);
/* @mode: 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE;
 * anything else -EOPNOTSUPP. */
int snap_fallocate(struct snap_tree *t, uint64_t ino, int mode, uint64_t off,
		   uint64_t len);
/*
 * Copy @len bytes from (@tin, @ino_in, @off_in) to (@tout, @ino_out,
 * @off_out).  Whole blocks are shared (new references, no data copied);
 * unaligned edges are copied.  Stops at the source's EOF; returns bytes.
 */
ssize_t snap_copy_range(struct snap_tree *tin, uint64_t ino_in, uint64_t off_in,
			struct snap_tree *tout, uint64_t ino_out,
			uint64_t off_out, size_t len);
/* SEEK_DATA / SEEK_HOLE from @off: *res gets the offset; -ENXIO past EOF. */
int snap_lseek(struct snap_tree *t, uint64_t ino, uint64_t off, int whence,
	       uint64_t *res);

/* ---- xattrs ---------------------------------------------------------- */

/* Returns the value's length; with @size 0 only the length.  -ENODATA,
 * -ERANGE when @size is too small. */
ssize_t snap_getxattr(struct snap_tree *t, uint64_t ino, const char *name,
		      void *buf, size_t size);
/* @flags: XATTR_CREATE / XATTR_REPLACE or 0. */
int snap_setxattr(struct snap_tree *t, uint64_t ino, const char *name,
		  const void *val, size_t size, int flags);
/* NUL-separated names; returns the total length (with @size 0, only it). */
ssize_t snap_listxattr(struct snap_tree *t, uint64_t ino, char *buf,
		       size_t size);
int snap_removexattr(struct snap_tree *t, uint64_t ino, const char *name);

/* ---- open files ------------------------------------------------------ */

/*
 * Note that @ino is open (snap_inode_open) or closed (snap_inode_release).
 * An inode whose last link goes away while it is open stays readable and
 * writable until its last release, then is purged; a crash meanwhile
 * leaves an orphan record that the next snap_open() purges.
 */
void snap_inode_open(struct snap_tree *t, uint64_t ino);
void snap_inode_release(struct snap_tree *t, uint64_t ino);
/* Number of inodes currently open in branch @id (all trees if 0). */
size_t snap_open_count(struct snap *s, uint32_t id);

#endif /* BFS_SNAP_H */
