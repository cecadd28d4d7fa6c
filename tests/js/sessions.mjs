// Many idle official socket.io-client sessions that must live through something the test does
// to the gateway (a reload, an upgrade), run by tests/tests/reload.rs.
//
//   node tests/js/sessions.mjs <https-base-url> <sessions per transport> <room> [expect-recovered]
//
// Opens that many sessions on websocket and as many on polling, each joined to <room>, then
// prints {"ready": true} and waits for one "note" event on every session. A session that is
// disconnected reconnects (the client's own reconnection) and, unless it was recovered, joins
// <room> again. Prints one JSON object: how many sessions of each transport got the note, how
// many disconnects they saw, how many came back with `recovered === true`, and exits 0; on
// failure prints {"error": ...} and exits 1.
import { io } from "socket.io-client";
import { TRANSPORTS, sleep, once } from "./clients.mjs";

const [base, perTransport, room, expectRecovered] = process.argv.slice(2);
const n = Number(perTransport);
if (!base || !n || !room) {
  console.error("usage: sessions.mjs <base-url> <sessions per transport> <room> [expect-recovered]");
  process.exit(2);
}

const report = { websocket: { got: 0, disconnects: 0, recovered: 0 }, polling: { got: 0, disconnects: 0, recovered: 0 } };
const sockets = [];

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
  let got = false;
  s.on("disconnect", () => seen.disconnects++);
  let first = true;
  s.on("connect", () => {
    if (first) {
      first = false;
      return;
    }
    // Back after a disconnect: resumed with its rooms, or a new session that joins again.
    if (s.recovered) seen.recovered++;
    else s.emit("join", room);
  });
  s.on("note", () => {
    if (!got) {
      got = true;
      seen.got++;
    }
  });
  // Generous: the gateway under test is a debug build on a small, busy machine.
  if (!s.connected) await once(s, "connect", 60000);
  await s.timeout(20000).emitWithAck("join", room);
}

try {
  // A few at a time: the gateway under test is a debug build on a small machine.
  for (const mode of ["websocket", "polling"]) {
    for (let i = 0; i < n; i += 50) {
      await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => open(mode)));
    }
  }
  console.log(JSON.stringify({ ready: true }));
  const end = Date.now() + 60000;
  while (Date.now() < end && (report.websocket.got < n || report.polling.got < n)) await sleep(50);
  // Past the last delivery, a disconnect would still be a failure: look a little longer.
  await sleep(expectRecovered ? 0 : 500);
  console.log(JSON.stringify(report));
  for (const s of sockets) s.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack || e), report }));
  process.exit(1);
}
