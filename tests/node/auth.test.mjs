// Subscriber auth with a real EventSource client and the credentials minted by
// examples/node/credentials.mjs (what the README shows backends): a signed URL
// opened as is, a JWT in the Authorization header (the eventsource package's
// `fetch` option; browsers use ?token=) and in ?token=, and a refused URL,
// which EventSource does not retry; RS256 and ES256 tokens from `jwtSigned`
// with keys node:crypto makes, against a JWKS file of their public halves.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/*.test.mjs

import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import { api, startServer, waitFor } from './harness.mjs';
import { jwt, jwtSigned, signedUrl } from '../../examples/node/credentials.mjs';

const JWT_SECRET = 'node-tests-jwt-secret-0123456789abcdef';
const SIGN_SECRET = 'node-tests-sign-secret-0123456789abcdef';

/** Opens an EventSource recording the data of every message, and its opens and errors. */
function subscribe(url, init) {
  const es = new EventSource(url, init);
  const state = { es, received: [], opens: 0, errors: 0 };
  es.addEventListener('open', () => { state.opens += 1; });
  es.addEventListener('error', () => { state.errors += 1; });
  es.addEventListener('message', (e) => state.received.push(e.data));
  state.describe = () => `opens=${state.opens} errors=${state.errors} readyState=${es.readyState} received=${JSON.stringify(state.received)}`;
  return state;
}

test('a signed URL from credentials.mjs opens as is; a tampered one is refused for good', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--auth', 'signed', '--sign-secret', SIGN_SECRET]);
  t.after(server.stop);
  const url = signedUrl(`${server.publicUrl}/sse`, { user: 'zoë', rooms: ['lobby', 'r&d'], secret: SIGN_SECRET });
  const sub = subscribe(url);
  t.after(() => sub.es.close());
  const tampered = subscribe(url.replace('lobby', 'lobbx'));
  t.after(() => tampered.es.close());
  await waitFor('the stream to open', () => sub.opens === 1, sub.describe);

  await api(server, 'POST', `/v1/users/${encodeURIComponent('zoë')}/events`, 'to zoë');
  await api(server, 'POST', `/v1/rooms/${encodeURIComponent('r&d')}/events`, 'to r&d');
  await waitFor('both events', () => sub.received.length === 2, sub.describe);
  assert.deepEqual(sub.received, ['to zoë', 'to r&d']);

  // A 401 is final for EventSource: it closes instead of reconnecting.
  await waitFor('the refusal', () => tampered.es.readyState === EventSource.CLOSED, tampered.describe);
  assert.equal(tampered.opens, 0);
});

test('a JWT from credentials.mjs works in the Authorization header and in ?token=', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--auth', 'jwt', '--jwt-secret', JWT_SECRET]);
  t.after(server.stop);
  const token = jwt({ user: 'alice', rooms: ['lobby'], secret: JWT_SECRET });
  const withHeader = (input, init) =>
    fetch(input, { ...init, headers: { ...init?.headers, Authorization: `Bearer ${token}` } });
  const byHeader = subscribe(`${server.publicUrl}/sse?rooms=lobby`, { fetch: withHeader });
  t.after(() => byHeader.es.close());
  const byQuery = subscribe(`${server.publicUrl}/sse?rooms=lobby&token=${token}`);
  t.after(() => byQuery.es.close());
  await waitFor('both streams to open', () => byHeader.opens === 1 && byQuery.opens === 1, byHeader.describe);

  const answer = await api(server, 'POST', '/v1/users/alice/events', 'to alice');
  assert.equal(answer.delivered, 2, JSON.stringify(answer));
  await api(server, 'POST', '/v1/rooms/lobby/events', 'to lobby');
  for (const sub of [byHeader, byQuery]) {
    await waitFor('both events', () => sub.received.length === 2, sub.describe);
    assert.deepEqual(sub.received, ['to alice', 'to lobby']);
  }
  assert.ok(!server.logs().includes(token), 'the token must not reach the logs');
});

test('RS256 and ES256 tokens from credentials.mjs open streams against a JWKS file', { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ssekify-node-jwks-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keys = [
    { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'rsa-1', use: 'sig', alg: 'RS256' },
    { ...ec.publicKey.export({ format: 'jwk' }), kid: 'ec-1', use: 'sig', alg: 'ES256' },
  ];
  const file = join(dir, 'jwks.json');
  writeFileSync(file, JSON.stringify({ keys }));
  const server = await startServer(['--auth', 'jwt', '--jwks-file', file, '--jwt-audience', 'ssekify']);
  t.after(server.stop);
  const pem = (pair) => pair.privateKey.export({ format: 'pem', type: 'pkcs8' });
  const subs = [[rsa, 'rsa-1'], [ec, 'ec-1']].map(([pair, kid]) => {
    const token = jwtSigned({ user: 'alice', rooms: ['lobby'], privateKey: pem(pair), kid, aud: 'ssekify' });
    const sub = subscribe(`${server.publicUrl}/sse?rooms=lobby&token=${token}`);
    t.after(() => sub.es.close());
    return sub;
  });
  const wrongKid = subscribe(`${server.publicUrl}/sse?token=${jwtSigned({ user: 'a', privateKey: pem(ec), kid: 'rsa-1', aud: 'ssekify' })}`);
  t.after(() => wrongKid.es.close());
  await waitFor('both streams to open', () => subs.every((sub) => sub.opens === 1), subs[1].describe);
  const answer = await api(server, 'POST', '/v1/rooms/lobby/events', 'to lobby');
  assert.equal(answer.delivered, 2, JSON.stringify(answer));
  for (const sub of subs) await waitFor('the event', () => sub.received.length === 1, sub.describe);
  await waitFor('the refusal', () => wrongKid.es.readyState === EventSource.CLOSED, wrongKid.describe);
  assert.equal(wrongKid.opens, 0);
});
