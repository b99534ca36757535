// SPDX-License-Identifier: GPL-2.0
/* ttysnoop: everything written to one terminal.
 *
 * Kernel mode (fentry or kprobe on tty_write) sees every write that reaches the tty layer,
 * including those through /dev/tty. Tracepoint mode (no kprobe/fentry) hooks the write,
 * writev and pwrite64 syscalls and keeps the fds whose file is the terminal:
 * current->files->fdt->fd[fd]->f_inode->i_rdev against the device number in rodata.
 * That filter runs for every write() on the system, so it is kept to plain CO-RE reads
 * with no map access; only matching writes pay for copying the payload.
 */
#include "bpfscope.bpf.h"

#define MAX_DATA 8192        /* largest -s */
#define MAX_COUNT 128        /* largest -c */
#define LOOP_MAX (MAX_COUNT + 64) /* events + empty iovecs skipped */
#define IOV_MAX 1024         /* UIO_MAXIOV: writev refuses more */
#define MINORBITS 20
#define S_IFMT 00170000
#define S_IFCHR 0020000
#define FMODE_PWRITE 0x10

const volatile __u32 target_rdev = 0;    /* kernel dev_t of the terminal: MKDEV(major, minor) */
const volatile __u32 target_sb_dev = 0;  /* pts only: s_dev of its devpts instance (0: any) */
const volatile __u32 data_size = 256;    /* -s: bytes per event */
const volatile __u32 data_count = 16;    /* -c: events per write */
const volatile bool tty_write_iter = true; /* kernel mode: tty_write(kiocb *, iov_iter *) (>= 5.10.11) */

enum syscall_kind { SYS_WRITE = 1, SYS_WRITEV = 2, SYS_PWRITE64 = 3, SYS_TTY_WRITE = 4 };

#define EV_TRUNCATED 1 /* last event of a write longer than -s * -c: not_shown bytes follow unseen */
#define EV_FAULT 2     /* payload not readable (paged out): data is zeros */

struct event {
	__u64 ts_ns;       /* same for every event of one write */
	__u64 total;       /* bytes the write carries */
	__u64 not_shown;   /* EV_TRUNCATED: bytes beyond -s * -c */
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 count;       /* bytes in data */
	__u32 part;        /* index of this event within its write */
	__s32 fd;
	__u16 syscall;
	__u16 flags;
	char comm[TASK_COMM_LEN];
	char data[MAX_DATA];
};

/* Where the bytes of one write are: one buffer, or a vector of {base, len} (iovec/kvec). */
struct source {
	__u64 base;        /* single buffer (vec == 0), or first segment once read */
	__u64 len;
	__u64 total;
	const void *vec;   /* struct iovec / struct kvec array, or NULL */
	__u32 nseg;
	bool vec_kernel;   /* the vector lives in kernel memory */
	bool data_kernel;  /* the bytes live in kernel memory (kvec) */
	__s32 fd;
	__u16 syscall;
};

/* Per-CPU work area. The capture loop keeps its cursor here rather than in registers: values
 * loaded from a map are not tracked exactly by the verifier, so the paths through one
 * iteration merge again and verification stays linear in the number of iterations. */
struct work {
	struct source src; /* filled by the hook, read back by capture() */
	__u64 base;        /* next byte to show */
	__u64 left;        /* bytes left in the current segment */
	__u64 shown;
	__u32 part;
	__u32 idx;         /* next vector segment to read */
	struct event e;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct work);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* ----------------------------------------------------------------- filters */

/* The rest of the test once i_rdev matched: a character device, on the pts's devpts instance. */
static __always_inline bool inode_matches(struct inode *inode)
{
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFCHR)
		return false;
	if (target_sb_dev && BPF_CORE_READ(inode, i_sb, s_dev) != target_sb_dev)
		return false;
	return true;
}

#define FD_ARRAY_LEN 64 /* NR_OPEN_DEFAULT: files_struct.fd_array */
#define FD_CASE(n) case n: file = files->fd_array[n]; break;
#define FD_CASES8(n) FD_CASE(n) FD_CASE(n + 1) FD_CASE(n + 2) FD_CASE(n + 3) \
		     FD_CASE(n + 4) FD_CASE(n + 5) FD_CASE(n + 6) FD_CASE(n + 7)

/* The struct file behind fd in the current task if it is the target terminal, else NULL.
 *
 * This runs for every write() on the system, and each bpf_probe_read_kernel() costs tens of
 * ns, so where the kernel has bpf_get_current_task_btf() (5.11+) task->files->fdt is walked
 * with direct (BTF) loads instead. While a task's fd table has never grown (fdt is the
 * embedded fdtab: fewer than 64 fds ever open, the common case) fdt->fd is files->fd_array,
 * and files->fd_array[fd] with a constant index in each case of a switch is a typed pointer
 * too: the whole filter is then a handful of plain loads, no helper call. Otherwise
 * fdt->fd[fd] takes one probe read, and the file's inode two more. */
