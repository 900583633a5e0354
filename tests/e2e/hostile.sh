#!/usr/bin/env bash
# Hostile input, beyond what branch_lifecycle.sh (bad names), names.sh (file
# names), permissions.sh (a non-owner reading a 0600 file: EACCES) and
# branch_isolation.sh (writes inside .snapshots/NAME: EROFS) cover:
#   - branch/snapshot names: invalid UTF-8 (overlong, surrogate, truncated,
#     0xff), C1 controls, \x01, a 4 KiB name, 201 bytes, '-' and '--'
#     prefixes, on create, snapshot, rename and --from; mounted and offline:
#     a clear message, non-zero exit, nothing created;
#   - names that are accepted round-trip through list and --json as strings
#     (digits-only names such as 007 were emitted as JSON numbers: invalid
#     JSON), valid unicode included;
#   - the control socket: a peer that is not the owner is refused (by the
#     socket's mode, and by the daemon's SO_PEERCRED check when the mode is
#     opened up); garbage, a truncated request, a zero and a 4 GiB length
#     prefix, a request of empty words, a client that sends nothing (5 s
#     deadline), 200 connections at once: the daemon keeps serving and its
#     open descriptors do not grow;
#   - a stopped daemon (SIGSTOP): a CLI request gives up after
#     $BRANCHFS_TIMEOUT seconds, says it may still take effect, and does
#     once the daemon runs again;
#   - writes into .snapshots itself (not a snapshot): create, mkdir, symlink,
#     rename, unlink of a snapshot, rmdir, chmod, setxattr fail with EROFS.
# Prints the number of bad inputs tried.
. "$(dirname "$0")/lib.sh"

command -v setpriv >/dev/null || bfs_skip "setpriv (util-linux) missing"
id nobody >/dev/null 2>&1 || bfs_skip "no user nobody"
PEER=$BFS_E2E_BIN/ctl_peer
UTIL=$BFS_E2E_BIN/branch_util
[ -x "$PEER" ] || bfs_fail "$PEER not built (make e2e-progs)"
bfs_setup
export BRANCHFS_STORE=$STORE
SOCK=$STORE/ctl.sock
BAD=0 # bad inputs tried
as_nobody() { (cd / && setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups -- "$@"); }
top() { ls -A "$MNT" | LC_ALL=C sort; }
snaps() { ls -A "$MNT/.snapshots" | LC_ALL=C sort; }
# json CMD...: its --json output, checked by perl, python3 and jq (lib.sh)
json() {
	local j
	j=$("$BRANCHFS" "$@" --json) || bfs_fail "branchfs $* --json"
	bfs_json_valid <<<"$j" || bfs_fail "branchfs $* --json is not valid JSON: $j"
	printf '%s' "$j"
}
# names KIND: the names in `branchfs KIND list --json`, hex, one a line
names() {
	local j
	j=$(json "$1" list)
	# every name a JSON string, whatever it looks like (null: none)
	! grep -qE '"name": [^"]|"(parent|snapshot|reset_to|branch)": [^"n]|"(parent|snapshot|reset_to|branch)": n[^u]' <<<"$j" ||
		bfs_fail "$1 list --json: a name is not a string: $j"
	perl -MJSON::PP -e '
		for (@{ JSON::PP->new->utf8->decode(do { local $/; <STDIN> }) }) {
			utf8::encode(my $n = $_->{name}); print unpack("H*", $n), "\n" }' <<<"$j"
}
hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
daemon_fds() { ls "/proc/$DAEMON/fd" | wc -l; }
DAEMON=$(bfs_daemon_pid "$STORE")
echo data >"$D/file"

bfs_step "bad names: refused with a message, nothing created"
long4k=$(printf 'x%.0s' $(seq 1 4096))
long201=$(printf 'y%.0s' $(seq 1 201))
bad=(
	$'bad\xff' $'over\xc0\xaflong' $'surr\xed\xa0\x80' $'trunc\xe6\x97' $'\xe6\x97' $'c1\xc2\x9b[31m'
	$'ctl\x01' $'tab\t' $'nl\n' $'del\x7f' "$long4k" "$long201" "-x" "--" "--from" "."
	".." "a/b" "/" "" ".snapshots"
)
BEFORE_TOP=$(top) BEFORE_SNAPS=$(snaps)
"$BRANCHFS" snapshot create main s0 >/dev/null || bfs_fail "snapshot create s0"
"$BRANCHFS" branch create b0 >/dev/null || bfs_fail "branch create b0"
BEFORE_TOP=$(top) BEFORE_SNAPS=$(snaps)
for n in "${bad[@]}"; do
	for cmd in "branch create" "snapshot create main" "branch rename b0" "branch rename s0"; do
		# shellcheck disable=SC2086
		bfs_expect_fail any "$BRANCHFS" $cmd "$n"
		BAD=$((BAD + 1))
		case $BFS_ERR in *nvalid* | *"too long"* | *sage* | *"does not exist"*) ;;
		*) bfs_fail "$cmd '$n': unclear message: $BFS_ERR" ;; esac
	done
	bfs_expect_fail any "$BRANCHFS" branch create ok-name --from "$n"
	BAD=$((BAD + 1))
