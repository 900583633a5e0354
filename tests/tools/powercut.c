/* SPDX-License-Identifier: MIT */
/*
 * tests/tools/powercut.c - roll a store directory back to what a power cut
 * would have left on disk, from the journal written by powercut_shim.c.
 *
 *   powercut begin STORE BASELINE
 *       record every file below STORE (inode, size) as durable: run it
 *       while nothing uses the store, before mounting it with the shim.
 *   powercut cut [-s SEED] [-m drop|prefix|mixed] [-v] STORE BASELINE JOURNAL GRAVE
 *       after the daemon was killed (SIGKILL) and is gone: put STORE in
 *       the state the disk would be in had the power failed instead.
 *       Prints what it dropped; the last line is "powercut: key=value...".
 *
 * The model (a journaling filesystem such as ext4, data=ordered, taken
 * conservatively: only what POSIX promises after fsync counts):
 *
 *  1. File data.  A file's durable size is the size it had when its last
 *     successful fsync/fdatasync began (by the latest start; baseline size
 *     if none).  Everything written beyond it may be lost: the cut keeps a
 *     prefix of it of random length (a torn tail, as writeback of some
 *     pages would leave) or nothing, per file (-m mixed, the default), or
 *     always nothing (-m drop) or always a random prefix (-m prefix).  The
 *     kept bytes are bytes that were written, never garbage: data=ordered
 *     does not expose unwritten blocks.  sync_file_range() makes nothing
 *     durable.  Bytes below the durable size that were overwritten or cut
 *     off after that sync began get their old contents back (the shim's
 *     pre-images), so overwrites are not durable either.
 *
 *  2. Directory entries.  Creating, renaming, linking or unlinking a name
 *     becomes durable only when its directory is fsynced afterwards; one
 *     fsync of a directory makes every earlier change in it durable, in
 *     order (a journaling filesystem commits them in order, so what
 *     survives is a prefix).  A change that is not durable is undone: a
 *     file created since is removed (whatever it holds), a rename is
 *     reversed (the replaced file comes back), an unlinked file comes back
 *     with its durable contents.  ext4 also commits pending directory
 *     changes with the fsync of any file; this model does not count on
 *     that, which is stricter than ext4 and what POSIX asks of programs.
 *
 *     A directory made since the start is an entry like a file's: if its
 *     creation is not durable, it goes with everything in it.
 *
 *  3. Not modelled (the cut refuses with exit 2, so a test cannot pass on
 *     a case it does not simulate): directories removed below the store,
 *     renames across directories or into/out of the store,
 *     RENAME_EXCHANGE, symlinks, shared writable mmap, fallocate that
 *     shifts data.  RocksDB does none of these.
 *
 * Files and directories that the journal does not know (created after its
 * last record, or by a call the shim does not see, e.g. bind() of a
 * socket) are treated as not durable and removed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "powercut_journal.h"

static bool verbose;

static void die(int code, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "powercut: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n ? n : 1, sz);

	if (!p)
		die(1, "out of memory");
	return p;
}

static void *xrealloc(void *p, size_t sz)
{
	p = realloc(p, sz);
	if (!p)
		die(1, "out of memory");
	return p;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		die(1, "out of memory");
	return p;
}

/* the shim's %-escaping (powercut_journal.h), undone */
static char *unesc(const char *s)
{
	char *out = xcalloc(strlen(s) + 1, 1), *o = out;

	while (*s) {
		unsigned v;

		if (s[0] == '%' && sscanf(s + 1, "%2x", &v) == 1) {
			*o++ = (char)v;
			s += 3;
		} else {
			*o++ = *s++;
		}
	}
	return out;
}

/* ---- model ------------------------------------------------------------------ */

enum op_type { OP_CREATE, OP_RENAME, OP_UNLINK, OP_LINK, OP_MKDIR };

struct op {
	enum op_type type;
	long pos;
	char *name;  /* the new name (C, R, L) or the removed one (U) */
	char *oname; /* R: the old name */
	uint64_t ino;
};

struct entry {
	char *name;
	uint64_t ino;
	char type; /* f, d, o */
};

