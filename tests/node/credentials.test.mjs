// The credential minters of examples/ against real servers started with
// --auth jwt and --auth signed: examples/python/credentials.py and
// examples/node/credentials.mjs run as the README says (they print curl
// commands; the token or URL in them opens a stream, a tampered one is
// refused), and their functions for a tenant, an expired credential and an
// anonymous signed URL (auth.test.mjs covers credentials.mjs's jwt, jwtSigned
// and signedUrl in the default namespace). Needs python3 (scripts/test.sh
// installs it on Debian).
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/credentials.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PYTHON, api, record, requireCommand, run, startServer, waitFor } from './harness.mjs';
import { jwt, signedUrl } from '../../examples/node/credentials.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples');
const JWT_SECRET = 'node-tests-jwt-secret-credentials-0123456789';
const SIGN_SECRET = 'node-tests-sign-secret-credentials-0123456789';

/** One server per mode, with the secrets the minters get. */
async function servers(t) {
  const jwtServer = await startServer(['--auth', 'jwt', '--jwt-secret', JWT_SECRET]);
  t.after(jwtServer.stop);
  const signedServer = await startServer(['--auth', 'signed', '--sign-secret', SIGN_SECRET]);
  t.after(signedServer.stop);
  return { jwtServer, signedServer };
}

/** This process's environment without any of the minters' settings, plus env. */
function cliEnv(env) {
  const out = { ...process.env };
  for (const key of ['SSEKIFY_JWT_SECRET', 'SSEKIFY_SIGN_SECRET', 'SSEKIFY_JWT_PRIVATE_KEY', 'SSEKIFY_PUBLIC']) delete out[key];
  return { ...out, ...env };
}

/** An EventSource option sending the token as `Authorization: Bearer`, as the printed curl command does. */
const bearer = (token) => ({
  fetch: (input, init) => fetch(input, { ...init, headers: { ...init?.headers, Authorization: `Bearer ${token}` } }),
});

/** The JWT with one claim changed and the signature kept. */
function tamper(token, claims) {
  const [header, body, signature] = token.split('.');
  const changed = { ...JSON.parse(Buffer.from(body, 'base64url')), ...claims };
  return `${header}.${Buffer.from(JSON.stringify(changed)).toString('base64url')}.${signature}`;
}

const CLIS = [
  { name: 'python/credentials.py', command: () => PYTHON, script: path.join(EXAMPLES, 'python/credentials.py'), python: true },
  { name: 'node/credentials.mjs', command: () => process.execPath, script: path.join(EXAMPLES, 'node/credentials.mjs') },
];

for (const cli of CLIS) {
  test(`${cli.name} prints curl commands whose JWT and signed URL open streams; tampered ones are refused`, { timeout: 60_000 }, async (t) => {
    if (cli.python && !requireCommand(t, PYTHON)) return;
    const { jwtServer, signedServer } = await servers(t);
    const host = (server) => server.publicUrl.replace('http://', '');
    const mint = async (env) => {
      const result = await run(cli.command(), [cli.script, 'alice', 'lobby,news'], { env: cliEnv(env) });
      assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
      return result.stdout;
    };

    const jwtOut = await mint({ SSEKIFY_JWT_SECRET: JWT_SECRET, SSEKIFY_PUBLIC: host(jwtServer) });
    const [, token, jwtUrl] = jwtOut.match(/^curl -N -H 'Authorization: Bearer ([^']+)' '([^']+)'$/m) ?? [];
    assert.ok(token, jwtOut);
    assert.equal(jwtUrl, `${jwtServer.publicUrl}/sse?rooms=lobby,news`);
    assert.doesNotMatch(jwtOut, /--auth signed/, 'no signed URL without SSEKIFY_SIGN_SECRET');

    const signedOut = await mint({ SSEKIFY_SIGN_SECRET: SIGN_SECRET, SSEKIFY_PUBLIC: host(signedServer) });
    const [, url] = signedOut.match(/^curl -N '([^']+)'$/m) ?? [];
    assert.ok(url?.startsWith(`${signedServer.publicUrl}/sse?`), signedOut);
    assert.doesNotMatch(signedOut, /Bearer/, 'no JWT without SSEKIFY_JWT_SECRET');

    const byToken = record(jwtUrl, ['message'], bearer(token));
    const byUrl = record(url);
    const forgedToken = record(jwtUrl, ['message'], bearer(tamper(token, { sub: 'mallory' })));
    const forgedUrl = record(url.replace('user=alice', 'user=mallory'));
    t.after(() => [byToken, byUrl, forgedToken, forgedUrl].forEach((s) => s.es.close()));
    await waitFor('both streams to open', () => byToken.opens === 1 && byUrl.opens === 1, () => byToken.describe() + byUrl.describe());
    for (const server of [jwtServer, signedServer]) {
      await api(server, 'POST', '/v1/users/alice/events', 'to alice');
      await api(server, 'POST', '/v1/rooms/news/events', 'to news');
    }
    for (const sub of [byToken, byUrl]) {
      await waitFor('both events', () => sub.events.length >= 2, sub.describe);
      assert.deepEqual(sub.events.map((e) => e.data), ['to alice', 'to news']);
    }
    for (const forged of [forgedToken, forgedUrl]) {
      await waitFor('the refusal', () => forged.errors.length > 0, forged.describe);
      assert.deepEqual(forged.errors, [401], forged.describe());
      assert.equal(forged.opens, 0);
    }
  });

  test(`${cli.name} refuses to mint without a secret or with one under 32 bytes`, { timeout: 60_000 }, async (t) => {
    if (cli.python && !requireCommand(t, PYTHON)) return;
    const none = await run(cli.command(), [cli.script, 'alice'], { env: cliEnv({}) });
    assert.notEqual(none.code, 0, none.stdout);
    assert.equal(none.stdout, '');
    assert.match(none.stderr, /set SSEKIFY_JWT_SECRET and\/or SSEKIFY_SIGN_SECRET/);
    const short = await run(cli.command(), [cli.script, 'alice'], { env: cliEnv({ SSEKIFY_SIGN_SECRET: 'only-31-bytes-long-0123456789ab' }) });
    assert.notEqual(short.code, 0, short.stdout);
    assert.doesNotMatch(short.stdout, /sig=/);
    assert.match(short.stderr, /SSEKIFY_SIGN_SECRET must be set, at least 32 bytes/);
  });
}

