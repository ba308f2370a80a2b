/** What one case produces, as it appears in the JSON output. */
import type { CaseKind, CaseParams } from './cases.ts';

export type Metrics = Readonly<Record<string, number | null>>;

export interface CaseResult {
  readonly id: string;
  readonly group: string;
  readonly kind: CaseKind;
  readonly title: string;
  readonly stack: string;
  readonly params: CaseParams;
  /**
   * request-reply: rate (round trips/s), p50Us, p99Us, cpuUsPerOp (server + client CPU time per
   * round trip), serverCpuUsPerOp, clientCpuUsPerOp. fanout: rate (messages delivered/s),
   * cpuUsPerOp, serverCpuUsPerOp. signals: rate (signals received by the server/s), cpuUsPerOp.
   * memory: livePerConnKiB (heap + native, what the goals use), rssPerConnKiB, heapPerConnKiB,
   * nativePerConnKiB (RSS less V8's committed heap), heapTotalPerConnKiB, externalPerConnKiB,
   * baselineRssMiB, connections. Request-reply and fan-out also carry server/client reads and
   * writes per operation (`/proc/self/io`, Linux; uWS's send/recv are not counted there).
   * codec: encodePerSec, decodePerSec.
   */
  readonly metrics: Metrics;
  /** Set when the case failed; its metrics are then empty. */
  readonly error?: string;
}

/** Options every case runner gets from the command line. */
export interface RunOptions {
  /** Extra Node flags for the server and load processes (`--cpu-prof` and its directory). */
  readonly nodeFlags: readonly string[];
  /** Where the memory case writes server heap snapshots, if anywhere. */
  readonly heapSnapshotDir: string | undefined;
}
