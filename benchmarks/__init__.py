"""Benchmarks of dacapo-store against the serialization baselines (``python -m benchmarks``)."""
