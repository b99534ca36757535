// SPDX-License-Identifier: GPL-2.0
/* shellwatch: exec of a shell binary by a task that has a controlling terminal, and new
 * sessions (setsid) under sshd/login. BPF keeps the candidates cheaply (comm in the `shells`
 * map and signal->tty set; parent comm in `session_parents`) and collects what the alert
 * rule needs: session leadership, argv, the parent chain with each ancestor's tty, cgroup,
 * namespaces. User space applies the configurable rule. */
#include "bpfscope.bpf.h"

#define MAX_ANCESTORS 8
#define ARGS_LEN 256
#define FILENAME_LEN 128
#define TTY_NAME_LEN 64
#define MINORBITS 20

enum kind { KIND_EXEC = 1, KIND_SETSID = 2 };

struct ancestor {
	__u32 pid;
	__u32 uid;
	__u8 has_tty;
	__u8 same_tty;   /* its controlling tty is this task's */
	__u8 session_leader;
	__u8 pad;
	char comm[TASK_COMM_LEN];
};

struct event {
	__u64 ts_ns;
	__u64 start_ns;     /* task start time: (pid, start_ns) names one process */
	__u64 cgroup_id;
	__u32 kind;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 loginuid;
	__u32 sid;
	__u32 pgid;
	__u32 ns_pid;       /* pid in its own pid namespace */
	__u32 pid_ns;       /* inode numbers of its pid and mount namespaces */
	__u32 mnt_ns;
	__u32 tty_dev;      /* MKDEV(driver major, minor_start + index), 0: no tty */
	__u32 session_leader;
	__u32 args_len;
	__u32 n_ancestors;
	char comm[TASK_COMM_LEN];
	char tty_name[TTY_NAME_LEN];
	char filename[FILENAME_LEN];
	char args[ARGS_LEN];
	struct ancestor ancestors[MAX_ANCESTORS];
};

struct comm_key {
	char comm[TASK_COMM_LEN];
};

/* comm of shells to watch (ash bash csh ksh sh tcsh zsh dash fish by default) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct comm_key);
	__type(value, __u8);
} shells SEC(".maps");

/* parents whose setsid() children are new login sessions (sshd, login...) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct comm_key);
	__type(value, __u8);
} session_parents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static __always_inline __u32 pid_nr(struct pid *pid)
{
	return BPF_CORE_READ(pid, numbers[0].nr);
}

static __always_inline __u32 tty_dev(struct tty_struct *tty)
{
	struct tty_driver *driver = BPF_CORE_READ(tty, driver);

	return ((__u32)BPF_CORE_READ(driver, major) << MINORBITS) |
	       (__u32)(BPF_CORE_READ(driver, minor_start) + BPF_CORE_READ(tty, index));
}

static __always_inline void fill(struct event *e, struct task_struct *task, __u32 kind)
{
	struct signal_struct *sig = BPF_CORE_READ(task, signal);
	struct tty_struct *tty = BPF_CORE_READ(sig, tty);
	struct task_struct *p = task;
	struct pid *tpid = BPF_CORE_READ(task, thread_pid);
	__u64 id = bpf_get_current_pid_tgid(), ugid = bpf_get_current_uid_gid();
	unsigned int level = BPF_CORE_READ(tpid, level);
	struct upid up = {};
	__u32 n = 0;

	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = BPF_CORE_READ(task, start_time);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->kind = kind;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;
	e->loginuid = (__u32)-1;
	if (bpf_core_field_exists(task->loginuid))
		e->loginuid = BPF_CORE_READ(task, loginuid.val);
	e->sid = pid_nr(BPF_CORE_READ(sig, pids[PIDTYPE_SID]));
	e->pgid = pid_nr(BPF_CORE_READ(sig, pids[PIDTYPE_PGID]));
	e->session_leader = BPF_CORE_READ(sig, leader);
	/* numbers[level]: this task's pid as its own namespace sees it */
	bpf_probe_read_kernel(&up, sizeof(up), (void *)tpid + bpf_core_field_offset(struct pid, numbers) +
					       (level & 31) * bpf_core_type_size(struct upid));
	e->ns_pid = up.nr;
	e->pid_ns = BPF_CORE_READ(up.ns, ns.inum);
	e->mnt_ns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	e->tty_dev = 0;
	e->tty_name[0] = 0;
	if (tty) {
		e->tty_dev = tty_dev(tty);
		bpf_probe_read_kernel_str(e->tty_name, sizeof(e->tty_name), &tty->name);
	}
	bpf_get_current_comm(&e->comm, sizeof(e->comm));

	for (int i = 0; i < MAX_ANCESTORS; i++) {
		struct signal_struct *psig;
		struct tty_struct *ptty;
		struct ancestor *a = &e->ancestors[i];

		p = BPF_CORE_READ(p, real_parent);
		if (!p)
			break;
		a->pid = BPF_CORE_READ(p, tgid);
		if (!a->pid)
			break;
		psig = BPF_CORE_READ(p, signal);
		ptty = BPF_CORE_READ(psig, tty);
		a->uid = BPF_CORE_READ(p, real_cred, uid.val);
		a->has_tty = ptty != NULL;
		a->same_tty = tty && ptty == tty;
		a->session_leader = BPF_CORE_READ(psig, leader);
		BPF_CORE_READ_STR_INTO(&a->comm, p, comm);
		n++;
		if (a->pid == 1)
			break;
	}
	e->n_ancestors = n;
}

SEC("tracepoint/sched/sched_process_exec")
int tp_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct comm_key key = {};
	struct mm_struct *mm;
	struct event *e;
	__u64 start, end, len;
	__u32 off;

	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	if (!bpf_map_lookup_elem(&shells, &key))
		return 0;
	if (!BPF_CORE_READ(task, signal, tty))
		return 0; /* no controlling terminal: not interactive */
	e = reserve_event(&events, sizeof(*e));
	if (!e)
		return 0;
	fill(e, task, KIND_EXEC);
	off = ctx->__data_loc_filename & 0xFFFF;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)ctx + off);
	/* the new image's argv, NUL-separated, from its stack */
	mm = BPF_CORE_READ(task, mm);
	start = BPF_CORE_READ(mm, arg_start);
	end = BPF_CORE_READ(mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > ARGS_LEN)
		len = ARGS_LEN;
	e->args_len = 0;
	if (len && !bpf_probe_read_user(e->args, len, (void *)start))
		e->args_len = len;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_setsid")
int tp_setsid(struct trace_event_raw_sys_exit *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct comm_key key = {};
	struct event *e;

	if (ctx->ret <= 0)
		return 0;
	BPF_CORE_READ_STR_INTO(&key.comm, task, real_parent, comm);
	if (!bpf_map_lookup_elem(&session_parents, &key))
		return 0;
	e = reserve_event(&events, sizeof(*e));
	if (!e)
		return 0;
	fill(e, task, KIND_SETSID);
	e->filename[0] = 0;
	e->args_len = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* keeps struct event in the object's BTF, where user space reads its layout */
struct event *unused_event __attribute__((unused));

char LICENSE[] SEC("license") = "GPL";
