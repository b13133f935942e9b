/* qp_steer: tc egress on a VTEP's VXLAN device (inner frames, before
 * encapsulation). Gives every RoCEv2 queue pair a path towards its remote
 * VTEP and sets the skb hash so that the VXLAN driver emits that path's outer
 * UDP source port. New QPs and QPs on dead paths are placed here, in the
 * data plane, on the least-loaded live path. A path is dead when the agent
 * says so (path_entry.alive) or when its liveness probes stopped coming back
 * (path_health); a QP moves to another live path on its own signals
 * (repair_config): a resent PSN, a NAK, or data outstanding with no ACK
 * progress past the path's deadline. Never drops, never rewrites.
 *
 * path_probe: tc ingress on the uplinks, in this file because it writes
 * path_health and the QPs' acknowledgement state, which qp_steer reads (a
 * BCC object is the unit sharing maps). Answers liveness probe requests in
 * place and records the replies; reads the ACKs and NAKs coming back for
 * the QPs we steer; every packet but a probe passes untouched.
 */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>

#define QPAGENT_MAPS_STEER
#include "maps.h"
#include "parse.h"
#include "parse_helpers.h"
#include "clock.h"
#include "probe.h"

_Static_assert((PORTS_PER_PATH & (PORTS_PER_PATH - 1)) == 0,
	       "PORTS_PER_PATH must be a power of two");

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

static __always_inline void steer_count(__u32 event)
{
	__u64 *v = steer_events.lookup(&event);

	if (v)
		(*v)++;
}

static __always_inline void repair_count(__u32 cause)
{
	__u64 *v = repair_events.lookup(&cause);

	if (v)
		(*v)++;
}

static __always_inline void reply_count(__u32 event)
{
	__u64 *v = reply_events.lookup(&event);

	if (v)
		(*v)++;
}

static __always_inline void probe_count(__u32 event)
{
	__u64 *v = probe_events.lookup(&event);

	if (v)
		(*v)++;
}

/* now - then, 0 when then is later: per-CPU tick caches may lag a stamp
 * another CPU took with the exact clock. */
static __always_inline __u64 elapsed(__u64 now, __u64 then)
{
	return now > then ? now - then : 0;
}

/* Remote VTEP of the frame's destination MAC, else the default remote.
 * The frame is not encapsulated (qp_steer checked), so its first Ethernet
 * header is the inner one. */
static __always_inline int find_vtep(struct __sk_buff *skb, __u32 *vtep)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct mac_key key = {};
	__u32 *v;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(key.mac, eth->h_dest, ETH_ALEN);
	v = mac_vtep.lookup(&key);
	if (!v) {
		struct mac_key any = {};

		v = mac_vtep.lookup(&any);
	}
	if (!v || *v >= MAX_VTEPS)
		return -1;
	*vtep = *v;
	return 0;
}

static __always_inline int path_usable(const struct path_entry *pe)
{
	return pe && pe->alive && pe->n_ports > 0 && pe->n_ports <= PORTS_PER_PATH;
}

/* How many unanswered requests make a path silent, while the agent's
 * prober runs (it renews believe_until_ns every round); 0 when it does not:
 * then silence kills no path. */
static __always_inline __u32 silence_misses(__u64 now)
{
	__u32 zero = 0;
	struct repair_config *rc = repair_config.lookup(&zero);   /* inlined */

	return rc && now <= rc->believe_until_ns ? rc->probe_misses : 0;
}

/* Armed, and repair_config.probe_misses requests in a row unanswered, the
 * last of them for longer than the deadline (structs.h, path_health:
 * silent_since_ns is set only then), and no ACK of its QPs' data for as
 * long. A path the agent never armed (deadline 0: e.g. a remote VTEP that
 * runs no agent and never answers) is never silent. Whether anyone is
 * probing is the caller's to ask (silence_misses), once a path looks
 * silent: not on every packet. */
