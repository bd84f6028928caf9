/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Map key/value layouts and constants shared by the kernel program and user space.
 *
 * This header is the single definition: datapath/layouts.py mirrors these
 * structs with ctypes and tests/dp/test_layouts_btf.py compares both against the
 * BTF of the built object, so the two cannot drift apart.
 * Addresses and ports are kept in network byte order (as on the wire).
 */
#ifndef LB_TYPES_H
#define LB_TYPES_H

#include <linux/types.h>

#define LB_MAX_RULES 16384
#define LB_MAX_ENDPOINTS 64      /* per rule */
#define LB_MAX_EP_SLOTS 65536    /* endpoints of all rules together */
#define LB_MAX_SVC_KEYS 65536    /* (VIP, port, proto, mark) keys; port ranges use one per port */
#define LB_MAGLEV_SIZE 65537     /* buckets per consistent-hash table (prime) */
#define LB_CT_DEFAULT_ENTRIES 131072
#define LB_PERSIST_ENTRIES 65536
#define LB_ALLOW_ENTRIES 16384
#define LB_EVENTS_BYTES (4 * 1024 * 1024)
#define LB_MAX_INSTANCES 256     /* HA cluster instances (index 0: "default") */

/* Enums rather than #defines: BTF carries them, and the Python mirrors in
 * datapath/layouts.py are checked against the object's BTF (names and values).
 * Those a one-byte field holds are packed (one byte, the field's size). */
#define LB_PACKED __attribute__((packed))

/* lb_svc.sel: endpoint selection (the API's `sel` codes) */
enum LB_PACKED lb_sel {
	LB_SEL_RR = 0,
	LB_SEL_HASH = 1,
	LB_SEL_PRIORITY = 2, /* weighted */
	LB_SEL_PERSIST = 3,
	LB_SEL_LC = 4,
};

/* lb_svc.nat_mode, lb_ct_entry.nat_mode (the API's `mode` codes) */
enum LB_PACKED lb_nat_mode {
	LB_NAT_DEFAULT = 0, /* DNAT, client source preserved */
	LB_NAT_ONEARM = 1,  /* + source = the LB's address towards the endpoint */
	LB_NAT_FULLNAT = 2, /* + source = the rule's private IP, else as onearm */
};

/* lb_svc.flags */
enum lb_svc_flags {
	LB_SVC_F_ALLOWLIST = 0x1, /* only sources in lb_allow may open flows */
};

/* lb_endpoint.flags */
enum LB_PACKED lb_ep_flags {
	LB_EP_F_ACTIVE = 0x1,
};

/* lb_ct_entry.dir */
enum LB_PACKED lb_ct_dir {
	LB_CT_DIR_ORIGINAL = 0, /* client -> VIP */
	LB_CT_DIR_REPLY = 1,    /* endpoint -> client (or -> SNAT address) */
};

/* lb_ct_entry.xlate: which fields of a packet the entry rewrites (bits) */
enum LB_PACKED lb_xlate {
	LB_XLATE_SADDR = 0x1,
	LB_XLATE_DADDR = 0x2,
	LB_XLATE_SPORT = 0x4,
	LB_XLATE_DPORT = 0x8,
};

/* lb_ct_entry.flags (bits, changed atomically; COUNTED and REPORTED_CLOSED on the
 * original-direction entry, SYNCED on both) */
enum lb_ct_flags {
	LB_CT_F_COUNTED = 0x1,         /* counted in lb_ep_load of its endpoint */
	LB_CT_F_REPORTED_CLOSED = 0x2, /* a CLOSED event went out already */
	LB_CT_F_SYNCED = 0x4,          /* a copy from a peer (both entries), which carries the
					* flow; the first packet here clears it: the flow is
					* this node's from then on */
};

