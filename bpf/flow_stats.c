/* flow_stats: per-flow and per-parse-outcome counters on host NICs and leaf
 * links, at XDP ingress (flow_stats_xdp) and tc egress (flow_stats_tc).
 * Both share one counting core and always pass the packet.
 */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>

#define QPAGENT_MAPS_FLOWS
#include "maps.h"
#include "parse.h"
#include "parse_helpers.h"
#include "clock.h"

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

static __always_inline void count_flow(const struct pkt_info *p, __u32 ifindex,
				       __u32 hook, __u32 len)
{
	struct flow_key key = {};
	struct flow_counters *fc;
	struct clock_cache *cc;
	__u32 zero = 0;

	__builtin_memcpy(key.saddr, p->saddr, sizeof(key.saddr));
	__builtin_memcpy(key.daddr, p->daddr, sizeof(key.daddr));
	key.ifindex = ifindex;
	key.vni = p->vni;
	key.dqp = p->dqp;
	key.sport = p->sport;
	key.dport = p->dport;
	key.proto = p->proto;
	key.family = p->family;
	key.hook = hook;
	key.has = p->has;

	cc = clock_cache.lookup(&zero);      /* per-CPU array: inlined */
	fc = flow_table.lookup(&key);
	if (!fc) {
		__u64 now = clock_exact(cc);
		struct flow_counters fresh = { .first_ns = now, .last_ns = now };

		/* NOEXIST: a racing CPU's entry wins; a full LRU evicts. */
		flow_table.insert(&key, &fresh);
		fc = flow_table.lookup(&key);
		if (!fc)
			return;
	}
	__sync_fetch_and_add(&fc->packets, 1);
	__sync_fetch_and_add(&fc->bytes, len);
	/* To one tick, without a clock read per packet (clock.h). */
	stamp_last(&fc->last_ns, clock_tick(cc));
}

static __always_inline void flow_stats(void *data, void *data_end,
				       __u32 ifindex, __u32 hook, __u32 len)
{
	struct pkt_info p = {};
	int outcome = parse_packet(data, data_end, &p);

	count_parse(ifindex, hook, outcome);
	/* Only frames parsed whole: fragments have no tuple, and a frame cut
	 * short somewhere is counted as such, not as a flow. */
	if (p.has_ports && outcome != PARSE_TRUNCATED)
		count_flow(&p, ifindex, hook, len);
}

int flow_stats_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	flow_stats(data, data_end, ctx->ingress_ifindex, HOOK_XDP_INGRESS,
		   (__u32)(data_end - data));
	return XDP_PASS;
}

int flow_stats_tc(struct __sk_buff *skb)
{
	pull_headers(skb);
	flow_stats((void *)(long)skb->data, (void *)(long)skb->data_end,
		   skb->ifindex, HOOK_TC_EGRESS, skb->len);
	return TC_PASS;
}
