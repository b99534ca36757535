/* iobusy: N threads spin for MS milliseconds after a line arrives on stdin, then each reads
 * its own /proc/thread-self/schedstat ("on_cpu_ns run_delay_ns timeslices") as its last act;
 * the main thread prints them after the join ("thread TID ..."), with its own schedstat
 * right after the go line and after the join ("main-start"/"main-end"), so tests can compare
 * a run-queue latency tool with the kernel's own accounting. Nothing that could block (a
 * lock, a pipe write) happens in a worker after its reading.
 * Usage: iobusy NTHREADS MS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

struct worker {
	pthread_t th;
	long tid;
	char stat[128];
};

static long busy_ms;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void read_schedstat(char *buf, size_t len)
{
	FILE *f = fopen("/proc/thread-self/schedstat", "r");

	buf[0] = 0;
	if (f) {
		if (!fgets(buf, len, f))
			buf[0] = 0;
		fclose(f);
	}
	buf[strcspn(buf, "\n")] = 0;
}

static void *spin(void *arg)
{
	struct worker *w = arg;
	volatile unsigned long n = 0;
	double end = now_ms() + busy_ms;

	w->tid = syscall(SYS_gettid);
	while (now_ms() < end)
		n++;
	read_schedstat(w->stat, sizeof(w->stat));
	return NULL;
}

int main(int argc, char **argv)
{
	int nthreads = argc > 1 ? atoi(argv[1]) : 2;
	static struct worker w[256];
	char line[16], start[128], end[128];

	busy_ms = argc > 2 ? atol(argv[2]) : 500;
	if (nthreads < 1 || nthreads > 256)
		return 2;
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	read_schedstat(start, sizeof(start));
	for (int i = 0; i < nthreads; i++)
		pthread_create(&w[i].th, NULL, spin, &w[i]);
	for (int i = 0; i < nthreads; i++)
		pthread_join(w[i].th, NULL);
	read_schedstat(end, sizeof(end));
	printf("main-start %ld %s\n", (long)getpid(), start);
	for (int i = 0; i < nthreads; i++)
		printf("thread %ld %s\n", w[i].tid, w[i].stat);
	printf("main-end %ld %s\n", (long)getpid(), end);
	return 0;
}
