/**
 * One user request that this proxy has no usable agent for, or only unhealthy ones, forwarded to a
 * peer proxy that has one: the registry names the live peers and how many healthy agents each
 * has, the request goes to one of them over HTTP (undici, a keep-alive pool per peer), and the
 * answer streams back to the user. The order: a peer with a healthy agent, then this proxy's own
 * unhealthy agent, then a peer with only unhealthy ones (as `Balancer.pick` orders one proxy's
 * agents: an unhealthy target may still answer, which a 503 never would).
 *
 * Both bodies stream with backpressure: the user's request body is read only as fast as the
 * peer's socket takes it (undici pulls from `BodyRelay`, which pauses the user's request), and the
 * peer's response is read only as fast as the user's socket takes it (`onData` returns false until
 * the sink drains). A peer that cannot be reached, or answers that it has no agent able to take
 * the request after all (CLUSTER_MISS_HEADER), is left for the next live one while no byte of the
 * body was sent, or every byte sent is still kept (at most REPLAY_LIMIT, until a response head):
 * a miss is certain, refused before any agent performed the request, so the next one gets the same
 * bytes again, then the rest. After that its answer, or a 502, is what the user gets.
 */
import type { IncomingMessage } from 'node:http';
import { type Duplex, Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { Logger } from '../../index.ts';
import {
  CLUSTER_AUTH_HEADER,
  CLUSTER_ID_HEADER,
  CLUSTER_MISS_HEADER,
  CLUSTER_TIMEOUT_HEADER,
  type ResolvedCluster,
  withoutClusterHeaders,
} from './cluster.ts';
import type { ClusterRegistry, PeerProxy } from './cluster-registry.ts';
import { filterHeaders, headerValues, latin1Pairs, redactUrl } from './headers.ts';
import { TUNNEL_ERROR_STATUS, TunnelErrorCode } from './http-errors.ts';
import type { TunnelMetrics } from './metrics.ts';
import { answerOrCut, type Sink } from './sinks.ts';

/** What a forwarded exchange needs from its proxy. */
export interface ForwardHost {
  readonly cluster: ResolvedCluster;
  readonly registry: ClusterRegistry;
  readonly metrics: TunnelMetrics;
  readonly logger: Logger;
  /** The connection pool to a peer (by advertised origin). */
  pool(url: string): Dispatcher;
  /** Forwarded requests in flight per peer, for the choice among peers. */
  readonly peerInflight: Map<string, number>;
  /** The exchange is over. */
  ended(exchange: ForwardExchange): void;
}

export interface ForwardInit {
  readonly id: string;
  readonly method: string;
  /** The request target the agent's target sees (after routing), byte for byte. */
  readonly url: string;
  /** Headers to forward, already filtered and with X-Forwarded-* (as the agent will see them). */
  readonly headers: readonly string[];
  readonly source: IncomingMessage | Duplex;
  readonly sink: Sink;
  readonly hasBody: boolean;
  readonly upgrade: boolean;
  /** Milliseconds until the response head is due. */
  readonly timeout: number;
  readonly maxBody: number;
  /**
   * This proxy has an agent able to take the request, but its target is unhealthy: only peers
   * with a healthy agent are tried, and this proxy's agent serves it when none of them takes it.
   */
  readonly unhealthyHere: boolean;
  /**
   * No peer to try (or none took it, and nothing of the request reached one): serve (or refuse)
   * the request as a single proxy would, with `timeout` ms left until the response head, and
   * `replay` (the body bytes the peers that missed took from the user's request) read first.
   */
  readonly local: (timeout: number, replay: readonly Buffer[]) => void;
}

type Outcome = 'ok' | 'timeout' | 'user-gone' | 'peer-error' | 'no-peer' | 'body-too-large' | 'drain-aborted';
type AttemptResult = 'done' | 'unreachable' | TunnelErrorCode;

/**
 * The peer gets the deadline and answers 504 itself (after cancelling its agent's request); this
 * proxy waits this much longer before giving up on a peer that does not answer at all.
 */
const PEER_GRACE = 500;
/**
 * Methods a request of which may be sent again after a peer that took it was lost before its
 * answer (RFC 9110 §9.2.2): performing them twice has the effect of once. Any other request,
 * once sent, is never sent to another peer: its agent may have performed it already.
 */
const IDEMPOTENT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);
/**
 * Body bytes kept, per request, for the next peer after a miss: undici writes the head with the
 * first of them (Expect: 100-continue is HTTP/2 only in undici 6), so a miss comes after some
 * left the user's request. A body longer than this is not retried once a byte of it was sent.
 */
