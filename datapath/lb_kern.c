// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The load-balancer datapath.
 *
 * lb_ingress, on TC (clsact) ingress: parse -> conntrack lookup -> (miss)
 * service lookup, allow-list, endpoint selection, conntrack create -> NAT
 * rewrite -> counters -> FIB lookup and redirect to the egress interface.
 * Anything that is not ours passes untouched.
 *
 * lb_sweep, run by the agent through BPF_PROG_TEST_RUN: walks conntrack to
 * expire idle flows, or to end the flows of a deleted rule or removed
 * endpoint, so that expiry costs nothing per packet.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "include/lb_types.h"
#include "include/lb_maps.h"
#include "include/parse.h"
#include "include/select.h"
#include "include/conntrack.h"
#include "include/nat.h"
#include "include/forward.h"

/* Enough for Ethernet + VLAN + IPv4 with options + TCP with options. */
#define LB_PULL_LEN (14 + 4 + 60 + 60)

static __always_inline void lb_count_flow(const struct lb_ct_entry *ct, __u32 len)
{
	lb_count(&lb_rule_stats, ct->rule_id, len);
	lb_count(&lb_ep_stats, ct->ep_slot, len);
}

static __always_inline struct lb_svc *lb_find_service(const struct lb_pkt *pkt, __u32 mark)
{
	struct lb_svc_key key = {
		.vip = pkt->tuple.daddr,
		.port = pkt->tuple.proto == IPPROTO_ICMP ? 0 : pkt->tuple.dport,
		.proto = pkt->tuple.proto,
		.mark = mark,
	};
	struct lb_svc *svc;

	if (pkt->tuple.proto == IPPROTO_ICMP && pkt->icmp_type != LB_ICMP_ECHO)
		return NULL;
	svc = bpf_map_lookup_elem(&lb_services, &key);
	/* A rule with a mark (`block`) serves only packets carrying that mark;
	 * unmarked rules serve the rest. */
	if (!svc && key.mark) {
		key.mark = 0;
		svc = bpf_map_lookup_elem(&lb_services, &key);
	}
	return svc;
}

/* Only the MASTER of a service's HA instance (or a node without HA) opens its flows:
 * a BACKUP that did too could give a fullNAT port the MASTER gives another client. */
static __always_inline int lb_instance_opens_flows(const struct lb_svc *svc)
{
	__u32 idx = svc->instance;
	struct lb_instance *inst = bpf_map_lookup_elem(&lb_instances, &idx);

	return !inst || inst->state == LB_HA_MASTER || inst->state == LB_HA_NOT_DEFINED;
}

