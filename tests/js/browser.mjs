// The demo page (public/index.html) in headless Chromium, through the real gateway over HTTPS,
// run by tests/tests/browser.rs.
//
//   node tests/js/browser.mjs <https-base-url> [screenshot.png]
//
// The screenshot path may also come from $SCREENSHOT (default target/e2e/screenshots/chat.png).
// Prints one JSON object with what each scenario saw, and exits 0; on failure prints
// {"error": ..., "partial": {...}} and exits 1. The Rust test asserts on the JSON.
//
// Waits are on visible conditions (an element with a text, a state), never fixed sleeps.
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "./chromium.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const base = process.argv[2];
const shot = resolve(process.argv[3] || process.env.SCREENSHOT || resolve(here, "../../target/e2e/screenshots/chat.png"));
if (!base) {
  console.error("usage: browser.mjs <https-base-url> [screenshot.png]");
  process.exit(2);
}

const WAIT = 15000;
const results = {};
const consoleErrors = [];
let browser;

const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ error: "browser scenarios timed out", partial: results, consoleErrors }));
  process.exit(1);
}, 120000);

/// A fresh browser profile (its own storage and connections) on the demo page.
async function open(query) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", (e) => consoleErrors.push(`${query}: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${query}: ${m.text()}`); });
  await page.goto(`${base}/${query}`);
  return page;
}

const tid = (page, id) => page.locator(`[data-testid="${id}"]`);

async function connected(page) {
  await page.waitForFunction(() => {
    const s = document.querySelector('[data-testid="state"]')?.dataset.state;
    return s === "connected" || s === "recovered";
  });
  return {
    state: await tid(page, "state").textContent(),
    transport: await tid(page, "transport").textContent(),
  };
}

/// Waits for the Socket.IO transport the page shows to be `name` (after an upgrade, say).
async function transportIs(page, name) {
  await page.waitForFunction((n) => document.querySelector('[data-testid="transport"]')?.textContent === n, name);
  return name;
}

async function say(page, text) {
  await tid(page, "message").fill(text);
  await tid(page, "send").click();
}

/// Waits until a chat line with `text` is in the page; returns what it shows about it.
async function sees(page, text) {
  const line = page.locator('[data-testid="chat-line"]', { has: page.locator('[data-testid="chat-text"]', { hasText: text }) });
  await line.first().waitFor({ state: "visible" });
  return {
    from: await line.first().getAttribute("data-from"),
    mine: await line.first().evaluate((el) => el.classList.contains("mine")),
  };
}

async function notices(page) {
  return tid(page, "notice").allTextContents();
}

async function chatTexts(page) {
  return tid(page, "chat-text").allTextContents();
}

/// Two pages chat with each other; `query` picks the mode.
async function conversation(query, tag, { keep = false } = {}) {
  // Ann is connected before Bob arrives: the WebSocket and SSE modes have no history, so
  // that is how Ann hears Bob's arrival. Bob's arrival, seen by Ann, also shows Bob is in the
  // room before anyone speaks.
  const a = await open(`${query}&name=Ann-${tag}`);
  const r = { a: await connected(a) };
  const b = await open(`${query}&name=Bob-${tag}`);
  r.b = await connected(b);
  await a.locator('[data-testid="notice"]', { hasText: `Bob-${tag} joined` }).first().waitFor();
  await say(a, `hello from Ann ${tag}`);
  r.bSawAnn = await sees(b, `hello from Ann ${tag}`);
  r.aOwn = await sees(a, `hello from Ann ${tag}`);
  await say(b, `hi Ann, Bob here ${tag}`);
  r.aSawBob = await sees(a, `hi Ann, Bob here ${tag}`);
  // Each line once, on each side.
  r.aTexts = await chatTexts(a);
  r.bTexts = await chatTexts(b);
  r.aNotices = await notices(a);
  if (!keep) {
    await a.context().close();
    await b.context().close();
  }
  return { r, a, b };
}

