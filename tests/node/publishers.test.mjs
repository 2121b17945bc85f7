// The dependency-free publishers of examples/ against a real ssekify with an
// api key: examples/node/publish.mjs and examples/python/publish.py run as the
// README says (their demo publishes one of each kind) and imported for their
// functions (custom ids, a refused key, a refused batch, the retry of a
// refused connection), and examples/curl.sh, whose output shows what its two
// subscribers received. Real EventSource clients check what arrives.
// Needs python3 (the Python example) and curl (curl.sh); scripts/test.sh
// installs both on Debian.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/publishers.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PYTHON, WAIT_MS, freePort, record, requireCommand, run, startServer, waitFor } from './harness.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples');
const PUBLISH_MJS = path.join(EXAMPLES, 'node/publish.mjs');
const PUBLISH_PY = path.join(EXAMPLES, 'python/publish.py');
const API_KEY = 'node-tests-api-key-publishers';
const ACME_KEY = 'node-tests-acme-tenant-key';

// Every event type the examples publish (EventSource has no catch-all).
const TYPES = ['message', 'notify', 'chat', 'presence', 'headline', 'tick'];

// What the demos of publish.mjs and publish.py, and curl.sh, send: `to` says
// which of the two subscribers (alice in lobby and news, an anonymous one in
// lobby) should get it; JSON payloads are compared parsed (a batch's `data`
// is passed on as the publisher serialised it).
const DEMO = [
  { to: 'alice', type: 'notify', json: { title: 'Order shipped', orderId: 42 } },
  { to: 'alice', type: 'chat', text: 'hello alice\nsecond line' },
  { to: 'both', type: 'presence', json: { user: 'bob', state: 'online' } },
  { to: 'both', type: 'message', json: { maintenance: 'in 10 minutes' } },
  { to: 'alice', type: 'notify', json: { unread: 3 } },
  { to: 'alice', type: 'headline', text: 'ssekify released' },
  { to: 'both', type: 'message', json: { ping: true } },
  { to: 'alice', type: 'notify', json: { unread: 4 } },
  { to: 'both', type: 'message', text: 'plain text to the lobby' },
  { to: 'both', type: 'tick', json: 1 },
];
// The delivered counts of the demo's six publishes (the batches answer per message).
const DELIVERED = {
  user: 1,
  'user text': 1,
  room: 2,
  broadcast: 2,
  batch: [1, 1, 2],
  ndjson: [1, 2, 2],
};

/** The received events as `{ type, json | text }`, comparable with DEMO's entries. */
function comparable(events) {
  return events.map(({ type, data }) => {
    try {
      return { type, json: JSON.parse(data) };
    } catch {
      return { type, text: data };
    }
  });
}
const expected = (who) =>
  DEMO.filter((m) => m.to === 'both' || m.to === who).map(({ type, json, text }) => (text === undefined ? { type, json } : { type, text }));

/** The two subscribers of the demos, open (in `tenant`'s namespace when given). */
async function subscribers(t, server, tenant) {
  const sse = tenant ? `${server.publicUrl}/t/${tenant}/sse` : `${server.publicUrl}/sse`;
  const alice = record(`${sse}?userId=alice&rooms=lobby,news`, TYPES);
  const anonymous = record(`${sse}?rooms=lobby`, TYPES);
  t.after(() => { alice.es.close(); anonymous.es.close(); });
  await waitFor('both streams to open', () => alice.opens === 1 && anonymous.opens === 1, () => alice.describe() + anonymous.describe());
  return { alice, anonymous };
}

/** A `label {json}` line of a publisher demo's output, per label. */
function answers(stdout) {
  const found = {};
  for (const line of stdout.split('\n')) {
    const match = line.match(/^(user text|user|room|broadcast|batch|ndjson)\s+(\{.*\})$/);
    if (match) found[match[1]] = JSON.parse(match[2]);
  }
  return found;
}

function checkAnswers(found, output) {
  assert.deepEqual(Object.keys(found).sort(), Object.keys(DELIVERED).sort(), output);
  for (const [label, want] of Object.entries(DELIVERED)) {
    const got = Array.isArray(want) ? found[label].results.map((r) => r.delivered) : found[label].delivered;
    assert.deepEqual(got, want, `${label}: ${JSON.stringify(found[label])}`);
  }
}

const DEMOS = [
  // SSEKIFY_API as a URL for one and as host:port for the other: both forms are documented.
  { name: 'node/publish.mjs', command: () => process.execPath, args: [PUBLISH_MJS], api: (s) => s.apiUrl },
  { name: 'python/publish.py', command: () => PYTHON, args: [PUBLISH_PY], api: (s) => s.apiUrl.replace('http://', ''), python: true },
];

