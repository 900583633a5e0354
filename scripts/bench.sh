#!/usr/bin/env bash
# scripts/bench.sh - PostgreSQL on branchfs against PostgreSQL on a plain
# directory of the host disk, side by side in one run (`make bench`).
#
# For each of (a) a plain directory, (b) a fresh branchfs store + mount and
# (c) the same with `mount --writeback` (kernel writeback cache; the mode
# scripts/quickstart.sh mounts a PGDATA with; (b) is the plain mount's
# stricter write-through contract; each gets its own met/MISSED verdicts):
#   initdb --data-checksums           wall time
#   pgbench -i -s $BENCH_SCALE        wall time
#   pgbench -T $BENCH_SECS -c 4 -j 2  read-write (tpcb-like) TPS
#   pgbench -T $BENCH_SECS -c 4 -j 2 -S  select-only TPS
#   (a CHECKPOINT before each timed pgbench run)
#   clean stop, then size: du -sb of the plain PGDATA against branchfs's
#   stored_bytes (branchfs stats --json) and du -sb of the store directory;
#   peak memory of the branchfs daemon (VmHWM).
# Prints a table with ratios branchfs/plain and the targets, and writes it as
# markdown to $BENCH_OUT (build/bench.md) for the README.
#
# Environment:
#   BENCH_SECS   seconds per pgbench run (30)
#   BENCH_SCALE  pgbench scale (20)
#   BENCH_DIR    parent of the work directory, on the disk to compare with
#                (default ${TMPDIR:-/tmp}); the store lives there too
#   BENCH_ONLY   plain | branchfs | writeback: run one side only
#   BENCH_OUT    markdown output (build/bench.md)
# Needs root (mount, postgres runs as user postgres).
set -euo pipefail
. "$(dirname "$0")/pg-lib.sh"

SECS=${BENCH_SECS:-30}
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
if [ "$ONLY" != plain ] && [ ! -x "$BRANCHFS" ]; then
	echo "bench: $BRANCHFS not built; run make" >&2
	exit 1
fi

TMPDIR=${BENCH_DIR:-${TMPDIR:-/tmp}} pgl_workdir branchfs-bench
W=$PGL_WORKDIR
SOCK=$W/sock
pgl_pgdir "$SOCK"
PORT=$(pgl_free_port) || pgl_die "no free port"

declare -A R # results: R[side.metric]

json_num() { # json_num KEY < json
	if command -v jq >/dev/null 2>&1; then
		jq -r ".$1 // empty"
	else
		grep -o "\"$1\"[[:space:]]*:[[:space:]]*[0-9.eE+-]*" | head -n 1 | sed 's/.*:[[:space:]]*//'
	fi
}

# run_pg SIDE PGDATA: the postgres part, identical for both sides.
run_pg() {
	local side=$1 pgdata=$2 t log=$W/$1
	mkdir -p "$log"
	pgl_log "$side: initdb ${INITDB_FLAGS[*]}"
	t=$(pgl_now)
	pgl_initdb "$pgdata" "${INITDB_FLAGS[@]}" >"$log/initdb.log" 2>&1 || {
		cat "$log/initdb.log" >&2
		pgl_die "$side: initdb"
	}
	R[$side.initdb]=$(pgl_elapsed "$t")

	pgl_start "$pgdata" "$PORT" "$SOCK" "$log/postgres.log" || pgl_die "$side: start postgres"
	pgl_log "$side: pgbench -i -s $SCALE"
	t=$(pgl_now)
	"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres \
		>"$log/pgbench-i.log" 2>&1 || pgl_die "$side: pgbench -i"
	R[$side.init]=$(pgl_elapsed "$t")
	pgl_psql "$PORT" "$SOCK" -c checkpoint

	pgl_log "$side: pgbench read-write ${SECS}s"
	"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -T "$SECS" -c "$CLIENTS" -j "$JOBS" postgres \
		>"$log/pgbench-rw.log" 2>&1 || { tail "$log/pgbench-rw.log" >&2; pgl_die "$side: pgbench rw"; }
	R[$side.rw]=$(pgl_tps <"$log/pgbench-rw.log")
	# Flush what the read-write run dirtied, so that its checkpoint does not
	# run during (and get charged to) the select-only run.
	pgl_psql "$PORT" "$SOCK" -c checkpoint
	pgl_log "$side: pgbench select-only ${SECS}s"
	"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -T "$SECS" -c "$CLIENTS" -j "$JOBS" -S postgres \
		>"$log/pgbench-ro.log" 2>&1 || { tail "$log/pgbench-ro.log" >&2; pgl_die "$side: pgbench -S"; }
	R[$side.ro]=$(pgl_tps <"$log/pgbench-ro.log")
	pgl_stop "$pgdata" || pgl_die "$side: stop"
	R[$side.du]=$(du -sb "$pgdata" | cut -f1)
	pgl_log "$side: initdb ${R[$side.initdb]} s, pgbench -i ${R[$side.init]} s, rw ${R[$side.rw]} tps, ro ${R[$side.ro]} tps"
}