static __always_inline int path_silent(const struct path_health *h, __u64 now)
{
	return h->deadline_ns && h->silent_since_ns &&
	       elapsed(now, h->silent_since_ns) > h->deadline_ns &&
	       elapsed(now, h->acked_ns) > h->deadline_ns;
}

/* Not silent, or nobody is probing (the agent stopped). */
static __always_inline int path_answering(__u32 idx, __u64 now)
{
	struct path_health *h = path_health.lookup(&idx);   /* array: inlined */

	return !h || !path_silent(h, now) || !silence_misses(now);
}

/* Usable by the agent's table and answering its probes. */
static __always_inline int path_live(__u32 vtep, __u32 path, __u64 now)
{
	__u32 idx;

	if (vtep >= MAX_VTEPS || path >= MAX_PATHS)
		return 0;
	idx = vtep * MAX_PATHS + path;
	return path_usable(path_table.lookup(&idx)) && path_answering(idx, now);
}

/* Several of its QPs left it on their own signals lately, and no probe
 * sent since has come back. */
static __always_inline int suspect(const struct path_health *h, __u64 now)
{
	return h->suspect_ns && elapsed(now, h->suspect_ns) <= SUSPECT_HOLD_MS * 1000000ULL;
}

/* The liveness of one path, or NULL when the indexes are out of range. */
static __always_inline struct path_health *health_of(__u32 vtep, __u32 path)
{
	__u32 idx;

	if (vtep >= MAX_VTEPS || path >= MAX_PATHS)
		return NULL;
	idx = vtep * MAX_PATHS + path;
	return path_health.lookup(&idx);     /* array: inlined, no call */
}

/* A QP left this path on its own signal: one more leaver in the window. */
static __always_inline void note_leaver(__u32 vtep, __u32 path, __u64 now)
{
	struct path_health *h = health_of(vtep, path);

	if (!h)
		return;
	if (!h->leavers || elapsed(now, h->leave_ns) > SUSPECT_WINDOW_MS * 1000000ULL) {
		h->leavers = 0;
		h->leave_ns = now;
	}
	__sync_fetch_and_add(&h->leavers, 1);
	if (h->leavers >= SUSPECT_LEAVERS && !suspect(h, now))
		h->suspect_ns = now;
}

/* Live path of the VTEP with the fewest QPs (ties: lowest index), other
 * than `exclude` (MAX_PATHS: none), or -1. A path under suspicion takes no
 * QP. A new QP (prefs 0) takes any live path. A repair prefers, in this
 * order: a path that crosses none of the links of the one it leaves (prefs
 * bits 0-15: that path's shares; which of its links failed is unknown),
 * then (PREFER_VERIFIED_BIT) one that answered probes moments ago (the
 * agent probes only the paths in use and their spares, and an unprobed path
 * may share the failure the QP is fleeing). One cost per path, lowest wins:
 * the preferences in its high bits, the QP count below. (One prefs word,
 * not two arguments: the verifier then walks the loop once for new QPs and
 * once for repairs, not once per combination.) */
_Static_assert(MAX_PATHS <= PREFER_VERIFIED_BIT, "a path's bit in prefs and path_entry.shares");

static __always_inline int least_loaded_path(__u32 vtep, __u32 exclude, __u32 prefs,
					     __u64 now)
{
	__u32 misses = silence_misses(now), fresh, unverified;
	__u32 best_cost = 0xffffffff, cost;
	int best = -1;

#pragma unroll
	for (int i = 0; i < MAX_PATHS; i++) {
		__u32 idx = vtep * MAX_PATHS + i;
		struct path_entry *pe = path_table.lookup(&idx);
		struct path_health *h = path_health.lookup(&idx);   /* array: inlined */

		if (i == exclude || !path_usable(pe) || !h || suspect(h, now))
			continue;
		/* One read of its health: answering (as path_answering
		 * says), and verified: armed, one of its last `misses`
		 * requests answered, the prober running (seen alive moments
		 * ago, not merely never checked; a deadline can be shorter
		 * than the probe period, so not "a reply within it"). */
		if (misses && path_silent(h, now))
			continue;
		fresh = h->deadline_ns && !h->silent_since_ns;   /* fewer unanswered */
		unverified = (prefs >> PREFER_VERIFIED_BIT) & !(fresh & (misses != 0));
		cost = (((prefs >> i) & 1) << 31) | (unverified << 30) | (pe->qps & 0x3fffffff);
		if (cost < best_cost) {
			best_cost = cost;
			best = i;
		}
	}
	return best;
}

