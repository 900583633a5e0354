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

#endif /* BFS_FS_H */
