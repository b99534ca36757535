/* Shared by profile, offcputime and stackcount: the stack map, counts per stack key,
 * stack-read failure counters, and "new process" notes for user-space symbolization.
 * User space (bpfscope/tools/_stacks.py) sizes the maps, sets the globals and reads it all. */
#ifndef __BPFSCOPE_STACKS_BPF_H
#define __BPFSCOPE_STACKS_BPF_H

#include "bpfscope.bpf.h"

#define PERF_MAX_STACK_DEPTH 127
#define STK_EFAULT 14 /* no stack of that kind (kernel thread: no user stack; user mode: no kernel stack) */
#define STK_EEXIST 17 /* hash collision in the stack map */

const volatile bool user_stacks_only = false;   /* -U */
const volatile bool kernel_stacks_only = false; /* -K */
const volatile bool note_new_pids = true;       /* tell user space when a process (or exec image) is first seen */
const volatile bool recover_collisions = false; /* count_sample(): send collided stacks whole (see below) */
const volatile __u64 recover_max = 0;           /* at most this many per run (0: no limit) */

__u64 stack_collisions = 0; /* bpf_get_stackid() == -EEXIST: another stack owns the bucket */
__u64 stack_errors = 0;     /* any other failure but -EFAULT (-ENOMEM: stack map full...) */
__u64 pid_notes_lost = 0;   /* new_pids ring buffer full */
__u64 stacks_recovered = 0; /* samples whose collided stack went whole through the `collided` ring buffer */

/* Count key. pid is the process (tgid), tid the thread when counted per thread (else 0).
 * Stack ids < 0 are bpf_get_stackid() errors (-EFAULT: no such stack). */
struct stack_key {
	__u32 pid;
	__u32 tid;
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PERF_MAX_STACK_DEPTH * sizeof(__u64));
	__uint(max_entries, 16384); /* --stack-storage-size */
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 40960); /* --hash-storage-size */
	__type(key, struct stack_key);
	__type(value, __u64);
} counts SEC(".maps");

/* (process, address space) pairs already announced: an exec gives the process a new mm,
 * so its new mappings are announced (and captured) again. */
struct seen_key {
	__u32 pid;
	__u32 _pad;
	__u64 mm;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct seen_key);
	__type(value, __u8);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} new_pids SEC(".maps");

/* A sample whose stack lost its stack-map bucket to another stack (-EEXIST), with the
 * stack itself (bpf_get_stack): user space counts it as if the map had held it. */
struct collided_stack {
	struct stack_key key;
	__s32 user_len;   /* bytes in user[] (<= 0: the key's user_stack_id holds) */
	__s32 kernel_len; /* bytes in kernel[] */
	__u64 user[PERF_MAX_STACK_DEPTH];
	__u64 kernel[PERF_MAX_STACK_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* resized by user space (a page when unused) */
} collided SEC(".maps");

/* keeps struct collided_stack in the object's BTF (user space decodes records with it) */
struct collided_stack *__collided_stack_btf __attribute__((unused));

static __always_inline __s32 get_stack(void *ctx, __u64 flags)
{
	long id = bpf_get_stackid(ctx, &stacks, flags);

	if (id < 0 && id != -STK_EFAULT) {
		if (id == -STK_EEXIST)
			__sync_fetch_and_add(&stack_collisions, 1);
		else
			__sync_fetch_and_add(&stack_errors, 1);
	}
	return id;
}

/* Both stacks of the current task (as -U / -K ask), from a program's ctx. */
static __always_inline void fill_stacks(void *ctx, struct stack_key *key)
{
	key->user_stack_id = kernel_stacks_only ? -STK_EFAULT : get_stack(ctx, BPF_F_USER_STACK);
	key->kernel_stack_id = user_stacks_only ? -STK_EFAULT : get_stack(ctx, 0);
}

/* counts[key] += value; a full map loses the event (counted in lost_events). */
static __always_inline void count_stack(struct stack_key *key, __u64 value)
{
	__u64 *v = bpf_map_lookup_elem(&counts, key);

	if (v) {
		__sync_fetch_and_add(v, value);
		return;
	}
	if (bpf_map_update_elem(&counts, key, &value, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&counts, key); /* another CPU inserted it meanwhile */
	if (v)
		__sync_fetch_and_add(v, value);
	else
		__sync_fetch_and_add(&lost_events, 1);
}

/* One event at the place it happened (profile, stackcount): counts[key]++, or, when a stack
 * collided in the stack map and recover_collisions is set, the whole stack to user space
 * (no wakeup: user space drains it on its own poll). A full ring buffer, or a run past its
 * recover_max, falls back to counting the sample with its missing stack: a flood of unique
 * stacks (-I at 100k samples/s) must not turn into a flood of work for the profiler itself. */
static __always_inline void count_sample(void *ctx, struct stack_key *key)
{
	bool u = recover_collisions && key->user_stack_id == -STK_EEXIST;
	bool k = recover_collisions && key->kernel_stack_id == -STK_EEXIST;
	struct collided_stack *r;

	if ((u || k) && (!recover_max || stacks_recovered < recover_max)) {
		r = bpf_ringbuf_reserve(&collided, sizeof(*r), 0);
		if (r) {
			r->key = *key;
			r->user_len = u ? bpf_get_stack(ctx, r->user, sizeof(r->user), BPF_F_USER_STACK) : 0;
			r->kernel_len = k ? bpf_get_stack(ctx, r->kernel, sizeof(r->kernel), 0) : 0;
			bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
			__sync_fetch_and_add(&stacks_recovered, 1);
			return;
		}
	}
	count_stack(key, 1);
}

/* First time this (process, mm) is counted: send its pid to user space, which reads its
 * /proc/PID/maps while it is alive (short-lived processes keep named user frames). */
static __always_inline void note_task(struct task_struct *task, __u32 pid)
{
	struct seen_key k = {};
	__u8 one = 1;

	if (!note_new_pids || !pid)
		return;
	k.pid = pid;
	k.mm = (__u64)BPF_CORE_READ(task, mm);
	if (!k.mm || bpf_map_lookup_elem(&seen, &k))
		return;
	if (bpf_map_update_elem(&seen, &k, &one, BPF_NOEXIST))
		return;
	if (bpf_ringbuf_output(&new_pids, &pid, sizeof(pid), 0))
		__sync_fetch_and_add(&pid_notes_lost, 1);
}

/* The current task's event, counted where it happened (profile, stackcount): its process,
 * comm and stacks, then count_sample() and the note that lets user space read its maps. */
static __always_inline void count_current(void *ctx, __u32 tgid)
{
	struct stack_key key = {};

	key.pid = tgid;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	fill_stacks(ctx, &key);
	count_sample(ctx, &key);
	if (!kernel_stacks_only)
		note_task((struct task_struct *)bpf_get_current_task(), tgid);
}

#endif /* __BPFSCOPE_STACKS_BPF_H */
