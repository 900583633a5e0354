#!/usr/bin/env bash
# Power cuts: the store loses what was not fsynced, not just the daemon.
#
# The daemon runs with tests/tools/powercut.so preloaded, which journals
# every fsync/fdatasync (with the size it makes durable), every creation,
# rename and unlink, and every directory fsync under the store.  A cut is
# kill -9 of the daemon at a random moment, then `powercut cut` rolls the
# store back to what the disk would hold had the power failed instead:
# unsynced file tails dropped or torn, entries whose directory was not
# fsynced since undone (model: top of tests/tools/powercut.c).  Then:
# `branchfs check` is clean, the store mounts, postgres recovers on main and
# on every branch created so far (each on its own port), every id whose
# commit was acknowledged is on main, every id acknowledged before a branch
# was created is on that branch, and every branch and snapshot whose
# creation was acknowledged exists.
#
# Before the load, two quiet cuts: right after `branchfs init` returned
# (the new store must survive it) and right after a mount.
#
# Load during each round: one client inserting ids one by one
# (synchronous_commit=on; each id is written to a file outside the mount
# only after its commit returned), pgbench -c 2, a client writing bulk rows
# and running CHECKPOINTs, a snapshot and a branch created at random
# moments, and pgbench -c 1 on the postgres of the branch made in the round
# before (so that a branch's server is cut too).  Each cut must drop unsynced data (some cut must
# drop WAL bytes), or the test would prove nothing.
#
# Knobs: PG_POWERCUT_ROUNDS (5), PG_POWERCUT_SEED (random; printed, replay
# with it), PG_POWERCUT_MODE (mixed: per file, drop the unsynced tail or
# keep a random prefix of it; drop; prefix), PG_SCALE (2).
# Exit 0 = pass, 1 = fail, 77 = skip.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

ROUNDS=${PG_POWERCUT_ROUNDS:-5}
SEED=${PG_POWERCUT_SEED:-$((($(date +%s%N) / 1000) % 1000000))}
MODE=${PG_POWERCUT_MODE:-mixed}
SCALE=${PG_SCALE:-2}
TOOLS=${BFS_TOOLS:-$(dirname "${BFS_E2E_BIN:-$PGL_ROOT/build/tests/e2e}")/tools}
PC=$TOOLS/powercut
SHIM=$TOOLS/powercut.so
{ [ -x "$PC" ] && [ -f "$SHIM" ]; } || pgl_die "$PC or $SHIM missing (make test-tools)"
RANDOM=$SEED

pgl_workdir pg-powercut
W=$PGL_WORKDIR
STORE=$W/store
MNT=$W/mnt
SOCK=$W/sock
GRAVE=$W/grave
PGDATA=$MNT/main/pgdata
pgl_pgdir "$SOCK"
export BRANCHFS_STORE=$STORE
pgl_log "seed $SEED, $ROUNDS rounds, mode $MODE (replay: PG_POWERCUT_SEED=$SEED)"

# port_for NAME: a port for main and one per branch, from a range of our
# own, kept in PORTS[NAME] (call it directly, not in $(...))
declare -A PORTS=()
port_for() {
	[ -z "${PORTS[$1]:-}" ] || return 0
	pgl_new_port "PORTS[$1]" 56000 500
}

