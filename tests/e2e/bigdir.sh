#!/usr/bin/env bash
# 100,000 entries in one directory: created by two processes at once,
# listed (ls | wc -l, no duplicates, nothing missing), looked up, listed
# again after a remount, then all deleted and the directory removed.
. "$(dirname "$0")/lib.sh"

N=${BFS_BIGDIR_N:-100000}
bfs_setup
B=$D/big
mkdir "$B"
seq -f 'f%06g' 1 "$N" >"$BFS_WORK/want"

# create [FROM, TO] in $B: perl, since a shell `: > f$i` loop forks nothing
# but is ~10x slower than one open/close per entry
mk() {
	perl -e 'my ($d, $a, $b) = @ARGV;
		for my $i ($a .. $b) {
			my $p = sprintf("%s/f%06d", $d, $i);
			open(my $f, ">", $p) or die "$p: $!";
			close($f) or die "$p: $!";
		}' "$B" "$1" "$2"
}

t0=$(date +%s)
bfs_step "create $N files in one directory, two processes"
mk 1 $((N / 2)) &
p1=$!
mk $((N / 2 + 1)) "$N" &
p2=$!
wait $p1 || bfs_fail "creator 1 failed"
wait $p2 || bfs_fail "creator 2 failed"
bfs_log "created in $(($(date +%s) - t0)) s"

check_listing() {
	local n
	n=$(ls "$B" | wc -l)
	[ "$n" = "$N" ] || bfs_fail "ls | wc -l = $n, want $N"
	ls -U "$B" | LC_ALL=C sort >"$BFS_WORK/got"
	dups=$(uniq -d "$BFS_WORK/got" | head -5)
	[ -z "$dups" ] || bfs_fail "duplicate entries from readdir: $dups"
	cmp -s "$BFS_WORK/want" "$BFS_WORK/got" || {
		diff "$BFS_WORK/want" "$BFS_WORK/got" | head -10 >&2
		bfs_fail "listing differs from the names created"
	}
	n=$(find "$B" -type f | wc -l)
	[ "$n" = "$N" ] || bfs_fail "find found $n files"
	for f in f000001 "$(printf 'f%06d' $((N / 2)))" "$(printf 'f%06d' "$N")"; do
		[ -f "$B/$f" ] || bfs_fail "$f missing"
	done
	[ ! -e "$B/$(printf 'f%06d' $((N + 1)))" ] || bfs_fail "an entry that was never created exists"
}

t0=$(date +%s)
bfs_step "list"
check_listing
bfs_log "listed in $(($(date +%s) - t0)) s"

bfs_step "remount and list again"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
t0=$(date +%s)
check_listing
bfs_log "listed in $(($(date +%s) - t0)) s"

bfs_step "rename and stat in the big directory"
mv "$B/f000001" "$B/renamed"
[ -f "$B/renamed" ] && [ ! -e "$B/f000001" ] || bfs_fail "rename in the big directory"
mv "$B/renamed" "$B/f000001"

t0=$(date +%s)
bfs_step "delete them all"
find "$B" -type f -delete
left=$(ls -A "$B" | wc -l)
[ "$left" = 0 ] || bfs_fail "$left entries left after deleting all"
rmdir "$B" || bfs_fail "rmdir of the emptied directory"
bfs_log "deleted in $(($(date +%s) - t0)) s"
[ -z "$(ls -A "$D")" ] || bfs_fail "main not empty: $(ls -A "$D" | head)"
bfs_umount "$MNT"
