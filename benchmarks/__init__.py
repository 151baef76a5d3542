"""Performance benchmarks, run on demand: ``python -m benchmarks.<name>``."""
