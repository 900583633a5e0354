/* SPDX-License-Identifier: MIT */
/*
 * tests/kv/test_kv.c - unit tests of kv/ on real RocksDB in a temporary
 * directory under /tmp (removed afterwards).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <rocksdb/c.h>
#include <xxhash.h>
#include <zstd.h>

#include "kv/kv.h"
#include "kv/kv_int.h"

struct env {
	char dir[64];
	char db[96];
	struct kv *kv;
};

/* ---- helpers ------------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	return remove(path);
}

static void rm_rf(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));

	if (!e)
		return -1;
	strcpy(e->dir, "/tmp/bfs-kv-test.XXXXXX");
	if (!mkdtemp(e->dir)) {
		free(e);
		return -1;
	}
	snprintf(e->db, sizeof(e->db), "%s/db", e->dir);
	if (kv_open(e->db, KV_CREATE, &e->kv)) {
		rm_rf(e->dir);
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	kv_close(e->kv);
	rm_rf(e->dir);
	free(e);
	return 0;
}

static void reopen(struct env *e, enum kv_open_flags flags)
{
	kv_close(e->kv);
	e->kv = NULL;
	assert_int_equal(kv_open(e->db, flags, &e->kv), 0);
}

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64* */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1DULL;
}

static void fill_random(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;

	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = rng_next(&s);

		memcpy(p + i, &v, len - i < 8 ? len - i : 8);
	}
}

/* A compressible block: text-like, different per @seed. */
static void fill_text(void *buf, uint64_t seed)
{
	char *p = buf;

	for (size_t i = 0; i < BFS_BLOCK_SIZE; i++)
		p[i] = (char)('a' + (i / 64 + seed) % 26);
	snprintf(p, 32, "block %llu", (unsigned long long)seed);
}

static void put(struct kv *kv, enum kv_cf cf, const char *k, const char *v)
{
	struct kv_batch *b = kv_batch_new();

	assert_non_null(b);
	kv_batch_put(b, cf, k, strlen(k), v, strlen(v));
	assert_int_equal(kv_commit(kv, b), 0);
	kv_batch_free(b);
}

static int ref_commit(struct kv *kv, const void *data,
		      uint8_t hash[BFS_HASH_SIZE])
{
	struct kv_batch *b = kv_batch_new();
	int ret;

	assert_non_null(b);
	ret = kv_block_ref(kv, b, data, hash);
	if (!ret)
		ret = kv_commit(kv, b);
	kv_batch_free(b);
	return ret;
}

static int unref_commit(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE])
{
	struct kv_batch *b = kv_batch_new();
	int ret;

	assert_non_null(b);
	kv_block_unref(kv, b, hash);
	ret = kv_commit(kv, b);
	kv_batch_free(b);
	return ret;
}

static int64_t refcount(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE])
{
	int64_t c = -999;

	assert_int_equal(kv_block_refcount(kv, hash, &c), 0);
	return c;
}

static size_t stored_len(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE])
{
	void *v;
	size_t vlen;

	assert_int_equal(kv_get(kv, KV_CF_BLOCKS, hash, BFS_HASH_SIZE, &v,
				&vlen), 0);
	free(v);
	return vlen;
}

/* ---- open, create, format ----------------------------------------------- */

static void test_open_create_reopen(void **state)
{
	struct env *e = *state;
	void *v;
	size_t vlen;

	assert_int_equal(kv_get(e->kv, KV_CF_SYS, BFS_KEY_FORMAT,
				strlen(BFS_KEY_FORMAT), &v, &vlen), 0);
	assert_int_equal(vlen, 4);
	assert_int_equal(bfs_get_u32(v), BFS_FORMAT_VERSION);
	free(v);

	put(e->kv, KV_CF_META, "hello", "world");
	assert_int_equal(kv_sync(e->kv), 0);
	reopen(e, 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "hello", 5, &v, &vlen), 0);
	assert_int_equal(vlen, 5);
	assert_memory_equal(v, "world", 5);
	free(v);

	/* Committed but not synced is still there after a clean close. */
	put(e->kv, KV_CF_META, "unsynced", "x");
	reopen(e, 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "unsynced", 8, &v, &vlen),
			 0);
	free(v);
}

static void test_create_existing_fails(void **state)
{
	struct env *e = *state;
	struct kv *kv2 = NULL;

	kv_close(e->kv);
	e->kv = NULL;
	assert_int_equal(kv_open(e->db, KV_CREATE, &kv2), -EEXIST);
	assert_null(kv2);
	reopen(e, 0);
}

static void test_open_missing(void **state)
{
	struct env *e = *state;
	struct kv *kv2 = NULL;
	char path[160];

	snprintf(path, sizeof(path), "%s/nothing", e->dir);
	assert_int_equal(kv_open(path, 0, &kv2), -ENOENT);
	assert_int_equal(kv_open(path, KV_READONLY, &kv2), -ENOENT);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(kv_open(path, 0, &kv2), -ENOENT);
	assert_null(kv2);
	assert_int_equal(kv_open(path, KV_CREATE | KV_READONLY, &kv2),
			 -EINVAL);
	/* The database is locked by e->kv. */
	assert_int_equal(kv_open(e->db, 0, &kv2), -EBUSY);
	assert_null(kv2);
}

static void test_format_version(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	struct kv *kv2 = NULL;
	uint8_t v[4];

	bfs_put_u32(v, 99);
	kv_batch_put(b, KV_CF_SYS, BFS_KEY_FORMAT, strlen(BFS_KEY_FORMAT), v,
		     sizeof(v));
	assert_int_equal(kv_commit(e->kv, b), 0);
	kv_close(e->kv);
	e->kv = NULL;
	assert_int_equal(kv_open(e->db, 0, &kv2), -EPROTONOSUPPORT);
	assert_int_equal(kv_open(e->db, KV_READONLY, &kv2), -EPROTONOSUPPORT);
	assert_null(kv2);

	kv_batch_free(b);
}

static void test_format_missing(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	struct kv *kv2 = NULL;

	kv_batch_delete(b, KV_CF_SYS, BFS_KEY_FORMAT, strlen(BFS_KEY_FORMAT));
	assert_int_equal(kv_commit(e->kv, b), 0);
	kv_batch_free(b);
	kv_close(e->kv);
	e->kv = NULL;
	assert_int_equal(kv_open(e->db, 0, &kv2), -EINVAL);
	assert_null(kv2);
}

static void test_not_ours(void **state)
{
	struct env *e = *state;
	rocksdb_options_t *o = rocksdb_options_create();
	struct kv *kv2 = NULL;
	char path[160], *err = NULL;
	rocksdb_t *db;

	snprintf(path, sizeof(path), "%s/plain", e->dir);
	rocksdb_options_set_create_if_missing(o, 1);
	db = rocksdb_open(o, path, &err);
	assert_null(err);
	rocksdb_close(db);
	rocksdb_options_destroy(o);
	/* Our column families are missing. */
	assert_int_equal(kv_open(path, 0, &kv2), -EINVAL);
	assert_null(kv2);
}

static void test_readonly(void **state)
{
	struct env *e = *state;
	struct kv *ro = NULL;
	struct kv_batch *b;
	void *v;
	size_t vlen;

	put(e->kv, KV_CF_META, "k", "v");
	assert_int_equal(kv_sync(e->kv), 0);
	reopen(e, 0);
	/* Read-only takes no lock: works beside the writer. */
	assert_int_equal(kv_open(e->db, KV_READONLY, &ro), 0);
	assert_int_equal(kv_get(ro, KV_CF_META, "k", 1, &v, &vlen), 0);
	free(v);
	b = kv_batch_new();
	kv_batch_put(b, KV_CF_META, "k2", 2, "v", 1);
	assert_int_equal(kv_commit(ro, b), -EROFS);
	assert_int_equal(kv_batch_count(b), 0);
	assert_int_equal(kv_sync(ro), 0);
	assert_int_equal(kv_gc(ro, 0, NULL), -EROFS);
	kv_batch_free(b);
	kv_close(ro);
}

/* kv_open_room: the WAL left to replay counts; a clean close leaves none,
 * a read-only close leaves it as it was. */
