// An SMSC built on node-smpp (npm "smpp", pinned in package.json), which nobody at Parley wrote.
// It answers submit_sm with hex message ids counting up from --id-start (10: "a".."f", then the
// all-digit "10", "11"...) and sends each delivery receipt right after the submit_sm_resp, as
// fast SMSCs do: the receipt often reaches Parley before its send is recorded.
//
//   node server.js --system-id parley --password secret [--id-start 10] [--port 0] [--lost-receipts 1]
//
// With --lost-receipts 1 it sends no receipts at all; query_sm then answers each message's state
// (its stat as below; ESME_RQUERYFAIL for an id it never gave). The last submit_sm's
// validity_period, schedule_delivery_time (as node-smpp decoded them, ISO UTC) and priority_flag
// are in the counts as "last".
//
// Prints {"port": N} on its first line once listening; exits when its stdin closes (so a test
// that dies leaves no server behind). A receipt's stat follows the destination's last digit:
// even DELIVRD, odd UNDELIV with err = the destination's last three digits, so a receipt that
// lands on another message shows. Each line written to its stdin is answered with its counts,
// binds among them: open now and the most open at once.
'use strict';
const smpp = require('smpp');

const args = {port: '0', 'system-id': 'parley', password: 'secret', 'id-start': '10', 'lost-receipts': '0'};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];

let nextId = parseInt(args['id-start'], 10);
const stamp = (d) => d.toISOString().replace(/[-T:]/g, '').slice(2, 12);  // YYMMDDhhmm
const counts = {submits: 0, receipts: 0, receipts_answered: 0, binds: 0, binds_peak: 0, queries: 0, last: {}};
const sent = new Map();  // message id -> destination, for query_sm
const iso = (d) => (d instanceof Date ? d.toISOString() : d || '');

const server = smpp.createServer((session) => {
  let bound = false;
  const bind = (pdu) => {
    const ok = pdu.system_id === args['system-id'] && pdu.password === args.password;
    if (ok && !bound) {
      counts.binds += 1;
      counts.binds_peak = Math.max(counts.binds_peak, counts.binds);
    }
    bound = ok;
    session.send(pdu.response({command_status: ok ? 0 : smpp.ESME_RINVPASWD, system_id: 'NodeSMSC'}));
    if (!ok) session.close();
  };
  session.on('bind_transceiver', bind);
  session.on('bind_transmitter', bind);
  session.on('bind_receiver', bind);
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => { session.send(pdu.response()); session.close(); });
  session.on('close', () => { if (bound) { bound = false; counts.binds -= 1; } });
  session.on('error', () => {});
  session.on('submit_sm', (pdu) => {
    if (!bound) { session.send(pdu.response({command_status: smpp.ESME_RINVBNDSTS})); return; }
    counts.submits += 1;
    const id = (nextId++).toString(16);
    const dest = String(pdu.destination_addr);
    sent.set(id, dest);
    counts.last = {
      validity_period: iso(pdu.validity_period), schedule_delivery_time: iso(pdu.schedule_delivery_time),
      priority_flag: pdu.priority_flag,
    };
    const ok = parseInt(dest.slice(-1), 10) % 2 === 0;
    const now = stamp(new Date());
    const text = `id:${id} sub:001 dlvrd:${ok ? '001' : '000'} submit date:${now} done date:${now} ` +
      `stat:${ok ? 'DELIVRD' : 'UNDELIV'} err:${ok ? '000' : dest.slice(-3)} text:`;
    session.send(pdu.response({message_id: id}), () => {
      if (!(pdu.registered_delivery & 1) || args['lost-receipts'] === '1') return;
      counts.receipts += 1;
      session.deliver_sm({
        source_addr: dest, destination_addr: String(pdu.source_addr), esm_class: 0x04,
        short_message: text, receipted_message_id: id, message_state: ok ? 2 : 5,
      }, () => { counts.receipts_answered += 1; });
    });
  });
  session.on('query_sm', (pdu) => {
    counts.queries += 1;
    const dest = sent.get(String(pdu.message_id));
    if (!bound || dest === undefined) {
      session.send(pdu.response({command_status: smpp.ESME_RQUERYFAIL}));
      return;
    }
    const ok = parseInt(dest.slice(-1), 10) % 2 === 0;
    session.send(pdu.response({
      message_id: pdu.message_id, final_date: new Date(), message_state: ok ? 2 : 5, error_code: ok ? 0 : 1,
    }));
  });
});

server.listen(parseInt(args.port, 10), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({port: server.address().port}) + '\n');
});
process.stdin.on('data', () => process.stdout.write(JSON.stringify(counts) + '\n'));
process.stdin.on('end', () => process.exit(0));
