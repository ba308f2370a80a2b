/**
 * FileSessionManager beyond the shared contract: permissions, file names, atomic writes,
 * corrupt files, expiry and sweeping, hostile keys, and SIGKILL in the middle of writes.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError } from '../../src/errors.ts';
import type { Logger } from '../../src/logger.ts';
import { FileSessionManager, type FileSessionManagerOptions } from '../../src/session/file-store.ts';
import { defaultKeyGenerator, type Session, sessionFromJson, sessionToJson } from '../../src/session/session.ts';
import { assertSlidingExpiry, HOSTILE_KEYS, newSession, STORABLE_HOSTILE_KEYS } from './contract.ts';

const SESSION_FILE = /^[0-9a-f]{64}\.json$/;
const TEMP_FILE = /^\.[0-9a-f]{64}\.[0-9a-f]+\.tmp$/;
const WRITER = fileURLToPath(new URL('../fixtures/file-store-writer.ts', import.meta.url));
const POSIX = process.platform !== 'win32';

interface LogEntry {
  readonly level: string;
  readonly message: string;
  readonly context: Record<string, unknown> | undefined;
}

function recordingLogger(): Logger & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const at = (level: string) => (message: string, context?: Record<string, unknown>) => {
    entries.push({ level, message, context });
  };
  return { entries, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

const sha256 = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

/** A fresh parent directory (removed after the test); the store's dir is `<parent>/sessions`. */
async function tempParent(t: TestContext): Promise<string> {
  const parent = await mkdtemp(join(tmpdir(), 'duplexwire-file-store-'));
  t.after(() => rm(parent, { recursive: true, force: true }));
  return parent;
}

async function setup(
  t: TestContext,
  options: Partial<FileSessionManagerOptions> = {},
): Promise<{ manager: FileSessionManager; dir: string; parent: string; logger: ReturnType<typeof recordingLogger> }> {
  const parent = await tempParent(t);
  const logger = recordingLogger();
  const dir = join(parent, 'sessions');
  const manager = new FileSessionManager({ dir, logger, ...options });
  t.after(() => manager.close());
  return { manager, dir, parent, logger };
}

/** Every entry under `root` (recursively, except `skip`) with its type, size, mode and mtime. */
async function snapshot(root: string, skip?: string): Promise<Map<string, string>> {
  const result = new Map<string, string>();
  const walk = async (path: string, depth: number): Promise<void> => {
    if (depth > 8) return;
    for (const name of await readdir(path)) {
      const full = join(path, name);
      if (full === skip) continue;
      const stats = await lstat(full);
      result.set(full, `${stats.isDirectory() ? 'd' : 'f'} ${stats.size} ${stats.mode} ${stats.mtimeMs}`);
      if (stats.isDirectory()) await walk(full, depth + 1);
    }
  };
  await walk(root, 0);
  return result;
}

describe('FileSessionManager: permissions', { skip: POSIX ? false : 'POSIX modes only' }, () => {
  it('creates the directory (and missing parents) 0700 and session files 0600', async (t) => {
    const parent = await tempParent(t);
    const dir = join(parent, 'a', 'b', 'sessions');
    const manager = new FileSessionManager({ dir, logger: recordingLogger() });
    t.after(() => manager.close());
    const previous = process.umask(0); // the most permissive umask: modes must not depend on it
    try {
      const session = newSession({ x: 1 });
      await manager.onSessionCreated(session);
      await manager.onSessionLookup(session.key); // the write-back too
      assert.equal((await stat(dir)).mode & 0o777, 0o700);
      assert.equal((await stat(join(parent, 'a'))).mode & 0o777, 0o700);
      assert.equal((await stat(join(dir, `${sha256(session.key)}.json`))).mode & 0o777, 0o600);
    } finally {
      process.umask(previous);
    }
  });

  it('repairs an existing directory open to others, and says so', async (t) => {
    const { manager, dir, logger } = await setup(t);
    await mkdir(dir, { mode: 0o755 });
    await chmod(dir, 0o755);
    assert.equal(await manager.onSessionLookup(defaultKeyGenerator.generate()), null);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.ok(logger.entries.some((e) => e.level === 'warn' && e.context?.previousMode === '0755'));
  });

  it('leaves a private existing directory alone, silently', async (t) => {
    const { manager, dir, logger } = await setup(t);
    await mkdir(dir, { mode: 0o700 });
    await manager.onSessionCreated(newSession());
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.deepEqual(logger.entries, []);
  });
});