static void test_open_room(void **state)
{
	struct env *e = *state;
	struct kv *ro = NULL;
	uint64_t need0, need, avail;
	struct kv_batch *b = kv_batch_new();
	uint8_t val[4096];
	void *v;
	size_t vlen;

	memset(val, 'x', sizeof(val));
	assert_int_equal(kv_open_room(e->db, &need0, &avail), 0);
	assert_true(avail > 0);
	for (int i = 0; i < 256; i++) {
		char k[16];

		snprintf(k, sizeof(k), "k%d", i);
		kv_batch_put(b, KV_CF_META, k, strlen(k), val, sizeof(val));
	}
	assert_int_equal(kv_commit(e->kv, b), 0);
	assert_int_equal(kv_sync(e->kv), 0);
	assert_int_equal(kv_open_room(e->db, &need, &avail), 0);
	assert_true(need >= need0 + 256 * sizeof(val)); /* in the WAL */
	/* a read-only open and close writes nothing */
	assert_int_equal(kv_open(e->db, KV_READONLY, &ro), 0);
	kv_close(ro);
	assert_int_equal(kv_open_room(e->db, &need, &avail), 0);
	assert_true(need >= need0 + 256 * sizeof(val));
	/* a clean close flushes: nothing left to replay (measured before
	 * the next open, which would flush what it replays), nothing lost */
	kv_close(e->kv);
	e->kv = NULL;
	assert_int_equal(kv_open_room(e->db, &need, &avail), 0);
	assert_true(need < need0 + sizeof(val));
	assert_int_equal(kv_open(e->db, 0, &e->kv), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "k255", 4, &v, &vlen), 0);
	assert_int_equal(vlen, sizeof(val));
	free(v);
	kv_batch_free(b);
}

/* ---- point reads, batches, iterators ------------------------------------ */

static void test_get_put_delete(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	void *v;
	size_t vlen;

	assert_int_equal(kv_get(e->kv, KV_CF_META, "a", 1, &v, &vlen),
			 -ENOENT);
	kv_batch_put(b, KV_CF_META, "a", 1, "1", 1);
	kv_batch_put(b, KV_CF_META, "empty", 5, NULL, 0);
	kv_batch_put(b, KV_CF_SYS, "a", 1, "sys", 3);
	assert_int_equal(kv_batch_count(b), 3);
	assert_int_equal(kv_commit(e->kv, b), 0);
	assert_int_equal(kv_batch_count(b), 0);

	assert_int_equal(kv_get(e->kv, KV_CF_META, "a", 1, &v, &vlen), 0);
	assert_int_equal(vlen, 1);
	assert_memory_equal(v, "1", 1);
	free(v);
	/* Families are separate key spaces. */
	assert_int_equal(kv_get(e->kv, KV_CF_SYS, "a", 1, &v, &vlen), 0);
	assert_int_equal(vlen, 3);
	free(v);
	/* An empty value exists (tombstones in meta are empty values). */
	assert_int_equal(kv_get(e->kv, KV_CF_META, "empty", 5, &v, &vlen), 0);
	assert_int_equal(vlen, 0);
	assert_non_null(v);
	free(v);

	/* The batch is reusable after a commit. */
	kv_batch_delete(b, KV_CF_META, "a", 1);
	kv_batch_put(b, KV_CF_META, "b", 1, "2", 1);
	assert_int_equal(kv_commit(e->kv, b), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "a", 1, &v, &vlen),
			 -ENOENT);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "b", 1, &v, &vlen), 0);
	free(v);

	/* An empty commit is fine; a freed uncommitted batch is discarded. */
	assert_int_equal(kv_commit(e->kv, b), 0);
	kv_batch_put(b, KV_CF_META, "c", 1, "3", 1);
	kv_batch_free(b);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "c", 1, &v, &vlen),
			 -ENOENT);
	kv_batch_free(NULL);
}

static void test_large_batch(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	static char big[100000];
	char key[16];
	void *v;
	size_t vlen;

	memset(big, 'x', sizeof(big));
	for (int i = 0; i < 50; i++) {
		snprintf(key, sizeof(key), "big%02d", i);
		kv_batch_put(b, KV_CF_META, key, strlen(key), big, sizeof(big));
	}
	assert_int_equal(kv_batch_count(b), 50);
	assert_int_equal(kv_commit(e->kv, b), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "big49", 5, &v, &vlen), 0);
	assert_int_equal(vlen, sizeof(big));
	assert_memory_equal(v, big, sizeof(big));
	free(v);
	kv_batch_free(b);
}

static void test_iterate_bounds(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	struct kv_iter *it;
	char lower[2] = "c", upper[2] = "f";
	const char *k;
	size_t klen, vlen, n;
	char key[2] = "a";

	for (char c = 'a'; c <= 'z'; c++) {
		key[0] = c;
		kv_batch_put(b, KV_CF_META, key, 1, key, 1);
	}
	assert_int_equal(kv_commit(e->kv, b), 0);

	it = kv_iter_new(e->kv, KV_CF_META, lower, 1, upper, 1);
	assert_non_null(it);
	/* The bounds were copied. */
	lower[0] = 'a';
	upper[0] = 'z';
	n = 0;
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		k = kv_iter_key(it, &klen);
		assert_int_equal(klen, 1);
		assert_int_equal(k[0], 'c' + (int)n);
		assert_int_equal(((const char *)kv_iter_value(it, &vlen))[0],
				 k[0]);
		n++;
	}
	assert_int_equal(n, 3);
	assert_int_equal(kv_iter_status(it), 0);
	kv_iter_seek(it, "d", 1);
	assert_true(kv_iter_valid(it));
	assert_int_equal(((const char *)kv_iter_key(it, &klen))[0], 'd');
	kv_iter_seek(it, "x", 1);
	assert_false(kv_iter_valid(it));
	kv_iter_free(it);

	/* Unbounded, and a snapshot taken at creation. */
	it = kv_iter_new(e->kv, KV_CF_META, NULL, 0, NULL, 0);
	kv_batch_put(b, KV_CF_META, "zz", 2, "late", 4);
	kv_batch_delete(b, KV_CF_META, "a", 1);
	assert_int_equal(kv_commit(e->kv, b), 0);
	n = 0;
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it))
		n++;
	assert_int_equal(n, 26);
	assert_int_equal(kv_iter_status(it), 0);
	kv_iter_free(it);

	/* Only a lower bound; seek below it lands on the bound. */
	it = kv_iter_new(e->kv, KV_CF_META, "y", 1, NULL, 0);
	kv_iter_seek(it, "b", 1);
	assert_true(kv_iter_valid(it));
	assert_int_equal(((const char *)kv_iter_key(it, &klen))[0], 'y');
	n = 0;
	for (; kv_iter_valid(it); kv_iter_next(it))
		n++;
	assert_int_equal(n, 3); /* y z zz */
	kv_iter_free(it);
	kv_iter_free(NULL);
	kv_batch_free(b);
}

/* ---- blocks ------------------------------------------------------------- */

static void test_hash_format(void **state)
{
	uint8_t block[BFS_BLOCK_SIZE], hash[BFS_HASH_SIZE];
	XXH128_hash_t h;

	fill_random(block, sizeof(block), 1);
	kv_block_hash(block, hash);
	h = XXH3_128bits(block, sizeof(block));
	assert_int_equal(bfs_get_u64(hash), h.high64);
	assert_int_equal(bfs_get_u64(hash + 8), h.low64);
}

static void test_holes(void **state)
{
	struct env *e = *state;
	uint8_t block[BFS_BLOCK_SIZE], hash[BFS_HASH_SIZE];
	struct kv_batch *b = kv_batch_new();

	memset(block, 0, sizeof(block));
	assert_true(kv_block_is_zero(block));
	block[BFS_BLOCK_SIZE - 1] = 1;
	assert_false(kv_block_is_zero(block));
	block[BFS_BLOCK_SIZE - 1] = 0;
	block[0] = 0x80;
	assert_false(kv_block_is_zero(block));
	block[0] = 0;
	block[4097] = 3;
	assert_false(kv_block_is_zero(block));
	block[4097] = 0;
	/* A hole is never stored. */
	assert_int_equal(kv_block_ref(e->kv, b, block, hash), -EINVAL);
	kv_batch_free(b);
}

