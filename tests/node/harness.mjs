// Shared by the node:test files (tests/node, and tests/browser for
// startServer): start the ssekify binary on port 0, wait for conditions with a
// bound, call the api, record what an EventSource receives, and run the
// examples' scripts (node, python3, bash) to completion.
//
// SSEKIFY_BIN names the binary (default: target/debug/ssekify of this checkout);
// PYTHON the Python the Python examples run with (default python3).

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { EventSource } from 'eventsource';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SSEKIFY_BIN || path.resolve(here, '../../target/debug/ssekify');
export const WAIT_MS = 15_000;

/** Flags every test server gets unless its own arguments name them (clap refuses a flag twice). */
const DEFAULT_ARGS = { '--retry': '300ms', '--shards': '2', '--log-level': 'info', '--log-format': 'text' };

/** Starts ssekify on port 0 and resolves `{ publicUrl, apiUrl, stop, logs }` once it is ready. */
export function startServer(extraArgs = []) {
  const args = [];
  // A test may pin a listener (e.g. a publisher retrying until the port answers).
  for (const flag of ['--listen', '--api-listen']) {
    if (!extraArgs.includes(flag)) args.push(flag, '127.0.0.1:0');
  }
  for (const [flag, value] of Object.entries(DEFAULT_ARGS)) {
    if (!extraArgs.includes(flag)) args.push(flag, value);
  }
  args.push(...extraArgs);
  const env = { ...process.env };
  delete env.RUST_LOG;
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let logs = '';
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`${BIN} printed no ready line within ${WAIT_MS} ms; output:\n${logs}`));
    }, WAIT_MS);
    const onData = (chunk) => {
      logs += chunk.toString();
      for (const line of logs.split('\n').slice(0, -1)) {
        if (!line.includes('ssekify ready')) continue;
        const field = (key) => line.match(new RegExp(`\\b${key}=("?)([^\\s",]+)\\1`))?.[2];
        const pub = field('public');
        const api = field('api');
        clearTimeout(timer);
        if (!pub || !api) {
          stop();
          reject(new Error(`cannot parse the ready line: ${line}`));
          return;
        }
        resolve({ publicUrl: `http://${pub}`, apiUrl: `http://${api}`, stop, logs: () => logs });
        return;
      }
    };
    child.stderr.on('data', onData);
    child.stdout.on('data', onData);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot spawn ${BIN}: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`ssekify exited (${code ?? signal}) before it was ready; output:\n${logs}`));
    });
  });
}

/** Polls `cond` every 10 ms; rejects after WAIT_MS with `describe()` in the message. */
export async function waitFor(what, cond, describe = () => '') {
  const deadline = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}. ${describe()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** One api request with a bounded wait; returns the parsed JSON answer after asserting 200. */
export async function api(server, method, route, body) {
  const res = await fetch(server.apiUrl + route, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'text/plain' },
    body,
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text);
}

export const PYTHON = process.env.PYTHON || 'python3';

/**
 * Whether `command` runs here (`command --version`). A missing one fails the
 * test under CI=true (scripts/test.sh installs python3 and curl); elsewhere
 * the test is skipped with a message saying why.
 */
export function requireCommand(t, command) {
  const probe = spawnSync(command, ['--version'], { stdio: 'ignore' });
  if (!probe.error && probe.status === 0) return true;
  const why = `${command} is not available (${probe.error?.code ?? `exit ${probe.status}`})`;
  if (process.env.CI === 'true') throw new Error(`${why}; under CI=true this test must run`);
  t.skip(`${why}: SKIPPED`);
  return false;
}

/**
 * Runs a command to its end with a bound; resolves `{ code, signal, stdout, stderr }`.
 * `onStdout(text so far)` sees the output as it arrives.
 */
export function run(command, args, { env = process.env, timeoutMs = WAIT_MS, onStdout } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} did not finish within ${timeoutMs} ms; stdout:\n${stdout}\nstderr:\n${stderr}`));
    }, timeoutMs);
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      onStdout?.(stdout);
    });
    child.stderr.on('data', (chunk) => { stderr += chunk; });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${command}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** A port nothing listens on right now (bound on 127.0.0.1:0, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Opens an EventSource and records every event of the given types as
 * `{ type, data, id }`, its opens and the status of each error (undefined
 * when the connection just dropped). EventSource has no catch-all listener:
 * name every event type the test expects.
 */
export function record(url, types = ['message'], init = undefined) {
  const es = new EventSource(url, init);
  const state = { es, events: [], opens: 0, errors: [] };
  es.addEventListener('open', () => { state.opens += 1; });
  es.addEventListener('error', (e) => state.errors.push(e.code));
  for (const type of types) {
    es.addEventListener(type, (e) => state.events.push({ type, data: e.data, id: e.lastEventId }));
  }
  state.describe = () =>
    `opens=${state.opens} errors=${JSON.stringify(state.errors)} readyState=${es.readyState} events=${JSON.stringify(state.events)}`;
  return state;
}

/**
 * Starts a redis-server of its own on a free port (no persistence) and
 * resolves `{ url, stop }` once it accepts connections. Callers check
 * `requireCommand(t, 'redis-server')` first.
 */
export async function startRedis() {
  const port = await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let logs = '';
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`redis-server did not start within ${WAIT_MS} ms:\n${logs}`));
    }, WAIT_MS);
    child.stdout.on('data', (chunk) => {
      logs += chunk;
      if (logs.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve({ url: `redis://127.0.0.1:${port}`, stop });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited ${code}:\n${logs}`));
    });
  });
}
