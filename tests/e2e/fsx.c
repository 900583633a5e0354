/* SPDX-License-Identifier: MIT */
/*
 * tests/e2e/fsx.c - a small fsx: random file operations checked against an
 * in-memory copy of the file.
 *
 *   build/tests/e2e/fsx [-n OPS] [-s SEED] [-m MAXSIZE] [-o MIRROR] FILE
 *
 * Operations: write, read, truncate (up and down), fallocate (0 and
 * KEEP_SIZE), punch hole, copy_file_range (from a second file and within
 * the file), mmap read, SEEK_DATA/SEEK_HOLE, fsync, close and reopen.  Offsets are random,
 * biased to 8 KiB block edges.  Every read is compared with the model, and
 * the whole file every 100 operations and at the end.  With -o the model
 * is written to MIRROR at the end (on another filesystem), so that a
 * caller can remount and cmp FILE with MIRROR.  With -c the existing FILE
 * is first compared with MIRROR and the run continues from it.
 * Every operation is logged to stdout; a failure prints the seed and the
 * operation number.  Exit 0 = all good.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLK 8192

static const char *g_path;
static char g_src_path[4096];
static unsigned char *g_model, *g_src, *g_buf;
static size_t g_size, g_max = 4 << 20, g_src_size = 1 << 20;
static uint64_t g_rng, g_seed;
static long g_op;
static int g_fd = -1, g_sfd = -1;
static bool g_verbose = true;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "fsx: FAILED at operation %ld (seed %llu): ", g_op,
		(unsigned long long)g_seed);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static uint64_t rnd(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return g_rng;
}

static size_t rnd_below(size_t n)
{
	return n ? (size_t)(rnd() % n) : 0;
}

/* An offset in [0, lim], often on or next to a block edge. */
static size_t rnd_off(size_t lim)
{
	size_t o = rnd_below(lim + 1);

	switch (rnd() % 4) {
	case 0:
		o -= o % BLK;
		break;
	case 1:
		o = o - o % BLK + (rnd() % 2 ? 1 : BLK - 1);
		break;
	default:
		break;
	}
	return o > lim ? lim : o;
}

static void fill(unsigned char *p, size_t n)
{
	/* half random, half runs of one byte (compressible), some zeros */
	switch (rnd() % 3) {
	case 0:
		for (size_t i = 0; i < n; i++)
			p[i] = (unsigned char)rnd();
		break;
	case 1:
		memset(p, (int)(rnd() % 255 + 1), n);
		break;
	default:
		memset(p, 0, n);
		if (n)
			p[rnd_below(n)] = (unsigned char)(rnd() | 1);
		break;
	}
}

static void logop(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logop(const char *fmt, ...)
{
	va_list ap;

	if (!g_verbose)
		return;
	printf("%6ld ", g_op);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void do_pread(int fd, void *buf, size_t n, off_t off, const char *what)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, off + (off_t)done);
		if (r < 0)
			die("%s: pread(%zu at %lld): %s", what, n - done,
			    (long long)(off + (off_t)done), strerror(errno));
		if (r == 0)
			die("%s: EOF at %lld, model size %zu", what,
			    (long long)(off + (off_t)done), g_size);
		done += (size_t)r;
	}
}

static void do_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	size_t done = 0;

	while (done < n) {
		ssize_t w = pwrite(fd, (const char *)buf + done, n - done, off + (off_t)done);
		if (w <= 0)
			die("pwrite(%zu at %lld): %s", n - done,
			    (long long)(off + (off_t)done), strerror(errno));
		done += (size_t)w;
	}
}

static void compare(size_t off, size_t n, const char *what)
{
	if (off + n > g_size)
		die("%s: compare past EOF", what);
	do_pread(g_fd, g_buf, n, (off_t)off, what);
	if (memcmp(g_buf, g_model + off, n)) {
		size_t i = 0;
		while (g_buf[i] == g_model[off + i])
			i++;
		die("%s: byte at %zu is 0x%02x, model 0x%02x (range %zu+%zu)", what,
		    off + i, g_buf[i], g_model[off + i], off, n);
	}
}

