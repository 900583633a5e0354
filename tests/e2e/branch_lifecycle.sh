#!/usr/bin/env bash
# Lifecycle of branches and snapshots, mounted (through the daemon) and
# offline (the CLI opens the store):
#   - create / delete / rename of branches and snapshots: MNT/NAME and
#     MNT/.snapshots/NAME appear and vanish at once (no waiting, even with
#     the kernel's dentries of the old names cached);
#   - reset to the branch point discards changes (also in files whose
#     pages the kernel had cached); reset --to a snapshot;
#   - deleting a parent with live children and snapshots leaves them intact
#     (also after gc and a remount);
#   - delete and reset refused while a file is open, allowed with --force,
#     and the daemon survives reads and writes on the orphaned descriptor;
#   - bad names (/, .., empty, 201 bytes, control characters, (deleted), leading - or
#     .) and unknown names: non-zero exit, message on stderr, nothing made;
#   - --json of every listing parses; delete, reset and rename confirm
#     what they did (text and --json);
#   - the same commands offline, verified after mounting;
#   - 1,000 branches in one store, created and deleted while mounted.
# Knobs: BFS_LIFECYCLE_N (1000 branches).
. "$(dirname "$0")/lib.sh"

NBR=${BFS_LIFECYCLE_N:-1000}
bfs_setup
export BRANCHFS_STORE=$STORE
bfs() { "$BRANCHFS" "$@"; }
# ok CMD...: must succeed (its stdout is discarded)
ok() { "$BRANCHFS" "$@" >/dev/null || bfs_fail "branchfs $* failed"; }
# says WANT CMD...: must succeed and print exactly WANT (a --json object is
# first checked to parse, then compared as printed)
says() {
	local want=$1 out
	shift
	out=$("$BRANCHFS" "$@") || bfs_fail "branchfs $* failed"
	case " $* " in *" --json "*) bfs_json_valid <<<"$out" || bfs_fail "branchfs $*: not JSON: $out" ;; esac
	[ "$out" = "$want" ] || bfs_fail "branchfs $* printed '$out', expected '$want'"
}
top() { ls -A "$MNT" | LC_ALL=C sort; }
snaps() { ls -A "$MNT/.snapshots" | LC_ALL=C sort; }
has_line() { grep -qxF -- "$2" <<<"$1"; }
sum() { bfs_tree_sum "$1"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# json_ok WHAT < JSON: parses (perl's JSON::PP, as lib.sh: no python3 needed)
json_ok() {
	local j
	j=$(cat)
	perl -MJSON::PP -e 'JSON::PP->new->utf8->decode(do { local $/; <STDIN> })' <<<"$j" ||
		bfs_fail "$1: not JSON: $j"
}
# json_names KIND: names in `branchfs KIND list --json`, one a line
json_names() {
	local j
	j=$(bfs "$1" list --json) || bfs_fail "$1 list --json"
	json_ok "$1 list --json" <<<"$j"
	perl -MJSON::PP -e 'binmode STDOUT, ":utf8";
		print "$_->{name}\n" for @{ JSON::PP->new->utf8->decode(do { local $/; <STDIN> }) }' <<<"$j" |
		LC_ALL=C sort
}

bfs_step "main with data"
mkdir -p "$D/dir/sub"
head -c 300000 /dev/urandom >"$D/dir/rand"
seq 1 50000 >"$D/text"
echo v1 >"$D/version"
ln -s text "$D/link"
[ "$(top)" = "$(printf '.snapshots\nmain')" ] || bfs_fail "fresh mount shows: $(top)"
MAIN0=$(sum "$D")

bfs_step "create: directories appear at once"
[ -e "$MNT/b1" ] && bfs_fail "b1 exists before creation" # also caches a negative dentry
[ -e "$MNT/.snapshots/s1" ] && bfs_fail "s1 exists before creation"
t0=$(now_ms)
ok branch create b1
bfs_log "branch create b1: $(($(now_ms) - t0)) ms end to end"
[ -d "$MNT/b1" ] || bfs_fail "MNT/b1 not there right after branch create"
has_line "$(top)" b1 || bfs_fail "ls MNT lacks b1: $(top)"
[ "$(sum "$MNT/b1")" = "$MAIN0" ] || bfs_fail "b1 differs from main"
ok snapshot create main s1
[ -d "$MNT/.snapshots/s1" ] || bfs_fail ".snapshots/s1 not there right after snapshot create"
has_line "$(snaps)" s1 || bfs_fail "ls .snapshots lacks s1: $(snaps)"
[ "$(sum "$MNT/.snapshots/s1")" = "$MAIN0" ] || bfs_fail "s1 differs from main"
ok branch create b2 --from s1
ok branch create b3 --from b1
[ "$(sum "$MNT/b2")" = "$MAIN0" ] && [ "$(sum "$MNT/b3")" = "$MAIN0" ] || bfs_fail "b2/b3 differ from main"
[ "$(json_names branch)" = "$(printf 'b1\nb2\nb3\nmain')" ] || bfs_fail "branch list: $(json_names branch)"
[ "$(json_names snapshot)" = s1 ] || bfs_fail "snapshot list: $(json_names snapshot)"
# none is null in JSON (the table's "-"): main has no parent; b2 is from s1
pj=$(bfs branch list --json | perl -MJSON::PP -e 'my %b = map { $_->{name} => $_ }
	@{ JSON::PP->new->decode(do { local $/; <STDIN> }) };
	print join(" ", map { $_ // "null" } $b{main}{parent}, $b{main}{snapshot},
		$b{b2}{parent}, $b{b2}{snapshot}, $b{b3}{snapshot}, $b{b2}{reset_to})')
[ "$pj" = "null null main s1 null null" ] || bfs_fail "parent/snapshot/reset_to in branch list --json: $pj"
# the text listing names them too
bfs branch list | grep -q '^b3 ' || bfs_fail "branch list (text) lacks b3: $(bfs branch list)"

bfs_step "rename: old name vanishes, new appears at once"
stat "$MNT/b1" "$MNT/b1/text" >/dev/null # cache the dentries
says "renamed b1 to b1r" branch rename b1 b1r
[ -e "$MNT/b1" ] && bfs_fail "MNT/b1 still there after rename"
[ -d "$MNT/b1r" ] || bfs_fail "MNT/b1r missing after rename"
[ "$(sum "$MNT/b1r")" = "$MAIN0" ] || bfs_fail "b1r lost its content"
stat "$MNT/.snapshots/s1" >/dev/null
says '{"renamed": "s1", "to": "s1r"}' branch rename s1 s1r --json
[ -e "$MNT/.snapshots/s1" ] && bfs_fail ".snapshots/s1 still there after rename"
[ "$(sum "$MNT/.snapshots/s1r")" = "$MAIN0" ] || bfs_fail "snapshot s1r lost its content"
[ "$(json_names branch)" = "$(printf 'b1r\nb2\nb3\nmain')" ] || bfs_fail "branch list after rename: $(json_names branch)"
[ "$(json_names snapshot)" = s1r ] || bfs_fail "snapshot list after rename: $(json_names snapshot)"
# a branch made from the renamed one still works
ok branch create b4 --from b1r
[ "$(sum "$MNT/b4")" = "$MAIN0" ] || bfs_fail "b4 (from b1r) differs"

bfs_step "delete: directories vanish at once"
ls "$MNT/b4" >/dev/null
says "deleted branch b4" branch delete b4
[ -e "$MNT/b4" ] && bfs_fail "MNT/b4 still there after delete"
has_line "$(top)" b4 && bfs_fail "ls MNT still lists b4"
ok snapshot create b2 s2
ls "$MNT/.snapshots/s2" >/dev/null
says '{"snapshot": "s2", "deleted": true}' snapshot delete s2 --json
[ -e "$MNT/.snapshots/s2" ] && bfs_fail ".snapshots/s2 still there after delete"
# the name is free again
ok branch create b4
ok branch delete b4

bfs_step "reset to the branch point and to a snapshot"
ok branch create r
echo v2 >"$D/version" # main moves on: reset must not follow it
MAINV2=$(sum "$D")
cat "$MNT/r/version" "$MNT/r/text" >/dev/null # pages in the kernel's cache
echo r-changed >"$MNT/r/version"
seq 1 10 >"$MNT/r/text"
rm "$MNT/r/link"
mkdir "$MNT/r/new" && echo n >"$MNT/r/new/file"
ok snapshot create r rs1
RS1=$(sum "$MNT/r")
echo more >>"$MNT/r/version"
rm -r "$MNT/r/dir"
cat "$MNT/r/version" >/dev/null
says "reset branch r to its branch point" branch reset r
[ "$(sum "$MNT/r")" = "$MAIN0" ] || {
	diff <(echo "$MAIN0") <(sum "$MNT/r") | head >&2
	bfs_fail "after reset, r is not its branch point"
}
[ "$(cat "$MNT/r/version")" = v1 ] || bfs_fail "r/version after reset: $(cat "$MNT/r/version")"
[ "$(sum "$D")" = "$MAINV2" ] || bfs_fail "reset of r changed main"
[ "$(sum "$MNT/.snapshots/rs1")" = "$RS1" ] || bfs_fail "reset of r changed its snapshot rs1"
echo after-reset >"$MNT/r/version"
cat "$MNT/r/version" >/dev/null
says '{"branch": "r", "reset_to": "rs1"}' branch reset r --to rs1 --json
[ "$(sum "$MNT/r")" = "$RS1" ] || {
	diff <(echo "$RS1") <(sum "$MNT/r") | head >&2
	bfs_fail "after reset --to rs1, r differs from rs1"
}
echo "written after reset" >"$MNT/r/version" # still writable
[ "$(cat "$MNT/r/version")" = "written after reset" ] || bfs_fail "r not writable after reset"
[ "$(sum "$MNT/.snapshots/rs1")" = "$RS1" ] || bfs_fail "writing r after reset --to rs1 changed rs1"
bfs_expect_fail any "$BRANCHFS" branch reset r --to nosuch
bfs_expect_fail any "$BRANCHFS" branch reset main # main has no branch point
[ "$(sum "$D")" = "$MAINV2" ] || bfs_fail "refused reset of main changed main"

bfs_step "delete a parent with live children"
ok branch create p
echo parent >"$MNT/p/pfile"
head -c 200000 /dev/urandom >"$MNT/p/pdata"
ok branch create c1 --from p
ok snapshot create p ps
ok branch create c2 --from ps
echo more-parent >>"$MNT/p/pfile" # after the children's branch points
echo c1 >"$MNT/c1/own"
C1=$(sum "$MNT/c1") C2=$(sum "$MNT/c2") PS=$(sum "$MNT/.snapshots/ps")
[ "$C2" = "$PS" ] || bfs_fail "c2 differs from its snapshot ps"
ok branch delete p
[ -e "$MNT/p" ] && bfs_fail "MNT/p still there"
ok gc
[ "$(sum "$MNT/c1")" = "$C1" ] || bfs_fail "c1 changed when its parent was deleted"
[ "$(sum "$MNT/c2")" = "$C2" ] || bfs_fail "c2 changed when its parent was deleted"
[ "$(sum "$MNT/.snapshots/ps")" = "$PS" ] || bfs_fail "snapshot ps changed when its branch was deleted"
echo c1-after >>"$MNT/c1/pfile" # children stay writable
grep -q c1-after "$MNT/c1/pfile" || bfs_fail "c1 not writable after its parent was deleted"
C1=$(sum "$MNT/c1")
ok snapshot delete ps # the snapshot c2 was made from
ok gc
[ "$(sum "$MNT/c2")" = "$C2" ] || bfs_fail "c2 changed when its snapshot was deleted"
ok branch create gc1 --from c2 # a grandchild of the deleted parent
[ "$(sum "$MNT/gc1")" = "$C2" ] || bfs_fail "gc1 (from c2) differs from c2"

bfs_step "open files block delete and reset unless --force"
ok branch create busy
exec 3<"$MNT/busy/text"
bfs_expect_fail any "$BRANCHFS" branch delete busy
[ -d "$MNT/busy" ] || bfs_fail "refused delete removed busy anyway"
bfs_expect_fail any "$BRANCHFS" branch reset busy
bfs_expect_fail any "$BRANCHFS" branch rename busy busy-renamed # its paths would vanish
[ -d "$MNT/busy" ] && [ ! -e "$MNT/busy-renamed" ] || bfs_fail "refused rename renamed busy anyway"
head -c 1 <&3 >/dev/null || bfs_fail "the open file of busy is unreadable after a refused rename"
exec 3<&-
ok branch reset busy # nothing open any more
exec 3<"$MNT/busy/text" 4>>"$MNT/busy/version"
ok branch delete busy --force
[ -e "$MNT/busy" ] && bfs_fail "MNT/busy still there after delete --force"
head -c 100 <&3 >/dev/null 2>&1 || true # whatever these return, the daemon
echo late >&4 2>/dev/null || true      # must keep serving
exec 3<&- 4>&-
ok branch create busy2
exec 3<"$MNT/busy2/version"
ok branch reset busy2 --force
exec 3<&-
exec 3<"$MNT/.snapshots/rs1/version"
bfs_expect_fail any "$BRANCHFS" snapshot delete rs1
ok snapshot delete rs1 --force
exec 3<&-
[ -e "$MNT/.snapshots/rs1" ] && bfs_fail "rs1 still there after delete --force"
[ "$(sum "$D")" = "$MAINV2" ] || bfs_fail "main changed"
[ -n "$(bfs_daemon_pids "$STORE")" ] || bfs_fail "the daemon died"
# closing a file of a deleted branch is not an error worth a log line
! grep "purging unlinked inode" "$STORE/branchfs.log" || bfs_fail "closing files of a deleted branch logged errors"

bfs_step "bad names"
BEFORE_TOP=$(top) BEFORE_SNAPS=$(snaps)
long=$(printf 'x%.0s' $(seq 1 201))
bad_names=("a/b" "/" ".." "." "" "$long" $'tab\tname' $'new\nline' $'bell\x07' $'esc\x1b[0m' $'del\x7f' "-lead" ".hidden" ".snapshots" "(deleted)")
for n in "${bad_names[@]}"; do
	bfs_expect_fail any "$BRANCHFS" branch create "$n"
	bfs_expect_fail any "$BRANCHFS" snapshot create main "$n"
	bfs_expect_fail any "$BRANCHFS" branch rename b2 "$n"
	bfs_expect_fail any "$BRANCHFS" branch create ok-name --from "$n"
done
bfs_expect_fail any "$BRANCHFS" branch create "$long"
grep -qi 'long\|200' <<<"$BFS_ERR" || bfs_fail "message for a 201-byte name does not say why: $BFS_ERR"
bfs_expect_fail any "$BRANCHFS" branch create "a/b"
grep -qi 'name' <<<"$BFS_ERR" || bfs_fail "message for 'a/b' does not mention the name: $BFS_ERR"
[ "$(top)" = "$BEFORE_TOP" ] || bfs_fail "bad names changed MNT: $(top)"
[ "$(snaps)" = "$BEFORE_SNAPS" ] || bfs_fail "bad names changed .snapshots: $(snaps)"
[ -d "$MNT/b2" ] || bfs_fail "b2 gone after refused renames"
# good unusual names: 200 bytes, spaces, quotes, backslash, UTF-8
n200=$(printf 'y%.0s' $(seq 1 200))
for n in "$n200" 'with space' 'q"uote\back' 'ünï-çødé' 'a.b_c-d+e@f'; do
	ok branch create "$n"
	[ -d "$MNT/$n" ] || bfs_fail "MNT/$n missing"
	json_names branch | grep -qxF -- "$n" || bfs_fail "branch list --json lacks '$n'"
	ok branch delete "$n"
	[ -e "$MNT/$n" ] && bfs_fail "MNT/$n still there"
done

bfs_step "unknown names, taken names"
bfs_expect_fail any "$BRANCHFS" branch delete nosuch
grep -q nosuch <<<"$BFS_ERR" || bfs_fail "error does not name 'nosuch': $BFS_ERR"
bfs_expect_fail any "$BRANCHFS" branch reset nosuch
bfs_expect_fail any "$BRANCHFS" branch rename nosuch x
bfs_expect_fail any "$BRANCHFS" branch create x --from nosuch
bfs_expect_fail any "$BRANCHFS" snapshot create nosuch x
bfs_expect_fail any "$BRANCHFS" snapshot delete nosuch
bfs_expect_fail any "$BRANCHFS" snapshot delete b2 # a branch, not a snapshot
bfs_expect_fail any "$BRANCHFS" branch delete s1r  # a snapshot, not a branch
bfs_expect_fail any "$BRANCHFS" branch create b2
bfs_expect_fail any "$BRANCHFS" branch create s1r
bfs_expect_fail any "$BRANCHFS" snapshot create main b2
bfs_expect_fail any "$BRANCHFS" branch rename b2 c1
bfs_expect_fail any "$BRANCHFS" branch frobnicate
bfs_expect_fail any "$BRANCHFS" branch create
bfs_expect_fail any env -u BRANCHFS_STORE "$BRANCHFS" branch list
bfs_expect_fail any "$BRANCHFS" branch list -s "$BFS_WORK/not-a-store"
# an option of another subcommand is refused, never ignored (create --to
# would otherwise branch from main)
bfs_expect_fail 2 "$BRANCHFS" branch create wrongopt --to s1r
bfs_expect_fail 2 "$BRANCHFS" branch reset b2 --from s1r
bfs_expect_fail 2 "$BRANCHFS" snapshot create main wrongopt --force
bfs_expect_fail 2 "$BRANCHFS" branch list --force
bfs_expect_fail 2 "$BRANCHFS" snapshot delete s1r --to s1r
bfs_expect_fail 2 "$BRANCHFS" gc --json
bfs_expect_fail 2 "$BRANCHFS" help nosuch
# output that cannot be written is an error
bfs_expect_fail any sh -c '"$0" branch list >/dev/full' "$BRANCHFS"
bfs_expect_fail any sh -c '"$0" --help >/dev/full' "$BRANCHFS"
bfs_expect_fail any sh -c '"$0" snapshot create main s-full >/dev/full' "$BRANCHFS"
grep -q "the command itself succeeded" <<<"$BFS_ERR" || bfs_fail "an unwritable confirmation does not say the snapshot was made: $BFS_ERR"
[ -d "$MNT/.snapshots/s-full" ] || bfs_fail "snapshot s-full (confirmation unwritable) was not made"
"$BRANCHFS" snapshot delete s-full >/dev/null || bfs_fail "snapshot delete s-full"
# ... but a reader that stopped reading ("| head") is not an error
{
	sleep 0.3
	"$BRANCHFS" branch list
} 2>"$BFS_WORK/epipe.err" | true
st=${PIPESTATUS[0]}
[ "$st" -eq 0 ] && [ ! -s "$BFS_WORK/epipe.err" ] ||
	bfs_fail "branch list into a closed pipe: exit $st: $(cat "$BFS_WORK/epipe.err")"
[ "$(top)" = "$BEFORE_TOP" ] || bfs_fail "failed commands changed MNT: $(top)"

bfs_step "--json outputs"
bfs branch list --json | json_ok "branch list --json"
bfs snapshot list --json | json_ok "snapshot list --json"
bfs du --json | json_ok "du --json"
bfs stats "$STORE" --json | json_ok "stats --json"
bfs branch create j1 --json | json_ok "branch create --json"
bfs snapshot create j1 js1 --json | json_ok "snapshot create --json"
ok snapshot delete js1
ok branch delete j1
bfs branch create 'q"u\o' --json | json_ok "branch create --json of a name with a quote"
bfs snapshot create 'q"u\o' 'sq"u\o' --json | json_ok "snapshot create --json of a name with a quote"
bfs branch list --json | json_ok "branch list --json with a quote in a name"
ok snapshot delete 'sq"u\o'
ok branch delete 'q"u\o'
# du: the store totals under their own names, below the table
bfs du | tail -n 1 | grep -Eq '^total: stored_bytes=[0-9]+ logical_bytes=[0-9]+ gc_pending=[0-9]+$' ||
	bfs_fail "du's last line is not the store total: $(bfs du | tail -n 1)"
# -s STORE works like BRANCHFS_STORE
[ "$(env -u BRANCHFS_STORE "$BRANCHFS" branch list -s "$STORE" --json)" = "$(bfs branch list --json)" ] ||
	bfs_fail "branch list -s STORE differs from BRANCHFS_STORE"

bfs_step "offline: the same commands on the unmounted store"
MOUNTED_BRANCHES=$(json_names branch)
bfs_umount "$MNT"
[ "$(json_names branch)" = "$MOUNTED_BRANCHES" ] || bfs_fail "offline branch list differs: $(json_names branch)"
bfs du --json | json_ok "offline du --json"
ok branch create o1
ok snapshot create o1 os1
ok branch create o2 --from os1
ok branch rename o1 o1r
ok branch rename os1 os1r
ok branch create o3 --from main
ok branch delete o3
ok branch delete c1
ok branch reset r # back to its branch point: where r was made from main, even after reset --to rs1
ok snapshot create main os2
ok snapshot delete os2
# offline commands run in parallel wait for each other's hold on the store
pids=()
for i in 1 2 3 4; do
	"$BRANCHFS" branch create "par$i" >/dev/null 2>"$BFS_WORK/par$i.err" &
	pids+=($!)
done
"$BRANCHFS" stats "$STORE" >/dev/null 2>"$BFS_WORK/par5.err" &
pids+=($!)
"$BRANCHFS" check "$STORE" >/dev/null 2>"$BFS_WORK/par6.err" &
pids+=($!)
failed=
for i in 1 2 3 4 5 6; do # every one ends before a failure is reported
	wait "${pids[$((i - 1))]}" || failed+=" par$i: $(cat "$BFS_WORK/par$i.err")"
done
[ -z "$failed" ] || bfs_fail "parallel offline commands failed:$failed"
for i in 1 2 3 4; do ok branch delete "par$i"; done
for n in "${bad_names[@]}"; do bfs_expect_fail any "$BRANCHFS" branch create "$n"; done
bfs_expect_fail any "$BRANCHFS" branch delete nosuch
bfs_expect_fail any "$BRANCHFS" branch create o2
ok gc
bfs_mount "$STORE" "$MNT"
err=$("$BRANCHFS" check "$STORE" 2>&1) && bfs_fail "check of a mounted store succeeded"
grep -q "is mounted" <<<"$err" || bfs_fail "check of a mounted store: $err"
[ "$(json_names branch)" = "$(printf 'b1r\nb2\nb3\nbusy2\nc2\ngc1\nmain\no1r\no2\nr')" ] ||
	bfs_fail "branches after offline changes: $(json_names branch | tr '\n' ' ')"
[ "$(json_names snapshot)" = "$(printf 'os1r\ns1r')" ] ||
	bfs_fail "snapshots after offline changes: $(json_names snapshot | tr '\n' ' ')"
[ "$(top)" = "$(printf '.snapshots\nb1r\nb2\nb3\nbusy2\nc2\ngc1\nmain\no1r\no2\nr')" ] || bfs_fail "MNT after offline changes: $(top)"
[ "$(snaps)" = "$(printf 'os1r\ns1r')" ] || bfs_fail ".snapshots after offline changes: $(snaps)"
for t in o1r o2 .snapshots/os1r; do
	[ "$(sum "$MNT/$t")" = "$MAINV2" ] || bfs_fail "$t (made offline from main) differs from main"
done
[ "$(sum "$MNT/r")" = "$MAIN0" ] || bfs_fail "r after an offline reset is not its branch point (main when r was made)"
[ "$(sum "$MNT/c2")" = "$C2" ] || bfs_fail "c2 changed"
[ "$(sum "$MNT/.snapshots/s1r")" = "$MAIN0" ] || bfs_fail "s1r changed"
[ "$(sum "$D")" = "$MAINV2" ] || bfs_fail "main changed"
echo writable >"$MNT/o2/new" || bfs_fail "o2 (made offline) not writable"

bfs_step "$NBR branches in one store"
n0=$(json_names branch | wc -l)
echo "$NBR" >"$D/marker"
t0=$(now_ms)
for i in $(seq 1 "$NBR"); do
	"$BRANCHFS" branch create "k$i" >/dev/null || bfs_fail "branch create k$i (of $NBR)"
done
ms=$(($(now_ms) - t0))
bfs_log "created $NBR branches in $ms ms ($((ms * 1000 / NBR)) us per branch create command)"
[ "$(json_names branch | wc -l)" -eq $((n0 + NBR)) ] || bfs_fail "branch list --json: $(json_names branch | wc -l) branches, expected $((n0 + NBR))"
[ "$(bfs branch list | grep -c '^k[0-9]')" -eq "$NBR" ] || bfs_fail "text branch list lacks some of the $NBR"
[ "$(find "$MNT" -mindepth 1 -maxdepth 1 -name 'k[0-9]*' | wc -l)" -eq "$NBR" ] || bfs_fail "ls MNT shows $(find "$MNT" -mindepth 1 -maxdepth 1 -name 'k[0-9]*' | wc -l) of $NBR"
[ "$(bfs_stat "$STORE" '^branches$')" -eq $((n0 + NBR)) ] || bfs_fail "stats: branches != $((n0 + NBR))"
for i in 1 $((NBR / 2)) "$NBR"; do
	[ "$(cat "$MNT/k$i/marker")" = "$NBR" ] || bfs_fail "k$i/marker wrong"
done
echo own >"$MNT/k$((NBR / 3 + 1))/marker"
[ "$(cat "$D/marker")" = "$NBR" ] && [ "$(cat "$MNT/k1/marker")" = "$NBR" ] || bfs_fail "a write to one of $NBR branches leaked"
t0=$(now_ms)
for i in $(seq 1 "$NBR"); do
	"$BRANCHFS" branch delete "k$i" >/dev/null || bfs_fail "branch delete k$i (of $NBR)"
done
ms=$(($(now_ms) - t0))
bfs_log "deleted $NBR branches in $ms ms"
[ "$(json_names branch | wc -l)" -eq "$n0" ] || bfs_fail "branch list after deleting $NBR: $(json_names branch | wc -l)"
[ "$(find "$MNT" -mindepth 1 -maxdepth 1 -name 'k[0-9]*' | wc -l)" -eq 0 ] || bfs_fail "ls MNT still shows k* branches"
ok gc
[ "$(cat "$D/marker")" = "$NBR" ] || bfs_fail "main/marker changed"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
[ "$(json_names branch | wc -l)" -eq "$n0" ] || bfs_fail "branches after remount: $(json_names branch | wc -l)"
[ "$(sum "$MNT/c2")" = "$C2" ] || bfs_fail "c2 changed after remount"
bfs_umount "$MNT"
