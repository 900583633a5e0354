/* SPDX-License-Identifier: MIT */
/*
 * kv/kv.h - RocksDB wrapper and content-addressed block store.
 *
 * The lowest layer of branchfs.  It knows column families, write batches,
 * iterators, group-committed syncs and 8 KiB blocks; it knows nothing of
 * inodes or branches (those keys are built by snap/, laid out in
 * kv/format.h).  Errors are negative errno values; RocksDB's error text is
 * logged here and never leaves this layer.
 *
 * Thread safety: every function may be called from many threads at once,
 * except kv_open/kv_close.  A kv_batch belongs to one thread.
 */
#ifndef BFS_KV_H
#define BFS_KV_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

struct kv;
struct kv_batch;
struct kv_iter;

enum kv_cf {
	KV_CF_SYS = 0, /* RocksDB "default": store records */
	KV_CF_META,    /* versioned metadata */
	KV_CF_BLOCKS,  /* block data */
	KV_CF_REFS,    /* block reference counts */
	KV_CF_COUNT,
};

enum kv_open_flags {
	KV_CREATE = 1 << 0,   /* create a new database; fail if one exists */
	KV_READONLY = 1 << 1, /* open read-only (no lock on the database) */
	/* no automatic compactions, for a one-shot command on a nearly full
	 * disk: each preallocates its output (up to ~70 MiB), which could
	 * take the room the command needs (kv_open_room) */
	KV_NO_AUTO_COMPACT = 1 << 2,
};

/* Log a line (with a timestamp and "branchfs: " prefix) to stderr. */
void kv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Open the RocksDB database in directory @dbdir.  With KV_CREATE the
 * database is created and the current BFS_FORMAT_VERSION recorded;
 * without it the recorded version is checked: an unknown version is
 * -EPROTONOSUPPORT, a directory that is not a database -ENOENT or -EINVAL.
 * On success *out owns the database until kv_close(); on failure *out is
 * untouched and nothing stays open.
 */
int kv_open(const char *dbdir, enum kv_open_flags flags, struct kv **out);

/* kv_open() of @dbdir, which messages call "@store/db" (@store NULL: @dbdir
 * itself) - for a database reached through another path than its own, such
 * as /proc/self/fd/N/db (snap/snap_int.h, struct snap). */
int kv_open_named(const char *dbdir, const char *store,
		  enum kv_open_flags flags, struct kv **out);

/* Close the database (NULL is allowed).  Everything committed is in the
 * WAL; kv_close() does not sync it: call kv_sync() first for durability.
 * A writable database has its memtables flushed first when the disk has
 * room for that (errors are only logged), so that the next open has no
 * WAL to replay: opening then needs no room for new table files
 * (kv_open_room). */
void kv_close(struct kv *kv);

/*
 * Room opening @dbdir for writing needs on its filesystem: RocksDB replays
 * the WAL into new table files (about the WAL's size) and writes a new
 * info LOG, MANIFEST, OPTIONS file and a preallocated WAL (~40 MiB in all:
 * open_slack in kv.c).  Without that room RocksDB 7.8 aborts the process
 * (an assertion once its info LOG cannot be written), so callers check
 * first.  *need and *avail (f_bavail) in bytes; 0 or -errno.
 */
int kv_open_room(const char *dbdir, uint64_t *need, uint64_t *avail);
/* The same for creating a database on the filesystem of directory @dir. */
int kv_create_room(const char *dir, uint64_t *need, uint64_t *avail);

/* ---- point reads ---------------------------------------------------- */

/*
 * Read one value.  On success *val is a malloc()ed copy that the caller
 * frees, *vlen its length.  -ENOENT if absent, -EIO on a read error.
 */
int kv_get(struct kv *kv, enum kv_cf cf, const void *key, size_t klen,
	   void **val, size_t *vlen);

/* ---- write batches --------------------------------------------------- */

/* A batch collects puts, deletes and merges that kv_commit() writes
 * atomically.  The batch copies keys and values; the caller keeps its
 * buffers. */
struct kv_batch *kv_batch_new(void);
/* Free a batch (NULL allowed), releasing anything it holds (see
 * kv_block_ref()).  Freeing an uncommitted batch discards it. */
void kv_batch_free(struct kv_batch *b);
void kv_batch_put(struct kv_batch *b, enum kv_cf cf, const void *key,
		  size_t klen, const void *val, size_t vlen);
void kv_batch_delete(struct kv_batch *b, enum kv_cf cf, const void *key,
		     size_t klen);
