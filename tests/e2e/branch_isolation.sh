#!/usr/bin/env bash
# Isolation between branches and immutability of snapshots.
#
# main gets files of sizes around the 8 KiB block, directories, symlinks,
# hard links, a fifo, modes, owners and xattrs; snapshot `pre` is taken and
# branch `br` created.  Then br and main are changed in different ways
# (writes, overwrites, truncate then extend, unlinks, file and directory
# renames, chmod, chown, xattr set/remove, writes through a hard link and
# through a file descriptor opened before the branch existed).  The same
# operations run on plain host directories; after each step every tree on
# the mount must equal its host mirror (path, type, mode, owner, size, link
# target, link count, sha256, xattrs), and the snapshot must never change.
# Writes into .snapshots/pre fail with EROFS; st_ino differ between the
# trees; link and rename across branches fail with EXDEV (C helper
# branch_util: mv would fall back to copying).  All again after a remount.
. "$(dirname "$0")/lib.sh"

UTIL=$BFS_E2E_BIN/branch_util
if [ ! -x "$UTIL" ] || [ "$UTIL" -ot "$BFS_REPO/tests/e2e/branch_util.c" ]; then
	make -C "$BFS_REPO" --no-print-directory "build/tests/e2e/branch_util" >&2 ||
		bfs_fail "cannot build $UTIL"
fi
bfs_setup
export BRANCHFS_STORE=$STORE
H=$BFS_WORK/host
mkdir -p "$H/main"
R=$BFS_WORK/rand
head -c $((2 * 1024 * 1024)) /dev/urandom >"$R"
head -c 8192 /dev/urandom >"$R.2"

# Host xattrs (user.*) are needed to mirror them; ext4 and xfs have them.
XATTR_HOST=0
touch "$H/.probe"
[ "$("$UTIL" setxattr "$H/.probe" user.probe 1)" = OK ] && XATTR_HOST=1
rm -f "$H/.probe"
[ "$XATTR_HOST" = 1 ] || bfs_log "host directory has no user xattrs: mirrors compare without xattrs"

# manifest DIR: everything we promise to keep, sorted (no times, no inode
# numbers; directory sizes and link counts differ between filesystems).
manifest() {
	(
		cd -- "$1"
		find . -mindepth 1 \( -type d -printf '%p d %m %u:%g\n' \) -o \
			-printf '%p %y %m %u:%g %s %n %l\n' | LC_ALL=C sort
		find . -mindepth 1 -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
		if [ "$XATTR_HOST" = 1 ] || [ "${2:-}" = all ]; then
			find . -mindepth 1 \( -type f -o -type d \) -print0 | LC_ALL=C sort -z |
				xargs -0r "$UTIL" xattrs
		fi
	)
}
# same_tree DIR MIRROR WHAT: the trees are equal.
same_tree() {
	local a b
	a=$(manifest "$1") || bfs_fail "manifest of $1"
	b=$(manifest "$2") || bfs_fail "manifest of $2"
	if [ "$a" != "$b" ]; then
		diff <(echo "$b") <(echo "$a") | head -40 >&2
		bfs_fail "$3: $1 differs from its mirror $2 (diff: < mirror, > mount)"
	fi
}
# xset DIR PATH NAME VALUE / xdel DIR PATH NAME: on the mount and the mirror.
xset() {
	local r
	r=$("$UTIL" setxattr "$1/$2" "$3" "$4")
	[ "$r" = OK ] || bfs_fail "setxattr $1/$2 $3: $r"
}
xdel() {
	local r
	r=$("$UTIL" removexattr "$1/$2" "$3")
	[ "$r" = OK ] || bfs_fail "removexattr $1/$2 $3: $r"
}

populate() (
	cd -- "$1"
	mkdir -p a/b/c e
	printf 'hello\n' >a/b/c/small
	for n in 0 1 8191 8192 8193 100000; do head -c $n "$R" >"size-$n"; done
	cp "$R" big
	seq 1 200000 >text
	ln -s ../big a/rel
	ln -s /nonexistent/target dangling
	ln -s a/b dirlink
	ln big a/hard
	mkfifo fifo
	chmod 0640 size-8191
	chmod 0700 e
	chmod 4750 size-1
	chown 1234:5678 size-8192
	echo kept >openfile
	if [ "$XATTR_HOST" = 1 ] || [ "$1" != "${1#"$MNT"}" ]; then
		xset . big user.k1 v1
		xset . a user.dir d
		xset . a/b/c/small user.s s
	fi
)

