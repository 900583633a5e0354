#!/usr/bin/env bash
# PostgreSQL on `branchfs mount --writeback`, the mode scripts/quickstart.sh
# mounts with: the tests of what PostgreSQL relies on run again in it.
#   pg_branch    branch during pgbench, a second postgres on the branch
#                recovers, amcheck clean, pgbench's invariant holds
#   pg_crash     kill -9 of the daemon: every acknowledged commit survives
#   pg_powercut  power cuts under pgbench, snapshots and branch creation
#   pg_full_disk postgres fills the disk: nothing acknowledged lost, deletes
#                and gc work on the full disk, space comes back.  With a
#                40 MiB (not 120 MiB) file on the 400 MiB disk: write-back
#                hands a big file over at once, and four 32 MiB RocksDB
#                level-0 files leave no room on this tiny disk for the
#                compaction RocksDB wants before it resumes writing after
#                the disk filled up (README, Known limits)
# Each runs with its own cleanup, in a work directory under this test's
# ($TMPDIR/branchfs-pg_writeback.XXXXXX, which tests/run.sh sweeps after a
# timeout), and must log that its mount really is in write-back mode.
# Exit 0 = pass, 1 = fail, 77 = skip (a sub-test's skip).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(mktemp -d "${TMPDIR:-/tmp}/branchfs-pg_writeback.XXXXXX") || exit 1
chmod 755 "$TOP"
# only empty: a sub-test that could not unmount leaves its directory alone
trap 'rmdir "$TOP" 2>/dev/null || true' EXIT
export TMPDIR=$TOP
export BFS_MOUNT_OPTS=--writeback
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
BRANCHFS=${BRANCHFS:-$HERE/../../branchfs}

# The kernel must really give write-back (else the daemon logs "writing
# through" and the runs below would test nothing new).
probe=$TOP/probe
trap '"$BRANCHFS" umount "$probe/mnt" 2>/dev/null; rm -rf --one-file-system "$probe"; rmdir "$TOP" 2>/dev/null || true' EXIT
mkdir -p "$probe/mnt"
"$BRANCHFS" init "$probe/store" >/dev/null || { log "FAIL: branchfs init"; exit 1; }
"$BRANCHFS" mount "$probe/store" "$probe/mnt" --writeback || { log "FAIL: branchfs mount --writeback"; exit 1; }
"$BRANCHFS" umount "$probe/mnt" || { log "FAIL: branchfs umount"; exit 1; }
if ! grep -q "mode: writeback" "$probe/store/branchfs.log"; then
	log "FAIL: mount --writeback did not turn the writeback cache on: $(grep -E 'mode:|writeback' "$probe/store/branchfs.log")"
	exit 1
fi
rm -rf "$probe"
trap 'rmdir "$TOP" 2>/dev/null || true' EXIT
for t in pg_branch pg_crash pg_powercut pg_full_disk; do
	log "---- $t with --writeback"
	PG_FULL_BLOB_MB=40 bash "$HERE/$t.sh"
	rc=$?
	if [ "$rc" -eq 77 ]; then
		log "SKIP: $t skipped"
		exit 77
	fi
	if [ "$rc" -ne 0 ]; then
		log "FAIL: $t with --writeback (exit $rc)" >&2
		exit "$rc"
	fi
done
echo "PASS pg_writeback"
