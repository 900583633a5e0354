/* SPDX-License-Identifier: MIT */
/*
 * fs/mounts.c - finding branchfs mounts in /proc/self/mountinfo, and the
 * dirty-page limit of a --writeback mount's backing device.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"

bool fs_path_within(const char *p, const char *dir)
{
	size_t n = strlen(dir);

	if (n == 1) /* "/" */
		return true;
	return strncmp(p, dir, n) == 0 && (p[n] == '\0' || p[n] == '/');
}

/* Undo mountinfo's escapes in place: the kernel writes space, tab, newline
 * and backslash in paths as \040, \011, \012 and \134. */
static void mountinfo_unescape(char *s)
{
	char *w = s;

	for (const char *r = s; *r; w++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' &&
		    r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
			*w = (char)((r[1] - '0') << 6 | (r[2] - '0') << 3 |
				    (r[3] - '0'));
			r += 4;
		} else {
			*w = *r++;
		}
	}
	*w = '\0';
}

/*
 * A mountinfo line is
 *   ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
 * and a branchfs mount has TYPE fuse.branchfs, SOURCE branchfs:STORE and
 * user_id=UID among the SUPER options.
 */
int fs_mount_find(const char *path, bool above, struct fs_mount_info *mi)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[8192];
	int found = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char mp[PATH_MAX], fstype[64], src[PATH_MAX];
		char *dash = strstr(line, " - ");
		unsigned maj, min;

		if (!dash)
			continue;
		if (sscanf(line, "%*s %*s %u:%u %*s %4095s", &maj, &min, mp) !=
		    3)
			continue;
		if (sscanf(dash + 3, "%63s %4095s", fstype, src) != 2)
			continue;
		mountinfo_unescape(mp);
		mountinfo_unescape(src);
		if ((above ? !fs_path_within(path, mp) : strcmp(mp, path) != 0) ||
		    strcmp(fstype, "fuse.branchfs"))
			continue;
		/* the last match: the mount on top */
		snprintf(mi->mp, sizeof(mi->mp), "%s", mp);
		snprintf(mi->store, sizeof(mi->store), "%s",
			 strncmp(src, "branchfs:", 9) ? "" : src + 9);
		{ /* in the super options, after the source */
			const char *so = strchr(dash + 3, ' ');
			const char *u = so ? strchr(so + 1, ' ') : NULL;

			u = u ? strstr(u, ",user_id=") : NULL;
			mi->owner = u ? strtol(u + 9, NULL, 10) : -1;
		}
		mi->dev_major = maj;
		mi->dev_minor = min;
		found = 1;
	}
	fclose(f);
	return found;
}

/*
 * The kernel gives the backing device of every FUSE mount a strict limit
 * of 1% of the system's dirty-page threshold (/sys/class/bdi/MAJ:MIN/
 * max_ratio; the threshold is vm.dirty_ratio of the reclaimable memory,
 * so ~49 MB on a 24 GiB machine).  On a --writeback mount, a writer that
 * goes past it sleeps in balance_dirty_pages: PostgreSQL's checkpointer and
 * the buffer evictions of a branch replaying WAL, which also lose the
 * rewrites the page cache would have absorbed.  Replaying one scale-20
 * crash image (~250 MB of WAL), the branch was ready in 3.3-3.6 s at 10%
 * against 4.7-5.6 s at 1% (3.4-4.0 s at 30%, 3.8-4.0 s at 3%).
 *
 * Dirty pages are not durable at either setting: fsync still writes them
 * to the store and syncs it before it returns.  The limit stays strict
 * and a share of the system's, so memory pressure still throttles.
 */
int fs_bdi_raise(const char *mountpoint, unsigned ratio)
{
	struct fs_mount_info mi;
	char path[96], val[16];
	ssize_t n;
	int fd, ret, len;

	ret = fs_mount_find(mountpoint, false, &mi);
	if (ret <= 0)
		return ret < 0 ? ret : -ENOENT;
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/max_ratio",
		 mi.dev_major, mi.dev_minor);
	/* the device is the mount's own, made by this mount at the
	 * kernel's default: nothing to compare with */
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	len = snprintf(val, sizeof(val), "%u\n", ratio);
	n = write(fd, val, (size_t)len);
	ret = n == len ? 0 : n < 0 ? -errno : -EIO;
	close(fd);
	return ret;
}
