/* Shared library for tests/test_symbols.py: one global and one static function. */
#include <stdio.h>

__attribute__((noinline)) static int symtest_lib_inner(int x)
{
	return x * 3 + 1;
}

__attribute__((noinline)) int symtest_lib_func(int x)
{
	return symtest_lib_inner(x) + 2;
}

/* Addresses as this library sees them (no PLT or canonical-address games). */
void symtest_lib_report(FILE *out)
{
	fprintf(out, "symtest_lib_func %p\n", (void *)&symtest_lib_func);
	fprintf(out, "symtest_lib_inner %p\n", (void *)&symtest_lib_inner);
}