export const REPLAY_LIMIT = 64 * 1024;
/** Header names undici writes itself for an upgrade, and refuses to be given. */
const UPGRADE_HEADERS: ReadonlySet<string> = new Set(['upgrade', 'connection']);

export class ForwardExchange {
  readonly startedAt = performance.now();
  readonly init: ForwardInit;
  private readonly host: ForwardHost;
  private readonly label: string;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private finished = false;
  private counted = false;
  private headDone = false;
  private status = 0;
  private outcome: Outcome = 'ok';
  private bytesIn = 0;
  private bytesOut = 0;
  private peer: string | undefined;
  /** Aborts the attempt in progress (undici's abort, once it connected). */
  private abortAttempt: ((error?: Error) => void) | undefined;
  private relay: BodyRelay | undefined;
  /** The attempt in progress has a connection, so its head went out (undici writes it at once). */
  private sent = false;
  /**
   * The peer answered 413 while the user was still sending the body: the rest is not read, and
   * the user's connection closes after the answer.
   */
  private closeUser = false;
  private settleAttempt: ((result: AttemptResult) => void) | undefined;

  constructor(host: ForwardHost, init: ForwardInit) {
    this.host = host;
    this.init = init;
    this.label = host.metrics.label(init.id);
  }

  /** Milliseconds left until the response head is due. */
  get remaining(): number {
    return Math.max(1, Math.round(this.init.timeout - (performance.now() - this.startedAt)));
  }

  /** Runs the exchange to its end (or hands it to `serveLocally`). Never rejects. */
  async run(): Promise<void> {
    this.init.sink.onGone(() => this.abandon('user-gone'));
    this.timer = setTimeout(() => this.timedOut(), this.init.timeout + PEER_GRACE);
    const { unhealthyHere } = this.init;
    let peers: PeerProxy[];
    try {
      // With an agent here to fall back on, an answer of no peers may be a second old: without
      // it, each request to an id whose only agents here are unhealthy would cost a script.
      peers = await this.host.registry.lookup(this.init.id, unhealthyHere);
    } catch (error) {
      this.host.logger.error('cluster registry lookup failed', { id: this.init.id, error });
      if (this.finished) return;
      if (unhealthyHere) {
        this.serveHere();
        return;
      }
      this.begin();
      this.answer(TunnelErrorCode.ClusterUnavailable, 'no-peer');
      this.finish();
      return;
    }
    if (this.finished) return;
    const healthy = this.order(peers.filter((peer) => peer.healthy > 0));
    const candidates = unhealthyHere
      ? healthy
      : [...healthy, ...this.order(peers.filter((peer) => peer.healthy === 0))];
    if (candidates.length === 0) {
      // Nothing to forward to: the single proxy's answer (its own agents, busy, unhealthy or none).
      this.serveHere();
      return;
    }
    this.begin();
    this.host.metrics.cluster.forwardedOut++;
    let unreachable = false;
    let busy = false;
    try {
      for (const peer of candidates) {
        if (this.finished) return;
        const result = await this.attempt(peer.url);
        if (result === 'done') return;
        if (result === 'unreachable') unreachable = true;
        else if (result === TunnelErrorCode.AgentsBusy) busy = true;
        // A peer that missed or could not be reached: the next one, while the body sent is kept.
        if (this.relay?.spent) break;
      }
      if (unhealthyHere && !this.relay?.spent && !this.finished) {
        this.serveHere();
        return;
      }
      this.answer(
        busy ? TunnelErrorCode.AgentsBusy : unreachable ? TunnelErrorCode.PeerUnreachable : TunnelErrorCode.NoAgent,
        'no-peer',
      );
    } catch (error) {
      this.host.logger.error('cluster forward failed', { error, id: this.init.id });
      this.answer(TunnelErrorCode.PeerUnreachable, 'peer-error');
    } finally {
      this.finish();
    }
  }

