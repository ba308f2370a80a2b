/**
 * The server-transport contract (`transports/types.ts`) as one executable suite: a function called
 * once per adapter by `ws.test.ts`, `uws.test.ts` and `memory.test.ts` (the shape of crossws
 * `test/tests.ts` `wsTests(getURL, caps)`, and of `test/session/contract.ts`). Applications that
 * forward raw WebSocket traffic (a bridge, a proxy) rely on every transport passing the same cases.
 *
 * What legitimately differs between transports is a capability flag, each with the reason; a case
 * a capability rules out is registered as skipped with that reason, so it shows in every run. A
 * case a transport fails for no such reason is a bug: the transport's file passes it in
 * `ContractOptions.skip`, with the reason, until the transport is fixed.
 *
 * Each file is its own test process; the clients are the factory's (the `ws` client transport for
 * the network transports, the paired in-process client for memory).
 */
import assert from 'node:assert/strict';
import { createServer as createHttpServer, type IncomingMessage, request as httpRequest } from 'node:http';
import { connect as connectTcp, type Socket } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { WebSocket } from 'ws';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { Client } from '../../src/client/client.ts';
import { Server } from '../../src/server/server.ts';
import type {
  ClientTransport,
  ConnectFailure,
  SendResult,
  ServerTransport,
  UpgradeDecision,
} from '../../transports/types.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { freePort } from '../transport-under-test.ts';
import {
  acceptAll,
  bytes,
  catchFaults,
  type ConnectOptions,
  connectWith,
  delay,
  type Fixture,
  httpStatus,
  loopbackUrl,
  MAX,
  maskedFrame,
  rawUpgrade,
  rawWebSocket,
  recorder,
  type ServeOptions,
  serve,
  testCertificate,
  text,
  until,
} from './helpers.ts';

/** How a test asks the factory for a server transport (not started). */
export interface ServerOptions {
  /** @default '127.0.0.1' */
  readonly host?: string;
  /** @default the factory's choice: 0, or a fixed free port for uWS (see uws.test.ts) */
  readonly port?: number;
  /** Only upgrades to this path are handled. */
  readonly path?: string;
  /** Serve `wss:` with these PEM files. Only asked for when `caps.tls`. */
  readonly tls?: { readonly keyFile: string; readonly certFile: string };
}

/** Makes the transports under test and the clients that reach them. */
export interface ServerTransportFactory {
  /** What `remoteAddress` reads on both ends of a connection made by `client()`. */
  readonly remoteAddress: string;
  /** The default high-water mark of the server's sockets (and of the client's). */
  readonly highWaterMark: number;
  server(options?: ServerOptions): Promise<ServerTransport>;
  /** A client transport; `ca` is a certificate to trust for `wss:` (network transports only). */
  client(options?: { readonly ca?: Buffer }): ClientTransport;
  /** The `ws://` base URL (no trailing slash) that reaches a started `transport`. */
  url(transport: ServerTransport): string;
  /** A URL where nothing listens, for a connection attempt to be refused. */
  unreachableUrl(): Promise<string>;
}

/** What legitimately differs between transports. */
export interface ServerTransportCapabilities {
  /**
   * Real WebSocket upgrades over TCP on 127.0.0.1: raw HTTP and WebSocket peers, HTTP answers
   * (404/400/426), ports, IPv6, many sockets. The memory transport has no HTTP at all.
   */
  readonly network: boolean;
  /** Can serve `wss:`. */
  readonly tls: boolean;
  /**
   * `pause()` called from inside `onMessage` holds the next message even when it was already read
   * from the network. `ws` pauses the TCP socket only: its receiver has parsed the whole chunk
   * and delivers the messages in it (the contract allows it: "messages already read may still
   * arrive").
   */
  readonly pauseHoldsReadMessages: boolean;
  /**
   * A paused socket also holds the peer's close until `resume()`. uWebSockets.js cannot stop
   * reading one socket (uNetworking/uWebSockets.js#661): the adapter emulates `pause()` by queueing
   * messages, and uWS reports the close at once (the queued messages are lost with it).
   */
  readonly pauseHoldsClose: boolean;
  /**
   * `onClose` reports the code and reason of the close frame the peer sent, even when both ends
   * closed at once. uWS reports a close at the moment it sends its own close frame, with its own
   * code, without waiting for the peer's (transports/uws.ts).
   */
  readonly closeReportsPeerCode: boolean;
  /**
   * A message over twice `maxMessageSize` still gets a 1009 close frame to the peer. uWS cuts such a
   * connection off without one (its `maxPayloadLength` is set at twice the limit; the peer sees
   * 1006, uNetworking/uWebSockets#1321).
   */
  readonly farOversizeGetsCloseFrame: boolean;
  /**
   * Frames a client writes right behind its upgrade request, before the 101 arrived, are delivered.
   * uWS drops them (RFC 6455 §4.1 tells clients to wait; uNetworking/uWebSockets#213).
   */
  readonly framesBeforeUpgrade: boolean;
}

export interface ContractOptions {
  /**
   * Cases this transport fails for no legitimate reason (a bug reported, not fixed yet), by name,
   * with the reason shown in the run. A name that matches no case is an error.
   */
  readonly skip?: Readonly<Record<string, string>>;
}

const NO_NETWORK = 'no network: an in-process pair has no HTTP, ports or raw peers';

/**
 * The factory of a server transport on 127.0.0.1 reached by the `ws` client transport (uWS.js has
 * no client). `server` gets the options with the host filled in.
 */
export function loopbackFactory(
  server: (options: ServerOptions & { readonly host: string }) => Promise<ServerTransport>,
  highWaterMark: number,
): ServerTransportFactory {
  return {
    remoteAddress: '127.0.0.1',
    highWaterMark,
    server: (options = {}) => server({ host: '127.0.0.1', ...options }),
    client: ({ ca } = {}) => wsClientTransport(ca === undefined ? {} : { tls: { ca } }),
    url: loopbackUrl,
    unreachableUrl: async () => `ws://127.0.0.1:${await freePort()}/`,
  };
}
const NO_TLS = 'this transport cannot serve wss:';