static void test_dedup(void **state)
{
	struct env *e = *state;
	uint8_t block[BFS_BLOCK_SIZE], h1[BFS_HASH_SIZE], h2[BFS_HASH_SIZE];
	uint8_t h3[BFS_HASH_SIZE], out[BFS_BLOCK_SIZE];
	struct kv_batch *b = kv_batch_new();
	struct kv_stats st;

	fill_text(block, 7);
	assert_int_equal(ref_commit(e->kv, block, h1), 0);
	assert_int_equal(ref_commit(e->kv, block, h2), 0);
	assert_memory_equal(h1, h2, BFS_HASH_SIZE);
	assert_int_equal(refcount(e->kv, h1), 2);

	/* Twice in one batch, then by hash. */
	assert_int_equal(kv_block_ref(e->kv, b, block, h3), 0);
	assert_int_equal(kv_block_ref(e->kv, b, block, h3), 0);
	assert_int_equal(kv_block_ref_hash(e->kv, b, h1), 0);
	assert_int_equal(kv_commit(e->kv, b), 0);
	assert_int_equal(refcount(e->kv, h1), 5);

	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.blocks, 1);
	assert_int_equal(st.refs, 5);
	assert_int_equal(st.logical_bytes, 5 * BFS_BLOCK_SIZE);
	assert_int_equal(st.unique_bytes, BFS_BLOCK_SIZE);
	assert_int_equal(st.stored_bytes, stored_len(e->kv, h1));

	assert_int_equal(kv_block_read(e->kv, h1, out), 0);
	assert_memory_equal(out, block, sizeof(block));

	/* Survives a reopen and a compaction (merge operands folded). */
	reopen(e, 0);
	assert_int_equal(kv_compact(e->kv), 0);
	assert_int_equal(refcount(e->kv, h1), 5);
	kv_batch_free(b);
}

static void test_ref_hash_missing(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	uint8_t hash[BFS_HASH_SIZE];
	int64_t c = 1;

	memset(hash, 0xab, sizeof(hash));
	assert_int_equal(kv_block_ref_hash(e->kv, b, hash), -EIO);
	assert_int_equal(kv_block_refcount(e->kv, hash, &c), 0);
	assert_int_equal(c, 0);
	kv_batch_free(b);
}

static void test_compression(void **state)
{
	struct env *e = *state;
	uint8_t block[BFS_BLOCK_SIZE], out[BFS_BLOCK_SIZE];
	uint8_t hc[BFS_HASH_SIZE], hr[BFS_HASH_SIZE];
	struct kv_stats st;
	void *v;
	size_t vlen, clen;

	fill_text(block, 1);
	assert_int_equal(ref_commit(e->kv, block, hc), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_BLOCKS, hc, BFS_HASH_SIZE, &v,
				&vlen), 0);
	assert_int_equal(((uint8_t *)v)[0], BFS_CODEC_ZSTD);
	assert_true(vlen < BFS_BLOCK_SIZE / 4);
	clen = vlen;
	free(v);
	assert_int_equal(kv_block_read(e->kv, hc, out), 0);
	assert_memory_equal(out, block, sizeof(block));

	fill_random(block, sizeof(block), 2);
	assert_int_equal(ref_commit(e->kv, block, hr), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_BLOCKS, hr, BFS_HASH_SIZE, &v,
				&vlen), 0);
	assert_int_equal(vlen, BFS_BLOCK_SIZE + 1);
	assert_int_equal(((uint8_t *)v)[0], BFS_CODEC_RAW);
	assert_memory_equal((uint8_t *)v + 1, block, sizeof(block));
	free(v);
	assert_int_equal(kv_block_read(e->kv, hr, out), 0);
	assert_memory_equal(out, block, sizeof(block));

	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.blocks, 2);
	assert_int_equal(st.stored_bytes, clen + BFS_BLOCK_SIZE + 1);
}

static void expect_corrupt(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE])
{
	uint8_t out[BFS_BLOCK_SIZE], zero[BFS_BLOCK_SIZE];

	memset(out, 0x5a, sizeof(out));
	memset(zero, 0, sizeof(zero));
	assert_int_equal(kv_block_read(kv, hash, out), -EIO);
	assert_memory_equal(out, zero, sizeof(out));
}

static void overwrite(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE],
		      const void *val, size_t vlen)
{
	struct kv_batch *b = kv_batch_new();

	kv_batch_put(b, KV_CF_BLOCKS, hash, BFS_HASH_SIZE, val, vlen);
	assert_int_equal(kv_commit(kv, b), 0);
	kv_batch_free(b);
}

static void test_corruption(void **state)
{
	struct env *e = *state;
	uint8_t a[BFS_BLOCK_SIZE], r[BFS_BLOCK_SIZE];
	uint8_t ha[BFS_HASH_SIZE], hb[BFS_HASH_SIZE], hr[BFS_HASH_SIZE];
	uint8_t *va, *vb, *vr, missing[BFS_HASH_SIZE];
	size_t la, lb, lr;

	fill_text(a, 10);
	assert_int_equal(ref_commit(e->kv, a, ha), 0);
	fill_text(a, 11);
	assert_int_equal(ref_commit(e->kv, a, hb), 0);
	fill_random(r, sizeof(r), 12);
	assert_int_equal(ref_commit(e->kv, r, hr), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_BLOCKS, ha, BFS_HASH_SIZE,
				(void **)&va, &la), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_BLOCKS, hb, BFS_HASH_SIZE,
				(void **)&vb, &lb), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_BLOCKS, hr, BFS_HASH_SIZE,
				(void **)&vr, &lr), 0);

	/* Another block's valid value under A's key: hash mismatch. */
	overwrite(e->kv, ha, vb, lb);
	expect_corrupt(e->kv, ha);

	/* One flipped payload byte in a raw block. */
	vr[100] ^= 0x01;
	overwrite(e->kv, hr, vr, lr);
	expect_corrupt(e->kv, hr);

	/* A truncated zstd frame. */
	overwrite(e->kv, ha, va, la - 3);
	expect_corrupt(e->kv, ha);
	/* A flipped byte inside the zstd frame. */
	va[la / 2] ^= 0xff;
	overwrite(e->kv, ha, va, la);
	expect_corrupt(e->kv, ha);
	/* Unknown codec, wrong raw length, empty value. */
	vb[0] = 7;
	overwrite(e->kv, hb, vb, lb);
	expect_corrupt(e->kv, hb);
	vr[0] = BFS_CODEC_RAW;
	overwrite(e->kv, hr, vr, lr - 1);
	expect_corrupt(e->kv, hr);
	overwrite(e->kv, hr, vr, 0);
	expect_corrupt(e->kv, hr);
	/* A zstd frame decompressing to less than a block. */
	{
		uint8_t small[64];
		size_t n;

		small[0] = BFS_CODEC_ZSTD;
		n = ZSTD_compress(small + 1, sizeof(small) - 1, "abc", 3, 1);
		assert_false(ZSTD_isError(n));
		overwrite(e->kv, hb, small, 1 + n);
		expect_corrupt(e->kv, hb);
	}
	/* Missing. */
	memset(missing, 0x11, sizeof(missing));
	expect_corrupt(e->kv, missing);

	free(va);
	free(vb);
	free(vr);
}

/* ---- freeing ------------------------------------------------------------ */