/* lb_ct_entry.state (their words are the API's, in loxicmd/names.py) */
enum LB_PACKED lb_ct_state {
	LB_CT_CLOSED = 0,
	LB_CT_SYN_SENT = 1,
	LB_CT_SYN_ACK = 2,
	LB_CT_EST = 3,
	LB_CT_FINI = 4,
	LB_CT_CLOSED_WAIT = 5,
	LB_CT_UDP_UNI = 16,
	LB_CT_UDP_EST = 17,
	LB_CT_ICMP_REQ = 32,
	LB_CT_ICMP_BIDIR = 33,
};

/* Idle timeouts of the TCP states that are not "established" (seconds);
 * the rule's own timeout applies when it is shorter. */
#define LB_CT_HANDSHAKE_TIMEOUT_S 60
#define LB_CT_CLOSING_TIMEOUT_S 30
#define LB_CT_CLOSED_TIMEOUT_S 10

/* lb_event.type */
enum LB_PACKED lb_event_type {
	LB_EV_NEW = 1,
	LB_EV_EST = 2,
	LB_EV_CLOSED = 3,  /* by the endpoints: FIN both ways, or RST */
	LB_EV_EXPIRED = 4, /* by the LB: idle timeout, endpoint removed, rule deleted */
	LB_EV_REFRESH = 5, /* still carrying traffic (only while lb_config.refresh_ns is set:
			    * conntrack sync keeps peers' copies from ageing out) */
};

/* lb_event.reason */
enum LB_PACKED lb_reason {
	LB_REASON_NONE = 0,
	LB_REASON_FIN = 1,
	LB_REASON_RST = 2,
	LB_REASON_TIMEOUT = 3,
	LB_REASON_EP_REMOVED = 4,
	LB_REASON_RULE_DELETED = 5,
	LB_REASON_EP_DOWN = 6, /* endpoint forced down (host state red) */
};

/* lb_dp_stats key: what the datapath dropped or passed without handling */
enum lb_dp_stat {
	LB_DROP_NO_ENDPOINT = 0,   /* rule matched, no active endpoint */
	LB_DROP_MALFORMED = 1,     /* headers truncated or inconsistent (passed, counted) */
	LB_DROP_REWRITE = 2,       /* a helper failed while rewriting */
	LB_STAT_PASS_FRAGMENT = 3, /* IPv4 fragment passed untouched */
	LB_DROP_SOURCE = 4,        /* source not in the rule's allow-list */
	LB_DROP_CT_FULL = 5,       /* conntrack refused the new flow */
	LB_DROP_SNAT_PORTS = 6,    /* no free source port for one-arm/fullNAT */
	LB_STAT_EVENTS_LOST = 7,   /* conntrack events the agent had no room for */
	LB_DROP_HA_STANDBY = 8,    /* new flow of an HA instance this node is not MASTER of */
};
#define LB_DP_STAT_MAX 9

/* lb_instance.state: a node's HA state of a cluster instance (the API's words in
 * loxicmd/names.py). New flows are opened only in MASTER and NOT_DEFINED (no HA);
 * flows already in conntrack (synced from the MASTER) go on in every state. */
enum LB_PACKED lb_ha_state {
	LB_HA_NOT_DEFINED = 0,
	LB_HA_MASTER = 1,
	LB_HA_BACKUP = 2,
	LB_HA_FAULT = 3,
	LB_HA_STOP = 4,
};

/* lb_sweep program modes (skb->cb[0] of the test-run that drives it) */
enum lb_sweep_mode {
	LB_SWEEP_IDLE = 0,     /* expire idle flows */
	LB_SWEEP_RULE = 1,     /* end every flow of rule cb[1] */
	LB_SWEEP_ENDPOINT = 2, /* end every flow to endpoint slot cb[1], reason cb[2] */
};

/* Service map key: what a client packet is matched on. */
struct lb_svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
	__u32 mark;
};