struct dir {
	char *rel; /* "." is the store itself */
	bool alive; /* its own entry is durable (the store always is) */
	long synced_upto; /* ops before this journal position are durable */
	struct op *ops;
	size_t nops;
	struct entry *want; /* durable entries */
	size_t nwant;
	struct entry *have; /* entries on disk now */
	size_t nhave;
};

struct preimage {
	long pos;
	uint64_t off;
	unsigned char *data;
	size_t len;
};

struct inode {
	uint64_t ino;
	uint64_t durable;  /* durable size */
	long last_begin;   /* journal position of the sync that set it */
	bool known;        /* in the baseline or created in the journal */
	struct preimage *pre;
	size_t npre;
	struct inode *next;
};

#define NHASH 4096
static struct inode *inodes[NHASH];
static struct dir *dirs;
static size_t ndirs;

static struct inode *inode_get(uint64_t ino)
{
	struct inode **pp = &inodes[ino % NHASH], *p;

	for (p = *pp; p; p = p->next)
		if (p->ino == ino)
			return p;
	p = xcalloc(1, sizeof(*p));
	p->ino = ino;
	p->next = *pp;
	*pp = p;
	return p;
}

static struct dir *dir_find(const char *rel)
{
	for (size_t i = 0; i < ndirs; i++)
		if (!strcmp(dirs[i].rel, rel))
			return &dirs[i];
	return NULL;
}

static struct dir *dir_add(const char *rel)
{
	struct dir *d = dir_find(rel);

	if (d)
		return d;
	dirs = xrealloc(dirs, (ndirs + 1) * sizeof(*dirs));
	d = &dirs[ndirs++];
	memset(d, 0, sizeof(*d));
	d->rel = xstrdup(rel);
	return d;
}

/* split "a/b/c" into dir "a/b" and name "c" ("." for a top-level name) */
static struct dir *dir_of(const char *rel, const char **name, long pos)
{
	const char *slash = strrchr(rel, '/');
	char buf[PATH_MAX];
	struct dir *d;

	if (!slash) {
		*name = rel;
		snprintf(buf, sizeof(buf), ".");
	} else {
		*name = slash + 1;
		snprintf(buf, sizeof(buf), "%.*s", (int)(slash - rel), rel);
	}
	d = dir_find(buf);
	if (!d)
		die(2, "journal record %ld: %s is in a directory that did not exist "
		       "at the start (not modelled)", pos, rel);
	return d;
}

static void entry_set(struct entry **v, size_t *n, const char *name,
		      uint64_t ino, char type)
{
	for (size_t i = 0; i < *n; i++) {
		if (!strcmp((*v)[i].name, name)) {
			(*v)[i].ino = ino;
			(*v)[i].type = type;
			return;
		}
	}
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	(*v)[*n].name = xstrdup(name);
	(*v)[*n].ino = ino;
	(*v)[*n].type = type;
	(*n)++;
}

static void entry_del(struct entry *v, size_t *n, const char *name)
{
	for (size_t i = 0; i < *n; i++) {
		if (!strcmp(v[i].name, name)) {
			free(v[i].name);
			v[i] = v[--*n];
			return;
		}
	}
}

static struct entry *entry_find(struct entry *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].name, name))
			return &v[i];
	return NULL;
}

static void op_add(struct dir *d, enum op_type t, long pos, const char *name,
		   const char *oname, uint64_t ino)
{
	struct op *o;

	d->ops = xrealloc(d->ops, (d->nops + 1) * sizeof(*d->ops));
	o = &d->ops[d->nops++];
	o->type = t;
	o->pos = pos;
	o->name = xstrdup(name);
	o->oname = oname ? xstrdup(oname) : NULL;
	o->ino = ino;
}

/* ---- begin -------------------------------------------------------------------- */