static void test_gc_frees(void **state)
{
	struct env *e = *state;
	uint8_t a[BFS_BLOCK_SIZE], b2[BFS_BLOCK_SIZE], out[BFS_BLOCK_SIZE];
	uint8_t ha[BFS_HASH_SIZE], hb[BFS_HASH_SIZE];
	struct kv_stats st;
	size_t freed = 99;

	fill_text(a, 20);
	fill_random(b2, sizeof(b2), 21);
	assert_int_equal(ref_commit(e->kv, a, ha), 0);
	assert_int_equal(ref_commit(e->kv, b2, hb), 0);
	assert_int_equal(ref_commit(e->kv, b2, hb), 0);

	assert_int_equal(unref_commit(e->kv, ha), 0);
	assert_int_equal(unref_commit(e->kv, hb), 0);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.blocks, 1);
	assert_int_equal(st.refs, 1);
	assert_int_equal(st.gc_pending, 2);
	/* Not freed until the collector runs. */
	assert_int_equal(kv_block_read(e->kv, ha, out), 0);

	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 1);
	expect_corrupt(e->kv, ha);
	assert_int_equal(refcount(e->kv, ha), 0);
	/* B still has a reference. */
	assert_int_equal(kv_block_read(e->kv, hb, out), 0);
	assert_memory_equal(out, b2, sizeof(b2));
	assert_int_equal(refcount(e->kv, hb), 1);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.blocks, 1);
	assert_int_equal(st.gc_pending, 0);

	assert_int_equal(unref_commit(e->kv, hb), 0);
	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 1);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.refs, 0);
	assert_int_equal(st.stored_bytes, 0);
	assert_int_equal(st.gc_pending, 0);
	expect_corrupt(e->kv, hb);

	/* Storing it again after it was freed works. */
	assert_int_equal(ref_commit(e->kv, a, ha), 0);
	assert_int_equal(refcount(e->kv, ha), 1);
	assert_int_equal(kv_block_read(e->kv, ha, out), 0);
	assert_memory_equal(out, a, sizeof(a));

	/* An empty queue. */
	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 0);
}

/* Store @n text blocks (seeds @seed...), then drop their only reference:
 * @n entries in the GC queue, hashes in @hashes. */
static void queue_blocks(struct kv *kv, int n, uint64_t seed,
			 uint8_t (*hashes)[BFS_HASH_SIZE])
{
	uint8_t block[BFS_BLOCK_SIZE];
	struct kv_batch *b = kv_batch_new();

	for (int i = 0; i < n; i++) {
		fill_text(block, seed + (uint64_t)i);
		assert_int_equal(kv_block_ref(kv, b, block, hashes[i]), 0);
	}
	assert_int_equal(kv_commit(kv, b), 0);
	for (int i = 0; i < n; i++)
		kv_block_unref(kv, b, hashes[i]);
	assert_int_equal(kv_commit(kv, b), 0);
	kv_batch_free(b);
}

static void test_gc_max(void **state)
{
	struct env *e = *state;
	enum { N = 600 };
	static uint8_t hashes[N][BFS_HASH_SIZE];
	struct kv_stats st;
	size_t freed;

	queue_blocks(e->kv, N, 1000, hashes);
	assert_int_equal(kv_gc(e->kv, 100, &freed), 0);
	assert_int_equal(freed, 100);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.gc_pending, N - 100);
	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	assert_int_equal(freed, N - 100);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.gc_pending, 0);
	assert_int_equal(st.blocks, 0);
}

/* Drop one reference to @hash and queue it for GC the way snap/check.c's
 * repair does: with the records themselves, not kv_block_unref(). */
static void unref_behind_gc(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE])
{
	struct kv_batch *b = kv_batch_new();
	uint8_t v[BFS_REF_VALUE_SIZE], q[1 + BFS_HASH_SIZE] = { BFS_PFX_GCQ };

	kv_ref_encode(v, -1, 0);
	kv_batch_merge(b, KV_CF_REFS, hash, BFS_HASH_SIZE, v, sizeof(v));
	memcpy(q + 1, hash, BFS_HASH_SIZE);
	kv_batch_put(b, KV_CF_SYS, q, sizeof(q), NULL, 0);
	assert_int_equal(kv_commit(kv, b), 0);
	kv_batch_free(b);
}

/*
 * kv_gc_if_queued() walks the queue only when kv_block_unref() ran since
 * the last complete pass; kv_gc() always does.
 */
static void test_gc_if_queued(void **state)
{
	struct env *e = *state;
	enum { N = 600 };
	static uint8_t hashes[N][BFS_HASH_SIZE];
	uint8_t blk[BFS_BLOCK_SIZE], out[BFS_BLOCK_SIZE];
	uint8_t h1[BFS_HASH_SIZE], h2[BFS_HASH_SIZE], h3[BFS_HASH_SIZE];
	struct kv_stats st;
	size_t freed = 99;

	/* No pass yet since the open: the first one walks. */
	fill_text(blk, 31);
	assert_int_equal(ref_commit(e->kv, blk, h1), 0);
	unref_behind_gc(e->kv, h1);
	assert_int_equal(kv_gc_if_queued(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 1);
	expect_corrupt(e->kv, h1);

	/* Clean: an entry queued behind its back waits for kv_gc(). */
	fill_text(blk, 32);
	assert_int_equal(ref_commit(e->kv, blk, h2), 0);
	unref_behind_gc(e->kv, h2);
	assert_int_equal(kv_gc_if_queued(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 0);
	assert_int_equal(kv_block_read(e->kv, h2, out), 0);
	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 1);
	expect_corrupt(e->kv, h2);

	/* kv_block_unref() makes the next one walk. */
	fill_text(blk, 33);
	assert_int_equal(ref_commit(e->kv, blk, h3), 0);
	assert_int_equal(unref_commit(e->kv, h3), 0);
	assert_int_equal(kv_gc_if_queued(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 1);
	expect_corrupt(e->kv, h3);
	assert_int_equal(kv_gc_if_queued(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 0);

	/* A pass cut short by @max is not complete: the next one walks on. */
	queue_blocks(e->kv, N, 2000, hashes);
	for (int done = 0; done < N; done += 256) {
		assert_int_equal(kv_gc_if_queued(e->kv, 256, &freed), 0);
		assert_int_equal(freed, N - done < 256 ? N - done : 256);
	}
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.gc_pending, 0);
	assert_int_equal(st.blocks, 0);

	/* What was queued before a close is collected after the open. */
	fill_text(blk, 34);
	assert_int_equal(ref_commit(e->kv, blk, h1), 0);
	unref_behind_gc(e->kv, h1);
	reopen(e, 0);
	assert_int_equal(kv_gc_if_queued(e->kv, 0, &freed), 0);
	assert_int_equal(freed, 1);
	expect_corrupt(e->kv, h1);
}

static void test_compact_reclaims(void **state)
{
	struct env *e = *state;
	enum { N = 2000 };
	uint8_t block[BFS_BLOCK_SIZE], hash[BFS_HASH_SIZE];
	struct kv_batch *b = kv_batch_new();
	struct kv_stats st;
	uint64_t full;
	size_t freed;

	for (int i = 0; i < N; i++) {
		fill_random(block, sizeof(block), 5000 + (uint64_t)i);
		assert_int_equal(kv_block_ref(e->kv, b, block, hash), 0);
		kv_block_unref(e->kv, b, hash);
		if (i % 100 == 99)
			assert_int_equal(kv_commit(e->kv, b), 0);
	}
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_true(st.wal_bytes > (uint64_t)N * BFS_BLOCK_SIZE);
	assert_int_equal(kv_compact(e->kv), 0);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	full = st.sst_bytes;
	assert_true(full > (uint64_t)N * BFS_BLOCK_SIZE);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.gc_pending, N);

	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	assert_int_equal(freed, N);
	assert_int_equal(kv_compact(e->kv), 0);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_true(st.sst_bytes < full / 10);
	kv_batch_free(b);
}

static void test_stats(void **state)
{
	struct env *e = *state;
	uint8_t block[BFS_BLOCK_SIZE], h[3][BFS_HASH_SIZE];
	struct kv_stats st;
	uint64_t stored = 0;

	for (int i = 0; i < 3; i++) {
		if (i == 2)
			fill_random(block, sizeof(block), 30);
		else
			fill_text(block, 30 + (uint64_t)i);
		for (int j = 0; j <= i; j++)
			assert_int_equal(ref_commit(e->kv, block, h[i]), 0);
		stored += stored_len(e->kv, h[i]);
	}
	assert_int_equal(unref_commit(e->kv, h[2]), 0);

	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.blocks, 3);
	assert_int_equal(st.refs, 1 + 2 + 2);
	assert_int_equal(st.logical_bytes, 5 * BFS_BLOCK_SIZE);
	assert_int_equal(st.unique_bytes, 3 * BFS_BLOCK_SIZE);
	assert_int_equal(st.stored_bytes, stored);
	assert_int_equal(st.gc_pending, 1);
	assert_true(st.wal_bytes > stored);
	assert_int_equal(st.sst_bytes, 0); /* all in memtables */

	reopen(e, 0); /* recovery flushes the memtables */
	assert_int_equal(kv_compact(e->kv), 0);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_true(st.sst_bytes > stored);
	assert_int_equal(st.refs, 5);
	assert_int_equal(st.stored_bytes, stored);
}

