"""Socket.IO client load (acked round trips): see :mod:`siomesh.benchkit.load`."""

from siomesh.benchkit.load import LoadResult, Payload, close_client, run_load, text_payload

__all__ = ["LoadResult", "Payload", "close_client", "run_load", "text_payload"]
