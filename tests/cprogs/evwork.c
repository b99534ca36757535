/* Ground-truth work for perfstat / llcstat / profile -e tests and bench/perfstat.py.
 *
 *   evwork faults N [R]    touch N fresh 4 KiB pages (one minor fault each) in touch_pages(),
 *                          R rounds (default 1) of mmap, touch, munmap
 *   evwork sleep N USEC    sleep USEC microseconds N times (one context switch each)
 *   evwork spin MS         burn MS milliseconds of CPU time in spin()
 *   evwork pingpong N      N pipe round trips with a child, both on CPU 0 (2 context switches
 *                          each); cpu_ns then counts the child's CPU time too
 *
 * It prints "ready PID" and waits for a line on stdin (so a tracer can attach for this pid),
 * does the work, and prints one JSON line with what getrusage saw for the work alone:
 *   {"pid":..,"minflt":..,"majflt":..,"nvcsw":..,"nivcsw":..,"cpu_ns":..,"wall_ns":..}
 * then waits for a second line (or EOF) before exiting when started with KEEP=1 in the env.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>

static long long ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) void touch_pages(volatile char *p, long n)
{
	for (long i = 0; i < n; i++)
		p[i * 4096] = 1;
}

__attribute__((noinline)) void sleep_many(long n, long usec)
{
	struct timespec ts = {usec / 1000000, (usec % 1000000) * 1000};
	for (long i = 0; i < n; i++)
		nanosleep(&ts, NULL);
}

__attribute__((noinline)) unsigned long spin(long ms)
{
	long long end = ns(CLOCK_PROCESS_CPUTIME_ID) + ms * 1000000LL;
	volatile unsigned long x = 0;
	while (ns(CLOCK_PROCESS_CPUTIME_ID) < end)
		for (int i = 0; i < 10000; i++)
			x += i;
	return x;
}

/* Returns the child's CPU time (ns), which the child sends when done. */
__attribute__((noinline)) long long pingpong(long n)
{
	int ab[2], ba[2];
	char c = 0;
	long long child_cpu = 0;
	pid_t child;

	if (pipe(ab) || pipe(ba))
		exit(1);
	child = fork();
	if (child == 0) {
		for (long i = 0; i < n; i++)
			if (read(ab[0], &c, 1) != 1 || write(ba[1], &c, 1) != 1)
				_exit(1);
		child_cpu = ns(CLOCK_PROCESS_CPUTIME_ID);
		_exit(write(ba[1], &child_cpu, sizeof(child_cpu)) != sizeof(child_cpu));
	}
	for (long i = 0; i < n; i++)
		if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1)
			exit(1);
	if (read(ba[0], &child_cpu, sizeof(child_cpu)) != sizeof(child_cpu))
		exit(1);
	waitpid(child, NULL, 0);
	return child_cpu;
}

int main(int argc, char **argv)
{
	struct rusage a, b;
	long long w0, c0, extra_cpu = 0;
	char line[64];
	char *mem = NULL;
	long n = argc > 2 ? atol(argv[2]) : 1000;

	if (argc < 3) {
		fprintf(stderr, "usage: evwork faults N | sleep N USEC | spin MS\n");
		return 2;
	}
	if (!strcmp(argv[1], "faults")) {
		mem = mmap(NULL, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			return 1;
		madvise(mem, n * 4096, MADV_NOHUGEPAGE); /* one fault per 4 KiB page */
	}
	if (!strcmp(argv[1], "pingpong")) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(0, &one);
		sched_setaffinity(0, sizeof(one), &one); /* the child inherits it */
	}
	printf("ready %d\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	getrusage(RUSAGE_SELF, &a);
	w0 = ns(CLOCK_MONOTONIC);
	c0 = ns(CLOCK_PROCESS_CPUTIME_ID);
	if (!strcmp(argv[1], "faults")) {
		long rounds = argc > 3 ? atol(argv[3]) : 1;
		for (long r = 0; r < rounds; r++) {
			if (r) {
				munmap(mem, n * 4096);
				mem = mmap(NULL, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				if (mem == MAP_FAILED)
					return 1;
				madvise(mem, n * 4096, MADV_NOHUGEPAGE);
			}
			touch_pages(mem, n);
		}
	}
	else if (!strcmp(argv[1], "sleep"))
		sleep_many(n, argc > 3 ? atol(argv[3]) : 1000);
	else if (!strcmp(argv[1], "spin"))
		spin(n);
	else if (!strcmp(argv[1], "pingpong"))
		extra_cpu = pingpong(n);
	long long cpu = ns(CLOCK_PROCESS_CPUTIME_ID) - c0 + extra_cpu, wall = ns(CLOCK_MONOTONIC) - w0;
	getrusage(RUSAGE_SELF, &b);

	printf("{\"pid\":%d,\"minflt\":%ld,\"majflt\":%ld,\"nvcsw\":%ld,\"nivcsw\":%ld,\"cpu_ns\":%lld,\"wall_ns\":%lld}\n",
	       getpid(), b.ru_minflt - a.ru_minflt, b.ru_majflt - a.ru_majflt, b.ru_nvcsw - a.ru_nvcsw,
	       b.ru_nivcsw - a.ru_nivcsw, cpu, wall);
	fflush(stdout);
	if (getenv("KEEP"))
		(void)!fgets(line, sizeof(line), stdin);
	return 0;
}
