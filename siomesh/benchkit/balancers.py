"""Real load balancers in front of benchmark and test nodes, started from the shipped configs
(``examples/balancers`` in a checkout, ``siomesh/benchkit/templates`` in an installed package)
rendered with free loopback ports and a per-run directory."""

from __future__ import annotations

import os
import re
import resource
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import owner_routing
from .ports import LOOPBACK, free_port
from .procs import Proc, start_process, wait_http

__all__ = [
    "BALANCERS",
    "CONFIG_DIR",
    "Balancer",
    "BalancerSpec",
    "binary_for",
    "render",
    "start_balancer",
]


def _config_dir() -> Path:
    # In a checkout ``templates`` is a link to examples/balancers (one copy of each config);
    # building a wheel copies the files in. Where links are not checked out, use the checkout.
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parents[1] / "examples" / "balancers"):
        if (candidate / "nginx.conf").is_file():
            return candidate.resolve()
    return here / "templates"


#: Where the balancer config templates are read from.
CONFIG_DIR = _config_dir()
APACHE_MODULES = "/usr/lib/apache2/modules"


@dataclass(frozen=True)
class BalancerSpec:
    """How to run one balancer: its binary and its round-robin config template."""

    name: str
    binary: str
    template: str


BALANCERS: dict[str, BalancerSpec] = {
    "nginx": BalancerSpec("nginx", "nginx", "nginx.conf"),
    "haproxy": BalancerSpec("haproxy", "haproxy", "haproxy.cfg"),
    "apache": BalancerSpec("apache", "apache2", "apache.conf"),
    "caddy": BalancerSpec("caddy", "caddy", "Caddyfile"),
}
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
)


def binary_for(name: str) -> str | None:
    """Full path of a balancer's (or any) binary, also looking in the sbin directories."""
    spec = BALANCERS.get(name)
    return shutil.which(spec.binary if spec else name, path=_SEARCH_PATH)


@dataclass
class Balancer:
    """A running balancer; ``url`` is where clients connect."""

    name: str
    port: int
    proc: Proc
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        self.proc.stop(grace=grace)


def render(template: str, *, listen_port: int, backends: Sequence[str], run_dir: Path) -> str:
    """Fill a config template's placeholders. ``backends`` are ``host:port`` strings."""
    text = (CONFIG_DIR / template).read_text()
    values = {
        "LISTEN": f"{LOOPBACK}:{listen_port}",
        "LISTEN_PORT": str(listen_port),
        "LISTEN_HOST": LOOPBACK,
        "RUN_DIR": str(run_dir),
        "MODULES": APACHE_MODULES,
    }
    for index, backend in enumerate(backends, start=1):
        values[f"NODE_{index}"] = backend
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise ValueError(f"{template}: unfilled placeholder {text[start : start + 20]!r}")
    return text


_MAXCONN = re.compile(r"^(\s*maxconn\s+)(\d+)", re.MULTILINE)


def fit_haproxy_maxconn(text: str) -> str:
    """``text`` (an HAProxy config) with its first ``maxconn`` lowered to what this process's
    open-file hard limit allows, if it is lower than the config asks for.

    HAProxy needs about two file descriptors per connection and refuses to start when it
    cannot raise its limit that far ("Cannot raise FD limit"); it cannot raise the hard limit.
    The shipped configs ask for 9,000 connections (about 18,000 descriptors), sized for a
    deployment; a test or benchmark machine with a lower hard limit still runs them, with as
    many connections as it allows."""
    match = _MAXCONN.search(text)
    if match is None:
        return text
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = int(match.group(2))
    if hard == resource.RLIM_INFINITY or 2 * wanted + 64 <= hard:
        return text
    fitted = max(256, (hard - 64) // 2)
    return text[: match.start(2)] + str(fitted) + text[match.end(2) :]


def _argv(name: str, binary: str, config: Path, run_dir: Path) -> list[str]:
    if name == "nginx":
        # As root nginx would run its workers as "nobody", who cannot use the temp dirs here.
        extra = " user root;" if os.geteuid() == 0 else ""
        return [
            binary,
            "-p",
            str(run_dir),
            "-e",
            str(run_dir / "error.log"),
            "-c",
            str(config),
            "-g",
            f"daemon off;{extra}",
        ]
    if name == "haproxy":
        return [binary, "-db", "-f", str(config)]
    if name == "apache":
        return [binary, "-f", str(config), "-DFOREGROUND"]
    if name == "caddy":
        return [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    raise ValueError(f"unknown balancer {name!r}")


def start_balancer(
    name: str,
    backends: Sequence[str],
    run_dir: Path,
    *,
    template: str | None = None,
    ready_timeout: float = 20.0,
    ready_path: str = "/_siomesh/health",
    owner_secret: str | None = None,
    config_text: str | None = None,
) -> Balancer:
    """Start balancer ``name`` (a key of :data:`BALANCERS`) in front of ``backends``.

    With ``owner_secret`` (nginx and HAProxy), the config is the owner-aware one that
    ``siomesh balancer`` prints (:mod:`siomesh.owner_routing`), for nodes whose ``node_url``
    is ``http://`` + their backend address. ``config_text``: this config instead, its
    ``{{LISTEN}}`` replaced by the listening address. Waits until ``ready_path`` answers 200
    through it.
    Raises :class:`~siomesh.benchkit.procs.ProcessError` (after stopping it) when it does not.
    """
    spec = BALANCERS[name]
    binary = binary_for(name)
    if binary is None:
        raise FileNotFoundError(f"{spec.binary} is not installed")
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_name = template or spec.template
    config = run_dir / config_name
    if config_text is not None:
        config = run_dir / f"given-{spec.template}"
        config.write_text(config_text.replace("{{LISTEN}}", f"{LOOPBACK}:{port}"))
    elif owner_secret is not None:
        nodes = owner_routing.backends(owner_secret, [f"http://{b}" for b in backends])
        config = run_dir / f"owner-{spec.template}"
        listen = f"{LOOPBACK}:{port}"
        config.write_text(owner_routing.render(name, nodes, listen=listen, run_dir=str(run_dir)))
    else:
        config.write_text(render(config_name, listen_port=port, backends=backends, run_dir=run_dir))
    if name == "haproxy":
        config.write_text(fit_haproxy_maxconn(config.read_text()))
    env = dict(os.environ)
    if name == "caddy":
        # Caddy keeps state under $HOME / XDG dirs: keep it inside the run directory.
        env.update(
            HOME=str(run_dir),
            XDG_DATA_HOME=str(run_dir / "data"),
            XDG_CONFIG_HOME=str(run_dir / "config"),
        )
    proc = start_process(
        name,
        _argv(name, binary, config, run_dir),
        log_path=run_dir / f"{name}.log",
        env=env,
        cwd=run_dir,
    )
    balancer = Balancer(name=name, port=port, proc=proc, config_path=config)
    try:
        wait_http(balancer.url + ready_path, timeout=ready_timeout, procs=[proc])
    except BaseException:
        balancer.stop()
        raise
    return balancer
