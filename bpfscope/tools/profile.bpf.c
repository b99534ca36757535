// SPDX-License-Identifier: GPL-2.0
/* profile: a perf_event program run on every sample of the chosen event (cpu-clock,
 * cycles...) on every CPU; counts samples per (process, user stack, kernel stack, comm). */
#include "_stacks.bpf.h"
#include "_id_filter.bpf.h"
#include "cgroup_filter.bpf.h"

const volatile bool include_idle = false; /* -I */

ID_FILTER(pids) /* -p */
ID_FILTER(tids) /* -L */

SEC("perf_event")
int do_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;

	if (!include_idle && tid == 0)
		return 0;
	if (!pids_allowed(tgid) || !tids_allowed(tid))
		return 0;
	if (!cgroup_allowed())
		return 0;

	count_current(ctx, tgid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
