#!/usr/bin/env bash
# Mount and unmount behaviours: umount returns only once the daemon has
# exited and released the store (mount/umount/stats back to back); relative
# paths, paths with blanks, commas and backslashes; --foreground; -o
# options; an unmount by fusermount3, a SIGTERM or a SIGQUIT to the daemon
# ends the daemon and loses nothing (SIGUSR1, SIGUSR2 and SIGALRM are
# ignored); umount of a busy mount neither hangs nor breaks it; umount
# twice and of a stale mount; a store renamed while mounted keeps being
# served, and a new store made at its old path is left alone; CLI commands
# racing an umount are each answered or run offline.
. "$(dirname "$0")/lib.sh"

bfs_setup
H=$BFS_WORK/host
mkdir "$H"
head -c $((3 * 1024 * 1024)) /dev/urandom >"$H/rand"

bfs_step "mount / umount / stats back to back"
for i in 1 2 3 4 5; do
	head -c $((i * 10000)) "$H/rand" >"$D/f$i"
	bfs_umount "$MNT"
	"$BRANCHFS" stats "$STORE" >/dev/null || bfs_fail "stats right after umount (cycle $i)"
	bfs_mount "$STORE" "$MNT"
	cmp -n $((i * 10000)) "$H/rand" "$D/f$i" || bfs_fail "f$i after cycle $i"
done
for i in 1 2 3 4 5; do
	[ "$(stat -c %s "$D/f$i")" = $((i * 10000)) ] || bfs_fail "f$i size"
done

bfs_step "umount twice"
bfs_umount "$MNT"
bfs_expect_fail any "$BRANCHFS" umount "$MNT"

bfs_step "relative paths for mount and umount"
(
	cd "$BFS_WORK"
	"$BRANCHFS" mount store mnt || bfs_fail "mount with relative paths"
	bfs_is_mounted "$MNT" || bfs_fail "relative mount not in /proc/mounts"
	cp host/rand mnt/main/relative || bfs_fail "write through a relative mount"
	"$BRANCHFS" umount mnt/ || bfs_fail "umount mnt/ (relative, trailing slash)"
)
! bfs_is_mounted "$MNT" || bfs_fail "still mounted after relative umount"
[ -z "$(bfs_daemon_pids "$STORE")" ] || bfs_fail "daemon alive after relative umount"
[ -s "$STORE/branchfs.log" ] || bfs_fail "daemon of a relative store did not log to STORE/branchfs.log"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/rand" "$D/relative"
bfs_umount "$MNT"

bfs_step "a store and a mountpoint whose paths hold a space, a comma, a tab and a backslash"
# (mountinfo escapes blanks and backslashes as \040 and \134; FUSE's -o
# list splits at commas)
ODD="$BFS_WORK/st ore,x"$'\t'"\\y"
OM="$BFS_WORK/m nt,z"$'\t'"\\w"
bfs_init "$ODD"
bfs_mount "$ODD" "$OM"
cp "$H/rand" "$OM/main/odd" || bfs_fail "write on a mount with an odd path"
bfs_expect_fail any "$BRANCHFS" mount "$ODD" "$OM"
"$BRANCHFS" snapshot create -s "$ODD" main s-odd >/dev/null || bfs_fail "snapshot of a store with an odd path"
[ -d "$OM/.snapshots/s-odd" ] || bfs_fail "snapshot s-odd not shown"
bfs_umount "$OM"
bfs_mount "$ODD" "$OM"
bfs_same "$H/rand" "$OM/main/odd"
bfs_umount "$OM"
"$BRANCHFS" check "$ODD" >&2 || bfs_fail "check of a store with an odd path"

bfs_step "umount through a symlink to the mountpoint"
bfs_mount "$STORE" "$MNT"
ln -s "$MNT" "$BFS_WORK/mnt-link"
"$BRANCHFS" umount "$BFS_WORK/mnt-link" || bfs_fail "umount through a symlink"
! bfs_is_mounted "$MNT" || bfs_fail "still mounted after umount through a symlink"
[ -z "$(bfs_daemon_pids "$STORE")" ] || bfs_fail "daemon alive after umount through a symlink"
rm "$BFS_WORK/mnt-link"

