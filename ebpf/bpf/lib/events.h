/* Flow events into the `events` ring buffer, rate limited per CPU. An event over the
 * budget or that does not fit is counted (metrics) and forgotten: the datapath never
 * waits for userspace. */
#ifndef MEMBRANE_EVENTS_H
#define MEMBRANE_EVENTS_H

#include "maps.h"
#include "metrics.h"
#include "flow.h"

#define NSEC_PER_SEC 1000000000ULL

/* Takes one token from this CPU's bucket: rate and burst are events_per_sec. */
MB_INLINE int event_budget_take(__u64 now)
{
	struct datapath_config *cfg;
	struct event_budget *b;
	__u32 zero = 0;
	__u64 rate = EVENTS_PER_SEC_DEFAULT, cap, elapsed;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && cfg->events_per_sec)
		rate = cfg->events_per_sec;
	b = bpf_map_lookup_elem(&event_budget, &zero);
	if (!b)
		return 0;
	cap = rate * NSEC_PER_SEC; /* rate < 2^32: fits in 64 bits */
	elapsed = now - b->last_ns;
	if (elapsed >= NSEC_PER_SEC || b->last_ns == 0) {
		b->tokens = cap;
	} else {
		/* elapsed < 1e9 and rate < 2^32: no overflow; nor in the sum (both <= cap). */
		b->tokens += elapsed * rate;
		if (b->tokens > cap)
			b->tokens = cap;
	}
	b->last_ns = now;
	if (b->tokens < NSEC_PER_SEC)
		return 0;
	b->tokens -= NSEC_PER_SEC;
	return 1;
}

MB_INLINE void event_emit(struct __sk_buff *skb, const struct pctx *c, __u8 kind, enum reason reason)
{
	__u64 now = bpf_ktime_get_ns();
	struct flow_event ev = {};

	if (!event_budget_take(now)) {
		metrics_count(skb, c->dir, REASON_EVENTS_RATE_LIMITED);
		return;
	}
	ev.ts_ns = now;
	ev.saddr = c->f.saddr;
	ev.daddr = c->f.daddr;
	ev.sport = c->f.sport;
	ev.dport = c->f.dport;
	ev.proto = c->f.proto;
	ev.tcp_flags = c->f.tcp_flags;
	ev.direction = c->dir;
	ev.kind = kind;
	ev.reason = reason;
	ev.endpoint_id = c->endpoint_id;
	ev.remote_identity = c->remote_identity;
	ev.rule_id = c->rule_id;
	ev.ifindex = skb->ifindex;
	ev.len = skb->len;
	ev.policy_match = c->policy_match;
	ev.icmp_type = c->f.icmp_type;
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0) < 0)
		metrics_count(skb, c->dir, REASON_EVENTS_RINGBUF_FULL);
}

MB_INLINE int trace_enabled(void)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&config, &zero);

	return cfg && (cfg->flags & CFG_F_TRACE);
}

#endif
