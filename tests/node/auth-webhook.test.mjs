// examples/node/auth-webhook.mjs as the application behind a real ssekify
// started with --auth webhook --auth-url: a subscriber with a session cookie
// is admitted as its user with its rooms (EventSource with a Cookie header,
// as a browser on the same site sends it), one without a session or asking
// for a room its session does not allow is refused with the status the README
// documents.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/auth-webhook.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WAIT_MS, api, record, startServer, waitFor } from './harness.mjs';

const WEBHOOK = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples/node/auth-webhook.mjs');

/** Starts auth-webhook.mjs on a free port; resolves `{ url, stop }` from the line it prints. */
function startWebhook() {
  const child = spawn(process.execPath, [WEBHOOK], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`auth-webhook.mjs printed no address within ${WAIT_MS} ms; output:\n${output}`));
    }, WAIT_MS);
    const onData = (chunk) => {
      output += chunk;
      const url = output.match(/auth webhook on (http:\/\/127\.0\.0\.1:\d+\/sse-auth)/)?.[1];
      if (url) {
        clearTimeout(timer);
        resolve({ url, stop });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`auth-webhook.mjs exited (${code ?? signal}); output:\n${output}`));
    });
  });
}

/** EventSource options sending `Cookie: session=…`. */
const withSession = (session) => ({
  fetch: (input, init) => fetch(input, { ...init, headers: { ...init?.headers, Cookie: `theme=dark; session=${session}` } }),
});

test('auth-webhook.mjs admits a session cookie\'s user with its rooms and refuses the rest', { timeout: 60_000 }, async (t) => {
  const webhook = await startWebhook();
  t.after(webhook.stop);
  const server = await startServer(['--auth', 'webhook', '--auth-url', webhook.url]);
  t.after(server.stop);
  const sse = (query) => `${server.publicUrl}/sse?${query}`;

  const streams = {
    // userId is ignored under --auth webhook: the user comes from the app's answer.
    alice: record(sse('userId=admin&rooms=lobby,news'), ['message'], withSession('s-alice')),
    admin: record(sse('rooms=ops'), ['message'], withSession('s-admin')),
    noCookie: record(sse('rooms=lobby')),
    unknownSession: record(sse('rooms=lobby'), ['message'], withSession('s-mallory')),
    roomNotAllowed: record(sse('rooms=lobby,ops'), ['message'], withSession('s-alice')),
  };
  t.after(() => Object.values(streams).forEach((s) => s.es.close()));
  const describe = () => Object.entries(streams).map(([k, s]) => `${k}: ${s.describe()}`).join('\n');
  await waitFor('alice and admin to open', () => streams.alice.opens === 1 && streams.admin.opens === 1, describe);

  assert.equal((await api(server, 'POST', '/v1/users/alice/events', 'to alice')).delivered, 1);
  assert.equal((await api(server, 'POST', '/v1/rooms/news/events', 'to news')).delivered, 1);
  assert.equal((await api(server, 'POST', '/v1/rooms/ops/events', 'to ops')).delivered, 1);
  assert.equal((await api(server, 'POST', '/v1/users/admin/events', 'to admin')).delivered, 1);
  await waitFor('the events', () => streams.alice.events.length >= 2 && streams.admin.events.length >= 2, describe);
  assert.deepEqual(streams.alice.events.map((e) => e.data), ['to alice', 'to news']);
  assert.deepEqual(streams.admin.events.map((e) => e.data), ['to ops', 'to admin']);

  const refused = { noCookie: 401, unknownSession: 401, roomNotAllowed: 403 };
  await waitFor('the refusals', () => Object.keys(refused).every((k) => streams[k].errors.length > 0), describe);
  for (const [k, status] of Object.entries(refused)) {
    assert.deepEqual(streams[k].errors, [status], `${k}: ${streams[k].describe()}`);
    assert.equal(streams[k].opens, 0);
  }
  // What the subscriber reads in the refusal's body.
  const res = await fetch(sse('rooms=lobby'), { signal: AbortSignal.timeout(WAIT_MS) });
  assert.equal(res.status, 401);
  assert.equal((await res.json()).error, 'unauthorized');
  const stats = await api(server, 'GET', '/v1/stats');
  assert.equal(stats.authFailures, 0, 'the app answered every check');
  assert.ok(stats.authRefused >= 3, JSON.stringify(stats));
});
