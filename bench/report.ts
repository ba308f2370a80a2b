/**
 * The output: tables with every figure, the ratio of each duplexwire case to each peer from the
 * same run, the goals of the issue checked against those ratios, and the same as JSON.
 */
import type { Timing } from './cases.ts';
import type { CaseResult } from './result.ts';
import { DUPLEXWIRE_STACKS, type DuplexwireStack, RAW_TRANSPORT, STACK_LABELS, STACKS, type Stack } from './stacks.ts';

export interface Meta {
  readonly date: string;
  readonly commit: string;
  readonly machine: { readonly cpus: number; readonly model: string; readonly memoryGiB: number; readonly os: string };
  readonly node: string;
  readonly mode: Timing['mode'];
  readonly timing: Timing;
  readonly loadAverage: { readonly start: readonly number[]; readonly end: readonly number[] };
  readonly durationS: number;
  /** Sources changed since `dist/` was built (the figures are those of the build). */
  readonly staleBuild: readonly string[];
  readonly only?: string;
}

export interface Ratio {
  readonly group: string;
  readonly metric: string;
  readonly stack: DuplexwireStack;
  readonly peer: Stack;
  /** duplexwire / peer. */
  readonly value: number | null;
}

export interface Goal {
  readonly description: string;
  readonly group: string;
  readonly metric: string;
  readonly stack: DuplexwireStack;
  readonly peer: Stack;
  readonly op: '>=' | '<=';
  readonly target: number;
  readonly value: number | null;
  /** null when a figure is missing. */
  readonly met: boolean | null;
  /** How far from the target, as a fraction of it (positive = missed by that much). */
  readonly shortfall: number | null;
}

export interface Report {
  readonly meta: Meta;
  readonly cases: readonly CaseResult[];
  readonly ratios: readonly Ratio[];
  readonly goals: readonly Goal[];
}

/** Which metric each kind compares, and whether higher is better. */
const COMPARED: Readonly<
  Record<CaseResult['kind'], readonly { metric: string; label: string; higherIsBetter: boolean }[]>
> = {
  'request-reply': [
    { metric: 'rate', label: 'round trips/s', higherIsBetter: true },
    { metric: 'p99Us', label: 'p99', higherIsBetter: false },
    { metric: 'cpuUsPerOp', label: 'CPU per round trip', higherIsBetter: false },
  ],
  fanout: [{ metric: 'rate', label: 'deliveries/s', higherIsBetter: true }],
  signals: [{ metric: 'rate', label: 'signals/s', higherIsBetter: true }],
  memory: [
    { metric: 'livePerConnKiB', label: 'live memory per connection', higherIsBetter: false },
    { metric: 'rssPerConnKiB', label: 'RSS per connection', higherIsBetter: false },
    { metric: 'heapPerConnKiB', label: 'heap per connection', higherIsBetter: false },
  ],
  codec: [],
};

function metricOf(cases: readonly CaseResult[], group: string, stack: string, metric: string): number | null {
  const found = cases.find((c) => c.group === group && c.stack === stack && c.error === undefined);
  const value = found?.metrics[metric];
  return value === undefined || value === null || !Number.isFinite(value) ? null : value;
}

export function computeRatios(cases: readonly CaseResult[]): Ratio[] {
  const out: Ratio[] = [];
  const groups = [...new Set(cases.map((c) => c.group))];
  for (const group of groups) {
    const kind = cases.find((c) => c.group === group)!.kind;
    for (const { metric } of COMPARED[kind]) {
      for (const stack of DUPLEXWIRE_STACKS) {
        const own = metricOf(cases, group, stack, metric);
        if (own === null) continue;
        for (const peer of STACKS) {
          if (peer === stack || peer === 'duplexwire-ws' || peer === 'duplexwire-uws') continue;
          const theirs = metricOf(cases, group, peer, metric);
          if (theirs === null) continue;
          out.push({ group, metric, stack, peer, value: theirs === 0 ? null : own / theirs });
        }
      }
    }
  }
  return out;
}

interface GoalSpec {
  readonly description: string;
  readonly group: string;
  readonly metric: string;
  readonly stack: DuplexwireStack;
  readonly peer: Stack;
  readonly op: '>=' | '<=';
  readonly target: number;
}

