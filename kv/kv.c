/* SPDX-License-Identifier: MIT */
/*
 * kv/kv.c - RocksDB wrapper: open/close, point reads, write batches,
 * group-committed syncs, iterators, logging, compaction.
 *
 * Content-addressed blocks, GC and statistics live in kv/block.c, the
 * refcount merge operator in kv/merge.c, fault injection in kv/fault.c.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "kv_int.h"

static const char *const cf_names[KV_CF_COUNT] = {
	[KV_CF_SYS] = "default",
	[KV_CF_META] = "meta",
	[KV_CF_BLOCKS] = "blocks",
	[KV_CF_REFS] = "refs",
};

/* ---- logging and error translation ----------------------------------- */

/*
 * Databases opened through another path than their own (kv_open_named:
 * /proc/self/fd/N/db): RocksDB's messages name that path, and kv_log puts
 * the database's own name in its place.
 */
static struct {
	char from[64];
	char to[PATH_MAX];
} aliases[8];
static pthread_mutex_t alias_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool aliases_used;

static void alias_set(const char *from, const char *to)
{
	pthread_mutex_lock(&alias_lock);
	for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++) {
		if (to && !aliases[i].from[0]) {
			snprintf(aliases[i].from, sizeof(aliases[i].from), "%s", from);
			snprintf(aliases[i].to, sizeof(aliases[i].to), "%s", to);
			atomic_store(&aliases_used, true);
			break;
		}
		if (!to && !strcmp(aliases[i].from, from))
			aliases[i].from[0] = '\0';
	}
	pthread_mutex_unlock(&alias_lock);
}

/* Copy @in to @out (@size bytes) with the aliases replaced. */
static void alias_apply(const char *in, char *out, size_t size)
{
	size_t o = 0;

	pthread_mutex_lock(&alias_lock);
	while (*in && o + 1 < size) {
		size_t i, n = sizeof(aliases) / sizeof(aliases[0]);

		for (i = 0; i < n; i++) {
			size_t fl = strlen(aliases[i].from);

			if (fl && !strncmp(in, aliases[i].from, fl)) {
				o += (size_t)snprintf(out + o, size - o, "%s",
						      aliases[i].to);
				in += fl;
				break;
			}
		}
		if (o >= size) {
			o = size - 1;
			break;
		}
		if (i == n)
			out[o++] = *in++;
	}
	out[o] = '\0';
	pthread_mutex_unlock(&alias_lock);
}

void kv_log(const char *fmt, ...)
{
	char buf[2048];
	int saved_errno = errno;
	struct tm tm;
	time_t now = time(NULL);
	size_t n, room;
	ssize_t wr;
	va_list ap;
	int m;

	localtime_r(&now, &tm);
	n = strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S branchfs: ", &tm);
	room = sizeof(buf) - n - 1; /* keep one byte for the newline */
	va_start(ap, fmt);
	if (aliases_used) {
		char tmp[2048];

		vsnprintf(tmp, sizeof(tmp), fmt, ap);
		alias_apply(tmp, buf + n, room);
		m = (int)strlen(buf + n);
	} else {
		m = vsnprintf(buf + n, room, fmt, ap);
	}
	va_end(ap);
	if (m < 0)
		m = 0;
	if ((size_t)m >= room)
		m = (int)room - 1; /* truncated */
	n += (size_t)m;
	if (n == 0 || buf[n - 1] != '\n')
		buf[n++] = '\n';
	/* One write() so that lines from several threads never interleave. */
	wr = write(STDERR_FILENO, buf, n);
	(void)wr;
	errno = saved_errno;
}

int kv_rocks_errno(const char *what, char *err)
{
	int ret = strstr(err, "No space left") ? -ENOSPC : -EIO;

	kv_log("rocksdb %s: %s", what, err);
	rocksdb_free(err);
	return ret;
}

/* kv_open's finer translation: the caller wants to know whether the
 * database is missing, exists, is busy or is not one of ours. */
static int kv_open_errno(const char *dbdir, char *err)
{
	int ret;

	if (strstr(err, "No space left"))
		ret = -ENOSPC;
	else if (strstr(err, "error_if_exists"))
		ret = -EEXIST;
	else if (strstr(err, "does not exist") ||
		 strstr(err, "No such file or directory"))
		ret = -ENOENT;
	else if (strstr(err, "lock") &&
		 (strstr(err, "Resource temporarily unavailable") ||
		  strstr(err, "lock hold by current process")))
		ret = -EBUSY;
	else if (strstr(err, "Permission denied"))
		ret = -EACCES;
	else if (!strncmp(err, "Invalid argument", 16))
		ret = -EINVAL;
	else
		ret = -EIO;
	kv_log("rocksdb open %s: %s", dbdir, err);
	rocksdb_free(err);
	return ret;
}

/* ---- options ---------------------------------------------------------- */

#define KV_MIB ((size_t)1 << 20)
/* an open-file limit from which every table file stays open: ~16 TB of
 * store at RocksDB's 32-64 MiB files (kv_max_open_files) */
#define KV_NOFILE_UNLIMITED ((rlim_t)1 << 18)

struct cf_tuning {
	size_t write_buffer;
	int compression;
	bool bloom;
	double mem_bloom; /* memtable bloom size, fraction of write_buffer */
};

