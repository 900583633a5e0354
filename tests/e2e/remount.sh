#!/usr/bin/env bash
# Persistence: a varied tree (sizes around the 8 KiB block, random and
# compressible data, a 5 GiB sparse file, links, special files, owners,
# modes, times, xattrs, a copied source tree) is identical after umount and
# mount, twice.  `branchfs stats` works mounted and unmounted, --json parses,
# identical data is stored once, deleted data is freed.
. "$(dirname "$0")/lib.sh"

export TZ=UTC
bfs_setup
H=$BFS_WORK/host
mkdir "$H"

bfs_step "version"
v=$("$BRANCHFS" version) || bfs_fail "branchfs version failed"
[ -n "$v" ] || bfs_fail "branchfs version printed nothing"
bfs_log "version: $v"

bfs_step "write a tree"
head -c $((1024 * 1024 + 7)) /dev/urandom >"$H/rand"
(seq 1 3000000 || true) | head -c $((16 * 1024 * 1024)) >"$H/text"
head -c 65536 /dev/urandom >"$H/chunk"
for n in 0 1 8191 8192 8193 65537; do
	head -c "$n" "$H/rand" >"$D/size-$n"
done
cp "$H/rand" "$D/rand"
cp "$H/text" "$D/text"
mkdir -p "$D/a/b/c" "$D/empty-dir"
echo nested >"$D/a/b/c/file"
ln -s ../rand "$D/a/rel-link"
ln -s "/nonexistent/target" "$D/a/dangling"
ln "$D/rand" "$D/a/hardlink"
mkfifo "$D/a/fifo"
mknod "$D/a/null" c 1 3
chmod 0600 "$D/size-1"
chmod 4750 "$D/size-8191"
chown 1234:5678 "$D/size-8192"
mkdir "$D/sgid" && chgrp 4242 "$D/sgid" && chmod 2775 "$D/sgid"
echo g >"$D/sgid/inherits"
touch -h -d '2001-02-03 04:05:06.123456789' "$D/size-8193" "$D/a/rel-link"
# a sparse file: data at 0, just below 1 GiB and beyond 5 GiB
dd if="$H/chunk" of="$D/sparse" bs=65536 count=1 status=none
dd if="$H/chunk" of="$D/sparse" bs=65536 count=1 seek=$((1024 * 1024 * 1024 - 100)) \
	oflag=seek_bytes conv=notrunc status=none
dd if="$H/chunk" of="$D/sparse" bs=65536 count=1 seek=$((5 * 1024 * 1024 * 1024 + 12345)) \
	oflag=seek_bytes conv=notrunc status=none
HAVE_XATTR=0 # xattr persistence is checked with python3 when it is there
if python3 -c 'import os' 2>/dev/null; then
	HAVE_XATTR=1
	python3 - "$D" <<'PY'
import os, sys
d = sys.argv[1]
os.setxattr(d + "/rand", "user.checksum", b"abc123")
os.setxattr(d + "/a", "user.dir", b"\x00\x01binary\xff")
PY
fi
cp -a /usr/include/linux "$D/tree"
diff -r /usr/include/linux "$D/tree" >/dev/null || bfs_fail "cp -a of /usr/include/linux differs"
sync "$D/rand"

check_tree() {
	bfs_same "$H/rand" "$D/rand"
	bfs_same "$H/text" "$D/text"
	bfs_same "$H/rand" "$D/a/hardlink"
	[ "$(stat -c %h "$D/rand")" = 2 ] || bfs_fail "nlink of rand is not 2"
	[ "$(stat -c %i "$D/rand")" = "$(stat -c %i "$D/a/hardlink")" ] || bfs_fail "hard link lost"
	[ "$(readlink "$D/a/dangling")" = /nonexistent/target ] || bfs_fail "symlink target"
	cmp "$D/a/rel-link" "$H/rand" || bfs_fail "relative symlink does not resolve"
	[ "$(stat -c %s "$D/sparse")" = $((5 * 1024 * 1024 * 1024 + 12345 + 65536)) ] ||
		bfs_fail "sparse size $(stat -c %s "$D/sparse")"
	local blocks
	blocks=$(stat -c %b "$D/sparse")
	[ "$blocks" -le $((3 * 65536 / 512 + 64)) ] || bfs_fail "sparse file uses $blocks blocks"
	for off in 0 $((1024 * 1024 * 1024 - 100)) $((5 * 1024 * 1024 * 1024 + 12345)); do
		dd if="$D/sparse" bs=65536 count=1 skip="$off" iflag=skip_bytes status=none |
			cmp - "$H/chunk" || bfs_fail "sparse data at $off"
	done
	dd if="$D/sparse" bs=65536 count=16 skip=$((3 * 1024 * 1024 * 1024)) iflag=skip_bytes status=none |
		cmp - <(head -c $((16 * 65536)) /dev/zero) || bfs_fail "sparse hole at 3 GiB not zero"
	[ "$(stat -c '%F %t:%T' "$D/a/null")" = "character special file 1:3" ] ||
		bfs_fail "device node: $(stat -c '%F %t:%T' "$D/a/null")"
	[ "$(stat -c %g "$D/sgid/inherits")" = 4242 ] || bfs_fail "setgid dir: group not inherited"
	[ "$(stat -c %y "$D/size-8193")" = "2001-02-03 04:05:06.123456789 +0000" ] ||
		bfs_fail "mtime: $(stat -c %y "$D/size-8193")"
	if [ $HAVE_XATTR = 1 ]; then
		python3 - "$D" <<'PY' || bfs_fail "xattrs lost"
import os, sys
d = sys.argv[1]
assert os.getxattr(d + "/rand", "user.checksum") == b"abc123"
assert os.getxattr(d + "/a/hardlink", "user.checksum") == b"abc123"
assert os.getxattr(d + "/a", "user.dir") == b"\x00\x01binary\xff"
PY
	fi
	diff -r /usr/include/linux "$D/tree" >/dev/null || bfs_fail "copied tree differs"
}

