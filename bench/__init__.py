"""``make bench``: romeways against hand-written raw loops, run as ``python -m bench``.

Each scenario module exposes ``scenarios(params)``, a list of ``Scenario``; the harness runs
every variant of a scenario several times, interleaving ours with the raw baseline, and prints
medians and ratios (ours / raw) with the machine they were measured on.
"""
