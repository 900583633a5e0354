#!/usr/bin/env bash
# scripts/bench.sh - PostgreSQL on branchfs against PostgreSQL on a plain
# directory of the host disk, side by side in one run (`make bench`).
#
# Three sides: (a) a plain directory, (b) a fresh branchfs store + mount
# (write-through: the plain mount's stricter contract) and (c) the same with
# `mount --writeback` (kernel writeback cache; the mode scripts/quickstart.sh
# mounts a PGDATA with).  Each branchfs side gets its own met/MISSED verdicts.
#
# The machine this runs on is shared and noisy, so every figure is taken
# BENCH_ROUNDS times, the sides interleaved (round r runs the sides in an
# order rotated by r, so that drift and one side's background work after its
# run - RocksDB compaction, block collection, postgres checkpoints - do not
# land on one side only).  The table reports each side's median and the
# ratio of the medians; the per-round ratios (side / plain of the same round)
# are given as a range.  Per round and side:
#   initdb --data-checksums           wall time (into a scratch directory)
#   pgbench -i -s $BENCH_SCALE        wall time (re-creates the tables)
#   pgbench -T $BENCH_SECS -c 4 -j 2  read-write (tpcb-like) TPS
#   pgbench -T $BENCH_SECS -c 4 -j 2 -S  select-only TPS (after every side's
#                                        read-write rounds)
#   (a CHECKPOINT on that side before each timed pgbench run; all servers
#   stay up, idle but for the one being measured; autovacuum is off on all
#   of them, pgbench vacuums its tables itself before each run)
# Then: clean stop, size (du -sb of the plain PGDATA against branchfs's
# stored_bytes after `branchfs gc`, and du -sb of the store directory), peak
# memory of each branchfs daemon (VmHWM).
# Prints a table with ratios branchfs/plain and the targets, and writes it as
# markdown to $BENCH_OUT (build/bench.md) for the README.
#
# Environment:
#   BENCH_ROUNDS rounds of every measure (3)
#   BENCH_SECS   seconds per pgbench run (20)
#   BENCH_SCALE  pgbench scale (20)
#   BENCH_DIR    parent of the work directory, on the disk to compare with
#                (default ${TMPDIR:-/tmp}); the stores live there too
#   BENCH_ONLY   plain | branchfs | writeback: run one side only
#   BENCH_OUT    markdown output (build/bench.md)
# Needs root (mount, postgres runs as user postgres).
set -euo pipefail
. "$(dirname "$0")/pg-lib.sh"

ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECS:-20}
SCALE=${BENCH_SCALE:-20}
CLIENTS=4
JOBS=2
ONLY=${BENCH_ONLY:-}
OUT=${BENCH_OUT:-$PGL_ROOT/build/bench.md}
INITDB_FLAGS=(--data-checksums)

if [ "$(id -u)" -ne 0 ]; then
	echo "bench: run as root (it mounts branchfs and runs postgres as user postgres)" >&2
	exit 1
fi
[ -n "$PGBIN" ] || { echo "bench: no PostgreSQL binaries; run scripts/install-deps.sh" >&2; exit 1; }
case $ROUNDS in '' | *[!0-9]*) ROUNDS=0 ;; *) ROUNDS=$((10#$ROUNDS)) ;; esac
[ "$ROUNDS" -gt 0 ] || { echo "bench: BENCH_ROUNDS must be a positive integer" >&2; exit 1; }
case $ONLY in '' | plain | branchfs | writeback) ;; *)
	echo "bench: BENCH_ONLY must be plain, branchfs or writeback" >&2
	exit 1
	;;
esac
if [ "$ONLY" != plain ] && [ ! -x "$BRANCHFS" ]; then
	echo "bench: $BRANCHFS not built; run make" >&2
	exit 1
fi

TMPDIR=${BENCH_DIR:-${TMPDIR:-/tmp}} pgl_workdir branchfs-bench
W=$PGL_WORKDIR
SOCK=$W/sock
pgl_pgdir "$SOCK"

declare -A R    # results: R[side.metric] (medians), R[side.metric.ROUND]
declare -A PORT # per side
declare -A DATA # PGDATA per side
declare -A BASE # directory per side: the plain directory or MNT/main
declare -A STORE MNT DAEMON
gcnote=

SIDES=()
for x in plain branchfs writeback; do
	[ -z "$ONLY" ] || [ "$ONLY" = "$x" ] && SIDES+=("$x")
done

json_num() { # json_num KEY < json
	if command -v jq >/dev/null 2>&1; then
		jq -r ".$1 // empty"
	else
		grep -o "\"$1\"[[:space:]]*:[[:space:]]*[0-9.eE+-]*" | head -n 1 | sed 's/.*:[[:space:]]*//'
	fi
}