/* ---- group commit ------------------------------------------------------- */

struct sync_arg {
	struct kv *kv;
	int id;
	int iters;
	atomic_int *failures;
};

static void *sync_worker(void *p)
{
	struct sync_arg *a = p;
	struct kv_batch *b = kv_batch_new();
	char key[32];

	for (int i = 0; i < a->iters; i++) {
		snprintf(key, sizeof(key), "t%d-%d", a->id, i);
		kv_batch_put(b, KV_CF_META, key, strlen(key), key, strlen(key));
		if (kv_commit(a->kv, b) || kv_sync(a->kv))
			atomic_fetch_add(a->failures, 1);
	}
	kv_batch_free(b);
	return NULL;
}

static void test_group_commit(void **state)
{
	struct env *e = *state;
	enum { T = 8, ITERS = 200 };
	pthread_t th[T];
	struct sync_arg args[T];
	atomic_int failures = 0;
	uint64_t syncs;
	void *v;
	size_t vlen;

	for (int i = 0; i < T; i++) {
		args[i] = (struct sync_arg){ e->kv, i, ITERS, &failures };
		assert_int_equal(pthread_create(&th[i], NULL, sync_worker,
						&args[i]), 0);
	}
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&failures), 0);
	syncs = kv_sync_count(e->kv);
	print_message("group commit: %d commit+sync pairs, %llu WAL syncs\n",
		      T * ITERS, (unsigned long long)syncs);
	assert_true(syncs <= (uint64_t)T * ITERS);
	assert_true(syncs >= 1);

	/* Nothing new committed: no further fsync. */
	assert_int_equal(kv_sync(e->kv), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs);

	reopen(e, 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "t7-199", 6, &v, &vlen), 0);
	free(v);
}

/* Tickets: kv_sync_to() syncs only when a commit up to its ticket is not
 * yet durable; kv_thread_ticket() is this thread's last commit. */
static void *other_thread_put(void *arg)
{
	put(arg, KV_CF_META, "other", "x");
	return NULL;
}

static void test_sync_to(void **state)
{
	struct env *e = *state;
	uint64_t t1, t2, syncs;
	pthread_t th;
	char dir[] = "/tmp/bfs-kv-other.XXXXXX";
	struct kv *other;

	put(e->kv, KV_CF_META, "a", "1");
	t1 = kv_thread_ticket(e->kv);
	put(e->kv, KV_CF_META, "b", "2");
	t2 = kv_thread_ticket(e->kv);
	assert_int_equal(t2, t1 + 1);

	/* syncing up to t1 makes t1 (at least) durable: one fsync */
	syncs = kv_sync_count(e->kv);
	assert_int_equal(kv_sync_to(e->kv, t1), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 1);
	/* the leader synced everything committed: t2 is covered too */
	assert_int_equal(kv_sync_to(e->kv, t2), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 1);

	/* another thread commits: this thread's ticket does not move, and
	 * syncing up to it needs no fsync ... */
	assert_int_equal(pthread_create(&th, NULL, other_thread_put, e->kv), 0);
	pthread_join(th, NULL);
	assert_int_equal(kv_thread_ticket(e->kv), t2);
	assert_int_equal(kv_sync_to(e->kv, t2), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 1);
	/* ... while a full sync does one */
	assert_int_equal(kv_sync(e->kv), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 2);

	/* a ticket beyond what was committed waits for nothing */
	put(e->kv, KV_CF_META, "c", "3");
	assert_int_equal(kv_sync_to(e->kv, UINT64_MAX), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 3);

	/* a commit to another store: this store's answer is "everything" */
	assert_non_null(mkdtemp(dir));
	assert_int_equal(kv_open(dir, KV_CREATE, &other), 0);
	put(other, KV_CF_META, "z", "9");
	put(e->kv, KV_CF_META, "d", "4");
	t1 = kv_thread_ticket(e->kv);
	put(other, KV_CF_META, "y", "8");
	/* other's own tickets are 1 and 2: answering with those would be
	 * wrong, and below t1 */
	assert_true(t1 > 2);
	assert_int_equal(kv_thread_ticket(e->kv), t1);
	kv_close(other);
	rm_rf(dir);
}

/* ---- fault injection ---------------------------------------------------- */

static void test_fault_write(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	bool fired;
	void *v;
	size_t vlen;

	kv_fault_set(e->kv, KV_FAULT_WRITE, 3, ENOSPC, false);
	kv_batch_put(b, KV_CF_META, "w1", 2, "1", 1);
	assert_int_equal(kv_commit(e->kv, b), 0);
	/* Reads are not counted. */
	assert_int_equal(kv_get(e->kv, KV_CF_META, "w1", 2, &v, &vlen), 0);
	free(v);
	kv_batch_put(b, KV_CF_META, "w2", 2, "2", 1);
	assert_int_equal(kv_commit(e->kv, b), 0);
	assert_int_equal(kv_fault_calls(e->kv, &fired), 2);
	assert_false(fired);
	kv_batch_put(b, KV_CF_META, "w3", 2, "3", 1);
	assert_int_equal(kv_commit(e->kv, b), -ENOSPC);
	assert_int_equal(kv_batch_count(b), 0);
	assert_int_equal(kv_fault_calls(e->kv, &fired), 3);
	assert_true(fired);
	/* Poisoned: every later write fails, even with the fault gone. */
	kv_fault_set(e->kv, 0, 0, 0, false);
	kv_batch_put(b, KV_CF_META, "w4", 2, "4", 1);
	assert_int_equal(kv_commit(e->kv, b), -EIO);
	assert_int_equal(kv_gc(e->kv, 0, NULL), -EIO);
	/* Reads still work. */
	assert_int_equal(kv_get(e->kv, KV_CF_META, "w2", 2, &v, &vlen), 0);
	free(v);

	reopen(e, 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "w2", 2, &v, &vlen), 0);
	free(v);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "w3", 2, &v, &vlen),
			 -ENOENT);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "w4", 2, &v, &vlen),
			 -ENOENT);
	kv_batch_put(b, KV_CF_META, "w5", 2, "5", 1);
	assert_int_equal(kv_commit(e->kv, b), 0);
	kv_batch_free(b);
}

static void test_fault_write_releases_lock(void **state)
{
	struct env *e = *state;
	uint8_t block[BFS_BLOCK_SIZE], hash[BFS_HASH_SIZE];
	struct kv_batch *b = kv_batch_new();

	fill_text(block, 40);
	kv_fault_set(e->kv, KV_FAULT_WRITE, 1, ENOMEM, false);
	assert_int_equal(kv_block_ref(e->kv, b, block, hash), 0);
	assert_int_equal(kv_commit(e->kv, b), -ENOMEM);
	/* The block lock was released: a writer can take it. */
	assert_int_equal(pthread_rwlock_trywrlock(&e->kv->block_lock), 0);
	pthread_rwlock_unlock(&e->kv->block_lock);
	assert_int_equal(refcount(e->kv, hash), 0);

	/* kv_batch_free() releases it too. */
	reopen(e, 0);
	assert_int_equal(kv_block_ref(e->kv, b, block, hash), 0);
	assert_int_equal(pthread_rwlock_trywrlock(&e->kv->block_lock), EBUSY);
	/* GC from the thread holding it would deadlock: refused. */
	assert_int_equal(kv_gc(e->kv, 0, NULL), -EDEADLK);
	kv_batch_free(b);
	assert_int_equal(kv_gc(e->kv, 0, NULL), 0);
	assert_int_equal(pthread_rwlock_trywrlock(&e->kv->block_lock), 0);
	pthread_rwlock_unlock(&e->kv->block_lock);
}

