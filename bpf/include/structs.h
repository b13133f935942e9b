/* Map keys and values. Field names are read by the agent through BCC's
 * generated ctypes, so renaming a field is an API change. */
#ifndef QPAGENT_STRUCTS_H
#define QPAGENT_STRUCTS_H

#include "consts.h"

/* One RoCE queue pair as seen before encapsulation. IPv4 addresses live in
 * saddr[0]/daddr[0] (network order) with the rest zero. */
struct qp_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 dqp;          /* 24-bit destination QP from the BTH */
	__u8  family;       /* 4 or 6 */
	__u8  pad[3];
};

struct qp_state {
	__u32 vtep;         /* index into the agent's VTEP table          */
	__u32 path;         /* path index within that VTEP, < MAX_PATHS   */
	__u32 slot;         /* port slot within the path                  */
	__u32 hash;         /* skb hash set so the VXLAN driver emits port */
	__u16 port;         /* outer UDP source port (host order)         */
	__u16 moves;        /* times this QP was re-placed                */
	__u32 mac_gen;      /* mac_gen[0] when vtep was last checked against
			     * mac_vtep (see maps.h); was padding */
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;     /* bpf_ktime_get_ns() of the first packet      */
	__u64 last_ns;      /* last packet, to one clock tick (clock.h)    */
	__u64 placed_ns;    /* bpf_ktime_get_ns() of the current placement */
	__u32 next_psn;     /* highest PSN sent + 1 (24-bit), when psn_valid */
	__u32 psn_valid;    /* 1 once a PSN was seen                        */
	__u32 repairs;      /* times the data plane repaired this QP         */
	__u32 last_cause;   /* enum repair_cause, REPAIR_CAUSES: never       */
	__u64 repaired_ns;  /* bpf_ktime_get_ns() of the last repair         */
	/* The return traffic, read by path_probe (qp_reply pairs it). */
	__u32 acked_psn;    /* highest PSN acknowledged + 1, when ack_valid  */
	__u32 ack_valid;    /* 1 once an ACK was seen: only then can it stall */
	__u64 ack_wait_ns;  /* since when the oldest unacknowledged data waits:
			     * the last ACK progress, or the first send with
			     * nothing outstanding                           */
	__u64 nak_ns;       /* bpf_ktime_get_ns() of the latest NAK (0: none) */
};

/* How path_probe finds the QP an acknowledgement answers: the requester's
 * QP is keyed by the responder's QP number, which the ACK does not carry.
 * Both ends of a RoCEv2 QP use one UDP source port (Linux derives it from
 * the flow label of the QP number pair, symmetric in the two), so the ACK
 * is found by (requester, responder, that port). */
struct reply_key {
	__u32 local[4];     /* the requester (the host behind this VTEP)   */
	__u32 peer[4];      /* the responder                               */
	__u16 sport;        /* the QP's UDP source port, host order        */
	__u8  family;
	__u8  pad;
};

/* The responder's latest ACK that moved a QP on, as it came in (inner
 * Ethernet through ICRC, ACK_FRAME_LEN bytes). When a QP left a dead path
 * with data outstanding and its ACKs stop, the agent turns it into a NAK
 * naming the oldest unacknowledged PSN, so the requester goes back at once
 * over the new path instead of waiting for its ACK timer (qpagent.goback). */
struct ack_frame {
	__u8  bytes[ACK_FRAME_LEN];
	__u8  pad[2];
};

/* Inner destination MAC -> VTEP index. The all-zero MAC is the default
 * remote (as in the VXLAN FDB). */
struct mac_key {
	__u8  mac[6];
	__u16 pad;
};

/* One first-hop path towards one VTEP: key = vtep * MAX_PATHS + path. */
struct path_entry {
	__u32 ifindex;      /* uplink the FIB names for these ports        */
	__u32 alive;        /* 0 = dead: its QPs move on their next packet */
	__u32 n_ports;      /* valid entries in hash[]/port[]; 0 = unused  */
	__u32 qps;          /* QPs placed here (data plane adds, agent reconciles) */
	__u32 hash[PORTS_PER_PATH];
	__u16 port[PORTS_PER_PATH];
	__u16 shares;       /* bit j: path j crosses a link of this one; a QP
			     * leaving this path on its own avoids them */
};

/* A liveness probe: the UDP payload after the 8-byte VXLAN header. The
 * answering VTEP echoes everything but kind. */
