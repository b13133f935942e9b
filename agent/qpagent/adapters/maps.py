"""Apply the core's actions to the BPF maps, in the order given (a GoBack
after the MoveQp that put its QP on a live path)."""

from __future__ import annotations

from qpagent.core.actions import (DisarmAll, ForgetQp, GoBack, MoveQp, Note, SetMacVteps,
                                  SetPathCounts, SetRepairConfig, Warn, WriteDeadline,
                                  WritePath)


class MapWriter:
    def __init__(self, tables, go_back=None):
        self.tables = tables
        self.go_back = go_back      # adapters.goback_sender.GoBackSender, or None

    def apply(self, actions) -> tuple[list[Note], list[str]]:
        """Write every map action; hand back the notes and warnings for the log."""
        notes, warnings = [], []
        for action in actions:
            if isinstance(action, WritePath):
                self.tables.write_path(action.vtep, action.path, action.ifindex, action.alive,
                                       list(action.ports), list(action.hashes), action.qps,
                                       action.shares)
            elif isinstance(action, MoveQp):
                self.tables.move_qp(action.qp, action.vtep, action.path, action.slot,
                                    action.port, action.hash)
            elif isinstance(action, ForgetQp):
                self.tables.forget_qp(action.qp)
            elif isinstance(action, SetMacVteps):
                self.tables.set_mac_vteps(dict(action.macs))
            elif isinstance(action, SetPathCounts):
                self.tables.set_path_counts(action.vtep, dict(action.counts))
            elif isinstance(action, WriteDeadline):
                self.tables.write_deadline(action.vtep, action.path, action.deadline_ns)
            elif isinstance(action, DisarmAll):
                self.tables.disarm_all()
            elif isinstance(action, SetRepairConfig):
                self.tables.set_repair_config(action.holddown_ns, action.retransmit,
                                              action.nak, action.stall_ns)
            elif isinstance(action, GoBack):
                if self.go_back is not None:
                    self.go_back.send(action.qp, action.psn)
            elif isinstance(action, Note):
                notes.append(action)
            elif isinstance(action, Warn):
                warnings.append(action.text)
            else:
                raise TypeError(f"no adapter for {type(action).__name__}")
        return notes, warnings
