// SPDX-License-Identifier: GPL-2.0
/* vfsstat: counts of VFS operations in per-CPU counters (never cleared, nothing lost).
 *
 * Kernel mode: fentry (or kprobe) on vfs_read, vfs_write, vfs_fsync, vfs_open, vfs_create,
 * vfs_unlink, vfs_mkdir, vfs_rmdir (+ vfs_readv/vfs_writev where the kernel has them).
 * Syscall mode: one tp_btf (or raw_tp) sys_enter program; syscall_stats maps each system call
 * number to its column and how to read its flags (O_CREAT opens also count as CREATE,
 * unlinkat(AT_REMOVEDIR) is an RMDIR).
 */
#include "task.bpf.h"
#include "_task_filter.bpf.h"

enum stat_type { S_READ, S_WRITE, S_FSYNC, S_OPEN, S_CREATE, S_UNLINK, S_MKDIR, S_RMDIR, S_MAXSTAT };

/* syscall_stats value: (kind << 8) | (column + 1); 0 = not counted */
enum flag_kind {
	K_PLAIN = 0,
	K_OPEN = 1,      /* open(path, flags, mode): O_CREAT in arg 2 */
	K_OPENAT = 2,    /* openat(dfd, path, flags, mode): O_CREAT in arg 3 */
	K_OPENAT2 = 3,   /* openat2(dfd, path, struct open_how *how, size): how->flags */
	K_UNLINKAT = 4,  /* unlinkat(dfd, path, flags): AT_REMOVEDIR makes it an rmdir */
	K_CREAT = 5,     /* creat(): opens and creates */
};

#define MAX_SYSCALLS 512
#define X86_O_CREAT 0100
#define X86_AT_REMOVEDIR 0x200

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, S_MAXSTAT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SYSCALLS);
	__type(key, __u32);
	__type(value, __u32);
} syscall_stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &stat);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int count_task(__u32 stat)
{
	if (traced_task())
		count(stat);
	return 0;
}

/* ---- kernel mode ------------------------------------------------------------------ */
#define VFS_HOOKS(func, stat)                                                   \
	SEC("fentry/" #func)                                                    \
	int BPF_PROG(fentry_##func) { return count_task(stat); }                \
	SEC("kprobe/" #func)                                                    \
	int BPF_KPROBE(kprobe_##func) { return count_task(stat); }

VFS_HOOKS(vfs_read, S_READ)
VFS_HOOKS(vfs_readv, S_READ)
VFS_HOOKS(vfs_write, S_WRITE)
VFS_HOOKS(vfs_writev, S_WRITE)
VFS_HOOKS(vfs_fsync, S_FSYNC)
VFS_HOOKS(vfs_open, S_OPEN)
VFS_HOOKS(vfs_create, S_CREATE)
VFS_HOOKS(vfs_unlink, S_UNLINK)
VFS_HOOKS(vfs_mkdir, S_MKDIR)
VFS_HOOKS(vfs_rmdir, S_RMDIR)

/* ---- syscall mode ----------------------------------------------------------------- */

/* from_regs (constant per program): arguments from the sys_enter pt_regs, else from the
 * tracepoint record's args (then compat tasks never show up: syscall tracepoints skip them) */
static __always_inline int count_syscall(long id, struct pt_regs *regs, unsigned long *args, const bool from_regs)
{
	__u32 nr = id, *v, stat, kind;
	__u64 flags = 0, arg;

	if (id < 0 || id >= MAX_SYSCALLS)
		return 0;
	v = bpf_map_lookup_elem(&syscall_stats, &nr);
	if (!v || !*v)
		return 0;
	if (!traced_task() || (from_regs && compat_task()))
		return 0;
	stat = (*v & 0xff) - 1;
	kind = *v >> 8;
	switch (kind) {
	case K_OPEN:
		flags = from_regs ? BPF_CORE_READ(regs, si) : args[1];
		break;
	case K_OPENAT:
		flags = from_regs ? BPF_CORE_READ(regs, dx) : args[2];
		break;
	case K_OPENAT2:
		/* struct open_how starts with __u64 flags */
		arg = from_regs ? BPF_CORE_READ(regs, dx) : args[2];
		bpf_probe_read_user(&flags, sizeof(flags), (void *)arg);
		break;
	case K_UNLINKAT:
		arg = from_regs ? BPF_CORE_READ(regs, dx) : args[2];
		if (arg & X86_AT_REMOVEDIR)
			stat = S_RMDIR;
		break;
	case K_CREAT:
		count(S_CREATE);
		break;
	}
	if (kind >= K_OPEN && kind <= K_OPENAT2 && (flags & X86_O_CREAT))
		count(S_CREATE);
	if (stat < S_MAXSTAT)
		count(stat);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(vfsstat_btf, struct pt_regs *regs, long id)
{
	unsigned long none[3] = {};

	return count_syscall(id, regs, none, true);
}

SEC("raw_tp/sys_enter")
int BPF_PROG(vfsstat_raw, struct pt_regs *regs, long id)
{
	unsigned long none[3] = {};

	return count_syscall(id, regs, none, true);
}

/* Attached to each counted system call's syscalls:sys_enter_<name> tracepoint.  A program may
 * read no further into the record than the shortest record it attaches to: vfsstat_tp reads
 * only the number, vfsstat_tp_args also the second and third arguments (open, openat, openat2,
 * unlinkat: the calls whose flags matter). */
SEC("tracepoint/syscalls/sys_enter_read")
int vfsstat_tp(struct syscall_trace_enter *ctx)
{
	unsigned long none[3] = {};

	return count_syscall(ctx->nr, 0, none, false);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int vfsstat_tp_args(struct syscall_trace_enter *ctx)
{
	unsigned long args[3] = {};

	args[1] = ctx->args[1];
	args[2] = ctx->args[2];
	return count_syscall(ctx->nr, 0, args, false);
}

char LICENSE[] SEC("license") = "GPL";
