// SPDX-License-Identifier: GPL-2.0
/* bashreadline: each line readline() returns (uretprobe), i.e. the commands typed into bash. */
#include "bpfscope.bpf.h"

#define MAX_LINE 1024

const volatile __u32 targ_pid = 0; /* -p: this process only */

struct event {
	__u64 ts_ns;
	__u32 pid;
	__u32 uid;
	__u32 len;        /* bytes of line, without the NUL */
	__u32 truncated;  /* the line was longer than MAX_LINE - 1 */
	char comm[TASK_COMM_LEN];
	char line[MAX_LINE];
};

/* keeps struct event in the object's BTF, where user space reads its layout */
struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

SEC("uretprobe")
int BPF_KRETPROBE(uretprobe_readline, const char *ret)
{
	struct event *e;
	long n;
	char next = 0;
	__u32 pid = current_tgid();

	if (!ret)  /* EOF (Ctrl-D) */
		return 0;
	if (targ_pid && pid != targ_pid)
		return 0;
	e = reserve_event(&events, sizeof(*e));
	if (!e)
		return 0;
	n = bpf_probe_read_user_str(e->line, sizeof(e->line), ret);
	if (n <= 0) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	e->len = n - 1;
	e->truncated = 0;
	if (n == MAX_LINE && !bpf_probe_read_user(&next, 1, ret + MAX_LINE - 1) && next)
		e->truncated = 1;
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
