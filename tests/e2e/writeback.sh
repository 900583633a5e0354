#!/usr/bin/env bash
# `branchfs mount --writeback` (kernel writeback cache).
#
# 1. Files written and closed just before a snapshot or branch are in it
#    (close writes back), and so is what a still-open file fsynced; the rest
#    of an open file's writes may be missing (crash-consistent contract).
# 2. The mount's backing device may hold 10% of the system's dirty-page
#    threshold (max_ratio; the kernel's default for FUSE is 1%).
# 3. The mode-independent tests run again in this mode: posix_ops, fsx and
#    kill9 (nothing fsynced is lost when the daemon is killed).
. "$(dirname "$0")/lib.sh"

export BFS_MOUNT_OPTS=--writeback
bfs_setup
export BRANCHFS_STORE=$STORE

bfs_step "the dirty-page limit of the mount is raised"
dev=$(mountpoint -d "$MNT") || bfs_fail "mountpoint -d $MNT"
ratio=$(cat "/sys/class/bdi/$dev/max_ratio") || bfs_fail "no backing device $dev"
[ "$ratio" -ge 10 ] || bfs_fail "max_ratio of the mount's backing device $dev is $ratio, not 10"

bfs_step "write without fsync, then snapshot and branch at once"
for round in 1 2 3; do
	# 64 files x 64 KiB: small enough to stay dirty in the page cache
	mkdir "$D/r$round"
	for i in $(seq 1 64); do
		head -c 65536 /dev/urandom >"$D/r$round/f$i"
	done
	"$BRANCHFS" snapshot create main "s$round" >/dev/null || bfs_fail "snapshot create s$round"
	"$BRANCHFS" branch create "b$round" --from main >/dev/null || bfs_fail "branch create b$round"
	for i in $(seq 1 64); do
		cmp -s "$D/r$round/f$i" "$MNT/.snapshots/s$round/r$round/f$i" ||
			bfs_fail "snapshot s$round: r$round/f$i differs from what was written before it"
		cmp -s "$D/r$round/f$i" "$MNT/b$round/r$round/f$i" ||
			bfs_fail "branch b$round: r$round/f$i differs from what was written before it"
	done
done

bfs_step "a file still open in another process: what it fsynced is in the snapshot"
# Writes still in the page cache of a file that is open elsewhere may miss
# a snapshot (the kernel gives syncfs no way to wait for FUSE writes already
# in flight): that is the crash-consistent contract.  What was fsynced, and
# every file closed before the command, is always there.
for round in 1 2 3; do
	rm -f "$BFS_WORK/written"
	perl -e '
		use IO::Handle;
		open(my $fh, ">", $ARGV[0]) or die "open: $!";
		my $blk = join("", map { chr(65 + ($_ * 7 + $ARGV[2]) % 26) } 0 .. 8191);
		for my $i (0 .. 2047) { syswrite($fh, $blk) == 8192 or die "write: $!" }
		$fh->sync or die "fsync: $!";
		for my $i (0 .. 2047) { syswrite($fh, $blk) == 8192 or die "write: $!" }
		open(my $w, ">", $ARGV[1]) or die; close($w);
		sleep 60;' "$D/open$round" "$BFS_WORK/written" "$round" &
	WPID=$!
	for i in $(seq 1 600); do [ -e "$BFS_WORK/written" ] && break; sleep 0.05; done
	[ -e "$BFS_WORK/written" ] || bfs_fail "writer did not finish"
	"$BRANCHFS" snapshot create main "o$round" >/dev/null || bfs_fail "snapshot create o$round"
	kill "$WPID"; wait "$WPID" 2>/dev/null || true
	cmp -n $((16 << 20)) "$D/open$round" "$MNT/.snapshots/o$round/open$round" ||
		bfs_fail "snapshot o$round misses data that was fsynced before it"
done
bfs_umount "$MNT"

HERE=$(dirname "$0")
for t in posix_ops fsx kill9; do
	bfs_step "$t with --writeback"
	bash "$HERE/$t.sh" || bfs_fail "$t failed with --writeback"
done
echo "PASS writeback"
