/**
 * Helpers of the client and lifecycle tests: a scriptable raw WebSocket server (to craft what a
 * server says during the handshake), a server on a chosen port (restart tests), a free port with
 * nothing listening, a child-process server, and small promise utilities.
 */
import type { AbortSignalLike } from '../../../src/peer/cancellation.ts';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { getEventListeners } from 'node:events';
import { createServer } from 'node:net';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WebSocket, WebSocketServer } from 'ws';
import { encodeAcceptConf } from '../../../protocol/encode.ts';
import { encodeUtf8, payloadText, utf8 } from '../../../protocol/payload.ts';
import type { Payload } from '../../../protocol/types.ts';
import { CanceledError } from '../../../src/errors.ts';
import type { ServerOptions } from '../../../src/server/options.ts';
import { Server } from '../../../src/server/server.ts';
import { transportUnderTest } from '../../transport-under-test.ts';
import { NEXT_MESSAGE_LIMIT, recordingLogger } from '../../helpers.ts';

/** The package root, as the working directory of child processes. */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Resolves with the abort reason when `signal` aborts (at once if it already did). */
export function aborted(signal: AbortSignalLike): Promise<unknown> {
  if (signal.aborted) return Promise.resolve(signal.reason);
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(signal.reason), { once: true }));
}

/**
 * Resolves with the abort reason when `signal` fires, or with `fallback` after `ms` (the timer
 * is cleared on abort, so nothing lingers after the test).
 */
export function abortedWithin(signal: AbortSignalLike, ms: number, fallback: unknown = undefined): Promise<unknown> {
  if (signal.aborted) return Promise.resolve(signal.reason);
  return new Promise((resolve) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(fallback);
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** How a promise settled and how long it took, in ms from `since`. */
export interface Outcome<T> {
  readonly ok: boolean;
  readonly value: T | undefined;
  readonly error: unknown;
  readonly ms: number;
}

/** Never rejects: records the outcome, so no rejection goes unhandled while the test waits. */
export function outcome<T>(promise: Promise<T>, since = performance.now()): Promise<Outcome<T>> {
  return promise.then(
    (value) => ({ ok: true, value, error: undefined, ms: performance.now() - since }),
    (error: unknown) => ({ ok: false, value: undefined, error, ms: performance.now() - since }),
  );
}

/**
 * `settled` if it settles before any timer or I/O callback can run (it was settled synchronously,
 * with nothing but promise reactions after it), else undefined. This is what "at once" means; a
 * time bound ("within 20 ms", "< 50 ms") failed whenever a loaded machine preempted the process
 * in between.
 */
export async function settledAtOnce<T>(settled: Promise<T>): Promise<T | undefined> {
  const later = new Promise<undefined>((resolve) => setImmediate(() => resolve(undefined)));
  return Promise.race([settled, later]);
}

/**
 * Many requests sharing one AbortSignal, as fetch-style code passes one app-wide or per-page
 * signal: `send` starts one request ('slow' ones, which the other end holds until canceled, then
 * 'echo' ones). However many requests wait, the signal holds one listener of ours (one per
 * request made Node warn past 10: MaxListenersExceededWarning); aborting it rejects them all with
 * CanceledError; a second batch on another signal is answered, and once the requests settle
 * neither signal holds any listener of ours. `beforeReplies` runs between sending the second batch
 * and waiting for its replies (to start a server, for requests waiting for a connection).
 */
export async function sharedSignalBatches(
  t: TestContext,
  send: (name: 'slow' | 'echo', payload: Payload, signal: AbortSignal) => Promise<Payload>,
  beforeReplies: () => Promise<unknown> = () => Promise.resolve(),
  count = 50,
): Promise<void> {
  const warnings: string[] = [];
  const onWarning = (warning: Error): void => {
    if (warning.name === 'MaxListenersExceededWarning') warnings.push(warning.message);
  };
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  const listeners = (signal: AbortSignal): number => getEventListeners(signal, 'abort').length;

  const first = new AbortController();
  const canceled = Array.from({ length: count }, (_, i) => outcome(send('slow', utf8(String(i)), first.signal)));
  assert.equal(listeners(first.signal), 1, `one listener for the ${count} requests`);
  const reason = new Error('the page was left');
  first.abort(reason);
  for (const result of await Promise.all(canceled)) {
    assert.ok(result.error instanceof CanceledError, String(result.error));
    assert.equal(result.error.cause, reason);
  }
  assert.equal(listeners(first.signal), 0);

  const second = new AbortController();
  const answered = Array.from({ length: count }, (_, i) => send('echo', utf8(String(i)), second.signal));
  assert.equal(listeners(second.signal), 1, `one listener for the ${count} requests`);
  await beforeReplies();
  const replies = await Promise.all(answered);
  assert.deepEqual(
    replies.map((reply) => payloadText(reply)),
    Array.from({ length: count }, (_, i) => String(i)),
  );
  assert.equal(listeners(second.signal), 0, 'no listener left once the requests settled');
  // process.emitWarning emits on the next tick.
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(warnings, []);
}

/** AcceptConf bytes as a (possibly odd) server would send them. */
export function acceptConf(
  conf: { major?: number; minor?: number; readTimeout?: number; maxMessageSize?: number; subProtocol?: string } = {},
): Uint8Array {
  return encodeAcceptConf({
    major: conf.major ?? 2,
    minor: conf.minor ?? 1,
    readTimeout: conf.readTimeout ?? 60_000,
    maxMessageSize: conf.maxMessageSize ?? 1024 * 1024,
    subProtocol: encodeUtf8(conf.subProtocol ?? ''),
  });
}

/** A bounded queue of binary messages with an awaiting `next()`. */
class Inbox {
  readonly all: Uint8Array[] = [];
  private taken = 0;
  private wake: (() => void) | undefined;
  private ended = false;

  push(bytes: Uint8Array): void {
    this.all.push(bytes);
    this.wake?.();
  }

  /** The connection closed: waiting for more fails at once. */
  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async next(timeout = NEXT_MESSAGE_LIMIT): Promise<Uint8Array> {
    const deadline = Date.now() + timeout;
    while (this.taken >= this.all.length) {
      if (this.ended) throw new Error('the connection closed');
      if (Date.now() >= deadline) throw new Error(`no message within ${timeout} ms`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 20);
      });
    }
    return this.all[this.taken++]!;
  }
}