/* The entry of one path, or NULL when the indexes are out of range. */
static __always_inline struct path_entry *path_of(__u32 vtep, __u32 path)
{
	__u32 idx;

	if (vtep >= MAX_VTEPS || path >= MAX_PATHS)
		return NULL;
	idx = vtep * MAX_PATHS + path;
	return path_table.lookup(&idx);      /* array: inlined, no call */
}

static __always_inline __u32 current_mac_gen(void)
{
	__u32 zero = 0;
	__u32 *gen = mac_gen.lookup(&zero);  /* array: inlined, no call */

	return gen ? *gen : 0;
}

static __always_inline struct clock_cache *this_cpu_clock(void)
{
	__u32 zero = 0;

	return clock_cache.lookup(&zero);    /* per-CPU array: inlined */
}

static __always_inline void account(struct qp_state *qs, __u32 len, __u64 now)
{
	__sync_fetch_and_add(&qs->packets, 1);
	__sync_fetch_and_add(&qs->bytes, len);
	stamp_last(&qs->last_ns, now);
}

/* Take a port slot on the chosen path; fills vtep/path/slot/hash/port. */
static __always_inline int take_slot(__u32 vtep, int path, struct qp_state *st)
{
	__u32 idx = vtep * MAX_PATHS + (__u32)path;
	struct path_entry *pe = path_table.lookup(&idx);
	__u32 slot;

	if (!path_usable(pe))
		return -1;
	/* Read, then add: BCC's clang targets a BPF ISA whose atomic add
	 * returns nothing. Two CPUs placing at once may share a slot; the
	 * count stays right and the agent rebalances. */
	slot = pe->qps % pe->n_ports;
	__sync_fetch_and_add(&pe->qps, 1);
	/* n_ports <= PORTS_PER_PATH (a power of two), so the mask changes
	 * nothing but lets the verifier see the index is in bounds; the empty
	 * asm keeps clang from proving it redundant and dropping it. */
	asm volatile("" : "+r"(slot));
	slot &= PORTS_PER_PATH - 1;
	st->vtep = vtep;
	st->path = (__u32)path;
	st->slot = slot;
	st->hash = pe->hash[slot];
	st->port = pe->port[slot];
	return 0;
}

/* Give back the slot a QP held on its old path. */
static __always_inline void release_slot(const struct qp_state *qs)
{
	struct path_entry *pe = path_of(qs->vtep, qs->path);

	if (pe && pe->qps > 0)
		__sync_fetch_and_add(&pe->qps, (__u32)-1);
}

/* a is ahead of b in 24-bit serial arithmetic. */
static __always_inline int psn_ahead(__u32 a, __u32 b)
{
	__u32 d = (a - b) & PSN_MASK;

	return d >= 1 && d <= PSN_HALF;
}

/* Sent and not yet acknowledged (known once an ACK was seen). */
static __always_inline int outstanding(const struct qp_state *qs)
{
	return qs->ack_valid && qs->psn_valid && psn_ahead(qs->next_psn, qs->acked_psn);
}

/* A PSN at or below the highest one sent (24-bit serial arithmetic). */
static __always_inline int psn_behind(const struct qp_state *qs, const struct pkt_info *p)
{
	return p->psn_ok && qs->psn_valid && psn_ahead(qs->next_psn, p->psn);
}

