/* The parse prologue every program starts with: the IPv4 header, then the flow. */
#ifndef MEMBRANE_PARSE_H
#define MEMBRANE_PARSE_H

#include "common.h"
#include "metrics.h"
#include "ipv4.h"
#include "flow.h"
#include "actions.h"

/* Not a verdict any program returns (it is TC_ACT_UNSPEC): the packet parsed, go on. */
#define PARSE_OK TC_ACT_UNSPEC

/* Pass as `arp` when the hook has no use for ARP: it is then dropped like any other
 * non-IPv4 frame. */
#define PARSE_NO_ARP 0

/* Reads the IPv4 header (at l3_off) into *ip and the flow into c->f. Returns PARSE_OK,
 * or the tc verdict the program returns at once. The datapath fails closed: it is IPv4
 * only, so an IPv6, VLAN-tagged or other frame would bypass policy if let through and is
 * dropped as unsupported-l3. ARP is let through (counted under `arp`) where neighbours
 * must resolve; a packet whose headers are cut short or invalid is dropped as malformed. */
MB_INLINE int parse_packet(struct __sk_buff *skb, struct pctx *c, struct iphdr *ip, __u32 l3_off,
			   enum reason arp)
{
	switch (ipv4_load(skb, l3_off, ip)) {
	case IPV4_OK:
		break;
	case IPV4_ARP:
		if (arp == PARSE_NO_ARP)
			return drop(skb, c, REASON_DROP_UNSUPPORTED_L3);
		forwarded(skb, c, arp);
		return TC_ACT_OK;
	case IPV4_OTHER:
		return drop(skb, c, REASON_DROP_UNSUPPORTED_L3);
	default:
		return drop(skb, c, REASON_DROP_MALFORMED);
	}
	if (flow_load(skb, l3_off, ip, &c->f) < 0)
		return drop(skb, c, REASON_DROP_MALFORMED);
	return PARSE_OK;
}

#endif
