/* Overlay program, attached to tc ingress of the VXLAN device in external (collect_md)
 * mode (docs/datapath.md, "Programs"). */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/ipv4.h"

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct endpoint_value *ep;
	struct bpf_tunnel_key key = {};
	struct iphdr ip;
	__u32 src_identity;

	switch (ipv4_load(skb, &ip)) {
	case IPV4_OK:
		break;
	case IPV4_NOT_IPV4:
		return pass_to_stack(skb);
	default:
		return drop(skb, REASON_DROP_MALFORMED);
	}

	ep = lookup_endpoint(ip.daddr);
	if (!ep)
		return drop(skb, REASON_DROP_NO_ENDPOINT);

	/* The VNI carries the sender's identity. Without tunnel metadata the packet did not
	 * come through the collect_md device as expected. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, REASON_DROP_MALFORMED);
	src_identity = key.tunnel_id;
	(void)src_identity; /* consumed by ingress policy (policy issue) */

	if (eth_rewrite(skb, ep->mac, ep->host_mac) < 0)
		return drop(skb, REASON_DROP_REDIRECT_FAILED);
	return redirect_counted(skb, ep->ifindex, REASON_FROM_OVERLAY);
}

char _license[] SEC("license") = "GPL";
