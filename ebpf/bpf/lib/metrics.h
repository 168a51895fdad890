/* Per-CPU packet/byte counters indexed by direction * METRICS_PER_DIR + reason. The
 * numbers are part of the contract (docs/datapath.md) and are named in
 * ebpf/src/abi/metrics.rs::Reason: never renumber. */
#ifndef MEMBRANE_METRICS_H
#define MEMBRANE_METRICS_H

#include "common.h"

struct metric_value {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct metric_value) == 16, "metric_value size");

/* Metrics index: direction * METRICS_PER_DIR + reason. */
#define METRICS_PER_DIR 64
#define METRICS_MAX (2 * METRICS_PER_DIR)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, METRICS_MAX);
	__type(key, __u32);
	__type(value, struct metric_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} metrics SEC(".maps");

enum reason {
	REASON_FORWARDED_LOCAL = 1,
	REASON_FORWARDED_OVERLAY = 2,
	REASON_TO_STACK = 3,
	REASON_DELIVERED = 4,
	REASON_FROM_OVERLAY = 5,
	REASON_CT_NEW = 6,
	REASON_CT_ESTABLISHED = 7,
	REASON_CT_REPLY = 8,
	REASON_POLICY_ALLOWED = 9,
	REASON_EVENTS_RATE_LIMITED = 10,
	REASON_EVENTS_RINGBUF_FULL = 11,
	REASON_FORWARDED_TUNNEL = 12,
	REASON_FROM_TUNNEL = 13,
	/* drops, from 16 */
	REASON_DROP_SPOOFED = 16,
	REASON_DROP_NO_ENDPOINT = 17,
	REASON_DROP_NO_OVERLAY = 18,
	REASON_DROP_REDIRECT_FAILED = 19,
	REASON_DROP_MALFORMED = 20,
	REASON_DROP_POLICY_DENIED = 21,
	REASON_DROP_POLICY_DENY_RULE = 22,
	REASON_DROP_NO_POLICY_CONTEXT = 23,
	REASON_DROP_NO_KEY = 24,
	REASON_DROP_UNSUPPORTED_L3 = 25,
	REASON_DROP_OVERLAY_SOURCE = 26,
	REASON_DROP_OVERLAY_IDENTITY = 27,
	REASON_DROP_CONTROL_PORT = 28,
	REASON_DROP_POD_SOURCE = 29,
	REASON_DROP_PLAINTEXT_OVERLAY = 30,
};

#define REASON_DROP_FIRST 16
_Static_assert(REASON_DROP_PLAINTEXT_OVERLAY < METRICS_PER_DIR, "reason outside the metrics row");

MB_INLINE void metrics_count(struct __sk_buff *skb, __u8 dir, enum reason reason)
{
	/* dir is DIR_INGRESS or DIR_EGRESS; the mask keeps the index provably in range. */
	__u32 key = (dir & 1) * METRICS_PER_DIR + ((__u32)reason & (METRICS_PER_DIR - 1));
	struct metric_value *m = bpf_map_lookup_elem(&metrics, &key);

	/* Per-CPU slot: no other CPU writes it, plain adds are enough. */
	if (m) {
		m->packets += 1;
		m->bytes += skb->len;
	}
}

#endif
