"""The codec below the adapter, recovery and takeover: Engine.IO packets round-trip exactly,
binary included, and malformed ones are refused."""

from __future__ import annotations

import pytest
from engineio import packet

from siomesh.codec import WireError, decode_packet, encode_packet


@pytest.mark.parametrize(
    "pkt",
    [
        packet.Packet(packet.MESSAGE, data='40{"token":"x"}'),
        packet.Packet(packet.MESSAGE, data=b"\x00\xffbinary"),
        packet.Packet(packet.NOOP),
        packet.Packet(packet.MESSAGE, data={"$b": "not bytes", "n": [1, 2]}),
    ],
)
def test_packets_round_trip(pkt: packet.Packet) -> None:
    back = decode_packet(encode_packet(pkt))
    assert (back.packet_type, back.data) == (pkt.packet_type, pkt.data)


@pytest.mark.parametrize("raw", [None, [], [4], ["4", "x"], [99, "x"], [4, {"$b": 5}]])
def test_malformed_packets_are_refused(raw: object) -> None:
    with pytest.raises(WireError):
        decode_packet(raw)
