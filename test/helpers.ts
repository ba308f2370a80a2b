/**
 * Helpers shared by the end-to-end tests: a server on 127.0.0.1 port 0 over the ws transport, a
 * client with a recording logger, and a raw WebSocket peer for scripted (mis)behaviour.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { WebSocket } from 'ws';
import { Client, type ClientOptions } from '../src/client/client.ts';
import type { Logger } from '../src/logger.ts';
import type { ServerOptions } from '../src/server/options.ts';
import { Server } from '../src/server/server.ts';
import { transportUnderTest } from './transport-under-test.ts';

export interface LogEntry {
  readonly level: 'error' | 'warn' | 'info' | 'debug';
  readonly message: string;
  readonly context: Record<string, unknown> | undefined;
}

/** A logger that keeps what it is given, for assertions. */
export function recordingLogger(): Logger & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const at =
    (level: LogEntry['level']) =>
    (message: string, context?: Record<string, unknown>): void => {
      entries.push({ level, message, context });
    };
  return { entries, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

export interface TestServer {
  readonly server: Server;
  readonly url: string;
  readonly port: number;
  readonly logger: ReturnType<typeof recordingLogger>;
}

/** Starts a Server on 127.0.0.1:0 over the transport under test; shut down after the test. */
export async function startServer(
  t: TestContext,
  options: Omit<ServerOptions, 'transport'> & { path?: string } = {},
): Promise<TestServer> {
  const logger = recordingLogger();
  const { path, ...rest } = options;
  const server = new Server({
    transport: transportUnderTest().server(path === undefined ? {} : { path }),
    logger,
    ...rest,
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const port = server.address()?.port ?? 0;
  return { server, url: `ws://127.0.0.1:${port}${path ?? '/'}`, port, logger };
}

/** A client over the transport under test, closed after the test. Waits until connected unless `autoConnect` is false. */
export async function connectClient(t: TestContext, url: string, options: ClientOptions = {}): Promise<Client> {
  const client = new Client(url, {
    transport: transportUnderTest().client(),
    logger: recordingLogger(),
    reconnect: false,
    ...options,
  });
  t.after(() => client.close());
  if (options.autoConnect !== false) await client.connect();
  return client;
}

/** A WebSocket peer driven byte by byte: what a v2.0 client or a hostile one would do. */
/**
 * How long `next()` waits for a message by default: a bound for a peer that never sends, not a
 * wait (it returns as soon as the message is there, and fails at once if the connection closed).
 * It was 2 s, and a loaded CI machine stalls a test process for up to a second at a time.
 */
export const NEXT_MESSAGE_LIMIT = 10_000;

export interface RawPeer {
  readonly ws: WebSocket;
  readonly messages: Uint8Array[];
  /**
   * The next binary message not yet taken; waits up to `timeout` ms, and fails at once once the
   * connection closed with none left.
   */
  next(timeout?: number): Promise<Uint8Array>;
  send(bytes: Uint8Array | string): void;
  /** Resolves with the close code and reason. */
  readonly closed: Promise<{ code: number; reason: string }>;
}

export async function rawPeer(t: TestContext, url: string, headers: Record<string, string> = {}): Promise<RawPeer> {
  const ws = new WebSocket(url, { headers });
  const messages: Uint8Array[] = [];
  let taken = 0;
  let wake: (() => void) | undefined;
  let ended = false;
  ws.on('message', (data: Buffer) => {
    messages.push(new Uint8Array(data));
    wake?.();
  });
  ws.on('error', () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => {
      ended = true;
      wake?.();
      resolve({ code, reason: reason.toString() });
    });
  });
  t.after(() => ws.terminate());
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return {
    ws,
    messages,
    closed,
    async next(timeout = NEXT_MESSAGE_LIMIT) {
      const deadline = Date.now() + timeout;
      while (taken >= messages.length) {
        if (ended) throw new Error('the connection closed');
        if (Date.now() >= deadline) throw new Error(`no message within ${timeout} ms`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 20);
        });
      }
      return messages[taken++]!;
    },
    send(bytes) {
      ws.send(bytes, { binary: typeof bytes !== 'string' });
    },
  };
}

/** Waits until `predicate()` holds, polling; fails after `timeout` ms. */
export async function waitFor(predicate: () => boolean, timeout = 2_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Hex of bytes, for readable assertions. */
export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Runs `run` after `hops` turns of the microtask queue. Swept over a range of `hops`, it lands at
 * every step of what a promise chain started at the same moment does meanwhile.
 */
export function afterMicrotasks(hops: number, run: () => void): void {
  let turn = Promise.resolve();
  for (let i = 0; i < hops; i++) turn = turn.then(() => {});
  void turn.then(run);
}

/** A gate to hold something (a handler, a store call) on; `open()` releases every waiter at once. */
export function gate(): { readonly wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait, open };
}

/** How a child process ended, and what it printed. */
export interface ChildRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `node <args>` in the repository, collecting its output; past `deadlineMs` it is sent
 * SIGTERM (an orchestrator then stops what it started), then SIGKILL 5 s later. Killed in
 * `t.after` if the test ends first.
 */
export async function runNode(t: TestContext, args: readonly string[], deadlineMs: number): Promise<ChildRun> {
  const child = spawn(process.execPath, [...args], {
    cwd: fileURLToPath(new URL('../', import.meta.url)),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  const deadline = setTimeout(() => {
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 5_000).unref();
  }, deadlineMs);
  t.after(() => {
    clearTimeout(deadline);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const [code, signal] = await exited;
  clearTimeout(deadline);
  return { code, signal, stdout, stderr };
}

let gc: (() => void) | undefined;

/**
 * Runs full garbage collections (three, a turn of the event loop apart, so that what finalizers
 * and weak callbacks free goes too): for tests that measure what stays alive. Exposes `gc` the
 * first time.
 */
export async function collectGarbage(): Promise<void> {
  if (gc === undefined) {
    setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as () => void;
  }
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
}
