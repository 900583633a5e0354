/* SPDX-License-Identifier: MIT */
/*
 * tests/snap/test_snap_data.c - unit tests of snap/ file data: read/write
 * across 8 KiB blocks, holes, dedup, truncate up and down, sparse offsets
 * beyond 4 GiB, fallocate, copy_range, SEEK_DATA/SEEK_HOLE, unlinked open
 * files and orphans, block freeing, persistence and concurrency; through
 * snap.h only, on real RocksDB in a temporary directory under /tmp
 * (removed afterwards).
 *
 * BFS_TEST_SEED=N reruns the randomised model test with seed N.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "snap/snap.h"
#include "snap_env.h"

#define BS 8192u
#define KiB 1024ull
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)
#define UID 1000u
#define GID 1000u

static int setup(void **state)
{
	return env_setup(state, "/tmp/bfs-snap-data.XXXXXX", UID, GID);
}


static uint64_t mkf(struct env *e, const char *name)
{
	struct snap_attr a;

	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, name, S_IFREG | 0644,
				    0, UID, GID, &a), 0);
	return a.ino;
}

static struct snap_attr ga(struct env *e, uint64_t ino)
{
	struct snap_attr a;

	assert_int_equal(snap_getattr(e->t, ino, &a), 0);
	return a;
}

static struct snap_stats stats(struct env *e)
{
	struct snap_stats st;

	assert_int_equal(snap_stats(e->s, &st), 0);
	return st;
}

/* A deterministic, never-zero byte for absolute offset @off. */
static uint8_t pat_byte(uint64_t off, uint32_t seed)
{
	uint64_t x = (off + 1) * 0x9E3779B97F4A7C15ull ^
		     ((uint64_t)seed * 0xD1B54A32D192ED03ull);

	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 29;
	return (uint8_t)(x % 255 + 1);
}

static void fill(uint8_t *buf, uint64_t off, size_t len, uint32_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = pat_byte(off + i, seed);
}

static void wr(struct env *e, uint64_t ino, const void *buf, size_t len,
	       uint64_t off)
{
	assert_int_equal(snap_write(e->t, ino, buf, len, off), (ssize_t)len);
}

static void wr_pat(struct env *e, uint64_t ino, uint64_t off, size_t len,
		   uint32_t seed)
{
	uint8_t *buf = malloc(len);

	assert_non_null(buf);
	fill(buf, off, len, seed);
	wr(e, ino, buf, len, off);
	free(buf);
}

/* Bytes [off, off+len) of @ino are pattern @seed as generated for offsets
 * [poff, poff+len) (seed 0: zeros). */
static void check_pat_at(struct env *e, uint64_t ino, uint64_t off, size_t len,
			 uint32_t seed, uint64_t poff)
{
	size_t chunk = len < 1 * MiB ? len : 1 * MiB;
	uint8_t *buf = malloc(chunk ? chunk : 1);

	assert_non_null(buf);
	for (size_t done = 0; done < len;) {
		size_t n = len - done < chunk ? len - done : chunk;

		memset(buf, 0xEE, n);
		assert_int_equal(snap_read(e->t, ino, buf, n, off + done),
				 (ssize_t)n);
		for (size_t i = 0; i < n; i++) {
			uint8_t want = seed ? pat_byte(poff + done + i, seed) : 0;

			if (buf[i] != want)
				fail_msg("ino %llu offset %llu: byte %#x, want %#x",
					 (unsigned long long)ino,
					 (unsigned long long)(off + done + i),
					 buf[i], want);
		}
		done += n;
	}
	free(buf);
}

static void check_pat(struct env *e, uint64_t ino, uint64_t off, size_t len,
		      uint32_t seed)
{
	check_pat_at(e, ino, off, len, seed, off);
}

static void check_zero(struct env *e, uint64_t ino, uint64_t off, size_t len)
{
	check_pat(e, ino, off, len, 0);
}

/* ---- read / write -------------------------------------------------------- */

static void test_rw_unaligned(void **state)
{
	struct env *e = *state;
	enum { LEN = 5 * 8192 };
	uint8_t model[LEN + 100] = { 0 }, buf[LEN + 100];
	uint64_t f = mkf(e, "f");
	struct snap_attr a;
	struct {
		uint64_t off;
		size_t len;
	} w[] = {
		{ 5000, 20000 },  /* blocks 0..3, both ends unaligned */
		{ 8190, 4 },      /* across the 0/1 boundary */
		{ 0, 1 },         /* first byte */
		{ 16384, 8192 },  /* exactly block 2 */
		{ 8191, 8194 },   /* last byte of 0 to first of 2 */
		{ 30000, 10960 }, /* to the end of block 4 */
		{ 100, 3 },
	};

	for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
		uint8_t data[LEN];

		fill(data, w[i].off, w[i].len, (uint32_t)i + 1);
		wr(e, f, data, w[i].len, w[i].off);
		memcpy(model + w[i].off, data, w[i].len);
	}
	a = ga(e, f);
	assert_int_equal(a.size, 40960);
	assert_int_equal(a.blocks, 5 * 16);
	memset(buf, 0xEE, sizeof(buf));
	assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0), 40960);
	assert_memory_equal(buf, model, 40960);
	/* Unaligned reads of every size across boundaries. */
	for (uint64_t off = 8000; off < 8400; off += 37) {
		for (size_t len = 1; len < 9000; len += 997) {
			size_t want = off + len > 40960 ? 40960 - off : len;

			assert_int_equal(snap_read(e->t, f, buf, len, off),
					 (ssize_t)want);
			assert_memory_equal(buf, model + off, want);
		}
	}
	/* Read of size 0. */
	assert_int_equal(snap_read(e->t, f, buf, 0, 10), 0);
	/* A write of size 0 changes nothing. */
	assert_int_equal(snap_write(e->t, f, buf, 0, 100000), 0);
	assert_int_equal(ga(e, f).size, 40960);

	/* Persistence. */
	env_reopen(e);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0), 40960);
	assert_memory_equal(buf, model, 40960);
	assert_int_equal(ga(e, f).blocks, 5 * 16);
}

static void test_read_eof(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f"), g = mkf(e, "empty");
	uint8_t buf[20000];

	wr_pat(e, f, 0, 10000, 7);
	/* Short read at EOF. */
	memset(buf, 0xEE, sizeof(buf));
	assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0), 10000);
	check_pat(e, f, 0, 10000, 7);
	assert_int_equal(snap_read(e->t, f, buf, 500, 9800), 200);
	assert_int_equal(snap_read(e->t, f, buf, 8192, 8192), 10000 - 8192);
	/* At and past EOF: 0. */
	assert_int_equal(snap_read(e->t, f, buf, 100, 10000), 0);
	assert_int_equal(snap_read(e->t, f, buf, 100, 10001), 0);
	assert_int_equal(snap_read(e->t, f, buf, 100, 1ull << 40), 0);
	assert_int_equal(snap_read(e->t, f, buf, 100, UINT64_MAX - 10), 0);
	assert_int_equal(snap_read(e->t, g, buf, 100, 0), 0);
	/* A write past EOF leaves a hole that reads as zeros. */
	wr_pat(e, g, 20000, 10, 3);
	assert_int_equal(ga(e, g).size, 20010);
	assert_int_equal(ga(e, g).blocks, 16);
	check_zero(e, g, 0, 20000);
	check_pat(e, g, 20000, 10, 3);
	/* Errors. */
	assert_int_equal(snap_read(e->t, SNAP_ROOT_INO, buf, 10, 0), -EISDIR);
	assert_int_equal(snap_read(e->t, 999999, buf, 10, 0), -ENOENT);
	assert_int_equal(snap_write(e->t, SNAP_ROOT_INO, buf, 10, 0), -EISDIR);
	assert_int_equal(snap_write(e->t, 999999, buf, 10, 0), -ENOENT);
	{
		struct snap_attr a;

		assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "fifo",
					    S_IFIFO | 0644, 0, UID, GID, &a), 0);
		assert_int_equal(snap_write(e->t, a.ino, buf, 10, 0), -EINVAL);
	}
	/* Beyond the maximum file size (1 PiB). */
	assert_int_equal(snap_write(e->t, f, buf, 10, 1ull << 50), -EFBIG);
	assert_int_equal(snap_write(e->t, f, buf, 10, UINT64_MAX - 5), -EFBIG);
	assert_int_equal(ga(e, f).size, 10000);
}

static void test_zero_holes(void **state)
{
	struct env *e = *state;
	uint8_t *zeros = calloc(1, 4 * BS + 500), blk[BS];
	struct snap_stats st0, st1;
	struct snap_attr a;
	uint64_t f, g;

	assert_non_null(zeros);
	wr_pat(e, mkf(e, "other"), 0, 3 * BS, 1);
	st0 = stats(e);
	assert_int_equal(st0.blocks, 3);

	/* A file of zeros: no blocks at all. */
	f = mkf(e, "zeros");
	wr(e, f, zeros, 4 * BS + 500, 0);
	wr(e, f, zeros, 100, 3 * BS - 50);
	a = ga(e, f);
	assert_int_equal(a.size, 4 * BS + 500);
	assert_int_equal(a.blocks, 0);
	st1 = stats(e);
	assert_int_equal(st1.blocks, st0.blocks);
	assert_int_equal(st1.refs, st0.refs);
	check_zero(e, f, 0, 4 * BS + 500);

	/* A data block overwritten with zeros becomes a hole again. */
	g = mkf(e, "g");
	wr_pat(e, g, 0, 2 * BS, 9);
	assert_int_equal(ga(e, g).blocks, 32);
	assert_int_equal(stats(e).blocks, st0.blocks + 2);
	wr(e, g, zeros, BS, BS);
	assert_int_equal(ga(e, g).blocks, 16);
	assert_int_equal(stats(e).blocks, st0.blocks + 1);
	check_zero(e, g, BS, BS);
	/* A partial zero write that leaves the block all zero. */
	fill(blk, 0, 100, 4);
	wr(e, g, blk, 100, BS + 50);
	assert_int_equal(ga(e, g).blocks, 32);
	wr(e, g, zeros, 100, BS + 50);
	assert_int_equal(ga(e, g).blocks, 16);
	assert_int_equal(stats(e).blocks, st0.blocks + 1);
	/* A partial zero write that leaves data keeps the block. */
	wr(e, g, zeros, 100, 50);
	assert_int_equal(ga(e, g).blocks, 16);
	check_zero(e, g, 50, 100);
	check_pat(e, g, 150, BS - 150, 9);
	free(zeros);
}

