/**
 * What the two wire fuzzes share (`wire-fuzz.test.ts`: hostile clients against a Server;
 * `client-fuzz.test.ts`: a hostile server against a Client): the FUZZ_* settings, message bytes
 * laid out by hand, payload generators biased towards the protocol's edges (invalid UTF-8, UTF-16
 * surrogate halves), byte-level mutations, fragment cuts, a histogram for the run summary, and
 * the run of the property itself (`checkFuzz`, shared with `upgrade-fuzz.ts`).
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import fc from 'fast-check';

/** A non-negative integer from the environment (FUZZ_RUNS, FUZZ_SEED), or undefined when unset. */
export function envInteger(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer, got ${text}`);
  return value;
}

/* ------------------------------------------------------------------------------------------- */
/* Bytes                                                                                       */
/* ------------------------------------------------------------------------------------------- */

export function concat(...parts: Array<number | Uint8Array | readonly number[]>): Uint8Array {
  const chunks: number[] = [];
  for (const part of parts) {
    if (typeof part === 'number') chunks.push(part & 0xff);
    else chunks.push(...part);
  }
  return Uint8Array.from(chunks);
}

export function latin1(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
}

export function idBytes(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, value, true);
  return out;
}

/** A request (127/128/129) laid out by hand: any name bytes, pad for UTF-16 with an odd name. */
export function requestBytes(type: number, id: Uint8Array, name: Uint8Array, payload: Uint8Array): Uint8Array {
  const pad = type === 129 && (name.length & 1) === 1 ? [0] : [];
  return concat(type, id, name.length, name, pad, payload);
}

export function signalBytes(type: number, name: Uint8Array, payload: Uint8Array): Uint8Array {
  const pad = type === 65 && (name.length & 1) === 1 ? [0] : [];
  return concat(type, name.length, name, pad, payload);
}

/* ------------------------------------------------------------------------------------------- */
/* Payloads                                                                                    */
/* ------------------------------------------------------------------------------------------- */

export const INVALID_UTF8: readonly Uint8Array[] = [
  Uint8Array.of(0xff),
  Uint8Array.of(0xc0, 0x80),
  Uint8Array.of(0x80),
  Uint8Array.of(0xe2, 0x82),
  Uint8Array.of(0xed, 0xa0, 0x80),
  Uint8Array.of(0xf4, 0x90, 0x80, 0x80),
  Uint8Array.of(0x61, 0xfe, 0x62),
];
const encoder = new TextEncoder();
export const validTextArb = fc.string({ unit: 'grapheme', maxLength: 12 }).map((s) => encoder.encode(s));
export const invalidUtf8Arb = fc
  .tuple(validTextArb, fc.constantFrom(...INVALID_UTF8), validTextArb)
  .map(([a, bad, b]) => concat(a, bad, b));

export const payloadArb = fc.oneof(
  { weight: 3, arbitrary: fc.uint8Array({ maxLength: 24 }) },
  { weight: 2, arbitrary: validTextArb },
  { weight: 2, arbitrary: invalidUtf8Arb },
  { weight: 1, arbitrary: fc.constant(new Uint8Array(0)) },
  { weight: 1, arbitrary: fc.constant(Uint8Array.of(0xef, 0xbb, 0xbf, 0x61)) },
);
/** UTF-16LE payloads: even length, surrogate halves included. */
export const utf16PayloadArb = fc
  .array(fc.constantFrom(0x0041, 0x00e9, 0xd83d, 0xde00, 0xfeff, 0x0000, 0xffff), { maxLength: 8 })
  .map((units) => {
    const out = new Uint8Array(units.length * 2);
    units.forEach((u, i) => {
      out[i * 2] = u & 0xff;
      out[i * 2 + 1] = u >> 8;
    });
    return out;
  });

/* ------------------------------------------------------------------------------------------- */
/* Mutations                                                                                   */
/* ------------------------------------------------------------------------------------------- */

/** Type bytes worth hitting: every valid one and the edges of the invalid ranges. */
export const TYPE_BYTES: readonly number[] = [
  0, 1, 2, 3, 4, 5, 21, 22, 23, 31, 32, 33, 34, 35, 63, 64, 65, 127, 128, 129, 191, 192, 193,
  // invalid: the v1 error reply, gaps, reserved 36..62, just past each range, the top
  6, 20, 24, 30, 36, 48, 62, 66, 126, 130, 190, 194, 255,
];

export type Mutation =
  | { readonly m: 'truncate'; readonly at: number }
  | { readonly m: 'type'; readonly type: number }
  | { readonly m: 'lie'; readonly at: 1 | 9; readonly value: number }
  | { readonly m: 'append'; readonly byte: number }
  | { readonly m: 'drop-last' }
  | { readonly m: 'flip'; readonly at: number; readonly bit: number };

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.nat(40).map((at) => ({ m: 'truncate' as const, at })),
  fc.constantFrom(...TYPE_BYTES).map((type) => ({ m: 'type' as const, type })),
  fc
    .tuple(fc.constantFrom(1 as const, 9 as const), fc.constantFrom(0, 1, 2, 3, 8, 9, 40, 254, 255))
    .map(([at, value]) => ({ m: 'lie' as const, at, value })),
  fc.nat(255).map((byte) => ({ m: 'append' as const, byte })),
  fc.constant({ m: 'drop-last' as const }),
  fc.tuple(fc.nat(40), fc.nat(7)).map(([at, bit]) => ({ m: 'flip' as const, at, bit })),
);

export function mutate(bytes: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let out: Uint8Array = bytes.slice();
  for (const mutation of mutations) {
    switch (mutation.m) {
      case 'truncate':
        out = out.slice(0, Math.min(mutation.at, out.length));
        break;
      case 'type':
        if (out.length > 0) out[0] = mutation.type;
        break;
      case 'lie': // a name length (offset 1 of a signal, 9 of a request) that says anything
        if (out.length > mutation.at) out[mutation.at] = mutation.value;
        break;
      case 'append':
        out = concat(out, mutation.byte);
        break;
      case 'drop-last':
        out = out.slice(0, Math.max(0, out.length - 1));
        break;
      case 'flip':
        if (out.length > 0) out[mutation.at % out.length]! ^= 1 << mutation.bit;
        break;
    }
  }
  return out;
}

/** `fragments` cut points over `length` bytes (fragments may be empty). */
export function fragmentBounds(length: number, fragments: number): number[] {
  const bounds = [0];
  for (let i = 1; i < fragments; i++) bounds.push(Math.floor((length * i) / fragments));
  bounds.push(length);
  return bounds;
}

/** Counts per key, printed sorted in the one-line summary of a fuzz run. */
export class Histogram {
  readonly counts = new Map<string, number>();
  add(key: string | number, n = 1): void {
    this.counts.set(String(key), (this.counts.get(String(key)) ?? 0) + n);
  }
  get(key: string | number): number {
    return this.counts.get(String(key)) ?? 0;
  }
  toJSON(): Record<string, number> {
    return Object.fromEntries([...this.counts].sort(([a], [b]) => a.localeCompare(b)));
  }
}

/** How a fuzz runs its property: `FUZZ_RUNS`/`FUZZ_SEED`/`FUZZ_PATH` and a time limit. */
export interface FuzzRun<T> {
  readonly runs: number;
  readonly seed: number;
  /** Replays one counterexample (with `seed`). */
  readonly path: string | undefined;
  /** Past this the property counts as failed: a scenario that hangs. */
  readonly timeLimit: number;
  /** Put before the failure's first line (the transport, say); '' for none. */
  readonly label: string;
  /** A failing scenario as text, after `scenario:`. */
  readonly describe: (scenario: T) => string;
}

/**
 * Runs `property` over `arb` as fast-check does, and on failure fails with what replays it: the
 * seed and path, the error with its stack, and the shrunk scenario.
 */
export async function checkFuzz<T>(
  arb: fc.Arbitrary<T>,
  property: (scenario: T) => Promise<void>,
  run: FuzzRun<T>,
): Promise<void> {
  const details = await fc.check(fc.asyncProperty(arb, property), {
    numRuns: run.runs,
    seed: run.seed,
    ...(run.path === undefined ? {} : { path: run.path }),
    interruptAfterTimeLimit: run.timeLimit,
    markInterruptAsFailure: true,
  });
  if (!details.failed) return;
  const error = details.errorInstance;
  const scenario = details.counterexample?.[0];
  const label = run.label === '' ? '' : `${run.label}: `;
  assert.fail(
    [
      `${label}${details.interrupted ? `interrupted after ${run.timeLimit} ms (a hang?)` : 'property failed'} after ${details.numRuns} runs and ${details.numShrinks} shrinks`,
      `replay: FUZZ_SEED=${details.seed} FUZZ_PATH=${details.counterexamplePath ?? ''}`,
      `error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
      scenario === undefined ? '' : `scenario:\n${run.describe(scenario)}`,
    ].join('\n'),
  );
}

/**
 * What escapes while a test runs: uncaught exceptions, unhandled rejections and process warnings
 * (a listener leak, say), collected until the test ends, for it to assert there are none.
 */
export function watchFaults(t: TestContext): unknown[] {
  const faults: unknown[] = [];
  const onFault = (error: unknown): void => {
    faults.push(error);
  };
  process.on('uncaughtException', onFault);
  process.on('unhandledRejection', onFault);
  process.on('warning', onFault);
  t.after(() => {
    process.off('uncaughtException', onFault);
    process.off('unhandledRejection', onFault);
    process.off('warning', onFault);
  });
  return faults;
}
