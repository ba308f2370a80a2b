/**
 * One user request on the proxy, from routing to the last byte: picks an agent, sends the head
 * (`tunnel.http`), streams the request body with credit, writes the response head and chunks the
 * agent sends, and turns every way it can end into one answer (or a cut-off response when the
 * head was already out).
 */
import type { Readable } from 'node:stream';
import { nanoid } from 'nanoid';
import {
  binary,
  CanceledError,
  Cancellation,
  DisconnectedError,
  InternalError,
  type Logger,
  PeerUnsupportedError,
  type Payload,
  RequestError,
  ShutdownError,
} from '../../index.ts';
import type { AgentEntry, Balancer } from './balancer.ts';
import { acquireBoth, CreditWindow, messageCost, tryAcquireBoth } from './flow.ts';
import { filterHeaders, redactUrl } from './headers.ts';
import { TUNNEL_ERROR_STATUS, TunnelErrorCode } from './http-errors.ts';
import type { TunnelMetrics } from './metrics.ts';
import { answerOrCut, type Sink } from './sinks.ts';
import {
  AgentErrorCode,
  BodyMode,
  type Chunk,
  decodeHttpReply,
  chunkName,
  encodeHttpHead,
  type HttpReply,
  MSG_BODY,
  MSG_HTTP,
  type ResponseHead,
} from './wire.ts';

/** What an exchange needs from its proxy. */
export interface ExchangeHost {
  readonly balancer: Balancer;
  readonly metrics: TunnelMetrics;
  readonly logger: Logger;
  readonly chunkSize: number;
  readonly streamWindow: number;
  /** Exchanges attached to an agent, by stream id: where agent messages are routed. */
  readonly streams: Map<string, ProxyExchange>;
  /** The exchange is over (answered, cut off or abandoned). */
  ended(exchange: ProxyExchange): void;
}

export interface ExchangeInit {
  readonly id: string;
  readonly method: string;
  /** The request target the agent's target sees. */
  readonly url: string;
  /** Headers to forward, already filtered and with X-Forwarded-*. */
  readonly headers: readonly string[];
  readonly source: Readable;
  readonly sink: Sink;
  readonly bodyMode: BodyMode;
  /** Length of an inline body (Content-Length). */
  readonly inlineLength: number;
  readonly upgrade: boolean;
  readonly timeout: number;
  /** Request-body limit (Infinity for upgrades). */
  readonly maxBody: number;
  /** Forwarded by a peer proxy of the cluster (counted as such in the metrics). */
  readonly fromPeer: boolean;
  /**
   * The first bytes of the body, which peers that missed took from `source` (and counted): read
   * before the rest of it.
   */
  readonly replay?: readonly Buffer[];
}

type Outcome =
  | 'ok'
  | 'timeout'
  | 'user-gone'
  | 'agent-lost'
  | 'agent-error'
  | 'body-too-large'
  | 'no-agent'
  | 'bad-agent-response'
  | 'drain-aborted';

const FIN = Symbol('fin');
type Piece = Uint8Array | typeof FIN;

export class ProxyExchange {
  readonly sid = nanoid();
  readonly startedAt = performance.now();
  private readonly host: ExchangeHost;
  private readonly init: ExchangeInit;
  private readonly label: string;
  private entry: AgentEntry | undefined;
  /** Cancels the attempt's requests to its agent (the head and every body chunk). */
  private controller: Cancellation | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Credit of the request body stream; made when a body streams. */
  private window: CreditWindow | undefined;
  private finished = false;
  private headDone = false;
  private sinkEnded = false;
  private outcome: Outcome = 'ok';
  private status = 0;
  private inlineBody: Uint8Array | undefined;
  // Request body (proxy -> agent).
  private pumping = false;
  private bodyTouched = false;
  private bodyBytes = 0;
  private bodyDead = false;
  private readonly bodyQueue: Piece[] = [];
  private flushing = false;
  private sendSeq = 0;
  // Response body (agent -> proxy).
  private expectSeq = 0;
  private bytesOut = 0;
  private detachSource: (() => void) | undefined;

  constructor(host: ExchangeHost, init: ExchangeInit) {
    this.host = host;
    this.init = init;
    this.label = host.metrics.label(init.id);
  }

  /** The agent connection this exchange is attached to, if any. */
  get agent(): AgentEntry | undefined {
    return this.entry;
  }

  /** Runs the exchange to its end. Never rejects. */
  async run(): Promise<void> {
    this.host.metrics.started(this.label);
    this.init.sink.onGone(() => this.abandon('user-gone'));
    this.armTimer();
    try {
      if (this.init.bodyMode === BodyMode.Inline) {
        this.inlineBody = await this.readInline();
        if (this.finished) return;
      }
      await this.dispatch();
    } catch (error) {
      this.host.logger.error('tunnel exchange failed', { error, sid: this.sid });
      this.answer(TunnelErrorCode.AgentLost, 'agent-error');
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
    this.controller?.abort();
    this.outcome = 'drain-aborted';
    this.failClosing(TunnelErrorCode.DrainTimeout);
    this.finish();
  }

  // ------------------------------------------------------------------ dispatch

  private async dispatch(): Promise<void> {
    const tried = new Set<AgentEntry>();
    const { balancer } = this.host;
    // An agent refused it at its own limit: when none takes it, they are busy rather than absent.
    let refusedBusy = false;
    for (;;) {
      if (this.finished) return;
      const entry = balancer.pick(this.init.id, tried);
      if (entry === undefined) {
        const busy =
          refusedBusy ||
          balancer
            .agents(this.init.id)
            .some((a) => !tried.has(a) && !a.draining && a.conn.isOpen && a.inflight >= a.maxInflight);
        this.answer(busy ? TunnelErrorCode.AgentsBusy : TunnelErrorCode.NoAgent, 'no-agent');
        return;
      }
      tried.add(entry);
      const result = await this.attempt(entry);
      if (result === 'done') return;
      if (result === 'busy') refusedBusy = true;
      // Refused without being performed: another agent may take it, if no body byte was spent.
      if (this.bodyTouched) {
        this.answer(result === 'busy' ? TunnelErrorCode.AgentsBusy : TunnelErrorCode.NoAgent, 'no-agent');
        return;
      }
      this.host.logger.debug(
        result === 'busy'
          ? 'request refused by an agent at its limit; retrying on another'
          : 'request refused by a draining agent; retrying on another',
        { id: this.init.id },
      );
    }
  }

  /** `retry`/`busy`: the agent refused it unperformed, draining or at its limit. */
  private async attempt(entry: AgentEntry): Promise<'done' | 'retry' | 'busy'> {
    // Not an AbortController: an EventTarget per request costs a tenth of the proxy's work on
    // small ones, and every unacked body chunk listens to it.
    const controller = new Cancellation();
    this.entry = entry;
    this.controller = controller;
    entry.inflight++;
    this.host.streams.set(this.sid, this);
    const { init } = this;
    let reply: Payload;
    try {
      const pending = entry.conn.request(
        MSG_HTTP,
        encodeHttpHead({
          sid: this.sid,
          method: init.method,
          url: init.url,
          headers: init.headers,
          body: init.bodyMode,
          ...(this.inlineBody === undefined ? {} : { data: this.inlineBody }),
          ...(init.upgrade ? { upgrade: true } : {}),
        }),
        { signal: controller, timeout: 0 },
      );
      if (init.bodyMode === BodyMode.Stream) this.startPump();
      reply = await pending;
    } catch (error) {
      return this.attemptFailed(error, controller);
    } finally {
      entry.inflight--;
      entry.served++;
      this.host.streams.delete(this.sid);
    }
    if (this.finished) return 'done';
    let decoded: HttpReply;
    try {
      decoded = decodeHttpReply(reply);
    } catch {
      this.badAgent('undecodable reply');
      return 'done';
    }
    if (decoded.kind === 'inline') {
      if (this.headDone) {
        this.badAgent('inline reply after a streamed head');
        return 'done';
      }
      if (!this.writeHead(decoded.status, decoded.headers)) return 'done';
      this.countOut(decoded.data.length);
      this.endSink(decoded.data);
      this.stopReading();
    } else if (!this.sinkEnded) {
      // "Done" without the last chunk: the response is cut off, never silently shortened.
      this.badAgent('exchange done before the body ended');
    }
    return 'done';
  }

  private attemptFailed(error: unknown, controller: Cancellation): 'done' | 'retry' | 'busy' {
    controller.abort();
    if (this.finished) return 'done';
    // At its limit for now, not for good: unlike a draining agent it stays routable, and gets
    // more as its requests end.
    if (error instanceof RequestError && error.code === AgentErrorCode.Busy) return 'busy';
    if (
      error instanceof ShutdownError ||
      error instanceof PeerUnsupportedError ||
      (error instanceof RequestError && error.code === AgentErrorCode.Draining)
    ) {
      // It will refuse the next ones too: route nothing more to it.
      if (this.entry !== undefined) this.entry.draining = true;
      return 'retry';
    }
    if (error instanceof DisconnectedError) {
      this.answer(TunnelErrorCode.AgentLost, 'agent-lost');
    } else if (error instanceof RequestError) {
      const code =
        error.code === AgentErrorCode.TargetUnreachable
          ? TunnelErrorCode.TargetUnreachable
          : error.code === AgentErrorCode.UpgradeUnsupported
            ? TunnelErrorCode.UpgradeUnsupportedByAgent
            : error.code === AgentErrorCode.HandlerFailed
              ? TunnelErrorCode.AgentHandlerFailed
              : TunnelErrorCode.BadAgentResponse;
      this.answer(code, 'agent-error');
    } else if (error instanceof InternalError) {
      this.answer(TunnelErrorCode.AgentHandlerFailed, 'agent-error');
    } else if (error instanceof CanceledError) {
      // We canceled it ourselves (timeout, user gone, body too large): already answered.
    } else {
      this.host.logger.error('unexpected tunnel error', { error });
      this.answer(TunnelErrorCode.BadAgentResponse, 'agent-error');
    }
    return 'done';
  }

  // ------------------------------------------------------------------ response (agent -> proxy)

  /** `tunnel.head` from the agent. Resolves (the ack) once the user's socket took the bytes. */
  onHead(head: ResponseHead): Promise<void> | undefined {
    if (this.finished) return undefined;
    if (this.headDone) {
      this.badAgent('second response head');
      return undefined;
    }
    if (!this.writeHead(head.status, head.headers)) return undefined;
    if (head.data === undefined || head.data.length === 0) return undefined;
    this.countOut(head.data.length);
    return this.init.sink.write(head.data);
  }

  /** `tunnel.chunk` from the agent. */
  onChunk(chunk: Chunk): Promise<void> | undefined {
    if (this.finished) return undefined;
    if (!this.headDone || chunk.seq !== this.expectSeq) {
      this.badAgent(this.headDone ? 'chunk out of order' : 'chunk before the head');
      return undefined;
    }
    this.expectSeq++;
    this.countOut(chunk.data.length);
    const written = this.init.sink.write(chunk.data);
    if (chunk.fin) {
      this.endSink();
      // An upgraded connection goes on in the other direction until the user ends it; an HTTP
      // response that ended leaves nothing to read of the request that the agent still wants.
      if (!this.init.upgrade) this.stopReading();
    }
    return written;
  }

  private writeHead(status: number, headers: readonly string[]): boolean {
    const switching = status === 101;
    if ((switching && !this.init.upgrade) || (status < 200 && !switching)) {
      this.badAgent(`status ${status} not allowed here`);
      return false;
    }
    try {
      this.init.sink.head(status, filterHeaders(headers, { upgrade: switching }));
    } catch {
      this.badAgent('invalid response head');
      return false;
    }
    this.headDone = true;
    clearTimeout(this.timer);
    this.status = status;
    this.host.metrics.answered(this.label, status, (performance.now() - this.startedAt) / 1000, this.init.fromPeer);
    return true;
  }

  private endSink(data?: Uint8Array): void {
    this.sinkEnded = true;
    this.init.sink.end(data);
  }

  private countOut(n: number): void {
    if (n === 0) return;
    this.bytesOut += n;
    this.host.metrics.bytesOut(this.label, n);
  }

  // ------------------------------------------------------------------ request body (proxy -> agent)

  private readInline(): Promise<Uint8Array> {
    const { source } = this.init;
    const chunks: Buffer[] = [...(this.init.replay ?? [])];
    let size = 0;
    for (const chunk of chunks) size += chunk.length;
    const replayed = size;
    return new Promise((resolve) => {
      const done = (): void => {
        source.off('data', onData);
        source.off('end', done);
        source.off('close', done);
        this.host.metrics.bytesIn(this.label, size - replayed);
        this.bodyBytes = size;
        // Less than announced: the user went away mid-body.
        if (size < this.init.inlineLength) this.abandon('user-gone');
        resolve(new Uint8Array(Buffer.concat(chunks, size)));
      };
      const onData = (chunk: Buffer): void => {
        // Content-Length bounds this (the HTTP parser delivers no more than it announced).
        chunks.push(chunk);
        size += chunk.length;
      };
      source.on('data', onData);
      source.once('end', done);
      // The user went away: onGone abandons the exchange; resolve so run() can return.
      source.once('close', done);
      // Paused by an attempt to forward it to a peer (the bytes it read are in the replay, and
      // the end too, when the body fitted in them): read it here.
      if (source.readableEnded) done();
      else if (source.readableFlowing === false) source.resume();
    });
  }

  private startPump(): void {
    if (this.pumping) return;
    this.pumping = true;
    this.window = new CreditWindow(this.host.streamWindow);

    const { source } = this.init;
    for (const chunk of this.init.replay ?? []) this.onBodyData(chunk, false);
    const onData = (chunk: Buffer): void => this.onBodyData(chunk);
    const onEnd = (): void => {
      this.bodyQueue.push(FIN);
      this.flush();
    };
    source.on('data', onData);
    source.once('end', onEnd);
    this.detachSource = () => {
      source.off('data', onData);
      source.off('end', onEnd);
    };
    // A request an attempt to forward it to a peer paused (the bytes it read are in the replay,
    // and the end too, which comes once, when the body fitted in them): read it here.
    if (source.readableEnded) onEnd();
    else if (source.readableFlowing === false) source.resume();
  }

  /** `fresh`: not a replayed one, which the forwarding attempt counted already. */
  private onBodyData(chunk: Buffer, fresh = true): void {
    if (this.finished || this.bodyDead) return;
    this.bodyTouched = true;
    this.bodyBytes += chunk.length;
    if (fresh) this.host.metrics.bytesIn(this.label, chunk.length);
    if (this.bodyBytes > this.init.maxBody) {
      this.tooLarge();
      return;
    }
    const size = this.host.chunkSize;
    if (chunk.length <= size) this.bodyQueue.push(chunk);
    else for (let at = 0; at < chunk.length; at += size) this.bodyQueue.push(chunk.subarray(at, at + size));
    this.flush();
  }

  /** Sends queued pieces while credit allows; otherwise pauses the source until it does. */
  private flush(): void {
    if (this.flushing) return;
    while (this.bodyQueue.length > 0) {
      if (this.finished || this.bodyDead) {
        this.bodyQueue.length = 0;
        return;
      }
      const entry = this.entry!;
      const controller = this.controller!;
      const piece = this.bodyQueue[0]!;
      const n = messageCost(piece === FIN ? 0 : piece.length);
      const window = this.window!;
      if (!tryAcquireBoth(window, entry.window, n)) {
        this.flushing = true;
        this.init.source.pause();
        acquireBoth(window, entry.window, n, controller).then(
          () => {
            this.flushing = false;
            this.bodyQueue.shift();
            this.sendPiece(entry, controller, piece, n);
            this.flush();
            if (!this.flushing && !this.finished) this.init.source.resume();
          },
          () => {
            this.flushing = false;
          },
        );
        return;
      }
      this.bodyQueue.shift();
      this.sendPiece(entry, controller, piece, n);
    }
  }

  private sendPiece(entry: AgentEntry, controller: Cancellation, piece: Piece, n: number): void {
    const fin = piece === FIN;
    // Once any body message went to an agent, the request can no longer be retried elsewhere.
    this.bodyTouched = true;
    const name = chunkName(MSG_BODY, this.sid, this.sendSeq++, fin);
    entry.conn.request(name, binary(fin ? EMPTY : piece), { signal: controller, timeout: 0 }).then(
      () => {
        this.window?.release(n);
        entry.window.release(n);
        // Progress: the agent is alive and reading; the answer deadline starts again.
        this.armTimer();
      },
      () => {
        this.window?.release(n);
        entry.window.release(n);
        // The agent stopped taking the body (it answered early, or the target went away): the
        // exchange's own reply decides what the user gets; the rest of the body is dropped.
        this.bodyDead = true;
      },
    );
  }

  private tooLarge(): void {
    this.bodyDead = true;
    this.controller?.abort();
    this.outcome = 'body-too-large';
    this.stopReading();
    // An unread body remains on the connection: the answer closes it, a peer's too. The
    // connection lingers (linger.ts), reading and dropping the rest for a while: closed at once,
    // the body still arriving would get it reset, and the reset lose the 413 (a forwarding proxy
    // would answer 502 instead). undici stops sending once it has the 413.
    this.failClosing(TunnelErrorCode.BodyTooLarge);
    this.finish();
  }

  /** An error answer (counted) that closes the connection; a cut-off response after the head. */
  private failClosing(code: TunnelErrorCode): void {
    if (!this.init.sink.headSent) {
      this.status = TUNNEL_ERROR_STATUS[code];
      const seconds = (performance.now() - this.startedAt) / 1000;
      this.host.metrics.answered(this.label, this.status, seconds, this.init.fromPeer);
    }
    this.init.sink.fail(code, true);
  }

  private stopReading(): void {
    this.detachSource?.();
    this.detachSource = undefined;
  }

  // ------------------------------------------------------------------ endings

  private armTimer(): void {
    clearTimeout(this.timer);
    if (this.headDone || this.finished) return;
    this.timer = setTimeout(() => {
      if (this.headDone || this.finished) return;
      this.controller?.abort();
      this.answer(TunnelErrorCode.AgentTimeout, 'timeout');
      this.finish();
    }, this.init.timeout);
  }

  private abandon(outcome: Outcome): void {
    if (this.finished || this.sinkEnded) return;
    this.outcome = outcome;
    this.controller?.abort();
    this.finish();
  }

  private badAgent(reason: string): void {
    this.host.logger.warn('invalid response from an agent', { id: this.init.id, agent: this.entry?.conn.id, reason });
    this.controller?.abort();
    this.answer(TunnelErrorCode.BadAgentResponse, 'bad-agent-response');
    this.finish();
  }

  /** An error answer, or a cut-off response when the head is already out. */
  private answer(code: TunnelErrorCode, outcome: Outcome): void {
    if (this.finished) return;
    this.outcome = outcome;
    const status = answerOrCut(this.init.sink, code);
    if (status === undefined) return;
    this.status = status;
    this.host.metrics.answered(this.label, status, (performance.now() - this.startedAt) / 1000, this.init.fromPeer);
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.timer);
    // Body chunks still unacked (the agent answered before reading the whole body): cancel
    // them, or they would hold their credit, and the agent connection's, for good.
    if (this.pumping) this.controller?.abort();
    this.stopReading();
    this.bodyQueue.length = 0;
    if (this.host.streams.get(this.sid) === this) this.host.streams.delete(this.sid);
    this.host.metrics.finished(this.label);
    this.host.ended(this);
    const ms = Math.round(performance.now() - this.startedAt);
    const context = {
      id: this.init.id,
      method: this.init.method,
      path: redactUrl(this.init.url),
      status: this.status,
      outcome: this.outcome,
      ms,
      bytesIn: this.bodyBytes,
      bytesOut: this.bytesOut,
      agent: this.entry?.conn.id,
    };
    if (this.outcome === 'ok' || this.outcome === 'user-gone') this.host.logger.info('request', context);
    else this.host.logger.warn('request', context);
  }

  get isFinished(): boolean {
    return this.finished;
  }
}

const EMPTY = new Uint8Array(0);