/* snap_write_ex reports exactly the writes that change st_blocks (the FUSE
 * layer drops the kernel's cached attributes only for those). */
static void test_write_blocks_changed(void **state)
{
	struct env *e = *state;
	uint8_t blk[BS], zeros[BS] = { 0 };
	bool changed = true;
	uint64_t f = mkf(e, "bc");

	fill(blk, 0, BS, 3);
	/* a new block: changed */
	assert_int_equal(snap_write_ex(e->t, f, blk, BS, 0, &changed), BS);
	assert_true(changed);
	/* overwriting it with other data, whole or in part: unchanged */
	fill(blk, 0, BS, 4);
	assert_int_equal(snap_write_ex(e->t, f, blk, BS, 0, &changed), BS);
	assert_false(changed);
	assert_int_equal(snap_write_ex(e->t, f, blk, 100, 10, &changed), 100);
	assert_false(changed);
	/* zeros into a hole past the end: the size grows, no block: unchanged */
	assert_int_equal(snap_write_ex(e->t, f, zeros, BS, 3 * BS, &changed), BS);
	assert_false(changed);
	assert_int_equal(ga(e, f).blocks, 16);
	/* data into that hole: changed */
	assert_int_equal(snap_write_ex(e->t, f, blk, 1, 3 * BS + 5, &changed), 1);
	assert_true(changed);
	assert_int_equal(ga(e, f).blocks, 32);
	/* zeros over the data of block 0: a hole made: changed */
	assert_int_equal(snap_write_ex(e->t, f, zeros, BS, 0, &changed), BS);
	assert_true(changed);
	assert_int_equal(ga(e, f).blocks, 16);
	/* a failed write leaves it false */
	changed = true;
	assert_int_equal(snap_write_ex(e->t, SNAP_ROOT_INO, blk, 1, 0, &changed),
			 -EISDIR);
	assert_false(changed);
}

static void test_dedup(void **state)
{
	struct env *e = *state;
	uint64_t a = mkf(e, "a"), b = mkf(e, "b"), c = mkf(e, "c");
	uint8_t *buf = malloc(4 * BS);
	struct snap_stats st;

	assert_non_null(buf);
	fill(buf, 0, 4 * BS, 5);
	wr(e, a, buf, 4 * BS, 0);
	st = stats(e);
	assert_int_equal(st.blocks, 4);
	assert_int_equal(st.refs, 4);
	/* Same content in another file: stored once, referenced twice. */
	wr(e, b, buf, 4 * BS, 0);
	st = stats(e);
	assert_int_equal(st.blocks, 4);
	assert_int_equal(st.refs, 8);
	assert_int_equal(st.logical_bytes, 8 * BS);
	assert_int_equal(ga(e, b).blocks, 4 * 16);
	/* At another block-aligned offset, in a third file. */
	wr(e, c, buf + BS, BS, 100 * BS);
	st = stats(e);
	assert_int_equal(st.blocks, 4);
	assert_int_equal(st.refs, 9);
	/* Identical blocks within one file. */
	memset(buf, 0x5a, 4 * BS);
	wr(e, c, buf, 4 * BS, 0);
	st = stats(e);
	assert_int_equal(st.blocks, 5);
	assert_int_equal(st.refs, 13);
	/* Unlinking one copy keeps the blocks. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "a"), 0);
	st = stats(e);
	assert_int_equal(st.blocks, 5);
	assert_int_equal(st.refs, 9);
	check_pat(e, b, 0, 4 * BS, 5);
	assert_int_equal(snap_gc(e->s, 0), 0);
	check_pat(e, b, 0, 4 * BS, 5);
	free(buf);
}

/* ---- truncate --------------------------------------------------------------- */

static void truncate_to(struct env *e, uint64_t ino, uint64_t size)
{
	struct snap_attr in = { .size = size }, out;

	assert_int_equal(snap_setattr(e->t, ino, &in, SNAP_SET_SIZE, &out), 0);
	assert_int_equal(out.size, size);
	assert_int_equal(ga(e, ino).size, size);
}

static void test_truncate_down_up(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f");
	struct snap_attr a0, a1;

	wr_pat(e, f, 0, 10 * BS, 3);
	assert_int_equal(stats(e).blocks, 10);

	/* Down to a block boundary, then up: zeros, no stale data. */
	a0 = ga(e, f);
	usleep(2000);
	truncate_to(e, f, 4 * BS);
	a1 = ga(e, f);
	assert_int_equal(a1.blocks, 4 * 16);
	assert_true(a1.mtime.tv_sec > a0.mtime.tv_sec ||
		    (a1.mtime.tv_sec == a0.mtime.tv_sec &&
		     a1.mtime.tv_nsec > a0.mtime.tv_nsec));
	assert_int_equal(stats(e).blocks, 4);
	truncate_to(e, f, 10 * BS);
	assert_int_equal(ga(e, f).blocks, 4 * 16);
	check_pat(e, f, 0, 4 * BS, 3);
	check_zero(e, f, 4 * BS, 6 * BS);

	/* Down to mid-block, then up: the rest of that block is zero. */
	truncate_to(e, f, 2 * BS + 1000);
	assert_int_equal(ga(e, f).blocks, 3 * 16);
	check_pat(e, f, 0, 2 * BS + 1000, 3);
	truncate_to(e, f, 3 * BS + 77);
	check_pat(e, f, 0, 2 * BS + 1000, 3);
	check_zero(e, f, 2 * BS + 1000, BS - 1000 + 77);
	/* Writing past EOF after a truncate does not expose old bytes. */
	truncate_to(e, f, 1000);
	wr_pat(e, f, 5000, 10, 8);
	check_pat(e, f, 0, 1000, 3);
	check_zero(e, f, 1000, 4000);
	check_pat(e, f, 5000, 10, 8);
	assert_int_equal(ga(e, f).size, 5010);
	assert_int_equal(ga(e, f).blocks, 16);

	/* Down to a size that leaves the last block all zero: a hole. */
	truncate_to(e, f, 20000);
	wr_pat(e, f, 3 * BS, 100, 4);   /* block 3 data at its start */
	assert_int_equal(ga(e, f).blocks, 32);
	truncate_to(e, f, 3 * BS + 10); /* keeps 10 bytes of block 3 */
	assert_int_equal(ga(e, f).blocks, 32);
	truncate_to(e, f, 3 * BS);      /* block 3 gone */
	assert_int_equal(ga(e, f).blocks, 16);

	/* To zero and the same size (no-op). */
	truncate_to(e, f, 3 * BS);
	truncate_to(e, f, 0);
	assert_int_equal(ga(e, f).blocks, 0);
	assert_int_equal(stats(e).blocks, 0);
	truncate_to(e, f, 12345);
	check_zero(e, f, 0, 12345);
	assert_int_equal(ga(e, f).blocks, 0);

	/* Limits. */
	{
		struct snap_attr in = { .size = (1ull << 50) + 1 };

		assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_SIZE, NULL),
				 -EFBIG);
		assert_int_equal(ga(e, f).size, 12345);
	}
	env_reopen(e);
	assert_int_equal(ga(e, f).size, 12345);
	check_zero(e, f, 0, 12345);
}

static void test_truncate_mid_block(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f");
	uint8_t buf[3 * 8192];

	/* Every cut point inside one block keeps the head and zeroes the
	 * tail for a later extension. */
	for (uint64_t cut = BS + 1; cut < 2 * BS; cut += 1111) {
		wr_pat(e, f, 0, 3 * BS, 6);
		truncate_to(e, f, cut);
		assert_int_equal(ga(e, f).blocks, 2 * 16);
		assert_int_equal(snap_read(e->t, f, buf, sizeof(buf), 0),
				 (ssize_t)cut);
		truncate_to(e, f, 3 * BS);
		check_pat(e, f, 0, cut, 6);
		check_zero(e, f, cut, 3 * BS - cut);
	}
	/* A cut at 1 byte. */
	truncate_to(e, f, 1);
	truncate_to(e, f, BS);
	check_pat(e, f, 0, 1, 6);
	check_zero(e, f, 1, BS - 1);
}

/* ---- large sparse offsets ----------------------------------------------------- */

