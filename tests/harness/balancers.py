"""Real load balancers from the shipped configs: see :mod:`siomesh.benchkit.balancers`."""

from siomesh.benchkit.balancers import (
    BALANCERS,
    CONFIG_DIR,
    Balancer,
    BalancerSpec,
    binary_for,
    render,
    start_balancer,
)

__all__ = [
    "BALANCERS",
    "CONFIG_DIR",
    "Balancer",
    "BalancerSpec",
    "binary_for",
    "render",
    "start_balancer",
]
