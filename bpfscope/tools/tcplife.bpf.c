// SPDX-License-Identifier: GPL-2.0
/* tcplife: one event per TCP session when its socket reaches TCP_CLOSE, from
 * sock:inet_sock_set_state: addresses, ports, bytes (tcp_sock via CO-RE), lifespan, pid/comm.
 *
 * Lifespan starts at the last state before FIN_WAIT1 (SYN_SENT, SYN_RECV, ESTABLISHED), as
 * BCC's tcplife. The owner is recorded in process context: on connect (CLOSE -> SYN_SENT),
 * and on the local close (-> FIN_WAIT1 or -> LAST_ACK) of passively opened sockets, whose
 * LISTEN -> SYN_RECV transition runs in softirq on behalf of whatever task was on the CPU.
 * Without either, the task current at TCP_CLOSE is reported, as BCC does.
 */
#include "bpfscope.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define MAX_PORTS 8

enum {
	TCP_ESTABLISHED_ = 1, TCP_SYN_SENT_, TCP_SYN_RECV_, TCP_FIN_WAIT1_, TCP_FIN_WAIT2_,
	TCP_TIME_WAIT_, TCP_CLOSE_, TCP_CLOSE_WAIT_, TCP_LAST_ACK_, TCP_LISTEN_, TCP_CLOSING_,
};

const volatile __u32 targ_tgid = 0;             /* -p */
const volatile __u16 targ_family = 0;           /* -4 / -6 */
const volatile __u16 targ_lports[MAX_PORTS] = {}; /* -L */
const volatile __u16 targ_rports[MAX_PORTS] = {}; /* -D */

struct ident {
	__u32 pid;
	char comm[TASK_COMM_LEN];
};

struct event {
	__u64 ts_ns;        /* at TCP_CLOSE */
	__u64 span_ns;
	__u64 rx_bytes;     /* tcp_sock.bytes_received */
	__u64 tx_bytes;     /* tcp_sock.bytes_acked */
	__u32 pid;
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 owner_known;  /* pid/comm recorded in process context (else: task at close) */
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[TASK_COMM_LEN];
};

const struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} birth SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ident);
} idents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

static __always_inline bool port_ok(const volatile __u16 *ports, __u16 port)
{
	if (!ports[0])
		return true;
	for (int i = 0; i < MAX_PORTS; i++) {
		if (!ports[i])
			return false;
		if (ports[i] == port)
			return true;
	}
	return false;
}

static __always_inline void remember_owner(__u64 skp)
{
	struct ident id = {};

	id.pid = current_tgid();
	bpf_get_current_comm(id.comm, sizeof(id.comm));
	bpf_map_update_elem(&idents, &skp, &id, BPF_NOEXIST);
}

SEC("tracepoint/sock/inet_sock_set_state")
int tp_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 skp = (__u64)ctx->skaddr, *start, now;
	int newstate = ctx->newstate;
	__u16 family = ctx->family, lport = ctx->sport, rport = ctx->dport;
	struct tcp_sock *tp;
	struct ident *id;
	struct event *e;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (targ_family && family != targ_family)
		return 0;
	if (!port_ok(targ_lports, lport) || !port_ok(targ_rports, rport))
		return 0;

	if (newstate < TCP_FIN_WAIT1_) {
		now = bpf_ktime_get_ns();
		if (bpf_map_update_elem(&birth, &skp, &now, BPF_ANY))
			__sync_fetch_and_add(&lost_events, 1);
	}
	if (newstate == TCP_SYN_SENT_ || newstate == TCP_FIN_WAIT1_ || newstate == TCP_LAST_ACK_)
		remember_owner(skp);
	if (newstate != TCP_CLOSE_)
		return 0;

	start = bpf_map_lookup_elem(&birth, &skp);
	if (!start) { /* born before we attached, or a listener */
		bpf_map_delete_elem(&idents, &skp);
		return 0;
	}
	now = bpf_ktime_get_ns();
	id = bpf_map_lookup_elem(&idents, &skp);
	if (targ_tgid && (id ? id->pid : current_tgid()) != targ_tgid)
		goto cleanup;
	e = reserve_event(&events, sizeof(*e));
	if (!e)
		goto cleanup;
	e->ts_ns = now;
	e->span_ns = now - *start;
	if (id) {
		e->pid = id->pid;
		__builtin_memcpy(e->comm, id->comm, sizeof(e->comm));
		e->owner_known = 1;
	} else {
		e->pid = current_tgid();
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		e->owner_known = 0;
	}
	e->family = family;
	e->lport = lport;
	e->rport = rport;
	/* probe reads: the verifier refuses loads through a ctx pointer moved by a CO-RE offset */
	if (family == AF_INET) {
		__builtin_memset(e->laddr, 0, sizeof(e->laddr));
		__builtin_memset(e->raddr, 0, sizeof(e->raddr));
		bpf_probe_read_kernel(e->laddr, 4, ctx->saddr);
		bpf_probe_read_kernel(e->raddr, 4, ctx->daddr);
	} else {
		bpf_probe_read_kernel(e->laddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(e->raddr, 16, ctx->daddr_v6);
	}
	tp = (struct tcp_sock *)ctx->skaddr;
	e->rx_bytes = BPF_CORE_READ(tp, bytes_received);
	e->tx_bytes = BPF_CORE_READ(tp, bytes_acked);
	bpf_ringbuf_submit(e, 0);
cleanup:
	bpf_map_delete_elem(&birth, &skp);
	bpf_map_delete_elem(&idents, &skp);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
