/**
 * Codec throughput: `encodeRequest` and `decode` of one request with a small and a 16 KiB payload,
 * in messages per second, in a process of its own. Pure functions over Uint8Array, so this is the
 * floor of what the protocol costs per message, before any socket.
 */
import { binary, decode, encodeRequest } from 'duplexwire/protocol';
import { answer, ready } from './ipc.ts';

/** Calls `op` in batches until `ms` elapsed; returns calls per second. */
function rate(ms: number, op: (i: number) => number): { perSec: number; sink: number } {
  let calls = 0;
  let sink = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 1_000; i++) sink += op(calls + i);
    calls += 1_000;
    now = performance.now();
  }
  return { perSec: calls / ((now - start) / 1_000), sink };
}

export function measureCodec(payloadSize: number, ms: number): { encodePerSec: number; decodePerSec: number } {
  const payload = binary(new Uint8Array(payloadSize).fill(7));
  const encodeOnce = (i: number): number => encodeRequest(i, 'echo', payload).length;
  const bytes = encodeRequest(1, 'echo', payload);
  const decodeOnce = (): number => (decode(bytes).kind === 'request' ? 1 : 0);
  rate(ms, encodeOnce);
  const encoded = rate(ms, encodeOnce);
  rate(ms, decodeOnce);
  const decoded = rate(ms, decodeOnce);
  // The sinks keep the calls from being optimised away.
  if (encoded.sink < 0 || decoded.sink < 0) throw new Error('unreachable');
  return { encodePerSec: encoded.perSec, decodePerSec: decoded.perSec };
}

answer({ run: (args) => measureCodec(Number(args.payloadSize), Number(args.ms)) });
ready();
