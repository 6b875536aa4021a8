"""Where a recovery looks for a kept session, and what it costs (issue 18): a pid that does not
verify is nobody's; a genuine pid costs at most one call, to one peer (its home, or the home's
successor); the home forwards along its pointer, bounded; a wrong offset or namespace never
takes a kept session away. In process, with the calls to peers recorded instead of sent. The
same over real processes: tests/integration/test_recovery.py."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from siomesh.config import RecoveryConfig
from siomesh.counters import Stats
from siomesh.engine import EngineSeam
from siomesh.recovery import (
    ADOPTION_WAIT,
    HANDOFF_WAIT,
    MAX_FORWARDS,
    REFUSED,
    Entry,
    Kept,
    Log,
    Recovery,
    successors,
)
from siomesh.sid import SidKeys, make_sid, node_tag

KEYS = SidKeys.from_secret("a-random-test-secret-9Qz7Lp2Rw5kT")
A, B, C, D = (f"http://10.0.0.{i}:8000" for i in range(1, 5))
GEN = 7


def pid_of(url: str, generation: int = GEN) -> str:
    return make_sid(KEYS, url, generation, secrets.token_bytes(12))


class Peers:
    """What a node knows of the cluster, and the calls it would send (answered by ``replies``:
    peer -> the answer to give, or a callable of the request)."""

    def __init__(self, live: list[str], leaving: list[str] | None = None) -> None:
        self.live = live
        self.leaving = leaving or []
        self.calls: list[tuple[str, bool]] = []
        self.replies: dict[str, Any] = {}


def node(url: str, peers: Peers, *, keys: SidKeys | None = KEYS) -> Recovery:
    members = [A, B, C, D]

    def owner_of(pid: str) -> str | None:
        for member in members:
            if pid[:4] == node_tag(KEYS, member):
                return member
        return None

    recovery = Recovery(
        RecoveryConfig(enabled=True, max_sessions=3),
        seam=EngineSeam(None, None),
        node_url=url,
        node_tag="tagtagtg",
        links=None,  # type: ignore[arg-type]
        make_pid=lambda: pid_of(url),
        owner_of=owner_of,
        live_peers=lambda: [p for p in peers.live if p != url],
        leaving_peers=lambda: list(peers.leaving),
        stats=Stats(),
        call_timeout=1.0,
        keys=keys,
    )

    async def ask(
        peer: str,
        pid: str,
        offset: str,
        namespace: str | None,
        *,
        forwarded: bool,
        timeout: float | None = None,
    ) -> Any:
        peers.calls.append((peer, forwarded))
        recovery.stats.bump("recovery_fetches_sent")
        reply = peers.replies.get(peer)
        return reply(pid, offset, forwarded) if callable(reply) else reply

    recovery._ask = ask  # type: ignore[method-assign]
    return recovery


def keep(recovery: Recovery, pid: str, offsets: list[str], namespace: str = "/") -> None:
    log = Log(100, 60.0)
    for offset in offsets:
        log.add(Entry(offset, namespace, None, (), "said", [offset], 0.0))
    recovery.kept[pid] = Kept(pid, "the-sid", namespace, ["room"], {"k": 1}, 1e12, log)
    recovery._loop_time = lambda: 1.0


def state(sid: str = "the-sid") -> dict[str, Any]:
    return {"sid": sid, "namespace": "/", "rooms": [], "data": None, "missed": [], "known": []}


# -- a wrong offset destroys nothing -----------------------------------------------------------


def test_a_wrong_offset_or_namespace_leaves_the_session_kept() -> None:
    recovery = node(A, Peers([A, B]))
    pid = pid_of(A)
    keep(recovery, pid, ["t.1", "t.2", "t.3"])
    assert recovery.take(pid, "t.9") == REFUSED
    assert recovery.take(pid, "t.2", "/other") == REFUSED
    assert pid in recovery.kept
    assert recovery.stats["recovery_refused"] == 2
    got = recovery.take(pid, "t.1", "/")
    assert isinstance(got, dict) and [e.offset for e in got["missed"]] == ["t.2", "t.3"]
    assert pid not in recovery.kept


async def test_a_home_refuses_without_forwarding_and_keeps_the_session() -> None:
    peers = Peers([A, B, C])
    home = node(A, peers)
    pid = pid_of(A)
    keep(home, pid, ["t.1"])
    assert await home._serve_fetch({"pid": pid, "offset": "t.2"}, C) == {"refused": True}
    assert peers.calls == [] and pid in home.kept
    reply = await home._serve_fetch({"pid": pid, "offset": "t.1", "namespace": "/"}, C)
    assert reply["state"]["sid"] == "the-sid"
    assert home.adopters[pid] == C  # the home knows where it went


# -- a forged pid is nobody's --------------------------------------------------------------------


def test_only_pids_made_under_the_cluster_secret_are_genuine() -> None:
    recovery = node(A, Peers([A, B]))
    assert recovery.genuine(pid_of(B))
    assert recovery.genuine(pid_of(D, generation=1))  # any member, any generation
    forged = pid_of(B)
    assert not recovery.genuine(forged[:-1] + ("A" if forged[-1] != "A" else "B"))
    assert not recovery.genuine(make_sid(SidKeys.from_secret("another"), B, GEN, bytes(12)))
    assert not recovery.genuine(secrets.token_urlsafe(21))
    assert not recovery.genuine("")


def test_without_keys_a_pid_is_genuine_only_when_it_names_a_member() -> None:
    recovery = node(A, Peers([A, B]), keys=None)
    assert recovery._keys is None  # a lambda has no node to take them from
    assert recovery.genuine(pid_of(B))
    assert not recovery.genuine(secrets.token_urlsafe(21))


async def test_a_peer_asked_for_a_forged_pid_answers_nothing_and_asks_nobody() -> None:
    peers = Peers([A, B, C])
    home = node(A, peers)
    assert await home._serve_fetch({"pid": "x" * 28, "offset": "t.1"}, B) == {}
    assert peers.calls == []


# -- a genuine pid: one call, to one peer -------------------------------------------------------


async def test_a_pid_minted_by_a_live_peer_is_asked_of_that_peer_only() -> None:
    peers = Peers([A, B, C, D])
    recovery = node(A, peers)
    peers.replies[B] = state()
    got = await recovery._fetch(pid_of(B), "t.1", "/")
    assert got is not None and got["sid"] == "the-sid"
    assert peers.calls == [(B, False)]
    peers.calls.clear()
    peers.replies[B] = None  # B holds nothing and knows nothing
    assert await recovery._fetch(pid_of(B), "t.1", "/") is None
    assert peers.calls == [(B, False)]


async def test_a_pid_this_process_minted_and_does_not_hold_costs_no_call() -> None:
    peers = Peers([A, B, C])
    recovery = node(A, peers)
    assert await recovery._fetch(pid_of(A), "t.1", "/") is None
    assert peers.calls == []


@pytest.mark.parametrize("gone", ["dead", "restarted"])
async def test_a_gone_home_is_stood_in_for_by_its_successor(gone: str) -> None:
    # B drained (it handed its sessions and pointers to its successor), then either went
    # away or restarted under a new generation
    peers = Peers([A, C, D] + ([B] if gone == "restarted" else []))
    old = pid_of(B, generation=GEN - 1)
    if gone == "restarted":
        # the node the client lands on asks B (live), which forwards to its successor
        restarted = node(B, peers)
        successor = successors(B, [A, C, D])[0]
        peers.replies[successor] = state()
        got = await restarted._serve_fetch({"pid": old, "offset": "t.1"}, A)
        assert got["state"]["sid"] == "the-sid"
        assert peers.calls == [(successor, True)]
        assert restarted.adopters[old] == A
        return
    lands = next(u for u in [A, C, D] if successors(B, [A, C, D])[0] != u)
    recovery = node(lands, peers)
    successor = successors(B, [A, C, D])[0]
    peers.replies[successor] = state()
    assert await recovery._fetch(old, "t.1", "/") is not None
    assert peers.calls == [(successor, False)]


async def test_a_home_forwards_along_its_pointer_and_remembers_the_new_holder() -> None:
    peers = Peers([A, B, C, D])
    home = node(A, peers)
    pid = pid_of(A)
    home._point(pid, B)  # restored on B once; B kept it again when its client went away
    peers.replies[B] = state()
    reply = await home._serve_fetch({"pid": pid, "offset": "t.1", "namespace": "/"}, C)
    assert reply["state"]["sid"] == "the-sid"
    assert peers.calls == [(B, True)]
    assert home.adopters[pid] == C
    # the client comes back on the home itself: it asks C, and the session is here again
    peers.calls.clear()
    peers.replies[C] = state()
    assert await home._fetch(pid, "t.1", "/") is not None
    assert peers.calls == [(C, True)]
    assert pid not in home.adopters


async def test_following_pointers_is_bounded_and_never_loops() -> None:
    peers = Peers([A, B, C, D])
    home = node(A, peers)
    pid = pid_of(A)
    home._point(pid, B)
    peers.replies.update({B: C, C: D, D: B})  # a cycle of stale pointers
    assert await home._serve_fetch({"pid": pid, "offset": "t.1"}, A) == {}
    assert [p for p, _ in peers.calls] == [B, C, D]
    assert len(peers.calls) <= MAX_FORWARDS
    peers.calls.clear()
    peers.replies[B] = REFUSED  # the holder has it, with another offset: stop there
    assert await home._serve_fetch({"pid": pid, "offset": "t.1"}, C) == {}
    assert peers.calls == [(B, True)]


async def test_a_peer_asked_with_forwarded_answers_only_from_what_it_holds() -> None:
    peers = Peers([A, B, C])
    holder = node(B, peers)
    pid = pid_of(A)
    holder._point(pid, C)
    assert await holder._serve_fetch({"pid": pid, "offset": "t.1", "forwarded": True}, A) == {
        "adopter": C
    }
    assert peers.calls == []


# -- successors -----------------------------------------------------------------------------


def test_successors_agree_everywhere_and_survive_another_member_leaving() -> None:
    members = [A, B, C, D, "http://10.0.0.5:8000"]
    ranked = successors(A, members)
    assert A not in ranked and len(ranked) == 4
    assert successors(A, list(reversed(members))) == ranked
    # a member that goes changes nobody else's rank
    without = successors(A, [m for m in members if m != ranked[1]])
    assert without == [m for m in ranked if m != ranked[1]]


# -- hand-off ---------------------------------------------------------------------------------


async def test_a_call_during_a_hand_off_waits_for_it_then_points_to_the_adopter() -> None:
    peers = Peers([A, B, C])
    draining = node(A, peers)
    draining.enabled = True
    pid = pid_of(A)
    keep(draining, pid, ["t.1"])
    release = asyncio.Event()

    async def hand(handing: dict[str, Kept], now: float, bound: float | None) -> str | None:
        assert pid in handing and pid not in draining.kept
        await release.wait()
        return C

    draining._hand = hand  # type: ignore[method-assign]
    handing = asyncio.ensure_future(draining.hand_off())
    await asyncio.sleep(0)
    asked = asyncio.ensure_future(draining._take_here(pid, "t.1", "/"))
    await asyncio.sleep(0.05)
    assert not asked.done()
    release.set()
    assert await handing == 1
    assert await asked == C


async def test_a_failed_hand_off_keeps_every_session_in_order() -> None:
    peers = Peers([A, B])
    draining = node(A, peers)
    draining.enabled = True
    first, second, meanwhile = pid_of(A), pid_of(A), pid_of(A)
    keep(draining, first, ["t.1"])
    keep(draining, second, ["t.1"])

    async def hand(handing: dict[str, Kept], now: float, bound: float | None) -> str | None:
        keep(draining, meanwhile, ["t.1"])  # kept while the hand-off was in flight
        return None

    draining._hand = hand  # type: ignore[method-assign]
    assert await draining.hand_off() == 0
    assert list(draining.kept) == [first, second, meanwhile]


async def test_a_session_still_connected_here_is_waited_for_briefly() -> None:
    recovery = node(A, Peers([A, B]))
    pid = pid_of(A)
    recovery._bind(("/", "the-sid"), pid)
    loop = asyncio.get_running_loop()

    def went_away() -> None:
        recovery._unbind(("/", "the-sid"))
        keep(recovery, pid, ["t.1"])

    loop.call_later(0.05, went_away)
    got = await recovery._take_here(pid, "t.1", "/")
    assert isinstance(got, dict)
    # still connected after the wait: nothing (and no call)
    other = pid_of(A)
    recovery._bind(("/", "another"), other)
    started = loop.time()
    assert await recovery._take_here(other, "t.1", "/") is None
    assert HANDOFF_WAIT <= loop.time() - started < HANDOFF_WAIT + 0.5


async def test_a_session_dropped_and_handed_off_while_waited_for_is_followed() -> None:
    """On a draining node, a call for a session still connected waits for it to be kept;
    the drain can keep it and hand it to its successor at once. The answer is then the
    pointer to that peer, once the hand-off ended (it was None: the client reconnected
    unrecovered, seen in the rolling-restart recovery test)."""
    draining = node(A, Peers([A, B, C]))
    draining.enabled = True
    pid = pid_of(A)
    draining._bind(("/", "the-sid"), pid)
    release = asyncio.Event()

    async def hand(handing: dict[str, Kept], now: float, bound: float | None) -> str | None:
        await release.wait()
        return C

    draining._hand = hand  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    handing: list[asyncio.Future[int]] = []

    def dropped_then_handed() -> None:
        draining._unbind(("/", "the-sid"))
        keep(draining, pid, ["t.1"])
        handing.append(asyncio.ensure_future(draining.hand_off()))
        loop.call_later(0.05, release.set)

    loop.call_later(0.02, dropped_then_handed)
    assert await draining._take_here(pid, "t.1", "/") == C
    assert await handing[0] == 1


async def test_a_session_handed_to_the_node_asking_for_it_is_taken_there() -> None:
    """A draining node's successor can be the very node its client reconnected to: the
    session is handed there while that node's call waits for it, and the answer points back
    to the asker. The asker takes it from what it now holds (it answered None: the client
    reconnected unrecovered, seen in the rolling-restart recovery test)."""
    peers = Peers([A, B, C])
    asker = node(C, peers)
    pid = pid_of(A)

    def handed_here(pid: str, offset: str, forwarded: bool) -> str:
        keep(asker, pid, ["t.1", "t.2"])  # the adoption lands before the answer
        return C

    # 1. asking the home: it waited, handed the session to its successor (the asker)
    peers.replies[A] = handed_here
    got = await asker._fetch(pid, "t.1", "/")
    assert got is not None and [e.offset for e in got["missed"]] == ["t.2"]
    assert peers.calls == [(A, False)]
    # 2. following a pointer: the holder answers from what it holds, a pointer to the asker
    peers.calls.clear()
    other = pid_of(A)
    asker._point(other, B)
    peers.replies[B] = handed_here
    got = await asker._fetch(other, "t.1", "/")
    assert got is not None and got["sid"] == "the-sid"
    assert peers.calls == [(B, True)]


async def test_a_home_whose_session_went_to_the_asker_points_it_there() -> None:
    """The home (or a fresh process under its URL) finds, along its pointer, that the
    session went to the very peer asking: it says so, and that peer takes it from what it
    holds (it answered None)."""
    peers = Peers([A, B, C])
    home = node(A, peers)
    pid = pid_of(A)
    home._point(pid, C)  # handed to C while C's call waited
    request = {"pid": pid, "offset": "t.1", "namespace": "/"}
    assert await home._serve_fetch(request, C) == {"adopter": C}
    assert peers.calls == []
    # one hop further: the holder B hands it to its successor C, which is asking the home
    home._point(pid, B)
    peers.replies[B] = C
    assert await home._serve_fetch(request, C) == {"adopter": C}
    assert peers.calls == [(B, True)]


def test_pointers_are_bounded() -> None:
    recovery = node(A, Peers([A, B]))
    pids = [pid_of(A) for _ in range(recovery.max_pointers + 2)]
    for pid in pids:
        recovery._point(pid, B)
    assert list(recovery.adopters) == pids[2:]
    recovery._point(pids[-1], A)  # pointing to itself: it is here
    assert pids[-1] not in recovery.adopters


# -- a session on the move to this node ----------------------------------------------------------


def _handoff(pid: str, offset: str) -> dict[str, Any]:
    entry = Entry(offset, "/", None, (), "said", [offset], 0.0)
    return {
        "groups": [
            {"log": [entry.to_wire()], "sessions": [[pid, "the-sid", "/", ["room"], None, 30.0]]}
        ],
        "pointers": [],
    }


async def test_a_recovery_that_finds_nothing_waits_for_a_draining_peers_hand_off_to_it() -> None:
    """The client is back here while the draining node that holds its session is about to
    hand it to this node (its successor); the home's stand-in knows nothing of it. Without
    the wait, the client came back unrecovered."""
    live = [A, B, C]
    here = successors(D, live)[0]  # the node D (draining) hands its sessions to
    home = next(m for m in live if m != here)
    peers = Peers(live, leaving=[D])
    peers.replies[home] = None  # restarted meanwhile: knows nothing of it
    recovery = node(here, peers)
    recovery._loop_time = lambda: 1.0
    pid = pid_of(home)
    fetch = asyncio.ensure_future(recovery._fetch(pid, "t.1", "/"))
    await asyncio.sleep(0.1)
    assert not fetch.done()  # waiting for D's hand-off
    recovery._adopt(_handoff(pid, "t.1"), D)
    got = await asyncio.wait_for(fetch, 1.0)
    assert isinstance(got, dict) and got["sid"] == "the-sid"
    assert recovery.stats["recovery_waited_handoffs"] == 1
    assert pid not in recovery.kept


async def test_with_nobody_draining_a_recovery_that_finds_nothing_does_not_wait() -> None:
    peers = Peers([A, B, C])
    peers.replies[B] = None
    recovery = node(A, peers)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await recovery._fetch(pid_of(B), "t.1", "/") is None
    assert loop.time() - began < 0.5


async def test_the_wait_for_a_hand_off_is_bounded() -> None:
    peers = Peers([A, B, C], leaving=[D])
    peers.replies[B] = None
    recovery = node(A, peers)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await recovery._fetch(pid_of(B), "t.1", "/") is None
    assert ADOPTION_WAIT - 0.1 <= loop.time() - began < ADOPTION_WAIT + 1.0
