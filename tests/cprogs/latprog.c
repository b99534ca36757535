/* Known work for the latency and rate tools' tests (funclatency, vfsstat).
 *
 * Prints "ready <pid>" and waits for one line on stdin (a read(2) in flight while the tool
 * attaches), then does the work and prints what it did: "done <count>" (or "done <reads> <ns>")
 * and "slots <slot>:<count> ..." the log2 microsecond histogram of the durations it measured
 * itself around each timed call (lat_work's and lat_recurse's bodies, usleep() calls).
 *
 *   latprog work N USEC          N x lat_work(USEC): one nanosleep(2) of USEC each
 *   latprog recurse N            N x lat_recurse(2): levels take ~1.4, ~5.6, ~22 ms
 *   latprog jump N USEC          N x { lat_jump(USEC) (sleeps, then longjmp()s out, never
 *                                returns); lat_work(USEC) }
 *   latprog libc N USEC          N x usleep(USEC) (a libc function)
 *   latprog reads N              N x read(/dev/zero, 1 byte)
 *   latprog rate RATE SECONDS    read(/dev/zero) RATE times a second for SECONDS (deadline paced);
 *                                prints "marks <unix ns>:<reads so far> ..." every 50 reads, so a
 *                                test knows how many reads fell in any time window
 *   latprog vfs DIR              known VFS operations in DIR (see vfs_ops: the counts per vfsstat
 *                                column are printed as "vfs READ:14 WRITE:11 ...")
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

volatile long sink;
static jmp_buf env;
static const long level_usec[] = {1400, 4200, 16400};
static long slots[64];

static long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static long wall_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void note(long t0)
{
	unsigned long us = (now_ns() - t0) / 1000;
	int slot = 0;

	while (us > 1 && slot < 63) {
		us >>= 1;
		slot++;
	}
	slots[slot]++;
}

static void nap(long usec)
{
	struct timespec ts = {usec / 1000000, (usec % 1000000) * 1000};

	syscall(SYS_nanosleep, &ts, NULL); /* nanosleep(2) itself: glibc's nanosleep() uses clock_nanosleep */
}

__attribute__((noinline)) long lat_work(long usec)
{
	long t0 = now_ns();

	nap(usec);
	sink++;
	note(t0);
	return sink;
}

/* Level L sleeps level_usec[L] then calls level L-1: nested latencies add up. */
__attribute__((noinline)) long lat_recurse(int level)
{
	long r = 0, t0 = now_ns();

	nap(level_usec[level]);
	if (level > 0)
		r = lat_recurse(level - 1);
	sink = r; /* work after the call: no tail call */
	note(t0);
	return r + 1;
}

__attribute__((noinline)) void lat_jump(long usec)
{
	nap(usec);
	longjmp(env, 1);
}

