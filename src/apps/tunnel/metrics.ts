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
/** The label of each status class, made once rather than per request. */
const STATUS_CLASSES: readonly string[] = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx', '6xx', '7xx', '8xx', '9xx'];
/** The label value of requests whose id is unknown or over the cap. */
export const OTHER_ID = '_other';

/**
 * What a request updates: the live counters of its label value (read by the status page, and by
 * the counters and gauges below when scraped) and the histogram's series, looked up once.
 */
interface Series {
  readonly stats: IdStats;
  readonly duration: { observe(value: number): void };
}

/** Live counters of one id, for the status page. */
export interface IdStats {
  requests: number;
  inflight: number;
  bytesIn: number;
  bytesOut: number;
  /** Answers to users' requests, by status class (forwarded to a peer proxy or not). */
  readonly statusClasses: Map<string, number>;
  /** Answers to requests a peer proxy forwarded here (its user's request, counted there too). */
  readonly peerStatusClasses: Map<string, number>;
}

/** Why an agent's upgrade was refused (the label values of `duplexwire_tunnel_agents_refused_total`). */
export type AgentRefusal = 'credentials' | 'version';
/** Counters of a proxy in a cluster (see the `cluster` option). */
export interface ClusterStats {
  /** User requests this proxy sent to a peer proxy (forwarded out). */
  forwardedOut: number;
  /** Cluster requests this proxy took from peers (forwarded in). */
  forwardedIn: number;
  /** Attempts to reach a peer that failed before its answer (unreachable, lost). */
  peerFailures: number;
  /** Failed Redis commands of the registry. */
  registryErrors: number;
  /** Requests with a cluster header that failed authentication (served as ordinary requests). */
  refused: number;
}

function countById(agents: ReadonlyArray<{ readonly id: string }>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const { id } of agents) counts.set(id, (counts.get(id) ?? 0) + 1);
  return counts;
}

export class TunnelMetrics {
  readonly registry = new Registry();
  private readonly duration: Histogram<'client_id'>;
  private readonly refused: Counter<'reason'>;
  private readonly labelled = new Set<string>();
  private readonly series = new Map<string, Series>();
  /** Per labelled id (plus OTHER_ID), for the status page. */
  readonly stats = new Map<string, IdStats>();
  /** Cluster counters; registered as metrics only with `cluster: true`. */
  readonly cluster: ClusterStats = { forwardedOut: 0, forwardedIn: 0, peerFailures: 0, registryErrors: 0, refused: 0 };

