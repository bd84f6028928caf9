/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Packet parsing: Ethernet (one optional 802.1Q/802.1ad tag), IPv4, TCP/UDP,
 * ICMP echo. */
#ifndef LB_PARSE_H
#define LB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_types.h"

#define LB_IP_MF 0x2000
#define LB_IP_OFFSET 0x1fff

enum lb_parse_result {
	LB_PARSE_OK = 0,
	LB_PARSE_NOT_OURS,  /* not IPv4 TCP/UDP/ICMP echo: pass untouched */
	LB_PARSE_FRAGMENT,  /* IPv4 fragment: pass untouched, counted */
	LB_PARSE_MALFORMED, /* claims to be IPv4 TCP/UDP but headers do not add up */
};

/* What the rest of the pipeline needs to know about a packet. Offsets are
 * from the start of the frame; pointers are not kept because every rewrite
 * helper invalidates them. */
struct lb_pkt {
	struct lb_ct_key tuple;
	__u32 l3_off;
	__u32 l4_off;
	__u32 len;       /* skb->len, for byte counters */
	__u32 seq;       /* TCP sequence number (host order) */
	__u32 seq_len;   /* sequence space the segment uses: payload + SYN + FIN */
	__u8 tcp_flags;  /* TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8 icmp_type;
};

#define LB_TCP_FIN 0x01
#define LB_TCP_SYN 0x02
#define LB_TCP_RST 0x04
#define LB_TCP_ACK 0x10

/* ICMP echo header (linux/icmp.h drags in libc headers). */
#define LB_ICMP_ECHOREPLY 0
#define LB_ICMP_ECHO 8
struct lb_icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

struct lb_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int lb_parse(struct __sk_buff *skb, struct lb_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return LB_PARSE_NOT_OURS;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct lb_vlan_hdr *vh = data + off;

		if ((void *)(vh + 1) > data_end)
			return LB_PARSE_NOT_OURS;
		proto = vh->proto;
		off += sizeof(*vh);
	}
	if (proto != bpf_htons(ETH_P_IP))
		return LB_PARSE_NOT_OURS;

	struct iphdr *ip = data + off;

	if ((void *)(ip + 1) > data_end)
		return LB_PARSE_MALFORMED;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP &&
	    ip->protocol != IPPROTO_ICMP)
		return LB_PARSE_NOT_OURS;
	if (ip->version != 4 || ip->ihl < 5)
		return LB_PARSE_MALFORMED;
	if (bpf_ntohs(ip->tot_len) < ip->ihl * 4 ||
	    off + bpf_ntohs(ip->tot_len) > skb->len)
		return LB_PARSE_MALFORMED;
	if (ip->frag_off & bpf_htons(LB_IP_MF | LB_IP_OFFSET))
		return LB_PARSE_FRAGMENT;

	pkt->l3_off = off;
	pkt->l4_off = off + ip->ihl * 4;
	pkt->len = skb->len;
	pkt->tuple.saddr = ip->saddr;
	pkt->tuple.daddr = ip->daddr;
	pkt->tuple.proto = ip->protocol;

	/* Ports (and TCP flags) must be inside the linear data. */
	void *l4 = data + pkt->l4_off;

	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end || th->doff < 5 ||
		    pkt->l4_off + th->doff * 4 > off + bpf_ntohs(ip->tot_len))
			return LB_PARSE_MALFORMED;
		pkt->tuple.sport = th->source;
		pkt->tuple.dport = th->dest;
		pkt->tcp_flags = ((__u8 *)th)[13];
		pkt->seq = bpf_ntohl(th->seq);
		pkt->seq_len = off + bpf_ntohs(ip->tot_len) - pkt->l4_off - th->doff * 4 +
			       !!(pkt->tcp_flags & LB_TCP_SYN) + !!(pkt->tcp_flags & LB_TCP_FIN);
	} else if (ip->protocol == IPPROTO_ICMP) {
		struct lb_icmp_echo *ih = l4;

		if ((void *)(ih + 1) > data_end)
			return LB_PARSE_MALFORMED;
		/* Echo only: the identifier plays the part of the port. */
		if (ih->type == LB_ICMP_ECHO)
			pkt->tuple.sport = ih->id;
		else if (ih->type == LB_ICMP_ECHOREPLY)
			pkt->tuple.dport = ih->id;
		else
			return LB_PARSE_NOT_OURS;
		pkt->icmp_type = ih->type;
	} else {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end ||
		    bpf_ntohs(uh->len) < sizeof(*uh) ||
		    pkt->l4_off + bpf_ntohs(uh->len) > off + bpf_ntohs(ip->tot_len))
			return LB_PARSE_MALFORMED;
		pkt->tuple.sport = uh->source;
		pkt->tuple.dport = uh->dest;
		pkt->tcp_flags = 0;
	}
	return LB_PARSE_OK;
}

#endif /* LB_PARSE_H */
