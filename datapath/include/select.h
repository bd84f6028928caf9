/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Endpoint selection for a new flow. Every selector returns an endpoint slot
 * (index into lb_endpoints) that is active and belongs to the rule, or
 * LB_NO_SLOT when the rule has no active endpoint. */
#ifndef LB_SELECT_H
#define LB_SELECT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_maps.h"
#include "parse.h"

#define LB_NO_SLOT 0xffffffffu
#define LB_HASH_PROBES 8 /* buckets tried past one whose endpoint went inactive */

static __always_inline struct lb_endpoint *lb_endpoint_usable(__u32 slot, __u32 rule_id)
{
	struct lb_endpoint *ep = bpf_map_lookup_elem(&lb_endpoints, &slot);

	if (ep && (ep->flags & LB_EP_F_ACTIVE) && ep->rule_id == rule_id)
		return ep;
	return NULL;
}

static __always_inline __u32 lb_rule_slot(const struct lb_rule_slots *rule, __u64 n)
{
	return rule->slots[(n % rule->ep_count) & (LB_MAX_ENDPOINTS - 1)];
}

/* Bob Jenkins' lookup3 final mix, over the flow's 5-tuple. */
#define LB_ROL32(x, k) (((x) << (k)) | ((x) >> (32 - (k))))
static __always_inline __u32 lb_hash_tuple(const struct lb_ct_key *t)
{
	__u32 a = t->saddr, b = t->daddr, c = ((__u32)t->sport << 16 | t->dport) ^ t->proto;

	a += 0xdeadbeef; b += 0xdeadbeef; c += 0xdeadbeef;
	c ^= b; c -= LB_ROL32(b, 14);
	a ^= c; a -= LB_ROL32(c, 11);
	b ^= a; b -= LB_ROL32(a, 25);
	c ^= b; c -= LB_ROL32(b, 16);
	a ^= c; a -= LB_ROL32(c, 4);
	b ^= a; b -= LB_ROL32(a, 14);
	c ^= b; c -= LB_ROL32(b, 24);
	return c;
}

/* Round robin: one shared cursor per rule, advanced atomically so that
 * consecutive flows rotate strictly whichever CPU they arrive on. */
static __always_inline __u32 lb_select_rr(__u32 rule_id, const struct lb_rule_slots *rule)
{
	struct lb_rule_state *rs = bpf_map_lookup_elem(&lb_rule_state, &rule_id);
	__u64 start;

	if (!rs)
		return LB_NO_SLOT;
	start = __sync_fetch_and_add(&rs->rr_next, 1);
	for (__u32 i = 0; i < LB_MAX_ENDPOINTS && i < rule->ep_count; i++) {
		__u32 slot = lb_rule_slot(rule, start + i);

		if (lb_endpoint_usable(slot, rule_id)) {
			if (i) /* keep the rotation strict after skipping */
				__sync_fetch_and_add(&rs->rr_next, i);
			return slot;
		}
	}
	return LB_NO_SLOT;
}

/* Consistent hashing: the agent's Maglev table maps hash buckets to slots. */
static __always_inline __u32 lb_select_hash(__u32 rule_id, const struct lb_rule_slots *rule,
					    const struct lb_pkt *pkt)
{
	void *table = bpf_map_lookup_elem(&lb_maglev, &rule_id);
	__u32 bucket;

	if (!table)
		return lb_select_rr(rule_id, rule);
	bucket = lb_hash_tuple(&pkt->tuple) % LB_MAGLEV_SIZE;
	for (__u32 i = 0; i < LB_HASH_PROBES; i++) {
		__u32 b = (bucket + i) % LB_MAGLEV_SIZE;
		__u32 *slot = bpf_map_lookup_elem(table, &b);

		if (slot && lb_endpoint_usable(*slot, rule_id))
			return *slot;
	}
	return lb_select_rr(rule_id, rule);
}