  constructor(
    agents: () => ReadonlyArray<{ readonly id: string; readonly healthy: boolean }>,
    options: { defaultMetrics?: boolean; cluster?: boolean } = {},
  ) {
    const registers = [this.registry];
    // Counters and gauges are read from `stats` when scraped: a request only adds to plain
    // numbers (prom-client hashes the labels on every update, a few µs per request in all).
    const stats = this.stats;
    new Counter({
      name: 'duplexwire_tunnel_requests_total',
      help:
        'HTTP requests answered by the proxy, by client id, status class (2xx, 4xx, ...) and source ' +
        '(user, or peer: forwarded by another proxy of the cluster, which counts it as a user request)',
      labelNames: ['client_id', 'status_class', 'source'],
      registers,
      collect() {
        this.reset();
        for (const [id, s] of stats) {
          for (const [status_class, n] of s.statusClasses) this.inc({ client_id: id, status_class, source: 'user' }, n);
          for (const [status_class, n] of s.peerStatusClasses)
            this.inc({ client_id: id, status_class, source: 'peer' }, n);
        }
      },
    });
    this.duration = new Histogram({
      name: 'duplexwire_tunnel_request_duration_seconds',
      help: 'Time from the request until its response head was sent to the user',
      labelNames: ['client_id'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    new Gauge({
      name: 'duplexwire_tunnel_requests_in_flight',
      help: 'HTTP requests being served',
      labelNames: ['client_id'],
      registers,
      collect() {
        this.reset();
        for (const [id, s] of stats) this.set({ client_id: id }, s.inflight);
      },
    });
    new Counter({
      name: 'duplexwire_tunnel_bytes_total',
      help: 'Body bytes through the tunnel: in = request bodies from users, out = response bodies to users',
      labelNames: ['client_id', 'direction'],
      registers,
      collect() {
        this.reset();
        for (const [id, s] of stats) {
          this.inc({ client_id: id, direction: 'in' }, s.bytesIn);
          this.inc({ client_id: id, direction: 'out' }, s.bytesOut);
        }
      },
    });
    new Gauge({
      name: 'duplexwire_tunnel_agents_connected',
      help: 'Agents connected, by client id',
      labelNames: ['client_id'],
      registers,
      collect() {
        this.reset();
        for (const [id, n] of countById(agents())) this.set({ client_id: id }, n);
      },
    });
    new Gauge({
      name: 'duplexwire_tunnel_agents_unhealthy',
      help: 'Agents whose target fails its health checks, by client id',
      labelNames: ['client_id'],
      registers,
      collect() {
        this.reset();
        const all = agents();
        for (const id of new Set(all.map((a) => a.id))) this.set({ client_id: id }, 0);
        for (const [id, n] of countById(all.filter((a) => !a.healthy))) this.set({ client_id: id }, n);
      },
    });
    // Not by client id: a refused id may be anything a stranger typed.
    this.refused = new Counter({
      name: 'duplexwire_tunnel_agents_refused_total',
      help: 'Agent upgrades refused: bad credentials (401), or no tunnel version in common (426)',
      labelNames: ['reason'],
      registers,
    });
    // Both series exist from the start: an alert on a rate needs the zero.
    for (const reason of ['credentials', 'version'] as const) this.refused.inc({ reason }, 0);
    if (options.cluster) {
      const cluster = this.cluster;
      new Counter({
        name: 'duplexwire_tunnel_cluster_requests_total',
        help: 'Requests between proxies of the cluster: out = forwarded to a peer, in = served for a peer',
        labelNames: ['direction'],
        registers,
        collect() {
          this.reset();
          this.inc({ direction: 'out' }, cluster.forwardedOut);
          this.inc({ direction: 'in' }, cluster.forwardedIn);
        },
      });
      const plain = (name: string, help: string, read: () => number): void => {
        new Counter({
          name,
          help,
          registers,
          collect() {
            this.reset();
            this.inc(read());
          },
        });
      };
      plain(
        'duplexwire_tunnel_cluster_peer_failures_total',
        'Attempts to reach a peer proxy that failed before its answer',
        () => cluster.peerFailures,
      );
      plain(
        'duplexwire_tunnel_cluster_registry_errors_total',
        'Failed Redis commands of the cluster registry',
        () => cluster.registryErrors,
      );
      plain(
        'duplexwire_tunnel_cluster_refused_total',
        'Requests with cluster headers that failed authentication (served as ordinary requests)',
        () => cluster.refused,
      );
    }
    if (options.defaultMetrics ?? true)
      collectDefaultMetrics({ register: this.registry, prefix: 'duplexwire_tunnel_' });
  }

  /** An agent's upgrade was refused. */
  agentRefused(reason: AgentRefusal): void {
    this.refused.inc({ reason });
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
      const stats: IdStats = {
        requests: 0,
        inflight: 0,
        bytesIn: 0,
        bytesOut: 0,
        statusClasses: new Map(),
        peerStatusClasses: new Map(),
      };
      this.stats.set(label, stats);
      series = { stats, duration: this.duration.labels({ client_id: label }) };
      this.series.set(label, series);
    }
    return series;
  }

  started(label: string): void {
    this.seriesOf(label).stats.inflight++;
  }

  finished(label: string): void {
    this.seriesOf(label).stats.inflight--;
  }

  /** A response head went out (or an error answer), to a user or, `fromPeer`, to a peer proxy. */
  answered(label: string, status: number, seconds: number, fromPeer = false): void {
    const series = this.seriesOf(label);
    series.duration.observe(seconds);
    const stats = series.stats;
    const statusClass = STATUS_CLASSES[Math.floor(status / 100)] ?? `${Math.floor(status / 100)}xx`;
    stats.requests++;
    const classes = fromPeer ? stats.peerStatusClasses : stats.statusClasses;
    classes.set(statusClass, (classes.get(statusClass) ?? 0) + 1);
  }

  bytesIn(label: string, n: number): void {
    this.seriesOf(label).stats.bytesIn += n;
  }

  bytesOut(label: string, n: number): void {
    this.seriesOf(label).stats.bytesOut += n;
  }
}