done
[ "$(top)" = "$BEFORE_TOP" ] || bfs_fail "bad names changed MNT: $(top)"
[ "$(snaps)" = "$BEFORE_SNAPS" ] || bfs_fail "bad names changed .snapshots: $(snaps)"
bfs_expect_fail any "$BRANCHFS" branch create $'x\xff'
grep -q 'UTF-8' <<<"$BFS_ERR" || bfs_fail "message for invalid UTF-8 does not say why: $BFS_ERR"

bfs_step "accepted names round-trip through list and --json"
good=("007" "12" "1e5" "true" "null" "ünïcödé-名前-🐘" 'q"uote\back' "a=b" "with space" $'\xc2\xa0nbsp')
for n in "${good[@]}"; do
	"$BRANCHFS" branch create "$n" >/dev/null || bfs_fail "branch create '$n'"
	"$BRANCHFS" snapshot create main "s-$n" >/dev/null || bfs_fail "snapshot create 's-$n'"
	[ -d "$MNT/$n" ] && [ -d "$MNT/.snapshots/s-$n" ] || bfs_fail "'$n' not in the mount"
done
gotb=$(names branch) gots=$(names snapshot)
for n in "${good[@]}"; do
	grep -qx "$(hex "$n")" <<<"$gotb" || bfs_fail "branch list --json lacks '$n' (as a string)"
	grep -qx "$(hex "s-$n")" <<<"$gots" || bfs_fail "snapshot list --json lacks 's-$n'"
	"$BRANCHFS" branch list | grep -qF -- "$n" || bfs_fail "branch list lacks '$n'"
done
json du >/dev/null

bfs_step "the same refusals offline"
bfs_umount "$MNT"
for n in $'bad\xff' $'c1\xc2\x9b' "$long4k" "-x"; do
	bfs_expect_fail any "$BRANCHFS" branch create "$n"
	BAD=$((BAD + 1))
