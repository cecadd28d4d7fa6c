// Scenarios for socket.io's Redis adapter protocol and Laravel's broadcaster against gateways of
// one fleet (one Redis), with no code of ours on the other side: the official socket.io-client,
// @socket.io/redis-emitter, a Node socket.io server with @socket.io/redis-adapter, and
// laravel-echo. Run by tests/tests/cluster_adapter.rs.
//
//   node tests/js/adapter.mjs <scenario> <redis-url> <mode> <gateway-https-base>... [-- <admin-base>...]
//
// Prints one JSON object with what the clients saw and exits 0 (a scenario that waits for the
// test to publish prints {"ready": ...} first); on failure prints {"error": ...} and exits 1.
import { io } from "socket.io-client";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { Emitter } from "@socket.io/redis-emitter";
import { Redis } from "ioredis";
import Echo from "laravel-echo";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { TRANSPORTS, sleep, ready as readyOn } from "./clients.mjs";

const [scenario, redisUrl, mode, ...rest] = process.argv.slice(2);
const cut = rest.indexOf("--");
const bases = cut < 0 ? rest : rest.slice(0, cut);
const admins = cut < 0 ? [] : rest.slice(cut + 1);
const transports = TRANSPORTS[mode];
if (!scenario || !redisUrl || !transports || bases.length === 0) {
  console.error("usage: adapter.mjs <scenario> <redis-url> <polling|websocket|upgrade> <base-url>... [-- <admin-url>...]");
  process.exit(2);
}

const common = { transports, rejectUnauthorized: false, reconnection: false, timeout: 5000 };
const closers = [];

/// A client of `base` (a gateway, or the Node peer) in namespace `nsp`, recording every event
/// it receives (binary arguments as {bin: [bytes]}) and why it disconnected.
function client(base, nsp = "/", query = {}) {
  const s = io(base + nsp, { ...common, forceNew: true, query });
  s.got = [];
  s.reasons = [];
  s.onAny((event, ...args) => s.got.push([event, ...args.map(plain)]));
  s.on("disconnect", (reason) => s.reasons.push(reason));
  closers.push(() => s.disconnect());
  return s;
}

/// Buffers as {bin: [...]} so that JSON shows them.
function plain(v) {
  if (Buffer.isBuffer(v) || v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    return { bin: [...new Uint8Array(v.buffer ? v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength) : v)] };
  }
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

const ready = (socket) => readyOn(socket, mode);

async function join(socket, room) {
  const answer = await socket.timeout(5000).emitWithAck("join", room);
  if (!answer || answer.ok !== true) throw new Error(`join ${room}: ${JSON.stringify(answer)}`);
}

async function until(cond, ms = 10000) {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(20);
  return cond();
}

/// What `sockets` received of `event` (each entry the arguments), once `expected` of them have
/// it (or 10 s passed), and 300 ms more for anything extra.
async function settle(sockets, event, expected) {
  const count = () => sockets.filter((s) => s.got.some((g) => g[0] === event)).length;
  await until(() => count() >= expected);
  await sleep(300);
  return Object.fromEntries(
    Object.entries(sockets.named || {}).map(([name, s]) => [name, s.got.filter((g) => g[0] === event).map((g) => g.slice(1))]),
  );
}

function redis() {
  const r = new Redis(redisUrl, { lazyConnect: false, maxRetriesPerRequest: 2 });
  closers.push(() => r.disconnect());
  return r;
}

