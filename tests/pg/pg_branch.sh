#!/usr/bin/env bash
# Branch a running PostgreSQL under pgbench and start a second server on the
# branch with `pg_ctl start` alone:
#   initdb --data-checksums on MNT/main/pgdata, pgbench -i -s 10, then
#   `pgbench -T 20 -c 4` in the background; while it runs:
#   - `branchfs branch create br` (timed), the inherited postmaster.pid is
#     hidden on the branch (a snapshot still shows it), `pg_ctl start` on
#     MNT/br/pgdata on another port; time from branch create to pg_isready;
#     it recovers, pgbench's invariant holds, amcheck is clean;
#   - `branchfs snapshot create main ck --checkpoint URL`: the snapshot's
#     control file shows a checkpoint taken just before; a branch of it
#     starts too; a --checkpoint that cannot connect makes no snapshot.
#   Then pgbench -T 5 on br leaves main untouched (digest of every table),
#   and writes on main never reach br.  Both stopped, unmounted, remounted:
#   pg_checksums --check clean on main, br and the checkpointed branch.
#   Also: the CLI warns when a PGDATA's pg_wal is a symlink.
# Exit 0 = pass, 1 = fail, 77 = skip.  Knobs: PG_SCALE (10), PG_SECS (20).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

SCALE=${PG_SCALE:-10}
SECS=${PG_SECS:-20}

pgl_workdir pg-branch
W=$PGL_WORKDIR
STORE=$W/store
MNT=$W/mnt
SOCK=$W/sock
PGDATA=$MNT/main/pgdata
pgl_pgdir "$SOCK"
pgl_new_port PORT 54000 1000
pgl_new_port PORT2 54000 1000
pgl_new_port PORT3 54000 1000
export BRANCHFS_STORE=$STORE
URL="host=$SOCK port=$PORT user=postgres dbname=postgres"
now_ns() { date +%s%N; }

# start_nowait PGDATA PORT LOG: pg_ctl start without waiting (as a user
# would), registered for cleanup like pgl_start; prints nothing.
start_nowait() {
	local pgdata=$1 port=$2 log=$3
	touch "$log" && chown "$PG_OSUSER:" "$log"
	PGL_LOGS+=("$log")
	[ -z "${PGL_WITH_BFS:-}" ] || bfs_pg_register "$pgdata"
	pgl_as_pg "$PGBIN/pg_ctl" -D "$pgdata" -l "$log" -W \
		-o "-p $port -k $SOCK ${PGL_SETTINGS[*]}" start >/dev/null
}
# wait_ready PORT PGDATA SECONDS: poll pg_isready every 10 ms
wait_ready() {
	local end=$(($(date +%s) + $3)) pid
	until "$PGBIN/pg_isready" -q -h "$SOCK" -p "$1" -U postgres -d postgres -t 1; do
		[ "$(date +%s)" -lt "$end" ] || return 1
		sleep 0.01
	done
	pid=$(head -n 1 "$2/postmaster.pid")
	PGL_POSTMASTERS+=("$pid:$2")
}
bench() {
	local port=$1
	shift
	"$PGBIN/pgbench" -h "$SOCK" -p "$port" -U postgres "$@" postgres
}
hist() { pgl_psql "$1" "$SOCK" -c "select count(*) from pgbench_history"; }

pgl_init "$STORE" || pgl_die "branchfs init"
pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount"
pgl_initdb "$PGDATA" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb --data-checksums"
}
pgl_start "$PGDATA" "$PORT" "$SOCK" "$W/main.log" || pgl_die "start postgres on main"
t=$(pgl_now)
bench "$PORT" -i -s "$SCALE" -q >"$W/pgbench-i.log" 2>&1 || {
	tail -n 20 "$W/pgbench-i.log" >&2
	pgl_die "pgbench -i -s $SCALE"
}
pgl_log "pgbench -i -s $SCALE: $(pgl_elapsed "$t") s"
# As on any server that has run a while: a checkpoint since the load, so
# that the branch's crash recovery replays the last seconds, not the load.
pgl_psql "$PORT" "$SOCK" -c checkpoint || pgl_die "checkpoint after pgbench -i"

bench "$PORT" -T "$SECS" -c 4 -j 2 >"$W/pgbench-main.log" 2>&1 &
BENCH=$!
PGL_BGPIDS+=("$BENCH")
sleep 5
kill -0 "$BENCH" 2>/dev/null || {
	cat "$W/pgbench-main.log" >&2
	pgl_die "pgbench on main stopped early"
}

