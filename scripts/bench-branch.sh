#!/usr/bin/env bash
# scripts/bench-branch.sh - branching figures of branchfs (issue 3, "Figures to
# report"), side by side in one run, for PGDATA of about 1 GB and 10 GB
# (pgbench scales 70 and 700).  Run by `make bench` after scripts/bench.sh.
#
# For each scale S, on a fresh branchfs store + mount:
#   initdb on MNT/main/pgdata, start, pgbench -i -s S into database "bench" (timed);
#   20 x `branchfs branch create bN` while `pgbench -c 4 -j 2` runs against main:
#     wall clock of the whole command (fork/exec to exit, from the shell),
#     the CLI's own figure (--json "ms") and the in-store time ("store_ms");
#     median and max; then `branch delete` of each (median, max);
#     the same 20 creates once more with postgres idle, for reference;
#   time from the start of `branch create X` to the branch's postgres accepting
#     connections (pg_ctl start -w on MNT/X/pgdata with another port, then
#     pg_isready), four ways: (a) pgbench still running on main, so the
#     branch holds a crash image and its postgres replays the WAL written since
#     main's last checkpoint; if that postgres fails to start, the failure is
#     reported and the measure is retried once after `branchfs gc`; (b) the
#     same with `branch create --checkpoint PGURL` (the CHECKPOINT is timed
#     too); (c) like (a) with about as much WAL, but main's pgbench stopped
#     right after the create (recovery without competing load, to compare
#     with PostgreSQL's own crash recovery on the plain disk below); (d) main
#     running but idle, just after a CHECKPOINT.  The phases of
#     the start (start-up, redo, end-of-recovery checkpoint) come from the
#     server log;
#   `branchfs version` 20 times under the same load: process start-up alone;
#   (first scale only, BENCH_BRANCH_DEPTH_SCALES) read-write pgbench TPS on a
#     branch DEPTH (10) levels deep (d1 from main, d2 from d1, ...) against main:
#     main stopped cleanly first, each run after a fresh mount (cold caches), a
#     CHECKPOINT, same settings and duration;
#   cp -a of the stopped PGDATA from the branchfs mount to the host disk.
# Then on a plain directory of the host disk, same scale, same settings:
#   pgbench -i -s S (timed); CREATE DATABASE copy TEMPLATE bench, default
#   strategy (wal_log) and STRATEGY file_copy (no other connection to bench);
#   PostgreSQL's own crash recovery from about as much WAL as the branch
#   under pgbench replayed (the floor of any crash-consistent branch: kill -9
#   under the same pgbench, pg_ctl start -w, pg_isready; plain_crash_recovery);
#   stop; cp -a of the PGDATA (and cp -a followed by sync).
# Prints a markdown table and writes it to $BENCH_BRANCH_OUT.
#
# Environment:
#   BENCH_BRANCH_SCALES  pgbench scales, smallest first ("70 700")
#   BENCH_SECS           seconds per timed pgbench run of the depth test (30)
#   BENCH_BRANCH_N       branch creations measured per scale (20)
#   BENCH_BRANCH_DEPTH   depth of the deep branch (10)
#   BENCH_BRANCH_DEPTH_SCALES  scales on which to run the depth test (the first)
#   BENCH_BRANCH_CP_BFS  1: also cp -a the PGDATA out of the branchfs mount (1)
#   BENCH_BRANCH_PLAIN   0: skip the plain-directory side (1)
#   BENCH_DIR            parent of the work directory (${TMPDIR:-/tmp}); the
#                        stores and plain PGDATAs live there
#   BENCH_BRANCH_OUT     markdown output (build/bench-branch.md)
#   BENCH_BRANCH_LOGS    keep server logs, branchfs.log and raw timings there
#   PGL_KEEP             set: keep the work directory when the run fails
# A scale is skipped, with a message, when the disk under BENCH_DIR has less
# free space than it needs (about 2.5 x its PGDATA + 6 GiB).
# Needs root (mounts, postgres runs as user postgres).
set -euo pipefail
export LC_ALL=C
# shellcheck source=scripts/pg-lib.sh
. "$(dirname "$0")/pg-lib.sh"

SCALES=${BENCH_BRANCH_SCALES:-70 700}
SECS=${BENCH_SECS:-30}
N=${BENCH_BRANCH_N:-20}
DEPTH=${BENCH_BRANCH_DEPTH:-10}
read -r -a SCALE_LIST <<<"$SCALES"
DEPTH_SCALES=${BENCH_BRANCH_DEPTH_SCALES:-${SCALE_LIST[0]:-}}
CP_BFS=${BENCH_BRANCH_CP_BFS:-1}
DO_PLAIN=${BENCH_BRANCH_PLAIN:-1}
OUT=${BENCH_BRANCH_OUT:-$PGL_ROOT/build/bench-branch.md}
CLIENTS=4
JOBS=2
INITDB_FLAGS=(--data-checksums)
DB=bench

if [ "$(id -u)" -ne 0 ]; then
	echo "bench-branch: run as root (it mounts branchfs and runs postgres as user postgres)" >&2
	exit 1
