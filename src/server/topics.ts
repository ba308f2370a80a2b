import { InvalidArgumentError } from '../errors.ts';

/** Longest topic name, in UTF-16 code units. */
export const MAX_TOPIC_LENGTH = 1024;

/** Throws InvalidArgumentError unless `topic` is a non-empty string of at most MAX_TOPIC_LENGTH. */
export function checkTopic(topic: string): void {
  if (typeof topic !== 'string' || topic.length === 0 || topic.length > MAX_TOPIC_LENGTH) {
    throw new InvalidArgumentError(
      `a topic must be a string of 1..${MAX_TOPIC_LENGTH} characters, got ${typeof topic === 'string' ? `${topic.length} characters` : typeof topic}`,
    );
  }
}

const NO_SUBSCRIBERS: ReadonlySet<never> = new Set();

/** What a TopicRegistry tells its owner. */
export interface TopicEvents {
  /** `topic` got its first subscriber. */
  first(topic: string): void;
  /** `topic` lost its last subscriber. */
  last(topic: string): void;
}

/**
 * Which connections subscribe to which topic, in this process: the server's half of pub/sub. Each
 * connection keeps its own set of topics (to leave them all when it closes); this keeps the
 * reverse map, so a publish touches only the subscribers. A topic without subscribers is removed,
 * so the map holds no more than the live subscriptions.
 */
export class TopicRegistry<Conn> {
  private readonly byTopic = new Map<string, Set<Conn>>();
  private readonly events: TopicEvents | undefined;

  /** `events` hears when a topic gets its first subscriber and loses its last (a bus listens then). */
  constructor(events?: TopicEvents) {
    this.events = events;
  }

  /** Adds `conn` to `topic`. */
  add(topic: string, conn: Conn): void {
    let set = this.byTopic.get(topic);
    if (set === undefined) {
      set = new Set();
      this.byTopic.set(topic, set);
      set.add(conn);
      this.events?.first(topic);
      return;
    }
    set.add(conn);
  }

  /** Removes `conn` from `topic`. */
  remove(topic: string, conn: Conn): void {
    const set = this.byTopic.get(topic);
    if (set === undefined || !set.delete(conn)) return;
    if (set.size > 0) return;
    this.byTopic.delete(topic);
    this.events?.last(topic);
  }

  /** The connections subscribed to `topic` (a live view: copy it to keep it). */
  subscribers(topic: string): ReadonlySet<Conn> {
    return this.byTopic.get(topic) ?? NO_SUBSCRIBERS;
  }

  /** The topics with at least one subscriber. */
  topics(): IterableIterator<string> {
    return this.byTopic.keys();
  }

  /** Number of topics with at least one subscriber. */
  get size(): number {
    return this.byTopic.size;
  }
}