# Changes on the branch: every kind of operation.
mutate_br() (
	cd -- "$1"
	printf 'more\n' >>a/b/c/small
	dd if="$R.2" of=big bs=8192 seek=10 conv=notrunc status=none
	truncate -s 100 size-8193
	truncate -s 0 size-100000
	truncate -s 50000 size-100000 # extend after truncate: zeros, no stale blocks
	rm size-1 a/rel
	mv text text2
	mv a/b a/b2
	chmod 0600 size-8192
	chmod 0755 e
	mkdir newdir
	echo n >newdir/file
	rmdir e
	ln -s newdir newlink
	echo via-hard >>a/hard
	ln size-8192 size-8192.link
	chown 42:43 size-0
	if [ "$XATTR_HOST" = 1 ] || [ "$1" != "${1#"$MNT"}" ]; then
		xset . big user.k1 changed-on-br
		xdel . a user.dir
		xset . newdir user.new 1
	fi
)

# Different changes on main.
mutate_main() (
	cd -- "$1"
	echo main-change >a/b/c/small
	truncate -s 1 big
	rm -r a/b
	mv size-8191 renamed-8191
	chmod 0444 size-8193
	mkdir mainonly
	head -c 30000 "$R.2" >mainonly/data
	ln -sfn elsewhere dangling
	chown 7:8 text
	if [ "$XATTR_HOST" = 1 ] || [ "$1" != "${1#"$MNT"}" ]; then
		xset . size-8193 user.m 1
		xdel . big user.k1
	fi
)

bfs_step "populate main and its mirror"
populate "$D"
populate "$H/main"
same_tree "$D" "$H/main" "after populate"
[ "$("$UTIL" getxattr "$D/big" user.k1)" = v1 ] || bfs_fail "xattr user.k1 not set on main/big"

bfs_step "snapshot pre, branch br"
exec 4>>"$D/openfile" # opened before the branch: keeps writing to main
"$BRANCHFS" snapshot create main pre >/dev/null || bfs_fail "snapshot create main pre"
"$BRANCHFS" branch create br >/dev/null || bfs_fail "branch create br"
S=$MNT/.snapshots/pre
BR=$MNT/br
[ -d "$S" ] && [ -d "$BR" ] || bfs_fail "$S or $BR missing: $(ls -a "$MNT")"
cp -a "$H/main" "$H/pre"
cp -a "$H/main" "$H/br"
same_tree "$S" "$H/pre" "fresh snapshot"
same_tree "$BR" "$H/br" "fresh branch"
PRE_ALL=$(manifest "$S" all)

# inode numbers: unique across trees, hard links shared within a tree
inos() { find "$1" -printf '%i\n' | sort -u; }
common=$(comm -12 <(inos "$D") <(inos "$BR"))
[ -z "$common" ] || bfs_fail "main and br share inode numbers: $(echo $common | head -c 300)"
common=$(comm -12 <(inos "$D") <(inos "$S"))$(comm -12 <(inos "$BR") <(inos "$S"))
[ -z "$common" ] || bfs_fail "the snapshot shares inode numbers with a branch: $(echo $common | head -c 300)"
for t in "$D" "$BR" "$S"; do
	[ "$(stat -c %i "$t/big")" = "$(stat -c %i "$t/a/hard")" ] || bfs_fail "$t: big and a/hard have different inodes"
	[ "$(stat -c %h "$t/big")" = 2 ] || bfs_fail "$t/big: link count $(stat -c %h "$t/big"), expected 2"
done
bfs_log "st_ino of big: main $(stat -c %i "$D/big"), br $(stat -c %i "$BR/big"), pre $(stat -c %i "$S/big")"

bfs_step "changes on br"
mutate_br "$BR"
mutate_br "$H/br"
echo after-branch >&4 # fd opened on main before the branch
echo after-branch >>"$H/main/openfile"
same_tree "$BR" "$H/br" "br after its changes"
same_tree "$D" "$H/main" "main after changes on br"
same_tree "$S" "$H/pre" "snapshot after changes on br"
cmp -s "$BR/size-100000" <(head -c 50000 /dev/zero) || bfs_fail "br/size-100000: stale data after truncate and extend"
[ "$(stat -c %i "$BR/big")" = "$(stat -c %i "$BR/a/hard")" ] || bfs_fail "br: hard link broken by copy-on-write"
[ "$("$UTIL" getxattr "$D/big" user.k1)" = v1 ] || bfs_fail "main/big lost user.k1"
[ "$("$UTIL" getxattr "$BR/big" user.k1)" = changed-on-br ] || bfs_fail "br/big: user.k1 not changed"
[ "$("$UTIL" getxattr "$BR/a" user.dir)" = ENODATA ] || bfs_fail "br/a: user.dir not removed"
[ "$("$UTIL" getxattr "$D/a" user.dir)" = d ] || bfs_fail "main/a lost user.dir"

bfs_step "changes on main"
mutate_main "$D"
mutate_main "$H/main"
same_tree "$D" "$H/main" "main after its changes"
same_tree "$BR" "$H/br" "br after changes on main"
same_tree "$S" "$H/pre" "snapshot after changes on main"

