"""The peer-link handshake (siomesh.links.handshake): offer, hello, ack, key derivation and the
nonce cache. Pure: time and nonces are arguments."""

from __future__ import annotations

import pytest

from siomesh.links.handshake import (
    HEADER_FROM,
    HEADER_GENERATION,
    HEADER_KIND,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIME,
    HEADER_TO,
    HandshakeError,
    LinkSecret,
    NonceCache,
    Offer,
)

SECRET = LinkSecret("cluster-secret-0123456789")
OTHER = LinkSecret("another-secret-0123456789")
A = "http://10.0.0.1:8000"
B = "http://10.0.0.2:8000"
C = "http://10.0.0.3:8000"
NOW = 1_700_000_000.0
WINDOW = 30.0
NONCE_D = bytes(range(16))
NONCE_A = bytes(range(16, 32))


def offer(**overrides: object) -> Offer:
    fields: dict[str, object] = {
        "sender": A,
        "recipient": B,
        "kind": "data",
        "generation": 11,
        "nonce": NONCE_D,
        "time_ms": int(NOW * 1000),
    }
    fields.update(overrides)
    return Offer(**fields)  # type: ignore[arg-type]


def verify(headers: dict[str, str], secret: LinkSecret = SECRET, **kw: object) -> Offer:
    options: dict[str, object] = {"recipient": B, "now": NOW, "window": WINDOW}
    options.update(kw)
    return secret.verify_offer(headers, **options)  # type: ignore[arg-type]


def test_happy_path_derives_the_same_keys_on_both_sides() -> None:
    sent = offer()
    # dialler -> acceptor: the offer, as upgrade headers
    headers = SECRET.offer_headers(sent)
    assert set(headers) == {
        HEADER_FROM,
        HEADER_TO,
        HEADER_KIND,
        HEADER_GENERATION,
        HEADER_NONCE,
        HEADER_TIME,
        HEADER_SIGNATURE,
    }
    received = verify(headers)
    assert received == sent
    # acceptor -> dialler: hello
    hello = SECRET.hello(received, NONCE_A, 22)
    nonce, generation = SECRET.verify_hello(sent, hello)
    assert (nonce, generation) == (NONCE_A, 22)
    # dialler -> acceptor: ack
    SECRET.verify_ack(received, NONCE_A, SECRET.ack(sent, nonce))
    dialler_keys = SECRET.link_keys(sent, nonce)
    acceptor_keys = SECRET.link_keys(received, NONCE_A)
    assert dialler_keys == acceptor_keys
    send_key, recv_key = dialler_keys
    assert send_key != recv_key and len(send_key) == 32


def test_keys_differ_per_link_incarnation() -> None:
    base = SECRET.link_keys(offer(), NONCE_A)
    assert SECRET.link_keys(offer(), bytes(16)) != base  # another acceptor nonce
    assert SECRET.link_keys(offer(nonce=bytes(16)), NONCE_A) != base  # another dialler nonce
    assert SECRET.link_keys(offer(kind="control"), NONCE_A) != base
    assert SECRET.link_keys(offer(recipient=C), NONCE_A) != base
    assert OTHER.link_keys(offer(), NONCE_A) != base


def test_bytes_and_str_secrets_agree() -> None:
    as_bytes = LinkSecret(b"cluster-secret-0123456789")
    assert as_bytes.offer_headers(offer()) == SECRET.offer_headers(offer())


def test_offer_with_wrong_secret_is_refused() -> None:
    with pytest.raises(HandshakeError, match="signature"):
        verify(OTHER.offer_headers(offer()))


def test_offer_with_tampered_fields_is_refused() -> None:
    headers = SECRET.offer_headers(offer())
    for name, value in (
        (HEADER_FROM, C),
        (HEADER_KIND, "control"),
        (HEADER_GENERATION, "12"),
        (HEADER_NONCE, "ff" * 16),
        (HEADER_TIME, str(int(NOW * 1000) + 1)),
    ):
        with pytest.raises(HandshakeError):
            verify({**headers, name: value})


def test_offer_for_another_recipient_is_refused() -> None:
    with pytest.raises(HandshakeError, match="is for"):
        verify(SECRET.offer_headers(offer(recipient=C)))


@pytest.mark.parametrize("skew", [WINDOW + 0.5, -(WINDOW + 0.5), 3600.0])
def test_offer_outside_the_window_is_refused(skew: float) -> None:
    headers = SECRET.offer_headers(offer(time_ms=int((NOW - skew) * 1000)))
    with pytest.raises(HandshakeError, match="window"):
        verify(headers)


@pytest.mark.parametrize("skew", [0.0, WINDOW - 0.5, -(WINDOW - 0.5)])
def test_offer_inside_the_window_is_accepted(skew: float) -> None:
    verify(SECRET.offer_headers(offer(time_ms=int((NOW - skew) * 1000))))


