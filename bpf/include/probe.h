/* Liveness probes on the wire: find one in an outer VXLAN frame and turn a
 * request into its reply in place. Map-free (BCC rewrites map calls only in
 * the program's own .c file); path_probe in qp_steer.c does the counting.
 *
 * A probe is Ethernet / IPv4 / UDP dport 4789 / VXLAN (flag I, VNI =
 * PROBE_VNI) / struct probe_msg, the outer 5-tuple being that of the path it
 * checks. IPv4 only.
 */
#ifndef QPAGENT_PROBE_H
#define QPAGENT_PROBE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>

#include "parse.h"
#include "structs.h"

#define PROBE_TTL 64

/* What probe_find() saw in a frame that carries PROBE_VNI. */
enum probe_found {
	PROBE_FOUND_MALFORMED = 0,  /* PROBE_VNI, but not a whole probe    */
	PROBE_FOUND_REQUEST,
	PROBE_FOUND_REPLY,
};

/* Headers of a whole probe, each checked against data_end. */
struct probe_frame {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	struct probe_msg *msg;
};

/* Walk a frame the shared parser found to be outer IPv4 VXLAN with
 * PROBE_VNI again, this time to its probe_msg: lengths announced by the
 * packet must hold the whole message, and so must the bytes we have. */
static __always_inline int probe_find(void *data, void *data_end, struct probe_frame *f)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct probe_msg *msg;
	__u8 *vx;
	__u32 hlen, need = sizeof(*udp) + VXLAN_LEN + sizeof(*msg);

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return PROBE_FOUND_MALFORMED;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->protocol != IPPROTO_UDP)
		return PROBE_FOUND_MALFORMED;
	hlen = (__u32)ip->ihl * 4;
	if (hlen < sizeof(*ip) || bpf_ntohs(ip->tot_len) < hlen + need)
		return PROBE_FOUND_MALFORMED;
	udp = (void *)ip + hlen;
	if ((void *)(udp + 1) > data_end || bpf_ntohs(udp->len) < need)
		return PROBE_FOUND_MALFORMED;
	vx = (void *)(udp + 1);
	if ((void *)(vx + VXLAN_LEN) > data_end)
		return PROBE_FOUND_MALFORMED;
	msg = (void *)(vx + VXLAN_LEN);
	if ((void *)(msg + 1) > data_end || msg->magic != bpf_htonl(PROBE_MAGIC))
		return PROBE_FOUND_MALFORMED;
	f->eth = eth;
	f->ip = ip;
	f->udp = udp;
	f->msg = msg;
	if (msg->kind == PROBE_REQUEST)
		return PROBE_FOUND_REQUEST;
	if (msg->kind == PROBE_REPLY)
		return PROBE_FOUND_REPLY;
	return PROBE_FOUND_MALFORMED;
}

/* One of our own requests on its way out of an uplink (probe_sent): checked
 * whole without the shared parser, since every data packet leaving the
 * uplink comes this way too (and fails at the magic or the port). */
static __always_inline int probe_request_leaving(void *data, void *data_end,
						 struct probe_frame *f)
{
	__u8 *vx;

	if (probe_find(data, data_end, f) != PROBE_FOUND_REQUEST)
		return 0;
	if (f->udp->dest != bpf_htons(VXLAN_UDP_PORT))
		return 0;
	vx = (void *)(f->udp + 1);
	if ((void *)(vx + VXLAN_LEN) > data_end)
		return 0;
	return vx[4] == ((PROBE_VNI >> 16) & 0xff) && vx[5] == ((PROBE_VNI >> 8) & 0xff) &&
	       vx[6] == (PROBE_VNI & 0xff);
}

/* RFC 1624 incremental update of a ones' complement checksum for one 16-bit
 * word changing from old to new: HC' = ~(~HC + ~m + m'). */
static __always_inline __u16 csum_replace16(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + (__u32)new;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* The request becomes its reply, in place: back to where it came from,
 * addresses swapped and the UDP ports kept (dport stays 4789), so the
 * reply is VXLAN to every parser on its way and, should the sender run no
 * path_probe, dies quietly in its VXLAN socket (no segment has PROBE_VNI).
 * Swapping addresses leaves the IP checksum as it is; the TTL does not.
 * UDP checksum 0 is allowed for IPv4 (as VXLAN sends it). */
static __always_inline void probe_make_reply(struct probe_frame *f)
{
	__u8 mac[ETH_ALEN];
	__u32 addr;
	__u16 old_word, new_word;

	__builtin_memcpy(mac, f->eth->h_dest, ETH_ALEN);
	__builtin_memcpy(f->eth->h_dest, f->eth->h_source, ETH_ALEN);
	__builtin_memcpy(f->eth->h_source, mac, ETH_ALEN);

	addr = f->ip->saddr;
	f->ip->saddr = f->ip->daddr;
	f->ip->daddr = addr;
	/* TTL and protocol share one 16-bit word of the header. */
	old_word = bpf_htons(((__u16)f->ip->ttl << 8) | f->ip->protocol);
	new_word = bpf_htons(((__u16)PROBE_TTL << 8) | f->ip->protocol);
	f->ip->ttl = PROBE_TTL;
	f->ip->check = csum_replace16(f->ip->check, old_word, new_word);

	f->udp->check = 0;

	f->msg->kind = PROBE_REPLY;
}

#endif