fi
[ -n "$PGBIN" ] || { echo "bench-branch: no PostgreSQL binaries; run scripts/install-deps.sh" >&2; exit 1; }
[ -x "$BRANCHFS" ] || { echo "bench-branch: $BRANCHFS not built; run make" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "bench-branch: no /dev/fuse" >&2; exit 1; }
[ ${#SCALE_LIST[@]} -gt 0 ] || { echo "bench-branch: BENCH_BRANCH_SCALES is empty" >&2; exit 1; }
command -v jq >/dev/null 2>&1 || { echo "bench-branch: needs jq" >&2; exit 1; }

TMPDIR=${BENCH_DIR:-${TMPDIR:-/tmp}} pgl_workdir branchfs-bench-branch
W=$PGL_WORKDIR
SOCK=$W/sock
pgl_pgdir "$SOCK"
PORT=$(pgl_free_port) || pgl_die "no free port"
PORT2=$PORT
while [ "$PORT2" = "$PORT" ]; do PORT2=$(pgl_free_port) || pgl_die "no free port"; done
# logs and raw timings: inside the work directory (removed at the end) unless
# BENCH_BRANCH_LOGS names a directory to keep them in
LOGS=${BENCH_BRANCH_LOGS:-$W/log}
mkdir -p "$LOGS" && pgl_pgdir "$LOGS"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(pgl_now)

declare -A R # results: R[scale.metric]

# ---------------------------------------------------------------------------
# helpers

# milliseconds between two $EPOCHREALTIME values
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) * 1000 }'; }
# median and max of numbers on stdin: "MEDIAN MAX"
med_max() {
	sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "- -"; exit }
		m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		printf "%.2f %.2f\n", m, v[NR] }'
}
count_over() { awk -v l="$1" '$1 >= l { n++ } END { print n + 0 }'; }
gib() { awk -v b="$1" 'BEGIN { printf "%.2f GiB", b / 1073741824 }'; }
avail_bytes() { df -B1 --output=avail "$1" | tail -n 1 | tr -d ' '; }

psql_db() { # psql_db PORT DB SQL...
	local port=$1 db=$2
	shift 2
	"$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -U postgres -d "$db" "$@"
}

# time_cmd VAR CMD...: run CMD, store its wall time in seconds in R[VAR]
time_cmd() {
	local var=$1 t
	shift
	t=$(pgl_now)
	"$@" || return $?
	R[$var]=$(pgl_elapsed "$t")
}

# pg options as pgl_start passes them
pg_opts() { echo "-p $1 -k $SOCK ${PGL_SETTINGS[*]}"; }

