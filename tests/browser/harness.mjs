// Shared pieces of the browser tests: the ssekify binary on port 0 (from
// tests/node/harness.mjs), a static page server on another port (so the
// page's origin differs from ssekify's), Debian's chromium driven by
// playwright-core, and a page whose EventSource records everything it gets
// into `window.sub`.
//
// Environment: SSEKIFY_BIN (default ../../target/debug/ssekify) and
// CHROMIUM_BIN (default /usr/bin/chromium, else `chromium` on PATH).
//
// Every wait here is bounded by WAIT_MS.

import assert from 'node:assert/strict';
import { before, after } from 'node:test';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import { chromium } from 'playwright-core';

// The binary on port 0, as the Node EventSource tests start it (their
// `--retry 300ms` default gives way to a test's own `--retry`).
export { startServer } from '../node/harness.mjs';

export const WAIT_MS = 10_000;
export const GAP = 'ssekify.gap';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One api request with a bounded wait; asserts 200 and returns the parsed JSON answer. */
export async function api(server, method, route, { body, contentType = 'text/plain' } = {}) {
  const res = await fetch(server.apiUrl + route, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': contentType },
    body,
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/**
 * Publishes `data` on `route` (`/v1/users/u1/events`, `/v1/rooms/r1/events`,
 * `/v1/broadcast`) with optional `event` and `id` query parameters, and returns
 * what the page should record for it, plus the api's answer.
 */
export async function publish(server, route, data, { event, id, contentType } = {}) {
  const query = new URLSearchParams();
  if (event) query.set('event', event);
  if (id) query.set('id', id);
  const qs = query.size ? `?${query}` : '';
  const answer = await api(server, 'POST', route + qs, { body: data, contentType });
  assert.equal(typeof answer.id, 'string', JSON.stringify(answer));
  if (id) assert.equal(answer.id, id, 'the publisher id is kept');
  return { expected: { type: event || 'message', id: answer.id, data }, answer };
}

// --- the page -----------------------------------------------------------------

// The page under test. With `?src=<url>` it opens `new EventSource(src)`
// (`&cred=1`: with `withCredentials: true`) and records into `window.sub`:
// every message (`onmessage`, and `addEventListener` for each name in
// `&events=a,b` and for ssekify.gap) as {type, id: lastEventId, data}, every
// open and error with its time and readyState. Each message is also a row of
// the #log list. `window.probe` makes a cross-origin fetch() with headers that
// need a CORS preflight.
const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ssekify browser test</title></head>
<body>
<ol id="log"></ol>
<script>
'use strict';
const params = new URLSearchParams(location.search);
window.sub = { received: [], opens: [], errors: [], es: null };

function record(e) {
  window.sub.received.push({ type: e.type, id: e.lastEventId, data: e.data });
  const row = document.createElement('li');
  row.dataset.type = e.type;
  row.dataset.id = e.lastEventId;
  row.textContent = e.data;
  document.getElementById('log').appendChild(row);
}

if (params.get('src')) {
  const es = new EventSource(params.get('src'), { withCredentials: params.get('cred') === '1' });
  window.sub.es = es;
  es.onopen = () => window.sub.opens.push({ at: Date.now(), readyState: es.readyState });
  es.onerror = () => window.sub.errors.push({ at: Date.now(), readyState: es.readyState });
  es.onmessage = record;
  const names = (params.get('events') || '').split(',').filter(Boolean);
  for (const name of new Set([...names, 'ssekify.gap'])) es.addEventListener(name, record);
}

// fetch(url) with request headers that are not CORS-safelisted (so the browser
// sends an OPTIONS preflight first); reads the body until it contains
// every one of 'until' (or maxMs passes), then aborts.
window.probe = async ({ url, headers, until, maxMs }) => {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), maxMs);
  try {
    const res = await fetch(url, { headers, signal: abort.signal });
    let text = '';
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    while (!until.every((s) => text.includes(s))) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    return { status: res.status, contentType: res.headers.get('content-type'), text };
  } catch (err) {
    return { error: String(err) };
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
};
</script>
</body></html>`;

/**
 * A test file's page server and browser: started before its tests, closed
 * after them. Returns an object whose `pages` and `browser` are set by then.
 */
export function browserAndPages() {
  const fixture = { pages: undefined, browser: undefined };
  before(async () => {
    fixture.pages = await startPageServer();
    fixture.browser = await launchBrowser();
  });
  after(async () => {
    await fixture.browser?.close();
    await fixture.pages?.close();
  });
  return fixture;
}

/** Serves PAGE at `/` on 127.0.0.1:0; resolves `{ origin, url(query), close }`. */
export async function startPageServer() {
  const server = http.createServer((req, res) => {
    if (req.url === '/' || req.url.startsWith('/?')) {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(PAGE);
    } else {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    /** The page's address; `src` is the EventSource URL, the rest as described at PAGE. */
    url: (query = {}) => `${origin}/?${new URLSearchParams(query)}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

// --- the browser --------------------------------------------------------------

/** Debian's chromium: CHROMIUM_BIN, /usr/bin/chromium, or `chromium` on PATH. */
export function chromiumPath() {
  if (process.env.CHROMIUM_BIN) return process.env.CHROMIUM_BIN;
  if (existsSync('/usr/bin/chromium')) return '/usr/bin/chromium';
  try {
    return execFileSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('chromium not found: install it (Debian: apt-get install chromium) or set CHROMIUM_BIN');
  }
}

/** Launches headless chromium (no sandbox when we are root, which it refuses otherwise). */
export function launchBrowser() {
  const args = process.getuid?.() === 0 ? ['--no-sandbox'] : [];
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args, timeout: 30_000 });
}

