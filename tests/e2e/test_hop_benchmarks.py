"""``benchmarks/hop_cpu.py``, ``hop_floor.py`` and ``mesh_overhead.py`` in a quick mode: they
run real uvicorn processes, every polling round trip is checked (the ack of each echo comes
back, through the forwarder or from the node), and each prints the figure docs/benchmark.md
quotes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURE = re.compile(
    r"extra CPU per forwarded request \(both processes\): median (-?[\d.]+) us "
    r"\(range (-?[\d.]+)-(-?[\d.]+)\); a direct request: ([\d.]+) us"
)


def _run(script: str, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "2", "5", "2", *extra],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_hop_cpu_quick() -> None:
    out = _run("hop_cpu.py")
    assert FIGURE.search(out), out
    # 2 sessions x 5 rounds x 2 requests, in 2 forwarded phases and the warm-up
    forwarded = int(re.search(r"requests forwarded in all: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert forwarded >= 3 * 2 * 5 * 2, out
    assert out.count("(owner ") == 2 * 2 and "forwarder " in out


def test_hop_floor_quick() -> None:
    out = _run("hop_floor.py")
    assert FIGURE.search(out), out
    assert "(floor)" in out and out.count("forwarder ") == 2


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_mesh_overhead_quick(transport: str) -> None:
    out = _run("mesh_overhead.py", transport)
    unit = "request" if transport == "polling" else "round trip"
    ratio = re.search(
        rf"CPU per {unit}: plain python-socketio ([\d.]+) us, SioMesh ([\d.]+) us "
        r"\(\+?-?[\d.]+ us\); ratio median ([\d.]+|nan)",
        out,
    )
    assert ratio, out
    assert out.count("pair ") == 2 and out.startswith("pair 1:"), out
