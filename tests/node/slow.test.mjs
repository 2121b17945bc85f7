// A slow subscriber with a real EventSource client (the `eventsource` npm
// package): between it and ssekify, a proxy that stops reading, as a client
// on a bad network does. What its queue drops is told to it as one
// `ssekify.gap` event, `{"reason":"slow","dropped":n}`, with no id of its own
// (so a reconnect still resumes from the last message the client got), and
// every message it does not get is counted there.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/slow.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { EventSource } from 'eventsource';
import { api, startServer, waitFor } from './harness.mjs';

const GAP = 'ssekify.gap';
/** 400 messages of 64 KiB: 25 MiB, far more than the sockets' buffers and the 256 KiB queue hold. */
const MESSAGES = 400;
const PAYLOAD = 64 * 1024;

/**
 * A TCP proxy to `target` whose reading from the server can be stopped:
 * the server's socket then fills and its queue for the stream drops.
 */
async function pausingProxy(target) {
  const { hostname, port } = new URL(target);
  const links = [];
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    links.push({ client, upstream });
    client.pipe(upstream);
    upstream.pipe(client);
    for (const socket of [client, upstream]) socket.on('error', () => {});
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    links,
    stopReading() {
      for (const { client, upstream } of links) {
        upstream.unpipe(client);
        upstream.pause();
      }
    },
    readAgain() {
      for (const { client, upstream } of links) upstream.pipe(client);
    },
    close() {
      for (const { client, upstream } of links) {
        client.destroy();
        upstream.destroy();
      }
      server.close();
    },
  };
}

test('a slow EventSource is told how many messages its queue dropped, once, where they were', { timeout: 120_000 }, async (t) => {
  const server = await startServer(['--shards', '1']);
  t.after(server.stop);
  const proxy = await pausingProxy(server.publicUrl);
  t.after(proxy.close);

  const es = new EventSource(`${proxy.url}/sse?userId=slow`);
  t.after(() => es.close());
  const state = { opens: 0, errors: 0, messages: [], gaps: [] };
  es.addEventListener('open', () => { state.opens += 1; });
  es.addEventListener('error', () => { state.errors += 1; });
  es.addEventListener('message', (e) => {
    state.messages.push({ id: e.lastEventId, seq: Number(e.data.slice(0, 5)) });
  });
  es.addEventListener(GAP, (e) => {
    state.gaps.push({ data: JSON.parse(e.data), lastEventId: e.lastEventId, after: state.messages.length });
  });
  const describe = () =>
    `opens=${state.opens} errors=${state.errors} messages=${state.messages.length} gaps=${JSON.stringify(state.gaps)}`;
  await waitFor('the stream to open', () => state.opens === 1, describe);

  proxy.stopReading();
  const payload = (seq) => String(seq).padStart(5, '0') + 'x'.repeat(PAYLOAD - 5);
  for (let seq = 0; seq < MESSAGES; seq += 1) {
    const answer = await api(server, 'POST', '/v1/users/slow/events', payload(seq));
    assert.equal(answer.delivered, 1, JSON.stringify(answer));
  }
  const stats = await api(server, 'GET', '/v1/stats');
  assert.ok(stats.droppedOldest > 0, `the queue dropped nothing: ${JSON.stringify(stats)}`);

  proxy.readAgain();
  const told = () => state.gaps.reduce((sum, gap) => sum + gap.data.dropped, 0);
  await waitFor('every message, or a notice of it', () => state.messages.length + told() >= MESSAGES, describe);

  assert.equal(state.gaps.length, 1, `one notice for one run of drops: ${describe()}`);
  const [gap] = state.gaps;
  assert.equal(gap.data.reason, 'slow', describe());
  assert.equal(gap.data.dropped, stats.droppedOldest, describe());
  assert.equal(state.messages.length + gap.data.dropped, MESSAGES, describe());
  assert.ok(gap.after > 0, describe());
  // Drop-oldest: what the client got is in order and ends with the newest.
  const seqs = state.messages.map((m) => m.seq);
  assert.ok(seqs.every((seq, i) => i === 0 || seqs[i - 1] < seq), `out of order: ${seqs.join(',')}`);
  assert.equal(seqs.at(-1), MESSAGES - 1);
  assert.equal(state.opens, 1, `no reconnect: ${describe()}`);

  // The notice has no id, so the client's last event id is still its last
  // message's: cut, it reconnects with that id and resumes exactly (the
  // replay finds it: nothing to replay, no other gap).
  const cut = await api(server, 'DELETE', '/v1/users/slow/connections');
  assert.equal(cut.closed, 1, JSON.stringify(cut));
  await waitFor('the client to reconnect', () => state.opens === 2, describe);
  await api(server, 'POST', '/v1/users/slow/events', payload(MESSAGES));
  await waitFor('the message after the reconnect', () => state.messages.at(-1).seq === MESSAGES, describe);
  assert.equal(state.gaps.length, 1, `the reconnect resumed from the last message: ${describe()}`);
});
