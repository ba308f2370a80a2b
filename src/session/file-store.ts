/**
 * Sessions as files in one directory: the default embedded store (no server to run).
 *
 * Fixes the reference's file store (WebWire v2 reference, "Known defects"): it named files by the
 * client-sent key (path traversal) and created its directory with mode 0640 (no search bit, so
 * every lookup failed for a non-root user). Here:
 * - a file is named by the SHA-256 of the key (`key-hash.ts`), never by the key, so no key can
 *   reach outside the directory and a directory listing reveals no key;
 * - the directory is 0700 and files 0600: a session key is a bearer credential;
 * - writes go to a temporary file that is fsync'd and then renamed over the session file, so a
 *   crash (even SIGKILL or power loss) leaves the old or the new content, never a torn file.
 *   The directory itself is not fsync'd: after a power loss a just-written session may be missing
 *   or hold its previous last-lookup time, but is never corrupt;
 * - operations on one key run one at a time (`keyed-queue.ts`), so a lookup's write-back cannot
 *   resurrect a session closed meanwhile.
 *
 * One process per directory, one manager per directory in it. The per-key ordering is in memory,
 * and the store has no `onSessionAttach` / `onSessionDetach`: each `Server` counts its own
 * connections (several sharing one manager keep its writes in order, but count, and delete on
 * close, each for itself, as below). Several processes sharing one
 * directory never corrupt a file, but nothing between them is atomic:
 * - `maxSessionConnections` holds per process (N processes: up to N times the limit);
 * - a close deletes the file when the closing process has no connection left on the session,
 *   though others may have: their connections keep it in memory, and fail to restore it later;
 * - a lookup in one process may write back a session another has just closed (resurrecting it);
 * - two updates in two processes may both read version n and both write n + 1, so one is lost
 *   and `Session.version` no longer orders them.
 * Shared counts are deliberately not built on files: it would take a cross-process lock around
 * every read-modify-write (Node has no `flock`; lock files need stale-lock recovery after a crash,
 * guessed from timestamps, and are unreliable on network filesystems, which is where a shared
 * directory would live), and counts of a process that died would stay forever without the
 * expiring presence `RedisSessionManager` keeps. For several processes use `RedisSessionManager`
 * (with `redisTopicBus`).
 */
import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { InvalidArgumentError } from '../errors.ts';
import { consoleLogger, type Logger } from '../logger.ts';
import { checkInteger, MAX_TIMER_DELAY } from '../util/validate.ts';
import { sessionKeyHash } from './key-hash.ts';
import { KeyedQueue } from './keyed-queue.ts';
import {
  checkSessionInfo,
  checkSessionVersion,
  type Session,
  type SessionManager,
  sessionFromJsonValue,
  sessionToJson,
  sessionToJsonValue,
} from './session.ts';

/** Longest sweep period when `sweepInterval` is not given. @default 60 s */
export const DEFAULT_SWEEP_INTERVAL = 60_000;
/**
 * Shortest sweep period when `sweepInterval` is not given: sweeping only reclaims disk space
 * (lookups enforce `maxAge` themselves), so a tiny `maxAge` need not mean a busy timer.
 * @default 1 s
 */
export const MIN_DEFAULT_SWEEP_INTERVAL = 1_000;
/** Session files open at once; bounds file descriptors in a burst of restores. @default 64 */
export const DEFAULT_MAX_OPEN_FILES = 64;
/**
 * Age after which the sweep removes a temporary file: left by a process killed mid-write. Writes
 * take milliseconds, so a minute-old one belongs to nobody, even with processes sharing the directory.
 */
export const STALE_TEMP_FILE_AGE = 60_000;

/** `<sha256 hex>.json`: a session file. */
const SESSION_FILE = /^([0-9a-f]{64})\.json$/;
/** `.<sha256 hex>.<random hex>.tmp`: a write in progress (or abandoned). Never `*.json`. */
const TEMP_FILE = /^\.[0-9a-f]{64}\.[0-9a-f]+\.tmp$/;

