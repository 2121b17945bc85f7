// Shared by the node:test files (tests/node, and tests/browser for
// startServer): start the ssekify binary on port 0, wait for conditions with a
// bound, and call the api.
//
// SSEKIFY_BIN names the binary (default: target/debug/ssekify of this checkout).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SSEKIFY_BIN || path.resolve(here, '../../target/debug/ssekify');
export const WAIT_MS = 15_000;

/** Flags every test server gets unless its own arguments name them (clap refuses a flag twice). */
const DEFAULT_ARGS = { '--retry': '300ms', '--shards': '2', '--log-level': 'info', '--log-format': 'text' };

/** Starts ssekify on port 0 and resolves `{ publicUrl, apiUrl, stop, logs }` once it is ready. */
export function startServer(extraArgs = []) {
  const args = ['--listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0'];
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
