/**
 * Protocol violations from a scripted peer: each closes that connection with the right close code
 * and a close frame (never a bare drop), while another connection on the same server keeps working.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { connectClient, rawPeer, startServer } from '../../helpers.ts';
import { bytes, id, newestConnection, takeAcceptConf, within } from './wire.ts';

async function expectViolation(t: TestContext, message: Uint8Array | string, expectedCode: number): Promise<void> {
  const { url, server, logger } = await startServer(t, {
    maxMessageSize: 1024,
    onRequest: (_conn, m) => m.payload,
  });
  const bystander = await connectClient(t, url);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server, 2);
  peer.send(message);
  const { code, reason } = await within(peer.closed, 2_000, 'the close');
  assert.equal(code, expectedCode, `peer saw close ${code} (${reason})`);
  if (expectedCode !== 1009) assert.ok(reason.length > 0, 'a short reason comes with the close');
  const serverSide = await within(conn.closed, 2_000, 'conn.closed');
  assert.equal(serverSide.code, expectedCode, 'the server reports the code it closed with');
  assert.equal(peer.messages.length, 1, 'nothing but the AcceptConf was sent');
  // The other connection is untouched.
  assert.equal(payloadText(await bystander.request('echo', utf8('still fine'))), 'still fine');
  assert.equal(server.connections.size, 1);
  // A peer's mistake is not a server error.
  assert.deepEqual(
    logger.entries.filter((e) => e.level === 'error'),
    [],
  );
}

const cases: ReadonlyArray<readonly [string, Uint8Array | string, number]> = [
  ['unknown type 0x24 (reserved 36)', bytes(0x24), 1002],
  ['unknown type 0x24 with a body', bytes(0x24, id(1), 'xyz'), 1002],
  ['unknown type 0x3e (reserved 62)', bytes(0x3e, 0x00), 1002],
  ['unknown type 0x06 (v1 protocol-error reply)', bytes(0x06, id(1)), 1002],
  ['unknown type 0xff', bytes(0xff, 0x01, 0x02), 1002],
  ['request name length past the end', bytes(0x7f, id(1), 0x05, 'abc'), 1002],
  ['signal name length past the end', bytes(0x3f, 0x09, 'abc'), 1002],
  ['text frame', 'hello', 1003],
  ['message over maxMessageSize (2000 > 1024)', new Uint8Array(2000).fill(0x7f), 1009],
  ['empty frame', new Uint8Array(0), 1002],
  ['request with no name and no payload (7f <id> 00)', bytes(0x7f, id(1), 0x00), 1002],
  ['signal with no name and no payload (3f 00)', bytes(0x3f, 0x00), 1002],
  ['too short request (3 bytes)', bytes(0x7f, 0x01, 0x02), 1002],
  ['too short request (id but no name length)', bytes(0x7f, id(1)), 1002],
  ['odd-length UTF-16 request', bytes(0x81, id(1), 0x02, 'ab', 0x41), 1002],
  ['UTF-16 request with an odd name and no padding byte (odd length)', bytes(0x81, id(1), 0x01, 'a', 0x41, 0x00), 1002],
  ['heartbeat with a body', bytes(0x21, 0x00), 1002],
  ['cancel of the wrong length', bytes(0x23, id(1), 0x00), 1002],
  ['session close of the wrong length', bytes(0x1f, 0x01), 1002],
];

for (const [name, message, code] of cases) {
  test(`${name} closes ${code}`, (t) => expectViolation(t, message, code));
}

test('a message of exactly maxMessageSize is accepted', async (t) => {
  const { url } = await startServer(t, {
    maxMessageSize: 1024,
    onRequest: (_conn, m) => m.payload.data.length.toString(),
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const header = bytes(0x7f, id(1), 0x01, 'n');
  const message = new Uint8Array(1024);
  message.set(header);
  peer.send(message);
  const reply = await peer.next();
  assert.equal(Buffer.from(reply.subarray(9)).toString(), String(1024 - header.length));
});

test('a violation while handlers run closes at once; their late replies are not sent', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  let aborted = false;
  const { url, server } = await startServer(t, {
    onRequest: async (_conn, _m, context) => {
      context.signal.addEventListener('abort', () => {
        aborted = true;
      });
      await held;
      return 'late';
    },
  });
  t.after(() => release());
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  peer.send(bytes(0x7f, id(1), 0x01, 'n'));
  peer.send(bytes(0xff));
  const { code } = await within(peer.closed, 2_000, 'the close');
  assert.equal(code, 1002);
  assert.equal((await within(conn.closed, 2_000, 'conn.closed')).code, 1002);
  assert.equal(aborted, true, 'the running handler was told through its AbortSignal');
  release();
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(peer.messages.length, 1);
});
