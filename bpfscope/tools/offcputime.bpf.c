// SPDX-License-Identifier: GPL-2.0
/* offcputime: time each thread spends off CPU, by the stacks it blocked in.
 *
 * sched_switch, prev going off CPU: remember when, and its user + kernel stacks (taken now,
 * while prev is still current). next coming back on CPU: add now - then to
 * counts[(tgid, tid, stacks, comm)]. The start record lives in task-local storage (tp_btf
 * mode) or in a tid-keyed hash (raw_tp mode, for kernels without tp_btf/task storage). */
#include "_stacks.bpf.h"
#include "_id_filter.bpf.h"
#include "task.bpf.h"

#define PF_KTHREAD 0x00200000

const volatile bool user_threads_only = false;   /* -u */
const volatile bool kernel_threads_only = false; /* -k */
const volatile bool filter_state = false;        /* --state given */
const volatile __u64 state = 0;                  /* --state: 0 = was running (preempted), else a bit mask */
const volatile __u64 min_block_ns = 1000;        /* -m */
const volatile __u64 max_block_ns = ~0ULL;       /* -M */

struct offcpu_start {
	__u64 ts;
	struct stack_key key;
};

ID_FILTER(pids) /* -p */
ID_FILTER(tids) /* -t */

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_start);
} start_store SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct offcpu_start);
} start_hash SEC(".maps");

static __always_inline bool record_allowed(struct task_struct *prev, __u32 tid, __u32 tgid)
{
	__u32 flags;

	if (tid == 0) /* the idle task: its "off-CPU" time is the CPU's busy time */
		return false;
	if (!pids_allowed(tgid) || !tids_allowed(tid))
		return false;
	if (user_threads_only || kernel_threads_only) {
		flags = BPF_CORE_READ(prev, flags);
		if (user_threads_only && (flags & PF_KTHREAD))
			return false;
		if (kernel_threads_only && !(flags & PF_KTHREAD))
			return false;
	}
	if (filter_state) {
		__u64 s = task_state(prev);

		if (state == 0 ? s != 0 : !(s & state))
			return false;
	}
	return true;
}

/* prev goes off CPU (it is still current: bpf_get_stackid sees its stacks). */
static __always_inline void fill_start(void *ctx, struct offcpu_start *s, __u32 tid, __u32 tgid)
{
	s->key.pid = tgid;
	s->key.tid = tid;
	bpf_get_current_comm(&s->key.comm, sizeof(s->key.comm));
	fill_stacks(ctx, &s->key);
	s->ts = bpf_ktime_get_ns();
}

/* next comes back: account the time since it went off CPU. */
static __always_inline void account(struct task_struct *next, struct offcpu_start *s, __u64 now)
{
	struct stack_key key;
	__u64 delta;

	if (!s->ts || now < s->ts)
		return;
	delta = now - s->ts;
	s->ts = 0;
	if (delta < min_block_ns || delta > max_block_ns)
		return;
	key = s->key;
	count_stack(&key, delta);
	if (!kernel_stacks_only)
		note_task(next, key.pid);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(offcpu_btf, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 tid = BPF_CORE_READ(prev, pid), tgid = BPF_CORE_READ(prev, tgid);
	struct offcpu_start *s;

	if (record_allowed(prev, tid, tgid)) {
		s = bpf_task_storage_get(&start_store, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (s)
			fill_start(ctx, s, tid, tgid);
	}
	s = bpf_task_storage_get(&start_store, next, 0, 0);
	if (s)
		account(next, s, bpf_ktime_get_ns());
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(offcpu_raw, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 tid = BPF_CORE_READ(prev, pid), tgid = BPF_CORE_READ(prev, tgid);
	struct offcpu_start start = {}, *s;

	if (record_allowed(prev, tid, tgid)) {
		fill_start(ctx, &start, tid, tgid);
		bpf_map_update_elem(&start_hash, &tid, &start, BPF_ANY);
	}
	tid = BPF_CORE_READ(next, pid);
	s = bpf_map_lookup_elem(&start_hash, &tid);
	if (s) {
		account(next, s, bpf_ktime_get_ns());
		bpf_map_delete_elem(&start_hash, &tid);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
