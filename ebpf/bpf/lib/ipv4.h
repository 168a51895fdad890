#ifndef MEMBRANE_IPV4_H
#define MEMBRANE_IPV4_H

#include "common.h"

/* Where the IPv4 header starts: behind the Ethernet header on a veth or the VXLAN device,
 * at 0 on an L3 device (the TUN), whose skb has no link-layer header. The programs pass
 * a constant, so the verifier sees constant offsets either way. */
#define L3_OFF_ETH ((__u32)sizeof(struct ethhdr))
#define L3_OFF_NONE 0U

enum ipv4_parse {
	IPV4_OK = 0,
	IPV4_ARP = 1,   /* an ARP frame (only behind Ethernet) */
	IPV4_OTHER = 2, /* IPv6, VLAN-tagged, anything else */
	IPV4_MALFORMED = -1,
};

/* Reads the IPv4 header at l3_off into *ip after classifying the frame. Copies with
 * bpf_skb_load_bytes rather than direct packet access so that non-linear skbs (GSO, veth
 * from another namespace) parse the same way.
 *
 * A VLAN tag is removed from the data before tc ingress runs (skb_vlan_untag) and kept
 * in the skb's metadata, so the EtherType in the frame is the inner one: a tagged frame
 * is recognised by skb->vlan_present, never by its EtherType alone. */
MB_INLINE enum ipv4_parse ipv4_load(struct __sk_buff *skb, __u32 l3_off, struct iphdr *ip)
{
	__be16 proto;

	if (skb->vlan_present)
		return IPV4_OTHER;
	if (l3_off == L3_OFF_NONE) {
		/* The TUN sets the protocol from the IP version nibble. */
		if (skb->protocol != bpf_htons(ETH_P_IP))
			return IPV4_OTHER;
	} else {
		if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
			return IPV4_MALFORMED;
		if (proto == bpf_htons(ETH_P_ARP))
			return IPV4_ARP;
		if (proto != bpf_htons(ETH_P_IP))
			return IPV4_OTHER;
	}
	if (bpf_skb_load_bytes(skb, l3_off, ip, sizeof(*ip)) < 0)
		return IPV4_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return IPV4_MALFORMED;
	return IPV4_OK;
}

#endif
