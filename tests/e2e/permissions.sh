#!/usr/bin/env bash
# Permissions as a second, unprivileged user (nobody) on a mount made by
# root: the default options are allow_other,default_permissions, files get
# the caller's uid/gid, setgid directories pass their group on, the sticky
# bit protects other users' files, and EACCES/EPERM where POSIX says so;
# POSIX ACLs are refused with EOPNOTSUPP (not stored and left unenforced).
. "$(dirname "$0")/lib.sh"

command -v setpriv >/dev/null || bfs_skip "setpriv (util-linux) missing"
id nobody >/dev/null 2>&1 || bfs_skip "no user nobody"
NOBODY_UID=$(id -u nobody)
NOGROUP_GID=$(id -g nobody)
umask 022
bfs_setup

# as UID GID CMD...: run CMD with those ids and no supplementary groups
as() {
	local u=$1 g=$2
	shift 2
	(cd / && setpriv --reuid="$u" --regid="$g" --clear-groups -- "$@")
}
as_nobody() { as "$NOBODY_UID" "$NOGROUP_GID" "$@"; }
# denied ERRTEXT CMD...: CMD (as someone) fails and says ERRTEXT
denied() {
	local want=$1 out
	shift
	if out=$("$@" 2>&1); then
		bfs_fail "allowed, should be denied: $*"
	fi
	grep -qF "$want" <<<"$out" || bfs_fail "'$*' failed with '$out', want '$want'"
}

bfs_step "mount options"
opts=$(bfs_mount_opts "$MNT")
bfs_log "options: $opts"
[[ ,$opts, == *,allow_other,* ]] || bfs_fail "no allow_other in $opts"
[[ ,$opts, == *,default_permissions,* ]] || bfs_fail "no default_permissions in $opts"
as_nobody ls "$MNT" >/dev/null || bfs_fail "nobody cannot list the mount root"
as_nobody ls "$D" >/dev/null || bfs_fail "nobody cannot list main"

bfs_step "reading and writing root's files"
echo secret >"$D/secret" && chmod 0600 "$D/secret"
echo public >"$D/public" && chmod 0644 "$D/public"
echo wo >"$D/writeonly" && chmod 0622 "$D/writeonly"
denied "Permission denied" as_nobody cat "$D/secret"
[ "$(as_nobody cat "$D/public")" = public ] || bfs_fail "nobody cannot read a 0644 file"
denied "Permission denied" as_nobody sh -c "echo x >>'$D/public'"
denied "Permission denied" as_nobody truncate -s 0 "$D/public"
as_nobody sh -c "echo x >>'$D/writeonly'" || bfs_fail "nobody cannot write a 0622 file"
denied "Permission denied" as_nobody cat "$D/writeonly"
denied "Operation not permitted" as_nobody chmod 0666 "$D/public"
denied "Operation not permitted" as_nobody chown "$NOBODY_UID" "$D/public"
denied "Permission denied" as_nobody touch -d 2001-01-01 "$D/public"
[ "$(cat "$D/public")" = public ] || bfs_fail "public changed"

bfs_step "root's 0755 and 0700 directories"
mkdir -m 0755 "$D/rootdir"
echo in >"$D/rootdir/file"
denied "Permission denied" as_nobody touch "$D/rootdir/new"
denied "Permission denied" as_nobody mkdir "$D/rootdir/newdir"
denied "Permission denied" as_nobody rm -f "$D/rootdir/file"
denied "Permission denied" as_nobody mv "$D/rootdir/file" "$D/rootdir/moved"
denied "Permission denied" as_nobody ln -s x "$D/rootdir/link"
denied "Permission denied" as_nobody mkfifo "$D/rootdir/fifo"
[ "$(as_nobody cat "$D/rootdir/file")" = in ] || bfs_fail "nobody cannot read in a 0755 dir"
mkdir -m 0700 "$D/private"
echo p >"$D/private/file"
denied "Permission denied" as_nobody ls "$D/private"
denied "Permission denied" as_nobody cat "$D/private/file"
denied "Permission denied" as_nobody stat "$D/private/file"
[ "$(ls "$D/rootdir")" = file ] || bfs_fail "rootdir changed: $(ls "$D/rootdir")"

