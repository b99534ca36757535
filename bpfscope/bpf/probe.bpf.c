// SPDX-License-Identifier: GPL-2.0
/* Tiny programs whose load/attach tells `bpfscope doctor` what this kernel allows. */
#include "bpfscope.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_rb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_tracepoint(void *ctx) { return 0; }

SEC("raw_tp/sys_enter")
int probe_raw_tp(void *ctx) { return 0; }

SEC("tp_btf/sched_switch")
int probe_tp_btf(u64 *ctx) { return 0; }

SEC("fentry/do_nanosleep")
int probe_fentry(u64 *ctx) { return 0; }

SEC("kprobe/do_nanosleep")
int probe_kprobe(void *ctx) { return 0; }

SEC("uprobe")
int probe_uprobe(void *ctx) { return 0; }

SEC("perf_event")
int probe_perf_event(void *ctx) { return 0; }

SEC("cgroup_skb/egress")
int probe_cgroup_skb(struct __sk_buff *skb) { return 1; }

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_ringbuf(void *ctx)
{
	void *e = bpf_ringbuf_reserve(&probe_rb, 8, 0);
	if (e)
		bpf_ringbuf_discard(e, 0);
	return 0;
}

SEC("tp_btf/sched_switch")
int probe_task_storage(u64 *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
