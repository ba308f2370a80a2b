/**
 * The browser bundle (dist/browser/duplexwire-client.js, made by `npm run build`) stays small:
 * its min+gzip size is measured as a CDN would serve it (gzip level 9) and kept in budget. On
 * failure the message lists what the bundle is made of (esbuild's metafile), largest first.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';

/**
 * A regression guard, not the goal: the issue asks for 8 KB (8192 bytes) min+gzip, which the full
 * feature set does not fit. Node-only code is out of the bundle (the slab allocator and the
 * one-timer deadlines have browser siblings, package.json `browser`; the engine's shutdown
 * accounting lives in ServerPeer), the protocol's numbers are inlined, terser minifies esbuild's
 * output again, and the client's request queue shares its bookkeeping with connect(): 11,375
 * bytes became 10,653 (10,759 with the engine's split encoding of large payloads, whose browser
 * sibling keeps the split encoders out; 10,923 with `Cancellation` and the handlers'
 * `cancellation`; 11,046 with the client's fixes from the fault suite; 11,224 with the client's
 * WebSocket `protocols`, checked up front, `client.protocol` and `ConnectError.body`; 11,330 with
 * session updates: `SessionStoreUnsupportedError` 52 bytes, the client's `sessionUpdated` 23;
 * 11,363 with `close()` ending a connect in progress; 11,276 once `duplexwire/client` stopped
 * exporting what only a server throws and the catalogue's `ERROR_CLASSES`; 11,367 with session
 * replies applied as they are read, which keeps `client.session` right when a close, an update
 * or a new session follows in the same read; 11,322 with terser's third pass, unsafe_arrows and
 * inline: 1. Shortening the property names private to the bundle, chosen with the TypeScript
 * checker, saved 136 bytes more and was left out: a build-time analysis, and short names a
 * user's own properties on our objects could collide with, for 1.2%; 11,373 with the browser
 * transport honouring the connect signal, so `close()` ends a connect in progress at once;
 * 11,442 with the reconnect backoff's `minUptime`, against servers that accept and drop at once,
 * and configuration errors not retried; 11,544 with one 'abort' listener per signal however many
 * requests share it, not one per request, which made Node warn past 10 with a page-wide signal;
 * 11,608 with every handler of a request id a server reused aborted on close and cancel, where
 * the last one hid the others, and `close()` refusing a code that may not be sent before the
 * client is marked closed). What is left is the feature set, measured on this bundle: with every message text deleted it
 * is still ~9,560 bytes; without the client's sessions ~9,490, and without sessions, reconnect
 * and the request queue ~9,000 (~8,120 with no message text either).
 * So 8 KB means moving features out of the default bundle (a product decision, not a
 * minification one); until that is decided, this keeps the bundle from growing (11,608 + ~0.3%).
 */
const BUDGET_BYTES = 11_643;

const bundleUrl = new URL('../../dist/browser/duplexwire-client.js', import.meta.url);
const metaUrl = new URL('../../dist/browser/duplexwire-client.meta.json', import.meta.url);

interface Metafile {
  outputs: Record<string, { inputs: Record<string, { bytesInOutput: number }> }>;
}

function breakdown(): string {
  if (!existsSync(metaUrl)) return '(no metafile)';
  const meta = JSON.parse(readFileSync(metaUrl, 'utf8')) as Metafile;
  const inputs = Object.values(meta.outputs).flatMap((output) => Object.entries(output.inputs));
  return inputs
    .sort((a, b) => b[1].bytesInOutput - a[1].bytesInOutput)
    .map(([path, { bytesInOutput }]) => `  ${String(bytesInOutput).padStart(6)}  ${path}`)
    .join('\n');
}

test('the browser bundle is ESM without Node imports and under budget (min+gzip)', () => {
  assert.ok(existsSync(bundleUrl), 'dist/browser/duplexwire-client.js is missing: run npm run build first');
  const bundle = readFileSync(bundleUrl);
  const text = bundle.toString('utf8');
  assert.doesNotMatch(text, /\bfrom\s*["']|\bimport\s*\(\s*["']|\brequire\s*\(/, 'the bundle must import nothing');
  assert.match(text, /\bexport\s*\{/, 'the bundle is an ES module');
  const gzipped = gzipSync(bundle, { level: 9 }).length;
  console.log(`browser bundle: ${bundle.length} bytes minified, ${gzipped} bytes min+gzip (budget ${BUDGET_BYTES})`);
  assert.ok(
    gzipped <= BUDGET_BYTES,
    `the browser bundle is ${gzipped} bytes min+gzip, over its budget of ${BUDGET_BYTES}. Minified bytes per module:\n${breakdown()}`,
  );
});
