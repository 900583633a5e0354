#!/usr/bin/env bash
# Install every Debian package branchfs needs to build, test and benchmark.
# Idempotent: packages already present are left alone; apt-get update runs only
# when something is missing.
set -euo pipefail

PKGS=(
	build-essential pkg-config
	libfuse3-dev fuse3
	librocksdb-dev libzstd-dev libxxhash-dev libcmocka-dev
	postgresql-15 postgresql-client-15 postgresql-contrib
	util-linux procps psmisc e2fsprogs perl
)

missing=()
for p in "${PKGS[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if [ "${#missing[@]}" -eq 0 ]; then
	echo "install-deps: all ${#PKGS[@]} packages present"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian postgresql package creates a default cluster and starts it; branchfs
# never uses it, but leave it alone rather than surprise the user.
echo "install-deps: done"