bfs_step "--foreground"
"$BRANCHFS" mount "$STORE" "$MNT" --foreground 2>"$BFS_WORK/fg.log" &
fg=$!
BFS_MNT_STORE[$MNT]=$STORE
for ((i = 0; i < 100; i++)); do
	[ -d "$MNT/main" ] && break
	kill -0 $fg 2>/dev/null || break
	sleep 0.1
done
[ -d "$MNT/main" ] || {
	cat "$BFS_WORK/fg.log" >&2
	bfs_fail "--foreground mount did not come up in 10 s"
}
kill -0 $fg 2>/dev/null || bfs_fail "--foreground process exited while mounted"
cp "$H/rand" "$D/fg"
bfs_umount "$MNT"
rc=0
wait $fg || rc=$?
[ $rc = 0 ] || bfs_fail "--foreground process exited $rc after umount"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/rand" "$D/fg"

bfs_step "fusermount3 -u: the daemon exits by itself and the store is free"
pid=$(bfs_daemon_pid "$STORE")
echo lazy >"$D/before-fusermount"
fusermount3 -u "$MNT" || bfs_fail "fusermount3 -u"
bfs_wait_gone "$pid" 20 || bfs_fail "daemon $pid still running 20 s after fusermount3 -u"
unset "BFS_MNT_STORE[$MNT]"
bfs_mount "$STORE" "$MNT"
[ "$(cat "$D/before-fusermount")" = lazy ] || bfs_fail "data lost across fusermount3 -u"

# ends_cleanly SIG PID: SIG makes daemon PID unmount $MNT and exit cleanly
ends_cleanly() {
	kill -"$1" "$2"
	bfs_wait_gone "$2" 20 || bfs_fail "daemon $2 ignored SIG$1 for 20 s"
	! bfs_is_mounted "$MNT" || bfs_fail "SIG$1 left the mount behind"
	grep -q "daemon $2 exiting (unmounted)" "$STORE/branchfs.log" ||
		bfs_fail "daemon $2 did not exit cleanly on SIG$1"
	unset "BFS_MNT_STORE[$MNT]"
}

bfs_step "SIGTERM to the daemon: unmounts and exits cleanly"
pid=$(bfs_daemon_pid "$STORE")
cp "$H/rand" "$D/before-term"
ends_cleanly TERM "$pid"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/rand" "$D/before-term"

bfs_step "SIGUSR1, SIGUSR2, SIGALRM are ignored; SIGQUIT ends the daemon as SIGTERM does"
pid=$(bfs_daemon_pid "$STORE")
for sig in USR1 USR2 ALRM; do
	kill -"$sig" "$pid"
	sleep 0.2
	kill -0 "$pid" 2>/dev/null || bfs_fail "SIG$sig killed the daemon"
	bfs_same "$H/rand" "$D/before-term"
	echo "$sig" >"$D/after-$sig" || bfs_fail "mount unusable after SIG$sig"
done
ends_cleanly QUIT "$pid"
bfs_mount "$STORE" "$MNT"
[ "$(cat "$D/after-ALRM")" = ALRM ] || bfs_fail "data lost across SIGQUIT"

bfs_step "umount of a busy mount neither hangs nor breaks it"
exec 7<"$D/before-term"
rc=0
timeout 60 "$BRANCHFS" umount "$MNT" 2>"$BFS_WORK/busy.err" || rc=$?
[ $rc != 124 ] || bfs_fail "umount of a busy mount hung"
if [ $rc = 0 ]; then
	bfs_log "umount of a busy mount succeeded"
	! bfs_is_mounted "$MNT" || bfs_fail "umount returned 0 but the mount is still there"
	[ -z "$(bfs_daemon_pids "$STORE")" ] || bfs_fail "umount returned 0 but the daemon is alive"
	exec 7<&-
	unset "BFS_MNT_STORE[$MNT]"
	bfs_mount "$STORE" "$MNT"
