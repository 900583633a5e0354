/* SPDX-License-Identifier: MIT */
/*
 * tests/e2e/branch_util.c - small system-call helper for the branch tests
 * (tests/e2e/branch_*.sh), so that they need neither python3 nor attr.
 *
 * One system call, its outcome on stdout ("OK", a value, or the errno name
 * such as EXDEV), exit 0 whenever the call was made (2 on usage errors):
 *
 *   branch_util rename SRC DST
 *   branch_util link SRC DST
 *   branch_util setxattr PATH NAME VALUE
 *   branch_util getxattr PATH NAME
 *   branch_util removexattr PATH NAME
 *   branch_util xattrs PATH...      "PATH NAME=HEX" per xattr (l*xattr), sorted
 *
 * The snapshot atomicity load (tests/e2e/branch_atomic.sh):
 *
 *   branch_util writer DIR NCOUNTERS NBIG BIGKIB SECONDS
 *       Creates DIR/cNN (one 8 KiB block each) and DIR/bNN (BIGKIB KiB each),
 *       prints "ready" and then, until SECONDS pass or SIGTERM:
 *       - one thread writes round r = 1, 2, ... into c00, c01, ..., one
 *         pwrite of the whole block per file, the block filled with the
 *         64-bit value r: at every instant c00 >= c01 >= ... >= cLAST >=
 *         c00 - 1;
 *       - NBIG threads, one per big file, rewrite their whole file with one
 *         pwrite each, filled with the 64-bit value (file << 40 | version).
 *       No fsync.  Prints "rounds=R versions=V" at the end.
 *   branch_util check DIR NCOUNTERS NBIG BIGKIB
 *       Checks that invariant on a (snapshot) copy: every 8 KiB block holds
 *       one repeated value, counters are non-increasing in file order and
 *       cLAST >= c00 - 1, big-file blocks carry their own file number.
 *       Prints "counters=c00,c01,... big=v,v,... mixed=N" (mixed: big files
 *       whose blocks carry different versions - allowed, FUSE may split a
 *       big write) and exits 1 on a violation.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define BLK 8192
#define WORDS (BLK / 8)

static const char *errname(int e)
{
	static char buf[32];

	switch (e) {
	case EXDEV: return "EXDEV";
	case EROFS: return "EROFS";
	case ENOENT: return "ENOENT";
	case EEXIST: return "EEXIST";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENODATA: return "ENODATA";
	case ENOTSUP: return "ENOTSUP";
	case ENOTEMPTY: return "ENOTEMPTY";
	case EISDIR: return "EISDIR";
	case ENOTDIR: return "ENOTDIR";
	case EBUSY: return "EBUSY";
	case EINVAL: return "EINVAL";
	case EIO: return "EIO";
	case ENOSYS: return "ENOSYS";
	case ERANGE: return "ERANGE";
	case ESTALE: return "ESTALE";
	case EMLINK: return "EMLINK";
	}
	snprintf(buf, sizeof(buf), "E%d", e);
	return buf;
}

static int outcome(long r)
{
	if (r < 0)
		printf("%s\n", errname(errno));
	else
		printf("OK\n");
	return 0;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: branch_util rename|link SRC DST | setxattr PATH NAME VALUE |"
		" getxattr PATH NAME | removexattr PATH NAME | setacl PATH UID |"
		" xattrs PATH... |"
		" writer DIR NCOUNTERS NBIG BIGKIB SECONDS |"
		" check DIR NCOUNTERS NBIG BIGKIB\n");
	return 2;
}

static int cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int dump_xattrs(const char *path)
{
	char list[65536], val[65536];
	char *names[1024];
	ssize_t n = llistxattr(path, list, sizeof(list));
	size_t k = 0;

	if (n < 0) {
		if (errno == ENOTSUP)
			return 0;
		fprintf(stderr, "llistxattr %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (char *p = list; p < list + n && k < 1024; p += strlen(p) + 1)
		names[k++] = p;
	qsort(names, k, sizeof(names[0]), cmpstr);
	for (size_t i = 0; i < k; i++) {
		ssize_t v = lgetxattr(path, names[i], val, sizeof(val));

		if (v < 0) {
			fprintf(stderr, "lgetxattr %s %s: %s\n", path, names[i],
				strerror(errno));
			return 1;
		}
		printf("%s %s=", path, names[i]);
		for (ssize_t j = 0; j < v; j++)
			printf("%02x", (unsigned char)val[j]);
		printf("\n");
	}
	return 0;
}

/* ---- writer / check ------------------------------------------------------ */

