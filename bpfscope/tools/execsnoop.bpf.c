// SPDX-License-Identifier: GPL-2.0
/* execsnoop: every execve/execveat, with args captured at entry and result at exit. */
#include "bpfscope.bpf.h"

#define ARGSIZE 128
#define TOTAL_MAX_ARGS 60
#define FULL_MAX_ARGS_ARR (TOTAL_MAX_ARGS * ARGSIZE)
#define LAST_ARG (FULL_MAX_ARGS_ARR - ARGSIZE)
#define FILENAME_LEN 256

const volatile __u32 targ_uid = (__u32)-1;   /* -u */
const volatile __u32 targ_pid = 0;           /* -p: only this tgid */
const volatile __u32 targ_ppid = 0;          /* --ppid */
const volatile bool ignore_failed = true;    /* without -x */
const volatile __u32 max_args = 20;          /* --max-args */

struct event {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__s32 retval;
	__u32 args_count;   /* argv entries captured */
	__u32 args_size;    /* bytes used in args */
	__u32 truncated;    /* argv had more entries than max_args */
	char comm[TASK_COMM_LEN];
	char filename[FILENAME_LEN];
	char args[FULL_MAX_ARGS_ARR];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct event);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

static __always_inline int on_enter(const char *filename, const char *const *argv)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id, zero = 0;
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 ppid = BPF_CORE_READ(task, real_parent, tgid);
	struct event *e;

	if (targ_uid != (__u32)-1 && uid != targ_uid)
		return 0;
	if (targ_pid && tgid != targ_pid)
		return 0;
	if (targ_ppid && ppid != targ_ppid)
		return 0;

	e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = tgid;
	e->tid = tid;
	e->ppid = ppid;
	e->uid = uid;
	e->retval = 0;
	e->args_count = 0;
	e->args_size = 0;
	e->truncated = 0;
	bpf_probe_read_user_str(e->filename, sizeof(e->filename), filename);

	for (__u32 i = 0; i < TOTAL_MAX_ARGS; i++) {
		const char *argp = NULL;
		long n;

		if (i >= max_args) {
			bpf_probe_read_user(&argp, sizeof(argp), &argv[i]);
			e->truncated = argp != NULL;
			break;
		}
		bpf_probe_read_user(&argp, sizeof(argp), &argv[i]);
		if (!argp)
			break;
		if (e->args_size > LAST_ARG) {
			e->truncated = 1;
			break;
		}
		n = bpf_probe_read_user_str(&e->args[e->args_size], ARGSIZE, argp);
		if (n <= 0)
			break;
		e->args_count++;
		e->args_size += n;
	}
	bpf_map_update_elem(&execs, &tid, e, BPF_ANY);
	return 0;
}

static __always_inline int on_exit(long ret)
{
	__u32 tid = current_tid();
	struct event *e = bpf_map_lookup_elem(&execs, &tid);
	__u64 len;

	if (!e)
		return 0;
	if (ret < 0 && ignore_failed)
		goto cleanup;
	e->retval = ret;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	len = __builtin_offsetof(struct event, args) + e->args_size;
	if (len > sizeof(*e))
		len = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, len, 0) < 0)
		__sync_fetch_and_add(&lost_events, 1);
cleanup:
	bpf_map_delete_elem(&execs, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int tp_enter_execve(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[0], (const char *const *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int tp_enter_execveat(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[1], (const char *const *)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_execve")
int tp_exit_execve(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int tp_exit_execveat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

char LICENSE[] SEC("license") = "GPL";