/*
 * Memory: one 64 MiB LRU block cache shared by every family; memtables
 * capped at 96 MiB in total (db_write_buffer_size) with at most two per
 * family; index and filter blocks stay in the table readers.
 *
 * Point reads that miss are the common case: the exact-key fast path
 * (level0_exact) on a branch's first touch of an object, the "is this
 * block stored?" lookup of every new block.  A memtable bloom filter on the
 * whole key answers most of them without searching the skip lists: in a
 * branch start replaying 112 MB of WAL, memtable point reads fell from
 * 5.5% to 1.1% of the daemon's CPU samples (and all point reads from 23%
 * to 16%).  Sizes aim at >= 16 bits per key at the family's typical entry
 * size (META ~100 bytes, BLOCKS ~3 KiB, REFS ~50): ~1 MiB per set of
 * memtables, at most 2 MiB with the immutable ones.
 */
static const struct cf_tuning cf_tuning[KV_CF_COUNT] = {
	[KV_CF_SYS] = { 4 * KV_MIB, rocksdb_lz4_compression, false, 0 },
	[KV_CF_META] = { 32 * KV_MIB, rocksdb_lz4_compression, true, 0.02 },
	/* values are zstd frames or incompressible raw blocks */
	[KV_CF_BLOCKS] = { 32 * KV_MIB, rocksdb_no_compression, true, 0.001 },
	/* 16-byte hashes and counts: nothing to gain */
	[KV_CF_REFS] = { 8 * KV_MIB, rocksdb_no_compression, true, 0.04 },
};

static void kv_options_destroy(struct kv *kv)
{
	for (int i = 0; i < KV_CF_COUNT; i++) {
		if (kv->cf_opts[i])
			rocksdb_options_destroy(kv->cf_opts[i]);
		kv->cf_opts[i] = NULL;
	}
	if (kv->db_opts)
		rocksdb_options_destroy(kv->db_opts);
	kv->db_opts = NULL;
	if (kv->ropts)
		rocksdb_readoptions_destroy(kv->ropts);
	kv->ropts = NULL;
	if (kv->wopts)
		rocksdb_writeoptions_destroy(kv->wopts);
	kv->wopts = NULL;
	if (kv->wopts_sync)
		rocksdb_writeoptions_destroy(kv->wopts_sync);
	kv->wopts_sync = NULL;
	if (kv->cache)
		rocksdb_cache_destroy(kv->cache);
	kv->cache = NULL;
}

/*
 * RocksDB's own info LOG (STORE/db/LOG) gets its header (version, options)
 * at open and, at run time, only FATAL lines (in 7.8: from compaction
 * after a failed internal check, and from features branchfs does not use).
 * RocksDB 7.8 aborts the process on the next write to a LOG that a full
 * disk made fail once (WritableFileWriter's Append, Flush and Sync of a
 * writer that has seen an error end in an assertion), and a full disk
 * makes it log at once (the background error, its recovery): a store whose
 * disk filled up, from outside or through the mount, killed the daemon
 * mid-write or at umount.  What it would have logged at run time (flushes,
 * compactions, their errors) is not needed to serve or recover a store;
 * errors that reach branchfs go to branchfs.log (as far as the disk has
 * room for them).  For debugging, BRANCHFS_ROCKSDB_LOG=info (or debug,
 * warn, error) restores more, at the price of that abort on a full disk.
 */
static int kv_info_log_level(void)
{
	static const char *const names[] = { "debug", "info", "warn", "error" };
	const char *v = getenv("BRANCHFS_ROCKSDB_LOG");

	for (int i = 0; v && i < (int)(sizeof(names) / sizeof(names[0])); i++)
		if (strcmp(v, names[i]) == 0)
			return i; /* rocksdb::InfoLogLevel: DEBUG 0 ... ERROR 3 */
	return 4; /* FATAL */
}

/*
 * RocksDB's max_open_files: every table file stays open (-1) when the
 * process may open that many; else half the limit (RocksDB closes the
 * least recently used beyond it), the other half left to the WAL, the
 * files being written by flushes and compactions, /dev/fuse, the control
 * socket and its clients.  RocksDB raises anything below 20 to 20.
 */
static int kv_max_open_files(void)
{
	struct rlimit r;

	if (getrlimit(RLIMIT_NOFILE, &r) < 0 || r.rlim_cur == RLIM_INFINITY ||
	    r.rlim_cur >= KV_NOFILE_UNLIMITED)
		return -1;
	return (int)(r.rlim_cur / 2);
}

