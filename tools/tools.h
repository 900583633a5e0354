/* SPDX-License-Identifier: MIT */
/* tools/tools.h - shared by the CLI's source files. */
#ifndef BFS_TOOLS_H
#define BFS_TOOLS_H

#include <stdbool.h>
#include <stddef.h>

#define BRANCHFS_VERSION "0.1.0"

/* Print "branchfs: <msg>" on stderr. */
void die_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Control-socket client: see fs/ctl_proto.h.  Returns the daemon's status
 * (0 or -errno) with *reply a malloc()ed text, or -ENOTCONN if no daemon
 * serves @store. */
/* Seconds a request waits for the daemon's answer (gc: no limit), 120 or
 * $BRANCHFS_TIMEOUT; then ctl_call() returns -ETIMEDOUT with no reply. */
int ctl_timeout_s(void);
int ctl_call(const char *store, int argc, const char *const *argv, char **reply);
/* ctl_call() that waits at most @secs for the answer (0: for ever) */
int ctl_call_within(const char *store, int argc, const char *const *argv,
		    char **reply, int secs);
/* Whether a daemon serves @store: its control socket takes connections
 * (an error other than "nobody listens" counts as yes). */
bool ctl_serving(const char *store);
const char *ctl_field(const char *text, const char *key, char *buf, size_t size);

#endif /* BFS_TOOLS_H */
