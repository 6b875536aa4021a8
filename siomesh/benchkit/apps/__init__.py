"""Apps served by the bench's nodes: :mod:`.echo` (SioMesh) and :mod:`.plain` (no SioMesh).
Both answer the events of :func:`.events.register`."""
