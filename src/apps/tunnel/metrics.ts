/**
 * Prometheus metrics of a proxy, on its own prom-client Registry (never the global one, so two
 * proxies in one process, or the application's own metrics, do not collide).
 *
 * The `client_id` label only takes ids the proxy knows (in the token store, or that had an agent
 * connected), at most MAX_LABELLED_IDS of them: ids users type in headers would otherwise grow
 * the series without bound.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

const MAX_LABELLED_IDS = 1000;
/** The label value of requests whose id is unknown or over the cap. */
export const OTHER_ID = '_other';

/** The series of one label value, looked up once: prom-client hashes the labels on every call. */
interface Series {
  readonly stats: IdStats;
  readonly inflight: { inc(): void; dec(): void };
  readonly duration: { observe(value: number): void };
  readonly bytesIn: { inc(value: number): void };
  readonly bytesOut: { inc(value: number): void };
  readonly requests: Map<string, { inc(): void }>;
}

/** Live counters of one id, for the status page. */
export interface IdStats {
  requests: number;
  inflight: number;
  bytesIn: number;
  bytesOut: number;
  readonly statusClasses: Map<string, number>;
}

export class TunnelMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'client_id' | 'status_class'>;
  private readonly duration: Histogram<'client_id'>;
  private readonly inflight: Gauge<'client_id'>;
  private readonly bytes: Counter<'client_id' | 'direction'>;
  private readonly labelled = new Set<string>();
  private readonly series = new Map<string, Series>();
  /** Per labelled id (plus OTHER_ID), for the status page. */
  readonly stats = new Map<string, IdStats>();

  constructor(agentsConnected: () => Map<string, number>, options: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'duplexwire_tunnel_requests_total',
      help: 'HTTP requests answered by the proxy, by client id and status class (2xx, 4xx, ...)',
      labelNames: ['client_id', 'status_class'],
      registers,
    });
    this.duration = new Histogram({
      name: 'duplexwire_tunnel_request_duration_seconds',
      help: 'Time from the request until its response head was sent to the user',
      labelNames: ['client_id'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.inflight = new Gauge({
      name: 'duplexwire_tunnel_requests_in_flight',
      help: 'HTTP requests being served',
      labelNames: ['client_id'],
      registers,
    });
    this.bytes = new Counter({
      name: 'duplexwire_tunnel_bytes_total',
      help: 'Body bytes through the tunnel: in = request bodies from users, out = response bodies to users',
      labelNames: ['client_id', 'direction'],
      registers,
    });
    new Gauge({
      name: 'duplexwire_tunnel_agents_connected',
      help: 'Agents connected, by client id',
      labelNames: ['client_id'],
      registers,
      collect() {
        this.reset();
        for (const [id, n] of agentsConnected()) this.set({ client_id: id }, n);
      },
    });
    if (options.defaultMetrics ?? true)
      collectDefaultMetrics({ register: this.registry, prefix: 'duplexwire_tunnel_' });
  }

  /** Makes `id` a label value of its own (known ids: token store, connected agents). */
  know(id: string): void {
    if (this.labelled.size < MAX_LABELLED_IDS) this.labelled.add(id);
  }

  label(id: string | undefined): string {
    return id !== undefined && this.labelled.has(id) ? id : OTHER_ID;
  }

  private seriesOf(label: string): Series {
    let series = this.series.get(label);
    if (series === undefined) {
      const stats: IdStats = { requests: 0, inflight: 0, bytesIn: 0, bytesOut: 0, statusClasses: new Map() };
      this.stats.set(label, stats);
      series = {
        stats,
        inflight: this.inflight.labels({ client_id: label }),
        duration: this.duration.labels({ client_id: label }),
        bytesIn: this.bytes.labels({ client_id: label, direction: 'in' }),
        bytesOut: this.bytes.labels({ client_id: label, direction: 'out' }),
        requests: new Map(),
      };
      this.series.set(label, series);
    }
    return series;
  }

  started(label: string): void {
    const series = this.seriesOf(label);
    series.inflight.inc();
    series.stats.inflight++;
  }

  finished(label: string): void {
    const series = this.seriesOf(label);
    series.inflight.dec();
    series.stats.inflight--;
  }

  /** A response head went out (or an error answer). */
  answered(label: string, status: number, seconds: number): void {
    const series = this.seriesOf(label);
    const statusClass = `${Math.floor(status / 100)}xx`;
    let counter = series.requests.get(statusClass);
    if (counter === undefined) {
      counter = this.requests.labels({ client_id: label, status_class: statusClass });
      series.requests.set(statusClass, counter);
    }
    counter.inc();
    series.duration.observe(seconds);
    const stats = series.stats;
    stats.requests++;
    stats.statusClasses.set(statusClass, (stats.statusClasses.get(statusClass) ?? 0) + 1);
  }

  bytesIn(label: string, n: number): void {
    const series = this.seriesOf(label);
    series.bytesIn.inc(n);
    series.stats.bytesIn += n;
  }

  bytesOut(label: string, n: number): void {
    const series = this.seriesOf(label);
    series.bytesOut.inc(n);
    series.stats.bytesOut += n;
  }
}