/** The goals of the issue, one per (figure, peer). */
function goalSpecs(): GoalSpec[] {
  const specs: GoalSpec[] = [];
  for (const stack of DUPLEXWIRE_STACKS) {
    const raw = RAW_TRANSPORT[stack];
    specs.push({
      description: '64B, 128 in flight: round trips/s >= 0.85 x raw echo of the same transport',
      group: 'rr-64B-x128',
      metric: 'rate',
      stack,
      peer: raw,
      op: '>=',
      target: 0.85,
    });
  }
  for (const stack of DUPLEXWIRE_STACKS) {
    specs.push({
      description: '64B, 128 in flight: round trips/s >= 2.5 x Socket.IO acks',
      group: 'rr-64B-x128',
      metric: 'rate',
      stack,
      peer: 'socketio',
      op: '>=',
      target: 2.5,
    });
    specs.push({
      description: '64B, 128 in flight: round trips/s >= 1.4 x Socket.IO acks with msgpack',
      group: 'rr-64B-x128',
      metric: 'rate',
      stack,
      peer: 'socketio-msgpack',
      op: '>=',
      target: 1.4,
    });
  }
  for (const stack of DUPLEXWIRE_STACKS) {
    specs.push({
      description: '16KiB, 128 in flight: round trips/s >= 0.85 x raw echo of the same transport',
      group: 'rr-16KiB-x128',
      metric: 'rate',
      stack,
      peer: RAW_TRANSPORT[stack],
      op: '>=',
      target: 0.85,
    });
  }
  for (const group of ['rr-64B-x1-awake', 'rr-16KiB-x1-awake']) {
    for (const stack of DUPLEXWIRE_STACKS) {
      specs.push({
        description: `${group.includes('16KiB') ? '16KiB' : '64B'}, 1 in flight, CPUs awake: p99 <= 1.3 x raw echo of the same transport`,
        group,
        metric: 'p99Us',
        stack,
        peer: RAW_TRANSPORT[stack],
        op: '<=',
        target: 1.3,
      });
    }
  }
  for (const stack of DUPLEXWIRE_STACKS) {
    specs.push({
      description: 'idle memory (live: heap + native) per connection <= 1.3 x the raw transport',
      group: 'memory-idle',
      metric: 'livePerConnKiB',
      stack,
      peer: RAW_TRANSPORT[stack],
      op: '<=',
      target: 1.3,
    });
  }
  for (const stack of DUPLEXWIRE_STACKS) {
    specs.push({
      description: 'idle memory (live) per connection far below Socket.IO (read as <= 0.5 x)',
      group: 'memory-idle',
      metric: 'livePerConnKiB',
      stack,
      peer: 'socketio',
      op: '<=',
      target: 0.5,
    });
  }
  return specs;
}

export function checkGoals(ratios: readonly Ratio[]): Goal[] {
  return goalSpecs().map((spec) => {
    const value =
      ratios.find(
        (r) => r.group === spec.group && r.metric === spec.metric && r.stack === spec.stack && r.peer === spec.peer,
      )?.value ?? null;
    if (value === null) return { ...spec, value, met: null, shortfall: null };
    const met = spec.op === '>=' ? value >= spec.target : value <= spec.target;
    const shortfall = spec.op === '>=' ? (spec.target - value) / spec.target : (value - spec.target) / spec.target;
    return { ...spec, value, met, shortfall };
  });
}

/* ---------------------------------------------------------------- text */

const integer = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });

function fmt(value: number | null | undefined, digits = 0): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return '-';
  if (digits === 0) return integer.format(value);
  return value.toFixed(digits);
}

/** Microseconds with a precision that suits their size. */
function us(value: number | null | undefined): string {
  if (value === null || value === undefined) return '-';
  return value < 100 ? value.toFixed(1) : integer.format(value);
}

function ratio(value: number | null | undefined): string {
  return value === null || value === undefined ? '-' : `${value.toFixed(2)}x`;
}

