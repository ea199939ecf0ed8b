// forward_client.js - the npm package fluent-logger as a real client of
// sluice's forward input, driven by test_forward.py. argv[2] is a JSON
// object: port, n, mode (Message, PackedForward, CompressedPackedForward),
// ack (requireAckResponse), tag, label, eventTime, sharedKey, hostname,
// ca (a CA file for TLS), wait_ms (how long to wait for the callbacks).
// Prints one JSON line: {"ok": callbacks without error, "errors": [...]}.
'use strict';
const fs = require('fs');
const logger = require('fluent-logger');

const o = JSON.parse(process.argv[2]);
const opts = {
  host: '127.0.0.1', port: o.port, eventMode: o.mode || 'Message',
  requireAckResponse: !!o.ack, ackResponseTimeout: o.wait_ms || 20000,
  reconnectInterval: 600000, internalLogger: {
    info() {}, error() {}, warn() {}, debug() {}, log() {} },
};
if (o.sharedKey !== undefined)
  opts.security = { clientHostname: o.hostname || 'node-client',
                    sharedKey: o.sharedKey, username: '', password: '' };
if (o.ca) {
  opts.tls = true;
  opts.tlsOptions = { ca: fs.readFileSync(o.ca), servername: 'localhost' };
}
const sender = logger.createFluentSender(o.tag || 'app', opts);
let ok = 0, done = 0;
const errors = [];
sender.on('error', (e) => errors.push(String(e && e.message || e)));
function finish() {
  process.stdout.write(JSON.stringify({ ok, errors }) + '\n');
  process.exit(0);
}
for (let i = 0; i < o.n; i++) {
  const rec = { i, msg: 'event ' + i, nested: { list: [1, 'two', null] } };
  const cb = (err) => {
    if (err) errors.push(String(err.message || err)); else ok++;
    if (++done === o.n) finish();
  };
  if (o.eventTime)
    sender.emit(o.label || 'ev', rec, logger.EventTime.fromTimestamp(
      1700000000000 + i), cb);
  else
    sender.emit(o.label || 'ev', rec, cb);
}
setTimeout(finish, o.wait_ms || 20000);
