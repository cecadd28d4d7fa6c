// Browser EventSource in headless Chromium (playwright-core) against the gateway's SSE endpoint
// guarded by the app's callbacks, run by tests/tests/authz.rs. Every browser sends its cookie
// itself: the cookie is in the browser profile and the stream is opened same-origin.
//
//   ADMIN_URL=<admin base> SINCE=<epoch>:0 node tests/js/sse_browser.mjs <https-base-url>
//
// Ann (`user=ann`) follows her own `private-user.ann` from the start of its history, hears what
// the app publishes, loses her network (every TCP connection between her browser and the
// gateway dropped) while the app publishes again, and resumes with the `Last-Event-ID` her
// browser sends on its own. Eve (`user=banned-eve`, refused by the connect callback), a browser
// with no cookie, and Cy (`user=cy`, signed in but not Ann) ask for the same stream and history.
//
// Prints one JSON object with what each browser saw and sent, and exits 0; on failure prints
// {"error": ..., "partial": {...}} and exits 1. The Rust test asserts on the JSON. Waits are on
// conditions in the page, never fixed sleeps.
import net from "node:net";
import { launch } from "./chromium.mjs";

const base = process.argv[2];
const admin = process.env.ADMIN_URL;
const since = process.env.SINCE;
if (!base || !admin || !since) {
  console.error("usage: ADMIN_URL=... SINCE=<epoch>:0 sse_browser.mjs <https-base-url>");
  process.exit(2);
}
const TOPIC = "private-user.ann";
const STREAM = `/events?topic=${TOPIC}&lastEventId=${since}`;
const WAIT = 15000;

const results = {};
/// Request headers the network listeners are still reading, awaited before the report.
const pending = [];
let browser;
let link;

const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ error: "sse browser scenarios timed out", partial: results }));
  process.exit(1);
}, 90000);

/// The app publishes (the gateway's admin publish API).
async function publish(data) {
  const r = await fetch(`${admin}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: TOPIC, event: "note", data }),
  });
  if (!r.ok) throw new Error(`publish: ${r.status} ${await r.text()}`);
  return (await r.json()).position;
}

/// The network between Ann's browser and the gateway: a TCP relay that can be cut (every
/// connection through it dropped at once, as when a laptop changes networks) and that holds
/// new connections until it is restored. TLS still runs end to end, browser to gateway.
function network(targetPort) {
  const open = new Set();
  let held = [];
  let up = true;
  let connections = 0;
  const relay = (client) => {
    connections += 1;
    const gw = net.connect(targetPort, "127.0.0.1");
    open.add(client);
    open.add(gw);
    const drop = () => {
      client.destroy();
      gw.destroy();
      open.delete(client);
      open.delete(gw);
    };
    for (const s of [client, gw]) {
      s.on("error", drop);
      s.on("close", drop);
    }
    client.pipe(gw);
    gw.pipe(client);
  };
  const server = net.createServer((client) => (up ? relay(client) : held.push(client)));
  return {
    listen: () => new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server.address().port))),
    cut() {
      up = false;
      for (const s of open) s.destroy();
      open.clear();
    },
    restore() {
      up = true;
      const waiting = held;
      held = [];
      for (const c of waiting) relay(c);
    },
    connections: () => connections,
    close() {
      for (const s of open) s.destroy();
      for (const c of held) c.destroy();
      server.close();
    },
  };
}

/// A fresh browser profile on `origin`, holding `cookie` (if any) for it; it records every
/// request to the SSE endpoint (the headers Chromium sent) and every answer's status.
async function profile(origin, cookie) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  if (cookie) {
    const [name, value] = cookie.split("=");
    await context.addCookies([{ name, value, url: origin }]);
  }
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const requests = [];
  const answers = [];
  page.on("request", (req) => {
    if (!req.url().includes("/events?")) return;
    const r = {};
    requests.push(r);
    pending.push(req.allHeaders().then((h) => {
      r.cookie = h.cookie ?? null;
      r.lastEventId = h["last-event-id"] ?? null;
    }));
  });
  // Statuses only: Chromium drops a refusal's body once EventSource has failed on it.
  page.on("response", (res) => {
    if (res.url().includes("/events?")) answers.push(res.status());
  });
  // Any page of the gateway's origin will do (this one is a 404): the stream is same-origin.
  await page.goto(`${origin}/`);
  return { page, requests, answers };
}

/// Opens `new EventSource(url)` in the page; everything it fires goes to `window.seen`.
async function listen(page, url) {
  await page.evaluate(([url, topic]) => {
    window.seen = [];
    const es = new EventSource(url);
    window.stream = es;
    es.addEventListener("open", () => window.seen.push({ type: "open" }));
    es.addEventListener("error", () => window.seen.push({ type: "error", readyState: es.readyState }));
    // Events are named after their topic; anything else (a reset, an unnamed message) is
    // recorded too, so a refused browser cannot hear something the test does not look at.
    for (const name of [topic, "message", "reset", "close"]) {
      es.addEventListener(name, (e) => window.seen.push({ type: name, data: e.data, id: e.lastEventId }));
    }
  }, [url, TOPIC]);
}

const messages = (page) => page.evaluate((topic) => window.seen.filter((e) => e.type === topic), TOPIC);
const heard = (page, n) => page.waitForFunction(
  ([topic, n]) => window.seen.filter((e) => e.type === topic).length >= n, [TOPIC, n]);
const seen = (page) => page.evaluate(() => window.seen);
const readyState = (page) => page.evaluate(() => window.stream.readyState);

try {
  browser = await launch();
  results.browserVersion = browser.version();
  link = network(Number(new URL(base).port));
  const via = `https://127.0.0.1:${await link.listen()}`;

  // Ann: the topic's history, then what the app publishes live.
  const ann = await profile(via, "user=ann");
  await listen(ann.page, STREAM);
  await heard(ann.page, 1);
  await publish("first for ann");
  await heard(ann.page, 2);

  // Her network goes: the browser notices and waits to reconnect; meanwhile the app publishes.
  link.cut();
  await ann.page.waitForFunction(() => window.seen.some((e) => e.type === "error" && e.readyState === 0));
  const beforeReconnect = await messages(ann.page);
  await publish("while ann was away");
  link.restore();
  await heard(ann.page, 3);

  // The refused: each asks for the stream and its history, and is turned away for good.
  const refused = {};
  for (const [name, cookie] of [["eve", "user=banned-eve"], ["nobody", null], ["cy", "user=cy"]]) {
    const p = await profile(base, cookie);
    await listen(p.page, STREAM);
    await p.page.waitForFunction(() => window.stream.readyState === EventSource.CLOSED);
    refused[name] = p;
  }
  // The app publishes once more: Ann hears it, the refused are long gone.
  await publish("after the refusals");
  await heard(ann.page, 4);

  await Promise.all(pending);
  results.ann = {
    seen: await seen(ann.page),
    heardBeforeReconnect: beforeReconnect.length,
    readyState: await readyState(ann.page),
    requests: ann.requests,
    answers: ann.answers,
    connections: link.connections(),
  };
  results.refused = {};
  for (const [name, p] of Object.entries(refused)) {
    results.refused[name] = {
      seen: await seen(p.page),
      readyState: await readyState(p.page),
      requests: p.requests,
      answers: p.answers,
    };
  }

  console.log(JSON.stringify(results));
  clearTimeout(watchdog);
  await browser.close();
  link.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String((e && e.stack) || e), partial: results }));
  try { await browser?.close(); } catch { /* already gone */ }
  link?.close();
  process.exit(1);
}
