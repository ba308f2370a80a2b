/**
 * Hop-by-hop headers and request smuggling, sent byte by byte over a raw net.Socket: each case is
 * either refused with 400 or reaches the target as exactly one clean request (no hop-by-hop
 * header, no header named by Connection, the tunnel's own headers gone, X-Forwarded-* ours).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ID, raw, readBody, startAgent, startProxy, startTarget } from '../fixtures/tunnel-helpers.ts';

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly rawHeaders: string[];
  readonly body: string;
}

function statuses(response: string): number[] {
  return [...response.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
}

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-connection',
  'proxy-authorization',
];

function assertClean(seen: Seen, extraForbidden: string[] = []): void {
  const names = seen.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
  for (const name of names) {
    assert.ok(!extraForbidden.includes(name), `${name} reached the target`);
    assert.ok(
      name !== 'x-duplexwire-client-id' && name !== 'x-duplexwire-request-timeout',
      `${name} reached the target`,
    );
  }
  // Node's own client adds Connection: keep-alive and re-frames the body: those are ours.
  const connection = seen.rawHeaders[seen.rawHeaders.findIndex((h) => h.toLowerCase() === 'connection') + 1];
  if (connection !== undefined) assert.match(connection, /^(keep-alive|close)$/i);
  assert.equal(names.filter((n) => n === 'x-forwarded-for').length, 1);
  assert.equal(
    seen.rawHeaders[seen.rawHeaders.findIndex((h) => h.toLowerCase() === 'x-forwarded-for') + 1],
    '127.0.0.1',
  );
  assert.equal(names.filter((n) => n === 'host').length, 1);
}

test('smuggling and hop-by-hop matrix over a raw socket', async (t) => {
  const seen: Seen[] = [];
  const target = await startTarget(t, (req, res) => {
    readBody(req).then((body) => {
      seen.push({ method: req.method!, url: req.url!, rawHeaders: req.rawHeaders, body: body.toString('latin1') });
      res.end('ok');
    });
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const id = `x-duplexwire-client-id: ${ID}\r\n`;
  const cases: Array<{
    name: string;
    request: string;
    /** 400, or the one clean request the target must see (checked by `check`). */
    expect: 400 | 'clean';
    check?: (s: Seen) => void;
  }> = [
    {
      name: 'Content-Length and Transfer-Encoding together',
      request: `POST / HTTP/1.1\r\nHost: a\r\n${id}Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n`,
      expect: 400,
    },
    {
      name: 'duplicate Content-Length, same value',
      request: `POST / HTTP/1.1\r\nHost: a\r\n${id}Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`,
      expect: 400,
    },
    {
      name: 'duplicate Content-Length, different values',
      request: `POST / HTTP/1.1\r\nHost: a\r\n${id}Content-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!`,
      expect: 400,
    },
    {
      name: 'Transfer-Encoding: chunked',
      request: `POST /te HTTP/1.1\r\nHost: a\r\n${id}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n`,
      expect: 'clean',
      check: (s) => {
        assert.equal(s.url, '/te');
        assert.equal(s.body, 'hello world');
      },
    },
    {
      name: 'Transfer-Encoding: identity',
      request: `POST / HTTP/1.1\r\nHost: a\r\n${id}Transfer-Encoding: identity\r\nConnection: close\r\n\r\nhello`,
      expect: 400,
    },
    {
      name: 'Transfer-Encoding: chunked, identity',
      request: `POST / HTTP/1.1\r\nHost: a\r\n${id}Transfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
      expect: 400,
    },
    {
      name: 'obs-fold',
      request: `GET / HTTP/1.1\r\nHost: a\r\n${id}X-Folded: one\r\n two\r\nConnection: close\r\n\r\n`,
      expect: 400,
    },
    {
      name: 'space before the colon',
      request: `GET / HTTP/1.1\r\nHost: a\r\n${id}Transfer-Encoding : chunked\r\nConnection: close\r\n\r\n`,
      expect: 400,
    },
    {
      name: 'Connection: X-Forwarded-For (strip the proxy’s own header)',
      request: `GET /xff HTTP/1.1\r\nHost: a\r\n${id}X-Forwarded-For: 6.6.6.6\r\nConnection: close, X-Forwarded-For, X-Secret\r\nX-Secret: s\r\n\r\n`,
      expect: 'clean',
      check: (s) => assertClean(s, ['x-secret']),
    },
    {
      name: 'Upgrade: h2c with Connection: Upgrade',
      request: `GET / HTTP/1.1\r\nHost: a\r\n${id}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`,
      expect: 400,
    },
    {
      name: 'Upgrade: h2c without Connection: Upgrade',
      request: `GET /h2c HTTP/1.1\r\nHost: a\r\n${id}Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close, HTTP2-Settings\r\n\r\n`,
      expect: 'clean',
      check: (s) => assertClean(s, ['http2-settings', 'upgrade']),
    },
    {
      name: 'hop-by-hop headers of every kind',
      request:
        `GET /hop HTTP/1.1\r\nHost: a\r\n${id}Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\n` +
        'Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nX-Duplexwire-Request-Timeout: 5s\r\nConnection: close\r\n\r\n',
      expect: 'clean',
      check: (s) =>
        assertClean(
          s,
          HOP_BY_HOP.filter((h) => h !== 'connection'),
        ),
    },
    {
      name: 'two Host headers',
      request: `GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n${id}Connection: close\r\n\r\n`,
      expect: 400,
    },
    {
      name: 'absolute-form request target',
      request: `GET http://evil.example/abs%2Fpath?q=1 HTTP/1.1\r\nHost: a\r\n${id}Connection: close\r\n\r\n`,
      expect: 'clean',
      check: (s) => assert.equal(s.url, '/abs%2Fpath?q=1'),
    },
    {
      name: 'invalid chunk size',
      request: `POST / HTTP/1.1\r\nHost: a\r\n${id}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n`,
      expect: 400,
    },
    {
      name: 'bare LF line endings',
      request: `GET / HTTP/1.1\nHost: a\n${id.replace('\r', '')}Connection: close\n\n`,
      expect: 400,
    },
  ];
  for (const c of cases) {
    const before = seen.length;
    const response = await raw(proxy.port, c.request);
    const codes = statuses(response);
    if (c.expect === 400) {
      assert.deepEqual(codes, [400], `${c.name}: ${JSON.stringify(response.slice(0, 200))}`);
      assert.equal(seen.length, before, `${c.name}: nothing may reach the target`);
    } else {
      assert.deepEqual(codes, [200], `${c.name}: ${JSON.stringify(response.slice(0, 200))}`);
      assert.equal(seen.length, before + 1, `${c.name}: exactly one request at the target`);
      const s = seen[seen.length - 1]!;
      assertClean(
        s,
        HOP_BY_HOP.filter((h) => h !== 'connection' && h !== 'transfer-encoding'),
      );
      c.check?.(s);
    }
  }
});

test('pipelined requests on one connection arrive as separate requests; answers come back in order', async (t) => {
  const urls: string[] = [];
  const target = await startTarget(t, (req, res) => {
    urls.push(req.url!);
    req.resume();
    req.on('end', () => res.end(req.url));
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const id = `x-duplexwire-client-id: ${ID}\r\n`;
  const response = await raw(
    proxy.port,
    `POST /one HTTP/1.1\r\nHost: a\r\n${id}Content-Length: 5\r\n\r\nhelloGET /two HTTP/1.1\r\nHost: a\r\n${id}\r\nGET /three HTTP/1.1\r\nHost: a\r\n${id}Connection: close\r\n\r\n`,
  );
  assert.deepEqual(statuses(response), [200, 200, 200]);
  // Node's server handles pipelined requests at once; their answers keep the order.
  assert.deepEqual([...urls].sort(), ['/one', '/three', '/two']);
  assert.deepEqual(
    [...response.matchAll(/\r\n\r\n(\/(?:one|two|three))/g)].map((m) => m[1]),
    ['/one', '/two', '/three'],
  );
});
