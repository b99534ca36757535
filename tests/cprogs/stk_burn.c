/* stk_burn: a CPU burner for bench/profile.py: throughput under a profiler.
 *
 * usage: stk_burn SECONDS [DEPTH]. Prints "ready", waits for a line on stdin, then burns for
 * SECONDS: each chunk of work runs at the bottom of a DEPTH-frame call chain (default 24,
 * so a profiler walks realistic stacks), and prints "chunks N" (the throughput). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHUNK 5000UL

static volatile unsigned long sink;

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline, noipa)) void work(void)
{
	volatile unsigned long acc = 0;

	for (unsigned long i = 0; i < CHUNK; i++)
		acc += i;
	sink += acc;
}

__attribute__((noinline, noipa)) unsigned long descend(int depth, unsigned long reps)
{
	volatile unsigned long n = 0;

	if (depth > 1)
		return descend(depth - 1, reps);
	for (unsigned long r = 0; r < reps; r++) {
		work();
		n++;
	}
	return n;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 5;
	int depth = argc > 2 ? atoi(argv[2]) : 24;
	unsigned long chunks = 0;
	char line[64];
	double end;

	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	end = now() + seconds;
	while (now() < end)
		chunks += descend(depth, 64);
	printf("chunks %lu\n", chunks);
	return 0;
}
