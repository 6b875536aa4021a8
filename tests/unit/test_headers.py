"""Which client headers a forwarded request carries to the owner (siomesh.forward)."""

from __future__ import annotations

from siomesh.forward import forwarded_headers

RAW = [
    (b"host", b"public.example"),
    (b"origin", b"http://app.example"),
    (b"cookie", b"io=abc; other=1"),
    (b"connection", b"keep-alive, X-Drop-Me"),
    (b"keep-alive", b"timeout=5"),
    (b"upgrade", b"websocket"),
    (b"transfer-encoding", b"chunked"),
    (b"content-length", b"12"),
    (b"te", b"trailers"),
    (b"trailer", b"x-checksum"),
    (b"proxy-authorization", b"Basic Zm9v"),
    (b"proxy-connection", b"keep-alive"),
    (b"x-drop-me", b"1"),
    (b"x-forwarded-for", b"1.1.1.1"),
    (b"x-siomesh-signature", b"forged"),
    (b"x-siomesh-node", b"http://evil.example"),
    (b"accept-encoding", b"gzip"),
    (b"x-forwarded-proto", b"https"),
    (b"sec-websocket-key", b"k"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-extensions", b"permessage-deflate"),
    (b"sec-websocket-protocol", b"chat"),
]

HOP_BY_HOP = (
    b"connection",
    b"keep-alive",
    b"upgrade",
    b"transfer-encoding",
    b"content-length",
    b"te",
    b"trailer",
    b"proxy-authorization",
    b"proxy-connection",
)
WS_HANDSHAKE = (
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
)


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


def test_polling_headers() -> None:
    headers = forwarded_headers(RAW, "10.0.0.9", websocket=False)
    out = dict(headers)
    assert out[b"host"] == b"public.example"
    assert out[b"origin"] == b"http://app.example"
    assert out[b"cookie"] == b"io=abc; other=1"
    assert out[b"accept-encoding"] == b"gzip"
    assert out[b"x-forwarded-proto"] == b"https"
    for gone in (*HOP_BY_HOP, b"x-drop-me", b"x-siomesh-signature", b"x-siomesh-node"):
        assert gone not in out, gone
    # kept for polling: harmless, and never read as an upgrade without `upgrade`
    for kept in WS_HANDSHAKE:
        assert kept in out


def test_order_of_end_to_end_headers_is_kept_and_xff_comes_last() -> None:
    headers = forwarded_headers(RAW, "10.0.0.9", websocket=True)
    assert names(headers) == [
        b"host",
        b"origin",
        b"cookie",
        b"accept-encoding",
        b"x-forwarded-proto",
        b"x-forwarded-for",
    ]


def test_x_forwarded_for_is_appended_to() -> None:
    out = dict(forwarded_headers(RAW, "10.0.0.9", websocket=False))
    assert out[b"x-forwarded-for"] == b"1.1.1.1, 10.0.0.9"


def test_several_x_forwarded_for_headers_are_joined_in_order() -> None:
    raw = [(b"x-forwarded-for", b"1.1.1.1"), (b"host", b"h"), (b"x-forwarded-for", b"2.2.2.2")]
    headers = forwarded_headers(raw, "3.3.3.3", websocket=False)
    assert headers == [(b"host", b"h"), (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 3.3.3.3")]


def test_x_forwarded_for_created_when_absent() -> None:
    assert forwarded_headers([(b"host", b"h")], "::1", websocket=False) == [
        (b"host", b"h"),
        (b"x-forwarded-for", b"::1"),
    ]


def test_no_client_address_adds_nothing() -> None:
    assert forwarded_headers([(b"host", b"h")], "", websocket=False) == [(b"host", b"h")]
    assert forwarded_headers([(b"x-forwarded-for", b"1.1.1.1")], "", websocket=False) == [
        (b"x-forwarded-for", b"1.1.1.1")
    ]


def test_websocket_drops_the_handshake_headers() -> None:
    out = dict(forwarded_headers(RAW, "10.0.0.9", websocket=True))
    for gone in (*WS_HANDSHAKE, *HOP_BY_HOP, b"x-drop-me", b"x-siomesh-signature"):
        assert gone not in out, gone
    assert out[b"origin"] == b"http://app.example"
    assert out[b"cookie"] == b"io=abc; other=1"
    assert out[b"x-forwarded-for"] == b"1.1.1.1, 10.0.0.9"


def test_connection_listed_headers_are_dropped_whatever_their_position() -> None:
    raw = [
        (b"x-early", b"1"),
        (b"connection", b"close"),
        (b"connection", b" x-early ,x-late"),
        (b"x-late", b"2"),
        (b"x-kept", b"3"),
    ]
    assert forwarded_headers(raw, "", websocket=False) == [(b"x-kept", b"3")]


def test_every_mesh_header_is_dropped() -> None:
    raw = [(b"x-siomesh-" + suffix, b"v") for suffix in (b"to", b"via", b"link", b"anything")]
    assert forwarded_headers([*raw, (b"x-siomeshy", b"kept")], "", websocket=False) == [
        (b"x-siomeshy", b"kept")
    ]


def test_latin1_client_host_and_values_pass_unchanged() -> None:
    raw = [(b"x-name", b"caf\xe9")]
    out = forwarded_headers(raw, "h\xf4te", websocket=False)
    assert out == [(b"x-name", b"caf\xe9"), (b"x-forwarded-for", b"h\xf4te")]


def test_input_is_not_modified() -> None:
    raw = list(RAW)
    forwarded_headers(raw, "10.0.0.9", websocket=True)
    assert raw == RAW