pgl_log "--- branch br while pgbench runs on main"
t0=$(now_ns)
out=$("$BRANCHFS" branch create br --json) || pgl_die "branch create br under pgbench"
t1=$(now_ns)
BR_MS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
pgl_log "branch create: $BR_MS ms end to end ($out)"
BRDATA=$MNT/br/pgdata
[ -d "$BRDATA" ] || pgl_die "$BRDATA missing"
[ -e "$PGDATA/postmaster.pid" ] || pgl_die "main lost its postmaster.pid"
[ -e "$BRDATA/postmaster.pid" ] && pgl_die "br shows the inherited postmaster.pid: $(head -n 1 "$BRDATA/postmaster.pid")"
find "$BRDATA" -mindepth 1 -maxdepth 1 -name postmaster.pid | grep -q . && pgl_die "readdir of br/pgdata lists the inherited postmaster.pid"
start_nowait "$BRDATA" "$PORT2" "$W/br.log" || {
	tail -n 20 "$W/br.log" >&2
	pgl_die "pg_ctl start on the branch (no manual deletion of postmaster.pid)"
}
wait_ready "$PORT2" "$BRDATA" 120 || {
	tail -n 20 "$W/br.log" >&2
	pgl_die "postgres on the branch not ready after 120 s"
}
t2=$(now_ns)
READY_MS=$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.0f", (b - a) / 1e6 }')
pgl_log "branch create -> pg_isready on br: $READY_MS ms"
grep -q 'database system was interrupted\|not properly shut down\|redo starts' "$W/br.log" ||
	pgl_log "note: no crash recovery message in br.log"
grep -E 'was interrupted|redo (starts|done)|checkpoint (starting|complete)|ready to accept' "$W/br.log" |
	sed 's/^/    br.log: /' >&2 || true
[ "$(head -n 1 "$PGDATA/postmaster.pid")" != "$(head -n 1 "$BRDATA/postmaster.pid")" ] ||
	pgl_die "main and br show the same postmaster.pid"
pgl_postmaster_pid "$PGDATA" >/dev/null || pgl_die "main's postmaster died when br started"

inv=$(pgl_pgbench_invariant "$PORT2" "$SOCK") || pgl_die "pgbench invariant broken on br: $inv"
H_BR=$(hist "$PORT2")
pgl_log "br: invariant holds ($inv), $H_BR transactions in history"
[ "$H_BR" -gt 0 ] || pgl_die "br has no pgbench transactions: was it branched before pgbench ran?"
[ "$(pgl_psql "$PORT2" "$SOCK" -c 'select count(*) from pgbench_accounts')" = $((SCALE * 100000)) ] ||
	pgl_die "br: pgbench_accounts does not hold $((SCALE * 100000)) rows"
t=$(pgl_now)
pgl_amcheck "$PORT2" "$SOCK" >"$W/amcheck-br.log" 2>&1 || {
	cat "$W/amcheck-br.log" >&2
	pgl_die "amcheck on br"
}
pgl_log "amcheck on br clean ($(pgl_elapsed "$t") s)"

pgl_log "--- snapshot with --checkpoint while pgbench runs"
kill -0 "$BENCH" 2>/dev/null || pgl_log "note: main's pgbench already finished"
if err=$("$BRANCHFS" snapshot create main nock --checkpoint "host=$SOCK port=1 user=postgres dbname=postgres" 2>&1); then
	pgl_die "snapshot create --checkpoint with a URL nobody listens on succeeded"
fi
pgl_log "--checkpoint to a dead server: $(tail -n 1 <<<"$err")"
[ -e "$MNT/.snapshots/nock" ] && pgl_die "a failed --checkpoint still made a snapshot"
tck=$(date +%s)
t0=$(now_ns)
"$BRANCHFS" snapshot create main ck --checkpoint "$URL" || pgl_die "snapshot create --checkpoint"
CK_MS=$((($(now_ns) - t0) / 1000000))
pgl_log "snapshot create --checkpoint: $CK_MS ms (CHECKPOINT included)"
ctl=$(LC_ALL=C "$PGBIN/pg_controldata" "$MNT/.snapshots/ck/pgdata") || pgl_die "pg_controldata on the snapshot"
cktime=$(date -d "$(sed -n 's/^Time of latest checkpoint: *//p' <<<"$ctl")" +%s) || pgl_die "no checkpoint time in: $ctl"
[ "$cktime" -ge $((tck - 1)) ] || pgl_die "snapshot ck: latest checkpoint at $cktime, before the command ($tck)"
[ -e "$MNT/.snapshots/ck/pgdata/postmaster.pid" ] || pgl_die "the snapshot does not show postmaster.pid (snapshots must show it unchanged)"
"$BRANCHFS" branch create ck1 --from ck >/dev/null || pgl_die "branch create ck1 --from ck"
"$BRANCHFS" branch create ck2 --checkpoint "$URL" >/dev/null || pgl_die "branch create --checkpoint"
ctl=$(LC_ALL=C "$PGBIN/pg_controldata" "$MNT/ck2/pgdata") || pgl_die "pg_controldata on ck2"
cktime=$(date -d "$(sed -n 's/^Time of latest checkpoint: *//p' <<<"$ctl")" +%s)
[ "$cktime" -ge $((tck - 1)) ] || pgl_die "branch ck2: latest checkpoint before the command"
"$BRANCHFS" branch delete ck2 >/dev/null || pgl_die "branch delete ck2"