bg_pgbench_start() { # bg_pgbench_start LOG
	"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -c "$CLIENTS" -j "$JOBS" -T 86400 -P 2 "$DB" \
		>"$1" 2>&1 &
	BG=$!
	PGL_BGPIDS=("$BG")
	sleep 3
	kill -0 "$BG" 2>/dev/null || { cat "$1" >&2; pgl_die "background pgbench did not keep running"; }
}
bg_pgbench_stop() {
	[ -n "${BG:-}" ] || return 0
	kill "$BG" 2>/dev/null || true
	wait "$BG" 2>/dev/null || true
	BG=
	# shellcheck disable=SC2034 # read by pgl_cleanup
	PGL_BGPIDS=()
}
# average of pgbench -P progress tps lines in a log
progress_tps() { awk '/^progress: .* tps/ { for (i = 1; i <= NF; i++) if ($i == "tps,") { s += $(i - 1); n++ } }
	END { if (n) printf "%.0f", s / n }' "$1"; }

# delete a branch; if refused (files still open?), say so and retry, then --force
branch_delete() { # branch_delete NAME ERRFILE
	local name=$1 err=$2 i
	for i in 1 2 3 4 5; do
		"$BRANCHFS" branch delete "$name" -s "$STORE" >/dev/null 2>"$err" && return 0
		pgl_log "branch delete $name refused (try $i): $(tr '\n' ' ' <"$err")"
		sleep 1
	done
	pgl_log "branch delete $name: using --force"
	"$BRANCHFS" branch delete "$name" --force -s "$STORE" >/dev/null 2>"$err" ||
		pgl_die "branch delete --force $name: $(cat "$err")"
}

# branch_creates TAG COUNT FROM: create TAG1..TAGCOUNT from FROM (or a chain if
# FROM is "chain"), record wall / cli / store ms per call into files
branch_creates() {
	local tag=$1 count=$2 from=$3 d=$L/$1 i t0 t1 name src
	mkdir -p "$d"
	: >"$d/wall" ; : >"$d/cli" ; : >"$d/store"
	local fromarg=()
	src=main
	for ((i = 1; i <= count; i++)); do
		name=$tag$i
		[ "$from" = chain ] || src=$from
		fromarg=()
		[ "$src" = main ] || fromarg=(--from "$src")
		t0=$EPOCHREALTIME
		if ! "$BRANCHFS" branch create "$name" "${fromarg[@]}" -s "$STORE" --json >"$d/$i.json" 2>"$d/$i.err"; then
			t1=$EPOCHREALTIME
			pgl_die "branch create $name --from $src failed after $(ms_between "$t0" "$t1") ms: $(cat "$d/$i.err")"
		fi
		t1=$EPOCHREALTIME
		ms_between "$t0" "$t1" >>"$d/wall"
		echo >>"$d/wall"
		jq -r '.ms' "$d/$i.json" >>"$d/cli"
		jq -r '.store_ms' "$d/$i.json" >>"$d/store"
		[ -s "$d/$i.err" ] && pgl_log "branch create $name stderr: $(cat "$d/$i.err")"
		[ -d "$MNT/$name/pgdata" ] || pgl_die "$MNT/$name/pgdata not there right after branch create"
		[ "$from" = chain ] && src=$name
		[ "$from" = chain ] || sleep 0.25 # let pgbench change things between branch points
	done
	sed -i '/^$/d' "$d/wall"
}

# branch_deletes TAG COUNT: delete TAG1..TAGCOUNT, wall ms per call
branch_deletes() {
	local tag=$1 count=$2 d=$L/$1 i t0 t1
	: >"$d/del"
	for ((i = 1; i <= count; i++)); do
		t0=$EPOCHREALTIME
		branch_delete "$tag$i" "$d/del.err"
		t1=$EPOCHREALTIME
		ms_between "$t0" "$t1" >>"$d/del"
		echo >>"$d/del"
	done
	sed -i '/^$/d' "$d/del"
}

# measure_ready SCALE KEY BRANCH [branch create options]: time from the start of
# `branch create BRANCH` to its postgres accepting connections (pg_ctl start -w,
# then pg_isready); R[SCALE.KEY] (s) or FAILED, R[SCALE.KEY_create] (ms),
# R[SCALE.KEY_pgctl] (s), R[SCALE.KEY_redo] (s, from the server log),
# R[SCALE.KEY_wal] (WAL bytes since the parent's last checkpoint, just before).
# Stops that postgres and deletes the branch.
measure_ready() {
	local s=$1 key=$2 br=$3 t0 t1 t2 t3 rc=0 x dlog=$L/pg-$3.log
	shift 3
	pgl_log "s=$s branchfs: branch create $br $*; pg_ctl start -w on MNT/$br/pgdata; pg_isready"
	R[$s.${key}_wal]=$(wal_since_ckpt)
	touch "$dlog" && chown "$PG_OSUSER:" "$dlog"
	PGL_LOGS+=("$dlog")
	t0=$EPOCHREALTIME
	"$BRANCHFS" branch create "$br" "$@" -s "$STORE" >"$L/$br.out" 2>&1 || rc=$?
	t1=$EPOCHREALTIME
	[ $rc -eq 0 ] || pgl_die "branch create $br $*: $(cat "$L/$br.out")"
	[ -n "${READY_UNLOAD:-}" ] && bg_pgbench_stop
	pgl_as_pg "$PGBIN/pg_ctl" -D "$MNT/$br/pgdata" -l "$dlog" -w -t 300 -o "$(pg_opts "$PORT2")" start \
		>"$L/$br-pgctl.out" 2>&1 || rc=$?
	t2=$EPOCHREALTIME
	if [ $rc -eq 0 ]; then
		"$PGBIN/pg_isready" -q -h "$SOCK" -p "$PORT2" -U postgres -d postgres -t 60 || rc=$?
	fi
	t3=$EPOCHREALTIME
	x=$(head -n 1 "$MNT/$br/pgdata/postmaster.pid" 2>/dev/null || true)
	[ -n "$x" ] && PGL_POSTMASTERS+=("$x:$MNT/$br/pgdata")
	R[$s.${key}_create]=$(ms_between "$t0" "$t1")
	if [ $rc -ne 0 ]; then
		R[$s.$key]=FAILED
		R[$s.${key}_why]=$(grep -m 1 -E 'FATAL|PANIC' "$dlog" | sed 's/^.*\(FATAL\|PANIC\): *//')
		pgl_log "s=$s: BRANCHFS BUG? postgres on branch $br did not start (rc $rc); pg_ctl said:"
		cat "$L/$br-pgctl.out" >&2
		tail -n 12 "$dlog" >&2
		pgl_log "s=$s: STORE/branchfs.log, last lines:"
		grep -v 'serving\|exiting' "$STORE/branchfs.log" | tail -n 5 >&2
		R[$s.${key}_bfslog]=$(grep -v 'serving\|exiting' "$STORE/branchfs.log" | tail -n 1)
		pgl_stop "$MNT/$br/pgdata" >/dev/null 2>&1 || true
	else
		R[$s.$key]=$(awk -v a="$t0" -v b="$t3" 'BEGIN { printf "%.3f", b - a }')
		R[$s.${key}_pgctl]=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.3f", b - a }')
		# phases from the server log: start-up to the start of redo (reading
		# the control file, fsync of every file of PGDATA before crash
		# recovery), redo, the end-of-recovery checkpoint
		R[$s.${key}_phases]=$(start_phases "$dlog")
		x=$(psql_db "$PORT2" "$DB" -c "select count(*) from pgbench_branches") || x="query failed"
		[ "$x" = "$s" ] || pgl_log "s=$s: WARNING: branch $br has pgbench_branches count $x, expected $s"
		pgl_log "s=$s: branch create $br -> accepting connections ${R[$s.$key]} s" \
			"(create ${R[$s.${key}_create]} ms, pg_ctl start -w ${R[$s.${key}_pgctl]} s," \
			"${R[$s.${key}_phases]}; $(gib "${R[$s.${key}_wal]}") of WAL since the checkpoint)"
		pgl_stop "$MNT/$br/pgdata" || pgl_log "s=$s: WARNING: pg_ctl stop on branch $br failed"
	fi
	branch_delete "$br" "$L/$br.err"
}

# start_phases SERVERLOG: "start-up X s, redo Y s, end-of-recovery checkpoint
# Z s" of a server start logged from its first line (log_line_prefix %m)
start_phases() {
	awk '
		function t(l) { split(substr(l, 12, 12), a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
		NR == 1 { t0 = t($0) }
		/redo starts at|redo is not required|database system was shut down at/ && !rs { rs = t($0) }
		/redo done at/ && !rd { rd = t($0) }
		/checkpoint complete/ && !cc && !ok { cc = t($0) }
		/ready to accept connections/ && !ok { ok = t($0) }
		END {
			if (!rs) rs = t0
			if (!rd) rd = rs
			if (!cc) cc = rd
			if (!ok) ok = cc
			printf "start-up %.2f s, redo %.2f s, end-of-recovery checkpoint %.2f s", rs - t0, rd - rs, (cc > rd) ? cc - rd : 0
		}' "$1"
}

# bytes of WAL the server on $PORT wrote since its last checkpoint's redo point
wal_since_ckpt() {
	psql_db "$PORT" postgres -c \
		"select pg_wal_lsn_diff(pg_current_wal_lsn(), redo_lsn)::bigint from pg_control_checkpoint()"
}

# wait_wal BYTES: until the server on $PORT has that much WAL since its last
# checkpoint (at most 5 minutes; a warning if not reached)
wait_wal() {
	local want=$1 wal=0 i
	case $want in '' | *[!0-9]*) return 0 ;; esac
	for ((i = 0; i < 600; i++)); do
		wal=$(wal_since_ckpt)
		[ "$wal" -ge "$want" ] && return 0
		sleep 0.5
	done
	pgl_log "WARNING: only $(gib "$wal") of WAL since the checkpoint after 5 min (a checkpoint ran?)"
}

remount() {
	pgl_umount "$MNT" || pgl_die "branchfs umount $MNT"
	pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount $STORE $MNT"
}

pg_start_or_die() { # PGDATA PORT LOG
	pgl_start "$1" "$2" "$SOCK" "$3" || pgl_die "start postgres on $1"
}

# pgbench -T SECS read-write on PORT after a CHECKPOINT; prints tps
timed_pgbench() { # PORT LOG
	psql_db "$1" postgres -c checkpoint
	"$PGBIN/pgbench" -h "$SOCK" -p "$1" -U postgres -T "$SECS" -c "$CLIENTS" -j "$JOBS" "$DB" >"$2" 2>&1 ||
		{ tail "$2" >&2; pgl_die "pgbench on port $1"; }
	pgl_tps <"$2"
}

# ---------------------------------------------------------------------------
# branchfs side of one scale

bench_branchfs() {
	local s=$1 t0 t1 x i
	STORE=$W/s$s/store
	MNT=$W/s$s/mnt
	L=$LOGS/s$s
	mkdir -p "$L" "$W/s$s" && pgl_pgdir "$L"
	pgl_init "$STORE" >/dev/null || pgl_die "branchfs init"
	pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount"
	local pgdata=$MNT/main/pgdata

	pgl_log "s=$s branchfs: initdb, start, pgbench -i -s $s"
	pgl_initdb "$pgdata" "${INITDB_FLAGS[@]}" >"$L/initdb.log" 2>&1 || { cat "$L/initdb.log" >&2; pgl_die "initdb"; }
	pg_start_or_die "$pgdata" "$PORT" "$L/pg-main.log"
	psql_db "$PORT" postgres -c "create database $DB"
	time_cmd "$s.bfs_init" "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$s" -q "$DB" \
		>"$L/pgbench-i.log" 2>&1 || { tail "$L/pgbench-i.log" >&2; pgl_die "pgbench -i on branchfs"; }
	psql_db "$PORT" postgres -c checkpoint
	R[$s.bfs_dbsize]=$(psql_db "$PORT" postgres -c "select pg_database_size('$DB')")
	pgl_log "s=$s branchfs: pgbench -i ${R[$s.bfs_init]} s, database $(gib "${R[$s.bfs_dbsize]}")"

	# --- branch creation under load
	pgl_log "s=$s branchfs: $N x branch create while pgbench -c $CLIENTS -j $JOBS runs"
	bg_pgbench_start "$L/pgbench-bg.log"
	branch_creates b "$N" main
	branch_deletes b "$N"

	# --- branch create -> its postgres accepts connections (pgbench still running)
	measure_ready "$s" ready x
	if [ "${R[$s.ready]}" = FAILED ]; then
		# a finding, reported as such; then once more once the pruner is idle
		pgl_log "s=$s: retrying on a new branch after 'branchfs gc' and 5 s"
		"$BRANCHFS" gc -s "$STORE" >/dev/null 2>&1 || true
		sleep 5
		measure_ready "$s" ready_retry x2
	fi
	# the same with the CLI's CHECKPOINT first (less WAL to replay), timed from
	# the start of the command, the CHECKPOINT included
	measure_ready "$s" ready_ckpt y --checkpoint "postgresql://postgres@localhost:$PORT/postgres?host=$SOCK"

	# process start-up alone, under the same load: the floor of any CLI command
	: >"$L/version-wall"
	for ((i = 1; i <= N; i++)); do
		t0=$EPOCHREALTIME
		"$BRANCHFS" version >/dev/null
		t1=$EPOCHREALTIME
		ms_between "$t0" "$t1" >>"$L/version-wall"
		echo >>"$L/version-wall"
		sleep 0.1
	done
	sed -i '/^$/d' "$L/version-wall"

	R[$s.bg_tps]=$(progress_tps "$L/pgbench-bg.log")
	# the same crash image once more, but main's pgbench stops right after the
	# create: the branch's recovery without the parent's load competing for
	# the CPUs, to compare with PostgreSQL's own crash recovery on the plain
	# disk (plain_crash_recovery); about as much WAL as (a) had first
	wait_wal "${R[$s.ready_wal]}"
	READY_UNLOAD=1 measure_ready "$s" ready_unload u
	bg_pgbench_stop

	# --- the same creations with postgres idle, for reference
	psql_db "$PORT" postgres -c checkpoint
	# and the time to a running branch when main is idle and checkpointed
	measure_ready "$s" ready_idle z
	branch_creates i "$N" main
	branch_deletes i "$N"

	x=$(pgl_daemon_pid "$STORE") && R[$s.hwm]=$(pgl_vmhwm_kb "$x")

	# --- pgbench on a branch DEPTH levels deep against main
	psql_db "$PORT" postgres -c checkpoint
	pgl_stop "$pgdata" || pgl_die "stop postgres on main"
	if [[ " $DEPTH_SCALES " == *" $s "* ]] && [ "$DEPTH" -gt 0 ]; then
		pgl_log "s=$s branchfs: chain of $DEPTH branches, pgbench ${SECS}s on d$DEPTH and on main"
		branch_creates d "$DEPTH" chain
		remount
		pg_start_or_die "$MNT/d$DEPTH/pgdata" "$PORT2" "$L/pg-deep.log"
		x=$(psql_db "$PORT2" "$DB" -c "select count(*) from pgbench_branches")
		[ "$x" = "$s" ] || pgl_die "branch d$DEPTH: pgbench_branches count $x, expected $s"
		R[$s.tps_deep]=$(timed_pgbench "$PORT2" "$L/pgbench-deep.log")
		pgl_stop "$MNT/d$DEPTH/pgdata" || pgl_die "stop postgres on d$DEPTH"
		remount
		pg_start_or_die "$pgdata" "$PORT" "$L/pg-main.log"
		R[$s.tps_main]=$(timed_pgbench "$PORT" "$L/pgbench-main.log")
		pgl_stop "$pgdata" || pgl_die "stop postgres on main"
		pgl_log "s=$s: TPS main ${R[$s.tps_main]}, d$DEPTH ${R[$s.tps_deep]}"
	fi

	"$BRANCHFS" stats "$STORE" --json >"$L/stats.json" 2>"$L/stats.err" || true
	R[$s.bfs_logical]=$(jq -r '.logical_bytes // empty' "$L/stats.json" 2>/dev/null || true)
	R[$s.bfs_stored]=$(jq -r '.stored_bytes // empty' "$L/stats.json" 2>/dev/null || true)

	# --- cp -a of the stopped PGDATA out of the mount, to the host disk
	if [ "$CP_BFS" = 1 ]; then
		pgl_log "s=$s branchfs: cp -a of the stopped PGDATA out of the mount"
		sync
		time_cmd "$s.cp_bfs" cp -a "$pgdata" "$W/s$s/cp-from-bfs" || pgl_die "cp -a from branchfs"
		rm -rf "$W/s$s/cp-from-bfs"
	fi

	pgl_umount "$MNT" || pgl_die "branchfs umount"
	R[$s.store_du]=$(du -sb "$STORE" | cut -f1)
	cp "$STORE/branchfs.log" "$L/branchfs.log" 2>/dev/null || true
	if grep -qiE 'error|fail|EIO|corrupt|mismatch' "$L/branchfs.log" 2>/dev/null; then
		pgl_log "s=$s: branchfs.log has error lines:"
		grep -iE 'error|fail|EIO|corrupt|mismatch' "$L/branchfs.log" | head -n 20 >&2
		R[$s.log_errors]=$(grep -ciE 'error|fail|EIO|corrupt|mismatch' "$L/branchfs.log")
	fi
	rm -rf "$STORE"
}

# ---------------------------------------------------------------------------
# plain-directory side of one scale

# plain_crash_recovery SCALE PGDATA: PostgreSQL's own floor for the start of
# a branch of a busy server.  Such a branch is a crash image: its postgres
# replays the WAL since the parent's last checkpoint, then writes its
# end-of-recovery checkpoint.  Here the plain server runs the same pgbench
# until about as much WAL as the branchfs side's branch replayed
# (R[SCALE.ready_wal]) is written since a CHECKPOINT, is killed with
# SIGKILL, and `pg_ctl start -w` + pg_isready are timed: the same recovery
# on the host disk, without the parent's load competing for the CPUs.
# R[SCALE.crash] (s), R[SCALE.crash_wal] (bytes), R[SCALE.crash_phases].
plain_crash_recovery() {
	local s=$1 pgdata=$2 want=${R[$1.ready_wal]:-} wal=0 pid t0 t1 rc=0 log=$L/pg-plain-recovery.log
	case $want in '' | *[!0-9]*) return 0 ;; esac
	[ "$want" -gt 0 ] || return 0
	pgl_log "s=$s plain: crash recovery from ~$(gib "$want") of WAL (kill -9 under pgbench)"
	psql_db "$PORT" postgres -c checkpoint
	bg_pgbench_start "$L/pgbench-bg-plain.log"
	wait_wal "$want"
	wal=$(wal_since_ckpt)
	pid=$(head -n 1 "$pgdata/postmaster.pid")
	pgl_kill9_postmaster "$pid" || pgl_die "plain postgres survived kill -9"
	bg_pgbench_stop
	R[$s.crash_wal]=$wal
	touch "$log" && chown "$PG_OSUSER:" "$log"
	PGL_LOGS+=("$log")
	t0=$EPOCHREALTIME
	pgl_as_pg "$PGBIN/pg_ctl" -D "$pgdata" -l "$log" -w -t 300 -o "$(pg_opts "$PORT")" start \
		>"$L/plain-recovery-pgctl.out" 2>&1 || rc=$?
	[ $rc -eq 0 ] && { "$PGBIN/pg_isready" -q -h "$SOCK" -p "$PORT" -U postgres -d postgres -t 60 || rc=$?; }
	t1=$EPOCHREALTIME
	if [ $rc -ne 0 ]; then
		cat "$L/plain-recovery-pgctl.out" >&2
		tail -n 20 "$log" >&2
		pgl_die "plain postgres did not recover after kill -9"
	fi
	# the record of the killed postmaster goes: its pid may be reused
	local e keep=()
	for e in "${PGL_POSTMASTERS[@]}"; do [ "${e#*:}" = "$pgdata" ] || keep+=("$e"); done
	PGL_POSTMASTERS=("${keep[@]}")
	pid=$(head -n 1 "$pgdata/postmaster.pid" 2>/dev/null || true)
	[ -n "$pid" ] && PGL_POSTMASTERS+=("$pid:$pgdata")
	R[$s.crash]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
	R[$s.crash_phases]=$(start_phases "$log")
	pgl_log "s=$s plain: crash recovery ${R[$s.crash]} s (${R[$s.crash_phases]}; $(gib "$wal") of WAL)"
}

bench_plain() {
	local s=$1
	local pgdata=$W/s$s/plain/pgdata
	L=$LOGS/s$s
	mkdir -p "$W/s$s/plain" && chmod 755 "$W/s$s/plain"
	pgl_log "s=$s plain: initdb, start, pgbench -i -s $s"
	pgl_initdb "$pgdata" "${INITDB_FLAGS[@]}" >"$L/initdb-plain.log" 2>&1 || { cat "$L/initdb-plain.log" >&2; pgl_die "initdb plain"; }
	pg_start_or_die "$pgdata" "$PORT" "$L/pg-plain.log"
	psql_db "$PORT" postgres -c "create database $DB"
	time_cmd "$s.plain_init" "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$s" -q "$DB" \
		>"$L/pgbench-i-plain.log" 2>&1 || { tail "$L/pgbench-i-plain.log" >&2; pgl_die "pgbench -i plain"; }
	psql_db "$PORT" postgres -c checkpoint
	R[$s.plain_dbsize]=$(psql_db "$PORT" postgres -c "select pg_database_size('$DB')")
	pgl_log "s=$s plain: pgbench -i ${R[$s.plain_init]} s, database $(gib "${R[$s.plain_dbsize]}")"

	pgl_log "s=$s plain: CREATE DATABASE copy TEMPLATE $DB (wal_log, then file_copy)"
	time_cmd "$s.createdb_wal" psql_db "$PORT" postgres -c "create database copy template $DB" ||
		pgl_die "create database (wal_log)"
	psql_db "$PORT" postgres -c "drop database copy"
	psql_db "$PORT" postgres -c checkpoint
	time_cmd "$s.createdb_fc" psql_db "$PORT" postgres -c "create database copy template $DB strategy file_copy" ||
		pgl_die "create database (file_copy)"
	psql_db "$PORT" postgres -c "drop database copy"
	psql_db "$PORT" postgres -c checkpoint
	pgl_stop "$pgdata" || pgl_die "stop plain postgres"
	R[$s.plain_du]=$(du -sb "$pgdata" | cut -f1)

	pgl_log "s=$s plain: cp -a of the stopped PGDATA ($(gib "${R[$s.plain_du]}"))"
	sync
	local t
	t=$(pgl_now)
	cp -a "$pgdata" "$W/s$s/plain/copy" || pgl_die "cp -a plain"
	R[$s.cp_plain]=$(pgl_elapsed "$t")
	sync
	R[$s.cp_plain_sync]=$(pgl_elapsed "$t")
	rm -rf "$W/s$s/plain/copy"
	# last, as it leaves the PGDATA with minutes of pgbench in it
	pg_start_or_die "$pgdata" "$PORT" "$L/pg-plain.log"
	plain_crash_recovery "$s" "$pgdata"
	pgl_stop "$pgdata" || pgl_die "stop plain postgres"
	rm -rf "$W/s$s/plain"
}

# ---------------------------------------------------------------------------

for s in "${SCALE_LIST[@]}"; do
	case $s in '' | *[!0-9]*) pgl_die "bad scale '$s' in BENCH_BRANCH_SCALES" ;; esac
	# about 15.5 MiB per scale unit of data, plus WAL: the plain PGDATA, its
	# copy (cp -a or CREATE DATABASE), the store and the copy out of the mount
	need=$(awk -v s="$s" 'BEGIN { printf "%.0f", 2.5 * s * 16 * 1048576 + 6 * 1073741824 }')
	have=$(avail_bytes "$W")
	if [ "$have" -lt "$need" ]; then
		pgl_log "s=$s: SKIPPED: needs about $(gib "$need") free under $W, $(gib "$have") available"
		R[$s.skipped]="skipped: needs ~$(gib "$need") free disk, $(gib "$have") available"
		continue
	fi
	pgl_log "s=$s: $(gib "$have") free under $W, about $(gib "$need") needed"
	bench_branchfs "$s"
	[ "$DO_PLAIN" = 1 ] && bench_plain "$s"
	rm -rf "${W:?}/s$s/plain" "${W:?}/s$s/store" "${W:?}/s$s/cp-from-bfs"
