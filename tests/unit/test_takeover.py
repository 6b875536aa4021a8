"""Upgrade takeover (siomesh.takeover) between two in-process nodes over real peer links on an
in-memory network: the WebSocket is served where it lands, the app's connect handler runs once
there with the handshake's environ, held packets move with the session, late polls follow it,
and a session that cannot move is relayed (counted)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import socketio

from siomesh.takeover import STORM_SESSIONS, STORM_SPAN, STORM_WINDOW

from .test_middleware import NODE, PEER, Owner, call, until


def _count_connects(sio: socketio.AsyncServer, seen: list[dict[str, Any]]) -> None:
    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        seen.append(environ)

    @sio.event
    async def echo(sid: str, data: Any) -> Any:
        return data


class Socket:
    """A raw WebSocket scope driven by hand, as uvicorn would deliver it."""

    def __init__(self, sid: str) -> None:
        self.to_server: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.to_client: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.scope = {
            "type": "websocket",
            "path": "/socket.io/",
            "raw_path": b"/socket.io/",
            "query_string": f"EIO=4&transport=websocket&sid={sid}".encode(),
            "headers": [
                (b"host", b"public.example"),
                (b"connection", b"Upgrade"),
                (b"upgrade", b"websocket"),
                (b"sec-websocket-key", b"k"),
            ],
            "client": ("10.1.2.3", 5000),
            "server": ("127.0.0.1", 8001),
            "scheme": "ws",
            "http_version": "1.1",
            "subprotocols": [],
        }

    async def expect(self, kind: str) -> dict[str, Any]:
        message = await asyncio.wait_for(self.to_client.get(), 2)
        assert message["type"] == kind, message
        return message

    async def text(self) -> str:
        """The next text frame that is not a NOOP."""
        while True:
            text = str((await self.expect("websocket.send"))["text"])
            if text != "6":
                return text

    async def upgrade(self) -> None:
        await self.to_server.put({"type": "websocket.connect"})
        await self.expect("websocket.accept")
        await self.to_server.put({"type": "websocket.receive", "text": "2probe"})
        assert await self.text() == "3probe"
        await self.to_server.put({"type": "websocket.receive", "text": "5"})

    async def close(self, task: asyncio.Future[Any]) -> None:
        await self.to_server.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, 2)


def _websocket_at(node: Any, sid: str) -> tuple[Socket, asyncio.Future[Any]]:
    """A WebSocket for session ``sid`` arriving at ``node``, served in a task."""
    ws = Socket(sid)
    return ws, asyncio.ensure_future(node(ws.scope, ws.to_server.get, ws.to_client.put))


async def _handshake(o: Owner, headers: Any = ()) -> str:
    status, _, body = await call(
        o.owner, "GET", "/socket.io/", b"EIO=4&transport=polling&token=abc", headers
    )
    assert status == 200
    sid: str = json.loads(body[1:])["sid"]
    return sid


def _owner_holding(window: float, max_window: float) -> Owner:
    """Two nodes whose owner holds new sessions ``window`` s (up to ``max_window``)."""
    o = Owner()
    takeover = o.owner.node.takeover
    takeover.config = type(takeover.config)(window=window, max_window=max_window)
    return o


async def _connect_by_polling(o: Owner, agent: str | None = None) -> tuple[str, bytes]:
    """Handshake on the owner, then send the CONNECT by polling (as the JS client does, beside
    its upgrade probe): the sid and the session's polling query."""
    sid = await _handshake(o, [(b"user-agent", agent.encode())] if agent else [])
    query = f"EIO=4&transport=polling&sid={sid}".encode()
    await call(o.owner, "POST", "/socket.io/", query, [(b"content-length", b"2")], b"40")
    return sid, query


async def test_upgrade_landing_elsewhere_is_taken_over_not_relayed() -> None:
    """python-socketio's client: handshake on the owner, then at once the upgrade, which lands
    on the other node: that node takes the session over and serves the WebSocket; the connect
    handler runs once, there, with the handshake's headers and query."""
    async with Owner() as o:
        on_owner: list[dict[str, Any]] = []
        on_taker: list[dict[str, Any]] = []
        _count_connects(o.sio, on_owner)
        _count_connects(o.forwarder_sio, on_taker)
        sid = await _handshake(o, [(b"x-app", b"from-handshake")])
        ws, task = _websocket_at(o.forwarder, sid)
        await ws.upgrade()
        await ws.to_server.put({"type": "websocket.receive", "text": "40"})
        assert (await ws.text()).startswith("40{")
        await ws.to_server.put({"type": "websocket.receive", "text": '421["echo","hi"]'})
        assert await ws.text() == '431["hi"]'

        assert on_owner == [] and len(on_taker) == 1
        environ = on_taker[0]
        assert environ["HTTP_X_APP"] == "from-handshake"
        assert "token=abc" in environ["QUERY_STRING"]
        assert environ["siomesh.taken_over_from"] == PEER
        assert sid in o.forwarder.local_sids and sid not in o.owner.local_sids
        assert o.forwarder.stats["takeovers"] == 1
        assert o.forwarder.stats["takeover_fallbacks"] == 0
        assert o.forwarder.stats["relayed_websockets"] == 0
        assert o.owner.stats["sessions_handed_off"] == 1
        status = o.forwarder.status()
        assert (status["relayed_websockets"], status["takeovers"]) == (0, 1)
        journey = o.forwarder.journey(sid)
        assert journey is not None
        assert journey["handshake"]["served_by"] == PEER
        assert journey["websocket"] == {"landed_on": NODE, "how": "taken over", "from": PEER}
        assert journey["transport"] == "websocket"
        assert status["takeover_fallbacks"] == 0
        await ws.close(task)


