"""The chat demo run by ``siomesh demo``: see :mod:`siomesh.demo.chat` and docs/demo.md."""
