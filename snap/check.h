/* SPDX-License-Identifier: MIT */
/*
 * snap/check.h - the store checker (`branchfs check`).
 *
 * snap_check() verifies every invariant of kv/format.h on a store opened
 * with SNAP_OPEN_CHECK (offline: the store lock is held, nothing else
 * writes).  It reads the database itself, streaming: memory is one entry
 * per distinct referenced block plus, while one tree is checked, one small
 * record per inode of that tree; no metadata value is kept.
 *
 * Invariants checked (kinds as passed to the report callback):
 *   format     the "format" key names BFS_FORMAT_VERSION
 *   counter    next_ino / next_id present, and above every inode number
 *              and every branch/snapshot id in use
 *   record     branch and snapshot records decode; names valid and unique
 *              among live records; flags, epochs (branch >= 1, snapshot 0)
 *   ancestry   every parent exists (a branch record, live or deleted but
 *              kept), the branch point lies below the parent's epoch, no
 *              cycle; a live branch's origin (reset point) exists likewise
 *   key        every metadata key is well formed, belongs to a known branch
 *              (not a snapshot) and lies at an epoch in 1..its current
 *              epoch (M4); prune marks and orphan records are well formed
 *              and name known branches
 *   inode, dirent, bmap
 *              values decode; in every tree (branch head, snapshot, reset
 *              point), read as the tree reads them (ancestry fall-through
 *              at each level's epoch): the root is a directory, every entry
 *              of a live directory names a live inode of the type it
 *              records (M1), a directory is named once and its parent field
 *              says where, no block is mapped beyond EOF or on a non-file.
 *              Entries and block maps of a removed inode may show through
 *              from an ancestor (inode_purge clears the branch's own keys
 *              only); inode numbers are never reused, so they are
 *              unreachable and not counted.
 *   nlink      nlink == number of entries naming the inode; directories
 *              2 + subdirectories (M2); an inode named by no entry must
 *              have nlink 0 (a file unlinked while open)
 *   size       a directory's size == its entries; a file's mapped-block
 *              count == its visible non-hole blocks (D2)
 *   block-missing, block-corrupt
 *              every referenced block exists, decodes, and its XXH3-128
 *              matches (M3); reported per tree and file path
 *   refcount   count(h) == number of block-map values naming h, across all
 *              branches and epochs (R1); stored length matches
 *   orphan-block  a stored block with no reference is queued for GC (R2)
 *   gc-queue   queue entries name a block or a count record
 *
 * With SNAP_CHECK_REPAIR it fixes what is safe, in atomic batches, synced:
 * reference counts are set to the references found; unreferenced blocks
 * (even corrupt ones) and stale queue entries, prune marks and count
 * records are deleted; keys of a branch id that no record has or names
 * are deleted; nlink, directory size and block counts of inodes in a live
 * branch head are rewritten at its current epoch (as any write would).
 * It never deletes a reference, entry or inode that user data hangs on:
 * missing or corrupt blocks, dangling entries, damaged records and broken
 * ancestry are reported and left alone.
 */
#ifndef BFS_SNAP_CHECK_H
#define BFS_SNAP_CHECK_H

#include <stdint.h>

#include "snap.h"

struct snap_check_stats {
	uint64_t branches, snapshots, inodes, dirents, bmap_entries, blocks,
		problems, repaired;
};

/*
 * One problem.  @branch is the branch or snapshot name (NULL for
 * store-wide problems), @path the file's path in that tree ("/a/b"; NULL
 * when no file is concerned; "(unlinked inode N)" for an inode no entry
 * names).  A repaired problem's @detail ends in " [repaired]".  The
 * strings are valid during the call only.
 */
typedef void (*snap_check_report_fn)(void *arg, const char *kind,
				     const char *branch, const char *path,
				     const char *detail);
/* Progress: @phase ("records", "metadata", "blocks", "tree NAME"), @done
 * items of @total (0 = unknown).  Called every few thousand items. */
typedef void (*snap_check_progress_fn)(void *arg, const char *phase,
				       uint64_t done, uint64_t total);

#define SNAP_CHECK_REPAIR 1u

/*
 * Check store @s (opened with SNAP_OPEN_CHECK).  @report and @progress may
 * be NULL; @st (may be NULL) gets the counts.
 * Returns 0 = clean (after repair if asked), 1 = problems remain, <0 =
 * -errno (the store could not be read, or a repair could not be written).
 */
int snap_check(struct snap *s, unsigned flags, snap_check_report_fn report,
	       snap_check_progress_fn progress, void *arg,
	       struct snap_check_stats *st);

#endif /* BFS_SNAP_CHECK_H */
