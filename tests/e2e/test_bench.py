"""``siomesh bench --quick`` end to end: real nodes, real balancers, table + JSON + PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_binary


def test_bench_quick_writes_table_json_png(tmp_path: Path) -> None:
    require_binary("nginx")
    require_binary("haproxy")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "siomesh.cli",
            "bench",
            "--quick",
            "--out",
            str(out),
            "--only",
            "plain-nginx-rr,mesh-nginx-rr",
            "--clients",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sticky-haproxy-cookie" in proc.stdout and "mesh-nginx-rr" in proc.stdout
    report = json.loads((out / "bench.json").read_text())
    cells = {(c["scenario"], c["workload"]): c for c in report["cells"]}
    assert cells[("sticky-haproxy-cookie", "polling")]["failed_sessions"] == 0
    mesh = cells[("mesh-nginx-rr", "polling")]
    assert mesh["failed_sessions"] == 0 and mesh["round_trips"] == 8 * 3
    assert mesh["ratios"]["rps"] > 0
    # the control proves the load is meaningful: plain nodes behind round-robin fail
    assert cells[("plain-nginx-rr", "polling")]["failed_sessions"] > 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "x = ratio to" in (out / "bench.txt").read_text()


def test_bench_rejects_unknown_scenario(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "siomesh.cli", "bench", "--only", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr
