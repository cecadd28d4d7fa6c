// The gateway's demo chat: one page, three transports, no framework, no build step.
//
// Query parameters:
//   ?mode=socketio (default) | ws | sse    which transport carries the chat
//   ?transport=polling                      Socket.IO on long-polling only (both sockets)
//   ?name=Ann                               the name to start with (else the last one used)
//   ?user=ann                               sign in to "Who is here" as ann (ann, bob or cy)
//
// ── Socket.IO mode: the tiny client protocol ────────────────────────────────────────────────
// The gateway runs namespace "/" with `relay` (every client event goes to the *other* sockets
// of the sender's rooms — with no rooms joined, the whole namespace), `history: 50` (the last
// 50 relayed events greet a socket when it connects) and `client_rooms`. There is no chat
// server code anywhere: the page defines the protocol, the gateway relays it.
//
//   emit("presence", {id, cid, what: "joined" | "left" | "renamed", name, was?, at})
//   emit("chat",     {id, cid, name, text, at}, ack)   ack: {"seq": N} (N = hub sequence)
//
//   id   random per message: history replayed after a reconnect is shown once
//   cid  random per page load: tells this page's own messages in the history
//   at   sender's clock, ms since the epoch
//
// The sender is never relayed its own events, so the page shows what it sent right away and
// marks it delivered when the ack arrives. With connection state recovery on, every event
// from the server carries one more argument (an offset): handlers read the first only.
//
// The "From the app" panel uses a second, listen-only socket that joins room `announcements`.
// (Relay goes to the sender's rooms: had the chat socket joined that room, chat would be
// relayed into the app's `announcements` topic.) The app publishes there with
//   POST http://127.0.0.1:9090/publish {"topic":"announcements","event":"announcement","data":{...}}
// and joining the room replays its last 50 announcements.
//
// ── WebSocket mode ─────────────────────────────────────────────────────────────────────────
// wss://<host>/ws with subprotocol beej-chat-protocol: {"type":"chat-join"|"chat-message",
// "payload":{"username","message"}}; the gateway broadcasts to everyone (sender included) and
// sends chat-leave when a connection goes. No history.
//
// ── Who is here ────────────────────────────────────────────────────────────────────────────
// A login switch and a presence list, apart from the chat. Signing in sets the app's session
// cookie (`user=<name>`, what backend-stub's /broadcasting/auth reads, as a Laravel session
// would be) and opens EventSource /events?topic=presence-demo: the gateway asks the app about
// the presence channel, and the stream gets `presence:subscribed` {topic, members}, then
// `presence:joining` / `presence:leaving` {topic, member}; members are kept by user_id.
// Signing out (or switching) closes the stream: the gateway announces the departure when it
// was that user's last tab. The login outlives a reload (the cookie); `?user=ann` signs in at
// once.
//
// ── SSE mode ───────────────────────────────────────────────────────────────────────────────
// EventSource /events?topic=chat-sse (events named after the topic, resumed with
// Last-Event-ID after a drop), and POST /p?t=chat-sse with the JSON of
// {kind: "chat" | "presence", ...the Socket.IO payloads above} as the body.
"use strict";

