// The framework publishers of examples/node (express/, fastify/, koa/), each
// run as its own process against a real ssekify with an api key, under
// --auth jwt and --auth signed: the app hands a logged-in user a stream URL, a
// real EventSource opens it, an order placed through the app arrives on it.
// Needs the examples' locked packages: npm ci --prefix examples/node.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/frameworks.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EventSource } from 'eventsource';
import { WAIT_MS, startServer, waitFor } from './harness.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples/node');
const SECRETS = {
  jwt: ['--jwt-secret', 'node-tests-jwt-secret-0123456789abcdef'],
  signed: ['--sign-secret', 'node-tests-sign-secret-0123456789abcdef'],
};
const API_KEY = 'node-tests-api-key';

/** Starts examples/node/<framework>/app.mjs on port 0; resolves `{ url, stop }` once it listens. */
function startApp(framework, server, auth) {
  const env = {
    ...process.env,
    SSEKIFY_AUTH: auth,
    SSEKIFY_JWT_SECRET: SECRETS.jwt[1],
    SSEKIFY_SIGN_SECRET: SECRETS.signed[1],
    SSEKIFY_PUBLIC: server.publicUrl,
    SSEKIFY_API: server.apiUrl,
    SSEKIFY_API_KEY: API_KEY,
    HOST: '127.0.0.1',
    PORT: '0',
  };
  const child = spawn(process.execPath, [path.join(EXAMPLES, framework, 'app.mjs')], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`${framework} printed no listening line within ${WAIT_MS} ms; output:\n${output}`));
    }, WAIT_MS);
    const onData = (chunk) => {
      output += chunk.toString();
      const url = output.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/)?.[1];
      if (url) {
        clearTimeout(timer);
        resolve({ url, stop });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${framework} exited (${code ?? signal}) before listening (npm ci --prefix examples/node?); output:\n${output}`));
    });
  });
}

/** A request to the app as the user of `session` (none: logged out); resolves `{ status, body }`. */
async function call(app, method, route, { session, json } = {}) {
  const headers = {};
  if (session) headers.Cookie = `session=${session}`;
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(app.url + route, {
    method,
    headers,
    body: json === undefined ? undefined : JSON.stringify(json),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  return { status: res.status, body: text, json: () => JSON.parse(text) };
}

for (const framework of ['express', 'fastify', 'koa']) {
  for (const auth of ['jwt', 'signed']) {
    test(`${framework}: the stream URL it hands out opens under --auth ${auth}, and an order placed through it arrives`, { timeout: 60_000 }, async (t) => {
      // --max-payload 1KiB: a large order is refused by ssekify, which the app answers 502.
      const server = await startServer(['--auth', auth, ...SECRETS[auth], '--api-key', API_KEY, '--max-payload', '1KiB']);
      t.after(server.stop);
      const app = await startApp(framework, server, auth);
      t.after(app.stop);

      assert.equal((await call(app, 'GET', '/push/credentials')).status, 401, 'no session, no credential');
      const granted = await call(app, 'GET', '/push/credentials', { session: 's-alice' });
      assert.equal(granted.status, 200, granted.body);
      const { url, expiresIn } = granted.json();
      assert.ok(url.startsWith(`${server.publicUrl}/sse?`), url);
      assert.ok(!url.includes('userId='), `the user is in the credential, not in userId: ${url}`);
      assert.equal(expiresIn, 300);

      const es = new EventSource(url);
      t.after(() => es.close());
      const orders = [];
      let opens = 0;
      es.addEventListener('open', () => { opens += 1; });
      es.addEventListener('order.created', (e) => orders.push(e));
      const describe = () => `opens=${opens} readyState=${es.readyState} orders=${orders.length}`;
      await waitFor('the stream to open', () => opens === 1, describe);

      const placed = await call(app, 'POST', '/orders', { session: 's-alice', json: { item: 'tea' } });
      assert.equal(placed.status, 201, placed.body);
      const { order, pushed } = placed.json();
      assert.equal(order.item, 'tea');
      assert.equal(pushed.delivered, 1, placed.body);
      await waitFor('the order.created event', () => orders.length === 1, describe);
      assert.deepEqual(JSON.parse(orders[0].data), order);
      assert.equal(orders[0].lastEventId, pushed.id);

      assert.equal((await call(app, 'POST', '/orders', { session: 's-alice', json: {} })).status, 400);
      const refused = await call(app, 'POST', '/orders', { session: 's-alice', json: { item: 'x'.repeat(2000) } });
      assert.equal(refused.status, 502, refused.body);
      assert.equal(orders.length, 1, 'nothing else arrived');
      assert.ok(!server.logs().includes(url.split('?')[1]), 'the credential must not reach ssekify\'s logs');
    });
  }
}
