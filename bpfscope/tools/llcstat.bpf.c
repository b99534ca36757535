// SPDX-License-Identifier: GPL-2.0
/* llcstat: last-level cache references and misses per process (or thread) and CPU, as BCC's.
 *
 * Two sampling perf events per CPU (references, misses), each overflowing every sample_period
 * events into its program, which credits the period to the current task on this CPU. */
#include "bpfscope.bpf.h"

const volatile bool per_thread = false;	/* -t: key by thread too */

struct llc_key {
	__u32 pid;
	__u32 tid;
	__u32 cpu;
	__u32 _pad;
};

struct llc_value {
	__u64 ref;
	__u64 miss;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct llc_key);
	__type(value, struct llc_value);
} stats SEC(".maps");

static __always_inline int credit(struct bpf_perf_event_data *ctx, bool miss)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct llc_key k = {
		.pid = id >> 32,
		.tid = per_thread ? (__u32)id : 0,
		.cpu = bpf_get_smp_processor_id(),
	};
	struct llc_value *v = bpf_map_lookup_elem(&stats, &k);

	if (!v) {
		struct llc_value zero = {};

		bpf_map_update_elem(&stats, &k, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&stats, &k);
		if (!v) {
			__sync_fetch_and_add(&lost_events, 1);
			return 0;
		}
	}
	bpf_get_current_comm(v->comm, sizeof(v->comm)); /* the latest name: exec renames */
	if (miss)
		__sync_fetch_and_add(&v->miss, ctx->sample_period);
	else
		__sync_fetch_and_add(&v->ref, ctx->sample_period);
	return 0;
}

SEC("perf_event")
int on_reference(struct bpf_perf_event_data *ctx)
{
	return credit(ctx, false);
}

SEC("perf_event")
int on_miss(struct bpf_perf_event_data *ctx)
{
	return credit(ctx, true);
}

char LICENSE[] SEC("license") = "GPL";
