"""Real-process test harness: free loopback ports, uvicorn nodes, real load balancers and a
socket.io client load driver. The code lives in :mod:`siomesh.benchkit` (``siomesh bench``
drives it from an installed package); these modules re-export it for the tests, adding only
what a source checkout needs (``REPO_ROOT``, the ``tests.apps`` apps on the nodes' path)."""
