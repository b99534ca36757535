/* Cgroup filter for tools that take --cgroup / --namespace / --pod / --selector.
 *
 * User space (bpfscope.k8s.filters.CgroupFilter) sets filter_cgroup and filter_cgroup_levels
 * before load and puts the ids of the selected cgroups in cgroup_filter after load. An event
 * passes when its cgroup, or one of its ancestors, is selected: a pod's cgroup selects all its
 * containers, also ones started later. Only the levels that hold a target are looked up. */
#ifndef __BPFSCOPE_CGROUP_FILTER_BPF_H
#define __BPFSCOPE_CGROUP_FILTER_BPF_H

#define CGROUP_FILTER_MAX_LEVEL 32

const volatile bool filter_cgroup = false;
const volatile __u64 filter_cgroup_levels = 0; /* bit L: some selected cgroup sits at level L */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

/* The current task's cgroup (task context: tracepoints, kprobes, uprobes, fentry...). */
static __always_inline bool cgroup_allowed(void)
{
	if (!filter_cgroup)
		return true;
	for (int level = 0; level < CGROUP_FILTER_MAX_LEVEL; level++) {
		__u64 id;

		if (!(filter_cgroup_levels & (1ULL << level)))
			continue;
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return false; /* the task's cgroup is above this level */
		if (bpf_map_lookup_elem(&cgroup_filter, &id))
			return true;
	}
	return false;
}

/* The cgroup of a packet's socket (cgroup_skb, tc). */
static __always_inline bool cgroup_allowed_skb(struct __sk_buff *skb)
{
	if (!filter_cgroup)
		return true;
	for (int level = 0; level < CGROUP_FILTER_MAX_LEVEL; level++) {
		__u64 id;

		if (!(filter_cgroup_levels & (1ULL << level)))
			continue;
		id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!id)
			return false;
		if (bpf_map_lookup_elem(&cgroup_filter, &id))
			return true;
	}
	return false;
}

#endif /* __BPFSCOPE_CGROUP_FILTER_BPF_H */