static __always_inline struct file *target_file(int fd)
{
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = NULL;
	struct inode *inode;
	unsigned int max_fds;

	if (fd < 0)
		return NULL;
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)) {
		struct task_struct *task = bpf_get_current_task_btf();
		struct files_struct *files = task->files;

		fdt = files->fdt;
		if (fdt == &files->fdtab && fd < FD_ARRAY_LEN) {
			switch (fd) {
			FD_CASES8(0) FD_CASES8(8) FD_CASES8(16) FD_CASES8(24)
			FD_CASES8(32) FD_CASES8(40) FD_CASES8(48) FD_CASES8(56)
			default:
				return NULL;
			}
			if (!file)
				return NULL;
			inode = file->f_inode;
			if (inode->i_rdev != target_rdev || !inode_matches(inode))
				return NULL;
			return file;
		}
		max_fds = fdt->max_fds;
		fds = fdt->fd;
	} else {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();

		fdt = BPF_CORE_READ(task, files, fdt);
		max_fds = BPF_CORE_READ(fdt, max_fds);
		fds = BPF_CORE_READ(fdt, fd);
	}
	if ((unsigned int)fd >= max_fds)
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	inode = BPF_CORE_READ(file, f_inode);
	if (BPF_CORE_READ(inode, i_rdev) != target_rdev || !inode_matches(inode))
		return NULL;
	return file;
}

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* The same with bpf_rdonly_cast() (6.2+; the *_cast programs, chosen by user space when the
 * kernel has it): the fd slot, fdt->fd + fd, is read as the first member of a struct kiocb
 * (ki_filp, at offset 0 on every kernel), which makes it a typed struct file pointer. Every
 * step is then a plain load, whatever the size of the fd table. The task pointer comes from
 * bpf_get_current_task() cast the same way: measured here, that costs ~8 ns where
 * bpf_get_current_task_btf() costs ~20 (the whole filter: ~10 ns over an empty program). */
static __always_inline struct file *target_file_cast(int fd)
{
	struct task_struct *task = bpf_rdonly_cast((void *)bpf_get_current_task(),
						   bpf_core_type_id_kernel(struct task_struct));
	struct fdtable *fdt = task->files->fdt;
	struct kiocb *slot;
	struct file *file;
	struct inode *inode;

	if (fd < 0 || (unsigned int)fd >= fdt->max_fds)
		return NULL;
	if (bpf_core_field_offset(struct kiocb, ki_filp) != 0)
		return target_file(fd);
	slot = bpf_rdonly_cast((void *)fdt->fd + (__u64)fd * sizeof(struct file *),
			       bpf_core_type_id_kernel(struct kiocb));
	file = slot->ki_filp;
	if (!file)
		return NULL;
	inode = file->f_inode;
	if (inode->i_rdev != target_rdev || !inode_matches(inode))
		return NULL;
	return file;
}

/* Kernel mode: the terminal a tty file writes to, from its tty_struct (so writes through
 * /dev/tty count too): MKDEV(driver->major, driver->minor_start + index). */
static __always_inline bool tty_file_is_target(struct file *file)
{
	struct tty_file_private *priv = BPF_CORE_READ(file, private_data);
	struct tty_struct *tty = BPF_CORE_READ(priv, tty);
	struct tty_driver *driver;
	__u32 dev;

	if (!tty)
		return false;
	driver = BPF_CORE_READ(tty, driver);
	dev = ((__u32)BPF_CORE_READ(driver, major) << MINORBITS) |
	      (__u32)(BPF_CORE_READ(driver, minor_start) + BPF_CORE_READ(tty, index));
	if (dev != target_rdev)
		return false;
	if (target_sb_dev) {
		/* a pts slave's driver_data is its dentry in the devpts instance */
		struct dentry *dentry = BPF_CORE_READ(tty, driver_data);

		if (BPF_CORE_READ(dentry, d_sb, s_dev) != target_sb_dev)
			return false;
	}
	return true;
}

/* ----------------------------------------------------------------- capture */

static __always_inline int read_seg(const struct source *src, __u32 i, __u64 *base, __u64 *len)
{
	struct iovec v = {};  /* struct kvec has the same layout */
	const struct iovec *p = (const struct iovec *)src->vec + i;
	long err = src->vec_kernel ? bpf_probe_read_kernel(&v, sizeof(v), p)
				   : bpf_probe_read_user(&v, sizeof(v), p);

	if (err)
		return -1;
	*base = (__u64)v.iov_base;
	*len = v.iov_len;
	return 0;
}