static void kv_options_init(struct kv *kv, enum kv_open_flags flags)
{
	rocksdb_options_t *o;
	bool create = flags & KV_CREATE;

	kv->cache = rocksdb_cache_create_lru(64 * KV_MIB);

	o = kv->db_opts = rocksdb_options_create();
	rocksdb_options_set_create_if_missing(o, create);
	rocksdb_options_set_error_if_exists(o, create);
	rocksdb_options_set_create_missing_column_families(o, create);
	rocksdb_options_set_max_background_jobs(o, 2);
	rocksdb_options_set_db_write_buffer_size(o, 96 * KV_MIB);
	/* Flush lightly written families so that old WAL files go away. */
	rocksdb_options_set_max_total_wal_size(o, 128 * KV_MIB);
	rocksdb_options_set_bytes_per_sync(o, KV_MIB);
	rocksdb_options_set_keep_log_file_num(o, 4);
	rocksdb_options_set_max_log_file_size(o, 8 * KV_MIB);
	/* (default 4 MiB) less to find on a full disk: kv_open_room */
	rocksdb_options_set_manifest_preallocation_size(o, KV_MIB);
	rocksdb_options_set_info_log_level(o, kv_info_log_level());
	rocksdb_options_set_max_open_files(o, kv_max_open_files());

	for (int i = 0; i < KV_CF_COUNT; i++) {
		const struct cf_tuning *t = &cf_tuning[i];
		rocksdb_block_based_table_options_t *bbto;

		o = kv->cf_opts[i] = rocksdb_options_create();
		rocksdb_options_set_write_buffer_size(o, t->write_buffer);
		rocksdb_options_set_max_write_buffer_number(o, 2);
		rocksdb_options_set_compression(o, t->compression);
		rocksdb_options_set_level_compaction_dynamic_level_bytes(o, 1);
		if (flags & KV_NO_AUTO_COMPACT)
			rocksdb_options_set_disable_auto_compactions(o, 1);
		if (t->mem_bloom > 0) {
			rocksdb_options_set_memtable_prefix_bloom_size_ratio(
				o, t->mem_bloom);
			rocksdb_options_set_memtable_whole_key_filtering(o, 1);
		}

		bbto = rocksdb_block_based_options_create();
		rocksdb_block_based_options_set_block_cache(bbto, kv->cache);
		if (t->bloom) /* the options take ownership of the policy */
			rocksdb_block_based_options_set_filter_policy(
				bbto, rocksdb_filterpolicy_create_bloom_full(10));
		/* The table factory copies the table options. */
		rocksdb_options_set_block_based_table_factory(o, bbto);
		rocksdb_block_based_options_destroy(bbto);
	}
	/* The options own the operator from here on. */
	rocksdb_options_set_merge_operator(kv->cf_opts[KV_CF_REFS],
					   kv_refcount_merge_operator());

	kv->ropts = rocksdb_readoptions_create();
	kv->wopts = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(kv->wopts, 0);
	kv->wopts_sync = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(kv->wopts_sync, 1);
}

/* ---- open / close ----------------------------------------------------- */

static int kv_format_write(struct kv *kv)
{
	rocksdb_writeoptions_t *wo;
	uint8_t v[4];
	char *err = NULL;

	bfs_put_u32(v, BFS_FORMAT_VERSION);
	wo = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(wo, 1);
	rocksdb_put_cf(kv->db, wo, kv->cf[KV_CF_SYS], BFS_KEY_FORMAT,
		       strlen(BFS_KEY_FORMAT), (const char *)v, sizeof(v),
		       &err);
	rocksdb_writeoptions_destroy(wo);
	return err ? kv_rocks_errno("write format", err) : 0;
}

static int kv_format_check(struct kv *kv)
{
	uint8_t v[4];
	size_t vlen;
	int ret;

	ret = kv_get_internal(kv, KV_CF_SYS, BFS_KEY_FORMAT,
			      strlen(BFS_KEY_FORMAT), v, sizeof(v), &vlen);
	if (ret == -ENOENT) {
		kv_log("%s: no format version recorded: not a branchfs store",
		       kv->dbdir);
		return -EINVAL;
	}
	if (ret)
		return ret;
	if (vlen != sizeof(v) || bfs_get_u32(v) != BFS_FORMAT_VERSION) {
		kv_log("%s: unsupported store format (%zu bytes, version %u; "
		       "this build knows %u)",
		       kv->dbdir, vlen, vlen == sizeof(v) ? bfs_get_u32(v) : 0,
		       BFS_FORMAT_VERSION);
		return -EPROTONOSUPPORT;
	}
	return 0;
}

/*
 * RocksDB creates the directory and an info LOG in it even when it then
 * refuses to open a database that is not there: look before opening.
 */
static int kv_db_present(const char *dbdir)
{
	char *current;
	struct stat st;
	int ret = 0;

	if (asprintf(&current, "%s/CURRENT", dbdir) < 0)
		return -ENOMEM;
	if (stat(current, &st)) {
		ret = -errno;
		if (ret == -ENOTDIR)
			ret = -ENOENT;
		kv_log("%s: not a database: %s", dbdir, strerror(-ret));
	}
	free(current);
	return ret;
}

int kv_open(const char *dbdir, enum kv_open_flags flags, struct kv **out)
{
	return kv_open_named(dbdir, NULL, flags, out);
}

int kv_open_named(const char *dbdir, const char *store,
		  enum kv_open_flags flags, struct kv **out)
{
	const rocksdb_options_t *cfo[KV_CF_COUNT];
	struct kv *kv;
	char *err = NULL;
	int ret;

