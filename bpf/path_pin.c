/* path_pin: tc egress on a VTEP's underlay uplinks (after encapsulation).
 * The VXLAN driver caches one underlay route per remote VTEP, so without
 * help every outer source port leaves on the same uplink. path_pin asks the
 * FIB with the whole outer 5-tuple, as a router would hash it, and moves the
 * packet to the uplink the FIB names when that is another managed uplink.
 * Never drops: anything it cannot decide on goes out unchanged.
 */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/socket.h>

#define QPAGENT_MAPS_PIN
#include "maps.h"
#include "parse.h"
#include "parse_helpers.h"

/* One parse outcome for (ifindex, hook). Each program carries its own
 * copy: BCC rewrites map calls only in the program's own .c file. */
static __always_inline struct parse_counters *parse_slot_spill(__u32 ifindex, __u32 hook)
{
	struct parse_key key = { .ifindex = ifindex, .hook = hook };
	struct parse_counters *pc = parse_stats_spill.lookup(&key);

	if (!pc) {
		struct parse_counters fresh = { .ifindex = ifindex, .hook = hook };

		/* A full table drops the count, never the packet. */
		parse_stats_spill.insert(&key, &fresh);
		pc = parse_stats_spill.lookup(&key);
	}
	return pc;
}

static __always_inline void count_parse(__u32 ifindex, __u32 hook, int outcome)
{
	__u32 slot = parse_slot_of(ifindex, hook);
	struct parse_counters *pc = parse_stats.lookup(&slot);   /* inlined */

	if (!parse_outcome_valid(outcome) || !pc)
		return;
	/* Per-CPU: this CPU alone reads and claims its copy of the slot. */
	if (pc->ifindex == 0 && ifindex != 0) {
		pc->ifindex = ifindex;
		pc->hook = hook;
	}
	if (pc->ifindex != ifindex || pc->hook != hook) {
		pc = parse_slot_spill(ifindex, hook);
		if (!pc)
			return;
	}
	pc->outcome[outcome]++;   /* per-CPU: no atomics needed */
}

#ifndef AF_INET
#define AF_INET  2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

static __always_inline void pin_count(__u32 event)
{
	__u64 *v = pin_events.lookup(&event);

	if (v)
		(*v)++;
}

static __always_inline void fib_params_from(struct bpf_fib_lookup *fib,
					    const struct pkt_info *p,
					    __u32 ifindex)
{
	fib->family = p->family == 4 ? AF_INET : AF_INET6;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = bpf_htons(p->sport);
	fib->dport = bpf_htons(p->dport);
	/* tot_len stays 0: the kernel then checks the skb itself against the
	 * chosen device's MTU, which also accepts GSO packets. */
	fib->tot_len = 0;
	/* Input lookup from the uplink, as the next router would do it:
	 * BPF_FIB_LOOKUP_OUTPUT would pin the result to this very uplink. */
	fib->ifindex = ifindex;
	if (p->family == 4) {
		fib->ipv4_src = p->saddr[0];
		fib->ipv4_dst = p->daddr[0];
	} else {
		__builtin_memcpy(fib->ipv6_src, p->saddr, sizeof(fib->ipv6_src));
		__builtin_memcpy(fib->ipv6_dst, p->daddr, sizeof(fib->ipv6_dst));
	}
}

/* BCC 0.26 declares bpf_redirect_neigh() with the three arguments of a
 * draft; the kernel's helper takes (ifindex, params, plen, flags). */
static long (*redirect_neigh_call)(__u32 ifindex, struct bpf_redir_neigh *params,
				   int plen, __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* The FIB's uplink has no resolved neighbour for its next hop (first use
 * of a path, or an entry that expired). Passing the packet would send it
 * out of the VXLAN driver's cached uplink; instead the kernel resolves the
 * next hop on the FIB's uplink and fills in the MACs itself (the packet
 * waits in the neighbour queue while ARP/ND runs). */
static __always_inline int redirect_resolving(const struct bpf_fib_lookup *fib)
{
	struct bpf_redir_neigh nh = {};

	if (fib->family == AF_INET) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib->ipv4_dst;
	} else {
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, sizeof(nh.ipv6_nh));
	}
	pin_count(PIN_REDIRECTED_NEIGH);
	return redirect_neigh_call(fib->ifindex, &nh, sizeof(nh), 0);
}

int path_pin(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib = {};
	struct pkt_info p = {};
	struct ethhdr *eth;
	void *data, *data_end;
	__u32 out;
	int outcome, rc;

	pull_headers(skb);
	outcome = parse_packet((void *)(long)skb->data,
			       (void *)(long)skb->data_end, &p);
	count_parse(skb->ifindex, HOOK_PATH_PIN, outcome);
	if (!p.outer_vxlan) {
		pin_count(PIN_NOT_VXLAN);
		return TC_PASS;
	}

	fib_params_from(&fib, &p, skb->ifindex);
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	/* NO_NEIGH still names the uplink and fills in its next hop. */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		pin_count(PIN_FIB_FAILED);
		return TC_PASS;
	}
	if (fib.ifindex == skb->ifindex) {
		pin_count(PIN_ON_FIB_LINK);
		return TC_PASS;
	}
	out = fib.ifindex;
	if (!pin_uplinks.lookup(&out)) {
		/* The FIB names a device the agent does not manage. */
		pin_count(PIN_FIB_FAILED);
		return TC_PASS;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return redirect_resolving(&fib);

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		pin_count(PIN_FIB_FAILED);
		return TC_PASS;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	pin_count(PIN_REDIRECTED);
	return bpf_redirect(out, 0);
}
