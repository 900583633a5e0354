#!/usr/bin/env bash
# Corruption: damage one stored block (of /f3, which branch feature shares)
# and one metadata record (the inode of feature's /fe1) of an unmounted
# store on purpose.  After mounting again, reads of the damaged files fail
# with EIO - never wrong data - while every other file reads back intact;
# `branchfs check` exits 1 naming exactly those files and branches (and
# nothing else); --repair drops nothing and they stay reported.
. "$(dirname "$0")/lib.sh"

DAMAGE=$BFS_E2E_BIN/bfs_damage
BFS_CHECK_ON_UMOUNT=0 # the store is damaged on purpose: checked by hand below
[ -x "$DAMAGE" ] || bfs_fail "$DAMAGE not built (make e2e-progs)"
bfs_setup
H=$BFS_WORK/host
mkdir "$H"

bfs_step "files on main and on branch feature"
mkdir "$D/sub"
for f in f1 f2 f3 f4 sub/g1 sub/g2; do
	head -c $((100000 + RANDOM * 4)) /dev/urandom >"$H/${f//\//_}"
	cp "$H/${f//\//_}" "$D/$f"
done
(seq 1 200000 || true) >"$D/text"
"$BRANCHFS" branch create feature -s "$STORE" >/dev/null || bfs_fail "branch create"
F=$MNT/feature
head -c 50000 /dev/urandom >"$F/fe1"
head -c 70000 /dev/urandom >"$F/fe2"
cat "$H/f1" >>"$F/f2"
sync "$D" "$F"
# expected contents of everything except the files about to be damaged
(cd "$MNT" && find main feature -type f ! -path main/f3 ! -path feature/f3 \
	! -path feature/fe1 -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) >"$BFS_WORK/sums"
[ "$(wc -l <"$BFS_WORK/sums")" -eq 13 ] || bfs_fail "expected 13 intact files: $(cat "$BFS_WORK/sums")"
bfs_umount "$MNT"

bfs_step "the undamaged store checks clean"
"$BRANCHFS" check "$STORE" || bfs_fail "check of the undamaged store failed"

bfs_step "damage a block of /f3 and the inode record of feature:/fe1"
hash=$("$DAMAGE" "$STORE" block main f3 1) || bfs_fail "bfs_damage block"
ino=$("$DAMAGE" "$STORE" inode feature fe1) || bfs_fail "bfs_damage inode"
bfs_log "damaged block $hash (main:/f3 block 1) and inode $ino (feature:/fe1)"

bfs_step "reads of the damaged files fail with EIO, the others are intact"
bfs_mount "$STORE" "$MNT"
for f in main/f3 feature/f3; do
	bfs_expect_fail any cp "$MNT/$f" "$BFS_WORK/copy"
	grep -q "Input/output error" <<<"$BFS_ERR" || bfs_fail "reading $f: $BFS_ERR (not EIO)"
	# the blocks around the damaged one still read
	dd if="$MNT/$f" bs=8192 count=1 status=none | cmp - <(head -c 8192 "$H/f3") ||
		bfs_fail "$f: block 0 differs"
	dd if="$MNT/$f" bs=8192 skip=2 count=1 status=none |
		cmp - <(tail -c +$((2 * 8192 + 1)) "$H/f3" | head -c 8192) ||
		bfs_fail "$f: block 2 differs"
done
bfs_expect_fail any stat "$F/fe1"
grep -q "Input/output error" <<<"$BFS_ERR" || bfs_fail "stat fe1: $BFS_ERR (not EIO)"
bfs_expect_fail any cp "$F/fe1" "$BFS_WORK/copy"
(cd "$MNT" && sha256sum --quiet -c "$BFS_WORK/sums") || bfs_fail "an undamaged file reads back wrong"
for f in f1 f4 sub/g1; do
	bfs_same "$H/${f//\//_}" "$D/$f"
done
bfs_umount "$MNT"