/// A Node socket.io 4.8 server with @socket.io/redis-adapter 8.3 on the fleet's Redis, on a
/// free port, once Redis counts it and the `others` servers already there; its sockets join the
/// rooms named in their `rooms` query (comma-separated).
async function nodePeer(others) {
  const pub = redis();
  const sub = pub.duplicate();
  closers.push(() => sub.disconnect());
  const http = createServer();
  const server = new Server(http, { adapter: createAdapter(pub, sub), transports: ["polling", "websocket"] });
  server.on("connection", (socket) => {
    const rooms = String(socket.handshake.query.rooms || "").split(",").filter(Boolean);
    for (const r of rooms) socket.join(r);
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  closers.push(() => server.close());
  // The adapter subscribes asynchronously: wait until Redis counts this server.
  for (let i = 0; i < 200; i++) {
    const [, n] = await pub.pubsub("NUMSUB", "socket.io-request#/#");
    if (n >= 1 + others) break;
    await sleep(50);
  }
  return { server, url: `http://127.0.0.1:${http.address().port}` };
}

function named(map) {
  const list = Object.values(map);
  list.named = map;
  return list;
}

/// A call to the admin listener of gateway `node` (the first by default).
async function admin(path, body, node = 0) {
  const init = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(admins[node] + path, init);
  return { status: r.status, body: await r.json() };
}

/// Waits for the test to say it has published (a line on stdin).
async function waitForTest(readyInfo) {
  console.log(JSON.stringify({ ready: readyInfo }));
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line.trim() === "go") break;
  }
  rl.close();
}

