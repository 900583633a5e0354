#!/usr/bin/env bash
# fsx: random writes, reads, truncates, fallocate, punch hole,
# copy_file_range, mmap reads, fsyncs and reopens against an in-memory
# model (tests/e2e/fsx.c); two runs at once on different files; each result
# compared with the model after a remount, then continued from it.
# BFS_FSX_OPS (default 3000) and BFS_SEED (default: time) tune it.
. "$(dirname "$0")/lib.sh"

PROG=$BFS_E2E_BIN/fsx
if [ ! -x "$PROG" ] || [ "$PROG" -ot "$BFS_REPO/tests/e2e/fsx.c" ]; then
	make -C "$BFS_REPO" --no-print-directory "build/tests/e2e/fsx" >&2 ||
		bfs_fail "cannot build $PROG"
fi
OPS=${BFS_FSX_OPS:-3000}
SEED=${BFS_SEED:-$(date +%s)}
bfs_setup
H=$BFS_WORK/host
mkdir "$H"
bfs_log "seed $SEED (BFS_SEED=$SEED replays)"

run() { # NAME SEED [ARGS...]
	local name=$1 seed=$2
	shift 2
	"$PROG" -n "$OPS" -s "$seed" -o "$H/$name.mirror" "$@" "$D/$name" \
		>"$BFS_WORK/$name.out" 2>&1 || {
		# the last operations before the failure, and the failure
		tail -n 15 "$BFS_WORK/$name.out" >&2
		return 1
	}
}

bfs_step "two fsx runs at once, 4 MiB and 16 MiB files"
run a "$SEED" &
pa=$!
run b $((SEED + 1)) -m $((16 * 1024 * 1024)) &
pb=$!
wait $pa || bfs_fail "fsx a (seed $SEED) failed"
wait $pb || bfs_fail "fsx b (seed $((SEED + 1))) failed"

for round in 1 2; do
	bfs_step "remount $round: files equal their models, then continue"
	bfs_umount "$MNT"
	bfs_mount "$STORE" "$MNT"
	bfs_same "$H/a.mirror" "$D/a"
	bfs_same "$H/b.mirror" "$D/b"
	run a $((SEED + 10 * round)) -c || bfs_fail "fsx a, continued, failed"
	run b $((SEED + 10 * round + 1)) -c -m $((16 * 1024 * 1024)) || bfs_fail "fsx b, continued, failed"
done
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/a.mirror" "$D/a"
bfs_same "$H/b.mirror" "$D/b"
bfs_umount "$MNT"
