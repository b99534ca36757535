// SPDX-License-Identifier: GPL-2.0
/* biolatency: block I/O latency as a log2 histogram, from issue (or insert with -Q) to completion.
 *
 * Three program sets, one chosen at run time:
 *   btf_*  tp_btf/block_rq_{insert,issue,complete,merge}: typed struct request *, start keyed by it;
 *   raw_*  raw_tp/ the same tracepoints, same arguments, read with CO-RE probe reads;
 *   tp_*   tracepoint/block/...: no request pointer, start keyed by (dev, sector) as BCC did.
 * The histogram slot is computed here: one map lookup and one atomic add per I/O.
 */
#include "bpfscope.bpf.h"

#define DISK_NAME_LEN 32
#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))
#define MINORBITS 20

extern int LINUX_KERNEL_VERSION __kconfig;

const volatile bool targ_per_disk = false;   /* -D */
const volatile bool targ_queued = false;     /* -Q: start at insert */
const volatile bool targ_ms = false;         /* -m */
const volatile bool filter_dev = false;      /* -d DISK */
const volatile __u32 targ_dev = 0;           /* kernel dev_t of that disk */

struct sector_key {
	__u32 dev;
	__u32 _pad;
	__u64 sector;
};

/* start time per request (tp_btf, raw_tp) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} start SEC(".maps");

/* start time per (dev, sector) (tracepoint mode) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct sector_key);
	__type(value, __u64);
} start_sector SEC(".maps");

/* key: kernel dev_t with -D, else 0 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct hist);
} hists SEC(".maps");

/* dev_t -> gendisk->disk_name, written when a disk's histogram is created (tp_btf, raw_tp) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, char[DISK_NAME_LEN]);
} disk_names SEC(".maps");

/* Kernels before 5.18 kept the disk in the request; newer ones only in its queue. */
struct request___old {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

static __always_inline struct gendisk *rq_disk(struct request *rq)
{
	if (bpf_core_field_exists(((struct request_queue *)0)->disk))
		return BPF_CORE_READ(rq, q, disk);
	return BPF_CORE_READ((struct request___old *)rq, rq_disk);
}

static __always_inline __u32 disk_devt(struct gendisk *disk)
{
	if (!disk)
		return 0;
	return ((__u32)BPF_CORE_READ(disk, major) << MINORBITS) | (__u32)BPF_CORE_READ(disk, first_minor);
}

/* v5.11 (commit a54895fa) dropped the request_queue argument of block_rq_insert/issue/merge:
 * TP_PROTO(struct request_queue *q, struct request *rq) -> TP_PROTO(struct request *rq).
 * clang 14 has no bpf_core_type_matches() to tell the prototypes apart, so the kernel
 * version decides; the verifier drops the dead branch (LINUX_KERNEL_VERSION is read-only). */
static __always_inline struct request *rq_arg(unsigned long long *ctx)
{
	if (LINUX_KERNEL_VERSION < KERNEL_VERSION(5, 11, 0))
		return (struct request *)ctx[1];
	return (struct request *)ctx[0];
}

static __always_inline struct hist *hist_for(__u32 key)
{
	static const struct hist zero;
	struct hist *h = bpf_map_lookup_elem(&hists, &key);

	if (h)
		return h;
	bpf_map_update_elem(&hists, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&hists, &key);
}

static __always_inline void record(__u32 dev, struct gendisk *disk, __u64 delta_ns)
{
	__u32 key = targ_per_disk ? dev : 0;
	struct hist *h = bpf_map_lookup_elem(&hists, &key);

	if (!h) {
		h = hist_for(key);
		if (!h)
			return;
		if (targ_per_disk && disk) {
			char name[DISK_NAME_LEN] = {};

			bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(disk, disk_name));
			bpf_map_update_elem(&disk_names, &key, name, BPF_ANY);
		}
	}
	hist_add(h, targ_ms ? delta_ns / 1000000 : delta_ns / 1000);
}