done
[ "$(names branch | wc -l)" = $((${#good[@]} + 2)) ] || bfs_fail "offline refusals created something"
bfs_mount "$STORE" "$MNT"
DAEMON=$(bfs_daemon_pid "$STORE")

bfs_step "control socket: a peer that is not the owner"
out=$(as_nobody "$PEER" "$SOCK" send branch-create evil 2>&1 || true)
BAD=$((BAD + 1))
bfs_log "nobody, socket mode $(stat -c %a "$SOCK"): $out"
grep -q 'Permission denied' <<<"$out" || bfs_fail "nobody reached the socket: $out"
# open the way (a mistaken chmod): the daemon's peer check must still refuse
chmod o+x "$STORE"
chmod 0666 "$SOCK"
out=$(as_nobody "$PEER" "$SOCK" send branch-create evil 2>&1 || true)
BAD=$((BAD + 1))
bfs_log "nobody, socket mode 0666: $out"
grep -q "status -$(perl -MPOSIX -e 'print EACCES') .*not the owner" <<<"$out" || bfs_fail "daemon did not refuse nobody: $out"
out=$(as_nobody "$PEER" "$SOCK" send branch-delete b0 2>&1 || true)
BAD=$((BAD + 1))
grep -q 'not the owner' <<<"$out" || bfs_fail "daemon did not refuse nobody's delete: $out"
chmod 0600 "$SOCK"
chmod o-x "$STORE"
[ ! -e "$MNT/evil" ] && [ -d "$MNT/b0" ] || bfs_fail "nobody's requests had an effect"
as_nobody "$BRANCHFS" branch list >/dev/null 2>&1 && bfs_fail "nobody can list branches through the CLI"
BAD=$((BAD + 1))
# a store nobody may enter is not "not a store"
out=$(as_nobody "$BRANCHFS" stats "$STORE" 2>&1) && bfs_fail "nobody can read the store's stats"
grep -q 'Permission denied' <<<"$out" || bfs_fail "nobody's stats does not say 'Permission denied': $out"
out=$(as_nobody "$BRANCHFS" umount "$MNT" 2>&1) && bfs_fail "nobody unmounted root's mount"
bfs_log "nobody's umount: $out"
grep -q 'mounted by uid 0' <<<"$out" || bfs_fail "nobody's umount does not say why: $out"
[ -d "$MNT/b0" ] || bfs_fail "the mount is gone after nobody's umount"
BAD=$((BAD + 1))

bfs_step "control socket: malformed requests"
FD0=$(daemon_fds)
"$PEER" "$SOCK" send ping | grep -q '^status 0 pid' || bfs_fail "ping does not work"
t0=$(date +%s)
for mode in garbage truncated huge zero nowords; do
	out=$(timeout 30 "$PEER" "$SOCK" "$mode") || bfs_fail "ctl_peer $mode: exit $? ($out)"
	BAD=$((BAD + 1))
	bfs_log "$mode: $out"
	case $out in "status -"* | closed) ;; *) bfs_fail "$mode got: $out" ;; esac
	"$PEER" "$SOCK" send ping | grep -q '^status 0' || bfs_fail "the daemon stopped answering after $mode"
done
for words in "branch-create" "no-such-command x y" "branch-delete b0 extra args here" "snapshot-delete s0 x" "gc now" "snapshot-create nosuch s"; do
	# shellcheck disable=SC2086
	out=$("$PEER" "$SOCK" send $words)
	BAD=$((BAD + 1))
	[[ $out == "status -"* ]] || bfs_fail "request '$words' was accepted: $out"
done
bfs_log "a silent client (the daemon gives up after 5 s) while others wait"
"$PEER" "$SOCK" silent 7 >"$BFS_WORK/silent.out" &
SILENT=$!
BAD=$((BAD + 1))
sleep 0.5
timeout 60 "$BRANCHFS" branch list >/dev/null || bfs_fail "a CLI command behind a silent client failed"
wait "$SILENT" || true
bfs_log "silent client: $(cat "$BFS_WORK/silent.out")"
out=$(timeout 60 "$PEER" "$SOCK" many 200) || bfs_fail "200 connections: $out"
bfs_log "200 connections at once: $out"
BAD=$((BAD + 200))
for i in 1 2 3 4; do timeout 30 "$PEER" "$SOCK" garbage >/dev/null & done
wait
BAD=$((BAD + 4))
"$BRANCHFS" snapshot create main after-abuse >/dev/null || bfs_fail "CLI command after the abuse"
[ -d "$MNT/.snapshots/after-abuse" ] || bfs_fail "snapshot after-abuse missing"
kill -0 "$DAEMON" || bfs_fail "the daemon died"
FD1=$(daemon_fds)
bfs_log "daemon descriptors: $FD0 before, $FD1 after; $(($(date +%s) - t0)) s"
[ "$FD1" -le "$FD0" ] || bfs_fail "the daemon leaks descriptors: $FD0 -> $FD1"
[ "$(cat "$D/file")" = data ] || bfs_fail "the mount does not serve after the abuse"

bfs_step "a stopped daemon: the CLI gives up after BRANCHFS_TIMEOUT, saying the request may still run"
pid=$(bfs_daemon_pid "$STORE")
kill -STOP "$pid"
rc=0
BRANCHFS_TIMEOUT=2 "$BRANCHFS" branch create stopped1 2>"$BFS_WORK/err" || rc=$?
kill -CONT "$pid"
[ $rc = 1 ] || bfs_fail "branch create to a stopped daemon: exit $rc, expected 1"
grep -q "did not answer within 2 s.*may still take effect" "$BFS_WORK/err" ||
	bfs_fail "branch create to a stopped daemon: $(cat "$BFS_WORK/err")"
for _ in $(seq 50); do
	"$BRANCHFS" branch list | grep -q '^stopped1 ' && break
	sleep 0.1
done
"$BRANCHFS" branch list | grep -q '^stopped1 ' ||
	bfs_fail "the request to the stopped daemon did not take effect once it ran again"

bfs_step ".snapshots itself is read-only"
erofs() {
	local err rc=0
	err=$("$@" 2>&1) || rc=$?
	BAD=$((BAD + 1))
	[ $rc -ne 0 ] || bfs_fail "'$*' in .snapshots succeeded"
	grep -q 'Read-only file system' <<<"$err" || bfs_fail "'$*' in .snapshots: want EROFS, got: $err"
}
S=$MNT/.snapshots
erofs touch "$S/newfile"
erofs mkdir "$S/newdir"
erofs ln -s x "$S/link"
erofs mknod "$S/fifo" p
erofs mv "$S/s0" "$S/s0-renamed"
erofs rmdir "$S/s0"
erofs rm -rf "$S/s0"
erofs chmod 0777 "$S"
erofs touch -d 2001-01-01 "$S"
erofs chmod 0777 "$S/s0"
for op in "setxattr $S user.k v" "setxattr $S/s0 user.k v"; do
	# shellcheck disable=SC2086
	r=$("$UTIL" $op)
	BAD=$((BAD + 1))
	[ "$r" = EROFS ] || bfs_fail "$op: want EROFS, got $r"
done
r=$("$UTIL" rename "$D/file" "$S/file")
BAD=$((BAD + 1))
case $r in EXDEV | EROFS) ;; *) bfs_fail "rename main/file -> .snapshots/file: want EXDEV or EROFS, got $r" ;; esac
[ "$(snaps | grep -c .)" = "$(("${#good[@]}" + 2))" ] || bfs_fail ".snapshots changed: $(snaps)"
[ -d "$S/s0" ] || bfs_fail "s0 gone"

bfs_log "bad inputs tried: $BAD"
echo "bad inputs tried: $BAD"
bfs_umount "$MNT"
