// CORS with a real browser: a page on one origin (a static server on
// 127.0.0.1:<A>) opens `new EventSource` on ssekify's public listener
// (127.0.0.1:<B>, another origin). The browser itself decides whether the page
// may read the stream, from ssekify's `Access-Control-*` answers
// (`--cors-origin`).
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/browser/*.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, browserAndPages, openPage, publish, sleep, eventually, GAP } from './harness.mjs';

const fx = browserAndPages();

const CLOSED = 2;

/** The rows of the page's #log list, as the page's user sees them. */
const rows = (sub) => sub.page.$$eval('#log li', (lis) => lis.map((li) => ({ type: li.dataset.type, id: li.dataset.id, data: li.textContent })));

test('an allowed origin: user, room and broadcast messages reach the page with their data, id and event type', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--cors-origin', fx.pages.origin]);
  t.after(server.stop);
  const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1&rooms=r1`, events: ['notify', 'chat'] });
  t.after(sub.close);
  await sub.waitFor('the stream to open', () => window.sub.opens.length === 1);

  const expected = [];
  const send = async (...args) => expected.push((await publish(server, ...args)).expected);
  await send('/v1/users/u1/events', 'hello u1', { event: 'notify' });
  await send('/v1/rooms/r1/events', '{"text":"hi room"}', { contentType: 'application/json' });
  await send('/v1/broadcast', 'line 1\nline 2\n', { event: 'chat', id: 'chat-1' });
  // Not for this page: another user, another room.
  await publish(server, '/v1/users/u2/events', 'for u2');
  await publish(server, '/v1/rooms/r2/events', 'for r2');
  // CRLF in the payload splits into data lines too; the browser joins them with LF.
  const crlf = (await publish(server, '/v1/users/u1/events', 'crlf 1\r\ncrlf 2')).expected;
  expected.push({ ...crlf, data: 'crlf 1\ncrlf 2' });
  await send('/v1/broadcast', 'last');

  // Anything misdelivered would have been queued before the last message.
  await sub.waitFor('the last message', () => window.sub.received.some((m) => m.data === 'last'));
  const state = await sub.state();
  assert.deepEqual(state.received, expected, 'each message once, in publish order, with its type, id and data');
  assert.deepEqual(await rows(sub), expected, 'and in the page\'s DOM');
  assert.deepEqual(state.errors, [], 'no error event');
  assert.equal(state.readyState, 1, 'still OPEN');

  await eventually('the answer in the network log', async () => sub.sseRequests()[0]?.status != null, async () => JSON.stringify(sub.sseRequests()));
  const [request] = sub.sseRequests();
  assert.equal(request.type, 'EventSource');
  assert.equal(request.headers.origin, fx.pages.origin, 'a cross-origin request');
  assert.equal(request.headers.accept, 'text/event-stream');
  assert.equal(request.status, 200);
});

test('an allowed origin: withCredentials streams work too (the server allows credentials for a named origin)', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--cors-origin', fx.pages.origin]);
  t.after(server.stop);
  const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1`, cred: true });
  t.after(sub.close);
  await sub.waitFor('the stream to open', () => window.sub.opens.length === 1);
  const { expected } = await publish(server, '/v1/users/u1/events', 'with credentials');
  await sub.waitFor('the message', () => window.sub.received.length === 1);
  const state = await sub.state();
  assert.deepEqual(state.received, [expected]);
  assert.deepEqual(state.errors, []);
});

test('--cors-origin "*": plain EventSource works, withCredentials is refused by the browser', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--cors-origin', '*']);
  t.after(server.stop);
  const plain = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?rooms=r1` });
  t.after(plain.close);
  const cred = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?rooms=r1`, cred: true });
  t.after(cred.close);
  await plain.waitFor('the plain stream to open', () => window.sub.opens.length === 1);
  await cred.waitFor('the credentialed stream to fail', () => window.sub.errors.length >= 1);

  const { expected } = await publish(server, '/v1/rooms/r1/events', 'to the room');
  await plain.waitFor('the message on the plain stream', () => window.sub.received.length === 1);
  assert.deepEqual((await plain.state()).received, [expected]);

  await sleep(300); // time in which the refused page would have had it
  const refused = await cred.state();
  assert.deepEqual(refused.received, [], 'nothing reaches the credentialed page');
  assert.deepEqual(refused.opens, [], 'it never opened');
  assert.equal(refused.readyState, CLOSED, 'the browser gave up (no reconnect after a CORS refusal)');
  await eventually('the failure in the network log', async () => cred.sseRequests()[0]?.failure != null, async () => JSON.stringify(cred.sseRequests()));
  const [request] = cred.sseRequests();
  assert.equal(request.failure?.corsError, 'WildcardOriginNotAllowed', `refused for CORS: ${JSON.stringify(request)}`);
});

