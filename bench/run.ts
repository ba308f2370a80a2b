/**
 * `npm run bench`: duplexwire side by side with raw ws, raw uWebSockets.js and Socket.IO, every
 * case in fresh processes on 127.0.0.1, then one table with every figure, the ratios, the goals,
 * and the same as JSON.
 *
 *   node --import tsx bench/run.ts [--quick] [--only <case-regex>] [--json <path>]
 *                                  [--cpu-prof <dir>] [--heap-snapshot <dir>]
 *
 * --quick          a few seconds per case, small connection counts: a smoke test, not a measurement
 * --only <regex>   run the cases whose id (`<group>/<stack>`, e.g. `rr-64B-x128/duplexwire-ws`) matches
 * --json <path>    also write the report as JSON
 * --cpu-prof <dir> run servers and load generators under `node --cpu-prof`, profiles written to <dir>
 * --heap-snapshot <dir>  write a heap snapshot of each server after the memory case
 *
 * Exits 1 when a case failed (the others still run and are reported).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem, type } from 'node:os';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { type Case, cases, FULL, QUICK, type Timing } from './cases.ts';
import { runLoadCase } from './case-runner.ts';
import { Child, killAll } from './child.ts';
import { staleBuild } from './dist-check.ts';
import { runMemoryCase } from './memory.ts';
import { checkGoals, computeRatios, type Meta, type Report, renderText } from './report.ts';
import type { CaseResult, Metrics, RunOptions } from './result.ts';

function commit(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty =
      execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head} (with uncommitted changes)` : head;
  } catch {
    return 'unknown';
  }
}

async function runCodecCase(item: Case, timing: Timing, options: RunOptions): Promise<Metrics> {
  const child = new Child(new URL('./codec.ts', import.meta.url), [], { label: 'codec', nodeFlags: options.nodeFlags });
  try {
    await child.ready;
    return await child.call<Metrics>(
      'run',
      { payloadSize: item.group.params.payloadSize ?? 64, ms: timing.codecMs },
      60_000,
    );
  } finally {
    await child.stop();
  }
}

function runCase(item: Case, timing: Timing, options: RunOptions): Promise<Metrics> {
  switch (item.group.kind) {
    case 'memory':
      return runMemoryCase(item, timing, options);
    case 'codec':
      return runCodecCase(item, timing, options);
    default:
      return runLoadCase(item, timing, options);
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      json: { type: 'string' },
      'cpu-prof': { type: 'string' },
      'heap-snapshot': { type: 'string' },
    },
  });
  const timing = values.quick ? QUICK : FULL;
  const only = values.only === undefined ? undefined : new RegExp(values.only);
  const nodeFlags: string[] = [];
  if (values['cpu-prof'] !== undefined) {
    const dir = resolve(values['cpu-prof']);
    mkdirSync(dir, { recursive: true });
    nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${dir}`);
  }
  const heapSnapshotDir = values['heap-snapshot'] === undefined ? undefined : resolve(values['heap-snapshot']);
  if (heapSnapshotDir !== undefined) mkdirSync(heapSnapshotDir, { recursive: true });
  const options: RunOptions = { nodeFlags, heapSnapshotDir };

  const stale = staleBuild();
  if (stale.length > 0) {
    process.stderr.write(
      `WARNING: dist/ is older than ${stale.length} source file(s) (${stale.slice(0, 3).join(', ')}${stale.length > 3 ? ', ...' : ''}): ` +
        'run `npm run build` first, or the figures are those of the old build\n',
    );
  }
  const list = cases(timing, only);
  if (list.length === 0) throw new Error(`no case matches ${values.only}`);
  const startedAt = performance.now();
  const loadStart = loadavg();
  const results: CaseResult[] = [];
  process.stderr.write(`duplexwire bench (${timing.mode}): ${list.length} cases\n`);
  for (const [index, item] of list.entries()) {
    const t0 = performance.now();
    const base = {
      id: item.id,
      group: item.group.id,
      kind: item.group.kind,
      title: item.group.title,
      stack: item.stack,
      params: item.group.params,
    };
    try {
      const metrics = await runCase(item, timing, options);
      results.push({ ...base, metrics });
      process.stderr.write(
        `[${index + 1}/${list.length}] ${item.id} ${summary(item, metrics)} (${((performance.now() - t0) / 1_000).toFixed(1)} s)\n`,
      );
    } catch (error) {
      const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
      results.push({ ...base, metrics: {}, error: message });
      process.stderr.write(`[${index + 1}/${list.length}] ${item.id} FAILED: ${message}\n`);
    }
  }

  const model = cpus()[0]?.model ?? 'unknown';
  const meta: Meta = {
    date: new Date().toISOString(),
    commit: commit(),
    machine: { cpus: cpus().length, model, memoryGiB: Math.round(totalmem() / 2 ** 30), os: `${type()} ${release()}` },
    node: process.version,
    mode: timing.mode,
    timing,
    loadAverage: { start: loadStart, end: loadavg() },
    durationS: (performance.now() - startedAt) / 1_000,
    staleBuild: stale,
    ...(values.only === undefined ? {} : { only: values.only }),
  };
  const ratios = computeRatios(results);
  const report: Report = { meta, cases: results, ratios, goals: checkGoals(ratios) };
  process.stdout.write(`${renderText(report)}\n`);
  if (values.json !== undefined) {
    const path = resolve(values.json);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, `${JSON.stringify(report, null, 2)}\n`);
    process.stderr.write(`JSON written to ${path}\n`);
  }
  return results.some((r) => r.error !== undefined) ? 1 : 0;
}

function summary(item: Case, metrics: Metrics): string {
  const n = (v: number | null | undefined) =>
    v === null || v === undefined ? '-' : Math.round(v).toLocaleString('en');
  switch (item.group.kind) {
    case 'request-reply':
      return `${n(metrics.rate)} rt/s, p99 ${n(metrics.p99Us)} µs, ${(metrics.cpuUsPerOp ?? 0).toFixed(1)} µs CPU/rt`;
    case 'memory':
      return `${(metrics.livePerConnKiB ?? 0).toFixed(2)} KiB live/conn (${(metrics.heapPerConnKiB ?? 0).toFixed(2)} heap, ${(metrics.rssPerConnKiB ?? 0).toFixed(2)} RSS)`;
    case 'codec':
      return `encode ${n(metrics.encodePerSec)}/s, decode ${n(metrics.decodePerSec)}/s`;
    default:
      return `${n(metrics.rate)} msg/s`;
  }
}

let code = 1;
try {
  code = await main();
} catch (error) {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
} finally {
  killAll();
}
process.exitCode = code;
