#!/usr/bin/env bash
# An unmounted store on a disk that is full (a 400 MiB ext4 image in the
# work directory, mounted -o loop; another file takes every free byte).
# RocksDB 7.8 aborts the process (an assertion in its info LOG writer) when
# it opens a database for writing without room for its new files (ext4
# keeps what a preallocation that failed half-way got), so every offline
# command used to die with SIGABRT there.  What this test checks:
#   - commands that only read (branch list, snapshot list, du, stats,
#     check) work: they open the store read-only and leave the 64 MiB
#     disk-full reserve in place;
#   - a create does not spend the reserve: it fails with a clear message;
#   - `branch delete` works: it gives up the reserve to open the store;
#   - with no reserve left, writing commands and `mount` fail with a clear
#     message and exit 1, never an abort; `check --repair` exits 2; `init`
#     of a new store there fails the same way and leaves nothing behind;
#   - the store's data is intact afterwards: once there is room, it mounts,
#     main reads back byte for byte, and `branchfs check` is clean;
#   - after an unclean stop (kill -9 leaves ~10 MiB of RocksDB WAL to
#     replay) on a full disk, the store still reads and a delete still
#     works (the reserve covers the WAL too).
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
# no_abort RC WHAT: an exit status from SIGABRT (134) or any signal is a failure
no_abort() { [ "$1" -lt 128 ] || bfs_fail "$2 died of signal $(($1 - 128))"; }

bfs_step "a store with main and a branch, unmounted cleanly"
bfs_init "$STORE"
bfs_mount "$STORE" "$MNT"
head -c $((24 << 20)) /dev/urandom >"$MNT/main/data"
"$BRANCHFS" branch create b1 >/dev/null || bfs_fail "branch create b1"
head -c $((16 << 20)) /dev/urandom >"$MNT/b1/more"
SUM=$(sha256sum <"$MNT/main/data")
bfs_umount "$MNT"
[ -f "$STORE/reserve" ] || bfs_fail "the store has no disk-full reserve"

bfs_step "fill the disk"
fill 1
bfs_log "free: $(avail_mib) MiB"
[ "$(avail_mib)" -lt 4 ] || bfs_fail "the disk is not full: $(avail_mib) MiB free"

bfs_step "commands that only read work on the full disk"
for cmd in "branch list" "snapshot list" "du" "stats" "check"; do
	rc=0
	# shellcheck disable=SC2086
	out=$("$BRANCHFS" $cmd 2>"$BFS_WORK/err") || rc=$?
	no_abort $rc "branchfs $cmd"
	[ $rc -eq 0 ] || bfs_fail "branchfs $cmd on a full disk: exit $rc: $(cat "$BFS_WORK/err")"
done
"$BRANCHFS" branch list | grep -q '^b1 ' || bfs_fail "branch list on a full disk lacks b1"
"$BRANCHFS" check "$STORE" | grep -q '^clean' || bfs_fail "check on a full disk is not clean"
[ -f "$STORE/reserve" ] || bfs_fail "a read-only command gave up the reserve"
bfs_expect_fail 1 "$BRANCHFS" branch create y
grep -q "too full to open it" <<<"$BFS_ERR" || bfs_fail "branch create on a full disk: $BFS_ERR"
[ -f "$STORE/reserve" ] || bfs_fail "a branch create gave up the reserve"

bfs_step "branch delete works on the full disk (the reserve is given up)"
rc=0
"$BRANCHFS" branch delete b1 2>"$BFS_WORK/err" || rc=$?
no_abort $rc "branch delete"
[ $rc -eq 0 ] || bfs_fail "branch delete on a full disk: exit $rc: $(cat "$BFS_WORK/err")"
[ ! -f "$STORE/reserve" ] || bfs_fail "the reserve is still there"
grep -q 'released the 64 MiB reserve' "$BFS_WORK/err" ||
	bfs_fail "branch delete does not say it released the reserve: $(cat "$BFS_WORK/err")"
"$BRANCHFS" branch list | grep -q '^b1 ' && bfs_fail "b1 is still listed"

bfs_step "no reserve left: writes and mount fail cleanly"
fill 2
[ "$(avail_mib)" -lt 4 ] || bfs_fail "the disk is not full again: $(avail_mib) MiB free"
for cmd in "branch create x" "snapshot create main s" "gc"; do
	# shellcheck disable=SC2086
	bfs_expect_fail 1 "$BRANCHFS" $cmd
	grep -q "too full to open it" <<<"$BFS_ERR" || bfs_fail "branchfs $cmd: $BFS_ERR"
done
bfs_expect_fail 1 "$BRANCHFS" mount "$STORE" "$MNT"
grep -q "too full to open it" <<<"$BFS_ERR" || bfs_fail "mount on a full disk: $BFS_ERR"
! bfs_is_mounted "$MNT" || bfs_fail "a failed mount left $MNT mounted"
bfs_expect_fail 2 "$BRANCHFS" check --repair "$STORE"
bfs_expect_fail 1 "$BRANCHFS" init "$FS/new"
grep -q "No space left on device" <<<"$BFS_ERR" || bfs_fail "init on a full disk: $BFS_ERR"
[ ! -e "$FS/new" ] || bfs_fail "init on a full disk left $FS/new behind"
"$BRANCHFS" branch list | grep -q '^main ' || bfs_fail "branch list with no reserve left"

bfs_step "with room again, the store mounts and main is intact"
rm -f "$FS"/filler*
bfs_mount "$STORE" "$MNT"
[ "$(sha256sum <"$MNT/main/data")" = "$SUM" ] || bfs_fail "main/data changed"
[ ! -e "$MNT/b1" ] || bfs_fail "b1 is back"
"$BRANCHFS" branch create x >/dev/null || bfs_fail "branch create after freeing space"

bfs_step "kill -9 leaves a WAL to replay; on a full disk the store reads and deletes"
[ -f "$STORE/reserve" ] || bfs_fail "the reserve was not made again with room on the disk"
"$BRANCHFS" branch create z >/dev/null || bfs_fail "branch create z"
head -c $((10 << 20)) /dev/urandom >"$MNT/z/wal"
echo more >"$MNT/x/after"
sync "$MNT/x/after" "$MNT/z/wal"
pid=$(bfs_daemon_pid "$STORE")
kill -KILL "$pid"
bfs_wait_gone "$pid" 10 || bfs_fail "daemon $pid did not die"
"$BRANCHFS" umount "$MNT" 2>/dev/null || bfs_fail "umount of the stale mount"
unset "BFS_MNT_STORE[$MNT]"
wal=$(find "$STORE/db" -name '*.log' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
bfs_log "WAL left: $wal bytes"
[ "$wal" -gt $((8 << 20)) ] || bfs_fail "kill -9 left only $wal bytes of WAL: this step tests less than it says"
fill 3
"$BRANCHFS" branch list | grep -q '^x ' || bfs_fail "branch list after kill -9 on a full disk lacks x"
rc=0
"$BRANCHFS" branch delete z 2>"$BFS_WORK/err" || rc=$?
no_abort $rc "branch delete after kill -9"
[ $rc -eq 0 ] || bfs_fail "branch delete after kill -9 on a full disk: exit $rc: $(cat "$BFS_WORK/err")"
rm -f "$FS"/filler*
bfs_mount "$STORE" "$MNT"
[ "$(cat "$MNT/x/after")" = more ] || bfs_fail "x/after lost"
[ "$(sha256sum <"$MNT/main/data")" = "$SUM" ] || bfs_fail "main/data changed"
bfs_umount "$MNT"
"$BRANCHFS" check "$STORE" >&2 || bfs_fail "check of the store is not clean"