/* The per-CPU work area, its source cleared: one buffer of user memory until told otherwise. */
static __always_inline struct work *new_work(__s32 fd, __u16 syscall)
{
	__u32 zero = 0;
	struct work *w = bpf_map_lookup_elem(&scratch, &zero);

	if (!w)
		return NULL;
	w->src.base = 0;
	w->src.len = 0;
	w->src.total = 0;
	w->src.vec = NULL;
	w->src.nseg = 0;
	w->src.vec_kernel = false;
	w->src.data_kernel = false;
	w->src.fd = fd;
	w->src.syscall = syscall;
	return w;
}

/* Split the write into events of at most -s bytes, at most -c of them; the last event of
 * a longer write says how many bytes were not shown (never cut silently). */
static __always_inline int capture(struct work *w)
{
	struct source *src = &w->src;
	struct event *e = &w->e;
	__u64 id = bpf_get_current_pid_tgid();

	e->ts_ns = bpf_ktime_get_ns();
	e->total = src->total;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->fd = src->fd;
	e->syscall = src->syscall;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	w->base = src->base;
	w->left = src->len;
	w->shown = 0;
	w->part = 0;
	w->idx = 0;

	for (__u32 i = 0; i < LOOP_MAX; i++) {
		__u64 n, base;
		long err;

		if (w->left == 0) {
			__u64 b, l;

			if (!src->vec || w->idx >= src->nseg || w->idx >= IOV_MAX)
				break;
			if (read_seg(src, w->idx, &b, &l))
				break;
			w->base = b;
			w->left = l;
			w->idx++;
			continue;
		}
		if (w->part >= data_count)
			break;
		n = w->left < data_size ? w->left : data_size;
		if (n > MAX_DATA)
			n = MAX_DATA;
		base = w->base;
		e->part = w->part;
		e->count = n;
		e->flags = 0;
		e->not_shown = 0;
		if (w->part + 1 >= data_count && w->shown + n < src->total) {
			e->flags = EV_TRUNCATED;
			e->not_shown = src->total - w->shown - n;
		}
		err = src->data_kernel ? bpf_probe_read_kernel(e->data, n, (void *)base)
				       : bpf_probe_read_user(e->data, n, (void *)base);
		if (err)
			e->flags |= EV_FAULT;
		if (bpf_ringbuf_output(&events, e, __builtin_offsetof(struct event, data) + n, 0))
			__sync_fetch_and_add(&lost_events, 1);
		w->base = base + n;
		w->left -= n;
		w->shown += n;
		w->part++;
		if (e->flags & EV_TRUNCATED)
			return 0;
	}
	if (w->shown < src->total) {
		/* the loop gave up early (many empty iovecs, unreadable iovec): say so */
		e->part = w->part;
		e->count = 0;
		e->flags = EV_TRUNCATED;
		e->not_shown = src->total - w->shown;
		if (bpf_ringbuf_output(&events, e, __builtin_offsetof(struct event, data), 0))
			__sync_fetch_and_add(&lost_events, 1);
	}
	return 0;
}

/* ----------------------------------------------------------------- tracepoint mode */

static __always_inline struct file *lookup(int fd, bool cast)
{
	return cast ? target_file_cast(fd) : target_file(fd);
}

static __always_inline int on_write(struct trace_event_raw_sys_enter *ctx, bool cast)
{
	struct work *w;

	if (!lookup((int)ctx->args[0], cast))
		return 0;
	w = new_work((int)ctx->args[0], SYS_WRITE);
	if (!w)
		return 0;
	w->src.base = ctx->args[1];
	w->src.len = w->src.total = ctx->args[2];
	return capture(w);
}

static __always_inline int on_pwrite64(struct trace_event_raw_sys_enter *ctx, bool cast)
{
	struct file *file = lookup((int)ctx->args[0], cast);
	struct work *w;

	/* without FMODE_PWRITE (every tty) pwrite64 fails with ESPIPE: nothing is written */
	if (!file || !(BPF_CORE_READ(file, f_mode) & FMODE_PWRITE))
		return 0;
	w = new_work((int)ctx->args[0], SYS_PWRITE64);
	if (!w)
		return 0;
	w->src.base = ctx->args[1];
	w->src.len = w->src.total = ctx->args[2];
	return capture(w);
}

static __always_inline int on_writev(struct trace_event_raw_sys_enter *ctx, bool cast)
{
	const struct iovec *vec = (const struct iovec *)ctx->args[1];
	struct iovec v;
	struct work *w;
	__u64 total = 0;
	__u32 n = ctx->args[2];

	if (!lookup((int)ctx->args[0], cast))
		return 0;
	w = new_work((int)ctx->args[0], SYS_WRITEV);
	if (!w)
		return 0;
	w->src.vec = vec;
	w->src.nseg = n;
	for (__u32 i = 0; i < IOV_MAX && i < n; i++) {
		if (bpf_probe_read_user(&v, sizeof(v), &vec[i]))
			break;
		total += v.iov_len;
	}
	w->src.total = total;
	return capture(w);
}

