/**
 * What a running request handler keeps alive: only what the handler itself holds. The engine
 * needs the request's id and name for the reply, not its message: a handler that read its 1 MiB
 * payload and let go of it, then waits (on a database, a lock, another service), must not keep
 * that megabyte in memory until it answers. (The engine used to hold the id as a view into the
 * message, and its callbacks shared a closure context holding the message itself.)
 *
 * Signal handlers likewise. The client and the server run in this process: the client keeps
 * nothing of a request once written (test/client/retention.test.ts), so what is measured is the
 * server's.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { binary } from '../../protocol/payload.ts';
import type { IncomingMessage } from '../../src/peer/peer.ts';
import { collectGarbage, connectClient, startServer, waitFor } from '../helpers.ts';

const MESSAGES = 16;
const SIZE = 1024 * 1024;

for (const kind of ['request', 'signal'] as const) {
  test(`${kind} handlers still running keep no message alive once they let go of its payload`, async (t) => {
    const release: Array<() => void> = [];
    let seen = 0;
    // Not async: an async function would keep its `msg` parameter until it returns.
    const handle = (msg: IncomingMessage): Promise<string> => {
      seen += msg.payload.data.length === SIZE ? 1 : 0;
      return new Promise<string>((resolve) => release.push(() => resolve('done')));
    };
    const { url } = await startServer(t, {
      maxMessageSize: 2 * SIZE,
      onRequest: (_conn, msg) => handle(msg),
      onSignal: (_conn, msg) => handle(msg).then(() => {}),
    });
    const client = await connectClient(t, url, { maxBufferedBytes: 4 * MESSAGES * SIZE, requestTimeout: 60_000 });
    await collectGarbage();
    const before = process.memoryUsage().arrayBuffers;

    const replies: Array<Promise<unknown>> = [];
    for (let i = 0; i < MESSAGES; i++) {
      const payload = binary(new Uint8Array(SIZE).fill(i));
      if (kind === 'request') replies.push(client.request('hold', payload));
      else client.signal('hold', payload);
    }
    await waitFor(() => seen === MESSAGES, 10_000, 'every handler to start');
    await collectGarbage();
    const held = process.memoryUsage().arrayBuffers - before;
    assert.ok(
      held < (MESSAGES * SIZE) / 4,
      `${(held / SIZE).toFixed(1)} MiB of buffers still held by ${MESSAGES} running ${kind} handlers`,
    );
    for (const answer of release) answer();
    const answered = await Promise.all(replies);
    assert.equal(answered.length, kind === 'request' ? MESSAGES : 0);
  });
}