static void test_sparse_large(void **state)
{
	struct env *e = *state;
	const uint64_t g5 = 5 * GiB, g4 = 4 * GiB, t1 = TiB, t40 = 40 * TiB;
	uint64_t f = mkf(e, "sparse"), res = 0;
	struct snap_attr a;
	uint8_t buf[300];

	/* 4 KiB at 5 GiB. */
	wr_pat(e, f, g5, 4096, 11);
	a = ga(e, f);
	assert_int_equal(a.size, g5 + 4096);
	assert_int_equal(a.blocks, 16);
	assert_int_equal(stats(e).blocks, 1);
	check_pat(e, f, g5, 4096, 11);
	check_zero(e, f, 0, 64 * KiB);
	check_zero(e, f, g4 - 100, 200);
	check_zero(e, f, g5 - 8192, 8192);
	check_zero(e, f, 2 * GiB + 12345, 3 * MiB);
	assert_int_equal(snap_read(e->t, f, buf, 300, g5 + 4000), 96);

	/* Across the 4 GiB boundary. */
	wr_pat(e, f, g4 - 3000, 6000, 12);
	assert_int_equal(ga(e, f).blocks, 3 * 16);
	check_pat(e, f, g4 - 3000, 6000, 12);
	check_zero(e, f, g4 - BS, BS - 3000);
	check_zero(e, f, g4 + 3000, BS - 3000);
	check_pat(e, f, g5, 4096, 11);

	/* Holes and data as lseek sees them. */
	assert_int_equal(snap_lseek(e->t, f, 0, SEEK_DATA, &res), 0);
	assert_int_equal(res, g4 - BS);
	assert_int_equal(snap_lseek(e->t, f, 0, SEEK_HOLE, &res), 0);
	assert_int_equal(res, 0);
	assert_int_equal(snap_lseek(e->t, f, g4 - BS, SEEK_HOLE, &res), 0);
	assert_int_equal(res, g4 + BS);
	assert_int_equal(snap_lseek(e->t, f, g4 + BS, SEEK_DATA, &res), 0);
	assert_int_equal(res, g5);
	assert_int_equal(snap_lseek(e->t, f, g5 + 10, SEEK_HOLE, &res), 0);
	assert_int_equal(res, g5 + 4096);

	/* 100 bytes at 1 TiB + 50. */
	wr_pat(e, f, t1 + 50, 100, 13);
	a = ga(e, f);
	assert_int_equal(a.size, t1 + 150);
	assert_int_equal(a.blocks, 4 * 16);
	memset(buf, 0xEE, sizeof(buf));
	assert_int_equal(snap_read(e->t, f, buf, 300, t1), 150);
	for (int i = 0; i < 50; i++)
		assert_int_equal(buf[i], 0);
	check_pat(e, f, t1 + 50, 100, 13);
	check_zero(e, f, t1 - 1 * MiB, 1 * MiB);
	check_zero(e, f, 700 * GiB, 64 * KiB);
	/* Inside the 5 GiB data block: data; after it, the next is 1 TiB. */
	assert_int_equal(snap_lseek(e->t, f, g5 + 4096, SEEK_DATA, &res), 0);
	assert_int_equal(res, g5 + 4096);
	assert_int_equal(snap_lseek(e->t, f, g5 + BS, SEEK_DATA, &res), 0);
	assert_int_equal(res, t1);
	assert_int_equal(snap_lseek(e->t, f, g5 + 4096, SEEK_HOLE, &res), 0);
	assert_int_equal(res, g5 + BS);

	/* At 40 TiB: block index above 2^32. */
	wr_pat(e, f, t40 + 8191, 2, 14);
	a = ga(e, f);
	assert_int_equal(a.size, t40 + 8193);
	assert_int_equal(a.blocks, 6 * 16);
	check_pat(e, f, t40 + 8191, 2, 14);
	check_zero(e, f, t40, 8191);
	/* Blocks whose index differs from others only above bit 32. */
	check_zero(e, f, t40 - (1ull << 32) * BS + BS, 100);
	check_zero(e, f, (t40 + 8191) - (1ull << 32) * BS, 2);
	check_pat(e, f, t1 + 50, 100, 13);
	assert_int_equal(stats(e).blocks, 6);

	env_reopen(e);
	a = ga(e, f);
	assert_int_equal(a.size, t40 + 8193);
	assert_int_equal(a.blocks, 6 * 16);
	check_pat(e, f, g5, 4096, 11);
	check_pat(e, f, g4 - 3000, 6000, 12);
	check_pat(e, f, t40 + 8191, 2, 14);

	/* Truncate down across the sparse range, then up again. */
	truncate_to(e, f, g5 + 100);
	a = ga(e, f);
	assert_int_equal(a.blocks, 3 * 16);
	check_pat(e, f, g5, 100, 11);
	assert_int_equal(snap_read(e->t, f, buf, 300, g5), 100);
	assert_int_equal(stats(e).blocks, 3);
	truncate_to(e, f, 2 * TiB);
	check_zero(e, f, g5 + 100, 8192);
	check_zero(e, f, t1, 300);
	assert_int_equal(ga(e, f).blocks, 3 * 16);
	assert_int_equal(snap_lseek(e->t, f, g5 + BS, SEEK_DATA, &res), -ENXIO);
	assert_int_equal(snap_lseek(e->t, f, g5 + BS, SEEK_HOLE, &res), 0);
	assert_int_equal(res, g5 + BS);
	/* Punch a hole far out, and truncate to zero. */
	assert_int_equal(snap_fallocate(e->t, f, FALLOC_FL_PUNCH_HOLE |
					FALLOC_FL_KEEP_SIZE, g4 - BS, 2 * BS), 0);
	assert_int_equal(ga(e, f).blocks, 16);
	check_zero(e, f, g4 - BS, 2 * BS);
	truncate_to(e, f, 0);
	assert_int_equal(ga(e, f).blocks, 0);
	assert_int_equal(stats(e).blocks, 0);
}

/* ---- fallocate ---------------------------------------------------------------- */

static void test_fallocate(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f");
	struct snap_attr a, d;

	wr_pat(e, f, 0, 100, 2);
	/* Mode 0 extends the size with holes. */
	assert_int_equal(snap_fallocate(e->t, f, 0, 0, 50000), 0);
	a = ga(e, f);
	assert_int_equal(a.size, 50000);
	assert_int_equal(a.blocks, 16);
	check_pat(e, f, 0, 100, 2);
	check_zero(e, f, 100, 50000 - 100);
	/* Inside the file: no change. */
	assert_int_equal(snap_fallocate(e->t, f, 0, 1000, 100), 0);
	assert_int_equal(ga(e, f).size, 50000);
	/* Past EOF with a gap. */
	assert_int_equal(snap_fallocate(e->t, f, 0, 100000, 1), 0);
	assert_int_equal(ga(e, f).size, 100001);
	/* KEEP_SIZE does not change the size. */
	assert_int_equal(snap_fallocate(e->t, f, FALLOC_FL_KEEP_SIZE, 0, MiB), 0);
	assert_int_equal(snap_fallocate(e->t, f, FALLOC_FL_KEEP_SIZE, 200000, 10),
			 0);
	a = ga(e, f);
	assert_int_equal(a.size, 100001);
	assert_int_equal(a.blocks, 16);
	check_pat(e, f, 0, 100, 2);
	/* Beyond 4 GiB. */
	assert_int_equal(snap_fallocate(e->t, f, 0, 6 * GiB, 5), 0);
	a = ga(e, f);
	assert_int_equal(a.size, 6 * GiB + 5);
	assert_int_equal(a.blocks, 16);
	check_zero(e, f, 6 * GiB - 10, 15);

	/* Errors. */
	assert_int_equal(snap_fallocate(e->t, f, FALLOC_FL_PUNCH_HOLE, 0, 10),
			 -EINVAL);
	assert_int_equal(snap_fallocate(e->t, f, FALLOC_FL_ZERO_RANGE, 0, 10),
			 -EOPNOTSUPP);
	assert_int_equal(snap_fallocate(e->t, f, FALLOC_FL_COLLAPSE_RANGE, 0, BS),
			 -EOPNOTSUPP);
	assert_int_equal(snap_fallocate(e->t, f, 0, 0, 0), -EINVAL);
	assert_int_equal(snap_fallocate(e->t, f, 0, 1ull << 50, 1), -EFBIG);
	assert_int_equal(snap_fallocate(e->t, f, 0, UINT64_MAX - 1, 5), -EFBIG);
	assert_int_equal(snap_fallocate(e->t, SNAP_ROOT_INO, 0, 0, 10), -EISDIR);
	assert_int_equal(snap_fallocate(e->t, 999999, 0, 0, 10), -ENOENT);
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "fifo", S_IFIFO | 0644, 0,
				    UID, GID, &d), 0);
	assert_int_equal(snap_fallocate(e->t, d.ino, 0, 0, 10), -ENODEV);
	assert_int_equal(ga(e, f).size, 6 * GiB + 5);
}

/* Model check for punch tests: file == model, st_blocks == nonzero blocks. */
static void check_model(struct env *e, uint64_t ino, const uint8_t *model,
			uint64_t size)
{
	uint8_t *buf = malloc(size + BS);
	uint64_t nz = 0;

	assert_non_null(buf);
	assert_int_equal(ga(e, ino).size, size);
	assert_int_equal(snap_read(e->t, ino, buf, size + BS, 0), (ssize_t)size);
	if (memcmp(buf, model, size) != 0) {
		for (uint64_t i = 0; i < size; i++)
			if (buf[i] != model[i])
				fail_msg("offset %llu: %#x, want %#x",
					 (unsigned long long)i, buf[i], model[i]);
	}
	for (uint64_t b = 0; b * BS < size; b++) {
		uint64_t end = (b + 1) * BS < size ? (b + 1) * BS : size;

		for (uint64_t i = b * BS; i < end; i++) {
			if (model[i]) {
				nz++;
				break;
			}
		}
	}
	assert_int_equal(ga(e, ino).blocks, nz * 16);
	free(buf);
}

static void punch(struct env *e, uint64_t ino, uint8_t *model, uint64_t size,
		  uint64_t off, uint64_t len)
{
	assert_int_equal(snap_fallocate(e->t, ino, FALLOC_FL_PUNCH_HOLE |
					FALLOC_FL_KEEP_SIZE, off, len), 0);
	if (off < size)
		memset(model + off, 0, (off + len > size ? size : off + len) - off);
	check_model(e, ino, model, size);
}