	if (!dbdir || !out || ((flags & KV_CREATE) && (flags & KV_READONLY)))
		return -EINVAL;
	/* from here on kv_log names @store/db where @dbdir would be */
	if (store) {
		char *name;

		if (asprintf(&name, "%s/db", store) < 0)
			return -ENOMEM;
		alias_set(dbdir, name);
		free(name);
	}
	ret = -ENOMEM;
	kv = calloc(1, sizeof(*kv));
	if (!kv)
		goto out_alias;
	kv->aliased = store != NULL;
	kv->readonly = flags & KV_READONLY;
	kv->dbdir = strdup(dbdir);
	if (!kv->dbdir)
		goto out_free_kv;
	if (!(flags & KV_CREATE)) {
		ret = kv_db_present(dbdir);
		if (ret)
			goto out_free_dbdir;
	}
	{
		/* Writer-preferring, so the collector is not starved by a
		 * steady stream of writers.  Rule (snap/ keeps it): a thread
		 * never holds the lock shared twice - one open batch with
		 * block operations, or one kv_read_begin(), at a time. */
		pthread_rwlockattr_t a;

		pthread_rwlockattr_init(&a);
		pthread_rwlockattr_setkind_np(
			&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		ret = -pthread_rwlock_init(&kv->block_lock, &a);
		pthread_rwlockattr_destroy(&a);
	}
	if (ret)
		goto out_free_dbdir;
	kv->wal_low_room = KV_WAL_LOW_ROOM;
	atomic_init(&kv->unrefs, 0);
	atomic_init(&kv->gc_clean_at, KV_GC_UNKNOWN);
	ret = -pthread_mutex_init(&kv->sync_lock, NULL);
	if (ret)
		goto out_destroy_block_lock;
	ret = -pthread_cond_init(&kv->sync_cond, NULL);
	if (ret)
		goto out_destroy_sync_lock;

	/* Errors after here must destroy the options. */

	kv_options_init(kv, flags);
	for (int i = 0; i < KV_CF_COUNT; i++)
		cfo[i] = kv->cf_opts[i];
	if (kv->readonly)
		kv->db = rocksdb_open_for_read_only_column_families(
			kv->db_opts, dbdir, KV_CF_COUNT, cf_names, cfo, kv->cf,
			0, &err);
	else
		kv->db = rocksdb_open_column_families(kv->db_opts, dbdir,
						      KV_CF_COUNT, cf_names,
						      cfo, kv->cf, &err);
	if (err) {
		ret = kv_open_errno(dbdir, err);
		goto out_destroy_options;
	}

	ret = (flags & KV_CREATE) ? kv_format_write(kv) : kv_format_check(kv);
	if (ret)
		goto out_close_db;
	*out = kv;
	return 0;

out_close_db:
	for (int i = 0; i < KV_CF_COUNT; i++)
		rocksdb_column_family_handle_destroy(kv->cf[i]);
	rocksdb_close(kv->db);
out_destroy_options:
	kv_options_destroy(kv);
	pthread_cond_destroy(&kv->sync_cond);
out_destroy_sync_lock:
	pthread_mutex_destroy(&kv->sync_lock);
out_destroy_block_lock:
	pthread_rwlock_destroy(&kv->block_lock);
out_free_dbdir:
	free(kv->dbdir);
out_free_kv:
	free(kv);
out_alias:
	if (store)
		alias_set(dbdir, NULL);
	return ret;
}

static int wal_err_get(struct kv *kv);
static uint64_t open_slack(void);
static int disk_avail(const char *path, uint64_t *avail);

/*
 * Whether flushing the memtables at close has room: their size in new
 * table files plus what a new WAL takes (open_slack), and RocksDB does not
 * stop writes (a flush would wait for that; a flush that would only slow
 * writes down waits too, until a compaction ends or fails: the C API
 * cannot set allow_write_stall).  A flush on a full disk is not tried: it
 * would fail (it used to abort the process, through the info LOG: see
 * kv_info_log_level), and the WAL keeps the data for the next open.
 */
static bool close_flush_room(struct kv *kv)
{
	uint64_t mem = 0, v, avail = 0;

	if (rocksdb_property_int(kv->db, "rocksdb.is-write-stopped", &v) == 0 &&
	    v)
		return false;
	for (int i = 0; i < KV_CF_COUNT; i++)
		if (rocksdb_property_int_cf(kv->db, kv->cf[i],
					    "rocksdb.cur-size-all-mem-tables",
					    &v) == 0)
			mem += v;
	return disk_avail(kv->dbdir, &avail) == 0 &&
	       avail >= mem + open_slack();
}

void kv_close(struct kv *kv)
{
	if (!kv)
		return;
	/* Not after a failed write or WAL sync: flushing switches the WAL,
	 * and RocksDB 7.8 asserts on a WAL writer that holds an error.  Not
	 * without room for it either (see close_flush_room). */
	if (!kv->readonly && !atomic_load(&kv->poisoned) && !wal_err_get(kv) &&
	    close_flush_room(kv)) {
		rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();

		rocksdb_flushoptions_set_wait(fo, 1);
		for (int i = 0; i < KV_CF_COUNT; i++) {
			char *err = NULL;

			rocksdb_flush_cf(kv->db, fo, kv->cf[i], &err);
			if (err) {
				/* the WAL still has it: the next open replays */
				kv_log("rocksdb flush at close: %s", err);
				free(err);
				break;
			}
		}
		rocksdb_flushoptions_destroy(fo);
	}
	for (int i = 0; i < KV_CF_COUNT; i++)
		rocksdb_column_family_handle_destroy(kv->cf[i]);
	rocksdb_close(kv->db);
	kv_options_destroy(kv);
	pthread_cond_destroy(&kv->sync_cond);
	pthread_mutex_destroy(&kv->sync_lock);
	pthread_rwlock_destroy(&kv->block_lock);
	if (kv->aliased)
		alias_set(kv->dbdir, NULL);
	free(kv->dbdir);
	free(kv);
}

/*
 * Room RocksDB takes when it opens a database for writing, besides table
 * files for the WAL it replays: a new WAL, which it preallocates (fallocate)
 * in blocks of 1.1 x the largest write buffer, and ext4 keeps what a
 * fallocate that failed half-way got; the MANIFEST, preallocated 1 MiB
 * (kv_options_init); the info LOG and an OPTIONS file; a margin.
 */
static uint64_t open_slack(void)
{
	size_t wb = 0;

	for (int i = 0; i < KV_CF_COUNT; i++)
		if (cf_tuning[i].write_buffer > wb)
			wb = cf_tuning[i].write_buffer;
	return wb + wb / 10 + KV_MIB + 4 * KV_MIB;
}

/* Free bytes on @path's filesystem for anyone: root cannot use all of
 * f_bfree either (ext4 keeps clusters back even from root). */
static int disk_avail(const char *path, uint64_t *avail)
{
	struct statvfs sv;

	if (statvfs(path, &sv) < 0)
		return -errno;
	*avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	return 0;
}

int kv_create_room(const char *dir, uint64_t *need, uint64_t *avail)
{
	*need = open_slack();
	return disk_avail(dir, avail);
}

int kv_open_room(const char *dbdir, uint64_t *need, uint64_t *avail)
{
	struct dirent *de;
	DIR *d;
	int ret = disk_avail(dbdir, avail);

	if (ret < 0)
		return ret;
	*need = open_slack();
	d = opendir(dbdir);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		struct stat st;

		if (l > 4 && !strcmp(de->d_name + l - 4, ".log") &&
		    fstatat(dirfd(d), de->d_name, &st, 0) == 0)
			*need += (uint64_t)st.st_size;
	}
	closedir(d);
	return 0;
}

