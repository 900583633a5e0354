#!/usr/bin/env bash
# Space accounting of branches and snapshots:
#   - a fresh branch costs nothing in stored bytes, 0 exclusive bytes, and
#     under 64 KiB of database on disk (average over 20 branches);
#   - 64 MiB of random data written to a branch show as its exclusive bytes
#     in `branchfs du` (within 2%) and in stored bytes; 64 MiB of zeros cost
#     nothing;
#   - once a snapshot holds them they are no longer exclusive to the branch;
#     deleting the branch frees nothing, deleting the snapshot too and
#     `branchfs gc` gives everything back: stored bytes within 1% of before
#     (also checked offline and after a remount).
. "$(dirname "$0")/lib.sh"

MiB=$((1024 * 1024))
bfs_setup
export BRANCHFS_STORE=$STORE

# du_field NAME FIELD: exclusive_bytes / shared_bytes of NAME in du --json
# (perl's JSON::PP, as lib.sh: no python3 needed)
du_field() {
	local j
	j=$("$BRANCHFS" du --json) || bfs_fail "du --json"
	perl -MJSON::PP -e '
		my ($name, $field) = @ARGV;
		my $doc = JSON::PP->new->utf8->decode(do { local $/; <STDIN> });
		for my $r (@$doc) {
			if ($r->{name} eq $name && $r->{kind} ne "total") { print $r->{$field}, "\n"; exit 0 }
		}
		die "no du entry for $name\n";' "$1" "$2" <<<"$j" || bfs_fail "du --json: no $2 for $1 in: $j"
}
stored() { bfs_stat "$STORE" '^stored_bytes$'; }
dbbytes() { bfs_stat "$STORE" '^db_bytes$'; }
# within A B PCT: |A - B| <= B * PCT / 100
within() { awk -v a="$1" -v b="$2" -v p="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= b * p / 100) }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.2f MiB", a / 1048576 }'; }

bfs_step "main with 16 MiB random and 8 MiB of text"
head -c $((16 * MiB)) /dev/urandom >"$D/rand"
(seq 1 2000000 || true) | head -c $((8 * MiB)) >"$D/text"
"$BRANCHFS" gc >/dev/null || bfs_fail "gc"
S0=$(stored)
B0=$(bfs_stat "$STORE" '^blocks$')
bfs_log "before: stored $S0 bytes ($(mib "$S0")), $B0 blocks"
[ "$S0" -ge $((16 * MiB)) ] || bfs_fail "stored bytes $S0 < the 16 MiB of random data"

bfs_step "fresh branches cost nothing"
db0=$(dbbytes)
for i in $(seq 1 20); do
	"$BRANCHFS" branch create "f$i" >/dev/null || bfs_fail "branch create f$i"
done
db1=$(dbbytes)
per=$(((db1 - db0) / 20))
bfs_log "database bytes: $db0 -> $db1 for 20 branches: $per bytes per branch"
[ "$per" -lt 65536 ] || bfs_fail "a fresh branch costs $per bytes of database (limit 64 KiB)"
[ "$(stored)" = "$S0" ] || bfs_fail "20 fresh branches changed stored bytes: $S0 -> $(stored)"
[ "$(du_field f7 exclusive_bytes)" = 0 ] || bfs_fail "fresh branch f7 has $(du_field f7 exclusive_bytes) exclusive bytes"
sh=$(du_field f7 shared_bytes)
within "$sh" "$S0" 1 || bfs_fail "f7 shows $sh shared bytes, expected about $S0 (main's data)"
for i in $(seq 1 20); do
	"$BRANCHFS" branch delete "f$i" >/dev/null || bfs_fail "branch delete f$i"
done

bfs_step "64 MiB of random data on branch sp"
"$BRANCHFS" branch create sp >/dev/null || bfs_fail "branch create sp"
head -c $((64 * MiB)) /dev/urandom >"$BFS_WORK/r64"
cp "$BFS_WORK/r64" "$MNT/sp/big"
bfs_same "$BFS_WORK/r64" "$MNT/sp/big"
rm "$BFS_WORK/r64"
exb=$(du_field sp exclusive_bytes)
bfs_log "du: sp exclusive $exb ($(mib "$exb")), shared $(du_field sp shared_bytes); main exclusive $(du_field main exclusive_bytes)"
within "$exb" $((64 * MiB)) 2 || bfs_fail "sp exclusive bytes $exb ($(mib "$exb")), expected 64 MiB +- 2%"
S1=$(stored)
within $((S1 - S0)) $((64 * MiB)) 2 || bfs_fail "stored bytes grew by $((S1 - S0)), expected 64 MiB +- 2%"
"$BRANCHFS" branch list --json | perl -MJSON::PP -e '
	my ($r) = grep { $_->{name} eq "sp" } @{ JSON::PP->new->utf8->decode(do { local $/; <STDIN> }) };
	exit(abs($r->{exclusive_bytes} - 64 * 2**20) <= 64 * 2**20 * 0.02 ? 0 : 1);' ||
	bfs_fail "branch list --json does not show sp's 64 MiB as its exclusive bytes"

