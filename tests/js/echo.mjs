// Laravel Echo (npm laravel-echo, its socket.io connector) with socket.io-client against a gateway
// whose main namespace speaks Echo's protocol, the app being backend-stub; run by
// tests/tests/echo.rs.
//
//   node tests/js/echo.mjs <scenario> <https-base-url> <polling|websocket|upgrade>
//
// Prints one JSON object with what the clients saw, and exits 0; on failure prints
// {"error": ...} and exits 1. ADMIN_URL is the gateway's admin listener (the app's publish API).
import Echo from "laravel-echo";
import { io } from "socket.io-client";
import { TRANSPORTS, sleep, once } from "./clients.mjs";

const [scenario, base, mode] = process.argv.slice(2);
const transports = TRANSPORTS[mode];
if (!scenario || !base || !transports) {
  console.error("usage: echo.mjs <scenario> <base-url> <polling|websocket|upgrade>");
  process.exit(2);
}
const admin = process.env.ADMIN_URL;
const echos = [];

/// A Laravel front end's Echo, signed in as `user` (its session cookie). The options are those of
/// a laravel-echo-server setup; `host` is the only one that names the gateway. The rest is what
/// Node needs in place of a browser (the client library, the development certificate, the
/// cookie a browser would send by itself) and test hygiene (one connection per Echo, no
/// reconnection, Echo's shared default `auth` object not mutated).
function echo(user, options = {}) {
  const e = new Echo({
    broadcaster: "socket.io",
    host: base,
    client: io,
    transports,
    rejectUnauthorized: false,
    extraHeaders: { cookie: `user=${user}` },
    reconnection: false,
    forceNew: true,
    auth: { headers: {} },
    withoutInterceptors: true,
    ...options,
  });
  echos.push(e);
  return e;
}

async function connected(...all) {
  for (const e of all) {
    if (!e.connector.socket.connected) await once(e.connector.socket, "connect", 10000);
  }
}

/// Waits until `check()` (sync or async) holds, for at most `ms`.
async function until(check, ms = 10000, what = String(check)) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
    await sleep(20);
  }
}

/// The app publishing, through the gateway's publish API.
async function publish(topic, event, data) {
  const r = await fetch(admin + "/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic, event, data }),
  });
  if (!r.ok) throw new Error(`publish ${topic}: ${r.status} ${await r.text()}`);
  return r.json();
}

/// Subscribers of a hub topic (0 when it does not exist).
async function subscribers(topic) {
  const r = await fetch(admin + "/topics/" + encodeURIComponent(topic));
  return r.status === 200 ? (await r.json()).subscribers : 0;
}

async function members(topic) {
  const r = await fetch(admin + "/topics/" + encodeURIComponent(topic) + "/members");
  return r.json();
}

function subscriptionErrors(e) {
  const errors = [];
  e.connector.socket.on("subscription_error", (channel, status) => errors.push([channel, status]));
  return errors;
}