pgl_log "--- wait for main's pgbench"
wait "$BENCH" || {
	tail -n 20 "$W/pgbench-main.log" >&2
	pgl_die "pgbench on main failed"
}
pgl_log "main pgbench: tps $(pgl_tps <"$W/pgbench-main.log")"
! grep -q '^number of failed transactions: [1-9]' "$W/pgbench-main.log" || pgl_die "pgbench on main: failed transactions"
inv=$(pgl_pgbench_invariant "$PORT" "$SOCK") || pgl_die "pgbench invariant broken on main: $inv"
MAIN1=$(pgl_pgbench_digest "$PORT" "$SOCK") || pgl_die "digest of main"
H_MAIN=$(hist "$PORT")
[ "$H_MAIN" -gt "$H_BR" ] || pgl_die "main has $H_MAIN transactions, no more than br's $H_BR: pgbench on main stalled?"
[ "$(hist "$PORT2")" = "$H_BR" ] || pgl_die "main's pgbench reached br: $H_BR -> $(hist "$PORT2")"

pgl_log "--- write on br: main unaffected"
# -n: no initial vacuum, which would TRUNCATE pgbench_history and so break
# the invariant for rows inherited from main
bench "$PORT2" -n -T 5 -c 2 -j 2 >"$W/pgbench-br.log" 2>&1 || {
	tail -n 20 "$W/pgbench-br.log" >&2
	pgl_die "pgbench on br"
}
pgl_log "br pgbench: tps $(pgl_tps <"$W/pgbench-br.log")"
inv=$(pgl_pgbench_invariant "$PORT2" "$SOCK") || pgl_die "pgbench invariant broken on br after its pgbench: $inv"
[ "$(hist "$PORT2")" -gt "$H_BR" ] || pgl_die "pgbench on br added no history rows"
MAIN2=$(pgl_pgbench_digest "$PORT" "$SOCK")
[ "$MAIN1" = "$MAIN2" ] || {
	diff <(echo "$MAIN1") <(echo "$MAIN2") >&2 || true
	pgl_die "writes on br changed main"
}
BR1=$(pgl_pgbench_digest "$PORT2" "$SOCK")
pgl_psql "$PORT" "$SOCK" -c "create table only_main as select 1 as x"
pgl_psql "$PORT2" "$SOCK" -c "select to_regclass('only_main') is null" | grep -qx t || pgl_die "a table created on main appears on br"
[ "$(pgl_pgbench_digest "$PORT2" "$SOCK")" = "$BR1" ] || pgl_die "writes on main changed br"

pgl_log "--- the checkpointed snapshot's branch starts"
start_nowait "$MNT/ck1/pgdata" "$PORT3" "$W/ck1.log" || pgl_die "pg_ctl start on ck1"
t0=$(now_ns)
wait_ready "$PORT3" "$MNT/ck1/pgdata" 120 || {
	tail -n 20 "$W/ck1.log" >&2
	pgl_die "postgres on ck1 not ready"
}
pgl_log "ck1 (from the --checkpoint snapshot) ready $((($(now_ns) - t0) / 1000000)) ms after pg_ctl start"
inv=$(pgl_pgbench_invariant "$PORT3" "$SOCK") || pgl_die "pgbench invariant broken on ck1: $inv"
pgl_stop "$MNT/ck1/pgdata" || pgl_die "stop ck1"

pgl_log "--- warning for a pg_wal symlink that leaves the branch"
mkdir -p "$MNT/main/walout"
echo 15 >"$MNT/main/walout/PG_VERSION"
ln -s /nonexistent/elsewhere/pg_wal "$MNT/main/walout/pg_wal"
err=$("$BRANCHFS" snapshot create main wal-warn 2>&1 >/dev/null) || pgl_log "snapshot with an outside pg_wal refused: $err"
grep -qi 'warn.*pg_wal\|pg_wal.*symlink' <<<"$err" || pgl_die "no warning about walout/pg_wal being a symlink: '$err'"
rm -r "$MNT/main/walout"

pgl_log "--- stop both, remount, pg_checksums"
pgl_stop "$BRDATA" || pgl_die "stop br"
pgl_stop "$PGDATA" || pgl_die "stop main"
pgl_umount "$MNT" || pgl_die "branchfs umount"
pgl_mount "$STORE" "$MNT" || pgl_die "remount"
for d in "$PGDATA" "$BRDATA" "$MNT/ck1/pgdata"; do
	pgl_checksums "$d" >"$W/checksums.log" 2>&1 || {
		cat "$W/checksums.log" >&2
		pgl_die "pg_checksums --check on $d"
	}
done
pgl_log "pg_checksums clean on main, br and ck1"
for f in "$W/main.log" "$W/br.log" "$W/ck1.log"; do
	grep -E 'PANIC|could not (write|fsync|read|open)|invalid page|checksum verification failed' "$f" >&2 &&
		pgl_die "errors in $f"
done
pgl_log "RESULT branch_create_ms=$BR_MS branch_to_ready_ms=$READY_MS checkpoint_snapshot_ms=$CK_MS"
pgl_log "PASS"
