/* Constants and enums shared by every qpagent BPF program. The agent reads
 * them from this file (qpagent.contract): this is their one definition.
 * Enums keep their values in order, new members go before the count. */
#ifndef QPAGENT_CONSTS_H
#define QPAGENT_CONSTS_H

#define VXLAN_UDP_PORT   4789
#define ROCE_UDP_PORT    4791

#define MAX_VTEPS        64     /* remote VTEPs one agent steers towards   */
#define MAX_PATHS        16     /* first-hop paths (ECMP members) per VTEP  */
#define PORTS_PER_PATH   16     /* distinct outer source ports per path     */
/* A repair's preferences word: bits 0-15 paths to avoid (path_entry.shares,
 * one per path), this bit: prefer paths that answered probes. */
#define PREFER_VERIFIED_BIT 16
/* Table sizes may be overridden at compile time (-DMAX_FLOWS=64) so that
 * tests can fill an LRU table quickly. */
#ifndef MAX_QPS
#define MAX_QPS          65536  /* LRU-bounded queue-pair table             */
#endif
#ifndef MAX_FLOWS
#define MAX_FLOWS        65536  /* LRU-bounded flow table                   */
#endif
/* Parse counters live in a per-CPU array (its lookup is inlined by the
 * verifier) at slot (ifindex * HOOK_IDS + hook) % PARSE_SLOTS: interfaces
 * with an index below PARSE_SLOTS / HOOK_IDS never share a slot. A slot
 * another (ifindex, hook) holds already sends the count to a per-CPU hash
 * of up to MAX_PARSE_SPILL keys instead. */
#define PARSE_SLOTS      1024   /* a power of two */
#define MAX_PARSE_SPILL  256

/* Outcome of parsing one frame; every program counts one per packet. */
enum parse_outcome {
	PARSE_ROCE = 0,      /* IPv4/IPv6 + UDP 4791 + a sane BTH           */
	PARSE_NOT_ROCE,      /* IP, but not RoCEv2 (other proto or port)     */
	PARSE_NOT_IP,        /* ARP, VLAN-tagged, anything not IPv4/IPv6     */
	PARSE_TRUNCATED,     /* frame ends before a header its types and
			      * lengths announce (a header cut short)       */
	PARSE_FRAGMENT,      /* IPv4 fragment (no L4 header to trust)        */
	PARSE_IPV6_EXT,      /* IPv6 with an extension header: not parsed    */
	PARSE_BAD_BTH,       /* UDP 4791, but too short for a BTH or its
			      * transport version != 0                     */
	PARSE_OUTCOMES,
};

/* Where a parse counter was taken. */
enum hook_id {
	HOOK_XDP_INGRESS = 0,  /* flow_stats, XDP            */
	HOOK_TC_EGRESS,        /* flow_stats, tc egress      */
	HOOK_QP_STEER,         /* qp_steer, vxlan tc egress  */
	HOOK_PATH_PIN,         /* path_pin, uplink tc egress */
	HOOK_PATH_PROBE,       /* path_probe, uplink tc ingress */
	HOOK_IDS,
};

/* qp_steer event counters (per-CPU array indexes). */
enum steer_event {
	STEER_PLACED_NEW = 0,  /* first packet of a QP placed by the data plane */
	STEER_PLACED_DEAD,     /* QP moved off a path flagged dead              */
	STEER_HASH_SET,        /* packets whose hash was set                    */
	STEER_NO_VTEP,         /* RoCE, but no VTEP known for the inner dst MAC */
	STEER_NO_LIVE_PATH,    /* RoCE, VTEP known, no live path: kernel hash   */
	STEER_EVENTS,
};

/* path_pin event counters (per-CPU array indexes). */
enum pin_event {
	PIN_ON_FIB_LINK = 0,   /* already leaving on the uplink the FIB names */
	PIN_REDIRECTED,        /* moved to the uplink the FIB names           */
	PIN_FIB_FAILED,        /* FIB lookup did not succeed: left alone      */
	PIN_NOT_VXLAN,         /* not an outer VXLAN packet: left alone       */
	PIN_REDIRECTED_NEIGH,  /* moved to the FIB's uplink, whose next hop the
				* kernel resolves first (bpf_redirect_neigh) */
	PIN_EVENTS,
};