static void test_fault_read(void **state)
{
	struct env *e = *state;
	uint8_t block[BFS_BLOCK_SIZE], hash[BFS_HASH_SIZE];
	uint8_t out[BFS_BLOCK_SIZE], zero[BFS_BLOCK_SIZE];
	struct kv_iter *it;
	bool fired;
	void *v;
	size_t vlen;

	put(e->kv, KV_CF_META, "r", "1");
	fill_text(block, 50);
	assert_int_equal(ref_commit(e->kv, block, hash), 0);
	memset(zero, 0, sizeof(zero));

	/* The 2nd read fails once. */
	kv_fault_set(e->kv, KV_FAULT_READ, 2, EIO, false);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "r", 1, &v, &vlen), 0);
	free(v);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "r", 1, &v, &vlen), -EIO);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "r", 1, &v, &vlen), 0);
	free(v);
	assert_int_equal(kv_fault_calls(e->kv, &fired), 3);
	assert_true(fired);

	/* Persistent from the 1st: block reads and iterators too. */
	kv_fault_set(e->kv, KV_FAULT_READ, 1, EIO, true);
	memset(out, 0x77, sizeof(out));
	assert_int_equal(kv_block_read(e->kv, hash, out), -EIO);
	assert_memory_equal(out, zero, sizeof(out));
	it = kv_iter_new(e->kv, KV_CF_META, NULL, 0, NULL, 0);
	assert_non_null(it);
	kv_iter_seek_first(it);
	assert_false(kv_iter_valid(it));
	kv_iter_seek(it, "r", 1);
	assert_false(kv_iter_valid(it));
	assert_int_equal(kv_iter_status(it), -EIO);
	kv_iter_free(it);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "r", 1, &v, &vlen), -EIO);
	assert_int_equal(kv_fault_calls(e->kv, NULL), 3);
	/* Writes are not affected by a read fault. */
	put(e->kv, KV_CF_META, "r2", "2");

	/* Disarmed. */
	kv_fault_set(e->kv, KV_FAULT_READ, 0, 0, false);
	assert_int_equal(kv_block_read(e->kv, hash, out), 0);
	assert_memory_equal(out, block, sizeof(out));
	/* Counting without failing (nth 0). */
	assert_int_equal(kv_fault_calls(e->kv, &fired), 1);
	assert_false(fired);
}

static void test_fault_sync(void **state)
{
	struct env *e = *state;
	bool fired;

	put(e->kv, KV_CF_META, "s", "1");
	kv_fault_set(e->kv, KV_FAULT_SYNC | KV_FAULT_WRITE, 2, EIO, false);
	assert_int_equal(kv_sync(e->kv), 0);            /* call 1 */
	assert_int_equal(kv_sync(e->kv), -EIO);         /* call 2 */
	put(e->kv, KV_CF_META, "s2", "2");              /* call 3 */
	assert_int_equal(kv_sync(e->kv), 0);            /* call 4 */
	assert_int_equal(kv_fault_calls(e->kv, &fired), 4);
	assert_true(fired);
}

/*
 * A WAL error recorded (by a failed write or sync, wal_err) stops every
 * later sync that has something to sync, without touching the WAL, even
 * for a caller that was already waiting when the error came: the check is
 * made by each would-be leader.  Commits all synced before stay a success.
 * A full disk (ENOSPC) is the exception: the sync goes through a write,
 * which RocksDB refuses until it has recovered and takes after (here it
 * never failed), and that clears the error, as a commit does.
 */
static void test_sync_after_wal_error(void **state)
{
	struct env *e = *state;
	uint64_t syncs, gen;

	put(e->kv, KV_CF_META, "w1", "1");
	gen = atomic_load(&e->kv->wal_err) >> 32;
	atomic_store(&e->kv->wal_err, (gen + 1) << 32 | EIO);
	syncs = kv_sync_count(e->kv);
	assert_int_equal(kv_sync(e->kv), -EIO);
	assert_int_equal(kv_sync(e->kv), -EIO);
	assert_int_equal(kv_sync_count(e->kv), syncs); /* WAL left alone */
	/* a commit that starts after the failure succeeds: RocksDB took it
	 * on a recovered WAL, so the error is cleared and syncs go on */
	put(e->kv, KV_CF_META, "w2", "2");
	assert_int_equal(kv_sync(e->kv), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 1);
	/* an error after everything was synced: nothing is at risk */
	gen = atomic_load(&e->kv->wal_err) >> 32;
	atomic_store(&e->kv->wal_err, (gen + 1) << 32 | EIO);
	assert_int_equal(kv_sync(e->kv), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 1);

	/* a full disk, then nothing more is written (the space came back):
	 * the sync itself finds RocksDB recovered */
	put(e->kv, KV_CF_META, "w3", "3");
	gen = atomic_load(&e->kv->wal_err) >> 32;
	atomic_store(&e->kv->wal_err, (gen + 1) << 32 | ENOSPC);
	assert_int_equal(kv_sync(e->kv), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 2);
	assert_int_equal(atomic_load(&e->kv->wal_err), (gen + 1) << 32);
	put(e->kv, KV_CF_META, "w4", "4");
	assert_int_equal(kv_sync(e->kv), 0);
	assert_int_equal(kv_sync_count(e->kv), syncs + 3);
	/* but not after an fsync failed (poisoned) and a full disk's error
	 * was recorded over it: refused, WAL left alone */
	put(e->kv, KV_CF_META, "w5", "5");
	atomic_store(&e->kv->poisoned, true);
	gen = atomic_load(&e->kv->wal_err) >> 32;
	atomic_store(&e->kv->wal_err, (gen + 1) << 32 | ENOSPC);
	assert_int_equal(kv_sync(e->kv), -ENOSPC);
	assert_int_equal(kv_sync_count(e->kv), syncs + 3);
}

/*
 * A commit whose WAL append really fails, on a WAL never synced, then a
 * sync that has not heard of it (wal_err clear: a leader that checked just
 * before the failing commit began).  The sync must fail, not abort the
 * process: rocksdb_flush_wal(sync) aborted there (an assertion in RocksDB
 * 7.8's WritableFileWriter::SyncWithoutFlush; a daemon died that way when
 * its disk filled up under writers that fsync).  The failure: write(2)
 * past RLIMIT_FSIZE is EFBIG (SIGXFSZ ignored), standing in for a full
 * disk.  Afterwards the store
 * reopens with what was committed before and without the torn batch.
 */
static void test_sync_after_failed_append(void **state)
{
	struct env *e = *state;
	static uint8_t big[2 << 20];
	struct kv_batch *b = kv_batch_new();
	struct rlimit old, lim;
	void (*oldsig)(int);
	uint64_t gen;
	void *v;
	size_t vlen;
	int ret;

	kv_close(e->kv); /* a fresh WAL */
	assert_int_equal(kv_open(e->db, 0, &e->kv), 0);
	/* (the safe sync is taken on a low disk; here every disk is low) */
	e->kv->wal_low_room = UINT64_MAX;
	put(e->kv, KV_CF_META, "before", "1");
	memset(big, 'b', sizeof(big));
	kv_batch_put(b, KV_CF_META, "big", 3, big, sizeof(big));

	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 1 << 20; /* the WAL is far below; the batch crosses */
	oldsig = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	ret = kv_commit(e->kv, b);
	gen = atomic_load(&e->kv->wal_err);
	if (ret < 0 && (gen & 0xffffffffu)) { /* not heard of: */
		atomic_store(&e->kv->wal_err, ((gen >> 32) + 1) << 32);
		ret = kv_sync(e->kv);
	} else {
		ret = 0; /* (failed below, with the limit lifted) */
	}
	/* lifted before any assertion, so that a failure here cannot
	 * leave later tests under the limit */
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	assert_true(gen & 0xffffffffu); /* the append failed, wal_err set */
	assert_true(ret < 0); /* "before" is not known durable */
	/* Had the append met a full disk (ENOSPC, not poisoned), the next
	 * sync goes through a write: RocksDB, stopped by the failed append
	 * until it recovers, refuses it without touching that WAL. */
	atomic_store(&e->kv->poisoned, false);
	gen = atomic_load(&e->kv->wal_err);
	atomic_store(&e->kv->wal_err, ((gen >> 32) + 1) << 32 | ENOSPC);
	assert_true(kv_sync(e->kv) < 0);

	kv_close(e->kv);
	assert_int_equal(kv_open(e->db, 0, &e->kv), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "before", 6, &v, &vlen), 0);
	free(v);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "big", 3, &v, &vlen),
			 -ENOENT);
	kv_batch_free(b);
}

