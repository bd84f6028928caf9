/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Endpoint selection for a new flow. */
#ifndef LB_SELECT_H
#define LB_SELECT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_maps.h"

/* Round robin: one shared cursor per rule, advanced atomically so that
 * consecutive flows rotate strictly over the endpoints whichever CPU they
 * arrive on. Inactive endpoints are skipped. Returns NULL when none is active. */
static __always_inline struct lb_endpoint *lb_select_rr(const struct lb_svc *svc)
{
	__u32 rule_id = svc->rule_id;
	__u32 count = svc->ep_count;
	struct lb_rule_state *rs;
	__u64 start;

	if (count == 0 || count > LB_MAX_ENDPOINTS || rule_id >= LB_MAX_RULES)
		return NULL;
	rs = bpf_map_lookup_elem(&lb_rule_state, &rule_id);
	if (!rs)
		return NULL;
	start = __sync_fetch_and_add(&rs->rr_next, 1);

	for (__u32 i = 0; i < LB_MAX_ENDPOINTS; i++) {
		if (i >= count)
			break;
		__u32 idx = rule_id * LB_MAX_ENDPOINTS + (__u32)((start + i) % count);
		struct lb_endpoint *ep = bpf_map_lookup_elem(&lb_endpoints, &idx);

		if (ep && (ep->flags & LB_EP_F_ACTIVE)) {
			if (i)  /* keep the rotation strict after skipping */
				__sync_fetch_and_add(&rs->rr_next, i);
			return ep;
		}
	}
	return NULL;
}

static __always_inline struct lb_endpoint *lb_select(const struct lb_svc *svc)
{
	switch (svc->sel) {
	case LB_SEL_RR:
	default: /* the agent only installs selections this object implements */
		return lb_select_rr(svc);
	}
}

#endif /* LB_SELECT_H */
