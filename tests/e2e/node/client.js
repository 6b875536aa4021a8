// The npm socket.io-client against a siomesh cluster running tests.apps.echo.
//
//   node client.js URL MODE [CLIENTS] [ROUNDS]
//
// MODE is "polling" (transports ["polling"]) or "upgrade" (polling, then WebSocket). Prints one
// JSON object on stdout: the owners and transports seen, echo failures, and what a room
// broadcast from client 0 reached. Every wait is bounded; the process always exits.
//
// The kernel picks a worker for each new connection at random, so CLIENTS sessions may all land
// on one worker (6 on 3 workers: p = 1/243, and CI met it). A cross-worker broadcast needs two
// owners, so the script connects more clients, up to MAX_CLIENTS, until it has at least CLIENTS
// and two owners: all of 24 on one worker would be p = 3^-23.
"use strict";

const { io } = require("socket.io-client");

const [url, mode, clientsArg, roundsArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg || 6);
const ROUNDS = Number(roundsArg || 5);
const MAX_CLIENTS = Math.max(CLIENTS, 24);
const WAIT_MS = 10000;

if (!url || !["polling", "upgrade"].includes(mode)) {
  console.error("usage: node client.js URL polling|upgrade [CLIENTS] [ROUNDS]");
  process.exit(2);
}

// Never hang: the Python test also bounds us, but a clear message is better than a kill.
const watchdog = setTimeout(() => {
  console.error("client.js: overall timeout");
  process.exit(3);
}, 60000);

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function connect() {
  const socket = io(url, {
    transports: mode === "polling" ? ["polling"] : ["polling", "websocket"],
    upgrade: mode !== "polling",
    reconnection: false,
    forceNew: true,
    timeout: WAIT_MS,
  });
  const opened = new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return withTimeout(opened, WAIT_MS, "connect").then(() => socket);
}

function upgraded(socket) {
  const engine = socket.io.engine;
  if (engine.transport.name === "websocket") return Promise.resolve();
  return withTimeout(
    new Promise((resolve) => engine.once("upgrade", resolve)),
    WAIT_MS,
    "upgrade"
  );
}

async function echoRounds(socket, index, errors) {
  for (let round = 0; round < ROUNDS; round++) {
    const payload = { client: index, round, text: "héllo ✓ " + "x".repeat(round * 400) };
    try {
      const reply = await socket.timeout(WAIT_MS).emitWithAck("echo", payload);
      if (JSON.stringify(reply) !== JSON.stringify(payload)) {
        errors.push(`client ${index} round ${round}: got ${JSON.stringify(reply).slice(0, 200)}`);
      }
    } catch (err) {
      errors.push(`client ${index} round ${round}: ${err.message}`);
    }
  }
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  try {
    const reply = await socket.timeout(WAIT_MS).emitWithAck("echo", bytes);
    if (!Buffer.isBuffer(reply) || !reply.equals(bytes)) {
      errors.push(`client ${index} binary: got ${typeof reply}`);
    }
  } catch (err) {
    errors.push(`client ${index} binary: ${err.message}`);
  }
}

async function main() {
  const result = {
    mode,
    clients: CLIENTS,
    owners: [],
    transports: [],
    echoErrors: [],
    broadcast: null,
    error: null,
  };
  const sockets = [];
  const firstOwners = [];
  try {
    while (
      sockets.length < MAX_CLIENTS &&
      (sockets.length < CLIENTS || new Set(firstOwners).size < 2)
    ) {
      const socket = await connect();
      sockets.push(socket);
      firstOwners.push(await socket.timeout(WAIT_MS).emitWithAck("whoami"));
    }
    result.clients = sockets.length;
    if (mode === "upgrade") await Promise.all(sockets.map(upgraded));
    result.owners = await Promise.all(
      sockets.map((s) => s.timeout(WAIT_MS).emitWithAck("whoami"))
    );
    // an upgrade (forwarded or not) keeps the session where it was made
    result.ownerChanged = result.owners.filter((o, i) => o !== firstOwners[i]).length;
    result.transports = sockets.map((s) => s.io.engine.transport.name);
    await Promise.all(sockets.map((s, i) => echoRounds(s, i, result.echoErrors)));

    // Room broadcast: everybody joins, client 0 says something, everybody must hear it.
    const room = `e2e-${mode}-${process.pid}`;
    await Promise.all(sockets.map((s) => s.timeout(WAIT_MS).emitWithAck("join", room)));
    const message = `hello ${room}`;
    const heard = sockets.map(
      (s) =>
        new Promise((resolve) => {
          const timer = setTimeout(() => resolve(false), 5000);
          s.on("said", (data) => {
            if (data && data.room === room && data.message === message) {
              clearTimeout(timer);
              resolve(true);
            }
          });
        })
    );
    await sockets[0].timeout(WAIT_MS).emitWithAck("say", { room, message });
    const got = await Promise.all(heard);
    const senderOwner = result.owners[0];
    result.broadcast = {
      expected: sockets.length,
      received: got.filter(Boolean).length,
      crossWorkerExpected: result.owners.filter((o) => o !== senderOwner).length,
      crossWorkerReceived: got.filter((ok, i) => ok && result.owners[i] !== senderOwner).length,
    };
  } catch (err) {
    result.error = `${err.name}: ${err.message}`;
  } finally {
    for (const s of sockets) s.disconnect();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
  clearTimeout(watchdog);
  process.exit(0);
}

main();