# shim_begin N: record the store as durable; what runs under shim_env
# from here journals to $JOURNAL (journal.N)
shim_begin() {
	JOURNAL=$W/journal.$1
	rm -rf "$GRAVE" && mkdir "$GRAVE"
	"$PC" begin "$STORE" "$W/baseline" || pgl_die "powercut begin"
}
# shim_env CMD...: run CMD (which may be a function) with the shim preloaded
shim_env() {
	LD_PRELOAD=$SHIM POWERCUT_DIR=$STORE POWERCUT_JOURNAL=$JOURNAL POWERCUT_GRAVE=$GRAVE \
		ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 "$@"
}
mount_shim() {
	shim_begin "$1"
	shim_env pgl_mount "$STORE" "$MNT" || pgl_die "mount ($1)"
}
# kill_daemon: the power cut itself
kill_daemon() {
	local d
	d=$(pgl_daemon_pid "$STORE") || pgl_die "no daemon"
	kill -9 "$d"
	bfs_wait_gone "$d" 30 || pgl_die "daemon $d survived kill -9"
}
# rollback WHAT N: after the cut, remove the dead mount, roll the store
# back from its journal, and require `branchfs check` clean.  Sets DROPPED
# and WAL (bytes dropped in all, and from RocksDB's write-ahead logs).
rollback() {
	local what=$1 n=$2 line
	if pgl_is_mounted "$MNT"; then
		"$BRANCHFS" umount "$MNT" >/dev/null || pgl_die "$what: branchfs umount of the stale mount"
	fi
	cp "$STORE/branchfs.log" "$W/daemon.$n.log" 2>/dev/null || true
	"$PC" cut -v -m "$MODE" -s "$((SEED * 100000 + RANDOM))" "$STORE" "$W/baseline" "$JOURNAL" "$GRAVE" \
		>"$W/cut.$n" 2>&1 || {
		cat "$W/cut.$n" >&2
		pgl_die "$what: powercut cut failed"
	}
	sed 's/^/    /' "$W/cut.$n" | grep -v '^    powercut:' >&2
	line=$(grep '^powercut:' "$W/cut.$n")
	DROPPED=$(sed -n 's/.* dropped=\([0-9]*\).*/\1/p' <<<"$line")
	WAL=$(sed -n 's/.* wal=\([0-9]*\).*/\1/p' <<<"$line")
	"$BRANCHFS" check "$STORE" >"$W/check.$n" 2>&1 || {
		cat "$W/check.$n" >&2
		pgl_die "$what: branchfs check is not clean after the cut"
	}
	pgl_log "$what: branchfs check: $(tr '\n' ' ' <"$W/check.$n")"
}

# check_ids ACKFILE PORT WHAT: every id in ACKFILE is in table acked
check_ids() {
	local ack=$1 port=$2 what=$3 missing
	LC_ALL=C sort "$ack" >"$W/want"
	pgl_psql "$port" "$SOCK" -c "select id from acked" >"$W/have.raw" ||
		pgl_die "$what: cannot read table acked"
	LC_ALL=C sort "$W/have.raw" >"$W/have"
	missing=$(LC_ALL=C comm -23 "$W/want" "$W/have" | wc -l)
	if [ "$missing" -ne 0 ]; then
		LC_ALL=C comm -23 "$W/want" "$W/have" | head -n 20 >&2
		pgl_die "$what: $missing of $(wc -l <"$W/want") acknowledged ids are missing"
	fi
	FOUND=$(LC_ALL=C comm -12 "$W/want" "$W/have" | wc -l)
}

# A cut right after `branchfs init` returned: the store must be there.
mkdir -m 700 "$STORE"
STORE=$(realpath "$STORE")
shim_begin init
shim_env pgl_init "$STORE" || pgl_die "branchfs init"
rollback "cut right after init" init
"$BRANCHFS" stats "$STORE" >/dev/null || pgl_die "the store does not open after a cut right after init"
pgl_log "cut right after init: dropped $DROPPED bytes; the store opens and checks clean"
# A cut right after mount returned (RocksDB has just recovered, flushed
# and replaced its MANIFEST; nothing written since).
mount_shim mount
kill_daemon
rollback "cut right after mount" mount
pgl_log "cut right after mount: dropped $DROPPED bytes; check clean"
QUIET=2 # the two cuts above
mount_shim 0
pgl_initdb "$PGDATA" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb"
}
port_for main
PORT=${PORTS[main]}
pgl_start "$PGDATA" "$PORT" "$SOCK" "$W/main.log" || pgl_die "start postgres"
pgl_psql "$PORT" "$SOCK" -c "create table acked (id bigserial primary key, pad text not null);
	create table churn (g int, pad text)" ||
	pgl_die "create table"
"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$W/pgbench-i.log" 2>&1 || {
	tail "$W/pgbench-i.log" >&2
	pgl_die "pgbench -i"
}
: >"$W/ack"

