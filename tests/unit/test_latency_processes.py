"""The latency scenario spreads its receivers over enough client processes that the figures
measure the servers (docs/benchmark.md, "How many client processes measure the servers")."""

from __future__ import annotations

from siomesh.benchkit.broadcasts import LatencyParams, latency_processes


def test_one_process_per_75_receivers_at_least_two_at_most_eight() -> None:
    assert latency_processes(LatencyParams(receivers=30)) == 2
    assert latency_processes(LatencyParams(receivers=150)) == 2
    assert latency_processes(LatencyParams(receivers=151)) == 3
    assert latency_processes(LatencyParams(receivers=600)) == 8
    assert latency_processes(LatencyParams(receivers=5000)) == 8


def test_a_given_count_is_kept() -> None:
    assert latency_processes(LatencyParams(receivers=150, processes=1)) == 1
