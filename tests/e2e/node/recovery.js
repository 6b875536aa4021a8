// Connection state recovery with the npm socket.io-client: CLIENTS sockets join one room and
// receive a paced stream of room broadcasts (client 0 says "<tag>:<i>" to the room every
// INTERVAL_MS; the app broadcasts it as "said"); CUT of them have their transport cut in the
// middle of it (the engine is closed without a goodbye, as a dropped network does), reconnect
// through the balancer to any node, and must come back recovered: same socket.id, still in the
// room, every broadcast received exactly once and in order. The test compares what each
// client received with what the others received: the same sequence, with no gap.
//
//   node recovery.js URL [CLIENTS] [CUT] [COUNT] [INTERVAL_MS] [CUTS] [TRANSPORTS]
//
// CUTS cuts happen, spread over the stream. Prints one JSON object on stdout. Every wait is
// bounded; the process always exits.
"use strict";

const { io } = require("socket.io-client");

const [url, clientsArg, cutArg, countArg, intervalArg, cutsArg, transportsArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg || 10);
const CUT = Number(cutArg || 5);
const COUNT = Number(countArg || 60);
const INTERVAL_MS = Number(intervalArg || 50);
const CUTS = Number(cutsArg || 1);
// "polling": every client stays on HTTP long-polling; default: polling, then WebSocket
const TRANSPORTS = transportsArg ? transportsArg.split(",") : ["polling", "websocket"];
const WAIT_MS = 15000;
const ROOM = `recovery-${process.pid}`;
const TAG = `t${process.pid}`;

const watchdog = setTimeout(() => {
  console.error("recovery.js: overall timeout");
  process.exit(3);
}, 120000);

function bounded(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

let sent = 0;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function open(index) {
  const socket = io(url, {
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    transports: TRANSPORTS,
    timeout: WAIT_MS,
  });
  const state = {
    index,
    socket,
    got: [],
    ids: [],
    recovered: [],
    connects: 0,
    offsetsSeen: 0,
    events: [],
  };
  // ``sent``: how many "say" the sender had emitted when this happened (diagnostics)
  socket.on("disconnect", (reason) => {
    const engine = socket.io.engine;
    const transport = engine && engine.transport ? engine.transport.name : "none";
    state.events.push(`disconnect: ${reason} @${sent} (${transport} ${engine ? engine.id : ""})`);
  });
  socket.io.on("open", () => {
    const e = socket.io.engine;
    state.events.push(`open ${e.id} ${e.transport.name} @${sent}`);
    e.on("upgrade", () => state.events.push(`upgrade ${e.id} @${sent}`));
    e.on("upgradeError", (err) => state.events.push(`upgradeError ${e.id} ${err.message} @${sent}`));
  });
  socket.on("connect_error", (err) => state.events.push(`connect_error: ${err.message}`));
  socket.io.on("reconnect_failed", () => state.events.push("reconnect_failed"));
  socket.on("connect", () => {
    state.events.push(`connect @${sent} ${socket.io.engine.id} ${socket.recovered}`);
    state.connects++;
    state.ids.push(socket.id);
    state.recovered.push(socket.recovered);
  });
  socket.on("said", (payload, offset) => {
    if (payload && payload.room === ROOM && typeof payload.message === "string") {
      const [tag, i] = payload.message.split(":");
      if (tag === TAG) state.got.push(Number(i));
    }
    if (typeof offset === "string") state.offsetsSeen++;
  });
  return state;
}

async function main() {
  const result = { clients: CLIENTS, cut: CUT, count: COUNT, cuts: CUTS, error: null, per: [] };
  const states = [];
  try {
    for (let i = 0; i < CLIENTS; i++) states.push(open(i));
    await bounded(
      Promise.all(
        states.map((s) => (s.socket.connected ? null : new Promise((r) => s.socket.once("connect", r))))
      ),
      WAIT_MS,
      "connect"
    );
    await Promise.all(states.map((s) => s.socket.timeout(WAIT_MS).emitWithAck("join", ROOM)));
    const sender = states[0].socket;
    // emits made while the sender reconnects wait in its buffer and go out, in order, after
    const done = (async () => {
      for (let i = 0; i < COUNT; i++) {
        sender.emit("say", { room: ROOM, message: `${TAG}:${i}` });
        sent = i + 1;
        await sleep(INTERVAL_MS);
      }
    })();
    const victims = states.slice(CLIENTS - CUT);
    for (let c = 1; c <= CUTS; c++) {
      await sleep((COUNT * INTERVAL_MS * c) / (CUTS + 1) - (c > 1 ? (COUNT * INTERVAL_MS) / (CUTS + 1) : 0));
      for (const v of victims) v.socket.io.engine.close(); // no goodbye: the server keeps the session
    }
    await done;
    // let the last broadcasts (and any replay) arrive
    const deadline = Date.now() + WAIT_MS;
    while (
      Date.now() < deadline &&
      states.some((s) => s.got[s.got.length - 1] !== COUNT - 1 || !s.socket.connected)
    ) {
      await sleep(50);
    }
    await sleep(300); // any replay still in flight
    while (Date.now() < deadline && states.some((s) => !s.socket.connected)) await sleep(50);
    for (const s of states) {
      result.per.push({
        index: s.index,
        victim: victims.includes(s),
        connected: s.socket.connected,
        connects: s.connects,
        ids: s.ids,
        recovered: s.recovered,
        received: s.got.length,
        got: s.got,
        offsetsSeen: s.offsetsSeen,
        events: s.events.slice(-40),
      });
    }
  } catch (err) {
    result.error = `${err.name}: ${err.message}`;
  } finally {
    for (const s of states) s.socket.disconnect();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
  clearTimeout(watchdog);
  setTimeout(() => process.exit(0), 200);
}

main();
