/**
 * Bundles the browser client (`duplexwire/client` under the `browser` condition) into one file a
 * plain `<script type="module">` can import: dist/browser/duplexwire-client.js, ESM, minified,
 * ES2022. Runs after `tsc` (npm run build) and bundles the compiled JavaScript, so the bundle is
 * made of exactly what the package ships. `test/browser/size.test.ts` keeps its min+gzip size in
 * budget, reading the metafile written next to it for a breakdown.
 *
 * esbuild bundles and minifies (its metafile gives the size of each module, minified), then terser
 * minifies that output once more (three passes, and the options explained where they are set):
 * about 3.5% less min+gzip than esbuild alone (it inlines and merges more), measured on this bundle.
 *
 * esbuild fails the build on any import of a Node built-in (platform 'browser'), and
 * `test/browser/imports.test.ts` checks the import graph itself.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { minify } from 'terser';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entry = join(root, 'dist/src/client/index.browser.js');
const outfile = join(root, 'dist/browser/duplexwire-client.js');

const result = await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  legalComments: 'none',
  // Non-ASCII text stays as is instead of \u escapes: smaller, and the page serves it as UTF-8.
  charset: 'utf8',
  metafile: true,
  logLevel: 'warning',
  write: false,
});
// `module`: top-level names are private to the bundle; its exports keep their names.
const minified = await minify(result.outputFiles[0].text, {
  module: true,
  ecma: 2022,
  // Measured on this bundle, in bytes min+gzip: a third pass finds what the first two's inlining
  // opened up (a fourth finds nothing). `unsafe_arrows` turns function expressions that do not
  // use `this` into arrows: unsafe only for code that uses such a function's `prototype` or calls
  // it with `new`, and our sources have no function expression at all (those in the output are
  // terser's inlined calls). `inline: 1` inlines only functions without arguments or variables:
  // the others stay called by name instead of becoming nested immediately-invoked arrows at
  // their one call site (`((e, t) => ((e) => ...)(e))(a, b)`), which gzip less.
  compress: { passes: 3, unsafe_arrows: true, inline: 1 },
  format: { comments: false },
});
if (minified.code === undefined) throw new Error('terser produced no output');
await mkdir(dirname(outfile), { recursive: true });
await writeFile(outfile, minified.code);
await writeFile(join(root, 'dist/browser/duplexwire-client.meta.json'), JSON.stringify(result.metafile));
