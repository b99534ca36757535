// SPDX-License-Identifier: GPL-2.0
/* funclatency: time from a function's entry to its return, as log2 histograms built in the kernel.
 *
 * Targets and hooks (user space loads only the chosen mode's programs):
 *   kernel function   fentry_N/fexit_N slots (target set before load), or kprobe/kretprobe
 *   user function     uprobe/uretprobe
 *   system call       per-syscall tracepoints, or one tp_btf / raw_tp sys_enter+sys_exit pair
 *                     filtered by syscall number
 * The function number (1..n) comes from the slot (fentry), the attach cookie (kprobe, uprobe)
 * or the syscall_funcs map (syscalls).
 *
 * Start times live in task-local storage: a small stack of frames per task, so recursion is
 * timed level by level and a return whose entry was not seen (a call already in flight at
 * attach time) finds no frame of its own and is ignored.  User functions also match returns
 * by stack pointer, which drops frames a longjmp() or a C++ exception skipped.
 */
#include "task.bpf.h"
#include "_task_filter.bpf.h"

#define MAX_FUNCS 20        /* histograms (per function with -F) and fentry slots */
#define MAX_DEPTH 16        /* nested timed calls per task */
#define MAX_SYSCALLS 512    /* syscall numbers mapped by syscall_funcs */

const volatile __u64 unit_div = 1;      /* nsecs 1, usecs 1000, msecs 1000000 */
const volatile bool per_func = false;   /* -F: one histogram per function */
const volatile bool match_sp = false;   /* uprobes: pair returns with entries by stack pointer */

struct frame {
	__u64 ts;
	__u64 sp;
	__u32 func;
	__u32 _pad;
};

struct calls {
	__u32 depth;     /* frames in use */
	__u32 overflow;  /* nested calls beyond MAX_DEPTH (not timed; kernel functions only) */
	struct frame f[MAX_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct calls);
} calls SEC(".maps");

/* Never cleared: user space reads the totals and prints differences (no update is lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_FUNCS);
	__type(key, __u32);
	__type(value, struct hist);
} hists SEC(".maps");

/* syscall number -> function number (0: not traced) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SYSCALLS);
	__type(key, __u32);
	__type(value, __u32);
} syscall_funcs SEC(".maps");

static __always_inline void record(__u32 func, __u64 delta_ns)
{
	__u32 key = per_func ? func - 1 : 0, slot;
	struct hist *h;

	if (key >= MAX_FUNCS)
		return;
	h = bpf_map_lookup_elem(&hists, &key);
	if (!h)
		return;
	slot = log2_slot(delta_ns / unit_div);
	barrier_var(slot);  /* keep the mask for the 6.1 verifier (see hist_add) */
	__sync_fetch_and_add(&h->slots[slot & (MAX_SLOTS - 1)], 1);
	__sync_fetch_and_add(&h->sum, delta_ns);  /* nanoseconds, whatever the unit */
}

/* ---- functions (kernel and user) ------------------------------------------------ */

static __always_inline void on_entry(__u32 func, __u64 sp)
{
	struct calls *c;
	__u32 d;

	if (!traced_task())
		return;
	c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c) {
		__sync_fetch_and_add(&lost_events, 1);
		return;
	}
	d = c->depth;
	if (match_sp) {
		/* frames at or below this call's stack pointer belong to calls that are gone */
		for (int i = 0; i < MAX_DEPTH; i++) {
			if (d == 0 || d > MAX_DEPTH || c->f[(d - 1) & (MAX_DEPTH - 1)].sp > sp)
				break;
			d--;
		}
	}
	if (d >= MAX_DEPTH) {
		c->depth = MAX_DEPTH;
		if (!match_sp)
			c->overflow++;
		__sync_fetch_and_add(&lost_events, 1);
		return;
	}
	c->f[d].sp = sp;
	c->f[d].func = func;
	c->depth = d + 1;
	c->f[d].ts = bpf_ktime_get_ns();
}

static __always_inline void on_return(__u32 func, __u64 sp)
{
	__u64 now = bpf_ktime_get_ns();
	struct frame *fr;
	struct calls *c;
	__u32 d;

	if (!traced_tgid())
		return;
	c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0, 0);
	if (!c)
		return;
	if (c->overflow) {
		c->overflow--;
		return;
	}
	d = c->depth;
	if (match_sp) {
		/* x86-64: the return popped the return address, so the entry saw sp - 8 */
		__u64 entry_sp = sp - 8;

		for (int i = 0; i < MAX_DEPTH; i++) {
			if (d == 0 || d > MAX_DEPTH || c->f[(d - 1) & (MAX_DEPTH - 1)].sp >= entry_sp)
				break;
			d--;  /* deeper frame whose return never came (longjmp, exception) */
		}
		c->depth = d;
		if (d == 0 || d > MAX_DEPTH || c->f[(d - 1) & (MAX_DEPTH - 1)].sp != entry_sp)
			return;  /* no entry seen for this call */
	}
	if (d == 0 || d > MAX_DEPTH)
		return;
	fr = &c->f[(d - 1) & (MAX_DEPTH - 1)];
	if (fr->func != func)
		return;  /* a return whose entry was not seen (attach window) */
	c->depth = d - 1;
	record(func, now - fr->ts);
}

