/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Conntrack: a pair of entries per flow, the TCP/UDP/ICMP state machine,
 * idle expiry, source-port allocation for SNAT modes, and the events that
 * report a flow's life to the agent. */
#ifndef LB_CONNTRACK_H
#define LB_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "lb_maps.h"
#include "parse.h"

#define LB_NS 1000000000ULL
#define LB_SNAT_TRIES 16
#define LB_SNAT_PORT_MIN 1024

static __always_inline __u64 lb_min_s(__u32 a, __u32 b)
{
	return a < b ? a : b;
}

/* How long a flow in this state may stay idle. */
static __always_inline __u64 lb_ct_timeout_ns(const struct lb_ct_entry *ct)
{
	switch (ct->state) {
	case LB_CT_SYN_SENT:
	case LB_CT_SYN_ACK:
		return lb_min_s(ct->timeout_s, LB_CT_HANDSHAKE_TIMEOUT_S) * LB_NS;
	case LB_CT_FINI:
	case LB_CT_CLOSED_WAIT:
		return lb_min_s(ct->timeout_s, LB_CT_CLOSING_TIMEOUT_S) * LB_NS;
	case LB_CT_CLOSED:
		return lb_min_s(ct->timeout_s, LB_CT_CLOSED_TIMEOUT_S) * LB_NS;
	default:
		return (__u64)ct->timeout_s * LB_NS;
	}
}

static __always_inline int lb_ct_idle(const struct lb_ct_entry *ct, __u64 now)
{
	return now > ct->last_seen_ns && now - ct->last_seen_ns > lb_ct_timeout_ns(ct);
}

/* A flow is idle when neither direction has been seen within its timeout.
 * Each entry records only its own direction, so the peer is consulted, and
 * only when the cheap test of this entry already says idle. */
static __always_inline int lb_ct_flow_idle(const struct lb_ct_entry *ct, __u64 now)
{
	const struct lb_ct_entry *peer;

	if (!lb_ct_idle(ct, now))
		return 0;
	peer = bpf_map_lookup_elem(&lb_conntrack, &ct->peer);
	return !peer || lb_ct_idle(peer, now);
}

/* Waking the agent costs an interrupt per event; it is woken only once this
 * much is waiting, and otherwise collects on its own timer. */
#define LB_EVENTS_WAKEUP_BYTES (256 * 1024)