static __always_inline int lb_source_allowed(const struct lb_svc *svc, __be32 saddr)
{
	struct lb_allow_key key = {
		.prefixlen = 64,
		.rule_id = bpf_htonl(svc->rule_id),
		.addr = saddr,
	};

	return !(svc->flags & LB_SVC_F_ALLOWLIST) || bpf_map_lookup_elem(&lb_allow, &key);
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
		/* The tuple is unknown, so whether it was aimed at a service is
		 * too: count it and leave the verdict to the stack, which
		 * validates headers as well. */
		lb_count(&lb_dp_stats, LB_DROP_MALFORMED, skb->len);
		return TC_ACT_OK;
	}

	now = bpf_ktime_get_ns();
	ct = bpf_map_lookup_elem(&lb_conntrack, &pkt.tuple);
	if (ct && ct->dir == LB_CT_DIR_REPLY && lb_ct_flow_idle(ct, now)) {
		struct lb_ct_key orig_key = ct->peer;
		struct lb_ct_entry *orig = bpf_map_lookup_elem(&lb_conntrack, &orig_key);

		if (orig)
			lb_ct_end(&orig_key, orig, LB_REASON_TIMEOUT, now);
		else
			bpf_map_delete_elem(&lb_conntrack, &pkt.tuple);
		return TC_ACT_OK;
	}
	if (ct && ct->dir == LB_CT_DIR_ORIGINAL &&
	    (lb_ct_flow_idle(ct, now) || lb_ct_is_reopen(ct, &pkt))) {
		lb_ct_end(&pkt.tuple, ct, LB_REASON_TIMEOUT, now);
		ct = NULL;
	}
	if (!ct) {
		struct lb_svc *svc = lb_find_service(&pkt, skb->mark);
		struct lb_endpoint *ep;
		__u32 slot, reason = 0;

		if (!svc)
			return TC_ACT_OK;
		if (!lb_source_allowed(svc, pkt.tuple.saddr))
			return lb_drop(LB_DROP_SOURCE, skb->len);
		if (!lb_instance_opens_flows(svc))
			return lb_drop(LB_DROP_HA_STANDBY, skb->len);
		slot = lb_select(svc, &pkt, now);
		ep = slot == LB_NO_SLOT ? NULL : bpf_map_lookup_elem(&lb_endpoints, &slot);
		if (!ep)
			return lb_drop(LB_DROP_NO_ENDPOINT, skb->len);
		ct = lb_ct_create(&pkt, svc, slot, ep, now, &reason);
		if (!ct)
			return lb_drop(reason, skb->len);
	}

	lb_ct_update(&pkt.tuple, ct, &pkt, now);
	lb_count_flow(ct, skb->len);
	if (lb_apply_xlate(skb, &pkt, ct))
		return lb_drop(LB_DROP_REWRITE, skb->len);
	return lb_forward(skb, &pkt);
}

struct lb_sweep_ctx {
	__u64 now;
	enum lb_sweep_mode mode;
	__u32 target;
	__u32 reason;
	__u32 ended;
};

static long lb_sweep_one(void *map, struct lb_ct_key *key, struct lb_ct_entry *ct,
			 struct lb_sweep_ctx *sc)
{
	if (ct->dir == LB_CT_DIR_REPLY) {
		/* A reply entry whose flow is gone (the LRU evicted the original
		 * entry) is removed once idle. */
		if (lb_ct_idle(ct, sc->now) && !bpf_map_lookup_elem(&lb_conntrack, &ct->peer))
			bpf_map_delete_elem(&lb_conntrack, key);
		return 0;
	}
	switch (sc->mode) {
	case LB_SWEEP_IDLE:
		if (!lb_ct_flow_idle(ct, sc->now))
			return 0;
		lb_ct_end(key, ct, LB_REASON_TIMEOUT, sc->now);
		break;
	case LB_SWEEP_RULE:
		if (ct->rule_id != sc->target)
			return 0;
		lb_ct_end(key, ct, LB_REASON_RULE_DELETED, sc->now);
		break;
	case LB_SWEEP_ENDPOINT:
		if (ct->ep_slot != sc->target)
			return 0;
		lb_ct_end(key, ct, sc->reason ? sc->reason : LB_REASON_EP_REMOVED, sc->now);
		break;
	default:
		return 1;
	}
	sc->ended++;
	return 0;
}

/* cb[0]: LB_SWEEP_* mode, cb[1]: its target (rule id or endpoint slot),
 * cb[2]: the reason reported for ended flows (endpoint mode; 0: removed).
 * Returns the number of flows ended. */
SEC("tc")
int lb_sweep(struct __sk_buff *skb)
{
	struct lb_sweep_ctx sc = {
		.now = bpf_ktime_get_ns(),
		.mode = skb->cb[0],
		.target = skb->cb[1],
		.reason = skb->cb[2],
	};

	bpf_for_each_map_elem(&lb_conntrack, lb_sweep_one, &sc, 0);
	return sc.ended;
}

/* Types user space reads that no map declares: struct lb_event comes from the
 * ring buffer, which has no value type, and two flag sets live in plain integer
 * fields. This global makes clang emit their BTF, so that the tests can check
 * the Python mirrors against it. */
struct {
	struct lb_event event;
	enum lb_svc_flags svc_flags;
	enum lb_ct_flags ct_flags;
} lb_btf_anchor __attribute__((unused));

char LICENSE[] SEC("license") = "GPL";
