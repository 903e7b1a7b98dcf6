"""On-demand measurements of sevflow; never part of the test suite (see approval_latency.py)."""
