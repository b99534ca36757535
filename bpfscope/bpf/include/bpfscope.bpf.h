/* Shared BPF helpers for bpfscope tools: filters, log2 slots, event reservation with loss count. */
#ifndef __BPFSCOPE_BPF_H
#define __BPFSCOPE_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define TASK_COMM_LEN 16
#define MAX_SLOTS 64

/* Events the BPF side could not hand over (ring buffer full). Read live by user space. */
__u64 lost_events = 0;

static __always_inline void *reserve_event(void *rb, __u64 size)
{
	void *e = bpf_ringbuf_reserve(rb, size, 0);
	if (!e)
		__sync_fetch_and_add(&lost_events, 1);
	return e;
}

static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;
	r = (v > 0xFFFF) << 4; v >>= r;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/* Slot i holds values in [2^i, 2^(i+1)); slot 0 holds 0 and 1 (as BCC's log2 histograms). */
static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 hi = v >> 32;
	__u32 slot = hi ? log2_u32(hi) + 32 : log2_u32((__u32)v);
	return slot < MAX_SLOTS ? slot : MAX_SLOTS - 1;
}

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

static __always_inline __u32 current_tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

/* A log2 histogram value: one atomic add per event into slots[log2_slot(v)].
 * Python reads it with bpfscope.histograms (struct hist from the object's BTF). */
struct hist {
	__u64 slots[MAX_SLOTS];
	__u64 sum;
};

static __always_inline void hist_add(struct hist *h, __u64 value)
{
	__u32 slot = log2_slot(value);
	/* Keep the mask: clang drops it (log2_slot clamps already), and the 6.1 verifier cannot
	 * see that clamp ("R2 unbounded memory access"). */
	barrier_var(slot);
	__sync_fetch_and_add(&h->slots[slot & (MAX_SLOTS - 1)], 1);
	__sync_fetch_and_add(&h->sum, value);
}

#endif /* __BPFSCOPE_BPF_H */
