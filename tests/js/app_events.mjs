// The official socket.io-client against a gateway that posts client events to the app
// (backend-stub's /realtime/events) and does what it answers; run by tests/tests/app_events.rs.
//
//   node tests/js/app_events.mjs <scenario> <https-base-url> <polling|websocket>
//
// Prints one JSON object with what the clients saw, and exits 0; on failure prints
// {"error": ...} and exits 1. ADMIN_URL is the gateway's admin listener (the app's publish API).
import { io } from "socket.io-client";
import { TRANSPORTS, once, sleep } from "./clients.mjs";

const [scenario, base, mode] = process.argv.slice(2);
const transports = TRANSPORTS[mode];
if (!scenario || !base || !transports) {
  console.error("usage: app_events.mjs <scenario> <base-url> <polling|websocket>");
  process.exit(2);
}

const common = { transports, rejectUnauthorized: false, reconnection: false, timeout: 10000, forceNew: true };
const sockets = [];

/// A client signed in as `user` (the app's session cookie), connected to namespace `nsp`.
async function signedIn(user, nsp = "/") {
  const s = io(base + nsp, { ...common, extraHeaders: { cookie: `user=${user}` } });
  sockets.push(s);
  if (!s.connected) await once(s, "connect", 10000);
  return s;
}

function collect(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args.length === 1 ? args[0] : args));
  return got;
}

/// `emitWithAck` with a deadline, and how long the answer took.
async function timed(socket, event, ...args) {
  const started = Date.now();
  const ack = await socket.timeout(10000).emitWithAck(event, ...args);
  return { ack, ms: Date.now() - started };
}

/// Every argument of the ack to `event` (emitWithAck resolves with the first only).
function ackArgs(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(5000).emit(event, ...args, (err, ...acked) => (err ? reject(err) : resolve(acked)));
  });
}

/// The app publishing, through the gateway's publish API.
async function publish(topic, event, data) {
  const r = await fetch(process.env.ADMIN_URL + "/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic, event, data }),
  });
  if (!r.ok) throw new Error(`publish ${topic}: ${r.status} ${await r.text()}`);
}

const scenarios = {
  // Ann asks the app; its answer is her ack, binary arguments included (as base64), and the
  // app knows who she is from the connect callback.
  async ack() {
    const ann = await signedIn("ann");
    const echoed = await ackArgs(ann, "echo", 1, "two", { three: [3] });
    const binary = await ackArgs(ann, "echo", "file", Buffer.from([1, 2, 3]));
    const entered = await ackArgs(ann, "enter", "hall");
    const whoami = await ann.timeout(5000).emitWithAck("whoami");
    // A namespace that sends every event to the app.
    const rpc = await signedIn("ann", "/rpc");
    const anything = await rpc.timeout(5000).emitWithAck("echo", "via /rpc");
    const rpcWhoami = await rpc.timeout(5000).emitWithAck("whoami");
    return { id: ann.id, echoed, binary, entered, whoami, anything, rpcId: rpc.id, rpcWhoami };
  },

  // The app joins Bob to `lobby`; what Ann says there reaches Bob (and not Ann herself, the
  // app leaves the sender out), as does what the app publishes; the app's reply goes to Ann
  // alone; once the app takes Bob out, he hears nothing more of the room.
  async rooms() {
    const ann = await signedIn("ann");
    const bob = await signedIn("bob");
    const annSaid = collect(ann, "said");
    const bobSaid = collect(bob, "said");
    const bobNews = collect(bob, "news");
    const annReply = collect(ann, "reply");
    const bobReply = collect(bob, "reply");
    const bobEnter = await bob.timeout(5000).emitWithAck("enter", "lobby");
    const annEnter = await ann.timeout(5000).emitWithAck("enter", "lobby");
    const said = await ann.timeout(5000).emitWithAck("say", { room: "lobby", text: "hi bob" });
    await publish("lobby", "news", "from the app");
    const replied = await ann.timeout(5000).emitWithAck("reply", { for: "ann" });
    await sleep(300);
    const bobExit = await bob.timeout(5000).emitWithAck("exit", "lobby");
    await ann.timeout(5000).emitWithAck("say", { room: "lobby", text: "gone?" });
    await sleep(300);
    return { bobEnter, annEnter, said, replied, bobExit, annSaid, bobSaid, bobNews, annReply, bobReply };
  },

  // The app disconnects Cy: she gets her ack, then the server's disconnect.
  async disconnect() {
    const cy = await signedIn("cy");
    const gone = once(cy, "disconnect", 5000);
    const ack = await cy.timeout(5000).emitWithAck("bye");
    const [reason] = await gone;
    return { ack, reason, connected: cy.connected };
  },

  // The app slow, failing, refusing, answering nonsense: each ack is an error with a status,
  // within the timeout, and the connection goes on working.
  async failures() {
    const ann = await signedIn("ann");
    const out = {};
    for (const [name, args] of [["slow", []], ["fail", []], ["refuse", []], ["garbage", []], ["dance", []]]) {
      out[name] = await timed(ann, name, ...args);
    }
    out.after = await timed(ann, "echo", "still here");
    out.connected = ann.connected;
    return out;
  },

  // Two events wait for the app (max_in_flight 2): the third is refused at once; once they are
  // answered, events go through again.
  async busy() {
    const ann = await signedIn("ann");
    const waiting = [timed(ann, "slow", 700), timed(ann, "slow", 700)];
    await sleep(100);
    const refused = await timed(ann, "echo", "third");
    const slow = await Promise.all(waiting);
    const after = await timed(ann, "echo", "fourth");
    return { refused, slow, after };
  },

  // The app cannot be reached: a clear error ack, and the connection still works.
  async down() {
    const ann = await signedIn("ann");
    const first = await timed(ann, "echo", "anyone?");
    const second = await timed(ann, "echo", "again");
    return { first, second, connected: ann.connected };
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