static void test_punch_hole(void **state)
{
	struct env *e = *state;
	const uint64_t size = 5 * BS + 1000;
	uint8_t *model = calloc(1, size + 2 * BS);
	uint64_t f = mkf(e, "f");
	struct snap_stats st;

	assert_non_null(model);
	fill(model, 0, size, 21);
	wr(e, f, model, size, 0);
	check_model(e, f, model, size);
	assert_int_equal(ga(e, f).blocks, 6 * 16);
	assert_int_equal(stats(e).blocks, 6);

	/* Aligned: exactly block 1. */
	punch(e, f, model, size, BS, BS);
	assert_int_equal(ga(e, f).blocks, 5 * 16);
	assert_int_equal(stats(e).blocks, 5);
	/* Unaligned inside block 0: data stays around it. */
	punch(e, f, model, size, 100, 100);
	assert_int_equal(ga(e, f).blocks, 5 * 16);
	/* Unaligned edges over several blocks: the tail of 2, all of 3, the
	 * head of 4. */
	punch(e, f, model, size, 2 * BS + 4000, (4 * BS + 100) - (2 * BS + 4000));
	assert_int_equal(ga(e, f).blocks, 4 * 16);
	/* Leaving block 2 all zero by an unaligned punch of its head. */
	punch(e, f, model, size, 2 * BS, 4000);
	assert_int_equal(ga(e, f).blocks, 3 * 16);
	/* Within one block, both ends unaligned, not touching the edges. */
	punch(e, f, model, size, 4 * BS + 200, 300);
	/* Through EOF: clamped to the size; the tail block becomes a hole. */
	punch(e, f, model, size, 5 * BS, 5000);
	assert_int_equal(ga(e, f).blocks, 2 * 16);
	/* Entirely past EOF: nothing. */
	punch(e, f, model, size, size + 10, 100);
	punch(e, f, model, size, 100 * BS, BS);
	/* Over holes only. */
	punch(e, f, model, size, BS, BS);
	/* Block 0 all of it, with an unaligned start. */
	punch(e, f, model, size, 0, BS);
	assert_int_equal(ga(e, f).blocks, 16);
	st = stats(e);
	assert_int_equal(st.blocks, 1);
	assert_int_equal(st.refs, 1);

	/* A whole big range at once. */
	fill(model, 0, size, 22);
	wr(e, f, model, size, 0);
	punch(e, f, model, size, 1, size);
	assert_int_equal(ga(e, f).blocks, 16);
	env_reopen(e);
	check_model(e, f, model, size);
	free(model);
}

/* ---- copy_range --------------------------------------------------------------- */

static void test_copy_range(void **state)
{
	struct env *e = *state;
	const uint64_t ssize = 10 * BS + 500;
	uint64_t src = mkf(e, "src"), d1 = mkf(e, "d1"), d2 = mkf(e, "d2");
	uint64_t d3 = mkf(e, "d3");
	struct snap_stats st0, st;
	uint8_t *a = malloc(64 * BS), *b = malloc(64 * BS);

	assert_non_null(a);
	assert_non_null(b);
	wr_pat(e, src, 0, ssize, 31);
	st0 = stats(e);
	assert_int_equal(st0.blocks, 11);

	/* Aligned, whole file (len beyond EOF is clipped): blocks shared. */
	assert_int_equal(snap_copy_range(e->t, src, 0, e->t, d1, 0, 1 * MiB),
			 (ssize_t)ssize);
	assert_int_equal(ga(e, d1).size, ssize);
	assert_int_equal(ga(e, d1).blocks, 11 * 16);
	check_pat(e, d1, 0, ssize, 31);
	st = stats(e);
	assert_int_equal(st.blocks, st0.blocks);
	assert_int_equal(st.refs, 22);

	/* Aligned at another block offset, middle blocks only. */
	assert_int_equal(snap_copy_range(e->t, src, 2 * BS, e->t, d2, 7 * BS,
					 5 * BS), (ssize_t)(5 * BS));
	assert_int_equal(ga(e, d2).size, 12 * BS);
	assert_int_equal(ga(e, d2).blocks, 5 * 16);
	assert_int_equal(snap_read(e->t, d2, a, 5 * BS, 7 * BS), 5 * BS);
	assert_int_equal(snap_read(e->t, src, b, 5 * BS, 2 * BS), 5 * BS);
	assert_memory_equal(a, b, 5 * BS);
	check_zero(e, d2, 0, 7 * BS);
	assert_int_equal(stats(e).blocks, st0.blocks);

	/* Same residue, unaligned edges: head and tail copied, middle shared. */
	assert_int_equal(snap_copy_range(e->t, src, 100, e->t, d3, BS + 100,
					 3 * BS), (ssize_t)(3 * BS));
	assert_int_equal(ga(e, d3).size, 4 * BS + 100);
	assert_int_equal(snap_read(e->t, d3, a, 3 * BS, BS + 100), 3 * BS);
	check_pat(e, src, 100, 3 * BS, 31);
	assert_int_equal(snap_read(e->t, src, b, 3 * BS, 100), 3 * BS);
	assert_memory_equal(a, b, 3 * BS);
	check_zero(e, d3, 0, BS + 100);
	/* Two new blocks for the edges, the 2 middle ones shared. */
	assert_int_equal(stats(e).blocks, st0.blocks + 2);

	/* Unaligned (different residues): bytes equal. */
	{
		uint64_t d4 = mkf(e, "d4");

		wr_pat(e, d4, 0, 30000, 32);
		assert_int_equal(snap_copy_range(e->t, src, 100, e->t, d4, 3000,
						 20000), 20000);
		assert_int_equal(ga(e, d4).size, 30000);
		assert_int_equal(snap_read(e->t, d4, a, 20000, 3000), 20000);
		assert_int_equal(snap_read(e->t, src, b, 20000, 100), 20000);
		assert_memory_equal(a, b, 20000);
		check_pat(e, d4, 0, 3000, 32);
		check_pat(e, d4, 23000, 7000, 32);
		/* Clipped at the source's EOF, extending the destination. */
		assert_int_equal(snap_copy_range(e->t, src, ssize - 10, e->t, d4,
						 40001, 1000), 10);
		assert_int_equal(ga(e, d4).size, 40011);
		check_zero(e, d4, 30000, 10001);
		assert_int_equal(snap_read(e->t, d4, a, 10, 40001), 10);
		assert_int_equal(snap_read(e->t, src, b, 10, ssize - 10), 10);
		assert_memory_equal(a, b, 10);
	}

	/* Nothing to copy at or past EOF. */
	assert_int_equal(snap_copy_range(e->t, src, ssize, e->t, d1, 0, 100), 0);
	assert_int_equal(snap_copy_range(e->t, src, ssize + BS, e->t, d1, 0, 100),
			 0);
	/* Within one file, not overlapping: shared. */
	st = stats(e);
	assert_int_equal(snap_copy_range(e->t, src, 0, e->t, src, 20 * BS,
					 3 * BS), (ssize_t)(3 * BS));
	assert_int_equal(ga(e, src).size, 23 * BS);
	assert_int_equal(stats(e).blocks, st.blocks);
	assert_int_equal(snap_read(e->t, src, a, 3 * BS, 20 * BS), 3 * BS);
	assert_int_equal(snap_read(e->t, src, b, 3 * BS, 0), 3 * BS);
	assert_memory_equal(a, b, 3 * BS);
	/* Overlapping within one file: EINVAL. */
	assert_int_equal(snap_copy_range(e->t, src, 0, e->t, src, BS, 4 * BS),
			 -EINVAL);
	/* Non-files. */
	assert_int_equal(snap_copy_range(e->t, src, 0, e->t, SNAP_ROOT_INO, 0,
					 10), -EISDIR);
	assert_int_equal(snap_copy_range(e->t, SNAP_ROOT_INO, 0, e->t, d1, 0,
					 10), -EISDIR);
	assert_int_equal(snap_copy_range(e->t, 999999, 0, e->t, d1, 0, 10),
			 -ENOENT);

	/* Holes of the source replace data in the destination. */
	{
		uint64_t hs = mkf(e, "holes"), hd = mkf(e, "hd");

		wr_pat(e, hd, 0, 3 * BS, 33);
		wr_pat(e, hs, BS, BS, 34);
		truncate_to(e, hs, 3 * BS);
		assert_int_equal(snap_copy_range(e->t, hs, 0, e->t, hd, 0,
						 3 * BS), (ssize_t)(3 * BS));
		check_zero(e, hd, 0, BS);
		check_pat(e, hd, BS, BS, 34);
		check_zero(e, hd, 2 * BS, BS);
		assert_int_equal(ga(e, hd).blocks, 16);
	}

	/* The copies survive the source's removal and a reopen. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "src"), 0);
	env_reopen(e);
	check_pat(e, d1, 0, ssize, 31);
	check_pat_at(e, d2, 7 * BS, 5 * BS, 31, 2 * BS);
	check_pat_at(e, d3, BS + 100, 3 * BS, 31, 100);
	free(a);
	free(b);
}

/* ---- lseek -------------------------------------------------------------------- */

static void test_lseek(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f"), g = mkf(e, "g"), res;

	/* data [0, BS), hole [BS, 3 BS), data [3 BS, 3 BS + 100) = EOF */
	wr_pat(e, f, 0, BS, 1);
	wr_pat(e, f, 3 * BS, 100, 1);
	assert_int_equal(snap_lseek(e->t, f, 0, SEEK_DATA, &res), 0);
	assert_int_equal(res, 0);
	assert_int_equal(snap_lseek(e->t, f, 10, SEEK_DATA, &res), 0);
	assert_int_equal(res, 10);
	assert_int_equal(snap_lseek(e->t, f, 0, SEEK_HOLE, &res), 0);
	assert_int_equal(res, BS);
	assert_int_equal(snap_lseek(e->t, f, BS - 1, SEEK_HOLE, &res), 0);
	assert_int_equal(res, BS);
	assert_int_equal(snap_lseek(e->t, f, BS, SEEK_HOLE, &res), 0);
	assert_int_equal(res, BS);
	assert_int_equal(snap_lseek(e->t, f, BS + 5, SEEK_HOLE, &res), 0);
	assert_int_equal(res, BS + 5);
	assert_int_equal(snap_lseek(e->t, f, BS, SEEK_DATA, &res), 0);
	assert_int_equal(res, 3 * BS);
	assert_int_equal(snap_lseek(e->t, f, 2 * BS + 7, SEEK_DATA, &res), 0);
	assert_int_equal(res, 3 * BS);
	assert_int_equal(snap_lseek(e->t, f, 3 * BS + 50, SEEK_DATA, &res), 0);
	assert_int_equal(res, 3 * BS + 50);
	/* The end of the file is a hole. */
	assert_int_equal(snap_lseek(e->t, f, 3 * BS, SEEK_HOLE, &res), 0);
	assert_int_equal(res, 3 * BS + 100);
	assert_int_equal(snap_lseek(e->t, f, 3 * BS + 99, SEEK_HOLE, &res), 0);
	assert_int_equal(res, 3 * BS + 100);
	/* At and past EOF: ENXIO. */
	assert_int_equal(snap_lseek(e->t, f, 3 * BS + 100, SEEK_DATA, &res),
			 -ENXIO);
	assert_int_equal(snap_lseek(e->t, f, 3 * BS + 100, SEEK_HOLE, &res),
			 -ENXIO);
	assert_int_equal(snap_lseek(e->t, f, 1ull << 45, SEEK_DATA, &res),
			 -ENXIO);
	/* Trailing hole (size extended). */
	truncate_to(e, f, 10 * BS);
	assert_int_equal(snap_lseek(e->t, f, 4 * BS, SEEK_DATA, &res), -ENXIO);
	/* ... but the rest of the last data block is data. */
	assert_int_equal(snap_lseek(e->t, f, 3 * BS + 200, SEEK_DATA, &res), 0);
	assert_int_equal(res, 3 * BS + 200);
	assert_int_equal(snap_lseek(e->t, f, 3 * BS, SEEK_HOLE, &res), 0);
	assert_int_equal(res, 4 * BS);
	assert_int_equal(snap_lseek(e->t, f, 5 * BS, SEEK_HOLE, &res), 0);
	assert_int_equal(res, 5 * BS);
	/* An empty file, an all-hole file. */
	assert_int_equal(snap_lseek(e->t, g, 0, SEEK_DATA, &res), -ENXIO);
	assert_int_equal(snap_lseek(e->t, g, 0, SEEK_HOLE, &res), -ENXIO);
	truncate_to(e, g, 100);
	assert_int_equal(snap_lseek(e->t, g, 0, SEEK_DATA, &res), -ENXIO);
	assert_int_equal(snap_lseek(e->t, g, 0, SEEK_HOLE, &res), 0);
	assert_int_equal(res, 0);
	/* Bad whence; missing inode. */
	assert_int_equal(snap_lseek(e->t, f, 0, SEEK_SET, &res), -EINVAL);
	assert_int_equal(snap_lseek(e->t, 999999, 0, SEEK_DATA, &res), -ENOENT);
}

/* ---- unlinked open files, orphans ------------------------------------------ */

static void test_unlink_open(void **state)
{
	struct env *e = *state;
	struct snap_stats st0, st;
	struct snap_attr a;
	uint64_t f, g, h, k;

	wr_pat(e, mkf(e, "keep"), 0, BS, 40);
	st0 = stats(e);
	f = mkf(e, "f");
	wr_pat(e, f, 0, 3 * BS, 41);
	assert_int_equal(stats(e).blocks, st0.blocks + 3);

	snap_inode_open(e->t, f);
	snap_inode_open(e->t, f); /* opened twice */
	assert_int_equal(snap_open_count(e->s, 0), 1);
	assert_int_equal(snap_open_count(e->s, SNAP_MAIN_ID), 1);
	assert_int_equal(snap_open_count(e->s, 77), 0);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "f"), 0);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "f", &a), -ENOENT);
	/* Still readable and writable through the ino. */
	a = ga(e, f);
	assert_int_equal(a.nlink, 0);
	assert_int_equal(a.size, 3 * BS);
	check_pat(e, f, 0, 3 * BS, 41);
	wr_pat(e, f, 3 * BS, BS, 42);
	check_pat(e, f, 3 * BS, BS, 42);
	assert_int_equal(ga(e, f).size, 4 * BS);
	assert_int_equal(stats(e).blocks, st0.blocks + 4);
	/* The name can be reused meanwhile. */
	k = mkf(e, "f");
	assert_true(k != f);

	/* First release: still open once. */
	snap_inode_release(e->t, f);
	assert_int_equal(snap_open_count(e->s, 0), 1);
	check_pat(e, f, 0, 3 * BS, 41);
	/* Last release: gone, blocks freed. */
	snap_inode_release(e->t, f);
	assert_int_equal(snap_open_count(e->s, 0), 0);
	assert_int_equal(snap_getattr(e->t, f, &a), -ENOENT);
	st = stats(e);
	assert_int_equal(st.blocks, st0.blocks);
	assert_int_equal(st.refs, st0.refs);
	assert_int_equal(snap_gc(e->s, 0), 0);
	st = stats(e);
	assert_int_equal(st.blocks, st0.blocks);
	assert_int_equal(st.gc_pending, 0);
	assert_int_equal(ga(e, k).size, 0);

	/* Open and released without unlink: stays. */
	snap_inode_open(e->t, k);
	snap_inode_release(e->t, k);
	assert_int_equal(ga(e, k).nlink, 1);

	/* Renamed over while open: the replaced inode lives until release. */
	g = mkf(e, "g");
	h = mkf(e, "h");
	wr_pat(e, g, 0, 2 * BS, 43);
	snap_inode_open(e->t, g);
	assert_int_equal(snap_rename(e->t, SNAP_ROOT_INO, "h", SNAP_ROOT_INO, "g",
				     0), 0);
	assert_int_equal(snap_lookup(e->t, SNAP_ROOT_INO, "g", &a), 0);
	assert_int_equal(a.ino, h);
	assert_int_equal(ga(e, g).nlink, 0);
	check_pat(e, g, 0, 2 * BS, 43);
	snap_inode_release(e->t, g);
	assert_int_equal(snap_getattr(e->t, g, &a), -ENOENT);
	assert_int_equal(stats(e).blocks, st0.blocks);

	/* An unlinked open file with a remaining hard link is not purged. */
	wr_pat(e, h, 0, BS, 44);
	assert_int_equal(snap_link(e->t, h, SNAP_ROOT_INO, "h2", NULL), 0);
	snap_inode_open(e->t, h);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "g"), 0);
	snap_inode_release(e->t, h);
	assert_int_equal(ga(e, h).nlink, 1);
	check_pat(e, h, 0, BS, 44);

	/* Nothing is left as an orphan for the next open. */
	env_reopen(e);
	assert_int_equal(ga(e, h).nlink, 1);
	assert_int_equal(snap_getattr(e->t, f, &a), -ENOENT);
	assert_int_equal(stats(e).blocks, st0.blocks + 1);
}

