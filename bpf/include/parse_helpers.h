/* What every program does around parse_packet(): pull the headers into
 * the linear area (tc), check an outcome, find its parse counter's slot.
 *
 * Map-free: BCC rewrites map calls (map.lookup(), ...) only in the
 * program's own .c file, never inside an included header, so the counting
 * itself (count_parse) lives in each program file. */
#ifndef QPAGENT_PARSE_HELPERS_H
#define QPAGENT_PARSE_HELPERS_H

#include "consts.h"

/* The headers parse_packet() may read: pull them into the linear area when
 * a non-linear skb holds them elsewhere (no-op for the usual linear skb). */
#define PARSE_PULL_LEN 160

static __always_inline void pull_headers(struct __sk_buff *skb)
{
	__u32 want = skb->len < PARSE_PULL_LEN ? skb->len : PARSE_PULL_LEN;

	if ((long)skb->data_end - (long)skb->data < (long)want)
		bpf_skb_pull_data(skb, want);
}

static __always_inline int parse_outcome_valid(int outcome)
{
	return outcome >= 0 && outcome < PARSE_OUTCOMES;
}

/* Slot of (ifindex, hook) in the parse_stats array (consts.h). */
static __always_inline __u32 parse_slot_of(__u32 ifindex, __u32 hook)
{
	return (ifindex * HOOK_IDS + hook) & (PARSE_SLOTS - 1);
}

#endif