static void scan_begin(FILE *out, const char *root, const char *rel)
{
	char path[PATH_MAX], sub[PATH_MAX], e[3 * PATH_MAX];
	struct dirent *de;
	struct stat st;
	DIR *d;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	if (lstat(path, &st) < 0)
		die(1, "%s: %s", path, strerror(errno));
	pcj_esc(e, sizeof(e), rel);
	fprintf(out, "d %llu 0 %s\n", (unsigned long long)st.st_ino, e);
	d = opendir(path);
	if (!d)
		die(1, "%s: %s", path, strerror(errno));
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (!strcmp(rel, "."))
			snprintf(sub, sizeof(sub), "%s", de->d_name);
		else
			snprintf(sub, sizeof(sub), "%s/%s", rel, de->d_name);
		snprintf(path, sizeof(path), "%s/%s", root, sub);
		if (lstat(path, &st) < 0)
			die(1, "%s: %s", path, strerror(errno));
		if (S_ISDIR(st.st_mode)) {
			scan_begin(out, root, sub);
			continue;
		}
		pcj_esc(e, sizeof(e), sub);
		fprintf(out, "%c %llu %lld %s\n", S_ISREG(st.st_mode) ? 'f' : 'o',
			(unsigned long long)st.st_ino,
			S_ISREG(st.st_mode) ? (long long)st.st_size : 0LL, e);
	}
	closedir(d);
}

static int cmd_begin(const char *store, const char *baseline)
{
	FILE *out = fopen(baseline, "we");

	if (!out)
		die(1, "%s: %s", baseline, strerror(errno));
	scan_begin(out, store, ".");
	if (fflush(out) || fsync(fileno(out)) || fclose(out))
		die(1, "%s: %s", baseline, strerror(errno));
	return 0;
}

/* ---- cut ----------------------------------------------------------------------- */

static void load_baseline(const char *path)
{
	char line[4 * PATH_MAX], type, ename[3 * PATH_MAX];
	unsigned long long ino;
	long long size;
	FILE *f = fopen(path, "re");

	if (!f)
		die(1, "%s: %s", path, strerror(errno));
	/* directories first, so that every entry finds its directory */
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%c %llu %lld %s", &type, &ino, &size, ename) != 4)
			die(2, "%s: bad line: %s", path, line);
		if (type == 'd') {
			char *rel = unesc(ename);

			dir_add(rel);
			free(rel);
		}
	}
	rewind(f);
	while (fgets(line, sizeof(line), f)) {
		const char *name;
		struct inode *in;
		struct dir *d;
		char *rel;

		if (sscanf(line, "%c %llu %lld %s", &type, &ino, &size, ename) != 4)
			die(2, "%s: bad line: %s", path, line);
		rel = unesc(ename);
		if (strcmp(rel, ".") != 0) {
			d = dir_of(rel, &name, 0);
			entry_set(&d->want, &d->nwant, name, ino, type);
		}
		if (type != 'd') {
			in = inode_get(ino);
			in->known = true;
			in->durable = size;
		}
		free(rel);
	}
	fclose(f);
}

/* B-record ids -> journal positions */
struct idpos {
	uint64_t key;
	long pos;
};
static struct idpos *ids;
static size_t nids_cap, nids;

static uint64_t id_key(const char *id)
{
	unsigned long pid, seq;

	if (sscanf(id, "%lu.%lu", &pid, &seq) != 2)
		die(2, "bad record id %s", id);
	return ((uint64_t)pid << 40) ^ seq;
}

static void id_put(uint64_t key, long pos)
{
	if (nids * 2 >= nids_cap) {
		struct idpos *old = ids;
		size_t oc = nids_cap;

		nids_cap = oc ? oc * 2 : 4096;
		ids = xcalloc(nids_cap, sizeof(*ids));
		nids = 0;
		for (size_t i = 0; i < oc; i++)
			if (old[i].pos)
				id_put(old[i].key, old[i].pos);
		free(old);
	}
	for (size_t i = key % nids_cap;; i = (i + 1) % nids_cap) {
		if (!ids[i].pos) {
			ids[i].key = key;
			ids[i].pos = pos;
			nids++;
			return;
		}
	}
}

static long id_get(uint64_t key)
{
	if (!nids_cap)
		return 0;
	for (size_t i = key % nids_cap; ids[i].pos; i = (i + 1) % nids_cap)
		if (ids[i].key == key)
			return ids[i].pos;
	return 0;
}

struct jstats {
	long records, creates, renames, unlinks, links, mkdirs, syncs, dirsyncs, pre;
};