describe('FileSessionManager: files', () => {
  it('names each file by the SHA-256 of its key, never the key, and stores sessionToJson', async (t) => {
    const { manager, dir } = await setup(t);
    const sessions = [newSession({ a: 1 }), newSession(), newSession({ b: [] }, 'plain-key')];
    for (const s of sessions) await manager.onSessionCreated(s);
    const names = (await readdir(dir)).sort();
    assert.deepEqual(names, sessions.map((s) => `${sha256(s.key)}.json`).sort());
    for (const s of sessions) {
      assert.ok(!names.some((name) => name.includes(s.key)), 'no file name contains a key');
      assert.equal(await readFile(join(dir, `${sha256(s.key)}.json`), 'utf8'), sessionToJson(s));
    }
  });

  it('keeps the version as "v" once the info is updated; a file with a bad "v" is corrupt', async (t) => {
    const { manager, dir, logger } = await setup(t);
    const session = newSession({ a: 1 });
    await manager.onSessionCreated(session);
    const file = join(dir, `${sha256(session.key)}.json`);
    assert.equal((await manager.onSessionUpdate(session.key, { a: 2 }))?.version, 1);
    const text = await readFile(file, 'utf8');
    assert.equal(JSON.parse(text).v, 1);
    assert.deepEqual(sessionFromJson(text).info, { a: 2 }, 'still a session to a reader without versions');
    assert.equal((await manager.onSessionLookup(session.key))?.version, 1);

    for (const v of ['"1"', '-1', '1.5', 'null']) {
      await writeFile(file, text.replace('"v":1', `"v":${v}`), { mode: 0o600 });
      const before = logger.entries.length;
      assert.equal(await manager.onSessionLookup(session.key), null, `"v":${v}`);
      assert.equal(logger.entries[before]?.level, 'error');
    }
  });

  it('persists the new lastLookup of a lookup', async (t) => {
    const { manager, dir } = await setup(t);
    const old = new Date(Date.now() - 60_000);
    const session: Session = { key: defaultKeyGenerator.generate(), creation: old, lastLookup: old, info: undefined };
    await manager.onSessionCreated(session);
    const found = await manager.onSessionLookup(session.key);
    assert.ok(found && found.lastLookup > old);
    const stored = sessionFromJson(await readFile(join(dir, `${sha256(session.key)}.json`), 'utf8'));
    assert.equal(stored.lastLookup.getTime(), found.lastLookup.getTime());
  });

  it('leaves no temporary file behind after many concurrent writes', async (t) => {
    const { manager, dir } = await setup(t);
    const sessions = Array.from({ length: 200 }, (_, i) => newSession({ i }));
    await Promise.all(sessions.map((s) => manager.onSessionCreated(s)));
    await Promise.all(
      sessions.flatMap((s, i) => [manager.onSessionLookup(s.key), i % 3 === 0 ? manager.onSessionClosed(s.key) : null]),
    );
    const names = await readdir(dir);
    assert.ok(
      names.every((name) => SESSION_FILE.test(name)),
      `only session files: ${names.filter((n) => !SESSION_FILE.test(n))}`,
    );
    assert.equal(names.length, sessions.filter((_, i) => i % 3 !== 0).length);
  });

  it('works with a single open file at a time', async (t) => {
    const { manager, dir } = await setup(t, { maxOpenFiles: 1 });
    const sessions = Array.from({ length: 100 }, (_, i) => newSession({ i }));
    await Promise.all(sessions.map((s) => manager.onSessionCreated(s)));
    const found = await Promise.all(sessions.map((s) => manager.onSessionLookup(s.key)));
    assert.ok(found.every((f, i) => f?.info?.i === i));
    assert.equal((await readdir(dir)).length, 100);
  });

  it('rejects a failed write (not "not found") and removes its temporary file', async (t) => {
    const { manager, dir } = await setup(t);
    const session = newSession();
    await manager.onSessionLookup(defaultKeyGenerator.generate()); // creates dir
    // A directory where the session file should go: the rename fails, even for root.
    await mkdir(join(dir, `${sha256(session.key)}.json`));
    await assert.rejects(
      manager.onSessionCreated(session),
      (error: NodeJS.ErrnoException) => typeof error.code === 'string',
    );
    await assert.rejects(
      manager.onSessionLookup(session.key),
      (error: NodeJS.ErrnoException) => error.code === 'EISDIR',
    );
    assert.deepEqual(await readdir(dir), [`${sha256(session.key)}.json`], 'no temporary file left');
  });

  it('rejects while the directory cannot be created, and recovers once it can', async (t) => {
    const { manager, dir } = await setup(t);
    await writeFile(dir, 'a file where the directory should be');
    await assert.rejects(manager.onSessionLookup(defaultKeyGenerator.generate()));
    await assert.rejects(manager.onSessionCreated(newSession()));
    await rm(dir);
    const session = newSession({ ok: 1 });
    await manager.onSessionCreated(session);
    assert.deepEqual((await manager.onSessionLookup(session.key))?.info, { ok: 1 });
  });

  it('recreates its directory when it is removed while in use', async (t) => {
    const { manager, dir } = await setup(t);
    await manager.onSessionCreated(newSession());
    await rm(dir, { recursive: true });
    const session = newSession({ again: true });
    await manager.onSessionCreated(session);
    assert.deepEqual((await manager.onSessionLookup(session.key))?.info, { again: true });
    if (POSIX) assert.equal((await stat(dir)).mode & 0o777, 0o700);
  });

  it('treats a corrupt file as no session, logs it by file name only, and leaves it', async (t) => {
    const { manager, dir, logger } = await setup(t);
    const other = newSession({ other: true });
    const cases: [string, string][] = [
      ['garbage', 'this is not json {'],
      ['empty', ''],
      ['truncated', sessionToJson(newSession({ a: 1 })).slice(0, 40)],
      ['wrong shape', '{"k":1}'],
      ['bad time', '{"k":"x","c":"yesterday","l":"today"}'],
      ['another key', sessionToJson(other)],
    ];
    await manager.onSessionLookup(defaultKeyGenerator.generate()); // creates dir
    for (const [label, content] of cases) {
      const key = defaultKeyGenerator.generate();
      const file = join(dir, `${sha256(key)}.json`);
      await writeFile(file, content, { mode: 0o600 });
      const before = logger.entries.length;
      assert.equal(await manager.onSessionLookup(key), null, label);
      const entry = logger.entries[before];
      assert.equal(entry?.level, 'error', label);
      assert.equal(entry?.context?.file, file);
      assert.ok(
        !JSON.stringify(entry, (_, v) => (v instanceof Error ? v.message : v)).includes(key),
        'the key is not logged',
      );
      assert.equal(await readFile(file, 'utf8'), content, 'left in place');
    }
  });

  it('validates its options', () => {
    const bad: unknown[] = [
      undefined,
      {},
      { dir: '' },
      { dir: 42 },
      { dir: 'a\u0000b' },
      { dir: 'x', maxAge: 0 },
      { dir: 'x', maxAge: -1 },
      { dir: 'x', maxAge: 1.5 },
      { dir: 'x', maxAge: Number.NaN },
      { dir: 'x', maxAge: '1000' },
      { dir: 'x', sweepInterval: 1000 },
      { dir: 'x', maxAge: 1000, sweepInterval: 0 },
      { dir: 'x', maxAge: 1000, sweepInterval: 2 ** 31 },
      { dir: 'x', maxOpenFiles: 0 },
    ];
    for (const options of bad) {
      assert.throws(
        () => new FileSessionManager(options as FileSessionManagerOptions),
        InvalidArgumentError,
        JSON.stringify(options),
      );
    }
  });
});

