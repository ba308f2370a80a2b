/**
 * The child side of the orchestrator's IPC protocol: every bench process (server kind, load
 * generator, codec run) answers `{ seq, op, ...args }` with `{ seq, ok, result | error }` and
 * announces itself once with `{ ready, info }`. A child whose parent is gone exits at once, so an
 * orchestrator that dies leaves nothing running.
 */

export type OpHandler = (args: Readonly<Record<string, unknown>>) => unknown;

interface Request {
  readonly seq: number;
  readonly op: string;
  readonly [key: string]: unknown;
}

/**
 * Answers the orchestrator's requests with `handlers`. `exit` is built in: it runs `onExit` (bounded
 * by the orchestrator's own deadline), replies, then exits the process.
 */
export function answer(handlers: Readonly<Record<string, OpHandler>>, onExit?: () => Promise<void> | void): void {
  const table = new Map(Object.entries(handlers));
  process.on('disconnect', () => process.exit(0));
  process.on('message', (raw) => {
    const request = raw as Request;
    if (request.op === 'exit') {
      Promise.resolve()
        .then(onExit)
        .catch(() => {})
        .finally(() => {
          process.send?.({ seq: request.seq, ok: true, result: null }, () => process.exit(0));
        });
      return;
    }
    const handler = table.get(request.op);
    Promise.resolve()
      .then(() => {
        if (handler === undefined) throw new Error(`unknown op ${request.op}`);
        return handler(request);
      })
      .then(
        (result) => process.send?.({ seq: request.seq, ok: true, result: result ?? null }),
        (error: unknown) =>
          process.send?.({
            seq: request.seq,
            ok: false,
            error: error instanceof Error ? (error.stack ?? error.message) : String(error),
          }),
      );
  });
}

/** Tells the orchestrator this process is ready, with what it needs to know (e.g. the port). */
export function ready(info: Readonly<Record<string, unknown>> = {}): void {
  process.send?.({ ready: true, info });
}

/** Reports a failure during start-up and exits. */
export function fail(error: unknown): never {
  process.send?.({ ready: false, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
  process.exit(1);
}