static __always_inline __u64 lb_event_wakeup(void)
{
	return bpf_ringbuf_query(&lb_events, BPF_RB_AVAIL_DATA) >= LB_EVENTS_WAKEUP_BYTES
		       ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Send an event with both entries; a full ring buffer is counted, never waited on. */
static __always_inline void lb_ct_emit(__u8 type, __u8 reason, const struct lb_ct_key *key,
				       const struct lb_ct_entry *orig,
				       const struct lb_ct_entry *reply, __u64 now)
{
	struct lb_event *ev = bpf_ringbuf_reserve(&lb_events, sizeof(*ev), 0);

	if (!ev) {
		lb_count(&lb_dp_stats, LB_STAT_EVENTS_LOST, 0);
		return;
	}
	ev->type = type;
	ev->reason = reason;
	ev->pad = 0;
	ev->rule_id = orig->rule_id;
	ev->ts_ns = now;
	ev->key = *key;
	ev->orig = *orig;
	if (reply)
		ev->reply = *reply;
	else
		__builtin_memset(&ev->reply, 0, sizeof(ev->reply));
	bpf_ringbuf_submit(ev, lb_event_wakeup());
}

/* The flow stops counting towards its endpoint's load (once). */
static __always_inline void lb_ct_release_load(struct lb_ct_entry *orig)
{
	if (__sync_fetch_and_and(&orig->flags, ~LB_CT_F_COUNTED) & LB_CT_F_COUNTED) {
		__u32 slot = orig->ep_slot;
		struct lb_ep_load *load = bpf_map_lookup_elem(&lb_ep_load, &slot);

		if (load)
			__sync_fetch_and_add(&load->active, -1);
	}
}

/* End a flow: report it (unless its close was reported already), release
 * its load and delete both entries. */
static __always_inline void lb_ct_end(const struct lb_ct_key *key, struct lb_ct_entry *orig,
				      __u8 reason, __u64 now)
{
	struct lb_ct_key reply_key = orig->peer;
	struct lb_ct_entry *reply = bpf_map_lookup_elem(&lb_conntrack, &reply_key);

	if (!(orig->flags & LB_CT_F_REPORTED_CLOSED))
		lb_ct_emit(LB_EV_EXPIRED, reason, key, orig, reply, now);
	lb_ct_release_load(orig);
	bpf_map_delete_elem(&lb_conntrack, &reply_key);
	bpf_map_delete_elem(&lb_conntrack, key);
}

/* While conntrack sync is on (lb_config.refresh_ns set), a flow that carries traffic
 * but changes no state is reported again every refresh_ns, so that the copies on the
 * peers, which see none of its packets, do not age out before it does here. */
static __always_inline void lb_ct_maybe_refresh(const struct lb_ct_key *key,
						struct lb_ct_entry *ct, __u64 now)
{
	__u32 zero = 0;
	struct lb_config *cfg = bpf_map_lookup_elem(&lb_config, &zero);
	struct lb_ct_entry *peer;

	if (!cfg || !cfg->refresh_ns || now - ct->reported_ns < cfg->refresh_ns)
		return;
	ct->reported_ns = now; /* two CPUs may both report: the peers take both */
	peer = bpf_map_lookup_elem(&lb_conntrack, &ct->peer);
	if (peer)
		peer->reported_ns = now; /* paced per flow, whichever side carries traffic */
	if (ct->dir == LB_CT_DIR_ORIGINAL)
		lb_ct_emit(LB_EV_REFRESH, LB_REASON_NONE, key, ct, peer, now);
	else if (peer)
		lb_ct_emit(LB_EV_REFRESH, LB_REASON_NONE, &ct->peer, peer, ct, now);
}

/* Next flow state given the current one, the packet's direction and flags. */
static __always_inline __u8 lb_ct_next_state(const struct lb_ct_entry *ct,
					     const struct lb_pkt *pkt, __u8 *fin_seen)
{
	__u8 flags = pkt->tcp_flags;
	__u8 state = ct->state;

	*fin_seen = ct->fin_seen;
	if (pkt->tuple.proto == IPPROTO_UDP)
		return ct->dir == LB_CT_DIR_REPLY ? LB_CT_UDP_EST : state;
	if (pkt->tuple.proto == IPPROTO_ICMP)
		return ct->dir == LB_CT_DIR_REPLY ? LB_CT_ICMP_BIDIR : state;
	if (flags & LB_TCP_RST)
		return LB_CT_CLOSED;
	if (state == LB_CT_CLOSED)
		return state;
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
 * the flow carry the state, so a transition is written to the peer too, and
 * reported to the agent when the flow becomes established or closed. */
static __always_inline void lb_ct_update(const struct lb_ct_key *key, struct lb_ct_entry *ct,
					 const struct lb_pkt *pkt, __u64 now)
{
	__u8 fin_seen, prev = ct->state;
	__u8 next = lb_ct_next_state(ct, pkt, &fin_seen);
	struct lb_ct_entry *peer, *orig, *reply;
	const struct lb_ct_key *orig_key;

	ct->last_seen_ns = now;
	if (ct->flags & LB_CT_F_SYNCED) /* a peer's copy carries traffic here: ours now */
		__sync_fetch_and_and(&ct->flags, ~LB_CT_F_SYNCED);
	__sync_fetch_and_add(&ct->packets, 1);
	__sync_fetch_and_add(&ct->bytes, pkt->len);
	/* What the receiver expects next from this side: a reset the agent
	 * sends on the flow's behalf must carry exactly that. Retransmissions
	 * and keepalives (snd_una - 1) must not move it back. */
	if (pkt->tuple.proto == IPPROTO_TCP && !(pkt->tcp_flags & LB_TCP_RST)) {
		__u32 next_seq = pkt->seq + pkt->seq_len;

		if (!ct->seq_next || (__s32)(next_seq - ct->seq_next) > 0)
			ct->seq_next = next_seq;
	}
	if (next == prev && fin_seen == ct->fin_seen) {
		lb_ct_maybe_refresh(key, ct, now);
		return;
	}
	ct->state = next;
	ct->fin_seen = fin_seen;

	peer = bpf_map_lookup_elem(&lb_conntrack, &ct->peer);
	if (peer) {
		peer->state = next;
		peer->fin_seen = fin_seen;
		peer->last_seen_ns = now;
	}
	if (next == prev)
		return;
	orig = ct->dir == LB_CT_DIR_ORIGINAL ? ct : peer;
	reply = ct->dir == LB_CT_DIR_ORIGINAL ? peer : ct;
	orig_key = ct->dir == LB_CT_DIR_ORIGINAL ? key : &ct->peer;
	if (!orig)
		return;
	if (next == LB_CT_EST || next == LB_CT_UDP_EST || next == LB_CT_ICMP_BIDIR) {
		ct->reported_ns = now;
		lb_ct_emit(LB_EV_EST, LB_REASON_NONE, orig_key, orig, reply, now);
	} else if (next == LB_CT_CLOSED &&
		   !(__sync_fetch_and_or(&orig->flags, LB_CT_F_REPORTED_CLOSED) &
		     LB_CT_F_REPORTED_CLOSED)) {
		lb_ct_emit(LB_EV_CLOSED, pkt->tcp_flags & LB_TCP_RST ? LB_REASON_RST : LB_REASON_FIN,
			   orig_key, orig, reply, now);
		lb_ct_release_load(orig);
	}
}

static __always_inline __u8 lb_ct_initial_state(const struct lb_pkt *pkt)
{
	if (pkt->tuple.proto == IPPROTO_UDP)
		return LB_CT_UDP_UNI;
	if (pkt->tuple.proto == IPPROTO_ICMP)
		return LB_CT_ICMP_REQ;
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

/* Insert the reply entry. For SNAT modes the source port is chosen so that
 * the reply tuple is unique: the client's own port when free, else random
 * ones; BPF_NOEXIST makes the choice atomic between CPUs. */
static __always_inline int lb_ct_insert_reply(struct lb_ct_key *reply_key,
					      struct lb_ct_entry *reply, int snat)
{
	if (!snat || reply_key->proto == IPPROTO_ICMP)
		return bpf_map_update_elem(&lb_conntrack, reply_key, reply, BPF_ANY) ? -1 : 0;
	for (int i = 0; i < LB_SNAT_TRIES; i++) {
		if (i)
			reply_key->dport = bpf_htons(LB_SNAT_PORT_MIN +
				bpf_get_prandom_u32() % (65536 - LB_SNAT_PORT_MIN));
		if (!bpf_map_update_elem(&lb_conntrack, reply_key, reply, BPF_NOEXIST))
			return 0;
	}
	return -2;
}

/* Create both entries of a new flow to the endpoint in `slot`. Returns the
 * original-direction entry as stored, or NULL with *drop_reason set. */
static __always_inline struct lb_ct_entry *
lb_ct_create(const struct lb_pkt *pkt, const struct lb_svc *svc, __u32 slot,
	     const struct lb_endpoint *ep, __u64 now, __u32 *drop_reason)
{
	struct lb_ct_entry orig = {}, reply = {};
	int snat = svc->nat_mode == LB_NAT_ONEARM || svc->nat_mode == LB_NAT_FULLNAT;
	__be32 src = pkt->tuple.saddr;
	__be16 eport = ep->port ? ep->port : pkt->tuple.dport;
	struct lb_ct_key reply_key = {
		.daddr = pkt->tuple.saddr,
		.sport = eport,
		.dport = pkt->tuple.sport,
		.proto = pkt->tuple.proto,
	};
	struct lb_ep_load *load;

	reply_key.saddr = ep->addr;
	if (snat) {
		src = svc->nat_mode == LB_NAT_FULLNAT && svc->snat_addr ? svc->snat_addr
									 : ep->snat_addr;
		reply_key.daddr = src;
	}
	if (pkt->tuple.proto == IPPROTO_ICMP) /* echo replies: identifier as dport */
		reply_key.sport = 0;

	orig.dir = LB_CT_DIR_ORIGINAL;
	orig.xlate_daddr = ep->addr;
	orig.xlate_dport = eport;
	orig.xlate = LB_XLATE_DADDR;
	reply.dir = LB_CT_DIR_REPLY;
	reply.xlate_saddr = pkt->tuple.daddr;
	reply.xlate_sport = pkt->tuple.dport;
	reply.xlate = LB_XLATE_SADDR;
	if (pkt->tuple.proto != IPPROTO_ICMP) {
		orig.xlate |= LB_XLATE_DPORT;
		reply.xlate |= LB_XLATE_SPORT;
	}
	if (snat) {
		reply.xlate_daddr = pkt->tuple.saddr;
		reply.xlate_dport = pkt->tuple.sport;
		reply.xlate |= LB_XLATE_DADDR | (pkt->tuple.proto != IPPROTO_ICMP ? LB_XLATE_DPORT : 0);
		orig.xlate_saddr = src;
		orig.xlate |= LB_XLATE_SADDR;
	}
	orig.rule_id = reply.rule_id = svc->rule_id;
	orig.ep_slot = reply.ep_slot = slot;
	orig.timeout_s = reply.timeout_s = svc->timeout_s;
	orig.nat_mode = reply.nat_mode = svc->nat_mode;
	orig.state = reply.state = lb_ct_initial_state(pkt);
	orig.created_ns = reply.created_ns = now;
	orig.last_seen_ns = reply.last_seen_ns = now;
	orig.reported_ns = reply.reported_ns = now;
	orig.flags = LB_CT_F_COUNTED;
	reply.peer = pkt->tuple;

	/* Reply entry first: once the original entry exists, the endpoint's
	 * answer must find its way back. */
	switch (lb_ct_insert_reply(&reply_key, &reply, snat)) {
	case 0:
		break;
	case -2:
		*drop_reason = LB_DROP_SNAT_PORTS;
		return NULL;
	default:
		*drop_reason = LB_DROP_CT_FULL;
		return NULL;
	}
	orig.peer = reply_key;
	if (snat && pkt->tuple.proto != IPPROTO_ICMP) {
		orig.xlate_sport = reply_key.dport;
		orig.xlate |= LB_XLATE_SPORT;
	}
	if (bpf_map_update_elem(&lb_conntrack, &pkt->tuple, &orig, BPF_ANY)) {
		bpf_map_delete_elem(&lb_conntrack, &reply_key);
		*drop_reason = LB_DROP_CT_FULL;
		return NULL;
	}
	load = bpf_map_lookup_elem(&lb_ep_load, &slot);
	if (load)
		__sync_fetch_and_add(&load->active, 1);
	lb_ct_emit(LB_EV_NEW, LB_REASON_NONE, &pkt->tuple, &orig, &reply, now);
	return bpf_map_lookup_elem(&lb_conntrack, &pkt->tuple);
}

#endif /* LB_CONNTRACK_H */
