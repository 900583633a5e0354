/* SPDX-License-Identifier: MIT */
/*
 * tests/snap/snap_env.h - the fresh-store fixture shared by the snap/ unit
 * tests: a store in its own mkdtemp() directory, open, with main's tree.
 */
#ifndef BFS_TEST_SNAP_ENV_H
#define BFS_TEST_SNAP_ENV_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "snap/snap.h"

struct env {
	char dir[64];    /* mkdtemp() directory */
	char store[96];  /* dir/store */
	struct snap *s;
	struct snap_tree *t; /* main */
};

static inline int env_rm_entry(const char *path, const struct stat *st,
			       int flag, struct FTW *ftw)
{
	return remove(path);
}

static inline void rm_rf(const char *dir)
{
	nftw(dir, env_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * cmocka setup: a new store under a directory made from @tmpl (a
 * mkdtemp() template), root owned by @uid/@gid.  Returns 0, or -1 with
 * nothing left behind.
 */
static inline int env_setup(void **state, const char *tmpl, uint32_t uid,
			    uint32_t gid)
{
	struct env *e = calloc(1, sizeof(*e));

	if (!e)
		return -1;
	snprintf(e->dir, sizeof(e->dir), "%s", tmpl);
	if (!mkdtemp(e->dir)) {
		free(e);
		return -1;
	}
	snprintf(e->store, sizeof(e->store), "%s/store", e->dir);
	if (snap_store_init(e->store, uid, gid) != 0 ||
	    snap_open(e->store, 0, &e->s) != 0) {
		rm_rf(e->dir);
		free(e);
		return -1;
	}
	if (snap_tree_get(e->s, SNAP_MAIN_ID, &e->t) != 0) {
		snap_close(e->s);
		rm_rf(e->dir);
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

/* cmocka teardown: close the store and remove its directory. */
static inline int env_teardown(void **state)
{
	struct env *e = *state;

	snap_tree_put(e->t);
	snap_close(e->s);
	rm_rf(e->dir);
	free(e);
	return 0;
}

/* Close the store (as at unmount); env_open() opens it again. */
static inline void env_close(struct env *e)
{
	snap_tree_put(e->t);
	e->t = NULL;
	snap_close(e->s);
	e->s = NULL;
}

static inline void env_open(struct env *e)
{
	assert_int_equal(snap_open(e->store, 0, &e->s), 0);
	assert_int_equal(snap_tree_get(e->s, SNAP_MAIN_ID, &e->t), 0);
}

/* Close and reopen the store (persistence). */
static inline void env_reopen(struct env *e)
{
	env_close(e);
	env_open(e);
}

#endif /* BFS_TEST_SNAP_ENV_H */
