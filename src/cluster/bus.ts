/**
 * Scale-out of topics across server processes: a message bus (Redis pub/sub) carries each
 * `server.publish` to the other processes, which deliver it to their own subscribers. A process
 * listens to a topic's channel only while one of its connections subscribes to it.
 */
import { reconnectPolicy } from '../client/backoff.ts';
import { InvalidArgumentError } from '../errors.ts';
import { checkSessionVersion, type Session, sessionFromJsonValue, sessionToJsonValue } from '../session/session.ts';

/**
 * What `Server` needs from a bus: publish to a channel, and listen to channels. Every process that
 * listens to a channel gets what any process publishes to it (the publisher included: it ignores
 * its own messages). `redisTopicBus` makes one from Redis clients; any pub/sub system fits.
 *
 * Channels are topic names, and one more: the empty channel (`SESSIONS_CHANNEL`), which no topic
 * can be, where servers with sessions tell each other of sessions closed by key.
 */
export interface TopicBus {
  /** Sends `message` to the processes listening on `channel`. */
  publish(channel: string, message: Uint8Array): Promise<unknown>;
  /** Delivers the messages of `channel` to `listener` from now on (one listener per channel). */
  subscribe(channel: string, listener: (message: Uint8Array) => void): Promise<unknown>;
  /** Stops delivering `channel`. */
  unsubscribe(channel: string): Promise<unknown>;
}

/**
 * The part of a node-redis (v4 and later) client the Redis bus uses. Two clients: Redis puts a
 * connection that subscribes in a mode where it can do nothing else (`client.duplicate()`).
 */
export interface RedisPublisher {
  publish(channel: string, message: Buffer): Promise<unknown>;
}
export interface RedisSubscriber {
  subscribe(channel: string, listener: (message: Buffer, channel: Buffer) => void, bufferMode: true): Promise<unknown>;
  unsubscribe(
    channel: string,
    listener: (message: Buffer, channel: Buffer) => void,
    bufferMode: true,
  ): Promise<unknown>;
}

export interface RedisTopicBusOptions {
  /** Publishes (any connected client). */
  readonly publisher: RedisPublisher;
  /** Subscribes: a client of its own (`publisher.duplicate()`, connected). */
  readonly subscriber: RedisSubscriber;
  /** Put before every topic to make the channel name, so several applications share one Redis. @default 'duplexwire:topic:' */
  readonly prefix?: string;
}

/** @see RedisTopicBusOptions.prefix */
export const DEFAULT_TOPIC_CHANNEL_PREFIX = 'duplexwire:topic:';

/**
 * A bus over Redis pub/sub with node-redis clients.
 *
 * @example
 * import { createClient } from 'redis';
 * const publisher = await createClient({ url }).connect();
 * const subscriber = await publisher.duplicate().connect();
 * const server = new Server({ transport, bus: redisTopicBus({ publisher, subscriber }) });
 */
export function redisTopicBus(options: RedisTopicBusOptions): TopicBus {
  const { publisher, subscriber } = options;
  const prefix = options.prefix ?? DEFAULT_TOPIC_CHANNEL_PREFIX;
  // The listener given to node-redis for each channel, handed back when unsubscribing: node-redis
  // then removes only it (a subscriber client may serve several servers), and marks the channel
  // as leaving, so that a subscribe made before Redis confirmed the unsubscribe sends a SUBSCRIBE
  // of its own. Without a listener it would join the channel's old listeners, which node-redis
  // drops once the UNSUBSCRIBE is confirmed: the process would stop hearing that topic for good.
  const listeners = new Map<string, (message: Buffer) => void>();
  return {
    publish: (channel, message) =>
      publisher.publish(prefix + channel, Buffer.from(message.buffer, message.byteOffset, message.byteLength)),
    subscribe: (channel, listener) => {
      const wrapper = (message: Buffer): void => listener(message);
      listeners.set(channel, wrapper);
      return subscriber.subscribe(prefix + channel, wrapper, true);
    },
    unsubscribe: async (channel) => {
      const wrapper = listeners.get(channel);
      if (wrapper === undefined) return;
      await subscriber.unsubscribe(prefix + channel, wrapper, true);
      // Forgotten only once node-redis let go of it. An UNSUBSCRIBE that failed (the connection
      // broke) leaves the listener in node-redis, which subscribes it again after reconnecting:
      // the retry (BusSubscriptions) must hand it back, or the process stays subscribed, and a
      // later subscribe adds a second listener that hears every message again.
      if (listeners.get(channel) === wrapper) listeners.delete(channel);
    },
  };
}

