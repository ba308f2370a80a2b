/**
 * A minimal Redis command client (RESP2 over TCP or TLS) for the command line, where no Redis
 * package can be assumed: `{ sendCommand(args) }`, as the tunnel's `cluster.client` and
 * `RedisSessionManager` take it. Commands are pipelined on one connection and answered in order;
 * a connection that fails rejects every command in flight, and the next command dials again.
 * Applications should pass their own client (node-redis, ioredis) instead.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

/** A Redis error reply (`-ERR ...`). */
export class RedisReplyError extends Error {
  override readonly name = 'RedisReplyError';
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

const CONNECT_TIMEOUT = 5_000;

/** Parses one reply at `at`; returns it and the offset after it, or undefined when incomplete. */
function parse(buf: Buffer, at: number): { value: unknown; next: number } | undefined {
  if (at >= buf.length) return undefined;
  const end = buf.indexOf('\r\n', at);
  if (end < 0) return undefined;
  const type = buf[at];
  const line = buf.toString('utf8', at + 1, end);
  switch (type) {
    case 0x2b: // +
      return { value: line, next: end + 2 };
    case 0x2d: // -
      return { value: new RedisReplyError(line), next: end + 2 };
    case 0x3a: // :
      return { value: Number(line), next: end + 2 };
    case 0x24: {
      // $
      const length = Number(line);
      if (length < 0) return { value: null, next: end + 2 };
      if (buf.length < end + 2 + length + 2) return undefined;
      return { value: buf.toString('utf8', end + 2, end + 2 + length), next: end + 2 + length + 2 };
    }
    case 0x2a: {
      // *
      const count = Number(line);
      if (count < 0) return { value: null, next: end + 2 };
      const items: unknown[] = [];
      let next = end + 2;
      for (let i = 0; i < count; i++) {
        const item = parse(buf, next);
        if (item === undefined) return undefined;
        items.push(item.value);
        next = item.next;
      }
      return { value: items, next };
    }
    default:
      throw new RedisReplyError(`unexpected reply type ${JSON.stringify(String.fromCharCode(type ?? 0))}`);
  }
}

function encode(args: readonly string[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = Buffer.from(arg, 'utf8');
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

export class RespClient {
  private readonly url: URL;
  private socket: Socket | undefined;
  private ready: Promise<Socket> | undefined;
  private buffer: Buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private closed = false;

  /** `redis://[user:password@]host[:6379][/db]` or `rediss://` for TLS. */
  constructor(url: string) {
    this.url = new URL(url);
    if (this.url.protocol !== 'redis:' && this.url.protocol !== 'rediss:')
      throw new RangeError(`a Redis URL starts with redis:// or rediss://, got ${JSON.stringify(this.url.protocol)}`);
  }

  async sendCommand(args: string[]): Promise<unknown> {
    const socket = await this.connection();
    return this.send(socket, args);
  }

  /** Closes the connection; commands in flight are rejected. */
  close(): void {
    this.closed = true;
    this.socket?.destroy();
  }

  private send(socket: Socket, args: readonly string[]): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      socket.write(encode(args));
    });
  }

  private connection(): Promise<Socket> {
    if (this.closed) return Promise.reject(new Error('the Redis client is closed'));
    this.ready ??= this.dial().catch((error: unknown) => {
      this.ready = undefined;
      throw error;
    });
    return this.ready;
  }

  private async dial(): Promise<Socket> {
    const { hostname, port, protocol, username, password, pathname } = this.url;
    const host = hostname.replace(/^\[|\]$/g, '') || '127.0.0.1';
    const options = { host, port: Number(port || 6379) };
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s: Socket =
        protocol === 'rediss:'
          ? tlsConnect({ ...options, servername: host }, () => resolve(s))
          : netConnect(options, () => resolve(s));
      s.setTimeout(CONNECT_TIMEOUT, () => s.destroy(new Error(`no connection to Redis within ${CONNECT_TIMEOUT} ms`)));
      s.once('error', reject);
    });
    socket.setTimeout(0);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => {});
    socket.once('close', () => {
      if (this.socket === socket) {
        this.socket = undefined;
        this.ready = undefined;
        this.buffer = Buffer.alloc(0);
      }
      const error = new Error('the connection to Redis closed');
      for (const p of this.pending.splice(0)) p.reject(error);
    });
    this.socket = socket;
    if (password) {
      const auth = username
        ? [decodeURIComponent(username), decodeURIComponent(password)]
        : [decodeURIComponent(password)];
      await this.checked(this.send(socket, ['AUTH', ...auth]));
    }
    const db = pathname.replace(/^\//, '');
    if (db !== '') await this.checked(this.send(socket, ['SELECT', db]));
    return socket;
  }

  private async checked(reply: Promise<unknown>): Promise<void> {
    const value = await reply;
    if (value instanceof Error) throw value;
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    let at = 0;
    try {
      for (;;) {
        const reply = parse(this.buffer, at);
        if (reply === undefined) break;
        at = reply.next;
        const p = this.pending.shift();
        if (reply.value instanceof RedisReplyError) p?.reject(reply.value);
        else p?.resolve(reply.value);
      }
    } catch (error) {
      this.socket?.destroy(error as Error);
      return;
    }
    this.buffer = at === this.buffer.length ? Buffer.alloc(0) : this.buffer.subarray(at);
  }
}
