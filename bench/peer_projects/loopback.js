// Preloaded into twilio-run with NODE_OPTIONS=--require (bench/peers.py): twilio-run has no
// --host option and calls app.listen(port); this makes a listen given only a port (and maybe a
// callback) bind 127.0.0.1, so the benchmark's servers stay on loopback.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  const portOnly = typeof port === "number" || (typeof port === "string" && /^\d+$/.test(port));
  if (portOnly && (args.length === 1 || typeof args[1] === "function")) {
    args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
