#!/usr/bin/env bash
# Crash safety: kill -9 the branchfs daemon while clients commit rows one by
# one (synchronous_commit=on, autocommit), each recording every id the server
# acknowledged, only after its commit returned, to a file on the host disk.
# Then kill -9 the orphaned postmaster, `branchfs umount` the stale mount,
# mount again, start postgres (crash recovery), and require every
# acknowledged id to be present.  A churn client writes bulk data and runs
# CHECKPOINTs meanwhile so that data files, not only WAL, are in flight.
# Repeated PG_CRASH_ROUNDS times (2) on the same store; ends with amcheck and
# pg_checksums.  Exit 0 = pass, 1 = fail, 77 = skip.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# The e2e harness's lib (work dir, mount cleanup) when present; pg-lib.sh
# adds postgres on top and works without it.
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

ROUNDS=${PG_CRASH_ROUNDS:-2}
CLIENTS=${PG_CRASH_CLIENTS:-3}
MIN_SECS=${PG_CRASH_SECS:-4}   # run at least this long before the kill
MIN_ACKS=${PG_CRASH_ACKS:-300} # and until this many commits were acknowledged

pgl_workdir pg-crash
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
pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" || pgl_die "start postgres"
pgl_ack_setup "$PORT" "$SOCK" || pgl_die "create table acked"
pgl_psql "$PORT" "$SOCK" -c "create table churn (g int, pad text)" || pgl_die "create table churn"

churn() {
	set +e
	while :; do
		"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres -c "
			insert into churn select g, repeat('y', 300) from generate_series(1, 20000) g;
			delete from churn where g % 3 = 0;" -c "checkpoint" >/dev/null 2>>"$W/churn.err" || break
	done
}

# Acknowledged ids so far.  The clients create their files when they start,
# which may be after the first count: with none yet, `cat ack.*` failed, and
# pipefail with set -e ended the test at once without a word (seen in CI).
acks() {
	local f n=0
	for f in "$W"/ack.*; do
		[ -f "$f" ] || continue
		n=$((n + $(wc -l <"$f")))
	done
	echo "$n"
}

for round in $(seq 1 "$ROUNDS"); do
	pgl_log "round $round: $CLIENTS committing clients + churn"
	DAEMON=$(pgl_daemon_pid "$STORE") || pgl_die "cannot find the branchfs daemon of $STORE"
	PM=$(pgl_postmaster_pid "$PGDATA") || pgl_die "no postmaster pid"
	pids=()
	for c in $(seq 1 "$CLIENTS"); do
		pgl_ack_client "$PORT" "$SOCK" "$c" "$round" "$W/ack.$c" "$W/client.$c.err" &
		pids+=($!)
	done
	churn &
	pids+=($!)
	PGL_BGPIDS+=("${pids[@]}")

	t0=$(date +%s)
	start_acks=$(acks)
	while :; do
		sleep 0.5
		n=$(($(acks) - start_acks))
		el=$(($(date +%s) - t0))
		[ "$el" -ge "$MIN_SECS" ] && [ "$n" -ge "$MIN_ACKS" ] && break
		if [ "$el" -ge 120 ]; then
			cat "$W"/client.*.err >&2 || true
			pgl_die "only $n commits acknowledged in ${el}s"
		fi
		for p in "${pids[@]}"; do
			kill -0 "$p" 2>/dev/null || {
				cat "$W"/client.*.err "$W/churn.err" >&2 || true
				pgl_die "a client died before the crash"
			}
		done
	done
	pgl_log "round $round: $n commits acknowledged in ${el}s; kill -9 daemon $DAEMON"
	pgl_kill9_daemon "$DAEMON" || pgl_die "kill -9 of the daemon"
	pgl_kill9_postmaster "$PM" || pgl_die "postgres on the dead mount not stopped or its shared memory not freed"
	for p in "${pids[@]}"; do
		for i in $(seq 1 100); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		pgl_kill_tree "$p"
		wait "$p" 2>/dev/null || true
	done

	# The mount is now stale ("Transport endpoint is not connected").
	ls "$MNT" >/dev/null 2>&1 && pgl_log "note: $MNT still answers after the daemon died"
	pgl_umount_stale "$MNT" || pgl_die "stale mount"
	pgl_mount "$STORE" "$MNT" || pgl_die "mount after the crash"

	t=$(pgl_now)
	pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" || pgl_die "postgres did not recover"
	pgl_log "round $round: postgres recovered in $(pgl_elapsed "$t") s"

	counts=$(pgl_ack_verify "$PORT" "$SOCK" "$W" "$W"/ack.*) ||
		pgl_die "round $round: acknowledged ids missing after recovery"
	pgl_log "round $round: all ${counts% *} acknowledged ids present (${counts#* } rows)"
done

pgl_amcheck "$PORT" "$SOCK" || pgl_die "amcheck after crash recovery"
pgl_stop "$PGDATA" || pgl_die "pg_ctl stop"
pgl_checksums "$PGDATA" || pgl_die "pg_checksums --check"
pgl_log "PASS"
