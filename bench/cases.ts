/**
 * Every case of the benchmark: groups of the same measurement run once per stack, back to back,
 * so that the ratios inside a group compare figures from the same minute of the same run.
 */
import { STACKS, type Stack } from './stacks.ts';

export type CaseKind = 'request-reply' | 'fanout' | 'signals' | 'memory' | 'codec';

/** How long and how large, for the full run and the quick (smoke) run. */
export interface Timing {
  readonly mode: 'full' | 'quick';
  /** Load before the measured window, per case. */
  readonly warmupMs: number;
  /** The measured window, per case. */
  readonly measureMs: number;
  /** Clients receiving the fan-out. */
  readonly fanoutClients: number;
  /** Idle connections for the memory case. */
  readonly memoryConnections: number;
  /** Each codec measurement (encode, decode) runs this long after a warm-up as long. */
  readonly codecMs: number;
}

export const FULL: Timing = {
  mode: 'full',
  warmupMs: 2_000,
  measureMs: 5_000,
  fanoutClients: 1_000,
  memoryConnections: 2_000,
  codecMs: 1_000,
};

export const QUICK: Timing = {
  mode: 'quick',
  warmupMs: 200,
  measureMs: 300,
  fanoutClients: 200,
  memoryConnections: 200,
  codecMs: 100,
};

export interface CaseParams {
  /** Payload bytes of requests, replies and signals. */
  readonly payloadSize?: number;
  /** Round trips in flight. */
  readonly inflight?: number;
  /** Busy loops keep the CPUs awake during the case (`busy-loop.ts`). */
  readonly awake?: boolean;
  /** Connected clients (fan-out, memory). */
  readonly clients?: number;
  /** Signals per flow-control window. */
  readonly window?: number;
}

export interface Group {
  /** Stable across modes: the smoke test checks every case is present by id. */
  readonly id: string;
  readonly kind: CaseKind;
  readonly title: string;
  readonly params: CaseParams;
  /** The codec group is duplexwire's alone. */
  readonly stacks: readonly (Stack | 'duplexwire')[];
}

export interface Case {
  /** `<group>/<stack>`, what `--only` matches. */
  readonly id: string;
  readonly group: Group;
  readonly stack: Stack | 'duplexwire';
}

const KiB = 1024;

function sizeLabel(bytes: number): string {
  return bytes >= KiB ? `${bytes / KiB}KiB` : `${bytes}B`;
}

export function groups(timing: Timing): Group[] {
  const out: Group[] = [];
  for (const payloadSize of [64, 16 * KiB]) {
    for (const [inflight, awake] of [
      [128, false],
      [1, false],
      [1, true],
    ] as const) {
      const size = sizeLabel(payloadSize);
      out.push({
        id: `rr-${size}-x${inflight}${awake ? '-awake' : ''}`,
        kind: 'request-reply',
        title: `request-reply, ${size}, ${inflight} in flight${awake ? ', CPUs kept awake' : ''}`,
        params: { payloadSize, inflight, awake },
        stacks: STACKS,
      });
    }
  }
  out.push({
    id: 'fanout-64B',
    kind: 'fanout',
    title: `fan-out of one 64B signal to ${timing.fanoutClients} clients`,
    params: { payloadSize: 64, clients: timing.fanoutClients },
    stacks: STACKS,
  });
  out.push({
    id: 'signals-64B',
    kind: 'signals',
    title: 'client-to-server signals, 64B, windows of 500',
    params: { payloadSize: 64, window: 500 },
    stacks: STACKS,
  });
  out.push({
    id: 'memory-idle',
    kind: 'memory',
    title: `server memory per idle connection, ${timing.memoryConnections} connections, after GC`,
    params: { clients: timing.memoryConnections },
    stacks: STACKS,
  });
  for (const payloadSize of [64, 16 * KiB]) {
    out.push({
      id: `codec-${sizeLabel(payloadSize)}`,
      kind: 'codec',
      title: `codec, request with a ${sizeLabel(payloadSize)} payload`,
      params: { payloadSize },
      stacks: ['duplexwire'],
    });
  }
  return out;
}

export function cases(timing: Timing, only?: RegExp): Case[] {
  const out: Case[] = [];
  for (const group of groups(timing)) {
    for (const stack of group.stacks) {
      const id = `${group.id}/${stack}`;
      if (only === undefined || only.test(id)) out.push({ id, group, stack });
    }
  }
  return out;
}