done

# ---------------------------------------------------------------------------
# Report

v() { echo "${R[$1]:-}"; }
mm() { # mm SCALE TAG FILE: "median / max ms"
	local f=$LOGS/s$1/$2/$3
	[ -s "$f" ] || { echo "n/a"; return; }
	med_max <"$f" | awk '{ printf "%s / %s ms", $1, $2 }'
}
med_of() { local f=$LOGS/s$1/$2/$3; [ -s "$f" ] && med_max <"$f" | cut -d' ' -f1; }
max_of() { local f=$LOGS/s$1/$2/$3; [ -s "$f" ] && med_max <"$f" | cut -d' ' -f2; }
sec() { [ -n "$1" ] && [ "$1" != FAILED ] && printf '%.2f s' "$1" || echo "${1:-n/a}"; }
secx() { # secx SECONDS MEDIAN_MS: "12.3 s (4567x)"
	[ -n "$1" ] || { echo "n/a"; return; }
	if [ -n "$2" ]; then
		awk -v t="$1" -v m="$2" 'BEGIN { printf "%.2f s (%.0fx)", t, (m > 0) ? t * 1000 / m : 0 }'
	else
		printf '%.2f s' "$1"
	fi
}

fstype=$(findmnt -no FSTYPE -T "$W" 2>/dev/null || stat -f -c %T "$W" 2>/dev/null || echo "?")
pgver=$("$PGBIN/postgres" --version | awk '{ print $3 }')
bfver=$("$BRANCHFS" version 2>/dev/null | head -n 1 | sed "s/^branchfs //" || echo "?")
rev=$(git -C "$PGL_ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
git -C "$PGL_ROOT" diff --quiet HEAD -- fs kv snap tools 2>/dev/null || rev="$rev+local changes"
src="git $rev"
[ "$BRANCHFS" -ef "$PGL_ROOT/branchfs" ] || src="binary $BRANCHFS; repository at $rev"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
memg=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
total_min=$(awk -v a="$T_START" -v b="$(pgl_now)" 'BEGIN { printf "%.0f", (b - a) / 60 }')

hdr="| measure |"
sep="|---|"
for s in "${SCALE_LIST[@]}"; do
	if [ -n "$(v "$s.plain_du")" ]; then
		hdr="$hdr scale $s (PGDATA $(gib "$(v "$s.plain_du")")) |"
	elif [ -n "$(v "$s.bfs_dbsize")" ]; then
		hdr="$hdr scale $s (db $(gib "$(v "$s.bfs_dbsize")")) |"
	else
		hdr="$hdr scale $s |"
	fi
	sep="$sep---:|"
done
hdr="$hdr target |"
sep="$sep---|"

row() { # row LABEL TARGET FUNC: FUNC SCALE prints one cell
	local label=$1 target=$2 fn=$3 line s
	line="| $label |"
	for s in "${SCALE_LIST[@]}"; do
		if [ -n "$(v "$s.skipped")" ]; then
			line="$line $(v "$s.skipped") |"
		else
			line="$line $($fn "$s") |"
		fi
	done
	echo "$line $target |"
}

c_dbsize() { [ -n "$(v "$1.bfs_dbsize")" ] && gib "$(v "$1.bfs_dbsize")" || echo "n/a"; }
c_init_bfs() { sec "$(v "$1.bfs_init")"; }
c_init_plain() { sec "$(v "$1.plain_init")"; }
c_create() { mm "$1" b wall; }
c_create_cli() { mm "$1" b cli; }
c_create_store() { mm "$1" b store; }
c_create_50() {
	local f=$LOGS/s$1/b/wall n
	[ -s "$f" ] || { echo "n/a"; return; }
	n=$(count_over 50 <"$f")
	[ "$n" = 0 ] && echo "yes (all $(wc -l <"$f"))" || echo "NO: $n of $(wc -l <"$f") >= 50 ms"
}
c_lt5() { # c_lt5 SCALE TAG FILE
	local m
	m=$(med_of "$1" "$2" "$3") || { echo "n/a"; return; }
	awk -v m="$m" 'BEGIN { print (m < 5) ? "met" : "MISSED" }'
}
c_create_5() { c_lt5 "$1" b wall; }
c_create_cli_5() { c_lt5 "$1" b cli; }
c_version() { mm "$1" . version-wall; }
c_bg_tps() { [ -n "$(v "$1.bg_tps")" ] && v "$1.bg_tps" || echo "n/a"; }
c_delete() { mm "$1" b del; }
c_create_idle() { mm "$1" i wall; }
c_create_idle_store() { mm "$1" i store; }
ready_cell() { # ready_cell SCALE KEY
	local r
	r=$(v "$1.$2")
	[ -n "$r" ] || { echo "n/a"; return; }
	if [ "$r" = FAILED ]; then
		echo "**FAILED**: $(v "$1.$2_why")"
		return
	fi
	awk -v r="$r" -v c="$(v "$1.$2_create")" -v p="$(v "$1.$2_pgctl")" -v ph="$(v "$1.$2_phases")" -v w="$(v "$1.$2_wal")" \
		'BEGIN { printf "**%.2f s**: create %.0f ms, pg_ctl start -w %.2f s (%s; main had %.0f MiB of WAL since its last checkpoint)", r, c, p, ph, w / 1048576 }'
}
c_ready() {
	local out
	out=$(ready_cell "$1" ready)
	[ -n "$(v "$1.ready_retry")" ] && out="$out; retry after gc: $(ready_cell "$1" ready_retry)"
	echo "$out"
}
c_ready_ckpt() { ready_cell "$1" ready_ckpt; }
c_ready_idle() { ready_cell "$1" ready_idle; }
c_ready_unload() { ready_cell "$1" ready_unload; }
c_crash() {
	[ -n "$(v "$1.crash")" ] || { echo "n/a"; return; }
	awk -v r="$(v "$1.crash")" -v ph="$(v "$1.crash_phases")" -v w="$(v "$1.crash_wal")" \
		'BEGIN { printf "**%.2f s** (%s; %.0f MiB of WAL since the checkpoint)", r, ph, w / 1048576 }'
}
c_ready_1s() {
	local k r out=
	for k in ready ready_ckpt ready_unload ready_idle; do
		r=$(v "$1.$k")
		[ -n "$r" ] || continue
		[ "$r" = FAILED ] || r=$(awk -v r="$r" 'BEGIN { print (r < 1) ? "met" : "MISSED" }')
		case $k in ready) k="under pgbench" ;; ready_ckpt) k="--checkpoint" ;; ready_unload) k="load stopped" ;; ready_idle) k="idle" ;; esac
		out="${out:+$out, }$k: $r"
	done
	echo "${out:-n/a}"
}
c_cp_bfs() { secx "$(v "$1.cp_bfs")" "$(med_of "$1" b wall)"; }
c_cp_plain() { secx "$(v "$1.cp_plain")" "$(med_of "$1" b wall)"; }
c_cp_plain_sync() { secx "$(v "$1.cp_plain_sync")" "$(med_of "$1" b wall)"; }
c_cdb_wal() { secx "$(v "$1.createdb_wal")" "$(med_of "$1" b wall)"; }
c_cdb_fc() { secx "$(v "$1.createdb_fc")" "$(med_of "$1" b wall)"; }
c_sizes() {
	[ -n "$(v "$1.bfs_stored")" ] || { echo "n/a"; return; }
	echo "$(gib "$(v "$1.bfs_logical")") / $(gib "$(v "$1.bfs_stored")") / $(gib "$(v "$1.store_du")")"
}
c_hwm() { [ -n "$(v "$1.hwm")" ] && awk -v k="$(v "$1.hwm")" 'BEGIN { printf "%.0f MiB", k / 1024 }' || echo "n/a"; }

