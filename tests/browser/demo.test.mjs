// The demo page (`--demo`: examples/browser/index.html at GET / on the public
// listener) in a real browser, as a person uses it: same origin, so no
// --cors-origin; Connect, watch published events appear in the table, and
// see it reconnect by itself after the server closes the stream.
//
//   SSEKIFY_BIN=$PWD/target/debug/ssekify node --test tests/browser/*.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, publish, api, WAIT_MS } from './harness.mjs';

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** The table's rows, oldest first (the page puts the newest on top): [event, id, data]. */
const rows = (page) => page.$$eval('#log tr', (trs) => trs.map((tr) => [...tr.cells].slice(1).map((td) => td.textContent)).reverse());

test('the --demo page connects on the same origin, shows published events and reconnects by itself', { timeout: 60_000 }, async (t) => {
  const server = await startServer(['--demo']);
  t.after(server.stop);
  const context = await browser.newContext();
  t.after(() => context.close());
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);

  await page.goto(`${server.publicUrl}/`);
  assert.equal(await page.inputValue('#server'), server.publicUrl, 'the page points at its own origin');
  await page.click('#connect'); // userId alice, rooms lobby,news
  await page.waitForSelector('#status.open');

  const expected = [];
  const show = ({ type, id, data }) => expected.push([type, id, data]);
  show((await publish(server, '/v1/users/alice/events', 'hello alice', { event: 'notify' })).expected);
  show({ ...(await publish(server, '/v1/rooms/lobby/events', '{"text":"hi room"}', { contentType: 'application/json' })).expected, data: '{\n  "text": "hi room"\n}' });
  show((await publish(server, '/v1/broadcast', 'tock', { event: 'tick' })).expected);
  await page.waitForFunction(() => document.getElementById('count').textContent === '3');
  assert.deepEqual(await rows(page), expected, 'each event a row: its type, id and data (JSON pretty-printed)');
  assert.equal(await page.textContent('#lastId'), expected[2][1]);

  const { closed } = await api(server, 'DELETE', '/v1/users/alice/connections');
  assert.equal(closed, 1);
  show((await publish(server, '/v1/users/alice/events', 'while away', { event: 'notify' })).expected);
  await page.waitForFunction(() => document.getElementById('reconnects').textContent === '1');
  await page.waitForSelector('#status.open');
  await page.waitForFunction(() => document.getElementById('count').textContent === '4');
  assert.deepEqual(await rows(page), expected, 'the one published while it was away, after the reconnect');
});
