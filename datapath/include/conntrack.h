/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Conntrack: a pair of entries per flow and the TCP/UDP state machine. */
#ifndef LB_CONNTRACK_H
#define LB_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "lb_maps.h"
#include "parse.h"

/* Next flow state given the current one, the packet's direction and flags. */
static __always_inline __u8 lb_ct_next_state(const struct lb_ct_entry *ct,
					     const struct lb_pkt *pkt, __u8 *fin_seen)
{
	__u8 flags = pkt->tcp_flags;
	__u8 state = ct->state;

	*fin_seen = ct->fin_seen;
	if (pkt->tuple.proto == IPPROTO_UDP)
		return ct->dir == LB_CT_DIR_REPLY ? LB_CT_UDP_EST : state;
	if (flags & LB_TCP_RST)
		return LB_CT_CLOSED;
	if (flags & LB_TCP_FIN) {
		*fin_seen |= 1 << ct->dir;
		return *fin_seen == 3 ? LB_CT_CLOSED_WAIT : LB_CT_FINI;
	}
	switch (state) {
	case LB_CT_SYN_SENT:
		if (ct->dir == LB_CT_DIR_REPLY && (flags & (LB_TCP_SYN | LB_TCP_ACK)) ==
		    (LB_TCP_SYN | LB_TCP_ACK))
			return LB_CT_SYN_ACK;
		break;
	case LB_CT_SYN_ACK:
		if (ct->dir == LB_CT_DIR_ORIGINAL && (flags & LB_TCP_ACK))
			return LB_CT_EST;
		break;
	case LB_CT_CLOSED_WAIT:
		if (flags & LB_TCP_ACK) /* the last ACK after both FINs */
			return LB_CT_CLOSED;
		break;
	}
	return state;
}

/* Account the packet on its entry and move the flow state; both entries of
 * the flow carry the state, so a transition is written to the peer too. */
static __always_inline void lb_ct_update(struct lb_ct_entry *ct, const struct lb_pkt *pkt,
					 __u64 now)
{
	__u8 fin_seen;
	__u8 next = lb_ct_next_state(ct, pkt, &fin_seen);

	ct->last_seen_ns = now;
	__sync_fetch_and_add(&ct->packets, 1);
	__sync_fetch_and_add(&ct->bytes, pkt->len);
	if (next == ct->state && fin_seen == ct->fin_seen)
		return;
	ct->state = next;
	ct->fin_seen = fin_seen;

	struct lb_ct_entry *peer = bpf_map_lookup_elem(&lb_conntrack, &ct->peer);

	if (peer) {
		peer->state = next;
		peer->fin_seen = fin_seen;
		peer->last_seen_ns = now;
	}
}

static __always_inline __u8 lb_ct_initial_state(const struct lb_pkt *pkt)
{
	if (pkt->tuple.proto == IPPROTO_UDP)
		return LB_CT_UDP_UNI;
	if (pkt->tcp_flags & LB_TCP_RST)
		return LB_CT_CLOSED;
	if ((pkt->tcp_flags & (LB_TCP_SYN | LB_TCP_ACK)) == LB_TCP_SYN)
		return LB_CT_SYN_SENT;
	/* Mid-stream packet without an entry (e.g. the table was flushed): adopt
	 * the flow as established rather than break it. */
	return LB_CT_EST;
}

/* A SYN on a closed flow is a new connection reusing the tuple. */
static __always_inline int lb_ct_is_reopen(const struct lb_ct_entry *ct, const struct lb_pkt *pkt)
{
	return ct->dir == LB_CT_DIR_ORIGINAL && ct->state == LB_CT_CLOSED &&
	       (pkt->tcp_flags & (LB_TCP_SYN | LB_TCP_ACK)) == LB_TCP_SYN;
}

/* Create both entries of a DNAT flow to `ep`. Returns the original-direction
 * entry as stored, or NULL when the table refused it. */
static __always_inline struct lb_ct_entry *
lb_ct_create_dnat(const struct lb_pkt *pkt, const struct lb_svc *svc,
		  const struct lb_endpoint *ep, __u64 now)
{
	struct lb_ct_entry orig = {}, reply = {};
	struct lb_ct_key reply_key = {
		.saddr = ep->addr,
		.daddr = pkt->tuple.saddr,
		.sport = ep->port,
		.dport = pkt->tuple.sport,
		.proto = pkt->tuple.proto,
	};

	orig.peer = reply_key;
	orig.xlate_daddr = ep->addr;
	orig.xlate_dport = ep->port;
	orig.xlate = LB_XLATE_DADDR | LB_XLATE_DPORT;
	orig.dir = LB_CT_DIR_ORIGINAL;

	reply.peer = pkt->tuple;
	reply.xlate_saddr = pkt->tuple.daddr;
	reply.xlate_sport = pkt->tuple.dport;
	reply.xlate = LB_XLATE_SADDR | LB_XLATE_SPORT;
	reply.dir = LB_CT_DIR_REPLY;

	orig.rule_id = reply.rule_id = svc->rule_id;
	orig.ep_slot = reply.ep_slot = ep->stat_slot;
	orig.state = reply.state = lb_ct_initial_state(pkt);
	orig.created_ns = reply.created_ns = now;
	orig.last_seen_ns = reply.last_seen_ns = now;

	/* Reply entry first: once the original entry exists, the endpoint's
	 * answer must find its way back. */
	if (bpf_map_update_elem(&lb_conntrack, &reply_key, &reply, BPF_ANY))
		return NULL;
	if (bpf_map_update_elem(&lb_conntrack, &pkt->tuple, &orig, BPF_ANY)) {
		bpf_map_delete_elem(&lb_conntrack, &reply_key);
		return NULL;
	}
	return bpf_map_lookup_elem(&lb_conntrack, &pkt->tuple);
}

#endif /* LB_CONNTRACK_H */
