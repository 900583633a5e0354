#!/usr/bin/env bash
# Bad input: each a clear message on stderr, a non-zero exit (1 for a
# failure, 2 for a usage error), nothing mounted, and the store or
# directory involved unchanged (file listing and checksums before/after).
. "$(dirname "$0")/lib.sh"

bfs_require_mount
S=$BFS_WORK/store
M=$BFS_WORK/mnt
mkdir "$M"

# snap DIR: listing and checksums of DIR; RocksDB's own info LOG files and
# branchfs.log are left out (a refused command may log why).
snap() { bfs_tree_sum "$1" 'LOG' 'LOG.old.*' 'branchfs.log*'; }
# unchanged DIR BEFORE: fail if DIR's snap differs from BEFORE
unchanged() {
	local now
	now=$(snap "$1")
	[ "$now" = "$2" ] || {
		diff <(echo "$2") <(echo "$now") | head -20 >&2
		bfs_fail "$1 changed"
	}
}
# strict DIR: listing and checksums of everything
strict() { bfs_tree_sum "$1"; }
not_mounted() { ! bfs_is_mounted "$1" || bfs_fail "$1 got mounted"; }
# branchfs: prefix on the message of a (non-usage) failure
prefixed() { grep -q '^branchfs: ' <<<"$BFS_ERR" || bfs_fail "message does not start with 'branchfs: ': $BFS_ERR"; }

bfs_step "init over a non-empty directory"
mkdir "$BFS_WORK/full"
echo keep >"$BFS_WORK/full/keep"
mkdir "$BFS_WORK/full/sub"
before=$(strict "$BFS_WORK/full")
bfs_expect_fail 1 "$BRANCHFS" init "$BFS_WORK/full"
prefixed
[ "$(strict "$BFS_WORK/full")" = "$before" ] || bfs_fail "init changed a non-empty directory"

bfs_step "init over a file"
echo f >"$BFS_WORK/afile"
bfs_expect_fail 1 "$BRANCHFS" init "$BFS_WORK/afile"
[ "$(cat "$BFS_WORK/afile")" = f ] || bfs_fail "init changed a file"

bfs_step "init of an existing store"
bfs_init "$S"
bfs_mount "$S" "$M"
echo precious >"$M/main/data"
sync "$M/main/data"
bfs_umount "$M"
before=$(snap "$S")
bfs_expect_fail 1 "$BRANCHFS" init "$S"
prefixed
unchanged "$S" "$before"

bfs_step "mount of a directory that is not a store"
mkdir "$BFS_WORK/notastore"
echo x >"$BFS_WORK/notastore/file"
before=$(strict "$BFS_WORK/notastore")
before_nas=$before
bfs_expect_fail 1 "$BRANCHFS" mount "$BFS_WORK/notastore" "$M"
prefixed
not_mounted "$M"
[ "$(strict "$BFS_WORK/notastore")" = "$before" ] || bfs_fail "mount changed a directory that is not a store"
mkdir "$BFS_WORK/emptydir"
bfs_expect_fail 1 "$BRANCHFS" mount "$BFS_WORK/emptydir" "$M"
not_mounted "$M"
[ -z "$(ls -A "$BFS_WORK/emptydir")" ] || bfs_fail "mount wrote into an empty non-store directory"
bfs_expect_fail 1 "$BRANCHFS" mount "$BFS_WORK/does-not-exist" "$M"
not_mounted "$M"
[ ! -e "$BFS_WORK/does-not-exist" ] || bfs_fail "mount created the missing store path"
bfs_expect_fail 1 "$BRANCHFS" mount "$BFS_WORK/afile" "$M"
not_mounted "$M"

bfs_step "mount with a missing mountpoint"
before=$(snap "$S")
bfs_expect_fail 1 "$BRANCHFS" mount "$S" "$BFS_WORK/no-such-mnt"
prefixed
[ ! -e "$BFS_WORK/no-such-mnt" ] || bfs_fail "mount created the missing mountpoint"
unchanged "$S" "$before"
[ -z "$(bfs_daemon_pids "$S")" ] || bfs_fail "a daemon is left holding the store"