/* End-to-end path liveness. A probe is an ordinary-looking VXLAN packet
 * (outer 5-tuple of the path it checks, so every router hashes it like that
 * path's data) with this VNI and a struct probe_msg as its payload. IPv4. */
#define PROBE_VNI    0xFFFFFF    /* VXLAN VNI reserved for liveness probes: never a segment */
#define PROBE_MAGIC  0x51504C56  /* "QPLV", network order on the wire */
/* Send times kept per path (path_health.sent_ns): a power of two, more than
 * a round trip's worth of requests (a reply older than that finds its slot
 * rewritten by a later request, and silence is counted from that one). */
#define PROBE_RING   32
/* A reply this far behind the newest request is not to our requests (a
 * prober before a restart numbered them): nothing counts as unanswered. */
#define PROBE_SEQ_SPAN 4096

enum probe_kind {
	PROBE_REQUEST = 1,     /* sent by the agent; answered by the remote VTEP */
	PROBE_REPLY = 2,       /* the answer, recorded in path_health            */
};

/* path_probe event counters (per-CPU array indexes). */
enum probe_event {
	PROBE_ANSWERED = 0,    /* a request answered (we are the remote VTEP)    */
	PROBE_REPLY_SEEN,      /* a reply recorded in path_health                */
	PROBE_REPLY_UNKNOWN,   /* a reply for a vtep/path out of range           */
	PROBE_MALFORMED,       /* PROBE_VNI but not a whole probe_msg: passed    */
	PROBE_REPLY_AGAIN,     /* the other copy of a reply already recorded     */
	PROBE_EVENTS,
};

/* A request is answered twice, out of the uplink it came in on: once from
 * its own source port, once from that port with these bits flipped (below
 * 0x4000: an ephemeral port stays one). The routers on the way back hash
 * the two apart, so a path whose way back died with another path's way
 * out is not taken for dead while the other copy gets through. */
#define PROBE_REPLY_PORT_FLIP 0x2A5

/* Why the data plane moved a QP (repair_events indexes, qp_state.last_cause). */
enum repair_cause {
	REPAIR_LIVENESS = 0,   /* QP's path had no probe reply within deadline   */
	REPAIR_RETRANSMIT,     /* QP sent a PSN at or below one already sent     */
	REPAIR_NAK,            /* a NAK (PSN sequence error) came back for it    */
	REPAIR_STALL,          /* data outstanding, no ACK progress past the
				* path's deadline                                */
	REPAIR_CAUSES,
};

/* path_probe's reading of the QPs' acknowledgements (reply_events indexes). */
enum reply_event {
	REPLY_ACK = 0,         /* an ACK for a QP we steer, recorded             */
	REPLY_NAK,             /* a NAK (sequence error) for one, recorded       */
	REPLY_UNPAIRED,        /* an ACK/NAK whose QP we do not know (qp_reply)  */
	REPLY_EVENTS,
};

/* Several QPs leaving one path on their own signals make it suspect (a
 * congested queue makes one QP resend; a failing path makes all of them):
 * this many within the window. Probes then confirm (the path goes silent
 * and dies) or clear it (a probe sent after the suspicion comes back). */
#define SUSPECT_LEAVERS   2
#define SUSPECT_WINDOW_MS 1000   /* the leavers within this of the first */
#define SUSPECT_HOLD_MS   1000   /* no probe to clear it: it lapses */

/* The inner frame of an RC ACK as it reaches an uplink: Ethernet, IPv4
 * without options, UDP, BTH, AETH and ICRC. path_probe keeps the latest of
 * each QP (qp_ack_frame) for the agent's go-back NAK (qpagent.goback). */
#define ACK_FRAME_LEN 62

#define PSN_MASK     0xFFFFFF    /* BTH PSNs are 24 bits and wrap */
#define PSN_HALF     0x800000    /* serial arithmetic: a - b in 1..2^23 means b is older */

/* The verdict for "leave this packet alone": continue with the next tc
 * filter on the hook (flow_stats after path_pin on an uplink), and send it
 * when the chain ends. TC_ACT_OK would end the chain and hide the packet
 * from every program attached after ours. */
#define TC_PASS TC_ACT_UNSPEC

/* flow_key.has bits */
#define FLOW_HAS_VNI  1
#define FLOW_HAS_QP   2

#endif