static void check_size(const char *what)
{
	struct stat st;

	if (fstat(g_fd, &st) < 0)
		die("fstat: %s", strerror(errno));
	if ((size_t)st.st_size != g_size)
		die("%s: size %lld, model %zu", what, (long long)st.st_size, g_size);
}

static void check_all(const char *what)
{
	check_size(what);
	if (g_size)
		compare(0, g_size, what);
	/* nothing past EOF */
	if (pread(g_fd, g_buf, 16, (off_t)g_size) != 0)
		die("%s: data past EOF", what);
}

static void open_file(bool create)
{
	g_fd = open(g_path, O_RDWR | (create ? O_CREAT | O_TRUNC : 0), 0644);
	if (g_fd < 0)
		die("open %s: %s", g_path, strerror(errno));
}

static void set_size(size_t n)
{
	if (n > g_size)
		memset(g_model + g_size, 0, n - g_size);
	g_size = n;
}

static void op_write(void)
{
	size_t off = rnd_off(g_max - 1);
	size_t len = 1 + rnd_below(rnd() % 4 ? 3 * BLK : 64 * 1024);

	if (off + len > g_max)
		len = g_max - off;
	fill(g_buf, len);
	logop("write %zu+%zu", off, len);
	do_pwrite(g_fd, g_buf, len, (off_t)off);
	if (off > g_size)
		memset(g_model + g_size, 0, off - g_size);
	memcpy(g_model + off, g_buf, len);
	if (off + len > g_size)
		g_size = off + len;
}

static void op_read(void)
{
	size_t off, len;

	if (!g_size)
		return;
	off = rnd_off(g_size - 1);
	len = 1 + rnd_below(g_size - off < 100000 ? g_size - off : 100000);
	logop("read %zu+%zu", off, len);
	compare(off, len, "read");
}

static void op_truncate(void)
{
	size_t n = rnd_off(g_max);

	logop("truncate %zu -> %zu", g_size, n);
	if (ftruncate(g_fd, (off_t)n) < 0)
		die("ftruncate %zu: %s", n, strerror(errno));
	set_size(n);
	check_size("truncate");
}

static void op_fallocate(void)
{
	size_t off = rnd_off(g_max - 1), len = 1 + rnd_below(64 * 1024);
	int keep = rnd() % 2 ? FALLOC_FL_KEEP_SIZE : 0;

	if (off + len > g_max)
		len = g_max - off;
	logop("fallocate %s %zu+%zu", keep ? "KEEP_SIZE" : "0", off, len);
	if (fallocate(g_fd, keep, (off_t)off, (off_t)len) < 0)
		die("fallocate: %s", strerror(errno));
	if (!keep && off + len > g_size)
		set_size(off + len);
	check_size("fallocate");
}

static void op_punch(void)
{
	size_t off, len;

	if (!g_size)
		return;
	off = rnd_off(g_size - 1);
	len = 1 + rnd_below(rnd() % 2 ? 4 * BLK : g_size - off);
	logop("punch %zu+%zu", off, len);
	if (fallocate(g_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len) < 0)
		die("punch: %s", strerror(errno));
	if (off < g_size)
		memset(g_model + off, 0, (off + len > g_size ? g_size : off + len) - off);
	check_size("punch");
}

