// Publishing to ssekify from Node 20+ with the built-in fetch — no dependencies.
//
//   SSEKIFY_API=127.0.0.1:8081 SSEKIFY_API_KEY=... node publish.mjs
//   SSEKIFY_TENANT=acme SSEKIFY_API_KEY=<acme's apiKey> node publish.mjs   # one tenant's routes
//
// Run it to publish one of each kind, or import the functions:
//   import { toUser } from './publish.mjs'
//   await toUser('alice', { unread: 3 }, { event: 'notify' })

import { pathToFileURL } from 'node:url'

const raw = process.env.SSEKIFY_API ?? '127.0.0.1:8081'
const API = (raw.startsWith('http') ? raw : `http://${raw}`).replace(/\/+$/, '')
const KEY = process.env.SSEKIFY_API_KEY // only needed with --api-key (or a tenant's apiKey)
// With a tenant, every route is under /v1/t/{tenant}/: its users, rooms and
// broadcast, where a tenant's own apiKey is accepted.
const TENANT = process.env.SSEKIFY_TENANT
const BASE = TENANT ? `${API}/v1/t/${encodeURIComponent(TENANT)}` : `${API}/v1`

/** The server refused the request: HTTP status, error code and message from its JSON body. */
export class PublishError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`)
    Object.assign(this, { status, code })
  }
}

/** POST to the api; returns the parsed JSON answer or throws PublishError. */
async function post(path, body, contentType) {
  const headers = { 'Content-Type': contentType }
  if (KEY) headers.Authorization = `Bearer ${KEY}`
  // Retry only when the connection was refused (instance restarting): then
  // nothing was delivered, so a retry cannot duplicate. Any other failure is
  // ambiguous (the message may have gone out) and is reported instead.
  for (let attempt = 1; ; attempt++) {
    let res
    try {
      res = await fetch(BASE + path, { method: 'POST', headers, body, signal: AbortSignal.timeout(5000) })
    } catch (err) {
      if (err.cause?.code === 'ECONNREFUSED' && attempt < 4) {
        await new Promise((r) => setTimeout(r, 250 * 2 ** attempt))
        continue
      }
      throw err
    }
    const answer = await res.json().catch(() => ({}))
    if (!res.ok) throw new PublishError(res.status, answer.error ?? '', answer.message ?? res.statusText)
    return answer // {id, delivered, instances} or, for batches, {results: [...]}
  }
}

/** Strings go as text/plain (sent verbatim), anything else as JSON. */
function encode(data) {
  return typeof data === 'string'
    ? [data, 'text/plain; charset=utf-8']
    : [JSON.stringify(data), 'application/json']
}

function query(opts) {
  const q = new URLSearchParams()
  if (opts.event) q.set('event', opts.event) // named event: addEventListener(name) in the browser
  if (opts.id) q.set('id', opts.id) // your own id; otherwise the server assigns a time-ordered one
  const s = q.toString()
  return s ? `?${s}` : ''
}

const seg = encodeURIComponent // user ids and room names may hold any UTF-8 but ',' and '/'

export const toUser = (user, data, opts = {}) =>
  post(`/users/${seg(user)}/events${query(opts)}`, ...encode(data))

export const toRoom = (room, data, opts = {}) =>
  post(`/rooms/${seg(room)}/events${query(opts)}`, ...encode(data))

export const broadcast = (data, opts = {}) => post(`/broadcast${query(opts)}`, ...encode(data))

/** messages: [{user|room|all:true, event?, id?, data}]; validated whole, delivered in order. */
export const batch = (messages) => post('/publish', JSON.stringify({ messages }), 'application/json')

/** Same as batch, as NDJSON: one object per line, handy for streaming producers. */
export const batchNdjson = (messages) =>
  post('/publish', messages.map((m) => JSON.stringify(m)).join('\n') + '\n', 'application/x-ndjson')

// One of each kind; runs only when this file is the script, not when imported.
async function demo() {
  console.log('api:', BASE)
  console.log('user     ', JSON.stringify(await toUser('alice', { title: 'Order shipped', orderId: 42 }, { event: 'notify' })))
  console.log('user text', JSON.stringify(await toUser('alice', 'hello alice\nsecond line', { event: 'chat' })))
  console.log('room     ', JSON.stringify(await toRoom('lobby', { user: 'bob', state: 'online' }, { event: 'presence' })))
  console.log('broadcast', JSON.stringify(await broadcast({ maintenance: 'in 10 minutes' })))
  console.log('batch    ', JSON.stringify(await batch([
    { user: 'alice', event: 'notify', data: { unread: 3 } },
    { room: 'news', event: 'headline', data: 'ssekify released' },
    { all: true, data: { ping: true } },
  ])))
  console.log('ndjson   ', JSON.stringify(await batchNdjson([
    { user: 'alice', event: 'notify', data: { unread: 4 } },
    { room: 'lobby', data: 'plain text to the lobby' },
    { all: true, event: 'tick', data: 1 },
  ])))
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  demo().catch((err) => {
    console.error('publish failed:', err.message, err.cause?.code ?? '')
    process.exit(1)
  })
}
