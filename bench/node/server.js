// The Node reference server for bench/socketio.sh: npm socket.io 4.8 with its defaults (no TLS,
// no connection state recovery), and the same behaviour as the gateway's namespace "/" with
// `relay: true`: every client event is broadcast to all other sockets of the namespace.
//
//   node bench/node/server.js PORT [HOST]
//   REDIS_URL=redis://127.0.0.1:6390 node bench/node/server.js PORT   # a fleet node (bench/cluster.sh)
//
// With REDIS_URL, the server is a node of a fleet through @socket.io/redis-adapter 8.3 (the
// classic pub/sub adapter, ioredis clients): a broadcast reaches the sockets of every node.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 3300);
const host = process.argv[3] || "127.0.0.1";
const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const io = new Server(server, { serveClient: false });
if (process.env.REDIS_URL) {
  const { createAdapter } = require("@socket.io/redis-adapter");
  const Redis = require("ioredis");
  const pub = new Redis(process.env.REDIS_URL);
  const sub = pub.duplicate();
  io.adapter(createAdapter(pub, sub));
}
io.on("connection", (socket) => {
  socket.onAny((event, ...args) => socket.broadcast.emit(event, ...args));
});
server.listen(port, host, () => console.log(`socket.io ${require("socket.io/package.json").version} on ${host}:${port}`));
process.on("SIGTERM", () => process.exit(0));
