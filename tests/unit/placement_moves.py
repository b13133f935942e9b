"""What the placement tests share: playing moves on an assignment, counting
QPs per path, and the data plane's own rule for new QPs. A plain module, not
a conftest: the lab tests import their conftest by name."""

from qpagent.core.placement import place_new


def apply(assignment, moves):
    out = dict(assignment)
    for m in moves:
        assert out[m.qp] == m.old_path, f"{m} does not start where the QP is"
        out[m.qp] = m.new_path
    return out


def counts_of(assignment, paths):
    return {p: sum(1 for v in assignment.values() if v == p) for p in paths}


def fill_by_data_plane(k, paths):
    """What qp_steer does for K new QPs: fewest QPs, lowest index."""
    assignment, counts = {}, {p: 0 for p in paths}
    for qp in range(k):
        path = place_new(counts, paths)
        assignment[qp] = path
        counts[path] += 1
    return assignment
