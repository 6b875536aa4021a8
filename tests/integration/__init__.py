"""Integration tests: real uvicorn nodes, real load balancers, real socket.io clients, all on
127.0.0.1. The harness lives in :mod:`tests.harness`."""
