#!/usr/bin/env bash
# PostgreSQL on a branch 10 levels deep: main -> b1 -> ... -> b10.
#   main: initdb --data-checksums, pgbench -i -s 5, a table `levels` with
#   row 0.  Then for each level i = 1..10: branch b_i from b_{i-1} while the
#   postgres of b_{i-1} runs (so every level starts by crash recovery);
#   stop that postgres; start one on b_i with `pg_ctl start`; insert row i
#   into `levels` and run a few pgbench transactions (so every level holds
#   changes of its own to the same relations).  On b10: rows 0..10 in
#   levels, every pgbench table holds the right row count, pgbench's
#   invariant holds, `pgbench -n -T 10` runs (TPS compared with main's,
#   reported only), amcheck clean.  Then b1..b9 and main's postgres data
#   are left alone while b1..b9 are deleted and gc runs: b10 still starts
#   and holds everything; pg_checksums --check clean.
# Exit 0 = pass, 1 = fail, 77 = skip.  Knobs: PG_SCALE (5), PG_DEPTH (10),
# PG_SECS (10).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

SCALE=${PG_SCALE:-5}
DEPTH=${PG_DEPTH:-10}
SECS=${PG_SECS:-10}
TX=50 # pgbench transactions per client per level

pgl_workdir pg-branch-deep
W=$PGL_WORKDIR
STORE=$W/store
MNT=$W/mnt
SOCK=$W/sock
pgl_pgdir "$SOCK"
PORT=$(pgl_free_port) || pgl_die "no free port"
export BRANCHFS_STORE=$STORE
bench() {
	local port=$1
	shift
	"$PGBIN/pgbench" -h "$SOCK" -p "$port" -U postgres "$@" postgres
}
q() { pgl_psql "$PORT" "$SOCK" -c "$1"; }

pgl_init "$STORE" || pgl_die "branchfs init"
pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount"
pgl_initdb "$MNT/main/pgdata" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb"
}
pgl_start "$MNT/main/pgdata" "$PORT" "$SOCK" "$W/main.log" || pgl_die "start postgres on main"
bench "$PORT" -i -s "$SCALE" -q >"$W/pgbench-i.log" 2>&1 || {
	tail -n 20 "$W/pgbench-i.log" >&2
	pgl_die "pgbench -i"
}
q "create table levels (level int primary key, branch text)" || pgl_die "create table levels"
q "insert into levels values (0, 'main')"
q checkpoint
bench "$PORT" -n -t "$TX" -c 2 >"$W/pgbench-0.log" 2>&1 || pgl_die "pgbench -t on main"
EXPECT_HIST=$((2 * TX))

prev=main
total_ms=0
for i in $(seq 1 "$DEPTH"); do
	b=b$i
	t0=$(date +%s%N)
	"$BRANCHFS" branch create "$b" --from "$prev" >/dev/null || pgl_die "branch create $b --from $prev"
	ms=$((($(date +%s%N) - t0) / 1000000))
	total_ms=$((total_ms + ms))
	pgl_stop "$MNT/$prev/pgdata" || pgl_die "stop postgres on $prev"
	t0=$(pgl_now)
	pgl_start "$MNT/$b/pgdata" "$PORT" "$SOCK" "$W/$b.log" || pgl_die "pg_ctl start on $b (level $i)"
	n=$(q "select count(*) from levels")
	[ "$n" = "$i" ] || pgl_die "$b: levels holds $n rows, expected $i"
	q "insert into levels values ($i, '$b')"
	bench "$PORT" -n -t "$TX" -c 2 >"$W/pgbench-$i.log" 2>&1 || {
		tail -n 20 "$W/pgbench-$i.log" >&2
		pgl_die "pgbench -t on $b"
	}
	EXPECT_HIST=$((EXPECT_HIST + 2 * TX))
	pgl_log "level $i: branch create $ms ms, ready $(pgl_elapsed "$t0") s after pg_ctl start"
	prev=$b
done
B=b$DEPTH
BD=$MNT/$B/pgdata

