# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here are for the sourcing test
# tests/e2e/lib.sh - sourced by every mount test (tests/e2e/*.sh, tests/pg/*.sh).
#
# Gives a test a private work directory ($BFS_WORK, from mktemp -d) and
# helpers to create stores, mount and unmount them.  An EXIT trap kills any
# postgres running out of $BFS_WORK, unmounts everything mounted below it
# (branchfs umount, then fusermount3 -uz / umount -l), kills a daemon that
# is still alive, and removes $BFS_WORK.  Nothing outside $BFS_WORK is
# touched.
#
# Conventions (libfuse, squashfuse): exit 0 = pass, 77 = skip, else fail.
#
#   . "$(dirname "$0")/lib.sh"
#   bfs_require_mount              # skip unless root and /dev/fuse
#   bfs_setup                      # STORE=$BFS_WORK/store, MNT=$BFS_WORK/mnt,
#                                  # init + mount, D=$MNT/main
#   ... test ...
#   bfs_umount "$MNT"
#
# Environment:
#   BRANCHFS        the binary under test (default: <repo>/branchfs)
#   BFS_KEEP=1      keep $BFS_WORK after a failure (mounts are still undone)
#   TMPDIR          where the work directory is created (default /tmp)

set -euo pipefail

BFS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BRANCHFS=${BRANCHFS:-$BFS_REPO/branchfs}
BFS_TEST=$(basename "$0" .sh)
BFS_E2E_BIN=${BFS_E2E_BIN:-$BFS_REPO/build/tests/e2e}

BFS_WORK=$(mktemp -d "${TMPDIR:-/tmp}/branchfs-$BFS_TEST.XXXXXX")
# Other users (nobody, postgres) must be able to reach mounts inside.
chmod 0711 "$BFS_WORK"

declare -A BFS_MNT_STORE=() # mountpoint -> store, for mounts made by bfs_mount
BFS_STORES=()               # stores created by bfs_init (their logs are shown on failure)
BFS_PGDATAS=()              # data directories registered by bfs_pg_register

bfs_log() { printf '[%s %s] %s\n' "$(date +%T.%3N)" "$BFS_TEST" "$*" >&2; }
bfs_step() { bfs_log "--- $*"; }
bfs_fail() {
	printf 'FAIL(%s): %s\n' "$BFS_TEST" "$*" >&2
	exit 1
}
bfs_skip() {
	printf 'SKIP(%s): %s\n' "$BFS_TEST" "$*" >&2
	exit 77
}

# bfs_require_mount: skip unless this machine can run mount tests; fail if
# the binary under test is missing (a build problem is not a skip).
bfs_require_mount() {
	[ "$(id -u)" -eq 0 ] || bfs_skip "mount tests need root"
	[ -c /dev/fuse ] || bfs_skip "/dev/fuse missing"
	[ -x "$BRANCHFS" ] || bfs_fail "$BRANCHFS not found or not executable (run make)"
}

# ---- mounts --------------------------------------------------------------

# Mountpoints in /proc/self/mounts (field 2, octal escapes undone).
bfs_mounts() {
	local _dev mp _rest
	while read -r _dev mp _rest; do
		printf '%b\n' "$mp"
	done </proc/self/mounts
}
# bfs_is_mounted DIR: DIR is a mountpoint (healthy or stale).
bfs_is_mounted() {
	local d
	d=$(realpath -m -- "$1")
	bfs_mounts | grep -qxF -- "$d"
}
# bfs_mount_opts DIR: the mount options of DIR as /proc/self/mounts shows them.
bfs_mount_opts() {
	local d
	d=$(realpath -m -- "$1")
	awk -v d="$d" '$2 == d { o = $4 } END { print o }' /proc/self/mounts
}

