// The application side of `ssekify --auth webhook`: ssekify asks this server
// about every subscribe request, forwarding its query string and its Cookie,
// Authorization, X-Forwarded-For (and, on /t/{tenant}/sse, X-Ssekify-Tenant)
// headers. Node 20+, no dependencies.
//
//   node auth-webhook.mjs                       # listens on 127.0.0.1:3000 (PORT=0: a free port)
//   ssekify --auth webhook --auth-url http://127.0.0.1:3000/sse-auth
//   curl -N -H 'Cookie: session=s-alice' 'http://127.0.0.1:8080/sse?rooms=lobby'
//
// Answer 200 {"user", "rooms"} to allow (rooms: the ones it may join, ["*"]
// for any; the subscriber picks with ?rooms=), or any 4xx to refuse with that
// status. Be fast: ssekify waits at most --auth-timeout (2 s) and reuses an
// answer for --auth-cache-ttl (5 s) for byte-identical cookies and query.

import http from 'node:http'

// Stand-in for your session store: session id -> who is logged in.
const sessions = new Map([
  ['s-alice', { user: 'alice', rooms: ['lobby', 'news'] }],
  ['s-admin', { user: 'admin', rooms: ['*'] }],
])

function cookie(header, name) {
  for (const part of (header ?? '').split(';')) {
    const [key, ...value] = part.trim().split('=')
    if (key === name) return decodeURIComponent(value.join('='))
  }
  return undefined
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://app')
  if (req.method !== 'GET' || url.pathname !== '/sse-auth') {
    res.writeHead(404).end()
    return
  }
  const session = sessions.get(cookie(req.headers.cookie, 'session'))
  if (!session) {
    res.writeHead(401, { 'Content-Type': 'application/json' }).end('{"error":"login required"}')
    return
  }
  res.writeHead(200, { 'Content-Type': 'application/json' })
  res.end(JSON.stringify({ user: session.user, rooms: session.rooms }))
})

const port = Number(process.env.PORT ?? 3000)
// The address actually bound: with PORT=0 the kernel picks a free port.
server.listen(port, '127.0.0.1', () => console.log(`auth webhook on http://127.0.0.1:${server.address().port}/sse-auth`))