/* ---- request-keyed (tp_btf and raw_tp) ---- */
static __always_inline int rq_start(struct request *rq, bool issue)
{
	__u64 key = (__u64)rq, ts;

	if (!issue && !targ_queued)
		return 0;
	if (filter_dev && disk_devt(rq_disk(rq)) != targ_dev)
		return 0;
	ts = bpf_ktime_get_ns();
	/* -Q: insert sets the time; issue only fills in for requests that skipped the queue */
	if (bpf_map_update_elem(&start, &key, &ts, issue && targ_queued ? BPF_NOEXIST : BPF_ANY) &&
	    !(issue && targ_queued))
		__sync_fetch_and_add(&lost_events, 1);
	return 0;
}

static __always_inline int rq_done(struct request *rq)
{
	__u64 key = (__u64)rq, *tsp, delta;
	struct gendisk *disk;

	tsp = bpf_map_lookup_elem(&start, &key);
	if (!tsp)
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	bpf_map_delete_elem(&start, &key);
	disk = targ_per_disk ? rq_disk(rq) : NULL;
	record(disk_devt(disk), disk, delta);
	return 0;
}

static __always_inline int rq_merged(struct request *rq)
{
	__u64 key = (__u64)rq;

	/* a request merged into another is freed without completing: forget its start */
	bpf_map_delete_elem(&start, &key);
	return 0;
}

/* The same four programs as tp_btf (btf_*) and as raw_tp (raw_*). */
#define RQ_PROGS(prefix, type)                                          \
	SEC(type "/block_rq_insert")                                    \
	int prefix##_rq_insert(unsigned long long *ctx)                 \
	{                                                               \
		return rq_start(rq_arg(ctx), false);                    \
	}                                                               \
	SEC(type "/block_rq_issue")                                     \
	int prefix##_rq_issue(unsigned long long *ctx)                  \
	{                                                               \
		return rq_start(rq_arg(ctx), true);                     \
	}                                                               \
	SEC(type "/block_rq_merge")                                     \
	int prefix##_rq_merge(unsigned long long *ctx)                  \
	{                                                               \
		return rq_merged(rq_arg(ctx));                          \
	}                                                               \
	SEC(type "/block_rq_complete")                                  \
	int prefix##_rq_complete(unsigned long long *ctx)               \
	{                                                               \
		return rq_done((struct request *)ctx[0]);               \
	}

RQ_PROGS(btf, "tp_btf")
RQ_PROGS(raw, "raw_tp")

/* ---- (dev, sector)-keyed (classic tracepoints) ---- */
static __always_inline int sector_start(__u32 dev, __u64 sector, bool issue)
{
	struct sector_key key = { .dev = dev, .sector = sector };
	__u64 ts;

	if (!issue && !targ_queued)
		return 0;
	if (filter_dev && dev != targ_dev)
		return 0;
	ts = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&start_sector, &key, &ts, issue && targ_queued ? BPF_NOEXIST : BPF_ANY) &&
	    !(issue && targ_queued))
		__sync_fetch_and_add(&lost_events, 1);
	return 0;
}

SEC("tracepoint/block/block_rq_insert")
int tp_rq_insert(struct trace_event_raw_block_rq *ctx)
{
	return sector_start(ctx->dev, ctx->sector, false);
}

SEC("tracepoint/block/block_rq_issue")
int tp_rq_issue(struct trace_event_raw_block_rq *ctx)
{
	return sector_start(ctx->dev, ctx->sector, true);
}

SEC("tracepoint/block/block_rq_merge")
int tp_rq_merge(struct trace_event_raw_block_rq *ctx)
{
	struct sector_key key = { .dev = ctx->dev, .sector = ctx->sector };

	bpf_map_delete_elem(&start_sector, &key);
	return 0;
}

SEC("tracepoint/block/block_rq_complete")
int tp_rq_complete(struct trace_event_raw_block_rq_completion *ctx)
{
	struct sector_key key = { .dev = ctx->dev, .sector = ctx->sector };
	__u64 *tsp, delta;

	tsp = bpf_map_lookup_elem(&start_sector, &key);
	if (!tsp)
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	bpf_map_delete_elem(&start_sector, &key);
	record(key.dev, NULL, delta);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