/** First wait before a failed bus call is made again (then doubled per failure, with jitter). */
export const BUS_RETRY_FIRST_DELAY = 100;
/** Longest wait between two attempts of a failed bus call. */
export const BUS_RETRY_MAX_DELAY = 5_000;
/** The client's reconnect backoff, with the bus's delays: doubling, each drawn from 50-100%. */
const BUS_RETRY = reconnectPolicy({ initialDelay: BUS_RETRY_FIRST_DELAY, maxDelay: BUS_RETRY_MAX_DELAY });

interface TopicState {
  wanted: boolean;
  actual: boolean;
  busy: boolean;
  /** Failed calls in a row (for the backoff). */
  failures: number;
  /** The next attempt after a failure, if one is due. */
  retry: ReturnType<typeof setTimeout> | undefined;
}

/**
 * Keeps a process's subscriptions on a bus in line with the topics it has subscribers for, one
 * bus call at a time per topic: `want(topic, true)` when a topic gets its first subscriber,
 * `want(topic, false)` when it loses its last. Calls never overlap for a topic, so a bus never sees
 * an unsubscribe and a subscribe of one channel in flight together (node-redis mishandles that: a
 * quick leave and rejoin could leave the process deaf to the topic), and a burst of changes ends
 * in the state last wanted.
 *
 * A failed call is reported and made again, after 100 ms doubling up to 5 s (with jitter), until
 * it succeeds or is no longer wanted; a change of the topic tries again at once. Without this the
 * process would stay deaf to a topic for as long as it keeps a subscriber: node-redis rejects a
 * SUBSCRIBE still waiting for its reply when the connection breaks, and after reconnecting it
 * subscribes again only to the channels Redis had confirmed. `stop()` ends the retries.
 */
export class BusSubscriptions {
  readonly #bus: TopicBus;
  readonly #deliver: (topic: string, message: Uint8Array) => void;
  readonly #failed: (doing: string, topic: string, error: unknown) => void;
  readonly #topics = new Map<string, TopicState>();
  #stopped = false;

  constructor(
    bus: TopicBus,
    deliver: (topic: string, message: Uint8Array) => void,
    failed: (doing: string, topic: string, error: unknown) => void,
  ) {
    this.#bus = bus;
    this.#deliver = deliver;
    this.#failed = failed;
  }

  want(topic: string, wanted: boolean): void {
    let state = this.#topics.get(topic);
    if (state === undefined) {
      if (!wanted) return;
      state = { wanted, actual: false, busy: false, failures: 0, retry: undefined };
      this.#topics.set(topic, state);
    }
    state.wanted = wanted;
    // A change is made at once, a retry due or not.
    clearTimeout(state.retry);
    state.retry = undefined;
    if (!state.busy) void this.#settle(topic, state);
  }

  /**
   * No more retries: their timers are cleared (none outlives the server). Calls that `want` makes
   * from now on (the unsubscribes of a shutdown) are still made, once.
   */
  stop(): void {
    this.#stopped = true;
    for (const state of this.#topics.values()) {
      clearTimeout(state.retry);
      state.retry = undefined;
    }
  }

  async #settle(topic: string, state: TopicState): Promise<void> {
    state.busy = true;
    while (state.wanted !== state.actual) {
      const subscribing = state.wanted;
      try {
        await (subscribing
          ? this.#bus.subscribe(topic, (message) => this.#deliver(topic, message))
          : this.#bus.unsubscribe(topic));
        state.actual = subscribing;
        state.failures = 0;
      } catch (error) {
        this.#failed(subscribing ? 'subscribing' : 'unsubscribing', topic, error);
        if (!this.#stopped && state.wanted !== state.actual) this.#retryLater(topic, state);
        break;
      }
    }
    state.busy = false;
    if (!state.wanted && !state.actual && state.retry === undefined) this.#topics.delete(topic);
  }

  #retryLater(topic: string, state: TopicState): void {
    state.failures++;
    // Jittered: the processes that lost Redis together do not all come back at the same moment.
    const delay = BUS_RETRY.delay(state.failures);
    state.retry = setTimeout(() => {
      state.retry = undefined;
      if (!state.busy) void this.#settle(topic, state);
    }, delay);
    state.retry.unref?.();
  }
}

