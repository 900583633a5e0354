#!/usr/bin/env bash
# scripts/soak.sh [DURATION] - soak run, not part of CI.
#
# Four PostgreSQL servers on four branches of one mount (main, and b1, b2,
# b3 branched from main after `pgbench -i`) run pgbench for DURATION while a
# churn loop works the CLI against the mounted store: snapshot a random one
# of the four, branch from that snapshot or from the branch itself, write a
# synced file on the new branch, reset every third, start a postgres on
# every tenth (crash recovery, pgbench invariant, stop), and keep at most
# SOAK_KEEP extra branches and snapshots, deleting the oldest.  At the end:
# pgbench's invariant on the four, clean stops, pg_checksums --check on the
# four, unmount, `branchfs check STORE`.  Prints (and writes to $SOAK_OUT)
# TPS per branch, branch operations done, errors, the check result, the
# daemon's peak memory and the store's size.  Exit 0 when there was no error
# and the check was clean, else 1.
#
# DURATION: seconds, or a number with s, m or h (default 10m).
# Environment:
#   SOAK_SCALE    pgbench scale (10)
#   SOAK_CLIENTS  pgbench clients per branch (2)
#   SOAK_PAUSE    seconds between churn iterations (1)
#   SOAK_KEEP     extra branches (and snapshots) kept alive at once (4)
#   SOAK_DIR      parent of the work directory (default ${TMPDIR:-/tmp})
#   SOAK_OUT      markdown summary (build/soak.md)
# Needs root (mount, postgres runs as user postgres).  Ports 56700-56799.
set -euo pipefail
. "$(dirname "$0")/pg-lib.sh"

dur=${1:-10m}
case $dur in
*[0-9]s | *[0-9]) SECS=${dur%s} ;;
*[0-9]m) SECS=$((${dur%m} * 60)) ;;
*[0-9]h) SECS=$((${dur%h} * 3600)) ;;
*) SECS=x ;;
esac
if ! [[ $SECS =~ ^[0-9]+$ ]] || [ "$SECS" -eq 0 ]; then
	echo "usage: scripts/soak.sh [DURATION]   (seconds, or N s/m/h; default 10m)" >&2
	exit 2
fi
SCALE=${SOAK_SCALE:-10}
CLIENTS=${SOAK_CLIENTS:-2}
PAUSE=${SOAK_PAUSE:-1}
KEEP=${SOAK_KEEP:-4}
OUT=${SOAK_OUT:-$PGL_ROOT/build/soak.md}
if [ "$(id -u)" -ne 0 ]; then
	echo "soak: run as root (it mounts branchfs and runs postgres as user postgres)" >&2
	exit 1
fi
[ -n "$PGBIN" ] || { echo "soak: no PostgreSQL binaries; run scripts/install-deps.sh" >&2; exit 1; }
[ -x "$BRANCHFS" ] || { echo "soak: $BRANCHFS not built; run make" >&2; exit 1; }

TMPDIR=${SOAK_DIR:-${TMPDIR:-/tmp}} pgl_workdir branchfs-soak
W=$PGL_WORKDIR
STORE=$W/store
MNT=$W/mnt
SOCK=$W/sock
pgl_pgdir "$SOCK"
export BRANCHFS_STORE=$STORE
PGB=(main b1 b2 b3)
# The churn loop starts postgres in a subshell, out of pgl_cleanup's sight:
# it notes the postmaster in $W/churn.pm, and this stops it on exit.
soak_cleanup() {
	local rc=$? pm
	pm=$(cat "$W/churn.pm" 2>/dev/null) && pgl_kill9_postmaster "$pm"
	(exit $rc)
	pgl_cleanup
}
trap soak_cleanup EXIT

declare -A PORT=()
new_port() { pgl_new_port "$1" 56700 100; }
bench() {
	local port=$1
	shift
	"$PGBIN/pgbench" -h "$SOCK" -p "$port" -U postgres "$@" postgres
}
start_pg() { # start_pg BRANCH PORT
	pgl_start "$MNT/$1/pgdata" "$2" "$SOCK" "$W/pg-$1.log"
}

