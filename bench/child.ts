/**
 * The orchestrator's side of its child processes: fork with IPC, ask and wait for answers (each
 * with a deadline), stop with a grace period then SIGKILL. Every child ever started is also killed
 * when the orchestrator exits for any reason, so a failing case never leaves a server, a load
 * generator or a busy loop behind.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const live = new Set<ChildProcess>();
let exitHooked = false;

/** Kills every child still running (SIGKILL). Synchronous: safe in a process 'exit' handler. */
export function killAll(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  live.clear();
}

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      killAll();
      process.exit(130);
    });
  }
}

/** Registers a child started elsewhere (busy loops) for the kill-on-exit guarantee. */
export function track(child: ChildProcess): void {
  hookExit();
  live.add(child);
  child.once('exit', () => live.delete(child));
}

export interface ChildOptions {
  /** Shown in error messages. */
  readonly label: string;
  /** Extra Node flags (e.g. `--cpu-prof`); `--import tsx` and `--expose-gc` are always given. */
  readonly nodeFlags?: readonly string[];
  /** Deadline for the child's `ready` message. @default 20 s */
  readonly readyTimeout?: number;
}

interface Waiter {
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: ReturnType<typeof setTimeout>;
}

/** A bench child process speaking the protocol of `ipc.ts`. */
export class Child {
  readonly label: string;
  readonly process: ChildProcess;
  /** Resolves with the child's `ready` info; rejects if it fails or exits first. */
  readonly ready: Promise<Readonly<Record<string, unknown>>>;
  readonly exited: Promise<void>;
  #seq = 0;
  readonly #waiting = new Map<number, Waiter>();
  #exitInfo: string | undefined;
  #stderr = '';

  constructor(script: URL, args: readonly string[], options: ChildOptions) {
    hookExit();
    this.label = options.label;
    this.process = fork(fileURLToPath(script), [...args], {
      execArgv: ['--import', 'tsx', '--expose-gc', ...(options.nodeFlags ?? [])],
      stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
      serialization: 'json',
    });
    live.add(this.process);
    // Keep the end of stderr for error messages, and show it as it comes.
    this.process.stderr?.on('data', (chunk: Buffer) => {
      process.stderr.write(chunk);
      this.#stderr = (this.#stderr + chunk.toString()).slice(-2000);
    });
    this.exited = new Promise((resolve) => {
      this.process.once('exit', (code, signal) => {
        live.delete(this.process);
        this.#exitInfo = signal === null ? `exit code ${code}` : `signal ${signal}`;
        for (const [seq, waiter] of this.#waiting) {
          clearTimeout(waiter.timer);
          this.#waiting.delete(seq);
          waiter.reject(this.#error(`exited (${this.#exitInfo}) before answering`));
        }
        resolve();
      });
    });
    const readyTimeout = options.readyTimeout ?? 20_000;
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(this.#error(`not ready within ${readyTimeout} ms`)), readyTimeout);
      this.process.on('message', (raw) => {
        const message = raw as {
          ready?: boolean;
          info?: Record<string, unknown>;
          error?: string;
          seq?: number;
          ok?: boolean;
          result?: unknown;
        };
        if (message.ready !== undefined) {
          clearTimeout(timer);
          if (message.ready) resolve(message.info ?? {});
          else reject(this.#error(`failed to start: ${message.error ?? ''}`));
          return;
        }
        const waiter = message.seq === undefined ? undefined : this.#waiting.get(message.seq);
        if (waiter === undefined) return;
        this.#waiting.delete(message.seq!);
        clearTimeout(waiter.timer);
        if (message.ok) waiter.resolve(message.result);
        else waiter.reject(this.#error(message.error ?? 'failed'));
      });
      this.exited.then(() => {
        clearTimeout(timer);
        reject(this.#error(`exited (${this.#exitInfo}) before it was ready`));
      });
    });
    // A rejection nobody awaited (the case failed elsewhere first) must not crash the run.
    this.ready.catch(() => {});
  }

  #error(message: string): Error {
    const tail = this.#stderr.trim();
    return new Error(`${this.label}: ${message}${tail === '' ? '' : `\n--- stderr ---\n${tail}`}`);
  }

  /** Sends `op` and waits for its answer, at most `timeout` ms. */
  call<T = unknown>(op: string, args: Readonly<Record<string, unknown>> = {}, timeout = 30_000): Promise<T> {
    if (this.#exitInfo !== undefined || !this.process.connected) {
      return Promise.reject(this.#error(`cannot ${op}: the process is gone`));
    }
    const seq = ++this.#seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(seq);
        reject(this.#error(`no answer to ${op} within ${timeout} ms`));
      }, timeout);
      this.#waiting.set(seq, { resolve: resolve as (value: unknown) => void, reject, timer });
      this.process.send({ seq, op, ...args });
    });
  }

  /** Asks the child to exit; kills it if it has not within `grace` ms. Never throws. */
  async stop(grace = 3_000): Promise<void> {
    if (this.#exitInfo !== undefined) return;
    this.call('exit', {}, grace).catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.process.kill('SIGKILL');
        resolve();
      }, grace);
    });
    await Promise.race([this.exited, killed]);
    clearTimeout(timer);
    await this.exited;
  }
}
