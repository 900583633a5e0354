/* SPDX-License-Identifier: MIT */
/*
 * kv/kv_int.h - internals shared by the kv/ sources (and tests/kv).
 *
 * Nothing above kv/ includes this header.
 */
#ifndef BFS_KV_INT_H
#define BFS_KV_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rocksdb/c.h>

#include "kv.h"

/* Fault injection state; every field is atomic so that kv_fault_set() may
 * race with the calls it counts (tests arm it between operations). */
struct kv_fault {
	atomic_uint ops;             /* enum kv_fault_op mask, 0 = off */
	atomic_ulong nth;            /* 1-based call that fails, 0 = never */
	atomic_int err;              /* positive errno to inject */
	atomic_bool persistent;      /* fail every call after the nth too */
	atomic_ulong calls;          /* calls among @ops since kv_fault_set */
	atomic_bool fired;
	atomic_uintptr_t thread;     /* KV_FAULT_THIS_THREAD: the armer's
				      * thread token, else 0 */
};

/* Free space under which a WAL append may meet a full disk while a sync
 * runs (kv.c: wal_sync): far more than background flushes and appends can
 * take between the leader's look and its sync. */
#define KV_WAL_LOW_ROOM ((uint64_t)256 << 20)

/*
 * Group commit state, protected by kv->sync_lock.
 *
 *   committed  commits written to the WAL (atomic, bumped by kv_commit
 *              without the lock)
 *   synced     every commit numbered <= synced is durable
 *   syncing    a leader is inside its WAL sync (kv_sync_to); it will set
 *              synced = sync_target when it succeeds
 *   sync_gen   number of syncs finished (success or failure); waiters
 *              sleep on sync_cond until it moves
 *   fail_err   -errno of the last failed sync
 */
struct kv {
	rocksdb_t *db;
	rocksdb_column_family_handle_t *cf[KV_CF_COUNT];
	rocksdb_options_t *db_opts;
	rocksdb_options_t *cf_opts[KV_CF_COUNT];
	rocksdb_cache_t *cache;
	rocksdb_readoptions_t *ropts;
	rocksdb_writeoptions_t *wopts;
	rocksdb_writeoptions_t *wopts_sync; /* the WAL sync: kv_sync_to */
	char *dbdir;  /* where the database is reached */
	bool aliased; /* kv_open_named: kv_log names it store/db instead */
	bool readonly;

	atomic_bool poisoned; /* set by a failed commit (not ENOSPC: see
			       * kv_commit), never cleared */
	/* -errno of a RocksDB write or WAL sync that failed, 0 once a write
	 * succeeds again (RocksDB took it: it has recovered, on a new WAL).
	 * Meanwhile the WAL writer may hold the error, and syncing it trips an
	 * assertion in RocksDB 7.8 (fixed upstream in PR 12448): kv_sync()
	 * returns this instead (and, on a low disk, syncs through a write,
	 * which RocksDB orders after the failed one and refuses: wal_sync);
	 * for -ENOSPC it syncs through such a write, whose success clears it
	 * like a commit's.  Kept as (generation << 32 | (uint32_t)-errno)
	 * so that a write that raced with the failure (it started before and
	 * succeeded) cannot clear it: only a commit or sync write that began
	 * after the latest failure does (wal_err_clear). */
	atomic_uint_least64_t wal_err;

	/*
	 * The block lock.  Batches that reference or unreference blocks hold
	 * it shared from the first kv_block_ref/_ref_hash/_unref until
	 * kv_commit/kv_batch_free, and so do reads (kv_read_begin/_end);
	 * kv_gc holds it exclusive while it reads counts and deletes (it
	 * lists the queue entries before it takes it).  So a block seen to
	 * exist by a reference cannot be freed before that reference is
	 * committed, and a queue entry written by an unref cannot be deleted
	 * by a GC pass that read the count before the unref landed.  The lock
	 * prefers writers (kv_open), so a thread must never hold it shared
	 * twice: it would deadlock against a waiting kv_gc.
	 */
	pthread_rwlock_t block_lock;