#define FUNC_SLOT(n)                                            \
	SEC("fentry")                                           \
	int BPF_PROG(fentry_##n) { on_entry(n + 1, 0); return 0; } \
	SEC("fexit")                                            \
	int BPF_PROG(fexit_##n) { on_return(n + 1, 0); return 0; }

FUNC_SLOT(0)  FUNC_SLOT(1)  FUNC_SLOT(2)  FUNC_SLOT(3)  FUNC_SLOT(4)
FUNC_SLOT(5)  FUNC_SLOT(6)  FUNC_SLOT(7)  FUNC_SLOT(8)  FUNC_SLOT(9)
FUNC_SLOT(10) FUNC_SLOT(11) FUNC_SLOT(12) FUNC_SLOT(13) FUNC_SLOT(14)
FUNC_SLOT(15) FUNC_SLOT(16) FUNC_SLOT(17) FUNC_SLOT(18) FUNC_SLOT(19)

SEC("kprobe")
int kprobe_entry(struct pt_regs *ctx)
{
	on_entry(bpf_get_attach_cookie(ctx), 0);
	return 0;
}

SEC("kretprobe")
int kprobe_return(struct pt_regs *ctx)
{
	on_return(bpf_get_attach_cookie(ctx), 0);
	return 0;
}

SEC("uprobe")
int uprobe_entry(struct pt_regs *ctx)
{
	on_entry(bpf_get_attach_cookie(ctx), PT_REGS_SP(ctx));
	return 0;
}

SEC("uretprobe")
int uprobe_return(struct pt_regs *ctx)
{
	on_return(bpf_get_attach_cookie(ctx), PT_REGS_SP(ctx));
	return 0;
}

/* ---- system calls ------------------------------------------------------------------ */

static __always_inline __u32 syscall_func(long id)
{
	__u32 nr = id, *func;

	if (id < 0 || id >= MAX_SYSCALLS)
		return 0;
	func = bpf_map_lookup_elem(&syscall_funcs, &nr);
	return func ? *func : 0;
}

/* One call at a time per task: frame 0 holds it. */
static __always_inline void sys_entry(__u32 func)
{
	struct calls *c;

	if (!func || !traced_task())
		return;
	c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c) {
		__sync_fetch_and_add(&lost_events, 1);
		return;
	}
	c->f[0].func = func;
	c->depth = 1;
	c->f[0].ts = bpf_ktime_get_ns();
}

static __always_inline void sys_return(__u32 func, __u64 now)
{
	struct calls *c;

	if (!func)
		return;
	if (!traced_tgid())
		return;
	c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0, 0);
	if (!c || c->depth != 1 || c->f[0].func != func)
		return;  /* entry not seen: the call was in flight at attach time */
	c->depth = 0;
	record(func, now - c->f[0].ts);
}

/* Per-syscall tracepoint records carry an int nr (raw_syscalls' long id would read padding). */
SEC("tracepoint/syscalls/sys_enter_read")
int tp_sys_enter(struct syscall_trace_enter *ctx)
{
	sys_entry(syscall_func(ctx->nr));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int tp_sys_exit(struct syscall_trace_exit *ctx)
{
	__u64 now = bpf_ktime_get_ns();

	sys_return(syscall_func(ctx->nr), now);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(btf_sys_enter, struct pt_regs *regs, long id)
{
	__u32 func = syscall_func(id);

	if (func && !compat_task())
		sys_entry(func);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(btf_sys_exit, struct pt_regs *regs, long ret)
{
	__u64 now = bpf_ktime_get_ns();

	sys_return(syscall_func(regs->orig_ax), now);
	return 0;
}

SEC("raw_tp/sys_enter")
int BPF_PROG(raw_sys_enter, struct pt_regs *regs, long id)
{
	__u32 func = syscall_func(id);

	if (func && !compat_task())
		sys_entry(func);
	return 0;
}

SEC("raw_tp/sys_exit")
int BPF_PROG(raw_sys_exit, struct pt_regs *regs, long ret)
{
	__u64 now = bpf_ktime_get_ns();

	sys_return(syscall_func(BPF_CORE_READ(regs, orig_ax)), now);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
