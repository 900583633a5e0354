#!/usr/bin/env bash
# kill -9 of the daemon: nothing that was fsynced is lost or torn.
#
# A writer appends 4 KiB records to a log, overwrites 8 KiB slots in place,
# and does durable renames (write, fsync, rename, fsync dir), fsyncing each
# and recording on the host disk what was acknowledged.  The daemon is
# killed with SIGKILL in the middle; the mount then reports "Transport
# endpoint is not connected", `branchfs umount` cleans it up, the store
# mounts again and every acknowledged record is there and intact.  Twice,
# the second time on an idle daemon right after fsync.
. "$(dirname "$0")/lib.sh"

bfs_setup
H=$BFS_WORK/host
mkdir "$H"

cat >"$BFS_WORK/crash.pl" <<'PL'
use strict;
use warnings;
use Fcntl qw(SEEK_SET O_RDWR O_CREAT);
use IO::Handle;
sub rec {
	my ($k, $len) = @_;
	my $h = sprintf("rec %010d|", $k);
	return substr($h x (int($len / length($h)) + 1), 0, $len);
}
sub put {
	my ($fh, $off, $buf) = @_;
	sysseek($fh, $off, SEEK_SET) or die "seek: $!";
	my $w = syswrite($fh, $buf);
	die "write: $!" unless defined $w && $w == length($buf);
}
sub get {
	my ($fh, $off, $len) = @_;
	sysseek($fh, $off, SEEK_SET) or die "seek: $!";
	my $r = sysread($fh, my $buf, $len);
	die "read: $!" unless defined $r;
	return $buf;
}
my $mode = shift @ARGV;
my ($dir, $ackf) = @ARGV;
if ($mode eq 'write') {
	sysopen(my $log, "$dir/log", O_RDWR | O_CREAT) or die "log: $!";
	sysopen(my $slots, "$dir/slots", O_RDWR | O_CREAT) or die "slots: $!";
	open(my $ack, '>>', $ackf) or die "$ackf: $!";
	$ack->autoflush(1);
	open(my $dh, '<', $dir) or die "dir: $!";
	for (my $k = 1; ; $k++) {
		put($log, $k * 4096, rec($k, 4096));
		$log->sync or die "fsync log: $!";
		print $ack "log $k\n";
		put($slots, ($k % 16) * 8192, rec($k, 8192));
		$slots->sync or die "fsync slots: $!";
		print $ack "slot $k\n";
		if ($k % 10 == 0) {
			open(my $t, '>', "$dir/meta.tmp") or die "tmp: $!";
			print $t rec($k, 100) or die "write tmp: $!";
			$t->flush or die "flush: $!";
			$t->sync or die "fsync tmp: $!";
			close($t) or die "close: $!";
			rename("$dir/meta.tmp", "$dir/meta-$k") or die "rename: $!";
			$dh->sync or die "fsync dir: $!";
			print $ack "meta $k\n";
		}
	}
} elsif ($mode eq 'verify') {
	open(my $ack, '<', $ackf) or die "$ackf: $!";
	my (%slotmax, $logs, $metas);
	sysopen(my $log, "$dir/log", O_RDWR) or die "log: $!";
	sysopen(my $slots, "$dir/slots", O_RDWR) or die "slots: $!";
	while (<$ack>) {
		my ($what, $k) = split;
		if ($what eq 'log') {
			get($log, $k * 4096, 4096) eq rec($k, 4096) or die "log record $k lost or torn\n";
			$logs++;
		} elsif ($what eq 'slot') {
			my $s = $k % 16;
			$slotmax{$s} = $k if !defined $slotmax{$s} || $k > $slotmax{$s};
		} elsif ($what eq 'meta') {
			open(my $m, '<', "$dir/meta-$k") or die "meta-$k lost: $!\n";
			local $/;
			my $c = <$m>;
			$c eq rec($k, 100) or die "meta-$k has wrong contents\n";
			$metas++;
		}
	}
	for my $s (sort { $a <=> $b } keys %slotmax) {
		my $got = get($slots, $s * 8192, 8192);
		$got =~ /^rec (\d{10})\|/ or die "slot $s is garbage\n";
		my $j = $1 + 0;
		$j % 16 == $s or die "slot $s holds record $j\n";
		$j >= $slotmax{$s} or die "slot $s holds record $j, older than acknowledged $slotmax{$s}\n";
		$got eq rec($j, 8192) or die "slot $s: record $j is torn\n";
	}
	printf "verified %d log records, %d slots, %d renames\n", $logs // 0, scalar(keys %slotmax), $metas // 0;
}
PL

# crash_and_recover ACKFILE: kill -9 the daemon, check the stale mount,
# clean it up, mount again, verify.
crash_and_recover() {
	local pid out i
	pid=$(bfs_daemon_pid "$STORE")
	bfs_log "kill -9 daemon $pid"
	kill -KILL "$pid"
	bfs_wait_gone "$pid" 20 || bfs_fail "daemon $pid survived SIGKILL"

	# A request in flight while the kernel aborts the connection fails
	# with ECONNABORTED; every later one with ENOTCONN.
	for ((i = 0; i < 50; i++)); do
		out=$(ls "$MNT" 2>&1) && bfs_fail "ls on a dead mount succeeded: $out"
		grep -q "Software caused connection abort" <<<"$out" || break
		sleep 0.1
	done
	grep -q "Transport endpoint is not connected" <<<"$out" ||
		bfs_fail "ls on a dead mount said '$out'"
	out=$(stat "$D" 2>&1) && bfs_fail "stat on a dead mount succeeded"
	bfs_is_mounted "$MNT" || bfs_fail "the dead mount vanished by itself"

	bfs_step "the store is free again: stats works before the cleanup"
	"$BRANCHFS" stats "$STORE" >/dev/null || bfs_fail "stats of the store of a killed daemon failed"

	bfs_step "branchfs umount cleans up the stale mount"
	bfs_umount "$MNT"
	[ -d "$MNT" ] || bfs_fail "mountpoint gone"
	ls "$MNT" >/dev/null || bfs_fail "mountpoint not usable after umount"

	bfs_step "mount again and verify"
	bfs_mount "$STORE" "$MNT"
	perl "$BFS_WORK/crash.pl" verify "$D/w" "$1" >&2 || bfs_fail "fsynced data lost or torn"
}