/* A resend: behind, with data outstanding or no ACK seen. Behind with
 * everything acknowledged is no resend (a requester resends only what is
 * unacknowledged) but a new QP with the same numbers, from its own start
 * PSN: psn_advance starts its stream afresh. */
static __always_inline int psn_resent(const struct qp_state *qs, const struct pkt_info *p)
{
	return psn_behind(qs, p) && !(qs->ack_valid && !outstanding(qs));
}

/* next_psn = max(next_psn, psn + 1), or the new stream's; a resend leaves
 * it. The first send with nothing outstanding starts the wait for its ACK. */
static __always_inline void psn_advance(struct qp_state *qs, const struct pkt_info *p,
					__u64 now)
{
	if (!p->psn_ok || psn_resent(qs, p))
		return;
	if (qs->ack_valid && !outstanding(qs)) {
		qs->ack_wait_ns = now;
		if (psn_behind(qs, p))
			qs->ack_valid = 0;   /* a new stream: its ACKs start afresh */
	}
	qs->next_psn = (p->psn + 1) & PSN_MASK;
	qs->psn_valid = 1;
}

/* Data outstanding and no ACK progress for longer than `limit` (the
 * larger of the configured stall time and the path's liveness deadline,
 * which follows its RTT), on this path. */
static __always_inline int stalled(const struct qp_state *qs, __u64 now, __u64 limit)
{
	struct path_health *h;
	__u32 idx;

	if (!outstanding(qs) || qs->vtep >= MAX_VTEPS || qs->path >= MAX_PATHS)
		return 0;
	idx = qs->vtep * MAX_PATHS + qs->path;
	h = path_health.lookup(&idx);   /* array: inlined */
	if (h && h->deadline_ns > limit)
		limit = h->deadline_ns;
	return elapsed(now, qs->ack_wait_ns) > limit && elapsed(now, qs->placed_ns) > limit;
}

/* The QP's own signal that calls for a move now, REPAIR_CAUSES when none:
 * each is on when the agent turned it on, and only once the QP has sat on
 * its path (and since its last repair) for the hold-down. A NAK counts
 * when it came after the QP took its path. */
static __always_inline __u32 qp_signal(const struct qp_state *qs, const struct pkt_info *p,
				       __u64 now)
{
	__u32 zero = 0;
	struct repair_config *rc;

	/* The QP's own state first: most packets have no signal at all (no
	 * NAK, no resend, nothing waiting for an ACK), and need no settings. */
	if (!qs->nak_ns && !psn_resent(qs, p) && !outstanding(qs))
		return REPAIR_CAUSES;
	rc = repair_config.lookup(&zero);   /* inlined */
	if (!rc || elapsed(now, qs->repaired_ns) < rc->holddown_ns ||
	    elapsed(now, qs->placed_ns) < rc->holddown_ns)
		return REPAIR_CAUSES;
	if (rc->nak && qs->nak_ns && qs->nak_ns > qs->placed_ns)
		return REPAIR_NAK;
	if (rc->retransmit && psn_resent(qs, p))
		return REPAIR_RETRANSMIT;
	if (rc->stall_ns && stalled(qs, now, rc->stall_ns))
		return REPAIR_STALL;
	return REPAIR_CAUSES;
}

/* Let path_probe find this QP from its ACKs (structs.h, reply_key). Only
 * a request stream is waited on: an ACK stream has no ACKs of its own. */
static __always_inline void pair_replies(struct qp_key *key, const struct pkt_info *p)
{
	struct reply_key rk = {};

	if (!p->psn_ok)
		return;
	/* Not encapsulated yet: the tuple is the QP's own. */
	__builtin_memcpy(rk.local, p->saddr, sizeof(rk.local));
	__builtin_memcpy(rk.peer, p->daddr, sizeof(rk.peer));
	rk.sport = p->sport;
	rk.family = p->family;
	qp_reply.update(&rk, key);
}

