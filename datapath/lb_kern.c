// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The load-balancer datapath: one TC (clsact) ingress program.
 *
 * parse -> conntrack lookup -> (miss) service lookup + endpoint selection +
 * conntrack create -> NAT rewrite -> counters -> TC_ACT_OK (the kernel
 * routes the rewritten packet). Anything that is not ours passes untouched.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "include/lb_types.h"
#include "include/lb_maps.h"
#include "include/parse.h"
#include "include/select.h"
#include "include/conntrack.h"
#include "include/nat.h"

/* Enough for Ethernet + VLAN + IPv4 with options + TCP with options. */
#define LB_PULL_LEN (14 + 4 + 60 + 60)

static __always_inline int lb_drop(__u32 reason, __u32 len)
{
	lb_count(&lb_dp_stats, reason, len);
	return TC_ACT_SHOT;
}

static __always_inline void lb_count_flow(const struct lb_ct_entry *ct, __u32 len)
{
	if (ct->rule_id < LB_MAX_RULES) {
		lb_count(&lb_rule_stats, ct->rule_id, len);
		lb_count(&lb_ep_stats, ct->ep_slot, len);
	}
}

SEC("tc")
int lb_ingress(struct __sk_buff *skb)
{
	struct lb_pkt pkt = {};
	struct lb_ct_entry *ct;
	__u64 now;
	int res;

	if (skb->data_end - skb->data < LB_PULL_LEN && skb->len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, skb->len < LB_PULL_LEN ? skb->len : LB_PULL_LEN);

	res = lb_parse(skb, &pkt);
	if (res == LB_PARSE_NOT_OURS)
		return TC_ACT_OK;
	if (res == LB_PARSE_FRAGMENT) {
		lb_count(&lb_dp_stats, LB_STAT_PASS_FRAGMENT, skb->len);
		return TC_ACT_OK;
	}
	if (res == LB_PARSE_MALFORMED) {
		/* Only packets aimed at a service are ours to judge; anything else
		 * is the node's business. The tuple is unknown here, so count it
		 * and let the stack (which validates too) decide. */
		lb_count(&lb_dp_stats, LB_DROP_MALFORMED, skb->len);
		return TC_ACT_OK;
	}

	now = bpf_ktime_get_ns();
	ct = bpf_map_lookup_elem(&lb_conntrack, &pkt.tuple);
	if (!ct || lb_ct_is_reopen(ct, &pkt)) {
		struct lb_svc_key key = {
			.vip = pkt.tuple.daddr,
			.port = pkt.tuple.dport,
			.proto = pkt.tuple.proto,
			.mark = skb->mark,
		};
		struct lb_svc *svc = bpf_map_lookup_elem(&lb_services, &key);
		struct lb_endpoint *ep;

		/* A rule with a mark (`block`) serves only packets carrying that
		 * mark; unmarked rules serve the rest. */
		if (!svc && key.mark) {
			key.mark = 0;
			svc = bpf_map_lookup_elem(&lb_services, &key);
		}
		if (!svc)
			return TC_ACT_OK;
		ep = lb_select(svc);
		if (!ep)
			return lb_drop(LB_DROP_NO_ENDPOINT, skb->len);
		ct = lb_ct_create_dnat(&pkt, svc, ep, now);
		if (!ct)
			return lb_drop(LB_DROP_REWRITE, skb->len);
	}

	lb_ct_update(ct, &pkt, now);
	lb_count_flow(ct, skb->len);
	if (lb_apply_xlate(skb, &pkt, ct))
		return lb_drop(LB_DROP_REWRITE, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