  /**
   * Ends the exchange from outside: the drain timed out. A user still waiting for the response
   * head gets 503 DRAIN_TIMEOUT and the connection closes; after the head the response is cut off.
   */
  abort(): void {
    if (this.finished) return;
    this.outcome = 'drain-aborted';
    this.begin();
    this.failClosing(TunnelErrorCode.DrainTimeout);
    this.finish();
    this.stopAttempt();
  }

  /**
   * Hands the request to this proxy's own agents, as a single proxy would serve it: no peer was
   * tried, or none took it and every byte of the body that left the user's request is kept.
   */
  private serveHere(): void {
    this.finished = true;
    clearTimeout(this.timer);
    this.relay?.destroy();
    if (this.counted) this.host.metrics.finished(this.label);
    this.init.local(this.remaining, this.relay?.kept ?? []);
    this.host.ended(this);
  }

  private begin(): void {
    if (this.counted) return;
    this.counted = true;
    this.host.metrics.started(this.label);
  }

  /** Least forwarded requests in flight from this proxy first, ties in random order. */
  private order(peers: PeerProxy[]): PeerProxy[] {
    const inflight = this.host.peerInflight;
    return peers
      .map((peer) => ({ peer, key: (inflight.get(peer.url) ?? 0) + Math.random() }))
      .sort((a, b) => a.key - b.key)
      .map((entry) => entry.peer);
  }

  // ------------------------------------------------------------------ one peer

  private attempt(url: string): Promise<AttemptResult> {
    const { init, host } = this;
    this.peer = url;
    this.sent = false;
    const inflight = host.peerInflight;
    inflight.set(url, (inflight.get(url) ?? 0) + 1);
    // After a miss, what the peer before took of the body comes first.
    const relay =
      init.hasBody && !init.upgrade
        ? new BodyRelay(init.source, (n) => this.countIn(n), this.relay?.kept ?? [])
        : undefined;
    this.relay = relay;
    const headers = filterHeaders(init.headers, init.upgrade ? { strip: UPGRADE_HEADERS } : {});
    const timeout = String(this.remaining);
    headers.push(
      CLUSTER_AUTH_HEADER,
      host.cluster.sign({ audience: url, method: init.method, target: init.url, id: init.id, timeout }),
      CLUSTER_ID_HEADER,
      init.id,
      CLUSTER_TIMEOUT_HEADER,
      timeout,
    );
    const done = new Promise<AttemptResult>((resolve) => {
      this.settleAttempt = resolve;
    });
    const handler = new PeerHandler(this, relay);
    host.pool(url).dispatch(
      {
        path: init.url,
        method: init.method as Dispatcher.HttpMethod,
        headers,
        body: relay ?? null,
        upgrade: init.upgrade ? (headerValues(init.headers, 'upgrade')[0] ?? 'websocket') : null,
        // The deadline is ours (until the head); after it a response may stream for hours.
        headersTimeout: 0,
        bodyTimeout: 0,
      },
      handler,
    );
    return done.finally(() => {
      this.abortAttempt = undefined;
      this.settleAttempt = undefined;
      const n = (inflight.get(url) ?? 1) - 1;
      if (n > 0) inflight.set(url, n);
      else inflight.delete(url);
    });
  }

  /** @internal The attempt is over. */
  settled(result: AttemptResult): void {
    this.settleAttempt?.(result);
  }

  /** @internal undici connected: how to abort. */
  connected(abort: (error?: Error) => void): void {
    this.abortAttempt = abort;
    this.sent = true;
    if (this.finished) abort();
  }

