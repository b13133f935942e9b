/* A per-packet timestamp without a clock read per packet.
 *
 * bpf_ktime_get_ns() is a helper call that costs about as much as a hash
 * lookup, while bpf_jiffies64() is inlined by the verifier (a load) and a
 * per-CPU array lookup is inlined too (kernel 6.11 and later). So each CPU
 * keeps the time it read at the start of the current jiffy and hands that
 * out until the jiffy changes: a "last seen" stamp that is at most one tick
 * old (4 ms at HZ=250), as CLOCK_MONOTONIC_COARSE is, in the same time base
 * as bpf_ktime_get_ns(). First-seen and placement times, taken once per
 * flow or QP, still read the clock exactly (clock_exact()).
 *
 * The cache value is looked up in the program file (BCC rewrites map calls
 * only there) and passed in; NULL falls back to an exact read.
 */
#ifndef QPAGENT_CLOCK_H
#define QPAGENT_CLOCK_H

#include "structs.h"

/* Exact now, also restarting this CPU's tick cache from it. */
static __always_inline __u64 clock_exact(struct clock_cache *cc)
{
	__u64 jiffies = bpf_jiffies64();   /* first: ns is then within it */
	__u64 now = bpf_ktime_get_ns();

	if (cc) {
		cc->jiffies = jiffies;
		cc->ns = now;
	}
	return now;
}

/* Now, to one tick: an exact read only on a CPU's first call in a jiffy. */
static __always_inline __u64 clock_tick(struct clock_cache *cc)
{
	if (cc && cc->jiffies == bpf_jiffies64())
		return cc->ns;
	return clock_exact(cc);
}

/* Move a last-seen stamp forward only: CPUs with older tick caches must not
 * pull it back. */
static __always_inline void stamp_last(__u64 *last_ns, __u64 now)
{
	if (now > *last_ns)
		*last_ns = now;
}

#endif