# listing + checksums, and per entry: inode, nlink, mtime
sums() {
	bfs_tree_sum "$D"
	(cd "$D" && find . -printf '%p %i %n %T@ %Y\n' | LC_ALL=C sort)
}

check_tree
before=$(sums)

for cycle in 1 2; do
	bfs_step "remount $cycle"
	bfs_umount "$MNT"
	bfs_mount "$STORE" "$MNT"
	after=$(sums)
	if [ "$before" != "$after" ]; then
		diff <(echo "$before") <(echo "$after") | head -40 >&2
		bfs_fail "tree changed across remount $cycle"
	fi
	check_tree
	# change something for the next cycle
	cat "$H/chunk" >>"$D/text"
	cat "$H/chunk" >>"$H/text"
	if [ $cycle = 1 ]; then
		mv "$D/size-65537" "$D/a/b/moved-1"
	else
		mv "$D/a/b/moved-$((cycle - 1))" "$D/a/b/moved-$cycle"
	fi
	rm "$D/size-0"
	: >"$D/size-0"
	sync "$D"
	before=$(sums)
done

# the block count's key: has "block", not "bytes" (nor pending/size)
BLOCKS_KEY='^(?!.*(bytes|pending|size)).*block'

bfs_step "stats, mounted"
out=$("$BRANCHFS" stats "$STORE") || bfs_fail "stats while mounted failed"
bfs_log "stats: $out"
"$BRANCHFS" stats "$STORE" --json | bfs_json_valid || bfs_fail "stats --json (mounted) is not JSON"

bfs_umount "$MNT"
bfs_step "stats, unmounted"
out=$("$BRANCHFS" stats "$STORE") || bfs_fail "stats failed"
bfs_log "stats: $out"
grep -qiE 'block[^0-9]*[1-9]' <<<"$out" || bfs_fail "stats shows no nonzero block count"
json=$("$BRANCHFS" stats "$STORE" --json) || bfs_fail "stats --json failed"
bfs_json_valid <<<"$json" || bfs_fail "stats --json is not JSON: $json"
blocks=$(bfs_json_num "$BLOCKS_KEY" <<<"$json") || bfs_fail "no block count in $json"
logical=$(bfs_json_num 'logical' <<<"$json") || bfs_fail "no logical bytes in $json"
stored=$(bfs_json_num 'stored(_bytes)?$' <<<"$json") || bfs_fail "no stored bytes in $json"
bfs_log "blocks=$blocks logical=$logical stored=$stored"
[ "$blocks" -gt 0 ] || bfs_fail "block count $blocks"
# 16 MiB of text compresses: the store holds less than it is asked to
[ "$stored" -lt "$logical" ] || bfs_fail "stored $stored >= logical $logical bytes"
# at least the 16 MiB of text and 1 MiB of random data are referenced
[ "$logical" -ge $((17 * 1024 * 1024)) ] || bfs_fail "logical bytes $logical < 17 MiB"

bfs_step "identical data is stored once"
bfs_mount "$STORE" "$MNT"
cat "$H/rand" >"$D/dup1"
cat "$H/rand" >"$D/dup2"
bfs_umount "$MNT"
b2=$(bfs_stat "$STORE" "$BLOCKS_KEY")
bfs_log "blocks $blocks -> $b2 after two more copies of rand"
[ "$b2" -le $((blocks + 2)) ] || bfs_fail "two copies of a 1 MiB file added $((b2 - blocks)) blocks"

bfs_step "deleted data is freed"
bfs_mount "$STORE" "$MNT"
rm "$D/rand" "$D/a/hardlink" "$D/dup1" "$D/dup2"
bfs_umount "$MNT"
b3=$(bfs_stat "$STORE" "$BLOCKS_KEY")
bfs_log "blocks $b2 -> $b3 after deleting every copy of rand"
[ "$b3" -le $((b2 - 100)) ] || bfs_fail "deleting 1 MiB of random data freed only $((b2 - b3)) blocks"

bfs_step "a file unlinked while open is freed at its last close"
bfs_mount "$STORE" "$MNT"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$H/open-unlinked"
cp "$H/open-unlinked" "$D/open-unlinked"
exec 8<"$D/open-unlinked"
rm "$D/open-unlinked"
cmp - "$H/open-unlinked" <&8 || bfs_fail "unlinked open file unreadable"
exec 8<&-
bfs_umount "$MNT"
b4=$(bfs_stat "$STORE" "$BLOCKS_KEY")
bfs_log "blocks $b3 -> $b4 after a 2 MiB file was unlinked while open, then closed"
[ "$b4" -le $((b3 + 2)) ] || bfs_fail "unlinked-while-open file kept $((b4 - b3)) blocks"

bfs_step "mounts again after all that"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/text" "$D/text"
bfs_umount "$MNT"
