#!/usr/bin/env bash
# Full disk.  The store lives on a small ext4 filesystem (an image file in
# the work directory, mounted -o loop); postgres runs on MNT/main, and a
# branch `scratch` holds a big file.  Postgres inserts incompressible rows,
# recording each committed batch, until the disk is full.  What branchfs
# guarantees, and this test checks:
#   - postgres gets "No space left on device" (a PANIC on a WAL write is
#     postgres's own answer to that), never wrong data;
#   - the daemon stays up and serves reads (the scratch file reads back
#     byte for byte); writes through the mount and CLI writes fail with
#     ENOSPC and a clear message, promptly, never EIO or a hang; CLI reads
#     work;
#   - `branchfs branch delete scratch` and `branchfs gc` work on the full
#     disk (the store's 64 MiB reserve is spent if need be); once the other
#     process that filled the disk frees its files, `branchfs gc` gives the
#     branch's space back: df of the loop filesystem shows it;
#   - without a remount, writes work again: postgres restarts (crash
#     recovery), every committed batch is there, new inserts work, amcheck
#     and pg_checksums are clean, and `branchfs check` of the unmounted
#     store is clean.
# Knobs: PG_FULL_MB (ext4 size, 400), PG_FULL_BLOB_MB (scratch file, 120),
# PG_FULL_ROOM_MB (room left for postgres to fill, 48).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../e2e/lib.sh"
. "$HERE/../../scripts/pg-lib.sh"
pgl_require
command -v mkfs.ext4 >/dev/null || bfs_skip "mkfs.ext4 (e2fsprogs) missing"
command -v losetup >/dev/null || bfs_skip "losetup (util-linux) missing"

FS_MB=${PG_FULL_MB:-400}
BLOB_MB=${PG_FULL_BLOB_MB:-120}
ROOM_MB=${PG_FULL_ROOM_MB:-48}

pgl_workdir pg-full-disk
W=$PGL_WORKDIR
FS=$W/fs
STORE=$FS/store
MNT=$W/mnt
SOCK=$W/sock
PGDATA=$MNT/main/pgdata
PGLOG=$W/postgres.log
ACKED=$W/acked
pgl_pgdir "$SOCK"
PORT=$(pgl_free_port 55100 400) || pgl_die "no free port"
export BRANCHFS_STORE=$STORE

bfs_step "a ${FS_MB} MiB ext4 filesystem on a loop device"
bfs_loop_ext4 "$FS" "$FS_MB"
LOOPDEV=$(findmnt -n -o SOURCE "$FS")
bfs_log "loop device $LOOPDEV"
avail() { df -B1 --output=avail "$FS" | tail -n1 | tr -d ' '; }
db_bytes() { du -sb "$STORE/db" | cut -f1; }
mib() { echo $(($1 >> 20)); }

bfs_init "$STORE"
bfs_mount "$STORE" "$MNT"
DAEMON=$(bfs_daemon_pid "$STORE")
[ -f "$STORE/reserve" ] || bfs_fail "no $STORE/reserve after mount"
bfs_log "free after mount: $(mib "$(avail)") MiB (reserve $(mib "$(stat -c %s "$STORE/reserve")") MiB)"

bfs_step "initdb, committed rows, a branch with a ${BLOB_MB} MiB file"
pgl_initdb "$PGDATA" --data-checksums >"$W/initdb.log" 2>&1 || {
	cat "$W/initdb.log" >&2
	pgl_die "initdb"
}
pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" || pgl_die "start postgres"
psqlc() { pgl_psql "$PORT" "$SOCK" "$@"; }
psqlc -c "
	create table base (id int primary key, v text);
	insert into base select g, md5(g::text) from generate_series(1, 20000) g;
	create table fill (batch int not null, v text not null);
	alter table fill alter column v set storage external;
	checkpoint" || pgl_die "create tables"
BASE=$(psqlc -c "select count(*), sum(hashtext(v)) from base")
"$BRANCHFS" branch create scratch >/dev/null || bfs_fail "branch create scratch"
head -c "${BLOB_MB}M" /dev/urandom >"$W/blob.tmp" 2>/dev/null || true
# the blob is kept on the host disk too, to compare reads
cp "$W/blob.tmp" "$MNT/scratch/blob"
sync "$MNT/scratch/blob"
BLOB_SUM=$(sha256sum <"$W/blob.tmp")
rm "$W/blob.tmp"
# Let RocksDB finish flushing what the copy wrote and drop the WAL it
# covered (with --writeback the whole blob arrives at the sync above):
# wait until the free space holds still for 2 s (at most 30 s).
prev=-1 still=0
for _ in $(seq 1 60); do
	cur=$(avail)
	if [ "$cur" = "$prev" ]; then
		still=$((still + 1))
		[ $still -ge 4 ] && break
	else
		still=0
	fi
	prev=$cur
	sleep 0.5