static void test_orphan_reopen(void **state)
{
	struct env *e = *state;
	struct snap_stats st;
	struct snap_attr a;
	uint64_t f, g, k;

	k = mkf(e, "keep");
	wr_pat(e, k, 0, BS, 50);
	f = mkf(e, "f");
	wr_pat(e, f, 0, 2 * BS, 51);
	g = mkf(e, "g");          /* open, not unlinked */
	wr_pat(e, g, 0, BS, 52);
	assert_int_equal(stats(e).blocks, 4);

	snap_inode_open(e->t, f);
	snap_inode_open(e->t, g);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "f"), 0);
	assert_int_equal(ga(e, f).nlink, 0);
	assert_int_equal(stats(e).blocks, 4);
	/* Close the store without releasing (as a crash would). */
	env_reopen(e);
	assert_int_equal(snap_open_count(e->s, 0), 0);
	assert_int_equal(snap_getattr(e->t, f, &a), -ENOENT);
	assert_int_equal(snap_read(e->t, f, &a, 1, 0), -ENOENT);
	st = stats(e);
	assert_int_equal(st.blocks, 2);
	assert_int_equal(st.refs, 2);
	assert_int_equal(snap_gc(e->s, 0), 0);
	st = stats(e);
	assert_int_equal(st.blocks, 2);
	assert_int_equal(st.gc_pending, 0);
	check_pat(e, g, 0, BS, 52);
	check_pat(e, k, 0, BS, 50);
	assert_int_equal(ga(e, g).nlink, 1);
	/* The orphan record is gone too: a second reopen is clean. */
	env_reopen(e);
	assert_int_equal(stats(e).blocks, 2);
	check_pat(e, g, 0, BS, 52);
}

/* ---- freeing, persistence ---------------------------------------------------- */

static void test_block_freeing(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f"), g = mkf(e, "g");
	struct snap_stats st;

	wr_pat(e, f, 0, 4 * BS, 60);
	assert_int_equal(stats(e).blocks, 4);
	/* Overwrite two whole blocks and part of another. */
	wr_pat(e, f, BS, 2 * BS, 61);
	wr_pat(e, f, 3 * BS + 10, 10, 62);
	st = stats(e);
	assert_int_equal(st.blocks, 4);
	assert_int_equal(st.refs, 4);
	assert_int_equal(snap_gc(e->s, 0), 0);
	st = stats(e);
	assert_int_equal(st.blocks, 4);
	assert_int_equal(st.gc_pending, 0);
	check_pat(e, f, 0, BS, 60);
	check_pat(e, f, BS, 2 * BS, 61);
	check_pat(e, f, 3 * BS, 10, 60);
	check_pat(e, f, 3 * BS + 10, 10, 62);
	check_pat(e, f, 3 * BS + 20, BS - 20, 60);
	/* Truncate frees too. */
	wr_pat(e, g, 0, 3 * BS, 63);
	truncate_to(e, g, BS);
	assert_int_equal(stats(e).blocks, 5);
	/* Unlink everything: no block stays referenced or stored. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "f"), 0);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "g"), 0);
	assert_int_equal(snap_gc(e->s, 0), 0);
	st = stats(e);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.refs, 0);
	assert_int_equal(st.gc_pending, 0);
	assert_int_equal(st.logical_bytes, 0);
	assert_int_equal(st.stored_bytes, 0);
	env_reopen(e);
	st = stats(e);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.gc_pending, 0);
	/* Rewriting the same content after it was freed works. */
	f = mkf(e, "f2");
	wr_pat(e, f, 0, 4 * BS, 60);
	assert_int_equal(stats(e).blocks, 4);
	check_pat(e, f, 0, 4 * BS, 60);
}

