// Lossless reconnect with a real EventSource client (the `eventsource` npm
// package, browser API): the client reconnects by itself and sends
// Last-Event-ID; ssekify replays what it missed, or sends an `ssekify.gap`
// event when it cannot.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/*.test.mjs
//
// Every wait is bounded (WAIT_MS), and the server is killed after each test.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import { api, startServer, waitFor, WAIT_MS } from './harness.mjs';

const GAP = 'ssekify.gap';

/** A publisher that remembers what it published, in order. */
function publisher(server) {
  const published = [];
  const routes = {
    user: (name) => `/v1/users/${encodeURIComponent(name)}/events`,
    room: (name) => `/v1/rooms/${encodeURIComponent(name)}/events`,
    all: () => '/v1/broadcast',
  };
  return {
    published,
    /** Publishes an event the subscriber should receive, and records it. */
    async send(kind, name, data) {
      const answer = await api(server, 'POST', routes[kind](name), data);
      assert.equal(typeof answer.id, 'string', JSON.stringify(answer));
      published.push({ type: 'message', id: answer.id, data });
      return answer;
    },
    /** Publishes an event for somebody else (not recorded). */
    async other(kind, name, data) {
      return api(server, 'POST', routes[kind](name), data);
    },
  };
}

/** Opens an EventSource recording every message and gap event, and its opens. */
function subscribe(url) {
  const es = new EventSource(url);
  const state = { es, received: [], opens: 0, errors: 0 };
  es.addEventListener('open', () => { state.opens += 1; });
  es.addEventListener('error', () => { state.errors += 1; });
  es.addEventListener('message', (e) => state.received.push({ type: 'message', id: e.lastEventId, data: e.data }));
  es.addEventListener(GAP, (e) => state.received.push({ type: GAP, data: e.data }));
  state.describe = () => `opens=${state.opens} errors=${state.errors} readyState=${es.readyState} received=${JSON.stringify(state.received)}`;
  return state;
}

/** Cuts alice's stream on the server and waits until the client notices. */
async function cut(server, sub, user) {
  const answer = await api(server, 'DELETE', `/v1/users/${user}/connections`);
  assert.equal(answer.closed, 1, JSON.stringify(answer));
  await waitFor('the client to notice the closed stream', () => sub.es.readyState === EventSource.CONNECTING, sub.describe);
}

test('a reconnecting EventSource receives every message exactly once, in order', { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const sub = subscribe(`${server.publicUrl}/sse?userId=alice&rooms=lobby`);
  t.after(() => sub.es.close());
  await waitFor('the stream to open', () => sub.opens === 1, sub.describe);

  const pub = publisher(server);
  await pub.send('user', 'alice', 'u1');
  await pub.send('room', 'lobby', 'l1');
  await pub.send('user', 'alice', 'u2');
  await pub.other('user', 'bob', 'not for alice');
  await waitFor('the live events', () => sub.received.length >= 3, sub.describe);

  await cut(server, sub, 'alice');
  // While it is away (it retries after 300 ms): user, room and broadcast.
  await pub.send('user', 'alice', 'u3');
  await pub.send('room', 'lobby', 'l2');
  await pub.send('all', '', 'b1');
  await pub.other('room', 'elsewhere', 'not for alice either');
  await pub.send('user', 'alice', 'u4');

  await waitFor('the reconnect', () => sub.opens === 2, sub.describe);
  await waitFor('the missed events', () => sub.received.length >= pub.published.length, sub.describe);
  // Live again after the replay.
  await pub.send('user', 'alice', 'u5');
  await pub.send('all', '', 'b2');
  await waitFor('the live events after the reconnect', () => sub.received.length >= pub.published.length, sub.describe);
  // Anything duplicated would have arrived before the last live event.
  assert.deepEqual(sub.received, pub.published, 'each event exactly once, in publish order (ids and data)');
  assert.equal(sub.received.filter((e) => e.type === GAP).length, 0, 'no ssekify.gap event');
  assert.equal(new Set(sub.received.map((e) => e.id)).size, sub.received.length, 'ids are unique');
});

test('missing more than the buffer gives an ssekify.gap event with the last id', { timeout: 60_000 }, async (t) => {
  // Away for 2 s (the retry), so the batch below surely lands while it is.
  const server = await startServer(['--recent-buffer', '3', '--retry', '2s']);
  t.after(server.stop);
  const sub = subscribe(`${server.publicUrl}/sse?userId=alice&rooms=lobby`);
  t.after(() => sub.es.close());
  await waitFor('the stream to open', () => sub.opens === 1, sub.describe);

  const pub = publisher(server);
  const first = await pub.send('user', 'alice', 'before');
  await waitFor('the first event', () => sub.received.length === 1, sub.describe);
  assert.equal(sub.es.readyState, EventSource.OPEN);

  await cut(server, sub, 'alice');
  // Five while away, in one batch request;
  // the user ring keeps only the last three.
  const away = ['a1', 'a2', 'a3', 'a4', 'a5'];
  const res = await fetch(`${server.apiUrl}/v1/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: away.map((data) => ({ user: 'alice', data })) }),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const batch = await res.json();
  assert.equal(res.status, 200, JSON.stringify(batch));
  batch.results.forEach((r, i) => pub.published.push({ type: 'message', id: r.id, data: away[i] }));

  await waitFor('the reconnect and the replay', () => sub.opens === 2 && sub.received.length >= 5, sub.describe);
  await pub.send('user', 'alice', 'live');
  await waitFor('the live event', () => sub.received.some((e) => e.data === 'live'), sub.describe);

  const [before, gap, ...rest] = sub.received;
  assert.deepEqual(before, pub.published[0]);
  assert.equal(gap.type, GAP, `the gap notice comes right after the reconnect: ${sub.describe()}`);
  assert.deepEqual(JSON.parse(gap.data), { lastEventId: first.id });
  assert.deepEqual(rest, pub.published.slice(-4), 'then the three still buffered, then live');
  assert.equal(sub.received.filter((e) => e.type === GAP).length, 1, 'exactly one gap notice');
});
