# shellcheck shell=bash
# scripts/pg-lib.sh - PostgreSQL and mount helpers shared by tests/pg/*.sh,
# scripts/quickstart.sh and scripts/bench.sh.  Source it; it defines functions
# and a few variables and runs nothing else.
#
# Variables (override from the environment):
#   BRANCHFS   the branchfs binary            (default: ROOT/branchfs)
#   PGBIN      PostgreSQL's bin directory     (default: newest /usr/lib/postgresql/*/bin)
#
# As root, server-side programs (initdb, pg_ctl, pg_checksums) run as the
# `postgres` user, because postgres refuses to run as root; as any other user
# they run as that user.  Clients (psql, pgbench, pg_amcheck) run as the caller
# and connect as database user `postgres` over the unix socket (trust auth).
#
# Everything a test starts is recorded (postmaster pids, mounts) so that
# pgl_cleanup, run from a trap on EXIT, can stop it again.

PGL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BRANCHFS=${BRANCHFS:-$PGL_ROOT/branchfs}

pgl_find_pgbin() {
	local d
	if [ -n "${PGBIN:-}" ] && [ -x "$PGBIN/initdb" ]; then
		return 0
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			PGBIN=$d
			return 0
		fi
	done
	if command -v pg_config >/dev/null 2>&1; then
		d=$(pg_config --bindir)
		if [ -x "$d/initdb" ]; then
			PGBIN=$d
			return 0
		fi
	fi
	PGBIN=
	return 1
}
pgl_find_pgbin || true

if [ "$(id -u)" -eq 0 ]; then
	PG_OSUSER=postgres
else
	PG_OSUSER=$(id -un)
fi

PGL_POSTMASTERS=()  # "pid:pgdata" of every postmaster started through pgl_start
PGL_MOUNTS=()       # mountpoints mounted through pgl_mount
PGL_BGPIDS=()       # background jobs to kill in cleanup
PGL_WORKDIR=        # removed by pgl_cleanup
PGL_LOGS=()         # printed (tail) by pgl_cleanup when the script fails
PGL_WITH_BFS=       # set when tests/e2e/lib.sh owns the work directory

pgl_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
pgl_die() {
	printf '[%s] FAIL: %s\n' "$(date +%H:%M:%S)" "$*" >&2
	exit 1
}

# Skip (exit 77) when the environment cannot run the PostgreSQL tests.
pgl_require() {
	[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (mounts, runs postgres as user postgres)" >&2; exit 77; }
	[ -c /dev/fuse ] || { echo "SKIP: no /dev/fuse" >&2; exit 77; }
	[ -n "$PGBIN" ] || { echo "SKIP: no PostgreSQL server binaries (initdb)" >&2; exit 77; }
	id postgres >/dev/null 2>&1 || { echo "SKIP: no postgres user" >&2; exit 77; }
	# a missing binary is a build problem, not a reason to skip
	[ -x "$BRANCHFS" ] || { echo "FAIL: $BRANCHFS not found or not executable (run make)" >&2; exit 1; }
}

# Run a server-side program as the postgres OS user, from a directory it can read.
pgl_as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		(cd / && runuser -u "$PG_OSUSER" -- "$@")
	else
		(cd / && "$@")
	fi
}

