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

bfs_step "posix_ops on $D"
BFS_EXPECT_FUSE=1 "$PROG" "$D" || bfs_fail "posix_ops reported failures"

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
rm -rf "${D:?}"/posix_ops.*
[ -z "$(ls -A "$D")" ] || bfs_fail "main not empty after rm -rf: $(ls -A "$D")"
bfs_umount "$MNT"
