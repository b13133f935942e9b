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
#include "counters.h"

/* One parse outcome for (ifindex, hook); the entry is made on first use and
 * a full table drops the count, never the packet. Each program carries its
 * own copy: BCC rewrites map calls only in the program's own .c file. */
static __always_inline void count_parse(__u32 ifindex, __u32 hook, int outcome)
{
	struct parse_key key = { .ifindex = ifindex, .hook = hook };
	struct parse_counters *pc;

	if (!parse_outcome_valid(outcome))
		return;
	pc = parse_stats.lookup(&key);
	if (!pc) {
		struct parse_counters zero = {};

		parse_stats.insert(&key, &zero);
		pc = parse_stats.lookup(&key);
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
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
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
