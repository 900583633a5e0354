#!/usr/bin/env bash
# A mounted store whose disk another process fills to the last byte (a
# 400 MiB ext4 image in the work directory, mounted -o loop).  RocksDB 7.8
# aborts the process on the second line it tries to write to its info LOG
# after a write to it failed, and a full disk makes it log at once: the
# daemon died in the middle of a client's write (the client got
# ECONNABORTED, the mount went stale) or at umount.  What this test checks:
#   - writes through the mount fail with "No space left on device", never
#     a dead daemon; the daemon serves reads (a file reads back byte for
#     byte) and metadata operations keep working or fail with ENOSPC;
#   - CLI reads work; `branch delete` works (it may spend the reserve);
#   - once space is free, writes work again without a remount;
#   - with the disk full again, umount stops the daemon cleanly, and the
#     store then mounts with everything fsynced intact; `check` is clean.
. "$(dirname "$0")/lib.sh"
bfs_require_mount
command -v mkfs.ext4 >/dev/null || bfs_skip "mkfs.ext4 (e2fsprogs) missing"

FS=$BFS_WORK/fs
STORE=$FS/store
MNT=$BFS_WORK/mnt
export BRANCHFS_STORE=$STORE
bfs_loop_ext4 "$FS" 400
fill() { bfs_fill "$FS" "$1"; }
avail_mib() { bfs_avail_mib "$FS"; }
# alive WHAT: the daemon still serves the mount
alive() {
	[ -n "$(bfs_daemon_pids "$STORE")" ] || bfs_fail "the daemon died $1: $(tail -n 3 "$STORE/branchfs.log")"
	stat "$MNT/main/data" >/dev/null 2>&1 || bfs_fail "the mount does not answer $1"
}
# write_fails NAME MIB: dd with fsync must fail with ENOSPC, nothing else
# (the first tens of MiB may fit: RocksDB preallocates its WAL files)
write_fails() {
	local rc=0
	dd if=/dev/urandom of="$MNT/main/$1" bs=8k count="$(($2 * 128))" conv=fsync status=none \
		2>"$BFS_WORK/err" || rc=$?
	[ $rc -ne 0 ] || bfs_fail "writing $2 MiB to a full disk succeeded"
	grep -q "No space left on device" "$BFS_WORK/err" ||
		bfs_fail "writing to a full disk: $(cat "$BFS_WORK/err")"
	alive "after a write that met the full disk"
}

bfs_step "a mounted store with data on main and on a branch"
bfs_init "$STORE"
bfs_mount "$STORE" "$MNT"
head -c $((24 << 20)) /dev/urandom >"$MNT/main/data"
"$BRANCHFS" branch create scratch >/dev/null || bfs_fail "branch create scratch"
head -c $((40 << 20)) /dev/urandom >"$MNT/scratch/blob"
sync "$MNT/main/data" "$MNT/scratch/blob"
SUM=$(sha256sum <"$MNT/main/data")

bfs_step "another process fills the disk"
fill 1
[ "$(avail_mib)" -lt 4 ] || bfs_fail "the disk is not full: $(avail_mib) MiB free"

bfs_step "writes through the mount fail with ENOSPC; the daemon stays up"
for i in 1 2 3; do
	write_fails "new$i" 200
done
for i in 1 2 3; do
	# metadata: done or ENOSPC, the daemon stays either way
	mkdir "$MNT/main/dir$i" 2>"$BFS_WORK/err" ||
		grep -q "No space left on device" "$BFS_WORK/err" ||
		bfs_fail "mkdir on a full disk: $(cat "$BFS_WORK/err")"
	alive "after a mkdir on the full disk"
done
[ "$(sha256sum <"$MNT/main/data")" = "$SUM" ] || bfs_fail "main/data reads back changed"
"$BRANCHFS" branch list | grep -q '^scratch ' || bfs_fail "branch list on the full disk"
"$BRANCHFS" du >/dev/null || bfs_fail "du on the full disk"
alive "after CLI reads"

bfs_step "branch delete works on the full disk"
"$BRANCHFS" branch delete scratch 2>"$BFS_WORK/err" ||
	bfs_fail "branch delete on the full disk: $(cat "$BFS_WORK/err")"
alive "after a branch delete on the full disk"

bfs_step "with room again, writes work without a remount"
rm -f "$FS"/filler*
ok=0
for _ in $(seq 60); do
	if dd if=/dev/urandom of="$MNT/main/after" bs=1M count=8 conv=fsync status=none 2>/dev/null; then
		ok=1
		break
	fi
	sleep 0.5
done
[ $ok = 1 ] || bfs_fail "writes still fail 30 s after space was freed"
AFTER=$(sha256sum <"$MNT/main/after")

bfs_step "the disk full again: umount stops the daemon cleanly"
fill 2
[ "$(avail_mib)" -lt 4 ] || bfs_fail "the disk is not full again: $(avail_mib) MiB free"
write_fails new4 200
bfs_umount "$MNT"
grep -q "exiting (unmounted)" "$STORE/branchfs.log" ||
	bfs_fail "the daemon did not exit cleanly: $(tail -n 3 "$STORE/branchfs.log")"
! grep -q "Assertion" "$STORE/branchfs.log" ||
	bfs_fail "RocksDB aborted: $(grep Assertion "$STORE/branchfs.log")"

bfs_step "with room, the store mounts with everything fsynced intact"
rm -f "$FS"/filler*
bfs_mount "$STORE" "$MNT"
[ "$(sha256sum <"$MNT/main/data")" = "$SUM" ] || bfs_fail "main/data changed"
[ "$(sha256sum <"$MNT/main/after")" = "$AFTER" ] || bfs_fail "main/after changed"
[ ! -e "$MNT/scratch" ] || bfs_fail "scratch is back"
bfs_umount "$MNT"
"$BRANCHFS" check "$STORE" >&2 || bfs_fail "check of the store is not clean"
