/**
 * The suite's reporter (`npm test` passes it as `--test-reporter`): Node's TAP output, unchanged,
 * with the failed tests listed again just above the summary, each with its file, its path of
 * suite names and the first line of its error. CI logs keep only their tail, and in TAP a failure
 * sits wherever its file happened to finish; this puts it next to the counts.
 *
 * A suite that failed only because a test in it failed is not listed again (the test is). A test
 * file that failed outside any test (an error after its tests, a non-zero exit) is listed by its
 * file name, as Node reports it.
 */
import { relative } from 'node:path';
import { tap } from 'node:test/reporters';

export default async function* failuresAboveSummary(source) {
  const failures = [];
  // Names of the tests being run, by nesting depth, per file: a failure's path of suite names.
  const running = new Map();
  async function* watch() {
    for await (const event of source) {
      const { data } = event;
      if (event.type === 'test:start') {
        const names = running.get(data.file) ?? [];
        names.length = data.nesting;
        names.push(data.name);
        running.set(data.file, names);
      } else if (event.type === 'test:fail' && data.details.error?.failureType !== 'subtestsFailed') {
        const names = (running.get(data.file) ?? []).slice(0, data.nesting);
        names.push(data.name);
        failures.push({ file: data.file, names, error: firstLine(data.details.error) });
      }
      yield event;
    }
  }
  let listed = false;
  for await (const chunk of tap(watch())) {
    if (!listed && failures.length > 0 && typeof chunk === 'string' && chunk.startsWith('# tests ')) {
      listed = true;
      yield `# failed tests (${failures.length}):\n`;
      for (const failure of failures) {
        const file = failure.file === undefined ? '(no file)' : relative(process.cwd(), failure.file);
        yield `#   ${file}: ${failure.names.join(' > ')}\n#     ${failure.error}\n`;
      }
    }
    yield chunk;
  }
}

function firstLine(error) {
  if (error === undefined || error === null) return '(no error)';
  const cause = error.cause ?? error;
  const text = String(cause?.message ?? cause);
  return text.split('\n', 1)[0].slice(0, 300);
}