async def test_connect_sent_by_polling_before_the_probe_moves_with_the_session() -> None:
    """The JS client: CONNECT by polling (held on the owner, the app sees nothing), a long-poll
    pending there, then the upgrade lands elsewhere: the pending poll ends with a NOOP, the
    CONNECT is dispatched once on the new owner and its answer reaches the client."""
    async with Owner() as o:
        on_owner: list[dict[str, Any]] = []
        on_taker: list[dict[str, Any]] = []
        _count_connects(o.sio, on_owner)
        _count_connects(o.forwarder_sio, on_taker)
        sid = await _handshake(o)
        query = f"EIO=4&transport=polling&sid={sid}".encode()
        status, _, body = await call(
            o.owner, "POST", "/socket.io/", query, [(b"content-length", b"2")], b"40"
        )
        assert (status, body) == (200, b"OK")
        pending = asyncio.ensure_future(call(o.owner, "GET", "/socket.io/", query))
        await asyncio.sleep(0.05)
        assert on_owner == [] and not pending.done()  # held

        ws, task = _websocket_at(o.forwarder, sid)
        await ws.to_server.put({"type": "websocket.connect"})
        await ws.expect("websocket.accept")
        status, _, body = await asyncio.wait_for(pending, 2)
        assert (status, body) == (200, b"6")  # the owner's pending poll: a NOOP
        # a late poll sent to the old owner follows the session to its new owner (which is
        # upgrading it: python-engineio answers polls with a NOOP meanwhile)
        status, _, body = await asyncio.wait_for(call(o.owner, "GET", "/socket.io/", query), 2)
        assert (status, body) == (200, b"6")
        await ws.to_server.put({"type": "websocket.receive", "text": "2probe"})
        assert await ws.text() == "3probe"
        await ws.to_server.put({"type": "websocket.receive", "text": "5"})
        assert (await ws.text()).startswith("40{")  # the answer to the moved CONNECT
        await ws.to_server.put({"type": "websocket.receive", "text": '421["echo",1]'})
        assert await ws.text() == "431[1]"
        assert on_owner == [] and len(on_taker) == 1
        assert o.forwarder.stats["takeovers"] == 1
        assert o.owner.stats["forwarded"] == 1  # the late poll
        await ws.close(task)


async def test_a_session_that_already_talks_socketio_is_relayed() -> None:
    """Past the window the held CONNECT is dispatched on the owner: the session no longer
    moves, its upgrade elsewhere is relayed and counted as a fallback."""
    async with Owner() as o:
        on_owner: list[dict[str, Any]] = []
        on_taker: list[dict[str, Any]] = []
        _count_connects(o.sio, on_owner)
        _count_connects(o.forwarder_sio, on_taker)
        sid = await _handshake(o)
        query = f"EIO=4&transport=polling&sid={sid}".encode()
        await call(o.owner, "POST", "/socket.io/", query, [(b"content-length", b"2")], b"40")
        await until(lambda: len(on_owner) == 1)  # takeover.window (0.25 s) passed
        _status, _, body = await asyncio.wait_for(call(o.owner, "GET", "/socket.io/", query), 2)
        assert body.startswith(b"40{")

        ws, task = _websocket_at(o.forwarder, sid)
        await ws.upgrade()
        await ws.to_server.put({"type": "websocket.receive", "text": '421["echo",2]'})
        assert await ws.text() == "431[2]"
        assert on_taker == [] and len(on_owner) == 1
        assert o.forwarder.stats["takeovers"] == 0
        assert o.forwarder.stats["takeover_fallbacks"] == 1
        assert o.forwarder.stats["relayed_websockets"] == 1
        assert sid in o.owner.local_sids
        journey = o.owner.journey(sid)
        assert journey is not None and journey["websocket"] == {
            "landed_on": NODE,
            "how": "relayed",
            "reason": "the session already talks Socket.IO here",
        }
        await ws.close(task)


