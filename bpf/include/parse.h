/* The one packet parser shared by every qpagent program.
 *
 * Ethernet (untagged) -> IPv4 (options allowed, no fragments) or IPv6 (no
 * extension headers) -> UDP/TCP. UDP 4791 -> BTH (RoCEv2). UDP 4789 ->
 * VXLAN, then the inner Ethernet/IP/UDP/BTH under the same rules. No loops:
 * the inner frame is parsed by the same inline helpers a second time.
 * Every pointer is checked against data_end right before it is read.
 *
 * Two ends bound each header. The packet's own length fields (IP total or
 * payload length, UDP length) say where its payload ends: a payload too
 * short for the header its type announces is simply not that protocol (a
 * traceroute probe to port 4789 carrying a few bytes is not VXLAN, a
 * runt on 4791 is no BTH). data_end says where the bytes we were handed
 * end: a header the lengths announce but the frame does not hold is
 * PARSE_TRUNCATED, and only that is.
 */
#ifndef QPAGENT_PARSE_H
#define QPAGENT_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>

#include "consts.h"

#define PARSE_CONTINUE  (-1)   /* internal: header fine, keep going */
#define LEN_UNKNOWN     0x10000  /* above any 16-bit length: nothing bounds the payload */

#define IPV4_MF_OFFSET  0x3fff /* More-Fragments flag + fragment offset */
#define BTH_LEN         12
#define VXLAN_LEN       8
#define VXLAN_FLAG_I    0x08
#define BTH_OP_ACK      0x11   /* RC ACKNOWLEDGE (also NAK), low 5 bits */
#define BTH_OP_ATOMIC_ACK 0x12 /* RC ATOMIC ACKNOWLEDGE                */
#define BTH_OP_CNP      0x81   /* RoCEv2 congestion notification      */
#define AETH_LEN        4      /* after the BTH of an (atomic) ACK: syndrome, MSN */
#define AETH_TYPE_MASK  0xe0   /* syndrome bits 7..5: what kind of answer */
#define AETH_TYPE_ACK   0x00
#define AETH_TYPE_NAK   0x60
#define AETH_NAK_PSN_SEQ 0x60  /* NAK, code 0: PSN sequence error (a gap) */

/* What the parser learnt. The tuple is the outermost one; for an outer VXLAN
 * packet vni and the inner dqp come from inside. MACs are not copied: the
 * one program that needs one (qp_steer, on a new QP) reads it itself. */
struct pkt_info {
	__u32 saddr[4];     /* IPv4 in [0], network order */
	__u32 daddr[4];
	__u32 vni;
	__u32 dqp;          /* 24-bit destination QP */
	__u32 psn;          /* 24-bit PSN of the BTH, when psn_ok */
	__u16 sport;        /* host order */
	__u16 dport;        /* host order */
	__u8  family;       /* 4 or 6, 0 when not IP */
	__u8  proto;        /* IPPROTO_* of the outer L4 */
	__u8  has;          /* FLOW_HAS_VNI | FLOW_HAS_QP */
	__u8  has_ports;    /* sport/dport parsed (UDP or TCP) */
	__u8  outer_vxlan;  /* UDP 4789 with a complete VXLAN header */
	__u8  psn_ok;       /* psn numbers this QP's own sends (not an ACK/CNP) */
	/* An RC (atomic) acknowledgement: its AETH syndrome, and the PSN it
	 * answers (in psn_acked; psn stays for the sender's own stream). */
	__u8  is_ack;
	__u8  syndrome;
	__u32 psn_acked;
	/* Inner RoCE of an outer VXLAN packet: its addresses and UDP source
	 * port (a frame that is not encapsulated has them in the tuple). */
	__u32 inner_saddr[4];
	__u32 inner_daddr[4];
	__u16 inner_sport;
	__u8  inner_family;
	__u16 inner_off;    /* where the inner Ethernet header starts */
};

