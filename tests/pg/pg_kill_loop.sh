#!/usr/bin/env bash
# Daemon-kill loop: PG_KILL_ROUNDS (20) times, kill -9 the branchfs daemon
# at a random moment while, all at once,
#   - pgbench runs on main and on branch `side` (each with its own postgres),
#   - clients commit ids one by one on main (synchronous_commit=on) and
#     record each id the server acknowledged (pgl_ack_client),
#   - a churn loop drives the CLI against the mounted store (control
#     socket): snapshot create, branch create (from the snapshot or from
#     main), a synced 64 KiB write on the new branch, branch reset (every
#     third), snapshot delete, branch delete, logging each command it
#     starts and each that succeeded.
# After each kill: the postgres servers left on the dead mount are killed
# and their shared memory freed (pgl_kill9_postmaster), the stale mount is
# removed with `branchfs umount`, `branchfs check STORE` must exit 0, the
# store is mounted again, and then
#   - every branch and snapshot whose create was acknowledged (and whose
#     delete was not started) exists; none whose delete was acknowledged does;
#     no CLI command failed before the kill,
#   - postgres recovers on every branch: main and side, and any churn branch
#     the kill left behind (started, pgbench invariant checked, stopped, then
#     deleted with the CLI),
#   - every acknowledged id is present on main; pgbench's invariant holds on
#     main and side.
# The run ends with amcheck on main, a clean stop, unmount, `branchfs check`
# and pg_checksums, and prints the figures (kills survived / tried,
# commits acknowledged vs found, branches and snapshots created / deleted).
#
# Knobs: PG_KILL_ROUNDS (20), PG_KILL_SEED (random; printed, reuse it to
# replay the same kill delays), PG_KILL_MIN_MS / PG_KILL_MAX_MS (kill delay
# after the load starts: 500 / 4000), PG_SCALE (pgbench scale, 1).
# Ports 56600-56699.  Exit 0 = pass, 1 = fail, 77 = skip.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

ROUNDS=${PG_KILL_ROUNDS:-20}
SCALE=${PG_SCALE:-1}
SEED=${PG_KILL_SEED:-$(($(date +%s%N) / 1000 % 32768))}
MIN_MS=${PG_KILL_MIN_MS:-500}
MAX_MS=${PG_KILL_MAX_MS:-4000}
RANDOM=$SEED

pgl_workdir pg-kill-loop
W=$PGL_WORKDIR
STORE=$W/store
MNT=$W/mnt
SOCK=$W/sock
pgl_pgdir "$SOCK"
export BRANCHFS_STORE=$STORE
pgl_log "seed $SEED (PG_KILL_SEED=$SEED replays the kill delays), $ROUNDS rounds"

declare -A PORT=()
new_port() { pgl_new_port "$1" 56600 100; }
new_port 'PORT[main]'
new_port 'PORT[side]'

bench() {
	local port=$1
	shift
	"$PGBIN/pgbench" -h "$SOCK" -p "$port" -U postgres "$@" postgres
}
json_names() { perl -MJSON::PP -e 'print "$_->{name}\n" for @{ decode_json(join "", <STDIN>) }'; }
branches() { "$BRANCHFS" branch list --json | json_names; }
snapshots() { "$BRANCHFS" snapshot list --json | json_names; }

# start_pg BRANCH PORT: start (crash recovery) postgres on MNT/BRANCH/pgdata.
start_pg() {
	[ -z "${PGL_WITH_BFS:-}" ] || bfs_pg_register "$MNT/$1/pgdata"
	pgl_start "$MNT/$1/pgdata" "$2" "$SOCK" "$W/pg-$1.log" -c checkpoint_timeout=30s
}

