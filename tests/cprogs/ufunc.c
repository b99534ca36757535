/* Waits for a line on stdin, then calls work(i) for i in [0, N). */
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) long work(long x) { __asm__ volatile("" ::: "memory"); return x * 2; }
int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000, s = 0;
	getchar();
	for (long i = 0; i < n; i++)
		s += work(i);
	printf("%ld\n", s);
	return 0;
}