async def test_owner_with_takeover_disabled_keeps_its_session() -> None:
    o = Owner()
    o.owner.node.takeover.enabled = False
    async with o:
        sid = await _handshake(o)
        ws, task = _websocket_at(o.forwarder, sid)
        await ws.upgrade()
        await ws.to_server.put({"type": "websocket.receive", "text": "40"})
        assert (await ws.text()).startswith("40{")
        assert o.forwarder.stats["takeover_fallbacks"] == 1
        assert o.forwarder.stats["relayed_websockets"] == 1
        await ws.close(task)


async def test_polling_only_connect_waits_at_most_the_window() -> None:
    """A polling-only client's CONNECT is held at most ``takeover.window`` after the
    handshake; with the window at 0 it is answered at once."""
    for window, bound in ((0.0, 0.15), (0.2, 0.6)):
        o = Owner()
        o.owner.node.takeover.config = type(o.owner.node.takeover.config)(window=window)
        async with o:
            seen: list[dict[str, Any]] = []
            _count_connects(o.sio, seen)
            sid = await _handshake(o)
            query = f"EIO=4&transport=polling&sid={sid}".encode()
            loop = asyncio.get_running_loop()
            began = loop.time()
            await call(o.owner, "POST", "/socket.io/", query, [(b"content-length", b"2")], b"40")
            _status, _, body = await asyncio.wait_for(call(o.owner, "GET", "/socket.io/", query), 2)
            took = loop.time() - began
            assert body.startswith(b"40{") and len(seen) == 1
            assert took < bound, (window, took)
            assert took >= window * 0.5, (window, took)


async def test_a_kind_that_never_upgrades_is_no_longer_held() -> None:
    """After 8 sessions of one User-Agent that polled their CONNECT and were never claimed,
    the next session of that kind is answered at once; another kind is still held."""
    o = _owner_holding(0.05, 0.1)
    agent = [(b"user-agent", b"some-client/1.0")]
    async with o:
        seen: list[dict[str, Any]] = []
        _count_connects(o.sio, seen)
        stats = o.owner.node.stats

        async def connect(headers: Any) -> None:
            sid = await _handshake(o, headers)
            query = f"EIO=4&transport=polling&sid={sid}".encode()
            await call(o.owner, "POST", "/socket.io/", query, [(b"content-length", b"2")], b"40")
            _, _, body = await asyncio.wait_for(call(o.owner, "GET", "/socket.io/", query), 2)
            assert body.startswith(b"40{")

        for _ in range(8):
            await connect(agent)
        assert stats["takeover_holds_skipped"] == 0
        # an outcome counts once max_window passed since the handshake (a probe can be late)
        forecast = o.owner.node.takeover.forecast
        await until(lambda: not forecast.may_upgrade("some-client/1.0"))
        await connect(agent)
        assert stats["takeover_holds_skipped"] == 1
        await connect([(b"user-agent", b"Mozilla/5.0")])
        assert stats["takeover_holds_skipped"] == 1
        assert len(seen) == 10


async def test_an_upgrade_on_the_owner_ends_the_hold_at_once() -> None:
    """The JS client sends its CONNECT by polling beside its probe, and the probe lands on the
    owner itself: the CONNECT is answered as soon as the upgrade completes, not when the
    window ends, and the session counts as one that upgraded (python-engineio reads the
    UPGRADE packet itself: it never reaches the packet-in hook)."""
    o = _owner_holding(1.5, 1.5)
    takeover = o.owner.node.takeover
    agent = "socket.io-client on the owner"
    async with o:
        seen: list[dict[str, Any]] = []
        _count_connects(o.sio, seen)
        sid, query = await _connect_by_polling(o, agent)
        poll = asyncio.ensure_future(call(o.owner, "GET", "/socket.io/", query))
        await asyncio.sleep(0.05)
        assert seen == []  # held
        started = asyncio.get_running_loop().time()
        ws, task = _websocket_at(o.owner, sid)
        await ws.upgrade()
        assert (await ws.text()).startswith("40{")
        assert asyncio.get_running_loop().time() - started < 0.5  # not the 1.5 s window
        assert len(seen) == 1
        _, _, body = await asyncio.wait_for(poll, 2)
        assert body == b"6"  # the poll the upgrade ended
        assert takeover.forecast.may_upgrade(agent)
        assert list(takeover.forecast._seen[agent]) == [True]
        await ws.close(task)