# one psql session fed endless single-row inserts; the id is printed (and
# line-buffered into the file) only once the commit has returned
inserter() {
	set +e
	seq 1 100000000 |
		awk '{ printf "insert into acked (pad) values (repeat(md5(%d::text), 4)) returning id;\n", $1 }' |
		stdbuf -oL "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres \
			-f - >>"$W/ack" 2>>"$W/inserter.err"
}
# bulk writes and CHECKPOINTs, so that data files (written without fsync
# until the checkpoint syncs them) and RocksDB flushes are in flight too
churn() {
	set +e
	while :; do
		"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres -c "
			insert into churn select g, repeat('y', 300) from generate_series(1, 20000) g;
			delete from churn where g % 3 = 0;" -c "checkpoint" >/dev/null 2>>"$W/churn.err" || break
	done
}
# a snapshot, then a branch, each at a random moment; each name is recorded
# as acknowledged only after its command returned 0, and the ids
# acknowledged before the branch was made must be on it
creator() {
	local r=$1
	set +e
	sleep "$2"
	"$BRANCHFS" snapshot create main "s$r" >>"$W/creator.log" 2>&1 && echo "s$r" >>"$W/snaps.ok"
	sleep "$3"
	cp "$W/ack" "$W/pre.b$r"
	"$BRANCHFS" branch create "b$r" >>"$W/creator.log" 2>&1 && echo "b$r" >>"$W/branches.ok"
}
: >"$W/snaps.ok"
: >"$W/branches.ok"

survived=0 wal_cuts=0
LIVE= # the newest branch: its postgres stays up, under pgbench, into the next cut
figures=()
for r in $(seq 1 "$ROUNDS"); do
	secs=$((2 + RANDOM % 6)).$((RANDOM % 10))
	s1=0.$((RANDOM % 10)) s2=$((RANDOM % 3)).$((RANDOM % 10))
	acks0=$(wc -l <"$W/ack")
	pgl_log "round $r: load for ${secs}s, snapshot s$r after ${s1}s, branch b$r ${s2}s later"
	PM=$(pgl_postmaster_pid "$PGDATA") || pgl_die "no postmaster"
	pids=()
	inserter &
	pids+=($!)
	"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -n -c 2 -T 600 postgres >"$W/pgbench.$r.log" 2>&1 &
	pids+=($!)
	creator "$r" "$s1" "$s2" &
	pids+=($!)
	churn &
	pids+=($!)
	if [ -n "$LIVE" ]; then
		LIVE_PM=$(pgl_postmaster_pid "$MNT/$LIVE/pgdata") || pgl_die "no postmaster on $LIVE"
		"$PGBIN/pgbench" -h "$SOCK" -p "${PORTS[$LIVE]}" -U postgres -n -c 1 -T 600 postgres \
			>"$W/pgbench-$LIVE.$r.log" 2>&1 &
		pids+=($!)
	fi
	PGL_BGPIDS+=("${pids[@]}")
	sleep "$secs"
	kill -0 "${pids[0]}" 2>/dev/null || {
		cat "$W/inserter.err" >&2
		pgl_die "round $r: the inserter died before the cut"
	}
	kill -0 "${pids[1]}" 2>/dev/null || {
		cat "$W/pgbench.$r.log" >&2
		pgl_die "round $r: pgbench on main died before the cut"
	}
	if [ -n "$LIVE" ] && ! kill -0 "${pids[4]}" 2>/dev/null; then
		cat "$W/pgbench-$LIVE.$r.log" >&2
		pgl_die "round $r: pgbench on $LIVE died before the cut"
	fi

	# ---- the cut
	# The creator goes first: a `branchfs snapshot/branch create` that
	# finds no daemon on ctl.sock opens the store itself, without the
	# shim, and RocksDB's recovery would then flush, write a new MANIFEST
	# and delete old WAL files after the "power cut", behind the journal's
	# back (seen once: the cut could not bring back a durable WAL).  A
	# command in flight through the daemon is killed unacknowledged.
	pgl_kill_tree "${pids[2]}"
	kill_daemon
	pgl_kill9_postmaster "$PM"
	[ -z "$LIVE" ] || pgl_kill9_postmaster "$LIVE_PM"
	for p in "${pids[@]}"; do
		pgl_kill_tree "$p"
		wait "$p" 2>/dev/null || true
	done
	acked=$(wc -l <"$W/ack")
	if grep -vqE '^[0-9]+$' "$W/ack"; then
		grep -vnE '^[0-9]+$' "$W/ack" | head >&2
		pgl_die "round $r: garbage in the ack file"
	fi
	rollback "round $r" "$r"
	dropped=$DROPPED wal=$WAL
	[ "$wal" -gt 0 ] && wal_cuts=$((wal_cuts + 1))

	# ---- after the cut
	mount_shim "$r"
	t=$(pgl_now)
	pgl_start "$PGDATA" "$PORT" "$SOCK" "$W/main.log" || pgl_die "round $r: postgres did not recover on main"
	rec=$(pgl_elapsed "$t")
	check_ids "$W/ack" "$PORT" "round $r, main"
	found=$FOUND
	inv=$(pgl_pgbench_invariant "$PORT" "$SOCK") || pgl_die "round $r: pgbench invariant broken on main: $inv"

	while read -r s; do
		[ -d "$MNT/.snapshots/$s" ] || pgl_die "round $r: acknowledged snapshot $s is gone"
	done <"$W/snaps.ok"
	nb=0 live_note=${LIVE:+, $LIVE under pgbench at the cut}
	LIVE=$(tail -n 1 "$W/branches.ok")
	while read -r b; do
		[ -d "$MNT/$b" ] || pgl_die "round $r: acknowledged branch $b is gone"
		port_for "$b"
		bport=${PORTS[$b]}
		pgl_start "$MNT/$b/pgdata" "$bport" "$SOCK" "$W/$b.log" ||
			pgl_die "round $r: postgres did not recover on branch $b"
		check_ids "$W/pre.$b" "$bport" "round $r, branch $b"
		pgl_pgbench_invariant "$bport" "$SOCK" >/dev/null || pgl_die "round $r: pgbench invariant broken on $b"
		[ "$b" = "$LIVE" ] || pgl_stop "$MNT/$b/pgdata" || pgl_die "round $r: pg_ctl stop on $b"
		nb=$((nb + 1))
	done <"$W/branches.ok"
	survived=$((survived + 1))
	fig="cut $r after ${secs}s: dropped $dropped bytes (WAL $wal); $((acked - acks0)) commits acknowledged this round, all $found of $acked present on main; main recovered in ${rec}s; $nb branches recovered$live_note"
	figures+=("$fig")
	pgl_log "$fig"
