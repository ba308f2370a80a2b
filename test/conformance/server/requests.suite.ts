/**
 * Requests end to end: what handlers see, what they may return, and the exact reply bytes a
 * WebWire v2.0 peer receives (golden vectors of webwire-v2-wire.md).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { binary, decodeUtf16le, encodeUtf16le, payloadText, utf16, utf8 } from '../../../protocol/payload.ts';
import type { Encoding, Payload } from '../../../protocol/types.ts';
import { InternalError, RequestError } from '../../../src/errors.ts';
import type { IncomingMessage } from '../../../src/peer/peer.ts';
import { connectClient, hex, rawPeer, startServer } from '../../helpers.ts';
import { bytes, id, takeAcceptConf } from './wire.ts';

const ENCODINGS: readonly Encoding[] = ['binary', 'utf8', 'utf16'];
const EMPTY = new Uint8Array(0);

function payloadOf(encoding: Encoding, text: string): Payload {
  return encoding === 'utf16' ? utf16(text) : encoding === 'utf8' ? utf8(text) : binary(new TextEncoder().encode(text));
}

/** A server that records what its handler saw and echoes the payload. */
async function echoServer(t: Parameters<typeof startServer>[0]) {
  const seen: IncomingMessage[] = [];
  const started = await startServer(t, {
    onRequest: (_conn, message) => {
      seen.push(message);
      return message.payload;
    },
  });
  return { ...started, seen };
}

test('names of 1 and 255 bytes reach the handler', async (t) => {
  const { url, seen } = await echoServer(t);
  const client = await connectClient(t, url);
  const long = 'n'.repeat(255);
  await client.request('a', utf8('one'));
  await client.request(long, utf8('long'));
  assert.equal(seen[0]?.name, 'a');
  assert.equal(seen[1]?.name, long);
  assert.equal(payloadText(seen[1]!.payload), 'long');
});

for (const encoding of ENCODINGS) {
  test(`name-only ${encoding} requests (even and odd name) reach the handler with an empty payload`, async (t) => {
    const { url, seen } = await echoServer(t);
    const client = await connectClient(t, url);
    for (const name of ['nm', 'odd']) {
      const reply = await client.request(name, { encoding, data: EMPTY });
      assert.equal(reply.encoding, encoding);
      assert.equal(reply.data.length, 0);
    }
    assert.deepEqual(
      seen.map((m) => [m.name, m.payload.encoding, m.payload.data.length]),
      [
        ['nm', encoding, 0],
        ['odd', encoding, 0],
      ],
    );
  });

  test(`payload-only ${encoding} requests reach the handler with an empty name`, async (t) => {
    const { url, seen } = await echoServer(t);
    const client = await connectClient(t, url);
    const reply = await client.request('', payloadOf(encoding, 'payload only'));
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.name, '');
    assert.equal(seen[0]!.payload.encoding, encoding);
    assert.equal(payloadText(seen[0]!.payload), 'payload only');
    assert.equal(reply.encoding, encoding);
    assert.equal(payloadText(reply), 'payload only');
  });

  test(`named ${encoding} request with payload, odd name (UTF-16 padding)`, async (t) => {
    const { url, seen } = await echoServer(t);
    const client = await connectClient(t, url);
    const reply = await client.request('abc', payloadOf(encoding, 'xyz'));
    assert.equal(seen[0]!.name, 'abc');
    assert.equal(payloadText(seen[0]!.payload), 'xyz');
    assert.equal(payloadText(reply), 'xyz');
  });
}

test('handler results: Payload, Uint8Array, string, undefined, null', async (t) => {
  const { url } = await startServer(t, {
    onRequest: (_conn, message) => {
      switch (message.name) {
        case 'payload':
          return utf16('sixteen');
        case 'bytes':
          return Uint8Array.of(1, 2, 3);
        case 'string':
          return 'text';
        case 'null':
          return null;
        default:
          return undefined;
      }
    },
  });
  const client = await connectClient(t, url);
  const p = await client.request('payload', utf8(''));
  assert.equal(p.encoding, 'utf16');
  assert.equal(payloadText(p), 'sixteen');
  const b = await client.request('bytes', utf8(''));
  assert.equal(b.encoding, 'binary');
  assert.deepEqual([...b.data], [1, 2, 3]);
  const s = await client.request('string', utf8(''));
  assert.equal(s.encoding, 'utf8');
  assert.equal(payloadText(s), 'text');
  for (const name of ['undefined', 'null']) {
    const u = await client.request(name, utf8(''));
    assert.equal(u.encoding, 'binary');
    assert.equal(u.data.length, 0);
  }
});

test('an async handler result is awaited', async (t) => {
  const { url } = await startServer(t, {
    onRequest: async () => {
      await new Promise((resolve) => setTimeout(resolve, 20));
      return 'later';
    },
  });
  const client = await connectClient(t, url);
  assert.equal(payloadText(await client.request('x', utf8(''))), 'later');
});