static __always_inline void set_hash(struct __sk_buff *skb, __u32 hash)
{
	/* Hash 0 makes the driver fall back to its own: the agent never
	 * writes it, and it is never set. */
	if (!hash)
		return;
	bpf_set_hash(skb, hash);
	steer_count(STEER_HASH_SET);
}

/* Everything but the steady state: a new QP, a QP whose path died (the
 * agent flagged it or its probes stopped coming back), one whose MAC ->
 * VTEP mapping the agent may have changed (mac_gen moved on), or one whose
 * own signal (qp_signal: a resend, a NAK, a stall) says to leave its path
 * for another live one, if there is one. */
static __always_inline int steer_slow(struct __sk_buff *skb, struct qp_key *key,
				      struct qp_state *qs, __u32 gen,
				      const struct pkt_info *p, struct clock_cache *cc,
				      __u32 signal)
{
	struct qp_state st = {};
	__u32 cause = REPAIR_CAUSES;     /* none: not a data-plane repair */
	__u32 exclude = MAX_PATHS;
	__u32 prefs = 0;           /* a repair's preferences (least_loaded_path) */
	__u32 vtep;
	__u64 now;
	int path;

	if (signal < REPAIR_CAUSES && qs) {
		/* mac_gen matched on the fast path: the VTEP stands. */
		vtep = qs->vtep;
		exclude = qs->path;
		cause = signal;
	} else if (find_vtep(skb, &vtep) < 0) {
		steer_count(STEER_NO_VTEP);
		return TC_PASS;
	}

	now = clock_exact(cc);
	if (qs && cause == REPAIR_CAUSES && qs->vtep == vtep) {
		if (path_live(vtep, qs->path, now)) {
			/* Checked again after a mac_vtep change: same VTEP,
			 * same path. Back to the fast path from the next
			 * packet on. */
			qs->mac_gen = gen;
			psn_advance(qs, p, now);
			set_hash(skb, qs->hash);
			account(qs, skb->len, now);
			return TC_PASS;
		}
		if (path_usable(path_of(vtep, qs->path)))
			cause = REPAIR_LIVENESS;   /* routing says fine, probes do not */
	}

	/* A QP leaving a path (dead, gone, or resending) goes where probes
	 * answer, if anywhere does, and off the links of the path it leaves. */
	if (qs) {
		struct path_entry *left = path_of(qs->vtep, qs->path);

		prefs = 1U << PREFER_VERIFIED_BIT;
		if (left && qs->vtep == vtep)
			prefs |= left->shares;
	}
	path = least_loaded_path(vtep, exclude, prefs, now);
	if (path < 0 || take_slot(vtep, path, &st) < 0) {
		if (qs)
			account(qs, skb->len, now);
		if (signal < REPAIR_CAUSES && qs) {
			/* No other live path: stay, and ask again only
			 * after a hold-down. */
			qs->repaired_ns = now;
			psn_advance(qs, p, now);
			set_hash(skb, qs->hash);
			return TC_PASS;
		}
		steer_count(STEER_NO_LIVE_PATH);
		return TC_PASS;
	}

	if (qs) {
		/* Its path died, vanished, now leads to another VTEP, or its
		 * own signal says to leave it. */
		if (signal < REPAIR_CAUSES)
			note_leaver(qs->vtep, qs->path, now);
		release_slot(qs);
		qs->vtep = st.vtep;
		qs->path = st.path;
		qs->slot = st.slot;
		qs->hash = st.hash;
		qs->port = st.port;
		qs->mac_gen = gen;
		qs->moves++;
		qs->placed_ns = now;
		qs->ack_wait_ns = now;   /* the new path gets a whole wait */
		qs->nak_ns = 0;          /* and any NAK is spent */
		if (signal >= REPAIR_CAUSES)
			steer_count(STEER_PLACED_DEAD);
		if (cause < REPAIR_CAUSES) {
			qs->repairs++;
			qs->last_cause = cause;
			qs->repaired_ns = now;
			repair_count(cause);
		}
		psn_advance(qs, p, now);
		set_hash(skb, st.hash);
		account(qs, skb->len, now);
		return TC_PASS;
	}

	st.mac_gen = gen;
	st.packets = 1;
	st.bytes = skb->len;
	st.first_ns = now;
	st.last_ns = now;
	st.placed_ns = now;
	st.last_cause = REPAIR_CAUSES;
	if (p->psn_ok) {
		st.next_psn = (p->psn + 1) & PSN_MASK;
		st.psn_valid = 1;
	}
	if (qp_table.insert(key, &st) != 0) {
		/* Another CPU placed it first: give the slot back, follow it. */
		release_slot(&st);
		qs = qp_table.lookup(key);
		if (qs) {
			set_hash(skb, qs->hash);
			account(qs, skb->len, now);
		}
		return TC_PASS;
	}
	pair_replies(key, p);
	steer_count(STEER_PLACED_NEW);
	set_hash(skb, st.hash);
	return TC_PASS;
}