def test_offer_from_the_recipients_own_url_is_refused() -> None:
    with pytest.raises(HandshakeError, match="own URL"):
        verify(SECRET.offer_headers(offer(sender=B)))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h.pop(HEADER_SIGNATURE),
        lambda h: h.pop(HEADER_FROM),
        lambda h: h.pop(HEADER_NONCE),
        lambda h: h.__setitem__(HEADER_GENERATION, "eleven"),
        lambda h: h.__setitem__(HEADER_TIME, "soon"),
        lambda h: h.__setitem__(HEADER_NONCE, "zz" * 16),
        lambda h: h.__setitem__(HEADER_NONCE, "00" * 8),  # too short
        lambda h: h.__setitem__(HEADER_SIGNATURE, "not hex"),
        lambda h: h.__setitem__(HEADER_SIGNATURE, "00" * 32),
        lambda h: h.__setitem__(HEADER_KIND, "bulk"),  # not a link kind
    ],
)
def test_malformed_offer_headers_are_refused(mutate: object) -> None:
    headers = SECRET.offer_headers(offer())
    mutate(headers)  # type: ignore[operator]
    with pytest.raises(HandshakeError):
        verify(headers)


def test_offer_of_an_unknown_kind_is_refused_even_when_signed() -> None:
    with pytest.raises(HandshakeError, match="malformed"):
        verify(SECRET.offer_headers(offer(kind="bulk")))


def test_empty_headers_are_refused() -> None:
    with pytest.raises(HandshakeError, match="missing or malformed"):
        verify({})


def test_hello_from_another_secret_is_refused() -> None:
    with pytest.raises(HandshakeError, match="hello"):
        SECRET.verify_hello(offer(), OTHER.hello(offer(), NONCE_A, 22))


def test_hello_for_another_offer_is_refused() -> None:
    # a third party replaying an old hello, or answering a different offer
    old = SECRET.hello(offer(nonce=bytes(16)), NONCE_A, 22)
    with pytest.raises(HandshakeError, match="hello"):
        SECRET.verify_hello(offer(), old)


@pytest.mark.parametrize("size", [0, 10, 55, 57])
def test_malformed_hello_is_refused(size: int) -> None:
    with pytest.raises(HandshakeError, match="malformed"):
        SECRET.verify_hello(offer(), b"\x00" * size)


def test_tampered_hello_is_refused() -> None:
    hello = bytearray(SECRET.hello(offer(), NONCE_A, 22))
    hello[17] ^= 1  # the generation
    with pytest.raises(HandshakeError):
        SECRET.verify_hello(offer(), bytes(hello))


def test_ack_from_another_secret_or_offer_is_refused() -> None:
    with pytest.raises(HandshakeError, match="ack"):
        SECRET.verify_ack(offer(), NONCE_A, OTHER.ack(offer(), NONCE_A))
    with pytest.raises(HandshakeError, match="ack"):
        SECRET.verify_ack(offer(), NONCE_A, SECRET.ack(offer(nonce=bytes(16)), NONCE_A))
    with pytest.raises(HandshakeError, match="ack"):
        SECRET.verify_ack(offer(), NONCE_A, SECRET.ack(offer(), bytes(16)))  # other hello nonce
    for bad in (b"", b"\x00" * 31, SECRET.ack(offer(), NONCE_A) + b"\x00"):
        with pytest.raises(HandshakeError):
            SECRET.verify_ack(offer(), NONCE_A, bad)


def test_offer_fields_survive_odd_urls() -> None:
    odd = offer(sender="http://h\udcff:1")  # a surrogate-escaped byte from a header
    assert isinstance(odd.fields(), bytes)


# -- NonceCache ----------------------------------------------------------------------------


def test_nonce_cache_refuses_a_reused_nonce() -> None:
    cache = NonceCache(window=WINDOW)
    assert cache.fresh(b"n1", NOW)
    assert not cache.fresh(b"n1", NOW)
    assert not cache.fresh(b"n1", NOW + WINDOW)
    assert cache.fresh(b"n2", NOW)


def test_nonce_cache_forgets_after_twice_the_window() -> None:
    cache = NonceCache(window=WINDOW)
    assert cache.fresh(b"n1", NOW)
    assert not cache.fresh(b"n1", NOW + 2 * WINDOW)  # still inside the horizon
    assert cache.fresh(b"n1", NOW + 2 * WINDOW + 0.001)  # forgotten (its offer is stale anyway)


def test_nonce_cache_is_bounded_by_capacity() -> None:
    cache = NonceCache(window=WINDOW, capacity=100)
    for i in range(1000):
        assert cache.fresh(i.to_bytes(4, "big"), NOW)
        assert len(cache._seen) <= 100
    # the newest are remembered, the oldest forgotten first
    assert not cache.fresh((999).to_bytes(4, "big"), NOW)
    assert cache.fresh((0).to_bytes(4, "big"), NOW)


def test_nonce_cache_expires_old_entries_as_time_passes() -> None:
    cache = NonceCache(window=1.0)
    for i in range(50):
        cache.fresh(i.to_bytes(2, "big"), NOW + i * 0.1)
    cache.fresh(b"late", NOW + 100)
    assert len(cache._seen) == 1
