/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Forwarding a translated packet ourselves: FIB lookup, TTL, MACs, redirect.
 *
 * Handing the packet back to the stack (TC_ACT_OK) would route it too, but
 * the stack drops packets whose new source is one of the node's own
 * addresses (one-arm and fullNAT use exactly that) as martians, and the
 * stack's input path costs more than the redirect. Whatever the FIB cannot
 * forward (local destinations, forwarding disabled, VLAN-tagged frames,
 * fragmentation needed for a non-GSO packet, an expiring TTL) goes to the
 * stack as before.
 */
#ifndef LB_FORWARD_H
#define LB_FORWARD_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_maps.h"
#include "parse.h"

#define LB_AF_INET 2

static __always_inline int lb_forward(struct __sk_buff *skb, const struct lb_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct bpf_fib_lookup fib = {};
	__be16 old_ttl_proto, new_ttl_proto;
	int rc;

	if (pkt->l3_off != sizeof(*eth) || (void *)(ip + 1) > data_end || ip->ttl <= 1)
		return TC_ACT_OK;
	fib.family = LB_AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	/* The MTU check is for packets we would have to fragment; a GSO packet
	 * is cut into segments on the way out, so it skips the check. */
	fib.tot_len = skb->gso_size ? 0 : bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;

	/* A router's duty: one hop less (the checksum covers TTL and protocol as one word). */
	old_ttl_proto = *(__be16 *)&ip->ttl;
	ip->ttl--;
	new_ttl_proto = *(__be16 *)&ip->ttl;
	if (bpf_l3_csum_replace(skb, pkt->l3_off + offsetof(struct iphdr, check), old_ttl_proto,
				new_ttl_proto, sizeof(__be16)))
		return lb_drop(LB_DROP_REWRITE, skb->len);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return lb_drop(LB_DROP_REWRITE, skb->len);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect(fib.ifindex, 0);
}

#endif /* LB_FORWARD_H */
