#!/usr/bin/env bash
# Atomic snapshots under load.  The C helper `branch_util writer` keeps an
# invariant across many files of branch `work` while it writes without
# fsync: 16 one-block counter files updated round-robin (at every instant
# c00 >= c01 >= ... >= c15 >= c00 - 1) and 2 threads each rewriting a
# 256 KiB file with one pwrite of a repeated value.  Meanwhile a snapshot of
# `work` is taken every 100 ms for ~10 s (every 8th time a branch is created
# from `work` instead: its implicit snapshot).  Every snapshot and branch
# must satisfy the invariant (`branch_util check`): one instant across all
# files, no block torn.  After the writer stops, every snapshot still reads
# exactly as it did (snapshots never change), also after a remount.
# Knobs: BFS_ATOMIC_SECS (10), BFS_ATOMIC_INTERVAL (0.1).
. "$(dirname "$0")/lib.sh"

SECS=${BFS_ATOMIC_SECS:-10}
INTERVAL=${BFS_ATOMIC_INTERVAL:-0.1}
NCNT=16 NBIG=2 BIGKIB=256

UTIL=$BFS_E2E_BIN/branch_util
if [ ! -x "$UTIL" ] || [ "$UTIL" -ot "$BFS_REPO/tests/e2e/branch_util.c" ]; then
	make -C "$BFS_REPO" --no-print-directory "build/tests/e2e/branch_util" >&2 ||
		bfs_fail "cannot build $UTIL"
fi
bfs_setup
export BRANCHFS_STORE=$STORE

bfs_step "branch work, start the writer"
"$BRANCHFS" branch create work >/dev/null || bfs_fail "branch create work"
mkdir "$MNT/work/load"
WOUT=$BFS_WORK/writer.out
"$UTIL" writer "$MNT/work/load" $NCNT $NBIG $BIGKIB $((SECS + 2)) >"$WOUT" 2>&1 &
WPID=$!
for i in $(seq 1 100); do
	grep -q '^ready' "$WOUT" && break
	kill -0 $WPID 2>/dev/null || bfs_fail "writer died: $(cat "$WOUT")"
	sleep 0.1
done
grep -q '^ready' "$WOUT" || bfs_fail "writer not ready after 10 s"

bfs_step "snapshots every ${INTERVAL}s for ${SECS}s"
NAMES=()
LAT=$BFS_WORK/latency # per command: end-to-end ms, daemon-side ms
n=0
end=$(($(date +%s%N) + SECS * 1000000000))
while [ "$(date +%s%N)" -lt "$end" ]; do
	n=$((n + 1))
	t0=$(date +%s%N)
	if [ $((n % 8)) -eq 0 ]; then
		name=br$n
		out=$("$BRANCHFS" branch create "$name" --from work --json) ||
			bfs_fail "branch create $name --from work under load"
		NAMES+=("$MNT/$name")
	else
		name=s$n
		out=$("$BRANCHFS" snapshot create work "$name" --json) ||
			bfs_fail "snapshot create work $name under load"
		NAMES+=("$MNT/.snapshots/$name")
	fi
	echo "$((($(date +%s%N) - t0) / 1000000)) $(sed -n 's/.*"store_ms": *\([0-9.]*\).*/\1/p' <<<"$out")" >>"$LAT"
	kill -0 $WPID 2>/dev/null || bfs_fail "writer stopped early: $(cat "$WOUT")"
	sleep "$INTERVAL"
done
# latency is reported, not judged (a loaded 2-core machine is noisy)
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "median %s, max %s", v[int((NR + 1) / 2)], v[NR] }'; }
bfs_log "$n snapshots/branches taken under load; command end to end: $(cut -d' ' -f1 "$LAT" | stats) ms;" \
	"in the store: $(cut -d' ' -f2 "$LAT" | stats) ms"

bfs_step "check each while the writer still runs"
declare -A DIGEST=()
bad=0
for d in "${NAMES[@]}"; do
	out=$("$UTIL" check "$d/load" $NCNT $NBIG $BIGKIB) || {
		bfs_log "$d: $out"
		bad=$((bad + 1))
		continue
	}
	DIGEST[$d]=$out
done
[ $bad -eq 0 ] || bfs_fail "$bad of ${#NAMES[@]} snapshots violate the invariant"
kill -0 $WPID 2>/dev/null || bfs_log "note: the writer finished before all checks were done"
wait $WPID || bfs_fail "writer failed: $(cat "$WOUT")"
bfs_log "writer: $(tail -n1 "$WOUT")"

# The snapshots must show the writer at many different instants, else the
# test proved nothing.
distinct=$(printf '%s\n' "${DIGEST[@]}" | sort -u | wc -l)
mixedsnaps=$(printf '%s\n' "${DIGEST[@]}" | grep -vc ' mixed=0$' || true)
bfs_log "$distinct distinct states in ${#NAMES[@]} snapshots; $mixedsnaps with big files of mixed versions (FUSE split writes)"
[ "$distinct" -ge $((${#NAMES[@]} / 2)) ] ||
	bfs_fail "only $distinct distinct states in ${#NAMES[@]} snapshots: is the writer writing?"
# a snapshot caught mid-round somewhere (counters not all equal)
printf '%s\n' "${DIGEST[@]}" | awk '{ split(substr($1, 10), c, ","); for (i in c) if (c[i] != c[1]) { f = 1 } } END { exit !f }' ||
	bfs_log "note: no snapshot caught a round half-done"

bfs_step "snapshots never change: after the writer stopped, and after a remount"
recheck() {
	local d out
	for d in "${NAMES[@]}"; do
		out=$("$UTIL" check "$d/load" $NCNT $NBIG $BIGKIB) || bfs_fail "$1: $d: $out"
		[ "$out" = "${DIGEST[$d]}" ] ||
			bfs_fail "$1: $d changed: was '${DIGEST[$d]}', now '$out'"
	done
}
recheck "writer stopped"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
recheck "after remount"
# the live branch holds the writer's final state
"$UTIL" check "$MNT/work/load" $NCNT $NBIG $BIGKIB >/dev/null || bfs_fail "final state of work is inconsistent"

bfs_step "delete them all, gc"
for d in "${NAMES[@]}"; do
	name=$(basename "$d")
	case $d in
	*/.snapshots/*) "$BRANCHFS" snapshot delete "$name" >/dev/null || bfs_fail "snapshot delete $name" ;;
	*) "$BRANCHFS" branch delete "$name" >/dev/null || bfs_fail "branch delete $name" ;;
	esac
done
"$BRANCHFS" gc || bfs_fail "gc"
[ -z "$(ls -A "$MNT/.snapshots")" ] || bfs_fail "snapshots left: $(ls "$MNT/.snapshots")"
"$UTIL" check "$MNT/work/load" $NCNT $NBIG $BIGKIB >/dev/null || bfs_fail "work inconsistent after gc"
bfs_umount "$MNT"