static void op_copy(void)
{
	bool same = g_size > 2 * BLK && rnd() % 2;
	size_t in_off, out_off, len;
	loff_t oi, oo;
	ssize_t n;

	if (same) {
		/* two non-overlapping ranges of this file */
		len = 1 + rnd_below(g_size / 2 < 128 * 1024 ? g_size / 2 : 128 * 1024);
		in_off = rnd_off(g_size - len);
		do {
			out_off = rnd_off(g_max - len);
		} while (out_off < in_off + len && in_off < out_off + len);
	} else {
		len = 1 + rnd_below(256 * 1024);
		in_off = rnd_off(g_src_size - 1);
		out_off = rnd_off(g_max - 1);
		if (in_off + len > g_src_size)
			len = g_src_size - in_off;
		if (out_off + len > g_max)
			len = g_max - out_off;
	}
	logop("copy_file_range %s %zu+%zu -> %zu", same ? "self" : "src", in_off, len,
	      out_off);
	oi = (loff_t)in_off;
	oo = (loff_t)out_off;
	{
		size_t left = len;
		const unsigned char *from = same ? g_model : g_src;
		memmove(g_buf, from + in_off, len); /* before the model changes */
		while (left > 0) {
			n = copy_file_range(same ? g_fd : g_sfd, &oi, g_fd, &oo, left, 0);
			if (n < 0)
				die("copy_file_range: %s", strerror(errno));
			if (n == 0)
				die("copy_file_range: early EOF with %zu left", left);
			left -= (size_t)n;
		}
	}
	if (out_off > g_size)
		memset(g_model + g_size, 0, out_off - g_size);
	memcpy(g_model + out_off, g_buf, len);
	if (out_off + len > g_size)
		g_size = out_off + len;
}

static void op_mapread(void)
{
	size_t off, len, pg = (size_t)sysconf(_SC_PAGESIZE), moff;
	unsigned char *m;

	if (!g_size)
		return;
	off = rnd_below(g_size);
	len = 1 + rnd_below(g_size - off < 65536 ? g_size - off : 65536);
	moff = off - off % pg;
	logop("mapread %zu+%zu", off, len);
	m = mmap(NULL, len + (off - moff), PROT_READ, MAP_SHARED, g_fd, (off_t)moff);
	if (m == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	if (memcmp(m + (off - moff), g_model + off, len))
		die("mapread %zu+%zu differs from the model", off, len);
	munmap(m, len + (off - moff));
}

static bool model_zero(size_t from, size_t to)
{
	for (size_t i = from; i < to && i < g_size; i++)
		if (g_model[i])
			return false;
	return true;
}

/*
 * SEEK_DATA and SEEK_HOLE must never skip data (cp and tar trust them):
 * SEEK_DATA from off lands at or before the first non-zero byte, SEEK_HOLE
 * lands where the 4 KiB page (to its end) reads zeros, or at EOF.
 */
static void op_seek(void)
{
	size_t off = rnd_off(g_size + BLK);
	off_t r;

	logop("seek %zu (size %zu)", off, g_size);
	errno = 0;
	r = lseek(g_fd, (off_t)off, SEEK_DATA);
	if (off >= g_size) {
		if (r != -1 || errno != ENXIO)
			die("SEEK_DATA at %zu >= size %zu: %lld, %s", off, g_size,
			    (long long)r, strerror(errno));
	} else if (r < 0) {
		if (errno != ENXIO)
			die("SEEK_DATA %zu: %s", off, strerror(errno));
		if (!model_zero(off, g_size))
			die("SEEK_DATA %zu: ENXIO but there is data before EOF %zu", off,
			    g_size);
	} else {
		if ((size_t)r < off || (size_t)r >= g_size)
			die("SEEK_DATA %zu: %lld outside [off, size %zu)", off,
			    (long long)r, g_size);
		if (!model_zero(off, (size_t)r))
			die("SEEK_DATA %zu: %lld skips data", off, (long long)r);
	}
	errno = 0;
	r = lseek(g_fd, (off_t)off, SEEK_HOLE);
	if (off >= g_size) {
		if (r != -1 || errno != ENXIO)
			die("SEEK_HOLE at %zu >= size %zu: %lld, %s", off, g_size,
			    (long long)r, strerror(errno));
	} else {
		size_t end;
		if (r < 0)
			die("SEEK_HOLE %zu: %s", off, strerror(errno));
		if ((size_t)r < off || (size_t)r > g_size)
			die("SEEK_HOLE %zu: %lld outside [off, size %zu]", off,
			    (long long)r, g_size);
		/* 4 KiB: branchfs's holes are 8 KiB blocks, ext4's 4 KiB */
		end = (size_t)r - (size_t)r % 4096 + 4096;
		if ((size_t)r < g_size && !model_zero((size_t)r, end))
			die("SEEK_HOLE %zu: %lld is inside data", off, (long long)r);
	}
}

static void op_fsync(void)
{
	logop("fsync");
	if ((rnd() % 2 ? fsync(g_fd) : fdatasync(g_fd)) < 0)
		die("fsync: %s", strerror(errno));
}

static void op_reopen(void)
{
	logop("close and reopen");
	if (close(g_fd) < 0)
		die("close: %s", strerror(errno));
	open_file(false);
	check_size("reopen");
}

static void write_mirror(const char *path)
{
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);

	if (fd < 0)
		die("%s: %s", path, strerror(errno));
	if (g_size)
		do_pwrite(fd, g_model, g_size, 0);
	close(fd);
}

