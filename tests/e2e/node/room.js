// npm socket.io-client sessions beside other clients, against tests.apps.workers_app: each
// connects (even indexes polling-only, odd ones polling then WebSocket), asks whoami, echoes
// three payloads (one binary), joins a room, then records the numbered "news" broadcasts that
// someone else (the Python test) sends to that room.
//
//   node room.js URL CLIENTS SHOUTS [ROOM]
//
// Prints two JSON lines on stdout: {"ready": ...} once every client has joined (or failed),
// then {"done": ...} once every client heard SHOUTS broadcasts (or 30 s passed), 300 ms later
// so that a duplicate shows. Every wait is bounded; the process always exits.
"use strict";

const { io } = require("socket.io-client");

const [url, clientsArg, shoutsArg, roomArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg || 40);
const SHOUTS = Number(shoutsArg || 20);
const ROOM = roomArg || "all";
const WAIT_MS = 15000;
const NEWS_MS = 30000;
const WAVE = 20;

if (!url) {
  console.error("usage: node room.js URL CLIENTS SHOUTS [ROOM]");
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.error("room.js: overall timeout");
  process.exit(3);
}, 150000);

function bounded(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function one(index, result) {
  const polling = index % 2 === 0;
  const socket = io(url, {
    transports: polling ? ["polling"] : ["polling", "websocket"],
    upgrade: !polling,
    reconnection: false,
    forceNew: true,
    timeout: WAIT_MS,
  });
  const entry = { index, mode: polling ? "polling" : "upgrade", owner: "", news: [] };
  result.clients.push(entry);
  socket.on("news", (data) => entry.news.push(Number(data.seq)));
  socket.on("disconnect", (reason) => result.errors.push(`client ${index} disconnect: ${reason}`));
  try {
    await bounded(
      new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      }),
      WAIT_MS,
      "connect"
    );
    const engine = socket.io.engine;
    if (!polling && engine.transport.name !== "websocket") {
      await bounded(new Promise((r) => engine.once("upgrade", r)), WAIT_MS, "upgrade");
    }
    entry.owner = (await socket.timeout(WAIT_MS).emitWithAck("whoami")).node;
    for (let k = 0; k < 2; k++) {
      const payload = { client: index, k, text: "héllo ✓ " + "x".repeat(k * 600) };
      const reply = await socket.timeout(WAIT_MS).emitWithAck("echo", payload);
      if (JSON.stringify(reply) !== JSON.stringify(payload)) {
        result.errors.push(`client ${index} echo ${k}: got ${JSON.stringify(reply).slice(0, 200)}`);
      }
    }
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const back = await socket.timeout(WAIT_MS).emitWithAck("echo", bytes);
    if (!Buffer.isBuffer(back) || !back.equals(bytes)) {
      result.errors.push(`client ${index} binary echo: got ${typeof back}`);
    }
    if ((await socket.timeout(WAIT_MS).emitWithAck("join", ROOM)) !== true) {
      result.errors.push(`client ${index}: join not acked with true`);
    }
    entry.transport = engine.transport.name;
  } catch (err) {
    result.errors.push(`client ${index} (${entry.mode}): ${err.message}`);
  }
  return socket;
}

async function main() {
  const result = { clients: [], errors: [] };
  const sockets = [];
  for (let start = 0; start < CLIENTS; start += WAVE) {
    const wave = [];
    for (let i = start; i < Math.min(CLIENTS, start + WAVE); i++) wave.push(one(i, result));
    sockets.push(...(await Promise.all(wave)));
  }
  result.clients.sort((a, b) => a.index - b.index);
  process.stdout.write(
    JSON.stringify({
      ready: true,
      owners: result.clients.map((c) => c.owner),
      transports: result.clients.map((c) => c.transport || null),
      errors: result.errors.slice(0, 20),
    }) + "\n"
  );
  const deadline = Date.now() + NEWS_MS;
  while (Date.now() < deadline && !result.clients.every((c) => c.news.length >= SHOUTS)) {
    await sleep(50);
  }
  await sleep(300);
  for (const s of sockets) s.disconnect();
  process.stdout.write(
    JSON.stringify({
      done: true,
      news: result.clients.map((c) => c.news),
      modes: result.clients.map((c) => c.mode),
      errors: result.errors.filter((e) => !e.includes("io client disconnect")).slice(0, 20),
    }) + "\n"
  );
  clearTimeout(watchdog);
  setTimeout(() => process.exit(0), 200);
}

main();
