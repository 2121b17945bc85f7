// What the framework examples (express/, fastify/ and koa/ beside this file)
// share: a stand-in for the application's sessions, the stream URL a
// logged-in page gets, and the business event that pushes to its user. Each
// framework's app.mjs only wires these to its routes. Node 20+.
//
// Environment (the names ssekify itself reads, so one env file serves both):
//   SSEKIFY_AUTH          jwt or signed: the --auth mode ssekify runs with
//   SSEKIFY_JWT_SECRET    for jwt; SSEKIFY_SIGN_SECRET for signed (the server's secret)
//   SSEKIFY_PUBLIC        ssekify's public listener as browsers reach it: host:port
//                         or a URL such as https://push.example.com (default 127.0.0.1:8080)
//   SSEKIFY_API, SSEKIFY_API_KEY   its api listener and key (read by publish.mjs)
//   PORT, HOST            where the app listens (default 127.0.0.1:3000)

import { randomUUID } from 'node:crypto'
import { jwt, signedUrl } from './credentials.mjs'
import { toUser } from './publish.mjs'

export const PORT = Number(process.env.PORT ?? 3000)
export const HOST = process.env.HOST ?? '127.0.0.1'

const AUTH = process.env.SSEKIFY_AUTH
if (AUTH !== 'jwt' && AUTH !== 'signed') {
  throw new Error('set SSEKIFY_AUTH to jwt or signed, the --auth mode ssekify runs with')
}
const raw = process.env.SSEKIFY_PUBLIC ?? '127.0.0.1:8080'
const PUBLIC = (raw.startsWith('http') ? raw : `http://${raw}`).replace(/\/+$/, '')
// Credentials are checked when a stream opens, so they can be short-lived:
// a page asks for a fresh one whenever it (re)opens its EventSource.
const TTL_SECONDS = 300

/** An error the frameworks answer with its status (all three read `status`; Fastify `statusCode`). */
function httpError(status, message, cause) {
  // expose: Koa shows the message of a 4xx and logs only 5xx errors.
  return Object.assign(new Error(message, { cause }), { status, statusCode: status, expose: status < 500 })
}

// Stand-in for your session store: session cookie -> who is logged in.
const sessions = new Map([
  ['s-alice', { id: 'alice', rooms: ['lobby'] }],
  ['s-bob', { id: 'bob', rooms: ['lobby'] }],
])

/** The logged-in user of a request's Cookie header; throws 401 without a session. */
export function requireUser(cookieHeader) {
  for (const part of (cookieHeader ?? '').split(';')) {
    const [name, ...value] = part.trim().split('=')
    const user = name === 'session' && sessions.get(decodeURIComponent(value.join('=')))
    if (user) return user
  }
  throw httpError(401, 'log in first')
}

/**
 * What a page needs to open its stream: `new EventSource(url)`. The user and
 * the rooms it may join are in the credential, so ssekify trusts no `userId`.
 */
export function pushCredentials(user) {
  const url =
    AUTH === 'jwt'
      ? `${PUBLIC}/sse?${new URLSearchParams({
          rooms: user.rooms.join(','),
          // ?token=, because a browser's EventSource cannot set Authorization.
          token: jwt({ user: user.id, rooms: user.rooms, ttl: TTL_SECONDS }),
        })}`
      : signedUrl(`${PUBLIC}/sse`, { user: user.id, rooms: user.rooms, ttl: TTL_SECONDS })
  return { url, expiresIn: TTL_SECONDS }
}

/**
 * The business event: an order placed by `user` is pushed to every open tab
 * of that user as an `order.created` event. A real app would save the order
 * and publish from an outbox once its transaction commits, so that an outage
 * of the push server never fails an order; this one saves nothing, and a
 * refused publish fails the request with 502.
 */
export async function placeOrder(user, item) {
  if (typeof item !== 'string' || item === '') throw httpError(400, 'the body must be {"item": "<what to order>"}')
  const order = { id: randomUUID(), item, placedAt: new Date().toISOString() }
  try {
    // {id, delivered, instances}: delivered counts this instance's streams of the user.
    const pushed = await toUser(user.id, order, { event: 'order.created' })
    return { order, pushed }
  } catch (err) {
    throw httpError(502, `the push server did not take the event: ${err.message}`, err)
  }
}
