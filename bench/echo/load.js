// The load client of bench/echo.sh: authorized presence subscribes the way Laravel Echo makes
// them, against the gateway (`echo: true`, socket.io-client 4.x) or laravel-echo-server 1.6.3
// (socket.io 2.x inside, so socket.io-client 2.x), counted from the client and from /proc.
//
//   node bench/echo/load.js --label gw --proto v4 --url http://127.0.0.1:19501 \
//       --procs 2 --conns 32 --cycles 100 --server-pids "PID" --app-pids "PID" \
//       [--db-pids "PID"] [--app-log FILE] [--warmup 5] [--timeout-ms 10000] [--max-secs 120]
//
// PROCS worker processes (one Node process cannot load a server: the client would be what is
// measured) each open CONNS WebSocket connections, each signed in as its own user (the cookie
// `user=<name>`, backend-stub's session). A connection runs one cycle at a time: `subscribe`
// {channel: presence-…, auth: {headers: {}}} (what Echo's `join()` emits) -> the server asks the
// app (`POST /broadcasting/auth`) -> `presence:subscribed` (channel, members) -> `unsubscribe`.
// It alternates between two channels of its own, so a channel is subscribed again only after a
// whole cycle on the other one (laravel-echo-server keeps members in Redis with read-modify-write
// steps: an unsubscribe still in flight would race the next subscribe to the same channel).
// WARMUP cycles per connection run before the measured window (the app's connection pool, the
// JIT, the channels' first creation); then CYCLES cycles per connection are measured.
//
// Prints one JSON line: subscribes/s, latency (subscribe sent -> presence:subscribed) p50/p99,
// failures by kind, CPU per subscribe of the server, the app and the database (utime+stime of
// the given processes and their descendants, from /proc, over the measured window), the client's
// own CPU (all its processes, and the busiest one: a worker near 100% means the client, not the
// server, sets the pace), the other processes' CPU, and the app's answers to
// /broadcasting/auth counted in backend-stub's log (one line per callback) over the window.
"use strict";
const { fork } = require("child_process");
const fs = require("fs");
const { performance } = require("perf_hooks");

const CLK_TCK = Number(process.env.CLK_TCK || 100);

function parseArgs(argv) {
  const a = {
    procs: 2, conns: 32, cycles: 100, warmup: 5, timeoutMs: 10000, maxSecs: 120,
    serverPids: "", appPids: "", dbPids: "", appLog: "", label: "", proto: "v4", url: "",
  };
  const keys = {
    "--label": "label", "--proto": "proto", "--url": "url", "--procs": "procs",
    "--conns": "conns", "--cycles": "cycles", "--warmup": "warmup",
    "--timeout-ms": "timeoutMs", "--max-secs": "maxSecs", "--server-pids": "serverPids",
    "--app-pids": "appPids", "--db-pids": "dbPids", "--app-log": "appLog",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const k = keys[argv[i]];
    if (!k || i + 1 >= argv.length) throw new Error(`unknown or incomplete option ${argv[i]}`);
    a[k] = typeof a[k] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!a.url || !["v2", "v4"].includes(a.proto)) throw new Error("--url and --proto v2|v4 are required");
  return a;
}

// --- /proc ---------------------------------------------------------------------------------

/// pid -> {ppid, ticks} for every process (utime+stime; a process's stat counts all its threads).
function procTable() {
  const table = new Map();
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, "utf8");
    } catch {
      continue; // exited between the listing and the read
    }
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    table.set(name, { ppid: f[1], ticks: Number(f[11]) + Number(f[12]) });
  }
  return table;
}

/// Ticks of the given processes and all their descendants.
function treeTicks(table, roots) {
  const inSet = new Set(roots.filter((p) => table.has(p)));
  for (let changed = true; changed; ) {
    changed = false;
    for (const [pid, p] of table) {
      if (!inSet.has(pid) && inSet.has(p.ppid)) {
        inSet.add(pid);
        changed = true;
      }
    }
  }
  let s = 0;
  for (const pid of inSet) s += table.get(pid).ticks;
  return s;
}

/// Busy ticks of the whole machine, all cores: processes' time (user, nice, system, steal) and
/// interrupt time (irq, softirq) apart. With interrupt time accounted on its own (as on this
/// project's kernels), the kernel's loopback packet processing lands in softirq rather than in
/// the processes that caused it: it is reported as the machine's, not counted as "others".
function machineBusy() {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).map(Number);
  return { procs: f[1] + f[2] + f[3] + f[8], irq: f[6] + f[7] };
}

/// backend-stub's log lines for /broadcasting/auth: all, and those answered 200.
function appCalls(file) {
  if (!file) return { calls: -1, ok: -1 };
  const text = fs.readFileSync(file, "utf8");
  let calls = 0, ok = 0;
  for (const line of text.split("\n")) {
    if (!line.includes("broadcasting/auth channel=")) continue;
    calls++;
    if (line.endsWith(": 200")) ok++;
  }
  return { calls, ok };
}

