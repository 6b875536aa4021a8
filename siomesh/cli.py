"""The ``siomesh`` command: ``run``, ``demo``, ``status``, ``drain`` and ``bench``.

Every subcommand has ``--help``; bad arguments exit with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from .config import env_option
from .owner_routing import KINDS
from .workers import WorkerPlan, app_problem, plan_workers, port_problem, supervise

__all__ = ["main"]


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _port(value: str) -> int:
    number = _positive(value)
    if number > 65535:
        raise argparse.ArgumentTypeError("a port is at most 65535")
    return number


def _add_run_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--workers", "-w", type=_positive, default=3, help="worker processes")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", "-p", type=_port, default=default_port, help="public port")
    parser.add_argument(
        "--private-port-base",
        type=_port,
        default=None,
        help="first private port (worker i listens on base+i); default: free ports",
    )
    parser.add_argument(
        "--secret", default=None, help="cluster secret (default: $SIOMESH_SECRET or random)"
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siomesh",
        description="Run python-socketio nodes behind any load balancer, with no stickiness.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="serve MODULE:APP with N workers on one port, meshed",
        description=(
            "Serve an ASGI app holding a python-socketio server with N worker processes sharing "
            "one port (SO_REUSEPORT: no stickiness). Each worker also listens on a private port "
            "where its peers forward requests to it. The app is wrapped in SioMesh unless it "
            "already is."
        ),
    )
    run.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.main:app")
    _add_run_options(run, 8000)

    demo = sub.add_parser(
        "demo",
        help="a 3-worker chat cluster with a web page",
        description=(
            "Start the chat example on N workers behind one non-sticky port and print the URL "
            "of its page. Open it in several tabs: messages reach every tab whichever worker "
            "each landed on, and the page shows which worker served each request."
        ),
    )
    _add_run_options(demo, 8000)

    status = sub.add_parser(
        "status",
        help="show a node's view of the cluster",
        description="Print members, their state and sessions from a node's status endpoint.",
    )
    status.add_argument("url", help="a node's URL, e.g. http://127.0.0.1:8001")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--mesh-path", default="/_siomesh", help="the node's mesh path")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")

    drain = sub.add_parser(
        "drain",
        help="make a node drain now (e.g. a Kubernetes preStop hook)",
        description=(
            "Ask the node at URL to drain: health 503, leave the cluster, hand its clients to "
            "its peers. Authenticated with the cluster secret over a peer link; returns when "
            "the node is drained."
        ),
    )
    drain.add_argument("url", help="the node's URL (its node_url), e.g. http://10.0.0.1:8000")
    drain.add_argument("--secret", default=None, help="cluster secret (default: SIOMESH_SECRET)")
    drain.add_argument("--mesh-path", default="/_siomesh", help="the node's mesh path")
    drain.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")

    balancer = sub.add_parser(
        "balancer",
        help="print an owner-aware nginx, HAProxy or Caddy config (no forward after a handshake)",
        description=(
            "Print a balancer config that sends every request carrying a sid to the node that "
            "owns it (read from the sid's first characters) and the rest round-robin. Nodes "
            "are given as their node_url, or read from a running node (--from). The tags "
            "depend on the cluster secret."
        ),
    )
    balancer.add_argument("kind", choices=list(KINDS), help="which balancer")
    balancer.add_argument("nodes", nargs="*", metavar="NODE_URL", help="each node's node_url")
    balancer.add_argument(
        "--from",
        dest="from_url",
        default=None,
        metavar="URL",
        help="read the members (alive or suspect) from this running node's status",
    )
    balancer.add_argument("--secret", default=None, help="cluster secret (default: SIOMESH_SECRET)")
    balancer.add_argument("--listen", default="0.0.0.0:80", help="address:port to listen on")
    balancer.add_argument("--mesh-path", default="/_siomesh", help="the node's mesh path")
    balancer.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")

    bench = sub.add_parser(
        "bench",
        help="compare mesh mode with sticky mode, side by side",
        description="Run the comparative benchmark (see docs/benchmark.md).",
    )
    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    return parser


def _announce(plan: WorkerPlan, *, demo: bool) -> None:
    host = f"[{plan.host}]" if ":" in plan.host else plan.host
    print(f"siomesh: {len(plan.private_ports)} workers on http://{host}:{plan.port}/", flush=True)
    for i in range(len(plan.private_ports)):
        print(f"  worker {i}: {plan.node_url(i)}", flush=True)
    if demo:
        print(f"Open http://{host}:{plan.port}/ in two browser tabs. Ctrl-C stops.", flush=True)


def _check_config(plan: WorkerPlan) -> str | None:
    """Validate the settings a worker will get, so that a bad secret or ``SIOMESH_*`` value
    fails once, here, instead of in every worker's restart loop."""
    import os

    from .config import ConfigError, MeshConfig

    try:
        MeshConfig.build({**os.environ, **plan.env(0)})
    except ConfigError as exc:
        if "secret" in str(exc):
            return f"{exc} (or give no --secret and no SIOMESH_SECRET: a random one is made)"
        return str(exc)
    return None


