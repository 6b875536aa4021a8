"""``sid_of`` reads the sid python-engineio reads (``parse_qs``), fast path or not."""

from __future__ import annotations

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from siomesh.node import sid_of


def reference(query: bytes) -> str | None:
    values = urllib.parse.parse_qs(query.decode("latin-1")).get("sid")
    return values[0] if values else None


CASES = [
    b"",
    b"EIO=4&transport=polling&t=PaB1c",
    b"EIO=4&transport=polling&sid=abcDEF-_12",
    b"sid=first&sid=second",
    b"xsid=no&EIO=4",
    b"xsid=no&sid=yes",
    b"sid=&sid=later",
    b"sid=",
    b"EIO=4&sid=a%20b",
    b"EIO=4&sid=a+b",
    b"s%69d=escaped-key",
    b"EIO=4&sid=x=y&t=1",
    b"&&sid=z",
]


def test_known_queries() -> None:
    for query in CASES:
        assert sid_of(query) == reference(query), query


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sid", "xsid", "EIO", "t", "s%69d", "", "transport"]),
            st.text(alphabet="abcXYZ019-_.=%+ &", max_size=8),
        ),
        max_size=6,
    )
)
def test_matches_parse_qs(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{k}={v}" for k, v in pairs).encode("latin-1")
    assert sid_of(query) == reference(query), query