/* Iterator moves fail mid-scan; block lookups of kv_block_ref count. */
static void test_fault_iter(void **state)
{
	struct env *e = *state;
	uint8_t block[BFS_BLOCK_SIZE], hash[BFS_HASH_SIZE];
	struct kv_batch *b = kv_batch_new();
	struct kv_iter *it;
	bool fired;
	int seen = 0;

	put(e->kv, KV_CF_META, "i1", "1");
	put(e->kv, KV_CF_META, "i2", "2");
	put(e->kv, KV_CF_META, "i3", "3");
	/* seek_first is call 1, the first next call 2: it fails. */
	kv_fault_set(e->kv, KV_FAULT_ITER, 2, ENOMEM, false);
	it = kv_iter_new(e->kv, KV_CF_META, "i", 1, "j", 1);
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it))
		seen++;
	assert_int_equal(seen, 1);
	assert_int_equal(kv_iter_status(it), -ENOMEM);
	/* The iterator stays stopped, even with the fault spent. */
	kv_iter_seek_first(it);
	assert_false(kv_iter_valid(it));
	assert_int_equal(kv_iter_status(it), -ENOMEM);
	kv_iter_free(it);
	assert_int_equal(kv_fault_calls(e->kv, &fired), 2);
	assert_true(fired);

	/* Creation is a READ, not an ITER call. */
	kv_fault_set(e->kv, KV_FAULT_READ, 1, EIO, false);
	it = kv_iter_new(e->kv, KV_CF_META, "i", 1, "j", 1);
	kv_iter_seek_first(it);
	assert_false(kv_iter_valid(it));
	assert_int_equal(kv_iter_status(it), -EIO);
	kv_iter_free(it);

	/* kv_block_ref looks the block up: a READ. */
	fill_text(block, 60);
	kv_fault_set(e->kv, KV_FAULT_READ, 1, EIO, false);
	assert_int_equal(kv_block_ref(e->kv, b, block, hash), -EIO);
	kv_batch_free(b);
	assert_int_equal(kv_fault_calls(e->kv, &fired), 1);
	assert_true(fired);
	kv_fault_set(e->kv, 0, 0, 0, false);
}

static void *fault_other_thread(void *arg)
{
	struct kv *kv = arg;
	void *v;
	size_t vlen;
	intptr_t ret = kv_get(kv, KV_CF_META, "t", 1, &v, &vlen);

	if (ret == 0)
		free(v);
	return (void *)ret;
}

/* KV_FAULT_THIS_THREAD: other threads neither count nor fail. */
static void test_fault_this_thread(void **state)
{
	struct env *e = *state;
	pthread_t th;
	void *res;
	void *v;
	size_t vlen;

	put(e->kv, KV_CF_META, "t", "1");
	kv_fault_set(e->kv, KV_FAULT_READ | KV_FAULT_THIS_THREAD, 1, EIO,
		     true);
	assert_int_equal(pthread_create(&th, NULL, fault_other_thread, e->kv),
			 0);
	pthread_join(th, &res);
	assert_int_equal((intptr_t)res, 0);
	assert_int_equal(kv_fault_calls(e->kv, NULL), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_META, "t", 1, &v, &vlen), -EIO);
	assert_int_equal(kv_fault_calls(e->kv, NULL), 1);
	/* Without the flag the other thread takes the fault. */
	kv_fault_set(e->kv, KV_FAULT_READ, 1, EIO, true);
	assert_int_equal(pthread_create(&th, NULL, fault_other_thread, e->kv),
			 0);
	pthread_join(th, &res);
	assert_int_equal((intptr_t)res, -EIO);
	kv_fault_set(e->kv, 0, 0, 0, false);
}

/* ---- GC against writers ------------------------------------------------- */

enum { GC_BLOCKS = 4, GC_WRITERS = 3, GC_ITERS = 3000 };

struct gc_shared {
	struct kv *kv;
	uint8_t data[GC_BLOCKS][BFS_BLOCK_SIZE];
	uint8_t hash[GC_BLOCKS][BFS_HASH_SIZE];
	atomic_int failures;
	atomic_bool stop;
	atomic_ulong freed;
};

struct gc_writer {
	struct gc_shared *sh;
	int id;
	int64_t held[GC_BLOCKS]; /* references this writer owns */
};

/* Drop a batch whose building failed (releasing the block lock). */
static int discard(struct kv_batch **b)
{
	kv_batch_free(*b);
	*b = kv_batch_new();
	return -EIO;
}

static void *gc_writer_main(void *p)
{
	struct gc_writer *w = p;
	struct gc_shared *sh = w->sh;
	struct kv_batch *b = kv_batch_new();
	uint64_t s = 0x1234567 + (uint64_t)w->id;
	uint8_t hash[BFS_HASH_SIZE], out[BFS_BLOCK_SIZE];

	for (int i = 0; i < GC_ITERS; i++) {
		int k = (int)(rng_next(&s) % GC_BLOCKS);
		/* 0-2 drop all, 3 unref, 4 ref by hash, 5-7 ref by data */
		unsigned op = (unsigned)(rng_next(&s) % 8);
		int ret = 0;

		if (w->held[k] > 0 && op <= 2) {
			/* Drop every reference at once: count may hit 0. */
			for (int64_t j = 0; j < w->held[k]; j++)
				kv_block_unref(sh->kv, b, sh->hash[k]);
			ret = kv_commit(sh->kv, b);
			if (!ret)
				w->held[k] = 0;
		} else if (w->held[k] > 0 && op == 3) {
			kv_block_unref(sh->kv, b, sh->hash[k]);
			ret = kv_commit(sh->kv, b);
			if (!ret)
				w->held[k]--;
		} else if (w->held[k] > 0 && op == 4) {
			ret = kv_block_ref_hash(sh->kv, b, sh->hash[k]);
			ret = ret ? discard(&b) : kv_commit(sh->kv, b);
			if (!ret)
				w->held[k]++;
		} else {
			ret = kv_block_ref(sh->kv, b, sh->data[k], hash);
			ret = ret ? discard(&b) : kv_commit(sh->kv, b);
			if (!ret)
				w->held[k]++;
		}
		if (ret)
			atomic_fetch_add(&sh->failures, 1);
		/* Anything this writer holds must be readable. */
		if (w->held[k] > 0 &&
		    kv_block_read(sh->kv, sh->hash[k], out))
			atomic_fetch_add(&sh->failures, 1);
	}
	kv_batch_free(b);
	return NULL;
}

/* Two collectors, so that passes overlap (each lists entries before it
 * locks): kv_gc, and the periodic kind that may skip (kv_gc_if_queued). */
struct gc_collector {
	struct gc_shared *sh;
	bool periodic;
};

static void *gc_main(void *p)
{
	struct gc_collector *c = p;
	struct gc_shared *sh = c->sh;
	size_t freed;

	while (!atomic_load(&sh->stop)) {
		int ret = c->periodic ? kv_gc_if_queued(sh->kv, 300, &freed)
				      : kv_gc(sh->kv, 0, &freed);

		if (ret)
			atomic_fetch_add(&sh->failures, 1);
		atomic_fetch_add(&sh->freed, freed);
	}
	return NULL;
}

