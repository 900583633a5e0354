#!/usr/bin/env bash
# scripts/quickstart.sh - from a fresh machine to PostgreSQL running on branchfs.
#
#   scripts/quickstart.sh [start]   install deps, build, create/mount the store,
#                                   initdb + start postgres on MNT/main/pgdata,
#                                   print the connection string
#   scripts/quickstart.sh status    show the mount and the server
#   scripts/quickstart.sh stop      stop postgres, unmount
#
# Idempotent: an existing store is reused, a live mount is kept, an existing
# PGDATA is not initialised again, a running server is left running.
#
# Environment:
#   BRANCHFS_STORE   store directory   (default ~/.local/share/branchfs/store)
#   BRANCHFS_MNT     mountpoint        (default /tmp/branchfs)
#   BRANCHFS_PGPORT  port for postgres (default: the one recorded in the
#                    PGDATA, else the first free port from 5432)
#   BRANCHFS_PGSOCK  unix socket directory of postgres (default /tmp)
#   BRANCHFS_WRITEBACK  1 (default): mount with --writeback, the mode for
#                    PostgreSQL (kernel writeback cache; snapshots are
#                    crash-consistent, which is all PostgreSQL relies on);
#                    0: write-through, what a plain `branchfs mount` does
#                    (snapshots are exact instants of every write; slower).
#                    Applies when quickstart mounts; a live mount is kept
#                    as it is (run stop first to change the mode).
#   QUICKSTART_SKIP_DEPS=1  do not run scripts/install-deps.sh
#   QUICKSTART_SKIP_BUILD=1 do not run make
#
# As root, postgres runs as the `postgres` user (the mount is served with
# allow_other,default_permissions); as another user it runs as that user.
# The server listens on localhost only, with trust authentication: it is a
# development database, not a production setup.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STORE=${BRANCHFS_STORE:-$HOME/.local/share/branchfs/store}
MNT=${BRANCHFS_MNT:-/tmp/branchfs}
SOCKDIR=${BRANCHFS_PGSOCK:-/tmp}
PGDATA=$MNT/main/pgdata
CMD=${1:-start}

say() { printf 'quickstart: %s\n' "$*"; }
die() {
	printf 'quickstart: error: %s\n' "$*" >&2
	exit 1
}

case "$CMD" in
start | status | stop) ;;
-h | --help | help)
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown command '$CMD' (start, status, stop)" ;;
esac

# Mount options for start, checked before anything is installed, built or
# created.
mopts=()
if [ "$CMD" = start ]; then
	case ${BRANCHFS_WRITEBACK:-1} in
	1) mopts=(--writeback) ;;
	0) ;;
	*) die "BRANCHFS_WRITEBACK must be 0 or 1, not '${BRANCHFS_WRITEBACK}'" ;;
	esac
	if [ -z "${QUICKSTART_SKIP_DEPS:-}" ]; then
		say "installing dependencies (scripts/install-deps.sh)"
		"$ROOT/scripts/install-deps.sh"
	fi
	if [ -z "${QUICKSTART_SKIP_BUILD:-}" ]; then
		say "building (make)"
		make -C "$ROOT" -j"$(nproc)" >/dev/null || die "build failed; run make in $ROOT to see why"
	fi
fi

# pg-lib.sh locates the PostgreSQL binaries, so source it after install-deps.
. "$ROOT/scripts/pg-lib.sh"
[ -x "$BRANCHFS" ] || die "$BRANCHFS not built (run make in $ROOT)"
[ -n "$PGBIN" ] || die "no PostgreSQL server binaries found (scripts/install-deps.sh installs them)"

# 0 = mounted and answering, 1 = not mounted, 2 = stale (daemon gone)
mount_state() {
	if ! pgl_is_mounted "$MNT"; then
		return 1
	fi
	if stat "$MNT/main" >/dev/null 2>&1; then
		return 0
	fi
	return 2
}

# Postmasters left running on a stale mount (their daemon died): postgres
# processes whose working directory is $PGDATA.  postmaster.pid cannot be
# read through a dead mount, so look at /proc.
orphan_postmasters() {
	local p cwd
	for p in /proc/[0-9]*; do
		[ "$(cat "$p/comm" 2>/dev/null)" = postgres ] || continue
		cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
		cwd=${cwd% (deleted)}
		[ "$cwd" = "$PGDATA" ] || continue
		# only the postmaster: its parent is not a postgres process
		[ "$(cat "/proc/$(awk '{ print $4 }' "$p/stat")/comm" 2>/dev/null)" = postgres ] && continue
		echo "${p#/proc/}"
	done
}

kill_orphans() {
	local pids i
	pids=$(orphan_postmasters)
	[ -n "$pids" ] || return 0
	say "stopping postgres left on the dead mount (pid $pids)"
	kill -QUIT $pids 2>/dev/null || true
	for i in $(seq 1 50); do
		kill -0 $pids 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL $pids 2>/dev/null || true
	sleep 0.5
}

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && pgl_as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
pg_port() { sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null; }