bfs_step "mount on a file"
bfs_expect_fail 1 "$BRANCHFS" mount "$S" "$BFS_WORK/afile"
not_mounted "$BFS_WORK/afile"
unchanged "$S" "$before"

bfs_step "mount over the store, its parent or inside it"
# (every new RocksDB file would resolve into the mount: writes all EIO)
mkdir -p "$S/inside"
for m in "$S" "$BFS_WORK" "$S/inside"; do
	bfs_expect_fail 1 "$BRANCHFS" mount "$S" "$m"
	prefixed
	grep -q "mountpoint must be outside the store" <<<"$BFS_ERR" ||
		bfs_fail "mount $S $m: $BFS_ERR"
	not_mounted "$m"
done
rmdir "$S/inside"
unchanged "$S" "$before"
[ -z "$(bfs_daemon_pids "$S")" ] || bfs_fail "a daemon is left holding the store"

bfs_step "mount with options FUSE does not know"
bfs_expect_fail 1 "$BRANCHFS" mount "$S" "$M" -o no_such_fuse_option
prefixed
grep -q "mount options 'no_such_fuse_option'" <<<"$BFS_ERR" ||
	bfs_fail "a bad -o option is not named as the cause: $BFS_ERR"
not_mounted "$M"
# (the daemon had opened the store: its RocksDB files change as after a
# mount and umount, so no "unchanged" here)
[ -z "$(bfs_daemon_pids "$S")" ] || bfs_fail "a daemon is left holding the store"
before=$(snap "$S")

bfs_step "a second mount of a store in use"
bfs_mount "$S" "$M"
mkdir "$BFS_WORK/mnt2"
sync "$M/main"
before=$(snap "$S")
bfs_expect_fail 1 "$BRANCHFS" mount "$S" "$BFS_WORK/mnt2"
prefixed
not_mounted "$BFS_WORK/mnt2"
unchanged "$S" "$before"
[ "$(cat "$M/main/data")" = precious ] || bfs_fail "first mount broken by the second attempt"
echo more >"$M/main/more"
[ "$(cat "$M/main/more")" = more ] || bfs_fail "first mount not writable after the second attempt"

bfs_step "a mount inside a branchfs mount (over a branch, or below it)"
bfs_init "$BFS_WORK/s2"
mkdir "$M/main/sub"
for m in "$M/main" "$M/main/sub"; do
	bfs_expect_fail 1 "$BRANCHFS" mount "$BFS_WORK/s2" "$m"
	prefixed
	grep -q "inside the branchfs mount" <<<"$BFS_ERR" || bfs_fail "mount on $m: $BFS_ERR"
	not_mounted "$m"
done
[ "$(cat "$M/main/data")" = precious ] || bfs_fail "main hidden by a mount inside it"
rmdir "$M/main/sub"
bfs_expect_fail 2 "$BRANCHFS" mount "$BFS_WORK/s2" "$BFS_WORK/mnt2" -o
grep -q -- "-o needs a value" <<<"$BFS_ERR" || bfs_fail "mount ... -o without a value: $BFS_ERR"

bfs_step "init of a store in use"
sync "$M/main/more" "$M/main"
before=$(snap "$S")
bfs_expect_fail 1 "$BRANCHFS" init "$S"
unchanged "$S" "$before"
[ "$(cat "$M/main/data")" = precious ] || bfs_fail "mount broken by init"
bfs_umount "$M"
[ "$(bfs_stat "$S" '^(?!.*(bytes|pending|size)).*block')" -ge 1 ] || bfs_fail "store lost its blocks"

bfs_step "umount of something that is not mounted"
bfs_expect_fail any "$BRANCHFS" umount "$M"
bfs_expect_fail any "$BRANCHFS" umount "$BFS_WORK/no-such-mnt"

bfs_step "stats of a non-store"
"$BRANCHFS" stats -s "$S" >/dev/null || bfs_fail "stats -s STORE failed" # as every other command
bfs_expect_fail 1 "$BRANCHFS" stats "$BFS_WORK/notastore"
[ "$(strict "$BFS_WORK/notastore")" = "$before_nas" ] || bfs_fail "stats changed a directory that is not a store"
bfs_expect_fail 1 "$BRANCHFS" stats "$BFS_WORK/does-not-exist"

