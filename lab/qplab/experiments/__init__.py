"""Experiments: above the lab, on top of the traffic engine.

They drive a lab through its public API (`qplab.api.Lab`) and the traffic
engine (`qplab.workloads`) through its hosts; neither of those knows about
experiments. `scenarios` says what to run, `runner` runs it, `observe`
watches the network from outside the engine, `analysis` turns a run into
figures, `report` writes them up, `run` is one collective (`qplab run`).
"""
