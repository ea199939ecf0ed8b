// An application logging with the npm package fluent-logger to the
// receiver beside this file, waiting for each chunk's ack:
//   npm install fluent-logger
//   FORWARD_KEY=secret node app.js
'use strict';
const logger = require('fluent-logger');

const sender = logger.createFluentSender('app', {
  host: '127.0.0.1', port: Number(process.env.FORWARD_PORT || 24224),
  requireAckResponse: true, eventMode: 'PackedForward',
  security: { clientHostname: 'app-1', sharedKey: process.env.FORWARD_KEY },
});
let left = 3;
for (const user of ['ana', 'bo', 'cy']) {
  sender.emit('login', { user, ok: true }, logger.EventTime.now(), (err) => {
    if (err) { console.error(err.message); process.exit(1); }
    if (--left === 0) { console.log('3 events acked'); process.exit(0); }
  });
}