bfs_step "a 1777 directory"
mkdir -m 1777 "$D/tmp"
as_nobody sh -c "umask 022; echo mine >'$D/tmp/nfile'" || bfs_fail "nobody cannot create in a 1777 dir"
[ "$(stat -c %u:%g "$D/tmp/nfile")" = "$NOBODY_UID:$NOGROUP_GID" ] ||
	bfs_fail "nobody's file is owned by $(stat -c %u:%g "$D/tmp/nfile")"
[ "$(stat -c %a "$D/tmp/nfile")" = 644 ] || bfs_fail "nobody's file has mode $(stat -c %a "$D/tmp/nfile")"
as_nobody mkdir "$D/tmp/ndir" || bfs_fail "nobody cannot mkdir in a 1777 dir"
[ "$(stat -c %u:%g "$D/tmp/ndir")" = "$NOBODY_UID:$NOGROUP_GID" ] || bfs_fail "nobody's dir owner"
as_nobody ln -s nfile "$D/tmp/nlink" || bfs_fail "nobody cannot symlink"
[ "$(stat -c %u "$D/tmp/nlink")" = "$NOBODY_UID" ] || bfs_fail "nobody's symlink owner"
as_nobody mkfifo "$D/tmp/nfifo" || bfs_fail "nobody cannot mkfifo"
[ "$(stat -c %u "$D/tmp/nfifo")" = "$NOBODY_UID" ] || bfs_fail "nobody's fifo owner"
as_nobody chmod 0600 "$D/tmp/nfile" || bfs_fail "nobody cannot chmod its own file"
as_nobody touch -d 2001-01-01 "$D/tmp/nfile" || bfs_fail "nobody cannot set times of its own file"
denied "Operation not permitted" as_nobody chown 0 "$D/tmp/nfile"
# sticky: another unprivileged user can neither remove nor rename it
denied "Operation not permitted" as 12345 12345 rm -f "$D/tmp/nfile"
denied "Operation not permitted" as 12345 12345 mv "$D/tmp/nfile" "$D/tmp/stolen"
[ -f "$D/tmp/nfile" ] || bfs_fail "sticky bit did not protect nobody's file"
as_nobody rm "$D/tmp/nfile" || bfs_fail "nobody cannot remove its own file"

bfs_step "a setgid directory"
mkdir "$D/sg"
chgrp 4242 "$D/sg"
chmod 2777 "$D/sg"
as_nobody sh -c "echo x >'$D/sg/nfile'" || bfs_fail "nobody cannot create in the setgid dir"
[ "$(stat -c %u:%g "$D/sg/nfile")" = "$NOBODY_UID:4242" ] ||
	bfs_fail "file in setgid dir is $(stat -c %u:%g "$D/sg/nfile"), want $NOBODY_UID:4242"
as_nobody mkdir "$D/sg/ndir" || bfs_fail "nobody cannot mkdir in the setgid dir"
[ "$(stat -c %g "$D/sg/ndir")" = 4242 ] || bfs_fail "subdir of a setgid dir has group $(stat -c %g "$D/sg/ndir")"
[ -g "$D/sg/ndir" ] || bfs_fail "subdir of a setgid dir lost S_ISGID ($(stat -c %A "$D/sg/ndir"))"
echo r >"$D/sg/rfile"
[ "$(stat -c %u:%g "$D/sg/rfile")" = "0:4242" ] || bfs_fail "root's file in setgid dir: $(stat -c %u:%g "$D/sg/rfile")"

bfs_step "setuid is dropped when another user writes"
echo s >"$D/suid" && chmod 04777 "$D/suid"
as_nobody sh -c "echo more >>'$D/suid'" || bfs_fail "nobody cannot write a 0777 file"
[ ! -u "$D/suid" ] || bfs_fail "setuid bit survived a write by another user ($(stat -c %A "$D/suid"))"