/* Number of operations in the batch. */
size_t kv_batch_count(const struct kv_batch *b);

/*
 * Write the batch atomically (to the WAL and memtables, not synced) and
 * reset it to empty so it can be reused.  Releases the block lock the batch
 * may hold.  Returns 0, or -EIO/-ENOSPC.  After a failed commit the handle is
 * poisoned: every later write returns -EIO until the store is reopened.
 * Except a full disk reported by RocksDB: that -ENOSPC does not poison, as
 * RocksDB then refuses every write (-ENOSPC) itself until free space is
 * back and it has recovered, without the failed batch; writes succeed again
 * after that.  (An injected fault, kv_fault_set(), always poisons.)
 */
int kv_commit(struct kv *kv, struct kv_batch *b);

/*
 * Make everything committed before this call durable (WAL fsynced).
 * Concurrent callers are grouped: one fsync serves all that arrived while
 * it was pending.  Returns 0 or -EIO/-ENOSPC; after a write or sync that
 * RocksDB failed, that error at once until a commit succeeds again, except
 * after a full disk: then the sync goes through a write, which RocksDB
 * refuses until it has recovered and takes after (clearing the error).
 */
int kv_sync(struct kv *kv);
/*
 * Commits are numbered (tickets) in the order they finish.  kv_sync_to()
 * makes durable at least every commit numbered <= @upto (kv_sync(): every
 * commit so far), returning at once if a sync already did; errors as
 * kv_sync().  kv_thread_ticket() is the number of the calling thread's
 * last successful commit to @kv (if it made none, or its last one was to
 * another store: the number of the last commit of all, which is safe).
 */
int kv_sync_to(struct kv *kv, uint64_t upto);
uint64_t kv_thread_ticket(struct kv *kv);

/* ---- iterators ------------------------------------------------------- */

/*
 * An iterator over [lower, upper) of one column family, reading a
 * consistent snapshot taken at creation.  Bounds are copied; either may be
 * NULL (unbounded).  kv_iter_key/value pointers stay valid until the next
 * move or kv_iter_free().
 */
struct kv_iter *kv_iter_new(struct kv *kv, enum kv_cf cf, const void *lower,
			    size_t llen, const void *upper, size_t ulen);
void kv_iter_seek(struct kv_iter *it, const void *key, size_t klen);
void kv_iter_seek_first(struct kv_iter *it);
bool kv_iter_valid(const struct kv_iter *it);
void kv_iter_next(struct kv_iter *it);
const void *kv_iter_key(const struct kv_iter *it, size_t *klen);
const void *kv_iter_value(const struct kv_iter *it, size_t *vlen);
/* 0 when the iterator ended normally, -EIO if it stopped on an error. */
int kv_iter_status(const struct kv_iter *it);
void kv_iter_free(struct kv_iter *it);

/* ---- content-addressed blocks ---------------------------------------- */

/* True if the BFS_BLOCK_SIZE bytes at @data are all zero (a hole). */
bool kv_block_is_zero(const void *data);
/* XXH3-128 of a BFS_BLOCK_SIZE block, big-endian (high half first). */
void kv_block_hash(const void *data, uint8_t hash[BFS_HASH_SIZE]);

/*
 * Add one reference to the block holding @data (BFS_BLOCK_SIZE bytes, not
 * all zero) to batch @b: stores the block (zstd, or raw when that is not
 * larger) if it is not already stored, and adds +1 to its count.  The hash
 * is returned in @hash.  The batch takes the store's block lock (shared)
 * and keeps it until kv_commit() or kv_batch_free(), so the garbage
 * collector cannot free a block between the existence check and the commit.
 */
int kv_block_ref(struct kv *kv, struct kv_batch *b, const void *data,
		 uint8_t hash[BFS_HASH_SIZE]);

/* Add one reference to an already stored block (block sharing).  -EIO (and
 * a log line) if the block is missing.  Takes the block lock like
 * kv_block_ref(). */
int kv_block_ref_hash(struct kv *kv, struct kv_batch *b,
		      const uint8_t hash[BFS_HASH_SIZE]);

/* Take the block lock for batch @b now (as kv_block_ref() would), so that
 * hashes read from block maps after this call stay stored until commit. */
void kv_batch_lock_blocks(struct kv *kv, struct kv_batch *b);

/* Drop one reference (-1) and queue the hash for the garbage collector. */
void kv_block_unref(struct kv *kv, struct kv_batch *b,
		    const uint8_t hash[BFS_HASH_SIZE]);