else
	bfs_log "umount of a busy mount refused ($rc): $(cat "$BFS_WORK/busy.err")"
	[ -s "$BFS_WORK/busy.err" ] || bfs_fail "busy umount failed silently"
	grep -qE "in use by (.*, )?$$ \(bash\)" "$BFS_WORK/busy.err" || bfs_fail "busy umount does not name the process: $(cat "$BFS_WORK/busy.err")"
	cmp - "$H/rand" <&7 || bfs_fail "open file unreadable after a refused umount"
	bfs_same "$H/rand" "$D/before-term"
	exec 7<&-
fi

bfs_step "CLI commands racing an umount are each answered, or run offline"
# (requests queued on the control socket when the daemon stops were closed
# unanswered: "no valid answer ... may or may not have taken effect"; and
# umount called the mount busy while the daemon's own syncfs held it)
bfs_umount "$MNT"
for round in 1 2 3 4; do
	# --writeback: snapshot creates then flush the page cache through the
	# mount, which also makes the daemon hold it open for a moment
	bfs_mount "$STORE" "$MNT" --writeback
	for k in 1 2 3 4; do
		(
			for i in $(seq 12); do
				n=r${round}_${k}_$i
				if "$BRANCHFS" snapshot create -s "$STORE" main "$n" >/dev/null 2>>"$BFS_WORK/race.err"; then
					echo "$n" >>"$BFS_WORK/race.ok.$k"
				else
					echo "$n" >>"$BFS_WORK/race.fail"
				fi
			done
		) &
	done
	sleep 0.0$((round * 2))
	bfs_umount "$MNT"
	wait
done
[ ! -s "$BFS_WORK/race.fail" ] ||
	bfs_fail "$(wc -l <"$BFS_WORK/race.fail") snapshot creates racing an umount failed: $(sort -u "$BFS_WORK/race.err" | head -3)"
sort "$BFS_WORK"/race.ok.* >"$BFS_WORK/race.want"
"$BRANCHFS" snapshot list -s "$STORE" --json |
	perl -MJSON::PP -e 'print "$_->{name}\n" for grep { $_->{name} =~ /^r\d_/ } @{ JSON::PP->new->decode(do { local $/; <STDIN> }) }' |
	sort >"$BFS_WORK/race.have"
cmp -s "$BFS_WORK/race.want" "$BFS_WORK/race.have" ||
	bfs_fail "acknowledged snapshots and the listing differ: $(diff "$BFS_WORK/race.want" "$BFS_WORK/race.have" | head -5)"
bfs_log "$(wc -l <"$BFS_WORK/race.want") snapshot creates racing 4 umounts, all answered"
bfs_mount "$STORE" "$MNT"

bfs_step "-o ro"
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT" -o ro
out=$(touch "$D/new" 2>&1) && bfs_fail "created a file on a read-only mount"
grep -q "Read-only file system" <<<"$out" || bfs_fail "write on -o ro said '$out'"
bfs_same "$H/rand" "$D/before-term"
bfs_umount "$MNT"

bfs_step "umount of a stale mount, twice; it names the processes still in it"
bfs_mount "$STORE" "$MNT"
pid=$(bfs_daemon_pid "$STORE")
(cd "$D" && exec sleep 300) &
sleeper=$!
for _ in $(seq 100); do
	[ "$(readlink "/proc/$sleeper/cwd")" = "$D" ] && break
	sleep 0.05
done
[ "$(readlink "/proc/$sleeper/cwd")" = "$D" ] || bfs_fail "the sleeper did not enter $D"
kill -KILL "$pid"
bfs_wait_gone "$pid" 20 || bfs_fail "daemon survived SIGKILL"
"$BRANCHFS" umount "$MNT" 2>"$BFS_WORK/stale.err" || bfs_fail "umount of a stale mount: $(cat "$BFS_WORK/stale.err")"
unset "BFS_MNT_STORE[$MNT]"
kill "$sleeper" 2>/dev/null || true
wait "$sleeper" 2>/dev/null || true
grep -q "warning: still in use by $sleeper (sleep)" "$BFS_WORK/stale.err" ||
	bfs_fail "umount of a stale mount does not name the process in it: $(cat "$BFS_WORK/stale.err")"
bfs_expect_fail any "$BRANCHFS" umount "$MNT"
bfs_mount "$STORE" "$MNT"
bfs_same "$H/rand" "$D/before-term"
bfs_umount "$MNT"

