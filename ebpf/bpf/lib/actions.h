/* What a program does with a packet, each counted under a reason and, for drops and
 * (with CFG_F_TRACE) forwards, reported as an event. */
#ifndef MEMBRANE_ACTIONS_H
#define MEMBRANE_ACTIONS_H

#include "metrics.h"
#include "events.h"

MB_INLINE int drop(struct __sk_buff *skb, const struct pctx *c, enum reason reason)
{
	metrics_count(skb, c->dir, reason);
	event_emit(skb, c, EVENT_DROP, reason);
	return TC_ACT_SHOT;
}

MB_INLINE void forwarded(struct __sk_buff *skb, const struct pctx *c, enum reason reason)
{
	metrics_count(skb, c->dir, reason);
	if (trace_enabled())
		event_emit(skb, c, EVENT_TRACE, reason);
}

MB_INLINE int pass_to_stack(struct __sk_buff *skb, const struct pctx *c)
{
	forwarded(skb, c, REASON_TO_STACK);
	return TC_ACT_OK;
}

/* Redirects to the egress of ifindex and counts the packet under `reason`, or as a
 * redirect failure when the helper refuses. */
MB_INLINE int redirect_counted(struct __sk_buff *skb, const struct pctx *c, __u32 ifindex,
			       enum reason reason)
{
	long ret = bpf_redirect(ifindex, 0);

	if (ret != TC_ACT_REDIRECT)
		return drop(skb, c, REASON_DROP_REDIRECT_FAILED);
	forwarded(skb, c, reason);
	return TC_ACT_REDIRECT;
}

#endif