struct probe_msg {
	__u32 magic;        /* PROBE_MAGIC, network order */
	__u8  kind;         /* enum probe_kind */
	__u8  pad[3];
	__u32 vtep;         /* sender's VTEP index, echoed as is (host order) */
	__u32 path;         /* sender's path index, echoed as is */
	__u32 seq;          /* echoed as is */
	__u32 pad2;
	__u64 tx_ns;        /* sender's CLOCK_MONOTONIC ns at send, echoed as is */
};

/* Liveness of one end-to-end path: key = vtep * MAX_PATHS + path.
 *
 * Silence is counted from the requests that actually left: probe_sent sees
 * each one go out of the uplink and path_probe each reply come back, so a
 * prober that stalls (no request sent) makes no path look silent. The
 * path is dead once repair_config.probe_misses requests in a row are
 * unanswered, the last of them for longer than deadline_ns (path_silent in
 * qp_steer.c). */
struct path_health {
	__u64 deadline_ns;      /* agent: how long a request may go unanswered; 0 = unchecked */
	__u64 last_reply_ns;    /* path_probe: bpf_ktime_get_ns() of the newest reply */
	__u64 rtt_ns;           /* path_probe: its round-trip time */
	__u64 replies;          /* path_probe: replies recorded */
	__u32 last_seq;         /* path_probe: seq of the newest reply */
	__u32 sent_seq;         /* probe_sent: seq of the newest request that left
				 * (the agent numbers each path's requests in order) */
	__u32 unanswered;       /* requests left since the newest reply's */
	__u32 pad;
	__u64 silent_since_ns;  /* when the probe_misses-th of them left (0: fewer) */
	__u64 sent_ns[PROBE_RING]; /* when request seq left, at seq % PROBE_RING */
	/* Suspicion (qp_steer): QPs that left this path on their own signals
	 * within SUSPECT_WINDOW_MS of the first; SUSPECT_LEAVERS of them make
	 * it suspect: no QP is placed on it until a probe sent after that
	 * comes back (path_probe clears it), or for SUSPECT_HOLD_MS. */
	__u32 leavers;
	__u64 leave_ns;         /* the first of those leavers */
	__u64 suspect_ns;       /* suspect since (0: not) */
	/* path_probe: the newest ACK that moved a QP of this path on. Data
	 * acknowledged is data the path delivered: behind a deep queue the
	 * probes wait as long as the data, and a path whose QPs' ACKs keep
	 * coming is slow, not dead (path_silent). */
	__u64 acked_ns;
};

/* How qp_steer repairs QPs from their own signals; one entry, the agent's. */
struct repair_config {
	__u64 holddown_ns;      /* a QP is repaired at most once per holddown_ns */
	__u32 retransmit;       /* 1: a retransmission moves the QP; 0: off */
	__u32 nak;              /* 1: a NAK moves the QP; 0: off */
	__u64 believe_until_ns; /* the agent's prober renews this every round;
				 * past it (no agent running) silence kills no
				 * path, and a path that died while the agent was
				 * away comes back with nobody to probe it */
	__u64 stall_ns;         /* no ACK progress this long with data
				 * outstanding moves the QP (0: off); a path
				 * with a liveness deadline uses the larger */
	__u32 probe_misses;     /* unanswered requests that make a path silent */
	__u32 pad;
};

/* Flow counters: 5-tuple (+ VNI and dest QP where present) per interface
 * and hook. For outer VXLAN packets the tuple is the outer one and vni/dqp
 * come from inside. */
struct flow_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 ifindex;
	__u32 vni;
	__u32 dqp;
	__u16 sport;        /* host order */
	__u16 dport;        /* host order */
	__u8  proto;
	__u8  family;       /* 4 or 6 */
	__u8  hook;         /* enum hook_id */
	__u8  has;          /* FLOW_HAS_* */
};

struct flow_counters {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;     /* bpf_ktime_get_ns() of the first packet    */
	__u64 last_ns;      /* last packet, to one clock tick (clock.h)  */
};

/* Per-CPU clock of the current jiffy (clock.h). */
struct clock_cache {
	__u64 jiffies;      /* bpf_jiffies64() when ns was read */
	__u64 ns;           /* bpf_ktime_get_ns() read then      */
};

struct parse_key {
	__u32 ifindex;
	__u32 hook;         /* enum hook_id */
};

/* Parse outcomes of one (ifindex, hook) on one CPU. In the parse_stats
 * array a slot names its owner itself (ifindex 0: not taken yet). */
struct parse_counters {
	__u32 ifindex;
	__u32 hook;         /* enum hook_id */
	__u64 outcome[PARSE_OUTCOMES];
};

#endif
