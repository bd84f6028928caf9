/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Map definitions of the load-balancer program (kernel side only). */
#ifndef LB_MAPS_H
#define LB_MAPS_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "lb_types.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SVC_KEYS);
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_rule_slots);
} lb_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_EP_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_endpoint);
} lb_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_rule_state);
} lb_rule_state SEC(".maps");

/* Consistent-hash tables: rule id -> an array of LB_MAGLEV_SIZE endpoint
 * slots, created by the agent only for rules that use hash selection. */
struct lb_maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, LB_MAX_RULES);
	__type(key, __u32);
	__array(values, struct lb_maglev_table);
} lb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_EP_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_ep_load);
} lb_ep_load SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_PERSIST_ENTRIES);
	__type(key, struct lb_persist_key);
	__type(value, struct lb_persist);
} lb_persist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LB_ALLOW_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_allow_key);
	__type(value, __u8);
} lb_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_counter);
} lb_rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_EP_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_counter);
} lb_ep_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_CT_DEFAULT_ENTRIES); /* the agent may resize before load */
	__type(key, struct lb_ct_key);
	__type(value, struct lb_ct_entry);
} lb_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, LB_EVENTS_BYTES);
} lb_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_INSTANCES);
	__type(key, __u32);
	__type(value, struct lb_instance);
} lb_instances SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} lb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_DP_STAT_MAX);
	__type(key, enum lb_dp_stat);
	__type(value, struct lb_counter);
} lb_dp_stats SEC(".maps");

static __always_inline void lb_count(void *map, __u32 idx, __u64 bytes)
{
	struct lb_counter *c = bpf_map_lookup_elem(map, &idx);

	if (c) { /* per-CPU: no atomics needed */
		c->packets++;
		c->bytes += bytes;
	}
}

/* Every TC_ACT_SHOT of the program goes through here, so that the drop counters
 * add up to the packets dropped. */
static __always_inline int lb_drop(__u32 reason, __u32 len)
{
	lb_count(&lb_dp_stats, reason, len);
	return TC_ACT_SHOT;
}

#endif /* LB_MAPS_H */