check_b10() {
	local what=$1 rows
	rows=$(q "select string_agg(level::text || ':' || branch, ',' order by level) from levels")
	exp=0:main
	for i in $(seq 1 "$DEPTH"); do exp="$exp,$i:b$i"; done
	[ "$rows" = "$exp" ] || pgl_die "$what: levels = $rows, expected $exp"
	[ "$(q 'select count(*) from pgbench_accounts')" = $((SCALE * 100000)) ] || pgl_die "$what: pgbench_accounts row count"
	[ "$(q 'select count(*) from pgbench_tellers')" = $((SCALE * 10)) ] || pgl_die "$what: pgbench_tellers row count"
	[ "$(q 'select count(*) from pgbench_branches')" = "$SCALE" ] || pgl_die "$what: pgbench_branches row count"
	[ "$(q 'select count(*) from pgbench_history')" = "$EXPECT_HIST" ] ||
		pgl_die "$what: pgbench_history holds $(q 'select count(*) from pgbench_history') rows, expected $EXPECT_HIST"
	inv=$(pgl_pgbench_invariant "$PORT" "$SOCK") || pgl_die "$what: pgbench invariant broken: $inv"
}
check_b10 "$B"
pgl_log "$B: levels 0..$DEPTH, $EXPECT_HIST history rows, invariant holds; branch create mean $((total_ms / DEPTH)) ms"

bench "$PORT" -n -T "$SECS" -c 4 -j 2 >"$W/pgbench-deep.log" 2>&1 || {
	tail -n 20 "$W/pgbench-deep.log" >&2
	pgl_die "pgbench -T $SECS on $B"
}
TPS_DEEP=$(pgl_tps <"$W/pgbench-deep.log")
! grep -q '^number of failed transactions: [1-9]' "$W/pgbench-deep.log" || pgl_die "pgbench on $B: failed transactions"
EXPECT_HIST=$((EXPECT_HIST + $(awk '/^number of transactions actually processed:/ { print $6 }' "$W/pgbench-deep.log" | cut -d/ -f1)))
check_b10 "$B after pgbench -T $SECS"
pgl_amcheck "$PORT" "$SOCK" >"$W/amcheck.log" 2>&1 || {
	cat "$W/amcheck.log" >&2
	pgl_die "amcheck on $B"
}
pgl_stop "$BD" || pgl_die "stop $B"

# The same pgbench on main (its own state: level 0 only), for comparison.
pgl_start "$MNT/main/pgdata" "$PORT" "$SOCK" "$W/main.log" || pgl_die "restart main"
[ "$(q 'select count(*) from levels')" = 1 ] || pgl_die "main sees levels of its branches"
bench "$PORT" -n -T "$SECS" -c 4 -j 2 >"$W/pgbench-main.log" 2>&1 || pgl_die "pgbench -T $SECS on main"
TPS_MAIN=$(pgl_tps <"$W/pgbench-main.log")
pgl_stop "$MNT/main/pgdata" || pgl_die "stop main"
pgl_log "TPS: $B $TPS_DEEP, main $TPS_MAIN (ratio $(awk -v a="$TPS_DEEP" -v b="$TPS_MAIN" 'BEGIN { printf "%.2f", a / b }'))"

pgl_log "--- delete the ancestors b1..b$((DEPTH - 1)), gc"
for i in $(seq 1 $((DEPTH - 1))); do
	"$BRANCHFS" branch delete "b$i" >/dev/null || pgl_die "branch delete b$i"
done
"$BRANCHFS" gc >/dev/null || pgl_die "gc"
pgl_umount "$MNT" || pgl_die "umount"
pgl_mount "$STORE" "$MNT" || pgl_die "remount"
pgl_checksums "$BD" >"$W/checksums.log" 2>&1 || {
	cat "$W/checksums.log" >&2
	pgl_die "pg_checksums --check on $B after deleting its ancestors"
}
pgl_start "$BD" "$PORT" "$SOCK" "$W/$B.log" || pgl_die "start $B after deleting its ancestors"
check_b10 "$B after deleting its ancestors"
pgl_stop "$BD" || pgl_die "stop $B"
pgl_checksums "$MNT/main/pgdata" >"$W/checksums.log" 2>&1 || {
	cat "$W/checksums.log" >&2
	pgl_die "pg_checksums --check on main"
}
for f in "$W"/*.log; do
	case $f in */pgbench* | */checksums.log | */initdb.log | */amcheck.log) continue ;; esac
	grep -E 'PANIC|could not (write|fsync|read|open)|invalid page|checksum verification failed' "$f" >&2 &&
		pgl_die "errors in $f"
done
pgl_log "RESULT deep_tps=$TPS_DEEP main_tps=$TPS_MAIN"
pgl_log "PASS"