export interface FileSessionManagerOptions {
  /**
   * Directory of the session files, created (mode 0700, with any missing parents) on first use.
   * If it exists with permissions for group or others, it is changed to 0700 and a warning is
   * logged. Give the store a directory of its own, used by this process only (see the module
   * comment: several processes sharing it count connections, and order writes, each on their own).
   */
  readonly dir: string;
  /**
   * Milliseconds after its last lookup when a session expires: a lookup treats it as absent and
   * deletes it, and a periodic sweep deletes the files of expired sessions.
   * @default undefined (sessions never expire; no sweep runs)
   */
  readonly maxAge?: number;
  /**
   * Milliseconds between sweeps; only with `maxAge`. A sweep deletes expired session files and
   * temporary files older than a minute. The timer does not keep the process alive.
   * @default min(maxAge, 60 s), and at least 1 s
   */
  readonly sweepInterval?: number;
  /** Files the store has open at once. @default DEFAULT_MAX_OPEN_FILES (64) */
  readonly maxOpenFiles?: number;
  /** Where corrupt files and sweep failures are reported. @default consoleLogger */
  readonly logger?: Logger;
}

/** What one sweep removed. */
export interface SweepResult {
  /** Files of expired sessions. */
  readonly expired: number;
  /** Abandoned temporary files. */
  readonly tempFiles: number;
}

/**
 * A session file's text: the `sessionToJson` form, plus `"v"` (its `version`) once the info was
 * updated. A version-0 session is exactly `sessionToJson`, as files were before versions; earlier
 * releases ignore the unknown `"v"`.
 */
function fileText(session: Session): string {
  const version = session.version ?? 0;
  return version === 0 ? sessionToJson(session) : JSON.stringify({ ...sessionToJsonValue(session), v: version });
}

/** The session in a file's text, with its version (0 without `"v"`). Throws InvalidArgumentError. */
function fromFileText(text: string): Session {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new InvalidArgumentError('session file is not valid JSON', { cause: error });
  }
  const session = sessionFromJsonValue(value);
  const v = (value as { v?: unknown }).v;
  const version = v === undefined ? 0 : checkSessionVersion(v);
  if (version === undefined) throw new InvalidArgumentError('session file "v" must be a non-negative integer');
  return { ...session, version };
}

function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | null)?.code === 'ENOENT';
}

/**
 * A `SessionManager` keeping each session in `<dir>/<sha256(key)>.json` (the `sessionToJson`
 * form, with `"v"` once updated: see `fileText`). Store failures (permissions, disk full) reject; a missing, expired or corrupt file is
 * "no session" (corrupt files are logged and left in place for inspection).
 *
 * @example
 * const sessions = new FileSessionManager({ dir: '/var/lib/myapp/sessions', maxAge: 7 * 86_400_000 });
 * // ... at shutdown:
 * await sessions.close();
 */
export class FileSessionManager implements SessionManager {
  readonly #dir: string;
  readonly #maxAge: number | undefined;
  readonly #maxOpenFiles: number;
  readonly #logger: Logger;
  readonly #queue = new KeyedQueue();
  #ready: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #sweeping: Promise<SweepResult> | undefined;
  #openFiles = 0;
  readonly #waitingForFile: (() => void)[] = [];

  constructor(options: FileSessionManagerOptions) {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('options must be an object');
    const { dir, maxAge, sweepInterval, maxOpenFiles, logger } = options;
    if (typeof dir !== 'string' || dir.length === 0 || dir.includes('\0')) {
      throw new InvalidArgumentError('option dir must be a non-empty path');
    }
    // Absolute now, so a later process.chdir() cannot move the store.
    this.#dir = resolve(dir);
    this.#maxAge = maxAge === undefined ? undefined : checkInteger('maxAge', maxAge, 1, Number.MAX_SAFE_INTEGER);
    this.#maxOpenFiles = checkInteger('maxOpenFiles', maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES, 1, 65_536);
    this.#logger = logger ?? consoleLogger;
    if (sweepInterval !== undefined) {
      if (this.#maxAge === undefined) throw new InvalidArgumentError('option sweepInterval needs maxAge');
      checkInteger('sweepInterval', sweepInterval, 1, MAX_TIMER_DELAY);
    }
    if (this.#maxAge !== undefined) {
      const interval =
        sweepInterval ?? Math.max(MIN_DEFAULT_SWEEP_INTERVAL, Math.min(this.#maxAge, DEFAULT_SWEEP_INTERVAL));
      this.#timer = setInterval(() => void this.#sweepLogged(), interval);
      this.#timer.unref();
    }
  }

  /** The absolute path of the session directory. */
  get dir(): string {
    return this.#dir;
  }

  async onSessionCreated(session: Session): Promise<void> {
    const text = fileText({ ...session, version: 0 }); // validates the session, key included
    const hash = sessionKeyHash(session.key)!;
    await this.#prepare();
    await this.#queue.run(hash, () => this.#withFile(() => this.#write(hash, text)));
  }

  async onSessionLookup(key: string): Promise<Session | null> {
    // Never backwards, even if the clock is: lastLookup only grows.
    const written = await this.#rewrite(key, (stored, now) => ({
      ...stored,
      lastLookup: new Date(Math.max(now, stored.lastLookup.getTime())),
    }));
    return written?.session ?? null;
  }