test('OPTIONS preflight: a cross-origin fetch() of /sse with Last-Event-ID and Cache-Control headers gets the replay', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--cors-origin', fx.pages.origin]);
  t.after(server.stop);
  const first = (await publish(server, '/v1/users/probe/events', 'pr1')).expected;
  const second = (await publish(server, '/v1/users/probe/events', 'pr2')).expected;

  const sub = await openPage(fx.browser, fx.pages); // no EventSource: fetch only
  t.after(sub.close);
  // Neither header is CORS-safelisted, so the browser asks with OPTIONS first.
  const answer = await sub.probe(`${server.publicUrl}/sse?userId=probe`, { 'Last-Event-ID': first.id, 'Cache-Control': 'no-cache' }, ['data: pr2\n\n']);
  assert.equal(answer.error, undefined, `the fetch succeeds: ${JSON.stringify(answer)}`);
  assert.equal(answer.status, 200);
  assert.equal(answer.contentType, 'text/event-stream; charset=utf-8');
  assert.match(answer.text, /^retry: \d+\n\n/);
  assert.ok(answer.text.includes(`id: ${second.id}\ndata: pr2\n\n`), `replayed after the header's id: ${JSON.stringify(answer.text)}`);
  assert.ok(!answer.text.includes('data: pr1'), 'nothing before it');
  assert.ok(!answer.text.includes(GAP), 'no gap notice');

  await eventually('the preflight and the GET in the network log', async () => sub.sseRequests().filter((r) => r.status !== null).length >= 2,
    async () => JSON.stringify(sub.sseRequests()));
  const preflight = sub.sseRequests().find((r) => r.method === 'OPTIONS');
  assert.ok(preflight, `an OPTIONS preflight was sent: ${JSON.stringify(sub.sseRequests())}`);
  assert.equal(preflight.headers['access-control-request-method'], 'GET');
  assert.equal(preflight.headers['access-control-request-headers'], 'cache-control,last-event-id');
  assert.equal(preflight.headers.origin, fx.pages.origin);
  const get = sub.sseRequests().find((r) => r.method === 'GET');
  assert.equal(get.headers['last-event-id'], first.id);
});

for (const [name, args, corsError] of [
  ['another origin (--cors-origin names a different port)', ['--cors-origin', 'http://127.0.0.1:1'], 'AllowOriginMismatch'],
  ['no --cors-origin', [], 'MissingAllowOriginHeader'],
]) {
  test(`refused with ${name}: onerror fires, the page receives nothing, the preflight fails`, { timeout: 60_000 }, async (t) => {
    const server = await startServer(args);
    t.after(server.stop);
    const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1&rooms=r1`, events: ['notify'] });
    t.after(sub.close);
    await sub.waitFor('the error event', () => window.sub.errors.length >= 1);

    await publish(server, '/v1/users/u1/events', 'secret', { event: 'notify' });
    await publish(server, '/v1/rooms/r1/events', 'room secret');
    await publish(server, '/v1/broadcast', 'everyone');
    await sleep(500); // time in which an allowed page gets them (a few ms)

    const state = await sub.state();
    assert.deepEqual(state.received, [], 'nothing reaches the page');
    assert.deepEqual(await rows(sub), [], 'nothing in the DOM');
    assert.deepEqual(state.opens, [], 'onopen never fired');
    assert.equal(state.errors[0].readyState, CLOSED, 'onerror with the connection failed');
    assert.equal(state.errors.length, 1, 'and no retry');
    await eventually('the failure in the network log', async () => sub.sseRequests()[0]?.failure != null, async () => JSON.stringify(sub.sseRequests()));
    const [request] = sub.sseRequests();
    assert.equal(request.headers.origin, fx.pages.origin);
    assert.equal(request.status, 200, 'ssekify answered the stream');
    assert.equal(request.failure?.corsError, corsError, `but the browser refused it for CORS: ${JSON.stringify(request)}`);

    const answer = await sub.probe(`${server.publicUrl}/sse?userId=probe`, { 'Last-Event-ID': 'x', 'Cache-Control': 'no-cache' }, ['retry:']);
    assert.match(answer.error ?? '', /TypeError/, `the fetch is refused: ${JSON.stringify(answer)}`);
  });
}
