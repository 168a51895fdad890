/* Per-CPU packet/byte counters indexed by reason. The numbers are part of the contract
 * (docs/datapath.md) and are named in ebpf/src/abi.rs::Reason: never renumber. */
#ifndef MEMBRANE_METRICS_H
#define MEMBRANE_METRICS_H

#include "maps.h"

enum reason {
	REASON_FORWARDED_LOCAL = 1,
	REASON_FORWARDED_OVERLAY = 2,
	REASON_TO_STACK = 3,
	REASON_DELIVERED = 4,
	REASON_FROM_OVERLAY = 5,
	/* drops, from 16 */
	REASON_DROP_SPOOFED = 16,
	REASON_DROP_NO_ENDPOINT = 17,
	REASON_DROP_NO_OVERLAY = 18,
	REASON_DROP_REDIRECT_FAILED = 19,
	REASON_DROP_MALFORMED = 20,
};

_Static_assert(REASON_DROP_MALFORMED < METRICS_MAX, "reason outside the metrics map");

MB_INLINE void metrics_count(struct __sk_buff *skb, enum reason reason)
{
	__u32 key = reason;
	struct metric_value *m = bpf_map_lookup_elem(&metrics, &key);

	/* Per-CPU slot: no other CPU writes it, plain adds are enough. */
	if (m) {
		m->packets += 1;
		m->bytes += skb->len;
	}
}

MB_INLINE int drop(struct __sk_buff *skb, enum reason reason)
{
	metrics_count(skb, reason);
	return TC_ACT_SHOT;
}

MB_INLINE int pass_to_stack(struct __sk_buff *skb)
{
	metrics_count(skb, REASON_TO_STACK);
	return TC_ACT_OK;
}

/* Redirects to the egress of ifindex and counts the packet under `reason`, or as a
 * redirect failure when the helper refuses. */
MB_INLINE int redirect_counted(struct __sk_buff *skb, __u32 ifindex, enum reason reason)
{
	long ret = bpf_redirect(ifindex, 0);

	if (ret != TC_ACT_REDIRECT)
		return drop(skb, REASON_DROP_REDIRECT_FAILED);
	metrics_count(skb, reason);
	return TC_ACT_REDIRECT;
}

#endif
