/* Identity-based L3/L4 policy (docs/datapath.md, "Policy"): conntrack first, then the
 * `policy` map for packets that belong to no connection. */
#ifndef MEMBRANE_POLICY_H
#define MEMBRANE_POLICY_H

#include "common.h"
#include "endpoints.h"
#include "flow.h"
#include "metrics.h"
#include "events.h"
#include "conntrack.h"

/* LPM key: after prefixlen the bytes are compared in order, so the 64 exactly matched
 * bits come first and the port (network order, high bits first) last.
 * prefixlen = 64 + port prefix length (0..16). */
struct policy_key {
	__u32 prefixlen;
	__u16 endpoint_id;
	__u8 direction;   /* DIR_* */
	__u8 proto;       /* IANA number, 0 = any */
	__u32 identity;   /* remote identity, 0 = any */
	__be16 port;      /* TCP/UDP destination port; ICMP: the type (bpf_htons(type)) */
	__u16 pad;
};

#define POLICY_PREFIX_EXACT 64 /* bits of endpoint_id, direction, proto, identity */
#define POLICY_PREFIX_FULL (POLICY_PREFIX_EXACT + 16)

#define POLICY_ALLOW 1
#define POLICY_DENY 2

struct policy_value {
	__u8 verdict;     /* POLICY_ALLOW or POLICY_DENY */
	__u8 pad[3];
	__u32 rule_id;    /* names the rule in events; 0 = none */
};

_Static_assert(sizeof(struct policy_key) == 16, "policy_key size");
_Static_assert(__builtin_offsetof(struct policy_key, port) == 12, "policy_key port");
_Static_assert(sizeof(struct policy_value) == 8, "policy_value size");

#define POLICY_MAX 65536

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLICY_MAX);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* skb->mark carries the source identity from from_endpoint (local source) and
 * from_overlay (the VNI) to to_endpoint, where ingress policy is decided for every path
 * into an endpoint. The magic in the high byte tells our mark from the host's. */
#define MARK_MAGIC_MASK 0xff000000U
#define MARK_MAGIC_IDENTITY 0x4d000000U /* 'M' */
#define MARK_IDENTITY_MASK 0x00ffffffU  /* identities are below 2^24 (the VNI width) */

enum policy_outcome {
	POLICY_ALLOWED_DEFAULT = 0, /* no entry matched, the direction is not enforced */
	POLICY_ALLOWED_RULE = 1,    /* an allow entry matched */
	POLICY_DENIED_RULE = 2,     /* a deny entry matched */
	POLICY_DENIED_DEFAULT = 3,  /* no entry matched, the direction is enforced */
};

/* The port a policy entry matches: the destination port for TCP and UDP, the type for
 * ICMP, 0 for other protocols and for later fragments. */
MB_INLINE __be16 policy_port(const struct flow *f)
{
	if (!f->has_l4)
		return 0;
	switch (f->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return f->dport;
	case IPPROTO_ICMP:
		return bpf_htons((__u16)f->icmp_type);
	}
	return 0;
}

/* The lookup contract: (I,P), (I,any), (any,P), (any,any), each an LPM lookup with the
 * full port; the first hit decides. The engine makes its entries such that this order
 * gives its answer (e.g. a deny in a general table is copied into the specific ones).
 * With I == 0 (unknown) the first two tables are the last two: skipped. */
MB_INLINE struct policy_value *policy_lookup(struct pctx *c)
{
	struct policy_key k = {
		.prefixlen = POLICY_PREFIX_FULL,
		.endpoint_id = c->endpoint_id,
		.direction = c->dir,
		.port = policy_port(&c->f),
	};
	struct policy_value *v;

	if (c->remote_identity) {
		k.identity = c->remote_identity;
		k.proto = c->f.proto;
		v = bpf_map_lookup_elem(&policy, &k);
		if (v) {
			c->policy_match = 1;
			return v;
		}
		k.proto = 0;
		v = bpf_map_lookup_elem(&policy, &k);
		if (v) {
			c->policy_match = 2;
			return v;
		}
	}
	k.identity = 0;
	k.proto = c->f.proto;
	v = bpf_map_lookup_elem(&policy, &k);
	if (v) {
		c->policy_match = 3;
		return v;
	}
	k.proto = 0;
	v = bpf_map_lookup_elem(&policy, &k);
	if (v) {
		c->policy_match = 4;
		return v;
	}
	return NULL;
}

MB_INLINE enum policy_outcome policy_check(struct pctx *c, __u32 ep_flags)
{
	__u32 enforced = c->dir == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED;
	struct policy_value *v = policy_lookup(c);

	if (v) {
		c->rule_id = v->rule_id;
		/* Anything but an explicit allow denies: a corrupt entry must not open. */
		return v->verdict == POLICY_ALLOW ? POLICY_ALLOWED_RULE : POLICY_DENIED_RULE;
	}
	return (ep_flags & enforced) ? POLICY_DENIED_DEFAULT : POLICY_ALLOWED_DEFAULT;
}

/* Whether policy explicitly allows c's (identity, proto, port) at c's endpoint and
 * direction: the deciding entry is an allow in one of the identity's own tables ((I,P)
 * or (I,any)), so a rule named the peer (entity host, remote-node or cluster). Conntrack
 * is not consulted; an unenforced direction's default allow and wildcard-identity allows
 * (entity all, world CIDRs) do not count: this is for traffic the datapath refuses
 * unless a policy names it. */
MB_INLINE int policy_explicit_allow(struct pctx *c)
{
	struct policy_value *v;

	if (!c->remote_identity)
		return 0;
	v = policy_lookup(c);
	if (!v || c->policy_match > 2)
		return 0;
	c->rule_id = v->rule_id;
	return v->verdict == POLICY_ALLOW;
}

/* The policy point of one endpoint and direction: returns 0 when the packet may go on,
 * else the drop reason. c must hold the flow, dir, endpoint_id and remote identity. */
MB_INLINE enum reason policy_enforce(struct __sk_buff *skb, struct pctx *c, __u32 ep_flags)
{
	__u64 now = bpf_ktime_get_ns();
	enum policy_outcome out;

	switch (ct_lookup(skb, c, now)) {
	case CT_ESTABLISHED:
		metrics_count(skb, c->dir, REASON_CT_ESTABLISHED);
		return 0;
	case CT_REPLY:
		metrics_count(skb, c->dir, REASON_CT_REPLY);
		return 0;
	default:
		break;
	}

	out = policy_check(c, ep_flags);
	if (out == POLICY_DENIED_RULE)
		return REASON_DROP_POLICY_DENY_RULE;
	if (out == POLICY_DENIED_DEFAULT)
		return REASON_DROP_POLICY_DENIED;

	if (!ct_opens(&c->f)) {
		metrics_count(skb, c->dir, REASON_POLICY_ALLOWED);
		return 0;
	}
	ct_create(skb, c, now);
	metrics_count(skb, c->dir, REASON_CT_NEW);
	/* A verdict event names the rule that let a connection in; connections allowed
	 * because the direction is not enforced have no rule to name. */
	if (out == POLICY_ALLOWED_RULE)
		event_emit(skb, c, EVENT_POLICY_VERDICT, REASON_CT_NEW);
	return 0;
}

#endif