bfs_step "check names the damaged files and branches, nothing else"
rc=0
out=$("$BRANCHFS" check "$STORE") || rc=$?
printf '%s\n' "$out" >&2
[ $rc -eq 1 ] || bfs_fail "check exited $rc on a damaged store, expected 1"
grep -Eq '^block-corrupt +main: /f3: ' <<<"$out" || bfs_fail "check does not name main:/f3"
grep -Eq '^block-corrupt +feature: /f3: ' <<<"$out" || bfs_fail "check does not name feature:/f3"
grep -Eq '^inode +feature: /fe1: ' <<<"$out" || bfs_fail "check does not name feature:/fe1"
grep -q "$hash" <<<"$out" || bfs_fail "check does not give the damaged block's hash"
json=$("$BRANCHFS" check --json "$STORE") && bfs_fail "check --json exited 0"
bfs_json_valid <<<"$json" || bfs_fail "check --json is not JSON: $json"
# every problem is about one of the damaged files (the inode's own key is
# also reported without a path), and both are there
perl -MJSON::PP -e '
	my $j = JSON::PP->new->decode(do { local $/; <STDIN> });
	die "clean is not false\n" if $j->{clean};
	my %seen;
	for my $p (@{$j->{problems}}) {
		my $where = ($p->{branch} // "-") . ":" . ($p->{path} // "-");
		$seen{$where} = 1;
		next if $where =~ m{^(main|feature):/f3$} && $p->{kind} eq "block-corrupt";
		next if $where eq "feature:/fe1" && $p->{kind} eq "inode";
		next if $where eq "feature:-" && $p->{kind} eq "inode";
		die "unexpected problem: $p->{kind} $where $p->{detail}\n";
	}
	for my $w ("main:/f3", "feature:/f3", "feature:/fe1") {
		die "$w not reported\n" unless $seen{$w};
	}
	die "no counts\n" unless $j->{counts}{blocks} > 0;
' <<<"$json" || bfs_fail "check --json: wrong problems: $json"

bfs_step "--repair drops no data: the damage stays reported"
rc=0
"$BRANCHFS" check --repair "$STORE" >"$BFS_WORK/repair.out" || rc=$?
cat "$BFS_WORK/repair.out" >&2
[ $rc -eq 1 ] || bfs_fail "check --repair exited $rc, expected 1 (unrepairable damage)"
grep -q 'remain' "$BFS_WORK/repair.out" || bfs_fail "--repair does not say what remains"
rc=0
out2=$("$BRANCHFS" check "$STORE") || rc=$?
[ $rc -eq 1 ] || bfs_fail "check after --repair exited $rc"
[ "$(grep -c '/f3\|/fe1' <<<"$out2")" -eq "$(grep -c '/f3\|/fe1' <<<"$out")" ] ||
	bfs_fail "--repair changed what is reported: $out2"
bfs_mount "$STORE" "$MNT"
bfs_expect_fail any cp "$D/f3" "$BFS_WORK/copy"
(cd "$MNT" && sha256sum --quiet -c "$BFS_WORK/sums") || bfs_fail "an undamaged file reads back wrong after --repair"
bfs_umount "$MNT"

bfs_step "check refuses a mounted store"
bfs_mount "$STORE" "$MNT"
bfs_expect_fail 2 "$BRANCHFS" check "$STORE"
# --json says it was not checked ("clean": null), not "no problems"
bfs_expect_fail 2 "$BRANCHFS" check --json "$STORE"
bfs_json_valid <<<"$BFS_OUT" || bfs_fail "check --json of a mounted store is not JSON: $BFS_OUT"
perl -MJSON::PP -e '
	my $j = JSON::PP->new->decode(do { local $/; <STDIN> });
	exit(exists $j->{clean} && !defined $j->{clean} && $j->{error} =~ /is mounted/ ? 0 : 1);
' <<<"$BFS_OUT" || bfs_fail "check --json of a mounted store: $BFS_OUT"
bfs_umount "$MNT"
mkdir "$BFS_WORK/notastore"
bfs_expect_fail 2 "$BRANCHFS" check --json "$BFS_WORK/notastore"
perl -MJSON::PP -e '
	my $j = JSON::PP->new->decode(do { local $/; <STDIN> });
	exit(exists $j->{clean} && !defined $j->{clean} && $j->{error} =~ /not a branchfs store/ ? 0 : 1);
' <<<"$BFS_OUT" || bfs_fail "check --json of a directory that is not a store: $BFS_OUT"