done
[ "$(avail)" -gt $((ROOM_MB * 1048576)) ] ||
	bfs_fail "only $(mib "$(avail)") MiB free after the setup, need more than $ROOM_MB"
# Another process takes all but ROOM_MB of the disk: postgres fills that.
fallocate -l $(($(avail) - ROOM_MB * 1048576)) "$FS/filler" || bfs_fail "fallocate the filler"
bfs_log "free before the fill: $(mib "$(avail)") MiB (filler $(mib "$(stat -c %s "$FS/filler")") MiB)"

bfs_step "fill the disk through postgres"
# 1000 rows of 8,000 hex characters a statement (zstd halves hex, so
# ~4 MiB stored plus as much WAL); each committed batch is recorded.
: >"$ACKED"
full=0
for batch in $(seq 1 200); do
	if out=$(psqlc -c "insert into fill
		select $batch, (select string_agg(md5(random()::text || g || x), '')
		                from generate_series(1, 250) x)
		from generate_series(1, 1000) g" 2>&1); then
		echo "$batch" >>"$ACKED"
		continue
	fi
	bfs_log "batch $batch failed: $(head -c 300 <<<"$out")"
	full=1
	break
done
[ $full = 1 ] || bfs_fail "200 batches fit in ${ROOM_MB} MiB?"
NACK=$(wc -l <"$ACKED")
bfs_log "$NACK batches committed before the disk was full; free now $(mib "$(avail)") MiB"
grep -q 'No space left on device' <<<"$out" ||
	grep -q 'No space left on device' "$PGLOG" ||
	bfs_fail "postgres never said 'No space left on device'"
! grep -E 'invalid page|checksum verification failed|could not read' "$PGLOG" >&2 ||
	bfs_fail "postgres read bad data"

bfs_step "the disk full: the daemon serves reads, writes fail with ENOSPC"
kill -0 "$DAEMON" 2>/dev/null || bfs_fail "the daemon died"
# Whatever room postgres's failure left (RocksDB deletes the table file it
# could not finish), the other process takes too.
dd if=/dev/zero of="$FS/filler2" bs=1M status=none 2>/dev/null || true
sync -f "$FS" || true
bfs_log "free: $(avail) bytes"
[ "$(sha256sum <"$MNT/scratch/blob")" = "$BLOB_SUM" ] || bfs_fail "scratch/blob reads back wrong on the full disk"
[ "$(cat "$PGDATA/PG_VERSION")" -ge 10 ] || bfs_fail "cannot read PG_VERSION"
ls "$PGDATA/base" >/dev/null || bfs_fail "cannot list pgdata/base"
# a write that cannot fit: 64 MiB of random data
rc=0
err=$(head -c 64M /dev/urandom | dd of="$MNT/main/big-write" bs=1M iflag=fullblock conv=fsync status=none 2>&1) || rc=$?
bfs_log "64 MiB write on the full disk: exit $rc: $err"
[ $rc -ne 0 ] || bfs_fail "a 64 MiB write succeeded on a full disk"
grep -q 'No space left on device' <<<"$err" || bfs_fail "the failed write says '$err', want ENOSPC"
rm -f "$MNT/main/big-write" 2>/dev/null || true
t0=$(date +%s)
bfs_expect_fail 1 timeout 60 "$BRANCHFS" snapshot create main on-full-disk
grep -q 'No space left on device' <<<"$BFS_ERR" || bfs_fail "snapshot create on a full disk: unclear message: $BFS_ERR"
bfs_expect_fail 1 timeout 60 "$BRANCHFS" branch create on-full-disk
grep -q 'No space left on device' <<<"$BFS_ERR" || bfs_fail "branch create on a full disk: unclear message: $BFS_ERR"
bfs_log "two refused CLI writes took $(($(date +%s) - t0)) s"
list=$(timeout 60 "$BRANCHFS" branch list --json) || bfs_fail "branch list on a full disk"
bfs_json_valid <<<"$list" || bfs_fail "branch list --json: not JSON: $list"
grep -q on-full-disk <<<"$list$("$BRANCHFS" snapshot list)" && bfs_fail "a refused create left a record: $list"
timeout 60 "$BRANCHFS" stats "$STORE" >/dev/null || bfs_fail "stats on a full disk"
kill -0 "$DAEMON" 2>/dev/null || bfs_fail "the daemon died"

bfs_step "delete the branch and gc: space comes back"
before=$(avail)
db_before=$(db_bytes)
t0=$(date +%s)
timeout 120 "$BRANCHFS" branch delete scratch || bfs_fail "branch delete scratch on the full disk"
bfs_log "branch delete on the full disk took $(($(date +%s) - t0)) s"
[ ! -e "$MNT/scratch" ] || bfs_fail "MNT/scratch still there"
if [ -e "$STORE/reserve" ]; then
	bfs_log "the delete did not need the reserve"
else
	bfs_log "the delete spent the reserve: $(grep -c 'released the' "$STORE/branchfs.log") release(s) logged"
fi
# gc on the disk still full: it finishes (pruning and freeing blocks work),
# but the compaction that would give the space back to the filesystem needs
# room for the live data it rewrites, which a full disk does not have (see
# README, "Full disk").
timeout 300 "$BRANCHFS" gc || bfs_fail "gc on the full disk"
sync -f "$FS" || true
bfs_log "free: $(mib "$before") MiB before the delete, $(mib "$(avail)") MiB after gc on the full disk"
# The other process frees its files.  RocksDB keeps refusing compactions
# after one failed for lack of room until much more is free than the
# compaction needs, so (a known limit, README "Full disk") gc gives the
# branch's space back after a remount.
rm -f "$FS/filler" "$FS/filler2"
if PM=$(pgl_postmaster_pid "$PGDATA"); then
	pgl_stop "$PGDATA" immediate >/dev/null 2>&1 || pgl_kill9_postmaster "$PM"
fi
timeout 300 "$BRANCHFS" gc || bfs_fail "gc after the filler went"
sync -f "$FS" || true
before=$(avail)
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
timeout 300 "$BRANCHFS" gc || bfs_fail "gc after the remount"
sync -f "$FS" || true
after=$(avail)
db_after=$(db_bytes)
bfs_log "free: $(mib "$before") MiB before gc, $(mib "$after") MiB after (scratch held ${BLOB_MB} MiB)"
# Measured on the database files, from before the delete: with --writeback
# the gc on the full disk may already have given part of it back.
bfs_log "RocksDB files: $(mib "$db_before") MiB before the delete, $(mib "$db_after") MiB now"
[ "$db_after" -le $((db_before - BLOB_MB * 1048576 / 2)) ] ||
	bfs_fail "delete and gc gave back only $(mib $((db_before - db_after))) MiB of the ${BLOB_MB} MiB branch"

bfs_step "postgres continues, committed batches intact"
if PM=$(pgl_postmaster_pid "$PGDATA"); then
	bfs_log "postmaster $PM still running"
	# it may be in crash recovery or have given up after a PANIC
	if ! psqlc -c "select 1" >/dev/null 2>&1; then
		pgl_stop "$PGDATA" immediate >/dev/null 2>&1 || pgl_kill9_postmaster "$PM"
	fi
fi
if ! psqlc -c "select 1" >/dev/null 2>&1; then
	bfs_log "postgres is down (PANIC on the full disk): starting it again"
	[ -n "$(pgl_postmaster_pid "$PGDATA" || true)" ] && pgl_kill9_postmaster "$(pgl_postmaster_pid "$PGDATA")"
	pgl_start "$PGDATA" "$PORT" "$SOCK" "$PGLOG" || pgl_die "postgres does not start after the disk was freed"
fi
[ "$(psqlc -c "select count(*), sum(hashtext(v)) from base")" = "$BASE" ] || bfs_fail "table base changed"
missing=$(psqlc -c "select count(*) from unnest(array[$(paste -sd, "$ACKED")]::int[]) a(b)
	where (select count(*) from fill f where f.batch = a.b) <> 1000") || bfs_fail "query fill"
[ "$missing" = 0 ] || bfs_fail "$missing of $NACK committed batches incomplete or missing"
psqlc -c "insert into fill select 9999, repeat('z', 8000) from generate_series(1, 1000) g" ||
	bfs_fail "postgres cannot insert after space came back"
echo ok >"$MNT/main/after" && [ "$(cat "$MNT/main/after")" = ok ] || bfs_fail "a file write after space came back"
pgl_amcheck "$PORT" "$SOCK" >"$W/amcheck.log" 2>&1 || {
	cat "$W/amcheck.log" >&2
	bfs_fail "amcheck"
}
pgl_stop "$PGDATA" || bfs_fail "pg_ctl stop"
pgl_checksums "$PGDATA" >/dev/null || bfs_fail "pg_checksums --check"
bfs_log "acknowledged batches: $NACK, found: $NACK (+ base rows intact)"

bfs_step "umount, branchfs check"
bfs_umount "$MNT"
"$BRANCHFS" check "$STORE" >"$W/check.log" 2>&1 || {
	cat "$W/check.log" >&2
	bfs_fail "branchfs check is not clean"
}
umount "$FS" || bfs_fail "umount $FS"
! losetup -a | grep -qF "$FS.img" || bfs_fail "loop device left attached"
bfs_log "PASS"