int qp_steer(struct __sk_buff *skb)
{
	struct pkt_info p = {};
	struct qp_key key = {};
	struct clock_cache *cc;
	struct qp_state *qs;
	__u32 gen;
	__u64 now;
	int outcome;

	pull_headers(skb);
	outcome = parse_packet((void *)(long)skb->data,
			       (void *)(long)skb->data_end, &p);
	count_parse(skb->ifindex, HOOK_QP_STEER, outcome);
	/* An already encapsulated frame is not a queue pair of this VTEP. */
	if (outcome != PARSE_ROCE || p.outer_vxlan)
		return TC_PASS;

	__builtin_memcpy(key.saddr, p.saddr, sizeof(key.saddr));
	__builtin_memcpy(key.daddr, p.daddr, sizeof(key.daddr));
	key.dqp = p.dqp;
	key.family = p.family;

	/* Read before any MAC lookup: a mac_vtep change the agent makes while
	 * this packet is placed then leaves a generation that is already
	 * stale, and the next packet checks the MAC again. */
	gen = current_mac_gen();
	cc = this_cpu_clock();
	qs = qp_table.lookup(&key);
	if (!qs)
		return steer_slow(skb, &key, qs, gen, &p, cc, REPAIR_CAUSES);
	/* To one tick (clock.h): a liveness deadline is tens of ms. */
	now = clock_tick(cc);
	if (qs->mac_gen == gen && path_live(qs->vtep, qs->path, now)) {
		/* Steady state: a known QP on a live path, with no mac_vtep
		 * change since its VTEP was checked. No MAC -> VTEP lookup and
		 * no clock read: the agent bumps mac_gen whenever a MAC moves,
		 * and last_ns is to one tick (clock.h). */
		__u32 signal = qp_signal(qs, &p, now);

		if (signal < REPAIR_CAUSES)
			return steer_slow(skb, &key, qs, gen, &p, cc, signal);
		psn_advance(qs, &p, now);
		set_hash(skb, qs->hash);
		account(qs, skb->len, now);
		return TC_PASS;
	}
	return steer_slow(skb, &key, qs, gen, &p, cc, REPAIR_CAUSES);
}

/* Keep an ACK that moved its QP on, whole, for the agent (ack_frame).
 * Only the common shape (IPv4 without options, nothing after the ICRC):
 * a QP whose ACKs look otherwise gets no go-back NAK. */
static __always_inline void keep_ack_frame(struct __sk_buff *skb, const struct pkt_info *p,
					   struct qp_key *qp)
{
	struct ack_frame fresh = {};
	struct ack_frame *f;

	if (p->inner_family != 4 || skb->len != (__u32)p->inner_off + ACK_FRAME_LEN)
		return;
	f = qp_ack_frame.lookup_or_try_init(qp, &fresh);
	if (f)
		bpf_skb_load_bytes(skb, p->inner_off, f->bytes, ACK_FRAME_LEN);
}

