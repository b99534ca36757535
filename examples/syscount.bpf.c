// SPDX-License-Identifier: GPL-2.0
/* Example custom tool: syscalls counted per process (one raw_tp link for all syscalls). */
#include "bpfscope.bpf.h"

const volatile __u32 targ_pid = 0;

struct proc_key {
	__u32 pid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct proc_key);
	__type(value, __u64);
} counts SEC(".maps");

SEC("raw_tp/sys_enter")
int count_sys_enter(void *ctx)
{
	struct proc_key k = {};
	__u64 one = 1, *v;

	k.pid = current_tgid();
	if (targ_pid && k.pid != targ_pid)
		return 0;
	bpf_get_current_comm(&k.comm, sizeof(k.comm));
	v = bpf_map_lookup_elem(&counts, &k);
	if (v)
		*v += 1; /* per-CPU value: no atomic needed */
	else
		bpf_map_update_elem(&counts, &k, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