describe('FileSessionManager: expiry', () => {
  const past = (ms: number): Date => new Date(Date.now() - ms);

  it('treats a session whose lastLookup is older than maxAge as absent, and deletes it', async (t) => {
    const { manager, dir } = await setup(t, { maxAge: 60_000 });
    const stale: Session = {
      key: defaultKeyGenerator.generate(),
      creation: past(200_000),
      lastLookup: past(61_000),
      info: undefined,
    };
    const fresh: Session = {
      key: defaultKeyGenerator.generate(),
      creation: past(200_000),
      lastLookup: past(59_000),
      info: undefined,
    };
    await manager.onSessionCreated(stale);
    await manager.onSessionCreated(fresh);
    assert.equal(await manager.onSessionLookup(stale.key), null);
    await assert.rejects(stat(join(dir, `${sha256(stale.key)}.json`)), { code: 'ENOENT' });
    assert.ok(await manager.onSessionLookup(fresh.key), 'within maxAge');
  });

  it('slides: each lookup restarts maxAge (mocked clock)', async (t) => {
    const { manager } = await setup(t, { maxAge: 600 });
    await assertSlidingExpiry(t, manager);
  });

  it('sweep() removes expired files, stale corrupt files and old temp files, nothing else', async (t) => {
    const { manager, dir } = await setup(t, { maxAge: 60_000 });
    const longAgo = (Date.now() - 120_000) / 1000;
    const stale: Session = {
      key: defaultKeyGenerator.generate(),
      creation: past(200_000),
      lastLookup: past(90_000),
      info: undefined,
    };
    const staleRecentMtime: Session = { ...stale, key: defaultKeyGenerator.generate() };
    const fresh = newSession();
    for (const s of [stale, staleRecentMtime, fresh]) await manager.onSessionCreated(s);
    const file = (key: string): string => join(dir, `${sha256(key)}.json`);
    await utimes(file(stale.key), longAgo, longAgo);
    await utimes(file(fresh.key), longAgo, longAgo); // old mtime, fresh content: kept

    const corrupt = join(dir, `${sha256('corrupt')}.json`);
    const oldTemp = join(dir, `.${sha256('a')}.0123abcd.tmp`);
    const newTemp = join(dir, `.${sha256('b')}.0123abcd.tmp`);
    const foreign = ['README', 'notes.json', `${sha256('c').toUpperCase()}.json`, `.${sha256('d')}.tmp`, 'sub'];
    await writeFile(corrupt, 'garbage');
    await writeFile(oldTemp, '{');
    await writeFile(newTemp, '{');
    for (const name of foreign) {
      if (name === 'sub') await mkdir(join(dir, name));
      else await writeFile(join(dir, name), 'not ours');
    }
    for (const path of [corrupt, oldTemp, ...foreign.map((name) => join(dir, name))])
      await utimes(path, longAgo, longAgo);

    assert.deepEqual(await manager.sweep(), { expired: 2, tempFiles: 1 });
    const names = new Set(await readdir(dir));
    assert.ok(!names.has(`${sha256(stale.key)}.json`), 'expired file removed');
    assert.ok(!names.has(`${sha256('corrupt')}.json`), 'stale corrupt file removed');
    assert.ok(!names.has(`.${sha256('a')}.0123abcd.tmp`), 'old temp file removed');
    assert.ok(names.has(`${sha256(fresh.key)}.json`), 'fresh session kept');
    assert.ok(names.has(`${sha256(staleRecentMtime.key)}.json`), 'recent mtime: not read yet (lookups refuse it)');
    assert.ok(names.has(`.${sha256('b')}.0123abcd.tmp`), 'recent temp file kept');
    for (const name of foreign) assert.ok(names.has(name), `foreign entry ${name} untouched`);
    assert.equal(await manager.onSessionLookup(staleRecentMtime.key), null);
  });

  it('sweeps by itself every sweepInterval, and stops on close()', async (t) => {
    const { manager, dir } = await setup(t, { maxAge: 1_000, sweepInterval: 20 });
    const longAgo = (Date.now() - 120_000) / 1000;
    const makeStale = async (): Promise<string> => {
      const s: Session = {
        key: defaultKeyGenerator.generate(),
        creation: past(10_000),
        lastLookup: past(5_000),
        info: undefined,
      };
      await manager.onSessionCreated(s);
      const path = join(dir, `${sha256(s.key)}.json`);
      await utimes(path, longAgo, longAgo);
      return path;
    };
    const first = await makeStale();
    const deadline = Date.now() + 3_000;
    while (Date.now() < deadline && (await stat(first).catch(() => null)) !== null) await sleep(10);
    await assert.rejects(stat(first), { code: 'ENOENT' }, 'swept within 3 s');

    await manager.close();
    const second = await makeStale();
    await sleep(150);
    assert.ok(await stat(second), 'no sweep after close()');
  });
});

