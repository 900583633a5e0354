/* SPDX-License-Identifier: MIT */
/*
 * tests/e2e/bfs_damage.c - damage an unmounted store on purpose, for
 * tests/e2e/corruption.sh.  Not a branchfs command: it writes straight
 * into RocksDB through kv/, as a failing disk or a bug would.
 *
 *   bfs_damage STORE block BRANCH PATH [N]
 *       overwrite the stored block that block N (default 0) of the file
 *       PATH shows in branch BRANCH with other bytes (same key, raw codec)
 *   bfs_damage STORE inode BRANCH PATH
 *       truncate the inode record that BRANCH reads for PATH to 40 bytes
 *   bfs_damage STORE xattr BRANCH PATH NAME VALUE
 *       store xattr NAME of PATH in BRANCH, whatever the name (as a store
 *       written before the mount refused POSIX ACLs holds them)
 *
 * Prints the damaged key's hash (block) or inode number.  Exit 0 done,
 * 1 failed, 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snap/snap_int.h"

static int fail(const char *what, int err)
{
	fprintf(stderr, "bfs_damage: %s: %s\n", what, strerror(-err));
	return 1;
}

/* Inode of @path in tree @t. */
static int walk(struct snap_tree *t, const char *path, uint64_t *ino)
{
	char *copy = strdup(path), *save = NULL, *part;
	struct snap_attr a;
	uint64_t cur = SNAP_ROOT_INO;
	int ret = 0;

	if (!copy)
		return -ENOMEM;
	for (part = strtok_r(copy, "/", &save); part;
	     part = strtok_r(NULL, "/", &save)) {
		ret = snap_lookup(t, cur, part, &a);
		if (ret < 0)
			break;
		cur = a.ino;
	}
	free(copy);
	*ino = cur;
	return ret;
}

/*
 * The key of the version of (@pfx, @obj) that tree @t reads: the newest
 * one at or below each level's epoch, nearest level first.
 */
static int visible_key(struct snap_tree *t, char pfx, const uint8_t *obj,
		       size_t olen, uint8_t *key, size_t *klen, void **val,
		       size_t *vlen)
{
	struct kv *kv = t->s->kv;

	for (int l = 0; l < t->nlevels; l++) {
		uint64_t e = l == 0 && t->br ? atomic_load(&t->br->epoch)
					     : t->lv[l].e;
		uint8_t lo[SNAP_KEY_MAX];
		size_t ll = mkkey(lo, pfx, t->lv[l].b, obj, olen, e);
		struct kv_iter *it = kv_iter_new(kv, KV_CF_META, lo, ll, NULL, 0);
		bool found = false;

		kv_iter_seek_first(it);
		if (kv_iter_valid(it)) {
			size_t kl, vl;
			const uint8_t *k = kv_iter_key(it, &kl);
			const void *v = kv_iter_value(it, &vl);

			if (kl == ll && !memcmp(k, lo, ll - 8)) {
				memcpy(key, k, kl);
				*klen = kl;
				*val = malloc(vl ? vl : 1);
				memcpy(*val, v, vl);
				*vlen = vl;
				found = true;
			}
		}
		kv_iter_free(it);
		if (found)
			return 0;
	}
	return -ENOENT;
}

int main(int argc, char **argv)
{
	uint8_t obj[16], key[SNAP_KEY_MAX];
	struct kv_batch *b;
	struct snap_tree *t;
	struct snap *s;
	uint64_t ino, blk = 0;
	uint32_t id;
	size_t kl, vl;
	void *val;
	int ret;

	bool xattr = argc == 7 && !strcmp(argv[2], "xattr");

	if (!xattr && (argc < 5 || argc > 6 ||
		       (strcmp(argv[2], "block") && strcmp(argv[2], "inode")))) {
		fprintf(stderr, "usage: bfs_damage STORE block|inode BRANCH PATH [N]"
				" | STORE xattr BRANCH PATH NAME VALUE\n");
		return 2;
	}
	if (argc == 6)
		blk = strtoull(argv[5], NULL, 10);
	ret = snap_open(argv[1], xattr ? 0 : SNAP_OPEN_CHECK, &s);
	if (ret < 0)
		return fail("open", ret);
	ret = snap_branch_find(s, argv[3], &id);
	if (ret == 0)
		ret = snap_tree_get(s, id, &t);
	if (ret < 0)
		return fail(argv[3], ret);
	ret = walk(t, argv[4], &ino);
	if (ret < 0)
		return fail(argv[4], ret);
	if (xattr) {
		ret = snap_setxattr(t, ino, argv[5], argv[6], strlen(argv[6]), 0);
		if (ret == 0)
			ret = snap_sync(s);
		snap_tree_put(t);
		snap_close(s);
		return ret < 0 ? fail("setxattr", ret) : 0;
	}
	bfs_put_u64(obj, ino);
	bfs_put_u64(obj + 8, blk);
	b = kv_batch_new();
	if (!strcmp(argv[2], "block")) {
		uint8_t bad[1 + BFS_BLOCK_SIZE];

		ret = visible_key(t, BFS_PFX_BMAP, obj, 16, key, &kl, &val, &vl);
		if (ret == 0 && vl != BFS_HASH_SIZE)
			ret = -ENOENT; /* a hole */
		if (ret < 0)
			return fail("block map", ret);
		bad[0] = BFS_CODEC_RAW;
		memset(bad + 1, 0x5a, BFS_BLOCK_SIZE);
		kv_batch_put(b, KV_CF_BLOCKS, val, BFS_HASH_SIZE, bad,
			     sizeof(bad));
		for (size_t i = 0; i < BFS_HASH_SIZE; i++)
			printf("%02x", ((uint8_t *)val)[i]);
		printf("\n");
	} else {
		ret = visible_key(t, BFS_PFX_INODE, obj, 8, key, &kl, &val, &vl);
		if (ret == 0 && vl < 40)
			ret = -EINVAL;
		if (ret < 0)
			return fail("inode", ret);
		kv_batch_put(b, KV_CF_META, key, kl, val, 40);
		printf("%llu\n", (unsigned long long)ino);
	}
	free(val);
	ret = kv_commit(s->kv, b);
	if (ret == 0)
		ret = kv_sync(s->kv);
	kv_batch_free(b);
	snap_tree_put(t);
	snap_close(s);
	return ret < 0 ? fail("commit", ret) : 0;
}
