/* SPDX-License-Identifier: MIT */
/*
 * snap/cmd.c - branch and snapshot commands as text requests.
 *
 * The same executor serves the control socket of a mounted store (fs/ctl.c)
 * and the CLI on an unmounted one, so both give identical answers.  Replies
 * are lines; a line is either "key value" or a record of tab-separated
 * key=value fields (names never contain tabs or newlines: snap_name_check).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "snap_int.h"

struct out {
	char *buf;
	size_t len, cap;
};

static void outf(struct out *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (o->len + (size_t)n + 1 > o->cap) {
		size_t cap = o->cap ? o->cap : 256;
		char *nb;

		while (cap < o->len + (size_t)n + 1)
			cap *= 2;
		nb = realloc(o->buf, cap);
		if (!nb)
			return;
		o->buf = nb;
		o->cap = cap;
	}
	va_start(ap, fmt);
	vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	o->len += (size_t)n;
}

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/*
 * Delete and reset refuse a branch or snapshot with open files (-EBUSY).
 * But the kernel sends FUSE RELEASE asynchronously: close(2) returns
 * before the daemon has seen it, and a request in flight holds its tree
 * for a moment too.  A script that writes a file on a branch and at once
 * deletes the branch was refused about once in a hundred tries for a file
 * it had closed.  So retry for up to BUSY_WAIT_US before answering -EBUSY:
 * a file that is really open is still refused, only later.
 */
enum { BUSY_WAIT_US = 2 * 1000 * 1000, BUSY_POLL_NS = 5 * 1000 * 1000 };

static bool busy_retry(int ret, uint64_t t0)
{
	struct timespec ts = { .tv_sec = 0, .tv_nsec = BUSY_POLL_NS };

	if (ret != -EBUSY || mono_us() - t0 >= BUSY_WAIT_US)
		return false;
	nanosleep(&ts, NULL);
	return true;
}

/* Display name of record @id as a parent (snap_parent_name), else NULL
 * ("(deleted)"). */
static const char *name_of(struct snap *s, const struct snap_branch_info *v,
			   size_t n, uint32_t id, char *buf, size_t size)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].id == id)
			return v[i].name;
	return snap_parent_name(s, id, buf, size) == 0 ? buf : NULL;
}

