"""The decision core, table-driven: events in, map writes and QP moves out.

No root, no kernel: a QP table as the maps would hold it is kept beside the
core and updated with the moves it asks for, so a sequence of events plays
out as it would in the agent.
"""

from __future__ import annotations

import pytest

from qpagent.core.actions import (ForgetQp, MoveQp, Note, SetMacVteps, SetPathCounts, Warn,
                                  WritePath)
from qpagent.core.decisions import Core, QpView, Settings
from qpagent.core.inputs import BfdSeen, FdbSeen, PathsSeen, Tick
from qpagent.core.model import Found, VtepAddress
from qpagent.portmath import hash_for_port
from qpagent.contract import MAX_PATHS

RANGE = (49152, 65535)
DEV, REMOTE = "vxlan100", "10.255.0.9"
KEY = (DEV, REMOTE)
FDB = FdbSeen({KEY: VtepAddress("10.255.0.3", RANGE)}, {"aa:bb:cc:00:00:01": KEY})
NOW_NS = 1_000 * 10**9


def first_hop(uplink: str, ports, hops=()) -> Found:
    index = {"eth1": 11, "eth2": 12, "eth3": 13, "eth4": 14}.get(uplink, 20)
    gateway = {"eth1": "10.0.0.1", "eth2": "10.0.0.3"}.get(uplink, "10.0.9.1")
    return Found(index, uplink, gateway, tuple(hops), tuple(ports))


PATH_A = first_hop("eth1", [49152, 49153, 49154])
PATH_B = first_hop("eth2", [49160, 49161, 49162])


def write(path: int, found: Found, alive=True, qps=0, vtep=0, shares=0) -> WritePath:
    return WritePath(vtep, path, found.ifindex, alive, found.ports,
                     tuple(hash_for_port(p, *RANGE) for p in found.ports), qps, shares)


def move(qp: bytes, path: int, slot: int, port: int, reason: str) -> MoveQp:
    return MoveQp(qp, 0, path, slot, port, hash_for_port(port, *RANGE), reason)


class World:
    """The core plus the QP table the data plane would hold."""

    def __init__(self, **settings):
        self.core = Core(Settings(**settings))
        self.qps: dict[bytes, QpView] = {}
        self.now = 100.0

    def qp(self, name: str, path: int, port: int, slot: int = 0, nbytes: int = 1000,
           last_ns: int = NOW_NS) -> None:
        self.qps[name.encode()] = QpView(0, path, slot, port, 10, nbytes, 0, last_ns)

    def paths(self, *found: Found, cause="route_del", fdb=None, started=None) -> list:
        out = self.core.paths_seen(PathsSeen({KEY: list(found)}, cause, fdb, started),
                                   self.qps, self.now)
        return self._play(out)

    def bfd(self, *down: str) -> list:
        return self._play(self.core.bfd_seen(BfdSeen(True, None, (), frozenset(down)),
                                             self.qps, self.now))

    def tick(self, now_ns=NOW_NS) -> list:
        return self._play(self.core.tick(Tick(now_ns), self.qps))

    def _play(self, actions: list) -> list:
        for a in actions:
            if isinstance(a, MoveQp):
                self.qps[a.qp] = self.qps[a.qp]._replace(path=a.path, slot=a.slot, port=a.port)
        return actions

    def placement(self) -> dict[str, int]:
        return {k.decode(): q.path for k, q in sorted(self.qps.items())}


def started(**settings) -> World:
    world = World(**settings)
    world.paths(PATH_A, PATH_B, cause="start", fdb=FDB)
    return world


# ---------------------------------------------------------------- start

def test_start_writes_the_mac_table_and_every_path():
    world = World()
    assert world.paths(PATH_A, PATH_B, cause="start", fdb=FDB) == [
        SetMacVteps((("aa:bb:cc:00:00:01", 0),)),
        write(0, PATH_A),
        write(1, PATH_B),
    ]


def test_start_with_qps_already_in_place_moves_nothing():
    world = World()
    world.qp("q1", 0, 49152)
    world.qp("q2", 1, 49160)
    out = world.paths(PATH_A, PATH_B, cause="start", fdb=FDB)
    assert [a for a in out if isinstance(a, MoveQp)] == []
    assert out[1:] == [write(0, PATH_A, qps=1), write(1, PATH_B, qps=1)]


def test_a_second_identical_discovery_writes_nothing():
    world = started()
    assert world.paths(PATH_A, PATH_B, cause="periodic", fdb=FDB) == [
        SetMacVteps((("aa:bb:cc:00:00:01", 0),))]


# ---------------------------------------------------------------- death and return

def test_a_dead_first_hop_moves_only_its_qps_each_to_a_port_of_its_own():
    world = started()
    world.qp("a1", 0, 49152, 0)
    world.qp("a2", 0, 49153, 1)
    world.qp("b1", 1, 49160, 0)
    out = world.paths(PATH_B)
    assert out == [
        write(0, PATH_A, alive=False, qps=2),
        write(1, PATH_B, qps=1),
        move(b"a1", 1, 1, 49161, "dead_path"),
        move(b"a2", 1, 2, 49162, "dead_path"),
        write(0, PATH_A, alive=False, qps=0),
        write(1, PATH_B, qps=3),
    ]
    assert world.core.replacements["dead_path"] == 2


def test_a_returning_path_takes_back_the_fewest_qps():
    world = started()
    for i in range(4):
        world.qp(f"b{i}", 1, 49160 + i % 3, i % 3)
    world.paths(PATH_B)                       # A dies: nothing on it
    out = world.paths(PATH_A, PATH_B, cause="route_add")
    moves = [a for a in out if isinstance(a, MoveQp)]
    assert [(m.path, m.reason) for m in moves] == [(0, "path_up"), (0, "path_up")]
    assert sorted(world.placement().values()) == [0, 0, 1, 1]


