// SPDX-License-Identifier: GPL-2.0
/* Example custom tool: read() latency histogram per cgroup (start time in task storage). */
#include "bpfscope.bpf.h"

const volatile __u64 targ_cgroup = 0;

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct hist);
} hists SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_read")
int read_enter(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 *ts;

	if (targ_cgroup && bpf_get_current_cgroup_id() != targ_cgroup)
		return 0;
	ts = bpf_task_storage_get(&start, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ts)
		*ts = bpf_ktime_get_ns();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int read_exit(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	static const struct hist zero;
	__u64 *ts, cg, delta;
	struct hist *h;

	ts = bpf_task_storage_get(&start, task, 0, 0);
	if (!ts || !*ts)
		return 0;
	delta = (bpf_ktime_get_ns() - *ts) / 1000;
	*ts = 0;
	cg = bpf_get_current_cgroup_id();
	h = bpf_map_lookup_elem(&hists, &cg);
	if (!h) {
		bpf_map_update_elem(&hists, &cg, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &cg);
		if (!h)
			return 0;
	}
	hist_add(h, delta);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
