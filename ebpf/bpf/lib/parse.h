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

/* Reads the IPv4 header into *ip and the flow into c->f. Returns PARSE_OK, or the tc
 * verdict the program returns at once: a packet that is not IPv4 is let through, counted
 * under `not_ipv4`; one whose headers are cut short or invalid is dropped as malformed. */
MB_INLINE int parse_packet(struct __sk_buff *skb, struct pctx *c, struct iphdr *ip,
			   enum reason not_ipv4)
{
	switch (ipv4_load(skb, ip)) {
	case IPV4_OK:
		break;
	case IPV4_NOT_IPV4:
		forwarded(skb, c, not_ipv4);
		return TC_ACT_OK;
	default:
		return drop(skb, c, REASON_DROP_MALFORMED);
	}
	if (flow_load(skb, ip, &c->f) < 0)
		return drop(skb, c, REASON_DROP_MALFORMED);
	return PARSE_OK;
}

#endif
