// Scenarios for the official socket.io-client against two gateways of one fleet (one Redis),
// run by tests/tests/cluster_gateways.rs, cluster_faults.rs, cluster_balancer.rs,
// cluster_failover.rs and cluster_fleet.rs.
//
//   node tests/js/cluster.mjs <scenario> <polling|websocket|upgrade> <https-base-url>...
//
// Each client stays on the node it connected to, except in `balanced` and `killed`, whose one
// base URL is a round-robin balancer in front of the fleet (`killed` and `fleet` take more
// arguments after the base URLs). Prints one JSON object
// with what the clients saw and exits 0; on failure prints {"error": ...} and exits 1.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { TRANSPORTS, sleep, once, ready as readyOn } from "./clients.mjs";

const [scenario, mode, ...bases] = process.argv.slice(2);
const transports = TRANSPORTS[mode];
if (!scenario || !transports || bases.length === 0) {
  console.error("usage: cluster.mjs <scenario> <polling|websocket|upgrade> <base-url>...");
  process.exit(2);
}

const common = { transports, rejectUnauthorized: false, reconnectionDelay: 100, reconnectionDelayMax: 200, timeout: 5000 };
const sockets = [];

function connect(base, nsp = "/") {
  const s = io(base + nsp, { ...common, forceNew: true });
  sockets.push(s);
  return s;
}

const ready = (socket) => readyOn(socket, mode);

function collect(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args[0]));
  return got;
}

async function until(cond, ms = 10000) {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(20);
}