def test_hysteresis_keeps_a_just_moved_qp_where_it_is_when_another_can_go():
    world = started()
    world.qp("a1", 0, 49152, nbytes=10)
    world.qp("b1", 1, 49160, nbytes=10)
    world.qp("b2", 1, 49161, 1, nbytes=10)
    world.paths(PATH_B)                       # a1 moves to B: just moved
    world.now += 1
    world.paths(PATH_A, PATH_B, cause="route_add")
    # B holds a1, b1, b2; one goes back to A, and it is not a1.
    assert world.placement()["a1"] == 1
    assert sorted(world.placement().values()) == [0, 1, 1]


def test_without_rebalance_only_orphans_move():
    world = started(rebalance=False)
    for i in range(3):
        world.qp(f"b{i}", 1, 49160 + i, i)
    assert [a for a in world.paths(PATH_A, PATH_B, cause="route_add")
            if isinstance(a, MoveQp)] == []
    assert [a for a in world.tick() if isinstance(a, MoveQp)] == []


def test_periodic_tick_restores_exact_balance_and_counts():
    world = started()
    for i in range(3):
        world.qp(f"b{i}", 1, 49160 + i, i)
    out = world.tick()
    assert [(m.qp, m.path, m.reason) for m in out if isinstance(m, MoveQp)] == [
        (b"b0", 0, "rebalance")]
    assert out[-1] == SetPathCounts(0, ((0, 1), (1, 2)))


def test_a_qp_whose_port_now_leads_elsewhere_is_re_slotted_on_its_path():
    world = started()
    world.qp("a1", 0, 49152)
    narrowed = first_hop("eth1", [49153, 49154])
    out = world.paths(narrowed, PATH_B)
    assert move(b"a1", 0, 0, 49153, "port_remap") in out
    assert world.core.replacements["port_remap"] == 1


def test_a_vtep_gone_from_the_fdb_loses_every_path():
    world = started()
    world.qp("a1", 0, 49152)
    out = world.core.paths_seen(PathsSeen({}, "periodic", FdbSeen({}, {})), world.qps, world.now)
    assert out == [SetMacVteps(()), write(0, PATH_A, alive=False, qps=1),
                   write(1, PATH_B, alive=False)]


def test_no_route_at_all_kills_every_path_and_moves_nothing_nowhere():
    world = started()
    world.qp("a1", 0, 49152)
    out = world.paths()
    assert out == [write(0, PATH_A, alive=False, qps=1), write(1, PATH_B, alive=False)]


# ---------------------------------------------------------------- BFD

def test_bfd_down_uplink_kills_its_paths_before_the_fib_knows_and_up_brings_them_back():
    world = started()
    world.qp("a1", 0, 49152)
    world.qp("b1", 1, 49160)
    out = world.bfd("eth1")
    assert [(m.qp, m.path, m.reason) for m in out if isinstance(m, MoveQp)] == [
        (b"a1", 1, "dead_path")]
    assert world.bfd("eth1") == []            # nothing new: nothing done
    out = world.bfd()
    assert write(0, PATH_A) in out or write(0, PATH_A, qps=0) in out


# ---------------------------------------------------------------- end-to-end probe rounds

def e2e(uplink, ports, *hops):
    return first_hop(uplink, ports, hops)


def test_probe_round_that_splits_a_first_hop_adds_paths():
    world = World(end_to_end=True)
    world.paths(PATH_A, cause="start", fdb=FDB)
    split = [e2e("eth1", [49152], "10.1.0.1", "10.2.0.1"), e2e("eth1", [49153], "10.1.0.1", "10.2.0.5")]
    out = world.paths(*split, cause="probe")
    # Both leave by eth1 and its next router: each shares a link with the other.
    assert out == [write(0, PATH_A, alive=False), write(1, split[0], shares=1 << 2),
                   write(2, split[1], shares=1 << 1)]


def test_probe_round_that_saw_fewer_hops_is_ignored():
    world = World(end_to_end=True)
    deep = [e2e("eth1", [49152], "10.1.0.1", "10.2.0.1"), e2e("eth2", [49160], "10.1.0.3", "10.2.0.3")]
    world.paths(*deep, cause="start", fdb=FDB)
    world.qp("q", 0, 49152)
    shallow = [e2e("eth1", [49152], "10.1.0.1")]
    assert world.paths(*shallow, cause="probe") == []
    assert world.paths(cause="probe") == []   # an empty round says nothing either
    assert all(p.alive for p in world.core.vteps[KEY].paths.values())


def test_probe_round_that_changes_a_hop_moves_the_qps_of_the_old_path():
    world = World(end_to_end=True)
    old = [e2e("eth1", [49152], "10.1.0.1", "10.2.0.1"), e2e("eth2", [49160], "10.1.0.3", "10.2.0.3")]
    world.paths(*old, cause="start", fdb=FDB)
    world.qp("q", 0, 49152)
    new = [e2e("eth1", [49152], "10.1.0.1", "10.2.0.9"), old[1]]
    out = world.paths(*new, cause="probe")
    assert [(m.path, m.reason) for m in out if isinstance(m, MoveQp)] == [(1, "dead_path")]
    assert world.core.vteps[KEY].paths[2].hops == ("10.1.0.1", "10.2.0.9")


def test_a_full_path_table_and_a_changed_round_keeps_paths_alive():
    """The bug found in the long sweep: every index used, a round with new
    hops must reuse dead indexes, not leave every path dead."""
    world = World(end_to_end=True)
    full = [e2e("eth1", [49152 + i], "10.1.0.1", f"10.2.0.{i}") for i in range(MAX_PATHS)]
    world.paths(*full, cause="start", fdb=FDB)
    # The round traced path 0's port onto new hops: path 0 is gone.
    changed = full[1:] + [e2e("eth1", [49152], "10.1.0.1", "10.2.1.99")]
    world.paths(*changed, cause="probe")
    paths = world.core.vteps[KEY].paths
    assert len(paths) == MAX_PATHS
    assert sum(p.alive for p in paths.values()) == MAX_PATHS
    assert paths[0].hops == ("10.1.0.1", "10.2.1.99")


