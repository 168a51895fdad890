/* Flow events into the `events` ring buffer, rate limited per CPU. An event over the
 * budget or that does not fit is counted (metrics) and forgotten: the datapath never
 * waits for userspace. */
#ifndef MEMBRANE_EVENTS_H
#define MEMBRANE_EVENTS_H

#include "config.h"
#include "metrics.h"
#include "flow.h"

#define EVENT_DROP 1
#define EVENT_POLICY_VERDICT 2
#define EVENT_TRACE 3

/* One record of the events ring buffer. Addresses and ports in network byte order. */
struct flow_event {
	__u64 ts_ns;           /* bpf_ktime_get_ns() */
	__u32 saddr;
	__u32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 direction;        /* DIR_* */
	__u8 kind;             /* EVENT_* */
	__u16 reason;          /* enum reason */
	__u16 endpoint_id;     /* the local endpoint, 0 when unknown */
	__u32 remote_identity;
	__u32 rule_id;         /* the policy rule that decided, 0 = none */
	__u32 ifindex;         /* skb->ifindex where the program ran */
	__u32 len;             /* skb->len */
	__u8 policy_match;     /* 1..4 = policy table (I,P) (I,any) (any,P) (any,any); 0 none */
	__u8 icmp_type;        /* ICMP: the type (the ports hold only an echo identifier) */
	__u8 pad[2];
};

/* Per-CPU token bucket of the event rate limit; tokens in units of 1e-9 event so that
 * refills need no division. */
struct event_budget {
	__u64 tokens;
	__u64 last_ns;
};

_Static_assert(sizeof(struct flow_event) == 48, "flow_event size");
_Static_assert(sizeof(struct event_budget) == 16, "event_budget size");

#define EVENTS_BYTES (1U << 20)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Pinned too, so that both objects draw on one budget per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_budget SEC(".maps");

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
