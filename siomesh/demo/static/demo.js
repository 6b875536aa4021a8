// The chat page: plain DOM, no framework. State the tests read is kept on window.demo.
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var pollingOnly = params.get("transport") === "polling" || params.get("upgrade") === "0";
  var $ = function (id) { return document.getElementById(id); };

  var demo = window.demo = {
    pollingOnly: pollingOnly,
    connected: false,
    sid: null,
    owner: null,
    transport: null,
    nodes: [],
    messages: [],
    socket: null
  };

  // -- worker names: "worker 0", "worker 1", ... in the supervisor's order -------------------
  function hostPort(url) {
    return String(url || "").replace(/^[a-z]+:\/\//, "").replace(/\/$/, "");
  }
  function workerIndex(url) {
    var key = hostPort(url);
    for (var i = 0; i < demo.nodes.length; i++) {
      if (hostPort(demo.nodes[i]) === key) return i;
    }
    return -1;
  }
  function workerTag(url) {
    var span = document.createElement("span");
    var i = workerIndex(url);
    span.className = "worker w" + (i < 0 ? "x" : i % 6);
    span.textContent = i < 0 ? hostPort(url) : "worker " + i;
    span.title = url;
    return span;
  }
  function refreshOwner() {
    var el = $("owner");
    el.textContent = "";
    if (demo.owner) el.appendChild(workerTag(demo.owner));
    else el.textContent = "\u2013";
    el.dataset.node = demo.owner || "";
  }

  fetch("/cluster", { cache: "no-store" })
    .then(function (r) { return r.json(); })
    .then(function (data) {
      demo.nodes = data.nodes || [];
      refreshOwner();
      redrawRequests();
    })
    .catch(function () { /* names fall back to host:port */ });

  // -- the socket -------------------------------------------------------------------------------
  $("mode").textContent = pollingOnly ? "polling only" : "polling, upgrade allowed";
  var socket = demo.socket = io({
    transports: pollingOnly ? ["polling"] : ["polling", "websocket"],
    upgrade: !pollingOnly
  });

  function setTransport(name) {
    demo.transport = name;
    $("transport").textContent = name || "\u2013";
    $("transport").className = name === "websocket" ? "good" : "";
  }
  function setStatus(text, ok) {
    $("status").textContent = text;
    $("status").className = ok ? "good" : "bad";
  }

  socket.io.on("open", function () {
    var engine = socket.io.engine;
    setTransport(engine.transport.name);
    engine.on("upgrade", function (transport) {
      setTransport(transport.name);
      system("upgraded to " + transport.name);
      refreshJourney();
    });
  });

  socket.on("connect", function () {
    demo.connected = true;
    demo.sid = socket.id;
    setStatus("connected", true);
    setTransport(socket.io.engine.transport.name);
    socket.emit("join", currentName(), function (node) {
      demo.owner = node;
      refreshOwner();
    });
    socket.emit("whoami", function (node) {
      demo.owner = node;
      refreshOwner();
    });
    refreshJourney();
  });

  // -- the session's path: handshake, forwarded polls, WebSocket (taken over or relayed) --------
  function line(parts) {
    var li = document.createElement("li");
    parts.forEach(function (p) {
      li.appendChild(typeof p === "string" ? document.createTextNode(p) : p);
    });
    return li;
  }
  function drawJourney(j) {
    demo.journey = j;
    var list = $("journey");
    list.textContent = "";
    if (!j) { list.appendChild(line(["\u2013"])); return; }
    var h = j.handshake;
    list.appendChild(h.landed_on === h.served_by
      ? line(["handshake served by ", workerTag(h.served_by)])
      : line(["handshake landed on ", workerTag(h.landed_on), ", served by ",
              workerTag(h.served_by)]));
    var fwd = Object.keys(j.forwarded_by || {});
    if (fwd.length) {
      fwd.forEach(function (peer) {
        list.appendChild(line([String(j.forwarded_by[peer]) + " poll(s) forwarded by ",
                               workerTag(peer), " to ", workerTag(j.owner)]));
      });
    } else {
      list.appendChild(line(["no request forwarded so far (your browser reuses one " +
                             "connection, which stays on one worker)"]));
    }
    var ws = j.websocket;
    if (!ws) {
      list.appendChild(line([j.transport === "polling" ? "no WebSocket: long-polling"
                                                       : "WebSocket pending"]));
    } else if (ws.how === "taken over") {
      list.appendChild(line(["WebSocket landed on ", workerTag(ws.landed_on),
                             ", which took the session over from ", workerTag(ws.from),
                             ": nothing is relayed"]));
    } else if (ws.how === "relayed") {
      list.appendChild(line(["WebSocket landed on ", workerTag(ws.landed_on),
                             ", relayed to ", workerTag(j.owner),
                             " (" + (ws.reason || "no reason given") + ")"]));
    } else {
      list.appendChild(line(["WebSocket landed on the owner, ", workerTag(ws.landed_on)]));
    }
  }
  function refreshJourney() {
    if (!socket.connected) return;
    socket.emit("journey", drawJourney);
  }
  setInterval(refreshJourney, 3000);
  socket.on("disconnect", function (reason) {
    demo.connected = false;
    setStatus("disconnected (" + reason + ")", false);
    system("disconnected: " + reason);
  });
  socket.on("connect_error", function (err) {
    setStatus("connect error", false);
    system("connect error: " + err.message);
  });

  socket.on("chat", function (msg) {
    demo.messages.push(msg);
    var li = document.createElement("li");
    if (msg.sid === socket.id) li.className = "mine";
    var who = document.createElement("b");
    who.textContent = msg.name;
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = msg.text;
    var meta = document.createElement("small");
    meta.appendChild(document.createTextNode("handled by "));
    meta.appendChild(workerTag(msg.node));
    li.appendChild(who);
    li.appendChild(text);
    li.appendChild(meta);
    append(li);
  });

  function system(text) {
    var li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    append(li);
  }
  function append(li) {
    var log = $("log");
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.appendChild(li);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // -- name and sending -------------------------------------------------------------------------
  var nameBox = $("name");
  var stored = null;
  try { stored = localStorage.getItem("siomesh-demo-name"); } catch (e) { /* private mode */ }
  nameBox.value = params.get("name") || stored ||
    "guest-" + Math.floor(Math.random() * 9000 + 1000);
  function currentName() { return nameBox.value.trim() || "guest"; }
  nameBox.addEventListener("change", function () {
    try { localStorage.setItem("siomesh-demo-name", currentName()); } catch (e) { /* ignore */ }
    socket.emit("join", currentName());
  });

  $("send").addEventListener("submit", function (event) {
    event.preventDefault();
    var box = $("text");
    var text = box.value.trim();
    if (!text) return;
    box.value = "";
    socket.emit("chat", text);
    box.focus();
  });

  // -- the requests panel -----------------------------------------------------------------------
  var SHOWN = 40;
  var rows = {};
  function describe(entry, li) {
    li.textContent = "";
    li.className = "req " + entry.kind + (entry.pending ? " pending" : "") +
      (entry.via ? " forwarded" : "") + (entry.status >= 400 ? " failed" : "");
    var head = document.createElement("span");
    head.className = "what";
    head.textContent = entry.method + " " + entry.kind;
    li.appendChild(head);
    var where = document.createElement("span");
    where.className = "where";
    if (entry.pending) {
      where.textContent = entry.kind === "poll" ? "waiting (long-poll)\u2026" : "\u2026";
    } else if (entry.via) {
      where.appendChild(document.createTextNode("forwarded by "));
      where.appendChild(workerTag(entry.via));
      where.appendChild(document.createTextNode(" to "));
      where.appendChild(entry.servedBy ? workerTag(entry.servedBy)
                                       : document.createTextNode("the owner"));
    } else if (entry.servedBy) {
      where.appendChild(document.createTextNode("served by "));
      where.appendChild(workerTag(entry.servedBy));
    } else {
      where.textContent = entry.status ? "no siomesh header" : "aborted";
    }
    li.appendChild(where);
    var status = document.createElement("span");
    status.className = "status";
    status.textContent = entry.pending ? "" : (entry.status || "\u2013") + " \u00b7 " +
      entry.ms + " ms";
    li.appendChild(status);
  }
  function show(entry) {
    var list = $("requests");
    var li = rows[entry.id];
    if (!li) {
      li = rows[entry.id] = document.createElement("li");
      list.insertBefore(li, list.firstChild);
      while (list.children.length > SHOWN) {
        var last = list.lastChild;
        list.removeChild(last);
        for (var key in rows) if (rows[key] === last) delete rows[key];
      }
    }
    describe(entry, li);
    $("request-count").textContent = String(window.siomeshRequests.entries.length);
  }
  function redrawRequests() {
    window.siomeshRequests.entries.slice(-SHOWN).forEach(show);
  }
  redrawRequests();
  window.siomeshRequests.onChange(show);
})();
