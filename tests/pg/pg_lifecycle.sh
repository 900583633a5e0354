#!/usr/bin/env bash
# PostgreSQL lifecycle on a branchfs mount:
#   initdb --data-checksums on MNT/main/pgdata (as postgres), start,
#   pgbench -i -s 10, pgbench -T 20 -c 4, digest of every table, stop,
#   branchfs umount, mount again, start, digests identical, pgbench invariant,
#   amcheck (bt_index_check + pg_amcheck --heapallindexed) clean, stop,
#   pg_checksums --check clean.
# Exit 0 = pass, 1 = fail, 77 = skip.  Knobs: PG_SCALE (10), PG_SECS (20).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# The e2e harness's lib (work dir, mount cleanup) when present; pg-lib.sh
# adds postgres on top and works without it.
if [ -f "$HERE/../e2e/lib.sh" ]; then
	. "$HERE/../e2e/lib.sh"
fi
. "$HERE/../../scripts/pg-lib.sh"
pgl_require

SCALE=${PG_SCALE:-10}
SECS=${PG_SECS:-20}

pgl_workdir pg-lifecycle
W=$PGL_WORKDIR
STORE=$W/store
MNT=$W/mnt
SOCK=$W/sock
PGDATA=$MNT/main/pgdata
PGLOG=$W/postgres.log
pgl_pgdir "$SOCK"
PORT=$(pgl_free_port) || pgl_die "no free port"

pgl_init "$STORE" || pgl_die "branchfs init"
pgl_mount "$STORE" "$MNT" || pgl_die "branchfs mount"

t=$(pgl_now)
pgl_initdb "$PGDATA" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb --data-checksums on the mount"
}
pgl_log "initdb: $(pgl_elapsed "$t") s"

pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" || pgl_die "start postgres"
t=$(pgl_now)
"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$W/pgbench-i.log" 2>&1 || {
	tail -n 20 "$W/pgbench-i.log" >&2
	pgl_die "pgbench -i -s $SCALE"
}
pgl_log "pgbench -i -s $SCALE: $(pgl_elapsed "$t") s"

"$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -T "$SECS" -c 4 -j 2 postgres >"$W/pgbench.log" 2>&1 || {
	tail -n 20 "$W/pgbench.log" >&2
	pgl_die "pgbench -T $SECS -c 4"
}
pgl_log "pgbench -T $SECS -c 4: tps $(pgl_tps <"$W/pgbench.log")"
! grep -q '^number of failed transactions: [1-9]' "$W/pgbench.log" ||
	pgl_die "pgbench: $(grep failed "$W/pgbench.log")"

before=$(pgl_pgbench_digest "$PORT" "$SOCK") || pgl_die "digest before restart"
pgl_log "before: $(echo $before)"
[ "$(awk -F'|' '$1 == "accounts" { print $2 }' <<<"$before")" = "$((SCALE * 100000))" ] ||
	pgl_die "pgbench_accounts does not hold $((SCALE * 100000)) rows"
[ "$(awk -F'|' '$1 == "history" { print $2 }' <<<"$before")" -gt 0 ] || pgl_die "no pgbench_history rows"

pgl_stop "$PGDATA" || pgl_die "pg_ctl stop"
pgl_umount "$MNT" || pgl_die "branchfs umount"
pgl_is_mounted "$MNT" && pgl_die "$MNT still mounted after branchfs umount"
pgl_mount "$STORE" "$MNT" || pgl_die "second mount"

pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" || pgl_die "start postgres after remount"
after=$(pgl_pgbench_digest "$PORT" "$SOCK") || pgl_die "digest after restart"
if [ "$before" != "$after" ]; then
	diff <(echo "$before") <(echo "$after") >&2 || true
	pgl_die "tables differ after unmount and remount"
fi
pgl_log "tables identical after umount/mount"
inv=$(pgl_pgbench_invariant "$PORT" "$SOCK") || pgl_die "pgbench invariant broken: $inv"
pgl_amcheck "$PORT" "$SOCK" || pgl_die "amcheck reported corruption"
pgl_stop "$PGDATA" || pgl_die "pg_ctl stop after checks"
pgl_checksums "$PGDATA" || pgl_die "pg_checksums --check"
grep -E 'PANIC|could not (write|fsync|read|open)|invalid page|checksum verification failed' "$PGLOG" >&2 &&
	pgl_die "errors in the postgres log"
pgl_log "PASS"