static volatile sig_atomic_t g_stop;
static double g_deadline;
static int g_ncnt, g_nbig;
static size_t g_bigsz;
static int *g_cfd, *g_bfd;
static uint64_t g_rounds, *g_versions;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_term(int sig)
{
	(void)sig;
	g_stop = 1;
}

static bool done(void)
{
	return g_stop || now() >= g_deadline;
}

static void fill(uint64_t *buf, size_t words, uint64_t v)
{
	for (size_t i = 0; i < words; i++)
		buf[i] = v;
}

static void pwrite_all(int fd, const void *buf, size_t len, const char *what)
{
	ssize_t w = pwrite(fd, buf, len, 0);

	if (w != (ssize_t)len) {
		fprintf(stderr, "writer: pwrite %s: %s\n", what,
			w < 0 ? strerror(errno) : "short write");
		exit(1);
	}
}

static void *counter_thread(void *arg)
{
	uint64_t buf[WORDS];

	(void)arg;
	for (uint64_t r = 1; !done(); r++) {
		fill(buf, WORDS, r);
		for (int i = 0; i < g_ncnt; i++)
			pwrite_all(g_cfd[i], buf, BLK, "counter");
		g_rounds = r;
	}
	return NULL;
}

static void *big_thread(void *arg)
{
	int j = (int)(intptr_t)arg;
	uint64_t *buf = malloc(g_bigsz);

	if (!buf)
		exit(1);
	for (uint64_t v = 1; !done(); v++) {
		fill(buf, g_bigsz / 8, (uint64_t)(j + 1) << 40 | v);
		pwrite_all(g_bfd[j], buf, g_bigsz, "big file");
		g_versions[j] = v;
	}
	free(buf);
	return NULL;
}

static int open_file(const char *dir, char kind, int i, int flags)
{
	char p[4096];
	int fd;

	snprintf(p, sizeof(p), "%s/%c%02d", dir, kind, i);
	fd = open(p, flags, 0644);
	if (fd < 0)
		fprintf(stderr, "open %s: %s\n", p, strerror(errno));
	return fd;
}

static int writer(char **argv)
{
	const char *dir = argv[0];
	pthread_t th[65];
	uint64_t *buf;
	uint64_t vsum = 0;

	g_ncnt = atoi(argv[1]);
	g_nbig = atoi(argv[2]);
	g_bigsz = (size_t)atoi(argv[3]) * 1024;
	if (g_ncnt < 2 || g_ncnt > 1000 || g_nbig < 0 || g_nbig > 64 ||
	    g_bigsz < BLK || g_bigsz % BLK)
		return usage();
	g_cfd = calloc(g_ncnt, sizeof(int));
	g_bfd = calloc(g_nbig + 1, sizeof(int));
	g_versions = calloc(g_nbig + 1, sizeof(uint64_t));
	buf = calloc(1, g_bigsz);
	if (!g_cfd || !g_bfd || !g_versions || !buf)
		return 1;
	for (int i = 0; i < g_ncnt; i++) {
		g_cfd[i] = open_file(dir, 'c', i, O_RDWR | O_CREAT | O_TRUNC);
		if (g_cfd[i] < 0)
			return 1;
		pwrite_all(g_cfd[i], buf, BLK, "counter"); /* round 0 */
	}
	for (int j = 0; j < g_nbig; j++) {
		g_bfd[j] = open_file(dir, 'b', j, O_RDWR | O_CREAT | O_TRUNC);
		if (g_bfd[j] < 0)
			return 1;
		fill(buf, g_bigsz / 8, (uint64_t)(j + 1) << 40);
		pwrite_all(g_bfd[j], buf, g_bigsz, "big file"); /* version 0 */
	}
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	g_deadline = now() + atof(argv[4]);
	printf("ready\n");
	fflush(stdout);
	pthread_create(&th[0], NULL, counter_thread, NULL);
	for (int j = 0; j < g_nbig; j++)
		pthread_create(&th[j + 1], NULL, big_thread, (void *)(intptr_t)j);
	for (int j = 0; j <= g_nbig; j++)
		pthread_join(th[j], NULL);
	for (int j = 0; j < g_nbig; j++)
		vsum += g_versions[j];
	printf("rounds=%llu versions=%llu\n", (unsigned long long)g_rounds,
	       (unsigned long long)vsum);
	return 0;
}