/* ---- point reads ------------------------------------------------------ */

static bool cf_valid(enum kv_cf cf)
{
	return (unsigned)cf < KV_CF_COUNT;
}

int kv_get_internal(struct kv *kv, enum kv_cf cf, const void *key,
		    size_t klen, void *buf, size_t bufsize, size_t *vlen)
{
	rocksdb_pinnableslice_t *ps;
	const char *v;
	char *err = NULL;
	size_t n;

	if (!cf_valid(cf))
		return -EINVAL;
	ps = rocksdb_get_pinned_cf(kv->db, kv->ropts, kv->cf[cf], key, klen,
				   &err);
	if (err)
		return kv_rocks_errno("get", err);
	if (!ps)
		return -ENOENT;
	v = rocksdb_pinnableslice_value(ps, &n);
	if (buf)
		memcpy(buf, v, n < bufsize ? n : bufsize);
	*vlen = n;
	rocksdb_pinnableslice_destroy(ps);
	return 0;
}

int kv_get(struct kv *kv, enum kv_cf cf, const void *key, size_t klen,
	   void **val, size_t *vlen)
{
	rocksdb_pinnableslice_t *ps;
	const char *v;
	char *err = NULL;
	void *copy;
	size_t n;
	int ret;

	ret = kv_fault_check(kv, KV_FAULT_READ);
	if (ret)
		return ret;
	if (!cf_valid(cf))
		return -EINVAL;
	ps = rocksdb_get_pinned_cf(kv->db, kv->ropts, kv->cf[cf], key, klen,
				   &err);
	if (err)
		return kv_rocks_errno("get", err);
	if (!ps)
		return -ENOENT;
	v = rocksdb_pinnableslice_value(ps, &n);
	copy = malloc(n ? n : 1); /* empty values are meaningful */
	if (!copy) {
		ret = -ENOMEM;
		goto out_destroy_slice;
	}
	memcpy(copy, v, n);
	*val = copy;
	*vlen = n;
out_destroy_slice:
	rocksdb_pinnableslice_destroy(ps);
	return ret;
}

/* ---- write batches ---------------------------------------------------- */

/* Block locks this thread holds through its open batches (any store):
 * kv_gc() refuses to wait for the exclusive lock while it is not 0. */
static __thread unsigned block_locks_held;

bool kv_thread_holds_block_lock(void)
{
	return block_locks_held != 0;
}

/* A batch that grew past this is given back to malloc when it is reset. */
#define KV_BATCH_KEEP (1u << 20)

struct kv_batch *kv_batch_new(void)
{
	return calloc(1, sizeof(struct kv_batch));
}

static void kv_batch_unlock(struct kv_batch *b)
{
	if (b->locked) {
		pthread_rwlock_unlock(&b->locked->block_lock);
		b->locked = NULL;
		if (block_locks_held)
			block_locks_held--;
	}
}

static void kv_batch_reset(struct kv_batch *b)
{
	kv_batch_unlock(b);
	if (b->cap > KV_BATCH_KEEP) {
		free(b->buf);
		b->buf = NULL;
		b->cap = 0;
	}
	b->len = 0;
	b->count = 0;
	b->oom = false;
}

void kv_batch_free(struct kv_batch *b)
{
	if (!b)
		return;
	kv_batch_unlock(b);
	if (b->wb)
		rocksdb_writebatch_destroy(b->wb);
	free(b->buf);
	free(b);
}

static void kv_batch_add(struct kv_batch *b, enum kv_op op, enum kv_cf cf,
			 const void *key, size_t klen, const void *val,
			 size_t vlen)
{
	uint32_t k32 = (uint32_t)klen, v32 = (uint32_t)vlen;
	size_t need = KV_REC_HDR + klen + vlen;
	uint8_t *p;

	if (b->oom)
		return;
	if (!cf_valid(cf) || klen > UINT32_MAX || vlen > UINT32_MAX) {
		kv_log("bug: invalid batch operation (cf %d, %zu/%zu bytes)",
		       (int)cf, klen, vlen);
		b->oom = true;
		return;
	}
	if (b->cap - b->len < need) {
		size_t cap = b->cap ? b->cap : 4096;
		uint8_t *nbuf;

		while (cap - b->len < need)
			cap *= 2;
		nbuf = realloc(b->buf, cap);
		if (!nbuf) {
			b->oom = true;
			return;
		}
		b->buf = nbuf;
		b->cap = cap;
	}
	p = b->buf + b->len;
	p[0] = (uint8_t)op;
	p[1] = (uint8_t)cf;
	memcpy(p + 2, &k32, 4);
	memcpy(p + 6, &v32, 4);
	if (klen)
		memcpy(p + KV_REC_HDR, key, klen);
	if (vlen)
		memcpy(p + KV_REC_HDR + klen, val, vlen);
	b->len += need;
	b->count++;
}

void kv_batch_put(struct kv_batch *b, enum kv_cf cf, const void *key,
		  size_t klen, const void *val, size_t vlen)
{
	kv_batch_add(b, KV_OP_PUT, cf, key, klen, val, vlen);
}

