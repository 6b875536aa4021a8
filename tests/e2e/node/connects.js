// Many default-transport (polling, then WebSocket) npm socket.io-client sessions, opened in
// waves, each checked end to end: connected (a CONNECT never answered is a lost CONNECT),
// upgraded, and acked echoes that come back exactly once and in order.
//
//   node connects.js URL [CLIENTS] [WAVE] [ECHOES]
//
// Prints one JSON object on stdout. Every wait is bounded; the process always exits.
"use strict";

const { io } = require("socket.io-client");

const [url, clientsArg, waveArg, echoesArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg || 100);
const WAVE = Number(waveArg || 50);
const ECHOES = Number(echoesArg || 3);
const WAIT_MS = 15000;

if (!url) {
  console.error("usage: node connects.js URL [CLIENTS] [WAVE] [ECHOES]");
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.error("connects.js: overall timeout");
  process.exit(3);
}, 240000);

function bounded(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function one(index, result) {
  const socket = io(url, { reconnection: false, forceNew: true, timeout: WAIT_MS });
  try {
    await bounded(
      new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      }),
      WAIT_MS,
      "connect"
    );
    result.connected++;
  } catch (err) {
    result.lostConnect++;
    result.errors.push(`client ${index} connect: ${err.message}`);
    return socket;
  }
  const engine = socket.io.engine;
  if (engine.transport.name !== "websocket") {
    try {
      await bounded(new Promise((r) => engine.once("upgrade", r)), WAIT_MS, "upgrade");
    } catch (err) {
      result.errors.push(`client ${index} upgrade: ${err.message}`);
    }
  }
  if (engine.transport.name === "websocket") result.upgraded++;
  const got = [];
  socket.on("b", () => {}); // keep the socket subscribed to something
  for (let i = 0; i < ECHOES; i++) {
    try {
      got.push((await socket.timeout(WAIT_MS).emitWithAck("echo", { index, i })).i);
    } catch (err) {
      result.errors.push(`client ${index} echo ${i}: ${err.message}`);
    }
  }
  if (got.length === ECHOES && got.every((v, i) => v === i)) result.echoedInOrder++;
  return socket;
}

async function main() {
  const result = {
    clients: CLIENTS,
    connected: 0,
    lostConnect: 0,
    upgraded: 0,
    echoedInOrder: 0,
    errors: [],
  };
  const sockets = [];
  for (let start = 0; start < CLIENTS; start += WAVE) {
    const wave = [];
    for (let i = start; i < Math.min(CLIENTS, start + WAVE); i++) wave.push(one(i, result));
    sockets.push(...(await Promise.all(wave)));
  }
  for (const s of sockets) s.disconnect();
  result.errors = result.errors.slice(0, 20);
  process.stdout.write(JSON.stringify(result) + "\n");
  clearTimeout(watchdog);
  setTimeout(() => process.exit(0), 200);
}

main();