/* Weighted: an endpoint is chosen with probability weight / total weight. */
static __always_inline __u32 lb_select_weighted(__u32 rule_id, const struct lb_rule_slots *rule)
{
	__u32 total = 0, pick;

	for (__u32 i = 0; i < LB_MAX_ENDPOINTS && i < rule->ep_count; i++) {
		struct lb_endpoint *ep = lb_endpoint_usable(rule->slots[i], rule_id);

		if (ep)
			total += ep->weight;
	}
	if (!total)
		return LB_NO_SLOT;
	pick = bpf_get_prandom_u32() % total;
	for (__u32 i = 0; i < LB_MAX_ENDPOINTS && i < rule->ep_count; i++) {
		struct lb_endpoint *ep = lb_endpoint_usable(rule->slots[i], rule_id);

		if (!ep)
			continue;
		if (pick < ep->weight)
			return rule->slots[i];
		pick -= ep->weight;
	}
	return LB_NO_SLOT;
}

/* Least connections: fewest active flows; ties broken from a rotating start. */
static __always_inline __u32 lb_select_lc(__u32 rule_id, const struct lb_rule_slots *rule)
{
	struct lb_rule_state *rs = bpf_map_lookup_elem(&lb_rule_state, &rule_id);
	__u64 best_load = ~0ULL, start;
	__u32 best = LB_NO_SLOT;

	if (!rs)
		return LB_NO_SLOT;
	start = __sync_fetch_and_add(&rs->rr_next, 1);
	for (__u32 i = 0; i < LB_MAX_ENDPOINTS && i < rule->ep_count; i++) {
		__u32 slot = lb_rule_slot(rule, start + i);
		struct lb_ep_load *load;

		if (!lb_endpoint_usable(slot, rule_id))
			continue;
		load = bpf_map_lookup_elem(&lb_ep_load, &slot);
		if (load) {
			/* a release racing the agent's own count (conntrack sync) may take
			 * a load below zero: that wraps, and counts as none */
			__u64 active = (__s64)load->active < 0 ? 0 : load->active;

			if (active < best_load) {
				best_load = active;
				best = slot;
			}
		}
	}
	return best;
}

/* Persist: a client address keeps its endpoint while the binding is used
 * within the rule's persist lifetime; new bindings are made round robin. */
static __always_inline __u32 lb_select_persist(__u32 rule_id, const struct lb_rule_slots *rule,
					       const struct lb_svc *svc,
					       const struct lb_pkt *pkt, __u64 now)
{
	struct lb_persist_key key = { .rule_id = rule_id, .client = pkt->tuple.saddr };
	struct lb_persist *bound = bpf_map_lookup_elem(&lb_persist, &key);
	struct lb_persist fresh = {};

	if (bound && now - bound->last_used_ns <= (__u64)svc->persist_s * 1000000000ULL &&
	    lb_endpoint_usable(bound->slot, rule_id)) {
		bound->last_used_ns = now;
		return bound->slot;
	}
	fresh.slot = lb_select_rr(rule_id, rule);
	fresh.last_used_ns = now;
	if (fresh.slot != LB_NO_SLOT)
		bpf_map_update_elem(&lb_persist, &key, &fresh, BPF_ANY);
	return fresh.slot;
}

static __always_inline __u32 lb_select(const struct lb_svc *svc, const struct lb_pkt *pkt,
				       __u64 now)
{
	__u32 rule_id = svc->rule_id;
	struct lb_rule_slots *rule = bpf_map_lookup_elem(&lb_rules, &rule_id);

	if (!rule || rule->ep_count == 0 || rule->ep_count > LB_MAX_ENDPOINTS)
		return LB_NO_SLOT;
	switch (svc->sel) {
	case LB_SEL_HASH:
		return lb_select_hash(rule_id, rule, pkt);
	case LB_SEL_PRIORITY:
		return lb_select_weighted(rule_id, rule);
	case LB_SEL_PERSIST:
		return lb_select_persist(rule_id, rule, svc, pkt, now);
	case LB_SEL_LC:
		return lb_select_lc(rule_id, rule);
	default:
		return lb_select_rr(rule_id, rule);
	}
}

#endif /* LB_SELECT_H */
