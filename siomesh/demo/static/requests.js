// Records every Engine.IO HTTP request the page makes, with the worker that served it.
//
// Loaded before socket.io.min.js: the client creates its XMLHttpRequest objects later, from the
// patched prototype, so each one reports its method, path, status and the siomesh debug headers
// (x-siomesh-served-by: the session's owner; x-siomesh-via: the worker that forwarded it).
(function () {
  "use strict";
  var MAX = 200;
  var entries = [];
  var listeners = [];
  var nextId = 1;

  function notify(entry) {
    for (var i = 0; i < listeners.length; i++) {
      try { listeners[i](entry); } catch (err) { console.error(err); }
    }
  }

  function kind(method, url) {
    if (method === "POST") return "send";
    return /[?&]sid=/.test(url) ? "poll" : "handshake";
  }

  var proto = window.XMLHttpRequest.prototype;
  var open = proto.open;
  var send = proto.send;

  proto.open = function (method, url) {
    this.__siomesh = { method: String(method).toUpperCase(), url: String(url) };
    return open.apply(this, arguments);
  };

  proto.send = function () {
    var info = this.__siomesh;
    if (info && info.url.indexOf("/socket.io/") !== -1) {
      var xhr = this;
      var entry = {
        id: nextId++,
        method: info.method,
        kind: kind(info.method, info.url),
        started: Date.now(),
        ms: null,
        status: null,
        servedBy: null,
        via: null,
        pending: true
      };
      entries.push(entry);
      if (entries.length > MAX) entries.shift();
      notify(entry);
      xhr.addEventListener("loadend", function () {
        entry.pending = false;
        entry.ms = Date.now() - entry.started;
        entry.status = xhr.status;
        entry.servedBy = xhr.getResponseHeader("x-siomesh-served-by");
        entry.via = xhr.getResponseHeader("x-siomesh-via");
        notify(entry);
      });
    }
    return send.apply(this, arguments);
  };

  window.siomeshRequests = {
    entries: entries,
    onChange: function (fn) { listeners.push(fn); }
  };
})();
