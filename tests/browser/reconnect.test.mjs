// Reconnects, replay and heartbeats as a real browser's EventSource sees them:
// the browser reconnects by itself after ssekify's `retry:` hint and sends
// Last-Event-ID; ssekify replays what it missed (or says `ssekify.gap`);
// `: ping` comments keep the stream alive without surfacing as messages.
// The page is on another origin than ssekify (`--cors-origin`), as in
// production setups without a shared reverse proxy.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/browser/*.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, browserAndPages, openPage, publish, api, sleep, eventually, GAP } from './harness.mjs';

const fx = browserAndPages();

const CONNECTING = 0;
const OPEN = 1;

/** The EventSource GET requests (reconnects included) the page's browser sent. */
const streams = (sub) => sub.sseRequests().filter((r) => r.type === 'EventSource');

/** Closes u1's streams on the server and waits until the page notices (error, CONNECTING). */
async function cut(server, sub, errorsBefore = 0) {
  const answer = await api(server, 'DELETE', '/v1/users/u1/connections');
  assert.equal(answer.closed, 1, JSON.stringify(answer));
  await sub.waitFor('the page to notice the closed stream', (n) => window.sub.errors.length > n, errorsBefore);
}

test('the browser reconnects after retry: with Last-Event-ID and ends up with m1..m4 exactly once, in order', { timeout: 60_000 }, async (t) => {
  // The page stays away for the retry: long enough for the publishes below
  // on a busy machine (300 ms was not, on a CI runner building beside it).
  const server = await startServer(['--cors-origin', fx.pages.origin, '--retry', '2s']);
  t.after(server.stop);
  const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1&rooms=r1` });
  t.after(sub.close);
  await sub.waitFor('the stream to open', () => window.sub.opens.length === 1);

  const m1 = (await publish(server, '/v1/users/u1/events', 'm1')).expected;
  const m2 = (await publish(server, '/v1/rooms/r1/events', 'm2')).expected;
  await publish(server, '/v1/users/u2/events', 'not for u1');
  await sub.waitFor('m1 and m2', () => window.sub.received.length === 2);

  await cut(server, sub);
  // While the page is disconnected (it retries after 2 s): a broadcast and
  // a user message, which only the replay rings hold.
  const away = [];
  for (const [route, data] of [['/v1/broadcast', 'm3'], ['/v1/users/u1/events', 'm4']]) {
    const { expected, answer } = await publish(server, route, data);
    assert.equal(answer.delivered, 0, `${data} was published while no stream was connected: ${JSON.stringify(answer)}`);
    away.push(expected);
  }
  await publish(server, '/v1/rooms/r2/events', 'not for r1');

  await sub.waitFor('the reconnect', () => window.sub.opens.length === 2);
  await sub.waitFor('the replay of m3 and m4', () => window.sub.received.length >= 4);
  // Live again after the replay; any duplicate would have come before it.
  const m5 = (await publish(server, '/v1/users/u1/events', 'm5')).expected;
  await sub.waitFor('the live m5', () => window.sub.received.some((m) => m.data === 'm5'));

  const state = await sub.state();
  assert.deepEqual(state.received, [m1, m2, ...away, m5], 'each message exactly once, in publish order, with its id');
  assert.equal(state.received.filter((m) => m.type === GAP).length, 0, 'no ssekify.gap');
  assert.equal(state.errors.length, 1, 'one error: the cut');
  assert.equal(state.errors[0].readyState, CONNECTING, 'the browser kept the EventSource and retried');
  assert.equal(state.readyState, OPEN);
  const delay = state.opens[1].at - state.errors[0].at;
  assert.ok(delay < 5_000, `reconnected ${delay} ms after the cut (retry: 2000)`);

  await eventually('both stream requests in the network log', async () => streams(sub).filter((r) => r.headers).length === 2,
    async () => JSON.stringify(sub.sseRequests()));
  const [first, second] = streams(sub);
  assert.equal(first.headers['last-event-id'], undefined, 'the first request has no Last-Event-ID');
  assert.equal(second.headers['last-event-id'], m2.id, 'the browser\'s reconnect sent the last id it saw');
  assert.equal(second.url, first.url, 'to the same URL');
});

test('a long retry: hint holds the browser back (longer than its own 3 s default)', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--cors-origin', fx.pages.origin, '--retry', '10s']);
  t.after(server.stop);
  const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1` });
  t.after(sub.close);
  await sub.waitFor('the stream to open', () => window.sub.opens.length === 1);
  await cut(server, sub);
  // Chromium's own reconnection delay is 3 s; with the hint it waits 10 s.
  await sleep(4_000);
  const state = await sub.state();
  assert.equal(state.opens.length, 1, 'no reconnect yet');
  assert.equal(state.readyState, CONNECTING, 'still waiting to reconnect');
  assert.equal(streams(sub).length, 1, 'no second request sent');
});

