"""pycontainer's benchmarks: ``python -m bench [--quick]`` (see bench/harness.py)."""