print_conn() {
	local port=$1
	cat <<EOF

PostgreSQL is running on branchfs.
  store:      $STORE
  mount:      $MNT   (branch main: $MNT/main)
  PGDATA:     $PGDATA
  log:        $PGDATA/postgresql.log

  connection string:  postgresql://postgres@localhost:$port/postgres
  psql:               psql "postgresql://postgres@localhost:$port/postgres"

Stop postgres and unmount:  $ROOT/scripts/quickstart.sh stop
EOF
}

if [ "$CMD" = status ]; then
	set +e
	mount_state
	case $? in
	0) say "mounted: $STORE on $MNT" ;;
	1) say "not mounted: $MNT" ;;
	2) say "stale mount on $MNT (daemon gone): run $0 stop" ;;
	esac
	if mount_state && pg_running; then
		say "postgres running: postgresql://postgres@localhost:$(pg_port)/postgres"
	else
		say "postgres not running"
	fi
	exit 0
fi

if [ "$CMD" = stop ]; then
	set +e
	mount_state
	st=$?
	if [ $st = 0 ] && pg_running; then
		say "stopping postgres ($PGDATA)"
		pgl_as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -w -t 300 -m fast stop >/dev/null ||
			die "pg_ctl stop failed"
	fi
	[ $st = 2 ] && kill_orphans
	if [ $st != 1 ]; then
		say "unmounting $MNT"
		"$BRANCHFS" umount "$MNT" || die "branchfs umount $MNT failed"
	fi
	say "stopped"
	exit 0
fi

# ---- start ------------------------------------------------------------------

# The store.
if [ -d "$STORE" ] && [ -n "$(ls -A "$STORE" 2>/dev/null)" ]; then
	say "reusing store $STORE"
else
	mkdir -p "$(dirname "$STORE")"
	say "creating store $STORE"
	"$BRANCHFS" init "$STORE" || die "branchfs init $STORE failed"
fi

# The mount.  The mountpoint must be traversable by the postgres user.
set +e
mount_state
st=$?
set -e
if [ $st = 2 ]; then
	kill_orphans
	say "cleaning a stale mount on $MNT"
	"$BRANCHFS" umount "$MNT" || die "branchfs umount $MNT failed"
	st=1
fi
if [ $st = 1 ]; then
	if [ -e "$MNT" ] && [ "$(stat -c %u "$MNT")" != "$(id -u)" ]; then
		die "$MNT exists and belongs to someone else; set BRANCHFS_MNT"
	fi
	mkdir -p "$MNT"
	chmod 755 "$MNT"
	say "mounting $STORE on $MNT${mopts:+ (${mopts[*]})}"
	"$BRANCHFS" mount "$STORE" "$MNT" "${mopts[@]}" || die "branchfs mount failed (see $STORE/branchfs.log)"
else
	say "$MNT is already mounted (kept as it is; BRANCHFS_WRITEBACK applies at the next mount: run '$0 stop' first to change the mode)"
fi
[ -d "$MNT/main" ] || die "$MNT/main missing: is $MNT a branchfs mount?"

# The cluster.
if [ ! -f "$PGDATA/PG_VERSION" ]; then
	if [ -d "$PGDATA" ] && [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
		die "$PGDATA exists, is not empty and holds no cluster; move it away"
	fi
	say "initdb --data-checksums on $PGDATA (as $PG_OSUSER)"
	pgl_initdb "$PGDATA" --data-checksums >/dev/null || die "initdb failed"
	cat >>"$PGDATA/postgresql.conf" <<EOF

# added by branchfs scripts/quickstart.sh
listen_addresses = 'localhost'
unix_socket_directories = '$SOCKDIR'
EOF
fi

if pg_running; then
	port=$(pg_port)
	say "postgres already running on port $port"
	print_conn "$port"
	exit 0
fi

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
conf_port=$(sed -n "s/^port = \([0-9]*\).*# branchfs quickstart$/\1/p" "$PGDATA/postgresql.conf" | tail -n 1)
port=${BRANCHFS_PGPORT:-}
if [ -z "$port" ] && [ -n "$conf_port" ] && port_free "$conf_port"; then
	port=$conf_port
fi
if [ -z "$port" ]; then
	for p in $(seq 5432 5532); do
		if port_free "$p"; then
			port=$p
			break
		fi
	done
fi
[ -n "$port" ] || die "no free port in 5432..5532; set BRANCHFS_PGPORT"
port_free "$port" || die "port $port is in use; set BRANCHFS_PGPORT"
if [ "$port" != "$conf_port" ]; then
	echo "port = $port # branchfs quickstart" >>"$PGDATA/postgresql.conf"
fi

say "starting postgres on port $port"
pgl_as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/postgresql.log" -w -t 300 start >/dev/null || {
	tail -n 20 "$PGDATA/postgresql.log" >&2 || true
	die "pg_ctl start failed"
}
pgl_psql "$port" localhost -c "select 1" >/dev/null || die "postgres started but does not answer on port $port"
print_conn "$port"
