/* Overlay program, attached to tc ingress of the VXLAN device in external (collect_md)
 * mode (docs/datapath.md, "Programs"). */
#include "lib/common.h"
#include "lib/endpoints.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/flow.h"
#include "lib/parse.h"
#include "lib/actions.h"
#include "lib/policy.h"

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct pctx c = { .dir = DIR_INGRESS };
	struct endpoint_value *ep;
	struct bpf_tunnel_key key = {};
	struct iphdr ip;
	int ret;

	/* The flow is parsed for the events only; policy is decided by to_endpoint. */
	ret = parse_packet(skb, &c, &ip, REASON_TO_STACK);
	if (ret != PARSE_OK)
		return ret;

	ep = lookup_endpoint(ip.daddr);
	if (!ep)
		return drop(skb, &c, REASON_DROP_NO_ENDPOINT);
	c.endpoint_id = ep->endpoint_id;

	/* The VNI carries the sender's identity. Without tunnel metadata the packet did not
	 * come through the collect_md device as expected. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, &c, REASON_DROP_MALFORMED);
	c.remote_identity = key.tunnel_id & MARK_IDENTITY_MASK;

	if (eth_rewrite(skb, ep->mac, ep->host_mac) < 0)
		return drop(skb, &c, REASON_DROP_REDIRECT_FAILED);
	/* Ingress policy happens in to_endpoint, the one place every path into an endpoint
	 * crosses; the mark carries the identity there (the tunnel key does not survive). */
	skb->mark = MARK_MAGIC_IDENTITY | c.remote_identity;
	return redirect_counted(skb, &c, ep->ifindex, REASON_FROM_OVERLAY);
}

char _license[] SEC("license") = "GPL";