bfs_step "a store renamed while mounted is served from its new place; a new store at its old path is left alone"
# RocksDB makes its files by path: the daemon reaches its store through a
# descriptor of the store directory (/proc/self/fd/N), so the flush at the
# umount below lands in the renamed store, not in the new one at the old
# path, and the old daemon's exit removes only its own control socket.
X=$BFS_WORK/sx
MX=$BFS_WORK/mx
MX2=$BFS_WORK/mx2
bfs_init "$X"
bfs_mount "$X" "$MX"
echo kept >"$MX/main/f"
sync "$MX/main/f"
pid=$(bfs_daemon_pid "$X")
mv "$X" "$BFS_WORK/sy"
bfs_init "$X"
bfs_mount "$X" "$MX2"
echo other >"$MX2/main/g"
cp "$H/rand" "$MX/main/after-rename" || bfs_fail "write to the renamed store's mount"
sync "$MX/main/after-rename" || bfs_fail "fsync on the renamed store's mount"
"$BRANCHFS" snapshot create -s "$BFS_WORK/sy" main s-after-rename ||
	bfs_fail "snapshot of the renamed store through its control socket"
[ -S "$X/ctl.sock" ] || bfs_fail "the new store at the old path has no control socket"
bfs_umount "$MX2"
new_db=$(cd "$X/db" && ls -l --time-style=+%s.%N | sort)
"$BRANCHFS" umount "$MX" || bfs_fail "umount of the renamed store's mount"
unset "BFS_MNT_STORE[$MX]"
bfs_wait_gone "$pid" 20 || bfs_fail "the daemon of the renamed store did not exit"
! bfs_is_mounted "$MX" || bfs_fail "$MX is still mounted"
[ "$(cd "$X/db" && ls -l --time-style=+%s.%N | sort)" = "$new_db" ] ||
	bfs_fail "the renamed store's daemon changed files of the new store at its old path"
"$BRANCHFS" check "$X" >&2 || bfs_fail "check of the new store at the old path is not clean"
"$BRANCHFS" check "$BFS_WORK/sy" >&2 || bfs_fail "check of the renamed store is not clean"
bfs_mount "$BFS_WORK/sy" "$MX"
[ "$(cat "$MX/main/f")" = kept ] || bfs_fail "the renamed store lost main/f"
bfs_same "$H/rand" "$MX/main/after-rename"
bfs_same "$H/rand" "$MX/.snapshots/s-after-rename/after-rename"
[ ! -e "$MX/main/g" ] || bfs_fail "the new store's file is in the renamed store"
bfs_umount "$MX"
bfs_mount "$X" "$MX2"
[ "$(cat "$MX2/main/g")" = other ] || bfs_fail "the new store lost main/g"
[ ! -e "$MX2/main/after-rename" ] || bfs_fail "the renamed store's file is in the new store"
bfs_umount "$MX2"

bfs_step "umount of a renamed store's mount does not wait for another store mounted at its old path"
# (umount waits for the store lock at the mount's source path; the daemon
# there says it serves another mountpoint, so that lock is not this one's)
bfs_mount "$BFS_WORK/sy" "$MX"
pid=$(bfs_daemon_pid "$BFS_WORK/sy")
mv "$BFS_WORK/sy" "$BFS_WORK/sz"
bfs_init "$BFS_WORK/sy"
bfs_mount "$BFS_WORK/sy" "$MX2"
rc=0
timeout 120 "$BRANCHFS" umount "$MX" 2>"$BFS_WORK/ren.err" || rc=$?
unset "BFS_MNT_STORE[$MX]"
[ $rc = 0 ] || bfs_fail "umount of the renamed store's mount: exit $rc: $(cat "$BFS_WORK/ren.err")"
bfs_wait_gone "$pid" 20 || bfs_fail "the daemon of the renamed store did not exit"
[ -d "$MX2/main" ] || bfs_fail "the other store's mount is gone"
bfs_umount "$MX2"
"$BRANCHFS" check "$BFS_WORK/sz" >&2 || bfs_fail "check of the store renamed twice is not clean"
