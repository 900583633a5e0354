#!/usr/bin/env bash
# Crash under pgbench: kill -9 the branchfs daemon while `pgbench -c 4` runs,
# kill -9 the orphaned postmaster, `branchfs umount` the stale mount, mount
# again, start postgres (crash recovery), then require pgbench's invariant
# (sum of abalance = bbalance = tbalance = sum of delta in pgbench_history:
# each transaction is all there or not at all), amcheck clean, and
# pg_checksums clean after a clean stop.
# Exit 0 = pass, 1 = fail, 77 = skip.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# The e2e harness's lib (work dir, mount cleanup) when present; pg-lib.sh
# adds postgres on top and works without it.
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

SCALE=${PG_SCALE:-5}
SECS=${PG_CRASH_SECS:-8}

pgl_workdir pg-crash-pgbench
W=$PGL_WORKDIR
STORE=$W/store
MNT=$W/mnt
SOCK=$W/sock
PGDATA=$MNT/main/pgdata
PGLOG=$W/postgres.log
pgl_pgdir "$SOCK"
PORT=$(pgl_free_port) || pgl_die "no free port"

pgl_init "$STORE" || pgl_die "branchfs init"
pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount"
pgl_initdb "$PGDATA" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb"
}
pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" -c checkpoint_timeout=30s || pgl_die "start postgres"
"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$W/pgbench-i.log" 2>&1 ||
	pgl_die "pgbench -i"

DAEMON=$(pgl_daemon_pid "$STORE") || pgl_die "cannot find the branchfs daemon of $STORE"
PM=$(pgl_postmaster_pid "$PGDATA") || pgl_die "no postmaster pid"

"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -c 4 -j 2 -T 600 postgres >"$W/pgbench.log" 2>&1 &
BENCH=$!
PGL_BGPIDS+=("$BENCH")
sleep "$SECS"
# A checkpoint in flight makes the kill land on data-file writes too.
"$PGBIN/psql" -X -q -h "$SOCK" -p "$PORT" -U postgres -d postgres -c checkpoint >/dev/null 2>&1 &
PGL_BGPIDS+=($!)
sleep 0.3
kill -0 "$BENCH" 2>/dev/null || {
	cat "$W/pgbench.log" >&2
	pgl_die "pgbench stopped before the crash"
}
pgl_log "kill -9 daemon $DAEMON under pgbench"
pgl_kill9_daemon "$DAEMON" || pgl_die "kill -9 of the daemon"
pgl_kill9_postmaster "$PM" || pgl_die "postgres on the dead mount not stopped or its shared memory not freed"
for i in $(seq 1 100); do
	kill -0 "$BENCH" 2>/dev/null || break
	sleep 0.1
done
pgl_kill_tree "$BENCH"
wait "$BENCH" 2>/dev/null || true

pgl_umount_stale "$MNT" || pgl_die "stale mount"
pgl_mount "$STORE" "$MNT" || pgl_die "mount after the crash"
t=$(pgl_now)
pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" || pgl_die "postgres did not recover"
pgl_log "postgres recovered in $(pgl_elapsed "$t") s"

inv=$(pgl_pgbench_invariant "$PORT" "$SOCK") || pgl_die "pgbench invariant broken after recovery: $inv"
hist=$(pgl_psql "$PORT" "$SOCK" -c "select count(*) from pgbench_history")
pgl_log "invariant holds (abalance|bbalance|tbalance|delta = $inv), $hist transactions survived"
[ "$hist" -gt 0 ] || pgl_die "no pgbench transaction survived"
pgl_amcheck "$PORT" "$SOCK" || pgl_die "amcheck after crash recovery"
pgl_stop "$PGDATA" || pgl_die "pg_ctl stop"
pgl_checksums "$PGDATA" || pgl_die "pg_checksums --check"
pgl_log "PASS"
