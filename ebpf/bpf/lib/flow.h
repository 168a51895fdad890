/* The L3/L4 view of a packet that policy, conntrack and events share. */
#ifndef MEMBRANE_FLOW_H
#define MEMBRANE_FLOW_H

#include "common.h"
#include <linux/in.h>

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* Addresses and ports as in the packet (network byte order). */
struct flow {
	__u32 saddr;
	__u32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 has_l4;      /* 0 for later fragments and protocols without ports */
};

/* Per-packet state of one program run: what the event and the metrics report. */
struct pctx {
	struct flow f;
	__u32 remote_identity;
	__u32 rule_id;
	__u16 endpoint_id;
	__u8 dir;         /* DIR_* of the policy point (metrics row) */
	__u8 policy_match;
};

/* Fills f from the IPv4 header and the start of the L4 header (the IPv4 header at
 * l3_off, see ipv4.h). Returns < 0 when the L4
 * header of a first fragment is cut short. Later fragments have no L4 header: their
 * ports stay 0 and has_l4 0. */
MB_INLINE int flow_load(struct __sk_buff *skb, __u32 l3_off, const struct iphdr *ip,
			struct flow *f)
{
	/* ihl is 5..15 (ipv4_load checked >= 5): the offset is bounded for the helper. */
	__u32 off = l3_off + ((__u32)ip->ihl & 0xf) * 4;
	__u8 h[14];

	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;

	switch (ip->protocol) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, off, h, 14) < 0)
			return -1;
		__builtin_memcpy(&f->sport, h, 2);
		__builtin_memcpy(&f->dport, h + 2, 2);
		f->tcp_flags = h[13];
		f->has_l4 = 1;
		break;
	case IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, off, h, 4) < 0)
			return -1;
		__builtin_memcpy(&f->sport, h, 2);
		__builtin_memcpy(&f->dport, h + 2, 2);
		f->has_l4 = 1;
		break;
	case IPPROTO_ICMP:
		/* type, code, checksum, identifier */
		if (bpf_skb_load_bytes(skb, off, h, 6) < 0)
			return -1;
		f->icmp_type = h[0];
		f->has_l4 = 1;
		if (h[0] == ICMP_ECHO || h[0] == ICMP_ECHOREPLY) {
			/* The identifier in both ports: a reply's reversed tuple is the request's. */
			__builtin_memcpy(&f->sport, h + 4, 2);
			f->dport = f->sport;
		}
		break;
	}
	return 0;
}

#endif
