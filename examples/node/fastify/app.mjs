// A Fastify 5 app publishing to ssekify: it hands a logged-in user the URL of
// its event stream (a JWT for --auth jwt, a signed URL for --auth signed) and
// pushes `order.created` to that user when it places an order. The shared
// parts are in ../shop.mjs; the environment is described there.
//
//   npm ci --prefix examples/node
//   SSEKIFY_AUTH=jwt SSEKIFY_JWT_SECRET=… SSEKIFY_API_KEY=… node examples/node/fastify/app.mjs
//   curl -H 'Cookie: session=s-alice' http://127.0.0.1:3000/push/credentials
//   curl -H 'Cookie: session=s-alice' -H 'Content-Type: application/json' -d '{"item":"tea"}' http://127.0.0.1:3000/orders

import Fastify from 'fastify'
import { HOST, PORT, placeOrder, pushCredentials, requireUser } from '../shop.mjs'

const app = Fastify()
app.decorateRequest('user', null)
// Your session plugin goes here; the stand-in reads the session cookie (a
// thrown error's statusCode, 401, becomes the answer).
app.addHook('onRequest', async (request) => {
  request.user = requireUser(request.headers.cookie)
})

app.get('/push/credentials', async (request) => pushCredentials(request.user))

app.post('/orders', async (request, reply) => {
  reply.code(201)
  return placeOrder(request.user, request.body?.item)
})

const address = await app.listen({ port: PORT, host: HOST })
console.log(`fastify app listening on ${address}`)
