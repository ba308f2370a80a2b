/**
 * The benchmark loads duplexwire by its package name, which resolves to the compiled `dist/`:
 * what applications run. (Under tsx every named closure would also get a `__name` wrapper and an
 * own property, which costs time and ~250 bytes per closure: not what ships.) This finds the
 * sources that changed since the last `npm run build`, so a stale build is reported, not measured
 * silently.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const SOURCES = ['protocol', 'transports', 'src'];

function* sourceFiles(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* sourceFiles(path);
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path;
  }
}

/** Sources newer than their compiled file in `dist/` (or without one), relative to the repository. */
export function staleBuild(): string[] {
  const stale: string[] = [];
  for (const top of SOURCES) {
    for (const source of sourceFiles(join(ROOT, top))) {
      const rel = relative(ROOT, source);
      const built = join(ROOT, 'dist', rel.replace(/\.ts$/, '.js'));
      if (!existsSync(built) || statSync(built).mtimeMs < statSync(source).mtimeMs) stale.push(rel);
    }
  }
  return stale;
}