/* Every system call vfsstat's syscall mode maps, with the counts each column must show. */
static int vfs_ops(const char *dir)
{
	char p[4096];
	char b = 'x';
	int fd, i, f = 0;
	struct open_how how = {.flags = O_CREAT | O_WRONLY, .mode = 0644};

#define PATH(fmt, ...) snprintf(p, sizeof(p), "%s/" fmt, dir, __VA_ARGS__)
	for (i = 0; i < 10; i++, f++) { /* openat(O_CREAT), write, fsync */
		PATH("f%d", f);
		if ((fd = open(p, O_CREAT | O_WRONLY, 0644)) < 0 || write(fd, &b, 1) != 1 || fsync(fd))
			return 1;
		close(fd);
	}
	for (i = 0; i < 3; i++, f++) { /* open(O_CREAT), fdatasync */
		PATH("f%d", f);
		if ((fd = syscall(SYS_open, p, O_CREAT | O_WRONLY, 0644)) < 0 || fdatasync(fd))
			return 1;
		close(fd);
	}
	for (i = 0; i < 2; i++, f++) { /* creat */
		PATH("f%d", f);
		if ((fd = syscall(SYS_creat, p, 0644)) < 0)
			return 1;
		close(fd);
	}
	for (i = 0; i < 2; i++, f++) { /* openat2(O_CREAT) */
		PATH("f%d", f);
		if ((fd = syscall(SYS_openat2, AT_FDCWD, p, &how, sizeof(how))) < 0)
			return 1;
		close(fd);
	}
	for (i = 0; i < 7; i++) { /* open(O_RDONLY), read, pread */
		PATH("f%d", i);
		if ((fd = open(p, O_RDONLY)) < 0 || read(fd, &b, 1) != 1 || pread(fd, &b, 1, 0) != 1)
			return 1;
		close(fd);
	}
	for (i = 0; i < 4; i++) { /* mkdir; rmdir twice, unlinkat(AT_REMOVEDIR) twice */
		PATH("d%d", i);
		if (syscall(SYS_mkdir, p, 0755))
			return 1;
	}
	for (i = 0; i < 4; i++) {
		PATH("d%d", i);
		if (i < 2 ? syscall(SYS_rmdir, p) : unlinkat(AT_FDCWD, p, AT_REMOVEDIR))
			return 1;
	}
	for (i = 0; i < f; i++) { /* unlink 9, unlinkat 8 */
		PATH("f%d", i);
		if (i < 9 ? syscall(SYS_unlink, p) : unlinkat(AT_FDCWD, p, 0))
			return 1;
	}
#undef PATH
	/* + this line: one more write */
	printf("vfs READ:14 WRITE:11 FSYNC:13 OPEN:24 CREATE:17 UNLINK:17 MKDIR:4 RMDIR:4\n");
	fflush(stdout);
	return 0;
}

static void print_slots(void)
{
	printf("slots");
	for (int i = 0; i < 64; i++)
		if (slots[i])
			printf(" %d:%ld", i, slots[i]);
	printf("\n");
}

int main(int argc, char **argv)
{
	char line[64];
	long n, usec;
	int fd;

	if (argc < 3) {
		fprintf(stderr, "usage: latprog MODE ARGS...\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOFBF, 4096); /* one write per fflush */
	n = atol(argv[2]);
	usec = argc > 3 ? atol(argv[3]) : 0;
	fd = open("/dev/zero", O_RDONLY);
	printf("ready %d\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	if (!strcmp(argv[1], "vfs")) {
		return vfs_ops(argv[2]);
	} else if (!strcmp(argv[1], "work")) {
		for (long i = 0; i < n; i++)
			lat_work(usec);
	} else if (!strcmp(argv[1], "recurse")) {
		for (long i = 0; i < n; i++)
			lat_recurse(2);
	} else if (!strcmp(argv[1], "jump")) {
		for (long i = 0; i < n; i++) {
			if (!setjmp(env))
				lat_jump(usec);
			lat_work(usec);
		}
	} else if (!strcmp(argv[1], "libc")) {
		for (long i = 0; i < n; i++) {
			long t0 = now_ns();

			usleep(usec);
			note(t0);
		}
	} else if (!strcmp(argv[1], "reads")) {
		char b;

		for (long i = 0; i < n; i++)
			if (read(fd, &b, 1) != 1)
				return 1;
	} else if (!strcmp(argv[1], "rate")) {
		long rate = n, start = now_ns(), end = start + usec * 1000000000L, done = 0, t;
		static long mark_t[1 << 16], mark_n[1 << 16];
		int marks = 0;
		char b;

		while ((t = now_ns()) < end) {
			long due = (t - start) * rate / 1000000000L;

			while (done < due) {
				if (read(fd, &b, 1) != 1)
					return 1;
				if (++done % 50 == 0 && marks < (1 << 16)) {
					mark_t[marks] = wall_ns();
					mark_n[marks++] = done;
				}
			}
			nap(1000);
		}
		printf("done %ld %ld\nmarks", done, now_ns() - start);
		for (int i = 0; i < marks; i++)
			printf(" %ld:%ld", mark_t[i], mark_n[i]);
		printf("\n");
		return 0;
	} else {
		fprintf(stderr, "unknown mode %s\n", argv[1]);
		return 2;
	}
	printf("done %ld\n", n);
	print_slots();
	return 0;
}
