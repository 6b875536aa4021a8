"""The I/O shell around the pure core: peer HTTP client, gossip loop, clocks."""
