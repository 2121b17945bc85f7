// An Express 5 app publishing to ssekify: it hands a logged-in user the URL of
// its event stream (a JWT for --auth jwt, a signed URL for --auth signed) and
// pushes `order.created` to that user when it places an order. The shared
// parts are in ../shop.mjs; the environment is described there.
//
//   npm ci --prefix examples/node
//   SSEKIFY_AUTH=jwt SSEKIFY_JWT_SECRET=… SSEKIFY_API_KEY=… node examples/node/express/app.mjs
//   curl -H 'Cookie: session=s-alice' http://127.0.0.1:3000/push/credentials
//   curl -H 'Cookie: session=s-alice' -H 'Content-Type: application/json' -d '{"item":"tea"}' http://127.0.0.1:3000/orders

import express from 'express'
import { HOST, PORT, placeOrder, pushCredentials, requireUser } from '../shop.mjs'

const app = express()
app.use(express.json())
// Your session middleware goes here; the stand-in reads the session cookie
// (Express 5 hands a thrown error to the error handler below: 401).
app.use((req, res, next) => {
  req.user = requireUser(req.headers.cookie)
  next()
})

app.get('/push/credentials', (req, res) => {
  res.json(pushCredentials(req.user))
})

app.post('/orders', async (req, res) => {
  res.status(201).json(await placeOrder(req.user, req.body?.item))
})

// Errors as JSON; only the server's own failures are logged.
app.use((err, req, res, next) => {
  const status = err.status ?? 500
  if (status >= 500) console.error(err)
  res.status(status).json({ error: status < 500 ? err.message : 'the request failed' })
})

const server = app.listen(PORT, HOST, (err) => {
  if (err) throw err
  console.log(`express app listening on http://${HOST}:${server.address().port}`)
})