/* A QP's ACK moved on: the path it sends on delivers (path_silent). */
static __always_inline void path_delivered(__u32 vtep, __u32 path, __u64 now)
{
	struct path_health *h = health_of(vtep, path);

	if (h)
		h->acked_ns = now;
}

/* An ACK or NAK coming back for a QP we steer: record it on the QP (found
 * through qp_reply) for qp_signal. Only ACKs and sequence-error NAKs tell
 * of the path; an RNR NAK or another NAK code is the responder's matter. */
static __always_inline void ack_seen(struct __sk_buff *skb, const struct pkt_info *p)
{
	__u8 type = p->syndrome & AETH_TYPE_MASK;
	struct reply_key rk = {};
	struct qp_key *fwd;
	struct qp_state *qs;
	__u32 acked;
	__u64 now;

	if (type != AETH_TYPE_ACK && p->syndrome != AETH_NAK_PSN_SEQ)
		return;
	/* The ACK comes from the responder to the requester. */
	__builtin_memcpy(rk.local, p->inner_daddr, sizeof(rk.local));
	__builtin_memcpy(rk.peer, p->inner_saddr, sizeof(rk.peer));
	rk.sport = p->inner_sport;
	rk.family = p->inner_family;
	fwd = qp_reply.lookup(&rk);
	qs = fwd ? qp_table.lookup(fwd) : NULL;
	if (!qs) {
		reply_count(REPLY_UNPAIRED);
		return;
	}
	now = bpf_ktime_get_ns();
	if (type != AETH_TYPE_ACK) {
		qs->nak_ns = now;
		reply_count(REPLY_NAK);
		return;
	}
	/* An ACK's PSN is the last request it acknowledges. */
	acked = (p->psn_acked + 1) & PSN_MASK;
	if (!qs->ack_valid || psn_ahead(acked, qs->acked_psn)) {
		qs->acked_psn = acked;
		qs->ack_wait_ns = now;
		qs->ack_valid = 1;
		keep_ack_frame(skb, p, fwd);
		path_delivered(qs->vtep, qs->path, now);
	}
	reply_count(REPLY_ACK);
}

/* Unanswered requests that make a path silent, for the bookkeeping of
 * probe_sent and path_probe (at least one: an agent that has not said yet
 * believes no silence anyway, silence_misses). */
static __always_inline __u32 counted_misses(void)
{
	__u32 zero = 0;
	struct repair_config *rc = repair_config.lookup(&zero);   /* inlined */

	return rc && rc->probe_misses ? rc->probe_misses : 1;
}

/* A reply to request `seq` came back: what is still unanswered is what left
 * after it; the path is silent since the misses-th of those left, if there
 * are that many. A reply no newer than the newest one answered (the other
 * copy, or a late one) changes nothing: returns 0. */
static __always_inline int answered(struct path_health *h, __u32 seq)
{
	__u32 after = h->sent_seq - seq, misses = counted_misses();

	if (h->replies && (__s32)(seq - h->last_seq) <= 0)
		return 0;
	h->last_seq = seq;
	if (after == 0 || after > PROBE_SEQ_SPAN) {   /* none after it (or not ours) */
		h->unanswered = 0;
		h->silent_since_ns = 0;
		return 1;
	}
	h->unanswered = after;
	h->silent_since_ns = after >= misses ? h->sent_ns[(seq + misses) & (PROBE_RING - 1)] : 0;
	return 1;
}

/* The second copy of a reply (consts.h, PROBE_REPLY_PORT_FLIP): the frame
 * again (the clone sent before it left the pointers invalid), its source
 * port flipped, out of the same uplink. */
static __always_inline int answer_again(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct probe_frame f = {};

	if (probe_find(data, data_end, &f) != PROBE_FOUND_REPLY)
		return TC_ACT_SHOT;
	f.udp->source ^= bpf_htons(PROBE_REPLY_PORT_FLIP);
	return bpf_redirect(skb->ifindex, 0);
}

