/* Overlay program, attached to tc ingress of the VXLAN device in external (collect_md)
 * mode (docs/datapath.md, "Programs" and "Trust rules"). */
#include "lib/common.h"
#include "lib/identity.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/config.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/flow.h"
#include "lib/parse.h"
#include "lib/actions.h"
#include "lib/policy.h"

/* Whether the VNI (the identity the sender claims) fits what the ipcache knows of the
 * inner source: an address owned by the sending node (tunnel_endpoint is that node)
 * with that very, known identity, or the sending node's own address as remote-node. A
 * remote pod CIDR entry (identity 0, unknown) vouches for no identity. */
MB_INLINE int overlay_identity_ok(const struct ipcache_value *info, __u32 outer, __u32 inner,
				  __u32 vni)
{
	if (!info)
		return 0;
	if (inner == outer)
		return info->identity == IDENTITY_REMOTE_NODE && vni == IDENTITY_REMOTE_NODE;
	return info->tunnel_endpoint == outer && info->identity != IDENTITY_UNKNOWN &&
	       vni == info->identity;
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct pctx c = { .dir = DIR_INGRESS };
	struct endpoint_value *ep;
	struct ipcache_value *node, *info;
	struct bpf_tunnel_key key = {};
	__u32 outer, vni;
	struct iphdr ip;
	int ret;

	/* The flow is parsed for the events; policy is decided by to_endpoint. No ARP: the
	 * overlay carries only what from_endpoint sends, IPv4. */
	ret = parse_packet(skb, &c, &ip, L3_OFF_ETH, PARSE_NO_ARP);
	if (ret != PARSE_OK)
		return ret;

	/* With encryption on, node-to-node pod traffic arrives through the tunnel only: a
	 * plaintext overlay packet is unauthenticated whoever claims to send it. */
	if (cfg_encrypt(lookup_config()))
		return drop(skb, &c, REASON_DROP_PLAINTEXT_OVERLAY);

	/* Without tunnel metadata the packet did not come through the collect_md device as
	 * expected. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, &c, REASON_DROP_MALFORMED);
	vni = key.tunnel_id;
	c.remote_identity = vni & MARK_IDENTITY_MASK;

	/* The outer source (host byte order in the key) must be a registered node. VXLAN is
	 * unauthenticated UDP: this is what keeps strangers on the underlay, and endpoints
	 * (whose VXLAN to node addresses from_endpoint refuses), out. */
	outer = bpf_htonl(key.remote_ipv4);
	node = lookup_ipcache(outer);
	if (!node || node->identity != IDENTITY_REMOTE_NODE)
		return drop(skb, &c, REASON_DROP_OVERLAY_SOURCE);

	/* The identity claimed in the VNI must be the one the ipcache has for the inner
	 * source, tunnelled via that same node: a node speaks only for its own pods. */
	info = lookup_ipcache(ip.saddr);
	if (vni > MARK_IDENTITY_MASK || !overlay_identity_ok(info, outer, ip.saddr, vni))
		return drop(skb, &c, REASON_DROP_OVERLAY_IDENTITY);

	ep = lookup_endpoint(ip.daddr);
	if (!ep)
		return drop(skb, &c, REASON_DROP_NO_ENDPOINT);
	c.endpoint_id = ep->endpoint_id;

	if (eth_rewrite(skb, ep->mac, ep->host_mac) < 0)
		return drop(skb, &c, REASON_DROP_REDIRECT_FAILED);
	/* Ingress policy happens in to_endpoint, the one place every path into an endpoint
	 * crosses; the mark carries the identity there (the tunnel key does not survive). */
	skb->mark = MARK_MAGIC_IDENTITY | c.remote_identity;
	return redirect_counted(skb, &c, ep->ifindex, REASON_FROM_OVERLAY);
}

char _license[] SEC("license") = "GPL";
