#!/usr/bin/env bash
# The README's first command, scripts/quickstart.sh, on a store, mountpoint
# and socket directory inside this test's work directory (dependencies and
# build skipped: the suite already built the tree).  It must:
#   - create the store, mount it in write-back mode (the daemon log says so),
#     initdb with data checksums and start postgres; print a connection
#     string that works;
#   - be idempotent: a second `start` keeps the server and its data;
#   - `status` report mount and server; `stop` stop postgres and unmount;
#   - with BRANCHFS_WRITEBACK=0 mount write-through; a bad value is refused
#     without mounting.
# Exit 0 = pass, 1 = fail, 77 = skip.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

pgl_workdir pg-quickstart
W=$PGL_WORKDIR
QS=$HERE/../../scripts/quickstart.sh
export BRANCHFS_STORE=$W/store BRANCHFS_MNT=$W/mnt BRANCHFS_PGSOCK=$W/sock
export QUICKSTART_SKIP_DEPS=1 QUICKSTART_SKIP_BUILD=1
pgl_pgdir "$W/sock"
pgl_new_port PORT 56000 900
export BRANCHFS_PGPORT=$PORT
PGDATA=$W/mnt/main/pgdata
# Cleanup (also on failure): pgl_cleanup stops the servers recorded here
# (and, with tests/e2e/lib.sh, any postgres working in this directory),
# unmounts the recorded mounts and kills a daemon of a recorded store that
# survived its unmount.  The postgres log lives on the mount: not tailed.
PGL_MOUNTS+=("$W/mnt")
if [ -n "${PGL_WITH_BFS:-}" ]; then
	BFS_STORES+=("$W/store")
else
	PGL_LOGS+=("$W/store/branchfs.log")
fi

record_server() {
	local pid
	pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 0
	[ -n "$pid" ] && PGL_POSTMASTERS+=("$pid:$PGDATA")
	return 0
}

# A process is gone when it no longer exists or is a zombie (pid 1 of a
# container may reap late).
gone() {
	local st
	for _ in $(seq 1 50); do
		st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
		[ "$st" = Z ] && return 0
		sleep 0.1
	done
	return 1
}

conn_of() { sed -n 's/^ *connection string: *//p' "$1"; }

q() { "$PGBIN/psql" -X -qAt "$1" -c "$2"; }

# ---- first start: everything from nothing ----------------------------------
"$QS" start >"$W/qs1.out" 2>&1 || {
	cat "$W/qs1.out" >&2
	pgl_die "quickstart start failed"
}
record_server
pgl_is_mounted "$W/mnt" || pgl_die "quickstart did not mount $W/mnt"
grep -q "mode: writeback" "$W/store/branchfs.log" ||
	pgl_die "the mount is not in write-back mode: $(grep 'mode:' "$W/store/branchfs.log")"
URL=$(conn_of "$W/qs1.out")
[ -n "$URL" ] || pgl_die "no connection string printed: $(cat "$W/qs1.out")"
case $URL in *":$PORT/"*) ;; *) pgl_die "connection string $URL is not on port $PORT" ;; esac
[ "$(q "$URL" "show data_checksums")" = on ] || pgl_die "data checksums are off"
q "$URL" "create table t as select g from generate_series(1, 1000) g" ||
	pgl_die "cannot write through $URL"

# ---- idempotent: a second start keeps the server and its data ----------------
pid1=$(head -n 1 "$PGDATA/postmaster.pid")
"$QS" start >"$W/qs2.out" 2>&1 || {
	cat "$W/qs2.out" >&2
	pgl_die "second quickstart start failed"
}
[ "$(head -n 1 "$PGDATA/postmaster.pid")" = "$pid1" ] || pgl_die "second start restarted postgres"
[ "$(conn_of "$W/qs2.out")" = "$URL" ] || pgl_die "second start printed another connection string"
[ "$(q "$URL" "select count(*) from t")" = 1000 ] || pgl_die "rows lost by the second start"

"$QS" status >"$W/status.out" 2>&1 || pgl_die "status failed: $(cat "$W/status.out")"
grep -qF "mounted: $W/store on $W/mnt" "$W/status.out" || pgl_die "status: $(cat "$W/status.out")"
grep -q "postgres running" "$W/status.out" || pgl_die "status: $(cat "$W/status.out")"

# ---- stop: server down, mount gone --------------------------------------------
"$QS" stop >"$W/stop.out" 2>&1 || pgl_die "stop failed: $(cat "$W/stop.out")"
gone "$pid1" || pgl_die "postgres $pid1 still running after stop"
! pgl_is_mounted "$W/mnt" || pgl_die "$W/mnt still mounted after stop"

# ---- a bad BRANCHFS_WRITEBACK is refused before mounting ----------------------
if BRANCHFS_WRITEBACK=yes "$QS" start >"$W/bad.out" 2>&1; then
	pgl_die "BRANCHFS_WRITEBACK=yes was accepted"
fi
grep -q "BRANCHFS_WRITEBACK must be 0 or 1" "$W/bad.out" || pgl_die "unclear message: $(cat "$W/bad.out")"
! pgl_is_mounted "$W/mnt" || pgl_die "mounted despite a bad BRANCHFS_WRITEBACK"

# ---- write-through on request; the data survived the remount -----------------
logged=$(wc -l <"$W/store/branchfs.log")
BRANCHFS_WRITEBACK=0 "$QS" start >"$W/qs3.out" 2>&1 || {
	cat "$W/qs3.out" >&2
	pgl_die "quickstart start (write-through) failed"
}
record_server
mode=$(tail -n +$((logged + 1)) "$W/store/branchfs.log" | grep 'mode:') || true
grep -q "mode: write-through" <<<"$mode" ||
	pgl_die "BRANCHFS_WRITEBACK=0 did not mount write-through: '$mode'"
[ "$(q "$URL" "select count(*) from t")" = 1000 ] || pgl_die "rows lost across stop and start"
pid2=$(head -n 1 "$PGDATA/postmaster.pid")
"$QS" stop >"$W/stop2.out" 2>&1 || pgl_die "second stop failed: $(cat "$W/stop2.out")"
gone "$pid2" || pgl_die "postgres $pid2 still running after the second stop"
! pgl_is_mounted "$W/mnt" || pgl_die "$W/mnt still mounted after the second stop"
pgl_log "quickstart: start, restart, status, stop, write-through: ok"