bfs_step "usage errors exit 2"
bfs_expect_fail 2 "$BRANCHFS" no-such-command
bfs_expect_fail 2 "$BRANCHFS" init
bfs_expect_fail 2 "$BRANCHFS" init "$BFS_WORK/x" extra-arg
[ ! -e "$BFS_WORK/x" ] || bfs_fail "init with an extra argument created the store"
bfs_expect_fail 2 "$BRANCHFS" mount
bfs_expect_fail 2 "$BRANCHFS" mount "$S"
bfs_expect_fail 2 "$BRANCHFS" mount "$S" "$M" --no-such-option
not_mounted "$M"
bfs_expect_fail 2 "$BRANCHFS" umount
bfs_expect_fail 2 "$BRANCHFS" stats "$S" --no-such-option
bfs_expect_fail 2 "$BRANCHFS" init ""
bfs_expect_fail 2 "$BRANCHFS" mount "$S" "$M" -o
not_mounted "$M"
# each says why, not only the usage
says2() { # WANT CMD...: exit 2 and WANT in the message
	local want=$1
	shift
	bfs_expect_fail 2 "$@"
	grep -qF -- "$want" <<<"$BFS_ERR" || bfs_fail "'$*' said: $BFS_ERR (want: $want)"
}
says2 "unknown subcommand 'nosuch'" "$BRANCHFS" branch nosuch
says2 "unknown subcommand 'nosuch'" "$BRANCHFS" snapshot nosuch -s "$S"
says2 "a subcommand is missing" "$BRANCHFS" branch
says2 "the subcommand comes first" "$BRANCHFS" branch -s "$S" list
says2 "no store given" env BRANCHFS_STORE= "$BRANCHFS" branch list
BRANCHFS_TIMEOUT=abc "$BRANCHFS" branch list -s "$S" 2>&1 >/dev/null | grep -q "ignoring BRANCHFS_TIMEOUT=abc" ||
	bfs_fail "a bad BRANCHFS_TIMEOUT is not named"
# main renamed: branch create without --from says where it looked
bfs_init "$BFS_WORK/s3"
"$BRANCHFS" branch rename -s "$BFS_WORK/s3" main prod >/dev/null || bfs_fail "rename main prod"
bfs_expect_fail 1 "$BRANCHFS" branch create -s "$BFS_WORK/s3" x
grep -q "branch 'main', where a branch is made from by default, does not exist: give --from" <<<"$BFS_ERR" ||
	bfs_fail "branch create with main gone: $BFS_ERR"

bfs_step "--help on each subcommand"
for c in init mount umount stats version; do
	out=$("$BRANCHFS" "$c" --help) || bfs_fail "branchfs $c --help exited $?"
	[ -n "$out" ] || bfs_fail "branchfs $c --help printed nothing"
	grep -q "$c" <<<"$out" || bfs_fail "branchfs $c --help does not mention $c"
done
[ ! -e "$BFS_WORK/--help" ] || bfs_fail "--help was taken for a path"

bfs_step "mount waits for an offline command that holds the store"
# (as the CLI commands wait for each other; it used to refuse at once)
command -v flock >/dev/null || bfs_skip "flock (util-linux) missing"
flock -x "$S/lock" sleep 2 &
holder=$!
held=0
for _ in $(seq 50); do
	flock -n -s "$S/lock" true || { held=1; break; }
	sleep 0.05
done
[ $held = 1 ] || bfs_fail "the stand-in offline command never took the store lock"
bfs_mount "$S" "$M"
wait "$holder"
bfs_umount "$M"

bfs_step "the store still works"
before=$(snap "$S")
bfs_mount "$S" "$M"
[ "$(cat "$M/main/data")" = precious ] || bfs_fail "data lost"
[ "$(cat "$M/main/more")" = more ] || bfs_fail "data lost"
bfs_umount "$M"

bfs_step "branchfs without a command: a usage error, on stderr"
bfs_expect_fail 2 "$BRANCHFS"