def test_a_round_where_a_path_stayed_silent_keeps_it_its_index_and_its_ports():
    """Routers that skip a TTL leave ports and whole paths out of a round:
    that is no news about them, so nothing is written and no QP moves."""
    world = World(end_to_end=True)
    both = [e2e("eth1", [49152, 49153], "10.1.0.1", "10.2.0.1"),
            e2e("eth2", [49160, 49161], "10.1.0.3", "10.2.0.3")]
    world.paths(*both, cause="start", fdb=FDB)
    world.qp("q0", 0, 49152)
    world.qp("q1", 1, 49161, slot=1)
    assert world.paths(both[0], cause="probe") == []                        # eth2's silent
    # A new port for eth2's path joins after the ones its QPs hold.
    out = world.paths(e2e("eth1", [49153], "10.1.0.1", "10.2.0.1"),
                      e2e("eth2", [49161, 49162], "10.1.0.3", "10.2.0.3"), cause="probe")
    assert out == [write(0, both[0], qps=1),
                   write(1, e2e("eth2", [49160, 49161, 49162], "10.1.0.3", "10.2.0.3"), qps=1)]
    assert world.placement() == {"q0": 0, "q1": 1}


def test_carry_over_keeps_a_silent_path_but_not_one_a_port_of_which_went_elsewhere():
    a = e2e("eth1", [1, 2, 3], "10.1.0.1", "10.2.0.1")
    b = e2e("eth2", [4, 5], "10.1.0.3", "10.2.0.3")
    assert carry_over([a, b], [b]) == [b, a]                     # a's ports all silent: kept
    # Port 3 of a now crosses b's hops: routing moved under a, and where its
    # other ports go is unknown, so a is not kept on their word.
    moved = e2e("eth2", [3, 6], "10.1.0.3", "10.2.0.3")
    assert carry_over([a, b], [moved]) == [e2e("eth2", [4, 5, 3, 6], "10.1.0.3", "10.2.0.3")]
    gone = e2e("eth2", [1, 2, 3], "10.1.0.3", "10.2.0.9")
    assert carry_over([a], [gone]) == [gone]                     # every port elsewhere: a is gone
    assert carry_over([first_hop("eth1", [1])], [a]) == [a]   # no hops yet: not carried


def test_more_paths_than_the_table_holds_is_a_warning_not_a_crash():
    world = World(end_to_end=True)
    many = [e2e("eth1", [49152 + i], "10.1.0.1", f"10.2.0.{i}") for i in range(MAX_PATHS + 1)]
    out = world.paths(*many, cause="start", fdb=FDB)
    assert Warn(f"VTEP {REMOTE}: more than {MAX_PATHS} paths") in out
    assert len(world.core.vteps[KEY].paths) == MAX_PATHS


def two_paths_per_wan_link() -> tuple[World, list[Found]]:
    """Two uplinks x two spines each, every spine to two of four WAN links
    (a WAN link: the hop pair border 10.8.0.w -> remote 10.9.0.1): 8 paths,
    each WAN link on 2 of them, WAN link w on paths w-1 and w+3."""
    world = World(end_to_end=True)
    layout = [("eth1", 1, 1), ("eth1", 1, 2), ("eth1", 2, 3), ("eth1", 2, 4),
              ("eth2", 3, 1), ("eth2", 3, 2), ("eth2", 4, 3), ("eth2", 4, 4)]
    paths = [e2e(up, [49152 + 8 * i], f"10.1.0.{spine}", f"10.8.0.{w}", "10.9.0.1")
             for i, (up, spine, w) in enumerate(layout)]
    world.paths(*paths, cause="start", fdb=FDB)
    return world, paths


def test_a_wan_link_that_dies_and_heals_carries_its_share_again():
    """The fault the sweep found: after a silent WAN cut and its restore,
    QPs sat on distinct paths that shared WAN links and never moved back.
    4 QPs on 8 paths, 2 per WAN link."""
    world, paths = two_paths_per_wan_link()
    for i, path in enumerate([0, 2, 5, 7]):       # WAN links 1, 3, 2, 4
        world.qp(f"q{i}", path, 49152 + 8 * path)

    def per_wan_link():
        return sorted(paths[p].hops[1][-1] for p in world.placement().values())
    assert per_wan_link() == ["1", "2", "3", "4"]
    for path in (0, 4):                           # WAN link 1 goes silent
        health(world, path, True)
        health(world, path, False)
    world.tick()
    assert "1" not in per_wan_link() and max(map(per_wan_link().count, "234")) == 2
    for _ in range(2):                            # it answers again, past its hold-down
        for path in (0, 4):
            health(world, path, True)
        world.tick()
    # and a TTL round begun since traces it over its own hops again
    world.paths(*paths, cause="probe", started=world.now)
    world.tick()
    assert per_wan_link() == ["1", "2", "3", "4"]


