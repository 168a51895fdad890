/* Tunnel program, attached to tc ingress of the agent's TUN device (docs/datapath.md,
 * "Programs"). The agent writes each packet it opened and authenticated into the TUN,
 * after checking that the inner source belongs to the node that sealed it (its pod CIDR
 * or its node IP). The TUN is an L3 device: the skb starts at the IPv4 header. */
#include "lib/common.h"
#include "lib/identity.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/config.h"
#include "lib/metrics.h"
#include "lib/flow.h"
#include "lib/parse.h"
#include "lib/actions.h"
#include "lib/policy.h"

SEC("classifier")
int from_tunnel(struct __sk_buff *skb)
{
	struct pctx c = { .dir = DIR_INGRESS };
	struct endpoint_value *ep;
	struct ipcache_value *info;
	struct iphdr ip;
	int ret;

	/* IPv4 only; a TUN carries no ARP. */
	ret = parse_packet(skb, &c, &ip, L3_OFF_NONE, PARSE_NO_ARP);
	if (ret != PARSE_OK)
		return ret;

	ep = lookup_endpoint(ip.daddr);
	if (!ep)
		return drop(skb, &c, REASON_DROP_NO_ENDPOINT);
	c.endpoint_id = ep->endpoint_id;

	/* The identity is the ipcache's for the inner source, which must be remote: a pod of
	 * another node with a known identity, or another node's own address. A remote pod
	 * CIDR entry (identity 0) or a local address vouches for nothing. */
	info = lookup_ipcache(ip.saddr);
	if (!info || lookup_endpoint(ip.saddr))
		return drop(skb, &c, REASON_DROP_OVERLAY_IDENTITY);
	if (info->identity == IDENTITY_REMOTE_NODE) {
		c.remote_identity = IDENTITY_REMOTE_NODE;
	} else if (info->tunnel_endpoint && info->identity != IDENTITY_UNKNOWN &&
		   info->identity <= MARK_IDENTITY_MASK) {
		c.remote_identity = info->identity;
	} else {
		return drop(skb, &c, REASON_DROP_OVERLAY_IDENTITY);
	}

	/* The stack routes it to the endpoint's veth (route <ip>/32 dev <veth>), where
	 * to_endpoint decides ingress policy with the identity in the mark. */
	skb->mark = MARK_MAGIC_IDENTITY | c.remote_identity;
	forwarded(skb, &c, REASON_FROM_TUNNEL);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