// --- the worker ----------------------------------------------------------------------------

function worker(a, index) {
  const connect = a.proto === "v2" ? require("socket.io-client-v2") : require("socket.io-client").io;
  const conns = [];
  const lat = [];
  const failures = { refused: 0, timeout: 0, wrong_members: 0, closed: 0, stray: 0 };
  let phase = "connect", running = 0, attempts = 0;

  function done(c) {
    c.busy = false;
    running--;
    if (running === 0) {
      if (phase === "warmup") process.send({ type: "warm" });
      else if (phase === "measure") process.send({ type: "result", lat, failures, attempts });
    }
  }
  function next(c) {
    if (c.left === 0 || !c.socket.connected) return done(c);
    c.left--;
    c.channel = c.channels[c.n++ % 2];
    c.t0 = performance.now();
    if (phase === "measure") attempts++;
    c.socket.emit("subscribe", { channel: c.channel, auth: { headers: {} } });
  }
  function finish(c, ok) {
    c.socket.emit("unsubscribe", { channel: c.channel, auth: { headers: {} } });
    c.channel = null;
    if (ok && phase === "measure") lat.push(performance.now() - c.t0);
    next(c);
  }
  function run(cycles) {
    running = conns.length;
    for (const c of conns) {
      c.busy = true;
      c.left = cycles;
      next(c);
    }
  }
  // A subscribe with no answer within the timeout counts as failed; the connection moves on.
  setInterval(() => {
    const now = performance.now();
    for (const c of conns) {
      if (c.channel && now - c.t0 > a.timeoutMs) {
        if (phase === "measure") failures.timeout++;
        finish(c, false);
      }
    }
  }, 250).unref();

  let opened = 0;
  for (let k = 0; k < a.conns; k++) {
    const user = `b${index}x${k}`;
    const socket = connect(a.url, {
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      extraHeaders: { cookie: `user=${user}` },
    });
    const c = {
      socket, user, busy: false, left: 0, n: 0, channel: null, t0: 0,
      channels: [`presence-bench.${index}.${k}.a`, `presence-bench.${index}.${k}.b`],
    };
    conns.push(c);
    socket.on("presence:subscribed", (channel, members) => {
      if (channel !== c.channel) {
        if (phase === "measure") failures.stray++;
        return;
      }
      const mine = Array.isArray(members) && members.some((m) => m && m.user_id === user);
      if (!mine && phase === "measure") failures.wrong_members++;
      finish(c, mine);
    });
    socket.on("subscription_error", (channel, status) => {
      if (channel !== c.channel) return;
      if (phase === "measure") failures.refused++;
      else process.send({ type: "error", error: `warm-up subscribe refused: ${channel} ${status}` });
      finish(c, false);
    });
    socket.once("connect", () => {
      if (++opened === a.conns) {
        phase = "warmup";
        run(a.warmup);
      }
    });
    socket.on("connect_error", (e) => process.send({ type: "error", error: `connect: ${e.message || e}` }));
    socket.on("disconnect", (reason) => {
      if (phase === "measure") failures.closed++;
      if (phase !== "closing" && c.busy) {
        c.channel = null;
        done(c);
      }
      if (phase !== "closing" && phase !== "measure") process.send({ type: "error", error: `disconnected: ${reason}` });
    });
  }
  process.on("message", (m) => {
    if (m.type === "go") {
      phase = "measure";
      run(a.cycles);
    } else if (m.type === "close") {
      phase = "closing";
      for (const c of conns) c.socket.close();
      setTimeout(() => process.exit(0), 200);
    }
  });
}

// --- the driver ----------------------------------------------------------------------------

