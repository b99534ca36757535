/* Waits for a line on stdin, then makes N getppid() syscalls and exits. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000;
	getchar();
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
	return 0;
}
