/**
 * The one way tests launch a browser: Debian's Chromium (`/usr/bin/chromium`) driven by
 * playwright-core, headless, with a fresh profile per launch. Outside CI the browser tests are
 * skipped when Chromium is not installed; under CI=true (where `.ci/run` installs it) they must run.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { type BrowserContext, chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The `skip` option of a test that needs Chromium: the reason, or false. */
export const skipWithoutChromium: string | false =
  process.env.CI !== 'true' && !existsSync(CHROMIUM)
    ? `no Chromium at ${CHROMIUM} (apt-get install chromium); these tests must run under CI=true`
    : false;

/** One Chromium with a fresh profile, closed (and its profile removed) after the test `t`. */
export async function launchChromium(t: TestContext): Promise<BrowserContext> {
  const profile = mkdtempSync(join(tmpdir(), 'duplexwire-chromium-'));
  let context: BrowserContext | undefined;
  // One hook, in this order: Chromium writes its profile until it exits.
  t.after(async () => {
    await context?.close();
    rmSync(profile, { recursive: true, force: true });
  });
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  return context;
}
