import type { ServerTransportHandlers, ServerTransportStartOptions } from './types.ts';

/**
 * The start/stop state machine every server adapter shares: `start` while started returns the
 * same promise, `start` while stopping waits for the stop and starts again, `stop` while starting
 * stops what is being started, `stop` twice returns the same promise.
 */
export interface ServerLifecycle<Run> {
  start(handlers: ServerTransportHandlers, options: ServerTransportStartOptions): Promise<void>;
  stop(): Promise<void>;
  /** The run being started or running, if any. */
  current(): Run | undefined;
}

type State<Run> =
  | { kind: 'idle' }
  | { kind: 'starting' | 'started'; run: Run; ready: Promise<void> }
  | { kind: 'stopping'; done: Promise<void> };

export function serverLifecycle<Run>(
  startRun: (
    handlers: ServerTransportHandlers,
    options: ServerTransportStartOptions,
  ) => { run: Run; ready: Promise<void> },
  stopRun: (run: Run, ready: Promise<void>) => Promise<void>,
): ServerLifecycle<Run> {
  let state: State<Run> = { kind: 'idle' };
  const lifecycle: ServerLifecycle<Run> = {
    start(handlers, options) {
      if (state.kind === 'starting' || state.kind === 'started') return state.ready;
      if (state.kind === 'stopping') return state.done.then(() => lifecycle.start(handlers, options));
      let started: { run: Run; ready: Promise<void> };
      try {
        started = startRun(handlers, options);
      } catch (err) {
        return Promise.reject(err);
      }
      const current: State<Run> = { kind: 'starting', ...started };
      state = current;
      // Registered before the caller's handlers, so the state is settled when they run.
      started.ready.then(
        () => {
          if (state === current) state = { kind: 'started', ...started };
        },
        () => {
          if (state === current) state = { kind: 'idle' };
        },
      );
      return started.ready;
    },
    stop() {
      if (state.kind === 'idle') return Promise.resolve();
      if (state.kind === 'stopping') return state.done;
      const done = stopRun(state.run, state.ready).finally(() => {
        if (state.kind === 'stopping' && state.done === done) state = { kind: 'idle' };
      });
      state = { kind: 'stopping', done };
      return done;
    },
    current() {
      return state.kind === 'starting' || state.kind === 'started' ? state.run : undefined;
    },
  };
  return lifecycle;
}
