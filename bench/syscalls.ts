/**
 * Read and write system calls made so far by this process (Linux `/proc/self/io`), or null where
 * that file does not exist. On loopback a write costs more than the JavaScript around it, so how
 * many messages each write carries explains much of a stack's CPU time per message.
 */
import { readFileSync } from 'node:fs';

export interface Syscalls {
  readonly reads: number;
  readonly writes: number;
}

export function syscalls(): Syscalls | null {
  let text: string;
  try {
    text = readFileSync('/proc/self/io', 'latin1');
  } catch {
    return null;
  }
  const reads = /^syscr:\s*(\d+)/m.exec(text);
  const writes = /^syscw:\s*(\d+)/m.exec(text);
  if (reads === null || writes === null) return null;
  return { reads: Number(reads[1]), writes: Number(writes[1]) };
}
