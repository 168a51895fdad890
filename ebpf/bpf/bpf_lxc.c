/* Endpoint programs, attached to the host side of each endpoint's veth
 * (docs/datapath.md, "Programs"). */
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

/* tc ingress on the host side: packets leaving the endpoint. Egress policy of the
 * source endpoint is decided here. */
SEC("classifier")
int from_endpoint(struct __sk_buff *skb)
{
	struct pctx c = { .dir = DIR_EGRESS };
	struct endpoint_value *src, *dst;
	struct ipcache_value *info = NULL;
	struct datapath_config *cfg;
	struct bpf_tunnel_key key = {};
	struct iphdr ip;
	enum reason verdict;
	int ret;

	ret = parse_packet(skb, &c, &ip, REASON_TO_STACK);
	if (ret != PARSE_OK)
		return ret;

	/* Anti-spoofing: the source must be the endpoint behind this very interface. */
	src = lookup_endpoint(ip.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(skb, &c, REASON_DROP_SPOOFED);
	/* Policy keys hold 16 bits: a larger id would select another endpoint's policy. */
	if (src->endpoint_id > 0xffff)
		return drop(skb, &c, REASON_DROP_NO_POLICY_CONTEXT);
	c.endpoint_id = src->endpoint_id;

	/* The remote identity: a local endpoint's own record, else the ipcache, else world. */
	dst = lookup_endpoint(ip.daddr);
	if (dst) {
		c.remote_identity = dst->identity;
	} else {
		info = lookup_ipcache(ip.daddr);
		c.remote_identity = info ? info->identity : IDENTITY_WORLD;
	}

	verdict = policy_enforce(skb, &c, src->flags);
	if (verdict)
		return drop(skb, &c, verdict);

	if (dst) {
		if (eth_rewrite(skb, dst->mac, dst->host_mac) < 0)
			return drop(skb, &c, REASON_DROP_REDIRECT_FAILED);
		/* to_endpoint of dst decides ingress with the identity checked above. */
		skb->mark = MARK_MAGIC_IDENTITY | (src->identity & MARK_IDENTITY_MASK);
		return redirect_counted(skb, &c, dst->ifindex, REASON_FORWARDED_LOCAL);
	}

	if (info && info->tunnel_endpoint) {
		cfg = lookup_config();
		if (!cfg || !cfg->overlay_ifindex)
			return drop(skb, &c, REASON_DROP_NO_OVERLAY);
		/* bpf_tunnel_key.remote_ipv4 is in host byte order, the map in network order.
		 * The VNI is 24 bits wide: identities must stay below 2^24. */
		key.remote_ipv4 = bpf_ntohl(info->tunnel_endpoint);
		key.tunnel_id = src->identity;
		key.tunnel_ttl = 64;
		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
			return drop(skb, &c, REASON_DROP_REDIRECT_FAILED);
		return redirect_counted(skb, &c, cfg->overlay_ifindex, REASON_FORWARDED_OVERLAY);
	}

	/* Not ours to forward: the host stack routes it (and masquerades if configured). */
	return pass_to_stack(skb, &c);
}

/* tc egress on the host side: every packet about to enter the endpoint passes here,
 * whether redirected by from_endpoint (local source), by from_overlay (remote source)
 * or routed by the host stack. Ingress policy is decided here, once for all three. */
SEC("classifier")
int to_endpoint(struct __sk_buff *skb)
{
	struct pctx c = { .dir = DIR_INGRESS };
	struct endpoint_value *ep;
	struct ipcache_value *info;
	__u32 mark = skb->mark;
	struct iphdr ip;
	enum reason verdict;
	int ret;

	/* The datapath is IPv4 only; endpoints get no other address family: anything else is
	 * delivered as it is. */
	ret = parse_packet(skb, &c, &ip, REASON_DELIVERED);
	if (ret != PARSE_OK)
		return ret;

	/* Whose ingress policy applies: the endpoint behind this interface. A packet for
	 * another address has no policy to check and is not delivered. */
	ep = lookup_endpoint(ip.daddr);
	if (!ep || ep->ifindex != skb->ifindex || ep->endpoint_id > 0xffff)
		return drop(skb, &c, REASON_DROP_NO_POLICY_CONTEXT);
	c.endpoint_id = ep->endpoint_id;

	if ((mark & MARK_MAGIC_MASK) == MARK_MAGIC_IDENTITY) {
		c.remote_identity = mark & MARK_IDENTITY_MASK;
		/* Consumed: nothing downstream should read our mark as its own. */
		skb->mark = 0;
	} else {
		/* From the host stack: the source's ipcache identity (world when unknown). */
		info = lookup_ipcache(ip.saddr);
		c.remote_identity = info ? info->identity : IDENTITY_WORLD;
	}

	verdict = policy_enforce(skb, &c, ep->flags);
	if (verdict)
		return drop(skb, &c, verdict);
	forwarded(skb, &c, REASON_DELIVERED);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