def test_a_dead_path_answering_across_another_wan_link_is_not_taken_back():
    """Seen in the lab: once BGP routed around a cut WAN link, the dead
    paths answered again through the surviving link of their border, and
    came back under their old hops: the agent balanced onto a WAN link that
    was gone, and the surviving one carried 4 QPs of 8. A path answering
    again is back only when a TTL round begun after its death traces it
    over its own hops; one traced onto other hops is gone. 8 paths, 2 per
    WAN link, one QP each."""
    world, paths = two_paths_per_wan_link()
    for path in range(8):
        world.qp(f"q{path}", path, 49152 + 8 * path)
        health(world, path, True)
    vtep = world.core.vteps[KEY]

    def per_wan_link():
        wan = [vtep.paths[p].hops[1] for p in world.placement().values()]
        return {w: wan.count(w) for w in sorted(set(wan))}
    died = world.now
    for path in (0, 4):                           # WAN link 1 is cut
        health(world, path, False)
    world.tick()
    assert max(per_wan_link().values()) == 3 and "10.8.0.1" not in per_wan_link()
    world.now += 1.5
    for path in (0, 4):                           # both answer again, across WAN link 2
        out = health(world, path, True)
        assert [a for a in out if isinstance(a, MoveQp)] == []
        assert any("once a TTL round traces it over its own hops" in a.detail
                   for a in out if isinstance(a, Note))
    world.tick()
    assert not vtep.paths[0].alive and not vtep.paths[4].alive
    # A round begun before the deaths says nothing new about them.
    world.paths(*paths, cause="probe", started=died - 0.1)
    assert not vtep.paths[0].alive and not vtep.paths[4].alive
    # The round begun since traces their ports over WAN link 2: they are
    # gone, and their ports serve the paths that cross WAN link 2.
    now_on = [e2e("eth1", [49160, 49152], "10.1.0.1", "10.8.0.2", "10.9.0.1"),
              e2e("eth2", [49192, 49184], "10.1.0.3", "10.8.0.2", "10.9.0.1")]
    world.paths(now_on[0], *paths[2:4], now_on[1], *paths[6:], cause="probe", started=world.now)
    world.tick()
    assert not vtep.paths[0].alive and not vtep.paths[4].alive
    assert not world.core.path_unhealthy(KEY, 0) and not world.core.path_unhealthy(KEY, 4)
    assert vtep.paths[1].ports == [49160, 49152] and vtep.paths[5].ports == [49192, 49184]
    assert sorted(per_wan_link().values()) == [2, 3, 3]


def test_a_dead_path_traced_over_its_own_hops_again_is_back():
    world = four_paths_eight_qps_e2e()
    health(world, 2, False)
    world.now += 1.5
    health(world, 2, True)
    assert not world.core.vteps[KEY].paths[2].alive
    out = world.paths(*E2E_PATHS, cause="probe", started=world.now)
    assert world.core.vteps[KEY].paths[2].alive
    assert sorted((m.path, m.reason) for m in out if isinstance(m, MoveQp)) == \
        [(2, "path_up"), (2, "path_up")]
    assert any("answers again over its own hops: back in use" in a.detail
               for a in out if isinstance(a, Note))
    assert sorted(world.placement().values()) == [0, 0, 1, 1, 2, 2, 3, 3]


# ---------------------------------------------------------------- idle QPs

def test_idle_qps_are_forgotten_and_no_longer_count():
    world = started()
    world.qp("busy", 0, 49152, last_ns=NOW_NS)
    world.qp("idle", 1, 49160, last_ns=NOW_NS - 11 * 10**9)
    out = world.tick()
    assert out[:2] == [ForgetQp(b"idle"), Note("expire", "1 QPs idle for 10 s forgotten")]
    assert out[-1] == SetPathCounts(0, ((0, 1),))
    assert "idle" not in world.placement()


def test_qps_of_a_job_that_ended_do_not_weigh_in_the_next_ones_balance():
    """A finished job's QPs stay in the table until forgotten, but silent
    they must not hold the even slots: the new job's QPs, both on path 0
    beside two silent ones on path 1, are spread themselves."""
    world = started()
    for name in ("old0", "old1"):
        world.qp(name, 1, 49160, last_ns=NOW_NS - 3 * 10**9)
    world.qp("new0", 0, 49152)
    world.qp("new1", 0, 49153, slot=1)
    out = world.tick()
    placed = world.placement()
    assert sorted([placed["new0"], placed["new1"]]) == [0, 1]
    assert (placed["old0"], placed["old1"]) == (1, 1)                # silent: not moved
    assert out[-1] == SetPathCounts(0, ((0, 1), (1, 1)))     # the data plane's load: new QPs only


def test_traffic_is_attributed_to_paths_by_deltas():
    world = started()
    world.qp("a1", 0, 49152, nbytes=1000)
    world.tick()
    world.qp("a1", 0, 49152, nbytes=1500)
    world.tick()
    assert world.core.vteps[KEY].paths[0].bytes == 1500


# ---------------------------------------------------------------- restart

def test_restore_then_start_discovery_moves_no_qp():
    world = started()
    world.qp("a1", 0, 49153, 1)
    world.qp("b1", 1, 49160, 0)
    saved = world.core.export_state()
    pinned = {(0, 0): (PATH_A.ifindex, True, PATH_A.ports), (0, 1): (PATH_B.ifindex, True, PATH_B.ports)}

    again = World()
    again.qps = dict(world.qps)
    assert again.core.restore_state(saved, pinned) == [
        Note("restore", "1 remote VTEPs and 2 paths taken over from the pinned data plane")]
    out = again.paths(PATH_B, PATH_A, cause="start", fdb=FDB)   # discovery order differs
    assert [a for a in out if isinstance(a, MoveQp)] == []
    assert again.placement() == {"a1": 0, "b1": 1}


@pytest.mark.parametrize("pinned", [
    {},
    {(0, 0): (PATH_A.ifindex, True, PATH_A.ports)},
    {(0, 0): (PATH_A.ifindex, True, PATH_A.ports), (0, 1): (99, True, PATH_B.ports)},
])
def test_restore_refuses_state_that_the_pinned_maps_do_not_hold(pinned):
    saved = started().core.export_state()
    core = Core()
    out = core.restore_state(saved, pinned)
    assert out == [Warn("saved state does not match the pinned path table: "
                        "placements start afresh")]
    assert core.vteps == {}