# Make a private work directory PGL_WORKDIR, traversable by postgres, and
# install the cleanup trap.  Call it directly, not in $(...): the trap and
# the variable must live in the calling shell.
#
# When tests/e2e/lib.sh was sourced first (it creates $BFS_WORK and traps
# EXIT with bfs_cleanup), its work directory is used and pgl_cleanup chains
# to bfs_cleanup after stopping postgres, so that mounts, stray daemons and
# the directory are handled in one place.
pgl_workdir() {
	if [ -n "${BFS_WORK:-}" ] && declare -F bfs_cleanup >/dev/null; then
		PGL_WORKDIR=$BFS_WORK
		PGL_WITH_BFS=1
	else
		PGL_WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/${1:-branchfs-pg}.XXXXXX") || exit 1
		PGL_WITH_BFS=
	fi
	chmod 755 "$PGL_WORKDIR"
	trap pgl_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# A directory owned by the postgres user (socket dirs, log dirs).
pgl_pgdir() {
	mkdir -p "$1"
	chown "$PG_OSUSER:" "$1" 2>/dev/null || true
	chmod 755 "$1"
}

# Print a TCP port nobody listens on (54000..54999 by default).
pgl_free_port() {
	local base=${1:-54000} span=${2:-1000} p i
	for i in $(seq 1 200); do
		p=$((base + RANDOM % span))
		if command -v ss >/dev/null 2>&1; then
			if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
				echo "$p"
				return 0
			fi
		elif ! "$PGBIN/pg_isready" -q -h localhost -p "$p" -t 1 >/dev/null 2>&1 &&
			! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# pgl_new_port VAR BASE SPAN: a free port in BASE..BASE+SPAN-1 that no
# earlier pgl_new_port of this shell returned, assigned to VAR (which may
# name an array element: 'PORT[main]').  Call it directly, not in $(...),
# or it cannot remember.  Dies when none is found.
PGL_PORTS_USED=()
pgl_new_port() {
	local p i
	for i in $(seq 1 50); do
		p=$(pgl_free_port "$2" "$3") || break
		case " ${PGL_PORTS_USED[*]} " in *" $p "*) continue ;; esac
		PGL_PORTS_USED+=("$p")
		printf -v "$1" %s "$p"
		return 0
	done
	pgl_die "no free port in $2-$(($2 + $3 - 1))"
}

pgl_now() { date +%s.%N; }
pgl_elapsed() { awk -v a="$1" -v b="$(pgl_now)" 'BEGIN { printf "%.3f", b - a }'; }

# ---------------------------------------------------------------------------
# branchfs mounts

# pgl_init STORE: branchfs init; the store's log is shown when a test fails.
pgl_init() {
	"$BRANCHFS" init "$1" || return 1
	if [ -n "${PGL_WITH_BFS:-}" ]; then
		BFS_STORES+=("$1")
	else
		PGL_LOGS+=("$1/branchfs.log")
	fi
}

pgl_mount() {
	local store=$1 mnt=$2
	mkdir -p "$mnt"
	# shellcheck disable=SC2086 # BFS_MOUNT_OPTS: extra words, e.g. --writeback
	"$BRANCHFS" mount "$store" "$mnt" ${BFS_MOUNT_OPTS:-} || return 1
	PGL_MOUNTS+=("$mnt")
	[ -n "${PGL_WITH_BFS:-}" ] && BFS_MNT_STORE[$mnt]=$store
	[ -d "$mnt/main" ] || { pgl_log "mount of $store on $mnt: no $mnt/main"; return 1; }
}

# Unmount; fall back to a lazy unmount when `branchfs umount` fails.
pgl_umount() {
	local mnt=$1 rc=0
	if ! timeout 120 "$BRANCHFS" umount "$mnt"; then
		rc=1
		pgl_log "branchfs umount $mnt failed; falling back to umount -l"
		fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
	fi
	return $rc
}

pgl_is_mounted() { mountpoint -q "$1" 2>/dev/null || grep -qs " $1 " /proc/self/mounts; }

# Pid of the branchfs daemon serving STORE: the process that holds both
# /dev/fuse and a file inside STORE open; failing that, a live branchfs
# process whose argv holds "mount" and the store path as passed to pgl_mount.
pgl_daemon_pid() {
	local store=$1 real p f t arg has_mount has_store exe fuse
	real=$(realpath -m -- "$store")
	for p in /proc/[0-9]*; do
		[ "${p#/proc/}" = "$$" ] && continue
		fuse=0 has_store=0
		for f in "$p"/fd/*; do
			t=$(readlink "$f" 2>/dev/null) || continue
			case $t in
			/dev/fuse) fuse=1 ;;
			"$real"/*) has_store=1 ;;
			esac
		done
		if [ $fuse = 1 ] && [ $has_store = 1 ]; then
			echo "${p#/proc/}"
			return 0
		fi
	done 2>/dev/null
	for f in /proc/[0-9]*/cmdline; do
		p=${f#/proc/}
		p=${p%/cmdline}
		[ "$p" = "$$" ] && continue
		has_mount=0 has_store=0 exe=
		while IFS= read -r -d '' arg; do
			[ -z "$exe" ] && exe=$arg
			[ "$arg" = mount ] && has_mount=1
			[ "$arg" = "$store" ] && has_store=1
		done <"$f" 2>/dev/null
		case "$exe" in *branchfs) ;; *) continue ;; esac
		if [ $has_mount = 1 ] && [ $has_store = 1 ]; then
			grep -qs '^State:.*Z' "/proc/$p/status" && continue
			echo "$p"
			return 0
		fi
	done
	return 1
}

# Peak resident memory of a process in KiB (VmHWM), or empty.
pgl_vmhwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# ---------------------------------------------------------------------------
# PostgreSQL

