"""``siomesh bench --quick`` end to end: real nodes, real balancers, table + JSON + PNG; and the
``scale`` and ``latency`` scenarios in their quick modes."""

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


def _run_bench(
    args: list[str], timeout: float, *, cwd: Path, prelude: str = "pass"
) -> subprocess.CompletedProcess[str]:
    """``siomesh bench ARGS`` run outside the checkout (so nothing from ``tests`` is importable:
    the bench must work from the installed package alone)."""
    code = f"import sys; {prelude}; from siomesh.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def test_bench_scale_quick(tmp_path: Path) -> None:
    """60 clients (20 polling only) in one room, 5 broadcasts: mesh behind nginx round-robin
    and sticky + Redis behind HAProxy both deliver every broadcast once, in order."""
    for binary in ("nginx", "haproxy", "redis-server"):
        require_binary(binary)
    out = tmp_path / "out"
    proc = _run_bench(
        ["--scenario", "scale", "--quick", "--out", str(out)], timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "mesh/sticky" in proc.stdout and "got every broadcast once, in order" in proc.stdout
    report = json.loads((out / "scale.json").read_text())
    setups = {s["setup"]: s for s in report["setups"]}
    for name in ("mesh", "sticky"):
        setup = setups[name]
        assert setup["skipped"] is None, setup
        assert setup["connect"]["joined"] == 60, setup["connect"]
        assert setup["connect"]["upgraded"] == 40, setup["connect"]
        scale = setup["deliveries"]["scale"]
        assert scale["complete"] == 60 and scale["lost"] == 0, scale
        assert len(setup["node_rss_bytes"]) == 3 and all(setup["node_rss_bytes"])
    # the sticky nodes share nothing but Redis; the mesh nodes talk to each other
    assert setups["sticky"]["tcp_node_to_node"] == 0
    assert setups["sticky"]["tcp_node_to_redis"] > 0
    assert setups["mesh"]["tcp_node_to_node"] > 0
    assert (out / "scale.txt").read_text().startswith("scale: 60 clients")


def test_bench_latency_quick(tmp_path: Path) -> None:
    """30 WebSocket receivers over 3 nodes: the mesh adapter and AsyncRedisManager both
    deliver every paced and burst broadcast; latency and rate come out as numbers."""
    require_binary("redis-server")
    out = tmp_path / "out"
    proc = _run_bench(
        ["--scenario", "latency", "--quick", "--out", str(out)], timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "mesh/redis" in proc.stdout and "burst: deliveries/s" in proc.stdout
    report = json.loads((out / "latency.json").read_text())
    for setup in report["setups"]:
        assert setup["skipped"] is None, setup
        assert setup["connect"]["joined"] == 30, setup["connect"]
        for tag, count in (("paced", 100), ("burst", 300)):
            got = setup["deliveries"][tag]
            assert got["expected"] == count and got["lost"] == 0, (setup["setup"], got)
            assert got["complete"] == 30, (setup["setup"], got)
            assert 0 < got["p99_s"] < 5, got
        assert setup["spans_s"]["burst"] > 0


def test_bench_rolling_quick(tmp_path: Path) -> None:
    """Rolling restarts under calls, both setups (3 uvicorn nodes behind nginx round-robin,
    each SIGTERMed and started again; ``siomesh run --workers 3`` and SIGHUP): every node
    exits within its drain bound, clients reconnect, calls keep being answered."""
    require_binary("nginx")
    out = tmp_path / "out"
    proc = _run_bench(
        ["--scenario", "rolling", "--quick", "--out", str(out)], timeout=240, cwd=tmp_path
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "rolling restart: 6 clients" in proc.stdout, proc.stdout[-3000:]
    report = json.loads((out / "rolling.json").read_text())
    setups = {r["setup"]: r for r in report["reports"]}
    assert set(setups) == {"uvicorn+nginx", "siomesh run"}
    for name, r in setups.items():
        assert r["errors"] == [], (name, r)
        assert r["answered"] > 50, (name, r)
        assert r["disconnections"] >= 3, (name, r)  # every client's node went away at least once
        # python-socketio's client never resends: a call can still meet its session's drop
        # (docs/benchmark.md: 0 in most full-size runs); more than one in a quick run is a bug
        assert r["lost"] <= 1, (name, r)
    exits = setups["uvicorn+nginx"]["exit_s"]
    assert len(exits) == 3 and all(x < 10 for x in exits), exits  # drain_timeout 3 s + bound


def test_bench_connects_quick(tmp_path: Path) -> None:
    """Connect storms (python-socketio, and npm where installed) through nginx round-robin onto
    3 fresh SioMesh nodes, and polling-only connect times against sticky: every session
    connects once, nothing is relayed, and polling-only python clients are not held for the
    takeover window (a held CONNECT waits at least ``takeover.window``, 0.25 s), from the
    first connect on a fresh node."""
    require_binary("nginx")
    require_binary("haproxy")
    out = tmp_path / "out"
    proc = _run_bench(
        ["--scenario", "connects", "--quick", "--out", str(out)], timeout=180, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads((out / "connects.json").read_text())
    storms = {s["client"]: s for s in report["storms"]}
    assert "python" in storms
    for name, storm in storms.items():
        assert storm["connected"] == storm["clients"] == 60, (name, storm)
        assert storm["lost_connect"] == 0 and storm["relayed_websockets"] == 0, (name, storm)
        assert storm["connect_handlers"] == 60, (name, storm)
    times = report["polling_connect_s"]
    assert set(times) == {
        f"{setup} ({how})"
        for setup in ("mesh-nginx-rr", "sticky-haproxy-cookie")
        for how in ("one at a time", "waves of 25")
    }
    assert all(len(values) == 30 for values in times.values()), times
    one_at_a_time = sorted(times["mesh-nginx-rr (one at a time)"])
    assert one_at_a_time[len(one_at_a_time) // 2] < 0.25, one_at_a_time  # not held


def test_bench_help_lists_scenarios(tmp_path: Path) -> None:
    proc = _run_bench(["--help"], timeout=60, cwd=tmp_path)
    assert proc.returncode == 0
    assert "--scenario {roundtrip,scale,latency,connects,rolling}" in proc.stdout


def test_bench_finishes_without_matplotlib(tmp_path: Path) -> None:
    """The chart is optional: without matplotlib the run ends with a one-line note, status 0."""
    require_binary("haproxy")
    out = tmp_path / "out"
    args = ["--quick", "--only", "single", "--clients", "2", "--rounds", "1", "--out", str(out)]
    # None in sys.modules makes ``import matplotlib`` raise ImportError, as when not installed
    proc = _run_bench(args, timeout=120, cwd=tmp_path, prelude="sys.modules['matplotlib'] = None")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no bench.png: matplotlib is not installed" in proc.stderr
    assert (out / "bench.json").exists() and not (out / "bench.png").exists()
