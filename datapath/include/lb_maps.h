/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Map definitions of the load-balancer program (kernel side only). */
#ifndef LB_MAPS_H
#define LB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_types.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_RULES * 4); /* several keys per rule with port ranges */
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_RULES * LB_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct lb_endpoint);
} lb_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_rule_state);
} lb_rule_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_counter);
} lb_rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_RULES * LB_MAX_ENDPOINTS);
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
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_DP_STAT_MAX);
	__type(key, __u32);
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

#endif /* LB_MAPS_H */