# pgl_initdb PGDATA [initdb options...]
pgl_initdb() {
	local pgdata=$1
	shift
	mkdir -p "$pgdata" || return 1
	chown "$PG_OSUSER:" "$pgdata" || return 1
	chmod 700 "$pgdata" || return 1
	pgl_as_pg "$PGBIN/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --no-locale "$@"
}

# Settings used by every server the tests and the benchmark start.  Stock
# defaults otherwise (fsync=on, synchronous_commit=on, full_page_writes=on).
PGL_SETTINGS=(
	-c listen_addresses=localhost
	-c shared_buffers=128MB
	-c max_connections=30
	-c max_wal_size=1GB
	-c fsync=on
	-c synchronous_commit=on
	-c full_page_writes=on
	-c log_checkpoints=on
)

# pgl_start PGDATA PORT SOCKDIR LOGFILE [-c name=value ...]
pgl_start() {
	local pgdata=$1 port=$2 sock=$3 log=$4 pid
	shift 4
	local opts="-p $port -k $sock ${PGL_SETTINGS[*]} $*"
	touch "$log" && chown "$PG_OSUSER:" "$log"
	case " ${PGL_LOGS[*]} " in *" $log "*) ;; *) PGL_LOGS+=("$log") ;; esac
	if ! pgl_as_pg "$PGBIN/pg_ctl" -D "$pgdata" -l "$log" -w -t 300 -o "$opts" start >/dev/null; then
		pgl_log "pg_ctl start failed for $pgdata; log tail:"
		tail -n 30 "$log" >&2
		return 1
	fi
	pid=$(head -n 1 "$pgdata/postmaster.pid" 2>/dev/null)
	[ -n "$pid" ] && PGL_POSTMASTERS+=("$pid:$pgdata")
	return 0
}

# Postmaster pid of a server started by pgl_start (from our record, so that
# it works when the PGDATA is on a dead mount).
pgl_postmaster_pid() {
	local e
	for e in "${PGL_POSTMASTERS[@]}"; do
		[ "${e#*:}" = "$1" ] && kill -0 "${e%%:*}" 2>/dev/null && { echo "${e%%:*}"; return 0; }
	done
	return 1
}

pgl_stop() {
	pgl_as_pg "$PGBIN/pg_ctl" -D "$1" -w -t 300 -m "${2:-fast}" stop >/dev/null
}

# Shared memory mapped by the given processes, one "sysv SHMID" or "posix
# PATH" per line: postgres's SysV interlock segment and its /dev/shm
# dynamic shared memory segments (the main segment is anonymous and dies
# with the processes).  A postgres killed with SIGKILL frees neither.
pgl_pg_shm() {
	local p
	for p in "$@"; do
		# a process that exits meanwhile has no maps: awk exits 2, which
		# under set -e and pipefail killed the calling test
		awk '$6 ~ /^\/SYSV[0-9a-fA-F]+$/ { print "sysv", $5 }
		     $6 ~ /^\/dev\/shm\/PostgreSQL\./ { print "posix", $6 }' "/proc/$p/maps" 2>/dev/null || true
	done | sort -u
}

# Free what pgl_pg_shm listed (on stdin), once its processes are gone.
# Returns 1 if a segment is still there afterwards.
pgl_pg_shm_free() {
	local kind x left=0
	while read -r kind x; do
		case $kind in
		sysv)
			ipcrm -m "$x" 2>/dev/null || true
			if ipcs -m | awk -v id="$x" '$2 == id { f = 1 } END { exit !f }'; then
				pgl_log "SysV shared memory segment $x still present"
				left=1
			fi
			;;
		posix)
			rm -f -- "$x"
			[ ! -e "$x" ] || { pgl_log "$x still present"; left=1; }
			;;
		esac
	done
	return $left
}

# Kill -9 a postmaster and every process it started; wait until they are
# gone, then free the shared memory they held.  Returns 1 if a process or
# a segment is left.
pgl_kill9_postmaster() {
	local pm=$1 kids i shm alive k
	kill -0 "$pm" 2>/dev/null || return 0
	kill -STOP "$pm" 2>/dev/null || true # no new backends from here on
	kids=$(ps -o pid= --ppid "$pm" 2>/dev/null || true)
	# shellcheck disable=SC2086
	shm=$(pgl_pg_shm "$pm" $kids)
	kill -9 "$pm" $kids 2>/dev/null || true
	for i in $(seq 1 100); do
		kill -0 "$pm" 2>/dev/null || break
		sleep 0.1
	done
	for i in $(seq 1 100); do
		alive=0
		for k in $kids; do kill -0 "$k" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	if kill -0 "$pm" 2>/dev/null || [ $alive = 1 ]; then
		pgl_log "postmaster $pm or one of its processes ($kids) survived kill -9"
		return 1
	fi
	[ -z "$shm" ] || pgl_pg_shm_free <<<"$shm"
}