async def test_an_upgrade_relayed_to_the_owner_ends_the_hold_at_once() -> None:
    """The same when the WebSocket lands on a node that cannot take the session over (here its
    takeover is off) and is relayed to the owner: the upgrade completes on the owner, which
    ends the hold then."""
    o = _owner_holding(1.5, 1.5)
    o.forwarder.node.takeover.enabled = False
    async with o:
        seen: list[dict[str, Any]] = []
        _count_connects(o.sio, seen)
        sid, query = await _connect_by_polling(o, "relayed client")
        poll = asyncio.ensure_future(call(o.owner, "GET", "/socket.io/", query))
        started = asyncio.get_running_loop().time()
        ws, task = _websocket_at(o.forwarder, sid)
        await ws.upgrade()
        assert (await ws.text()).startswith("40{")
        assert asyncio.get_running_loop().time() - started < 0.5
        assert len(seen) == 1 and o.forwarder.stats["relayed_websockets"] == 1
        await asyncio.wait_for(poll, 2)
        await ws.close(task)


async def test_probes_later_than_the_window_do_not_teach_that_a_kind_never_upgrades() -> None:
    """In a connect storm probes come after the window: the held CONNECTs are dispatched at
    its end, but the sessions count as ones that did not upgrade only after ``max_window``.
    Counted at the window's end, 8 late probes made the forecast stop holding their kind, and
    the next sessions of that kind were relayed for life."""
    o = _owner_holding(0.05, 0.6)
    takeover = o.owner.node.takeover
    agent = "socket.io-client storm"
    async with o:
        seen: list[dict[str, Any]] = []
        _count_connects(o.sio, seen)
        for _ in range(9):
            await _connect_by_polling(o, agent)
        await until(lambda: len(seen) == 9)  # every hold ended with the window
        assert takeover.forecast.may_upgrade(agent)  # no outcome yet
        assert o.owner.node.stats["takeover_holds_skipped"] == 0
        await until(lambda: not takeover.forecast.may_upgrade(agent))  # after max_window


async def test_a_probe_later_than_the_window_on_the_owner_counts_as_an_upgrade() -> None:
    """Under a storm a probe can come after the hold ended, and one in three lands on the
    owner itself: the session still upgraded. Counted as one that did not (at max_window), 16
    such sessions in a row made the forecast stop holding a kind that upgrades, and the
    connects bench's npm storm then relayed 6 to 29 sessions for life."""
    o = _owner_holding(0.05, 0.3)
    takeover = o.owner.node.takeover
    agent = "socket.io-client, late probe"
    async with o:
        seen: list[dict[str, Any]] = []
        _count_connects(o.sio, seen)
        sid, query = await _connect_by_polling(o, agent)
        await until(lambda: len(seen) == 1)  # the window passed: the CONNECT was dispatched
        poll = asyncio.ensure_future(call(o.owner, "GET", "/socket.io/", query))
        ws, task = _websocket_at(o.owner, sid)
        await ws.upgrade()
        await asyncio.wait_for(poll, 2)
        await until(lambda: takeover.forecast._seen.get(agent) is not None)
        await asyncio.sleep(0.4)  # past max_window: no "did not upgrade" either
        assert list(takeover.forecast._seen[agent]) == [True]
        await ws.close(task)


async def test_a_hold_ends_with_the_window_as_it_stands_when_it_would_end() -> None:
    """The first late claims of a storm grow the window while earlier sessions are held: a
    session held under the old window stays held until the grown one ends."""
    o = _owner_holding(0.05, 2.0)
    takeover = o.owner.node.takeover
    async with o:
        seen: list[dict[str, Any]] = []
        _count_connects(o.sio, seen)
        await _connect_by_polling(o)
        takeover._claim_delays.append(0.2)  # a late claim meanwhile: the window is now 0.3 s
        await asyncio.sleep(0.15)
        assert seen == []  # still held past the 0.05 s it was held under
        await until(lambda: len(seen) == 1)


async def test_the_hold_grows_during_a_connect_storm() -> None:
    """Before any claim has come late, a burst of new sessions is a storm: their first wave's
    probes queue behind the handshakes, so they are held longer; once the burst is over, the
    window is back to ``takeover.window``."""
    o = Owner()
    takeover = o.owner.node.takeover
    now = asyncio.get_running_loop().time()
    takeover._created.extend([now - 0.01] * (STORM_SESSIONS - 1))
    assert takeover.window() == takeover.config.window  # one session short of a storm
    takeover._created.append(now)
    assert takeover.window() == STORM_WINDOW
    takeover._created.clear()
    takeover._created.extend([now - STORM_SPAN - 0.1] * STORM_SESSIONS)
    assert takeover.window() == takeover.config.window  # that burst is over


async def test_the_hold_grows_when_claims_come_late() -> None:
    o = Owner()
    takeover = o.owner.node.takeover
    assert takeover.window() == takeover.config.window
    takeover._claim_delays.extend([0.01, 0.6])
    assert abs(takeover.window() - 0.9) < 1e-9
    takeover._claim_delays.append(30.0)
    assert takeover.window() == takeover.config.max_window