def test_restore_refuses_malformed_state():
    out = Core().restore_state({"vteps": [{"index": "x"}]}, {})
    assert len(out) == 1 and isinstance(out[0], Warn) and "start afresh" in out[0].text


# ---------------------------------------------------------------- liveness

from qpagent.core.actions import WriteDeadline  # noqa: E402
from qpagent.core.inputs import PathHealthChanged, PathRttSeen  # noqa: E402
from qpagent.core.decisions import failover_spares, shared_links  # noqa: E402
from qpagent.core.model import PathState  # noqa: E402
from qpagent.core.pathtable import carry_over  # noqa: E402
from qpagent.core.liveness import deadline_ns  # noqa: E402

PATH_C = first_hop("eth3", [49170, 49171, 49172])
PATH_D = first_hop("eth4", [49180, 49181, 49182])
DEADLINE = deadline_ns(4, 10, 1000, 3)      # 4 paths, 10 ms x 3 within 1000 probes/s
MS = 1_000_000


def health(world: World, path: int, healthy: bool) -> list:
    event = PathHealthChanged(KEY, path, healthy, 1_000_000, world.now)
    return world._play(world.core.paths_health([event], world.qps, world.now))


def four_paths_eight_qps() -> World:
    world = World()
    world.paths(PATH_A, PATH_B, PATH_C, PATH_D, cause="start", fdb=FDB)
    for i, (path, base) in enumerate([(0, 49152), (1, 49160), (2, 49170), (3, 49180)] * 2):
        world.qp(f"q{i}", path, base + i // 4, i // 4)
    return world


E2E_PATHS = [e2e(f"eth{1 + i % 2}", [49152 + 8 * i, 49153 + 8 * i], f"10.1.0.{i}", "10.9.0.1")
             for i in range(4)]


def four_paths_eight_qps_e2e() -> World:
    world = World(end_to_end=True)
    world.paths(*E2E_PATHS, cause="start", fdb=FDB)
    for i in range(8):
        world.qp(f"q{i}", i % 4, 49152 + 8 * (i % 4) + i // 4, i // 4)
    for path in range(4):
        health(world, path, True)
    return world


def test_first_reply_of_a_path_arms_it_and_moves_nothing():
    world = four_paths_eight_qps()
    assert health(world, 2, True) == [WriteDeadline(0, 2, DEADLINE)]
    assert health(world, 2, True) == []      # armed once


def test_unhealthy_path_is_dead_and_its_orphans_move_with_reason_liveness():
    world = four_paths_eight_qps()
    for path in range(4):
        health(world, path, True)
    out = health(world, 2, False)
    moves = [a for a in out if isinstance(a, MoveQp)]
    assert write(2, PATH_C, alive=False, qps=2) in out     # dead, then its QPs move
    assert sorted((m.qp, m.reason) for m in moves) == [(b"q2", "liveness"), (b"q6", "liveness")]
    assert sorted(world.placement().values()) == [0, 0, 0, 1, 1, 1, 3, 3]
    assert world.core.replacements["liveness"] == 2
    assert world.core.repairs["liveness"] == 2
    # Still dead after discovery says the path is there (routing sees nothing wrong).
    assert [m for m in world.paths(PATH_A, PATH_B, PATH_C, PATH_D, cause="periodic")
            if isinstance(m, MoveQp)] == []
    assert not world.core.vteps[KEY].paths[2].alive


def test_paths_that_die_in_one_look_move_each_of_their_qps_once_onto_a_live_path():
    """One look at a cut finds two paths dead: decided one at a time, the
    first death's QPs could be moved onto the second dead path and moved
    again; decided together each moves once, and only onto paths that live."""
    world = four_paths_eight_qps()
    for path in range(4):
        health(world, path, True)
    dead = [PathHealthChanged(KEY, p, False, 1_000_000, world.now, 40 * MS, 30 * MS)
            for p in (1, 2)]
    out = world._play(world.core.paths_health(dead, world.qps, world.now))
    moves = [a for a in out if isinstance(a, MoveQp)]
    assert sorted(m.qp for m in moves) == [b"q1", b"q2", b"q5", b"q6"]
    assert all(m.reason == "liveness" for m in moves)
    assert sorted(world.placement().values()) == [0, 0, 0, 0, 3, 3, 3, 3]
    notes = [a.detail for a in out if isinstance(a, Note)]
    assert [n for n in notes if "stopped answering probes for 40 ms (deadline 30 ms)" in n] == \
        [f"VTEP {world.core.vteps[KEY].address} path {p} "
         f"({world.core.vteps[KEY].paths[p].uplink}) stopped answering probes for 40 ms "
         "(deadline 30 ms): dead" for p in (1, 2)]


def test_qps_the_data_plane_already_moved_cost_no_further_move():
    world = four_paths_eight_qps()
    # The data plane moved q2 and q6 on their next packet, before the agent heard.
    world.qps[b"q2"] = world.qps[b"q2"]._replace(path=0, port=49154, slot=2)
    world.qps[b"q6"] = world.qps[b"q6"]._replace(path=1, port=49162, slot=2)
    out = health(world, 2, False)
    assert [a for a in out if isinstance(a, MoveQp)] == []
    assert write(2, PATH_C, alive=False, qps=0) in out


def test_healthy_again_brings_the_path_back_with_the_fewest_moves():
    world = four_paths_eight_qps()
    health(world, 2, False)
    world.now += 2
    out = health(world, 2, True)
    moves = [a for a in out if isinstance(a, MoveQp)]
    assert [(m.path, m.reason) for m in moves] == [(2, "path_up"), (2, "path_up")]
    assert write(2, PATH_C, alive=True, qps=2) in out
    assert sorted(world.placement().values()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_liveness_targets_are_the_paths_in_use_then_the_ones_dead_for_want_of_replies():
    world = four_paths_eight_qps()
    world.paths(PATH_A, PATH_B, PATH_C, cause="route_del")     # D: no route
    health(world, 1, False)                                   # B: no replies
    (target,) = world.core.liveness_targets()
    # A and C carry every QP and are each other's spare; B is probed to see it back.
    assert (target.vtep, target.local, target.address, target.paths) == (
        0, "10.255.0.3", REMOTE, ((0, 49152), (2, 49170), (1, 49160)))


def test_only_paths_in_use_and_the_spare_their_qps_would_fail_over_to_are_probed():
    world = World()
    world.paths(PATH_A, PATH_B, PATH_C, PATH_D, cause="start", fdb=FDB)
    assert world.core.liveness_targets() == []       # no QP: nothing to probe
    world.qp("q0", 2, 49170)
    world.tick()
    (target,) = world.core.liveness_targets()
    # q0 on C would flee to A: it shares no hop with C, has no QP, lowest index.
    assert target.paths == ((2, 49170), (0, 49152))
    world.qp("q1", 0, 49152)
    world.tick()
    (target,) = world.core.liveness_targets()
    assert target.paths == ((0, 49152), (2, 49170), (1, 49160))


def test_spares_fit_the_budget_beside_the_paths_in_use_and_there_is_always_one():
    world = World(probe_budget_pps=300)            # 3 probes per 10 ms round
    world.paths(PATH_A, PATH_B, PATH_C, PATH_D, cause="start", fdb=FDB)
    world.qp("q0", 0, 49152)
    world.tick()
    assert len(world.core.liveness_targets()[0].paths) == 2       # room for more, one needed
    world.qp("q1", 1, 49160)
    world.qp("q2", 2, 49170)
    world.tick()
    (target,) = world.core.liveness_targets()
    assert [i for i, _ in target.paths] == [0, 1, 2, 3]             # 3 in use + 1 spare


def test_failover_spares_are_least_loaded_and_share_the_least_with_the_path():
    assert failover_spares([0, 1, 2, 3], {0: 2, 1: 2}) == [2, 3]
    assert failover_spares([0, 1], {0: 1, 1: 1}) == [1, 0]
    assert failover_spares([0], {0: 3}) == []
    assert failover_spares([0, 1, 2], {}) == []
    # Paths cross spine s1 or s2 and WAN link w1 or w2: path 0's QP would
    # flee to 3, which crosses neither of its own, not to the emptier-indexed 1 or 2.
    crossing = {0: {"s1", "w1"}, 1: {"s2", "w1"}, 2: {"s1", "w2"}, 3: {"s2", "w2"}}
    assert failover_spares([0, 1, 2, 3], {0: 1}, crossing) == [3]
    assert failover_spares([0, 1, 2, 3], {0: 1, 2: 1}, crossing) == [3, 1]


def test_a_path_left_idle_is_disarmed_and_armed_again_once_in_use():
    world = World()
    world.paths(PATH_A, PATH_B, PATH_C, cause="start", fdb=FDB)
    world.qp("q0", 0, 49152)
    world.tick()
    assert health(world, 0, True) == [WriteDeadline(0, 0, DEADLINE)]
    assert health(world, 1, True) == [WriteDeadline(0, 1, DEADLINE)]   # q0's spare
    world.qps[b"q0"] = world.qps[b"q0"]._replace(path=2, port=49170)
    out = world.tick()
    # C is in use now and A its spare: B is probed no more, so no deadline.
    assert WriteDeadline(0, 1, 0) in out
    assert [a for a in out if isinstance(a, WriteDeadline) and a.path == 0] == []
    assert health(world, 2, True) == [WriteDeadline(0, 2, DEADLINE)]


def test_the_deadline_follows_the_smoothed_rtt_and_ignores_small_changes():
    world = four_paths_eight_qps()
    health(world, 0, True)
    # 100 ms RTT, 12 ms of jitter margin: a probe unanswered for 112 ms is lost.
    out = world.core.path_rtt(PathRttSeen(KEY, 0, 100 * MS, 12 * MS), world.qps, world.now)
    assert out == [WriteDeadline(0, 0, 112 * MS)]
    assert world.core.health_deadlines()[(KEY, 0)] == 112 * MS
    assert world.core.path_rtt(PathRttSeen(KEY, 0, 104 * MS, 12 * MS), world.qps,
                               world.now) == []
    # A short path: its RTT and the margin, which never goes below the
    # setting's (10 ms), nor the deadline below one probe period.
    assert world.core.path_rtt(PathRttSeen(KEY, 0, 2 * MS, 0), world.qps,
                               world.now) == [WriteDeadline(0, 0, 12 * MS)]
    world.core.path_rtt(PathRttSeen(KEY, 0, 25 * MS, 0), world.qps, world.now)
    assert world.core.health_deadlines()[(KEY, 0)] == 35 * MS


def test_a_vtep_never_heard_from_is_never_armed_and_its_paths_never_die():
    world = four_paths_eight_qps()
    out = world.paths(PATH_A, PATH_B, PATH_C, PATH_D, cause="periodic", fdb=FDB)
    assert not [a for a in out if isinstance(a, WriteDeadline)]
    assert world.core.startup()[0].__class__.__name__ == "DisarmAll"
    assert all(p.alive for p in world.core.vteps[KEY].paths.values())


def test_a_path_count_change_rewrites_the_deadline_of_armed_paths():
    world = World(probe_budget_pps=200)       # 2 probes per 10 ms round
    world.paths(PATH_A, PATH_B, cause="start", fdb=FDB)
    world.qp("q0", 0, 49152)
    world.qp("q1", 1, 49160)
    assert health(world, 0, True) == [WriteDeadline(0, 0, 30_000_000)]
    out = world.paths(PATH_A, PATH_B, PATH_C, cause="route_add")
    # C is the spare of both: three paths take turns two at a time, each every 20 ms.
    assert WriteDeadline(0, 0, 60_000_000) in out


def test_a_path_without_an_rtt_of_its_own_gets_its_vteps_longest():
    """A path that joins the probed set late must not be armed with a
    few intervals when its siblings' replies take a WAN round trip: its
    first silence of one RTT would kill it."""
    world = four_paths_eight_qps()
    health(world, 0, True)
    world.core.path_rtt(PathRttSeen(KEY, 0, 40 * MS, 12 * MS), world.qps, world.now)
    assert health(world, 1, True) == [WriteDeadline(0, 1, 52 * MS)]
    # Its own sample, once it has one, rules.
    assert world.core.path_rtt(PathRttSeen(KEY, 1, 80 * MS, 12 * MS), world.qps,
                               world.now) == [WriteDeadline(0, 1, 92 * MS)]


def test_each_path_names_the_paths_that_cross_one_of_its_links():
    """End to end, 2 uplinks x 2 WAN links: a path shares its uplink with
    one path and its WAN link with another, and nothing with the fourth,
    where a QP fleeing it on its own evidence should go (path_entry.shares)."""
    paths = {i: PathState(i, 11 + up, f"eth{up + 1}", f"10.0.{up}.1", [49152 + i],
                          (f"10.1.{up}.2", f"10.9.{wan}.2"))
             for i, (up, wan) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])}
    assert shared_links(paths) == {0: 0b0110, 1: 0b1001, 2: 0b1001, 3: 0b0110}
    # Known by their first hop only, paths are their uplinks: nothing shared.
    assert shared_links({i: PathState(i, 11, f"eth{i}", None, [1]) for i in range(3)}) == {}


def test_the_data_plane_is_told_which_paths_share_a_link():
    world = World(end_to_end=True)
    a = first_hop("eth1", [49152], hops=("10.1.0.2", "10.9.0.2"))
    b = first_hop("eth1", [49153], hops=("10.1.0.2", "10.9.1.2"))
    c = first_hop("eth2", [49160], hops=("10.1.1.2", "10.9.2.2"))
    out = world.paths(a, b, c, cause="start", fdb=FDB)
    index = {w.ports[0]: w.path for w in out if isinstance(w, WritePath)}
    shares = {w.ports[0]: w.shares for w in out if isinstance(w, WritePath)}
    # a and b leave by the same uplink: each avoids the other; c shares nothing.
    assert shares == {49152: 1 << index[49153], 49153: 1 << index[49152], 49160: 0}


def test_orphans_of_a_path_dead_by_liveness_avoid_unprobed_paths_across_its_suspect_links():
    """2 uplinks x 2 WAN links; the path over eth1 and WAN 0 stops answering.
    The path over eth1 and WAN 1 answers its probes, which clears eth1: the
    suspect is WAN 0. The path over eth2 and WAN 0 is probed by nobody and
    looks alive, but crosses the suspect link: its QPs would be lost again
    (an idle QP such as a receiver's ACK stream moves only this way)."""
    world = World(end_to_end=True)
    a = e2e("eth1", [49152], "10.1.0.2", "10.9.0.2")
    b = e2e("eth1", [49153], "10.1.0.2", "10.9.1.2")
    c = e2e("eth2", [49160], "10.1.1.2", "10.9.0.2")
    d = e2e("eth2", [49161], "10.1.1.2", "10.9.1.2")
    world.paths(a, b, c, d, cause="start", fdb=FDB)
    index = {p.ports[0]: i for i, p in world.core.vteps[KEY].paths.items()}
    ia, ib, ic, id_ = (index[f.ports[0]] for f in (a, b, c, d))
    world.qp("q0", ia, 49152)
    world.qp("q1", ib, 49153)
    world.qp("q2", ia, 49152, slot=0)
    world.tick()
    health(world, ia, True)
    health(world, ib, True)
    out = health(world, ia, False)
    moved = {m.qp: m.path for m in out if isinstance(m, MoveQp)}
    assert set(moved) == {b"q0", b"q2"}
    assert ic not in moved.values(), moved
    assert sorted(moved.values()) == sorted([ib, id_])


def test_with_only_suspect_paths_left_orphans_still_move():
    world = World(end_to_end=True)
    a = e2e("eth1", [49152], "10.1.0.2", "10.9.0.2")
    c = e2e("eth2", [49160], "10.1.1.2", "10.9.0.2")
    world.paths(a, c, cause="start", fdb=FDB)
    index = {p.ports[0]: i for i, p in world.core.vteps[KEY].paths.items()}
    world.qp("q0", index[49152], 49152)
    world.tick()
    health(world, index[49152], True)
    out = health(world, index[49152], False)
    assert [(m.qp, m.path) for m in out if isinstance(m, MoveQp)] == [(b"q0", index[49160])]


# ---------------------------------------------------------------- go-back NAKs
from qpagent.core.actions import GoBack  # noqa: E402
from qpagent.core.decisions import GO_BACK_TRIES  # noqa: E402

MARGIN_MS = 10                              # Settings.probe_rtt_margin_ms


def in_flight(world: World, name: str, waited_ms: float, acked: int = 10, sent: int = 20,
              **fields) -> None:
    """The QP has sent up to PSN sent - 1, ACKs came up to acked - 1, and
    the oldest unacknowledged has waited waited_ms."""
    key = name.encode()
    world.qps[key] = world.qps[key]._replace(
        next_psn=sent, acked_psn=acked, ack_wait_ns=int((world.now - waited_ms / 1e3) * 1e9),
        **fields)


def silent(world: World, path: int, silent_ms: int = 50) -> list:
    event = PathHealthChanged(KEY, path, False, 0, world.now, silent_ms * MS, 40 * MS)
    return world._play(world.core.paths_health([event], world.qps, world.now))


def recheck(world: World, after_ms: float = 0) -> list:
    """What the agent's loop hands out right after the event (or later)."""
    return world.core.recheck_go_backs(world.qps, world.now + after_ms / 1e3)


def q2_cut_off_and_sent_back(world: World) -> None:
    """q2 had data unacknowledged for 60 ms when path 2 died: one NAK at once."""
    in_flight(world, "q2", waited_ms=60)
    silent(world, 2)
    assert recheck(world) == [GoBack(b"q2", 10)]


def test_a_qp_cut_off_with_its_path_is_sent_back_right_after_its_move():
    world = four_paths_eight_qps()
    in_flight(world, "q2", waited_ms=60)
    in_flight(world, "q6", waited_ms=60, acked=20)    # everything acknowledged
    in_flight(world, "q1", waited_ms=60)              # on a path that lives
    out = silent(world, 2)
    assert not any(isinstance(a, GoBack) for a in out)
    assert recheck(world) == [GoBack(b"q2", 10)]       # by then on a live path
    assert world.qps[b"q2"].path != 2


def test_a_qp_that_got_acks_within_the_deadline_waits_for_the_rest_of_it():
    # Its ACKs came after the path went silent (the path may have died of
    # its probe replies' way back): only no progress for a deadline counts.
    world = four_paths_eight_qps()
    assert DEADLINE == 30 * MS
    in_flight(world, "q2", waited_ms=5)
    silent(world, 2)
    assert recheck(world) == []
    assert recheck(world, after_ms=30 - MARGIN_MS - 5 + 1) == [GoBack(b"q2", 10)]


def test_acks_for_what_crossed_before_the_cut_are_progress_but_not_recovery():
    world = four_paths_eight_qps()
    q2_cut_off_and_sent_back(world)
    in_flight(world, "q2", waited_ms=0, acked=15)      # still short of the 20 sent
    assert recheck(world, after_ms=29) == []
    assert recheck(world, after_ms=31) == [GoBack(b"q2", 15)]


def test_a_qp_whose_acks_cover_all_it_had_sent_is_let_be():
    world = four_paths_eight_qps()
    in_flight(world, "q2", waited_ms=5)
    silent(world, 2)
    in_flight(world, "q2", waited_ms=0, acked=20, sent=24)   # all 19 acknowledged, 4 new
    assert recheck(world, after_ms=100) == []
    assert world.core.go_back_watched() == []


def repaired_just_now(world: World, name: str, acked_since: bool = False) -> None:
    """The data plane moved the QP off path 2 on its next packet, a moment
    ago, with data outstanding: the repair restarted its wait."""
    in_flight(world, name, waited_ms=-1 if acked_since else 0, path=0, port=49154, slot=2,
              repaired_ns=int(world.now * 1e9))


def test_a_qp_the_data_plane_moved_off_the_silent_path_is_sent_back_if_no_ack_follows():
    world = four_paths_eight_qps()
    repaired_just_now(world, "q2")
    in_flight(world, "q5", waited_ms=60, repaired_ns=int(world.now * 1e9) - 5_000 * MS)
    silent(world, 2)
    assert world.core.go_back_watched() == [b"q2"]          # q5's repair was long before
    assert recheck(world, after_ms=30 - MARGIN_MS - 1) == []
    assert recheck(world, after_ms=30 - MARGIN_MS + 1) == [GoBack(b"q2", 10)]


def test_a_repaired_qp_already_acknowledged_since_is_not_watched():
    world = four_paths_eight_qps()
    repaired_just_now(world, "q2", acked_since=True)
    silent(world, 2)
    assert world.core.go_back_watched() == []


def test_a_resend_not_acknowledged_a_deadline_later_is_sent_back_again_up_to_three_times():
    world = four_paths_eight_qps()
    q2_cut_off_and_sent_back(world)
    assert recheck(world, after_ms=15) == []
    tries = [recheck(world, after_ms=30 * n + 1) for n in (1, 2, 3, 4)]
    assert GO_BACK_TRIES == 3
    assert tries == [[GoBack(b"q2", 10)], [GoBack(b"q2", 10)], [], []]
    assert world.core.go_back_watched() == []               # its own timer is all that is left


def test_a_qp_already_watched_keeps_its_count_when_its_new_path_dies_too():
    world = four_paths_eight_qps()
    q2_cut_off_and_sent_back(world)
    silent(world, world.qps[b"q2"].path)           # the resend's path dies as well
    assert recheck(world) == []
    assert recheck(world, after_ms=31) == [GoBack(b"q2", 10)]


def test_with_go_back_off_nothing_is_watched():
    world = World(go_back=False)
    world.paths(PATH_A, PATH_B, PATH_C, PATH_D, cause="start", fdb=FDB)
    world.qp("q0", 2, 49170)
    world.qp("q1", 0, 49152)
    in_flight(world, "q0", waited_ms=60)
    in_flight(world, "q1", waited_ms=0, repaired_ns=int(world.now * 1e9))
    silent(world, 2)
    assert world.core.go_back_watched() == []


def test_a_qp_whose_acks_moved_on_since_its_last_nak_is_watched_afresh():
    # A wait that used all its NAKs, then ACK progress (a later job on the
    # same QP, or the resend got through in part), then another death.
    world = four_paths_eight_qps()
    q2_cut_off_and_sent_back(world)
    for n in (1, 2):
        recheck(world, after_ms=31 * n)
    world.now += 1
    in_flight(world, "q2", waited_ms=60, acked=15, sent=30)
    silent(world, world.qps[b"q2"].path)
    assert recheck(world) == [GoBack(b"q2", 15)]


def test_a_watched_qp_that_sends_nothing_for_a_second_is_let_go():
    world = four_paths_eight_qps()
    in_flight(world, "q2", waited_ms=5, last_ns=int(world.now * 1e9))
    silent(world, 2)
    assert recheck(world, after_ms=1001) == []
    assert world.core.go_back_watched() == []