	/* kv_block_unref() calls so far, and its value when a kv_gc() pass
	 * that reached the end of the queue began (KV_GC_UNKNOWN: none yet).
	 * Equal: nothing was queued since, and kv_gc_if_queued() skips. */
	atomic_uint_fast64_t unrefs;
	atomic_uint_fast64_t gc_clean_at;

	pthread_mutex_t sync_lock;
	pthread_cond_t sync_cond;
	atomic_uint_fast64_t committed;
	uint64_t synced;      /* protected by sync_lock */
	uint64_t sync_target; /* protected by sync_lock */
	uint64_t sync_gen;    /* protected by sync_lock */
	bool syncing;         /* protected by sync_lock */
	int fail_err;         /* protected by sync_lock */
	atomic_uint_fast64_t nsyncs; /* WAL fsyncs issued (tests) */
	/* below this many free bytes, wal_sync() syncs through a write;
	 * KV_WAL_LOW_ROOM, tests raise it */
	uint64_t wal_low_room;

	struct kv_fault fault;
};

#define KV_GC_UNKNOWN UINT64_MAX

/* Operation kinds recorded in a kv_batch. */
enum kv_op {
	KV_OP_PUT = 1,
	KV_OP_DELETE,
	KV_OP_MERGE,
};

/*
 * A batch records its operations in one growing buffer (the public calls
 * do not name the store, so the column family handles are only known at
 * kv_commit()).  Each record: op (1) | cf (1) | klen (u32) | vlen (u32) |
 * key | value, host byte order.
 */
struct kv_batch {
	uint8_t *buf;
	size_t len, cap;
	size_t count;
	bool oom;           /* a record could not be added: commit fails */
	struct kv *locked;  /* holds locked->block_lock shared, or NULL */
	rocksdb_writebatch_t *wb; /* reused by kv_commit, created lazily */
};

#define KV_REC_HDR 10u

/* kv.c */
/* Log "@what: @err", free @err (a RocksDB errptr string) and return
 * -ENOSPC if it says the disk is full, else -EIO. */
int kv_rocks_errno(const char *what, char *err);
/* Point read without fault injection: copies at most @bufsize bytes of the
 * value into @buf (may be NULL with 0), sets *vlen to the full length.
 * 0, -ENOENT or -EIO. */
int kv_get_internal(struct kv *kv, enum kv_cf cf, const void *key,
		    size_t klen, void *buf, size_t bufsize, size_t *vlen);
void kv_batch_merge(struct kv_batch *b, enum kv_cf cf, const void *key,
		    size_t klen, const void *val, size_t vlen);
/* Take kv->block_lock shared for @b unless it already holds it. */
void kv_batch_lock_blocks(struct kv *kv, struct kv_batch *b);
/* True if a batch of this thread holds a block lock (a batch belongs to
 * one thread: it is locked, committed and freed there). */
bool kv_thread_holds_block_lock(void);
/* kv_iter_new() without fault injection; @fill_cache false for scans. */
struct kv_iter *kv_iter_new_internal(struct kv *kv, enum kv_cf cf,
				     const void *lower, size_t llen,
				     const void *upper, size_t ulen,
				     bool fill_cache);

/* merge.c */
rocksdb_mergeoperator_t *kv_refcount_merge_operator(void);
static inline void kv_ref_encode(uint8_t v[BFS_REF_VALUE_SIZE], int64_t delta,
				 uint32_t len)
{
	bfs_put_u64(v, (uint64_t)delta);
	bfs_put_u32(v + 8, len);
}

/* fault.c: 0, or -errno if the armed fault fires for this call of @op. */
int kv_fault_check(struct kv *kv, enum kv_fault_op op);

/* Tests: number of WAL fsyncs kv_sync() issued since kv_open(). */
uint64_t kv_sync_count(struct kv *kv);

#endif /* BFS_KV_INT_H */
