// examples/chat/server.mjs against a real ssekify, with real EventSource
// clients: users joined to a room live, chat lines relayed to the room, and
// the online list kept from presence and the lifecycle events stream.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/*.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EventSource } from 'eventsource';
import { requireCommand, startRedis, startServer, waitFor, WAIT_MS } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHAT = path.resolve(here, '../../examples/chat/server.mjs');

/** Starts the chat app on a free port; resolves its base URL and a stop function. */
function startChat(server, events = [server]) {
  const env = {
    ...process.env,
    SSEKIFY_API: server.apiUrl,
    SSEKIFY_PUBLIC: server.publicUrl,
    SSEKIFY_EVENTS: events.map((s) => s.apiUrl).join(','),
    PORT: '0',
  };
  const child = spawn(process.execPath, [CHAT], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let logs = '';
  const stop = () => child.kill('SIGKILL');
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { stop(); reject(new Error(`chat did not start: ${logs}`)); }, WAIT_MS);
    const onData = (chunk) => {
      logs += chunk;
      const match = logs.match(/chat listening on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ url: match[1], stop, logs: () => logs });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`chat exited ${code}: ${logs}`)); });
  });
}

async function post(chat, route, body) {
  const res = await fetch(chat.url + route, { method: 'POST', body: JSON.stringify(body) });
  const answer = await res.json();
  assert.equal(res.status, 200, `${route}: ${JSON.stringify(answer)}`);
  return answer;
}

/** An EventSource for `user` recording its `chat` and `presence` events. */
function member(server, user) {
  const es = new EventSource(`${server.publicUrl}/sse?userId=${encodeURIComponent(user)}`);
  const state = { es, opens: 0, chat: [], presence: [] };
  es.addEventListener('open', () => { state.opens += 1; });
  es.addEventListener('chat', (e) => state.chat.push(JSON.parse(e.data)));
  es.addEventListener('presence', (e) => state.presence.push(JSON.parse(e.data).users.slice().sort()));
  state.describe = () => `${user}: opens=${state.opens} chat=${JSON.stringify(state.chat)} presence=${JSON.stringify(state.presence)}`;
  return state;
}

const lastPresence = (m) => JSON.stringify(m.presence.at(-1));

test('a presence-aware chat runs on ssekify alone', { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const chat = await startChat(server);
  t.after(chat.stop);
  const alice = member(server, 'alice');
  const bob = member(server, 'bob');
  t.after(() => { alice.es.close(); bob.es.close(); });
  await waitFor('both streams to open', () => alice.opens === 1 && bob.opens === 1, () => alice.describe() + bob.describe());

  assert.deepEqual((await post(chat, '/rooms/lobby/join', { user: 'alice' })).users, ['alice']);
  const joined = await post(chat, '/rooms/lobby/join', { user: 'bob' });
  assert.equal(joined.joined, 1);
  await waitFor('alice to see bob arrive', () => lastPresence(alice) === '["alice","bob"]', alice.describe);
  await waitFor('bob to see the list', () => lastPresence(bob) === '["alice","bob"]', bob.describe);

  assert.equal((await post(chat, '/rooms/lobby/say', { user: 'alice', text: 'hi bob' })).delivered, 2);
  await waitFor('bob to read alice', () => bob.chat.some((m) => m.text === 'hi bob'), bob.describe);
  await waitFor('alice to read herself', () => alice.chat.some((m) => m.text === 'hi bob'), alice.describe);

  // Bob's tab closes: the events stream tells the app, which tells the room.
  bob.es.close();
  await waitFor('alice to see bob leave', () => lastPresence(alice) === '["alice"]', alice.describe);
  const online = await (await fetch(`${chat.url}/rooms/lobby/online`)).json();
  assert.deepEqual(online.users, ['alice']);
  assert.equal(alice.opens, 1, 'joins happened without reconnecting');
});

test('the chat spans two instances over Redis', { timeout: 60_000 }, async (t) => {
  if (!requireCommand(t, 'redis-server')) return;
  const redis = await startRedis();
  t.after(redis.stop);
  const a = await startServer(['--redis', redis.url, '--bus-timeout', '1s']);
  t.after(a.stop);
  const b = await startServer(['--redis', redis.url, '--bus-timeout', '1s']);
  t.after(b.stop);
  // The app talks to A only, and hears both instances' events.
  const chat = await startChat(a, [a, b]);
  t.after(chat.stop);
  const alice = member(a, 'alice');
  const bob = member(b, 'bob');
  t.after(() => { alice.es.close(); bob.es.close(); });
  await waitFor('both streams to open', () => alice.opens === 1 && bob.opens === 1, () => alice.describe() + bob.describe());
  const instances = async () => (await (await fetch(`${a.apiUrl}/v1/stats`)).json()).bus.instances;
  const deadline = Date.now() + WAIT_MS;
  while ((await instances()) !== 2) {
    assert.ok(Date.now() < deadline, 'A hears B alive within the wait');
    await new Promise((r) => setTimeout(r, 50));
  }

  await post(chat, '/rooms/lobby/join', { user: 'alice' });
  const joined = await post(chat, '/rooms/lobby/join', { user: 'bob' });
  assert.equal(joined.instances, 2, 'the join went to both instances');
  assert.deepEqual(joined.users, ['alice', 'bob'], 'presence asked on A counts bob on B');
  await waitFor('bob, on B, to see the list', () => lastPresence(bob) === '["alice","bob"]', bob.describe);
  await waitFor('alice, on A, to see the list', () => lastPresence(alice) === '["alice","bob"]', alice.describe);

  await post(chat, '/rooms/lobby/say', { user: 'alice', text: 'across' });
  await waitFor('bob to read alice through the bus', () => bob.chat.some((m) => m.text === 'across'), bob.describe);

  // Bob's tab closes on B: B's events stream tells the app, A's presence agrees.
  bob.es.close();
  await waitFor('alice to see bob leave', () => lastPresence(alice) === '["alice"]', alice.describe);
  assert.equal(alice.opens, 1, 'joins happened without reconnecting');
});