static void load_journal(const char *path, struct jstats *js)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	long pos = 0;
	FILE *f = fopen(path, "re");

	if (!f)
		die(1, "%s: %s", path, strerror(errno));
	while ((len = getline(&line, &cap, f)) > 0) {
		char t, id[64], a[3 * PATH_MAX], b[3 * PATH_MAX], kind;
		unsigned long long ino, size, off;
		const char *name, *oname;
		struct dir *d, *d2;
		char *ra, *rb;
		int n;

		if (line[len - 1] != '\n')
			break; /* cut short by the kill: never happened */
		pos++;
		js->records++;
		t = line[0];
		switch (t) {
		case 'C':
		case 'U':
		case 'M':
			if (sscanf(line, "%c %63s %s %llu", &t, id, a, &ino) != 4)
				goto bad;
			ra = unesc(a);
			d = dir_of(ra, &name, pos);
			op_add(d, t == 'C' ? OP_CREATE : t == 'M' ? OP_MKDIR : OP_UNLINK,
			       pos, name, NULL, ino);
			if (t == 'C') {
				inode_get(ino)->known = true;
				js->creates++;
			} else if (t == 'M') {
				dir_add(ra);
				js->mkdirs++;
			} else {
				js->unlinks++;
			}
			free(ra);
			break;
		case 'R':
		case 'L':
			if (sscanf(line, "%c %63s %s %s %llu", &t, id, a, b, &ino) != 5)
				goto bad;
			ra = unesc(a);
			rb = unesc(b);
			d = dir_of(ra, &oname, pos);
			d2 = dir_of(rb, &name, pos);
			if (t == 'R' && d != d2)
				die(2, "journal record %ld: rename across directories "
				       "(%s -> %s) is not modelled", pos, ra, rb);
			op_add(d2, t == 'R' ? OP_RENAME : OP_LINK, pos, name,
			       oname, ino);
			if (t == 'R')
				js->renames++;
			else
				js->links++;
			free(ra);
			free(rb);
			break;
		case 'B':
			if (sscanf(line, "%c %63s", &t, id) != 2)
				goto bad;
			id_put(id_key(id), pos);
			break;
		case 'E': {
			long bpos;

			if (sscanf(line, "%c %63s %c %s %llu %llu", &t, id, &kind, a,
				   &ino, &size) != 6)
				goto bad;
			bpos = id_get(id_key(id));
			if (!bpos)
				die(2, "journal record %ld: sync %s ended but never began",
				    pos, id);
			if (kind == 'd') {
				ra = unesc(a);
				d = dir_find(ra);
				if (!d)
					die(2, "journal record %ld: fsync of directory %s "
					       "that did not exist at the start", pos, ra);
				if (bpos > d->synced_upto)
					d->synced_upto = bpos;
				free(ra);
				js->dirsyncs++;
			} else {
				struct inode *in = inode_get(ino);

				if (bpos > in->last_begin) {
					in->last_begin = bpos;
					in->durable = size;
				}
				js->syncs++;
			}
			break;
		}
		case 'P': {
			struct inode *in;
			struct preimage *p;
			char *hex;
			size_t hl;

			if (sscanf(line, "%c %63s %llu %llu %n", &t, id, &ino, &off, &n) != 4)
				goto bad;
			hex = line + n;
			hl = strcspn(hex, "\n");
			if (hl % 2)
				goto bad;
			in = inode_get(ino);
			in->pre = xrealloc(in->pre, (in->npre + 1) * sizeof(*in->pre));
			p = &in->pre[in->npre++];
			p->pos = pos;
			p->off = off;
			p->len = hl / 2;
			p->data = xcalloc(p->len, 1);
			for (size_t i = 0; i < p->len; i++) {
				unsigned v;

				if (sscanf(hex + 2 * i, "%2x", &v) != 1)
					goto bad;
				p->data[i] = (unsigned char)v;
			}
			js->pre++;
			break;
		}
		case 'X':
			die(2, "journal record %ld: not modelled: %s", pos, line + 2);
		default:
			goto bad;
		}
		continue;
bad:
		die(2, "%s: bad record %ld: %s", path, pos, line);
	}
	free(line);
	fclose(f);
}

