/**
 * Health checks of an agent's target: a GET of one path every `interval`, as frp's health-checked
 * load-balancing groups and Docker's HEALTHCHECK do. The target turns unhealthy after `failures`
 * checks in a row fail (no 2xx answer within `timeout`, or no answer at all) and healthy again at
 * the first that passes. The agent tells the proxy each turn, and the proxy prefers its healthy
 * agents of an id (see `Balancer.pick`).
 */
import type { Dispatcher } from 'undici';
import { InvalidArgumentError, type Logger } from '../../index.ts';
import { durationOption } from './timeout.ts';

/** The `healthCheck` option of a `TunnelAgent`. */
export interface HealthCheckOptions {
  /** The path checked on the target (below the target URL's own path): `/healthz`. */
  readonly path: string;
  /** Time between two checks, ms or '10s'. @default 10 s */
  readonly interval?: number | string;
  /** How long one check may take, ms or '2s'. @default 2 s */
  readonly timeout?: number | string;
  /** Checks failing in a row that make the target unhealthy. @default 3 */
  readonly failures?: number;
}

export const DEFAULT_HEALTH_INTERVAL = 10_000;
export const DEFAULT_HEALTH_TIMEOUT = 2_000;
export const DEFAULT_HEALTH_FAILURES = 3;

export interface ResolvedHealthCheck {
  readonly path: string;
  readonly interval: number;
  readonly timeout: number;
  readonly failures: number;
}

/** Validates the `healthCheck` option. */
export function resolveHealthCheck(options: HealthCheckOptions): ResolvedHealthCheck {
  if (options === null || typeof options !== 'object')
    throw new InvalidArgumentError('option healthCheck must be an object');
  const { path } = options;
  // An origin-form path: what the agent sends to its target for any request.
  if (typeof path !== 'string' || !/^\/[\x21-\x7e]*$/.test(path))
    throw new InvalidArgumentError('option healthCheck.path must be a path such as /healthz');
  const interval = durationOption('healthCheck.interval', options.interval, DEFAULT_HEALTH_INTERVAL);
  if (!(interval >= 10 && interval <= 3_600_000))
    throw new InvalidArgumentError('option healthCheck.interval must be 10 ms..1 h');
  const timeout = durationOption('healthCheck.timeout', options.timeout, DEFAULT_HEALTH_TIMEOUT);
  if (!(timeout >= 1 && timeout <= interval))
    throw new InvalidArgumentError('option healthCheck.timeout must be 1 ms..interval');
  const failures = options.failures ?? DEFAULT_HEALTH_FAILURES;
  if (!Number.isInteger(failures) || failures < 1 || failures > 100)
    throw new InvalidArgumentError('option healthCheck.failures must be an integer 1..100');
  return { path, interval, timeout, failures };
}

/** Checks one target; reports each turn between healthy and unhealthy. */
export class TargetHealth {
  private readonly check: ResolvedHealthCheck;
  private readonly dispatcher: Dispatcher;
  /** The path as sent: the target URL's path, then the checked one. */
  private readonly requestPath: string;
  private readonly onChange: (healthy: boolean) => void;
  private readonly logger: Logger;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private running: AbortController | undefined;
  private failedInRow = 0;
  private stopped = true;
  /** Bumped by each start(): a check still in flight from before a stop() then ends its loop. */
  private generation = 0;
  /** Until the checks say otherwise, the target is taken as healthy. */
  healthy = true;

  constructor(
    check: ResolvedHealthCheck,
    target: { readonly dispatcher: Dispatcher; readonly basePath: string },
    onChange: (healthy: boolean) => void,
    logger: Logger,
  ) {
    this.check = check;
    this.dispatcher = target.dispatcher;
    this.requestPath = `${target.basePath}${check.path}`;
    this.onChange = onChange;
    this.logger = logger;
  }

  /** Checks now, then every interval. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.run(++this.generation);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.running?.abort();
  }

  private async run(generation: number): Promise<void> {
    const failure = await this.probe();
    // Stopped, or stopped and started again while this check was in flight: its (aborted)
    // result is not a failure of the target, and the new start runs its own loop.
    if (this.stopped || generation !== this.generation) return;
    if (failure === undefined) {
      this.failedInRow = 0;
      if (!this.healthy) {
        this.healthy = true;
        this.logger.info('target healthy again', { path: this.check.path });
        this.onChange(true);
      }
    } else {
      this.failedInRow++;
      if (this.healthy && this.failedInRow >= this.check.failures) {
        this.healthy = false;
        this.logger.warn('target unhealthy', { path: this.check.path, failures: this.failedInRow, reason: failure });
        this.onChange(false);
      }
    }
    this.timer = setTimeout(() => void this.run(generation), this.check.interval);
    this.timer.unref?.();
  }

  /** One check: undefined when it passed, else why it failed. */
  private async probe(): Promise<string | undefined> {
    const controller = new AbortController();
    this.running = controller;
    const timer = setTimeout(() => controller.abort(), this.check.timeout);
    try {
      const { statusCode, body } = await this.dispatcher.request({
        method: 'GET',
        path: this.requestPath,
        headers: { 'user-agent': 'duplexwire-tunnel-health' },
        signal: controller.signal,
      });
      // The body is not needed, but must be read for the connection to be used again.
      await body.dump({ limit: 64 * 1024 });
      return statusCode >= 200 && statusCode < 300 ? undefined : `status ${statusCode}`;
    } catch (error) {
      if (controller.signal.aborted) return `no answer within ${this.check.timeout} ms`;
      return (error as Error).message;
    } finally {
      clearTimeout(timer);
      // Not a newer check's controller: stop() must still be able to abort that one.
      if (this.running === controller) this.running = undefined;
    }
  }
}