test('heartbeats keep the stream open and never surface as messages', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--cors-origin', fx.pages.origin, '--keep-alive', '100ms', '--retry', '300ms']);
  t.after(server.stop);
  const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1&rooms=r1` });
  t.after(sub.close);
  await sub.waitFor('the stream to open', () => window.sub.opens.length === 1);

  let pings = 0;
  await eventually('ten heartbeats', async () => (pings = (await api(server, 'GET', '/v1/stats')).pings) >= 10,
    async () => `pings=${pings}`);
  const quiet = await sub.state();
  assert.deepEqual(quiet.received, [], 'no message from the heartbeats (nor from retry:)');
  assert.deepEqual(quiet.errors, [], 'no error');
  assert.equal(quiet.opens.length, 1, 'never reconnected');
  assert.equal(quiet.readyState, OPEN);

  const { expected } = await publish(server, '/v1/users/u1/events', 'after the pings');
  await sub.waitFor('the message', () => window.sub.received.length >= 1);
  await sleep(300); // a few more heartbeats
  assert.deepEqual((await sub.state()).received, [expected], 'only the published message');
});

test('an id the server never issued (?lastEventId=) gives the page an ssekify.gap event, then the buffered messages', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--cors-origin', fx.pages.origin]);
  t.after(server.stop);
  // Buffered in u1's ring while u1 is offline.
  const p1 = (await publish(server, '/v1/users/u1/events', 'p1')).expected;
  // A new EventSource cannot set headers: the query parameter stands in for Last-Event-ID.
  const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1&lastEventId=never-issued` });
  t.after(sub.close);
  await sub.waitFor('the gap notice and p1', () => window.sub.received.length >= 2);
  const p2 = (await publish(server, '/v1/users/u1/events', 'p2')).expected;
  await sub.waitFor('the live p2', () => window.sub.received.length >= 3);

  const [gap, ...rest] = (await sub.state()).received;
  assert.equal(gap.type, GAP, 'a named ssekify.gap event first');
  assert.deepEqual(JSON.parse(gap.data), { lastEventId: 'never-issued' });
  assert.equal(gap.id, '', 'the gap notice has no id of its own');
  assert.deepEqual(rest, [p1, p2], 'then the buffered message, then live');
});

test('the browser\'s own reconnect past the ring\'s end gives ssekify.gap, then what is left', { timeout: 60_000 }, async (t) => {
  // Away for 2 s (the retry), so the batch below lands while it is (see the first test).
  const server = await startServer(['--cors-origin', fx.pages.origin, '--retry', '2s', '--recent-buffer', '2']);
  t.after(server.stop);
  const sub = await openPage(fx.browser, fx.pages, { src: `${server.publicUrl}/sse?userId=u1` });
  t.after(sub.close);
  await sub.waitFor('the stream to open', () => window.sub.opens.length === 1);
  const m1 = (await publish(server, '/v1/users/u1/events', 'm1')).expected;
  await sub.waitFor('m1', () => window.sub.received.length === 1);

  await cut(server, sub);
  // Three while away, in one batch request; u1's ring keeps the last two.
  const res = await api(server, 'POST', '/v1/publish', {
    contentType: 'application/json',
    body: JSON.stringify({ messages: ['a1', 'a2', 'a3'].map((data) => ({ user: 'u1', data })) }),
  });
  const away = res.results.map((r, i) => ({ type: 'message', id: r.id, data: `a${i + 1}` }));

  await sub.waitFor('the reconnect, the gap notice and the replay', () => window.sub.opens.length === 2 && window.sub.received.length >= 4);
  const state = await sub.state();
  const [first, gap, ...rest] = state.received;
  assert.deepEqual(first, m1);
  assert.equal(gap.type, GAP, `the gap notice comes right after the reconnect: ${JSON.stringify(state.received)}`);
  assert.deepEqual(JSON.parse(gap.data), { lastEventId: m1.id }, 'naming the id the browser sent');
  assert.equal(gap.id, m1.id, 'e.lastEventId is unchanged by the id-less notice');
  assert.deepEqual(rest, away.slice(1), 'then the two still buffered');
});
