"""The evidence scripts: each writes its part of docs/BENCHMARKS.md or docs/RESULTS.md.

Run one from the repository root as a module, e.g. ``python -m benchmarks.run_all --quick``
(patsparse installed, ``make install``). They share the provenance header (``_report``), time
with ``patsparse.bench.timing`` and run peer engines through ``patsparse.bench.engines``.
"""