/* Read DIR/<kind>NN whole; every block must be one repeated value, returned
 * in vals[block]. */
static int read_blocks(const char *dir, char kind, int i, size_t size,
		       uint64_t *vals)
{
	uint64_t *buf = malloc(size);
	int fd = open_file(dir, kind, i, O_RDONLY);
	ssize_t n;
	struct stat st;
	int bad = 0;

	if (!buf || fd < 0)
		return 1;
	if (fstat(fd, &st) < 0 || (size_t)st.st_size != size) {
		printf("VIOLATION %c%02d: size %lld, expected %zu\n", kind, i,
		       (long long)st.st_size, size);
		bad = 1;
		goto out;
	}
	n = pread(fd, buf, size, 0);
	if (n != (ssize_t)size) {
		printf("VIOLATION %c%02d: read %zd of %zu bytes (%s)\n", kind,
		       i, n, size, n < 0 ? strerror(errno) : "short");
		bad = 1;
		goto out;
	}
	for (size_t b = 0; b < size / BLK; b++) {
		const uint64_t *w = buf + b * WORDS;

		vals[b] = w[0];
		for (size_t k = 1; k < WORDS; k++) {
			if (w[k] != w[0]) {
				printf("VIOLATION %c%02d: block %zu torn: word 0 ="
				       " %#llx, word %zu = %#llx\n",
				       kind, i, b, (unsigned long long)w[0], k,
				       (unsigned long long)w[k]);
				bad = 1;
				goto out;
			}
		}
	}
out:
	close(fd);
	free(buf);
	return bad;
}

