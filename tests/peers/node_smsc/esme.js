// An ESME built on node-smpp (npm "smpp", pinned in package.json), which nobody at Parley wrote,
// binding into Parley's SMPP server (tests/test_smpp_server.py): bind_transceiver, one submit_sm
// asking for a receipt, then wait for that receipt.
//
//   node esme.js --port N --system-id acme --password secret --to 447700900123 [--tls 1] [--ca cert.pem]
//
// Prints one JSON line per step: {"bind": status}, {"submit": {status, id}}, {"receipt": {...}};
// answers each deliver_sm with deliver_sm_resp, unbinds after the receipt and exits 0 (1 on a
// refusal, 2 after --timeout ms without the receipt).
'use strict';
const fs = require('fs');
const smpp = require('smpp');

const args = {host: '127.0.0.1', port: '2775', 'system-id': 'acme', password: 'secret', to: '447700900123',
  from: 'ACME', text: 'Hello from node-smpp', tls: '', ca: '', timeout: '15000'};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const options = {host: args.host, port: Number(args.port), tls: Boolean(args.tls)};
if (options.tls) {
  options.ca = args.ca ? [fs.readFileSync(args.ca)] : undefined;
  options.servername = 'localhost';
  options.checkServerIdentity = () => undefined;  // the test certificate names 127.0.0.1 and localhost
}
const session = smpp.connect(options);
const timer = setTimeout(() => { out({timeout: true}); process.exit(2); }, Number(args.timeout));
session.on('error', (e) => { out({error: String(e)}); process.exit(1); });

session.on(options.tls ? 'secureConnect' : 'connect', () => {
  session.bind_transceiver({system_id: args['system-id'], password: args.password}, (pdu) => {
    out({bind: pdu.command_status});
    if (pdu.command_status !== 0) process.exit(1);
    session.submit_sm({
      source_addr_ton: 5, source_addr: args.from, dest_addr_ton: 1, dest_addr_npi: 1,
      destination_addr: args.to, registered_delivery: 1, short_message: args.text,
    }, (resp) => {
      out({submit: {status: resp.command_status, id: resp.message_id}});
      if (resp.command_status !== 0) process.exit(1);
    });
  });
});

session.on('deliver_sm', (pdu) => {
  session.send(pdu.response());
  const text = Buffer.isBuffer(pdu.short_message) ? pdu.short_message.toString()
    : (pdu.short_message && pdu.short_message.message) || '';
  out({receipt: {esm_class: pdu.esm_class, id: pdu.receipted_message_id, state: pdu.message_state, text}});
  clearTimeout(timer);
  session.unbind(() => { session.close(); process.exit(0); });
});