/**
 * The channel of session changes made by key (`server.closeSession(key)`, `updateSession`):
 * empty, which no topic can be. A message on it is a bus message whose body starts with its
 * kind: `[SESSION_CLOSED u8][session key (UTF-8)]` or `[SESSION_UPDATED u8][session JSON (UTF-8)]`
 * (the `sessionToJson` form, which holds the key, plus `"v"`, the session's version, when the store
 * keeps versions: see `sessionUpdatedJson`). A server that does not know a kind logs and
 * ignores it, so servers of different versions can share a bus.
 */
export const SESSIONS_CHANNEL = '';
/** On `SESSIONS_CHANNEL`: a session was closed by key. */
const SESSION_CLOSED = 1;
/** On `SESSIONS_CHANNEL`: a session's info was replaced; the body carries the session as stored. */
const SESSION_UPDATED = 2;

/** The body of a bus message telling that the session `key` was closed. */
export function encodeSessionClosedBody(key: string): Uint8Array {
  return sessionBody(SESSION_CLOSED, key);
}

/** The key of a session-closed body, or undefined for anything else. */
export function decodeSessionClosedBody(body: Uint8Array): string | undefined {
  return sessionBodyText(body, SESSION_CLOSED);
}

/** The body of a bus message telling that a session is now `json` (its `sessionToJson` form). */
export function encodeSessionUpdatedBody(json: string): Uint8Array {
  return sessionBody(SESSION_UPDATED, json);
}

/** The session JSON of a session-updated body (not checked as a session), or undefined for anything else. */
export function decodeSessionUpdatedBody(body: Uint8Array): string | undefined {
  return sessionBodyText(body, SESSION_UPDATED);
}

/**
 * The session JSON of a session-updated body: the `sessionToJson` form, plus `"v"` when the
 * session has a `version`. A receiver applies an update only when it is newer than the session its
 * connections hold (see `Session.version`): two servers updating one session at once each
 * publish, and a third may hear them in either order. Servers of releases without versions ignore
 * `"v"` (unknown members are), and what they send has none, which is applied as before.
 */
export function sessionUpdatedJson(session: Session): string {
  const json = sessionToJsonValue(session);
  return JSON.stringify(session.version === undefined ? json : { ...json, v: session.version });
}

/** The session, with its version when there is a valid `"v"`, of `sessionUpdatedJson` text. Throws InvalidArgumentError. */
export function sessionFromUpdatedJson(text: string): Session {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new InvalidArgumentError('session JSON is not valid JSON', { cause: error });
  }
  const session = sessionFromJsonValue(value);
  const version = checkSessionVersion((value as { v?: unknown }).v);
  return version === undefined ? session : { ...session, version };
}

/** `[kind u8][text (UTF-8)]`. */
function sessionBody(kind: number, text: string): Uint8Array {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(1 + bytes.length);
  out[0] = kind;
  out.set(bytes, 1);
  return out;
}

/** The text of a body of this kind, or undefined for another kind, no text or invalid UTF-8. */
function sessionBodyText(body: Uint8Array, kind: number): string | undefined {
  if (body.length < 2 || body[0] !== kind) return undefined;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(body.subarray(1));
  } catch {
    return undefined;
  }
}

/** First byte of a bus message: the format's version. */
const BUS_FORMAT = 1;

/**
 * A bus message: `[format u8][origin length u8][origin (ASCII)][body]`, the body being the
 * encoded signal of a publish (or, on `SESSIONS_CHANNEL`, a session-closed or session-updated body).
 */
export function encodeBusMessage(origin: string, signal: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + origin.length + signal.length);
  out[0] = BUS_FORMAT;
  out[1] = origin.length;
  for (let i = 0; i < origin.length; i++) out[2 + i] = origin.charCodeAt(i);
  out.set(signal, 2 + origin.length);
  return out;
}

/** The origin and signal of a bus message, or undefined for anything else. */
export function decodeBusMessage(message: Uint8Array): { origin: string; signal: Uint8Array } | undefined {
  if (message.length < 2 || message[0] !== BUS_FORMAT) return undefined;
  const length = message[1]!;
  if (message.length < 2 + length + 1) return undefined;
  let origin = '';
  for (let i = 0; i < length; i++) origin += String.fromCharCode(message[2 + i]!);
  return { origin, signal: message.subarray(2 + length) };
}
