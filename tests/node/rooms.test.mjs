// Live rooms with a real EventSource client (the `eventsource` package): a
// connected user is joined to a room and left out of it by the api, and the
// open stream sees the room's messages start and stop without reconnecting.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/node/*.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import { api, startServer, waitFor } from './harness.mjs';

test('an open EventSource joins and leaves a room live, on one connection', { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const es = new EventSource(`${server.publicUrl}/sse?userId=nina`);
  t.after(() => es.close());
  const state = { received: [], opens: 0 };
  es.addEventListener('open', () => { state.opens += 1; });
  es.addEventListener('message', (e) => state.received.push(e.data));
  const describe = () => `opens=${state.opens} received=${JSON.stringify(state.received)}`;
  await waitFor('the stream to open', () => state.opens === 1, describe);

  assert.equal((await api(server, 'POST', '/v1/rooms/lobby/events', 'before the join')).delivered, 0);
  assert.deepEqual(await api(server, 'PUT', '/v1/users/nina/rooms/lobby'), { joined: 1, instances: 1 });
  assert.equal((await api(server, 'POST', '/v1/rooms/lobby/events', 'in the room')).delivered, 1);
  await waitFor('the room message', () => state.received.includes('in the room'), describe);

  assert.deepEqual(await api(server, 'DELETE', '/v1/users/nina/rooms/lobby'), { left: 1, instances: 1 });
  await api(server, 'POST', '/v1/rooms/lobby/events', 'after the leave');
  await api(server, 'POST', '/v1/users/nina/events', 'to nina');
  await waitFor('the user message', () => state.received.includes('to nina'), describe);
  assert.deepEqual(state.received, ['in the room', 'to nina']);
  assert.equal(state.opens, 1, 'no reconnect happened');
});
