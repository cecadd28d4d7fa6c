// Scenarios for the official socket.io-client against the gateway, run by tests/tests/socketio.rs.
//
//   node tests/js/socketio.mjs <scenario> <https-base-url> <polling|websocket|upgrade>
//
// Prints one JSON object with what the clients saw, and exits 0; on failure prints
// {"error": ...} and exits 1. The Rust test asserts on the JSON.
import { io, Manager } from "socket.io-client";
import { TRANSPORTS, sleep, once, ready as readyOn } from "./clients.mjs";

const [scenario, base, mode] = process.argv.slice(2);
const transports = TRANSPORTS[mode];
if (!scenario || !base || !transports) {
  console.error("usage: socketio.mjs <scenario> <base-url> <polling|websocket|upgrade>");
  process.exit(2);
}

const common = { transports, rejectUnauthorized: false, reconnectionDelay: 100, reconnectionDelayMax: 200, timeout: 5000 };
const sockets = [];

function connect(nsp = "/", opts = {}) {
  const s = io(base + nsp, { ...common, forceNew: true, ...opts });
  sockets.push(s);
  return s;
}

const ready = (socket) => readyOn(socket, mode);

function collect(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args));
  return got;
}

const scenarios = {
  // Two clients: one relays, the other receives; the sender gets an ack with the hub seq and
  // does not receive its own message.
  async relay() {
    const a = connect("/", { auth: { token: "t-a" } });
    const b = connect("/", { auth: { token: "t-b" } });
    const transportA = await ready(a);
    const transportB = await ready(b);
    const aGot = collect(a, "chat");
    const bGot = collect(b, "chat");
    const ack = await a.timeout(5000).emitWithAck("chat", { text: "hi", n: 1 });
    await sleep(300);
    return { transportA, transportB, ack, aGot, bGot, aId: a.id, bId: b.id };
  },

  // Messages relayed before a client connects are replayed to it, in order.
  async history() {
    const a = connect();
    await ready(a);
    for (let i = 1; i <= 3; i++) await a.timeout(5000).emitWithAck("chat", { n: i });
    const late = connect();
    const got = collect(late, "chat");
    await ready(late);
    await sleep(500);
    return { got };
  },

  // join/leave acked; relay goes to the sender's rooms only.
  async rooms() {
    const a = connect(), b = connect(), c = connect();
    await Promise.all([ready(a), ready(b), ready(c)]);
    const joinA = await a.timeout(5000).emitWithAck("join", "r1");
    await c.timeout(5000).emitWithAck("join", "r1");
    await b.timeout(5000).emitWithAck("join", "r2");
    const bGot = collect(b, "chat"), cGot = collect(c, "chat");
    await a.timeout(5000).emitWithAck("chat", "to r1");
    await sleep(300);
    const leave = await c.timeout(5000).emitWithAck("leave", "r1");
    await a.timeout(5000).emitWithAck("chat", "after leave");
    await sleep(300);
    return { joinA, leave, bGot, cGot };
  },

  // Binary payloads survive the trip (attachments on polling and websocket alike).
  async binary() {
    const a = connect(), b = connect();
    await Promise.all([ready(a), ready(b)]);
    const got = once(b, "file");
    const bytes = Buffer.from([0, 1, 2, 253, 254, 255]);
    await a.timeout(5000).emitWithAck("file", { name: "x.bin", bytes }, Buffer.from("second"));
    const [meta, second] = await got;
    return { name: meta.name, bytes: [...meta.bytes], second: second.toString() };
  },

  // Two namespaces over one Engine.IO connection.
  async namespaces() {
    const manager = new Manager(base, { ...common, forceNew: true });
    const root = manager.socket("/"), other = manager.socket("/other");
    const peer = connect("/other");
    sockets.push(root, other);
    await Promise.all([ready(root), ready(other), ready(peer)]);
    const peerGot = collect(peer, "chat");
    await other.timeout(5000).emitWithAck("chat", "in other");
    await sleep(300);
    const unknown = connect("/nope");
    const [err] = await once(unknown, "connect_error");
    return { sameEngine: root.io === other.io, engines: 1, peerGot, unknownError: err.message };
  },

  // A handshake from a foreign origin is refused.
  async origin() {
    const s = connect("/", { extraHeaders: { origin: "https://evil.example" }, reconnection: false });
    const [err] = await once(s, "connect_error");
    return { refused: true, message: err.message, description: String(err.description ?? "") };
  },

  // A dropped transport reconnects with state recovery: missed events arrive, recovered is true.
  async recovery() {
    const a = connect(), b = connect();
    await Promise.all([ready(a), ready(b)]);
    const firstId = b.id;
    const bGot = collect(b, "chat");
    await a.timeout(5000).emitWithAck("chat", "before");
    await sleep(200);
    // Listening before the drop: b reconnects 100-200 ms after it, which on a loaded machine
    // can come before the two relays below are acknowledged.
    const back = once(b, "connect", 10000);
    b.io.engine.close(); // a network drop, as far as the client knows: it will reconnect
    await sleep(50);
    await a.timeout(5000).emitWithAck("chat", "missed 1");
    await a.timeout(5000).emitWithAck("chat", "missed 2");
    await back;
    await sleep(500);
    return { recovered: b.recovered, sameId: b.id === firstId, bGot };
  },

  // The app asks the sockets of a room for an acknowledgement (POST /emit on the admin
  // listener, node's io.to(room).timeout(ms).emitWithAck()): each answer reaches the app, a
  // socket that does not answer is reported, sockets outside the room see nothing.
  async serverAck() {
    const a = connect(), b = connect(), c = connect();
    await Promise.all([ready(a), ready(b), ready(c)]);
    await a.timeout(5000).emitWithAck("join", "desk");
    await b.timeout(5000).emitWithAck("join", "desk");
    const aGot = [];
    a.on("confirm", (data, ack) => { aGot.push(data); ack({ who: "a", got: data }); });
    const bGot = collect(b, "confirm"); // b gets the event but never acknowledges it
    const cGot = collect(c, "confirm");
    const res = await fetch(process.env.ADMIN_URL + "/emit", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ room: "desk", event: "confirm", data: { order: 42 }, timeout_ms: 1500 }),
    });
    const answer = await res.json();
    await sleep(200);
    return { status: res.status, answer, aId: a.id, bId: b.id, aGot, bGot, cGot };
  },
};

// For tests that publish from outside: join a room, say so, then wait for the app's event.
scenarios.listen = async () => {
  const s = connect();
  await ready(s);
  await s.timeout(5000).emitWithAck("join", process.env.ROOM || "news");
  const got = once(s, process.env.EVENT || "note", 10000);
  console.log(JSON.stringify({ ready: true }));
  const [data] = await got;
  return { data };
};

const fn = scenarios[scenario];
if (!fn) {
  console.log(JSON.stringify({ error: `unknown scenario ${scenario}` }));
  process.exit(1);
}
const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ error: "scenario timed out" }));
  process.exit(1);
}, 30000);
try {
  const result = await fn();
  console.log(JSON.stringify(result));
  clearTimeout(watchdog);
  for (const s of sockets) s.disconnect();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exit(1);
}
