/* SPDX-License-Identifier: MIT */
/*
 * fs/fs.h - the FUSE daemon of a store, and its control socket.
 *
 * Node ids: (tree id << SNAP_INO_BITS) | ino.  Node 1 is the synthetic mount
 * root (tree 0), listing one directory per branch plus ".snapshots"; node 2
 * is ".snapshots", listing one read-only directory per snapshot.  st_ino is
 * the node id, so it is unique across the branches of a mount.
 */
#ifndef BFS_FS_H
#define BFS_FS_H

#include <limits.h>
#include <stdbool.h>

struct snap;

struct fs_opts {
	const char *store;      /* store directory (absolute) */
	const char *mountpoint; /* absolute */
	const char *options;    /* extra -o options, may be NULL */
	bool foreground;
	bool debug;
	/* Kernel writeback cache: write(2) lands in the page cache and reaches
	 * the store at writeback, close or fsync (and a snapshot syncfs()es
	 * the mount first, best effort).  Snapshots are then crash-consistent
	 * like a power cut (fsynced data and closed files are in them) instead
	 * of containing every write(2) that returned. */
	bool writeback;
	int ready_fd;           /* written once the mount is live, or -1 */
};

/*
 * Serve @s at o->mountpoint until unmounted or signalled.  Writes one
 * status byte to o->ready_fd once the mount is live (0) or the mount failed
 * (errno value) and closes it.  Returns 0 after a clean unmount, else a
 * negative errno.  @s stays owned by the caller.
 */
int fs_serve(struct snap *s, const struct fs_opts *o);

/* Whether resolved path @p is @dir or below it. */
bool fs_path_within(const char *p, const char *dir);

struct fs_mount_info {
	char mp[PATH_MAX];    /* mountpoint */
	char store[PATH_MAX]; /* the store it serves ("" if unknown) */
	long owner;           /* uid that mounted it, -1 unknown */
	unsigned dev_major, dev_minor; /* st_dev: names its backing device */
};

/*
 * Find the branchfs mount at @path in /proc/self/mountinfo (@above: at
 * @path or at a directory above it); with several, the last (the one on
 * top).  1 found (*@mi filled), 0 not found, or a negative errno.
 */
int fs_mount_find(const char *path, bool above, struct fs_mount_info *mi);

/* Dirty-page limit of a --writeback mount: set the max_ratio of the
 * backing device of the branchfs mount at @mountpoint (made with the mount,
 * at the kernel's 1%) to @ratio percent.  0 or a negative errno. */
#define FS_WRITEBACK_DIRTY_RATIO 10u
int fs_bdi_raise(const char *mountpoint, unsigned ratio);

#endif /* BFS_FS_H */
