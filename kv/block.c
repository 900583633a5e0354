/* SPDX-License-Identifier: MIT */
/*
 * kv/block.c - content-addressed 8 KiB blocks, their reference counts, the
 * garbage collector and store statistics.
 *
 * Layouts are in kv/format.h ("blocks", "refs", the 'Q' GC queue).
 *
 * Invariant R2 (a stored block has count > 0 or is queued) is kept by the
 * block lock (kv_int.h): references and unreferences hold it shared until
 * their batch commits, kv_gc() holds it exclusive from reading a count to
 * committing the deletions.  So:
 *   - a block that kv_block_ref() found stored is still stored when its +1
 *     lands (GC cannot run in between);
 *   - a count GC read is the count at its commit (no ±1 can land in
 *     between), and a queue entry written after GC's commit is not lost.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>
#include <zstd.h>

#include "kv_int.h"

/* A negative ("fast") level: on 8 KiB PostgreSQL pages it compresses as well
 * as level 1 at about 60% of the time, and gives up sooner on random data. */
#define KV_ZSTD_LEVEL (-1)
#define KV_GC_BATCH 256u
#define KV_BLOCK_VALUE_MAX (1 + ZSTD_COMPRESSBOUND(BFS_BLOCK_SIZE))

/* ---- per-thread zstd contexts ----------------------------------------- */

static pthread_once_t zstd_once = PTHREAD_ONCE_INIT;
static pthread_key_t cctx_key, dctx_key;

static void cctx_free(void *p)
{
	ZSTD_freeCCtx(p);
}

static void dctx_free(void *p)
{
	ZSTD_freeDCtx(p);
}

static void zstd_keys_init(void)
{
	if (pthread_key_create(&cctx_key, cctx_free) ||
	    pthread_key_create(&dctx_key, dctx_free)) {
		kv_log("pthread_key_create failed");
		abort();
	}
}

/* This thread's compression context (freed at thread exit), or NULL. */
static ZSTD_CCtx *thread_cctx(void)
{
	ZSTD_CCtx *c;

	pthread_once(&zstd_once, zstd_keys_init);
	c = pthread_getspecific(cctx_key);
	if (!c) {
		c = ZSTD_createCCtx();
		if (c && pthread_setspecific(cctx_key, c)) {
			ZSTD_freeCCtx(c);
			c = NULL;
		}
	}
	return c;
}

static ZSTD_DCtx *thread_dctx(void)
{
	ZSTD_DCtx *d;

	pthread_once(&zstd_once, zstd_keys_init);
	d = pthread_getspecific(dctx_key);
	if (!d) {
		d = ZSTD_createDCtx();
		if (d && pthread_setspecific(dctx_key, d)) {
			ZSTD_freeDCtx(d);
			d = NULL;
		}
	}
	return d;
}

/* ---- hashing ------------------------------------------------------------ */

bool kv_block_is_zero(const void *data)
{
	const unsigned char *p = data;

	/* 64 bytes per step: early exit on data, vectorizable on holes. */
	for (size_t off = 0; off < BFS_BLOCK_SIZE; off += 64) {
		uint64_t w[8], acc = 0;

		memcpy(w, p + off, sizeof(w));
		for (int i = 0; i < 8; i++)
			acc |= w[i];
		if (acc)
			return false;
	}
	return true;
}

void kv_block_hash(const void *data, uint8_t hash[BFS_HASH_SIZE])
{
	XXH128_canonical_t c;

	/* The canonical form is big-endian, high 64 bits first. */
	XXH128_canonicalFromHash(&c, XXH3_128bits(data, BFS_BLOCK_SIZE));
	memcpy(hash, c.digest, BFS_HASH_SIZE);
}

static void hash_hex(const uint8_t hash[BFS_HASH_SIZE],
		     char hex[2 * BFS_HASH_SIZE + 1])
{
	static const char digits[] = "0123456789abcdef";

	for (unsigned i = 0; i < BFS_HASH_SIZE; i++) {
		hex[2 * i] = digits[hash[i] >> 4];
		hex[2 * i + 1] = digits[hash[i] & 15];
	}
	hex[2 * BFS_HASH_SIZE] = '\0';
}

