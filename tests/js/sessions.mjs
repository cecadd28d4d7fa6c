// Many idle official socket.io-client sessions that must live through something the test does
// to the gateway (a reload, an upgrade), run by tests/tests/reload.rs.
//
//   node tests/js/sessions.mjs <https-base-url> <sessions per transport> <room> [notes] [modes]
//
// Opens that many sessions on websocket and as many on polling, each joined to <room>, then
// prints {"ready": true} and waits until every session has had [notes] (default 1) "note"
// events. A session that is disconnected reconnects (the client's own reconnection) and,
// unless it was recovered, joins <room> again. Prints one JSON object: per transport, how many
// sessions got every note in the order sent (`got`; the notes' data are 0, 1, ...), how many
// got one twice or out of order (`wrong`), how many disconnects they saw, how many sessions
// came back and were recovered every time (`recovered`: `socket.recovered === true` on each
// reconnection) and how many came back at least once as a new session (`fresh`), and exits 0;
// on failure prints {"error": ...} and exits 1.
// [modes]: "websocket", "polling" or both comma-separated (the default).
import { io } from "socket.io-client";
import { TRANSPORTS, sleep, once } from "./clients.mjs";

const [base, perTransport, room, notesArg, modesArg] = process.argv.slice(2);
// Which transports to open sessions on (default both).
const modes = modesArg ? modesArg.split(",") : ["websocket", "polling"];
const n = Number(perTransport);
// "stdin": the count is read from a line on stdin after "ready" (the test knows it only later).
let notes = notesArg === "stdin" ? Infinity : Number(notesArg || 1);
if (!base || !n || !room) {
  console.error("usage: sessions.mjs <base-url> <sessions per transport> <room> [notes]");
  process.exit(2);
}

const report = {
  websocket: { got: 0, wrong: 0, disconnects: 0, recovered: 0, fresh: 0 },
  polling: { got: 0, wrong: 0, disconnects: 0, recovered: 0, fresh: 0 },
};
// Per session: [mode, came back at all, came back as a new session at least once].
const comebacks = [];
const sockets = [];
const checks = [];

async function open(mode) {
  const s = io(base, {
    transports: TRANSPORTS[mode],
    rejectUnauthorized: false,
    forceNew: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    timeout: 20000,
  });
  sockets.push(s);
  const seen = report[mode];
  const heard = [];
  let verdict = null;
  const check = () => {
    if (verdict || heard.length < notes) return;
    verdict = heard.length === notes && heard.every((d, i) => d === i) ? "got" : "wrong";
    seen[verdict]++;
  };
  checks.push(check);
  s.on("disconnect", () => seen.disconnects++);
  let first = true;
  const comeback = { mode, back: false, fresh: false };
  comebacks.push(comeback);
  s.on("connect", () => {
    if (first) {
      first = false;
      return;
    }
    // Back after a disconnect: resumed with its rooms, or a new session that joins again.
    comeback.back = true;
    if (!s.recovered) {
      comeback.fresh = true;
      s.emit("join", room);
    }
  });
  s.on("note", (data) => {
    heard.push(data);
    if (verdict === "got" && heard.length > notes) {
      // One too many: a duplicate.
      seen.got--;
      seen.wrong++;
      verdict = "wrong";
    }
    check();
  });
  // Generous: the gateway under test is a debug build on a small, busy machine.
  if (!s.connected) await once(s, "connect", 60000);
  await s.timeout(20000).emitWithAck("join", room);
}

try {
  // A few at a time: the gateway under test is a debug build on a small machine.
  for (const mode of modes) {
    for (let i = 0; i < n; i += 50) {
      await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => open(mode)));
    }
  }
  console.log(JSON.stringify({ ready: true }));
  if (notes === Infinity) {
    const line = await new Promise((resolve) => {
      let buf = "";
      process.stdin.on("data", (d) => {
        buf += d;
        if (buf.includes("\n")) resolve(buf);
      });
    });
    notes = Number(line.trim());
    // Sessions that already had them all.
    for (const check of checks) check();
  }
  const end = Date.now() + 60000;
  const done = (r) => r.got + r.wrong >= n;
  while (Date.now() < end && !modes.every((m) => done(report[m]))) await sleep(50);
  // A late duplicate or disconnect would still be a failure: look a little longer.
  await sleep(500);
  for (const c of comebacks) {
    if (c.fresh) report[c.mode].fresh++;
    else if (c.back) report[c.mode].recovered++;
  }
  console.log(JSON.stringify(report));
  for (const s of sockets) s.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack || e), report }));
  process.exit(1);
}
