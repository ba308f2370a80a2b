/**
 * What the standalone benchmarks (tunnel.ts, wsproxy.ts) share: a TCP relay to run as a process
 * of its own (the floor of any proxy: bytes piped, nothing parsed), and a process's CPU time from
 * /proc.
 */
import { readFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer as createTcpServer } from 'node:net';

/** A TCP relay, in its own process: every connection is piped to `port`, byte for byte. */
export async function runRelay(port: number): Promise<void> {
  const server = createTcpServer((user) => {
    const upstream = connect(port, '127.0.0.1');
    user.setNoDelay(true);
    upstream.setNoDelay(true);
    user.pipe(upstream).pipe(user);
    user.on('error', () => upstream.destroy());
    upstream.on('error', () => user.destroy());
    user.on('close', () => upstream.destroy());
    upstream.on('close', () => user.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
}

const CLOCK_TICK_MS = 10; // USER_HZ is 100 on every Linux this runs on

/** CPU time (ms) a child process has used so far, or undefined where /proc is not there. */
export function cpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    // Fields after the command name (which may hold spaces, so split after its closing paren).
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS; // utime + stime
  } catch {
    return undefined;
  }
}