/* ---- references --------------------------------------------------------- */

static void ref_merge(struct kv_batch *b, const uint8_t hash[BFS_HASH_SIZE],
		      int64_t delta, size_t stored_len)
{
	uint8_t v[BFS_REF_VALUE_SIZE];

	kv_ref_encode(v, delta, (uint32_t)stored_len);
	kv_batch_merge(b, KV_CF_REFS, hash, BFS_HASH_SIZE, v, sizeof(v));
}

/* Encode @data as a "blocks" value into @val (KV_BLOCK_VALUE_MAX bytes);
 * returns its length. */
static size_t block_encode(const void *data, uint8_t *val)
{
	ZSTD_CCtx *cctx = thread_cctx();
	size_t n;

	if (cctx) {
		n = ZSTD_compressCCtx(cctx, val + 1, KV_BLOCK_VALUE_MAX - 1,
				      data, BFS_BLOCK_SIZE, KV_ZSTD_LEVEL);
		if (!ZSTD_isError(n) && n < BFS_BLOCK_SIZE) {
			val[0] = BFS_CODEC_ZSTD;
			return 1 + n;
		}
	}
	val[0] = BFS_CODEC_RAW;
	memcpy(val + 1, data, BFS_BLOCK_SIZE);
	return 1 + BFS_BLOCK_SIZE;
}

int kv_block_ref(struct kv *kv, struct kv_batch *b, const void *data,
		 uint8_t hash[BFS_HASH_SIZE])
{
	uint8_t val[KV_BLOCK_VALUE_MAX];
	size_t vlen;
	int ret;

	if (kv_block_is_zero(data)) {
		kv_log("bug: kv_block_ref() of an all-zero block");
		return -EINVAL;
	}
	kv_block_hash(data, hash);
	kv_batch_lock_blocks(kv, b);

	ret = kv_fault_check(kv, KV_FAULT_READ);
	if (ret)
		return ret;
	ret = kv_get_internal(kv, KV_CF_BLOCKS, hash, BFS_HASH_SIZE, NULL, 0,
			      &vlen);
	if (ret == 0) {
		ref_merge(b, hash, 1, vlen); /* deduplicated */
		return 0;
	}
	if (ret != -ENOENT)
		return ret;

	vlen = block_encode(data, val);
	kv_batch_put(b, KV_CF_BLOCKS, hash, BFS_HASH_SIZE, val, vlen);
	ref_merge(b, hash, 1, vlen);
	return 0;
}

int kv_block_ref_hash(struct kv *kv, struct kv_batch *b,
		      const uint8_t hash[BFS_HASH_SIZE])
{
	char hex[2 * BFS_HASH_SIZE + 1];
	size_t vlen;
	int ret;

	kv_batch_lock_blocks(kv, b);
	ret = kv_fault_check(kv, KV_FAULT_READ);
	if (ret)
		return ret;
	ret = kv_get_internal(kv, KV_CF_BLOCKS, hash, BFS_HASH_SIZE, NULL, 0,
			      &vlen);
	if (ret == -ENOENT) {
		hash_hex(hash, hex);
		kv_log("block %s: missing, cannot add a reference", hex);
		return -EIO;
	}
	if (ret)
		return ret;
	ref_merge(b, hash, 1, vlen);
	return 0;
}

void kv_block_unref(struct kv *kv, struct kv_batch *b,
		    const uint8_t hash[BFS_HASH_SIZE])
{
	uint8_t qkey[1 + BFS_HASH_SIZE];

	/* Shared lock: see the file comment (GC must not delete this queue
	 * entry on the strength of a count read before the -1 lands). */
	kv_batch_lock_blocks(kv, b);
	atomic_fetch_add(&kv->unrefs, 1);
	ref_merge(b, hash, -1, 0);
	qkey[0] = BFS_PFX_GCQ;
	memcpy(qkey + 1, hash, BFS_HASH_SIZE);
	kv_batch_put(b, KV_CF_SYS, qkey, sizeof(qkey), NULL, 0);
}