function pct(sorted, q) {
  if (!sorted.length) return -1;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function driver(a) {
  const t0 = Date.now();
  const workers = [];
  const warm = [];
  const results = [];
  let fail = null;
  const print = (o) => console.log(JSON.stringify({ label: a.label, mode: "echo-subscribe", ...o }));
  const deadline = setTimeout(() => {
    fail = `no result within ${a.maxSecs} s`;
    for (const w of workers) w.kill("SIGKILL");
    print({ error: fail });
    process.exit(1);
  }, a.maxSecs * 1000);
  const waitAll = (list, n) =>
    new Promise((resolve, reject) => {
      const check = setInterval(() => {
        if (fail) { clearInterval(check); reject(new Error(fail)); }
        else if (list.length === n) { clearInterval(check); resolve(); }
      }, 5);
    });
  for (let i = 0; i < a.procs; i++) {
    const w = fork(__filename, process.argv.slice(2), { env: { ...process.env, ECHO_LOAD_WORKER: String(i) } });
    w.on("message", (m) => {
      if (m.type === "warm") warm.push(i);
      else if (m.type === "result") results.push(m);
      else if (m.type === "error") fail = fail || `worker ${i}: ${m.error}`;
    });
    w.on("exit", (code) => {
      if (code && !fail && results.length < a.procs) fail = `worker ${i} exited with ${code}`;
    });
    workers.push(w);
  }
  try {
    await waitAll(warm, a.procs);
  } catch (e) {
    for (const w of workers) w.kill("SIGKILL");
    print({ error: e.message, failed: 1 });
    process.exit(1);
  }
  const ids = (s) => s.split(/[ ,]+/).filter(Boolean);
  const me = [String(process.pid)];
  const wpids = workers.map((w) => String(w.pid));
  const sample = () => {
    const table = procTable();
    return {
      at: performance.now(),
      busy: machineBusy(),
      server: treeTicks(table, ids(a.serverPids)),
      app: treeTicks(table, ids(a.appPids)),
      db: treeTicks(table, ids(a.dbPids)),
      client: treeTicks(table, me),
      workers: wpids.map((p) => treeTicks(table, [p])),
    };
  };
  const calls0 = appCalls(a.appLog);
  const s0 = sample();
  for (const w of workers) w.send({ type: "go" });
  try {
    await waitAll(results, a.procs);
  } catch (e) {
    for (const w of workers) w.kill("SIGKILL");
    print({ error: e.message, failed: 1 });
    process.exit(1);
  }
  const s1 = sample();
  const calls1 = appCalls(a.appLog);
  clearTimeout(deadline);
  for (const w of workers) w.send({ type: "close" });

  const secs = (s1.at - s0.at) / 1000;
  const lat = Float64Array.from(results.flatMap((r) => r.lat)).sort();
  const failures = {};
  for (const r of results) for (const [k, v] of Object.entries(r.failures)) failures[k] = (failures[k] || 0) + v;
  const failed = Object.values(failures).reduce((s, v) => s + v, 0);
  const ok = lat.length;
  const attempts = results.reduce((s, r) => s + r.attempts, 0);
  const d = (k) => s1[k] - s0[k];
  const usPer = (ticks) => (ok ? (ticks * 1e6) / CLK_TCK / ok : -1);
  const cpuPct = (ticks) => (ticks * 100) / CLK_TCK / secs;
  const ours = d("server") + d("app") + d("db") + d("client");
  const busy = { procs: s1.busy.procs - s0.busy.procs, irq: s1.busy.irq - s0.busy.irq };
  const r3 = (x) => Math.round(x * 1000) / 1000;
  const calls = calls0.calls < 0 ? -1 : calls1.calls - calls0.calls;
  const callsOk = calls0.ok < 0 ? -1 : calls1.ok - calls0.ok;
  print({
    procs: a.procs,
    conns: a.procs * a.conns,
    cycles: a.cycles,
    expected: a.procs * a.conns * a.cycles,
    attempts,
    subscribes: ok,
    failed,
    ...failures,
    secs: r3(secs),
    subscribes_per_s: r3(ok / secs),
    lat_ms_p50: r3(pct(lat, 0.5)),
    lat_ms_p99: r3(pct(lat, 0.99)),
    lat_ms_max: r3(lat.length ? lat[lat.length - 1] : -1),
    server_us_per_sub: r3(usPer(d("server"))),
    db_us_per_sub: r3(usPer(d("db"))),
    server_db_us_per_sub: r3(usPer(d("server") + d("db"))),
    app_us_per_sub: r3(usPer(d("app"))),
    client_us_per_sub: r3(usPer(d("client"))),
    server_cpu_pct: r3(cpuPct(d("server"))),
    db_cpu_pct: r3(cpuPct(d("db"))),
    app_cpu_pct: r3(cpuPct(d("app"))),
    client_cpu_pct: r3(cpuPct(d("client"))),
    client_max_proc_pct: r3(Math.max(...s1.workers.map((t, i) => cpuPct(t - s0.workers[i])))),
    others_cpu_pct: r3(Math.max(0, cpuPct(busy.procs - ours))),
    irq_cpu_pct: r3(cpuPct(busy.irq)),
    irq_us_per_sub: r3(usPer(busy.irq)),
    app_calls: calls,
    app_calls_ok: callsOk,
    app_calls_per_sub: attempts && calls >= 0 ? r3(calls / attempts) : -1,
    elapsed_s: r3((Date.now() - t0) / 1000),
  });
  setTimeout(() => process.exit(0), 300);
}

const args = (() => {
  try {
    return parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`load.js: ${e.message}`);
    process.exit(2);
  }
})();
if (process.env.ECHO_LOAD_WORKER !== undefined) worker(args, Number(process.env.ECHO_LOAD_WORKER));
else driver(args);
