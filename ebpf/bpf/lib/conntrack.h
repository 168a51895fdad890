/* Connection tracking (docs/datapath.md, "Connection tracking"). An entry exists only
 * for a connection whose first packet policy allowed at one policy point; packets of it,
 * either way, then pass that point without a policy lookup. */
#ifndef MEMBRANE_CONNTRACK_H
#define MEMBRANE_CONNTRACK_H

#include "common.h"
#include "flow.h"
#include "events.h"

/* A connection as first seen at one policy point. direction says which: DIR_EGRESS at
 * the source endpoint (from_endpoint), DIR_INGRESS at the destination endpoint
 * (to_endpoint). A local->local connection therefore has two entries, one per policy
 * decision, so that neither side's entry can stand in for the other's policy. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__be16 sport;     /* ICMP echo: the identifier, in both ports */
	__be16 dport;
	__u8 proto;
	__u8 direction;
	__u16 pad;
};

#define CT_F_SYN_SEEN (1U << 0)    /* TCP: the opening SYN passed */
#define CT_F_SEEN_REPLY (1U << 1)  /* a packet in the reply direction passed */
#define CT_F_ESTABLISHED (1U << 2) /* TCP: handshake completed */
#define CT_F_FIN_ORIG (1U << 3)    /* TCP: FIN from the original sender */
#define CT_F_FIN_REPLY (1U << 4)   /* TCP: FIN from the reply side */
#define CT_F_CLOSING (1U << 5)     /* TCP: RST, or FIN both ways */

struct ct_value {
	__u64 expires_ns;      /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) after which it is dead */
	__u64 packets;         /* both directions */
	__u64 bytes;
	__u32 remote_identity; /* of the policy decision that created the entry */
	__u32 rule_id;         /* the allow rule, 0 when allowed by default */
	__u32 flags;           /* CT_F_* */
	__u16 endpoint_id;     /* the endpoint whose policy decided */
	__u8 direction;        /* DIR_* of that decision (= ct_key.direction) */
	__u8 pad;
};

_Static_assert(sizeof(struct ct_key) == 16, "ct_key size");
_Static_assert(sizeof(struct ct_value) == 40, "ct_value size");

#define CT_MAX 65536

/* LRU: a full table evicts the least recently used connection instead of refusing new
 * ones; an evicted connection goes through policy again (docs/datapath.md). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAX);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* Idle timeouts in seconds; mirrored in ebpf/src/abi/conntrack.rs::ct_timeout (checked by
 * a test). */
#define CT_TIMEOUT_TCP_SYN_S 60
#define CT_TIMEOUT_TCP_ESTABLISHED_S 21600
#define CT_TIMEOUT_TCP_CLOSING_S 10
#define CT_TIMEOUT_UDP_S 60
#define CT_TIMEOUT_ICMP_S 60

#define CT_S(s) ((__u64)(s) * NSEC_PER_SEC)

enum ct_result {
	CT_MISS = 0,
	CT_ESTABLISHED = 1, /* a packet in the direction that created the entry */
	CT_REPLY = 2,       /* a packet the other way */
};

/* Whether this packet may open an entry: a TCP SYN without ACK, any UDP datagram, an
 * ICMP echo request. Other TCP packets without an entry go through policy one by one and
 * open nothing: a mid-stream packet cannot tell who opened the connection, and an entry
 * made from it could pass the other side's packets as "replies" after the agent cut the
 * connection. */
