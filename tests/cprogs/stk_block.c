/* stk_block: blocks 200 ms in nanosleep and 100 ms in a pipe read per loop (offcputime tests).
 *
 * usage: stk_block LOOPS [EXIT]. Prints "ready", waits for SIGUSR1, runs LOOPS loops, prints
 * "done SLEEP_US PIPE_US" (the time the calls took, as measured here: ground truth on a loaded
 * machine, where wakeups come late), then waits in pause() until killed (exits at once with
 * EXIT). A child process answers each pipe request 100 ms later: the read blocks ~100 ms. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static long long now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

__attribute__((noinline, noipa)) void block_in_sleep(void)
{
	sleep_ms(200);
}

__attribute__((noinline, noipa)) void block_in_pipe(int req, int resp)
{
	char c = 1;

	if (write(req, &c, 1) != 1)
		exit(2);
	if (read(resp, &c, 1) != 1)
		exit(2);
}

int main(int argc, char **argv)
{
	int loops = argc > 1 ? atoi(argv[1]) : 5;
	int req[2], resp[2];
	sigset_t mask, old;
	long long sleep_us = 0, pipe_us = 0;
	char c;

	if (pipe(req) || pipe(resp))
		return 1;
	if (fork() == 0) {
		close(req[1]);
		close(resp[0]);
		while (read(req[0], &c, 1) == 1) {
			sleep_ms(100);
			if (write(resp[1], &c, 1) != 1)
				return 1;
		}
		return 0;
	}
	close(req[0]);
	close(resp[1]);
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigprocmask(SIG_BLOCK, &mask, &old);
	signal(SIGUSR1, on_usr1);
	printf("ready\n");
	fflush(stdout);
	while (!go)
		sigsuspend(&old);
	for (int i = 0; i < loops; i++) {
		long long t0 = now_us(), t1, t2;

		block_in_sleep();
		t1 = now_us();
		block_in_pipe(req[1], resp[0]);
		t2 = now_us();
		sleep_us += t1 - t0;
		pipe_us += t2 - t1;
	}
	printf("done %lld %lld\n", sleep_us, pipe_us);
	fflush(stdout);
	close(req[1]); /* the child exits */
	if (argc > 2)
		return 0;
	for (;;)
		pause();
}