  /** @internal The peer's response head: false when it was not written (a miss to retry, or an error). */
  head(status: number, headers: string[]): 'written' | 'miss' | 'failed' {
    if (this.finished) return 'failed';
    const miss = headerValues(headers, CLUSTER_MISS_HEADER)[0] as TunnelErrorCode | undefined;
    if (miss !== undefined && !this.relay?.spent && !this.headDone) {
      this.host.logger.debug('peer proxy has no agent able to take the request', { id: this.init.id, peer: this.peer });
      this.settled(miss in TUNNEL_ERROR_STATUS ? miss : TunnelErrorCode.NoAgent);
      return 'miss';
    }
    // Any other answer is final: nothing more is sent again.
    this.relay?.forget();
    const switching = status === 101;
    // A 413 (the peer's limit, or its target's) while the user is still sending the body: as
    // after this proxy's own 413, no more of it goes to the peer, and the answer closes the user's
    // connection, which then lingers (linger.ts). The sink closes after any answer that comes
    // before the body arrived; said here for a body small enough that it would keep the
    // connection. The peer's connection is dropped by undici, answered before the body went.
    const relay = this.relay;
    if (status === 413 && relay !== undefined && !(this.init.source as IncomingMessage).complete) {
      this.closeUser = true;
      relay.hold();
    }
    try {
      // A switch to a request that asked for none is as invalid as a malformed head.
      if (switching && !this.init.upgrade) throw new RangeError('101 without an upgrade');
      this.init.sink.head(
        status,
        filterHeaders(withoutClusterHeaders(headers), { upgrade: switching }),
        this.closeUser,
      );
    } catch {
      this.host.logger.warn('invalid response head from a peer proxy', { id: this.init.id, peer: this.peer });
      this.answer(TunnelErrorCode.BadAgentResponse, 'peer-error');
      this.finish();
      return 'failed';
    }
    this.headDone = true;
    clearTimeout(this.timer);
    this.status = status;
    this.host.metrics.answered(this.label, status, (performance.now() - this.startedAt) / 1000);
    return 'written';
  }

  /** @internal A piece of the peer's response body; a promise while the user's socket is full. */
  data(chunk: Buffer): Promise<void> | undefined {
    if (this.finished) return undefined;
    this.bytesOut += chunk.length;
    this.host.metrics.bytesOut(this.label, chunk.length);
    return this.init.sink.write(chunk);
  }

  /** @internal The peer's response ended. */
  complete(): void {
    if (!this.finished) this.init.sink.end();
    this.relay?.destroy();
    this.settled('done');
  }

  /** @internal The attempt failed: the next peer is tried when nothing of it reached the user and it cannot have been performed, or may be twice. */
  failed(error: Error): void {
    if (this.finished) {
      this.settled('done');
      return;
    }
    this.host.metrics.cluster.peerFailures++;
    // Unreachable: no connection, so nothing was sent; or a request the peer may have performed
    // already, but that may be performed twice.
    if (!this.headDone && !this.relay?.touched && (!this.sent || IDEMPOTENT.has(this.init.method))) {
      this.host.logger.warn('peer proxy unreachable', { id: this.init.id, peer: this.peer, error });
      this.settled('unreachable');
      return;
    }
    this.host.logger.warn('peer proxy lost mid-request', { id: this.init.id, peer: this.peer, error });
    this.answer(TunnelErrorCode.PeerUnreachable, 'peer-error');
    this.settled('done');
  }

  /** @internal After the peer's 101: the raw bytes flow both ways until either side closes. */
  upgraded(socket: Duplex): void {
    const user = this.init.source as Duplex;
    socket.on('error', () => {});
    if (this.finished) {
      socket.destroy();
      this.settled('done');
      return;
    }
    let open = 2;
    const closed = (): void => {
      if (--open > 0) return;
      this.settled('done');
    };
    const end = (): void => {
      user.destroy();
      socket.destroy();
    };
    user.once('close', () => {
      end();
      closed();
    });
    socket.once('close', () => {
      end();
      closed();
    });
    // pipe() is the backpressure: each side is read only as fast as the other one writes.
    user.pipe(socket);
    socket.pipe(user);
  }

