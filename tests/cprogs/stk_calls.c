/* stk_calls: calls counted_fn exactly N times (stackcount uprobe tests).
 *
 * usage: stk_calls N [DEPTHS [EXIT]]. Prints "ready", waits for a line on stdin, makes the
 * N calls, prints "done SUM", then waits for stdin to close (exits at once with EXIT).
 * Without DEPTHS (or 0) the calls come from two call sites (N - N/4 from via_a, N/4 from
 * via_b); with DEPTHS = D, call i is made at recursion depth 1 + i % D: D distinct stacks. */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline, noipa)) int counted_fn(int x)
{
	return x * 2 + 1;
}

__attribute__((noinline, noipa)) long via_a(int n)
{
	long sum = 0;

	for (int i = 0; i < n; i++)
		sum += counted_fn(i);
	return sum;
}

__attribute__((noinline, noipa)) long via_b(int n)
{
	long sum = 0;

	for (int i = 0; i < n; i++)
		sum += counted_fn(i);
	return sum;
}

__attribute__((noinline, noipa)) long deep(int depth, int x)
{
	volatile long r;

	if (depth <= 1)
		r = counted_fn(x);
	else
		r = deep(depth - 1, x) + 1;
	return r;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	int depths = argc > 2 ? atoi(argv[2]) : 0;
	char line[64];
	long sum = 0;

	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	if (depths > 0) {
		for (int i = 0; i < n; i++)
			sum += deep(1 + i % depths, i);
	} else {
		sum = via_a(n - n / 4) + via_b(n / 4);
	}
	printf("done %ld\n", sum);
	fflush(stdout);
	if (argc > 3)
		return 0;
	while (fgets(line, sizeof(line), stdin))
		;
	return 0;
}
