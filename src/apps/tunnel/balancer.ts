/**
 * The agents of each client id and the choice among them: healthy agents first (of those whose
 * target is health-checked), then least requests in flight, ties broken round-robin so that an
 * idle pool still spreads its load.
 */
import type { Connection } from '../../index.ts';
import type { CreditWindow } from './flow.ts';

export interface AgentEntry {
  readonly id: string;
  readonly conn: Connection;
  /** The tunnel version settled at the agent's upgrade (`conn.protocol` is its subprotocol). */
  readonly version: number;
  readonly connectedAt: number;
  /** Request-body bytes sent to this agent and not yet acked (all its streams together). */
  readonly window: CreditWindow;
  /**
   * Requests routed to this agent at once at most: the proxy's `maxInflightPerAgent`, or the
   * lower limit the agent announced at its upgrade.
   */
  readonly maxInflight: number;
  /** Requests routed to this agent and not finished. */
  inflight: number;
  /** Requests finished by this agent. */
  served: number;
  /** The agent said it is draining: nothing new goes to it. */
  draining: boolean;
  /** False while the agent says its target fails its health checks: others are preferred. */
  healthy: boolean;
}

export class Balancer {
  private readonly byId = new Map<string, AgentEntry[]>();
  private turn = 0;

  add(entry: AgentEntry): void {
    const list = this.byId.get(entry.id);
    if (list === undefined) this.byId.set(entry.id, [entry]);
    else list.push(entry);
  }

  /** Returns false when the entry was not (or no longer) registered. */
  remove(entry: AgentEntry): boolean {
    const list = this.byId.get(entry.id);
    if (list === undefined) return false;
    const index = list.indexOf(entry);
    if (index < 0) return false;
    list.splice(index, 1);
    if (list.length === 0) this.byId.delete(entry.id);
    return true;
  }

  /**
   * The agent for a new request to `id`, or undefined when none can take it. Agents in `exclude`
   * (already tried), closing, draining or at their `maxInflight` are skipped. An unhealthy agent is
   * picked only when no healthy one can take the request: its target may still answer it, which
   * a 503 from the proxy never would.
   */
  pick(id: string, exclude?: ReadonlySet<AgentEntry>): AgentEntry | undefined {
    const list = this.byId.get(id);
    if (list === undefined) return undefined;
    const n = list.length;
    const start = this.turn++ % n;
    let best: AgentEntry | undefined;
    let fallback: AgentEntry | undefined;
    for (let k = 0; k < n; k++) {
      const entry = list[(start + k) % n]!;
      if (entry.draining || !entry.conn.isOpen || entry.inflight >= entry.maxInflight || exclude?.has(entry)) continue;
      if (!entry.healthy) {
        if (fallback === undefined || entry.inflight < fallback.inflight) fallback = entry;
      } else if (best === undefined || entry.inflight < best.inflight) {
        best = entry;
      }
    }
    return best ?? fallback;
  }

  /** True when `id` has at least one agent registered (usable or not). */
  has(id: string): boolean {
    return this.byId.has(id);
  }

  /** Registered agents of `id` (all ids when omitted). */
  agents(id?: string): AgentEntry[] {
    if (id !== undefined) return [...(this.byId.get(id) ?? [])];
    return [...this.byId.values()].flat();
  }

  ids(): string[] {
    return [...this.byId.keys()];
  }
}
