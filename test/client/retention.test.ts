/**
 * What a pending request keeps alive: once a request is written, its message belongs to nobody on
 * the sending side, however long the reply takes. (Its abort listener and promise executor used
 * to keep the whole encoded message, payload included, until the reply: a client streaming large
 * requests held every one in flight, and the garbage collector had to promote and mark them.)
 *
 * The server is a plain ws server that answers the handshake and never replies: it keeps nothing
 * of what it reads, so the memory measured is the client's.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { encodeAcceptConf } from '../../protocol/encode.ts';
import { binary } from '../../protocol/payload.ts';
import { Client } from '../../src/client/client.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { collectGarbage, recordingLogger, waitFor } from '../helpers.ts';

const REQUESTS = 16;
const SIZE = 1024 * 1024;

for (const [label, withSignal] of [
  ['with an AbortSignal', true],
  ['with a timeout only', false],
] as const) {
  test(`requests written and waiting for their reply keep no message alive (${label})`, async (t) => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 2 * SIZE });
    let received = 0;
    wss.on('connection', (ws) => {
      ws.send(
        encodeAcceptConf({
          major: 2,
          minor: 1,
          readTimeout: 0,
          maxMessageSize: 2 * SIZE,
          subProtocol: new Uint8Array(0),
        }),
      );
      ws.on('message', () => {
        received++;
      });
    });
    await new Promise<void>((resolve) => wss.once('listening', resolve));
    t.after(
      () =>
        new Promise<void>((resolve) => {
          for (const ws of wss.clients) ws.terminate();
          wss.close(() => resolve());
        }),
    );
    const client = new Client(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`, {
      transport: wsClientTransport(),
      reconnect: false,
      maxMessageSize: 2 * SIZE,
      // All of them are queued at once: above the default 8 MiB the client would close 1008.
      maxBufferedBytes: 4 * REQUESTS * SIZE,
      logger: recordingLogger(),
    });
    t.after(() => client.close());
    await client.connect();
    await collectGarbage();
    const before = process.memoryUsage().arrayBuffers;

    const controllers = Array.from({ length: REQUESTS }, () => new AbortController());
    const replies: Array<Promise<unknown>> = [];
    for (let i = 0; i < REQUESTS; i++) {
      const options = withSignal ? { signal: controllers[i]!.signal } : { timeout: 60_000 };
      replies.push(client.request('hold', binary(new Uint8Array(SIZE).fill(i)), options).catch(() => {}));
    }
    // Every request arrived whole (ClientConf first): all of them were written.
    await waitFor(() => received === REQUESTS + 1, 10_000, 'the server to read every request');
    await collectGarbage();
    const held = process.memoryUsage().arrayBuffers - before;
    assert.ok(
      held < (REQUESTS * SIZE) / 4,
      `${(held / SIZE).toFixed(1)} MiB of buffers still held for ${REQUESTS} pending 1 MiB requests`,
    );
    for (const controller of controllers) controller.abort();
    await client.close();
    await Promise.all(replies);
  });
}