void kv_batch_delete(struct kv_batch *b, enum kv_cf cf, const void *key,
		     size_t klen)
{
	kv_batch_add(b, KV_OP_DELETE, cf, key, klen, NULL, 0);
}

void kv_batch_merge(struct kv_batch *b, enum kv_cf cf, const void *key,
		    size_t klen, const void *val, size_t vlen)
{
	kv_batch_add(b, KV_OP_MERGE, cf, key, klen, val, vlen);
}

size_t kv_batch_count(const struct kv_batch *b)
{
	return b->count;
}

void kv_batch_lock_blocks(struct kv *kv, struct kv_batch *b)
{
	int ret;

	if (b->locked == kv)
		return;
	if (b->locked) {
		kv_log("bug: one batch used with two stores");
		return;
	}
	ret = pthread_rwlock_rdlock(&kv->block_lock);
	if (ret) {
		kv_log("bug: block lock: %s", strerror(ret));
		return;
	}
	b->locked = kv;
	block_locks_held++;
}

/* Replay the batch's records into a RocksDB write batch. */
static rocksdb_writebatch_t *kv_batch_build(struct kv *kv, struct kv_batch *b)
{
	rocksdb_writebatch_t *wb = b->wb;
	const uint8_t *p = b->buf, *end = b->buf + b->len;

	if (!wb)
		wb = b->wb = rocksdb_writebatch_create();
	else
		rocksdb_writebatch_clear(wb);
	while (p < end) {
		rocksdb_column_family_handle_t *cf = kv->cf[p[1]];
		const char *key = (const char *)p + KV_REC_HDR, *val;
		uint32_t klen, vlen;

		memcpy(&klen, p + 2, 4);
		memcpy(&vlen, p + 6, 4);
		val = key + klen;
		switch ((enum kv_op)p[0]) {
		case KV_OP_PUT:
			rocksdb_writebatch_put_cf(wb, cf, key, klen, val, vlen);
			break;
		case KV_OP_DELETE:
			rocksdb_writebatch_delete_cf(wb, cf, key, klen);
			break;
		case KV_OP_MERGE:
			rocksdb_writebatch_merge_cf(wb, cf, key, klen, val,
						    vlen);
			break;
		}
		p += KV_REC_HDR + klen + vlen;
	}
	return wb;
}

static int wal_err_get(struct kv *kv)
{
	return -(int)(uint32_t)atomic_load(&kv->wal_err);
}

/* Record -@err as the WAL error, with a new generation. */
static void wal_err_set(struct kv *kv, int err)
{
	uint64_t old = atomic_load(&kv->wal_err), new;

	do
		new = ((old >> 32) + 1) << 32 | (uint32_t)-err;
	while (!atomic_compare_exchange_weak(&kv->wal_err, &old, new));
}

/* A write (a commit, or kv_sync's write after a full disk) that read @seen
 * before it started succeeded: clear the error if no failure was recorded
 * since. */
static void wal_err_clear(struct kv *kv, uint64_t seen)
{
	if ((uint32_t)seen)
		atomic_compare_exchange_strong(&kv->wal_err, &seen,
					       seen >> 32 << 32);
}

/* The ticket of this thread's last successful commit, and its store
 * (kv_thread_ticket). */
static _Thread_local uint64_t tl_ticket;
static _Thread_local const struct kv *tl_kv;

int kv_commit(struct kv *kv, struct kv_batch *b)
{
	char *err = NULL;
	uint64_t seen;
	int ret;

	ret = kv_fault_check(kv, KV_FAULT_WRITE);
	if (ret) {
		atomic_store(&kv->poisoned, true);
		goto out_reset;
	}
	if (atomic_load(&kv->poisoned)) {
		ret = -EIO;
		goto out_reset;
	}
	if (kv->readonly) {
		ret = -EROFS;
		goto out_reset;
	}
	if (b->oom) {
		ret = -ENOMEM;
		goto out_reset;
	}
	if (b->count == 0)
		goto out_reset;

	seen = atomic_load(&kv->wal_err);
	rocksdb_write(kv->db, kv->wopts, kv_batch_build(kv, b), &err);
	rocksdb_writebatch_clear(b->wb);
	if (err) {
		ret = kv_rocks_errno("write", err);
		/*
		 * What reached the WAL is unknown.  A full disk (NoSpace, from
		 * the WAL or from a flush) is a "hard" background error in
		 * RocksDB: it refuses every write itself until its automatic
		 * recovery, which polls the free space, has flushed all the
		 * memtables and dropped the WAL that may hold a torn part of
		 * this batch.  So later commits fail with ENOSPC until space
		 * is back, then succeed, and this batch never lands.  Any
		 * other error: refuse further writes until reopened.
		 */
		if (ret != -ENOSPC)
			atomic_store(&kv->poisoned, true);
		wal_err_set(kv, ret);
		goto out_reset;
	}
	wal_err_clear(kv, seen);
	tl_ticket = atomic_fetch_add(&kv->committed, 1) + 1;
	tl_kv = kv;
out_reset:
	kv_batch_reset(b);
	return ret;
}

/* ---- group commit ----------------------------------------------------- */

uint64_t kv_thread_ticket(struct kv *kv)
{
	/* Another store's ticket (tests open several) means nothing here:
	 * then everything committed so far. */
	return tl_kv == kv ? tl_ticket : atomic_load(&kv->committed);
}

/* Sync every live WAL file through an empty write with sync on, from
 * RocksDB's write queue: after a failed write, RocksDB refuses it with that
 * write's error until it has recovered. */