  /**
   * Replaces the info of a stored session: read, then written back whole with the same atomic
   * write-then-rename as every write, under the key's queue (a concurrent lookup or close of the
   * session runs before or after it, never in between). lastLookup is kept; the version goes up
   * by one, in that same write.
   */
  async onSessionUpdate(key: string, info: Readonly<Record<string, unknown>> | undefined): Promise<Session | null> {
    checkSessionInfo(info);
    const written = await this.#rewrite(key, (stored) => ({ ...stored, info, version: (stored.version ?? 0) + 1 }));
    return written === null ? null : fromFileText(written.text);
  }

  /**
   * Under the key's queue: the live session `key` as `change` makes it from the stored one,
   * written back; null when there is none (an expired one is removed).
   */
  async #rewrite(
    key: string,
    change: (stored: Session, now: number) => Session,
  ): Promise<{ session: Session; text: string } | null> {
    const hash = sessionKeyHash(key);
    if (hash === undefined) return null;
    await this.#prepare();
    return this.#queue.run(hash, () =>
      this.#withFile(async () => {
        const stored = await this.#read(hash);
        if (stored === null || stored.key !== key) return null;
        const now = Date.now();
        if (this.#isExpired(stored, now)) {
          await this.#remove(hash);
          return null;
        }
        const session = change(stored, now);
        const text = fileText(session);
        await this.#write(hash, text);
        return { session, text };
      }),
    );
  }

  async onSessionClosed(key: string): Promise<void> {
    const hash = sessionKeyHash(key);
    if (hash === undefined) return;
    await this.#prepare();
    await this.#queue.run(hash, () => this.#withFile(() => this.#remove(hash)));
  }

  /**
   * Deletes the files of expired sessions (with `maxAge`; also corrupt files not modified for
   * `maxAge`) and abandoned temporary files older than a minute. Runs by itself every `sweepInterval`; call it directly to sweep now, e.g. once
   * at startup when there is no `maxAge`. Concurrent calls share one sweep.
   */
  sweep(): Promise<SweepResult> {
    this.#sweeping ??= this.#sweep().finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  /** Stops the sweep timer and waits for running operations. The store stays usable. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#sweeping?.catch(() => {});
    await this.#queue.idle();
  }

  // -------------------------------------------------------------------------------------------

  /** Creates the directory, or repairs its mode; retried on the next call if it failed. */
  #prepare(): Promise<void> {
    this.#ready ??= this.#prepareDir().catch((error: unknown) => {
      this.#ready = undefined;
      throw error;
    });
    return this.#ready;
  }

  async #prepareDir(): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const stats = await stat(this.#dir);
    if (!stats.isDirectory()) throw new InvalidArgumentError(`session dir ${this.#dir} is not a directory`);
    // Windows has no such mode bits (stat reports 0o666/0o777 whatever the ACLs say).
    if (process.platform !== 'win32' && (stats.mode & 0o077) !== 0) {
      // Fails (EPERM) when another user owns the directory: then the store refuses to work.
      await chmod(this.#dir, 0o700);
      this.#logger.warn('session directory was open to other users; its mode is now 0700', {
        dir: this.#dir,
        previousMode: `0${(stats.mode & 0o777).toString(8)}`,
      });
    }
  }

  /** Runs `task` once fewer than `maxOpenFiles` tasks are running. */
  async #withFile<T>(task: () => Promise<T>): Promise<T> {
    if (this.#openFiles < this.#maxOpenFiles) this.#openFiles++;
    else await new Promise<void>((resolve) => this.#waitingForFile.push(resolve));
    try {
      return await task();
    } finally {
      // Hand the slot straight to the next waiter, so a newcomer cannot overtake it.
      const next = this.#waitingForFile.shift();
      if (next === undefined) this.#openFiles--;
      else next();
    }
  }

  #path(hash: string): string {
    return join(this.#dir, `${hash}.json`);
  }

  #isExpired(session: Session, now: number): boolean {
    return this.#maxAge !== undefined && now - session.lastLookup.getTime() > this.#maxAge;
  }

  /** Writes atomically: temp file (0600, exclusive create), fsync, rename over the session file. */
  async #write(hash: string, text: string): Promise<void> {
    const temp = join(this.#dir, `.${hash}.${randomBytes(8).toString('hex')}.tmp`);
    // 'wx' = O_CREAT|O_EXCL: never reuses, truncates or follows (symlink) an existing entry.
    const handle = await open(temp, 'wx', 0o600).catch(async (error: unknown) => {
      if (!isNotFound(error)) throw error;
      // The directory was removed under us (a cleanup job, an operator): make it again, once.
      this.#ready = undefined;
      await this.#prepare();
      return open(temp, 'wx', 0o600);
    });
    try {
      try {
        await handle.writeFile(text, 'utf8');
        // Without it, a power loss after the rename can leave an empty file (delayed allocation).
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(temp, this.#path(hash));
    } catch (error) {
      await unlink(temp).catch(() => {});
      throw error;
    }
  }

  /**
   * The stored session, or null when the file is missing or unusable. An unusable file (not a
   * session, or the session of another key: edited or copied by hand) is logged, by file name
   * only: the key is a credential and never goes to the logs.
   */
  async #read(hash: string): Promise<Session | null> {
    const path = this.#path(hash);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
    try {
      const session = fromFileText(text);
      if (sessionKeyHash(session.key) !== hash)
        throw new InvalidArgumentError('session key does not match the file name');
      fileText(session); // the write-back must not fail later (e.g. a year outside 0000..9999)
      return session;
    } catch (error) {
      this.#logger.error('ignoring a corrupt session file', { file: path, error });
      return null;
    }
  }

  /** Deletes the session file; false when there was none. */
  async #remove(hash: string): Promise<boolean> {
    try {
      await unlink(this.#path(hash));
      return true;
    } catch (error) {
      if (isNotFound(error)) return false;
      throw error;
    }
  }

  async #sweepLogged(): Promise<void> {
    try {
      const { expired, tempFiles } = await this.sweep();
      if (expired + tempFiles > 0) this.#logger.debug('session sweep', { dir: this.#dir, expired, tempFiles });
    } catch (error) {
      this.#logger.error('session sweep failed', { dir: this.#dir, error });
    }
  }

  async #sweep(): Promise<SweepResult> {
    await this.#prepare();
    const names = await this.#withFile(() => readdir(this.#dir));
    let expired = 0;
    let tempFiles = 0;
    // One file at a time: a sweep is background work and must not crowd out lookups.
    for (const name of names) {
      const session = SESSION_FILE.exec(name);
      if (session !== null) {
        if (this.#maxAge !== undefined && (await this.#sweepSession(session[1]!, this.#maxAge))) expired++;
      } else if (TEMP_FILE.test(name)) {
        if (await this.#sweepTempFile(join(this.#dir, name))) tempFiles++;
      }
      // Anything else in the directory is not ours: never touched.
    }
    return { expired, tempFiles };
  }

  async #sweepSession(hash: string, maxAge: number): Promise<boolean> {
    // Every write stamps the file, so a recently modified file needs no reading. A file whose
    // content is older than its mtime is still refused by lookups, and swept once its mtime ages.
    const stats = await this.#withFile(() => lstat(this.#path(hash))).catch((error: unknown) => {
      if (isNotFound(error)) return null;
      throw error;
    });
    if (stats === null || Date.now() - stats.mtimeMs <= maxAge) return false;
    // Re-read under the key's queue: a lookup may have refreshed it since the stat.
    return this.#queue.run(hash, () =>
      this.#withFile(async () => {
        const stored = await this.#read(hash);
        // A corrupt file (logged by #read) not written for maxAge cannot hold a live session.
        if (stored !== null && !this.#isExpired(stored, Date.now())) return false;
        return this.#remove(hash);
      }),
    );
  }

  async #sweepTempFile(path: string): Promise<boolean> {
    return this.#withFile(async () => {
      try {
        const stats = await lstat(path);
        if (!stats.isFile() || Date.now() - stats.mtimeMs <= STALE_TEMP_FILE_AGE) return false;
        await unlink(path);
        return true;
      } catch (error) {
        if (isNotFound(error)) return false;
        throw error;
      }
    });
  }
}
