/**
 * Shared helpers for the transport tests: an event recorder, a bounded wait, a server fixture,
 * raw HTTP/WebSocket peers and a throw-away TLS certificate.
 */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { type IncomingMessage, request as httpRequest } from 'node:http';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type {
  ClientTransport,
  ServerTransport,
  ServerTransportHandlers,
  SocketHandlers,
  TransportSocket,
  UpgradeDecision,
  UpgradeRequest,
} from '../../transports/types.ts';

export interface Received {
  readonly data: Uint8Array;
  readonly binary: boolean;
}

/** SocketHandlers that record every callback, in order. */
export interface Recorder extends SocketHandlers {
  readonly messages: Received[];
  readonly closes: Array<{ code: number; reason: string }>;
  /** Every callback by name, to check ordering across kinds. */
  readonly events: string[];
  pings: number;
  drains: number;
  /** `onActivity` calls (parts of messages), counted apart: not in `events`, whose order tests pin. */
  activities: number;
}

export function recorder(hooks: Partial<SocketHandlers> = {}): Recorder {
  const rec: Recorder = {
    messages: [],
    closes: [],
    events: [],
    pings: 0,
    drains: 0,
    activities: 0,
    onMessage(data, binary) {
      rec.messages.push({ data, binary });
      rec.events.push(binary ? 'message' : 'text');
      hooks.onMessage?.(data, binary);
    },
    onDrain() {
      rec.drains++;
      rec.events.push('drain');
      hooks.onDrain?.();
    },
    onPing() {
      rec.pings++;
      rec.events.push('ping');
      hooks.onPing?.();
    },
    onClose(code, reason) {
      rec.closes.push({ code, reason });
      rec.events.push('close');
      hooks.onClose?.(code, reason);
    },
    onActivity() {
      rec.activities++;
      hooks.onActivity?.();
    },
  };
  return rec;
}

/** Resolves once `predicate` holds; rejects after `timeoutMs` with `label`. Polls every few ms. */
export async function until(predicate: () => boolean, label: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}`);
    await delay(2);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** What escaped while `catchFaults` held the process's fault handlers. */
export interface Faults {
  readonly uncaught: unknown[];
  readonly unhandled: unknown[];
}

/**
 * For a test that expects an uncaught exception: until the test ends, uncaught exceptions and
 * unhandled rejections are collected here instead of failing the run (test/setup.ts) and the
 * test (node:test's own handler). The test must wait for what it expects before it ends: one
 * that comes later fails the run as usual.
 */
export function catchFaults(t: TestContext): Faults {
  const faults: Faults = { uncaught: [], unhandled: [] };
  const uncaught = process.listeners('uncaughtException');
  const unhandled = process.listeners('unhandledRejection');
  process.removeAllListeners('uncaughtException');
  process.removeAllListeners('unhandledRejection');
  const onUncaught = (error: unknown): void => {
    faults.uncaught.push(error);
  };
  const onUnhandled = (reason: unknown): void => {
    faults.unhandled.push(reason);
  };
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUnhandled);
  t.after(() => {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUnhandled);
    for (const listener of uncaught) process.on('uncaughtException', listener);
    for (const listener of unhandled) process.on('unhandledRejection', listener);
  });
  return faults;
}

export const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);
export const bytes = (...values: number[]): Uint8Array => Uint8Array.from(values);

/* ------------------------------------------------------------------------------------------- */
/* Fixtures shared by the contract (server-contract.ts) and the per-transport files           */
/* ------------------------------------------------------------------------------------------- */

/** The message size limit the fixtures use unless a test sets its own. */
export const MAX = 1024 * 1024;

/** One connection the server transport accepted. */
export interface Accepted {
  readonly socket: TransportSocket;
  readonly request: UpgradeRequest;
  readonly rec: Recorder;
}

/** A started server transport and what its owner saw. */
export interface Fixture {
  readonly transport: ServerTransport;
  /** The listening port (0 for in-process transports). */
  readonly port: number;
  /** Base URL without a trailing slash, e.g. `ws://127.0.0.1:41234`. */
  readonly url: string;
  readonly accepted: Accepted[];
  readonly upgrades: UpgradeRequest[];
}

export interface ServeOptions {
  readonly maxMessageSize?: number;
  readonly upgrade?: (request: UpgradeRequest) => UpgradeDecision | Promise<UpgradeDecision>;
  /** Runs inside `connection`, before the handlers are returned. */
  readonly onConnection?: (socket: TransportSocket) => void;
  readonly hooks?: Partial<SocketHandlers>;
}

/** The base URL of a transport listening on loopback. */
export function loopbackUrl(transport: ServerTransport): string {
  const address = transport.address();
  assert.ok(address, 'the transport is listening');
  return `ws://127.0.0.1:${address.port}`;
}

