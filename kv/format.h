/* SPDX-License-Identifier: MIT */
/*
 * kv/format.h - every on-disk key and value of a branchfs store.
 *
 * This header is the single place where the store's bytes are described.
 * Change a layout here and bump BFS_FORMAT_VERSION; a store records its
 * version at init and kv_open() refuses a version it does not know.
 *
 * General rules
 *   - All integers are big-endian so that RocksDB's bytewise ordering sorts
 *     them numerically.
 *   - Epochs are stored inverted (~epoch == UINT64_MAX - epoch) at the end of
 *     versioned keys so that, for one object, the newest version sorts first:
 *     seeking to (prefix, ~E) lands on the newest version at or below E.
 *   - Variable-length names inside keys are followed by one 0x00 byte (names
 *     never contain NUL) so that all versions of one name are contiguous and
 *     "ab" sorts before "abc".
 *
 * Store directory
 *   STORE/db/          the RocksDB database (column families below)
 *   STORE/FORMAT       text: "branchfs store format N\n" (human hint only;
 *                      the authoritative version is the "format" key)
 *   STORE/lock         flock()ed exclusively by the one process that has the
 *                      store open for writing (the mount daemon or an
 *                      offline CLI command)
 *   STORE/ctl.sock     control socket of a mounted store (mode 0600)
 *   STORE/branchfs.log log of the mount daemon
 *
 * Column families
 *   "default"  store-wide records: version, counters, branches, snapshots,
 *              GC queue, orphans
 *   "meta"     versioned metadata: inodes, dirents, block maps, xattrs
 *   "blocks"   content-addressed block data
 *   "refs"     block reference counts (merge operator "bfs.refcount")
 */
#ifndef BFS_KV_FORMAT_H
#define BFS_KV_FORMAT_H

#include <stdint.h>

#define BFS_FORMAT_VERSION 1u
#define BFS_BLOCK_SIZE 8192u
#define BFS_BLOCK_SHIFT 13
#define BFS_HASH_SIZE 16u /* XXH3-128: high 64 bits then low 64 bits, BE */

/* ------------------------------------------------------------------------
 * "blocks" column family
 *
 *   key   (16)  XXH3-128 of the 8 KiB plaintext block
 *   value       offset size meaning
 *               0      1    codec: BFS_CODEC_RAW or BFS_CODEC_ZSTD
 *               1      n    payload: the 8192 plaintext bytes (raw) or one
 *                           zstd frame that decompresses to exactly 8192
 *
 * All-zero blocks are never stored (they are holes, see block maps).
 * Every read recomputes XXH3-128 of the plaintext and compares it with the
 * key; a mismatch is -EIO and a log line, never data.
 * ---------------------------------------------------------------------- */
enum bfs_codec {
	BFS_CODEC_RAW = 0,
	BFS_CODEC_ZSTD = 1,
};

/* ------------------------------------------------------------------------
 * "refs" column family
 *
 *   key   (16)  block hash
 *   value (12)  offset size meaning
 *               0      8    reference count, signed (int64 BE)
 *               8      4    stored length of the block value (uint32 BE)
 *
 * Written only with Merge: each operand has the same 12-byte layout, the
 * count being a delta (+1 / -1) and the length either the stored length
 * or 0 ("unchanged").  The merge operator adds counts and keeps the last
 * non-zero length.  A reference is one block-map entry (any branch, any
 * epoch) that names the hash.  The count is updated in the same write batch
 * as the block-map change that causes it.
 *
 * Invariant R1: count(h) == number of block-map values equal to h.
 * Invariant R2: a block exists in "blocks" iff its count > 0, or it is in
 *               the GC queue waiting to be freed.
 * ---------------------------------------------------------------------- */
#define BFS_REF_VALUE_SIZE 12u

/* ------------------------------------------------------------------------
 * "default" column family (store records)
 *
 *   key                                   value
 *   "format"                              uint32 BE format version
 *   "next_ino"                            uint64 BE: every inode number
 *                                         below it may be in use
 *   "next_id"                             uint32 BE: next branch/snapshot id
 *   'R' | id (u32 BE)                     branch record (struct below)
 *   'S' | id (u32 BE)                     snapshot record (struct below)
 *   'Q' | hash (16)                       GC queue: hash whose count was
 *                                         decremented; value empty
 *   'P' | branch (u32 BE)                 prune pending: the branch lost a
 *                                         reader (written in the batch that
 *                                         removed it, deleted when the pruner
 *                                         is done); value empty
 *   'O' | branch (u32 BE) | ino (u64 BE)  orphan: inode with nlink 0 still
 *                                         open at the time; purged at the
 *                                         next open of the store; value empty
 *
 * Example: branch 1 record key = 52 00 00 00 01.
 *
 * Branch record value
 *   offset size meaning
 *   0      1    record version (1)
 *   1      1    flags: bit 0 BFS_BRANCH_DELETED - deleted by the user,
 *                kept (hidden) only while snapshots or branches still read
 *                through it; the pruner removes it with its keys after that
 *                bit 1 BFS_BRANCH_RESET (with bit 0) - deleted by a "branch
 *                reset": the live branch of the same name and origin took
 *                its place, and listings name that one as the parent of
 *                what was made from this record.  Cleared when that branch
 *                is deleted (the line ends: a new branch that takes the
 *                name is someone else).  Readers that do not know it see a
 *                deleted record.
 *   2      4    parent id (u32 BE; 0 = no parent)
 *   6      8    parent epoch: the branch point in the parent (u64 BE)
 *   14     8    current epoch (u64 BE); writes go to this epoch
 *   22     8    created, nanoseconds since the Unix epoch (u64 BE)
 *   30     2    name length n (u16 BE)
 *   32     n    name (UTF-8, no '/', no NUL)
 *   32+n   4    origin id (u32 BE): where the branch was made from; its
 *                branch point for "branch reset" without --to.  Equals the
 *                parent except after a reset --to a snapshot.
 *   36+n   8    origin epoch (u64 BE)
 *
 * Snapshot record value: identical layout, where "parent" is the branch it
 * was taken of, "parent epoch" the epoch it names, "current epoch" 0 and
 * the origin equal to the parent.
 *
 * Branch and snapshot ids share one counter; id 0 is never used (it names
 * the synthetic mount root in FUSE node ids), main is id 1.  Ids are never
 * reused.  Names are unique across live branches and snapshots together.
 *
 * Readers of a branch B: its head (current epoch, unless deleted), every
 * snapshot of B (its epoch) and every branch whose parent is B (the parent
 * epoch).  A version (B, obj, v) whose next newer version is v' is needed
 * iff some reader r has v <= r < v'; the pruner deletes the others (after
 * snapshot, branch or reset deletions) and drops their block references.
 * ---------------------------------------------------------------------- */
