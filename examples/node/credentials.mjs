// Minting subscriber credentials for ssekify from Node 20+ with node:crypto — no dependencies.
//
//   SSEKIFY_JWT_SECRET=... SSEKIFY_SIGN_SECRET=... node credentials.mjs alice lobby,news
//   SSEKIFY_JWT_PRIVATE_KEY=key.pem node credentials.mjs alice lobby   # RS256/ES256
//
// Run it to print a JWT (--auth jwt) and a signed URL (--auth signed) with the
// curl commands that use them, or import the functions in your backend:
//   import { jwt, jwtSigned, signedUrl } from './credentials.mjs'
//   res.json({ url: signedUrl('https://push.example/sse', { user: session.userId, rooms: ['lobby'] }) })

import { createHmac, createPrivateKey, sign } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

const now = () => Math.floor(Date.now() / 1000)
const b64url = (text) => Buffer.from(text).toString('base64url') // unpadded, as JWTs and ssekify want
const hs256 = (secret, text) => createHmac('sha256', secret).update(text).digest('base64url')

function need(secret, name) {
  // The server refuses secrets under 32 bytes; so do we, before minting anything.
  if (!secret || Buffer.byteLength(secret) < 32) throw new Error(`${name} must be set, at least 32 bytes`)
  return secret
}

/**
 * An HS256 JWT for --auth jwt: sub = the user, rooms = the rooms it may join
 * (['*'] for any), valid for ttl seconds. Send it as `Authorization: Bearer`
 * or as `?token=`; the subscriber picks its rooms with `?rooms=`. With a
 * tenant it opens only that tenant's `/t/{tenant}/sse`, without one only `/sse`.
 */
export function jwt({ user, rooms = [], tenant, ttl = 300, secret = process.env.SSEKIFY_JWT_SECRET }) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const claims = b64url(JSON.stringify({ sub: user, rooms, exp: now() + ttl, ...(tenant ? { tenant } : {}) }))
  return `${header}.${claims}.${hs256(need(secret, 'SSEKIFY_JWT_SECRET'), `${header}.${claims}`)}`
}

/**
 * An RS256 or ES256 JWT for --auth jwt with --jwt-public-key or a JWKS: for
 * tests, and for backends that hold their own key pair instead of an
 * identity provider. privateKey is a PEM (RSA: RS256; EC P-256: ES256), as
 * `openssl genpkey` writes it; give the server the public half
 * (`openssl pkey -in key.pem -pubout`). kid, if given, names the key in the
 * server's JWKS; iss and aud are needed when the server sets --jwt-issuer and
 * --jwt-audience. ES256 signatures are r || s (ieee-p1363), not DER.
 */
export function jwtSigned({ user, rooms = [], tenant, ttl = 300, privateKey, kid, iss, aud }) {
  const key = createPrivateKey(privateKey)
  const ec = key.asymmetricKeyType === 'ec'
  if (ec && key.asymmetricKeyDetails.namedCurve !== 'prime256v1') throw new Error('ES256 needs a P-256 key')
  if (!ec && key.asymmetricKeyType !== 'rsa') throw new Error('an RSA or EC P-256 private key is needed')
  const alg = ec ? 'ES256' : 'RS256'
  const header = b64url(JSON.stringify({ alg, typ: 'JWT', ...(kid ? { kid } : {}) }))
  const claims = b64url(JSON.stringify({
    sub: user, rooms, exp: now() + ttl, ...(tenant ? { tenant } : {}), ...(iss ? { iss } : {}), ...(aud ? { aud } : {}),
  }))
  const signature = sign('sha256', Buffer.from(`${header}.${claims}`), { key, dsaEncoding: 'ieee-p1363' })
  return `${header}.${claims}.${signature.toString('base64url')}`
}

/**
 * A presigned URL for --auth signed, the same as `ssekify sign`: the user
 * (empty: anonymous) and exactly these rooms, usable for ttl seconds. With a
 * tenant the tenant is signed too (a fifth line) and base must be that
 * tenant's path, `…/t/{tenant}/sse`.
 */
export function signedUrl(base, { user = '', rooms = [], tenant, ttl = 300, secret = process.env.SSEKIFY_SIGN_SECRET }) {
  const exp = String(now() + ttl)
  const list = rooms.join(',')
  const canonical = `ssekify-sign-v1\n${user}\n${list}\n${exp}` + (tenant ? `\n${tenant}` : '')
  const sig = hs256(need(secret, 'SSEKIFY_SIGN_SECRET'), canonical)
  return `${base}?${new URLSearchParams({ user, rooms: list, exp, sig })}`
}

// Prints what it can mint with the secrets in the environment; only when run as a script.
function demo() {
  const [user = 'alice', rooms = 'lobby'] = process.argv.slice(2)
  const list = rooms ? rooms.split(',') : []
  const base = `http://${process.env.SSEKIFY_PUBLIC ?? '127.0.0.1:8080'}/sse`
  if (process.env.SSEKIFY_JWT_SECRET) {
    const token = jwt({ user, rooms: list })
    console.log('# --auth jwt')
    console.log(`curl -N -H 'Authorization: Bearer ${token}' '${base}?rooms=${list.join(',')}'`)
  }
  if (process.env.SSEKIFY_JWT_PRIVATE_KEY) {
    const token = jwtSigned({ user, rooms: list, privateKey: readFileSync(process.env.SSEKIFY_JWT_PRIVATE_KEY) })
    console.log('# --auth jwt --jwt-public-key <its public key>')
    console.log(`curl -N -H 'Authorization: Bearer ${token}' '${base}?rooms=${list.join(',')}'`)
  }
  if (process.env.SSEKIFY_SIGN_SECRET) {
    console.log('# --auth signed')
    console.log(`curl -N '${signedUrl(base, { user, rooms: list })}'`)
  }
  if (!process.env.SSEKIFY_JWT_SECRET && !process.env.SSEKIFY_SIGN_SECRET && !process.env.SSEKIFY_JWT_PRIVATE_KEY) {
    console.error('set SSEKIFY_JWT_SECRET and/or SSEKIFY_SIGN_SECRET (the secrets the server was started with),')
    console.error('or SSEKIFY_JWT_PRIVATE_KEY (a PEM file whose public key the server has)')
    process.exit(2)
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) demo()