static void wal_sync_write(struct kv *kv, char **err)
{
	rocksdb_writebatch_t *wb = rocksdb_writebatch_create();

	rocksdb_write(kv->db, kv->wopts_sync, wb, err);
	rocksdb_writebatch_destroy(wb);
}

/*
 * Make every commit so far durable.  Normally rocksdb_flush_wal(sync),
 * which fsyncs the live WAL files while later commits go on appending.
 * But RocksDB 7.8 syncs them there without looking at a write that failed
 * on them meanwhile, and syncing a WAL writer that has seen an error
 * aborts the process (an assertion in WritableFileWriter): a commit on
 * another thread that meets a full disk after this leader checked wal_err
 * killed the daemon.  So when the disk is low (less than wal_low_room
 * free, or unknown), sync through a write instead: an empty batch with
 * sync on, which appends a record header and fsyncs every live WAL file
 * from RocksDB's write queue, after any failed write, which makes RocksDB
 * refuse it with that error.  Not always: commits queue behind that fsync
 * (read-write pgbench on a --writeback mount ran at 0.45-0.84x in three
 * interleaved rounds against rocksdb_flush_wal).
 * An append can still fail in that race with room to spare when the look
 * was made (EIO from a failing disk; another process taking the last
 * wal_low_room bytes while the fsync of an older WAL file runs, since
 * RocksDB checks each file just before syncing it): that aborts, losing
 * nothing acknowledged as durable.
 */
static void wal_sync(struct kv *kv, char **err)
{
	uint64_t avail = 0;

	if (disk_avail(kv->dbdir, &avail) == 0 && avail >= kv->wal_low_room)
		rocksdb_flush_wal(kv->db, 1, err);
	else
		wal_sync_write(kv, err);
}

/*
 * A caller's ticket is the number of commits finished when it arrived.
 * With no sync running and its ticket not yet synced, it becomes the
 * leader: it syncs everything committed so far (sync_target) with the
 * lock dropped.  Callers arriving meanwhile wait; if that sync covers their
 * ticket they share its result, otherwise one of them leads the next.
 */
int kv_sync(struct kv *kv)
{
	return kv_sync_to(kv, UINT64_MAX);
}

int kv_sync_to(struct kv *kv, uint64_t upto)
{
	uint64_t ticket, target, gen, seen;
	char *err = NULL;
	int ret;

	ret = kv_fault_check(kv, KV_FAULT_SYNC);
	if (ret)
		return ret;
	if (kv->readonly)
		return 0;

	pthread_mutex_lock(&kv->sync_lock);
	ticket = atomic_load(&kv->committed);
	if (upto < ticket)
		ticket = upto;
	while (kv->synced < ticket) {
		if (kv->syncing) {
			bool covered = ticket <= kv->sync_target;

			gen = kv->sync_gen;
			while (kv->sync_gen == gen)
				pthread_cond_wait(&kv->sync_cond,
						  &kv->sync_lock);
			/* synced never goes back: if the sync that covered
			 * us left it short, that sync failed. */
			if (covered && kv->synced < ticket) {
				ret = kv->fail_err;
				break;
			}
			continue;
		}

		/* Checked here, by every would-be leader, not once on entry:
		 * a write or sync may have failed while this caller waited,
		 * and the WAL must not be synced then (wal_err).  A caller
		 * whose commits were all synced before gets 0: they are
		 * durable.  After a full disk, sync through a write: RocksDB
		 * refuses it until its recovery has flushed the memtables
		 * (nothing then depends on the WAL that failed) and takes it
		 * after, as it takes a commit, which clears wal_err the same
		 * way.  Without it a store that no one writes to any more
		 * (a gc with nothing left to free) stayed at ENOSPC for
		 * good once space was back. */
		seen = atomic_load(&kv->wal_err);
		ret = -(int)(uint32_t)seen;
		/* (poisoned: an fsync failed too, and a later write that
		 * met the full disk recorded its ENOSPC over that EIO) */
		if (ret && (ret != -ENOSPC || atomic_load(&kv->poisoned)))
			break;
		target = atomic_load(&kv->committed);
		kv->syncing = true;
		kv->sync_target = target;
		pthread_mutex_unlock(&kv->sync_lock);

		if (ret)
			wal_sync_write(kv, &err);
		else
			wal_sync(kv, &err);
		atomic_fetch_add(&kv->nsyncs, 1);
		if (!err && ret) {
			wal_err_clear(kv, seen);
			ret = 0;
		} else if (err) {
			ret = kv_rocks_errno("sync", err);
			/* After a failed fsync the kernel may have dropped the
			 * pages it could not write: a later sync that succeeds
			 * proves nothing about them.  Refuse writes until the
			 * store is reopened (RocksDB replays what did reach
			 * the disk), except on a full disk (see kv_commit). */
			if (ret != -ENOSPC)
				atomic_store(&kv->poisoned, true);
			wal_err_set(kv, ret);
		}

		pthread_mutex_lock(&kv->sync_lock);
		kv->syncing = false;
		kv->sync_gen++;
		if (ret)
			kv->fail_err = ret;
		else if (target > kv->synced)
			kv->synced = target;
		pthread_cond_broadcast(&kv->sync_cond);
		if (ret)
			break;
	}
	pthread_mutex_unlock(&kv->sync_lock);
	return ret;
}

uint64_t kv_sync_count(struct kv *kv)
{
	return atomic_load(&kv->nsyncs);
}

/* ---- iterators -------------------------------------------------------- */

struct kv_iter {
	rocksdb_iterator_t *it;        /* NULL if creation failed */
	rocksdb_readoptions_t *ropts;  /* points into lower/upper */
	void *lower, *upper;           /* bound copies, live as long as it */
	int err;                       /* creation or injected error, or 0 */
	struct kv *faults;             /* moves count as KV_FAULT_ITER, or NULL */
};