/* the durable entries of @d: its baseline plus the synced prefix of its ops */
static void compute_want(struct dir *d)
{
	for (size_t i = 0; i < d->nops; i++) {
		struct op *o = &d->ops[i];

		if (o->pos >= d->synced_upto)
			break;
		switch (o->type) {
		case OP_CREATE:
		case OP_LINK:
			entry_set(&d->want, &d->nwant, o->name, o->ino, 'f');
			break;
		case OP_RENAME: {
			struct entry *e = entry_find(d->want, d->nwant, o->oname);
			char type = e ? e->type : 'f';

			entry_del(d->want, &d->nwant, o->oname);
			entry_set(&d->want, &d->nwant, o->name, o->ino, type);
			break;
		}
		case OP_UNLINK:
			entry_del(d->want, &d->nwant, o->name);
			break;
		case OP_MKDIR:
			entry_set(&d->want, &d->nwant, o->name, o->ino, 'd');
			break;
		}
	}
}

static void scan_have(const char *store, struct dir *d)
{
	char path[PATH_MAX];
	struct dirent *de;
	struct stat st;
	DIR *dh;

	snprintf(path, sizeof(path), "%s/%s", store, d->rel);
	dh = opendir(path);
	if (!dh)
		die(1, "%s: %s", path, strerror(errno));
	while ((de = readdir(dh))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s/%s", store, d->rel, de->d_name);
		if (lstat(path, &st) < 0)
			die(1, "%s: %s", path, strerror(errno));
		entry_set(&d->have, &d->nhave, de->d_name, st.st_ino,
			  S_ISDIR(st.st_mode) ? 'd' : S_ISREG(st.st_mode) ? 'f' : 'o');
	}
	closedir(dh);
}

enum cat { CAT_WAL, CAT_SST, CAT_MANIFEST, CAT_OTHER, NCAT };
static const char *const cat_names[NCAT] = { "wal", "sst", "manifest", "other" };

static enum cat cat_of(const char *name)
{
	size_t n = strlen(name);

	if (n > 4 && !strcmp(name + n - 4, ".log") && strcmp(name, "branchfs.log"))
		return CAT_WAL;
	if (n > 4 && !strcmp(name + n - 4, ".sst"))
		return CAT_SST;
	if (!strncmp(name, "MANIFEST-", 9))
		return CAT_MANIFEST;
	return CAT_OTHER;
}

static uint64_t rng_state;
static uint64_t rng(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

/* a name under which inode @ino is found by every step below */
static void grave_path(char *buf, size_t n, const char *grave, uint64_t ino)
{
	snprintf(buf, n, "%s/%llu", grave, (unsigned long long)ino);
}

static uint64_t rm_bytes;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	if (flag == FTW_DP)
		return rmdir(path);
	if (S_ISREG(st->st_mode))
		rm_bytes += st->st_size;
	return unlink(path);
}

