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

/* Whether daddr is an address of a node (this one or another): the config's node IP, or
 * an ipcache entry of identity host or remote-node. */
MB_INLINE int is_node_addr(const struct datapath_config *cfg, const struct ipcache_value *info,
			   __u32 daddr)
{
	if (cfg && cfg->node_ip && daddr == cfg->node_ip)
		return 1;
	return info && (info->identity == IDENTITY_HOST || info->identity == IDENTITY_REMOTE_NODE);
}

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

	/* IPv4 and ARP only (ARP goes to the stack so the endpoint's neighbours resolve). */
	ret = parse_packet(skb, &c, &ip, L3_OFF_ETH, REASON_TO_STACK);
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
	cfg = lookup_config();

	/* The remote identity: a local endpoint's own record, else the ipcache, else world
	 * (host for the node's own address, should the ipcache not have it yet). */
	dst = lookup_endpoint(ip.daddr);
	if (dst) {
		c.remote_identity = dst->identity;
	} else {
		info = lookup_ipcache(ip.daddr);
		if (info)
			c.remote_identity = info->identity;
		else if (cfg && cfg->node_ip && ip.daddr == cfg->node_ip)
			c.remote_identity = IDENTITY_HOST;
		else
			c.remote_identity = IDENTITY_WORLD;
	}

	/* The node's control ports (RPC, gossip, encryption, VXLAN) on any node address are
	 * closed to endpoints unless their egress policy allows it by an explicit entry: an
	 * endpoint that could talk VXLAN to a node would inject packets under any identity
	 * (and towards other nodes it is even masqueraded to this node's address). Checked
	 * before conntrack, per packet, so no entry made earlier can carry it. */
	if (!dst && c.f.has_l4 && (c.f.proto == IPPROTO_TCP || c.f.proto == IPPROTO_UDP) &&
	    cfg_control_port(cfg, c.f.dport) && is_node_addr(cfg, info, ip.daddr) &&
	    !policy_explicit_allow(&c))
		return drop(skb, &c, REASON_DROP_CONTROL_PORT);

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
		if (!cfg)
			return drop(skb, &c, REASON_DROP_NO_OVERLAY);
		/* Strict mode: with encryption on, a remote node's prefix is reached through the
		 * agent's tunnel only; without a ready key (key_index 0) the packet is dropped,
		 * never sent as plaintext VXLAN. The TUN is an L3 device: the redirect strips
		 * the Ethernet header and the agent reads the bare IPv4 packet. */
		if (cfg_encrypt(cfg)) {
			if (!info->key_index || !cfg->tunnel_ifindex)
				return drop(skb, &c, REASON_DROP_NO_KEY);
			skb->mark = 0;
			return redirect_counted(skb, &c, cfg->tunnel_ifindex, REASON_FORWARDED_TUNNEL);
		}
		if (!cfg->overlay_ifindex)
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
 * whether redirected by from_endpoint (local source), by from_overlay or from_tunnel
 * (remote source) or routed by the host stack. Ingress policy is decided here, once for
 * all of them. */
SEC("classifier")
int to_endpoint(struct __sk_buff *skb)
{
	struct pctx c = { .dir = DIR_INGRESS };
	struct endpoint_value *ep, *src;
	struct ipcache_value *info;
	__u32 mark = skb->mark;
	struct iphdr ip;
	enum reason verdict;
	int ret;

	/* The datapath is IPv4 only: ARP is delivered (the endpoint resolves nothing through
	 * it, but the host may probe), anything else is dropped as unsupported-l3. */
	ret = parse_packet(skb, &c, &ip, L3_OFF_ETH, REASON_DELIVERED);
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
		/* From the host stack. A pod-pool source here came neither from an endpoint of
		 * this node nor through the overlay or the tunnel (those carry the mark): it was
		 * routed in from the underlay and would pass under a pod's identity. A local
		 * endpoint's source is genuine only if it entered the host through that
		 * endpoint's own veth (from_endpoint checked it there), e.g. hairpinned by a
		 * host NAT rule. */
		if (cfg_in_pod_pool(lookup_config(), ip.saddr)) {
			src = lookup_endpoint(ip.saddr);
			if (!src || src->ifindex != skb->ingress_ifindex)
				return drop(skb, &c, REASON_DROP_POD_SOURCE);
		}
		/* The source's ipcache identity (world when unknown). */
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