/* Count and stored length of @hash; a missing key is (0, 0) with *found
 * false.  0 or -EIO. */
static int ref_read(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE],
		    int64_t *count, uint32_t *len, bool *found)
{
	uint8_t v[BFS_REF_VALUE_SIZE];
	char hex[2 * BFS_HASH_SIZE + 1];
	size_t vlen;
	int ret;

	*count = 0;
	*len = 0;
	*found = false;
	ret = kv_get_internal(kv, KV_CF_REFS, hash, BFS_HASH_SIZE, v,
			      sizeof(v), &vlen);
	if (ret == -ENOENT)
		return 0;
	if (ret)
		return ret;
	if (vlen != BFS_REF_VALUE_SIZE) {
		hash_hex(hash, hex);
		kv_log("block %s: reference count value of %zu bytes", hex,
		       vlen);
		return -EIO;
	}
	*count = (int64_t)bfs_get_u64(v);
	*len = bfs_get_u32(v + 8);
	*found = true;
	return 0;
}

int kv_block_refcount(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE],
		      int64_t *count)
{
	uint32_t len;
	bool found;

	return ref_read(kv, hash, count, &len, &found);
}

/* ---- reads -------------------------------------------------------------- */

/* Decode a "blocks" value into @out; NULL on success, else what is wrong. */
static const char *block_decode(const uint8_t *v, size_t n, void *out,
				char *why, size_t whylen)
{
	ZSTD_DCtx *dctx;
	size_t r;

	if (n < 1)
		return "empty value";
	switch (v[0]) {
	case BFS_CODEC_RAW:
		if (n != 1 + BFS_BLOCK_SIZE) {
			snprintf(why, whylen, "raw value of %zu bytes", n);
			return why;
		}
		memcpy(out, v + 1, BFS_BLOCK_SIZE);
		return NULL;
	case BFS_CODEC_ZSTD:
		dctx = thread_dctx();
		if (!dctx)
			return "no memory for a zstd context";
		r = ZSTD_decompressDCtx(dctx, out, BFS_BLOCK_SIZE, v + 1, n - 1);
		if (ZSTD_isError(r)) {
			snprintf(why, whylen, "zstd: %s", ZSTD_getErrorName(r));
			return why;
		}
		if (r != BFS_BLOCK_SIZE) {
			snprintf(why, whylen, "decompressed to %zu bytes", r);
			return why;
		}
		return NULL;
	default:
		snprintf(why, whylen, "unknown codec %u", v[0]);
		return why;
	}
}

int kv_block_verify(const void *val, size_t vlen,
		    const uint8_t hash[BFS_HASH_SIZE], void *out, char *why,
		    size_t whylen)
{
	uint8_t check[BFS_HASH_SIZE];
	char buf[96];
	const char *problem;

	problem = block_decode(val, vlen, out, buf, sizeof(buf));
	if (!problem) {
		kv_block_hash(out, check);
		if (memcmp(check, hash, BFS_HASH_SIZE) == 0)
			return 0;
		problem = "hash mismatch: data corrupt";
	}
	snprintf(why, whylen, "%s", problem);
	return -EIO;
}

int kv_block_read(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE], void *out)
{
	char hex[2 * BFS_HASH_SIZE + 1], why[96];
	rocksdb_pinnableslice_t *ps;
	const char *problem, *v;
	char *err = NULL;
	size_t n;
	int ret;

	ret = kv_fault_check(kv, KV_FAULT_READ);
	if (ret)
		goto out_zero;

	ps = rocksdb_get_pinned_cf(kv->db, kv->ropts, kv->cf[KV_CF_BLOCKS],
				   (const char *)hash, BFS_HASH_SIZE, &err);
	if (err) {
		hash_hex(hash, hex);
		kv_log("block %s: read failed: %s", hex, err);
		rocksdb_free(err);
		ret = -EIO;
		goto out_zero;
	}
	if (!ps) {
		problem = "missing";
		goto out_bad;
	}
	v = rocksdb_pinnableslice_value(ps, &n);
	ret = kv_block_verify(v, n, hash, out, why, sizeof(why));
	rocksdb_pinnableslice_destroy(ps);
	if (ret == 0)
		return 0;
	problem = why;

out_bad:
	hash_hex(hash, hex);
	kv_log("block %s: %s", hex, problem);
	ret = -EIO;
out_zero:
	memset(out, 0, BFS_BLOCK_SIZE);
	return ret;
}

