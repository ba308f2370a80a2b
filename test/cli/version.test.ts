/**
 * `duplexwire --version` (and `-v`, `version`) prints the version of package.json, from the
 * sources under tsx and from the build (dist/ is built by `npm run build`, which `npm test` runs
 * first), whatever the working directory.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));
const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

test('duplexwire --version, -v and version print the package version, from the sources and from dist/', async () => {
  const fromSources = ['--import', 'tsx', `${root}src/cli/main.ts`];
  const fromBuild = [`${root}dist/src/cli/main.js`];
  for (const [command, cwd] of [
    [fromSources, root],
    [fromBuild, root],
    // Not read relative to the working directory.
    [fromBuild, tmpdir()],
  ] as const) {
    for (const flag of ['--version', '-v', 'version']) {
      const { stdout, stderr } = await run(process.execPath, [...command, flag], { cwd, timeout: 20_000 });
      assert.equal(stdout, `${version}\n`, `${command.join(' ')} ${flag}`);
      assert.equal(stderr, '');
    }
  }
});

test('the usage lists --version', async () => {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--help'], {
    cwd: root,
    timeout: 20_000,
  });
  assert.match(stdout, /duplexwire --version/);
});
