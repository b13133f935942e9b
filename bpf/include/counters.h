/* Small helpers shared by the programs that do not touch maps.
 *
 * BCC rewrites map calls (map.lookup(), ...) only in the program's own .c
 * file, never inside an included header, so every helper that reads or
 * writes a map lives in the program file; headers stay map-free. */
#ifndef QPAGENT_COUNTERS_H
#define QPAGENT_COUNTERS_H

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

#endif
