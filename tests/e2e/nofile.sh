#!/usr/bin/env bash
# The open-file limit.  RocksDB keeps every table file of a store open
# (one per ~32-64 MiB stored), so a daemon started under a soft limit of
# 1,024 answered EIO to every write after ~40 GB ("Too many open files"),
# until a remount.  What this test checks:
#   - branchfs raises its soft limit to the hard one (the daemon's, read in
#     /proc/PID/limits, and an offline command's);
#   - under a low hard limit, RocksDB is told to keep at most half of it
#     open (max_open_files in the OPTIONS file it writes at open), and
#     the mount works: files written, branched, read back.
. "$(dirname "$0")/lib.sh"
bfs_require_mount
STORE=$BFS_WORK/store
MNT=$BFS_WORK/mnt
export BRANCHFS_STORE=$STORE
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || [ "$hard" -ge 256 ] || bfs_skip "hard open-file limit $hard is too low to test with"

# max_open_files of the newest OPTIONS file
rocks_max_open() {
	local f
	f=$STORE/db/OPTIONS-$(ls "$STORE/db" | sed -n 's/^OPTIONS-//p' | sort -n | tail -n1)
	sed -n 's/^ *max_open_files=//p' "$f"
}

bfs_step "a low soft limit is raised to the hard one"
bfs_init "$STORE"
mkdir -p "$MNT"
(ulimit -Sn 64 && "$BRANCHFS" mount "$STORE" "$MNT") || bfs_fail "mount under a soft limit of 64"
BFS_MNT_STORE[$MNT]=$STORE
pid=$(bfs_daemon_pid "$STORE")
read -r soft hlim < <(awk '/^Max open files/ {print $4, $5}' "/proc/$pid/limits")
bfs_log "daemon $pid: open files soft $soft hard $hlim (shell's hard $hard)"
[ "$soft" = "$hlim" ] || bfs_fail "the daemon's soft open-file limit is $soft, its hard one $hlim"
got=$(rocks_max_open)
if [ "$hlim" = unlimited ] || [ "$hlim" -ge $((1 << 18)) ]; then
	want=-1
else
	want=$((hlim / 2))
fi
[ "$got" = "$want" ] || bfs_fail "max_open_files=$got with a limit of $hlim, expected $want"
bfs_umount "$MNT"
# an offline command: the raised limit lets `branch create` open the store
(ulimit -Sn 64 && "$BRANCHFS" branch create b0 >/dev/null) || bfs_fail "offline branch create under a soft limit of 64"
got=$(rocks_max_open)
[ "$got" = "$want" ] || bfs_fail "offline: max_open_files=$got, expected $want"

bfs_step "under a hard limit of 100, RocksDB keeps at most 50 files open"
(ulimit -n 100 && "$BRANCHFS" mount "$STORE" "$MNT") || bfs_fail "mount under a limit of 100"
BFS_MNT_STORE[$MNT]=$STORE
got=$(rocks_max_open)
[ "$got" = 50 ] || bfs_fail "max_open_files=$got under a limit of 100, expected 50"
for i in 1 2 3 4; do
	head -c $((8 << 20)) /dev/urandom >"$MNT/main/f$i"
done
sync "$MNT"/main/f*
SUM=$(cat "$MNT"/main/f* | sha256sum)
"$BRANCHFS" branch create b1 >/dev/null || bfs_fail "branch create under a limit of 100"
[ "$(cat "$MNT"/b1/f* | sha256sum)" = "$SUM" ] || bfs_fail "b1 differs from main"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
[ "$(cat "$MNT"/main/f* | sha256sum)" = "$SUM" ] || bfs_fail "main changed across the remount"
bfs_umount "$MNT"
