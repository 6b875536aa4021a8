"""Real-process test harness: free loopback ports, uvicorn nodes, real load balancers and a
socket.io client load driver. Free of pytest imports so benchmarks can reuse it."""
