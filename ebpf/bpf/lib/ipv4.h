#ifndef MEMBRANE_IPV4_H
#define MEMBRANE_IPV4_H

#include "common.h"

enum ipv4_parse {
	IPV4_OK = 0,
	IPV4_NOT_IPV4 = 1,
	IPV4_MALFORMED = -1,
};

/* Reads the Ethernet type and the IPv4 header into *ip. Copies with bpf_skb_load_bytes
 * rather than direct packet access so that non-linear skbs (GSO, veth from another
 * namespace) parse the same way. */
MB_INLINE enum ipv4_parse ipv4_load(struct __sk_buff *skb, struct iphdr *ip)
{
	__be16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return IPV4_MALFORMED;
	if (proto != bpf_htons(ETH_P_IP))
		return IPV4_NOT_IPV4;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), ip, sizeof(*ip)) < 0)
		return IPV4_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return IPV4_MALFORMED;
	return IPV4_OK;
}

#endif