/* A request or reply the shared parser saw as outer IPv4 VXLAN with
 * PROBE_VNI. */
static __always_inline int probe_handle(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct probe_frame f = {};
	struct path_health *h;
	__u64 now;
	int found;

	found = probe_find(data, data_end, &f);
	if (found == PROBE_FOUND_REQUEST) {
		/* We are the remote VTEP: answer in place, out of the uplink
		 * it came in on, in two copies that the way back hashes apart.
		 * Hosts never see it. */
		probe_make_reply(&f);
		probe_count(PROBE_ANSWERED);
		bpf_clone_redirect(skb, skb->ifindex, 0);
		return answer_again(skb);
	}
	if (found != PROBE_FOUND_REPLY) {
		probe_count(PROBE_MALFORMED);
		return TC_PASS;
	}
	h = health_of(f.msg->vtep, f.msg->path);
	if (!h) {
		probe_count(PROBE_REPLY_UNKNOWN);
		return TC_ACT_SHOT;
	}
	/* tx_ns is the sender's CLOCK_MONOTONIC, the clock of ktime_get_ns. */
	now = bpf_ktime_get_ns();
	if (h->suspect_ns && f.msg->tx_ns > h->suspect_ns) {
		/* Sent after the path fell under suspicion, and back: it
		 * forwards. Whatever made its QPs leave was not the path. */
		h->suspect_ns = 0;
		h->leavers = 0;
	}
	if (!answered(h, f.msg->seq)) {
		probe_count(PROBE_REPLY_AGAIN);
		return TC_ACT_SHOT;
	}
	h->last_reply_ns = now;
	h->rtt_ns = elapsed(now, f.msg->tx_ns);
	__sync_fetch_and_add(&h->replies, 1);
	probe_count(PROBE_REPLY_SEEN);
	return TC_ACT_SHOT;
}

/* A request of ours leaves for the first time (path_pin may send it out of
 * another uplink, past this hook once more with the same seq). A seq that
 * does not follow the last one is a new prober (the agent restarted): what
 * the old one sent is forgotten. */
static __always_inline void request_left(struct path_health *h, __u32 seq, __u64 now)
{
	if (seq == h->sent_seq)
		return;
	if (seq != h->sent_seq + 1) {
		h->last_seq = seq - 1;
		h->unanswered = 0;
		h->silent_since_ns = 0;
	}
	h->sent_ns[seq & (PROBE_RING - 1)] = now;
	h->sent_seq = seq;
	if (++h->unanswered == counted_misses())
		h->silent_since_ns = now;
}

/* tc egress of each uplink, before path_pin: note when each liveness
 * request actually leaves, so that silence is counted from there (a
 * request the agent's prober meant to send but did not, held up on a busy
 * host, makes no path look dead). Everything passes on, untouched. */
int probe_sent(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct probe_frame f = {};
	struct path_health *h;

	if (!probe_request_leaving(data, data_end, &f))
		return TC_PASS;
	h = health_of(f.msg->vtep, f.msg->path);
	if (h)
		request_left(h, f.msg->seq, bpf_ktime_get_ns());
	return TC_PASS;
}

int path_probe(struct __sk_buff *skb)
{
	struct pkt_info p = {};
	int outcome;

	pull_headers(skb);
	outcome = parse_packet((void *)(long)skb->data,
			       (void *)(long)skb->data_end, &p);
	count_parse(skb->ifindex, HOOK_PATH_PROBE, outcome);
	if (!p.outer_vxlan || !(p.has & FLOW_HAS_VNI) || p.vni != PROBE_VNI) {
		if (outcome == PARSE_ROCE && p.outer_vxlan && p.is_ack)
			ack_seen(skb, &p);
		return TC_PASS;
	}
	if (p.family != 4) {
		probe_count(PROBE_MALFORMED);   /* probes are IPv4 only */
		return TC_PASS;
	}
	return probe_handle(skb);
}
