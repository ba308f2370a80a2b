/**
 * The proxy's HTML status page: connected agents and live counters per client id. Plain HTML,
 * no script; it reloads itself every few seconds. Every value is escaped.
 */
import type { AgentEntry } from './balancer.ts';
import type { IdStats } from './metrics.ts';

/** A proxy's part in a cluster (see the `cluster` option). */
export interface ClusterState {
  readonly advertise: string;
  /** `failing` while the last Redis command of the registry failed. */
  readonly registry: 'ok' | 'failing';
  readonly forwardedOut: number;
  readonly forwardedIn: number;
  readonly peerFailures: number;
}

export interface StatusSnapshot {
  readonly agents: readonly AgentEntry[];
  readonly stats: ReadonlyMap<string, IdStats>;
  readonly draining: boolean;
  readonly startedAt: number;
  readonly now: number;
  readonly cluster?: ClusterState | undefined;
}

function esc(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

function age(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h`;
}

export function renderStatusPage(snapshot: StatusSnapshot): string {
  const agentRows = snapshot.agents
    .map(
      (a) =>
        `<tr><td>${esc(a.id)}</td><td>${esc(a.conn.id)}</td><td>${esc(a.conn.remoteAddress)}</td><td>${a.version}</td>` +
        `<td>${esc(age(snapshot.now - a.connectedAt))}</td><td>${a.inflight}</td><td>${a.served}</td>` +
        `<td>${a.draining ? 'draining' : !a.conn.isOpen ? 'closing' : a.healthy ? 'up' : 'up, target unhealthy'}</td></tr>`,
    )
    .join('\n');
  const statRows = [...snapshot.stats]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([id, s]) => {
      const classes = [
        ...[...s.statusClasses].map(([k, v]) => `${k}: ${v}`),
        ...[...s.peerStatusClasses].map(([k, v]) => `${k} for peers: ${v}`),
      ].join(', ');
      return `<tr><td>${esc(id)}</td><td>${s.requests}</td><td>${s.inflight}</td><td>${esc(classes)}</td><td>${esc(bytes(s.bytesIn))}</td><td>${esc(bytes(s.bytesOut))}</td></tr>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>duplexwire tunnel</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f4f4f4}</style></head>
<body><h1>duplexwire tunnel proxy</h1>
<p>State: ${snapshot.draining ? 'draining' : 'serving'} &middot; up ${esc(age(snapshot.now - snapshot.startedAt))} &middot; ${snapshot.agents.length} agent(s)</p>
${
  snapshot.cluster === undefined
    ? ''
    : `<p>Cluster: advertised as ${esc(snapshot.cluster.advertise)} &middot; registry ${esc(snapshot.cluster.registry)} &middot; forwarded out ${snapshot.cluster.forwardedOut}, in ${snapshot.cluster.forwardedIn} &middot; peer failures ${snapshot.cluster.peerFailures}</p>\n`
}<h2>Agents</h2>
<table><tr><th>client id</th><th>connection</th><th>address</th><th>version</th><th>connected</th><th>in flight</th><th>served</th><th>state</th></tr>
${agentRows || '<tr><td colspan="8">none</td></tr>'}</table>
<h2>Requests</h2>
<table><tr><th>client id</th><th>requests</th><th>in flight</th><th>statuses</th><th>bytes in</th><th>bytes out</th></tr>
${statRows || '<tr><td colspan="6">none yet</td></tr>'}</table>
</body></html>
`;
}