/** A Markdown table; the first `textColumns` columns are left-aligned, the others (figures) right-aligned. */
function table(header: readonly string[], rows: readonly (readonly string[])[], textColumns = 2): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => (i < textColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i < textColumns ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

function casesOf(report: Report, kind: CaseResult['kind']): CaseResult[] {
  return report.cases.filter((c) => c.kind === kind);
}

function failedCells(columns: number): string[] {
  return ['FAILED', ...Array.from({ length: columns - 1 }, () => '')];
}

export function renderText(report: Report): string {
  const { meta } = report;
  const out: string[] = [];
  out.push(`# duplexwire benchmark (${meta.mode})`);
  out.push('');
  out.push(`- date: ${meta.date}`);
  out.push(`- commit: ${meta.commit}`);
  out.push(
    `- machine: ${meta.machine.cpus} x ${meta.machine.model}, ${meta.machine.memoryGiB} GiB, ${meta.machine.os}`,
  );
  out.push(`- node: ${meta.node}`);
  if (meta.staleBuild.length > 0)
    out.push(
      `- WARNING: dist/ was older than ${meta.staleBuild.length} source file(s): these figures are of the previous build`,
    );
  out.push(
    `- per case: ${meta.timing.warmupMs} ms warm-up, ${meta.timing.measureMs} ms measured; load average ${meta.loadAverage.start.map((l) => l.toFixed(2)).join(' ')} at start, ${meta.loadAverage.end.map((l) => l.toFixed(2)).join(' ')} at end; ${meta.durationS.toFixed(0)} s in all${meta.only === undefined ? '' : `; only ${meta.only}`}`,
  );
  out.push('');

  const rr = casesOf(report, 'request-reply');
  if (rr.length > 0) {
    out.push('## Request-reply');
    out.push('');
    out.push(
      table(
        [
          'case',
          'stack',
          'round trips/s',
          'p50 µs',
          'p99 µs',
          'CPU µs/rt',
          'server µs/rt',
          'client µs/rt',
          'server CPU %',
          'client CPU %',
        ],
        rr.map((c) =>
          c.error !== undefined
            ? [c.group, c.stack, ...failedCells(8)]
            : [
                c.group,
                c.stack,
                fmt(c.metrics.rate),
                us(c.metrics.p50Us),
                us(c.metrics.p99Us),
                us(c.metrics.cpuUsPerOp),
                us(c.metrics.serverCpuUsPerOp),
                us(c.metrics.clientCpuUsPerOp),
                fmt(c.metrics.serverCpuPct),
                fmt(c.metrics.clientCpuPct),
              ],
        ),
      ),
    );
    out.push('');
  }

  const fanout = casesOf(report, 'fanout');
  const signals = casesOf(report, 'signals');
  if (fanout.length + signals.length > 0) {
    out.push('## Signals');
    out.push('');
    out.push(
      table(
        ['case', 'stack', 'messages/s', 'CPU µs/msg', 'server µs/msg'],
        [...fanout, ...signals].map((c) =>
          c.error !== undefined
            ? [c.group, c.stack, ...failedCells(3)]
            : [c.group, c.stack, fmt(c.metrics.rate), us(c.metrics.cpuUsPerOp), us(c.metrics.serverCpuUsPerOp)],
        ),
      ),
    );
    out.push('');
    out.push(
      'fanout: signals delivered per second, summed over all clients; signals: signals received by the server per second.',
    );
    out.push('');
  }

  const memory = casesOf(report, 'memory');
  if (memory.length > 0) {
    out.push('## Memory per idle connection (server, after GC)');
    out.push('');
    out.push(
      'live = heap + native (RSS less the V8 heap, at least 0): what the goals are checked on; RSS alone moves by whole pages.',
    );
    out.push('');
    out.push(
      table(
        [
          'case',
          'stack',
          'live KiB/conn',
          'RSS KiB/conn',
          'heap KiB/conn',
          'native KiB/conn',
          'external KiB/conn',
          'baseline RSS MiB',
          'connections',
        ],
        memory.map((c) =>
          c.error !== undefined
            ? [c.group, c.stack, ...failedCells(7)]
            : [
                c.group,
                c.stack,
                fmt(c.metrics.livePerConnKiB, 2),
                fmt(c.metrics.rssPerConnKiB, 2),
                fmt(c.metrics.heapPerConnKiB, 2),
                fmt(c.metrics.nativePerConnKiB, 2),
                fmt(c.metrics.externalPerConnKiB, 2),
                fmt(c.metrics.baselineRssMiB, 1),
                fmt(c.metrics.connections),
              ],
        ),
      ),
    );
    out.push('');
  }

  const codec = casesOf(report, 'codec');
  if (codec.length > 0) {
    out.push('## Codec');
    out.push('');
    out.push(
      table(
        ['case', 'stack', 'encode msg/s', 'decode msg/s'],
        codec.map((c) =>
          c.error !== undefined
            ? [c.group, c.stack, ...failedCells(2)]
            : [c.group, c.stack, fmt(c.metrics.encodePerSec), fmt(c.metrics.decodePerSec)],
        ),
      ),
    );
    out.push('');
  }

  if (report.ratios.length > 0) {
    out.push('## Ratios, duplexwire / peer (same run)');
    out.push('');
    out.push('Higher is better for rates; lower is better for p99, CPU per operation and memory.');
    out.push('');
    const peers = STACKS.filter((s) => !s.startsWith('duplexwire'));
    const keys = [...new Set(report.ratios.map((r) => `${r.group}\u0000${r.metric}\u0000${r.stack}`))];
    out.push(
      table(
        ['case', 'stack', 'metric', ...peers.map((p) => `/ ${p}`)],
        keys.map((key) => {
          const [group, metric, stack] = key.split('\u0000') as [string, string, string];
          const cells = peers.map((peer) =>
            ratio(
              report.ratios.find(
                (r) => r.group === group && r.metric === metric && r.stack === stack && r.peer === peer,
              )?.value,
            ),
          );
          return [group, stack, metric, ...cells];
        }),
        3,
      ),
    );
    out.push('');
  }

  if (report.goals.some((g) => g.value !== null)) {
    out.push('## Goals');
    out.push('');
    out.push(
      table(
        ['goal', 'stack', 'vs', 'ratio', 'target', 'result'],
        report.goals
          .filter((g) => g.value !== null)
          .map((g) => [
            g.description,
            g.stack,
            g.peer,
            ratio(g.value),
            `${g.op} ${g.target}`,
            g.met ? 'met' : `MISSED by ${((g.shortfall ?? 0) * 100).toFixed(0)}%`,
          ]),
        3,
      ),
    );
    out.push('');
  }

  const failed = report.cases.filter((c) => c.error !== undefined);
  if (failed.length > 0) {
    out.push('## Failed cases');
    out.push('');
    for (const c of failed) out.push(`- ${c.id}: ${(c.error ?? '').split('\n', 1)[0]}`);
    out.push('');
  }

  out.push('Stacks:');
  for (const stack of STACKS) out.push(`- ${stack}: ${STACK_LABELS[stack]}`);
  return out.join('\n');
}
