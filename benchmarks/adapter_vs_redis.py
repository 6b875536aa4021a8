"""Broadcast fan-out, the siomesh adapter against python-socketio's AsyncRedisManager on a real
redis-server: moved into the bench as ``siomesh bench --scenario latency`` (method and columns:
docs/benchmark.md; code: siomesh/benchkit/broadcasts.py). This script runs that scenario.

Usage: .venv/bin/python benchmarks/adapter_vs_redis.py [--quick] [--clients N] [--broadcasts N]
"""

from __future__ import annotations

import sys

from siomesh.bench import run

if __name__ == "__main__":
    sys.exit(run(["--scenario", "latency", "--out", "bench-results", *sys.argv[1:]]))
