// SPDX-License-Identifier: GPL-2.0
/* opensnoop: open(), openat(), openat2() and creat() with their result.
 *
 * Entry (sys_enter_*) keeps the path pointer and flags per thread; exit (sys_exit_*) reads
 * the path from user memory (just faulted in by the kernel's getname) and emits one event.
 * Filters (pid, tid, uid, comm substring, flags, failed only) all run in the kernel.
 */
#include "bpfscope.bpf.h"

#define PATH_LEN 512
#define O_ACCMODE 3

enum { SYS_OPEN, SYS_OPENAT, SYS_OPENAT2, SYS_CREAT };

const volatile __u32 targ_tgid = 0;          /* -p */
const volatile __u32 targ_tid = 0;           /* -t */
const volatile __u32 targ_uid = (__u32)-1;   /* -u */
const volatile bool targ_failed = false;     /* -x: only failed opens */
const volatile __u32 targ_comm_len = 0;      /* -n: comm must contain targ_comm */
const volatile char targ_comm[TASK_COMM_LEN] = {};
const volatile __u64 targ_flags = 0;         /* -f: any of these flag bits */
const volatile bool targ_flags_rdonly = false; /* -f O_RDONLY: access mode is read-only */

struct start {
	const char *path;
	__u64 flags;
	__u64 ts_ns;
	__u32 mode;
	__u32 syscall;
};

struct event {
	__u64 ts_ns;
	__u64 flags;
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__s32 ret;
	__u32 mode;
	__u32 syscall;
	__u32 path_len;   /* bytes read, with the NUL; PATH_LEN when truncated */
	char comm[TASK_COMM_LEN];
	char path[PATH_LEN];
};

/* Emits struct event into the object's BTF: Python decodes records with obj.struct("event"). */
const struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct start);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* -n: BCC matches a substring of the command name. comm is at most 15 characters. */
static __always_inline bool comm_matches(void)
{
	char comm[2 * TASK_COMM_LEN] = {};

	if (!targ_comm_len)
		return true;
	bpf_get_current_comm(comm, TASK_COMM_LEN);
	for (int i = 0; i < TASK_COMM_LEN - 1; i++) {
		bool ok = true;

		if (i + targ_comm_len > TASK_COMM_LEN - 1)
			break;
		for (int j = 0; j < TASK_COMM_LEN - 1; j++) {
			if (j >= targ_comm_len)
				break;
			if (comm[i + j] != targ_comm[j]) {
				ok = false;
				break;
			}
		}
		if (ok)
			return true;
	}
	return false;
}

static __always_inline bool flags_match(__u64 flags)
{
	if (!targ_flags && !targ_flags_rdonly)
		return true;
	if (targ_flags_rdonly && (flags & O_ACCMODE) == 0)
		return true;
	return (flags & targ_flags) != 0;
}

static __always_inline int on_enter(const char *path, __u64 flags, __u32 mode, __u32 syscall)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct start s = {};

	if (targ_tgid && tgid != targ_tgid)
		return 0;
	if (targ_tid && tid != targ_tid)
		return 0;
	if (targ_uid != (__u32)-1 && (__u32)bpf_get_current_uid_gid() != targ_uid)
		return 0;
	if (!flags_match(flags))
		return 0;
	if (!comm_matches())
		return 0;
	s.path = path;
	s.flags = flags;
	s.mode = mode;
	s.syscall = syscall;
	s.ts_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&starts, &tid, &s, BPF_ANY))
		__sync_fetch_and_add(&lost_events, 1);
	return 0;
}

static __always_inline int on_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct start *s;
	struct event *e;
	long n;

	s = bpf_map_lookup_elem(&starts, &tid);
	if (!s)
		return 0;
	if (targ_failed && ret >= 0)
		goto cleanup;
	e = reserve_event(&events, sizeof(*e));
	if (!e)
		goto cleanup;
	e->ts_ns = s->ts_ns;
	e->flags = s->flags;
	e->mode = s->mode;
	e->syscall = s->syscall;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = id >> 32;
	e->tid = tid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->ret = ret;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	n = bpf_probe_read_user_str(e->path, sizeof(e->path), s->path);
	if (n < 0) {
		e->path[0] = 0;
		n = 0;
	}
	e->path_len = n;
	bpf_ringbuf_submit(e, 0);
cleanup:
	bpf_map_delete_elem(&starts, &tid);
	return 0;
}

#define O_CREAT 0100
#define O_WRONLY 01
#define O_TRUNC 01000

SEC("tracepoint/syscalls/sys_enter_open")
int tp_enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[0], (__u32)ctx->args[1], (__u32)ctx->args[2], SYS_OPEN);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int tp_enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[1], (__u32)ctx->args[2], (__u32)ctx->args[3], SYS_OPENAT);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int tp_enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return on_enter((const char *)ctx->args[1], how.flags, (__u32)how.mode, SYS_OPENAT2);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int tp_enter_creat(struct trace_event_raw_sys_enter *ctx)
{
	/* creat(path, mode) is open(path, O_CREAT|O_WRONLY|O_TRUNC, mode) */
	return on_enter((const char *)ctx->args[0], O_CREAT | O_WRONLY | O_TRUNC, (__u32)ctx->args[1], SYS_CREAT);
}

SEC("tracepoint/syscalls/sys_exit_open")
int tp_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int tp_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int tp_exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_creat")
int tp_exit_creat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

char LICENSE[] SEC("license") = "GPL";
