/**
 * `duplexwire/client` under the `browser` condition must run without Node: nothing reachable from
 * dist/src/client/index.browser.js may import a Node built-in, `ws`, or any other package. The
 * import graph of the built files is walked statically (static and dynamic imports, re-exports),
 * so a Node import behind a dynamic `import()` that a bundler would split off is caught too.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));

/** Module specifiers in tsc's ESM output: `import/export ... from 'x'`, `import 'x'`, `import('x')`. */
const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(?\s*)(['"])([^'"]+)\1/g;

/** package.json's `browser` field: the files a bundler replaces by their browser siblings. */
const browserMap = new Map(
  Object.entries(
    (JSON.parse(readFileSync(resolve(root, 'package.json'), 'utf8')) as { browser?: Record<string, string> }).browser ??
      {},
  ).map(([from, to]) => [resolve(root, from), resolve(root, to)]),
);

/**
 * Every file reachable from `entry`, and every non-relative specifier with the file importing it.
 * With `browser`, imports resolve as a bundler does under the browser condition: through the
 * package.json `browser` map.
 */
function walk(
  entry: string,
  browser = false,
): { files: Set<string>; external: Array<{ from: string; specifier: string }> } {
  const files = new Set<string>();
  const external: Array<{ from: string; specifier: string }> = [];
  const todo = [entry];
  // Bounded: the package has well under a thousand modules.
  for (let steps = 0; todo.length > 0 && steps < 1000; steps++) {
    const file = todo.pop()!;
    if (files.has(file)) continue;
    files.add(file);
    // Comments may show imports as examples; tsc writes them as blocks or on lines of their own.
    const source = readFileSync(file, 'utf8')
      .replace(/\/\*[\s\S]*?\*\//g, '')
      .replace(/^\s*\/\/.*$/gm, '');
    for (const match of source.matchAll(SPECIFIER)) {
      const specifier = match[2]!;
      if (specifier.startsWith('./') || specifier.startsWith('../')) {
        const resolved = resolve(dirname(file), specifier);
        const target = (browser && browserMap.get(resolved)) || resolved;
        assert.ok(existsSync(target), `${relative(root, file)} imports ${specifier} (${target}), which does not exist`);
        todo.push(target);
      } else {
        external.push({ from: relative(root, file), specifier });
      }
    }
  }
  assert.equal(todo.length, 0, 'import graph walk did not finish');
  return { files, external };
}

test('nothing reachable from the browser client entry imports Node, ws or another package', () => {
  const entry = resolve(root, 'dist/src/client/index.browser.js');
  assert.ok(existsSync(entry), 'dist/src/client/index.browser.js is missing: run npm run build first');
  const { files, external } = walk(entry, true);
  const reached = [...files].map((file) => relative(root, file));
  assert.ok(reached.includes('dist/transports/browser.js'), 'the browser transport is the default there');
  for (const [from, to] of browserMap) {
    assert.ok(!files.has(from) && files.has(to), `${relative(root, to)} replaces ${relative(root, from)}`);
  }
  assert.ok(
    !reached.some((file) => file.includes('node-default') || file.endsWith('transports/ws.js')),
    reached.join('\n'),
  );
  assert.deepEqual(
    external,
    [],
    `imports a browser cannot load:\n${external.map((e) => `  ${e.from}: ${e.specifier}`).join('\n')}`,
  );
});

test('the walk does see Node imports (it checks something): the Node entry reaches ws', () => {
  const entry = resolve(root, 'dist/src/client/index.js');
  const { external } = walk(entry);
  assert.ok(
    external.some((e) => e.specifier === 'ws'),
    JSON.stringify(external),
  );
});

test('package.json maps duplexwire/client to the browser entry under the browser condition', () => {
  const pkg = JSON.parse(readFileSync(resolve(root, 'package.json'), 'utf8')) as {
    exports: Record<string, Record<string, string>>;
  };
  const client = pkg.exports['./client']!;
  assert.deepEqual(Object.keys(client), ['types', 'browser', 'default'], 'condition order matters: first match wins');
  assert.equal(client.browser, './dist/src/client/index.browser.js');
  assert.equal(client.default, './dist/src/client/index.js');
  assert.equal(pkg.exports['./transports/browser']?.default, './dist/transports/browser.js');
});
