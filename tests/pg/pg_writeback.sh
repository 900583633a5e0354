#!/usr/bin/env bash
# PostgreSQL on `branchfs mount --writeback`, the mode scripts/quickstart.sh
# mounts with: the tests of what PostgreSQL relies on run again in it.
#   pg_branch    branch during pgbench, a second postgres on the branch
#                recovers, amcheck clean, pgbench's invariant holds
#   pg_crash     kill -9 of the daemon: every acknowledged commit survives
#   pg_powercut  power cuts under pgbench, snapshots and branch creation
# Each runs in its own work directory with its own cleanup.
# Exit 0 = pass, 1 = fail, 77 = skip (a sub-test's skip).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export BFS_MOUNT_OPTS=--writeback
for t in pg_branch pg_crash pg_powercut; do
	printf '[%s] ---- %s with --writeback\n' "$(date +%H:%M:%S)" "$t"
	bash "$HERE/$t.sh"
	rc=$?
	if [ $rc -ne 0 ]; then
		printf '[%s] FAIL: %s with --writeback (exit %d)\n' "$(date +%H:%M:%S)" "$t" "$rc" >&2
		exit $rc
	fi
done
echo "PASS pg_writeback"
