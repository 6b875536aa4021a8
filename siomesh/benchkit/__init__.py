"""What ``siomesh bench`` drives, shipped with the package so the bench runs from an install.

* :mod:`~siomesh.benchkit.ports`: free loopback ports;
* :mod:`~siomesh.benchkit.procs`: uvicorn nodes and ``redis-server`` started, waited for and
  ended by pid;
* :mod:`~siomesh.benchkit.balancers`: nginx, HAProxy, Apache httpd and Caddy started from the
  shipped configs (``examples/balancers``), rendered with free ports;
* :mod:`~siomesh.benchkit.apps`: the served apps (``echo``: SioMesh; ``plain``: python-socketio
  alone, optionally on ``AsyncRedisManager``);
* :mod:`~siomesh.benchkit.load`: acked round trips from N concurrent clients;
* :mod:`~siomesh.benchkit.fleet`: thousands of room receivers spread over client processes;
* :mod:`~siomesh.benchkit.sysinfo`: RSS and TCP connections of processes, from ``/proc``;
* :mod:`~siomesh.benchkit.broadcasts`: the ``scale`` and ``latency`` scenarios of
  ``siomesh bench`` (:mod:`siomesh.bench` has the ``roundtrip`` one and the options).

The test suite reuses these through ``tests/harness`` and ``tests/apps``. Every wait here is
bounded; every process is ended by its pid.
"""