describe('FileSessionManager: hostile keys', () => {
  it('touches nothing outside its directory whatever the key', async (t) => {
    const { manager, dir, parent } = await setup(t);
    // Bait where a key used as a path would land.
    await writeFile(join(parent, 'x'), 'bait');
    await writeFile(join(parent, 'x.json'), 'bait');
    await mkdir(join(parent, 'etc'));
    await writeFile(join(parent, 'etc', 'passwd'), 'bait');
    await manager.onSessionLookup(defaultKeyGenerator.generate()); // creates dir
    // Relative paths would land in the working directory: make it one the snapshot covers.
    const cwd = join(parent, 'cwd');
    await mkdir(cwd);
    const previousCwd = process.cwd();
    process.chdir(cwd);
    t.after(() => process.chdir(previousCwd));
    const before = await snapshot(parent, dir);
    const systemFile = POSIX ? await stat('/etc/passwd') : undefined;

    for (const key of HOSTILE_KEYS) {
      assert.equal(await manager.onSessionLookup(key), null, `lookup ${JSON.stringify(key)}`);
      await manager.onSessionClosed(key);
    }
    assert.deepEqual(await readdir(dir), [], 'nothing created by lookups or closes');

    for (const key of STORABLE_HOSTILE_KEYS) await manager.onSessionCreated(newSession({ key }, key));
    const names = await readdir(dir);
    assert.equal(names.length, STORABLE_HOSTILE_KEYS.length);
    assert.ok(names.every((name) => SESSION_FILE.test(name)));
    for (const key of STORABLE_HOSTILE_KEYS) {
      assert.equal((await manager.onSessionLookup(key))?.key, key);
      await manager.onSessionClosed(key);
    }
    await assert.rejects(manager.onSessionCreated(newSession({}, '')), InvalidArgumentError);
    await assert.rejects(manager.onSessionCreated(newSession({}, '\ud800')), InvalidArgumentError);

    assert.deepEqual(await readdir(dir), []);
    assert.deepEqual(await snapshot(parent, dir), before, 'the parent and working directories are unchanged');
    if (systemFile) assert.equal((await stat('/etc/passwd')).mtimeMs, systemFile.mtimeMs);
  });
});

