/* SPDX-License-Identifier: MIT */
/* fs/fs_int.h - internals of the FUSE daemon. */
#ifndef BFS_FS_INT_H
#define BFS_FS_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "snap/snap.h"

struct fuse_session;

/*
 * An open file.  Handles are ids from a 64-bit counter, never reused, so a
 * request carrying a stale id finds nothing instead of another file.
 * Lifetime: created by open/create, referenced by each request while it
 * runs (fh_get/fh_put), freed after release once no request holds it.
 */
struct fs_fh {
	uint64_t id;
	struct snap_tree *t; /* reference held by the handle */
	uint64_t ino;
	int flags;
	int refs;          /* protected by fs->fh_lock */
	bool released;     /* protected by fs->fh_lock */
	struct fs_fh *next;
};

/* An open directory: its listing, built at the first readdir (offset 0). */
struct fs_dirh {
	pthread_mutex_t lock;
	uint64_t node;
	uint32_t tree;
	bool filled;
	struct snap_dirent *ents; /* tree dirs */
	size_t n;
	uint64_t parent;
	struct snap_branch_info *synth; /* mount root / .snapshots */
	size_t nsynth;
};

#define FS_FH_BUCKETS 1024

struct fs {
	struct snap *s;
	struct fuse_session *se;
	uint32_t root_uid, root_gid;
	struct timespec start;
	bool writeback;                     /* asked for (fs_opts) */
	bool writeback_on;                  /* and granted by the kernel */
	const char *mountpoint;

	pthread_mutex_t fh_lock;
	uint64_t next_fh;                   /* protected by fh_lock */
	struct fs_fh *fh[FS_FH_BUCKETS];    /* protected by fh_lock */

	/* control socket */
	int ctl_fd;
	int ctl_wake[2];
	pthread_t ctl_thread;
	bool ctl_running;
	/* the store directory (it follows a rename of the store) and the
	 * socket's inode there: ctl_stop removes that socket, not another
	 * store's that took the old path */
	int ctl_dfd;
	dev_t ctl_dev;
	ino_t ctl_ino;
};

void fs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int fh_new(struct fs *fs, struct snap_tree *t, uint64_t ino, int flags,
	   uint64_t *id);
struct fs_fh *fh_get(struct fs *fs, uint64_t id);
void fh_put(struct fs *fs, struct fs_fh *fh);
void fh_release(struct fs *fs, uint64_t id);
void fh_table_free(struct fs *fs);

/* Install the /dev/fuse shim of initio.c (after fuse_session_mount). */
int fs_initio_setup(struct fuse_session *se);
extern bool fs_killpriv_v2;

int ctl_start(struct fs *fs, const char *store);
void ctl_stop(struct fs *fs);

#endif /* BFS_FS_INT_H */
