/** Shared helpers for the transport tests: an event recorder and a bounded wait. */

import type { SocketHandlers } from '../../transports/types.ts';

export interface Received {
  readonly data: Uint8Array;
  readonly binary: boolean;
}

/** SocketHandlers that record every callback, in order. */
export interface Recorder extends SocketHandlers {
  readonly messages: Received[];
  readonly closes: Array<{ code: number; reason: string }>;
  /** Every callback by name, to check ordering across kinds. */
  readonly events: string[];
  pings: number;
  drains: number;
}

export function recorder(hooks: Partial<SocketHandlers> = {}): Recorder {
  const rec: Recorder = {
    messages: [],
    closes: [],
    events: [],
    pings: 0,
    drains: 0,
    onMessage(data, binary) {
      rec.messages.push({ data, binary });
      rec.events.push(binary ? 'message' : 'text');
      hooks.onMessage?.(data, binary);
    },
    onDrain() {
      rec.drains++;
      rec.events.push('drain');
      hooks.onDrain?.();
    },
    onPing() {
      rec.pings++;
      rec.events.push('ping');
      hooks.onPing?.();
    },
    onClose(code, reason) {
      rec.closes.push({ code, reason });
      rec.events.push('close');
      hooks.onClose?.(code, reason);
    },
  };
  return rec;
}

/** Resolves once `predicate` holds; rejects after `timeoutMs` with `label`. Polls every few ms. */
export async function until(predicate: () => boolean, label: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}`);
    await delay(2);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);
export const bytes = (...values: number[]): Uint8Array => Uint8Array.from(values);
