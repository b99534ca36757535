/* Task helpers: a task's scheduler state on any kernel, and whether the current task is a
 * 32-bit (compat) one. */
#ifndef __BPFSCOPE_TASK_BPF_H
#define __BPFSCOPE_TASK_BPF_H

#include "bpfscope.bpf.h"

#define X86_TS_COMPAT 0x0002

/* task_struct->state became __state in 5.14 */
struct task_struct___pre514 {
	volatile long state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)t, state);
}

/* tp_btf/raw_tp sys_enter and sys_exit see 32-bit tasks' calls with their own numbering
 * (syscall tracepoints skip them). */
static __always_inline bool compat_task(void)
{
	struct task_struct *t = bpf_get_current_task_btf();

	if (!bpf_core_field_exists(t->thread_info.status))
		return false;
	return BPF_CORE_READ(t, thread_info.status) & X86_TS_COMPAT;
}

#endif /* __BPFSCOPE_TASK_BPF_H */
