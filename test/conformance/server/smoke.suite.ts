import assert from 'node:assert/strict';
import { test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { connectClient, startServer } from '../../helpers.ts';

test('echo request over ws', async (t) => {
  const { url } = await startServer(t, { onRequest: (_c, msg) => msg.payload });
  const client = await connectClient(t, url);
  const reply = await client.request('echo', utf8('hello'));
  assert.equal(payloadText(reply), 'hello');
  assert.equal(reply.encoding, 'utf8');
  assert.equal(client.supportsV21, true);
});
