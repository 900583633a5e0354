/* SPDX-License-Identifier: MIT */
/*
 * fs/initio.c - /dev/fuse I/O that negotiates FUSE_HANDLE_KILLPRIV_V2.
 *
 * Without it the kernel asks for the "security.capability" xattr before
 * every write (FUSE never sets SB_NOSEC), doubling the requests of a write
 * workload.  libfuse 3.14 does not know the flag, so this shim passes reads
 * and writes through unchanged except for one thing: if the kernel's INIT
 * request offers the flag, the INIT reply accepts it.  In exchange the
 * daemon kills set-user-ID/set-group-ID bits itself on write, truncate and
 * chown (snap_write / snap_setattr), as the protocol asks.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fs_int.h"

#define OP_INIT 26u
#define INIT_FLAG_KILLPRIV_V2 (1u << 28)
#define IN_HDR 40u  /* struct fuse_in_header */
#define OUT_HDR 16u /* struct fuse_out_header */

static uint64_t init_unique;   /* unique id of the INIT request */
static bool init_offered;      /* kernel offered KILLPRIV_V2 */
bool fs_killpriv_v2;           /* offered, and so accepted: fs.c */

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);
	const uint8_t *p = buf;

	if (n >= (ssize_t)(IN_HDR + 16)) {
		uint32_t opcode, flags;

		memcpy(&opcode, p + 4, 4);
		if (opcode == OP_INIT) {
			memcpy(&init_unique, p + 8, 8);
			memcpy(&flags, p + IN_HDR + 12, 4); /* fuse_init_in.flags */
			init_offered = flags & INIT_FLAG_KILLPRIV_V2;
			fs_killpriv_v2 = init_offered; /* op_init reads it */
		}
	}
	return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	if (init_unique && count >= 2 && iov[0].iov_len >= OUT_HDR &&
	    iov[1].iov_len >= 16) {
		uint64_t unique;
		int32_t error;

		memcpy(&unique, (uint8_t *)iov[0].iov_base + 8, 8);
		memcpy(&error, (uint8_t *)iov[0].iov_base + 4, 4);
		if (unique == init_unique) {
			init_unique = 0;
			if (init_offered && error == 0) {
				uint8_t *out = iov[1].iov_base;
				uint32_t flags;

				memcpy(&flags, out + 12, 4); /* fuse_init_out.flags */
				flags |= INIT_FLAG_KILLPRIV_V2;
				memcpy(out + 12, &flags, 4);
			}
		}
	}
	return writev(fd, iov, count);
}

int fs_initio_setup(struct fuse_session *se)
{
	static const struct fuse_custom_io io = {
		.read = io_read,
		.writev = io_writev,
	};

	return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}