// The same requests to both libraries: { kind: 'jwt' | 'signed', user, rooms, tenant, ttl, base }.
const MINTERS = [
  {
    name: 'node/credentials.mjs',
    mint: async (requests) =>
      requests.map(({ kind, base, ...opts }) =>
        kind === 'jwt' ? jwt({ ...opts, secret: JWT_SECRET }) : signedUrl(base, { ...opts, secret: SIGN_SECRET })),
  },
  {
    name: 'python/credentials.py',
    python: true,
    // One python3 process minting them all with the library's keyword arguments.
    mint: async (requests) => {
      const code = `import sys, json
sys.path.insert(0, ${JSON.stringify(path.join(EXAMPLES, 'python'))})
import credentials
out = []
for r in json.loads(sys.argv[1]):
    kind, base = r.pop("kind"), r.pop("base", None)
    if kind == "jwt":
        out.append(credentials.jwt(secret=${JSON.stringify(JWT_SECRET)}, **r))
    else:
        out.append(credentials.signed_url(base, secret=${JSON.stringify(SIGN_SECRET)}, **r))
print(json.dumps(out))`;
      const result = await run(PYTHON, ['-c', code, JSON.stringify(requests)], { env: cliEnv({}) });
      assert.equal(result.code, 0, result.stderr);
      return JSON.parse(result.stdout);
    },
  },
];

for (const minter of MINTERS) {
  test(`${minter.name}: a tenant's credential opens only that tenant's path; expired ones are refused; an anonymous signed URL opens`, { timeout: 60_000 }, async (t) => {
    if (minter.python && !requireCommand(t, PYTHON)) return;
    const { jwtServer, signedServer } = await servers(t);
    const [tenantToken, tenantUrl, expiredToken, expiredUrl, anonymousUrl] = await minter.mint([
      { kind: 'jwt', user: 'alice', rooms: ['lobby'], tenant: 'acme' },
      { kind: 'signed', base: `${signedServer.publicUrl}/t/acme/sse`, user: 'alice', rooms: ['lobby'], tenant: 'acme' },
      { kind: 'jwt', user: 'alice', rooms: ['lobby'], ttl: -3600 },
      { kind: 'signed', base: `${signedServer.publicUrl}/sse`, user: 'alice', rooms: ['lobby'], ttl: -3600 },
      { kind: 'signed', base: `${signedServer.publicUrl}/sse`, rooms: ['lobby'] },
    ]);

    const streams = {
      tenantToken: record(`${jwtServer.publicUrl}/t/acme/sse?rooms=lobby&token=${tenantToken}`),
      tenantUrl: record(tenantUrl),
      anonymous: record(anonymousUrl),
      // Refused: a tenant's credential on the default path, expired credentials.
      tenantTokenElsewhere: record(`${jwtServer.publicUrl}/sse?rooms=lobby&token=${tenantToken}`),
      tenantUrlElsewhere: record(tenantUrl.replace('/t/acme/sse', '/sse')),
      expiredToken: record(`${jwtServer.publicUrl}/sse?token=${expiredToken}`),
      expiredUrl: record(expiredUrl),
    };
    t.after(() => Object.values(streams).forEach((s) => s.es.close()));
    const open = ['tenantToken', 'tenantUrl', 'anonymous'];
    const describe = () => Object.entries(streams).map(([k, s]) => `${k}: ${s.describe()}`).join('\n');
    await waitFor('three streams to open', () => open.every((k) => streams[k].opens === 1), describe);

    for (const server of [jwtServer, signedServer]) {
      await api(server, 'POST', '/v1/t/acme/users/alice/events', 'to acme\'s alice');
      await api(server, 'POST', '/v1/t/acme/rooms/lobby/events', 'to acme\'s lobby');
      await api(server, 'POST', '/v1/rooms/lobby/events', 'to the lobby');
    }
    await waitFor('the events', () => open.every((k) => streams[k].events.length >= (k === 'anonymous' ? 1 : 2)), describe);
    assert.deepEqual(streams.tenantToken.events.map((e) => e.data), ['to acme\'s alice', 'to acme\'s lobby']);
    assert.deepEqual(streams.tenantUrl.events.map((e) => e.data), ['to acme\'s alice', 'to acme\'s lobby']);
    assert.deepEqual(streams.anonymous.events.map((e) => e.data), ['to the lobby']);

    // A token names its tenant (403 elsewhere); a URL's signature covers the
    // tenant of the path it is opened on, so elsewhere it does not verify (401).
    const refused = { tenantTokenElsewhere: 403, tenantUrlElsewhere: 401, expiredToken: 401, expiredUrl: 401 };
    await waitFor('the refusals', () => Object.keys(refused).every((k) => streams[k].errors.length > 0), describe);
    for (const [k, status] of Object.entries(refused)) {
      assert.deepEqual(streams[k].errors, [status], `${k}: ${streams[k].describe()}`);
      assert.equal(streams[k].opens, 0);
    }
  });
}