/** One connection accepted by a raw server. */
export interface RawConnection {
  readonly ws: WebSocket;
  /** Every binary message received, in order. */
  readonly received: Uint8Array[];
  /** Text frames received. */
  readonly texts: string[];
  next(timeout?: number): Promise<Uint8Array>;
  send(bytes: Uint8Array | string): void;
  readonly closed: Promise<{ code: number; reason: string }>;
}

export interface RawServer {
  readonly url: string;
  readonly port: number;
  readonly connections: RawConnection[];
  /** Upgrade requests seen (accepted or not). */
  readonly attempts: number;
}

/**
 * A bare `ws` server on 127.0.0.1:0 that runs `script` for every connection: a scriptable
 * server for what the duplexwire Server would never send. Closed after the test.
 */
export async function rawServer(
  t: TestContext,
  script: (conn: RawConnection) => void | Promise<void>,
): Promise<RawServer> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  const connections: RawConnection[] = [];
  let attempts = 0;
  wss.on('headers', () => {
    attempts++;
  });
  wss.on('connection', (ws) => {
    const inbox = new Inbox();
    const texts: string[] = [];
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) inbox.push(new Uint8Array(data));
      else texts.push(data.toString('utf8'));
    });
    ws.on('error', () => {});
    const closed = new Promise<{ code: number; reason: string }>((resolve) => {
      ws.on('close', (code, reason) => {
        inbox.end();
        resolve({ code, reason: reason.toString() });
      });
    });
    const conn: RawConnection = {
      ws,
      received: inbox.all,
      texts,
      closed,
      next: (timeout) => inbox.next(timeout),
      send(bytes) {
        if (ws.readyState === WebSocket.OPEN) ws.send(bytes, { binary: typeof bytes !== 'string' });
      },
    };
    connections.push(conn);
    Promise.resolve()
      .then(() => script(conn))
      .catch(() => ws.terminate());
  });
  t.after(async () => {
    for (const client of wss.clients) client.terminate();
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  });
  const port = (wss.address() as { port: number }).port;
  return {
    url: `ws://127.0.0.1:${port}/`,
    port,
    connections,
    get attempts() {
      return attempts;
    },
  };
}

/** A port on 127.0.0.1 with nothing listening (it was free a moment ago). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Starts a Server on 127.0.0.1:`port`, retrying briefly while the port is still taken (a server
 * that just stopped there). Shut down after the test.
 */
export async function startServerOnPort(
  t: TestContext,
  port: number,
  options: Omit<ServerOptions, 'transport'> = {},
): Promise<Server> {
  const deadline = Date.now() + 1_500;
  for (;;) {
    const server = new Server({
      transport: transportUnderTest().server({ port }),
      logger: recordingLogger(),
      ...options,
    });
    try {
      await server.listen();
      t.after(() => server.shutdown({ timeout: 200 }));
      return server;
    } catch (error) {
      if ((error as { code?: unknown }).code !== 'EADDRINUSE' || Date.now() >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

export interface ChildServer {
  readonly child: ChildProcess;
  readonly port: number;
  /** Lines the child printed on stdout after its port. */
  readonly lines: string[];
  /** Resolves when the child exited. */
  readonly exited: Promise<void>;
  /** What the child printed on stderr so far. */
  stderr(): string;
}

/**
 * How long a child may take to print its port: a bound for a child that hangs, not a wait. It
 * was 5 s (8 s in the restart tests), and failed on loaded CI machines: a child spends about 2 s
 * of CPU starting (node, tsx, the sources), which took 11 to 14 s at a load of 9 to 13 on two
 * cores. A child that fails exits, and that ends the wait at once.
 */
const CHILD_STARTUP_LIMIT = 60_000;

/**
 * Spawns `node --import tsx test/fixtures/<name> [...args]` that prints its port as the first line
 * of stdout; resolves once it did. Killed (SIGKILL) after the test. Its stdin is a pipe, which
 * ends when this process does: the fixture exits then (fixtures/lifeline.ts).
 */
export async function spawnServer(t: TestContext, name: string, args: readonly string[] = []): Promise<ChildServer> {
  const child = spawn(process.execPath, ['--import', 'tsx', `test/fixtures/${name}`, ...args], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  const lines: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  let buffer = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${name} printed no port within ${CHILD_STARTUP_LIMIT} ms: ${stderr}`)),
      CHILD_STARTUP_LIMIT,
    );
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before printing its port: ${stderr}`));
    });
    let gotPort = false;
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('utf8');
      let newline = buffer.indexOf('\n');
      while (newline >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (!gotPort) {
          gotPort = true;
          clearTimeout(timer);
          resolve(Number(line));
        } else {
          lines.push(line);
        }
        newline = buffer.indexOf('\n');
      }
    });
  });
  return { child, port, lines, exited, stderr: () => stderr };
}