test('empty replies are byte-exact: 191 and 192 are 9 bytes, 193 has its padding byte', async (t) => {
  const { url } = await startServer(t, {
    onRequest: (_conn, message) => {
      if (message.name === 'none') return undefined;
      return { encoding: message.name as Encoding, data: EMPTY };
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const rid = id(0x0c);
  const cases: Array<[string, string]> = [
    ['binary', 'bf'],
    ['utf8', 'c0'],
    ['utf16', 'c1'],
    ['none', 'bf'],
  ];
  for (const [name, type] of cases) {
    peer.send(bytes(0x7f, rid, name.length, name));
    const reply = await peer.next();
    const expected = type === 'c1' ? `c1${hex(rid)}00` : `${type}${hex(rid)}`;
    assert.equal(hex(reply), expected, name);
  }
});

test('golden: binary echo of "hello" with id 1', async (t) => {
  const { url } = await startServer(t, { onRequest: (_c, m) => m.payload });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(Buffer.from('7f0100000000000000046563686f68656c6c6f', 'hex'));
  assert.equal(hex(await peer.next()), 'bf010000000000000068656c6c6f');
});

test('RequestError becomes a byte-exact type 0 reply and a RequestError on the client', async (t) => {
  const { url, logger } = await startServer(t, {
    onRequest: () => {
      throw new RequestError('SAMPLE_ERROR', 'Sample error message');
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(0x14), 0x04, 'fail', 'x'));
  assert.equal(
    hex(await peer.next()),
    `00${hex(id(0x14))}0c${Buffer.from('SAMPLE_ERROR').toString('hex')}${Buffer.from('Sample error message').toString('hex')}`,
  );

  const client = await connectClient(t, url);
  await assert.rejects(client.request('fail', utf8('x')), (error: unknown) => {
    assert.ok(error instanceof RequestError);
    assert.equal(error.code, 'SAMPLE_ERROR');
    assert.equal(error.message, 'Sample error message');
    return true;
  });
  // An application error is an answer, not a server failure.
  assert.deepEqual(
    logger.entries.filter((e) => e.level === 'error'),
    [],
  );
});

test('a RequestError message with non-ASCII text is sent as UTF-8', async (t) => {
  const { url } = await startServer(t, {
    onRequest: () => {
      throw new RequestError('E', 'né 😀');
    },
  });
  const client = await connectClient(t, url);
  await assert.rejects(client.request('x', utf8('')), { name: 'RequestError', code: 'E', message: 'né 😀' });
});

test('a thrown plain Error becomes type 2, is logged as error, and its text never reaches the wire', async (t) => {
  const secret = 'db password is hunter2';
  const { url, logger } = await startServer(t, {
    onRequest: () => {
      throw new Error(secret);
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(0x15), 0x04, 'boom', 'x'));
  assert.equal(hex(await peer.next()), '021500000000000000');
  const logged = logger.entries.filter((e) => e.level === 'error');
  assert.equal(logged.length, 1);
  assert.equal((logged[0]!.context!.error as Error).message, secret);
  for (const message of peer.messages) {
    assert.ok(!Buffer.from(message).includes(secret), 'the error text leaked to the peer');
  }

  const client = await connectClient(t, url);
  await assert.rejects(client.request('boom', utf8('x')), (error: unknown) => {
    assert.ok(error instanceof InternalError);
    assert.ok(!error.message.includes('hunter2'));
    return true;
  });
});

test('a rejected promise and a thrown non-Error become type 2 as well', async (t) => {
  const { url, logger } = await startServer(t, {
    onRequest: async (_conn, message) => {
      if (message.name === 'reject') throw new TypeError('nope');
      // JavaScript lets a handler throw anything.
      throw 'a string';
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(1), 0x06, 'reject'));
  assert.equal(hex(await peer.next()), `02${hex(id(1))}`);
  peer.send(bytes(0x7f, id(2), 0x05, 'other'));
  assert.equal(hex(await peer.next()), `02${hex(id(2))}`);
  assert.equal(logger.entries.filter((e) => e.level === 'error').length, 2);
});

test('a RequestError with an invalid code (empty, non-ASCII, control, too long) becomes type 2 and is logged', async (t) => {
  const codes = ['', 'ÉCHEC', 'BAD\nCODE', 'X'.repeat(256), '😀'];
  const { url, logger } = await startServer(t, {
    onRequest: (_conn, message) => {
      throw new RequestError(codes[Number(message.name)]!, 'message');
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  for (let i = 0; i < codes.length; i++) {
    peer.send(bytes(0x7f, id(100 + i), 0x01, String(i)));
    const reply = await peer.next();
    assert.equal(hex(reply), `02${hex(id(100 + i))}`, `code ${JSON.stringify(codes[i])}`);
  }
  assert.equal(logger.entries.filter((e) => e.level === 'error').length, codes.length);
  // The connection is still fine.
  assert.equal(peer.ws.readyState, peer.ws.OPEN);
});

test('an odd-length UTF-16 reply becomes type 2, not an empty frame', async (t) => {
  const { url, logger } = await startServer(t, {
    onRequest: () => ({ encoding: 'utf16', data: Uint8Array.of(0x41) }),
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(9), 0x03, 'odd'));
  const reply = await peer.next();
  assert.equal(hex(reply), `02${hex(id(9))}`);
  assert.equal(logger.entries.filter((e) => e.level === 'error').length, 1);
});

test('a reply value that is not a payload becomes type 2', async (t) => {
  const { url, logger } = await startServer(t, {
    // A handler written in JavaScript may return anything.
    onRequest: () => 42 as unknown as string,
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(3), 0x01, 'n'));
  assert.equal(hex(await peer.next()), `02${hex(id(3))}`);
  assert.ok(logger.entries.some((e) => e.level === 'error'));
});

test('without onRequest every request gets type 2', async (t) => {
  const { url } = await startServer(t);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(5), 0x04, 'echo', 'x'));
  assert.equal(hex(await peer.next()), `02${hex(id(5))}`);
  const client = await connectClient(t, url);
  await assert.rejects(client.request('echo', utf8('x')), InternalError);
});

test("peer-chosen names such as '__proto__', 'constructor', 'toString' are plain names", async (t) => {
  const { url, logger } = await startServer(t, { onRequest: (_conn, message) => `name=${message.name}` });
  const client = await connectClient(t, url);
  for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
    assert.equal(payloadText(await client.request(name, utf8('x'))), `name=${name}`);
  }
  // Same over a raw peer (names are not validated on receipt).
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(1), 0x09, '__proto__'));
  assert.equal(hex(await peer.next()), hex(bytes(0xc0, id(1), 'name=__proto__')));
  assert.deepEqual(
    logger.entries.filter((e) => e.level === 'error'),
    [],
  );
});

test('request ids are echoed unchanged, all-zero and all-0xFF included', async (t) => {
  const { url } = await startServer(t, {
    onRequest: async (_conn, message) => {
      // Finish in reverse order so that each reply is matched by its id, not by its position.
      await new Promise((resolve) => setTimeout(resolve, 40 - 10 * Number(message.name)));
      return message.name;
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const ids = [
    id([0, 0, 0, 0, 0, 0, 0, 0]),
    id([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    id([1, 2, 3, 4, 5, 6, 7, 8]),
    id([0, 0, 0, 0, 0, 0, 0, 0x80]),
  ];
  ids.forEach((rid, i) => {
    peer.send(bytes(0x7f, rid, 0x01, String(i)));
  });
  const replies = new Map<string, string>();
  for (let i = 0; i < ids.length; i++) {
    const reply = await peer.next();
    assert.equal(reply[0], 0xc0);
    replies.set(hex(reply.subarray(1, 9)), Buffer.from(reply.subarray(9)).toString());
  }
  assert.deepEqual(new Map(ids.map((rid, i) => [hex(rid), String(i)])), replies);
});

test('UTF-16 request and reply with surrogate pairs arrive intact', async (t) => {
  const text = '😀𝄞';
  let seen = '';
  const { url } = await startServer(t, {
    onRequest: (_conn, message) => {
      seen = payloadText(message.payload);
      return utf16(`${seen}|${message.name}`);
    },
  });
  const client = await connectClient(t, url);
  const reply = await client.request('u', utf16(text));
  assert.equal(seen, text);
  assert.equal(reply.encoding, 'utf16');
  assert.equal(payloadText(reply), `${text}|u`);

  // Byte-exact over a raw peer: request with an odd name (padding), reply with its pad at 9.
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x81, id(2), 0x01, 'u', 0x00, encodeUtf16le(text)));
  const raw = await peer.next();
  assert.equal(hex(raw), hex(bytes(0xc1, id(2), 0x00, encodeUtf16le(`${text}|u`))));
  assert.equal(decodeUtf16le(raw.subarray(10)), `${text}|u`);
});

test('session requests 31 and 32 get type 5 (sessions disabled)', async (t) => {
  const { url } = await startServer(t, { onRequest: () => 'x' });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x1f, id(31)));
  assert.equal(hex(await peer.next()), `05${hex(id(31))}`);
  peer.send(bytes(0x20, id(32), 'some-session-key'));
  assert.equal(hex(await peer.next()), `05${hex(id(32))}`);
  // Still usable afterwards.
  peer.send(bytes(0x7f, id(33), 0x01, 'n'));
  assert.equal(hex(await peer.next()), hex(bytes(0xc0, id(33), 'x')));
});

test('types meant for clients (191, 21, 23) sent to the server are ignored', async (t) => {
  const { url } = await startServer(t, { onRequest: () => 'still here' });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0xbf, id(1), 'x'));
  peer.send(bytes(0x15, '{}'));
  peer.send(bytes(0x17, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0));
  peer.send(bytes(0x7f, id(2), 0x01, 'n'));
  assert.equal(hex(await peer.next()), hex(bytes(0xc0, id(2), 'still here')));
});
