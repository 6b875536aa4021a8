from __future__ import annotations

from siomesh.auth import mesh_headers_of, without_mesh_headers
from siomesh.forward import _request_headers

RAW = [
    (b"host", b"public.example"),
    (b"origin", b"http://app.example"),
    (b"cookie", b"io=abc; other=1"),
    (b"connection", b"keep-alive, x-drop-me"),
    (b"keep-alive", b"timeout=5"),
    (b"upgrade", b"websocket"),
    (b"transfer-encoding", b"chunked"),
    (b"content-length", b"12"),
    (b"te", b"trailers"),
    (b"x-drop-me", b"1"),
    (b"x-forwarded-for", b"1.1.1.1"),
    (b"x-siomesh-signature", b"forged"),
    (b"accept-encoding", b"gzip"),
    (b"sec-websocket-key", b"k"),
    (b"sec-websocket-version", b"13"),
]


def test_polling_headers() -> None:
    out = dict(_request_headers(RAW, "10.0.0.9", websocket=False))
    assert out["host"] == "public.example"
    assert out["origin"] == "http://app.example"
    assert out["cookie"] == "io=abc; other=1"
    assert out["accept-encoding"] == "gzip"
    assert out["X-Forwarded-For"] == "1.1.1.1, 10.0.0.9"
    for gone in (
        "connection",
        "keep-alive",
        "upgrade",
        "transfer-encoding",
        "content-length",
        "te",
        "x-drop-me",
        "x-siomesh-signature",
    ):
        assert gone not in out
    # kept for polling: harmless, and never sent to the owner as an upgrade without `upgrade`
    assert "sec-websocket-key" in out


def test_websocket_headers_drop_handshake() -> None:
    out = dict(_request_headers(RAW, "10.0.0.9", websocket=True))
    assert "sec-websocket-key" not in out
    assert "sec-websocket-version" not in out
    assert out["origin"] == "http://app.example"


def test_xff_created_when_absent() -> None:
    out = dict(_request_headers([(b"host", b"h")], "::1", websocket=False))
    assert out["X-Forwarded-For"] == "::1"


def test_mesh_header_helpers() -> None:
    assert mesh_headers_of(RAW) == {"x-siomesh-signature": "forged"}
    assert all(not k.startswith(b"x-siomesh") for k, _ in without_mesh_headers(RAW))