bfs_step "same file written on both sides at once"
for i in $(seq 1 20); do
	echo "main $i" >>"$D/both" &
	echo "br $i" >>"$BR/both" &
	wait
done
exec 4>&-
[ "$(grep -c '^main' "$D/both")" = 20 ] && ! grep -q '^br' "$D/both" || bfs_fail "main/both mixes branches: $(head -c 200 "$D/both")"
[ "$(grep -c '^br' "$BR/both")" = 20 ] && ! grep -q '^main' "$BR/both" || bfs_fail "br/both mixes branches"
rm "$D/both" "$BR/both"

bfs_step "writes into .snapshots/pre fail with EROFS"
erofs() {
	local err rc=0
	err=$("$@" 2>&1) || rc=$?
	[ $rc -ne 0 ] || bfs_fail "'$*' on the snapshot succeeded"
	case $err in
	*"Read-only file system"*) ;;
	*) bfs_fail "'$*' on the snapshot: expected EROFS, got: $err" ;;
	esac
}
erofs touch "$S/new"
erofs touch "$S/size-0"
erofs mkdir "$S/newdir"
erofs sh -c "echo x >'$S/size-0'"
erofs sh -c "echo x >>'$S/text'"
erofs sh -c "echo x >'$S/new2'"
erofs rm "$S/size-1"
erofs rm -r "$S/a/b"
erofs rmdir "$S/e"
erofs mv "$S/text" "$S/text3"
erofs chmod 0600 "$S/text"
erofs ln -s x "$S/sl"
erofs ln "$S/text" "$S/hl"
erofs truncate -s 0 "$S/big"
erofs mkfifo "$S/fifo2"
for op in "setxattr $S/big user.k1 x" "setxattr $S/a user.new y" "removexattr $S/big user.k1"; do
	# shellcheck disable=SC2086
	r=$("$UTIL" $op)
	[ "$r" = EROFS ] || bfs_fail "$op on the snapshot: expected EROFS, got $r"
done
[ "$(manifest "$S" all)" = "$PRE_ALL" ] || bfs_fail "the snapshot changed after the refused writes"

bfs_step "link and rename across branches: EXDEV"
exdev() {
	local r
	r=$("$UTIL" "$@")
	[ "$r" = EXDEV ] || bfs_fail "$*: expected EXDEV, got $r"
}
exdev rename "$D/text" "$BR/text-from-main"
exdev rename "$BR/text2" "$D/text-from-br"
exdev rename "$D/mainonly" "$BR/dir-from-main"
exdev rename "$BR/newdir" "$D/dir-from-br"
exdev rename "$BR/size-0" "$BR/../main/size-0"
exdev link "$D/text" "$BR/link-from-main"
exdev link "$BR/text2" "$D/link-from-br"
exdev link "$S/text" "$D/link-from-snapshot"
r=$("$UTIL" rename "$S/text" "$D/from-snapshot")
case $r in EXDEV | EROFS) ;; *) bfs_fail "rename snapshot -> main: expected EXDEV or EROFS, got $r" ;; esac
r=$("$UTIL" rename "$D/text" "$S/from-main")
case $r in EXDEV | EROFS) ;; *) bfs_fail "rename main -> snapshot: expected EXDEV or EROFS, got $r" ;; esac
err=$(ln "$D/text" "$BR/ln-from-main" 2>&1) && bfs_fail "ln across branches succeeded"
case $err in *"cross-device"*) ;; *) bfs_fail "ln across branches: expected EXDEV, got: $err" ;; esac
same_tree "$D" "$H/main" "main after refused cross-branch operations"
same_tree "$BR" "$H/br" "br after refused cross-branch operations"

bfs_step "everything again after a remount"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
same_tree "$D" "$H/main" "main after remount"
same_tree "$BR" "$H/br" "br after remount"
same_tree "$S" "$H/pre" "snapshot after remount"
[ "$(manifest "$S" all)" = "$PRE_ALL" ] || bfs_fail "the snapshot changed across the remount"
common=$(comm -12 <(inos "$D") <(inos "$BR"))
[ -z "$common" ] || bfs_fail "after remount main and br share inode numbers: $(echo $common | head -c 300)"

bfs_step "deleting the branch leaves main and the snapshot alone"
"$BRANCHFS" branch delete br >/dev/null || bfs_fail "branch delete br"
"$BRANCHFS" gc >/dev/null || bfs_fail "gc"
same_tree "$D" "$H/main" "main after deleting br"
same_tree "$S" "$H/pre" "snapshot after deleting br"
"$BRANCHFS" snapshot delete pre >/dev/null || bfs_fail "snapshot delete pre"
"$BRANCHFS" gc >/dev/null || bfs_fail "gc"
same_tree "$D" "$H/main" "main after deleting the snapshot"
bfs_umount "$MNT"
