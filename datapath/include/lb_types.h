/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Map key/value layouts shared by the kernel program and user space.
 *
 * This header is the single definition: datapath/layouts.py mirrors these
 * structs with ctypes and tests/test_layouts_btf.py compares both against the
 * BTF of the built object, so the two cannot drift apart.
 * Addresses and ports are kept in network byte order (as on the wire).
 */
#ifndef LB_TYPES_H
#define LB_TYPES_H

#include <linux/types.h>

#define LB_MAX_RULES 1024
#define LB_MAX_ENDPOINTS 64 /* per rule */
#define LB_CT_DEFAULT_ENTRIES 131072

/* lb_svc.sel */
#define LB_SEL_RR 0

/* lb_svc.nat_mode */
#define LB_NAT_DEFAULT 0 /* DNAT, client source preserved */

/* lb_endpoint.flags */
#define LB_EP_F_ACTIVE 0x1

/* lb_ct_entry.dir */
#define LB_CT_DIR_ORIGINAL 0 /* client -> VIP */
#define LB_CT_DIR_REPLY 1    /* endpoint -> client */

/* lb_ct_entry.xlate: which fields of a packet the entry rewrites */
#define LB_XLATE_SADDR 0x1
#define LB_XLATE_DADDR 0x2
#define LB_XLATE_SPORT 0x4
#define LB_XLATE_DPORT 0x8

/* lb_ct_entry.state (names in datapath/layouts.py CT_STATE_NAMES) */
#define LB_CT_CLOSED 0
#define LB_CT_SYN_SENT 1
#define LB_CT_SYN_ACK 2
#define LB_CT_EST 3
#define LB_CT_FINI 4
#define LB_CT_CLOSED_WAIT 5
#define LB_CT_UDP_UNI 16
#define LB_CT_UDP_EST 17

/* lb_dp_stats index: packets the datapath dropped or could not handle */
#define LB_DROP_NO_ENDPOINT 0 /* rule matched, no active endpoint */
#define LB_DROP_MALFORMED 1   /* headers truncated or inconsistent */
#define LB_DROP_REWRITE 2     /* a helper failed while rewriting */
#define LB_STAT_PASS_FRAGMENT 3 /* IPv4 fragment passed untouched */
#define LB_DP_STAT_MAX 8

/* Service map key: what a client packet is matched on. */
struct lb_svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
	__u32 mark;
};

/* Service map value: the rule a key belongs to. */
struct lb_svc {
	__u32 rule_id;
	__u16 ep_count;  /* endpoints in lb_endpoints[rule_id * LB_MAX_ENDPOINTS ...] */
	__u8 sel;
	__u8 nat_mode;
	__u32 flags;
	__u32 inactive_timeout_s;
};

/* One selectable endpoint; a rule's are stored contiguously, sorted by address. */
struct lb_endpoint {
	__be32 addr;
	__be16 port;
	__u8 weight;
	__u8 flags;
	__u32 stat_slot; /* index into lb_ep_stats; stable across rule updates */
};

/* Mutable per-rule state shared by all CPUs (kept apart from lb_svc so that
 * the service entry stays read-mostly). */
struct lb_rule_state {
	__u64 rr_next;
};

/* Per-CPU packet/byte counter (rules and endpoints). */
struct lb_counter {
	__u64 packets;
	__u64 bytes;
};

/* Conntrack key: one direction of a flow as seen on the wire. */
struct lb_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Conntrack entry. Each flow has two: the original direction (client to VIP)
 * and the reply direction (endpoint to client); each names the other in
 * `peer`, carries the rewrite for its own direction and a copy of the flow
 * state (both copies are updated on every transition). */
struct lb_ct_entry {
	struct lb_ct_key peer;
	__be32 xlate_saddr;
	__be32 xlate_daddr;
	__be16 xlate_sport;
	__be16 xlate_dport;
	__u32 rule_id;
	__u32 ep_slot;   /* stat_slot of the endpoint */
	__u8 dir;
	__u8 state;
	__u8 fin_seen;   /* bit per direction that sent a FIN */
	__u8 xlate;      /* LB_XLATE_* */
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 packets;   /* this direction */
	__u64 bytes;
};

#endif /* LB_TYPES_H */
