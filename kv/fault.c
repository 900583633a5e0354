/* SPDX-License-Identifier: MIT */
/*
 * kv/fault.c - fault injection for tests (SQLite's VFS trick).
 *
 * kv_commit, kv_sync, kv_get, kv_block_read, the block lookups of
 * kv_block_ref*, kv_iter_new and the moves of its iterators call
 * kv_fault_check() before they reach RocksDB.  Calls are counted whenever
 * their op is in the armed mask, even with nth == 0, so a test can first
 * count the calls a workload makes and then fail each of them in turn.
 */
#include <errno.h>

#include "kv_int.h"

/* Its address identifies the calling thread (distinct in every live one). */
static __thread char thread_token;

void kv_fault_set(struct kv *kv, unsigned ops, unsigned long nth, int err,
		  bool persistent)
{
	struct kv_fault *f = &kv->fault;

	/* Disarm first so that no call sees a half-written setting fire. */
	atomic_store(&f->nth, 0);
	atomic_store(&f->err, err > 0 ? err : EIO);
	atomic_store(&f->persistent, persistent);
	atomic_store(&f->calls, 0);
	atomic_store(&f->fired, false);
	atomic_store(&f->thread, (ops & KV_FAULT_THIS_THREAD) ?
					 (uintptr_t)&thread_token : 0);
	atomic_store(&f->ops, ops);
	atomic_store(&f->nth, nth);
}

unsigned long kv_fault_calls(struct kv *kv, bool *fired)
{
	if (fired)
		*fired = atomic_load(&kv->fault.fired);
	return atomic_load(&kv->fault.calls);
}

int kv_fault_check(struct kv *kv, enum kv_fault_op op)
{
	struct kv_fault *f = &kv->fault;
	unsigned long n, nth;

	uintptr_t th;

	if (!(atomic_load_explicit(&f->ops, memory_order_relaxed) & op))
		return 0;
	th = atomic_load(&f->thread);
	if (th && th != (uintptr_t)&thread_token)
		return 0;
	n = atomic_fetch_add(&f->calls, 1) + 1;
	nth = atomic_load(&f->nth);
	if (nth == 0)
		return 0;
	if (n == nth || (n > nth && atomic_load(&f->persistent))) {
		atomic_store(&f->fired, true);
		return -atomic_load(&f->err);
	}
	return 0;
}