static void read_mirror(const char *path)
{
	struct stat st;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0)
		die("%s: %s", path, strerror(errno));
	if ((size_t)st.st_size > g_max)
		die("%s: larger than -m", path);
	g_size = (size_t)st.st_size;
	if (g_size)
		do_pread(fd, g_model, g_size, 0, "mirror");
	close(fd);
}

int main(int argc, char **argv)
{
	const char *mirror = NULL;
	long nops = 2000;
	bool cont = false;
	int c;

	g_seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	while ((c = getopt(argc, argv, "n:s:m:o:cq")) != -1) {
		switch (c) {
		case 'n':
			nops = atol(optarg);
			break;
		case 's':
			g_seed = strtoull(optarg, NULL, 0);
			break;
		case 'm':
			g_max = (size_t)strtoull(optarg, NULL, 0);
			break;
		case 'o':
			mirror = optarg;
			break;
		case 'c':
			cont = true;
			break;
		case 'q':
			g_verbose = false;
			break;
		default:
			fprintf(stderr, "usage: fsx [-n OPS] [-s SEED] [-m MAXSIZE] [-o MIRROR [-c]] [-q] FILE\n");
			return 2;
		}
	}
	if (optind != argc - 1 || g_max < 4 * BLK || (cont && !mirror)) {
		fprintf(stderr, "usage: fsx [-n OPS] [-s SEED] [-m MAXSIZE] [-o MIRROR [-c]] [-q] FILE\n");
		return 2;
	}
	g_path = argv[optind];
	g_rng = g_seed ? g_seed : 1;
	printf("fsx %s: %ld operations, seed %llu, max size %zu\n", g_path, nops,
	       (unsigned long long)g_seed, g_max);
	g_model = calloc(1, g_max);
	g_buf = malloc(g_max);
	g_src = malloc(g_src_size);
	if (!g_model || !g_buf || !g_src)
		die("out of memory");

	/* the source file for copy_file_range */
	snprintf(g_src_path, sizeof(g_src_path), "%s.src", g_path);
	for (size_t i = 0; i < g_src_size; i++)
		g_src[i] = (unsigned char)(i / BLK % 3 ? rnd() : (i / BLK) & 0xff);
	g_sfd = open(g_src_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (g_sfd < 0)
		die("%s: %s", g_src_path, strerror(errno));
	do_pwrite(g_sfd, g_src, g_src_size, 0);

	if (cont) {
		read_mirror(mirror);
		open_file(false);
		check_all("file against the mirror at start");
	} else {
		open_file(true);
	}
	for (g_op = 1; g_op <= nops; g_op++) {
		unsigned r = (unsigned)(rnd() % 100);
		if (r < 30)
			op_write();
		else if (r < 48)
			op_read();
		else if (r < 56)
			op_truncate();
		else if (r < 62)
			op_fallocate();
		else if (r < 72)
			op_punch();
		else if (r < 84)
			op_copy();
		else if (r < 87)
			op_mapread();
		else if (r < 91)
			op_seek();
		else if (r < 95)
			op_fsync();
		else
			op_reopen();
		if (g_op % 100 == 0)
			check_all("periodic full check");
	}
	g_op = nops;
	check_all("final full check");
	if (fsync(g_fd) < 0)
		die("final fsync: %s", strerror(errno));
	close(g_fd);
	close(g_sfd);
	if (mirror)
		write_mirror(mirror);
	printf("fsx: %ld operations OK, size %zu\n", nops, g_size);
	return 0;
}