/* ---- garbage collection ------------------------------------------------- */

/*
 * One GC step: examine up to @budget queue entries at or after @start
 * (*start_len bytes), free what has count <= 0, drop the entries, commit.
 * @start is advanced past the last entry seen; *seen gets the number of
 * entries examined (fewer than @budget: the end of the queue).
 *
 * The entries are listed without the block lock: the walk may cross many
 * tombstones of entries freed earlier (RocksDB keeps them until it
 * compacts), and the exclusive lock stops every read and write of the
 * store.  Only the counts are read under it, with one point read each, so
 * the decision is made on the count at the commit.  An entry freed by
 * another pass in between is harmless to see again: its block is deleted
 * only if its count is still <= 0 (R2 allows it whether or not it is
 * queued), and a new reference since would show in the count.
 */
static int gc_step(struct kv *kv, struct kv_batch *b, uint8_t *start,
		   size_t *start_len, size_t budget, size_t *seen,
		   size_t *freed)
{
	static const uint8_t qend[1] = { BFS_PFX_GCQ + 1 };
	uint8_t keys[KV_GC_BATCH][1 + BFS_HASH_SIZE]; /* 'Q' | hash */
	char hex[2 * BFS_HASH_SIZE + 1];
	struct kv_iter *it;
	size_t n = 0, nq = 0, nfreed = 0;
	int ret, ret2;

	if (budget > KV_GC_BATCH)
		budget = KV_GC_BATCH;
	it = kv_iter_new_internal(kv, KV_CF_SYS, start, *start_len, qend,
				  sizeof(qend), false);
	for (kv_iter_seek_first(it); kv_iter_valid(it) && n < budget;
	     kv_iter_next(it)) {
		const uint8_t *key;
		size_t klen;

		key = kv_iter_key(it, &klen);
		n++;
		if (klen != 1 + BFS_HASH_SIZE) {
			kv_log("GC queue: dropping a malformed key of %zu bytes",
			       klen);
			kv_batch_delete(b, KV_CF_SYS, key, klen);
			continue;
		}
		memcpy(keys[nq++], key, klen);
		memcpy(start, key, klen);
		start[klen] = 0; /* resume just after this key */
		*start_len = klen + 1;
	}
	ret = kv_iter_status(it);
	kv_iter_free(it);

	pthread_rwlock_wrlock(&kv->block_lock);
	for (size_t i = 0; i < nq && !ret; i++) {
		const uint8_t *hash = keys[i] + 1;
		int64_t count;
		uint32_t len;
		bool found;

		ret = ref_read(kv, hash, &count, &len, &found);
		if (ret)
			break;
		if (count < 0) {
			hash_hex(hash, hex);
			kv_log("bug: block %s: reference count %lld; freeing it",
			       hex, (long long)count);
		}
		if (count <= 0) {
			kv_batch_delete(b, KV_CF_BLOCKS, hash, BFS_HASH_SIZE);
			kv_batch_delete(b, KV_CF_REFS, hash, BFS_HASH_SIZE);
			if (found)
				nfreed++;
		}
		kv_batch_delete(b, KV_CF_SYS, keys[i], sizeof(keys[i]));
	}
	/* Commit even after a read error: what was decided is valid. */
	ret2 = kv_batch_count(b) ? kv_commit(kv, b) : 0;
	pthread_rwlock_unlock(&kv->block_lock);
	if (!ret)
		ret = ret2;
	if (!ret2)
		*freed += nfreed;
	*seen = n;
	return ret;
}

