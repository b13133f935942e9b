"""The RoCEv2 traffic engine: framing, go-back-N, transport, workers,
schedules and collectives, and the alpha-beta model of them.

It knows hosts only by name, address and namespace (`driver.Host`) and never
imports the lab; experiments (`qplab.experiments`) sit above both.
"""