# The sides in the order of round $1: rotated by one per round.
order() {
	local r=$1 n=${#SIDES[@]} i
	for ((i = 0; i < n; i++)); do
		echo "${SIDES[$(((i + r) % n))]}"
	done
}

# median of the numbers on the command line
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Wait (at most 10 s) until the CPUs are less than 25% busy over a second,
# so that the background work one side left behind (RocksDB compaction,
# block collection, postgres writing back) is not charged to the next run.
settle() {
	local i busy
	for ((i = 0; i < 10; i++)); do
		busy=$({ head -n 1 /proc/stat; sleep 1; head -n 1 /proc/stat; } | awk '
			{ t = 0; for (f = 2; f <= NF; f++) t += $f; idle = $5 + $6 }
			NR == 1 { t0 = t; i0 = idle }
			NR == 2 { d = t - t0; b = 0; if (d > 0) b = 100 * (d - (idle - i0)) / d; printf "%d", b }')
		[ "$busy" -lt 25 ] && return 0
	done
	pgl_log "CPUs still ${busy}% busy after 10 s; measuring anyway"
}

# psql_side SIDE ARGS...
psql_side() { pgl_psql "${PORT[$1]}" "$SOCK" "$@"; }

# pgbench_side SIDE LOGNAME ARGS...: run pgbench against SIDE, log kept
pgbench_side() {
	local side=$1 log=$W/$1/$2.log
	shift 2
	"$PGBIN/pgbench" -h "$SOCK" -p "${PORT[$side]}" -U postgres "$@" postgres >"$log" 2>&1 ||
		{ tail "$log" >&2; pgl_die "$side: pgbench $*"; }
}

# ---- set-up: the directories, stores and mounts ----------------------------
for x in "${SIDES[@]}"; do
	mkdir -p "$W/$x"
	if [ "$x" = plain ]; then
		BASE[$x]=$W/plain-dir
		mkdir -p "${BASE[$x]}"
		chmod 755 "${BASE[$x]}"
	else
		STORE[$x]=$W/store-$x
		MNT[$x]=$W/mnt-$x
		PGL_LOGS+=("${STORE[$x]}/branchfs.log")
		"$BRANCHFS" init "${STORE[$x]}" >/dev/null || pgl_die "branchfs init"
		opts=
		[ "$x" = writeback ] && opts=--writeback
		BFS_MOUNT_OPTS=$opts pgl_mount "${STORE[$x]}" "${MNT[$x]}" || pgl_die "branchfs mount $opts"
		DAEMON[$x]=$(pgl_daemon_pid "${STORE[$x]}") || DAEMON[$x]=
		BASE[$x]=${MNT[$x]}/main
	fi
	DATA[$x]=${BASE[$x]}/pgdata
	pgl_new_port "PORT[$x]" 54000 1000
done

# ---- initdb, timed into scratch directories --------------------------------
for ((r = 1; r <= ROUNDS; r++)); do
	for x in $(order "$r"); do
		d=${BASE[$x]}/initdb-$r
		settle
		t=$(pgl_now)
		pgl_initdb "$d" "${INITDB_FLAGS[@]}" >"$W/$x/initdb-$r.log" 2>&1 || {
			cat "$W/$x/initdb-$r.log" >&2
			pgl_die "$x: initdb"
		}
		R[$x.initdb.$r]=$(pgl_elapsed "$t")
		pgl_log "round $r/$ROUNDS $x: initdb ${INITDB_FLAGS[*]}: ${R[$x.initdb.$r]} s"
		rm -rf "$d"
	done
done

# ---- the servers the pgbench runs go to (all up from here on) -------------
for x in "${SIDES[@]}"; do
	pgl_initdb "${DATA[$x]}" "${INITDB_FLAGS[@]}" >"$W/$x/initdb.log" 2>&1 || {
		cat "$W/$x/initdb.log" >&2
		pgl_die "$x: initdb"
	}
	pgl_start "${DATA[$x]}" "${PORT[$x]}" "$SOCK" "$W/$x/postgres.log" -c autovacuum=off ||
		pgl_die "$x: start postgres"
done

for ((r = 1; r <= ROUNDS; r++)); do
	for x in $(order "$r"); do
		settle
		t=$(pgl_now)
		pgbench_side "$x" "pgbench-i-$r" -i -s "$SCALE" -q
		R[$x.init.$r]=$(pgl_elapsed "$t")
		pgl_log "round $r/$ROUNDS $x: pgbench -i -s $SCALE: ${R[$x.init.$r]} s"
	done
done

# run_tps KEY LABEL [pgbench options]: ROUNDS interleaved timed runs
run_tps() {
	local key=$1 label=$2 r x
	shift 2
	for ((r = 1; r <= ROUNDS; r++)); do
		for x in $(order "$r"); do
			# what earlier runs dirtied is flushed now, not during this one
			psql_side "$x" -c checkpoint
			settle
			pgbench_side "$x" "pgbench-$key-$r" -T "$SECS" -c "$CLIENTS" -j "$JOBS" "$@"
			R[$x.$key.$r]=$(pgl_tps <"$W/$x/pgbench-$key-$r.log")
			[ -n "${R[$x.$key.$r]}" ] || pgl_die "$x: no TPS in $W/$x/pgbench-$key-$r.log"
			pgl_log "round $r/$ROUNDS $x: pgbench $label ${SECS}s: ${R[$x.$key.$r]} TPS"
		done
	done
}
run_tps rw read-write
run_tps ro select-only -S

# ---- sizes and memory -------------------------------------------------------
for x in "${SIDES[@]}"; do
	pgl_stop "${DATA[$x]}" || pgl_die "$x: stop"
	R[$x.du]=$(du -sb "${DATA[$x]}" | cut -f1)
	if [ "$x" = plain ]; then
		R[plain.du_alloc]=$(du -sB1 "${DATA[$x]}" | cut -f1)
		continue
	fi
	R[$x.hwm]=
	[ -n "${DAEMON[$x]}" ] && R[$x.hwm]=$(pgl_vmhwm_kb "${DAEMON[$x]}" || true)
	# the rounds of pgbench -i left dropped tables for the collector
	"$BRANCHFS" gc -s "${STORE[$x]}" >"$W/gc-$x.log" 2>&1 || {
		cat "$W/gc-$x.log" >&2
		pgl_log "branchfs gc failed"
		gcnote=" (which FAILED on $x)"
	}
	pgl_umount "${MNT[$x]}" || pgl_die "branchfs umount"
	"$BRANCHFS" stats "${STORE[$x]}" --json >"$W/stats-$x.json" 2>"$W/stats.err" || {
		cat "$W/stats.err" >&2
		pgl_log "branchfs stats --json failed"
	}
	R[$x.stored]=$(json_num stored_bytes <"$W/stats-$x.json" || true)
	R[$x.logical]=$(json_num logical_bytes <"$W/stats-$x.json" || true)
	R[$x.store_du]=$(du -sb "${STORE[$x]}" | cut -f1)
done

# medians
for x in "${SIDES[@]}"; do
	for m in initdb init rw ro; do
		vals=()
		for ((r = 1; r <= ROUNDS; r++)); do vals+=("${R[$x.$m.$r]}"); done
		R[$x.$m]=$(median "${vals[@]}")
		R[$x.$m.all]=${vals[*]}
	done
	pgl_log "$x (medians of $ROUNDS): initdb ${R[$x.initdb]} s, pgbench -i ${R[$x.init]} s, rw ${R[$x.rw]} tps, ro ${R[$x.ro]} tps"
done

# ---------------------------------------------------------------------------
# Report

v() { echo "${R[$1]:-}"; }
ratio() { # ratio NUM DEN
	if [ -n "$1" ] && [ -n "$2" ] && awk -v d="$2" 'BEGIN { exit !(d > 0) }'; then
		awk -v n="$1" -v d="$2" 'BEGIN { printf "%.2fx", n / d }'
	else
		echo "n/a"
	fi
}
verdict() { # verdict RATIO(e.g. 0.73x) OP LIMIT
	local r=${1%x}
	[ "$r" = n/a ] && { echo "-"; return; }
	if awk -v r="$r" -v l="$3" -v op="$2" 'BEGIN { exit !((op == ">=") ? r >= l : r <= l) }'; then
		echo "met"
	else
		echo "MISSED"
	fi
}
mib() { [ -n "$1" ] && awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }' || echo "n/a"; }
kib_mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }' || echo "n/a"; }
sec() { [ -n "$1" ] && awk -v s="$1" 'BEGIN { printf "%.2f s", s }' || echo "n/a"; }
tps() { [ -n "$1" ] && printf '%.0f' "$1" || echo "n/a"; }

# range RATIO-KEY: "lo-hi" of the per-round ratios side / plain, or empty
rrange() {
	local x=$1 m=$2 r lo= hi= q
	for ((r = 1; r <= ROUNDS; r++)); do
		q=$(ratio "$(v "$x.$m.$r")" "$(v "plain.$m.$r")")
		[ "$q" = n/a ] && return 0
		q=${q%x}
		[ -z "$lo" ] || awk -v a="$q" -v b="$lo" 'BEGIN { exit !(a < b) }' && lo=$q
		[ -z "$hi" ] || awk -v a="$q" -v b="$hi" 'BEGIN { exit !(a > b) }' && hi=$q
	done
	if [ "$ROUNDS" -gt 1 ]; then echo " (rounds ${lo}-${hi})"; fi
}
for x in branchfs writeback; do
	for m in initdb init rw ro; do
		R[$x.r_$m]=$(ratio "$(v $x.$m)" "$(v plain.$m)")
		R[$x.rr_$m]=$(rrange "$x" "$m")
	done
	R[$x.r_stored]=$(ratio "$(v $x.stored)" "$(v plain.du)")
	R[$x.r_store_du]=$(ratio "$(v $x.store_du)" "$(v plain.du)")
done
# row LABEL FMT KEY [OP LIMIT TARGET]: one table row, both branchfs sides
row() {
	local label=$1 fmt=$2 key=$3 op=${4:-} lim=${5:-} target=${6:-} pv rk x cells=""
	pv=$(v "plain.$key")
	[ "$key" = stored ] || [ "$key" = store_du ] && pv=$(v plain.du)
	for x in branchfs writeback; do
		rk=$(v "$x.r_$key")
		cells="$cells | $($fmt "$(v "$x.$key")") | $rk"
		[ -n "$op" ] && cells="$cells $(verdict "$rk" "$op" "$lim")"
		cells="$cells$(v "$x.rr_$key")"
	done
	echo "| $label | $($fmt "$pv")$cells | $target |"
}
fstype=$(findmnt -no FSTYPE -T "$W" 2>/dev/null || stat -f -c %T "$W" 2>/dev/null || echo "?")
pgver=$("$PGBIN/postgres" --version | awk '{ print $3 }')
bfver=$("$BRANCHFS" version 2>/dev/null | head -n 1 | sed "s/^branchfs //" || echo "?")
rev=$(git -C "$PGL_ROOT" rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
cpus=$(nproc)
memg=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)

mkdir -p "$(dirname "$OUT")"
{
	echo "Measured $(date -u +%Y-%m-%d) by \`make bench\` (BENCH_ROUNDS=$ROUNDS BENCH_SECS=$SECS BENCH_SCALE=$SCALE),"
	echo "branchfs $bfver (git $rev), PostgreSQL $pgver, $cpus CPUs, $memg RAM, $(uname -r),"
	echo "plain directory on $fstype. Same server settings on every side:"
	echo "\`${PGL_SETTINGS[*]} -c autovacuum=off\`, initdb \`${INITDB_FLAGS[*]} -E UTF8 --no-locale\`;"
	echo "pgbench \`-c $CLIENTS -j $JOBS -T $SECS\` (read-write tpcb-like, then \`-S\` select-only)."
	echo "Each time and TPS is the median of $ROUNDS rounds with the sides interleaved; the ratio is that"
	echo "of the medians, the verdict is on it, and the range is of the $ROUNDS per-round ratios. Sizes"
	echo "and memory are measured once, at the end."
	echo
	echo "| measure | plain dir | branchfs (write-through) | /plain | branchfs --writeback (quickstart, PostgreSQL mode) | /plain | target |"
	echo "|---|---:|---:|---|---:|---|---|"
	row "initdb --data-checksums" sec initdb "<=" 3 "<= 3x"
	row "pgbench -i -s $SCALE" sec init
	row "read-write TPS" tps rw ">=" 0.6 ">= 0.6x"
	row "select-only TPS" tps ro ">=" 0.7 ">= 0.7x"
	row "PGDATA size: du -sb vs stored_bytes" mib stored "<=" 0.6 "<= 0.6x"
	row "PGDATA size: du -sb vs du -sb of the store" mib store_du "<=" 0.6 "<= 0.6x"
	echo "| logical bytes (stats) | | $(mib "$(v branchfs.logical)") | | $(mib "$(v writeback.logical)") | | |"
	echo "| peak daemon memory (VmHWM) | | $(kib_mib "$(v branchfs.hwm)") | | $(kib_mib "$(v writeback.hwm)") | | |"
	echo
	echo "Per round (in round order; seconds or TPS):"
	echo
	for x in "${SIDES[@]}"; do
		echo "- $x: initdb $(v "$x.initdb.all"); pgbench -i $(v "$x.init.all"); read-write $(v "$x.rw.all" | awk '{ for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " " : ""), $i }'); select-only $(v "$x.ro.all" | awk '{ for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " " : ""), $i }')"
	done
	echo
	echo "Plain PGDATA allocated on disk (du -sB1): $(mib "$(v plain.du_alloc)"). Sizes are taken after a"
	echo "clean stop (every PGDATA keeps up to max_wal_size of WAL), stored_bytes after \`branchfs gc\`$gcnote;"
	echo "the store size includes RocksDB's WAL, not yet compacted files and the 64 MiB"
	echo "STORE/reserve file kept for deleting on a full disk."
} >"$OUT"

echo
cat "$OUT"
echo
echo "bench: markdown written to $OUT"