/* What a BTH tells: who it is for and where in the QP's stream it sits. */
struct bth_fields {
	__u32 dqp;
	__u32 psn;
	__u8  psn_ok;
	__u8  is_ack;       /* an (atomic) ACK whose AETH is in the frame */
	__u8  syndrome;     /* its AETH syndrome */
};

/* Addresses and ports of one IP/L4 layer. */
struct l3l4 {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8  family;
	__u8  proto;
	__u8  has_ports;
};

struct cursor {
	void *pos;
	void *end;          /* data_end: where the bytes we have stop          */
	__u32 left;         /* bytes from pos the enclosing headers announce   */
};

/* Step over a header of len bytes the caller checked against both ends. */
static __always_inline void cursor_skip(struct cursor *c, __u32 len)
{
	c->pos += len;
	if (c->left != LEN_UNKNOWN)
		c->left -= len;
}

/* A payload of `len` bytes starts at pos, as a length field says (0: the
 * field does not say, as in GSO and jumbo packets). */
static __always_inline void cursor_bound(struct cursor *c, __u32 len)
{
	if (len && len < c->left)
		c->left = len;
}

static __always_inline int parse_eth(struct cursor *c, __u16 *h_proto)
{
	struct ethhdr *eth = c->pos;

	if (c->left < sizeof(*eth))
		return PARSE_NOT_ROCE;   /* inside VXLAN: no frame, just bytes */
	if ((void *)(eth + 1) > c->end)
		return PARSE_TRUNCATED;
	*h_proto = eth->h_proto;
	cursor_skip(c, sizeof(*eth));
	/* A VLAN tag, ARP and everything else is not ours to parse. */
	if (*h_proto != bpf_htons(ETH_P_IP) && *h_proto != bpf_htons(ETH_P_IPV6))
		return PARSE_NOT_IP;
	return PARSE_CONTINUE;
}

static __always_inline int parse_ipv4(struct cursor *c, struct l3l4 *t)
{
	struct iphdr *ip = c->pos;
	__u32 hlen, tot_len;

	if (c->left < sizeof(*ip))
		return PARSE_NOT_IP;
	if ((void *)(ip + 1) > c->end)
		return PARSE_TRUNCATED;
	if (ip->version != 4)
		return PARSE_NOT_IP;
	hlen = (__u32)ip->ihl * 4;
	tot_len = bpf_ntohs(ip->tot_len);
	/* An IHL below 5, or a total length below the header's own, announces
	 * less than the fixed header: a header cut short by its own account. */
	if (hlen < sizeof(*ip) || (tot_len && tot_len < hlen))
		return PARSE_TRUNCATED;
	if (hlen > c->left)
		return PARSE_NOT_IP;
	if (c->pos + hlen > c->end)
		return PARSE_TRUNCATED;
	t->family = 4;
	t->proto = ip->protocol;
	t->saddr[0] = ip->saddr;
	t->daddr[0] = ip->daddr;
	/* Only a first fragment carries the L4 header, and even it cannot be
	 * told apart from its siblings by port: count, do not parse. */
	if (ip->frag_off & bpf_htons(IPV4_MF_OFFSET))
		return PARSE_FRAGMENT;
	cursor_skip(c, hlen);
	/* 0 is what a GSO packet above 64 KiB carries (BIG TCP). */
	cursor_bound(c, tot_len ? tot_len - hlen : 0);
	return PARSE_CONTINUE;
}

/* Extension headers (RFC 8200 and the IANA list): hop-by-hop 0, routing 43,
 * fragment 44, ESP 50, AH 51, destination options 60, mobility 135, HIP 139,
 * shim6 140, experiments 253/254. Compared one by one: a switch may become a
 * lookup table in a read-only section, which BCC cannot load. */
static __always_inline int ipv6_is_ext_header(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 50 || nh == 51 ||
	       nh == 60 || nh == 135 || nh == 139 || nh == 140 || nh == 253 ||
	       nh == 254;
}

