/* SPDX-License-Identifier: MIT */
/*
 * fs/ctl_proto.h - wire format of the control socket STORE/ctl.sock.
 *
 * A unix stream socket, mode 0600; the daemon checks SO_PEERCRED and serves
 * only root and the uid that owns the daemon.  One request per connection:
 *
 *   request:  u32 BE length n, then n bytes: words separated by NUL
 *             (e.g. "stats\0"), n <= CTL_MAX_REQUEST
 *   reply:    i32 BE status (0 or -errno), u32 BE length m, m bytes of
 *             UTF-8 text: "key value" lines for data, or an error message
 *
 * Malformed or truncated requests get status -EINVAL and the connection is
 * closed; the daemon keeps serving.
 */
#ifndef BFS_CTL_PROTO_H
#define BFS_CTL_PROTO_H

#define CTL_SOCK_NAME "ctl.sock"
#define CTL_MAX_REQUEST 8192u
#define CTL_MAX_WORDS 16
#define CTL_MAX_REPLY (16u << 20)

#endif /* BFS_CTL_PROTO_H */