# ---- churn ---------------------------------------------------------------
OPS=$W/ops.log
# op KIND CMD...: run CMD; log "ok KIND" or "fail KIND RC" (stderr to ops.err)
op() {
	local kind=$1 rc=0
	shift
	"$@" >/dev/null 2>>"$OPS.err" || rc=$?
	if [ $rc -eq 0 ]; then
		echo "ok $kind" >>"$OPS"
	else
		echo "fail $kind $rc $*" >>"$OPS"
		echo "$(date +%T) $kind failed ($rc): $*" >>"$OPS.err"
	fi
	return $rc
}
# pg_on BRANCH: postgres recovers on a churn branch; invariant; stop.
pg_on() {
	local b=$1 inv
	start_pg "$b" "${PORT[churn]}" || return 1
	head -n 1 "$MNT/$b/pgdata/postmaster.pid" >"$W/churn.pm"
	inv=$(pgl_pgbench_invariant "${PORT[churn]}" "$SOCK") || {
		echo "$(date +%T) pgbench invariant broken on $b: $inv" >>"$OPS.err"
		pgl_stop "$MNT/$b/pgdata" && rm -f "$W/churn.pm"
		return 1
	}
	pgl_stop "$MNT/$b/pgdata" && rm -f "$W/churn.pm"
}
churn() {
	local end=$1 i=0 src x s
	local queue=() # extra branches and snapshots, oldest first
	set +e
	while [ "$(date +%s)" -lt "$end" ]; do
		i=$((i + 1))
		src=${PGB[RANDOM % 4]}
		s=ss$i x=x$i
		op snapshot-create "$BRANCHFS" snapshot create "$src" "$s" && queue+=("snapshot:$s")
		if ((i % 2)); then
			op branch-create "$BRANCHFS" branch create "$x" --from "$s"
		else
			op branch-create "$BRANCHFS" branch create "$x" --from "$src"
		fi && queue+=("branch:$x")
		if [ -d "$MNT/$x" ]; then
			op write dd if=/dev/urandom of="$MNT/$x/soak.dat" bs=64k count=4 conv=fsync status=none
			((i % 3)) || op branch-reset "$BRANCHFS" branch reset "$x"
			((i % 10)) || op postgres-recovery pg_on "$x"
		fi
		while [ ${#queue[@]} -gt $((2 * KEEP)) ]; do
			case ${queue[0]} in
			snapshot:*) op snapshot-delete "$BRANCHFS" snapshot delete "${queue[0]#*:}" ;;
			branch:*) op branch-delete "$BRANCHFS" branch delete "${queue[0]#*:}" ;;
			esac
			queue=("${queue[@]:1}")
		done
		sleep "$PAUSE"
	done
	for x in "${queue[@]}"; do
		case $x in
		snapshot:*) op snapshot-delete "$BRANCHFS" snapshot delete "${x#*:}" ;;
		branch:*) op branch-delete "$BRANCHFS" branch delete "${x#*:}" ;;
		esac
	done
}

# ---- set up --------------------------------------------------------------
for b in "${PGB[@]}" churn; do new_port "PORT[$b]"; done
pgl_log "soak: ${SECS}s, pgbench scale $SCALE, $CLIENTS clients on each of ${PGB[*]}; work dir $W"
pgl_init "$STORE" >/dev/null || pgl_die "branchfs init"
pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount"
DAEMON=$(pgl_daemon_pid "$STORE") || pgl_die "no daemon for $STORE"
pgl_initdb "$MNT/main/pgdata" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb"
}
start_pg main "${PORT[main]}" || pgl_die "start postgres on main"
bench "${PORT[main]}" -i -s "$SCALE" -q >"$W/pgbench-i.log" 2>&1 || {
	tail -n 20 "$W/pgbench-i.log" >&2
	pgl_die "pgbench -i"
}
pgl_psql "${PORT[main]}" "$SOCK" -c checkpoint || pgl_die "checkpoint"
for b in b1 b2 b3; do
	"$BRANCHFS" branch create "$b" >/dev/null || pgl_die "branch create $b"
	start_pg "$b" "${PORT[$b]}" || pgl_die "start postgres on $b"
done

# ---- run -----------------------------------------------------------------
pgl_log "pgbench on ${PGB[*]} and branch churn for ${SECS}s"
: >"$OPS"
: >"$OPS.err"
T0=$(date +%s)
declare -A BENCH=()
for b in "${PGB[@]}"; do
	# -n: no vacuum, whose TRUNCATE of pgbench_history would break the
	# invariant on branches for the rows inherited from main
	bench "${PORT[$b]}" -n -c "$CLIENTS" -j 1 -T "$SECS" >"$W/pgbench-$b.log" 2>&1 &
	BENCH[$b]=$!
	PGL_BGPIDS+=($!)
done
churn $((T0 + SECS)) &
CHURN=$!
PGL_BGPIDS+=("$CHURN")
while [ "$(date +%s)" -lt $((T0 + SECS)) ]; do
	sleep 30
	pgl_log "$(($(date +%s) - T0))s: $(grep -c '^ok ' "$OPS" || true) branch operations," \
		"$(grep -c '^fail ' "$OPS" || true) failed; daemon RSS $(awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$DAEMON/status") MiB"
done

errors=0
declare -A TPS=() TX=() FAILED=()
for b in "${PGB[@]}"; do
	rc=0
	wait "${BENCH[$b]}" || rc=$?
	TPS[$b]=$(pgl_tps <"$W/pgbench-$b.log" | awk '{ printf "%.1f", $1 }')
	TX[$b]=$(awk '/^number of transactions actually processed:/ { print $NF }' "$W/pgbench-$b.log")
	FAILED[$b]=$(awk '/^number of failed transactions:/ { print $5 }' "$W/pgbench-$b.log")
	if [ $rc -ne 0 ] || [ "${FAILED[$b]:-0}" != 0 ] || [ -z "${TPS[$b]}" ]; then
		pgl_log "pgbench on $b: exit $rc, failed transactions ${FAILED[$b]:-?}"
		tail -n 5 "$W/pgbench-$b.log" >&2
		errors=$((errors + 1))
	fi
