from __future__ import annotations

from siomesh.auth import HEADER_CLIENT, HEADER_SIGNATURE, HEADER_TIME, PeerSigner

SIGNER = PeerSigner("auth-secret-0123456789", window=30)
NODE = "http://127.0.0.1:8001"


def sign(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "method": "GET",
        "path": "/socket.io/",
        "query": "EIO=4&transport=polling&sid=abc",
        "node_url": NODE,
        "now": 1000.0,
        "client": "10.1.2.3:5555",
    }
    args.update(kw)
    return SIGNER.sign(**args)  # type: ignore[arg-type]


def verify(headers: dict[str, str], **kw: object) -> object:
    args: dict[str, object] = {
        "method": "GET",
        "path": "/socket.io/",
        "query": "EIO=4&transport=polling&sid=abc",
        "headers": headers,
        "now": 1001.0,
    }
    args.update(kw)
    return SIGNER.verify(**args)  # type: ignore[arg-type]


def test_valid_signature_verifies() -> None:
    claim = verify(sign())
    assert claim is not None
    assert claim.client == "10.1.2.3:5555"  # type: ignore[attr-defined]
    assert claim.node_url == NODE  # type: ignore[attr-defined]


def test_bound_to_method_path_query() -> None:
    headers = sign()
    assert verify(headers, method="POST") is None
    assert verify(headers, path="/other/") is None
    assert verify(headers, query="EIO=4&transport=polling&sid=xyz") is None


def test_tampered_client_rejected() -> None:
    headers = sign()
    headers[HEADER_CLIENT] = "6.6.6.6:1"
    assert verify(headers) is None


def test_missing_or_garbage_rejected() -> None:
    assert verify({}) is None
    headers = sign()
    del headers[HEADER_SIGNATURE]
    assert verify(headers) is None
    headers = sign()
    headers[HEADER_TIME] = "not-a-number"
    assert verify(headers) is None


def test_replay_outside_window_rejected() -> None:
    headers = sign()
    assert verify(headers, now=1000.0 + 31) is None
    assert verify(headers, now=1000.0 - 31) is None


def test_other_secret_rejected() -> None:
    other = PeerSigner("another-secret-0123456789")
    headers = other.sign(method="GET", path="/socket.io/", query="", node_url=NODE, now=1000.0)
    assert verify(headers, query="") is None


def test_body_is_signed() -> None:
    headers = SIGNER.sign(
        method="POST", path="/_siomesh/x", query="", node_url=NODE, now=1000.0, body=b"hello"
    )
    ok = SIGNER.verify(
        method="POST", path="/_siomesh/x", query="", headers=headers, now=1000.0, body=b"hello"
    )
    assert ok is not None
    bad = SIGNER.verify(
        method="POST", path="/_siomesh/x", query="", headers=headers, now=1000.0, body=b"hellO"
    )
    assert bad is None