/* Returned when even an iterator cannot be allocated: never valid, status
 * -ENOMEM, ignored by kv_iter_free(). */
static struct kv_iter kv_iter_nomem = { .err = -ENOMEM };

static struct kv_iter *kv_iter_failed(int err)
{
	struct kv_iter *ki = calloc(1, sizeof(*ki));

	if (!ki)
		return &kv_iter_nomem;
	ki->err = err;
	return ki;
}

static void *dup_bound(const void *p, size_t len)
{
	void *copy = malloc(len ? len : 1);

	if (copy && len)
		memcpy(copy, p, len);
	return copy;
}

struct kv_iter *kv_iter_new_internal(struct kv *kv, enum kv_cf cf,
				     const void *lower, size_t llen,
				     const void *upper, size_t ulen,
				     bool fill_cache)
{
	struct kv_iter *ki;

	if (!cf_valid(cf))
		return kv_iter_failed(-EINVAL);
	ki = calloc(1, sizeof(*ki));
	if (!ki)
		return &kv_iter_nomem;
	if (lower && !(ki->lower = dup_bound(lower, llen)))
		goto out_nomem;
	if (upper && !(ki->upper = dup_bound(upper, ulen)))
		goto out_nomem;
	ki->ropts = rocksdb_readoptions_create();
	rocksdb_readoptions_set_fill_cache(ki->ropts, fill_cache);
	if (ki->lower)
		rocksdb_readoptions_set_iterate_lower_bound(ki->ropts,
							    ki->lower, llen);
	if (ki->upper)
		rocksdb_readoptions_set_iterate_upper_bound(ki->ropts,
							    ki->upper, ulen);
	ki->it = rocksdb_create_iterator_cf(kv->db, ki->ropts, kv->cf[cf]);
	return ki;

out_nomem:
	free(ki->lower);
	free(ki);
	return &kv_iter_nomem;
}

struct kv_iter *kv_iter_new(struct kv *kv, enum kv_cf cf, const void *lower,
			    size_t llen, const void *upper, size_t ulen)
{
	int ret = kv_fault_check(kv, KV_FAULT_READ);
	struct kv_iter *it;

	if (ret)
		return kv_iter_failed(ret);
	it = kv_iter_new_internal(kv, cf, lower, llen, upper, ulen, true);
	if (it->it)
		it->faults = kv;
	return it;
}

/* An injected KV_FAULT_ITER error stops the iterator for good. */
static bool kv_iter_move_ok(struct kv_iter *it)
{
	int ret;

	if (!it->it || it->err)
		return false;
	if (it->faults && (ret = kv_fault_check(it->faults, KV_FAULT_ITER))) {
		it->err = ret;
		return false;
	}
	return true;
}

void kv_iter_seek(struct kv_iter *it, const void *key, size_t klen)
{
	if (kv_iter_move_ok(it))
		rocksdb_iter_seek(it->it, key, klen);
}

void kv_iter_seek_first(struct kv_iter *it)
{
	if (kv_iter_move_ok(it))
		rocksdb_iter_seek_to_first(it->it);
}

bool kv_iter_valid(const struct kv_iter *it)
{
	return it->it && !it->err && rocksdb_iter_valid(it->it);
}

void kv_iter_next(struct kv_iter *it)
{
	if (kv_iter_move_ok(it))
		rocksdb_iter_next(it->it);
}

const void *kv_iter_key(const struct kv_iter *it, size_t *klen)
{
	if (!it->it) {
		*klen = 0;
		return NULL;
	}
	return rocksdb_iter_key(it->it, klen);
}

const void *kv_iter_value(const struct kv_iter *it, size_t *vlen)
{
	if (!it->it) {
		*vlen = 0;
		return NULL;
	}
	return rocksdb_iter_value(it->it, vlen);
}

int kv_iter_status(const struct kv_iter *it)
{
	char *err = NULL;

	if (it->err)
		return it->err;
	rocksdb_iter_get_error(it->it, &err);
	return err ? kv_rocks_errno("iterator", err) : 0;
}

void kv_iter_free(struct kv_iter *it)
{
	if (!it || it == &kv_iter_nomem)
		return;
	if (it->it)
		rocksdb_iter_destroy(it->it);
	if (it->ropts)
		rocksdb_readoptions_destroy(it->ropts);
	free(it->lower);
	free(it->upper);
	free(it);
}

/* ---- maintenance ------------------------------------------------------ */

int kv_compact(struct kv *kv)
{
	rocksdb_compactoptions_t *co;

	if (kv->readonly)
		return -EROFS;
	if (atomic_load(&kv->poisoned))
		return -EIO;
	co = rocksdb_compactoptions_create();
	/* kForceOptimized: rewrite the last level too (dropping deleted keys
	 * there), but not the files this compaction just wrote. */
	rocksdb_compactoptions_set_bottommost_level_compaction(co, 3);
	for (int i = 0; i < KV_CF_COUNT; i++)
		rocksdb_compact_range_cf_opt(kv->db, kv->cf[i], co, NULL, 0,
					     NULL, 0);
	rocksdb_compactoptions_destroy(co);
	return 0;
}

/* See kv.h: readers keep the garbage collector (a writer of block_lock)
 * away while they turn block-map hashes into data. */
void kv_read_begin(struct kv *kv)
{
	pthread_rwlock_rdlock(&kv->block_lock);
}

void kv_read_end(struct kv *kv)
{
	pthread_rwlock_unlock(&kv->block_lock);
}