done
wait "$CHURN" || true
pgl_log "pgbench and churn done after $(($(date +%s) - T0))s"

# ---- end: invariants, stops, checksums, unmount, check ---------------------
for b in "${PGB[@]}"; do
	inv=$(pgl_pgbench_invariant "${PORT[$b]}" "$SOCK") || {
		pgl_log "pgbench invariant broken on $b: $inv"
		errors=$((errors + 1))
	}
	pgl_stop "$MNT/$b/pgdata" || {
		pgl_log "pg_ctl stop on $b failed"
		errors=$((errors + 1))
	}
done
for b in "${PGB[@]}"; do
	pgl_checksums "$MNT/$b/pgdata" >"$W/checksums-$b.log" 2>&1 || {
		cat "$W/checksums-$b.log" >&2
		pgl_log "pg_checksums --check on $b failed"
		errors=$((errors + 1))
	}
done
pglog_errors=$(cat "$W"/pg-*.log | grep -cE 'PANIC|could not (read|write|fsync|open|extend)|invalid page|checksum verification failed' || true)
errors=$((errors + pglog_errors))
cli_failed=$(grep -c '^fail ' "$OPS" || true)
errors=$((errors + cli_failed))
[ "$cli_failed" -eq 0 ] || sed 's/^/  /' "$OPS.err" | tail -n 20 >&2
left=$("$BRANCHFS" branch list --json | perl -MJSON::PP -e 'print scalar @{ decode_json(join "", <STDIN>) }')
HWM=$(pgl_vmhwm_kb "$DAEMON")
stats=$("$BRANCHFS" stats "$STORE" --json) || stats='{}'
pgl_umount "$MNT" || {
	pgl_log "branchfs umount failed"
	errors=$((errors + 1))
}
crc=0
t=$(pgl_now)
"$BRANCHFS" check "$STORE" >"$W/check.log" 2>&1 || crc=$?
CHECK_S=$(pgl_elapsed "$t")
[ $crc -eq 0 ] || cat "$W/check.log" >&2

# ---- figures ---------------------------------------------------------------
n() { grep -c "^ok $1\$" "$OPS" || true; }
num() { perl -MJSON::PP -e 'my $j = eval { decode_json(join "", <STDIN>) } || {}; print $j->{$ARGV[0]} // "?"' "$1" <<<"$stats"; }
mib() { awk -v b="$1" 'BEGIN { if (b ~ /^[0-9]+$/) printf "%.1f MiB", b / 1048576; else print "?" }'; }
{
	echo "## soak: $(date -u +%Y-%m-%dT%H:%MZ), ${SECS}s, pgbench scale $SCALE, -c $CLIENTS on each branch"
	echo
	echo "| branch | TPS | transactions | failed |"
	echo "|---|---:|---:|---:|"
	for b in "${PGB[@]}"; do
		echo "| $b | ${TPS[$b]:-?} | ${TX[$b]:-?} | ${FAILED[$b]:-?} |"
	done
	echo
	echo "| measure | value |"
	echo "|---|---:|"
	echo "| snapshots created / deleted | $(n snapshot-create) / $(n snapshot-delete) |"
	echo "| branches created / deleted / reset | $(n branch-create) / $(n branch-delete) / $(n branch-reset) |"
	echo "| synced 256 KiB writes on new branches | $(n write) |"
	echo "| postgres recoveries on churn branches | $(n postgres-recovery) |"
	echo "| branches left at the end (expect 4) | $left |"
	echo "| errors (CLI $cli_failed, postgres logs $pglog_errors, pgbench/invariant/checksums/umount $((errors - cli_failed - pglog_errors))) | $errors |"
	echo "| \`branchfs check\` | exit $crc ($CHECK_S s): $(tail -n 1 "$W/check.log") |"
	echo "| daemon peak memory (VmHWM) | $(awk -v k="${HWM:-0}" 'BEGIN { printf "%.1f MiB", k / 1024 }') |"
	echo "| logical / stored / database bytes | $(mib "$(num logical_bytes)") / $(mib "$(num stored_bytes)") / $(mib "$(num db_bytes)") |"
} | tee "$W/summary.md"
mkdir -p "$(dirname "$OUT")" && cp "$W/summary.md" "$OUT"
pgl_log "summary written to $OUT"
if [ "$errors" -ne 0 ] || [ $crc -ne 0 ]; then
	pgl_log "soak FAILED: $errors errors, check exit $crc"
	exit 1
fi
pgl_log "soak passed"