static int cmd_cut(const char *store, const char *baseline, const char *journal,
		   const char *grave, const char *mode)
{
	struct jstats js = { 0 };
	uint64_t dropped[NCAT] = { 0 }, total = 0;
	long removed = 0, restored = 0, truncated = 0, torn = 0, preapplied = 0,
	     extended = 0;
	char path[PATH_MAX], gp[PATH_MAX];

	load_baseline(baseline);
	load_journal(journal, &js);
	for (size_t i = 0; i < ndirs; i++)
		compute_want(&dirs[i]);
	/* parents come before their subdirectories in dirs[] */
	for (size_t i = 0; i < ndirs; i++) {
		struct dir *d = &dirs[i], *p;
		const char *name;

		if (!strcmp(d->rel, ".")) {
			d->alive = true;
		} else {
			struct entry *e;

			p = dir_of(d->rel, &name, 0);
			e = entry_find(p->want, p->nwant, name);
			d->alive = p->alive && e && e->type == 'd';
		}
		if (d->alive)
			scan_have(store, d);
	}

	/* 1. every inode on disk gets a name in the graveyard */
	for (size_t i = 0; i < ndirs; i++) {
		struct dir *d = &dirs[i];

		if (!d->alive)
			continue;
		for (size_t j = 0; j < d->nhave; j++) {
			if (d->have[j].type == 'd')
				continue;
			snprintf(path, sizeof(path), "%s/%s/%s", store, d->rel,
				 d->have[j].name);
			grave_path(gp, sizeof(gp), grave, d->have[j].ino);
			if (link(path, gp) < 0 && errno != EEXIST)
				die(1, "link %s %s: %s", path, gp, strerror(errno));
		}
	}

	/* 2. names that are not durable go, directories with all they hold */
	for (size_t i = 0; i < ndirs; i++) {
		struct dir *d = &dirs[i];

		if (!d->alive)
			continue;
		for (size_t j = 0; j < d->nhave; j++) {
			struct entry *h = &d->have[j], *w;
			struct stat st;

			w = entry_find(d->want, d->nwant, h->name);
			if (w && w->ino == h->ino)
				continue;
			snprintf(path, sizeof(path), "%s/%s/%s", store, d->rel, h->name);
			if (h->type == 'd') {
				rm_bytes = 0;
				if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
					die(1, "remove %s: %s", path, strerror(errno));
				removed++;
				dropped[CAT_OTHER] += rm_bytes;
				total += rm_bytes;
				if (verbose)
					printf("remove directory %s/%s (%llu bytes)\n",
					       d->rel, h->name, (unsigned long long)rm_bytes);
				continue;
			}
			if (lstat(path, &st) < 0)
				die(1, "%s: %s", path, strerror(errno));
			if (unlink(path) < 0)
				die(1, "unlink %s: %s", path, strerror(errno));
			removed++;
			if (verbose)
				printf("remove %s/%s (inode %llu, %lld bytes)%s\n", d->rel,
				       h->name, (unsigned long long)h->ino,
				       (long long)st.st_size, w ? ": not its durable inode" : "");
			/* its bytes count as dropped unless the inode stays
			 * under another (durable) name */
			{
				bool kept = false;

				for (size_t k = 0; k < ndirs && !kept; k++)
					for (size_t m = 0; m < dirs[k].nwant; m++)
						if (dirs[k].want[m].ino == h->ino) {
							kept = true;
							break;
						}
				if (!kept && S_ISREG(st.st_mode)) {
					dropped[cat_of(h->name)] += st.st_size;
					total += st.st_size;
				}
			}
		}
	}

	/* 3. durable names that are missing come back */
	for (size_t i = 0; i < ndirs; i++) {
		struct dir *d = &dirs[i];

		if (!d->alive)
			continue;
		for (size_t j = 0; j < d->nwant; j++) {
			struct entry *w = &d->want[j], *h;

			h = entry_find(d->have, d->nhave, w->name);
			if (w->type == 'd') {
				if (!h || h->ino != w->ino)
					die(1, "durable directory %s/%s is gone", d->rel,
					    w->name);
				continue;
			}
			if (h && h->ino == w->ino)
				continue;
			grave_path(gp, sizeof(gp), grave, w->ino);
			snprintf(path, sizeof(path), "%s/%s/%s", store, d->rel, w->name);
			if (link(gp, path) < 0)
				die(1, "durable file %s (inode %llu) cannot be brought "
				       "back from %s: %s (a process without the shim "
				       "removed it: was the store opened after the "
				       "cut?)", path, (unsigned long long)w->ino,
				       gp, strerror(errno));
			restored++;
			if (verbose)
				printf("restore %s/%s (inode %llu)\n", d->rel, w->name,
				       (unsigned long long)w->ino);
		}
	}

	/* 4. contents: durable size, a torn tail maybe, old bytes back */
	for (size_t i = 0; i < ndirs; i++) {
		struct dir *d = &dirs[i];

		if (!d->alive)
			continue;
		for (size_t j = 0; j < d->nwant; j++) {
			struct entry *w = &d->want[j];
			struct inode *in = inode_get(w->ino);
			uint64_t keep;
			struct stat st;
			bool tear;
			int fd;

			if (w->type != 'f')
				continue;
			snprintf(path, sizeof(path), "%s/%s/%s", store, d->rel, w->name);
			fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
			if (fd < 0 || fstat(fd, &st) < 0)
				die(1, "%s: %s", path, strerror(errno));
			if (!S_ISREG(st.st_mode)) {
				close(fd);
				continue;
			}
			keep = in->durable;
			tear = !strcmp(mode, "prefix") ||
			       (!strcmp(mode, "mixed") && (rng() & 1));
			if ((uint64_t)st.st_size > keep && tear) {
				keep += rng() % ((uint64_t)st.st_size - keep + 1);
				torn++;
			}
			if ((uint64_t)st.st_size > keep) {
				uint64_t n = st.st_size - keep;

				if (ftruncate(fd, keep) < 0)
					die(1, "truncate %s: %s", path, strerror(errno));
				dropped[cat_of(w->name)] += n;
				total += n;
				truncated++;
				if (verbose)
					printf("truncate %s/%s %lld -> %llu (durable %llu)\n",
					       d->rel, w->name, (long long)st.st_size,
					       (unsigned long long)keep,
					       (unsigned long long)in->durable);
			} else if ((uint64_t)st.st_size < in->durable) {
				if (ftruncate(fd, in->durable) < 0)
					die(1, "extend %s: %s", path, strerror(errno));
				extended++;
			}
			/* newest first, so the oldest bytes win */
			for (size_t k = in->npre; k-- > 0;) {
				struct preimage *p = &in->pre[k];
				size_t len = p->len;

				if (p->pos <= in->last_begin || p->off >= in->durable)
					continue;
				if (p->off + len > in->durable)
					len = in->durable - p->off;
				if (pwrite(fd, p->data, len, p->off) != (ssize_t)len)
					die(1, "restore old bytes of %s: %s", path,
					    strerror(errno));
				preapplied++;
			}
			if (fsync(fd) < 0 || close(fd) < 0)
				die(1, "%s: %s", path, strerror(errno));
			in->pre = NULL;
			in->npre = 0; /* once per inode, however many names */
		}
	}

	printf("journal: %ld records; %ld file syncs, %ld directory syncs, "
	       "%ld creates, %ld renames, %ld unlinks, %ld links, %ld mkdirs, "
	       "%ld pre-images\n",
	       js.records, js.syncs, js.dirsyncs, js.creates, js.renames, js.unlinks,
	       js.links, js.mkdirs, js.pre);
	printf("cut: dropped %llu bytes (", (unsigned long long)total);
	for (int c = 0; c < NCAT; c++)
		printf("%s%s %llu", c ? ", " : "", cat_names[c],
		       (unsigned long long)dropped[c]);
	printf("); %ld files removed, %ld names restored, %ld files cut short "
	       "(%ld with a torn tail), %ld extended, %ld pre-images applied\n",
	       removed, restored, truncated, torn, extended, preapplied);
	printf("powercut: dropped=%llu wal=%llu sst=%llu manifest=%llu other=%llu "
	       "removed=%ld restored=%ld truncated=%ld torn=%ld preimages=%ld "
	       "syncs=%ld dirsyncs=%ld\n",
	       (unsigned long long)total, (unsigned long long)dropped[CAT_WAL],
	       (unsigned long long)dropped[CAT_SST],
	       (unsigned long long)dropped[CAT_MANIFEST],
	       (unsigned long long)dropped[CAT_OTHER], removed, restored, truncated,
	       torn, js.pre, js.syncs, js.dirsyncs);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: powercut begin STORE BASELINE\n"
		   "       powercut cut [-s SEED] [-m drop|prefix|mixed] [-v] "
		   "STORE BASELINE JOURNAL GRAVE\n");
}

int main(int argc, char **argv)
{
	const char *mode = "mixed";
	unsigned long long seed = 1;
	int c;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "begin")) {
		if (argc != 4) {
			usage(stderr);
			return 2;
		}
		return cmd_begin(argv[2], argv[3]);
	}
	if (strcmp(argv[1], "cut") != 0) {
		usage(stderr);
		return 2;
	}
	optind = 2;
	while ((c = getopt(argc, argv, "s:m:v")) != -1) {
		switch (c) {
		case 's':
			seed = strtoull(optarg, NULL, 0);
			break;
		case 'm':
			mode = optarg;
			if (strcmp(mode, "drop") && strcmp(mode, "prefix") &&
			    strcmp(mode, "mixed"))
				die(2, "-m takes drop, prefix or mixed");
			break;
		case 'v':
			verbose = true;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind != 4) {
		usage(stderr);
		return 2;
	}
	rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
	return cmd_cut(argv[optind], argv[optind + 1], argv[optind + 2],
		       argv[optind + 3], mode);
}
