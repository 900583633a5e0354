#!/usr/bin/env bash
# Names: 255-byte names work for files, directories, symlinks, hard links
# and renames; 256 bytes is ENAMETOOLONG; non-ASCII UTF-8 (and any byte
# but '/' and NUL) round-trips through create, readdir, lookup, rename and
# a remount.
. "$(dirname "$0")/lib.sh"

bfs_setup
cd "$D"

# errno_of OP PATH [PATH2]: the errno name a perl syscall fails with, or OK
errno_of() {
	perl -MPOSIX -e '
		my ($op, $a, $b) = @ARGV; my $ok;
		if    ($op eq "create")  { $ok = open(my $f, ">", $a); }
		elsif ($op eq "mkdir")   { $ok = mkdir($a); }
		elsif ($op eq "symlink") { $ok = symlink("target", $a); }
		elsif ($op eq "link")    { $ok = link($a, $b); }
		elsif ($op eq "rename")  { $ok = rename($a, $b); }
		elsif ($op eq "stat")    { $ok = stat($a); }
		elsif ($op eq "unlink")  { $ok = unlink($a); }
		if ($ok) { print "OK\n"; exit 0 }
		my %n = (ENAMETOOLONG() => "ENAMETOOLONG", ENOENT() => "ENOENT", EEXIST() => "EEXIST");
		print $n{$!+0} // "errno " . ($!+0) . " ($!)", "\n";' "$@"
}
expect() {
	local want=$1 got
	shift
	got=$(errno_of "$@")
	[ "$got" = "$want" ] || bfs_fail "$1 of a ${#2}-byte name: got $got, want $want"
}

n255=$(printf 'a%.0s' $(seq 255))
n256=$(printf 'b%.0s' $(seq 256))
d255=$(printf 'd%.0s' $(seq 255))
s255=$(printf 's%.0s' $(seq 255))
l255=$(printf 'l%.0s' $(seq 255))
r255=$(printf 'r%.0s' $(seq 255))
[ ${#n255} = 255 ] && [ ${#n256} = 256 ] || bfs_fail "test setup"

bfs_step "255-byte names"
echo content >"$n255"
[ "$(cat "$n255")" = content ] || bfs_fail "read back a 255-byte name"
mkdir "$d255"
echo inner >"$d255/$n255"
ln -s "$n255" "$s255"
[ "$(cat "$s255")" = content ] || bfs_fail "symlink with a 255-byte name"
ln "$n255" "$l255"
[ "$(stat -c %h "$n255")" = 2 ] || bfs_fail "hard link with a 255-byte name"
mv "$l255" "$r255"
[ -f "$r255" ] && [ ! -e "$l255" ] || bfs_fail "rename to a 255-byte name"
ls | grep -qxF "$n255" || bfs_fail "255-byte name not listed"
[ "$(ls "$d255")" = "$n255" ] || bfs_fail "listing of the 255-byte directory"

bfs_step "256-byte names: ENAMETOOLONG"
expect ENAMETOOLONG create "$n256"
expect ENAMETOOLONG mkdir "$n256"
expect ENAMETOOLONG symlink "$n256"
expect ENAMETOOLONG link "$n255" "$n256"
expect ENAMETOOLONG rename "$n255" "$n256"
expect ENAMETOOLONG stat "$n256"
expect ENAMETOOLONG create "$d255/$n256"
[ -z "$(ls | grep -F "$n256")" ] || bfs_fail "a 256-byte name appeared"
[ "$(cat "$n255")" = content ] || bfs_fail "failed rename damaged the source"
# a 255-byte name made of multi-byte characters: 85 x 3 bytes
u255=$(printf '語%.0s' $(seq 85))
u258=$(printf '語%.0s' $(seq 86))
[ "$(printf %s "$u255" | wc -c)" = 255 ] || bfs_fail "test setup (u255)"
echo wide >"$u255"
[ "$(cat "$u255")" = wide ] || bfs_fail "255-byte UTF-8 name"
expect ENAMETOOLONG create "$u258"

bfs_step "non-ASCII names"
names=(
	'héllo wörld.txt'
	'日本語のファイル名'
	'Ελληνικά'
	'русский'
	'עברית'
	'emoji-🦀🐘'
	$'nfd-e\xcc\x81'
	$'nfc-\xc3\xa9'
	'ﬁligature'
	'tab	and space'
	'new
line'
	'-leading-dash'
	'trailing-space '
	'back\slash'
	"quote'\"s"
	'*?[glob]'
	$'latin1-\xe9-invalid-utf8'
	$'\x01control\x7f'
)
mkdir utf
i=0
for n in "${names[@]}"; do
	printf '%s %d\n' "$n" $i >"utf/$n"
	mkdir "utf/dir-$n"
	ln -s -- "$n" "utf/link-$n"
	i=$((i + 1))
done
check_names() {
	local i=0 n got
	for n in "${names[@]}"; do
		got=$(cat "utf/$n") || bfs_fail "cannot read '$n'"
		[ "$got" = "$(printf '%s %d' "$n" $i)" ] || bfs_fail "content of '$n'"
		[ -d "utf/dir-$n" ] || bfs_fail "directory 'dir-$n'"
		[ "$(readlink "utf/link-$n")" = "$n" ] || bfs_fail "symlink to '$n'"
		i=$((i + 1))
	done
	# readdir returns exactly these byte strings
	(
		for n in "${names[@]}"; do printf '%s\0dir-%s\0link-%s\0' "$n" "$n" "$n"; done
	) | LC_ALL=C sort -z | od -An -tx1 >"$BFS_WORK/want"
	find utf -mindepth 1 -maxdepth 1 -printf '%f\0' | LC_ALL=C sort -z | od -An -tx1 >"$BFS_WORK/got"
	cmp -s "$BFS_WORK/want" "$BFS_WORK/got" || bfs_fail "readdir bytes differ from the names created"
}
check_names
# NFC and NFD spellings are different names (no normalisation)
[ "$(ls utf | grep -c '^nf[cd]-')" = 2 ] || bfs_fail "NFC/NFD names conflated"

bfs_step "rename between non-ASCII names"
mv "utf/${names[0]}" "utf/renamed-ünïcödé"
mv "utf/renamed-ünïcödé" "utf/${names[0]}"
check_names

bfs_step "after a remount"
cd /
bfs_umount "$MNT"
bfs_mount "$STORE" "$MNT"
cd "$D"
check_names
[ "$(cat "$n255")" = content ] || bfs_fail "255-byte name after remount"
[ "$(cat "$u255")" = wide ] || bfs_fail "255-byte UTF-8 name after remount"
[ "$(cat "$d255/$n255")" = inner ] || bfs_fail "nested 255-byte names after remount"
cd /
bfs_umount "$MNT"