#define BFS_KEY_FORMAT "format"
#define BFS_KEY_NEXT_INO "next_ino"
#define BFS_KEY_NEXT_ID "next_id"
#define BFS_PFX_BRANCH 'R'
#define BFS_PFX_SNAPSHOT 'S'
#define BFS_PFX_GCQ 'Q'
#define BFS_PFX_ORPHAN 'O'
#define BFS_PFX_PRUNE 'P'
#define BFS_REC_VERSION 1u
#define BFS_REC_HDR_SIZE 32u
#define BFS_BRANCH_DELETED 0x01u
#define BFS_BRANCH_RESET 0x02u

/* ------------------------------------------------------------------------
 * "meta" column family: versioned metadata, one key per (branch, object,
 * epoch).  A lookup at (branch B, epoch E) seeks (B, object, ~E): the first
 * key with the same (B, object) prefix is the newest version <= E.  If B has
 * no version, the lookup continues at (parent, parent epoch), and so on up
 * the ancestry.  An empty value is a tombstone: the object does not exist
 * at that version, and ancestors are not consulted.
 *
 *   inode    'i' | branch u32 | ino u64 | ~epoch u64             (21 bytes)
 *   dirent   'd' | branch u32 | dir ino u64 | name | 00 | ~epoch u64
 *   blockmap 'b' | branch u32 | ino u64 | block index u64 | ~epoch u64 (29)
 *   xattr    'x' | branch u32 | ino u64 | name | 00 | ~epoch u64
 *
 * Example: the root directory (ino 1) of main (branch 1) at epoch 1:
 *   69 00000001 0000000000000001 fffffffffffffffe
 *
 * Inode value (not a tombstone)
 *   offset size meaning
 *   0      1    record version (1)
 *   1      3    reserved (0)
 *   4      4    mode (st_mode, u32 BE)
 *   8      4    uid
 *   12     4    gid
 *   16     4    nlink
 *   20     4    reserved (0)
 *   24     8    size: bytes for files, target length for symlinks, number
 *               of entries for directories
 *   32     8    mapped blocks: number of non-hole blocks (st_blocks / 16)
 *   40     8    rdev
 *   48     8    parent directory ino (directories only; 0 otherwise)
 *   56     12   atime: seconds (s64 BE), nanoseconds (u32 BE)
 *   68     12   mtime
 *   80     12   ctime
 *   92     n    symlink target (symlinks only)
 *
 * Dirent value: ino (u64 BE) | file type (u8, S_IFMT >> 12).
 * Block map value: the 16-byte block hash.  An empty value is a hole that
 *   hides any older version (written by truncate and punch-hole when an
 *   older version exists); a block never written and not inherited is a
 *   hole without any key.
 * Xattr value: 0x01 | the attribute bytes (may be empty after the 0x01).
 *
 * Invariants
 *   M1  every dirent visible in a tree names an inode visible in that tree;
 *   M2  a visible inode's nlink equals the number of visible dirents naming
 *       it (directories: 2 + subdirectories; root: 2 + subdirectories);
 *   M3  every block-map value names a block in "blocks" with count > 0;
 *   M4  keys at an epoch above a branch's current epoch never exist, nor
 *       at epoch 0: a branch starts at epoch 1 (reads rely on it: at
 *       epoch 1 the exact key is the only possible version, level0_done).
 * ---------------------------------------------------------------------- */
#define BFS_PFX_INODE 'i'
#define BFS_PFX_DIRENT 'd'
#define BFS_PFX_BMAP 'b'
#define BFS_PFX_XATTR 'x'
#define BFS_INODE_HDR_SIZE 92u
#define BFS_DIRENT_VALUE_SIZE 9u
#define BFS_ROOT_INO 1u
#define BFS_FIRST_INO 2u
#define BFS_MAIN_ID 1u

/* Big-endian helpers used by every layer that builds keys. */
static inline void bfs_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void bfs_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void bfs_put_u64(uint8_t *p, uint64_t v)
{
	bfs_put_u32(p, (uint32_t)(v >> 32));
	bfs_put_u32(p + 4, (uint32_t)v);
}

static inline uint16_t bfs_get_u16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t bfs_get_u32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint64_t bfs_get_u64(const uint8_t *p)
{
	return ((uint64_t)bfs_get_u32(p) << 32) | bfs_get_u32(p + 4);
}

#endif /* BFS_KV_FORMAT_H */