done

pgl_log "--- amcheck on main and the last branch, pg_checksums"
pgl_amcheck "$PORT" "$SOCK" >"$W/amcheck.log" 2>&1 || {
	cat "$W/amcheck.log" >&2
	pgl_die "amcheck on main"
}
pgl_stop "$PGDATA" || pgl_die "pg_ctl stop on main"
pgl_checksums "$PGDATA" >/dev/null || pgl_die "pg_checksums on main"
last=$LIVE
if [ -n "$last" ]; then
	bport=${PORTS[$last]}
	pgl_amcheck "$bport" "$SOCK" >"$W/amcheck-$last.log" 2>&1 || {
		cat "$W/amcheck-$last.log" >&2
		pgl_die "amcheck on $last"
	}
	pgl_stop "$MNT/$last/pgdata" || pgl_die "pg_ctl stop on $last"
fi

pgl_log "=== figures (seed $SEED, mode $MODE)"
for f in "${figures[@]}"; do pgl_log "  $f"; done
pgl_log "  power cuts survived: $((QUIET + survived)) of $((QUIET + ROUNDS)) ($QUIET right after init/mount, $survived under load)"
pgl_log "  acknowledged commits: $(wc -l <"$W/ack"), all present on main"
pgl_log "  snapshots acknowledged: $(wc -l <"$W/snaps.ok"), branches acknowledged: $(wc -l <"$W/branches.ok"), all present"
pgl_log "  cuts that dropped unsynced WAL bytes: $wal_cuts of $ROUNDS"
[ "$wal_cuts" -gt 0 ] || pgl_die "no cut dropped any unsynced WAL bytes: the simulation proved nothing"
pgl_log "PASS"