/**
 * Starts `transport` with an owner that records every upgrade and connection (accepting unless
 * `options.upgrade` decides otherwise); stopped in `t.after`.
 */
export async function serve(
  t: TestContext,
  transport: ServerTransport,
  options: ServeOptions = {},
  urlOf: (transport: ServerTransport) => string = loopbackUrl,
): Promise<Fixture> {
  const accepted: Accepted[] = [];
  const upgrades: UpgradeRequest[] = [];
  t.after(() => transport.stop());
  await transport.start(
    {
      upgrade(request) {
        upgrades.push(request);
        return options.upgrade?.(request) ?? { accept: true };
      },
      connection(socket, request) {
        const rec = recorder(options.hooks);
        accepted.push({ socket, request, rec });
        options.onConnection?.(socket);
        return rec;
      },
    },
    { maxMessageSize: options.maxMessageSize ?? MAX },
  );
  return { transport, port: transport.address()?.port ?? 0, url: urlOf(transport), accepted, upgrades };
}

export interface ConnectOptions {
  readonly headers?: Record<string, string>;
  readonly protocols?: readonly string[];
  readonly maxMessageSize?: number;
  readonly hooks?: Partial<SocketHandlers>;
}

/** Connects with `client`, recording every callback; the socket is terminated in `t.after`. */
export async function connectWith(
  t: TestContext,
  client: ClientTransport,
  url: string,
  options: ConnectOptions = {},
): Promise<{ socket: TransportSocket; rec: Recorder }> {
  const rec = recorder(options.hooks);
  const socket = await client.connect(
    url,
    {
      maxMessageSize: options.maxMessageSize ?? MAX,
      connectTimeout: 2000,
      ...(options.headers ? { headers: options.headers } : {}),
      ...(options.protocols ? { protocols: options.protocols } : {}),
    },
    rec,
  );
  t.after(() => socket.terminate());
  return { socket, rec };
}

/** Owner handlers for a transport started only to test its lifecycle. */
export function acceptAll(): ServerTransportHandlers {
  return { upgrade: () => ({ accept: true }), connection: () => recorder() };
}

/* ------------------------------------------------------------------------------------------- */
/* Raw HTTP and WebSocket peers, for what a WebSocket client library would never send         */
/* ------------------------------------------------------------------------------------------- */

/** Sends a raw upgrade request and returns the plain HTTP response the server answered with. */
export function rawUpgrade(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: IncomingMessage['headers']; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      path,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
    });
    req.on('upgrade', (_res, socket) => {
      socket.destroy();
      reject(new Error('unexpectedly upgraded'));
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The status a server answers a plain HTTP request with `headers` to `path` with. */
export function httpStatus(port: number, path: string, headers: Record<string, string>): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

const RAW_HANDSHAKE =
  'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n';

/**
 * A TCP peer that makes a WebSocket handshake by hand, for frames `ws` would never send; destroyed
 * in `t.after`. With `awaitUpgrade` (the default) it resolves once the 101 arrived.
 */
export async function rawWebSocket(
  t: TestContext,
  port: number,
  extraHeaders = '',
  awaitUpgrade = true,
): Promise<Socket> {
  const raw: Socket = netConnect(port, '127.0.0.1');
  t.after(() => raw.destroy());
  raw.on('error', () => {});
  await new Promise<void>((resolve) => raw.once('connect', () => resolve()));
  raw.write(`${RAW_HANDSHAKE}${extraHeaders}\r\n`);
  if (!awaitUpgrade) return raw;
  let head = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      raw.off('data', onData);
      if (head.startsWith('HTTP/1.1 101 ')) resolve();
      else reject(new Error(`not upgraded: ${head}`));
    };
    raw.on('data', onData);
    raw.once('close', () => reject(new Error('closed during the handshake')));
  });
  return raw;
}

/** A masked client frame (RFC 6455 §5.2) with a zero mask, payload < 126 bytes. */
export function maskedFrame(opcode: number, payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

/* ------------------------------------------------------------------------------------------- */
/* TLS                                                                                         */
/* ------------------------------------------------------------------------------------------- */

/** A self-signed certificate for 127.0.0.1, as PEM files and as the certificate's bytes. */
export interface TestCertificate {
  readonly keyFile: string;
  readonly certFile: string;
  readonly cert: Buffer;
}

/**
 * Makes a throw-away certificate with openssl in a temporary directory removed in `t.after`;
 * `undefined` when openssl is not available (the caller skips).
 */
export function testCertificate(t: TestContext): TestCertificate | undefined {
  const dir = mkdtempSync(join(tmpdir(), 'duplexwire-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        keyFile,
        '-out',
        certFile,
      ],
      { stdio: 'ignore', timeout: 20_000 },
    );
  } catch {
    return undefined;
  }
  return { keyFile, certFile, cert: readFileSync(certFile) };
}
