"""A chat server that scales out with no sticky sessions: Starlette + python-socketio + SioMesh.

Run three workers on one port (the kernel spreads connections with no affinity at all)::

    pip install siomesh
    siomesh run app:app --workers 3 --port 8000      # from this directory

or one process per machine, each told where it is and who its peers are::

    SIOMESH_NODE_URL=http://10.0.0.1:8000 SIOMESH_PEERS=http://10.0.0.2:8000 \\
    SIOMESH_SECRET=... uvicorn app:app --host 0.0.0.0 --port 8000

Then open http://127.0.0.1:8000/ in two tabs. ``sio.emit`` reaches every client on every node:
SioMesh installs its peer-to-peer adapter on the server (no Redis needed).
"""

from __future__ import annotations

import os
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from siomesh import SioMesh

NODE = os.environ.get("SIOMESH_NODE_URL", "this node")

# async_mode="asgi" matters: with aiohttp installed, python-socketio would pick aiohttp mode.
sio = socketio.AsyncServer(async_mode="asgi")


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    await sio.save_session(sid, {"name": "anonymous"})


@sio.event
async def join(sid: str, name: str) -> str:
    await sio.save_session(sid, {"name": str(name)[:40] or "anonymous"})
    return NODE


@sio.event
async def chat(sid: str, text: str) -> None:
    session = await sio.get_session(sid)
    # A plain broadcast: the mesh adapter relays it to the clients of every other node.
    await sio.emit("chat", {"name": session["name"], "text": str(text)[:2000], "node": NODE})


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>siomesh chat</title>
<style>
  body { font: 15px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  #log { border: 1px solid #ccc; border-radius: 6px; height: 20rem; overflow-y: auto;
         padding: .5rem; list-style: none; }
  small { color: #777; }
</style>
<p>Name <input id="name" value="guest"> &middot; owner: <b id="owner">?</b></p>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off" size="50"> <button>Send</button></form>
<!-- For production, serve your own copy of the client instead of the CDN. -->
<script src="https://cdn.socket.io/4.8.1/socket.io.min.js"></script>
<script>
  const socket = io();
  const $ = (id) => document.getElementById(id);
  const join = () => socket.emit("join", $("name").value, (node) => $("owner").textContent = node);
  socket.on("connect", join);
  $("name").addEventListener("change", join);
  socket.on("chat", (m) => {
    const li = document.createElement("li");
    li.textContent = m.name + ": " + m.text + " ";
    const via = document.createElement("small");
    via.textContent = "(" + m.node + ")";
    li.append(via);
    $("log").append(li);
  });
  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("text").value) socket.emit("chat", $("text").value);
    $("text").value = "";
  });
</script>
"""


async def index(request: Request) -> Response:
    return HTMLResponse(PAGE)


web = Starlette(routes=[Route("/", index)])

# SioMesh reads SIOMESH_NODE_URL, SIOMESH_PEERS and SIOMESH_SECRET (``siomesh run`` sets them).
app = SioMesh(socketio.ASGIApp(sio, other_asgi_app=web))