bfs_step "data fsynced before the writer starts"
head -c $((4 * 1024 * 1024 + 77)) /dev/urandom >"$H/rand"
dd if="$H/rand" of="$D/rand" bs=1M conv=fsync status=none
echo durable >"$D/tmp"
sync "$D/tmp"
mv "$D/tmp" "$D/renamed"
mkdir "$D/dir"
echo nested >"$D/dir/file"
sync "$D/dir/file" "$D/dir" "$D"
mkdir "$D/w"

bfs_step "round 1: kill -9 under a writer that fsyncs every record"
perl "$BFS_WORK/crash.pl" write "$D/w" "$H/ack1" 2>"$BFS_WORK/writer1.err" &
writer=$!
for ((i = 0; i < 600; i++)); do
	n=$(grep -c '^log' "$H/ack1" 2>/dev/null) || n=0
	[ "$n" -ge 300 ] && break
	kill -0 $writer 2>/dev/null || break
	sleep 0.1
done
kill -0 $writer 2>/dev/null || {
	cat "$BFS_WORK/writer1.err" >&2
	bfs_fail "writer stopped before the crash"
}
acked=$(grep -c '^log' "$H/ack1")
[ "$acked" -ge 300 ] || bfs_fail "writer acknowledged only $acked records in 60 s"
bfs_log "$acked records acknowledged"
crash_and_recover "$H/ack1"
wait $writer && bfs_fail "writer did not notice the crash"
bfs_log "writer: $(tail -n1 "$BFS_WORK/writer1.err")"
bfs_same "$H/rand" "$D/rand"
[ "$(cat "$D/renamed")" = durable ] || bfs_fail "durable rename lost"
[ "$(cat "$D/dir/file")" = nested ] || bfs_fail "file in new directory lost"

bfs_step "round 2: kill -9 an idle daemon right after fsync"
head -c $((1024 * 1024)) /dev/urandom >"$H/rand2"
dd if="$H/rand2" of="$D/rand2" bs=64k conv=fsync status=none
echo v2 >"$D/renamed.tmp"
sync "$D/renamed.tmp"
mv "$D/renamed.tmp" "$D/renamed"
sync "$D"
truncate -s 1000 "$D/rand"
sync "$D/rand"
dd if="$H/rand2" of="$D/osync" bs=100000 oflag=sync status=none
dd if="$H/rand2" of="$D/fdatasync" bs=1M conv=fdatasync status=none
dd if="$H/rand2" of="$D/odirect" bs=1M oflag=direct,dsync status=none
crash_and_recover "$H/ack1"
bfs_same "$H/rand2" "$D/osync"
bfs_same "$H/rand2" "$D/fdatasync"
bfs_same "$H/rand2" "$D/odirect"
bfs_same "$H/rand2" "$D/rand2"
[ "$(cat "$D/renamed")" = v2 ] || bfs_fail "second durable rename lost"
[ "$(stat -c %s "$D/rand")" = 1000 ] || bfs_fail "fsynced truncate lost"
cmp -n 1000 "$H/rand" "$D/rand" || bfs_fail "truncated file damaged"

bfs_step "round 3: a file unlinked while open at the crash is purged, its space freed"
BLOCKS_KEY='^(?!.*(bytes|pending|size)).*block'
bfs_umount "$MNT"
b0=$(bfs_stat "$STORE" "$BLOCKS_KEY")
bfs_mount "$STORE" "$MNT"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$H/orphan"
cp "$H/orphan" "$D/orphan"
sync "$D/orphan"
exec 8<"$D/orphan"
rm "$D/orphan"
cmp - "$H/orphan" <&8 || bfs_fail "unlinked open file unreadable"
pid=$(bfs_daemon_pid "$STORE")
kill -KILL "$pid"
bfs_wait_gone "$pid" 20 || bfs_fail "daemon survived SIGKILL"
exec 8<&-
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
[ ! -e "$D/orphan" ] || bfs_fail "the unlinked file came back"
bfs_umount "$MNT"
b1=$(bfs_stat "$STORE" "$BLOCKS_KEY")
bfs_log "blocks: $b0 before, $b1 after the orphan's crash and recovery"
[ "$b1" -le $((b0 + 8)) ] || bfs_fail "orphaned file's $((b1 - b0)) blocks were never freed"
bfs_mount "$STORE" "$MNT"

bfs_step "the recovered store keeps working and unmounts cleanly"
cp "$H/rand" "$D/again"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/rand" "$D/again"
perl "$BFS_WORK/crash.pl" verify "$D/w" "$H/ack1" >&2 || bfs_fail "data lost after a clean remount"
bfs_umount "$MNT"