(() => {
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const params = new URLSearchParams(location.search);
  const mode = ["socketio", "ws", "sse"].includes(params.get("mode")) ? params.get("mode") : "socketio";
  const transports = params.get("transport") === "polling" ? ["polling"] : ["polling", "websocket"];
  const rand = () => Math.random().toString(36).slice(2, 10);
  const cid = rand();

  const els = {
    messages: $("messages"), form: $("composer"), name: $("name"), text: $("message"),
    transport: $("transport"), state: $("state"), hint: $("mode-hint"),
    announcements: $("announcements"), appState: $("app-state"),
    ask: $("ask-publish"), publishStatus: $("publish-status"),
  };

  // ── names ──
  const stored = (() => { try { return localStorage.getItem("gateway-demo-name"); } catch { return null; } })();
  els.name.value = (params.get("name") || stored || `guest-${rand().slice(0, 4)}`).slice(0, 32);
  let name = els.name.value;
  const remember = () => { try { localStorage.setItem("gateway-demo-name", name); } catch { /* private mode */ } };
  remember();

  // ── mode switch: links keep the other parameters ──
  for (const a of document.querySelectorAll("[data-mode]")) {
    const q = new URLSearchParams(location.search);
    q.set("mode", a.dataset.mode);
    a.href = `?${q}`;
    if (a.dataset.mode === mode) a.setAttribute("aria-current", "page");
  }

  // ── rendering ──
  const seen = new Set();
  const time = (at) => new Date(typeof at === "number" ? at : Date.now())
    .toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

  function scrollDown(list) {
    list.scrollTop = list.scrollHeight;
  }

  /// Lines are kept in the order they were written (`at`, the sender's clock), so the history
  /// a newcomer is replayed lands above its own "joined" notice. Lines without `at` go last.
  function insert(li, at) {
    if (typeof at === "number") {
      li.dataset.at = at;
      let next = null;
      for (let el = els.messages.lastElementChild; el && Number(el.dataset.at) > at; el = el.previousElementSibling) next = el;
      if (next) { els.messages.insertBefore(li, next); return; }
    }
    els.messages.append(li);
    scrollDown(els.messages);
  }

  /// A chat line; returns the element (or null for a duplicate).
  function addChat({ id, name: who, text, at, mine = false, pending = false }) {
    if (id && seen.has(id)) return null;
    if (id) seen.add(id);
    const li = document.createElement("li");
    li.className = `msg ${mine ? "mine" : "theirs"}${pending ? " pending" : ""}`;
    li.dataset.testid = "chat-line";
    li.dataset.kind = "chat";
    li.dataset.from = who;
    const meta = document.createElement("div");
    meta.className = "meta";
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = who;
    const when = document.createElement("time");
    when.textContent = time(at);
    meta.append(author, when);
    const body = document.createElement("div");
    body.className = "bubble";
    body.dataset.testid = "chat-text";
    body.textContent = text;
    li.append(meta, body);
    insert(li, at);
    return li;
  }

  function addNotice(text, { id, kind = "notice", at } = {}) {
    if (id && seen.has(id)) return;
    if (id) seen.add(id);
    const li = document.createElement("li");
    li.className = `notice ${kind}`;
    li.dataset.testid = "notice";
    li.dataset.kind = kind;
    li.textContent = text;
    insert(li, at);
  }

  function presenceText(p) {
    const who = p.cid === cid ? `${p.name} (you)` : p.name;
    if (p.what === "left") return `${who} left`;
    if (p.what === "renamed") return `${p.was} is now ${who}`;
    return `${who} joined`;
  }

  function setState(el, state) {
    el.dataset.state = state;
    el.textContent = state;
  }

  const setTransport = (t) => { els.transport.textContent = t; };

  // ── one interface per mode: {sendChat(text), rename(was)} ──
  const modes = {
    socketio() {
      els.hint.textContent = "Socket.IO v4, served in-process: relay + history 50. Earlier messages greet newcomers.";
      const socket = io({ transports });
      window.demoSocket = socket; // for tests and for poking around in the console

      socket.io.on("open", () => {
        const engine = socket.io.engine;
        setTransport(engine.transport.name);
        engine.on("upgrade", (t) => setTransport(t.name));
      });
      socket.io.on("reconnect_attempt", () => setState(els.state, "connecting"));
      socket.on("connect", () => {
        setState(els.state, socket.recovered ? "recovered" : "connected");
        setTransport(socket.io.engine.transport.name);
        // A recovered session is the same presence; a new one announces itself.
        if (!socket.recovered) presence("joined");
      });
      socket.on("disconnect", () => setState(els.state, "disconnected"));
      socket.on("connect_error", () => setState(els.state, "disconnected"));

      socket.on("chat", (m) => {
        if (!m || typeof m.text !== "string") return;
        addChat({ id: m.id, name: String(m.name ?? "?"), text: m.text, at: m.at, mine: m.cid === cid });
      });
      socket.on("presence", (p) => {
        if (!p || typeof p.name !== "string") return;
        addNotice(presenceText(p), { id: p.id, kind: p.what === "left" ? "left" : "joined", at: p.at });
      });

      function presence(what, extra = {}) {
        const p = { id: rand(), cid, what, name, at: Date.now(), ...extra };
        addNotice(presenceText(p), { id: p.id, kind: what === "left" ? "left" : "joined", at: p.at });
        socket.emit("presence", p);
      }
      addEventListener("pagehide", () => { if (socket.connected) socket.emit("presence", { id: rand(), cid, what: "left", name, at: Date.now() }); });

      return {
        sendChat(text) {
          const m = { id: rand(), cid, name, text, at: Date.now() };
          const li = addChat({ ...m, mine: true, pending: true });
          socket.timeout(10000).emit("chat", m, (err, ack) => {
            if (!li) return;
            li.classList.remove("pending");
            if (err || !ack || ack.error) {
              li.classList.add("failed");
              li.title = "not delivered";
            } else {
              li.dataset.seq = ack.seq;
              li.title = `relayed, seq ${ack.seq}`;
            }
          });
        },
        rename(was) { presence("renamed", { was }); },
      };
    },

    ws() {
      els.hint.textContent = "Raw WebSocket at /ws, subprotocol beej-chat-protocol. No history: only what is said while you are here.";
      let ws = null;
      let delay = 500;
      let everOpen = false;
      const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
      const send = (type, payload) => {
        if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({ type, payload })); return true; }
        return false;
      };
      function connect() {
        setState(els.state, "connecting");
        ws = new WebSocket(url, "beej-chat-protocol");
        ws.onopen = () => {
          delay = 500;
          setState(els.state, everOpen ? "recovered" : "connected");
          everOpen = true;
          setTransport(`websocket (${ws.protocol || "no subprotocol"})`);
          send("chat-join", { username: name });
        };
        ws.onmessage = (e) => {
          let m;
          try { m = JSON.parse(e.data); } catch { return; }
          const p = m.payload || {};
          if (m.type === "chat-message") {
            addChat({ name: p.username, text: p.message, mine: p.username === name });
          } else if (m.type === "chat-join") {
            addNotice(`${p.username}${p.username === name ? " (you)" : ""} joined`, { kind: "joined" });
          } else if (m.type === "chat-leave") {
            addNotice(`${p.username} left`, { kind: "left" });
          }
        };
        ws.onclose = () => {
          setState(els.state, "disconnected");
          setTimeout(connect, delay);
          delay = Math.min(delay * 2, 10000);
        };
      }
      connect();
      return {
        sendChat(text) { if (!send("chat-message", { username: name, message: text })) flash("not connected"); },
        // The server remembers the last username a connection used (for its chat-leave).
        rename() { send("chat-join", { username: name }); },
      };
    },

    sse() {
      els.hint.textContent = "Server-Sent Events on /events?topic=chat-sse; messages go up with POST /p?t=chat-sse. Resumes after a drop.";
      const topic = "chat-sse";
      const post = (obj) => fetch(`/p?t=${topic}`, {
        method: "POST", headers: { "Content-Type": "text/plain; charset=utf-8" }, body: JSON.stringify(obj),
      }).then((r) => { if (!r.ok) throw new Error(`POST /p: ${r.status}`); });
      let everOpen = false;
      let announced = false;
      const es = new EventSource(`/events?topic=${topic}`);
      setTransport("sse + POST");
      es.onopen = () => {
        setState(els.state, everOpen ? "recovered" : "connected");
        everOpen = true;
        if (!announced) {
          announced = true;
          post({ kind: "presence", id: rand(), cid, what: "joined", name, at: Date.now() }).catch((e) => flash(e.message));
        }
      };
      es.onerror = () => setState(els.state, es.readyState === EventSource.CLOSED ? "disconnected" : "connecting");
      es.addEventListener(topic, (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch { return; }
        if (m.kind === "chat" && typeof m.text === "string") {
          addChat({ id: m.id, name: String(m.name ?? "?"), text: m.text, at: m.at, mine: m.cid === cid });
        } else if (m.kind === "presence" && typeof m.name === "string") {
          addNotice(presenceText(m), { id: m.id, kind: m.what === "left" ? "left" : "joined", at: m.at });
        }
      });
      es.addEventListener("reset", () => addNotice("Some messages were lost (the server restarted).", { kind: "left" }));
      addEventListener("pagehide", () => {
        navigator.sendBeacon(`/p?t=${topic}`, JSON.stringify({ kind: "presence", id: rand(), cid, what: "left", name, at: Date.now() }));
      });
      return {
        sendChat(text) { post({ kind: "chat", id: rand(), cid, name, text, at: Date.now() }).catch((e) => flash(e.message)); },
        rename(was) { post({ kind: "presence", id: rand(), cid, what: "renamed", name, was, at: Date.now() }).catch((e) => flash(e.message)); },
      };
    },
  };

  function flash(text) {
    addNotice(text, { kind: "error" });
  }

  if (typeof io !== "function") {
    // The gateway serves the client library itself (built in, or realtime.socketio.client_dir).
    setState(els.appState, "no Socket.IO client");
    if (mode === "socketio") {
      setState(els.state, "disconnected");
      flash("/socket.io/socket.io.js did not load: is the /socket.io/ route mounted?");
      return;
    }
  }
  const chat = modes[mode]();

  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = els.text.value.trim();
    if (!text) return;
    chat.sendChat(text);
    els.text.value = "";
    els.text.focus();
  });
  els.name.addEventListener("change", () => {
    const next = els.name.value.trim().slice(0, 32);
    if (!next) { els.name.value = name; return; }
    if (next === name) return;
    const was = name;
    name = next;
    remember();
    chat.rename(was);
  });

  els.ask.addEventListener("click", async () => {
    els.ask.disabled = true;
    els.publishStatus.className = "publish-status";
    els.publishStatus.textContent = "asking the app…";
    try {
      const r = await fetch("/publish-demo", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: `${name} asked the app to say hello` }),
      });
      const backend = r.headers.get("x-backend-id") || "the app";
      const body = await r.json().catch(() => ({}));
      if (r.status === 202) {
        els.publishStatus.classList.add("ok");
        els.publishStatus.textContent = `${backend} published it (announcements #${body.seq ?? "?"})`;
      } else {
        els.publishStatus.classList.add("bad");
        els.publishStatus.textContent = `${backend}: ${r.status} ${body.error || ""}`.trim();
      }
    } catch (e) {
      els.publishStatus.classList.add("bad");
      els.publishStatus.textContent = `request failed: ${e.message}`;
    } finally {
      els.ask.disabled = false;
    }
  });

  // ── "Who is here": the login switch and the presence list ──
  const who = { state: $("who-state"), user: $("login-user"), list: $("members") };
  const members = new Map();
  let presence = null;
  function showMembers() {
    const items = [...members.values()].map((m) => {
      const li = document.createElement("li");
      li.dataset.testid = "member";
      const shown = String(m.user_info?.name ?? m.user_id);
      li.textContent = shown;
      if (m.user_id === who.user.value) li.classList.add("me");
      return li;
    });
    who.list.replaceChildren(...items);
  }
  function signIn(user) {
    presence?.close();
    presence = null;
    members.clear();
    showMembers();
    document.cookie = user
      ? `user=${encodeURIComponent(user)}; Path=/; SameSite=Lax; Secure`
      : "user=; Path=/; Max-Age=0; SameSite=Lax; Secure";
    if (!user) { setState(who.state, "disconnected"); who.state.textContent = "signed out"; return; }
    setState(who.state, "connecting");
    const stream = new EventSource("/events?topic=presence-demo");
    presence = stream;
    const data = (e) => { try { return JSON.parse(e.data); } catch { return {}; } };
    stream.addEventListener("presence:subscribed", (e) => {
      members.clear();
      for (const m of data(e).members || []) members.set(JSON.stringify(m.user_id), m);
      setState(who.state, "connected");
      showMembers();
    });
    stream.addEventListener("presence:joining", (e) => {
      const m = data(e).member;
      if (m) { members.set(JSON.stringify(m.user_id), m); showMembers(); }
    });
    stream.addEventListener("presence:leaving", (e) => {
      const m = data(e).member;
      if (m) { members.delete(JSON.stringify(m.user_id)); showMembers(); }
    });
    stream.addEventListener("error", () => {
      if (presence !== stream) return;
      setState(who.state, stream.readyState === EventSource.CLOSED ? "disconnected" : "connecting");
    });
  }
  who.user.addEventListener("change", () => signIn(who.user.value));
  // Signed in as before (the session cookie), unless the address says otherwise.
  const session = document.cookie.split(";").map((c) => c.trim().split("=")).find(([k]) => k === "user");
  const startAs = params.get("user") ?? (session ? decodeURIComponent(session[1] || "") : "");
  if ([...who.user.options].some((o) => o.value === startAs)) who.user.value = startAs;
  signIn(who.user.value);

  // ── "From the app": a listen-only socket in room `announcements` ──
  if (typeof io !== "function") return;
  const appSocket = io({ transports, forceNew: true });
  window.demoAppSocket = appSocket;
  appSocket.on("connect", () => {
    setState(els.appState, appSocket.recovered ? "recovered" : "connected");
    if (appSocket.recovered) return; // the room came back with the session
    // A new session: the join replays the room's last 50 announcements, so start afresh.
    els.announcements.replaceChildren();
    appSocket.timeout(10000).emit("join", "announcements", (err, ack) => {
      if (err || !ack || !ack.ok) setState(els.appState, "not in the room");
      else els.appState.dataset.joined = "true";
      if (!els.announcements.children.length) showNoAnnouncements();
    });
  });
  appSocket.on("disconnect", () => setState(els.appState, "disconnected"));
  appSocket.on("connect_error", () => setState(els.appState, "disconnected"));
  appSocket.on("announcement", (data) => {
    els.announcements.querySelector(".empty")?.remove();
    const li = document.createElement("li");
    li.dataset.testid = "announcement";
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = typeof data === "string" ? data : String(data?.text ?? JSON.stringify(data));
    const meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = `${data?.from ? `from ${data.from} · ` : ""}${time()}`;
    li.append(text, meta);
    els.announcements.append(li);
    scrollDown(els.announcements);
  });
  function showNoAnnouncements() {
    const li = document.createElement("li");
    li.className = "empty";
    li.dataset.testid = "announcements-empty";
    li.textContent = "Nothing yet.";
    els.announcements.append(li);
  }

})();
