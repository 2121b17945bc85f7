// A Koa 3 app publishing to ssekify: it hands a logged-in user the URL of its
// event stream (a JWT for --auth jwt, a signed URL for --auth signed) and
// pushes `order.created` to that user when it places an order. The shared
// parts are in ../shop.mjs; the environment is described there.
//
//   npm ci --prefix examples/node
//   SSEKIFY_AUTH=jwt SSEKIFY_JWT_SECRET=… SSEKIFY_API_KEY=… node examples/node/koa/app.mjs
//   curl -H 'Cookie: session=s-alice' http://127.0.0.1:3000/push/credentials
//   curl -H 'Cookie: session=s-alice' -H 'Content-Type: application/json' -d '{"item":"tea"}' http://127.0.0.1:3000/orders

import Koa from 'koa'
import Router from '@koa/router'
import { bodyParser } from '@koa/bodyparser'
import { HOST, PORT, placeOrder, pushCredentials, requireUser } from '../shop.mjs'

const app = new Koa()
const router = new Router()

router.get('/push/credentials', (ctx) => {
  ctx.body = pushCredentials(ctx.state.user)
})

router.post('/orders', async (ctx) => {
  ctx.body = await placeOrder(ctx.state.user, ctx.request.body?.item)
  ctx.status = 201
})

// Your session middleware goes here; the stand-in reads the session cookie
// (Koa answers a thrown error with its status, 401).
app.use(async (ctx, next) => {
  ctx.state.user = requireUser(ctx.get('Cookie'))
  await next()
})
app.use(bodyParser())
app.use(router.routes())
app.use(router.allowedMethods())

const server = app.listen(PORT, HOST, () => {
  console.log(`koa app listening on http://${HOST}:${server.address().port}`)
})
