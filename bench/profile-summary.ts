/**
 * Summarises V8 CPU profiles (`bench/run.ts --cpu-prof <dir>`): self time by function, heaviest
 * first, so that a hot path can be read without a browser.
 *
 *   node --import tsx bench/profile-summary.ts <file.cpuprofile>... [--top 25] [--files]
 *
 * --files  self time by source file instead of by function
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { parseArgs } from 'node:util';

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  readonly children?: readonly number[];
}

interface Profile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** Self time (µs) per function, keyed by name and location. */
export function selfTimes(profile: Profile): Map<string, number> {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const out = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]!);
    if (node === undefined) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const where =
      url === ''
        ? ''
        : ` ${url.startsWith('file://') ? relative(process.cwd(), new URL(url).pathname) : url}:${lineNumber + 1}`;
    const key = `${functionName || '(anonymous)'}${where}`;
    out.set(key, (out.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  return out;
}

/** Self time (µs) per source file: how the time splits between duplexwire, ws, Node and V8. */
export function fileTimes(profile: Profile): Map<string, number> {
  const out = new Map<string, number>();
  for (const [key, us] of selfTimes(profile)) {
    const space = key.lastIndexOf(' ');
    const file = space < 0 ? key : key.slice(space + 1).replace(/:\d+$/, '');
    out.set(file, (out.get(file) ?? 0) + us);
  }
  return out;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string', default: '25' }, files: { type: 'boolean', default: false } },
});
for (const file of positionals) {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const times = values.files ? fileTimes(profile) : selfTimes(profile);
  const total = [...times.values()].reduce((a, b) => a + b, 0);
  const idle = (times.get('(idle)') ?? 0) + (times.get('(program)') ?? 0);
  console.log(`${file}: ${(total / 1e6).toFixed(2)} s sampled, ${(((total - idle) / total) * 100).toFixed(0)}% busy`);
  const rows = [...times.entries()]
    .filter(([key]) => key !== '(idle)')
    .sort((a, b) => b[1] - a[1])
    .slice(0, Number(values.top));
  for (const [key, us] of rows) console.log(`  ${((us / total) * 100).toFixed(1).padStart(5)}%  ${key}`);
}