const scenarios = {
  // A public channel: Laravel's event names as Echo listens for them (`OrderShipped` means
  // `App\Events\OrderShipped`, a leading dot the name as sent), only this channel's events, and
  // nothing once the channel is left.
  async public() {
    const ann = echo("ann");
    await connected(ann);
    const shipped = [];
    const status = [];
    ann.channel("orders")
      .listen("OrderShipped", (e) => shipped.push(e))
      .listen(".status.changed", (e) => status.push(e));
    await until(async () => (await subscribers("orders")) === 1);
    await publish("orders", "App\\Events\\OrderShipped", { order: 1 });
    await publish("orders", "status.changed", { order: 1, status: "shipped" });
    await publish("invoices", "App\\Events\\OrderShipped", { order: 99 });
    await until(() => shipped.length === 1 && status.length === 1);
    ann.leave("orders");
    await until(async () => (await subscribers("orders")) === 0);
    await publish("orders", "App\\Events\\OrderShipped", { order: 2 });
    await sleep(300);
    return { shipped, status };
  },

  // Private channels: each user hears their own; Ann asking for Bob's is refused
  // (`subscription_error`, as laravel-echo-server said it) and hears nothing of it.
  async private() {
    const ann = echo("ann");
    const bob = echo("bob");
    await connected(ann, bob);
    const annErrors = subscriptionErrors(ann);
    const annGot = [];
    const bobGot = [];
    ann.private("user.ann").listen(".note", (e) => annGot.push(["own", e]));
    ann.private("user.bob").listen(".note", (e) => annGot.push(["bob's", e]));
    bob.private("user.bob").listen(".note", (e) => bobGot.push(e));
    await until(() => annErrors.length === 1);
    await publish("private-user.bob", "note", "for bob");
    await publish("private-user.ann", "note", "for ann");
    await until(() => annGot.length === 1 && bobGot.length === 1);
    await sleep(300);
    return { annGot, bobGot, annErrors, bobSubscribers: await subscribers("private-user.bob") };
  },

  // A presence channel with two users in three tabs, and a guest the app refuses.
  async presence() {
    const ann1 = echo("ann");
    const ann2 = echo("ann");
    const bob = echo("bob");
    const guest = echo("guest-gil");
    await connected(ann1, ann2, bob, guest);
    const log = { ann1: [], ann2: [], bob: [], guest: [] };
    const join = (name, e) =>
      e.join("room.1")
        .here((users) => log[name].push(["here", users.map((u) => u.name)]))
        .joining((u) => log[name].push(["joining", u.name]))
        .leaving((u) => log[name].push(["leaving", u.name]))
        .listen(".chat", (m) => log[name].push(["chat", m]));
    join("ann1", ann1);
    await until(() => log.ann1.length === 1);
    join("ann2", ann2);
    await until(() => log.ann2.length === 1);
    join("bob", bob);
    await until(() => log.bob.length === 1 && log.ann1.length === 2 && log.ann2.length === 2);
    const guestErrors = subscriptionErrors(guest);
    join("guest", guest);
    await until(() => guestErrors.length === 1);
    const during = await members("presence-room.1");
    await publish("presence-room.1", "chat", "hello room");
    await until(() => log.bob.length === 2 && log.ann1.length === 3 && log.ann2.length === 3);
    // Ann closes one tab (Echo leaves the channel), then the other (the connection goes).
    ann1.leave("room.1");
    await until(async () => (await members("presence-room.1")).connections === 2);
    ann2.disconnect();
    await until(() => log.bob.length === 3);
    await sleep(300);
    return { log, guestErrors, during, after: await members("presence-room.1") };
  },

  // Whispers: to the others on a private channel, not back to the sender; none on a public one.
  async whisper() {
    const ann = echo("ann");
    const bob = echo("bob");
    await connected(ann, bob);
    const got = { ann: [], bob: [] };
    for (const [name, e] of [["ann", ann], ["bob", bob]]) {
      e.private("chat.1").listenForWhisper("typing", (w) => got[name].push(["chat.1", w]));
      e.channel("orders").listenForWhisper("typing", (w) => got[name].push(["orders", w]));
    }
    await until(async () => (await subscribers("private-chat.1")) === 2 && (await subscribers("orders")) === 2);
    ann.private("chat.1").whisper("typing", { name: "ann" });
    // Echo offers no whisper on a public channel; a client that sends one anyway.
    ann.connector.socket.emit("client event", { channel: "orders", event: "client-typing", data: { name: "ann" } });
    await until(() => got.bob.length >= 1);
    await sleep(300);
    return got;
  },

  // Echo's `auth.headers` (a bearer token, the CSRF token) go with the channel's authorization
  // request to the app, with the session cookie.
  async headers() {
    const dana = echo("dana", { auth: { headers: { Authorization: "Bearer dana" } }, csrfToken: "csrf-1" });
    await connected(dana);
    const errors = subscriptionErrors(dana);
    dana.private("chat.9");
    await until(async () => (await subscribers("private-chat.9")) === 1);
    return { errors };
  },
};

const fn = scenarios[scenario];
if (!fn) {
  console.log(JSON.stringify({ error: `no scenario ${scenario}` }));
  process.exit(1);
}
try {
  const result = await fn();
  // Gone before the next scenario starts: the disconnects are sent, and the gateway has let go
  // of every member.
  for (const e of echos) e.disconnect();
  await until(async () => (await members("presence-room.1")).connections === 0);
  await sleep(200);
  console.log(JSON.stringify(result));
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String((e && e.stack) || e) }));
  process.exit(1);
}