/** Registers the contract's cases for one transport, in a `describe` named after it. */
export function serverTransportContract(
  name: string,
  factory: ServerTransportFactory,
  caps: ServerTransportCapabilities,
  options: ContractOptions = {},
): void {
  const known = new Map(Object.entries(options.skip ?? {}));
  const registered = new Set<string>();

  /** A case; `unless` is the reason it does not apply to this transport (from `caps`), or false. */
  function contractCase(title: string, unless: string | false, fn: (t: TestContext) => Promise<void>): void {
    assert.ok(!registered.has(title), `duplicate case ${title}`);
    registered.add(title);
    const skip = unless || known.get(title) || false;
    it(title, { skip }, fn);
  }
  const network = (): string | false => !caps.network && NO_NETWORK;

  async function startServer(
    t: TestContext,
    options: ServeOptions & Pick<ServerOptions, 'port' | 'path' | 'tls'> = {},
  ): Promise<Fixture> {
    const transport = await factory.server({
      ...(options.port === undefined ? {} : { port: options.port }),
      ...(options.path === undefined ? {} : { path: options.path }),
      ...(options.tls === undefined ? {} : { tls: options.tls }),
    });
    return serve(t, transport, options, (started) => factory.url(started));
  }

  const connect = (t: TestContext, url: string, connectOptions: ConnectOptions = {}) =>
    connectWith(t, factory.client(), url, connectOptions);

  /** One connection attempt that is expected to fail: nothing to clean up. */
  const attempt = (url: string, rec = recorder(), connectTimeout = 2000) =>
    factory.client().connect(url, { maxMessageSize: MAX, connectTimeout }, rec);

  /** A connection attempt offering `protocols`, expected to fail. */
  const attemptWith = (url: string, protocols: readonly string[]) =>
    factory.client().connect(url, { maxMessageSize: MAX, connectTimeout: 2000, protocols }, recorder());

  /** A started server with one connection, its client and the accepted end. */
  async function connected(t: TestContext, serveOptions: ServeOptions = {}, connectOptions: ConnectOptions = {}) {
    const server = await startServer(t, serveOptions);
    const client = await connect(t, server.url, connectOptions);
    await until(() => server.accepted.length === 1, 'connection');
    return { server, ...client, remote: server.accepted[0]! };
  }

  describe(`${name}: server transport contract`, () => {
    /* ---------------------------------------------------------------------------------------- */
    /* Messages                                                                                 */
    /* ---------------------------------------------------------------------------------------- */

    contractCase('binary and text messages round trip in both directions', false, async (t) => {
      const { socket, rec, remote } = await connected(t);

      assert.equal(socket.send(bytes(1, 2, 3)), 'ok');
      assert.equal(socket.sendText('héllo'), 'ok');
      await until(() => remote.rec.messages.length === 2, 'server messages');
      assert.deepEqual(remote.rec.messages[0], { data: bytes(1, 2, 3), binary: true });
      assert.equal(remote.rec.messages[1]!.binary, false);
      assert.equal(text(remote.rec.messages[1]!.data), 'héllo');

      assert.equal(remote.socket.send(new Uint8Array(0)), 'ok');
      assert.equal(remote.socket.sendText('✓'), 'ok');
      // A view into a larger buffer: only its own bytes go out.
      assert.equal(remote.socket.send(new Uint8Array([9, 8, 7, 6, 5]).subarray(1, 3)), 'ok');
      await until(() => rec.messages.length === 3, 'client messages');
      assert.deepEqual(rec.messages[0], { data: new Uint8Array(0), binary: true });
      assert.deepEqual(rec.messages[1], { data: new TextEncoder().encode('✓'), binary: false });
      assert.deepEqual(rec.messages[2], { data: bytes(8, 7), binary: true });
      assert.equal(remote.socket.remoteAddress, factory.remoteAddress);
      assert.equal(socket.remoteAddress, factory.remoteAddress);
      assert.equal(remote.socket.bufferedAmount, 0);
    });

    contractCase(
      'delivered bytes are copies: plain Uint8Arrays that stay valid after later messages',
      false,
      async (t) => {
        const { socket, remote } = await connected(t);
        const count = 200;
        for (let i = 0; i < count; i++) socket.send(new Uint8Array(300).fill(i));
        await until(() => remote.rec.messages.length === count, 'all messages');
        // Long enough for a runtime that reuses or neuters its buffers (uWS) to have done so.
        await delay(10);
        for (let i = 0; i < count; i++) {
          const { data } = remote.rec.messages[i]!;
          assert.equal(Object.getPrototypeOf(data), Uint8Array.prototype);
          assert.equal(data.byteLength, 300, `message ${i} not neutered`);
          assert.ok(
            data.every((b) => b === i % 256),
            `message ${i} intact`,
          );
        }
      },
    );

    contractCase('a message sent in connection() reaches the client handlers', false, async (t) => {
      const server = await startServer(t, { onConnection: (socket) => socket.send(bytes(42)) });
      const { rec } = await connect(t, server.url);
      await until(() => rec.messages.length === 1, 'first message');
      assert.deepEqual(rec.messages[0]!.data, bytes(42));
    });

    /* ---------------------------------------------------------------------------------------- */
    /* Upgrades                                                                                 */
    /* ---------------------------------------------------------------------------------------- */

    contractCase('upgrade sees url, path, query, lower-cased headers and the remote address', false, async (t) => {
      const server = await startServer(t);
      await connect(t, `${server.url}/chat?room=1&x=%20`, { headers: { 'X-Token': 'abc', Cookie: 'a=1' } });
      await until(() => server.accepted.length === 1, 'connection');
      const request = server.upgrades[0]!;
      assert.equal(request.url, '/chat?room=1&x=%20');
      assert.equal(request.path, '/chat');
      assert.equal(request.query, 'room=1&x=%20');
      assert.equal(request.headers['x-token'], 'abc');
      assert.equal(request.headers.cookie, 'a=1');
      assert.equal(request.headers.host, new URL(server.url).host);
      // Only a real handshake has the upgrade's own headers.
      if (caps.network) assert.equal(request.headers.upgrade, 'websocket');
      assert.equal(request.headers['X-Token'], undefined);
      assert.equal(Object.getPrototypeOf(request.headers), null);
      assert.equal(request.remoteAddress, factory.remoteAddress);
      assert.equal(server.accepted[0]!.request, request, 'connection() gets the same request object');

      await connect(t, `${server.url}/`);
      await until(() => server.upgrades.length === 2, 'second upgrade');
      assert.equal(server.upgrades[1]!.query, '');
      assert.equal(server.upgrades[1]!.path, '/');
      assert.equal(server.upgrades[1]!.url, '/');
    });

    contractCase('IPv6 remote addresses are written as Node writes them', network(), async (t) => {
      const transport = await factory.server({ host: '::' });
      const addresses: string[] = [];
      t.after(() => transport.stop());
      try {
        await transport.start(
          {
            upgrade: () => ({ accept: true }),
            connection: (socket) => {
              addresses.push(socket.remoteAddress);
              return recorder();
            },
          },
          { maxMessageSize: MAX },
        );
      } catch {
        t.skip('no IPv6 here');
        return;
      }
      const port = transport.address()!.port;
      const v6 = await factory
        .client()
        .connect(`ws://[::1]:${port}/`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder())
        .catch(() => undefined);
      if (v6 === undefined) {
        t.skip('no IPv6 loopback here');
        return;
      }
      t.after(() => v6.terminate());
      await connect(t, `ws://127.0.0.1:${port}/`);
      await until(() => addresses.length === 2, 'connections');
      assert.deepEqual(addresses, ['::1', '::ffff:127.0.0.1']);
    });

    contractCase('repeated headers are joined as Node joins them', network(), async (t) => {
      const server = await startServer(t);
      await rawWebSocket(
        t,
        server.port,
        'Cookie: a=1\r\nCookie: b=2\r\nX-Multi: 1\r\nX-Multi: 2\r\nUser-Agent: first\r\nUser-Agent: second\r\nConstructor: x\r\n',
      );
      await until(() => server.accepted.length === 1, 'connection');
      const { headers } = server.upgrades[0]!;
      assert.equal(headers.cookie, 'a=1; b=2');
      assert.equal(headers['x-multi'], '1, 2');
      assert.equal(headers['user-agent'], 'first');
      assert.equal(headers.constructor, 'x');
    });

    contractCase('refusals reach the client as status and body; onClose is never called', false, async (t) => {
      const server = await startServer(t, {
        upgrade: (request) => {
          const status = Number(request.query);
          return { accept: false, status, body: `no (${status}) é` };
        },
      });
      for (const status of [401, 403, 503]) {
        const rec = recorder();
        await assert.rejects(attempt(`${server.url}/?${status}`, rec), (err: ConnectFailure) => {
          assert.equal(err.status, status);
          assert.equal(err.body, `no (${status}) é`);
          assert.match(err.message, new RegExp(`upgrade refused with HTTP ${status}`));
          return true;
        });
        await delay(20);
        assert.deepEqual(rec.events, []);
      }
      assert.equal(server.accepted.length, 0);
    });

    contractCase(
      'refusal is a well-formed HTTP/1.1 response; invalid headers become a bare 500',
      network(),
      async (t) => {
        const server = await startServer(t, {
          upgrade: (request) =>
            request.path === '/bad'
              ? { accept: false, status: 403, body: 'secret', headers: { 'X-Evil': 'a\r\nSet-Cookie: x=1' } }
              : request.path === '/status'
                ? { accept: false, status: 99 }
                : request.path === '/number-body'
                  ? // An owner writing JavaScript: a body that is not a string.
                    ({ accept: false, status: 403, body: 42 } as unknown as UpgradeDecision)
                  : request.path === '/json'
                    ? {
                        accept: false,
                        status: 426,
                        body: '{"code":"OLD"}',
                        headers: { 'content-TYPE': 'application/json; charset=utf-8', Upgrade: 'websocket' },
                      }
                    : {
                        accept: false,
                        status: 503,
                        body: 'busy',
                        headers: { 'Retry-After': '5', 'Content-Length': '999', 'X-Latin': 'caf\u00e9' },
                      },
        });
        const busy = await rawUpgrade(server.port, '/');
        assert.equal(busy.status, 503);
        assert.equal(busy.body, 'busy');
        assert.equal(busy.headers['retry-after'], '5');
        assert.equal(busy.headers['content-length'], '4');
        assert.equal(busy.headers.connection, 'close');
        assert.equal(busy.headers['content-type'], 'text/plain; charset=utf-8');
        // Written as latin1 like Node does (Node reads it back as latin1).
        assert.equal(busy.headers['x-latin'], 'caf\u00e9');

        const bad = await rawUpgrade(server.port, '/bad');
        assert.equal(bad.status, 500);
        assert.equal(bad.body, '');
        assert.equal(bad.headers['x-evil'], undefined);
        assert.equal(bad.headers['set-cookie'], undefined);

        assert.equal((await rawUpgrade(server.port, '/status')).status, 500);
        const numberBody = await rawUpgrade(server.port, '/number-body');
        assert.equal(numberBody.status, 500);
        assert.equal(numberBody.body, '');

        // The owner's Content-Type replaces the default, once.
        const json = await rawUpgrade(server.port, '/json');
        assert.equal(json.status, 426);
        assert.equal(json.body, '{"code":"OLD"}');
        assert.equal(json.headers['content-type'], 'application/json; charset=utf-8');
        assert.equal(json.headers.upgrade, 'websocket');
      },
    );

    contractCase(
      'an async upgrade decision is awaited; a throwing one answers 500 without detail',
      false,
      async (t) => {
        const server = await startServer(t, {
          upgrade: async (request) => {
            await delay(20);
            if (request.path === '/boom') throw new Error('database password is hunter2');
            if (request.path === '/no') return { accept: false, status: 403, body: 'later no' };
            return { accept: true };
          },
        });
        const { socket } = await connect(t, `${server.url}/ok`);
        assert.equal(socket.send(bytes(7)), 'ok');
        await until(() => server.accepted[0]?.rec.messages.length === 1, 'message after async accept');
        assert.equal(server.accepted[0]!.request, server.upgrades[0], 'same request object after an await');

        await assert.rejects(attempt(`${server.url}/boom`), { status: 500, body: '' });
        await assert.rejects(attempt(`${server.url}/no`), { status: 403, body: 'later no' });
      },
    );

    contractCase(
      'a client that leaves during an async decision is dropped quietly, accepted or refused',
      false,
      async (t) => {
        const decisions: Array<(decision: UpgradeDecision) => void> = [];
        const server = await startServer(t, {
          upgrade: (request) =>
            request.path === '/ok'
              ? { accept: true }
              : new Promise<UpgradeDecision>((resolve) => {
                  decisions.push(resolve);
                }),
        });
        const rec = recorder();
        await assert.rejects(attempt(server.url, rec, 100), { code: 'ETIMEDOUT' });
        // And a raw peer that closes its TCP connection rather than giving up on a timer.
        const raw = caps.network ? await rawWebSocket(t, server.port, '', false) : undefined;
        await until(() => decisions.length === (raw === undefined ? 1 : 2), 'upgrades pending');
        raw?.destroy();
        await delay(30);
        decisions[0]!({ accept: true });
        decisions[1]?.({ accept: false, status: 403, body: 'too late' });
        await delay(30);
        assert.equal(server.accepted.length, 0);
        assert.deepEqual(rec.events, []);
        // The server still works.
        const { socket } = await connect(t, `${server.url}/ok`);
        assert.equal(socket.send(bytes(1)), 'ok');
        await until(() => server.accepted[0]?.rec.messages.length === 1, 'message');
      },
    );

    contractCase(
      'refuseUpgrades: an accept not acted on yet, and every later one, get the refusal; open connections stay; a restart accepts again',
      false,
      async (t) => {
        const held: Array<(decision: UpgradeDecision) => void> = [];
        const server = await startServer(t, {
          upgrade: (request) =>
            request.path === '/held'
              ? new Promise<UpgradeDecision>((resolve) => {
                  held.push(resolve);
                })
              : { accept: true },
        });
        const open = await connect(t, `${server.url}/open`);
        await until(() => server.accepted.length === 1, 'connection');
        const waiting = attempt(`${server.url}/held`);
        waiting.catch(() => {});
        await until(() => held.length === 1, 'upgrade pending');

        const { refuseUpgrades } = server.transport;
        assert.ok(refuseUpgrades, 'the transport has refuseUpgrades');
        refuseUpgrades({ accept: false, status: 503, body: 'going away' });
        // Decided by the owner before it called refuseUpgrades, acted on by the transport after.
        held[0]!({ accept: true });
        await assert.rejects(waiting, { status: 503, body: 'going away' });
        await assert.rejects(attempt(`${server.url}/later`), { status: 503, body: 'going away' });
        assert.equal(server.accepted.length, 1, 'connection() was not called for them');
        assert.equal(open.socket.send(bytes(5)), 'ok');
        await until(() => server.accepted[0]!.rec.messages.length === 1, 'a message on the open connection');

        await server.transport.stop();
        await server.transport.start(acceptAll(), { maxMessageSize: MAX });
        const again = await connect(t, factory.url(server.transport));
        assert.equal(again.socket.send(bytes(1)), 'ok');
      },
    );

    contractCase(
      'an owner whose connection() throws: the connection closes with 1011 and the error is thrown again as an uncaught exception, after a synchronous or an asynchronous decision',
      false,
      async (t) => {
        const faults = catchFaults(t);
        const bugs: Error[] = [];
        const server = await startServer(t, {
          upgrade: (request) =>
            request.path === '/async' ? delay(5).then(() => ({ accept: true })) : { accept: true },
          onConnection: () => {
            const bug = new Error(`owner bug ${bugs.length + 1}`);
            bugs.push(bug);
            throw bug;
          },
        });
        for (const path of ['/sync', '/async']) {
          const { rec } = await connect(t, `${server.url}${path}`);
          await until(() => rec.closes.length === 1, `the close after ${path}`);
          assert.deepEqual(rec.closes, [{ code: 1011, reason: '' }], path);
          await until(() => faults.uncaught.length === bugs.length, `the uncaught exception after ${path}`);
        }
        // Reported once each, as thrown, and never as a rejection.
        await delay(20);
        assert.deepEqual(faults.uncaught, bugs);
        assert.deepEqual(faults.unhandled, []);
        // The transport serves on.
        assert.equal(bugs.length, 2);
        assert.equal(server.accepted.length, 2);
      },
    );

    contractCase(
      'only the configured path is upgraded (404); plain HTTP gets 426, other upgrades 400',
      network(),
      async (t) => {
        const server = await startServer(t, { path: '/ws' });
        await assert.rejects(attempt(`${server.url}/nope`), { status: 404 });
        assert.equal(server.upgrades.length, 0);
        const res = await fetch(server.url.replace('ws:', 'http:'));
        assert.equal(res.status, 426);
        assert.equal(await res.text(), 'Upgrade Required');
        assert.equal(await httpStatus(server.port, '/ws', { connection: 'Upgrade', upgrade: 'h2c' }), 400);
        assert.equal(server.upgrades.length, 0, 'other protocols never reach the owner');
        assert.equal((await rawUpgrade(server.port, '/ws', { 'sec-websocket-version': '7' })).status, 400);
        assert.equal(
          (await rawUpgrade(server.port, '/ws', { 'sec-websocket-key': 'not base64 but 24 chars!' })).status,
          400,
        );
        // The handshake is checked before the owner is asked: it never sees a malformed upgrade.
        assert.equal(server.upgrades.length, 0);
        assert.equal(server.accepted.length, 0);
        await connect(t, `${server.url}/ws?x=1`);
        assert.equal(server.upgrades.length, 1);
      },
    );

    /* ---------------------------------------------------------------------------------------- */
    /* Limits                                                                                   */
    /* ---------------------------------------------------------------------------------------- */

    contractCase('a message over maxMessageSize closes with 1009 on both ends (server limit)', false, async (t) => {
      const { socket, rec, remote } = await connected(t, { maxMessageSize: 1000 });
      assert.equal(socket.send(new Uint8Array(1000)), 'ok');
      assert.equal(socket.send(new Uint8Array(1001)), 'ok');
      // Not delivered: the receiver stopped reading at the oversized message.
      socket.send(new Uint8Array(1));
      await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
      assert.equal(remote.rec.messages.length, 1);
      assert.deepEqual(remote.rec.closes, [{ code: 1009, reason: '' }]);
      assert.deepEqual(rec.closes, [{ code: 1009, reason: '' }]);
    });

    contractCase('a message over twice maxMessageSize closes with 1009 for the owner', false, async (t) => {
      const { socket, rec, remote } = await connected(t, { maxMessageSize: 1000 });
      assert.equal(socket.send(new Uint8Array(2001)), 'ok');
      await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
      assert.equal(remote.rec.messages.length, 0);
      assert.deepEqual(remote.rec.closes, [{ code: 1009, reason: '' }]);
      assert.deepEqual(rec.closes, [{ code: caps.farOversizeGetsCloseFrame ? 1009 : 1006, reason: '' }]);
    });

    contractCase('a message over maxMessageSize closes with 1009 on both ends (client limit)', false, async (t) => {
      const server = await startServer(t);
      for (const [i, binary] of [true, false].entries()) {
        const { rec } = await connect(t, server.url, { maxMessageSize: 100 });
        await until(() => server.accepted.length === i + 1, 'connection');
        const remote = server.accepted[i]!;
        if (binary) remote.socket.send(new Uint8Array(101));
        else remote.socket.sendText('x'.repeat(101));
        await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
        assert.deepEqual(rec.closes, [{ code: 1009, reason: '' }]);
        assert.deepEqual(remote.rec.closes, [{ code: 1009, reason: '' }]);
        assert.equal(rec.messages.length, 0);
      }
    });

    contractCase('invalid UTF-8 in a text frame is reported to the owner as 1007', network(), async (t) => {
      const server = await startServer(t);
      const raw = await rawWebSocket(t, server.port);
      await until(() => server.accepted.length === 1, 'connection');
      raw.write(maskedFrame(0x1, Uint8Array.from([0xff, 0xfe])));
      await until(() => server.accepted[0]!.rec.closes.length === 1, 'close');
      assert.deepEqual(server.accepted[0]!.rec.closes, [{ code: 1007, reason: '' }]);
      assert.equal(server.accepted[0]!.rec.messages.length, 0);
    });

    /* ---------------------------------------------------------------------------------------- */
    /* Closing                                                                                  */
    /* ---------------------------------------------------------------------------------------- */

    contractCase('close code and reason are seen on both ends, once; close is safe to repeat', false, async (t) => {
      const { socket, rec, remote } = await connected(t);
      socket.send(bytes(1));
      socket.close(4001, 'bye');
      socket.close(4002, 'again');
      assert.equal(socket.send(bytes(2)), 'dropped');
      assert.equal(socket.sendText('x'), 'dropped');
      await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
      assert.deepEqual(remote.rec.events, ['message', 'close']);
      assert.deepEqual(remote.rec.closes, [{ code: 4001, reason: 'bye' }]);
      assert.deepEqual(rec.closes, [{ code: 4001, reason: 'bye' }]);
      // Every method is safe on a closed socket, on both ends.
      socket.close(1000, '');
      socket.ping();
      remote.socket.close(1000, '');
      remote.socket.terminate();
      remote.socket.ping();
      remote.socket.pause();
      remote.socket.resume();
      assert.equal(remote.socket.send(bytes(3)), 'dropped');
      assert.equal(remote.socket.sendText('x'), 'dropped');
      assert.equal(remote.socket.bufferedAmount, 0);
      await delay(20);
      assert.equal(rec.closes.length, 1);
      assert.equal(remote.rec.closes.length, 1);
    });

    contractCase('close arrives after the messages sent before it, on both ends, once', false, async (t) => {
      const { socket, rec, remote } = await connected(t);
      socket.send(bytes(1));
      socket.send(bytes(2));
      remote.socket.send(bytes(3)); // in flight towards the closing side: still delivered
      socket.close(4000, 'done');
      socket.close(4001, 'again');
      assert.equal(socket.send(bytes(4)), 'dropped');
      assert.equal(socket.sendText('x'), 'dropped');
      await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
      assert.deepEqual(remote.rec.events, ['message', 'message', 'close']);
      assert.deepEqual(rec.events, ['message', 'close']);
      assert.deepEqual(remote.rec.closes, [{ code: 4000, reason: 'done' }]);
      assert.deepEqual(rec.closes, [{ code: 4000, reason: 'done' }]);
      assert.equal(remote.socket.send(bytes(5)), 'dropped');
      remote.socket.close(1000, '');
      socket.terminate();
      await delay(5);
      assert.equal(rec.closes.length, 1);
      assert.equal(remote.rec.closes.length, 1);
    });

    contractCase(
      'simultaneous closes: each end reports the code the other sent',
      !caps.closeReportsPeerCode &&
        'this transport reports its own close code at once (close() does not wait for the peer)',
      async (t) => {
        const { socket, rec, remote } = await connected(t);
        socket.close(4001, 'client');
        remote.socket.close(4002, 'server');
        await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
        assert.deepEqual(rec.closes, [{ code: 4002, reason: 'server' }]);
        assert.deepEqual(remote.rec.closes, [{ code: 4001, reason: 'client' }]);
      },
    );

    contractCase('the server closes: code and reason on both ends, onClose after close() returns', false, async (t) => {
      const { rec, remote } = await connected(t);
      assert.throws(() => remote.socket.close(1005, ''), RangeError);
      assert.throws(() => remote.socket.close(2000, ''), RangeError);
      remote.socket.close(1001, 'é'.repeat(100));
      // The owner is never re-entered from close().
      assert.equal(remote.rec.closes.length, 0);
      assert.equal(remote.socket.send(bytes(1)), 'dropped');
      await until(() => rec.closes.length === 1 && remote.rec.closes.length === 1, 'both closes');
      // Cut to 123 bytes of valid UTF-8.
      assert.deepEqual(rec.closes, [{ code: 1001, reason: 'é'.repeat(61) }]);
      assert.deepEqual(remote.rec.closes, [{ code: 1001, reason: 'é'.repeat(61) }]);
      assert.throws(() => remote.socket.close(1006, ''), RangeError, 'still a caller bug after the close');
    });

    contractCase('close validates the code and cuts the reason to 123 bytes of UTF-8', false, async (t) => {
      const { socket, rec, remote } = await connected(t);
      assert.throws(() => socket.close(1006, ''), RangeError);
      assert.throws(() => socket.close(5000, ''), RangeError);
      socket.close(1000, 'é'.repeat(100));
      await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
      assert.deepEqual(remote.rec.closes, [{ code: 1000, reason: 'é'.repeat(61) }]);
      assert.deepEqual(rec.closes, [{ code: 1000, reason: 'é'.repeat(61) }]);
    });

    contractCase('terminate is seen as 1006 on both ends', false, async (t) => {
      const { socket, rec, remote } = await connected(t);
      remote.socket.terminate();
      remote.socket.terminate();
      await until(() => rec.closes.length === 1 && remote.rec.closes.length === 1, 'both closes');
      assert.deepEqual(rec.closes, [{ code: 1006, reason: '' }]);
      assert.deepEqual(remote.rec.closes, [{ code: 1006, reason: '' }]);
      socket.terminate();
      assert.equal(socket.send(bytes(1)), 'dropped');
    });

    contractCase('closing or terminating inside connection() still reports onClose', false, async (t) => {
      const server = await startServer(t, {
        onConnection: (socket) => {
          socket.send(bytes(1));
          socket.close(4009, 'full');
        },
      });
      const { rec } = await connect(t, server.url);
      await until(() => rec.closes.length === 1 && server.accepted[0]?.rec.closes.length === 1, 'both closes');
      assert.deepEqual(
        rec.messages.map((m) => m.data),
        [bytes(1)],
      );
      assert.deepEqual(rec.closes, [{ code: 4009, reason: 'full' }]);
      assert.deepEqual(server.accepted[0]!.rec.closes, [{ code: 4009, reason: 'full' }]);
    });

    contractCase('sends after the peer is gone answer dropped and never throw', false, async (t) => {
      const { socket, remote } = await connected(t);
      socket.terminate();
      const results = new Set<SendResult>();
      const deadline = Date.now() + 2000;
      // Sends race the close: each one is ok/backpressure until the transport notices, then dropped.
      while (remote.rec.closes.length === 0 && Date.now() < deadline) {
        results.add(remote.socket.send(bytes(1)));
        results.add(remote.socket.sendText('x'));
        await delay(1);
      }
      assert.equal(remote.rec.closes.length, 1);
      assert.equal(remote.socket.send(bytes(1)), 'dropped');
      assert.equal(remote.socket.sendText('x'), 'dropped');
      assert.equal(remote.socket.bufferedAmount, 0);
      remote.socket.ping();
      remote.socket.close(1000, '');
      remote.socket.terminate();
      for (const result of results) assert.ok(['ok', 'backpressure', 'dropped'].includes(result));
    });

    contractCase(
      '200 connections destroyed abruptly while the server sends to them: no error escapes',
      network(),
      async (t) => {
        const count = 200;
        const server = await startServer(t);
        const clients: WebSocket[] = [];
        t.after(() => {
          for (const ws of clients) ws.terminate();
        });
        let opened = 0;
        for (let i = 0; i < count; i++) {
          const ws = new WebSocket(server.url, { perMessageDeflate: false });
          ws.on('error', () => {});
          ws.once('open', () => opened++);
          clients.push(ws);
        }
        await until(() => server.accepted.length === count && opened === count, 'all connections', 5000);

        // The server writes to every socket on every turn, open or not, until all are closed.
        const results = new Map<SendResult, number>();
        const payload = new Uint8Array(2048);
        let sending = true;
        const loop = (async () => {
          const deadline = Date.now() + 5000;
          while (sending && Date.now() < deadline) {
            for (const { socket } of server.accepted) {
              const result = socket.send(payload);
              results.set(result, (results.get(result) ?? 0) + 1);
              socket.ping();
            }
            await new Promise((resolve) => setImmediate(resolve));
          }
        })();
        // Destroy the TCP sockets at once, at staggered moments, without a close frame.
        for (const [i, ws] of clients.entries()) {
          setTimeout(() => (ws as unknown as { _socket: Socket | null })._socket?.destroy(), i % 20);
        }
        await until(() => server.accepted.every((a) => a.rec.closes.length === 1), 'all closes', 5000);
        sending = false;
        await loop;
        assert.ok((results.get('dropped') ?? 0) > 0);
        for (const { rec } of server.accepted) {
          assert.equal(rec.closes.length, 1);
          assert.equal(rec.closes[0]!.code, 1006);
        }
      },
    );

    /* ---------------------------------------------------------------------------------------- */
    /* Flow control                                                                             */
    /* ---------------------------------------------------------------------------------------- */

    contractCase('pause stops delivery; resume delivers the rest in order', false, async (t) => {
      const { socket, remote } = await connected(t, { onConnection: (s) => s.pause() });
      for (let i = 0; i < 10; i++) socket.send(bytes(i));
      await delay(50);
      assert.equal(remote.rec.messages.length, 0);
      remote.socket.resume();
      // Delivered asynchronously: owners call resume() from inside their own handlers.
      assert.equal(remote.rec.messages.length, 0);
      await until(() => remote.rec.messages.length === 10, 'messages after resume');
      assert.deepEqual(
        remote.rec.messages.map((m) => m.data[0]),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
      );
    });

    contractCase(
      'a pause from inside onMessage holds the messages behind it, already read or not',
      !caps.pauseHoldsReadMessages &&
        'pause() stops reading the socket; messages already read in the same chunk still arrive',
      async (t) => {
        let seen = 0;
        let paused: (() => void) | undefined;
        const { socket, remote } = await connected(t, {
          onConnection: (s) => s.pause(),
          hooks: {
            onMessage: () => {
              seen++;
              if (seen === 3) paused?.();
            },
          },
        });
        paused = () => remote.socket.pause();
        for (let i = 0; i < 5; i++) socket.send(bytes(i));
        await delay(30);
        // Later messages keep their place behind the waiting ones.
        remote.socket.resume();
        await until(() => seen === 3, 'three messages');
        await delay(30);
        assert.equal(seen, 3);
        remote.socket.resume();
        await until(() => seen === 5, 'the rest');
        assert.deepEqual(
          remote.rec.messages.map((m) => m.data[0]),
          [0, 1, 2, 3, 4],
        );
      },
    );

    contractCase(
      'pause stops delivery (close included); resume delivers the rest in order',
      !caps.pauseHoldsClose && 'pause() is emulated: the peer close is reported at once',
      async (t) => {
        let pauseAt: (() => void) | undefined;
        const { socket, rec, remote } = await connected(t, {
          // Where a pause holds what was read already, pause from a handler (the harder case);
          // elsewhere before anything is read.
          onConnection: (s) => {
            if (!caps.pauseHoldsReadMessages) s.pause();
          },
          hooks: {
            onMessage(data) {
              if (data[0] === 2) pauseAt?.();
            },
          },
        });
        pauseAt = () => remote.socket.pause();
        for (let i = 0; i < 6; i++) socket.send(bytes(i));
        socket.close(1000, 'end');
        const before = caps.pauseHoldsReadMessages ? 3 : 0;
        await until(() => remote.rec.messages.length === before, `first ${before}`);
        await delay(20);
        assert.equal(remote.rec.messages.length, before);
        assert.equal(remote.rec.closes.length, 0);
        assert.equal(rec.closes.length, 0);
        remote.socket.resume();
        await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'closes after resume');
        assert.deepEqual(
          remote.rec.messages.map((m) => m.data[0]),
          [0, 1, 2, 3, 4, 5],
        );
        assert.deepEqual(remote.rec.closes, [{ code: 1000, reason: 'end' }]);
      },
    );

    contractCase(
      'send answers backpressure when the peer stops reading, then onDrain once it reads',
      false,
      async (t) => {
        const { socket: client, rec, remote } = await connected(t);
        client.pause();

        // One buffer for every send: server frames are not masked, so transports queue views of
        // it and the loop costs no memory however full the kernel buffers are.
        const chunk = new Uint8Array(64 * 1024);
        let sent = 0;
        let result: SendResult = 'ok';
        for (; sent < 2000 && result === 'ok'; ) {
          result = remote.socket.send(chunk);
          sent++;
        }
        assert.equal(result, 'backpressure');
        assert.ok(remote.socket.bufferedAmount > factory.highWaterMark);
        await delay(20);
        assert.equal(remote.rec.drains, 0);

        client.resume();
        await until(() => remote.rec.drains === 1, 'drain');
        assert.ok(remote.socket.bufferedAmount <= factory.highWaterMark);
        await until(() => rec.messages.length === sent, 'all messages', 5000);
        assert.equal(remote.rec.drains, 1);
      },
    );

    contractCase('the client side sees backpressure and onDrain too', false, async (t) => {
      const { socket, rec, remote } = await connected(t, { onConnection: (s) => s.pause() });
      const chunk = new Uint8Array(64 * 1024);
      let sent = 0;
      let result: SendResult = 'ok';
      for (; sent < 2000 && result === 'ok'; ) {
        result = socket.send(chunk);
        sent++;
      }
      assert.equal(result, 'backpressure');
      remote.socket.resume();
      await until(() => rec.drains === 1, 'drain');
      await until(() => remote.rec.messages.length === sent, 'all messages', 5000);
    });

    contractCase('ping reaches the peer as onPing, and the pong comes back as onPing', false, async (t) => {
      const { socket, rec, remote } = await connected(t);
      socket.ping();
      await until(() => remote.rec.pings === 1 && rec.pings === 1, 'ping and pong');
      remote.socket.ping();
      await until(() => remote.rec.pings === 2 && rec.pings === 2, 'ping and pong from the server');
    });

    /* ---------------------------------------------------------------------------------------- */
    /* Raw frames                                                                               */
    /* ---------------------------------------------------------------------------------------- */

    contractCase('a raw peer sending a text frame is delivered with binary=false', network(), async (t) => {
      const server = await startServer(t);
      const raw = await rawWebSocket(t, server.port);
      raw.write(maskedFrame(0x1, Uint8Array.from([0x68, 0x69])));
      await until(() => server.accepted[0]?.rec.messages.length === 1, 'text frame');
      assert.deepEqual(server.accepted[0]!.rec.messages[0], { data: new TextEncoder().encode('hi'), binary: false });
    });

    contractCase(
      'a frame sent right behind the upgrade request, before the 101, is delivered',
      network() || (!caps.framesBeforeUpgrade && 'frames a client sends before the 101 are dropped'),
      async (t) => {
        const server = await startServer(t);
        const raw = await rawWebSocket(t, server.port, '', false);
        // Written at once, so it most likely reaches the server with the request (ws: `head`).
        raw.write(maskedFrame(0x1, Uint8Array.from([0x68, 0x69])));
        await until(() => server.accepted[0]?.rec.messages.length === 1, 'text frame');
        assert.deepEqual(server.accepted[0]!.rec.messages[0], { data: new TextEncoder().encode('hi'), binary: false });
      },
    );

    contractCase(
      'a frame sent while the owner decides asynchronously is delivered once it accepts',
      network() || (!caps.framesBeforeUpgrade && 'frames a client sends before the 101 are dropped'),
      async (t) => {
        let release = (): void => {};
        const decided = new Promise<void>((resolve) => {
          release = resolve;
        });
        const server = await startServer(t, { upgrade: () => decided.then(() => ({ accept: true }) as const) });
        const raw = await rawWebSocket(t, server.port, '', false);
        await until(() => server.upgrades.length === 1, 'the upgrade asked about');
        // Its own TCP write, well after the request: not part of the upgrade's `head`.
        await delay(30);
        raw.write(maskedFrame(0x1, Uint8Array.from([0x68, 0x69])));
        await delay(30);
        release();
        await until(() => server.accepted[0]?.rec.messages.length === 1, 'text frame');
        assert.deepEqual(server.accepted[0]!.rec.messages[0], { data: new TextEncoder().encode('hi'), binary: false });
      },
    );

    contractCase(
      "a client that leaves while the owner decides aborts the upgrade request's signal",
      network(),
      async (t) => {
        const server = await startServer(t, { upgrade: () => new Promise<UpgradeDecision>(() => {}) });
        const raw = await rawWebSocket(t, server.port, '', false);
        await until(() => server.upgrades.length === 1, 'the upgrade asked about');
        const signal = server.upgrades[0]!.signal;
        assert.ok(signal !== undefined && !signal.aborted);
        raw.end();
        await until(() => signal.aborted, 'the signal aborted');
      },
    );

    /* ---------------------------------------------------------------------------------------- */
    /* Lifecycle                                                                                */
    /* ---------------------------------------------------------------------------------------- */

    contractCase(
      'connecting where nothing listens rejects with ECONNREFUSED and never calls onClose',
      false,
      async () => {
        const rec = recorder();
        await assert.rejects(attempt(await factory.unreachableUrl(), rec), { code: 'ECONNREFUSED' });
        await delay(20);
        assert.deepEqual(rec.events, []);
      },
    );

    contractCase(
      'stop() terminates open connections and pending upgrades, is idempotent, and frees the port',
      false,
      async (t) => {
        let decidePending: ((decision: UpgradeDecision) => void) | undefined;
        const server = await startServer(t, {
          upgrade: (request) =>
            request.path === '/pending'
              ? new Promise<UpgradeDecision>((resolve) => {
                  decidePending = resolve;
                })
              : { accept: true },
        });
        const a = await connect(t, server.url);
        const b = await connect(t, server.url);
        await until(() => server.accepted.length === 2, 'connections');
        const pendingRec = recorder();
        const pendingAttempt = attempt(`${server.url}/pending`, pendingRec);
        pendingAttempt.catch(() => {});
        await until(() => decidePending !== undefined, 'pending upgrade');

        const first = server.transport.stop();
        const second = server.transport.stop();
        await Promise.all([first, second]);
        // Every owner-side onClose ran before stop() resolved.
        assert.deepEqual(
          server.accepted.map((x) => x.rec.closes),
          [[{ code: 1006, reason: '' }], [{ code: 1006, reason: '' }]],
        );
        await until(() => a.rec.closes.length === 1 && b.rec.closes.length === 1, 'client closes');
        assert.deepEqual(a.rec.closes, [{ code: 1006, reason: '' }]);
        assert.deepEqual(b.rec.closes, [{ code: 1006, reason: '' }]);
        // A decision that comes after the stop accepts nothing.
        decidePending!({ accept: true });
        await assert.rejects(pendingAttempt, { code: 'ECONNRESET' });
        await delay(20);
        assert.equal(server.accepted.length, 2);
        assert.deepEqual(pendingRec.events, []);
        assert.equal(server.transport.address(), null);
        await server.transport.stop();
        await assert.rejects(attempt(server.url), { code: 'ECONNREFUSED' });

        // start() after stop() serves again (on the same port where one was configured).
        await server.transport.start(acceptAll(), { maxMessageSize: MAX });
        const again = await connect(t, factory.url(server.transport));
        assert.equal(again.socket.send(bytes(1)), 'ok');
        again.socket.close(1000, '');
        await until(() => again.rec.closes.length === 1, 'close after the restart');
      },
    );

    contractCase('start() is idempotent; a maxMessageSize of 0 rejects', false, async (t) => {
      const server = await startServer(t);
      const address = server.transport.address();
      await server.transport.start(acceptAll(), { maxMessageSize: MAX });
      assert.deepEqual(server.transport.address(), address);
      // The first owner keeps the connections.
      const { socket } = await connect(t, server.url);
      assert.equal(socket.send(bytes(1)), 'ok');
      await until(() => server.accepted[0]?.rec.messages.length === 1, 'message to the first owner');

      const fresh = await factory.server();
      await assert.rejects(fresh.start(acceptAll(), { maxMessageSize: 0 }), RangeError);
      assert.equal(fresh.address(), null);
      await fresh.stop();
    });

    contractCase('start() rejects with EADDRINUSE when the port is taken', network(), async (t) => {
      // A server of this transport on the port the kernel picked.
      const server = await startServer(t, { port: 0 });
      const other = await factory.server({ port: server.port });
      await assert.rejects(other.start(acceptAll(), { maxMessageSize: MAX }), { code: 'EADDRINUSE' });
      assert.equal(other.address(), null);
      await other.stop();

      // A port held by a plain Node server.
      const http = createHttpServer();
      await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
      t.after(() => new Promise<void>((resolve) => http.close(() => resolve())));
      const taken = await factory.server({ port: (http.address() as { port: number }).port });
      await assert.rejects(taken.start(acceptAll(), { maxMessageSize: MAX }), { code: 'EADDRINUSE' });
      assert.equal(taken.address(), null);
      await assert.rejects(taken.start(acceptAll(), { maxMessageSize: 0 }), RangeError);
    });

    contractCase(
      'start() rejects with EADDRINUSE when a server of this transport listens on that fixed port',
      network(),
      async (t) => {
        // As two instances of one application configured with the same port would.
        const port = await freePort();
        const first = await startServer(t, { port });
        assert.equal(first.port, port);
        const second = await factory.server({ port });
        t.after(() => second.stop());
        await assert.rejects(second.start(acceptAll(), { maxMessageSize: MAX }), { code: 'EADDRINUSE' });
        assert.equal(second.address(), null);
      },
    );

    contractCase(
      'stop() during start() leaves nothing listening; start() after stop() listens again',
      false,
      async (t) => {
        const transport = await factory.server();
        t.after(() => transport.stop());
        const started = transport.start(acceptAll(), { maxMessageSize: MAX });
        await transport.stop();
        await started;
        assert.equal(transport.address(), null);

        await transport.start(acceptAll(), { maxMessageSize: MAX });
        const { socket } = await connect(t, factory.url(transport));
        assert.equal(socket.send(bytes(1)), 'ok');
      },
    );

    contractCase('wss: TLS server and client with a test CA', !caps.tls && NO_TLS, async (t) => {
      const certificate = testCertificate(t);
      if (certificate === undefined) {
        t.skip('openssl not available');
        return;
      }
      const server = await startServer(t, {
        tls: { keyFile: certificate.keyFile, certFile: certificate.certFile },
      });
      const url = server.url.replace('ws:', 'wss:');

      await assert.rejects(attempt(url), (err: NodeJS.ErrnoException) => {
        assert.match(String(err.code), /SELF_SIGNED|UNABLE_TO_VERIFY/);
        return true;
      });

      const { socket, rec } = await connectWith(t, factory.client({ ca: certificate.cert }), url);
      socket.sendText('secure');
      await until(() => server.accepted[0]?.rec.messages.length === 1, 'message over TLS');
      assert.equal(text(server.accepted[0]!.rec.messages[0]!.data), 'secure');
      server.accepted[0]!.socket.send(bytes(5));
      await until(() => rec.messages.length === 1, 'reply over TLS');
      assert.deepEqual(rec.messages[0]!.data, bytes(5));
    });

    contractCase(
      'wss: stop() does not wait for a connection whose TLS handshake never completes',
      !caps.tls && NO_TLS,
      async (t) => {
        const certificate = testCertificate(t);
        if (certificate === undefined) {
          t.skip('openssl not available');
          return;
        }
        const transport = await factory.server({
          tls: { keyFile: certificate.keyFile, certFile: certificate.certFile },
        });
        t.after(() => transport.stop());
        await transport.start(acceptAll(), { maxMessageSize: MAX });
        // A TCP connection that starts a TLS record and sends nothing more (the handshake timeout
        // of either transport is 10 s).
        const raw = connectTcp({ host: '127.0.0.1', port: transport.address()!.port });
        raw.on('error', () => {});
        t.after(() => raw.destroy());
        await new Promise((resolve) => raw.once('connect', resolve));
        raw.write(Buffer.from([0x16]));
        await delay(50);
        let stopped = false;
        void transport.stop().then(() => {
          stopped = true;
        });
        await until(() => stopped, 'stop() to resolve', 5_000);
      },
    );

    contractCase("subprotocols: the first offered by default, the owner's choice, or none", network(), async (t) => {
      const choices: Array<string | undefined> = [undefined, 'chat.v2', ''];
      let next = 0;
      const server = await startServer(t, {
        upgrade: () => {
          const protocol = choices[next++];
          return protocol === undefined ? { accept: true } : { accept: true, protocol };
        },
      });
      for (const expected of ['chat.v1', 'chat.v2']) {
        const { socket } = await connect(t, server.url, { protocols: ['chat.v1', 'chat.v2'] });
        await until(() => server.accepted.length === next, 'connection');
        const accepted = server.accepted.at(-1)!;
        assert.equal(accepted.request.headers['sec-websocket-protocol']?.replace(/\s/g, ''), 'chat.v1,chat.v2');
        assert.equal(socket.protocol, expected, 'the client side');
        assert.equal(accepted.socket.protocol, expected, 'the server side');
      }
      // None: the 101 carries no Sec-WebSocket-Protocol. RFC 6455 allows it, but the ws client
      // library (and Chrome) fail such an answer when they offered some: a raw upgrade here.
      const answer = await new Promise<IncomingMessage>((resolve, reject) => {
        const req = httpRequest({
          host: '127.0.0.1',
          port: server.port,
          path: '/',
          headers: {
            connection: 'Upgrade',
            upgrade: 'websocket',
            'sec-websocket-version': '13',
            'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
            'sec-websocket-protocol': 'chat.v1, chat.v2',
          },
        });
        req.on('upgrade', (res, socket) => {
          socket.destroy();
          resolve(res);
        });
        req.on('response', () => reject(new Error('not upgraded')));
        req.on('error', reject);
        req.end();
      });
      assert.equal(answer.statusCode, 101);
      assert.equal(answer.headers['sec-websocket-protocol'], undefined);
      await until(() => server.accepted.length === 3, 'the third connection');
      assert.equal(server.accepted[2]!.socket.protocol, '');
      // Offering nothing: none, whatever the default.
      const { socket } = await connect(t, server.url);
      assert.equal(socket.protocol, '');
    });

    contractCase(
      'subprotocols: accepting with one the client did not offer is refused with 500',
      network(),
      async (t) => {
        const server = await startServer(t, { upgrade: () => ({ accept: true, protocol: 'never-offered' }) });
        await assert.rejects(attemptWith(server.url, ['chat.v1']), (error: ConnectFailure) => error.status === 500);
        assert.equal(server.accepted.length, 0);
      },
    );

    contractCase('end to end: the duplexwire Server and Client over this transport', false, async (t) => {
      const silent = { error() {}, warn() {}, info() {}, debug() {} };
      const transport = await factory.server();
      const server = new Server({ transport, logger: silent, onRequest: (_conn, msg) => msg.payload });
      await server.listen();
      t.after(() => server.shutdown({ timeout: 200 }));
      const client = new Client(`${factory.url(transport)}/`, {
        transport: factory.client(),
        logger: silent,
        reconnect: false,
      });
      t.after(() => client.close());
      const disconnects: Array<{ code: number; reason: string }> = [];
      client.on('disconnect', (info) => disconnects.push(info));
      await client.connect();
      assert.deepEqual(client.serverInfo, {
        major: 2,
        minor: client.serverInfo!.minor,
        readTimeout: client.serverInfo!.readTimeout,
        maxMessageSize: MAX,
      });
      assert.equal(payloadText(await client.request('echo', utf8(`over ${name}`))), `over ${name}`);
      const big = 'x'.repeat(200_000);
      assert.equal(payloadText(await client.request('echo', utf8(big))), big);
      const replies = await Promise.all(Array.from({ length: 100 }, (_, i) => client.request('echo', utf8(`n${i}`))));
      assert.deepEqual(
        replies.map(payloadText),
        Array.from({ length: 100 }, (_, i) => `n${i}`),
      );

      await server.shutdown({ timeout: 200 });
      await until(() => disconnects.length === 1, 'client disconnect');
      assert.equal(server.address(), null);
    });

    for (const title of known.keys()) {
      assert.ok(registered.has(title), `ContractOptions.skip names no case: ${title}`);
    }
  });
}
