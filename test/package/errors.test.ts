import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { PROTOCOL_ERROR_CLOSE_CODES } from '../../protocol/errors.ts';
import { DuplexwireError, ERROR_CLASSES, RequestError } from '../../src/errors.ts';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
/** The rows of the README's error table: `| `CODE` | ... |`. */
const documented = new Set([...readme.matchAll(/^\|\s*`([A-Z0-9_]+)`\s*\|/gm)].map((m) => m[1]));

test('every error code of the catalogue is in the README error table', () => {
  for (const ErrorClass of ERROR_CLASSES) {
    const error = new ErrorClass('probe');
    assert.ok(error instanceof DuplexwireError, `${ErrorClass.name} extends DuplexwireError`);
    assert.equal(error.name, ErrorClass.name, `${ErrorClass.name} sets its name`);
    assert.match(error.code, /^ERR_[A-Z0-9_]+$/);
    assert.ok(documented.has(error.code), `README documents ${error.code}`);
  }
  for (const code of Object.keys(PROTOCOL_ERROR_CLOSE_CODES)) {
    assert.ok(documented.has(code), `README documents ${code}`);
  }
});

test('codes are unique across classes', () => {
  const codes = ERROR_CLASSES.map((C) => new C('probe').code);
  assert.equal(new Set(codes).size, codes.length);
});

test('errors carry their cause', () => {
  const cause = new Error('root');
  const error = new RequestError('NOT_FOUND', 'no such user', { cause });
  assert.equal(error.code, 'NOT_FOUND');
  assert.equal(error.cause, cause);
});