/**
 * Opens the test page in a new context (its own cookies and cache), with an
 * EventSource on `src`. Resolves `{ page, context, sseRequests, state,
 * waitFor, probe, close }`; `sseRequests()` lists the browser's requests to /sse as
 * the network saw them, preflights included: {method, type, url, headers as
 * sent (lower-case names), status, failure: {errorText, corsError}}.
 */
export async function openPage(browser, pages, { src, events = [], cred = false } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  // From the DevTools protocol: playwright's own request events show neither
  // OPTIONS preflights nor the headers the network stack adds (Last-Event-ID).
  const requests = new Map();
  const entry = (id) => {
    if (!requests.has(id)) requests.set(id, { method: null, type: null, url: null, headers: null, status: null, failure: null });
    return requests.get(id);
  };
  const cdp = await context.newCDPSession(page);
  cdp.on('Network.requestWillBeSent', (e) => {
    Object.assign(entry(e.requestId), { method: e.request.method, type: e.type, url: e.request.url });
  });
  // The raw answer's status: also there when CORS keeps the response from the page.
  cdp.on('Network.responseReceivedExtraInfo', (e) => {
    entry(e.requestId).status = e.statusCode;
  });
  cdp.on('Network.loadingFailed', (e) => {
    entry(e.requestId).failure = { errorText: e.errorText, corsError: e.corsErrorStatus?.corsError ?? null };
  });
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    entry(e.requestId).headers = Object.fromEntries(Object.entries(e.headers).map(([k, v]) => [k.toLowerCase(), v]));
  });
  await cdp.send('Network.enable');
  const query = {};
  if (src) query.src = src;
  if (events.length) query.events = events.join(',');
  if (cred) query.cred = '1';
  await page.goto(pages.url(query));
  /** A copy of window.sub (received, opens, errors) plus the readyState. */
  const state = () => page.evaluate(() => ({
    received: window.sub.received,
    opens: window.sub.opens,
    errors: window.sub.errors,
    readyState: window.sub.es ? window.sub.es.readyState : null,
  }));
  /** Waits until `cond(arg)`, run in the page (where `window.sub` is), holds. */
  const waitFor = async (what, cond, arg) => {
    try {
      await page.waitForFunction(cond, arg, { timeout: WAIT_MS, polling: 20 });
    } catch (err) {
      let detail;
      try { detail = JSON.stringify(await state()); } catch (e) { detail = `(state unavailable: ${e.message})`; }
      throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}: ${err.message.split('\n')[0]}. page: ${detail}`);
    }
  };
  const sseRequests = () => [...requests.values()].filter((r) => r.url && new URL(r.url).pathname === '/sse');
  /** window.probe in the page: a fetch() that needs a CORS preflight (see PAGE). */
  const probe = (url, headers, until, maxMs = WAIT_MS) => page.evaluate((a) => window.probe(a), { url, headers, until, maxMs });
  return { page, context, sseRequests, state, waitFor, probe, close: () => context.close() };
}

/** Polls the async `cond` every 20 ms; rejects after WAIT_MS with `describe()` in the message. */
export async function eventually(what, cond, describe = async () => '') {
  const deadline = Date.now() + WAIT_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}. ${await describe()}`);
    await sleep(20);
  }
}
