/* Test program for tests/test_symbols.py: prints the runtime address of a few
 * functions (its own and its shared library's), then blocks reading stdin until
 * the test closes it, so that the test can symbolize those addresses live. */
#include <stdio.h>
#include <unistd.h>

int symtest_lib_func(int x);
void symtest_lib_report(FILE *out);

__attribute__((noinline)) static int symtest_static_fn(int x)
{
	return x + 7;
}

__attribute__((noinline)) int symtest_global_fn(int x)
{
	return symtest_static_fn(x) * 2;
}

int main(void)
{
	char c;

	printf("symtest_global_fn %p\n", (void *)&symtest_global_fn);
	printf("symtest_static_fn %p\n", (void *)&symtest_static_fn);
	printf("main %p\n", (void *)&main);
	symtest_lib_report(stdout);
	printf("ready %d\n", symtest_global_fn(1) + symtest_lib_func(2));
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
