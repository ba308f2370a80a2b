/**
 * Byte-building helpers for the server tests that script a raw peer, and bounded waits for what
 * the server does. Not a test file itself.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { ConnectError } from '../../../src/errors.ts';
import type { Server } from '../../../src/server/server.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { connectClient, hex, type RawPeer, waitFor } from '../../helpers.ts';

/** Concatenates numbers (one byte each), byte arrays and ASCII strings. */
export function bytes(...parts: Array<number | Uint8Array | string>): Uint8Array {
  const chunks: number[] = [];
  for (const part of parts) {
    if (typeof part === 'number') chunks.push(part);
    else if (typeof part === 'string') for (let i = 0; i < part.length; i++) chunks.push(part.charCodeAt(i));
    else chunks.push(...part);
  }
  return Uint8Array.from(chunks);
}

/** A request id as 8 bytes: a number as uint64 LE, or 8 explicit bytes. */
export function id(value: number | readonly number[]): Uint8Array {
  if (typeof value !== 'number') {
    assert.equal(value.length, 8);
    return Uint8Array.from(value);
  }
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value), true);
  return out;
}

/** Reads the AcceptConf every raw peer gets first, checking its type byte. */
export async function takeAcceptConf(peer: RawPeer): Promise<Uint8Array> {
  const first = await peer.next();
  assert.equal(first[0], 0x17, `first message should be AcceptConf, got ${hex(first)}`);
  return first;
}

/** The newest connection on `server`, once it has exactly `count` open. */
export async function newestConnection(server: Server, count = 1): Promise<Connection> {
  await waitFor(() => server.connections.size === count, 2_000, `${count} server connection(s)`);
  return [...server.connections].at(-1)!;
}

/** Rejects if `promise` does not settle within `ms`: keeps every wait bounded. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

/** Connects a fresh Client that must be refused; resolves with its ConnectError and the time it took. */
export async function refusedConnect(
  t: TestContext,
  url: string,
  headers?: Record<string, string>,
): Promise<{ error: ConnectError; elapsed: number }> {
  const client = await connectClient(t, url, { autoConnect: false, ...(headers === undefined ? {} : { headers }) });
  const started = performance.now();
  const error = await within(
    client.connect().then(
      () => assert.fail('the upgrade was accepted'),
      (err: unknown) => err,
    ),
    5_000,
    'the refusal',
  );
  assert.ok(error instanceof ConnectError, String(error));
  return { error, elapsed: performance.now() - started };
}

/**
 * Client-to-server WebSocket binary frames (masked with a zero key, so the payload is unchanged)
 * for messages under 126 bytes. Written to the socket in one go, they reach the server in one
 * read, which ws parses in one synchronous pass: a deterministic pipelined burst.
 */
export function maskedFrames(...messages: Uint8Array[]): Buffer {
  const parts: Buffer[] = [];
  for (const message of messages) {
    assert.ok(message.length < 126, 'short frames only');
    parts.push(Buffer.from([0x82, 0x80 | message.length, 0, 0, 0, 0]), Buffer.from(message));
  }
  return Buffer.concat(parts);
}

/** Writes raw bytes to a raw peer's TCP socket, under ws. */
export function writeRaw(peer: RawPeer, data: Buffer): void {
  (peer.ws as unknown as { _socket: import('node:net').Socket })._socket.write(data);
}