# ---- the churn loop ------------------------------------------------------
# op LOG KIND NAME CMD...: "start KIND NAME" before, "ok KIND NAME" after
# success, "fail KIND NAME RC" after failure.
op() {
	local log=$1 kind=$2 name=$3 rc=0
	shift 3
	echo "start $kind $name" >>"$log"
	"$@" >/dev/null 2>>"$log.err" || rc=$?
	if [ $rc -eq 0 ]; then
		echo "ok $kind $name" >>"$log"
	else
		echo "fail $kind $name $rc" >>"$log"
	fi
}
churn() {
	local r=$1 log=$2 i=0 b s
	set +e
	while :; do
		i=$((i + 1))
		s=k${r}s$i b=k${r}b$i
		op "$log" snapshot-create "$s" "$BRANCHFS" snapshot create main "$s"
		if ((i % 2)); then
			op "$log" branch-create "$b" "$BRANCHFS" branch create "$b" --from "$s"
		else
			op "$log" branch-create "$b" "$BRANCHFS" branch create "$b"
		fi
		op "$log" write "$b" dd if=/dev/urandom of="$MNT/$b/churn.dat" bs=64k count=1 conv=fsync status=none
		((i % 3)) || op "$log" branch-reset "$b" "$BRANCHFS" branch reset "$b"
		op "$log" snapshot-delete "$s" "$BRANCHFS" snapshot delete "$s"
		op "$log" branch-delete "$b" "$BRANCHFS" branch delete "$b"
	done
}

# check_ops LOG KIND(branch|snapshot) EXISTING-NAMES-FILE: compare what the
# CLI acknowledged with what exists after the crash.  Fails on a CLI command
# that failed (the churn loop is stopped before the kill, so a command cut
# by the kill never logs a result), an acknowledged create that is missing
# and an acknowledged delete that is back.
check_ops() {
	local log=$1 kind=$2 have=$3 out
	if grep -q '^fail ' "$log"; then
		grep '^fail ' "$log" >&2
		tail -n 20 "$log.err" >&2
		return 1
	fi
	out=$(awk -v k="$kind" -v have="$have" '
		BEGIN { while ((getline n < have) > 0) exists[n] = 1 }
		$1 == "ok" && $2 == k "-create" { made[$3] = 1 }
		$1 == "start" && $2 == k "-delete" { deleting[$3] = 1 }
		$1 == "ok" && $2 == k "-delete" { gone[$3] = 1 }
		END {
			for (n in gone) if (n in exists) print k, n, "was deleted (acknowledged) but exists"
			for (n in made) if (!(n in deleting) && !(n in exists)) print k, n, "was created (acknowledged) but is missing"
		}' "$log")
	[ -z "$out" ] || {
		echo "$out" >&2
		return 1
	}
}

# ---- set up: main with pgbench tables and the ack table, branch side -----
pgl_init "$STORE" || pgl_die "branchfs init"
pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount"
pgl_initdb "$MNT/main/pgdata" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb"
}
start_pg main "${PORT[main]}" || pgl_die "start postgres on main"
bench "${PORT[main]}" -i -s "$SCALE" -q >"$W/pgbench-i.log" 2>&1 || {
	tail -n 20 "$W/pgbench-i.log" >&2
	pgl_die "pgbench -i"
}
pgl_ack_setup "${PORT[main]}" "$SOCK" || pgl_die "create table acked"
pgl_psql "${PORT[main]}" "$SOCK" -c checkpoint || pgl_die "checkpoint"
"$BRANCHFS" branch create side >/dev/null || pgl_die "branch create side"
start_pg side "${PORT[side]}" || pgl_die "start postgres on side"

kills=0 survived=0 recovered=0 left_b=0 left_s=0 checks=0
acked=0 found=0
b_made=0 b_deleted=0 s_made=0 s_deleted=0 resets=0 writes=0
delays=()