static __always_inline int parse_ipv6(struct cursor *c, struct l3l4 *t)
{
	struct ipv6hdr *ip6 = c->pos;

	if (c->left < sizeof(*ip6))
		return PARSE_NOT_IP;
	if ((void *)(ip6 + 1) > c->end)
		return PARSE_TRUNCATED;
	if (ip6->version != 6)
		return PARSE_NOT_IP;
	t->family = 6;
	t->proto = ip6->nexthdr;
	__builtin_memcpy(t->saddr, &ip6->saddr, sizeof(t->saddr));
	__builtin_memcpy(t->daddr, &ip6->daddr, sizeof(t->daddr));
	if (ipv6_is_ext_header(ip6->nexthdr))
		return PARSE_IPV6_EXT;
	cursor_skip(c, sizeof(*ip6));
	cursor_bound(c, bpf_ntohs(ip6->payload_len));   /* 0: jumbo or GSO */
	return PARSE_CONTINUE;
}

/* IP header after the Ethernet header whose type is h_proto. */
static __always_inline int parse_ip(struct cursor *c, __u16 h_proto,
				    struct l3l4 *t)
{
	if (h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(c, t);
	return parse_ipv6(c, t);
}

/* UDP or TCP ports; other protocols end the parse as "IP, not RoCE". */
static __always_inline int parse_l4(struct cursor *c, struct l3l4 *t)
{
	if (t->proto == IPPROTO_UDP) {
		struct udphdr *udp = c->pos;
		__u32 udp_len;

		if (c->left < sizeof(*udp))
			return PARSE_NOT_ROCE;
		if ((void *)(udp + 1) > c->end)
			return PARSE_TRUNCATED;
		udp_len = bpf_ntohs(udp->len);
		if (udp_len && udp_len < sizeof(*udp))
			return PARSE_TRUNCATED;   /* says it is shorter than itself */
		t->sport = bpf_ntohs(udp->source);
		t->dport = bpf_ntohs(udp->dest);
		t->has_ports = 1;
		cursor_skip(c, sizeof(*udp));
		cursor_bound(c, udp_len ? udp_len - sizeof(*udp) : 0);
		return PARSE_CONTINUE;
	}
	if (t->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = c->pos;

		if (c->left < sizeof(*tcp))
			return PARSE_NOT_ROCE;
		if ((void *)(tcp + 1) > c->end)
			return PARSE_TRUNCATED;
		t->sport = bpf_ntohs(tcp->source);
		t->dport = bpf_ntohs(tcp->dest);
		t->has_ports = 1;
	}
	return PARSE_NOT_ROCE;
}

/* RoCEv2 base transport header: opcode in byte 0, 24-bit destination QP
 * in bytes 5..7, 24-bit PSN in bytes 9..11. Acknowledgements and CNPs carry
 * a PSN of the other side's stream (or none): no sign of a resend. */
static __always_inline int parse_bth(struct cursor *c, struct bth_fields *b)
{
	__u8 *bth = c->pos;

	if (c->left < BTH_LEN)
		return PARSE_BAD_BTH;     /* UDP 4791 too short for a BTH */
	if ((void *)(bth + BTH_LEN) > c->end)
		return PARSE_TRUNCATED;
	/* Transport version (low nibble of byte 1) is 0 for every RoCE. */
	if (bth[1] & 0x0f)
		return PARSE_BAD_BTH;
	b->dqp = ((__u32)bth[5] << 16) | ((__u32)bth[6] << 8) | bth[7];
	b->psn = ((__u32)bth[9] << 16) | ((__u32)bth[10] << 8) | bth[11];
	b->psn_ok = (bth[0] & 0x1f) != BTH_OP_ACK && (bth[0] & 0x1f) != BTH_OP_ATOMIC_ACK &&
		    bth[0] != BTH_OP_CNP;
	if (bth[0] == BTH_OP_ACK || bth[0] == BTH_OP_ATOMIC_ACK) {
		/* RC transport (opcode bits 7..5 = 000) only. An ACK cut
		 * short of its AETH is still RoCE, just not one we read. */
		__u8 *aeth = bth + BTH_LEN;

		if (c->left >= BTH_LEN + AETH_LEN && (void *)(aeth + AETH_LEN) <= c->end) {
			b->is_ack = 1;
			b->syndrome = aeth[0];
		}
	}
	return PARSE_ROCE;
}

/* The BTH's findings into *p. */
static __always_inline void take_bth(struct pkt_info *p, const struct bth_fields *b)
{
	p->dqp = b->dqp;
	p->has |= FLOW_HAS_QP;
	p->is_ack = b->is_ack;
	p->syndrome = b->syndrome;
	if (b->is_ack)
		p->psn_acked = b->psn;
}

/* Ethernet/IP/L4/BTH of one frame, without looking into VXLAN. */
static __always_inline int parse_frame(struct cursor *c, struct l3l4 *t,
				       struct bth_fields *b)
{
	__u16 h_proto = 0;
	int rc;