static int check(char **argv)
{
	const char *dir = argv[0];
	int ncnt = atoi(argv[1]), nbig = atoi(argv[2]), mixed = 0, bad = 0;
	size_t bigsz = (size_t)atoi(argv[3]) * 1024, nb = bigsz / BLK;
	uint64_t *c, *v;

	if (ncnt < 2 || nbig < 0 || bigsz < BLK || bigsz % BLK)
		return usage();
	c = calloc(ncnt, sizeof(*c));
	v = calloc(nb, sizeof(*v));
	if (!c || !v)
		return 1;
	for (int i = 0; i < ncnt; i++)
		bad |= read_blocks(dir, 'c', i, BLK, &c[i]);
	if (bad)
		return 1;
	for (int i = 1; i < ncnt; i++) {
		if (c[i] > c[i - 1]) {
			printf("VIOLATION counters: c%02d = %llu > c%02d = %llu\n",
			       i, (unsigned long long)c[i], i - 1,
			       (unsigned long long)c[i - 1]);
			bad = 1;
		}
	}
	if (c[ncnt - 1] + 1 < c[0]) {
		printf("VIOLATION counters: c%02d = %llu < c00 - 1 = %llu\n",
		       ncnt - 1, (unsigned long long)c[ncnt - 1],
		       (unsigned long long)c[0] - 1);
		bad = 1;
	}
	{
		char line[65536];
		size_t o = 0;

		o += snprintf(line + o, sizeof(line) - o, "counters=");
		for (int i = 0; i < ncnt && o < sizeof(line) - 32; i++)
			o += snprintf(line + o, sizeof(line) - o, "%s%llu",
				      i ? "," : "", (unsigned long long)c[i]);
		o += snprintf(line + o, sizeof(line) - o, " big=");
		for (int j = 0; j < nbig; j++) {
			bool mix = false;

			if (read_blocks(dir, 'b', j, bigsz, v)) {
				bad = 1;
				continue;
			}
			for (size_t b = 0; b < nb; b++) {
				if (v[b] >> 40 != (uint64_t)(j + 1)) {
					printf("VIOLATION b%02d: block %zu holds"
					       " %#llx, written for another"
					       " file\n",
					       j, b, (unsigned long long)v[b]);
					bad = 1;
				}
				if (v[b] != v[0])
					mix = true;
			}
			mixed += mix;
			if (o < sizeof(line) - 32)
				o += snprintf(line + o, sizeof(line) - o,
					      "%s%llu", j ? "," : "",
					      (unsigned long long)(v[0] &
						((1ull << 40) - 1)));
		}
		printf("%s mixed=%d\n", line, mixed);
	}
	return bad;
}

int main(int argc, char **argv)
{
	const char *op = argc > 1 ? argv[1] : "";

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(op, "rename") && argc == 4)
		return outcome(rename(argv[2], argv[3]));
	if (!strcmp(op, "link") && argc == 4)
		return outcome(link(argv[2], argv[3]));
	if (!strcmp(op, "setxattr") && argc == 5)
		return outcome(lsetxattr(argv[2], argv[3], argv[4],
					 strlen(argv[4]), 0));
	if (!strcmp(op, "setacl") && argc == 4) {
		/* system.posix_acl_access (the kernel's xattr form, version
		 * 2): user::rw- user:UID:--- group::r-- mask::r-- other::r-- */
		static const struct {
			uint16_t tag, perm;
			uint32_t id;
		} e[] = { { 0x01, 6, 0 }, { 0x02, 0, 0 }, { 0x04, 4, 0 },
			  { 0x10, 4, 0 }, { 0x20, 4, 0 } };
		unsigned char v[4 + sizeof(e)];
		uint32_t ver = 2;

		memcpy(v, &ver, 4);
		for (size_t i = 0; i < sizeof(e) / sizeof(e[0]); i++) {
			uint32_t id = e[i].tag == 0x02 ?
				(uint32_t)strtoul(argv[3], NULL, 10) : 0xffffffffu;

			memcpy(v + 4 + 8 * i, &e[i].tag, 2);
			memcpy(v + 6 + 8 * i, &e[i].perm, 2);
			memcpy(v + 8 + 8 * i, &id, 4);
		}
		return outcome(lsetxattr(argv[2], "system.posix_acl_access", v,
					 sizeof(v), 0));
	}
	if (!strcmp(op, "removexattr") && argc == 4)
		return outcome(lremovexattr(argv[2], argv[3]));
	if (!strcmp(op, "getxattr") && argc == 4) {
		char val[65536];
		ssize_t n = lgetxattr(argv[2], argv[3], val, sizeof(val) - 1);

		if (n < 0)
			return outcome(n);
		val[n] = 0;
		printf("%s\n", val);
		return 0;
	}
	if (!strcmp(op, "xattrs") && argc >= 3) {
		int bad = 0;

		for (int i = 2; i < argc; i++)
			bad |= dump_xattrs(argv[i]);
		return bad;
	}
	if (!strcmp(op, "writer") && argc == 7)
		return writer(argv + 2);
	if (!strcmp(op, "check") && argc == 6)
		return check(argv + 2);
	return usage();
}
