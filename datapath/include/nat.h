/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Address/port rewriting with incremental checksum updates.
 *
 * The L4 checksum covers the pseudo header, so an address change is applied
 * to it with BPF_F_PSEUDO_HDR: for CHECKSUM_PARTIAL skbs (veth, local
 * senders) the kernel then adjusts only the pseudo-header seed, which is what
 * the NIC or the stack completes later. UDP datagrams without a checksum
 * (0) keep it: BPF_F_MARK_MANGLED_0.
 */
#ifndef LB_NAT_H
#define LB_NAT_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"

static __always_inline __u32 lb_l4_csum_off(const struct lb_pkt *pkt)
{
	return pkt->l4_off + (pkt->tuple.proto == IPPROTO_TCP ?
			      offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
}

static __always_inline __u64 lb_l4_csum_flags(const struct lb_pkt *pkt)
{
	return pkt->tuple.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Replace a 4-byte address at ip_field_off (saddr or daddr). */
static __always_inline int lb_rewrite_addr(struct __sk_buff *skb, const struct lb_pkt *pkt,
					   __u32 ip_field_off, __be32 old, __be32 new)
{
	if (old == new)
		return 0;
	/* ICMP's checksum has no pseudo header: only the IP checksum changes. */
	if (pkt->tuple.proto != IPPROTO_ICMP &&
	    bpf_l4_csum_replace(skb, lb_l4_csum_off(pkt), old, new,
				BPF_F_PSEUDO_HDR | sizeof(new) | lb_l4_csum_flags(pkt)))
		return -1;
	if (bpf_l3_csum_replace(skb, pkt->l3_off + offsetof(struct iphdr, check), old, new,
				sizeof(new)))
		return -1;
	return bpf_skb_store_bytes(skb, pkt->l3_off + ip_field_off, &new, sizeof(new), 0);
}

/* Replace a 2-byte port at l4 offset port_off (source or dest; same place in TCP and UDP). */
static __always_inline int lb_rewrite_port(struct __sk_buff *skb, const struct lb_pkt *pkt,
					   __u32 port_off, __be16 old, __be16 new)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, lb_l4_csum_off(pkt), old, new,
				sizeof(new) | lb_l4_csum_flags(pkt)))
		return -1;
	return bpf_skb_store_bytes(skb, pkt->l4_off + port_off, &new, sizeof(new), 0);
}

/* Apply a conntrack entry's translation to the packet. ICMP echo keeps its
 * identifier (entries for ICMP carry no port rewrite). */
static __always_inline int lb_apply_xlate(struct __sk_buff *skb, const struct lb_pkt *pkt,
					  const struct lb_ct_entry *ct)
{
	if ((ct->xlate & LB_XLATE_SADDR) &&
	    lb_rewrite_addr(skb, pkt, offsetof(struct iphdr, saddr), pkt->tuple.saddr,
			    ct->xlate_saddr))
		return -1;
	if ((ct->xlate & LB_XLATE_DADDR) &&
	    lb_rewrite_addr(skb, pkt, offsetof(struct iphdr, daddr), pkt->tuple.daddr,
			    ct->xlate_daddr))
		return -1;
	if ((ct->xlate & LB_XLATE_SPORT) &&
	    lb_rewrite_port(skb, pkt, offsetof(struct udphdr, source), pkt->tuple.sport,
			    ct->xlate_sport))
		return -1;
	if ((ct->xlate & LB_XLATE_DPORT) &&
	    lb_rewrite_port(skb, pkt, offsetof(struct udphdr, dest), pkt->tuple.dport,
			    ct->xlate_dport))
		return -1;
	return 0;
}

#endif /* LB_NAT_H */