for (const demo of DEMOS) {
  test(`${demo.name} run as a script delivers one of each kind to the right subscribers`, { timeout: 60_000 }, async (t) => {
    if (demo.python && !requireCommand(t, PYTHON)) return;
    const server = await startServer(['--api-key', API_KEY]);
    t.after(server.stop);
    const { alice, anonymous } = await subscribers(t, server);

    const env = { ...process.env, SSEKIFY_API: demo.api(server), SSEKIFY_API_KEY: API_KEY };
    const result = await run(demo.command(), demo.args, { env });
    const output = `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
    assert.equal(result.code, 0, output);
    checkAnswers(answers(result.stdout), output);

    const wantAlice = expected('alice');
    const wantAnonymous = expected('anonymous');
    await waitFor('alice\'s events', () => alice.events.length >= wantAlice.length, alice.describe);
    await waitFor('the anonymous subscriber\'s events', () => anonymous.events.length >= wantAnonymous.length, anonymous.describe);
    assert.deepEqual(comparable(alice.events), wantAlice);
    assert.deepEqual(comparable(anonymous.events), wantAnonymous);
    // Server-assigned ids, the same for a message both received.
    assert.ok(alice.events.every((e) => e.id), alice.describe());
    assert.equal(new Set(alice.events.map((e) => e.id)).size, alice.events.length);
  });
}

for (const demo of DEMOS) {
  test(`${demo.name} publishes into one tenant with that tenant's own key`, { timeout: 60_000 }, async (t) => {
    if (demo.python && !requireCommand(t, PYTHON)) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ssekify-tenant-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const config = path.join(dir, 'tenants.json');
    fs.writeFileSync(config, JSON.stringify({ tenants: { acme: { apiKey: ACME_KEY } } }));
    const server = await startServer(['--api-key', API_KEY, '--tenant-config', config]);
    t.after(server.stop);
    const { alice, anonymous } = await subscribers(t, server, 'acme');
    // The default namespace's alice must hear nothing of acme's messages.
    const outsider = record(`${server.publicUrl}/sse?userId=alice&rooms=lobby,news`, TYPES);
    t.after(() => outsider.es.close());
    await waitFor('the outsider to open', () => outsider.opens === 1, outsider.describe);

    const env = { ...process.env, SSEKIFY_API: demo.api(server), SSEKIFY_API_KEY: ACME_KEY, SSEKIFY_TENANT: 'acme' };
    const result = await run(demo.command(), demo.args, { env });
    const output = `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
    assert.equal(result.code, 0, output);
    checkAnswers(answers(result.stdout), output);
    await waitFor('alice\'s events', () => alice.events.length >= expected('alice').length, alice.describe);
    await waitFor('the anonymous subscriber\'s events', () => anonymous.events.length >= expected('anonymous').length, anonymous.describe);
    assert.deepEqual(comparable(alice.events), expected('alice'));
    assert.equal(outsider.events.length, 0, outsider.describe());

    // Without the tenant, acme's key opens nothing.
    const refused = await run(demo.command(), demo.args, { env: { ...env, SSEKIFY_TENANT: '' } });
    assert.notEqual(refused.code, 0, 'the default namespace refuses a tenant key');
    assert.match(refused.stdout + refused.stderr, /403|forbidden/);
  });
}

/** publish.mjs as a fresh module instance reading the environment given (its settings are read at import). */
async function importPublish(env) {
  const saved = { SSEKIFY_API: process.env.SSEKIFY_API, SSEKIFY_API_KEY: process.env.SSEKIFY_API_KEY };
  Object.assign(process.env, env);
  for (const [key, value] of Object.entries(env)) if (value === undefined) delete process.env[key];
  try {
    return await import(`${pathToFileURL(PUBLISH_MJS).href}?${new URLSearchParams(Object.entries(env).filter(([, v]) => v))}`);
  } finally {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
}

/** This process's environment with env's entries set (undefined: removed). */
function childEnv(env) {
  const out = { ...process.env, ...env };
  for (const [key, value] of Object.entries(env)) if (value === undefined) delete out[key];
  return out;
}

/** Runs a Python snippet with examples/python importable; resolves what it printed as JSON. */
async function python(code, env) {
  const prelude = `import sys, json; sys.path.insert(0, ${JSON.stringify(path.join(EXAMPLES, 'python'))})\n`;
  const result = await run(PYTHON, ['-c', prelude + code], { env: childEnv(env) });
  assert.equal(result.code, 0, `python exited ${result.code}: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

// The same checks for both languages; `publisher(env)` returns the calls made
// with the publisher configured by env (SSEKIFY_API, SSEKIFY_API_KEY).
const LIBRARIES = [
  {
    name: 'node/publish.mjs',
    publisher: async (env) => {
      const mod = await importPublish(env);
      const settle = (promise) =>
        promise.then(
          (answer) => ({ answer }),
          (err) => {
            assert.ok(err instanceof mod.PublishError, `not a PublishError: ${err.stack}`);
            return { status: err.status, error: err.code, message: err.message };
          },
        );
      return {
        toUser: (user, data, opts) => settle(mod.toUser(user, data, opts)),
        toRoom: (room, data, opts) => settle(mod.toRoom(room, data, opts)),
        batch: (messages) => settle(mod.batch(messages)),
        // For the retry test: the time one toUser took, and its answer.
        timedToUser: async (user, data) => {
          const start = Date.now();
          const answer = await mod.toUser(user, data);
          return { answer, ms: Date.now() - start };
        },
      };
    },
  },
  {
    name: 'python/publish.py',
    python: true,
    publisher: async (env) => {
      // Each call is one python3 process importing publish.py with env.
      const call = (expr) =>
        python(
          `import publish\ntry:\n    out = {"answer": ${expr}}\nexcept publish.PublishError as err:\n    out = {"status": err.status, "error": err.error, "message": str(err)}\nprint(json.dumps(out))`,
          env,
        );
      const kwargs = (opts = {}) => Object.entries(opts).map(([k, v]) => `, ${k}=${JSON.stringify(v)}`).join('');
      return {
        toUser: (user, data, opts) => call(`publish.to_user(${JSON.stringify(user)}, json.loads(${JSON.stringify(JSON.stringify(data))})${kwargs(opts)})`),
        toRoom: (room, data, opts) => call(`publish.to_room(${JSON.stringify(room)}, json.loads(${JSON.stringify(JSON.stringify(data))})${kwargs(opts)})`),
        batch: (messages) => call(`publish.batch(json.loads(${JSON.stringify(JSON.stringify(messages))}))`),
        timedToUser: (user, data, onStart) =>
          run(PYTHON, ['-c', `import sys, json, time; sys.path.insert(0, ${JSON.stringify(path.join(EXAMPLES, 'python'))})
import publish
print("calling", flush=True)
start = time.monotonic()
answer = publish.to_user(${JSON.stringify(user)}, ${JSON.stringify(data)})
print(json.dumps({"answer": answer, "ms": (time.monotonic() - start) * 1000}))`], {
            env: childEnv(env),
            onStdout: (out) => { if (out.startsWith('calling\n')) onStart?.(); },
          }).then((r) => {
            assert.equal(r.code, 0, r.stderr);
            return JSON.parse(r.stdout.split('\n')[1]);
          }),
      };
    },
  },
];

for (const lib of LIBRARIES) {
  test(`${lib.name}'s functions: own ids and names that need escaping arrive; a wrong key and a bad batch are errors that deliver nothing`, { timeout: 60_000 }, async (t) => {
    if (lib.python && !requireCommand(t, PYTHON)) return;
    const server = await startServer(['--api-key', API_KEY]);
    t.after(server.stop);
    const alice = record(`${server.publicUrl}/sse?userId=alice&rooms=lobby,${encodeURIComponent('r&d ü')}`, TYPES);
    t.after(() => alice.es.close());
    await waitFor('the stream to open', () => alice.opens === 1, alice.describe);
    const pub = await lib.publisher({ SSEKIFY_API: server.apiUrl, SSEKIFY_API_KEY: API_KEY });
    const wrongKey = await lib.publisher({ SSEKIFY_API: server.apiUrl, SSEKIFY_API_KEY: 'not-the-key' });

    const own = await pub.toUser('alice', { unread: 5 }, { event: 'notify', id: 'order-7' });
    assert.equal(own.answer?.id, 'order-7', JSON.stringify(own));
    assert.equal(own.answer.delivered, 1);
    const escaped = await pub.toRoom('r&d ü', 'to r&d ü');
    assert.equal(escaped.answer?.delivered, 1, JSON.stringify(escaped));

    const refused = await wrongKey.toRoom('lobby', 'never');
    assert.equal(refused.status, 401, JSON.stringify(refused));
    assert.equal(refused.error, 'unauthorized');
    const bad = await pub.batch([{ user: 'alice', data: 'never either' }, { data: 'no target' }]);
    assert.equal(bad.status, 400, JSON.stringify(bad));
    assert.equal(bad.error, 'invalid_request');
    assert.match(bad.message, /messages\[1\]/);

    const last = await pub.toRoom('lobby', 'last');
    assert.equal(last.answer?.delivered, 1, JSON.stringify(last));
    await waitFor('three events', () => alice.events.length >= 3, alice.describe);
    assert.deepEqual(alice.events, [
      { type: 'notify', data: '{"unread":5}', id: 'order-7' },
      { type: 'message', data: 'to r&d ü', id: escaped.answer.id },
      { type: 'message', data: 'last', id: last.answer.id },
    ]);
  });

  test(`${lib.name} retries a refused connection until the api listens`, { timeout: 60_000 }, async (t) => {
    if (lib.python && !requireCommand(t, PYTHON)) return;
    const port = await freePort();
    const pub = await lib.publisher({ SSEKIFY_API: `127.0.0.1:${port}`, SSEKIFY_API_KEY: undefined });
    let started;
    const serverUp = new Promise((resolve) => { started = resolve; });
    // The first attempt is refused (nothing listens yet); the server starts
    // right after it, and a retry (the first after 500 ms) gets through.
    // Settled into a value: a publish that gives up early must fail this
    // test with its error, not as an unhandled rejection.
    const publishing = pub.timedToUser('alice', 'after a restart', () => started()).then((v) => v, (err) => ({ err }));
    if (!lib.python) started();
    await Promise.race([serverUp, publishing]);
    const server = await startServer(['--api-listen', `127.0.0.1:${port}`]);
    t.after(server.stop);
    const { answer, ms, err } = await publishing;
    if (err) throw err;
    assert.equal(answer.delivered, 0, JSON.stringify(answer));
    assert.ok(answer.id, JSON.stringify(answer));
    assert.ok(ms >= 450 && ms < WAIT_MS, `the publish took ${ms} ms: it should have waited for a retry`);
  });
}

test('curl.sh prints what each of its subscribers received and the stats', { timeout: 60_000 }, async (t) => {
  if (!requireCommand(t, 'curl')) return;
  const server = await startServer(['--api-key', API_KEY]);
  t.after(server.stop);
  const env = {
    ...process.env,
    // host:port for one, a URL for the other: both forms are documented.
    SSEKIFY_PUBLIC: server.publicUrl.replace('http://', ''),
    SSEKIFY_API: server.apiUrl,
    SSEKIFY_API_KEY: API_KEY,
  };
  const result = await run('bash', [path.join(EXAMPLES, 'curl.sh')], { env });
  const output = `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
  assert.equal(result.code, 0, output);

  const [intro, aliceText, rest] = result.stdout.split(/^===== (?:alice|anonymous) received =====$/m);
  assert.ok(rest !== undefined, output);
  const [anonymousText, statsText] = rest.split(/^===== stats =====$/m);
  assert.match(intro, /^health: \S+ {2}ready: \S+/, output);

  // The api's answer after each POST line.
  const posts = [...intro.matchAll(/^> POST (\S+)\n(.*)$/gm)].map(([, route, body]) => [route, JSON.parse(body)]);
  assert.deepEqual(posts.map(([route]) => route), [
    '/v1/users/alice/events?event=notify',
    '/v1/users/alice/events?event=chat&id=chat-0001',
    '/v1/rooms/lobby/events?event=presence',
    '/v1/broadcast',
    '/v1/publish',
    '/v1/publish',
  ], output);
  assert.deepEqual(posts.map(([, body]) => body.results?.map((r) => r.delivered) ?? body.delivered), Object.values(DELIVERED));
  assert.equal(posts[1][1].id, 'chat-0001');

  const alice = parseStream(aliceText);
  const anonymous = parseStream(anonymousText);
  assert.deepEqual(comparable(alice), expected('alice'), aliceText);
  assert.deepEqual(comparable(anonymous), expected('anonymous'), anonymousText);
  assert.equal(alice[1].id, 'chat-0001');

  const stats = JSON.parse(statsText);
  assert.equal(stats.connections, 2, statsText);
  assert.equal(stats.published, DEMO.length, statsText);
});

/** The events of an SSE stream's text as `{ type, data, id }` (comments and retry: skipped). */
function parseStream(text) {
  const events = [];
  for (const block of text.split(/\n\n+/)) {
    let type = 'message';
    let id = '';
    const data = [];
    for (const line of block.split('\n')) {
      const match = line.match(/^([a-z]+): ?(.*)$/);
      if (!match) continue;
      if (match[1] === 'event') type = match[2];
      else if (match[1] === 'id') id = match[2];
      else if (match[1] === 'data') data.push(match[2]);
    }
    if (data.length) events.push({ type, data: data.join('\n'), id });
  }
  return events;
}
