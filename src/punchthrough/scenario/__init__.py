"""Whole-system runs in the simulator: the real netcheck, relay and endpoints on a virtual internet.

These sit above :mod:`punchthrough.endpoint` (they drive it), so they live outside
:mod:`punchthrough.sim`, whose core depends only on :mod:`punchthrough.netio` and wire formats.

- :mod:`punchthrough.scenario.call`: two peers behind NATs, netcheck, relay, an echoed call, as a
  timeline (``punchthrough demo``, the simulator backend of the pair matrix).
- :mod:`punchthrough.scenario.netcheck`: netcheck behind one simulated NAT on the kernel lab's
  topology (``punchthrough sim netcheck``, the lab/sim agreement test).

Import the submodule you need; this package re-exports nothing, so loading one does not load both.
"""