	rc = parse_eth(c, &h_proto);
	if (rc != PARSE_CONTINUE)
		return rc;
	rc = parse_ip(c, h_proto, t);
	if (rc != PARSE_CONTINUE)
		return rc;
	rc = parse_l4(c, t);
	if (rc != PARSE_CONTINUE)
		return rc;
	if (t->dport == ROCE_UDP_PORT)
		return parse_bth(c, b);
	return PARSE_CONTINUE;   /* UDP, not RoCE: the caller may look further */
}

/* Parse [data, data_end) into *p; returns the enum parse_outcome. */
static __always_inline int parse_packet(void *data, void *data_end,
					struct pkt_info *p)
{
	struct cursor c = { .pos = data, .end = data_end, .left = LEN_UNKNOWN };
	struct l3l4 outer = {};
	struct l3l4 inner = {};
	struct bth_fields b = {};
	__u8 *vx;
	int rc;

	rc = parse_frame(&c, &outer, &b);
	__builtin_memcpy(p->saddr, outer.saddr, sizeof(p->saddr));
	__builtin_memcpy(p->daddr, outer.daddr, sizeof(p->daddr));
	p->sport = outer.sport;
	p->dport = outer.dport;
	p->family = outer.family;
	p->proto = outer.proto;
	p->has_ports = outer.has_ports;
	if (rc == PARSE_ROCE) {
		take_bth(p, &b);
		p->psn = b.psn;
		p->psn_ok = b.psn_ok;
		return rc;
	}
	if (rc != PARSE_CONTINUE)
		return rc;
	if (outer.dport != VXLAN_UDP_PORT)
		return PARSE_NOT_ROCE;

	vx = c.pos;
	if (c.left < VXLAN_LEN)
		return PARSE_NOT_ROCE;   /* port 4789, but no VXLAN header fits */
	if ((void *)(vx + VXLAN_LEN) > c.end)
		return PARSE_TRUNCATED;
	p->outer_vxlan = 1;
	if (!(vx[0] & VXLAN_FLAG_I))
		return PARSE_NOT_ROCE;   /* no valid VNI: nothing inside to trust */
	p->vni = ((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6];
	p->has |= FLOW_HAS_VNI;
	cursor_skip(&c, VXLAN_LEN);
	p->inner_off = c.pos - data;

	rc = parse_frame(&c, &inner, &b);
	if (rc == PARSE_ROCE) {
		/* An outer packet's PSN is not ours to track; an ACK's is read. */
		take_bth(p, &b);
		__builtin_memcpy(p->inner_saddr, inner.saddr, sizeof(p->inner_saddr));
		__builtin_memcpy(p->inner_daddr, inner.daddr, sizeof(p->inner_daddr));
		p->inner_sport = inner.sport;
		p->inner_family = inner.family;
		return rc;
	}
	if (rc == PARSE_CONTINUE)
		return PARSE_NOT_ROCE;   /* VXLAN inside VXLAN is not followed */
	return rc;
}

#endif