bfs_step "64 MiB of zeros cost nothing"
dd if=/dev/zero of="$MNT/sp/zeros" bs=1M count=64 status=none
[ "$(stored)" = "$S1" ] || bfs_fail "64 MiB of zeros changed stored bytes: $S1 -> $(stored)"
rm "$MNT/sp/zeros"

bfs_step "a snapshot shares them; deleting the branch then the snapshot frees them"
"$BRANCHFS" snapshot create sp sps >/dev/null || bfs_fail "snapshot create sp sps"
exb=$(du_field sp exclusive_bytes)
[ "$exb" -lt $((MiB / 2)) ] || bfs_fail "sp still has $exb exclusive bytes while snapshot sps holds the same blocks"
"$BRANCHFS" branch delete sp >/dev/null || bfs_fail "branch delete sp"
"$BRANCHFS" gc >/dev/null || bfs_fail "gc"
within "$(stored)" "$S1" 1 || bfs_fail "deleting sp freed blocks its snapshot still shows: $S1 -> $(stored)"
exb=$(du_field sps exclusive_bytes)
within "$exb" $((64 * MiB)) 2 || bfs_fail "snapshot sps exclusive $exb, expected 64 MiB +- 2% once sp is gone"
cmp -s <(head -c 1000000 "$MNT/.snapshots/sps/big") <(head -c 1000000 "$MNT/.snapshots/sps/big") ||
	bfs_fail "cannot read sps/big"
"$BRANCHFS" snapshot delete sps >/dev/null || bfs_fail "snapshot delete sps"
"$BRANCHFS" gc >/dev/null || bfs_fail "gc"
S2=$(stored)
bfs_log "after deleting sp and sps and gc: stored $S2 (before: $S0, diff $((S2 - S0)))"
within "$S2" "$S0" 1 || bfs_fail "stored bytes $S2 not within 1% of $S0 after deleting the branch and gc"
[ "$(bfs_stat "$STORE" '^blocks$')" = "$B0" ] || bfs_log "note: blocks $B0 -> $(bfs_stat "$STORE" '^blocks$')"
[ "$(bfs_stat "$STORE" '^gc_pending$')" = 0 ] || bfs_fail "gc_pending not 0 after gc"

bfs_step "same again: branch, write, delete without a snapshot"
"$BRANCHFS" branch create sq >/dev/null || bfs_fail "branch create sq"
head -c $((32 * MiB)) /dev/urandom >"$MNT/sq/big"
dd if=/dev/urandom of="$MNT/sq/rand" bs=8192 seek=100 count=128 conv=notrunc status=none # overwrite 1 MiB of main's file
exb=$(du_field sq exclusive_bytes)
within "$exb" $((33 * MiB)) 2 || bfs_fail "sq exclusive $exb ($(mib "$exb")), expected 33 MiB +- 2%"
"$BRANCHFS" branch delete sq >/dev/null || bfs_fail "branch delete sq"
"$BRANCHFS" gc >/dev/null || bfs_fail "gc"
within "$(stored)" "$S0" 1 || bfs_fail "stored $(stored) not within 1% of $S0 after deleting sq"

bfs_step "offline and after a remount"
bfs_umount "$MNT"
S3=$(stored)
within "$S3" "$S0" 1 || bfs_fail "offline stats: stored $S3, expected about $S0"
"$BRANCHFS" du --json >/dev/null || bfs_fail "offline du"
bfs_mount "$STORE" "$MNT"
within "$(stored)" "$S0" 1 || bfs_fail "after remount: stored $(stored), expected about $S0"
[ "$(head -c 100 "$D/text")" = "$(seq 1 100 | head -c 100)" ] || bfs_fail "main/text damaged"
bfs_umount "$MNT"