  private countIn(n: number): boolean {
    this.bytesIn += n;
    this.host.metrics.bytesIn(this.label, n);
    if (this.bytesIn <= this.init.maxBody) return true;
    this.outcome = 'body-too-large';
    this.failClosing(TunnelErrorCode.BodyTooLarge);
    this.finish();
    this.stopAttempt();
    return false;
  }

  // ------------------------------------------------------------------ endings

  private timedOut(): void {
    if (this.headDone || this.finished) return;
    this.begin();
    if (this.settleAttempt !== undefined) {
      // The peer had the deadline and should have answered 504 itself by now.
      this.host.metrics.cluster.peerFailures++;
      this.host.logger.warn('peer proxy did not answer in time', { id: this.init.id, peer: this.peer });
    }
    this.answer(TunnelErrorCode.AgentTimeout, 'timeout');
    this.finish();
    this.stopAttempt();
  }

  private abandon(outcome: Outcome): void {
    if (this.finished) return;
    this.outcome = outcome;
    this.finish();
    this.stopAttempt();
  }

  /**
   * Aborts the attempt in progress, once the exchange is finished: undici reports the abort
   * through `onError` at once, and a finished exchange takes that for what it is (our own
   * ending), not for a peer lost mid-request, which would count a peer failure and answer 502
   * instead of the 413, 504 or user-gone it is.
   */
  private stopAttempt(): void {
    this.abortAttempt?.();
    this.settled('done');
  }

  /** An error answer (counted) that closes the connection; a cut-off response after the head. */
  private failClosing(code: TunnelErrorCode): void {
    if (!this.init.sink.headSent) {
      this.status = TUNNEL_ERROR_STATUS[code];
      this.host.metrics.answered(this.label, this.status, (performance.now() - this.startedAt) / 1000);
    }
    this.init.sink.fail(code, true);
  }

  /** An error answer, or a cut-off response when the head is already out. */
  private answer(code: TunnelErrorCode, outcome: Outcome): void {
    if (this.finished) return;
    this.outcome = outcome;
    const status = answerOrCut(this.init.sink, code);
    if (status === undefined) return;
    this.status = status;
    this.host.metrics.answered(this.label, status, (performance.now() - this.startedAt) / 1000);
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.timer);
    this.relay?.destroy();
    // What is left of the request body is read and dropped (an upgraded socket is destroyed
    // instead; after a 413 it stays paused until the answer's lingering close reads it).
    if (!this.init.upgrade && this.relay !== undefined && !this.closeUser) this.init.source.resume();
    if (this.counted) this.host.metrics.finished(this.label);
    this.host.ended(this);
    const context = {
      id: this.init.id,
      method: this.init.method,
      path: redactUrl(this.init.url),
      status: this.status,
      outcome: this.outcome,
      ms: Math.round(performance.now() - this.startedAt),
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      peer: this.peer,
    };
    if (this.outcome === 'ok' || this.outcome === 'user-gone') this.host.logger.info('request', context);
    else this.host.logger.warn('request', context);
  }

  get isFinished(): boolean {
    return this.finished;
  }
}

/** undici's handler of one attempt: passes everything to its exchange. */
class PeerHandler implements Dispatcher.DispatchHandlers {
  private readonly exchange: ForwardExchange;
  private readonly relay: BodyRelay | undefined;
  private resume: (() => void) | undefined;
  private abort: ((error?: Error) => void) | undefined;
  private over = false;

  constructor(exchange: ForwardExchange, relay: BodyRelay | undefined) {
    this.exchange = exchange;
    this.relay = relay;
  }

  onConnect(abort: (error?: Error) => void): void {
    this.abort = abort;
    this.exchange.connected(abort);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    // 100 Continue and other informational answers: the final one follows.
    if (statusCode < 200 || this.over) return !this.over;
    this.resume = resume;
    const result = this.exchange.head(statusCode, latin1Pairs(rawHeaders));
    if (result === 'written') return true;
    // A miss or a refused head: this response is of no use. Aborting costs the connection, which
    // is cheaper than reading a body nobody wants.
    this.over = true;
    this.relay?.destroy();
    this.abort?.();
    if (result === 'failed') this.exchange.settled('done');
    return false;
  }