const scenarios = {
  // a and d on the first node, b and c on the second; a and b in room "r". a and b relay to
  // the room at the same time, N events each, asking for acks; c (in no room) relays to the
  // whole namespace.
  async relay() {
    const [first, second] = bases;
    const N = 40;
    const a = connect(first), d = connect(first), b = connect(second), c = connect(second);
    const transport = await Promise.all([a, b, c, d].map(ready));
    await a.timeout(5000).emitWithAck("join", "r");
    await b.timeout(5000).emitWithAck("join", "r");
    const got = { a: collect(a, "chat"), b: collect(b, "chat"), c: collect(c, "chat"), d: collect(d, "chat") };
    const acks = { a: [], b: [] };
    for (let n = 0; n < N; n++) {
      const [x, y] = await Promise.all([
        a.timeout(5000).emitWithAck("chat", { from: "a", n }),
        b.timeout(5000).emitWithAck("chat", { from: "b", n }),
      ]);
      acks.a.push(x);
      acks.b.push(y);
    }
    await until(() => got.a.length >= N && got.b.length >= N);
    const toAll = await c.timeout(5000).emitWithAck("chat", { from: "c", n: 0 });
    await until(() => got.a.length > N && got.b.length > N && got.d.length > 0);
    await sleep(300);
    return { transport, acks, toAll, got };
  },

  // One client per node joins room "news" (a topic of the same name), says so on stdout, then
  // waits for two "note" events from the app on each.
  async listen() {
    const clients = bases.map((b) => connect(b));
    await Promise.all(clients.map(ready));
    await Promise.all(clients.map((c) => c.timeout(5000).emitWithAck("join", "news")));
    const got = clients.map((c) => collect(c, "note"));
    console.log(JSON.stringify({ ready: true }));
    await until(() => got.every((g) => g.length >= 2), 20000);
    await sleep(300);
    return { got };
  },

  // Through a balancer (the one base URL) with no affinity: x and y join room "r"; x relays N
  // events to the room asking for acks, y hears them; y relays one event to the whole
  // namespace by leaving the room first, x hears it.
  async balanced() {
    const [base] = bases;
    const N = 20;
    const x = connect(base), y = connect(base);
    const transport = await Promise.all([x, y].map(ready));
    await x.timeout(5000).emitWithAck("join", "r");
    await y.timeout(5000).emitWithAck("join", "r");
    const got = { x: collect(x, "chat"), y: collect(y, "chat") };
    const acks = [];
    for (let n = 0; n < N; n++) acks.push(await x.timeout(5000).emitWithAck("chat", { n }));
    await until(() => got.y.length >= N);
    await y.timeout(5000).emitWithAck("leave", "r");
    await x.timeout(5000).emitWithAck("leave", "r");
    await y.timeout(5000).emitWithAck("chat", { n: 100 });
    await until(() => got.x.length >= 1);
    await sleep(300);
    return { transport, sids: [x.io.engine.id, y.io.engine.id], acks, got };
  },

  // A node killed under its clients: through the balancer (the one base URL), clients connect
  // until `target` of them are on the node tagged `tag` (their sids say which), and all join
  // room "news". Then, on stdout: {"ready": ...}; {"had": K} once every client has the app's
  // "note" events 1..K; and at the end what each saw of events 1..M: the killed node's clients
  // must come back (on another node, through the balancer) recovered, with every event once
  // and in order.
  async killed() {
    const [base, target, tag, K, M] = [bases[0], +bases[1], bases[2], +bases[3], +bases[4]];
    const clients = [];
    const onTag = () => clients.filter((c) => c.tag === tag).length;
    while (onTag() < target) {
      const batch = Array.from({ length: 50 }, () => {
        const socket = connect(base);
        const c = { socket, got: [], reconnects: [], tag: null };
        socket.on("note", (data) => c.got.push(data.n));
        let once = false;
        socket.on("connect", () => {
          if (once) c.reconnects.push({ recovered: socket.recovered, tag: socket.io.engine.id.split(".")[0] });
          once = true;
        });
        return c;
      });
      await Promise.all(batch.map((c) => ready(c.socket)));
      for (const c of batch) c.tag = c.socket.io.engine.id.split(".")[0];
      await Promise.all(batch.map((c) => c.socket.timeout(10000).emitWithAck("join", "news")));
      clients.push(...batch);
    }
    console.log(JSON.stringify({ ready: true, clients: clients.length, onTag: onTag() }));
    await until(() => clients.every((c) => c.got.length >= K), 30000);
    console.log(JSON.stringify({ had: Math.min(...clients.map((c) => c.got.length)) }));
    const started = Date.now();
    await until(() => clients.every((c) => c.got.length >= M && c.socket.connected), 45000);
    const settled = Date.now() - started;
    await sleep(500);
    const want = Array.from({ length: M }, (_, i) => i + 1);
    const exact = (c) => c.got.length === M && c.got.every((n, i) => n === want[i]);
    const killed = clients.filter((c) => c.tag === tag);
    const others = clients.filter((c) => c.tag !== tag);
    const describe = (c) => ({ tag: c.tag, got: c.got, reconnects: c.reconnects, connected: c.socket.connected });
    return {
      clients: clients.length,
      killed: killed.length,
      recovered: killed.filter((c) => c.reconnects.length > 0 && c.reconnects.every((r) => r.recovered)).length,
      movedTo: [...new Set(killed.flatMap((c) => c.reconnects.map((r) => r.tag)))],
      exact: killed.filter(exact).length,
      // The other node's clients keep every event too; those whose connection went through the
      // killed node (a request or a WebSocket it forwarded) came back recovered.
      othersExact: others.filter((c) => exact(c) && c.reconnects.every((r) => r.recovered)).length,
      othersReconnected: others.filter((c) => c.reconnects.length > 0).length,
      others: others.length,
      settledMs: settled,
      wrong: clients.filter((c) => !exact(c) || !c.reconnects.every((r) => r.recovered) || (c.tag === tag && c.reconnects.length === 0)).slice(0, 3).map(describe),
    };
  },

  // Socket.IO's part in the fleet-wide count (cluster_fleet.rs): three bases (one per node),
  // then R and E. One subscriber per node, each on another transport (websocket on the first,
  // polling on the second, polling upgraded to websocket on the third), in rooms fleet-x and
  // fleet-y; two publishers on the third node, one in each room. Says {"ready": ...} once all
  // are in their rooms, waits for "go" on stdin, then each publisher relays R events
  // "<room>/cs/<n>" to its room, acked (at most 32 waiting at once); ends when every subscriber
  // has E events of each room (or 100 s passed) with what each got, in order, and the seq each
  // relay was acked with.
  async fleet() {
    const [first, second, third] = bases;
    const [R, E] = [+bases[3], +bases[4]];
    const rooms = ["fleet-x", "fleet-y"];
    const subs = [[first, "websocket"], [second, "polling"], [third, "upgrade"]].map(([base, m]) => {
      const s = io(base, { ...common, transports: TRANSPORTS[m], forceNew: true });
      sockets.push(s);
      s.mode = m;
      s.got = [];
      s.onAny((event, ...args) => s.got.push(args[0]));
      return s;
    });
    const transport = await Promise.all(subs.map((s) => readyOn(s, s.mode)));
    const pubs = rooms.map(() => connect(third));
    await Promise.all(pubs.map(ready));
    for (const s of subs) for (const r of rooms) await s.timeout(5000).emitWithAck("join", r);
    for (const [i, p] of pubs.entries()) await p.timeout(5000).emitWithAck("join", rooms[i]);
    console.log(JSON.stringify({ ready: true }));
    const input = createInterface({ input: process.stdin });
    for await (const line of input) if (line.trim() === "go") break;
    input.close();
    const relay = async (p, room) => {
      const acks = new Array(R);
      let next = 0;
      const worker = async () => {
        while (next < R) {
          const n = next++;
          acks[n] = await p.timeout(10000).emitWithAck("chat", `${room}/cs/${n}`);
        }
      };
      await Promise.all(Array.from({ length: 32 }, worker));
      return acks.map((a) => (a && typeof a.seq === "number" ? a.seq : a));
    };
    const acks = await Promise.all(pubs.map((p, i) => relay(p, rooms[i])));
    await until(() => subs.every((s) => s.got.length >= 2 * E), 100000);
    await sleep(300);
    return {
      transport,
      upgraded: subs.map((s) => s.io.engine.transport.name),
      got: subs.map((s) => s.got),
      acks: Object.fromEntries(rooms.map((r, i) => [r, acks[i]])),
    };
  },

  // Relays asking for an ack while the cluster cannot be reached.
  async unavailable() {
    const a = connect(bases[0]);
    const transport = await ready(a);
    const ack = await a.timeout(5000).emitWithAck("chat", { n: 1 });
    return { transport, ack };
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
}, 120000);
try {
  const result = await fn();
  clearTimeout(watchdog);
  for (const s of sockets) s.disconnect();
  // Exit once the result is written: stdout is a pipe, written asynchronously, and a result
  // larger than the pipe's buffer would otherwise be cut short.
  process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0));
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exit(1);
}
