#!/usr/bin/env bash
# Concurrent writers: to disjoint ranges of one file (range boundaries and
# interleaved stripes inside 8 KiB blocks, so writers share blocks), O_APPEND
# writers to one log, many processes creating, writing, fsyncing, renaming
# and removing many files at once, and processes moving files and
# directories between two directories (link counts stay right).  Every result is compared with
# the same data written on the host disk, then again after a remount.
. "$(dirname "$0")/lib.sh"

bfs_setup
H=$BFS_WORK/host
mkdir "$H"
W=4 # writers per file

# perl is part of every Debian system (perl-base is essential)
cat >"$BFS_WORK/writer.pl" <<'PL'
use strict;
use warnings;
use Fcntl qw(SEEK_SET O_WRONLY O_CREAT O_APPEND);
use IO::Handle;
my $mode = shift @ARGV;
sub slurp_at {
	my ($fh, $off, $len) = @_;
	sysseek($fh, $off, SEEK_SET) or die "seek: $!";
	my $got = sysread($fh, my $buf, $len);
	die "read: $!" unless defined $got;
	return $buf;
}
sub put_at {
	my ($fh, $off, $buf) = @_;
	sysseek($fh, $off, SEEK_SET) or die "seek $off: $!";
	my $w = syswrite($fh, $buf);
	die "write at $off: $!" unless defined $w && $w == length($buf);
}
if ($mode eq 'range') {       # SRC DST START END CHUNK: copy [START,END)
	my ($src, $dst, $start, $end, $chunk) = @ARGV;
	open(my $s, '<:raw', $src) or die "$src: $!";
	open(my $d, '+<:raw', $dst) or die "$dst: $!";
	for (my $off = $start; $off < $end; $off += $chunk) {
		my $len = $end - $off < $chunk ? $end - $off : $chunk;
		put_at($d, $off, slurp_at($s, $off, $len));
	}
	$d->sync or die "fsync: $!";
} elsif ($mode eq 'stripe') { # SRC DST CHUNK N I SEED: chunks k = I mod N, shuffled
	my ($src, $dst, $chunk, $n, $i, $seed) = @ARGV;
	open(my $s, '<:raw', $src) or die "$src: $!";
	open(my $d, '+<:raw', $dst) or die "$dst: $!";
	my $size = -s $src;
	my @k;
	for (my $k = $i; $k * $chunk < $size; $k += $n) { push @k, $k; }
	srand($seed);
	for (my $j = $#k; $j > 0; $j--) { my $r = int(rand($j + 1)); @k[$j, $r] = @k[$r, $j]; }
	put_at($d, $_ * $chunk, slurp_at($s, $_ * $chunk, $chunk)) for @k;
} elsif ($mode eq 'append') { # DST ID COUNT: fixed-size records by O_APPEND
	my ($dst, $id, $count) = @ARGV;
	sysopen(my $d, $dst, O_WRONLY | O_CREAT | O_APPEND) or die "$dst: $!";
	for my $j (1 .. $count) {
		my $rec = sprintf("writer %02d record %06d %s\n", $id, $j, 'x' x 40);
		my $w = syswrite($d, $rec);
		die "append: $!" unless defined $w && $w == length($rec);
	}
} elsif ($mode eq 'files') {  # SRC MNTDIR HOSTDIR ID COUNT SEED: many files, both sides
	my ($src, $md, $hd, $id, $count, $seed) = @ARGV;
	open(my $s, '<:raw', $src) or die "$src: $!";
	my $size = -s $src;
	srand($seed);
	for my $j (1 .. $count) {
		my $len = int(rand(3)) == 0 ? int(rand(200000)) : int(rand(9000));
		my $off = int(rand($size - $len));
		my $buf = slurp_at($s, $off, $len);
		my $name = "p$id-f$j";
		for my $dir ($md, $hd) {
			open(my $f, '>:raw', "$dir/$name") or die "$dir/$name: $!";
			print $f $buf or die "write: $!";
			$f->flush or die "flush: $!";
			$f->sync or die "fsync: $!" if $j % 10 == 0;
			close($f) or die "close: $!";
		}
		if ($j % 5 == 0) { # a directory that comes and goes, a rename out of it
			for my $dir ($md, $hd) {
				mkdir("$dir/d$id-$j") or die "mkdir: $!";
				open(my $f, '>', "$dir/d$id-$j/tmp") or die "$!";
				print $f "$id $j\n";
				close($f) or die "$!";
				rename("$dir/d$id-$j/tmp", "$dir/r$id-$j") or die "rename: $!";
				rmdir("$dir/d$id-$j") or die "rmdir: $!";
			}
		}
		if ($j % 7 == 0) { # overwrite an earlier file by rename
			my $old = "p$id-f" . int(1 + rand($j - 1));
			for my $dir ($md, $hd) {
				rename("$dir/$name", "$dir/$old") or die "rename over: $!";
			}
		}
		if ($j % 11 == 0) {
			unlink("$_/p$id-f" . ($j - 1)) for ($md, $hd);
		}
	}
} elsif ($mode eq 'renames') { # ROOT ID COUNT SEED: own files and dirs hop between d1 and d2
	my ($root, $id, $count, $seed) = @ARGV;
	srand($seed);
	my @where;
	for my $k (0 .. 19) {
		my $kind = $k < 15 ? 'f' : 'd';
		my $name = "p$id-$kind$k";
		if ($kind eq 'f') {
			open(my $f, '>', "$root/d1/$name") or die "$!";
			print $f "$name\n";
			close($f) or die "$!";
		} else {
			mkdir("$root/d1/$name") or die "mkdir: $!";
			open(my $f, '>', "$root/d1/$name/inside") or die "$!";
			print $f "$name\n";
			close($f) or die "$!";
		}
		$where[$k] = 'd1';
	}
	for (1 .. $count) {
		my $k = int(rand(20));
		my $name = "p$id-" . ($k < 15 ? 'f' : 'd') . $k;
		my $to = $where[$k] eq 'd1' ? 'd2' : 'd1';
		rename("$root/$where[$k]/$name", "$root/$to/$name")
			or die "rename $where[$k]/$name -> $to: $!";
		$where[$k] = $to;
	}
	open(my $out, '>', "$root/../where-$id") or die "$!";
	print $out "$where[$_]/p$id-" . ($_ < 15 ? 'f' : 'd') . "$_\n" for 0 .. 19;
} else {
	die "unknown mode $mode";
}
PL
wr() { perl "$BFS_WORK/writer.pl" "$@"; }

# waitall PID...: wait for each, fail if any failed
waitall() {
	local p bad=0
	for p in "$@"; do wait "$p" || bad=1; done
	[ $bad = 0 ] || bfs_fail "a writer failed"
}

head -c $((12 * 1024 * 1024)) /dev/urandom >"$H/src"
# half compressible, so blocks of both kinds are shared between writers
(seq 1 2000000 || true) | head -c $((4 * 1024 * 1024)) >"$H/text"
dd if="$H/text" of="$H/src" bs=1M seek=4 conv=notrunc status=none

bfs_step "$W writers, disjoint ranges with boundaries inside blocks"
: >"$D/ranges"
size=$(stat -c %s "$H/src")
pids=()
for ((i = 0; i < W; i++)); do
	start=$((i * size / W + (i > 0 ? 3001 : 0)))
	end=$(((i + 1) * size / W + (i + 1 < W ? 3001 : 0)))
	wr range "$H/src" "$D/ranges" $start $end 5000 &
	pids+=($!)
done
waitall "${pids[@]}"
bfs_same "$H/src" "$D/ranges"

bfs_step "$W writers, interleaved 3000-byte stripes in random order"
for round in 1 2 3; do
	: >"$D/stripes-$round"
	pids=()
	for ((i = 0; i < W; i++)); do
		wr stripe "$H/src" "$D/stripes-$round" 3000 $W $i $((round * 100 + i)) &
		pids+=($!)
	done
	waitall "${pids[@]}"
	bfs_same "$H/src" "$D/stripes-$round"
done

bfs_step "overwriting one file's stripes concurrently with other data"
head -c "$size" /dev/urandom >"$H/src2"
pids=()
for ((i = 0; i < W; i++)); do
	wr stripe "$H/src2" "$D/stripes-1" 8192 $W $i $((900 + i)) &
	pids+=($!)
done
waitall "${pids[@]}"
bfs_same "$H/src2" "$D/stripes-1"

bfs_step "$W O_APPEND writers to one log"
pids=()
for ((i = 0; i < W; i++)); do
	wr append "$D/log" $i 2000 &
	pids+=($!)
done
waitall "${pids[@]}"
[ "$(wc -l <"$D/log")" = $((W * 2000)) ] || bfs_fail "log has $(wc -l <"$D/log") lines"
[ "$(grep -cvE '^writer [0-9]{2} record [0-9]{6} x{40}$' "$D/log")" = 0 ] ||
	bfs_fail "torn records in the log: $(grep -vE '^writer [0-9]{2} record [0-9]{6} x{40}$' "$D/log" | head -3)"
for ((i = 0; i < W; i++)); do
	# each writer's records in its own order
	grep "^writer $(printf %02d $i) " "$D/log" | awk '{print $4}' | sort -c ||
		bfs_fail "writer $i records out of order"
done

bfs_step "8 processes x 300 files: create, write, fsync, rename, rmdir, unlink"
mkdir "$D/many" "$H/many"
pids=()
for ((i = 0; i < 8; i++)); do
	wr files "$H/src" "$D/many" "$H/many" $i 300 $((7 + i)) &
	pids+=($!)
done
waitall "${pids[@]}"
diff -r "$H/many" "$D/many" >&2 || bfs_fail "many files differ from the host copy"
n=$(find "$D/many" -type f | wc -l)
[ "$n" = "$(find "$H/many" -type f | wc -l)" ] || bfs_fail "file count $n"
bfs_log "$n files"

bfs_step "4 processes x 3000 renames of files and directories between two directories"
mkdir -p "$D/ren/d1" "$D/ren/d2"
pids=()
for ((i = 0; i < 4; i++)); do
	wr renames "$D/ren" $i 3000 $((50 + i)) &
	pids+=($!)
done
waitall "${pids[@]}"
check_renames() {
	local i e n1 n2 s1 s2
	for ((i = 0; i < 4; i++)); do
		while read -r e; do
			if [[ $e == */p$i-d* ]]; then
				[ "$(cat "$D/ren/$e/inside")" = "${e#*/}" ] || bfs_fail "directory $e lost its file"
			else
				[ "$(cat "$D/ren/$e")" = "${e#*/}" ] || bfs_fail "file $e lost"
			fi
		done <"$D/where-$i"
	done
	n1=$(ls "$D/ren/d1" | wc -l)
	n2=$(ls "$D/ren/d2" | wc -l)
	[ $((n1 + n2)) = 80 ] || bfs_fail "$n1 + $n2 entries in d1 and d2, want 80"
	s1=$(find "$D/ren/d1" -mindepth 1 -maxdepth 1 -type d | wc -l)
	s2=$(find "$D/ren/d2" -mindepth 1 -maxdepth 1 -type d | wc -l)
	[ "$(stat -c %h "$D/ren/d1")" = $((2 + s1)) ] ||
		bfs_fail "d1 has $s1 subdirectories but nlink $(stat -c %h "$D/ren/d1")"
	[ "$(stat -c %h "$D/ren/d2")" = $((2 + s2)) ] ||
		bfs_fail "d2 has $s2 subdirectories but nlink $(stat -c %h "$D/ren/d2")"
}
check_renames

bfs_step "concurrent readers and writers of different files, with fsyncs"
pids=()
for ((i = 0; i < 4; i++)); do
	(
		for ((j = 0; j < 20; j++)); do
			cmp -s "$H/src" "$D/ranges" || exit 1
		done
	) &
	pids+=($!)
	dd if="$H/src2" of="$D/dd-$i" bs=64k conv=fsync status=none &
	pids+=($!)
done
waitall "${pids[@]}"
for ((i = 0; i < 4; i++)); do bfs_same "$H/src2" "$D/dd-$i"; done

bfs_step "all of it after a remount"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/src" "$D/ranges"
bfs_same "$H/src2" "$D/stripes-1"
bfs_same "$H/src" "$D/stripes-2"
bfs_same "$H/src" "$D/stripes-3"
[ "$(wc -l <"$D/log")" = $((W * 2000)) ] || bfs_fail "log lost lines"
diff -r "$H/many" "$D/many" >&2 || bfs_fail "many files differ after remount"
check_renames
bfs_umount "$MNT"