  onData(chunk: Buffer): boolean {
    if (this.over) return false;
    const wait = this.exchange.data(chunk);
    if (wait === undefined) return true;
    // The user's socket is full: undici stops reading the peer until it drains.
    void wait.then(() => this.resume?.());
    return false;
  }

  onComplete(): void {
    if (this.over) return;
    this.over = true;
    this.exchange.complete();
  }

  onError(error: Error): void {
    if (this.over) return;
    this.over = true;
    this.relay?.destroy();
    this.exchange.failed(error);
  }

  onUpgrade(statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Duplex): void {
    if (this.over) {
      socket.destroy();
      return;
    }
    this.over = true;
    if (this.exchange.head(statusCode, rawHeaders === null ? [] : latin1Pairs(rawHeaders)) !== 'written') {
      socket.destroy();
      this.exchange.settled('done');
      return;
    }
    this.exchange.upgraded(socket);
  }
}

/**
 * The user's request body as undici reads it: the user's request is read only when undici asks
 * for more, and destroying the relay (a retry, an ending) leaves the user's request alone. `touched`
 * tells whether any byte of the body went to this attempt, `kept` holds every byte taken from the
 * user's request so far (a peer before's too) while they fit in REPLAY_LIMIT and no response
 * head came, and `spent` tells that some left the user's request and are not kept: no other peer
 * can be tried.
 */
class BodyRelay extends Readable {
  touched = false;
  kept: Buffer[] | undefined;
  private keptBytes = 0;
  private readonly replay: readonly Buffer[];
  private readonly source: Readable;
  private readonly accept: (n: number) => boolean;
  private attached = false;
  private held = false;
  private readonly onData = (chunk: Buffer): void => {
    this.touched = true;
    if (!this.accept(chunk.length)) return;
    this.keep(chunk);
    if (!this.push(chunk)) this.source.pause();
  };
  private readonly onEnd = (): void => {
    this.push(null);
  };

  /** `replay`: the bytes a peer before took, sent first (and not counted again). */
  constructor(source: Readable, take: (n: number) => boolean, replay: readonly Buffer[]) {
    super({ highWaterMark: 64 * 1024 });
    this.source = source;
    this.accept = take;
    this.replay = replay;
    this.kept = [];
    for (const chunk of replay) this.keep(chunk);
  }

  /** Bytes left the user's request that are not kept: no other attempt can send them again. */
  get spent(): boolean {
    return this.kept === undefined && this.touched;
  }

  /** Keeps nothing more (a response head came): the memory goes with the first answer. */
  forget(): void {
    this.kept = undefined;
  }

  private keep(chunk: Buffer): void {
    if (this.kept === undefined) return;
    this.keptBytes += chunk.length;
    if (this.keptBytes > REPLAY_LIMIT) this.kept = undefined;
    else this.kept.push(chunk);
  }

  override _read(): void {
    if (this.held) return;
    if (!this.attached) {
      this.attached = true;
      if (this.replay.length > 0) this.touched = true;
      for (const chunk of this.replay) this.push(chunk);
      // An empty body's end was taken by the relay to a peer that missed: 'end' comes only once.
      if (this.source.readableEnded) {
        this.push(null);
        return;
      }
      this.source.on('data', this.onData);
      this.source.once('end', this.onEnd);
    }
    this.source.resume();
  }

  /** Reads no more of the user's request, which stays paused; the relay itself stays open. */
  hold(): void {
    this.held = true;
    this.source.off('data', this.onData);
    this.source.off('end', this.onEnd);
    if (this.attached) this.source.pause();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.source.off('data', this.onData);
    this.source.off('end', this.onEnd);
    // Not flowing without a reader: the bytes are the next peer's, or dumped by the ending.
    if (this.attached) this.source.pause();
    callback(error);
  }
}