for r in $(seq 1 "$ROUNDS"); do
	ops=$W/ops.$r
	: >"$ops"
	DAEMON=$(pgl_daemon_pid "$STORE") || pgl_die "cannot find the branchfs daemon of $STORE"
	PMS=()
	for b in main side; do
		pm=$(pgl_postmaster_pid "$MNT/$b/pgdata") || pgl_die "round $r: no postmaster on $b"
		PMS+=("$pm")
	done

	# ---- load, then kill -9 at a random moment
	load=()
	bench "${PORT[main]}" -n -c 2 -j 1 -T 600 >"$W/pgbench-main.$r.log" 2>&1 &
	load+=($!)
	bench "${PORT[side]}" -n -c 1 -j 1 -T 600 >"$W/pgbench-side.$r.log" 2>&1 &
	load+=($!)
	for c in 1 2; do
		pgl_ack_client "${PORT[main]}" "$SOCK" "$c" "$r" "$W/ack.$c" "$W/client.$c.err" &
		load+=($!)
	done
	churn "$r" "$ops" &
	CHURN=$!
	PGL_BGPIDS+=("${load[@]}" "$CHURN")
	delay=$((MIN_MS + RANDOM * (MAX_MS - MIN_MS) / 32768))
	delays+=("$delay")
	sleep "$((delay / 1000)).$(printf %03d $((delay % 1000)))"
	for p in "${load[@]}" "$CHURN"; do
		kill -0 "$p" 2>/dev/null && continue
		tail -n 5 "$W"/pgbench-*."$r".log "$W"/client.*.err "$ops.err" >&2 2>/dev/null || true
		pgl_die "round $r: a client or the churn loop stopped before the kill"
	done
	# Stop the churn loop first, so that no CLI command starts after the
	# daemon is gone (it would open the store itself): a command already
	# running stays in flight and is cut by the kill.
	kill -STOP "$CHURN"
	kills=$((kills + 1))
	pgl_log "round $r: kill -9 daemon $DAEMON after ${delay} ms"
	kill -9 "$DAEMON"
	pgl_kill_tree "$CHURN"
	pgl_kill9_daemon "$DAEMON" || pgl_die "round $r: kill -9 of the daemon"
	for p in "${PMS[@]}"; do
		pgl_kill9_postmaster "$p" ||
			pgl_die "round $r: postgres $p on the dead mount not stopped or its shared memory not freed"
	done
	for p in "${load[@]}"; do pgl_kill_tree "$p"; done
	for p in "${load[@]}" "$CHURN"; do { wait "$p"; } 2>/dev/null || true; done

	# ---- clean up, check offline, mount again
	pgl_umount_stale "$MNT" || pgl_die "round $r: stale mount"
	crc=0
	"$BRANCHFS" check "$STORE" >"$W/check.$r.log" 2>&1 || crc=$?
	if [ $crc -ne 0 ]; then
		cat "$W/check.$r.log" >&2
		pgl_die "round $r: branchfs check exited $crc after the kill"
	fi
	checks=$((checks + 1))
	pgl_mount "$STORE" "$MNT" || pgl_die "round $r: mount after the kill"

	# ---- acknowledged CLI commands survived; problems are collected in
	# bad[] so that one round reports all it found
	bad=()
	branches >"$W/branches" || pgl_die "branch list"
	snapshots >"$W/snapshots" || pgl_die "snapshot list"
	check_ops "$ops" branch "$W/branches" || bad+=("branch commands lost or failed")
	check_ops "$ops" snapshot "$W/snapshots" || bad+=("snapshot commands lost or failed")
	b_made=$((b_made + $(grep -c '^ok branch-create ' "$ops" || true)))
	b_deleted=$((b_deleted + $(grep -c '^ok branch-delete ' "$ops" || true)))
	s_made=$((s_made + $(grep -c '^ok snapshot-create ' "$ops" || true)))
	s_deleted=$((s_deleted + $(grep -c '^ok snapshot-delete ' "$ops" || true)))
	resets=$((resets + $(grep -c '^ok branch-reset ' "$ops" || true)))
	writes=$((writes + $(grep -c '^ok write ' "$ops" || true)))
	mapfile -t brs < <(grep -vx -e main -e side "$W/branches" || true)
	mapfile -t snaps <"$W/snapshots"
	for b in main side; do
		grep -qx "$b" "$W/branches" || pgl_die "round $r: branch $b is gone: $(cat "$W/branches")"
	done

	# ---- postgres recovers on every branch; every acknowledged commit is
	# on main
	start_pg main "${PORT[main]}" || pgl_die "round $r: postgres did not recover on main"
	if counts=$(pgl_ack_verify "${PORT[main]}" "$SOCK" "$W" "$W"/ack.*); then
		acked=${counts% *} found=${counts#* }
	else
		bad+=("acknowledged ids missing on main")
	fi
	start_pg side "${PORT[side]}" || pgl_die "round $r: postgres did not recover on side"
	recovered=$((recovered + 2))
	for b in main side; do
		inv=$(pgl_pgbench_invariant "${PORT[$b]}" "$SOCK") || bad+=("pgbench invariant broken on $b: $inv")
	done
	for b in "${brs[@]}"; do
		# a churn branch the kill left behind: it must recover too
		new_port 'PORT[left]'
		start_pg "$b" "${PORT[left]}" || pgl_die "round $r: postgres did not recover on leftover branch $b"
		inv=$(pgl_pgbench_invariant "${PORT[left]}" "$SOCK") || bad+=("pgbench invariant broken on leftover branch $b: $inv")
		pgl_stop "$MNT/$b/pgdata" || pgl_die "round $r: pg_ctl stop on $b"
		"$BRANCHFS" branch delete "$b" >/dev/null || pgl_die "round $r: branch delete $b"
		b_deleted=$((b_deleted + 1)) left_b=$((left_b + 1)) recovered=$((recovered + 1))
	done
	for s in "${snaps[@]}"; do
		[ -f "$MNT/.snapshots/$s/pgdata/PG_VERSION" ] || bad+=("snapshot $s shows no pgdata")
		"$BRANCHFS" snapshot delete "$s" >/dev/null || pgl_die "round $r: snapshot delete $s"
		s_deleted=$((s_deleted + 1)) left_s=$((left_s + 1))
	done
	if [ ${#bad[@]} -ne 0 ]; then
		pgl_die "round $r: $(printf '%s; ' "${bad[@]}")"
	fi
	survived=$((survived + 1))
	pgl_log "round $r: survived; $acked ids acknowledged, all present ($found rows);" \
		"CLI so far: branches +$b_made -$b_deleted, snapshots +$s_made -$s_deleted, $resets resets"
done

pgl_amcheck "${PORT[main]}" "$SOCK" >"$W/amcheck.log" 2>&1 || {
	cat "$W/amcheck.log" >&2
	pgl_die "amcheck on main"
}
declare -A HIST=()
for b in main side; do
	HIST[$b]=$(pgl_psql "${PORT[$b]}" "$SOCK" -c "select count(*) from pgbench_history") || pgl_die "history on $b"
	pgl_stop "$MNT/$b/pgdata" || pgl_die "pg_ctl stop on $b"
done
pgl_umount "$MNT" || pgl_die "branchfs umount"
"$BRANCHFS" check "$STORE" >"$W/check.end.log" 2>&1 || {
	cat "$W/check.end.log" >&2
	pgl_die "branchfs check after the clean unmount"
}
checks=$((checks + 1))
pgl_mount "$STORE" "$MNT" || pgl_die "mount for pg_checksums"
for b in main side; do
	pgl_checksums "$MNT/$b/pgdata" >"$W/checksums.log" 2>&1 || {
		cat "$W/checksums.log" >&2
		pgl_die "pg_checksums --check on $b"
	}
done

dsum=0
for d in "${delays[@]}"; do dsum=$((dsum + d)); done
pgl_log "RESULT kills survived $survived / $kills tried (seed $SEED, kill $((dsum / kills)) ms after the load started on average)"
pgl_log "RESULT commits acknowledged $acked, found $acked of them ($found rows on main)"
pgl_log "RESULT pgbench transactions kept through the kills: main ${HIST[main]}, side ${HIST[side]}"
pgl_log "RESULT postgres crash recoveries $recovered (main and side every round, $left_b leftover churn branches); branchfs check clean $checks / $checks"
pgl_log "RESULT CLI under kills (acknowledged): branches created $b_made, deleted $b_deleted ($left_b of them leftovers of a kill); snapshots created $s_made, deleted $s_deleted ($left_s leftovers); resets $resets; synced 64 KiB writes $writes"
pgl_log "PASS"
