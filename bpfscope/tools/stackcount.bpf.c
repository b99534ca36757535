// SPDX-License-Identifier: GPL-2.0
/* stackcount: count the stacks that reach an event. One program per hook type (tracepoint,
 * uprobe, kprobe, fentry, perf_event), all sharing record(); user space loads and attaches
 * the one the PATTERN asks for. */
#include "_stacks.bpf.h"
#include "_id_filter.bpf.h"

ID_FILTER(pids) /* -p */

static __always_inline int record(void *ctx)
{
	__u32 tgid = current_tgid();

	if (pids_allowed(tgid))
		count_current(ctx, tgid);
	return 0;
}

SEC("tracepoint")
int sc_tracepoint(void *ctx)
{
	return record(ctx);
}

SEC("uprobe")
int sc_uprobe(struct pt_regs *ctx)
{
	return record(ctx);
}

SEC("kprobe")
int sc_kprobe(struct pt_regs *ctx)
{
	return record(ctx);
}

SEC("fentry")
int sc_fentry(__u64 *ctx)
{
	return record(ctx);
}

/* sw:EVENT / hw:EVENT: a sample every PERIOD events on each CPU; the stacks are those of the
 * task the event happened in (the fault's user stack ends in the faulting function). */
SEC("perf_event")
int sc_perf_event(struct bpf_perf_event_data *ctx)
{
	return record(ctx);
}

char LICENSE[] SEC("license") = "GPL";
