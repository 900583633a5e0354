#!/usr/bin/env bash
# Every POSIX operation the issue lists, by the cmocka program posix_ops.c,
# on MNT/main; then the tree it leaves survives a remount and rm -rf.
. "$(dirname "$0")/lib.sh"

PROG=$BFS_E2E_BIN/posix_ops
if [ ! -x "$PROG" ] || [ "$PROG" -ot "$BFS_REPO/tests/e2e/posix_ops.c" ]; then
	make -C "$BFS_REPO" --no-print-directory "build/tests/e2e/posix_ops" >&2 ||
		bfs_fail "cannot build $PROG"
fi
bfs_setup

bfs_step "the mount root lists branch main and takes no files"
ls -A "$MNT" | grep -qx main || bfs_fail "main not listed in the mount root: $(ls -A "$MNT")"
[ "$(stat -c %i "$MNT")" != "$(stat -c %i "$D")" ] || bfs_fail "mount root and main share an inode number"
if touch "$MNT/not-a-branch" 2>/dev/null; then
	bfs_fail "created a plain file in the mount root"
fi
[ ! -e "$MNT/not-a-branch" ] || bfs_fail "a plain file appeared in the mount root"

bfs_step "posix_ops on $D"
case " ${BFS_MOUNT_OPTS:-} " in *" --writeback "*) export BFS_WRITEBACK=1 ;; esac
BFS_EXPECT_FUSE=1 "$PROG" "$D" || bfs_fail "posix_ops reported failures"

if command -v setpriv >/dev/null && id nobody >/dev/null 2>&1; then
	bfs_step "posix_ops as nobody, in a directory nobody owns"
	mkdir "$D/nobody"
	chown nobody: "$D/nobody"
	(cd / && BFS_EXPECT_FUSE=1 setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups -- \
		"$PROG" "$D/nobody") || bfs_fail "posix_ops as nobody reported failures"
fi

bfs_step "the tree it left survives a remount"
before=$(bfs_tree_sum "$D")
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
after=$(bfs_tree_sum "$D")
[ "$before" = "$after" ] || {
	diff <(echo "$before") <(echo "$after") | head -40 >&2
	bfs_fail "tree changed across umount/mount"
}

bfs_step "rm -rf of it"
rm -rf "${D:?}"/posix_ops.* "$D/nobody"
[ -z "$(ls -A "$D")" ] || bfs_fail "main not empty after rm -rf: $(ls -A "$D")"
bfs_umount "$MNT"
