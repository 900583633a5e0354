/* SPDX-License-Identifier: MIT */
/*
 * kv/merge.c - the "bfs.refcount" merge operator of the "refs" family.
 *
 * Values and operands share the 12-byte layout of kv/format.h: a signed
 * count (a delta in operands) and a stored length (0 = unchanged).  A merge
 * adds the counts and keeps the last non-zero length.  Anything that is not
 * 12 bytes long fails the merge, which RocksDB reports as corruption on the
 * read that needed it.
 */
#include <stdlib.h>
#include <string.h>

#include "kv_int.h"

struct ref_acc {
	int64_t count;
	uint32_t len;
};

static bool ref_add(struct ref_acc *acc, const char *v, size_t vlen)
{
	const uint8_t *p = (const uint8_t *)v;
	uint32_t len;

	if (vlen != BFS_REF_VALUE_SIZE)
		return false;
	acc->count += (int64_t)bfs_get_u64(p);
	len = bfs_get_u32(p + 8);
	if (len)
		acc->len = len;
	return true;
}

/* The result is malloc()ed; RocksDB copies it and hands it back to
 * ref_delete_value(). */
static char *ref_result(const struct ref_acc *acc, unsigned char *success,
			size_t *new_len)
{
	uint8_t *out = malloc(BFS_REF_VALUE_SIZE);

	if (!out) {
		*success = 0;
		*new_len = 0;
		return NULL;
	}
	kv_ref_encode(out, acc->count, acc->len);
	*success = 1;
	*new_len = BFS_REF_VALUE_SIZE;
	return (char *)out;
}

static char *ref_full_merge(void *state, const char *key, size_t klen,
			    const char *existing, size_t existing_len,
			    const char *const *ops, const size_t *op_lens,
			    int nops, unsigned char *success, size_t *new_len)
{
	struct ref_acc acc = { 0, 0 };

	*success = 0;
	*new_len = 0;
	if (existing && !ref_add(&acc, existing, existing_len))
		return NULL;
	for (int i = 0; i < nops; i++)
		if (!ref_add(&acc, ops[i], op_lens[i]))
			return NULL;
	return ref_result(&acc, success, new_len);
}

static char *ref_partial_merge(void *state, const char *key, size_t klen,
			       const char *const *ops, const size_t *op_lens,
			       int nops, unsigned char *success,
			       size_t *new_len)
{
	struct ref_acc acc = { 0, 0 };

	*success = 0;
	*new_len = 0;
	for (int i = 0; i < nops; i++)
		if (!ref_add(&acc, ops[i], op_lens[i]))
			return NULL;
	return ref_result(&acc, success, new_len);
}

static void ref_delete_value(void *state, const char *value, size_t vlen)
{
	free((void *)value);
}

static void ref_destroy(void *state)
{
}

static const char *ref_name(void *state)
{
	return "bfs.refcount";
}

/* A new operator; rocksdb_options_set_merge_operator() takes ownership. */
rocksdb_mergeoperator_t *kv_refcount_merge_operator(void)
{
	return rocksdb_mergeoperator_create(NULL, ref_destroy, ref_full_merge,
					    ref_partial_merge,
					    ref_delete_value, ref_name);
}
