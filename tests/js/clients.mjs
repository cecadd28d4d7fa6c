// Helpers the socket.io-client scenarios share (socketio.mjs, cluster.mjs).

/// The client's `transports` option for a test mode.
export const TRANSPORTS = { polling: ["polling"], websocket: ["websocket"], upgrade: ["polling", "websocket"] };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// The arguments of `socket`'s next `event`, or a rejection after `ms`.
export function once(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${event}`)), ms);
    socket.once(event, (...args) => { clearTimeout(t); resolve(args); });
  });
}

/// Resolves when the socket is connected on the transport `mode` asks for (after the upgrade
/// in `upgrade` mode), with that transport's name.
export async function ready(socket, mode) {
  if (!socket.connected) await once(socket, "connect");
  if (mode === "upgrade" && socket.io.engine.transport.name !== "websocket") {
    await once(socket.io.engine, "upgrade");
  }
  return socket.io.engine.transport.name;
}
