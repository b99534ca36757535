/* Process / thread id filters (-p, -t, -L) of the stack tools: ID_FILTER(pids) declares
 * `const volatile bool filter_pids`, a `pids` hash of the ids to keep (filled by user space,
 * bpfscope/tools/_stacks.py fill_id_filter) and pids_allowed(id). */
#ifndef __BPFSCOPE_ID_FILTER_BPF_H
#define __BPFSCOPE_ID_FILTER_BPF_H

#include "bpfscope.bpf.h"

#define ID_FILTER(name)                                                 \
	const volatile bool filter_##name = false;                      \
	struct {                                                        \
		__uint(type, BPF_MAP_TYPE_HASH);                        \
		__uint(max_entries, 1024);                              \
		__type(key, __u32);                                     \
		__type(value, __u8);                                    \
	} name SEC(".maps");                                            \
	static __always_inline bool name##_allowed(__u32 id)            \
	{                                                               \
		return !filter_##name || bpf_map_lookup_elem(&name, &id); \
	}

#endif /* __BPFSCOPE_ID_FILTER_BPF_H */