static void test_persist_data(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f");
	struct snap_attr a, b;

	wr_pat(e, f, 0, 100000, 70);
	wr_pat(e, f, 300000, 5000, 71);
	wr_pat(e, f, 3 * GiB + 17, 9000, 72);
	assert_int_equal(snap_sync(e->s), 0);
	a = ga(e, f);
	env_reopen(e);
	b = ga(e, f);
	assert_memory_equal(&a, &b, sizeof(a));
	check_pat(e, f, 0, 100000, 70);
	check_zero(e, f, 100000, 200000);
	check_pat(e, f, 300000, 5000, 71);
	check_pat(e, f, 3 * GiB + 17, 9000, 72);
	assert_int_equal(b.size, 3 * GiB + 17 + 9000);
}

/* ---- randomised model test --------------------------------------------------- */

#define MF_MAX (16 * BS)
#define MF_N 2

struct mfile {
	uint64_t ino;
	uint64_t size;
	uint8_t *data; /* MF_MAX + BS bytes; zero beyond size */
};

static uint64_t rnd(uint64_t *st)
{
	*st ^= *st << 13;
	*st ^= *st >> 7;
	*st ^= *st << 17;
	return *st;
}

static void model_verify(struct env *e, struct mfile *m, int nf, int step)
{
	uint8_t *buf = malloc(MF_MAX + 2 * BS);
	uint64_t nonzero = 0, distinct = 0;
	const uint8_t *blocks[MF_N * (MF_MAX / BS + 1)];
	struct snap_stats st;

	assert_non_null(buf);
	for (int i = 0; i < nf; i++) {
		struct snap_attr a = ga(e, m[i].ino);
		uint64_t nz = 0;
		ssize_t r;

		if (a.size != m[i].size)
			fail_msg("step %d file %d: size %llu, want %llu", step, i,
				 (unsigned long long)a.size,
				 (unsigned long long)m[i].size);
		r = snap_read(e->t, m[i].ino, buf, MF_MAX + 2 * BS, 0);
		if (r != (ssize_t)m[i].size)
			fail_msg("step %d file %d: read %zd, want %llu", step, i,
				 r, (unsigned long long)m[i].size);
		for (uint64_t k = 0; k < m[i].size; k++)
			if (buf[k] != m[i].data[k])
				fail_msg("step %d file %d offset %llu: %#x, want %#x",
					 step, i, (unsigned long long)k, buf[k],
					 m[i].data[k]);
		for (uint64_t b = 0; b * BS < m[i].size; b++) {
			const uint8_t *p = m[i].data + b * BS;
			bool z = true;

			for (unsigned k = 0; k < BS && z; k++)
				z = p[k] == 0;
			if (z)
				continue;
			nz++;
			bool dup = false;

			for (uint64_t j = 0; j < distinct && !dup; j++)
				dup = memcmp(blocks[j], p, BS) == 0;
			if (!dup)
				blocks[distinct++] = p;
		}
		if (a.blocks != nz * 16)
			fail_msg("step %d file %d: st_blocks %llu, want %llu", step,
				 i, (unsigned long long)a.blocks,
				 (unsigned long long)(nz * 16));
		nonzero += nz;
	}
	assert_int_equal(snap_stats(e->s, &st), 0);
	if (st.refs != nonzero || st.blocks != distinct)
		fail_msg("step %d: stats blocks %llu refs %llu, want %llu %llu",
			 step, (unsigned long long)st.blocks,
			 (unsigned long long)st.refs,
			 (unsigned long long)distinct,
			 (unsigned long long)nonzero);
	free(buf);
}

static void model_fill(uint64_t *rs, uint8_t *p, size_t len)
{
	switch (rnd(rs) % 4) {
	case 0:
		memset(p, 0, len);
		break;
	case 1:
		memset(p, (int)(rnd(rs) % 3 + 1), len);
		break;
	default:
		for (size_t i = 0; i < len; i++)
			p[i] = (uint8_t)rnd(rs);
	}
}

/* A random offset, often block-aligned, in [0, max]. */
static uint64_t model_off(uint64_t *rs, uint64_t max)
{
	uint64_t o = rnd(rs) % (max + 1);

	if (rnd(rs) % 3 == 0)
		o -= o % BS;
	return o;
}

static void run_model(struct env *e, uint64_t seed, int steps)
{
	struct mfile m[MF_N];
	uint64_t rs = seed * 2654435761u + 1;
	uint8_t *tmp = malloc(MF_MAX + BS);
	char name[16];

	assert_non_null(tmp);
	for (int i = 0; i < MF_N; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		m[i].ino = mkf(e, name);
		m[i].size = 0;
		m[i].data = calloc(1, MF_MAX + 2 * BS);
		assert_non_null(m[i].data);
	}
	for (int step = 0; step < steps; step++) {
		struct mfile *x = &m[rnd(&rs) % MF_N];
		int op = (int)(rnd(&rs) % 10);

		if (op <= 3) { /* write */
			uint64_t off = model_off(&rs, MF_MAX - 1);
			uint64_t len = 1 + rnd(&rs) % (3 * BS);

			if (rnd(&rs) % 2) { /* whole blocks */
				len -= len % BS;
				if (!len)
					len = BS;
			}
			if (off + len > MF_MAX)
				len = MF_MAX - off;
			model_fill(&rs, tmp, len);
			wr(e, x->ino, tmp, len, off);
			memcpy(x->data + off, tmp, len);
			if (off + len > x->size)
				x->size = off + len;
		} else if (op <= 5) { /* truncate */
			uint64_t size = model_off(&rs, MF_MAX);

			truncate_to(e, x->ino, size);
			if (size < x->size)
				memset(x->data + size, 0, x->size - size);
			x->size = size;
		} else if (op == 6) { /* punch */
			uint64_t off = model_off(&rs, MF_MAX - 1);
			uint64_t len = 1 + rnd(&rs) % (3 * BS);

			assert_int_equal(snap_fallocate(e->t, x->ino,
							FALLOC_FL_PUNCH_HOLE |
							FALLOC_FL_KEEP_SIZE,
							off, len), 0);
			if (off < x->size)
				memset(x->data + off, 0,
				       (off + len > x->size ? x->size : off + len) -
				       off);
		} else if (op == 7) { /* fallocate */
			uint64_t off = model_off(&rs, MF_MAX - 1);
			uint64_t len = 1 + rnd(&rs) % (MF_MAX - off);
			int keep = rnd(&rs) % 2 ? FALLOC_FL_KEEP_SIZE : 0;

			assert_int_equal(snap_fallocate(e->t, x->ino, keep, off,
							len), 0);
			if (!keep && off + len > x->size)
				x->size = off + len;
		} else { /* copy_range, possibly within one file */
			struct mfile *y = &m[rnd(&rs) % MF_N];
			uint64_t oin = model_off(&rs, x->size);
			uint64_t oout = model_off(&rs, MF_MAX - 1);
			uint64_t len = rnd(&rs) % (4 * BS);
			uint64_t n;
			ssize_t r;

			if (rnd(&rs) % 2)
				oout = oout - oout % BS + oin % BS;
			if (oout >= MF_MAX)
				oout -= BS;
			if (oout + len > MF_MAX)
				len = MF_MAX - oout;
			n = oin < x->size ? x->size - oin : 0;
			if (n > len)
				n = len;
			r = snap_copy_range(e->t, x->ino, oin, e->t, y->ino, oout,
					    len);
			if (x == y && n && oin < oout + n && oout < oin + n) {
				if (r != -EINVAL)
					fail_msg("step %d: overlapping copy %zd",
						 step, r);
			} else {
				if (r != (ssize_t)n)
					fail_msg("step %d: copy_range(%llu -> %llu, "
						 "%llu) = %zd, want %llu", step,
						 (unsigned long long)oin,
						 (unsigned long long)oout,
						 (unsigned long long)len, r,
						 (unsigned long long)n);
				memmove(y->data + oout, x->data + oin, n);
				if (n && oout + n > y->size)
					y->size = oout + n;
			}
		}
		model_verify(e, m, MF_N, step);
		if (step % 97 == 96) {
			env_reopen(e);
			model_verify(e, m, MF_N, step);
		}
	}
	for (int i = 0; i < MF_N; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, name), 0);
		free(m[i].data);
	}
	assert_int_equal(snap_gc(e->s, 0), 0);
	{
		struct snap_stats st = stats(e);

		assert_int_equal(st.blocks, 0);
		assert_int_equal(st.refs, 0);
		assert_int_equal(st.gc_pending, 0);
	}
	free(tmp);
}

static void test_random_model(void **state)
{
	struct env *e = *state;
	const char *env = getenv("BFS_TEST_SEED");

	if (env) {
		uint64_t seed = strtoull(env, NULL, 0);

		print_message("model seed %llu\n", (unsigned long long)seed);
		run_model(e, seed, 400);
		return;
	}
	for (uint64_t seed = 1; seed <= 4; seed++) {
		print_message("model seed %llu (BFS_TEST_SEED=%llu to rerun)\n",
			      (unsigned long long)seed,
			      (unsigned long long)seed);
		run_model(e, seed, 300);
	}
}

/* ---- concurrency ----------------------------------------------------------------- */

