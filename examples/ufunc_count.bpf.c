// SPDX-License-Identifier: GPL-2.0
/* Example custom tool: calls of a user-space function, and a histogram of its first argument. */
#include "bpfscope.bpf.h"

const volatile __u32 targ_pid = 0;

__u64 calls = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hist);
} arg_hist SEC(".maps");

SEC("uprobe")
int BPF_KPROBE(ufunc_entry, long arg0)
{
	__u32 zero = 0;
	struct hist *h;

	if (targ_pid && current_tgid() != targ_pid)
		return 0;
	__sync_fetch_and_add(&calls, 1);
	h = bpf_map_lookup_elem(&arg_hist, &zero);
	if (h)
		hist_add(h, (__u64)arg0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
