// The official socket.io-client against a gateway that asks the app (backend-stub) who may
// connect and join which room; run by tests/tests/authz.rs.
//
//   node tests/js/authz.mjs <scenario> <https-base-url> <polling|websocket>
//
// Prints one JSON object with what the clients saw, and exits 0; on failure prints
// {"error": ...} and exits 1. ADMIN_URL is the gateway's admin listener (the app's publish API).
import { io } from "socket.io-client";

const [scenario, base, mode] = process.argv.slice(2);
const transports = { polling: ["polling"], websocket: ["websocket"] }[mode];
if (!scenario || !base || !transports) {
  console.error("usage: authz.mjs <scenario> <base-url> <polling|websocket>");
  process.exit(2);
}

const common = { transports, rejectUnauthorized: false, reconnection: false, timeout: 10000, forceNew: true };
const sockets = [];

function connect(opts = {}) {
  const s = io(base + "/", { ...common, ...opts });
  sockets.push(s);
  return s;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// How a connection attempt ended: connected (with its id), or refused with the CONNECT_ERROR's
/// message and data, and how long it took.
function outcome(socket, ms = 15000) {
  const started = Date.now();
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve({ timeout: true, ms: Date.now() - started }), ms);
    socket.once("connect", () => {
      clearTimeout(t);
      resolve({ connected: true, id: socket.id, transport: socket.io.engine.transport.name, ms: Date.now() - started });
    });
    socket.once("connect_error", (err) => {
      clearTimeout(t);
      resolve({ refused: err.message, data: err.data ?? null, ms: Date.now() - started });
    });
  });
}

async function ready(socket) {
  if (socket.connected) return { connected: true, id: socket.id };
  const o = await outcome(socket);
  if (!o.connected) throw new Error(`not connected: ${JSON.stringify(o)}`);
  return o;
}

function collect(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args[0]));
  return got;
}

/// The app publishing, through the gateway's publish API.
async function publish(topic, event, data) {
  const r = await fetch(process.env.ADMIN_URL + "/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic, event, data }),
  });
  if (!r.ok) throw new Error(`publish ${topic}: ${r.status} ${await r.text()}`);
  return r.json();
}

const scenarios = {
  // The connect callback: a token in `auth`, a session cookie, a banned user, nobody.
  async connect() {
    const cases = {
      token: { auth: { token: "ann" } },
      cookie: { extraHeaders: { cookie: "user=bob" } },
      banned: { auth: { token: "banned-eve" } },
      nobody: {},
    };
    const out = {};
    for (const [name, opts] of Object.entries(cases)) out[name] = await outcome(connect(opts));
    return out;
  },

  // One connect attempt with `auth: {token: TOKEN}` (the app slow, or down).
  async attempt() {
    return outcome(connect({ auth: { token: process.env.TOKEN || "ann" } }));
  },

  // Private and presence channels: Ann is refused Bob's channel and hears nothing of it (not
  // its history, not what comes next); each is in their own channel from the connect answer;
  // Ann joins a presence channel with the app's word and is replayed its history.
  async private() {
    const ann = connect({ extraHeaders: { cookie: "user=ann" } });
    const bob = connect({ extraHeaders: { cookie: "user=bob" } });
    const [a, b] = [await ready(ann), await ready(bob)];
    const annGot = collect(ann, "secret");
    const bobGot = collect(bob, "secret");
    const annHello = collect(ann, "hello");
    const annJoinBob = await ann.timeout(5000).emitWithAck("join", "private-user.bob");
    const bobJoinBob = await bob.timeout(5000).emitWithAck("join", "private-user.bob");
    const annJoinPresence = await ann.timeout(5000).emitWithAck("join", "presence-lobby");
    await publish("private-user.bob", "secret", "new for bob");
    await publish("private-user.ann", "secret", "for ann");
    await publish("presence-lobby", "hello", "lobby");
    await sleep(500);
    return { annId: a.id, bobId: b.id, annJoinBob, bobJoinBob, annJoinPresence, annGot, bobGot, annHello };
  },

  // A client's relay reaches only rooms open to clients: in `news` (public to subscribe, not
  // to publish) it goes to the namespace and never to the topic; in `chat-room` it goes there.
  async publish() {
    const ann = connect({ extraHeaders: { cookie: "user=ann" } });
    const cy = connect({ extraHeaders: { cookie: "user=cy" } });
    await ready(ann);
    await ready(cy);
    const cyGot = collect(cy, "chat");
    await ann.timeout(5000).emitWithAck("join", "news");
    const intoNews = await ann.timeout(5000).emitWithAck("chat", "meant for news");
    await ann.timeout(5000).emitWithAck("join", "chat-room");
    await cy.timeout(5000).emitWithAck("join", "chat-room");
    const intoChat = await ann.timeout(5000).emitWithAck("chat", "for chat-room");
    await sleep(300);
    const topic = async (t) => (await fetch(process.env.ADMIN_URL + "/topics/" + t)).status === 200
      ? (await (await fetch(process.env.ADMIN_URL + "/topics/" + t)).json())
      : null;
    return { intoNews, intoChat, cyGot, news: await topic("news"), chatRoom: await topic("chat-room") };
  },
};

const fn = scenarios[scenario];
if (!fn) {
  console.log(JSON.stringify({ error: `no scenario ${scenario}` }));
  process.exit(1);
}
try {
  const result = await fn();
  console.log(JSON.stringify(result));
  for (const s of sockets) s.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exit(1);
}