MB_INLINE int ct_opens(const struct flow *f)
{
	if (!f->has_l4)
		return 0;
	switch (f->proto) {
	case IPPROTO_TCP:
		return (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	case IPPROTO_UDP:
		return 1;
	case IPPROTO_ICMP:
		return f->icmp_type == ICMP_ECHO;
	}
	return 0;
}

MB_INLINE __u64 ct_timeout(const struct flow *f, __u32 flags)
{
	switch (f->proto) {
	case IPPROTO_TCP:
		if (flags & CT_F_CLOSING)
			return CT_S(CT_TIMEOUT_TCP_CLOSING_S);
		if (flags & CT_F_ESTABLISHED)
			return CT_S(CT_TIMEOUT_TCP_ESTABLISHED_S);
		return CT_S(CT_TIMEOUT_TCP_SYN_S);
	case IPPROTO_UDP:
		return CT_S(CT_TIMEOUT_UDP_S);
	}
	return CT_S(CT_TIMEOUT_ICMP_S);
}

/* Advances the TCP state and the expiry of a live entry. Several CPUs may update one
 * entry: flags are set with atomic ORs so that no bit is lost, the expiry is written
 * only when it moves by more than a second (fewer writes to a shared line; any of the
 * racing values is right to within that second). */
MB_INLINE void ct_update(struct ct_value *v, const struct flow *f, int reply, __u64 now, __u32 len)
{
	__u32 set = 0, flags = v->flags;
	__u64 exp;

	if (reply)
		set |= CT_F_SEEN_REPLY;
	if (f->proto == IPPROTO_TCP) {
		if (f->tcp_flags & TCP_RST)
			set |= CT_F_CLOSING;
		if (f->tcp_flags & TCP_FIN)
			set |= reply ? CT_F_FIN_REPLY : CT_F_FIN_ORIG;
		if (((flags | set) & (CT_F_FIN_ORIG | CT_F_FIN_REPLY)) == (CT_F_FIN_ORIG | CT_F_FIN_REPLY))
			set |= CT_F_CLOSING;
		/* The handshake is complete once the reply side answered and an ACK without
		 * SYN follows. */
		if (((flags | set) & CT_F_SEEN_REPLY) && (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_ACK)
			set |= CT_F_ESTABLISHED;
	}
	if (set & ~flags)
		__sync_fetch_and_or(&v->flags, set);
	flags |= set;
	exp = now + ct_timeout(f, flags);
	if (exp < v->expires_ns || exp - v->expires_ns > NSEC_PER_SEC)
		v->expires_ns = exp;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
}

/* A live entry for this packet, either the one it belongs to in its own direction or the
 * one it answers. c->dir is the policy point: the answered entry was made at the other
 * kind of point (an egress entry of the peer's connection is looked up at ingress). */
MB_INLINE enum ct_result ct_lookup(struct __sk_buff *skb, struct pctx *c, __u64 now)
{
	const struct flow *f = &c->f;
	struct ct_key k = {};
	struct ct_value *v;
	int fwd = 1, rev = 1;

	if (!f->has_l4)
		return CT_MISS;
	switch (f->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		break;
	case IPPROTO_ICMP:
		/* An echo request only continues its own entry, a reply only answers one. */
		fwd = f->icmp_type == ICMP_ECHO;
		rev = f->icmp_type == ICMP_ECHOREPLY;
		if (!fwd && !rev)
			return CT_MISS;
		break;
	default:
		return CT_MISS;
	}

	k.proto = f->proto;
	if (fwd) {
		k.saddr = f->saddr;
		k.daddr = f->daddr;
		k.sport = f->sport;
		k.dport = f->dport;
		k.direction = c->dir;
		v = bpf_map_lookup_elem(&conntrack, &k);
		/* A new SYN on a closing entry is a new connection (port reuse): it must pass
		 * policy again. */
		if (v && v->expires_ns > now &&
		    !((v->flags & CT_F_CLOSING) && f->proto == IPPROTO_TCP &&
		      (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)) {
			ct_update(v, f, 0, now, skb->len);
			c->rule_id = v->rule_id;
			return CT_ESTABLISHED;
		}
	}
	if (rev) {
		k.saddr = f->daddr;
		k.daddr = f->saddr;
		k.sport = f->dport;
		k.dport = f->sport;
		k.direction = c->dir ^ 1;
		v = bpf_map_lookup_elem(&conntrack, &k);
		if (v && v->expires_ns > now) {
			ct_update(v, f, 1, now, skb->len);
			c->rule_id = v->rule_id;
			return CT_REPLY;
		}
	}
	return CT_MISS;
}

/* Records a connection that policy just allowed. Best effort: if the update fails the
 * packet still passes and the next one goes through policy again. */
MB_INLINE void ct_create(struct __sk_buff *skb, const struct pctx *c, __u64 now)
{
	const struct flow *f = &c->f;
	struct ct_key k = {
		.saddr = f->saddr,
		.daddr = f->daddr,
		.sport = f->sport,
		.dport = f->dport,
		.proto = f->proto,
		.direction = c->dir,
	};
	struct ct_value v = {
		.packets = 1,
		.bytes = skb->len,
		.remote_identity = c->remote_identity,
		.rule_id = c->rule_id,
		.endpoint_id = c->endpoint_id,
		.direction = c->dir,
	};

	if (f->proto == IPPROTO_TCP)
		v.flags = CT_F_SYN_SEEN;
	v.expires_ns = now + ct_timeout(f, v.flags);
	bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY);
}

#endif
