// SPDX-License-Identifier: GPL-2.0
/* cgnet: packets and bytes per cgroup, both directions, from cgroup_skb programs attached once
 * at the cgroup v2 root (BPF links: they coexist with every other program attached there).
 *
 * Bytes are L3 bytes as they cross the wire: skb->len at cgroup_skb (the IP header onwards, both
 * directions) with GSO/GRO aggregates expanded to their segments (each segment carries the IP and
 * TCP/UDP headers again). Packets are wire packets: gso_segs of an aggregate, else 1.
 *
 * The programs never drop: they always return 1 (allow).
 */
#include "bpfscope.bpf.h"

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

struct counters {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

/* cgroup id -> counters. Per CPU, so a packet costs no shared cache line; user space sums the
 * CPUs (each CPU's value only grows, so the sum is monotonic). No preallocation: memory follows
 * the live cgroups, not max_entries x CPUs. Bounded: user space deletes the entries of removed
 * cgroups; when full, packets of new cgroups are counted in lost_events. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct counters);
} cgroup_counters SEC(".maps");

#define CGROUP_PATH_LEN 256

/* what the rmdir tracepoint knows of a removed cgroup: user space may never have seen its path */
struct removed_cgroup {
	__u64 ts_ns;
	char path[CGROUP_PATH_LEN]; /* from the hierarchy's root */
};

/* cgroup v2 cgroups removed (rmdir) since user space last looked. Preallocated: the raw
 * tracepoint program must not touch run-time allocated maps (kernels before 6.1 warn about it,
 * which is also why it does not look at cgroup_counters; user space ignores ids it never counted). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2048);
	__type(key, __u64);
	__type(value, struct removed_cgroup);
} removed_cgroups SEC(".maps");

/* removals that did not fit in removed_cgroups: user space then checks every id itself */
__u64 removed_overflow = 0;

static __always_inline __u64 wire_bytes(struct __sk_buff *skb, __u32 segs)
{
	__u64 len = skb->len;
	__u8 b, proto;
	__u32 l3, l4 = 0;

	if (segs <= 1)
		return len;
	/* data starts at the network header in both directions */
	if (bpf_skb_load_bytes(skb, 0, &b, 1))
		return len;
	if ((b >> 4) == 4) {
		l3 = (b & 0x0f) * 4;
		if (bpf_skb_load_bytes(skb, 9, &proto, 1))
			return len;
	} else if ((b >> 4) == 6) {
		l3 = 40;
		if (bpf_skb_load_bytes(skb, 6, &proto, 1))
			return len;
	} else {
		return len;
	}
	if (proto == IPPROTO_TCP_) {
		if (bpf_skb_load_bytes(skb, l3 + 12, &b, 1))
			return len;
		l4 = (b >> 4) * 4;
	} else if (proto == IPPROTO_UDP_) {
		l4 = 8;
	}
	return len + (__u64)(segs - 1) * (l3 + l4);
}

static __always_inline void account(struct __sk_buff *skb, bool ingress)
{
	__u64 id = bpf_skb_cgroup_id(skb);
	struct counters *c = bpf_map_lookup_elem(&cgroup_counters, &id);
	__u32 segs;
	__u64 bytes;

	if (!c) {
		struct counters zero = {};

		bpf_map_update_elem(&cgroup_counters, &id, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&cgroup_counters, &id);
		if (!c) {
			__sync_fetch_and_add(&lost_events, 1);
			return;
		}
	}
	segs = skb->gso_segs;
	if (!segs)
		segs = 1;
	bytes = wire_bytes(skb, segs);
	/* atomic: a softirq can interrupt a task's egress on the same CPU */
	if (ingress) {
		__sync_fetch_and_add(&c->rx_packets, segs);
		__sync_fetch_and_add(&c->rx_bytes, bytes);
	} else {
		__sync_fetch_and_add(&c->tx_packets, segs);
		__sync_fetch_and_add(&c->tx_bytes, bytes);
	}
}

SEC("cgroup_skb/ingress")
int cgnet_ingress(struct __sk_buff *skb)
{
	account(skb, true);
	return 1;
}

SEC("cgroup_skb/egress")
int cgnet_egress(struct __sk_buff *skb)
{
	account(skb, false);
	return 1;
}

/* cgroup removed: tell user space, which reports the final counters once and drops the entry */
SEC("raw_tp/cgroup_rmdir")
int BPF_PROG(cgnet_rmdir, struct cgroup *cgrp, const char *path)
{
	__u64 id = BPF_CORE_READ(cgrp, kn, id);
	struct removed_cgroup r = {};

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0; /* a cgroup v1 hierarchy: ids of another tree */
	r.ts_ns = bpf_ktime_get_ns();
	bpf_probe_read_kernel_str(r.path, sizeof(r.path), path);
	if (bpf_map_update_elem(&removed_cgroups, &id, &r, BPF_ANY))
		__sync_fetch_and_add(&removed_overflow, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