def _check_app(spec: str, plan: WorkerPlan) -> str | None:
    """Import the app once in the supervisor, with worker 0's settings, so that a typo or an
    object that is not an ASGI app fails at once with one line instead of N workers crashing
    in a restart loop. Returns the error, or None."""
    import os

    from .workers import load_app

    # Importing builds the app, and SioMesh(app) may run then: give it a worker's settings.
    env = plan.env(0)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return app_problem(load_app(spec), spec)
    except ValueError as exc:  # load_app's errors and ConfigError: each names its fix
        return str(exc)
    except Exception as exc:
        return f"importing {spec} failed: {type(exc).__name__}: {exc}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(args: argparse.Namespace, app: str, *, demo: bool) -> int:
    try:
        plan = plan_workers(
            app,
            workers=args.workers,
            host=args.host,
            port=args.port,
            private_base=args.private_port_base,
            secret=args.secret,
        )
    except OSError as exc:
        print(f"siomesh: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    # Cheapest first; each names the problem and its fix in one line.
    error = _check_config(plan) or port_problem(plan) or _check_app(app, plan)
    if error is not None:
        print(f"siomesh: {error}", file=sys.stderr)
        return 1
    try:
        return supervise(plan, log_level=args.log_level, on_ready=lambda p: _announce(p, demo=demo))
    except OSError as exc:
        print(f"siomesh: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


def _format_status(data: dict[str, Any]) -> str:
    lines = [
        f"node     {data.get('node')}  state={data.get('state')}  sessions={data.get('sessions')}",
    ]
    members = data.get("members", [])
    lines.append(f"members  {len(members)}")
    for member in members:
        extra = "  ".join(f"{k}={v}" for k, v in member.items() if k not in ("url", "state"))
        lines.append(f"  {member.get('url'):<32} {member.get('state'):<8} {extra}".rstrip())
    seeds = data.get("seeds", [])
    if seeds:
        lines.append(f"seeds    {len(seeds)}")
        for seed in seeds:
            state = "linked" if seed.get("linked") else f"NOT LINKED: {seed.get('error') or '?'}"
            lines.append(f"  {seed.get('url'):<32} {state}")
    directory = data.get("directory", {})
    if directory:
        lines.append(
            "directory "
            + "  ".join(f"{origin}={count}" for origin, count in sorted(directory.items()))
        )
    stats = data.get("stats", {})
    if stats:
        lines.append("stats    " + "  ".join(f"{k}={v}" for k, v in stats.items()))
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + args.mesh_path + "/status"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        print(f"siomesh: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    except json.JSONDecodeError:
        print(f"siomesh: {url} did not answer JSON: is it a siomesh node?", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else _format_status(data))
    return 0


def _drain(args: argparse.Namespace) -> int:
    import asyncio

    from .config import ConfigError
    from .drain_client import drain_node
    from .links.pool import LinkUnavailable

    secret = args.secret or env_option("secret")
    if not secret:
        print(
            "siomesh: drain needs the cluster secret: --secret or SIOMESH_SECRET", file=sys.stderr
        )
        return 2
    try:
        answer = asyncio.run(
            drain_node(args.url, secret, mesh_path=args.mesh_path, timeout=args.timeout)
        )
    except (LinkUnavailable, TimeoutError, ConfigError, OSError, ValueError) as exc:
        print(f"siomesh: cannot drain {args.url}: {exc}", file=sys.stderr)
        return 1
    print(
        f"siomesh: {answer.get('node')} is {answer.get('state')}: "
        f"{answer.get('drained_sessions')} sessions handed to its peers"
    )
    return 0


def _balancer(args: argparse.Namespace) -> int:

    from .owner_routing import backends, render

    secret = args.secret or env_option("secret")
    if not secret:
        print("siomesh: the tags depend on the cluster secret: --secret or SIOMESH_SECRET",
              file=sys.stderr)  # fmt: skip
        return 2
    urls = list(args.nodes)
    if args.from_url:
        url = args.from_url.rstrip("/") + args.mesh_path + "/status"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as response:
                data = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as exc:
            print(f"siomesh: cannot read {url}: {exc}", file=sys.stderr)
            return 1
        members = data.get("members") or []
        urls += [str(data["node"])] + [
            str(m["url"])
            for m in members
            if m.get("state") in ("alive", "suspect") and not m.get("self")
        ]
        urls = list(dict.fromkeys(u.rstrip("/") for u in urls))
    if not urls:
        print("siomesh: name the nodes (their node_url) or --from a running node", file=sys.stderr)
        return 2
    try:
        print(render(args.kind, backends(secret, urls), listen=args.listen), end="")
    except ValueError as exc:
        print(f"siomesh: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "balancer" and not any(a.startswith("-") for a in extra):
        # node URLs given after an option (argparse ends a "*" positional at the first one)
        args.nodes = [*args.nodes, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        return _run(args, args.app, demo=False)
    if args.command == "demo":
        return _run(args, "siomesh.demo.chat:app", demo=True)
    if args.command == "drain":
        return _drain(args)
    if args.command == "status":
        return _status(args)
    if args.command == "balancer":
        return _balancer(args)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