/*
 * Read the block @hash into @out (BFS_BLOCK_SIZE bytes).  The plaintext's
 * hash is verified: a missing block, a decompression failure or a hash
 * mismatch is -EIO and a log line naming the hash; @out is then zeroed,
 * never partial data.
 */
int kv_block_read(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE], void *out);

/*
 * Bracket a read: between kv_read_begin() and kv_read_end() the garbage
 * collector frees nothing, so a block whose hash was just looked up in a
 * block map stays readable even if that map is rewritten meanwhile.  Shared
 * (many readers at once); do not call kv_block_ref*() or kv_gc() inside.
 */
void kv_read_begin(struct kv *kv);
void kv_read_end(struct kv *kv);

/*
 * Check a stored "blocks" value (@val, @vlen bytes) against its key @hash:
 * decode it into @out (BFS_BLOCK_SIZE bytes) and verify the plaintext's
 * hash.  0 if sound; -EIO with a reason in @why (@whylen bytes) if not.
 * Logs nothing: for checkers that report damage themselves.
 */
int kv_block_verify(const void *val, size_t vlen,
		    const uint8_t hash[BFS_HASH_SIZE], void *out, char *why,
		    size_t whylen);

/* Current reference count of @hash (0 if it has none). */
int kv_block_refcount(struct kv *kv, const uint8_t hash[BFS_HASH_SIZE],
		      int64_t *count);

/*
 * Free queued blocks whose count dropped to zero: processes up to @max
 * entries of the GC queue (0 = all); *freed (may be NULL) gets the number
 * of blocks deleted.  Safe to run concurrently with writers.
 */
int kv_gc(struct kv *kv, size_t max, size_t *freed);

/*
 * kv_gc(), unless no block was unreferenced through kv_block_unref() since
 * the start of the last kv_gc() pass that went through the whole queue (0
 * at once).  For a periodic collector: a pass walks the queue from its
 * start, over the tombstones RocksDB keeps of entries already freed until
 * it compacts them away, which costs CPU even with nothing to free.  Queue
 * entries written some other way (snap/check.c's repair) wait for the next
 * kv_gc().
 */
int kv_gc_if_queued(struct kv *kv, size_t max, size_t *freed);

struct kv_stats {
	uint64_t blocks;        /* distinct stored blocks */
	uint64_t refs;          /* references (sum of counts) */
	uint64_t logical_bytes; /* refs * BFS_BLOCK_SIZE */
	uint64_t stored_bytes;  /* sum of stored block value sizes */
	uint64_t unique_bytes;  /* blocks * BFS_BLOCK_SIZE */
	uint64_t gc_pending;    /* entries in the GC queue */
	uint64_t sst_bytes;     /* RocksDB live SST files, all families */
	uint64_t wal_bytes;     /* RocksDB write-ahead log */
};

/* Scan the reference counts and fill @st.  Cost: one pass over "refs". */
int kv_stats(struct kv *kv, struct kv_stats *st);

/* Compact every column family (reclaims space of deleted keys). */
int kv_compact(struct kv *kv);

/* ---- fault injection (tests) ---------------------------------------- */

enum kv_fault_op {
	KV_FAULT_WRITE = 1 << 0, /* kv_commit */
	KV_FAULT_SYNC = 1 << 1,  /* kv_sync */
	/* kv_get, kv_block_read, iterator creation, and the block lookups of
	 * kv_block_ref / kv_block_ref_hash */
	KV_FAULT_READ = 1 << 2,
	/* kv_iter_seek, kv_iter_seek_first, kv_iter_next of an iterator made
	 * by kv_iter_new: the iterator stops (not valid) and kv_iter_status
	 * returns the error, as when RocksDB meets a bad block mid-scan */
	KV_FAULT_ITER = 1 << 3,
	/* not an op: count and fail only the calls made by the thread that
	 * called kv_fault_set(), so that background threads (the collector,
	 * the pruner) neither shift the count nor take the fault */
	KV_FAULT_THIS_THREAD = 1 << 8,
};

/*
 * Arm fault injection: the @nth call (1-based) counted among @ops from now
 * on fails with -@err (EIO, ENOSPC or ENOMEM) without reaching RocksDB; if
 * @persistent, every later call among @ops fails too.  nth == 0 disarms
 * (calls among @ops are still counted).
 */
void kv_fault_set(struct kv *kv, unsigned ops, unsigned long nth, int err,
		  bool persistent);
/* Number of calls among the armed ops counted since kv_fault_set(), and
 * whether a fault has fired. */
unsigned long kv_fault_calls(struct kv *kv, bool *fired);

#endif /* BFS_KV_H */
