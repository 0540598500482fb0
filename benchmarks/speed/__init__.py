"""The speed suite: what the assignment solvers, the NAT step and the target bank cost.

Every ratio is measured side by side in one process, so the machine's speed cancels
out of it; absolute times are reported only next to the machine they ran on
(:func:`benchmarks.timing.describe`). Each module measures one thing and returns
dataclasses; :mod:`benchmarks.speed.report` renders them, :mod:`benchmarks.speed.suite`
runs them all, and ``python -m benchmarks.speed`` writes speed.md, speed.json and
speed.png.
"""