#define NTHREADS 4
#define OWN_SIZE (600 * 1000)
#define SHARED_CHUNK 3000
#define SHARED_CHUNKS 400

struct worker {
	struct env *e;
	int id;
	uint64_t shared;
	uint64_t own;
	char err[200];
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct snap_tree *t = w->e->t;
	uint8_t buf[8000];
	struct snap_attr a;
	char name[32];
	int ret;

	snprintf(name, sizeof(name), "own-%d", w->id);
	ret = snap_mknod(t, SNAP_ROOT_INO, name, S_IFREG | 0644, 0, UID, GID, &a);
	if (ret) {
		snprintf(w->err, sizeof(w->err), "mknod %s: %d", name, ret);
		return NULL;
	}
	w->own = a.ino;
	for (uint64_t off = 0, k = 0; off < OWN_SIZE || k < SHARED_CHUNKS;) {
		/* Own file: 7000-byte unaligned chunks. */
		if (off < OWN_SIZE) {
			size_t len = OWN_SIZE - off < 7000 ? OWN_SIZE - off : 7000;
			ssize_t r;

			fill(buf, off, len, 100 + (uint32_t)w->id);
			r = snap_write(t, w->own, buf, len, off);
			if (r != (ssize_t)len) {
				snprintf(w->err, sizeof(w->err),
					 "write own at %llu: %zd",
					 (unsigned long long)off, r);
				return NULL;
			}
			off += len;
		}
		/* Shared file: chunks k with k % NTHREADS == id, which share
		 * blocks with the other threads' chunks. */
		for (; k < SHARED_CHUNKS; k++) {
			ssize_t r;

			if (k % NTHREADS != (uint64_t)w->id)
				continue;
			fill(buf, k * SHARED_CHUNK, SHARED_CHUNK, 99);
			r = snap_write(t, w->shared, buf, SHARED_CHUNK,
				       k * SHARED_CHUNK);
			if (r != SHARED_CHUNK) {
				snprintf(w->err, sizeof(w->err),
					 "write shared chunk %llu: %zd",
					 (unsigned long long)k, r);
				return NULL;
			}
			k++;
			break;
		}
		/* Namespace churn in one directory. */
		snprintf(name, sizeof(name), "tmp-%d-%llu", w->id,
			 (unsigned long long)k);
		ret = snap_mknod(t, SNAP_ROOT_INO, name, S_IFREG | 0644, 0, UID,
				 GID, NULL);
		if (ret == 0 && k % 2)
			ret = snap_unlink(t, SNAP_ROOT_INO, name);
		if (ret && ret != -EEXIST) {
			snprintf(w->err, sizeof(w->err), "churn %s: %d", name,
				 ret);
			return NULL;
		}
		/* Readers run alongside. */
		if (snap_read(t, w->shared, buf, sizeof(buf), k * 1000) < 0) {
			snprintf(w->err, sizeof(w->err), "read shared");
			return NULL;
		}
	}
	return NULL;
}

static void test_concurrency(void **state)
{
	struct env *e = *state;
	struct worker w[NTHREADS];
	pthread_t th[NTHREADS];
	uint64_t shared = mkf(e, "shared");
	struct snap_dirent *d;
	size_t n, tmp = 0;

	for (int i = 0; i < NTHREADS; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].e = e;
		w[i].id = i;
		w[i].shared = shared;
		assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]),
				 0);
	}
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < NTHREADS; i++)
		if (w[i].err[0])
			fail_msg("thread %d: %s", i, w[i].err);

	for (int i = 0; i < NTHREADS; i++) {
		assert_int_equal(ga(e, w[i].own).size, OWN_SIZE);
		check_pat(e, w[i].own, 0, OWN_SIZE, 100 + (uint32_t)i);
		assert_int_equal(ga(e, w[i].own).blocks,
				 (OWN_SIZE + BS - 1) / BS * 16);
	}
	assert_int_equal(ga(e, shared).size, SHARED_CHUNK * SHARED_CHUNKS);
	check_pat(e, shared, 0, SHARED_CHUNK * SHARED_CHUNKS, 99);
	assert_int_equal(ga(e, shared).blocks,
			 (SHARED_CHUNK * SHARED_CHUNKS + BS - 1) / BS * 16);

	/* Root: shared, own-*, and the even tmp-* entries. */
	assert_int_equal(snap_readdir(e->t, SNAP_ROOT_INO, &d, &n), 0);
	for (size_t i = 0; i < n; i++) {
		if (strncmp(d[i].name, "tmp-", 4) == 0)
			tmp++;
		if (i)
			assert_true(strcmp(d[i - 1].name, d[i].name) < 0);
	}
	assert_int_equal(n, 1 + NTHREADS + tmp);
	assert_int_equal(ga(e, SNAP_ROOT_INO).size, n);
	free(d);

	env_reopen(e);
	check_pat(e, shared, 0, SHARED_CHUNK * SHARED_CHUNKS, 99);
	for (int i = 0; i < NTHREADS; i++)
		check_pat(e, w[i].own, 0, OWN_SIZE, 100 + (uint32_t)i);
}

/* Concurrent renames in opposite directions and creates in both dirs. */
struct rn {
	struct env *e;
	uint64_t d1, d2;
	int id;
	int err;
};

static void *rename_main(void *arg)
{
	struct rn *r = arg;
	char name[32];

	snprintf(name, sizeof(name), "r%d", r->id);
	for (int i = 0; i < 200; i++) {
		uint64_t from = (i + r->id) % 2 ? r->d2 : r->d1;
		uint64_t to = from == r->d1 ? r->d2 : r->d1;
		int ret = snap_rename(r->e->t, from, name, to, name, 0);

		if (ret) {
			r->err = ret;
			return NULL;
		}
	}
	return NULL;
}

static void test_concurrent_rename(void **state)
{
	struct env *e = *state;
	struct rn r[NTHREADS];
	pthread_t th[NTHREADS];
	struct snap_attr a;
	uint64_t d1, d2;
	size_t n1, n2;
	struct snap_dirent *d;

	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "d1", S_IFDIR | 0755, 0,
				    UID, GID, &a), 0);
	d1 = a.ino;
	assert_int_equal(snap_mknod(e->t, SNAP_ROOT_INO, "d2", S_IFDIR | 0755, 0,
				    UID, GID, &a), 0);
	d2 = a.ino;
	for (int i = 0; i < NTHREADS; i++) {
		char name[32];

		snprintf(name, sizeof(name), "r%d", i);
		/* Odd threads move directories, even ones files. */
		assert_int_equal(snap_mknod(e->t, i % 2 ? d2 : d1, name,
					    (i & 1 ? S_IFDIR | 0755 :
					     S_IFREG | 0644), 0, UID, GID, NULL),
				 0);
		r[i] = (struct rn){ .e = e, .d1 = d1, .d2 = d2, .id = i };
	}
	for (int i = 0; i < NTHREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, rename_main, &r[i]),
				 0);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < NTHREADS; i++)
		if (r[i].err)
			fail_msg("rename thread %d: %d", i, r[i].err);
	/* Each did an even number of moves: back where it started. */
	assert_int_equal(snap_readdir(e->t, d1, &d, &n1), 0);
	free(d);
	assert_int_equal(snap_readdir(e->t, d2, &d, &n2), 0);
	free(d);
	assert_int_equal(n1 + n2, NTHREADS);
	assert_int_equal(ga(e, d1).size, n1);
	assert_int_equal(ga(e, d2).size, n2);
	assert_int_equal(ga(e, d1).nlink + ga(e, d2).nlink, 4 + NTHREADS / 2);
	for (int i = 0; i < NTHREADS; i++) {
		char name[32];
		uint64_t p;

		snprintf(name, sizeof(name), "r%d", i);
		assert_int_equal(snap_lookup(e->t, i % 2 ? d2 : d1, name, &a), 0);
		if (i & 1) {
			assert_int_equal(snap_parent(e->t, a.ino, &p), 0);
			assert_int_equal(p, i % 2 ? d2 : d1);
		}
	}
}

/*
 * Blocks freed and re-referenced while the collector runs: readers never
 * get an error or a torn block, and copy_range never fails because a block
 * it is sharing was overwritten meanwhile.
 *
 * Block content of version v at block index i: 8 bytes i, then byte v.
 * Versions cycle through 6 values, so that freed contents come back while
 * their GC queue entries are pending.
 */
#define GC_BLOCKS 16
#define GC_VERSIONS 6

struct gcrace {
	struct env *e;
	uint64_t src, dst;
	_Atomic int stop;
	_Atomic long reads, copies, writes, gcs;
	char err[200];
	pthread_mutex_t lock;
};

static void gc_fail(struct gcrace *g, const char *fmt, long a, long b)
{
	pthread_mutex_lock(&g->lock);
	if (!g->err[0])
		snprintf(g->err, sizeof(g->err), fmt, a, b);
	pthread_mutex_unlock(&g->lock);
	atomic_store(&g->stop, 1);
}

static void gc_block(uint8_t *p, uint64_t i, int v)
{
	memset(p, v + 1, BS);
	memcpy(p, &i, sizeof(i));
}

/* 0 if @p is block @i of some version, else -1. */
static int gc_block_ok(const uint8_t *p, uint64_t i)
{
	uint64_t got;

	memcpy(&got, p, sizeof(got));
	if (got != i || p[8] < 1 || p[8] > GC_VERSIONS)
		return -1;
	for (unsigned k = 9; k < BS; k++)
		if (p[k] != p[8])
			return -1;
	return 0;
}

