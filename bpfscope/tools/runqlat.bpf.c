// SPDX-License-Identifier: GPL-2.0
/* runqlat: run queue (scheduler) latency as a log2 histogram: time from a task becoming
 * runnable (sched_wakeup, sched_wakeup_new, or preempted while runnable in sched_switch)
 * until it runs (sched_switch's next).
 *
 *   btf_*  tp_btf: typed task pointers; the enqueue time lives in task-local storage
 *          (no hash update + delete per event);
 *   raw_*  raw_tp: CO-RE probe reads; enqueue time in a hash keyed by thread id.
 */
#include "task.bpf.h"

#define TASK_RUNNING 0

const volatile bool targ_per_process = false; /* -P: key by tgid */
const volatile bool targ_per_thread = false;  /* -L: key by tid */
const volatile bool targ_ms = false;          /* -m */
const volatile __u32 targ_tgid = 0;           /* -p */

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} start_ts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __u64);
} start_hash SEC(".maps");

/* key: tgid (-P), tid (-L) or 0 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct hist);
} hists SEC(".maps");

/* A preempted task stays on the run queue whatever its state says; otherwise only a
 * task still TASK_RUNNING when switched out is waiting to run again. */
static __always_inline bool still_runnable(bool preempt, struct task_struct *prev)
{
	return preempt || task_state(prev) == TASK_RUNNING;
}

static __always_inline bool wanted(struct task_struct *p, __u32 *tid)
{
	*tid = BPF_CORE_READ(p, pid);
	if (!*tid) /* the idle task */
		return false;
	return !targ_tgid || BPF_CORE_READ(p, tgid) == targ_tgid;
}

static __always_inline void record(struct task_struct *p, __u32 tid, __u64 delta_ns)
{
	static const struct hist zero;
	__u32 key = 0;
	struct hist *h;

	if (targ_per_process)
		key = BPF_CORE_READ(p, tgid);
	else if (targ_per_thread)
		key = tid;
	h = bpf_map_lookup_elem(&hists, &key);
	if (!h) {
		bpf_map_update_elem(&hists, &key, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &key);
		if (!h)
			return;
	}
	hist_add(h, targ_ms ? delta_ns / 1000000 : delta_ns / 1000);
}

/* wakeup, wakeup_new and switch programs (PREFIX_*) of one hook type over one start store */
#define SCHED_PROGS(prefix, type, enqueue, dequeue)                                                  \
	SEC(type "/sched_wakeup")                                                                   \
	int BPF_PROG(prefix##_wakeup, struct task_struct *p)                                        \
	{                                                                                           \
		enqueue(p);                                                                         \
		return 0;                                                                           \
	}                                                                                           \
	SEC(type "/sched_wakeup_new")                                                               \
	int BPF_PROG(prefix##_wakeup_new, struct task_struct *p)                                    \
	{                                                                                           \
		enqueue(p);                                                                         \
		return 0;                                                                           \
	}                                                                                           \
	SEC(type "/sched_switch")                                                                   \
	int BPF_PROG(prefix##_switch, bool preempt, struct task_struct *prev, struct task_struct *next) \
	{                                                                                           \
		if (still_runnable(preempt, prev))                                                  \
			enqueue(prev);                                                              \
		dequeue(next);                                                                      \
		return 0;                                                                           \
	}

/* ---- tp_btf + task storage ---- */
static __always_inline void ts_enqueue(struct task_struct *p)
{
	__u32 tid;
	__u64 *ts;

	if (!wanted(p, &tid))
		return;
	ts = bpf_task_storage_get(&start_ts, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ts)
		*ts = bpf_ktime_get_ns();
	else
		__sync_fetch_and_add(&lost_events, 1);
}

static __always_inline void ts_dequeue(struct task_struct *p)
{
	__u64 *ts, delta;
	__u32 tid;

	if (!wanted(p, &tid))
		return;
	ts = bpf_task_storage_get(&start_ts, p, 0, 0);
	if (!ts || !*ts)
		return;
	delta = bpf_ktime_get_ns() - *ts;
	*ts = 0;
	record(p, tid, delta);
}

SCHED_PROGS(btf, "tp_btf", ts_enqueue, ts_dequeue)

/* ---- raw_tp + hash ---- */
static __always_inline void hash_enqueue(struct task_struct *p)
{
	__u64 ts;
	__u32 tid;

	if (!wanted(p, &tid))
		return;
	ts = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&start_hash, &tid, &ts, BPF_ANY))
		__sync_fetch_and_add(&lost_events, 1);
}

static __always_inline void hash_dequeue(struct task_struct *p)
{
	__u64 *ts, delta;
	__u32 tid;

	if (!wanted(p, &tid))
		return;
	ts = bpf_map_lookup_elem(&start_hash, &tid);
	if (!ts)
		return;
	delta = bpf_ktime_get_ns() - *ts;
	bpf_map_delete_elem(&start_hash, &tid);
	record(p, tid, delta);
}

SCHED_PROGS(raw, "raw_tp", hash_enqueue, hash_dequeue)

char LICENSE[] SEC("license") = "GPL";
