/* SPDX-License-Identifier: MIT */
/* fs/handles.c - open file handles and the daemon's log. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs_int.h"

void fs_log(const char *fmt, ...)
{
	char buf[1024];
	struct tm tm;
	time_t now = time(NULL);
	va_list ap;
	size_t n;

	localtime_r(&now, &tm);
	n = strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S branchfs: ", &tm);
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	n = strlen(buf);
	buf[n++] = '\n';
	/* nowhere else to report a failed write */
	(void)!write(STDERR_FILENO, buf, n);
}

static struct fs_fh **bucket(struct fs *fs, uint64_t id)
{
	return &fs->fh[id % FS_FH_BUCKETS];
}

int fh_new(struct fs *fs, struct snap_tree *t, uint64_t ino, int flags,
	   uint64_t *id)
{
	struct fs_fh *fh = calloc(1, sizeof(*fh));
	struct snap_tree *ref;

	if (!fh)
		return -ENOMEM;
	if (snap_tree_get(fs->s, snap_tree_id(t), &ref) < 0) {
		free(fh);
		return -ENOENT;
	}
	fh->t = ref;
	fh->ino = ino;
	fh->flags = flags;
	fh->refs = 1;
	snap_inode_open(ref, ino);
	pthread_mutex_lock(&fs->fh_lock);
	fh->id = fs->next_fh++;
	fh->next = *bucket(fs, fh->id);
	*bucket(fs, fh->id) = fh;
	pthread_mutex_unlock(&fs->fh_lock);
	*id = fh->id;
	return 0;
}

struct fs_fh *fh_get(struct fs *fs, uint64_t id)
{
	struct fs_fh *fh;

	pthread_mutex_lock(&fs->fh_lock);
	for (fh = *bucket(fs, id); fh; fh = fh->next)
		if (fh->id == id && !fh->released)
			break;
	if (fh)
		fh->refs++;
	pthread_mutex_unlock(&fs->fh_lock);
	return fh;
}

static void fh_free(struct fs_fh *fh)
{
	snap_inode_release(fh->t, fh->ino);
	snap_tree_put(fh->t);
	free(fh);
}

void fh_put(struct fs *fs, struct fs_fh *fh)
{
	struct fs_fh **pp;
	bool last;

	pthread_mutex_lock(&fs->fh_lock);
	last = --fh->refs == 0;
	if (last) {
		for (pp = bucket(fs, fh->id); *pp; pp = &(*pp)->next) {
			if (*pp == fh) {
				*pp = fh->next;
				break;
			}
		}
	}
	pthread_mutex_unlock(&fs->fh_lock);
	if (last)
		fh_free(fh);
}

void fh_release(struct fs *fs, uint64_t id)
{
	struct fs_fh *fh;

	pthread_mutex_lock(&fs->fh_lock);
	for (fh = *bucket(fs, id); fh; fh = fh->next)
		if (fh->id == id && !fh->released)
			break;
	if (fh)
		fh->released = true;
	pthread_mutex_unlock(&fs->fh_lock);
	if (fh)
		fh_put(fs, fh); /* the open's own reference */
}

void fh_table_free(struct fs *fs)
{
	for (int i = 0; i < FS_FH_BUCKETS; i++) {
		while (fs->fh[i]) {
			struct fs_fh *fh = fs->fh[i];

			fs->fh[i] = fh->next;
			fh_free(fh);
		}
	}
}
