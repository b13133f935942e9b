/* Map definitions (BCC syntax). Each program includes the ones it uses by
 * defining the matching QPAGENT_MAPS_* macro before including this file, so
 * that a program carries no map it does not touch. */
#ifndef QPAGENT_MAPS_H
#define QPAGENT_MAPS_H

#include "structs.h"

/* Parse outcomes per (ifindex, hook), every program: a per-CPU array slot
 * on the fast path, a per-CPU hash when the slot is taken (consts.h). */
BPF_TABLE("percpu_array", __u32, struct parse_counters, parse_stats, PARSE_SLOTS);
BPF_TABLE("percpu_hash", struct parse_key, struct parse_counters,
	  parse_stats_spill, MAX_PARSE_SPILL);

#ifdef QPAGENT_MAPS_STEER
BPF_TABLE("lru_hash", struct qp_key, struct qp_state, qp_table, MAX_QPS);
BPF_TABLE("hash", struct mac_key, __u32, mac_vtep, 4096);
BPF_TABLE("array", __u32, struct path_entry, path_table, MAX_VTEPS * MAX_PATHS);
BPF_TABLE("percpu_array", __u32, __u64, steer_events, STEER_EVENTS);
/* One counter the agent bumps after every change to mac_vtep. A known QP
 * whose qp_state.mac_gen still equals it skips the MAC -> VTEP lookup; on a
 * mismatch qp_steer checks the MAC once more and moves the QP if its VTEP
 * changed. */
BPF_TABLE("array", __u32, __u32, mac_gen, 1);
/* Path liveness: written by path_probe (replies) and the agent (deadline),
 * read by qp_steer. Both programs live in qp_steer.c so that they share it. */
BPF_TABLE("array", __u32, struct path_health, path_health, MAX_VTEPS * MAX_PATHS);
BPF_TABLE("array", __u32, struct repair_config, repair_config, 1);
BPF_TABLE("percpu_array", __u32, __u64, repair_events, REPAIR_CAUSES);
BPF_TABLE("percpu_array", __u32, __u64, probe_events, PROBE_EVENTS);
/* Acknowledgements back to the QP they answer: qp_steer adds a QP's entry
 * when it places it, path_probe reads it (structs.h, reply_key). */
BPF_TABLE("lru_hash", struct reply_key, struct qp_key, qp_reply, MAX_QPS);
BPF_TABLE("percpu_array", __u32, __u64, reply_events, REPLY_EVENTS);
/* path_probe: each QP's latest ACK frame (structs.h, ack_frame). */
BPF_TABLE("lru_hash", struct qp_key, struct ack_frame, qp_ack_frame, MAX_QPS);
#endif

#ifdef QPAGENT_MAPS_PIN
BPF_TABLE("percpu_array", __u32, __u64, pin_events, PIN_EVENTS);
/* Uplinks the agent manages: path_pin only redirects to these. */
BPF_TABLE("hash", __u32, __u32, pin_uplinks, 64);
#endif

#ifdef QPAGENT_MAPS_FLOWS
BPF_TABLE("lru_hash", struct flow_key, struct flow_counters, flow_table, MAX_FLOWS);
#endif

#if defined(QPAGENT_MAPS_STEER) || defined(QPAGENT_MAPS_FLOWS)
/* Time of the current jiffy on each CPU (clock.h); internal, not read by
 * the agent. */
BPF_TABLE("percpu_array", __u32, struct clock_cache, clock_cache, 1);
#endif

#endif