describe('FileSessionManager: SIGKILL during 1,000 concurrent creations', () => {
  interface KillPlan {
    readonly label: string;
    /** The stdout line (prefix) after which to kill. */
    readonly after: string;
    readonly delay: number;
  }
  const plans: KillPlan[] = [
    { label: 'at once after started', after: 'started', delay: 0 },
    { label: '2 ms after started', after: 'started', delay: 2 },
    { label: '40 ms after started', after: 'started', delay: 40 },
    { label: 'mid-way, at progress 300', after: 'progress 300', delay: 0 },
  ];
  /**
   * How long a writer may take to print the line it is killed after: a bound for a writer that
   * hangs, not a wait. It was 15 s, with 60 s for the whole test; but a writer spends over a second
   * of CPU just starting (node, tsx, the sources) before its 1,000 writes, and a CPU second takes
   * five to seven on a loaded CI machine (two cores, a load of 10 to 13).
   */
  const WRITER_LIMIT = 60_000;

  function runWriter(t: TestContext, dir: string, plan: KillPlan): Promise<{ interrupted: boolean; lines: string[] }> {
    // stdin a pipe: the writer exits when it ends (fixtures/lifeline.ts).
    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', WRITER, dir], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    t.after(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const lines: string[] = [];
    let killed = false;
    return new Promise((resolve, reject) => {
      const guard = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`writer did not reach "${plan.after}" within ${WRITER_LIMIT} ms: ${lines.join(', ')}`));
      }, WRITER_LIMIT);
      let buffered = '';
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (chunk: string) => {
        buffered += chunk;
        let newline = buffered.indexOf('\n');
        while (newline >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          lines.push(line);
          if (!killed && line.startsWith(plan.after)) {
            killed = true;
            if (plan.delay === 0) child.kill('SIGKILL');
            else setTimeout(() => child.kill('SIGKILL'), plan.delay);
          }
          newline = buffered.indexOf('\n');
        }
      });
      void once(child, 'exit').then(([code, signal]) => {
        clearTimeout(guard);
        if (signal !== 'SIGKILL' && code !== 0) reject(new Error(`writer exited with ${code}`));
        else resolve({ interrupted: signal === 'SIGKILL' && !lines.includes('done'), lines });
      });
    });
  }

  it('leaves every session file parseable (or absent), bounded', {
    timeout: plans.length * WRITER_LIMIT,
  }, async (t) => {
    const parent = await tempParent(t);
    let interruptedRuns = 0;
    for (const [i, plan] of plans.entries()) {
      const dir = join(parent, `run-${i}`);
      const { interrupted, lines } = await runWriter(t, dir, plan);
      if (interrupted) interruptedRuns++;
      const names = await readdir(dir);
      const sessionFiles = names.filter((name) => name.endsWith('.json'));
      const others = names.filter((name) => !name.endsWith('.json'));
      for (const name of sessionFiles) {
        assert.match(name, SESSION_FILE);
        const session = sessionFromJson(await readFile(join(dir, name), 'utf8'));
        assert.equal(`${sha256(session.key)}.json`, name, 'content belongs to its file name');
        if (POSIX) assert.equal((await stat(join(dir, name))).mode & 0o777, 0o600);
      }
      for (const name of others) assert.match(name, TEMP_FILE, 'anything else is a temporary file');
      t.diagnostic(
        `${plan.label}: ${interrupted ? 'killed' : 'finished first'} after "${lines.at(-1) ?? '(nothing)'}": ` +
          `${sessionFiles.length} session files, ${others.length} temporary files`,
      );

      // A store over the survivors reads them all back.
      const manager = new FileSessionManager({ dir, logger: recordingLogger() });
      t.after(() => manager.close());
      for (const name of sessionFiles) {
        const { key } = sessionFromJson(await readFile(join(dir, name), 'utf8'));
        assert.equal((await manager.onSessionLookup(key))?.key, key);
      }
    }
    assert.ok(interruptedRuns > 0, 'at least one run was killed before it finished');
  });
});
