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
 * A regression guard, not the goal: the issue asks for 8 KB min+gzip, and the bundle is 11.4 KB.
 * Without any message text it would still be 9.8 KB (measured): the codec, the peer engine (both
 * directions, cancel, limits), sessions and reconnect are the rest. Reaching 8 KB means a smaller
 * browser feature set; until that is decided, this keeps the bundle from growing.
 */
const BUDGET_BYTES = 12 * 1024;

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
