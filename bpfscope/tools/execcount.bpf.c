// SPDX-License-Identifier: GPL-2.0
/* execcount: successful exec()s counted by the new command name (sched:sched_process_exec). */
#include "bpfscope.bpf.h"
#include "cgroup_filter.bpf.h"

struct comm_key {
	char comm[TASK_COMM_LEN];
};

/* comm -> execs. Execs are rare enough (thousands per second at most) for one shared counter
 * per comm; user space folds names it does not export into "other" and deletes them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct comm_key);
	__type(value, __u64);
} exec_counts SEC(".maps");

/* execs whose comm found no room in exec_counts: user space counts them as "other" */
__u64 unkeyed_execs = 0;

SEC("raw_tp/sched_process_exec")
int BPF_PROG(execcount_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct comm_key key = {};
	__u64 one = 1, *count;

	if (!cgroup_allowed())
		return 0;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	count = bpf_map_lookup_elem(&exec_counts, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return 0;
	}
	if (bpf_map_update_elem(&exec_counts, &key, &one, BPF_NOEXIST) == 0)
		return 0;
	count = bpf_map_lookup_elem(&exec_counts, &key); /* another CPU inserted it meanwhile */
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		__sync_fetch_and_add(&unkeyed_execs, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