int kv_gc(struct kv *kv, size_t max, size_t *freed)
{
	uint8_t start[2 + BFS_HASH_SIZE] = { BFS_PFX_GCQ };
	size_t start_len = 1, total = 0, nfreed = 0, seen, budget;
	uint_fast64_t unrefs;
	struct kv_batch *b;
	int ret = 0;

	if (freed)
		*freed = 0;
	if (kv->readonly)
		return -EROFS;
	if (atomic_load(&kv->poisoned))
		return -EIO;
	if (kv_thread_holds_block_lock()) {
		/* It would wait for itself forever. */
		kv_log("bug: kv_gc() called with a block-referencing batch open");
		return -EDEADLK;
	}
	b = kv_batch_new();
	if (!b)
		return -ENOMEM;
	/* Under the exclusive lock no batch that unreferences is open: every
	 * unref counted here is committed (or dropped), so in the queue this
	 * pass walks. */
	pthread_rwlock_wrlock(&kv->block_lock);
	unrefs = atomic_load(&kv->unrefs);
	pthread_rwlock_unlock(&kv->block_lock);
	do {
		budget = KV_GC_BATCH;
		if (max && max - total < budget)
			budget = max - total;
		/* The lock is dropped between steps so writers get in. */
		ret = gc_step(kv, b, start, &start_len, budget, &seen, &nfreed);
		total += seen;
	} while (!ret && seen == budget && (!max || total < max));
	if (!ret && seen < budget)
		atomic_store(&kv->gc_clean_at, unrefs);
	kv_batch_free(b);
	if (freed)
		*freed = nfreed;
	return ret;
}

int kv_gc_if_queued(struct kv *kv, size_t max, size_t *freed)
{
	if (atomic_load(&kv->gc_clean_at) == atomic_load(&kv->unrefs)) {
		if (freed)
			*freed = 0;
		return 0;
	}
	return kv_gc(kv, max, freed);
}

/* ---- statistics --------------------------------------------------------- */

static uint64_t wal_bytes(const char *dbdir)
{
	uint64_t total = 0;
	struct dirent *de;
	struct stat st;
	DIR *d;

	d = opendir(dbdir);
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);

		if (len < 4 || strcmp(de->d_name + len - 4, ".log"))
			continue;
		if (!fstatat(dirfd(d), de->d_name, &st, 0))
			total += (uint64_t)st.st_size;
	}
	closedir(d);
	return total;
}

int kv_stats(struct kv *kv, struct kv_stats *st)
{
	static const uint8_t qlo[1] = { BFS_PFX_GCQ }, qhi[1] = { BFS_PFX_GCQ + 1 };
	struct kv_iter *it;
	int ret;

	memset(st, 0, sizeof(*st));

	it = kv_iter_new_internal(kv, KV_CF_REFS, NULL, 0, NULL, 0, false);
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
		const uint8_t *v;
		size_t vlen;
		int64_t count;

		v = kv_iter_value(it, &vlen);
		if (vlen != BFS_REF_VALUE_SIZE)
			continue;
		count = (int64_t)bfs_get_u64(v);
		if (count <= 0)
			continue;
		st->blocks++;
		st->refs += (uint64_t)count;
		st->stored_bytes += bfs_get_u32(v + 8);
	}
	ret = kv_iter_status(it);
	kv_iter_free(it);
	if (ret)
		return ret;
	st->logical_bytes = st->refs * BFS_BLOCK_SIZE;
	st->unique_bytes = st->blocks * BFS_BLOCK_SIZE;

	it = kv_iter_new_internal(kv, KV_CF_SYS, qlo, sizeof(qlo), qhi,
				  sizeof(qhi), false);
	for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it))
		st->gc_pending++;
	ret = kv_iter_status(it);
	kv_iter_free(it);
	if (ret)
		return ret;

	for (int i = 0; i < KV_CF_COUNT; i++) {
		uint64_t v;

		if (!rocksdb_property_int_cf(kv->db, kv->cf[i],
					     "rocksdb.live-sst-files-size", &v))
			st->sst_bytes += v;
	}
	st->wal_bytes = wal_bytes(kv->dbdir);
	return 0;
}
