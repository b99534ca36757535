/* -p PID and --cgroup PATH for funclatency and vfsstat: the process in targ_tgid, and the one
 * cgroup (with its descendants) that user space (bpfscope/tools/_task_filter.py) puts in slot 0
 * of cgroup_filter after load. A tool includes this or cgroup_filter.bpf.h (same names: a
 * one-cgroup array here, a hash of selected cgroup ids there). */
#ifndef __BPFSCOPE_TASK_FILTER_BPF_H
#define __BPFSCOPE_TASK_FILTER_BPF_H

#include "bpfscope.bpf.h"

const volatile __u32 targ_tgid = 0;        /* -p */
const volatile bool filter_cgroup = false; /* --cgroup: cgroup_filter[0] */

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cgroup_filter SEC(".maps");

static __always_inline bool traced_tgid(void)
{
	return !targ_tgid || current_tgid() == targ_tgid;
}

static __always_inline bool traced_task(void)
{
	if (!traced_tgid())
		return false;
	if (filter_cgroup && bpf_current_task_under_cgroup(&cgroup_filter, 0) != 1)
		return false;
	return true;
}

#endif /* __BPFSCOPE_TASK_FILTER_BPF_H */
