#!/usr/bin/env bash
# tests/run.sh MODE - run branchfs tests; MODE is unit, e2e, pg or all.
#
#   unit  every cmocka binary built from tests/{kv,snap,fs}/*.c (build/tests/<layer>/*;
#         one not built is a failure) and any other build/tests/*/test_*
#         binary (not under e2e/ or pg/, which need a mount)
#   e2e   every tests/e2e/*.sh (mount tests; need root and /dev/fuse)
#   pg    every tests/pg/*.sh (PostgreSQL on a mount)
#   all   the three in that order
#
# Scripts named lib*.sh or _*.sh are helpers that tests source, not tests.
# Each test runs under `timeout` with its output in a log file; a failing
# test's log tail is printed.  Exit 0 = pass, 77 = skip, anything else =
# fail.  A skip counts as a failure unless BRANCHFS_ALLOW_SKIP=1: no test is
# skipped to get green.  The last line printed is "N passed, N failed"
# (", N skipped" when skips are allowed and happened); the exit status is
# non-zero if any test failed.
#
# Environment:
#   BRANCHFS             binary under test (default: ./branchfs)
#   BRANCHFS_ALLOW_SKIP  1: a skipped test is not a failure
#   BFS_TEST_TIMEOUT     seconds per test (default 600; pg tests 900)
#   BFS_TEST_LOGDIR      log directory (default build/test-logs)
#   BFS_TEST_FILTER      only run tests whose name matches this grep -E pattern
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
export BRANCHFS=${BRANCHFS:-$REPO/branchfs}

MODE=${1:-}
case $MODE in
unit | e2e | pg | all) ;;
*)
	echo "usage: tests/run.sh unit|e2e|pg|all" >&2
	exit 2
	;;
esac

LOGDIR=${BFS_TEST_LOGDIR:-$REPO/build/test-logs}
# object directory of the build under test (build-address for SANITIZE=address)
BFS_BUILD=${BFS_BUILD:-build}
export BFS_E2E_BIN=${BFS_E2E_BIN:-$REPO/$BFS_BUILD/tests/e2e}
mkdir -p "$LOGDIR"
ALLOW_SKIP=${BRANCHFS_ALLOW_SKIP:-0}
FILTER=${BFS_TEST_FILTER:-}

passed=0 failed=0 skipped=0
failures=()

# run_one KIND NAME TIMEOUT CMD...
run_one() {
	local kind=$1 name=$2 limit=$3 log start end secs rc
	shift 3
	if [ -n "$FILTER" ] && ! grep -qE -- "$FILTER" <<<"$kind/$name"; then
		return 0
	fi
	log=$LOGDIR/$kind-$name.log
	start=$(date +%s.%N)
	{
		echo "# $*"
		echo "# started $(date -Is), timeout ${limit}s"
	} >"$log"
	# timeout puts the test in its own process group and signals all of it.
	timeout -k 30 "$limit" "$@" </dev/null >>"$log" 2>&1
	rc=$?
	end=$(date +%s.%N)
	secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
	echo "# exit $rc after ${secs}s" >>"$log"
	if [ $rc -eq 0 ]; then
		passed=$((passed + 1))
		echo "PASS $kind/$name (${secs}s)"
		return 0
	fi
	if [ $rc -eq 77 ]; then
		if [ "$ALLOW_SKIP" = 1 ]; then
			skipped=$((skipped + 1))
			echo "SKIP $kind/$name (${secs}s): $(grep -m1 '^SKIP' "$log" || tail -n1 "$log")"
			return 0
		fi
		echo "FAIL $kind/$name (skipped, and BRANCHFS_ALLOW_SKIP is not 1; ${secs}s)"
	elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		echo "FAIL $kind/$name (timed out after ${limit}s)"
		sweep "$name"
	else
		echo "FAIL $kind/$name (exit $rc, ${secs}s)"
	fi
	failed=$((failed + 1))
	failures+=("$kind/$name")
	echo "---- last 60 lines of $log ----"
	tail -n 60 "$log"
	echo "---- end of $log ----"
}

# sweep NAME: after a test timed out (and was killed before its own
# cleanup could finish), abort and lazily unmount the FUSE mounts left in
# its work directories (lib.sh names them $TMPDIR/branchfs-NAME.XXXXXX).
sweep() {
	local prefix=${TMPDIR:-/tmp}/branchfs-$1. _id _parent devno _root mp _rest
	while read -r _id _parent devno _root mp _rest; do
		mp=$(printf '%b' "$mp")
		[[ $mp == "$prefix"* ]] || continue
		echo "run.sh: $1 timed out; aborting and unmounting $mp"
		if [ -w "/sys/fs/fuse/connections/${devno#*:}/abort" ]; then
			echo 1 >"/sys/fs/fuse/connections/${devno#*:}/abort"
		fi
		fusermount3 -uz "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
	done < <(sort -r -k5 /proc/self/mountinfo)
}

# fail_setup KIND NAME WHY: a test that could not even start.
fail_setup() {
	echo "FAIL $1/$2 ($3)"
	failed=$((failed + 1))
	failures+=("$1/$2")
}

run_unit() {
	local src layer name bin
	declare -A seen=()
	# the Makefile's UNIT_SRC: each must have been built by `make unit`
	for src in tests/kv/*.c tests/snap/*.c tests/fs/*.c; do
		[ -e "$src" ] || continue
		layer=$(basename "$(dirname "$src")")
		name=$(basename "$src" .c)
		bin=$BFS_BUILD/tests/$layer/$name
		seen[$bin]=1
		if [ ! -x "$bin" ]; then
			fail_setup unit "$layer-$name" "$bin not built; run make unit"
			continue
		fi
		run_one unit "$layer-$name" "${BFS_TEST_TIMEOUT:-600}" "$bin"
	done
	for bin in "$BFS_BUILD"/tests/*/test_*; do
		[ -f "$bin" ] && [ -x "$bin" ] || continue
		[ -z "${seen[$bin]:-}" ] || continue
		layer=$(basename "$(dirname "$bin")")
		case $layer in e2e | pg) continue ;; esac
		case $bin in *.o | *.d | *.a) continue ;; esac
		run_one unit "$layer-$(basename "$bin")" "${BFS_TEST_TIMEOUT:-600}" "$bin"
	done
}

# run_scripts DIR LIMIT
run_scripts() {
	local dir=$1 limit=$2 t name
	for t in tests/$dir/*.sh; do
		[ -e "$t" ] || continue
		name=$(basename "$t" .sh)
		case $name in lib* | _*) continue ;; esac
		run_one "$dir" "$name" "$limit" bash "$t"
	done
}

echo "tests/run.sh $MODE: logs in $LOGDIR, BRANCHFS=$BRANCHFS"
case $MODE in
unit) run_unit ;;
e2e) run_scripts e2e "${BFS_TEST_TIMEOUT:-600}" ;;
pg) run_scripts pg "${BFS_TEST_TIMEOUT:-900}" ;;
all)
	run_unit
	run_scripts e2e "${BFS_TEST_TIMEOUT:-600}"
	run_scripts pg "${BFS_TEST_TIMEOUT:-900}"
	;;
esac

if [ $((passed + failed + skipped)) -eq 0 ] && [ -z "$FILTER" ]; then
	fail_setup "$MODE" none "no tests found"
fi
if [ ${#failures[@]} -gt 0 ]; then
	echo "failed: ${failures[*]}"
fi
summary="$passed passed, $failed failed"
[ $skipped -eq 0 ] || summary="$summary, $skipped skipped"
echo "$summary"
[ $failed -eq 0 ]