SEC("tracepoint/syscalls/sys_enter_write")
int tp_write(struct trace_event_raw_sys_enter *ctx) { return on_write(ctx, false); }

SEC("tracepoint/syscalls/sys_enter_writev")
int tp_writev(struct trace_event_raw_sys_enter *ctx) { return on_writev(ctx, false); }

SEC("tracepoint/syscalls/sys_enter_pwrite64")
int tp_pwrite64(struct trace_event_raw_sys_enter *ctx) { return on_pwrite64(ctx, false); }

SEC("tracepoint/syscalls/sys_enter_write")
int tp_write_cast(struct trace_event_raw_sys_enter *ctx) { return on_write(ctx, true); }

SEC("tracepoint/syscalls/sys_enter_writev")
int tp_writev_cast(struct trace_event_raw_sys_enter *ctx) { return on_writev(ctx, true); }

SEC("tracepoint/syscalls/sys_enter_pwrite64")
int tp_pwrite64_cast(struct trace_event_raw_sys_enter *ctx) { return on_pwrite64(ctx, true); }

/* ----------------------------------------------------------------- kernel mode */

struct iov_iter___old { /* < 5.14: direction and type share one word of flags */
	unsigned int type;
} __attribute__((preserve_access_index));

static __always_inline int iter_type(struct iov_iter *from)
{
	if (bpf_core_field_exists(from->iter_type))
		return BPF_CORE_READ(from, iter_type);
	return BPF_CORE_READ((struct iov_iter___old *)from, type) & ~1u; /* drop READ/WRITE */
}

static __always_inline int on_tty_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	struct work *w;
	struct source *src;
	int type;

	if (!tty_file_is_target(BPF_CORE_READ(iocb, ki_filp)))
		return 0;
	w = new_work(-1, SYS_TTY_WRITE);
	if (!w)
		return 0;
	src = &w->src;
	src->total = BPF_CORE_READ(from, count);
	type = iter_type(from);
	/* iov, kvec and ubuf share one union slot; kvec is named the same on every kernel */
	if (bpf_core_enum_value_exists(enum iter_type, ITER_UBUF) &&
	    type == bpf_core_enum_value(enum iter_type, ITER_UBUF)) {
		src->base = (__u64)BPF_CORE_READ(from, ubuf) + BPF_CORE_READ(from, iov_offset);
		src->len = src->total;
	} else if (type == bpf_core_enum_value(enum iter_type, ITER_IOVEC) ||
		   type == bpf_core_enum_value(enum iter_type, ITER_KVEC)) {
		__u64 skip = BPF_CORE_READ(from, iov_offset), base, len;

		src->vec = BPF_CORE_READ(from, kvec);
		src->nseg = BPF_CORE_READ(from, nr_segs);
		src->vec_kernel = true;
		src->data_kernel = type == bpf_core_enum_value(enum iter_type, ITER_KVEC);
		/* the first segment starts iov_offset bytes in */
		if (src->nseg && !read_seg(src, 0, &base, &len) && skip <= len) {
			src->base = base + skip;
			src->len = len - skip;
			src->vec = (const struct iovec *)src->vec + 1;
			src->nseg--;
		}
	} else {
		return 0;
	}
	return capture(w);
}

static __always_inline int on_tty_write_old(struct file *file, const char *buf, __u64 count)
{
	struct work *w;

	if (!tty_file_is_target(file))
		return 0;
	w = new_work(-1, SYS_TTY_WRITE);
	if (!w)
		return 0;
	w->src.base = (__u64)buf;
	w->src.len = w->src.total = count;
	return capture(w);
}

/* One program per hook kind serves both signatures: tty_write_iter is a load-time constant,
 * so the verifier never walks the other branch (fentry would refuse its argument count). */
SEC("fentry/tty_write")
int BPF_PROG(fentry_tty_write)
{
	if (tty_write_iter)
		return on_tty_write_iter((struct kiocb *)ctx[0], (struct iov_iter *)ctx[1]);
	return on_tty_write_old((struct file *)ctx[0], (const char *)ctx[1], ctx[2]);
}

SEC("kprobe/tty_write")
int BPF_KPROBE(kprobe_tty_write, void *arg0, void *arg1, __u64 arg2)
{
	if (tty_write_iter)
		return on_tty_write_iter(arg0, arg1);
	return on_tty_write_old(arg0, arg1, arg2);
}

char LICENSE[] SEC("license") = "GPL";