# bfs_daemon_pids STORE: pids of processes holding both /dev/fuse and a file
# inside STORE open - the daemon serving STORE.  Prints nothing if none.
bfs_daemon_pids() {
	local real p f t fuse store
	real=$(realpath -m -- "$1")
	for p in /proc/[0-9]*; do
		[ "${p#/proc/}" = "$$" ] && continue
		fuse=0 store=0
		for f in "$p"/fd/*; do
			t=$(readlink "$f" 2>/dev/null) || continue
			case $t in
			/dev/fuse) fuse=1 ;;
			"$real"/*) store=1 ;;
			esac
		done
		if [ $fuse = 1 ] && [ $store = 1 ]; then
			echo "${p#/proc/}"
		fi
	done 2>/dev/null
}
# bfs_daemon_pid STORE: the single daemon pid, or fail.
bfs_daemon_pid() {
	local pids n
	pids=$(bfs_daemon_pids "$1")
	n=$(printf '%s' "$pids" | grep -c . || true)
	[ "$n" -eq 1 ] || bfs_fail "expected one daemon for $1, found $n: $pids"
	echo "$pids"
}
# bfs_wait_gone PID [SECONDS]: wait until PID has exited, all its threads
# too (so its files, /dev/fuse among them, are closed).  PID need not be our
# child: a zombie whose threads are all gone counts as gone.
bfs_wait_gone() {
	local i max=$((${2:-20} * 10)) st th
	for ((i = 0; i < max; i++)); do
		[ -e "/proc/$1" ] || return 0
		st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
		th=$(awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 0
		if [ "$st" = Z ] && [ "${th:-1}" -le 1 ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# bfs_init STORE: create a store (fails the test on error).
bfs_init() {
	"$BRANCHFS" init "$1" || bfs_fail "branchfs init $1 failed"
	BFS_STORES+=("$1")
}

# bfs_mount STORE MNT [ARGS...]: mount; the contract is that the command
# returns only once the mount is live, so this checks at once, with no wait.
bfs_mount() {
	local store=$1 mnt=$2
	shift 2
	mkdir -p -- "$mnt"
	# shellcheck disable=SC2086 # BFS_MOUNT_OPTS: extra words, e.g. --writeback
	"$BRANCHFS" mount "$store" "$mnt" ${BFS_MOUNT_OPTS:-} "$@" ||
		bfs_fail "branchfs mount $store $mnt ${BFS_MOUNT_OPTS:-} $* failed"
	BFS_MNT_STORE[$mnt]=$store
	bfs_is_mounted "$mnt" || bfs_fail "mount returned 0 but $mnt is not in /proc/self/mounts"
	[ -d "$mnt/main" ] || bfs_fail "mount returned 0 but $mnt/main is not a directory"
}

# bfs_umount MNT: unmount; the contract is that the command returns only
# once the daemon has exited and released the store.
bfs_umount() {
	local mnt=$1 store pids
	store=${BFS_MNT_STORE[$mnt]:-}
	"$BRANCHFS" umount "$mnt" || bfs_fail "branchfs umount $mnt failed"
	unset "BFS_MNT_STORE[$mnt]"
	! bfs_is_mounted "$mnt" || bfs_fail "umount returned 0 but $mnt is still mounted"
	if [ -n "$store" ]; then
		pids=$(bfs_daemon_pids "$store")
		[ -z "$pids" ] || bfs_fail "umount returned 0 but daemon $pids still holds $store"
		if [ "${BFS_CHECK_ON_UMOUNT:-0}" = 1 ]; then
			"$BRANCHFS" check "$store" >&2 || bfs_fail "branchfs check $store after umount: not clean"
		fi
	fi
}

# bfs_loop_ext4 DIR MB: a fresh ext4 filesystem of MB MiB (no blocks
# reserved for root) on a loop device, mounted on DIR (made), its image
# DIR.img; skips the test where a loop device cannot be mounted.  Keep DIR
# below the work directory: the cleanup unmounts it (deepest path first,
# after any branchfs mount inside), and -o loop sets autoclear, so the loop
# device goes with it.  (The caller checks that mkfs.ext4 exists.)
bfs_loop_ext4() {
	truncate -s "$2M" "$1.img"
	mkfs.ext4 -q -F -m 0 "$1.img"
	mkdir "$1"
	mount -o loop "$1.img" "$1" || bfs_skip "cannot mount a loop device here"
}

# bfs_avail_mib DIR: MiB free for unprivileged users on DIR's filesystem.
bfs_avail_mib() { df -B1M --output=avail "$1" | tail -n1 | tr -d ' '; }

# bfs_fill DIR TAG: files DIR/fillerTAG.* take every free byte; again if
# some came free meanwhile (RocksDB deletes an obsolete WAL file after a
# flush), up to 5 times.
bfs_fill() {
	local i
	for i in 1 2 3 4 5; do
		dd if=/dev/zero of="$1/filler$2.$i" bs=1M status=none 2>/dev/null || true
		sleep 0.2
		[ "$(bfs_avail_mib "$1")" -ge 4 ] || return 0
	done
}

# bfs_setup: the common case.  Sets STORE, MNT and D (= $MNT/main).
bfs_setup() {
	bfs_require_mount
	STORE=$BFS_WORK/store
	MNT=$BFS_WORK/mnt
	bfs_init "$STORE"
	bfs_mount "$STORE" "$MNT"
	D=$MNT/main
}

# ---- checks --------------------------------------------------------------

# bfs_expect_fail CODE CMD...: run CMD, which must exit with CODE ("any" for
# any non-zero code) and print something on stderr.  Sets BFS_RC, BFS_OUT,
# BFS_ERR.
bfs_expect_fail() {
	local want=$1 ef of
	shift
	ef=$BFS_WORK/.stderr of=$BFS_WORK/.stdout
	BFS_RC=0
	"$@" >"$of" 2>"$ef" || BFS_RC=$?
	BFS_OUT=$(cat "$of") BFS_ERR=$(cat "$ef")
	bfs_log "\$ $* -> exit $BFS_RC; stderr: $BFS_ERR"
	[ "$BFS_RC" -ne 0 ] || bfs_fail "'$*' succeeded, expected failure"
	if [ "$want" != any ] && [ "$BFS_RC" -ne "$want" ]; then
		bfs_fail "'$*' exited $BFS_RC, expected $want"
	fi
	[ -n "$BFS_ERR" ] || bfs_fail "'$*' failed without a message on stderr"
}

# bfs_tree_sum DIR [FIND-EXCLUDE-NAME...]: a listing (path, type, mode,
# owner, size, link target) and sha256 of every regular file under DIR of
# at most $BFS_SUM_MAX_MB MiB (default 512; bigger ones are only listed),
# sorted: equal outputs mean equal trees.  Names given after DIR are left
# out (find -name patterns).
bfs_tree_sum() {
	local dir=$1 n
	shift
	local ex=()
	for n in "$@"; do ex+=(-name "$n" -prune -o); done
	(
		cd -- "$dir"
		find . -mindepth 1 "${ex[@]}" -printf '%p %y %m %u:%g %s %l\n' | LC_ALL=C sort
		find . -mindepth 1 "${ex[@]}" -type f -size -"$((${BFS_SUM_MAX_MB:-512} + 1))"M -print0 |
			LC_ALL=C sort -z | xargs -0r sha256sum
	)
}

# bfs_json_num KEY-REGEX: read JSON on stdin and print the first number whose
# key (nested keys joined by ".") matches KEY-REGEX (a Perl regex, case
# insensitive); fail if the input is not JSON or has no such number.
# Perl's JSON::PP comes with build-essential (dpkg-dev needs perl), so no
# jq or python3 is needed.
bfs_json_num() {
	perl -MJSON::PP -e '
		my $re = shift;
		my $doc = eval { JSON::PP->new->decode(do { local $/; <STDIN> }) };
		die "not JSON: $@" unless defined $doc;
		my @found;
		sub walk {
			my ($v, $key) = @_;
			if (ref $v eq "HASH") {
				walk($v->{$_}, length $key ? "$key.$_" : $_) for sort keys %$v;
			} elsif (ref $v eq "ARRAY") {
				walk($_, $key) for @$v;
			} elsif (!ref $v && defined $v && $v =~ /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/) {
				push @found, [$key, $v];
			}
		}
		# keys in document order would be nicer, but JSON::PP hashes are
		# unordered: prefer the shortest matching key (top level first)
		walk($doc, "");
		my @m = sort { length($a->[0]) <=> length($b->[0]) } grep { $_->[0] =~ /$re/i } @found;
		die "no number under a key matching $re\n" unless @m;
		print $m[0][1], "\n";
	' "$1"
}

# bfs_json_valid: stdin is JSON (checked by Perl, and by python3 -m json.tool
# and jq when they are installed).
bfs_json_valid() {
	local j
	j=$(cat)
	perl -MJSON::PP -e 'JSON::PP->new->decode(do { local $/; <STDIN> })' <<<"$j" || return 1
	if command -v python3 >/dev/null && python3 -c '' 2>/dev/null; then
		python3 -m json.tool <<<"$j" >/dev/null || return 1
	fi
	if command -v jq >/dev/null; then
		jq . <<<"$j" >/dev/null || return 1
	fi
}

# bfs_stat STORE KEY-REGEX: one number from `branchfs stats STORE --json`.
bfs_stat() {
	local j
	j=$("$BRANCHFS" stats "$1" --json) || bfs_fail "branchfs stats $1 --json failed"
	bfs_json_num "$2" <<<"$j" || bfs_fail "stats --json: no '$2' in: $j"
}

# bfs_same FILE1 FILE2: byte-identical or fail.
bfs_same() {
	cmp -- "$1" "$2" || bfs_fail "$2 differs from $1"
}

# ---- postgres ------------------------------------------------------------

# bfs_pg_register PGDATA: the cleanup stops the postmaster of PGDATA.
bfs_pg_register() { BFS_PGDATAS+=("$1"); }

# Kill every postgres process that runs out of $BFS_WORK: the postmasters
# of registered data directories, and any process whose command line or
# working directory lies below $BFS_WORK (backends chdir to PGDATA).
bfs_pg_kill_all() {
	local d pid p cwd comm pids=()
	for d in "${BFS_PGDATAS[@]}"; do
		pid=$(head -n1 "$d/postmaster.pid" 2>/dev/null) || continue
		[[ $pid =~ ^[0-9]+$ ]] && pids+=("$pid")
	done
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		comm=$(cat "$p/comm" 2>/dev/null) || continue
		case $comm in postgres | postmaster | pg_ctl | psql | pgbench | initdb) ;; *) continue ;; esac
		cwd=$(readlink "$p/cwd" 2>/dev/null) || cwd=
		if [[ $cwd == "$BFS_WORK"* ]] || tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$BFS_WORK"; then
			pids+=("$pid")
		fi
	done 2>/dev/null
	[ "${#pids[@]}" -gt 0 ] || return 0
	bfs_log "cleanup: stopping postgres processes ${pids[*]}"
	kill -QUIT "${pids[@]}" 2>/dev/null || true
	for pid in "${pids[@]}"; do bfs_wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do bfs_wait_gone "$pid" 5 || true; done
}

# ---- cleanup -------------------------------------------------------------

bfs_cleanup() {
	local rc=$? mp store pid pids i
	set +e
	trap - EXIT
	cd /
	# background jobs of the test (writers, readers)
	pids=$(jobs -p)
	[ -z "$pids" ] || kill -KILL $pids 2>/dev/null
	wait 2>/dev/null
	bfs_pg_kill_all

	if [ "$rc" -ne 0 ]; then
		for store in "${BFS_STORES[@]}"; do
			if [ -f "$store/branchfs.log" ]; then
				echo "=== last lines of $store/branchfs.log ===" >&2
				tail -n 40 "$store/branchfs.log" >&2
			fi
		done
	fi

	# Every mount below $BFS_WORK, deepest first.
	for ((i = 0; i < 3; i++)); do
		mp=$(bfs_mounts | grep -F -- "$BFS_WORK/" | sort -r)
		[ -n "$mp" ] || break
		while read -r mp; do
			[ -n "$mp" ] || continue
			bfs_log "cleanup: unmounting $mp"
			timeout 60 "$BRANCHFS" umount "$mp" >&2 ||
				fusermount3 -uz "$mp" >&2 || umount -l "$mp" >&2
		done <<<"$mp"
	done

	# Daemons still holding one of our stores.
	for store in "${BFS_STORES[@]}"; do
		for pid in $(bfs_daemon_pids "$store"); do
			bfs_wait_gone "$pid" 10 && continue
			bfs_log "cleanup: daemon $pid still holds $store, killing it"
			kill -KILL "$pid"
			bfs_wait_gone "$pid" 10
		done
	done

	if bfs_mounts | grep -qF -- "$BFS_WORK/"; then
		bfs_log "cleanup: mounts left below $BFS_WORK; not removing it"
	elif [ "$rc" -ne 0 ] && [ "${BFS_KEEP:-0}" = 1 ]; then
		bfs_log "cleanup: keeping $BFS_WORK"
	else
		rm -rf --one-file-system -- "$BFS_WORK"
	fi
	if [ "$rc" -eq 0 ]; then
		bfs_log "ok"
	else
		bfs_log "exit $rc"
	fi
	exit "$rc"
}
trap bfs_cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