try {
  browser = await launch();
  results.browserVersion = browser.version();

  // (a) Socket.IO, upgraded to WebSocket; pages kept for the history and app scenarios.
  {
    const { r, a, b } = await conversation("?mode=socketio", "ws", { keep: true });
    r.aTransport = await transportIs(a, "websocket");
    r.bTransport = await transportIs(b, "websocket");
    results.socketioWebsocket = r;

    // (d) A third profile, joining late, is replayed the conversation (history 50).
    const c = await open("?mode=socketio&name=Cy");
    const late = { connect: await connected(c) };
    await sees(c, "hi Ann, Bob here ws");
    late.texts = await chatTexts(c);
    late.notices = await notices(c);
    late.mineCount = await c.locator('[data-testid="chat-line"].mine').count();
    // Cy's own "joined" notice comes after the replayed history.
    late.lastNotice = await c.locator('[data-testid="messages"] > li').last().textContent();
    results.lateJoiner = late;

    // (e) The app publishes to room `announcements`: every page's panel shows it.
    const app = {};
    await a.waitForFunction(() => document.querySelector('[data-testid="app-state"]')?.dataset.joined === "true");
    await b.waitForFunction(() => document.querySelector('[data-testid="app-state"]')?.dataset.joined === "true");
    await tid(a, "ask-publish").click();
    const item = tid(a, "announcement").first();
    await item.waitFor({ state: "visible" });
    app.aText = await item.locator(".text").textContent();
    app.aMeta = await item.locator(".meta").textContent();
    await tid(a, "publish-status").filter({ hasText: "published" }).waitFor();
    app.status = await tid(a, "publish-status").textContent();
    await tid(b, "announcement").first().waitFor({ state: "visible" });
    app.bText = await tid(b, "announcement").first().locator(".text").textContent();
    // A newcomer is replayed the room's announcements when it joins.
    await tid(c, "announcement").first().waitFor({ state: "visible" });
    app.lateText = await tid(c, "announcement").first().locator(".text").textContent();
    results.appPublish = app;

    // One more line so the picture shows a back-and-forth with three people.
    await say(c, "Cy here, I caught up on the history");
    await sees(a, "Cy here, I caught up on the history");
    mkdirSync(dirname(shot), { recursive: true });
    await a.screenshot({ path: shot, fullPage: false });
    results.screenshot = shot;
    for (const p of [a, b, c]) await p.context().close();
  }

  // (b) Socket.IO forced to long-polling.
  {
    const { r, a, b } = await conversation("?mode=socketio&transport=polling", "poll", { keep: true });
    // Still polling once everything has been said: no upgrade happened.
    r.aTransport = await tid(a, "transport").textContent();
    r.bTransport = await tid(b, "transport").textContent();
    r.aEngine = await a.evaluate(() => window.demoSocket.io.engine.transport.name);
    results.socketioPolling = r;
    await a.context().close();
    await b.context().close();
  }

  // (c) The raw WebSocket chat protocol.
  {
    const { r, a, b } = await conversation("?mode=ws", "raw", { keep: true });
    // Bob goes: Ann is told (chat-leave from the server).
    await b.context().close();
    await a.locator('[data-testid="notice"]', { hasText: "Bob-raw left" }).first().waitFor();
    r.aNoticesAfterLeave = await notices(a);
    results.rawWebsocket = r;
    await a.context().close();
  }

  // SSE down, POST /p up.
  {
    const { r } = await conversation("?mode=sse", "sse");
    results.sse = r;
  }

  // (f) Who is here: Ann signs in on two pages (one at once by the address, one by the switch),
  // Bob on a third; everyone lists each user once; Bob signs out, Ann's tab shows her alone.
  {
    const members = (page) => tid(page, "members").locator("li").allTextContents();
    const shows = (page, names) => page.waitForFunction((want) =>
      [...document.querySelectorAll('[data-testid="members"] li')].map((li) => li.textContent).join(",") === want,
    names.join(","));
    const a1 = await open("?mode=sse&name=Ann-who&user=ann");
    await shows(a1, ["ann"]);
    const a2 = await open("?mode=sse&name=Ann-who-2");
    await tid(a2, "login-user").selectOption("ann");
    await shows(a2, ["ann"]);
    const b = await open("?mode=sse&name=Bob-who");
    await tid(b, "login-user").selectOption("bob");
    for (const p of [a1, a2, b]) await shows(p, ["ann", "bob"]);
    const who = { a1: await members(a1), a2: await members(a2), b: await members(b), state: await tid(a1, "who-state").textContent() };
    await tid(b, "login-user").selectOption("");
    await shows(a1, ["ann"]);
    who.a1AfterBob = await members(a1);
    who.bSignedOut = { members: await members(b), state: await tid(b, "who-state").textContent() };
    results.whoIsHere = who;
    for (const p of [a1, a2, b]) await p.context().close();
  }

  results.consoleErrors = consoleErrors;
  console.log(JSON.stringify(results));
  clearTimeout(watchdog);
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String((e && e.stack) || e), partial: results, consoleErrors }));
  try { await browser?.close(); } catch { /* already gone */ }
  process.exit(1);
}