# Stop every server we started: immediate shutdown, then SIGKILL.
pgl_stop_all() {
	local e pid pgdata
	for e in "${PGL_POSTMASTERS[@]}"; do
		pid=${e%%:*}
		pgdata=${e#*:}
		kill -0 "$pid" 2>/dev/null || continue
		# timeout: pg_ctl may block on a hung mount
		if [ "$(id -u)" -eq 0 ]; then
			(cd / && timeout 20 runuser -u "$PG_OSUSER" -- "$PGBIN/pg_ctl" -D "$pgdata" -w -t 15 \
				-m immediate stop) >/dev/null 2>&1
		else
			(cd / && timeout 20 "$PGBIN/pg_ctl" -D "$pgdata" -w -t 15 -m immediate stop) >/dev/null 2>&1
		fi
		pgl_kill9_postmaster "$pid"
	done
}

# SIGKILL a process we started and all its descendants, children first.
pgl_kill_tree() {
	local c
	kill -STOP "$1" 2>/dev/null || return 0
	for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
		pgl_kill_tree "$c"
	done
	kill -9 "$1" 2>/dev/null || true
}

pgl_cleanup() {
	local rc=$? m j f
	set +e
	trap - EXIT INT TERM
	cd /
	for j in "${PGL_BGPIDS[@]}"; do
		pgl_kill_tree "$j"
	done
	pgl_stop_all
	if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
		for f in "${PGL_LOGS[@]}"; do
			[ -s "$f" ] || continue
			echo "---- tail of $f" >&2
			tail -n 25 "$f" >&2
		done
	fi
	if [ -n "${PGL_WITH_BFS:-}" ]; then
		# unmounts, kills stray daemons, removes $BFS_WORK, exits with rc
		(exit $rc)
		bfs_cleanup
	fi
	for ((j = ${#PGL_MOUNTS[@]} - 1; j >= 0; j--)); do
		m=${PGL_MOUNTS[$j]}
		pgl_is_mounted "$m" && pgl_umount "$m" >/dev/null 2>&1
	done
	if [ -n "$PGL_WORKDIR" ] && [ -d "$PGL_WORKDIR" ]; then
		for m in "${PGL_MOUNTS[@]}"; do
			if pgl_is_mounted "$m"; then
				pgl_log "$m still mounted; leaving $PGL_WORKDIR in place"
				exit $rc
			fi
		done
		if [ -n "${PGL_KEEP:-}" ] && [ $rc -ne 0 ]; then
			pgl_log "PGL_KEEP set: leaving $PGL_WORKDIR"
		else
			rm -rf --one-file-system "$PGL_WORKDIR"
		fi
	fi
	exit $rc
}

# psql as database user postgres over the unix socket: pgl_psql PORT SOCKDIR [args]
pgl_psql() {
	local port=$1 sock=$2
	shift 2
	"$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres "$@"
}

# TPS figure from pgbench output on stdin.
pgl_tps() { awk '/^tps = / { print $3; exit }'; }

# One line that changes when any pgbench table changes: count and an
# order-independent hash per table.
pgl_pgbench_digest() {
	pgl_psql "$1" "$2" -c "
	select 'accounts', count(*), coalesce(sum(hashtext(t::text)::bigint), 0) from pgbench_accounts t
	union all select 'branches', count(*), coalesce(sum(hashtext(t::text)::bigint), 0) from pgbench_branches t
	union all select 'tellers', count(*), coalesce(sum(hashtext(t::text)::bigint), 0) from pgbench_tellers t
	union all select 'history', count(*), coalesce(sum(hashtext(t::text)::bigint), 0) from pgbench_history t"
}

# pgbench's invariant: every transaction adds the same delta to one account,
# teller and branch and one history row; the sums agree after any crash.
pgl_pgbench_invariant() {
	local out
	out=$(pgl_psql "$1" "$2" -c "
	select (select coalesce(sum(abalance), 0) from pgbench_accounts),
	       (select coalesce(sum(bbalance), 0) from pgbench_branches),
	       (select coalesce(sum(tbalance), 0) from pgbench_tellers),
	       (select coalesce(sum(delta), 0) from pgbench_history)") || return 1
	echo "$out"
	awk -F'|' '{ exit !($1 == $2 && $2 == $3 && $3 == $4) }' <<<"$out"
}

# amcheck: every btree index (bt_index_check with heapallindexed) and every
# heap (pg_amcheck) of every database; non-zero on any finding.
pgl_amcheck() {
	local port=$1 sock=$2 out
	pgl_psql "$port" "$sock" -c "create extension if not exists amcheck" || return 1
	out=$(pgl_psql "$port" "$sock" -c "
	select count(*) from (
	  select bt_index_check(index => c.oid, heapallindexed => true)
	  from pg_index i join pg_class c on c.oid = i.indexrelid
	  join pg_am am on am.oid = c.relam
	  where am.amname = 'btree' and c.relpersistence <> 't' and i.indisready and i.indisvalid
	) s") || return 1
	pgl_log "bt_index_check clean on $out btree indexes"
	PGOPTIONS="-c client_min_messages=warning" "$PGBIN/pg_amcheck" -h "$sock" -p "$port" -U postgres --all --install-missing \
		--heapallindexed --parent-check --no-strict-names 2>&1 || return 1
	pgl_log "pg_amcheck --all --heapallindexed --parent-check clean"
}

pgl_checksums() {
	pgl_as_pg "$PGBIN/pg_checksums" --check -D "$1"
}

# ---------------------------------------------------------------------------
# Crashes: acknowledged commits, killed daemons

# pgl_ack_setup PORT SOCK: the table pgl_ack_client fills.
pgl_ack_setup() {
	pgl_psql "$1" "$2" -c "
	create table acked (id bigserial primary key, client int not null, seq bigint not null,
	                    pad text not null);
	create index on acked (client, seq);"
}

# pgl_ack_client PORT SOCK CLIENT ROUND ACKFILE ERRFILE: one psql session
# fed an endless stream of single-row INSERTs into `acked`.  In autocommit
# mode psql prints the RETURNING id only once the server has answered, i.e.
# after the commit (WAL flushed: synchronous_commit=on); stdout is line
# buffered straight into ACKFILE, so ACKFILE holds acknowledged ids only.
# Runs until killed or until the server goes away; run it in the background.
pgl_ack_client() {
	local port=$1 sock=$2 c=$3 round=$4 ack=$5 err=$6
	set +e
	seq 1 100000000 |
		awk -v c="$c" -v r="$round" '{ printf "insert into acked (client, seq, pad) values (%d, %d, repeat(md5(%d::text), 4)) returning id;\n", c, r * 1000000000 + $1, $1 }' |
		stdbuf -oL "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres \
			-f - >>"$ack" 2>>"$err"
}

# pgl_ack_verify PORT SOCK TMPDIR ACKFILE...: every id in the ACKFILEs is in
# table `acked`.  Prints "ACKNOWLEDGED PRESENT" (counts); on a missing id
# lists up to 20 of them on stderr and returns 1.  Scratch files go to TMPDIR.
pgl_ack_verify() {
	local port=$1 sock=$2 dir=$3 f missing
	shift 3
	for f in "$@"; do
		if grep -vqE '^[0-9]+$' "$f"; then
			grep -vnE '^[0-9]+$' "$f" | head >&2
			pgl_log "garbage in ack file $f"
			return 1
		fi
	done
	# comm needs the byte order of sort, not numeric order
	cat -- "$@" | LC_ALL=C sort >"$dir/acked"
	pgl_psql "$port" "$sock" -c "select id from acked" | LC_ALL=C sort >"$dir/present" || return 1
	missing=$(LC_ALL=C comm -23 "$dir/acked" "$dir/present" | wc -l)
	if [ "$missing" -ne 0 ]; then
		LC_ALL=C comm -23 "$dir/acked" "$dir/present" | head -n 20 >&2
		pgl_log "$missing of $(wc -l <"$dir/acked") acknowledged ids are missing"
		return 1
	fi
	echo "$(wc -l <"$dir/acked") $(wc -l <"$dir/present")"
}

# pgl_kill9_daemon PID: kill -9 a branchfs daemon; wait until it is gone.
pgl_kill9_daemon() {
	local i
	kill -9 "$1" 2>/dev/null || true # may be gone already
	for i in $(seq 1 100); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	pgl_log "daemon $1 survived kill -9"
	return 1
}

# pgl_umount_stale MNT: remove the mount a killed daemon left behind
# ("Transport endpoint is not connected") with `branchfs umount`.
pgl_umount_stale() {
	"$BRANCHFS" umount "$1" || { pgl_log "branchfs umount of the stale mount $1 failed"; return 1; }
	! pgl_is_mounted "$1" || { pgl_log "$1 still mounted after branchfs umount"; return 1; }
}