if [ "$ONLY" != branchfs ] && [ "$ONLY" != writeback ]; then
	mkdir -p "$W/plain"
	chmod 755 "$W/plain"
	run_pg plain "$W/plain/pgdata"
	R[plain.du_alloc]=$(du -sB1 "$W/plain/pgdata" | cut -f1)
	rm -rf "$W/plain"
fi

# run_bfs SIDE [MOUNT WORDS]: a fresh store and mount, the postgres part, sizes.
run_bfs() {
	local side=$1 store=$W/store-$1 mnt=$W/mnt-$1 daemon
	shift
	PGL_LOGS+=("$store/branchfs.log")
	"$BRANCHFS" init "$store" >/dev/null || pgl_die "branchfs init"
	BFS_MOUNT_OPTS="$*" pgl_mount "$store" "$mnt" || pgl_die "branchfs mount $*"
	daemon=$(pgl_daemon_pid "$store") || daemon=
	run_pg "$side" "$mnt/main/pgdata"
	R[$side.hwm]=
	[ -n "$daemon" ] && R[$side.hwm]=$(pgl_vmhwm_kb "$daemon")
	pgl_umount "$mnt" || pgl_die "branchfs umount"
	"$BRANCHFS" stats "$store" --json >"$W/stats-$side.json" 2>"$W/stats.err" || {
		cat "$W/stats.err" >&2
		pgl_log "branchfs stats --json failed"
	}
	R[$side.stored]=$(json_num stored_bytes <"$W/stats-$side.json" || true)
	R[$side.logical]=$(json_num logical_bytes <"$W/stats-$side.json" || true)
	R[$side.blocks]=$(json_num blocks <"$W/stats-$side.json" || true)
	R[$side.store_du]=$(du -sb "$store" | cut -f1)
	rm -rf "$store"
}

if [ "$ONLY" != plain ] && [ "$ONLY" != writeback ]; then
	run_bfs branchfs
fi
if [ "$ONLY" != plain ] && [ "$ONLY" != branchfs ]; then
	run_bfs writeback --writeback
fi

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
sec() { [ -n "$1" ] && echo "$1 s" || echo "n/a"; }
tps() { [ -n "$1" ] && printf '%.0f' "$1" || echo "n/a"; }

for x in branchfs writeback; do
	for m in initdb init rw ro; do
		R[$x.r_$m]=$(ratio "$(v $x.$m)" "$(v plain.$m)")
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
	echo "Measured $(date -u +%Y-%m-%d) by \`make bench\` (BENCH_SECS=$SECS BENCH_SCALE=$SCALE),"
	echo "branchfs $bfver (git $rev), PostgreSQL $pgver, $cpus CPUs, $memg RAM, $(uname -r),"
	echo "plain directory on $fstype. Same server settings on both sides:"
	echo "\`${PGL_SETTINGS[*]}\`, initdb \`${INITDB_FLAGS[*]} -E UTF8 --no-locale\`;"
	echo "pgbench \`-c $CLIENTS -j $JOBS -T $SECS\` (read-write tpcb-like, then \`-S\` select-only)."
	echo
	echo "| measure | plain dir | branchfs (write-through) | /plain | branchfs --writeback (quickstart, PostgreSQL mode) | /plain | target |"
	echo "|---|---:|---:|---|---:|---|---|"
	row "initdb --data-checksums" sec initdb "<=" 3 "<= 3x"
	row "pgbench -i -s $SCALE" sec init
	row "read-write TPS" tps rw ">=" 0.6 ">= 0.6x"
	row "select-only TPS (right after read-write)" tps ro ">=" 0.7 ">= 0.7x"
	row "PGDATA size: du -sb vs stored_bytes" mib stored "<=" 0.6 "<= 0.6x"
	row "PGDATA size: du -sb vs du -sb of the store" mib store_du "<=" 0.6 "<= 0.6x"
	echo "| logical bytes (stats) | | $(mib "$(v branchfs.logical)") | | $(mib "$(v writeback.logical)") | | |"
	echo "| peak daemon memory (VmHWM) | | $(kib_mib "$(v branchfs.hwm)") | | $(kib_mib "$(v writeback.hwm)") | | |"
	echo
	echo "Plain PGDATA allocated on disk (du -sB1): $(mib "$(v plain.du_alloc)"). Sizes are taken after a"
	echo "clean stop; the store size includes RocksDB's WAL, not yet compacted files and the 64 MiB"
	echo "STORE/reserve file kept for deleting on a full disk."
} >"$OUT"

echo
cat "$OUT"
echo
echo "bench: markdown written to $OUT"
