/**
 * Keeps every CPU awake for the 1-in-flight "awake" cases. With one request in flight both
 * processes sleep between messages, and on this 2-core VM an idle core takes long enough to wake
 * that every stack measures the same ~10k round trips/s: the figure is the wake-up latency, not
 * the stack. A busy loop at nice 19 on each core keeps the cores out of idle; the server and the
 * load generator (nice 0) preempt it as soon as they have work, so it costs them little.
 *
 * The loop spins in 50 ms slices with a turn of the event loop between them, so it notices its
 * parent leaving (IPC disconnect) and exits on its own.
 */
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { track } from './child.ts';

const SPIN = `
require('node:os').setPriority(19);
process.on('disconnect', () => process.exit(0));
(function spin() {
  const end = Date.now() + 50;
  while (Date.now() < end);
  setImmediate(spin);
})();
`;

/** Starts one busy loop per core; the returned function stops them and waits for them to exit. */
export async function startBusyLoops(count = availableParallelism()): Promise<() => Promise<void>> {
  const children = Array.from({ length: count }, () => {
    const child = spawn(process.execPath, ['-e', SPIN], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    track(child);
    return child;
  });
  // Give the loops a moment to start spinning at their low priority.
  await new Promise((resolve) => setTimeout(resolve, 100));
  return async () => {
    await Promise.all(
      children.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) {
              resolve();
              return;
            }
            child.once('exit', () => resolve());
            child.kill('SIGKILL');
          }),
      ),
    );
  };
}
