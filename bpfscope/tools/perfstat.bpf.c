// SPDX-License-Identifier: GPL-2.0
/* perfstat: perf event counts per process and cgroup.
 *
 * Two ways to attribute a system-wide, per-CPU perf event to the task that caused it:
 *
 * read mode (default): counting events, one per CPU and event, in the `counters` perf event
 *   array (slot = event * nr_cpus + cpu). At every sched_switch the program reads the CPU's
 *   counters with bpf_perf_event_read_value() and adds what they moved since the last switch-in
 *   to the task going off the CPU (current == prev at that point). The cost is per context
 *   switch, nothing per counted event; hardware and software counters alike, clocks included.
 *   context-switches are counted +1 per sched_switch for prev: the kernel bumps its own
 *   context-switches counter after this tracepoint, which would credit the next task.
 *
 * sample mode: each event samples with a period (1 = every occurrence); the program attached
 *   to event i adds the period to the current task's counts[i]. One program run per sample.
 */
#include "bpfscope.bpf.h"
#include "cgroup_filter.bpf.h"

#define MAX_EVENTS 8

const volatile __u32 nr_events = 0;
const volatile __u32 nr_cpus = 1;		/* slots per event in `counters` */
const volatile __u32 targ_tgid = 0;		/* -p */
const volatile __u32 switch_event = MAX_EVENTS;	/* read mode: index counted per sched_switch */
const volatile __u32 scaled_mask = 0;		/* read mode: events that may be multiplexed (hardware) */

struct stat_key {
	__u32 tgid;
	__u32 _pad;
	__u64 cgroup_id;
};

struct stat_counts {
	__u64 values[MAX_EVENTS];
	char comm[TASK_COMM_LEN];
};

/* What a CPU's counters read at the last switch-in (read mode). */
struct stat_cpu {
	__u64 counter[MAX_EVENTS];
	__u64 enabled[MAX_EVENTS];
	__u64 running[MAX_EVENTS];
	__u32 valid;			/* a baseline was read on this CPU */
	__u32 owner;			/* tid switched in when it was read */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct stat_key);
	__type(value, struct stat_counts);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 1);		/* nr_events * nr_cpus, set before load */
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stat_cpu);
} cpu_states SEC(".maps");

__u64 read_errors = 0;		/* bpf_perf_event_read_value() failures */
__u64 scaled_slices = 0;	/* slices whose counts were scaled for multiplexing */
__u64 untraced_switches = 0;	/* a task left a CPU it was not seen entering */

static __always_inline bool task_wanted(void)
{
	if (targ_tgid && current_tgid() != targ_tgid)
		return false;
	return cgroup_allowed();
}

/* The current task's counts (created on first use); NULL when the map is full. The caller
 * stores the task's name (the latest: exec renames). */
static __always_inline struct stat_counts *current_counts(void)
{
	struct stat_key k = {.tgid = current_tgid(), .cgroup_id = bpf_get_current_cgroup_id()};
	struct stat_counts *c = bpf_map_lookup_elem(&stats, &k);

	if (!c) {
		struct stat_counts zero = {};

		bpf_map_update_elem(&stats, &k, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&stats, &k);
		if (!c) {
			__sync_fetch_and_add(&lost_events, 1);
			return NULL;
		}
	}
	return c;
}

/* --------------------------------------------------------------------------------- read mode */
/* Cost per context switch (bench/perfstat.py, BPF run time on the test VM): ~200 ns, plus
 * ~70-90 ns per software counter read with bpf_perf_event_read(). Hardware counters are read
 * with bpf_perf_event_read_value() (~50 ns more: it reads the clock too) for the
 * enabled/running times that multiplexing needs.
 *
 * The counters are read at every switch, also with -p: a task can come onto a CPU without a
 * sched_switch event (some kernels switch to and from certain threads without the tracepoint;
 * the test VM's init does), and only a baseline taken at the last traced switch still bounds
 * its slice. Such a slice (noticed because the task leaving is not the one that was seen
 * entering) is credited to the task leaving, and counted in untraced_switches. */
static __always_inline int on_switch(struct task_struct *prev, struct task_struct *next, bool btf)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();
	struct stat_cpu *st = bpf_map_lookup_elem(&cpu_states, &zero);
	struct stat_counts *c = NULL;

	if (!st)
		return 0;
	if (st->valid && st->owner != current_tid())
		__sync_fetch_and_add(&untraced_switches, 1);
	if (task_wanted()) {
		c = current_counts();
		if (c) {
			if (btf) /* tp_btf: direct loads from the task, no helper call */
				__builtin_memcpy(c->comm, prev->comm, TASK_COMM_LEN);
			else
				bpf_get_current_comm(c->comm, sizeof(c->comm));
		}
	}
	for (__u32 i = 0; i < MAX_EVENTS; i++) {
		struct bpf_perf_event_value v = {};
		__u64 slot = (__u64)i * nr_cpus + cpu, delta, enabled, running;

		if (i >= nr_events)
			break;
		if (i == switch_event) {
			if (c)
				__sync_fetch_and_add(&c->values[i], 1);
			continue;
		}
		if (scaled_mask & (1U << i)) {
			if (bpf_perf_event_read_value(&counters, slot, &v, sizeof(v)))
				goto read_error;
		} else {
			v.counter = bpf_perf_event_read(&counters, slot);
			if ((__s64)v.counter < 0 && (__s64)v.counter >= -4095)
				goto read_error;
		}
		if (c && st->valid) {
			delta = v.counter - st->counter[i];
			enabled = v.enabled - st->enabled[i];
			running = v.running - st->running[i];
			if (running && running < enabled) {
				/* multiplexed hardware counter: scale by enabled/running (16.16 fixed point) */
				delta = (delta * ((enabled << 16) / running)) >> 16;
				__sync_fetch_and_add(&scaled_slices, 1);
			}
			if (delta)
				__sync_fetch_and_add(&c->values[i], delta);
		}
		st->counter[i] = v.counter;
		st->enabled[i] = v.enabled;
		st->running[i] = v.running;
	}
	st->valid = 1;
	st->owner = btf ? next->pid : BPF_CORE_READ(next, pid);
	return 0;
read_error:
	__sync_fetch_and_add(&read_errors, 1);
	st->valid = 0;
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(read_switch_btf, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return on_switch(prev, next, true);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(read_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return on_switch(prev, next, false);
}

/* ------------------------------------------------------------------------------- sample mode */
static __always_inline int on_sample(struct bpf_perf_event_data *ctx, __u32 i)
{
	struct stat_counts *c;

	if (!task_wanted())
		return 0;
	c = current_counts();
	if (!c)
		return 0;
	bpf_get_current_comm(c->comm, sizeof(c->comm));
	__sync_fetch_and_add(&c->values[i & (MAX_EVENTS - 1)], ctx->sample_period);
	return 0;
}

/* One program per event slot: the program tells which event a sample belongs to. */
#define SAMPLE_PROG(i)                                                     \
	SEC("perf_event")                                                  \
	int sample_##i(struct bpf_perf_event_data *ctx)                    \
	{                                                                  \
		return on_sample(ctx, i);                                  \
	}

SAMPLE_PROG(0)
SAMPLE_PROG(1)
SAMPLE_PROG(2)
SAMPLE_PROG(3)
SAMPLE_PROG(4)
SAMPLE_PROG(5)
SAMPLE_PROG(6)
SAMPLE_PROG(7)

char LICENSE[] SEC("license") = "GPL";