const scenarios = {
  // @socket.io/redis-emitter against two gateways. a1 (node a) in r1; b1 (node b) in r1 and r2;
  // a2 (node a) in r2; b2 (node b) in no room; adm (node a) in namespace /admin.
  async emitter() {
    const [first, second] = bases;
    const s = {
      a1: client(first), b1: client(second), a2: client(first), b2: client(second), adm: client(first, "/admin"),
    };
    const all = named(s);
    await Promise.all(all.map(ready));
    await join(s.a1, "r1");
    await join(s.b1, "r1");
    await join(s.b1, "r2");
    await join(s.a2, "r2");
    const emitter = new Emitter(redis());
    const out = {};
    emitter.emit("to-all", 1, "two");
    out.all = await settle(all, "to-all", 4);
    emitter.to("r1").emit("one-room", "x");
    out.oneRoom = await settle(all, "one-room", 2);
    emitter.to("r1").to("r2").emit("rooms", { n: 1 });
    out.rooms = await settle(all, "rooms", 3);
    emitter.except("r1").emit("except");
    out.except = await settle(all, "except", 2);
    emitter.of("/admin").emit("admin-only", 3);
    out.admin = await settle(all, "admin-only", 1);
    emitter.emit("binary", Buffer.from([1, 2, 3]), { nested: Buffer.from([255]) });
    out.binary = await settle(all, "binary", 4);
    emitter.in("r2").socketsJoin("r3");
    await sleep(300);
    emitter.to("r3").emit("joined");
    out.joined = await settle(all, "joined", 2);
    emitter.in("r1").socketsLeave("r1");
    await sleep(300);
    emitter.to("r1").emit("after-leave");
    out.afterLeave = await settle(all, "after-leave", 0);
    emitter.serverSideEmit("server-only", 1);
    out.serverSide = await settle(all, "server-only", 0);
    emitter.in("r2").disconnectSockets(true);
    await until(() => s.b1.reasons.length > 0 && s.a2.reasons.length > 0);
    await sleep(300);
    out.reasons = Object.fromEntries(Object.entries(s).map(([n, c]) => [n, c.reasons]));
    out.connected = Object.fromEntries(Object.entries(s).map(([n, c]) => [n, c.connected]));
    return out;
  },

  // A Node socket.io server with the Redis adapter as a peer of two gateways. g1 (node a) and
  // n1 (Node) in room r; g2 (node b) and n2 (Node) in none. Both sides broadcast, fetch
  // sockets, list rooms, make sockets join, and ask for acks.
  async peer() {
    const [first, second] = bases;
    const peer = await nodePeer(bases.length);
    const s = {
      g1: client(first, "/", { name: "g1" }),
      g2: client(second, "/", { name: "g2" }),
      n1: client(peer.url, "/", { name: "n1", rooms: "r" }),
      n2: client(peer.url, "/", { name: "n2" }),
    };
    const all = named(s);
    await Promise.all(all.map(ready));
    await join(s.g1, "r");
    for (const [name, c] of Object.entries(s)) c.on("ask", (n, cb) => cb(`${name}:${n}`));
    const ids = Object.fromEntries(Object.entries(s).map(([n, c]) => [n, c.id]));
    const io = peer.server;
    const out = { ids };

    // Node's broadcasts reach the gateways' sockets.
    io.to("r").emit("node-room", 1);
    out.nodeRoom = await settle(all, "node-room", 2);
    io.emit("node-all", Buffer.from([7]));
    out.nodeAll = await settle(all, "node-all", 4);
    io.except("r").emit("node-except");
    out.nodeExcept = await settle(all, "node-except", 2);

    // The gateways' broadcasts (a relay into room r from g1, one to the whole namespace from
    // g2) reach Node's sockets.
    const relayAck = await s.g1.timeout(5000).emitWithAck("chat", { from: "g1" });
    out.relayRoom = await settle(all, "chat", 1);
    out.relayAck = relayAck;
    await s.g2.timeout(5000).emitWithAck("shout", { from: "g2" });
    out.relayAll = await settle(all, "shout", 3);

    // Node's fetchSockets and allRooms see the gateways' sockets and rooms.
    const fetched = await io.fetchSockets();
    out.nodeFetch = fetched.map((f) => ({ id: f.id, rooms: [...f.rooms], address: f.handshake && f.handshake.address, query: f.handshake && f.handshake.query }));
    out.nodeFetchRoom = (await io.in("r").fetchSockets()).map((f) => f.id);
    out.nodeRooms = [...(await io.of("/").adapter.allRooms())];

    // Node's socketsJoin reaches the gateways' sockets.
    io.in("r").socketsJoin("from-node");
    await sleep(300);
    io.to("from-node").emit("node-joined");
    out.nodeJoined = await settle(all, "node-joined", 2);

    // The gateway's fetchSockets, allRooms and socketsJoin see and reach Node's sockets.
    out.gwFetch = await admin("/sockets");
    out.gwFetchRoom = await admin("/sockets?room=r");
    out.gwRooms = await admin("/rooms");
    out.gwJoin = await admin("/sockets/join", { rooms: ["r"], join: ["from-gateway"] });
    await sleep(300);
    io.to("from-gateway").emit("gw-joined");
    out.gwJoined = await settle(all, "gw-joined", 2);

    // Broadcast with acks both ways.
    out.nodeAcks = (await io.timeout(3000).emitWithAck("ask", 1)).sort();
    out.gwAcks = await admin("/emit", { event: "ask", data: 2, timeout_ms: 3000 });
    return out;
  },

  // What the app sends through two gateways' publish API reaches a Node peer's sockets, and a
  // Node peer's serverSideEmitWithAck is answered by every server. g1 (first gateway) and n1
  // (the first Node peer) in room news; n2 (the same peer) in none. The first gateway
  // publishes one message to topic news, the second a batch of one to news and one to
  // topic other; then /emit on the second gateway asks room news for acks. The second Node
  // peer answers server-side event "question"; the gateways have nothing to say but must say
  // it.
  async app() {
    const [first] = bases;
    const peer = await nodePeer(bases.length);
    const listener = await nodePeer(bases.length + 1);
    listener.server.on("question", (n, cb) => cb(`listener:${n}`));
    const s = {
      g1: client(first, "/", { name: "g1" }),
      n1: client(peer.url, "/", { name: "n1", rooms: "news" }),
      n2: client(peer.url, "/", { name: "n2" }),
    };
    const all = named(s);
    await Promise.all(all.map(ready));
    await join(s.g1, "news");
    for (const [name, c] of Object.entries(s)) c.on("ask", (n, cb) => cb(`${name}:${n}`));
    const out = {};
    out.published = [
      await admin("/publish", { topic: "news", event: "note", data: { n: 1 } }, 0),
      await admin("/publish", [
        { topic: "news", event: "note", data: { n: 2 } },
        { topic: "other", event: "note", data: { n: 3 } },
      ], 1),
    ].map((r) => r.status);
    out.notes = await settle(all, "note", 2);
    out.emit = await admin("/emit", { room: "news", event: "ask", data: 7, timeout_ms: 3000 }, 1);
    const asked = Date.now();
    try {
      const answers = await peer.server.serverSideEmitWithAck("question", 5);
      out.serverSide = { answers: answers.map((a) => (a === undefined ? "<undefined>" : a)).sort() };
    } catch (e) {
      out.serverSide = { error: String(e.message), answers: e.responses };
    }
    out.serverSide.ms = Date.now() - asked;
    return out;
  },

  // The Ruby/PHP emitters' quirks, published by the test with redis-cli: c1 in r1 and r2, c2
  // in r2, c3 in none, all on the first gateway.
  async quirks() {
    const s = { c1: client(bases[0]), c2: client(bases[0]), c3: client(bases[0]) };
    const all = named(s);
    await Promise.all(all.map(ready));
    await join(s.c1, "r1");
    await join(s.c1, "r2");
    await join(s.c2, "r2");
    await waitForTest(true);
    const out = {};
    out.multi = await settle(all, "multi", 2);
    out.binary = await settle(all, "bif", 3);
    out.flags = await settle(all, "flagged", 3);
    // Still connected: each answers a relay with an ack.
    out.alive = await Promise.all(all.map(async (c) => c.connected && (await c.timeout(3000).emitWithAck("join", "alive")).ok));
    return out;
  },

  // Laravel's redis broadcaster, published by the test with redis-cli, to gateways whose main
  // namespace speaks Echo's protocol. Laravel Echo clients e1 (first gateway) and e2 (second)
  // listen on channel orders and news-eu; x (second) is the sender of the broadcast that says
  // toOthers().
  async laravel() {
    const [first, second] = bases;
    const echo = (base) => {
      const e = new Echo({ broadcaster: "socket.io", host: base, client: io, ...common, forceNew: true });
      closers.push(() => e.disconnect());
      return e;
    };
    const e = { e1: echo(first), e2: echo(second), x: echo(second) };
    const got = { e1: [], e2: [], x: [] };
    await Promise.all(Object.values(e).map((c) => ready(c.connector.socket)));
    for (const [name, c] of Object.entries(e)) {
      for (const channel of ["orders", "news-eu"]) {
        c.channel(channel).listen(".OrderShipped", (data) => got[name].push([channel, data]));
      }
    }
    await waitForTest({ x: e.x.socketId() });
    await until(() => got.e1.length >= 3 && got.e2.length >= 3);
    await sleep(500);
    return { got };
  },

  // Server-side emits, to an application built on the realtime library (the test's process,
  // the only server there besides the Node peer): one from the emitter, and two from the Node
  // peer that wait for the answers (the second one the application does not answer).
  async serverside() {
    const peer = await nodePeer(1);
    const r = redis();
    await r.ping();
    new Emitter(r).serverSideEmit("ping", 1, "two");
    const answers = await peer.server.serverSideEmitWithAck("question", 5);
    // The handler lets this one's ack go: the server answers with nothing, at once.
    const asked = Date.now();
    const unanswered = (await peer.server.serverSideEmitWithAck("unanswered", 6)).map((a) => (a === undefined ? "<undefined>" : a));
    return { answers, unanswered, ms: Date.now() - asked };
  },
};

const fn = scenarios[scenario];
if (!fn) {
  console.log(JSON.stringify({ error: `unknown scenario ${scenario}` }));
  process.exit(1);
}
const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ error: "scenario timed out" }));
  process.exit(1);
}, 90000);
try {
  const result = await fn();
  console.log(JSON.stringify(result));
  clearTimeout(watchdog);
  for (const close of closers) {
    try { close(); } catch {}
  }
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String((e && e.stack) || e) }));
  process.exit(1);
}