static void test_gc_concurrent(void **state)
{
	struct env *e = *state;
	static struct gc_shared sh;
	struct gc_writer w[GC_WRITERS];
	struct gc_collector c1 = { &sh, false }, c2 = { &sh, true };
	pthread_t wt[GC_WRITERS], gt, gt2;
	uint8_t out[BFS_BLOCK_SIZE];
	struct kv_stats st;
	size_t freed;

	memset(&sh, 0, sizeof(sh));
	sh.kv = e->kv;
	for (int k = 0; k < GC_BLOCKS; k++) {
		if (k % 2)
			fill_random(sh.data[k], BFS_BLOCK_SIZE, 60 + (uint64_t)k);
		else
			fill_text(sh.data[k], 60 + (uint64_t)k);
		kv_block_hash(sh.data[k], sh.hash[k]);
	}
	assert_int_equal(pthread_create(&gt, NULL, gc_main, &c1), 0);
	assert_int_equal(pthread_create(&gt2, NULL, gc_main, &c2), 0);
	for (int i = 0; i < GC_WRITERS; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].sh = &sh;
		w[i].id = i;
		assert_int_equal(pthread_create(&wt[i], NULL, gc_writer_main,
						&w[i]), 0);
	}
	for (int i = 0; i < GC_WRITERS; i++)
		pthread_join(wt[i], NULL);
	atomic_store(&sh.stop, true);
	pthread_join(gt, NULL);
	pthread_join(gt2, NULL);
	assert_int_equal(atomic_load(&sh.failures), 0);
	print_message("gc concurrent: %lu blocks freed while writing\n",
		      atomic_load(&sh.freed));

	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	for (int k = 0; k < GC_BLOCKS; k++) {
		int64_t want = 0;

		for (int i = 0; i < GC_WRITERS; i++)
			want += w[i].held[k];
		assert_int_equal(refcount(e->kv, sh.hash[k]), want);
		if (want > 0) {
			assert_int_equal(kv_block_read(e->kv, sh.hash[k], out),
					 0);
			assert_memory_equal(out, sh.data[k], BFS_BLOCK_SIZE);
		}
	}
	/* Nothing leaked: drop everything and the store is empty. */
	{
		struct kv_batch *b = kv_batch_new();

		for (int i = 0; i < GC_WRITERS; i++)
			for (int k = 0; k < GC_BLOCKS; k++)
				for (int64_t j = 0; j < w[i].held[k]; j++)
					kv_block_unref(e->kv, b, sh.hash[k]);
		assert_int_equal(kv_commit(e->kv, b), 0);
		kv_batch_free(b);
	}
	assert_int_equal(kv_gc(e->kv, 0, &freed), 0);
	assert_int_equal(kv_stats(e->kv, &st), 0);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.gc_pending, 0);
	for (int k = 0; k < GC_BLOCKS; k++) {
		void *v;
		size_t vlen;

		assert_int_equal(kv_get(e->kv, KV_CF_BLOCKS, sh.hash[k],
					BFS_HASH_SIZE, &v, &vlen), -ENOENT);
	}
}

/* ---- merge operator ----------------------------------------------------- */

static void test_merge_lengths(void **state)
{
	struct env *e = *state;
	struct kv_batch *b = kv_batch_new();
	uint8_t hash[BFS_HASH_SIZE], op[BFS_REF_VALUE_SIZE];
	void *v;
	size_t vlen;

	memset(hash, 0x42, sizeof(hash));
	/* +1/len 100, +1/len 0, -1/len 0, then many +1/0 folded by flushes
	 * and compactions: count adds up, the last non-zero length stays. */
	kv_ref_encode(op, 1, 100);
	kv_batch_merge(b, KV_CF_REFS, hash, sizeof(hash), op, sizeof(op));
	kv_ref_encode(op, 1, 0);
	kv_batch_merge(b, KV_CF_REFS, hash, sizeof(hash), op, sizeof(op));
	assert_int_equal(kv_commit(e->kv, b), 0);
	reopen(e, 0);
	for (int i = 0; i < 50; i++) {
		kv_ref_encode(op, i % 2 ? -1 : 2, i == 25 ? 300 : 0);
		kv_batch_merge(b, KV_CF_REFS, hash, sizeof(hash), op,
			       sizeof(op));
		assert_int_equal(kv_commit(e->kv, b), 0);
	}
	assert_int_equal(kv_compact(e->kv), 0);
	assert_int_equal(kv_get(e->kv, KV_CF_REFS, hash, sizeof(hash), &v,
				&vlen), 0);
	assert_int_equal(vlen, BFS_REF_VALUE_SIZE);
	assert_int_equal((int64_t)bfs_get_u64(v), 2 + 25);
	assert_int_equal(bfs_get_u32((uint8_t *)v + 8), 300);
	free(v);
	kv_batch_free(b);
}

/* ---- logging ------------------------------------------------------------ */

static void test_log_format(void **state)
{
	int fds[2], saved;
	char buf[256];
	ssize_t n;
	int y, mo, d, h, mi, s;
	char rest[64];

	assert_int_equal(pipe(fds), 0);
	saved = dup(STDERR_FILENO);
	dup2(fds[1], STDERR_FILENO);
	kv_log("hello %d", 42);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_int_equal(sscanf(buf, "%4d-%2d-%2d %2d:%2d:%2d %63[^\n]", &y,
				&mo, &d, &h, &mi, &s, rest), 7);
	assert_string_equal(rest, "branchfs: hello 42");
	assert_int_equal(buf[n - 1], '\n');
	assert_int_equal(strlen(buf), 20 + strlen("branchfs: hello 42") + 1);
}

/*
 * A database opened through /proc/self/fd/N (kv_open_named, as snap/ opens
 * a store): RocksDB's messages name that path, kv_log names the store's.
 * Here RocksDB reports the MANIFEST the CURRENT file names as missing.
 */
static void test_named_messages(void **state)
{
	struct env *e = *state;
	char via[64], dbp[160], cur[192], buf[4096];
	int fds[2], saved, dfd;
	struct kv *kv = NULL;
	ssize_t n;
	FILE *f;

	kv_close(e->kv);
	e->kv = NULL;
	snprintf(dbp, sizeof(dbp), "%s/other", e->dir);
	assert_int_equal(mkdir(dbp, 0700), 0);
	snprintf(cur, sizeof(cur), "%s/db", dbp);
	assert_int_equal(mkdir(cur, 0700), 0);
	snprintf(cur, sizeof(cur), "%s/db/CURRENT", dbp);
	f = fopen(cur, "w");
	assert_non_null(f);
	fputs("MANIFEST-000042\n", f);
	fclose(f);
	dfd = open(dbp, O_RDONLY | O_DIRECTORY);
	assert_true(dfd >= 0);
	snprintf(via, sizeof(via), "/proc/self/fd/%d/db", dfd);

	assert_int_equal(pipe(fds), 0);
	saved = dup(STDERR_FILENO);
	dup2(fds[1], STDERR_FILENO);
	assert_true(kv_open_named(via, dbp, 0, &kv) < 0);
	kv_log("after: %s/x", via); /* the alias is gone with the open */
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	close(dfd);
	assert_true(n > 0);
	buf[n] = '\0';
	snprintf(cur, sizeof(cur), "%s/db/MANIFEST-000042", dbp);
	if (!strstr(buf, cur) || !strstr(buf, "after: /proc/self/fd/"))
		fail_msg("messages: %s", buf);
	*strstr(buf, "after: ") = '\0';
	if (strstr(buf, "/proc/self/fd/"))
		fail_msg("a /proc/self/fd path in: %s", buf);
	reopen(e, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
		T(test_open_create_reopen),
		T(test_named_messages),
		T(test_create_existing_fails),
		T(test_open_missing),
		T(test_format_version),
		T(test_format_missing),
		T(test_not_ours),
		T(test_readonly),
		T(test_open_room),
		T(test_get_put_delete),
		T(test_large_batch),
		T(test_iterate_bounds),
		T(test_hash_format),
		T(test_holes),
		T(test_dedup),
		T(test_ref_hash_missing),
		T(test_compression),
		T(test_corruption),
		T(test_gc_frees),
		T(test_gc_max),
		T(test_gc_if_queued),
		T(test_compact_reclaims),
		T(test_stats),
		T(test_group_commit),
		T(test_sync_to),
		T(test_fault_write),
		T(test_fault_write_releases_lock),
		T(test_fault_read),
		T(test_fault_sync),
		T(test_sync_after_wal_error),
		T(test_sync_after_failed_append),
		T(test_fault_iter),
		T(test_fault_this_thread),
		T(test_gc_concurrent),
		T(test_merge_lengths),
		T(test_log_format),
#undef T
	};

	return cmocka_run_group_tests_name("kv", tests, NULL, NULL);
}