static void iso_time(uint64_t ns, char *buf, size_t size)
{
	time_t t = (time_t)(ns / 1000000000u);
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Does the option word @w appear in argv[from..]? */
static bool has_flag(int argc, char **argv, int from, const char *w)
{
	for (int i = from; i < argc; i++)
		if (strcmp(argv[i], w) == 0)
			return true;
	return false;
}

static int list(struct snap *s, bool snapshots, struct out *o)
{
	struct snap_branch_info *b = NULL, *sn = NULL;
	struct snap_du_ent *du = NULL;
	size_t nb, ns, ndu = 0;
	uint64_t total;
	int ret;

	ret = snap_branch_list(s, false, &b, &nb);
	if (ret == 0)
		ret = snap_branch_list(s, true, &sn, &ns);
	if (ret == 0 && !snapshots)
		ret = snap_du(s, false, &du, &ndu, &total);
	if (ret < 0)
		goto out;
	for (size_t i = 0; i < (snapshots ? ns : nb); i++) {
		const struct snap_branch_info *e = snapshots ? &sn[i] : &b[i];
		char pbuf[SNAP_NAME_MAX + 1];
		const char *pn = name_of(s, b, nb, e->parent_id, pbuf, sizeof(pbuf));
		const char *from = NULL, *reset_to = NULL;
		char created[32];

		iso_time(e->created_ns, created, sizeof(created));
		if (snapshots) {
			outf(o, "name=%s\tid=%u\tbranch=%s\tepoch=%llu\tcreated=%s\n",
			     e->name, e->id, pn ? pn : "(deleted)",
			     (unsigned long long)e->parent_epoch, created);
			continue;
		}
		for (size_t j = 0; j < ns; j++) {
			if (sn[j].parent_id == e->parent_id &&
			    sn[j].parent_epoch == e->parent_epoch)
				from = sn[j].name;
			if (sn[j].parent_id == e->base_id &&
			    sn[j].parent_epoch == e->base_epoch)
				reset_to = sn[j].name;
		}
		/* reset --to a snapshot: its contents came from there since */
		if (e->base_id == e->parent_id && e->base_epoch == e->parent_epoch)
			reset_to = "-";
		else if (!reset_to)
			reset_to = "(deleted)";
		{
			uint64_t excl = 0;

			for (size_t j = 0; j < ndu; j++)
				if (du[j].id == e->id)
					excl = du[j].exclusive;
			outf(o, "name=%s\tid=%u\tparent=%s\tsnapshot=%s"
				"\treset_to=%s\tcreated=%s\texclusive_bytes=%llu\n",
			     e->name, e->id,
			     e->parent_id ? (pn ? pn : "(deleted)") : "-",
			     from ? from : "-", reset_to, created,
			     (unsigned long long)excl);
		}
	}
out:
	free(b);
	free(sn);
	free(du);
	return ret;
}

static int du_cmd(struct snap *s, struct out *o)
{
	struct snap_du_ent *du;
	struct snap_stats st;
	uint64_t total;
	size_t n;
	int ret = snap_du(s, true, &du, &n, &total);

	if (ret < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		outf(o, "kind=%s\tname=%s\texclusive_bytes=%llu\tshared_bytes=%llu\n",
		     du[i].is_snapshot ? "snapshot" : "branch", du[i].name,
		     (unsigned long long)du[i].exclusive,
		     (unsigned long long)du[i].shared);
	free(du);
	ret = snap_stats(s, &st);
	if (ret < 0)
		return ret;
	/* other keys than the rows above: the CLI prints it below the table */
	outf(o, "kind=total\tstored_bytes=%llu\tlogical_bytes=%llu"
		"\tgc_pending=%llu\n",
	     (unsigned long long)st.stored_bytes,
	     (unsigned long long)st.logical_bytes,
	     (unsigned long long)st.gc_pending);
	return 0;
}

/* ---- PGDATA checks ------------------------------------------------------ */

static void pg_links(struct snap_tree *t, uint64_t dir, const char *path,
		     struct out *o)
{
	struct snap_attr a;
	char target[4096];

	if (snap_lookup(t, dir, "pg_wal", &a) == 0 && S_ISLNK(a.mode) &&
	    snap_readlink(t, a.ino, target, sizeof(target)) >= 0)
		outf(o, "warning=%s/pg_wal is a symlink to %s: WAL outside the "
			"branch is not part of its snapshots, which are then not "
			"crash-consistent\n", path, target);
	if (snap_lookup(t, dir, "pg_tblspc", &a) == 0 && S_ISDIR(a.mode)) {
		struct snap_dirent *e;
		size_t n;

		if (snap_readdir(t, a.ino, &e, &n) < 0)
			return;
		for (size_t i = 0; i < n; i++) {
			struct snap_attr la;

			if (e[i].type != S_IFLNK ||
			    snap_getattr(t, e[i].ino, &la) < 0 ||
			    snap_readlink(t, la.ino, target, sizeof(target)) < 0)
				continue;
			outf(o, "warning=%s/pg_tblspc/%s is a symlink to %s: that "
				"tablespace is outside the branch and is shared, "
				"not snapshotted\n", path, e[i].name, target);
		}
		free(e);
	}
}

/* Look for PGDATA directories (holding PG_VERSION) up to depth 3. */
static void pg_scan(struct snap_tree *t, uint64_t dir, const char *path,
		    int depth, int *budget, struct out *o)
{
	struct snap_dirent *e;
	struct snap_attr a;
	size_t n;

	if (--*budget < 0)
		return;
	if (snap_lookup(t, dir, "PG_VERSION", &a) == 0) {
		pg_links(t, dir, path, o);
		return;
	}
	if (depth == 0 || snap_readdir(t, dir, &e, &n) < 0)
		return;
	for (size_t i = 0; i < n && *budget > 0; i++) {
		char sub[4096];

		if (e[i].type != S_IFDIR)
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, e[i].name);
		pg_scan(t, e[i].ino, sub, depth - 1, budget, o);
	}
	free(e);
}

/* Scan tree @id (a new branch or snapshot), naming paths from @label. */
static int pgcheck(struct snap *s, uint32_t id, const char *label,
		   struct out *o)
{
	struct snap_tree *t;
	int budget = 2000, ret = snap_tree_get(s, id, &t);

	if (ret < 0)
		return ret;
	pg_scan(t, SNAP_ROOT_INO, label, 3, &budget, o);
	snap_tree_put(t);
	return 0;
}

/*
 * Reply of a successful snapshot-create / branch-create: the new id, the
 * time it took, then "warning=" lines for PGDATA symlinks that leave the
 * new tree @id, which holds what its source @src held (a branch made from
 * a snapshot shares that WAL or tablespace too).  The check runs after the
 * creation, so it is not in elapsed_us.
 */
static void created(struct snap *s, struct out *o, uint32_t id, uint64_t t0,
		    const char *src)
{
	outf(o, "id %u\nelapsed_us %llu\n", id,
	     (unsigned long long)(mono_us() - t0));
	pgcheck(s, id, src, o);
}

/* ---- dispatch ------------------------------------------------------------ */

/* @name with control characters and '\\' shown as \xNN (one line). */
static const char *printable(const char *name, char *buf, size_t size)
{
	size_t k = 0;

	const unsigned char *p = (const unsigned char *)name;
	size_t left = strlen(name), len;

	while (*p && k + 5 < size) {
		len = utf8_char(p, left);
		if (*p < 0x20 || *p == 0x7f || *p == '\\' || len == 0) {
			k += (size_t)snprintf(buf + k, size - k, "\\x%02x", *p);
			len = 1;
		} else if (k + len + 5 < size) {
			memcpy(buf + k, p, len);
			k += len;
		} else {
			break;
		}
		p += len;
		left -= len;
	}
	buf[k] = 0;
	return buf;
}

static void reply_err(struct out *o, int ret, const char *what,
		      const char *rawname)
{
	char nb[4 * SNAP_NAME_MAX + 64];
	const char *name = printable(rawname, nb, sizeof(nb));

	switch (ret) {
	case -ENOENT:
		outf(o, "%s '%s' does not exist\n", what, name);
		break;
	case -EEXIST:
		outf(o, "the name '%s' is already taken by a branch or snapshot\n",
		     name);
		break;
	case -EINVAL:
		outf(o, "invalid name '%s' (names must be valid UTF-8 and may "
			"not be empty, start with '.' or '-', contain '/' or "
			"control characters, or be '(deleted)')\n",
		     name);
		break;
	case -ENAMETOOLONG:
		outf(o, "name too long (at most %u bytes)\n", SNAP_NAME_MAX);
		break;
	case -EBUSY:
		outf(o, "%s '%s' has open files (stop the postgres using it, or "
			"use --force)\n", what, name);
		break;
	case -EISDIR:
		outf(o, "'%s' is a snapshot, not a branch\n", name);
		break;
	case -ENOTDIR:
		outf(o, "'%s' is a branch, not a snapshot\n", name);
		break;
	default:
		outf(o, "%s\n", strerror(-ret));
	}
}

/*
 * Deleting and collecting are how space comes back, so on a full disk
 * (-ENOSPC) they may spend the store's reserve and wait for RocksDB to
 * recover from the full disk (it checks the free space every 5 s): true
 * while the caller should try again.  Without a reserve to spend (an
 * earlier command spent it) they wait too when the disk has the room a
 * reserve would have made: someone freed space, and RocksDB refuses writes
 * until its next check.
 */
#define FULL_DISK_WAIT_S 30
static bool full_disk_retry(struct snap *s, int ret, int *tries)
{
	if (ret != -ENOSPC || *tries >= FULL_DISK_WAIT_S)
		return false;
	if (*tries == 0 &&
	    !snap_reserve_release(s, "disk full, for a deletion or gc") &&
	    !snap_disk_has(s, SNAP_RESERVE_BYTES))
		return false; /* no reserve, no room: nothing to wait for */
	(*tries)++;
	sleep(1);
	return true;
}

/* A delete that failed with ENOSPC only in its final sync is already
 * published: the retry then finds nothing to delete.  That is success once
 * a sync makes it durable, which may wait for RocksDB's recovery too. */
static int deleted_before_retry(struct snap *s, int ret, int *tries)
{
	if (ret != -ENOENT || *tries == 0)
		return ret;
	do
		ret = snap_sync(s);
	while (full_disk_retry(s, ret, tries));
	return ret;
}

/* "X-delete NAME [--force]": anything else is malformed (a request with
 * stray words must not delete what its first word names). */
static bool delete_args(int argc, char **argv)
{
	return argc == 2 || (argc == 3 && !strcmp(argv[2], "--force"));
}

int snap_command(struct snap *s, int argc, char **argv, char **reply)
{
	struct out o = { 0 };
	const char *cmd = argc > 0 ? argv[0] : "";
	bool force = has_flag(argc, argv, 1, "--force");
	uint64_t t0 = mono_us();
	uint32_t id = 0;
	int ret = -EINVAL, tries = 0;

	if (!strcmp(cmd, "snapshot-create") && argc == 3) {
		ret = snap_snapshot_create(s, argv[1], argv[2], &id);
		if (ret == -ENOENT || ret == -EISDIR)
			reply_err(&o, ret, "branch", argv[1]);
		else if (ret < 0)
			reply_err(&o, ret, "snapshot", argv[2]);
		else
			created(s, &o, id, t0, argv[1]);
	} else if (!strcmp(cmd, "snapshot-list") && argc == 1) {
		ret = list(s, true, &o);
	} else if (!strcmp(cmd, "snapshot-delete") && delete_args(argc, argv)) {
		do
			ret = snap_snapshot_delete(s, argv[1], force);
		while (full_disk_retry(s, ret, &tries) || busy_retry(ret, t0));
		ret = deleted_before_retry(s, ret, &tries);
		if (ret < 0)
			reply_err(&o, ret, "snapshot", argv[1]);
	} else if (!strcmp(cmd, "branch-create") && (argc == 2 || argc == 3)) {
		ret = snap_branch_create(s, argv[1], argc == 3 ? argv[2] : NULL,
					 &id);
		if (ret == -ENOENT && argc == 2) /* main renamed or deleted */
			outf(&o, "branch 'main', where a branch is made from "
				 "by default, does not exist: give --from "
				 "BRANCH|SNAPSHOT\n");
		else if (ret == -ENOENT)
			reply_err(&o, ret, "branch or snapshot", argv[2]);
		else if (ret < 0)
			reply_err(&o, ret, "branch", argv[1]);
		else
			created(s, &o, id, t0, argc == 3 ? argv[2] : "main");
	} else if (!strcmp(cmd, "branch-list") && argc == 1) {
		ret = list(s, false, &o);
	} else if (!strcmp(cmd, "branch-delete") && delete_args(argc, argv)) {
		do
			ret = snap_branch_delete(s, argv[1], force);
		while (full_disk_retry(s, ret, &tries) || busy_retry(ret, t0));
		ret = deleted_before_retry(s, ret, &tries);
		if (ret < 0)
			reply_err(&o, ret, "branch", argv[1]);
	} else if (!strcmp(cmd, "branch-reset") && argc >= 2) {
		const char *to = argc >= 3 && strcmp(argv[2], "--force") ? argv[2]
									  : NULL;

		do
			ret = snap_branch_reset(s, argv[1], to, force, &id);
		while (busy_retry(ret, t0));
		if (ret == -EINVAL && !to)
			outf(&o, "branch '%s' has no branch point; give --to "
				 "SNAPSHOT\n", argv[1]);
		else if ((ret == -ENOENT || ret == -ENOTDIR) && to &&
			 snap_branch_find(s, argv[1], &id) == 0)
			reply_err(&o, ret, "snapshot", to);
		else if (ret < 0)
			reply_err(&o, ret, "branch", argv[1]);
		else
			outf(&o, "id %u\n", id);
	} else if (!strcmp(cmd, "branch-rename") &&
		   (argc == 3 || (argc == 4 && !strcmp(argv[3], "--force")))) {
		do
			ret = snap_branch_rename(s, argv[1], argv[2], force);
		while (busy_retry(ret, t0));
		if (ret == -EBUSY)
			outf(&o, "'%s' has open files (stop the postgres using "
				 "it, or use --force)\n", argv[1]);
		else if (ret == -ENOENT)
			reply_err(&o, ret, "branch or snapshot", argv[1]);
		else if (ret < 0)
			reply_err(&o, ret, "branch", argv[2]);
	} else if (!strcmp(cmd, "du") && argc == 1) {
		ret = du_cmd(s, &o);
	} else if (!strcmp(cmd, "gc") && argc == 1) {
		do {
			ret = snap_prune(s);
			if (ret == 0)
				ret = snap_gc(s, 0);
			if (ret == 0)
				ret = snap_sync(s);
		} while (full_disk_retry(s, ret, &tries));
		/* Deleted keys and blocks leave the disk only when RocksDB
		 * compacts the files holding them: do it now, with the
		 * reserve's room if the disk is nearly full. */
		if (ret == 0) {
			if (snap_disk_below(s, SNAP_DISK_LOW))
				snap_reserve_release(s, "disk nearly full, for gc");
			ret = snap_compact(s);
			snap_reserve_take(s);
		}
		else if (ret == -ENOSPC)
			outf(&o, "gc: no space left on device\n");
	} else if (!strcmp(cmd, "pgcheck") && argc == 2) {
		uint32_t bid;

		ret = snap_branch_find(s, argv[1], &bid);
		if (ret == 0)
			ret = pgcheck(s, bid, argv[1], &o);
		if (ret < 0)
			reply_err(&o, ret, "branch", argv[1]);
	} else {
		char nb[4 * SNAP_NAME_MAX + 64];

		outf(&o, "unknown or malformed request '%s'\n",
		     printable(cmd, nb, sizeof(nb)));
		ret = -EINVAL;
	}
	if (!o.buf)
		outf(&o, "%s", "");
	*reply = o.buf;
	return ret;
}