/* Service map value: the rule a key belongs to and how it forwards. */
struct lb_svc {
	__u32 rule_id;
	enum lb_sel sel;
	enum lb_nat_mode nat_mode;
	__u16 flags;       /* enum lb_svc_flags */
	__u32 timeout_s;   /* idle timeout of its flows */
	__u32 persist_s;   /* lifetime of a persist binding */
	__be32 snat_addr;  /* fullNAT source (privateIP); 0: the endpoint's snat_addr */
	__u16 instance;    /* HA cluster instance (index into lb_instances) */
	__u16 pad;
};

/* One HA cluster instance on this node. */
struct lb_instance {
	enum lb_ha_state state;
	__u8 pad[3];
};

/* Settings of the datapath the agent changes at run time (lb_config[0]). */
struct lb_config {
	__u64 refresh_ns;  /* LB_EV_REFRESH a flow after this long without an event; 0: never */
};

/* A rule's endpoints: slots into lb_endpoints, sorted by address. */
struct lb_rule_slots {
	__u16 ep_count;
	__u16 pad;
	__u32 slots[LB_MAX_ENDPOINTS];
};

/* One endpoint (a slot; slots are shared by all rules and stable while the
 * endpoint stays in its rule). */
struct lb_endpoint {
	__be32 addr;
	__be16 port;       /* 0: keep the packet's destination port */
	__u8 weight;
	enum lb_ep_flags flags;
	__be32 snat_addr;  /* the LB's address on the way to this endpoint */
	__u32 rule_id;
};

/* Mutable per-rule state shared by all CPUs. */
struct lb_rule_state {
	__u64 rr_next;
};

/* Per-CPU packet/byte counter (rules, endpoints, datapath statistics). */
struct lb_counter {
	__u64 packets;
	__u64 bytes;
};

/* Active flows of an endpoint (least-connections selection). */
struct lb_ep_load {
	__u64 active;
};

struct lb_persist_key {
	__u32 rule_id;
	__be32 client;
};

struct lb_persist {
	__u32 slot;
	__u32 pad;
	__u64 last_used_ns;
};

/* Allow-list key (LPM trie): prefixlen counts rule_id's 32 bits + the prefix. */
struct lb_allow_key {
	__u32 prefixlen;
	__be32 rule_id;
	__be32 addr;
};

/* Conntrack key: one direction of a flow as seen on the wire. ICMP echo uses
 * the identifier as source port of requests and destination port of replies. */
struct lb_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Conntrack entry. Each flow has two: the original direction (client to VIP)
 * and the reply direction (endpoint to client or SNAT address); each names
 * the other in `peer`, carries the rewrite for its own direction and a copy of
 * the flow state (both copies are updated on every transition). */
struct lb_ct_entry {
	struct lb_ct_key peer;
	__be32 xlate_saddr;
	__be32 xlate_daddr;
	__be16 xlate_sport;
	__be16 xlate_dport;
	__u32 rule_id;
	__u32 ep_slot;
	__u32 timeout_s;  /* the rule's idle timeout */
	__u32 seq_next;   /* TCP: next sequence number expected from this direction */
	enum lb_ct_dir dir;
	enum lb_ct_state state;
	__u8 fin_seen;    /* bit per direction that sent a FIN */
	enum lb_xlate xlate;
	__u32 flags;      /* enum lb_ct_flags; changed atomically */
	enum lb_nat_mode nat_mode;
	__u8 pad[3];
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 packets;    /* this direction */
	__u64 bytes;
	__u64 reported_ns; /* when this entry last sent an event (LB_EV_REFRESH pacing) */
};

/* A conntrack event for the agent: both entries, enough to recreate the flow
 * on another node (the reply entry's key is orig.peer). */
struct lb_event {
	enum lb_event_type type;
	enum lb_reason reason;
	__u16 pad;
	__u32 rule_id;
	__u64 ts_ns;
	struct lb_ct_key key;   /* original direction */
	struct lb_ct_entry orig;
	struct lb_ct_entry reply;
};

#endif /* LB_TYPES_H */