bfs_step "an unprivileged user's own tree, postgres-style"
mkdir "$D/own" && chown "$NOBODY_UID:$NOGROUP_GID" "$D/own" && chmod 0700 "$D/own"
as_nobody sh -ec "
	cd '$D/own'
	umask 077
	echo data > f.tmp
	sync f.tmp
	mv f.tmp f
	sync .
	mkdir -p a/b
	ln -s ../f a/link
	ln f hard
	dd if=/dev/zero of=big bs=64k count=32 status=none
	truncate -s 100 big
	[ \"\$(cat a/link)\" = data ]
	[ \"\$(stat -c %a f)\" = 600 ]
	rm -r a hard
" || bfs_fail "nobody's workflow in its own directory"
[ "$(stat -c %U "$D/own/f")" = nobody ] || bfs_fail "owner of nobody's file"
[ "$(cat "$D/own/f")" = data ] || bfs_fail "root cannot read nobody's 0600 file"
denied "Permission denied" as 12345 12345 ls "$D/own"

bfs_step "POSIX ACLs are refused (EOPNOTSUPP), never stored and left unenforced"
UTIL=$BFS_E2E_BIN/branch_util
echo acl >"$D/aclf"
chmod 644 "$D/aclf"
r=$("$UTIL" setacl "$D/aclf" "$NOBODY_UID")
[ "$r" = ENOTSUP ] || bfs_fail "setting an ACL that denies nobody: want ENOTSUP, got $r"
r=$("$UTIL" getxattr "$D/aclf" system.posix_acl_access)
[ "$r" = ENOTSUP ] || bfs_fail "getxattr system.posix_acl_access: want ENOTSUP, got $r"
[ "$(as_nobody cat "$D/aclf")" = acl ] || bfs_fail "nobody cannot read a 0644 file"
case $(ls -ld "$D/aclf") in ??????????+*) bfs_fail "ls shows an ACL: $(ls -ld "$D/aclf")" ;; esac
# cp -a of a plain file keeps its mode and adds no ACL
install -m 640 /dev/null "$BFS_WORK/plain640"
cp -a "$BFS_WORK/plain640" "$D/copied" || bfs_fail "cp -a of a plain file onto the mount"
[ "$(stat -c %a "$D/copied")" = 640 ] || bfs_fail "cp -a: mode $(stat -c %a "$D/copied"), want 640"
case $(ls -ld "$D/copied") in ??????????+*) bfs_fail "cp -a stored an ACL: $(ls -ld "$D/copied")" ;; esac

bfs_step "ownership survives a remount; ACLs a store kept from before are hidden"
bfs_umount "$MNT"
# a store written before ACLs were refused may hold them: never shown
# (listxattr, getxattr, ls), never enforced; other xattrs still are
"$BFS_E2E_BIN/bfs_damage" "$STORE" xattr main aclf system.posix_acl_access oldacl >/dev/null ||
	bfs_fail "bfs_damage xattr system.posix_acl_access"
"$BFS_E2E_BIN/bfs_damage" "$STORE" xattr main aclf system.posix_acl_default olddef >/dev/null ||
	bfs_fail "bfs_damage xattr system.posix_acl_default"
"$BFS_E2E_BIN/bfs_damage" "$STORE" xattr main aclf user.kept yes >/dev/null ||
	bfs_fail "bfs_damage xattr user.kept"
bfs_mount "$STORE" "$MNT"
r=$("$UTIL" xattrs "$D/aclf")
[ "$r" = "$D/aclf user.kept=796573" ] || bfs_fail "xattrs of a file with stored ACLs: '$r'"
r=$("$UTIL" getxattr "$D/aclf" system.posix_acl_access)
[ "$r" = ENOTSUP ] || bfs_fail "getxattr of a stored system.posix_acl_access: want ENOTSUP, got $r"
case $(ls -ld "$D/aclf") in ??????????+*) bfs_fail "ls shows a stored ACL: $(ls -ld "$D/aclf")" ;; esac
[ "$(stat -c %u:%g "$D/sg/nfile")" = "$NOBODY_UID:4242" ] || bfs_fail "owner lost on remount"
denied "Permission denied" as_nobody cat "$D/secret"
[ -k "$D/tmp" ] && [ -g "$D/sg" ] || bfs_fail "sticky/setgid bits lost on remount"
bfs_umount "$MNT"
