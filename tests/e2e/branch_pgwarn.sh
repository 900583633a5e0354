#!/usr/bin/env bash
# Branching a PGDATA whose pg_wal or a tablespace is a symlink leaving the
# branch warns (such a snapshot cannot be atomic); a plain PGDATA does not;
# the inherited postmaster.pid of a running postgres is hidden on a branch
# and can be replaced there, while main and snapshots keep theirs.
. "$(dirname "$0")/lib.sh"
bfs_require_mount
bfs_setup
export BRANCHFS_STORE=$STORE

bfs_step "a PGDATA-looking tree without symlinks: no warning"
mkdir -p "$D/pg/data/pg_tblspc"
echo 15 >"$D/pg/data/PG_VERSION"
mkdir "$D/pg/data/pg_wal"
"$BRANCHFS" branch create quiet 2>"$BFS_WORK/err1" >/dev/null
if grep -q warning "$BFS_WORK/err1"; then
	bfs_fail "unexpected warning: $(cat "$BFS_WORK/err1")"
fi

bfs_step "pg_wal and a tablespace as symlinks leaving the branch: warnings"
rmdir "$D/pg/data/pg_wal"
mkdir -p "$BFS_WORK/outside/wal" "$BFS_WORK/outside/ts"
ln -s "$BFS_WORK/outside/wal" "$D/pg/data/pg_wal"
ln -s "$BFS_WORK/outside/ts" "$D/pg/data/pg_tblspc/16384"
"$BRANCHFS" branch create loud 2>"$BFS_WORK/err2" >/dev/null
grep -q "warning: .*pg_wal is a symlink" "$BFS_WORK/err2" ||
	bfs_fail "no pg_wal warning: $(cat "$BFS_WORK/err2")"
grep -q "warning: .*pg_tblspc/16384 is a symlink" "$BFS_WORK/err2" ||
	bfs_fail "no tablespace warning: $(cat "$BFS_WORK/err2")"
"$BRANCHFS" snapshot create main snap 2>"$BFS_WORK/err3" >/dev/null
grep -q "warning: .*pg_wal" "$BFS_WORK/err3" || bfs_fail "snapshot create did not warn"
# a branch of that snapshot shares the outside WAL too
"$BRANCHFS" branch create fromsnap --from snap 2>"$BFS_WORK/err4" >/dev/null
grep -q "warning: .*pg_wal is a symlink" "$BFS_WORK/err4" ||
	bfs_fail "branch create --from a snapshot did not warn: $(cat "$BFS_WORK/err4")"

bfs_step "inherited postmaster.pid is hidden on a branch, kept on main and snapshots"
echo "$$" >"$D/pg/data/postmaster.pid"
"$BRANCHFS" snapshot create main withpid >/dev/null 2>&1
"$BRANCHFS" branch create b >/dev/null 2>&1
[ -e "$MNT/b/pg/data/postmaster.pid" ] && bfs_fail "postmaster.pid visible on the branch"
ls "$MNT/b/pg/data" | grep -q postmaster.pid && bfs_fail "readdir lists postmaster.pid"
[ -e "$MNT/.snapshots/withpid/pg/data/postmaster.pid" ] || bfs_fail "snapshot lost postmaster.pid"
( set -o noclobber; echo new >"$MNT/b/pg/data/postmaster.pid" ) ||
	bfs_fail "O_EXCL create of postmaster.pid on the branch failed"
[ "$(cat "$MNT/b/pg/data/postmaster.pid")" = new ] || bfs_fail "branch pid file content"
[ "$(cat "$D/pg/data/postmaster.pid")" = "$$" ] || bfs_fail "main's pid file changed"

bfs_step "a directory holding only a hidden pid file can be removed; renames over it work"
"$BRANCHFS" branch create c >/dev/null 2>&1
echo tmp >"$MNT/c/pg/data/newpid"
mv "$MNT/c/pg/data/newpid" "$MNT/c/pg/data/postmaster.pid" || bfs_fail "rename over the hidden pid file"
[ "$(cat "$MNT/c/pg/data/postmaster.pid")" = tmp ] || bfs_fail "renamed pid file content"
"$BRANCHFS" branch create c2 >/dev/null 2>&1
rm -rf "$MNT/c2/pg" || bfs_fail "rm -rf of an inherited PGDATA with a hidden pid file failed"
[ -e "$MNT/c2/pg" ] && bfs_fail "c2/pg still there"
[ "$(cat "$D/pg/data/postmaster.pid")" = "$$" ] || bfs_fail "main's pid file changed"

bfs_umount "$MNT"
echo "PASS $BFS_TEST"
