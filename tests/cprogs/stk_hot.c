/* stk_hot: burns one CPU, ~75% of it in hot_a and ~25% in hot_b (profile tests, bench).
 *
 * usage: stk_hot [SECONDS [WAIT]]   (SECONDS 0 or none: until killed). Prints "ready";
 * with WAIT, starts burning only once a line arrives on stdin.
 * Work comes in equal chunks; a xorshift PRNG gives 3 of 4 chunks to hot_a, so the split
 * is by CPU work (not wall time: preemption on a loaded machine does not skew it), and no
 * periodic pattern can alias with a sampling frequency. At exit it prints "chunks N". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHUNK 20000UL

static volatile unsigned long sink;

/* Same code, same alignment (a loop's cost depends on where it sits), and a stack local so
 * gcc sets up a frame pointer even in these leaves (it omits it in leaves that need no stack
 * frame, which would hide their callers from a frame-pointer unwinder). */
#define HOT_BODY                                          \
	volatile unsigned long acc = 0;                   \
	for (unsigned long i = 0; i < CHUNK; i++)         \
		acc += i;                                 \
	sink += acc

__attribute__((noinline, noipa, aligned(64))) void hot_a(void)
{
	HOT_BODY;
}

__attribute__((noinline, noipa, aligned(64))) void hot_b(void)
{
	HOT_BODY;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline, noipa)) unsigned long burn(double seconds)
{
	unsigned long x = 88172645463325252UL, n = 0;
	double end = now() + seconds;

	for (;;) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (x & 3)
			hot_a();
		else
			hot_b();
		if ((++n & 63) == 0 && seconds > 0 && now() >= end)
			return n;
	}
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 0;
	unsigned long n;

	printf("ready\n");
	fflush(stdout);
	if (argc > 2) {
		char line[64];

		if (!fgets(line, sizeof(line), stdin))
			return 1;
	}
	n = burn(seconds);
	printf("chunks %lu\n", n);
	return 0;
}
