"""Reference workloads shipped with PyGrid for demos, tests and benchmarks (no downloads)."""