# growth of the median with size: last scale against the first
growth="n/a"
first=${SCALE_LIST[0]}
last=${SCALE_LIST[${#SCALE_LIST[@]} - 1]}
if [ "$first" != "$last" ] && m1=$(med_of "$first" b wall) && m2=$(med_of "$last" b wall); then
	growth=$(awk -v a="$m1" -v b="$m2" -v s1="$first" -v s2="$last" 'BEGIN {
		ok = (b <= 1.5 * a || b - a < 1)
		printf "median %.2f ms at scale %s, %.2f ms at scale %s (%.2fx): %s", a, s1, b, s2, (a > 0) ? b / a : 0,
			ok ? "no growth with size (met)" : "GROWS with size (MISSED)" }')
fi

mkdir -p "$(dirname "$OUT")"
{
	echo "Measured $(date -u '+%Y-%m-%d %H:%M') UTC by \`scripts/bench-branch.sh\` (\`make bench\`) in $total_min min:"
	echo "branchfs $bfver ($src), PostgreSQL $pgver, $(nproc) CPUs ($cpu), $memg RAM, $(uname -r);"
	echo "stores, plain PGDATAs and copies on $fstype under \`${BENCH_DIR:-${TMPDIR:-/tmp}}\`; load average at start $LOAD_START."
	echo "BENCH_BRANCH_SCALES=\"$SCALES\" BENCH_SECS=$SECS BENCH_BRANCH_N=$N BENCH_BRANCH_DEPTH=$DEPTH."
	echo "Server settings everywhere: \`${PGL_SETTINGS[*]}\`, initdb \`${INITDB_FLAGS[*]} -E UTF8 --no-locale\`;"
	echo "pgbench data in database \`$DB\`; load and timed runs \`pgbench -c $CLIENTS -j $JOBS\` (read-write tpcb-like)."
	echo
	echo "$hdr"
	echo "$sep"
	row "database size after \`pgbench -i\` (branchfs)" "" c_dbsize
	row "\`pgbench -i -s S\`: plain dir" "" c_init_plain
	row "\`pgbench -i -s S\`: branchfs" "" c_init_bfs
	row "**\`branch create\`** under pgbench, whole command: median / max of $N" "median < 5 ms" c_create
	row "… median < 5 ms" "" c_create_5
	row "… every one < 50 ms end to end" "< 50 ms" c_create_50
	row "… as the CLI times itself (\`--json\` ms)" "" c_create_cli
	row "… CLI's own time median < 5 ms" "" c_create_cli_5
	row "… in the store (\`--json\` store_ms)" "" c_create_store
	row "process start-up alone: \`branchfs version\` under the same load" "" c_version
	row "pgbench TPS on main while branching" "" c_bg_tps
	row "\`branch delete\` of those, whole command" "" c_delete
	row "\`branch create\`, postgres idle: whole command" "" c_create_idle
	row "… in the store, postgres idle" "" c_create_idle_store
	row "**\`branch create\` → branch's postgres accepting connections**" "< 1 s at ~1 GB" c_ready
	row "… < 1 s" "" c_ready_1s
	row "… the same with \`branch create --checkpoint PGURL\` (CHECKPOINT timed too)" "" c_ready_ckpt
	row "… main running but idle, just after a CHECKPOINT" "" c_ready_idle
	row "… the crash image under pgbench again, main's pgbench stopped right after the create (the branch's recovery without competing load)" "" c_ready_unload
	row "PostgreSQL's own floor: crash recovery of the plain PGDATA from about as much WAL (kill -9 under the same pgbench, then \`pg_ctl start -w\`; host disk, no other load)" "" c_crash
	row "\`cp -a\` of the stopped PGDATA, plain dir → plain dir (x branch create)" "" c_cp_plain
	row "… \`cp -a\` then \`sync\`" "" c_cp_plain_sync
	row "\`cp -a\` of the stopped PGDATA, branchfs mount → plain dir" "" c_cp_bfs
	row "\`CREATE DATABASE … TEMPLATE\` (wal_log), plain dir" "" c_cdb_wal
	row "\`CREATE DATABASE … TEMPLATE … STRATEGY file_copy\`, plain dir" "" c_cdb_fc
	row "branchfs logical / stored / store du at the end" "" c_sizes
	row "peak daemon memory (VmHWM)" "" c_hwm
	echo
	echo "Branch creation growth with size: $growth."
	any_deep=
	for s in "${SCALE_LIST[@]}"; do
		[ -n "$(v "$s.tps_deep")" ] && any_deep=1
	done
	if [ -n "$any_deep" ]; then
		echo
		echo "| read-write pgbench, ${SECS} s, after CHECKPOINT, fresh mount | main | branch $DEPTH levels deep | deep/main | target | |"
		echo "|---|---:|---:|---:|---|---|"
		for s in "${SCALE_LIST[@]}"; do
			[ -n "$(v "$s.tps_deep")" ] || continue
			awk -v s="$s" -v m="$(v "$s.tps_main")" -v d="$(v "$s.tps_deep")" -v dep="$DEPTH" \
				-v bq='`' -v cm="$(med_of "$s" d wall)" -v cx="$(max_of "$s" d wall)" 'BEGIN {
				r = (m > 0) ? d / m : 0
				printf "| TPS, scale %s | %.0f | %.0f | %.3fx | within 10%% | %s |\n", s, m, d, r,
					(r >= 0.9 && r <= 1.1) ? "met" : (r > 1.1 ? "deep faster" : "MISSED")
				printf "| %sbranch create --from%s of the chain, postgres stopped: median / max of %s | | %s / %s ms | | | |\n", bq, bq, dep, cm, cx
			}'
		done
	fi
	echo
	echo "Whole command: wall clock around \`branchfs branch create\` from the shell (fork, exec,"
	echo "control socket, exit); the branch's postgres starts on a crash image of main taken while"
	echo "pgbench ran (\`pg_ctl start -w\` polls every 100 ms). (Nx) = how many times the median"
	echo "branch creation. Raw whole-command times, ms, in order:"
	echo
	for s in "${SCALE_LIST[@]}"; do
		[ -s "$LOGS/s$s/b/wall" ] || continue
		echo "- scale $s, under pgbench: $(tr '\n' ' ' <"$LOGS/s$s/b/wall")"
		echo "- scale $s, store_ms: $(tr '\n' ' ' <"$LOGS/s$s/b/store")"
		for k in ready ready_retry ready_ckpt ready_unload ready_idle; do
			[ "$(v "$s.$k")" = FAILED ] || continue
			echo "- scale $s: postgres on the branch ($k) failed: \`$(v "$s.${k}_why")\`;" \
				"STORE/branchfs.log: \`$(v "$s.${k}_bfslog")\`"
		done
		[ -n "$(v "$s.log_errors")" ] && echo "- scale $s: branchfs.log has $(v "$s.log_errors") error lines"
	done
} >"$OUT"

echo
cat "$OUT"
echo
echo "bench-branch: markdown written to $OUT"