static void *gc_writer(void *arg)
{
	struct gcrace *g = arg;
	uint8_t *buf = malloc(GC_BLOCKS * BS);

	for (int v = 0; buf && !atomic_load(&g->stop); v = (v + 1) % GC_VERSIONS) {
		ssize_t r;

		for (uint64_t i = 0; i < GC_BLOCKS; i++)
			gc_block(buf + i * BS, i, (v + (int)i) % GC_VERSIONS);
		r = snap_write(g->e->t, g->src, buf, GC_BLOCKS * BS, 0);
		if (r != GC_BLOCKS * BS)
			gc_fail(g, "write: %ld (%ld)", (long)r, 0);
		atomic_fetch_add(&g->writes, 1);
	}
	free(buf);
	return NULL;
}

static void *gc_collector(void *arg)
{
	struct gcrace *g = arg;

	while (!atomic_load(&g->stop)) {
		int ret = snap_gc(g->e->s, 0);

		if (ret)
			gc_fail(g, "snap_gc: %ld (%ld)", ret, 0);
		atomic_fetch_add(&g->gcs, 1);
	}
	return NULL;
}

static void *gc_reader(void *arg)
{
	struct gcrace *g = arg;
	uint8_t *buf = malloc(GC_BLOCKS * BS);

	while (buf && !atomic_load(&g->stop)) {
		ssize_t r = snap_read(g->e->t, g->src, buf, GC_BLOCKS * BS, 0);

		if (r != GC_BLOCKS * BS) {
			gc_fail(g, "read: %ld (%ld)", (long)r, 0);
			break;
		}
		for (uint64_t i = 0; i < GC_BLOCKS; i++)
			if (gc_block_ok(buf + i * BS, i))
				gc_fail(g, "read: block %ld torn (version byte %ld)",
					(long)i, buf[i * BS + 8]);
		atomic_fetch_add(&g->reads, 1);
	}
	free(buf);
	return NULL;
}

static void *gc_copier(void *arg)
{
	struct gcrace *g = arg;
	uint8_t *buf = malloc(GC_BLOCKS * BS);

	while (buf && !atomic_load(&g->stop)) {
		ssize_t r = snap_copy_range(g->e->t, g->src, 0, g->e->t, g->dst,
					    0, GC_BLOCKS * BS);

		if (r != GC_BLOCKS * BS) {
			gc_fail(g, "copy_range: %ld after %ld copies", (long)r,
				atomic_load(&g->copies));
			break;
		}
		r = snap_read(g->e->t, g->dst, buf, GC_BLOCKS * BS, 0);
		if (r != GC_BLOCKS * BS) {
			gc_fail(g, "read of the copy: %ld (%ld)", (long)r, 0);
			break;
		}
		for (uint64_t i = 0; i < GC_BLOCKS; i++)
			if (gc_block_ok(buf + i * BS, i))
				gc_fail(g, "copy: block %ld torn (%ld)", (long)i,
					buf[i * BS + 8]);
		atomic_fetch_add(&g->copies, 1);
	}
	free(buf);
	return NULL;
}

static void run_gc_race(struct env *e, bool with_copier)
{
	struct gcrace g = { .e = e };
	pthread_t th[5];
	int n = 0;
	struct timespec t0, t1;

	pthread_mutex_init(&g.lock, NULL);
	g.src = mkf(e, with_copier ? "src-c" : "src");
	g.dst = mkf(e, with_copier ? "dst-c" : "dst");
	{
		uint8_t *buf = malloc(GC_BLOCKS * BS);

		assert_non_null(buf);
		for (uint64_t i = 0; i < GC_BLOCKS; i++)
			gc_block(buf + i * BS, i, 0);
		wr(e, g.src, buf, GC_BLOCKS * BS, 0);
		free(buf);
	}
	assert_int_equal(pthread_create(&th[n++], NULL, gc_writer, &g), 0);
	assert_int_equal(pthread_create(&th[n++], NULL, gc_collector, &g), 0);
	assert_int_equal(pthread_create(&th[n++], NULL, gc_reader, &g), 0);
	if (with_copier)
		assert_int_equal(pthread_create(&th[n++], NULL, gc_copier, &g),
				 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		struct timespec d = { 0, 20 * 1000 * 1000 };

		nanosleep(&d, NULL);
		clock_gettime(CLOCK_MONOTONIC, &t1);
	} while (!atomic_load(&g.stop) && t1.tv_sec - t0.tv_sec < 3);
	atomic_store(&g.stop, 1);
	for (int i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	print_message("%ld writes, %ld reads, %ld copies, %ld gc runs\n",
		      atomic_load(&g.writes), atomic_load(&g.reads),
		      atomic_load(&g.copies), atomic_load(&g.gcs));
	pthread_mutex_destroy(&g.lock);
	if (g.err[0])
		fail_msg("%s", g.err);
	/* Afterwards: everything readable, counts exact. */
	assert_int_equal(snap_gc(e->s, 0), 0);
	{
		uint8_t *buf = malloc(GC_BLOCKS * BS);

		assert_non_null(buf);
		assert_int_equal(snap_read(e->t, g.src, buf, GC_BLOCKS * BS, 0),
				 GC_BLOCKS * BS);
		for (uint64_t i = 0; i < GC_BLOCKS; i++)
			assert_int_equal(gc_block_ok(buf + i * BS, i), 0);
		if (with_copier) {
			assert_int_equal(snap_read(e->t, g.dst, buf,
						   GC_BLOCKS * BS, 0),
					 GC_BLOCKS * BS);
			for (uint64_t i = 0; i < GC_BLOCKS; i++)
				assert_int_equal(gc_block_ok(buf + i * BS, i), 0);
		}
		free(buf);
	}
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO,
				     with_copier ? "src-c" : "src"), 0);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO,
				     with_copier ? "dst-c" : "dst"), 0);
	assert_int_equal(snap_gc(e->s, 0), 0);
	assert_int_equal(stats(e).blocks, 0);
	assert_int_equal(stats(e).refs, 0);
}

static void test_gc_race_read(void **state)
{
	run_gc_race(*state, false);
}

static void test_gc_race_copy(void **state)
{
	run_gc_race(*state, true);
}

/* A block freed (count 0, queued) and then referenced again before the
 * collector runs must survive the collector. */
static void test_gc_requeue(void **state)
{
	struct env *e = *state;
	uint64_t a = mkf(e, "a"), b;

	wr_pat(e, a, 0, 2 * BS, 80);
	wr_pat(e, a, 0, 2 * BS, 81);        /* version 80 unreferenced */
	wr_pat(e, a, 0, 2 * BS, 80);        /* ... and referenced again */
	assert_true(stats(e).gc_pending > 0);
	assert_int_equal(snap_gc(e->s, 0), 0);
	check_pat(e, a, 0, 2 * BS, 80);
	assert_int_equal(stats(e).blocks, 2);
	/* Through unlink and another file. */
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "a"), 0);
	assert_int_equal(stats(e).blocks, 0);
	b = mkf(e, "b");
	wr_pat(e, b, 0, 2 * BS, 80);
	assert_int_equal(snap_gc(e->s, 0), 0);
	check_pat(e, b, 0, 2 * BS, 80);
	/* Through copy_range sharing the block. */
	{
		uint64_t c = mkf(e, "c");

		assert_int_equal(snap_copy_range(e->t, b, 0, e->t, c, 0, 2 * BS),
				 (ssize_t)(2 * BS));
		assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "b"), 0);
		assert_int_equal(snap_gc(e->s, 0), 0);
		check_pat(e, c, 0, 2 * BS, 80);
		assert_int_equal(stats(e).blocks, 2);
	}
	env_reopen(e);
	assert_int_equal(stats(e).blocks, 2);
	assert_int_equal(stats(e).gc_pending, 0);
}

/* Writes to an unlinked open file after unlink are freed by the orphan
 * purge on reopen too. */
static void test_orphan_written_after_unlink(void **state)
{
	struct env *e = *state;
	uint64_t f = mkf(e, "f");
	struct snap_attr in = { .size = 20 * BS };

	wr_pat(e, f, 0, BS, 90);
	snap_inode_open(e->t, f);
	assert_int_equal(snap_unlink(e->t, SNAP_ROOT_INO, "f"), 0);
	wr_pat(e, f, 5 * BS, 3 * BS, 91);
	assert_int_equal(snap_setattr(e->t, f, &in, SNAP_SET_SIZE, NULL), 0);
	assert_int_equal(snap_setxattr(e->t, f, "user.x", "y", 1, 0), 0);
	assert_int_equal(ga(e, f).nlink, 0);
	assert_int_equal(stats(e).blocks, 4);
	env_reopen(e);
	assert_int_equal(snap_getattr(e->t, f, &in), -ENOENT);
	assert_int_equal(snap_gc(e->s, 0), 0);
	assert_int_equal(stats(e).blocks, 0);
	assert_int_equal(stats(e).refs, 0);
	assert_int_equal(stats(e).gc_pending, 0);
}

static void test_statfs(void **state)
{
	struct env *e = *state;
	struct snap_statfs a, b;

	assert_int_equal(snap_statfs(e->s, &a), 0);
	assert_true(a.bsize > 0);
	assert_true(a.blocks > 0);
	assert_true(a.bfree <= a.blocks);
	assert_true(a.bavail <= a.blocks);
	assert_true(a.files >= 2);
	assert_int_equal(a.files + a.ffree, 1ull << SNAP_INO_BITS);
	for (int i = 0; i < 10; i++) {
		char name[16];

		snprintf(name, sizeof(name), "f%d", i);
		mkf(e, name);
	}
	assert_int_equal(snap_statfs(e->s, &b), 0);
	assert_true(b.files >= a.files + 10);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_rw_unaligned, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_read_eof, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_zero_holes, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_write_blocks_changed, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_dedup, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_truncate_down_up, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_truncate_mid_block, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_sparse_large, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_fallocate, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_punch_hole, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_copy_range, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_lseek, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_unlink_open, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_orphan_reopen, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_block_freeing, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_persist_data, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_random_model, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_concurrency, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_rename, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_gc_race_read, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_gc_race_copy, setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_gc_requeue, setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_orphan_written_after_unlink,
						setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_statfs, setup, env_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
